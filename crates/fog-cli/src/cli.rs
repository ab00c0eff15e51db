//! The command line: `fogconnect <SUBCOMMAND>`, one subcommand per tool (`nat`, `listen`, `offer`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fog_signal::msg::Transport;
use fog_stun::discovery::{DEFAULT_PORT_SAMPLES, MAX_PORT_SAMPLES};

use crate::signal::SignalUrl;

/// STUN's port (RFC 5389 §18.4), used when `--server` names none.
pub(crate) const STUN_PORT: u16 = 3478;

/// FogConnect's command-line tool.
#[derive(Debug, Parser)]
#[command(
    name = "fogconnect",
    version,
    about = "FogConnect's command-line tool",
    long_about = None,
    after_help = "\
Exit status: 0 when the command produced its result (for `nat`, also when UDP is blocked: that is \
a finding), 1 when it could not run (a name that does not resolve, a socket that cannot be bound, \
no result before --timeout), 2 for a command-line error."
)]
pub(crate) struct Cli {
    /// What to run [default: `demo`]
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// FogConnect end to end on loopback, nothing to set up (what runs with no subcommand):
    /// fogd in this process, two nodes, one connection per transport, a report
    Demo(DemoArgs),
    /// Print the peer ID of the key file the other commands take with --key, creating the
    /// file (mode 0600) when missing
    Id(IdArgs),
    /// Find out how the NAT in front of this host behaves (RFC 5780 discovery, RFC 4787 terms)
    Nat(NatArgs),
    /// Register with a signaling server and answer the offers that arrive
    Listen(ListenArgs),
    /// Send an offer to a peer (by peer ID or alias) through a signaling server and print its answer
    Offer(OfferArgs),
    /// Run a whole node (discovery, signaling, punching, relay) and echo the datagrams peers send
    Serve(ServeArgs),
    /// Run a whole node, connect to a peer by peer ID or alias, send one datagram, print the echo
    /// (with --until-direct, again once a relayed connection has moved to a direct path)
    Connect(ConnectArgs),
    /// Send a file to a peer (by peer ID or alias) that runs `fogconnect recv`, over KCP, with
    /// a progress bar and a SHA-256 check at the end
    Send(SendArgs),
    /// Receive the files peers send with `fogconnect send` into a directory, checking each
    /// one's SHA-256
    Recv(RecvArgs),
    /// Connect to a peer (by peer ID or alias) and explain the connection: both NAT
    /// behaviours, the strategy and why, what each candidate pair did, the path that won, and
    /// what would make a relayed connection direct
    Doctor(DoctorArgs),
}

/// `fogconnect demo`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect demo --size 16MiB

Exits 0 when every transport connected and delivered intact, 1 otherwise (with the reason on \
stderr). Progress goes to stderr, the report to stdout.")]
pub(crate) struct DemoArgs {
    /// Bytes to move over each reliable transport (KCP, QUIC, uTP); a number with an optional
    /// KiB or MiB
    #[arg(long, value_name = "BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub(crate) size: u64,

    /// Give up after this many seconds
    #[arg(long, value_name = "SECS", default_value = "25", value_parser = parse_seconds)]
    pub(crate) timeout: Duration,

    /// Print the report as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            size: 4 << 20,
            timeout: Duration::from_secs(25),
            json: false,
        }
    }
}

/// `fogconnect id`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect id, then fogconnect serve --key ~/.config/fogconnect/identity.key ...

Prints the peer ID alone on stdout (one JSON object with --json); says on stderr when it created \
the file. Exits 1 when the file cannot be read or created, or lets others read it.")]
pub(crate) struct IdArgs {
    /// The key file [default: $XDG_CONFIG_HOME/fogconnect/identity.key, or
    /// ~/.config/fogconnect/identity.key]
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,

    /// Print {"peer": ..., "key": ..., "created": ...}
    #[arg(long)]
    pub(crate) json: bool,
}

/// `fogconnect send`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect send --signal ws://127.0.0.1:7600/ws --stun 127.0.0.1 photo.jpg bob

