//! A reliable transport delivers every byte, in order, in the simulator: a megabyte of a
//! seeded pattern from node A to node B in messages of 1 byte to 16 KiB, sent as fast as the
//! stream takes them (`Blocked`, then wait for `Writable`), checked by its SHA-256 at B;
//! under 0 %, 1 % and 5 % loss on every access link, each time with reordering, duplication
//! and jitter on those links too ([`rough`]); through NAT pairs of every kind of path the
//! NAT matrix knows (direct, peer-reflexive, predicted, relayed through TURN, relayed over
//! signaling), across a relay → direct path change in the middle of a transfer, and both
//! ways at once.
//!
//! Every case runs for each transport in [`TRANSPORTS`]. The pairs are [`REPRESENTATIVE`],
//! one per kind of path, so that the file stays well under a minute in a debug build on two
//! cores; `FOG_DELIVERY_ALL_PAIRS=1` runs every pair of presets instead (each of the 100,
//! about ten times as long; a release build is the sensible way):
//!
//! ```text
//! FOG_DELIVERY_ALL_PAIRS=1 cargo test --release -p fogconnect --test delivery
//! ```
//!
//! `FOG_DELIVERY_SEEDS=N` runs each pair with N seeds instead of one (with either set of
//! pairs), for hunting rare failures.

use std::time::{Duration, Instant};

use fog_examples::scenario::{Profile, Scenario, SimNode};
use fog_sim::presets::Preset;
use fogconnect::{ConnectionId, Event, SendError, Transport};
use sha2::{Digest, Sha256};

/// The reliable transports the node runs. uTP and QUIC are one line each here once the node
/// runs them.
const TRANSPORTS: &[Transport] = &[
    Transport::Kcp,
    Transport::Quic,
    Transport::Utp,
    Transport::Sctp,
];

/// One pair of presets for each kind of path in the NAT matrix's oracle (see
/// `benches/matrix.md`): A's preset, B's, and what the path is.
const REPRESENTATIVE: &[(Preset, Preset)] = &[
    // Plain: both cones punch at once (the most common pair in the field).
    (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
    // Plain through two NATs, one of them a carrier's.
    (Preset::CgnatBehindHome, Preset::RestrictedCone),
    // Peer-reflexive: the symmetric side is learnt from its checks.
    (Preset::FullCone, Preset::SymmetricRandom),
    // Predicted: a sequential symmetric NAT's next port.
    (Preset::SymmetricSequential, Preset::PortRestrictedCone),
    // Relayed through TURN: no direct path exists.
    (Preset::SymmetricRandom, Preset::SymmetricSequential),
    // Relayed over the signaling connection: UDP does not pass at all.
    (Preset::UdpBlocked, Preset::FullCone),
];

/// Bytes of one transfer.
const SIZE: usize = 1 << 20;
/// The largest message; sizes are drawn from `1..=MAX_MESSAGE`.
const MAX_MESSAGE: usize = 16 * 1024;
/// Virtual time a transfer may take, from the first send to the last byte at B.
const LIMIT: Duration = Duration::from_secs(120);

/// The access links' loss, with reordering (2 % of datagrams up to 20 ms late, so that up to
/// 20 ms' worth of later ones overtake them), 1 % duplication and 2 ms of jitter.
fn rough(loss: f64) -> Profile {
    Profile {
        loss,
        jitter: Duration::from_millis(2),
        reorder: 0.02,
        reorder_delay: Duration::from_millis(20),
        duplicate: 0.01,
        ..Profile::default()
    }
}

/// The pairs to run: [`REPRESENTATIVE`], or all of them with `FOG_DELIVERY_ALL_PAIRS` set.
fn pairs() -> Vec<(Preset, Preset)> {
    if std::env::var_os("FOG_DELIVERY_ALL_PAIRS").is_some() {
        Preset::ALL
            .iter()
            .flat_map(|&a| Preset::ALL.iter().map(move |&b| (a, b)))
            .collect()
    } else {
        REPRESENTATIVE.to_vec()
    }
}

/// A 64-bit LCG: the pattern's bytes and the messages' sizes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Node A connects to B over `transport`; both handles once both nodes report `Connected`.
fn connect(s: &mut Scenario, transport: &Transport) -> (ConnectionId, ConnectionId) {
    assert!(s.wait_ready(), "both nodes ready");
    let to = s.hosts[1].1;
    let transport = transport.clone();
    s.sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, transport)
        })
        .expect("A may connect");
    let connected = |s: &Scenario, i: usize| {
        s.events[i].iter().find_map(|(_, e)| match e {
            Event::Connected { id, .. } => Some(*id),
            _ => None,
        })
    };
    for _ in 0..300 {
        if let (Some(a), Some(b)) = (connected(s, 0), connected(s, 1)) {
            return (a, b);
        }
        s.run_for(Duration::from_millis(50));
    }
    panic!("not connected in 15 s: {:#?}", s.events);
}

