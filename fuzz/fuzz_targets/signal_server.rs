//! The signaling server machine fed arbitrary connection events and text frames, and the frame,
//! peer-id and key-file parsers fed arbitrary text.
//!
//! Invariants: nothing panics; every frame the server sends decodes as a `ServerMsg`; nothing is
//! sent on a connection after the server closed it.

#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_signal::identity::{KeyPair, PeerId};
use fog_signal::msg::{ClientMsg, ServerMsg};
use fog_signal::server::{ConnId, Output, Server, ServerConfig};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    Frame(u8, String),
    Wait(u16),
}

fuzz_target!(|input: (u64, String, Vec<Op>)| {
    let (seed, text, ops) = input;
    // Parsers of text that arrives from the network or from users.
    let _ = ClientMsg::decode(&text);
    let _ = ServerMsg::decode(&text);
    let _ = text.parse::<PeerId>();
    let _ = KeyPair::from_key_file(&text);

    let mut seed32 = [0u8; 32];
    seed32[..8].copy_from_slice(&seed.to_le_bytes());
    let mut server = Server::new(ServerConfig::new(
        KeyPair::from_seed(&[7; 32]),
        "fuzz",
        seed32,
    ));
    // The machine never reads a clock; any base instant will do.
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut open: BTreeSet<u8> = BTreeSet::new();
    let mut closed: BTreeSet<u64> = BTreeSet::new();
    for op in ops.into_iter().take(300) {
        match op {
            Op::Connect(c) => {
                if open.insert(c) {
                    closed.remove(&u64::from(c));
                    server.handle_connect(now, ConnId(u64::from(c)));
                }
            }
            Op::Disconnect(c) => {
                if open.remove(&c) {
                    server.handle_disconnect(now, ConnId(u64::from(c)));
                }
            }
            Op::Frame(c, frame) => {
                if open.contains(&c) && !closed.contains(&u64::from(c)) {
                    server.handle_frame(now, ConnId(u64::from(c)), &frame);
                }
            }
            Op::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms));
                server.handle_timeout(now);
            }
        }
        while let Some(out) = server.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    assert!(!closed.contains(&conn.0), "a frame after close on {conn:?}");
                    assert!(
                        ServerMsg::decode(&frame).is_ok(),
                        "undecodable frame {frame:?}"
                    );
                }
                Output::Close { conn, .. } => {
                    closed.insert(conn.0);
                }
            }
        }
    }
});
