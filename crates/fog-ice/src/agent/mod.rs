//! The connectivity agent of one session: connectivity checks (RFC 8445 §7) from the pairs the
//! [`Plan`] allows, peer-reflexive learning, nomination, and consent freshness (RFC 7675) on the
//! selected path.
//!
//! It is not a full RFC 8445 agent: one component, no candidate foundations or frozen check
//! lists (a session has a handful of pairs, not hundreds), checks retransmitted on a fast fixed
//! schedule while punching rather than RFC 5389's back-off, and the punching extras RFC 8445
//! lacks: predicted candidates, a single-flow discipline for sides whose own port is a
//! prediction, and both halves of a birthday round.
//!
//! Checks (§7.1, §7.2.2) are Binding requests with USERNAME `remote-ufrag:local-ufrag`,
//! MESSAGE-INTEGRITY keyed by the peer's password, PRIORITY, ICE-CONTROLLING or ICE-CONTROLLED
//! with the tie-breaker, and FINGERPRINT. A request that fails integrity is dropped and counted,
//! never answered (an unauthenticated sender gets nothing from us). Responses must come back
//! symmetric (§7.2.5.2.1): from the address the check went to, to the socket it left from.
//!
//! Path choice: direct paths before relayed ones; within a tier, the first path that works
//! (aggressive nomination: the first burst checks every pair at once, so it is also the
//! nearest then), until another working path's median RTT is clearly lower (see
//! [`AgentConfig::switch_percent`]). Up to three working paths besides the selected one (the
//! highest-priority ones) get a keepalive check each consent interval (§11, as requests so
//! that they measure), which also keeps them ready for a failover when the selected path goes
//! silent or its socket goes away. The
//! controlling agent's deliberate nominations carry a NOMINATION count
//! (draft-thatcher-ice-renomination-01), which the controlled agent follows.

mod checks;
mod pairs;
mod path;
mod punch;
#[cfg(test)]
mod tests;
mod timer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_stun::wire::{
    Class, DecodeError, ErrorCode, IntegrityKey, Message, Method, Packet, TransactionId,
    attribute_type,
};

use crate::candidate::{Candidate, Kind, pair_priority};
use crate::strategy::{Birthday, Plan};
use timer::Timer;

/// RFC 8445 §7.3.1.1: the error code of a role conflict.
const ROLE_CONFLICT: u16 = 487;
/// How long relay pairs are checked before the agent stops trying them.
const RELAY_PATIENCE: Duration = Duration::from_secs(30);
/// While the relay carries a connection whose direct path was lost or never found, punching is
/// tried again this long after the last round ended.
///
/// Shorter than the 30 s a Linux NAT keeps a UDP flow that got no reply
/// (`nf_conntrack_udp_timeout`), which is per destination: each NAT must still hold the flow its
/// own side's last round opened toward the peer when the peer's next check arrives. Otherwise
/// that check comes in unsolicited, leaves conntrack state, and moves this side's port for the
/// flow back (NAT-NOTES), and every round fails again (fog-cli's netns test saw it at 30 s).
/// Between rounds the agent also holds its NAT's flows open with low-TTL checks
/// (`HOLD_INTERVAL`), which does not depend on the peer's NAT timeout: with those, the same
/// test passes at 30 s too (and fails at 30 s without them).
pub const REPUNCH_INTERVAL: Duration = Duration::from_secs(20);
/// Pairs whose first checks go out together at the punch instant.
const FIRST_BURST: usize = 16;
/// Transmissions of a nomination before the controlling agent stops trying that pair (about 3 s
/// with the default retransmission schedule).
const NOMINATIONS: u8 = 10;
/// Lowest port a birthday probe or socket uses (below are the well-known ports).
const LOW_PORT: u16 = 1024;
/// While on the relay between rounds of punching, how often our NAT's flows toward the peer
/// are held open with low-TTL checks (see `Agent::hold`): under the 30 s Linux keeps a UDP
/// flow that got no answer, and under [`REPUNCH_INTERVAL`].
const HOLD_INTERVAL: Duration = Duration::from_secs(10);
/// How far apart the rounds of checks of a suspected path are (at least; four round trips on
/// a long path), and how long the last has to be answered before the connection moves off it
/// (see [`Agent::suspect`]).
const SUSPECT_WAIT: Duration = Duration::from_millis(250);
/// How often a suspected path that had nowhere to move to is checked again, with the relay
/// pairs (see [`Agent::suspect`]).
const SUSPECT_AGAIN: Duration = Duration::from_secs(1);
/// Relay pairs checked with each round of a suspicion.
const MAX_SUSPECT_RELAYS: usize = 8;
/// Rounds of two checks each on a suspected path.
const SUSPECT_ROUNDS: u8 = 3;
/// After a suspected path moved the connection to the relay, the next round of punching
/// waits this long: above the 30 s Linux keeps state for a UDP flow that got no reply
/// (`nf_conntrack_udp_timeout`), including what it recorded for datagrams that came in
/// unasked, which would otherwise move each side's port toward the other again.
const STALE_STATE_WAIT: Duration = Duration::from_secs(35);
/// Most pairs held open at once.
const MAX_HELD: usize = 16;
/// Working paths besides the selected one (and the backup relay) that are kept alive and
/// measured: the highest-priority ones, and the one a switch is nominating. The others lapse
/// after the consent timeout (a check from the peer on one brings it back).
const MAX_ALTERNATES: usize = 3;

