//! Soak (issue 16, part 7): fogd and a serving node under churning load, on loopback, for a
//! bounded time at a bounded rate; their resources sampled every second must be flat once warm.
//!
//! ```text
//! cargo bench -p fogd --bench soak                           # 600 s of churn, 4 cycles a second
//! cargo bench -p fogd --bench soak -- --seconds 120 --rate 2 --warmup 30 --json
//! ```
//!
//! - fogd runs in a process of its own with STUN (127.0.0.1 and 127.0.0.2), signaling and TURN
//!   (allocations live at most 60 s, the least fogd takes: `--turn-max-lifetime 60`, so the
//!   crashed clients' ones expire during the run).
//! - The server is a fog-runtime node in a process of its own (this bench re-executed with
//!   `--role server`), with a TURN allocation of its own: it accepts every offer, echoes every
//!   datagram, and prints its `Footprint` (connections, deadlines, sockets, relay permissions,
//!   requests, queues) once a second.
//! - The churn: `--rate` cycles a second, at most 16 alive at once, rotating over four kinds:
//!   a client that registers, connects (Datagram, KCP, QUIC and uTP in turn), echoes three
//!   datagrams, closes and shuts down; a client that only registers and leaves; the same
//!   connect as the first; and every fourth a client in a process of its own that connects,
//!   echoes, and is then killed with SIGKILL (no close, no TURN delete, no WebSocket close),
//!   which the server and fogd must clean up after by their own timeouts. Every client has a
//!   TURN allocation, so allocations come and go all the time.
//! - Every second: VmRSS, open file descriptors and threads of fogd and of the server, and the
//!   server's last footprint.
//!
//! After the churn it waits `--drain` seconds (default 100: the 60 s TURN lifetime, the 30 s
//! consent timeout, the 45 s idle timeout, with room) and takes the last sample. The verdict:
//!
//! - **flat**: each series' maximum over the second half of the churn after `--warmup` is at
//!   most its maximum over the first half plus a tolerance (RSS: 1 MiB or 5 %; descriptors:
//!   5 % plus 4, since fogd holds one per client alive; threads: 4; footprint counts: a
//!   quarter, plus 4, since the churn's concurrency varies);
//! - **released**: after the drain the server holds no connection, relay permission, request
//!   or queued item, its deadlines and sockets are back to its idle count before the churn,
//!   and both processes' descriptors are back to their idle count (± 2).
//!
//! It prints a table of every tenth sample and the verdict (or `--json`: every sample, the
//! cycles' outcomes and the verdict), and exits 1 when the verdict is not "flat, released".
//! fogd's own tables are not visible from outside; its RSS, descriptors and threads are.

// A load generator reads the clock to pace and measure itself.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{AcceptPolicy, Event, Footprint, KeyPair, NodeConfig, PeerId, Transport};

use support::signal::free_tcp_port;
use support::{ChildGuard, Fogd, load_average, raise_fd_limit_or_reexec, status_kib, wait_until};

/// The server's service number.
const SERVICE: u16 = 9;
/// The server's key seed: clients derive its peer ID from it.
const SERVER_SEED: [u8; 32] = [0x50; 32];
/// Cycles alive at once, at most.
const MAX_ALIVE: usize = 16;
/// Datagrams each connecting client sends and waits to see echoed.
const ECHOES: usize = 3;
/// How long one cycle may take before it counts as timed out.
const CYCLE_LIMIT: Duration = Duration::from_secs(20);
/// The TURN secret fogd and the nodes share (loopback only).
const TURN_SECRET: &str = "soak-secret";
const TRANSPORTS: [Transport; 4] = [
    Transport::Datagram,
    Transport::Kcp,
    Transport::Quic,
    Transport::Utp,
];

struct Options {
    seconds: u64,
    rate: f64,
    warmup: u64,
    drain: u64,
    json: bool,
}

