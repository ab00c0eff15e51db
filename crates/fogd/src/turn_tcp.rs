//! TURN over TCP and over TLS (RFC 8656 §3.1): the connections of clients whose UDP is blocked
//! (browsers given `turn:HOST:PORT?transport=tcp` or `turns:HOST:PORT?transport=tcp`), on a mio
//! loop of their own next to the TURN driver. TLS is rustls with the certificate signaling's
//! `wss` uses (`--tls-cert`, `--tls-key`); the TURN messages inside are the same.
//!
//! The relay machine ([`fog_turn::server::Server`]) lives on the TURN thread, inside its fog-mio
//! driver; this thread owns the listener and the connections. Each connection's bytes go through
//! a [`Framer`] (the message length from its STUN or ChannelData header, ChannelData padded to 4
//! bytes, §12.5); each whole message crosses to the TURN thread in [`Inbox`], which the TURN loop
//! hands to [`Server::handle_stream_message`](fog_turn::server::Server::handle_stream_message)
//! between turns, and what the server has for a client comes back in [`Outbox`] to be written to
//! its connection. A closed connection becomes
//! [`Server::close_stream`](fog_turn::server::Server::close_stream): its allocation ends.
//!
//! Everything a client can grow is bounded: connections in total and per source IP, the framer
//! (one message, [`MAX_STREAM_MESSAGE`] at most), the bytes waiting to be written to a client
//! that does not read ([`MAX_UNSENT`]; whole messages beyond are dropped, as a UDP datagram would
//! be), the queue towards the relay ([`MAX_INBOX_BYTES`]). A connection that sends bytes that are not
//! a message is closed and counted; so is one without an allocation that stays silent for the
//! idle timeout (one with an allocation lives as long as the allocation).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fog_turn::wire::stream::{FrameError, Framer, MAX_STREAM_MESSAGE};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Bytes waiting to be written to one client beyond which whole messages are dropped: a
/// quarter of a second of an allocation's default bandwidth on top of the kernel's send buffer,
/// so that a thousand clients that stop reading pin at most 256 MiB.
pub(crate) const MAX_UNSENT: usize = 256 << 10;
/// Bytes of messages waiting for the TURN thread beyond which new ones are dropped (closes
/// always pass): a few milliseconds of the relay's work, so a flood from many connections costs
/// bounded memory, not an ever longer queue.
pub(crate) const MAX_INBOX_BYTES: usize = 4 << 20;
/// Connections from one IP by default: a browser opens one per TURN server and peer connection.
pub(crate) const DEFAULT_PER_IP: usize = 16;
/// How long a connection without an allocation may stay silent by default.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(60);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const TLS_LISTENER: Token = Token(2);
const FIRST_CONN: usize = 3;
/// What one read takes from a socket.
const READ_CHUNK: usize = 16 * 1024;
/// How often idle connections are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// The TCP and TLS listeners' settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpConfig {
    /// Where to listen for TCP (by default the UDP listen address: the same port number is
    /// TURN's convention, RFC 8656 §3), if at all.
    pub(crate) listen: Option<SocketAddr>,
    /// Where to listen for TLS over TCP (`turns:`, RFC 8656 §3.1; 5349 by convention), if at all.
    pub(crate) tls_listen: Option<SocketAddr>,
    /// Connections at once, all clients together.
    pub(crate) max_connections: usize,
    /// Connections at once from one IP.
    pub(crate) max_per_ip: usize,
    /// Silence after which a connection without an allocation is closed.
    pub(crate) idle: Duration,
}

/// What the TCP side hands the relay.
#[derive(Debug)]
pub(crate) enum ToRelay {
    /// One whole message from `client`'s connection.
    Message(SocketAddr, Vec<u8>),
    /// `client`'s connection is gone.
    Closed(SocketAddr),
}

/// What the relay hands the TCP side.
#[derive(Debug)]
pub(crate) enum FromRelay {
    /// Bytes for `client`'s connection: one whole message.
    Send(SocketAddr, Vec<u8>),
    /// `client` has an allocation over TCP now, or no longer: the idle rule applies only to
    /// connections without one.
    Allocated(SocketAddr, bool),
}

/// Messages towards the relay; the TCP thread wakes the TURN driver after it adds some.
pub(crate) type Inbox = Arc<Mutex<InboxQueue>>;

/// The messages and their bytes.
#[derive(Debug, Default)]
pub(crate) struct InboxQueue {
    items: VecDeque<ToRelay>,
    bytes: usize,
}

