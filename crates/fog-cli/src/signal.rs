//! A blocking WebSocket driver for fog-signal's client machine: one TCP connection to a signaling
//! server (`fogd --signal`), frames in and out, timers from the machine's `poll_timeout`.
//!
//! The machine does the protocol (hello, challenge, signed auth, commands); this module only moves
//! text frames between it and a `tungstenite` WebSocket over a `std` TCP stream whose read
//! timeout is the machine's next deadline. `ws://` only for now; `wss://` is refused with a clear
//! error.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_runtime::{OpenError, SignalStream, TlsRoots, open_websocket};
use fog_signal::client::{Client, ClientConfig, Event};
use tungstenite::{Message, WebSocket};

pub(crate) use fog_runtime::SignalUrl;

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
    ws: WebSocket<SignalStream>,
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
        roots: &TlsRoots,
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<Self, SignalError> {
        let (ws, local) = open_websocket(url, timeout, roots)?;
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
                .get_ref()
                .tcp()
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

impl From<OpenError> for SignalError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Connect(e) => SignalError::Connect(e),
            OpenError::Handshake(e) => SignalError::Handshake(e),
            OpenError::Io(e) => SignalError::Io(e),
            other => SignalError::Connect(other.to_string()),
        }
    }
}
