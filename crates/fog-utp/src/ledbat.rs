//! LEDBAT congestion control (RFC 6817) as uTP runs it (BEP 29, "Congestion control"; libutp's
//! `DelayHist` and `UTPSocket::apply_ccontrol`): the one-way delay the peer measured for our
//! packets, minus the lowest such delay seen lately, is our queuing delay; the window grows
//! while it is under the 100 ms target and shrinks when it is above.

use std::time::{Duration, Instant};

/// RFC 6817 §2.5.1 `TARGET`; BEP 29 uses 100 ms.
pub(crate) const TARGET_DELAY_US: u32 = 100_000;
/// libutp `MAX_CWND_INCREASE_BYTES_PER_RTT`: RFC 6817's GAIN expressed as bytes per RTT.
const MAX_CWND_INCREASE_BYTES_PER_RTT: f64 = 3000.0;
/// libutp `MIN_WINDOW_SIZE`: the window never goes below this many bytes.
pub(crate) const MIN_WINDOW: usize = 10;
/// libutp `CUR_DELAY_SIZE`: our delay is the minimum of the last three samples
/// (RFC 6817 §2.4.2 `CURRENT_FILTER`).
const CUR_DELAY_SIZE: usize = 3;
/// libutp `DELAY_BASE_HISTORY`: per-minute minimums of the raw delay (RFC 6817 §2.4.2
/// `BASE_HISTORY`, which suggests 10).
const DELAY_BASE_HISTORY: usize = 13;
/// One base-history slot per minute (RFC 6817 §2.4.2).
const BASE_SLOT: Duration = Duration::from_secs(60);
/// libutp `MAX_WINDOW_DECAY`: a loss halves the window at most once per 100 ms.
const WINDOW_DECAY_INTERVAL: Duration = Duration::from_millis(100);

/// `a < b` for 32-bit timestamps that wrap: `a` is less if walking up from it reaches `b`
/// sooner than walking down does.
fn wrapping_less(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) != 0 && b.wrapping_sub(a) < a.wrapping_sub(b)
}

/// The delay history of one direction (libutp `DelayHist`).
#[derive(Debug, Clone)]
pub(crate) struct DelayHistory {
    base: Option<u32>,
    base_hist: [u32; DELAY_BASE_HISTORY],
    base_idx: usize,
    base_slot_start: Instant,
    cur_hist: [u32; CUR_DELAY_SIZE],
    cur_idx: usize,
}

impl DelayHistory {
    pub(crate) fn new(now: Instant) -> Self {
        DelayHistory {
            base: None,
            base_hist: [0; DELAY_BASE_HISTORY],
            base_idx: 0,
            base_slot_start: now,
            cur_hist: [u32::MAX; CUR_DELAY_SIZE],
            cur_idx: 0,
        }
    }

    /// Adds a raw one-way delay sample (which includes the clock offset of the two hosts and
    /// so may be any 32-bit value; comparisons wrap).
    pub(crate) fn add_sample(&mut self, sample: u32, now: Instant) {
        let mut base = match self.base {
            Some(base) => base,
            None => {
                self.base_hist = [sample; DELAY_BASE_HISTORY];
                sample
            }
        };
        if wrapping_less(sample, self.base_hist[self.base_idx]) {
            self.base_hist[self.base_idx] = sample;
        }
        if wrapping_less(sample, base) {
            base = sample;
        }
        // Wraps on purpose: sample - base is the queuing delay even across a wrap.
        self.cur_hist[self.cur_idx] = sample.wrapping_sub(base);
        self.cur_idx = (self.cur_idx + 1) % CUR_DELAY_SIZE;
        if now.saturating_duration_since(self.base_slot_start) > BASE_SLOT {
            // A new minute: start a slot with this sample and take the minimum over the slots,
            // so a route change that raised the delay for good is learned within the history.
            self.base_slot_start = now;
            self.base_idx = (self.base_idx + 1) % DELAY_BASE_HISTORY;
            self.base_hist[self.base_idx] = sample;
            base = self.base_hist[0];
            for &slot in &self.base_hist {
                if wrapping_less(slot, base) {
                    base = slot;
                }
            }
        }
        self.base = Some(base);
    }

