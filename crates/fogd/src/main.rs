//! `fogd`, FogConnect's server. It carries two services, each a module here with its own flags,
//! its own event loop on its own thread, all stopped by the same signal:
//!
//! - **STUN** (`--stun`): a two-address STUN server (RFC 5389 Binding with RFC 5780 NAT behaviour
//!   discovery, and answers for RFC 3489 clients) on a fog-mio driver;
//! - **signaling** (`--signal`): the `fog_signal` server machine over WebSocket at `/ws`
//!   (default port 7600), `wss://` with `--tls-cert`/`--tls-key`, on a mio loop of its own with
//!   tungstenite and rustls (see the `signal` module).
//!
//! Either or both may run. TURN will join them as a section of its own.
//!
//! ```text
//! fogd --stun 192.0.2.1:3478 --stun-alt 192.0.2.2:3479
//! fogd --signal 0.0.0.0:7600 --key server.key --realm signal.example.org \
//!      --tls-cert fullchain.pem --tls-key privkey.pem
//! ```
//!
//! The first serves STUN on all four combinations 192.0.2.1:3478, 192.0.2.1:3479, 192.0.2.2:3478
//! and 192.0.2.2:3479, which is what CHANGE-REQUEST and OTHER-ADDRESS need. The second serves
//! `wss://signal.example.org:7600/ws` with the identity kept in `server.key` (created with mode
//! 0600 on the first run). `fogd --help` lists the flags and their defaults.
//!
//! # Config file
//!
//! `--config fogd.toml` reads the signaling settings from a TOML file with one `[signal]` table
//! whose keys are the signaling flags' names without the dashes. A flag given on the command
//! line overrides the file; an unknown table or key is an error naming it and its line.
//!
//! ```toml
//! [signal]
//! signal = "0.0.0.0:7600"          # or a bare IP for port 7600
//! key = "/var/lib/fogd/server.key"
//! realm = "signal.example.org"     # default: the signal IP
//! tls-cert = "/etc/fogd/fullchain.pem"
//! tls-key = "/etc/fogd/privkey.pem"
//! max-connections = 20000          # open WebSocket connections
//! max-peers = 16384                # authenticated peers
//! frames-per-second = 20           # per connection, sustained (bursts of 40)
//! max-frame-len = 16384            # bytes; larger frames are closed with 1009
//! max-pending-offers = 8           # unanswered offers to one peer, and from one peer
//! handshake-timeout-ms = 5000      # TLS + HTTP upgrade
//! max-unsent = 131072              # bytes waiting for a slow reader before it is dropped
//! ```
//!
//! # Operation
//!
//! - Logs go to stderr through `tracing`; `RUST_LOG` filters them (default `info`). Signaling
//!   logs each connection, authentication and close (with code and reason) at `info`.
//! - SIGINT or SIGTERM stops every service; each logs its final counters (`STUN stopped
//!   received=... answered=...`, `signal stopped accepted=... upgraded=... frames_in=...`) before
//!   fogd exits 0; a second signal exits at once. Open WebSocket connections get a close frame
//!   with 1001.
//! - Exit status 1 with a message on stderr when a service cannot start (a bind fails, an
//!   address is unusable, the config file or key file is bad), 2 for a command-line error.

mod cli;
mod config;
mod signal;
mod signals;
mod stun;

use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::thread;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::Cli;
use crate::config::FileConfig;
use crate::signal::SignalService;
use crate::signals::{ShutdownSignals, Stop};
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run(cli: &Cli) -> Result<(), BoxError> {
    let signals = ShutdownSignals::install()
        .map_err(|e| format!("installing the SIGINT/SIGTERM handlers: {e}"))?;
    let signal_args = match &cli.config {
        Some(path) => FileConfig::load(path)?.signal.under(path, &cli.signal)?,
        None => cli.signal.clone(),
    };
    let stun_config = stun::config(&cli.stun)?;
    let signal_settings = signal::settings(&signal_args)?;
    if stun_config.is_none() && signal_settings.is_none() {
        return Err("no service configured: give --stun or --signal (see --help)".into());
    }

    // Bind everything before serving anything, so that a bad address fails the whole start.
    let stun = stun_config.map(StunService::bind).transpose()?;
    let signal = signal_settings.map(SignalService::bind).transpose()?;
    let mut stops: Vec<Stop> = Vec::new();
    if let Some(stun) = &stun {
        let handle = stun.handle();
        stops.push(Arc::new(move || handle.shutdown()));
    }
    if let Some(signal) = &signal {
        let handle = signal.handle();
        stops.push(Arc::new(move || handle.stop()));
    }
    // The same stops, for when one service fails and the others must end too.
    let on_failure = stops.clone();
    signals
        .stop_on_signal(stops)
        .map_err(|e| format!("starting the signal thread: {e}"))?;

    let (done, finished) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    if let Some(stun) = stun {
        let done = done.clone();
        threads.push(thread::Builder::new().name("stun".into()).spawn(move || {
            let result = stun.run().map(|report| report.log());
            let _ = done.send(result.map_err(|e| format!("STUN: the event loop failed: {e}")));
        })?);
    }
    if let Some(signal) = signal {
        let done = done.clone();
        threads.push(
            thread::Builder::new()
                .name("signal".into())
                .spawn(move || {
                    let result = signal.run().map(|report| report.log());
                    let _ = done
                        .send(result.map_err(|e| format!("signaling: the event loop failed: {e}")));
                })?,
        );
    }
    drop(done);
    let mut first_error = None;
    for result in finished {
        if let Err(e) = result {
            tracing::error!(error = %e, "a service failed; stopping the others");
            for stop in &on_failure {
                let _ = stop();
            }
            first_error.get_or_insert(e);
        }
    }
    for thread in threads {
        if thread.join().is_err() {
            first_error.get_or_insert_with(|| "a service thread panicked".to_owned());
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
