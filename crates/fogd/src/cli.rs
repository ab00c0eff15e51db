//! The command line. Each service is a help section of its own (`STUN` today; signaling and TURN
//! add theirs), with flags named after it.

use std::net::SocketAddr;

use clap::{ArgGroup, Args, Parser};
use fog_stun::server::RateLimit;

/// FogConnect's server.
#[derive(Debug, Parser)]
#[command(
    name = "fogd",
    version,
    about = "FogConnect's server: a two-address RFC 5780 STUN server (signaling and TURN to come)",
    long_about = None,
    after_help = "\
Example: fogd --stun 192.0.2.1:3478 --stun-alt 192.0.2.2:3479

Logs go to stderr. RUST_LOG sets the filter (default: info), e.g. RUST_LOG=debug.
SIGINT or SIGTERM stops fogd cleanly and logs its final counters; a second one exits at once.",
    // At least one service must be configured; more join this group as they arrive.
    group(ArgGroup::new("service").required(true).multiple(true).args(["stun"])),
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) stun: StunArgs,
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
