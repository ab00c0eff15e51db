//! Signaling under load: `peers` clients (default 10,000) authenticate to fogd over WebSocket on
//! loopback, then pass offers and answers between random pairs.
//!
//! ```text
//! cargo bench -p fogd --bench signal_load
//! cargo bench -p fogd --bench signal_load -- --peers 10000 --seconds 10 --in-flight 256
//! ```
//!
//! One process plays every client: one mio event loop, each connection a non-blocking
//! `tungstenite` WebSocket driving its own fog-signal `Client` machine with its own Ed25519 key.
//! fogd runs alone in its own process with its default limits (20,000 connections, 16,384
//! peers, 20 frames per second per connection).
//!
//! It reports:
//! - the time for all clients to connect and authenticate;
//! - fogd's resident memory (VmRSS from /proc) before any client and with every client
//!   authenticated, and the difference per peer;
//! - offers per second: with `in-flight` offers outstanding, a random idle client sends an offer
//!   to a random other client, which answers it at once; an offer counts when its answer is back.
//!   The measured interval starts after a one-second warm-up;
//! - fogd's CPU time over that interval, as a share of one core, to tell whether fogd or this
//!   client was the bottleneck;
//! - the forwarding latency of an offer (the sender's frame written to the target's machine
//!   having decoded it, one clock in one process) and the whole offer-answer round trip,
//!   p50 and p99.
//!
//! Each connection needs a file descriptor on both sides, so the bench raises its own soft
//! `RLIMIT_NOFILE` to the hard limit (by re-executing itself under `sh -c 'ulimit -n'`) and
//! starts fogd the same way. It sends only to 127.0.0.1 and stops by itself.

// A load generator reads the clock to pace and measure itself, and seeds keys by index.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fog_signal::KeyPair;
use fog_signal::client::{Client, ClientConfig, Event};
use fog_signal::msg::{Candidate, CandidateKind, Credentials, Description, Transport};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::{HandshakeError, Message, WebSocket};

use support::{
    ChildGuard, clock_ticks_per_s, cpu_ticks, fd_limit, percentile, raise_fd_limit_or_reexec,
    rss_kib, status_kib,
};

const WARM_UP: Duration = Duration::from_secs(1);
/// Connections whose TCP and WebSocket handshakes may be under way at once.
const CONNECTING: usize = 256;
/// Give up on a phase that makes no progress for this long.
const STUCK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Options {
    peers: usize,
    seconds: u64,
    in_flight: usize,
}

impl Options {
    fn parse() -> Self {
        let mut options = Options {
            peers: 10_000,
            seconds: 10,
            in_flight: 256,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> usize {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0)
                    .unwrap_or_else(|| panic!("{name} takes a positive number"))
            };
            match arg.as_str() {
                "--peers" => options.peers = value("--peers").max(2),
                "--seconds" => options.seconds = value("--seconds") as u64,
                "--in-flight" => options.in_flight = value("--in-flight"),
                "--bench" => {}
                other => {
                    panic!("unknown argument {other}; known: --peers N --seconds N --in-flight N")
                }
            }
        }
        options.in_flight = options.in_flight.min(options.peers / 2);
        options
    }
}

/// A WebSocket on its way up, up, or gone.
enum Ws {
    Connecting(TcpStream),
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    Open(WebSocket<TcpStream>),
    Dead,
}

struct Peer {
    ws: Ws,
    client: Client,
    authenticated: bool,
    /// This peer has an offer of its own outstanding.
    busy: bool,
}

/// One offer: when its frame left the sender, and who sent it.
struct Pending {
    sent: Instant,
    from: usize,
}

#[derive(Default)]
struct Counters {
    authenticated: usize,
    errors: usize,
    closed: usize,
    answered: u64,
    forward: Vec<Duration>,
    round_trip: Vec<Duration>,
}

