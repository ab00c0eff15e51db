//! Port mapping makes two random-port symmetric NATs connect directly: each site's router is a
//! Linux namespace doing `masquerade random` and running Debian's miniupnpd (IGD, NAT-PMP and
//! PCP), fogd (STUN on two addresses, signaling, TURN) is in the "internet".
//!
//! ```text
//!  client ns (site k)           router ns (miniupnpd)                 internet ns
//!  192.168.(77+k).2 ── veth ── 192.168.(77+k).1 | 11.0.(k+1).2 ── veth ── 11.0.(k+1).1
//!                              masquerade random out of the WAN side    fogd on lo: 12.0.0.1, .2
//! ```
//!
//! Without port mapping (`--no-port-mapping`) the pairing oracle leaves such a pair only the
//! relay, and the nodes connect through fogd's TURN server. With it (the default), each node
//! maps its socket on its router (PCP), fogd's probe from its second address comes through the
//! mapping, each offers the `mapped` candidate, and the pair connects directly without any
//! relay configured. Both nodes delete their mappings as they exit.
//!
//! miniupnpd refuses to map while its WAN address is reserved (RFC 1918, 100.64/10,
//! TEST-NETs), so the "internet" here is 11.0.0.0/8 and 12.0.0.0/8, inside namespaces this
//! test makes and deletes: nothing leaves the host. The routers' rulesets are those of
//! fog-test-support's `upnp_lab` (the chains Debian's miniupnpd expects) with `random` on the
//! masquerade; the internet drops what would not survive 8 routers, as in the `netns` tests
//! (fog-ice's low-TTL opening checks must die before the peer's router).
//!
//! Needs Linux, root, `ip`, `nft` and `miniupnpd`; says SKIPPED without them unless
//! `FOG_REQUIRE_NETNS=1` / `FOG_REQUIRE_INTEROP=1`.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ChildGuard, find_tool, fogconnect_exe, fogd_exe, scratch_file, skip_or_fail};

const SERVER_A1: &str = "12.0.0.1";
const SERVER_A2: &str = "12.0.0.2";
const SIGNAL: &str = "ws://12.0.0.1:7600/ws";
const TURN: &str = "12.0.0.1:3480";
const PATH_HOPS: u8 = 8;

fn client_ip(k: usize) -> String {
    format!("192.168.{}.2", 77 + k)
}

fn router_lan(k: usize) -> String {
    format!("192.168.{}.1", 77 + k)
}

fn router_wan(k: usize) -> String {
    format!("11.0.{}.2", k + 1)
}

fn gateway(k: usize) -> String {
    format!("11.0.{}.1", k + 1)
}

/// The namespaces (internet, then router and client per site) and the miniupnpd daemons;
/// killed and deleted on drop.
struct Lab {
    ip: PathBuf,
    nft: PathBuf,
    prefix: String,
    namespaces: Vec<String>,
    daemons: Vec<ChildGuard>,
}

