//! TURN over TCP (RFC 8656 §3.1): the connections of clients whose UDP is blocked (browsers given
//! `turn:HOST:PORT?transport=tcp`), on a mio loop of their own next to the TURN driver.
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
//! be), the queue towards the relay ([`MAX_INBOX`]). A connection that sends bytes that are not
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

/// Bytes waiting to be written to one client beyond which whole messages are dropped.
pub(crate) const MAX_UNSENT: usize = 1 << 20;
/// Messages waiting for the TURN thread beyond which new ones are dropped (closes always pass).
pub(crate) const MAX_INBOX: usize = 8192;
/// Connections from one IP by default: a browser opens one per TURN server and peer connection.
pub(crate) const DEFAULT_PER_IP: usize = 16;
/// How long a connection without an allocation may stay silent by default.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(60);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// What one read takes from a socket.
const READ_CHUNK: usize = 16 * 1024;
/// How often idle connections are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// The TCP listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpConfig {
    /// Where to listen (by default the UDP listen address: the same port number is TURN's
    /// convention, RFC 8656 §3).
    pub(crate) listen: SocketAddr,
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
pub(crate) type Inbox = Arc<Mutex<VecDeque<ToRelay>>>;

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
    pub(crate) closed_error: u64,
    pub(crate) dropped_unsent: u64,
    pub(crate) dropped_inbox: u64,
}

struct Conn {
    stream: TcpStream,
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
    listener: TcpListener,
    config: TcpConfig,
    inbox: Inbox,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
}

impl TcpService {
    /// Binds the listener.
    pub(crate) fn bind(config: TcpConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("binding TCP {}: {e}", config.listen)))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            poll,
            listener,
            config,
            inbox: Arc::default(),
            outbox: Outbox {
                queue: Arc::default(),
                waker,
            },
            stop: Arc::default(),
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
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
                    LISTENER => self.accept(
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
                                closing.push((token, Close::Error(e)));
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
                            closing.push((token, Close::Error(e)));
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
                        if matches!(item, ToRelay::Message(..)) && q.len() >= MAX_INBOX {
                            stats.dropped_inbox += 1;
                            continue;
                        }
                        q.push_back(item);
                    }
                }
                wake_relay();
            }
            // Keep write interest only where bytes wait.
            for (&token, conn) in &mut conns {
                let want = !conn.unsent.is_empty();
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

    fn accept(
        &mut self,
        now: Instant,
        conns: &mut BTreeMap<usize, Conn>,
        per_ip: &mut BTreeMap<IpAddr, usize>,
        by_client: &mut BTreeMap<SocketAddr, usize>,
        next_token: &mut usize,
        stats: &mut TcpStats,
    ) {
        loop {
            let (mut stream, client) = match self.listener.accept() {
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
    Idle,
    Error(io::Error),
}

/// Reads what `conn` has, framing it into `to_relay`; the reason to close it, if any.
fn read(
    conn: &mut Conn,
    now: Instant,
    buf: &mut [u8],
    to_relay: &mut Vec<ToRelay>,
    stats: &mut TcpStats,
) -> Option<Close> {
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return Some(Close::Client),
            Ok(n) => {
                conn.last_heard = now;
                conn.framer.push(&buf[..n]);
                loop {
                    match conn.framer.next_frame() {
                        Ok(Some(frame)) => {
                            let bytes = match frame {
                                fog_turn::wire::stream::Frame::Stun(b)
                                | fog_turn::wire::stream::Frame::ChannelData(b) => b.to_vec(),
                            };
                            stats.messages_in += 1;
                            to_relay.push(ToRelay::Message(conn.client, bytes));
                        }
                        Ok(None) => break,
                        Err(e) => return Some(Close::Malformed(e)),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Close::Error(e)),
        }
    }
}

/// Writes what waits for `conn` until the socket would block.
fn flush(conn: &mut Conn) -> io::Result<()> {
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
    Ok(())
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
            closed_error = self.closed_error,
            dropped_unsent = self.dropped_unsent,
            dropped_inbox = self.dropped_inbox,
            "TURN/TCP stopped"
        );
    }
}
