//! STUN client transactions over UDP: retransmission as RFC 5389 §7.2.1 describes it (RFC 8489
//! §6.2.1 keeps the procedure).
//!
//! A request leaves at once, then again after RTO, 2·RTO, 4·RTO, … (the interval doubles after
//! each retransmission) until `Rc` requests have gone; after the last one the client waits
//! `Rm`·RTO for an answer and then gives up. With the RFC's defaults (RTO 500 ms, Rc 7, Rm 16)
//! requests leave at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and the transaction times out at
//! 39.5 s, the RFC's own example.
//!
//! [`Transactions`] is a table, not a [`SansIo`](fog_core::SansIo) machine of its own: its owner
//! (the discovery machine, later ICE) encodes a request, [`start`](Transactions::start)s it,
//! drains [`poll_transmit`](Transactions::poll_transmit) in its own `poll_transmit`, feeds
//! `handle_timeout` through, and ends a transaction with [`complete`](Transactions::complete) when
//! an answer it accepts arrives. The table matches nothing by itself: the owner decodes the answer,
//! looks its transaction ID up and checks where it came from (an answer from the wrong address
//! must not stop the retransmissions). Transactions that end without an answer come out of
//! [`poll_outcome`](Transactions::poll_outcome).
//!
//! Each retransmission is scheduled from the instant the previous request was handed to the
//! driver (the `now` of `poll_transmit`), so a driver that wakes late delays the following
//! requests rather than bunching them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::Transmit;

use crate::wire::TransactionId;

/// The RFC's recommended initial RTO (RFC 5389 §7.2.1: "SHOULD be greater than 500 ms").
pub const DEFAULT_INITIAL_RTO: Duration = Duration::from_millis(500);
/// `Rc`, requests sent in all (RFC 5389 §7.2.1).
pub const DEFAULT_MAX_REQUESTS: u32 = 7;
/// `Rm`, RTOs waited after the last request (RFC 5389 §7.2.1).
pub const DEFAULT_FINAL_WAIT_RTOS: u32 = 16;

/// Largest `Rc` [`Transactions::new`] accepts: the doubled RTO must stay representable as an
/// `Instant` offset.
pub const MAX_MAX_REQUESTS: u32 = 32;
/// Largest initial RTO [`Transactions::new`] accepts.
pub const MAX_INITIAL_RTO: Duration = Duration::from_secs(3600);
/// Largest `Rm` [`Transactions::new`] accepts.
pub const MAX_FINAL_WAIT_RTOS: u32 = 1000;

/// Retransmission parameters (RFC 5389 §7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// The first retransmission interval; it doubles after each retransmission. The RFC wants
    /// more than 500 ms unless another mechanism bounds the load, and allows an RTT estimate
    /// from earlier transactions to replace it.
    pub initial_rto: Duration,
    /// Requests sent in all, the first included (`Rc`, default 7).
    pub max_requests: u32,
    /// After the last request, wait this many initial RTOs for an answer (`Rm`, default 16).
    pub final_wait_rtos: u32,
}

impl Default for RetransmitConfig {
    /// The RFC's values: RTO 500 ms, Rc 7, Rm 16.
    fn default() -> Self {
        Self {
            initial_rto: DEFAULT_INITIAL_RTO,
            max_requests: DEFAULT_MAX_REQUESTS,
            final_wait_rtos: DEFAULT_FINAL_WAIT_RTOS,
        }
    }
}

impl RetransmitConfig {
    /// How long a transaction that never gets an answer lives, from its first request to its
    /// timeout (39.5 s for the defaults), if the driver is punctual.
    pub fn timeout(&self) -> Duration {
        let doublings = self.max_requests.saturating_sub(1).min(31);
        // RTO · (1 + 2 + … + 2^(Rc−2)) = RTO · (2^(Rc−1) − 1), then Rm · RTO.
        let sending = self
            .initial_rto
            .saturating_mul((1u32 << doublings).saturating_sub(1));
        sending.saturating_add(self.initial_rto.saturating_mul(self.final_wait_rtos))
    }
}

