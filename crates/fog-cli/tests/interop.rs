//! Our discovery against independent servers, next to independent clients against the same
//! servers, on loopback with two addresses (127.0.0.1 and 127.0.0.2). Loopback has no NAT, so
//! every client must see an open path, and `fogconnect nat` must agree with the others about
//! mapping and filtering at each server:
//!
//! | server | `fogconnect nat` | `turnutils_natdiscovery -m -f` | classic `stun` |
//! |---|---|---|---|
//! | coturn's `turnserver --stun-only` (RFC 5780) | open, EIM, EIF | EIM, EIF | Open |
//! | `stund` (RFC 3489: CHANGED-ADDRESS, no OTHER-ADDRESS) | open, EIM, EIF | no verdict | Open |
//! | `fogd` | open, EIM, EIF | EIM, EIF | Open |
//!
//! natdiscovery is not run against stund: without OTHER-ADDRESS it reports the reflexive address
//! and no verdict (fogd's interop tests say the same). Our discovery reads stund's RFC 3489
//! CHANGED-ADDRESS instead, so it runs the filtering tests there too. The clients' side against
//! fogd alone is in fogd's tests; here each server is asked by all the clients at once.
//!
//! The tools come from Debian's coturn, stun-client and stun-server packages (`.ci/run` installs
//! them). Without them each test says SKIPPED and passes, unless `FOG_REQUIRE_INTEROP=1`, which
//! CI sets, makes a missing tool a failure.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{A1, FogdServer, Server, ToolOutput, fogconnect_json, interop_tools, run_tool};

/// An independent client run gets this long; each finishes in about a second on loopback.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Mapping and filtering in RFC 4787's short terms, as one client saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    mapping: String,
    filtering: String,
}

impl Verdict {
    fn open() -> Self {
        Self {
            mapping: "EIM".to_owned(),
            filtering: "EIF".to_owned(),
        }
    }
}

/// `fogconnect nat --json` against `server`: checks what it must say on loopback and returns its
/// verdict.
fn fogconnect_verdict(server: &Server) -> (Verdict, Value) {
    let json = fogconnect_json(server.primary, &[]);
    eprintln!(
        "fogconnect nat --server {} --json:\n{json:#}",
        server.primary
    );
    assert_eq!(json["behaviour"], "open", "{json:#}");
    assert_eq!(json["summary"], "no NAT / open", "{json:#}");
    assert_eq!(json["complete"], true, "{json:#}");
    assert_eq!(json["public_address"], json["local_address"], "{json:#}");
    let public: SocketAddr = json["public_address"].as_str().unwrap().parse().unwrap();
    assert_eq!(public.ip(), A1, "{json:#}");
    assert_eq!(
        json["server"]["other_address"],
        server.alternate.unwrap().to_string(),
        "{json:#}"
    );
    assert_eq!(json["stats"]["timed_out"], 0, "{json:#}");
    // The JSON's behaviour codes in RFC 4787's short terms, with the letter of the test.
    let short = |value: &Value, letter: &str| {
        let prefix = match value["value"].as_str() {
            Some("endpoint_independent") => "EI",
            Some("address_dependent") => "AD",
            Some("address_and_port_dependent") => "APD",
            _ => panic!("untested or unknown: {value}"),
        };
        format!("{prefix}{letter}")
    };
    let verdict = Verdict {
        mapping: short(&json["mapping"], "M"),
        filtering: short(&json["filtering"], "F"),
    };
    (verdict, json)
}

