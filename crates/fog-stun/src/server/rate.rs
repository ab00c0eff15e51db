//! The per-source rate limit: one token bucket per source IP (per /64 for IPv6), kept as a
//! generic cell rate algorithm (GCRA) so that a bucket is a single `Instant`.
//!
//! A bucket is its "theoretical arrival time" (TAT): a request at `now` conforms if
//! `TAT <= now + tolerance`, and then moves the TAT to `max(TAT, now) + interval`. With
//! `interval = 1 s / per_second` and `tolerance = (burst - 1) * interval` this is exactly a token
//! bucket of `burst` tokens refilled at `per_second`. A bucket whose TAT has passed is full, and
//! indistinguishable from no bucket at all, which is what makes eviction lossless.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The per-source rate limit of the [`Server`](super::Server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per source.
    pub per_second: u32,
    /// Requests a source may send at once after being quiet.
    pub burst: u32,
    /// Sources tracked at once; bounds the table's memory.
    pub max_sources: usize,
}

impl Default for RateLimit {
    /// 20 requests/s with a burst of 40 per source, 16,384 sources.
    ///
    /// RFC 5780 §5 tells clients to start at most 10 transactions per second; with RFC 5389
    /// §7.2.1 retransmissions a full discovery run stays well inside 20/s and 40 at once. 16,384
    /// sources cost about 1.5 MB.
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 40,
            max_sources: 16_384,
        }
    }
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the source's budget.
    Allowed,
    /// Over the source's budget.
    Limited,
    /// A new source, and every tracked source is still active: refused rather than evicting a
    /// source mid-burst, which would hand it a fresh burst.
    TableFull,
}

/// One token bucket per source IP (per /64 for IPv6), each a single GCRA `Instant`, with at most
/// [`RateLimit::max_sources`] tracked. Public so that other servers on top of STUN (TURN) limit
/// strangers the same way.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    max_sources: usize,
    tat: BTreeMap<IpAddr, Instant>,
    /// The same entries ordered by TAT, to find the first bucket to fill up.
    by_tat: BTreeSet<(Instant, IpAddr)>,
}

impl RateLimiter {
    /// A limiter with no source tracked yet.
    ///
    /// # Panics
    ///
    /// If any field of `limit` is zero.
    pub fn new(limit: RateLimit) -> Self {
        assert!(
            limit.per_second > 0,
            "RateLimit::per_second must be positive"
        );
        assert!(limit.burst > 0, "RateLimit::burst must be positive");
        assert!(
            limit.max_sources > 0,
            "RateLimit::max_sources must be positive"
        );
        let interval = Duration::from_secs(1) / limit.per_second;
        Self {
            interval,
            tolerance: interval * (limit.burst - 1),
            max_sources: limit.max_sources,
            tat: BTreeMap::new(),
            by_tat: BTreeSet::new(),
        }
    }

    /// Charges one request from `ip` at `now`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        let key = source_key(ip);
        let tat = match self.tat.get(&key) {
            Some(&tat) => {
                let conforms = now.checked_add(self.tolerance).is_none_or(|t| tat <= t);
                if !conforms {
                    return Verdict::Limited;
                }
                self.by_tat.remove(&(tat, key));
                tat.max(now)
            }
            None => {
                if self.tat.len() >= self.max_sources && !self.evict_one_full(now) {
                    return Verdict::TableFull;
                }
                now
            }
        };
        let next = tat.checked_add(self.interval).unwrap_or(tat);
        self.tat.insert(key, next);
        self.by_tat.insert((next, key));
        debug_assert_eq!(self.tat.len(), self.by_tat.len());
        Verdict::Allowed
    }

    /// Drops the bucket that filled up first, if it is full by `now`.
    fn evict_one_full(&mut self, now: Instant) -> bool {
        match self.by_tat.first().copied() {
            Some((tat, key)) if tat <= now => {
                self.by_tat.remove(&(tat, key));
                self.tat.remove(&key);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.tat.len()
    }
}

/// The bucket a source IP is charged to: the address for IPv4, the /64 for IPv6, since one host
/// commonly owns a whole /64 (RFC 4291 §2.5.4 interface identifiers are 64 bits).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_sustained_rate() {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit::default());
        let a = ip("192.0.2.1");
        for i in 0..40 {
            assert_eq!(limiter.check(t0, a), Verdict::Allowed, "request {i}");
        }
        assert_eq!(limiter.check(t0, a), Verdict::Limited);
        // One token every 50 ms.
        let t = t0 + Duration::from_millis(49);
        assert_eq!(limiter.check(t, a), Verdict::Limited);
        let t = t0 + Duration::from_millis(50);
        assert_eq!(limiter.check(t, a), Verdict::Allowed);
        assert_eq!(limiter.check(t, a), Verdict::Limited);
        // Other sources have their own bucket.
        assert_eq!(limiter.check(t, ip("192.0.2.2")), Verdict::Allowed);
        // After two quiet seconds the bucket is full again.
        let t = t + Duration::from_secs(2);
        for _ in 0..40 {
            assert_eq!(limiter.check(t, a), Verdict::Allowed);
        }
        assert_eq!(limiter.check(t, a), Verdict::Limited);
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 1,
            max_sources: 8,
        });
        assert_eq!(limiter.check(t0, ip("2001:db8::1")), Verdict::Allowed);
        assert_eq!(limiter.check(t0, ip("2001:db8::2")), Verdict::Limited);
        assert_eq!(limiter.check(t0, ip("2001:db8:0:1::1")), Verdict::Allowed);
    }

    #[test]
    fn full_table_evicts_only_full_buckets() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            per_second: 10,
            burst: 2,
            max_sources: 2,
        });
        assert_eq!(limiter.check(t0, ip("192.0.2.1")), Verdict::Allowed);
        assert_eq!(limiter.check(t0, ip("192.0.2.2")), Verdict::Allowed);
        // Both buckets are still refilling: a third source is refused, not let in by evicting.
        assert_eq!(limiter.check(t0, ip("192.0.2.3")), Verdict::TableFull);
        assert_eq!(limiter.tracked(), 2);
        // 100 ms later the first bucket is full again and gives way.
        let t = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check(t, ip("192.0.2.3")), Verdict::Allowed);
        assert_eq!(limiter.tracked(), 2);
        // The evicted source comes back with a full bucket, as it would have had anyway.
        let t = t0 + Duration::from_millis(200);
        assert_eq!(limiter.check(t, ip("192.0.2.1")), Verdict::Allowed);
        assert_eq!(limiter.check(t, ip("192.0.2.1")), Verdict::Allowed);
        assert_eq!(limiter.check(t, ip("192.0.2.1")), Verdict::Limited);
    }
}
