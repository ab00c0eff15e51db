//! fog-portmap against Debian's miniupnpd (the nftables build), which serves UPnP IGD, NAT-PMP
//! and PCP at once, on the router namespace of fog-test-support's [`upnp_lab`] (its docs say
//! how the lab is built and what miniupnpd needs).
//!
//! For each method alone, a client maps a UDP port of a socket of its own, a datagram sent
//! from the internet namespace to the mapped external address and port must reach that
//! socket, and after `close` (the mapping deleted) a new flow to the same address must not.
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

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use fog_portmap::{Config, Event, Method, PortMapper};
use fog_test_support::ChildGuard;
use fog_test_support::upnp_lab::{CLIENT, OUTSIDE, ROUTER_LAN, ROUTER_WAN, UpnpLab, upnp_lab};

const CHILD_VAR: &str = "FOG_PORTMAP_CHILD";
const SEND_VAR: &str = "FOG_PORTMAP_SEND";

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

fn map_and_reach(lab: &UpnpLab, method: Method) {
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
    let Some(lab) = upnp_lab("miniupnpd_maps_with_pcp_nat_pmp_and_upnp") else {
        return;
    };
    for method in Method::ALL {
        map_and_reach(&lab, method);
    }
}

#[test]
fn miniupnpd_all_methods_at_once_prefers_pcp() {
    let Some(lab) = upnp_lab("miniupnpd_all_methods_at_once_prefers_pcp") else {
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

#[test]
fn miniupnpd_renews_with_each_method() {
    let Some(lab) = upnp_lab("miniupnpd_renews_with_each_method") else {
        return;
    };
    let mut client = lab.spawn_self(
        "client-renew",
        lab.client(),
        "renew_entry",
        &[(CHILD_VAR, "renew".to_owned())],
    );
    for method in Method::ALL {
        let line = wait_line(
            &mut client,
            &format!("PORTMAP renewed {method} "),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let times: Vec<&str> = line.split_whitespace().collect();
        // Mapped, then renewed once at half the 20 s lifetime: the same external address.
        assert_eq!(times.len(), 3, "{method}: {line}");
        assert_eq!(
            times[0], times[1],
            "{method}: the renewal moved the mapping: {line}"
        );
        let after: f64 = times[2].parse().unwrap();
        assert!(
            (9.5..12.0).contains(&after),
            "{method}: renewed after {after} s"
        );
    }
    assert!(
        client
            .wait_timeout(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        client.output_text()
    );
}

/// Maps a port with each method at once (a socket and a mapper each, on threads), asking for
/// 20 s, and reports each method's first two external addresses and when the second came.
#[test]
fn renew_entry() {
    if std::env::var(CHILD_VAR).as_deref() != Ok("renew") {
        return;
    }
    let threads: Vec<_> = Method::ALL
        .into_iter()
        .map(|method| {
            thread::spawn(move || {
                let app = UdpSocket::bind((CLIENT, 0)).expect("binding the application socket");
                let SocketAddr::V4(internal) = app.local_addr().unwrap() else {
                    unreachable!()
                };
                let mut config = Config::new(ROUTER_LAN, internal, u64::from(internal.port()));
                config.lifetime = Duration::from_secs(20);
                config.methods = vec![method];
                let started = Instant::now();
                let mut d = driver::Driver::new(PortMapper::new(started, config), CLIENT).unwrap();
                let mut mapped = Vec::new();
                let mut second_at = None;
                d.run_until(started + Duration::from_secs(16), |e| {
                    if let Event::Mapped(m) = e {
                        mapped.push(m.external);
                        if mapped.len() == 2 {
                            second_at = Some(started.elapsed());
                        }
                    }
                    mapped.len() == 2
                });
                d.mapper.close(Instant::now());
                d.run_until(Instant::now() + Duration::from_secs(5), |e| {
                    matches!(e, Event::Closed)
                });
                let [first, second] = mapped[..] else {
                    panic!("{method}: mapped {mapped:?}");
                };
                println!(
                    "\nPORTMAP renewed {method} {first} {second} {:.2}",
                    second_at.unwrap_or_default().as_secs_f64()
                );
                drop(app);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a mapper thread");
    }
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
