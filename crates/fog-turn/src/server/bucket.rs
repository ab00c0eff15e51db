//! A token bucket in bytes, refilled continuously: the per-allocation bandwidth quota.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// `rate` bytes per second, at most `burst` saved up; starts full. A rate of 0 means no limit
/// (fogd's `--turn-bandwidth 0`), not "the first burst and nothing after".
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// The instant up to which refills have been credited (fractions of a byte carry over, so
    /// frequent calls do not lose tokens to rounding).
    credited: Instant,
}

impl TokenBucket {
    pub(crate) fn new(now: Instant, rate: u64, burst: u64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            credited: now,
        }
    }

    /// Takes `n` bytes if there are enough tokens.
    pub(crate) fn take(&mut self, now: Instant, n: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.credited).as_nanos();
        let earned = elapsed * u128::from(self.rate) / NANOS_PER_SEC;
        if earned == 0 {
            return;
        }
        if self.tokens as u128 + earned >= u128::from(self.burst) {
            self.tokens = self.burst;
            self.credited = now;
        } else {
            self.tokens += earned as u64;
            // Credit only the time those whole bytes took.
            let used = earned * NANOS_PER_SEC / u128::from(self.rate);
            self.credited += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_burst() {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1000, 500);
        assert!(b.take(t0, 500));
        assert!(!b.take(t0, 1));
        // 1 ms = 1 byte, credited in many small steps without loss.
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_micros(300);
        }
        // 30 ms → 30 bytes.
        assert!(b.take(t, 30));
        assert!(!b.take(t, 1));
        // A long pause refills to the burst only.
        let later = t + Duration::from_secs(60);
        assert!(b.take(later, 500));
        assert!(!b.take(later, 1));
    }

    #[test]
    fn rate_zero_is_unlimited() {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        let t0 = Instant::now();
        // The burst fogd used to pair with 0: once spent, the old bucket never refilled.
        let mut b = TokenBucket::new(t0, 0, 65_535);
        for i in 0..10_000u32 {
            let t = t0 + Duration::from_micros(u64::from(i));
            assert!(b.take(t, 65_535), "datagram {i}");
        }
    }
}
