//! Two whole nodes on real sockets: `fogconnect serve` and `fogconnect connect` run
//! discovery against fogd's STUN service, meet through fogd's signaling, punch (on loopback
//! there is no NAT, so the direct path is the plain one), and a datagram goes there and back.
//!
//! fogd is built on first use (see `support::fogd_exe`).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::{A1, A2, ChildGuard, fogconnect, fogconnect_exe, fogd_exe, free_port_pair};

const STEP: Duration = Duration::from_secs(30);

/// fogd with STUN on two loopback addresses and signaling, on free ports.
fn fogd() -> (ChildGuard, SocketAddr, String) {
    let (child, stun, url, _) = fogd_with(false);
    (child, stun, url)
}

/// The TURN secret of [`fogd_with`]'s relay.
const TURN_SECRET: &str = "loopback relay secret";

/// fogd with STUN and signaling, and with `turn` also a TURN relay (relayed ports from a range
/// below Linux's ephemeral one, as fogd's own TURN tests do) whose credentials signaling hands
/// out. The last value is the TURN address.
fn fogd_with(turn: bool) -> (ChildGuard, SocketAddr, String, Option<SocketAddr>) {
    for attempt in 0..5 {
        let (p1, p2) = free_port_pair();
        let signal = TcpListener::bind((A1, 0))
            .and_then(|l| l.local_addr())
            .unwrap();
        let stun = SocketAddr::new(A1, p1);
        let turn_addr = turn.then(|| {
            let port = std::net::UdpSocket::bind((A1, 0))
                .and_then(|s| s.local_addr())
                .unwrap()
                .port();
            SocketAddr::new(A1, port)
        });
        let mut command = Command::new(fogd_exe());
        command.args([
            "--stun",
            &stun.to_string(),
            "--stun-alt",
            &SocketAddr::new(A2, p2).to_string(),
            "--signal",
            &signal.to_string(),
        ]);
        if let Some(t) = turn_addr {
            let low = 20_000 + (u16::try_from(std::process::id() % 100).unwrap() + attempt) * 100;
            command.args(["--turn", &t.to_string(), "--turn-secret", TURN_SECRET]);
            command.args(["--turn-ports", &format!("{low}-{}", low + 99)]);
            // The relay's peers here are on loopback, which fogd refuses unless allowed.
            command.args(["--turn-allow-peer", "127.0.0.0/8"]);
        }
        let name = format!("fogd-node-{attempt}");
        if let Some(child) = fog_test_support::spawn_listening(&name, &mut command, signal, STEP) {
            return (child, stun, format!("ws://{signal}/ws"), turn_addr);
        }
    }
    panic!("fogd could not start on free ports");
}

