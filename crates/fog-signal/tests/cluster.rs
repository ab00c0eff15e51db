//! Two server machines of one cluster, joined by a bus in this file (fogd's is Redis): the
//! machine's cluster outputs and inputs carry lookups, offers, answers, trickle and punch
//! between instances, refuse what fits no session, end sessions with an unreachable peer, grant
//! an alias once cluster-wide, and bound the questions waiting for the cluster.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Net, description, server_config};
use fog_signal::PeerId;
use fog_signal::client::Event;
use fog_signal::msg::{Candidate, CandidateKind, ErrorCode, ServerMsg, SessionId};
use fog_signal::server::{ClusterOutput, ServerConfig, Target};

fn cluster_config() -> ServerConfig {
    let mut config = server_config();
    config.cluster = true;
    config
}

/// Two instances and the bus: presence, aliases, forwarding.
struct Cluster {
    nets: [Net; 2],
    /// Which instance each online peer is on.
    dir: BTreeMap<PeerId, usize>,
    aliases: BTreeMap<String, PeerId>,
    /// Outputs the bus kept back instead of carrying (for tests that answer by hand).
    hold: bool,
    held: Vec<(usize, ClusterOutput)>,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            nets: [Net::new(cluster_config()), Net::new(cluster_config())],
            dir: BTreeMap::new(),
            aliases: BTreeMap::new(),
            hold: false,
            held: Vec::new(),
        }
    }

    /// Runs both instances and the bus until quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for k in 0..2 {
                self.nets[k].run();
                while let Some(out) = self.nets[k].server.poll_cluster() {
                    moved = true;
                    self.carry(k, out);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn carry(&mut self, k: usize, out: ClusterOutput) {
        let now = self.nets[k].now;
        match out {
            ClusterOutput::Presence { peer, online } => {
                if online {
                    self.dir.insert(peer, k);
                } else if self.dir.get(&peer) == Some(&k) {
                    self.dir.remove(&peer);
                }
            }
            out if self.hold => self.held.push((k, out)),
            ClusterOutput::Resolve { query, target } => {
                let peer = match target {
                    Target::Peer(p) => Some(p),
                    Target::Alias(a) => self.aliases.get(&a).copied(),
                };
                let online = peer.is_some_and(|p| self.dir.get(&p).is_some_and(|&i| i != k));
                self.nets[k]
                    .server
                    .handle_resolved(now, query, peer, online);
            }
            ClusterOutput::Offer { query, peer, frame } => {
                let delivered = match self.dir.get(&peer) {
                    Some(&j) if j != k => {
                        let now = self.nets[j].now;
                        self.nets[j].server.handle_forwarded(now, peer, &frame);
                        true
                    }
                    _ => false,
                };
                self.nets[k]
                    .server
                    .handle_resolved(now, query, Some(peer), delivered);
            }
            ClusterOutput::Forward { peer, frame } => match self.dir.get(&peer) {
                Some(&j) if j != k => {
                    let now = self.nets[j].now;
                    self.nets[j].server.handle_forwarded(now, peer, &frame);
                }
                _ => self.nets[k].server.handle_unreachable(now, peer),
            },
            ClusterOutput::ClaimAlias { query, peer, alias } => {
                let granted = *self.aliases.entry(alias).or_insert(peer) == peer;
                self.nets[k]
                    .server
                    .handle_claimed(now, query, Some(granted));
            }
        }
    }

    /// Node `n` joins instance `k`; its index there.
    fn join(&mut self, k: usize, n: u8, alias: Option<&str>) -> usize {
        let i = self.nets[k].join(n, alias, 10);
        self.settle();
        i
    }
}

