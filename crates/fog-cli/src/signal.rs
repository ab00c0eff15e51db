//! A blocking WebSocket driver for fog-signal's client machine: one TCP connection to a signaling
//! server (`fogd --signal`), frames in and out, timers from the machine's `poll_timeout`.
//!
//! The machine does the protocol (hello, challenge, signed auth, commands); this module only moves
//! text frames between it and a `tungstenite` WebSocket over a `std` TCP stream whose read
//! timeout is the machine's next deadline. `ws://` only for now; `wss://` is refused with a clear
//! error.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use fog_signal::client::{Client, ClientConfig, Event};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// Frames larger than this from the server close the connection. fogd's own limit for frames it
/// accepts is 16 KiB; what it sends is smaller still.
const MAX_FRAME: usize = 64 * 1024;

/// A parsed `ws://HOST[:PORT][/PATH]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignalUrl {
    /// The host as written (a name, an IPv4 address or a bracketed IPv6 address).
    pub(crate) host: String,
    /// The port (default 7600, fogd's).
    pub(crate) port: u16,
    /// The path (default `/ws`).
    pub(crate) path: String,
}

/// fogd's default signaling port.
pub(crate) const DEFAULT_SIGNAL_PORT: u16 = 7600;

impl std::str::FromStr for SignalUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("wss://") {
            return Err("wss:// is not supported by this client yet; use ws://".to_owned());
        }
        let rest = s
            .strip_prefix("ws://")
            .ok_or_else(|| format!("'{s}' does not start with ws://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        if authority.is_empty() {
            return Err(format!("'{s}' names no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{s}': unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None if after.is_empty() => DEFAULT_SIGNAL_PORT,
                None => return Err(format!("'{s}': unexpected '{after}' after the host")),
            };
            (format!("[{addr}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host.to_owned(), parse_port(p)?),
                None => (authority.to_owned(), DEFAULT_SIGNAL_PORT),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("'{s}' names no host"));
        }
        Ok(SignalUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("'{p}' is not a port (1-65535)")),
    }
}

impl fmt::Display for SignalUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws://{}:{}{}", self.host, self.port, self.path)
    }
}

