//! fog-portmap against Debian's miniupnpd (the nftables build), which serves UPnP IGD, NAT-PMP
//! and PCP at once, on a router namespace:
//!
//! ```text
//!  client ns                 router ns (miniupnpd, masquerade)          internet ns
//!  192.168.77.2 ── veth ── 192.168.77.1 | 11.0.0.1 ───────── veth ── 11.0.0.2
//! ```
//!
//! For each method alone, a client maps a UDP port of a socket of its own, a datagram sent
//! from the internet namespace to the mapped external address and port must reach that
//! socket, and after `close` (the mapping deleted) a new flow to the same address must not.
//!
//! miniupnpd refuses to map while its WAN address is reserved (RFC 1918, 100.64/10,
//! TEST-NETs), so the "internet" is 11.0.0.0/24 — inside namespaces this test makes and
//! deletes: nothing leaves the host. It does not create its nftables objects, so the router
//! loads `table inet filter` with the chains Debian's build expects (`miniupnpd`,
//! `prerouting_miniupnpd`, `postrouting_miniupnpd`) jumped to from hooked base chains; the
//! forward chain drops what is neither a reply, from the LAN nor accepted by miniupnpd.
//!
//! The client and the sender run in their namespaces as this test binary again
//! (`ip netns exec <ns> <this binary> --exact <entry>`), told what to do by environment
//! variables, and report on stdout lines starting `PORTMAP `.
//!
//! Needs Linux, root, `ip`, `nft` and `miniupnpd`. Without netns it says SKIPPED, unless
//! `FOG_REQUIRE_NETNS=1`; without miniupnpd likewise, unless `FOG_REQUIRE_INTEROP=1`.

// Tests read the wall clock and use sockets; only the protocol crate must not.
#![allow(clippy::disallowed_methods)]

#[path = "support/driver.rs"]
mod driver;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fog_portmap::{Config, Event, Method, PortMapper};
use fog_test_support::{ChildGuard, find_tool, scratch_file, skip_or_fail};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 2);

const CHILD_VAR: &str = "FOG_PORTMAP_CHILD";
const SEND_VAR: &str = "FOG_PORTMAP_SEND";

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Three namespaces and miniupnpd; all deleted or killed on drop.
struct Lab {
    ip: PathBuf,
    names: [String; 3],
    daemon: Option<ChildGuard>,
}

impl Lab {
    fn client(&self) -> &str {
        &self.names[0]
    }
    fn router(&self) -> &str {
        &self.names[1]
    }
    fn internet(&self) -> &str {
        &self.names[2]
    }

