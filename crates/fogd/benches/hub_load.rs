//! A hub that takes a crowd: `peers` client nodes (default 1,000) connect to one serving node at
//! once, through one fogd, on loopback.
//!
//! ```text
//! cargo bench -p fogd --bench hub_load
//! cargo bench -p fogd --bench hub_load -- --peers 1000 --json
//! cargo bench -p fogd --bench hub_load -- --peers 1000 --frames-per-second 20
//! ```
//!
//! - fogd runs in a process of its own: STUN on 127.0.0.1 with its alternate on 127.0.0.2 (RFC
//!   5780 discovery), its per-source STUN rate limit off (every node here has the same source
//!   IP), and WebSocket signaling with its default limits (`--frames-per-second N` changes
//!   the frame rate one connection may send).
//! - The hub is a fog-runtime node in a process of its own (this bench, re-executed with
//!   `--hub`): it accepts every offer and echoes every datagram, as `fogconnect serve` does.
//! - Each client is a fog-runtime `Runtime` of its own in this process (its own UDP socket,
//!   WebSocket, threads and keys), all started together. Each calls `connect(hub)` as soon as
//!   it has started, sends one datagram once connected, and waits for the echo.
//!
//! Nothing here retries on the clients' behalf: a refusal for a limit (the server's unanswered
//! offers per peer, the hub's undecided offers) is retried by the node itself, with back-off,
//! and only a connection whose retries ran out reports `Failed`.
//!
//! It prints the figures, or with `--json` one JSON object: `peers`, `connected` (a path),
//! `echoed`, `failed` (with the reasons counted in `failures`), `p50_ms` and `p99_ms` (from
//! `connect` to `Connected`, which includes each client's NAT discovery, since the clients
//! start cold), `last_ms` (the last `Connected`), `hub_rss_kib` (the hub's VmRSS with every
//! connection up), `fogd_rss_kib`, and the load average.
//!
//! What makes a crowd work at fogd's default limits: the node paces its frames under the rate
//! fogd's `welcome` names (20 a second by default), the pending-offer limit's refusals are
//! retried by the callers, and the answers to offers waiting for the hub do not count against
//! its rate (without that exemption a hub answers about 18 callers a second, and a thousand
//! arriving at once need about a minute, beyond the 30 s connect timeout).
//!
//! Each client holds about eight file descriptors, so the bench raises its soft
//! `RLIMIT_NOFILE` to the hard limit (re-executing itself under `sh -c 'ulimit -n'`); its
//! children inherit it. It sends only to 127.0.0.1 and 127.0.0.2, and stops by itself
//! (`--timeout`, default 120 s).

// A load generator reads the clock to measure itself, and seeds keys by index.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{AcceptPolicy, ConnectionId, Event, FailReason, KeyPair, NodeConfig, PeerId};

use support::signal::free_tcp_port;
use support::{
    Fogd, fd_limit, load_average, percentile, raise_fd_limit_or_reexec, rss_kib, wait_until,
};

/// The hub's service number.
const SERVICE: u16 = 1;
/// A connected client that has no echo yet sends its datagram again this often.
const RESEND: Duration = Duration::from_secs(1);
/// Client runtimes started in parallel.
const STARTERS: usize = 8;
/// File descriptors a client holds: its UDP socket, its TCP connection, two polls and their
/// wakers, with room to spare.
const FDS_PER_CLIENT: usize = 8;

struct Options {
    peers: usize,
    json: bool,
    timeout: Duration,
    /// fogd's `--frames-per-second`, when given.
    frames_per_second: Option<u32>,
    /// Run as the hub, with the signaling URL and the STUN server.
    hub: Option<(String, SocketAddr)>,
}

impl Options {
    fn parse() -> Self {
        let mut options = Options {
            peers: 1_000,
            json: false,
            timeout: Duration::from_secs(120),
            frames_per_second: None,
            hub: None,
        };
        let (mut signal, mut stun) = (None, None);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> String {
                args.next()
                    .unwrap_or_else(|| panic!("{name} takes a value"))
            };
            let number = |name: &str, v: String| -> u64 {
                v.parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| panic!("{name} takes a positive number"))
            };
            match arg.as_str() {
                "--peers" => options.peers = number("--peers", value("--peers")) as usize,
                "--timeout" => {
                    options.timeout = Duration::from_secs(number("--timeout", value("--timeout")));
                }
                "--frames-per-second" => {
                    let v = number("--frames-per-second", value("--frames-per-second"));
                    options.frames_per_second = Some(u32::try_from(v).unwrap_or(u32::MAX));
                }
                "--json" => options.json = true,
                "--hub" => {}
                "--signal" => signal = Some(value("--signal")),
                "--stun" => stun = Some(value("--stun").parse().expect("--stun IP:PORT")),
                "--bench" => {}
                other => panic!(
                    "unknown argument {other}; known: --peers N --json --timeout SECS \
                     --frames-per-second N"
                ),
            }
        }
        if std::env::args().any(|a| a == "--hub") {
            options.hub = Some((
                signal.expect("--hub needs --signal"),
                stun.expect("--hub needs --stun"),
            ));
        }
        options
    }
}

