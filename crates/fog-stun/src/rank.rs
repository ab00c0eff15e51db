//! Picking the nearest of several servers by round-trip time, sans-IO.
//!
//! A [`Ranker`] sends a few plain Binding requests (RFC 5389 §7.2: any STUN server, TURN ones
//! included, answers them) to every server from one local socket, and reports each server's
//! smallest round trip: the minimum filters out queueing on the way, which only ever adds.
//! It is done when every server answered every probe, or a settle time after the first answer
//! (slow servers do not hold the node up: one that answers later than
//! [`RankConfig::settle`] times the nearest one's round trip cannot win anyway), or at the
//! deadline.
//!
//! The choice keeps the configured order unless the RTTs say otherwise clearly (hysteresis, as
//! for paths): [`Ranking::choice`] takes the first server in configuration order that
//! answered unless the nearest one's RTT is at most [`RankConfig::switch_percent`] of it and
//! at least [`RankConfig::switch_gain`] less.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};

use crate::wire::{BindingRequest, BindingResponse, TransactionId};

/// Tunables, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RankConfig {
    /// The socket the probes leave from.
    pub source: SocketAddr,
    /// Probes per server (default 3).
    pub probes: u32,
    /// Gap between a server's probes (default 20 ms).
    pub spacing: Duration,
    /// Once one server answered, wait for the others this many times its RTT (default 3),
    /// and at least [`min_settle`](Self::min_settle).
    pub settle: u32,
    /// The least settle time (default 100 ms).
    pub min_settle: Duration,
    /// Give up on servers that have not answered by then (default 2 s).
    pub deadline: Duration,
    /// The nearest server is chosen over the first one that answered (in configuration order)
    /// only when its RTT is at most this percentage of that one's (default 75)...
    pub switch_percent: u32,
    /// ...and at least this much less (default 5 ms).
    pub switch_gain: Duration,
    /// Seeds the transaction IDs.
    pub seed: u64,
}

impl RankConfig {
    /// The defaults above, probing from `source`.
    pub fn new(source: SocketAddr, seed: u64) -> RankConfig {
        RankConfig {
            source,
            probes: 3,
            spacing: Duration::from_millis(20),
            settle: 3,
            min_settle: Duration::from_millis(100),
            deadline: Duration::from_secs(2),
            switch_percent: 75,
            switch_gain: Duration::from_millis(5),
            seed,
        }
    }
}

/// What a ranking found: each server in configuration order, with its smallest RTT (`None`:
/// no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    /// (server, RTT) in configuration order.
    pub servers: Vec<(SocketAddr, Option<Duration>)>,
    switch_percent: u32,
    switch_gain: Duration,
}

impl Ranking {
    /// The index of the server to use (see the module docs), or `None` when none answered:
    /// the nearest, unless the first that answered (in configuration order) is about as near.
    pub fn choice(&self) -> Option<usize> {
        let answered = || {
            self.servers
                .iter()
                .enumerate()
                .filter_map(|(i, (_, rtt))| rtt.map(|r| (i, r)))
        };
        let (first, held) = answered().next()?;
        let (nearest, rtt) = answered().min_by_key(|&(i, r)| (r, i))?;
        let clearly =
            rtt * 100 <= held * self.switch_percent && held.saturating_sub(rtt) >= self.switch_gain;
        Some(if clearly { nearest } else { first })
    }
}

/// What the ranker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The ranking is complete.
    Done(Ranking),
}

#[derive(Debug)]
struct Probe {
    id: TransactionId,
    server: usize,
    sent_at: Instant,
    answered: bool,
}

/// Probes servers and ranks them by RTT (see the module docs).
#[derive(Debug)]
pub struct Ranker {
    config: RankConfig,
    servers: Vec<SocketAddr>,
    rtts: Vec<Option<Duration>>,
    probes: Vec<Probe>,
    /// Probes still to send: (server, due).
    schedule: VecDeque<(usize, Instant)>,
    start: Instant,
    settle_at: Option<Instant>,
    done: bool,
    events: VecDeque<Event>,
    rng: u64,
}

impl Ranker {
    /// A ranker of `servers` (in order of preference), whose first probes are due at `now`.
    pub fn new(config: RankConfig, servers: Vec<SocketAddr>, now: Instant) -> Ranker {
        let mut schedule = VecDeque::new();
        for round in 0..config.probes {
            for server in 0..servers.len() {
                schedule.push_back((server, now + config.spacing * round));
            }
        }
        Ranker {
            rng: config.seed ^ 0x7261_6e6b,
            rtts: vec![None; servers.len()],
            servers,
            probes: Vec::new(),
            schedule,
            start: now,
            settle_at: None,
            done: false,
            events: VecDeque::new(),
            config,
        }
    }

    /// Whether the ranking is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn next_id(&mut self) -> TransactionId {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        id[8..].copy_from_slice(b"rank");
        TransactionId::new(id)
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.schedule.clear();
        self.events.push_back(Event::Done(Ranking {
            servers: self
                .servers
                .iter()
                .copied()
                .zip(self.rtts.clone())
                .collect(),
            switch_percent: self.config.switch_percent,
            switch_gain: self.config.switch_gain,
        }));
    }

    fn all_answered(&self) -> bool {
        self.schedule.is_empty() && self.probes.iter().all(|p| p.answered)
    }
}

impl SansIo for Ranker {
    type Event = Event;