    fn cmd(&self, program: &Path, args: &[&str]) -> Result<(), String> {
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {}: {}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn new(ip: PathBuf, nft: &Path) -> Result<Self, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "fp{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let names = [
            format!("{prefix}c"),
            format!("{prefix}r"),
            format!("{prefix}i"),
        ];
        let mut lab = Self {
            ip,
            names: [String::new(), String::new(), String::new()],
            daemon: None,
        };
        let ip = lab.ip.clone();
        for (k, name) in names.iter().enumerate() {
            lab.cmd(&ip, &["netns", "add", name])?;
            lab.names[k] = name.clone();
        }
        let (c, r, i) = (
            lab.client().to_owned(),
            lab.router().to_owned(),
            lab.internet().to_owned(),
        );
        let (lan_c, lan_r, wan_r, wan_i) = (
            format!("{prefix}lc"),
            format!("{prefix}lr"),
            format!("{prefix}wr"),
            format!("{prefix}wi"),
        );
        lab.cmd(
            &ip,
            &[
                "link", "add", &lan_c, "type", "veth", "peer", "name", &lan_r,
            ],
        )?;
        lab.cmd(
            &ip,
            &[
                "link", "add", &wan_r, "type", "veth", "peer", "name", &wan_i,
            ],
        )?;
        for (link, ns) in [(&lan_c, &c), (&lan_r, &r), (&wan_r, &r), (&wan_i, &i)] {
            lab.cmd(&ip, &["link", "set", link, "netns", ns])?;
        }
        for (ns, addr, link) in [
            (&c, format!("{CLIENT}/24"), &lan_c),
            (&r, format!("{ROUTER_LAN}/24"), &lan_r),
            (&r, format!("{ROUTER_WAN}/24"), &wan_r),
            (&i, format!("{OUTSIDE}/24"), &wan_i),
        ] {
            lab.cmd(&ip, &["-n", ns, "addr", "add", &addr, "dev", link])?;
        }
        for (ns, link) in [
            (&c, "lo"),
            (&c, lan_c.as_str()),
            (&r, "lo"),
            (&r, lan_r.as_str()),
            (&r, wan_r.as_str()),
            (&i, "lo"),
            (&i, wan_i.as_str()),
        ] {
            lab.cmd(&ip, &["-n", ns, "link", "set", link, "up"])?;
        }
        let gw = ROUTER_LAN.to_string();
        lab.cmd(&ip, &["-n", &c, "route", "add", "default", "via", &gw])?;
        // SSDP: the M-SEARCH goes out of the LAN veth, and miniupnpd's socket joins the
        // group on its LAN interface.
        lab.cmd(
            &ip,
            &[
                "-n",
                &c,
                "route",
                "add",
                "239.255.255.250/32",
                "dev",
                &lan_c,
            ],
        )?;
        lab.cmd(
            &ip,
            &[
                "-n",
                &r,
                "route",
                "add",
                "239.255.255.250/32",
                "dev",
                &lan_r,
            ],
        )?;
        // Not sysctl(8): procps is not on a minimal Debian.
        lab.cmd(
            &ip,
            &[
                "netns",
                "exec",
                &r,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ],
        )?;
        let ruleset = format!(
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
    oifname \"{wan_r}\" masquerade
  }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}
