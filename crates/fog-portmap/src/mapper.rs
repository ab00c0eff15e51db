//! The port mapping machine: three method clients probed at once, one mapping held.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};

use crate::http::{self, ResponseReader, Url};
use crate::igd::{self, Description, SoapResponse};
use crate::{
    Answer, Config, Error, Event, Mapping, Method, ParseError, Protocol, TcpCommand, TcpId,
    TcpInput, natpmp, pcp, ssdp,
};

/// First retransmission interval of PCP and NAT-PMP requests (RFC 6886 §3.1: 250 ms, doubling).
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest interval between retransmissions (RFC 6887 §8.1.1 MRT is 1024 s; a renewal
/// retries more often so a lapse is noticed within the lifetime's second half).
const MAX_RETRY: Duration = Duration::from_secs(8);
/// SSDP's M-SEARCH is repeated this often while we wait (UDA 1.1 §1.3.2 advises repeats, as UDP
/// may lose one); `MX: 1` asks devices to answer within a second.
const SSDP_REPEAT: Duration = Duration::from_millis(500);
/// UPnP AddPortMapping retries on a conflict (718) with another external port, at most this
/// often.
const MAX_CONFLICT_RETRIES: u8 = 3;
/// UPnP errors answered by retrying with a permanent lease: 725 OnlyPermanentLeasesSupported
/// (IGD WANIPConnection:1 §2.4.16), and 402 Invalid Args, which some routers return for any
/// non-zero NewLeaseDuration.
const PERMANENT_ONLY: [u16; 2] = [725, 402];
/// 718 ConflictInMappingEntry: another client holds that external port.
const CONFLICT: u16 = 718;

/// A request retransmitted with a doubling interval until a deadline.
#[derive(Debug)]
struct Retry {
    payload: Vec<u8>,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

impl Retry {
    fn new(
        now: Instant,
        payload: Vec<u8>,
        timeout: Duration,
        out: &mut Out,
        to: SocketAddr,
    ) -> Self {
        out.udp.push_back((to, payload.clone()));
        Self {
            payload,
            next: now + FIRST_RETRY,
            interval: FIRST_RETRY,
            deadline: now + timeout,
        }
    }

    /// Retransmits if due; `Err` once the deadline has passed.
    fn poll(&mut self, now: Instant, out: &mut Out, to: SocketAddr) -> Result<(), Error> {
        if now >= self.deadline {
            return Err(Error::Timeout);
        }
        if now >= self.next {
            out.udp.push_back((to, self.payload.clone()));
            self.interval = (self.interval * 2).min(MAX_RETRY);
            self.next = now + self.interval;
        }
        Ok(())
    }

    fn wake(&self) -> Instant {
        self.next.min(self.deadline)
    }
}

/// What the methods produce: datagrams, TCP commands.
#[derive(Debug, Default)]
struct Out {
    udp: VecDeque<(SocketAddr, Vec<u8>)>,
    tcp: VecDeque<TcpCommand>,
    next_tcp: u32,
}

impl Out {
    fn tcp_id(&mut self) -> TcpId {
        self.next_tcp = self.next_tcp.wrapping_add(1);
        TcpId(self.next_tcp)
    }
}

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The probe (PCP: its MAP; NAT-PMP: the external address; UPnP: discovery).
    Probe,
    /// Create or renew the mapping.
    Map,
    /// Delete it.
    Delete,
}

/// Where a method stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Waiting for an answer.
    Busy(Purpose),
    /// The probe succeeded; it can map (PCP: it has mapped).
    Ready,
    /// It holds the mapping.
    Holding,
    /// It failed for good (this round).
    Failed,
    /// Nothing to do (deleted, or not asked).
    Idle,
}

/// What a method's exchange finished with.
#[derive(Debug)]
enum Done {
    Probe(Result<Option<Ipv4Addr>, Error>),
    Map(Result<Mapping, Error>),
    Delete,
}

// ---------------------------------------------------------------------------------------
// PCP (RFC 6887)

#[derive(Debug)]
struct Pcp {
    nonce: [u8; 12],
    status: Status,
    retry: Option<Retry>,
    /// The last mapping granted; its external address is suggested again on renewal
    /// (§11.2.1).
    mapping: Option<Mapping>,
    /// The probe's MAP got no answer in time: a slow server may still have made the mapping.
    probe_timed_out: bool,
}

