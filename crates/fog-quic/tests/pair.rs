//! Two endpoints in virtual time over a seeded link with loss, duplication and reordering:
//! streams deliver in order (content hash), identities and services are enforced, datagrams,
//! close reasons, migration in mid-transfer, and hostile input.

// Tests may read the clock: it only gives virtual time its epoch.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Protocol, classify};
use fog_quic::{
    AcceptPolicy, CloseReason, Config, ConnHandle, DatagramError, Endpoint, Event, Read,
    StreamError, StreamId, StreamKind,
};
use fog_signal::KeyPair;
use fog_test_support::SplitMix as Rng;
use sha2::{Digest, Sha256};

const SERVICE: u16 = 7;
const SERVER: usize = 0;
const CLIENT: usize = 1;

/// The link: every datagram is lost, duplicated, or delayed by a latency plus jitter (which
/// reorders), from a seeded generator.
struct Link {
    rng: Rng,
    loss: f64,
    dup: f64,
    latency: Duration,
    jitter_us: u64,
}

struct Pair {
    now: Instant,
    eps: [Endpoint; 2],
    addrs: [SocketAddr; 2],
    link: Link,
    /// In flight: (arrival, sequence) → (to, from, bytes).
    flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    events: [Vec<Event>; 2],
    datagrams: u64,
    /// Datagrams whose first packet has a long header (first byte 192–255), and a short one
    /// (64–127).
    long_headers: u64,
    short_headers: u64,
    buf: Vec<u8>,
}

fn ids() -> (KeyPair, KeyPair) {
    (KeyPair::from_seed(&[1; 32]), KeyPair::from_seed(&[2; 32]))
}

impl Pair {
    fn new(seed: u64, loss: f64) -> Self {
        let (s, c) = ids();
        Self::with(
            seed,
            loss,
            Config::default().with_service(SERVICE),
            Config::default(),
            &s,
            &c,
        )
    }

    fn with(
        seed: u64,
        loss: f64,
        server: Config,
        client: Config,
        server_id: &KeyPair,
        client_id: &KeyPair,
    ) -> Self {
        let now = Instant::now();
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let server = Endpoint::new(server, server_id, seed_bytes, now).unwrap();
        seed_bytes[8] = 1;
        let client = Endpoint::new(client, client_id, seed_bytes, now).unwrap();
        Pair {
            now,
            eps: [server, client],
            addrs: [
                "10.0.0.1:4433".parse().unwrap(),
                "10.0.0.2:5000".parse().unwrap(),
            ],
            link: Link {
                rng: Rng(seed),
                loss,
                dup: loss / 2.0,
                latency: Duration::from_millis(10),
                jitter_us: 3_000,
            },
            flight: BTreeMap::new(),
            seq: 0,
            events: [Vec::new(), Vec::new()],
            datagrams: 0,
            long_headers: 0,
            short_headers: 0,
            buf: vec![0; 1500],
        }
    }

    fn connect(&mut self) -> ConnHandle {
        let server = self.eps[SERVER].certificate().peer_id();
        let now = self.now;
        let addr = self.addrs[SERVER];
        self.eps[CLIENT]
            .connect(now, addr, server, SERVICE)
            .unwrap()
    }

