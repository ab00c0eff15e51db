//! The command line. Each service is a help section of its own (`STUN`, `Signaling`, `TURN`),
//! with flags named after it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser};
use fog_stun::server::RateLimit;
use fog_turn::server::IpPrefix;

/// FogConnect's server.
#[derive(Debug, Parser)]
#[command(
    name = "fogd",
    version,
    about = "FogConnect's server: RFC 5780 STUN, WebSocket signaling and a TURN relay",
    long_about = None,
    after_help = "\
Examples:
  fogd --stun 192.0.2.1:3478 --stun-alt 192.0.2.2:3479
  fogd --signal 0.0.0.0:7600 --key /var/lib/fogd/server.key --realm signal.example.org \\
       --tls-cert fullchain.pem --tls-key privkey.pem
  fogd --turn 192.0.2.1 --turn-secret-file /etc/fogd/turn.secret --turn-ports 49152-49999
  fogd --config /etc/fogd.toml --stun 192.0.2.1:3478

Config file (--config, TOML): a [signal] table whose keys are the Signaling flags' names and
a [turn] table whose keys are the TURN flags' names, without the leading dashes; a flag given
on the command line overrides the file, and an unknown key or table is an error. Relative
paths are read from the directory fogd runs in.
  [signal]
  signal = \"0.0.0.0:7600\"
  key = \"/var/lib/fogd/server.key\"
  realm = \"signal.example.org\"
  tls-cert = \"/etc/fogd/fullchain.pem\"
  tls-key = \"/etc/fogd/privkey.pem\"
  max-connections = 20000
  max-peers = 16384
  frames-per-second = 20
  max-frame-len = 16384
  max-pending-offers = 8
  handshake-timeout-ms = 5000
  max-unsent = 131072
  [turn]
  turn = \"192.0.2.1:3478\"
  turn-secret-file = \"/etc/fogd/turn.secret\"
  turn-relay-ip = \"192.0.2.1\"
  turn-ports = \"49152-65535\"
  turn-realm = \"192.0.2.1\"
  turn-max-allocations = 1000
  turn-max-allocations-per-user = 10
  turn-bandwidth = 1000000
  turn-max-lifetime = 3600
  turn-credential-ttl = 86400
  turn-allow-peer = [\"198.51.100.0/24\"]
  turn-deny-peer = [\"203.0.113.0/24\"]
  turn-tcp = \"192.0.2.1:3478\"
  turn-tcp-max-per-ip = 16
  turn-tcp-idle = 60
  [cluster]
  cluster = \"redis://10.0.0.5:6379\"
  cluster-instance = \"fogd-1\"
  cluster-advertise = [\"turn:192.0.2.1:3478\"]
  cluster-region = \"eu-west\"
  cluster-queue = 16384

Logs go to stderr. RUST_LOG sets the filter (default: info), e.g. RUST_LOG=debug.
SIGINT or SIGTERM stops fogd cleanly and logs its final counters; a second one exits at once.",
    // At least one service must be configured (a config file may name the signaling address);
    // more join this group as they arrive.
    group(ArgGroup::new("service").required(true).multiple(true).args(["stun", "signal", "turn", "config"])),
)]
pub struct Cli {
    /// Read settings from this TOML file (format below); flags override it
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) stun: StunArgs,

    #[command(flatten)]
    pub(crate) signal: SignalArgs,

    #[command(flatten)]
    pub(crate) turn: TurnArgs,

    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,

    #[command(flatten)]
    pub(crate) sockets: SocketArgs,
}

/// The kernel buffers of every UDP socket fogd binds (STUN, TURN's listen and relayed sockets).
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "UDP sockets")]
pub(crate) struct SocketArgs {
    /// Receive buffer (SO_RCVBUF) to ask for on every UDP socket, in bytes; 0 keeps the OS
    /// default (Linux: net.core.rmem_default, about 208 KiB, which a busy server overflows
    /// between two reads). Linux grants at most net.core.rmem_max; the start-up log says what
    /// was granted (Linux reports twice the value)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SOCKET_BUFFER)]
    pub(crate) udp_recv_buffer: usize,

