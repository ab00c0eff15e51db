//! A small mio event loop that runs any FogConnect [`SansIo`](fog_core::SansIo) machine on real
//! UDP sockets, IPv4 and IPv6.
//!
//! ```no_run
//! use std::collections::VecDeque;
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use fog_core::{Receive, SansIo, Transmit};
//! use fog_mio::{Driver, Status};
//!
//! /// Echoes every datagram back to its sender, from the socket it arrived on.
//! #[derive(Default)]
//! struct Echo {
//!     queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
//! }
//!
//! impl SansIo for Echo {
//!     type Event = SocketAddr;
//!
//!     fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
//!         self.queue.push_back((packet.local, packet.source, packet.payload.to_vec()));
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
//!         let (local, peer, payload) = self.queue.pop_front()?;
//!         buf[..payload.len()].copy_from_slice(&payload);
//!         Some(Transmit::new(peer, payload.len()).from_source(local))
//!     }
//!     fn poll_event(&mut self) -> Option<SocketAddr> {
//!         None
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> {
//!         None
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let local: [SocketAddr; 2] = ["0.0.0.0:3478".parse()?, "[::]:3478".parse()?];
//! let mut driver = Driver::new(Echo::default(), &local)?;
//! println!("echoing on {:?}", driver.local_addrs());
//!
//! // Any thread may stop the loop: `handle.shutdown()` makes `turn` return `Status::Shutdown`.
//! let handle = driver.handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     handle.shutdown().expect("waking the driver");
//! });
//!
//! // Each turn waits for datagrams or the machine's deadline, feeds them in and drains the
//! // machine: transmits, then events (to this callback), then the next deadline.
//! while driver.turn(None, |_machine, peer| println!("echoed to {peer}"))? == Status::Running {
//!     // Between turns the application issues commands of its own machine through
//!     // `driver.machine_mut()`, then calls `driver.drain(..)` so their output leaves at once.
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Driver::run`] is the same loop without the gap for commands; [`Driver::run_until`] steps it
//! up to a deadline, which is what tests use.
//!
//! # What the driver does
//!
//! - **Sockets.** One nonblocking UDP socket per address it is built with, made with socket2;
//!   IPv6 sockets are IPv6-only, so IPv4 peers always appear with plain IPv4 addresses. A
//!   [`Transmit`](fog_core::Transmit) with `source: None` leaves from the first socket of the
//!   destination's family. A transmit naming a source that is not bound yet gets a socket bound
//!   on demand (port-pattern discovery and birthday punching open many ports), up to
//!   [`Config::max_on_demand_sockets`]; beyond it, or if the bind fails, the transmit is
//!   counted in [`Stats`] and dropped with a `tracing` warning.
//! - **Binding before sending.** An on-demand bind comes with the first datagram *sent*; until
//!   then datagrams *to* that address find no socket (Linux answers them with ICMP port
//!   unreachable). A machine that hands out an address before it sends from it (fog-turn's
//!   server and its relayed addresses) asks for the bind with
//!   [`SansIo::poll_socket_request`](fog_core::SansIo::poll_socket_request), and for the unbind
//!   when the address is released; the driver carries those out first in every drain, before the
//!   transmits that announce the address. The driver's owner can do the same with
//!   [`Driver::bind`] and [`Driver::unbind`]. A failed bind is counted
//!   ([`Stats::bind_errors`]), logged and reported to the machine at once with
//!   [`SansIo::handle_bind_error`](fog_core::SansIo::handle_bind_error), before any transmit. Only sockets bound after construction are ever closed
//!   before the driver is dropped; the count of those open is what the cap limits.
//! - **Buffers.** Eight 65,535-byte receive buffers (one `recvmmsg`) and a transmit buffer of
//!   about 128 KiB, reused for every datagram: no allocation per datagram.
//!   The kernel's socket buffers keep the OS default unless [`Config::socket_buffers`] asks for
//!   more (a server under load overflows Linux's 208 KiB default between two reads);
//!   [`Driver::buffer_sizes`] reports what the OS granted.
//! - **Batches** (through quinn-udp, which wraps the system calls safely: the workspace forbids
//!   `unsafe`). Reads take up to 8 datagrams per `recvmmsg`, and where the kernel joins a flow's
//!   datagrams (UDP GRO) they are cut apart again: the machine always sees one datagram per
//!   `handle_packet`. Transmits to one destination from one socket with one TTL, all of one
//!   size but the last, are gathered (up to 64 datagrams or 64 KiB) and leave in one
//!   `sendmsg` that the kernel cuts into datagrams (UDP segmentation offload, Linux 4.18+); a
//!   run leaves when the next transmit cannot join it, before any socket request, and at the
//!   end of the drain or of a socket's read batch, so transmits still leave in the order polled.
//!   A kernel that refuses a segmented send (EIO, EINVAL) gets its datagrams again one by one,
//!   and that socket sends one per call from then on ([`Stats::segmentation_refused`]).
//!   Sockets carry the don't-fragment bit (quinn-udp's `IP_PMTUDISC_PROBE`).
//! - **Input.** Each datagram becomes a [`Receive`](fog_core::Receive) with the socket's bound
//!   address as `local`; if [`accepts`](fog_core::SansIo::accepts) says yes it goes to
//!   `handle_packet` with a fresh `now`, else it is counted in [`Stats::rejected`]. `EINTR` is
//!   retried, `WouldBlock` ends the socket's read, and errors that report an ICMP message
//!   (connection refused or reset, unreachable) are counted and skipped.
//! - **Drain order.** After every input, as [`SansIo`](fog_core::SansIo) requires: transmits
//!   until `None`, then events until `None` (to the `on_event` callback, which gets `&mut M` and
//!   may issue commands; their output is drained in turn), then `poll_timeout` arms the wait.
//!   `handle_timeout` runs at most once per turn, when its deadline has come.
//! - **TTL hints.** [`TransmitHints::ttl`](fog_core::TransmitHints::ttl) sets `IP_TTL` or
//!   `IPV6_UNICAST_HOPS` on the socket for that datagram. The cost is one `setsockopt` when the
//!   TTL differs from the previous datagram's on that socket: the default is restored before the
//!   next datagram without a hint rather than right after, so a burst of low-TTL probes costs two
//!   calls, not two per probe. A hint the OS refuses drops the datagram ([`Stats::ttl_errors`]).
//! - **Clock.** `Instant::now()` is read here and nowhere else in the workspace's libraries:
//!   per datagram, per drain and per timer check. It never goes backwards.
//! - **Shutdown.** [`Handle`] wraps a [`mio::Waker`]; `shutdown` from any thread makes the
//!   current wait return and ends [`Driver::run`].
//!
//! Send errors, a full send buffer and an unroutable destination drop the datagram and count it:
//! UDP promises no delivery, and the machines retransmit what matters.

// This crate is the driver: reading the wall clock is its job. The workspace clippy.toml bans
// `Instant::now` so that protocol crates stay sans-IO; the ban does not apply here.
#![allow(clippy::disallowed_methods)]

mod driver;
mod handle;
pub mod interfaces;
mod socket;
mod stats;

pub use driver::{Config, Driver, Status};
pub use handle::Handle;
pub use stats::Stats;