impl SignalUrl {
    /// The host without IPv6 brackets: the realm the client signs into its auth transcript.
    pub(crate) fn realm(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Why the connection to the signaling server ended or could not start.
#[derive(Debug)]
pub(crate) enum SignalError {
    /// Name resolution or TCP connect failed.
    Connect(String),
    /// The WebSocket upgrade failed (wrong path, not a WebSocket server, ...).
    Handshake(String),
    /// The connection broke.
    Io(io::Error),
    /// The server closed the connection, with its close code and reason.
    Closed { code: Option<u16>, reason: String },
    /// The protocol failed: the machine gave up (a bad server, a handshake timeout).
    Protocol(String),
    /// The caller's deadline passed.
    Timeout,
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::Connect(e) => write!(f, "cannot reach the signaling server: {e}"),
            SignalError::Handshake(e) => write!(f, "the WebSocket handshake failed: {e}"),
            SignalError::Io(e) => write!(f, "the signaling connection broke: {e}"),
            SignalError::Closed { code, reason } => match code {
                Some(code) => write!(
                    f,
                    "the signaling server closed the connection ({code}: {reason})"
                ),
                None => f.write_str("the signaling server closed the connection"),
            },
            SignalError::Protocol(e) => write!(f, "signaling failed: {e}"),
            SignalError::Timeout => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for SignalError {}

/// One authenticated-or-authenticating connection.
pub(crate) struct Connection {
    ws: WebSocket<TcpStream>,
    client: Client,
    /// The local address of the TCP connection: the interface that reaches the server.
    local: SocketAddr,
}

impl Connection {
    /// Connects to `url` within `timeout` and starts the machine's handshake. Authentication
    /// completes as [`Connection::next_event`] is called (an [`Event::Authenticated`]).
    // The driver reads the clock; the machine never does.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn open(
        url: &SignalUrl,
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<Self, SignalError> {
        let (ws, local) = open_websocket(url, timeout)?;
        let mut client = Client::new(config);
        client.handle_connected(Instant::now());
        let mut connection = Connection { ws, client, local };
        connection.flush()?;
        Ok(connection)
    }

    /// The machine, for commands (`register`, `connect`, `answer`, ...). Call
    /// [`Connection::next_event`] afterwards to send what they queued.
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The local address of the connection to the server.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends what the machine queued, then waits until it has an event or `deadline` passes.
    // The driver reads the clock; the machine never does.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn next_event(&mut self, deadline: Instant) -> Result<Event, SignalError> {
        loop {
            self.flush()?;
            if let Some(event) = self.client.poll_event() {
                return Ok(event);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SignalError::Timeout);
            }
            let wake = self
                .client
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            if wake <= now {
                self.client.handle_timeout(now);
                continue;
            }
            // A zero read timeout would mean "block forever"; wake is in the future here.
            let wait = (wake - now).max(Duration::from_millis(1));
            self.ws
                .get_mut()
                .set_read_timeout(Some(wait))
                .map_err(SignalError::Io)?;
            match self.ws.read() {
                Ok(Message::Text(text)) => self.client.handle_frame(Instant::now(), text.as_str()),
                Ok(Message::Close(frame)) => {
                    return Err(SignalError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                // Binary frames are not part of the protocol; pings are answered by tungstenite.
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.client.handle_timeout(Instant::now());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(SignalError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Err(tungstenite::Error::Io(e)) => return Err(SignalError::Io(e)),
                Err(e) => return Err(SignalError::Protocol(e.to_string())),
            }
        }
    }

    /// Waits for the first event that `want` maps to a value, passing the others to `other`
    /// (which may fail the wait). An [`Event::Failed`] always ends it.
    pub(crate) fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(&Event) -> Option<T>,
        mut other: impl FnMut(Event) -> Result<(), SignalError>,
    ) -> Result<T, SignalError> {
        loop {
            let event = self.next_event(deadline)?;
            if let Some(value) = want(&event) {
                return Ok(value);
            }
            if let Event::Failed { code } = event {
                return Err(SignalError::Protocol(format!(
                    "the handshake failed ({code:?})"
                )));
            }
            other(event)?;
        }
    }

    /// Closes the WebSocket politely; errors on the way out do not matter any more.
    pub(crate) fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }

    /// Sends every frame the machine has queued.
    pub(crate) fn flush(&mut self) -> Result<(), SignalError> {
        while let Some(frame) = self.client.poll_frame() {
            self.ws.send(Message::text(frame)).map_err(|e| match e {
                tungstenite::Error::Io(e) => SignalError::Io(e),
                e => SignalError::Protocol(e.to_string()),
            })?;
        }
        Ok(())
    }
}

/// Connects to `url` within `timeout` and upgrades to a WebSocket; returns it with the local
/// address of the TCP connection (the interface that reaches the server).
pub(crate) fn open_websocket(
    url: &SignalUrl,
    timeout: Duration,
) -> Result<(WebSocket<TcpStream>, SocketAddr), SignalError> {
    let addrs: Vec<SocketAddr> = (url.realm(), url.port)
        .to_socket_addrs()
        .map_err(|e| SignalError::Connect(format!("{}: {e}", url.host)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    let stream = stream.ok_or_else(|| {
        SignalError::Connect(last.unwrap_or_else(|| format!("{} has no address", url.host)))
    })?;
    stream.set_nodelay(true).map_err(SignalError::Io)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(SignalError::Io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(SignalError::Io)?;
    let local = stream.local_addr().map_err(SignalError::Io)?;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _response) =
        tungstenite::client::client_with_config(url.to_string(), stream, Some(ws_config))
            .map_err(|e| SignalError::Handshake(handshake_error(&e)))?;
    Ok((ws, local))
}

fn handshake_error<S: tungstenite::handshake::HandshakeRole>(
    e: &tungstenite::HandshakeError<S>,
) -> String {
    match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            format!("the server answered HTTP {}", response.status())
        }
        tungstenite::HandshakeError::Failure(e) => e.to_string(),
        tungstenite::HandshakeError::Interrupted(_) => "timed out".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<(String, u16, String), String> {
        s.parse::<SignalUrl>().map(|u| (u.host, u.port, u.path))
    }

    #[test]
    fn urls() {
        assert_eq!(
            url("ws://127.0.0.1:7600/ws"),
            Ok(("127.0.0.1".into(), 7600, "/ws".into()))
        );
        assert_eq!(
            url("ws://example.org"),
            Ok(("example.org".into(), 7600, "/ws".into()))
        );
        assert_eq!(url("ws://[::1]:9/x"), Ok(("[::1]".into(), 9, "/x".into())));
        assert_eq!(url("ws://[::1]"), Ok(("[::1]".into(), 7600, "/ws".into())));
        assert_eq!(
            "ws://[::1]:9/x".parse::<SignalUrl>().unwrap().realm(),
            "::1"
        );
        assert_eq!(
            "ws://h:1/ws".parse::<SignalUrl>().unwrap().to_string(),
            "ws://h:1/ws"
        );
        for bad in [
            "http://h/ws",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:x",
            "ws://[::1",
            "ws://[::1]x",
            "ws://[]:1",
        ] {
            assert!(url(bad).is_err(), "{bad} parsed");
        }
        assert!(url("wss://h/ws").unwrap_err().contains("not supported"));
    }
}
