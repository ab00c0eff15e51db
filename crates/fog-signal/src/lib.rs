//! FogConnect signaling, sans-IO: peer identities, the JSON frame protocol, and (soon) the client
//! and server machines. See `docs/signaling.md`.

#![forbid(unsafe_code)]

pub mod identity;
#[cfg(unix)]
pub mod keyfile;
pub mod msg;

pub use identity::{KeyPair, PeerId};
