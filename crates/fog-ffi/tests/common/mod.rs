//! What the fog-ffi integration tests share: a fogd on loopback.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fog_test_support::{A1, A2, ChildGuard, free_port_pair, spawn_listening};

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
    for attempt in 0..5 {
        let (p1, p2) = free_port_pair();
        let signal = TcpListener::bind((A1, 0))
            .and_then(|l| l.local_addr())
            .expect("a free TCP port");
        let stun = SocketAddr::new(A1, p1);
        let mut command = Command::new(&exe);
        command.args([
            "--stun",
            &stun.to_string(),
            "--stun-alt",
            &SocketAddr::new(A2, p2).to_string(),
            "--signal",
            &signal.to_string(),
        ]);
        if let Some(child) =
            spawn_listening(&format!("fogd-ffi-{attempt}"), &mut command, signal, WAIT)
        {
            return (child, stun, signal);
        }
    }
    panic!("fogd could not start on free ports");
}
