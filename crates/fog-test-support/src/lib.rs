//! What the integration tests of fogd and fog-cli share: child processes that die with their
//! guard and keep their output in scratch files ([`ChildGuard`], [`run_command`]), free ports on
//! two loopback addresses ([`free_port_pair`]), a STUN probe to know a server is up
//! ([`answers_stun`]), the independent STUN servers ([`Server`]) and the external tools a test
//! needs or skips without ([`find_tool`], [`interop_tools`], [`skip_or_fail`]), and a router
//! namespace running miniupnpd ([`upnp_lab`]).
//!
//! Which binary a test runs stays in each package's `tests/support`: Cargo names a package's
//! binaries (`CARGO_BIN_EXE_*`) only to that package's own tests.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use fog_test_support::{Server, interop_tools, run_tool};
//!
//! let Some([stun, stund]) = interop_tools("example", ["stun", "stund"]) else {
//!     return; // said SKIPPED, as FOG_REQUIRE_INTEROP is not 1
//! };
//! let server = Server::stund(&stund); // answering on 127.0.0.1 and 127.0.0.2
//! let output = run_tool(&stun, &[server.primary.to_string()], Duration::from_secs(30));
//! assert!(output.stdout.contains("Primary: Open"), "{}", output.text());
//! // `server` kills stund when it goes out of scope, also when an assertion panics.
//! ```

// Test code: deadlines and polling read the wall clock, which only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod process;
mod rng;
mod stun;
mod tools;
pub mod upnp_lab;

use std::net::{IpAddr, Ipv4Addr};

pub use process::{
    ChildGuard, ToolOutput, cargo_built, fogd_exe, fogd_for_nodes, run_command, run_tool,
    scratch_file, self_signed_cert, spawn_listening, target_dir_of,
};
pub use rng::SplitMix;
pub use stun::{START_TIMEOUT, Server, all_answer, answers_stun, coturn_args, free_port_pair};
pub use tools::{find_tool, interop_tools, peers_python, say_skipped, skip_or_fail};

/// The first loopback address, where every server listens.
pub const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The second loopback address (on Linux all of 127/8 is local), for a STUN server's
/// alternate address.
pub const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
