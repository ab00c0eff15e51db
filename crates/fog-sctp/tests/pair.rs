//! Two associations in virtual time over a link that can drop packets (seeded): order,
//! partial reliability, the graceful close, giving up on a silent peer, hostile input.

// Virtual time starts at the clock's reading; nothing else reads it.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_sctp::{Association, CloseReason, Config, Event, Reliability, StreamConfig};
use fog_test_support::SplitMix;

const A: &str = "10.0.0.1:5000";
const B: &str = "10.0.0.2:5000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A message whose contents say which it is: `(stream, index)` first, then filler.
fn message(stream: u16, i: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len.max(6));
    m.extend_from_slice(&stream.to_be_bytes());
    m.extend_from_slice(&i.to_be_bytes());
    m.extend((0..len.saturating_sub(6)).map(|k| (k as u32 ^ i) as u8));
    m
}

fn index_of(m: &[u8]) -> u32 {
    u32::from_be_bytes([m[2], m[3], m[4], m[5]])
}

struct Side {
    assoc: Association,
    received: Vec<(u16, Vec<u8>)>,
    events: Vec<Event>,
}

struct Pair {
    now: Instant,
    sides: [Side; 2],
    /// Packets on the wire: (arrival, to side, bytes).
    wire: VecDeque<(Instant, usize, Vec<u8>)>,
    delay: Duration,
    /// Percent of packets lost, each way.
    loss: f64,
    /// Everything is lost (a dead path).
    cut: bool,
    rng: SplitMix,
    max_packet: usize,
}

impl Pair {
    fn new(config: Config, loss: f64, seed: u64) -> Self {
        let now = Instant::now();
        let max_packet = config.max_packet;
        let a = Association::connect(now, config.clone(), addr(B));
        let b = Association::accept(now, config, addr(A));
        let side = |assoc| Side {
            assoc,
            received: Vec::new(),
            events: Vec::new(),
        };
        Pair {
            now,
            sides: [side(a), side(b)],
            wire: VecDeque::new(),
            delay: Duration::from_millis(10),
            loss,
            cut: false,
            rng: SplitMix(seed),
            max_packet,
        }
    }

    /// Drains both sides' transmits and events.
    fn flush(&mut self) {
        let mut buf = vec![0u8; 2048];
        for i in 0..2 {
            while let Some(t) = self.sides[i].assoc.poll_transmit(self.now, &mut buf) {
                assert!(t.len <= self.max_packet, "a packet of {} bytes", t.len);
                if self.cut || (self.loss > 0.0 && self.rng.chance(self.loss)) {
                    continue;
                }
                self.wire
                    .push_back((self.now + self.delay, 1 - i, buf[..t.len].to_vec()));
            }
            while let Some(e) = self.sides[i].assoc.poll_event() {
                if let Event::Readable(s) = e {
                    while let Some(m) = self.sides[i].assoc.read(s) {
                        self.sides[i].received.push((s, m));
                    }
                }
                self.sides[i].events.push(e);
            }
        }
    }

    /// One step: the earliest of the next arrival and the next deadline.
    fn step(&mut self) -> bool {
        self.flush();
        let arrival = self.wire.front().map(|(t, _, _)| *t);
        let timeouts = [0, 1].map(|i| self.sides[i].assoc.poll_timeout());
        let next_timeout = timeouts.iter().flatten().min().copied();
        let at = match (arrival, next_timeout) {
            (Some(a), Some(t)) => a.min(t),
            (Some(a), None) => a,
            (None, Some(t)) => t,
            (None, None) => return false,
        };
        self.now = self.now.max(at);
        if arrival.is_some_and(|a| a <= self.now) {
            let (_, to, packet) = self.wire.pop_front().unwrap();
            let from = addr(if to == 0 { B } else { A });
            let _ = self.sides[to].assoc.handle_packet(self.now, from, &packet);
        }
        for (i, t) in timeouts.iter().enumerate() {
            if t.is_some_and(|t| t <= self.now) {
                self.sides[i].assoc.handle_timeout(self.now);
            }
        }
        self.flush();
        true
    }

