//! `fogconnect nat` as a person runs it: against fogd on loopback with two addresses
//! (127.0.0.1 and 127.0.0.2; on Linux all of 127/8 is local), where there is no NAT, so the
//! verdict must be "no NAT / open" with the public address equal to the local one; against a
//! one-address fogd, a silent server, and with the errors a person makes.
//!
//! fogd is built on first use (see `support::fogd_exe`).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{SocketAddr, UdpSocket};

use fog_stun::discovery::DiscoveryConfig;
use serde_json::Value;
use support::{A1, FogdServer, Server, fogconnect, fogconnect_json};

/// The value after `label` on its table row (`  Label    value`), if the row is there.
fn row<'a>(table: &'a str, label: &str) -> Option<&'a str> {
    table.lines().find_map(|line| {
        let rest = line.strip_prefix("  ")?.strip_prefix(label)?;
        rest.starts_with("  ").then(|| rest.trim())
    })
}

/// The first word of a row, as an address.
fn row_addr(table: &str, label: &str) -> SocketAddr {
    let value = row(table, label).unwrap_or_else(|| panic!("no {label} row in\n{table}"));
    let word = value.split_whitespace().next().unwrap();
    word.parse()
        .unwrap_or_else(|e| panic!("{label}: {word:?} is no address ({e})\n{table}"))
}

#[test]
fn fogd_on_loopback_reads_no_nat_open() {
    let fogd = Server::fogd();
    let server = fogd.primary.to_string();

    let output = fogconnect(&["nat", "--server", &server]);
    let table = &output.stdout;
    eprintln!("fogconnect nat --server {server}:\n{}", output.text());
    assert_eq!(output.code(), Some(0), "{}", output.text());
    assert_eq!(
        table.lines().next(),
        Some("NAT type: no NAT / open"),
        "{table}"
    );
    let public = row_addr(table, "Public address");
    let local = row_addr(table, "Local address");
    assert_eq!(public.ip(), A1, "{table}");
    assert_eq!(public, local, "{table}");
    assert_eq!(row(table, "UDP"), Some("yes"));
    assert!(
        row(table, "Mapping").is_some_and(|m| m.contains("(EIM)")),
        "{table}"
    );
    assert!(
        row(table, "Filtering").is_some_and(|m| m.contains("(EIF)")),
        "{table}"
    );
    assert_eq!(
        row(table, "NAT"),
        Some("no: the public address is this host's own")
    );
    assert_eq!(row(table, "Hairpinning"), Some("not tested: no NAT"));
    assert_eq!(
        row(table, "Server"),
        Some(format!("{server}, other address {}", fogd.alternate.unwrap()).as_str())
    );
    assert!(!table.contains("Note:"), "{table}");
    // Progress on stderr, one line per finished test.
    assert!(
        output
            .stderr
            .contains("[2/2] filtering tests II and III done"),
        "{}",
        output.text()
    );

    let json = fogconnect_json(fogd.primary, &[]);
    assert_eq!(json["format"], 1);
    assert_eq!(json["behaviour"], "open", "{json:#}");
    assert_eq!(json["summary"], "no NAT / open");
    assert_eq!(json["complete"], true);
    assert_eq!(json["udp"], true);
    assert_eq!(json["public_address"], json["local_address"], "{json:#}");
    assert_eq!(json["nat"]["value"], false);
    assert_eq!(json["mapping"]["value"], "endpoint_independent");
    assert_eq!(json["filtering"]["value"], "endpoint_independent");
    assert_eq!(
        json["server"]["other_address"],
        fogd.alternate.unwrap().to_string()
    );
    assert_eq!(json["stats"]["timed_out"], 0, "{json:#}");
}

#[test]
fn a_name_resolves_and_the_lifetime_test_runs() {
    let fogd = Server::fogd();
    // localhost is in /etc/hosts everywhere the tests run; no DNS is asked.
    let server = format!("localhost:{}", fogd.primary.port());
    let output = fogconnect(&[
        "nat",
        "--server",
        &server,
        "--json",
        "--lifetime",
        "1",
        "--no-hairpin",
        "--samples",
        "0",
    ]);
    assert_eq!(output.code(), Some(0), "{}", output.text());
    let json: Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(json["server"]["name"], server);
    assert_eq!(json["server"]["address"], fogd.primary.to_string());
    assert_eq!(json["behaviour"], "open", "{json:#}");
    // RFC 5780 §4.6 through fogd's RESPONSE-PORT: the control binding is alive after 1 s.
    assert_eq!(json["lifetime"]["tested"], true, "{json:#}");
    assert_eq!(json["lifetime"]["value"]["alive"], true, "{json:#}");
    assert!(json["lifetime"]["value"]["idle_secs"].as_f64().unwrap() >= 1.0);
    assert!(json["duration_secs"].as_f64().unwrap() >= 1.0);
}

