//! A 64 MiB file between two runtimes over `Transport::Sctp` on real sockets (loopback, through
//! a real fogd for STUN and signaling): A sends a seeded pattern in 60,000-byte messages as
//! fast as the association takes them (waiting for `Writable` after `Blocked`), then closes;
//! B hashes what arrives (SHA-256), and the hashes, the byte count and the close must agree.
//! The same shape as `benches/transfer.rs`, which measures it.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig, RuntimeError};
use fogconnect::{AcceptPolicy, CloseReason, Event, KeyPair, NodeConfig, SendError, Transport};
use sha2::{Digest, Sha256};

const SIZE: u64 = 64 << 20;
const MESSAGE: usize = 60_000;
/// The whole transfer, in a debug build on a loaded machine.
const LIMIT: Duration = Duration::from_secs(300);

/// A seeded pattern (xorshift64), so that a byte misplaced anywhere changes the hash.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[test]
fn a_64_mib_file_arrives_intact_over_sctp() {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the test's own path"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let (_fogd, stun, signal) = fog_test_support::fogd_for_nodes(
        &exe,
        "fogd-sctp-file",
        |_| Vec::new(),
        Duration::from_secs(20),
    );
    let url = format!("ws://{signal}/ws");
    let config = |seed: u8| {
        let key = KeyPair::from_seed(&[seed; 32]);
        let mut node = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 7);
        node.accept = AcceptPolicy::All;
        RuntimeConfig::new(node, url.parse().unwrap())
    };
    let a = Runtime::start(config(21)).expect("A starts");
    let b = Runtime::start(config(22)).expect("B starts");
    let wait = |runtime: &Runtime, what: &str, want: &dyn Fn(&Event) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match runtime.events().recv_timeout(left) {
                Ok(e) if want(&e) => return,
                Ok(_) => {}
                Err(e) => panic!("no {what}: {e}"),
            }
        }
    };
    for r in [&a, &b] {
        wait(r, "Ready", &|e| matches!(e, Event::Ready { .. }));
    }
    let (ha, hb) = (a.handle(), b.handle());
    let id = ha
        .connect_with(hb.peer_id(), 9, Transport::Sctp)
        .expect("connect");
    wait(
        &a,
        "Connected",
        &|e| matches!(e, Event::Connected { id: c, .. } if *c == id),
    );

    // B hashes on a thread of its own until the close.
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match b.events().recv_timeout(left) {
                Ok(Event::Data { data, .. }) => {
                    got += data.len() as u64;
                    hash.update(&data);
                }
                Ok(Event::Closed {
                    reason, by_peer, ..
                }) => return (got, hash.finalize(), Some((reason, by_peer))),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return (got, hash.finalize(), None);
                }
            }
        }
    });

    let start = Instant::now();
    let mut pattern = Pattern(0x5c7b_0f11_e000_0001);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; MESSAGE];
    let mut left = SIZE;
    while left > 0 {
        let n = (MESSAGE as u64).min(left) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        loop {
            match ha.send(id, &buf[..n]) {
                Ok(()) => break,
                Err(RuntimeError::Send(SendError::Blocked)) => {
                    assert!(start.elapsed() < LIMIT, "{left} bytes still to send");
                    // Wait for room (or a moment, should `Writable` have come already).
                    let _ = a.events().recv_timeout(Duration::from_millis(5));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        left -= n as u64;
    }
    // The close waits until the association has everything acknowledged.
    ha.close(id, 3, "file sent").expect("close");
    let (got, theirs, closed) = receiver.join().expect("the receiver");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "64 MiB over SCTP in {secs:.1} s ({:.1} MiB/s, this build)",
        64.0 / secs
    );
    assert_eq!(got, SIZE, "bytes at B");
    assert!(theirs == hash.finalize(), "the file's SHA-256 differs");
    assert_eq!(
        closed,
        Some((
            CloseReason::Application {
                code: 3,
                reason: "file sent".into()
            },
            true
        )),
        "B sees A's close after the last byte"
    );
}
