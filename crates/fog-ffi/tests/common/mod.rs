//! What the fog-ffi integration tests share: a fogd on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fog_test_support::ChildGuard;

/// How long any one step may take.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

#[allow(dead_code)] // not every test uses it
pub(crate) fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// fogd with STUN on two loopback addresses and signaling, on free ports: the child, the STUN
/// server and the signaling address.
pub(crate) fn fogd() -> (ChildGuard, SocketAddr, SocketAddr) {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the test's own path"),
        manifest_dir(),
    );
    fog_test_support::fogd_for_nodes(&exe, "fogd-ffi", |_| Vec::new(), WAIT)
}
