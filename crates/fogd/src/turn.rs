//! The TURN section: [`fog_turn::server::Server`] on its own fog-mio [`Driver`], one socket on
//! the listen address plus one per allocation's relayed address, which the server asks the driver
//! to bind before it answers the Allocate and to close when the allocation ends.
//!
//! Only `use-auth-secret` credentials get in (the secret from `--turn-secret` or
//! `--turn-secret-file`), so fogd never runs an open relay; the same secret lets the signaling
//! service hand out credentials ([`RelayConfig`]) for this server, or for one run elsewhere with
//! `--turn-url`.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fog_mio::{Config, Driver, Handle, Stats, Status};
use fog_signal::server::RelayConfig;
use fog_turn::auth::AuthSecret;
use fog_turn::server::{
    DEFAULT_RELAY_PORTS, Event, Limits, MAX_REALM_LEN, PeerPolicy, Server, ServerConfig,
    Stats as TurnStats,
};

use crate::cli::{SocketArgs, TurnArgs, TurnTcp};
use crate::turn_tcp::{self, FromRelay, TcpConfig, TcpService, TcpStats, ToRelay};

/// Datagrams the relay reads from one socket before it turns to the next ready one, so that one
/// busy allocation (or the listen socket) does not starve the others while the batch is long
/// enough to keep the system-call cost per datagram low. fog-mio's default too; named here
/// because the relay's fairness depends on it.
const READ_BUDGET: usize = 64;
/// How often the TURN loop looks for a new alternate server.
const ALTERNATE_CHECK: Duration = Duration::from_secs(1);

/// How long signaling's credentials stay valid by default: a day, the TURN REST API draft's
/// example (draft-uberti-behave-turn-rest-00 §2.2).
pub(crate) const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(86_400);

/// The shortest `--turn-max-lifetime`: a client refreshes about a minute before expiry.
const MIN_MAX_LIFETIME: u64 = 60;

/// The smallest token-bucket burst, so that a limit never refuses a single 65,535-byte datagram
/// outright.
const MIN_BURST: u64 = 65_535;

