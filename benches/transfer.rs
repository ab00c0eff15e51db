//! A file's worth of bytes between two nodes on loopback over a transport, next to its anchor
//! driven the same way.
//!
//! ```text
//! cargo bench -p fog-benches --bench transfer -- --transport kcp --size 256MiB --json
//! ```
//!
//! fogd (STUN and signaling) runs in a process of its own; the two nodes are fog-runtime
//! `Runtime`s in this process (each its own UDP socket, threads and keys). Node A connects to
//! B over the transport and sends `--size` bytes of a seeded pattern as messages of
//! `--message` bytes (default 60,000), waiting for `Writable` whenever the stream says
//! `Blocked`; B hashes what arrives (SHA-256) and the sender's hash must match. The clock runs
//! from the first send to B's last byte; CPU is this process's user + system time over the
//! same span (both nodes, the hashing, and the pattern generation).
//!
//! The anchor for KCP is the `kcp` crate (the Rust port of ikcp), with the same settings
//! (nodelay, 10 ms interval, resend 2, no congestion window, 128-segment windows, the same MTU)
//! on two UDP sockets on loopback, one thread each, moving the same bytes in the same messages
//! and hashing them the same way. It has no sealing, no signaling and no path selection, so
//! it is what KCP alone costs here. The anchor for QUIC is the `quinn` crate's tokio endpoints
//! (`anchors/quinn.rs`).
//!
//! The anchor for uTP is librqbit-utp (its default options, on a two-worker tokio runtime) on
//! two UDP sockets on loopback, moving the same bytes in the same messages (`write_all` of
//! each) and hashing them the same way: what a uTP stack alone costs here, without our seal,
//! signaling or sans-IO driving.
//!
//! The anchor for WebRTC data channels is the `str0m` crate (the stack under our
//! `Transport::Rtc`) driven as its own examples drive it (`anchors/str0m.rs`).
//!
//! It prints one JSON object with `--json`: `transport`, `bytes`, `secs`, `mib_per_s`, `cpu_s`,
//! `hash_ok`, `anchor_mib_per_s`, `anchor_cpu_s`, `anchor_hash_ok`. Loopback only; it stops by
//! itself (a 10-minute limit per side).

// A measurement reads the clock.
#![allow(clippy::disallowed_methods)]

#[path = "anchors/quinn.rs"]
mod quinn_anchor;
#[path = "anchors/str0m.rs"]
mod str0m_anchor;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fog_benches::Pattern;
use fog_runtime::{Runtime, RuntimeConfig, RuntimeError};
use fog_test_support::A1;
use fogconnect::{AcceptPolicy, Event, KeyPair, NodeConfig, SendError, Transport};
use sha2::{Digest, Sha256};

/// The longest either side of a run may take.
const LIMIT: Duration = Duration::from_secs(600);
/// The anchor's MTU: the one our KCP runs with inside the seal (`MAX_DATAGRAM - 1`).
const KCP_MTU: usize = fogconnect::MAX_DATAGRAM - 1;

struct Options {
    transport: Transport,
    size: u64,
    message: usize,
    json: bool,
    anchor: bool,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            transport: Transport::Kcp,
            size: 64 << 20,
            message: 60_000,
            json: false,
            anchor: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().expect("a value");
            match arg.as_str() {
                "--transport" => o.transport = Transport::from(value()),
                "--size" => o.size = fog_benches::parse_size(&value()),
                "--message" => o.message = value().parse().expect("--message BYTES"),
                "--json" => o.json = true,
                "--no-anchor" => o.anchor = false,
                "--bench" => {}
                other => panic!(
                    "unknown argument {other}; known: --transport kcp|utp --size 256MiB \
                     --message N --json --no-anchor"
                ),
            }
        }
        o
    }
}

/// This process's CPU time so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // CLK_TCK is 100 on Linux unless the kernel says otherwise.
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

struct Run {
    secs: f64,
    cpu_s: f64,
    hash_ok: bool,
}

