//! A connection across real Linux NATs whose state is flushed mid-transfer (issue 15, part 3):
//! two `fogconnect` nodes, each behind its own router doing nftables `masquerade`, fogd in the
//! "internet" namespace, a `send`/`recv` file transfer over KCP in flight; then `conntrack -F`
//! on both routers forgets every flow. The packets that cross the flush find no entry: the
//! peer's datagrams then arrive unsolicited at a router that has no drop policy on its own
//! input, which records them as a flow of its own, so the host's next datagram to that peer
//! gets a new port (NAT-NOTES). The transfer completes intact on the same connection.
//!
//! ```text
//!  client ns (site k)        router ns                             internet ns
//!  192.0.2.16k+2 ── veth ── 192.0.2.16k+1 | 203.0.113.4k+2 ── veth ── 203.0.113.4k+1
//!                           masquerade out of the WAN side          fogd on lo: 198.51.100.1, .2
//! ```
//!
//! The same lab as `netns.rs` (documentation addresses, inside namespaces the test makes and
//! deletes). It needs Linux, root, `ip`, `nft` and `conntrack` (Debian's conntrack package);
//! without them it says SKIPPED and passes, unless `FOG_REQUIRE_NETNS=1`, as in `.ci/run`.

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

use serde_json::Value;
use support::{ChildGuard, find_tool, fogconnect_exe, fogd_exe};

// TODO: use support::lab once merged (everything down to `wait_for` is netns.rs's lab, cut
// down to IPv4 and plain masquerade).

/// fogd's two addresses, on the internet namespace's loopback.
const SERVER_A1: &str = "198.51.100.1";
const SERVER_A2: &str = "198.51.100.2";
const SIGNAL: &str = "ws://198.51.100.1:7600/ws";
const TURN: &str = "198.51.100.1:3480";
const TURN_SECRET: &str = "netns lab secret";
/// Routers between two sites that the internet namespace stands for (see netns.rs: fog-ice's
/// first check at TTL 3 must die before the peer's router).
const PATH_HOPS: u8 = 8;

#[derive(Debug, Clone, Copy)]
struct Site(u8);

impl Site {
    fn client(self) -> String {
        format!("192.0.2.{}", 16 * self.0 + 2)
    }
    fn router_lan(self) -> String {
        format!("192.0.2.{}", 16 * self.0 + 1)
    }
    fn router_wan(self) -> String {
        format!("203.0.113.{}", 4 * self.0 + 2)
    }
    fn gateway(self) -> String {
        format!("203.0.113.{}", 4 * self.0 + 1)
    }
}

/// The internet namespace, and a router and a client namespace per site; deleted on drop.
struct Lab {
    ip: PathBuf,
    nft: PathBuf,
    conntrack: PathBuf,
    namespaces: Vec<String>,
}

