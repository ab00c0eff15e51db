//! The command line: `fogconnect <SUBCOMMAND>`, one subcommand per tool (`nat` today).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fog_stun::discovery::{DEFAULT_PORT_SAMPLES, MAX_PORT_SAMPLES};

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
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Find out how the NAT in front of this host behaves (RFC 5780 discovery, RFC 4787 terms)
    Nat(NatArgs),
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
    fn defaults_and_limits() {
        let cli = Cli::try_parse_from(["fogconnect", "nat", "--server", "127.0.0.1"]).unwrap();
        let Command::Nat(nat) = cli.command;
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
        let Command::Nat(six) = parse(&["-6"]).unwrap().command;
        assert_eq!(six.families(), Families::V6Only);
        assert!(Cli::try_parse_from(["fogconnect", "nat"]).is_err());
    }
}