fn main() {
    let o = Options::parse();
    let ours = through_nodes(&o);
    let anchor = match o.transport {
        _ if !o.anchor => None,
        Transport::Kcp => Some(("kcp crate", kcp_crate(&o))),
        Transport::Utp => Some(("librqbit-utp", librqbit_utp(&o))),
        Transport::Quic => Some(("quinn crate", quinn_anchor::quinn_crate(&o))),
        Transport::Rtc => Some(("str0m crate", str0m_anchor::str0m_rtc(&o))),
        _ => None,
    };
    let mib = o.size as f64 / f64::from(1 << 20);
    let name = String::from(o.transport.clone());
    let rate = |r: &Run| mib / r.secs;
    if o.json {
        let (a_rate, a_cpu, a_ok) = anchor.as_ref().map(|(_, a)| a).map_or(
            ("null".to_owned(), "null".to_owned(), "null".to_owned()),
            |a| {
                (
                    format!("{:.1}", rate(a)),
                    format!("{:.3}", a.cpu_s),
                    a.hash_ok.to_string(),
                )
            },
        );
        println!(
            "{{\"transport\":\"{name}\",\"bytes\":{},\"secs\":{:.3},\"mib_per_s\":{:.1},\
             \"cpu_s\":{:.3},\"hash_ok\":{},\"anchor_mib_per_s\":{a_rate},\"anchor_cpu_s\":{a_cpu},\
             \"anchor_hash_ok\":{a_ok}}}",
            o.size,
            ours.secs,
            rate(&ours),
            ours.cpu_s,
            ours.hash_ok
        );
    } else {
        println!(
            "transfer over {name}: {:.0} MiB in {:.2} s, {:.1} MiB/s, {:.2} CPU s, hash {}",
            mib,
            ours.secs,
            rate(&ours),
            ours.cpu_s,
            if ours.hash_ok { "ok" } else { "MISMATCH" }
        );
        if let Some((anchor_name, a)) = &anchor {
            println!(
                "anchor ({anchor_name}): {:.2} s, {:.1} MiB/s, {:.2} CPU s, hash {}",
                a.secs,
                rate(a),
                a.cpu_s,
                if a.hash_ok { "ok" } else { "MISMATCH" }
            );
        }
    }
    if !ours.hash_ok || anchor.is_some_and(|(_, a)| !a.hash_ok) {
        std::process::exit(1);
    }
}

/// fogd on free loopback ports: the child, its STUN address and the ws URL.
fn fogd() -> (fog_test_support::ChildGuard, SocketAddr, String) {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the bench's own path"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let extra = |_| vec!["--stun-no-rate-limit".to_owned()];
    let wait = Duration::from_secs(20);
    let (child, stun, signal) =
        fog_test_support::fogd_for_nodes(&exe, "fogd-transfer", extra, wait);
    (child, stun, format!("ws://{signal}/ws"))
}

fn node(seed: u8, stun: SocketAddr, url: &str) -> (Runtime, Receiver<Event>) {
    let key = KeyPair::from_seed(&[seed; 32]);
    let mut config = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 0);
    config.accept = AcceptPolicy::All;
    let (tx, rx) = mpsc::channel();
    let runtime = Runtime::start_with_callback(
        RuntimeConfig::new(config, url.parse().expect("a ws:// URL")),
        move |e| {
            let _ = tx.send(e);
        },
    )
    .expect("a node starts");
    (runtime, rx)
}

/// The first event `want` picks within [`LIMIT`].
fn wait_for<T>(events: &Receiver<Event>, mut want: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.recv_timeout(left).expect("the awaited event");
        if let Some(v) = want(&event) {
            return v;
        }
    }
}

