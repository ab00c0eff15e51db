//! One sans-IO machine around quinn-proto's `Endpoint` and its `Connection`s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use fog_core::{Receive, SansIo, Transmit};
use fog_signal::{KeyPair, PeerId};
use quinn_proto as qp;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use rustls::pki_types::CertificateDer;

use crate::config::{Config, ConfigError, alpn, service_of_alpn};
use crate::error::{CloseReason, ConnError, ConnectError, DatagramError, StreamError};
use crate::identity::{
    AcceptPolicy, Certificate, ExpectedPeer, Fingerprint, NoClock, PolicyVerifier, ed25519_key_of,
    provider,
};

/// Length of the connection ids this endpoint issues (RFC 9000 §5.1: up to 20; 8 bytes of a
/// seeded ChaCha20 stream cannot be guessed by an off-path attacker).
const LOCAL_CID_LEN: usize = 8;
/// How many of a connection's own ids are remembered for routing a datagram to it before it
/// reaches quinn-proto. The peer holds at most `active_connection_id_limit` of them at once (RFC
/// 9000 §5.1.1; quinn-proto issues 5), so older ones are retired ids a hostile peer made us
/// replace; forgetting them only costs the address translation of a stray packet.
const REMEMBERED_CIDS: usize = 16;
/// The server name sent to rustls. FogConnect names peers by key, never by host; SNI is not
/// sent at all (`enable_sni = false`), and the verifiers ignore the name.
const SERVER_NAME: &str = "fog.invalid";

/// A connection of an [`Endpoint`]. Valid from [`Endpoint::connect`] or
/// [`Event::Incoming`] until [`Event::Drained`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle(pub usize);

/// A stream of a connection (RFC 9000 §2.1: its two low bits say who opened it and whether it
/// is bidirectional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// Whether both sides may send on it.
    pub fn is_bidirectional(self) -> bool {
        self.0 & 2 == 0
    }

    fn quinn(self) -> qp::StreamId {
        // `StreamId` is a bare 62-bit number in quinn-proto; ours came from one.
        qp::StreamId::from(qp::VarInt::from_u64(self.0).unwrap_or(qp::VarInt::MAX))
    }
}

impl From<qp::StreamId> for StreamId {
    fn from(id: qp::StreamId) -> Self {
        StreamId(qp::VarInt::from(id).into_inner())
    }
}

/// Which kind of stream to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Both sides send and receive.
    Bidirectional,
    /// Only the opener sends.
    Unidirectional,
}

impl StreamKind {
    fn dir(self) -> qp::Dir {
        match self {
            StreamKind::Bidirectional => qp::Dir::Bi,
            StreamKind::Unidirectional => qp::Dir::Uni,
        }
    }

    fn of(dir: qp::Dir) -> Self {
        match dir {
            qp::Dir::Bi => StreamKind::Bidirectional,
            qp::Dir::Uni => StreamKind::Unidirectional,
        }
    }
}

/// Which half of a stream an operation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    Send,
    Recv,
}

/// What [`Endpoint::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes, in order, at the start of the buffer.
    Data(usize),
    /// The peer finished the stream and everything it sent has been read.
    Finished,
}

/// What happened, reported through [`Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer started a handshake with us; it has not yet been authenticated.
    Incoming {
        /// The new connection.
        conn: ConnHandle,
        /// Where its first packet came from.
        remote: SocketAddr,
    },
    /// The handshake completed: `peer` proved it holds the key of this identity. On a dialled
    /// connection it is the expected one; on an accepted connection the owner compares it with
    /// the peer of the offer it signed.
    Connected {
        /// The connection.
        conn: ConnHandle,
        /// The authenticated identity of the peer.
        peer: PeerId,
        /// The service both sides agreed on (the ALPN).
        service: u16,
    },
    /// The peer opened a stream.
    StreamOpened {
        /// The connection.
        conn: ConnHandle,
        /// The new stream.
        stream: StreamId,
    },
    /// A stream has data (or its end, or a reset) to read.
    Readable {
        /// The connection.
        conn: ConnHandle,
        /// The stream.
        stream: StreamId,
    },
    /// A stream whose write said [`StreamError::Blocked`] can take more.
    Writable {
        /// The connection.
        conn: ConnHandle,
        /// The stream.
        stream: StreamId,
    },
    /// Everything written to a finished stream was acknowledged by the peer.
    Finished {
        /// The connection.
        conn: ConnHandle,
        /// The stream.
        stream: StreamId,
    },
    /// The peer asked us to stop sending on a stream (STOP_SENDING).
    Stopped {
        /// The connection.
        conn: ConnHandle,
        /// The stream.
        stream: StreamId,
        /// The peer's application error code.
        code: u64,
    },
    /// The peer allows more streams of this kind; an open that said
    /// [`StreamError::Limit`] may be tried again.
    StreamsAvailable {
        /// The connection.
        conn: ConnHandle,
        /// Which kind.
        kind: StreamKind,
    },
    /// Datagrams arrived; [`Endpoint::recv_datagram`] takes them.
    DatagramReceived {
        /// The connection.
        conn: ConnHandle,
    },
    /// A datagram send that said [`DatagramError::Blocked`] may be tried again.
    DatagramsUnblocked {
        /// The connection.
        conn: ConnHandle,
    },
    /// The connection now sends to `remote`: the peer's authenticated packets arrived from there
    /// and the path was validated (RFC 9000 §9), or the owner called
    /// [`Endpoint::set_remote`].
    RemoteChanged {
        /// The connection.
        conn: ConnHandle,
        /// Its new remote address.
        remote: SocketAddr,
    },
    /// The connection is closed; nothing more can be sent or read on it.
    Closed {
        /// The connection.
        conn: ConnHandle,
        /// Why.
        reason: CloseReason,
    },
    /// The connection's state is gone (after the closing period of RFC 9000 §10.2); its handle is
    /// no longer valid.
    Drained {
        /// The connection.
        conn: ConnHandle,
    },
}