fn lookup(c: &mut Cluster, k: usize, i: usize, target: &str) -> (Option<PeerId>, bool) {
    let request = c.nets[k].nodes[i].client.lookup(target).unwrap();
    c.settle();
    let events = c.nets[k].take_events(i);
    events
        .iter()
        .find_map(|e| match e {
            Event::LookupResult {
                request: r,
                peer,
                online,
            } if *r == request => Some((*peer, *online)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no lookup result in {events:?}"))
}

#[test]
fn an_offer_crosses_instances_with_answer_trickle_punch_and_close() {
    let mut c = Cluster::new();
    let a = c.join(0, 1, None);
    let b = c.join(1, 2, Some("printer-7"));
    let (a_id, b_id) = (
        c.nets[0].nodes[a].client.peer_id(),
        c.nets[1].nodes[b].client.peer_id(),
    );
    assert_eq!(lookup(&mut c, 0, a, &b_id.to_string()), (Some(b_id), true));
    assert_eq!(lookup(&mut c, 0, a, "Printer-7"), (Some(b_id), true));
    assert_eq!(lookup(&mut c, 0, a, "nobody"), (None, false));

    c.nets[0].nodes[a]
        .client
        .connect(b_id, description(1))
        .unwrap();
    c.settle();
    let session = match c.nets[1].take_events(b).as_slice() {
        [
            Event::Authenticated { .. },
            Event::Offer { session, from, .. },
        ] if *from == a_id => *session,
        other => panic!("expected the offer, got {other:?}"),
    };
    c.nets[1].nodes[b]
        .client
        .answer(session, description(2))
        .unwrap();
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::OfferSent { session: s, .. } if *s == session)),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, Event::Answer { session: s, from, .. } if *s == session && *from == b_id)), "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::PunchAt { session: s, .. } if *s == session)),
        "{ev:?}"
    );
    let ev = c.nets[1].take_events(b);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::PunchAt { session: s, .. } if *s == session)),
        "{ev:?}"
    );

    // Trickle both ways.
    let candidate = Candidate {
        kind: CandidateKind::Host,
        addr: "198.51.100.7:4000".parse().unwrap(),
        priority: 1,
        related: None,
    };
    c.nets[0].nodes[a]
        .client
        .trickle(session, Some(candidate))
        .unwrap();
    c.nets[1].nodes[b]
        .client
        .trickle(session, Some(candidate))
        .unwrap();
    c.settle();
    for (k, i) in [(0, a), (1, b)] {
        let ev = c.nets[k].take_events(i);
        assert!(ev.iter().any(|e| matches!(e, Event::Candidate { session: s, candidate: Some(got), .. } if *s == session && *got == candidate)), "{ev:?}");
    }

    // A behaviour update crosses too.
    let nat = fog_signal::msg::NatBehaviour::Open;
    let signature = fog_signal::msg::Sig([3; 64]);
    c.nets[0].nodes[a]
        .client
        .update_nat(session, nat, signature)
        .unwrap();
    c.settle();
    let ev = c.nets[1].take_events(b);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Nat { session: s, nat: got, .. } if *s == session && *got == nat)
        ),
        "{ev:?}"
    );

    // The answerer closes; the offerer learns it on the other instance.
    c.nets[1].nodes[b].client.close(session, 7, "done").unwrap();
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::SessionClosed { session: s, code: Some(7), .. } if *s == session)
        ),
        "{ev:?}"
    );
}