    /// Sends what both endpoints have, collects their events, then moves time to the next
    /// arrival or timer and delivers or fires it. False when nothing is left to happen.
    fn step(&mut self) -> bool {
        for i in 0..2 {
            while let Some(t) = self.eps[i].poll_transmit(self.now, &mut self.buf) {
                let bytes = self.buf[..t.len].to_vec();
                // fog-core's demux must route every datagram we emit to QUIC.
                assert!(
                    matches!(bytes[0], 64..=127 | 192..=255),
                    "first byte {} outside the QUIC ranges",
                    bytes[0]
                );
                assert_eq!(classify(&bytes, false), Protocol::Quic);
                self.datagrams += 1;
                if bytes[0] & 0x80 != 0 {
                    self.long_headers += 1;
                } else {
                    self.short_headers += 1;
                }
                let from = self.addrs[i];
                if self.link.rng.chance(self.link.loss * 100.0) {
                    continue;
                }
                let copies = if self.link.rng.chance(self.link.dup * 100.0) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = self.link.latency
                        + Duration::from_micros(self.link.rng.below(self.link.jitter_us + 1));
                    self.seq += 1;
                    self.flight.insert(
                        (self.now + delay, self.seq),
                        (t.destination, from, bytes.clone()),
                    );
                }
            }
            while let Some(e) = self.eps[i].poll_event() {
                self.events[i].push(e);
            }
        }
        let next_arrival = self.flight.keys().next().map(|k| k.0);
        let next = [
            next_arrival,
            self.eps[0].poll_timeout(),
            self.eps[1].poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(entry) = self.flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, from, bytes) = entry.remove();
            // A datagram to an address no endpoint has (any more) is lost.
            if let Some(i) = self.addrs.iter().position(|&a| a == to) {
                self.eps[i].handle_datagram(self.now, from, &bytes);
            }
        }
        for (i, ep) in self.eps.iter_mut().enumerate() {
            if ep.poll_timeout().is_some_and(|t| t <= self.now) {
                ep.handle_timeout(self.now);
            }
            while let Some(e) = ep.poll_event() {
                self.events[i].push(e);
            }
        }
        true
    }

    fn take_events(&mut self, side: usize) -> Vec<Event> {
        std::mem::take(&mut self.events[side])
    }

    /// Steps until `done` or `limit` of virtual time passes.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Pair) -> bool) {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < limit,
                "not done after {limit:?} of virtual time"
            );
            assert!(self.step(), "nothing left to happen");
        }
    }

    /// Steps until both sides report `Connected`; returns (server's handle, client's handle)
    /// and the peers each side verified.
    fn handshake(&mut self) -> (ConnHandle, ConnHandle) {
        let client = self.connect();
        let mut server = None;
        let mut client_ok = false;
        self.run_until(Duration::from_secs(10), |p| {
            for e in p.take_events(SERVER) {
                if let Event::Connected {
                    conn,
                    peer,
                    service,
                } = e
                {
                    assert_eq!(peer, KeyPair::from_seed(&[2; 32]).peer_id());
                    assert_eq!(service, SERVICE);
                    server = Some(conn);
                }
            }
            for e in p.take_events(CLIENT) {
                if let Event::Connected {
                    conn,
                    peer,
                    service,
                } = e
                {
                    assert_eq!(conn, client);
                    assert_eq!(peer, KeyPair::from_seed(&[1; 32]).peer_id());
                    assert_eq!(service, SERVICE);
                    client_ok = true;
                }
            }
            server.is_some() && client_ok
        });
        (server.unwrap(), client)
    }
}

/// A sender of `data` on one stream and a reader that hashes what arrives.
struct Transfer {
    data: Vec<u8>,
    sent: usize,
    stream: StreamId,
    finished: bool,
    received: Sha256,
    received_len: usize,
    peer_stream: Option<StreamId>,
    done: bool,
    /// The server's events, which `pump` takes.
    server_events: Vec<Event>,
}

impl Transfer {
    fn start(pair: &mut Pair, conn: ConnHandle, len: usize, seed: u64) -> Self {
        let stream = pair.eps[CLIENT]
            .open(conn, StreamKind::Bidirectional)
            .unwrap();
        Transfer {
            data: Rng(seed).bytes(len),
            sent: 0,
            stream,
            finished: false,
            received: Sha256::new(),
            received_len: 0,
            peer_stream: None,
            done: false,
            server_events: Vec::new(),
        }
    }

