//! Echo over FogConnect on real sockets, with the runtime crate: `echo serve ALIAS` answers
//! every connection and sends back each datagram; `echo connect ALIAS [MESSAGE]` finds the
//! peer by its alias, connects (discovery, signed offer, punching: whatever the NATs allow),
//! sends one datagram, prints the echo and leaves.
//!
//! ```text
//! cargo run --release -p fogd -- --stun 127.0.0.1:3478 --stun-alt 127.0.0.2:3479 --signal 127.0.0.1:7600 &
//! cargo run --release -p fog-examples --example echo -- serve bob &
//! cargo run --release -p fog-examples --example echo -- connect bob hello
//! ```
//!
//! `FOG_SIGNAL` (default `ws://127.0.0.1:7600/ws`) and `FOG_STUN` (default `127.0.0.1:3478`)
//! name the servers.

// An example program is a driver: it reads the clock (its deadline) and the OS random source
// (the node's key).
#![allow(clippy::disallowed_methods)]

use std::error::Error;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{AcceptPolicy, Event, KeyPair, NodeConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, alias) = match &args[..] {
        [mode, alias, ..] if mode == "serve" || mode == "connect" => (mode.as_str(), alias),
        _ => return Err("usage: echo serve ALIAS | echo connect ALIAS [MESSAGE]".into()),
    };
    let message = args.get(2).cloned().unwrap_or_else(|| "hello".into());
    let signal = std::env::var("FOG_SIGNAL").unwrap_or_else(|_| "ws://127.0.0.1:7600/ws".into());
    let stun = std::env::var("FOG_STUN").unwrap_or_else(|_| "127.0.0.1:3478".into());

    // A new identity each run (a real program keeps its key: `KeyPair::to_key_file`).
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    let key = KeyPair::from_seed(&seed);
    // The base socket: the interface that reaches the signaling server, a free port.
    let mut node = NodeConfig::new(key, "127.0.0.1", stun.parse()?, "0.0.0.0:0".parse()?, 0);
    if mode == "serve" {
        node.alias = Some(alias.clone());
        node.accept = AcceptPolicy::All;
    }
    let runtime = Runtime::start(RuntimeConfig::new(node, signal.parse()?))?;
    let handle = runtime.handle();
    println!("peer id {}", handle.peer_id());

    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ready, mut up, mut asked) = (false, false, false);
    loop {
        if mode == "connect" && Instant::now() > deadline {
            return Err("no echo within 30 s".into());
        }
        let Ok(event) = runtime.events().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match event {
            Event::Ready { behaviour, .. } => {
                println!("ready: NAT {behaviour}");
                ready = true;
            }
            Event::SignalingUp => up = true,
            Event::Connected { id, peer, via, .. } => {
                println!("connected to {peer} ({via:?})");
                if mode == "connect" {
                    handle.send(id, message.as_bytes())?;
                }
            }
            Event::Data { id, data } if mode == "serve" => handle.send(id, &data)?,
            Event::Data { data, .. } => {
                println!("echo: {}", String::from_utf8_lossy(&data));
                break;
            }
            Event::LookupResult {
                peer: Some(peer),
                online: true,
                ..
            } => {
                handle.connect(peer, 1)?;
            }
            Event::LookupResult { name, .. } => return Err(format!("{name} is not online").into()),
            Event::Failed { reason, .. } => return Err(reason.to_string().into()),
            _ => {}
        }
        if mode == "connect" && ready && up && !asked {
            handle.lookup(alias)?;
            asked = true;
        }
    }
    runtime.shutdown()?;
    Ok(())
}
