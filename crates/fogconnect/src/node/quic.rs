//! QUIC as a connection's transport ([`Transport::Quic`](fog_signal::msg::Transport)).
//!
//! Each connection runs a fog-quic endpoint of its own (quinn-proto underneath) whose packets
//! ride on whatever path the connection has (direct, TURN, the signaling relay) behind framing
//! byte 8 and the receiver's session tag ([`seal::quic_of`](super::seal::quic_of)), which
//! names the connection. They are not sealed a second time: QUIC's packet protection, keyed by
//! a handshake whose certificates are both identities, does for them what the session's seal
//! does for other datagrams (authenticity, secrecy, replays), and sealing them again cost about
//! a fifth of the transfer bench's CPU. The endpoint only ever sees one made-up peer address,
//! so the Node's path changes (relay to direct) need no QUIC migration and no new handshake.
//!
//! **Identity.** Each side presents the self-signed certificate of its Ed25519 identity
//! (fog-quic's `identity`); its fingerprint is signed into the side's offer or answer
//! ([`Description::quic`](fog_signal::msg::Description)). The dialler accepts only the peer it
//! offered to, the acceptor only the peer whose offer it accepted, and each checks that the
//! certificate it got is the one the signed description named. The service is the ALPN.
//!
//! **Messages.** Each side sends on one unidirectional stream of its own, opened once the
//! handshake is done: every [`send`](super::Node::send) is one message on it, a 4-byte
//! big-endian length then the bytes (at most [`MAX_MESSAGE`]), delivered reliably and in
//! order as one [`Event::Data`](super::Event). A length over the limit from the peer is a
//! protocol error that ends the connection.
//!
//! **Close.** Graceful, as for KCP: our stream is finished once everything queued was written,
//! and when the peer has acknowledged all of it the QUIC connection closes (application code
//! 0) and the Node closes the connection with the caller's code and reason.
//!
//! The connection's own messages about itself (its close) stay sealed, as for every transport.

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fog_quic::{
    AcceptPolicy, CloseReason as QuicClose, Config as QuicConfig, ConnHandle, Endpoint,
    Event as QuicEvent, Fingerprint, Read, StreamError, StreamId, StreamKind,
};
use fog_signal::msg::CertFingerprint;
use fog_signal::{KeyPair, PeerId};

use super::MAX_DATAGRAM;
use super::event::SendError;
use super::transport::Happened;

/// RFC 9000 §20.1: the transport error that stands for an application's close in packets
/// that cannot carry its code.
const APPLICATION_ERROR: u64 = 0x0c;

/// The largest message one `send` takes over QUIC.
pub(super) const MAX_MESSAGE: usize = 1 << 20;
/// Bytes queued for our stream before `send` says `Blocked`.
const QUEUE_LIMIT: usize = 1 << 20;
/// The peer address the endpoint believes in; the Node carries the packets.
const NOWHERE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
/// Length prefix of a message.
const LEN: usize = 4;

/// QUIC datagrams we keep copies of, the latest sent, to send again when the path changes
/// (about 45 KiB at most per connection). Eight brought the roaming tests' longest gap from
/// over 6 s to 3.5 s, thirty-two to about 2 s: what the peer gets again is data it can use at
/// once, while QUIC's own retransmissions start from the minimum window.
const RECENT: usize = 32;

/// What a QUIC connection needs from the Node to start.
pub(super) struct Opening<'a> {
    /// Our identity.
    pub key: &'a KeyPair,
    /// Its certificate, made once per node (`None`: the endpoint makes its own).
    pub cert: Option<fog_quic::Certificate>,
    /// The peer the connection is with.
    pub peer: PeerId,
    /// The connection's service (the ALPN).
    pub service: u16,
    /// The certificate fingerprint the peer signed into its description.
    pub fingerprint: Option<CertFingerprint>,
    /// Whether we dial (the offerer) or accept.
    pub caller: bool,
    /// Randomness for quinn-proto's choices.
    pub seed: [u8; 32],
    /// How long the peer may stay silent before QUIC gives up on it.
    pub idle_timeout: Duration,
}

