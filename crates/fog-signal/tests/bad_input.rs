//! Every bad input answered with its error code (and a close where specified), never a panic,
//! and the other peers unaffected: after each attack a second authenticated pair still exchanges
//! an offer and an answer.

mod common;

use std::time::Duration;

use common::{Net, REALM, close_code, error_code, server_config};
use fog_signal::KeyPair;
use fog_signal::msg::{self, ClientMsg, ErrorCode, Nonce, ServerMsg, Sig};
use fog_signal::server::{ConnId, Output};
use proptest::prelude::*;

const EVE: ConnId = ConnId(1);

/// A network with an authenticated pair (nodes 0 and 1) and a raw attacker connection.
fn setup() -> Net {
    let mut net = Net::new(server_config());
    net.join(10, Some("alice"), 20);
    net.join(11, Some("bob"), 20);
    net.raw_connect(EVE);
    net
}

fn codes(outs: &[Output]) -> Vec<u16> {
    outs.iter().filter_map(error_code).collect()
}

fn assert_pair_still_works(net: &mut Net) {
    net.exchange(0, 1);
}

fn hello(nonce: u8) -> String {
    ClientMsg::Hello {
        version: 1,
        nonce: Nonce([nonce; 32]),
    }
    .encode()
}

fn challenge_of(outs: &[Output]) -> (Nonce, fog_signal::PeerId) {
    for o in outs {
        if let Output::Send { frame, .. } = o {
            if let Ok(ServerMsg::Challenge { nonce, server, .. }) = ServerMsg::decode(frame) {
                return (nonce, server);
            }
        }
    }
    panic!("no challenge in {outs:?}")
}

fn auth(
    key: &KeyPair,
    client: Nonce,
    server_nonce: Nonce,
    server: fog_signal::PeerId,
    alias: Option<&str>,
) -> String {
    let t = msg::auth_transcript(
        REALM,
        &server,
        &client,
        &server_nonce,
        &key.peer_id(),
        alias,
    );
    ClientMsg::Auth {
        peer: key.peer_id(),
        challenge: server_nonce,
        signature: Sig(key.sign(&t)),
        alias: alias.map(Into::into),
    }
    .encode()
}

#[test]
fn malformed_json() {
    let mut net = setup();
    let outs = net.raw_frame(EVE, "{\"type\":\"hello\",");
    assert_eq!(codes(&outs), [ErrorCode::BadJson.code()]);
    assert_eq!(close_code(&outs), None);
    assert_pair_still_works(&mut net);
}