/// Where a node finds fogd: signaling URL, STUN and TURN addresses.
#[derive(Clone)]
struct Servers {
    signal: String,
    stun: SocketAddr,
    turn: SocketAddr,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<String> {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        })
    };
    if let Some(role) = value("--role") {
        let servers = Servers {
            signal: value("--signal").expect("a role needs --signal"),
            stun: value("--stun")
                .expect("--stun")
                .parse()
                .expect("--stun IP:PORT"),
            turn: value("--turn")
                .expect("--turn")
                .parse()
                .expect("--turn IP:PORT"),
        };
        match role.as_str() {
            "server" => run_server(&servers),
            "crasher" => {
                let seed: u8 = value("--seed").expect("--seed").parse().expect("--seed N");
                run_crasher(&servers, seed);
            }
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let number = |name: &str, default: f64| -> f64 {
        value(name).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{name} N"))
        })
    };
    let options = Options {
        seconds: number("--seconds", 600.0) as u64,
        rate: number("--rate", 4.0),
        warmup: number("--warmup", 60.0) as u64,
        drain: number("--drain", 100.0) as u64,
        json: args.iter().any(|a| a == "--json"),
    };
    assert!(options.rate > 0.0, "--rate must be above 0");
    assert!(
        options.warmup * 2 < options.seconds,
        "--warmup must leave room for two halves of --seconds"
    );
    raise_fd_limit_or_reexec();
    soak(&options);
}

fn soak(options: &Options) {
    let signal = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let turn = free_udp_addr();
    let (signal_arg, turn_arg) = (signal.to_string(), turn.to_string());
    let fogd = Fogd::start(&[
        "--signal",
        &signal_arg,
        "--stun-no-rate-limit",
        "--turn",
        &turn_arg,
        "--turn-secret",
        TURN_SECRET,
        "--turn-max-lifetime",
        "60",
    ]);
    let servers = Servers {
        signal: format!("ws://{signal}/ws"),
        stun: fogd.primary,
        turn,
    };
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut server = ChildGuard::spawn(
        "server",
        Command::new(&exe)
            .args(role_args("server", &servers))
            .env("RUST_LOG", "warn"),
    )
    .expect("starting the server");
    wait_until(&mut server, "server ready");
    let server_id = KeyPair::from_seed(&SERVER_SEED).peer_id();
    let (fogd_pid, server_pid) = (fogd.child.id(), server.id());
    if !options.json {
        println!(
            "soak: {} s of churn at {}/s after which {} s to drain; fogd pid {fogd_pid}, server \
             pid {server_pid}",
            options.seconds, options.rate, options.drain
        );
    }

    // Idle counts before the churn: a few seconds after the server said it was ready.
    thread::sleep(Duration::from_secs(3));
    let idle = sample(0, fogd_pid, &server);

    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let alive = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    let churn_until = begun + Duration::from_secs(options.seconds);
    let end = churn_until + Duration::from_secs(options.drain);
    let period = Duration::from_secs_f64(1.0 / options.rate);
    let mut samples = vec![idle.clone()];
    let mut next_sample = begun + Duration::from_secs(1);
    let mut next_cycle = begun;
    let mut cycle = 0u64;
    let mut workers = Vec::new();
    let mut crashers: Vec<(Instant, ChildGuard)> = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            let t = now.duration_since(begun).as_secs();
            samples.push(sample(t, fogd_pid, &server));
            next_sample += Duration::from_secs(1);
            if !options.json && t % 10 == 0 {
                println!("{}", samples.last().expect("just pushed").line());
            }
        }
        if now < churn_until && now >= next_cycle {
            next_cycle += period;
            if alive.load(Ordering::SeqCst) >= MAX_ALIVE {
                count(&outcomes, "skipped: 16 cycles alive");
            } else {
                cycle += 1;
                let transport = TRANSPORTS[(cycle / 4 % 4) as usize].clone();
                if cycle % 4 == 0 {
                    let seed = (cycle % 251) as u8;
                    match ChildGuard::spawn(
                        "crasher",
                        Command::new(&exe)
                            .args(role_args("crasher", &servers))
                            .args(["--seed", &seed.to_string()])
                            .env("RUST_LOG", "error"),
                    ) {
                        Ok(child) => crashers.push((now, child)),
                        Err(e) => count(&outcomes, &format!("crasher did not start: {e}")),
                    }
                } else {
                    let life = if cycle % 4 == 2 {
                        Life::Leave
                    } else {
                        Life::Connect
                    };
                    let (servers, outcomes, alive) =
                        (servers.clone(), outcomes.clone(), alive.clone());
                    alive.fetch_add(1, Ordering::SeqCst);
                    workers.push(thread::spawn(move || {
                        let outcome = run_client(&servers, server_id, life, transport, cycle);
                        count(&outcomes, &outcome);
                        alive.fetch_sub(1, Ordering::SeqCst);
                    }));
                }
            }
        }
        // A crasher that has echoed (or run out of time) is killed without warning.
        crashers.retain_mut(|(since, child)| {
            let echoed = child.stdout_text().contains("echoed");
            if echoed || since.elapsed() > CYCLE_LIMIT || child.try_wait().is_some() {
                count(
                    &outcomes,
                    if echoed {
                        "crashed after its echoes (SIGKILL)"
                    } else {
                        "crasher: no echo in time"
                    },
                );
                kill9(child);
                return false;
            }
            true
        });
        workers.retain(|w| !w.is_finished());
        thread::sleep(Duration::from_millis(5));
    }
    for w in workers {
        let _ = w.join();
    }
    let last = sample(end.duration_since(begun).as_secs(), fogd_pid, &server);
    samples.push(last.clone());
    let outcomes = outcomes.lock().expect("outcomes").clone();
    let extra = EXTRA.lock().expect("extra").clone();
    let verdict = verdict(options, &idle, &samples, &last);
    report(options, &samples, &outcomes, &extra, &verdict);
    drop(server);
    drop(fogd);
    if !verdict.is_empty() {
        std::process::exit(1);
    }
}

