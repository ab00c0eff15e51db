//! Port mapping for FogConnect, sans-IO: asks the home router for a port that forwards to
//! ours, with PCP (RFC 6887) MAP, NAT-PMP (RFC 6886) or UPnP IGD (SSDP, the device description
//! and SOAP over HTTP/1.1).
//!
//! [`PortMapper`] probes every enabled method at once with short timeouts and maps with the
//! best that answers (PCP, then NAT-PMP, then UPnP); it renews at half the granted lifetime
//! and deletes the mapping on [`close`](PortMapper::close). An external address that is not
//! public (0.0.0.0, loopback, RFC 1918, carrier-grade 100.64/10, link-local: another NAT
//! sits upstream) is reported as [`Event::NotPublic`], never as [`Event::Mapped`].
//!
//! It never touches a socket or the clock. PCP, NAT-PMP and SSDP are UDP datagrams through
//! [`SansIo`]; UPnP's HTTP needs TCP connections, which the machine asks for with
//! [`poll_tcp`](PortMapper::poll_tcp) (connect, send, close) and whose progress the driver
//! reports with [`handle_tcp`](PortMapper::handle_tcp). Each HTTP exchange has a connection of
//! its own (`Connection: close`) and a response-size cap.
//!
//! ```no_run
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::Instant;
//! use fog_core::SansIo;
//! use fog_portmap::{Config, Event, PortMapper, TcpCommand};
//!
//! let now = Instant::now();
//! let internal = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), 4000);
//! let mut mapper = PortMapper::new(now, Config::new(Ipv4Addr::new(192, 168, 1, 1), internal, 7));
//! let mut buf = vec![0u8; 65_535];
//! loop {
//!     // ... feed datagrams (`handle_packet`), TCP progress (`handle_tcp`) or `handle_timeout` ...
//!     while let Some(command) = mapper.poll_tcp() {
//!         match command {
//!             TcpCommand::Connect { .. } | TcpCommand::Send { .. } | TcpCommand::Close { .. } => {}
//!         }
//!     }
//!     while let Some(t) = mapper.poll_transmit(now, &mut buf) {
//!         let _ = (t.destination, &buf[..t.len]); // send it from the mapper's UDP socket
//!     }
//!     while let Some(event) = mapper.poll_event() {
//!         if let Event::Mapped(mapping) = event {
//!             println!("reachable at {}", mapping.external);
//!         }
//!     }
//!     let _wake_at = mapper.poll_timeout();
//! #   break;
//! }
//! ```

pub mod http;
pub mod igd;
mod mapper;
pub mod natpmp;
pub mod pcp;
pub mod ssdp;

#[cfg(test)]
mod fake_router;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub use fog_core::SansIo;
pub use mapper::PortMapper;

/// A way of asking the router for a mapping, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// Port Control Protocol, RFC 6887.
    Pcp,
    /// NAT Port Mapping Protocol, RFC 6886.
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection / WANPPPConnection).
    Upnp,
}

impl Method {
    /// All methods, best first.
    pub const ALL: [Method; 3] = [Method::Pcp, Method::NatPmp, Method::Upnp];

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Pcp => "pcp",
            Method::NatPmp => "nat-pmp",
            Method::Upnp => "upnp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The transport protocol of the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// How a [`PortMapper`] behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The default gateway, where PCP and NAT-PMP requests go and the only address whose SSDP
    /// answers are believed.
    pub gateway: Ipv4Addr,
    /// The local address and port to map. The address must be the one the gateway sees (the
    /// interface toward it), not 0.0.0.0: PCP and UPnP carry it in the request.
    pub internal: SocketAddrV4,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The lifetime asked for; RFC 6886 §3.3 recommends two hours. UPnP is asked for the same
    /// lease (or a permanent one if it refuses, errors 402 and 725).
    pub lifetime: Duration,
    /// Which methods to try; the best that works is used.
    pub methods: Vec<Method>,
    /// How long PCP and NAT-PMP requests are retransmitted (from 250 ms, doubling, RFC 6886
    /// §3.1) before the method is taken as absent. RFC 6887 §8.1.1's 3 s initial timeout is
    /// for a client that knows a server is there; probing wants an answer or a verdict fast.
    pub udp_timeout: Duration,
    /// How long to wait for an SSDP answer (the M-SEARCH is repeated with `MX: 1`).
    pub ssdp_timeout: Duration,
    /// How long one HTTP exchange (connect, request, whole response) may take.
    pub http_timeout: Duration,
    /// The largest HTTP response read (headers and body); a larger one is an error.
    pub max_http_response: usize,
    /// The UPnP mapping's description.
    pub description: String,
    /// Seeds the PCP nonce and UPnP's choice of another external port after a conflict.
    pub seed: u64,
}

