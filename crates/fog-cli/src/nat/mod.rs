//! `fogconnect nat`: fog-stun's RFC 5780 [`Discovery`] machine on fog-mio's [`Driver`].
//!
//! 1. `--server` is resolved with the OS resolver ([`ToSocketAddrs`]), IPv4 first unless `-6`.
//! 2. The local IP is the one the OS would send to the server from: a throwaway UDP socket is
//!    `connect`ed to the server and asked its `local_addr` (no datagram leaves). The driver binds
//!    wildcard sockets, whose [`Receive::local`](fog_core::Receive::local) carries no IP, so
//!    discovery learns the IP through [`DiscoveryConfig::own_addresses`]; without it a host with
//!    no NAT would be reported as behind one.
//! 3. Every local port the run uses ([`DiscoveryConfig::local_addrs`], a block from a random
//!    first port in the dynamic range) is bound up front on the wildcard address, so that a
//!    port another program holds is found before the first request, and the run moves to
//!    another block instead of losing a test to a failed on-demand bind.
//! 4. The driver turns until [`Event::Done`] or the deadline.

pub(crate) mod portmap;
pub(crate) mod render;

use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use fog_mio::Driver;
use fog_stun::discovery::{Discovery, DiscoveryConfig, Event, Report, Step};

use crate::cli::{Families, NatArgs, ServerArg};

/// `--timeout`'s default, before `--lifetime` is added: the slowest complete run, every question
/// timing out (about 5 s each: test I, the behaviour tests together, six port samples one after
/// the other), fits in it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Blocks of local ports tried before giving up when ports are taken.
const BIND_ATTEMPTS: u64 = 8;

/// What a run found, with what the report alone does not know.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// `--server` as given.
    pub(crate) server_arg: ServerArg,
    /// The mapping port's local address, with the IP the OS picked for the route to the server.
    pub(crate) local: SocketAddr,
    /// The discovery report.
    pub(crate) report: Report,
    /// What the driver saw, for the ICMP errors a silent server may have caused.
    pub(crate) io: fog_mio::Stats,
}

impl Outcome {
    /// Whether the run produced a finding. UDP blocked is one; a server that refused test I,
    /// or answered nothing usable while UDP evidently passed, is not.
    pub(crate) fn found(&self) -> bool {
        self.report.mapped.is_some()
            || self.report.behaviour == fog_core::nat::Behaviour::UdpBlocked
    }
}

/// Why `fogconnect nat` produced no report.
#[derive(Debug)]
pub(crate) enum NatError {
    /// The resolver failed.
    Resolve { server: ServerArg, error: io::Error },
    /// The name resolved, but not to an address of the family asked for.
    NoAddress {
        server: ServerArg,
        families: Families,
        found: Vec<IpAddr>,
    },
    /// The OS has no route to the server (or no address of its family).
    NoRoute {
        server: SocketAddr,
        error: io::Error,
    },
    /// The local ports could not be bound.
    Bind(io::Error),
    /// The event loop failed.
    EventLoop(io::Error),
    /// No report before the deadline.
    Timeout(Duration),
}