/// Why the TURN settings cannot be used or the service cannot start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// A setting is unusable; the message names the flag.
    Setting(String),
    /// The secret file could not be read.
    SecretFile(PathBuf, io::Error),
    /// The OS random source failed.
    Random(getrandom::Error),
    /// The listen socket could not be bound.
    Bind(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setting(message) => write!(f, "TURN: {message}"),
            Self::SecretFile(path, e) => {
                write!(f, "TURN: --turn-secret-file {}: {e}", path.display())
            }
            Self::Random(e) => write!(f, "TURN: the OS random source failed: {e}"),
            Self::Bind(e) => {
                write!(f, "TURN: {e}")?;
                if e.kind() == io::ErrorKind::AddrInUse {
                    write!(
                        f,
                        "\n  hint: another process already uses that port (coturn, or fogd's own \
                         --stun on the same address: give TURN another port, e.g. 3480); \
                         `ss -ulpn` shows which"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// What the TURN flags ask for.
pub(crate) struct Settings {
    /// The relay to run here; `None` when the secret only serves signaling for a TURN server
    /// elsewhere (`--turn-url` without `--turn`).
    pub(crate) server: Option<ServerConfig>,
    /// Its TCP listener, unless `--turn-tcp off`.
    pub(crate) tcp: Option<TcpConfig>,
    /// The credentials signaling hands out.
    pub(crate) relay: RelayConfig,
}

/// The settings `args` (flags merged with the config file) describe, or `None` when no TURN
/// flag is given.
pub(crate) fn settings(args: &TurnArgs) -> Result<Option<Settings>, StartError> {
    let bad = |m: String| Err(StartError::Setting(m));
    let secret = match (&args.turn_secret, &args.turn_secret_file) {
        (Some(secret), _) => Some(secret.clone().into_bytes()),
        (None, Some(path)) => Some(read_secret(path)?),
        (None, None) => None,
    };
    let Some(secret) = secret else {
        if args.turn.is_some() {
            return bad(
                "--turn needs --turn-secret or --turn-secret-file: credentials are the \
                        only way in, fogd never runs an open relay"
                    .into(),
            );
        }
        if !args.turn_url.is_empty() {
            return bad("--turn-url needs --turn-secret or --turn-secret-file".into());
        }
        return Ok(None);
    };
    if secret.is_empty() {
        return bad("the secret is empty".into());
    }
    let credential_ttl = match args.turn_credential_ttl {
        Some(0) => return bad("--turn-credential-ttl must be at least 1".into()),
        Some(s) => Duration::from_secs(s),
        None => DEFAULT_CREDENTIAL_TTL,
    };
    // TURN over TCP listens on the UDP address unless told otherwise (one port number for both
    // is TURN's convention, RFC 8656 §3).
    let tcp_listen = match (args.turn, args.turn_tcp) {
        (_, Some(TurnTcp::Off)) | (None, _) => None,
        (_, Some(TurnTcp::At(addr))) => Some(addr),
        (Some(listen), None) => Some(listen),
    };
    let urls = match (args.turn, args.turn_url.is_empty()) {
        (_, false) => args.turn_url.clone(),
        (Some(listen), true) => {
            let mut urls = vec![format!("turn:{listen}?transport=udp")];
            // RFC 7065 §3.1: the TCP transport of the same server, for browsers without UDP.
            urls.extend(tcp_listen.map(|tcp| format!("turn:{tcp}?transport=tcp")));
            // RFC 7065 §3.1: `turns:` is TURN over TLS.
            urls.extend(
                args.turn_tls
                    .map(|tls| format!("turns:{tls}?transport=tcp")),
            );
            urls
        }
        (None, true) => {
            return bad(
                "a secret without --turn needs --turn-url: the TURN server that \
                        signaling hands credentials for"
                    .into(),
            );
        }
    };
    let epoch = unix_epoch();
    let relay = RelayConfig {
        secret: secret.clone(),
        urls,
        ttl: credential_ttl,
        epoch,
    };
    let Some(listen) = args.turn else {
        return Ok(Some(Settings {
            server: None,
            tcp: None,
            relay,
        }));
    };
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return bad(format!(
            "--turn {listen}: give the specific IP and port clients reach, since answers must \
             leave from the address the client sent to"
        ));
    }
    let relay_ip = args.turn_relay_ip.unwrap_or(listen.ip());
    if relay_ip.is_unspecified() {
        return bad(format!(
            "--turn-relay-ip {relay_ip}: give the IP peers reach"
        ));
    }
    let relay_ports = match args.turn_ports {
        Some((low, high)) => low..=high,
        None => DEFAULT_RELAY_PORTS,
    };
    let realm = args
        .turn_realm
        .clone()
        .unwrap_or_else(|| listen.ip().to_string());
    if realm.is_empty() || realm.len() > MAX_REALM_LEN {
        return bad(format!("--turn-realm must be 1 to {MAX_REALM_LEN} bytes"));
    }
    let defaults = Limits::default();
    let max_lifetime = match args.turn_max_lifetime {
        Some(s) if s < MIN_MAX_LIFETIME => {
            return bad(format!(
                "--turn-max-lifetime {s} is under {MIN_MAX_LIFETIME} seconds"
            ));
        }
        Some(s) => Duration::from_secs(s),
        None => defaults.max_lifetime,
    };
    let bandwidth = args
        .turn_bandwidth
        .unwrap_or(defaults.bandwidth_bytes_per_s);
    let limits = Limits {
        max_allocations: at_least_one("--turn-max-allocations", args.turn_max_allocations)?
            .unwrap_or(defaults.max_allocations),
        max_allocations_per_user: at_least_one(
            "--turn-max-allocations-per-user",
            args.turn_max_allocations_per_user,
        )?
        .unwrap_or(defaults.max_allocations_per_user),
        default_lifetime: defaults.default_lifetime.min(max_lifetime),
        max_lifetime,
        bandwidth_bytes_per_s: bandwidth,
        burst_bytes: bandwidth.max(MIN_BURST),
        ..defaults
    };
    let mut config = ServerConfig::new(
        listen,
        realm,
        AuthSecret::new(secret),
        random_seed()?,
        epoch,
    );
    config.relay_ip = relay_ip;
    config.relay_ports = relay_ports;
    config.limits = limits;
    config.software = Some(concat!("fogd ", env!("CARGO_PKG_VERSION")).to_owned());
    // fogd's other UDP services join `own` in main, once they are known.
    config.peers = PeerPolicy {
        allow: args.turn_allow_peer.clone(),
        deny: args.turn_deny_peer.clone(),
        own: Vec::new(),
    };
    for (flag, addr) in [("--turn-tcp", tcp_listen), ("--turn-tls", args.turn_tls)] {
        if let Some(addr) = addr.filter(|a| a.ip().is_unspecified() || a.port() == 0) {
            return bad(format!(
                "{flag} {addr}: give the specific IP and port clients reach"
            ));
        }
    }
    let tcp = match (tcp_listen, args.turn_tls) {
        (None, None) => None,
        (listen, tls_listen) => Some(TcpConfig {
            listen,
            tls_listen,
            max_connections: config.limits.max_allocations,
            max_per_ip: at_least_one("--turn-tcp-max-per-ip", args.turn_tcp_max_per_ip)?
                .unwrap_or(turn_tcp::DEFAULT_PER_IP),
            idle: match args.turn_tcp_idle {
                Some(0) => return bad("--turn-tcp-idle must be at least 1".into()),
                Some(s) => Duration::from_secs(s),
                None => turn_tcp::DEFAULT_IDLE,
            },
        }),
    };
    Ok(Some(Settings {
        server: Some(config),
        tcp,
        relay,
    }))
}

fn at_least_one(flag: &str, value: Option<usize>) -> Result<Option<usize>, StartError> {
    if value == Some(0) {
        return Err(StartError::Setting(format!("{flag} must be at least 1")));
    }
    Ok(value)
}

/// The first line of `path`, without its line break.
fn read_secret(path: &PathBuf) -> Result<Vec<u8>, StartError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| StartError::SecretFile(path.clone(), e))?;
    Ok(text.lines().next().unwrap_or("").as_bytes().to_vec())
}

/// Now as an `Instant` and as Unix seconds: credentials carry Unix expiry times and the machines
/// have no wall clock. fogd is a binary, where the clock may be read.
#[allow(clippy::disallowed_methods)]
fn unix_epoch() -> (Instant, u64) {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (Instant::now(), unix)
}

/// 32 bytes from the OS for relayed ports and nonce keys.
fn random_seed() -> Result<[u8; 32], StartError> {
    let mut seed = [0u8; 32];
    #[allow(clippy::disallowed_methods)]
    getrandom::fill(&mut seed).map_err(StartError::Random)?;
    Ok(seed)
}

/// The TURN server bound to its listen socket, ready to run.
pub(crate) struct TurnService {
    driver: Driver<Server>,
    /// The TCP listener and its connections, run on a thread of their own by `run`.
    tcp: Option<TcpService>,
    /// Live allocations, published as the instance's load in a cluster.
    load: Arc<AtomicUsize>,
    alternate: Alternate,
}

/// Where this instance's TURN server sends Allocates once it is full (300 Try Alternate): set
/// by the cluster to the least-loaded other instance, `None` without one.
pub(crate) type Alternate = Arc<Mutex<Option<SocketAddr>>>;

/// What the service did, for the final log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) uptime: Duration,
    pub(crate) allocated: u64,
    pub(crate) released: u64,
    pub(crate) live: usize,
    pub(crate) server: TurnStats,
    pub(crate) io: Stats,
    pub(crate) tcp: Option<TcpStats>,
}

