//! Two clients and the server, driven purely by frames and timestamps.

mod common;

use std::time::Duration;

use common::{Net, description, server_config};
use fog_signal::client::Event;
use fog_signal::msg::{Candidate, CandidateKind, Filtering, NatBehaviour, Sig};

#[test]
fn register_lookup_offer_answer_trickle_punch() {
    let mut net = Net::new(server_config());
    // One-way delays 30 ms and 40 ms: RTTs 60 ms and 80 ms.
    let a = net.join(1, Some("AA:BB:CC:00:00:01"), 30);
    let b = net.join(2, None, 40);
    let server_id = net.server.peer_id();
    assert_eq!(
        net.take_events(a),
        vec![Event::Authenticated {
            server: server_id,
            alias: Some("aa:bb:cc:00:00:01".into())
        }]
    );
    assert_eq!(
        net.take_events(b),
        vec![Event::Authenticated {
            server: server_id,
            alias: None
        }]
    );

    // Register a second alias, then look both up from b.
    let r = net.nodes[a].client.register("printer-7").unwrap();
    net.run();
    assert_eq!(
        net.take_events(a),
        vec![Event::Registered {
            request: r,
            alias: "printer-7".into()
        }]
    );
    let a_id = net.nodes[a].client.peer_id();
    assert_eq!(net.server.peer_of(net.nodes[a].conn), Some(a_id));
    assert_eq!(net.server.peer_of(fog_signal::server::ConnId(99)), None);
    let l1 = net.nodes[b].client.lookup("aa:bb:cc:00:00:01").unwrap();
    let l2 = net.nodes[b]
        .client
        .lookup(&a_id.to_string().to_lowercase())
        .unwrap();
    let l3 = net.nodes[b].client.lookup("nobody").unwrap();
    net.run();
    assert_eq!(
        net.take_events(b),
        vec![
            Event::LookupResult {
                request: l1,
                peer: Some(a_id),
                online: true
            },
            Event::LookupResult {
                request: l2,
                peer: Some(a_id),
                online: true
            },
            Event::LookupResult {
                request: l3,
                peer: None,
                online: false
            },
        ]
    );

    // Offer from b to a, answer, punch sync.
    let b_id = net.nodes[b].client.peer_id();
    net.nodes[b].client.connect(a_id, description(2)).unwrap();
    net.run();
    let session = match net.take_events(a).as_slice() {
        [
            Event::Offer {
                session,
                from,
                description: d,
            },
        ] if *from == b_id => {
            assert_eq!(*d, description(2));
            *session
        }
        other => panic!("{other:?}"),
    };
    let answer_sent = net.now;
    net.nodes[a].client.answer(session, description(1)).unwrap();
    net.run();
    let ev_b = net.take_events(b);
    let ev_a = net.take_events(a);
    assert!(matches!(ev_b[0], Event::OfferSent { session: s, .. } if s == session));
    assert!(
        matches!(&ev_b[1], Event::Answer { session: s, from, .. } if *s == session && *from == a_id)
    );
    let punch = |ev: &[Event]| {
        ev.iter()
            .find_map(|e| match e {
                Event::PunchAt { session: s, at } if *s == session => Some(*at),
                _ => None,
            })
            .expect("punch")
    };
    // Server receives the answer 30 ms after a sent it; T = that + max(60, 80)/2 + 50 ms margin.
    // Both peers must land on the same instant (the RTTs the server measured during auth are
    // exact here: links are symmetric and jitter-free).
    let expected = answer_sent + Duration::from_millis(30 + 40 + 50);
    assert_eq!(punch(&ev_a), expected);
    assert_eq!(punch(&ev_b), expected);

    // Trickle both ways, including end-of-candidates.
    let c = Candidate {
        kind: CandidateKind::Predicted,
        addr: "198.51.100.4:40002".parse().unwrap(),
        priority: 7,
        related: None,
    };
    net.nodes[b].client.trickle(session, Some(c)).unwrap();
    net.nodes[a].client.trickle(session, None).unwrap();
    net.run();
    assert_eq!(
        net.take_events(a),
        vec![Event::Candidate {
            session,
            candidate: Some(c),
            signature: None,
        }]
    );
    assert_eq!(
        net.take_events(b),
        vec![Event::Candidate {
            session,
            candidate: None,
            signature: None,
        }]
    );

    // Ping: the RTT to the server is measured.
    net.nodes[b].client.ping(net.now).unwrap();
    net.run();
    assert_eq!(
        net.take_events(b),
        vec![Event::Rtt(Duration::from_millis(80))]
    );

    // A behaviour update reaches the other peer, signature untouched.
    let nat = NatBehaviour::Firewall {
        filtering: Filtering::AddressDependent,
    };
    let signature = Sig([7; 64]);
    net.nodes[a]
        .client
        .update_nat(session, nat, signature)
        .unwrap();
    net.run();
    assert_eq!(
        net.take_events(b),
        vec![Event::Nat {
            session,
            nat,
            signature,
        }]
    );
    assert!(net.take_events(a).is_empty());

    // A third peer cannot inject into the session or see addresses.
    let c3 = net.join(3, None, 10);
    net.take_events(c3);
    net.nodes[c3].client.trickle(session, Some(c)).unwrap();
    net.nodes[c3]
        .client
        .update_nat(session, nat, signature)
        .unwrap();
    net.run();
    let unknown = |e: &Event| {
        matches!(
            e,
            Event::Error {
                code: fog_signal::msg::ErrorCode::UnknownSession,
                ..
            }
        )
    };
    let refused = net.take_events(c3);
    assert!(
        refused.len() == 2 && refused.iter().all(unknown),
        "{refused:?}"
    );
    assert!(net.take_events(a).is_empty() && net.take_events(b).is_empty());

    // b leaves: the answered session waits for it (its network may have changed under it).
    net.server.handle_disconnect(net.now, net.nodes[b].conn);
    net.run();
    assert!(net.take_events(a).is_empty());
    // What a sends meanwhile is dropped, not an error.
    net.nodes[a].client.trickle(session, Some(c)).unwrap();
    net.run();
    assert!(net.take_events(a).is_empty());
    // b comes back on a new connection within the grace: the session goes on both ways.
    net.advance(Duration::from_secs(5));
    let b2 = net.join_with_seed(2, [22; 32], None, 20);
    net.take_events(b2);
    net.nodes[b2].client.trickle(session, Some(c)).unwrap();
    net.nodes[a].client.trickle(session, None).unwrap();
    net.run();
    assert!(matches!(
        net.take_events(a).as_slice(),
        [Event::Candidate { session: s, candidate: Some(_), .. }] if *s == session
    ));
    assert!(matches!(
        net.take_events(b2).as_slice(),
        [Event::Candidate { session: s, candidate: None, .. }] if *s == session
    ));
    // The first departure's grace ends with b back: nothing closes.
    net.advance(Duration::from_secs(6));
    assert!(net.take_events(a).is_empty());
    // b leaves for good: a is told the session closed once the grace (10 s) is over.
    net.server.handle_disconnect(net.now, net.nodes[b2].conn);
    net.advance(Duration::from_millis(9_900));
    assert!(net.take_events(a).is_empty());
    net.advance(Duration::from_millis(100));
    assert!(matches!(
        net.take_events(a).as_slice(),
        [Event::SessionClosed { session: s, reason, code: None }] if *s == session && reason == "peer left"
    ));
}

