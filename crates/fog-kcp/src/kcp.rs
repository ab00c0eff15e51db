//! The KCP machine: ikcp.c's control block (`ikcpcb`) driven by `now` instead of
//! `ikcp_update(current)`, with `poll_transmit` in place of the output callback.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{Config, MAX_FRAGMENTS, Mode};
use crate::timer::{TimerKind, TimerTable};
use crate::wire::{Command, HEADER_LEN, SegmentRepr, Segments, WireError};

/// ikcp.c `IKCP_RTO_DEF`: the RTO before any measurement.
const RTO_DEFAULT: u32 = 200;
/// ikcp.c `IKCP_RTO_MAX`.
const RTO_MAX: u32 = 60_000;
/// ikcp.c `IKCP_THRESH_INIT` and `IKCP_THRESH_MIN`.
const SSTHRESH_INIT: u32 = 2;
const SSTHRESH_MIN: u32 = 2;
/// ikcp.c `IKCP_PROBE_INIT` / `IKCP_PROBE_LIMIT`: window probing back-off while the peer's window
/// is zero.
const PROBE_INIT: u32 = 5_000;
const PROBE_LIMIT: u32 = 120_000;
/// ikcp.c `IKCP_ASK_SEND` / `IKCP_ASK_TELL`.
const ASK_SEND: u8 = 1;
const ASK_TELL: u8 = 2;

/// ikcp.c `_itimediff`: `later - earlier` on the 32-bit circle, for timestamps and sequence
/// numbers alike.
pub(crate) fn wrapping_diff(later: u32, earlier: u32) -> i32 {
    later.wrapping_sub(earlier) as i32
}

/// The machine's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next flush (ikcp.c's `ts_flush`): acknowledgements, probes, new data, retransmissions.
    /// Armed only while there is something to flush, so an idle machine asks for no wake-up.
    Flush,
}

impl TimerKind for Timer {
    const COUNT: usize = 1;
    fn index(self) -> usize {
        0
    }
}

/// Why `send` refused data. Nothing of the refused data was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Message mode: more than [`MAX_FRAGMENTS`] segments (ikcp.c's `ikcp_send` returns -2);
    /// the receiver could never assemble it. Stream mode splits instead.
    MessageTooLarge {
        /// Bytes offered.
        len: usize,
        /// Largest message this MTU allows.
        max: usize,
    },
    /// The send queue is full ([`Config::send_queue_limit`]); retry after the peer
    /// acknowledges (watch [`Kcp::waiting_to_send`]).
    Blocked {
        /// Segments already waiting.
        waiting: usize,
    },
    /// A segment was sent [`Config::dead_link`] times without acknowledgement.
    DeadLink,
    /// A FogConnect connection is closing or closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the {max}-byte limit")
            }
            Self::Blocked { waiting } => write!(f, "send queue full ({waiting} segments)"),
            Self::DeadLink => write!(f, "link dead: a segment went unacknowledged too often"),
            Self::Closed => write!(f, "connection closing or closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why `recv` could not deliver the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Message mode: the next message needs a larger buffer; it stays queued.
    BufferTooSmall {
        /// Bytes of the next message.
        needed: usize,
    },
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "next message needs {needed} bytes"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why a datagram was dropped. The peer misbehaved (or the datagram is not ours); nothing in it
/// changed the machine's state, and [`Stats`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Not a KCP segment sequence.
    Malformed(WireError),
    /// A segment of another conversation.
    WrongConv {
        /// Ours.
        expected: u32,
        /// The segment's.
        got: u32,
    },
    /// A FogConnect control segment on a plain KCP machine, or a FogConnect datagram without
    /// its framing byte.
    NotPlainKcp,
    /// FogConnect: a hello of a version we do not speak.
    UnsupportedVersion(u8),
    /// FogConnect: data from a peer that has not said hello.
    NotConnected,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed datagram: {e}"),
            Self::WrongConv { expected, got } => {
                write!(f, "conversation {got}, expected {expected}")
            }
            Self::NotPlainKcp => write!(f, "not a plain KCP datagram"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported FogConnect KCP version {v}"),
            Self::NotConnected => write!(f, "data before the hello"),
        }
    }
}

impl std::error::Error for PacketError {}

impl From<WireError> for PacketError {
    fn from(e: WireError) -> Self {
        Self::Malformed(e)
    }
}

/// What the machine tells the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Data arrived in order; call [`Kcp::recv`] until it returns `None`.
    Readable,
    /// A segment was sent [`Config::dead_link`] times without acknowledgement (ikcp.c sets
    /// `state = -1`). Reported once; `send` refuses from now on.
    DeadLink,
}

