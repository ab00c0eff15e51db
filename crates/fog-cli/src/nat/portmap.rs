//! `fogconnect nat --portmap`: fog-portmap's [`PortMapper`] on blocking std sockets, asking the
//! default gateway with PCP, NAT-PMP and UPnP IGD at once, then deleting what it got.
//!
//! The mapper is sans-IO; this is its driver: one UDP socket for PCP, NAT-PMP and SSDP, and a
//! `TcpStream` per HTTP exchange UPnP asks for ([`TcpCommand`]). The mapped port is a fresh
//! UDP socket's, held open while the mapping exists.

// A binary reads the clock for its deadlines; the machine only sees the `now` it is given.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo};
use fog_portmap::{
    Answer, Config, Event, Mapping, Method, PortMapper, TcpCommand, TcpId, TcpInput,
};
use serde_json::{Value, json};

/// How long the probe may take: every method's timeout (SSDP's 2 s, then one HTTP exchange of
/// 3 s for each of the description, the address and the mapping) with room to spare.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);
/// How long the deletion may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// What the gateway's port mapping services answered.
#[derive(Debug, Clone)]
pub(crate) struct PortmapReport {
    /// Who was asked.
    pub(crate) gateway: Ipv4Addr,
    /// The local address whose port was mapped.
    pub(crate) internal: SocketAddrV4,
    /// Each method's answer (methods that said nothing before the deadline are absent).
    pub(crate) answers: BTreeMap<Method, Answer>,
    /// The mapping made, public or not.
    pub(crate) mapping: Option<Mapping>,
    /// Whether UPnP's URLs named a host other than the gateway (reached on the gateway).
    pub(crate) upnp_rewrote_host: bool,
    /// Whether the mapping was deleted (the router confirmed, or did not answer in time).
    pub(crate) deleted: bool,
}

/// Asks `gateway` (default: the IPv4 default route's) for a mapping of a fresh UDP port.
pub(crate) fn run(gateway: Option<Ipv4Addr>, seed: u64) -> Result<PortmapReport, String> {
    let gateway = match gateway {
        Some(g) => g,
        None => default_gateway().ok_or("no IPv4 default gateway (say --gateway)")?,
    };
    let local_ip = {
        let probe =
            UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        probe
            .connect((gateway, fog_portmap::pcp::SERVER_PORT))
            .map_err(|e| format!("no route to {gateway}: {e}"))?;
        match probe.local_addr().map_err(|e| e.to_string())? {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => return Err("no IPv4 address toward the gateway".into()),
        }
    };
    let app = UdpSocket::bind((local_ip, 0)).map_err(|e| format!("cannot bind {local_ip}: {e}"))?;
    let SocketAddr::V4(internal) = app.local_addr().map_err(|e| e.to_string())? else {
        return Err("the mapped socket is not IPv4".into());
    };
    let config = Config::new(gateway, internal, seed);
    let count = config.methods.len();
    let mut driver = Driver::new(PortMapper::new(Instant::now(), config), local_ip)
        .map_err(|e| format!("cannot open the control socket: {e}"))?;
    let mut answers = BTreeMap::new();
    let mut mapping = None;
    let mut concluded = false;
    driver.run_until(Instant::now() + PROBE_DEADLINE, |event| {
        match event {
            Event::Answer { method, answer } => {
                answers.insert(*method, answer.clone());
            }
            Event::Mapped(m) | Event::NotPublic(m) => {
                mapping = Some(*m);
                concluded = true;
            }
            Event::Failed => concluded = true,
            _ => {}
        }
        concluded && answers.len() == count
    });
    driver.mapper.close(Instant::now());
    let mut deleted = false;
    driver.run_until(Instant::now() + CLOSE_DEADLINE, |event| {
        deleted |= *event == Event::Closed;
        deleted
    });
    drop(app);
    Ok(PortmapReport {
        gateway,
        internal,
        answers,
        mapping,
        upnp_rewrote_host: driver.mapper.upnp_rewrote_host(),
        deleted,
    })
}

