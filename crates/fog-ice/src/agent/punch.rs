//! Punching: the first burst, rounds again while on the relay, holding our NAT's flows open
//! between rounds, and both halves of a birthday round.

use super::*;

impl Agent {
    pub(super) fn begin(&mut self, now: Instant) {
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
    pub(super) fn burst(&mut self, now: Instant) {
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
    pub(super) fn repunch(&mut self, now: Instant) {
        // A direct pair that worked once and has not answered for two consent intervals
        // (the path the connection left when it went silent) is tried again too.
        let stale: Vec<bool> = self
            .pairs
            .iter()
            .map(|p| p.state == State::Succeeded && !self.fresh(p, now))
            .collect();
        for (pair, stale) in self.pairs.iter_mut().zip(stale) {
            if !pair.relayed && (stale || matches!(pair.state, State::Failed | State::InProgress)) {
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
    pub(super) fn peer_ip(&self) -> Option<IpAddr> {
        self.remotes
            .iter()
            .find(|c| c.kind == Kind::ServerReflexive)
            .map(|c| c.addr.ip())
    }

    /// While the relay carries the connection and the direct pairs wait for the next round: a
    /// low-TTL copy of a check to each peer address we punched toward, every
    /// [`HOLD_INTERVAL`]. It keeps our NAT's flow toward the peer (which a NAT forgets after
    /// its UDP timeout, 30 s on Linux for a flow that got no answer) and dies before the peer's
    /// NAT, so the peer's checks in the next round find ours open whichever side starts first,
    /// and the peer's NAT never sees anything it did not ask for. Birthday sockets are not
    /// held: a round of them costs too much to keep.
    pub(super) fn hold(&mut self, now: Instant) {
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

    /// Our NAT gave the base a new mapping (the owner's keepalive found it and trickles it
    /// now): a low-TTL check from the base to each peer address it checked before, at once,
    /// whatever the round. The peer checks the new address as soon as the trickle lands,
    /// maybe between our rounds; a check that finds the new mapping not yet used toward its
    /// sender comes in unsolicited, leaves state in a NAT like Linux's that moves our next
    /// flow to that peer onto another port, and each further check of the peer's refreshes
    /// it, so no round succeeds again (NAT-NOTES). Sent now, ahead of the trickle, ours opens
    /// the mapping toward the peer first and dies before the peer's NAT.
    pub fn mapping_changed(&mut self) {
        let Some(ttl) = self.config.low_ttl else {
            return;
        };
        let base = self.config.base;
        let mut remotes: Vec<SocketAddr> = Vec::new();
        for p in &self.pairs {
            if p.local == base
                && !p.relayed
                && self.flows.contains(&p.remote)
                && !remotes.contains(&p.remote)
            {
                remotes.push(p.remote);
            }
        }
        for remote in remotes.into_iter().take(MAX_HELD) {
            if let Some((_, bytes)) = self.check_bytes(base, remote, false) {
                self.stats.checks_sent += 1;
                self.enqueue(bytes, base, remote, Some(ttl));
            }
        }
    }

    pub(super) fn spray_port(&mut self) -> Option<u16> {
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