/// `turnutils_natdiscovery -m -f` against `server`: the verdict of its final "NAT with ...
/// Mapping!" and "... Filtering!" lines.
fn natdiscovery_verdict(natdiscovery: &Path, server: SocketAddr) -> (Verdict, ToolOutput) {
    let args = [
        "-m".to_owned(),
        "-f".to_owned(),
        "-p".to_owned(),
        server.port().to_string(),
        server.ip().to_string(),
    ];
    let output = run_tool(natdiscovery, &args, CLIENT_TIMEOUT);
    eprintln!(
        "turnutils_natdiscovery -m -f against {server}:\n{}",
        output.text()
    );
    assert!(
        output.status.is_some_and(|s| s.success()),
        "natdiscovery failed\n{}",
        output.text()
    );
    let last = |test: &str| {
        output
            .stdout
            .lines()
            .rev()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("NAT with ")?
                    .strip_suffix(&format!(" {test}!"))
            })
            .map(|words| {
                match words {
                    "Endpoint Independent" => "EI",
                    "Address Dependent" => "AD",
                    "Address and Port Dependent" => "APD",
                    other => other,
                }
                .to_owned()
            })
            .unwrap_or_else(|| "no verdict".to_owned())
    };
    let verdict = Verdict {
        mapping: format!("{}M", last("Mapping")),
        filtering: format!("{}F", last("Filtering")),
    };
    (verdict, output)
}

/// The classic RFC 3489 client `stun HOST:PORT` against `server`: its "Primary:" line.
fn classic_stun(stun: &Path, server: SocketAddr) -> String {
    // `stun HOST:PORT`; its `-p` is the client's source port, not the server's.
    let output = run_tool(stun, &[server.to_string()], CLIENT_TIMEOUT);
    eprintln!("stun {server}:\n{}", output.text());
    output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .find_map(|l| l.trim().strip_prefix("Primary: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no Primary: line from stun\n{}", output.text()))
}

#[test]
fn fogconnect_agrees_with_natdiscovery_and_stun_at_coturn() {
    let Some([turnserver, natdiscovery, stun]) = interop_tools(
        "fogconnect_agrees_with_natdiscovery_and_stun_at_coturn",
        ["turnserver", "turnutils_natdiscovery", "stun"],
    ) else {
        return;
    };
    let coturn = Server::coturn(&turnserver);
    let (ours, _) = fogconnect_verdict(&coturn);
    let (theirs, _) = natdiscovery_verdict(&natdiscovery, coturn.primary);
    assert_eq!(ours, Verdict::open());
    assert_eq!(
        ours, theirs,
        "fogconnect and natdiscovery disagree at coturn"
    );
    // RFC 3489's "Open Internet" is RFC 4787's no NAT, EIM and EIF.
    assert_eq!(classic_stun(&stun, coturn.primary), "Open");
}

#[test]
fn fogconnect_agrees_with_stun_at_stund() {
    let Some([stund, stun]) =
        interop_tools("fogconnect_agrees_with_stun_at_stund", ["stund", "stun"])
    else {
        return;
    };
    let stund = Server::stund(&stund);
    // Every answer of stund's is RFC 3489 (MAPPED-ADDRESS, CHANGED-ADDRESS, SOURCE-ADDRESS),
    // so this run goes through the wire layer's RFC 3489 decoding end to end.
    let (ours, json) = fogconnect_verdict(&stund);
    assert_eq!(ours, Verdict::open());
    assert_eq!(json["address_rewriting"], false, "{json:#}");
    assert_eq!(classic_stun(&stun, stund.primary), "Open");
}

#[test]
fn fogconnect_agrees_with_natdiscovery_and_stun_at_fogd() {
    let Some([natdiscovery, stun]) = interop_tools(
        "fogconnect_agrees_with_natdiscovery_and_stun_at_fogd",
        ["turnutils_natdiscovery", "stun"],
    ) else {
        return;
    };
    let fogd = Server::fogd();
    let (ours, _) = fogconnect_verdict(&fogd);
    let (theirs, _) = natdiscovery_verdict(&natdiscovery, fogd.primary);
    assert_eq!(ours, Verdict::open());
    assert_eq!(ours, theirs, "fogconnect and natdiscovery disagree at fogd");
    assert_eq!(classic_stun(&stun, fogd.primary), "Open");
}
