//! The optional TOML config file (`--config fogd.toml`). It holds one `[signal]` table whose keys
//! are the signaling flags' names without the leading dashes; a flag on the command line wins
//! over the file. Unknown tables and keys are errors, so that a misspelt limit is not silently
//! left at its default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::SignalArgs;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// The `[signal]` table.
    #[serde(default)]
    pub(crate) signal: SignalFile,
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

    #[test]
    fn an_empty_file_is_fine() {
        let args = merged(&["--signal", "127.0.0.1:1"], "").unwrap();
        assert_eq!(args.signal, Some("127.0.0.1:1".parse().unwrap()));
    }
}
