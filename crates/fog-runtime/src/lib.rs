//! A FogConnect [`Node`] on real sockets, on a thread of its own, behind a cloneable
//! [`Handle`].
//!
//! The runtime is a driver: it owns a [`fog_mio::Driver`] (the UDP sockets,
//! the clock, the timers) running the node, and the node's signaling WebSocket (`ws://`, or
//! `wss://` through rustls, on a pump thread: tungstenite is blocking here). The application talks to it through a
//! [`Handle`] from any thread: connect, accept or refuse, send, close, stats, lookups; each
//! call is carried out on the runtime's thread and answered at once. Events arrive on a
//! channel ([`Runtime::events`]) or on a callback ([`Runtime::start_with_callback`]).
//!
//! ```no_run
//! use fog_runtime::{Runtime, RuntimeConfig};
//! use fogconnect::{AcceptPolicy, Event, KeyPair, NodeConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = KeyPair::from_seed(&[7; 32]);
//! let base = "0.0.0.0:0".parse()?; // the interface that reaches the server, a free port
//! let mut node = NodeConfig::new(key, "127.0.0.1", "127.0.0.1:3478".parse()?, base, 1);
//! node.accept = AcceptPolicy::All;
//! let runtime = Runtime::start(RuntimeConfig::new(node, "ws://127.0.0.1:7600/ws".parse()?))?;
//! let handle = runtime.handle();
//! while let Ok(event) = runtime.events().recv() {
//!     if let Event::Data { id, data } = event {
//!         handle.send(id, &data)?; // echo
//!     }
//! }
//! runtime.shutdown(); // closes every connection, tells the peers, flushes, joins
//! # Ok(())
//! # }
//! ```
//!
//! From async code (tokio, say), keep the [`Handle`] in your tasks (its calls return within
//! a turn of the runtime's loop, which never waits on anything but its own sockets) and move
//! events into an async channel from the callback of [`Runtime::start_with_callback`].

// This crate is a driver: reading the wall clock is its job, as in fog-mio.
#![allow(clippy::disallowed_methods)]

mod machine;
mod tcp;
mod ws;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fog_mio::Driver;
use fogconnect::{
    CommandError, ConnectError, ConnectionId, ConnectionStats, Counters, Diagnosis, Event,
    Footprint, HostFilter, LookupError, Node, NodeConfig, PeerId, SendError, Transport,
};

/// fog-mio's socket counters ([`Handle::io_stats`]).
pub use fog_mio::Stats as IoStats;
use machine::{FromSignal, Machine};
pub use ws::{
    DEFAULT_SIGNAL_PORT, MAX_FRAME, OpenError, SignalStream, SignalUrl, TlsRoots, open_websocket,
};

/// What a runtime runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// The node. An unspecified base address (`0.0.0.0:0`) becomes the address of the
    /// interface that reaches the signaling server, with a free port. Its `seed` is replaced
    /// by 256 bits from the OS random source: secrets on a real network are never derived
    /// from a seed someone chose.
    pub node: NodeConfig,
    /// The signaling server.
    pub signal: SignalUrl,
    /// Read the machine's interface addresses (fog-mio's `interfaces`, filtered by
    /// [`HostFilter`]'s defaults) at start and again this often, and give them to the node as
    /// further host candidates; `None` (the default) uses `node.interfaces` as given.
    pub gather_every: Option<Duration>,
    /// How long opening the signaling WebSocket may take (default 10 s).
    pub signal_timeout: Duration,
    /// The certificate authorities a `wss://` server may chain to (default: Mozilla's root
    /// program; [`TlsRoots::trusting`] for a private CA or a self-signed certificate).
    pub tls_roots: TlsRoots,
    /// Ask the default gateway for a port mapping of the base socket (PCP, NAT-PMP, UPnP
    /// IGD, whose HTTP this runtime carries on TCP): when `node.port_mapping` names no
    /// gateway, the OS's IPv4 default route gives it (fog-mio's `default_gateway`; Linux).
    /// The mapping is deleted at shutdown. Default on.
    pub port_mapping: bool,
}