/// Counters of a connection, from quinn-proto's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// The congestion window, in bytes.
    pub cwnd: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets declared lost (RFC 9002 §6).
    pub lost_packets: u64,
    /// Bytes in the packets declared lost.
    pub lost_bytes: u64,
    /// Congestion events (reductions of the window).
    pub congestion_events: u64,
    /// The path MTU in use.
    pub mtu: u16,
}

/// One connection and the addresses around it.
struct Conn {
    quinn: qp::Connection,
    /// The address quinn-proto believes the peer is at; it never changes on a client.
    quinn_remote: SocketAddr,
    /// Where datagrams really go: differs from `quinn_remote` after [`Endpoint::set_remote`].
    remote: SocketAddr,
    /// What the dialler expected, `None` on accepted connections.
    expected: Option<PeerId>,
    /// The service dialled, or `None` until an accepted connection negotiates one.
    service: Option<u16>,
    /// Our connection ids, newest last, for routing.
    cids: VecDeque<[u8; LOCAL_CID_LEN]>,
    /// Cached `quinn.poll_timeout()`, since that needs `&mut`.
    timeout: Option<Instant>,
    /// Whether [`Event::Closed`] was reported.
    closed: bool,
    /// Streams whose end quinn-proto reported in a read that also returned data; the next read
    /// says [`Read::Finished`] (quinn-proto forgets the stream once it said so).
    ended: BTreeSet<StreamId>,
}

/// The connection ids quinn-proto asked for since they were last claimed.
type CidLog = Arc<Mutex<Vec<[u8; LOCAL_CID_LEN]>>>;

/// quinn-proto's connection id generator, on a seeded ChaCha20 stream instead of the thread RNG,
/// recording every id so the endpoint can route by it.
struct SeededCids {
    rng: ChaCha20Rng,
    log: CidLog,
}

impl qp::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> qp::ConnectionId {
        let mut id = [0u8; LOCAL_CID_LEN];
        self.rng.fill_bytes(&mut id);
        if let Ok(mut log) = self.log.lock() {
            log.push(id);
        }
        qp::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        LOCAL_CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Validation tokens carry the wall-clock time they were issued; this endpoint issues none
/// (no Retry, no NEW_TOKEN), so quinn-proto never asks. A fixed instant, should it ever ask,
/// makes every token look expired rather than reading the clock.
#[derive(Debug)]
struct NoTokenClock;

impl qp::TimeSource for NoTokenClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
    }
}

/// QUIC for FogConnect: every connection of one UDP socket's worth of peers, driven by the
/// sans-IO contract (see the [crate docs](crate)).
pub struct Endpoint {
    inner: qp::Endpoint,
    config: Config,
    cert: Certificate,
    transport: Arc<qp::TransportConfig>,
    policy: Arc<Mutex<AcceptPolicy>>,
    /// Boxed: a map node holds up to 11 values inline, and a `Conn` (quinn-proto's whole
    /// connection) is several KiB, so an endpoint of one connection would carry ten empty
    /// slots of that size (about 70 KiB; measured by the memory bench).
    conns: BTreeMap<ConnHandle, Box<Conn>>,
    /// Our connection ids → their connection.
    cid_owner: BTreeMap<[u8; LOCAL_CID_LEN], ConnHandle>,
    cid_log: CidLog,
    /// Initial destination ids of our dials (RFC 9000 §7.2), from the seed.
    initial_cids: Arc<Mutex<ChaCha20Rng>>,
    /// Datagrams quinn-proto's endpoint answered with (version negotiation, refusals, resets).
    responses: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Where `poll_transmit` resumes, so no connection starves the others.
    next_transmit: usize,
    scratch: Vec<u8>,
    last_now: Instant,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peer_id", &self.cert.peer_id())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint presenting `identity`, with every random choice of quinn-proto (connection
    /// ids, packet number skips, the stateless-reset and token keys) drawn from `seed`.
    ///
    /// The TLS handshake's own randomness (client/server random, key shares) comes from rustls'
    /// ring provider, which reads the OS random source: the one place this crate touches it, as
    /// a key exchange must not be predictable from a seed that tests share.
    pub fn new(
        config: Config,
        identity: &KeyPair,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let cert =
            Certificate::self_signed(identity).map_err(|e| ConfigError::Tls(e.to_string()))?;
        Self::with_certificate(config, cert, seed, now)
    }