/// A free UDP port on 127.0.0.1 (free when asked; fogd binds it right after).
fn free_udp_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
    socket.local_addr().expect("its address")
}

fn role_args(role: &str, servers: &Servers) -> Vec<String> {
    vec![
        "--role".into(),
        role.into(),
        "--signal".into(),
        servers.signal.clone(),
        "--stun".into(),
        servers.stun.to_string(),
        "--turn".into(),
        servers.turn.to_string(),
    ]
}

fn node_config(key: KeyPair, servers: &Servers, seed: u64) -> RuntimeConfig {
    let mut node = NodeConfig::new(
        key,
        "127.0.0.1",
        servers.stun,
        "127.0.0.1:0".parse().expect("an address"),
        seed,
    );
    node.turn = Some(servers.turn);
    node.accept = AcceptPolicy::All;
    RuntimeConfig::new(node, servers.signal.parse().expect("a ws:// URL"))
}

/// The server: accepts everything, echoes every datagram, prints its footprint every second.
fn run_server(servers: &Servers) {
    let config = node_config(KeyPair::from_seed(&SERVER_SEED), servers, 1);
    let runtime = Runtime::start(config).expect("starting the server's node");
    let handle = runtime.handle();
    let (mut ready, mut up, mut said) = (false, false, false);
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            if let Ok((f, _)) = handle.footprint() {
                println!("footprint {}", footprint_fields(&f));
            }
        }
        let event = match runtime
            .events()
            .recv_timeout(next.saturating_duration_since(Instant::now()))
        {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match event {
            Event::Ready { .. } => ready = true,
            Event::SignalingUp => up = true,
            Event::Data { id, data, .. } => {
                let _ = handle.send(id, &data);
            }
            _ => {}
        }
        if ready && up && !said {
            println!("server ready");
            said = true;
        }
    }
}

