//! A FogConnect KCP connection: a [`Kcp`] behind framing byte 4, with the hello and the close
//! KCP itself lacks (see the crate docs, "FogConnect connections", for the wire form).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fog_core::FogFraming;

use crate::config::Config;
use crate::kcp::{Event as KcpEvent, Kcp, PacketError, RecvError, SendError};
use crate::timer::{TimerKind, TimerTable};
use crate::wire::{Command, HEADER_LEN, SegmentRepr, Segments};

/// The version a hello carries (its one data byte).
pub const VERSION: u8 = 1;
/// `sn` of a hello or close; its answer carries [`ANSWER`].
const REQUEST: u32 = 0;
const ANSWER: u32 = 1;
/// First retransmission of a hello or close; each later one waits twice as long, up to
/// [`CONTROL_RTO_MAX`].
const CONTROL_RTO: Duration = Duration::from_millis(200);
/// The longest wait between two transmissions of a hello or close (RFC 9260's RTO.Max is
/// 60 s, but these go on a path ICE has just checked: a lost one is loss, not a dead peer).
const CONTROL_RTO_MAX: Duration = Duration::from_millis(3200);
/// Transmissions of a hello or close before giving up: about 28.6 s in all, near the node's
/// 30 s connect timeout. Six, 12.6 s, failed one connection in the chaos run's 3,000 seeds
/// on links that lost a fifth of the round trips (seed 2559).
const CONTROL_TRIES: u32 = 12;

/// The wait after the `n`-th transmission (from 1) of a hello or close.
fn control_wait(n: u32) -> Duration {
    CONTROL_RTO
        .saturating_mul(1 << (n - 1).min(16))
        .min(CONTROL_RTO_MAX)
}

/// Which side opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the hello and retransmits it until answered.
    Initiator,
    /// Answers hellos; established at the first one.
    Responder,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Our close, after all our data was acknowledged, was answered.
    Local,
    /// Our close was never answered (all our data had been acknowledged).
    LocalUnanswered,
    /// The peer closed after all its data reached us; unread data stays readable.
    Peer,
    /// The hello was never answered.
    HandshakeTimeout,
    /// A segment went unacknowledged [`Config::dead_link`] times.
    DeadLink,
}

/// What a connection tells the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; data flows.
    Connected,
    /// Data arrived; call [`Connection::recv`] until it returns `None`.
    Readable,
    /// The connection ended. Reported once; nothing is sent afterwards except answers to a
    /// peer's repeated close.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Retransmit the hello.
    Hello,
    /// Retransmit the close.
    Close,
}

impl TimerKind for Timer {
    const COUNT: usize = 2;
    fn index(self) -> usize {
        self as usize
    }
}

/// A retransmitted control request: how often it went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tries(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Initiator: hello sent, no answer yet. Responder: no hello yet.
    Handshaking(Tries),
    Established,
    /// `close` was called; the close goes out once all data is acknowledged (`None` until then).
    Closing(Option<Tries>),
    Closed(CloseReason),
}

/// Control segments waiting for `poll_transmit`, as flags: at most one of each.
const OUT_HELLO: u8 = 1;
const OUT_HELLO_ANSWER: u8 = 2;
const OUT_CLOSE: u8 = 4;
const OUT_CLOSE_ANSWER: u8 = 8;

/// One FogConnect KCP connection, sans-IO. Datagrams in and out carry framing byte 4
/// ([`FogFraming::Kcp`]).
#[derive(Debug)]
pub struct Connection {
    kcp: Kcp,
    role: Role,
    phase: Phase,
    control_out: u8,
    /// `close` was called during the handshake with data queued: the hello goes on, and the
    /// close follows once the data is acknowledged (data must never flow unannounced: a
    /// responder that saw no hello refuses it).
    close_after_hello: bool,
    timers: TimerTable<{ Timer::COUNT }>,
    events: VecDeque<Event>,
}

impl Connection {
    /// A connection on conversation `conv` (agreed out of band, by signaling).
    ///
    /// # Panics
    /// When `config` does not [validate](Config::validate).
    pub fn new(conv: u32, config: Config, role: Role, now: Instant) -> Self {
        let mut timers = TimerTable::new();
        let mut control_out = 0;
        if role == Role::Initiator {
            control_out = OUT_HELLO;
            timers.set(Timer::Hello, now + CONTROL_RTO);
        }
        Self {
            kcp: Kcp::new(conv, config, now),
            role,
            phase: Phase::Handshaking(Tries(1)),
            control_out,
            close_after_hello: false,
            timers,
            events: VecDeque::new(),
        }
    }

