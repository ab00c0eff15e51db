//! The mapper against a scripted fake router in virtual time: each protocol alone, the quirks
//! routers in the field have (NAT-PMP only, a LOCATION naming another host, UPnP error 725,
//! double NAT), renewal, deletion and hostile answers.

// Tests take one real `Instant` as the epoch of their virtual time.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo};

use crate::igd::SoapResponse;
use crate::{
    Answer, Config, Error, Event, Mapping, Method, PortMapper, TcpCommand, TcpId, TcpInput, natpmp,
    pcp,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(HOST), 50000);
const INTERNAL: SocketAddrV4 = SocketAddrV4::new(HOST, 4000);

/// What the fake router does.
#[derive(Debug, Clone)]
struct Script {
    external: Ipv4Addr,
    pcp: bool,
    /// Answer PCP as a NAT-PMP-only router does (version 0, unsupported version).
    pcp_refused_as_natpmp: bool,
    natpmp: bool,
    upnp: bool,
    /// The LOCATION URL's host.
    location_host: String,
    /// UPnP answers this error to any non-zero lease.
    permanent_only: Option<u16>,
    /// The lifetime PCP and NAT-PMP grant (capped to what was asked).
    max_lifetime: u32,
    /// Pad every HTTP response body with this many bytes.
    http_padding: usize,
    /// External ports another client holds: AddPortMapping on them fails with 718.
    taken: Vec<u16>,
    /// Where the SSDP answer comes from (the gateway, or another device on the LAN).
    ssdp_from: Ipv4Addr,
    /// The source port of SSDP answers (1900, or an ephemeral one).
    ssdp_port: u16,
    /// How long PCP answers take to arrive.
    pcp_delay: Duration,
}

impl Script {
    fn new() -> Self {
        Self {
            external: Ipv4Addr::new(11, 0, 0, 1),
            pcp: true,
            pcp_refused_as_natpmp: false,
            natpmp: true,
            upnp: true,
            location_host: GATEWAY.to_string(),
            permanent_only: None,
            max_lifetime: 3600,
            http_padding: 0,
            taken: Vec::new(),
            ssdp_from: GATEWAY,
            ssdp_port: 1900,
            pcp_delay: Duration::ZERO,
        }
    }
}

/// The fake router's state and log.
#[derive(Debug)]
struct Router {
    script: Script,
    /// (method, external port) → lease, for mappings it holds.
    mappings: BTreeMap<(&'static str, u16), u32>,
    /// Every request, in order, for assertions.
    log: Vec<String>,
    /// TCP connections: id → remote.
    connections: BTreeMap<TcpId, SocketAddrV4>,
}

impl Router {
    fn new(script: Script) -> Self {
        Self {
            script,
            mappings: BTreeMap::new(),
            log: Vec::new(),
            connections: BTreeMap::new(),
        }
    }

