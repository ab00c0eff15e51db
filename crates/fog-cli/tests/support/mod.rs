//! What fog-cli's integration tests share beyond `fog_test_support`: the `fogconnect` and `fogd`
//! binaries (Cargo names a package's binaries only to its own tests) and fogd as a STUN server.

// Each test file uses part of this module and of its re-exports; what one of them leaves unused
// is not dead.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use fog_test_support::{
    A1, A2, ChildGuard, Server, ToolOutput, find_tool, free_port_pair, interop_tools, run_command,
    run_tool, say_skipped, scratch_file, skip_or_fail,
};

/// A `fogconnect nat` run gets this long; on loopback it takes well under a second, and a
/// silent server about five.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `fogconnect` binary Cargo built for these tests.
pub(crate) fn fogconnect_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fogconnect"))
}

/// The `fogd` binary, built for the same profile and target as `fogconnect`
/// ([`fog_test_support::fogd_exe`]).
pub(crate) fn fogd_exe() -> PathBuf {
    fog_test_support::fogd_exe(
        &fogconnect_exe(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

/// `fogconnect args`, to completion.
pub(crate) fn fogconnect(args: &[&str]) -> ToolOutput {
    run_command(
        "fogconnect",
        Command::new(fogconnect_exe()).args(args),
        CLIENT_TIMEOUT,
    )
}

/// `fogconnect nat --server SERVER --json -q extra`, exited 0, its JSON object parsed.
pub(crate) fn fogconnect_json(server: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let server = server.to_string();
    let mut args = vec!["nat", "--server", &server, "--json", "-q"];
    args.extend_from_slice(extra);
    let output = fogconnect(&args);
    assert_eq!(
        output.code(),
        Some(0),
        "fogconnect {args:?}\n{}",
        output.text()
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("fogconnect --json printed no JSON ({e})\n{}", output.text()))
}

/// fogd as one of the STUN [`Server`]s, from [`fogd_exe`], which only this package can name.
pub(crate) trait FogdServer: Sized {
    /// `fogd --stun 127.0.0.1:P1 --stun-alt 127.0.0.2:P2`.
    fn fogd() -> Self;
    /// `fogd --stun 127.0.0.1:P1`: one address.
    fn fogd_one_address() -> Self;
}

impl FogdServer for Server {
    fn fogd() -> Self {
        Self::start(
            "fogd",
            &fogd_exe(),
            |p1, p2| {
                vec![
                    "--stun".to_owned(),
                    SocketAddr::new(A1, p1).to_string(),
                    "--stun-alt".to_owned(),
                    SocketAddr::new(A2, p2).to_string(),
                ]
            },
            true,
        )
    }

    fn fogd_one_address() -> Self {
        Self::start(
            "fogd",
            &fogd_exe(),
            |p1, _| vec!["--stun".to_owned(), SocketAddr::new(A1, p1).to_string()],
            false,
        )
    }
}

pub(crate) mod lab;
