//! QUIC for FogConnect connections, sans-IO, on [quinn-proto]'s state machines: peers are
//! authenticated by their Ed25519 identities (no certificate authority, no host names), the
//! service number is the ALPN, and the whole endpoint is one machine driven by our contract.
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::Instant;
//!
//! use fog_quic::{Config, Endpoint, Event, StreamKind};
//! use fog_signal::{KeyPair, PeerId};
//!
//! let socket = UdpSocket::bind("127.0.0.1:0")?;
//! let identity = KeyPair::from_seed(&[1; 32]);
//! let server: PeerId = "…the peer id from the offer…".parse()?;
//! let mut quic = Endpoint::new(Config::default(), &identity, [2; 32], Instant::now())?;
//! let conn = quic.connect(Instant::now(), "127.0.0.1:4433".parse()?, server, 7)?;
//! let mut out = vec![0u8; quic.config().max_datagram_len()];
//! let mut inbound = vec![0u8; 65_535];
//! loop {
//!     // 1. transmits: one UDP payload per call, into our buffer
//!     while let Some(t) = quic.poll_transmit(Instant::now(), &mut out) {
//!         socket.send_to(&out[..t.len], t.destination)?;
//!     }
//!     // 2. events
//!     while let Some(event) = quic.poll_event() {
//!         if let Event::Connected { conn, peer, service } = event {
//!             assert_eq!(peer, server); // checked in the handshake already
//!             let stream = quic.open(conn, StreamKind::Bidirectional)?;
//!             quic.write(conn, stream, format!("hello, service {service}").as_bytes())?;
//!             quic.finish(conn, stream)?;
//!         }
//!     }
//!     // 3. sleep until the timeout or a datagram
//!     let wait = quic.poll_timeout().map(|at| at.saturating_duration_since(Instant::now()));
//!     socket.set_read_timeout(wait.filter(|d| !d.is_zero()))?;
//!     match socket.recv_from(&mut inbound) {
//!         // Foreign or hostile datagrams are dropped inside, never a panic.
//!         Ok((len, from)) => quic.handle_datagram(Instant::now(), from, &inbound[..len]),
//!         Err(_) => quic.handle_timeout(Instant::now()),
//!     }
//! #   let _ = conn;
//! }
//! # #[allow(unreachable_code)]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it sits on quinn-proto
//!
//! - **One machine.** [`Endpoint`] owns quinn-proto's `Endpoint` and every `Connection`, and
//!   passes the events between them inside its own `handle_*` calls, so the driver sees the
//!   [`fog_core::SansIo`] contract: `handle_packet`/`handle_timeout`, then drain
//!   `poll_transmit`, then `poll_event`, then read `poll_timeout`.
//! - **One datagram per transmit.** quinn-proto is asked for one segment at a time and
//!   segmentation offload is off, so [`Endpoint::poll_transmit`] never returns a GSO batch;
//!   it copies the datagram into the caller's buffer (at least [`Config::max_datagram_len`]).
//! - **Demux.** The QUIC bit is never greased (`EndpointConfig::grease_quic_bit(false)`), so
//!   every packet's first byte is in 64–127 (short header) or 192–255 (long header), where
//!   fog-core's [`classify`](fog_core::classify) routes QUIC.
//! - **Identity** ([`identity`]): each side presents a self-signed certificate of its Ed25519
//!   identity key; the dialler accepts only the `PeerId` it expected, the acceptor any peer or
//!   only those its [`AcceptPolicy`] names, and reports the verified `PeerId` in
//!   [`Event::Connected`] for the owner to compare with the offer it signed. rustls verifies the
//!   TLS 1.3 `CertificateVerify` with ring's Ed25519 against that key. TLS 1.3 only, no
//!   resumption, no SNI.
//! - **Service.** The ALPN is `fog/<service>`; no common service fails the handshake with
//!   [`CloseReason::ServiceMismatch`].
//! - **Migration.** [`Endpoint::set_remote`] moves a connection to a new address without a
//!   handshake (the Node moved it from a relay to a direct path). quinn-proto's client never
//!   follows a server to a new address, so the endpoint keeps quinn-proto's view of the address
//!   fixed and translates: datagrams go to the new address, and datagrams from it (routed by our
//!   connection id) are handed over as from the old. An accepting side also follows its peer to
//!   a new source address on its own once quinn-proto validated the path (RFC 9000 §9),
//!   reported as [`Event::RemoteChanged`].
//! - **Randomness and time.** Connection ids, quinn-proto's RNG, the stateless-reset key and the
//!   token key all come from the seed given to [`Endpoint::new`]. The one place the OS random
//!   source is touched is rustls' ring crypto provider, for the TLS handshake's randoms and key
//!   shares. The crate never reads a clock: rustls gets a fixed time (validity periods are not
//!   checked, the key is the identity), and no Retry or NEW_TOKEN tokens are issued, which are the
//!   only things quinn-proto would read the wall clock for.
//!
//! [quinn-proto]: https://docs.rs/quinn-proto/0.11

mod config;
mod endpoint;
mod error;
pub mod identity;

pub use bytes::Bytes;
pub use config::{Config, ConfigError, alpn, service_of_alpn};
pub use endpoint::{ConnHandle, Endpoint, Event, Read, Stats, StreamId, StreamKind};
pub use error::{CloseReason, ConnError, ConnectError, DatagramError, StreamError};
pub use identity::{AcceptPolicy, Certificate, Fingerprint};
