//! One uTP connection: sequence and ack numbers, the send and receive buffers, retransmission,
//! selective acks and LEDBAT. The [`Endpoint`](crate::Endpoint) owns these and demuxes to them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ledbat::Ledbat;
use crate::timer::{Timer, TimerTable};
use crate::wire::{HEADER_LEN, Packet, PacketType, Repr, SelectiveAck};
use crate::{CloseReason, Config, ConnectionStats, ReadError, WriteError};

/// libutp `DUPLICATE_ACKS_BEFORE_RESEND`: three duplicate acks, or three packets selectively
/// acked past a hole, mean the hole was lost (BEP 29, "Congestion control").
const DUPLICATE_ACKS_BEFORE_RESEND: u32 = 3;
/// libutp `ACK_NR_ALLOWED_WINDOW`: how far below our oldest unacked packet an ack may be.
const ACK_NR_ALLOWED_WINDOW: usize = DUPLICATE_ACKS_BEFORE_RESEND as usize;
/// libutp `REORDER_BUFFER_MAX_SIZE`: packets further than this past `ack_nr` are ignored.
const REORDER_LIMIT: u16 = 1024;
/// BEP 29: the initial timeout is 1 s; libutp starts at 3 s for the SYN (`retransmit_timeout =
/// 3000` in `utp_connect`). We start at 1 s and double, as BEP 29 says.
const INITIAL_RTO: Duration = Duration::from_secs(1);
/// BEP 29 / libutp `update_rtt`: the timeout never goes below 1 s (libutp: `max(rtt + 4 rtt_var,
/// 1000)` ms).
const MIN_RTO: Duration = Duration::from_secs(1);
/// libutp: a zero receive window is re-probed with one packet after 15 s.
const ZERO_WINDOW_PROBE: Duration = Duration::from_secs(15);
/// How long a finished connection keeps answering retransmitted FINs (our last ack may be lost).
const LINGER: Duration = Duration::from_secs(3);
/// In-order full-sized data packets acked together: every second one, as TCP's receivers do
/// (RFC 5681 §4.2, "an ACK SHOULD be generated for at least every second full-sized
/// segment"). libutp acks once per batch of datagrams read from its socket; a sans-IO machine
/// does not see the batch, and one ack per data packet made acks half of all datagrams, each
/// sealed, sent and opened. A packet out of order, one that fills or leaves a hole, a short
/// one (the end of a burst) and any other packet type are acked at once, so duplicate acks
/// and selective acks reach the sender as fast as before.
const ACK_EVERY: u32 = 2;
/// How long an ack for one full-sized packet may wait for a second (RFC 5681 §4.2 allows
/// 500 ms; QUIC's default `max_ack_delay` is 25 ms, RFC 9000 §18.2). It matters only when the
/// sender has one packet in flight: its window is below two packets, or a burst ended on a
/// full packet.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// Our selective ACK mask: 32 bits, as libutp sends.
const SACK_BYTES: usize = 4;

/// Wrapping `a < b` for 16-bit sequence numbers.
pub(crate) fn seq_less(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

/// A measured microsecond value as the wire carries it: never 0, which BEP 29 reserves for
/// "not measured".
fn nonzero_us(us: u32) -> u32 {
    us.max(1)
}

/// Whether the ack of a packet last sent at `sent`, `transmissions` times, is surely for that
/// send: a retransmission acked sooner than the minimum RTT after it went is likely acked for
/// its original (RFC 8985 §6.2 step 2), and says nothing about what was sent before it.
fn unambiguous(min_rtt: Option<Duration>, now: Instant, sent: Instant, transmissions: u32) -> bool {
    transmissions == 1 || min_rtt.is_some_and(|m| now.saturating_duration_since(sent) >= m)
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Initiator,
    Acceptor,
}

/// Connection phases. An acceptor counts as connected on the initiator's first packet after
/// the SYN whose ack passes the window check: libutp waits for `ST_DATA` (`CS_SYN_RECV` →
/// `CS_CONNECTED`), we take an `ST_STATE` too, since acking our random `seq_nr` proves the
/// initiator saw our answer. It may write before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    SynSent,
    SynRecv,
    Connected,
    Closed(CloseReason),
}

#[derive(Debug)]
struct Outgoing {
    seq: u16,
    kind: PacketType,
    payload: Vec<u8>,
    transmissions: u32,
    sent_at: Option<Instant>,
    /// Counted as lost: not in `cur_window` until sent again.
    need_resend: bool,
    sacked: bool,
    fast_resent: bool,
}