/// One connection's QUIC endpoint and its message stream.
pub(super) struct Quic {
    ep: Endpoint,
    conn: Option<ConnHandle>,
    /// Our unidirectional stream, once the handshake is done.
    ours: Option<StreamId>,
    /// The peer's unidirectional stream, once it opened it.
    theirs: Option<StreamId>,
    /// The peer's stream was read to its end: fog-quic forgets a finished stream, and a
    /// read of it after its end is an error, not a failure of the peer.
    theirs_done: bool,
    fingerprint: Option<Fingerprint>,
    peer: PeerId,
    service: u16,
    /// Framed messages not yet taken by our stream.
    queue: VecDeque<u8>,
    /// Bytes of the peer's stream not yet whole messages.
    partial: Vec<u8>,
    /// `close` was called: our stream finishes once the queue is written.
    closing: bool,
    finished: bool,
    happened: Vec<Happened>,
    /// The connection ended (reported through `happened`).
    over: bool,
    /// Copies of the last [`RECENT`] datagrams sent, oldest first.
    recent: VecDeque<Vec<u8>>,
    /// Of those, the ones to send again before anything new (see [`Quic::path_changed`]).
    again: VecDeque<Vec<u8>>,
    /// The last instant the Node drove us at (closes need one).
    now: Instant,
}