/// The text section for `fogconnect nat`'s table.
pub(crate) fn table(report: &PortmapReport) -> String {
    let mut out = format!(
        "Port mapping (gateway {}, for {}):\n",
        report.gateway, report.internal
    );
    for method in Method::ALL {
        let said = match report.answers.get(&method) {
            Some(Answer::Mapped(m)) => format!("mapped {}{}", m.external, lifetime_words(m)),
            Some(Answer::Available { external_ip }) => match external_ip {
                Some(ip) => {
                    format!("answers (external address {ip}); not used, a preferred method mapped")
                }
                None => "answers; not used, a preferred method mapped".to_owned(),
            },
            Some(Answer::Failed(e)) => format!("{e}"),
            None => "no verdict in time".to_owned(),
        };
        out.push_str(&format!("  {:<8} {said}\n", method_title(method)));
    }
    if report.upnp_rewrote_host {
        out.push_str("  (UPnP's description named another host; it was reached on the gateway)\n");
    }
    match report.mapping {
        Some(m) if m.is_public() => out.push_str(&format!(
            "  reachable from the internet at {} via {}{}\n",
            m.external,
            method_title(m.method),
            if report.deleted {
                " (deleted again)"
            } else {
                ""
            }
        )),
        Some(m) => out.push_str(&format!(
            "  {} is not a public address: another NAT sits upstream (double NAT); not offered\n",
            m.external.ip()
        )),
        None => out.push_str("  no port mapping available\n"),
    }
    out
}

/// The `portmap` member of `fogconnect nat --json`.
pub(crate) fn json(report: &PortmapReport) -> Value {
    let mut methods = serde_json::Map::new();
    for method in Method::ALL {
        let value = match report.answers.get(&method) {
            Some(Answer::Mapped(m)) => json!({
                "result": "mapped",
                "external": m.external.to_string(),
                "lifetime": m.lifetime.map(|l| l.as_secs()),
            }),
            Some(Answer::Available { external_ip }) => json!({
                "result": "available",
                "external_ip": external_ip.map(|ip| ip.to_string()),
            }),
            Some(Answer::Failed(e)) => json!({"result": "failed", "error": e.to_string()}),
            None => json!({"result": "none"}),
        };
        methods.insert(method.name().to_owned(), value);
    }
    json!({
        "gateway": report.gateway.to_string(),
        "internal": report.internal.to_string(),
        "methods": methods,
        "mapping": report.mapping.map(|m| json!({
            "method": m.method.name(),
            "external": m.external.to_string(),
            "lifetime": m.lifetime.map(|l| l.as_secs()),
            "public": m.is_public(),
        })),
        "upnp_rewrote_host": report.upnp_rewrote_host,
        "deleted": report.deleted,
    })
}

fn method_title(method: Method) -> &'static str {
    match method {
        Method::Pcp => "PCP",
        Method::NatPmp => "NAT-PMP",
        Method::Upnp => "UPnP",
    }
}

fn lifetime_words(m: &Mapping) -> String {
    match m.lifetime {
        Some(l) => format!(" for {} s", l.as_secs()),
        None => " (permanent lease)".to_owned(),
    }
}

/// The IPv4 default gateway from `/proc/net/route` (Linux; elsewhere say --gateway).
fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 2 && fields[1] == "00000000" {
            let raw = u32::from_str_radix(fields[2], 16).ok()?;
            // The kernel prints the address in host (little-endian) order.
            Some(Ipv4Addr::from(raw.swap_bytes()))
        } else {
            None
        }
    })
}

/// The mapper with its sockets.
struct Driver {
    mapper: PortMapper,
    udp: UdpSocket,
    local: SocketAddr,
    tcp: BTreeMap<TcpId, TcpStream>,
    buf: Vec<u8>,
}

impl Driver {
    fn new(mapper: PortMapper, local_ip: Ipv4Addr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind((local_ip, 0))?;
        let local = udp.local_addr()?;
        Ok(Self {
            mapper,
            udp,
            local,
            tcp: BTreeMap::new(),
            buf: vec![0; 65_535],
        })
    }

    /// Turns until `stop` says so for an event or `deadline` passes. The drain order is
    /// fog-core's: (TCP commands,) transmits, events, then the timeout.
    fn run_until(&mut self, deadline: Instant, mut stop: impl FnMut(&Event) -> bool) {
        loop {
            let now = Instant::now();
            let mut progressed = false;
            while let Some(command) = self.mapper.poll_tcp() {
                self.tcp_command(now, command);
                progressed = true;
            }
            while let Some(t) = self.mapper.poll_transmit(now, &mut self.buf) {
                // A lost datagram is retransmitted by the machine; an unreachable gateway
                // is its timeout.
                let _ = self.udp.send_to(&self.buf[..t.len], t.destination);
            }
            let mut done = false;
            while let Some(event) = self.mapper.poll_event() {
                done |= stop(&event);
            }
            if done || now >= deadline {
                return;
            }
            if progressed {
                continue;
            }
            let wake = self.mapper.poll_timeout().unwrap_or(deadline).min(deadline);
            let wait = wake
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            let _ = self.udp.set_read_timeout(Some(wait));
            if let Ok((n, source)) = self.udp.recv_from(&mut self.buf) {
                let payload = self.buf[..n].to_vec();
                let packet = Receive {
                    source,
                    local: self.local,
                    payload: &payload,
                };
                if self.mapper.accepts(&packet) {
                    self.mapper.handle_packet(Instant::now(), packet);
                }
            }
            self.read_tcp();
            let now = Instant::now();
            if self.mapper.poll_timeout().is_some_and(|t| t <= now) {
                self.mapper.handle_timeout(now);
            }
        }
    }