/// How a transaction ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No answer came in time: `Rc` requests went and `Rm`·RTO passed after the last one.
    TimedOut,
    /// The request did not fit in the buffer given to `poll_transmit`, so it was never sent
    /// (never truncated).
    BufferTooSmall {
        /// The request's length.
        needed: usize,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    request: Vec<u8>,
    destination: SocketAddr,
    source: Option<SocketAddr>,
    /// Requests sent so far.
    sent: u32,
    /// The interval before the next retransmission.
    rto: Duration,
    /// When the next request goes out or, once all have gone, when the transaction times out.
    /// Meaningless while `due`.
    next: Instant,
    /// A request is waiting for `poll_transmit`.
    due: bool,
}

/// Outstanding client transactions, kept in ID order so that output is deterministic.
#[derive(Debug, Clone, Default)]
pub struct Transactions {
    config: RetransmitConfig,
    pending: BTreeMap<TransactionId, Pending>,
    ended: VecDeque<(TransactionId, Outcome)>,
}

impl Transactions {
    /// An empty table with the given retransmission parameters.
    ///
    /// # Panics
    ///
    /// If `initial_rto` is zero or above [`MAX_INITIAL_RTO`], `max_requests` is zero or above
    /// [`MAX_MAX_REQUESTS`], or `final_wait_rtos` is above [`MAX_FINAL_WAIT_RTOS`].
    pub fn new(config: RetransmitConfig) -> Self {
        assert!(
            !config.initial_rto.is_zero() && config.initial_rto <= MAX_INITIAL_RTO,
            "initial RTO must be in (0, 1 h]"
        );
        assert!(
            (1..=MAX_MAX_REQUESTS).contains(&config.max_requests),
            "Rc must be in 1..=32"
        );
        assert!(
            config.final_wait_rtos <= MAX_FINAL_WAIT_RTOS,
            "Rm must be at most 1000"
        );
        Self {
            config,
            pending: BTreeMap::new(),
            ended: VecDeque::new(),
        }
    }

    /// The retransmission parameters.
    pub fn config(&self) -> &RetransmitConfig {
        &self.config
    }

    /// Starts a transaction: `request` (an encoded STUN request whose ID is `id`) is sent to
    /// `destination` from `source` at the next [`poll_transmit`](Self::poll_transmit), and
    /// again as RFC 5389 §7.2.1 says until [`complete`](Self::complete) ends it.
    ///
    /// `now` is not needed to schedule the first request (it leaves at the next drain); it is
    /// taken so that every input of the table carries the time, as the driving contract wants.
    ///
    /// # Panics
    ///
    /// If a transaction with this ID is outstanding (IDs come from the caller's RNG; RFC 5389 §6
    /// wants them unique).
    pub fn start(
        &mut self,
        now: Instant,
        id: TransactionId,
        request: Vec<u8>,
        destination: SocketAddr,
        source: Option<SocketAddr>,
    ) {
        let previous = self.pending.insert(
            id,
            Pending {
                request,
                destination,
                source,
                sent: 0,
                rto: self.config.initial_rto,
                next: now,
                due: true,
            },
        );
        assert!(
            previous.is_none(),
            "transaction {id:?} is already outstanding"
        );
    }

    /// Ends transaction `id` because the owner accepted an answer (or gave up on it), and returns
    /// how many requests it had sent; `None` if it was not outstanding (a late, duplicate or
    /// forged answer).
    pub fn complete(&mut self, id: &TransactionId) -> Option<u32> {
        self.pending.remove(id).map(|p| p.sent)
    }

    /// Whether `id` is outstanding.
    pub fn is_pending(&self, id: &TransactionId) -> bool {
        self.pending.contains_key(id)
    }

