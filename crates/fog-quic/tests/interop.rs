//! Interop with an independent QUIC stack, aioquic 1.7.2 (PyPI, in the venv `.ci/run` installs at
//! `$FOG_PEERS_DIR/venv`, default `~/.cache/fogconnect-peers/venv`), on real UDP sockets on
//! 127.0.0.1 with ports of our own (port 0), each bounded in time, the child killed at the end.
//!
//! Both directions, each moving 1 MiB over one bidirectional stream with our ALPN `fog/7`:
//! we dial aioquic and it echoes; aioquic dials us and we echo. Each side authenticates the other
//! by its Ed25519 certificate key: we expect the key aioquic prints, and aioquic compares our
//! certificate's key with our `PeerId` (script: `tests/interop/aioquic_peer.py`).

// Tests read the wall clock: these run on real sockets.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fog_quic::{Config, ConnHandle, Endpoint, Event, Read, StreamError, StreamId, StreamKind};
use fog_signal::{KeyPair, PeerId};
use fog_test_support::{ChildGuard, peers_python, scratch_file, skip_or_fail};
use sha2::{Digest, Sha256};

const SERVICE: u16 = 7;
const ALPN: &str = "fog/7";
const MIB: usize = 1024 * 1024;
/// Each test's own bound.
const TEST_LIMIT: Duration = Duration::from_secs(25);
const PEER: &str = include_str!("interop/aioquic_peer.py");