impl Outgoing {
    /// A packet not sent yet: `need_resend` makes `poll_resend` send it.
    fn unsent(seq: u16, kind: PacketType, payload: Vec<u8>) -> Self {
        Outgoing {
            seq,
            kind,
            payload,
            transmissions: 0,
            sent_at: None,
            need_resend: true,
            sacked: false,
            fast_resent: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    pub(crate) recv_id: u16,
    pub(crate) send_id: u16,
    pub(crate) role: Role,
    pub(crate) state: State,
    max_payload: usize,
    /// The next sequence number we send (ST_STATE carries it without consuming it).
    seq_nr: u16,
    /// The last sequence number received in order.
    ack_nr: u16,
    outbuf: VecDeque<Outgoing>,
    cur_window: usize,
    send_buf: VecDeque<u8>,
    send_capacity: usize,
    recv_buf: VecDeque<u8>,
    recv_capacity: usize,
    ooo: BTreeMap<u16, Vec<u8>>,
    ooo_bytes: usize,
    fin_seq: Option<u16>,
    eof: bool,
    close_requested: bool,
    fin_sent: bool,
    fin_acked: bool,
    reset_pending: bool,
    ack_pending: bool,
    /// In-order full-sized data packets received since our last packet (which acked them).
    delayed_acks: u32,
    /// The largest payload received: the peer's packet size, so a smaller one ends a burst.
    largest_payload: usize,
    peer_wnd: usize,
    last_advertised: usize,
    rtt: Option<Duration>,
    rtt_var: Duration,
    rto: Duration,
    retransmit_timeout: Duration,
    retransmit_count: u32,
    duplicate_acks: u32,
    /// In loss recovery since a fast retransmit: the last sequence number sent when it began
    /// (RFC 6582 §3.2 `recover`). Recovery ends when the cumulative ack reaches it.
    recovery: Option<u16>,
    /// The shortest unambiguous RTT sample (RFC 8985 §6.2 `RACK.min_RTT`).
    min_rtt: Option<Duration>,
    /// Packets in `outbuf` with `need_resend` (so a poll need not walk the buffer to learn
    /// there are none).
    to_resend: usize,
    /// Payload bytes in `outbuf`.
    outbuf_bytes: usize,
    cc: Ledbat,
    reply_micro: u32,
    last_window_limited: Option<Instant>,
    write_blocked: bool,
    keepalive: Duration,
    syn_retransmits: u32,
    /// Consecutive timeouts of data in flight, once connected, before giving up; `None`:
    /// never ([`Config::data_retransmits`]).
    data_retransmits: Option<u32>,
    /// The retransmission timeout stops doubling here ([`Config::max_rto`]).
    max_rto: Duration,
    /// How long an acceptor waits for the initiator's first packet after its SYN.
    handshake_timeout: Duration,
    /// One before the first data sequence number. For an initiator, its SYN's: an ST_STATE
    /// acking only it is the acceptor's SYN-ACK (first or repeated), answered so the acceptor
    /// learns we are there. For an acceptor, the SYN-ACK's seq_nr less one.
    syn_seq: u16,
    pub(crate) timers: TimerTable,
    pub(crate) stats: ConnectionStats,
    pub(crate) events: VecDeque<ConnEvent>,
}

/// What a connection tells its endpoint, which adds the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    Connected,
    Readable,
    Writable,
    Finished,
    Closed(CloseReason),
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    fn new(
        now: Instant,
        config: &Config,
        peer: SocketAddr,
        recv_id: u16,
        send_id: u16,
        role: Role,
        state: State,
        seq_nr: u16,
        ack_nr: u16,
    ) -> Self {
        let max_payload = config.max_packet_size.saturating_sub(HEADER_LEN).max(1);
        Connection {
            peer,
            recv_id,
            send_id,
            role,
            state,
            max_payload,
            seq_nr,
            ack_nr,
            outbuf: VecDeque::new(),
            cur_window: 0,
            send_buf: VecDeque::new(),
            send_capacity: config.send_buffer,
            recv_buf: VecDeque::new(),
            recv_capacity: config.recv_buffer,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            fin_seq: None,
            eof: false,
            close_requested: false,
            fin_sent: false,
            fin_acked: false,
            reset_pending: false,
            ack_pending: false,
            delayed_acks: 0,
            largest_payload: 0,
            // Until the peer tells us, assume it can take one packet.
            peer_wnd: max_payload,
            last_advertised: config.recv_buffer,
            rtt: None,
            rtt_var: Duration::ZERO,
            rto: INITIAL_RTO,
            retransmit_timeout: INITIAL_RTO,
            retransmit_count: 0,
            duplicate_acks: 0,
            recovery: None,
            min_rtt: None,
            to_resend: 0,
            outbuf_bytes: 0,
            cc: Ledbat::new(now, max_payload, config.send_buffer.max(max_payload)),
            reply_micro: 0,
            last_window_limited: None,
            write_blocked: false,
            keepalive: config.keepalive_interval,
            syn_retransmits: config.syn_retransmits,
            data_retransmits: config.data_retransmits,
            max_rto: config.max_rto.max(MIN_RTO),
            syn_seq: seq_nr.wrapping_sub(1),
            handshake_timeout: config.handshake_timeout,
            timers: TimerTable::default(),
            stats: ConnectionStats::default(),
            events: VecDeque::new(),
        }
    }

    /// We open a connection: the SYN occupies `isn`, data starts at `isn + 1` (BEP 29,
    /// "Connection setup").
    pub(crate) fn connect(
        now: Instant,
        config: &Config,
        peer: SocketAddr,
        recv_id: u16,
        isn: u16,
    ) -> Self {
        let mut conn = Connection::new(
            now,
            config,
            peer,
            recv_id,
            recv_id.wrapping_add(1),
            Role::Initiator,
            State::SynSent,
            isn.wrapping_add(1),
            0,
        );
        conn.push_outgoing(Outgoing::unsent(isn, PacketType::Syn, Vec::new()));
        conn
    }

    /// A SYN arrived: we answer with ST_STATE carrying our first sequence number `isn`, which
    /// the ST_STATE does not consume; our first data packet carries `isn` too (the SYN-ACK trap).
    pub(crate) fn accept(
        now: Instant,
        config: &Config,
        peer: SocketAddr,
        syn: &Repr,
        isn: u16,
    ) -> Self {
        let mut conn = Connection::new(
            now,
            config,
            peer,
            syn.connection_id.wrapping_add(1),
            syn.connection_id,
            Role::Acceptor,
            State::SynRecv,
            isn,
            syn.seq_nr,
        );
        conn.peer_wnd = syn.wnd_size as usize;
        conn.stats.packets_received += 1;
        conn.ack_pending = true;
        // A SYN costs a sender nothing and may come from a spoofed address: a slot it takes is
        // given back unless the initiator follows up (libutp only caps the count).
        conn.timers
            .set(Timer::Handshake, now + config.handshake_timeout);
        // Our SYN-ACK is an ST_STATE, which nothing acknowledges, and the initiator's answer
        // to it may be lost too: it goes again on the retransmission clock until a packet of
        // the initiator's after its SYN arrives (see `handle_timeout`).
        conn.timers
            .set(Timer::Retransmit, now + conn.retransmit_timeout);
        conn
    }

    /// Forgets everything unacked (the connection is over).
    fn drop_outgoing(&mut self) {
        self.outbuf.clear();
        self.cur_window = 0;
        self.to_resend = 0;
        self.outbuf_bytes = 0;
        self.recovery = None;
    }

    fn push_outgoing(&mut self, p: Outgoing) {
        debug_assert!(p.need_resend);
        self.to_resend += 1;
        self.outbuf_bytes += p.payload.len();
        self.outbuf.push_back(p);
    }

    /// `cur_window` is the payload of what is in flight: sent, not counted lost, not sacked.
    pub(crate) fn debug_check(&self) {
        debug_assert_eq!(
            self.cur_window,
            self.outbuf
                .iter()
                .filter(|p| p.sent_at.is_some() && !p.need_resend && !p.sacked)
                .map(|p| p.payload.len())
                .sum::<usize>(),
            "cur_window out of step with the packets in flight"
        );
        debug_assert_eq!(
            self.to_resend,
            self.outbuf.iter().filter(|p| p.need_resend).count()
        );
        debug_assert!(self.outbuf.iter().all(|p| !(p.need_resend && p.sacked)));
        debug_assert_eq!(
            self.outbuf_bytes,
            self.outbuf.iter().map(|p| p.payload.len()).sum::<usize>()
        );
        debug_assert!(self.outbuf.len() < usize::from(REORDER_LIMIT));
        debug_assert!(self.recv_buf.len() + self.ooo_bytes <= self.recv_capacity);
    }

    fn first_unacked(&self) -> u16 {
        self.seq_nr.wrapping_sub(self.outbuf.len() as u16)
    }

    fn recv_window(&self) -> usize {
        self.recv_capacity
            .saturating_sub(self.recv_buf.len() + self.ooo_bytes)
    }

    fn buffered_to_send(&self) -> usize {
        self.send_buf.len() + self.outbuf_bytes
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Removable: closed, nothing left to say, and (after a clean close) the linger is over.
    pub(crate) fn is_removable(&self, now: Instant) -> bool {
        match self.state {
            State::Closed(CloseReason::Done) => {
                self.timers.get(Timer::Linger).is_none_or(|t| now >= t)
            }
            State::Closed(_) => !self.reset_pending,
            _ => false,
        }
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed(reason);
        self.timers.clear_all();
        self.events.push_back(ConnEvent::Closed(reason));
    }

    /// A second SYN with our connection id from our peer: it lost our answer; answer again,
    /// never open a second connection.
    pub(crate) fn on_duplicate_syn(&mut self, syn: &Repr) {
        if self.role == Role::Acceptor && syn.seq_nr == self.ack_nr && !self.is_closed() {
            self.ack_pending = true;
            self.stats.duplicate_syns += 1;
        } else {
            self.stats.dropped += 1;
        }
    }

    /// An incoming packet for this connection (already matched by peer and connection id).
    pub(crate) fn handle_packet(&mut self, now: Instant, now_us: u32, repr: &Repr, payload: &[u8]) {
        if repr.packet_type == PacketType::Reset {
            self.drop_outgoing();
            self.close_with(CloseReason::ResetByPeer);
            return;
        }
        if repr.packet_type == PacketType::Syn {
            self.on_duplicate_syn(repr);
            return;
        }
        if let State::Closed(reason) = self.state {
            // Lingering after a clean close: ack a retransmitted FIN so the peer can finish.
            if reason == CloseReason::Done && repr.packet_type == PacketType::Fin {
                self.ack_pending = true;
            }
            return;
        }
        // BEP 29's reflection fix (libutp `utp_process_incoming`): an ack of something we never
        // sent, or far below what is in flight, means a spoofed or confused sender; drop it.
        let last_sent = self.seq_nr.wrapping_sub(1);
        let allowed = (self.outbuf.len() + ACK_NR_ALLOWED_WINDOW) as u16;
        if seq_less(last_sent, repr.ack_nr)
            || seq_less(repr.ack_nr, last_sent.wrapping_sub(allowed))
        {
            self.stats.dropped_bad_ack += 1;
            return;
        }
        if self.state == State::SynSent && repr.packet_type != PacketType::State {
            // Only the SYN-ACK says where the acceptor's data starts (its seq_nr): a data
            // packet first (the SYN-ACK and data before it lost) would make us take what came
            // before as received. Dropped; our SYN goes again, its answer names the start, and
            // the acceptor resends the data (chaos seed 976).
            self.stats.dropped += 1;
            return;
        }
        let was_syn_sent = self.state == State::SynSent;
        if was_syn_sent {
            // The SYN-ACK trap: its seq_nr is the peer's first data seq, not yet consumed, so
            // what we have "received in order" is the one before it (libutp does the same).
            self.ack_nr = repr.seq_nr.wrapping_sub(1);
            self.state = State::Connected;
            self.events.push_back(ConnEvent::Connected);
            // Ack the answer at once: the acceptor counts as connected only on a packet of
            // ours after the SYN, and an initiator with nothing to write would otherwise send
            // none before the acceptor's handshake timeout (the keepalive is armed by a send).
            self.ack_pending = true;
        }
        // Packets too far from what we expect are old duplicates (ack them again) or garbage.
        let dist = repr.seq_nr.wrapping_sub(self.ack_nr).wrapping_sub(1);
        if dist >= REORDER_LIMIT {
            if dist >= u16::MAX - REORDER_LIMIT && repr.packet_type != PacketType::State {
                self.ack_pending = true;
                self.stats.duplicates_received += 1;
            } else {
                self.stats.dropped += 1;
            }
            return;
        }
        self.stats.packets_received += 1;
        if self.state == State::SynRecv {
            self.state = State::Connected;
            self.timers.clear(Timer::Handshake);
            // The SYN-ACK's repeats doubled the timeout; data starts from the estimate (below,
            // `on_retransmit_timeout` would otherwise go on doubling it while idle: the first
            // write after a minute of quiet then waited a minute for its first resend).
            self.retransmit_count = 0;
            self.retransmit_timeout = self.rto;
            if !self.outbuf.iter().any(|p| p.sent_at.is_some() && !p.sacked) {
                self.timers.clear(Timer::Retransmit);
            }
        }
        self.peer_wnd = repr.wnd_size as usize;
        if repr.timestamp != 0 {
            // BEP 29: 0 in `timestamp_difference_microseconds` means "no sample yet". A real
            // difference of exactly 0 (clocks that happen to differ by the one-way delay, as
            // in a deterministic simulator) goes out as 1 µs, else the peer never learns its
            // delay and LEDBAT holds its window at one packet.
            self.reply_micro = nonzero_us(now_us.wrapping_sub(repr.timestamp));
        }
        if repr.timestamp_difference != 0 {
            self.cc.our_delay.add_sample(repr.timestamp_difference, now);
        }
        self.process_ack(now, repr);
        match repr.packet_type {
            PacketType::Data => self.on_data(now, repr.seq_nr, dist, payload),
            // A repeated SYN-ACK (it acks only our SYN): the acceptor has not heard our answer.
            PacketType::State
                if self.role == Role::Initiator
                    && self.state == State::Connected
                    && repr.ack_nr == self.syn_seq
                    && !was_syn_sent =>
            {
                self.ack_pending = true;
            }
            PacketType::Fin => {
                if self.fin_seq.is_none() {
                    self.fin_seq = Some(repr.seq_nr);
                }
                self.ack_pending = true;
                self.advance_to_fin();
            }
            _ => {}
        }
        if self.write_blocked && self.buffered_to_send() < self.send_capacity {
            self.write_blocked = false;
            self.events.push_back(ConnEvent::Writable);
        }
        self.maybe_done(now);
        self.arm_zero_window(now);
    }

    fn process_ack(&mut self, now: Instant, repr: &Repr) {
        let base = self.first_unacked().wrapping_sub(1);
        let mut acks = usize::from(repr.ack_nr.wrapping_sub(base));
        if acks > self.outbuf.len() {
            acks = 0;
        }
        // Only ST_STATE counts as a duplicate ack (libutp: data may carry a stale ack simply
        // because the peer had something to say).
        if !self.outbuf.is_empty() {
            if acks == 0 && repr.ack_nr == base && repr.packet_type == PacketType::State {
                self.duplicate_acks += 1;
                if self.duplicate_acks == DUPLICATE_ACKS_BEFORE_RESEND {
                    self.fast_resend(now, 0);
                }
            } else {
                self.duplicate_acks = 0;
            }
        }
        let mut acked_bytes = 0;
        let mut min_rtt = Duration::MAX;
        // The latest send time of a packet this ack newly delivered (RFC 8985 §6.2
        // `RACK.xmit_ts`).
        let mut delivered = None;
        for _ in 0..acks {
            let Some(p) = self.outbuf.pop_front() else {
                break;
            };
            self.outbuf_bytes -= p.payload.len();
            if p.need_resend {
                self.to_resend -= 1;
            } else if !p.sacked {
                self.cur_window -= p.payload.len();
            }
            // A packet a selective ack took already gave its sample then: now, behind a hole
            // that took a retransmission timeout to fill, it would look seconds late.
            if let Some(sent) = p.sent_at.filter(|_| !p.sacked) {
                let sample = now.saturating_duration_since(sent);
                min_rtt = min_rtt.min(sample);
                if p.transmissions == 1 {
                    self.update_rtt(sample);
                }
                if unambiguous(self.min_rtt, now, sent, p.transmissions) {
                    delivered = delivered.max(Some(sent));
                }
            }
            if !p.sacked {
                acked_bytes += p.payload.len();
            }
            if p.kind == PacketType::Fin {
                self.fin_acked = true;
            }
        }
        if acks > 0 {
            self.retransmit_count = 0;
            self.retransmit_timeout = self.rto;
            // Packets are first sent in sequence order, so the sent ones are a prefix.
            if self.outbuf.front().is_some_and(|p| p.sent_at.is_some()) {
                self.timers
                    .set(Timer::Retransmit, now + self.retransmit_timeout);
            } else {
                self.timers.clear(Timer::Retransmit);
            }
        }
        if let Some(sack) = &repr.selective_ack {
            acked_bytes += self.selective_ack(now, repr.ack_nr, sack, &mut min_rtt, &mut delivered);
        }
        if let Some(recover) = self.recovery {
            if !seq_less(repr.ack_nr, recover) {
                // RFC 6582 §3.2 step 6: a full acknowledgement ends the recovery.
                self.recovery = None;
            } else if let Some(delivered) = delivered {
                self.rack_detect_loss(delivered);
            }
        }
        if acked_bytes > 0 {
            let limited = self
                .last_window_limited
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
            self.cc
                .on_ack(acked_bytes, min_rtt, limited, self.max_payload);
        }
    }

    /// libutp `selective_ack`: mark what the mask acks, and resend a hole that has at least
    /// three acked packets after it.
    fn selective_ack(
        &mut self,
        now: Instant,
        ack_nr: u16,
        sack: &SelectiveAck,
        min_rtt: &mut Duration,
        delivered: &mut Option<Instant>,
    ) -> usize {
        let mut acked = 0;
        let first = ack_nr.wrapping_add(2);
        // RTT samples (Karn: sent once, and not taken for lost meanwhile), applied after.
        let mut samples = Vec::new();
        let known_min_rtt = self.min_rtt;
        for p in self.outbuf.iter_mut() {
            let i = usize::from(p.seq.wrapping_sub(first));
            if !p.sacked && p.sent_at.is_some() && sack.get(i) {
                p.sacked = true;
                let counted_lost = p.need_resend;
                if counted_lost {
                    // Counted lost, but it arrived after all: no need to send it again.
                    p.need_resend = false;
                    self.to_resend -= 1;
                } else {
                    self.cur_window -= p.payload.len();
                }
                acked += p.payload.len();
                if let Some(sent) = p.sent_at {
                    let sample = now.saturating_duration_since(sent);
                    *min_rtt = (*min_rtt).min(sample);
                    if p.transmissions == 1 && !counted_lost {
                        samples.push(sample);
                    }
                    if unambiguous(known_min_rtt, now, sent, p.transmissions) {
                        *delivered = (*delivered).max(Some(sent));
                    }
                }
            }
        }
        for sample in samples {
            self.update_rtt(sample);
        }
        let mut sacked_after = self.outbuf.iter().filter(|p| p.sacked).count() as u32;
        let mut holes = Vec::new();
        for (idx, p) in self.outbuf.iter().enumerate() {
            if p.sacked {
                sacked_after -= 1;
            } else if sacked_after >= DUPLICATE_ACKS_BEFORE_RESEND && p.sent_at.is_some() {
                holes.push(idx);
            }
        }
        for idx in holes {
            self.fast_resend(now, idx);
        }
        acked
    }

    fn fast_resend(&mut self, now: Instant, idx: usize) {
        let Some(p) = self.outbuf.get_mut(idx) else {
            return;
        };
        if p.fast_resent || p.need_resend || p.sacked || p.sent_at.is_none() {
            return;
        }
        p.fast_resent = true;
        p.need_resend = true;
        self.to_resend += 1;
        self.cur_window -= p.payload.len();
        if self.recovery.is_none() {
            // RFC 6582 §3.2 step 2: one window reduction per loss episode, which lasts until
            // everything sent so far is acknowledged.
            self.recovery = Some(self.seq_nr.wrapping_sub(1));
            self.cc.on_loss(now);
        }
    }

    /// In recovery, every packet still in flight that was sent before one now delivered is
    /// lost (RACK, RFC 8985 §6.2 steps 4-5, with the reordering window of 0 it uses during
    /// recovery when no reordering was seen). BEP 29's rule (three packets acked past a hole)
    /// sees only the 32 packets a selective ack covers, and duplicate acks name no packet:
    /// after a burst of losses longer than that, each hole past the first used to wait for
    /// the retransmission timeout (1 s at least). Here the ack of the first hole's
    /// retransmission shows the rest lost at once, and a lost retransmission is seen as soon
    /// as one sent after it is acked.
    fn rack_detect_loss(&mut self, delivered: Instant) {
        for p in self.outbuf.iter_mut() {
            if !p.need_resend && !p.sacked && p.sent_at.is_some_and(|s| s < delivered) {
                p.need_resend = true;
                self.to_resend += 1;
                self.cur_window -= p.payload.len();
                self.stats.rack_lost += 1;
            }
        }
    }

    /// RFC 6298-style smoothing as libutp's `ack_packet` does it.
    fn update_rtt(&mut self, sample: Duration) {
        match self.rtt {
            None => {
                self.rtt = Some(sample);
                self.rtt_var = sample / 2;
            }
            Some(rtt) => {
                let delta = rtt.abs_diff(sample);
                self.rtt_var = (self.rtt_var * 3 + delta) / 4;
                self.rtt = Some((rtt * 7 + sample) / 8);
            }
        }
        let rtt = self.rtt.unwrap_or(sample);
        self.rto = (rtt + self.rtt_var * 4).max(MIN_RTO);
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
    }

    fn on_data(&mut self, now: Instant, seq: u16, dist: u16, payload: &[u8]) {
        // Whether this packet may share an ack with the next (decided before it is taken).
        let may_delay = dist == 0
            && self.ooo.is_empty()
            && self.state == State::Connected
            && self.largest_payload > 0
            && payload.len() >= self.largest_payload
            && payload.len() <= self.recv_window();
        self.largest_payload = self.largest_payload.max(payload.len());
        if may_delay && !self.ack_pending {
            self.delayed_acks += 1;
            if self.delayed_acks >= ACK_EVERY {
                self.ack_pending = true;
            } else if self.timers.get(Timer::DelayedAck).is_none() {
                self.timers.set(Timer::DelayedAck, now + ACK_DELAY);
            }
        } else {
            self.ack_pending = true;
        }
        if self.fin_seq.is_some_and(|fin| !seq_less(seq, fin)) {
            // Nothing exists past the FIN (libutp ignores it too).
            self.stats.dropped += 1;
            return;
        }
        if dist == 0 {
            // The packet that fills the hole goes before anything waiting behind it: make room
            // by forgetting the farthest out-of-order packets (the peer sends them again).
            while payload.len() > self.recv_window() {
                let base = self.ack_nr;
                let Some(&far) = self.ooo.keys().max_by_key(|&&s| s.wrapping_sub(base)) else {
                    break;
                };
                if let Some(p) = self.ooo.remove(&far) {
                    self.ooo_bytes -= p.len();
                    self.stats.dropped_no_room += 1;
                }
            }
            if payload.len() > self.recv_window() {
                self.stats.dropped_no_room += 1;
                return;
            }
            self.deliver(payload);
            self.ack_nr = seq;
            // Pull in what was waiting behind the hole.
            while let Some(next) = self.ooo.remove(&self.ack_nr.wrapping_add(1)) {
                self.ooo_bytes -= next.len();
                self.deliver(&next);
                self.ack_nr = self.ack_nr.wrapping_add(1);
            }
            self.advance_to_fin();
        } else if self.ooo.contains_key(&seq) {
            self.stats.duplicates_received += 1;
        } else if payload.len() <= self.recv_window() {
            self.ooo_bytes += payload.len();
            self.ooo.insert(seq, payload.to_vec());
        } else {
            self.stats.dropped_no_room += 1;
        }
    }

    fn deliver(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let was_empty = self.recv_buf.is_empty();
        self.recv_buf.extend(payload);
        self.stats.bytes_received += payload.len() as u64;
        if was_empty {
            self.events.push_back(ConnEvent::Readable);
        }
    }

    /// The FIN carries no payload but occupies a sequence number: once everything before it is
    /// in, ack it and report the end of the stream.
    fn advance_to_fin(&mut self) {
        if let Some(fin) = self.fin_seq
            && !self.eof
            && self.ack_nr.wrapping_add(1) == fin
        {
            self.ack_nr = fin;
            self.eof = true;
            self.events.push_back(ConnEvent::Finished);
        }
    }

    fn maybe_done(&mut self, now: Instant) {
        if self.fin_acked && self.eof && !self.is_closed() {
            self.close_with(CloseReason::Done);
            self.timers.set(Timer::Linger, now + LINGER);
        }
    }

    fn arm_zero_window(&mut self, now: Instant) {
        if self.peer_wnd < self.max_payload.min(self.send_buf.len().max(1)) && self.cur_window == 0
        {
            if self.timers.get(Timer::ZeroWindow).is_none() {
                self.timers.set(Timer::ZeroWindow, now + ZERO_WINDOW_PROBE);
            }
        } else {
            self.timers.clear(Timer::ZeroWindow);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.timers.expired(Timer::Linger, now) {
            return;
        }
        if self.is_closed() {
            return;
        }
        if self.timers.expired(Timer::Handshake, now) && self.state == State::SynRecv {
            self.drop_outgoing();
            self.close_with(CloseReason::TimedOut);
            return;
        }
        if self.timers.expired(Timer::DelayedAck, now) {
            self.ack_pending = true;
        }
        if self.timers.expired(Timer::ZeroWindow, now) {
            // libutp `zerowindow_time`: assume room for one packet to learn the window again.
            self.peer_wnd = self.max_payload;
        }
        if self.state == State::SynRecv
            && self.outbuf.is_empty()
            && self.timers.expired(Timer::Retransmit, now)
        {
            // No answer to our SYN-ACK yet: send it again (an initiator with nothing to write
            // answers it with one ST_STATE, which loss can take; before this, the acceptor
            // then timed out a connection the initiator believed open: found by the chaos run).
            self.ack_pending = true;
            self.stats.synacks_resent += 1;
            self.back_off();
            self.timers
                .set(Timer::Retransmit, now + self.retransmit_timeout);
        } else if self.timers.expired(Timer::Retransmit, now) {
            self.on_retransmit_timeout(now);
        }
        if self.timers.expired(Timer::Keepalive, now)
            && self.state == State::Connected
            && !self.fin_sent
        {
            // BEP 29 has no keepalive; libutp sends an ST_STATE after 29 s of silence so NAT
            // bindings (often 30 s for UDP) survive.
            self.ack_pending = true;
            self.stats.keepalives_sent += 1;
        }
    }

    /// See [`Endpoint::path_changed`](crate::Endpoint::path_changed).
    pub(crate) fn path_changed(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.retransmit_count = 0;
        self.retransmit_timeout = self.rto;
        if self.outbuf.iter().any(|p| p.sent_at.is_some() && !p.sacked) {
            self.timers.set(Timer::Retransmit, now);
        }
        if self.state == State::SynRecv {
            // An acceptor still waiting for the initiator's answer: the SYN-ACK goes again on
            // the new path at once, and the handshake has its whole time there (the owner
            // moved the connection, so it knows the peer is real).
            self.ack_pending = true;
            self.timers
                .set(Timer::Handshake, now + self.handshake_timeout);
            self.timers
                .set(Timer::Retransmit, now + self.retransmit_timeout);
        }
    }

    /// libutp `check_timeouts`: double the timeout, count every packet in flight as lost,
    /// restart the window and resend the oldest.
    fn on_retransmit_timeout(&mut self, now: Instant) {
        let limit = if matches!(self.state, State::SynSent | State::SynRecv) {
            Some(self.syn_retransmits)
        } else {
            self.data_retransmits
        };
        if limit.is_some_and(|limit| self.retransmit_count >= limit) {
            self.drop_outgoing();
            self.close_with(CloseReason::TimedOut);
            return;
        }
        let in_flight = self.outbuf.iter().any(|p| p.sent_at.is_some() && !p.sacked);
        self.cc.on_timeout(in_flight, self.max_payload);
        self.duplicate_acks = 0;
        // Everything in flight counts as lost below; what follows is slow start, not a
        // recovery (RFC 6582 §4 leaves the timeout to RFC 5681).
        self.recovery = None;
        if !in_flight {
            // Idle: nothing to resend. libutp doubles here too and re-arms, so an idle
            // connection's timeout grows without bound and its next write's first loss waits
            // that long (chaos seed 0: a minute). Back to the estimate; the next send arms it.
            self.retransmit_timeout = self.rto;
            self.timers.clear(Timer::Retransmit);
            return;
        }
        self.back_off();
        for p in self.outbuf.iter_mut() {
            if p.sent_at.is_some() && !p.need_resend && !p.sacked {
                p.need_resend = true;
                self.to_resend += 1;
                self.cur_window -= p.payload.len();
            }
        }
        if in_flight {
            self.retransmit_count = self.retransmit_count.saturating_add(1);
            self.stats.timeouts += 1;
        }
        self.timers
            .set(Timer::Retransmit, now + self.retransmit_timeout);
    }

    /// Doubles the retransmission timeout (BEP 29; RFC 6298 §5.5), up to [`Config::max_rto`]
    /// (RFC 6298 §2.5: a maximum may be placed on it).
    fn back_off(&mut self) {
        self.retransmit_timeout = (self.retransmit_timeout * 2).min(self.max_rto);
    }

    /// Application data into the send buffer; no more than it has room for.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        if self.is_closed() || self.reset_pending {
            return Err(WriteError::Closed);
        }
        if self.close_requested {
            return Err(WriteError::Finished);
        }
        let room = self.send_capacity.saturating_sub(self.buffered_to_send());
        if room == 0 {
            self.write_blocked = true;
            return Err(WriteError::WouldBlock);
        }
        let n = room.min(data.len());
        self.send_buf.extend(&data[..n]);
        Ok(n)
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if self.recv_buf.is_empty() {
            return if self.eof {
                Ok(0)
            } else if matches!(self.state, State::Closed(r) if r != CloseReason::Done) {
                Err(ReadError::Closed)
            } else {
                Err(ReadError::WouldBlock)
            };
        }
        let n = buf.len().min(self.recv_buf.len());
        let (front, back) = self.recv_buf.as_slices();
        let k = front.len().min(n);
        buf[..k].copy_from_slice(&front[..k]);
        buf[k..n].copy_from_slice(&back[..n - k]);
        self.recv_buf.drain(..n);
        // Tell a sender we had stalled that the window opened again.
        if self.last_advertised < self.max_payload && self.recv_window() >= self.max_payload {
            self.ack_pending = true;
        }
        Ok(n)
    }

    pub(crate) fn close(&mut self) {
        self.close_requested = true;
    }

    pub(crate) fn reset(&mut self) {
        if !self.is_closed() {
            self.reset_pending = true;
            self.drop_outgoing();
            self.send_buf.clear();
            self.close_with(CloseReason::ResetLocally);
        }
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        s.rtt = self.rtt;
        s.rto = self.rto;
        s.cwnd = self.cc.cwnd;
        s.our_delay_us = self.cc.last_delay_us;
        s.peer_window = self.peer_wnd;
        s.in_flight = self.cur_window;
        s.send_buffered = self.buffered_to_send();
        s.recv_buffered = self.recv_buf.len() + self.ooo_bytes;
        s
    }

    fn header(&self, kind: PacketType, seq: u16, now_us: u32) -> Repr {
        Repr {
            packet_type: kind,
            connection_id: if kind == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            // BEP 29: a timestamp of 0 reads as "none"; 1 µs late is harmless.
            timestamp: nonzero_us(now_us),
            timestamp_difference: self.reply_micro,
            wnd_size: u32::try_from(self.recv_window()).unwrap_or(u32::MAX),
            seq_nr: seq,
            ack_nr: self.ack_nr,
            selective_ack: None,
        }
    }

    fn emit(&mut self, now: Instant, repr: &Repr, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
        let len = repr.buffer_len() + payload.len();
        if buf.len() < len {
            return None;
        }
        repr.emit(&mut Packet::new_unchecked(&mut buf[..len]));
        buf[repr.buffer_len()..len].copy_from_slice(payload);
        self.ack_pending = false;
        // Every packet we send acks what we have.
        self.delayed_acks = 0;
        self.timers.clear(Timer::DelayedAck);
        self.last_advertised = repr.wnd_size as usize;
        self.stats.packets_sent += 1;
        if self.state != State::SynSent && !self.is_closed() {
            self.timers.set(Timer::Keepalive, now + self.keepalive);
        }
        Some(len)
    }

    /// The next packet to send, written into `buf`: a reset, the SYN or a lost packet, new
    /// data or the FIN as the windows allow, else an ack.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        now_us: u32,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.reset_pending {
            self.reset_pending = false;
            let repr = self.header(PacketType::Reset, self.seq_nr, now_us);
            return self.emit(now, &repr, &[], buf);
        }
        if self.is_closed() {
            if self.ack_pending {
                let repr = self.header(PacketType::State, self.seq_nr, now_us);
                return self.emit(now, &repr, &[], buf);
            }
            return None;
        }
        if let Some(len) = self.poll_resend(now, now_us, buf) {
            return Some(len);
        }
        if let Some(len) = self.poll_new(now, now_us, buf) {
            return Some(len);
        }
        if self.ack_pending && self.state != State::SynSent {
            // An acceptor not yet confirmed answers every SYN with the SYN-ACK's own seq_nr
            // (its first data seq), even after writing: an initiator that lost the first
            // SYN-ACK takes `seq_nr - 1` as received, so a later seq_nr would make it skip the
            // data sent meanwhile (the chaos run: "seq 1 as message 0" after a lost SYN-ACK).
            let seq = if self.state == State::SynRecv {
                self.syn_seq.wrapping_add(1)
            } else {
                self.seq_nr
            };
            let mut repr = self.header(PacketType::State, seq, now_us);
            if !self.ooo.is_empty() {
                let mut sack = SelectiveAck::new(SACK_BYTES);
                for i in 0..sack.capacity() {
                    if self
                        .ooo
                        .contains_key(&self.ack_nr.wrapping_add(2 + i as u16))
                    {
                        sack.set(i);
                    }
                }
                repr.selective_ack = Some(sack);
            }
            return self.emit(now, &repr, &[], buf);
        }
        None
    }

    fn window_room(&self) -> usize {
        self.cc
            .cwnd
            .min(self.peer_wnd)
            .saturating_sub(self.cur_window)
    }

    fn poll_resend(&mut self, now: Instant, now_us: u32, buf: &mut [u8]) -> Option<usize> {
        if self.to_resend == 0 {
            return None;
        }
        let idx = self.outbuf.iter().position(|p| p.need_resend)?;
        self.send_packet(now, now_us, idx, buf)
    }

    /// Sends `outbuf[idx]`, which needs (re)sending, if the window allows.
    fn send_packet(
        &mut self,
        now: Instant,
        now_us: u32,
        idx: usize,
        buf: &mut [u8],
    ) -> Option<usize> {
        debug_assert!(self.outbuf[idx].need_resend);
        let len = self.outbuf[idx].payload.len();
        // The oldest unacked packet always goes (it is what the timeout or the duplicate acks
        // are about); others wait for room in the window.
        let oldest = self.outbuf.iter().position(|p| !p.sacked) == Some(idx);
        if !oldest && len > self.window_room() {
            self.last_window_limited = Some(now);
            return None;
        }
        let (kind, seq) = (self.outbuf[idx].kind, self.outbuf[idx].seq);
        let repr = self.header(kind, seq, now_us);
        let payload = std::mem::take(&mut self.outbuf[idx].payload);
        let written = self.emit(now, &repr, &payload, buf);
        let p = &mut self.outbuf[idx];
        p.payload = payload;
        written?;
        if p.transmissions > 0 {
            self.stats.packets_resent += 1;
        }
        p.transmissions += 1;
        p.sent_at = Some(now);
        p.need_resend = false;
        self.to_resend -= 1;
        self.cur_window += len;
        if self.timers.get(Timer::Retransmit).is_none() {
            self.timers
                .set(Timer::Retransmit, now + self.retransmit_timeout);
        }
        written
    }

    fn poll_new(&mut self, now: Instant, now_us: u32, buf: &mut [u8]) -> Option<usize> {
        if matches!(self.state, State::SynSent) || self.to_resend > 0 {
            return None;
        }
        // Sequence space: never more than the reorder limit in flight.
        if self.outbuf.len() >= usize::from(REORDER_LIMIT) - 1 {
            return None;
        }
        if !self.send_buf.is_empty() {
            let mut room = self.window_room();
            if self.cur_window == 0 {
                // A window below one packet must not stall us (libutp sends one packet; the
                // timeout then resets the window to one packet).
                room = room.max(self.max_payload.min(self.peer_wnd));
            }
            let len = self.send_buf.len().min(self.max_payload).min(room);
            // No Nagle, but no silly windows either: a partial packet goes only if it is all
            // we have or nothing is in flight.
            if len == 0
                || (len < self.max_payload && len < self.send_buf.len() && self.cur_window > 0)
            {
                self.last_window_limited = Some(now);
                return None;
            }
            // Slice copies: collecting the drain went byte by byte.
            let mut payload = Vec::with_capacity(len);
            let (front, back) = self.send_buf.as_slices();
            let k = front.len().min(len);
            payload.extend_from_slice(&front[..k]);
            payload.extend_from_slice(&back[..len - k]);
            self.send_buf.drain(..len);
            return self.push_and_send(now, now_us, PacketType::Data, payload, buf);
        }
        if self.close_requested && !self.fin_sent {
            self.fin_sent = true;
            return self.push_and_send(now, now_us, PacketType::Fin, Vec::new(), buf);
        }
        None
    }

    fn push_and_send(
        &mut self,
        now: Instant,
        now_us: u32,
        kind: PacketType,
        payload: Vec<u8>,
        buf: &mut [u8],
    ) -> Option<usize> {
        let seq = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        if kind == PacketType::Data {
            self.stats.bytes_sent += payload.len() as u64;
        }
        self.push_outgoing(Outgoing::unsent(seq, kind, payload));
        if self.to_resend == 1 {
            // Only the packet just queued waits: it is the last, no need to look for it.
            self.send_packet(now, now_us, self.outbuf.len() - 1, buf)
        } else {
            self.poll_resend(now, now_us, buf)
        }
    }
}