/// One side's check credentials (RFC 8445 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username fragment.
    pub ufrag: String,
    /// Password.
    pub pwd: String,
}

/// Everything an [`Agent`] needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Our credentials: incoming checks must be signed with our password.
    pub local: Credentials,
    /// The peer's credentials: our checks are signed with its password.
    pub remote: Credentials,
    /// Whether we start as the controlling agent (the offerer does).
    pub controlling: bool,
    /// RFC 8445 §7.3.1.1 tie-breaker, random.
    pub tie_breaker: u64,
    /// The main local socket: the one discovery measured, whose NAT the plan is about.
    pub base: SocketAddr,
    /// Other local sockets, one per further interface address (IPv4 or IPv6), bound at the
    /// owner's choice of port. They pair only with the peer's host candidates of their family
    /// (§6.1.2.2): they have no server-reflexive address of their own, and the plan's route
    /// is about the base's NAT, not theirs. One of the base's family may sit behind the same
    /// NAT, so it keeps the plan's single-flow rule; one of the other family does not pass
    /// the base's NAT (an IPv6 address next to an IPv4 NAT) and is checked whatever the
    /// route, unless the plan is relay-only.
    pub hosts: Vec<SocketAddr>,
    /// Our half of the route.
    pub plan: Plan,
    /// Seeds the transaction IDs, the birthday ports and consent jitter.
    pub seed: u64,
    /// Pacing of new checks (RFC 8445 §14.2's Ta; default 20 ms).
    pub pace: Duration,
    /// First retransmission interval of a check; it doubles up to [`max_retry`](Self::max_retry)
    /// while punching (default 50 ms).
    pub retry: Duration,
    /// Largest retransmission interval (default 400 ms).
    pub max_retry: Duration,
    /// Consent checks on the selected path are this far apart, ±20 % (RFC 7675 §5.1: 5 s).
    pub consent_interval: Duration,
    /// A selected path with no answer to consent checks for this long is lost (RFC 7675 §5.1:
    /// 30 s).
    pub consent_timeout: Duration,
    /// TTL of the first check to each destination, which opens our NAT without reaching the
    /// peer's (see NAT-NOTES on NATs that keep state for unsolicited input); `None` for none.
    /// Default 3: past a home NAT and a carrier-grade NAT behind it, and gone long before the
    /// peer's NAT on any real path. A birthday round's many sockets send only at this TTL until
    /// the peer reaches one, so that the peer's NAT sees nothing unsolicited from them.
    pub low_ttl: Option<u8>,
    /// Path choice by distance within a tier: the controlling agent moves the connection to
    /// another working path of the same tier (direct or relayed) only when that path's
    /// distance (the median of its last three RTT samples) is at most this percentage of the
    /// selected path's (default 75)...
    pub switch_percent: u32,
    /// ...and at least this much lower (default 5 ms)...
    pub switch_gain: Duration,
    /// ...with at least this many RTT samples on both (default 3, also the least; one per
    /// consent interval after the first), so that one lucky sample does not move it. A
    /// path's distance is the median of its last three samples.
    pub switch_samples: u32,
}

