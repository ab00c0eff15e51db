//! The signaling section: [`fog_signal::server::Server`] behind WebSocket (RFC 6455) at `/ws`,
//! on non-blocking mio TCP, optionally inside rustls (`wss://`). No async runtime: one thread, one
//! `mio::Poll`, edge-triggered readiness, and `tungstenite` driven on the non-blocking stream
//! (its handshake resumes from `MidHandshake` after `WouldBlock`).
//!
//! A connection goes through three states:
//! - **handshake** (TLS, then the HTTP upgrade) with a deadline, so a slow client (slowloris)
//!   is cut at `--handshake-timeout-ms`; a wrong path is answered 404, a request that is not a
//!   WebSocket upgrade 400, and both are closed;
//! - **open**: each text frame goes to the machine, whose outputs become text frames and close
//!   frames; binary frames are refused (close 1003), frames and messages over `max_frame_len`
//!   are refused by tungstenite before they are buffered (error `too_large`, close 1009);
//!   tungstenite answers pings;
//! - **closing**: the close frame (or the HTTP error) is flushed, the write side shut, and what
//!   the client still sends is read and discarded for at most [`LINGER`], so that the kernel does
//!   not answer unread data with a reset that could destroy the close frame in flight.
//!
//! Output is written at once and, when the socket is full, kept in tungstenite's buffer and
//! flushed on the next writable event. A connection with more than `--max-unsent` bytes waiting
//! (tungstenite's `max_write_buffer_size`; with TLS, plus up to rustls' 64 KiB of records) is
//! dropped: a client that does not read cannot make the server hold unbounded memory.
//!
//! This module is where the signaling machine meets the wall clock: it reads `Instant::now()`
//! at each turn of the loop and again before each frame it hands to the machine, and passes it
//! in.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::web;

use fog_signal::KeyPair;
use fog_signal::msg::{ErrorCode, ServerMsg};
use fog_signal::server::{ClusterOutput, ConnId, Limits, Output, Server, ServerConfig};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConnection;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Message, WebSocketConfig};
use tungstenite::{Error as WsError, WebSocket};

use crate::cli::SignalArgs;
use crate::cluster::{self, Cluster};

/// The path the WebSocket is served at.
pub(crate) const PATH: &str = "/ws";

/// Default for `--handshake-timeout-ms`.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default for `--max-unsent`: eight frames of the default 16 KiB limit.
pub(crate) const DEFAULT_MAX_UNSENT: usize = 128 * 1024;

/// How long a closed connection is read and discarded before the socket is dropped.
const LINGER: Duration = Duration::from_secs(2);

/// Sockets that may be in the handshake or closing beyond `max_connections`, so that a client
/// over the limit still completes its upgrade and is told `server_full` with a reason, while a
/// flood of idle TCP connections stays bounded. Over the sum, new TCP connections are dropped
/// unanswered.
const SOCKET_SLACK: usize = 256;

/// Retry delay after `accept` fails for a reason other than `WouldBlock` (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids start here so that a connection's token is its id.
const FIRST_CONN: u64 = 2;

/// WebSocket close codes this module sends itself (RFC 6455 §7.4.1); the machine chooses its own.
mod close {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const PROTOCOL: u16 = 1002;
    pub(super) const UNSUPPORTED: u16 = 1003;
    pub(super) const NOT_UTF8: u16 = 1007;
    pub(super) const TOO_BIG: u16 = 1009;
}

/// Everything the service needs, resolved from flags, the config file and defaults.
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) key: KeyPair,
    /// Where the key came from, for the log.
    pub(crate) key_source: String,
    pub(crate) realm: String,
    pub(crate) limits: Limits,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_unsent: usize,
    pub(crate) seed: [u8; 32],
    /// TURN credentials to hand out (`--turn-secret`), if any.
    pub(crate) relay: Option<fog_signal::server::RelayConfig>,
    /// The cluster to join (`--cluster`), if any.
    pub(crate) cluster: Option<cluster::Settings>,
}

