//! Settings of one KCP machine: ikcp.c's knobs (`ikcp_nodelay`, `ikcp_wndsize`, `ikcp_setmtu`,
//! `stream`, `dead_link`) with its defaults and clamps, plus the bounds ikcp.c leaves open.

use crate::wire::HEADER_LEN;

/// ikcp.c's `IKCP_MTU_DEF`.
pub const DEFAULT_MTU: usize = 1400;
/// ikcp.c's `ikcp_setmtu` refuses less than 50 bytes.
pub const MIN_MTU: usize = 50;
/// ikcp.c's `IKCP_WND_SND`.
pub const DEFAULT_SEND_WINDOW: u16 = 32;
/// ikcp.c's `IKCP_WND_RCV`; `ikcp_wndsize` never lets the receive window below it, because a
/// message of up to 127 fragments must fit in the receive queue at once (`ikcp_peeksize`).
pub const DEFAULT_RECV_WINDOW: u16 = 128;
/// ikcp.c's `ikcp_send` refuses a message of `IKCP_WND_RCV` fragments or more.
pub const MAX_FRAGMENTS: usize = 127;
/// ikcp.c's `IKCP_DEADLINK`: transmissions of one segment after which the link is dead.
pub const DEFAULT_DEAD_LINK: u32 = 20;

/// How eagerly the machine retransmits: ikcp.c's `ikcp_nodelay(kcp, nodelay, interval, resend,
/// nc)`, with its clamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoDelay {
    /// 0: minimum RTO 100 ms and each timeout doubles a segment's RTO; 1: minimum RTO 30 ms and
    /// each timeout adds half the segment's RTO; 2: like 1 but adds half the current RTO.
    pub nodelay: u32,
    /// Milliseconds between flushes, 10 to 5000.
    pub interval: u32,
    /// Fast retransmit after this many later segments were acknowledged (0: off).
    pub resend: u32,
    /// No congestion window (`nc`): send up to the send and remote windows.
    pub no_congestion_window: bool,
}

impl NoDelay {
    /// ikcp.c's defaults: `ikcp_nodelay(kcp, 0, 100, 0, 0)`.
    pub const NORMAL: Self = Self {
        nodelay: 0,
        interval: 100,
        resend: 0,
        no_congestion_window: false,
    };

    /// The "fastest" setting ikcp's README recommends: `ikcp_nodelay(kcp, 1, 10, 2, 1)`.
    pub const FAST: Self = Self {
        nodelay: 1,
        interval: 10,
        resend: 2,
        no_congestion_window: true,
    };

    /// The interval as ikcp.c clamps it (`ikcp_interval`).
    pub fn clamped_interval(&self) -> u32 {
        self.interval.clamp(10, 5000)
    }

    /// ikcp.c's `rx_minrto`: `IKCP_RTO_NDL` (30) with nodelay, `IKCP_RTO_MIN` (100) without.
    pub fn min_rto(&self) -> u32 {
        if self.nodelay != 0 { 30 } else { 100 }
    }
}

impl Default for NoDelay {
    fn default() -> Self {
        Self::NORMAL
    }
}

/// Message or stream mode (ikcp.c's `stream` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Each `send` is one message, delivered whole by one `recv`; at most
    /// [`MAX_FRAGMENTS`] segments.
    #[default]
    Message,
    /// Bytes: `send`s merge into full segments and any size is split; `recv` returns whatever
    /// bytes are ready.
    Stream,
}

/// The settings of one [`Kcp`](crate::Kcp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest datagram of segments, header included (at least [`MIN_MTU`]).
    pub mtu: usize,
    /// Send window in segments (`snd_wnd`).
    pub send_window: u16,
    /// Receive window in segments (`rcv_wnd`); raised to [`DEFAULT_RECV_WINDOW`] when lower, as
    /// `ikcp_wndsize` does. It also bounds the receive buffer and queue.
    pub recv_window: u16,
    /// Retransmission behaviour.
    pub nodelay: NoDelay,
    /// Message or stream mode.
    pub mode: Mode,
    /// Transmissions of one segment after which the link is declared dead.
    pub dead_link: u32,
    /// Fast retransmissions of one segment at most (`fastlimit`, ikcp.c's `IKCP_FASTACK_LIMIT`);
    /// 0: no limit.
    pub fast_limit: u32,
    /// Segments the send queue holds before `send` says [`SendError::Blocked`](crate::SendError).
    pub send_queue_limit: usize,
    /// Acknowledgements waiting for the next flush at most; more are dropped (and counted), which
    /// the peer's retransmission repairs. ikcp.c grows this list without a bound.
    pub ack_list_limit: usize,
    /// A segment's backed-off retransmission timeout stops growing here (ms). ikcp.c has no such
    /// bound: each timeout multiplies the segment's own RTO (by 2 without nodelay, by 1.5 with it),
    /// so after a long outage a segment may wait minutes before it goes again although the path
    /// is back. `u32::MAX` (the default) behaves as ikcp.c; the wire is the same either way.
    pub max_segment_rto: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mtu: DEFAULT_MTU,
            send_window: DEFAULT_SEND_WINDOW,
            recv_window: DEFAULT_RECV_WINDOW,
            nodelay: NoDelay::NORMAL,
            mode: Mode::Message,
            dead_link: DEFAULT_DEAD_LINK,
            fast_limit: 5,
            send_queue_limit: 4096,
            ack_list_limit: 1024,
            max_segment_rto: u32::MAX,
        }
    }
}

impl Config {
    /// ikcp's recommended low-latency setting ([`NoDelay::FAST`]) with larger windows.
    pub fn fast() -> Self {
        Self {
            nodelay: NoDelay::FAST,
            send_window: 128,
            recv_window: 128,
            ..Self::default()
        }
    }

    /// With this MTU.
    pub fn with_mtu(mut self, mtu: usize) -> Self {
        self.mtu = mtu;
        self
    }

    /// With these windows (`ikcp_wndsize`).
    pub fn with_windows(mut self, send: u16, recv: u16) -> Self {
        self.send_window = send;
        self.recv_window = recv;
        self
    }

    /// With this retransmission behaviour (`ikcp_nodelay`).
    pub fn with_nodelay(mut self, nodelay: NoDelay) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// In this mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Data bytes per segment (`mss`).
    pub fn mss(&self) -> usize {
        self.mtu - HEADER_LEN
    }

    /// Checks the caller's settings; `Kcp::new` asserts this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mtu < MIN_MTU || self.mtu > 65_535 {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.send_window == 0 {
            return Err(ConfigError::SendWindow);
        }
        if self.send_queue_limit == 0 || self.ack_list_limit == 0 {
            return Err(ConfigError::Limit);
        }
        if self.dead_link == 0 {
            return Err(ConfigError::DeadLink);
        }
        Ok(())
    }

    /// The receive window ikcp.c would use.
    pub(crate) fn effective_recv_window(&self) -> u16 {
        self.recv_window.max(DEFAULT_RECV_WINDOW)
    }
}

/// A [`Config`] the machine cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The MTU is below [`MIN_MTU`] or above a UDP datagram.
    Mtu(usize),
    /// A zero send window would never send.
    SendWindow,
    /// A zero queue or acknowledgement limit.
    Limit,
    /// A zero dead-link count.
    DeadLink,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mtu(m) => write!(f, "MTU {m} outside {MIN_MTU}..=65535"),
            Self::SendWindow => write!(f, "send window must be at least 1"),
            Self::Limit => write!(f, "queue and acknowledgement limits must be at least 1"),
            Self::DeadLink => write!(f, "dead-link count must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}