/// The venv's Python if it has aioquic 1.7.2, or `None` after saying why (skip or fail).
fn aioquic(test: &str) -> Option<PathBuf> {
    let python = peers_python();
    let ok = python.is_file()
        && Command::new(&python)
            .args([
                "-c",
                "import aioquic, sys; sys.exit(aioquic.__version__ != '1.7.2')",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "no aioquic 1.7.2 in {} (run `bash .ci/run apt`, which installs the Python peers)",
        python.display()
    );
    skip_or_fail(test, &why, "FOG_REQUIRE_INTEROP");
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_from_hex(text: &str) -> PeerId {
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex key");
    }
    PeerId::from_bytes(key)
}

/// Waits for the child to print a line starting with `prefix`, returning the rest.
fn wait_line(child: &mut ChildGuard, prefix: &str) -> String {
    let started = Instant::now();
    loop {
        // Only whole lines: the child's print may be read while it is half written.
        let text = child.stdout_text();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(rest) = complete
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        {
            return rest;
        }
        if child.try_wait().is_some() || started.elapsed() > Duration::from_secs(10) {
            panic!("aioquic did not say {prefix:?}\n{}", child.output_text());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Our endpoint on a real socket.
struct Driver {
    socket: UdpSocket,
    ep: Endpoint,
    out: Vec<u8>,
    inbound: Vec<u8>,
}

impl Driver {
    fn new(config: Config, identity: &KeyPair) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let ep = Endpoint::new(config, identity, [42; 32], Instant::now()).unwrap();
        let out = vec![0; ep.config().max_datagram_len()];
        Driver {
            socket,
            ep,
            out,
            inbound: vec![0; 65_535],
        }
    }

    /// One round of the contract: receive what is there (or wait a little), fire timers,
    /// send everything, and return the events.
    fn turn(&mut self) -> Vec<Event> {
        let wait = self
            .ep
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(5))
            .clamp(Duration::from_micros(100), Duration::from_millis(5));
        self.socket.set_read_timeout(Some(wait)).unwrap();
        if let Ok((len, from)) = self.socket.recv_from(&mut self.inbound) {
            self.ep
                .handle_datagram(Instant::now(), from, &self.inbound[..len]);
            // Take whatever else is queued without waiting.
            self.socket.set_nonblocking(true).unwrap();
            while let Ok((len, from)) = self.socket.recv_from(&mut self.inbound) {
                self.ep
                    .handle_datagram(Instant::now(), from, &self.inbound[..len]);
            }
            self.socket.set_nonblocking(false).unwrap();
        }
        if self.ep.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            self.ep.handle_timeout(Instant::now());
        }
        self.flush();
        let mut events = Vec::new();
        while let Some(e) = self.ep.poll_event() {
            events.push(e);
        }
        events
    }

    fn flush(&mut self) {
        while let Some(t) = self.ep.poll_transmit(Instant::now(), &mut self.out) {
            let _ = self.socket.send_to(&self.out[..t.len], t.destination);
        }
    }
}

fn seeded(len: usize) -> Vec<u8> {
    // The same generator as the script's: SHA-256 of a little-endian counter, concatenated.
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn we_dial_aioquic_and_it_echoes_1_mib() {
    let test = "we_dial_aioquic_and_it_echoes_1_mib";
    let Some(python) = aioquic(test) else {
        return;
    };
    let script = scratch_file("aioquic_peer.py");
    std::fs::write(&script, PEER).unwrap();
    let identity = KeyPair::from_seed(&[11; 32]);
    let mut child = ChildGuard::spawn(
        test,
        Command::new(&python).arg(&script).args([
            "server",
            &hex(identity.peer_id().as_bytes()),
            ALPN,
            "30",
        ]),
    )
    .expect("start aioquic");
    let their_key = key_from_hex(wait_line(&mut child, "KEY ").trim());
    let port: u16 = wait_line(&mut child, "PORT ").trim().parse().unwrap();
    let theirs: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut d = Driver::new(Config::default(), &identity);
    let conn =
        d.ep.connect(Instant::now(), theirs, their_key, SERVICE)
            .unwrap();
    let data = seeded(MIB);
    let mut sent = 0;
    let mut finished = false;
    let mut stream: Option<StreamId> = None;
    let mut echoed = Vec::with_capacity(MIB);
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    'run: loop {
        assert!(
            started.elapsed() < TEST_LIMIT,
            "timed out\n{}",
            child.output_text()
        );
        for e in d.turn() {
            match e {
                Event::Connected { peer, service, .. } => {
                    assert_eq!(peer, their_key);
                    assert_eq!(service, SERVICE);
                    stream = Some(d.ep.open(conn, StreamKind::Bidirectional).unwrap());
                }
                Event::Closed { reason, .. } => {
                    panic!("closed: {reason}\n{}", child.output_text())
                }
                _ => {}
            }
        }
        let Some(s) = stream else { continue };
        while sent < data.len() {
            match d.ep.write(conn, s, &data[sent..]) {
                Ok(n) => sent += n,
                Err(StreamError::Blocked) => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        if sent == data.len() && !finished {
            d.ep.finish(conn, s).unwrap();
            finished = true;
        }
        loop {
            match d.ep.read(conn, s, &mut buf) {
                Ok(Read::Data(n)) => echoed.extend_from_slice(&buf[..n]),
                Ok(Read::Finished) => break 'run,
                Err(StreamError::Blocked) => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        d.flush();
    }
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echo differs from what we sent");
    d.ep.close(Instant::now(), conn, 0, b"done").unwrap();
    d.flush();
    let said = wait_line(&mut child, "PEER ");
    assert!(
        said.starts_with("OK fog/7"),
        "aioquic did not accept our key: {said}"
    );
    wait_line(&mut child, "ECHOED ");
    let stats = d.ep.stats(conn).unwrap();
    eprintln!(
        "{test}: 1 MiB echoed in {:?}, rtt {:?}, cwnd {}, lost {}",
        started.elapsed(),
        stats.rtt,
        stats.cwnd,
        stats.lost_packets
    );
    let _ = std::fs::remove_file(&script);
}

#[test]
fn aioquic_dials_us_and_we_echo_1_mib() {
    let test = "aioquic_dials_us_and_we_echo_1_mib";
    let Some(python) = aioquic(test) else {
        return;
    };
    let script = scratch_file("aioquic_peer.py");
    std::fs::write(&script, PEER).unwrap();
    let identity = KeyPair::from_seed(&[12; 32]);
    let mut d = Driver::new(Config::default().with_service(SERVICE), &identity);
    let port = d.socket.local_addr().unwrap().port();
    let mut child = ChildGuard::spawn(
        test,
        Command::new(&python).arg(&script).args([
            "client",
            &port.to_string(),
            &hex(identity.peer_id().as_bytes()),
            ALPN,
            &MIB.to_string(),
            "20",
        ]),
    )
    .expect("start aioquic");
    let their_key = key_from_hex(wait_line(&mut child, "KEY ").trim());

    // Per stream: bytes read but not yet echoed, and whether the peer finished.
    let mut pending: BTreeMap<(ConnHandle, StreamId), (Vec<u8>, bool, bool)> = BTreeMap::new();
    let mut connected = false;
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let status = loop {
        assert!(
            started.elapsed() < TEST_LIMIT,
            "timed out\n{}",
            child.output_text()
        );
        if let Some(status) = child.try_wait() {
            break status;
        }
        for e in d.turn() {
            match e {
                Event::Connected { peer, service, .. } => {
                    assert_eq!(peer, their_key, "the verified peer is aioquic's key");
                    assert_eq!(service, SERVICE);
                    connected = true;
                }
                Event::StreamOpened { conn, stream } => {
                    pending.insert((conn, stream), (Vec::new(), false, false));
                }
                _ => {}
            }
        }
        for (&(conn, stream), (queue, peer_done, we_done)) in pending.iter_mut() {
            while !*peer_done && queue.len() < MIB {
                match d.ep.read(conn, stream, &mut buf) {
                    Ok(Read::Data(n)) => {
                        queue.extend_from_slice(&buf[..n]);
                        total += n;
                    }
                    Ok(Read::Finished) => *peer_done = true,
                    Err(StreamError::Blocked) => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            while !queue.is_empty() {
                match d.ep.write(conn, stream, queue) {
                    Ok(n) => {
                        queue.drain(..n);
                    }
                    Err(StreamError::Blocked) => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            if *peer_done && queue.is_empty() && !*we_done {
                d.ep.finish(conn, stream).unwrap();
                *we_done = true;
            }
        }
        d.flush();
    };
    assert!(
        status.success(),
        "aioquic exited with {status}\n{}",
        child.output_text()
    );
    assert!(connected);
    assert_eq!(total, MIB);
    let want = hex(&Sha256::digest(seeded(MIB)));
    let said = child.stdout_text();
    assert!(said.lines().any(|l| l == "PEER OK"), "{said}");
    assert!(said.lines().any(|l| l == format!("DONE {want}")), "{said}");
    eprintln!("{test}: 1 MiB echoed in {:?}", started.elapsed());
    let _ = std::fs::remove_file(&script);
}
