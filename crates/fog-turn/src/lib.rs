//! TURN for FogConnect (RFC 8656; clients over UDP or TCP, relaying over UDP), sans-IO: no sockets, no clock, no OS randomness.
//!
//! Driving the [`Server`](server::Server) is the loop every FogConnect machine follows
//! ([`fog_core::SansIo`]): hand it a datagram, drain its transmits, then its events, then read its
//! timeout. Here a client's first Allocate, without credentials, gets the 401 that carries the
//! realm and a nonce (RFC 8656 §7.2, RFC 8489 §9.2.4):
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use fog_core::{Receive, SansIo};
//! use fog_turn::auth::AuthSecret;
//! use fog_turn::server::{Server, ServerConfig};
//! use fog_turn::wire::{method, Class, TransactionId, TurnMessage, TRANSPORT_UDP};
//!
//! let listen: SocketAddr = "192.0.2.1:3478".parse()?;
//! let now = Instant::now(); // the driver's clock; the machine never reads one
//! // The Unix time that `now` is: credentials carry Unix expiry times.
//! let config = ServerConfig::new(listen, "example.org", AuthSecret::new(*b"secret"), [1; 32], (now, 1_700_000_000));
//! let mut server = Server::new(config);
//!
//! let mut allocate = TurnMessage::new(Class::Request, method::ALLOCATE, TransactionId::new([7; 12]));
//! allocate.requested_transport = Some(TRANSPORT_UDP);
//! let datagram = allocate.to_bytes(None)?;
//! let packet = Receive { source: "198.51.100.7:50000".parse()?, local: listen, payload: &datagram };
//! if server.accepts(&packet) {
//!     server.handle_packet(now, packet);
//! }
//! // 1. transmits, 2. events, 3. the next deadline.
//! let mut buf = vec![0u8; 65_535];
//! while let Some(transmit) = server.poll_transmit(now, &mut buf) {
//!     // A driver sends buf[..transmit.len] from transmit.source to transmit.destination.
//!     let answer = TurnMessage::decode(&buf[..transmit.len])?;
//!     assert_eq!(answer.error_code(), Some(401));
//!     assert_eq!(answer.realm.as_deref(), Some("example.org"));
//! }
//! while let Some(event) = server.poll_event() {
//!     eprintln!("{event:?}");
//! }
//! assert_eq!(server.poll_timeout(), None); // no allocation, no timer
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Modules
//!
//! - [`wire`]: TURN methods and attributes on fog-stun's STUN layer, and ChannelData framing.
//! - [`auth`]: the `use-auth-secret` credentials (coturn's scheme, which fog-signal hands out).
//! - [`client`]: one allocation on one server: Allocate with long-term credentials (401 and 438
//!   handled), Refresh, permissions and channels kept alive, data by ChannelData or Send/Data
//!   indications, deallocation.
//! - [`server`]: allocations keyed by 5-tuple, permissions, channels, relaying from relayed
//!   addresses, nonces, quotas.
//!
//! TURN over TCP (RFC 8656 §3.1) is the server's: the driver cuts each connection's bytes into
//! messages with [`wire::stream::Framer`] and hands them to
//! [`Server::handle_stream_message`](server::Server::handle_stream_message); TLS is the driver's
//! business. Not here yet: the client over TCP, TCP allocations (RFC 6062), dual allocations and
//! ADDITIONAL-ADDRESS-FAMILY (§7.2), EVEN-PORT with the R bit (508: nothing is reserved) and
//! RESERVATION-TOKEN (420), DONT-FRAGMENT (420), and the ICMP attribute (§11.5).

pub mod auth;
pub mod client;
pub mod server;
pub mod wire;
