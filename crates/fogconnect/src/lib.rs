//! FogConnect: peer-to-peer connections by peer ID, direct when the NATs allow it.
//!
//! [`Node`] is the whole of it on one UDP socket, as one sans-IO machine: NAT behaviour discovery
//! (fog-stun), signaling (fog-signal), relays (fog-turn, and the signaling server itself), and
//! punching by the strategy the two NATs call for (fog-ice). It never touches a socket, a thread
//! or the clock: a driver moves its datagrams and its signaling frames and tells it the time.
//! `fog-runtime` is such a driver on real sockets, on a thread of its own; fog-sim runs nodes in
//! virtual time. To embed a node in an event loop of your own, this is the whole loop:
//!
//! ```no_run
//! use std::time::Instant;
//! use fog_core::{Receive, SansIo, SocketRequest};
//! use fogconnect::{Event, Node, SignalInput, SignalOutput};
//!
//! /// What woke the loop: a datagram, a signaling frame, or the node's deadline.
//! enum Input<'a> {
//!     Datagram(Receive<'a>),
//!     Signal(SignalInput<'a>),
//!     Timeout,
//! }
//!
//! fn step(node: &mut Node, input: Input<'_>, buf: &mut [u8]) -> Option<Instant> {
//!     let now = Instant::now();
//!     match input {
//!         Input::Datagram(packet) => node.handle_packet(now, packet),
//!         Input::Signal(signal) => node.handle_signal(now, signal),
//!         Input::Timeout => node.handle_timeout(now),
//!     }
//!     // After every input and every command (connect, accept, send, close...), in this order:
//!     // 1. sockets to bind or unbind (further interfaces, ports sampled and released)
//!     while let Some(request) = node.poll_socket_request() {
//!         match request {
//!             SocketRequest::Bind(_addr) => { /* bind a UDP socket there */ }
//!             SocketRequest::Unbind(_addr) => { /* close it */ }
//!         }
//!     }
//!     // 2. datagrams, each from the socket its `source` names (the base socket if `None`)
//!     while let Some(t) = node.poll_transmit(now, buf) {
//!         let _ = (t.source, t.destination, &buf[..t.len]);
//!     }
//!     // 3. the signaling connection: open it, send frames, close it
//!     while let Some(out) = node.poll_signal() {
//!         match out {
//!             SignalOutput::Open => { /* dial the server; then SignalInput::Opened or Closed */ }
//!             SignalOutput::Frame(_text) => { /* send it as a WebSocket text frame */ }
//!             _ => { /* close the WebSocket; then SignalInput::Closed */ }
//!         }
//!     }
//!     // 4. events for the application, which may issue commands (then drain again)
//!     while let Some(event) = node.poll_event() {
//!         match event {
//!             Event::Incoming { id, .. } => { let _ = node.accept(now, id); }
//!             Event::Data { id, data } => { let _ = node.send(now, id, &data); }
//!             _ => {}
//!         }
//!     }
//!     // 5. when to call `handle_timeout` next
//!     node.poll_timeout()
//! }
//! ```

pub mod node;

pub use fog_ice::candidate::{Candidate, HostFilter, Kind as CandidateKind};
pub use fog_signal::{KeyPair, PeerId};
pub use node::{
    AcceptPolicy, CHECK_ALLOWANCE, CLOSED_IDLE, CLOSED_TIMEOUT, CloseReason, CommandError,
    ConnectError, ConnectionId, ConnectionStats, Counters, Diagnosis, Event, FailReason, Footprint,
    KnownNat, LookupError, MAX_DATAGRAM, MAX_LOOKUPS, MAX_QUEUED, MAX_RELAY_FRAMES, Node,
    NodeConfig, REFUSED_BUSY, REFUSED_FULL, REFUSED_TRANSPORT, Seed, SendError, ServerChoice,
    SignalInput, SignalOutput, TcpCommand, TcpId, TcpInput, Transport, Via,
};

/// The directory this crate was compiled from, for tests to compare with their own
/// `env!("CARGO_MANIFEST_DIR")`. Two checkouts of the workspace that share one target directory
/// (`CARGO_TARGET_DIR`) overwrite each other's artifacts: cargo names a workspace member's
/// artifacts by its path relative to the workspace root and judges them fresh by mtime, so a
/// test rebuilt in one checkout can link a library the other checkout built from older code
/// (a roaming test "failed" so on 2026-12-07, running the relay code of before its fix).
#[doc(hidden)]
pub const BUILT_FROM: &str = env!("CARGO_MANIFEST_DIR");
