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
    AcceptPolicy, Bytes, CloseReason as QuicClose, Config as QuicConfig, ConnHandle, Endpoint,
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
/// Messages up to this long, sent while our stream is blocked, join one buffer rather than
/// taking one each: quinn-proto walks its list of buffers for every packet it builds.
const SMALL: usize = 4 * 1024;
/// A buffer of joined small messages is handed on once this long.
const JOINED: usize = 64 * 1024;

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
    /// Framed messages not yet taken by our stream, each in the buffer quinn-proto will keep
    /// until the peer acknowledges it (no copy on the way in).
    queue: VecDeque<Bytes>,
    /// Small messages framed after those in `queue`, joined (see [`SMALL`]).
    joined: Vec<u8>,
    /// Bytes in `queue` and `joined`.
    queued: usize,
    /// The peer's stream cut back into messages.
    deframer: Deframer,
    /// A spare datagram buffer (quinn-proto builds each datagram in one we keep, see
    /// [`Quic::poll_transmit`]).
    spare: Vec<u8>,
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
            .field("queued", &self.queued)
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
            joined: Vec::new(),
            queued: 0,
            deframer: Deframer::default(),
            spare: Vec::new(),
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
        let head = self.admit(data.len())?;
        self.queued += LEN + data.len();
        // The one copy a message takes on its way into QUIC: quinn-proto keeps this buffer.
        if data.len() <= SMALL {
            self.joined.extend_from_slice(&head);
            self.joined.extend_from_slice(data);
            if self.joined.len() >= JOINED {
                self.hand_on_joined();
            }
        } else {
            self.hand_on_joined();
            let mut framed = Vec::with_capacity(LEN + data.len());
            framed.extend_from_slice(&head);
            framed.extend_from_slice(data);
            self.queue.push_back(Bytes::from(framed));
        }
        self.flush();
        Ok(())
    }

    /// Queues one message the caller hands over: one longer than [`SMALL`] goes to quinn-proto
    /// as it is, behind its length prefix, with no copy (`send` frames it into a buffer of its
    /// own).
    pub(super) fn send_vec(&mut self, data: Vec<u8>) -> Result<(), SendError> {
        if data.len() <= SMALL {
            return self.send(&data);
        }
        let head = self.admit(data.len())?;
        self.queued += LEN + data.len();
        self.hand_on_joined();
        self.queue.push_back(Bytes::copy_from_slice(&head));
        self.queue.push_back(Bytes::from(data));
        self.flush();
        Ok(())
    }

    /// Whether a message of `len` bytes may be queued now, and its length prefix.
    fn admit(&self, len: usize) -> Result<[u8; LEN], SendError> {
        if self.over || self.closing {
            return Err(SendError::NotConnected);
        }
        if len > MAX_MESSAGE {
            return Err(SendError::TooLong);
        }
        if self.queued >= QUEUE_LIMIT {
            return Err(SendError::Blocked);
        }
        // Checked above: at most MAX_MESSAGE, which fits.
        Ok(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes())
    }

    /// Whether a sender told `Blocked` may try again.
    pub(super) fn has_room(&self) -> bool {
        self.queued < QUEUE_LIMIT / 2
    }

    /// The joined small messages go behind the queue as one buffer.
    fn hand_on_joined(&mut self) {
        if !self.joined.is_empty() {
            let joined = std::mem::take(&mut self.joined);
            self.queue.push_back(Bytes::from(joined));
        }
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
        // quinn-proto builds the datagram in a buffer we keep, and it is copied once, into
        // `buf` (not into a scratch buffer of the endpoint's, then here, then into `recent`).
        let mut datagram = std::mem::take(&mut self.spare);
        let Some(t) = self.ep.poll_transmit_vec(now, &mut datagram) else {
            self.spare = datagram;
            return None;
        };
        let len = t.len.min(buf.len()).min(datagram.len());
        buf[..len].copy_from_slice(&datagram[..len]);
        // Only 1-RTT packets are worth sending again: a long header (the first bit set, RFC
        // 9000 §17.2) is a handshake packet, whose keys are gone once the handshake is
        // confirmed (§4.9.2), so the peer could not read its copy. Keeping none also spares
        // an idle connection the kilobytes of its handshake.
        if datagram.first().is_none_or(|b| b & 0x80 != 0) {
            self.spare = datagram;
            return Some(len);
        }
        self.recent.push_back(datagram);
        // The oldest copy's buffer is the next datagram's once there are RECENT.
        if self.recent.len() > RECENT {
            self.spare = self.recent.pop_front().unwrap_or_default();
        }
        Some(len)
    }

    /// Starts the graceful close.
    pub(super) fn close(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        self.closing = true;
        if self.ours.is_none() && self.queued == 0 {
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

    /// Reads the peer's stream into whole messages, straight from quinn-proto's buffers.
    fn read(&mut self, conn: ConnHandle, stream: StreamId) {
        let mut too_long = false;
        loop {
            // Everything quinn-proto holds: its stream window (flow control) bounds it, and
            // the deframer keeps only a message not yet whole.
            let read = self.ep.read_chunks(conn, stream, usize::MAX, |chunk| {
                if too_long {
                    return;
                }
                let happened = &mut self.happened;
                let pushed = self
                    .deframer
                    .push(&chunk, |message| happened.push(Happened::Data(message)));
                too_long = pushed.is_err();
            });
            if too_long {
                self.fail(conn);
                return;
            }
            match read {
                Ok(Read::Data(_)) => {}
                Ok(Read::Finished) => {
                    self.theirs_done = true;
                    return;
                }
                Err(StreamError::Blocked) => return,
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
    }

    /// Writes what our stream takes; finishes it once a closing queue is empty.
    fn flush(&mut self) {
        let (Some(conn), Some(stream)) = (self.conn, self.ours) else {
            return;
        };
        loop {
            if self.queue.is_empty() {
                // Joined messages wait while the stream is blocked; now it may take them.
                self.hand_on_joined();
                if self.queue.is_empty() {
                    break;
                }
            }
            let (front, _) = self.queue.as_mut_slices();
            match self.ep.write_chunks(conn, stream, front) {
                Ok(n) => {
                    self.queued -= n;
                    while self.queue.front().is_some_and(Bytes::is_empty) {
                        self.queue.pop_front();
                    }
                    if n == 0 {
                        return;
                    }
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

/// The peer's stream cut back into messages (a 4-byte big-endian length, then the bytes),
/// chunk by chunk as quinn-proto hands them out. Each message is copied once, out of the
/// chunks into its own `Vec`; between chunks only a length prefix's first bytes or one message
/// not yet whole are kept (at most [`MAX_MESSAGE`] bytes).
#[derive(Debug, Default)]
struct Deframer {
    /// A length prefix so far, `have` bytes of it, while no message is being filled.
    head: [u8; LEN],
    have: usize,
    /// The message being filled, and its length.
    body: Option<(Vec<u8>, usize)>,
}

/// The peer announced a message over [`MAX_MESSAGE`]: a protocol error.
#[derive(Debug, PartialEq, Eq)]
struct TooLong;

impl Deframer {
    /// Takes the next `chunk` of the stream, handing each message it completes to `out`.
    fn push(&mut self, mut chunk: &[u8], mut out: impl FnMut(Vec<u8>)) -> Result<(), TooLong> {
        while !chunk.is_empty() {
            if let Some((body, len)) = &mut self.body {
                let n = (*len - body.len()).min(chunk.len());
                body.extend_from_slice(&chunk[..n]);
                chunk = &chunk[n..];
                if body.len() == *len
                    && let Some((message, _)) = self.body.take()
                {
                    out(message);
                }
                continue;
            }
            let n = (LEN - self.have).min(chunk.len());
            self.head[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have < LEN {
                break;
            }
            self.have = 0;
            let len = u32::from_be_bytes(self.head) as usize;
            if len > MAX_MESSAGE {
                return Err(TooLong);
            }
            if let Some(message) = chunk.get(..len) {
                // Whole in this chunk.
                out(message.to_vec());
                chunk = &chunk[len..];
            } else {
                // Allocated at its length once (bounded by MAX_MESSAGE), never grown.
                let mut body = Vec::with_capacity(len);
                body.extend_from_slice(chunk);
                chunk = &[];
                self.body = Some((body, len));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // The pair test's epoch is the one clock reading it makes.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    /// Each message framed as the sender frames it, one after the other.
    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = Vec::new();
        for m in messages {
            stream.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
            stream.extend_from_slice(m);
        }
        stream
    }

    /// What a deframer hands out for `stream` cut at `cuts` (ascending offsets).
    fn deliver(stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>, TooLong> {
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([&stream.len()]) {
            deframer.push(&stream[from..to], |m| out.push(m))?;
            from = to;
        }
        Ok(out)
    }

    /// Messages whose bytes say which message and which byte they are.
    fn messages(lens: &[usize]) -> Vec<Vec<u8>> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|j| (i * 31 + j) as u8).collect())
            .collect()
    }

    #[test]
    fn messages_split_at_every_boundary_arrive_whole_and_in_order() {
        // Empty, shorter and longer than a prefix, and a run of them: every cut (and every
        // pair of cuts) falls in a header, a body, or between messages.
        let sent = messages(&[0, 1, 3, 4, 5, 0, 17, 2]);
        let stream = framed(&sent);
        for a in 0..=stream.len() {
            assert_eq!(deliver(&stream, &[a]).unwrap(), sent, "cut at {a}");
            for b in a..=stream.len() {
                assert_eq!(deliver(&stream, &[a, b]).unwrap(), sent, "cuts at {a}, {b}");
            }
        }
        // Byte by byte, and all of it in one chunk.
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(deliver(&stream, &every).unwrap(), sent);
        assert_eq!(deliver(&stream, &[]).unwrap(), sent);
    }

    #[test]
    fn large_messages_cut_like_quic_packets_arrive_whole() {
        // Messages over many chunks, messages within one, chunks that end in a header.
        let sent = messages(&[60_000, 1, 1_300, 70_000, 0, 5, MAX_MESSAGE]);
        let stream = framed(&sent);
        for chunk in [1_200, 1_366, 4, 7, 65_536] {
            let cuts: Vec<usize> = (1..)
                .map(|i| i * chunk)
                .take_while(|&c| c < stream.len())
                .collect();
            assert_eq!(deliver(&stream, &cuts).unwrap(), sent, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_wherever_its_prefix_is_cut() {
        let mut stream = framed(&messages(&[3]));
        stream.extend_from_slice(&u32::try_from(MAX_MESSAGE + 1).unwrap().to_be_bytes());
        stream.extend_from_slice(&[0; 16]);
        for a in 0..=stream.len() {
            assert_eq!(deliver(&stream, &[a]), Err(TooLong), "cut at {a}");
        }
        // The message before it was delivered first.
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        assert_eq!(deframer.push(&stream, |m| out.push(m)), Err(TooLong));
        assert_eq!(out, messages(&[3]));
    }

    #[test]
    fn only_a_message_not_yet_whole_is_kept_between_chunks() {
        let sent = messages(&[10, 20]);
        let stream = framed(&sent);
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        // The first message and 2 bytes of the second's prefix.
        deframer.push(&stream[..16], |m| out.push(m)).unwrap();
        assert_eq!(out, sent[..1]);
        assert!(deframer.body.is_none());
        assert_eq!(deframer.have, 2);
        // The rest of the prefix and 12 bytes of the body: the body is allocated at its
        // length.
        deframer.push(&stream[16..30], |m| out.push(m)).unwrap();
        let (body, len) = deframer.body.as_ref().unwrap();
        assert_eq!((body.len(), *len, body.capacity()), (12, 20, 20));
        deframer.push(&stream[30..], |m| out.push(m)).unwrap();
        assert_eq!(out, sent);
        assert!(deframer.body.is_none());
        assert_eq!(deframer.have, 0);
    }

    /// Two connected `Quic`s, the caller first, their datagrams carried by [`exchange`].
    fn pair(now: Instant) -> (Quic, Quic) {
        let keys = [KeyPair::from_seed(&[1; 32]), KeyPair::from_seed(&[2; 32])];
        let certs = keys
            .each_ref()
            .map(|k| fog_quic::Certificate::self_signed(k).unwrap());
        let side = |me: usize, caller: bool| {
            let other = 1 - me;
            let opening = Opening {
                key: &keys[me],
                cert: Some(certs[me].clone()),
                peer: keys[other].peer_id(),
                service: 7,
                fingerprint: Some(CertFingerprint(certs[other].fingerprint().0)),
                caller,
                seed: [me as u8 + 10; 32],
                idle_timeout: Duration::from_secs(30),
            };
            Quic::new(opening, now).unwrap()
        };
        (side(0, true), side(1, false))
    }

    /// Carries every datagram either side has for the other until both are quiet, then
    /// moves the clock to the next deadline. Returns the new time.
    fn exchange(a: &mut Quic, b: &mut Quic, mut now: Instant) -> Instant {
        let mut buf = vec![0; MAX_DATAGRAM + 64];
        loop {
            let mut moved = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                assert!(b.handle_packet(now, &buf[..n]));
                moved = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                assert!(a.handle_packet(now, &buf[..n]));
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if let Some(t) = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
        {
            now = now.max(t);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        now
    }

    #[test]
    fn messages_of_every_size_cross_in_order_through_a_blocked_stream() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        // Small ones (joined while the stream is blocked) between large ones (a buffer
        // each), queued before the handshake is even done, then whenever there is room.
        let sizes = [
            0,
            1,
            5,
            4_096,
            4_097,
            60_000,
            3,
            200_000,
            17,
            MAX_MESSAGE,
            2,
            1_000,
        ];
        let sent: Vec<Vec<u8>> = (0..240)
            .map(|i| {
                let len = sizes[i % sizes.len()];
                (0..len).map(|j| (i * 7 + j) as u8).collect()
            })
            .collect();
        let mut next = 0;
        let mut got = Vec::new();
        for _ in 0..100_000 {
            while next < sent.len() {
                match a.send(&sent[next]) {
                    Ok(()) => next += 1,
                    Err(SendError::Blocked) => break,
                    Err(e) => panic!("send: {e:?}"),
                }
            }
            now = exchange(&mut a, &mut b, now);
            for happened in b.poll() {
                match happened {
                    Happened::Data(m) => got.push(m),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(a.poll().is_empty());
            if got.len() == sent.len() {
                break;
            }
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the messages arrived changed or out of order");
        assert_eq!(a.queued, 0);
    }

    /// CPU time this thread has run, from the kernel's scheduler statistics (Linux).
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        Duration::from_nanos(ns.unwrap_or(0))
    }

    /// What the QUIC transport alone costs per byte, both ends on this thread: no sockets,
    /// no seal, no other threads, so it is steadier than the transfer bench on a busy
    /// machine. `cargo test --release -p fogconnect --lib quic_pair_cpu -- --ignored
    /// --nocapture` (FOG_QUIC_MIB sets the size, 256 by default).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn quic_pair_cpu() {
        let mib: usize = std::env::var("FOG_QUIC_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let total = mib << 20;
        let message = vec![0x5a; 60_000];
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        let (mut sent, mut got) = (0, 0);
        let cpu = thread_cpu();
        while got < total {
            while sent < total && a.send(&message[..message.len().min(total - sent)]).is_ok() {
                sent += message.len().min(total - sent);
            }
            now = exchange(&mut a, &mut b, now);
            for happened in b.poll() {
                if let Happened::Data(m) = happened {
                    got += m.len();
                }
            }
            a.poll();
        }
        let cpu = thread_cpu() - cpu;
        println!(
            "quic pair: {mib} MiB in {:.3} CPU s, {:.2} ns per byte",
            cpu.as_secs_f64(),
            cpu.as_nanos() as f64 / total as f64
        );
    }
}