#[test]
fn forwarded_frames_that_fit_no_session_are_dropped() {
    let mut c = Cluster::new();
    let a = c.join(0, 1, None);
    let b = c.join(1, 2, None);
    let (a_id, b_id) = (
        c.nets[0].nodes[a].client.peer_id(),
        c.nets[1].nodes[b].client.peer_id(),
    );
    let stranger = fog_signal::KeyPair::from_seed(&[9; 32]).peer_id();
    let now = c.nets[1].now;
    let server = &mut c.nets[1].server;
    let session = SessionId([3; 16]);
    let answer = ServerMsg::Answer {
        session,
        from: a_id,
        description: description(1),
    }
    .encode();
    assert!(
        !server.handle_forwarded(now, b_id, &answer),
        "answer to no session"
    );
    assert!(!server.handle_forwarded(now, b_id, "{not json"));
    assert!(!server.handle_forwarded(now, b_id, &"x".repeat(1 << 20)));
    let pong = ServerMsg::Pong { id: 1 }.encode();
    assert!(
        !server.handle_forwarded(now, b_id, &pong),
        "not a session frame"
    );
    // An offer opens this instance's half; frames from anyone but its remote peer are refused.
    let offer = ServerMsg::Offer {
        session,
        from: a_id,
        description: description(1),
    }
    .encode();
    assert!(server.handle_forwarded(now, b_id, &offer));
    assert!(
        !server.handle_forwarded(now, b_id, &offer),
        "the same session twice"
    );
    let forged = ServerMsg::Answer {
        session,
        from: stranger,
        description: description(1),
    }
    .encode();
    assert!(
        !server.handle_forwarded(now, b_id, &forged),
        "b is the answerer"
    );
    // An offer for a peer that is not here goes back to its sender as a closed session.
    let elsewhere = ServerMsg::Offer {
        session: SessionId([4; 16]),
        from: a_id,
        description: description(1),
    }
    .encode();
    assert!(!server.handle_forwarded(now, stranger, &elsewhere));
    match server.poll_cluster() {
        Some(ClusterOutput::Forward { peer, frame }) => {
            assert_eq!(peer, a_id);
            assert!(matches!(
                ServerMsg::decode(&frame),
                Ok(ServerMsg::SessionClosed { reason, .. }) if reason == "unreachable"
            ));
        }
        other => panic!("expected a refusal to a, got {other:?}"),
    }
}

#[test]
fn a_remote_peer_that_cannot_be_reached_ends_its_sessions_at_once() {
    let mut c = Cluster::new();
    let a = c.join(0, 1, None);
    let b = c.join(1, 2, None);
    let b_id = c.nets[1].nodes[b].client.peer_id();
    // An offer no instance takes: the offerer is told "unknown peer", not "offer sent".
    c.hold = true;
    let r = c.nets[0].nodes[a]
        .client
        .connect(b_id, description(1))
        .unwrap();
    c.settle();
    let (k, out) = c.held.remove(0);
    let ClusterOutput::Offer { query, peer, .. } = out else {
        panic!("{out:?}");
    };
    assert_eq!(peer, b_id);
    let now = c.nets[k].now;
    c.nets[0]
        .server
        .handle_resolved(now, query, Some(b_id), false);
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::OfferSent { .. })),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, Event::Error { code: ErrorCode::UnknownPeer, request: Some(x), .. } if *x == r)), "{ev:?}");
    // A session that was set up ends when a frame for the remote peer cannot be carried.
    c.hold = false;
    c.nets[0].nodes[a]
        .client
        .connect(b_id, description(1))
        .unwrap();
    c.settle();
    let s = match c.nets[1].take_events(b).as_slice() {
        [.., Event::Offer { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    c.nets[1].nodes[b].client.answer(s, description(2)).unwrap();
    c.settle();
    c.nets[0].take_events(a);
    let now = c.nets[0].now;
    c.nets[0].server.handle_unreachable(now, b_id);
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(ev.iter().any(|e| matches!(e, Event::SessionClosed { session, reason, .. } if *session == s && reason == "unreachable")), "{ev:?}");
}

#[test]
fn an_answer_that_outruns_the_delivery_report_comes_after_offer_sent() {
    let mut c = Cluster::new();
    let a = c.join(0, 1, None);
    let b = c.join(1, 2, None);
    let b_id = c.nets[1].nodes[b].client.peer_id();
    c.hold = true;
    let r = c.nets[0].nodes[a]
        .client
        .connect(b_id, description(1))
        .unwrap();
    c.settle();
    // Deliver the offer, but keep the delivery report back.
    let (_, out) = c.held.remove(0);
    let ClusterOutput::Offer { query, frame, .. } = out else {
        panic!("{out:?}");
    };
    let now = c.nets[1].now;
    assert!(c.nets[1].server.handle_forwarded(now, b_id, &frame));
    c.hold = false;
    c.settle();
    let s = match c.nets[1].take_events(b).as_slice() {
        [.., Event::Offer { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    c.nets[1].nodes[b].client.answer(s, description(2)).unwrap();
    c.settle();
    let ev = c.nets[0].take_events(a);
    let sent = ev.iter().position(
        |e| matches!(e, Event::OfferSent { request, session } if *request == r && *session == s),
    );
    let answered = ev
        .iter()
        .position(|e| matches!(e, Event::Answer { session, .. } if *session == s));
    assert!(
        sent.is_some() && answered.is_some() && sent < answered,
        "{ev:?}"
    );
    // The late report changes nothing.
    let now = c.nets[0].now;
    c.nets[0]
        .server
        .handle_resolved(now, query, Some(b_id), false);
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::OfferSent { .. } | Event::Error { .. })),
        "{ev:?}"
    );
}

#[test]
fn an_alias_is_granted_once_cluster_wide() {
    let mut c = Cluster::new();
    let a = c.join(0, 1, Some("shared"));
    let b = c.join(1, 2, Some("shared"));
    let ev = c.nets[0].take_events(a);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Authenticated { alias: Some(x), .. } if x == "shared")),
        "{ev:?}"
    );
    let ev = c.nets[1].take_events(b);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Authenticated { alias: None, .. })),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Error {
                code: ErrorCode::AliasTaken,
                ..
            }
        )),
        "{ev:?}"
    );
    // Register, too.
    let r = c.nets[1].nodes[b].client.register("Shared").unwrap();
    c.settle();
    let ev = c.nets[1].take_events(b);
    assert!(ev.iter().any(|e| matches!(e, Event::Error { code: ErrorCode::AliasTaken, request: Some(x), .. } if *x == r)), "{ev:?}");
    let r = c.nets[1].nodes[b].client.register("mine").unwrap();
    c.settle();
    let ev = c.nets[1].take_events(b);
    assert!(ev.iter().any(|e| matches!(e, Event::Registered { request, alias } if *request == r && alias == "mine")), "{ev:?}");
    let a_id = c.nets[0].nodes[a].client.peer_id();
    assert_eq!(lookup(&mut c, 1, b, "shared"), (Some(a_id), true));
}

