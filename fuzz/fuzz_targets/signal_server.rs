//! The signaling server machine fed arbitrary connection events and text frames, and the frame,
//! peer-id and key-file parsers fed arbitrary text.
//!
//! Odd seeds run the machine as one instance of a cluster, with arbitrary answers from the
//! cluster and arbitrary frames forwarded by "other instances" (network input too).
//!
//! Invariants: nothing panics; every frame the server sends (or forwards to the cluster) decodes
//! as a `ServerMsg`; nothing is sent on a connection after the server closed it; the questions
//! to the cluster stay within their limit.

#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_signal::identity::{KeyPair, PeerId};
use fog_signal::msg::{ClientMsg, ServerMsg};
use fog_signal::server::{ClusterOutput, ConnId, Output, QueryId, Server, ServerConfig};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    Frame(u8, String),
    Wait(u16),
    /// A frame another instance forwarded for the peer of key seed `u8`.
    Forwarded(u8, String),
    /// The answer to the `u8`-th question the machine asked.
    Resolved(u8, Option<u8>, bool),
    Claimed(u8, Option<bool>),
    Unreachable(u8),
    Evicted(u8),
}

fn peer(n: u8) -> PeerId {
    KeyPair::from_seed(&[n; 32]).peer_id()
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
    let mut config = ServerConfig::new(KeyPair::from_seed(&[7; 32]), "fuzz", seed32);
    config.cluster = seed & 1 == 1;
    let max_queries = config.limits.max_cluster_queries;
    let mut server = Server::new(config);
    let mut queries: Vec<QueryId> = Vec::new();
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
            Op::Forwarded(p, frame) => {
                server.handle_forwarded(now, peer(p), &frame);
            }
            Op::Resolved(q, p, online) => {
                if let Some(&query) = queries.get(usize::from(q)) {
                    server.handle_resolved(now, query, p.map(peer), online);
                }
            }
            Op::Claimed(q, granted) => {
                if let Some(&query) = queries.get(usize::from(q)) {
                    server.handle_claimed(now, query, granted);
                }
            }
            Op::Unreachable(p) => server.handle_unreachable(now, peer(p)),
            Op::Evicted(p) => server.handle_evicted(now, peer(p)),
        }
        while let Some(out) = server.poll_cluster() {
            match out {
                ClusterOutput::Resolve { query, .. } | ClusterOutput::ClaimAlias { query, .. } => {
                    queries.push(query)
                }
                ClusterOutput::Forward { frame, .. } => assert!(
                    ServerMsg::decode(&frame).is_ok(),
                    "undecodable forward {frame:?}"
                ),
                ClusterOutput::Offer { query, frame, .. } => {
                    queries.push(query);
                    assert!(
                        ServerMsg::decode(&frame).is_ok(),
                        "undecodable offer {frame:?}"
                    );
                }
                ClusterOutput::Presence { .. } => {}
            }
        }
        assert!(server.cluster_queries() <= max_queries);
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