    fn udp(&mut self, to: SocketAddr, payload: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let server = SocketAddr::new(IpAddr::V4(GATEWAY), 5351);
        let mut buf = [0u8; 1100];
        if to == server && payload.first() == Some(&pcp::VERSION) {
            let request = pcp::parse_map_request(payload).ok()?;
            self.log
                .push(format!("pcp map lifetime={}", request.lifetime));
            if self.script.pcp_refused_as_natpmp {
                let n = natpmp::Response::Error {
                    opcode: 1,
                    result: natpmp::ResultCode(1),
                }
                .emit(&mut buf);
                return Some((server, buf[..n].to_vec()));
            }
            if !self.script.pcp {
                return None;
            }
            let lifetime = request.lifetime.min(self.script.max_lifetime);
            let port = request.internal_port + 1000;
            if lifetime == 0 {
                self.mappings.remove(&("pcp", port));
            } else {
                self.mappings.insert(("pcp", port), lifetime);
            }
            let n = pcp::Response {
                opcode: pcp::OPCODE_MAP,
                result: pcp::ResultCode::SUCCESS,
                lifetime,
                epoch: 1,
                map: Some(pcp::MapData {
                    nonce: request.nonce,
                    protocol: request.protocol,
                    internal_port: request.internal_port,
                    external_port: port,
                    external_ip: pcp::mapped(self.script.external),
                }),
            }
            .emit(&mut buf);
            return Some((server, buf[..n].to_vec()));
        }
        if to == server {
            let request = natpmp::Request::parse(payload).ok()?;
            self.log.push(format!("natpmp {request:?}"));
            if !self.script.natpmp {
                return None;
            }
            let response = match request {
                natpmp::Request::ExternalAddress => natpmp::Response::ExternalAddress {
                    epoch: 1,
                    ip: self.script.external,
                },
                natpmp::Request::Map {
                    opcode,
                    internal_port,
                    lifetime,
                    ..
                } => {
                    let port = internal_port + 2000;
                    let lifetime = lifetime.min(self.script.max_lifetime);
                    if lifetime == 0 {
                        self.mappings.remove(&("natpmp", port));
                    } else {
                        self.mappings.insert(("natpmp", port), lifetime);
                    }
                    natpmp::Response::Map {
                        opcode,
                        epoch: 1,
                        internal_port,
                        external_port: port,
                        lifetime,
                    }
                }
            };
            let n = response.emit(&mut buf);
            return Some((server, buf[..n].to_vec()));
        }
        if to.port() == 1900 && self.script.upnp {
            let text = std::str::from_utf8(payload).ok()?;
            assert!(text.starts_with("M-SEARCH * HTTP/1.1\r\n"));
            self.log.push("ssdp search".into());
            let answer = format!(
                "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                 USN: uuid:fake\r\nLOCATION: http://{}:5000/rootDesc.xml\r\n\r\n",
                self.script.location_host
            );
            return Some((
                SocketAddr::new(IpAddr::V4(self.script.ssdp_from), self.script.ssdp_port),
                answer.into_bytes(),
            ));
        }
        None
    }

    /// Answers a TCP command with what the driver would report.
    fn tcp(&mut self, command: TcpCommand) -> Vec<(TcpId, TcpInput<'static>, Option<Vec<u8>>)> {
        match command {
            TcpCommand::Connect { id, remote } => {
                self.connections.insert(id, remote);
                if remote == SocketAddrV4::new(GATEWAY, 5000) && self.script.upnp {
                    vec![(id, TcpInput::Connected, None)]
                } else {
                    vec![(id, TcpInput::Failed, None)]
                }
            }
            TcpCommand::Send { id, data } => {
                let body = self.http(&data);
                vec![
                    (id, TcpInput::Connected, Some(body)),
                    (id, TcpInput::Closed, None),
                ]
            }
            TcpCommand::Close { id } => {
                self.connections.remove(&id);
                Vec::new()
            }
        }
    }