/// Why the signaling service could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// A limit is out of range; the message names it.
    Limit(String),
    /// Only one of `--tls-cert` and `--tls-key`.
    TlsHalf,
    /// The certificate or key file could not be used.
    Tls(PathBuf, String),
    /// The key file could not be loaded or created.
    Key(PathBuf, fog_signal::keyfile::KeyFileError),
    /// The OS random source failed.
    Random(getrandom::Error),
    /// The listening socket could not be set up.
    Bind(SocketAddr, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(message) => write!(f, "signaling: {message}"),
            Self::TlsHalf => f.write_str("signaling: --tls-cert and --tls-key go together"),
            Self::Tls(path, message) => write!(f, "signaling: {}: {message}", path.display()),
            Self::Key(path, e) => write!(f, "signaling: --key {}: {e}", path.display()),
            Self::Random(e) => write!(f, "signaling: the OS random source failed: {e}"),
            Self::Bind(addr, e) => {
                write!(f, "signaling: binding TCP {addr}: {e}")?;
                if e.kind() == io::ErrorKind::AddrInUse {
                    write!(
                        f,
                        "\n  hint: another process already uses that port; `ss -tlpn` shows which"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// The settings `args` (flags already merged with the config file) describe, or `None`
/// without an address.
pub(crate) fn settings(args: &SignalArgs) -> Result<Option<Settings>, StartError> {
    let Some(listen) = args.signal else {
        return Ok(None);
    };
    let defaults = Limits::default();
    let limits = Limits {
        max_connections: at_least_one("max-connections", args.max_connections)?
            .unwrap_or(defaults.max_connections),
        max_peers: at_least_one("max-peers", args.max_peers)?.unwrap_or(defaults.max_peers),
        frames_per_second: at_least_one("frames-per-second", args.frames_per_second)?
            .unwrap_or(defaults.frames_per_second),
        max_frame_len: args.max_frame_len.unwrap_or(defaults.max_frame_len),
        max_pending_offers: at_least_one("max-pending-offers", args.max_pending_offers)?
            .unwrap_or(defaults.max_pending_offers),
        ..defaults
    };
    // The challenge alone is about 200 bytes; below 1 KiB no offer fits.
    if limits.max_frame_len < 1024 {
        return Err(StartError::Limit(format!(
            "max-frame-len {} is under 1024 bytes, too small for an offer",
            limits.max_frame_len
        )));
    }
    let max_unsent = args.max_unsent.unwrap_or(DEFAULT_MAX_UNSENT);
    // A frame of the largest size plus its 14-byte header must fit, or every large answer
    // would drop its connection.
    if max_unsent < limits.max_frame_len + 14 {
        return Err(StartError::Limit(format!(
            "max-unsent {max_unsent} must be at least max-frame-len + 14 = {}",
            limits.max_frame_len + 14
        )));
    }
    let handshake_timeout = match args.handshake_timeout_ms {
        Some(0) => {
            return Err(StartError::Limit(
                "handshake-timeout-ms must be at least 1".into(),
            ));
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        (None, None) => None,
        _ => return Err(StartError::TlsHalf),
    };
    let (key, key_source) = match &args.key {
        Some(path) => load_or_create_key(path)?,
        None => (
            KeyPair::from_seed(&random_seed()?),
            "generated for this run (no --key)".to_owned(),
        ),
    };
    let realm = match &args.realm {
        Some(realm) => realm.clone(),
        None => {
            if listen.ip().is_unspecified() {
                // Clients sign the host they dial; nobody dials 0.0.0.0 or ::.
                tracing::warn!(
                    realm = %listen.ip(),
                    "signaling: no --realm; clients must sign the name they dial, so give it"
                );
            }
            listen.ip().to_string()
        }
    };
    Ok(Some(Settings {
        listen,
        key,
        key_source,
        realm,
        limits,
        tls,
        handshake_timeout,
        max_unsent,
        seed: random_seed()?,
        relay: None,
        cluster: None,
    }))
}

fn at_least_one<T: PartialEq + From<u8>>(
    name: &str,
    value: Option<T>,
) -> Result<Option<T>, StartError> {
    if value == Some(T::from(0)) {
        return Err(StartError::Limit(format!("{name} must be at least 1")));
    }
    Ok(value)
}

/// 32 bytes from the OS: fogd is a binary, where randomness may come from the OS.
fn random_seed() -> Result<[u8; 32], StartError> {
    let mut seed = [0u8; 32];
    #[allow(clippy::disallowed_methods)]
    getrandom::fill(&mut seed).map_err(StartError::Random)?;
    Ok(seed)
}

fn load_or_create_key(path: &Path) -> Result<(KeyPair, String), StartError> {
    use fog_signal::keyfile::{self, KeyFileError};
    match keyfile::load(path) {
        Ok(key) => Ok((key, format!("loaded from {}", path.display()))),
        Err(KeyFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            let key = KeyPair::from_seed(&random_seed()?);
            keyfile::save(path, &key).map_err(|e| StartError::Key(path.to_owned(), e))?;
            Ok((key, format!("created in {}", path.display())))
        }
        Err(e) => Err(StartError::Key(path.to_owned(), e)),
    }
}

pub(crate) fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(cert.to_owned(), e.to_string()))?;
    if chain.is_empty() {
        return Err(StartError::Tls(
            cert.to_owned(),
            "no CERTIFICATE in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(key.to_owned(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(cert.to_owned(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            StartError::Tls(key.to_owned(), format!("does not fit the certificate: {e}"))
        })?;
    Ok(Arc::new(config))
}

/// Stops a running [`SignalService`] from another thread.
#[derive(Clone)]
pub(crate) struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to stop and wakes it.
    pub(crate) fn stop(&self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake()
    }
}

/// The service bound to its listening socket, ready to run on any thread.
pub(crate) struct SignalService {
    poll: Poll,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    server: Server,
    tls: Option<Arc<rustls::ServerConfig>>,
    ws_config: WebSocketConfig,
    handshake_timeout: Duration,
    max_sockets: usize,
    cluster: Option<cluster::Settings>,
    /// This instance's load for the cluster (live TURN allocations when TURN runs here).
    load: Arc<AtomicUsize>,
    /// Where the cluster writes the TURN server's alternate.
    alternate: crate::turn::Alternate,
}

impl SignalService {
    /// Binds the listening socket.
    pub(crate) fn bind(settings: Settings) -> Result<Self, StartError> {
        let addr = settings.listen;
        let bind_error = |e| StartError::Bind(addr, e);
        let poll = Poll::new().map_err(bind_error)?;
        let mut listener = TcpListener::bind(addr).map_err(bind_error)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(bind_error)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(bind_error)?);
        let local = listener.local_addr().map_err(bind_error)?;
        let limits = settings.limits.clone();
        let ws_config = WebSocketConfig::default()
            // Tungstenite refuses a longer frame from its header and a longer message as it
            // grows, before buffering it: the machine's own size check never sees the bytes.
            .max_frame_size(Some(limits.max_frame_len))
            .max_message_size(Some(limits.max_frame_len))
            // Reads come in 8 KiB steps (its default is 128 KiB per connection).
            .read_buffer_size(8 * 1024)
            // Write every frame at once; what the socket refuses stays buffered, up to the bound.
            .write_buffer_size(0)
            .max_write_buffer_size(settings.max_unsent);
        let server_id = settings.key.peer_id();
        let mut config = ServerConfig::new(settings.key, settings.realm.clone(), settings.seed);
        config.limits = limits.clone();
        let relay_urls = settings.relay.as_ref().map(|r| r.urls.join(" "));
        config.relay = settings.relay;
        config.cluster = settings.cluster.is_some();
        tracing::info!(
            addr = %local,
            path = PATH,
            tls = settings.tls.is_some(),
            realm = %settings.realm,
            server = %server_id,
            key = %settings.key_source,
            max_connections = limits.max_connections,
            max_peers = limits.max_peers,
            frames_per_second = limits.frames_per_second,
            max_frame_len = limits.max_frame_len,
            max_pending_offers = limits.max_pending_offers,
            handshake_timeout_ms = settings.handshake_timeout.as_millis() as u64,
            max_unsent = settings.max_unsent,
            turn = relay_urls.as_deref().unwrap_or("none"),
            "signal listening"
        );
        Ok(Self {
            poll,
            listener,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            server: Server::new(config),
            tls: settings.tls,
            ws_config,
            handshake_timeout: settings.handshake_timeout,
            max_sockets: limits.max_connections.saturating_add(SOCKET_SLACK),
            cluster: settings.cluster,
            load: Arc::new(AtomicUsize::new(0)),
            alternate: Arc::default(),
        })
    }

    /// Publishes `load` as this instance's load in the cluster (TURN's live allocations).
    pub(crate) fn set_load(&mut self, load: Arc<AtomicUsize>) {
        self.load = load;
    }

    /// The TURN service's alternate slot, for the cluster to fill.
    pub(crate) fn set_alternate(&mut self, alternate: crate::turn::Alternate) {
        self.alternate = alternate;
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub(crate) fn handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Serves until the handle stops it, then closes every connection with 1001.
    pub(crate) fn run(self) -> io::Result<Report> {
        let started = now();
        // The cluster's threads start here, on the serving thread's side of `Services::start`,
        // so that a service that fails to bind leaves none behind.
        let cluster = match self.cluster {
            Some(settings) => Some(
                Cluster::start(
                    settings,
                    self.waker.clone(),
                    self.load.clone(),
                    self.alternate.clone(),
                )
                .map_err(|e| io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        let mut event_loop = Loop {
            poll: self.poll,
            listener: self.listener,
            stop: self.stop,
            server: self.server,
            tls: self.tls,
            ws_config: self.ws_config,
            handshake_timeout: self.handshake_timeout,
            max_sockets: self.max_sockets,
            conns: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            dirty: BTreeSet::new(),
            next_id: FIRST_CONN,
            accept_retry: None,
            stats: Stats::default(),
            now: started,
            cluster,
        };
        let (peers, connections) = event_loop.run()?;
        Ok(Report {
            uptime: now().saturating_duration_since(started),
            stats: event_loop.stats,
            peers,
            connections,
        })
    }
}

/// The wall clock, read only here and in `run`: the machine takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Counters for the final log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// TCP connections accepted.
    pub(crate) accepted: u64,
    /// TCP connections dropped at once because `max-connections` + 256 sockets were open.
    pub(crate) dropped_at_capacity: u64,
    /// Completed WebSocket upgrades.
    pub(crate) upgraded: u64,
    /// Requests answered 404 (a path other than /ws).
    pub(crate) not_found: u64,
    /// Requests answered 400 (not a WebSocket upgrade, or malformed HTTP).
    pub(crate) bad_requests: u64,
    /// Plain `GET`s answered with a browser client file or 404 (`web`).
    pub(crate) served: u64,
    /// Handshakes cut at the handshake timeout.
    pub(crate) handshake_timeouts: u64,
    /// TLS handshakes or records that failed.
    pub(crate) tls_errors: u64,
    /// Text frames handed to the machine.
    pub(crate) frames_in: u64,
    /// Text frames sent.
    pub(crate) frames_out: u64,
    /// Connections closed by the machine (`Output::Close`).
    pub(crate) closed_by_server: u64,
    /// Connections the client closed or that broke.
    pub(crate) closed_by_client: u64,
    /// Binary frames refused (close 1003).
    pub(crate) binary_refused: u64,
    /// Frames or messages over `max-frame-len` (close 1009).
    pub(crate) too_large: u64,
    /// Other WebSocket protocol errors (close 1002 or 1007).
    pub(crate) protocol_errors: u64,
    /// Connections dropped because their unsent output passed `max-unsent`.
    pub(crate) overflowed: u64,
    /// Frames other instances forwarded that fit no session here (or no peer here).
    pub(crate) forwarded_dropped: u64,
}

/// What the service did, for the final log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) uptime: Duration,
    pub(crate) stats: Stats,
    pub(crate) peers: usize,
    pub(crate) connections: usize,
}

impl Report {
    /// Logs the counters, one line of `key=value`, like the STUN service.
    pub(crate) fn log(&self) {
        let s = &self.stats;
        tracing::info!(
            uptime_s = format_args!("{:.1}", self.uptime.as_secs_f64()),
            accepted = s.accepted,
            dropped_at_capacity = s.dropped_at_capacity,
            upgraded = s.upgraded,
            not_found = s.not_found,
            bad_requests = s.bad_requests,
            served = s.served,
            handshake_timeouts = s.handshake_timeouts,
            tls_errors = s.tls_errors,
            frames_in = s.frames_in,
            frames_out = s.frames_out,
            closed_by_server = s.closed_by_server,
            closed_by_client = s.closed_by_client,
            binary_refused = s.binary_refused,
            too_large = s.too_large,
            protocol_errors = s.protocol_errors,
            overflowed = s.overflowed,
            forwarded_dropped = s.forwarded_dropped,
            peers_at_stop = self.peers,
            connections_at_stop = self.connections,
            "signal stopped"
        );
    }
}

/// The byte stream under tungstenite: TCP, or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &mut s.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// The transport shared between tungstenite (which owns its stream) and the loop (which must
/// still reach the socket after a failed handshake, to answer 400, and to register, shut down
/// and linger). One thread only.
/// The second field keeps the first bytes of the request (up to [`web::HEAD_MAX`]), so that a
/// plain `GET` that is no upgrade can be answered with one of the browser client's files.
#[derive(Clone)]
struct Shared(Rc<RefCell<Transport>>, Rc<RefCell<Vec<u8>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.borrow_mut().read(buf)?;
        let mut head = self.1.borrow_mut();
        if head.len() < web::HEAD_MAX {
            let room = web::HEAD_MAX - head.len();
            head.extend_from_slice(&buf[..n.min(room)]);
        }
        Ok(n)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Accepts the upgrade only at [`PATH`]; anything else is answered 404.
struct PathCheck;

impl Callback for PathCheck {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        if request.uri().path() == PATH {
            return Ok(response);
        }
        use tungstenite::http::{HeaderValue, StatusCode, header};
        let body = format!("not found: signaling is served at {PATH}\n");
        let length = HeaderValue::from(body.len());
        let mut refusal = ErrorResponse::new(Some(body));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        let headers = refusal.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::CONTENT_LENGTH, length);
        Err(refusal)
    }
}

/// The answer to a request that is not a WebSocket upgrade (tungstenite sends none itself).
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Connection: close\r\n\
Content-Type: text/plain\r\n\
Content-Length: 56\r\n\
\r\n\
this is a WebSocket endpoint: upgrade with GET /ws only\n";

type Handshake = MidHandshake<ServerHandshake<Shared, PathCheck>>;

enum State {
    Handshake {
        /// `None` only while `handshake()` runs.
        mid: Option<Box<Handshake>>,
        deadline: Instant,
    },
    Open {
        ws: Box<WebSocket<Shared>>,
    },
    Closing {
        /// The socket until the close frame is out; then `None`.
        ws: Option<Box<WebSocket<Shared>>>,
        /// Raw bytes to send first (an HTTP error), then the write side is shut.
        raw: Vec<u8>,
        /// TLS close_notify queued.
        notified: bool,
        /// The write side is shut; now only discarding input.
        shut: bool,
        deadline: Instant,
    },
}

struct Conn {
    io: Shared,
    addr: SocketAddr,
    state: State,
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    server: Server,
    tls: Option<Arc<rustls::ServerConfig>>,
    ws_config: WebSocketConfig,
    handshake_timeout: Duration,
    max_sockets: usize,
    conns: BTreeMap<u64, Conn>,
    /// Handshake and linger deadlines; stale entries are checked against the state.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Connections with output to flush at the end of the turn.
    dirty: BTreeSet<u64>,
    next_id: u64,
    accept_retry: Option<Instant>,
    stats: Stats,
    now: Instant,
    cluster: Option<Cluster>,
}

/// What one read from an open connection produced.
enum Read1 {
    /// A text frame for the machine.
    Frame(String),
    /// A control frame, handled; read on.
    Nothing,
    /// Nothing more to read now.
    Drained,
    /// The connection is closing or gone; already acted on.
    Closed,
}

impl Loop {
    /// Serves until stopped; returns the peers and connections the machine had then.
    fn run(&mut self) -> io::Result<(usize, usize)> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self
                .next_wake()
                .map(|at| at.saturating_duration_since(now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if self.stop.load(Ordering::SeqCst) {
                let at_stop = (self.server.peers(), self.server.connections());
                self.shut_down();
                return Ok(at_stop);
            }
            self.now = now();
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    t @ (cluster::COMMAND_TOKEN | cluster::SUBSCRIPTION_TOKEN) => {
                        if let Some(cluster) = &mut self.cluster {
                            cluster.ready(t, self.poll.registry());
                        }
                    }
                    Token(id) => self.progress(id as u64),
                }
            }
            if let Some(cluster) = &mut self.cluster {
                cluster.handle_timeout(self.now, self.poll.registry());
            }
            self.cluster_events();
            if self.accept_retry.is_some_and(|at| at <= self.now) {
                self.accept_retry = None;
                self.accept_all();
            }
            self.server.handle_timeout(self.now);
            self.drain_outputs();
            self.expire();
            self.flush_dirty();
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.server.poll_timeout(),
            self.deadlines.first().map(|(at, _)| *at),
            self.accept_retry,
            self.cluster.as_ref().and_then(Cluster::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNABORTED and the like concern one connection only.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors, most likely: edge-triggered readiness would not fire
                    // again for the connections already queued, so try again shortly.
                    tracing::warn!(error = %e, "accepting a signaling connection failed");
                    self.accept_retry = Some(self.now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.accepted += 1;
        if self.conns.len() >= self.max_sockets {
            self.stats.dropped_at_capacity += 1;
            tracing::debug!(addr = %peer, "signaling: too many sockets, connection dropped");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(id as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(addr = %peer, error = %e, "registering a signaling connection failed");
            return;
        }
        // Small frames, answered at once: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let transport = match &self.tls {
            None => Transport::Plain(stream),
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(tls) => Transport::Tls(Box::new(rustls::StreamOwned::new(tls, stream))),
                Err(e) => {
                    tracing::warn!(addr = %peer, error = %e, "starting TLS failed");
                    return;
                }
            },
        };
        let io = Shared(
            Rc::new(RefCell::new(transport)),
            Rc::new(RefCell::new(Vec::new())),
        );
        tracing::debug!(conn = id, addr = %peer, "signaling: TCP connection");
        let deadline = self.now + self.handshake_timeout;
        self.deadlines.insert((deadline, id));
        let started =
            tungstenite::accept_hdr_with_config(io.clone(), PathCheck, Some(self.ws_config));
        self.conns.insert(
            id,
            Conn {
                io,
                addr: peer,
                state: State::Handshake {
                    mid: None,
                    deadline,
                },
            },
        );
        self.handshake_step(id, started);
    }

    /// A readiness event for connection `id`.
    fn progress(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut conn.state {
            State::Handshake { mid, .. } => {
                let Some(m) = mid.take() else { return };
                let result = m.handshake();
                self.handshake_step(id, result);
            }
            State::Open { .. } => {
                self.dirty.insert(id);
                self.read_open(id);
            }
            State::Closing { .. } => self.advance_closing(id),
        }
    }

    fn handshake_step(
        &mut self,
        id: u64,
        result: Result<WebSocket<Shared>, HandshakeError<ServerHandshake<Shared, PathCheck>>>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let tls = self.tls.is_some();
        match result {
            Ok(ws) => {
                self.stats.upgraded += 1;
                tracing::info!(conn = id, addr = %conn.addr, tls, "signaling: connected");
                conn.state = State::Open { ws: Box::new(ws) };
                self.server.handle_connect(self.now, ConnId(id));
                self.drain_outputs();
                self.dirty.insert(id);
                self.read_open(id);
            }
            Err(HandshakeError::Interrupted(m)) => {
                if let State::Handshake { mid, .. } = &mut conn.state {
                    *mid = Some(Box::new(m));
                }
            }
            Err(HandshakeError::Failure(WsError::Http(response))) => {
                // PathCheck's 404 has been written by tungstenite.
                self.stats.not_found += 1;
                tracing::debug!(conn = id, addr = %conn.addr, status = %response.status(), "signaling: refused");
                self.enter_closing(id, Vec::new());
            }
            Err(HandshakeError::Failure(WsError::Io(e))) => {
                let is_tls = e.kind() == io::ErrorKind::InvalidData && tls;
                if is_tls {
                    self.stats.tls_errors += 1;
                }
                tracing::debug!(conn = id, addr = %conn.addr, error = %e, "signaling: handshake failed");
                self.drop_conn(id);
            }
            Err(HandshakeError::Failure(e)) => {
                // Malformed HTTP, or a request that is not an upgrade: tungstenite answers none.
                // A plain GET is answered with the browser client's file (or 404).
                let served = web::respond(&conn.io.1.borrow());
                if let Some(response) = served {
                    self.stats.served += 1;
                    tracing::debug!(conn = id, addr = %conn.addr, "signaling: served a file");
                    self.enter_closing(id, response);
                    return;
                }
                self.stats.bad_requests += 1;
                tracing::debug!(conn = id, addr = %conn.addr, error = %e, "signaling: bad request");
                self.enter_closing(id, BAD_REQUEST.to_vec());
            }
        }
    }

    /// Reads every frame available on an open connection.
    fn read_open(&mut self, id: u64) {
        loop {
            let outcome = {
                let Some(Conn {
                    state: State::Open { ws },
                    ..
                }) = self.conns.get_mut(&id)
                else {
                    return;
                };
                ws.read()
            };
            match self.classify(id, outcome) {
                Read1::Frame(frame) => {
                    self.stats.frames_in += 1;
                    // The clock again per frame: replies are written at once, so a quick client
                    // can answer them within this same read loop, and frames stamped with the
                    // turn's start would all look like one burst to the rate limit.
                    self.now = now();
                    let before = self.server.peer_of(ConnId(id));
                    self.server.handle_frame(self.now, ConnId(id), &frame);
                    if before.is_none() {
                        if let Some(peer) = self.server.peer_of(ConnId(id)) {
                            tracing::info!(conn = id, %peer, "signaling: authenticated");
                        }
                    }
                    self.drain_outputs();
                }
                Read1::Nothing => {}
                Read1::Drained | Read1::Closed => {
                    self.drain_outputs();
                    return;
                }
            }
        }
    }

    /// What one `read` means for the connection; a `Closed` has already been acted on.
    fn classify(&mut self, id: u64, outcome: tungstenite::Result<Message>) -> Read1 {
        match outcome {
            Ok(Message::Text(text)) => Read1::Frame(text.as_str().to_owned()),
            Ok(Message::Binary(_)) => {
                self.stats.binary_refused += 1;
                self.refuse(
                    id,
                    close::UNSUPPORTED,
                    "binary frames are not accepted; send JSON text frames",
                );
                Read1::Closed
            }
            // Tungstenite queued the pong itself; the turn's flush sends it.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Read1::Nothing,
            Ok(Message::Close(frame)) => {
                self.stats.closed_by_client += 1;
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                tracing::info!(conn = id, code, %reason, "signaling: closed by the client");
                self.server.handle_disconnect(self.now, ConnId(id));
                // Tungstenite queued the reply; flush it, then shut down and linger.
                self.enter_closing(id, Vec::new());
                Read1::Closed
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Read1::Drained,
            Err(WsError::Capacity(e)) => {
                self.stats.too_large += 1;
                // The same answer the machine gives for an oversize frame it sees.
                let limit = self.ws_config.max_frame_size.unwrap_or(0);
                let detail = format!("frame over {limit} bytes");
                let error = ServerMsg::error(ErrorCode::TooLarge, None, detail.clone()).encode();
                if let Some(Conn {
                    state: State::Open { ws },
                    ..
                }) = self.conns.get_mut(&id)
                {
                    let _ = ws.write(Message::text(error));
                }
                tracing::debug!(conn = id, error = %e, "signaling: frame too large");
                self.refuse(id, close::TOO_BIG, &detail);
                Read1::Closed
            }
            Err(WsError::Utf8(_)) => {
                self.stats.protocol_errors += 1;
                self.refuse(id, close::NOT_UTF8, "text frame is not UTF-8");
                Read1::Closed
            }
            Err(WsError::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                self.stats.closed_by_client += 1;
                tracing::info!(
                    conn = id,
                    "signaling: connection ended without a close frame"
                );
                self.drop_conn(id);
                Read1::Closed
            }
            Err(WsError::Protocol(e)) => {
                self.stats.protocol_errors += 1;
                let reason = e.to_string();
                self.refuse(id, close::PROTOCOL, &reason);
                Read1::Closed
            }
            Err(e) => {
                self.stats.closed_by_client += 1;
                let tls = matches!(&e, WsError::Io(io) if io.kind() == io::ErrorKind::InvalidData)
                    && self.tls.is_some();
                if tls {
                    self.stats.tls_errors += 1;
                }
                tracing::info!(conn = id, error = %e, "signaling: connection lost");
                self.drop_conn(id);
                Read1::Closed
            }
        }
    }

    /// Refuses what the client sent: the machine forgets the connection, which is closed with
    /// `code` and `reason`.
    fn refuse(&mut self, id: u64, code: u16, reason: &str) {
        tracing::info!(conn = id, code, reason, "signaling: closing");
        self.server.handle_disconnect(self.now, ConnId(id));
        self.close_ws(id, code, reason);
    }

    /// Queues a close frame on an open connection and starts closing it.
    fn close_ws(&mut self, id: u64, code: u16, reason: &str) {
        let Some(Conn {
            state: State::Open { ws },
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: close_reason(reason).into(),
        };
        // A full buffer keeps the close frame for later, or fails for good; either way the
        // connection goes to closing, whose deadline bounds it.
        let _ = ws.close(Some(frame));
        self.enter_closing(id, Vec::new());
    }

    /// Moves a connection to closing: flush what tungstenite holds (the close frame), send
    /// `raw`, shut the write side, discard input until the client closes or [`LINGER`] passes.
    fn enter_closing(&mut self, id: u64, raw: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ws = match std::mem::replace(
            &mut conn.state,
            State::Handshake {
                mid: None,
                deadline: self.now,
            },
        ) {
            State::Open { ws } => Some(ws),
            State::Closing { ws, .. } => ws,
            State::Handshake { .. } => None,
        };
        let deadline = self.now + LINGER;
        conn.state = State::Closing {
            ws,
            raw,
            notified: false,
            shut: false,
            deadline,
        };
        self.deadlines.insert((deadline, id));
        self.dirty.insert(id);
    }

    fn advance_closing(&mut self, id: u64) {
        if let Step::Drop = self.closing_step(id) {
            self.drop_conn(id);
        }
    }

    fn closing_step(&mut self, id: u64) -> Step {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Step::Wait;
        };
        let State::Closing {
            ws,
            raw,
            notified,
            shut,
            ..
        } = &mut conn.state
        else {
            return Step::Wait;
        };
        if let Some(socket) = ws {
            match socket.flush() {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => *ws = None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Drop,
            }
        }
        let mut transport = conn.io.0.borrow_mut();
        while !raw.is_empty() {
            match transport.write(raw) {
                Ok(0) => return Step::Drop,
                Ok(n) => {
                    raw.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Drop,
            }
        }
        if !*shut {
            if let (Transport::Tls(tls), false) = (&mut *transport, *notified) {
                tls.conn.send_close_notify();
                *notified = true;
            }
            match transport.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Drop,
            }
            // FIN after the close frame; the read side stays open to drain.
            let _ = transport.tcp().shutdown(Shutdown::Write);
            *shut = true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match transport.tcp().read(&mut buf) {
                Ok(0) => return Step::Drop,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Drop,
            }
        }
    }

    /// Forgets a connection and closes its socket; the machine hears of it (idempotent there).
    fn drop_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.dirty.remove(&id);
        let _ = self
            .poll
            .registry()
            .deregister(conn.io.0.borrow_mut().tcp());
        self.server.handle_disconnect(self.now, ConnId(id));
        tracing::debug!(conn = id, addr = %conn.addr, "signaling: socket closed");
    }

    /// Carries out the machine's outputs.
    /// Hands the cluster's answers and forwarded frames to the machine.
    fn cluster_events(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let now = self.now;
        while let Some(event) = cluster.poll_event(self.poll.registry()) {
            match event {
                cluster::Event::Resolved {
                    query,
                    peer,
                    online,
                } => self.server.handle_resolved(now, query, peer, online),
                cluster::Event::Claimed { query, granted } => {
                    self.server.handle_claimed(now, query, granted)
                }
                cluster::Event::Unreachable(peer) => self.server.handle_unreachable(now, peer),
                cluster::Event::Forwarded { peer, frame } => {
                    crate::hop_trace::hop("loop.event", &frame);
                    if !self.server.handle_forwarded(now, peer, &frame) {
                        self.stats.forwarded_dropped += 1;
                    }
                }
                cluster::Event::Evict(peer) => {
                    tracing::info!(%peer, "cluster: peer reconnected to another instance");
                    self.server.handle_evicted(now, peer);
                }
                cluster::Event::Relay(urls) => {
                    tracing::info!(turn = %urls.join(" "), "cluster: handing out the least-loaded TURN");
                    self.server.set_relay_urls(urls);
                }
            }
        }
        self.drain_outputs();
    }

    /// Hands the machine's questions and forwards to the cluster; what its full queue refuses
    /// is answered at once ("offline", "unreachable", "unavailable"). Returns whether the
    /// machine was given anything (so it may have more output).
    fn drain_cluster(&mut self) -> bool {
        let Some(cluster) = &mut self.cluster else {
            return false;
        };
        let mut fed = false;
        while let Some(out) = self.server.poll_cluster() {
            let Err(refused) = cluster.submit(out, self.now, self.poll.registry()) else {
                continue;
            };
            fed = true;
            match refused {
                ClusterOutput::Resolve { query, .. } | ClusterOutput::Offer { query, .. } => {
                    self.server.handle_resolved(self.now, query, None, false)
                }
                ClusterOutput::Forward { peer, .. } => {
                    self.server.handle_unreachable(self.now, peer)
                }
                ClusterOutput::ClaimAlias { query, .. } => {
                    self.server.handle_claimed(self.now, query, None)
                }
                ClusterOutput::Presence { .. } => {}
            }
        }
        fed
    }

    fn drain_outputs(&mut self) {
        loop {
            self.drain_machine();
            if !self.drain_cluster() {
                return;
            }
        }
    }

    fn drain_machine(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::Send { conn, frame } => self.send_frame(conn.0, frame),
                Output::Close { conn, code, reason } => {
                    if matches!(
                        self.conns.get(&conn.0),
                        Some(Conn {
                            state: State::Open { .. },
                            ..
                        })
                    ) {
                        self.stats.closed_by_server += 1;
                        tracing::info!(conn = conn.0, code, %reason, "signaling: closing");
                        self.close_ws(conn.0, code, &reason);
                    }
                }
            }
        }
    }

    fn send_frame(&mut self, id: u64, frame: String) {
        let Some(Conn {
            state: State::Open { ws },
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        match ws.write(Message::text(frame)) {
            Ok(()) => {}
            // Buffered; the socket is full and a writable event will come.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::WriteBufferFull(_)) => {
                self.stats.overflowed += 1;
                tracing::warn!(
                    conn = id,
                    "signaling: the client does not read; unsent output over max-unsent, dropped"
                );
                self.drop_conn(id);
                return;
            }
            Err(e) => {
                self.stats.closed_by_client += 1;
                tracing::info!(conn = id, error = %e, "signaling: connection lost");
                self.drop_conn(id);
                return;
            }
        }
        self.stats.frames_out += 1;
        self.dirty.insert(id);
    }

    /// Flushes what this turn wrote, and carries out what dropping a connection makes the
    /// machine say to others.
    fn flush_dirty(&mut self) {
        loop {
            self.drain_outputs();
            let Some(id) = self.dirty.pop_first() else {
                return;
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            match &mut conn.state {
                State::Open { ws } => match ws.flush() {
                    Ok(()) => {}
                    Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.stats.closed_by_client += 1;
                        tracing::info!(conn = id, error = %e, "signaling: connection lost");
                        self.drop_conn(id);
                    }
                },
                State::Closing { .. } => self.advance_closing(id),
                State::Handshake { .. } => {}
            }
        }
    }

    /// Cuts handshakes and lingering closes that ran out of time.
    fn expire(&mut self) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > self.now {
                return;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            match conn.state {
                State::Handshake { deadline, .. } if deadline <= self.now => {
                    self.stats.handshake_timeouts += 1;
                    tracing::info!(conn = id, addr = %conn.addr, "signaling: handshake timed out");
                    self.drop_conn(id);
                }
                State::Closing { deadline, .. } if deadline <= self.now => self.drop_conn(id),
                _ => {}
            }
        }
    }

    /// Closes every open connection with 1001 (one attempt to send it) and drops all sockets.
    fn shut_down(&mut self) {
        let open = self
            .conns
            .values()
            .filter(|c| matches!(c.state, State::Open { .. }))
            .count();
        tracing::info!(open, "signal stopping; closing connections with 1001");
        for conn in self.conns.values_mut() {
            if let State::Open { ws } = &mut conn.state {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::from(close::GOING_AWAY),
                    reason: "server shutting down".into(),
                }));
                let _ = ws.flush();
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id);
        }
        while self.server.poll_output().is_some() {}
        if let Some(cluster) = self.cluster.take() {
            // Withdraws the lease, so that other instances see these peers offline at once.
            cluster.log();
            cluster.stop();
        }
    }
}

