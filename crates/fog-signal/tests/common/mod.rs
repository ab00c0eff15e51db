//! A virtual-time harness: clients and the server machine joined by reliable, ordered links with a
//! one-way delay per client, driven by frames and timestamps only.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fog_signal::KeyPair;
use fog_signal::client::{Client, ClientConfig, Event};
use fog_signal::msg::{Candidate, CandidateKind, Credentials, Description, ServerMsg, Transport};
use fog_signal::server::{ConnId, Output, Server, ServerConfig};

pub const REALM: &str = "signal.test";

enum Hop {
    ToServer(ConnId, String),
    ToClient(usize, String),
}

pub struct Node {
    pub conn: ConnId,
    pub client: Client,
    pub delay: Duration,
    pub events: Vec<Event>,
    pub closed: Option<u16>,
}

pub struct Net {
    pub server: Server,
    pub now: Instant,
    pub nodes: Vec<Node>,
    queue: BTreeMap<(Instant, u64), Hop>,
    seq: u64,
    /// Outputs for connections that are not nodes (raw attackers), in order.
    pub raw: BTreeMap<ConnId, Vec<Output>>,
}

/// The virtual epoch: one real instant, then only offsets from it (quinn-proto's tests do the same).
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    Instant::now()
}

pub fn server_config() -> ServerConfig {
    ServerConfig::new(KeyPair::from_seed(&[200; 32]), REALM, [1; 32])
}

impl Net {
    pub fn new(config: ServerConfig) -> Self {
        Net {
            server: Server::new(config),
            now: epoch(),
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            raw: BTreeMap::new(),
        }
    }

    /// Adds a node with key seed `n`, connects it and runs the handshake to quiet.
    pub fn join(&mut self, n: u8, alias: Option<&str>, delay_ms: u64) -> usize {
        self.join_with_seed(n, [n; 32], alias, delay_ms)
    }

    /// As [`Net::join`], the client's randomness from `seed` (a peer that comes back on a new
    /// connection must not repeat its nonces).
    pub fn join_with_seed(
        &mut self,
        n: u8,
        seed: [u8; 32],
        alias: Option<&str>,
        delay_ms: u64,
    ) -> usize {
        let mut cfg = ClientConfig::new(KeyPair::from_seed(&[n; 32]), REALM, seed);
        cfg.alias = alias.map(Into::into);
        cfg.server = Some(self.server.peer_id());
        let conn = ConnId(1000 + self.nodes.len() as u64);
        self.nodes.push(Node {
            conn,
            client: Client::new(cfg),
            delay: Duration::from_millis(delay_ms),
            events: Vec::new(),
            closed: None,
        });
        let i = self.nodes.len() - 1;
        self.server.handle_connect(self.now, conn);
        self.nodes[i].client.handle_connected(self.now);
        self.run();
        i
    }

    /// Connects a raw connection (an attacker speaking frames directly).
    pub fn raw_connect(&mut self, conn: ConnId) {
        self.server.handle_connect(self.now, conn);
        self.drain_server();
    }

    /// Sends a raw frame now and returns the outputs it caused for that connection.
    pub fn raw_frame(&mut self, conn: ConnId, frame: &str) -> Vec<Output> {
        self.server.handle_frame(self.now, conn, frame);
        self.drain_server();
        self.raw.remove(&conn).unwrap_or_default()
    }

    fn push(&mut self, at: Instant, hop: Hop) {
        self.seq += 1;
        self.queue.insert((at, self.seq), hop);
    }

    fn drain_server(&mut self) {
        while let Some(out) = self.server.poll_output() {
            let conn = match &out {
                Output::Send { conn, .. } | Output::Close { conn, .. } => *conn,
            };
            match self.nodes.iter().position(|n| n.conn == conn) {
                Some(i) => match out {
                    Output::Send { frame, .. } => {
                        let at = self.now + self.nodes[i].delay;
                        self.push(at, Hop::ToClient(i, frame));
                    }
                    Output::Close { code, .. } => self.nodes[i].closed = Some(code),
                },
                None => self.raw.entry(conn).or_default().push(out),
            }
        }
    }

    fn drain_clients(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(frame) = self.nodes[i].client.poll_frame() {
                let at = self.now + self.nodes[i].delay;
                let conn = self.nodes[i].conn;
                self.push(at, Hop::ToServer(conn, frame));
            }
            while let Some(e) = self.nodes[i].client.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
    }

    /// Delivers everything in flight, advancing virtual time, until quiet.
    pub fn run(&mut self) {
        loop {
            self.drain_clients();
            self.drain_server();
            let Some(((at, _), hop)) = self.queue.pop_first() else {
                return;
            };
            self.now = self.now.max(at);
            match hop {
                Hop::ToServer(conn, frame) => self.server.handle_frame(self.now, conn, &frame),
                Hop::ToClient(i, frame) => {
                    if self.nodes[i].closed.is_none() {
                        self.nodes[i].client.handle_frame(self.now, &frame)
                    }
                }
            }
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.run();
    }

    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.nodes[i].events)
    }

    /// Node `a` offers to `b`, `b` answers; returns the session after checking both sides.
    pub fn exchange(&mut self, a: usize, b: usize) -> fog_signal::msg::SessionId {
        self.take_events(a);
        self.take_events(b);
        let to = self.nodes[b].client.peer_id();
        self.nodes[a].client.connect(to, description(1)).unwrap();
        self.run();
        let session = match self.take_events(b).as_slice() {
            [
                Event::Offer {
                    session,
                    from,
                    description: d,
                },
            ] => {
                assert_eq!(*from, self.nodes[a].client.peer_id());
                assert_eq!(*d, description(1));
                *session
            }
            other => panic!("expected an offer, got {other:?}"),
        };
        self.nodes[b]
            .client
            .answer(session, description(2))
            .unwrap();
        self.run();
        let ev = self.take_events(a);
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::OfferSent { session: s, .. } if *s == session)),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| matches!(e, Event::Answer { session: s, description: d, .. } if *s == session && *d == description(2))), "{ev:?}");
        session
    }
}

pub fn description(n: u8) -> Description {
    Description {
        candidates: vec![Candidate {
            kind: CandidateKind::Srflx,
            addr: format!("203.0.113.{n}:40000").parse().unwrap(),
            priority: 100,
            related: None,
        }],
        nat: Some(fog_core::nat::Behaviour::Open.into()),
        transports: vec![Transport::Quic, Transport::Kcp],
        credentials: Credentials {
            ufrag: format!("uf{n:02}"),
            pwd: "0123456789abcdefghijkl".into(),
        },
        service: 9,
        seal: None,
        quic: None,
        rtc: None,
    }
}

/// The error code of a `Send` output, if it is an error frame.
pub fn error_code(out: &Output) -> Option<u16> {
    match out {
        Output::Send { frame, .. } => match ServerMsg::decode(frame) {
            Ok(ServerMsg::Error { code, .. }) => Some(code),
            _ => None,
        },
        Output::Close { .. } => None,
    }
}

pub fn close_code(outs: &[Output]) -> Option<u16> {
    outs.iter().find_map(|o| match o {
        Output::Close { code, .. } => Some(*code),
        _ => None,
    })
}