    fn http(&mut self, request: &[u8]) -> Vec<u8> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        let head = match parsed.parse(request) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => panic!("the mapper sent a bad HTTP request"),
        };
        let path = parsed.path.unwrap_or("").to_owned();
        let host = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned());
        assert_eq!(host.as_deref(), Some("192.168.1.1:5000"));
        let action = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("soapaction"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned());
        let padding = " ".repeat(self.script.http_padding);
        let (status, body) = match (path.as_str(), action) {
            ("/rootDesc.xml", None) => {
                self.log.push("GET description".into());
                (200, format!("{}{padding}", description()))
            }
            ("/ctl/IPConn", Some(action)) => {
                let action = action
                    .trim_matches('"')
                    .rsplit('#')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let soap = SoapResponse::parse(&request[head..]).expect("the mapper's SOAP parses");
                let arg = |name: &str| soap.value(name).unwrap_or("").to_owned();
                self.log.push(format!(
                    "soap {action} protocol={} lease={}",
                    arg("NewProtocol"),
                    arg("NewLeaseDuration")
                ));
                match action.as_str() {
                    "GetExternalIPAddress" => (
                        200,
                        envelope(&format!(
                            "<u:GetExternalIPAddressResponse xmlns:u=\"{SERVICE}\"><NewExternalIPAddress>{}</NewExternalIPAddress></u:GetExternalIPAddressResponse>",
                            self.script.external
                        )),
                    ),
                    "AddPortMapping" => {
                        let lease: u32 = arg("NewLeaseDuration").parse().unwrap_or(u32::MAX);
                        let port: u16 = arg("NewExternalPort").parse().unwrap_or(0);
                        match self.script.permanent_only {
                            _ if self.script.taken.contains(&port) => (500, fault(718)),
                            Some(code) if lease != 0 => (500, fault(code)),
                            _ if arg("NewProtocol") != "UDP" => (500, fault(402)),
                            _ => {
                                self.mappings.insert(("upnp", port), lease);
                                (
                                    200,
                                    envelope(&format!(
                                        "<u:AddPortMappingResponse xmlns:u=\"{SERVICE}\"/>"
                                    )),
                                )
                            }
                        }
                    }
                    "DeletePortMapping" => {
                        let port: u16 = arg("NewExternalPort").parse().unwrap_or(0);
                        self.mappings.remove(&("upnp", port));
                        (
                            200,
                            envelope(&format!(
                                "<u:DeletePortMappingResponse xmlns:u=\"{SERVICE}\"/>"
                            )),
                        )
                    }
                    _ => (500, fault(401)),
                }
            }
            _ => (404, String::new()),
        };
        // Chunked, as several routers send, to exercise the reader.
        let mut out = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.as_bytes().chunks(700) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }
}

const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

fn description() -> String {
    format!(
        "<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\"><device>\
         <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><deviceList><device>\
         <deviceList><device><serviceList><service><serviceType>{SERVICE}</serviceType>\
         <controlURL>/ctl/IPConn</controlURL></service></serviceList></device></deviceList>\
         </device></deviceList></device></root>"
    )
}

fn envelope(inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
    )
}

fn fault(code: u16) -> String {
    envelope(&format!(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
         <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode>\
         <errorDescription>Error {code}</errorDescription></UPnPError></detail></s:Fault>"
    ))
}

/// Something to do at a virtual instant: close the mapper, change the script.
type Action<'a> = Option<(Duration, &'a mut dyn FnMut(&mut PortMapper, Instant))>;

