//! The KCP segment parser fed arbitrary bytes, and a plain machine and a FogConnect connection
//! fed the same bytes as a datagram.
//!
//! Invariants: nothing panics; every segment that parses re-emits to exactly the bytes it came
//! from; a datagram the machine accepts leaves its buffers within their bounds.

#![no_main]

use std::time::{Duration, Instant};

use fog_kcp::wire::{HEADER_LEN, Segments};
use fog_kcp::{Config, Connection, Kcp, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    for item in Segments::new(data) {
        let Ok((repr, payload)) = item else { break };
        let total = HEADER_LEN + payload.len();
        assert_eq!(repr.buffer_len(), total);
        let mut again = vec![0u8; total];
        assert_eq!(repr.emit(payload, &mut again), total);
        assert_eq!(&again[..], &data[at..at + total]);
        let reparsed = Segments::new(&again).next().unwrap().unwrap();
        assert_eq!(reparsed, (repr, payload));
        at += total;
    }

    // The conversation the datagram names, so that the machine goes past the conv check.
    let conv = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let now = Instant::now();
    let later = now + Duration::from_millis(10);
    let mut kcp = Kcp::new(conv, Config::fast(), now);
    let _ = kcp.handle_packet(later, data);
    kcp.handle_timeout(later);
    let mut buf = vec![0u8; 1500];
    while let Some(n) = kcp.poll_transmit(later, &mut buf) {
        assert!(n <= kcp.config().mtu);
    }
    let _ = kcp.recv(&mut buf);
    assert!(kcp.recv_buffer_len() <= usize::from(kcp.recv_window()));
    assert!(kcp.recv_queue_len() <= usize::from(kcp.recv_window()));

    let conv = data
        .get(1..5)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    for role in [Role::Initiator, Role::Responder] {
        let mut conn = Connection::new(conv, Config::default(), role, now);
        let _ = conn.handle_packet(later, data);
        conn.handle_timeout(later);
        while let Some(n) = conn.poll_transmit(later, &mut buf) {
            assert!(n <= conn.kcp().config().mtu + 1);
        }
        while conn.poll_event().is_some() {}
    }
});
