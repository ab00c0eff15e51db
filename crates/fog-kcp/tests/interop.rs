//! Interop on real UDP sockets on 127.0.0.1 (port 0, ports of our own) against two independent
//! KCP implementations: the `kcp` crate (the Rust port, in a thread) and the reference C
//! `ikcp.c` through PyPI `siokcp` 0.0.5 (a child process in the venv `.ci/run` installs at
//! `$FOG_PEERS_DIR/venv`, default `~/.cache/fogconnect-peers/venv`).
//!
//! Each runs both ways — we send and they echo, they send and we echo — at 0 % and 5 % loss.
//! Loss is injected on our side only, in both directions: a seeded generator drops 5 % of the
//! datagrams we would send and 5 % of those we receive, before our machine sees them. The sender
//! checks every echoed message against what it sent (equality, in order) and both sides hash the
//! whole transfer (SHA-256), 400 KiB of messages of 1 to 8000 bytes (up to 6 fragments each).
//! With C ikcp the same runs once more in stream mode on both sides (ikcp.c's `stream = 1`), at
//! 5 % loss, where the echo is checked byte for byte since boundaries are not kept.

// Tests read the wall clock: these run on real sockets.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fog_kcp::{Config, Kcp, Mode, SendError};
use fog_test_support::{ChildGuard, SplitMix, peers_python, scratch_file, skip_or_fail};
use sha2::{Digest, Sha256};

const CONV: u32 = 0x4b43_5021;
const TOTAL: usize = 400 * 1024;
const MAX_MESSAGE: usize = 8000;
/// Each test's own bound, well under 30 s.
const TEST_LIMIT: Duration = Duration::from_secs(25);

/// The sending side's traffic: messages from a seed, checked as their echoes come back.
struct Traffic {
    rng: SplitMix,
    queued: usize,
    echoed: usize,
    pending: VecDeque<Vec<u8>>,
    /// Stream mode: bytes of `pending`'s front already echoed (boundaries are not kept).
    stream_at: Option<usize>,
    sent_hash: Sha256,
}

impl Traffic {
    fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix(seed),
            queued: 0,
            echoed: 0,
            pending: VecDeque::new(),
            stream_at: None,
            sent_hash: Sha256::new(),
        }
    }

    fn stream(seed: u64) -> Self {
        Self {
            stream_at: Some(0),
            ..Self::new(seed)
        }
    }

    /// The next message to send, if any remain.
    fn next_message(&mut self) -> Option<Vec<u8>> {
        if self.queued >= TOTAL {
            return None;
        }
        let len = (1 + self.rng.next_u64() as usize % MAX_MESSAGE).min(TOTAL - self.queued);
        let message: Vec<u8> = self.rng.bytes(len);
        Some(message)
    }

    fn sent(&mut self, message: Vec<u8>) {
        self.queued += message.len();
        self.sent_hash.update(&message);
        self.pending.push_back(message);
    }

    fn echo(&mut self, message: &[u8]) -> Result<(), String> {
        if let Some(at) = &mut self.stream_at {
            // Stream mode: the echo is the next bytes sent, however they are cut.
            let mut rest = message;
            while !rest.is_empty() {
                let Some(front) = self.pending.front() else {
                    return Err("echo of bytes never sent".into());
                };
                let n = (front.len() - *at).min(rest.len());
                if front[*at..*at + n] != rest[..n] {
                    return Err(format!("stream echo differs after {} bytes", self.echoed));
                }
                self.echoed += n;
                rest = &rest[n..];
                *at += n;
                if *at == front.len() {
                    self.pending.pop_front();
                    *at = 0;
                }
            }
            return Ok(());
        }
        match self.pending.pop_front() {
            Some(expected) if expected == message => {
                self.echoed += message.len();
                Ok(())
            }
            Some(expected) => Err(format!(
                "echo mismatch after {} bytes: got {} bytes, expected {}",
                self.echoed,
                message.len(),
                expected.len()
            )),
            None => Err("echo of a message never sent".into()),
        }
    }

    fn done(&self) -> bool {
        self.echoed == TOTAL
    }
}