impl AgentConfig {
    /// A configuration with the defaults above.
    pub fn new(
        local: Credentials,
        remote: Credentials,
        controlling: bool,
        base: SocketAddr,
        plan: Plan,
        seed: u64,
    ) -> AgentConfig {
        AgentConfig {
            local,
            remote,
            controlling,
            tie_breaker: splitmix(seed ^ 0x7469_6562_7265_616b),
            base,
            plan,
            seed,
            pace: Duration::from_millis(20),
            retry: Duration::from_millis(50),
            max_retry: Duration::from_millis(400),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            low_ttl: Some(3),
            hosts: Vec::new(),
            switch_percent: 75,
            switch_gain: Duration::from_millis(5),
            switch_samples: 3,
        }
    }
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pair answered a check both ways: a working path.
    Validated {
        /// Our socket.
        local: SocketAddr,
        /// The peer's address on it.
        remote: SocketAddr,
        /// The round trip of the check.
        rtt: Duration,
    },
    /// The nominated path: data goes here. It comes again when another path takes over: a
    /// direct one over the relay as soon as it works, the relay again when the direct path dies.
    Selected {
        /// Our socket (our relayed address for a path through our TURN allocation).
        local: SocketAddr,
        /// The peer's address on it.
        remote: SocketAddr,
        /// Its smoothed round trip.
        rtt: Duration,
        /// Whether the path goes through a relay (ours or the peer's).
        relayed: bool,
    },
    /// The selected path is gone (no answer for the consent timeout, or its socket was
    /// removed) and there is no other path to move to.
    PathLost {
        /// Our socket.
        local: SocketAddr,
        /// The peer's address on it.
        remote: SocketAddr,
    },
    /// Punching ran out of time without a working direct path; only the relay is left (if
    /// there is one, it stays selected).
    GaveUp,
}

/// What one candidate pair did, for a diagnosis ([`Agent::pairs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairReport {
    /// Our socket.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// `waiting`, `checking`, `succeeded` or `failed`.
    pub state: &'static str,
    /// Through a relay (ours or the peer's).
    pub relayed: bool,
    /// A check from the peer arrived on it.
    pub heard: bool,
    /// Nominated (by the peer, or by us and answered).
    pub nominated: bool,
    /// Its smoothed round trip, once measured.
    pub rtt: Option<Duration>,
}

/// Counters of what the agent dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Checks sent (including retransmissions and birthday probes).
    pub checks_sent: u64,
    /// Datagrams that were not STUN at all or did not decode.
    pub malformed: u64,
    /// Requests whose USERNAME or MESSAGE-INTEGRITY was wrong.
    pub unauthenticated: u64,
    /// Responses to no check of ours, or from the wrong address.
    pub stray: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct Pair {
    local: SocketAddr,
    remote: SocketAddr,
    priority: u64,
    state: State,
    /// When the next (re)transmission is due while in progress.
    next_at: Option<Instant>,
    interval: Duration,
    srtt: Option<Duration>,
    /// RFC 6298 §2.3's RTTVAR beside `srtt`.
    rttvar: Duration,
    /// The peer nominated it (USE-CANDIDATE) or we did and it answered.
    nominated: bool,
    /// Last answer to any check on it.
    last_answer: Option<Instant>,
    /// Nominations (checks with USE-CANDIDATE) still to retransmit until one is answered.
    nominating: u8,
    /// A check from the peer arrived on it.
    heard: bool,
    /// Through a relay: our relayed address, or the peer's relayed candidate.
    relayed: bool,
    /// RTT samples taken (answers to checks sent once; Karn).
    samples: u32,
    /// Consent checks sent on it (while selected) since its last answer.
    unanswered: u8,
    /// The last three samples, for path choice: their median is the path's distance, which
    /// follows a change within three samples (the smoothed RTT, with α = 1/8 at one sample
    /// per consent interval, would take a minute) and ignores one outlier.
    recent: [Duration; 3],
    /// The NOMINATION count of this pair: on the controlling side, of our last nomination of
    /// it (retransmissions carry the same); on the controlled side, the largest the peer sent
    /// for it. 0 for none.
    nomination: u32,
    /// Found after punching ended or after a direct path was selected (a trickled candidate,
    /// a new interface): checked on its own until then, whatever the round's state.
    until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    local: SocketAddr,
    remote: SocketAddr,
    sent_at: Instant,
    /// Karn: no RTT sample from an answer to a retransmitted check.
    retransmitted: bool,
    use_candidate: bool,
}

/// A suspicion of the selected direct path (see [`Agent::suspect`]).
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    /// When it began: an answer after this clears it.
    since: Instant,
    /// When the next checks go, or the verdict falls after the last.
    next_at: Instant,
    /// Rounds of checks still to send.
    rounds: u8,
}

#[derive(Debug)]
struct Queued {
    bytes: Vec<u8>,
    source: SocketAddr,
    destination: SocketAddr,
    ttl: Option<u8>,
}