impl InboxQueue {
    /// Takes everything queued.
    pub(crate) fn take(&mut self) -> VecDeque<ToRelay> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// Messages towards the connections, and the waker of the TCP thread.
#[derive(Clone)]
pub(crate) struct Outbox {
    queue: Arc<Mutex<VecDeque<FromRelay>>>,
    waker: Arc<Waker>,
}

impl Outbox {
    /// Queues `items` and wakes the TCP thread (once).
    pub(crate) fn send(&self, items: impl IntoIterator<Item = FromRelay>) {
        let mut any = false;
        if let Ok(mut q) = self.queue.lock() {
            for item in items {
                q.push_back(item);
                any = true;
            }
        }
        if any {
            let _ = self.waker.wake();
        }
    }
}

impl Outbox {
    /// Wakes the TCP thread without a message (to see its stop flag).
    pub(crate) fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// Counters, logged when the loop stops.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TcpStats {
    pub(crate) accepted: u64,
    pub(crate) refused_quota: u64,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) closed_by_client: u64,
    pub(crate) closed_malformed: u64,
    pub(crate) closed_idle: u64,
    pub(crate) closed_tls: u64,
    pub(crate) closed_error: u64,
    pub(crate) dropped_unsent: u64,
    pub(crate) dropped_inbox: u64,
}

struct Conn {
    stream: TcpStream,
    /// The TLS session on `stream`, for a connection to the TLS listener.
    tls: Option<Box<rustls::ServerConnection>>,
    client: SocketAddr,
    framer: Framer,
    unsent: VecDeque<u8>,
    last_heard: Instant,
    allocated: bool,
    want_write: bool,
}

/// The TCP side of the TURN service, bound and ready to run on its own thread.
pub(crate) struct TcpService {
    poll: Poll,
    listener: Option<TcpListener>,
    tls_listener: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    config: TcpConfig,
    inbox: Inbox,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
}