impl RuntimeConfig {
    /// A configuration with the defaults above.
    pub fn new(node: NodeConfig, signal: SignalUrl) -> Self {
        RuntimeConfig {
            node,
            signal,
            gather_every: None,
            signal_timeout: Duration::from_secs(10),
            tls_roots: TlsRoots::default(),
            port_mapping: true,
        }
    }
}

/// Why a [`Handle`] call did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime has stopped (shut down, or its loop failed).
    Stopped,
    /// The node refused the connect.
    Connect(ConnectError),
    /// The node refused the command about a connection.
    Command(CommandError),
    /// The node refused the datagram.
    Send(SendError),
    /// The node refused the lookup.
    Lookup(LookupError),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Stopped => f.write_str("the runtime has stopped"),
            RuntimeError::Connect(e) => e.fmt(f),
            RuntimeError::Command(e) => e.fmt(f),
            RuntimeError::Send(e) => e.fmt(f),
            RuntimeError::Lookup(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Why a runtime did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The signaling server could not be reached.
    Signal(OpenError),
    /// A socket could not be bound, or the event loop not made, or the OS random source
    /// failed.
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Signal(e) => e.fmt(f),
            StartError::Io(e) => write!(f, "starting the runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A command for the runtime's thread, with where its answer goes.
enum Command {
    Connect(
        PeerId,
        u16,
        Transport,
        SyncSender<Result<ConnectionId, ConnectError>>,
    ),
    Accept(ConnectionId, SyncSender<Result<(), CommandError>>),
    Refuse(
        ConnectionId,
        u32,
        String,
        SyncSender<Result<(), CommandError>>,
    ),
    Close(
        ConnectionId,
        u32,
        String,
        SyncSender<Result<(), CommandError>>,
    ),
    Send(ConnectionId, Vec<u8>, SyncSender<Result<(), SendError>>),
    Stats(ConnectionId, SyncSender<Option<ConnectionStats>>),
    Diagnose(ConnectionId, SyncSender<Option<Diagnosis>>),
    Footprint(SyncSender<(Footprint, Counters)>),
    IoStats(SyncSender<IoStats>),
    Lookup(String, SyncSender<Result<(), LookupError>>),
    SetInterfaces(Vec<IpAddr>),
    Regather,
    Shutdown,
}

/// Talks to a running node from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    commands: Sender<Command>,
    wake: fog_mio::Handle,
    peer: PeerId,
    local: SocketAddr,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish()
    }
}

impl Handle {
    /// Sends `command` and waits for its answer.
    fn ask<T>(&self, command: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, RuntimeError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commands
            .send(command(tx))
            .map_err(|_| RuntimeError::Stopped)?;
        self.wake.wake().map_err(|_| RuntimeError::Stopped)?;
        rx.recv().map_err(|_| RuntimeError::Stopped)
    }

    /// The node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The node's base socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// [`Node::connect`]: the handle at once, the rest as events.
    pub fn connect(&self, peer: PeerId, service: u16) -> Result<ConnectionId, RuntimeError> {
        self.connect_with(peer, service, Transport::Datagram)
    }

    /// [`Node::connect_with`]: over a transport.
    pub fn connect_with(
        &self,
        peer: PeerId,
        service: u16,
        transport: Transport,
    ) -> Result<ConnectionId, RuntimeError> {
        self.ask(|tx| Command::Connect(peer, service, transport, tx))?
            .map_err(RuntimeError::Connect)
    }

    /// [`Node::accept`].
    pub fn accept(&self, id: ConnectionId) -> Result<(), RuntimeError> {
        self.ask(|tx| Command::Accept(id, tx))?
            .map_err(RuntimeError::Command)
    }

    /// [`Node::refuse`].
    pub fn refuse(&self, id: ConnectionId, code: u32, reason: &str) -> Result<(), RuntimeError> {
        self.ask(|tx| Command::Refuse(id, code, reason.to_owned(), tx))?
            .map_err(RuntimeError::Command)
    }

    /// [`Node::close`].
    pub fn close(&self, id: ConnectionId, code: u32, reason: &str) -> Result<(), RuntimeError> {
        self.ask(|tx| Command::Close(id, code, reason.to_owned(), tx))?
            .map_err(RuntimeError::Command)
    }