"
        );
        let rules = scratch_file(&format!("{prefix}.nft"));
        fs::write(&rules, ruleset).map_err(|e| e.to_string())?;
        lab.cmd(
            &ip,
            &[
                "netns",
                "exec",
                &r,
                &nft.display().to_string(),
                "-f",
                &rules.display().to_string(),
            ],
        )?;
        let _ = (wan_r, lan_r);
        Ok(lab)
    }

    fn start_miniupnpd(&mut self, miniupnpd: &Path) -> Result<(), String> {
        let r = self.router().to_owned();
        let prefix = r.trim_end_matches('r').to_owned();
        let conf = scratch_file(&format!("{prefix}-miniupnpd.conf"));
        let pid = scratch_file(&format!("{prefix}-miniupnpd.pid"));
        fs::write(
            &conf,
            format!(
                "ext_ifname={prefix}wr\nlistening_ip={prefix}lr\nhttp_port=5000\nenable_upnp=yes\nenable_natpmp=yes\n\
                 secure_mode=yes\nsystem_uptime=yes\nmin_lifetime=10\nmax_lifetime=3600\n\
                 uuid=3b4c1f2e-0d7a-4a5e-9a61-5f6f0c0ffee0\n\
                 allow 1024-65535 192.168.77.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.ip);
        command
            .args(["netns", "exec", &r])
            .arg(miniupnpd)
            .args(["-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(&pid);
        let mut daemon = ChildGuard::spawn("miniupnpd", &mut command).map_err(|e| e.to_string())?;
        // Ready once its HTTP port listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new(&self.ip)
                .args(["netns", "exec", &r, "ss", "-ltnH"])
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
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Runs this test binary's `entry` in namespace `ns` with `vars`.
    fn spawn_self(&self, name: &str, ns: &str, entry: &str, vars: &[(&str, String)]) -> ChildGuard {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", ns]).arg(exe).args([
            "--exact",
            entry,
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in vars {
            command.env(k, v);
        }
        ChildGuard::spawn(name, &mut command).expect("spawning the test binary in a namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemon = None;
        for name in self.names.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new(&self.ip).args(["netns", "del", name]).output();
        }
    }
}

/// The lab, or `None` after saying why it cannot be built here.
fn lab(test: &str) -> Option<Lab> {
    let netns = || -> Result<(PathBuf, PathBuf), String> {
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
    let (ip, nft) = match netns() {
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
    let mut lab = match Lab::new(ip, &nft) {
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
    if let Err(why) = lab.start_miniupnpd(&miniupnpd) {
        panic!("{test}: {why}");
    }
    Some(lab)
}

/// Waits until the child's stdout has a line starting with `prefix`; returns the rest.
fn wait_line(child: &mut ChildGuard, prefix: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        // libtest may have written `test client_entry ... ` before it on the same line.
        if let Some(rest) = child
            .stdout_text()
            .lines()
            .find_map(|l| l.find(prefix).map(|at| l[at + prefix.len()..].to_owned()))
        {
            return Ok(rest.trim().to_owned());
        }
        if child.try_wait().is_some() || Instant::now() > deadline {
            return Err(format!("no line `{prefix}`:\n{}", child.output_text()));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn map_and_reach(lab: &Lab, method: Method) {
    let mut client = lab.spawn_self(
        &format!("client-{method}"),
        lab.client(),
        "client_entry",
        &[(CHILD_VAR, method.name().to_owned())],
    );
    let mapped = wait_line(&mut client, "PORTMAP mapped ", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    let external: SocketAddrV4 = mapped
        .parse()
        .unwrap_or_else(|_| panic!("{method}: bad address {mapped}"));
    assert_eq!(
        *external.ip(),
        ROUTER_WAN,
        "{method}: the router's WAN address"
    );
    // From outside, to the mapped address: it must reach the client's socket.
    let mut sender = lab.spawn_self(
        &format!("send-{method}"),
        lab.internet(),
        "send_entry",
        &[(SEND_VAR, format!("{external} hello-{method}"))],
    );
    assert!(
        sender
            .wait_timeout(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        sender.output_text()
    );
    let received = wait_line(&mut client, "PORTMAP received ", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    assert!(
        received.starts_with(&format!("hello-{method} from {OUTSIDE}:")),
        "{method}: {received}"
    );
    // After close the mapping is gone: a new flow from outside does not get in.
    wait_line(&mut client, "PORTMAP closed", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    let mut sender = lab.spawn_self(
        &format!("send2-{method}"),
        lab.internet(),
        "send_entry",
        &[(SEND_VAR, format!("{external} late-{method}"))],
    );
    assert!(
        sender
            .wait_timeout(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        sender.output_text()
    );
    let after = wait_line(&mut client, "PORTMAP after-close ", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    assert_eq!(
        after, "nothing",
        "{method}: the deleted mapping still forwards"
    );
    assert!(
        client
            .wait_timeout(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "{}",
        client.output_text()
    );
}

#[test]
fn miniupnpd_maps_with_pcp_nat_pmp_and_upnp() {
    let Some(lab) = lab("miniupnpd_maps_with_pcp_nat_pmp_and_upnp") else {
        return;
    };
    for method in Method::ALL {
        map_and_reach(&lab, method);
    }
}

#[test]
fn miniupnpd_all_methods_at_once_prefers_pcp() {
    let Some(lab) = lab("miniupnpd_all_methods_at_once_prefers_pcp") else {
        return;
    };
    let mut client = lab.spawn_self(
        "client-all",
        lab.client(),
        "client_entry",
        &[(CHILD_VAR, "all".to_owned())],
    );
    let answers = wait_line(&mut client, "PORTMAP answers ", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    // PCP holds the mapping; NAT-PMP and UPnP answered with the router's address.
    assert_eq!(
        answers,
        format!("pcp=mapped nat-pmp=available:{ROUTER_WAN} upnp=available:{ROUTER_WAN}"),
        "{}",
        client.output_text()
    );
}

/// The client, in the client namespace: maps a fresh socket's port with the method named
/// in `FOG_PORTMAP_CHILD` (or all of them), reports, waits for a datagram, closes, then
/// reports whether anything else arrived.
#[test]
fn client_entry() {
    let Ok(which) = std::env::var(CHILD_VAR) else {
        return;
    };
    let app = UdpSocket::bind((CLIENT, 0)).expect("binding the application socket");
    let SocketAddr::V4(internal) = app.local_addr().unwrap() else {
        unreachable!()
    };
    let mut config = Config::new(ROUTER_LAN, internal, u64::from(internal.port()));
    config.lifetime = Duration::from_secs(120);
    if which != "all" {
        config.methods = Method::ALL
            .into_iter()
            .filter(|m| m.name() == which)
            .collect();
    }
    let mut d = driver::Driver::new(PortMapper::new(Instant::now(), config), CLIENT).unwrap();
    let all = which == "all";
    let mut answers = 0;
    let events = d.run_until(Instant::now() + Duration::from_secs(10), |e| {
        answers += usize::from(matches!(e, Event::Answer { .. }));
        if all {
            answers == Method::ALL.len()
        } else {
            matches!(e, Event::Mapped(_) | Event::NotPublic(_) | Event::Failed)
        }
    });
    eprintln!("events: {events:?}");
    if all {
        let mut line = Vec::new();
        for method in Method::ALL {
            let answer = events.iter().find_map(|e| match e {
                Event::Answer { method: m, answer } if *m == method => Some(answer.clone()),
                _ => None,
            });
            let said = match answer {
                Some(fog_portmap::Answer::Mapped(_)) => "mapped".to_owned(),
                Some(fog_portmap::Answer::Available { external_ip }) => format!(
                    "available:{}",
                    external_ip.map(|i| i.to_string()).unwrap_or_default()
                ),
                Some(fog_portmap::Answer::Failed(e)) => format!("failed:{e}"),
                None => "none".to_owned(),
            };
            line.push(format!("{method}={said}"));
        }
        println!("PORTMAP answers {}", line.join(" "));
    }
    let Some(mapping) = events.iter().find_map(|e| match e {
        Event::Mapped(m) => Some(*m),
        _ => None,
    }) else {
        panic!("no mapping: {events:?}");
    };
    println!("PORTMAP mapped {}", mapping.external);
    if !all {
        app.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = app
            .recv_from(&mut buf)
            .expect("nothing arrived at the mapped port");
        println!(
            "PORTMAP received {} from {from}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    d.mapper.close(Instant::now());
    let events = d.run_until(Instant::now() + Duration::from_secs(5), |e| {
        matches!(e, Event::Closed)
    });
    assert!(events.contains(&Event::Closed), "{events:?}");
    println!("PORTMAP closed");
    if !all {
        app.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1500];
        // The first sender's later copies may still be queued: only the second's count.
        loop {
            match app.recv_from(&mut buf) {
                Ok((n, from)) if buf[..n].starts_with(b"late-") => {
                    println!(
                        "PORTMAP after-close {} from {from}",
                        String::from_utf8_lossy(&buf[..n])
                    );
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    println!("PORTMAP after-close nothing");
                    break;
                }
            }
        }
    }
}

/// The sender, in the internet namespace: sends `FOG_PORTMAP_SEND`'s payload to its address
/// from a fresh port, three times (the first may wait on ARP).
#[test]
fn send_entry() {
    let Ok(what) = std::env::var(SEND_VAR) else {
        return;
    };
    let (to, payload) = what.split_once(' ').expect("address and payload");
    let socket = UdpSocket::bind((OUTSIDE, 0)).expect("binding the sender");
    for _ in 0..3 {
        socket
            .send_to(payload.as_bytes(), to)
            .expect("sending from outside");
        thread::sleep(Duration::from_millis(100));
    }
}