impl TurnService {
    /// Binds the listen address. The driver may keep one extra socket per allocation: the
    /// server never has more relayed addresses than its allocation quota. `sockets` sets the
    /// kernel buffers of the listen socket and of every relayed one.
    pub(crate) fn bind(
        config: ServerConfig,
        tcp: Option<TcpConfig>,
        tls: Option<Arc<rustls::ServerConfig>>,
        sockets: &SocketArgs,
    ) -> Result<Self, StartError> {
        let listen = config.listen;
        let io_config = sockets.apply(
            Config::new()
                .max_on_demand_sockets(config.limits.max_allocations)
                .read_budget(READ_BUDGET),
        );
        let driver = Driver::with_config(Server::new(config), &[listen], io_config)
            .map_err(StartError::Bind)?;
        let (recv_buffer, send_buffer) = driver
            .buffer_sizes(driver.local_addrs()[0])
            .unwrap_or_default();
        let config = driver.machine().config();
        let limits = &config.limits;
        tracing::info!(
            addr = %driver.local_addrs()[0],
            relay_ip = %config.relay_ip,
            relay_ports = %format_args!("{}-{}", config.relay_ports.start(), config.relay_ports.end()),
            realm = %config.realm,
            max_allocations = limits.max_allocations,
            max_allocations_per_user = limits.max_allocations_per_user,
            bandwidth_bytes_per_s = limits.bandwidth_bytes_per_s,
            max_lifetime_s = limits.max_lifetime.as_secs(),
            allow_peer = ?config.peers.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            deny_peer = ?config.peers.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
            recv_buffer,
            send_buffer,
            "TURN listening"
        );
        crate::warn_small_buffers("TURN", sockets, recv_buffer, send_buffer);
        let tcp = tcp
            .map(|c| {
                let (max_per_ip, idle) = (c.max_per_ip, c.idle);
                let service = TcpService::bind(c, tls).map_err(StartError::Bind)?;
                let (tcp, tls) = service.local_addrs();
                tracing::info!(
                    tcp = ?tcp,
                    tls = ?tls,
                    max_per_ip,
                    idle_s = idle.as_secs(),
                    "TURN/TCP listening"
                );
                Ok(service)
            })
            .transpose()?;
        Ok(Self {
            driver,
            tcp,
            load: Arc::new(AtomicUsize::new(0)),
            alternate: Arc::default(),
        })
    }