impl Pcp {
    fn server(config: &Config) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(config.gateway), pcp::SERVER_PORT)
    }

    fn request(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        purpose: Purpose,
        lifetime: u32,
    ) {
        let (port, ip) = match self.mapping {
            Some(m) => (m.external.port(), *m.external.ip()),
            None => (config.internal.port(), Ipv4Addr::UNSPECIFIED),
        };
        let request = pcp::MapRequest {
            lifetime,
            client: pcp::mapped(*config.internal.ip()),
            nonce: self.nonce,
            protocol: match config.protocol {
                Protocol::Udp => pcp::PROTO_UDP,
                Protocol::Tcp => pcp::PROTO_TCP,
            },
            internal_port: config.internal.port(),
            // §11.1: a delete carries the ports and address of the mapping; suggesting
            // our internal port first keeps the port where the router allows it.
            suggested_port: port,
            suggested_ip: pcp::mapped(ip),
        };
        let mut buf = [0; pcp::MAP_LEN];
        let n = request.emit(&mut buf);
        self.retry = Some(Retry::new(
            now,
            buf[..n].to_vec(),
            config.udp_timeout,
            out,
            Self::server(config),
        ));
        self.status = Status::Busy(purpose);
    }

    fn handle(&mut self, config: &Config, bytes: &[u8]) -> Option<Done> {
        let Status::Busy(purpose) = self.status else {
            return None;
        };
        let response = match pcp::Response::parse(bytes) {
            Ok(r) => r,
            // §9: a NAT-PMP-only server answers with version 0 and "unsupported version".
            Err(ParseError::Version(0)) => {
                return self.finish(purpose, Err(Error::UnsupportedVersion));
            }
            Err(e) => return self.finish(purpose, Err(Error::Malformed(e))),
        };
        if response.opcode != pcp::OPCODE_MAP {
            return None;
        }
        if let Some(map) = &response.map {
            // §11.3: a response for another nonce, protocol or port is not ours.
            let protocol = match config.protocol {
                Protocol::Udp => pcp::PROTO_UDP,
                Protocol::Tcp => pcp::PROTO_TCP,
            };
            if map.nonce != self.nonce
                || map.protocol != protocol
                || map.internal_port != config.internal.port()
            {
                return None;
            }
        }
        if response.result != pcp::ResultCode::SUCCESS {
            return self.finish(purpose, Err(Error::Pcp(response.result)));
        }
        if purpose == Purpose::Delete {
            return self.finish(purpose, Ok(None));
        }
        let map = response.map?;
        let Some(ip) = map.external_ip.to_ipv4_mapped() else {
            return self.finish(
                purpose,
                Err(Error::Malformed(ParseError::Version(pcp::VERSION))),
            );
        };
        let mapping = Mapping {
            method: Method::Pcp,
            internal: config.internal,
            external: SocketAddrV4::new(ip, map.external_port),
            lifetime: Some(Duration::from_secs(response.lifetime.into())),
        };
        self.mapping = Some(mapping);
        self.finish(purpose, Ok(Some(mapping)))
    }

    fn finish(&mut self, purpose: Purpose, result: Result<Option<Mapping>, Error>) -> Option<Done> {
        self.retry = None;
        Some(match (purpose, result) {
            (Purpose::Delete, _) => {
                self.status = Status::Idle;
                Done::Delete
            }
            (Purpose::Probe, Ok(Some(m))) => {
                self.status = Status::Ready;
                Done::Map(Ok(m))
            }
            (_, Ok(Some(m))) => {
                self.status = Status::Holding;
                Done::Map(Ok(m))
            }
            (_, Ok(None)) => {
                self.status = Status::Failed;
                Done::Map(Err(Error::Malformed(ParseError::Truncated)))
            }
            (_, Err(e)) => {
                self.status = Status::Failed;
                Done::Map(Err(e))
            }
        })
    }

    fn timeout(&mut self, now: Instant, config: &Config, out: &mut Out) -> Option<Done> {
        let Status::Busy(purpose) = self.status else {
            return None;
        };
        let retry = self.retry.as_mut()?;
        match retry.poll(now, out, Self::server(config)) {
            Ok(()) => None,
            Err(e) => {
                self.probe_timed_out |= purpose == Purpose::Probe;
                self.finish(purpose, Err(e))
            }
        }
    }

    /// Sends a delete once, without waiting for its answer: for a mapping a late server may
    /// have made after we stopped listening.
    fn delete_blindly(&self, config: &Config, out: &mut Out) {
        let request = pcp::MapRequest {
            lifetime: 0,
            client: pcp::mapped(*config.internal.ip()),
            nonce: self.nonce,
            protocol: match config.protocol {
                Protocol::Udp => pcp::PROTO_UDP,
                Protocol::Tcp => pcp::PROTO_TCP,
            },
            internal_port: config.internal.port(),
            suggested_port: config.internal.port(),
            suggested_ip: pcp::mapped(Ipv4Addr::UNSPECIFIED),
        };
        let mut buf = [0; pcp::MAP_LEN];
        let n = request.emit(&mut buf);
        out.udp.push_back((Self::server(config), buf[..n].to_vec()));
    }
}

// ---------------------------------------------------------------------------------------
// NAT-PMP (RFC 6886)

#[derive(Debug)]
struct NatPmp {
    status: Status,
    retry: Option<Retry>,
    external_ip: Option<Ipv4Addr>,
    external_port: Option<u16>,
}