fn main() {
    raise_fd_limit_or_reexec();
    let options = Options::parse();
    let fogd_bin = PathBuf::from(env!("CARGO_BIN_EXE_fogd"));
    let need = options.peers + 256;
    let soft = fd_limit();
    if soft < need as u64 {
        eprintln!(
            "signal_load: {need} file descriptors needed, the limit is {soft}; try --peers {}",
            soft.saturating_sub(256)
        );
        std::process::exit(1);
    }

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let script = format!("ulimit -n {soft} && exec \"$0\" --signal {server}");
    let mut fogd = ChildGuard::spawn(
        "fogd-signal-load",
        Command::new("sh").args(["-c", &script]).arg(&fogd_bin),
    )
    .expect("starting fogd");
    wait_listening(server, &mut fogd);
    let pid = fogd.id();
    // Let fogd settle before reading its idle footprint.
    std::thread::sleep(Duration::from_millis(200));
    let rss_idle = rss_kib(pid);
    println!(
        "signal_load: {} peers, fogd pid {pid} on {server}, idle RSS {} KiB",
        options.peers,
        rss_idle.map_or("?".into(), |r| r.to_string())
    );

    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(4096);
    let url = format!("ws://{server}/ws");
    let mut peers: Vec<Peer> = Vec::with_capacity(options.peers);
    let mut counters = Counters::default();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut rng = Lcg(0x5eed);

    // Phase 1: connect and authenticate everyone, CONNECTING at a time.
    let started = Instant::now();
    let mut progress = Instant::now();
    let mut last_count = 0;
    while counters.authenticated < options.peers {
        let under_way = peers.len() - counters.authenticated - counters.closed;
        if peers.len() < options.peers && under_way < CONNECTING {
            for _ in 0..(CONNECTING - under_way).min(options.peers - peers.len()) {
                let i = peers.len();
                let mut stream = TcpStream::connect(server).expect("connect");
                poll.registry()
                    .register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .expect("register");
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                let key = KeyPair::from_seed(&seed);
                let config = ClientConfig::new(key, "127.0.0.1", seed);
                peers.push(Peer {
                    ws: Ws::Connecting(stream),
                    client: Client::new(config),
                    authenticated: false,
                    busy: false,
                });
            }
        }
        turn(
            &mut poll,
            &mut events,
            &url,
            &mut peers,
            &mut counters,
            &mut pending,
        );
        if counters.closed > 0 {
            panic!(
                "signal_load: {} connections closed while authenticating\n{}",
                counters.closed,
                fogd.output_text()
            );
        }
        if counters.authenticated != last_count {
            last_count = counters.authenticated;
            progress = Instant::now();
        } else if progress.elapsed() > STUCK {
            panic!(
                "signal_load: stuck at {last_count} authenticated\n{}",
                fogd.output_text()
            );
        }
    }
    let auth_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let rss_peers = rss_kib(pid);
    // The peak and where the memory is, for the memory bench (which runs this phase).
    let with_peers = ["VmHWM", "RssAnon", "RssFile", "Threads"]
        .map(|key| status_kib(pid, key).map_or("?".into(), |v| v.to_string()));
    println!(
        "signal_load: {} peers authenticated in {:.2} s ({:.0}/s)",
        options.peers,
        auth_time.as_secs_f64(),
        options.peers as f64 / auth_time.as_secs_f64()
    );

    // Phase 2: offers between random pairs, `in_flight` outstanding.
    let mut seq = 0u64;
    let phase = Instant::now();
    let mut measured_from = None;
    let end = phase + WARM_UP + Duration::from_secs(options.seconds);
    let mut last_timers = Instant::now();
    progress = Instant::now();
    let mut last_answered = 0;
    while Instant::now() < end {
        if measured_from.is_none() && phase.elapsed() >= WARM_UP {
            measured_from = Some((Instant::now(), counters.answered, cpu_ticks(pid)));
            counters.forward.clear();
            counters.round_trip.clear();
        }
        while pending.len() < options.in_flight {
            let from = rng.below(peers.len());
            let to = rng.below(peers.len());
            if from == to || peers[from].busy {
                continue;
            }
            let target = peers[to].client.peer_id();
            seq += 1;
            let description = description(seq);
            if peers[from].client.connect(target, description).is_err() {
                continue;
            }
            peers[from].busy = true;
            pending.insert(
                seq,
                Pending {
                    sent: Instant::now(),
                    from,
                },
            );
            flush(&mut peers[from], &mut counters);
        }
        turn(
            &mut poll,
            &mut events,
            &url,
            &mut peers,
            &mut counters,
            &mut pending,
        );
        if last_timers.elapsed() > Duration::from_millis(500) {
            let now = Instant::now();
            for peer in &mut peers {
                if peer.client.poll_timeout().is_some_and(|t| t <= now) {
                    peer.client.handle_timeout(now);
                }
            }
            for i in 0..peers.len() {
                drain(i, &mut peers, &mut counters, &mut pending);
            }
            last_timers = now;
        }
        if counters.answered != last_answered {
            last_answered = counters.answered;
            progress = Instant::now();
        } else if progress.elapsed() > STUCK {
            panic!(
                "signal_load: no answer for {STUCK:?} ({} pending, {} errors, {} closed)\n{}",
                pending.len(),
                counters.errors,
                counters.closed,
                fogd.output_text()
            );
        }
    }
    let (from, answered_before, cpu_before) = measured_from.expect("the run outlasted the warm-up");
    let elapsed = from.elapsed().as_secs_f64();
    // fogd's CPU over the measured interval, as a share of one core: near 100 % means the
    // server is the bottleneck, well below it means the client (this process) is.
    let server_cpu = cpu_before
        .zip(cpu_ticks(pid))
        .map(|(a, b)| (b - a) as f64 / clock_ticks_per_s() / elapsed);
    let offers = counters.answered - answered_before;

    let per_peer = match (rss_idle, rss_peers) {
        (Some(idle), Some(with)) => {
            format!(
                "{:.1} KiB",
                (with.saturating_sub(idle)) as f64 / options.peers as f64
            )
        }
        _ => "?".into(),
    };
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| peers authenticated | {} in {:.2} s |",
        options.peers,
        auth_time.as_secs_f64()
    );
    println!(
        "| fogd RSS idle / with peers | {} KiB / {} KiB |",
        rss_idle.map_or("?".into(), |r| r.to_string()),
        rss_peers.map_or("?".into(), |r| r.to_string())
    );
    println!("| fogd RSS per registered peer | {per_peer} |");
    println!(
        "| fogd with peers: VmHWM / RssAnon / RssFile / Threads | {} KiB / {} KiB / {} KiB / {} |",
        with_peers[0], with_peers[1], with_peers[2], with_peers[3]
    );
    println!(
        "| offers answered per second ({} in flight, {} s) | {:.0} |",
        options.in_flight,
        options.seconds,
        offers as f64 / elapsed
    );
    println!(
        "| fogd CPU during the offers (share of one core) | {} |",
        server_cpu.map_or("?".into(), |c| format!("{:.0} %", c * 100.0))
    );
    println!(
        "| offer forwarding latency p50 / p99 | {} / {} |",
        fmt_ms(percentile(&mut counters.forward, 0.50)),
        fmt_ms(percentile(&mut counters.forward, 0.99))
    );
    println!(
        "| offer-answer round trip p50 / p99 | {} / {} |",
        fmt_ms(percentile(&mut counters.round_trip, 0.50)),
        fmt_ms(percentile(&mut counters.round_trip, 0.99))
    );
    println!(
        "| server errors / closed connections | {} / {} |",
        counters.errors, counters.closed
    );
    drop(fogd);
}

