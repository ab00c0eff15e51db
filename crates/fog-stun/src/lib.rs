//! STUN for FogConnect, sans-IO.
//!
//! - [`wire`]: STUN messages (RFC 5389) with the RFC 5780 behaviour-discovery attributes and the
//!   RFC 3489 attributes classic servers send, on `stun_codec`.

pub mod wire;