#[derive(Debug)]
struct Spray {
    ip: IpAddr,
    remaining: u32,
    every: Duration,
    next_at: Instant,
    tried: HashSet<u16>,
}

/// The connectivity agent of one session (see the module docs).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    controlling: bool,
    rng: u64,
    local_key: IntegrityKey,
    remote_key: IntegrityKey,
    remotes: Vec<Candidate>,
    pairs: Vec<Pair>,
    outstanding: HashMap<TransactionId, Outstanding>,
    /// Destinations a check has gone to, for the single-flow rule and the low TTL.
    flows: HashSet<SocketAddr>,
    start_at: Option<Instant>,
    deadline: Option<Instant>,
    next_pace: Option<Instant>,
    spray: Option<Spray>,
    /// The birthday sockets (Birthday::Open), once opened, while in use.
    open_sockets: Vec<SocketAddr>,
    /// Birthday sockets given up, until the owner takes them.
    released: Vec<SocketAddr>,
    selected: Option<usize>,
    next_consent: Option<Instant>,
    gave_up: bool,
    /// The punch deadline passed: no more checks but nominations and consent.
    punch_over: bool,
    /// Checks only open our NAT (low TTL) until the peer reaches us (see [`Agent::set_quiet`]).
    quiet: bool,
    /// Our TURN relayed address, once allocated.
    relayed: Option<SocketAddr>,
    /// Relay pairs keep trying until then (they do not depend on punching).
    relay_deadline: Option<Instant>,
    /// The relay deadline passed.
    relay_over: bool,
    /// When the next round of punching is due while on the relay.
    repunch_at: Option<Instant>,
    /// When our NAT's flows toward the peer are next held open (between rounds).
    next_hold: Option<Instant>,
    /// The last consent answer on the backup relay path, and when its next check is due.
    next_backup_consent: Option<Instant>,
    /// When the next round of keepalives on the working paths besides the selected one is due.
    next_keepalives: Option<Instant>,
    /// The controlling agent's nomination of a nearer path, until it is answered.
    switch_to: Option<usize>,
    /// The pair the peer's latest authenticated datagram came on, when that is not the
    /// selected path's: checked, and selected once it answers (see [`Agent::heard_from`]).
    moved_to: Option<usize>,
    /// The owner suspected the selected direct path: see [`Agent::suspect`].
    suspect: Option<Suspicion>,
    /// The selected path was lost with nowhere to move to ([`Event::PathLost`]) and nothing
    /// is selected since. The peer may still be on a path of its own (its checks on it are
    /// answered; only ours were lost): what it sends directly is followed as on the relay
    /// (see [`Agent::heard_from`]).
    lost: bool,
    /// Counts our nominations as the controlling agent (the NOMINATION attribute).
    nominations: u32,
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    stats: Stats,
    /// The latest instant the agent was given.
    now: Option<Instant>,
}
impl Agent {
    /// An agent that waits for [`start`](Self::start) before sending checks; it answers checks
    /// from the peer at once.
    pub fn new(config: AgentConfig) -> Agent {
        let local_key = IntegrityKey::short_term(&config.local.pwd);
        let remote_key = IntegrityKey::short_term(&config.remote.pwd);
        Agent {
            controlling: config.controlling,
            rng: splitmix(config.seed),
            local_key,
            remote_key,
            config,
            remotes: Vec::new(),
            pairs: Vec::new(),
            outstanding: HashMap::new(),
            flows: HashSet::new(),
            start_at: None,
            deadline: None,
            next_pace: None,
            spray: None,
            open_sockets: Vec::new(),
            released: Vec::new(),
            selected: None,
            next_consent: None,
            gave_up: false,
            punch_over: false,
            quiet: false,
            relayed: None,
            relay_deadline: None,
            relay_over: false,
            repunch_at: None,
            next_hold: None,
            next_backup_consent: None,
            next_keepalives: None,
            switch_to: None,
            moved_to: None,
            suspect: None,
            lost: false,
            nominations: 0,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            now: None,
        }
    }

    /// Start punching at `at` (the instant agreed over signaling).
    pub fn start(&mut self, at: Instant) {
        if self.start_at.is_none() {
            self.start_at = Some(at);
        }
    }