/// One poll of the event loop: progress handshakes, read frames, feed the machines.
fn turn(
    poll: &mut Poll,
    events: &mut Events,
    url: &str,
    peers: &mut [Peer],
    counters: &mut Counters,
    pending: &mut HashMap<u64, Pending>,
) {
    poll.poll(events, Some(Duration::from_millis(10)))
        .or_else(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            }
        })
        .expect("poll");
    let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
    for i in ready {
        advance(i, url, peers, counters);
        read(i, peers, counters);
        drain(i, peers, counters, pending);
    }
}

/// Moves a connection through its TCP connect and WebSocket handshake.
fn advance(i: usize, url: &str, peers: &mut [Peer], counters: &mut Counters) {
    let peer = &mut peers[i];
    let ws = std::mem::replace(&mut peer.ws, Ws::Dead);
    peer.ws = match ws {
        Ws::Connecting(stream) => {
            // Connected once the peer address is known (or the connect failed).
            match stream.peer_addr() {
                Ok(_) => handshake(tungstenite::client::client(url, stream), peer, counters),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ws::Connecting(stream),
                Err(e) => {
                    eprintln!("signal_load: connect {i}: {e}");
                    counters.closed += 1;
                    Ws::Dead
                }
            }
        }
        Ws::Handshaking(mid) => handshake(mid.handshake(), peer, counters),
        other => other,
    };
}

fn handshake(
    result: Result<
        (
            WebSocket<TcpStream>,
            tungstenite::handshake::client::Response,
        ),
        HandshakeError<ClientHandshake<TcpStream>>,
    >,
    peer: &mut Peer,
    counters: &mut Counters,
) -> Ws {
    match result {
        Ok((ws, _)) => {
            peer.client.handle_connected(Instant::now());
            peer.ws = Ws::Open(ws);
            flush(peer, counters);
            std::mem::replace(&mut peer.ws, Ws::Dead)
        }
        Err(HandshakeError::Interrupted(mid)) => Ws::Handshaking(mid),
        Err(HandshakeError::Failure(e)) => {
            eprintln!("signal_load: WebSocket handshake failed: {e}");
            counters.closed += 1;
            Ws::Dead
        }
    }
}

