//! STUN for FogConnect, sans-IO: no sockets, no clock, no OS randomness.
//!
//! Driving the STUN [`Server`](server::Server) is the loop every FogConnect machine follows
//! ([`fog_core::SansIo`]): hand it a datagram, drain its transmits, then its events, then read
//! its timeout. Here a client's Binding request arrives on the primary address and asks for the
//! answer from the alternate IP and port (RFC 5780 §6.1):
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use fog_core::{Receive, SansIo};
//! use fog_stun::server::{Server, ServerConfig};
//! use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};
//!
//! let primary: SocketAddr = "192.0.2.1:3478".parse()?;
//! let config = ServerConfig::new(primary).with_alternate("192.0.2.2".parse()?, 3479);
//! // The driver binds every one of these (not a wildcard) and reports which one a datagram
//! // arrived on.
//! assert_eq!(config.local_addrs().len(), 4);
//! let mut server = Server::new(config);
//!
//! let client: SocketAddr = "198.51.100.7:50000".parse()?;
//! let request = BindingRequest {
//!     change_ip: true,
//!     change_port: true,
//!     ..BindingRequest::new(TransactionId::new([7; 12]))
//! };
//! let mut datagram = [0u8; 1500];
//! let len = request.encode(&mut datagram)?;
//!
//! let now = Instant::now(); // the driver's clock; the machine never reads one
//! let packet = Receive { source: client, local: primary, payload: &datagram[..len] };
//! if server.accepts(&packet) {
//!     server.handle_packet(now, packet);
//! }
//! // 1. transmits, 2. events, 3. the next deadline.
//! let mut buf = vec![0u8; 65_535];
//! while let Some(transmit) = server.poll_transmit(now, &mut buf) {
//!     // A driver sends buf[..transmit.len] from transmit.source to transmit.destination.
//!     assert_eq!(transmit.source, Some("192.0.2.2:3479".parse()?));
//!     let response = BindingResponse::decode(&buf[..transmit.len])?.expect("a Binding response");
//!     assert_eq!(response.mapped_address(), Some(client));
//!     assert_eq!(response.response_origin, transmit.source);
//! }
//! while let Some(event) = server.poll_event() {
//!     eprintln!("{event:?}");
//! }
//! assert_eq!(server.poll_timeout(), None); // the server has no timers
//! assert_eq!(server.stats().answered, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Modules
//!
//! - [`wire`]: STUN messages (RFC 5389) with the RFC 5780 behaviour-discovery attributes and
//!   the RFC 3489 attributes classic servers send, MESSAGE-INTEGRITY and FINGERPRINT.
//! - [`server`]: the RFC 5780 Binding server on up to two IPs × two ports, rate-limited and
//!   bounded in how much larger an answer can be than its request.
//! - [`transaction`]: client transactions with RFC 5389 §7.2.1 retransmission.
//! - [`discovery`]: the RFC 5780 §4 behaviour-discovery client, plus the port allocation pattern.
//!
//! # Dependencies
//!
//! Attribute values go through `stun_codec`, which the field already uses (rusturn, sile's
//! STUN/TURN stack). What it lacks or gets wrong is written in `wire` and listed there: PADDING,
//! the RFC 3489 addresses, CHANGE-REQUEST and RESPONSE-PORT (both buggy in 0.4), the message
//! type of methods above 15, and MESSAGE-INTEGRITY / FINGERPRINT over the received bytes
//! (`hmac`, `sha1`, `md5`, `crc`, the crates `stun_codec` itself uses).

pub mod discovery;
pub mod rank;
pub mod server;
pub mod transaction;
pub mod wire;
