//! The node as the runtime drives it: the node itself, and its signaling WebSocket on a pump
//! thread, whose output is flushed in the node's drain order (after the transmits, before
//! the events).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use fogconnect::{Event, Node, SignalInput, SignalOutput};
use mio::unix::SourceFd;
use tungstenite::{Message, WebSocket};

use crate::ws::{SignalStream, SignalUrl, TlsRoots, open_websocket};

/// What a WebSocket thread tells the runtime; `generation` names the connection, so that news
/// of an old one is ignored.
pub(crate) enum FromSignal {
    Opened { generation: u64, writer: Writer },
    Frame { generation: u64, text: String },
    Closed { generation: u64, why: String },
}

/// The node and its signaling connection.
pub(crate) struct Machine {
    node: Node,
    url: SignalUrl,
    roots: TlsRoots,
    timeout: Duration,
    to_runtime: Sender<FromSignal>,
    wake: Option<fog_mio::Handle>,
    /// Frames for the current connection's pump, while it is open.
    writer: Option<Writer>,
    generation: u64,
    pump: Option<JoinHandle<()>>,
}

impl Machine {
    pub(crate) fn new(
        node: Node,
        url: SignalUrl,
        roots: TlsRoots,
        timeout: Duration,
        to_runtime: Sender<FromSignal>,
    ) -> Machine {
        Machine {
            node,
            url,
            roots,
            timeout,
            to_runtime,
            wake: None,
            writer: None,
            generation: 0,
            pump: None,
        }
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    pub(crate) fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Takes over the WebSocket opened at start: the node's first signaling connection.
    pub(crate) fn adopt(&mut self, ws: WebSocket<SignalStream>, wake: fog_mio::Handle) {
        self.wake = Some(wake.clone());
        self.generation += 1;
        match spawn_pump(ws, self.generation, self.to_runtime.clone(), wake) {
            Ok((writer, pump)) => {
                self.writer = Some(writer);
                self.pump = Some(pump);
                self.node.handle_signal(Instant::now(), SignalInput::Opened);
            }
            Err(e) => {
                tracing::warn!(%e, "no thread or poll for the signaling connection");
                self.node.handle_signal(Instant::now(), SignalInput::Closed);
            }
        }
    }

    /// News from a WebSocket thread.
    pub(crate) fn handle_from_signal(&mut self, now: Instant, input: FromSignal) {
        match input {
            FromSignal::Opened { generation, writer } if generation == self.generation => {
                self.writer = Some(writer);
                self.node.handle_signal(now, SignalInput::Opened);
            }
            FromSignal::Frame { generation, text } if generation == self.generation => {
                self.node.handle_signal(now, SignalInput::Frame(&text));
            }
            FromSignal::Closed { generation, why } if generation == self.generation => {
                tracing::info!(%why, "the signaling connection ended");
                self.writer = None;
                self.node.handle_signal(now, SignalInput::Closed);
            }
            _ => {}
        }
    }

    /// Closes every connection, telling the peers (the shutdown's first step); a stream's
    /// close is graceful, so what was sent is delivered first.
    pub(crate) fn shut(&mut self, now: Instant) {
        let ids: Vec<_> = self.node.connections().collect();
        for id in ids {
            let _ = self.node.close(now, id, 0, "shutdown");
        }
    }

    /// Ends the connections whose graceful close has not finished, telling the peers (the
    /// shutdown's last word when they took too long).
    pub(crate) fn abort_all(&mut self, now: Instant) {
        let ids: Vec<_> = self.node.connections().collect();
        for id in ids {
            let _ = self
                .node
                .abort(now, id, 0, "shutdown before the close completed");
        }
    }

    /// Lets the pump send what it has and close the WebSocket.
    pub(crate) fn hang_up(&mut self) {
        self.flush_signal();
        self.writer = None;
        // No new connection from now on.
        self.generation += 1;
    }

    /// Whether the current pump has ended.
    pub(crate) fn signal_closed(&self) -> bool {
        self.pump.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits up to `limit` for the pump to end.
    pub(crate) fn join_pump(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.signal_closed() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        if self.signal_closed() {
            if let Some(pump) = self.pump.take() {
                let _ = pump.join();
            }
        }
    }

    /// Carries out what the node asks of its signaling connection.
    fn flush_signal(&mut self) {
        while let Some(out) = self.node.poll_signal() {
            match out {
                SignalOutput::Frame(frame) => {
                    if let Some(writer) = &self.writer {
                        // A pump that ended reports it; the frame is lost with the connection.
                        writer.send(frame);
                    }
                }
                SignalOutput::Open => self.open(),
                SignalOutput::Close => {
                    self.writer = None;
                    self.generation += 1;
                    self.node.handle_signal(Instant::now(), SignalInput::Closed);
                }
                _ => {}
            }
        }
    }

    /// Dials the server on a thread of its own; its outcome comes back as `FromSignal`.
    fn open(&mut self) {
        let Some(wake) = self.wake.clone() else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let (url, timeout, to_runtime) = (self.url.clone(), self.timeout, self.to_runtime.clone());
        let roots = self.roots.clone();
        self.pump = thread::Builder::new()
            .name("fog-runtime-ws".into())
            .spawn(move || match open_websocket(&url, timeout, &roots) {
                Ok((ws, _)) => match PumpPoll::new(&ws) {
                    Ok((poll, writer, frames)) => {
                        let _ = to_runtime.send(FromSignal::Opened { generation, writer });
                        let _ = wake.wake();
                        pump(ws, poll, generation, &to_runtime, &frames, &wake);
                    }
                    Err(e) => {
                        let why = format!("poll: {e}");
                        let _ = to_runtime.send(FromSignal::Closed { generation, why });
                        let _ = wake.wake();
                    }
                },
                Err(e) => {
                    let why = e.to_string();
                    let _ = to_runtime.send(FromSignal::Closed { generation, why });
                    let _ = wake.wake();
                }
            })
            .ok();
    }
}

/// Frames for a pump to send: the channel, and the waker of the pump's poll.
#[derive(Clone)]
pub(crate) struct Writer {
    /// `None` only while dropping (see `drop`).
    frames: Option<Sender<String>>,
    waker: Arc<mio::Waker>,
}

impl Writer {
    /// Queues `frame`; false when the pump has ended.
    fn send(&self, frame: String) -> bool {
        let sent = self.frames.as_ref().is_some_and(|f| f.send(frame).is_ok());
        let _ = self.waker.wake();
        sent
    }
}

impl Drop for Writer {
    /// The pump finds the channel closed only when it next wakes: close it, then wake the
    /// pump. The other way round (a field drops after this body), a pump woken by the wakeup
    /// could find the channel still open and go back to sleep for good: one `fogconnect`
    /// command in ten waited out both 200 ms shutdown limits for it.
    fn drop(&mut self) {
        self.frames = None;
        let _ = self.waker.wake();
    }
}

/// A pump's poll: the WebSocket's socket, readable and writable (edge-triggered), and a waker
/// for new frames to send.
struct PumpPoll {
    poll: mio::Poll,
    events: mio::Events,
    /// The waker's own reference: the runtime drops its [`Writer`] (and so its reference) to
    /// hang up, waking the pump as it goes; were that the last one, the waker's eventfd would
    /// close with the wakeup possibly unread (mio delivers a waker's events only while it
    /// lives), and the pump would sleep forever.
    _waker: Arc<mio::Waker>,
}

const SOCKET: mio::Token = mio::Token(0);
const FRAMES: mio::Token = mio::Token(1);

impl PumpPoll {
    /// Registers `ws`'s socket, made non-blocking; returns the poll and a writer for it.
    fn new(ws: &WebSocket<SignalStream>) -> io::Result<(PumpPoll, Writer, Receiver<String>)> {
        let tcp = ws.get_ref().tcp();
        tcp.set_nonblocking(true)?;
        let poll = mio::Poll::new()?;
        let fd = tcp.as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            SOCKET,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), FRAMES)?);
        let (frames, rx) = mpsc::channel();
        let pump = PumpPoll {
            poll,
            events: mio::Events::with_capacity(4),
            _waker: Arc::clone(&waker),
        };
        let writer = Writer {
            frames: Some(frames),
            waker,
        };
        Ok((pump, writer, rx))
    }

    /// Sleeps until the socket or the writer has news, or `limit` passes.
    fn wait(&mut self, limit: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, limit) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }
}