/// Reads every frame that arrived and hands it to the machine.
fn read(i: usize, peers: &mut [Peer], counters: &mut Counters) {
    let peer = &mut peers[i];
    let Ws::Open(ws) = &mut peer.ws else {
        return;
    };
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => peer.client.handle_frame(Instant::now(), text.as_str()),
            Ok(Message::Close(_)) => {
                counters.closed += 1;
                peer.ws = Ws::Dead;
                return;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                eprintln!("signal_load: connection {i}: {e}");
                counters.closed += 1;
                peer.ws = Ws::Dead;
                return;
            }
        }
    }
    // Writable: push out what an earlier send left in tungstenite's buffer.
    match ws.flush() {
        Ok(()) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => {
            counters.closed += 1;
            peer.ws = Ws::Dead;
        }
    }
}

/// Writes every frame the machine queued.
fn flush(peer: &mut Peer, counters: &mut Counters) {
    let Ws::Open(ws) = &mut peer.ws else {
        return;
    };
    while let Some(frame) = peer.client.poll_frame() {
        match ws.send(Message::text(frame)) {
            Ok(()) => {}
            // Queued in tungstenite's buffer; flushed when the socket is writable.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("signal_load: send: {e}");
                counters.closed += 1;
                peer.ws = Ws::Dead;
                return;
            }
        }
    }
}

/// Handles the machine's events: answers offers at once, completes our own.
fn drain(
    i: usize,
    peers: &mut [Peer],
    counters: &mut Counters,
    pending: &mut HashMap<u64, Pending>,
) {
    while let Some(event) = peers[i].client.poll_event() {
        match event {
            Event::Authenticated { .. } => {
                peers[i].authenticated = true;
                counters.authenticated += 1;
            }
            Event::Offer {
                session,
                description,
                ..
            } => {
                let tag = seq_of(&description);
                if let Some(p) = tag.and_then(|s| pending.get(&s)) {
                    counters.forward.push(p.sent.elapsed());
                }
                let answer = description_for_answer(tag.unwrap_or(0));
                let _ = peers[i].client.answer(session, answer);
            }
            Event::Answer { description, .. } => {
                if let Some(p) = seq_of(&description).and_then(|s| pending.remove(&s)) {
                    counters.round_trip.push(p.sent.elapsed());
                    counters.answered += 1;
                    peers[p.from].busy = false;
                }
            }
            Event::Error { request, .. } => {
                counters.errors += 1;
                // A refused offer frees its sender.
                if request.is_some() {
                    let from_here: Vec<u64> = pending
                        .iter()
                        .filter(|(_, p)| p.from == i)
                        .map(|(s, _)| *s)
                        .collect();
                    for s in from_here {
                        pending.remove(&s);
                    }
                    peers[i].busy = false;
                }
            }
            Event::SessionClosed { .. } => counters.errors += 1,
            Event::Failed { code } => panic!("signal_load: client {i} failed: {code:?}"),
            _ => {}
        }
    }
    flush(&mut peers[i], counters);
}

/// An offer tagged with its sequence number in the check username fragment.
fn description(seq: u64) -> Description {
    Description {
        candidates: vec![Candidate {
            kind: CandidateKind::Host,
            addr: ([192, 0, 2, 1], 40_000).into(),
            priority: (126 << 24) | (65_535 << 8) | 255,
            related: None,
        }],
        nat: None,
        transports: vec![Transport::Quic, Transport::Kcp],
        credentials: Credentials {
            ufrag: format!("o{seq:016x}"),
            pwd: "0123456789abcdefghijklmnopqrstuv".into(),
        },
        service: 1,
        seal: None,
        quic: None,
        rtc: None,
    }
}

/// The answer carries the offer's sequence number back.
fn description_for_answer(seq: u64) -> Description {
    description(seq)
}

fn seq_of(description: &Description) -> Option<u64> {
    let hex = description.credentials.ufrag.strip_prefix('o')?;
    u64::from_str_radix(hex, 16).ok()
}

fn wait_listening(addr: SocketAddr, fogd: &mut ChildGuard) {
    let deadline = Instant::now() + STUCK;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if fogd.try_wait().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("fogd did not listen on {addr}\n{}", fogd.output_text());
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    })
}

/// A small deterministic generator for picking pairs (the run is a measurement, not a test).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}