impl TcpService {
    /// Binds the listeners; `tls` is the certificate for the TLS one.
    pub(crate) fn bind(
        config: TcpConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let bind = |addr: SocketAddr, token| {
            let mut listener = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("binding TCP {addr}: {e}")))?;
            poll.registry()
                .register(&mut listener, token, Interest::READABLE)?;
            io::Result::Ok(listener)
        };
        let listener = config.listen.map(|a| bind(a, LISTENER)).transpose()?;
        let tls_listener = match (config.tls_listen, tls) {
            (Some(addr), Some(tls)) => Some((bind(addr, TLS_LISTENER)?, tls)),
            (Some(_), None) => {
                return Err(io::Error::other(
                    "TURN over TLS needs --tls-cert and --tls-key",
                ));
            }
            (None, _) => None,
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            poll,
            listener,
            tls_listener,
            config,
            inbox: Arc::default(),
            outbox: Outbox {
                queue: Arc::default(),
                waker,
            },
            stop: Arc::default(),
        })
    }

    /// The bound addresses: TCP's and TLS's.
    pub(crate) fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.listener.as_ref().and_then(|l| l.local_addr().ok()),
            self.tls_listener
                .as_ref()
                .and_then(|(l, _)| l.local_addr().ok()),
        )
    }

    pub(crate) fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    pub(crate) fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// Stops [`run`](Self::run): set the flag, then wake it.
    pub(crate) fn stopper(&self) -> (Arc<AtomicBool>, Outbox) {
        (self.stop.clone(), self.outbox.clone())
    }

    /// Serves until stopped; `wake_relay` wakes the TURN driver after messages were queued.
    pub(crate) fn run(mut self, wake_relay: impl Fn()) -> io::Result<TcpStats> {
        let mut stats = TcpStats::default();
        let mut events = Events::with_capacity(256);
        let mut conns: BTreeMap<usize, Conn> = BTreeMap::new();
        let mut per_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut by_client: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut next_token = FIRST_CONN;
        let mut buf = vec![0u8; READ_CHUNK];
        #[allow(clippy::disallowed_methods)]
        let mut next_sweep = Instant::now() + SWEEP;
        while !self.stop.load(Ordering::Relaxed) {
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            let wait = next_sweep.saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            let mut to_relay = Vec::new();
            let mut closing = Vec::new();
            for event in events.iter() {
                match event.token() {
                    LISTENER | TLS_LISTENER => self.accept(
                        event.token() == TLS_LISTENER,
                        now,
                        &mut conns,
                        &mut per_ip,
                        &mut by_client,
                        &mut next_token,
                        &mut stats,
                    ),
                    WAKER => {}
                    Token(token) => {
                        let Some(conn) = conns.get_mut(&token) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            if let Some(why) = read(conn, now, &mut buf, &mut to_relay, &mut stats)
                            {
                                closing.push((token, why));
                                continue;
                            }
                        }
                        if event.is_writable() {
                            if let Err(e) = flush(conn) {
                                closing.push((token, Close::from(e)));
                            }
                        }
                    }
                }
            }
            // What the relay has for the connections.
            let from_relay: Vec<FromRelay> = self
                .outbox
                .queue
                .lock()
                .map(|mut q| q.drain(..).collect())
                .unwrap_or_default();
            for item in from_relay {
                match item {
                    FromRelay::Send(client, bytes) => {
                        let Some(&token) = by_client.get(&client) else {
                            continue;
                        };
                        let Some(conn) = conns.get_mut(&token) else {
                            continue;
                        };
                        if conn.unsent.len() + bytes.len() > MAX_UNSENT {
                            stats.dropped_unsent += 1;
                            continue;
                        }
                        stats.messages_out += 1;
                        conn.unsent.extend(bytes);
                        if let Err(e) = flush(conn) {
                            closing.push((token, Close::from(e)));
                        }
                    }
                    FromRelay::Allocated(client, on) => {
                        if let Some(conn) = by_client.get(&client).and_then(|t| conns.get_mut(t)) {
                            conn.allocated = on;
                            conn.last_heard = now;
                        }
                    }
                }
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                let idle = self.config.idle;
                for (&token, conn) in &conns {
                    if !conn.allocated && now.duration_since(conn.last_heard) >= idle {
                        closing.push((token, Close::Idle));
                    }
                }
            }
            for (token, why) in closing {
                let Some(mut conn) = conns.remove(&token) else {
                    continue;
                };
                match &why {
                    Close::Client => stats.closed_by_client += 1,
                    Close::Malformed(e) => {
                        stats.closed_malformed += 1;
                        tracing::debug!(client = %conn.client, error = %e, "TURN/TCP: malformed stream, closed");
                    }
                    Close::Idle => stats.closed_idle += 1,
                    Close::Tls(e) => {
                        stats.closed_tls += 1;
                        tracing::debug!(client = %conn.client, error = %e, "TURN/TLS: TLS failed, closed");
                    }
                    Close::Error(e) => {
                        stats.closed_error += 1;
                        tracing::debug!(client = %conn.client, error = %e, "TURN/TCP: connection failed");
                    }
                }
                let _ = self.poll.registry().deregister(&mut conn.stream);
                by_client.remove(&conn.client);
                if let Some(n) = per_ip.get_mut(&conn.client.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&conn.client.ip());
                    }
                }
                to_relay.push(ToRelay::Closed(conn.client));
            }
            if !to_relay.is_empty() {
                if let Ok(mut q) = self.inbox.lock() {
                    for item in to_relay {
                        if let ToRelay::Message(_, bytes) = &item {
                            if q.bytes + bytes.len() > MAX_INBOX_BYTES {
                                stats.dropped_inbox += 1;
                                continue;
                            }
                            q.bytes += bytes.len();
                        }
                        q.items.push_back(item);
                    }
                }
                wake_relay();
            }
            // Keep write interest only where bytes wait.
            for (&token, conn) in &mut conns {
                let want =
                    !conn.unsent.is_empty() || conn.tls.as_ref().is_some_and(|t| t.wants_write());
                if want != conn.want_write {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .reregister(&mut conn.stream, Token(token), interest)
                        .is_ok()
                    {
                        conn.want_write = want;
                    }
                }
            }
        }
        Ok(stats)
    }

    // The tables are the run loop's locals, borrowed apart from `self`'s listener.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        tls: bool,
        now: Instant,
        conns: &mut BTreeMap<usize, Conn>,
        per_ip: &mut BTreeMap<IpAddr, usize>,
        by_client: &mut BTreeMap<SocketAddr, usize>,
        next_token: &mut usize,
        stats: &mut TcpStats,
    ) {
        let listener = if tls {
            self.tls_listener.as_ref().map(|(l, _)| l)
        } else {
            self.listener.as_ref()
        };
        let Some(listener) = listener else {
            return;
        };
        loop {
            let (mut stream, client) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: try again at the next readiness.
                    tracing::warn!(error = %e, "TURN/TCP: accept failed");
                    return;
                }
            };
            let mine = per_ip.get(&client.ip()).copied().unwrap_or(0);
            if conns.len() >= self.config.max_connections
                || mine >= self.config.max_per_ip
                || by_client.contains_key(&client)
            {
                stats.refused_quota += 1;
                drop(stream);
                continue;
            }
            let session = match (&self.tls_listener, tls) {
                (Some((_, config)), true) => match rustls::ServerConnection::new(config.clone()) {
                    Ok(session) => Some(Box::new(session)),
                    Err(e) => {
                        tracing::warn!(error = %e, "TURN/TLS: no session");
                        continue;
                    }
                },
                _ => None,
            };
            let token = *next_token;
            *next_token += 1;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(token), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let _ = stream.set_nodelay(true);
            stats.accepted += 1;
            *per_ip.entry(client.ip()).or_default() += 1;
            by_client.insert(client, token);
            conns.insert(
                token,
                Conn {
                    stream,
                    tls: session,
                    client,
                    framer: Framer::new(MAX_STREAM_MESSAGE),
                    unsent: VecDeque::new(),
                    last_heard: now,
                    allocated: false,
                    want_write: false,
                },
            );
        }
    }
}