Exits 0 once the receiver confirmed the file's SHA-256, 1 otherwise (unknown or offline peer, \
refused, connection lost, a hash mismatch, --timeout).")]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,

    /// The file to send
    #[arg(value_name = "FILE")]
    pub(crate) file: std::path::PathBuf,

    /// The peer: its peer ID, or an alias it registered
    #[arg(value_name = "PEER")]
    pub(crate) peer: String,
}

/// `fogconnect recv`.
#[derive(Debug, Args)]
pub(crate) struct RecvArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,

    /// Where the files go (an existing file of the same name is not overwritten)
    #[arg(value_name = "DIR", default_value = ".")]
    pub(crate) dir: std::path::PathBuf,

    /// An alias to claim
    #[arg(long, value_name = "NAME")]
    pub(crate) alias: Option<String>,

    /// Exit after receiving this many files [default: run until interrupted]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

/// What `serve` and `connect` share: the servers a node uses.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub(crate) signaling: SignalingArgs,

    /// The RFC 5780 STUN server for NAT discovery (HOST or HOST:PORT; port 3478 by default)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) stun: ServerArg,

    /// A TURN server to relay through (port 3478 by default), with credentials from the
    /// signaling server
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) turn: Option<ServerArg>,

    /// Never take a direct path: describe only the relayed address (needs --turn)
    #[arg(long, requires = "turn")]
    pub(crate) relay_only: bool,

    /// Further local addresses to use as host candidates, besides the one that reaches the
    /// signaling server: `auto` (every interface's, IPv4 and IPv6, without loopback and
    /// link-local ones; read again every 10 s, so addresses that come and go are trickled to
    /// peers), `none`, or a comma-separated list of IP addresses (used as given, loopback
    /// included)
    #[arg(long, value_name = "auto|none|IP,...", default_value = "auto")]
    pub(crate) interfaces: Interfaces,

    /// Another STUN server (and the TURN server beside it) to consider: the node measures
    /// the round trip to each and uses the nearest; --stun/--turn are preferred unless
    /// another is clearly nearer (repeatable)
    #[arg(long, value_name = "STUN[,TURN]")]
    pub(crate) alternative: Vec<Alternative>,

    /// Remember the NAT behaviour found on each network in FILE (JSON, created when missing),
    /// and start from it on the next run on the same network (same STUN server, local address
    /// and public address): ready in one STUN round trip instead of waiting for discovery,
    /// which runs on and corrects it if the network changed [default: none]
    #[arg(long, value_name = "FILE")]
    pub(crate) nat_cache: Option<std::path::PathBuf>,

    /// Do not ask the router for a port mapping. By default the node asks the default
    /// gateway (PCP, then NAT-PMP, then UPnP IGD) to forward a port to its socket, offers the
    /// mapped address once a probe from the STUN server's other address came through it
    /// (which makes even two random-port NATs connect directly), and deletes it on exit
    #[arg(long)]
    pub(crate) no_port_mapping: bool,
}

/// `--interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interfaces {
    /// Gather them from the operating system.
    Auto,
    /// These, as given.
    List(Vec<IpAddr>),
}

impl std::str::FromStr for Interfaces {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Interfaces::Auto),
            "none" => Ok(Interfaces::List(Vec::new())),
            list => list
                .split(',')
                .map(|ip| {
                    ip.trim()
                        .parse::<IpAddr>()
                        .map_err(|_| format!("'{ip}' is not an IP address (nor auto or none)"))
                })
                .collect::<Result<_, _>>()
                .map(Interfaces::List),
        }
    }
}

/// `--alternative STUN[,TURN]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alternative {
    pub(crate) stun: ServerArg,
    pub(crate) turn: Option<ServerArg>,
}

impl std::str::FromStr for Alternative {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (stun, turn) = match s.split_once(',') {
            Some((stun, turn)) => (stun, Some(turn.parse()?)),
            None => (s, None),
        };
        Ok(Alternative {
            stun: stun.parse()?,
            turn,
        })
    }
}