    /// Send buffer (SO_SNDBUF) to ask for on every UDP socket, in bytes; 0 keeps the OS default
    /// (capped by net.core.wmem_max)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SOCKET_BUFFER)]
    pub(crate) udp_send_buffer: usize,
}

/// 4 MiB, what coturn asks for on its UDP sockets.
pub(crate) const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

impl SocketArgs {
    /// The driver configuration these flags ask for, on top of `config`.
    pub(crate) fn apply(&self, config: fog_mio::Config) -> fog_mio::Config {
        let size = |n: usize| (n > 0).then_some(n);
        config.socket_buffers(size(self.udp_recv_buffer), size(self.udp_send_buffer))
    }
}

/// The TURN section. As for signaling, every setting is an `Option` so that the config file can
/// fill it in; the defaults are stated in the help and applied in [`crate::turn::settings`].
#[derive(Debug, Default, Clone, Args)]
#[command(next_help_heading = "TURN")]
pub(crate) struct TurnArgs {
    /// Relay with TURN over UDP (RFC 8656) on this address, a specific IP; a bare IP means port
    /// 3478, TURN's. When --stun is on IP:3478 too, give TURN another port, e.g. IP:3480
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_turn_addr)]
    pub(crate) turn: Option<SocketAddr>,

    /// The use-auth-secret secret (coturn's static-auth-secret) that TURN credentials are made
    /// from; signaling hands out credentials made from it. Prefer --turn-secret-file: a flag is
    /// visible to every local user in the process list. TURN needs one or the other: fogd never
    /// runs an open relay
    #[arg(long, value_name = "SECRET", conflicts_with = "turn_secret_file")]
    pub(crate) turn_secret: Option<String>,

    /// Read the secret from this file (its first line, without the line break)
    #[arg(long, value_name = "PATH")]
    pub(crate) turn_secret_file: Option<PathBuf>,

    /// The IP of relayed addresses [default: the --turn IP]
    #[arg(long, value_name = "IP")]
    pub(crate) turn_relay_ip: Option<IpAddr>,

    /// The UDP ports relayed addresses are drawn from; keep them for fogd alone [default:
    /// 49152-65535]
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_port_range)]
    pub(crate) turn_ports: Option<(u16, u16)>,

    /// REALM of the TURN server (part of the clients' long-term key) [default: the --turn IP]
    #[arg(long, value_name = "NAME")]
    pub(crate) turn_realm: Option<String>,

    /// Allocations at once, all users together [default: 1000]
    #[arg(long, value_name = "N")]
    pub(crate) turn_max_allocations: Option<usize>,

    /// Allocations at once per user (the part of the username after the colon) [default: 10]
    #[arg(long, value_name = "N")]
    pub(crate) turn_max_allocations_per_user: Option<usize>,

    /// Relayed bytes per second per allocation, both directions together, with bursts of one
    /// second's worth (at least 65535 bytes); 0 for no limit at all [default: 1000000]
    #[arg(long, value_name = "BYTES")]
    pub(crate) turn_bandwidth: Option<u64>,

    /// Longest allocation lifetime granted, in seconds, at least 60; a client that asks for
    /// none gets 600, or this if shorter [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) turn_max_lifetime: Option<u64>,

    /// How long the TURN credentials signaling hands out stay valid, in seconds [default:
    /// 86400]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) turn_credential_ttl: Option<u64>,

    /// Relay to peers in this range (CIDR, e.g. 10.0.0.0/8; repeatable) even though it is
    /// reserved or in --turn-deny-peer. By default fogd refuses (403) permissions, channels and
    /// sends to unspecified, loopback, link-local, multicast, broadcast, private (RFC 1918, ULA)
    /// and carrier-grade (100.64/10) addresses, their IPv6 and IPv4-mapped forms, and its own
    /// STUN and TURN ports, so that clients cannot reach the relay host or its network. Open only
    /// what a test or a private deployment needs; fogd's own ports stay refused
    #[arg(long, value_name = "CIDR")]
    pub(crate) turn_allow_peer: Vec<IpPrefix>,

    /// Refuse peers in this range too (CIDR; repeatable), e.g. the relay host's public
    /// neighbours; --turn-allow-peer overrides it
    #[arg(long, value_name = "CIDR")]
    pub(crate) turn_deny_peer: Vec<IpPrefix>,

    /// TURN over TCP (RFC 8656 §3.1, for clients whose UDP is blocked) on this address, or
    /// `off`; the relayed side stays UDP. A bare IP means port 3478 [default: the --turn address]
    #[arg(long, value_name = "IP[:PORT]|off", value_parser = parse_turn_tcp)]
    pub(crate) turn_tcp: Option<TurnTcp>,

    /// TURN over TLS (`turns:`, RFC 8656 §3.1) on this address, with the certificate of
    /// --tls-cert and --tls-key; a bare IP means port 5349 [default: off]
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_turn_tls)]
    pub(crate) turn_tls: Option<SocketAddr>,

    /// TURN/TCP and TURN/TLS connections at once from one IP [default: 16]
    #[arg(long, value_name = "N")]
    pub(crate) turn_tcp_max_per_ip: Option<usize>,

    /// Seconds a TURN/TCP connection without an allocation may stay silent before it is closed
    /// [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) turn_tcp_idle: Option<u64>,

    /// A turn: URL signaling hands out with the credentials (repeatable); with it, --turn-secret
    /// serves signaling alone, for a TURN server run elsewhere (coturn with the same
    /// static-auth-secret) [default: turn:<--turn address>?transport=udp, and
    /// turn:<--turn-tcp address>?transport=tcp unless it is off]
    #[arg(long, value_name = "URL")]
    pub(crate) turn_url: Vec<String>,
}