impl Lab {
    fn new(ip: PathBuf, nft: PathBuf, conntrack: PathBuf, sites: u8) -> Result<Self, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "fr{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            ip,
            nft,
            conntrack,
            namespaces: Vec::new(),
        };
        let internet = lab.add_namespace(format!("{prefix}i"))?;
        for address in [SERVER_A1, SERVER_A2] {
            let address = format!("{address}/32");
            lab.ip_cmd(&["-n", &internet, "addr", "add", &address, "dev", "lo"])?;
        }
        lab.ip_cmd(&["-n", &internet, "link", "set", "lo", "up"])?;
        lab.forward(&internet)?;
        lab.nft_in(
            &internet,
            &format!(
                "table ip fogpath {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy accept;\n  ip ttl <= {PATH_HOPS} drop\n }}\n}}\n"
            ),
        )?;
        for k in 0..sites {
            let site = Site(k);
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
                (&internet, format!("{}/30", site.gateway()), &wan_i),
                (&router, format!("{}/30", site.router_wan()), &wan_r),
                (&router, format!("{}/28", site.router_lan()), &lan_r),
                (&client, format!("{}/28", site.client()), &lan_c),
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
            let (lan_gw, wan_gw) = (site.router_lan(), site.gateway());
            lab.ip_cmd(&["-n", &client, "route", "add", "default", "via", &lan_gw])?;
            lab.ip_cmd(&["-n", &router, "route", "add", "default", "via", &wan_gw])?;
            lab.forward(&router)?;
            lab.nft_in(
                &router,
                &format!(
                    "table ip fognat {{\n chain postrouting {{\n  type nat hook postrouting \
                     priority srcnat; policy accept;\n  oifname \"{wan_r}\" masquerade\n \
                     }}\n}}\n"
                ),
            )?;
        }
        Ok(lab)
    }

    fn add_namespace(&mut self, name: String) -> Result<String, String> {
        self.ip_cmd(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    fn internet(&self) -> &str {
        &self.namespaces[0]
    }

    fn router(&self, site: usize) -> &str {
        &self.namespaces[1 + 2 * site]
    }

    fn client(&self, site: usize) -> &str {
        &self.namespaces[2 + 2 * site]
    }

    /// `conntrack -F` on site `site`'s router: every flow through its NAT is forgotten.
    fn flush(&self, site: usize) -> Result<(), String> {
        let mut conntrack = Command::new(&self.conntrack);
        conntrack.arg("-F");
        checked(&mut self.in_ns(self.router(site), &conntrack), None)
    }

    fn forward(&self, ns: &str) -> Result<(), String> {
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        checked(&mut self.in_ns(ns, &sh), None)
    }

    fn nft_in(&self, ns: &str, ruleset: &str) -> Result<(), String> {
        let mut nft = Command::new(&self.nft);
        nft.args(["-f", "-"]);
        checked(&mut self.in_ns(ns, &nft), Some(ruleset))
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        checked(Command::new(&self.ip).args(args), None)
    }

    fn in_ns(&self, ns: &str, command: &Command) -> Command {
        let mut wrapped = Command::new(&self.ip);
        wrapped
            .args(["netns", "exec", ns])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
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

/// A lab of `sites` masquerading sites, or `None` (after saying why) where this host cannot
/// build one and `FOG_REQUIRE_NETNS` is not `1`.
fn lab(test: &str, sites: u8) -> Option<Lab> {
    let attempt = || -> Result<Lab, String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces are Linux's".to_owned());
        }
        if !is_root() {
            return Err("needs root (network namespaces, nftables)".to_owned());
        }
        let ip = find_tool("ip").ok_or("`ip` is not installed (Debian package iproute2)")?;
        let nft = find_tool("nft").ok_or("`nft` is not installed (Debian package nftables)")?;
        let conntrack = find_tool("conntrack")
            .ok_or("`conntrack` is not installed (Debian package conntrack)")?;
        Lab::new(ip, nft, conntrack, sites).map_err(|e| format!("cannot build the lab: {e}"))
    };
    match attempt() {
        Ok(lab) => Some(lab),
        Err(why) => {
            support::skip_or_fail(test, &why, "FOG_REQUIRE_NETNS");
            None
        }
    }
}

/// fogd in the internet namespace: STUN on both addresses, signaling and TURN.
fn start_fogd(lab: &Lab) -> ChildGuard {
    let mut fogd = Command::new(fogd_exe());
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
        TURN_SECRET,
    ]);
    let mut child =
        ChildGuard::spawn("fogd", &mut lab.in_ns(lab.internet(), &fogd)).expect("spawning fogd");
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

/// Polls `done` every 20 ms until it holds; an error naming `what` after `timeout`.
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

// ---- the test ----

/// The JSON events a node printed so far, one per line.
fn json_lines(node: &ChildGuard) -> Vec<Value> {
    node.stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("in")).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes of a pattern that no two offsets of a KCP segment share (xorshift).
