//! `fogconnect nat` behind a real Linux NAT: network namespaces joined by veth pairs, with
//! nftables' `masquerade` on the router, fogd with two addresses in the "internet".
//!
//! ```text
//!  client ns                router ns                                internet ns
//!  192.0.2.2 ── veth ── 192.0.2.1 | 198.51.100.254 ── veth ── 198.51.100.1, 198.51.100.2 (fogd)
//!                          masquerade out of the WAN side
//! ```
//!
//! The addresses are the documentation ranges (RFC 5737), inside namespaces this test makes
//! and deletes: nothing leaves the host. Linux's conntrack NAT keeps one mapping per source
//! while the port is free (EIM), lets in only replies from where a flow went (APDF), keeps the
//! port when it can (preserved) and does not hairpin without a DNAT rule: a port-restricted
//! cone. `masquerade fully-random` draws a new random port for every flow: symmetric.
//!
//! It needs Linux, root, `ip` (iproute2) and `nft` (nftables). Without them the tests say
//! SKIPPED and pass, unless `FOG_REQUIRE_NETNS=1` makes that a failure. CI does not set it.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{CLIENT_TIMEOUT, ChildGuard, find_tool, fogconnect_exe, fogd_exe, run_command};

/// The internet side: fogd's two addresses and the router's.
const SERVER_A1: &str = "198.51.100.1";
const SERVER_A2: &str = "198.51.100.2";
const ROUTER_WAN: &str = "198.51.100.254";
/// The LAN behind the NAT.
const ROUTER_LAN: &str = "192.0.2.1";
const CLIENT: &str = "192.0.2.2";

/// A client, a router and an internet namespace, deleted on drop (which also deletes the veth
/// pairs inside them, and the router's nftables rules with its namespace).
struct Lab {
    ip: PathBuf,
    /// Client, router, internet.
    namespaces: [String; 3],
}

impl Lab {
    /// Builds the lab with `masquerade` followed by `flags` on the router's WAN side.
    fn new(ip: PathBuf, nft: PathBuf, flags: &str) -> Result<Self, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Interface names have at most 15 bytes; the process ID keeps parallel runs apart.
        let prefix = format!(
            "fc{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            ip,
            namespaces: Default::default(),
        };
        let [client, router, internet] = ["c", "r", "i"].map(|s| format!("{prefix}{s}"));
        for name in [&client, &router, &internet] {
            lab.ip_cmd(&["netns", "add", name])?;
            // Recorded as soon as it exists, so that drop deletes it even if a later step fails.
            let slot = lab.namespaces.iter_mut().find(|n| n.is_empty()).unwrap();
            *slot = name.clone();
        }
        let (wan_r, wan_i) = (format!("{prefix}wr"), format!("{prefix}wi"));
        let (lan_c, lan_r) = (format!("{prefix}lc"), format!("{prefix}lr"));
        lab.ip_cmd(&[
            "link", "add", &wan_r, "type", "veth", "peer", "name", &wan_i,
        ])?;
        lab.ip_cmd(&[
            "link", "add", &lan_c, "type", "veth", "peer", "name", &lan_r,
        ])?;
        for (link, ns) in [
            (&wan_r, &router),
            (&wan_i, &internet),
            (&lan_c, &client),
            (&lan_r, &router),
        ] {
            lab.ip_cmd(&["link", "set", link, "netns", ns])?;
        }
        for (ns, address, link) in [
            (&internet, format!("{SERVER_A1}/24"), &wan_i),
            (&internet, format!("{SERVER_A2}/24"), &wan_i),
            (&router, format!("{ROUTER_WAN}/24"), &wan_r),
            (&router, format!("{ROUTER_LAN}/24"), &lan_r),
            (&client, format!("{CLIENT}/24"), &lan_c),
        ] {
            lab.ip_cmd(&["-n", ns, "addr", "add", &address, "dev", link])?;
        }
        for (ns, link) in [
            (&client, "lo"),
            (&client, &lan_c),
            (&router, "lo"),
            (&router, &lan_r),
            (&router, &wan_r),
            (&internet, "lo"),
            (&internet, &wan_i),
        ] {
            lab.ip_cmd(&["-n", ns, "link", "set", link, "up"])?;
        }
        lab.ip_cmd(&["-n", &client, "route", "add", "default", "via", ROUTER_LAN])?;
        // The router forwards; the sysctl is per namespace.
        lab.run_in(
            &router,
            Command::new("sh").args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]),
        )?;
        let ruleset = format!(
            "table ip fognat {{\n chain postrouting {{\n  type nat hook postrouting priority \
             srcnat; policy accept;\n  oifname \"{wan_r}\" masquerade {flags}\n }}\n}}\n"
        );
        let mut nft_cmd = Command::new(nft);
        nft_cmd.args(["-f", "-"]);
        lab.run_in_with_input(&router, &mut nft_cmd, &ruleset)?;
        Ok(lab)
    }

    fn client(&self) -> &str {
        &self.namespaces[0]
    }

    fn internet(&self) -> &str {
        &self.namespaces[2]
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        checked(Command::new(&self.ip).args(args), None)
    }

    /// `command` run inside namespace `ns` through `ip netns exec`.
    fn in_ns(&self, ns: &str, command: &Command) -> Command {
        let mut wrapped = Command::new(&self.ip);
        wrapped
            .args(["netns", "exec", ns])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }

    fn run_in(&self, ns: &str, command: &mut Command) -> Result<(), String> {
        checked(&mut self.in_ns(ns, command), None)
    }

    fn run_in_with_input(
        &self,
        ns: &str,
        command: &mut Command,
        input: &str,
    ) -> Result<(), String> {
        checked(&mut self.in_ns(ns, command), Some(input))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new(&self.ip)
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `command` (with `input` on stdin); an error names it and carries its stderr.
fn checked(command: &mut Command, input: Option<&str>) -> Result<(), String> {
    let describe = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{describe}: {e}"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{describe}: writing stdin: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{describe}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{describe}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether the process runs as root, from /proc (the workspace forbids the `unsafe` of
/// `geteuid`).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A lab with `masquerade flags`, or `None` (after saying why) where this host cannot build
/// one and `FOG_REQUIRE_NETNS` is not `1`.
fn lab(test: &str, flags: &str) -> Option<Lab> {
    let required = std::env::var("FOG_REQUIRE_NETNS").as_deref() == Ok("1");
    let attempt = || -> Result<Lab, String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces are Linux's".to_owned());
        }
        if !is_root() {
            return Err("needs root (network namespaces, nftables)".to_owned());
        }
        let ip = find_tool("ip").ok_or("`ip` is not installed (Debian package iproute2)")?;
        let nft = find_tool("nft").ok_or("`nft` is not installed (Debian package nftables)")?;
        Lab::new(ip, nft, flags).map_err(|e| format!("cannot build the lab: {e}"))
    };
    match attempt() {
        Ok(lab) => Some(lab),
        Err(why) if required => panic!("{test}: {why}, and FOG_REQUIRE_NETNS=1"),
        Err(why) => {
            support::say_skipped(test, &why, "FOG_REQUIRE_NETNS");
            None
        }
    }
}

