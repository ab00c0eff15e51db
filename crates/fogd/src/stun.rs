//! The STUN section: [`fog_stun::server::Server`] on its own fog-mio [`Driver`], one socket per
//! address in [`ServerConfig::local_addrs`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_mio::{Config, Driver, Handle, Stats};
use fog_stun::server::{ConfigError, Server, ServerConfig, ServerEvent, ServerStats};

use crate::cli::{SocketArgs, StunArgs};

/// Why the STUN service could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// `--stun` or `--stun-alt` names 0.0.0.0 or ::.
    Unspecified(SocketAddr),
    /// Port 0 asks the OS for any port, but clients must know it, and OTHER-ADDRESS names it.
    PortZero(SocketAddr),
    /// `--stun-alt` is `--stun` again.
    AltIsPrimary(SocketAddr),
    /// The two addresses do not make a server (mixed families).
    Config(ConfigError),
    /// A socket could not be bound; the message names the address.
    Bind(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unspecified(addr) => write!(
                f,
                "STUN: {addr} is a wildcard address; give the IP clients reach, since every \
                 answer names the address it leaves from (RESPONSE-ORIGIN) and must leave from it"
            ),
            Self::PortZero(addr) => write!(
                f,
                "STUN: {addr} has port 0; give the port clients should use (3478 is STUN's)"
            ),
            Self::AltIsPrimary(addr) => write!(
                f,
                "STUN: --stun-alt {addr} is the same as --stun; the alternate needs another IP, \
                 another port, or both"
            ),
            Self::Config(e) => write!(f, "STUN: --stun and --stun-alt: {e}"),
            Self::Bind(e) => {
                write!(f, "STUN: {e}")?;
                match e.kind() {
                    io::ErrorKind::AddrNotAvailable => write!(
                        f,
                        "\n  hint: no interface of this host has that IP. On Linux all of \
                         127.0.0.0/8 is local; on macOS add a second loopback address with \
                         `sudo ifconfig lo0 alias 127.0.0.2 up`"
                    ),
                    io::ErrorKind::AddrInUse => write!(
                        f,
                        "\n  hint: another process already uses that port (another STUN or TURN \
                         server such as coturn?); `ss -ulpn` shows which"
                    ),
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "\n  hint: ports below 1024 need root or CAP_NET_BIND_SERVICE"
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Bind(e) => Some(e),
            _ => None,
        }
    }
}

/// The server configuration `args` describe, or `None` without `--stun`.
pub(crate) fn config(args: &StunArgs) -> Result<Option<ServerConfig>, StartError> {
    let Some(primary) = args.stun else {
        return Ok(None);
    };
    let mut addrs = vec![primary];
    addrs.extend(args.stun_alt);
    for &addr in &addrs {
        if addr.ip().is_unspecified() {
            return Err(StartError::Unspecified(addr));
        }
        if addr.port() == 0 {
            return Err(StartError::PortZero(addr));
        }
    }
    if args.stun_alt == Some(primary) {
        return Err(StartError::AltIsPrimary(primary));
    }
    let mut config = ServerConfig::from_addrs(&addrs).map_err(StartError::Config)?;
    config.rate_limit = args.rate_limit();
    Ok(Some(config))
}

/// The STUN server bound to its sockets, ready to run.
pub(crate) struct StunService {
    driver: Driver<Server>,
}

/// What the service did, for the final log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) uptime: Duration,
    pub(crate) server: ServerStats,
    pub(crate) io: Stats,
}

