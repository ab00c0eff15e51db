//! `fogconnect demo` and `fogconnect` with no subcommand (what `cargo run --release` runs at the
//! workspace root): fogd in the same process, two nodes, one connection per transport, and a
//! report that says each transport delivered intact. And `fogconnect id`: one identity per key
//! file, created once with mode 0600.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::Mutex;

use support::{CLIENT_TIMEOUT, fogconnect, fogconnect_exe, run_command, scratch_file};

/// The transports a node runs by default, in the order the demo reports them.
const TRANSPORTS: [&str; 6] = ["datagram", "kcp", "quic", "utp", "rtc", "sctp"];

/// One demo at a time: unoptimised, the default run takes about 14 s of its 25 on a busy
/// 2-core machine, and two at once would compete for the same cores.
static ONE_DEMO: Mutex<()> = Mutex::new(());

#[test]
fn demo_json_reports_every_transport_intact() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let output = fogconnect(&["demo", "--size", "1MiB", "--json"]);
    assert_eq!(output.code(), Some(0), "{}", output.text());
    let report: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e})\n{}", output.text()));
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["size"], 1 << 20);
    for node in ["a", "b"] {
        // Loopback has no NAT; discovery says so.
        assert_eq!(report[node]["nat"], "open (no NAT)", "{report:#}");
        assert!(report[node]["peer"].as_str().is_some_and(|p| !p.is_empty()));
    }
    let legs = report["transports"].as_array().expect("a transports array");
    let names: Vec<&str> = legs
        .iter()
        .filter_map(|l| l["transport"].as_str())
        .collect();
    assert_eq!(names, TRANSPORTS, "{report:#}");
    for leg in legs {
        assert_eq!(leg["ok"], true, "{leg:#}");
        assert_eq!(leg["via"], "direct", "{leg:#}");
        assert!(leg["connect_ms"].as_f64().is_some_and(|ms| ms > 0.0));
        assert!(leg["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0));
        if leg["transport"] == "datagram" {
            assert_eq!(leg["check"], "20/20 echoed intact");
        } else {
            assert_eq!(leg["bytes"], 1 << 20);
            assert!(
                leg["check"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("sha256 ok"))
            );
            assert!(leg["mib_per_s"].as_f64().is_some_and(|r| r > 0.0));
        }
    }
}

/// No subcommand runs the demo with its defaults and prints the text report.
#[test]
fn no_subcommand_runs_the_demo() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let output = run_command(
        "fogconnect-default",
        &mut Command::new(fogconnect_exe()),
        CLIENT_TIMEOUT,
    );
    assert_eq!(output.code(), Some(0), "{}", output.text());
    assert!(
        output.stderr.contains("running the demo"),
        "{}",
        output.text()
    );
    let text = &output.stdout;
    for node in ["node A", "node B"] {
        let line = text.lines().find(|l| l.starts_with(node));
        assert!(
            line.is_some_and(|l| l.contains("NAT open (no NAT)")),
            "{text}"
        );
    }
    for transport in TRANSPORTS {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{transport} ")))
            .unwrap_or_else(|| panic!("no {transport} line\n{text}"));
        assert!(line.contains("direct 127.0.0.1:"), "{line}");
        if transport == "datagram" {
            assert!(line.contains("20/20 echoed intact"), "{line}");
        } else {
            assert!(
                line.contains("4.0 MiB") && line.contains("sha256 ok"),
                "{line}"
            );
        }
    }
    assert!(
        text.contains(&format!(
            "{n} of {n} transports connected and delivered intact",
            n = TRANSPORTS.len()
        )),
        "{text}"
    );
}

#[test]
fn id_creates_the_key_once_and_shows_the_same_peer_id() {
    let key = scratch_file("id").join("nested").join("identity.key");
    let key_arg = key.to_str().expect("a UTF-8 path");
    let first = fogconnect(&["id", "--key", key_arg]);
    assert_eq!(first.code(), Some(0), "{}", first.text());
    assert!(first.stderr.contains("created"), "{}", first.text());
    let peer = first.stdout.trim();
    assert!(
        !peer.is_empty() && !peer.contains(char::is_whitespace),
        "{peer:?}"
    );
    let mode = std::fs::metadata(&key)
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    let second = fogconnect(&["id", "--key", key_arg]);
    assert_eq!(second.code(), Some(0), "{}", second.text());
    assert_eq!(second.stdout.trim(), peer);
    assert!(!second.stderr.contains("created"), "{}", second.text());

    let json = fogconnect(&["id", "--key", key_arg, "--json"]);
    assert_eq!(json.code(), Some(0), "{}", json.text());
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(value["peer"], peer);
    assert_eq!(value["created"], false);
    assert_eq!(value["key"], key_arg);
}

/// Without --key the identity lives under the XDG config directory.
#[test]
fn id_defaults_to_the_config_directory() {
    let config = scratch_file("xdg");
    let run = || {
        run_command(
            "fogconnect-id",
            Command::new(fogconnect_exe())
                .args(["id", "--json"])
                .env("XDG_CONFIG_HOME", &config),
            CLIENT_TIMEOUT,
        )
    };
    let first = run();
    assert_eq!(first.code(), Some(0), "{}", first.text());
    let first: serde_json::Value = serde_json::from_str(&first.stdout).expect("JSON");
    assert_eq!(first["created"], true);
    let path = config.join("fogconnect").join("identity.key");
    assert_eq!(first["key"], path.to_str().expect("a UTF-8 path"));
    assert!(path.is_file());
    let second: serde_json::Value = serde_json::from_str(&run().stdout).expect("JSON");
    assert_eq!(second["peer"], first["peer"]);
    assert_eq!(second["created"], false);
}
