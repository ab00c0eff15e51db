//! `fogconnect nat --portmap` behind Debian's miniupnpd on fog-test-support's [`upnp_lab`]:
//! fogd's STUN server on the internet namespace's two addresses, `fogconnect nat` in the
//! client namespace. The report must say PCP mapped (and the mapping was deleted after),
//! NAT-PMP and UPnP answered with the router's WAN address.
//!
//! Needs Linux, root, `ip`, `nft` and `miniupnpd`; says SKIPPED without them unless
//! `FOG_REQUIRE_NETNS=1` / `FOG_REQUIRE_INTEROP=1`.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::thread;
use std::time::Duration;

use fog_test_support::ChildGuard;
use fog_test_support::upnp_lab::{OUTSIDE, OUTSIDE_2, ROUTER_LAN, ROUTER_WAN, upnp_lab};
use serde_json::Value;
use support::{fogconnect_exe, fogd_exe};

#[test]
fn nat_portmap_reports_each_method_against_miniupnpd() {
    let Some(lab) = upnp_lab("nat_portmap_reports_each_method_against_miniupnpd") else {
        return;
    };
    let fogd = fogd_exe();
    let mut command = lab.command_in(lab.internet(), Path::new(&fogd));
    command.args([
        "--stun",
        &format!("{OUTSIDE}:3478"),
        "--stun-alt",
        &format!("{OUTSIDE_2}:3479"),
    ]);
    let _fogd = ChildGuard::spawn("fogd", &mut command).expect("starting fogd");
    thread::sleep(Duration::from_millis(300));
    let mut command = lab.command_in(lab.client(), Path::new(&fogconnect_exe()));
    command.args([
        "nat",
        "--server",
        &OUTSIDE.to_string(),
        "--portmap",
        "--json",
        "-q",
        "--samples",
        "0",
        "--no-hairpin",
    ]);
    let mut nat =
        ChildGuard::spawn("fogconnect-nat", &mut command).expect("starting fogconnect nat");
    let status = nat.wait_timeout(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{}", nat.output_text());
    let json: Value = serde_json::from_str(nat.stdout_text().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", nat.output_text()));
    let portmap = &json["portmap"];
    let wan = ROUTER_WAN.to_string();
    assert_eq!(portmap["gateway"], ROUTER_LAN.to_string(), "{portmap:#}");
    assert_eq!(portmap["methods"]["pcp"]["result"], "mapped", "{portmap:#}");
    assert!(
        portmap["methods"]["pcp"]["external"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{wan}:"))),
        "{portmap:#}"
    );
    for method in ["nat-pmp", "upnp"] {
        assert_eq!(
            portmap["methods"][method]["result"], "available",
            "{method}: {portmap:#}"
        );
        assert_eq!(
            portmap["methods"][method]["external_ip"], wan,
            "{method}: {portmap:#}"
        );
    }
    assert_eq!(portmap["mapping"]["method"], "pcp", "{portmap:#}");
    assert_eq!(portmap["mapping"]["public"], true, "{portmap:#}");
    assert_eq!(portmap["deleted"], true, "{portmap:#}");
    // Deleted on the router too.
    assert_eq!(lab.redirects(), "", "miniupnpd still redirects");
    // Discovery ran beside it, through the same router.
    assert_eq!(json["behaviour"], "nat", "{json:#}");
}