fn through_nodes(o: &Options) -> Run {
    let (_fogd, stun, url) = fogd();
    let (a, a_events) = node(1, stun, &url);
    let (b, b_events) = node(2, stun, &url);
    for events in [&a_events, &b_events] {
        wait_for(events, |e| matches!(e, Event::Ready { .. }).then_some(()));
    }
    let (ha, hb) = (a.handle(), b.handle());
    let id = ha
        .connect_with(hb.peer_id(), 1, o.transport.clone())
        .expect("connect");
    wait_for(&a_events, |e| {
        matches!(e, Event::Connected { id: c, .. } if *c == id).then_some(())
    });
    // B hashes on a thread of its own.
    let size = o.size;
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let deadline = Instant::now() + LIMIT;
        while got < size {
            let left = deadline.saturating_duration_since(Instant::now());
            match b_events.recv_timeout(left) {
                Ok(Event::Data { data, .. }) => {
                    got += data.len() as u64;
                    hash.update(&data);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        (Instant::now(), got, hash.finalize())
    });
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut pattern = Pattern(7);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; o.message];
    let mut left = o.size;
    while left > 0 {
        let n = (o.message as u64).min(left) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        loop {
            match ha.send(id, &buf[..n]) {
                Ok(()) => break,
                Err(RuntimeError::Send(SendError::Blocked)) => {
                    // Wait for room (or a moment, should the event have come already).
                    let _ = a_events.recv_timeout(Duration::from_millis(5));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        left -= n as u64;
    }
    let (end, got, theirs) = receiver.join().expect("the receiver");
    let cpu_s = cpu_seconds() - cpu0;
    drop(a);
    drop(b);
    Run {
        secs: end.duration_since(start).as_secs_f64(),
        cpu_s,
        hash_ok: got == o.size && theirs == hash.finalize(),
    }
}

/// The kcp crate's output: the socket and the peer.
struct Out(UdpSocket, SocketAddr);

impl io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_to(buf, self.1)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn anchor_kcp(socket: &UdpSocket, peer: SocketAddr) -> kcp::Kcp<Out> {
    let mut k = kcp::Kcp::new(1, Out(socket.try_clone().expect("a socket clone"), peer));
    k.set_nodelay(true, 10, 2, true);
    k.set_wndsize(128, 128);
    k.set_mtu(KCP_MTU).expect("an MTU kcp takes");
    k
}

/// Milliseconds since `epoch`, as the kcp crate's clock.
fn ms(epoch: Instant) -> u32 {
    epoch.elapsed().as_millis() as u32
}

fn kcp_crate(o: &Options) -> Run {
    let a = UdpSocket::bind((A1, 0)).expect("a socket");
    let b = UdpSocket::bind((A1, 0)).expect("a socket");
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    let epoch = Instant::now();
    let size = o.size;
    let receiver = std::thread::spawn(move || {
        let mut k = anchor_kcp(&b, a_addr);
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let mut datagram = [0u8; 2048];
        let mut message = vec![0u8; 1 << 20];
        let deadline = Instant::now() + LIMIT;
        while got < size && Instant::now() < deadline {
            if let Ok(n) = b.recv(&mut datagram) {
                let _ = k.input(&datagram[..n]);
                while let Ok(n) = b.recv(&mut datagram) {
                    let _ = k.input(&datagram[..n]);
                }
            }
            let _ = k.update(ms(epoch));
            while let Ok(n) = k.recv(&mut message) {
                got += n as u64;
                hash.update(&message[..n]);
            }
        }
        (Instant::now(), got, hash.finalize())
    });
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut k = anchor_kcp(&a, b_addr);
    let mut pattern = Pattern(7);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; o.message];
    let mut datagram = [0u8; 2048];
    let mut left = o.size;
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline && (left > 0 || k.wait_snd() > 0) {
        // As our stream: up to 4,096 segments queued.
        while left > 0 && k.wait_snd() < 4_096 {
            let n = (o.message as u64).min(left) as usize;
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            k.send(&buf[..n]).expect("kcp takes the message");
            left -= n as u64;
        }
        let _ = k.update(ms(epoch));
        if let Ok(n) = a.recv(&mut datagram) {
            let _ = k.input(&datagram[..n]);
            while let Ok(n) = a.recv(&mut datagram) {
                let _ = k.input(&datagram[..n]);
            }
        }
        if receiver.is_finished() {
            break;
        }
    }
    let (end, got, theirs) = receiver.join().expect("the receiver");
    Run {
        secs: end.duration_since(start).as_secs_f64(),
        cpu_s: cpu_seconds() - cpu0,
        hash_ok: got == o.size && theirs == hash.finalize(),
    }
}

/// The uTP anchor: librqbit-utp on two loopback sockets, the same messages, hashed alike.
fn librqbit_utp(o: &Options) -> Run {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let size = o.size;
    let message = o.message;
    rt.block_on(async move {
        let any = SocketAddr::from((A1, 0));
        let server = librqbit_utp::UtpSocket::new_udp(any)
            .await
            .expect("a librqbit-utp socket");
        let client = librqbit_utp::UtpSocket::new_udp(any)
            .await
            .expect("a librqbit-utp socket");
        let addr = server.bind_addr();
        let receiver = tokio::spawn(async move {
            let mut stream = server.accept().await.expect("an incoming stream");
            let mut hash = Sha256::new();
            let mut got = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            while got < size {
                match tokio::time::timeout(LIMIT, stream.read(&mut buf)).await {
                    Ok(Ok(n @ 1..)) => {
                        got += n as u64;
                        hash.update(&buf[..n]);
                    }
                    _ => break,
                }
            }
            (Instant::now(), got, hash.finalize())
        });
        let mut stream = client.connect(addr).await.expect("a connected stream");
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let mut pattern = Pattern(7);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; message];
        let mut left = size;
        while left > 0 {
            let n = (message as u64).min(left) as usize;
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            stream
                .write_all(&buf[..n])
                .await
                .expect("librqbit-utp takes the message");
            left -= n as u64;
        }
        let _ = stream.flush().await;
        let (end, got, theirs) = receiver.await.expect("the receiver");
        let cpu_s = cpu_seconds() - cpu0;
        drop(stream);
        Run {
            secs: end.duration_since(start).as_secs_f64(),
            cpu_s,
            hash_ok: got == size && theirs == hash.finalize(),
        }
    })
}