enum Input {
    Udp(SocketAddr, Vec<u8>),
    Tcp(TcpId, TcpInput<'static>, Option<Vec<u8>>),
}

/// Runs the mapper against the router in virtual time for `span`, calling `at` once
/// `at.0` has passed; returns the events with their times.
fn drive(
    mapper: &mut PortMapper,
    router: &mut Router,
    start: Instant,
    span: Duration,
    mut at: Action<'_>,
) -> Vec<(Duration, Event)> {
    let mut now = start;
    let mut events = Vec::new();
    // Inputs with the instant they arrive, in the order they were made.
    let mut pending: VecDeque<(Instant, Input)> = VecDeque::new();
    let mut buf = vec![0u8; 65_535];
    for _ in 0..100_000 {
        while let Some(command) = mapper.poll_tcp() {
            for (id, input, data) in router.tcp(command) {
                pending.push_back((now, Input::Tcp(id, input, data)));
            }
        }
        while let Some(t) = mapper.poll_transmit(now, &mut buf) {
            let is_pcp =
                buf.first() == Some(&pcp::VERSION) && t.destination.port() == pcp::SERVER_PORT;
            if let Some((source, reply)) = router.udp(t.destination, &buf[..t.len]) {
                let delay = if is_pcp {
                    router.script.pcp_delay
                } else {
                    Duration::ZERO
                };
                pending.push_back((now + delay, Input::Udp(source, reply)));
            }
        }
        while let Some(event) = mapper.poll_event() {
            events.push((now - start, event));
        }
        let due = pending.iter().position(|(at, _)| *at <= now);
        if let Some((_, input)) = due.and_then(|i| pending.remove(i)) {
            match input {
                Input::Udp(source, payload) => {
                    let packet = Receive {
                        source,
                        local: LOCAL,
                        payload: &payload,
                    };
                    if mapper.accepts(&packet) {
                        mapper.handle_packet(now, packet);
                    }
                }
                Input::Tcp(id, TcpInput::Connected, Some(data)) => {
                    mapper.handle_tcp(now, id, TcpInput::Data(&data))
                }
                Input::Tcp(id, input, _) => mapper.handle_tcp(now, id, input),
            }
            continue;
        }
        let arrival = pending.iter().map(|(at, _)| *at).min();
        let next = match (mapper.poll_timeout(), arrival) {
            (Some(t), Some(a)) => Some(t.min(a)),
            (t, a) => t.or(a),
        };
        if let Some((when, f)) = at.as_mut()
            && next.is_none_or(|n| n >= start + *when)
            && now < start + *when
        {
            now = start + *when;
            f(mapper, now);
            at = None;
            continue;
        }
        match next {
            Some(next) if next <= start + span => {
                now = now.max(next);
                if mapper.poll_timeout().is_some_and(|t| t <= now) {
                    mapper.handle_timeout(now);
                }
            }
            _ => break,
        }
    }
    events
}

fn config() -> Config {
    Config::new(GATEWAY, INTERNAL, 42)
}

fn answers(events: &[(Duration, Event)]) -> BTreeMap<Method, Answer> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Answer { method, answer } => Some((*method, answer.clone())),
            _ => None,
        })
        .collect()
}

fn mapped(events: &[(Duration, Event)]) -> Vec<(Duration, Mapping)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::Mapped(m) => Some((*t, *m)),
            _ => None,
        })
        .collect()
}

#[test]
fn pcp_is_preferred_when_all_three_answer() {
    let start = Instant::now();
    let mut router = Router::new(Script::new());
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(5),
        None,
    );
    let m = mapped(&events);
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0].1.method, Method::Pcp);
    assert_eq!(m[0].1.external, "11.0.0.1:5000".parse().unwrap());
    assert_eq!(m[0].1.lifetime, Some(Duration::from_secs(3600)));
    let a = answers(&events);
    assert_eq!(a[&Method::Pcp], Answer::Mapped(m[0].1));
    let available = Answer::Available {
        external_ip: Some(Ipv4Addr::new(11, 0, 0, 1)),
    };
    assert_eq!(a[&Method::NatPmp], available);
    assert_eq!(a[&Method::Upnp], available);
    // Only PCP mapped: the others probed without side effects.
    assert_eq!(
        router.mappings.keys().collect::<Vec<_>>(),
        vec![&("pcp", 5000)]
    );
    assert!(
        !router
            .log
            .iter()
            .any(|l| l.contains("AddPortMapping") || l.contains("Map {"))
    );
}

#[test]
fn nat_pmp_only_router() {
    let start = Instant::now();
    let script = Script {
        pcp_refused_as_natpmp: true,
        upnp: false,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(5),
        None,
    );
    let a = answers(&events);
    assert_eq!(a[&Method::Pcp], Answer::Failed(Error::UnsupportedVersion));
    assert_eq!(a[&Method::Upnp], Answer::Failed(Error::Timeout));
    let m = mapped(&events);
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0].1.method, Method::NatPmp);
    assert_eq!(m[0].1.external, "11.0.0.1:6000".parse().unwrap());
    // NAT-PMP mapped as soon as PCP said no, without waiting for UPnP's timeout.
    assert!(m[0].0 < Duration::from_millis(10), "{:?}", m[0].0);
}