impl NatPmp {
    fn server(config: &Config) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(config.gateway), natpmp::SERVER_PORT)
    }

    fn opcode(config: &Config) -> u8 {
        match config.protocol {
            Protocol::Udp => natpmp::OP_MAP_UDP,
            Protocol::Tcp => natpmp::OP_MAP_TCP,
        }
    }

    fn send(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        purpose: Purpose,
        request: natpmp::Request,
    ) {
        let mut buf = [0; 16];
        let n = request.emit(&mut buf);
        self.retry = Some(Retry::new(
            now,
            buf[..n].to_vec(),
            config.udp_timeout,
            out,
            Self::server(config),
        ));
        self.status = Status::Busy(purpose);
    }

    fn probe(&mut self, now: Instant, config: &Config, out: &mut Out) {
        self.send(
            now,
            config,
            out,
            Purpose::Probe,
            natpmp::Request::ExternalAddress,
        );
    }

    fn map(&mut self, now: Instant, config: &Config, out: &mut Out, lifetime: u32) {
        let purpose = if lifetime == 0 {
            Purpose::Delete
        } else {
            Purpose::Map
        };
        let request = natpmp::Request::Map {
            opcode: Self::opcode(config),
            internal_port: config.internal.port(),
            // §3.4: a delete suggests external port 0; a renewal the port it holds.
            suggested_port: if lifetime == 0 {
                0
            } else {
                self.external_port.unwrap_or(config.internal.port())
            },
            lifetime,
        };
        self.send(now, config, out, purpose, request);
    }

    fn handle(&mut self, config: &Config, bytes: &[u8]) -> Option<Done> {
        let Status::Busy(purpose) = self.status else {
            return None;
        };
        let response = match natpmp::Response::parse(bytes) {
            Ok(r) => r,
            Err(e) => return self.finish(purpose, Err(Error::Malformed(e))),
        };
        match (purpose, response) {
            (Purpose::Probe, natpmp::Response::ExternalAddress { ip, .. }) => {
                self.external_ip = Some(ip);
                self.retry = None;
                self.status = Status::Ready;
                Some(Done::Probe(Ok(Some(ip))))
            }
            (
                Purpose::Probe,
                natpmp::Response::Error {
                    opcode: natpmp::OP_EXTERNAL_ADDRESS,
                    result,
                },
            ) => self.finish(purpose, Err(Error::NatPmp(result))),
            (
                Purpose::Map | Purpose::Delete,
                natpmp::Response::Map {
                    opcode,
                    internal_port,
                    external_port,
                    lifetime,
                    ..
                },
            ) if opcode == Self::opcode(config) && internal_port == config.internal.port() => {
                if purpose == Purpose::Delete {
                    return self.finish(purpose, Ok(()));
                }
                self.retry = None;
                self.status = Status::Holding;
                self.external_port = Some(external_port);
                let ip = self.external_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                Some(Done::Map(Ok(Mapping {
                    method: Method::NatPmp,
                    internal: config.internal,
                    external: SocketAddrV4::new(ip, external_port),
                    lifetime: Some(Duration::from_secs(lifetime.into())),
                })))
            }
            (Purpose::Map | Purpose::Delete, natpmp::Response::Error { opcode, result })
                if opcode == Self::opcode(config) =>
            {
                self.finish(purpose, Err(Error::NatPmp(result)))
            }
            // An answer to another request (a late one, or our PCP request's): not this one.
            _ => None,
        }
    }

    fn finish(&mut self, purpose: Purpose, result: Result<(), Error>) -> Option<Done> {
        self.retry = None;
        match (purpose, result) {
            (Purpose::Delete, _) => {
                self.status = Status::Idle;
                Some(Done::Delete)
            }
            (Purpose::Probe, Err(e)) => {
                self.status = Status::Failed;
                Some(Done::Probe(Err(e)))
            }
            (_, Err(e)) => {
                self.status = Status::Failed;
                Some(Done::Map(Err(e)))
            }
            (_, Ok(())) => None,
        }
    }

    fn timeout(&mut self, now: Instant, config: &Config, out: &mut Out) -> Option<Done> {
        let Status::Busy(purpose) = self.status else {
            return None;
        };
        let retry = self.retry.as_mut()?;
        match retry.poll(now, out, Self::server(config)) {
            Ok(()) => None,
            Err(e) => self.finish(purpose, Err(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// UPnP IGD

/// One HTTP request on a connection of its own.
#[derive(Debug)]
struct Exchange {
    id: TcpId,
    request: Option<Vec<u8>>,
    reader: ResponseReader,
    deadline: Instant,
}

/// Where UPnP stands.
#[derive(Debug)]
enum UpnpStep {
    /// Multicasting M-SEARCH, waiting for the gateway's answer.
    Search { next: Instant, deadline: Instant },
    /// Fetching the description.
    Describe(Exchange, Url),
    /// Asking for the external address.
    ExternalIp(Exchange),
    /// AddPortMapping with this lease and external port.
    Add {
        exchange: Exchange,
        lease: u32,
        port: u16,
        conflicts: u8,
    },
    /// DeletePortMapping.
    Delete(Exchange),
    /// Nothing outstanding.
    Quiet,
}

#[derive(Debug)]
struct Upnp {
    status: Status,
    step: UpnpStep,
    /// The control URL (its host is always the gateway) and service type.
    control: Option<(Url, String)>,
    external_ip: Option<Ipv4Addr>,
    /// The lease the router accepted (0: permanent).
    lease: Option<u32>,
    external_port: Option<u16>,
    /// Whether a LOCATION or control URL named a host other than the gateway.
    rewrote_host: bool,
    rng: u64,
}

impl Upnp {
    fn start(now: Instant, config: &Config, out: &mut Out, seed: u64) -> Self {
        let mut upnp = Self {
            status: Status::Busy(Purpose::Probe),
            step: UpnpStep::Quiet,
            control: None,
            external_ip: None,
            lease: None,
            external_port: None,
            rewrote_host: false,
            rng: seed,
        };
        Self::search(out);
        upnp.step = UpnpStep::Search {
            next: now + SSDP_REPEAT,
            deadline: now + config.ssdp_timeout,
        };
        upnp
    }

    fn search(out: &mut Out) {
        for target in ssdp::SEARCH_TARGETS {
            let mut buf = [0; 256];
            if let Some(n) = ssdp::emit_search(target, 1, &mut buf) {
                out.udp
                    .push_back((SocketAddr::V4(ssdp::MULTICAST), buf[..n].to_vec()));
            }
        }
    }

    /// The gateway's address at `url`'s port: a URL naming another host (a LAN name, the
    /// router's WAN address, another interface) is reached on the gateway instead.
    fn target(&mut self, config: &Config, url: &Url) -> SocketAddrV4 {
        if url.host.parse::<Ipv4Addr>().ok() != Some(config.gateway) {
            self.rewrote_host = true;
        }
        SocketAddrV4::new(config.gateway, url.port)
    }

    fn open(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Exchange {
        let remote = self.target(config, url);
        let host = remote.to_string();
        let request = match body {
            Some(body) => http::request("POST", &host, &url.path, headers, body),
            None => http::request("GET", &host, &url.path, headers, &[]),
        };
        let id = out.tcp_id();
        out.tcp.push_back(TcpCommand::Connect { id, remote });
        Exchange {
            id,
            request: Some(request),
            reader: ResponseReader::new(config.max_http_response),
            deadline: now + config.http_timeout,
        }
    }

    fn soap(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        action: &str,
        args: &[(&str, String)],
    ) -> Option<Exchange> {
        let (url, service) = self.control.clone()?;
        let body = igd::soap_envelope(&service, action, args);
        let soap_action = format!("\"{service}#{action}\"");
        Some(self.open(
            now,
            config,
            out,
            &url,
            &[
                ("Content-Type", "text/xml; charset=\"utf-8\""),
                ("SOAPAction", &soap_action),
            ],
            Some(body.as_bytes()),
        ))
    }

    fn add(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        lease: u32,
        port: u16,
        conflicts: u8,
    ) {
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", port.to_string()),
            // Upper case: several routers compare case-sensitively and refuse "udp".
            (
                "NewProtocol",
                match config.protocol {
                    Protocol::Udp => "UDP",
                    Protocol::Tcp => "TCP",
                }
                .to_owned(),
            ),
            ("NewInternalPort", config.internal.port().to_string()),
            ("NewInternalClient", config.internal.ip().to_string()),
            ("NewEnabled", "1".to_owned()),
            ("NewPortMappingDescription", config.description.clone()),
            ("NewLeaseDuration", lease.to_string()),
        ];
        match self.soap(now, config, out, "AddPortMapping", &args) {
            Some(exchange) => {
                self.status = Status::Busy(Purpose::Map);
                self.step = UpnpStep::Add {
                    exchange,
                    lease,
                    port,
                    conflicts,
                };
            }
            None => {
                self.status = Status::Failed;
                self.step = UpnpStep::Quiet;
            }
        }
    }

    fn map(&mut self, now: Instant, config: &Config, out: &mut Out) {
        let lease = self
            .lease
            .unwrap_or_else(|| u32::try_from(config.lifetime.as_secs()).unwrap_or(u32::MAX));
        let port = self.external_port.unwrap_or(config.internal.port());
        self.add(now, config, out, lease, port, 0);
    }

    fn delete(&mut self, now: Instant, config: &Config, out: &mut Out) -> bool {
        let Some(port) = self.external_port else {
            return false;
        };
        self.close_step(out);
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", port.to_string()),
            (
                "NewProtocol",
                match config.protocol {
                    Protocol::Udp => "UDP",
                    Protocol::Tcp => "TCP",
                }
                .to_owned(),
            ),
        ];
        match self.soap(now, config, out, "DeletePortMapping", &args) {
            Some(exchange) => {
                self.status = Status::Busy(Purpose::Delete);
                self.step = UpnpStep::Delete(exchange);
                true
            }
            None => false,
        }
    }

    /// Closes whatever connection is open and stops.
    fn close_step(&mut self, out: &mut Out) {
        match std::mem::replace(&mut self.step, UpnpStep::Quiet) {
            UpnpStep::Describe(e, _)
            | UpnpStep::ExternalIp(e)
            | UpnpStep::Delete(e)
            | UpnpStep::Add { exchange: e, .. } => {
                out.tcp.push_back(TcpCommand::Close { id: e.id });
            }
            UpnpStep::Search { .. } | UpnpStep::Quiet => {}
        }
    }

    fn exchange(&mut self) -> Option<&mut Exchange> {
        match &mut self.step {
            UpnpStep::Describe(e, _)
            | UpnpStep::ExternalIp(e)
            | UpnpStep::Delete(e)
            | UpnpStep::Add { exchange: e, .. } => Some(e),
            UpnpStep::Search { .. } | UpnpStep::Quiet => None,
        }
    }

    fn handle_ssdp(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Option<Done> {
        if !matches!(self.step, UpnpStep::Search { .. }) {
            return None;
        }
        // Only the gateway's own IGD maps ports on our path; another device's (a second
        // router, an extender) would map on a NAT our traffic does not cross.
        if source.ip() != IpAddr::V4(config.gateway) {
            return None;
        }
        let response = ssdp::SearchResponse::parse(bytes).ok()?;
        let url = match Url::parse(&response.location) {
            Ok(url) => url,
            Err(e) => return self.fail(Purpose::Probe, Error::Malformed(e)),
        };
        let exchange = self.open(now, config, out, &url, &[], None);
        self.step = UpnpStep::Describe(exchange, url);
        None
    }

    fn handle_tcp(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        id: TcpId,
        input: TcpInput<'_>,
    ) -> Option<Done> {
        let exchange = self.exchange()?;
        if exchange.id != id {
            return None;
        }
        let response = match input {
            TcpInput::Connected => {
                if let Some(data) = exchange.request.take() {
                    out.tcp.push_back(TcpCommand::Send { id, data });
                }
                return None;
            }
            TcpInput::Data(data) => exchange.reader.push(data, false),
            TcpInput::Closed => exchange.reader.push(&[], true),
            TcpInput::Failed => {
                let purpose = self.purpose();
                self.close_step(out);
                return self.fail(purpose, Error::Connection);
            }
        };
        let response = match response {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                let purpose = self.purpose();
                self.close_step(out);
                return self.fail(purpose, Error::Malformed(e));
            }
        };
        let step = std::mem::replace(&mut self.step, UpnpStep::Quiet);
        out.tcp.push_back(TcpCommand::Close { id });
        match step {
            UpnpStep::Describe(_, location) => {
                self.described(now, config, out, &location, &response)
            }
            UpnpStep::ExternalIp(_) => match soap_result(&response) {
                Ok(soap) => match soap
                    .value("NewExternalIPAddress")
                    .map(str::parse::<Ipv4Addr>)
                {
                    Some(Ok(ip)) => {
                        self.external_ip = Some(ip);
                        self.status = Status::Ready;
                        Some(Done::Probe(Ok(Some(ip))))
                    }
                    // Some routers without a WAN connection answer an empty address.
                    _ => self.fail(
                        Purpose::Probe,
                        Error::Malformed(ParseError::Missing("NewExternalIPAddress")),
                    ),
                },
                Err(e) => self.fail(Purpose::Probe, e),
            },
            UpnpStep::Add {
                lease,
                port,
                conflicts,
                ..
            } => match soap_result(&response) {
                Ok(_) => {
                    self.lease = Some(lease);
                    self.external_port = Some(port);
                    self.status = Status::Holding;
                    Some(Done::Map(Ok(Mapping {
                        method: Method::Upnp,
                        internal: config.internal,
                        external: SocketAddrV4::new(
                            self.external_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                            port,
                        ),
                        lifetime: (lease != 0).then(|| Duration::from_secs(lease.into())),
                    })))
                }
                Err(Error::Upnp { code, .. }) if PERMANENT_ONLY.contains(&code) && lease != 0 => {
                    self.add(now, config, out, 0, port, conflicts);
                    None
                }
                Err(Error::Upnp { code: CONFLICT, .. }) if conflicts < MAX_CONFLICT_RETRIES => {
                    // Another port in the dynamic range (RFC 6335 §6), from the seeded RNG.
                    let port = 49152 + (self.next_random() % 16384) as u16;
                    self.add(now, config, out, lease, port, conflicts + 1);
                    None
                }
                Err(e) => self.fail(Purpose::Map, e),
            },
            UpnpStep::Delete(_) => {
                self.status = Status::Idle;
                Some(Done::Delete)
            }
            UpnpStep::Search { .. } | UpnpStep::Quiet => None,
        }
    }

    fn described(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut Out,
        location: &Url,
        response: &http::Response,
    ) -> Option<Done> {
        if response.status != 200 {
            return self.fail(Purpose::Probe, Error::HttpStatus(response.status));
        }
        let description = match Description::parse(&response.body) {
            Ok(d) => d,
            Err(e) => return self.fail(Purpose::Probe, Error::Malformed(e)),
        };
        let Some(service) = description.wan_service() else {
            return self.fail(Purpose::Probe, Error::NoWanService);
        };
        let base = match description.url_base.as_deref().map(Url::parse) {
            Some(Ok(base)) => base,
            _ => location.clone(),
        };
        let control = match base.join(&service.control_url) {
            Ok(url) => url,
            Err(e) => return self.fail(Purpose::Probe, Error::Malformed(e)),
        };
        self.control = Some((control, service.service_type.clone()));
        match self.soap(now, config, out, "GetExternalIPAddress", &[]) {
            Some(exchange) => {
                self.step = UpnpStep::ExternalIp(exchange);
                None
            }
            None => self.fail(Purpose::Probe, Error::NoWanService),
        }
    }

    fn purpose(&self) -> Purpose {
        match self.status {
            Status::Busy(p) => p,
            _ => Purpose::Probe,
        }
    }

    fn fail(&mut self, purpose: Purpose, error: Error) -> Option<Done> {
        self.step = UpnpStep::Quiet;
        Some(match purpose {
            Purpose::Probe => {
                self.status = Status::Failed;
                Done::Probe(Err(error))
            }
            Purpose::Map => {
                self.status = Status::Failed;
                Done::Map(Err(error))
            }
            Purpose::Delete => {
                self.status = Status::Idle;
                Done::Delete
            }
        })
    }

    fn timeout(&mut self, now: Instant, config: &Config, out: &mut Out) -> Option<Done> {
        match &mut self.step {
            UpnpStep::Search { deadline, .. } if now >= *deadline => {
                self.fail(Purpose::Probe, Error::Timeout)
            }
            UpnpStep::Search { next, .. } => {
                if now >= *next {
                    *next = now + SSDP_REPEAT;
                    Self::search(out);
                }
                let _ = config;
                None
            }
            UpnpStep::Quiet => None,
            _ => {
                let deadline = self.exchange().map(|e| e.deadline)?;
                if now < deadline {
                    return None;
                }
                let purpose = self.purpose();
                self.close_step(out);
                self.fail(purpose, Error::Timeout)
            }
        }
    }

    fn wake(&self) -> Option<Instant> {
        match &self.step {
            UpnpStep::Search { next, deadline } => Some((*next).min(*deadline)),
            UpnpStep::Describe(e, _)
            | UpnpStep::ExternalIp(e)
            | UpnpStep::Delete(e)
            | UpnpStep::Add { exchange: e, .. } => Some(e.deadline),
            UpnpStep::Quiet => None,
        }
    }

    /// SplitMix64 (Steele, Lea, Flood 2014): enough to pick a port.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A SOAP answer: the envelope on 200, the UPnP error of a fault (UDA 1.1 §3.2.2 sends it
/// with 500), else the status.
fn soap_result(response: &http::Response) -> Result<SoapResponse, Error> {
    match SoapResponse::parse(&response.body) {
        Ok(SoapResponse::Fault { code, description }) => Err(Error::Upnp { code, description }),
        Ok(ok) if response.status == 200 => Ok(ok),
        Ok(_) => Err(Error::HttpStatus(response.status)),
        Err(_) if response.status != 200 => Err(Error::HttpStatus(response.status)),
        Err(e) => Err(Error::Malformed(e)),
    }
}

// ---------------------------------------------------------------------------------------
// The machine

/// Where the whole mapper stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Methods are probing; the best ready one maps once every better one has concluded.
    Probing,
    /// This method is creating the mapping.
    Mapping(Method),
    /// This method holds the mapping.
    Held(Method),
    /// No mapping (every method failed, or it lapsed); nothing more happens until close.
    Idle,
    /// Deleting the mapping this method holds.
    Closing(Method),
    /// Done.
    Closed,
}

/// The held mapping's deadlines.
#[derive(Debug, Clone, Copy)]
struct Held {
    mapping: Mapping,
    /// When to renew (half the lifetime, RFC 6886 §3.3, RFC 6887 §11.2.1); `None` for a
    /// permanent lease.
    renew_at: Option<Instant>,
    expires: Option<Instant>,
}

/// A port mapping client for one internal port; see the crate docs.
#[derive(Debug)]
pub struct PortMapper {
    config: Config,
    phase: Phase,
    pcp: Option<Pcp>,
    natpmp: Option<NatPmp>,
    upnp: Option<Upnp>,
    held: Option<Held>,
    /// Whether each method's [`Event::Answer`] has gone out.
    reported: [bool; 3],
    out: Out,
    events: VecDeque<Event>,
    /// When closing must stop waiting for the delete's answer.
    close_deadline: Option<Instant>,
}

impl PortMapper {
    /// Starts probing every method of `config` at `now`.
    ///
    /// # Panics
    ///
    /// If `config.internal` has the unspecified address or port 0 (PCP and UPnP carry the
    /// internal address; the driver knows which interface faces the gateway).
    pub fn new(now: Instant, config: Config) -> Self {
        assert!(
            !config.internal.ip().is_unspecified() && config.internal.port() != 0,
            "the internal address must be the interface's address and a port"
        );
        let mut out = Out::default();
        let seed = config.seed;
        let mut nonce = [0u8; 12];
        let mut state = seed ^ 0x5eed_0f9c;
        for chunk in nonce.chunks_mut(4) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            chunk.copy_from_slice(&((state >> 32) as u32).to_be_bytes());
        }
        let enabled = |m: Method| config.methods.contains(&m);
        let lifetime = u32::try_from(config.lifetime.as_secs()).unwrap_or(u32::MAX);
        let pcp = enabled(Method::Pcp).then(|| {
            let mut p = Pcp {
                nonce,
                status: Status::Idle,
                retry: None,
                mapping: None,
                probe_timed_out: false,
            };
            p.request(now, &config, &mut out, Purpose::Probe, lifetime);
            p
        });
        let natpmp = enabled(Method::NatPmp).then(|| {
            let mut n = NatPmp {
                status: Status::Idle,
                retry: None,
                external_ip: None,
                external_port: None,
            };
            n.probe(now, &config, &mut out);
            n
        });
        let upnp = enabled(Method::Upnp)
            .then(|| Upnp::start(now, &config, &mut out, seed.rotate_left(17)));
        let mut mapper = Self {
            config,
            phase: Phase::Probing,
            pcp,
            natpmp,
            upnp,
            held: None,
            reported: [false; 3],
            out,
            events: VecDeque::new(),
            close_deadline: None,
        };
        mapper.decide(now);
        mapper
    }

    /// The mapping held now, public or not.
    pub fn mapping(&self) -> Option<Mapping> {
        self.held.map(|h| h.mapping)
    }

    /// Whether UPnP reached the gateway on a URL that named another host (LOCATION or
    /// controlURL): a quirk worth a line in a report.
    pub fn upnp_rewrote_host(&self) -> bool {
        self.upnp.as_ref().is_some_and(|u| u.rewrote_host)
    }

    /// Deletes the mapping (RFC 6887 §15, RFC 6886 §3.4, DeletePortMapping) and ends with
    /// [`Event::Closed`]; at most one UDP or HTTP timeout later if the router does not answer.
    pub fn close(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closing(_) | Phase::Closed) {
            return;
        }
        // Stop every probe: their answers no longer matter.
        if let Some(u) = self.upnp.as_mut() {
            u.close_step(&mut self.out);
        }
        let holder = match self.phase {
            Phase::Held(m) | Phase::Mapping(m) => Some(m),
            // PCP's probe is a MAP: the router may have made it even if we have no answer.
            Phase::Probing
                if self
                    .pcp
                    .as_ref()
                    .is_some_and(|p| matches!(p.status, Status::Busy(_) | Status::Ready)) =>
            {
                Some(Method::Pcp)
            }
            _ => None,
        };
        let started = match holder {
            Some(Method::Pcp) => self
                .pcp
                .as_mut()
                .map(|p| {
                    p.request(now, &self.config, &mut self.out, Purpose::Delete, 0);
                })
                .is_some(),
            Some(Method::NatPmp) => self
                .natpmp
                .as_mut()
                .map(|n| {
                    n.map(now, &self.config, &mut self.out, 0);
                })
                .is_some(),
            Some(Method::Upnp) => self
                .upnp
                .as_mut()
                .is_some_and(|u| u.delete(now, &self.config, &mut self.out)),
            None => false,
        };
        // RFC 6887 §15 deletes by nonce and internal port: harmless if nothing was made.
        if holder != Some(Method::Pcp)
            && let Some(p) = self.pcp.as_ref()
            && p.probe_timed_out
        {
            p.delete_blindly(&self.config, &mut self.out);
        }
        // Only the deleting method may still talk.
        for m in Method::ALL {
            if Some(m) != holder || !started {
                self.silence(m);
            }
        }
        self.held = None;
        match holder {
            Some(m) if started => {
                self.phase = Phase::Closing(m);
                self.close_deadline =
                    Some(now + self.config.udp_timeout.max(self.config.http_timeout));
            }
            _ => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed);
            }
        }
    }

    fn silence(&mut self, method: Method) {
        match method {
            Method::Pcp => {
                if let Some(p) = self.pcp.as_mut() {
                    p.retry = None;
                    p.status = Status::Idle;
                }
            }
            Method::NatPmp => {
                if let Some(n) = self.natpmp.as_mut() {
                    n.retry = None;
                    n.status = Status::Idle;
                }
            }
            Method::Upnp => {
                if let Some(u) = self.upnp.as_mut() {
                    u.close_step(&mut self.out);
                    u.status = Status::Idle;
                }
            }
        }
    }

    /// The next TCP command for the driver. Drain these before the transmits.
    pub fn poll_tcp(&mut self) -> Option<TcpCommand> {
        self.out.tcp.pop_front()
    }

    /// Progress of a connection the mapper asked for.
    pub fn handle_tcp(&mut self, now: Instant, id: TcpId, input: TcpInput<'_>) {
        let done = self
            .upnp
            .as_mut()
            .and_then(|u| u.handle_tcp(now, &self.config, &mut self.out, id, input));
        if let Some(done) = done {
            self.on_done(now, Method::Upnp, done);
        }
        self.decide(now);
    }

    fn status(&self, method: Method) -> Option<&Status> {
        match method {
            Method::Pcp => self.pcp.as_ref().map(|p| &p.status),
            Method::NatPmp => self.natpmp.as_ref().map(|n| &n.status),
            Method::Upnp => self.upnp.as_ref().map(|u| &u.status),
        }
    }

    fn report(&mut self, method: Method, answer: Answer) {
        if !std::mem::replace(&mut self.reported[method.index()], true) {
            self.events.push_back(Event::Answer { method, answer });
        }
    }

    fn external_ip(&self, method: Method) -> Option<Ipv4Addr> {
        match method {
            Method::Pcp => self
                .pcp
                .as_ref()
                .and_then(|p| p.mapping.map(|m| *m.external.ip())),
            Method::NatPmp => self.natpmp.as_ref().and_then(|n| n.external_ip),
            Method::Upnp => self.upnp.as_ref().and_then(|u| u.external_ip),
        }
    }

    /// A method finished an exchange.
    fn on_done(&mut self, now: Instant, method: Method, done: Done) {
        match done {
            Done::Probe(Err(e)) => self.report(method, Answer::Failed(e)),
            Done::Probe(Ok(_)) => {
                if matches!(self.phase, Phase::Held(_) | Phase::Idle) {
                    let external_ip = self.external_ip(method);
                    self.report(method, Answer::Available { external_ip });
                }
            }
            Done::Map(result) => match (self.phase, result) {
                (Phase::Probing, Ok(_)) => {
                    // PCP's probe mapped; `decide` adopts it when its turn comes.
                }
                (Phase::Probing, Err(e)) => self.report(method, Answer::Failed(e)),
                (Phase::Mapping(m), Ok(mapping)) if m == method => self.adopt(now, mapping),
                (Phase::Mapping(m), Err(e)) if m == method => {
                    self.report(method, Answer::Failed(e));
                    self.phase = Phase::Probing;
                }
                (Phase::Held(m), Ok(mapping)) if m == method => self.adopt(now, mapping),
                (Phase::Held(m), Err(error)) if m == method => {
                    self.renewal_failed(now, method, error)
                }
                _ => {}
            },
            Done::Delete => {
                if let Phase::Closing(m) = self.phase
                    && m == method
                {
                    self.phase = Phase::Closed;
                    self.close_deadline = None;
                    self.events.push_back(Event::Closed);
                }
            }
        }
    }

    fn adopt(&mut self, now: Instant, mapping: Mapping) {
        let method = mapping.method;
        let first = !matches!(self.phase, Phase::Held(_));
        self.phase = Phase::Held(method);
        let (renew_at, expires) = match mapping.lifetime {
            Some(l) if !l.is_zero() => (Some(now + l / 2), Some(now + l)),
            _ => (None, None),
        };
        self.held = Some(Held {
            mapping,
            renew_at,
            expires,
        });
        match method {
            Method::Pcp => {
                if let Some(p) = self.pcp.as_mut() {
                    p.status = Status::Holding;
                }
            }
            Method::NatPmp | Method::Upnp => {}
        }
        self.report(method, Answer::Mapped(mapping));
        if first {
            for other in Method::ALL {
                if other != method && self.status(other) == Some(&Status::Ready) {
                    let external_ip = self.external_ip(other);
                    self.report(other, Answer::Available { external_ip });
                }
            }
        }
        self.events.push_back(if mapping.is_public() {
            Event::Mapped(mapping)
        } else {
            Event::NotPublic(mapping)
        });
    }

    fn renewal_failed(&mut self, now: Instant, method: Method, error: Error) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        // Try again halfway to the expiry while at least a second is left.
        match held.expires {
            Some(expires) if expires > now + Duration::from_secs(2) => {
                held.renew_at = Some(now + (expires - now) / 2);
                match method {
                    Method::Pcp => {
                        if let Some(p) = self.pcp.as_mut() {
                            p.status = Status::Holding;
                        }
                    }
                    Method::NatPmp => {
                        if let Some(n) = self.natpmp.as_mut() {
                            n.status = Status::Holding;
                        }
                    }
                    Method::Upnp => {
                        if let Some(u) = self.upnp.as_mut() {
                            u.status = Status::Holding;
                        }
                    }
                }
            }
            _ => {
                self.held = None;
                self.phase = Phase::Idle;
                self.events.push_back(Event::Lost { method, error });
            }
        }
    }

    /// Moves the probing phase on: maps with the best method once every better one has
    /// concluded.
    fn decide(&mut self, now: Instant) {
        if self.phase != Phase::Probing {
            return;
        }
        for method in Method::ALL {
            match self.status(method).cloned() {
                None | Some(Status::Failed) | Some(Status::Idle) => continue,
                Some(Status::Busy(_)) => return,
                Some(Status::Holding) => return,
                Some(Status::Ready) => {
                    match method {
                        Method::Pcp => {
                            // PCP's probe was its MAP: adopt what it granted.
                            if let Some(mapping) = self.pcp.as_ref().and_then(|p| p.mapping) {
                                self.adopt(now, mapping);
                            }
                        }
                        Method::NatPmp => {
                            self.phase = Phase::Mapping(method);
                            let lifetime =
                                u32::try_from(self.config.lifetime.as_secs()).unwrap_or(u32::MAX);
                            if let Some(n) = self.natpmp.as_mut() {
                                n.map(now, &self.config, &mut self.out, lifetime);
                            }
                        }
                        Method::Upnp => {
                            self.phase = Phase::Mapping(method);
                            if let Some(u) = self.upnp.as_mut() {
                                u.map(now, &self.config, &mut self.out);
                            }
                        }
                    }
                    return;
                }
            }
        }
        self.phase = Phase::Idle;
        self.events.push_back(Event::Failed);
    }
}

