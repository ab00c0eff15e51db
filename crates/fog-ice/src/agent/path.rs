//! Path choice: nomination (RFC 8445 §8), switching to a clearly nearer path, consent
//! freshness (RFC 7675) and what happens when the selected path goes.

use super::*;

impl Agent {
    /// Sends a nomination (USE-CANDIDATE) on pair `i`, retransmitted until answered (see
    /// handle_timeout).
    pub(super) fn nominate(&mut self, now: Instant, i: usize) {
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
    pub(super) fn maybe_switch(&mut self, now: Instant) {
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
    pub(super) fn fresh(&self, p: &Pair, now: Instant) -> bool {
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
    pub(super) fn consider(&mut self, now: Instant, i: usize) {
        // Called on fresh evidence that the pair works both ways: it answered our check just
        // now, or the peer's nominating check came in on a pair that answered before. Its
        // consent runs from here (the controlled side may not have checked it for a while:
        // starting from its older answer, a path the peer moved to for good was dropped at
        // once, and the two sides ended on different paths).
        let fresh = |agent: &mut Agent| agent.pairs[i].last_answer = Some(now);
        let Some(j) = self.selected else {
            fresh(self);
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
            fresh(self);
            self.select(now, i);
        }
    }

    pub(super) fn select(&mut self, now: Instant, i: usize) {
        self.selected = Some(i);
        let was_lost = std::mem::replace(&mut self.lost, false);
        if was_lost && self.pairs[i].relayed && self.repunch_at.is_none() {
            // Back on the relay after the path was lost, which stopped the rounds of
            // punching (see `lose_selected`): they resume, as after a round that gave up.
            // Otherwise the connection stayed on the relay for good, on both sides, once each
            // had lost its relay path for a consent timeout (found by the chaos run, seed
            // 4197: links losing 15 %, a route between the sites down for five minutes).
            self.punch_over = true;
            self.repunch_at = Some(now + REPUNCH_INTERVAL);
            self.next_hold = Some(now + HOLD_INTERVAL);
        }
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
        // Falling back to a pair is no answer on it: its consent runs from its last real
        // answer (see `consider` for a choice the peer just confirmed; should a pair have
        // none, its consent runs from here). Counting every choice as an answer gave a silent
        // pair another consent timeout each time it was taken, and two dead relay pairs took
        // turns for a minute and more.
        self.pairs[i].last_answer.get_or_insert(now);
        self.next_consent = Some(now + self.consent_gap());
        self.next_keepalives = Some(now + self.consent_gap());
    }

    /// Consent freshness (RFC 7675) on the selected path and on the backup relay path. A
    /// selected direct path that loses consent falls back to the backup; a selected path with
    /// no backup is lost.
    pub(super) fn consent(&mut self, now: Instant) {
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
    pub(super) fn lose_selected(&mut self, now: Instant, dead: bool) {
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
        self.lost = true;
        // With no relay to fall back to, punching does not start over by itself: the owner
        // decides (a new session with fresh candidates).
        self.punch_over = true;
        self.repunch_at = None;
    }

    /// Suspicion of the selected direct path: consent checks go at once, two at a time, in
    /// `SUSPECT_ROUNDS` rounds `SUSPECT_WAIT` (or four round trips) apart (RFC 7675 §5.1
    /// sets 30 s as the bound for declaring a path dead, not a wait before trying another);
    /// if none is answered and nothing else came from the peer on the path (see
    /// [`heard_from`](Self::heard_from)), the connection moves to another working direct
    /// path, else to a relay pair, whichever answered the checks sent alongside (an answer
    /// from before the suspicion proves nothing: the same fault may have taken every direct
    /// path). Without anywhere to move, it stays. Six
    /// checks in all: on a link that loses a third of the round trips, all six are lost
    /// about once in a thousand suspicions.
    ///
    /// For an owner that saw the path stop carrying traffic: a NAT that forgot our flows may
    /// have mapped them anew, or kept state for the peer's datagrams that now moves our port
    /// toward it (NAT-NOTES), and the peer's may have done the same; the old path does not
    /// come back, and the relay carries the connection while new rounds find the new one.
    pub fn suspect(&mut self, now: Instant) {
        let Some(i) = self.selected else { return };
        if self.pairs[i].relayed || self.suspect.is_some() {
            return;
        }
        self.suspect = Some(Suspicion {
            since: now,
            next_at: now,
            rounds: SUSPECT_ROUNDS,
        });
        self.suspicion_over(now);
    }

    /// The next round of checks of a suspected path, or after the last, the verdict (see
    /// [`suspect`](Self::suspect)).
    pub(super) fn suspicion_over(&mut self, now: Instant) {
        let Some(suspicion) = self.suspect.take() else {
            return;
        };
        let Some(i) = self.selected else { return };
        let answered = self.pairs[i]
            .last_answer
            .is_some_and(|t| t >= suspicion.since);
        if self.pairs[i].relayed || answered {
            return;
        }
        if suspicion.rounds > 0 {
            let (local, remote) = (self.pairs[i].local, self.pairs[i].remote);
            for _ in 0..2 {
                self.send_check(now, local, remote, false, false);
            }
            // The places to move to are checked alongside: the relay pairs (a relay
            // allocation may have gone with the same NAT state, and a new one's pairs are
            // not retransmitted while a direct path is selected: only one that answers now
            // is taken), the newest first.
            let relays: Vec<(SocketAddr, SocketAddr)> = self
                .pairs
                .iter()
                .rev()
                .filter(|p| p.relayed && self.is_local(p.local))
                .map(|p| (p.local, p.remote))
                .take(MAX_SUSPECT_RELAYS)
                .collect();
            // So are the other working direct paths: the verdict moves only to one that
            // answered since the suspicion began (one that answered only before may have died
            // with this one: a route between the sites gone, both NATs' state lost).
            let alternates: Vec<(SocketAddr, SocketAddr)> = self
                .pairs
                .iter()
                .enumerate()
                .filter(|&(a, p)| {
                    a != i && p.state == State::Succeeded && !p.relayed && self.fresh(p, now)
                })
                .map(|(_, p)| (p.local, p.remote))
                .take(MAX_ALTERNATES)
                .collect();
            for (local, remote) in relays.into_iter().chain(alternates) {
                self.send_check(now, local, remote, false, false);
            }
            let rtt = self.pairs[i].srtt.unwrap_or_default();
            self.suspect = Some(Suspicion {
                next_at: now + SUSPECT_WAIT.max(rtt * 4),
                rounds: suspicion.rounds - 1,
                ..suspicion
            });
            return;
        }
        let since = suspicion.since;
        // Another direct path, only if it answered since the suspicion began: moving to one
        // whose last answer is older (merely "fresh") went back and forth between two dead
        // direct paths, each suspected in turn, for as long as they stayed fresh, while the
        // relay was there (found by the chaos run, seeds 65 and 662: a route between two
        // sites down for 30 s and more, the streams stalled and gave up).
        let alternate = self
            .pairs
            .iter()
            .enumerate()
            .filter(|&(a, p)| a != i && p.state == State::Succeeded && !p.relayed)
            .filter(|(_, p)| p.last_answer.is_some_and(|t| t >= since))
            .min_by_key(|(_, p)| {
                (
                    p.srtt.unwrap_or(Duration::MAX),
                    std::cmp::Reverse(p.priority),
                )
            })
            .map(|(a, _)| a);
        let relay = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.relayed && p.state == State::Succeeded)
            .filter(|(_, p)| p.last_answer.is_some_and(|t| t >= since))
            .max_by_key(|(_, p)| (p.nominated, p.priority))
            .map(|(b, _)| b);
        if let Some(a) = alternate {
            // As `lose_selected` does for a silent path: it stays a working path.
            self.selected = None;
            self.next_consent = None;
            self.switch_to = None;
            self.select(now, a);
        } else if let Some(b) = relay {
            // As `lose_selected` does for its backup, to the relay pair that answered.
            self.selected = None;
            self.next_consent = None;
            self.switch_to = None;
            self.select(now, b);
            self.punch_over = true;
        } else {
            // Nowhere to go yet (the relay allocations may have gone with the NAT state and
            // be made again): the suspicion goes on, a round a second, until the path
            // answers, a relay pair does, or consent gives up on the path.
            self.suspect = Some(Suspicion {
                next_at: now + SUSPECT_AGAIN,
                rounds: 1,
                ..suspicion
            });
            return;
        }
        if self.selected.is_some_and(|j| self.pairs[j].relayed) {
            // On the relay: the next round waits until state our NAT and the peer's kept for
            // datagrams that came in unasked (the broken path's last ones) has expired
            // (NAT-NOTES); every check to the old addresses before then would refresh it and
            // fail again. No holds meanwhile: they would keep our side's stale flow alive.
            // Addresses either side learns sooner (a trickled mapping, the peer's traffic
            // arriving directly, see `heard_from`) are checked at once all the same.
            self.repunch_at = Some(now + STALE_STATE_WAIT);
            self.next_hold = None;
        }
    }

    /// The best working relay pair other than the selected one: where to fall back to.
    pub(super) fn backup(&self) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(i, p)| Some(*i) != self.selected && p.relayed && p.state == State::Succeeded)
            .max_by_key(|(_, p)| (p.nominated, p.priority))
            .map(|(i, _)| i)
    }

    /// The consent interval with ±20 % jitter (RFC 7675 §5.1).
    pub(super) fn consent_gap(&mut self) -> Duration {
        let base = self.config.consent_interval;
        let jitter = (self.next_random() % 401) as u32; // 0..=400 per mille of 20 % either way
        base * (800 + jitter) / 1000
    }
}