    /// Writes what fits (client) and reads what arrived (server).
    fn pump(&mut self, pair: &mut Pair, client: ConnHandle, server: ConnHandle) {
        while self.sent < self.data.len() {
            match pair.eps[CLIENT].write(client, self.stream, &self.data[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(StreamError::Blocked) => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        if self.sent == self.data.len() && !self.finished {
            pair.eps[CLIENT].finish(client, self.stream).unwrap();
            self.finished = true;
        }
        for e in pair.take_events(SERVER) {
            if let Event::StreamOpened { stream, .. } = e {
                self.peer_stream = Some(stream);
            }
            self.server_events.push(e);
        }
        let Some(stream) = self.peer_stream else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pair.eps[SERVER].read(server, stream, &mut buf) {
                Ok(Read::Data(n)) => {
                    self.received.update(&buf[..n]);
                    self.received_len += n;
                }
                Ok(Read::Finished) => {
                    self.done = true;
                    break;
                }
                Err(StreamError::Blocked) => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn check(self) {
        assert_eq!(self.received_len, self.data.len());
        let sent: [u8; 32] = Sha256::digest(&self.data).into();
        let got: [u8; 32] = self.received.finalize().into();
        assert_eq!(sent, got, "content hash differs");
    }
}

fn transfer_over(loss: f64, len: usize, seed: u64) -> (Pair, u64) {
    let mut pair = Pair::new(seed, loss);
    let (server, client) = pair.handshake();
    let mut t = Transfer::start(&mut pair, client, len, seed);
    pair.run_until(Duration::from_secs(600), |p| {
        t.pump(p, client, server);
        t.done
    });
    let lost = pair.eps[CLIENT].stats(client).unwrap().lost_packets;
    t.check();
    (pair, lost)
}

const MIB: usize = 1024 * 1024;

#[test]
fn stream_delivers_in_order_without_loss() {
    // No loss, but jitter reorders, which QUIC's packet threshold may take for loss.
    let (pair, _) = transfer_over(0.0, 3 * MIB, 1);
    assert!(pair.datagrams > 2_000);
}

/// fog-core's demux routes first bytes 64–127 (short header; 64–79 only when not from a TURN
/// server) and 192–255 (long header) to QUIC; `Pair::step` checks every datagram either side
/// emits against that and `classify`. Here both header forms must have been seen, so the check
/// covered the handshake's long headers and the data's short ones, and the counters say the
/// connection did its work.
#[test]
fn every_datagram_of_both_header_forms_is_routed_to_quic() {
    let (pair, _) = transfer_over(0.0, 256 * 1024, 16);
    assert!(
        pair.long_headers >= 2,
        "long headers: {}",
        pair.long_headers
    );
    assert!(
        pair.short_headers > 200,
        "short headers: {}",
        pair.short_headers
    );
    let stats = pair.eps[CLIENT]
        .stats(pair.eps[CLIENT].connections().next().unwrap())
        .unwrap();
    assert!(stats.rtt >= Duration::from_millis(10) && stats.rtt < Duration::from_millis(50));
    assert!(stats.bytes_sent > 256 * 1024 && stats.packets_sent > 200 && stats.cwnd > 0);
    assert_eq!(stats.mtu, 1200);
}

#[test]
fn stream_delivers_in_order_at_1_percent_loss() {
    let (_, lost) = transfer_over(0.01, 3 * MIB, 2);
    assert!(
        lost > 0,
        "the link lost nothing: the test would not test recovery"
    );
}

#[test]
fn stream_delivers_in_order_at_5_percent_loss() {
    let (_, lost) = transfer_over(0.05, 3 * MIB, 3);
    assert!(lost > 0);
}

#[test]
fn wrong_peer_id_is_rejected_on_both_sides() {
    let mut pair = Pair::new(4, 0.0);
    // The client expects someone else at the server's address.
    let impostor_expected = KeyPair::from_seed(&[9; 32]).peer_id();
    let now = pair.now;
    let addr = pair.addrs[SERVER];
    let conn = pair.eps[CLIENT]
        .connect(now, addr, impostor_expected, SERVICE)
        .unwrap();
    let mut closed = None;
    pair.run_until(Duration::from_secs(10), |p| {
        for e in p.take_events(CLIENT) {
            assert!(
                !matches!(e, Event::Connected { .. }),
                "connected to the wrong peer"
            );
            if let Event::Closed { conn: c, reason } = e {
                assert_eq!(c, conn);
                closed = Some(reason);
            }
        }
        closed.is_some()
    });
    assert_eq!(closed, Some(CloseReason::IdentityRejected));
    assert!(
        pair.take_events(SERVER)
            .iter()
            .all(|e| !matches!(e, Event::Connected { .. }))
    );
}

#[test]
fn accept_policy_refuses_unlisted_peers() {
    let (s, c) = ids();
    let only = AcceptPolicy::Only([KeyPair::from_seed(&[3; 32]).peer_id()].into());
    let server = Config {
        accept: only,
        ..Config::default().with_service(SERVICE)
    };
    let mut pair = Pair::with(5, 0.0, server, Config::default(), &s, &c);
    pair.connect();
    let mut client_reason = None;
    let mut server_reason = None;
    pair.run_until(Duration::from_secs(10), |p| {
        for side in [SERVER, CLIENT] {
            for e in p.take_events(side) {
                // TLS 1.3: the client finishes before the server has checked its certificate
                // (RFC 8446 §4.4.4), so it may see `Connected` before the refusal; the server
                // never admits it.
                assert!(
                    side == CLIENT || !matches!(e, Event::Connected { .. }),
                    "unlisted peer connected"
                );
                if let Event::Closed { reason, .. } = e {
                    if side == SERVER {
                        server_reason = Some(reason);
                    } else {
                        client_reason = Some(reason);
                    }
                }
            }
        }
        client_reason.is_some() && server_reason.is_some()
    });
    assert_eq!(server_reason, Some(CloseReason::IdentityRejected));
    assert_eq!(client_reason, Some(CloseReason::IdentityRejected));

    // Listed, the same client gets in.
    pair.eps[SERVER].set_accept_policy(AcceptPolicy::Only([c.peer_id()].into()));
    pair.handshake();
}

#[test]
fn wrong_service_fails_the_handshake_with_a_clear_reason() {
    let mut pair = Pair::new(6, 0.0);
    let server = pair.eps[SERVER].certificate().peer_id();
    let now = pair.now;
    let addr = pair.addrs[SERVER];
    pair.eps[CLIENT]
        .connect(now, addr, server, SERVICE + 1)
        .unwrap();
    let mut reason = None;
    pair.run_until(Duration::from_secs(10), |p| {
        for side in [SERVER, CLIENT] {
            for e in p.take_events(side) {
                assert!(!matches!(e, Event::Connected { .. }));
                // The server refuses in its first flight, before any connection state: it
                // reports nothing.
                assert_eq!(side, CLIENT, "server event {e:?}");
                if let Event::Closed { reason: r, .. } = e {
                    reason = Some(r);
                }
            }
        }
        reason.is_some()
    });
    assert_eq!(reason, Some(CloseReason::ServiceMismatch));
    assert!(CloseReason::ServiceMismatch.to_string().contains("ALPN"));
}

#[test]
fn datagrams_arrive_and_oversized_ones_are_refused() {
    let mut pair = Pair::new(7, 0.0);
    let (server, client) = pair.handshake();
    let max = pair.eps[CLIENT].max_datagram_size(client).unwrap();
    assert!(max > 1000 && max < 1200, "max datagram {max}");
    assert_eq!(
        pair.eps[CLIENT].send_datagram(client, &vec![0; max + 1]),
        Err(DatagramError::TooLarge { max })
    );
    for i in 0..20u8 {
        pair.eps[CLIENT].send_datagram(client, &[i; 100]).unwrap();
    }
    pair.eps[CLIENT]
        .send_datagram(client, &vec![0xab; max])
        .unwrap();
    let mut got = Vec::new();
    pair.run_until(Duration::from_secs(5), |p| {
        while let Some(d) = p.eps[SERVER].recv_datagram(server) {
            got.push(d);
        }
        got.len() == 21
    });
    // Datagrams may be reordered (RFC 9221 §5): compare as a set.
    got.sort();
    let mut expected: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100]).collect();
    expected.push(vec![0xab; max]);
    expected.sort();
    assert_eq!(got.iter().map(|d| d.to_vec()).collect::<Vec<_>>(), expected);
    assert!(
        pair.take_events(SERVER)
            .iter()
            .any(|e| matches!(e, Event::DatagramReceived { .. }))
    );
}

#[test]
fn close_code_and_reason_reach_the_peer_then_both_drain() {
    let mut pair = Pair::new(8, 0.0);
    let (server, client) = pair.handshake();
    let now = pair.now;
    pair.eps[SERVER]
        .close(now, server, 42, b"service stopped")
        .unwrap();
    let mut seen = None;
    let mut drained = [false, false];
    pair.run_until(Duration::from_secs(10), |p| {
        for side in [SERVER, CLIENT] {
            for e in p.take_events(side) {
                match e {
                    Event::Closed { reason, .. } if side == CLIENT => seen = Some(reason),
                    Event::Drained { .. } => drained[side] = true,
                    _ => {}
                }
            }
        }
        seen.is_some() && drained == [true, true]
    });
    assert_eq!(
        seen,
        Some(CloseReason::ByPeer {
            code: 42,
            reason: b"service stopped".to_vec()
        })
    );
    assert_eq!(
        pair.eps[CLIENT].open(client, StreamKind::Unidirectional),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(pair.eps[SERVER].connections().count(), 0);
}

#[test]
fn unidirectional_stream_reset_is_seen_by_the_reader() {
    let mut pair = Pair::new(9, 0.0);
    let (server, client) = pair.handshake();
    let s = pair.eps[CLIENT]
        .open(client, StreamKind::Unidirectional)
        .unwrap();
    assert!(!s.is_bidirectional());
    pair.eps[CLIENT].write(client, s, b"partial").unwrap();
    let mut opened = None;
    pair.run_until(Duration::from_secs(5), |p| {
        for e in p.take_events(SERVER) {
            if let Event::StreamOpened { stream, .. } = e {
                opened = Some(stream);
            }
        }
        opened.is_some()
    });
    let stream = opened.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        pair.eps[SERVER].read(server, stream, &mut buf),
        Ok(Read::Data(7))
    );
    pair.eps[CLIENT].reset(client, s, 99).unwrap();
    let mut result = None;
    pair.run_until(Duration::from_secs(5), |p| {
        match p.eps[SERVER].read(server, stream, &mut buf) {
            Err(StreamError::Blocked) => {}
            other => result = Some(other),
        }
        result.is_some()
    });
    assert_eq!(result, Some(Err(StreamError::Reset(99))));
}

/// The client's address changes mid-transfer (a NAT rebinding, or the Node moving it): the
/// server follows the authenticated packets after validating the path; no new handshake.
#[test]
fn client_address_change_mid_transfer_is_followed() {
    let mut pair = Pair::new(10, 0.0);
    let (server, client) = pair.handshake();
    let mut t = Transfer::start(&mut pair, client, 2 * MIB, 10);
    let new_addr: SocketAddr = "10.0.0.3:6000".parse().unwrap();
    let mut moved = false;
    let mut followed = false;
    pair.run_until(Duration::from_secs(120), |p| {
        t.pump(p, client, server);
        if !moved && t.received_len > MIB / 2 {
            p.addrs[CLIENT] = new_addr;
            moved = true;
        }
        t.done
    });
    for e in std::mem::take(&mut t.server_events) {
        assert!(!matches!(e, Event::Connected { .. }), "a second handshake");
        if e == (Event::RemoteChanged {
            conn: server,
            remote: new_addr,
        }) {
            followed = true;
        }
    }
    assert!(moved && followed);
    assert_eq!(pair.eps[SERVER].remote(server), Some(new_addr));
    t.check();
}

/// The server becomes reachable elsewhere mid-transfer (relay → direct): its old address is gone,
/// the client's owner calls `set_remote`, and the connection continues without a handshake.
#[test]
fn set_remote_moves_the_connection_mid_transfer() {
    let mut pair = Pair::new(11, 0.01);
    let (server, client) = pair.handshake();
    let mut t = Transfer::start(&mut pair, client, 2 * MIB, 11);
    let new_addr: SocketAddr = "10.0.0.9:7000".parse().unwrap();
    let mut moved = false;
    pair.run_until(Duration::from_secs(120), |p| {
        t.pump(p, client, server);
        if !moved && t.received_len > MIB / 2 {
            p.addrs[SERVER] = new_addr;
            let now = p.now;
            p.eps[CLIENT].set_remote(now, client, new_addr).unwrap();
            moved = true;
        }
        t.done
    });
    assert!(moved);
    assert_eq!(pair.eps[CLIENT].remote(client), Some(new_addr));
    let events = pair.take_events(CLIENT);
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, Event::Connected { .. } | Event::Closed { .. }))
    );
    t.check();
}