    /// The live allocation count, kept current while the service runs.
    pub(crate) fn load(&self) -> Arc<AtomicUsize> {
        self.load.clone()
    }

    /// The slot the cluster writes the alternate server into.
    pub(crate) fn alternate(&self) -> Alternate {
        self.alternate.clone()
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub(crate) fn handle(&self) -> Handle {
        self.driver.handle()
    }

    /// Serves until the handle is shut down.
    pub(crate) fn run(mut self) -> io::Result<Report> {
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        let (mut allocated, mut released) = (0u64, 0u64);
        let load = self.load.clone();
        // The TCP side runs beside this loop; messages cross in `inbox` (this driver woken) and
        // `outbox` (the TCP thread woken).
        let tcp = match self.tcp.take() {
            Some(service) => {
                let (inbox, outbox, stopper) =
                    (service.inbox(), service.outbox(), service.stopper());
                let wake = self.driver.handle();
                let thread =
                    std::thread::Builder::new()
                        .name("turn-tcp".into())
                        .spawn(move || {
                            service.run(move || {
                                let _ = wake.wake();
                            })
                        })?;
                Some((inbox, outbox, stopper, thread))
            }
            None => None,
        };
        // Which TCP clients hold an allocation, so that the TCP side knows whom the idle rule
        // spares.
        let mut tcp_allocated = std::collections::BTreeSet::new();
        let notices = std::cell::RefCell::new(Vec::new());
        let mut on_event = |server: &mut Server, event| match event {
            Event::Allocated {
                client,
                relayed,
                user,
            } => {
                allocated += 1;
                load.fetch_add(1, Ordering::Relaxed);
                let over_tcp = server.stream_relayed_address(client) == Some(relayed);
                if over_tcp {
                    tcp_allocated.insert(client);
                    notices
                        .borrow_mut()
                        .push(FromRelay::Allocated(client, true));
                }
                let transport = if over_tcp { "tcp" } else { "udp" };
                tracing::info!(%client, %relayed, %user, transport, "TURN allocation");
            }
            Event::Released {
                client,
                relayed,
                reason,
            } => {
                released += 1;
                let _ =
                    load.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                if tcp_allocated.remove(&client) && server.stream_relayed_address(client).is_none()
                {
                    notices
                        .borrow_mut()
                        .push(FromRelay::Allocated(client, false));
                }
                tracing::info!(%client, %relayed, ?reason, "TURN allocation ended");
            }
        };
        // The loop looks at the alternate slot at least once a second (the cluster refreshes it
        // that often).
        let mut alternate = None;
        loop {
            let now_alternate = self.alternate.lock().map(|a| *a).unwrap_or(None);
            if now_alternate != alternate {
                alternate = now_alternate;
                tracing::info!(?alternate, "TURN: a full server now sends Allocates to");
                self.driver.machine_mut().set_alternate(alternate);
            }
            if let Some((inbox, outbox, ..)) = &tcp {
                let messages = inbox.lock().map(|mut q| q.take()).unwrap_or_default();
                for message in messages {
                    #[allow(clippy::disallowed_methods)]
                    let now = Instant::now();
                    match message {
                        ToRelay::Message(client, bytes) => self
                            .driver
                            .machine_mut()
                            .handle_stream_message(now, client, &bytes),
                        ToRelay::Closed(client) => self.driver.machine_mut().close_stream(client),
                    }
                    // Socket requests (the relayed address bound) before the answer leaves.
                    self.driver.drain(&mut on_event);
                }
                forward(&mut self.driver, outbox, &mut notices.borrow_mut());
            }
            let status = self.driver.turn(Some(ALTERNATE_CHECK), &mut on_event)?;
            if let Some((_, outbox, ..)) = &tcp {
                forward(&mut self.driver, outbox, &mut notices.borrow_mut());
            }
            if status == Status::Shutdown {
                break;
            }
        }
        let tcp = match tcp {
            Some((_, _, (stop, outbox), thread)) => {
                stop.store(true, Ordering::Relaxed);
                outbox.send(std::iter::empty());
                outbox.wake();
                match thread.join() {
                    Ok(result) => Some(result?),
                    Err(_) => return Err(io::Error::other("the TURN/TCP thread panicked")),
                }
            }
            None => None,
        };
        Ok(Report {
            tcp,
            uptime: started.elapsed(),
            allocated,
            released,
            live: self.driver.machine().allocation_count(),
            server: *self.driver.machine().stats(),
            io: self.driver.stats(),
        })
    }
}

/// Hands the TCP side what the server has for TCP clients, and the allocation notices.
fn forward(driver: &mut Driver<Server>, outbox: &turn_tcp::Outbox, notices: &mut Vec<FromRelay>) {
    let server = driver.machine_mut();
    let sends = std::iter::from_fn(|| server.poll_stream_transmit())
        .map(|t| FromRelay::Send(t.client, t.bytes));
    outbox.send(notices.drain(..).chain(sends));
}

/// Whether `a` and `b` would need the same socket.
pub(crate) fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        && matches!(
            (a.ip(), b.ip()),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        )
}