impl fmt::Display for NatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve { server, error } => {
                write!(f, "cannot resolve {}: {error}", server.host)
            }
            Self::NoAddress {
                server,
                families,
                found,
            } => {
                let want = match families {
                    Families::V6Only => "IPv6",
                    Families::V4Only => "IPv4",
                    Families::PreferV4 => "IP",
                };
                match found.as_slice() {
                    [] => write!(f, "{} resolves to no address", server.host),
                    _ => write!(
                        f,
                        "{} has no {want} address (it has {}); {}",
                        server.host,
                        found
                            .iter()
                            .map(IpAddr::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        match families {
                            Families::V6Only => "drop -6 to use IPv4",
                            _ => "drop -4 to use IPv6",
                        }
                    ),
                }
            }
            Self::NoRoute { server, error } => write!(
                f,
                "no route to {server}: {error} (is the host connected, and does it have an {} \
                 address?)",
                if server.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            Self::Bind(error) => write!(f, "cannot open the local UDP ports: {error}"),
            Self::EventLoop(error) => write!(f, "the event loop failed: {error}"),
            Self::Timeout(after) => write!(
                f,
                "discovery did not finish within {} s (raise --timeout?)",
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for NatError {}

/// Runs discovery as `args` ask, with progress lines on stderr unless `--quiet`.
pub(crate) fn run(args: &NatArgs, seed: u64) -> Result<Outcome, NatError> {
    let server = resolve(&args.server, args.families())?;
    let local_ip = local_ip_towards(server)?;

    let mut config = DiscoveryConfig::new(server, seed);
    config.own_addresses = vec![local_ip];
    config.port_samples = args.samples;
    config.hairpinning = !args.no_hairpin;
    config.lifetime = args.lifetime;
    let mut driver = bind(config, seed)?;
    let config = driver.machine().config().clone();

    let timeout = args
        .timeout
        .unwrap_or(DEFAULT_TIMEOUT + args.lifetime.unwrap_or_default());
    let progress = Progress { quiet: args.quiet };
    let ports = config.local_ports();
    let given = args.server.to_string();
    let name = if given == server.to_string() {
        given
    } else {
        format!("{given} ({server})")
    };
    progress.line(format_args!(
        "asking {name} from {local_ip}, local ports {}-{}",
        ports.first().copied().unwrap_or_default(),
        ports.last().copied().unwrap_or_default(),
    ));

    // A binary reads the clock for its own deadline; the machine only sees the driver's `now`.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let deadline = started + timeout;
    let mut report = None;
    while report.is_none() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        if now >= deadline {
            return Err(NatError::Timeout(timeout));
        }
        driver
            .turn(Some(deadline - now), |_, event| match event {
                Event::Done(done) => report = Some(done),
                event => progress.event(&event),
            })
            .map_err(NatError::EventLoop)?;
    }
    let report = report.expect("the loop ends with a report");
    Ok(Outcome {
        server_arg: args.server.clone(),
        local: SocketAddr::new(local_ip, config.first_port),
        report,
        io: driver.stats(),
    })
}

/// The server's address, of the family `families` asks for.
pub(crate) fn resolve(server: &ServerArg, families: Families) -> Result<SocketAddr, NatError> {
    let candidates: Vec<SocketAddr> = match server.ip() {
        Some(ip) => vec![SocketAddr::new(ip, server.port)],
        None => (server.host.as_str(), server.port)
            .to_socket_addrs()
            .map_err(|error| NatError::Resolve {
                server: server.clone(),
                error,
            })?
            .collect(),
    };
    let v4 = candidates.iter().find(|a| a.is_ipv4());
    let v6 = candidates.iter().find(|a| a.is_ipv6());
    let chosen = match families {
        Families::PreferV4 => v4.or(v6),
        Families::V4Only => v4,
        Families::V6Only => v6,
    };
    chosen.copied().ok_or_else(|| NatError::NoAddress {
        server: server.clone(),
        families,
        found: candidates.iter().map(SocketAddr::ip).collect(),
    })
}

/// The IP the OS sends to `server` from. `connect` on UDP only picks a route and a source
/// address; nothing is sent.
fn local_ip_towards(server: SocketAddr) -> Result<IpAddr, NatError> {
    let no_route = |error| NatError::NoRoute { server, error };
    let socket = UdpSocket::bind(SocketAddr::new(unspecified_like(server.ip()), 0))
        .map_err(NatError::Bind)?;
    socket.connect(server).map_err(no_route)?;
    let ip = socket.local_addr().map_err(no_route)?.ip();
    // A v4-mapped IPv6 address never reaches here: the socket is of the server's family.
    Ok(ip)
}

/// A driver with every local port of `config` bound on the wildcard address; when a port is
/// taken, the whole block moves to another random first port.
fn bind(mut config: DiscoveryConfig, seed: u64) -> Result<Driver<Discovery>, NatError> {
    let mut last = None;
    for attempt in 0..BIND_ATTEMPTS {
        if attempt > 0 {
            // The first port DiscoveryConfig::new would pick for another seed; the transaction
            // IDs keep the original seed.
            config.first_port =
                DiscoveryConfig::new(config.server, seed.wrapping_add(attempt)).first_port;
        }
        let addrs = config.local_addrs();
        match Driver::new(Discovery::new(config.clone()), &addrs) {
            Ok(driver) => return Ok(driver),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(NatError::Bind(e)),
        }
    }
    let e = last.expect("at least one attempt");
    Err(NatError::Bind(io::Error::new(
        e.kind(),
        format!("{e} (and in {} other blocks of ports)", BIND_ATTEMPTS - 1),
    )))
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Plain progress lines on stderr, one per finished test.
#[derive(Debug, Clone, Copy)]
struct Progress {
    quiet: bool,
}

impl Progress {
    fn line(&self, text: fmt::Arguments<'_>) {
        if !self.quiet {
            // Progress is a courtesy: a closed stderr must not end the run.
            let _ = writeln!(io::stderr(), "fogconnect nat: {text}");
        }
    }

    fn event(&self, event: &Event) {
        match event {
            Event::Mapped {
                mapped,
                other_address,
                ..
            } => match other_address {
                Some(other) => self.line(format_args!(
                    "UDP passes; the server sees us at {mapped}; its other address is {other}"
                )),
                None => self.line(format_args!(
                    "UDP passes; the server sees us at {mapped}; it has no other address, so \
                     mapping and filtering cannot be tested"
                )),
            },
            Event::Progress { step, done, total } => {
                self.line(format_args!("[{done}/{total}] {} done", step_name(*step)))
            }
            Event::BufferTooSmall { needed } => self.line(format_args!(
                "a {needed}-byte request did not fit the send buffer and was not sent"
            )),
            Event::Provisional(report) => self.line(format_args!(
                "enough to connect with: {} (tests still running assume the worst)",
                report.behaviour
            )),
            Event::Done(_) => {}
        }
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Connectivity => "test I (UDP, public address)",
        Step::Mapping => "mapping tests II and III",
        Step::Filtering => "filtering tests II and III",
        Step::Hairpinning => "hairpinning",
        Step::PortPattern => "port samples",
        Step::Lifetime => "binding lifetime",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(s: &str) -> ServerArg {
        s.parse().unwrap()
    }

    #[test]
    fn literals_resolve_without_the_resolver_and_keep_their_family() {
        let v4 = resolve(&arg("127.0.0.1"), Families::PreferV4).unwrap();
        assert_eq!(v4, "127.0.0.1:3478".parse().unwrap());
        let v6 = resolve(&arg("[::1]:9"), Families::PreferV4).unwrap();
        assert_eq!(v6, "[::1]:9".parse().unwrap());
        let err = resolve(&arg("127.0.0.1"), Families::V6Only).unwrap_err();
        assert_eq!(
            err.to_string(),
            "127.0.0.1 has no IPv6 address (it has 127.0.0.1); drop -6 to use IPv4"
        );
    }

    #[test]
    fn localhost_prefers_ipv4() {
        // /etc/hosts names localhost on every system the tests run on.
        let addr = resolve(&arg("localhost:5"), Families::PreferV4).unwrap();
        assert_eq!(addr, "127.0.0.1:5".parse().unwrap());
    }

    #[test]
    fn the_local_ip_towards_loopback_is_loopback() {
        let ip = local_ip_towards("127.0.0.1:3478".parse().unwrap()).unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