    /// The filtered queuing delay in µs, or `None` before any sample.
    pub(crate) fn value(&self) -> Option<u32> {
        self.cur_hist
            .iter()
            .copied()
            .min()
            .filter(|&v| v != u32::MAX)
    }

    /// The current base delay (for tests and stats).
    #[cfg(test)]
    pub(crate) fn base(&self) -> Option<u32> {
        self.base
    }
}

/// The congestion window and what drives it.
#[derive(Debug, Clone)]
pub(crate) struct Ledbat {
    /// libutp `max_window`: bytes allowed in flight.
    pub(crate) cwnd: usize,
    ssthresh: usize,
    slow_start: bool,
    max_cwnd: usize,
    last_decay: Option<Instant>,
    pub(crate) our_delay: DelayHistory,
    /// The last delay used for control, in µs.
    pub(crate) last_delay_us: u32,
}

impl Ledbat {
    pub(crate) fn new(now: Instant, packet_size: usize, max_cwnd: usize) -> Self {
        Ledbat {
            cwnd: packet_size,
            ssthresh: max_cwnd,
            slow_start: true,
            max_cwnd,
            last_decay: None,
            our_delay: DelayHistory::new(now),
            last_delay_us: 0,
        }
    }

    /// An ack acknowledged `bytes_acked` (> 0); `min_rtt` is the shortest time any of the
    /// acked packets spent in flight; `window_limited` says whether we filled the window
    /// within the last second (libutp `last_maxed_out_window`: an application-limited
    /// sender must not grow its window without bound).
    pub(crate) fn on_ack(
        &mut self,
        bytes_acked: usize,
        min_rtt: Duration,
        window_limited: bool,
        packet_size: usize,
    ) {
        debug_assert!(bytes_acked > 0);
        // No sample yet (a peer that echoes no delay, or none arrived): libutp's `DelayHist`
        // starts its current-delay filter at 0, so the window grows on acks and shrinks on
        // loss as TCP's would (RFC 6817 §2.4.1); holding it at one packet would stall.
        let delay = self.our_delay.value().unwrap_or(0);
        // The delay can never exceed the round trip (libutp clamps it the same way).
        let delay = delay.min(u32::try_from(min_rtt.as_micros()).unwrap_or(u32::MAX));
        self.last_delay_us = delay;
        let target = f64::from(TARGET_DELAY_US);
        let off_target = target - f64::from(delay);
        let window_factor =
            bytes_acked.min(self.cwnd) as f64 / bytes_acked.max(self.cwnd).max(1) as f64;
        let delay_factor = off_target / target;
        let mut gain = MAX_CWND_INCREASE_BYTES_PER_RTT * window_factor * delay_factor;
        if gain > 0.0 && !window_limited {
            gain = 0.0;
        }
        let ledbat_cwnd = (self.cwnd as f64 + gain).max(MIN_WINDOW as f64) as usize;
        if self.slow_start {
            let ss_cwnd = self.cwnd + (window_factor * packet_size as f64) as usize;
            if ss_cwnd > self.ssthresh {
                self.slow_start = false;
                self.cwnd = ledbat_cwnd;
            } else if f64::from(delay) > target * 0.9 {
                // Close to the target already: leave slow start early (libutp).
                self.slow_start = false;
                self.ssthresh = self.cwnd;
                self.cwnd = ledbat_cwnd;
            } else {
                self.cwnd = ss_cwnd.max(ledbat_cwnd);
            }
        } else {
            self.cwnd = ledbat_cwnd;
        }
        self.cwnd = self.cwnd.clamp(MIN_WINDOW, self.max_cwnd);
    }

    /// A packet was lost (fast retransmit or selective ack): halve, at most once per 100 ms
    /// (libutp `maybe_decay_win`; RFC 6817 §2.4.1 says react to loss as TCP does).
    pub(crate) fn on_loss(&mut self, now: Instant) {
        if self
            .last_decay
            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW_DECAY_INTERVAL)
        {
            return;
        }
        self.last_decay = Some(now);
        self.cwnd = (self.cwnd / 2).max(MIN_WINDOW);
        self.slow_start = false;
        self.ssthresh = self.cwnd;
    }

    /// The retransmission timer fired (libutp `check_timeouts`): with packets in flight the
    /// window restarts from one packet in slow start; idle, it only decays by a third.
    pub(crate) fn on_timeout(&mut self, in_flight: bool, packet_size: usize) {
        if !in_flight && self.cwnd > packet_size {
            self.cwnd = (self.cwnd * 2 / 3).max(packet_size);
        } else {
            self.cwnd = packet_size;
            self.slow_start = true;
        }
    }
}

