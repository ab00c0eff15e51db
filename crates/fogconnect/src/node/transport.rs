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
//! [`Transport::Utp`] runs a fog-utp endpoint of one connection the same way (framing byte 5
//! before each uTP packet inside the seal, the peer at a nominal address since the seal says
//! who it is): each `send` is appended to an ordered, reliable byte stream under LEDBAT, so
//! the receiver's [`Event::Data`](super::Event::Data) chunks need not match the sends. A
//! node's connection closes whole, so the peer's FIN is answered with ours (after what we
//! sent) at once.
//!
//! [`Transport::Rtc`] runs a fog-rtc peer (WebRTC data channels) the same way, inside the seal
//! (`rtc.rs`).
//!
//! [`Transport::Sctp`] runs a fog-sctp association (framing byte 6 before each SCTP packet
//! inside the seal, the peer at a nominal address as for uTP): each `send` is one message on
//! stream 0, reliable and ordered, and each message arrives whole as one
//! [`Event::Data`](super::Event::Data). The caller sends the INIT; the answerer accepts it.
//! Its graceful close waits until everything sent is acknowledged, then runs SCTP's shutdown
//! (RFC 9260 §9.2); an association that hears nothing for fog-sctp's `dead_after` with data
//! unacknowledged is a dead path.
//!
//! A close on any of them is graceful: the node waits until the peer acknowledged everything sent
//! and answered the transport's close (or it gave up), then closes the connection as for
//! datagrams, with the caller's code and reason.

use std::time::{Duration, Instant};

use fog_kcp::{
    CloseReason as KcpClose, Config as KcpConfig, ConnEvent as KcpEvent, Connection as Kcp,
    RecvError, Role, SendError as KcpSendError,
};
use std::net::{Ipv4Addr, SocketAddr};

use fog_core::FogFraming;
use fog_signal::msg::{SessionId, Transport};
use fog_utp::{
    CloseReason as UtpClose, Config as UtpConfig, ConnectionHandle, Endpoint as Utp,
    Event as UtpEvent, WriteError,
};

use fog_sctp::{
    Association as Sctp, CloseReason as SctpClose, Config as SctpConfig, Event as SctpEvent,
    SendError as SctpSendError, StreamConfig as SctpStreamConfig,
};

use super::MAX_DATAGRAM;
use super::event::SendError;
use super::quic::Quic;
use super::rtc::Rtc;

/// The transports this node can run: every other is refused when asked for.
pub(super) fn supported(t: &Transport) -> bool {
    matches!(
        t,
        Transport::Datagram
            | Transport::Kcp
            | Transport::Quic
            | Transport::Utp
            | Transport::Rtc
            | Transport::Sctp
    )
}

/// The address a connection's uTP endpoint knows its one peer by (the seal has already said
/// who sent a datagram; uTP only needs a key).
const UTP_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5);

/// The address a connection's SCTP association knows its peer by (as for uTP: the seal has
/// said who sent a datagram).
const SCTP_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 6);

/// The SCTP stream a node's messages travel on, both ways.
const SCTP_STREAM: u16 = 0;

/// A uTP endpoint of one connection.
#[derive(Debug)]
pub(super) struct UtpStream {
    endpoint: Utp,
    /// The connection, once opened (the caller's at once, the answerer's at the SYN).
    conn: Option<ConnectionHandle>,
    send_buffer: usize,
    /// `close` came before any connection: report the close done at the next poll.
    closed_early: bool,
    /// `close` was called: our FIN follows our data, and the end is uTP's `Done`.
    closing: bool,
}

/// A connection's transport machine.
#[derive(Debug)]
pub(super) enum Stream {
    Kcp(Box<Kcp>),
    Quic(Box<Quic>),
    Utp(Box<UtpStream>),
    Rtc(Box<Rtc>),
    Sctp(Box<Sctp>),
}