    /// Outstanding transactions.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Fires the retransmissions and timeouts due at `now`. Early or repeated calls find
    /// nothing due and change nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max_requests = self.config.max_requests;
        let mut expired = Vec::new();
        for (id, p) in &mut self.pending {
            if p.due || p.next > now {
                continue;
            }
            if p.sent >= max_requests {
                expired.push(*id);
            } else {
                p.due = true;
            }
        }
        for id in expired {
            self.pending.remove(&id);
            self.ended.push_back((id, Outcome::TimedOut));
        }
    }

    /// Writes the next request that is due (a first request or a retransmission) into `buf`.
    ///
    /// A request longer than `buf` ends its transaction with [`Outcome::BufferTooSmall`]
    /// instead of going out truncated.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let config = self.config;
        loop {
            let (&id, p) = self.pending.iter_mut().find(|(_, p)| p.due)?;
            let len = p.request.len();
            let Some(out) = buf.get_mut(..len) else {
                self.pending.remove(&id);
                self.ended
                    .push_back((id, Outcome::BufferTooSmall { needed: len }));
                continue;
            };
            out.copy_from_slice(&p.request);
            p.due = false;
            p.sent += 1;
            p.next = if p.sent >= config.max_requests {
                // RFC 5389 §7.2.1: "a duration equal to Rm times the RTO", the initial RTO, as
                // its example (31.5 s + 16 · 0.5 s = 39.5 s) shows.
                now + config.initial_rto.saturating_mul(config.final_wait_rtos)
            } else {
                now + p.rto
            };
            p.rto = p.rto.saturating_mul(2);
            let transmit = Transmit::new(p.destination, len);
            return Some(match p.source {
                Some(source) => transmit.from_source(source),
                None => transmit,
            });
        }
    }

    /// The next transaction that ended without an answer, oldest first.
    pub fn poll_outcome(&mut self) -> Option<(TransactionId, Outcome)> {
        self.ended.pop_front()
    }

    /// When a retransmission or a timeout is next due. Requests already due are not counted:
    /// the owner drains `poll_transmit` before it reads this.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| !p.due)
            .map(|p| p.next)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "198.51.100.1:3478".parse().unwrap()
    }

    fn id(n: u8) -> TransactionId {
        TransactionId::new([n; 12])
    }

    fn epoch() -> Instant {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        Instant::now()
    }

    /// Drives a lone transaction to its end and returns the send times (ms after start) and the
    /// timeout time.
    fn timeline(config: RetransmitConfig) -> (Vec<u128>, u128) {
        let start = epoch();
        let mut t = Transactions::new(config);
        t.start(start, id(1), vec![0; 20], addr(), None);
        let mut buf = [0u8; 64];
        let mut sends = Vec::new();
        let mut now = start;
        loop {
            while let Some(tx) = t.poll_transmit(now, &mut buf) {
                assert_eq!((tx.destination, tx.len), (addr(), 20));
                sends.push(now.duration_since(start).as_millis());
            }
            if let Some((ended, outcome)) = t.poll_outcome() {
                assert_eq!((ended, outcome), (id(1), Outcome::TimedOut));
                assert!(t.is_empty());
                assert_eq!(t.poll_timeout(), None);
                return (sends, now.duration_since(start).as_millis());
            }
            now = t.poll_timeout().expect("a deadline while pending");
            t.handle_timeout(now);
        }
    }

    #[test]
    fn rfc5389_example_timeline() {
        // RFC 5389 §7.2.1: sends at 0, 500, 1500, 3500, 7500, 15500, 31500 ms; timeout at 39500 ms.
        let (sends, timeout) = timeline(RetransmitConfig::default());
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(timeout, 39500);
        assert_eq!(
            RetransmitConfig::default().timeout(),
            Duration::from_millis(39500)
        );
    }

    #[test]
    fn shorter_config() {
        let config = RetransmitConfig {
            initial_rto: Duration::from_millis(100),
            max_requests: 3,
            final_wait_rtos: 4,
        };
        let (sends, timeout) = timeline(config);
        assert_eq!(sends, [0, 100, 300]);
        assert_eq!(timeout, 700);
        assert_eq!(config.timeout(), Duration::from_millis(700));
    }

    #[test]
    fn a_single_request_waits_rm_rtos() {
        let config = RetransmitConfig {
            initial_rto: Duration::from_millis(250),
            max_requests: 1,
            final_wait_rtos: 4,
        };
        assert_eq!(timeline(config), (vec![0], 1000));
        assert_eq!(config.timeout(), Duration::from_millis(1000));
    }

    #[test]
    fn early_and_repeated_timeouts_change_nothing() {
        let start = epoch();
        let mut t = Transactions::new(RetransmitConfig::default());
        t.start(start, id(1), vec![1; 20], addr(), None);
        let mut buf = [0u8; 64];
        assert!(t.poll_transmit(start, &mut buf).is_some());
        let due = t.poll_timeout().unwrap();
        assert_eq!(due, start + Duration::from_millis(500));
        t.handle_timeout(due - Duration::from_millis(1));
        t.handle_timeout(start);
        assert!(t.poll_transmit(start, &mut buf).is_none());
        assert_eq!(t.poll_timeout(), Some(due));
        t.handle_timeout(due);
        t.handle_timeout(due);
        assert!(t.poll_transmit(due, &mut buf).is_some());
        assert!(
            t.poll_transmit(due, &mut buf).is_none(),
            "one retransmission"
        );
        assert_eq!(t.poll_timeout(), Some(due + Duration::from_millis(1000)));
    }

    #[test]
    fn a_late_driver_delays_the_following_requests() {
        let start = epoch();
        let mut t = Transactions::new(RetransmitConfig::default());
        t.start(start, id(1), vec![1; 20], addr(), None);
        let mut buf = [0u8; 64];
        t.poll_transmit(start, &mut buf).unwrap();
        // The driver wakes 300 ms after the first retransmission was due.
        let late = start + Duration::from_millis(800);
        t.handle_timeout(late);
        t.poll_transmit(late, &mut buf).unwrap();
        assert_eq!(t.poll_timeout(), Some(late + Duration::from_millis(1000)));
    }

    #[test]
    fn answered_transactions_stop_and_stray_answers_are_told_apart() {
        let start = epoch();
        let mut t = Transactions::new(RetransmitConfig::default());
        t.start(start, id(1), vec![1; 20], addr(), None);
        let source: SocketAddr = "0.0.0.0:40000".parse().unwrap();
        t.start(start, id(2), vec![2; 20], addr(), Some(source));
        assert_eq!(t.len(), 2);
        let mut buf = [0u8; 64];
        let first = t.poll_transmit(start, &mut buf).unwrap();
        assert_eq!((first.source, buf[0]), (None, 1), "ID order");
        let second = t.poll_transmit(start, &mut buf).unwrap();
        assert_eq!((second.source, buf[0]), (Some(source), 2));
        assert!(t.poll_transmit(start, &mut buf).is_none());
        assert_eq!(t.complete(&id(1)), Some(1), "one request had gone");
        assert_eq!(
            t.complete(&id(1)),
            None,
            "a duplicate answer is no completion"
        );
        assert_eq!(t.complete(&id(9)), None, "an unknown ID is no completion");
        assert!(!t.is_pending(&id(1)) && t.is_pending(&id(2)));
        let next = t.poll_timeout().unwrap();
        t.handle_timeout(next);
        assert_eq!(
            t.poll_transmit(next, &mut buf).map(|_| buf[0]),
            Some(2),
            "only the outstanding one retransmits"
        );
        assert!(t.poll_transmit(next, &mut buf).is_none());
        assert_eq!(t.complete(&id(2)), Some(2));
        assert!(t.is_empty());
        assert_eq!(
            t.poll_outcome(),
            None,
            "answered transactions have no outcome"
        );
    }

    #[test]
    fn a_request_larger_than_the_buffer_is_not_truncated() {
        let start = epoch();
        let mut t = Transactions::new(RetransmitConfig::default());
        t.start(start, id(1), vec![0; 100], addr(), None);
        t.start(start, id(2), vec![0; 20], addr(), None);
        let mut small = [0u8; 50];
        let sent = t.poll_transmit(start, &mut small).unwrap();
        assert_eq!(sent.len, 20, "the one that fits still goes");
        assert_eq!(
            t.poll_outcome(),
            Some((id(1), Outcome::BufferTooSmall { needed: 100 }))
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    #[should_panic(expected = "already outstanding")]
    fn duplicate_ids_are_a_caller_bug() {
        let start = epoch();
        let mut t = Transactions::new(RetransmitConfig::default());
        t.start(start, id(1), vec![0; 20], addr(), None);
        t.start(start, id(1), vec![0; 20], addr(), None);
    }

    #[test]
    #[should_panic(expected = "Rc must be")]
    fn zero_requests_is_refused() {
        Transactions::new(RetransmitConfig {
            max_requests: 0,
            ..RetransmitConfig::default()
        });
    }
}