fn main() {
    raise_fd_limit_or_reexec();
    let options = Options::parse();
    if let Some((signal, stun)) = &options.hub {
        run_hub(signal, *stun);
        return;
    }
    let need = options.peers * FDS_PER_CLIENT + 256;
    let soft = fd_limit();
    if soft < need as u64 {
        eprintln!(
            "hub_load: {need} file descriptors needed, the limit is {soft}; try --peers {}",
            soft.saturating_sub(256) as usize / FDS_PER_CLIENT
        );
        std::process::exit(1);
    }
    let signal = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let signal_arg = signal.to_string();
    let fps = options.frames_per_second.map(|f| f.to_string());
    let mut fogd_args = vec!["--signal", &signal_arg, "--stun-no-rate-limit"];
    if let Some(fps) = &fps {
        fogd_args.extend(["--frames-per-second", fps]);
    }
    let fogd = Fogd::start(&fogd_args);
    let url = format!("ws://{signal}/ws");
    let stun = fogd.primary;
    let mut fogd = fogd;
    wait_until(&mut fogd.child, "signal listening");

    let hub_key = KeyPair::from_seed(&[0xAB; 32]);
    let hub_id = hub_key.peer_id();
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut hub = support::ChildGuard::spawn(
        "hub",
        Command::new(&exe).args(["--hub", "--signal", &url, "--stun", &stun.to_string()]),
    )
    .expect("starting the hub");
    wait_until(&mut hub, "hub ready");
    let hub_pid = hub.id();

    if !options.json {
        println!(
            "hub_load: {} clients, fogd {} (frames/s {:?}), hub pid {hub_pid} ({hub_id})",
            options.peers, signal, options.frames_per_second
        );
    }
    let (tx, rx) = mpsc::channel::<(usize, Instant, Event)>();
    let begun = Instant::now();
    let clients = start_clients(options.peers, &url, stun, hub_id, &tx);
    drop(tx);
    let started = clients.iter().filter(|c| c.is_some()).count();

    let mut outcome: Vec<Outcome> = (0..options.peers).map(|_| Outcome::default()).collect();
    for (i, client) in clients.iter().enumerate() {
        match client {
            Some((_, _, Err(e))) => outcome[i].failed = Some(format!("connect: {e}")),
            None => outcome[i].failed = Some("start".into()),
            _ => {}
        }
    }
    let deadline = begun + options.timeout;
    let done = |outcome: &[Outcome]| {
        outcome
            .iter()
            .all(|o| o.echoed.is_some() || o.failed.is_some())
    };
    let mut next_resend = Instant::now() + RESEND;
    let mut resent = 0usize;
    while !done(&outcome) && Instant::now() < deadline {
        // A datagram is a datagram: the first may be lost in the crowd (the sockets' receive
        // buffers overflow while a thousand nodes punch at once). Sent again every second
        // until echoed, and counted.
        if Instant::now() >= next_resend {
            next_resend = Instant::now() + RESEND;
            for (i, o) in outcome.iter().enumerate() {
                if let (Some(_), None, Some((runtime, _, Ok(id)))) =
                    (o.connected, o.echoed, &clients[i])
                {
                    let _ = runtime.handle().send(*id, b"hello, hub");
                    resent += 1;
                }
            }
        }
        let left = deadline
            .min(next_resend)
            .saturating_duration_since(Instant::now());
        let (i, at, event) = match rx.recv_timeout(left) {
            Ok(x) => x,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let Some((runtime, since, Ok(id))) = &clients[i] else {
            continue;
        };
        match event {
            Event::Connected { id: c, via, .. } if c == *id => {
                outcome[i].connected = Some(at.saturating_duration_since(*since));
                outcome[i].via = Some(format!("{via:?}").to_lowercase());
                let _ = runtime.handle().send(*id, b"hello, hub");
            }
            Event::Data { id: c, .. } if c == *id && outcome[i].echoed.is_none() => {
                outcome[i].echoed = Some(at.saturating_duration_since(*since));
            }
            Event::Failed { id: c, reason } if c == *id => {
                outcome[i].failed = Some(failure(&reason));
            }
            _ => {}
        }
    }
    let elapsed = begun.elapsed();
    let hub_rss = rss_kib(hub_pid);
    let fogd_rss = rss_kib(fogd.child.id());

    let mut times: Vec<Duration> = outcome.iter().filter_map(|o| o.connected).collect();
    let connected = times.len();
    let echoed = outcome.iter().filter(|o| o.echoed.is_some()).count();
    let p50 = percentile(&mut times, 0.50);
    let p99 = percentile(&mut times, 0.99);
    let last = times.iter().max().copied();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcome {
        if let Some(f) = &o.failed {
            *failures.entry(f.clone()).or_default() += 1;
        } else if o.connected.is_none() {
            *failures
                .entry("no outcome before the bench's timeout".into())
                .or_default() += 1;
        }
    }
    let failed = outcome.iter().filter(|o| o.connected.is_none()).count();
    let mut vias: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &outcome {
        if let Some(via) = &o.via {
            *vias.entry(via).or_default() += 1;
        }
    }
    let paths = vias
        .iter()
        .map(|(via, n)| format!("{}:{n}", json_string(via)))
        .collect::<Vec<_>>()
        .join(",");
    let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    let kib = |k: Option<u64>| k.map_or(-1, |k| k as i64);
    if options.json {
        let failures = failures
            .iter()
            .map(|(reason, n)| format!("{}:{n}", json_string(reason)))
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{{\"peers\":{},\"started\":{started},\"connected\":{connected},\"echoed\":{echoed},\
             \"failed\":{failed},\"resent\":{resent},\"failures\":{{{failures}}},\"paths\":{{{paths}}},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\
             \"last_ms\":{:.1},\"hub_rss_kib\":{},\"fogd_rss_kib\":{},\"frames_per_second\":{},\
             \"load_average\":{}}}",
            options.peers,
            ms(p50),
            ms(p99),
            ms(last),
            kib(hub_rss),
            kib(fogd_rss),
            options
                .frames_per_second
                .map_or("\"fogd's default\"".to_owned(), |f| f.to_string()),
            json_string(&load_average()),
        );
    } else {
        println!(
            "hub_load: {connected} of {} connected ({echoed} echoed, {resent} datagrams sent again, \
             {failed} failed) in {:.1} s",
            options.peers,
            elapsed.as_secs_f64()
        );
        println!(
            "  connect → connected: p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
            ms(p50),
            ms(p99),
            ms(last)
        );
        println!("  first paths: {vias:?}");
        println!(
            "  hub RSS {} KiB, fogd RSS {} KiB, load average {}",
            kib(hub_rss),
            kib(fogd_rss),
            load_average()
        );
        for (reason, n) in &failures {
            println!("  failed: {n} × {reason}");
        }
    }
    // Stop the children first; the clients' threads end with the process.
    drop(hub);
    drop(fogd);
    std::process::exit(0);
}

#[derive(Default)]
struct Outcome {
    connected: Option<Duration>,
    /// The first path's kind.
    via: Option<String>,
    echoed: Option<Duration>,
    failed: Option<String>,
}

type Client = (
    Runtime,
    Instant,
    Result<ConnectionId, fog_runtime::RuntimeError>,
);

/// Starts `peers` client runtimes, [`STARTERS`] at a time, each connecting to the hub at once;
/// their events go to `tx` with their index.
fn start_clients(
    peers: usize,
    url: &str,
    stun: SocketAddr,
    hub: PeerId,
    tx: &Sender<(usize, Instant, Event)>,
) -> Vec<Option<Client>> {
    let mut slots: Vec<Option<Client>> = (0..peers).map(|_| None).collect();
    std::thread::scope(|scope| {
        let chunks: Vec<_> = slots
            .chunks_mut(peers.div_ceil(STARTERS))
            .enumerate()
            .map(|(k, chunk)| {
                let tx = tx.clone();
                let first = k * peers.div_ceil(STARTERS);
                scope.spawn(move || {
                    for (j, slot) in chunk.iter_mut().enumerate() {
                        let i = first + j;
                        let mut seed = [0u8; 32];
                        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                        let key = KeyPair::from_seed(&seed);
                        let node = NodeConfig::new(
                            key,
                            "127.0.0.1",
                            stun,
                            "127.0.0.1:0".parse().unwrap(),
                            i as u64,
                        );
                        let config = RuntimeConfig::new(node, url.parse().unwrap());
                        let tx = tx.clone();
                        let runtime = Runtime::start_with_callback(config, move |e| {
                            let _ = tx.send((i, Instant::now(), e));
                        });
                        match runtime {
                            Ok(runtime) => {
                                let since = Instant::now();
                                let id = runtime.handle().connect(hub, SERVICE);
                                *slot = Some((runtime, since, id));
                            }
                            Err(e) => eprintln!("hub_load: client {i} did not start: {e}"),
                        }
                    }
                })
            })
            .collect();
        for c in chunks {
            let _ = c.join();
        }
    });
    slots
}

/// The hub: accepts every offer, echoes every datagram, runs until killed. Prints `hub ready`
/// once it is ready to be called.
fn run_hub(signal: &str, stun: SocketAddr) {
    let key = KeyPair::from_seed(&[0xAB; 32]);
    let mut node = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 0);
    node.accept = AcceptPolicy::All;
    let config = RuntimeConfig::new(node, signal.parse().expect("a ws:// URL"));
    let runtime = Runtime::start(config).expect("starting the hub's node");
    let handle = runtime.handle();
    let (mut ready, mut up) = (false, false);
    for event in runtime.events() {
        match event {
            Event::Ready { .. } => ready = true,
            Event::SignalingUp => up = true,
            Event::Data { id, data, .. } => {
                let _ = handle.send(id, &data);
            }
            _ => {}
        }
        if ready && up {
            println!("hub ready");
            ready = false;
            up = false;
        }
    }
}

fn failure(reason: &FailReason) -> String {
    format!("{reason:?}")
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
