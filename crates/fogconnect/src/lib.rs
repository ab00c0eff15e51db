//! FogConnect: peer-to-peer connections by peer ID, direct when the NATs allow it.
//!
//! [`Node`] is the whole of it on one UDP socket, as one sans-IO machine: NAT behaviour discovery
//! (fog-stun), signaling (fog-signal), and punching by the strategy the two NATs call for
//! (fog-ice). A driver (fog-mio, or fog-sim in virtual time) moves its datagrams and its
//! signaling frames.

pub mod node;

pub use fog_ice::candidate::{Candidate, HostFilter, Kind as CandidateKind};
pub use node::{Event, MAX_DATAGRAM, Node, NodeConfig, SendError, ServerChoice, Via};