/// Counters and the RTT estimate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams written by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Data segments sent, first transmissions and retransmissions.
    pub segments_sent: u64,
    /// Data segments retransmitted after their RTO.
    pub segments_resent: u64,
    /// Data segments retransmitted early (fast retransmit).
    pub segments_fast_resent: u64,
    /// Datagrams accepted by `handle_packet`.
    pub datagrams_received: u64,
    /// Bytes of those datagrams.
    pub bytes_received: u64,
    /// Data segments received (duplicates included).
    pub segments_received: u64,
    /// Data segments already received or outside the receive window.
    pub segments_duplicate: u64,
    /// Datagrams dropped: malformed, another conversation, or unexpected.
    pub datagrams_dropped: u64,
    /// Acknowledgements not sent because [`Config::ack_list_limit`] was reached.
    pub acks_dropped: u64,
    /// Segments whose `una`, `frg` or acknowledgement made no sense (dropped or ignored).
    pub hostile_segments: u64,
    /// Smoothed RTT in ms (ikcp.c `rx_srtt`), 0 before the first sample.
    pub srtt_ms: u32,
    /// Current retransmission timeout in ms (ikcp.c `rx_rto`).
    pub rto_ms: u32,
}

/// A message (or stream chunk) waiting for the send window (ikcp.c `snd_queue`).
#[derive(Debug)]
struct Queued {
    frg: u8,
    data: Vec<u8>,
}

/// A segment sent and not yet acknowledged (ikcp.c `snd_buf`).
#[derive(Debug)]
struct InFlight {
    sn: u32,
    frg: u8,
    /// Our clock when last sent.
    ts: u32,
    resend_ts: u32,
    rto: u32,
    fastack: u32,
    xmit: u32,
    acked: bool,
    /// In `tx`, waiting for `poll_transmit`.
    queued: bool,
    data: Vec<u8>,
}

/// A received segment (ikcp.c `rcv_buf` / `rcv_queue`).
#[derive(Debug)]
struct Received {
    sn: u32,
    frg: u8,
    data: Vec<u8>,
}

/// One KCP conversation, sans-IO.
///
/// See the [crate docs](crate) for the driving loop.
#[derive(Debug)]
pub struct Kcp {
    conv: u32,
    config: Config,
    mss: usize,
    rcv_wnd: u16,
    epoch: Instant,
    /// ikcp.c `current`: milliseconds since `epoch`, wrapping.
    current: u32,
    last_now: Instant,

    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    rmt_wnd: u16,
    cwnd: u32,
    ssthresh: u32,
    incr: u32,
    rx_srtt: i64,
    rx_rttval: i64,
    rx_rto: u32,
    rx_minrto: u32,
    probe: u8,
    probe_wait: u32,
    ts_probe: u32,

    snd_queue: VecDeque<Queued>,
    snd_buf: VecDeque<InFlight>,
    /// Segments in `snd_buf` not yet acknowledged (ikcp.c `nsnd_buf`).
    unacked: usize,
    rcv_buf: VecDeque<Received>,
    rcv_queue: VecDeque<Received>,
    /// Stream mode: bytes of `rcv_queue`'s front already read.
    rcv_offset: usize,

    /// (sn, ts) to acknowledge (ikcp.c `acklist`).
    acks: VecDeque<(u32, u32)>,
    /// How many of `acks` the last flush released to `poll_transmit`.
    acks_ready: usize,
    /// Probe commands released to `poll_transmit`.
    probe_out: u8,
    /// Sequence numbers of data segments released to `poll_transmit`, in order.
    tx: VecDeque<u32>,

    timers: TimerTable<{ Timer::COUNT }>,
    events: VecDeque<Event>,
    dead: bool,
    stats: Stats,
}

impl Kcp {
    /// A machine for conversation `conv`, whose millisecond clock starts at `now` (the `ts` on
    /// the wire is milliseconds since then, wrapping at 2³²).
    ///
    /// # Panics
    /// When `config` does not [validate](Config::validate).
    pub fn new(conv: u32, config: Config, now: Instant) -> Self {
        if let Err(e) = config.validate() {
            panic!("fog_kcp::Kcp::new: {e}");
        }
        let mss = config.mss();
        let rcv_wnd = config.effective_recv_window();
        let rx_minrto = config.nodelay.min_rto();
        Self {
            conv,
            mss,
            rcv_wnd,
            epoch: now,
            current: 0,
            last_now: now,
            snd_una: 0,
            snd_nxt: 0,
            rcv_nxt: 0,
            rmt_wnd: crate::config::DEFAULT_RECV_WINDOW,
            // ikcp_create starts at 0 and its first flush raises it to 1 having sent nothing;
            // starting at 1 skips that empty flush.
            cwnd: 1,
            ssthresh: SSTHRESH_INIT,
            incr: mss as u32,
            rx_srtt: 0,
            rx_rttval: 0,
            rx_rto: RTO_DEFAULT,
            rx_minrto,
            probe: 0,
            probe_wait: 0,
            ts_probe: 0,
            snd_queue: VecDeque::new(),
            snd_buf: VecDeque::new(),
            unacked: 0,
            rcv_buf: VecDeque::new(),
            rcv_queue: VecDeque::new(),
            rcv_offset: 0,
            acks: VecDeque::new(),
            acks_ready: 0,
            probe_out: 0,
            tx: VecDeque::new(),
            timers: TimerTable::new(),
            events: VecDeque::new(),
            dead: false,
            stats: Stats {
                rto_ms: RTO_DEFAULT,
                ..Stats::default()
            },
            config,
        }
    }

