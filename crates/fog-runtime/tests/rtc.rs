//! A 64 MiB file between two runtimes over [`Transport::Rtc`] (WebRTC data channels), on real
//! UDP sockets on loopback through a real fogd (STUN and signaling): every byte arrives, in
//! order, checked against the sender's pattern as it comes; then the sender's close arrives
//! after the last byte.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig, RuntimeError};
use fog_test_support::ChildGuard;
use fogconnect::{AcceptPolicy, CloseReason, Event, KeyPair, NodeConfig, SendError, Transport};

const WAIT: Duration = Duration::from_secs(20);
/// The whole transfer's bound (it takes well under a minute unoptimised on 2 busy cores).
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);
const SIZE: u64 = 64 << 20;
/// Bytes per `send`, as in the transfer bench and `fogconnect send`.
const MESSAGE: usize = 60_000;

fn fogd() -> (ChildGuard, SocketAddr, String) {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the test's own path"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let (child, stun, signal) = fog_test_support::fogd_for_nodes(
        &exe,
        "fogd-rtc",
        |_| vec!["--stun-no-rate-limit".to_owned()],
        WAIT,
    );
    (child, stun, format!("ws://{signal}/ws"))
}

fn config(seed: u8, stun: SocketAddr, url: &str) -> RuntimeConfig {
    let key = KeyPair::from_seed(&[seed; 32]);
    let mut node = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 7);
    node.accept = AcceptPolicy::All;
    RuntimeConfig::new(node, url.parse().unwrap())
}

/// The first event `want` picks before `deadline`.
fn wait_until<T>(
    events: &Receiver<Event>,
    deadline: Instant,
    mut want: impl FnMut(Event) -> Option<T>,
) -> T {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no awaited event ({e})"));
        if let Some(value) = want(event) {
            return value;
        }
    }
}

/// Byte `i` of the file: a pattern no shift or repeat of a chunk reproduces.
fn byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 16) as u8
}

#[test]
fn two_runtimes_move_64_mib_intact_over_rtc() {
    let started = Instant::now();
    let (_fogd, stun, url) = fogd();
    let a = Runtime::start(config(21, stun, &url)).expect("A starts");
    let b = Runtime::start(config(22, stun, &url)).expect("B starts");
    let (ha, hb) = (a.handle(), b.handle());
    for r in [&a, &b] {
        wait_until(r.events(), Instant::now() + WAIT, |e| {
            matches!(e, Event::Ready { .. }).then_some(())
        });
    }
    let id_a = ha.connect_with(hb.peer_id(), 3, Transport::Rtc).unwrap();
    let id_b = wait_until(b.events(), Instant::now() + WAIT, |e| match e {
        Event::Incoming { id, transport, .. } => {
            assert_eq!(transport, Transport::Rtc);
            Some(id)
        }
        _ => None,
    });
    wait_until(a.events(), Instant::now() + WAIT, |e| {
        matches!(e, Event::Connected { id, .. } if id == id_a).then_some(())
    });

    // B checks every byte as it arrives, on a thread of its own, until the close.
    let deadline = started + TRANSFER_LIMIT;
    let b_events = std::thread::spawn(move || {
        let mut got = 0u64;
        let closed = wait_until(b.events(), deadline, |e| match e {
            Event::Data { id, data } if id == id_b => {
                for (k, &v) in data.iter().enumerate() {
                    let at = got + k as u64;
                    assert_eq!(v, byte(at), "byte {at} differs");
                }
                got += data.len() as u64;
                None
            }
            Event::Closed {
                id,
                reason,
                by_peer: true,
            } if id == id_b => Some(reason),
            _ => None,
        });
        (got, closed, b)
    });

    let mut buf = vec![0u8; MESSAGE];
    let mut sent = 0u64;
    while sent < SIZE {
        let n = (MESSAGE as u64).min(SIZE - sent) as usize;
        for (k, v) in buf[..n].iter_mut().enumerate() {
            *v = byte(sent + k as u64);
        }
        loop {
            match ha.send(id_a, &buf[..n]) {
                Ok(()) => break,
                Err(RuntimeError::Send(SendError::Blocked)) => {
                    assert!(Instant::now() < deadline, "stuck at {sent} bytes");
                    // Wait for `Writable` (or a moment, should it have come already).
                    let _ = a.events().recv_timeout(Duration::from_millis(5));
                }
                Err(e) => panic!("send at {sent}: {e}"),
            }
        }
        sent += n as u64;
    }
    let sending = started.elapsed();
    ha.close(id_a, 9, "file sent").unwrap();
    let (got, closed, _b) = b_events.join().expect("the receiver");
    assert_eq!(got, SIZE, "every byte arrived before the close");
    assert_eq!(
        closed,
        CloseReason::Application {
            code: 9,
            reason: "file sent".into()
        }
    );
    eprintln!(
        "64 MiB over RTC in {:.1} s (sending done at {:.1} s)",
        started.elapsed().as_secs_f64(),
        sending.as_secs_f64()
    );
}