/// A client in a process of its own: connects, echoes, prints `echoed`, and waits to be killed.
fn run_crasher(servers: &Servers, seed: u8) {
    let outcome = run_client(
        servers,
        KeyPair::from_seed(&SERVER_SEED).peer_id(),
        Life::Crash,
        Transport::Datagram,
        u64::from(seed) + 1_000_000,
    );
    // Only a client that did not get its echoes comes back here.
    println!("{outcome}");
    thread::sleep(Duration::from_secs(600));
}

/// What a client does once registered.
#[derive(Clone, Copy, PartialEq)]
enum Life {
    /// Leaves at once.
    Leave,
    /// Connects, echoes, closes and shuts down.
    Connect,
    /// Connects, echoes, prints `echoed` and waits to be killed.
    Crash,
}

/// One client's life; what became of it, in a few words ("ok" when everything happened).
fn run_client(
    servers: &Servers,
    server: PeerId,
    life: Life,
    transport: Transport,
    cycle: u64,
) -> String {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&cycle.to_le_bytes());
    seed[31] = 0xC1;
    let config = node_config(KeyPair::from_seed(&seed), servers, cycle);
    let runtime = match Runtime::start(config) {
        Ok(r) => r,
        Err(e) => return format!("start: {e}"),
    };
    let handle = runtime.handle();
    let deadline = Instant::now() + CYCLE_LIMIT;
    let outcome = (|| {
        let (mut ready, mut up) = (false, false);
        while !(ready && up) {
            match runtime
                .events()
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Ready { .. }) => ready = true,
                Ok(Event::SignalingUp) => up = true,
                Ok(_) => {}
                Err(_) => return "no ready or no signaling in time".to_owned(),
            }
        }
        if life == Life::Leave {
            return "registered and left".to_owned();
        }
        let id = match handle.connect_with(server, SERVICE, transport.clone()) {
            Ok(id) => id,
            Err(e) => return format!("connect: {e}"),
        };
        // Datagrams are datagrams: the unreliable transport's are sent again every half
        // second until echoed (and counted); the reliable ones are sent once. KCP and QUIC
        // keep each send whole; uTP is a byte stream.
        let payload = |k: usize| format!("soak {cycle} {k}").into_bytes();
        let (mut connected, mut echoed, mut resent) = (false, vec![false; ECHOES], 0usize);
        let mut stream = Vec::new();
        let mut next_resend = Instant::now();
        loop {
            let now = Instant::now();
            if connected && transport == Transport::Datagram && now >= next_resend {
                next_resend = now + Duration::from_millis(500);
                for k in (0..ECHOES).filter(|k| !echoed[*k]) {
                    let _ = handle.send(id, &payload(k));
                    resent += 1;
                }
            }
            let wait = if connected && transport == Transport::Datagram {
                next_resend.min(deadline)
            } else {
                deadline
            };
            match runtime
                .events()
                .recv_timeout(wait.saturating_duration_since(now))
            {
                Ok(Event::Connected { id: c, .. }) if c == id => {
                    connected = true;
                    for k in 0..ECHOES {
                        if let Err(e) = handle.send(id, &payload(k)) {
                            return format!("send: {e}");
                        }
                    }
                    next_resend = Instant::now() + Duration::from_millis(500);
                }
                Ok(Event::Data { id: c, data, .. }) if c == id => {
                    if transport == Transport::Utp {
                        // A byte stream: the echoes come back as one run of bytes, cut
                        // anywhere; each payload counts once the run holds it in order.
                        stream.extend_from_slice(&data);
                        let mut at = 0;
                        for (k, e) in echoed.iter_mut().enumerate() {
                            let p = payload(k);
                            if stream.get(at..at + p.len()) == Some(&p[..]) {
                                *e = true;
                                at += p.len();
                            }
                        }
                    } else if let Some(k) = (0..ECHOES).find(|k| payload(*k) == data) {
                        echoed[k] = true;
                    }
                    if echoed.iter().all(|e| *e) {
                        if resent > 0 {
                            count_global(&format!("datagrams sent again ({transport:?})"), resent);
                        }
                        if life == Life::Crash {
                            println!("echoed");
                            thread::sleep(Duration::from_secs(600));
                        }
                        let _ = handle.close(id, 0, "done");
                        return "ok".to_owned();
                    }
                }
                Ok(Event::Failed { id: c, reason }) if c == id => {
                    return format!("{transport:?} failed: {reason:?}");
                }
                Ok(Event::Closed { id: c, reason, .. }) if c == id => {
                    return format!("{transport:?} closed early: {reason:?}");
                }
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => {}
                Err(_) => {
                    let n = echoed.iter().filter(|e| **e).count();
                    return format!("{transport:?}: {n} of {ECHOES} echoes in time");
                }
            }
        }
    })();
    if let Err(e) = runtime.shutdown() {
        return format!("{outcome}; shutdown: {e}");
    }
    outcome
}