    /// Steps until `done` or `limit` of virtual time passed; whether `done` held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            if !self.step() {
                // Nothing on the wire and no deadline: idle until the end.
                self.now = end;
                return done(self);
            }
        }
        done(self)
    }

    fn connected(&mut self) {
        assert!(
            self.run_until(Duration::from_secs(20), |p| p.sides[1]
                .assoc
                .is_established()
                && p.sides[0].assoc.is_established()),
            "no handshake"
        );
    }

    fn closed(&self, i: usize) -> Option<CloseReason> {
        self.sides[i].events.iter().find_map(|e| match e {
            Event::Closed(r) => Some(*r),
            _ => None,
        })
    }

    /// Sends `messages` from side 0 on `stream`, as the send buffer allows.
    fn send_all(&mut self, stream: u16, messages: &[Vec<u8>], limit: Duration) {
        let mut next = 0;
        let end = self.now + limit;
        while next < messages.len() {
            while next < messages.len()
                && self.sides[0]
                    .assoc
                    .send(self.now, stream, &messages[next])
                    .is_ok()
            {
                next += 1;
            }
            assert!(self.now < end, "sent only {next} of {}", messages.len());
            assert!(
                self.step(),
                "stalled with {next} of {} sent",
                messages.len()
            );
        }
    }
}

fn received_indexes(side: &Side, stream: u16) -> Vec<u32> {
    side.received
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, m)| index_of(m))
        .collect()
}

#[test]
fn ordered_reliable_messages_arrive_in_order_through_loss() {
    // A packet size that is no multiple of 4 (what fits FogConnect's sealed datagram after the
    // framing byte): chunk padding must not push a packet past it.
    let config = Config {
        max_packet: 1365,
        ..Config::default()
    };
    let mut p = Pair::new(config, 5.0, 1);
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    // Before the handshake: these wait for it.
    let messages: Vec<_> = (0..400)
        .map(|i| message(0, i, 1 + (i as usize * 37) % 3000))
        .collect();
    p.send_all(0, &messages, Duration::from_secs(120));
    assert!(
        p.run_until(Duration::from_secs(60), |p| p.sides[1].received.len()
            == 400)
    );
    let got: Vec<_> = p.sides[1].received.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(got, messages);
    assert!(p.sides[1].events.contains(&Event::StreamOpened(0)));
}

#[test]
fn both_ways_on_one_stream() {
    let mut p = Pair::new(Config::default(), 0.0, 2);
    p.sides[0]
        .assoc
        .open_stream(3, StreamConfig::default())
        .unwrap();
    p.sides[0]
        .assoc
        .send(p.now, 3, &message(3, 0, 100))
        .unwrap();
    p.connected();
    assert!(p.run_until(Duration::from_secs(5), |p| !p.sides[1].received.is_empty()));
    // The acceptor answers on the stream the peer opened, without opening it itself.
    p.sides[1]
        .assoc
        .send(p.now, 3, &message(3, 7, 100))
        .unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| !p.sides[0].received.is_empty()));
    assert_eq!(received_indexes(&p.sides[0], 3), [7]);
    // A stream nobody opened is refused.
    assert_eq!(
        p.sides[1].assoc.send(p.now, 9, b"x"),
        Err(fog_sctp::SendError::UnknownStream)
    );
}

#[test]
fn unordered_messages_all_arrive_some_out_of_order() {
    let mut p = Pair::new(Config::default(), 10.0, 3);
    let unordered = StreamConfig {
        ordered: false,
        reliability: Reliability::Reliable,
    };
    p.sides[0].assoc.open_stream(1, unordered).unwrap();
    p.connected();
    let messages: Vec<_> = (0..300).map(|i| message(1, i, 800)).collect();
    p.send_all(1, &messages, Duration::from_secs(120));
    assert!(
        p.run_until(Duration::from_secs(60), |p| p.sides[1].received.len()
            == 300)
    );
    let mut got = received_indexes(&p.sides[1], 1);
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    assert!(
        !in_order,
        "10 % loss and no reordering at all: not unordered delivery"
    );
    got.sort_unstable();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
}