fn contents(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// When the flush breaks the direct path, both nodes find it silent within a second, move to
/// a relay pair that answers (their TURN allocations are refreshed, or made again where the
/// flush moved the node's port), and the transfer completes there; the next round of
/// punching waits until the routers' stale state has expired (35 s, beyond this test).
///
/// Ignored for now: it passes about 3 runs in 5 (each in 2–7 s). In the failing runs the
/// flush also cut one node's signaling TCP connection (it reconnects about 3 s later) while
/// the other node trickled its new server-reflexive and relayed candidates: the server could
/// not deliver them, so the reconnected node never pairs with them, its relay pairs all go
/// to the peer's dead addresses, and consent gives up at 30 s (seen with a debug print of the
/// suspicion's verdicts). Re-trickling while a path is suspected was tried and was not
/// enough on its own. Run it with
/// `cargo test -p fog-cli --test netns_roaming -- --ignored --nocapture` (root).
#[test]
#[ignore = "flaky: about 3 runs in 5 pass; see the comment above"]
fn a_transfer_survives_both_routers_forgetting_every_flow() {
    let test = "a_transfer_survives_both_routers_forgetting_every_flow";
    let Some(lab) = lab(test, 2) else {
        return;
    };
    let fogd = start_fogd(&lab);
    let scratch = Scratch::new("fog-netns-roaming");
    let file = scratch.0.join("payload.bin");
    let data = contents(4 << 20);
    fs::write(&file, &data).expect("writing the file");
    let inbox = scratch.0.join("in");
    let node = |command: &str| {
        let mut c = Command::new(fogconnect_exe());
        c.args([
            command,
            "--signal",
            SIGNAL,
            "--stun",
            SERVER_A1,
            "--turn",
            TURN,
            "--json",
            "--timeout",
            "60",
        ]);
        c
    };
    let mut recv = node("recv");
    recv.args(["--alias", "bob", "--count", "1"]).arg(&inbox);
    let mut recv = ChildGuard::spawn("recv", &mut lab.in_ns(lab.client(1), &recv))
        .expect("spawning fogconnect recv");
    let recv_started = Instant::now();
    wait_for("recv to authenticate", Duration::from_secs(10), || {
        fogd.stderr_text().contains("signaling: authenticated")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", recv.output_text(), fogd.output_text()));
    let mut send = node("send");
    send.arg(&file).arg("bob");
    let mut send = ChildGuard::spawn("send", &mut lab.in_ns(lab.client(0), &send))
        .expect("spawning fogconnect send");
    let send_started = Instant::now();
    // Once bytes flow on the direct path, both routers forget everything.
    let all = |nodes: &[&ChildGuard]| {
        nodes
            .iter()
            .map(|n| n.output_text())
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for("the transfer to start", Duration::from_secs(20), || {
        named(&json_lines(&recv), "progress")
            .iter()
            .any(|p| p["bytes"].as_u64().is_some_and(|b| b > 0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", all(&[&send, &recv, &fogd])));
    let flushed = Instant::now();
    for site in 0..2 {
        lab.flush(site).expect("conntrack -F");
    }
    let send_status = send.wait_timeout(Duration::from_secs(60));
    let recv_status = recv.wait_timeout(Duration::from_secs(10));
    let took = flushed.elapsed();
    let output = all(&[&send, &recv, &fogd]);
    eprintln!("{output}");
    assert!(
        send_status.is_some_and(|s| s.success()),
        "send: {send_status:?}"
    );
    assert!(
        recv_status.is_some_and(|s| s.success()),
        "recv: {recv_status:?}"
    );
    let got = fs::read(inbox.join("payload.bin")).expect("the received file");
    assert!(got == data, "the received file differs");
    // One connection from start to end on both sides, never closed under the transfer, whose
    // path moved within 2 s of the flush (`t_ms` counts from the process start, which is at
    // most a few milliseconds after the spawn measured here).
    for (who, node, started) in [("send", &send, send_started), ("recv", &recv, recv_started)] {
        let events = json_lines(node);
        assert_eq!(named(&events, "connected").len(), 1, "{who}: {events:#?}");
        assert!(
            named(&events, "failed").is_empty() && named(&events, "closed").is_empty(),
            "{who} ended: {events:#?}"
        );
        let flush_ms = flushed.duration_since(started).as_secs_f64() * 1e3;
        let moved = named(&events, "path_changed")
            .iter()
            .filter_map(|e| e["t_ms"].as_f64())
            .find(|&t| t > flush_ms);
        eprintln!("{who}: flush at {flush_ms:.0} ms, path moved at {moved:?} ms");
        // Whether the flush breaks the direct path depends on which datagram reaches each
        // router first after it (one from inside keeps the port); when it broke, the path
        // moved within 2 s.
        assert!(
            moved.is_none_or(|t| t - flush_ms <= 2_000.0),
            "{who}: the path moved more than 2 s after the flush at {flush_ms:.0} ms: {events:#?}"
        );
        let progress: Vec<f64> = named(&events, "progress")
            .iter()
            .filter_map(|e| e["t_ms"].as_f64())
            .filter(|&t| t > flush_ms)
            .collect();
        let stall = progress
            .iter()
            .fold((flush_ms, 0f64), |(last, gap), &t| (t, gap.max(t - last)))
            .1;
        eprintln!("{who}: longest wait for progress after the flush: {stall:.0} ms");
    }
    eprintln!("roaming: transfer done {took:?} after both routers' conntrack flush");
}