#[test]
fn unanswered_offer_expires_and_server_pings_measure_rtt() {
    let mut net = Net::new(server_config());
    let a = net.join(1, None, 5);
    let b = net.join(2, None, 5);
    let to = net.nodes[b].client.peer_id();
    net.nodes[a].client.connect(to, description(1)).unwrap();
    net.run();
    net.take_events(a);
    net.take_events(b);
    net.advance(Duration::from_secs(31));
    assert!(
        net.take_events(a)
            .iter()
            .any(|e| matches!(e, Event::SessionClosed { reason, .. } if reason == "unanswered"))
    );
    // The server pinged (every 15 s) and the clients answered by themselves; nothing broke.
    assert!(net.server.poll_timeout().is_some());
    assert_eq!(net.server.peers(), 2);
}

#[test]
fn relay_credentials_follow_coturn_scheme() {
    let mut config = server_config();
    let now = common::epoch();
    config.relay = Some(fog_signal::server::RelayConfig {
        secret: b"north".to_vec(),
        urls: vec!["turn:relay.test:3478".into()],
        ttl: Duration::from_secs(600),
        epoch: (now, 1_700_000_000),
    });
    let mut net = Net::new(config);
    net.now = now;
    let a = net.join(1, None, 0);
    net.take_events(a);
    let r = net.nodes[a].client.request_relay().unwrap();
    net.run();
    match net.take_events(a).as_slice() {
        [
            Event::RelayCredentials {
                request,
                username,
                password,
                ttl,
                urls,
            },
        ] => {
            assert_eq!(*request, r);
            let peer = net.nodes[a].client.peer_id();
            assert_eq!(*username, format!("1700000600:{peer}"));
            assert_eq!(password.len(), 28); // base64 of a 20-byte HMAC-SHA1
            assert_eq!(*ttl, Duration::from_secs(600));
            assert_eq!(urls, &["turn:relay.test:3478".to_string()]);
        }
        other => panic!("{other:?}"),
    }
}

