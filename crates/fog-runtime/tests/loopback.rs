//! Two runtimes on loopback through a real fogd (STUN and signaling): refuse, accept, datagrams
//! both ways, stats, close from either side, and a shutdown that tells the peer. One runtime
//! delivers its events on the channel, the other on a callback.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fog_test_support::ChildGuard;
use fogconnect::{
    AcceptPolicy, CloseReason, ConnectionId, Event, FailReason, KeyPair, NodeConfig, Transport, Via,
};

const WAIT: Duration = Duration::from_secs(20);

/// fogd with STUN on two loopback addresses and signaling, on free ports, with `extra`
/// arguments; the child, the STUN server and the signaling address.
fn fogd_with(extra: &[&str]) -> (ChildGuard, SocketAddr, SocketAddr) {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the test's own path"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
    fog_test_support::fogd_for_nodes(&exe, "fogd-runtime", |_| extra.clone(), WAIT)
}

/// fogd with plain signaling; the child, the STUN server and the ws URL.
fn fogd() -> (ChildGuard, SocketAddr, String) {
    let (child, stun, signal) = fogd_with(&[]);
    (child, stun, format!("ws://{signal}/ws"))
}

fn config(seed: u8, stun: SocketAddr, url: &str) -> RuntimeConfig {
    let key = KeyPair::from_seed(&[seed; 32]);
    let mut node = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 7);
    node.accept = AcceptPolicy::Ask;
    RuntimeConfig::new(node, url.parse().unwrap())
}

/// The first event `want` picks within [`WAIT`]; the events before it are kept in `seen`.
fn wait_for<T>(
    events: &Receiver<Event>,
    seen: &mut Vec<Event>,
    mut want: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no awaited event ({e}); saw {seen:#?}"));
        if let Some(value) = want(&event) {
            return value;
        }
        seen.push(event);
    }
}

fn ready(events: &Receiver<Event>, seen: &mut Vec<Event>) {
    wait_for(events, seen, |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    });
    if !seen.contains(&Event::SignalingUp) {
        wait_for(events, seen, |e| (*e == Event::SignalingUp).then_some(()));
    }
}

fn incoming(events: &Receiver<Event>, seen: &mut Vec<Event>) -> (ConnectionId, u16) {
    wait_for(events, seen, |e| match e {
        Event::Incoming { id, service, .. } => Some((*id, *service)),
        _ => None,
    })
}

fn connected(events: &Receiver<Event>, seen: &mut Vec<Event>, want: ConnectionId) -> (Via, bool) {
    wait_for(events, seen, |e| match e {
        Event::Connected {
            id, via, passive, ..
        } if *id == want => Some((*via, *passive)),
        _ => None,
    })
}

