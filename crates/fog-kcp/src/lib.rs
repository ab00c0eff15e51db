//! KCP for FogConnect, sans-IO: no sockets, no clock, no OS randomness. Wire-compatible with the
//! reference C `ikcp.c` (skywind3000/kcp), written afresh from its behaviour.
//!
//! Driving a [`Kcp`] is the loop every FogConnect machine follows: hand it a datagram (or tell
//! it the time), drain its transmits, then its events, then read its timeout.
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::Instant;
//!
//! use fog_kcp::{Config, Event, Kcp};
//!
//! let socket = UdpSocket::bind("127.0.0.1:0")?;
//! socket.connect("127.0.0.1:4000")?;
//! let mut kcp = Kcp::new(0x1234, Config::fast(), Instant::now());
//! kcp.send(b"hello, ikcp")?;
//! let mut out = vec![0u8; 1500];
//! let mut inbound = vec![0u8; 65_535];
//! let mut message = vec![0u8; kcp.max_message_len()];
//! loop {
//!     // 1. the time: fire what is due
//!     kcp.handle_timeout(Instant::now());
//!     // 2. transmits: one datagram per call, several segments each, up to the MTU
//!     while let Some(len) = kcp.poll_transmit(Instant::now(), &mut out) {
//!         socket.send(&out[..len])?;
//!     }
//!     // 3. events
//!     while let Some(event) = kcp.poll_event() {
//!         if event == Event::Readable {
//!             while let Some(len) = kcp.recv(&mut message)? {
//!                 println!("got {:?}", &message[..len]);
//!             }
//!         }
//!     }
//!     // 4. sleep until the timeout or a datagram
//!     let wait = kcp.poll_timeout().map(|at| at.saturating_duration_since(Instant::now()));
//!     socket.set_read_timeout(wait.filter(|d| !d.is_zero()))?;
//!     if let Ok(len) = socket.recv(&mut inbound) {
//!         // Foreign or malformed datagrams are refused (and counted), never a panic.
//!         let _ = kcp.handle_packet(Instant::now(), &inbound[..len]);
//!     }
//! }
//! # #[allow(unreachable_code)]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The protocol, as ikcp.c runs it
//!
//! - **Wire** ([`wire`]): 24-byte little-endian header (conv, cmd, frg, wnd, ts, sn, una, len),
//!   several segments per datagram up to the MTU. Commands PUSH 81, ACK 82, WASK 83, WINS 84.
//! - **Time**: ikcp's 32-bit millisecond `ts` is `now` minus the epoch given to [`Kcp::new`],
//!   wrapping; every comparison of `ts` and `sn` is on the 32-bit circle (`_itimediff`).
//! - **Flush** (`ikcp_flush`): every `interval` while there is work, acknowledgements, window
//!   probes, then data: new segments enter the send buffer as far as
//!   min(send window, peer's window, congestion window unless `nc`) allows; segments are sent
//!   first, on RTO expiry, or after `resend` later acknowledgements (fast retransmit, at most
//!   `fast_limit` times). [`Kcp::poll_transmit`] writes what the flush released, one datagram per
//!   call. An idle machine (nothing queued, in flight or to acknowledge) asks for no timeout;
//!   the first flush after it becomes busy is due at once (ikcp.c would wait for its next
//!   `ikcp_update` tick), the following ones every interval.
//! - **RTO** (`ikcp_update_ack`): srtt/rttval smoothing, rto = srtt + max(interval, 4·rttval)
//!   bounded by 30 or 100 ms (nodelay or not) and 60 s; backs off per nodelay mode, each
//!   segment's backed-off RTO bounded by `Config::max_segment_rto` (unbounded in ikcp.c).
//! - **Windows**: the peer's free window rides on every segment; at zero we probe (WASK) with
//!   ikcp's back-off from 5 s up to 120 s, and a reader that frees a full queue tells (WINS).
//!   The congestion window (slow start, ssthresh, halving on loss) unless `nc`.
//! - **Modes** ([`Mode`]): a message is at most [`MAX_FRAGMENTS`] (127) segments, `frg` counting
//!   down to 0, delivered whole — larger ones are refused with
//!   [`SendError::MessageTooLarge`]; stream mode merges and splits bytes freely.
//!
//! # Where we are stricter than ikcp.c
//!
//! Every datagram is checked whole before any of it is applied; a segment of another
//! conversation, a length past the datagram, an unknown command drop the datagram (counted in
//! [`Stats::datagrams_dropped`]). An `una` beyond what we sent is ignored; a fragment countdown
//! larger than the receive window (which would stall the receiver for good) is dropped. Every
//! buffer is bounded: the send queue by [`Config::send_queue_limit`] ([`SendError::Blocked`]),
//! the receive buffer and queue by the receive window, pending acknowledgements by
//! [`Config::ack_list_limit`].
//!
//! # FogConnect connections
//!
//! KCP has no handshake or close. A FogConnect connection ([`Connection`]) adds both, in a form
//! a plain ikcp peer never sees: every datagram of a connection starts with FogConnect's
//! framing byte 4 ([`fog_core::FogFraming::Kcp`]), followed by KCP segments, or by one control
//! segment — a KCP header with a command ikcp.c does not define, alone in its datagram:
//!
//! | cmd | sn | data | meaning |
//! |---|---|---|---|
//! | 88 (hello) | 0 | one byte: version 1 | the initiator opens conversation `conv` |
//! | 88 (hello) | 1 | none | the responder's answer |
//! | 89 (close) | 0 | none | the sender has nothing more and all it sent was acknowledged |
//! | 89 (close) | 1 | none | the answer to a close |
//!
//! The conversation number comes from signaling. The initiator sends hello every 200 ms,
//! doubling, 6 times at most ([`CloseReason::HandshakeTimeout`]); data queued meanwhile leaves
//! once [`ConnEvent::Connected`]. The responder is connected at the first hello and answers every
//! copy; data from the responder also completes the initiator's handshake (the answer was
//! lost). [`Connection::close`] stops new sends, waits until everything sent is acknowledged,
//! then sends close (same retransmission); the peer answers every copy and reports
//! [`CloseReason::Peer`] (what it received stays readable). A close ends both directions: what
//! the closed-upon side had not yet had acknowledged is dropped, so the application protocol
//! decides who closes once both are done (as with a TCP reset after a final exchange). Other fields of control segments:
//! `frg`, `wnd`, `una` are 0, `ts` is the sender's clock.
//!
//! Plain KCP — raw segments of one conversation on a socket of its own, as other
//! implementations speak it — is [`Kcp`] itself.
//!
//! # Why our own
//!
//! The `kcp` crate (the Rust port) panics on hostile input and writes into uninitialised memory
//! (STYLE.md); no other crate is sans-IO. It remains a test peer.

#![forbid(unsafe_code)]

pub mod config;
mod connection;
mod kcp;
mod timer;
pub mod wire;

pub use config::{Config, ConfigError, MAX_FRAGMENTS, Mode, NoDelay};
pub use connection::{
    CloseReason, Connection, Event as ConnEvent, Role, VERSION as CONNECTION_VERSION,
};
pub use kcp::{Event, Kcp, PacketError, RecvError, SendError, Stats};