/// The relay over signaling carries datagrams between the two peers of an answered session,
/// keeps the session alive while used, and refuses strangers, unanswered sessions and oversize
/// or malformed data.
#[test]
fn relay_over_signaling_between_the_peers_of_a_session() {
    let mut net = Net::new(server_config());
    let a = net.join(1, None, 10);
    let b = net.join(2, None, 20);
    let c = net.join(3, None, 5);
    for n in [a, b, c] {
        net.take_events(n);
    }
    let a_id = net.nodes[a].client.peer_id();
    net.nodes[b].client.connect(a_id, description(2)).unwrap();
    net.run();
    let session = match net.take_events(a).as_slice() {
        [Event::Offer { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    // Before the answer the session carries nothing.
    net.nodes[b].client.relay(session, b"too early").unwrap();
    net.run();
    assert!(matches!(
        net.take_events(b).as_slice(),
        [
            Event::OfferSent { .. },
            Event::Error {
                code: fog_signal::msg::ErrorCode::UnknownSession,
                ..
            }
        ]
    ));
    net.nodes[a].client.answer(session, description(1)).unwrap();
    net.run();
    net.take_events(a);
    net.take_events(b);

    // Both ways, bytes intact (including ones that are not text).
    let datagram: Vec<u8> = (0..=255).collect();
    net.nodes[b].client.relay(session, &datagram).unwrap();
    net.nodes[a].client.relay(session, b"\x00\x01back").unwrap();
    net.run();
    assert_eq!(
        net.take_events(a),
        vec![Event::Relay {
            session,
            data: datagram.clone()
        }]
    );
    assert_eq!(
        net.take_events(b),
        vec![Event::Relay {
            session,
            data: b"\x00\x01back".to_vec()
        }]
    );

    // The session outlives any quiet spell (it lives as long as its peers).
    for _ in 0..4 {
        net.advance(Duration::from_secs(50));
        net.nodes[a].client.relay(session, b"keepalive").unwrap();
        net.run();
    }
    let events = net.take_events(b);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| matches!(e, Event::Relay { .. })));

    // A stranger cannot inject; an oversize datagram is refused; neither reaches a or b.
    net.nodes[c].client.relay(session, b"intruder").unwrap();
    net.nodes[a].client.relay(session, &[7u8; 1_401]).unwrap();
    net.run();
    assert!(matches!(
        net.take_events(c).as_slice(),
        [Event::Error {
            code: fog_signal::msg::ErrorCode::UnknownSession,
            ..
        }]
    ));
    assert!(matches!(
        net.take_events(a).as_slice(),
        [Event::Error {
            code: fog_signal::msg::ErrorCode::BadMessage,
            ..
        }]
    ));
    assert!(net.take_events(b).is_empty());
}

/// `close` ends a session for both peers: before the answer (a refusal) it frees the pending
/// offer and the offerer learns the code; after it the other peer does. Strangers and oversize
/// reasons are refused, and the session is gone afterwards.
#[test]
fn close_refuses_an_offer_and_ends_an_answered_session() {
    let mut net = Net::new(server_config());
    let a = net.join(1, None, 10);
    let b = net.join(2, None, 20);
    let c = net.join(3, None, 5);
    for n in [a, b, c] {
        net.take_events(n);
    }
    let b_id = net.nodes[b].client.peer_id();

    // A refusal: b closes the session a offered, with its code.
    net.nodes[a].client.connect(b_id, description(1)).unwrap();
    net.run();
    let session = match net.take_events(b).as_slice() {
        [Event::Offer { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    // A stranger may not close it.
    net.nodes[c].client.close(session, 9, "no").unwrap();
    net.run();
    assert!(matches!(
        net.take_events(c).as_slice(),
        [Event::Error {
            code: fog_signal::msg::ErrorCode::UnknownSession,
            ..
        }]
    ));
    net.nodes[b].client.close(session, 403, "busy").unwrap();
    net.run();
    assert_eq!(
        net.take_events(a),
        vec![
            Event::OfferSent {
                request: 1,
                session
            },
            Event::SessionClosed {
                session,
                reason: "busy".into(),
                code: Some(403),
            }
        ]
    );
    assert!(
        net.take_events(b).is_empty(),
        "the closer hears nothing back"
    );
    // The session is gone: answering it now fails.
    net.nodes[b].client.answer(session, description(2)).unwrap();
    net.run();
    assert!(matches!(
        net.take_events(b).as_slice(),
        [Event::Error {
            code: fog_signal::msg::ErrorCode::UnknownSession,
            ..
        }]
    ));

    // The refusal freed the pending slot: many more offers fit (the default limit is small).
    for _ in 0..20 {
        net.nodes[a].client.connect(b_id, description(1)).unwrap();
        net.run();
        let session = net
            .take_events(b)
            .into_iter()
            .find_map(|e| match e {
                Event::Offer { session, .. } => Some(session),
                _ => None,
            })
            .expect("offer forwarded");
        net.nodes[b].client.close(session, 1, "no").unwrap();
        net.run();
        assert!(
            !net.take_events(a)
                .iter()
                .any(|e| matches!(e, Event::Error { .. }))
        );
    }

    // An answered session, closed by the offerer; a reason is cut to the limit by the client.
    let session = net.exchange(a, b);
    net.take_events(a);
    net.take_events(b);
    let long = "é".repeat(300);
    net.nodes[a].client.close(session, 0, &long).unwrap();
    net.run();
    match net.take_events(b).as_slice() {
        [Event::SessionClosed { reason, code, .. }] => {
            assert_eq!(*code, Some(0));
            assert!(reason.len() <= fog_signal::msg::MAX_CLOSE_REASON && reason.starts_with('é'));
        }
        other => panic!("{other:?}"),
    }
}

/// A session has one live deadline however many frames it carries, and none once it ends.
/// An answered session holds no deadline (it lives as long as its peers), and relay frames
/// add none; an offer's one deadline goes with the answer.
#[test]
fn sessions_keep_at_most_one_deadline_each() {
    let mut net = Net::new(server_config());
    let a = net.join(1, None, 10);
    let b = net.join(2, None, 20);
    net.take_events(a);
    net.take_events(b);
    let before = net.server.deadlines();
    let to = net.nodes[b].client.peer_id();
    net.nodes[a].client.connect(to, description(1)).unwrap();
    net.run();
    assert_eq!(net.server.deadlines(), before + 1, "the offer's deadline");
    let session = match net.take_events(b).as_slice() {
        [Event::Offer { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    net.nodes[b].client.answer(session, description(2)).unwrap();
    net.run();
    assert_eq!(net.server.deadlines(), before, "none once answered");
    for i in 0..500u32 {
        net.nodes[a]
            .client
            .relay(session, &i.to_be_bytes())
            .unwrap();
        net.run();
        net.advance(Duration::from_millis(100));
    }
    assert!(
        net.server.deadlines() <= before,
        "{} deadlines after 500 relay frames",
        net.server.deadlines()
    );
    net.nodes[a].client.close(session, 0, "done").unwrap();
    net.run();
    assert!(net.server.deadlines() <= before);
    assert_eq!(net.server.sessions(), 0);
}

/// Issues 15 and 16: an answered session lives as long as both its peers, however long
/// that is. Ten minutes after the answer, with nothing said in between, a candidate trickled
/// after a move still reaches the peer, and so does a close (it used to expire 120 s after
/// the answer: the candidate was refused as `unknown_session` and the close was lost). A
/// session whose peer left for good is reclaimed.
#[test]
fn an_answered_session_lives_as_long_as_its_peers() {
    let mut net = Net::new(server_config());
    let a = net.join(1, None, 10);
    let b = net.join(2, None, 20);
    let c = net.join(3, None, 15);
    let session = net.exchange(a, b);
    net.take_events(a);
    net.take_events(b);
    // Ten minutes; the server's pings are answered all along.
    for _ in 0..40 {
        net.advance(Duration::from_secs(15));
    }
    let quiet = [net.take_events(a), net.take_events(b)];
    assert!(quiet.iter().all(Vec::is_empty), "{quiet:?}");
    let moved = Candidate {
        kind: CandidateKind::Srflx,
        addr: "198.51.100.9:50000".parse().unwrap(),
        priority: 9,
        related: None,
    };
    net.nodes[a].client.trickle(session, Some(moved)).unwrap();
    net.nodes[a].client.relay(session, b"still here").unwrap();
    net.run();
    assert_eq!(
        net.take_events(b),
        vec![
            Event::Candidate {
                session,
                candidate: Some(moved),
                signature: None,
            },
            Event::Relay {
                session,
                data: b"still here".to_vec()
            }
        ]
    );
    assert!(net.take_events(a).is_empty());
    // Another ten minutes, then a close.
    for _ in 0..40 {
        net.advance(Duration::from_secs(15));
    }
    net.nodes[b].client.close(session, 7, "bye").unwrap();
    net.run();
    assert_eq!(
        net.take_events(a),
        vec![Event::SessionClosed {
            session,
            reason: "bye".into(),
            code: Some(7),
        }]
    );
    assert_eq!(net.server.sessions(), 0);

    // A session whose peer leaves for good is reclaimed once the grace is over.
    let session = net.exchange(a, c);
    net.advance(Duration::from_secs(300));
    assert_eq!(net.server.sessions(), 1);
    net.server.handle_disconnect(net.now, net.nodes[c].conn);
    net.advance(Duration::from_secs(11));
    assert!(matches!(
        net.take_events(a).as_slice(),
        [Event::SessionClosed { session: s, reason, code: None }] if *s == session && reason == "peer left"
    ));
    assert_eq!(net.server.sessions(), 0);
}