/// How one direction of a transfer went.
struct Delivered {
    /// When the sender handed its first message to its node.
    first_send: Instant,
    /// When the receiver's node reported the last byte.
    last_byte: Instant,
    /// When the receiver's node reported each message, and its length.
    arrivals: Vec<(Instant, usize)>,
}

/// One direction of a transfer: node `from` sends [`SIZE`] bytes of a seeded pattern on
/// `id`, in messages of 1 to [`MAX_MESSAGE`] bytes; the other node receives them on `peer_id`.
struct Flow {
    from: usize,
    id: ConnectionId,
    peer_id: ConnectionId,
    pattern: Lcg,
    sizes: Lcg,
    sent: Vec<u8>,
    /// The next message, once drawn (the stream refused it if it is still here).
    message: Vec<u8>,
    /// After `Blocked`: how many of the sender's events there were then; a `Writable`
    /// after them lets it go on.
    blocked_at: Option<usize>,
}

impl Flow {
    fn new(from: usize, (id, peer_id): (ConnectionId, ConnectionId), seed: u64) -> Flow {
        Flow {
            from,
            id,
            peer_id,
            pattern: Lcg(seed),
            sizes: Lcg(!seed),
            sent: Vec::with_capacity(SIZE),
            message: Vec::new(),
            blocked_at: None,
        }
    }

    fn done(&self) -> bool {
        self.sent.len() >= SIZE
    }

    /// Sends what the stream takes now: until it says `Blocked` (then nothing until a
    /// `Writable`), until the end, or one message when `one`.
    fn push(&mut self, s: &mut Scenario, one: bool) {
        if let Some(mark) = self.blocked_at {
            if !s.events[self.from][mark..]
                .iter()
                .any(|(_, e)| *e == Event::Writable)
            {
                return;
            }
            self.blocked_at = None;
        }
        while !self.done() {
            if self.message.is_empty() {
                let len =
                    (1 + self.sizes.next() as usize % MAX_MESSAGE).min(SIZE - self.sent.len());
                self.message.resize(len, 0);
                self.pattern.fill(&mut self.message);
            }
            let (id, message) = (self.id, &self.message);
            match s.with_node(self.from, |n, now| n.send(now, id, message)) {
                Ok(()) => {
                    self.sent.extend_from_slice(&self.message);
                    self.message.clear();
                    if one {
                        return;
                    }
                }
                Err(SendError::Blocked) => {
                    self.blocked_at = Some(s.events[self.from].len());
                    return;
                }
                Err(e) => panic!(
                    "node {} send after {} bytes: {e}",
                    self.from,
                    self.sent.len()
                ),
            }
        }
    }

    /// The receiver's messages on this flow since its event `mark`: (when, data).
    fn received<'a>(
        &self,
        s: &'a Scenario,
        mark: usize,
    ) -> impl Iterator<Item = (Instant, &'a [u8])> {
        let peer_id = self.peer_id;
        s.events[1 - self.from][mark..]
            .iter()
            .filter_map(move |(at, e)| match e {
                Event::Data { id, data } if *id == peer_id => Some((*at, data.as_slice())),
                _ => None,
            })
    }
}