    /// As [`new`](Self::new), presenting `cert` ([`Certificate::self_signed`] of the identity),
    /// made once by an owner that runs many endpoints for one identity (the Node: one per QUIC
    /// connection) rather than signed again for each.
    pub fn with_certificate(
        config: Config,
        cert: Certificate,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, ConfigError> {
        if config.initial_mtu < 1200 {
            return Err(ConfigError::MtuTooSmall(config.initial_mtu));
        }
        if config.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut draw = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let (quinn_seed, reset_key, token_key, cid_seed, dcid_seed) =
            (draw(), draw(), draw(), draw(), draw());

        let cid_log: CidLog = Arc::default();
        let generator_log = cid_log.clone();
        let mut endpoint_config = qp::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        endpoint_config
            // RFC 9443 §3 / fog-core's demux: the fixed bit stays set on every packet.
            .grease_quic_bit(false)
            .max_udp_payload_size(config.initial_mtu)
            .map_err(|_| ConfigError::MtuTooLarge(config.initial_mtu))?;
        // quinn-proto calls the factory once per endpoint.
        let cid_rng = Mutex::new(Some(ChaCha20Rng::from_seed(cid_seed)));
        endpoint_config.cid_generator(move || {
            let rng = cid_rng
                .lock()
                .ok()
                .and_then(|mut r| r.take())
                .unwrap_or_else(|| ChaCha20Rng::from_seed(cid_seed));
            Box::new(SeededCids {
                rng,
                log: generator_log.clone(),
            })
        });

        let transport = Arc::new(transport_config(&config)?);
        let policy = Arc::new(Mutex::new(config.accept.clone()));
        let server = server_config(&config, &cert, &policy, &transport, &token_key)?;
        let inner = qp::Endpoint::new(Arc::new(endpoint_config), server, false, Some(quinn_seed));
        Ok(Endpoint {
            inner,
            // Empty until quinn-proto writes a response into it (version negotiation, a
            // refusal, a stateless reset), which then moves out whole: an endpoint per
            // connection would otherwise hold a datagram's worth for nothing.
            scratch: Vec::new(),
            config,
            cert,
            transport,
            policy,
            conns: BTreeMap::new(),
            cid_owner: BTreeMap::new(),
            cid_log,
            initial_cids: Arc::new(Mutex::new(ChaCha20Rng::from_seed(dcid_seed))),
            responses: VecDeque::new(),
            events: VecDeque::new(),
            next_transmit: 0,
            last_now: now,
        })
    }

    /// Our identity's certificate (its [`fingerprint`](Certificate::fingerprint) goes into
    /// offers).
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces which peers may complete incoming handshakes; it applies to every handshake
    /// that has not yet checked the peer's certificate.
    pub fn set_accept_policy(&mut self, policy: AcceptPolicy) {
        if let Ok(mut p) = self.policy.lock() {
            *p = policy.clone();
        }
        self.config.accept = policy;
    }

    /// Dials `expected` at `remote` for `service`. The handshake fails unless the peer proves it
    /// holds `expected`'s key and accepts `service`; either way an event follows
    /// ([`Event::Connected`] or [`Event::Closed`]).
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        expected: PeerId,
        service: u16,
    ) -> Result<ConnHandle, ConnectError> {
        self.advance(now);
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let mut tls = rustls::ClientConfig::builder_with_details(provider(), Arc::new(NoClock))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExpectedPeer::new(expected)))
            .with_client_auth_cert(self.cert.chain(), self.cert.private_key())
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![alpn(service)];
        tls.enable_sni = false;
        tls.resumption = rustls::client::Resumption::disabled();
        let crypto = qp::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut client = qp::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        client.token_store(Arc::new(qp::NoneTokenStore));
        let initial = self.initial_cids.clone();
        client.initial_dst_cid_provider(Arc::new(move || {
            let mut id = [0u8; LOCAL_CID_LEN];
            if let Ok(mut rng) = initial.lock() {
                rng.fill_bytes(&mut id);
            }
            qp::ConnectionId::new(&id)
        }));
        let (ch, quinn) = self
            .inner
            .connect(now, client, remote, SERVER_NAME)
            .map_err(|e| match e {
                qp::ConnectError::InvalidRemoteAddress(a) => ConnectError::InvalidRemote(a),
                qp::ConnectError::CidsExhausted => ConnectError::TooManyConnections,
                other => ConnectError::Tls(other.to_string()),
            })?;
        let conn = ConnHandle(ch.0);
        self.conns.insert(
            conn,
            Box::new(Conn {
                quinn,
                quinn_remote: remote,
                remote,
                expected: Some(expected),
                service: Some(service),
                cids: VecDeque::new(),
                timeout: None,
                closed: false,
                ended: BTreeSet::new(),
            }),
        );
        self.claim_cids(conn);
        self.pump(conn, now);
        Ok(conn)
    }

    /// Sends the connection's datagrams to `remote` from now on, without a new handshake: the
    /// Node moved it (from a relay to a direct path, say) and authenticated the new path itself.
    /// Datagrams from `remote` are taken as the peer's. The congestion controller and RTT
    /// estimate restart (the new path shares nothing with the old), and a PING goes out at once
    /// so the peer sees the new path.
    pub fn set_remote(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        remote: SocketAddr,
    ) -> Result<(), ConnError> {
        self.advance(now);
        let c = self.live(conn)?;
        if c.remote == remote {
            return Ok(());
        }
        c.remote = remote;
        c.quinn.path_changed(now);
        // A PING shows the peer the new path at once. Not while handshaking: the handshake's own
        // retransmissions do that, and quinn-proto 0.11.19 arms its probe timer wrongly for a
        // PING queued then (its debug assertion in `pto_time_and_space`, found by quic_ops;
        // quinn-rs/quinn#2658 reports the same assertion after a migration).
        if !c.quinn.is_handshaking() {
            c.quinn.ping();
        }
        self.events.push_back(Event::RemoteChanged { conn, remote });
        self.pump(conn, now);
        Ok(())
    }

    /// The owner moved the connection's datagrams to another path while their address stays
    /// the same (the Node wraps them in a session that rides on whatever path it has): as
    /// [`set_remote`](Self::set_remote) does for a new address, the congestion controller and
    /// RTT estimate restart and a PING goes out at once. Its acknowledgement ends the
    /// probe-timeout back-off the dead path ran up (RFC 9002 §6.2.1), so what was lost goes
    /// again now, not after a back-off that could outlast the idle timeout.
    pub fn path_changed(&mut self, now: Instant, conn: ConnHandle) -> Result<(), ConnError> {
        self.advance(now);
        let c = self.live(conn)?;
        c.quinn.path_changed(now);
        // Not while handshaking: see `set_remote`.
        if !c.quinn.is_handshaking() {
            c.quinn.ping();
        }
        self.pump(conn, now);
        Ok(())
    }

    /// Where the connection's datagrams go.
    pub fn remote(&self, conn: ConnHandle) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.remote)
    }

    /// The connections, in handle order.
    pub fn connections(&self) -> impl Iterator<Item = ConnHandle> + '_ {
        self.conns.keys().copied()
    }

    /// Opens a stream. Data may be written at once; it leaves when the handshake allows.
    pub fn open(&mut self, conn: ConnHandle, kind: StreamKind) -> Result<StreamId, StreamError> {
        let c = self.live_stream(conn)?;
        c.quinn
            .streams()
            .open(kind.dir())
            .map(StreamId::from)
            .ok_or(StreamError::Limit)
    }

    /// Writes as much of `data` as the flow-control and send windows allow, returning how much.
    /// Nothing at all fits: [`StreamError::Blocked`], and [`Event::Writable`] follows.
    pub fn write(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        data: &[u8],
    ) -> Result<usize, StreamError> {
        let c = self.live_half(conn, stream, Half::Send)?;
        let n = c
            .quinn
            .send_stream(stream.quinn())
            .write(data)
            .map_err(|e| match e {
                qp::WriteError::Blocked => StreamError::Blocked,
                qp::WriteError::Stopped(code) => StreamError::Stopped(code.into_inner()),
                qp::WriteError::ClosedStream => StreamError::UnknownStream,
            })?;
        Ok(n)
    }

    /// Writes as much of `data` as the windows allow without copying it (quinn-proto keeps
    /// the buffers until the peer acknowledges them), returning how many bytes. Each chunk
    /// written whole is left empty, one written in part holds what was not written. Nothing
    /// at all fits: [`StreamError::Blocked`], and [`Event::Writable`] follows.
    pub fn write_chunks(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        data: &mut [Bytes],
    ) -> Result<usize, StreamError> {
        let c = self.live_half(conn, stream, Half::Send)?;
        let written = c
            .quinn
            .send_stream(stream.quinn())
            .write_chunks(data)
            .map_err(|e| match e {
                qp::WriteError::Blocked => StreamError::Blocked,
                qp::WriteError::Stopped(code) => StreamError::Stopped(code.into_inner()),
                qp::WriteError::ClosedStream => StreamError::UnknownStream,
            })?;
        Ok(written.bytes)
    }

    /// Says that nothing more will be written: the peer reads [`Read::Finished`] after the data.
    pub fn finish(&mut self, conn: ConnHandle, stream: StreamId) -> Result<(), StreamError> {
        let c = self.live_half(conn, stream, Half::Send)?;
        c.quinn
            .send_stream(stream.quinn())
            .finish()
            .map_err(|e| match e {
                qp::FinishError::Stopped(code) => StreamError::Stopped(code.into_inner()),
                qp::FinishError::ClosedStream => StreamError::UnknownStream,
            })
    }

    /// Abandons sending on a stream (RESET_STREAM with `code`); the peer's reads say
    /// [`StreamError::Reset`].
    pub fn reset(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        code: u64,
    ) -> Result<(), StreamError> {
        let (quinn, code) = self.coded(conn, stream, Half::Send, code)?;
        quinn
            .send_stream(stream.quinn())
            .reset(code)
            .map_err(|_| StreamError::UnknownStream)
    }

    /// Asks the peer to stop sending on a stream (STOP_SENDING with `code`).
    pub fn stop(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        code: u64,
    ) -> Result<(), StreamError> {
        let (quinn, code) = self.coded(conn, stream, Half::Recv, code)?;
        quinn
            .recv_stream(stream.quinn())
            .stop(code)
            .map_err(|_| StreamError::UnknownStream)
    }

    /// A live connection and an application error code checked to fit QUIC's 62 bits.
    fn coded(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        half: Half,
        code: u64,
    ) -> Result<(&mut qp::Connection, qp::VarInt), StreamError> {
        let code = qp::VarInt::from_u64(code).map_err(|_| StreamError::CodeTooLarge)?;
        Ok((&mut self.live_half(conn, stream, half)?.quinn, code))
    }

    /// Reads in order into `buf`. Nothing to read yet: [`StreamError::Blocked`], and
    /// [`Event::Readable`] follows.
    pub fn read(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        buf: &mut [u8],
    ) -> Result<Read, StreamError> {
        let mut filled = 0;
        self.read_chunks(conn, stream, buf.len(), |chunk| {
            // `read_chunks` hands out at most what is left of `buf`.
            let end = filled + chunk.len();
            if let Some(to) = buf.get_mut(filled..end) {
                to.copy_from_slice(&chunk);
                filled = end;
            }
        })
    }

    /// Reads in order up to `max` bytes, handing `take` quinn-proto's own buffers one after
    /// the other (the datagrams they arrived in, decrypted in place: no copy). Returns as
    /// [`read`](Self::read) does, [`Read::Data`] counting the bytes handed out.
    pub fn read_chunks(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        max: usize,
        mut take: impl FnMut(Bytes),
    ) -> Result<Read, StreamError> {
        let c = self.live_half(conn, stream, Half::Recv)?;
        if c.ended.remove(&stream) {
            return Ok(Read::Finished);
        }
        let mut recv = c.quinn.recv_stream(stream.quinn());
        let mut chunks = recv.read(true).map_err(|e| match e {
            qp::ReadableError::ClosedStream => StreamError::UnknownStream,
            qp::ReadableError::IllegalOrderedRead => StreamError::UnknownStream,
        })?;
        let mut filled = 0;
        let mut finished = false;
        let mut reset = None;
        while filled < max {
            match chunks.next(max - filled) {
                Ok(Some(chunk)) => {
                    filled += chunk.bytes.len();
                    take(chunk.bytes);
                }
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(qp::ReadError::Blocked) => break,
                Err(qp::ReadError::Reset(code)) => {
                    reset = Some(code.into_inner());
                    break;
                }
            }
        }
        // Finalizing may release flow-control credit (MAX_STREAM_DATA), sent on the next
        // poll_transmit.
        let _ = chunks.finalize();
        if finished && filled > 0 {
            c.ended.insert(stream);
        }
        self.pump_soon(conn);
        match (filled, finished, reset) {
            (0, true, _) => Ok(Read::Finished),
            (0, _, Some(code)) => Err(StreamError::Reset(code)),
            (0, _, None) => Err(StreamError::Blocked),
            (n, _, _) => Ok(Read::Data(n)),
        }
    }

    /// Queues an unreliable datagram (RFC 9221). Larger than
    /// [`max_datagram_size`](Self::max_datagram_size): [`DatagramError::TooLarge`].
    pub fn send_datagram(&mut self, conn: ConnHandle, data: &[u8]) -> Result<(), DatagramError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(DatagramError::UnknownConnection)?;
        if c.closed {
            return Err(DatagramError::Closed);
        }
        let max = c.quinn.datagrams().max_size();
        c.quinn
            .datagrams()
            .send(Bytes::copy_from_slice(data), false)
            .map_err(|e| match e {
                qp::SendDatagramError::UnsupportedByPeer => DatagramError::UnsupportedByPeer,
                qp::SendDatagramError::Disabled => DatagramError::Disabled,
                qp::SendDatagramError::TooLarge => DatagramError::TooLarge {
                    max: max.unwrap_or(0),
                },
                qp::SendDatagramError::Blocked(_) => DatagramError::Blocked,
            })
    }

    /// The largest datagram the path and the peer allow now, if the peer takes datagrams.
    pub fn max_datagram_size(&mut self, conn: ConnHandle) -> Option<usize> {
        self.conns.get_mut(&conn)?.quinn.datagrams().max_size()
    }

    /// The next received datagram, if any.
    pub fn recv_datagram(&mut self, conn: ConnHandle) -> Option<Bytes> {
        self.conns.get_mut(&conn)?.quinn.datagrams().recv()
    }

    /// Closes the connection with an application `code` and `reason`, which the peer sees in
    /// [`CloseReason::ByPeer`]. Streams stop at once; the handle stays valid until
    /// [`Event::Drained`].
    pub fn close(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        code: u64,
        reason: &[u8],
    ) -> Result<(), ConnError> {
        self.advance(now);
        let code = qp::VarInt::from_u64(code).map_err(|_| ConnError::CodeTooLarge)?;
        let c = self.live(conn)?;
        c.quinn.close(now, code, Bytes::copy_from_slice(reason));
        c.closed = true;
        self.events.push_back(Event::Closed {
            conn,
            reason: CloseReason::Local,
        });
        self.pump(conn, now);
        Ok(())
    }

    /// The [`Fingerprint`] of the certificate the peer presented, once its handshake has
    /// checked it: for an owner that signed the peer's expected fingerprint into an offer.
    pub fn peer_fingerprint(&self, conn: ConnHandle) -> Option<Fingerprint> {
        let c = self.conns.get(&conn)?;
        c.quinn
            .crypto_session()
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().map(|der| Fingerprint::of(der)))
    }

    /// The connection's counters.
    pub fn stats(&self, conn: ConnHandle) -> Option<Stats> {
        let c = self.conns.get(&conn)?;
        let s = c.quinn.stats();
        Some(Stats {
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            packets_sent: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            congestion_events: s.path.congestion_events,
            mtu: s.path.current_mtu,
        })
    }

    /// Whether a datagram may be QUIC for this endpoint: fog-core's demux routes first bytes
    /// 64–127 and 192–255 to QUIC (with the fixed bit set); everything else is someone else's.
    pub fn accepts(&self, payload: &[u8]) -> bool {
        matches!(payload.first(), Some(64..=127 | 192..=255))
    }

    /// Feeds one datagram that arrived at `now` from `source`. Hostile or foreign bytes are
    /// dropped (quinn-proto authenticates every packet); nothing here panics on them.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, payload: &[u8]) {
        self.advance(now);
        if !self.accepts(payload) {
            return;
        }
        // A datagram from where the owner moved a connection is handed to quinn-proto as coming
        // from the address quinn-proto knows (a client never follows a server elsewhere).
        let mut from = source;
        if let Some(c) = self
            .route(payload)
            .and_then(|conn| self.conns.get(&conn))
            .filter(|c| c.remote == source)
        {
            from = c.quinn_remote;
        }
        self.scratch.clear();
        let event = self.inner.handle(
            now,
            from,
            None,
            None,
            BytesMut::from(payload),
            &mut self.scratch,
        );
        // A stray id the generator made outside any connection (none today) belongs to nobody.
        self.cid_log.lock().map(|mut l| l.clear()).ok();
        match event {
            None => {}
            Some(qp::DatagramEvent::ConnectionEvent(ch, event)) => {
                let conn = ConnHandle(ch.0);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.quinn.handle_event(event);
                    self.pump(conn, now);
                }
            }
            Some(qp::DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming),
            Some(qp::DatagramEvent::Response(t)) => self.respond(t),
        }
    }

    fn incoming(&mut self, now: Instant, incoming: qp::Incoming) {
        let remote = incoming.remote_address();
        self.scratch.clear();
        if self.conns.len() >= self.config.max_connections {
            let t = self.inner.refuse(incoming, &mut self.scratch);
            self.respond(t);
            return;
        }
        match self.inner.accept(incoming, now, &mut self.scratch, None) {
            Ok((ch, quinn)) => {
                let conn = ConnHandle(ch.0);
                self.conns.insert(
                    conn,
                    Box::new(Conn {
                        quinn,
                        quinn_remote: remote,
                        remote,
                        expected: None,
                        service: None,
                        cids: VecDeque::new(),
                        timeout: None,
                        closed: false,
                        ended: BTreeSet::new(),
                    }),
                );
                self.claim_cids(conn);
                self.events.push_back(Event::Incoming { conn, remote });
                self.pump(conn, now);
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.respond(t);
                }
            }
        }
    }

    fn respond(&mut self, t: qp::Transmit) {
        let mut datagram = std::mem::take(&mut self.scratch);
        datagram.truncate(t.size);
        self.responses.push_back((t.destination, datagram));
    }

    /// The connection a datagram's destination connection id names, if it is one of ours.
    fn route(&self, payload: &[u8]) -> Option<ConnHandle> {
        let first = *payload.first()?;
        let dcid = if first & 0x80 == 0 {
            // Short header (RFC 9000 §17.3): our fixed-length id follows the first byte.
            payload.get(1..1 + LOCAL_CID_LEN)?
        } else {
            // Long header (RFC 9000 §17.2): version, then the length-prefixed id.
            let len = usize::from(*payload.get(5)?);
            if len != LOCAL_CID_LEN {
                return None;
            }
            payload.get(6..6 + len)?
        };
        let dcid: [u8; LOCAL_CID_LEN] = dcid.try_into().ok()?;
        self.cid_owner.get(&dcid).copied()
    }

    /// Fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let due: Vec<ConnHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.timeout.is_some_and(|t| t <= now))
            .map(|(&h, _)| h)
            .collect();
        for conn in due {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.quinn.handle_timeout(now);
                self.pump(conn, now);
            }
        }
    }

    /// Writes the next datagram into `buf` and says where it goes.
    ///
    /// One datagram per call: quinn-proto is asked for at most one segment (no GSO batches), so
    /// a [`Transmit`] is always exactly one UDP payload.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Config::max_datagram_len`] (a caller's precondition).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        assert!(
            buf.len() >= self.config.max_datagram_len(),
            "poll_transmit needs a buffer of at least {} bytes",
            self.config.max_datagram_len()
        );
        let mut scratch = std::mem::take(&mut self.scratch);
        let Some(t) = self.poll_transmit_vec(now, &mut scratch) else {
            // Nothing more to send: the buffer goes until the next burst (one allocation per
            // burst), so an idle endpoint holds none (the Node runs one per QUIC connection).
            return None;
        };
        // A response of quinn-proto's endpoint longer than `buf` is cut, as it always was
        // (its connections' datagrams fit: `poll_transmit_vec` drops any that would not).
        let len = t.len.min(buf.len()).min(scratch.len());
        buf[..len].copy_from_slice(&scratch[..len]);
        self.scratch = scratch;
        Some(Transmit { len, ..t })
    }

    /// As [`poll_transmit`](Self::poll_transmit), but quinn-proto builds the datagram in `buf`
    /// itself (cleared first; it grows as needed), which saves copying it: a caller that
    /// keeps the datagram anyway (to send it again) gives its own buffer here.
    pub fn poll_transmit_vec(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.advance(now);
        buf.clear();
        if let Some((destination, data)) = self.responses.pop_front() {
            buf.extend_from_slice(&data);
            return Some(Transmit::new(destination, data.len()));
        }
        // Where to start this round (round-robin from `next_transmit`), without collecting the
        // handles: one connection, the Node's case, asks for no allocation per datagram. A
        // connection that `pump` drops meanwhile is skipped; each is asked at most once.
        let mut at = ConnHandle(self.next_transmit);
        for _ in 0..self.conns.len() {
            let next = self
                .conns
                .range(at..)
                .next()
                .or_else(|| self.conns.iter().next())
                .map(|(&h, _)| h);
            let Some(conn) = next else {
                break;
            };
            at = ConnHandle(conn.0.wrapping_add(1));
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            buf.clear();
            let sent = c.quinn.poll_transmit(now, 1, buf);
            c.timeout = due(&mut c.quinn, now);
            if let Some(t) = sent {
                debug_assert!(t.size <= buf.len());
                let len = t.size.min(buf.len());
                if len > self.config.max_datagram_len() {
                    // Only if quinn-proto exceeded the configured payload size; dropping it is
                    // what a lossy path would do.
                    debug_assert!(false, "quinn-proto datagram of {len} bytes exceeds the MTU");
                    continue;
                }
                buf.truncate(len);
                let destination = if t.destination == c.quinn_remote {
                    c.remote
                } else {
                    t.destination
                };
                self.next_transmit = conn.0.wrapping_add(1);
                return Some(Transmit::new(destination, len));
            }
            self.pump(conn, now);
        }
        buf.clear();
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.timeout).min()
    }

    fn advance(&mut self, now: Instant) {
        debug_assert!(now >= self.last_now, "time went backwards");
        self.last_now = self.last_now.max(now);
    }

    fn live(&mut self, conn: ConnHandle) -> Result<&mut Conn, ConnError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(ConnError::UnknownConnection)?;
        if c.closed {
            return Err(ConnError::Closed);
        }
        Ok(c)
    }

    fn live_stream(&mut self, conn: ConnHandle) -> Result<&mut Conn, StreamError> {
        self.live(conn).map_err(|e| match e {
            ConnError::UnknownConnection | ConnError::CodeTooLarge => {
                StreamError::UnknownConnection
            }
            ConnError::Closed => StreamError::Closed,
        })
    }

    /// A live connection on which this side may use `half` of `stream`: quinn-proto asserts
    /// that nobody writes to a peer's unidirectional stream or reads from its own, and the
    /// stream id is the caller's, so that is checked here and refused with a typed error.
    fn live_half(
        &mut self,
        conn: ConnHandle,
        stream: StreamId,
        half: Half,
    ) -> Result<&mut Conn, StreamError> {
        let c = self.live_stream(conn)?;
        let id = stream.quinn();
        let ours = id.initiator() == c.quinn.side();
        let allowed = id.dir() == qp::Dir::Bi
            || match half {
                Half::Send => ours,
                Half::Recv => !ours,
            };
        if allowed {
            Ok(c)
        } else {
            Err(StreamError::WrongDirection)
        }
    }

    /// After a read, which may have queued flow-control credit and events: drains them now,
    /// at the time of the last input (reads take no `now`).
    fn pump_soon(&mut self, conn: ConnHandle) {
        let now = self.last_now;
        self.pump(conn, now);
    }

    /// Gives the connection's fresh connection ids to the router.
    fn claim_cids(&mut self, conn: ConnHandle) {
        let fresh = match self.cid_log.lock() {
            Ok(mut log) => std::mem::take(&mut *log),
            Err(_) => return,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        for id in fresh {
            self.cid_owner.insert(id, conn);
            c.cids.push_back(id);
            if c.cids.len() > REMEMBERED_CIDS {
                if let Some(old) = c.cids.pop_front() {
                    if self.cid_owner.get(&old) == Some(&conn) {
                        self.cid_owner.remove(&old);
                    }
                }
            }
        }
    }

    /// Drains a connection: its requests to the endpoint, then its events, translated.
    fn pump(&mut self, conn: ConnHandle, now: Instant) {
        let mut drained = false;
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(ev) = c.quinn.poll_endpoint_events() else {
                break;
            };
            drained |= ev.is_drained();
            if let Some(back) = self.inner.handle_event(qp::ConnectionHandle(conn.0), ev) {
                c.quinn.handle_event(back);
            }
            self.claim_cids(conn);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while let Some(ev) = c.quinn.poll() {
            match ev {
                qp::Event::HandshakeDataReady => {}
                qp::Event::Connected => match authenticated(c) {
                    Ok((peer, service)) => {
                        c.service = Some(service);
                        self.events.push_back(Event::Connected {
                            conn,
                            peer,
                            service,
                        });
                    }
                    Err(reason) => {
                        // Unreachable with our verifiers; refuse rather than trust.
                        c.quinn.close(now, qp::VarInt::from_u32(0), Bytes::new());
                        if !c.closed {
                            c.closed = true;
                            self.events.push_back(Event::Closed { conn, reason });
                        }
                    }
                },
                qp::Event::ConnectionLost { reason } => {
                    if !c.closed {
                        c.closed = true;
                        self.events.push_back(Event::Closed {
                            conn,
                            reason: CloseReason::from_quinn(reason),
                        });
                    }
                }
                qp::Event::Stream(s) => match s {
                    qp::StreamEvent::Opened { dir } => {
                        while let Some(id) = c.quinn.streams().accept(dir) {
                            self.events.push_back(Event::StreamOpened {
                                conn,
                                stream: id.into(),
                            });
                        }
                    }
                    qp::StreamEvent::Readable { id } => self.events.push_back(Event::Readable {
                        conn,
                        stream: id.into(),
                    }),
                    qp::StreamEvent::Writable { id } => self.events.push_back(Event::Writable {
                        conn,
                        stream: id.into(),
                    }),
                    qp::StreamEvent::Finished { id } => self.events.push_back(Event::Finished {
                        conn,
                        stream: id.into(),
                    }),
                    qp::StreamEvent::Stopped { id, error_code } => {
                        self.events.push_back(Event::Stopped {
                            conn,
                            stream: id.into(),
                            code: error_code.into_inner(),
                        })
                    }
                    qp::StreamEvent::Available { dir } => {
                        self.events.push_back(Event::StreamsAvailable {
                            conn,
                            kind: StreamKind::of(dir),
                        })
                    }
                },
                qp::Event::DatagramReceived => {
                    self.events.push_back(Event::DatagramReceived { conn })
                }
                qp::Event::DatagramsUnblocked => {
                    self.events.push_back(Event::DatagramsUnblocked { conn })
                }
            }
        }
        // A server follows its peer to a new address once quinn-proto validated the path.
        let now_remote = c.quinn.remote_address();
        if now_remote != c.quinn_remote {
            c.quinn_remote = now_remote;
            c.remote = now_remote;
            self.events.push_back(Event::RemoteChanged {
                conn,
                remote: now_remote,
            });
        }
        c.timeout = due(&mut c.quinn, now);
        // Forgotten only after its last events (the loss of the connection) were reported.
        if drained {
            self.forget(conn);
        }
    }

    fn forget(&mut self, conn: ConnHandle) {
        if let Some(c) = self.conns.remove(&conn) {
            for id in c.cids {
                if self.cid_owner.get(&id) == Some(&conn) {
                    self.cid_owner.remove(&id);
                }
            }
            self.events.push_back(Event::Drained { conn });
        }
    }
}

