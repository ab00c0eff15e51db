//! Two `fog_utp` endpoints over a link the input controls (deliver any queued datagram, drop
//! or duplicate it), with application calls, the passing of time, and hostile datagrams:
//! garbage, and packets forged with the real connection ids and arbitrary numbers.
//!
//! Invariants: nothing panics; buffers stay within their configured bounds; connections stay
//! within `max_connections`; after `handle_timeout(now)` no deadline is at or before `now`.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_utp::wire::{Packet, PacketType, Repr, SelectiveAck};
use fog_utp::{Config, ConnectionHandle, Endpoint, Event};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    Connect,
    Write {
        b: bool,
        conn: u8,
        len: u16,
    },
    Read {
        b: bool,
        conn: u8,
    },
    Close {
        b: bool,
        conn: u8,
    },
    Reset {
        b: bool,
        conn: u8,
    },
    Advance(u16),
    Garbage {
        b: bool,
        bytes: Vec<u8>,
    },
    Forge {
        b: bool,
        kind: u8,
        /// Use the id of a live connection's packets (so it reaches the machine) or this one.
        real_id: Option<u8>,
        id: u16,
        seq: u16,
        ack: u16,
        ts: u32,
        ts_diff: u32,
        wnd: u32,
        sack: Option<[u8; 4]>,
        payload: Vec<u8>,
    },
}

const SEND_BUF: usize = 16 * 1024;
const RECV_BUF: usize = 16 * 1024;
const MAX_CONNS: usize = 4;
const MAX_QUEUE: usize = 512;

fn addr(b: bool) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, if b { 2 } else { 1 }], 7000))
}

struct Side {
    ep: Endpoint,
    conns: Vec<ConnectionHandle>,
}

fuzz_target!(|ops: Vec<Op>| {
    let t0 = Instant::now();
    let mut now = t0;
    let mk = |seed: u8| {
        let mut c = Config::with_seed([seed; 32]);
        c.send_buffer = SEND_BUF;
        c.recv_buffer = RECV_BUF;
        c.max_connections = MAX_CONNS;
        c.max_pending_resets = 8;
        c
    };
    let mut sides = [
        Side {
            ep: Endpoint::new(mk(1), t0),
            conns: Vec::new(),
        },
        Side {
            ep: Endpoint::new(mk(2), t0),
            conns: Vec::new(),
        },
    ];
    // (to b?, bytes)
    let mut link: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 1500];
    let mut scratch = vec![0u8; 4096];

    for op in ops.into_iter().take(256) {
        match op {
            Op::Deliver(i) | Op::Drop(i) | Op::Duplicate(i) if link.is_empty() => {
                let _ = i;
            }
            Op::Deliver(i) => {
                let (to_b, bytes) = link.remove(usize::from(i) % link.len());
                sides[usize::from(to_b)]
                    .ep
                    .handle_packet(now, addr(!to_b), &bytes);
            }
            Op::Drop(i) => {
                link.remove(usize::from(i) % link.len());
            }
            Op::Duplicate(i) => {
                let d = link[usize::from(i) % link.len()].clone();
                link.push(d);
            }
            Op::Connect => {
                if let Ok(c) = sides[0].ep.connect(now, addr(true)) {
                    sides[0].conns.push(c);
                }
            }
            Op::Write { b, conn, len } => {
                let s = &mut sides[usize::from(b)];
                if let Some(&c) = s.conns.get(usize::from(conn) % s.conns.len().max(1)) {
                    let data = vec![conn; usize::from(len)];
                    if let Ok(n) = s.ep.write(c, &data) {
                        assert!(n <= data.len());
                    }
                }
            }
            Op::Read { b, conn } => {
                let s = &mut sides[usize::from(b)];
                if let Some(&c) = s.conns.get(usize::from(conn) % s.conns.len().max(1)) {
                    while let Ok(1..) = s.ep.read(c, &mut scratch) {}
                }
            }
            Op::Close { b, conn } => {
                let s = &mut sides[usize::from(b)];
                if let Some(&c) = s.conns.get(usize::from(conn) % s.conns.len().max(1)) {
                    s.ep.close(c);
                }
            }
            Op::Reset { b, conn } => {
                let s = &mut sides[usize::from(b)];
                if let Some(&c) = s.conns.get(usize::from(conn) % s.conns.len().max(1)) {
                    s.ep.reset(c);
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for s in &mut sides {
                    s.ep.handle_timeout(now);
                    if let Some(t) = s.ep.poll_timeout() {
                        assert!(t > now, "a deadline at or before now after handle_timeout");
                    }
                }
            }
            Op::Garbage { b, bytes } => {
                sides[usize::from(b)]
                    .ep
                    .handle_packet(now, addr(!b), &bytes);
            }
            Op::Forge {
                b,
                kind,
                real_id,
                id,
                seq,
                ack,
                ts,
                ts_diff,
                wnd,
                sack,
                payload,
            } => {
                let kinds = [
                    PacketType::Data,
                    PacketType::Fin,
                    PacketType::State,
                    PacketType::Reset,
                    PacketType::Syn,
                ];
                // A live id: the one the other side sends with, learned from the link.
                let connection_id = match real_id {
                    Some(i) if !link.is_empty() => {
                        let (_, bytes) = &link[usize::from(i) % link.len()];
                        Packet::new_checked(&bytes[..]).map_or(id, |p| p.connection_id())
                    }
                    _ => id,
                };
                let repr = Repr {
                    packet_type: kinds[usize::from(kind) % kinds.len()],
                    connection_id,
                    timestamp: ts,
                    timestamp_difference: ts_diff,
                    wnd_size: wnd,
                    seq_nr: seq,
                    ack_nr: ack,
                    selective_ack: sack.and_then(|s| SelectiveAck::from_bytes(&s)),
                };
                let payload = &payload[..payload.len().min(1400)];
                let mut bytes = vec![0u8; repr.buffer_len() + payload.len()];
                repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
                bytes[repr.buffer_len()..].copy_from_slice(payload);
                sides[usize::from(b)]
                    .ep
                    .handle_packet(now, addr(!b), &bytes);
            }
        }
        for (i, s) in sides.iter_mut().enumerate() {
            while let Some(t) = s.ep.poll_transmit(now, &mut buf) {
                assert!(t.len <= 1500);
                assert_eq!(t.destination, addr(i == 0));
                if link.len() < MAX_QUEUE {
                    link.push((i == 0, buf[..t.len].to_vec()));
                }
            }
            while let Some(e) = s.ep.poll_event() {
                if let Event::Incoming { conn, .. } = e {
                    s.conns.push(conn);
                }
            }
            assert!(s.ep.connection_count() <= MAX_CONNS);
            for &c in &s.conns {
                if let Some(st) = s.ep.stats(c) {
                    assert!(st.send_buffered <= SEND_BUF, "{st:?}");
                    assert!(st.recv_buffered <= RECV_BUF, "{st:?}");
                    assert!(st.in_flight <= st.send_buffered, "{st:?}");
                }
            }
        }
    }
});
