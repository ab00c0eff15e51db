//! Signaling over real sockets for fogd's tests: start fogd with `--signal` on a free TCP port,
//! open `ws://` and `wss://` connections with tungstenite's blocking client (rustls for TLS), and
//! drive a `fog_signal::Client` over one ([`SignalPeer`]). Reusable by any test that needs a
//! signaling server or a signaling peer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fog_signal::KeyPair;
use fog_signal::client::{Client, ClientConfig, Event};
use fog_signal::msg::{Candidate, CandidateKind, Credentials, Description, ServerMsg, Transport};
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::{A1, ChildGuard, FinalStats};

/// How long fogd may take to log `signal listening`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago (retried by [`SignalFogd::start`] if not).
pub(crate) fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((A1, 0)).expect("binding a TCP port");
    listener.local_addr().unwrap().port()
}

/// A running fogd serving signaling (and whatever else `extra` asks for).
pub(crate) struct SignalFogd {
    pub(crate) child: ChildGuard,
    /// The `--signal` address.
    pub(crate) addr: SocketAddr,
}

impl SignalFogd {
    /// fogd with `--signal 127.0.0.1:<free port>` and `extra`, once it logs `signal listening`.
    pub(crate) fn start(extra: &[&str]) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::new(A1, free_tcp_port());
            let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
            command.arg("--signal").arg(addr.to_string()).args(extra);
            let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
            let deadline = Instant::now() + START_TIMEOUT;
            let mut exited = None;
            while Instant::now() < deadline && exited.is_none() {
                if child.stderr_text().contains("signal listening") {
                    return Self { child, addr };
                }
                exited = child.try_wait();
                thread::sleep(Duration::from_millis(10));
            }
            last = child.output_text();
            if exited.is_some() && last.contains("already uses that port") {
                continue;
            }
            panic!("fogd did not start signaling on {addr} (exit: {exited:?})\n{last}");
        }
        panic!("fogd found no free port in 5 tries\n{last}");
    }

    /// The `ws://` URL of the endpoint.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops fogd with SIGTERM, checks it exits 0, and returns its `signal stopped` counters.
    pub(crate) fn stop(mut self) -> FinalStats {
        let status = self.child.terminate(Duration::from_secs(10));
        let text = self.child.output_text();
        let status = status.unwrap_or_else(|| panic!("fogd did not exit on SIGTERM\n{text}"));
        assert!(status.success(), "fogd exited with {status}\n{text}");
        FinalStats::parse_line(&self.child.stderr_text(), "signal stopped")
            .unwrap_or_else(|| panic!("no `signal stopped` line\n{text}"))
    }
}

/// A client's view of the byte stream: TCP, or rustls over TCP.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
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

pub(crate) type Ws = WebSocket<Conn>;

/// What a TLS client trusts: one certificate (the test's self-signed one) for `name`.
#[derive(Clone)]
pub(crate) struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    pub(crate) fn trusting(cert: CertificateDer<'static>, name: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("a usable root certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            config: Arc::new(config),
            name: ServerName::try_from(name.to_owned()).expect("a server name"),
        }
    }
}

pub(crate) use fog_test_support::self_signed_cert;

/// A TCP connection to `addr` whose reads give up after `timeout`.
pub(crate) fn tcp(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Opens a WebSocket to `path` on `addr` (through TLS when `tls` is given).
pub(crate) fn open(
    addr: SocketAddr,
    path: &str,
    tls: Option<&TlsClient>,
) -> Result<Ws, tungstenite::Error> {
    let stream = tcp(addr, Duration::from_secs(5));
    let (conn, scheme, host) = match tls {
        None => (Conn::Plain(stream), "ws", addr.to_string()),
        Some(tls) => {
            let client = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                .expect("a TLS client");
            let host = format!("{}:{}", tls.name.to_str(), addr.port());
            (
                Conn::Tls(Box::new(rustls::StreamOwned::new(client, stream))),
                "wss",
                host,
            )
        }
    };
    let url = format!("{scheme}://{host}{path}");
    match tungstenite::client(url.as_str(), conn) {
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("the handshake with {url} timed out")
        }
    }
}