    /// The conversation number.
    pub fn conv(&self) -> u32 {
        self.conv
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters and the RTT estimate.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Segments queued or in flight, not yet acknowledged (ikcp.c `ikcp_waitsnd`).
    pub fn waiting_to_send(&self) -> usize {
        self.unacked + self.snd_queue.len()
    }

    /// Whether the link was declared dead.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Largest message [`send`](Self::send) accepts in message mode.
    pub fn max_message_len(&self) -> usize {
        MAX_FRAGMENTS * self.mss
    }

    /// Segments received in order and not yet read (ikcp.c `nrcv_que`).
    pub fn recv_queue_len(&self) -> usize {
        self.rcv_queue.len()
    }

    /// Segments received out of order (ikcp.c `nrcv_buf`); never more than the receive window.
    pub fn recv_buffer_len(&self) -> usize {
        self.rcv_buf.len()
    }

    /// Segments waiting in the send queue (ikcp.c `nsnd_que`).
    pub fn send_queue_len(&self) -> usize {
        self.snd_queue.len()
    }

    /// Acknowledgements waiting to be sent.
    pub fn pending_acks(&self) -> usize {
        self.acks.len()
    }

    /// The receive window in segments the machine runs with.
    pub fn recv_window(&self) -> u16 {
        self.rcv_wnd
    }

    fn set_now(&mut self, now: Instant) {
        self.last_now = now;
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        // The wire clock wraps like ikcp.c's 32-bit `current`.
        self.current = ms as u32;
    }

    /// Queues `data`: one message in message mode, bytes in stream mode (ikcp.c `ikcp_send`).
    /// It leaves at the next flush; drive the machine as usual.
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        if self.dead {
            return Err(SendError::DeadLink);
        }
        let mss = self.mss;
        match self.config.mode {
            Mode::Message => {
                let count = data.len().div_ceil(mss).max(1);
                if count > MAX_FRAGMENTS {
                    return Err(SendError::MessageTooLarge {
                        len: data.len(),
                        max: self.max_message_len(),
                    });
                }
                self.check_room(count)?;
                for (i, chunk) in chunks_or_empty(data, mss).enumerate() {
                    // count <= 127, so the countdown fits frg's byte.
                    let frg = (count - i - 1) as u8;
                    self.snd_queue.push_back(Queued {
                        frg,
                        data: chunk.to_vec(),
                    });
                }
            }
            Mode::Stream => {
                if data.is_empty() {
                    return Ok(());
                }
                let room_in_last = self
                    .snd_queue
                    .back()
                    .map_or(0, |last| mss.saturating_sub(last.data.len()));
                let extend = room_in_last.min(data.len());
                let rest = &data[extend..];
                self.check_room(rest.len().div_ceil(mss))?;
                if extend > 0 {
                    if let Some(last) = self.snd_queue.back_mut() {
                        last.data.extend_from_slice(&data[..extend]);
                    }
                }
                for chunk in rest.chunks(mss) {
                    self.snd_queue.push_back(Queued {
                        frg: 0,
                        data: chunk.to_vec(),
                    });
                }
            }
        }
        self.arm_flush();
        Ok(())
    }

    fn check_room(&self, segments: usize) -> Result<(), SendError> {
        if self.snd_queue.len() + segments > self.config.send_queue_limit {
            return Err(SendError::Blocked {
                waiting: self.waiting_to_send(),
            });
        }
        Ok(())
    }

    /// Size of the next whole message (message mode) or of the bytes ready (stream mode)
    /// (ikcp.c `ikcp_peeksize`).
    pub fn peek_size(&mut self) -> Option<usize> {
        match self.config.mode {
            Mode::Stream => {
                let total: usize = self.rcv_queue.iter().map(|s| s.data.len()).sum();
                let ready = total - self.rcv_offset;
                (ready > 0).then_some(ready)
            }
            Mode::Message => self.message_size(),
        }
    }

