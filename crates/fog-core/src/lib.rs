//! FogConnect's shared vocabulary.
//!
//! Every FogConnect protocol is a sans-IO state machine: it never touches a socket, a thread, the
//! clock or the OS random source. It is driven by timestamps and datagrams through the [`SansIo`]
//! trait, so the same code runs on real sockets (`fog-mio`) and in virtual time (`fog-sim`).
//!
//! - [`Transmit`] and [`Receive`] describe a datagram leaving and arriving, [`SocketRequest`] a
//!   local address a machine needs bound before it sends from it;
//! - [`SansIo`] is the driving contract, with the drain order every driver follows;
//! - [`demux`] maps the first byte of a datagram on a shared UDP socket to its protocol;
//! - [`nat`] names NAT behaviour in RFC 4787's terms;
//! - [`pairing`] says, for two behaviours, whether and how a direct path can be found.
//!
//! A driver's loop, for any machine:
//!
//! ```no_run
//! use std::time::Instant;
//! use fog_core::{Receive, SansIo};
//!
//! fn drive<M: SansIo>(machine: &mut M, now: Instant, incoming: Option<Receive<'_>>) {
//!     let mut buf = vec![0u8; 65_535];
//!     match incoming {
//!         Some(packet) if machine.accepts(&packet) => machine.handle_packet(now, packet),
//!         Some(_) => { /* not for this machine: count it and drop it */ }
//!         None => machine.handle_timeout(now),
//!     }
//!     // 0. socket requests (binds a TURN server needs), 1. transmits, 2. events, 3. the next
//!     // deadline.
//!     while let Some(_request) = machine.poll_socket_request() { /* bind or unbind it */ }
//!     while let Some(t) = machine.poll_transmit(now, &mut buf) {
//!         let _ = (t.destination, &buf[..t.len]); // send it
//!     }
//!     while let Some(_event) = machine.poll_event() { /* hand it to the application */ }
//!     let _next_wakeup: Option<Instant> = machine.poll_timeout();
//! }
//! ```

pub mod demux;
mod io;
pub mod nat;
pub mod pairing;
mod sansio;

pub use demux::{FogFraming, Protocol, classify};
pub use io::{Receive, SocketRequest, Transmit, TransmitHints};
pub use sansio::SansIo;