/// `--turn-tcp`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnTcp {
    /// No TCP listener.
    Off,
    /// Listen there.
    At(SocketAddr),
}

pub(crate) fn parse_turn_tcp(s: &str) -> Result<TurnTcp, String> {
    if s == "off" {
        return Ok(TurnTcp::Off);
    }
    parse_turn_addr(s).map(TurnTcp::At)
}

/// TURN over TLS's port (RFC 8656 §3) when `--turn-tls` names only an IP.
pub(crate) const TURNS_PORT: u16 = 5349;

pub(crate) fn parse_turn_tls(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, TURNS_PORT))
        .map_err(|_| format!("{s:?} is neither IP:PORT nor an IP"))
}

/// TURN's port (RFC 8656 §3) when `--turn` names only an IP.
pub(crate) const TURN_PORT: u16 = 3478;

pub(crate) fn parse_turn_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, TURN_PORT)),
        Err(_) => Err(format!(
            "{s:?} is neither IP:PORT nor an IP (IPv6 with a port is [::1]:3478)"
        )),
    }
}

pub(crate) fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let parsed = s.split_once('-').and_then(|(low, high)| {
        Some((
            low.trim().parse::<u16>().ok()?,
            high.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((low, high)) if low >= 1 && low <= high => Ok((low, high)),
        Some(_) => Err(format!("{s:?}: need 1 <= LOW <= HIGH")),
        None => Err(format!("{s:?} is not LOW-HIGH, e.g. 49152-65535")),
    }
}

/// The cluster section: signaling shares presence, aliases and a bus with other instances
/// through Redis. Options, like the signaling ones, so that the `[cluster]` table can fill them.
#[derive(Debug, Default, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub(crate) struct ClusterArgs {
    /// Join a cluster of fogd instances sharing presence, aliases and frames through this Redis
    /// (standalone, 6.2 or newer); every instance needs the same --key and --realm
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub(crate) cluster: Option<String>,

    /// This instance's id, unique in the cluster [default: the --signal address]
    #[arg(long, value_name = "ID")]
    pub(crate) cluster_instance: Option<String>,

    /// turn: URLs of this instance, published with its load; signaling hands out the
    /// least-loaded instance's [default: its --turn-url]
    #[arg(long, value_name = "URL")]
    pub(crate) cluster_advertise: Vec<String>,

    /// Where this instance runs (letters, digits, `.:_-`): signaling hands out the least-loaded
    /// relay of its own region, and one elsewhere only when the region publishes none
    #[arg(long, value_name = "NAME")]
    pub(crate) cluster_region: Option<String>,

    /// Questions to Redis waiting at once; one more is refused at once [default: 16384]
    #[arg(long, value_name = "N")]
    pub(crate) cluster_queue: Option<usize>,
}

/// The signaling section. Every setting is an `Option` so that a flag can override the config
/// file and the file can override the default; the defaults are stated in the help and applied
/// in [`crate::signal::settings`].
#[derive(Debug, Default, Clone, Args)]
#[command(next_help_heading = "Signaling")]
pub(crate) struct SignalArgs {
    /// Serve WebSocket signaling at path /ws on this address; a bare IP means port 7600
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_signal_addr)]
    pub(crate) signal: Option<SocketAddr>,

    /// The server's Ed25519 identity: loaded, or created with mode 0600 if the file does not
    /// exist. Without it fogd makes a new identity at every start, which clients that pin the
    /// server key will refuse
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,

    /// The host name clients dial (wss://REALM/ws); it is signed into every authentication.
    /// Default: the --signal IP
    #[arg(long, value_name = "NAME")]
    pub(crate) realm: Option<String>,

    /// Serve wss:// with this PEM certificate chain (needs --tls-key)
    #[arg(long, value_name = "PEM")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PEM")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Open WebSocket connections, authenticated or not [default: 20000]. One over it is
    /// answered `server_full` and closed with 1013
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// Authenticated peers [default: 16384]
    #[arg(long, value_name = "N")]
    pub(crate) max_peers: Option<usize>,

    /// Frames per second one connection may send, sustained (bursts of 40) [default: 20]
    #[arg(long, value_name = "N")]
    pub(crate) frames_per_second: Option<u32>,

    /// Largest frame (and message) in bytes [default: 16384]; a larger one is closed with 1009
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_frame_len: Option<usize>,

    /// Unanswered offers to one peer, and from one peer [default: 8]
    #[arg(long, value_name = "N")]
    pub(crate) max_pending_offers: Option<usize>,

    /// Time a client has to complete the TLS and WebSocket handshakes [default: 5000]
    #[arg(long, value_name = "MS")]
    pub(crate) handshake_timeout_ms: Option<u64>,

    /// Bytes of output one connection may have waiting to be sent (the client reads too
    /// slowly); over it the connection is dropped [default: 131072]
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_unsent: Option<usize>,
}