impl Report {
    /// Logs the counters, one line, `key=value` so that scripts (and fogd's tests) can read them.
    pub(crate) fn log(&self) {
        let s = &self.server;
        tracing::info!(
            uptime_s = format_args!("{:.1}", self.uptime.as_secs_f64()),
            allocated = self.allocated,
            released = self.released,
            live = self.live,
            requests = s.requests,
            unauthenticated = s.unauthenticated,
            rate_limited = s.dropped_rate_limited,
            keepalives = s.keepalives,
            relayed_to_peer = s.relayed_to_peer,
            relayed_to_client = s.relayed_to_client,
            dropped_no_permission = s.dropped_no_permission,
            dropped_no_allocation = s.dropped_no_allocation,
            dropped_bandwidth = s.dropped_bandwidth,
            refused_peer = s.refused_peer,
            dropped_forbidden_peer = s.dropped_forbidden_peer,
            malformed = s.dropped_malformed,
            received = self.io.received,
            sent = self.io.sent,
            bound = self.io.bound_on_request,
            unbound = self.io.unbound,
            bind_errors = self.io.bind_errors,
            relay_bind_errors = s.relay_bind_errors,
            send_errors = self.io.send_errors,
            send_would_block = self.io.send_would_block,
            recv_errors = self.io.recv_errors,
            "TURN stopped"
        );
        if let Some(tcp) = &self.tcp {
            tcp.log();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn settings_of(args: &[&str]) -> Result<Option<Settings>, StartError> {
        // `--config` satisfies the parser's "some service" rule without a TURN flag of its own.
        let flags = ["fogd", "--config", "fogd.toml"].into_iter();
        let cli = Cli::try_parse_from(flags.chain(args.iter().copied())).expect("parses");
        settings(&cli.turn)
    }

    #[test]
    fn defaults_are_fog_turns_and_signaling_gets_the_url() {
        let s = settings_of(&["--turn", "127.0.0.1", "--turn-secret", "s"])
            .unwrap()
            .unwrap();
        let config = s.server.unwrap();
        assert_eq!(config.listen, "127.0.0.1:3478".parse().unwrap());
        assert_eq!(config.relay_ip, config.listen.ip());
        assert_eq!(config.relay_ports, DEFAULT_RELAY_PORTS);
        assert_eq!(config.realm, "127.0.0.1");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(
            s.relay.urls,
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp"
            ]
        );
        assert_eq!(
            s.tcp,
            Some(TcpConfig {
                listen: Some(config.listen),
                tls_listen: None,
                max_connections: config.limits.max_allocations,
                max_per_ip: turn_tcp::DEFAULT_PER_IP,
                idle: turn_tcp::DEFAULT_IDLE,
            })
        );
        assert_eq!(s.relay.secret, b"s");
        assert_eq!(s.relay.ttl, DEFAULT_CREDENTIAL_TTL);
    }

    #[test]
    fn quotas_and_ports_come_from_the_flags() {
        let s = settings_of(&[
            "--turn",
            "127.0.0.1:3480",
            "--turn-secret",
            "s",
            "--turn-ports",
            "50000-50099",
            "--turn-relay-ip",
            "127.0.0.2",
            "--turn-max-allocations",
            "5",
            "--turn-max-allocations-per-user",
            "2",
            "--turn-bandwidth",
            "1000",
            "--turn-max-lifetime",
            "300",
        ])
        .unwrap()
        .unwrap();
        let config = s.server.unwrap();
        assert_eq!(config.relay_ports, 50000..=50099);
        assert_eq!(config.relay_ip, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(config.limits.max_allocations, 5);
        assert_eq!(config.limits.max_allocations_per_user, 2);
        assert_eq!(config.limits.bandwidth_bytes_per_s, 1000);
        assert_eq!(config.limits.burst_bytes, MIN_BURST);
        assert_eq!(config.limits.max_lifetime, Duration::from_secs(300));
        assert_eq!(config.limits.default_lifetime, Duration::from_secs(300));
    }

    #[test]
    fn no_open_relay_and_other_refusals_name_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (&["--turn", "127.0.0.1"], "open relay"),
            (&["--turn", "0.0.0.0", "--turn-secret", "s"], "specific IP"),
            (&["--turn", "127.0.0.1", "--turn-secret", ""], "empty"),
            (&["--turn-secret", "s"], "--turn-url"),
            (&["--turn-url", "turn:x"], "--turn-secret"),
            (
                &[
                    "--turn",
                    "127.0.0.1",
                    "--turn-secret",
                    "s",
                    "--turn-max-lifetime",
                    "59",
                ],
                "--turn-max-lifetime",
            ),
            (
                &[
                    "--turn",
                    "127.0.0.1",
                    "--turn-secret",
                    "s",
                    "--turn-max-allocations",
                    "0",
                ],
                "--turn-max-allocations",
            ),
        ];
        for (args, reason) in cases {
            let message = match settings_of(args) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{args:?} was accepted"),
            };
            assert!(message.contains(reason), "{args:?}: {message}");
        }
    }

    #[test]
    fn peer_ranges_come_from_the_flags_and_bad_ones_are_refused() {
        let s = settings_of(&["--turn", "127.0.0.1", "--turn-secret", "s"])
            .unwrap()
            .unwrap();
        assert_eq!(s.server.unwrap().peers, PeerPolicy::default());
        let s = settings_of(&[
            "--turn",
            "127.0.0.1",
            "--turn-secret",
            "s",
            "--turn-allow-peer",
            "127.0.0.0/8",
            "--turn-allow-peer",
            "::1",
            "--turn-deny-peer",
            "192.0.2.0/24",
        ])
        .unwrap()
        .unwrap();
        let peers = s.server.unwrap().peers;
        let text = |v: &[fog_turn::server::IpPrefix]| {
            v.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(text(&peers.allow), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(text(&peers.deny), ["192.0.2.0/24"]);
        for bad in ["10.0.0.1/8", "10.0.0.0/40", "example.org"] {
            let parsed =
                Cli::try_parse_from(["fogd", "--turn", "127.0.0.1", "--turn-allow-peer", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn turn_tcp_moves_or_goes_and_the_urls_follow() {
        let s = settings_of(&[
            "--turn",
            "127.0.0.1",
            "--turn-secret",
            "s",
            "--turn-tcp",
            "127.0.0.1:443",
            "--turn-tcp-max-per-ip",
            "3",
            "--turn-tcp-idle",
            "5",
        ])
        .unwrap()
        .unwrap();
        let tcp = s.tcp.unwrap();
        assert_eq!(tcp.listen, Some("127.0.0.1:443".parse().unwrap()));
        assert_eq!((tcp.max_per_ip, tcp.idle), (3, Duration::from_secs(5)));
        assert_eq!(
            s.relay.urls,
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:443?transport=tcp"
            ]
        );
        let s = settings_of(&[
            "--turn",
            "127.0.0.1",
            "--turn-secret",
            "s",
            "--turn-tcp",
            "off",
            "--turn-tls",
            "127.0.0.1",
        ])
        .unwrap()
        .unwrap();
        let tcp = s.tcp.unwrap();
        assert_eq!(tcp.listen, None);
        assert_eq!(tcp.tls_listen, Some("127.0.0.1:5349".parse().unwrap()));
        assert_eq!(
            s.relay.urls,
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turns:127.0.0.1:5349?transport=tcp"
            ]
        );
        let s = settings_of(&[
            "--turn",
            "127.0.0.1",
            "--turn-secret",
            "s",
            "--turn-tcp",
            "off",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.tcp, None);
        assert_eq!(s.relay.urls, ["turn:127.0.0.1:3478?transport=udp"]);
        for (bad, flag) in [
            (["--turn-tcp", "0.0.0.0:3478"], "--turn-tcp"),
            (["--turn-tls", "127.0.0.1:0"], "--turn-tls"),
            (["--turn-tcp-max-per-ip", "0"], "--turn-tcp-max-per-ip"),
            (["--turn-tcp-idle", "0"], "--turn-tcp-idle"),
        ] {
            let mut args = vec!["--turn", "127.0.0.1", "--turn-secret", "s"];
            args.extend(bad);
            let message = match settings_of(&args) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{bad:?} was accepted"),
            };
            assert!(message.contains(flag), "{message}");
        }
    }

    #[test]
    fn a_secret_with_urls_serves_signaling_alone() {
        let s = settings_of(&["--turn-secret", "s", "--turn-url", "turn:192.0.2.9:3478"])
            .unwrap()
            .unwrap();
        assert!(s.server.is_none());
        assert_eq!(s.relay.urls, ["turn:192.0.2.9:3478"]);
    }

    #[test]
    fn the_flag_help_states_fog_turns_defaults() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        let lines: Vec<&str> = help.lines().collect();
        let defaults = Limits::default();
        let ports = DEFAULT_RELAY_PORTS;
        for (flag, value) in [
            (
                "--turn-max-allocations ",
                defaults.max_allocations.to_string(),
            ),
            (
                "--turn-max-allocations-per-user",
                defaults.max_allocations_per_user.to_string(),
            ),
            (
                "--turn-bandwidth",
                defaults.bandwidth_bytes_per_s.to_string(),
            ),
            (
                "--turn-max-lifetime",
                defaults.max_lifetime.as_secs().to_string(),
            ),
            ("--turn-ports", format!("{}-{}", ports.start(), ports.end())),
            (
                "--turn-credential-ttl",
                DEFAULT_CREDENTIAL_TTL.as_secs().to_string(),
            ),
        ] {
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{flag} not in the help"));
            // The flag's line, then its description.
            let text = lines[at..(at + 2).min(lines.len())].join(" ");
            assert!(text.contains(&format!("[default: {value}]")), "{text}");
        }
        // The burst the help promises follows the bandwidth, never below 65535.
        assert_eq!(
            defaults.burst_bytes,
            defaults.bandwidth_bytes_per_s.max(MIN_BURST)
        );
    }

    #[test]
    fn same_socket_sees_wildcards() {
        let a: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert!(same_socket(a, a));
        assert!(same_socket(a, "0.0.0.0:3478".parse().unwrap()));
        assert!(!same_socket(a, "127.0.0.1:3480".parse().unwrap()));
        assert!(!same_socket(a, "127.0.0.2:3478".parse().unwrap()));
        assert!(!same_socket(a, "[::]:3478".parse().unwrap()));
    }
}