    fn tcp_command(&mut self, now: Instant, command: TcpCommand) {
        match command {
            TcpCommand::Connect { id, remote } => {
                match TcpStream::connect_timeout(&SocketAddr::V4(remote), Duration::from_secs(2)) {
                    Ok(stream) => {
                        let _ = stream.set_nonblocking(true);
                        self.tcp.insert(id, stream);
                        self.mapper.handle_tcp(now, id, TcpInput::Connected);
                    }
                    Err(_) => self.mapper.handle_tcp(now, id, TcpInput::Failed),
                }
            }
            TcpCommand::Send { id, data } => {
                // Requests are a few hundred bytes: written blocking, then back to polling.
                let ok = self.tcp.get_mut(&id).is_some_and(|s| {
                    let _ = s.set_nonblocking(false);
                    let ok = s.write_all(&data).is_ok();
                    let _ = s.set_nonblocking(true);
                    ok
                });
                if !ok {
                    self.tcp.remove(&id);
                    self.mapper.handle_tcp(now, id, TcpInput::Failed);
                }
            }
            TcpCommand::Close { id } => {
                self.tcp.remove(&id);
            }
        }
    }

    fn read_tcp(&mut self) {
        let ids: Vec<TcpId> = self.tcp.keys().copied().collect();
        for id in ids {
            while let Some(stream) = self.tcp.get_mut(&id) {
                match stream.read(&mut self.buf) {
                    Ok(0) => {
                        self.tcp.remove(&id);
                        self.mapper.handle_tcp(Instant::now(), id, TcpInput::Closed);
                    }
                    Ok(n) => {
                        let data = self.buf[..n].to_vec();
                        self.mapper
                            .handle_tcp(Instant::now(), id, TcpInput::Data(&data));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.tcp.remove(&id);
                        self.mapper.handle_tcp(Instant::now(), id, TcpInput::Failed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fog_portmap::Error;

    fn report(mapping: Option<Mapping>) -> PortmapReport {
        let mut answers = BTreeMap::new();
        if let Some(m) = mapping {
            answers.insert(Method::Pcp, Answer::Mapped(m));
        }
        answers.insert(
            Method::NatPmp,
            Answer::Available {
                external_ip: mapping.map(|m| *m.external.ip()),
            },
        );
        answers.insert(Method::Upnp, Answer::Failed(Error::Timeout));
        PortmapReport {
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            internal: "192.168.1.20:40000".parse().unwrap(),
            answers,
            mapping,
            upnp_rewrote_host: false,
            deleted: true,
        }
    }

    fn mapping(external: &str) -> Mapping {
        Mapping {
            method: Method::Pcp,
            internal: "192.168.1.20:40000".parse().unwrap(),
            external: external.parse().unwrap(),
            lifetime: Some(Duration::from_secs(7200)),
        }
    }

    #[test]
    fn each_method_gets_a_line_and_the_verdict_follows() {
        let text = table(&report(Some(mapping("11.0.0.1:40000"))));
        assert_eq!(
            text,
            "Port mapping (gateway 192.168.1.1, for 192.168.1.20:40000):\n\
             \x20 PCP      mapped 11.0.0.1:40000 for 7200 s\n\
             \x20 NAT-PMP  answers (external address 11.0.0.1); not used, a preferred method mapped\n\
             \x20 UPnP     no answer\n\
             \x20 reachable from the internet at 11.0.0.1:40000 via PCP (deleted again)\n"
        );
        let text = table(&report(Some(mapping("100.64.0.9:40000"))));
        assert!(
            text.contains("100.64.0.9 is not a public address"),
            "{text}"
        );
        let text = table(&report(None));
        assert!(text.contains("PCP      no verdict in time"), "{text}");
        assert!(text.ends_with("no port mapping available\n"), "{text}");
    }

    #[test]
    fn json_names_every_method() {
        let value = json(&report(Some(mapping("11.0.0.1:40000"))));
        assert_eq!(value["methods"]["pcp"]["result"], "mapped");
        assert_eq!(value["methods"]["pcp"]["lifetime"], 7200);
        assert_eq!(value["methods"]["nat-pmp"]["external_ip"], "11.0.0.1");
        assert_eq!(value["methods"]["upnp"]["error"], "no answer");
        assert_eq!(value["mapping"]["public"], true);
        assert_eq!(json(&report(None))["mapping"], Value::Null);
    }
}