#[test]
fn hostile_datagrams_never_panic_and_leave_the_connection_working() {
    let mut pair = Pair::new(12, 0.0);
    let (server, client) = pair.handshake();
    let mut rng = Rng(12);
    let mut captured = Vec::new();
    // Capture real datagrams to truncate and mangle.
    let s = pair.eps[CLIENT]
        .open(client, StreamKind::Bidirectional)
        .unwrap();
    pair.eps[CLIENT].write(client, s, b"hello").unwrap();
    while let Some(t) = pair.eps[CLIENT].poll_transmit(pair.now, &mut pair.buf) {
        captured.push(pair.buf[..t.len].to_vec());
    }
    let attacker: SocketAddr = "10.6.6.6:666".parse().unwrap();
    let now = pair.now;
    for ep in &mut pair.eps {
        for len in [0, 1, 2, 5, 6, 7, 20, 1200, 1500, 65_535] {
            for _ in 0..20 {
                let bytes = rng.bytes(len);
                ep.handle_datagram(now, attacker, &bytes);
                // From the peer's own address too: nothing authenticates, nothing changes.
                ep.handle_datagram(now, "10.0.0.2:5000".parse().unwrap(), &bytes);
                ep.handle_datagram(now, "10.0.0.1:4433".parse().unwrap(), &bytes);
            }
        }
        for d in &captured {
            for cut in 0..d.len() {
                ep.handle_datagram(now, attacker, &d[..cut]);
            }
            for i in 0..d.len().min(64) {
                let mut bad = d.clone();
                bad[i] ^= 1 << (i % 8);
                ep.handle_datagram(now, attacker, &bad);
            }
        }
    }
    // The connection still works and was not moved to the attacker.
    pair.eps[CLIENT].finish(client, s).unwrap();
    let mut t = Transfer::start(&mut pair, client, 64 * 1024, 12);
    pair.run_until(Duration::from_secs(30), |p| {
        t.pump(p, client, server);
        t.done
    });
    t.check();
    assert_eq!(pair.eps[SERVER].remote(server), Some(pair.addrs[CLIENT]));
    assert_eq!(pair.eps[CLIENT].remote(client), Some(pair.addrs[SERVER]));
}