    /// Binding responses to our probes, from the server probed.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        let p = packet.payload;
        if self.done || p.len() < 20 || p[0] & 0xc0 != 0 {
            return false;
        }
        let id = &p[8..20];
        self.probes
            .iter()
            .any(|probe| probe.id.as_bytes() == id && self.servers[probe.server] == packet.source)
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        if !self.accepts(&packet) {
            return;
        }
        let Ok(Some(response)) = BindingResponse::decode(packet.payload) else {
            return;
        };
        let Some(probe) = self
            .probes
            .iter_mut()
            .find(|p| p.id == response.transaction_id && !p.answered)
        else {
            return;
        };
        probe.answered = true;
        let rtt = now.saturating_duration_since(probe.sent_at);
        let slot = &mut self.rtts[probe.server];
        *slot = Some(slot.map_or(rtt, |r| r.min(rtt)));
        if self.settle_at.is_none() {
            let settle = (rtt * self.config.settle).max(self.config.min_settle);
            self.settle_at = Some(now + settle);
        }
        if self.all_answered() {
            self.finish();
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.servers.is_empty()
            || now >= self.start + self.config.deadline
            || self.settle_at.is_some_and(|t| now >= t)
        {
            self.finish();
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let &(server, due) = self.schedule.front()?;
        if now < due {
            return None;
        }
        self.schedule.pop_front();
        let id = self.next_id();
        let len = BindingRequest::new(id).encode(buf).ok()?;
        self.probes.push(Probe {
            id,
            server,
            sent_at: now,
            answered: false,
        });
        Some(Transmit::new(self.servers[server], len).from_source(self.config.source))
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let mut next = self.start + self.config.deadline;
        if let Some(&(_, due)) = self.schedule.front() {
            next = next.min(due);
        }
        if let Some(t) = self.settle_at {
            next = next.min(t);
        }
        Some(next)
    }
}

#[cfg(test)]
// Tests take a starting instant from the clock; the ranker itself never reads it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// Runs a ranker against servers that answer after their one-way delay each way
    /// (`None`: never), and returns the ranking and when it was done.
    fn rank(delays: &[Option<u64>], config: RankConfig) -> (Ranking, Duration) {
        let servers: Vec<SocketAddr> = (0..delays.len())
            .map(|i| SocketAddr::from(([198, 51, 100, i as u8 + 1], 3478)))
            .collect();
        let start = Instant::now();
        let mut ranker = Ranker::new(config, servers.clone(), start);
        let mut now = start;
        let mut flight: Vec<(Instant, Vec<u8>, SocketAddr)> = Vec::new();
        let mut buf = vec![0u8; 1500];
        loop {
            ranker.handle_timeout(now);
            while let Some(t) = ranker.poll_transmit(now, &mut buf) {
                let i = servers.iter().position(|s| *s == t.destination).unwrap();
                if let Some(d) = delays[i] {
                    let request = crate::wire::Message::decode(&buf[..t.len]).unwrap();
                    let answer = BindingResponse {
                        transaction_id: request.transaction_id,
                        xor_mapped: t.source,
                        ..BindingResponse::default()
                    };
                    let mut out = vec![0u8; 200];
                    let n = answer.encode(&mut out).unwrap();
                    out.truncate(n);
                    flight.push((now + Duration::from_millis(2 * d), out, t.destination));
                }
            }
            if let Some(Event::Done(r)) = ranker.poll_event() {
                return (r, now - start);
            }
            let next_packet = flight.iter().map(|f| f.0).min();
            let next = [next_packet, ranker.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            assert!(next >= now, "a timer in the past");
            now = next;
            let due: Vec<_> = flight.iter().filter(|f| f.0 <= now).cloned().collect();
            flight.retain(|f| f.0 > now);
            for (_, bytes, from) in due {
                ranker.handle_packet(
                    now,
                    Receive {
                        source: from,
                        local: SocketAddr::from(([192, 0, 2, 1], 5000)),
                        payload: &bytes,
                    },
                );
            }
        }
    }

    fn config() -> RankConfig {
        RankConfig::new(SocketAddr::from(([192, 0, 2, 1], 5000)), 1)
    }

    #[test]
    fn the_clearly_nearest_server_wins_over_the_configured_order() {
        let (ranking, took) = rank(&[Some(40), Some(10), Some(25)], config());
        assert_eq!(
            ranking.servers.iter().map(|s| s.1).collect::<Vec<_>>(),
            [80, 20, 50].map(|ms| Some(Duration::from_millis(ms)))
        );
        assert_eq!(ranking.choice(), Some(1));
        // Every probe answered: done after the last one's round trip (40 ms spacing + 80 ms).
        assert_eq!(took, Duration::from_millis(120));
    }

    #[test]
    fn the_nearest_wins_not_the_first_that_beats_the_first() {
        // 58 ms beats 80 ms clearly, but 50 ms is nearer still.
        let (ranking, _) = rank(&[Some(40), Some(29), Some(25)], config());
        assert_eq!(ranking.choice(), Some(2));
    }

    #[test]
    fn a_slightly_nearer_server_does_not_displace_the_first() {
        // 36 ms against 40 ms: 10 % nearer, inside the hysteresis.
        let (ranking, _) = rank(&[Some(20), Some(18)], config());
        assert_eq!(ranking.choice(), Some(0));
    }

    #[test]
    fn silent_and_slow_servers_do_not_hold_the_ranking_up() {
        let (ranking, took) = rank(&[None, Some(5), Some(400)], config());
        assert_eq!(ranking.servers[0].1, None);
        assert_eq!(ranking.servers[2].1, None, "800 ms is past the settle time");
        assert_eq!(ranking.choice(), Some(1));
        // Settles 100 ms (3 x 10 ms, at least 100 ms) after the first answer at 10 ms.
        assert_eq!(took, Duration::from_millis(110));
        let (nobody, took) = rank(&[None, None], config());
        assert_eq!(nobody.choice(), None);
        assert_eq!(took, Duration::from_secs(2));
    }
}
