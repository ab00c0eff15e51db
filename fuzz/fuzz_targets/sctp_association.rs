//! Two `fog_sctp` associations over a link the input controls (deliver any queued packet, drop
//! or duplicate it), with application calls (streams of every kind, sends, reads, close), the
//! passing of time, and hostile packets: garbage, and real packets from the link with bytes
//! changed and the CRC32c made right again, so that they get past the checksum into
//! sctp-proto's parser and the association with the real verification tag.
//!
//! Invariants: nothing panics; no packet is larger than `max_packet`; what is unacknowledged
//! stays within the send buffer; after `handle_timeout(now)` no deadline is before `now`; an
//! ended association stays ended.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_sctp::{Association, Config, Event, Reliability, StreamConfig};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    Open {
        b: bool,
        stream: u8,
        ordered: bool,
        reliability: u8,
        value: u16,
    },
    Send {
        b: bool,
        stream: u8,
        len: u16,
    },
    Close(bool),
    Advance(u16),
    Garbage {
        b: bool,
        bytes: Vec<u8>,
    },
    Mutate {
        /// Which packet on the link to copy.
        pick: u8,
        /// (offset, xor) pairs applied after the common header's checksum.
        edits: Vec<(u16, u8)>,
        /// Cut it short (or not).
        cut: Option<u16>,
    },
}

const MAX_PACKET: usize = 1_365;
const SEND_BUFFER: usize = 64 * 1024;
const MAX_QUEUE: usize = 256;

fn addr(b: bool) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, if b { 2 } else { 1 }], 5000))
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(bytes)
}

fuzz_target!(|ops: Vec<Op>| {
    let t0 = Instant::now();
    let mut now = t0;
    let config = Config {
        max_packet: MAX_PACKET,
        send_buffer: SEND_BUFFER,
        max_message: 16 * 1024,
        receive_buffer: 128 * 1024,
        max_streams: 8,
        ..Config::default()
    };
    let mut sides = [
        Association::connect(now, config.clone(), addr(true)),
        Association::accept(now, config, addr(false)),
    ];
    let mut ended = [false, false];
    // (to b?, bytes)
    let mut link: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 2048];

    for op in ops.into_iter().take(256) {
        match op {
            Op::Deliver(_) | Op::Drop(_) | Op::Duplicate(_) | Op::Mutate { .. }
                if link.is_empty() => {}
            Op::Deliver(i) => {
                let (to_b, bytes) = link.remove(usize::from(i) % link.len());
                let _ = sides[usize::from(to_b)].handle_packet(now, addr(!to_b), &bytes);
            }
            Op::Drop(i) => {
                link.remove(usize::from(i) % link.len());
            }
            Op::Duplicate(i) => {
                let d = link[usize::from(i) % link.len()].clone();
                link.push(d);
            }
            Op::Open {
                b,
                stream,
                ordered,
                reliability,
                value,
            } => {
                let reliability = match reliability % 3 {
                    0 => Reliability::Reliable,
                    1 => Reliability::MaxRetransmits(u32::from(value % 8)),
                    _ => Reliability::Lifetime(Duration::from_millis(u64::from(value))),
                };
                let _ = sides[usize::from(b)].open_stream(
                    u16::from(stream % 10),
                    StreamConfig {
                        ordered,
                        reliability,
                    },
                );
            }
            Op::Send { b, stream, len } => {
                let data = vec![stream; usize::from(len) % (20 * 1024)];
                let _ = sides[usize::from(b)].send(now, u16::from(stream % 10), &data);
            }
            Op::Close(b) => sides[usize::from(b)].close(now),
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for s in &mut sides {
                    s.handle_timeout(now);
                    if let Some(t) = s.poll_timeout() {
                        assert!(t >= now, "a deadline before now after handle_timeout");
                    }
                }
            }
            Op::Garbage { b, bytes } => {
                let _ = sides[usize::from(b)].handle_packet(now, addr(!b), &bytes);
            }
            Op::Mutate { pick, edits, cut } => {
                let (to_b, mut bytes) = link[usize::from(pick) % link.len()].clone();
                for (offset, xor) in edits.into_iter().take(16) {
                    let len = bytes.len();
                    if len > 12 {
                        bytes[12 + usize::from(offset) % (len - 12)] ^= xor;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(usize::from(cut).max(12));
                }
                if bytes.len() >= 12 {
                    bytes[8..12].copy_from_slice(&[0; 4]);
                    let sum = crc32c(&bytes);
                    bytes[8..12].copy_from_slice(&sum.to_le_bytes());
                }
                let _ = sides[usize::from(to_b)].handle_packet(now, addr(!to_b), &bytes);
            }
        }
        for (i, s) in sides.iter_mut().enumerate() {
            while let Some(t) = s.poll_transmit(now, &mut buf) {
                assert!(t.len <= MAX_PACKET, "a packet of {} bytes", t.len);
                if link.len() < MAX_QUEUE {
                    link.push((i == 0, buf[..t.len].to_vec()));
                }
            }
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Readable(stream) => while s.read(stream).is_some() {},
                    Event::Closed(_) => {
                        assert!(!ended[i], "a second Closed");
                        ended[i] = true;
                    }
                    _ => {}
                }
            }
            if ended[i] {
                assert!(s.is_closed());
            }
            // A send is refused whole when it would pass the buffer; the count may pass it
            // only by what sctp-proto adds of its own (nothing today).
            assert!(s.buffered() <= SEND_BUFFER, "{} buffered", s.buffered());
        }
    }
});
