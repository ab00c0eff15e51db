//! The namespace lab of the `netns` tests: network namespaces joined by veth pairs, a router
//! namespace per site doing NAT with nftables, fogd (STUN on two addresses, signaling, TURN)
//! in the "internet", and helpers to run `fogconnect` nodes behind the sites and read their
//! `--json` events.
//!
//! ```text
//!  client ns (site k)        router ns                             internet ns
//!  192.0.2.16k+2 ── veth ── 192.0.2.16k+1 | 203.0.113.4k+2 ── veth ── 203.0.113.4k+1
//!                           NAT out of the WAN side                 fogd on lo: 198.51.100.1, .2
//! ```
//!
//! The addresses are the documentation ranges (RFC 5737), inside namespaces the test makes and
//! deletes: nothing leaves the host. Each lab's namespaces and interfaces carry the process ID
//! and a counter, so labs of parallel test threads (and processes) never clash; two labs use
//! the same addresses, each in namespaces of its own.
//!
//! The internet namespace routes between the sites and stands for a path of [`PATH_HOPS`]
//! routers: it drops what would not live that long (see `netns.rs` for why).

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{CLIENT_TIMEOUT, ChildGuard, find_tool, fogconnect_exe, fogd_exe, run_command};

/// fogd's two addresses, on the internet namespace's loopback.
pub(crate) const SERVER_A1: &str = "198.51.100.1";
pub(crate) const SERVER_A2: &str = "198.51.100.2";
/// fogd's signaling and TURN services (on the first address).
pub(crate) const SIGNAL: &str = "ws://198.51.100.1:7600/ws";
pub(crate) const TURN: &str = "198.51.100.1:3480";
pub(crate) const TURN_SECRET: &str = "netns lab secret";
/// Routers between two sites that the internet namespace stands for.
pub(crate) const PATH_HOPS: u8 = 8;

/// Site `k`'s addresses: its LAN is 192.0.2.16k/28, its router's WAN link 203.0.113.4k/30.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site(pub(crate) u8);

impl Site {
    /// At most 16 sites: the /28 LANs fill 192.0.2.0/24.
    pub(crate) const MAX: usize = 16;

    pub(crate) fn client(self) -> String {
        format!("192.0.2.{}", 16 * self.0 + 2)
    }

    pub(crate) fn router_lan(self) -> String {
        format!("192.0.2.{}", 16 * self.0 + 1)
    }

    /// The router's public address: every mapping of its NAT is on it.
    pub(crate) fn router_wan(self) -> String {
        format!("203.0.113.{}", 4 * self.0 + 2)
    }

    /// The internet's end of the WAN link, the router's default gateway.
    pub(crate) fn gateway(self) -> String {
        format!("203.0.113.{}", 4 * self.0 + 1)
    }

    /// With IPv6 (RFC 3849's documentation prefix): the client's global address on its LAN,
    /// 2001:db8:k::/64, which the router routes without translation.
    pub(crate) fn client6(self) -> String {
        // Through Ipv6Addr for the canonical form (2001:db8:0::2 is written 2001:db8::2).
        let address: std::net::Ipv6Addr = format!("2001:db8:{}::2", self.0).parse().unwrap();
        address.to_string()
    }

    pub(crate) fn router_lan6(self) -> String {
        format!("2001:db8:{}::1", self.0)
    }

    /// The router's end of its IPv6 WAN link, 2001:db8:100:k::/64.
    pub(crate) fn router_wan6(self) -> String {
        format!("2001:db8:100:{}::2", self.0)
    }

    pub(crate) fn gateway6(self) -> String {
        format!("2001:db8:100:{}::1", self.0)
    }
}

