//! FogConnect's connectivity layer, sans-IO.
//!
//! - [`candidate`]: candidate kinds and RFC 8445 priorities, and the predicted candidates a NAT's
//!   port pattern gives;
//! - [`strategy`]: this side's half of the route [`fog_core::pairing`] chose from both sides' NAT
//!   behaviour (who checks what, predictions, birthday roles);
//! - [`agent`]: the connectivity checks of one session, peer-reflexive learning, nomination and
//!   consent freshness, carrying out the plan.
//!
//! Still to come (issue 5): relay candidates and the in-place move between relay and direct,
//! RTT-ranked path choice with hysteresis, re-gathering when a binding changes.

pub mod agent;
pub mod candidate;
pub mod strategy;

pub use agent::{Agent, AgentConfig, Credentials, Event};
pub use candidate::{Candidate, Kind};
pub use strategy::{Plan, StrategyConfig};
