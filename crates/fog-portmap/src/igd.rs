//! UPnP IGD's XML: the device description (UDA 1.1 §2.3) and the SOAP 1.1 control messages
//! of WANIPConnection (UPnP IGD WANIPConnection:1 §2.4) and WANPPPConnection, parsed with
//! quick-xml.

use quick_xml::Reader;
use quick_xml::events::Event as Xml;

use crate::ParseError;

/// Service types that can map ports, best first (IGD:2's WANIPConnection:2, then the IGD:1
/// services; a DSL router's PPP connection answers the same actions).
pub const WAN_SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// Deepest element nesting we follow; descriptions nest about eight deep.
const MAX_DEPTH: usize = 32;
/// Most services we remember from one description.
const MAX_SERVICES: usize = 64;
/// Most leaf values we keep from one SOAP response.
const MAX_LEAVES: usize = 64;

/// One `<service>` of a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `serviceType`.
    pub service_type: String,
    /// `controlURL`, as written (absolute or relative).
    pub control_url: String,
}

/// What a control point needs from a device description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description {
    /// `URLBase` (UDA 1.0; deprecated in 1.1 but still sent), the base of relative URLs.
    pub url_base: Option<String>,
    /// Every service of every embedded device.
    pub services: Vec<Service>,
}

impl Description {
    /// Parses a device description document.
    pub fn parse(xml: &[u8]) -> Result<Self, ParseError> {
        let mut description = Description::default();
        let mut current: Option<(Option<String>, Option<String>)> = None;
        walk(xml, |path, leaf| {
            let name = path.last().map(String::as_str).unwrap_or("");
            match (name, leaf) {
                ("service", None) => {
                    if let Some((Some(service_type), Some(control_url))) = current.take() {
                        if description.services.len() < MAX_SERVICES {
                            description.services.push(Service {
                                service_type,
                                control_url,
                            });
                        }
                    }
                }
                ("serviceType", Some(text)) if parent_is(path, "service") => {
                    current.get_or_insert((None, None)).0 = Some(text.trim().to_owned());
                }
                ("controlURL", Some(text)) if parent_is(path, "service") => {
                    current.get_or_insert((None, None)).1 = Some(text.trim().to_owned());
                }
                ("URLBase", Some(text)) if path.len() == 2 => {
                    description.url_base = Some(text.trim().to_owned());
                }
                _ => {}
            }
        })?;
        Ok(description)
    }

    /// The best service that maps ports ([`WAN_SERVICES`] order).
    pub fn wan_service(&self) -> Option<&Service> {
        WAN_SERVICES
            .iter()
            .find_map(|wanted| self.services.iter().find(|s| s.service_type == *wanted))
    }
}

fn parent_is(path: &[String], name: &str) -> bool {
    path.len() >= 2 && path[path.len() - 2] == name
}

/// Walks `xml`, calling `visit(path, Some(text))` at the end of each element without child
/// elements and `visit(path, None)` at the end of each element with children; `path` holds
/// the local names from the root down to the element.
fn walk(xml: &[u8], mut visit: impl FnMut(&[String], Option<&str>)) -> Result<(), ParseError> {
    let mut reader = Reader::from_reader(xml);
    let mut path: Vec<String> = Vec::new();
    // The text of the innermost open element, and whether it has had a child element.
    let mut text = String::new();
    let mut has_child = false;
    let mut seen_root = false;
    loop {
        match reader.read_event().map_err(|_| ParseError::Xml)? {
            Xml::Start(e) => {
                if path.len() >= MAX_DEPTH {
                    return Err(ParseError::Xml);
                }
                let name = std::str::from_utf8(e.local_name().into_inner())
                    .map_err(|_| ParseError::Xml)?;
                path.push(name.to_owned());
                seen_root = true;
                text.clear();
                has_child = false;
            }
            Xml::Empty(e) => {
                let name = std::str::from_utf8(e.local_name().into_inner())
                    .map_err(|_| ParseError::Xml)?;
                path.push(name.to_owned());
                visit(&path, Some(""));
                path.pop();
                has_child = true;
            }
            Xml::End(_) => {
                if path.is_empty() {
                    return Err(ParseError::Xml);
                }
                visit(&path, if has_child { None } else { Some(text.as_str()) });
                path.pop();
                text.clear();
                has_child = true;
            }
            // Text past 4 KiB in one element is dropped: no value we read is that long.
            Xml::Text(t) if !path.is_empty() && text.len() < 4096 => {
                text.push_str(&t.decode().map_err(|_| ParseError::Xml)?);
            }
            Xml::CData(t) if !path.is_empty() && text.len() < 4096 => {
                text.push_str(&t.decode().map_err(|_| ParseError::Xml)?);
            }
            Xml::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|_| ParseError::Xml)?
                } else {
                    match r.decode().map_err(|_| ParseError::Xml)?.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => return Err(ParseError::Xml),
                    }
                };
                if let Some(c) = resolved {
                    text.push(c);
                }
            }
            Xml::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() || !seen_root {
        return Err(ParseError::Xml);
    }
    Ok(())
}