/// Tallies that are not one per cycle (datagrams sent again), merged into the report.
static EXTRA: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn count_global(what: &str, n: usize) {
    *EXTRA
        .lock()
        .expect("extra")
        .entry(what.to_owned())
        .or_default() += n;
}

fn count(outcomes: &Mutex<BTreeMap<String, usize>>, what: &str) {
    *outcomes
        .lock()
        .expect("outcomes")
        .entry(what.to_owned())
        .or_default() += 1;
}

/// SIGKILL through the shell (the workspace forbids the `unsafe` of `libc::kill`).
fn kill9(child: &mut ChildGuard) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -KILL {}", child.id())])
        .status();
    let _ = child.wait_timeout(Duration::from_secs(5));
}

/// One second's readings.
#[derive(Clone, Debug)]
struct Sample {
    t: u64,
    /// (name, value) in a fixed order: fogd's, then the server's, then its footprint.
    values: Vec<(&'static str, u64)>,
}

impl Sample {
    fn get(&self, name: &str) -> u64 {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn line(&self) -> String {
        let mut s = format!("t={:>4}s", self.t);
        for (name, value) in &self.values {
            s.push_str(&format!(" {name}={value}"));
        }
        s
    }

    fn json(&self) -> String {
        let fields: Vec<String> = self
            .values
            .iter()
            .map(|(n, v)| format!("\"{n}\":{v}"))
            .collect();
        format!("{{\"t\":{},{}}}", self.t, fields.join(","))
    }
}

/// Series, tolerance kind: RSS in KiB, small counts (descriptors, threads) or footprint counts.
const SERIES: [(&str, Tolerance); 13] = [
    ("fogd_rss_kib", Tolerance::Rss),
    ("fogd_fds", Tolerance::Fds),
    ("fogd_threads", Tolerance::Small),
    ("server_rss_kib", Tolerance::Rss),
    ("server_fds", Tolerance::Fds),
    ("server_threads", Tolerance::Small),
    ("connections", Tolerance::Count),
    ("deadlines", Tolerance::Count),
    ("sockets", Tolerance::Count),
    ("relay_permissions", Tolerance::Count),
    ("requests", Tolerance::Count),
    ("queued", Tolerance::Count),
    ("signal_frames", Tolerance::Count),
];

#[derive(Clone, Copy)]
enum Tolerance {
    Rss,
    /// Descriptors: fogd holds one per client alive, so their peak follows the churn's.
    Fds,
    Small,
    Count,
}

impl Tolerance {
    fn allows(self, before: u64, after: u64) -> bool {
        let slack = match self {
            Tolerance::Rss => (before / 20).max(1024),
            Tolerance::Fds => before / 20 + 4,
            Tolerance::Small => 4,
            Tolerance::Count => before / 4 + 4,
        };
        after <= before + slack
    }
}

fn footprint_fields(f: &Footprint) -> String {
    format!(
        "connections={} deadlines={} sockets={} relay_permissions={} requests={} queued={} \
         signal_frames={}",
        f.connections,
        f.deadlines,
        f.sockets,
        f.relay_permissions,
        f.requests,
        f.queued,
        f.signal_frames
    )
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn sample(t: u64, fogd: u32, server: &ChildGuard) -> Sample {
    let pid = server.id();
    let mut values = vec![
        ("fogd_rss_kib", status_kib(fogd, "VmRSS").unwrap_or(0)),
        ("fogd_fds", fds(fogd)),
        ("fogd_threads", status_kib(fogd, "Threads").unwrap_or(0)),
        ("server_rss_kib", status_kib(pid, "VmRSS").unwrap_or(0)),
        ("server_fds", fds(pid)),
        ("server_threads", status_kib(pid, "Threads").unwrap_or(0)),
    ];
    // The server's last footprint line.
    let text = server.stdout_text();
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("footprint "))
        .unwrap_or("");
    for (name, _) in &SERIES[6..] {
        let value = last
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        values.push((name, value));
    }
    Sample { t, values }
}

/// What is not flat or not released; empty when all is well.
fn verdict(options: &Options, idle: &Sample, samples: &[Sample], last: &Sample) -> Vec<String> {
    let mut problems = Vec::new();
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t > options.warmup && s.t <= options.seconds)
        .collect();
    let (first, second) = warm.split_at(warm.len() / 2);
    for (name, tolerance) in SERIES {
        let max = |half: &[&Sample]| half.iter().map(|s| s.get(name)).max().unwrap_or(0);
        let (before, after) = (max(first), max(second));
        if !tolerance.allows(before, after) {
            problems.push(format!(
                "{name} grew: at most {before} in the first half after warm-up, {after} in the \
                 second"
            ));
        }
    }
    for name in [
        "connections",
        "relay_permissions",
        "requests",
        "queued",
        "signal_frames",
    ] {
        if last.get(name) != 0 {
            problems.push(format!("{name} is {} after the drain", last.get(name)));
        }
    }
    for name in ["deadlines", "sockets"] {
        if last.get(name) > idle.get(name) {
            problems.push(format!(
                "{name}: {} after the drain, {} idle before the churn",
                last.get(name),
                idle.get(name)
            ));
        }
    }
    for name in ["fogd_fds", "server_fds"] {
        if last.get(name) > idle.get(name) + 2 {
            problems.push(format!(
                "{name}: {} after the drain, {} idle before the churn",
                last.get(name),
                idle.get(name)
            ));
        }
    }
    problems
}

fn report(
    options: &Options,
    samples: &[Sample],
    outcomes: &BTreeMap<String, usize>,
    extra: &BTreeMap<String, usize>,
    verdict: &[String],
) {
    let cycles: usize = outcomes.values().sum();
    let tally = |map: &BTreeMap<String, usize>| -> Vec<String> {
        map.iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect()
    };
    if options.json {
        let (outcomes, extra) = (tally(outcomes), tally(extra));
        let series: Vec<String> = samples.iter().map(Sample::json).collect();
        let problems: Vec<String> = verdict
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\\\"")))
            .collect();
        println!(
            "{{\"seconds\":{},\"rate\":{},\"warmup\":{},\"drain\":{},\"cycles\":{cycles},\
             \"outcomes\":{{{}}},\"extra\":{{{}}},\"verdict\":\"{}\",\"problems\":[{}],\"load\":\"{}\",\
             \"samples\":[{}]}}",
            options.seconds,
            options.rate,
            options.warmup,
            options.drain,
            outcomes.join(","),
            extra.join(","),
            if verdict.is_empty() {
                "flat, released"
            } else {
                "not flat or not released"
            },
            problems.join(","),
            load_average(),
            series.join(",")
        );
        return;
    }
    println!("{}", samples.last().expect("a last sample").line());
    println!("\ncycles: {cycles}");
    for (what, n) in outcomes {
        println!("  {n:>6}  {what}");
    }
    for (what, n) in extra {
        println!("  {what}: {n}");
    }
    println!("load average: {}", load_average());
    if verdict.is_empty() {
        println!("verdict: flat, released");
    } else {
        println!("verdict: NOT flat or NOT released");
        for p in verdict {
            println!("  - {p}");
        }
    }
}
