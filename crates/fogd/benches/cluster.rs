//! fogd in a cluster on loopback: three instances on 127.0.0.2–4 and a Redis of the bench's
//! own (persistence off). Prints:
//!
//! - offer→answer latency p50/p99, offerer and answerer on the same instance and on two, at a
//!   fixed offered rate (one offer in flight; `--rate` offers per second, `--offers` of each);
//! - the time until a sender learns that a killed instance's peer is offline (SIGKILL: the
//!   instance's subscription ends at once), and a stalled one's (SIGSTOP: its lease runs out);
//! - p99 time for a killed instance's peers, reconnecting elsewhere, to be reachable again from
//!   a third instance;
//! - Redis memory per 10,000 registered peers (`used_memory` before and after `--peers` join).
//!
//! `cargo bench -p fogd --bench cluster [-- --rate 200 --offers 2000 --peers 10000]`
//! (needs `redis-server`; the figures are in benches/RESULTS.md).
//!
//! Where the time of an offer goes: with `FOGD_CLUSTER_TRACE=<file>` every fogd and the bench
//! append one line per hop (`<realtime ns> <pid> <hop> <frame hash>`: the bench's offer and
//! answer, each instance's hand-over to Redis, its subscription's receipt, its loop's
//! delivery); line them up by time, offer by offer. `FOGD_CLUSTER_NO_FAST_PATH=1` makes the
//! instances carry frames on their threads instead of their loops (the design before the fast
//! path), for a comparison in one build.

// A benchmark reads the wall clock.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fog_signal::client::Event;
use fog_signal::{KeyPair, PeerId};
use support::signal::{SignalPeer, description, recv};
use support::{ChildGuard, clock_ticks_per_s, cpu_ticks, find_tool, load_average, percentile};
use tungstenite::Message;

const REALM: &str = "cluster.bench";
const WAIT: Duration = Duration::from_secs(10);

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn seed(i: usize) -> [u8; 32] {
    let mut s = [0xb7; 32];
    s[..8].copy_from_slice(&(i as u64).to_be_bytes());
    s
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn redis_con(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(1))
        .expect("connecting to redis")
}

fn used_memory(port: u16) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis_con(port))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

fn start_fogd(n: u8, key: &Path, redis: u16) -> (ChildGuard, SocketAddr) {
    let addr = SocketAddr::new(ip(n), free_port(ip(n)));
    let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
    command
        .arg("--signal")
        .arg(addr.to_string())
        .arg("--key")
        .arg(key)
        .args(["--realm", REALM])
        .args(["--cluster", &format!("redis://127.0.0.1:{redis}")])
        .args(["--cluster-instance", &format!("fogd-{n}")])
        .args(["--frames-per-second", "10000", "--max-peers", "30000"])
        .args(["--max-connections", "30000"])
        .env("RUST_LOG", "warn");
    let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
    let deadline = Instant::now() + WAIT;
    // Ready once it accepts connections and has had a heartbeat (its lease).
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().is_none(),
            "{}",
            child.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let lease = format!("fog:lease:fogd-{n}");
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&lease)
            .query(&mut redis_con(redis))
            .unwrap();
        if exists {
            return (child, addr);
        }
        assert!(Instant::now() < deadline, "fogd-{n} took no lease");
        thread::sleep(Duration::from_millis(20));
    }
}

fn join(addr: SocketAddr, i: usize) -> SignalPeer {
    SignalPeer::join_seed(addr, None, REALM, seed(i), None)
}

/// Answers every offer that reaches `peer` until `stop`.
fn answerer(mut peer: SignalPeer, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match recv(&mut peer.ws, Duration::from_millis(50)) {
                Ok(Some(Message::Text(t))) => peer.client.handle_frame(Instant::now(), t.as_str()),
                Ok(_) => {}
                Err(_) => return,
            }
            while let Some(e) = peer.client.poll_event() {
                if let Event::Offer { session, .. } = e {
                    trace("bench.offer_in");
                    peer.client.answer(session, description(2)).unwrap();
                }
            }
            peer.send_queued();
        }
    })
}

