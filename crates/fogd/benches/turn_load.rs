//! Relayed messages per second through fogd's TURN and through coturn's `turnserver`, in one run,
//! on loopback, with the same client and the same single core for each server.
//!
//! ```text
//! cargo bench -p fogd --bench turn_load
//! cargo bench -p fogd --bench turn_load -- --seconds 5 --rounds 3 --allocations 64 --window 4 --length 160
//! ```
//!
//! Each server listens on 127.0.0.1 and is pinned to CPU 0 with `taskset -c 0` (all its threads:
//! coturn's relay threads share that core); this process, the client, pins itself to CPU 1.
//!
//! The client makes `allocations` allocations (one UDP socket each, `use-auth-secret`
//! credentials) and pairs them: in each pair, each client binds a channel to the other's relayed
//! address, as `turnutils_uclient -y` does. A message is ChannelData from client A to the server,
//! relayed from A's relayed address to B's relayed address, and from there as ChannelData to
//! client B: two datagrams in and two out for the server per message, every one of them through
//! the relay's own code. Both servers allow loopback peers (fogd `--turn-allow-peer 127.0.0.0/8`,
//! coturn `--allow-loopback-peers`) and have no bandwidth limit (fogd `--turn-bandwidth 0`, coturn's
//! default) and no per-user quota in the way.
//!
//! Each pair keeps `window` messages in flight (a closed loop: each arrival releases the next
//! message), so with enough pairs the server's queues never run dry, and never overflow beyond
//! the in-flight total. A pair that hears nothing for 50 ms is taken to have lost its messages
//! and is refilled (counted as a stall). After a one-second warm-up it counts, for `seconds`:
//!
//! - messages delivered per second, and the Mbit/s of application payload they carry;
//! - loss: messages sent in the interval and not delivered, as a share of those sent;
//! - the server's CPU time from /proc/PID/stat (utime + stime of all its threads), as a share of
//!   one core (about 100 % means the server, not the client, set the rate) and per message.
//!
//! Servers alternate, `rounds` times each (who goes first alternates too), and the summary quotes
//! medians over the rounds and the median of the per-round ratios to coturn.
//!
//! It sends only to addresses on this machine (127.0.0.1), and stops by itself.

// A load generator reads the clock to pace and measure itself.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use fog_stun::wire::{Class, IntegrityKey, TransactionId};
use fog_turn::auth::AuthSecret;
use fog_turn::wire::{ChannelData, TRANSPORT_UDP, TurnMessage, method};
use support::{
    A1, ChildGuard, clock_ticks_per_s, cpu_ticks, find_tool, free_port_pair, load_average, median,
    pin_self_to_cpu1,
};

const SECRET: &str = "turn-load-secret";
const REALM: &str = "fog.test";
/// A pair with messages in flight and no arrival for this long is refilled.
const STALL: Duration = Duration::from_millis(50);
const WARM_UP: Duration = Duration::from_secs(1);
/// How long one setup request may wait for its answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    rounds: usize,
    allocations: usize,
    window: usize,
    length: usize,
    /// Run only the contender of this label (for profiling one server).
    only: Option<String>,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 5,
            rounds: 3,
            allocations: 64,
            window: 4,
            length: 160,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> usize {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} takes a positive number"))
            };
            match arg.as_str() {
                "--seconds" => options.seconds = value("--seconds").max(1) as u64,
                "--rounds" => options.rounds = value("--rounds").max(1),
                "--allocations" => options.allocations = value("--allocations").max(2) & !1,
                "--window" => options.window = value("--window").max(1),
                "--length" => options.length = value("--length").clamp(4, 1200),
                "--only" => options.only = args.next(),
                // `cargo bench` passes --bench to every bench binary.
                "--bench" => {}
                other => panic!(
                    "unknown argument {other}; known: --seconds N --rounds N --allocations N \
                     --window N --length BYTES --only fogd|coturn"
                ),
            }
        }
        options
    }
}

/// A server under test: how to start it on a listen port with relay ports `low..=high`.
#[derive(Debug, Clone)]
struct Contender {
    label: &'static str,
    program: PathBuf,
    args: fn(u16, (u16, u16)) -> Vec<String>,
}

fn fogd_args(port: u16, (low, high): (u16, u16)) -> Vec<String> {
    [
        "--turn",
        &format!("127.0.0.1:{port}"),
        "--turn-secret",
        SECRET,
        "--turn-realm",
        REALM,
        "--turn-ports",
        &format!("{low}-{high}"),
        "--turn-allow-peer",
        "127.0.0.0/8",
        "--turn-bandwidth",
        "0",
        "--turn-max-allocations-per-user",
        "1000",
    ]
    .map(String::from)
    .to_vec()
}