/// What a site's router does between its LAN and its WAN side.
#[derive(Clone, Copy)]
pub(crate) enum Nat {
    /// `masquerade` out of the WAN side, followed by these flags (`""`, `"random"`,
    /// `"fully-random"`), and new UDP flows to the router itself from the WAN dropped, as
    /// home routers' input firewalls do (see `netns.rs` for why).
    Masquerade(&'static str),
    /// A whole nftables ruleset for the router, made from what names its site.
    Rules(fn(&Router<'_>) -> String),
}

/// What a router's ruleset may refer to.
pub(crate) struct Router<'a> {
    /// Its site (the addresses).
    pub(crate) site: Site,
    /// Its WAN interface, toward the internet.
    pub(crate) wan: &'a str,
    /// Its LAN interface, toward its client.
    pub(crate) lan: &'a str,
}

/// The internet namespace and one client and one router namespace per site, deleted on drop
/// (which also deletes the veth pairs inside them, and the nftables rules with their
/// namespaces).
pub(crate) struct Lab {
    ip: PathBuf,
    nft: PathBuf,
    /// What names this lab's namespaces and interfaces.
    prefix: String,
    /// The internet, then each site's router and client; only those that exist.
    namespaces: Vec<String>,
}

impl Lab {
    /// Builds one site per entry of `nats`, its router loading that entry's ruleset; with
    /// `ipv6`, each site also has IPv6, routed untranslated through a stateful firewall on its
    /// router that lets in only what answers a flow from inside (what a dual-stack home router
    /// does).
    pub(crate) fn new(ip: PathBuf, nft: PathBuf, nats: &[Nat], ipv6: bool) -> Result<Self, String> {
        assert!(
            (1..=Site::MAX).contains(&nats.len()),
            "1 to {} sites",
            Site::MAX
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Interface names have at most 15 bytes; the process ID keeps parallel runs apart.
        let prefix = format!(
            "fc{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            ip,
            nft,
            prefix: prefix.clone(),
            namespaces: Vec::new(),
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
        lab.forward(&internet)?;
        // The path between sites: what would die on PATH_HOPS routers dies here.
        lab.nft_in(
            &internet,
            &format!(
                "table ip fogpath {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy accept;\n  ip ttl <= {PATH_HOPS} drop\n }}\n}}\n"
            ),
        )?;
        for (k, nat) in nats.iter().enumerate() {
            let site = Site(u8::try_from(k).expect("at most 16 sites"));
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
            lab.ip_cmd(&[
                "-n",
                &client,
                "route",
                "add",
                "default",
                "via",
                &site.router_lan(),
            ])?;
            lab.ip_cmd(&[
                "-n",
                &router,
                "route",
                "add",
                "default",
                "via",
                &site.gateway(),
            ])?;
            lab.forward(&router)?;
            let ruleset = match nat {
                Nat::Masquerade(flags) => format!(
                    "table ip fognat {{\n chain postrouting {{\n  type nat hook postrouting \
                     priority srcnat; policy accept;\n  oifname \"{wan_r}\" masquerade {flags}\n \
                     }}\n chain input {{\n  type filter hook input priority filter; policy \
                     accept;\n  iifname \"{wan_r}\" meta l4proto udp ct state new drop\n \
                     }}\n}}\n"
                ),
                Nat::Rules(rules) => rules(&Router {
                    site,
                    wan: &wan_r,
                    lan: &lan_r,
                }),
            };
            lab.nft_in(&router, &ruleset)?;
            if ipv6 {
                lab.add_ipv6(
                    site,
                    [&internet, &router, &client],
                    [&wan_i, &wan_r, &lan_r, &lan_c],
                )?;
            }
        }
        Ok(lab)
    }

    /// Site `site`'s IPv6: addresses (without duplicate address detection, so they work at
    /// once), routes both ways, forwarding, and the router's firewall.
    pub(crate) fn add_ipv6(
        &self,
        site: Site,
        [internet, router, client]: [&str; 3],
        [wan_i, wan_r, lan_r, lan_c]: [&str; 4],
    ) -> Result<(), String> {
        for (ns, address, link) in [
            (internet, format!("{}/64", site.gateway6()), wan_i),
            (router, format!("{}/64", site.router_wan6()), wan_r),
            (router, format!("{}/64", site.router_lan6()), lan_r),
            (client, format!("{}/64", site.client6()), lan_c),
        ] {
            self.ip_cmd(&[
                "-n", ns, "-6", "addr", "add", &address, "dev", link, "nodad",
            ])?;
        }
        let lan = format!("2001:db8:{}::/64", site.0);
        for (ns, to, via) in [
            (client, "default", site.router_lan6()),
            (router, "default", site.gateway6()),
            (internet, lan.as_str(), site.router_wan6()),
        ] {
            self.ip_cmd(&["-n", ns, "-6", "route", "add", to, "via", &via])?;
        }
        for ns in [internet, router] {
            self.run_in(
                ns,
                Command::new("sh").args(["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"]),
            )?;
        }
        self.nft_in(
            router,
            &format!(
                "table ip6 fogfw {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy drop;\n  ct state established,related accept\n  iifname \
                 \"{lan_r}\" accept\n }}\n}}\n"
            ),
        )?;
        // The same path length as IPv4's (once per internet namespace is enough, and a
        // second load of the same table is harmless).
        self.nft_in(
            internet,
            &format!(
                "table ip6 fogpath {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy accept;\n  ip6 hoplimit <= {PATH_HOPS} drop\n }}\n}}\n"
            ),
        )
    }

    /// Makes namespace `name`, recorded at once so that drop deletes it even if a later step
    /// fails.
    pub(crate) fn add_namespace(&mut self, name: String) -> Result<String, String> {
        self.ip_cmd(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    pub(crate) fn internet(&self) -> &str {
        &self.namespaces[0]
    }

    pub(crate) fn router(&self, site: usize) -> &str {
        &self.namespaces[1 + 2 * site]
    }

    pub(crate) fn client(&self, site: usize) -> &str {
        &self.namespaces[2 + 2 * site]
    }

    /// Cables site `site`'s client to site `to`'s router as well, on a second LAN that router
    /// serves with the same addresses as `site`'s own (two home routers that hand out the
    /// same private range), the link still down: [`move_client`](Self::move_client) then
    /// moves the client over. `to`'s client should stay idle: its router now has two LANs.
    pub(crate) fn cable_to(&self, site: usize, to: usize) -> Result<(), String> {
        let (here, there) = (self.move_link(site, 'c'), self.move_link(site, 'r'));
        self.ip_cmd(&["link", "add", &here, "type", "veth", "peer", "name", &there])?;
        self.ip_cmd(&["link", "set", &here, "netns", self.client(site)])?;
        self.ip_cmd(&["link", "set", &there, "netns", self.router(to)])?;
        let own = Site(u8::try_from(site).expect("at most 16 sites"));
        let router = self.router(to);
        self.ip_cmd(&[
            "-n",
            router,
            "addr",
            "add",
            &format!("{}/28", own.router_lan()),
            "dev",
            &there,
        ])?;
        self.ip_cmd(&["-n", router, "link", "set", &there, "up"])
    }

    /// Site `site`'s client leaves its router for the one [`cable_to`](Self::cable_to)
    /// cabled it to, keeping its address: its own LAN link goes down (its routes with it),
    /// the new one comes up with the same address and a default route through the new
    /// router. Sockets bound to the wildcard address keep working, from a new public address.
    pub(crate) fn move_client(&self, site: usize) -> Result<(), String> {
        let own = Site(u8::try_from(site).expect("at most 16 sites"));
        let client = self.client(site);
        let (old, new) = (
            format!("{}l{site}c", self.prefix),
            self.move_link(site, 'c'),
        );
        self.ip_cmd(&["-n", client, "link", "set", &old, "down"])?;
        self.ip_cmd(&[
            "-n",
            client,
            "addr",
            "add",
            &format!("{}/28", own.client()),
            "dev",
            &new,
        ])?;
        self.ip_cmd(&["-n", client, "link", "set", &new, "up"])?;
        self.ip_cmd(&[
            "-n",
            client,
            "route",
            "replace",
            "default",
            "via",
            &own.router_lan(),
            "dev",
            &new,
        ])
    }

    /// The veth end (`c`: client side, `r`: router side) of site `site`'s second LAN.
    fn move_link(&self, site: usize, end: char) -> String {
        format!("{}m{site}{end}", self.prefix)
    }

    /// Drops UDP between sites `a` and `b`'s public addresses in the internet, both ways: the
    /// route between them is broken, each still reaches fogd.
    pub(crate) fn block_udp_between(&self, a: Site, b: Site) -> Result<(), String> {
        let (a, b) = (a.router_wan(), b.router_wan());
        self.nft_in(
            self.internet(),
            &format!(
                "table ip fogblock {{\n chain forward {{\n  type filter hook forward priority \
                 filter; policy accept;\n  ip saddr {{ {a}, {b} }} ip daddr {{ {a}, {b} }} \
                 meta l4proto udp drop\n }}\n}}\n"
            ),
        )
    }

    /// Undoes [`block_udp_between`](Self::block_udp_between).
    pub(crate) fn unblock(&self) -> Result<(), String> {
        let mut nft = Command::new(&self.nft);
        nft.args(["delete", "table", "ip", "fogblock"]);
        self.run_in(self.internet(), &mut nft)
    }

    /// IPv4 forwarding on in `ns` (the sysctl is per namespace).
    pub(crate) fn forward(&self, ns: &str) -> Result<(), String> {
        self.run_in(
            ns,
            Command::new("sh").args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]),
        )
    }

    /// Loads an nftables `ruleset` in `ns`.
    pub(crate) fn nft_in(&self, ns: &str, ruleset: &str) -> Result<(), String> {
        let mut nft = Command::new(&self.nft);
        nft.args(["-f", "-"]);
        checked(&mut self.in_ns(ns, &nft), Some(ruleset))
    }

    pub(crate) fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        checked(Command::new(&self.ip).args(args), None)
    }

    /// `command` run inside namespace `ns` through `ip netns exec`.
    pub(crate) fn in_ns(&self, ns: &str, command: &Command) -> Command {
        let mut wrapped = Command::new(&self.ip);
        wrapped
            .args(["netns", "exec", ns])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }

    pub(crate) fn run_in(&self, ns: &str, command: &mut Command) -> Result<(), String> {
        checked(&mut self.in_ns(ns, command), None)
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
pub(crate) fn checked(command: &mut Command, input: Option<&str>) -> Result<(), String> {
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
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A lab with one site per entry of `masquerades` (the flags of its router's `masquerade`),
/// or `None` (after saying why) where this host cannot build one and `FOG_REQUIRE_NETNS` is
/// not `1`.
pub(crate) fn lab(test: &str, masquerades: &[&'static str]) -> Option<Lab> {
    lab_with(test, masquerades, false)
}

/// [`lab`], with IPv6 beside IPv4 on every site (see [`Lab::new`]).
pub(crate) fn lab_with(test: &str, masquerades: &[&'static str], ipv6: bool) -> Option<Lab> {
    let nats: Vec<Nat> = masquerades.iter().map(|&m| Nat::Masquerade(m)).collect();
    lab_of(test, &nats, ipv6)
}

/// A lab with one site per entry of `nats`, or `None` (after saying why) where this host
/// cannot build one and `FOG_REQUIRE_NETNS` is not `1`.
pub(crate) fn lab_of(test: &str, nats: &[Nat], ipv6: bool) -> Option<Lab> {
    match try_lab(nats, ipv6) {
        Ok(lab) => Some(lab),
        Err(why) => {
            super::skip_or_fail(test, &why, "FOG_REQUIRE_NETNS");
            None
        }
    }
}

/// [`Lab::new`] with the tools found, or why this host cannot build it.
pub(crate) fn try_lab(nats: &[Nat], ipv6: bool) -> Result<Lab, String> {
    if !cfg!(target_os = "linux") {
        return Err("network namespaces are Linux's".to_owned());
    }
    if !is_root() {
        return Err("needs root (network namespaces, nftables)".to_owned());
    }
    let ip = find_tool("ip").ok_or("`ip` is not installed (Debian package iproute2)")?;
    let nft = find_tool("nft").ok_or("`nft` is not installed (Debian package nftables)")?;
    Lab::new(ip, nft, nats, ipv6).map_err(|e| format!("cannot build the lab: {e}"))
}

/// fogd in the lab's internet namespace, STUN on both server addresses and, with `nodes`,
/// signaling and TURN for whole nodes; once it logs that each listens (a probe from the host
/// could not reach it).
pub(crate) fn start_fogd(lab: &Lab, nodes: bool) -> ChildGuard {
    let mut fogd = Command::new(fogd_exe());
    fogd.args([
        "--stun",
        &format!("{SERVER_A1}:3478"),
        "--stun-alt",
        &format!("{SERVER_A2}:3479"),
    ]);
    let mut listening = vec!["STUN listening"];
    if nodes {
        fogd.args([
            "--signal",
            SERVER_A1,
            "--turn",
            TURN,
            "--turn-secret",
            TURN_SECRET,
        ]);
        listening.extend(["signal listening", "TURN listening"]);
    }
    let mut child =
        ChildGuard::spawn("fogd", &mut lab.in_ns(lab.internet(), &fogd)).expect("spawning fogd");
    wait_for("fogd to listen", Duration::from_secs(10), || {
        if let Some(status) = child.try_wait() {
            panic!("fogd exited with {status}\n{}", child.output_text());
        }
        let log = child.stderr_text();
        listening.iter().all(|l| log.contains(l))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.output_text()));
    child
}

/// Polls `done` every 20 ms until it holds; an error naming `what` after `timeout`.
pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `fogconnect nat --json` from site `site`'s client, exited 0, parsed.
pub(crate) fn discover(lab: &Lab, site: usize) -> Value {
    let mut fogconnect = Command::new(fogconnect_exe());
    fogconnect.args(["nat", "--server", SERVER_A1, "--json", "-q"]);
    let output = run_command(
        "fogconnect",
        &mut lab.in_ns(lab.client(site), &fogconnect),
        CLIENT_TIMEOUT,
    );
    assert_eq!(output.code(), Some(0), "{}", output.text());
    let json: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}", output.text()));
    eprintln!("fogconnect nat behind site {site}'s NAT:\n{json:#}");
    json
}

/// Prints when the connecting node was ready and had its first path (and echo), from its
/// process start (`t_ms`): issue 15's start-to-path figure on this lab, whose RTTs are under
/// a millisecond (`cargo test -p fog-cli --test netns -- --nocapture | grep start-to-path`).
pub(crate) fn report_start(events: &[Value]) {
    let at = |name: &str| {
        named(events, name)
            .first()
            .and_then(|e| e["t_ms"].as_f64())
            .map_or("–".to_owned(), |t| format!("{t:.1}"))
    };
    let test = std::thread::current().name().unwrap_or_default().to_owned();
    eprintln!(
        "start-to-path {test}: ready {} ms, connected {} ms, echo {} ms",
        at("ready"),
        at("connected"),
        at("echo")
    );
}

/// The NAT behaviour a node reported last: at `ready` (tests still running assumed the most
/// restrictive) or in a later `nat_updated`.
pub(crate) fn nat_now(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["event"] == "ready" || e["event"] == "nat_updated")
        .filter_map(|e| e["nat"].as_str())
        .next_back()
        .unwrap_or_default()
        .to_owned()
}

/// The `--signal`, `--stun` (and with `turn`, `--turn`) arguments of a node in the lab, and
/// `--json`.
pub(crate) fn node_args(turn: bool) -> Vec<&'static str> {
    let mut args = vec!["--signal", SIGNAL, "--stun", SERVER_A1, "--json"];
    if turn {
        args.extend(["--turn", TURN]);
    }
    args
}

/// `fogconnect serve --alias bob` behind `site`, echoing `count` datagrams, once fogd has
/// authenticated it (which binds the alias). Its discovery may still be running: an offer
/// waits for it.
pub(crate) fn serve(
    lab: &Lab,
    fogd: &ChildGuard,
    site: usize,
    turn: bool,
    count: u32,
) -> ChildGuard {
    let mut command = Command::new(fogconnect_exe());
    command.arg("serve").args(node_args(turn));
    let count = count.to_string();
    command.args(["--alias", "bob", "--count", &count, "--timeout", "55"]);
    let mut serve = ChildGuard::spawn("serve", &mut lab.in_ns(lab.client(site), &command))
        .expect("spawning fogconnect serve");
    wait_for("serve to authenticate", Duration::from_secs(10), || {
        if let Some(status) = serve.try_wait() {
            panic!("serve exited with {status}\n{}", serve.output_text());
        }
        fogd.stderr_text().contains("signaling: authenticated")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", serve.output_text(), fogd.output_text()));
    serve
}

/// `fogconnect connect bob --message MESSAGE` behind `site`, with `extra` arguments.
pub(crate) fn connect(
    lab: &Lab,
    site: usize,
    turn: bool,
    message: &str,
    extra: &[&str],
) -> ChildGuard {
    let mut command = Command::new(fogconnect_exe());
    command.arg("connect").args(node_args(turn));
    command.args(["bob", "--message", message]).args(extra);
    ChildGuard::spawn("connect", &mut lab.in_ns(lab.client(site), &command))
        .expect("spawning fogconnect connect")
}

/// The JSON events a node printed so far, one per line.
pub(crate) fn json_lines(node: &ChildGuard) -> Vec<Value> {
    node.stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The events named `name`.
pub(crate) fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// The one `event` named `name`, or a panic that shows them all.
pub(crate) fn one<'a>(events: &'a [Value], name: &str) -> &'a Value {
    match named(events, name)[..] {
        [event] => event,
        _ => panic!("not exactly one {name} event in {events:#?}"),
    }
}

/// Whether `address` (an `IP:PORT` string) is on `ip`.
pub(crate) fn on(address: &Value, ip: &str) -> bool {
    address
        .as_str()
        .is_some_and(|a| a.starts_with(&format!("{ip}:")))
}

/// Waits for `node` to exit and prints its output and that of `others` (libtest shows it when
/// the test fails); its exit code. Panics if it still runs after `timeout`.
pub(crate) fn exit_code(
    node: &mut ChildGuard,
    timeout: Duration,
    others: &[&ChildGuard],
) -> Option<i32> {
    let status = node.wait_timeout(timeout);
    let all = || {
        std::iter::once(&*node)
            .chain(others.iter().copied())
            .map(ChildGuard::output_text)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status = status.unwrap_or_else(|| panic!("still running after {timeout:?}\n{}", all()));
    eprintln!("{}", all());
    status.code()
}
