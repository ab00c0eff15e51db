//! Links: latency, jitter, loss (random and bursty), reordering, duplication, bandwidth with a
//! queue limit, and MTU. Each direction of a link keeps its own state.

use std::time::Duration;

use rand::RngExt as _;
use rand_chacha::ChaCha8Rng;

/// IPv4 + UDP header bytes, counted against the MTU and the bandwidth.
pub(crate) const IPV4_UDP_OVERHEAD: usize = 20 + 8;
/// IPv6 + UDP header bytes.
pub(crate) const IPV6_UDP_OVERHEAD: usize = 40 + 8;

/// Bursty loss as a two-state Gilbert–Elliott chain, stepped once per datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    /// Probability of moving from the good state to the bad one.
    pub enter_bad: f64,
    /// Probability of moving from the bad state back to the good one.
    pub leave_bad: f64,
    /// Loss probability while in the bad state (the good state uses [`LinkConfig::loss`]).
    pub loss_in_bad: f64,
}

/// The properties of one link. Both directions share the configuration, not the state.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram. Jitter never reorders on its own:
    /// a datagram does not arrive before the one sent ahead of it on the same direction unless
    /// [`reorder`](Self::reorder) picks it.
    pub jitter: Duration,
    /// Independent loss probability per datagram (in the good state when `burst` is set).
    pub loss: f64,
    /// Bursty loss, if any.
    pub burst: Option<BurstLoss>,
    /// Probability that a datagram ignores the FIFO order: it takes the latency plus a delay drawn
    /// uniformly from `0..=reorder_delay` instead of the jitter, so later datagrams may overtake it
    /// (and it may overtake earlier ones that drew a larger jitter).
    pub reorder: f64,
    /// Spread of the delay given to reordered datagrams.
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Bits per second; `None` for unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Bytes that may wait for the wire when `bandwidth_bps` is set; beyond that, tail drop.
    pub queue_limit_bytes: usize,
    /// Largest IP packet (headers included); larger datagrams are dropped, as with DF set.
    pub mtu: usize,
}

impl Default for LinkConfig {
    /// 1 ms, perfect, unlimited, MTU 1500.
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            bandwidth_bps: None,
            queue_limit_bytes: 64 * 1024,
            mtu: 1500,
        }
    }
}

impl LinkConfig {
    /// A perfect link with the given one-way latency.
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
}

/// Why a link dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkDrop {
    /// Random or bursty loss.
    Lost,
    /// The queue in front of a bandwidth limit was full.
    QueueFull,
    /// Larger than the MTU.
    TooBig,
}

/// Per-direction state.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkState {
    /// Offset (ns since epoch) when the wire is free again.
    busy_until: u64,
    /// Latest arrival scheduled in FIFO order (ns since epoch).
    last_arrival: u64,
    in_bad_state: bool,
}

/// When one copy of a datagram arrives (ns since epoch), and whether it keeps FIFO order with the
/// other FIFO copies on the same direction (then it never arrives before one sent earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    pub(crate) at: u64,
    pub(crate) fifo: bool,
}

/// How a datagram crosses: when its copies arrive (one, or two when duplicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crossing {
    pub(crate) arrival: Arrival,
    pub(crate) duplicate: Option<Arrival>,
}

impl LinkState {
    /// Sends an IP packet of `ip_len` bytes onto the link at `now` (ns since epoch).
    pub(crate) fn send(
        &mut self,
        config: &LinkConfig,
        now: u64,
        ip_len: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Crossing, LinkDrop> {
        if ip_len > config.mtu {
            return Err(LinkDrop::TooBig);
        }
        // Serialisation and queueing come first: a packet lost on the wire still used it.
        let mut departure = now;
        if let Some(bps) = config.bandwidth_bps.filter(|&b| b > 0) {
            let start = self.busy_until.max(now);
            let backlog_ns = start - now;
            let backlog_bytes = (u128::from(backlog_ns) * u128::from(bps) / 8_000_000_000) as usize;
            if backlog_bytes + ip_len > config.queue_limit_bytes {
                return Err(LinkDrop::QueueFull);
            }
            let wire_ns = (ip_len as u128 * 8 * 1_000_000_000 / u128::from(bps)) as u64;
            self.busy_until = start + wire_ns;
            departure = self.busy_until;
        }
        let loss = match config.burst {
            Some(burst) => {
                let flip = if self.in_bad_state {
                    burst.leave_bad
                } else {
                    burst.enter_bad
                };
                if chance(rng, flip) {
                    self.in_bad_state = !self.in_bad_state;
                }
                if self.in_bad_state {
                    burst.loss_in_bad
                } else {
                    config.loss
                }
            }
            None => config.loss,
        };
        if chance(rng, loss) {
            return Err(LinkDrop::Lost);
        }
        let arrival = self.arrival(config, departure, rng);
        let duplicate = chance(rng, config.duplicate).then(|| self.arrival(config, departure, rng));
        Ok(Crossing { arrival, duplicate })
    }

    fn arrival(&mut self, config: &LinkConfig, departure: u64, rng: &mut ChaCha8Rng) -> Arrival {
        let base = departure + nanos(config.latency);
        if chance(rng, config.reorder) {
            return Arrival {
                at: base + spread(rng, config.reorder_delay),
                fifo: false,
            };
        }
        let at = (base + spread(rng, config.jitter)).max(self.last_arrival);
        self.last_arrival = at;
        Arrival { at, fifo: true }
    }
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && (p >= 1.0 || rng.random::<f64>() < p)
}

fn spread(rng: &mut ChaCha8Rng, max: Duration) -> u64 {
    let max = nanos(max);
    if max == 0 {
        0
    } else {
        rng.random_range(0..=max)
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
