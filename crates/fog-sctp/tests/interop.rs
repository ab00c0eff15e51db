//! Our association against an independent SCTP stack: usrsctp's `echo_server` (Debian's
//! `libusrsctp-examples`), an SCTP echo on port 7 over UDP encapsulation (RFC 6951: the SCTP
//! packet is the UDP payload, nothing in between). The kernel here has no SCTP, so the
//! encapsulation is the only way to reach it. Messages go out on an ordered and an unordered
//! stream, a few thousand bytes each, and must come back byte for byte; then our close must
//! complete against usrsctp's shutdown.
//!
//! `.ci/run`'s apt step installs the package; without it the test skips, or fails when
//! `FOG_REQUIRE_INTEROP=1` as in CI.

// Real sockets need the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fog_sctp::{Association, CloseReason, Config, Event, Reliability, StreamConfig};
use fog_test_support::{ChildGuard, skip_or_fail};

const ECHO_SERVER: &str = "/usr/lib/usrsctp/echo_server";
/// The SCTP port usrsctp's echo server listens on (the echo service's).
const ECHO_PORT: u16 = 7;
const DEADLINE: Duration = Duration::from_secs(30);

fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 24) as u8
        })
        .collect()
}

/// A UDP port nobody holds right now (bound, read, released).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Drives `assoc` on `socket` until `done` says so or the deadline passes; every message read
/// goes to `received` under its stream.
fn drive(
    socket: &UdpSocket,
    assoc: &mut Association,
    received: &mut BTreeMap<u16, Vec<Vec<u8>>>,
    closed: &mut Option<CloseReason>,
    mut done: impl FnMut(&BTreeMap<u16, Vec<Vec<u8>>>, &Option<CloseReason>) -> bool,
) -> bool {
    let end = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        while let Some(t) = assoc.poll_transmit(now, &mut buf) {
            socket.send_to(&buf[..t.len], t.destination).unwrap();
        }
        while let Some(event) = assoc.poll_event() {
            match event {
                Event::Readable(s) => {
                    while let Some(m) = assoc.read(s) {
                        received.entry(s).or_default().push(m);
                    }
                }
                Event::Closed(r) => *closed = Some(r),
                _ => {}
            }
        }
        if done(received, closed) {
            return true;
        }
        if now >= end || closed.is_some() {
            return false;
        }
        let wait = assoc
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        socket.set_read_timeout(Some(wait)).unwrap();
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = assoc.handle_packet(Instant::now(), from, &buf[..n]);
            }
            Err(_) => assoc.handle_timeout(Instant::now()),
        }
    }
}

#[test]
fn usrsctp_echoes_ordered_and_unordered_messages() {
    const TEST: &str = "usrsctp_echoes_ordered_and_unordered_messages";
    if !Path::new(ECHO_SERVER).is_file() {
        skip_or_fail(
            TEST,
            &format!("{ECHO_SERVER} missing (Debian package libusrsctp-examples)"),
            "FOG_REQUIRE_INTEROP",
        );
        return;
    }
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ours = socket.local_addr().unwrap().port();
    let theirs = free_udp_port();
    // echo_server <its UDP encapsulation port> <the peer's UDP encapsulation port>.
    let server = ChildGuard::spawn(
        "usrsctp-echo-server",
        Command::new(ECHO_SERVER).args([theirs.to_string(), ours.to_string()]),
    )
    .expect("starting echo_server");
    // usrsctp binds its encapsulation socket as it starts; give it a moment, then the INIT
    // retransmits cover the rest.
    std::thread::sleep(Duration::from_millis(200));

    let config = Config {
        remote_port: ECHO_PORT,
        ..Config::default()
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], theirs));
    let mut assoc = Association::connect(Instant::now(), config, peer);
    assoc.open_stream(0, StreamConfig::default()).unwrap();
    let unordered = StreamConfig {
        ordered: false,
        reliability: Reliability::Reliable,
    };
    assoc.open_stream(1, unordered).unwrap();
    // Partially reliable too: on a clean path nothing is given up, and usrsctp must accept
    // the FORWARD-TSN-capable association it negotiated.
    let partial = StreamConfig {
        ordered: true,
        reliability: Reliability::MaxRetransmits(2),
    };
    assoc.open_stream(2, partial).unwrap();

    let mut sent: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..30u32 {
        for stream in [0u16, 1, 2] {
            // From one byte to several packets' worth (fragmented and reassembled by both).
            let len = 1 + (i as usize * 331 + usize::from(stream) * 97) % 5000;
            let m = payload(i * 3 + u32::from(stream), len);
            assoc.send(Instant::now(), stream, &m).unwrap();
            sent.entry(stream).or_default().push(m);
        }
    }
    let mut received = BTreeMap::new();
    let mut closed = None;
    let all_back = drive(&socket, &mut assoc, &mut received, &mut closed, |r, _| {
        r.values().map(Vec::len).sum::<usize>() == 90
    });
    assert!(
        all_back,
        "echoed {:?} of 30 per stream (closed: {closed:?}); stats {:?}\n{}",
        received.values().map(Vec::len).collect::<Vec<_>>(),
        assoc.stats(),
        server.output_text()
    );
    // The ordered streams come back in order; the unordered one complete, in any order.
    assert_eq!(received[&0], sent[&0]);
    assert_eq!(received[&2], sent[&2]);
    let mut back = received[&1].clone();
    let mut out = sent[&1].clone();
    back.sort();
    out.sort();
    assert_eq!(back, out);
    assert!(assoc.stats().dropped == 0, "{:?}", assoc.stats());

    assoc.close(Instant::now());
    let closed_ok = drive(&socket, &mut assoc, &mut received, &mut closed, |_, c| {
        c.is_some()
    });
    assert!(
        closed_ok,
        "close did not complete\n{}",
        server.output_text()
    );
    assert_eq!(closed, Some(CloseReason::Local), "{}", server.output_text());
}