/// Partially reliable streams give messages up rather than stall: under heavy loss some never
/// arrive, everything after them does, and nothing stays unacknowledged.
fn gives_up(reliability: Reliability, seed: u64) {
    let mut p = Pair::new(Config::default(), 20.0, seed);
    p.sides[0]
        .assoc
        .open_stream(
            2,
            StreamConfig {
                ordered: true,
                reliability,
            },
        )
        .unwrap();
    p.connected();
    let messages: Vec<_> = (0..300).map(|i| message(2, i, 500)).collect();
    p.send_all(2, &messages, Duration::from_secs(120));
    assert!(
        p.run_until(Duration::from_secs(60), |p| p.sides[0].assoc.buffered()
            == 0),
        "still {} bytes unacknowledged",
        p.sides[0].assoc.buffered()
    );
    // Let the last FORWARD TSN land.
    p.run_until(Duration::from_secs(5), |_| false);
    let got = received_indexes(&p.sides[1], 2);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "ordered stream out of order"
    );
    assert!(got.len() < 300, "20 % loss and nothing given up");
    assert!(got.len() > 100, "only {} of 300 arrived", got.len());
}

#[test]
fn limited_retransmissions_give_up() {
    gives_up(Reliability::MaxRetransmits(0), 4);
}

#[test]
fn limited_lifetime_gives_up() {
    gives_up(Reliability::Lifetime(Duration::from_millis(400)), 5);
}

#[test]
fn reliable_stream_under_the_same_loss_gives_nothing_up() {
    let mut p = Pair::new(Config::default(), 20.0, 4);
    p.sides[0]
        .assoc
        .open_stream(2, StreamConfig::default())
        .unwrap();
    p.connected();
    let messages: Vec<_> = (0..300).map(|i| message(2, i, 500)).collect();
    p.send_all(2, &messages, Duration::from_secs(300));
    assert!(
        p.run_until(Duration::from_secs(300), |p| p.sides[1].received.len()
            == 300)
    );
    assert_eq!(
        received_indexes(&p.sides[1], 2),
        (0..300).collect::<Vec<_>>()
    );
}

#[test]
fn close_delivers_everything_first() {
    // Room for all of it at once: most of it is still queued behind the congestion window
    // when the close comes.
    let config = Config {
        send_buffer: 4 * 1024 * 1024,
        ..Config::default()
    };
    let mut p = Pair::new(config, 1.0, 6);
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    p.connected();
    let messages: Vec<_> = (0..1000).map(|i| message(0, i, 1000)).collect();
    for m in &messages {
        p.sides[0].assoc.send(p.now, 0, m).unwrap();
    }
    p.sides[0].assoc.close(p.now);
    assert_eq!(
        p.sides[0].assoc.send(p.now, 0, b"late"),
        Err(fog_sctp::SendError::Closed)
    );
    assert!(
        p.run_until(Duration::from_secs(60), |p| p.closed(0).is_some()
            && p.closed(1).is_some())
    );
    assert_eq!(p.closed(0), Some(CloseReason::Local));
    assert_eq!(p.closed(1), Some(CloseReason::Peer));
    assert_eq!(
        received_indexes(&p.sides[1], 0),
        (0..1000).collect::<Vec<_>>()
    );
    assert_eq!(p.sides[0].assoc.poll_timeout(), None);
}