/// What a stream asks of its connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Happened {
    /// A browser's channel opened: the connection is up (only a browser's peer says it; the
    /// others start on a path that is already there).
    Opened,
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
        seed: [u8; 32],
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
                let mut config = KcpConfig::fast()
                    .with_mtu(MAX_DATAGRAM - 1)
                    .with_windows(128, 128 + 127);
                // A reliable transport here never gives up on its own while the node's path to
                // the peer is alive: its idle timeout and consent checks (RFC 7675) end a
                // connection whose peer is gone, with that reason (a relayed path of 16 % loss
                // lost every ack of four uTP retransmissions in the chaos run, seed 1641).
                config.dead_link = u32::MAX;
                // ...and a segment goes again at least every 4 s, as uTP's and SCTP's data do
                // here, so a path that comes back after an outage is used within seconds.
                config.max_segment_rto = 4_000;
                let role = if caller {
                    Role::Initiator
                } else {
                    Role::Responder
                };
                Some(Stream::Kcp(Box::new(Kcp::new(conv, config, role, now))))
            }
            Transport::Utp => {
                let mut config = UtpConfig::with_seed(seed);
                config.max_connections = 1;
                config.accept = !caller;
                // The framing byte goes first inside the sealed datagram.
                config.max_packet_size = MAX_DATAGRAM - 1;
                // Never given up by uTP itself (see KCP's `dead_link` above), and resent at
                // least every 4 s (SCTP's `rto_max` here), so a path that comes back is used
                // within seconds.
                config.data_retransmits = None;
                config.max_rto = Duration::from_secs(4);
                let send_buffer = config.send_buffer;
                let mut endpoint = Utp::new(config, now);
                let conn = if caller {
                    endpoint.connect(now, UTP_PEER).ok()
                } else {
                    None
                };
                Some(Stream::Utp(Box::new(UtpStream {
                    endpoint,
                    conn,
                    send_buffer,
                    closed_early: false,
                    closing: false,
                })))
            }
            Transport::Sctp => {
                let config = SctpConfig {
                    // The framing byte goes first inside the sealed datagram.
                    max_packet: MAX_DATAGRAM - 1,
                    // Past consent's 30 s: a dead direct path moves to the relay before the
                    // association would give up on it (the node's own idle timeout, 45 s by
                    // default, reports a silent peer).
                    dead_after: Duration::from_secs(40),
                    ..SctpConfig::default()
                };
                let mut assoc = if caller {
                    Sctp::connect(now, config, SCTP_PEER)
                } else {
                    Sctp::accept(now, config, SCTP_PEER)
                };
                // Stream 0 is below any `max_streams`, and nothing is closing yet.
                let _ = assoc.open_stream(SCTP_STREAM, SctpStreamConfig::default());
                Some(Stream::Sctp(Box::new(assoc)))
            }
            _ => None,
        }
    }

    /// Whether this is QUIC, whose packets travel tagged rather than sealed.
    pub(super) fn is_quic(&self) -> bool {
        matches!(self, Stream::Quic(_))
    }

    /// Whether `packet` (of this stream, to send or received) travels behind the session tag
    /// alone, not sealed: QUIC's always, an RTC connection's DTLS application data (`rtc.rs`).
    pub(super) fn protects_itself(&self, packet: &[u8]) -> bool {
        match self {
            Stream::Quic(_) => true,
            Stream::Rtc(rtc) => rtc.protects_itself(packet),
            _ => false,
        }
    }

    /// Queues one message the caller hands over (QUIC keeps the buffer; the others copy it).
    pub(super) fn send_vec(&mut self, now: Instant, data: Vec<u8>) -> Result<(), SendError> {
        match self {
            Stream::Quic(quic) => quic.send_vec(data),
            _ => self.send(now, &data),
        }
    }

    /// Queues one message.
    pub(super) fn send(&mut self, now: Instant, data: &[u8]) -> Result<(), SendError> {
        match self {
            Stream::Kcp(kcp) => kcp.send_at(now, data).map_err(|e| match e {
                KcpSendError::MessageTooLarge { .. } => SendError::TooLong,
                KcpSendError::Blocked { .. } => SendError::Blocked,
                KcpSendError::DeadLink | KcpSendError::Closed => SendError::NotConnected,
            }),
            Stream::Quic(quic) => quic.send(data),
            Stream::Rtc(rtc) => rtc.send(now, data),
            Stream::Utp(u) => {
                // The answerer's connection exists from the caller's SYN on; until then the
                // sender waits for `Writable`.
                let conn = u.conn.ok_or(SendError::Blocked)?;
                // All or nothing: a send is never cut in two.
                let buffered = u.endpoint.stats(conn).map_or(0, |s| s.send_buffered);
                if buffered + data.len() > u.send_buffer {
                    return Err(if data.len() > u.send_buffer {
                        SendError::TooLong
                    } else {
                        SendError::Blocked
                    });
                }
                match u.endpoint.write(conn, data) {
                    Ok(_) => Ok(()),
                    Err(WriteError::WouldBlock) => Err(SendError::Blocked),
                    Err(_) => Err(SendError::NotConnected),
                }
            }
            // Before the handshake completes the association keeps sends, in order.
            Stream::Sctp(a) => a.send(now, SCTP_STREAM, data).map_err(|e| match e {
                SctpSendError::TooLong => SendError::TooLong,
                SctpSendError::Blocked => SendError::Blocked,
                SctpSendError::UnknownStream | SctpSendError::Closed => SendError::NotConnected,
            }),
        }
    }

    /// Whether a sender told `Blocked` may try again (half the queue is free).
    pub(super) fn has_room(&mut self) -> bool {
        match self {
            Stream::Kcp(kcp) => {
                kcp.kcp().waiting_to_send() < kcp.kcp().config().send_queue_limit / 2
            }
            Stream::Quic(quic) => quic.has_room(),
            Stream::Rtc(rtc) => rtc.has_room(),
            Stream::Utp(u) => u.conn.is_some_and(|c| {
                u.endpoint
                    .stats(c)
                    .is_some_and(|s| s.send_buffered < u.send_buffer / 2)
            }),
            Stream::Sctp(a) => a.has_room(),
        }
    }

    /// One of its datagrams arrived (unsealed, framing byte first). Malformed ones are the
    /// peer's fault and counted by the machine.
    pub(super) fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> bool {
        match self {
            Stream::Kcp(kcp) => kcp.handle_packet(now, datagram).is_ok(),
            Stream::Quic(quic) => quic.handle_packet(now, datagram),
            Stream::Rtc(rtc) => rtc.handle_packet(now, datagram),
            Stream::Utp(u) => match FogFraming::Utp.unframe(datagram) {
                Some(inner) => {
                    u.endpoint.handle_packet(now, UTP_PEER, inner);
                    true
                }
                None => false,
            },
            Stream::Sctp(a) => match FogFraming::Sctp.unframe(datagram) {
                Some(inner) => a.handle_packet(now, SCTP_PEER, inner).is_ok(),
                None => false,
            },
        }
    }

    /// The connection moved to another path: transports that back off on a dead path start
    /// afresh on the new one (uTP's timer would otherwise give up just after the move).
    pub(super) fn path_changed(&mut self, now: Instant) {
        match self {
            Stream::Utp(u) => {
                if let Some(conn) = u.conn {
                    u.endpoint.path_changed(now, conn);
                }
            }
            Stream::Quic(q) => q.path_changed(now),
            Stream::Sctp(a) => a.path_changed(now),
            // KCP's timers do not back off past its own bound; str0m's SCTP has no handle for
            // this: its retransmission timer runs its course.
            Stream::Kcp(_) | Stream::Rtc(_) => {}
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self {
            Stream::Kcp(kcp) => kcp.handle_timeout(now),
            Stream::Quic(quic) => quic.handle_timeout(now),
            Stream::Rtc(rtc) => rtc.handle_timeout(now),
            Stream::Utp(u) => u.endpoint.handle_timeout(now),
            Stream::Sctp(a) => a.handle_timeout(now),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Stream::Kcp(kcp) => kcp.poll_timeout(),
            Stream::Quic(quic) => quic.poll_timeout(),
            Stream::Rtc(rtc) => rtc.poll_timeout(),
            Stream::Utp(u) => u.endpoint.poll_timeout(),
            Stream::Sctp(a) => a.poll_timeout(),
        }
    }

    /// Its next datagram into `buf` (framing byte first): its length.
    pub(super) fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self {
            Stream::Kcp(kcp) => kcp.poll_transmit(now, buf),
            Stream::Quic(quic) => quic.poll_transmit(now, buf),
            Stream::Rtc(rtc) => rtc.poll_transmit(now, buf),
            Stream::Utp(u) => {
                let t = u.endpoint.poll_transmit(now, &mut buf[1..])?;
                buf[0] = FogFraming::Utp.byte();
                Some(1 + t.len)
            }
            Stream::Sctp(a) => {
                let t = a.poll_transmit(now, &mut buf[1..])?;
                buf[0] = FogFraming::Sctp.byte();
                Some(1 + t.len)
            }
        }
    }

    /// Starts the graceful close.
    pub(super) fn close(&mut self, now: Instant) {
        match self {
            Stream::Kcp(kcp) => kcp.close(now),
            Stream::Quic(quic) => quic.close(now),
            Stream::Rtc(rtc) => rtc.close(now),
            Stream::Utp(u) => match u.conn {
                Some(conn) => {
                    u.closing = true;
                    u.endpoint.close(conn);
                }
                // Nothing was ever opened (an answerer that heard no SYN): nothing to flush.
                None => u.closed_early = true,
            },
            Stream::Sctp(a) => a.close(now),
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
            Stream::Rtc(rtc) => out = rtc.poll(),
            Stream::Utp(u) => {
                if std::mem::take(&mut u.closed_early) {
                    out.push(Happened::CloseDone);
                }
                while let Some(event) = u.endpoint.poll_event() {
                    match event {
                        UtpEvent::Incoming { conn, .. } => u.conn = Some(conn),
                        UtpEvent::Readable(conn) => read_stream(&mut u.endpoint, conn, &mut out),
                        UtpEvent::Finished(conn) => {
                            read_stream(&mut u.endpoint, conn, &mut out);
                            // The node's connections close whole: answer the peer's FIN with
                            // ours once what we sent is delivered (BEP 29 "ST_FIN"), so the
                            // closing side's uTP connection ends `Done` and it can tell us the
                            // code and reason.
                            u.endpoint.close(conn);
                            // A FIN closes only the peer's half: when our own close is under
                            // way too, what we sent may still wait for its acknowledgement,
                            // and the end is our `Done` (both FINs acknowledged), not this.
                            // Reported as a close that crossed ours, the node ended at once
                            // and its close cut the peer off before our data arrived (the
                            // chaos run, seeds 982 and 2899).
                            if !u.closing {
                                out.push(Happened::PeerClosed);
                            }
                        }
                        UtpEvent::Closed { conn, reason } => {
                            read_stream(&mut u.endpoint, conn, &mut out);
                            out.push(match reason {
                                UtpClose::Done => Happened::CloseDone,
                                _ => Happened::Dead,
                            });
                        }
                        UtpEvent::Connected(_) | UtpEvent::Writable(_) => {}
                    }
                }
            }
            Stream::Sctp(a) => {
                while let Some(event) = a.poll_event() {
                    match event {
                        SctpEvent::Readable(stream) => {
                            while let Some(message) = a.read(stream) {
                                // Only stream 0 carries the node's messages; a peer that
                                // sends on others is heard, and ignored.
                                if stream == SCTP_STREAM {
                                    out.push(Happened::Data(message));
                                }
                            }
                        }
                        SctpEvent::Closed(reason) => out.push(match reason {
                            SctpClose::Local | SctpClose::LocalUnanswered => Happened::CloseDone,
                            SctpClose::Peer => Happened::PeerClosed,
                            SctpClose::Aborted | SctpClose::Dead | SctpClose::HandshakeFailed => {
                                Happened::Dead
                            }
                        }),
                        SctpEvent::Connected | SctpEvent::StreamOpened(_) | SctpEvent::Writable => {
                        }
                    }
                }
            }
        }
        out
    }
}

/// Everything `conn` has to read, in chunks.
fn read_stream(endpoint: &mut Utp, conn: ConnectionHandle, out: &mut Vec<Happened>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = endpoint.read(conn, &mut buf) {
        out.push(Happened::Data(buf[..n].to_vec()));
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