impl Config {
    /// UDP, two hours, every method, 1 s for PCP/NAT-PMP, 2 s for SSDP, 3 s per HTTP exchange,
    /// 64 KiB responses.
    pub fn new(gateway: Ipv4Addr, internal: SocketAddrV4, seed: u64) -> Self {
        Self {
            gateway,
            internal,
            protocol: Protocol::Udp,
            lifetime: Duration::from_secs(7200),
            methods: Method::ALL.to_vec(),
            udp_timeout: Duration::from_secs(1),
            ssdp_timeout: Duration::from_secs(2),
            http_timeout: Duration::from_secs(3),
            max_http_response: 64 * 1024,
            description: "fogconnect".to_owned(),
            seed,
        }
    }
}

/// A mapping the router granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Who granted it.
    pub method: Method,
    /// The local address it forwards to.
    pub internal: SocketAddrV4,
    /// The router's external address and port.
    pub external: SocketAddrV4,
    /// How long it lasts unless renewed; `None` for a permanent UPnP lease.
    pub lifetime: Option<Duration>,
}

impl Mapping {
    /// Whether the external address is reachable from the internet (see [`is_public`]).
    pub fn is_public(&self) -> bool {
        is_public(*self.external.ip())
    }
}

/// Whether `ip` can be a public address: not unspecified, loopback, private (RFC 1918),
/// carrier-grade shared space (RFC 6598, 100.64/10), link-local, broadcast or multicast. A
/// router whose "external" address is one of these sits behind another NAT.
pub fn is_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || cgnat)
}

/// What one method answered, reported once per method with [`Event::Answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It holds the mapping.
    Mapped(Mapping),
    /// It answered, but a preferred method holds the mapping; the external address it gave,
    /// if it gives one before mapping (NAT-PMP and UPnP do).
    Available {
        /// The external address it reported.
        external_ip: Option<Ipv4Addr>,
    },
    /// It failed.
    Failed(Error),
}

/// What the mapper reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One method's result, once per method (for reports such as `fogconnect nat`).
    Answer {
        /// The method.
        method: Method,
        /// What it said.
        answer: Answer,
    },
    /// A public mapping, after it is made and again after every renewal.
    Mapped(Mapping),
    /// The router mapped the port, but its external address is not public (double NAT): the
    /// mapping must not be offered to peers. Kept and renewed like a public one.
    NotPublic(Mapping),
    /// The mapping could not be renewed and has lapsed (or is about to).
    Lost {
        /// The method that held it.
        method: Method,
        /// Why.
        error: Error,
    },
    /// No method could map the port; every [`Event::Answer`] says why.
    Failed,
    /// After [`PortMapper::close`]: the mapping is deleted (or the deletion got no answer in
    /// time); the mapper is done.
    Closed,
}