/// Runs `flows` at once, each as fast as its stream takes the bytes, or one message per `gap`
/// when given; each receiver must report exactly its flow's bytes, in order, within
/// [`LIMIT`]. Panics with what differs otherwise.
fn transfer(s: &mut Scenario, mut flows: Vec<Flow>, gap: Option<Duration>) -> Vec<Delivered> {
    let marks = [s.events[0].len(), s.events[1].len()];
    let first_send = s.sim.now();
    let deadline = first_send + LIMIT;
    loop {
        for flow in &mut flows {
            flow.push(s, gap.is_some());
        }
        if flows.iter().all(Flow::done) {
            break;
        }
        assert!(
            s.sim.now() < deadline,
            "still sending after {LIMIT:?}: {:?} bytes sent",
            flows.iter().map(|f| f.sent.len()).collect::<Vec<_>>()
        );
        s.run_for(gap.unwrap_or(Duration::from_millis(5)));
    }
    let arrived = |s: &Scenario, f: &Flow| -> usize {
        f.received(s, marks[1 - f.from]).map(|(_, d)| d.len()).sum()
    };
    while flows.iter().any(|f| arrived(s, f) < SIZE) && s.sim.now() < deadline {
        s.run_for(Duration::from_millis(50));
    }
    let ended = |i: usize| {
        s.events[i][marks[i]..]
            .iter()
            .find(|(_, e)| matches!(e, Event::Closed { .. } | Event::Failed { .. }))
    };
    assert!(
        ended(0).is_none() && ended(1).is_none(),
        "the connection ended: {:?} {:?}",
        ended(0),
        ended(1)
    );
    flows
        .iter()
        .map(|f| {
            let mut hash = Sha256::new();
            let mut got = Vec::with_capacity(SIZE);
            let mut arrivals = Vec::new();
            for (at, data) in f.received(s, marks[1 - f.from]) {
                hash.update(data);
                got.extend_from_slice(data);
                arrivals.push((at, data.len()));
            }
            if hash.finalize() != Sha256::digest(&f.sent) {
                let first_difference = f.sent.iter().zip(&got).position(|(x, y)| x != y);
                panic!(
                    "node {} got {} of {} bytes in {} messages; first difference at \
                     {first_difference:?}",
                    1 - f.from,
                    got.len(),
                    f.sent.len(),
                    arrivals.len()
                );
            }
            Delivered {
                first_send,
                last_byte: arrivals.last().map_or(first_send, |x| x.0),
                arrivals,
            }
        })
        .collect()
}

/// Every pair of [`pairs`] at `loss` (with [`rough`] links), over every transport. A pair
/// that fails does not stop the others: the panic names them all.
fn every_pair_delivers(loss: f64) {
    let seeds: u64 = std::env::var("FOG_DELIVERY_SEEDS")
        .ok()
        .map_or(1, |n| n.parse().expect("FOG_DELIVERY_SEEDS takes a number"));
    let mut failed = Vec::new();
    for transport in TRANSPORTS {
        for (k, &(a, b)) in pairs().iter().enumerate() {
            for round in 0..seeds {
                let seed = 1_000 + k as u64 + 1_000 * round;
                let run = std::panic::catch_unwind(|| {
                    let mut s = Scenario::new(a, b, seed, &rough(loss));
                    let ids = connect(&mut s, transport);
                    let d = transfer(&mut s, vec![Flow::new(0, ids, seed)], None);
                    (d[0].last_byte - d[0].first_send, s.sim.stats().duplicated)
                });
                let case = format!("{transport:?} {} -> {} seed {seed}", a.name(), b.name());
                match run {
                    Ok((took, duplicated)) => eprintln!(
                        "{case} at {loss}: {SIZE} bytes in {took:?} (virtual), {duplicated} \
                         datagrams duplicated"
                    ),
                    Err(_) => failed.push(case),
                }
            }
        }
    }
    assert!(failed.is_empty(), "at {loss} loss: {failed:#?}");
}

#[test]
fn every_byte_arrives_in_order_without_loss() {
    every_pair_delivers(0.0);
}

#[test]
fn every_byte_arrives_in_order_at_1_percent_loss() {
    every_pair_delivers(0.01);
}

#[test]
fn every_byte_arrives_in_order_at_5_percent_loss() {
    every_pair_delivers(0.05);
}