/// `fogconnect serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect serve --signal ws://127.0.0.1:7600/ws --stun 127.0.0.1 --alias bob

Prints `ready: ...` once discovery finished, a line per connection and path change, and echoes \
every datagram back on the path it came from.")]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,

    /// An alias to claim
    #[arg(long, value_name = "NAME")]
    pub(crate) alias: Option<String>,

    /// Exit after echoing this many datagrams [default: run until interrupted]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

/// `fogconnect connect`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect connect --signal ws://127.0.0.1:7600/ws --stun 127.0.0.1 bob --message hello

Prints `ready: ...`, `connected to PEER via direct|turn|signaling (...)`, a line per path change \
(`path changed: via direct (...)`) and `echo: hello (… ms)`. Exits 0 once the echo came back (with \
--until-direct: the echo of the message sent again on the direct path), 1 when the peer is unknown \
or offline or nothing came back before --timeout.")]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,

    /// The peer: its peer ID, or an alias it registered
    #[arg(value_name = "PEER")]
    pub(crate) peer: String,

    /// The datagram to send
    #[arg(long, default_value = "hello")]
    pub(crate) message: String,

    /// The application's service number
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) service: u16,

    /// When the connection comes up through a relay, keep it after the echo until a direct path
    /// takes over (the node punches again every 20 s while on the relay), then send the message
    /// again and wait for that echo too: whether these two networks get a direct path, and how
    /// long it takes. --timeout defaults to 90 s with it
    #[arg(long)]
    pub(crate) until_direct: bool,
}

/// `fogconnect doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,

    /// The peer: its peer ID, or an alias it registered
    #[arg(value_name = "PEER")]
    pub(crate) peer: String,

    /// The application's service number
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) service: u16,
}

impl ConnectArgs {
    /// How long `connect` runs at most: --timeout, or 30 s (90 s with --until-direct, which
    /// must outlast a round of punching on the relay).
    pub(crate) fn timeout(&self) -> Duration {
        self.node
            .signaling
            .timeout
            .unwrap_or(Duration::from_secs(if self.until_direct { 90 } else { 30 }))
    }
}

/// The signaling server, identity and output every peer command shares (`listen`, `offer`,
/// `serve`, `connect`).
#[derive(Debug, Args)]
pub(crate) struct SignalingArgs {
    /// The signaling server, e.g. ws://127.0.0.1:7600/ws (`fogd --signal 127.0.0.1:7600`), or
    /// wss://... for one with a TLS certificate (`fogd --tls-cert`). The port defaults to 7600
    /// and the path to /ws
    #[arg(long, value_name = "ws[s]://HOST[:PORT][/PATH]")]
    pub(crate) signal: SignalUrl,

    /// The signaling server's peer ID to insist on (`fogd` logs it at start): authentication
    /// to a server that proves another key is refused [default: any]
    #[arg(long, value_name = "PEER_ID")]
    pub(crate) server_key: Option<fog_signal::PeerId>,

    /// For wss://: trust only the certificates in this PEM file (a private CA, or the server's
    /// self-signed certificate) [default: Mozilla's root program]
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// This node's key file: loaded, or created with mode 0600 when missing [default: a new key for
    /// this run]
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,

    /// Give up after this many seconds [default: offer and connect 30 (connect --until-direct
    /// 90), listen and serve never]
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,

    /// Print one JSON object per line instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `listen` and `offer` share.
#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    #[command(flatten)]
    pub(crate) signaling: SignalingArgs,

    /// Transports to offer, most preferred first
    #[arg(
        long = "transport",
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "quic,kcp",
        value_parser = parse_transport,
    )]
    pub(crate) transports: Vec<Transport>,
}

/// `fogconnect listen`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect listen --signal ws://127.0.0.1:7600/ws --alias alice --count 1