/// What our side does with the conversation.
enum Ours {
    /// Sends the traffic and checks the echoes.
    Send(Traffic),
    /// Echoes every message; hashes what it received.
    Echo {
        backlog: VecDeque<Vec<u8>>,
        received: usize,
        hash: Sha256,
    },
}

impl Ours {
    fn echo() -> Self {
        Self::Echo {
            backlog: VecDeque::new(),
            received: 0,
            hash: Sha256::new(),
        }
    }

    fn pump(&mut self, kcp: &mut Kcp) -> Result<(), String> {
        match self {
            Self::Send(traffic) => {
                while kcp.waiting_to_send() < 256 {
                    let Some(message) = traffic.next_message() else {
                        break;
                    };
                    kcp.send(&message).map_err(|e| e.to_string())?;
                    traffic.sent(message);
                }
            }
            Self::Echo { backlog, .. } => {
                while let Some(message) = backlog.front() {
                    match kcp.send(message) {
                        Ok(()) => {
                            backlog.pop_front();
                        }
                        Err(SendError::Blocked { .. }) => break,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
        Ok(())
    }

    fn on_message(&mut self, message: &[u8]) -> Result<(), String> {
        match self {
            Self::Send(traffic) => traffic.echo(message),
            Self::Echo {
                backlog,
                received,
                hash,
            } => {
                *received += message.len();
                hash.update(message);
                backlog.push_back(message.to_vec());
                Ok(())
            }
        }
    }
}

/// Drives our machine on `socket` until `stop` says so, dropping `loss` % each way.
fn drive(
    socket: &UdpSocket,
    peer: SocketAddr,
    kcp: &mut Kcp,
    ours: &mut Ours,
    loss: u64,
    seed: u64,
    mut stop: impl FnMut(&Ours) -> Result<bool, String>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut rng = SplitMix(seed);
    let mut out = vec![0u8; 2048];
    let mut inbound = vec![0u8; 65_536];
    let mut message = vec![0u8; kcp.max_message_len()];
    loop {
        if started.elapsed() > TEST_LIMIT {
            return Err(format!("timed out; our stats: {:?}", kcp.stats()));
        }
        ours.pump(kcp)?;
        let now = Instant::now();
        kcp.handle_timeout(now);
        while let Some(n) = kcp.poll_transmit(now, &mut out) {
            if !rng.chance(loss as f64) {
                socket.send_to(&out[..n], peer).map_err(|e| e.to_string())?;
            }
        }
        while kcp.poll_event().is_some() {}
        while let Some(n) = kcp.recv(&mut message).map_err(|e| e.to_string())? {
            ours.on_message(&message[..n])?;
        }
        if stop(ours)? {
            return Ok(());
        }
        let wait = kcp
            .poll_timeout()
            .map_or(Duration::from_millis(10), |at| {
                at.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(10));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let mut first = true;
        loop {
            match socket.recv_from(&mut inbound) {
                Ok((n, from)) => {
                    if from == peer && !rng.chance(loss as f64) {
                        kcp.handle_packet(Instant::now(), &inbound[..n])
                            .map_err(|e| format!("the peer's datagram was refused: {e}"))?;
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
            if first {
                socket.set_nonblocking(true).map_err(|e| e.to_string())?;
                first = false;
            }
        }
        socket.set_nonblocking(false).map_err(|e| e.to_string())?;
    }
}

/// Our side sends `traffic` and checks every echo; returns the SHA-256 of what it sent.
fn send_and_check(
    socket: &UdpSocket,
    peer: SocketAddr,
    kcp: &mut Kcp,
    traffic: Traffic,
    loss: u64,
    seed: u64,
) -> Result<Vec<u8>, String> {
    let mut ours = Ours::Send(traffic);
    drive(socket, peer, kcp, &mut ours, loss, seed, |o| {
        Ok(matches!(o, Ours::Send(t) if t.done()))
    })?;
    let Ours::Send(traffic) = ours else {
        unreachable!()
    };
    Ok(traffic.sent_hash.finalize().to_vec())
}

/// Our side echoes until `finished`; checks that the whole transfer came and returns its
/// SHA-256.
fn echo_until(
    socket: &UdpSocket,
    peer: SocketAddr,
    kcp: &mut Kcp,
    loss: u64,
    seed: u64,
    mut finished: impl FnMut() -> Result<bool, String>,
) -> Result<Vec<u8>, String> {
    let mut ours = Ours::echo();
    drive(socket, peer, kcp, &mut ours, loss, seed, |_| finished())?;
    let Ours::Echo { received, hash, .. } = ours else {
        unreachable!()
    };
    if received != TOTAL {
        return Err(format!("echoed {received} of {TOTAL} bytes"));
    }
    Ok(hash.finalize().to_vec())
}

/// Prints our counters and, where loss was injected, checks that our machine repaired it.
fn report(test: &str, loss: u64, kcp: &Kcp) {
    let s = kcp.stats();
    eprintln!("{test}: our stats {s:?}");
    if loss > 0 {
        assert!(
            s.segments_resent + s.segments_fast_resent > 0 || s.segments_duplicate > 0,
            "{test}: loss injected but no repair seen: {s:?}"
        );
    }
}

fn loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

// ---------------------------------------------------------------------------------------------
// The `kcp` crate, in a thread of its own.

/// The `kcp` crate's output: datagrams to the peer from its socket.
struct UdpOut {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
}

impl Write for UdpOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send_to(buf, self.peer)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs the `kcp` crate on its own socket: echoing until `stop`, or sending `seed`'s traffic
/// and checking echoes. Returns the SHA-256 of what it sent or received.
fn kcp_crate_peer(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    send_seed: Option<u64>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<u8>, String> {
    let mut kcp = kcp::Kcp::new(
        CONV,
        UdpOut {
            socket: socket.clone(),
            peer,
        },
    );
    kcp.set_nodelay(true, 10, 2, true);
    kcp.set_wndsize(128, 128);
    let start = Instant::now();
    let mut traffic = send_seed.map(Traffic::new);
    let mut hash = Sha256::new();
    let mut inbound = vec![0u8; 65_536];
    let mut message = vec![0u8; 256 * 1024];
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|e| e.to_string())?;
    let mut done_at: Option<Instant> = None;
    loop {
        if start.elapsed() > TEST_LIMIT || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(traffic) = &mut traffic {
            while kcp.wait_snd() < 256 {
                let Some(m) = traffic.next_message() else {
                    break;
                };
                kcp.send(&m).map_err(|e| e.to_string())?;
                traffic.sent(m);
            }
        }
        let now_ms = start.elapsed().as_millis() as u32;
        kcp.update(now_ms).map_err(|e| e.to_string())?;
        // Everything that arrived (waiting up to the read timeout for the first).
        while let Ok((n, from)) = socket.recv_from(&mut inbound) {
            if from == peer {
                // The crate's own errors on our datagrams would be an interop failure.
                kcp.input(&inbound[..n])
                    .map_err(|e| format!("kcp crate refused our datagram: {e}"))?;
            }
            socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        socket.set_nonblocking(false).map_err(|e| e.to_string())?;
        while let Ok(n) = kcp.recv(&mut message) {
            match &mut traffic {
                Some(traffic) => traffic.echo(&message[..n])?,
                None => {
                    hash.update(&message[..n]);
                    kcp.send(&message[..n]).map_err(|e| e.to_string())?;
                }
            }
        }
        if let Some(traffic) = &traffic {
            if traffic.done() {
                // Linger a moment, acknowledging the last echoes for the other side.
                let at = *done_at.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_millis(500) {
                    return Ok(traffic.sent_hash.clone().finalize().to_vec());
                }
            }
        }
    }
    match traffic {
        Some(t) if !t.done() => Err(format!(
            "kcp crate sender: {} of {TOTAL} bytes echoed",
            t.echoed
        )),
        Some(t) => Ok(t.sent_hash.finalize().to_vec()),
        None => Ok(hash.finalize().to_vec()),
    }
}

fn with_kcp_crate(test: &str, we_send: bool, loss: u64) {
    let ours_socket = loopback();
    let theirs = Arc::new(loopback());
    let ours_addr = ours_socket.local_addr().unwrap();
    let theirs_addr = theirs.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let stop = stop.clone();
        let seed = (!we_send).then_some(77);
        thread::spawn(move || kcp_crate_peer(theirs, ours_addr, seed, stop))
    };
    let mut kcp = Kcp::new(CONV, Config::fast(), Instant::now());
    let result = if we_send {
        let r = send_and_check(
            &ours_socket,
            theirs_addr,
            &mut kcp,
            Traffic::new(99),
            loss,
            loss + 1,
        );
        stop.store(true, Ordering::Relaxed);
        let theirs_hash = peer.join().expect("peer thread").expect("kcp crate echo");
        r.map(|ours_hash| assert_eq!(ours_hash, theirs_hash))
    } else {
        let r = echo_until(&ours_socket, theirs_addr, &mut kcp, loss, loss + 2, || {
            Ok(peer.is_finished())
        });
        stop.store(true, Ordering::Relaxed);
        let theirs_hash = peer.join().expect("peer thread").expect("kcp crate sender");
        r.map(|ours_hash| assert_eq!(ours_hash, theirs_hash))
    };
    if let Err(e) = result {
        panic!("{test}: {e}");
    }
    report(test, loss, &kcp);
}

/// One test per (peer, direction, loss) case: `name: driver(we_send, loss %);`.
macro_rules! interop_tests {
    ($($name:ident: $driver:ident($we_send:expr, $loss:expr);)*) => {$(
        #[test]
        fn $name() {
            $driver(stringify!($name), $we_send, $loss);
        }
    )*};
}

interop_tests! {
    kcp_crate_echoes_our_messages: with_kcp_crate(true, 0);
    kcp_crate_echoes_our_messages_5_percent_loss: with_kcp_crate(true, 5);
    we_echo_kcp_crate_messages: with_kcp_crate(false, 0);
    we_echo_kcp_crate_messages_5_percent_loss: with_kcp_crate(false, 5);
    ikcp_echoes_our_messages: with_ikcp(true, 0);
    ikcp_echoes_our_messages_5_percent_loss: with_ikcp(true, 5);
    we_echo_ikcp_messages: with_ikcp(false, 0);
    we_echo_ikcp_messages_5_percent_loss: with_ikcp(false, 5);
    ikcp_echoes_our_stream_5_percent_loss: with_ikcp_stream(true, 5);
    we_echo_ikcp_stream_5_percent_loss: with_ikcp_stream(false, 5);
}

// ---------------------------------------------------------------------------------------------
// The C ikcp.c through siokcp, in a Python child process.

/// The Python side: siokcp's `KCPConnection` (ikcp.c itself) on a UDP socket, `ikcp_nodelay(1,
/// 10, 2, 1)` and windows of 128 like ours, message or stream mode (argument 6). `echo` echoes every message until killed; `send`
/// sends `total` bytes of messages of 1..=8000 random bytes, checks each echo, prints
/// `DONE <sha256>`, lingers a second to acknowledge and exits 0.
const PY_PEER: &str = r#"
import hashlib, random, select, socket, sys, time
from collections import deque
from siokcp import KCPConnection

mode, conv, peer_port, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
stream = sys.argv[6] == "stream"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.setblocking(False)
peer = ("127.0.0.1", peer_port)

def output(data):
    sock.sendto(data, peer)
    return 0

kcp = KCPConnection(conv, output, lambda line: None)
kcp.nodelay(1, 10, 2, 1)
kcp.wndsize(128, 128)
if stream:
    kcp.stream = 1
print("PORT", sock.getsockname()[1], flush=True)
t0 = time.monotonic()
def now():
    return int((time.monotonic() - t0) * 1000)

rng = random.Random(seed)
pending = deque()
sent_bytes = bytearray()
queued = 0
echoed = 0
sent_hash = hashlib.sha256()
deadline = time.monotonic() + 25
done_at = None
while time.monotonic() < deadline:
    if mode == "send":
        while queued < total and kcp.waitsnd() < 256:
            n = min(rng.randint(1, 8000), total - queued)
            msg = rng.randbytes(n)
            kcp.send(msg)
            pending.append(msg)
            sent_bytes += msg
            queued += n
            sent_hash.update(msg)
    kcp.update(now())
    wait = (kcp.check(now()) - now()) / 1000.0
    readable, _, _ = select.select([sock], [], [], min(max(wait, 0.0), 0.01))
    if readable:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            kcp.receive_data(data)
    while True:
        msg = kcp.next_event()
        if msg is None:
            break
        if mode == "echo":
            kcp.send(msg)
        else:
            if stream:
                # Boundaries are not kept: the echo is the next bytes sent.
                expected = bytes(sent_bytes[echoed:echoed + len(msg)])
            else:
                expected = pending.popleft() if pending else None
            if msg != expected:
                print("MISMATCH after", echoed, flush=True)
                sys.exit(2)
            echoed += len(msg)
    if mode == "send" and echoed == total:
        if done_at is None:
            done_at = time.monotonic()
            print("DONE", sent_hash.hexdigest(), flush=True)
        elif time.monotonic() - done_at > 1.0:
            sys.exit(0)
print("TIMEOUT queued", queued, "echoed", echoed, flush=True)
sys.exit(3)
"#;

fn with_ikcp(test: &str, we_send: bool, loss: u64) {
    ikcp_case(test, we_send, loss, Mode::Message);
}

/// The same in stream mode on both sides (ikcp.c's `stream = 1`).
fn with_ikcp_stream(test: &str, we_send: bool, loss: u64) {
    ikcp_case(test, we_send, loss, Mode::Stream);
}

fn ikcp_case(test: &str, we_send: bool, loss: u64, kcp_mode: Mode) {
    let python = peers_python();
    let has_siokcp = python.is_file()
        && Command::new(&python)
            .args(["-c", "import siokcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !has_siokcp {
        let why = format!(
            "no siokcp in {} (run `bash .ci/run apt`, which installs the Python peers)",
            python.display()
        );
        skip_or_fail(test, &why, "FOG_REQUIRE_INTEROP");
        return;
    }
    let script = scratch_file("ikcp_peer.py");
    std::fs::write(&script, PY_PEER).unwrap();

    let socket = loopback();
    let ours_port = socket.local_addr().unwrap().port();
    let mode = if we_send { "echo" } else { "send" };
    // ChildGuard kills the peer when the test ends, passing or not.
    let mut child = ChildGuard::spawn(
        test,
        Command::new(&python).arg(&script).args([
            mode,
            &CONV.to_string(),
            &ours_port.to_string(),
            &TOTAL.to_string(),
            "1234",
            if kcp_mode == Mode::Stream {
                "stream"
            } else {
                "message"
            },
        ]),
    )
    .expect("start the Python peer");
    let started = Instant::now();
    let port: u16 = loop {
        let said = child.stdout_text();
        if let Some(port) = said
            .lines()
            .find_map(|l| l.strip_prefix("PORT ").and_then(|p| p.parse().ok()))
        {
            break port;
        }
        if child.try_wait().is_some() || started.elapsed() > Duration::from_secs(10) {
            panic!("the Python peer did not start\n{}", child.output_text());
        }
        thread::sleep(Duration::from_millis(10));
    };
    let theirs: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut kcp = Kcp::new(CONV, Config::fast().with_mode(kcp_mode), Instant::now());
    if we_send {
        let traffic = match kcp_mode {
            Mode::Message => Traffic::new(4321),
            Mode::Stream => Traffic::stream(4321),
        };
        if let Err(e) = send_and_check(&socket, theirs, &mut kcp, traffic, loss, loss + 3) {
            panic!("ikcp echo, loss {loss} %: {e}\n{}", child.output_text());
        }
    } else {
        let r = echo_until(&socket, theirs, &mut kcp, loss, loss + 4, || {
            match child.try_wait() {
                Some(status) if status.success() => Ok(true),
                Some(status) => Err(format!("the ikcp sender exited with {status}")),
                None => Ok(false),
            }
        });
        let hash = r
            .unwrap_or_else(|e| panic!("ikcp sender, loss {loss} %: {e}\n{}", child.output_text()));
        let said = child.stdout_text();
        let ours_hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            said.lines().any(|l| l == format!("DONE {ours_hex}")),
            "the ikcp sender's hash differs from what we echoed: {said:?}"
        );
    }
    report(test, loss, &kcp);
    drop(child);
    let _ = std::fs::remove_file(&script);
}