#[test]
fn upnp_only_router_after_short_timeouts() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    let a = answers(&events);
    assert_eq!(a[&Method::Pcp], Answer::Failed(Error::Timeout));
    assert_eq!(a[&Method::NatPmp], Answer::Failed(Error::Timeout));
    let m = mapped(&events);
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0].1.method, Method::Upnp);
    assert_eq!(m[0].1.external, "11.0.0.1:4000".parse().unwrap());
    assert_eq!(m[0].1.lifetime, Some(Duration::from_secs(7200)));
    // After PCP's and NAT-PMP's 1 s, not later.
    assert_eq!(m[0].0, Duration::from_secs(1));
    assert!(
        router
            .log
            .contains(&"soap AddPortMapping protocol=UDP lease=7200".to_owned()),
        "{:?}",
        router.log
    );
    assert!(!mapper.upnp_rewrote_host());
}

#[test]
fn upnp_725_gets_a_permanent_lease_and_location_elsewhere_is_reached_on_the_gateway() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        permanent_only: Some(725),
        location_host: "10.99.0.1".into(),
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    let m = mapped(&events);
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0].1.lifetime, None);
    assert_eq!(router.mappings.get(&("upnp", 4000)), Some(&0));
    let adds: Vec<_> = router
        .log
        .iter()
        .filter(|l| l.contains("AddPortMapping"))
        .collect();
    assert_eq!(
        adds,
        [
            "soap AddPortMapping protocol=UDP lease=7200",
            "soap AddPortMapping protocol=UDP lease=0"
        ]
    );
    assert!(mapper.upnp_rewrote_host());
    // A permanent lease is not renewed: nothing more happens.
    assert_eq!(mapper.poll_timeout(), None);
}

#[test]
fn location_by_name_and_ssdp_from_an_ephemeral_port() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        location_host: "router.lan".into(),
        ssdp_port: 49153,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert_eq!(mapped(&events).len(), 1, "{events:?}");
    assert!(mapper.upnp_rewrote_host());
}

#[test]
fn upnp_402_also_gets_a_permanent_lease() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        permanent_only: Some(402),
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert_eq!(mapped(&events).len(), 1, "{events:?}");
    assert_eq!(router.mappings.get(&("upnp", 4000)), Some(&0));
}

#[test]
fn double_nat_is_reported_not_offered() {
    for external in [
        "100.64.3.4",
        "10.0.0.2",
        "0.0.0.0",
        "127.0.0.1",
        "172.20.0.1",
    ] {
        for methods in [vec![Method::Pcp], vec![Method::NatPmp], vec![Method::Upnp]] {
            let start = Instant::now();
            let script = Script {
                external: external.parse().unwrap(),
                ..Script::new()
            };
            let mut router = Router::new(script);
            let mut mapper = PortMapper::new(
                start,
                Config {
                    methods: methods.clone(),
                    ..config()
                },
            );
            let events = drive(
                &mut mapper,
                &mut router,
                start,
                Duration::from_secs(5),
                None,
            );
            assert!(
                mapped(&events).is_empty(),
                "{external} {methods:?}: {events:?}"
            );
            let not_public: Vec<_> = events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::NotPublic(m) => Some(*m),
                    _ => None,
                })
                .collect();
            assert_eq!(not_public.len(), 1, "{external} {methods:?}: {events:?}");
            assert_eq!(not_public[0].external.ip().to_string(), external);
        }
    }
}

