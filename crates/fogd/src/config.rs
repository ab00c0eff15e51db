//! The optional TOML config file (`--config fogd.toml`). It holds a `[signal]` table whose keys
//! are the signaling flags' names without the leading dashes, and a `[turn]` and a `[cluster]`
//! table whose keys are the TURN and cluster flags' names the same way; a flag on the command line wins over the file. Unknown tables and keys are errors, so that a misspelt limit is not silently
//! left at its default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use fog_turn::server::IpPrefix;
use serde::Deserialize;

use crate::cli::{ClusterArgs, SignalArgs, TurnArgs};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// The `[signal]` table.
    #[serde(default)]
    pub(crate) signal: SignalFile,
    /// The `[turn]` table.
    #[serde(default)]
    pub(crate) turn: TurnFile,
    /// The `[cluster]` table.
    #[serde(default)]
    pub(crate) cluster: ClusterFile,
}

/// The `[cluster]` table: the same settings as [`ClusterArgs`], spelt as its flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ClusterFile {
    cluster: Option<String>,
    cluster_instance: Option<String>,
    /// Used only when no `--cluster-advertise` is given.
    #[serde(default)]
    cluster_advertise: Vec<String>,
    cluster_queue: Option<usize>,
    cluster_region: Option<String>,
}

impl ClusterFile {
    /// The flags `args` with every setting they leave out taken from this file.
    pub(crate) fn under(self, args: &ClusterArgs) -> ClusterArgs {
        ClusterArgs {
            cluster: args.cluster.clone().or(self.cluster),
            cluster_instance: args.cluster_instance.clone().or(self.cluster_instance),
            cluster_advertise: if args.cluster_advertise.is_empty() {
                self.cluster_advertise
            } else {
                args.cluster_advertise.clone()
            },
            cluster_queue: args.cluster_queue.or(self.cluster_queue),
            cluster_region: args.cluster_region.clone().or(self.cluster_region),
        }
    }
}

/// The `[turn]` table: the same settings as [`TurnArgs`], spelt as its flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct TurnFile {
    /// Text, parsed like the flag (so a bare IP means port 3478).
    turn: Option<String>,
    turn_secret: Option<String>,
    turn_secret_file: Option<PathBuf>,
    turn_relay_ip: Option<std::net::IpAddr>,
    /// Text, parsed like the flag: `"LOW-HIGH"`.
    turn_ports: Option<String>,
    turn_realm: Option<String>,
    turn_max_allocations: Option<usize>,
    turn_max_allocations_per_user: Option<usize>,
    turn_bandwidth: Option<u64>,
    turn_max_lifetime: Option<u64>,
    turn_credential_ttl: Option<u64>,
    /// Text, parsed like the flag: an address or `"off"`.
    turn_tcp: Option<String>,
    turn_tcp_max_per_ip: Option<usize>,
    turn_tcp_idle: Option<u64>,
    /// Text, parsed like the flag.
    turn_tls: Option<String>,
    /// Used only when no `--turn-url` is given.
    #[serde(default)]
    turn_url: Vec<String>,
    /// CIDR text; used only when no `--turn-allow-peer` is given.
    #[serde(default)]
    turn_allow_peer: Vec<String>,
    /// CIDR text; used only when no `--turn-deny-peer` is given.
    #[serde(default)]
    turn_deny_peer: Vec<String>,
}

/// The `[signal]` table: the same settings as [`SignalArgs`], spelt as its flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct SignalFile {
    /// Text, parsed like the flag (so a bare IP means port 7600).
    signal: Option<String>,
    key: Option<PathBuf>,
    realm: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_peers: Option<usize>,
    frames_per_second: Option<u32>,
    max_frame_len: Option<usize>,
    max_pending_offers: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_unsent: Option<usize>,
}