/// The next message within `timeout`: `Ok(None)` when none came, `Err` when the connection
/// ended (or failed) without a close frame.
pub(crate) fn recv(ws: &mut Ws, timeout: Duration) -> Result<Option<Message>, tungstenite::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(left.min(Duration::from_millis(50))))
            .unwrap();
        match ws.read() {
            Ok(m) => return Ok(Some(m)),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads until the server's close frame and returns its code and reason, with the text frames
/// that came before it (decoded). Panics if the connection ends otherwise or nothing comes in
/// `timeout`.
pub(crate) fn until_close(ws: &mut Ws, timeout: Duration) -> (u16, String, Vec<ServerMsg>) {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv(ws, left) {
            Ok(Some(Message::Text(t))) => {
                frames.push(ServerMsg::decode(t.as_str()).unwrap_or_else(|e| panic!("{t}: {e:?}")))
            }
            Ok(Some(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string(), frames);
            }
            Ok(Some(Message::Close(None))) => {
                return (u16::from(CloseCode::Status), String::new(), frames);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("no close frame within {timeout:?}; frames: {frames:?}"),
            Err(e) => panic!("the connection ended without a close frame: {e}; frames: {frames:?}"),
        }
    }
}

/// The next text frame within `timeout`, decoded; panics on anything else.
pub(crate) fn next_frame(ws: &mut Ws, timeout: Duration) -> ServerMsg {
    match recv(ws, timeout) {
        Ok(Some(Message::Text(t))) => {
            ServerMsg::decode(t.as_str()).unwrap_or_else(|e| panic!("{t}: {e:?}"))
        }
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// A description for offers and answers; `n` tells them apart.
pub(crate) fn description(n: u8) -> Description {
    Description {
        candidates: vec![Candidate {
            kind: CandidateKind::Host,
            addr: SocketAddr::new(A1, 40_000 + u16::from(n)),
            priority: 2_130_706_431,
            related: None,
        }],
        nat: None,
        transports: vec![Transport::Quic, Transport::Kcp],
        credentials: Credentials {
            ufrag: format!("uf{n:02}"),
            pwd: "0123456789abcdefghijkl".into(),
        },
        service: 7,
        seal: None,
        quic: None,
        rtc: None,
    }
}

/// A `fog_signal::Client` driven over a real WebSocket.
pub(crate) struct SignalPeer {
    pub(crate) ws: Ws,
    pub(crate) client: Client,
    /// Events seen but not yet taken by [`wait_for`](Self::wait_for).
    pub(crate) events: VecDeque<Event>,
}

impl SignalPeer {
    /// Connects to `addr` (`realm` must be the server's), authenticates with the key made from
    /// seed `n`, claiming `alias` if given, and waits for the welcome.
    pub(crate) fn join(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        realm: &str,
        n: u8,
        alias: Option<&str>,
    ) -> Self {
        Self::join_with(addr, tls, realm, [n; 32], [n; 32], alias)
    }

    /// [`join`](Self::join) with the key made from `seed` (for more than 256 peers).
    pub(crate) fn join_seed(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        realm: &str,
        seed: [u8; 32],
        alias: Option<&str>,
    ) -> Self {
        // A fresh nonce seed per join: a server refuses a client nonce it saw within the
        // auth timeout, and a peer may join again soon with the same key.
        static JOINS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let mut nonce_seed = seed;
        let joins = JOINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nonce_seed[28..].copy_from_slice(&joins.to_be_bytes());
        Self::join_with(addr, tls, realm, seed, nonce_seed, alias)
    }

    fn join_with(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        realm: &str,
        seed: [u8; 32],
        nonce_seed: [u8; 32],
        alias: Option<&str>,
    ) -> Self {
        let ws = open(addr, "/ws", tls).unwrap_or_else(|e| panic!("opening {addr}/ws: {e}"));
        let mut config = ClientConfig::new(KeyPair::from_seed(&seed), realm, nonce_seed);
        config.alias = alias.map(str::to_owned);
        let mut peer = Self {
            ws,
            client: Client::new(config),
            events: VecDeque::new(),
        };
        peer.client.handle_connected(Instant::now());
        let welcome = peer.wait_for(Duration::from_secs(5), |e| {
            matches!(e, Event::Authenticated { .. } | Event::Failed { .. })
        });
        assert!(
            matches!(welcome, Event::Authenticated { .. }),
            "authentication failed: {welcome:?}"
        );
        peer
    }

    /// Sends every frame the client has queued (after a command, before another peer waits for
    /// its effect; [`wait_for`](Self::wait_for) does it too).
    pub(crate) fn send_queued(&mut self) {
        while let Some(frame) = self.client.poll_frame() {
            self.ws.send(Message::text(frame)).expect("sending a frame");
        }
    }

    /// Sends what is queued, then reads and handles frames until an event matching `want`
    /// arrives (returned; earlier events stay in `events`). Panics after `timeout`.
    pub(crate) fn wait_for(&mut self, timeout: Duration, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            self.send_queued();
            if let Some(i) = self.events.iter().position(&want) {
                return self.events.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let last: Vec<&Event> = self.events.iter().rev().take(5).collect();
                panic!(
                    "no matching event within {timeout:?}; {} others waiting, the last {last:?}",
                    self.events.len()
                );
            }
            match recv(&mut self.ws, left.min(Duration::from_millis(100))) {
                Ok(Some(Message::Text(t))) => self.client.handle_frame(Instant::now(), t.as_str()),
                Ok(Some(Message::Close(frame))) => {
                    panic!("the server closed: {frame:?}; events {:?}", self.events)
                }
                Ok(_) => {}
                Err(e) => panic!("the connection failed: {e}; events {:?}", self.events),
            }
            self.client.handle_timeout(Instant::now());
            while let Some(event) = self.client.poll_event() {
                self.events.push_back(event);
            }
        }
    }
}