impl Lab {
    fn new(ip: PathBuf, nft: PathBuf) -> Result<Lab, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "fm{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            ip,
            nft,
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            daemons: Vec::new(),
        };
        let internet = lab.add_namespace(format!("{prefix}i"))?;
        for address in [SERVER_A1, SERVER_A2] {
            lab.ip_cmd(&[
                "-n",
                &internet,
                "addr",
                "add",
                &format!("{address}/32"),
                "dev",
                "lo",
            ])?;
        }
        lab.ip_cmd(&["-n", &internet, "link", "set", "lo", "up"])?;
        lab.sh_in(&internet, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
        lab.nft_in(
            &internet,
            &format!(
                "table ip fogpath {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy accept;\n  ip ttl <= {PATH_HOPS} drop\n }}\n}}\n"
            ),
        )?;
        for k in 0..2 {
            let router = lab.add_namespace(format!("{prefix}r{k}"))?;
            let client = lab.add_namespace(format!("{prefix}c{k}"))?;
            let (wan_r, wan_i) = (format!("{prefix}w{k}r"), format!("{prefix}w{k}i"));
            let (lan_c, lan_r) = (format!("{prefix}l{k}c"), format!("{prefix}l{k}r"));
            for (a, b) in [(&wan_r, &wan_i), (&lan_c, &lan_r)] {
                lab.ip_cmd(&["link", "add", a, "type", "veth", "peer", "name", b])?;
            }
            for (link, ns) in [
                (&wan_r, &router),
                (&wan_i, &internet),
                (&lan_c, &client),
                (&lan_r, &router),
            ] {
                lab.ip_cmd(&["link", "set", link, "netns", ns])?;
            }
            for (ns, address, link) in [
                (&internet, format!("{}/30", gateway(k)), &wan_i),
                (&router, format!("{}/30", router_wan(k)), &wan_r),
                (&router, format!("{}/24", router_lan(k)), &lan_r),
                (&client, format!("{}/24", client_ip(k)), &lan_c),
            ] {
                lab.ip_cmd(&["-n", ns, "addr", "add", &address, "dev", link])?;
            }
            for (ns, link) in [
                (&client, "lo"),
                (&client, lan_c.as_str()),
                (&router, "lo"),
                (&router, lan_r.as_str()),
                (&router, wan_r.as_str()),
                (&internet, wan_i.as_str()),
            ] {
                lab.ip_cmd(&["-n", ns, "link", "set", link, "up"])?;
            }
            lab.ip_cmd(&[
                "-n",
                &client,
                "route",
                "add",
                "default",
                "via",
                &router_lan(k),
            ])?;
            lab.ip_cmd(&["-n", &router, "route", "add", "default", "via", &gateway(k)])?;
            // SSDP: the M-SEARCH leaves by the LAN veth, miniupnpd joins the group on it.
            for (ns, link) in [(&client, &lan_c), (&router, &lan_r)] {
                lab.ip_cmd(&["-n", ns, "route", "add", "239.255.255.250/32", "dev", link])?;
            }
            lab.sh_in(&router, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
            lab.nft_in(
                &router,
                &format!(
                    "table inet filter {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname \"{lan_r}\" accept
    jump miniupnpd
  }}
  chain miniupnpd {{ }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname \"{wan_r}\" masquerade random
  }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}
"
                ),
            )?;
        }
        Ok(lab)
    }

    fn router(&self, k: usize) -> &str {
        &self.namespaces[1 + 2 * k]
    }

    fn client(&self, k: usize) -> &str {
        &self.namespaces[2 + 2 * k]
    }

    fn internet(&self) -> &str {
        &self.namespaces[0]
    }

    fn add_namespace(&mut self, name: String) -> Result<String, String> {
        self.ip_cmd(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        checked(Command::new(&self.ip).args(args), None)
    }

    fn sh_in(&self, ns: &str, script: &str) -> Result<(), String> {
        checked(
            Command::new(&self.ip).args(["netns", "exec", ns, "sh", "-c", script]),
            None,
        )
    }

    fn nft_in(&self, ns: &str, ruleset: &str) -> Result<(), String> {
        checked(
            Command::new(&self.ip)
                .args(["netns", "exec", ns])
                .arg(&self.nft)
                .args(["-f", "-"]),
            Some(ruleset),
        )
    }

    /// `program` run in namespace `ns`.
    fn in_ns(&self, ns: &str, program: &Path) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// miniupnpd on site `k`'s router, by hand (never Debian's service or its `nft_init.sh`),
    /// ready once its HTTP port listens.
    /// With `natpmp` off, miniupnpd serves UPnP IGD alone (its `enable_natpmp` also enables
    /// PCP).
    fn start_miniupnpd(&mut self, k: usize, miniupnpd: &Path, natpmp: bool) -> Result<(), String> {
        let natpmp = if natpmp { "yes" } else { "no" };
        let prefix = &self.prefix;
        let conf = scratch_file(&format!("{prefix}-{k}-miniupnpd.conf"));
        let pid = scratch_file(&format!("{prefix}-{k}-miniupnpd.pid"));
        fs::write(
            &conf,
            format!(
                "ext_ifname={prefix}w{k}r\nlistening_ip={prefix}l{k}r\nhttp_port=5000\n\
                 enable_upnp=yes\nenable_natpmp={natpmp}\nsecure_mode=yes\nsystem_uptime=yes\n\
                 min_lifetime=10\nmax_lifetime=3600\n\
                 uuid=3b4c1f2e-0d7a-4a5e-9a61-5f6f0c0ffe{k:02}\n\
                 allow 1024-65535 192.168.{}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                77 + k
            ),
        )
        .map_err(|e| e.to_string())?;
        let router = self.router(k).to_owned();
        let mut command = self.in_ns(&router, miniupnpd);
        command.args(["-d", "-f"]).arg(&conf).arg("-P").arg(&pid);
        let mut daemon = ChildGuard::spawn("miniupnpd", &mut command).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new(&self.ip)
                .args(["netns", "exec", &router, "ss", "-ltnH"])
                .output()
                .map_err(|e| e.to_string())?;
            if String::from_utf8_lossy(&out.stdout).contains(":5000") {
                break;
            }
            if daemon.try_wait().is_some() || Instant::now() > deadline {
                return Err(format!(
                    "miniupnpd did not start:\n{}",
                    daemon.output_text()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.daemons.push(daemon);
        Ok(())
    }

    /// The DNAT rules miniupnpd holds now on site `k`'s router.
    fn redirects(&self, k: usize) -> String {
        let output = Command::new(&self.ip)
            .args(["netns", "exec", self.router(k)])
            .arg(&self.nft)
            .args(["list", "chain", "inet", "filter", "prerouting_miniupnpd"])
            .output()
            .expect("running nft in a router namespace");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains("dnat"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemons.clear();
        for ns in self.namespaces.iter().rev() {
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
        let mut stdin = child.stdin.take().expect("piped");
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

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The lab with miniupnpd on both routers, or `None` after saying why it cannot be built.
fn lab(test: &str, natpmp: bool) -> Option<Lab> {
    let tools = || -> Result<(PathBuf, PathBuf), String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces are Linux's".into());
        }
        if !is_root() {
            return Err("needs root (network namespaces, nftables)".into());
        }
        let ip = find_tool("ip").ok_or("`ip` is not installed (Debian package iproute2)")?;
        let nft = find_tool("nft").ok_or("`nft` is not installed (Debian package nftables)")?;
        Ok((ip, nft))
    };
    let (ip, nft) = match tools() {
        Ok(tools) => tools,
        Err(why) => {
            skip_or_fail(test, &why, "FOG_REQUIRE_NETNS");
            return None;
        }
    };
    let Some(miniupnpd) = find_tool("miniupnpd") else {
        skip_or_fail(
            test,
            "miniupnpd is not installed (Debian package miniupnpd-nftables)",
            "FOG_REQUIRE_INTEROP",
        );
        return None;
    };
    let mut lab = match Lab::new(ip, nft) {
        Ok(lab) => lab,
        Err(why) => {
            skip_or_fail(
                test,
                &format!("cannot build the lab: {why}"),
                "FOG_REQUIRE_NETNS",
            );
            return None;
        }
    };
    for k in 0..2 {
        if let Err(why) = lab.start_miniupnpd(k, &miniupnpd, natpmp) {
            panic!("{test}: {why}");
        }
    }
    Some(lab)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_fogd(lab: &Lab) -> ChildGuard {
    let mut fogd = lab.in_ns(lab.internet(), &fogd_exe());
    fogd.args([
        "--stun",
        &format!("{SERVER_A1}:3478"),
        "--stun-alt",
        &format!("{SERVER_A2}:3479"),
        "--signal",
        SERVER_A1,
        "--turn",
        TURN,
        "--turn-secret",
        "netns portmap secret",
    ]);
    let mut child = ChildGuard::spawn("fogd", &mut fogd).expect("spawning fogd");
    wait_for("fogd to listen", Duration::from_secs(10), || {
        if let Some(status) = child.try_wait() {
            panic!("fogd exited with {status}\n{}", child.output_text());
        }
        let log = child.stderr_text();
        ["STUN listening", "signal listening", "TURN listening"]
            .iter()
            .all(|l| log.contains(l))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.output_text()));
    child
}

/// Node arguments: with `turn`, fogd's relay; without `mapping`, `--no-port-mapping`.
fn node_args(turn: bool, mapping: bool) -> Vec<&'static str> {
    let mut args = vec![
        "--signal",
        SIGNAL,
        "--stun",
        SERVER_A1,
        "--json",
        "--interfaces",
        "none",
    ];
    if turn {
        args.extend(["--turn", TURN]);
    }
    if !mapping {
        args.push("--no-port-mapping");
    }
    args
}

fn json_lines(node: &ChildGuard) -> Vec<Value> {
    node.stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn on(address: &Value, ip: &str) -> bool {
    address
        .as_str()
        .is_some_and(|a| a.starts_with(&format!("{ip}:")))
}

/// The mapped candidates a node reported adding.
fn mapped_added(events: &[Value]) -> Vec<String> {
    named(events, "candidates_changed")
        .iter()
        .flat_map(|e| e["added"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .filter(|a| a.starts_with("mapped "))
        .collect()
}

/// One pair: `serve` behind site 0, `connect` behind site 1; both exited, their events.
fn run_pair(lab: &Lab, fogd: &ChildGuard, turn: bool, mapping: bool) -> (Vec<Value>, Vec<Value>) {
    let authenticated = || {
        fogd.stderr_text()
            .matches("signaling: authenticated")
            .count()
    };
    let before = authenticated();
    // An alias of its own per run: fogd keeps an alias bound to the key that claimed it.
    let alias = if mapping { "mapped" } else { "unmapped" };
    let mut command = lab.in_ns(lab.client(0), &fogconnect_exe());
    command.arg("serve").args(node_args(turn, mapping)).args([
        "--alias",
        alias,
        "--count",
        "1",
        "--timeout",
        "40",
    ]);
    let mut serve = ChildGuard::spawn("serve", &mut command).expect("spawning fogconnect serve");
    wait_for("serve to authenticate", Duration::from_secs(10), || {
        if let Some(status) = serve.try_wait() {
            panic!("serve exited with {status}\n{}", serve.output_text());
        }
        authenticated() > before
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", serve.output_text(), fogd.output_text()));
    if mapping {
        // Serve's mapping made and verified, so that its answer carries it (a later one
        // trickles, which the connection also takes, a round later). UPnP alone comes after
        // PCP's and NAT-PMP's probes time out (1 s).
        wait_for("serve's mapped candidate", Duration::from_secs(8), || {
            !mapped_added(&json_lines(&serve)).is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", serve.output_text()));
        // The router holds the mapping serve offers (gone again after it exits, below).
        let offered = mapped_added(&json_lines(&serve));
        let port = offered
            .first()
            .and_then(|m| m.rsplit(':').next())
            .unwrap_or_else(|| panic!("serve offered no mapping yet\n{}", serve.output_text()))
            .to_owned();
        let rules = lab.redirects(0);
        assert!(
            rules.contains(&format!("dport {port} ")),
            "no DNAT of port {port} on the router: {rules}"
        );
    }
    let mut command = lab.in_ns(lab.client(1), &fogconnect_exe());
    command.arg("connect").args(node_args(turn, mapping)).args([
        alias,
        "--message",
        "hello",
        "--timeout",
        "25",
    ]);
    let mut connect =
        ChildGuard::spawn("connect", &mut command).expect("spawning fogconnect connect");
    let status = connect.wait_timeout(Duration::from_secs(35));
    let served = serve.wait_timeout(Duration::from_secs(10));
    eprintln!(
        "--- connect\n{}\n--- serve\n{}",
        connect.output_text(),
        serve.output_text()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "connect failed (output above)\n{}",
        fogd.output_text()
    );
    assert!(served.is_some_and(|s| s.success()), "serve failed");
    (json_lines(&connect), json_lines(&serve))
}

#[test]
fn port_mapping_connects_two_random_symmetric_nats_directly() {
    let test = "port_mapping_connects_two_random_symmetric_nats_directly";
    let Some(lab) = lab(test, true) else {
        return;
    };
    let fogd = start_fogd(&lab);

    // Without port mapping: random x random has only the relay.
    let (connected, served) = run_pair(&lab, &fogd, true, false);
    for events in [&connected, &served] {
        let nat = named(events, "ready")[0]["nat"]
            .as_str()
            .unwrap_or_default();
        assert!(nat.contains("ports random"), "not a random-port NAT: {nat}");
        assert!(mapped_added(events).is_empty(), "{events:#?}");
    }
    let first = named(&connected, "connected");
    assert_eq!(first.len(), 1, "{connected:#?}");
    assert_eq!(first[0]["via"], "turn", "{:#}", first[0]);
    for k in 0..2 {
        assert_eq!(lab.redirects(k), "", "router {k} maps without being asked");
    }

    // With it, and no relay: each side's verified mapping makes the pair direct.
    let started = Instant::now();
    let (connected, served) = run_pair(&lab, &fogd, false, true);
    let took = started.elapsed();
    for (events, k) in [(&connected, 1), (&served, 0)] {
        let mapped = mapped_added(events);
        assert!(
            mapped
                .iter()
                .any(|m| m.starts_with(&format!("mapped {}:", router_wan(k)))),
            "site {k} offered no mapped candidate on its router's address: {events:#?}"
        );
    }
    let first = named(&connected, "connected");
    assert_eq!(first.len(), 1, "{connected:#?}");
    assert_eq!(first[0]["via"], "direct", "{:#}", first[0]);
    assert!(on(&first[0]["remote"], &router_wan(0)), "{:#}", first[0]);
    let accepted = named(&served, "connected");
    assert_eq!(accepted[0]["via"], "direct", "{:#}", accepted[0]);
    assert!(
        on(&accepted[0]["remote"], &router_wan(1)),
        "{:#}",
        accepted[0]
    );
    eprintln!(
        "random x random with port mapping: direct, connect ran {took:?} (connected at {} ms)",
        first[0]["t_ms"]
    );
    // Both deleted their mappings on the way out.
    for k in 0..2 {
        assert_eq!(
            lab.redirects(k),
            "",
            "router {k} still redirects after exit"
        );
    }
}

/// The same pair with routers that speak UPnP IGD only (no PCP, no NAT-PMP): serve maps
/// through SSDP, the description and SOAP over the TCP connections fog-runtime opens for it
/// (after PCP's and NAT-PMP's probes time out, 1 s), and the pair connects directly on it.
/// `connect` is done before its own UPnP mapping would be (it needs none: one side's mapping
/// is enough). Serve deletes its mapping (DeletePortMapping) within its shutdown.
#[test]
fn upnp_alone_maps_over_the_runtimes_tcp_and_connects_directly() {
    let test = "upnp_alone_maps_over_the_runtimes_tcp_and_connects_directly";
    let Some(lab) = lab(test, false) else {
        return;
    };
    let fogd = start_fogd(&lab);
    let (connected, served) = run_pair(&lab, &fogd, false, true);
    assert!(
        mapped_added(&served)
            .iter()
            .any(|m| m.starts_with(&format!("mapped {}:", router_wan(0)))),
        "serve offered no mapped candidate: {served:#?}"
    );
    let first = named(&connected, "connected");
    assert_eq!(first.len(), 1, "{connected:#?}");
    assert_eq!(first[0]["via"], "direct", "{:#}", first[0]);
    assert!(on(&first[0]["remote"], &router_wan(0)), "{:#}", first[0]);
    assert_eq!(
        lab.redirects(0),
        "",
        "serve's router still redirects after exit"
    );
}
