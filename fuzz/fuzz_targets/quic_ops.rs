//! Two `fog_quic` endpoints (one serving service 7, one dialling it) over a link the input
//! controls (deliver any queued datagram, drop or duplicate it), with stream and datagram calls,
//! closes, a moved remote, the passing of time, and hostile datagrams: garbage, and real
//! datagrams truncated or with a byte flipped, from the peer's address or a stranger's.
//!
//! Invariants: nothing panics; every datagram either endpoint emits is one fog-core's demux
//! routes to QUIC; writes never claim more than they were given; connections stay within
//! `max_connections`.
//!
//! The TLS handshake's randoms come from ring's OS generator (fog-quic's one use of it), so a
//! crash input replays the same operations but not byte-identical handshakes.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Protocol, classify};
use fog_quic::{Config, ConnHandle, Endpoint, Read, StreamId, StreamKind};
use fog_signal::KeyPair;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    Connect {
        right_peer: bool,
        right_service: bool,
    },
    Open {
        b: bool,
        uni: bool,
    },
    Write {
        b: bool,
        stream: u8,
        len: u16,
    },
    Finish {
        b: bool,
        stream: u8,
    },
    Reset {
        b: bool,
        stream: u8,
        code: u64,
    },
    Stop {
        b: bool,
        stream: u8,
        code: u64,
    },
    Read {
        b: bool,
        stream: u8,
    },
    /// Any stream id the caller may make up, on the side's newest connection.
    RawStream {
        b: bool,
        id: u64,
        action: u8,
    },
    Datagram {
        b: bool,
        len: u16,
    },
    RecvDatagrams {
        b: bool,
    },
    Close {
        b: bool,
        code: u64,
        reason: Vec<u8>,
    },
    MoveClient(u8),
    Advance(u16),
    Garbage {
        b: bool,
        stranger: bool,
        bytes: Vec<u8>,
    },
    Truncate {
        i: u8,
        len: u16,
    },
    Flip {
        i: u8,
        at: u16,
        bit: u8,
    },
}

const MAX_CONNS: usize = 4;
const MAX_QUEUE: usize = 256;
const SERVER: usize = 0;
const CLIENT: usize = 1;

struct Side {
    ep: Endpoint,
    conns: Vec<ConnHandle>,
    streams: Vec<(ConnHandle, StreamId)>,
}

impl Side {
    fn conn(&self) -> Option<ConnHandle> {
        self.conns.last().copied()
    }

    fn stream(&self, i: u8) -> Option<(ConnHandle, StreamId)> {
        self.streams
            .get(usize::from(i) % self.streams.len().max(1))
            .copied()
    }
}