// Tests take one real Instant as the origin of virtual time.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_comparison() {
        assert!(wrapping_less(1, 2));
        assert!(!wrapping_less(2, 1));
        assert!(wrapping_less(u32::MAX - 5, 3));
        assert!(!wrapping_less(3, u32::MAX - 5));
        assert!(!wrapping_less(7, 7));
    }

    #[test]
    fn queuing_delay_is_sample_minus_base_across_the_wrap() {
        let t0 = Instant::now();
        let mut h = DelayHistory::new(t0);
        h.add_sample(u32::MAX - 1000, t0);
        h.add_sample(u32::MAX - 500, t0);
        // 1500 µs above the base, but the raw value wrapped past zero.
        h.add_sample(499, t0);
        assert_eq!(h.base(), Some(u32::MAX - 1000));
        assert_eq!(h.value(), Some(0));
        h.add_sample(1999, t0);
        h.add_sample(2999, t0);
        // the last three samples: 1500, 3000, 4000 above the base.
        assert_eq!(h.value(), Some(1500));
    }

    #[test]
    fn base_history_forgets_a_minimum_after_the_history() {
        let t0 = Instant::now();
        let mut h = DelayHistory::new(t0);
        h.add_sample(1_000, t0);
        // The path gets slower for good: 50 ms more one-way delay.
        let mut t = t0;
        for _ in 0..(DELAY_BASE_HISTORY + 1) {
            t += BASE_SLOT + Duration::from_secs(1);
            h.add_sample(51_000, t);
        }
        assert_eq!(h.base(), Some(51_000));
        assert_eq!(h.value(), Some(0));
    }

    #[test]
    fn window_grows_under_target_and_shrinks_over_it() {
        let t0 = Instant::now();
        let mut c = Ledbat::new(t0, 1400, 1 << 20);
        c.slow_start = false;
        c.cwnd = 100_000;
        for _ in 0..3 {
            c.our_delay.add_sample(10_000, t0);
        }
        let before = c.cwnd;
        c.on_ack(10_000, Duration::from_millis(50), true, 1400);
        // base 10 ms: queuing 0, full gain scaled by 10 % of the window acked.
        assert_eq!(c.cwnd, before + 300);
        // Application-limited: no growth.
        c.on_ack(10_000, Duration::from_millis(50), false, 1400);
        assert_eq!(c.cwnd, before + 300);
        for _ in 0..3 {
            c.our_delay.add_sample(10_000 + 300_000, t0);
        }
        let before = c.cwnd;
        c.on_ack(10_000, Duration::from_secs(1), true, 1400);
        assert!(c.cwnd < before, "{} !< {before}", c.cwnd);
    }

    /// A peer that echoes no delay (every `timestamp_difference` 0) must not pin the window
    /// at one packet: without a sample the queuing delay counts as 0, as in libutp.
    #[test]
    fn window_grows_before_any_delay_sample() {
        let t0 = Instant::now();
        let mut c = Ledbat::new(t0, 1400, 1 << 20);
        for _ in 0..4 {
            let acked = c.cwnd;
            c.on_ack(acked, Duration::from_millis(40), true, 1400);
        }
        assert!(c.cwnd >= 8 * 1400, "{}", c.cwnd);
    }

    #[test]
    fn loss_halves_once_per_interval() {
        let t0 = Instant::now();
        let mut c = Ledbat::new(t0, 1400, 1 << 20);
        c.cwnd = 64_000;
        c.on_loss(t0);
        c.on_loss(t0 + Duration::from_millis(50));
        assert_eq!(c.cwnd, 32_000);
        c.on_loss(t0 + Duration::from_millis(150));
        assert_eq!(c.cwnd, 16_000);
    }
}
