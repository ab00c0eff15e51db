//! Maps a UDP port on this network's router and reports what each method answered.
//!
//! ```sh
//! cargo run -p fog-portmap --example portmap -- [--port N] [--method pcp|nat-pmp|upnp]
//!     [--gateway IPV4] [--hold SECONDS]
//! ```
//!
//! It binds a UDP socket (port N, or any), asks the default gateway (from /proc/net/route
//! unless given) with every method at once (or the one named), prints each method's answer
//! and the mapping, holds it for `--hold` seconds (renewing as needed) while printing any
//! datagram that arrives on the socket, then deletes it.

// A program: it reads the clock and uses sockets.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/driver.rs"]
mod driver;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fog_portmap::{Answer, Config, Event, Method, PortMapper};

fn main() -> ExitCode {
    let mut port = 0u16;
    let mut method: Option<Method> = None;
    let mut gateway: Option<Ipv4Addr> = None;
    let mut hold = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value.as_deref()) {
            ("--port", Some(v)) => v.parse().map(|v| port = v).is_ok(),
            ("--hold", Some(v)) => v.parse().map(|v| hold = v).is_ok(),
            ("--gateway", Some(v)) => v.parse().map(|v| gateway = Some(v)).is_ok(),
            ("--method", Some(v)) => {
                method = Method::ALL.into_iter().find(|m| m.name() == v);
                method.is_some()
            }
            _ => false,
        };
        if !parsed {
            eprintln!(
                "usage: portmap [--port N] [--method pcp|nat-pmp|upnp] [--gateway IPV4] [--hold SECONDS]"
            );
            return ExitCode::from(2);
        }
    }
    let Some(gateway) = gateway.or_else(driver::default_gateway) else {
        eprintln!("no IPv4 default gateway; say --gateway");
        return ExitCode::FAILURE;
    };
    let local_ip = match driver::local_ip_toward(gateway) {
        Ok(ip) => ip,
        Err(e) => {
            eprintln!("no route to {gateway}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match UdpSocket::bind((local_ip, port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot bind {local_ip}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let SocketAddr::V4(internal) = app.local_addr().expect("a bound socket's address") else {
        unreachable!("bound to an IPv4 address")
    };
    let mut config = Config::new(
        gateway,
        internal,
        u64::from(std::process::id()) << 16 | u64::from(internal.port()),
    );
    if let Some(m) = method {
        config.methods = vec![m];
    }
    let count = config.methods.len();
    println!("gateway {gateway}, mapping {internal}");
    let mut d = match driver::Driver::new(PortMapper::new(Instant::now(), config), local_ip) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot bind the control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut answers = 0;
    let mut finished = false;
    let events = d.run_until(Instant::now() + Duration::from_secs(10), |e| {
        answers += usize::from(matches!(e, Event::Answer { .. }));
        finished |= matches!(e, Event::Mapped(_) | Event::NotPublic(_) | Event::Failed);
        finished && answers == count
    });
    let mut mapped = false;
    for event in &events {
        match event {
            Event::Answer { method, answer } => match answer {
                Answer::Mapped(m) => {
                    println!("{method:>8}: mapped {} for {:?}", m.external, m.lifetime)
                }
                Answer::Available { external_ip } => {
                    println!("{method:>8}: answered (external address {external_ip:?}), not used")
                }
                Answer::Failed(e) => println!("{method:>8}: {e}"),
            },
            Event::Mapped(m) => {
                mapped = true;
                println!("reachable at {} (via {})", m.external, m.method);
            }
            Event::NotPublic(m) => println!(
                "mapped {} via {}, but that address is not public (another NAT upstream)",
                m.external, m.method
            ),
            Event::Failed => println!("no method could map the port"),
            _ => {}
        }
    }
    if mapped && hold > 0 {
        let until = Instant::now() + Duration::from_secs(hold);
        let _ = app.set_nonblocking(true);
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            for event in d.run_until(
                (Instant::now() + Duration::from_millis(200)).min(until),
                |_| false,
            ) {
                println!("{event:?}");
            }
            while let Ok((n, from)) = app.recv_from(&mut buf) {
                println!(
                    "{n} bytes from {from}: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
        }
    }
    d.mapper.close(Instant::now());
    let closed = d.run_until(Instant::now() + Duration::from_secs(5), |e| {
        matches!(e, Event::Closed)
    });
    if closed.contains(&Event::Closed) && mapped {
        println!("deleted");
    }
    if mapped {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
