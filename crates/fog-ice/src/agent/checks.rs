//! The check wire (RFC 8445 §7.1, §7.2): sending checks, answering the peer's, taking the
//! answers to ours.

use super::*;

impl Agent {
    /// Sends a check on pair `i` (a first transmission or a retransmission).
    pub(super) fn check(&mut self, now: Instant, i: usize, use_candidate: bool) {
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

    pub(super) fn send_check(
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
    pub(super) fn check_bytes(
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

    pub(super) fn enqueue(
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

    pub(super) fn next_transaction(&mut self) -> TransactionId {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&self.next_random().to_le_bytes());
        bytes[8..].copy_from_slice(&(self.next_random() as u32).to_le_bytes());
        TransactionId::new(bytes)
    }

    pub(super) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.rng)
    }

    pub(super) fn handle_request(&mut self, now: Instant, packet: &Receive<'_>, bytes: &[u8]) {
        let message = match Message::decode_verified(bytes, &self.local_key) {
            Ok(message) => message,
            Err(e) => return self.count_undecoded(e),
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
        // On the relay, the peer's check that came directly to one of our sockets is a direct
        // path the peer is using, as its sealed datagrams there would be: followed the same
        // way (see `heard_from`: a check of ours, and the pair is taken when it answers,
        // whatever our role). Otherwise a controlled agent stays on the relay for good when
        // the pair is new (the peer's NAT mapped it anew and the peer, still on its own
        // selected pair, nominates nothing).
        // The same after the path was lost with nowhere to move to (see `Agent::lost`).
        let following = self.selected_is_relayed() || (self.selected.is_none() && self.lost);
        if following && !self.pairs[i].relayed {
            self.heard_from(now, packet.local, packet.source);
        }
    }

    /// Answers a check from the socket it arrived on (§7.3.1.2).
    pub(super) fn respond(&mut self, packet: &Receive<'_>, request: &Message, error: Option<u16>) {
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

    pub(super) fn handle_response(
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
        let message = match Message::decode_verified(bytes, &self.remote_key) {
            Ok(message) => message,
            Err(e) => return self.count_undecoded(e),
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
        if self.moved_to == Some(i) {
            // The peer's address moved (see `heard_from`) and the new one answers.
            self.moved_to = None;
            if self.selected.is_none() && self.lost {
                // After a lost path: the peer's path, proven both ways, whatever our role.
                self.pairs[i].nominated = true;
                return self.select(now, i);
            }
            if let Some(j) = self.selected.filter(|&j| j != i) {
                let (from, to) = (&self.pairs[j], &self.pairs[i]);
                if from.relayed || from.local == to.local {
                    let nomination = from.nomination;
                    let pair = &mut self.pairs[i];
                    pair.nominated = true;
                    pair.nomination = pair.nomination.max(nomination);
                    return self.select(now, i);
                }
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

    /// Counts a check or answer that did not decode: unauthenticated when its integrity was
    /// missing or wrong, malformed otherwise.
    fn count_undecoded(&mut self, e: DecodeError) {
        match e {
            DecodeError::IntegrityMissing | DecodeError::IntegrityMismatch => {
                self.stats.unauthenticated += 1;
            }
            _ => self.stats.malformed += 1,
        }
    }
}
