//! The simulator proof of the relay: a client behind a symmetric NAT (random ports) allocates on
//! the TURN server, and a peer behind a port-restricted cone NAT exchanges data with it through
//! the relayed address, both ways, by Send/Data indications and by ChannelData. Permissions keep
//! a third host out; the client's refreshes keep everything alive for 30 virtual minutes; an
//! allocation left alone expires; wrong or expired credentials are refused; 10 % loss on the
//! client's uplink still ends in an allocation.
//!
//! The server is 198.51.100.1:3478 (RFC 5737), 5 ms from the internet, relaying from the same IP.
//! Sites come from `fog_sim`'s presets: site n's public address is 203.0.113.n.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fog_sim::link::LinkConfig;
use fog_sim::presets::Preset;
use fog_sim::probe::RawSocket;
use fog_sim::{NodeId, Sim};
use fog_turn::auth::AuthSecret;
use fog_turn::client::{Client, ClientConfig, Error, Event, Request, State, Via};
use fog_turn::server::{self, Release, Server, ServerConfig};

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "fog.test";
const SECRET: &[u8] = b"shared with fog-signal";

fn server_addr() -> SocketAddr {
    SocketAddr::new(SERVER_IP, 3478)
}

fn public(site: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, site))
}

struct Net {
    sim: Sim,
    server: NodeId,
    client: NodeId,
    peer: NodeId,
    third: NodeId,
}

/// The server, a client behind a symmetric NAT (site 1, uplink `client_link`) running `Client`,
/// a peer behind a port-restricted cone (site 2) and a third host on an open address (site 3),
/// both with raw sockets on port 6000.
fn net(seed: u64, client_link: LinkConfig, credentials: (String, String)) -> Net {
    let mut sim = Sim::new(seed);
    let server = sim.add_host(
        "turn",
        NodeId::INTERNET,
        &[SERVER_IP],
        LinkConfig::with_latency(Duration::from_millis(5)),
    );
    let config = ServerConfig::new(
        server_addr(),
        REALM,
        AuthSecret::new(SECRET),
        [seed as u8; 32],
        (sim.epoch(), UNIX0),
    );
    sim.set_machine(server, 3478, Server::new(config));
    let client = Preset::SymmetricRandom
        .attach(&mut sim, "client", 1, client_link)
        .host;
    let peer = Preset::PortRestrictedCone
        .attach(&mut sim, "peer", 2, LinkConfig::default())
        .host;
    let third = Preset::OpenInternet
        .attach(&mut sim, "third", 3, LinkConfig::default())
        .host;
    sim.set_machine(peer, 6000, RawSocket::new());
    sim.set_machine(third, 6000, RawSocket::new());
    let (username, password) = credentials;
    let config = ClientConfig::new(server_addr(), username, password, seed);
    sim.set_machine(client, 5000, Client::new(config));
    Net {
        sim,
        server,
        client,
        peer,
        third,
    }
}

/// Credentials valid for a day, as fog-signal would issue them.
fn good() -> (String, String) {
    AuthSecret::new(SECRET).credentials(UNIX0 + 86_400, "alice")
}

impl Net {
    /// Runs until the client reports an event matching `want` (returned), with every event
    /// before it in `seen`; panics after `cap` of virtual time.
    fn until(
        &mut self,
        cap: Duration,
        seen: &mut Vec<Event>,
        want: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = self.sim.now() + cap;
        loop {
            for (_, e) in self.sim.take_events::<Event>(self.client) {
                if want(&e) {
                    return e;
                }
                seen.push(e);
            }
            assert!(
                self.sim.now() < deadline,
                "nothing wanted within {cap:?}; saw {seen:?}"
            );
            assert!(self.sim.step(), "the network went quiet; saw {seen:?}");
        }
    }

    fn allocate(&mut self) -> SocketAddr {
        self.sim
            .with_machine(self.client, |c: &mut Client, now| c.allocate(now))
            .unwrap();
        let mut seen = Vec::new();
        match self.until(Duration::from_secs(60), &mut seen, |e| {
            matches!(e, Event::Allocated { .. } | Event::Error(_))
        }) {
            Event::Allocated {
                relayed, mapped, ..
            } => {
                assert_eq!(relayed.ip(), SERVER_IP);
                assert_eq!(mapped.map(|m| m.ip()), Some(public(1)), "the NAT's address");
                relayed
            }
            other => panic!("no allocation: {other:?}"),
        }
    }