    /// A candidate of the peer (from its description or trickled). Which ones are checked is
    /// the plan's choice: host and server-reflexive ones when it checks the srflx, the first
    /// `to_predicted` predicted ones, none of the relayed ones (the relay is TURN's). Host
    /// candidates are also checked when the route is not direct (the two sides may share a
    /// network, or reach each other over the other IP family) unless our port is a
    /// prediction; see [`AgentConfig::hosts`] for our other sockets. A candidate that arrives
    /// after punching ended (trickled later: a new interface, a changed mapping) is checked on
    /// its own for the plan's punching time.
    pub fn add_remote(&mut self, now: Instant, candidate: Candidate) {
        match self.remotes.iter_mut().find(|c| c.addr == candidate.addr) {
            // An address first learnt as peer-reflexive (a check that came through a relay,
            // say) that the peer now names: it takes the kind named, and the pairs that kind
            // gets.
            Some(known) if known.kind == Kind::PeerReflexive && candidate.kind != known.kind => {
                *known = candidate;
            }
            // Trickled again (an address that went and came back): its failed pairs get
            // another round.
            Some(_) => {
                self.revive(now, |p| p.remote == candidate.addr);
                return;
            }
            None => self.remotes.push(candidate),
        }
        let plan = &self.config.plan;
        let predicted_so_far = self
            .remotes
            .iter()
            .filter(|c| c.kind == Kind::Predicted)
            .count();
        let wanted = match candidate.kind {
            Kind::ServerReflexive | Kind::PeerReflexive => plan.to_srflx && plan.is_direct(),
            Kind::Host => !plan.single_flow && !plan.relay_only,
            Kind::Predicted => {
                predicted_so_far <= usize::from(plan.to_predicted) && plan.is_direct()
            }
            // The peer's relay works whatever the NATs do, and so does its router's
            // forwarding of a mapped port (the plan counts the peer as open then).
            Kind::Relayed => true,
            // A new flow, so not when our own next port is a prediction.
            Kind::Mapped => !plan.relay_only && !plan.single_flow,
        };
        let base = self.config.base;
        let mut locals: Vec<SocketAddr> = Vec::new();
        if wanted && candidate.addr.is_ipv4() == base.is_ipv4() {
            locals.push(base);
        }
        if candidate.kind == Kind::Host {
            locals.extend(
                self.config.hosts.iter().filter(|h| {
                    h.is_ipv4() == candidate.addr.is_ipv4() && self.host_pairs_with(**h)
                }),
            );
        }
        // Through our own relay: to the peer's public addresses.
        if let Some(relayed) = self.relayed {
            if matches!(candidate.kind, Kind::ServerReflexive | Kind::PeerReflexive)
                && candidate.addr.is_ipv4() == relayed.is_ipv4()
            {
                locals.push(relayed);
            }
        }
        for local in locals {
            self.add_pair(now, local, candidate.addr, candidate.priority);
        }
        self.wake_pacing(now);
    }

    /// A further local socket (a new interface address, see [`AgentConfig::hosts`]): paired
    /// with the peer's host candidates of its family, and checked at once if punching is over.
    pub fn add_local(&mut self, now: Instant, local: SocketAddr) {
        if local == self.config.base || self.config.hosts.contains(&local) {
            return;
        }
        self.config.hosts.push(local);
        if !self.host_pairs_with(local) {
            return;
        }
        let targets: Vec<Candidate> = self
            .remotes
            .iter()
            .filter(|c| c.kind == Kind::Host && c.addr.is_ipv4() == local.is_ipv4())
            .copied()
            .collect();
        for c in targets {
            self.add_pair(now, local, c.addr, c.priority);
        }
        // An address that went and came back: its old pairs are there, failed.
        self.revive(now, |p| p.local == local);
        self.wake_pacing(now);
    }

    /// Switches between controlling and controlled (a role conflict, RFC 8445 §7.3.1.1). The
    /// NOMINATION counts of the old role mean nothing in the new one.
    pub(super) fn flip_role(&mut self) {
        self.controlling = !self.controlling;
        self.nominations = 0;
        self.switch_to = None;
        for p in &mut self.pairs {
            p.nomination = 0;
        }
    }

    /// A local socket that is gone (its interface address went away): its pairs fail at once,
    /// and if the selected path used it, the connection moves to the next working path
    /// without waiting for consent to lapse. The base socket cannot be removed.
    pub fn remove_local(&mut self, now: Instant, local: SocketAddr) {
        if local == self.config.base {
            return;
        }
        self.config.hosts.retain(|h| *h != local);
        for p in self.pairs.iter_mut().filter(|p| p.local == local) {
            p.heard = false;
            p.state = State::Failed;
            p.next_at = None;
            p.until = None;
            p.nominating = 0;
        }
        if self.switch_to.is_some_and(|i| self.pairs[i].local == local) {
            self.switch_to = None;
        }
        if self.selected.is_some_and(|i| self.pairs[i].local == local) {
            self.lose_selected(now, true);
        }
    }