Prints `listening as PEER-ID` once authenticated, then a line per offer answered. Exits 0 after \
--count offers, 1 on an error or when --timeout passes first.")]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    pub(crate) peer: PeerArgs,

    /// An alias to claim: the server binds it to this key if no other key holds it
    #[arg(long, value_name = "NAME")]
    pub(crate) alias: Option<String>,

    /// Exit after answering this many offers [default: run until interrupted]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

/// `fogconnect offer`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect offer --signal ws://127.0.0.1:7600/ws alice

Exits 0 once the answer arrived (printed on stdout), 1 when the target is unknown or offline, the \
server refuses the offer, or --timeout passes first.")]
pub(crate) struct OfferArgs {
    #[command(flatten)]
    pub(crate) peer: PeerArgs,

    /// The peer to offer to: its peer ID, or an alias it registered
    #[arg(value_name = "PEER")]
    pub(crate) target: String,

    /// The application's service number, sent with the offer
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) service: u16,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    match Transport::from(s.to_owned()) {
        Transport::Other(name) => Err(format!(
            "unknown transport '{name}' (kcp, utp, quic, sctp or rtc)"
        )),
        known => Ok(known),
    }
}

/// `fogconnect nat`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example: fogconnect nat --server 127.0.0.1   (against `fogd --stun 127.0.0.1:3478 --stun-alt \
127.0.0.2:3479`)

Mapping and filtering need a server with two addresses (RFC 5780: fogd, coturn; RFC 3489: stund). \
Against a one-address server the report says which tests could not run and why. Progress goes to \
stderr, the result to stdout.")]
pub(crate) struct NatArgs {
    /// The STUN server: HOST or HOST:PORT, HOST a name, an IPv4 address or an IPv6 address (in
    /// brackets when followed by a port). The port defaults to 3478
    #[arg(long, short = 's', value_name = "HOST[:PORT]")]
    pub(crate) server: ServerArg,

    /// Use IPv4 only (the default prefers IPv4 and falls back to IPv6)
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub(crate) ipv4: bool,

    /// Use IPv6 only
    #[arg(short = '6')]
    pub(crate) ipv6: bool,

    /// Print one JSON object instead of the table
    #[arg(long)]
    pub(crate) json: bool,

    /// Give up after this many seconds [default: 60, plus --lifetime]
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,

    /// Do not test hairpinning (RFC 5780 §3.4)
    #[arg(long)]
    pub(crate) no_hairpin: bool,

    /// Fresh local ports whose mappings give the port allocation pattern: 0 (off) or 2 to 64
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_PORT_SAMPLES,
        value_parser = parse_samples,
    )]
    pub(crate) samples: u16,

    /// Also test whether a binding survives this many seconds idle (RFC 5780 §4.6); the run
    /// takes that much longer
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) lifetime: Option<Duration>,

    /// Seed for the STUN transaction IDs and the local ports [default: from the OS]
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,

    /// No progress lines on stderr
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,

    /// Also ask the gateway for a port mapping with PCP, NAT-PMP and UPnP IGD at once (while
    /// discovery runs), report what each answered, and delete the mapping again
    #[arg(long)]
    pub(crate) portmap: bool,

    /// The gateway --portmap asks [default: the IPv4 default route's]
    #[arg(long, value_name = "IPV4", requires = "portmap")]
    pub(crate) gateway: Option<std::net::Ipv4Addr>,
}

impl NatArgs {
    /// Which address families `--server` may resolve to, in order of preference.
    pub(crate) fn families(&self) -> Families {
        match (self.ipv4, self.ipv6) {
            (true, _) => Families::V4Only,
            (_, true) => Families::V6Only,
            _ => Families::PreferV4,
        }
    }
}

/// `-4`, `-6` or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Families {
    /// Neither flag: IPv4 if the name has an IPv4 address, else IPv6.
    PreferV4,
    /// `-4`.
    V4Only,
    /// `-6`.
    V6Only,
}

/// `--server HOST[:PORT]`, parsed but not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerArg {
    /// A name or an IP literal (without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl ServerArg {
    /// The host as an IP literal, if it is one.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for ServerArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ServerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            // [v6] or [v6]:port
            let (host, after) = rest
                .split_once(']')
                .ok_or("an opening '[' without its ']'")?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected ':PORT' after ']'")?,
                ),
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("'{host}' in brackets is not an IPv6 address"));
            }
            (host, port)
        } else if s.parse::<IpAddr>().is_ok() {
            // A bare IPv6 address has colons of its own: it takes no port.
            (s, None)
        } else {
            match s.split_once(':') {
                Some((_, after)) if after.contains(':') => {
                    return Err(format!(
                        "'{s}' is neither HOST:PORT nor an IPv6 address; write an IPv6 address \
                         with a port as [ADDRESS]:PORT"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err("the host is empty".to_owned());
        }
        let port = match port {
            None => STUN_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err("the port must not be 0".to_owned()),
                Ok(p) => p,
                Err(_) => return Err(format!("'{p}' is not a port (1 to 65535)")),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

fn parse_samples(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n == 0 || (2..=MAX_PORT_SAMPLES).contains(&n) => Ok(n),
        Ok(_) => Err(format!(
            "must be 0 (off) or 2 to {MAX_PORT_SAMPLES}: one sample shows no pattern"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Whole or fractional seconds, more than 0 and at most a day.
/// A byte count: a number, optionally followed by KiB or MiB.
fn parse_size(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        other => return Err(format!("unknown unit '{other}': use B, KiB or MiB")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    match n.checked_mul(unit) {
        Some(0) => Err("must be more than 0".to_owned()),
        Some(bytes) if bytes <= 1 << 30 => Ok(bytes),
        _ => Err("at most 1024MiB".to_owned()),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err("must be more than 0 and at most 86400 (a day)".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn server(s: &str) -> Result<(String, u16), String> {
        s.parse::<ServerArg>().map(|a| (a.host, a.port))
    }

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_forms() {
        let ok = |host: &str, port| Ok((host.to_owned(), port));
        assert_eq!(server("127.0.0.1"), ok("127.0.0.1", 3478));
        assert_eq!(server("127.0.0.1:3479"), ok("127.0.0.1", 3479));
        assert_eq!(server("stun.example.org"), ok("stun.example.org", 3478));
        assert_eq!(server("localhost:19302"), ok("localhost", 19302));
        assert_eq!(server("::1"), ok("::1", 3478));
        assert_eq!(server("[::1]"), ok("::1", 3478));
        assert_eq!(server("[2001:db8::1]:5349"), ok("2001:db8::1", 5349));
        for bad in [
            "",
            ":3478",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[::1]3478",
            "[example.org]:3478",
            "a:b:c",
        ] {
            assert!(server(bad).is_err(), "{bad:?} parsed");
        }
        let arg: ServerArg = "[::1]:9".parse().unwrap();
        assert_eq!(arg.to_string(), "[::1]:9");
        assert_eq!(arg.ip(), Some("::1".parse().unwrap()));
    }

    #[test]
    fn interfaces_and_alternatives() {
        assert_eq!("auto".parse(), Ok(Interfaces::Auto));
        assert_eq!("none".parse(), Ok(Interfaces::List(vec![])));
        assert_eq!(
            "192.0.2.1, ::1".parse(),
            Ok(Interfaces::List(vec![
                "192.0.2.1".parse().unwrap(),
                "::1".parse().unwrap()
            ]))
        );
        assert!("eth0".parse::<Interfaces>().unwrap_err().contains("'eth0'"));
        let a: Alternative = "198.51.100.1,198.51.100.3:3479".parse().unwrap();
        assert_eq!(a.stun.to_string(), "198.51.100.1:3478");
        assert_eq!(a.turn.unwrap().to_string(), "198.51.100.3:3479");
        let a: Alternative = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(
            (a.stun.to_string(), a.turn),
            ("[2001:db8::1]:3478".into(), None)
        );
        assert!("198.51.100.1,".parse::<Alternative>().is_err());
    }

    #[test]
    fn defaults_and_limits() {
        let cli = Cli::try_parse_from(["fogconnect", "nat", "--server", "127.0.0.1"]).unwrap();
        let Some(Command::Nat(nat)) = cli.command else {
            panic!("not nat")
        };
        assert_eq!(nat.samples, DEFAULT_PORT_SAMPLES);
        assert_eq!(nat.families(), Families::PreferV4);
        assert_eq!((nat.timeout, nat.lifetime, nat.seed), (None, None, None));
        assert!(!nat.no_hairpin && !nat.json);

        let parse = |extra: &[&str]| {
            let args = ["fogconnect", "nat", "-s", "h"].iter().chain(extra);
            Cli::try_parse_from(args.copied())
        };
        assert!(parse(&["--samples", "0"]).is_ok());
        assert!(parse(&["--samples", "1"]).is_err());
        assert!(parse(&["--samples", "65"]).is_err());
        assert!(parse(&["--timeout", "0"]).is_err());
        assert!(parse(&["--timeout", "0.5"]).is_ok());
        assert!(parse(&["--lifetime", "nan"]).is_err());
        assert!(parse(&["-4", "-6"]).is_err());
        let Some(Command::Nat(six)) = parse(&["-6"]).unwrap().command else {
            panic!("not nat")
        };
        assert_eq!(six.families(), Families::V6Only);
        assert!(Cli::try_parse_from(["fogconnect", "nat"]).is_err());
    }

    #[test]
    fn peer_commands() {
        let cli = Cli::try_parse_from([
            "fogconnect",
            "offer",
            "--signal",
            "ws://127.0.0.1:7600/ws",
            "--transport",
            "kcp,utp",
            "alice",
        ])
        .unwrap();
        let Some(Command::Offer(offer)) = cli.command else {
            panic!("not offer")
        };
        assert_eq!(offer.target, "alice");
        assert_eq!(offer.peer.transports, [Transport::Kcp, Transport::Utp]);
        assert_eq!((offer.service, offer.peer.signaling.timeout), (0, None));

        let cli = Cli::try_parse_from(["fogconnect", "listen", "--signal", "ws://h"]).unwrap();
        let Some(Command::Listen(listen)) = cli.command else {
            panic!("not listen")
        };
        assert_eq!(listen.peer.transports, [Transport::Quic, Transport::Kcp]);
        assert_eq!(listen.peer.signaling.signal.to_string(), "ws://h:7600/ws");
        assert_eq!((listen.count, listen.alias), (None, None));

        let connect = |extra: &[&str]| {
            let args = [
                "fogconnect",
                "connect",
                "--signal",
                "ws://h",
                "--stun",
                "h",
                "bob",
            ];
            let Some(Command::Connect(connect)) = Cli::try_parse_from(args.iter().chain(extra))
                .unwrap()
                .command
            else {
                panic!("not connect")
            };
            (connect.until_direct, connect.timeout())
        };
        assert_eq!(connect(&[]), (false, Duration::from_secs(30)));
        assert_eq!(
            connect(&["--until-direct"]),
            (true, Duration::from_secs(90))
        );
        let mine = connect(&["--until-direct", "--timeout", "40"]);
        assert_eq!(mine, (true, Duration::from_secs(40)));

        for bad in [
            &["listen", "--signal", "http://h"][..],
            &["listen", "--signal", "ws://h", "--count", "0"],
            &["listen", "--signal", "ws://h", "--transport", "tcp"],
            &["offer", "--signal", "ws://h"],
            &["listen"],
        ] {
            let args = std::iter::once("fogconnect").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_take_a_unit() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4GB").is_err());
        assert!(parse_size("2048MiB").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn no_subcommand_is_the_demo() {
        let cli = Cli::try_parse_from(["fogconnect"]).unwrap();
        assert!(cli.command.is_none());
        let Some(Command::Demo(demo)) =
            Cli::try_parse_from(["fogconnect", "demo"]).unwrap().command
        else {
            panic!("not demo");
        };
        assert_eq!(demo.size, DemoArgs::default().size);
        assert_eq!(demo.timeout, DemoArgs::default().timeout);
    }
}