/// Escapes text for an XML element's content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A SOAP 1.1 envelope calling `action` of `service_type` with `args` in order (UDA 1.1
/// §3.2.1: arguments in the order of the service description).
pub fn soap_envelope(service_type: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{}\">",
        escape(service_type)
    );
    for (name, value) in args {
        body.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    body
}

/// A SOAP response: the leaf values of its body, or the UPnP error of a fault (UDA 1.1
/// §3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoapResponse {
    /// `(name, value)` of each leaf element under the action's response element.
    Ok(Vec<(String, String)>),
    /// A `UPnPError`'s `errorCode` and `errorDescription`.
    Fault {
        /// The UPnP error code (e.g. 725 OnlyPermanentLeasesSupported).
        code: u16,
        /// Its description, as the device wrote it.
        description: String,
    },
}

impl SoapResponse {
    /// Parses a SOAP envelope.
    pub fn parse(xml: &[u8]) -> Result<Self, ParseError> {
        let mut leaves = Vec::new();
        let mut fault = false;
        let mut code = None;
        let mut description = String::new();
        let mut in_body = false;
        walk(xml, |path, leaf| {
            in_body |= path.iter().any(|p| p == "Body");
            if path.iter().any(|p| p == "Fault") {
                fault = true;
            }
            let Some(text) = leaf else { return };
            let name = path.last().map(String::as_str).unwrap_or("");
            match name {
                "errorCode" => code = text.trim().parse::<u16>().ok(),
                "errorDescription" => description = text.trim().chars().take(256).collect(),
                _ => {
                    if path.len() >= 4 && leaves.len() < MAX_LEAVES {
                        leaves.push((name.to_owned(), text.trim().chars().take(1024).collect()));
                    }
                }
            }
        })?;
        if !in_body {
            return Err(ParseError::Missing("Body"));
        }
        if fault {
            return Ok(SoapResponse::Fault {
                code: code.unwrap_or(0),
                description,
            });
        }
        Ok(SoapResponse::Ok(leaves))
    }

    /// The value of the leaf `name`, if the response is not a fault and has it.
    pub fn value(&self, name: &str) -> Option<&str> {
        match self {
            SoapResponse::Ok(leaves) => leaves
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            SoapResponse::Fault { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion><major>1</major><minor>0</minor></specVersion>
  <URLBase>http://10.9.9.9:5000</URLBase>
  <device>
    <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
    <serviceList><service>
      <serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
      <controlURL>/ctl/L3F</controlURL>
    </service></serviceList>
    <deviceList><device><deviceList><device>
      <serviceList>
        <service>
          <serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType>
          <serviceId>urn:upnp-org:serviceId:WANPPPConn1</serviceId>
          <controlURL>/ctl/PPP</controlURL>
        </service>
        <service>
          <serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
          <controlURL><![CDATA[/ctl/IP]]>Conn?a=1&amp;b=2</controlURL>
          <eventSubURL/>
        </service>
      </serviceList>
    </device></deviceList></device></deviceList>
  </device>
</root>"#;

    #[test]
    fn description_picks_wan_ip_connection() {
        let d = Description::parse(DESCRIPTION.as_bytes()).unwrap();
        assert_eq!(d.url_base.as_deref(), Some("http://10.9.9.9:5000"));
        assert_eq!(d.services.len(), 3);
        let s = d.wan_service().unwrap();
        assert_eq!(s.service_type, WAN_SERVICES[1]);
        assert_eq!(s.control_url, "/ctl/IPConn?a=1&b=2");
        assert!(Description::parse(b"<root><a></root>").is_err());
        assert!(Description::parse(b"").is_err());
        assert!(Description::parse(b"<root>&bogus;</root>").is_err());
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(Description::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn soap_envelopes_and_faults() {
        let env = soap_envelope(
            WAN_SERVICES[1],
            "AddPortMapping",
            &[
                ("NewProtocol", "UDP".into()),
                ("NewPortMappingDescription", "a<b".into()),
            ],
        );
        assert!(env.contains("<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewProtocol>UDP</NewProtocol><NewPortMappingDescription>a&lt;b</NewPortMappingDescription></u:AddPortMapping>"));
        let ok = br#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1"><NewExternalIPAddress>11.0.0.1</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>"#;
        let parsed = SoapResponse::parse(ok).unwrap();
        assert_eq!(parsed.value("NewExternalIPAddress"), Some("11.0.0.1"));
        let fault = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>725</errorCode><errorDescription>OnlyPermanentLeasesSupported</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(
            SoapResponse::parse(fault).unwrap(),
            SoapResponse::Fault {
                code: 725,
                description: "OnlyPermanentLeasesSupported".into()
            }
        );
        assert_eq!(
            SoapResponse::parse(b"<html>no</html>"),
            Err(ParseError::Missing("Body"))
        );
    }
}
