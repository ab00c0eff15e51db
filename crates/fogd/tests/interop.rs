//! Independent STUN clients against fogd and against independent servers, on loopback with two
//! addresses (127.0.0.1 and 127.0.0.2; on Linux all of 127/8 is local). Loopback has no NAT, so
//! every client must see an open path, and must say the same of fogd as of the reference servers.
//!
//! - coturn's RFC 5780 client `turnutils_natdiscovery -m -f` against fogd and against coturn's
//!   `turnserver --stun-only`: endpoint-independent mapping and filtering from both.
//! - the classic RFC 3489 client `stun` (Debian's stun-client, Vovida 0.97) against fogd,
//!   against `stund` (stun-server, the same code base) and against `turnserver`: "Open" from all
//!   three, with the same output and exit status.
//!
//! `turnutils_natdiscovery` is not run against `stund`: stund answers with RFC 3489's
//! CHANGED-ADDRESS but not RFC 5780's OTHER-ADDRESS, so natdiscovery reports the reflexive
//! address and no verdict; there is nothing to compare.
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

use support::{Fogd, Server, ToolOutput, interop_tools};

/// A client run gets this long; each finishes in about a second on loopback.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `turnutils_natdiscovery` concluded: its verdict lines, in order.
#[derive(Debug, PartialEq, Eq)]
struct NatDiscovery {
    verdicts: Vec<String>,
}

impl NatDiscovery {
    fn run(natdiscovery: &Path, server: SocketAddr, extra: &[&str]) -> (Self, ToolOutput) {
        let mut args: Vec<String> = ["-m", "-f"].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "-p".to_owned(),
            server.port().to_string(),
            server.ip().to_string(),
        ]);
        let output = support::run_tool(natdiscovery, &args, CLIENT_TIMEOUT);
        let verdicts = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("NAT with") || l.starts_with("No NAT") || l.contains("ALG"))
            .map(String::from)
            .collect();
        (Self { verdicts }, output)
    }

    /// The behaviour of the final "NAT with ... Mapping!" (or Filtering) line.
    fn behaviour(&self, test: &str) -> Option<&str> {
        self.verdicts.iter().rev().find_map(|l| {
            l.strip_prefix("NAT with ")?
                .strip_suffix(&format!(" {test}!"))
        })
    }
}

#[test]
fn natdiscovery_sees_no_nat_at_fogd_as_at_coturn() {
    let Some([natdiscovery, turnserver]) = interop_tools(
        "natdiscovery_sees_no_nat_at_fogd_as_at_coturn",
        ["turnutils_natdiscovery", "turnserver"],
    ) else {
        return;
    };
    let fogd = Fogd::start(&[]);
    let coturn = Server::coturn(&turnserver);

    // As the issue runs it (local socket on the wildcard address), and bound to 127.0.0.1, with
    // which natdiscovery can also tell that the reflexive address is its own ("No NAT!").
    for extra in [&[][..], &["-L", "127.0.0.1"][..]] {
        let (ours, ours_output) = NatDiscovery::run(&natdiscovery, fogd.primary, extra);
        let (theirs, theirs_output) = NatDiscovery::run(&natdiscovery, coturn.primary, extra);
        eprintln!(
            "natdiscovery -m -f {extra:?} against fogd:\n{}",
            ours_output.text()
        );
        eprintln!(
            "natdiscovery -m -f {extra:?} against turnserver:\n{}",
            theirs_output.text()
        );
        let context = format!(
            "{extra:?}\n--- fogd ---\n{}\n--- turnserver ---\n{}",
            ours_output.text(),
            theirs_output.text()
        );
        assert!(
            ours_output.status.is_some_and(|s| s.success()),
            "natdiscovery against fogd failed: {context}"
        );
        assert_eq!(
            ours.behaviour("Mapping"),
            Some("Endpoint Independent"),
            "{context}"
        );
        assert_eq!(
            ours.behaviour("Filtering"),
            Some("Endpoint Independent"),
            "{context}"
        );
        assert!(
            !ours.verdicts.iter().any(|v| v.contains("ALG detected")),
            "{context}"
        );
        assert_eq!(ours, theirs, "fogd and turnserver disagree: {context}");
    }
    let stats = fogd.stop();
    assert!(stats.get("answered") >= 4, "{stats:?}");
    assert_eq!(stats.get("rate_limited"), 0);
}

/// The classic client's summary: its whole output (version, "Primary: <type>", the return
/// value) and its exit status, which encodes the same type.
fn classic_stun(stun: &Path, server: SocketAddr) -> (String, Option<i32>) {
    // `stun HOST:PORT`; its `-p` is the client's source port, not the server's.
    let output = support::run_tool(stun, &[server.to_string()], CLIENT_TIMEOUT);
    (output.text(), output.status.and_then(|s| s.code()))
}

#[test]
fn classic_stun_client_says_open_at_fogd_as_at_stund_and_coturn() {
    let Some([stun, stund, turnserver]) = interop_tools(
        "classic_stun_client_says_open_at_fogd_as_at_stund_and_coturn",
        ["stun", "stund", "turnserver"],
    ) else {
        return;
    };
    let fogd = Fogd::start(&[]);
    let stund = Server::stund(&stund);
    let coturn = Server::coturn(&turnserver);

    let ours = classic_stun(&stun, fogd.primary);
    let at_stund = classic_stun(&stun, stund.primary);
    let at_coturn = classic_stun(&stun, coturn.primary);
    eprintln!("stun against fogd ({:?}):\n{}", ours.1, ours.0);
    eprintln!("stun against stund ({:?}):\n{}", at_stund.1, at_stund.0);
    eprintln!(
        "stun against turnserver ({:?}):\n{}",
        at_coturn.1, at_coturn.0
    );

    let primary = ours.0.lines().find(|l| l.starts_with("Primary:"));
    assert_eq!(
        primary.map(str::trim),
        Some("Primary: Open"),
        "against fogd:\n{}",
        ours.0
    );
    assert_eq!(ours, at_stund, "fogd and stund disagree");
    assert_eq!(ours, at_coturn, "fogd and turnserver disagree");
    let stats = fogd.stop();
    // The client's tests I–III and its hairpin test, all in RFC 3489 form.
    assert!(stats.get("classic") >= 4, "{stats:?}");
    assert_eq!(stats.get("rate_limited"), 0);
}