#[test]
fn questions_to_the_cluster_are_bounded_and_time_out() {
    let mut config = cluster_config();
    config.limits.max_cluster_queries = 1;
    let mut c = Cluster::new();
    c.nets[0] = Net::new(config);
    let a = c.join(0, 1, None);
    c.hold = true;
    let r1 = c.nets[0].nodes[a].client.lookup("nobody-1").unwrap();
    let r2 = c.nets[0].nodes[a].client.lookup("nobody-2").unwrap();
    c.settle();
    let ev = c.nets[0].take_events(a);
    assert!(ev.iter().any(|e| matches!(e, Event::Error { code: ErrorCode::ServerFull, request: Some(x), .. } if *x == r2)), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, Event::LookupResult { .. })),
        "{ev:?}"
    );
    assert_eq!(c.nets[0].server.cluster_queries(), 1);
    // Unanswered, the first one is answered "offline" at its deadline.
    c.nets[0].advance(Duration::from_secs(2));
    let ev = c.nets[0].take_events(a);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::LookupResult { request, online: false, .. } if *request == r1)
        ),
        "{ev:?}"
    );
    assert_eq!(c.nets[0].server.cluster_queries(), 0);
}

#[test]
fn without_cluster_nothing_goes_to_the_bus() {
    let mut net = Net::new(server_config());
    let a = net.join(1, Some("solo"), 10);
    let r = net.nodes[a].client.lookup("nobody").unwrap();
    net.run();
    assert!(net.server.poll_cluster().is_none());
    let ev = net.take_events(a);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::LookupResult { request, online: false, .. } if *request == r)
        ),
        "{ev:?}"
    );
}
