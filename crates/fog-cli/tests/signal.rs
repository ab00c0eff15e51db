//! `fogconnect listen` and `fogconnect offer` through `fogd --signal` on loopback: two clients
//! authenticate, one registers an alias, the other looks it up and sends an offer, and the answer
//! comes back; both sides must print the same two descriptions. Also the errors a person meets:
//! an unknown or offline peer, an alias held by another key, no server, a wrong path.
//!
//! fogd is built on first use (see `support::fogd_exe`).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{A1, ChildGuard, fogconnect, fogconnect_exe, fogd_exe, scratch_file};

/// How long a step may take before the test calls it hung.
const STEP: Duration = Duration::from_secs(30);

/// fogd serving signaling only, on a free port of 127.0.0.1.
struct Fogd {
    /// Killed when the test ends.
    _child: ChildGuard,
    addr: SocketAddr,
}

impl Fogd {
    fn start() -> Fogd {
        Fogd::start_with(&[])
    }

    /// fogd with further arguments (`--tls-cert` ...).
    fn start_with(extra: &[&str]) -> Fogd {
        for attempt in 0..5 {
            let port = TcpListener::bind((A1, 0))
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let addr = SocketAddr::new(A1, port);
            let mut command = Command::new(fogd_exe());
            command.args(["--signal", &addr.to_string()]).args(extra);
            let name = format!("fogd-signal-{attempt}");
            // None: someone took the port in between; try another.
            if let Some(child) = fog_test_support::spawn_listening(&name, &mut command, addr, STEP)
            {
                return Fogd {
                    _child: child,
                    addr,
                };
            }
        }
        panic!("fogd could not start on a free port");
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// `fogconnect listen` in the background, once it has printed its first line.
fn listener(name: &str, args: &[&str]) -> (ChildGuard, Value) {
    let mut command = Command::new(fogconnect_exe());
    command.arg("listen").args(args).arg("--json");
    let mut child = ChildGuard::spawn(name, &mut command).expect("spawning fogconnect listen");
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(line) = child.stdout_text().lines().next() {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}\n{}", child.output_text()));
            return (child, value);
        }
        assert!(
            child.try_wait().is_none(),
            "fogconnect listen exited early\n{}",
            child.output_text()
        );
        assert!(
            Instant::now() < deadline,
            "fogconnect listen printed nothing within {STEP:?}\n{}",
            child.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The peer ID a command printed in its `authenticated ... as PEER-ID` progress line.
fn authenticated_as(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("authenticated to"))
        .unwrap_or_else(|| panic!("no authentication line in\n{stderr}"));
    let after = line.split(" as ").nth(1).unwrap();
    after.split(',').next().unwrap().trim().to_owned()
}

fn assert_host_candidate(description: &Value) {
    let candidates = description["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1, "{description}");
    assert_eq!(candidates[0]["kind"], "host", "{description}");
    let addr: SocketAddr = candidates[0]["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        addr.ip(),
        A1,
        "the interface that reaches fogd: {description}"
    );
    assert_ne!(addr.port(), 0, "{description}");
    let ufrag = description["credentials"]["ufrag"].as_str().unwrap();
    let pwd = description["credentials"]["pwd"].as_str().unwrap();
    assert!(ufrag.len() >= 4 && pwd.len() >= 22, "{description}");
}

#[test]
fn two_clients_exchange_an_offer_and_an_answer() {
    let fogd = Fogd::start();
    let url = fogd.url();
    let key = scratch_file("alice.key");
    let (mut alice, first) = listener(
        "listen-alice",
        &[
            "--signal",
            &url,
            "--alias",
            "alice",
            "--count",
            "1",
            "--timeout",
            "30",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(first["event"], "listening", "{first}");
    assert_eq!(first["alias"], "alice", "{first}");
    let alice_id = first["peer"].as_str().unwrap().to_owned();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file's mode");

    let offer = fogconnect(&[
        "offer",
        "--signal",
        &url,
        "--service",
        "7",
        "--transport",
        "kcp",
        "--json",
        "--timeout",
        "30",
        "alice",
    ]);
    assert_eq!(offer.code(), Some(0), "{}", offer.text());
    let bob_id = authenticated_as(&offer.stderr);
    let answer: Value = serde_json::from_str(offer.stdout.trim()).unwrap();
    assert_eq!(answer["event"], "answer", "{answer}");
    assert_eq!(answer["from"], alice_id.as_str(), "{answer}");
    assert_eq!(answer["offer"]["service"], 7);
    assert_eq!(answer["offer"]["transports"], serde_json::json!(["kcp"]));
    // The answer echoes the service and lists the listener's transports (the defaults).
    assert_eq!(answer["answer"]["service"], 7);
    assert_eq!(
        answer["answer"]["transports"],
        serde_json::json!(["quic", "kcp"])
    );
    assert_host_candidate(&answer["offer"]);
    assert_host_candidate(&answer["answer"]);
    assert_ne!(
        answer["offer"]["credentials"], answer["answer"]["credentials"],
        "each side makes its own credentials"
    );

    // The listener answered one offer and left; it saw exactly what the offerer sent and sent
    // exactly what the offerer received.
    let status = alice.wait_timeout(STEP);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        alice.output_text()
    );
    let stdout = alice.stdout_text();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let seen = &lines[1];
    assert_eq!(seen["event"], "offer", "{seen}");
    assert_eq!(seen["from"], bob_id.as_str(), "{seen}");
    assert_eq!(seen["session"], answer["session"], "{seen}");
    assert_eq!(seen["offer"], answer["offer"], "{seen}");
    assert_eq!(seen["answer"], answer["answer"], "{seen}");

    // The key file keeps the identity: the same peer ID next time, and the alias is still ours.
    let (_again, first) = listener(
        "listen-alice-again",
        &[
            "--signal",
            &url,
            "--alias",
            "alice",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(first["peer"], alice_id.as_str(), "{first}");
    drop(fogd);
}

#[test]
fn offers_to_whom_cannot_answer_fail_clearly() {
    let fogd = Fogd::start();
    let url = fogd.url();

    let unknown = fogconnect(&["offer", "--signal", &url, "--timeout", "20", "nobody"]);
    assert_eq!(unknown.code(), Some(1), "{}", unknown.text());
    assert!(
        unknown.stderr.contains("no peer is known as nobody"),
        "{}",
        unknown.text()
    );

    // An alias whose holder went away: known, but offline.
    let (mut carol, first) = listener(
        "listen-carol",
        &["--signal", &url, "--alias", "carol", "--timeout", "30"],
    );
    let carol_id = first["peer"].as_str().unwrap().to_owned();
    carol_stop(&mut carol);
    let offline = fogconnect(&["offer", "--signal", &url, "--timeout", "20", "carol"]);
    assert_eq!(offline.code(), Some(1), "{}", offline.text());
    assert!(
        offline.stderr.contains("is not online") || offline.stderr.contains("no peer is known"),
        "{}",
        offline.text()
    );

    // The alias stays bound to carol's key: another key cannot take it.
    let (mut dave, _) = listener(
        "listen-dave",
        &["--signal", &url, "--alias", "dave", "--timeout", "30"],
    );
    let thief = fogconnect(&[
        "listen",
        "--signal",
        &url,
        "--alias",
        "dave",
        "--timeout",
        "10",
    ]);
    assert_eq!(thief.code(), Some(1), "{}", thief.text());
    assert!(
        thief
            .stderr
            .contains("the alias dave was refused (AliasTaken"),
        "{}",
        thief.text()
    );
    assert!(dave.try_wait().is_none(), "{}", dave.output_text());

    // A peer ID works without a lookup; carol is offline, so the server refuses the offer.
    let direct = fogconnect(&["offer", "--signal", &url, "--timeout", "20", &carol_id]);
    assert_eq!(direct.code(), Some(1), "{}", direct.text());
    assert!(direct.stderr.contains("the offer to"), "{}", direct.text());
    drop(fogd);
}

/// Kills a listener (as Ctrl-C would) and waits for it.
fn carol_stop(child: &mut ChildGuard) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait_timeout(STEP)
}

#[test]
fn no_server_and_wrong_path() {
    // A port nobody listens on.
    let port = TcpListener::bind((A1, 0))
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let none = fogconnect(&["offer", "--signal", &url, "--timeout", "5", "x"]);
    assert_eq!(none.code(), Some(1), "{}", none.text());
    assert!(
        none.stderr.contains("cannot reach the signaling server"),
        "{}",
        none.text()
    );

    let fogd = Fogd::start();
    let wrong = format!("ws://{}/nope", fogd.addr);
    let refused = fogconnect(&["offer", "--signal", &wrong, "--timeout", "5", "x"]);
    assert_eq!(refused.code(), Some(1), "{}", refused.text());
    assert!(
        refused.stderr.contains("handshake failed"),
        "{}",
        refused.text()
    );
    drop(fogd);
}

/// `wss://` with `--ca-file`: the CLI reaches fogd over TLS when it trusts the certificate
/// (the offer then fails for the reason that has nothing to do with TLS), and refuses a server
/// it does not trust, saying so.
#[test]
fn wss_with_a_ca_file() {
    let (cert, key, _) = fog_test_support::self_signed_cert();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let fogd = Fogd::start_with(&["--tls-cert", cert, "--tls-key", key, "--realm", "localhost"]);
    let url = format!("wss://localhost:{}/ws", fogd.addr.port());
    let trusted = fogconnect(&[
        "offer",
        "--signal",
        &url,
        "--ca-file",
        cert,
        "--timeout",
        "20",
        "nobody",
    ]);
    assert_eq!(trusted.code(), Some(1), "{}", trusted.text());
    assert!(
        trusted.stderr.contains("no peer is known as nobody"),
        "signaling worked over TLS: {}",
        trusted.text()
    );
    let untrusted = fogconnect(&["offer", "--signal", &url, "--timeout", "20", "nobody"]);
    assert_eq!(untrusted.code(), Some(1), "{}", untrusted.text());
    assert!(
        untrusted.stderr.contains("handshake"),
        "a self-signed server is not trusted by default: {}",
        untrusted.text()
    );
}

/// `--server-key` pins the signaling server: the right key authenticates, another is refused.
#[test]
fn a_pinned_server_key_is_enforced() {
    let fogd = Fogd::start();
    let url = fogd.url();
    let log = fogd._child.stderr_text();
    let server = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("server="))
        .unwrap_or_else(|| panic!("fogd logs its key: {log}"))
        .to_owned();
    let pinned = fogconnect(&[
        "offer",
        "--signal",
        &url,
        "--server-key",
        &server,
        "--timeout",
        "20",
        "nobody",
    ]);
    assert!(
        pinned.stderr.contains("no peer is known as nobody"),
        "authenticated to the pinned server: {}",
        pinned.text()
    );
    let other = fog_signal::KeyPair::from_seed(&[42; 32])
        .peer_id()
        .to_string();
    let refused = fogconnect(&[
        "offer",
        "--signal",
        &url,
        "--server-key",
        &other,
        "--timeout",
        "20",
        "nobody",
    ]);
    assert_eq!(refused.code(), Some(1), "{}", refused.text());
    assert!(
        !refused.stderr.contains("no peer is known"),
        "never got as far as the lookup: {}",
        refused.text()
    );
}