#[test]
fn same_seeds_give_the_same_wire_up_to_tls_randomness() {
    // quinn-proto's choices come from the seed: two runs issue the same connection ids, so the
    // first Initial's destination id (bytes 6..14) is the same.
    let first = |seed| {
        let mut pair = Pair::new(seed, 0.0);
        pair.connect();
        let t = pair.eps[CLIENT]
            .poll_transmit(pair.now, &mut pair.buf)
            .unwrap();
        pair.buf[..t.len][6..14].to_vec()
    };
    assert_eq!(first(13), first(13));
    assert_ne!(first(13), first(14));
}

#[test]
fn endpoint_without_services_refuses_to_serve() {
    let (s, c) = ids();
    let mut pair = Pair::with(15, 0.0, Config::default(), Config::default(), &s, &c);
    pair.connect();
    let mut reason = None;
    pair.run_until(Duration::from_secs(120), |p| {
        for e in p.take_events(CLIENT) {
            if let Event::Closed { reason: r, .. } = e {
                reason = Some(r);
            }
        }
        assert!(p.take_events(SERVER).is_empty());
        reason.is_some()
    });
    assert_eq!(reason, Some(CloseReason::TimedOut));
}

/// A peer cannot grow our connections past `max_connections`: the next handshake is refused
/// (CONNECTION_REFUSED, RFC 9000 §20.1) and the first connection is untouched.
#[test]
fn incoming_connections_are_bounded() {
    let (s, c) = ids();
    let server = Config {
        max_connections: 1,
        ..Config::default().with_service(SERVICE)
    };
    let mut pair = Pair::with(17, 0.0, server, Config::default(), &s, &c);
    let (first_server, _) = pair.handshake();
    let second = pair.connect();
    let mut refused = None;
    pair.run_until(Duration::from_secs(10), |p| {
        for e in p.take_events(CLIENT) {
            if let Event::Closed { conn, reason } = e {
                assert_eq!(conn, second);
                refused = Some(reason);
            }
        }
        refused.is_some()
    });
    assert!(
        matches!(
            refused,
            Some(CloseReason::Protocol {
                code: 0x2,
                by_peer: true,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        pair.eps[SERVER].connections().collect::<Vec<_>>(),
        [first_server]
    );
}

#[test]
fn invalid_configs_are_refused_with_their_reason() {
    let id = KeyPair::from_seed(&[1; 32]);
    let now = Instant::now();
    let new = |config: Config| {
        Endpoint::new(config, &id, [0; 32], now)
            .map(|_| ())
            .unwrap_err()
    };
    use fog_quic::ConfigError;
    assert_eq!(
        new(Config {
            initial_mtu: 1199,
            ..Config::default()
        }),
        ConfigError::MtuTooSmall(1199)
    );
    assert_eq!(
        new(Config {
            initial_mtu: 65_535,
            ..Config::default()
        }),
        ConfigError::MtuTooLarge(65_535)
    );
    assert_eq!(
        new(Config {
            max_connections: 0,
            ..Config::default()
        }),
        ConfigError::NoConnections
    );
    let forever = Duration::from_secs(u64::MAX / 1000);
    assert_eq!(
        new(Config {
            idle_timeout: forever,
            ..Config::default()
        }),
        ConfigError::IdleTimeoutTooLarge(forever)
    );
}

/// The accepting side's owner moves the connection itself (the Node switched paths and knows the
/// client's new address): datagrams go there at once, and the client's datagrams from there are
/// taken as the connection's without waiting for quinn-proto's path validation.
#[test]
fn set_remote_on_the_accepting_side_moves_the_connection() {
    let mut pair = Pair::new(18, 0.01);
    let (server, client) = pair.handshake();
    let mut t = Transfer::start(&mut pair, client, MIB, 18);
    let new_addr: SocketAddr = "10.0.0.7:7777".parse().unwrap();
    let mut moved = false;
    pair.run_until(Duration::from_secs(120), |p| {
        t.pump(p, client, server);
        if !moved && t.received_len > MIB / 4 {
            p.addrs[CLIENT] = new_addr;
            let now = p.now;
            p.eps[SERVER].set_remote(now, server, new_addr).unwrap();
            moved = true;
        }
        t.done
    });
    assert!(moved);
    assert_eq!(pair.eps[SERVER].remote(server), Some(new_addr));
    let changes: Vec<_> = std::mem::take(&mut t.server_events)
        .into_iter()
        .filter(|e| matches!(e, Event::RemoteChanged { .. } | Event::Connected { .. }))
        .collect();
    // Only the owner's own move: no second handshake, no other address.
    assert_eq!(
        changes,
        [Event::RemoteChanged {
            conn: server,
            remote: new_addr
        }]
    );
    t.check();
}

/// Stream ids come from the caller: using a unidirectional stream against its direction, or an
/// id that was never opened, is a typed error, never a panic inside quinn-proto.
#[test]
fn misused_stream_ids_are_refused() {
    let mut pair = Pair::new(19, 0.0);
    let (server, client) = pair.handshake();
    let ours = pair.eps[CLIENT]
        .open(client, StreamKind::Unidirectional)
        .unwrap();
    pair.eps[CLIENT].write(client, ours, b"x").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        pair.eps[CLIENT].read(client, ours, &mut buf),
        Err(StreamError::WrongDirection)
    );
    assert_eq!(
        pair.eps[CLIENT].stop(client, ours, 0),
        Err(StreamError::WrongDirection)
    );
    let mut theirs = None;
    pair.run_until(Duration::from_secs(5), |p| {
        for e in p.take_events(SERVER) {
            if let Event::StreamOpened { stream, .. } = e {
                theirs = Some(stream);
            }
        }
        theirs.is_some()
    });
    let theirs = theirs.unwrap();
    assert_eq!(
        pair.eps[SERVER].write(server, theirs, b"no"),
        Err(StreamError::WrongDirection)
    );
    assert_eq!(
        pair.eps[SERVER].finish(server, theirs),
        Err(StreamError::WrongDirection)
    );
    assert_eq!(
        pair.eps[SERVER].reset(server, theirs, 0),
        Err(StreamError::WrongDirection)
    );
    // Never opened, and beyond QUIC's 62 bits.
    for id in [StreamId(400), StreamId(u64::MAX)] {
        assert!(pair.eps[CLIENT].write(client, id, b"?").is_err());
        assert!(pair.eps[CLIENT].read(client, id, &mut buf).is_err());
    }
    assert_eq!(
        pair.eps[CLIENT].reset(client, ours, 1 << 62),
        Err(StreamError::CodeTooLarge)
    );
}

/// The owner may move a connection before its handshake completes (a direct path found while
/// the relayed handshake is in flight); the handshake finishes on the new path.
#[test]
fn set_remote_during_the_handshake() {
    let mut pair = Pair::new(20, 0.0);
    let client = pair.connect();
    // The first flight leaves for the old address, then the server moves.
    assert!(pair.step());
    let new_addr: SocketAddr = "10.0.0.5:4444".parse().unwrap();
    pair.addrs[SERVER] = new_addr;
    let now = pair.now;
    pair.eps[CLIENT].set_remote(now, client, new_addr).unwrap();
    let mut connected = [false, false];
    pair.run_until(Duration::from_secs(30), |p| {
        for side in [SERVER, CLIENT] {
            for e in p.take_events(side) {
                assert!(!matches!(e, Event::Closed { .. }), "{e:?}");
                connected[side] |= matches!(e, Event::Connected { .. });
            }
        }
        connected == [true, true]
    });
    assert_eq!(pair.eps[CLIENT].remote(client), Some(new_addr));
}