impl std::fmt::Debug for Quic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quic")
            .field("conn", &self.conn)
            .field("queued", &self.queue.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Quic {
    /// A QUIC connection for `opening`: the caller dials at once; the other side waits for the
    /// caller's first packet. `None` if the endpoint cannot be built (a configuration error,
    /// reported by the Node as the transport failing).
    pub(super) fn new(opening: Opening<'_>, now: Instant) -> Option<Quic> {
        let mut config = QuicConfig {
            accept: AcceptPolicy::Only(BTreeSet::from([opening.peer])),
            // One connection: a second handshake on this session (someone on the path
            // replaying or forging Initials) is refused.
            max_connections: 1,
            idle_timeout: opening.idle_timeout,
            initial_mtu: u16::try_from(MAX_DATAGRAM).unwrap_or(1200),
            // Our messages travel on streams only: one unidirectional stream each way (quinn
            // keeps state for every stream a peer may open).
            datagram_receive_buffer: 0,
            max_streams: 1,
            ..QuicConfig::default()
        };
        if !opening.caller {
            config = config.with_service(opening.service);
        }
        let mut ep = match opening.cert {
            Some(cert) => Endpoint::with_certificate(config, cert, opening.seed, now),
            None => Endpoint::new(config, opening.key, opening.seed, now),
        }
        .ok()?;
        let conn = if opening.caller {
            Some(
                ep.connect(now, NOWHERE, opening.peer, opening.service)
                    .ok()?,
            )
        } else {
            None
        };
        Some(Quic {
            ep,
            conn,
            ours: None,
            theirs: None,
            theirs_done: false,
            fingerprint: opening.fingerprint.map(|f| Fingerprint(f.0)),
            peer: opening.peer,
            service: opening.service,
            queue: VecDeque::new(),
            partial: Vec::new(),
            closing: false,
            finished: false,
            happened: Vec::new(),
            over: false,
            recent: VecDeque::new(),
            again: VecDeque::new(),
            now,
        })
    }

    /// Queues one message.
    pub(super) fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        if self.over || self.closing {
            return Err(SendError::NotConnected);
        }
        if data.len() > MAX_MESSAGE {
            return Err(SendError::TooLong);
        }
        if self.queue.len() >= QUEUE_LIMIT {
            return Err(SendError::Blocked);
        }
        // Checked above: at most MAX_MESSAGE, which fits.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.queue.extend(len.to_be_bytes());
        self.queue.extend(data);
        self.flush();
        Ok(())
    }

    /// Whether a sender told `Blocked` may try again.
    pub(super) fn has_room(&self) -> bool {
        self.queue.len() < QUEUE_LIMIT / 2
    }

    /// A QUIC packet arrived; `false` if it cannot be one.
    pub(super) fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> bool {
        if !self.ep.accepts(packet) {
            return false;
        }
        self.now = self.now.max(now);
        self.ep.handle_datagram(now, NOWHERE, packet);
        self.drive();
        true
    }

    /// The connection moved to another path: see `fog_quic::Endpoint::path_changed`.
    ///
    /// quinn-proto's PING for the new path waits behind congestion control while the packets
    /// lost on the old one still count as in flight, and its probe timeout, backed off while
    /// the path was broken (RFC 9002 §6.2.1), only restarts with an acknowledgement: alone,
    /// QUIC resumes at its next probe, seconds later. So the last datagrams it sent, which the
    /// peer most likely never got, go again at once, byte for byte: the peer's acknowledgement
    /// of them resets the backoff and declares the older ones lost (RFC 9002 §6.1), and QUIC
    /// resends within a round trip. A copy the peer did get is a duplicate, which it discards
    /// (RFC 9000 §12.3); one whose keys were updated since is dropped as undecryptable.
    pub(super) fn path_changed(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if let (Some(conn), false) = (self.conn, self.over) {
            let _ = self.ep.path_changed(now, conn);
            self.again = self.recent.clone();
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.ep.handle_timeout(now);
        self.drive();
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }

    pub(super) fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.now = self.now.max(now);
        if let Some(datagram) = self.again.pop_front() {
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            return Some(len);
        }
        let len = self.ep.poll_transmit(now, buf)?.len;
        // Only 1-RTT packets are worth sending again: a long header (the first bit set, RFC
        // 9000 §17.2) is a handshake packet, whose keys are gone once the handshake is
        // confirmed (§4.9.2), so the peer could not read its copy. Keeping none also spares
        // an idle connection the kilobytes of its handshake.
        if buf.first().is_none_or(|b| b & 0x80 != 0) {
            return Some(len);
        }
        // The oldest copy's buffer is reused once there are RECENT.
        let mut copy = if self.recent.len() >= RECENT {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        copy.clear();
        copy.extend_from_slice(&buf[..len]);
        self.recent.push_back(copy);
        Some(len)
    }

    /// Starts the graceful close.
    pub(super) fn close(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        self.closing = true;
        if self.ours.is_none() && self.queue.is_empty() {
            // Nothing to deliver: close at once.
            self.end_local();
            return;
        }
        // Once the handshake gives us a stream, what is queued goes, then the stream finishes.
        self.flush();
    }

    pub(super) fn poll(&mut self) -> Vec<Happened> {
        self.drive();
        std::mem::take(&mut self.happened)
    }

    /// Handles the endpoint's events and moves queued bytes into our stream.
    fn drive(&mut self) {
        while let Some(event) = self.ep.poll_event() {
            match event {
                QuicEvent::Incoming { conn, .. } if self.conn.is_none() => {
                    self.conn = Some(conn);
                }
                QuicEvent::Connected {
                    conn,
                    peer,
                    service,
                } => {
                    if Some(conn) != self.conn {
                        continue;
                    }
                    // fog-quic held the peer to its identity already; the signed fingerprint
                    // and the service are ours to check.
                    let cert_ok = self.fingerprint.is_some()
                        && self.ep.peer_fingerprint(conn) == self.fingerprint;
                    if peer != self.peer || service != self.service || !cert_ok {
                        self.fail(conn);
                        continue;
                    }
                    self.ours = self.ep.open(conn, StreamKind::Unidirectional).ok();
                    if self.ours.is_none() {
                        self.fail(conn);
                    }
                }
                QuicEvent::StreamOpened { conn, stream } | QuicEvent::Readable { conn, stream }
                    if Some(conn) == self.conn && !stream.is_bidirectional() =>
                {
                    if self.theirs.is_none() && Some(stream) != self.ours {
                        self.theirs = Some(stream);
                    }
                    // Several events may name the stream in one batch (it opened, and more
                    // arrived): the first read may take it to its end, and the others find
                    // nothing to read. Reading then failed the connection the moment the
                    // peer's stream ended (found by the chaos run, seed 1689: the peer
                    // closed right after sending; ours ended `TransportFailed`).
                    if self.theirs == Some(stream) && !self.theirs_done {
                        self.read(conn, stream);
                    }
                }
                QuicEvent::Finished { conn, stream }
                    if Some(conn) == self.conn && Some(stream) == self.ours =>
                {
                    // Everything we sent was acknowledged.
                    self.end_local();
                }
                QuicEvent::Closed { conn, reason } if Some(conn) == self.conn && !self.over => {
                    self.over = true;
                    self.happened.push(match reason {
                        QuicClose::Local => Happened::CloseDone,
                        QuicClose::ByPeer { code: 0, .. } => Happened::PeerClosed,
                        // A close during the handshake goes in Initial or Handshake packets,
                        // where the application's code becomes the transport error
                        // APPLICATION_ERROR (RFC 9000 §10.2.3): the peer's node closed as
                        // early as that (found by the chaos run: reported as a dead transport).
                        QuicClose::Protocol {
                            code: APPLICATION_ERROR,
                            by_peer: true,
                            ..
                        } => Happened::PeerClosed,
                        _ => Happened::Dead,
                    });
                }
                _ => {}
            }
        }
        self.flush();
    }

    /// Reads the peer's stream into whole messages.
    fn read(&mut self, conn: ConnHandle, stream: StreamId) {
        // On the stack, not kept per connection (an idle connection held 4 KiB for it;
        // reads loop until the stream is drained).
        let mut scratch = [0u8; 4 * 1024];
        loop {
            match self.ep.read(conn, stream, &mut scratch) {
                Ok(Read::Data(n)) => self.partial.extend_from_slice(&scratch[..n]),
                Ok(Read::Finished) => {
                    self.theirs_done = true;
                    break;
                }
                Err(StreamError::Blocked) => break,
                // Our own close ended the connection while the peer's data was still
                // arriving: there is nothing to read any more, and the peer did nothing
                // wrong (taken for a failure, the end was reported as a dead transport and
                // the peer never heard of the close: the chaos run, seed 934).
                Err(StreamError::Closed) if self.closing => return,
                Err(_) => {
                    self.fail(conn);
                    return;
                }
            }
        }
        let mut at = 0;
        while let Some(head) = self.partial.get(at..at + LEN) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_MESSAGE {
                self.fail(conn);
                return;
            }
            let Some(body) = self.partial.get(at + LEN..at + LEN + len) else {
                break;
            };
            self.happened.push(Happened::Data(body.to_vec()));
            at += LEN + len;
        }
        self.partial.drain(..at);
    }

    /// Writes what our stream takes; finishes it once a closing queue is empty.
    fn flush(&mut self) {
        let (Some(conn), Some(stream)) = (self.conn, self.ours) else {
            return;
        };
        while !self.queue.is_empty() {
            let (front, _) = self.queue.as_slices();
            match self.ep.write(conn, stream, front) {
                Ok(n) => {
                    self.queue.drain(..n);
                }
                Err(StreamError::Blocked) => return,
                Err(_) => {
                    self.fail(conn);
                    return;
                }
            }
        }
        if self.closing && !self.finished {
            self.finished = true;
            if self.ep.finish(conn, stream).is_err() {
                self.end_local();
            }
        }
    }

    /// Our side is done: the QUIC connection closes with code 0.
    fn end_local(&mut self) {
        match self.conn {
            // Its `Closed(Local)` event reports the end.
            Some(conn) if !self.over && self.ep.close(self.now, conn, 0, b"").is_err() => {
                self.over = true;
                self.happened.push(Happened::CloseDone);
            }
            None if !self.over => {
                self.over = true;
                self.happened.push(Happened::CloseDone);
            }
            _ => {}
        }
    }

    /// The peer broke the protocol (or is not who it signed): the connection is dead.
    fn fail(&mut self, conn: ConnHandle) {
        if self.over {
            return;
        }
        let _ = self.ep.close(self.now, conn, 1, b"protocol violation");
        self.over = true;
        self.happened.push(Happened::Dead);
    }
}