#[test]
fn a_one_address_server_leaves_mapping_and_filtering_untested() {
    let fogd = Server::fogd_one_address();
    let output = fogconnect(&["nat", "--server", &fogd.primary.to_string()]);
    let table = &output.stdout;
    // A partial result is a result.
    assert_eq!(output.code(), Some(0), "{}", output.text());
    assert!(
        table.starts_with("NAT type: no NAT / firewall (APDF), assumed where untested\n"),
        "{table}"
    );
    assert_eq!(
        row(table, "Filtering"),
        Some("not tested: the server has only one address")
    );
    assert!(
        table.contains("Note: some tests that apply could not run"),
        "{table}"
    );

    let json = fogconnect_json(fogd.primary, &[]);
    assert_eq!(json["behaviour"], "firewall", "{json:#}");
    assert_eq!(json["complete"], false);
    assert_eq!(json["filtering"]["reason"], "no_other_address");
    assert_eq!(json["server"]["other_address"], Value::Null);
}

#[test]
fn silence_is_udp_blocked_and_exits_0() {
    // A socket that receives and never answers: to the client, UDP is blocked.
    let silent = UdpSocket::bind((A1, 0)).unwrap();
    let server = silent.local_addr().unwrap();
    let output = fogconnect(&["nat", "--server", &server.to_string()]);
    assert_eq!(output.code(), Some(0), "{}", output.text());
    assert!(
        output.stdout.starts_with("NAT type: UDP blocked\n"),
        "{}",
        output.text()
    );
    assert!(
        row(&output.stdout, "UDP").is_some_and(|u| u.starts_with("no: ")),
        "{}",
        output.text()
    );
    // Test I's two transactions, each retransmitted: RFC 5389 §7.2.1 with discovery's Rc 5.
    let mut buf = [0u8; 1500];
    silent.set_nonblocking(true).unwrap();
    let mut requests = 0;
    while silent.recv_from(&mut buf).is_ok() {
        requests += 1;
    }
    assert_eq!(requests, 10, "{}", output.text());
}

#[test]
fn a_timeout_before_the_result_exits_1() {
    let silent = UdpSocket::bind((A1, 0)).unwrap();
    let server = silent.local_addr().unwrap().to_string();
    let output = fogconnect(&["nat", "--server", &server, "--timeout", "0.3", "--json"]);
    assert_eq!(output.code(), Some(1), "{}", output.text());
    assert_eq!(output.stdout, "");
    assert!(
        output
            .stderr
            .contains("fogconnect: error: discovery did not finish within 0.3 s"),
        "{}",
        output.text()
    );
}

#[test]
fn taken_local_ports_move_the_run_to_another_block() {
    let fogd = Server::fogd();
    let seed = 4242;
    // The block `--seed 4242` would use first: its first port is taken.
    let first = DiscoveryConfig::new(fogd.primary, seed).first_port;
    let Ok(_squatter) = UdpSocket::bind(("0.0.0.0", first)) else {
        // Something else holds it already, which is just as good.
        return;
    };
    let json = fogconnect_json(fogd.primary, &["--seed", &seed.to_string()]);
    assert_eq!(json["behaviour"], "open", "{json:#}");
    let local: SocketAddr = json["local_address"].as_str().unwrap().parse().unwrap();
    assert_ne!(local.port(), first);
}

#[test]
fn usage_errors_exit_2_and_run_errors_exit_1() {
    for args in [
        &["nat"][..],
        &["nat", "--server", "127.0.0.1:0"],
        &["nat", "--server", "127.0.0.1", "--samples", "1"],
        &["nat", "--server", "127.0.0.1", "-4", "-6"],
        &["nat", "--server", "a:b:c"],
        &["frobnicate"],
    ] {
        let output = fogconnect(args);
        assert_eq!(output.code(), Some(2), "{args:?}\n{}", output.text());
        assert!(
            output.stderr.contains("error:"),
            "{args:?}\n{}",
            output.text()
        );
    }
    // A literal of the wrong family for -6: a clear message, before any socket.
    let output = fogconnect(&["nat", "--server", "127.0.0.1", "-6"]);
    assert_eq!(output.code(), Some(1), "{}", output.text());
    assert_eq!(
        output.stderr.trim(),
        "fogconnect: error: 127.0.0.1 has no IPv6 address (it has 127.0.0.1); drop -6 to use IPv4"
    );
}
