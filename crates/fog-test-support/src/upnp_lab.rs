//! A router namespace running Debian's miniupnpd (nftables build), which serves UPnP IGD,
//! NAT-PMP and PCP at once, between a client namespace and an "internet" one:
//!
//! ```text
//!  client ns                 router ns (miniupnpd, masquerade)          internet ns
//!  192.168.77.2 ── veth ── 192.168.77.1 | 11.0.0.1 ───────── veth ── 11.0.0.2, 11.0.0.3
//! ```
//!
//! miniupnpd refuses to map while its WAN address is reserved (RFC 1918, 100.64/10,
//! TEST-NETs), so the "internet" is 11.0.0.0/24 — inside namespaces the lab makes and deletes:
//! nothing leaves the host. It does not create its nftables objects, so the router loads
//! `table inet filter` with the chains Debian's build expects (`miniupnpd`,
//! `prerouting_miniupnpd`, `postrouting_miniupnpd`) jumped to from hooked base chains; the
//! forward chain drops what is neither a reply, from the LAN nor accepted by miniupnpd. SSDP
//! needs the veth (not lo) and a route to 239.255.255.250 on both sides. miniupnpd runs by
//! hand (`-d -f <conf>`), never through Debian's service or its broken `nft_init.sh`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ChildGuard, find_tool, scratch_file, skip_or_fail};

/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// The router's LAN address: the client's gateway.
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The router's WAN address: every mapping's external address.
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 1);
/// The internet namespace's first address.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 2);
/// The internet namespace's second address (a STUN server's alternate address).
pub const OUTSIDE_2: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 3);

/// Whether the process runs as root, from /proc (the workspace forbids `unsafe` `geteuid`).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Three namespaces (client, router, internet) and miniupnpd on the router; all deleted or
/// killed on drop.
pub struct UpnpLab {
    ip: PathBuf,
    names: [String; 3],
    daemon: Option<ChildGuard>,
}

impl UpnpLab {
    /// The client namespace (192.168.77.2).
    pub fn client(&self) -> &str {
        &self.names[0]
    }
    /// The router namespace (192.168.77.1 | 11.0.0.1), where miniupnpd runs.
    pub fn router(&self) -> &str {
        &self.names[1]
    }
    /// The internet namespace (11.0.0.2 and 11.0.0.3).
    pub fn internet(&self) -> &str {
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
            (&i, format!("{OUTSIDE_2}/24"), &wan_i),
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

    /// Runs this test binary's test `entry` in namespace `ns` with the environment `vars`.
    pub fn spawn_self(
        &self,
        name: &str,
        ns: &str,
        entry: &str,
        vars: &[(&str, String)],
    ) -> ChildGuard {
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

impl UpnpLab {
    /// A command that runs `program` in namespace `ns`.
    pub fn command_in(&self, ns: &str, program: &Path) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// The DNAT rules miniupnpd holds now (`nft list chain inet filter prerouting_miniupnpd`).
    pub fn redirects(&self) -> String {
        let output = Command::new(&self.ip)
            .args([
                "netns",
                "exec",
                self.router(),
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ])
            .output()
            .expect("running nft in the router namespace");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains("dnat"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for UpnpLab {
    fn drop(&mut self) {
        self.daemon = None;
        for name in self.names.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new(&self.ip).args(["netns", "del", name]).output();
        }
    }
}

/// The lab with miniupnpd running, or `None` after saying why it cannot be built here: fails
/// instead without netns when `FOG_REQUIRE_NETNS=1`, without miniupnpd when
/// `FOG_REQUIRE_INTEROP=1`.
pub fn upnp_lab(test: &str) -> Option<UpnpLab> {
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
    let mut lab = match UpnpLab::new(ip, &nft) {
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