#[test]
fn two_runtimes_refuse_accept_exchange_and_close() {
    let (_fogd, stun, url) = fogd();
    // A: events on the channel. B: events on a callback, forwarded here.
    let a = Runtime::start(config(1, stun, &url)).expect("A starts");
    let (tx, b_events) = mpsc::channel();
    let b = Runtime::start_with_callback(config(2, stun, &url), move |e| {
        let _ = tx.send(e);
    })
    .expect("B starts");
    let (ha, hb) = (a.handle(), b.handle());
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    ready(a.events(), &mut seen_a);
    ready(&b_events, &mut seen_b);

    // A refusal, with its reason, and the refused handle is gone.
    let first = ha.connect(hb.peer_id(), 5).unwrap();
    let (offer, service) = incoming(&b_events, &mut seen_b);
    assert_eq!(service, 5);
    hb.refuse(offer, 9, "not now").unwrap();
    let reason = wait_for(a.events(), &mut seen_a, |e| match e {
        Event::Failed { id, reason } if *id == first => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason,
        FailReason::Refused {
            code: 9,
            reason: "not now".into()
        }
    );
    assert!(hb.accept(offer).is_err());

    // Accepted: both connected, directly (loopback has no NAT), the passive side knows it.
    let id_a = ha.connect(hb.peer_id(), 6).unwrap();
    let (id_b, service) = incoming(&b_events, &mut seen_b);
    assert_eq!(service, 6);
    hb.accept(id_b).unwrap();
    assert_eq!(
        connected(a.events(), &mut seen_a, id_a),
        (Via::Direct, false)
    );
    assert_eq!(connected(&b_events, &mut seen_b, id_b), (Via::Direct, true));

    // A datagram there and back.
    ha.send(id_a, b"ping").unwrap();
    let data = wait_for(&b_events, &mut seen_b, |e| match e {
        Event::Data { id, data } if *id == id_b => Some(data.clone()),
        _ => None,
    });
    assert_eq!(data, b"ping");
    hb.send(id_b, b"pong").unwrap();
    let data = wait_for(a.events(), &mut seen_a, |e| match e {
        Event::Data { id, data } if *id == id_a => Some(data.clone()),
        _ => None,
    });
    assert_eq!(data, b"pong");
    let stats = ha.stats(id_a).unwrap().expect("A knows the connection");
    assert_eq!((stats.sent_datagrams, stats.sent_bytes), (1, 4));
    assert_eq!((stats.received_datagrams, stats.received_bytes), (1, 4));
    assert_eq!(stats.path.map(|p| p.0), Some(Via::Direct));
    assert!(stats.rtt.is_some());

    // A closes; B hears it from the peer.
    ha.close(id_a, 3, "bye").unwrap();
    let closed = wait_for(&b_events, &mut seen_b, |e| match e {
        Event::Closed {
            id,
            reason,
            by_peer,
        } if *id == id_b => Some((reason.clone(), *by_peer)),
        _ => None,
    });
    assert_eq!(
        closed,
        (
            CloseReason::Application {
                code: 3,
                reason: "bye".into()
            },
            true
        )
    );
    assert_eq!(hb.stats(id_b).unwrap(), None, "B released it");

    // A last connection, ended by B's shutdown: A hears the close.
    let id_a = ha.connect(hb.peer_id(), 7).unwrap();
    let (id_b, _) = incoming(&b_events, &mut seen_b);
    hb.accept(id_b).unwrap();
    connected(a.events(), &mut seen_a, id_a);
    b.shutdown().expect("B stops cleanly");
    let closed = wait_for(a.events(), &mut seen_a, |e| match e {
        Event::Closed {
            id,
            reason,
            by_peer,
        } if *id == id_a => Some((reason.clone(), *by_peer)),
        _ => None,
    });
    assert_eq!(
        closed,
        (
            CloseReason::Application {
                code: 0,
                reason: "shutdown".into()
            },
            true
        )
    );
    assert!(
        hb.connect(ha.peer_id(), 1).is_err(),
        "a stopped runtime's handle says so"
    );
    a.shutdown().expect("A stops cleanly");
}

/// fogd with signaling over TLS (a self-signed certificate for `localhost`); the wss URL and
/// the certificate.
fn fogd_wss() -> (
    ChildGuard,
    SocketAddr,
    String,
    rustls_pki_types::CertificateDer<'static>,
) {
    let (cert, key, der) = fog_test_support::self_signed_cert();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (child, stun, signal) =
        fogd_with(&["--realm", "localhost", "--tls-cert", cert, "--tls-key", key]);
    let url = format!("wss://localhost:{}/ws", signal.port());
    (child, stun, url, der)
}

/// Over `wss://`: two runtimes that trust the server's certificate connect and exchange a
/// datagram; one that trusts another certificate does not start, and says why.
#[test]
fn two_runtimes_meet_over_wss_and_an_untrusted_server_is_refused() {
    let (_fogd, stun, url, der) = fogd_wss();
    let trusting = |seed| {
        let mut c = config(seed, stun, &url);
        c.node.realm = "localhost".into();
        c.tls_roots = fog_runtime::TlsRoots::trusting([der.clone()]).unwrap();
        c
    };
    let a = Runtime::start(trusting(11)).expect("A starts over wss");
    let b = Runtime::start(trusting(12)).expect("B starts over wss");
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    ready(a.events(), &mut seen_a);
    ready(b.events(), &mut seen_b);
    let id_a = a.handle().connect(b.handle().peer_id(), 1).unwrap();
    let (id_b, _) = incoming(b.events(), &mut seen_b);
    b.handle().accept(id_b).unwrap();
    assert_eq!(connected(a.events(), &mut seen_a, id_a).0, Via::Direct);
    a.handle().send(id_a, b"over tls").unwrap();
    let data = wait_for(b.events(), &mut seen_b, |e| match e {
        Event::Data { data, .. } => Some(data.clone()),
        _ => None,
    });
    assert_eq!(data, b"over tls");

    let (_, _, other) = fog_test_support::self_signed_cert();
    let mut stranger = config(13, stun, &url);
    stranger.node.realm = "localhost".into();
    stranger.tls_roots = fog_runtime::TlsRoots::trusting([other]).unwrap();
    let error = Runtime::start(stranger).expect_err("a server it does not trust");
    assert!(
        error.to_string().contains("handshake"),
        "the reason names the failed handshake: {error}"
    );
    // Mozilla's roots do not include a self-signed certificate either.
    let mut public = config(14, stun, &url);
    public.node.realm = "localhost".into();
    assert!(Runtime::start(public).is_err());
}

/// The next data of connection `want`.
fn data_on(events: &Receiver<Event>, seen: &mut Vec<Event>, want: ConnectionId) -> Vec<u8> {
    wait_for(events, seen, |e| match e {
        Event::Data { id, data } if *id == want => Some(data.clone()),
        _ => None,
    })
}

/// Why the peer closed connection `want`.
fn closed_by_peer(
    events: &Receiver<Event>,
    seen: &mut Vec<Event>,
    want: ConnectionId,
) -> CloseReason {
    wait_for(events, seen, |e| match e {
        Event::Closed {
            id,
            reason,
            by_peer: true,
        } if *id == want => Some(reason.clone()),
        _ => None,
    })
}

/// Two runtimes with keys from `seeds`, A connected to B over `transport` (B's incoming
/// event names it): both runtimes, A's and B's connection, and what else B saw meanwhile.
fn stream_pair(
    seeds: (u8, u8),
    stun: SocketAddr,
    url: &str,
    transport: Transport,
) -> (Runtime, Runtime, ConnectionId, ConnectionId, Vec<Event>) {
    let a = Runtime::start(config(seeds.0, stun, url)).expect("A starts");
    let b = Runtime::start(config(seeds.1, stun, url)).expect("B starts");
    let (ha, hb) = (a.handle(), b.handle());
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    ready(a.events(), &mut seen_a);
    ready(b.events(), &mut seen_b);
    let id_a = ha.connect_with(hb.peer_id(), 3, transport.clone()).unwrap();
    let id_b = wait_for(b.events(), &mut seen_b, |e| match e {
        Event::Incoming {
            id, transport: t, ..
        } => {
            assert_eq!(*t, transport);
            Some(*id)
        }
        _ => None,
    });
    hb.accept(id_b).unwrap();
    connected(a.events(), &mut seen_a, id_a);
    (a, b, id_a, id_b, seen_b)
}

/// Over KCP on real sockets: messages from a few bytes to 100 KB (many fragments) arrive
/// whole and in order, the incoming event names the transport, and a close after the last
/// send lets everything arrive first.
#[test]
fn two_runtimes_move_messages_over_kcp() {
    let (_fogd, stun, url) = fogd();
    let (a, b, id_a, id_b, mut seen_b) = stream_pair((11, 12), stun, &url, Transport::Kcp);
    let ha = a.handle();
    let sizes = [1usize, 500, 1_400, 5_000, 100_000, 64, 30_000];
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| (i * 7 + k) as u8).collect())
        .collect();
    for m in &messages {
        ha.send(id_a, m).unwrap();
    }
    ha.close(id_a, 8, "sent it all").unwrap();
    let mut got = Vec::new();
    while got.len() < messages.len() {
        got.push(data_on(b.events(), &mut seen_b, id_b));
    }
    assert!(got == messages, "every message whole and in order");
    let closed = closed_by_peer(b.events(), &mut seen_b, id_b);
    assert_eq!(
        closed,
        CloseReason::Application {
            code: 8,
            reason: "sent it all".into()
        }
    );
}