    /// New pairs may be checked from now: a stale pace tick must not become a timer in the past.
    pub(super) fn wake_pacing(&mut self, now: Instant) {
        if self.deadline.is_some() && self.next_pace.is_none_or(|t| t < now) {
            self.next_pace = Some(now);
        }
    }

    /// Our TURN allocation's relayed address: pairs from it to the peer's public candidates
    /// are checked through the relay (the owner wraps what the agent sends from this address
    /// into the TURN client, and hands it what the relay delivers as arriving here). Relay
    /// pairs do not depend on punching: they are checked until the relay deadline (30 s after
    /// the start) and kept as the backup path.
    ///
    /// A new relayed address (the owner's allocation was lost and made again) replaces the
    /// old one, as [`relay_lost`](Self::relay_lost) then this.
    pub fn set_relayed(&mut self, now: Instant, relayed: SocketAddr) {
        match self.relayed {
            Some(old) if old == relayed => return,
            Some(old) => self.relay_lost(now, old),
            None => {}
        }
        self.relayed = Some(relayed);
        let targets: Vec<Candidate> = self
            .remotes
            .iter()
            .filter(|c| matches!(c.kind, Kind::ServerReflexive | Kind::PeerReflexive))
            .filter(|c| c.addr.is_ipv4() == relayed.is_ipv4())
            .copied()
            .collect();
        for c in targets {
            self.add_pair(now, relayed, c.addr, c.priority);
        }
        self.wake_pacing(now);
    }

    /// Our TURN allocation at `relayed` is gone: its pairs fail as those of a removed local
    /// address do, and the selected path moves off it at once.
    pub fn relay_lost(&mut self, now: Instant, relayed: SocketAddr) {
        if self.relayed != Some(relayed) {
            return;
        }
        self.relayed = None;
        self.remove_local(now, relayed);
    }