/// The peer's verified identity and the negotiated service, once the handshake is done.
fn authenticated(c: &Conn) -> Result<(PeerId, u16), CloseReason> {
    let session = c.quinn.crypto_session();
    let peer = session
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|der| ed25519_key_of(der)))
        .ok_or(CloseReason::IdentityRejected)?;
    if c.expected.is_some_and(|e| e != peer) {
        return Err(CloseReason::IdentityRejected);
    }
    let service = session
        .handshake_data()
        .and_then(|any| any.downcast::<qp::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol.as_deref().and_then(service_of_alpn))
        .ok_or(CloseReason::ServiceMismatch)?;
    if c.service.is_some_and(|s| s != service) {
        return Err(CloseReason::ServiceMismatch);
    }
    Ok((peer, service))
}

fn transport_config(config: &Config) -> Result<qp::TransportConfig, ConfigError> {
    let mut t = qp::TransportConfig::default();
    let idle = qp::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| ConfigError::IdleTimeoutTooLarge(config.idle_timeout))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(config.keep_alive)
        .initial_mtu(config.initial_mtu)
        .min_mtu(config.initial_mtu)
        .mtu_discovery_config(None)
        .enable_segmentation_offload(false)
        .stream_receive_window(qp::VarInt::from_u32(config.stream_receive_window))
        .receive_window(qp::VarInt::from_u32(config.receive_window))
        .send_window(config.send_window)
        .max_concurrent_bidi_streams(qp::VarInt::from_u32(config.max_streams))
        .max_concurrent_uni_streams(qp::VarInt::from_u32(config.max_streams))
        .datagram_receive_buffer_size(
            (config.datagram_receive_buffer > 0).then_some(config.datagram_receive_buffer),
        )
        .datagram_send_buffer_size(config.datagram_send_buffer);
    Ok(t)
}

