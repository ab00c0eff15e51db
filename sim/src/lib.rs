//! A deterministic discrete-event network simulator with RFC 4787 NAT models.
//!
//! FogConnect's protocols are sans-IO machines ([`fog_core::SansIo`]); this crate runs them on
//! simulated hosts in virtual time, behind NATs, firewalls and lossy links, so that NAT traversal
//! can be tested and measured for every combination that the field meets, repeatably.
//!
//! - Time is one epoch `Instant` plus an offset; events run in (time, sequence) order; one seeded
//!   ChaCha8 generator supplies all randomness. The same seed gives the same run, byte for byte in
//!   the [trace](Sim::enable_trace).
//! - [`Sim::add_host`], [`Sim::add_nat`] and [`Sim::add_udp_blocker`] build a tree under
//!   [`NodeId::INTERNET`]; NATs nest. Every node reaches its parent over a [`link::LinkConfig`].
//! - [`nat::NatConfig`] sets each RFC 4787 property on its own; [`presets::Preset`] names the
//!   set-ups met in the wild; [`behaviour::Behaviour`] is what an observer sees;
//!   [`oracle::oracle`] says what a correct P2P stack must achieve between two behaviours.
//! - [`probe`] has raw instruments and [`observe::observe`] measures a NAT from behind it;
//!   [`Sim::capture`] writes pcap files that Wireshark and tshark read.
//! - [`signal`] carries signaling frames between nodes and one hosted signaling server over
//!   reliable, ordered channels with a latency per node; [`Sim::mark`] and [`Sim::since_mark`]
//!   measure virtual time from a chosen moment (the first `connect` call) to an event.
//!
//! Driving a machine:
//!
//! ```
//! use std::time::Duration;
//! use fog_sim::{NodeId, Sim, link::LinkConfig, presets::Preset, probe::{RawSocket, Reflector}};
//!
//! let mut sim = Sim::new(7);
//! let site = Preset::PortRestrictedCone.attach(&mut sim, "alice", 1, LinkConfig::default());
//! let server_addr = "198.51.100.1:3478".parse().unwrap();
//! let server = sim.add_host("server", NodeId::INTERNET, &["198.51.100.1".parse().unwrap()], LinkConfig::default());
//! sim.set_machine(server, 3478, Reflector::new(vec![server_addr]));
//! sim.set_machine(site.host, 5000, RawSocket::new());
//!
//! sim.with_machine(site.host, |s: &mut RawSocket, _now| s.send(None, server_addr, &Reflector::request(None)));
//! sim.run_for(Duration::from_millis(100));
//!
//! let answer = &sim.machine::<RawSocket>(site.host).received()[0];
//! assert_eq!(Reflector::parse_answer(&answer.payload), Some("203.0.113.1:5000".parse().unwrap()));
//! ```

pub mod behaviour;
pub mod link;
pub mod nat;
mod net;
pub mod observe;
pub mod oracle;
pub mod pcap;
pub mod presets;
pub mod probe;
pub mod signal;

pub use net::{CaptureId, CaptureTarget, DEFAULT_TTL, Drop, NodeId, Sim, Stats};