    /// The KCP machine inside (stats, queue lengths).
    pub fn kcp(&self) -> &Kcp {
        &self.kcp
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether data flows (after the handshake, before a close).
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Queues data ([`Kcp::send`]); allowed during the handshake (it leaves once connected),
    /// refused once closing.
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        match self.phase {
            Phase::Handshaking(_) if self.close_after_hello => Err(SendError::Closed),
            Phase::Handshaking(_) | Phase::Established => self.kcp.send(data),
            Phase::Closing(_) | Phase::Closed(_) => Err(SendError::Closed),
        }
    }

    /// [`send`](Self::send) at `now`: the flush it arms is due at `now`, not at the last
    /// instant the machine was driven.
    pub fn send_at(&mut self, now: Instant, data: &[u8]) -> Result<(), SendError> {
        if self.data_flows() {
            self.kcp.catch_up(now);
        }
        self.send(data)
    }

    /// Reads received data ([`Kcp::recv`]), also after the connection closed.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        self.kcp.recv(buf)
    }

    /// Starts a graceful close: no more sends; once everything sent is acknowledged, the close
    /// goes out, and [`Event::Closed`] follows its answer (or its last retransmission). During
    /// the handshake with data queued, the handshake completes first (or times out).
    pub fn close(&mut self, now: Instant) {
        match self.phase {
            Phase::Handshaking(_) if self.kcp.waiting_to_send() > 0 => {
                self.close_after_hello = true;
            }
            Phase::Handshaking(_) | Phase::Established => {
                self.timers.clear(Timer::Hello);
                self.control_out &= !OUT_HELLO;
                self.phase = Phase::Closing(None);
                self.progress(now);
            }
            Phase::Closing(_) | Phase::Closed(_) => {}
        }
    }

    fn data_flows(&self) -> bool {
        matches!(self.phase, Phase::Established | Phase::Closing(_))
    }

    /// Takes one framed datagram.
    pub fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> Result<(), PacketError> {
        let inner = FogFraming::Kcp
            .unframe(datagram)
            .ok_or(PacketError::NotPlainKcp)?;
        let first = Segments::new(inner).next();
        let control = match first {
            Some(Ok((repr, data))) if !repr.cmd.is_ikcp() => Some((repr, data)),
            _ => None,
        };
        if let Some((repr, data)) = control {
            self.handle_control(now, &repr, data, inner)?;
            self.progress(now);
            return Ok(());
        }
        match self.phase {
            Phase::Handshaking(_) if self.role == Role::Initiator => {
                // The responder only sends data once it saw our hello: its answer was lost.
                // Check the datagram first so that garbage cannot open the connection.
                self.kcp.handle_packet(now, inner)?;
                self.establish(now);
            }
            Phase::Handshaking(_) => return Err(PacketError::NotConnected),
            Phase::Established | Phase::Closing(_) => self.kcp.handle_packet(now, inner)?,
            Phase::Closed(_) => return Err(PacketError::NotConnected),
        }
        self.take_kcp_events();
        self.progress(now);
        Ok(())
    }

    fn handle_control(
        &mut self,
        now: Instant,
        repr: &SegmentRepr,
        data: &[u8],
        inner: &[u8],
    ) -> Result<(), PacketError> {
        if repr.conv != self.kcp.conv() {
            return Err(PacketError::WrongConv {
                expected: self.kcp.conv(),
                got: repr.conv,
            });
        }
        // A control segment travels alone in its datagram.
        if inner.len() != HEADER_LEN + data.len() || repr.sn > ANSWER {
            return Err(PacketError::NotPlainKcp);
        }
        match (repr.cmd, repr.sn) {
            (Command::FogHello, REQUEST) => {
                if data != [VERSION] {
                    return Err(PacketError::UnsupportedVersion(
                        data.first().copied().unwrap_or(0),
                    ));
                }
                match self.phase {
                    Phase::Closed(_) => return Err(PacketError::NotConnected),
                    Phase::Handshaking(_) => self.establish(now),
                    Phase::Established | Phase::Closing(_) => {}
                }
                self.control_out |= OUT_HELLO_ANSWER;
            }
            (Command::FogHello, _) => {
                if let Phase::Handshaking(_) = self.phase {
                    if self.role == Role::Initiator {
                        self.establish(now);
                    }
                }
            }
            (Command::FogClose, REQUEST) => {
                // The peer only closes once all its data was acknowledged: everything it sent
                // is here. Answer every copy, also after we closed, since answers get lost.
                self.control_out |= OUT_CLOSE_ANSWER;
                if !matches!(self.phase, Phase::Closed(_)) {
                    self.finish(CloseReason::Peer);
                }
            }
            (Command::FogClose, _) => {
                if let Phase::Closing(Some(_)) = self.phase {
                    self.finish(CloseReason::Local);
                }
            }
            _ => return Err(PacketError::NotPlainKcp),
        }
        Ok(())
    }

    fn establish(&mut self, now: Instant) {
        // The data machine was not driven during the handshake: what it planned is due now.
        self.kcp.catch_up(now);
        self.timers.clear(Timer::Hello);
        self.control_out &= !OUT_HELLO;
        self.events.push_back(Event::Connected);
        // A close asked for during the handshake: the data flows now, then the close
        // (`progress`, which every caller runs next).
        self.phase = if self.close_after_hello {
            Phase::Closing(None)
        } else {
            Phase::Established
        };
    }

    fn finish(&mut self, reason: CloseReason) {
        self.timers.clear(Timer::Hello);
        self.timers.clear(Timer::Close);
        self.control_out &= !(OUT_HELLO | OUT_CLOSE);
        self.phase = Phase::Closed(reason);
        self.events.push_back(Event::Closed(reason));
    }

    fn take_kcp_events(&mut self) {
        while let Some(event) = self.kcp.poll_event() {
            match event {
                KcpEvent::Readable => {
                    if !self.events.contains(&Event::Readable) {
                        self.events.push_back(Event::Readable);
                    }
                }
                KcpEvent::DeadLink => {
                    if !matches!(self.phase, Phase::Closed(_)) {
                        self.finish(CloseReason::DeadLink);
                    }
                }
            }
        }
    }

    /// Sends the close once a closing connection has nothing left unacknowledged.
    fn progress(&mut self, now: Instant) {
        if self.phase == Phase::Closing(None) && self.kcp.waiting_to_send() == 0 {
            self.phase = Phase::Closing(Some(Tries(1)));
            self.control_out |= OUT_CLOSE;
            self.timers.set(Timer::Close, now + CONTROL_RTO);
        }
    }

    /// Fires the deadlines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.is_due(Timer::Hello, now) {
            if let Phase::Handshaking(Tries(n)) = self.phase {
                if n >= CONTROL_TRIES {
                    self.finish(CloseReason::HandshakeTimeout);
                } else {
                    self.phase = Phase::Handshaking(Tries(n + 1));
                    self.control_out |= OUT_HELLO;
                    self.timers.set(Timer::Hello, now + control_wait(n + 1));
                }
            } else {
                self.timers.clear(Timer::Hello);
            }
        }
        if self.timers.is_due(Timer::Close, now) {
            if let Phase::Closing(Some(Tries(n))) = self.phase {
                if n >= CONTROL_TRIES {
                    self.finish(CloseReason::LocalUnanswered);
                } else {
                    self.phase = Phase::Closing(Some(Tries(n + 1)));
                    self.control_out |= OUT_CLOSE;
                    self.timers.set(Timer::Close, now + control_wait(n + 1));
                }
            } else {
                self.timers.clear(Timer::Close);
            }
        }
        if self.data_flows() {
            self.kcp.handle_timeout(now);
            self.take_kcp_events();
        }
        self.progress(now);
    }

    /// The earliest deadline: ours, and the KCP machine's while data flows.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let kcp = if self.data_flows() {
            self.kcp.poll_timeout()
        } else {
            None
        };
        [self.timers.next(), kcp].into_iter().flatten().min()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Writes the next framed datagram into `buf` and returns its length.
    ///
    /// # Panics
    /// When `buf` is shorter than the MTU plus the framing byte.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        assert!(
            buf.len() > self.kcp.config().mtu,
            "poll_transmit: buffer shorter than the MTU plus the framing byte"
        );
        buf[0] = FogFraming::Kcp.byte();
        for (flag, cmd, sn) in [
            (OUT_HELLO, Command::FogHello, REQUEST),
            (OUT_HELLO_ANSWER, Command::FogHello, ANSWER),
            (OUT_CLOSE, Command::FogClose, REQUEST),
            (OUT_CLOSE_ANSWER, Command::FogClose, ANSWER),
        ] {
            if self.control_out & flag != 0 {
                self.control_out &= !flag;
                let payload: &[u8] = if cmd == Command::FogHello && sn == REQUEST {
                    &[VERSION]
                } else {
                    &[]
                };
                let repr = SegmentRepr {
                    conv: self.kcp.conv(),
                    cmd,
                    frg: 0,
                    wnd: 0,
                    ts: self.kcp.wire_clock(),
                    sn,
                    una: 0,
                    len: payload.len() as u32,
                };
                return Some(1 + repr.emit(payload, &mut buf[1..]));
            }
        }
        if !self.data_flows() {
            return None;
        }
        self.kcp.poll_transmit(now, &mut buf[1..]).map(|n| n + 1)
    }
}