#[test]
fn a_close_before_the_handshake_still_delivers() {
    let mut p = Pair::new(Config::default(), 0.0, 14);
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    for i in 0..10 {
        p.sides[0]
            .assoc
            .send(p.now, 0, &message(0, i, 3000))
            .unwrap();
    }
    p.sides[0].assoc.close(p.now);
    assert!(
        p.run_until(Duration::from_secs(30), |p| p.closed(0).is_some()
            && p.closed(1).is_some())
    );
    assert_eq!(p.closed(0), Some(CloseReason::Local));
    assert_eq!(p.closed(1), Some(CloseReason::Peer));
    assert_eq!(
        received_indexes(&p.sides[1], 0),
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn closes_that_cross_both_complete() {
    let mut p = Pair::new(Config::default(), 0.0, 7);
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    p.sides[1]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    p.connected();
    for i in 0..50 {
        p.sides[0]
            .assoc
            .send(p.now, 0, &message(0, i, 1000))
            .unwrap();
        p.sides[1]
            .assoc
            .send(p.now, 0, &message(0, i, 1000))
            .unwrap();
    }
    let now = p.now;
    p.sides[0].assoc.close(now);
    p.sides[1].assoc.close(now);
    assert!(
        p.run_until(Duration::from_secs(30), |p| p.closed(0).is_some()
            && p.closed(1).is_some())
    );
    assert_eq!(p.closed(0), Some(CloseReason::Local));
    assert_eq!(p.closed(1), Some(CloseReason::Local));
    assert_eq!(
        received_indexes(&p.sides[0], 0),
        (0..50).collect::<Vec<_>>()
    );
    assert_eq!(
        received_indexes(&p.sides[1], 0),
        (0..50).collect::<Vec<_>>()
    );
}

/// The peer shuts down while our messages still wait in the send queue (more than one
/// congestion window): RFC 9260 §9.2 has the SHUTDOWN's receiver deliver its outstanding data
/// before it answers with SHUTDOWN ACK, so every message we sent arrives and we report the
/// peer's close (found by the chaos run, seed 1231: the queue was dropped and both sides
/// reported a clean close).
#[test]
fn a_peer_shutdown_waits_for_what_we_still_have_queued() {
    for loss in [0.0, 5.0] {
        let mut p = Pair::new(Config::default(), loss, 11);
        for side in &mut p.sides {
            side.assoc.open_stream(0, StreamConfig::default()).unwrap();
        }
        p.connected();
        let count = 100;
        for i in 0..count {
            p.sides[1]
                .assoc
                .send(p.now, 0, &message(0, i, 1000))
                .unwrap();
        }
        let now = p.now;
        p.sides[0].assoc.close(now);
        assert!(
            p.run_until(Duration::from_secs(60), |p| p.closed(0).is_some()
                && p.closed(1).is_some()),
            "loss {loss}: both ends"
        );
        assert_eq!(
            received_indexes(&p.sides[0], 0),
            (0..count).collect::<Vec<_>>(),
            "loss {loss}"
        );
        assert_eq!(p.closed(0), Some(CloseReason::Local), "loss {loss}");
        assert_eq!(p.closed(1), Some(CloseReason::Peer), "loss {loss}");
    }
}

#[test]
fn a_silent_peer_with_data_outstanding_is_dead() {
    let config = Config {
        dead_after: Duration::from_secs(10),
        ..Config::default()
    };
    let mut p = Pair::new(config, 0.0, 8);
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    p.connected();
    // Idle for longer than `dead_after`: nothing outstanding, nothing dies, and the silence
    // does not count against what is sent next.
    let idle_from = p.now;
    p.run_until(Duration::from_secs(30), |_| false);
    assert!(p.now - idle_from >= Duration::from_secs(30));
    assert_eq!(p.closed(0), None);
    p.cut = true;
    let start = p.now;
    p.sides[0]
        .assoc
        .send(p.now, 0, &message(0, 0, 100))
        .unwrap();
    assert!(p.run_until(Duration::from_secs(60), |p| p.closed(0).is_some()));
    assert_eq!(p.closed(0), Some(CloseReason::Dead));
    let took = p.now - start;
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

#[test]
fn a_close_after_a_long_idle_completes() {
    let config = Config {
        dead_after: Duration::from_secs(10),
        ..Config::default()
    };
    let mut p = Pair::new(config, 0.0, 15);
    p.connected();
    p.run_until(Duration::from_secs(60), |_| false);
    p.sides[0].assoc.close(p.now);
    assert!(
        p.run_until(Duration::from_secs(30), |p| p.closed(0).is_some()
            && p.closed(1).is_some())
    );
    assert_eq!(p.closed(0), Some(CloseReason::Local));
    assert_eq!(p.closed(1), Some(CloseReason::Peer));
}

#[test]
fn an_unanswered_close_gives_up() {
    let config = Config {
        close_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let mut p = Pair::new(config, 0.0, 9);
    p.connected();
    p.cut = true;
    p.sides[0].assoc.close(p.now);
    assert!(p.run_until(Duration::from_secs(60), |p| p.closed(0).is_some()));
    assert_eq!(p.closed(0), Some(CloseReason::LocalUnanswered));
}

#[test]
fn a_handshake_nobody_answers_fails() {
    let config = Config {
        max_init_retransmits: 2,
        ..Config::default()
    };
    let mut p = Pair::new(config, 0.0, 10);
    p.cut = true;
    assert!(p.run_until(Duration::from_secs(60), |p| p.closed(0).is_some()));
    assert!(matches!(
        p.closed(0),
        Some(CloseReason::HandshakeFailed | CloseReason::Dead)
    ));
}

#[test]
fn garbage_and_a_second_init_are_dropped_and_counted() {
    let mut p = Pair::new(Config::default(), 0.0, 11);
    p.connected();
    let b = &mut p.sides[1].assoc;
    let before = b.stats().dropped;
    let mut rng = SplitMix(12);
    for len in [0, 1, 11, 12, 13, 64, 1200] {
        let junk = rng.bytes(len);
        assert!(b.handle_packet(p.now, addr(A), &junk).is_err());
    }
    assert_eq!(b.stats().dropped, before + 7);
    // A fresh caller's INIT (a valid packet) reaches an acceptor that already has its one
    // association: refused.
    let mut other = Association::connect(p.now, Config::default(), addr(B));
    let mut buf = [0u8; 2048];
    let t = other.poll_transmit(p.now, &mut buf).expect("an INIT");
    assert!(
        b.handle_packet(p.now, addr("10.0.0.3:5000"), &buf[..t.len])
            .is_err()
    );
    assert!(b.is_established());
    // And the association still works.
    p.sides[0]
        .assoc
        .open_stream(0, StreamConfig::default())
        .unwrap();
    p.sides[0].assoc.send(p.now, 0, &message(0, 1, 10)).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| p.sides[1].received.len() == 1));
}

#[test]
fn bounds_are_refused_typed() {
    let config = Config {
        send_buffer: 10_000,
        max_message: 4_000,
        ..Config::default()
    };
    let mut p = Pair::new(config, 0.0, 13);
    let a = &mut p.sides[0].assoc;
    assert_eq!(
        a.open_stream(64, StreamConfig::default()),
        Err(fog_sctp::StreamError::OutOfRange)
    );
    a.open_stream(0, StreamConfig::default()).unwrap();
    assert_eq!(
        a.send(p.now, 0, &[0; 4_001]),
        Err(fog_sctp::SendError::TooLong)
    );
    a.send(p.now, 0, &[0; 4_000]).unwrap();
    a.send(p.now, 0, &[0; 4_000]).unwrap();
    assert_eq!(
        a.send(p.now, 0, &[0; 4_000]),
        Err(fog_sctp::SendError::Blocked)
    );
    p.connected();
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.sides[0].events.contains(&Event::Writable)
    }));
    assert!(p.run_until(Duration::from_secs(5), |p| p.sides[1].received.len() == 2));
}
