//! Reliable transports in the simulator, in virtual time: how long 10 MiB take between two
//! nodes, and how long the first application byte takes after `connect`.
//!
//! ```text
//! cargo bench -p fog-benches --bench sim_transfer              # Markdown tables
//! cargo bench -p fog-benches --bench sim_transfer -- --json    # one JSON object
//! cargo bench -p fog-benches --bench sim_transfer -- --transport kcp --size 1MiB --message 1300
//! ```
//!
//! The world is the NAT matrix's scenario (`fog_examples::scenario`): two nodes behind
//! port-restricted cone NATs (the common home NAT), punching a direct path, signaling 30 ms
//! and 40 ms one way. The path's round trip is set through the access links (each a quarter
//! of it one way); the loss named is the path's, each way: each of the two access links a
//! datagram crosses drops `1 - sqrt(1 - loss)` of them.
//!
//! - **Transfer**: once both nodes report `Connected`, A sends `--size` bytes (default
//!   10 MiB) of a seeded pattern in messages of `--message` bytes (default 60,000, as the
//!   `transfer` bench) as fast as the stream takes them (on `Blocked` it waits for
//!   `Writable`, looking every millisecond); the time runs from the first send to the instant
//!   B's node reports the last byte, and B's bytes must hash (SHA-256) to what A sent. At
//!   20 ms and 100 ms RTT, 0 %, 1 % and 5 % loss.
//! - **First byte**: A calls `connect_with` and sends 1 KiB within a millisecond of its
//!   `Connected`; the time runs from the call to the instant B's node reports the data. The
//!   median and the largest of 20 seeds, at each RTT and loss. Beside it: the lower bound of
//!   the path without loss
//!   (the offer and the answer cross both signaling links, one peer round trip verifies the
//!   path: [`Profile::lower_bound`]), plus the transport's own handshake round trips before
//!   the caller's data may leave, plus the data's one-way trip; and the 2.98 s the original
//!   library takes to its first byte (the figure issue 12 gives).
//!
//! Every reliable transport is tried; one the node does not run (yet) is reported as such.
//! Virtual time does not depend on the machine: the figures change only with the code.

use std::fmt;
use std::time::{Duration, Instant};

use fog_benches::Pattern;
use fog_examples::scenario::{Profile, Scenario, SimNode};
use fog_sim::presets::Preset;
use fogconnect::{ConnectError, ConnectionId, Event, SendError, Transport};
use sha2::{Digest, Sha256};

/// The reliable transports, each with the round trips its handshake takes before the caller's
/// first data may leave: KCP's hello and its answer (fog-kcp holds the initiator's data until
/// then); uTP's SYN and STATE; QUIC's 1-RTT handshake (the client's 1-RTT data follows the
/// server's first flight).
const TRANSPORTS: &[(Transport, u32)] = &[
    (Transport::Kcp, 1),
    (Transport::Utp, 1),
    (Transport::Quic, 1),
];
/// Round trips of the path, each way twice through both access links.
const RTTS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(100)];
/// The path's loss, each way.
const LOSSES: [f64; 3] = [0.0, 0.01, 0.05];
/// What the original library takes from connect to its first application byte (issue 12).
const ORIGINAL_FIRST_BYTE: Duration = Duration::from_millis(2_980);
/// Seeds of the first-byte runs.
const FIRST_BYTE_SEEDS: u64 = 20;
/// The transfer's message size by default (as the `transfer` bench's).
const MESSAGE: usize = 60_000;
/// Virtual time a transfer may take.
const LIMIT: Duration = Duration::from_secs(600);

struct Options {
    transports: Vec<(Transport, u32)>,
    size: usize,
    message: usize,
    json: bool,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            transports: TRANSPORTS.to_vec(),
            size: 10 << 20,
            message: MESSAGE,
            json: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().expect("a value");
            match arg.as_str() {
                "--transport" => {
                    let t = Transport::from(value());
                    o.transports.retain(|(x, _)| *x == t);
                    assert!(!o.transports.is_empty(), "not a reliable transport: {t:?}");
                }
                "--size" => {
                    o.size = usize::try_from(fog_benches::parse_size(&value()))
                        .expect("a size that fits")
                }
                "--message" => {
                    o.message = usize::try_from(fog_benches::parse_size(&value()))
                        .expect("a size that fits")
                }
                "--json" => o.json = true,
                "--bench" => {}
                other => {
                    panic!(
                        "unknown argument {other}; known: --transport NAME --size 10MiB --message 60000 --json"
                    )
                }
            }
        }
        o
    }
}

/// The scenario's profile for a path of `rtt` losing `loss` each way.
fn profile(rtt: Duration, loss: f64) -> Profile {
    Profile {
        access: rtt / 4,
        loss: 1.0 - (1.0 - loss).sqrt(),
        ..Profile::default()
    }
}

