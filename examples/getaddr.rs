//! What a node is known by, with the runtime crate: its peer ID, its NAT's behaviour and the
//! addresses it would offer a peer (host, server-reflexive; relayed with `FOG_TURN`), once
//! discovery knows enough to connect.
//!
//! ```text
//! cargo run --release -p fogd -- --stun 127.0.0.1:3478 --stun-alt 127.0.0.2:3479 --signal 127.0.0.1:7600 &
//! cargo run --release -p fog-examples --example getaddr
//! ```
//!
//! `FOG_SIGNAL` (default `ws://127.0.0.1:7600/ws`), `FOG_STUN` (default `127.0.0.1:3478`) and
//! `FOG_TURN` (none by default) name the servers.

// An example program is a driver: it draws the node's key from the OS.
#![allow(clippy::disallowed_methods)]

use std::error::Error;
use std::time::Duration;

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{Event, KeyPair, NodeConfig};

fn main() -> Result<(), Box<dyn Error>> {
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
    node.turn = std::env::var("FOG_TURN")
        .ok()
        .map(|t| t.parse())
        .transpose()?;
    let relay = node.turn.is_some();
    let runtime = Runtime::start(RuntimeConfig::new(node, signal.parse()?))?;
    let handle = runtime.handle();
    println!("peer id: {}", handle.peer_id());
    println!("candidate host {}", handle.local_addr());
    loop {
        match runtime.events().recv_timeout(Duration::from_secs(10))? {
            Event::Ready { behaviour, public } => {
                println!("nat: {behaviour}");
                if let Some(public) = public {
                    println!("candidate srflx {public}");
                }
                // With a relay, its address follows (`RelayReady`); without, this is all.
                if !relay {
                    break;
                }
            }
            Event::RelayReady { relayed } => {
                println!("candidate relay {relayed}");
                break;
            }
            _ => {}
        }
    }
    runtime.shutdown()?;
    Ok(())
}
