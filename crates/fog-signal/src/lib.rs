//! FogConnect signaling, sans-IO: Ed25519 peer identities, the JSON frame protocol, and the
//! client and server state machines. The protocol is specified in `docs/signaling.md`.
//!
//! The machines consume and produce WebSocket text frames (`String`s) and timestamps; the
//! transport (fogd's WebSocket loop at `/ws`, or the simulator's reliable channel) is the
//! driver's. A server driver's loop:
//!
//! ```no_run
//! use std::time::Instant;
//! use fog_signal::server::{ConnId, Output, Server, ServerConfig};
//! use fog_signal::KeyPair;
//!
//! enum Io { Open(ConnId), Text(ConnId, String), Gone(ConnId), Tick }
//! # fn next_io() -> Io { Io::Tick }
//! # fn os_random_seed() -> [u8; 32] { [0; 32] }
//! # fn send(_: ConnId, _: &str) {}
//! # fn close(_: ConnId, _: u16, _: &str) {}
//! let key = KeyPair::from_seed(&os_random_seed()); // or fog_signal::keyfile::load(path)
//! let mut server = Server::new(ServerConfig::new(key, "signal.example.org", os_random_seed()));
//! loop {
//!     let now = Instant::now(); // the driver owns the clock
//!     match next_io() {
//!         Io::Open(c) => server.handle_connect(now, c),
//!         Io::Text(c, frame) => server.handle_frame(now, c, &frame),
//!         Io::Gone(c) => server.handle_disconnect(now, c),
//!         Io::Tick => server.handle_timeout(now),
//!     }
//!     while let Some(out) = server.poll_output() {
//!         match out {
//!             Output::Send { conn, frame } => send(conn, &frame),
//!             Output::Close { conn, code, reason } => close(conn, code, &reason),
//!         }
//!     }
//!     let _wake_at: Option<Instant> = server.poll_timeout();
//! }
//! ```
//!
//! A client is driven the same way: [`client::Client::handle_connected`] when the WebSocket opens,
//! [`client::Client::handle_frame`] per frame, then drain [`client::Client::poll_frame`] (send),
//! [`client::Client::poll_event`] and read [`client::Client::poll_timeout`].
//!
//! Modules: [`identity`] (keys, [`PeerId`] and its checksummed text form), [`keyfile`] (the only
//! I/O: key files with mode 0600), [`msg`] (the frames and error codes), [`server`], [`client`].
//! Dependencies: `ed25519-dalek` (the field's Ed25519, strict verification), `serde`/`serde_json`
//! for the frames, `hmac`/`sha1`/`base64` for coturn-style relay credentials. The base32 text form
//! is ours: no crate offers Crockford base32 with a check that provably catches every
//! single-symbol typo.

#![forbid(unsafe_code)]

pub mod client;
pub mod identity;
#[cfg(unix)]
pub mod keyfile;
pub mod msg;
pub mod server;

pub use identity::{KeyPair, PeerId};
