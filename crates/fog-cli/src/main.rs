//! `fogconnect`, FogConnect's command-line tool.
//!
//! ```text
//! fogconnect [demo [--size BYTES] [--timeout SECS] [--json]]
//! fogconnect id [--key FILE] [--json]
//! ```
//!
//! `demo` (also what runs with no subcommand, so what `cargo run --release` runs at the
//! workspace root) is FogConnect's main job on loopback with nothing to set up: fogd's STUN and
//! signaling in this process, two nodes, one connection per transport, a report (see `demo`).
//! `id` prints the peer ID of a key file (creating it, mode 0600, when missing), the identity
//! the other commands take with `--key`.
//!
//! ```text
//! fogconnect listen --signal ws://HOST[:PORT][/PATH] [--alias NAME] [--count N] [--key FILE]
//!                   [--transport NAMES] [--timeout SECS] [--json]
//! fogconnect offer  --signal ws://HOST[:PORT][/PATH] PEER [--service N] [--key FILE]
//!                   [--transport NAMES] [--timeout SECS] [--json]
//! ```
//!
//! meet through a signaling server (`fogd --signal`): `listen` authenticates, claims an alias and
//! answers the offers that arrive; `offer` looks a peer up by alias (or takes its peer ID) and
//! prints its answer. Each side describes one UDP socket it bound (a host candidate), fresh
//! check credentials, its transports and the service number (see `peer`).
//!
//! ```text
//! fogconnect nat --server HOST[:PORT] [--json] [-4|-6] [--timeout SECS] [--no-hairpin]
//!                [--samples N] [--lifetime SECS] [--seed N] [--quiet]
//! ```
//!
//! runs fog-stun's RFC 5780 discovery (mapping, filtering, port allocation pattern,
//! hairpinning, optionally the binding lifetime) against a STUN server on real sockets through
//! fog-mio, and prints what it found as a table, or as one JSON object with `--json`. With
//! `fogd --stun 127.0.0.1:3478 --stun-alt 127.0.0.2:3479` on the same host,
//! `fogconnect nat --server 127.0.0.1` reads `NAT type: no NAT / open`.
//!
//! # Exit status
//!
//! `listen` and `offer` exit 0 when the exchange happened, 1 with a message on stderr when it
//! could not (no server, an unknown or offline peer, a refused alias, the timeout). For `nat`:
//!
//! - **0**: a result. UDP blocked is one (the server never answered), and so is a run in which
//!   some tests could not run (a one-address server, say): the output says which and why.
//! - **1**: no result: the name does not resolve (or not to the family asked for), no route to
//!   the server, the local ports cannot be bound, the server refused test I or answered it with
//!   nothing usable, or `--timeout` passed first. A message on stderr says which; with `--json`
//!   a report that exists is still printed.
//! - **2**: a command-line error (clap's usage message).
//!
//! Progress goes to stderr as plain lines (`--quiet` silences it), the result to stdout.
//! `RUST_LOG` filters the driver's own log lines on stderr (default: warnings).

mod cli;
mod demo;
mod doctor;
mod id;
mod nat;
mod nat_cache;
mod node;
mod peer;
mod signal;
mod transfer;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::{Cli, Command, DemoArgs, NatArgs};

fn main() -> ExitCode {
    node::mark_start();
    // Code first run from here on keeps one page resident, not a 64 KiB window around it
    // (fogconnect_ffi::memory): most of an idle node's RSS was such neighbours. Without the
    // kernel's support the command runs as before. `FOG_FAULT_AROUND=1` leaves it out (for a
    // seccomp filter that kills on unknown system calls: systemd's `SystemCallFilter=` without
    // `userfaultfd`).
    let _ = fogconnect_ffi::memory::fault_code_pages_singly();
    let cli = Cli::parse();
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    // The demo runs fogd in this process; its start-up warnings (no STUN rate limit, which
    // is right on loopback) are not the demo's news. RUST_LOG still says otherwise.
    let demo = matches!(cli.command, None | Some(Command::Demo(_)));
    if demo && std::env::var_os("RUST_LOG").is_none() {
        filter = filter.add_directive("fogd=error".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();

    match cli.command {
        None => {
            eprintln!(
                "no command given: running the demo (`fogconnect --help` lists the commands)"
            );
            report(demo::run(&DemoArgs::default()))
        }
        Some(command) => match command {
            Command::Demo(args) => report(demo::run(&args)),
            Command::Id(args) => report(id::run(&args)),
            Command::Nat(args) => nat_command(&args),
            Command::Listen(args) => report(peer::listen(&args)),
            Command::Offer(args) => report(peer::offer(&args)),
            Command::Serve(args) => report(node::serve(&args)),
            Command::Connect(args) => report(node::connect(&args)),
            Command::Doctor(args) => report(doctor::doctor(&args)),
            Command::Send(args) => report(transfer::send(&args)),
            Command::Recv(args) => report(transfer::recv(&args)),
        },
    }
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fogconnect: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nat_command(args: &NatArgs) -> ExitCode {
    let seed = args.seed.unwrap_or_else(os_seed);
    // Port mapping runs beside discovery on a thread of its own: its few seconds hide in
    // discovery's.
    let portmap = args.portmap.then(|| {
        let gateway = args.gateway;
        std::thread::spawn(move || nat::portmap::run(gateway, seed.rotate_left(32)))
    });
    let outcome = match nat::run(args, seed) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("fogconnect: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let portmap = portmap.map(|thread| {
        thread
            .join()
            .unwrap_or_else(|_| Err("the port mapping thread panicked".to_owned()))
    });
    let text = if args.json {
        let mut value = nat::render::json(&outcome);
        if let Some(result) = &portmap {
            value["portmap"] = match result {
                Ok(report) => nat::portmap::json(report),
                Err(e) => serde_json::json!({ "error": e }),
            };
        }
        let mut text = value.to_string();
        text.push('\n');
        text
    } else {
        let mut text = nat::render::table(&outcome);
        match &portmap {
            Some(Ok(report)) => {
                text.push('\n');
                text.push_str(&nat::portmap::table(report));
            }
            Some(Err(e)) => text.push_str(&format!("\nPort mapping: {e}\n")),
            None => {}
        }
        text
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        // `fogconnect nat ... | head -1` is fine.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("fogconnect: error: writing the result: {e}");
            return ExitCode::FAILURE;
        }
    }
    if outcome.found() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "fogconnect: error: {} answered, but not with a usable mapped address",
            outcome.report.server
        );
        ExitCode::FAILURE
    }
}

/// A seed from the OS random source, so that two runs use different transaction IDs and ports
/// (RFC 5389 §6 wants the IDs random). Should the source fail, the time and the process ID
/// still differ between runs.
// A binary may read the OS random source and the clock; the workspace's clippy.toml bans both
// for the protocol crates, which take a seed and `now` instead.
#[allow(clippy::disallowed_methods)]
fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}