    /// [`Node::send`]: the datagram is on the wire when this returns `Ok`. The bytes are
    /// copied once, to reach the node's thread.
    pub fn send(&self, id: ConnectionId, data: &[u8]) -> Result<(), RuntimeError> {
        self.send_vec(id, data.to_vec())
    }

    /// [`send`](Self::send) of a buffer the caller hands over, which the node keeps
    /// ([`Node::send_vec`]): no copy of it on the way (dropped if the send fails).
    pub fn send_vec(&self, id: ConnectionId, data: Vec<u8>) -> Result<(), RuntimeError> {
        self.ask(|tx| Command::Send(id, data, tx))?
            .map_err(RuntimeError::Send)
    }

    /// [`Node::stats`] now; `None` for an unknown connection.
    pub fn stats(&self, id: ConnectionId) -> Result<Option<ConnectionStats>, RuntimeError> {
        self.ask(|tx| Command::Stats(id, tx))
    }

    /// [`Node::diagnose`].
    pub fn diagnose(&self, id: ConnectionId) -> Result<Option<Diagnosis>, RuntimeError> {
        self.ask(|tx| Command::Diagnose(id, tx))
    }

    /// [`Node::footprint`] and [`Node::counters`] now: what the node holds (connections,
    /// deadlines, sockets, queues) and what it dropped, for a program that watches itself.
    pub fn footprint(&self) -> Result<(Footprint, Counters), RuntimeError> {
        self.ask(Command::Footprint)
    }

    /// The driver's socket counters now: datagrams and bytes each way, `sendmsg` and
    /// `recvmmsg` calls (what a program measuring its own traffic, or a test, reads).
    pub fn io_stats(&self) -> Result<IoStats, RuntimeError> {
        self.ask(Command::IoStats)
    }

    /// [`Node::lookup`].
    pub fn lookup(&self, name: &str) -> Result<(), RuntimeError> {
        self.ask(|tx| Command::Lookup(name.to_owned(), tx))?
            .map_err(RuntimeError::Lookup)
    }

    /// [`Node::set_interfaces`].
    pub fn set_interfaces(&self, addresses: Vec<IpAddr>) -> Result<(), RuntimeError> {
        self.tell(Command::SetInterfaces(addresses))
    }

    /// [`Node::regather`].
    pub fn regather(&self) -> Result<(), RuntimeError> {
        self.tell(Command::Regather)
    }

    /// Asks the runtime to stop: it closes every connection (telling the peers), flushes, and
    /// ends its thread; [`Runtime::shutdown`] also waits for that. A stream's close is graceful
    /// (what was sent is delivered first) for up to a second; then it is cut short, and the
    /// peer hears code 0, "shutdown before the close completed".
    pub fn shutdown(&self) -> Result<(), RuntimeError> {
        self.tell(Command::Shutdown)
    }

    fn tell(&self, command: Command) -> Result<(), RuntimeError> {
        self.commands
            .send(command)
            .map_err(|_| RuntimeError::Stopped)?;
        self.wake.wake().map_err(|_| RuntimeError::Stopped)
    }
}

/// Where events go.
enum Sink {
    Channel(Sender<Event>),
    Callback(Box<dyn FnMut(Event) + Send>),
}

impl Sink {
    fn deliver(&mut self, event: Event) {
        match self {
            // A dropped receiver means nobody listens any more; the node runs on.
            Sink::Channel(tx) => {
                let _ = tx.send(event);
            }
            Sink::Callback(f) => f(event),
        }
    }
}