/// A runtime shut down with a stream connection open closes it gracefully: what it sent
/// arrives, then the peer hears the close (before, the runtime stopped within 200 ms while
/// the stream was still closing, and the peer heard nothing until its idle timeout).
#[test]
fn a_shutdown_delivers_what_was_sent_and_tells_the_peer() {
    let (_fogd, stun, url) = fogd();
    let (a, b, id_a, id_b, mut seen_b) = stream_pair((13, 14), stun, &url, Transport::Quic);
    let ha = a.handle();
    let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ha.send(id_a, &message).unwrap();
    a.shutdown().expect("A stops");
    let got = data_on(b.events(), &mut seen_b, id_b);
    assert!(
        got == message,
        "the message sent before the shutdown, whole"
    );
    let closed = closed_by_peer(b.events(), &mut seen_b, id_b);
    assert_eq!(
        closed,
        CloseReason::Application {
            code: 0,
            reason: "shutdown".into()
        }
    );
}

/// Over QUIC on real sockets, messages handed over as buffers (`send_vec`, which QUIC keeps
/// without a copy) arrive whole and in order, and the receiver acknowledges what one read of
/// its socket brought at once, as quinn's own endpoint does, not every second datagram (RFC
/// 9000 §13.2.2's default): its datagrams, nearly all acknowledgements, are well under half of
/// what it received (at every second packet it would be about half).
#[test]
fn a_quic_receiver_acknowledges_each_read_batch_once() {
    let (_fogd, stun, url) = fogd();
    let (a, b, id_a, id_b, mut seen_b) = stream_pair((15, 16), stun, &url, Transport::Quic);
    let (ha, hb) = (a.handle(), b.handle());
    let before = hb.io_stats().unwrap();
    let messages: Vec<Vec<u8>> = (0..64u32)
        .map(|k| (0..60_000u32).map(|i| (i * 13 + k) as u8).collect())
        .collect();
    let deadline = Instant::now() + WAIT;
    for m in &messages {
        loop {
            match ha.send_vec(id_a, m.clone()) {
                Ok(()) => break,
                Err(fog_runtime::RuntimeError::Send(fogconnect::SendError::Blocked))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }
    let mut got = Vec::new();
    while got.len() < messages.len() {
        got.push(data_on(b.events(), &mut seen_b, id_b));
    }
    assert!(got == messages, "every message whole and in order");
    let after = hb.io_stats().unwrap();
    let (sent, received) = (after.sent - before.sent, after.received - before.received);
    println!("B sent {sent} datagrams for {received} received");
    // 3.84 MB in 1,366-byte packets.
    assert!(received > 2_800, "B received {received} datagrams");
    assert!(
        sent * 10 < received * 3,
        "B sent {sent} datagrams for {received} received"
    );
}
