//! A publish/subscribe hub over FogConnect, with the runtime crate: one hub, any number of
//! subscribers, and publishers whose messages the hub hands to every subscriber. Everything
//! travels over KCP (reliable, ordered messages), so nobody needs to ask twice.
//!
//! ```text
//! cargo run --release -p fogd -- --stun 127.0.0.1:3478 --stun-alt 127.0.0.2:3479 --signal 127.0.0.1:7600 &
//! cargo run --release -p fog-examples --example hub -- serve news &
//! cargo run --release -p fog-examples --example hub -- sub news &
//! cargo run --release -p fog-examples --example hub -- pub news "hello, subscribers"
//! ```
//!
//! `hub serve ALIAS [PUBLICATIONS]` runs the hub (and leaves after that many publications);
//! `hub sub ALIAS` prints the first message and leaves; `hub pub ALIAS MESSAGE` leaves once
//! the hub has handed it on. A subscriber sends `SUB` and hears `SUBSCRIBED`; a publisher
//! sends `PUB <message>` and hears `DELIVERED <n>` after the hub sent `MSG <message>` to its
//! n subscribers. `FOG_SIGNAL` and `FOG_STUN` name the servers, as for `echo`.

// An example program is a driver: it reads the clock (its deadline) and the OS random source
// (the node's key).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::error::Error;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{AcceptPolicy, Event, KeyPair, NodeConfig, Transport};

/// The service number hub connections use.
const SERVICE: u16 = 9;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, alias) = match &args[..] {
        [role, alias, ..] if ["serve", "sub", "pub"].contains(&role.as_str()) => (role, alias),
        _ => {
            return Err(
                "usage: hub serve ALIAS [N] | hub sub ALIAS | hub pub ALIAS MESSAGE".into(),
            );
        }
    };
    let request = match role.as_str() {
        "sub" => "SUB".to_owned(),
        "pub" => format!("PUB {}", args.get(2).ok_or("pub needs a message")?),
        _ => String::new(),
    };
    let leave_after: usize = args
        .get(2)
        .filter(|_| role == "serve")
        .map_or(Ok(0), |n| n.parse())?;
    let signal = std::env::var("FOG_SIGNAL").unwrap_or_else(|_| "ws://127.0.0.1:7600/ws".into());
    let stun = std::env::var("FOG_STUN").unwrap_or_else(|_| "127.0.0.1:3478".into());

    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    let mut node = NodeConfig::new(
        KeyPair::from_seed(&seed),
        "127.0.0.1",
        stun.parse()?,
        "0.0.0.0:0".parse()?,
        0,
    );
    if role == "serve" {
        node.alias = Some(alias.clone());
        node.accept = AcceptPolicy::All;
    }
    let runtime = Runtime::start(RuntimeConfig::new(node, signal.parse()?))?;
    let handle = runtime.handle();

    let mut subscribers = BTreeSet::new();
    let mut publications = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ready, mut up, mut asked) = (false, false, false);
    loop {
        if role != "serve" && Instant::now() > deadline {
            return Err("no answer from the hub within 30 s".into());
        }
        let Ok(event) = runtime.events().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match event {
            Event::Ready { .. } => ready = true,
            Event::SignalingUp => up = true,
            Event::LookupResult {
                peer: Some(peer),
                online: true,
                ..
            } => {
                handle.connect_with(peer, SERVICE, Transport::Kcp)?;
            }
            Event::LookupResult { name, .. } => return Err(format!("{name} is not online").into()),
            Event::Connected { id, .. } if role != "serve" => {
                handle.send(id, request.as_bytes())?
            }
            Event::Data { id, data } if role == "serve" => {
                if data == b"SUB" {
                    subscribers.insert(id);
                    handle.send(id, b"SUBSCRIBED")?;
                    println!("hub: subscriber {} joined", subscribers.len());
                } else if let Some(message) = data.strip_prefix(b"PUB ") {
                    let out = [b"MSG ".as_slice(), message].concat();
                    // A subscriber that left meanwhile is skipped, not counted.
                    let delivered = subscribers
                        .iter()
                        .filter(|&&s| handle.send(s, &out).is_ok())
                        .count();
                    handle.send(id, format!("DELIVERED {delivered}").as_bytes())?;
                    println!(
                        "hub: published \"{}\" to {delivered} subscribers",
                        String::from_utf8_lossy(message)
                    );
                    publications += 1;
                }
            }
            Event::Data { data, .. } => {
                let text = String::from_utf8_lossy(&data);
                if text == "SUBSCRIBED" {
                    println!("subscribed");
                } else if let Some(message) = text.strip_prefix("MSG ") {
                    println!("received: {message}");
                    break;
                } else if let Some(n) = text.strip_prefix("DELIVERED ") {
                    println!("delivered to {n} subscribers");
                    break;
                }
            }
            Event::Closed { id, .. } | Event::Failed { id, .. } if role == "serve" => {
                subscribers.remove(&id);
            }
            Event::Closed { reason, .. } => return Err(reason.to_string().into()),
            Event::Failed { reason, .. } => return Err(reason.to_string().into()),
            _ => {}
        }
        if role == "serve" && leave_after > 0 && publications >= leave_after {
            break;
        }
        if role == "serve" && ready && up && !asked {
            // Registered with its alias: clients can find it from now on.
            println!("hub {alias} ready");
            asked = true;
        }
        if role != "serve" && ready && up && !asked {
            handle.lookup(alias)?;
            asked = true;
        }
    }
    // A graceful shutdown: what was sent arrives before the close.
    runtime.shutdown()?;
    Ok(())
}
