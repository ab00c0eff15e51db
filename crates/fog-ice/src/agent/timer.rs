//! The agent's deadlines in one table: each [`Timer`] says when it is next due, from the
//! agent's state, and that one answer serves both [`poll_timeout`](fog_core::SansIo::poll_timeout)
//! (their minimum) and [`handle_timeout`](fog_core::SansIo::handle_timeout) (which fires every
//! timer that is due, in the enum's order). quinn-proto's `connection/timer.rs` is the model;
//! here the instants live in the state they belong to (a pair's retransmission in the pair),
//! and [`Agent::armed`] is the one place that says which of them count now.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Agent, Event, HOLD_INTERVAL, REPUNCH_INTERVAL, State};

/// Why the agent wants to be woken. Timers that are due together fire in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The agreed punch instant: the first burst of checks (and a birthday round).
    Begin,
    /// The round of punching is over.
    PunchDeadline,
    /// Another round of punching, while the relay carries the connection.
    Repunch,
    /// Our NAT's flows toward the peer are held open between rounds.
    Hold,
    /// Relay pairs are no longer tried.
    RelayDeadline,
    /// A nomination's retransmission (per pair).
    Nomination,
    /// A late pair's own round ends (per pair).
    LateRoundEnd,
    /// A check's retransmission (per pair).
    Retransmit,
    /// The next waiting pair gets its first check.
    Pace,
    /// The next birthday probe.
    Spray,
    /// The verdict on a selected direct path the owner suspected (see `Agent::suspect`).
    Suspect,
    /// Consent freshness, keepalives and the backup relay's check.
    Consent,
}

impl Timer {
    /// Every timer, in firing order.
    pub(super) const ALL: [Timer; 12] = [
        Timer::Begin,
        Timer::PunchDeadline,
        Timer::Repunch,
        Timer::Hold,
        Timer::RelayDeadline,
        Timer::Nomination,
        Timer::LateRoundEnd,
        Timer::Retransmit,
        Timer::Pace,
        Timer::Spray,
        Timer::Suspect,
        Timer::Consent,
    ];
}

impl Agent {
    /// When `timer` is next due, or `None` if it is not armed. Before the punch instant only
    /// [`Timer::Begin`] is.
    pub(super) fn armed(&self, timer: Timer) -> Option<Instant> {
        let start = self.start_at?;
        if timer == Timer::Begin {
            return self.deadline.is_none().then_some(start);
        }
        self.deadline?;
        let punching = !self.punch_over && !self.direct_selected();
        let between_rounds = self.punch_over && !self.direct_selected();
        match timer {
            Timer::Begin => None,
            Timer::PunchDeadline => self.deadline.filter(|_| punching),
            Timer::Repunch => self.repunch_at.filter(|_| between_rounds),
            Timer::Hold => self
                .next_hold
                .filter(|_| between_rounds && self.repunch_at.is_some()),
            Timer::RelayDeadline => self.relay_deadline.filter(|_| !self.relay_over),
            Timer::Nomination => self
                .pairs
                .iter()
                .filter(|p| p.nominating > 0)
                .filter_map(|p| p.next_at)
                .min(),
            Timer::LateRoundEnd => self.pairs.iter().filter_map(|p| p.until).min(),
            Timer::Retransmit => self
                .pairs
                .iter()
                .filter(|p| self.retransmits(p))
                .filter_map(|p| p.next_at)
                .min(),
            Timer::Pace => self
                .next_pace
                .filter(|_| self.pairs.iter().any(|p| self.eligible(p))),
            Timer::Spray => self
                .spray
                .as_ref()
                .filter(|s| punching && s.remaining > 0)
                .map(|s| s.next_at),
            Timer::Suspect => self.suspect.map(|s| s.next_at),
            Timer::Consent => {
                let selected = self.selected.zip(self.next_consent).map(|(i, at)| {
                    let lapse = self.pairs[i]
                        .last_answer
                        .map(|t| t + self.config.consent_timeout);
                    [Some(at), self.next_keepalives, lapse]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(at)
                });
                // A backup with no check scheduled yet (it just became one) is due at once. A
                // backup's lapse is noticed at its next check (at most one interval late): the
                // pair that is the backup can change between two timeouts, and an earlier
                // one's lapse must not become a wake-up in the past.
                let backup = self
                    .backup()
                    .and_then(|_| self.next_backup_consent.or(self.now));
                selected.into_iter().chain(backup).min()
            }
        }
    }

    /// Does what `timer` is for, at `now`.
    pub(super) fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Begin => self.begin(now),
            Timer::PunchDeadline => self.end_round(now),
            Timer::Repunch => self.repunch(now),
            Timer::Hold => self.hold(now),
            Timer::RelayDeadline => {
                self.relay_over = true;
                for pair in &mut self.pairs {
                    if pair.relayed && matches!(pair.state, State::InProgress | State::Waiting) {
                        pair.state = State::Failed;
                        pair.next_at = None;
                    }
                }
            }
            // Nominations go on until answered, also after the punch deadline.
            Timer::Nomination => {
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
            }
            // Pairs found late get their own round; it ends like the main one.
            Timer::LateRoundEnd => {
                for pair in &mut self.pairs {
                    if pair.until.is_some_and(|t| now >= t) {
                        pair.until = None;
                        if matches!(pair.state, State::InProgress | State::Waiting) {
                            pair.state = State::Failed;
                            pair.next_at = None;
                        }
                    }
                }
            }
            // Direct pairs while punching, relay pairs until the relay deadline.
            Timer::Retransmit => {
                for i in 0..self.pairs.len() {
                    let p = &self.pairs[i];
                    if self.retransmits(p) && p.next_at.is_some_and(|t| now >= t) {
                        self.check(now, i, false);
                    }
                }
            }
            // One new check per pace interval, highest priority first.
            Timer::Pace => {
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
            Timer::Spray => {
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
            Timer::Suspect => self.suspicion_over(now),
            Timer::Consent => self.consent(now),
        }
    }

    /// The round of punching is over: unanswered direct checks fail, and without a working
    /// direct path the agent gives up for now and schedules the next round.
    fn end_round(&mut self, now: Instant) {
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
        // A birthday round's sockets that found nothing are done with: the next rounds check
        // only the ordinary pairs (a birthday round costs too much to repeat blindly), so the
        // sockets go back (`Agent::take_released`), and their pairs are no longer ours.
        let working: Vec<SocketAddr> = self
            .pairs
            .iter()
            .filter(|p| p.state == State::Succeeded)
            .map(|p| p.local)
            .collect();
        let (kept, released): (Vec<SocketAddr>, Vec<SocketAddr>) =
            self.open_sockets.iter().partition(|s| working.contains(s));
        self.open_sockets = kept;
        // Nothing more leaves from them, not even what was queued before the round ended.
        self.queue.retain(|q| !released.contains(&q.source));
        self.released.extend(released);
    }
}