#[test]
fn renews_at_half_the_lifetime_and_deletes_on_close() {
    for method in Method::ALL {
        let start = Instant::now();
        let script = Script {
            max_lifetime: 20,
            ..Script::new()
        };
        let mut router = Router::new(script);
        let mut mapper = PortMapper::new(
            start,
            Config {
                methods: vec![method],
                lifetime: Duration::from_secs(20),
                ..config()
            },
        );
        let mut close = |m: &mut PortMapper, now: Instant| m.close(now);
        let events = drive(
            &mut mapper,
            &mut router,
            start,
            Duration::from_secs(60),
            Some((Duration::from_secs(25), &mut close)),
        );
        let times: Vec<Duration> = mapped(&events).iter().map(|(t, _)| *t).collect();
        // Mapped at once (UPnP after the SSDP round trip), renewed 10 s and 20 s later.
        assert_eq!(times.len(), 3, "{method}: {events:?}");
        assert!(
            times[1] - times[0] == Duration::from_secs(10),
            "{method}: {times:?}"
        );
        assert!(
            times[2] - times[1] == Duration::from_secs(10),
            "{method}: {times:?}"
        );
        assert!(
            matches!(events.last(), Some((t, Event::Closed)) if *t == Duration::from_secs(25)),
            "{events:?}"
        );
        assert!(
            router.mappings.is_empty(),
            "{method}: {:?}",
            router.mappings
        );
        assert!(
            router.connections.is_empty(),
            "{method}: connections left open"
        );
        assert_eq!(mapper.poll_timeout(), None);
    }
}

#[test]
fn lapses_when_the_router_stops_answering() {
    let start = Instant::now();
    let script = Script {
        max_lifetime: 20,
        upnp: false,
        natpmp: false,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let mut stop = |_: &mut PortMapper, _: Instant| {};
    let _ = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(9),
        Some((Duration::from_secs(1), &mut stop)),
    );
    router.script.pcp = false;
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(60),
        None,
    );
    assert!(
        events.iter().any(|(t, e)| matches!(
            e,
            Event::Lost {
                method: Method::Pcp,
                ..
            }
        ) && *t <= Duration::from_secs(20)),
        "{events:?}"
    );
    assert_eq!(mapper.mapping(), None);
}

#[test]
fn nothing_answers() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        upnp: false,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    let a = answers(&events);
    assert!(
        Method::ALL
            .iter()
            .all(|m| a[m] == Answer::Failed(Error::Timeout)),
        "{a:?}"
    );
    assert!(
        matches!(events.last(), Some((t, Event::Failed)) if *t == Duration::from_secs(2)),
        "{events:?}"
    );
    // PCP was retransmitted at 250 ms and 750 ms (RFC 6886 §3.1's doubling).
    assert_eq!(
        router.log.iter().filter(|l| l.starts_with("pcp")).count(),
        3
    );
}

#[test]
fn oversized_http_answer_is_refused() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        http_padding: 70 * 1024,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert_eq!(
        answers(&events)[&Method::Upnp],
        Answer::Failed(Error::Malformed(crate::ParseError::TooLong))
    );
    assert!(matches!(events.last(), Some((_, Event::Failed))));
    assert!(router.connections.is_empty());
}

