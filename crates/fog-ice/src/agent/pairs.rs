//! The pair table: adding and finding pairs, and which may be checked now.

use super::*;

impl Agent {
    pub(super) fn add_pair(
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
        // A relay pair found after the relay deadline (a new allocation of ours or of the
        // peer's, after the old one was lost) reopens the relay's checks for as long again.
        if relayed && self.relay_over && self.deadline.is_some() {
            self.relay_over = false;
            self.relay_deadline = Some(now + RELAY_PATIENCE);
        }
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

    pub(super) fn pair_index(&self, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.local == local && p.remote == remote)
    }

    /// Failed direct pairs that `which` picks get a round of their own (see `Pair::until`).
    pub(super) fn revive(&mut self, now: Instant, which: impl Fn(&Pair) -> bool) {
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

    /// Whether our further socket `local` pairs with the peer's host candidates (see
    /// [`AgentConfig::hosts`]): not when the plan is relay-only, and when it is of the base's
    /// family (possibly behind the same NAT) only if the plan allows more than one flow.
    pub(super) fn host_pairs_with(&self, local: SocketAddr) -> bool {
        let plan = &self.config.plan;
        !plan.relay_only && (local.is_ipv4() != self.config.base.is_ipv4() || !plan.single_flow)
    }

    /// Whether a check may go from `local` to `remote` now. Through our relay, always: it opens
    /// no flow in our NAT. Otherwise always to a destination we already opened, and to a new
    /// one unless the single-flow rule has used its one flow; the peer's relay only after our
    /// one flow went where the route says.
    pub(super) fn may_open(&self, local: SocketAddr, remote: SocketAddr) -> bool {
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
    pub(super) fn is_local(&self, local: SocketAddr) -> bool {
        local == self.config.base
            || Some(local) == self.relayed
            || self.config.hosts.contains(&local)
            || self.open_sockets.contains(&local)
    }

    pub(super) fn is_relay_candidate(&self, addr: SocketAddr) -> bool {
        self.remotes
            .iter()
            .any(|c| c.addr == addr && c.kind == Kind::Relayed)
    }

    /// Whether an in-progress pair is still retransmitted: a direct one while punching, a relay
    /// one until the relay deadline, neither once a direct path is selected. (Also what
    /// `poll_timeout` waits for; the deadlines themselves are timers.)
    pub(super) fn retransmits(&self, p: &Pair) -> bool {
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
    pub(super) fn eligible(&self, p: &Pair) -> bool {
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
}
