//! The C examples (`examples-c/`), built with the system C compiler against the static library
//! and the committed header, run against a fogd on loopback: the echo pair (the original's
//! `pr_*` names), the pub/sub hub with three subscribers, getaddr, and file transfer over each
//! reliable protocol. Every child is bounded in time and killed with its guard.

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
        for name in [
            "echo_server",
            "echo_client",
            "hub",
            "getaddr",
            "file_transfer",
        ] {
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

/// `file_transfer` sends a file of `len` pseudo-random bytes over `protocol` from one process to
/// another (by the receiver's ID); both exit 0, the copy is byte for byte the original, and the
/// sender's last line says the receiver confirmed size and hash. Returns the sender's output.
fn transfer(test: &str, protocol: &str, len: usize) -> Option<String> {
    let dir = examples(test)?;
    let (_fogd, stun, signal) = fogd();
    let (url, stun) = (format!("ws://{signal}/ws"), stun.to_string());
    let work = fog_test_support::scratch_file(&format!("c-file-{protocol}"));
    let (from, to) = (work.join("from"), work.join("to"));
    std::fs::create_dir_all(&from).expect("a scratch directory");
    std::fs::create_dir_all(&to).expect("a scratch directory");
    // xorshift: incompressible, and any lost, repeated or reordered chunk changes the hash.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let file = from.join("payload.bin");
    std::fs::write(&file, &data).expect("the file to send");
    let id = format!("files-{protocol}");
    let to_arg = to.to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let mut receiver = spawn(
        dir,
        "file_transfer",
        &format!("recv-{protocol}"),
        &[&url, &stun, "recv", &id, &to_arg, protocol],
    );
    wait_for_output(&mut receiver, "ready");
    let mut sender = spawn(
        dir,
        "file_transfer",
        &format!("send-{protocol}"),
        &[&url, &stun, "send", &id, &file_arg, protocol],
    );
    expect_success(&mut sender);
    expect_success(&mut receiver);
    let copy = std::fs::read(to.join("payload.bin")).expect("the received file");
    assert!(
        copy == data,
        "the copy differs ({} of {len} bytes)",
        copy.len()
    );
    let out = sender.stdout_text();
    assert!(
        out.contains(&format!("sent payload.bin: {len} bytes")) && out.contains("verified"),
        "{}",
        sender.output_text()
    );
    assert!(
        receiver
            .stdout_text()
            .contains(&format!("payload.bin: {len} bytes")),
        "{}",
        receiver.output_text()
    );
    Some(out)
}

#[test]
fn file_transfer_over_quic() {
    transfer("file_transfer_over_quic", "quic", 3 << 20);
}

#[test]
fn file_transfer_over_kcp_waits_for_writable() {
    // KCP's send queue holds 4,096 segments (about 5 MiB); the sender hands it 8 MiB far
    // faster than loopback drains it, so it must have waited for FC_EVENT_WRITABLE (it gives
    // up after 10 s without one).
    let Some(out) = transfer("file_transfer_over_kcp_waits_for_writable", "kcp", 8 << 20) else {
        return;
    };
    let waits: u64 = out
        .split("waited for FC_EVENT_WRITABLE ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait count in {out}"));
    assert!(waits > 0, "{out}");
}

#[test]
fn file_transfer_over_utp() {
    transfer("file_transfer_over_utp", "utp", 3 << 20);
}

#[test]
fn file_transfer_over_sctp() {
    transfer("file_transfer_over_sctp", "sctp", 1 << 20);
}

#[test]
fn file_transfer_over_rtc() {
    transfer("file_transfer_over_rtc", "rtc", 1 << 20);
}

#[test]
fn file_transfer_refuses_to_overwrite() {
    let test = "file_transfer_refuses_to_overwrite";
    let Some(dir) = examples(test) else {
        return;
    };
    let (_fogd, stun, signal) = fogd();
    let (url, stun) = (format!("ws://{signal}/ws"), stun.to_string());
    let work = fog_test_support::scratch_file("c-file-exists");
    let (from, to) = (work.join("from"), work.join("to"));
    std::fs::create_dir_all(&from).expect("a scratch directory");
    std::fs::create_dir_all(&to).expect("a scratch directory");
    std::fs::write(from.join("notes.txt"), b"new text").expect("the file to send");
    std::fs::write(to.join("notes.txt"), b"kept").expect("the file already there");
    let to_arg = to.to_string_lossy().into_owned();
    let file_arg = from.join("notes.txt").to_string_lossy().into_owned();
    let mut receiver = spawn(
        dir,
        "file_transfer",
        "recv-exists",
        &[&url, &stun, "recv", "files-exists", &to_arg],
    );
    wait_for_output(&mut receiver, "ready");
    let mut sender = spawn(
        dir,
        "file_transfer",
        "send-exists",
        &[&url, &stun, "send", "files-exists", &file_arg],
    );
    let status = sender.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{status:?}\n{}",
        sender.output_text()
    );
    assert!(
        sender
            .output_text()
            .contains("answered BAD cannot create notes.txt: File exists"),
        "{}",
        sender.output_text()
    );
    let status = receiver.wait_timeout(WAIT);
    assert!(status.is_some_and(|s| s.code() == Some(1)), "{status:?}");
    assert_eq!(
        std::fs::read(to.join("notes.txt")).expect("the old file"),
        b"kept"
    );
}
