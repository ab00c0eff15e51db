//! Two whole nodes meeting through two fogd instances of one cluster: `fogconnect serve`
//! registers (alias `bob`) on one instance, `fogconnect connect bob` runs on the other, and the
//! lookup, the signed offer and answer, and the punch sync cross Redis; on loopback the punch
//! finds the direct path and a datagram goes there and back.
//!
//! Needs `redis-server`: skipped without it, failed with `FOG_REQUIRE_INTEROP=1` (as CI sets).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fog_test_support::{find_tool, skip_or_fail};
use support::{A1, ChildGuard, fogconnect, fogconnect_exe, fogd_exe};

const STEP: Duration = Duration::from_secs(30);

/// A redis-server of the test's own on a free port, persistence off.
fn redis(exe: &std::path::Path) -> (ChildGuard, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind((A1, 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut command = Command::new(exe);
        command.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        command.args(["--save", "", "--appendonly", "no"]);
        let addr = SocketAddr::new(A1, port);
        if let Some(child) =
            fog_test_support::spawn_listening("redis-server", &mut command, addr, STEP)
        {
            return (child, port);
        }
    }
    panic!("redis-server found no free port");
}

/// One fogd of the cluster: STUN and signaling on free ports, `--cluster`, the shared key.
fn instance(
    name: &str,
    id: &str,
    redis: u16,
    key: &std::path::Path,
) -> (ChildGuard, SocketAddr, String) {
    let extra = |_| {
        vec![
            "--cluster".to_owned(),
            format!("redis://127.0.0.1:{redis}"),
            "--cluster-instance".to_owned(),
            id.to_owned(),
            "--key".to_owned(),
            key.display().to_string(),
        ]
    };
    let (mut child, stun, signal) =
        fog_test_support::fogd_for_nodes(&fogd_exe(), name, extra, STEP);
    let deadline = Instant::now() + STEP;
    while !child.stderr_text().contains("cluster: lease taken") {
        assert!(
            Instant::now() < deadline && child.try_wait().is_none(),
            "{name} did not join the cluster\n{}",
            child.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    (child, stun, format!("ws://{signal}/ws"))
}

#[test]
fn two_nodes_on_two_instances_of_a_cluster_connect_on_loopback() {
    let test = "two_nodes_on_two_instances_of_a_cluster_connect_on_loopback";
    let Some(redis_exe) = find_tool("redis-server") else {
        skip_or_fail(test, "redis-server is not installed", "FOG_REQUIRE_INTEROP");
        return;
    };
    let (_redis, port) = redis(&redis_exe);
    let key = fog_test_support::scratch_file("cluster-node.key");
    let _ = std::fs::remove_file(&key);
    let (_a, stun_a, url_a) = instance("fogd-a", "a", port, &key);
    let (_b, stun_b, url_b) = instance("fogd-b", "b", port, &key);
    assert!(TcpStream::connect(SocketAddr::new(A1, port)).is_ok());

    let stun_b = stun_b.to_string();
    let mut serve = ChildGuard::spawn(
        "serve",
        Command::new(fogconnect_exe()).args([
            "serve",
            "--signal",
            &url_b,
            "--stun",
            &stun_b,
            "--interfaces",
            "none",
            "--alias",
            "bob",
            "--count",
            "1",
            "--timeout",
            "30",
        ]),
    )
    .expect("spawning fogconnect serve");
    let deadline = Instant::now() + STEP;
    while !serve.stdout_text().contains("ready:") {
        assert!(
            serve.try_wait().is_none() && Instant::now() < deadline,
            "serve not ready\n{}",
            serve.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }

    let stun_a = stun_a.to_string();
    let connect = fogconnect(&[
        "connect",
        "--signal",
        &url_a,
        "--stun",
        &stun_a,
        "--interfaces",
        "none",
        "bob",
        "--message",
        "across the cluster",
        "--timeout",
        "20",
    ]);
    assert_eq!(
        connect.code(),
        Some(0),
        "{}\n{}",
        connect.text(),
        serve.output_text()
    );
    let out = &connect.stdout;
    let line = out
        .lines()
        .find(|l| l.starts_with("connected to "))
        .unwrap_or_else(|| panic!("no connection line in\n{out}"));
    assert!(line.contains(" via direct (127.0.0.1:"), "{line}");
    assert!(out.contains("echo: across the cluster ("), "{out}");
    let status = serve.wait_timeout(STEP);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        serve.output_text()
    );
}