/// fogd in the lab's internet namespace on both server addresses, once it logs that it
/// listens (a probe from the host could not reach it).
fn start_fogd(lab: &Lab) -> ChildGuard {
    let mut fogd = Command::new(fogd_exe());
    fogd.args([
        "--stun",
        &format!("{SERVER_A1}:3478"),
        "--stun-alt",
        &format!("{SERVER_A2}:3479"),
    ]);
    let mut child =
        ChildGuard::spawn("fogd", &mut lab.in_ns(lab.internet(), &fogd)).expect("spawning fogd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.stderr_text().contains("STUN listening") {
            return child;
        }
        if let Some(status) = child.try_wait() {
            panic!("fogd exited with {status}\n{}", child.output_text());
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("fogd did not start\n{}", child.output_text());
}

/// `fogconnect nat --json` from the client namespace, exited 0, parsed.
fn discover(lab: &Lab) -> Value {
    let mut fogconnect = Command::new(fogconnect_exe());
    fogconnect.args(["nat", "--server", SERVER_A1, "--json", "-q"]);
    let output = run_command(
        "fogconnect",
        &mut lab.in_ns(lab.client(), &fogconnect),
        CLIENT_TIMEOUT,
    );
    assert_eq!(output.code(), Some(0), "{}", output.text());
    let json: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}", output.text()));
    eprintln!("fogconnect nat behind the NAT:\n{json:#}");
    json
}

/// What must hold behind any of the router's masquerades.
fn assert_behind_the_router(json: &Value) {
    assert_eq!(json["behaviour"], "nat", "{json:#}");
    assert_eq!(json["complete"], true, "{json:#}");
    assert_eq!(json["nat"]["value"], true, "{json:#}");
    let local = json["local_address"].as_str().unwrap();
    assert!(local.starts_with(&format!("{CLIENT}:")), "{json:#}");
    let public = json["public_address"].as_str().unwrap();
    assert!(public.starts_with(&format!("{ROUTER_WAN}:")), "{json:#}");
    assert_eq!(json["hairpinning"]["value"], false, "{json:#}");
    assert_eq!(
        json["port_samples"].as_array().unwrap().len(),
        6,
        "{json:#}"
    );
}

#[test]
fn masquerade_is_a_port_restricted_cone() {
    let Some(lab) = lab("masquerade_is_a_port_restricted_cone", "") else {
        return;
    };
    let _fogd = start_fogd(&lab);
    let json = discover(&lab);
    assert_behind_the_router(&json);
    assert_eq!(
        json["summary"], "port-restricted cone (EIM + APDF, ports preserved)",
        "{json:#}"
    );
    assert_eq!(
        json["effective"],
        json!({
            "mapping": "endpoint_independent",
            "filtering": "address_and_port_dependent",
            "port_pattern": {"kind": "preserved"},
            "hairpinning": false,
        })
    );
    // Port preservation: the public port is the local one.
    let port = |key: &str| {
        json[key]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(port("public_address"), port("local_address"), "{json:#}");
}

#[test]
fn masquerade_fully_random_is_symmetric() {
    let Some(lab) = lab("masquerade_fully_random_is_symmetric", "fully-random") else {
        return;
    };
    let _fogd = start_fogd(&lab);
    let json = discover(&lab);
    assert_behind_the_router(&json);
    assert_eq!(
        json["summary"], "symmetric (APDM + APDF, ports random)",
        "{json:#}"
    );
    assert_eq!(json["mapping"]["value"], "address_and_port_dependent");
    assert_eq!(json["port_pattern"]["value"], json!({"kind": "random"}));
}
