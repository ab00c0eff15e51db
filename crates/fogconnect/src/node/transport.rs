//! The transport a connection runs on its path, once the path exists.
//!
//! [`Transport::Datagram`] is the node's own service: each `send` is one sealed, unreliable
//! datagram. [`Transport::Kcp`] runs a fog-kcp connection (message mode, reliable and
//! ordered) whose datagrams, framing byte 4 first, ride inside the session's sealed format
//! ([`seal::Kind::Transport`]) on whatever path the connection has: direct, through TURN, or
//! through the signaling server. A path change moves them with it; KCP itself never sees an
//! address. Its conversation number is the first four bytes of the session id, which both
//! sides know; the session tags keep sessions apart, not it.
//!
//! A close on a KCP connection is graceful: the node waits until the peer acknowledged
//! everything sent and answered KCP's close (or gave up on it), then closes the connection
//! as for datagrams, with the caller's code and reason.

use std::time::Instant;

use fog_kcp::{
    CloseReason as KcpClose, Config as KcpConfig, ConnEvent as KcpEvent, Connection as Kcp,
    RecvError, Role, SendError as KcpSendError,
};
use fog_signal::msg::{SessionId, Transport};

use super::MAX_DATAGRAM;
use super::event::SendError;
use super::quic::Quic;

/// The transports this node can run: every other is refused when asked for.
pub(super) fn supported(t: &Transport) -> bool {
    matches!(t, Transport::Datagram | Transport::Kcp | Transport::Quic)
}

/// A connection's transport machine.
#[derive(Debug)]
pub(super) enum Stream {
    Kcp(Box<Kcp>),
    Quic(Box<Quic>),
}

/// What a stream asks of its connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Happened {
    /// A message arrived, in order.
    Data(Vec<u8>),
    /// Our graceful close completed (or gave up): the connection may close now.
    CloseDone,
    /// The peer closed its side after all its data reached us.
    PeerClosed,
    /// The transport gave up on the path: nothing was acknowledged for too long.
    Dead,
}

impl Stream {
    /// The stream `transport` runs for the connection of `session`, or `None` for the node's
    /// own datagrams. The caller (offerer) opens.
    pub(super) fn new(
        transport: &Transport,
        session: SessionId,
        caller: bool,
        now: Instant,
    ) -> Option<Stream> {
        match transport {
            Transport::Kcp => {
                let conv =
                    u32::from_be_bytes([session.0[0], session.0[1], session.0[2], session.0[3]]);
                // The framing byte goes first inside the sealed datagram.
                // The receive window has room for one whole message's fragments (ikcp caps a
                // message at 127) beyond the sender's window: fragments of a half-received
                // message sit in the receive queue and shrink the window advertised, which
                // cost large messages about 30 % in the simulator (benches/sim_transfer.rs).
                let config = KcpConfig::fast()
                    .with_mtu(MAX_DATAGRAM - 1)
                    .with_windows(128, 128 + 127);
                let role = if caller {
                    Role::Initiator
                } else {
                    Role::Responder
                };
                Some(Stream::Kcp(Box::new(Kcp::new(conv, config, role, now))))
            }
            _ => None,
        }
    }

    /// Queues one message.
    pub(super) fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        match self {
            Stream::Kcp(kcp) => kcp.send(data).map_err(|e| match e {
                KcpSendError::MessageTooLarge { .. } => SendError::TooLong,
                KcpSendError::Blocked { .. } => SendError::Blocked,
                KcpSendError::DeadLink | KcpSendError::Closed => SendError::NotConnected,
            }),
            Stream::Quic(quic) => quic.send(data),
        }
    }

    /// Whether a sender told `Blocked` may try again (half the queue is free).
    pub(super) fn has_room(&self) -> bool {
        match self {
            Stream::Kcp(kcp) => {
                kcp.kcp().waiting_to_send() < kcp.kcp().config().send_queue_limit / 2
            }
            Stream::Quic(quic) => quic.has_room(),
        }
    }

    /// One of its datagrams arrived (unsealed, framing byte first). Malformed ones are the
    /// peer's fault and counted by the machine.
    pub(super) fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> bool {
        match self {
            Stream::Kcp(kcp) => kcp.handle_packet(now, datagram).is_ok(),
            Stream::Quic(quic) => quic.handle_packet(now, datagram),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self {
            Stream::Kcp(kcp) => kcp.handle_timeout(now),
            Stream::Quic(quic) => quic.handle_timeout(now),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Stream::Kcp(kcp) => kcp.poll_timeout(),
            Stream::Quic(quic) => quic.poll_timeout(),
        }
    }

    /// Its next datagram into `buf` (framing byte first): its length.
    pub(super) fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self {
            Stream::Kcp(kcp) => kcp.poll_transmit(now, buf),
            Stream::Quic(quic) => quic.poll_transmit(now, buf),
        }
    }

    /// Starts the graceful close.
    pub(super) fn close(&mut self, now: Instant) {
        match self {
            Stream::Kcp(kcp) => kcp.close(now),
            Stream::Quic(quic) => quic.close(now),
        }
    }

    /// What happened since the last call: messages in order, then the end, if any.
    pub(super) fn poll(&mut self) -> Vec<Happened> {
        let mut out = Vec::new();
        match self {
            Stream::Kcp(kcp) => {
                while let Some(event) = kcp.poll_event() {
                    match event {
                        KcpEvent::Connected => {}
                        KcpEvent::Readable => read_all(kcp, &mut out),
                        KcpEvent::Closed(reason) => {
                            // A closed connection's unread data stays readable.
                            read_all(kcp, &mut out);
                            out.push(match reason {
                                KcpClose::Local | KcpClose::LocalUnanswered => Happened::CloseDone,
                                KcpClose::Peer => Happened::PeerClosed,
                                _ => Happened::Dead,
                            });
                        }
                    }
                }
            }
            Stream::Quic(quic) => out = quic.poll(),
        }
        out
    }
}

/// Every whole message waiting in `kcp`.
fn read_all(kcp: &mut Kcp, out: &mut Vec<Happened>) {
    let mut buf = [0u8; 2048];
    loop {
        match kcp.recv(&mut buf) {
            Ok(Some(n)) => out.push(Happened::Data(buf[..n].to_vec())),
            Ok(None) => return,
            Err(RecvError::BufferTooSmall { needed }) => {
                let mut big = vec![0u8; needed];
                match kcp.recv(&mut big) {
                    Ok(Some(n)) => {
                        big.truncate(n);
                        out.push(Happened::Data(big));
                    }
                    _ => return,
                }
            }
        }
    }
}