fn online(from: &mut SignalPeer, target: PeerId) -> bool {
    let r = from.client.lookup(&target.to_string()).unwrap();
    match from.wait_for(
        WAIT,
        |e| matches!(e, Event::LookupResult { request, .. } if *request == r),
    ) {
        Event::LookupResult { online, .. } => online,
        _ => unreachable!(),
    }
}

fn until_offline(from: &mut SignalPeer, target: PeerId, since: Instant) -> Duration {
    while online(from, target) {
        assert!(since.elapsed() < Duration::from_secs(30), "still online");
        thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

/// One line of the hop trace (`FOGD_CLUSTER_TRACE`, the format of fogd's `hop_trace`): the
/// bench's own hops, so that the trace shows the whole path of each offer.
fn trace(hop: &str) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("FOGD_CLUSTER_TRACE") else {
        return;
    };
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{ns} {} {hop} 0\n", std::process::id()).as_bytes());
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate = arg("--rate", 200);
    let offers = arg("--offers", 2_000);
    let n_peers = arg("--peers", 10_000);
    let Some(redis_exe) = find_tool("redis-server") else {
        eprintln!("cluster bench: redis-server is not installed");
        std::process::exit(1);
    };
    support::raise_fd_limit_or_reexec();
    let redis_port = free_port(ip(1));
    let redis_child = ChildGuard::spawn(
        "redis-server",
        Command::new(&redis_exe).args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while redis::Client::open(format!("redis://127.0.0.1:{redis_port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_millis(200))
        .is_err()
    {
        assert!(Instant::now() < deadline, "{}", redis_child.output_text());
        thread::sleep(Duration::from_millis(20));
    }
    let key = fog_test_support::scratch_file("cluster-bench.key");
    let _ = std::fs::remove_file(&key);
    fog_signal::keyfile::save(&key, &KeyPair::from_seed(&[0xbe; 32])).unwrap();
    let (a_child, a) = start_fogd(2, &key, redis_port);
    let (b_child, b) = start_fogd(3, &key, redis_port);
    let (mut c_child, c) = start_fogd(4, &key, redis_port);

    // Offer→answer latency, same instance and across, interleaved, at a fixed offered rate.
    let stop = Arc::new(AtomicBool::new(false));
    let mut offerer = join(a, 0);
    let same = join(a, 1);
    let cross = join(b, 2);
    let (same_id, cross_id) = (same.client.peer_id(), cross.client.peer_id());
    let answerers = [answerer(same, stop.clone()), answerer(cross, stop.clone())];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut lat = [Vec::new(), Vec::new()];
    // CPU of the two fogd that carry the offers and of Redis, over the whole latency phase.
    let pids = [a_child.id(), b_child.id(), redis_child.id()];
    let cpu_before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).collect();
    let mut duplicates = 0usize;
    let mut answered = std::collections::BTreeSet::new();
    let mut next = Instant::now();
    for k in 0..2 * offers {
        let which = k % 2;
        let to = if which == 0 { same_id } else { cross_id };
        thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        let t0 = Instant::now();
        trace(["bench.offer.same", "bench.offer.cross"][which]);
        offerer.client.connect(to, description(1)).unwrap();
        let got = offerer.wait_for(WAIT, |e| matches!(e, Event::Answer { .. }));
        lat[which].push(t0.elapsed());
        trace("bench.answer_in");
        // Every offer answered once: a second answer for a session is a duplicate.
        if let Event::Answer { session, .. } = got {
            if !answered.insert(session) {
                duplicates += 1;
            }
        }
        duplicates += offerer
            .events
            .iter()
            .filter(|e| matches!(e, Event::Answer { .. }))
            .count();
        offerer.events.clear();
    }
    let cpu_s: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, &b)| cpu_ticks(p).unwrap_or(b).saturating_sub(b) as f64 / clock_ticks_per_s())
        .collect();
    let all = 2 * offers;
    println!(
        "cpu over {all} offers (half across): fogd-2 {:.1} us, fogd-3 {:.1} us, redis {:.1} us per offer; {} answered, {duplicates} duplicated, load average {}",
        cpu_s[0] / all as f64 * 1e6,
        cpu_s[1] / all as f64 * 1e6,
        cpu_s[2] / all as f64 * 1e6,
        answered.len(),
        load_average()
    );
    stop.store(true, Ordering::Relaxed);
    for t in answerers {
        let _ = t.join();
    }
    for (name, samples) in ["same instance", "across instances"].iter().zip(&mut lat) {
        let p50 = percentile(samples, 0.5).unwrap();
        let p99 = percentile(samples, 0.99).unwrap();
        println!(
            "offer->answer {name}: {} offers at {} offers/s (both kinds): p50 {} p99 {}",
            samples.len(),
            rate,
            ms(p50),
            ms(p99)
        );
    }

    // Redis memory per registered peer.
    let before = used_memory(redis_port);
    let joined_at = Instant::now();
    let addrs = [a, b, c];
    let mut crowd: Vec<SignalPeer> = (0..n_peers).map(|i| join(addrs[i % 3], 100 + i)).collect();
    // Registration is asynchronous: wait until the last one is visible.
    let last = crowd.last().unwrap().client.peer_id();
    let mut probe = join(a, 99);
    while !online(&mut probe, last) {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1_500));
    let after = used_memory(redis_port);
    let per_10k = (after.saturating_sub(before)) as f64 / n_peers as f64 * 10_000.0;
    println!(
        "redis memory: {n_peers} peers joined in {:.1} s; used_memory {:.1} MiB -> {:.1} MiB: {:.2} MiB per 10,000 peers",
        joined_at.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_10k / 1048576.0
    );

    // Kill the third instance: how soon is its peer offline for a sender on the first?
    let victim = crowd[2].client.peer_id(); // on c
    assert!(online(&mut probe, victim));
    let killed_at = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", &c_child.id().to_string()])
        .status();
    let offline = until_offline(&mut probe, victim, killed_at);
    println!("offline after SIGKILL of its instance: {}", ms(offline));
    let _ = c_child.wait_timeout(WAIT);

    // Its peers reconnect to the two others: how soon is each reachable from a third party?
    let movers: Vec<usize> = (2..n_peers).step_by(3).take(200).collect();
    let mut back = Vec::new();
    for &i in &movers {
        let t0 = Instant::now();
        crowd[i] = join(addrs[i % 2], 100 + i);
        let id = crowd[i].client.peer_id();
        // Seen from the instance it did not join.
        let from = if i % 2 == 0 {
            &mut crowd[1]
        } else {
            &mut probe
        };
        while !online(from, id) {
            thread::sleep(Duration::from_millis(1));
        }
        back.push(t0.elapsed());
    }
    let p99 = percentile(&mut back, 0.99).unwrap();
    let p50 = percentile(&mut back, 0.5).unwrap();
    println!(
        "reachable again after reconnecting elsewhere ({} peers, join to seen online from another instance): p50 {} p99 {}",
        back.len(),
        ms(p50),
        ms(p99)
    );

    // Stall the second instance: its peers are offline when its lease runs out.
    let stalled = crowd[1].client.peer_id(); // on b
    let b_pid = b_child.id().to_string();
    if online(&mut probe, stalled) {
        let t0 = Instant::now();
        let _ = Command::new("kill").args(["-STOP", &b_pid]).status();
        let offline = until_offline(&mut probe, stalled, t0);
        let _ = Command::new("kill").args(["-CONT", &b_pid]).status();
        println!(
            "offline after SIGSTOP of its instance (lease 1.5 s): {}",
            ms(offline)
        );
    }
    drop(crowd);
}