#[test]
fn stray_and_hostile_datagrams_change_nothing() {
    let start = Instant::now();
    let mut mapper = PortMapper::new(start, config());
    let gateway = SocketAddr::new(IpAddr::V4(GATEWAY), 5351);
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 66)), 5351);
    let garbage: [&[u8]; 6] = [
        &[],
        &[2],
        &[0, 128],
        &[2, 0x81, 0, 0],
        &[9; 60],
        &[0, 129, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for payload in garbage {
        let packet = Receive {
            source: stranger,
            local: LOCAL,
            payload,
        };
        assert!(!mapper.accepts(&packet));
        let packet = Receive {
            source: gateway,
            local: LOCAL,
            payload,
        };
        mapper.handle_packet(start, packet);
    }
    // A PCP answer for another nonce is not ours.
    let mut buf = [0; 60];
    let n = pcp::Response {
        opcode: pcp::OPCODE_MAP,
        result: pcp::ResultCode::SUCCESS,
        lifetime: 100,
        epoch: 0,
        map: Some(pcp::MapData {
            nonce: [0; 12],
            protocol: pcp::PROTO_UDP,
            internal_port: 4000,
            external_port: 1,
            external_ip: pcp::mapped(Ipv4Addr::new(11, 0, 0, 1)),
        }),
    }
    .emit(&mut buf);
    mapper.handle_packet(
        start,
        Receive {
            source: gateway,
            local: LOCAL,
            payload: &buf[..n],
        },
    );
    while let Some(event) = mapper.poll_event() {
        assert!(
            !matches!(event, Event::Mapped(_) | Event::NotPublic(_)),
            "{event:?}"
        );
    }
    assert_eq!(mapper.mapping(), None);
}

#[test]
fn upnp_conflict_moves_to_another_port() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        taken: vec![4000],
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    let m = mapped(&events);
    assert_eq!(m.len(), 1, "{events:?}");
    let port = m[0].1.external.port();
    assert!((49152..=65535).contains(&port), "{port}");
    assert_eq!(
        router.mappings.keys().collect::<Vec<_>>(),
        vec![&("upnp", port)]
    );
    // Every port taken: three more tries, then UPnP fails.
    let script = Script {
        pcp: false,
        natpmp: false,
        taken: (0..=u16::MAX).collect(),
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert!(mapped(&events).is_empty());
    assert!(
        matches!(
            &answers(&events)[&Method::Upnp],
            Answer::Failed(Error::Upnp { code: 718, .. })
        ),
        "{events:?}"
    );
    assert_eq!(
        router
            .log
            .iter()
            .filter(|l| l.contains("AddPortMapping"))
            .count(),
        4
    );
}

#[test]
fn ssdp_answers_from_another_device_are_ignored() {
    let start = Instant::now();
    let script = Script {
        pcp: false,
        natpmp: false,
        ssdp_from: Ipv4Addr::new(192, 168, 1, 77),
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert_eq!(
        answers(&events)[&Method::Upnp],
        Answer::Failed(Error::Timeout)
    );
    assert!(
        !router.log.iter().any(|l| l.contains("GET")),
        "{:?}",
        router.log
    );
}

#[test]
fn close_while_pcp_probes_deletes_what_it_may_have_made() {
    let start = Instant::now();
    let mut router = Router::new(Script::new());
    let mut mapper = PortMapper::new(start, config());
    mapper.close(start);
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(10),
        None,
    );
    assert!(mapped(&events).is_empty(), "{events:?}");
    assert!(
        matches!(events.last(), Some((_, Event::Closed))),
        "{events:?}"
    );
    assert!(
        router.log.contains(&"pcp map lifetime=0".to_owned()),
        "{:?}",
        router.log
    );
    assert!(router.mappings.is_empty(), "{:?}", router.mappings);
    assert_eq!(mapper.poll_timeout(), None);
}

#[test]
fn a_late_pcp_answer_is_deleted_on_close_too() {
    let start = Instant::now();
    let script = Script {
        pcp_delay: Duration::from_millis(1500),
        upnp: false,
        ..Script::new()
    };
    let mut router = Router::new(script);
    let mut mapper = PortMapper::new(start, config());
    let mut close = |m: &mut PortMapper, now: Instant| m.close(now);
    let events = drive(
        &mut mapper,
        &mut router,
        start,
        Duration::from_secs(30),
        Some((Duration::from_secs(5), &mut close)),
    );
    // PCP timed out after 1 s, NAT-PMP mapped; PCP's answers came later and were ignored,
    // but the router made the mapping: close deletes both.
    assert_eq!(
        answers(&events)[&Method::Pcp],
        Answer::Failed(Error::Timeout)
    );
    assert_eq!(mapped(&events)[0].1.method, Method::NatPmp);
    assert!(
        router.log.contains(&"pcp map lifetime=0".to_owned()),
        "{:?}",
        router.log
    );
    assert!(
        matches!(events.last(), Some((_, Event::Closed))),
        "{events:?}"
    );
    assert!(router.mappings.is_empty(), "{:?}", router.mappings);
}