    /// The peer addresses that reach us through our relay need a TURN permission: the IPs of
    /// the peer's candidates our relay pairs check.
    pub fn relay_peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.pairs
            .iter()
            .filter(|p| Some(p.local) == self.relayed)
            .map(|p| p.remote)
    }

    /// Whether the peer may be sending on `(local, remote)`: a pair that answered our check, or
    /// on which the peer's own authenticated check arrived (the peer may select a pair before
    /// our check on it has come back).
    pub fn has_path(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        // The selected path first: it is where nearly all data arrives, and the pair list may
        // hold a birthday round's hundreds of pairs.
        if self.selected() == Some((local, remote)) {
            return true;
        }
        self.pair_index(local, remote)
            .is_some_and(|i| self.pairs[i].state == State::Succeeded || self.pairs[i].heard)
    }

    /// The owner opened an authenticated datagram of this session (sealed with the session's
    /// keys, or a QUIC packet behind its tag) that arrived directly on `(local, remote)`.
    ///
    /// When a direct path is selected on `local` and `remote` is not its peer address, the
    /// peer's address changed under the connection: its NAT rebound the flow to a new port,
    /// forgot it and mapped it anew, or the peer moved to another network. When the relay
    /// carries the connection, a datagram that came directly to one of our sockets is a
    /// direct path the peer found, and gets the same treatment (direct beats relayed). As QUIC does (RFC
    /// 9000 §9.3: a packet from a new address starts path validation) and WireGuard does (the
    /// latest authenticated source is the endpoint), the agent follows: the address becomes
    /// a peer-reflexive candidate (RFC 8445 §7.3.1.3), the pair gets a check at once, and
    /// when it answers while it is still where the peer's latest datagram came from, it is
    /// selected whatever our role (nothing to agree on: from the peer's side it is the same
    /// path). The check is what keeps a forged or replayed source from moving the
    /// connection: only the peer can answer it. One such pair is checked at a time, and
    /// checked again if its check failed and the peer's datagrams still come from it. After
    /// the selected path was lost with nowhere to move to ([`Event::PathLost`]), datagrams
    /// from the peer that came directly are followed the same way: the peer may still be on
    /// a path whose answers to our checks were all lost.
    pub fn heard_from(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr) {
        let ours = match self.selected {
            Some(j) => {
                let selected = &self.pairs[j];
                if selected.remote == remote && selected.local == local {
                    // Back on the selected path: a check of another address in flight is
                    // stale, and a suspicion of the path is answered.
                    self.moved_to = None;
                    self.suspect = None;
                    return;
                }
                // On the relay, a datagram that came directly to one of our own sockets is a
                // direct path the peer found: the same check, and direct beats relayed.
                if selected.relayed {
                    Some(local) != self.relayed && self.is_local(local)
                } else {
                    selected.local == local
                }
            }
            // The path was lost with nowhere to move to (`lost`): the peer's datagrams still
            // coming directly show a path it uses, followed as on the relay. Otherwise the
            // controlled side stays without a path for good while the controlling side, whose
            // checks we answer, sees nothing wrong and nominates nothing (found by the chaos
            // run, seed 1811: one side direct, the other's direct and relay pairs both lost
            // their consent on links losing 11 % and 20 %).
            None if self.lost => Some(local) != self.relayed && self.is_local(local),
            // Before the first path, nomination decides.
            None => return,
        };
        if !ours || local.is_ipv4() != remote.is_ipv4() || self.is_relay_candidate(remote) {
            return;
        }
        // One such pair is checked at a time. One whose check failed (on a lossy link every
        // retransmission can be lost) is checked again when the peer's datagrams keep coming
        // from it: it used to be left for good, and the side stayed on the relay while the
        // peer was direct.
        if let Some(k) = self.moved_to {
            if self.pairs[k].state == State::InProgress {
                // A check from the peer may have triggered ours on it, which is retransmitted
                // only within a round: give it one.
                if self.pairs[k].remote == remote
                    && self.pairs[k].local == local
                    && self.pairs[k].until.is_none()
                {
                    self.pairs[k].until = Some(now + self.config.plan.punch_for);
                }
                return;
            }
        }
        if !self.remotes.iter().any(|c| c.addr == remote) {
            self.remotes
                .push(Candidate::new(Kind::PeerReflexive, remote));
        }
        let priority = Candidate::new(Kind::PeerReflexive, remote).priority;
        let i = self.add_pair(now, local, remote, priority);
        self.moved_to = Some(i);
        let pair = &mut self.pairs[i];
        if pair.state != State::InProgress {
            pair.state = State::Waiting;
            pair.interval = self.config.retry;
            pair.until = Some(now + self.config.plan.punch_for);
            self.check(now, i, false);
        } else if pair.until.is_none() {
            // A triggered check (the peer's check on it came first): retransmitted like ours.
            pair.until = Some(now + self.config.plan.punch_for);
        }
    }

    /// Where to send the application's data now: the selected path, or before one is selected,
    /// a pair that works or on which the peer reached us (the peer may select first and send
    /// at once; the answer goes back the way its data came).
    pub fn data_path(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.selected().or_else(|| {
            self.pairs
                .iter()
                .filter(|p| p.state == State::Succeeded || p.heard)
                .max_by_key(|p| (p.state == State::Succeeded, !p.relayed, p.priority))
                .map(|p| (p.local, p.remote))
        })
    }

    /// The selected path's smoothed round trip and its variance (RFC 6298 §2), once it has
    /// a sample.
    pub fn selected_rtt(&self) -> Option<(Duration, Duration)> {
        let pair = &self.pairs[self.selected?];
        pair.srtt.map(|srtt| (srtt, pair.rttvar))
    }

    /// Whether the selected path goes through a relay.
    pub fn selected_is_relayed(&self) -> bool {
        self.selected.is_some_and(|i| self.pairs[i].relayed)
    }

    /// The selected path, if any: (our socket, the peer's address).
    pub fn selected(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.selected
            .map(|i| (self.pairs[i].local, self.pairs[i].remote))
    }

    /// Quiet punching: while on, and while our endpoint is one the peer already knows
    /// ([`Plan::known_endpoint`]), checks go out only at the low TTL, opening our NAT without
    /// reaching the peer's, until the peer's own check reaches us; answers and the checks they
    /// trigger go out in full. The answering side starts this way the moment it answers, so
    /// that its NAT is open when the offerer's first check arrives and the offerer's NAT never
    /// sees anything it did not ask for. Turned off at the agreed punch instant.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Whether we are the controlling agent now (a role conflict may have switched it).
    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    /// Whether `packet` is for this agent, when several share a socket: a check whose USERNAME
    /// names our username fragment first, or an answer to a check of ours.
    pub fn owns(&self, packet: &Receive<'_>) -> bool {
        if !self.accepts(packet) {
            return false;
        }
        // The raw view: every datagram on a shared socket comes through here, once per
        // session, so no decoding and no allocation.
        let Ok(raw) = Packet::new_checked(packet.payload) else {
            return false;
        };
        match raw.class() {
            Class::Request | Class::Indication => {
                let ufrag = self.config.local.ufrag.as_bytes();
                raw.attributes()
                    .find(|a| a.kind == attribute_type::USERNAME)
                    .is_some_and(|a| {
                        a.value.len() > ufrag.len()
                            && a.value.starts_with(ufrag)
                            && a.value[ufrag.len()] == b':'
                    })
            }
            Class::SuccessResponse | Class::ErrorResponse => {
                self.outstanding.contains_key(&raw.transaction_id())
            }
        }
    }

    /// The plan the agent carries out.
    pub fn plan(&self) -> &Plan {
        &self.config.plan
    }

    /// Every candidate pair and what became of it, highest priority first (a birthday
    /// round's hundreds included).
    pub fn pairs(&self) -> Vec<PairReport> {
        let mut pairs: Vec<&Pair> = self.pairs.iter().collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.priority));
        pairs
            .into_iter()
            .map(|p| PairReport {
                local: p.local,
                remote: p.remote,
                state: match p.state {
                    State::Waiting => "waiting",
                    State::InProgress => "checking",
                    State::Succeeded => "succeeded",
                    State::Failed => "failed",
                },
                relayed: p.relayed,
                heard: p.heard,
                nominated: p.nominated,
                rtt: p.srtt,
            })
            .collect()
    }

    /// What the agent dropped and sent.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether a round of punching is under way: from the punch instant until its deadline
    /// passes or a direct path is selected (and again during each later round). A driver that
    /// would build the agent again (a new plan) waits for this to be `false`, so that nothing
    /// in flight is lost.
    pub fn punching(&self) -> bool {
        self.deadline.is_some() && !self.punch_over && !self.direct_selected()
    }

    /// The sockets opened for a birthday round (those still in use).
    pub fn birthday_sockets(&self) -> &[SocketAddr] {
        &self.open_sockets
    }

    /// Birthday sockets given up since the last call (their round found nothing): the driver
    /// may close them. The agent sends nothing from them any more and takes nothing on them.
    pub fn take_released(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.released)
    }

    pub(super) fn started(&self, now: Instant) -> bool {
        self.start_at.is_some_and(|t| now >= t)
    }

    pub(super) fn direct_selected(&self) -> bool {
        self.selected.is_some_and(|i| !self.pairs[i].relayed)
    }
}