    fn raw_send(&mut self, host: NodeId, to: SocketAddr, data: &[u8]) {
        self.sim
            .with_machine(host, |s: &mut RawSocket, _| s.send(None, to, data));
    }

    /// What `host`'s raw socket received since the last call, as (source, payload).
    fn raw_received(&mut self, host: NodeId) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sim.with_machine(host, |s: &mut RawSocket, _| {
            let got = s
                .received()
                .iter()
                .map(|d| (d.source, d.payload.clone()))
                .collect();
            s.clear();
            got
        })
    }

    fn client_sends(&mut self, to: SocketAddr, data: &[u8]) {
        self.sim
            .with_machine(self.client, |c: &mut Client, now| c.send_to(now, to, data))
            .unwrap();
    }

    fn server_stats(&self) -> server::Stats {
        *self.sim.machine::<Server>(self.server).stats()
    }

    /// The peer sends `data` to the relayed address; the client must report it from the
    /// peer's public address, delivered `via`. Returns the peer's public address.
    fn peer_to_client(&mut self, relayed: SocketAddr, data: &[u8], via: Via) -> SocketAddr {
        self.raw_send(self.peer, relayed, data);
        let mut seen = Vec::new();
        let event = self.until(Duration::from_secs(1), &mut seen, |e| {
            matches!(e, Event::Data { .. })
        });
        let Event::Data {
            peer,
            data: got,
            via: how,
        } = event
        else {
            unreachable!()
        };
        assert_eq!(peer.ip(), public(2));
        assert_eq!(got, data);
        assert_eq!(how, via);
        peer
    }

    fn client_to_peer(&mut self, peer: SocketAddr, relayed: SocketAddr, data: &[u8]) {
        self.client_sends(peer, data);
        self.sim.run_for(Duration::from_millis(100));
        assert_eq!(self.raw_received(self.peer), vec![(relayed, data.to_vec())]);
    }
}

#[test]
fn relay_both_ways_with_permissions_refreshes_and_expiry() {
    let mut n = net(1, LinkConfig::default(), good());
    let relayed = n.allocate();

    // Before any permission, the peer's datagrams stop at the server.
    n.raw_send(n.peer, relayed, b"too early");
    n.sim.run_for(Duration::from_millis(100));
    assert_eq!(n.server_stats().dropped_no_permission, 1);
    assert!(n.sim.take_events::<Event>(n.client).is_empty());

    n.sim
        .with_machine(n.client, |c: &mut Client, now| {
            c.create_permission(now, public(2))
        })
        .unwrap();
    let mut seen = Vec::new();
    n.until(Duration::from_secs(1), &mut seen, |e| {
        *e == Event::PermissionCreated { peer: public(2) }
    });

    // Send/Data indications, both ways (the peer speaks first, opening its own NAT).
    let peer = n.peer_to_client(relayed, b"hello from the peer", Via::Indication);
    n.client_to_peer(peer, relayed, b"hello from the client");

    // A third host without a permission cannot reach the client.
    let before = n.server_stats().dropped_no_permission;
    n.raw_send(n.third, relayed, b"let me in");
    n.sim.run_for(Duration::from_millis(100));
    assert_eq!(n.server_stats().dropped_no_permission, before + 1);
    assert!(n.sim.take_events::<Event>(n.client).is_empty());
    // Nor can the client reach it.
    let third = SocketAddr::new(public(3), 6000);
    n.client_sends(third, b"hi third");
    n.sim.run_for(Duration::from_millis(100));
    assert!(n.raw_received(n.third).is_empty());
    assert_eq!(n.server_stats().dropped_no_permission, before + 2);

    // A channel, then ChannelData both ways.
    let channel = n
        .sim
        .with_machine(n.client, |c: &mut Client, now| c.bind_channel(now, peer))
        .unwrap();
    n.until(Duration::from_secs(1), &mut seen, |e| {
        *e == Event::ChannelBound { peer, channel }
    });
    n.peer_to_client(relayed, b"by channel", Via::Channel);
    n.client_to_peer(peer, relayed, b"by channel too");

    // 30 virtual minutes with nothing but the machines' own timers: refreshes every 540 s,
    // permission refreshes, channel rebinds and keepalives keep all of it alive.
    n.sim.run_for(Duration::from_secs(1800));
    let events: Vec<Event> = n
        .sim
        .take_events::<Event>(n.client)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let refreshes = events
        .iter()
        .filter(|e| matches!(e, Event::Refreshed { .. }))
        .count();
    assert!(refreshes >= 3, "{events:?}");
    assert!(
        !events.iter().any(|e| matches!(e, Event::Error(_))),
        "{events:?}"
    );
    assert_eq!(n.sim.machine::<Client>(n.client).state(), State::Allocated);
    assert_eq!(
        n.sim
            .machine::<Server>(n.server)
            .relayed_address(n.sim.machine::<Client>(n.client).mapped_address().unwrap()),
        Some(relayed),
        "same allocation, same NAT binding"
    );
    // The peer's NAT binding to the relay timed out meanwhile; its next datagram reopens it.
    n.peer_to_client(relayed, b"half an hour later", Via::Channel);
    n.client_to_peer(peer, relayed, b"still here");

    // The client goes silent (its machine replaced): the allocation expires within its
    // 600 s lifetime, and the relayed address stops taking datagrams.
    n.sim.take_events::<server::Event>(n.server);
    n.sim.set_machine(n.client, 5000, RawSocket::new());
    n.sim.run_for(Duration::from_secs(601));
    let released: Vec<server::Event> = n
        .sim
        .take_events::<server::Event>(n.server)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(
        matches!(
            released.as_slice(),
            [server::Event::Released {
                relayed: r,
                reason: Release::Expired,
                ..
            }] if *r == relayed
        ),
        "{released:?}"
    );
    assert_eq!(n.sim.machine::<Server>(n.server).allocation_count(), 0);
    let delivered = n.sim.stats().delivered;
    n.raw_send(n.peer, relayed, b"anyone?");
    n.sim.run_for(Duration::from_millis(100));
    assert_eq!(
        n.sim.stats().delivered,
        delivered,
        "not accepted by the server"
    );
}

