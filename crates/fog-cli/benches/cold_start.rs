//! Cold start on loopback: from the start of a `fogconnect connect` process to the echo of its
//! first datagram, with fogd (STUN on two addresses and signaling, in this process) and a
//! serving node already up. Each run is a new process with a new key, as a user's first
//! command would be; the times are the `t_ms` the process itself prints in its `--json` lines
//! (from the first line of `main`), so process creation and the dynamic loader are not in
//! them, and everything after is: discovery, signaling, the offer, punching, the echo.
//!
//! ```text
//! cargo bench -p fog-cli --bench cold_start                 # 20 runs
//! cargo bench -p fog-cli --bench cold_start -- --runs 50
//! ```
//!
//! Prints the median and p95 of `ready` (discovery knows enough to offer), `connected` (a
//! verified path) and `echo`. Issue 15's target: the echo within 50 ms of process start.

#![allow(clippy::disallowed_methods)] // a bench reads the clock

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;

const FOGCONNECT: &str = env!("CARGO_BIN_EXE_fogconnect");

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp(ip: IpAddr) -> SocketAddr {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

fn fogd() -> (fogd::Services, String, String) {
    let a1 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let stun = free_udp(a1);
    let alt = free_udp(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let signal = TcpListener::bind(SocketAddr::new(a1, 0))
        .and_then(|l| l.local_addr())
        .expect("a free TCP port");
    let argv = [
        "fogd".to_owned(),
        "--stun".to_owned(),
        stun.to_string(),
        "--stun-alt".to_owned(),
        alt.to_string(),
        "--signal".to_owned(),
        signal.to_string(),
        // Every run comes from 127.0.0.1: to a rate limit they are one client.
        "--stun-no-rate-limit".to_owned(),
    ];
    let cli = fogd::Cli::try_parse_from(argv).expect("fogd's arguments");
    let services = fogd::Services::start(&cli).expect("fogd starts");
    (services, stun.to_string(), format!("ws://{signal}/ws"))
}

/// The `t_ms` of the first line of each wanted event, in `wanted`'s order.
fn times(line_source: impl BufRead, wanted: &[&str]) -> Vec<Option<f64>> {
    let mut found = vec![None; wanted.len()];
    for line in line_source.lines().map_while(Result::ok) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(event), Some(t)) = (value["event"].as_str(), value["t_ms"].as_f64()) else {
            continue;
        };
        if let Some(i) = wanted.iter().position(|w| *w == event) {
            found[i].get_or_insert(t);
        }
    }
    found
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 20usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--runs takes a positive number")
            }
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            other => panic!("unknown argument {other}; known: --runs N"),
        }
    }
    let (services, stun, url) = fogd();
    let alias = format!("coldstart{}", std::process::id());
    let mut serve = Guard(
        Command::new(FOGCONNECT)
            .args(["serve", "--json", "--signal", &url, "--stun", &stun])
            .args(["--interfaces", "none", "--alias", &alias])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fogconnect serve starts"),
    );
    // Serve is up once it reports ready (its own discovery) and has registered its alias: give
    // it a moment after `ready` for the signaling handshake.
    let mut out = BufReader::new(serve.0.stdout.take().expect("piped"));
    let mut line = String::new();
    while out.read_line(&mut line).expect("serve's output") > 0 && !line.contains("\"ready\"") {
        line.clear();
    }
    std::thread::sleep(Duration::from_millis(500));
    std::thread::spawn(move || for _ in out.lines() {});

    let wanted = ["ready", "connected", "echo"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); wanted.len()];
    let mut wall = Vec::new();
    let mut failed = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let child = Command::new(FOGCONNECT)
            .args(["connect", "--json", "--signal", &url, "--stun", &stun])
            .args(["--interfaces", "none", "--timeout", "10", &alias])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fogconnect connect starts");
        let output = child.wait_with_output().expect("connect ends");
        wall.push(started.elapsed().as_secs_f64() * 1000.0);
        let found = times(&output.stdout[..], &wanted);
        if !output.status.success() || found.iter().any(Option::is_none) {
            failed += 1;
            continue;
        }
        for (i, t) in found.into_iter().enumerate() {
            samples[i].extend(t);
        }
    }
    drop(serve);
    let _ = services.stop();

    println!("cold start on loopback: {runs} runs of `fogconnect connect`, {failed} failed");
    println!("| from process start to | median ms | p95 ms |");
    println!("|---|---|---|");
    for (name, mut values) in wanted.iter().zip(samples) {
        if values.is_empty() {
            println!("| {name} | – | – |");
            continue;
        }
        values.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} | {:.1} |",
            quantile(&values, 0.5),
            quantile(&values, 0.95)
        );
    }
    wall.sort_by(f64::total_cmp);
    println!(
        "| process exit, as the bench saw it (spawn included) | {:.1} | {:.1} |",
        quantile(&wall, 0.5),
        quantile(&wall, 0.95)
    );
}
