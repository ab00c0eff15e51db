//! `fogd`, FogConnect's server. Today it is a two-address STUN server (RFC 5389 Binding with
//! RFC 5780 NAT behaviour discovery, and answers for RFC 3489 clients); signaling and TURN will
//! join it as sections of their own, each a module here with its own flags and its own fog-mio
//! driver, all stopped by the same signal.
//!
//! ```text
//! fogd --stun 192.0.2.1:3478 --stun-alt 192.0.2.2:3479
//! ```
//!
//! serves on all four combinations 192.0.2.1:3478, 192.0.2.1:3479, 192.0.2.2:3478 and
//! 192.0.2.2:3479, which is what CHANGE-REQUEST and OTHER-ADDRESS need. `fogd --help` lists
//! the flags and their defaults.
//!
//! # Operation
//!
//! - Logs go to stderr through `tracing`; `RUST_LOG` filters them (default `info`).
//! - SIGINT or SIGTERM stops the drivers, which then log their final counters (`STUN stopped
//!   received=... answered=... malformed=...`) before fogd exits 0; a second signal exits at once.
//! - Exit status 1 with a message on stderr when a service cannot start (a bind fails, an
//!   address is unusable), 2 for a command-line error.

mod cli;
mod signals;
mod stun;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::Cli;
use crate::signals::ShutdownSignals;
use crate::stun::StunService;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fogd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let signals = ShutdownSignals::install()
        .map_err(|e| format!("installing the SIGINT/SIGTERM handlers: {e}"))?;
    // The `service` argument group makes clap refuse a command line without a service.
    let stun_config = stun::config(&cli.stun)?.ok_or("no service configured (see --help)")?;
    let stun = StunService::bind(stun_config)?;
    signals
        .stop_on_signal(vec![stun.handle()])
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    let report = stun
        .run()
        .map_err(|e| format!("STUN: the event loop failed: {e}"))?;
    report.log();
    Ok(())
}