/// Why a method failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No answer in time: nothing speaks the protocol there, or it is filtered.
    Timeout,
    /// The PCP server refused (RFC 6887 §7.4).
    Pcp(pcp::ResultCode),
    /// The NAT-PMP gateway refused (RFC 6886 §3.5).
    NatPmp(natpmp::ResultCode),
    /// The gateway speaks another version (a NAT-PMP-only router answering PCP, RFC 6887 §9).
    UnsupportedVersion,
    /// A UPnP action's fault (UDA 1.1 §3.2.2).
    Upnp {
        /// The UPnP error code.
        code: u16,
        /// The device's description of it.
        description: String,
    },
    /// An HTTP status other than 200 without a SOAP fault.
    HttpStatus(u16),
    /// The device has no WANIPConnection or WANPPPConnection service.
    NoWanService,
    /// The TCP connection could not be made or closed early.
    Connection,
    /// The router sent something we could not understand (the peer misbehaved).
    Malformed(ParseError),
    /// The mapping lapsed before it could be renewed.
    Expired,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => write!(f, "no answer"),
            Error::Pcp(code) => write!(f, "PCP result {} ({})", code.0, code.name()),
            Error::NatPmp(code) => write!(f, "NAT-PMP result {} ({})", code.0, code.name()),
            Error::UnsupportedVersion => write!(f, "the gateway speaks another version"),
            Error::Upnp { code, description } => write!(f, "UPnP error {code} ({description})"),
            Error::HttpStatus(status) => write!(f, "HTTP status {status}"),
            Error::NoWanService => write!(f, "no WANIPConnection or WANPPPConnection service"),
            Error::Connection => write!(f, "TCP connection failed"),
            Error::Malformed(e) => write!(f, "malformed answer: {e}"),
            Error::Expired => write!(f, "mapping expired"),
        }
    }
}

impl std::error::Error for Error {}

/// Why bytes from the network could not be parsed. Small on purpose: it says which check
/// failed, not where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Shorter than its format needs.
    Truncated,
    /// Longer than any valid message, or over a configured cap.
    TooLong,
    /// Another protocol version (0 NAT-PMP, 2 PCP).
    Version(u8),
    /// A request, where a response was expected (or an unknown request).
    NotAResponse,
    /// A response to an opcode we never send.
    UnknownOpcode(u8),
    /// Not HTTP/1.x as RFC 9112 writes it.
    Http,
    /// An HTTP status other than the one expected.
    Status(u16),
    /// A required header or element is missing.
    Missing(&'static str),
    /// Not an `http://` URL we can follow.
    Url,
    /// Not well-formed XML (or nested too deep).
    Xml,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => write!(f, "truncated"),
            ParseError::TooLong => write!(f, "too long"),
            ParseError::Version(v) => write!(f, "version {v}"),
            ParseError::NotAResponse => write!(f, "not a response"),
            ParseError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            ParseError::Http => write!(f, "bad HTTP"),
            ParseError::Status(s) => write!(f, "HTTP status {s}"),
            ParseError::Missing(what) => write!(f, "missing {what}"),
            ParseError::Url => write!(f, "bad URL"),
            ParseError::Xml => write!(f, "bad XML"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Identifies one TCP connection the mapper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpId(pub u32);

/// What the mapper asks of its driver's TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpCommand {
    /// Open a connection; report [`TcpInput::Connected`] or [`TcpInput::Failed`].
    Connect {
        /// Its id in later commands and inputs.
        id: TcpId,
        /// Where to.
        remote: SocketAddrV4,
    },
    /// Write these bytes (all of them, in order) after the connection is up.
    Send {
        /// The connection.
        id: TcpId,
        /// What to write.
        data: Vec<u8>,
    },
    /// Close the connection and forget it; report nothing more about it.
    Close {
        /// The connection.
        id: TcpId,
    },
}

/// What the driver reports about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpInput<'a> {
    /// The connection is up.
    Connected,
    /// Bytes arrived.
    Data(&'a [u8]),
    /// The peer closed its side (end of the response).
    Closed,
    /// Connecting, reading or writing failed.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.1.1",
            "255.255.255.255",
            "224.0.0.1",
            "0.1.2.3",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "8.8.8.8",
            "203.0.113.9",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