/// Why a run gave no figure.
#[derive(Debug)]
enum Skip {
    /// The node does not run the transport.
    NotRun,
    /// Something else went wrong: what.
    Failed(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotRun => f.write_str("not run by the node"),
            Skip::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Both nodes ready, A calls `connect_with`: the instant of the call and A's handle.
fn start(s: &mut Scenario, transport: &Transport) -> Result<(Instant, ConnectionId), Skip> {
    if !s.wait_ready() {
        return Err(Skip::Failed("nodes not ready".into()));
    }
    let to = s.hosts[1].1;
    let t = transport.clone();
    let id = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, t)
        })
        .map_err(|e| match e {
            ConnectError::UnsupportedTransport(_) => Skip::NotRun,
            e => Skip::Failed(e.to_string()),
        })?;
    Ok((s.sim.now(), id))
}

/// Node `i`'s handle from its `Connected`, if it has one.
fn connected(s: &Scenario, i: usize) -> Option<ConnectionId> {
    s.events[i].iter().find_map(|(_, e)| match e {
        Event::Connected { id, .. } => Some(*id),
        _ => None,
    })
}

/// Runs the simulator a millisecond at a time until `done`, for at most `limit`.
fn run_until(s: &mut Scenario, limit: Duration, mut done: impl FnMut(&Scenario) -> bool) -> bool {
    let end = s.sim.now() + limit;
    while !done(s) {
        if s.sim.now() >= end {
            return false;
        }
        s.run_for(Duration::from_millis(1));
    }
    true
}

/// The virtual time `size` bytes in messages of `message_len` take from A's first send to B's
/// last byte.
fn transfer(
    transport: &Transport,
    rtt: Duration,
    loss: f64,
    size: usize,
    message_len: usize,
) -> Result<Duration, Skip> {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        1,
        &profile(rtt, loss),
    );
    let (_, a) = start(&mut s, transport)?;
    if !run_until(&mut s, Duration::from_secs(15), |s| {
        connected(s, 0).is_some() && connected(s, 1).is_some()
    }) {
        return Err(Skip::Failed("not connected in 15 s".into()));
    }
    let b = connected(&s, 1).expect("B connected");
    let mark = s.events[1].len();
    let first_send = s.sim.now();
    let mut pattern = Pattern(7);
    let mut sent = Sha256::new();
    let mut left = size;
    let mut message = Vec::new();
    while left > 0 {
        if message.is_empty() {
            message.resize(message_len.min(left), 0);
            pattern.fill(&mut message);
        }
        match s.with_node(0, |n, now| n.send(now, a, &message)) {
            Ok(()) => {
                sent.update(&message);
                left -= message.len();
                message.clear();
            }
            Err(SendError::Blocked) => {
                let from = s.events[0].len();
                if !run_until(&mut s, LIMIT, |s| {
                    s.events[0][from..]
                        .iter()
                        .any(|(_, e)| *e == Event::Writable)
                }) {
                    return Err(Skip::Failed(format!("no Writable, {left} bytes to go")));
                }
            }
            Err(e) => return Err(Skip::Failed(format!("send: {e}"))),
        }
    }
    let mut got = 0;
    let mut hash = Sha256::new();
    let mut last = first_send;
    let mut seen = mark;
    let done = run_until(&mut s, LIMIT, |s| {
        for (at, e) in &s.events[1][seen..] {
            if let Event::Data { id, data } = e {
                if *id == b {
                    got += data.len();
                    hash.update(data);
                    last = *at;
                }
            }
        }
        seen = s.events[1].len();
        got >= size
    });
    if !done {
        return Err(Skip::Failed(format!("{got} of {size} bytes arrived")));
    }
    if hash.finalize() != sent.finalize() {
        return Err(Skip::Failed("the bytes differ".into()));
    }
    Ok(last - first_send)
}

/// The virtual time from A's `connect_with` to B's first byte, A sending 1 KiB as soon as it
/// is connected.
fn first_byte(
    transport: &Transport,
    rtt: Duration,
    loss: f64,
    seed: u64,
) -> Result<Duration, Skip> {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        seed,
        &profile(rtt, loss),
    );
    let (called, a) = start(&mut s, transport)?;
    if !run_until(&mut s, Duration::from_secs(15), |s| {
        connected(s, 0).is_some()
    }) {
        return Err(Skip::Failed("A not connected in 15 s".into()));
    }
    if let Err(e) = s.with_node(0, |n, now| n.send(now, a, &[0x42; 1024])) {
        return Err(Skip::Failed(format!("send: {e}")));
    }
    let data_at = |s: &Scenario| {
        s.events[1].iter().find_map(|(at, e)| match e {
            Event::Data { .. } => Some(*at),
            _ => None,
        })
    };
    if !run_until(&mut s, Duration::from_secs(15), |s| data_at(s).is_some()) {
        return Err(Skip::Failed("no byte at B in 15 s".into()));
    }
    Ok(data_at(&s).expect("arrived") - called)
}