enum Close {
    Client,
    Malformed(FrameError),
    Tls(rustls::Error),
    Idle,
    Error(io::Error),
}

impl From<io::Error> for Close {
    /// A reset (a client that closed with bytes unread, or aborted) is the client's way of
    /// closing, not a failure.
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Client,
            _ => Self::Error(e),
        }
    }
}

/// Reads what `conn` has, framing it into `to_relay`; the reason to close it, if any.
fn read(
    conn: &mut Conn,
    now: Instant,
    buf: &mut [u8],
    to_relay: &mut Vec<ToRelay>,
    stats: &mut TcpStats,
) -> Option<Close> {
    if conn.tls.is_some() {
        return read_tls(conn, now, buf, to_relay, stats);
    }
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return Some(Close::Client),
            Ok(n) => {
                conn.last_heard = now;
                if let Some(close) = feed(conn, &buf[..n], to_relay, stats) {
                    return Some(close);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Close::from(e)),
        }
    }
}

/// [`read`] through the connection's TLS session: records in, plaintext framed, and whatever
/// the handshake has to say written back.
fn read_tls(
    conn: &mut Conn,
    now: Instant,
    buf: &mut [u8],
    to_relay: &mut Vec<ToRelay>,
    stats: &mut TcpStats,
) -> Option<Close> {
    loop {
        let tls = conn.tls.as_mut()?;
        match tls.read_tls(&mut conn.stream) {
            Ok(0) => return Some(Close::Client),
            Ok(_) => {
                conn.last_heard = now;
                if let Err(e) = tls.process_new_packets() {
                    // The alert rustls queued, if the socket takes it.
                    let _ = tls.write_tls(&mut conn.stream);
                    return Some(Close::Tls(e));
                }
                loop {
                    let tls = conn.tls.as_mut()?;
                    match tls.reader().read(buf) {
                        // close_notify: the client is done.
                        Ok(0) => return Some(Close::Client),
                        Ok(n) => {
                            if let Some(close) = feed(conn, &buf[..n], to_relay, stats) {
                                return Some(close);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Some(Close::from(e)),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Close::from(e)),
        }
    }
    // Handshake messages (and anything else rustls has queued) go out now.
    flush(conn).err().map(Close::from)
}

/// Frames `bytes` from the client into `to_relay`; the reason to close, if the stream is bad.
fn feed(
    conn: &mut Conn,
    bytes: &[u8],
    to_relay: &mut Vec<ToRelay>,
    stats: &mut TcpStats,
) -> Option<Close> {
    conn.framer.push(bytes);
    loop {
        match conn.framer.next_frame() {
            Ok(Some(
                fog_turn::wire::stream::Frame::Stun(b)
                | fog_turn::wire::stream::Frame::ChannelData(b),
            )) => {
                stats.messages_in += 1;
                to_relay.push(ToRelay::Message(conn.client, b.to_vec()));
            }
            Ok(None) => return None,
            Err(e) => return Some(Close::Malformed(e)),
        }
    }
}

/// Writes what waits for `conn` until the socket would block (through its TLS session, if it
/// has one: plaintext in as far as rustls takes it, records out).
fn flush(conn: &mut Conn) -> io::Result<()> {
    let Some(tls) = conn.tls.as_mut() else {
        while !conn.unsent.is_empty() {
            let (front, _) = conn.unsent.as_slices();
            match conn.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    conn.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    };
    loop {
        let mut progress = false;
        while !conn.unsent.is_empty() {
            let (front, _) = conn.unsent.as_slices();
            let n = tls.writer().write(front)?;
            if n == 0 {
                break;
            }
            conn.unsent.drain(..n);
            progress = true;
        }
        while tls.wants_write() {
            match tls.write_tls(&mut conn.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !progress || conn.unsent.is_empty() {
            return Ok(());
        }
    }
}

impl TcpStats {
    pub(crate) fn log(&self) {
        tracing::info!(
            accepted = self.accepted,
            refused_quota = self.refused_quota,
            messages_in = self.messages_in,
            messages_out = self.messages_out,
            closed_by_client = self.closed_by_client,
            closed_malformed = self.closed_malformed,
            closed_idle = self.closed_idle,
            closed_tls = self.closed_tls,
            closed_error = self.closed_error,
            dropped_unsent = self.dropped_unsent,
            dropped_inbox = self.dropped_inbox,
            "TURN/TCP stopped"
        );
    }
}