/// The signaling port when `--signal` names only an IP.
pub(crate) const SIGNAL_PORT: u16 = 7600;

pub(crate) fn parse_signal_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, SIGNAL_PORT)),
        Err(_) => Err(format!(
            "{s:?} is neither IP:PORT nor an IP (IPv6 with a port is [::1]:7600)"
        )),
    }
}

/// The STUN section.
#[derive(Debug, Args)]
#[command(next_help_heading = "STUN")]
pub(crate) struct StunArgs {
    /// Serve STUN on this address (A1:P1). A specific IP, not 0.0.0.0 or ::, because answers
    /// name the address they leave from (RESPONSE-ORIGIN)
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) stun: Option<SocketAddr>,

    /// The alternate IP and port (A2:P2) for RFC 5780 NAT behaviour discovery. fogd then binds
    /// all four of A1:P1, A1:P2, A2:P1, A2:P2 and answers CHANGE-REQUEST. With the same IP as
    /// --stun only the port changes (and vice versa)
    #[arg(long, value_name = "IP:PORT", requires = "stun")]
    pub(crate) stun_alt: Option<SocketAddr>,

    /// Answers per second to one source IP (one /64 for IPv6), sustained
    #[arg(
        long,
        value_name = "N",
        default_value_t = RateLimit::default().per_second,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub(crate) stun_rate: u32,

    /// Answers one source IP may get at once after being quiet
    #[arg(
        long,
        value_name = "N",
        default_value_t = RateLimit::default().burst,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub(crate) stun_burst: u32,

    /// Source IPs the rate limiter tracks at once (memory bound, about 90 bytes each); a new
    /// source is refused while all of them are active
    #[arg(
        long,
        value_name = "N",
        default_value_t = RateLimit::default().max_sources,
        value_parser = parse_positive_usize,
    )]
    pub(crate) stun_max_sources: usize,

    /// Turn the per-source rate limit off. For load tests on loopback only: without it anyone
    /// can aim the server's answers at a spoofed victim at full speed
    #[arg(long, conflicts_with_all = ["stun_rate", "stun_burst", "stun_max_sources"])]
    pub(crate) stun_no_rate_limit: bool,
}