    fn message_size(&mut self) -> Option<usize> {
        loop {
            let front = self.rcv_queue.front()?;
            let fragments = usize::from(front.frg) + 1;
            if fragments > usize::from(self.rcv_wnd) {
                // A countdown the receive queue can never hold: an honest ikcp sender never
                // sends it (ikcp_send caps messages at 127 fragments), and waiting for it
                // would stall the conversation for good. Drop the segment.
                self.rcv_queue.pop_front();
                self.stats.hostile_segments += 1;
                self.refill_queue();
                continue;
            }
            if front.frg == 0 {
                return Some(front.data.len());
            }
            if self.rcv_queue.len() < fragments {
                return None;
            }
            let mut len = 0;
            for seg in &self.rcv_queue {
                len += seg.data.len();
                if seg.frg == 0 {
                    break;
                }
            }
            return Some(len);
        }
    }

    /// Reads the next message (message mode) or as many bytes as fit (stream mode) into `buf`
    /// (ikcp.c `ikcp_recv`). `Ok(None)`: nothing ready.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        let was_full = self.rcv_queue.len() >= usize::from(self.rcv_wnd);
        let read = match self.config.mode {
            Mode::Message => {
                let Some(size) = self.message_size() else {
                    return Ok(None);
                };
                if size > buf.len() {
                    return Err(RecvError::BufferTooSmall { needed: size });
                }
                let mut at = 0;
                while let Some(seg) = self.rcv_queue.pop_front() {
                    buf[at..at + seg.data.len()].copy_from_slice(&seg.data);
                    at += seg.data.len();
                    if seg.frg == 0 {
                        break;
                    }
                }
                at
            }
            Mode::Stream => {
                let mut at = 0;
                while at < buf.len() {
                    let Some(seg) = self.rcv_queue.front() else {
                        break;
                    };
                    let ready = &seg.data[self.rcv_offset..];
                    let n = ready.len().min(buf.len() - at);
                    buf[at..at + n].copy_from_slice(&ready[..n]);
                    at += n;
                    self.rcv_offset += n;
                    if self.rcv_offset == seg.data.len() {
                        self.rcv_queue.pop_front();
                        self.rcv_offset = 0;
                    }
                }
                if at == 0 {
                    return Ok(None);
                }
                at
            }
        };
        self.refill_queue();
        // ikcp.c's "fast recover": a reader that frees a full queue tells the peer at once
        // instead of waiting for its window probe.
        if was_full && self.rcv_queue.len() < usize::from(self.rcv_wnd) {
            self.probe |= ASK_TELL;
            self.arm_flush();
        }
        Ok(Some(read))
    }

    /// Moves in-order segments from the receive buffer to the queue (end of ikcp.c
    /// `ikcp_parse_data` and `ikcp_recv`).
    fn refill_queue(&mut self) -> bool {
        let mut moved = false;
        while self.rcv_queue.len() < usize::from(self.rcv_wnd) {
            match self.rcv_buf.front() {
                Some(seg) if seg.sn == self.rcv_nxt => {}
                _ => break,
            }
            if let Some(seg) = self.rcv_buf.pop_front() {
                self.rcv_queue.push_back(seg);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                moved = true;
            }
        }
        moved
    }

    /// Takes one datagram of segments for this conversation (ikcp.c `ikcp_input`). The whole
    /// datagram is checked first; a bad one changes nothing.
    pub fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> Result<(), PacketError> {
        self.set_now(now);
        if let Err(e) = self.check_datagram(datagram) {
            self.stats.datagrams_dropped += 1;
            return Err(e);
        }
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;

        let prev_una = self.snd_una;
        let mut newest_ack: Option<(u32, u32)> = None;
        let mut readable = false;
        for (repr, data) in Segments::new(datagram).flatten() {
            self.rmt_wnd = repr.wnd;
            self.parse_una(repr.una);
            match repr.cmd {
                Command::Ack => {
                    let rtt = wrapping_diff(self.current, repr.ts);
                    if rtt >= 0 {
                        self.update_rtt(rtt);
                    }
                    self.parse_ack(repr.sn);
                    // IKCP_FASTACK_CONSERVE: the newest acknowledgement by send time counts.
                    newest_ack = match newest_ack {
                        None => Some((repr.sn, repr.ts)),
                        Some((sn, ts))
                            if wrapping_diff(repr.sn, sn) > 0 && wrapping_diff(repr.ts, ts) > 0 =>
                        {
                            Some((repr.sn, repr.ts))
                        }
                        keep => keep,
                    };
                }
                Command::Push => {
                    self.stats.segments_received += 1;
                    readable |= self.parse_push(&repr, data);
                }
                Command::WindowAsk => self.probe |= ASK_TELL,
                Command::WindowTell => {}
                Command::FogHello | Command::FogClose => {}
            }
        }
        if let Some((sn, ts)) = newest_ack {
            self.parse_fastack(sn, ts);
        }
        if wrapping_diff(self.snd_una, prev_una) > 0 {
            self.grow_cwnd();
        }
        if readable && !self.events.contains(&Event::Readable) {
            self.events.push_back(Event::Readable);
        }
        self.arm_flush();
        Ok(())
    }

    fn check_datagram(&self, datagram: &[u8]) -> Result<(), PacketError> {
        if datagram.len() < HEADER_LEN {
            return Err(WireError::TooShort.into());
        }
        for item in Segments::new(datagram) {
            let (repr, _) = item?;
            if repr.conv != self.conv {
                return Err(PacketError::WrongConv {
                    expected: self.conv,
                    got: repr.conv,
                });
            }
            if !repr.cmd.is_ikcp() {
                return Err(PacketError::NotPlainKcp);
            }
        }
        Ok(())
    }

    /// A PUSH: acknowledge it if inside the window and keep it if new (ikcp.c `ikcp_input` and
    /// `ikcp_parse_data`). Returns whether data became readable.
    fn parse_push(&mut self, repr: &SegmentRepr, data: &[u8]) -> bool {
        let window_end = self.rcv_nxt.wrapping_add(u32::from(self.rcv_wnd));
        if wrapping_diff(repr.sn, window_end) >= 0 {
            self.stats.segments_duplicate += 1;
            return false;
        }
        if self.acks.len() >= self.config.ack_list_limit {
            self.stats.acks_dropped += 1;
        } else {
            self.acks.push_back((repr.sn, repr.ts));
        }
        if wrapping_diff(repr.sn, self.rcv_nxt) < 0 {
            self.stats.segments_duplicate += 1;
            return false;
        }
        // rcv_buf is sorted by sn and holds only sns inside the window, so its length never
        // exceeds rcv_wnd. Search from the back, where new segments usually land.
        let mut at = self.rcv_buf.len();
        while at > 0 {
            let there = self.rcv_buf[at - 1].sn;
            if there == repr.sn {
                self.stats.segments_duplicate += 1;
                return false;
            }
            if wrapping_diff(repr.sn, there) > 0 {
                break;
            }
            at -= 1;
        }
        self.rcv_buf.insert(
            at,
            Received {
                sn: repr.sn,
                frg: repr.frg,
                data: data.to_vec(),
            },
        );
        debug_assert!(self.rcv_buf.len() <= usize::from(self.rcv_wnd));
        self.refill_queue()
    }

    /// ikcp.c `ikcp_parse_una` + `ikcp_shrink_buf`: everything before `una` arrived.
    fn parse_una(&mut self, una: u32) {
        if wrapping_diff(una, self.snd_nxt) > 0 {
            // Acknowledges what we never sent: ikcp.c would drop our whole send buffer; we
            // ignore it.
            self.stats.hostile_segments += 1;
            return;
        }
        while let Some(front) = self.snd_buf.front() {
            if wrapping_diff(una, front.sn) <= 0 {
                break;
            }
            if !front.acked {
                self.unacked -= 1;
            }
            self.snd_buf.pop_front();
        }
        self.shrink();
    }

    /// Drops acknowledged segments from the front and sets `snd_una` (ikcp.c `ikcp_shrink_buf`).
    fn shrink(&mut self) {
        while self.snd_buf.front().is_some_and(|s| s.acked) {
            self.snd_buf.pop_front();
        }
        self.snd_una = self.snd_buf.front().map_or(self.snd_nxt, |s| s.sn);
    }

    /// ikcp.c `ikcp_parse_ack`. `snd_buf` holds consecutive sns from `snd_una`, so the segment
    /// is found by offset.
    fn parse_ack(&mut self, sn: u32) {
        if wrapping_diff(sn, self.snd_una) < 0 || wrapping_diff(sn, self.snd_nxt) >= 0 {
            return;
        }
        let index = sn.wrapping_sub(self.snd_una) as usize;
        if let Some(seg) = self.snd_buf.get_mut(index) {
            debug_assert_eq!(seg.sn, sn);
            if !seg.acked {
                seg.acked = true;
                self.unacked -= 1;
            }
        }
        self.shrink();
    }

    /// ikcp.c `ikcp_parse_fastack` with `IKCP_FASTACK_CONSERVE`: segments before the newest
    /// acknowledged one, sent no later than it, were skipped once more.
    fn parse_fastack(&mut self, sn: u32, ts: u32) {
        if wrapping_diff(sn, self.snd_una) < 0 || wrapping_diff(sn, self.snd_nxt) >= 0 {
            return;
        }
        for seg in self.snd_buf.iter_mut() {
            if wrapping_diff(sn, seg.sn) <= 0 {
                break;
            }
            if !seg.acked && wrapping_diff(ts, seg.ts) >= 0 {
                seg.fastack = seg.fastack.saturating_add(1);
            }
        }
    }

    /// ikcp.c `ikcp_update_ack`: Jacobson/Karels smoothing, RTO bounded by the minimum RTO and
    /// 60 s.
    fn update_rtt(&mut self, rtt: i32) {
        let rtt = i64::from(rtt);
        if self.rx_srtt == 0 {
            self.rx_srtt = rtt;
            self.rx_rttval = rtt / 2;
        } else {
            let delta = (rtt - self.rx_srtt).abs();
            self.rx_rttval = (3 * self.rx_rttval + delta) / 4;
            self.rx_srtt = ((7 * self.rx_srtt + rtt) / 8).max(1);
        }
        let interval = i64::from(self.config.nodelay.clamped_interval());
        let rto = self.rx_srtt + interval.max(4 * self.rx_rttval);
        self.rx_rto = rto.clamp(i64::from(self.rx_minrto), i64::from(RTO_MAX)) as u32;
        self.stats.srtt_ms = self.rx_srtt.clamp(0, i64::from(u32::MAX)) as u32;
        self.stats.rto_ms = self.rx_rto;
    }

    /// The congestion window after new data was acknowledged (end of ikcp.c `ikcp_input`).
    fn grow_cwnd(&mut self) {
        let rmt_wnd = u32::from(self.rmt_wnd);
        if self.cwnd >= rmt_wnd {
            return;
        }
        let mss = self.mss as u32;
        if self.cwnd < self.ssthresh {
            self.cwnd += 1;
            self.incr += mss;
        } else {
            self.incr = self.incr.max(mss);
            self.incr = self.incr.saturating_add(mss * mss / self.incr + mss / 16);
            if (self.cwnd + 1).saturating_mul(mss) <= self.incr {
                self.cwnd = self.incr.div_ceil(mss);
            }
        }
        if self.cwnd > rmt_wnd {
            self.cwnd = rmt_wnd;
            self.incr = rmt_wnd.saturating_mul(mss);
        }
    }

    /// Whether a flush has anything to do. Acknowledgements a flush already released leave
    /// through `poll_transmit` and need no further flush.
    fn has_work(&self) -> bool {
        self.acks.len() > self.acks_ready
            || self.probe != 0
            || !self.snd_queue.is_empty()
            || self.unacked > 0
    }

    /// Arms the flush timer for `last_now` when there is work and no flush is planned: the
    /// first flush of a busy spell happens at once, the next ones every interval.
    fn arm_flush(&mut self) {
        if self.timers.get(Timer::Flush).is_none() && self.has_work() {
            self.timers.set(Timer::Flush, self.last_now);
        }
    }

    /// Fires the deadlines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_now(now);
        let Some(due) = self.timers.get(Timer::Flush) else {
            return;
        };
        if due > now {
            return;
        }
        self.flush();
        // ikcp.c `ikcp_update`: the next flush one interval after the planned one, or after
        // now when the caller fell behind.
        let interval = Duration::from_millis(u64::from(self.config.nodelay.clamped_interval()));
        let mut next = due + interval;
        if next <= now {
            next = now + interval;
        }
        if self.has_work() {
            self.timers.set(Timer::Flush, next);
        } else {
            self.timers.clear(Timer::Flush);
        }
    }

    /// Brings the machine to `now` after a spell in which its caller did not drive it (a
    /// connection's handshake, or an idle spell before a [`send`](Self::send), which has no
    /// `now` and arms the flush at the last instant the machine saw): a flush planned for
    /// earlier is due now, not in the past.
    pub fn catch_up(&mut self, now: Instant) {
        self.set_now(now);
        if self.timers.get(Timer::Flush).is_some_and(|due| due < now) {
            self.timers.set(Timer::Flush, now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn wnd_unused(&self) -> u16 {
        let used = self.rcv_queue.len().min(usize::from(self.rcv_wnd)) as u16;
        self.rcv_wnd - used
    }

    /// ikcp.c `ikcp_flush`: decides what to send; `poll_transmit` writes it.
    fn flush(&mut self) {
        let current = self.current;
        let prior_cwnd = self.cwnd;
        self.acks_ready = self.acks.len();

        // Probe the peer's window while it is zero, backing off (ikcp.c IKCP_PROBE_*).
        if self.rmt_wnd == 0 {
            if self.probe_wait == 0 {
                self.probe_wait = PROBE_INIT;
                self.ts_probe = current.wrapping_add(self.probe_wait);
            } else if wrapping_diff(current, self.ts_probe) >= 0 {
                self.probe_wait = self.probe_wait.max(PROBE_INIT);
                self.probe_wait = (self.probe_wait + self.probe_wait / 2).min(PROBE_LIMIT);
                self.ts_probe = current.wrapping_add(self.probe_wait);
                self.probe |= ASK_SEND;
            }
        } else {
            self.ts_probe = 0;
            self.probe_wait = 0;
        }
        self.probe_out |= self.probe;
        self.probe = 0;

        // The window: ours, the peer's, and the congestion window unless nc.
        let mut cwnd = u32::from(self.config.send_window).min(u32::from(self.rmt_wnd));
        if !self.config.nodelay.no_congestion_window {
            cwnd = cwnd.min(self.cwnd);
        }
        while wrapping_diff(self.snd_nxt, self.snd_una.wrapping_add(cwnd)) < 0 {
            let Some(queued) = self.snd_queue.pop_front() else {
                break;
            };
            self.snd_buf.push_back(InFlight {
                sn: self.snd_nxt,
                frg: queued.frg,
                ts: current,
                resend_ts: current,
                rto: self.rx_rto,
                fastack: 0,
                xmit: 0,
                acked: false,
                queued: false,
                data: queued.data,
            });
            self.unacked += 1;
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
        }

        let resend = match self.config.nodelay.resend {
            0 => u32::MAX,
            n => n,
        };
        let nodelay = self.config.nodelay.nodelay;
        let rtomin = if nodelay == 0 { self.rx_rto >> 3 } else { 0 };
        let fast_limit = self.config.fast_limit;
        let max_segment_rto = self.config.max_segment_rto;
        let mut fast_resent = false;
        let mut lost = false;
        let mut died = false;
        for seg in self.snd_buf.iter_mut() {
            if seg.acked || seg.queued {
                continue;
            }
            let send = if seg.xmit == 0 {
                seg.rto = self.rx_rto;
                seg.resend_ts = current.wrapping_add(seg.rto).wrapping_add(rtomin);
                true
            } else if wrapping_diff(current, seg.resend_ts) >= 0 {
                // RTO expired: back off as ikcp.c does for each nodelay mode.
                if nodelay == 0 {
                    seg.rto = seg.rto.saturating_add(seg.rto.max(self.rx_rto));
                } else {
                    let step = if nodelay < 2 { seg.rto } else { self.rx_rto };
                    seg.rto = seg.rto.saturating_add(step / 2);
                }
                seg.rto = seg.rto.min(max_segment_rto.max(self.rx_rto));
                seg.resend_ts = current.wrapping_add(seg.rto);
                self.stats.segments_resent += 1;
                lost = true;
                true
            } else if seg.fastack >= resend && (fast_limit == 0 || seg.xmit <= fast_limit) {
                seg.fastack = 0;
                seg.resend_ts = current.wrapping_add(seg.rto);
                self.stats.segments_fast_resent += 1;
                fast_resent = true;
                true
            } else {
                false
            };
            if send {
                seg.xmit += 1;
                seg.ts = current;
                seg.queued = true;
                self.tx.push_back(seg.sn);
                if seg.xmit >= self.config.dead_link {
                    died = true;
                }
            }
        }
        if died && !self.dead {
            self.dead = true;
            self.events.push_back(Event::DeadLink);
        }

        let mss = self.mss as u32;
        if fast_resent {
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            self.ssthresh = (in_flight / 2).max(SSTHRESH_MIN);
            self.cwnd = self.ssthresh.saturating_add(resend);
            self.incr = self.cwnd.saturating_mul(mss);
        }
        if lost {
            self.ssthresh = (prior_cwnd / 2).max(SSTHRESH_MIN);
            self.cwnd = 1;
            self.incr = mss;
        }
        if self.cwnd < 1 {
            self.cwnd = 1;
            self.incr = mss;
        }
    }

    /// Writes the next datagram (acknowledgements, probes, then data, as ikcp.c's flush orders
    /// them, several segments up to the MTU) into `buf` and returns its length.
    ///
    /// # Panics
    /// When `buf` is shorter than the MTU.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let _ = now; // segments carry the clock of the flush that released them, as in ikcp.c
        let mtu = self.config.mtu;
        assert!(
            buf.len() >= mtu,
            "poll_transmit: buffer shorter than the MTU"
        );
        let buf = &mut buf[..mtu];
        let mut header = SegmentRepr {
            conv: self.conv,
            cmd: Command::Ack,
            frg: 0,
            wnd: self.wnd_unused(),
            ts: 0,
            sn: 0,
            una: self.rcv_nxt,
            len: 0,
        };
        let mut len = 0;
        while self.acks_ready > 0 && len + HEADER_LEN <= mtu {
            let Some((sn, ts)) = self.acks.pop_front() else {
                break;
            };
            self.acks_ready -= 1;
            header.sn = sn;
            header.ts = ts;
            len += header.emit(&[], &mut buf[len..]);
        }
        for (flag, cmd) in [
            (ASK_SEND, Command::WindowAsk),
            (ASK_TELL, Command::WindowTell),
        ] {
            if self.probe_out & flag != 0 && len + HEADER_LEN <= mtu {
                header.cmd = cmd;
                header.sn = 0;
                header.ts = 0;
                len += header.emit(&[], &mut buf[len..]);
                self.probe_out &= !flag;
            }
        }
        while let Some(&sn) = self.tx.front() {
            let index = sn.wrapping_sub(self.snd_una) as usize;
            let seg = match self.snd_buf.get_mut(index) {
                Some(seg) if seg.sn == sn && !seg.acked => seg,
                _ => {
                    // Acknowledged (and maybe dropped) since the flush released it.
                    self.tx.pop_front();
                    continue;
                }
            };
            let need = HEADER_LEN + seg.data.len();
            if len + need > mtu {
                break;
            }
            self.tx.pop_front();
            seg.queued = false;
            let repr = SegmentRepr {
                cmd: Command::Push,
                frg: seg.frg,
                ts: seg.ts,
                sn: seg.sn,
                len: seg.data.len() as u32,
                ..header
            };
            len += repr.emit(&seg.data, &mut buf[len..]);
            self.stats.segments_sent += 1;
        }
        if len == 0 {
            return None;
        }
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += len as u64;
        Some(len)
    }

    /// Whether `poll_transmit` has something to write.
    pub fn has_transmit(&self) -> bool {
        self.acks_ready > 0 || self.probe_out != 0 || !self.tx.is_empty()
    }

    /// Milliseconds since the epoch as the wire clock counts them, for control segments.
    pub(crate) fn wire_clock(&self) -> u32 {
        self.current
    }
}

/// `data` in chunks of `size`, or one empty chunk for empty data (an empty message is a
/// segment of length 0, as ikcp.c sends it).
fn chunks_or_empty(data: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let empty = data.is_empty().then_some(&data[..0]);
    data.chunks(size).chain(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both directions start just before sn 2^32, as after four billion segments.
    fn near_the_wrap(kcp: &mut Kcp) {
        let sn = u32::MAX - 100;
        kcp.snd_una = sn;
        kcp.snd_nxt = sn;
        kcp.rcv_nxt = sn;
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the epoch of virtual time only
    fn sequence_numbers_wrap() {
        let epoch = Instant::now();
        let mut a = Kcp::new(1, Config::fast(), epoch);
        let mut b = Kcp::new(1, Config::fast(), epoch);
        near_the_wrap(&mut a);
        near_the_wrap(&mut b);
        let messages: Vec<Vec<u8>> = (0..300u32)
            .map(|i| (0..(i * 53 % 4000)).map(|j| (i + j) as u8).collect())
            .collect();
        for m in &messages {
            a.send(m).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; a.max_message_len()];
        let mut count = 0u32;
        let mut now = epoch;
        for _ in 0..5_000 {
            now += Duration::from_millis(10);
            a.handle_timeout(now);
            b.handle_timeout(now);
            // Every 7th datagram lost, and each pair of datagrams delivered swapped.
            let mut held: Option<Vec<u8>> = None;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                count += 1;
                if count % 7 == 0 {
                    continue;
                }
                match held.take() {
                    None => held = Some(buf[..n].to_vec()),
                    Some(first) => {
                        b.handle_packet(now, &buf[..n]).unwrap();
                        b.handle_packet(now, &first).unwrap();
                    }
                }
            }
            if let Some(first) = held {
                b.handle_packet(now, &first).unwrap();
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_packet(now, &buf[..n]).unwrap();
            }
            while let Some(n) = b.recv(&mut out).unwrap() {
                got.push(out[..n].to_vec());
            }
            if got.len() == messages.len() && a.waiting_to_send() == 0 {
                break;
            }
        }
        assert_eq!(got, messages);
        assert!(a.snd_nxt < 10_000, "the sequence numbers wrapped");
        assert_eq!(b.rcv_nxt, a.snd_nxt);
        assert!(a.stats().segments_resent + a.stats().segments_fast_resent > 0);
    }
}