/// Whether `packet` may be an SSDP search answer: from port 1900, or an HTTP-looking datagram
/// from the gateway on any port (UDA 1.1 §1.3.3 does not fix the source port; some routers
/// answer from an ephemeral one).
fn is_ssdp_answer(packet: &Receive<'_>, from_gateway: bool) -> bool {
    packet.source.port() == ssdp::MULTICAST.port()
        || (from_gateway && packet.payload.starts_with(b"HTTP/"))
}

impl SansIo for PortMapper {
    type Event = Event;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        let from_gateway = packet.source.ip() == IpAddr::V4(self.config.gateway);
        (from_gateway && packet.source.port() == pcp::SERVER_PORT)
            || is_ssdp_answer(packet, from_gateway)
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        let bytes = packet.payload;
        let from_gateway = packet.source.ip() == IpAddr::V4(self.config.gateway);
        if from_gateway && packet.source.port() == pcp::SERVER_PORT && !bytes.is_empty() {
            let pcp_busy = self
                .pcp
                .as_ref()
                .is_some_and(|p| matches!(p.status, Status::Busy(_)));
            // RFC 6887 §9: version 0 with result 1 (unsupported version) is a NAT-PMP-only
            // server answering our PCP request; any other version 0 answer is NAT-PMP's.
            let nat_pmp_refusing_pcp =
                bytes[0] == natpmp::VERSION && bytes.get(2..4) == Some(&[0, 1]) && pcp_busy;
            let done = if bytes[0] == pcp::VERSION || nat_pmp_refusing_pcp {
                self.pcp
                    .as_mut()
                    .and_then(|p| p.handle(&self.config, bytes))
                    .map(|d| (Method::Pcp, d))
            } else {
                self.natpmp
                    .as_mut()
                    .and_then(|n| n.handle(&self.config, bytes))
                    .map(|d| (Method::NatPmp, d))
            };
            if let Some((method, done)) = done {
                self.on_done(now, method, done);
            }
        } else if is_ssdp_answer(&packet, from_gateway) {
            let done = self.upnp.as_mut().and_then(|u| {
                u.handle_ssdp(now, &self.config, &mut self.out, packet.source, bytes)
            });
            if let Some(done) = done {
                self.on_done(now, Method::Upnp, done);
            }
        }
        self.decide(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut finished = Vec::new();
        if let Some(p) = self.pcp.as_mut()
            && let Some(d) = p.timeout(now, &self.config, &mut self.out)
        {
            finished.push((Method::Pcp, d));
        }
        if let Some(n) = self.natpmp.as_mut()
            && let Some(d) = n.timeout(now, &self.config, &mut self.out)
        {
            finished.push((Method::NatPmp, d));
        }
        if let Some(u) = self.upnp.as_mut()
            && let Some(d) = u.timeout(now, &self.config, &mut self.out)
        {
            finished.push((Method::Upnp, d));
        }
        for (method, done) in finished {
            self.on_done(now, method, done);
        }
        if let (Phase::Held(method), Some(held)) = (self.phase, self.held) {
            if held.expires.is_some_and(|e| now >= e) {
                self.held = None;
                self.phase = Phase::Idle;
                self.silence(method);
                self.events.push_back(Event::Lost {
                    method,
                    error: Error::Expired,
                });
            } else if held.renew_at.is_some_and(|r| now >= r) {
                if let Some(h) = self.held.as_mut() {
                    h.renew_at = None;
                }
                let lifetime = u32::try_from(self.config.lifetime.as_secs()).unwrap_or(u32::MAX);
                match method {
                    Method::Pcp => {
                        if let Some(p) = self.pcp.as_mut() {
                            p.request(now, &self.config, &mut self.out, Purpose::Map, lifetime);
                        }
                    }
                    Method::NatPmp => {
                        if let Some(n) = self.natpmp.as_mut() {
                            n.map(now, &self.config, &mut self.out, lifetime);
                        }
                    }
                    Method::Upnp => {
                        if let Some(u) = self.upnp.as_mut() {
                            u.map(now, &self.config, &mut self.out);
                        }
                    }
                }
            }
        }
        if let Phase::Closing(_) = self.phase
            && self.close_deadline.is_some_and(|d| now >= d)
        {
            self.phase = Phase::Closed;
            self.close_deadline = None;
            for m in Method::ALL {
                self.silence(m);
            }
            self.events.push_back(Event::Closed);
        }
        self.decide(now);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (destination, payload) = self.out.udp.pop_front()?;
            // Every request is at most a few hundred bytes; a caller's buffer shorter than
            // that loses the datagram (the retransmission schedule covers it).
            if let Some(dst) = buf.get_mut(..payload.len()) {
                dst.copy_from_slice(&payload);
                return Some(Transmit::new(destination, payload.len()));
            }
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.and_then(|h| match (h.renew_at, h.expires) {
            (Some(r), Some(e)) => Some(r.min(e)),
            (r, e) => r.or(e),
        });
        [
            self.pcp
                .as_ref()
                .and_then(|p| p.retry.as_ref().map(Retry::wake)),
            self.natpmp
                .as_ref()
                .and_then(|n| n.retry.as_ref().map(Retry::wake)),
            self.upnp.as_ref().and_then(Upnp::wake),
            if matches!(self.phase, Phase::Held(_)) {
                held
            } else {
                None
            },
            self.close_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