impl StunArgs {
    /// The rate limit these flags ask for; `None` when it is off.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        (!self.stun_no_rate_limit).then_some(RateLimit {
            per_second: self.stun_rate,
            burst: self.stun_burst,
            max_sources: self.stun_max_sources,
        })
    }
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_servers() {
        let cli = Cli::try_parse_from(["fogd", "--stun", "127.0.0.1:3478"]).unwrap();
        assert_eq!(cli.stun.rate_limit(), Some(RateLimit::default()));
        assert_eq!(cli.stun.stun_alt, None);
    }

    #[test]
    fn signal_takes_an_address_or_a_bare_ip() {
        let cli = Cli::try_parse_from(["fogd", "--signal", "127.0.0.1:9000"]).unwrap();
        assert_eq!(cli.signal.signal, Some("127.0.0.1:9000".parse().unwrap()));
        let cli = Cli::try_parse_from(["fogd", "--signal", "::1"]).unwrap();
        assert_eq!(cli.signal.signal, Some("[::1]:7600".parse().unwrap()));
        assert!(Cli::try_parse_from(["fogd", "--signal", "example.org"]).is_err());
    }

    #[test]
    fn turn_takes_an_address_or_a_bare_ip_and_a_port_range() {
        let cli = Cli::try_parse_from(["fogd", "--turn", "127.0.0.1", "--turn-ports", "5000-5009"])
            .unwrap();
        assert_eq!(cli.turn.turn, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(cli.turn.turn_ports, Some((5000, 5009)));
        for bad in ["5009-5000", "0-10", "5000", "a-b", "5000-70000"] {
            assert!(
                Cli::try_parse_from(["fogd", "--turn", "127.0.0.1", "--turn-ports", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(
            Cli::try_parse_from([
                "fogd",
                "--turn",
                "127.0.0.1",
                "--turn-secret",
                "x",
                "--turn-secret-file",
                "f"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_config_file_counts_as_a_service_for_the_parser() {
        assert!(Cli::try_parse_from(["fogd", "--config", "fogd.toml"]).is_ok());
    }

    #[test]
    fn a_service_is_required() {
        assert!(Cli::try_parse_from(["fogd"]).is_err());
        assert!(Cli::try_parse_from(["fogd", "--stun-alt", "127.0.0.2:3479"]).is_err());
    }

    #[test]
    fn no_rate_limit_conflicts_only_with_explicit_limits() {
        let cli = Cli::try_parse_from(["fogd", "--stun", "127.0.0.1:3478", "--stun-no-rate-limit"])
            .unwrap();
        assert_eq!(cli.stun.rate_limit(), None);
        assert!(
            Cli::try_parse_from([
                "fogd",
                "--stun",
                "127.0.0.1:3478",
                "--stun-no-rate-limit",
                "--stun-rate",
                "5",
            ])
            .is_err()
        );
    }

    #[test]
    fn zero_limits_are_refused_by_the_parser() {
        for flag in ["--stun-rate", "--stun-burst", "--stun-max-sources"] {
            let parsed = Cli::try_parse_from(["fogd", "--stun", "127.0.0.1:3478", flag, "0"]);
            assert!(parsed.is_err(), "{flag} 0 was accepted");
        }
    }
}