/// A random-port NAT and a port-restricted cone: the relay usually carries the connection
/// first, and a birthday round finds a direct path about half a second to two seconds later
/// (the matrix's `birthday` rows). A sends one message every 40 ms (about 4.5 s for the
/// megabyte), so that the move happens while bytes are arriving: some arrive before it, the
/// rest after, and all in order.
///
/// Whether the relay comes first depends on the run (the birthday round wins the race now
/// and then), so seeds are tried from `seed` on until a run starts relayed; every transfer
/// on the way must deliver too. The path must then change to direct inside the transfer.
fn across_a_relay_to_direct_change(loss: f64, seed: u64) {
    for transport in TRANSPORTS {
        let mut runs = Vec::new();
        let changed = (seed..seed + 10).find(|&seed| {
            let mut s = Scenario::new(
                Preset::SymmetricRandom,
                Preset::PortRestrictedCone,
                seed,
                &rough(loss),
            );
            let ids = connect(&mut s, transport);
            let flow = Flow::new(0, ids, seed);
            let d = transfer(&mut s, vec![flow], Some(Duration::from_millis(40))).remove(0);
            let paths = s.paths(1);
            let relayed_first = paths.first().is_some_and(|p| p.3);
            let direct_at = paths.iter().find(|p| !p.3).map(|p| p.0);
            let before = direct_at.map(|at| d.arrivals.iter().filter(|x| x.0 < at).count());
            runs.push((seed, relayed_first, before, d.arrivals.len()));
            let Some(before) = before.filter(|&n| relayed_first && n > 0 && n < d.arrivals.len())
            else {
                return false;
            };
            eprintln!(
                "{transport:?} at {loss}, seed {seed}: {before} of {} messages before the move \
                 to direct at {:?}; last byte after {:?}",
                d.arrivals.len(),
                direct_at.unwrap() - d.first_send,
                d.last_byte - d.first_send
            );
            true
        });
        assert!(
            changed.is_some(),
            "{transport:?} at {loss}: no run moved from the relay to a direct path inside the \
             transfer; (seed, relayed first, messages before the move, messages): {runs:?}"
        );
    }
}

#[test]
fn every_byte_arrives_across_a_relay_to_direct_change_without_loss() {
    across_a_relay_to_direct_change(0.0, 12);
}

#[test]
fn every_byte_arrives_across_a_relay_to_direct_change_at_1_percent_loss() {
    across_a_relay_to_direct_change(0.01, 12);
}

#[test]
fn every_byte_arrives_across_a_relay_to_direct_change_at_5_percent_loss() {
    across_a_relay_to_direct_change(0.05, 12);
}

/// Both ways at once: each node sends a megabyte while it receives the other's, at 5 %
/// loss on rough links, so that data and acknowledgements share every datagram's way.
#[test]
fn every_byte_arrives_in_order_both_ways_at_once() {
    for transport in TRANSPORTS {
        let mut s = Scenario::new(
            Preset::PortRestrictedCone,
            Preset::SymmetricSequential,
            31,
            &rough(0.05),
        );
        let (a, b) = connect(&mut s, transport);
        let flows = vec![Flow::new(0, (a, b), 31), Flow::new(1, (b, a), 32)];
        let d = transfer(&mut s, flows, None);
        eprintln!(
            "{transport:?} both ways at 5 %: A -> B in {:?}, B -> A in {:?} (virtual)",
            d[0].last_byte - d[0].first_send,
            d[1].last_byte - d[1].first_send
        );
    }
}

/// Over the signaling relay the node paces its frames at 18 a second (nine tenths of the
/// server's 20), so a megabyte of 1,341-byte segments needs about 44 s. Before the node
/// bounded the frames waiting (`MAX_RELAY_FRAMES`) it took about 107 s: the stream's datagrams
/// queued behind the pacing, its retransmissions of segments still waiting there as well, and
/// most frames sent were stale copies (a 200-segment burst went out as 778 frames).
#[test]
fn the_signaling_relay_carries_a_megabyte_near_its_frame_rate() {
    for transport in TRANSPORTS {
        let mut s = Scenario::new(Preset::UdpBlocked, Preset::FullCone, 7, &rough(0.0));
        let ids = connect(&mut s, transport);
        let d = transfer(&mut s, vec![Flow::new(0, ids, 7)], None);
        let took = d[0].last_byte - d[0].first_send;
        assert!(took < Duration::from_secs(60), "{transport:?}: {took:?}");
    }
}
