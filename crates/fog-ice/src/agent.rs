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

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_stun::wire::{
    Class, ErrorCode, IntegrityKey, Message, Method, Packet, TransactionId, attribute_type,
};

use crate::candidate::{Candidate, Kind, pair_priority};
use crate::strategy::{Birthday, Plan};

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
    /// The birthday sockets (Birthday::Open), once opened.
    open_sockets: Vec<SocketAddr>,
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
    /// Counts our nominations as the controlling agent (the NOMINATION attribute).
    nominations: u32,
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    stats: Stats,
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
            nominations: 0,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
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
            // The peer's relay works whatever the NATs do.
            Kind::Relayed => true,
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

    /// Failed direct pairs that `which` picks get a round of their own (see `Pair::until`).
    fn revive(&mut self, now: Instant, which: impl Fn(&Pair) -> bool) {
        if self.deadline.is_none() {
            return;
        }
        let (retry, punch_for) = (self.config.retry, self.config.plan.punch_for);
        let ours: Vec<bool> = self.pairs.iter().map(|p| self.is_local(p.local)).collect();
        for (p, ours) in self.pairs.iter_mut().zip(ours) {
            if ours && !p.relayed && p.state == State::Failed && which(p) {
                p.state = State::Waiting;
                p.interval = retry;
                p.next_at = None;
                p.until = Some(now + punch_for);
            }
        }
        self.wake_pacing(now);
    }

    /// Switches between controlling and controlled (a role conflict, RFC 8445 §7.3.1.1). The
    /// NOMINATION counts of the old role mean nothing in the new one.
    fn flip_role(&mut self) {
        self.controlling = !self.controlling;
        self.nominations = 0;
        self.switch_to = None;
        for p in &mut self.pairs {
            p.nomination = 0;
        }
    }

    /// Whether our further socket `local` pairs with the peer's host candidates (see
    /// [`AgentConfig::hosts`]): not when the plan is relay-only, and when it is of the base's
    /// family (possibly behind the same NAT) only if the plan allows more than one flow.
    fn host_pairs_with(&self, local: SocketAddr) -> bool {
        let plan = &self.config.plan;
        !plan.relay_only && (local.is_ipv4() != self.config.base.is_ipv4() || !plan.single_flow)
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
    fn wake_pacing(&mut self, now: Instant) {
        if self.deadline.is_some() && self.next_pace.is_none_or(|t| t < now) {
            self.next_pace = Some(now);
        }
    }

    /// Our TURN allocation's relayed address: pairs from it to the peer's public candidates
    /// are checked through the relay (the owner wraps what the agent sends from this address
    /// into the TURN client, and hands it what the relay delivers as arriving here). Relay
    /// pairs do not depend on punching: they are checked until the relay deadline (30 s after
    /// the start) and kept as the backup path.
    pub fn set_relayed(&mut self, now: Instant, relayed: SocketAddr) {
        if self.relayed.is_some() {
            return;
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

    /// What the agent dropped and sent.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The sockets opened for a birthday round.
    pub fn birthday_sockets(&self) -> &[SocketAddr] {
        &self.open_sockets
    }

    fn add_pair(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        remote_priority: u32,
    ) -> usize {
        if let Some(i) = self.pair_index(local, remote) {
            return i;
        }
        let relayed = Some(local) == self.relayed
            || self
                .remotes
                .iter()
                .any(|c| c.addr == remote && c.kind == Kind::Relayed);
        // A direct pair found after the round (or after it succeeded) gets a round of its own.
        let late =
            !relayed && self.deadline.is_some() && (self.punch_over || self.direct_selected());
        let ours = if Some(local) == self.relayed {
            Candidate::new(Kind::Relayed, local).priority
        } else {
            Candidate::new(Kind::Host, local).priority
        };
        let priority = if self.controlling {
            pair_priority(ours, remote_priority)
        } else {
            pair_priority(remote_priority, ours)
        };
        self.pairs.push(Pair {
            local,
            remote,
            priority,
            state: State::Waiting,
            next_at: None,
            interval: self.config.retry,
            srtt: None,
            rttvar: Duration::ZERO,
            nominated: false,
            last_answer: None,
            nominating: 0,
            heard: false,
            relayed,
            samples: 0,
            unanswered: 0,
            recent: [Duration::ZERO; 3],
            nomination: 0,
            until: late.then(|| now + self.config.plan.punch_for),
        });
        self.pairs.len() - 1
    }

    fn pair_index(&self, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.local == local && p.remote == remote)
    }

    fn started(&self, now: Instant) -> bool {
        self.start_at.is_some_and(|t| now >= t)
    }

    fn punching(&self, now: Instant) -> bool {
        self.started(now) && !self.punch_over && !self.direct_selected()
    }

    fn direct_selected(&self) -> bool {
        self.selected.is_some_and(|i| !self.pairs[i].relayed)
    }

    /// Whether a check may go from `local` to `remote` now. Through our relay, always: it opens
    /// no flow in our NAT. Otherwise always to a destination we already opened, and to a new
    /// one unless the single-flow rule has used its one flow; the peer's relay only after our
    /// one flow went where the route says.
    fn may_open(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        if !self.is_local(local) {
            return false;
        }
        // Our relay opens no flow in our NAT, and a socket of the other IP family does not
        // pass the base's NAT (an IPv6 one beside an IPv4 NAT).
        let base_family = self.config.base.is_ipv4();
        if Some(local) == self.relayed || local.is_ipv4() != base_family {
            return true;
        }
        let plan = &self.config.plan;
        // The single-flow rule counts the flows through the base's NAT only.
        let mut flows = self.flows.iter().filter(|f| f.is_ipv4() == base_family);
        if self.is_relay_candidate(remote) {
            return !plan.single_flow || flows.next().is_some();
        }
        !plan.single_flow
            || self.flows.contains(&remote)
            || (plan.flow_by_ip && flows.clone().any(|f| f.ip() == remote.ip()))
            || flows.next().is_none()
    }

    /// Whether `local` is one of our sockets now (a removed interface's is not).
    fn is_local(&self, local: SocketAddr) -> bool {
        local == self.config.base
            || Some(local) == self.relayed
            || self.config.hosts.contains(&local)
            || self.open_sockets.contains(&local)
    }

    fn is_relay_candidate(&self, addr: SocketAddr) -> bool {
        self.remotes
            .iter()
            .any(|c| c.addr == addr && c.kind == Kind::Relayed)
    }

    fn begin(&mut self, now: Instant) {
        if self.deadline.is_some() {
            return;
        }
        self.deadline = Some(now + self.config.plan.punch_for);
        self.relay_deadline = Some(now + RELAY_PATIENCE);
        self.burst(now);
        match self.config.plan.birthday {
            Some(Birthday::Spray { probes, rate }) => {
                if let Some(ip) = self.peer_ip() {
                    self.spray = Some(Spray {
                        ip,
                        remaining: probes,
                        every: Duration::from_secs(1) / rate.max(1),
                        next_at: now,
                        tried: HashSet::new(),
                    });
                }
            }
            Some(Birthday::Open { sockets }) => {
                let targets: Vec<Candidate> = self
                    .remotes
                    .iter()
                    .filter(|c| c.kind == Kind::ServerReflexive)
                    .copied()
                    .collect();
                let mut used: HashSet<u16> = HashSet::from([self.config.base.port()]);
                for _ in 0..sockets {
                    let port = loop {
                        let p =
                            LOW_PORT + (self.next_random() % u64::from(u16::MAX - LOW_PORT)) as u16;
                        if used.insert(p) {
                            break p;
                        }
                    };
                    let local = SocketAddr::new(self.config.base.ip(), port);
                    self.open_sockets.push(local);
                    for target in &targets {
                        let i = self.add_pair(now, local, target.addr, target.priority);
                        // Every birthday socket sends at once: the round is a burst.
                        self.check(now, i, false);
                    }
                }
            }
            None => {}
        }
    }

    /// The first checks of every waiting pair go out together: the peer's first checks arrive
    /// one path delay later, and by then our NAT must have sent to each destination (a NAT that
    /// keeps state for unsolicited input would otherwise move our port). Pacing applies to the
    /// pairs found later.
    fn burst(&mut self, now: Instant) {
        let first: Vec<usize> = (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == State::Waiting)
            .take(FIRST_BURST)
            .collect();
        for i in first {
            if self.may_open(self.pairs[i].local, self.pairs[i].remote) {
                self.check(now, i, false);
            }
        }
        self.next_pace = Some(now + self.config.pace);
    }

    /// Another round of punching on the direct pairs, while the relay carries the connection:
    /// after the direct path died, and then every [`REPUNCH_INTERVAL`] until one works again
    /// (a route that failed may come back; a NAT may have rebooted). No birthday spray: a
    /// round of that costs too much to repeat blindly.
    fn repunch(&mut self, now: Instant) {
        for pair in &mut self.pairs {
            if !pair.relayed && matches!(pair.state, State::Failed | State::InProgress) {
                pair.state = State::Waiting;
                pair.interval = self.config.retry;
                pair.next_at = None;
            }
        }
        self.deadline = Some(now + self.config.plan.punch_for);
        self.punch_over = false;
        self.repunch_at = None;
        self.next_hold = None;
        // The last round's unanswered checks are forgotten (a session that never finds a path
        // repunches for as long as it lives).
        let timeout = self.config.consent_timeout;
        self.outstanding
            .retain(|_, o| now.saturating_duration_since(o.sent_at) < timeout);
        self.burst(now);
    }

    /// The peer's public IP: that of its first server-reflexive candidate.
    fn peer_ip(&self) -> Option<IpAddr> {
        self.remotes
            .iter()
            .find(|c| c.kind == Kind::ServerReflexive)
            .map(|c| c.addr.ip())
    }

    /// Sends a check on pair `i` (a first transmission or a retransmission).
    fn check(&mut self, now: Instant, i: usize, use_candidate: bool) {
        let (local, remote) = (self.pairs[i].local, self.pairs[i].remote);
        if !self.may_open(local, remote) {
            return;
        }
        let retransmitted = self.pairs[i].state == State::InProgress;
        // Aggressive nomination: every check of the controlling agent nominates its pair, so
        // the first pair that works both ways is the path, one round trip sooner than a
        // separate nomination. Path choice by RTT may move it later.
        let use_candidate = use_candidate || self.controlling;
        let pair = &mut self.pairs[i];
        if pair.state == State::Waiting || pair.state == State::Failed {
            pair.state = State::InProgress;
        }
        if pair.state == State::InProgress {
            pair.next_at = Some(now + pair.interval);
            pair.interval = (pair.interval * 2).min(self.config.max_retry);
        }
        self.send_check(now, local, remote, use_candidate, retransmitted);
    }

    fn send_check(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        use_candidate: bool,
        retransmitted: bool,
    ) {
        if !self.is_local(local) {
            return;
        }
        let Some((id, bytes)) = self.check_bytes(local, remote, use_candidate) else {
            return;
        };
        // Through a relay (ours, or the peer's TURN server) the TTL games do not apply.
        let via_relay = Some(local) == self.relayed || self.is_relay_candidate(remote);
        let first = !via_relay && self.flows.insert(remote);
        // A birthday socket stays silent toward the peer's NAT until the peer reached it.
        let quiet = !via_relay
            && (self.open_sockets.contains(&local)
                || (self.quiet && self.config.plan.known_endpoint))
            && !self
                .pair_index(local, remote)
                .is_some_and(|i| self.pairs[i].heard);
        self.outstanding.insert(
            id,
            Outstanding {
                local,
                remote,
                sent_at: now,
                retransmitted,
                use_candidate,
            },
        );
        self.stats.checks_sent += 1;
        let low = self.config.low_ttl;
        match low {
            // Quiet: only the low-TTL copy, which opens our NAT and dies before the peer's.
            Some(ttl) if quiet => self.enqueue(bytes, local, remote, Some(ttl)),
            _ => {
                if let Some(ttl) = low.filter(|_| first) {
                    // The low-TTL probe opens our NAT; the real check follows right behind it.
                    self.enqueue(bytes.clone(), local, remote, Some(ttl));
                }
                self.enqueue(bytes, local, remote, None);
            }
        }
    }

    /// A signed check (§7.1.2) from `local` to `remote`: its transaction ID and its bytes.
    fn check_bytes(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        use_candidate: bool,
    ) -> Option<(TransactionId, Vec<u8>)> {
        let id = self.next_transaction();
        let mut message = Message::new(Class::Request, Method::BINDING, id);
        let a = &mut message.attributes;
        a.username = Some(format!(
            "{}:{}",
            self.config.remote.ufrag, self.config.local.ufrag
        ));
        // §7.1.1: the priority a peer-reflexive candidate of ours would have.
        a.priority = Some(Candidate::new(Kind::PeerReflexive, local).priority);
        a.use_candidate = use_candidate;
        if use_candidate && self.controlling {
            // A deliberate nomination carries its count (draft-thatcher-ice-renomination-01
            // §4), so that the controlled agent can follow the latest whatever order they
            // arrive in; the aggressive nominations of ordinary checks carry none.
            a.nomination = self
                .pair_index(local, remote)
                .map(|i| self.pairs[i].nomination)
                .filter(|&n| n > 0);
        }
        if self.controlling {
            a.ice_controlling = Some(self.config.tie_breaker);
        } else {
            a.ice_controlled = Some(self.config.tie_breaker);
        }
        message.fingerprint = true;
        // Only an over-long username could fail, and credentials are checked at signaling.
        let bytes = message.to_bytes(Some(&self.remote_key)).ok()?;
        Some((id, bytes))
    }

    /// While the relay carries the connection and the direct pairs wait for the next round: a
    /// low-TTL copy of a check to each peer address we punched toward, every
    /// [`HOLD_INTERVAL`]. It keeps our NAT's flow toward the peer (which a NAT forgets after
    /// its UDP timeout, 30 s on Linux for a flow that got no answer) and dies before the peer's
    /// NAT, so the peer's checks in the next round find ours open whichever side starts first,
    /// and the peer's NAT never sees anything it did not ask for. Birthday sockets are not
    /// held: a round of them costs too much to keep.
    fn hold(&mut self, now: Instant) {
        self.next_hold = Some(now + HOLD_INTERVAL);
        let Some(ttl) = self.config.low_ttl else {
            return;
        };
        let held: Vec<(SocketAddr, SocketAddr)> = self
            .pairs
            .iter()
            .filter(|p| {
                !p.relayed
                    && p.state == State::Failed
                    && !self.open_sockets.contains(&p.local)
                    && self.is_local(p.local)
                    && self.flows.contains(&p.remote)
            })
            .map(|p| (p.local, p.remote))
            .take(MAX_HELD)
            .collect();
        for (local, remote) in held {
            if let Some((_, bytes)) = self.check_bytes(local, remote, false) {
                self.stats.checks_sent += 1;
                self.enqueue(bytes, local, remote, Some(ttl));
            }
        }
    }

    fn enqueue(
        &mut self,
        bytes: Vec<u8>,
        source: SocketAddr,
        destination: SocketAddr,
        ttl: Option<u8>,
    ) {
        self.queue.push_back(Queued {
            bytes,
            source,
            destination,
            ttl,
        });
    }

    fn next_transaction(&mut self) -> TransactionId {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&self.next_random().to_le_bytes());
        bytes[8..].copy_from_slice(&(self.next_random() as u32).to_le_bytes());
        TransactionId::new(bytes)
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.rng)
    }

    fn handle_request(&mut self, now: Instant, packet: &Receive<'_>, bytes: &[u8]) {
        let Ok(message) = Message::decode_verified(bytes, &self.local_key) else {
            self.stats.unauthenticated += 1;
            return;
        };
        let expected = format!("{}:", self.config.local.ufrag);
        let username_ok = message
            .attributes
            .username
            .as_deref()
            .is_some_and(|u| u.starts_with(&expected) && u.len() > expected.len());
        if !username_ok || message.method != Method::BINDING {
            self.stats.unauthenticated += 1;
            return;
        }
        let a = &message.attributes;
        // §7.3.1.1 role conflicts.
        let conflict = match (self.controlling, a.ice_controlling, a.ice_controlled) {
            (true, Some(theirs), _) => Some(self.config.tie_breaker >= theirs),
            (false, _, Some(theirs)) => Some(self.config.tie_breaker < theirs),
            _ => None,
        };
        match conflict {
            // We keep our role; the peer must switch.
            Some(true) => {
                self.respond(packet, &message, Some(ROLE_CONFLICT));
                return;
            }
            Some(false) => self.flip_role(),
            None => {}
        }
        self.respond(packet, &message, None);

        // §7.3.1.3: a source we do not know is a peer-reflexive candidate.
        if !self.remotes.iter().any(|c| c.addr == packet.source) {
            let priority = a
                .priority
                .unwrap_or_else(|| Candidate::new(Kind::PeerReflexive, packet.source).priority);
            self.remotes.push(Candidate {
                kind: Kind::PeerReflexive,
                addr: packet.source,
                priority,
            });
        }
        let remote_priority = a.priority.unwrap_or(0);
        let i = self.add_pair(now, packet.local, packet.source, remote_priority);
        self.pairs[i].heard = true;
        if a.use_candidate && !self.controlling {
            let pair = &mut self.pairs[i];
            pair.nominated = true;
            pair.nomination = pair.nomination.max(a.nomination.unwrap_or(0));
        }
        match self.pairs[i].state {
            // §7.3.1.4: a triggered check.
            State::Waiting | State::Failed | State::InProgress => {
                if self.start_at.is_some() {
                    self.pairs[i].state = State::Waiting;
                    self.pairs[i].interval = self.config.retry;
                    self.check(now, i, false);
                }
            }
            State::Succeeded => {
                if self.pairs[i].nominated {
                    self.consider(now, i);
                }
            }
        }
    }

    /// Answers a check from the socket it arrived on (§7.3.1.2).
    fn respond(&mut self, packet: &Receive<'_>, request: &Message, error: Option<u16>) {
        let class = if error.is_some() {
            Class::ErrorResponse
        } else {
            Class::SuccessResponse
        };
        let mut message = Message::new(class, Method::BINDING, request.transaction_id);
        match error {
            Some(code) => message.attributes.error_code = Some(ErrorCode::new(code)),
            None => message.attributes.xor_mapped_address = Some(packet.source),
        }
        message.fingerprint = true;
        if let Ok(bytes) = message.to_bytes(Some(&self.local_key)) {
            self.enqueue(bytes, packet.local, packet.source, None);
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        packet: &Receive<'_>,
        id: TransactionId,
        bytes: &[u8],
    ) {
        let Some(sent) = self.outstanding.get(&id).copied() else {
            self.stats.stray += 1;
            return;
        };
        // §7.2.5.2.1: the answer must come back the way the check went.
        if packet.source != sent.remote || packet.local != sent.local {
            self.stats.stray += 1;
            return;
        }
        let Ok(message) = Message::decode_verified(bytes, &self.remote_key) else {
            self.stats.unauthenticated += 1;
            return;
        };
        self.outstanding.remove(&id);
        if message.class == Class::ErrorResponse {
            let code = message.attributes.error_code.map(|e| e.code);
            if code == Some(ROLE_CONFLICT) {
                // §7.2.5.1: switch roles and check again.
                self.flip_role();
                if let Some(i) = self.pair_index(sent.local, sent.remote) {
                    self.pairs[i].state = State::Waiting;
                    self.check(now, i, false);
                }
            } else if let Some(i) = self.pair_index(sent.local, sent.remote) {
                self.pairs[i].state = State::Failed;
                self.pairs[i].next_at = None;
            }
            return;
        }
        // A birthday probe that hit: the pair exists from now on.
        let priority = Candidate::new(Kind::PeerReflexive, sent.remote).priority;
        let i = self.add_pair(now, sent.local, sent.remote, priority);
        let rtt = now.saturating_duration_since(sent.sent_at);
        let pair = &mut self.pairs[i];
        pair.last_answer = Some(now);
        pair.unanswered = 0;
        if !sent.retransmitted {
            pair.recent[pair.samples as usize % 3] = rtt;
            pair.samples += 1;
            // RFC 6298 §2.2 (first sample) and §2.3: β = 1/4 for the variance (updated with
            // the old SRTT), α = 1/8 for the mean.
            (pair.srtt, pair.rttvar) = match pair.srtt {
                Some(srtt) => {
                    let deviation = srtt.abs_diff(rtt);
                    (
                        Some((srtt * 7 + rtt) / 8),
                        (pair.rttvar * 3 + deviation) / 4,
                    )
                }
                None => (Some(rtt), rtt / 2),
            };
        }
        let first_success = pair.state != State::Succeeded;
        pair.state = State::Succeeded;
        pair.next_at = None;
        pair.until = None;
        if sent.use_candidate {
            pair.nominated = true;
        }
        if first_success {
            self.events.push_back(Event::Validated {
                local: sent.local,
                remote: sent.remote,
                rtt,
            });
        }
        if self.pairs[i].relayed {
            // Any answer keeps a relay path's consent (it may be the backup, whose checks
            // start from here if they were not due already).
            self.pairs[i].last_answer = Some(now);
            if self.next_backup_consent.is_none_or(|t| t < now) {
                self.next_backup_consent = Some(now + self.config.consent_interval);
            }
        }
        if self.pairs[i].nominated {
            self.consider(now, i);
        } else {
            // The controlling agent nominates the first working pair, and the first working
            // direct pair while the relay carries the connection.
            let wanted = match self.selected {
                None => !self.pairs.iter().any(|p| p.nominated),
                Some(j) => self.pairs[j].relayed && !self.pairs[i].relayed,
            };
            if self.controlling && wanted && self.pairs[i].nominating == 0 {
                // Nominate the first working pair at once: punching is about the first path.
                self.nominate(now, i);
            }
        }
        self.maybe_switch(now);
    }

    /// Sends a nomination (USE-CANDIDATE) on pair `i`, retransmitted until answered (see
    /// handle_timeout).
    fn nominate(&mut self, now: Instant, i: usize) {
        // 24 bits on the wire: after 16 million nominations in one session the count would
        // wrap and the peer would stop following; it stays at the top instead.
        self.nominations = (self.nominations + 1).min(0x00ff_ffff);
        let pair = &mut self.pairs[i];
        pair.nomination = self.nominations;
        pair.nominating = NOMINATIONS;
        pair.interval = self.config.retry;
        pair.next_at = Some(now + pair.interval);
        let (local, remote) = (pair.local, pair.remote);
        self.send_check(now, local, remote, true, false);
    }

    /// Path choice by distance within a tier, on the controlling side: once the selected path
    /// and another working path of its tier have [`AgentConfig::switch_samples`] RTT samples
    /// each, the other one is nominated if it is clearly nearer (hysteresis:
    /// [`AgentConfig::switch_percent`] and [`AgentConfig::switch_gain`] both hold). The
    /// controlled side follows the nomination. Between tiers, direct always wins (see
    /// [`consider`](Self::consider)).
    fn maybe_switch(&mut self, now: Instant) {
        if !self.controlling || self.switch_to.is_some() {
            return;
        }
        let Some(j) = self.selected else { return };
        let config = &self.config;
        let selected = &self.pairs[j];
        let samples = config.switch_samples.max(3);
        if selected.samples < samples {
            return;
        }
        let current = distance(selected);
        let nearest = self
            .pairs
            .iter()
            .enumerate()
            .filter(|&(i, p)| {
                i != j
                    && p.state == State::Succeeded
                    && p.relayed == selected.relayed
                    && p.samples >= samples
                    && self.fresh(p, now)
            })
            .map(|(i, p)| (distance(p), i))
            .min();
        let Some((rtt, i)) = nearest else { return };
        if rtt * 100 <= current * config.switch_percent
            && current.saturating_sub(rtt) >= config.switch_gain
        {
            self.switch_to = Some(i);
            self.nominate(now, i);
        }
    }

    /// Whether a working pair answered within two consent intervals (it is kept alive, so a
    /// live one has).
    fn fresh(&self, p: &Pair, now: Instant) -> bool {
        p.last_answer
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.consent_interval * 2)
    }

    /// A nominated pair that works: take it if nothing is selected, or if it is on a better
    /// tier (direct before relayed). Within a tier, the controlling agent takes the nearer path
    /// it nominated ([`maybe_switch`](Self::maybe_switch)) and the controlled agent follows
    /// the peer's latest nomination by its NOMINATION count (aggressive nomination may nominate
    /// several pairs during the first burst, which carry no count; the controlling agent
    /// confirms its choice with a counted nomination when it selects, so both sides end on
    /// the same path whatever order the checks arrive in).
    fn consider(&mut self, now: Instant, i: usize) {
        let Some(j) = self.selected else {
            return self.select(now, i);
        };
        if i == j {
            return;
        }
        let (candidate, selected) = (&self.pairs[i], &self.pairs[j]);
        let take = if candidate.relayed != selected.relayed {
            selected.relayed
        } else if self.controlling {
            self.switch_to == Some(i)
        } else {
            candidate.nomination > selected.nomination
        };
        if take {
            self.select(now, i);
        }
    }

    fn select(&mut self, now: Instant, i: usize) {
        self.selected = Some(i);
        self.switch_to = None;
        self.pairs[i].unanswered = 0;
        // The backup (whichever pair it is now) gets its consent checks from here on.
        if self.next_backup_consent.is_none_or(|t| t < now) {
            self.next_backup_consent = Some(now + self.config.consent_interval);
        }
        if !self.pairs[i].relayed {
            // A direct path ends punching; relay pairs that work stay as the backup.
            self.spray = None;
            self.repunch_at = None;
            self.next_hold = None;
            for pair in &mut self.pairs {
                pair.nominating = 0;
                if pair.state == State::InProgress && pair.until.is_none() {
                    pair.next_at = None;
                }
            }
        }
        // The controlling agent confirms its choice (see `consider`): the peer follows the
        // latest nomination it sees, and during a burst others may have followed the one that
        // made this choice. A failover to another path is announced the same way.
        if self.controlling {
            self.nominate(now, i);
        }
        let pair = &self.pairs[i];
        self.events.push_back(Event::Selected {
            local: pair.local,
            remote: pair.remote,
            rtt: pair.srtt.unwrap_or_default(),
            relayed: pair.relayed,
        });
        self.pairs[i].last_answer = Some(now);
        self.next_consent = Some(now + self.consent_gap());
        self.next_keepalives = Some(now + self.consent_gap());
    }

    /// Consent freshness (RFC 7675) on the selected path and on the backup relay path. A
    /// selected direct path that loses consent falls back to the backup; a selected path with
    /// no backup is lost.
    fn consent(&mut self, now: Instant) {
        let timeout = self.config.consent_timeout;
        let expired = |p: &Pair| {
            p.last_answer
                .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
        };
        // Backups whose consent lapsed are gone (several may lapse together).
        while let Some(b) = self.backup().filter(|&b| expired(&self.pairs[b])) {
            self.pairs[b].state = State::Failed;
        }
        if let Some(b) = self.backup() {
            if self.next_backup_consent.is_none_or(|t| now >= t) {
                let (local, remote) = (self.pairs[b].local, self.pairs[b].remote);
                self.send_check(now, local, remote, false, false);
                self.next_backup_consent = Some(now + self.consent_gap());
            }
        }
        let (Some(i), Some(at)) = (self.selected, self.next_consent) else {
            return;
        };
        if expired(&self.pairs[i]) {
            self.lose_selected(now, true);
            return;
        }
        // A selected path whose last two consent checks went unanswered is left early when
        // another path of its tier answers (a NAT that mapped us anew, an interface that
        // died): the consent timeout is the bound for declaring a path dead, not for staying
        // on it. It stays a working path, which path choice may take back. Judged at the
        // consent tick, before its check, when the last one has had a whole interval.
        let tier = self.pairs[i].relayed;
        let silent = now >= at && self.pairs[i].unanswered >= 2;
        let alternative = || {
            self.pairs.iter().enumerate().any(|(a, p)| {
                a != i && p.state == State::Succeeded && p.relayed == tier && self.fresh(p, now)
            })
        };
        if silent && alternative() {
            self.lose_selected(now, false);
            return;
        }
        // Keepalives (RFC 8445 §11, as checks so that they also measure the RTT) on the other
        // working paths of the selected tier, which path choice compares and a failover uses.
        if self.next_keepalives.is_some_and(|t| now >= t) {
            let backup = self.backup();
            let mut alternates: Vec<usize> = Vec::new();
            for a in 0..self.pairs.len() {
                let p = &self.pairs[a];
                if a == i || Some(a) == backup || p.state != State::Succeeded || p.relayed != tier {
                    continue;
                }
                if expired(p) {
                    self.pairs[a].state = State::Failed;
                } else {
                    alternates.push(a);
                }
            }
            alternates.sort_by_key(|&a| std::cmp::Reverse(self.pairs[a].priority));
            let switching = self.switch_to;
            let kept: Vec<usize> = alternates
                .iter()
                .copied()
                .enumerate()
                .filter(|&(rank, a)| rank < MAX_ALTERNATES || Some(a) == switching)
                .map(|(_, a)| a)
                .collect();
            for a in kept {
                let (local, remote) = (self.pairs[a].local, self.pairs[a].remote);
                self.send_check(now, local, remote, false, false);
            }
            self.next_keepalives = Some(now + self.consent_gap());
        }
        if now >= at {
            let (local, remote) = (self.pairs[i].local, self.pairs[i].remote);
            self.pairs[i].unanswered = self.pairs[i].unanswered.saturating_add(1);
            self.send_check(now, local, remote, false, false);
            self.next_consent = Some(now + self.consent_gap());
            // Checks that were never answered are forgotten after the consent timeout, so a
            // long-lived session's table does not grow with every lost check.
            self.outstanding
                .retain(|_, o| now.saturating_duration_since(o.sent_at) < timeout);
        }
    }

    /// The selected path is gone (`dead`: consent lapsed, or its socket went away) or has gone
    /// silent. The connection moves to another working path of the same tier that answered
    /// within two consent intervals (the nearest by smoothed RTT, then the highest priority),
    /// else to the backup relay (and punching starts over), else it is lost. A silent path
    /// stays a working path.
    fn lose_selected(&mut self, now: Instant, dead: bool) {
        let Some(i) = self.selected.take() else {
            return;
        };
        let (local, remote, tier) = (
            self.pairs[i].local,
            self.pairs[i].remote,
            self.pairs[i].relayed,
        );
        if dead {
            self.pairs[i].state = State::Failed;
        }
        self.next_consent = None;
        self.switch_to = None;
        let alternate = self
            .pairs
            .iter()
            .enumerate()
            .filter(|&(a, p)| {
                a != i && p.state == State::Succeeded && p.relayed == tier && self.fresh(p, now)
            })
            .min_by_key(|(_, p)| {
                (
                    p.srtt.unwrap_or(Duration::MAX),
                    std::cmp::Reverse(p.priority),
                )
            })
            .map(|(a, _)| a);
        if let Some(a) = alternate {
            self.select(now, a);
            return;
        }
        // Pairs that were waiting on this path's success may be due in the past.
        for p in &mut self.pairs {
            if p.next_at.is_some_and(|t| t < now) {
                p.next_at = Some(now);
            }
        }
        if let Some(b) = self.backup() {
            // Back to the relay, without the application losing its connection, and try
            // the direct pairs again at once (those that went quiet with this one too).
            let fresh: Vec<bool> = self.pairs.iter().map(|p| self.fresh(p, now)).collect();
            for (p, fresh) in self.pairs.iter_mut().zip(fresh) {
                if p.relayed == tier && p.state == State::Succeeded && !fresh {
                    p.state = State::Failed;
                }
            }
            self.select(now, b);
            self.punch_over = true;
            self.repunch_at = Some(now);
            self.next_hold = None;
            return;
        }
        self.events.push_back(Event::PathLost { local, remote });
        // With no relay to fall back to, punching does not start over by itself: the owner
        // decides (a new session with fresh candidates).
        self.punch_over = true;
        self.repunch_at = None;
    }

    /// Whether an in-progress pair is still retransmitted: a direct one while punching, a relay
    /// one until the relay deadline, neither once a direct path is selected. (Also what
    /// `poll_timeout` waits for; the deadlines themselves are timers.)
    fn retransmits(&self, p: &Pair) -> bool {
        let live = if p.relayed {
            !self.relay_over
        } else {
            !self.punch_over
        };
        p.state == State::InProgress
            && self.deadline.is_some()
            && ((live && !self.direct_selected()) || p.until.is_some())
    }

    /// Whether a waiting pair may get its first check at the next pace tick.
    fn eligible(&self, p: &Pair) -> bool {
        let live = if p.relayed {
            !self.relay_over
        } else {
            !self.punch_over && !self.direct_selected()
        };
        p.state == State::Waiting
            && (live || p.until.is_some())
            && self.deadline.is_some()
            && self.may_open(p.local, p.remote)
    }

    /// The best working relay pair other than the selected one: where to fall back to.
    fn backup(&self) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(i, p)| Some(*i) != self.selected && p.relayed && p.state == State::Succeeded)
            .max_by_key(|(_, p)| (p.nominated, p.priority))
            .map(|(i, _)| i)
    }

    /// The consent interval with ±20 % jitter (RFC 7675 §5.1).
    fn consent_gap(&mut self) -> Duration {
        let base = self.config.consent_interval;
        let jitter = (self.next_random() % 401) as u32; // 0..=400 per mille of 20 % either way
        base * (800 + jitter) / 1000
    }

    fn spray_port(&mut self) -> Option<u16> {
        let spray = self.spray.as_ref()?;
        if spray.tried.len() >= usize::from(u16::MAX - LOW_PORT) {
            return None;
        }
        loop {
            let p = LOW_PORT + (self.next_random() % u64::from(u16::MAX - LOW_PORT + 1)) as u16;
            if self.spray.as_mut()?.tried.insert(p) {
                return Some(p);
            }
        }
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
        if !self.accepts(&packet) {
            self.stats.malformed += 1;
            return;
        }
        // A socket we gave up (its interface went away) answers nothing.
        if !self.is_local(packet.local) {
            self.stats.stray += 1;
            return;
        }
        let Ok(message) = Message::decode(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        match message.class {
            Class::Request => self.handle_request(now, &packet, packet.payload),
            Class::SuccessResponse | Class::ErrorResponse => {
                self.handle_response(now, &packet, message.transaction_id, packet.payload);
            }
            // Indications (keepalives) need nothing.
            Class::Indication => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if !self.started(now) {
            return;
        }
        self.begin(now);
        if self.punching(now) && self.deadline.is_some_and(|d| now >= d) {
            self.punch_over = true;
            self.spray = None;
            for pair in &mut self.pairs {
                if pair.state == State::InProgress && !pair.relayed {
                    pair.state = State::Failed;
                    pair.next_at = None;
                }
            }
            // A direct path that works: the selected one, or one that answered lately (a pair
            // that worked once and went quiet does not stop the next rounds).
            let direct = self.direct_selected()
                || self
                    .pairs
                    .iter()
                    .any(|p| p.state == State::Succeeded && !p.relayed && self.fresh(p, now));
            if !direct && !self.gave_up {
                self.gave_up = true;
                self.events.push_back(Event::GaveUp);
            }
            if !direct {
                self.repunch_at = Some(now + REPUNCH_INTERVAL);
                self.next_hold = Some(now + HOLD_INTERVAL);
            }
        }
        // On the relay (or on nothing) after a failed round: try again now and then.
        if self.punch_over && !self.direct_selected() && self.repunch_at.is_some_and(|t| now >= t) {
            self.repunch(now);
        }
        if self.punch_over
            && !self.direct_selected()
            && self.repunch_at.is_some()
            && self.next_hold.is_some_and(|t| now >= t)
        {
            self.hold(now);
        }
        if !self.relay_over && self.relay_deadline.is_some_and(|d| now >= d) {
            self.relay_over = true;
            for pair in &mut self.pairs {
                if pair.relayed && matches!(pair.state, State::InProgress | State::Waiting) {
                    pair.state = State::Failed;
                    pair.next_at = None;
                }
            }
        }
        // Nominations go on until answered, also after the punch deadline.
        for i in 0..self.pairs.len() {
            let pair = &mut self.pairs[i];
            if pair.nominating > 0 && pair.next_at.is_some_and(|t| now >= t) {
                pair.nominating -= 1;
                pair.next_at = (pair.nominating > 0).then(|| now + pair.interval);
                pair.interval = (pair.interval * 2).min(self.config.max_retry);
                let (local, remote) = (pair.local, pair.remote);
                self.send_check(now, local, remote, true, true);
                if self.pairs[i].nominating == 0 && self.switch_to == Some(i) {
                    self.switch_to = None;
                }
            }
        }
        // Pairs found late get their own round; it ends like the main one.
        for pair in &mut self.pairs {
            if pair.until.is_some_and(|t| now >= t) {
                pair.until = None;
                if matches!(pair.state, State::InProgress | State::Waiting) {
                    pair.state = State::Failed;
                    pair.next_at = None;
                }
            }
        }
        let punching = self.punching(now);
        // Retransmissions: direct pairs while punching, relay pairs until the relay deadline.
        for i in 0..self.pairs.len() {
            let p = &self.pairs[i];
            if self.retransmits(p) && p.next_at.is_some_and(|t| now >= t) {
                self.check(now, i, false);
            }
        }
        // One new check per pace interval, highest priority first.
        if self.next_pace.is_some_and(|t| now >= t) {
            let next = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, p)| self.eligible(p))
                .max_by_key(|(_, p)| p.priority)
                .map(|(i, _)| i);
            if let Some(i) = next {
                self.check(now, i, false);
                self.next_pace = Some(now + self.config.pace);
            }
        }
        if punching {
            // The birthday spray, paced.
            while let Some(spray) = &self.spray {
                if spray.remaining == 0 || now < spray.next_at {
                    break;
                }
                let ip = spray.ip;
                let Some(port) = self.spray_port() else {
                    self.spray = None;
                    break;
                };
                let base = self.config.base;
                let nominate = self.controlling;
                self.send_check(now, base, SocketAddr::new(ip, port), nominate, false);
                if let Some(spray) = &mut self.spray {
                    spray.remaining -= 1;
                    spray.next_at += spray.every;
                }
            }
        }
        self.consent(now);
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

    fn poll_timeout(&self) -> Option<Instant> {
        let start = self.start_at?;
        if self.deadline.is_none() {
            return Some(start);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for pair in &self.pairs {
            if pair.nominating > 0 {
                consider(pair.next_at);
            }
            consider(pair.until);
        }
        if !self.punch_over && !self.direct_selected() {
            consider(self.deadline);
            consider(
                self.spray
                    .as_ref()
                    .filter(|s| s.remaining > 0)
                    .map(|s| s.next_at),
            );
        }
        if !self.relay_over && self.pairs.iter().any(|p| p.relayed) {
            consider(self.relay_deadline);
        }
        if self.punch_over && !self.direct_selected() {
            consider(self.repunch_at);
            if self.repunch_at.is_some() {
                consider(self.next_hold);
            }
        }
        for pair in &self.pairs {
            if self.retransmits(pair) {
                consider(pair.next_at);
            }
        }
        if self.pairs.iter().any(|p| self.eligible(p)) {
            consider(self.next_pace);
        }
        if let (Some(i), Some(at)) = (self.selected, self.next_consent) {
            consider(Some(at));
            consider(self.next_keepalives);
            consider(
                self.pairs[i]
                    .last_answer
                    .map(|t| t + self.config.consent_timeout),
            );
        }
        // A backup's lapse is noticed at its next consent check (at most one interval late):
        // the pair that is the backup can change between two timeouts, and an earlier one's
        // lapse must not become a wake-up in the past.
        if self.backup().is_some() {
            consider(self.next_backup_consent);
        }
        next
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

#[cfg(test)]
// Tests take any epoch.
#[allow(clippy::disallowed_methods)]
mod tests {
    use fog_core::nat::Behaviour;
    use fog_core::pairing::Who;

    use super::*;
    use crate::strategy::StrategyConfig;

    const A: &str = "192.0.2.1:1000";
    const B: &str = "192.0.2.2:2000";

    fn creds(name: &str) -> Credentials {
        Credentials {
            ufrag: format!("{name}ufrag"),
            pwd: format!("{name}-a-password-of-22-chars"),
        }
    }

    fn agent(me: &str, peer: &str, controlling: bool, seed: u64) -> Agent {
        let who = if controlling { Who::A } else { Who::B };
        let plan = Plan::new(
            Behaviour::Open,
            Behaviour::Open,
            who,
            &StrategyConfig::default(),
        );
        let (mine, theirs) = if controlling { ("a", "b") } else { ("b", "a") };
        let mut agent = Agent::new(AgentConfig::new(
            creds(mine),
            creds(theirs),
            controlling,
            me.parse().unwrap(),
            plan,
            seed,
        ));
        agent.add_remote(
            Instant::now(),
            Candidate::new(Kind::ServerReflexive, peer.parse().unwrap()),
        );
        agent
    }

    /// Two agents on one wire; `deliver` decides which datagrams arrive, `delay` how late (one
    /// way, by the datagram's source and destination; 5 ms unless set). A datagram to an
    /// address that is not one of the other agent's sockets is lost.
    struct Wire {
        a: Agent,
        b: Agent,
        now: Instant,
        events: Vec<(Instant, bool, Event)>,
        delay: Box<dyn Fn(SocketAddr, SocketAddr) -> Duration>,
        /// Every datagram sent: (when, from A, destination, TTL hint).
        sent: Vec<(Instant, bool, SocketAddr, Option<u8>)>,
        /// Whether a datagram from the first address to the second gets through.
        pass: Box<dyn Fn(SocketAddr, SocketAddr) -> bool>,
    }

    impl Wire {
        fn new(a: Agent, b: Agent) -> Wire {
            Wire {
                a,
                b,
                now: Instant::now(),
                events: Vec::new(),
                delay: Box::new(|_, _| Duration::from_millis(5)),
                sent: Vec::new(),
                pass: Box::new(|_, _| true),
            }
        }

        /// The Selected events of one side, as (our socket, the peer's).
        fn selections(&self, on_b: bool) -> Vec<(SocketAddr, SocketAddr)> {
            self.events
                .iter()
                .filter_map(|(_, b, e)| match e {
                    Event::Selected { local, remote, .. } if *b == on_b => Some((*local, *remote)),
                    _ => None,
                })
                .collect()
        }

        fn start(&mut self) {
            let now = self.now;
            self.a.start(now);
            self.b.start(now);
        }

        /// Runs until `until`, delivering each datagram after 5 ms unless `deliver` says no.
        fn run(&mut self, until: Duration, deliver: &mut dyn FnMut(Instant) -> bool) {
            let end = self.now + until;
            let mut in_flight: Vec<(Instant, bool, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
            let mut buf = vec![0u8; 2048];
            loop {
                for (to_b, agent) in [(true, &mut self.a), (false, &mut self.b)] {
                    agent.handle_timeout(self.now);
                    while let Some(t) = agent.poll_transmit(self.now, &mut buf) {
                        self.sent.push((self.now, to_b, t.destination, t.hints.ttl));
                        if deliver(self.now) && (self.pass)(t.source.unwrap(), t.destination) {
                            let source = t.source.unwrap();
                            in_flight.push((
                                self.now + (self.delay)(source, t.destination),
                                to_b,
                                source,
                                t.destination,
                                buf[..t.len].to_vec(),
                            ));
                        }
                    }
                    while let Some(e) = agent.poll_event() {
                        self.events.push((self.now, !to_b, e));
                    }
                    if let Some(t) = agent.poll_timeout() {
                        assert!(t >= self.now, "a timer in the past");
                    }
                }
                let next_packet = in_flight.iter().map(|p| p.0).min();
                let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                    break;
                };
                if next > end {
                    break;
                }
                self.now = self.now.max(next);
                let due: Vec<_> = in_flight
                    .iter()
                    .filter(|p| p.0 <= self.now)
                    .cloned()
                    .collect();
                in_flight.retain(|p| p.0 > self.now);
                for (_, to_b, source, destination, bytes) in due {
                    let agent = if to_b { &mut self.b } else { &mut self.a };
                    if !agent.is_local(destination) {
                        continue;
                    }
                    agent.handle_packet(
                        self.now,
                        Receive {
                            source,
                            local: destination,
                            payload: &bytes,
                        },
                    );
                    // No timer in the past after a datagram either (the agent's timers do not
                    // depend on what it has queued to send).
                    if let Some(t) = agent.poll_timeout() {
                        assert!(t >= self.now, "a timer in the past after a datagram");
                    }
                }
            }
            self.now = end;
        }

        fn selected(&self, on_b: bool) -> Option<Instant> {
            self.events.iter().find_map(|(t, b, e)| {
                (*b == on_b && matches!(e, Event::Selected { .. })).then_some(*t)
            })
        }
    }

    #[test]
    fn two_open_agents_select_the_path_with_its_rtt() {
        let mut wire = Wire::new(agent(A, B, true, 1), agent(B, A, false, 2));
        wire.start();
        wire.run(Duration::from_secs(1), &mut |_| true);
        assert!(wire.selected(false).is_some() && wire.selected(true).is_some());
        assert_eq!(
            wire.a.selected(),
            Some((A.parse().unwrap(), B.parse().unwrap()))
        );
        assert_eq!(
            wire.b.selected(),
            Some((B.parse().unwrap(), A.parse().unwrap()))
        );
        let rtt = wire.events.iter().find_map(|(_, _, e)| match e {
            Event::Validated { rtt, .. } => Some(*rtt),
            _ => None,
        });
        assert_eq!(rtt, Some(Duration::from_millis(10)));
        assert_eq!(
            wire.a.stats().unauthenticated + wire.b.stats().unauthenticated,
            0
        );
    }

    const A6: &str = "[2001:db8::a]:1000";
    const B6: &str = "[2001:db8::b]:2000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A dual-stack agent: its base (IPv4, behind `nat`) and an IPv6 socket; it knows the
    /// peer's IPv4 srflx and, with `peer_v6`, the peer's IPv6 host candidate.
    fn dual(controlling: bool, nat: Behaviour, peer_v6: bool) -> Agent {
        let (me, me6, peer, peer6) = if controlling {
            (A, A6, B, B6)
        } else {
            (B, B6, A, A6)
        };
        let who = if controlling { Who::A } else { Who::B };
        let plan = Plan::new(nat, nat, who, &StrategyConfig::default());
        let (mine, theirs) = if controlling { ("a", "b") } else { ("b", "a") };
        let mut config = AgentConfig::new(
            creds(mine),
            creds(theirs),
            controlling,
            addr(me),
            plan,
            u64::from(controlling) + 7,
        );
        config.hosts = vec![addr(me6)];
        let mut agent = Agent::new(config);
        let now = Instant::now();
        agent.add_remote(now, Candidate::new(Kind::ServerReflexive, addr(peer)));
        if peer_v6 {
            agent.add_remote(now, Candidate::new(Kind::Host, addr(peer6)));
        }
        agent
    }

    fn ipv6(a: SocketAddr, b: SocketAddr) -> bool {
        a.is_ipv6() || b.is_ipv6()
    }

    #[test]
    fn ipv6_host_pairs_connect_where_ipv4_needs_a_relay() {
        // Both IPv4 NATs random-symmetric: the route is the relay's. Their IPv6 sockets pass
        // no NAT, and a check each way opens any firewall on the way.
        let symmetric = Behaviour::nat(
            fog_core::nat::Mapping::AddressAndPortDependent,
            fog_core::nat::Filtering::AddressAndPortDependent,
            fog_core::nat::PortPattern::Random,
        );
        assert!(!Plan::new(symmetric, symmetric, Who::A, &StrategyConfig::default()).is_direct());
        let mut wire = Wire::new(dual(true, symmetric, true), dual(false, symmetric, true));
        wire.start();
        wire.run(Duration::from_secs(1), &mut |_| true);
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
        assert!(!wire.a.selected_is_relayed());
    }

    /// Paths over IPv6 take `v6` one way, over IPv4 20 ms.
    fn two_paths(wire: &mut Wire, v6: std::rc::Rc<std::cell::Cell<Duration>>) {
        wire.delay = Box::new(move |s, d| {
            if ipv6(s, d) {
                v6.get()
            } else {
                Duration::from_millis(20)
            }
        });
    }

    /// Two dual-stack agents without NATs, IPv6 `v6` one way (the cell changes it), run for
    /// `run` from their start.
    fn dual_wire(v6: Duration, run: Duration) -> (Wire, std::rc::Rc<std::cell::Cell<Duration>>) {
        let v6 = std::rc::Rc::new(std::cell::Cell::new(v6));
        let mut wire = Wire::new(
            dual(true, Behaviour::Open, true),
            dual(false, Behaviour::Open, true),
        );
        two_paths(&mut wire, v6.clone());
        wire.start();
        wire.run(run, &mut |_| true);
        (wire, v6)
    }

    #[test]
    fn a_clearly_nearer_path_takes_over_on_both_sides() {
        let (mut wire, v6) = dual_wire(Duration::from_millis(60), Duration::from_secs(2));
        // The first burst checks both at once: the nearer (IPv4, 40 ms round trip) wins.
        assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
        assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
        // IPv6 becomes much nearer (10 ms against 40 ms).
        v6.set(Duration::from_millis(5));
        wire.run(Duration::from_secs(60), &mut |_| true);
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
        // It moved once, without flapping back.
        assert_eq!(wire.selections(false).last(), Some(&(addr(A6), addr(B6))));
        let moves = wire
            .selections(false)
            .windows(2)
            .filter(|w| w[0] != w[1])
            .count();
        assert_eq!(moves, 1, "{:?}", wire.selections(false));
    }

    #[test]
    fn a_slightly_nearer_path_does_not_take_over() {
        let (mut wire, v6) = dual_wire(Duration::from_millis(60), Duration::from_secs(2));
        assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
        // 34 ms against 40 ms round trip: 15 % nearer, inside the hysteresis.
        v6.set(Duration::from_millis(17));
        wire.run(Duration::from_secs(60), &mut |_| true);
        assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
        assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
        // Both paths were kept alive and measured the whole time.
        assert!(wire.a.has_path(addr(A6), addr(B6)));
    }

    #[test]
    fn a_lost_interface_moves_the_connection_to_the_other_path_at_once() {
        let (mut wire, _) = dual_wire(Duration::from_millis(2), Duration::from_secs(12));
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        let now = wire.now;
        wire.a.remove_local(now, addr(A6));
        assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
        // The peer follows the nomination within a round trip or two.
        wire.run(Duration::from_millis(200), &mut |_| true);
        assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
        assert!(!wire.a.has_path(addr(A6), addr(B6)));

        // The interface comes back and is trickled again: its failed pairs get a new round,
        // and the nearer path takes over again once measured.
        let back = wire.now;
        wire.a.add_local(back, addr(A6));
        wire.b
            .add_remote(back, Candidate::new(Kind::Host, addr(A6)));
        wire.run(Duration::from_secs(30), &mut |_| true);
        assert!(
            wire.events.iter().any(|(t, on_b, e)| *t >= back
                && !on_b
                && matches!(e, Event::Validated { local, .. } if *local == addr(A6))),
            "A6 checked again"
        );
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
    }

    #[test]
    fn one_lost_consent_check_does_not_move_the_path() {
        let (mut wire, _) = dual_wire(Duration::from_millis(2), Duration::from_secs(20));
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        let before = [wire.selections(false).len(), wire.selections(true).len()];
        // Exactly one datagram from A's IPv6 socket to B's is lost.
        let lost = std::rc::Rc::new(std::cell::Cell::new(false));
        let l = lost.clone();
        wire.pass = Box::new(move |s, d| {
            if s == addr(A6) && d == addr(B6) && !l.get() {
                l.set(true);
                return false;
            }
            true
        });
        wire.run(Duration::from_secs(30), &mut |_| true);
        assert!(lost.get());
        let after = [wire.selections(false).len(), wire.selections(true).len()];
        assert_eq!(before, after, "no path change on either side");
    }

    /// Dual-stack agents without NATs, and B's TURN relayed address (30 ms away) that A knows.
    fn relay_wire(v6: u64) -> Wire {
        const R: &str = "198.51.100.50:3478";
        let mut a = dual(true, Behaviour::Open, true);
        let mut b = dual(false, Behaviour::Open, true);
        let now = Instant::now();
        b.set_relayed(now, addr(R));
        a.add_remote(now, Candidate::new(Kind::Relayed, addr(R)));
        let mut wire = Wire::new(a, b);
        wire.delay = Box::new(move |s, d| {
            if s == addr(R) || d == addr(R) {
                Duration::from_millis(30)
            } else if ipv6(s, d) {
                Duration::from_millis(v6)
            } else {
                Duration::from_millis(20)
            }
        });
        wire
    }

    #[test]
    fn after_every_direct_path_died_punching_resumes_when_they_come_back() {
        let relay: SocketAddr = "198.51.100.50:3478".parse().unwrap();
        let mut wire = relay_wire(17);
        wire.start();
        wire.run(Duration::from_secs(12), &mut |_| true);
        assert!(!wire.a.selected_is_relayed());
        // Every direct path dies at once; the relay carries on.
        let cut = std::rc::Rc::new(std::cell::Cell::new(true));
        let c = cut.clone();
        wire.pass = Box::new(move |s, d| !c.get() || s == relay || d == relay);
        wire.run(Duration::from_secs(60), &mut |_| true);
        assert!(
            wire.a.selected_is_relayed(),
            "on the relay during the outage"
        );
        // They come back: a later round of punching finds them.
        cut.set(false);
        wire.run(Duration::from_secs(60), &mut |_| true);
        assert!(wire.a.selected().is_some() && !wire.a.selected_is_relayed());
        assert!(wire.b.selected().is_some() && !wire.b.selected_is_relayed());
    }

    #[test]
    fn ipv6_checks_do_not_use_up_the_single_ipv4_flow() {
        // Both sequential-symmetric: each side sends exactly one IPv4 flow, to the peer's
        // predicted port. The peer's IPv6 host candidate, listed first, must not take it.
        let sequential = Behaviour::nat(
            fog_core::nat::Mapping::AddressAndPortDependent,
            fog_core::nat::Filtering::AddressAndPortDependent,
            fog_core::nat::PortPattern::Sequential { delta: 1 },
        );
        let plan = Plan::new(sequential, sequential, Who::A, &StrategyConfig::default());
        assert!(plan.single_flow);
        let mut config = AgentConfig::new(creds("a"), creds("b"), true, addr(A), plan, 9);
        config.hosts = vec![addr(A6)];
        let mut agent = Agent::new(config);
        let now = Instant::now();
        let predicted: SocketAddr = "203.0.113.2:40001".parse().unwrap();
        agent.add_remote(now, Candidate::new(Kind::Host, addr(B6)));
        agent.add_remote(now, Candidate::new(Kind::Predicted, predicted));
        agent.start(now);
        let mut sent = HashSet::new();
        let mut buf = vec![0u8; 1500];
        let mut t = now;
        while t < now + Duration::from_secs(1) {
            agent.handle_timeout(t);
            while let Some(x) = agent.poll_transmit(t, &mut buf) {
                sent.insert(x.destination);
            }
            t = agent
                .poll_timeout()
                .unwrap_or(t)
                .max(t + Duration::from_millis(1));
        }
        assert!(sent.contains(&addr(B6)), "{sent:?}");
        assert!(sent.contains(&predicted), "{sent:?}");
        let ipv4: Vec<_> = sent.iter().filter(|d| d.is_ipv4()).collect();
        assert_eq!(ipv4, [&predicted], "one IPv4 flow, the route's");
    }

    #[test]
    fn an_interface_found_later_is_checked_and_used() {
        // No IPv6 at first: the connection runs over IPv4.
        let mut a = dual(true, Behaviour::Open, false);
        a.remove_local(Instant::now(), addr(A6));
        let mut wire = Wire::new(a, dual(false, Behaviour::Open, false));
        two_paths(
            &mut wire,
            std::rc::Rc::new(std::cell::Cell::new(Duration::from_millis(2))),
        );
        wire.start();
        wire.run(Duration::from_secs(10), &mut |_| true);
        assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
        // A's IPv6 address comes up; it is trickled to B, and A learns B's.
        let now = wire.now;
        wire.a.add_local(now, addr(A6));
        wire.a.add_remote(now, Candidate::new(Kind::Host, addr(B6)));
        wire.b.add_remote(now, Candidate::new(Kind::Host, addr(A6)));
        wire.run(Duration::from_secs(1), &mut |_| true);
        assert!(wire.events.iter().any(|(t, _, e)| *t >= now
            && matches!(e, Event::Validated { local, .. } if *local == addr(A6))));
        // Much nearer: it takes over once measured.
        wire.run(Duration::from_secs(30), &mut |_| true);
        assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
        assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
    }

    #[test]
    fn between_rounds_our_nat_is_held_open_with_low_ttl_checks_only() {
        let mut wire = Wire::new(agent(A, B, true, 5), agent(B, A, false, 6));
        wire.start();
        let start = wire.now;
        // Nothing passes: the round ends after 5 s and the next is due 20 s later.
        wire.run(Duration::from_secs(40), &mut |_| false);
        let from_a: Vec<(Duration, Option<u8>)> = wire
            .sent
            .iter()
            .filter(|s| s.1 && s.2 == addr(B))
            .map(|s| (s.0 - start, s.3))
            .collect();
        let between = |from: u64, to: u64| {
            from_a
                .iter()
                .filter(move |s| s.0 > Duration::from_secs(from) && s.0 < Duration::from_secs(to))
        };
        // Between the rounds (5.5 s to 25 s): only low-TTL checks, every 10 s.
        let held: Vec<_> = between(6, 25).collect();
        assert!(!held.is_empty(), "{from_a:?}");
        assert!(held.iter().all(|s| s.1 == Some(3)), "{held:?}");
        assert!(
            held.iter().all(|s| s.0 >= Duration::from_secs(14)),
            "{held:?}"
        );
        // The next round punches in full again at 25 s.
        assert!(between(24, 27).any(|s| s.1.is_none()), "{from_a:?}");
    }

    #[test]
    fn consent_loss_is_noticed_within_the_timeout() {
        let mut wire = Wire::new(agent(A, B, true, 3), agent(B, A, false, 4));
        wire.start();
        wire.run(Duration::from_secs(1), &mut |_| true);
        assert!(wire.a.selected().is_some());
        // Consent checks keep it for a minute...
        wire.run(Duration::from_secs(60), &mut |_| true);
        assert!(wire.a.selected().is_some());
        assert!(
            !wire
                .events
                .iter()
                .any(|(_, _, e)| matches!(e, Event::PathLost { .. }))
        );
        // ...and a path that stops answering is lost after 30 s, not much later.
        let cut = wire.now;
        wire.run(Duration::from_secs(60), &mut |_| false);
        let lost = wire
            .events
            .iter()
            .find(|(_, on_b, e)| !on_b && matches!(e, Event::PathLost { .. }))
            .map(|(t, _, _)| *t - cut)
            .expect("A noticed the dead path");
        assert!(
            lost >= Duration::from_secs(25) && lost <= Duration::from_secs(31),
            "{lost:?}"
        );
        assert_eq!(wire.a.selected(), None);
    }

    #[test]
    fn both_controlling_resolve_by_tie_breaker() {
        let mut b = agent(B, A, true, 6);
        // B believes it controls too, with a different tie-breaker and A's credentials swapped in.
        b.config.local = creds("b");
        b.config.remote = creds("a");
        b.local_key = IntegrityKey::short_term(&b.config.local.pwd);
        b.remote_key = IntegrityKey::short_term(&b.config.remote.pwd);
        let mut wire = Wire::new(agent(A, B, true, 5), b);
        wire.start();
        wire.run(Duration::from_secs(2), &mut |_| true);
        assert_ne!(wire.a.is_controlling(), wire.b.is_controlling());
        assert!(wire.a.selected().is_some() && wire.b.selected().is_some());
    }

    #[test]
    fn unauthenticated_and_malformed_input_is_dropped_and_counted() {
        let mut a = agent(A, B, true, 7);
        let now = Instant::now();
        a.start(now);
        a.handle_timeout(now);
        let mut buf = vec![0u8; 2048];
        while a.poll_transmit(now, &mut buf).is_some() {}
        let from: SocketAddr = "198.51.100.9:9".parse().unwrap();
        let local: SocketAddr = A.parse().unwrap();
        // A check signed with the wrong password.
        let mut forged = Message::new(Class::Request, Method::BINDING, TransactionId::new([1; 12]));
        forged.attributes.username = Some("aufrag:bufrag".into());
        let bytes = forged
            .to_bytes(Some(&IntegrityKey::short_term("not-the-password-at-all")))
            .unwrap();
        // One with the right password but someone else's username.
        let mut wrong_user = forged.clone();
        wrong_user.attributes.username = Some("other:bufrag".into());
        let wrong_user = wrong_user
            .to_bytes(Some(&IntegrityKey::short_term(&creds("a").pwd)))
            .unwrap();
        for payload in [
            &bytes[..],
            &wrong_user[..],
            b"not stun at all",
            &[0u8; 20][..],
        ] {
            a.handle_packet(
                now,
                Receive {
                    source: from,
                    local,
                    payload,
                },
            );
        }
        assert!(
            a.poll_transmit(now, &mut buf).is_none(),
            "nothing is answered"
        );
        let stats = a.stats();
        assert_eq!(stats.unauthenticated, 2);
        assert_eq!(stats.malformed, 2);
        // A response to no check of ours.
        let mut response = Message::new(
            Class::SuccessResponse,
            Method::BINDING,
            TransactionId::new([2; 12]),
        );
        response.attributes.xor_mapped_address = Some(from);
        let response = response.to_bytes(None).unwrap();
        a.handle_packet(
            now,
            Receive {
                source: from,
                local,
                payload: &response,
            },
        );
        assert_eq!(a.stats().stray, 1);
        assert!(a.poll_event().is_none());
    }

    /// On a shared socket an agent takes checks naming its username fragment first, and
    /// answers to its own checks; nothing else.
    #[test]
    fn owns_its_checks_and_answers_only() {
        let mut a = agent(A, B, true, 9);
        let now = Instant::now();
        a.start(now);
        a.handle_timeout(now);
        let mut buf = vec![0u8; 2048];
        let sent = a.poll_transmit(now, &mut buf).unwrap();
        let ours = Message::decode(&buf[..sent.len]).unwrap().transaction_id;
        let local: SocketAddr = A.parse().unwrap();
        let source: SocketAddr = B.parse().unwrap();
        let check = |username: &str| {
            let mut m = Message::new(Class::Request, Method::BINDING, TransactionId::new([3; 12]));
            m.attributes.username = Some(username.into());
            m.to_bytes(None).unwrap()
        };
        let answer = |id| {
            Message::new(Class::SuccessResponse, Method::BINDING, id)
                .to_bytes(None)
                .unwrap()
        };
        let owns = |payload: &[u8]| {
            a.owns(&Receive {
                source,
                local,
                payload,
            })
        };
        assert!(owns(&check("aufrag:bufrag")));
        assert!(
            !owns(&check("aufragx:bufrag")),
            "a longer ufrag with our prefix"
        );
        assert!(!owns(&check("aufrag")), "no colon");
        assert!(!owns(&check("bufrag:aufrag")), "the peer's ufrag first");
        assert!(owns(&answer(ours)));
        assert!(!owns(&answer(TransactionId::new([4; 12]))));
        assert!(!owns(b"\x07application data"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut a = agent(A, B, false, 8);
        let now = Instant::now();
        a.start(now);
        let mut state = 0x1234_5678_u64;
        let local: SocketAddr = A.parse().unwrap();
        let mut buf = vec![0u8; 2048];
        for i in 0..20_000u32 {
            state = splitmix(state);
            let len = (state % 120) as usize;
            let mut payload: Vec<u8> = (0..len)
                .map(|j| (splitmix(state ^ j as u64) & 0xff) as u8)
                .collect();
            // Half of them look like STUN so that the decoder, not the cookie check, is tested.
            if i % 2 == 0 && payload.len() >= 20 {
                payload[0] &= 0x01;
                payload[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                let body = (payload.len() - 20) as u16;
                payload[2..4].copy_from_slice(&body.to_be_bytes());
            }
            let source = SocketAddr::from(([198, 51, 100, (state >> 56) as u8], 9));
            a.handle_packet(
                now,
                Receive {
                    source,
                    local,
                    payload: &payload,
                },
            );
            a.handle_timeout(now);
            while a.poll_transmit(now, &mut buf).is_some() {}
        }
        let stats = a.stats();
        assert!(stats.malformed + stats.unauthenticated + stats.stray > 10_000);
    }
}
