//! Two whole nodes on real sockets: `fogconnect serve` and `fogconnect connect` run
//! discovery against fogd's STUN service, meet through fogd's signaling, punch (on loopback
//! there is no NAT, so the direct path is the plain one), and a datagram goes there and back.
//!
//! fogd is built on first use (see `support::fogd_exe`).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::{A1, ChildGuard, fogconnect, fogconnect_exe, fogd_exe};

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
    let turn_addr = turn.then(|| {
        let port = std::net::UdpSocket::bind((A1, 0))
            .and_then(|s| s.local_addr())
            .unwrap()
            .port();
        SocketAddr::new(A1, port)
    });
    let extra = |attempt: u16| -> Vec<String> {
        let Some(t) = turn_addr else {
            return Vec::new();
        };
        let low = 20_000 + (u16::try_from(std::process::id() % 100).unwrap() + attempt) * 100;
        let mut args = vec!["--turn".to_owned(), t.to_string()];
        args.extend(["--turn-secret".to_owned(), TURN_SECRET.to_owned()]);
        args.extend(["--turn-ports".to_owned(), format!("{low}-{}", low + 99)]);
        // The relay's peers here are on loopback, which fogd refuses unless allowed.
        args.extend(["--turn-allow-peer".to_owned(), "127.0.0.0/8".to_owned()]);
        args
    };
    let (child, stun, signal) =
        fog_test_support::fogd_for_nodes(&fogd_exe(), "fogd-node", extra, STEP);
    (child, stun, format!("ws://{signal}/ws"), turn_addr)
}

/// `fogconnect serve` with `args`, once it has printed its `ready:` line (discovery done,
/// authenticated).
fn serve(name: &str, args: &[&str]) -> ChildGuard {
    ready_node(name, "serve", args)
}

/// `fogconnect <command>` with `args`, once it has printed its `ready:` line.
fn ready_node(name: &str, command: &str, args: &[&str]) -> ChildGuard {
    let mut serve = ChildGuard::spawn(name, Command::new(fogconnect_exe()).arg(command).args(args))
        .expect("spawning fogconnect");
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
    let mut recv = ready_node(
        "recv",
        "recv",
        &[
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
        ],
    );
    let file_arg = file.display().to_string();
    for json in [false, true] {
        let mut args = vec![
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
        ];
        if json {
            args.push("--json");
        }
        let send = fogconnect(&args);
        assert_eq!(
            send.code(),
            Some(0),
            "{}\n{}",
            send.text(),
            recv.output_text()
        );
        if !json {
            assert!(
                send.stdout.contains("sent data.bin: 3000000 bytes")
                    && send.stdout.contains("verified"),
                "{}",
                send.stdout
            );
            continue;
        }
        // With --json: progress lines, never backwards, the last at the whole file, then
        // the verified end.
        let lines: Vec<serde_json::Value> = send
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let progress: Vec<u64> = lines
            .iter()
            .filter(|v| v["event"] == "progress")
            .filter_map(|v| v["bytes"].as_u64())
            .collect();
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]) && progress.last() == Some(&3_000_000),
            "{}",
            send.stdout
        );
        assert!(
            lines
                .iter()
                .any(|v| v["event"] == "sent" && v["file"] == "data.bin"),
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

/// `fogconnect doctor` on loopback: no NAT on either side, a direct path, and nothing to
/// advise.
#[test]
fn doctor_explains_a_direct_connection() {
    let (_fogd, stun, url) = fogd();
    let stun = stun.to_string();
    let _serve = serve(
        "serve",
        &[
            "--signal",
            &url,
            "--stun",
            &stun,
            "--interfaces",
            "none",
            "--alias",
            "dora",
            "--timeout",
            "30",
        ],
    );
    let doctor = fogconnect(&[
        "doctor",
        "--signal",
        &url,
        "--stun",
        &stun,
        "--interfaces",
        "none",
        "dora",
        "--json",
        "--timeout",
        "20",
    ]);
    assert_eq!(doctor.code(), Some(0), "{}", doctor.text());
    let d: serde_json::Value = doctor
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "diagnosis")
        .unwrap_or_else(|| panic!("no diagnosis in {}", doctor.text()));
    assert_eq!(d["ours"], "open (no NAT)", "{d:#}");
    assert_eq!(d["theirs"], "open (no NAT)", "{d:#}");
    assert_eq!(d["outcome"], "plain", "{d:#}");
    assert_eq!(d["path"]["via"], "direct", "{d:#}");
    assert!(d["advice"].is_null(), "{d:#}");
    assert!(
        d["why"]
            .as_str()
            .is_some_and(|w| w.contains("punching found it")),
        "{d:#}"
    );
}
