//! Arbitrary datagrams never panic the server or the client, whatever state they are in.
//!
//! Each case first builds real state (a client allocated on the server, with a permission and a
//! channel to a peer) by running both machines against each other, recording every datagram
//! that passed. Then it feeds arbitrary inputs: raw bytes, or recorded datagrams with some bytes
//! changed (so that decoding gets deep), on the listen address or a relayed one, from the client,
//! the peer or a stranger, at increasing times. Invariants: nothing panics; every datagram the
//! server takes lands in exactly one of its input counters; no deadline is in the past.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo};
use fog_turn::auth::AuthSecret;
use fog_turn::client::{Client, ClientConfig};
use fog_turn::server::{Server, ServerConfig};
use proptest::prelude::*;

const UNIX0: u64 = 1_700_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn listen() -> SocketAddr {
    addr("198.51.100.1:3478")
}
fn client_addr() -> SocketAddr {
    addr("203.0.113.5:40000")
}
fn peer() -> SocketAddr {
    addr("203.0.113.9:50000")
}
fn stranger() -> SocketAddr {
    addr("192.0.2.66:1234")
}

struct World {
    server: Server,
    client: Client,
    now: Instant,
    /// Every datagram that went between the machines, to mutate.
    recorded: Vec<Vec<u8>>,
    relayed: SocketAddr,
}

impl World {
    fn new() -> Self {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        let now = Instant::now();
        let secret = AuthSecret::new(b"s".to_vec());
        let (username, password) = secret.credentials(UNIX0 + 86_400, "alice");
        let config = ServerConfig::new(listen(), "fog.test", secret, [9; 32], (now, UNIX0));
        let mut w = Self {
            server: Server::new(config),
            client: Client::new(ClientConfig::new(listen(), username, password, 5)),
            now,
            recorded: Vec::new(),
            relayed: listen(),
        };
        w.client.allocate(now).unwrap();
        w.drive();
        w.relayed = w.client.relayed_address().expect("allocated");
        w.client.create_permission(now, peer().ip()).unwrap();
        w.client.bind_channel(now, peer()).unwrap();
        w.drive();
        w.client.send_to(now, peer(), b"x").unwrap();
        w.drive();
        let relayed = w.relayed;
        w.server_input(peer(), relayed, b"from the peer");
        w.drive();
        w
    }

    fn drive(&mut self) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                self.server_input(client_addr(), listen(), &bytes);
                self.recorded.push(bytes);
                moved = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                if t.destination == client_addr() {
                    self.client_input(&bytes);
                }
                self.recorded.push(bytes);
                moved = true;
            }
            while self.client.poll_event().is_some() {}
            while self.server.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        for t in [self.client.poll_timeout(), self.server.poll_timeout()]
            .into_iter()
            .flatten()
        {
            assert!(t >= self.now, "deadline {t:?} before now {:?}", self.now);
        }
    }

    fn server_input(&mut self, source: SocketAddr, local: SocketAddr, payload: &[u8]) {
        self.server.handle_packet(
            self.now,
            Receive {
                source,
                local,
                payload,
            },
        );
    }

    fn client_input(&mut self, payload: &[u8]) {
        self.client.handle_packet(
            self.now,
            Receive {
                source: listen(),
                local: client_addr(),
                payload,
            },
        );
    }

    fn server_inputs(&self) -> u64 {
        let s = self.server.stats();
        s.requests
            + s.keepalives
            + s.dropped_rate_limited
            + s.relayed_to_peer
            + s.relayed_to_client
            + s.dropped_no_permission
            + s.dropped_no_allocation
            + s.dropped_bandwidth
            + s.dropped_malformed
    }

    fn advance(&mut self, ms: u32) {
        self.now += Duration::from_millis(ms.into());
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
    }
}

#[derive(Debug, Clone)]
enum Bytes {
    Raw(Vec<u8>),
    /// Recorded datagram `index` (modulo) with `(offset, xor)` changes.
    Mutated(usize, Vec<(usize, u8)>),
}

#[derive(Debug, Clone)]
struct Input {
    /// 0: client → listen, 1: stranger → listen, 2: peer → relayed, 3: stranger → relayed,
    /// 4: server → client.
    route: u8,
    bytes: Bytes,
    advance_ms: u32,
}

fn input() -> impl Strategy<Value = Input> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120).prop_map(Bytes::Raw),
        (
            any::<usize>(),
            proptest::collection::vec((any::<usize>(), 1..=255u8), 1..4)
        )
            .prop_map(|(i, m)| Bytes::Mutated(i, m)),
    ];
    (0..5u8, bytes, prop_oneof![Just(0u32), 0..700_000u32]).prop_map(
        |(route, bytes, advance_ms)| Input {
            route,
            bytes,
            advance_ms,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_datagrams_never_panic_either_machine(inputs in proptest::collection::vec(input(), 1..24)) {
        let mut w = World::new();
        for input in inputs {
            let payload = match &input.bytes {
                Bytes::Raw(b) => b.clone(),
                Bytes::Mutated(i, changes) => {
                    let mut b = w.recorded[i % w.recorded.len()].clone();
                    for &(at, x) in changes {
                        if !b.is_empty() {
                            let n = b.len();
                            b[at % n] ^= x;
                        }
                    }
                    b
                }
            };
            let before = w.server_inputs();
            let relayed = w.relayed;
            match input.route {
                0 => w.server_input(client_addr(), listen(), &payload),
                1 => w.server_input(stranger(), listen(), &payload),
                2 => w.server_input(peer(), relayed, &payload),
                3 => w.server_input(stranger(), relayed, &payload),
                _ => w.client_input(&payload),
            }
            if input.route < 4 {
                prop_assert_eq!(w.server_inputs(), before + 1, "one counter per datagram");
            }
            w.drive();
            w.advance(input.advance_ms);
        }
    }
}