/// A running node (see the crate docs). Dropping it shuts the node down and waits for it.
pub struct Runtime {
    handle: Handle,
    events: Receiver<Event>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Runtime {
    /// Opens the signaling WebSocket, binds the base socket, and starts the node on a thread
    /// of its own; events arrive on [`events`](Self::events).
    pub fn start(config: RuntimeConfig) -> Result<Runtime, StartError> {
        let (tx, rx) = mpsc::channel();
        Self::spawn(config, Sink::Channel(tx), rx)
    }

    /// [`start`](Self::start), with every event handed to `on_event` on the runtime's thread
    /// instead (keep it short: the node waits for it). [`events`](Self::events) then never
    /// yields anything.
    pub fn start_with_callback(
        config: RuntimeConfig,
        on_event: impl FnMut(Event) + Send + 'static,
    ) -> Result<Runtime, StartError> {
        // A receiver whose sender is gone: it yields nothing and reports disconnection.
        let (_, rx) = mpsc::channel();
        Self::spawn(config, Sink::Callback(Box::new(on_event)), rx)
    }

    fn spawn(
        mut config: RuntimeConfig,
        sink: Sink,
        events: Receiver<Event>,
    ) -> Result<Runtime, StartError> {
        let (ws, tcp_local) =
            open_websocket(&config.signal, config.signal_timeout, &config.tls_roots)
                .map_err(StartError::Signal)?;
        let base = &mut config.node.base;
        if base.ip().is_unspecified() {
            base.set_ip(tcp_local.ip());
        }
        if base.port() == 0 {
            // The node must know its port before it starts (discovery reads its mapping);
            // the OS names a free one, which the driver binds at once below.
            let port = UdpSocket::bind(SocketAddr::new(base.ip(), 0))
                .and_then(|s| s.local_addr())
                .map_err(StartError::Io)?
                .port();
            base.set_port(port);
        }
        if config.gather_every.is_some() {
            config.node.interfaces = gather().unwrap_or_default();
        }
        if !config.port_mapping {
            config.node.port_mapping = None;
        } else if config.node.port_mapping.is_none() {
            config.node.port_mapping = fog_mio::interfaces::default_gateway();
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| StartError::Io(io::Error::other(format!("the OS random source: {e}"))))?;
        config.node.seed = seed.into();
        let base = config.node.base;
        let peer = config.node.key.peer_id();
        let node = Node::new(config.node.clone(), Instant::now());
        let (signal_tx, signal_rx) = mpsc::channel();
        let machine = Machine::new(
            node,
            config.signal.clone(),
            config.tls_roots.clone(),
            config.signal_timeout,
            signal_tx,
        );
        // Bulk transfers burst faster than the receiving thread drains: a larger receive
        // buffer turns those bursts into queueing (which LEDBAT and the others see as delay)
        // rather than loss. The kernel caps it at `net.core.rmem_max`.
        let sockets =
            fog_mio::Config::new().socket_buffers(Some(SOCKET_BUFFER), Some(SOCKET_BUFFER));
        let mut driver = Driver::with_config(machine, &[base], sockets).map_err(StartError::Io)?;
        let wake = driver.handle();
        driver.machine_mut().adopt(ws, wake.clone());
        let (commands, command_rx) = mpsc::channel();
        let handle = Handle {
            commands,
            wake,
            peer,
            local: base,
        };
        let gather_every = config.gather_every;
        let tcp = tcp::Tcp::new(driver.handle());
        let thread = thread::Builder::new()
            .name("fog-runtime".into())
            .spawn(move || run(driver, command_rx, signal_rx, tcp, sink, gather_every))
            .map_err(StartError::Io)?;
        Ok(Runtime {
            handle,
            events,
            thread: Some(thread),
        })
    }

    /// A handle to the node, for any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The events, when started with [`start`](Self::start). The channel ends when the
    /// runtime stops.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Stops the node (closing its connections, telling the peers), and waits for its thread;
    /// the loop's own error, if it failed.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let _ = self.handle.shutdown();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the runtime's thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The machine's interface addresses worth offering.
fn gather() -> io::Result<Vec<IpAddr>> {
    fog_mio::interfaces::addresses().map(|ips| HostFilter::default().filter(ips))
}

/// The UDP socket buffers asked for (`SO_RCVBUF`, `SO_SNDBUF`), each way.
const SOCKET_BUFFER: usize = 2 << 20;
/// How long a shutdown waits for the closes to reach the wire and the WebSocket to close.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);
/// How long a shutdown waits for streams to close gracefully (the peer acknowledging what was
/// sent) before it ends them at once, telling the peers.
const SHUTDOWN_CLOSES: Duration = Duration::from_secs(1);

/// The runtime's loop.
fn run(
    mut driver: Driver<Machine>,
    commands: Receiver<Command>,
    signal: Receiver<FromSignal>,
    (mut tcp, tcp_news): (tcp::Tcp, Receiver<(fogconnect::TcpId, tcp::News)>),
    mut sink: Sink,
    gather_every: Option<Duration>,
) -> io::Result<()> {
    let mut next_gather = gather_every.map(|every| Instant::now() + every);
    let mut stopping: Option<Instant> = None;
    loop {
        let wait = next_gather
            .map(|at| at.saturating_duration_since(Instant::now()))
            .into_iter()
            .chain(stopping.map(|_| Duration::from_millis(10)))
            .min();
        driver.turn(wait, |_, event| sink.deliver(event))?;
        while let Ok((id, news)) = tcp_news.try_recv() {
            tcp.deliver(driver.machine_mut().node_mut(), id, news);
            driver.drain(|_, event| sink.deliver(event));
        }
        while let Ok(input) = signal.try_recv() {
            driver
                .machine_mut()
                .handle_from_signal(Instant::now(), input);
            driver.drain(|_, event| sink.deliver(event));
        }
        while let Ok(command) = commands.try_recv() {
            if matches!(command, Command::Shutdown) && stopping.is_none() {
                stopping = Some(Instant::now());
                driver.machine_mut().shut(Instant::now());
                // Deleted within the shutdown's flush, which waits for it (PCP and NAT-PMP
                // answer in a round trip, UPnP's DeletePortMapping is one local HTTP exchange).
                driver
                    .machine_mut()
                    .node_mut()
                    .close_port_mapping(Instant::now());
                driver.drain(|_, event| sink.deliver(event));
                // The closes are on their way to the pump: it sends them, then closes.
                driver.machine_mut().hang_up();
            } else if let Command::IoStats(tx) = command {
                let _ = tx.send(driver.stats());
            } else {
                execute(driver.machine_mut().node_mut(), command);
                driver.drain(|_, event| sink.deliver(event));
            }
        }
        if let (Some(every), Some(at)) = (gather_every, next_gather) {
            if Instant::now() >= at {
                next_gather = Some(Instant::now() + every);
                // A transient error keeps the addresses the node has.
                if let Ok(ips) = gather() {
                    driver
                        .machine_mut()
                        .node_mut()
                        .set_interfaces(Instant::now(), &ips);
                    driver.drain(|_, event| sink.deliver(event));
                }
            }
        }
        tcp.drain(driver.machine_mut().node_mut());
        if let Some(since) = stopping {
            let closing = driver.machine().node().connections().next().is_some();
            if closing && since.elapsed() >= SHUTDOWN_CLOSES {
                driver.machine_mut().abort_all(Instant::now());
                driver.drain(|_, event| sink.deliver(event));
                // The next turn puts the closes on the wire.
                continue;
            }
            let done = !closing
                && driver.machine().signal_closed()
                && !driver.machine().node().port_mapping_active();
            if done || since.elapsed() >= SHUTDOWN_CLOSES + SHUTDOWN_FLUSH {
                driver.machine_mut().join_pump(SHUTDOWN_FLUSH);
                return Ok(());
            }
        }
    }
}

/// Carries out one command on the node and answers it. An answer nobody waits for any more
/// is dropped.
fn execute(node: &mut Node, command: Command) {
    let now = Instant::now();
    match command {
        Command::Connect(peer, service, transport, tx) => {
            let _ = tx.send(node.connect_with(now, peer, service, transport));
        }
        Command::Accept(id, tx) => {
            let _ = tx.send(node.accept(now, id));
        }
        Command::Refuse(id, code, reason, tx) => {
            let _ = tx.send(node.refuse(now, id, code, &reason));
        }
        Command::Close(id, code, reason, tx) => {
            let _ = tx.send(node.close(now, id, code, &reason));
        }
        Command::Send(id, data, tx) => {
            let _ = tx.send(node.send_vec(now, id, data));
        }
        Command::Stats(id, tx) => {
            let _ = tx.send(node.stats(now, id));
        }
        Command::Diagnose(id, tx) => {
            let _ = tx.send(node.diagnose(now, id));
        }
        Command::Footprint(tx) => {
            let _ = tx.send((node.footprint(), node.counters()));
        }
        Command::Lookup(name, tx) => {
            let _ = tx.send(node.lookup(&name));
        }
        Command::SetInterfaces(ips) => node.set_interfaces(now, &ips),
        Command::Regather => node.regather(now),
        // Answered by the loop, which holds the driver.
        Command::Shutdown | Command::IoStats(_) => {}
    }
}
