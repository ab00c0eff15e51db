//! The C examples (`examples-c/`), built with the system C compiler against the static library
//! and the committed header, run against a fogd on loopback: the echo pair (the original's
//! `pr_*` names), the pub/sub hub with three subscribers, and getaddr. Every child is bounded in
//! time and killed with its guard.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{WAIT, fogd, manifest_dir};
use fog_test_support::{A1, ChildGuard, run_command};

/// The system C compiler: `$CC`, or `cc` on PATH.
fn compiler() -> Option<PathBuf> {
    let cc = std::env::var_os("CC").map_or_else(|| PathBuf::from("cc"), PathBuf::from);
    if cc.is_absolute() {
        cc.is_file().then_some(cc)
    } else {
        fog_test_support::find_tool(&cc.to_string_lossy())
    }
}

/// The directory of the examples' executables, compiled once per test process; `None` (after
/// saying so) without a C compiler, unless `FOG_REQUIRE_INTEROP=1` (CI), which fails instead.
fn examples(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let cc = compiler()?;
        let exe = std::env::current_exe().expect("the test's own path");
        let lib = fog_test_support::cargo_built(
            &exe,
            manifest_dir(),
            &["-p", "fog-ffi", "--lib"],
            "libfogconnect_ffi.a",
        );
        let dir = fog_test_support::scratch_file("c-examples");
        std::fs::create_dir_all(&dir).expect("the examples' directory");
        for name in ["echo_server", "echo_client", "hub", "getaddr"] {
            let mut command = Command::new(&cc);
            command
                .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(manifest_dir().join("include"))
                .arg(manifest_dir().join(format!("examples-c/{name}.c")))
                .arg(&lib)
                .args(["-lpthread", "-ldl", "-lm", "-o"])
                .arg(dir.join(name));
            let out = run_command(
                &format!("cc-{name}"),
                &mut command,
                Duration::from_secs(120),
            );
            assert_eq!(out.code(), Some(0), "compiling {name}.c:\n{}", out.text());
        }
        Some(dir)
    });
    if dir.is_none() {
        fog_test_support::skip_or_fail(
            test,
            "no C compiler (cc, or $CC; Debian package gcc)",
            "FOG_REQUIRE_INTEROP",
        );
    }
    dir.as_deref()
}

/// Starts example `name` (in `dir`) with `args`.
fn spawn(dir: &Path, name: &str, label: &str, args: &[&str]) -> ChildGuard {
    let mut command = Command::new(dir.join(name));
    command.args(args);
    ChildGuard::spawn(label, &mut command).unwrap_or_else(|e| panic!("starting {label}: {e}"))
}

/// Waits until `child` has printed `needle`; panics with its output if it exits first or
/// the time runs out.
fn wait_for_output(child: &mut ChildGuard, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child.stdout_text().contains(needle) {
            return;
        }
        if let Some(status) = child.try_wait() {
            panic!(
                "exited ({status}) before printing {needle:?}\n{}",
                child.output_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {needle:?} within {WAIT:?}\n{}", child.output_text());
}

/// Waits for `child` to exit 0.
fn expect_success(child: &mut ChildGuard) {
    let status = child.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}\n{}",
        child.output_text()
    );
}

#[test]
fn echo_pair_on_the_original_names() {
    let Some(dir) = examples("echo_pair_on_the_original_names") else {
        return;
    };
    let (_fogd, stun, signal) = fogd();
    let (host, port, stun) = (
        signal.ip().to_string(),
        signal.port().to_string(),
        stun.to_string(),
    );
    let id = "00:16:3e:00:00:01";
    let mut server = spawn(
        dir,
        "echo_server",
        "echo_server",
        &[&host, &port, &stun, id, "1"],
    );
    wait_for_output(&mut server, "ready");
    let mut client = spawn(
        dir,
        "echo_client",
        "echo_client",
        &[&host, &port, &stun, id],
    );
    expect_success(&mut client);
    expect_success(&mut server);
    let (c, s) = (client.stdout_text(), server.stdout_text());
    // Service 7 in bits 4-11, FC_PROTOCOL_QUIC (1) in bits 0-3.
    assert!(
        c.contains("client: connected, passive 0, convention 0x71"),
        "{c}"
    );
    assert!(c.contains("client received: I know!"), "{c}");
    assert!(s.contains("passive 1, convention 0x71"), "{s}");
    assert!(s.contains("server received: I am fog data!"), "{s}");
    assert!(s.contains("server: released (success)"), "{s}");
}

#[test]
fn hub_hands_a_publication_to_every_subscriber() {
    let Some(dir) = examples("hub_hands_a_publication_to_every_subscriber") else {
        return;
    };
    let (_fogd, stun, signal) = fogd();
    let (url, stun) = (format!("ws://{signal}/ws"), stun.to_string());
    let mut hub = spawn(dir, "hub", "hub-serve", &[&url, &stun, "serve", "hub", "1"]);
    wait_for_output(&mut hub, "ready");
    let mut subscribers: Vec<ChildGuard> = (0..3)
        .map(|i| {
            spawn(
                dir,
                "hub",
                &format!("hub-sub-{i}"),
                &[&url, &stun, "sub", "hub"],
            )
        })
        .collect();
    for sub in &mut subscribers {
        wait_for_output(sub, "subscribed");
    }
    let message = "hello, subscribers";
    let mut publisher = spawn(dir, "hub", "hub-pub", &[&url, &stun, "pub", "hub", message]);
    expect_success(&mut publisher);
    assert!(
        publisher
            .stdout_text()
            .contains("delivered to 3 subscribers"),
        "{}",
        publisher.output_text()
    );
    for sub in &mut subscribers {
        expect_success(sub);
        let out = sub.stdout_text();
        assert!(out.contains(&format!("received: {message}")), "{out}");
    }
    expect_success(&mut hub);
    assert!(
        hub.stdout_text()
            .contains(&format!("published \"{message}\" to 3 subscribers")),
        "{}",
        hub.output_text()
    );
}

#[test]
fn getaddr_prints_the_nat_type_and_candidates() {
    let Some(dir) = examples("getaddr_prints_the_nat_type_and_candidates") else {
        return;
    };
    let (_fogd, stun, signal) = fogd();
    let mut getaddr = spawn(
        dir,
        "getaddr",
        "getaddr",
        &[&format!("ws://{signal}/ws"), &stun.to_string()],
    );
    expect_success(&mut getaddr);
    let out = getaddr.stdout_text();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("peer id: "))
        .unwrap_or_else(|| panic!("no peer id in\n{out}"));
    assert_eq!(id.len(), 54, "{out}");
    // On loopback nothing translates: the STUN server sees the host address itself.
    assert!(out.contains("nat: open (no NAT)"), "{out}");
    let host = out
        .lines()
        .find_map(|l| l.strip_prefix("candidate host "))
        .unwrap_or_else(|| panic!("no host candidate in\n{out}"));
    let host: SocketAddr = host.parse().expect("an address");
    assert_eq!(host.ip(), A1, "{out}");
    assert!(
        out.contains(&format!("candidate srflx {host}")),
        "the server-reflexive address is the host's on loopback:\n{out}"
    );
}