/// `fogconnect serve` with `args`, once it has printed its `ready:` line (discovery done,
/// authenticated).
fn serve(name: &str, args: &[&str]) -> ChildGuard {
    let mut serve = ChildGuard::spawn(name, Command::new(fogconnect_exe()).arg("serve").args(args))
        .expect("spawning fogconnect serve");
    let deadline = Instant::now() + STEP;
    while !serve.stdout_text().contains("ready:") {
        assert!(
            serve.try_wait().is_none(),
            "serve exited\n{}",
            serve.output_text()
        );
        assert!(
            Instant::now() < deadline,
            "serve not ready\n{}",
            serve.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    serve
}

#[test]
fn two_nodes_connect_on_loopback_and_a_datagram_goes_there_and_back() {
    let (_fogd, stun, url) = fogd();
    let stun = stun.to_string();
    let mut serve = serve(
        "serve",
        &[
            "--signal",
            &url,
            "--stun",
            &stun,
            "--interfaces",
            "none",
            "--alias",
            "bob",
            "--count",
            "1",
            "--timeout",
            "30",
        ],
    );
    assert!(
        serve.stdout_text().contains("ready: NAT open (no NAT)"),
        "{}",
        serve.output_text()
    );

    let connect = fogconnect(&[
        "connect",
        "--signal",
        &url,
        "--stun",
        &stun,
        "--interfaces",
        "none",
        "bob",
        "--message",
        "ping 42",
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
    assert!(out.contains("ready: NAT open (no NAT)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("connected to "))
        .unwrap_or_else(|| panic!("no connection line in\n{out}"));
    assert!(line.contains(" via direct (127.0.0.1:"), "{line}");
    assert!(out.contains("echo: ping 42 ("), "{out}");

    // The server side connected on the same kind of path, echoed one datagram and left.
    let status = serve.wait_timeout(STEP);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        serve.output_text()
    );
    let served = serve.stdout_text();
    assert!(
        served
            .lines()
            .any(|l| l.starts_with("connected to ") && l.contains(" via direct ")),
        "{served}"
    );
}

#[test]
fn connecting_to_nobody_fails_clearly() {
    let (_fogd, stun, url) = fogd();
    let connect = fogconnect(&[
        "connect",
        "--signal",
        &url,
        "--stun",
        &stun.to_string(),
        "--interfaces",
        "none",
        "nobody",
        "--timeout",
        "20",
    ]);
    assert_eq!(connect.code(), Some(1), "{}", connect.text());
    assert!(
        connect.stderr.contains("no peer is known as nobody"),
        "{}",
        connect.text()
    );
}

#[test]
fn relay_only_nodes_connect_through_fogds_turn_relay() {
    let (fogd, stun, url, turn) = fogd_with(true);
    let (stun, turn) = (stun.to_string(), turn.unwrap().to_string());
    let mut serve = serve(
        "serve-relay",
        &[
            "--signal",
            &url,
            "--stun",
            &stun,
            "--interfaces",
            "none",
            "--turn",
            &turn,
            "--relay-only",
            "--alias",
            "carol",
            "--count",
            "1",
            "--timeout",
            "30",
        ],
    );
    // The relay allocation follows authentication; give it a moment before the offer.
    thread::sleep(Duration::from_millis(300));
    let connect = fogconnect(&[
        "connect",
        "--signal",
        &url,
        "--stun",
        &stun,
        "--interfaces",
        "none",
        "--turn",
        &turn,
        "carol",
        "--message",
        "through the relay",
        "--timeout",
        "20",
    ]);
    assert_eq!(
        connect.code(),
        Some(0),
        "{}\n{}\n{}",
        connect.text(),
        serve.output_text(),
        fogd.output_text()
    );
    let out = &connect.stdout;
    let line = out
        .lines()
        .find(|l| l.starts_with("connected to "))
        .unwrap_or_else(|| panic!("no connection line in\n{out}"));
    // carol described only her relayed address: the path goes through fogd's relay.
    assert!(line.contains(" via turn ("), "{line}");
    assert!(out.contains("echo: through the relay ("), "{out}");
    let status = serve.wait_timeout(STEP);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        serve.output_text()
    );
    assert!(
        serve
            .stdout_text()
            .lines()
            .any(|l| l.starts_with("connected to ") && l.contains(" via turn (")),
        "{}",
        serve.output_text()
    );
}

/// `recv` takes a file `send` sends over KCP (a few MB of a pattern, so many messages and a
/// full stream), writes it under its name only once the SHA-256 matched, and both exit 0; a
/// second file of the same name gets a name of its own.
#[test]
fn send_and_recv_move_a_file_and_check_its_hash() {
    let (_fogd, stun, url) = fogd();
    let stun = stun.to_string();
    let dir = std::env::temp_dir().join(format!("fog-recv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let into = dir.join("into");
    std::fs::create_dir_all(&into).unwrap();
    let payload: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = source.join("data.bin");
    std::fs::write(&file, &payload).unwrap();
    let into_arg = into.display().to_string();
    let mut recv = ChildGuard::spawn(
        "recv",
        Command::new(fogconnect_exe()).args([
            "recv",
            "--signal",
            &url,
            "--stun",
            &stun,
            "--interfaces",
            "none",
            "--alias",
            "inbox",
            "--count",
            "2",
            "--timeout",
            "60",
            &into_arg,
        ]),
    )
    .expect("spawning fogconnect recv");
    let deadline = Instant::now() + STEP;
    while !recv.stdout_text().contains("ready:") {
        assert!(
            recv.try_wait().is_none(),
            "recv exited\n{}",
            recv.output_text()
        );
        assert!(
            Instant::now() < deadline,
            "recv not ready\n{}",
            recv.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let file_arg = file.display().to_string();
    for _ in 0..2 {
        let send = fogconnect(&[
            "send",
            "--signal",
            &url,
            "--stun",
            &stun,
            "--interfaces",
            "none",
            &file_arg,
            "inbox",
            "--timeout",
            "40",
        ]);
        assert_eq!(
            send.code(),
            Some(0),
            "{}\n{}",
            send.text(),
            recv.output_text()
        );
        assert!(
            send.stdout.contains("sent data.bin: 3000000 bytes")
                && send.stdout.contains("verified"),
            "{}",
            send.stdout
        );
    }
    let status = recv.wait_timeout(STEP);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        recv.output_text()
    );
    assert!(
        std::fs::read(into.join("data.bin")).unwrap() == payload,
        "the first copy"
    );
    assert!(
        std::fs::read(into.join("data.bin.1")).unwrap() == payload,
        "the second copy"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&into)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