impl SansIo for Agent {
    type Event = Event;

    /// STUN messages (RFC 7983: first byte 0–3) with the magic cookie.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        let p = packet.payload;
        p.len() >= 20 && p[0] < 4 && p[4..8] == [0x21, 0x12, 0xa4, 0x42]
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.now = self.now.max(Some(now));
        if !self.accepts(&packet) {
            self.stats.malformed += 1;
            return;
        }
        // A socket we gave up (its interface went away) answers nothing.
        if !self.is_local(packet.local) {
            self.stats.stray += 1;
            return;
        }
        // The header's view only: the handlers decode the message once, with its integrity.
        let Ok(raw) = Packet::new_checked(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        match raw.class() {
            Class::Request => self.handle_request(now, &packet, packet.payload),
            Class::SuccessResponse | Class::ErrorResponse => {
                self.handle_response(now, &packet, raw.transaction_id(), packet.payload);
            }
            // Indications (keepalives) need nothing.
            Class::Indication => {}
        }
    }

    /// Fires every timer of the table that is due (see the `timer` module), in order: each
    /// is asked again right before it fires, since an earlier one may have changed it.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(Some(now));
        if !self.started(now) {
            return;
        }
        for timer in Timer::ALL {
            if self.armed(timer).is_some_and(|at| at <= now) {
                self.fire(timer, now);
            }
        }
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let queued = self.queue.pop_front()?;
        let len = queued.bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&queued.bytes[..len]);
        let transmit = Transmit::new(queued.destination, len).from_source(queued.source);
        Some(match queued.ttl {
            Some(ttl) => transmit.with_ttl(ttl),
            None => transmit,
        })
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest armed timer of the table.
    fn poll_timeout(&self) -> Option<Instant> {
        Timer::ALL.into_iter().filter_map(|t| self.armed(t)).min()
    }
}

/// A pair's distance for path choice: the median of its last three RTT samples.
fn distance(p: &Pair) -> Duration {
    let mut r = p.recent;
    r.sort_unstable();
    r[1]
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