#[test]
fn wrong_and_expired_credentials_are_refused() {
    let secret = AuthSecret::new(SECRET);
    let (username, _) = secret.credentials(UNIX0 + 86_400, "alice");
    let wrong_password = (username, "not the password".to_owned());
    let expired = secret.credentials(UNIX0 - 1, "alice");
    let other_secret = AuthSecret::new(b"another secret".to_vec()).credentials(UNIX0 + 60, "eve");
    for credentials in [wrong_password, expired, other_secret] {
        let mut n = net(2, LinkConfig::default(), credentials.clone());
        n.sim
            .with_machine(n.client, |c: &mut Client, now| c.allocate(now))
            .unwrap();
        let mut seen = Vec::new();
        let event = n.until(Duration::from_secs(60), &mut seen, |_| true);
        assert_eq!(
            event,
            Event::Error(Error::Rejected {
                request: Request::Allocate,
                code: 401,
                reason: "Unauthorized".to_owned()
            }),
            "{credentials:?}"
        );
        assert_eq!(n.sim.machine::<Server>(n.server).allocation_count(), 0);
        assert_eq!(n.sim.machine::<Client>(n.client).state(), State::Closed);
    }
}

/// Credentials that run out while allocated: the next Refresh is refused and the client says
/// so; the server lets the allocation lapse.
#[test]
fn credentials_that_expire_end_the_allocation_at_the_next_refresh() {
    let short = AuthSecret::new(SECRET).credentials(UNIX0 + 300, "alice");
    let mut n = net(3, LinkConfig::default(), short);
    n.allocate();
    let mut seen = Vec::new();
    let event = n.until(Duration::from_secs(700), &mut seen, |e| {
        matches!(e, Event::Error(_))
    });
    assert!(
        matches!(
            event,
            Event::Error(Error::Rejected {
                request: Request::Refresh,
                code: 401,
                ..
            })
        ),
        "{event:?}"
    );
    n.sim.run_for(Duration::from_secs(60));
    assert_eq!(n.sim.machine::<Server>(n.server).allocation_count(), 0);
}

/// 10 % loss each way on the client's uplink: retransmissions get every allocation through.
#[test]
fn ten_percent_loss_still_allocates() {
    let lossy = LinkConfig {
        loss: 0.1,
        ..LinkConfig::default()
    };
    for seed in 1..=20 {
        let mut n = net(seed, lossy.clone(), good());
        let relayed = n.allocate();
        assert_eq!(
            n.sim.machine::<Server>(n.server).allocation_count(),
            1,
            "seed {seed}"
        );
        assert_eq!(relayed.ip(), SERVER_IP);
    }
}