fn server_config(
    config: &Config,
    cert: &Certificate,
    policy: &Arc<Mutex<AcceptPolicy>>,
    transport: &Arc<qp::TransportConfig>,
    token_key: &[u8; 32],
) -> Result<Option<Arc<qp::ServerConfig>>, ConfigError> {
    if config.services.is_empty() {
        return Ok(None);
    }
    let tls_err = |e: rustls::Error| ConfigError::Tls(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_details(provider(), Arc::new(NoClock))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(PolicyVerifier::new(policy.clone())))
        .with_single_cert(cert.chain(), cert.private_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = config.services.iter().map(|&s| alpn(s)).collect();
    // No resumption: every connection proves its key afresh.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let crypto = qp::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    let key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(token_key);
    let mut server = qp::ServerConfig::new(Arc::new(crypto), Arc::new(key));
    let mut tokens = qp::ValidationTokenConfig::default();
    tokens.sent(0);
    server
        .transport_config(transport.clone())
        .validation_token_config(tokens)
        .time_source(Arc::new(NoTokenClock))
        .max_incoming(config.max_connections)
        .migration(true);
    Ok(Some(Arc::new(server)))
}

/// When quinn-proto's next timer is due, never before `now`.
///
/// Its probe timeout is counted from when the last ack-eliciting packet was sent (RFC 9002
/// §6.2.1), so after a long quiet spell an ACK can re-arm it at an instant long past, which
/// quinn-proto means as "fire at once". Our driving contract has no past deadlines: it is due
/// now (found by the chaos run, seed 9: 10.5 s in the past).
fn due(quinn: &mut qp::Connection, now: Instant) -> Option<Instant> {
    quinn.poll_timeout().map(|t| t.max(now))
}

impl SansIo for Endpoint {
    type Event = Event;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        Endpoint::accepts(self, packet.payload)
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.handle_datagram(now, packet.source, packet.payload);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Endpoint::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Endpoint::poll_transmit(self, now, buf)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Endpoint::poll_event(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
}