#[test]
fn unknown_message_type() {
    let mut net = setup();
    let outs = net.raw_frame(EVE, r#"{"type":"teleport","to":"mars"}"#);
    assert_eq!(codes(&outs), [ErrorCode::UnknownMessage.code()]);
    let outs = net.raw_frame(EVE, r#"{"type":"hello","version":"one"}"#);
    assert_eq!(codes(&outs), [ErrorCode::BadMessage.code()]);
    assert_pair_still_works(&mut net);
}

#[test]
fn oversize_frame_closes() {
    let mut net = setup();
    let big = format!(r#"{{"type":"ping","id":1,"pad":"{}"}}"#, "x".repeat(20_000));
    let outs = net.raw_frame(EVE, &big);
    assert_eq!(codes(&outs), [ErrorCode::TooLarge.code()]);
    assert_eq!(close_code(&outs), Some(1009));
    assert!(
        net.raw_frame(EVE, &hello(1)).is_empty(),
        "forgotten after close"
    );
    assert_pair_still_works(&mut net);
}

#[test]
fn bad_signature_closes() {
    let mut net = setup();
    let outs = net.raw_frame(EVE, &hello(1));
    let (sn, server) = challenge_of(&outs);
    let key = KeyPair::from_seed(&[66; 32]);
    // Signed over a different client nonce than the one sent.
    let outs = net.raw_frame(EVE, &auth(&key, Nonce([2; 32]), sn, server, None));
    assert_eq!(codes(&outs), [ErrorCode::BadSignature.code()]);
    assert_eq!(close_code(&outs), Some(1008));
    // Claiming alice's key with eve's signature fails the same way.
    net.raw_connect(ConnId(2));
    let (sn, server) = challenge_of(&net.raw_frame(ConnId(2), &hello(3)));
    let mut frame: serde_json::Value =
        serde_json::from_str(&auth(&key, Nonce([3; 32]), sn, server, None)).unwrap();
    frame["peer"] = serde_json::Value::String(net.nodes[0].client.peer_id().to_string());
    let outs = net.raw_frame(ConnId(2), &frame.to_string());
    assert_eq!(codes(&outs), [ErrorCode::BadSignature.code()]);
    assert!(net.server.is_online(&net.nodes[0].client.peer_id()));
    assert_pair_still_works(&mut net);
}

#[test]
fn replayed_challenge_and_reused_nonce() {
    let mut net = setup();
    let key = KeyPair::from_seed(&[66; 32]);
    let outs = net.raw_frame(EVE, &hello(7));
    let (sn, server) = challenge_of(&outs);
    let recorded_auth = auth(&key, Nonce([7; 32]), sn, server, None);
    assert!(
        net.raw_frame(EVE, &recorded_auth)
            .iter()
            .any(|o| matches!(o, Output::Send { frame, .. } if frame.contains("welcome")))
    );

    // The recorded hello on a new connection: the client nonce is remembered.
    net.raw_connect(ConnId(2));
    let outs = net.raw_frame(ConnId(2), &hello(7));
    assert_eq!(codes(&outs), [ErrorCode::Replayed.code()]);
    assert_eq!(close_code(&outs), Some(1008));

    // A fresh hello, then the recorded auth: it answers another connection's challenge.
    net.raw_connect(ConnId(3));
    net.raw_frame(ConnId(3), &hello(8));
    let outs = net.raw_frame(ConnId(3), &recorded_auth);
    assert_eq!(codes(&outs), [ErrorCode::Replayed.code()]);
    assert_eq!(close_code(&outs), Some(1008));

    // Auth again on the authenticated connection: the challenge is spent.
    let outs = net.raw_frame(EVE, &recorded_auth);
    assert_eq!(codes(&outs), [ErrorCode::UnexpectedMessage.code()]);

    // A challenge expires with the auth timeout.
    net.raw_connect(ConnId(4));
    let (sn, server) = challenge_of(&net.raw_frame(ConnId(4), &hello(9)));
    net.advance(Duration::from_secs(11));
    let outs = net.raw.remove(&ConnId(4)).unwrap_or_default();
    assert_eq!(codes(&outs), [ErrorCode::AuthTimeout.code()]);
    assert_eq!(close_code(&outs), Some(1008));
    assert!(
        net.raw_frame(ConnId(4), &auth(&key, Nonce([9; 32]), sn, server, None))
            .is_empty()
    );
    assert_pair_still_works(&mut net);
}

#[test]
fn alias_theft_is_refused() {
    let mut net = setup();
    let mallory = KeyPair::from_seed(&[66; 32]);
    let (sn, server) = challenge_of(&net.raw_frame(EVE, &hello(1)));
    // Claimed during auth (case differs; aliases are case-insensitive).
    let outs = net.raw_frame(
        EVE,
        &auth(&mallory, Nonce([1; 32]), sn, server, Some("ALICE")),
    );
    assert_eq!(codes(&outs), [ErrorCode::AliasTaken.code()]);
    assert_eq!(close_code(&outs), None);
    // Claimed later with register.
    let outs = net.raw_frame(EVE, r#"{"type":"register","id":5,"alias":"bob"}"#);
    assert_eq!(codes(&outs), [ErrorCode::AliasTaken.code()]);
    let outs = net.raw_frame(EVE, r#"{"type":"register","id":6,"alias":"bad alias!"}"#);
    assert_eq!(codes(&outs), [ErrorCode::BadAlias.code()]);
    // Lookups still resolve to the owner.
    let outs = net.raw_frame(EVE, r#"{"type":"lookup","id":7,"target":"alice"}"#);
    let alice = net.nodes[0].client.peer_id();
    assert!(
        matches!(&outs[..], [Output::Send { frame, .. }] if *frame == ServerMsg::LookupResult { id: 7, peer: Some(alice), online: true }.encode())
    );
    // The owner disconnecting does not free the alias.
    net.server.handle_disconnect(net.now, net.nodes[1].conn);
    let outs = net.raw_frame(EVE, r#"{"type":"register","id":8,"alias":"bob"}"#);
    assert_eq!(codes(&outs), [ErrorCode::AliasTaken.code()]);
}

#[test]
fn flood_is_rate_limited_then_closed() {
    let mut net = setup();
    let mut all = Vec::new();
    for i in 0..200 {
        all.extend(net.raw_frame(EVE, &format!(r#"{{"type":"ping","id":{i}}}"#)));
    }
    let errors = codes(&all);
    assert_eq!(
        errors
            .iter()
            .filter(|&&c| c == ErrorCode::RateLimited.code())
            .count(),
        2,
        "one warning, one at the close"
    );
    assert_eq!(close_code(&all), Some(1008));
    let pongs = all
        .iter()
        .filter(|o| matches!(o, Output::Send { frame, .. } if frame.contains("pong")))
        .count();
    assert_eq!(pongs, 40, "the burst is served");
    assert_pair_still_works(&mut net);
}

#[test]
fn slow_steady_traffic_is_not_limited() {
    let mut net = setup();
    for i in 0..200 {
        net.now += Duration::from_millis(60);
        let outs = net.raw_frame(EVE, &format!(r#"{{"type":"ping","id":{i}}}"#));
        assert!(codes(&outs).is_empty());
    }
}

#[test]
fn messages_before_auth_are_refused() {
    let mut net = setup();
    let bob = net.nodes[1].client.peer_id();
    let offer = ClientMsg::Offer {
        id: 4,
        to: bob,
        description: common::description(9),
    }
    .encode();
    for frame in [
        offer.as_str(),
        r#"{"type":"lookup","id":5,"target":"alice"}"#,
        r#"{"type":"register","id":6,"alias":"carol"}"#,
    ] {
        let outs = net.raw_frame(EVE, frame);
        assert_eq!(
            codes(&outs),
            [ErrorCode::NotAuthenticated.code()],
            "{frame}"
        );
        assert_eq!(close_code(&outs), None);
    }
    // Nothing reached bob.
    assert!(
        net.take_events(1)
            .iter()
            .all(|e| !matches!(e, fog_signal::client::Event::Offer { .. }))
    );
    let outs = net.raw_frame(EVE, r#"{"type":"auth","peer":"x"}"#);
    assert_eq!(codes(&outs), [ErrorCode::BadMessage.code()]);
    // Never authenticating: closed at the auth timeout.
    net.advance(Duration::from_secs(10));
    assert_eq!(
        close_code(&net.raw.remove(&EVE).unwrap_or_default()),
        Some(1008)
    );
    assert_pair_still_works(&mut net);
}

#[test]
fn version_and_limits() {
    let mut net = setup();
    let outs = net.raw_frame(
        EVE,
        &ClientMsg::Hello {
            version: 0,
            nonce: Nonce([1; 32]),
        }
        .encode(),
    );
    assert_eq!(codes(&outs), [ErrorCode::VersionUnsupported.code()]);
    assert_eq!(close_code(&outs), Some(1002));

    // Pending offers: the ninth unanswered offer to bob is refused.
    let bob = net.nodes[1].client.peer_id();
    for _ in 0..9 {
        net.nodes[0]
            .client
            .connect(bob, common::description(1))
            .unwrap();
    }
    net.run();
    let errs: Vec<_> = net
        .take_events(0)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                fog_signal::client::Event::Error {
                    code: ErrorCode::TooManyPending,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(errs.len(), 1);
    // Offers to someone offline or to oneself.
    let me = net.nodes[0].client.peer_id();
    net.nodes[0]
        .client
        .connect(me, common::description(1))
        .unwrap();
    net.nodes[0]
        .client
        .connect(
            KeyPair::from_seed(&[99; 32]).peer_id(),
            common::description(1),
        )
        .unwrap();
    net.run();
    let unknown = net
        .take_events(0)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                fog_signal::client::Event::Error {
                    code: ErrorCode::UnknownPeer,
                    ..
                }
            )
        })
        .count();
    assert_eq!(unknown, 2);
}

#[test]
fn max_connections_and_peers() {
    let mut config = server_config();
    config.limits.max_connections = 3;
    config.limits.max_peers = 2;
    let mut net = Net::new(config);
    net.join(10, None, 1);
    net.join(11, None, 1);
    net.raw_connect(EVE);
    // Third peer: server full at auth.
    let key = KeyPair::from_seed(&[66; 32]);
    let (sn, server) = challenge_of(&net.raw_frame(EVE, &hello(1)));
    let outs = net.raw_frame(EVE, &auth(&key, Nonce([1; 32]), sn, server, None));
    assert_eq!(codes(&outs), [ErrorCode::ServerFull.code()]);
    assert_eq!(close_code(&outs), Some(1013));
    // Fourth connection while three are open.
    net.raw_connect(ConnId(2));
    net.raw_connect(ConnId(3));
    let outs = net.raw.remove(&ConnId(3)).unwrap_or_default();
    assert_eq!(codes(&outs), [ErrorCode::ServerFull.code()]);
    assert_eq!(close_code(&outs), Some(1013));
    assert_pair_still_works(&mut net);
}

/// Every output to the attacker is a decodable error frame or a close.
fn well_formed(outs: &[Output]) -> bool {
    outs.iter().all(|o| match o {
        Output::Send { frame, .. } => matches!(
            ServerMsg::decode(frame),
            Ok(ServerMsg::Error { .. } | ServerMsg::Pong { .. } | ServerMsg::Challenge { .. })
        ),
        Output::Close { .. } => true,
    })
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic(frames in proptest::collection::vec(any::<String>(), 1..20)) {
        let mut net = Net::new(server_config());
        net.raw_connect(EVE);
        for f in &frames {
            let outs = net.raw_frame(EVE, f);
            prop_assert!(outs.len() <= 2);
            prop_assert!(well_formed(&outs), "{outs:?}");
        }
    }

    #[test]
    fn json_shaped_frames_never_panic(
        kind in prop::sample::select(vec!["hello", "auth", "register", "lookup", "offer", "answer", "candidate", "relay_request", "ping", "pong", "x"]),
        body in "[a-z\":,{}\\[\\]0-9 ]{0,80}",
    ) {
        let mut net = Net::new(server_config());
        net.raw_connect(EVE);
        let outs = net.raw_frame(EVE, &format!(r#"{{"type":"{kind}",{body}}}"#));
        prop_assert!(well_formed(&outs), "{outs:?}");
    }
}

/// A peer many call has spent its whole burst: its answers to the offers waiting for it still
/// pass (there can be no more of them than the callers' own rates allow), and its client knows
/// not to count them; anything else is still held to the rate.
#[test]
fn answers_owed_pass_a_spent_rate() {
    let mut net = Net::new(server_config());
    let hub = net.join(10, None, 20);
    let callers: Vec<usize> = (0..8).map(|k| net.join(20 + k, None, 20)).collect();
    let hub_id = net.nodes[hub].client.peer_id();
    for &c in &callers {
        net.nodes[c]
            .client
            .connect(hub_id, common::description(1))
            .unwrap();
    }
    net.run();
    let sessions: Vec<msg::SessionId> = net
        .take_events(hub)
        .into_iter()
        .filter_map(|e| match e {
            fog_signal::client::Event::Offer { session, .. } => Some(session),
            _ => None,
        })
        .collect();
    assert_eq!(sessions.len(), callers.len());
    let conn = net.nodes[hub].conn;
    let ping = |i: u32| format!(r#"{{"type":"ping","id":{i}}}"#);
    for i in 0..40 {
        net.server.handle_frame(net.now, conn, &ping(i));
    }
    for &session in &sessions {
        let client = &mut net.nodes[hub].client;
        client.answer(session, common::description(2)).unwrap();
        assert!(!client.next_frame_counts(), "an answer owed is not counted");
        let frame = client.poll_frame().unwrap();
        net.server.handle_frame(net.now, conn, &frame);
    }
    // Over the rate, an ordinary frame is refused.
    net.server.handle_frame(net.now, conn, &ping(99));
    net.run();
    for &c in &callers {
        let answered = net
            .take_events(c)
            .iter()
            .any(|e| matches!(e, fog_signal::client::Event::Answer { .. }));
        assert!(answered, "caller {c} got its answer");
    }
    let hub_events = net.take_events(hub);
    assert!(
        hub_events.iter().any(|e| matches!(
            e,
            fog_signal::client::Event::Error { code, .. } if *code == ErrorCode::RateLimited
        )),
        "{hub_events:?}"
    );
}

/// Answered sessions no longer expire (they live as long as their peers), so the caps are
/// what bound them. Two colluding peers that open and answer session after session for ten
/// minutes of virtual time (within the frame rate) hold at most `max_sessions_per_peer`;
/// the server holds at most `max_sessions` in all; both refusals are typed; a close makes
/// room again, and a peer that leaves for good has its sessions reclaimed.
#[test]
fn sessions_per_peer_and_in_all_are_bounded() {
    use fog_signal::client::Event;
    let mut config = server_config();
    config.limits.max_sessions_per_peer = 16;
    config.limits.max_sessions = 24;
    let mut net = Net::new(config);
    let mallory = net.join(10, None, 5);
    let mule = net.join(11, None, 5);
    let x = net.join(12, None, 5);
    let y = net.join(13, None, 5);
    for n in [mallory, mule, x, y] {
        net.take_events(n);
    }
    let mule_id = net.nodes[mule].client.peer_id();
    let (mut open, mut refused) = (Vec::new(), 0);
    for _ in 0..2_400 {
        net.nodes[mallory]
            .client
            .connect(mule_id, common::description(1))
            .unwrap();
        net.run();
        for e in net.take_events(mule) {
            if let Event::Offer { session, .. } = e {
                net.nodes[mule]
                    .client
                    .answer(session, common::description(2))
                    .unwrap();
            }
        }
        net.run();
        for e in net.take_events(mallory) {
            match e {
                Event::Answer { session, .. } => open.push(session),
                Event::Error {
                    code: ErrorCode::TooManySessions,
                    ..
                } => refused += 1,
                Event::OfferSent { .. } | Event::PunchAt { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(net.server.sessions() <= 16);
        net.advance(Duration::from_millis(250));
    }
    assert_eq!(open.len(), 16);
    assert_eq!(refused, 2_400 - 16);
    // The mule is full for everyone else too.
    net.nodes[x]
        .client
        .connect(mule_id, common::description(1))
        .unwrap();
    net.run();
    assert!(matches!(
        net.take_events(x).as_slice(),
        [Event::Error {
            code: ErrorCode::TooManySessions,
            ..
        }]
    ));
    // Others are not, up to the server's total.
    for _ in 0..8 {
        net.exchange(x, y);
    }
    assert_eq!(net.server.sessions(), 24);
    let y_id = net.nodes[y].client.peer_id();
    net.nodes[x]
        .client
        .connect(y_id, common::description(1))
        .unwrap();
    net.run();
    assert!(matches!(
        net.take_events(x).as_slice(),
        [Event::Error {
            code: ErrorCode::ServerFull,
            ..
        }]
    ));
    // A close makes room.
    net.nodes[mallory].client.close(open[0], 0, "done").unwrap();
    net.run();
    assert_eq!(net.server.sessions(), 23);
    net.exchange(x, y);
    // Mallory leaves for good: its 15 sessions go once the grace is over.
    net.server
        .handle_disconnect(net.now, net.nodes[mallory].conn);
    net.advance(Duration::from_secs(11));
    assert_eq!(net.server.sessions(), 9);
}