/// Whether a closing connection waits for the socket or is done.
enum Step {
    Wait,
    Drop,
}

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5: 125 with the code); cut at a
/// character boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn settings_of(args: &[&str]) -> Result<Option<Settings>, StartError> {
        let cli = Cli::try_parse_from(std::iter::once("fogd").chain(args.iter().copied()))
            .expect("parses");
        settings(&cli.signal)
    }

    #[test]
    fn defaults_are_the_machines() {
        let s = settings_of(&["--signal", "127.0.0.1:7600"])
            .unwrap()
            .unwrap();
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.realm, "127.0.0.1");
        assert_eq!(s.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(s.max_unsent, DEFAULT_MAX_UNSENT);
        assert!(s.tls.is_none());
        assert!(
            settings_of(&["--stun", "127.0.0.1:3478"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn limit_flags_reach_the_machine() {
        let s = settings_of(&[
            "--signal",
            "127.0.0.1:7600",
            "--max-connections",
            "3",
            "--max-peers",
            "2",
            "--frames-per-second",
            "7",
            "--max-frame-len",
            "2048",
            "--max-pending-offers",
            "1",
            "--realm",
            "signal.test",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                s.limits.max_connections,
                s.limits.max_peers,
                s.limits.frames_per_second
            ),
            (3, 2, 7)
        );
        assert_eq!(
            (s.limits.max_frame_len, s.limits.max_pending_offers),
            (2048, 1)
        );
        assert_eq!(s.realm, "signal.test");
    }

    #[test]
    fn unusable_settings_are_refused_with_a_reason() {
        let cases: [(&[&str], &str); 5] = [
            (&["--max-peers", "0"], "max-peers must be at least 1"),
            (&["--max-frame-len", "100"], "too small for an offer"),
            (&["--max-unsent", "1000"], "max-frame-len + 14"),
            (&["--handshake-timeout-ms", "0"], "at least 1"),
            (&["--tls-cert", "x.pem"], "go together"),
        ];
        for (extra, reason) in cases {
            let mut args = vec!["--signal", "127.0.0.1:7600"];
            args.extend_from_slice(extra);
            let message = match settings_of(&args) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{extra:?} accepted"),
            };
            assert!(message.contains(reason), "{extra:?}: {message}");
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && cut.len() >= 122, "{}", cut.len());
    }
}