/// Opens the pump's poll on `ws` and runs it on a thread of its own; the writer, or why not.
fn spawn_pump(
    ws: WebSocket<SignalStream>,
    generation: u64,
    to_runtime: Sender<FromSignal>,
    wake: fog_mio::Handle,
) -> io::Result<(Writer, JoinHandle<()>)> {
    let (poll, writer, frames) = PumpPoll::new(&ws)?;
    let thread = thread::Builder::new()
        .name("fog-runtime-ws".into())
        .spawn(move || pump(ws, poll, generation, &to_runtime, &frames, &wake))?;
    Ok((writer, thread))
}

/// How long a pump whose runtime hung up keeps trying to deliver what is left and the close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// The WebSocket pump: frames from the server to the runtime (waking it), frames from the
/// runtime to the server; tells the runtime when the connection ends. When the runtime drops
/// its writer, the pump sends what is left and closes the connection politely. It sleeps in
/// its poll until the socket or the writer has news: an idle connection costs no wakeups.
fn pump(
    mut ws: WebSocket<SignalStream>,
    mut poll: PumpPoll,
    generation: u64,
    to_runtime: &Sender<FromSignal>,
    frames: &Receiver<String>,
    wake: &fog_mio::Handle,
) {
    let closed = |why: String| {
        let _ = to_runtime.send(FromSignal::Closed { generation, why });
        let _ = wake.wake();
    };
    let would_block = |e: &tungstenite::Error| matches!(e, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock);
    loop {
        // What the runtime wrote: into tungstenite's buffer, then onto the socket as far as
        // it takes it (the rest goes when the socket is writable again).
        let mut hung_up = false;
        loop {
            match frames.try_recv() {
                Ok(frame) => match ws.write(Message::text(frame)) {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {}
                    Err(e) => return closed(e.to_string()),
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    hung_up = true;
                    break;
                }
            }
        }
        if hung_up {
            return close_politely(ws, poll);
        }
        match ws.flush() {
            Ok(()) => {}
            Err(e) if would_block(&e) => {}
            Err(e) => return closed(e.to_string()),
        }
        // What the server sent, until the socket has no more.
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let text = text.to_string();
                    if to_runtime
                        .send(FromSignal::Frame { generation, text })
                        .is_err()
                    {
                        return;
                    }
                    let _ = wake.wake();
                }
                Ok(Message::Close(frame)) => {
                    return closed(
                        frame.map_or_else(String::new, |f| format!("{}: {}", f.code, f.reason)),
                    );
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return closed(e.to_string()),
            }
        }
        if let Err(e) = poll.wait(None) {
            return closed(format!("poll: {e}"));
        }
    }
}

/// Sends what is left and a close frame, waiting for the socket as needed, for at most
/// [`CLOSE_FLUSH`].
fn close_politely(mut ws: WebSocket<SignalStream>, mut poll: PumpPoll) {
    let deadline = Instant::now() + CLOSE_FLUSH;
    let _ = ws.close(None);
    loop {
        match ws.flush() {
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || poll.wait(Some(left)).is_err() {
            return;
        }
    }
}

impl SansIo for Machine {
    type Event = Event;

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.node.handle_packet(now, packet);
    }

    fn handle_packet_of_batch(&mut self, now: Instant, packet: Receive<'_>, more: bool) {
        self.node.handle_packet_of_batch(now, packet, more);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
    }

    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        self.node.poll_socket_request()
    }

    fn handle_bind_error(&mut self, now: Instant, addr: std::net::SocketAddr) {
        self.node.handle_bind_error(now, addr);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.node.poll_transmit(now, buf)
    }

    /// The node's signaling output first: the drain order puts it between the transmits and
    /// the events.
    fn poll_event(&mut self) -> Option<Event> {
        self.flush_signal();
        self.node.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }
}