fuzz_target!(|ops: Vec<Op>| {
    // The epoch of virtual time; nothing else reads the clock.
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let ids = [KeyPair::from_seed(&[1; 32]), KeyPair::from_seed(&[2; 32])];
    let config = |serve: bool| {
        let mut c = Config {
            max_connections: MAX_CONNS,
            ..Config::default()
        };
        if serve {
            c = c.with_service(7);
        }
        c
    };
    let mut sides = [
        Side {
            ep: Endpoint::new(config(true), &ids[0], [1; 32], now).unwrap(),
            conns: Vec::new(),
            streams: Vec::new(),
        },
        Side {
            ep: Endpoint::new(config(false), &ids[1], [2; 32], now).unwrap(),
            conns: Vec::new(),
            streams: Vec::new(),
        },
    ];
    let mut addrs: [SocketAddr; 2] = [
        SocketAddr::from(([192, 0, 2, 1], 4433)),
        SocketAddr::from(([192, 0, 2, 2], 5000)),
    ];
    let stranger = SocketAddr::from(([198, 51, 100, 6], 666));
    // (to, from, bytes)
    let mut link: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 1500];
    let mut scratch = vec![0u8; 4096];

    for op in ops.into_iter().take(200) {
        match op {
            Op::Deliver(i) | Op::Drop(i) | Op::Duplicate(i) if link.is_empty() => {
                let _ = i;
            }
            Op::Deliver(i) => {
                let (to, from, bytes) = link.remove(usize::from(i) % link.len());
                if let Some(s) = addrs.iter().position(|&a| a == to) {
                    sides[s].ep.handle_datagram(now, from, &bytes);
                }
            }
            Op::Drop(i) => {
                link.remove(usize::from(i) % link.len());
            }
            Op::Duplicate(i) => {
                if link.len() < MAX_QUEUE {
                    let d = link[usize::from(i) % link.len()].clone();
                    link.push(d);
                }
            }
            Op::Connect {
                right_peer,
                right_service,
            } => {
                let peer = ids[if right_peer { 0 } else { 1 }].peer_id();
                let service = if right_service { 7 } else { 8 };
                if let Ok(c) = sides[CLIENT].ep.connect(now, addrs[SERVER], peer, service) {
                    sides[CLIENT].conns.push(c);
                }
            }
            Op::Open { b, uni } => {
                let s = &mut sides[usize::from(b)];
                if let Some(c) = s.conn() {
                    let kind = if uni {
                        StreamKind::Unidirectional
                    } else {
                        StreamKind::Bidirectional
                    };
                    if let Ok(id) = s.ep.open(c, kind) {
                        s.streams.push((c, id));
                    }
                }
            }
            Op::Write { b, stream, len } => {
                let s = &mut sides[usize::from(b)];
                if let Some((c, id)) = s.stream(stream) {
                    let data = vec![stream; usize::from(len)];
                    if let Ok(n) = s.ep.write(c, id, &data) {
                        assert!(n <= data.len());
                    }
                }
            }
            Op::Finish { b, stream } => {
                let s = &mut sides[usize::from(b)];
                if let Some((c, id)) = s.stream(stream) {
                    let _ = s.ep.finish(c, id);
                }
            }
            Op::Reset { b, stream, code } => {
                let s = &mut sides[usize::from(b)];
                if let Some((c, id)) = s.stream(stream) {
                    let _ = s.ep.reset(c, id, code);
                }
            }
            Op::Stop { b, stream, code } => {
                let s = &mut sides[usize::from(b)];
                if let Some((c, id)) = s.stream(stream) {
                    let _ = s.ep.stop(c, id, code);
                }
            }
            Op::Read { b, stream } => {
                let s = &mut sides[usize::from(b)];
                if let Some((c, id)) = s.stream(stream) {
                    while let Ok(Read::Data(n)) = s.ep.read(c, id, &mut scratch) {
                        assert!(n <= scratch.len());
                    }
                }
            }
            Op::RawStream { b, id, action } => {
                let s = &mut sides[usize::from(b)];
                if let Some(c) = s.conn() {
                    let id = StreamId(id);
                    let _ = match action % 5 {
                        0 => s.ep.write(c, id, b"raw").map(|_| ()),
                        1 => s.ep.finish(c, id),
                        2 => s.ep.reset(c, id, 1),
                        3 => s.ep.stop(c, id, 1),
                        _ => s.ep.read(c, id, &mut scratch).map(|_| ()),
                    };
                }
            }
            Op::Datagram { b, len } => {
                let s = &mut sides[usize::from(b)];
                if let Some(c) = s.conn() {
                    let _ = s.ep.send_datagram(c, &vec![7; usize::from(len)]);
                }
            }
            Op::RecvDatagrams { b } => {
                let s = &mut sides[usize::from(b)];
                if let Some(c) = s.conn() {
                    while s.ep.recv_datagram(c).is_some() {}
                }
            }
            Op::Close { b, code, reason } => {
                let s = &mut sides[usize::from(b)];
                if let Some(c) = s.conn() {
                    let _ = s.ep.close(now, c, code, &reason);
                }
            }
            Op::MoveClient(port) => {
                // The client moves; the server must follow its authenticated packets, or the
                // owner tells the client the server moved.
                if port % 2 == 0 {
                    addrs[CLIENT] = SocketAddr::from(([192, 0, 2, 3], 5000 + u16::from(port)));
                } else if let Some(c) = sides[CLIENT].conn() {
                    addrs[SERVER] = SocketAddr::from(([192, 0, 2, 4], 4000 + u16::from(port)));
                    let _ = sides[CLIENT].ep.set_remote(now, c, addrs[SERVER]);
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for s in &mut sides {
                    s.ep.handle_timeout(now);
                }
            }
            Op::Garbage {
                b,
                stranger: from_stranger,
                bytes,
            } => {
                let from = if from_stranger {
                    stranger
                } else {
                    addrs[usize::from(!b)]
                };
                sides[usize::from(b)].ep.handle_datagram(now, from, &bytes);
            }
            Op::Truncate { i, len } => {
                if let Some((to, from, bytes)) = link.get(usize::from(i) % link.len().max(1)) {
                    let cut = &bytes[..usize::from(len) % (bytes.len() + 1)];
                    if let Some(s) = addrs.iter().position(|a| a == to) {
                        sides[s].ep.handle_datagram(now, *from, cut);
                    }
                }
            }
            Op::Flip { i, at, bit } => {
                if let Some((to, _, bytes)) = link.get(usize::from(i) % link.len().max(1)) {
                    let mut bad = bytes.clone();
                    if !bad.is_empty() {
                        let at = usize::from(at) % bad.len();
                        bad[at] ^= 1 << (bit % 8);
                    }
                    if let Some(s) = addrs.iter().position(|a| a == to) {
                        sides[s].ep.handle_datagram(now, stranger, &bad);
                    }
                }
            }
        }
        // Drain both sides as the contract says: transmits, then events.
        for (i, s) in sides.iter_mut().enumerate() {
            while let Some(t) = s.ep.poll_transmit(now, &mut buf) {
                let bytes = &buf[..t.len];
                assert_eq!(
                    classify(bytes, false),
                    Protocol::Quic,
                    "demux must see QUIC"
                );
                if link.len() < MAX_QUEUE {
                    link.push((t.destination, addrs[i], bytes.to_vec()));
                }
            }
            while let Some(e) = s.ep.poll_event() {
                match e {
                    fog_quic::Event::Incoming { conn, .. } => s.conns.push(conn),
                    fog_quic::Event::StreamOpened { conn, stream } => {
                        s.streams.push((conn, stream))
                    }
                    fog_quic::Event::Drained { conn } => {
                        s.conns.retain(|&c| c != conn);
                        s.streams.retain(|&(c, _)| c != conn);
                    }
                    _ => {}
                }
            }
            assert!(s.ep.connections().count() <= MAX_CONNS);
        }
    }
});