fn coturn_args(port: u16, (low, high): (u16, u16)) -> Vec<String> {
    let pidfile = support::scratch_file("turnserver-load.pid");
    [
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--listening-port",
        &port.to_string(),
        "--min-port",
        &low.to_string(),
        "--max-port",
        &high.to_string(),
        "--use-auth-secret",
        "--static-auth-secret",
        SECRET,
        "--realm",
        REALM,
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-tcp-relay",
        "--no-cli",
        "--log-file",
        "stdout",
        "--simple-log",
        "--pidfile",
        &pidfile.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec()
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    delivered_per_s: f64,
    mbit_per_s: f64,
    loss: f64,
    /// The server's CPU time over the measured interval, as a share of one core.
    server_cpu: Option<f64>,
    stalls: u64,
}

impl Run {
    /// Server CPU-seconds per delivered message.
    fn cpu_per_message(&self) -> Option<f64> {
        self.server_cpu
            .filter(|_| self.delivered_per_s > 0.0)
            .map(|c| c / self.delivered_per_s)
    }

    fn saturated(&self) -> bool {
        self.server_cpu.is_some_and(|c| c >= 0.95)
    }
}

fn main() {
    let options = Options::parse();
    let fogd = PathBuf::from(env!("CARGO_BIN_EXE_fogd"));
    let Some(turnserver) = find_tool("turnserver") else {
        eprintln!(
            "turn_load: turnserver not installed (Debian package coturn); nothing to compare"
        );
        return;
    };
    let taskset = find_tool("taskset");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = taskset.is_some() && cores >= 2;
    if pinned {
        pin_self_to_cpu1(taskset.as_deref().unwrap(), "turn_load");
    } else {
        eprintln!("turn_load: no taskset or fewer than 2 CPUs; servers and client are not pinned");
    }
    let contenders = [
        Contender {
            label: "fogd",
            program: fogd,
            args: fogd_args,
        },
        Contender {
            label: "coturn",
            program: turnserver,
            args: coturn_args,
        },
    ];

    println!("load average at the start: {}", load_average());
    println!(
        "turn_load: {} s x {} rounds per server, {} allocations in {} pairs x {} in flight, \
         {}-byte messages, servers {}",
        options.seconds,
        options.rounds,
        options.allocations,
        options.allocations / 2,
        options.window,
        options.length,
        if pinned {
            "on CPU 0 (taskset -c 0), client on CPU 1"
        } else {
            "unpinned"
        }
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    for round in 0..options.rounds {
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let contender = &contenders[i];
            if options
                .only
                .as_deref()
                .is_some_and(|only| only != contender.label)
            {
                continue;
            }
            let run = measure(contender, taskset.as_deref().filter(|_| pinned), &options);
            println!(
                "  round {} {:<7} {:>8.0} msg/s {:>7.1} Mbit/s  loss {:.3} %  server CPU {}  \
                 {} µs CPU/msg  stalls {}",
                round + 1,
                contender.label,
                run.delivered_per_s,
                run.mbit_per_s,
                run.loss * 100.0,
                run.server_cpu
                    .map_or("?".to_owned(), |c| format!("{:.0} %", c * 100.0)),
                run.cpu_per_message()
                    .map_or("?".to_owned(), |c| format!("{:.2}", c * 1e6)),
                run.stalls
            );
            results[i].push(run);
        }
    }

    println!();
    println!(
        "| server | msg/s (median) | vs coturn | Mbit/s | loss | server CPU | µs CPU per msg \
         (median) | vs coturn | saturated rounds: msg/s vs coturn |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, contender) in contenders.iter().enumerate() {
        let runs = &results[i];
        if runs.is_empty() {
            continue;
        }
        let rate = median(runs.iter().map(|r| r.delivered_per_s).collect());
        let mbit = median(runs.iter().map(|r| r.mbit_per_s).collect());
        let loss = median(runs.iter().map(|r| r.loss).collect());
        let cpu = median(runs.iter().filter_map(|r| r.server_cpu).collect());
        let per_msg = median(runs.iter().filter_map(Run::cpu_per_message).collect());
        let pairs = || runs.iter().zip(&results[1]);
        let rate_ratio = median(
            pairs()
                .map(|(run, coturn)| run.delivered_per_s / coturn.delivered_per_s)
                .collect(),
        );
        let cpu_ratio = median(
            pairs()
                .filter_map(|(run, coturn)| {
                    Some(run.cpu_per_message()? / coturn.cpu_per_message()?)
                })
                .collect(),
        );
        let saturated: Vec<f64> = pairs()
            .filter(|(run, coturn)| run.saturated() && coturn.saturated())
            .map(|(run, coturn)| run.delivered_per_s / coturn.delivered_per_s)
            .collect();
        let saturated = match saturated.len() {
            0 => "none".to_owned(),
            n => format!("{:.2}x ({n} of {})", median(saturated), options.rounds),
        };
        println!(
            "| {} | {rate:.0} | {rate_ratio:.2}x | {mbit:.1} | {:.3} % | {:.0} % | {:.2} | \
             {cpu_ratio:.2}x | {saturated} |",
            contender.label,
            loss * 100.0,
            cpu * 100.0,
            per_msg * 1e6,
        );
    }
    println!("load average at the end: {}", load_average());
}

/// 1,000 relay ports below the ephemeral range, different per process and attempt.
fn relay_ports(attempt: u32) -> (u16, u16) {
    let base = 20_000 + ((std::process::id() + attempt * 3) % 12) * 1000;
    let base = u16::try_from(base).expect("below 32000");
    (base, base + 999)
}

/// Starts `contender` (under `taskset -c 0` if given), sets up the allocations, loads it and
/// stops it.
fn measure(contender: &Contender, taskset: Option<&Path>, options: &Options) -> Run {
    let mut last = String::new();
    for attempt in 0..3 {
        let (port, _) = free_port_pair();
        let args = (contender.args)(port, relay_ports(attempt));
        let mut command = match taskset {
            Some(taskset) => {
                let mut c = Command::new(taskset);
                c.args(["-c", "0"]).arg(&contender.program);
                c
            }
            None => Command::new(&contender.program),
        };
        command.args(&args);
        // Quiet logs for both: a log line per datagram would be measured too.
        command.env("RUST_LOG", "warn");
        let child = ChildGuard::spawn(contender.label, &mut command)
            .unwrap_or_else(|e| panic!("starting {}: {e}", contender.label));
        let server = SocketAddr::new(A1, port);
        if !support::answers_stun(server, Duration::from_secs(10)) {
            last = child.output_text();
            continue;
        }
        let pairs = match set_up(server, options.allocations) {
            Ok(pairs) => pairs,
            Err(e) => {
                last = format!("setting up: {e}\n{}", child.output_text());
                continue;
            }
        };
        return load(&pairs, child.id(), options).expect("loading the server");
    }
    panic!("{} did not start or set up\n{last}", contender.label);
}

/// One client socket with its allocation and the channel to its partner's relayed address.
struct Leg {
    socket: UdpSocket,
    channel: u16,
}

/// Sends `msg` (signed with `key` if given) and waits for the answer to it, sending again every
/// 250 ms: fogd answers a source's unauthenticated requests at 20/s (bursts of 40), so the 401s
/// of many allocations from 127.0.0.1 take a few seconds.
fn ask(
    socket: &UdpSocket,
    msg: &TurnMessage,
    key: Option<&IntegrityKey>,
) -> io::Result<TurnMessage> {
    let bytes = msg.to_bytes(key).map_err(io::Error::other)?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        socket.send(&bytes)?;
        let resend = Instant::now() + Duration::from_millis(250);
        while Instant::now() < resend {
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Ok(answer) = TurnMessage::decode(&buf[..n]) {
                if answer.transaction_id == msg.transaction_id {
                    return Ok(answer);
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
}

fn tid(n: u64) -> TransactionId {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[8..].copy_from_slice(&std::process::id().to_be_bytes());
    TransactionId::new(bytes)
}

/// Allocates for one client: 401, then the signed Allocate. Returns the socket, the
/// credentials' key and nonce, and the relayed address.
fn allocate(
    server: SocketAddr,
    user: &str,
    next: &mut u64,
) -> io::Result<(UdpSocket, IntegrityKey, String, String, SocketAddr)> {
    let socket = UdpSocket::bind((A1, 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (username, password) = AuthSecret::new(SECRET.as_bytes()).credentials(unix + 3600, user);
    *next += 1;
    let mut msg = TurnMessage::new(Class::Request, method::ALLOCATE, tid(*next));
    msg.requested_transport = Some(TRANSPORT_UDP);
    let challenge = ask(&socket, &msg, None)?;
    let refused = challenge.error_code();
    let (Some(realm), Some(nonce)) = (challenge.realm, challenge.nonce) else {
        return Err(io::Error::other(format!("no challenge: {refused:?}")));
    };
    let key = IntegrityKey::long_term(&username, &realm, &password);
    *next += 1;
    let mut msg = TurnMessage::new(Class::Request, method::ALLOCATE, tid(*next));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.username = Some(username.clone());
    msg.realm = Some(realm);
    msg.nonce = Some(nonce.clone());
    let answer = ask(&socket, &msg, Some(&key))?;
    let relayed = answer
        .xor_relayed_address
        .ok_or_else(|| io::Error::other(format!("Allocate refused: {:?}", answer.error_code())))?;
    Ok((socket, key, username, nonce, relayed))
}

/// `allocations` allocations in pairs, each client with a channel to its partner's relayed
/// address. Channel numbers run up from 0x4000 per client, like uclient's first binds.
fn set_up(server: SocketAddr, allocations: usize) -> io::Result<Vec<[Leg; 2]>> {
    let mut next = 0u64;
    let mut made = Vec::with_capacity(allocations);
    for i in 0..allocations {
        made.push(allocate(server, &format!("load{i}"), &mut next)?);
    }
    let relayed: Vec<SocketAddr> = made.iter().map(|m| m.4).collect();
    let mut legs = Vec::with_capacity(allocations);
    for (i, (socket, key, username, nonce, _)) in made.into_iter().enumerate() {
        let partner = relayed[i ^ 1];
        let channel = ChannelData::MIN_CHANNEL;
        next += 1;
        let mut msg = TurnMessage::new(Class::Request, method::CHANNEL_BIND, tid(next));
        msg.channel_number = Some(channel);
        msg.xor_peer_addresses = vec![partner];
        msg.username = Some(username);
        msg.realm = Some(REALM.to_owned());
        msg.nonce = Some(nonce);
        let answer = ask(&socket, &msg, Some(&key))?;
        if answer.class != Class::SuccessResponse {
            let refused = answer.error_code();
            return Err(io::Error::other(format!(
                "ChannelBind refused: {refused:?}"
            )));
        }
        socket.set_nonblocking(true)?;
        legs.push(Leg { socket, channel });
    }
    let mut pairs = Vec::with_capacity(allocations / 2);
    let mut legs = legs.into_iter();
    while let (Some(a), Some(b)) = (legs.next(), legs.next()) {
        pairs.push([a, b]);
    }
    Ok(pairs)
}

/// Runs the pairs' closed loops for the warm-up and the measured time.
fn load(pairs: &[[Leg; 2]], server_pid: u32, options: &Options) -> io::Result<Run> {
    let mut message = vec![0u8; ChannelData::encoded_len(options.length, false)];
    let payload = vec![0x5au8; options.length];
    let mut in_flight = vec![0usize; pairs.len()];
    let mut last_arrival = vec![Instant::now(); pairs.len()];
    // Which leg of each pair sends next, so that both directions carry the same load.
    let mut turn = vec![0usize; pairs.len()];
    let mut buf = [0u8; 2048];
    let (mut sent, mut delivered, mut stalls) = (0u64, 0u64, 0u64);

    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let end = measure_from + Duration::from_secs(options.seconds);
    let mut measuring = false;
    let mut cpu_at_start = None;
    let mut in_flight_at_start = 0u64;
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            (sent, delivered, stalls) = (0, 0, 0);
            in_flight_at_start = in_flight.iter().sum::<usize>() as u64;
            cpu_at_start = cpu_ticks(server_pid);
        }
        if now >= end {
            break;
        }
        for (p, pair) in pairs.iter().enumerate() {
            for leg in pair {
                loop {
                    match leg.socket.recv(&mut buf) {
                        Ok(n) => {
                            if ChannelData::decode(&buf[..n])
                                .is_ok_and(|cd| cd.channel == leg.channel)
                            {
                                delivered += 1;
                                in_flight[p] = in_flight[p].saturating_sub(1);
                                last_arrival[p] = now;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
            if in_flight[p] > 0 && now.duration_since(last_arrival[p]) > STALL {
                in_flight[p] = 0;
                last_arrival[p] = now;
                stalls += 1;
            }
            while in_flight[p] < options.window {
                let leg = &pair[turn[p]];
                turn[p] ^= 1;
                let n = ChannelData {
                    channel: leg.channel,
                    data: &payload,
                }
                .encode(false, &mut message)
                .expect("the buffer fits the message");
                match leg.socket.send(&message[..n]) {
                    Ok(_) => {
                        sent += 1;
                        in_flight[p] += 1;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    let elapsed = Instant::now().duration_since(measure_from).as_secs_f64();
    let server_cpu = cpu_at_start
        .zip(cpu_ticks(server_pid))
        .map(|(a, b)| (b - a) as f64 / clock_ticks_per_s() / elapsed);
    // Messages in flight when measuring began arrive inside the interval; those in flight at the
    // end have not had their chance: neither is loss.
    let in_flight_at_end = in_flight.iter().sum::<usize>() as u64;
    let lost = (sent + in_flight_at_start).saturating_sub(delivered + in_flight_at_end);
    Ok(Run {
        delivered_per_s: delivered as f64 / elapsed,
        mbit_per_s: delivered as f64 * options.length as f64 * 8.0 / elapsed / 1e6,
        loss: if sent == 0 {
            0.0
        } else {
            lost as f64 / sent as f64
        },
        server_cpu,
        stalls,
    })
}