/// The first byte's lower bound: the path's ([`Profile::lower_bound`]), the handshake's round
/// trips, the data's one way.
fn first_byte_bound(rtt: Duration, handshake_rtts: u32) -> Duration {
    profile(rtt, 0.0).lower_bound() + rtt * handshake_rtts + rtt / 2
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

fn main() {
    let o = Options::parse();
    let mut transfers = Vec::new();
    let mut firsts = Vec::new();
    for (transport, handshake) in &o.transports {
        let name = String::from(transport.clone());
        for rtt in RTTS {
            for loss in LOSSES {
                let r = transfer(transport, rtt, loss, o.size, o.message);
                transfers.push((name.clone(), rtt, loss, r));
            }
            for loss in LOSSES {
                let mut runs = Vec::new();
                let mut skip = None;
                for seed in 1..=FIRST_BYTE_SEEDS {
                    match first_byte(transport, rtt, loss, seed) {
                        Ok(d) => runs.push(d),
                        Err(e) => {
                            skip = Some(e);
                            break;
                        }
                    }
                }
                runs.sort();
                let r = match skip {
                    Some(e) => Err(e),
                    None => Ok((runs[runs.len() / 2], runs[runs.len() - 1])),
                };
                let bound = first_byte_bound(rtt, *handshake);
                firsts.push((name.clone(), rtt, loss, bound, r));
            }
        }
    }
    if o.json {
        let transfer: Vec<_> = transfers
            .iter()
            .map(|(t, rtt, loss, r)| {
                let (secs, note) = match r {
                    Ok(d) => (Some(d.as_secs_f64()), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                serde_json::json!({
                    "transport": t, "rtt_ms": rtt.as_millis() as u64, "loss": loss,
                    "bytes": o.size, "message": o.message, "virtual_secs": secs,
                    "mib_per_s": secs.map(|s| o.size as f64 / (1 << 20) as f64 / s),
                    "skipped": note,
                })
            })
            .collect();
        let first: Vec<_> = firsts
            .iter()
            .map(|(t, rtt, loss, bound, r)| {
                let (median, max, note) = match r {
                    Ok((m, x)) => (
                        Some(m.as_secs_f64() * 1e3),
                        Some(x.as_secs_f64() * 1e3),
                        None,
                    ),
                    Err(e) => (None, None, Some(e.to_string())),
                };
                serde_json::json!({
                    "transport": t, "rtt_ms": rtt.as_millis() as u64, "loss": loss,
                    "seeds": FIRST_BYTE_SEEDS, "median_ms": median, "max_ms": max,
                    "lower_bound_ms": bound.as_secs_f64() * 1e3,
                    "original_ms": ORIGINAL_FIRST_BYTE.as_secs_f64() * 1e3,
                    "skipped": note,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "transfer": transfer, "first_byte": first })
        );
        return;
    }
    println!(
        "{} MiB from A to B in messages of {} bytes, port-restricted cone NATs, direct path, \
         virtual time (first send to last byte at B)\n",
        o.size as f64 / (1 << 20) as f64,
        o.message
    );
    println!("| transport | RTT | loss | time | MiB/s |\n|---|---|---|---|---|");
    for (t, rtt, loss, r) in &transfers {
        let (time, rate) = match r {
            Ok(d) => (
                format!("{:.2} s", d.as_secs_f64()),
                format!("{:.2}", o.size as f64 / (1 << 20) as f64 / d.as_secs_f64()),
            ),
            Err(e) => (e.to_string(), "–".into()),
        };
        println!(
            "| {t} | {} ms | {} % | {time} | {rate} |",
            rtt.as_millis(),
            loss * 100.0
        );
    }
    println!(
        "\nConnect to the first application byte at B, {FIRST_BYTE_SEEDS} seeds; signaling \
         30 / 40 ms one way\n"
    );
    println!(
        "| transport | RTT | loss | median | max | lower bound without loss (path + handshake + \
         one way) | original |\n|---|---|---|---|---|---|---|"
    );
    for (t, rtt, loss, bound, r) in &firsts {
        let (median, max) = match r {
            Ok((m, x)) => (format!("{} ms", ms(*m)), format!("{} ms", ms(*x))),
            Err(e) => (e.to_string(), "–".into()),
        };
        println!(
            "| {t} | {} ms | {} % | {median} | {max} | {} ms | {} ms |",
            rtt.as_millis(),
            loss * 100.0,
            ms(*bound),
            ms(ORIGINAL_FIRST_BYTE)
        );
    }
}