/// Why the config file could not be used.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// It could not be read.
    Read(PathBuf, io::Error),
    /// It is not TOML, or has an unknown or ill-typed key; toml's message names the line.
    Parse(PathBuf, toml::de::Error),
    /// `signal` is not an address.
    Address(PathBuf, String),
    /// A `[turn]` value that does not parse like its flag: the key and why.
    Turn(PathBuf, &'static str, String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(path, e) => write!(f, "config file {}: {e}", path.display()),
            Self::Parse(path, e) => write!(
                f,
                "config file {}: {e}(the keys are listed under `Config file` in `fogd --help`)",
                path.display()
            ),
            Self::Address(path, message) => {
                write!(
                    f,
                    "config file {}: [signal] signal: {message}",
                    path.display()
                )
            }
            Self::Turn(path, key, message) => {
                write!(f, "config file {}: [turn] {key}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl FileConfig {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(path.to_owned(), e))
    }
}

impl TurnFile {
    /// The flags `args` with every setting they leave out taken from this file. A secret on the
    /// command line (either form) wins over both forms in the file.
    pub(crate) fn under(self, path: &Path, args: &TurnArgs) -> Result<TurnArgs, ConfigError> {
        let bad = |key, message| ConfigError::Turn(path.to_owned(), key, message);
        let turn = match (args.turn, self.turn) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => {
                Some(crate::cli::parse_turn_addr(&text).map_err(|m| bad("turn", m))?)
            }
            (None, None) => None,
        };
        let turn_ports = match (args.turn_ports, self.turn_ports) {
            (Some(range), _) => Some(range),
            (None, Some(text)) => {
                Some(crate::cli::parse_port_range(&text).map_err(|m| bad("turn-ports", m))?)
            }
            (None, None) => None,
        };
        let turn_tcp = match (args.turn_tcp, self.turn_tcp) {
            (Some(tcp), _) => Some(tcp),
            (None, Some(text)) => {
                Some(crate::cli::parse_turn_tcp(&text).map_err(|m| bad("turn-tcp", m))?)
            }
            (None, None) => None,
        };
        let turn_tls = match (args.turn_tls, self.turn_tls) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => {
                Some(crate::cli::parse_turn_tls(&text).map_err(|m| bad("turn-tls", m))?)
            }
            (None, None) => None,
        };
        let secret_on_command_line = args.turn_secret.is_some() || args.turn_secret_file.is_some();
        let (turn_secret, turn_secret_file) = if secret_on_command_line {
            (args.turn_secret.clone(), args.turn_secret_file.clone())
        } else {
            if self.turn_secret.is_some() && self.turn_secret_file.is_some() {
                return Err(bad(
                    "turn-secret",
                    "give turn-secret or turn-secret-file, not both".to_owned(),
                ));
            }
            (self.turn_secret, self.turn_secret_file)
        };
        let prefixes = |key: &'static str, flags: &[IpPrefix], file: Vec<String>| {
            if !flags.is_empty() {
                return Ok(flags.to_vec());
            }
            file.iter()
                .map(|text| {
                    text.parse::<IpPrefix>()
                        .map_err(|e| bad(key, e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let turn_allow_peer = prefixes(
            "turn-allow-peer",
            &args.turn_allow_peer,
            self.turn_allow_peer,
        )?;
        let turn_deny_peer = prefixes("turn-deny-peer", &args.turn_deny_peer, self.turn_deny_peer)?;
        Ok(TurnArgs {
            turn,
            turn_secret,
            turn_secret_file,
            turn_relay_ip: args.turn_relay_ip.or(self.turn_relay_ip),
            turn_ports,
            turn_realm: args.turn_realm.clone().or(self.turn_realm),
            turn_max_allocations: args.turn_max_allocations.or(self.turn_max_allocations),
            turn_max_allocations_per_user: args
                .turn_max_allocations_per_user
                .or(self.turn_max_allocations_per_user),
            turn_bandwidth: args.turn_bandwidth.or(self.turn_bandwidth),
            turn_max_lifetime: args.turn_max_lifetime.or(self.turn_max_lifetime),
            turn_credential_ttl: args.turn_credential_ttl.or(self.turn_credential_ttl),
            turn_tcp,
            turn_tcp_max_per_ip: args.turn_tcp_max_per_ip.or(self.turn_tcp_max_per_ip),
            turn_tcp_idle: args.turn_tcp_idle.or(self.turn_tcp_idle),
            turn_tls,
            turn_url: if args.turn_url.is_empty() {
                self.turn_url
            } else {
                args.turn_url.clone()
            },
            turn_allow_peer,
            turn_deny_peer,
        })
    }
}

impl SignalFile {
    /// The flags `args` with every setting they leave out taken from this file.
    pub(crate) fn under(self, path: &Path, args: &SignalArgs) -> Result<SignalArgs, ConfigError> {
        let signal = match (args.signal, self.signal) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(
                crate::cli::parse_signal_addr(&text)
                    .map_err(|m| ConfigError::Address(path.to_owned(), m))?,
            ),
            (None, None) => None,
        };
        Ok(SignalArgs {
            signal,
            key: args.key.clone().or(self.key),
            realm: args.realm.clone().or(self.realm),
            tls_cert: args.tls_cert.clone().or(self.tls_cert),
            tls_key: args.tls_key.clone().or(self.tls_key),
            max_connections: args.max_connections.or(self.max_connections),
            max_peers: args.max_peers.or(self.max_peers),
            frames_per_second: args.frames_per_second.or(self.frames_per_second),
            max_frame_len: args.max_frame_len.or(self.max_frame_len),
            max_pending_offers: args.max_pending_offers.or(self.max_pending_offers),
            handshake_timeout_ms: args.handshake_timeout_ms.or(self.handshake_timeout_ms),
            max_unsent: args.max_unsent.or(self.max_unsent),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn merged(flags: &[&str], file: &str) -> Result<SignalArgs, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("fogd").chain(flags.iter().copied()))
            .expect("flags parse");
        let path = Path::new("fogd.toml");
        FileConfig::parse(path, file)?
            .signal
            .under(path, &cli.signal)
    }

    #[test]
    fn the_file_fills_what_the_flags_leave_out() {
        let file = "[signal]\nsignal = \"127.0.0.1\"\nmax-peers = 10\nmax-connections = 20\n";
        let args = merged(&["--config", "x", "--max-peers", "5"], file).unwrap();
        assert_eq!(args.signal, Some("127.0.0.1:7600".parse().unwrap()));
        assert_eq!(args.max_peers, Some(5), "the flag wins");
        assert_eq!(args.max_connections, Some(20), "the file fills in");
        assert_eq!(args.max_frame_len, None, "the default stays to be applied");
    }

    #[test]
    fn the_turn_table_sets_turn_over_tcp() {
        let cli = Cli::try_parse_from(["fogd", "--config", "x"]).unwrap();
        let path = Path::new("fogd.toml");
        let file = "[turn]\nturn-tcp = \"off\"\nturn-tcp-max-per-ip = 3\nturn-tcp-idle = 9\n";
        let args = FileConfig::parse(path, file)
            .unwrap()
            .turn
            .under(path, &cli.turn)
            .unwrap();
        assert_eq!(args.turn_tcp, Some(crate::cli::TurnTcp::Off));
        assert_eq!(
            (args.turn_tcp_max_per_ip, args.turn_tcp_idle),
            (Some(3), Some(9))
        );
        let file = "[turn]\nturn-tcp = \"127.0.0.1\"\n";
        let args = FileConfig::parse(path, file)
            .unwrap()
            .turn
            .under(path, &cli.turn)
            .unwrap();
        let at = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(args.turn_tcp, Some(crate::cli::TurnTcp::At(at)));
        let file = "[turn]\nturn-tcp = \"nowhere\"\n";
        let e = FileConfig::parse(path, file)
            .unwrap()
            .turn
            .under(path, &cli.turn)
            .unwrap_err();
        assert!(e.to_string().contains("turn-tcp"), "{e}");
    }

    #[test]
    fn unknown_keys_and_tables_are_errors_that_name_them() {
        let e = merged(&["--config", "x"], "[signal]\nmax-peer = 10\n").unwrap_err();
        let message = e.to_string();
        assert!(message.contains("unknown field `max-peer`"), "{message}");
        assert!(message.contains("fogd.toml"), "{message}");
        assert!(message.contains("line 2"), "{message}");

        let e = merged(&["--config", "x"], "[signaling]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `signaling`"), "{e}");
    }

    #[test]
    fn ill_typed_values_and_bad_addresses_are_errors() {
        let e = merged(&["--config", "x"], "[signal]\nmax-peers = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("max-peers"), "{e}");
        let e = merged(&["--config", "x"], "[signal]\nsignal = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("neither IP:PORT nor an IP"), "{e}");
    }

    #[test]
    fn the_example_in_the_help_parses_and_states_the_defaults() {
        use clap::CommandFactory;
        let help = Cli::command().get_after_help().unwrap().to_string();
        let start = help.find("  [signal]").expect("an example in the help");
        let example: String = help[start..]
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let cli = Cli::try_parse_from(["fogd", "--config", "x"]).unwrap();
        let path = Path::new("help");
        let args = FileConfig::parse(path, &example)
            .unwrap()
            .signal
            .under(path, &cli.signal)
            .unwrap();
        let defaults = fog_signal::server::Limits::default();
        assert_eq!(args.max_connections, Some(defaults.max_connections));
        assert_eq!(args.max_peers, Some(defaults.max_peers));
        assert_eq!(args.frames_per_second, Some(defaults.frames_per_second));
        assert_eq!(args.max_frame_len, Some(defaults.max_frame_len));
        assert_eq!(args.max_pending_offers, Some(defaults.max_pending_offers));
        assert_eq!(
            args.handshake_timeout_ms,
            Some(crate::signal::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64)
        );
        assert_eq!(args.max_unsent, Some(crate::signal::DEFAULT_MAX_UNSENT));
    }

    #[test]
    fn the_flag_help_states_the_defaults() {
        use clap::CommandFactory;
        let defaults = fog_signal::server::Limits::default();
        let help = Cli::command().render_help().to_string();
        for (flag, value) in [
            ("--max-connections", defaults.max_connections.to_string()),
            ("--max-peers", defaults.max_peers.to_string()),
            (
                "--frames-per-second",
                defaults.frames_per_second.to_string(),
            ),
            ("--max-frame-len", defaults.max_frame_len.to_string()),
            (
                "--max-pending-offers",
                defaults.max_pending_offers.to_string(),
            ),
            (
                "--max-unsent",
                crate::signal::DEFAULT_MAX_UNSENT.to_string(),
            ),
        ] {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{flag} not in the help"));
            assert!(line.contains(&format!("[default: {value}]")), "{line}");
        }
    }

    fn merged_turn(flags: &[&str], file: &str) -> Result<TurnArgs, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("fogd").chain(flags.iter().copied()))
            .expect("flags parse");
        let path = Path::new("fogd.toml");
        FileConfig::parse(path, file)?.turn.under(path, &cli.turn)
    }

    #[test]
    fn the_turn_table_fills_what_the_flags_leave_out() {
        let file = "[turn]\nturn = \"127.0.0.1\"\nturn-secret = \"filesecret\"\n\
                    turn-ports = \"50000-50010\"\nturn-max-allocations = 7\n";
        let args = merged_turn(&["--config", "x", "--turn-max-allocations", "3"], file).unwrap();
        assert_eq!(args.turn, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(args.turn_secret.as_deref(), Some("filesecret"));
        assert_eq!(args.turn_ports, Some((50000, 50010)));
        assert_eq!(args.turn_max_allocations, Some(3), "the flag wins");
        // A secret file on the command line beats the file's secret.
        let args = merged_turn(&["--config", "x", "--turn-secret-file", "s.txt"], file).unwrap();
        assert_eq!(args.turn_secret, None);
        assert_eq!(args.turn_secret_file, Some(PathBuf::from("s.txt")));
    }

    #[test]
    fn peer_ranges_come_from_the_file_unless_flags_give_some() {
        let file = "[turn]\nturn-allow-peer = [\"10.0.0.0/8\", \"fd00::/8\"]\n\
                    turn-deny-peer = [\"203.0.113.0/24\"]\n";
        let args = merged_turn(&["--config", "x"], file).unwrap();
        let strings = |v: &[IpPrefix]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(strings(&args.turn_allow_peer), ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(strings(&args.turn_deny_peer), ["203.0.113.0/24"]);
        let flags = ["--config", "x", "--turn-allow-peer", "127.0.0.0/8"];
        let args = merged_turn(&flags, file).unwrap();
        assert_eq!(
            strings(&args.turn_allow_peer),
            ["127.0.0.0/8"],
            "the flags win"
        );
        assert_eq!(strings(&args.turn_deny_peer), ["203.0.113.0/24"]);
        let e = merged_turn(
            &["--config", "x"],
            "[turn]\nturn-deny-peer = [\"10.0.0.1/8\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("[turn] turn-deny-peer"), "{e}");
    }

    #[test]
    fn bad_turn_values_name_their_key() {
        let e = merged_turn(&["--config", "x"], "[turn]\nturn-ports = \"9-1\"\n").unwrap_err();
        assert!(e.to_string().contains("[turn] turn-ports"), "{e}");
        let e = merged_turn(&["--config", "x"], "[turn]\nturn-secrets = \"x\"\n").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `turn-secrets`"),
            "{e}"
        );
        let both = "[turn]\nturn-secret = \"a\"\nturn-secret-file = \"b\"\n";
        let e = merged_turn(&["--config", "x"], both).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn the_turn_example_in_the_help_parses_and_states_the_defaults() {
        use clap::CommandFactory;
        let help = Cli::command().get_after_help().unwrap().to_string();
        let start = help.find("  [turn]").expect("a [turn] example in the help");
        let example: String = help[start..]
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let args = merged_turn(&["--config", "x"], &example).unwrap();
        let defaults = fog_turn::server::Limits::default();
        assert_eq!(args.turn_max_allocations, Some(defaults.max_allocations));
        assert_eq!(
            args.turn_max_allocations_per_user,
            Some(defaults.max_allocations_per_user)
        );
        assert_eq!(args.turn_bandwidth, Some(defaults.bandwidth_bytes_per_s));
        assert_eq!(
            args.turn_max_lifetime,
            Some(defaults.max_lifetime.as_secs())
        );
        assert_eq!(
            args.turn_credential_ttl,
            Some(crate::turn::DEFAULT_CREDENTIAL_TTL.as_secs())
        );
        let ports = fog_turn::server::DEFAULT_RELAY_PORTS;
        assert_eq!(args.turn_ports, Some((*ports.start(), *ports.end())));
    }

    #[test]
    fn an_empty_file_is_fine() {
        let args = merged(&["--signal", "127.0.0.1:1"], "").unwrap();
        assert_eq!(args.signal, Some("127.0.0.1:1".parse().unwrap()));
    }
}
