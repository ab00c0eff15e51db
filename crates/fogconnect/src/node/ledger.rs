//! The probe ledger: how much the node's agents may send to an IP that has not answered.
//!
//! A peer's signed candidates are only its claims. A hostile peer can name a third party's
//! address as its server-reflexive candidate and claim a NAT behaviour that makes our plan
//! spray that IP (a birthday round) or check it again every punching round for as long as the
//! session lives, and it can open session after session to do it again. So every datagram an
//! agent sends (checks, birthday probes, holds, consent) toward an IP is counted here, across
//! all sessions, and once an IP has had [`NodeConfig::probe_budget`] of them within a
//! [`WINDOW`] without answering, the rest of the window's are withheld and counted
//! ([`Counters::probes_withheld`]). An IP answers by returning a check of ours with its
//! transaction ID (the agent's `Validated`), which a third party that never saw the check
//! cannot do; from then on it is not metered for a window after its latest answer.
//!
//! The default budget is one birthday round (two datagrams a probe: the low-TTL copy that opens
//! our NAT, then the check) plus room for the ordinary checks of a round, so one honest
//! birthday round toward a peer that never answers is never cut short, and a victim gets at
//! most one round's worth per window however many sessions ask for it. Low-TTL copies count
//! too: they die past a NAT or two, but a LAN neighbour is closer than that.
//!
//! What this costs an honest session: a connection whose direct path never works keeps
//! punching while on the relay (a round every 20 s, with holds between); toward a peer IP that
//! never answered a check, those rounds stop once the budget is spent and resume when the
//! window turns. A path through our own relay that answers proves the peer's IP.
//!
//! [`NodeConfig::probe_budget`]: super::NodeConfig::probe_budget
//! [`Counters::probes_withheld`]: super::Counters::probes_withheld

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long an IP's count runs before it starts again, and how long an answer exempts it.
pub(super) const WINDOW: Duration = Duration::from_secs(600);
/// IPs tracked at once. Past it (after dropping the entries whose window has run out), a new
/// IP gets nothing until room is made: refusing keeps every victim's count, where evicting
/// would let a peer that names enough addresses wipe one.
pub(super) const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the current window.
    since: Instant,
    /// Datagrams sent in it without an answer.
    sent: u32,
    /// Exempt until then: it answered.
    proven_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct ProbeLedger {
    entries: BTreeMap<IpAddr, Entry>,
}

impl ProbeLedger {
    /// Whether one more datagram may go to `ip` under `budget`; counts it when it may.
    pub(super) fn allow(&mut self, now: Instant, ip: IpAddr, budget: u32) -> bool {
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_ENTRIES {
            self.prune(now);
            if self.entries.len() >= MAX_ENTRIES {
                return false;
            }
        }
        let entry = self.entries.entry(ip).or_insert(Entry {
            since: now,
            sent: 0,
            proven_until: None,
        });
        if entry.proven_until.is_some_and(|t| now < t) {
            return true;
        }
        if now.saturating_duration_since(entry.since) >= WINDOW {
            *entry = Entry {
                since: now,
                sent: 0,
                proven_until: None,
            };
        }
        if entry.sent >= budget {
            return false;
        }
        entry.sent += 1;
        true
    }

    /// `ip` answered one of our checks: not metered for a window from now.
    pub(super) fn answered(&mut self, now: Instant, ip: IpAddr) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_ENTRIES {
            self.prune(now);
        }
        self.entries.insert(
            ip,
            Entry {
                since: now,
                sent: 0,
                proven_until: Some(now + WINDOW),
            },
        );
    }

    /// IPs tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries that would start afresh anyway.
    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.since) < WINDOW
                || e.proven_until.is_some_and(|t| now < t)
        });
    }
}

#[cfg(test)]
mod tests {
    // The tests' epoch is the one clock reading they make.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn an_ip_gets_its_budget_per_window_until_it_answers() {
        let t0 = Instant::now();
        let mut ledger = ProbeLedger::default();
        let sent = (0..10).filter(|_| ledger.allow(t0, ip(1), 4)).count();
        assert_eq!(sent, 4);
        // Another IP has a budget of its own.
        assert!(ledger.allow(t0, ip(2), 4));
        // Still refused just before the window ends, and a fresh budget after.
        assert!(!ledger.allow(t0 + WINDOW - Duration::from_secs(1), ip(1), 4));
        assert!(ledger.allow(t0 + WINDOW, ip(1), 4));
        // An answer lifts the meter for a window.
        ledger.answered(t0 + WINDOW, ip(1));
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert_eq!(
            (0..100).filter(|_| ledger.allow(later, ip(1), 4)).count(),
            100
        );
        let after = t0 + 2 * WINDOW + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| ledger.allow(after, ip(1), 4)).count(), 4);
    }

    #[test]
    fn a_full_ledger_refuses_new_ips_and_keeps_counts() {
        let t0 = Instant::now();
        let mut ledger = ProbeLedger::default();
        while ledger.allow(t0, ip(0), 3) {}
        for n in 1..MAX_ENTRIES as u32 {
            assert!(ledger.allow(t0, ip(n), 3));
        }
        assert_eq!(ledger.len(), MAX_ENTRIES);
        // Full: a new IP is refused, and the exhausted one stays exhausted.
        assert!(!ledger.allow(t0, ip(u32::MAX), 3));
        assert!(!ledger.allow(t0, ip(0), 3));
        // Once the window has run out, the stale entries make room.
        assert!(ledger.allow(t0 + WINDOW, ip(u32::MAX), 3));
        assert_eq!(ledger.len(), 1);
    }
}
