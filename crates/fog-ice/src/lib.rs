//! FogConnect's connectivity layer, sans-IO.
//!
//! - [`candidate`]: candidate kinds and RFC 8445 priorities, the predicted candidates a NAT's
//!   port pattern gives, and which interface addresses make host candidates ([`HostFilter`]);
//! - [`strategy`]: this side's half of the route [`fog_core::pairing`] chose from both sides' NAT
//!   behaviour (who checks what, predictions, birthday roles);
//! - [`agent`]: the connectivity checks of one session, peer-reflexive learning, nomination and
//!   renomination, relay pairs beside direct ones, keepalives, path choice by tier and then by
//!   RTT with hysteresis, and consent freshness, carrying out the plan.
//!
//! Gathering itself is the owner's: the addresses come from the operating system (fog-mio's
//! `interfaces`), the server-reflexive one from discovery, the relayed one from TURN; the agent
//! takes our sockets ([`AgentConfig::hosts`], [`Agent::add_local`]) and the peer's candidates
//! ([`Agent::add_remote`]) at any time.

pub mod agent;
pub mod candidate;
pub mod strategy;

pub use agent::{Agent, AgentConfig, Credentials, Event};
pub use candidate::{Candidate, HostFilter, Kind};
pub use strategy::{Plan, StrategyConfig};