impl StunService {
    /// Binds every address of `config`.
    /// `sockets` sets their kernel buffers.
    pub(crate) fn bind(config: ServerConfig, sockets: &SocketArgs) -> Result<Self, StartError> {
        let local = config.local_addrs();
        let driver = Driver::with_config(Server::new(config), &local, sockets.apply(Config::new()))
            .map_err(StartError::Bind)?;
        let config = driver.machine().config();
        let (recv_buffer, send_buffer) = driver
            .buffer_sizes(driver.local_addrs()[0])
            .unwrap_or_default();
        tracing::info!(
            addrs = ?driver.local_addrs(),
            other_address = ?config.other_address(),
            rate_limit = ?config.rate_limit,
            recv_buffer,
            send_buffer,
            "STUN listening"
        );
        crate::warn_small_buffers("STUN", sockets, recv_buffer, send_buffer);
        if config.rate_limit.is_none() {
            tracing::warn!("STUN rate limit is off: fine on loopback, a reflector in public");
        }
        Ok(Self { driver })
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub(crate) fn handle(&self) -> Handle {
        self.driver.handle()
    }

    /// Serves until the handle is shut down.
    pub(crate) fn run(mut self) -> io::Result<Report> {
        // fogd is a binary: the uptime in the final report is wall-clock time.
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        self.driver.run(|_, event| match event {
            // The driver's buffer is 65,535 bytes and answers stop at 65,507: not expected.
            ServerEvent::ResponseTooLarge {
                destination,
                needed,
            } => tracing::warn!(%destination, needed, "STUN answer too large, dropped"),
        })?;
        Ok(Report {
            uptime: started.elapsed(),
            server: *self.driver.machine().stats(),
            io: self.driver.stats(),
        })
    }
}

impl Report {
    /// Logs the counters, one line, `key=value` so that scripts (and fogd's tests) can read them.
    pub(crate) fn log(&self) {
        let s = &self.server;
        let secs = self.uptime.as_secs_f64();
        tracing::info!(
            uptime_s = format_args!("{secs:.1}"),
            received = s.received,
            answered = s.answered,
            answered_per_s = format_args!("{:.0}", s.answered as f64 / secs.max(1e-3)),
            error_responses = s.error_responses,
            classic = s.classic,
            malformed = s.malformed,
            not_binding = s.not_binding,
            rate_limited = s.rate_limited,
            rate_table_full = s.rate_table_full,
            not_stun = self.io.rejected,
            sent = self.io.sent,
            send_errors = self.io.send_errors,
            send_would_block = self.io.send_would_block,
            recv_errors = self.io.recv_errors,
            "STUN stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn config_of(args: &[&str]) -> Result<Option<ServerConfig>, StartError> {
        let cli = Cli::try_parse_from(std::iter::once("fogd").chain(args.iter().copied()))
            .expect("parses");
        config(&cli.stun)
    }

    #[test]
    fn two_addresses_make_four() {
        let config = config_of(&["--stun", "127.0.0.1:3478", "--stun-alt", "127.0.0.2:3479"])
            .unwrap()
            .unwrap();
        let addrs: Vec<String> = config.local_addrs().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:3478",
                "127.0.0.1:3479",
                "127.0.0.2:3478",
                "127.0.0.2:3479"
            ]
        );
        assert_eq!(
            config.other_address(),
            Some("127.0.0.2:3479".parse().unwrap())
        );
    }

    #[test]
    fn unusable_addresses_are_refused_with_a_reason() {
        let cases: [(&[&str], &str); 4] = [
            (&["--stun", "0.0.0.0:3478"], "wildcard"),
            (&["--stun", "127.0.0.1:0"], "port 0"),
            (
                &["--stun", "127.0.0.1:3478", "--stun-alt", "127.0.0.1:3478"],
                "same as --stun",
            ),
            (
                &["--stun", "127.0.0.1:3478", "--stun-alt", "[::1]:3479"],
                "IPv4 and IPv6",
            ),
        ];
        for (args, reason) in cases {
            let message = config_of(args).unwrap_err().to_string();
            assert!(message.contains(reason), "{args:?}: {message}");
        }
    }

    #[test]
    fn bind_errors_carry_a_hint() {
        let e = StartError::Bind(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "binding UDP 127.0.0.2:3479: Cannot assign requested address",
        ));
        let message = e.to_string();
        assert!(message.contains("127.0.0.2:3479"), "{message}");
        assert!(message.contains("ifconfig lo0 alias"), "{message}");
    }
}
