//! fogd's signaling service over real loopback sockets: two `fog_signal::Client`s authenticate,
//! register, look up, offer and answer through it (also over wss with a certificate made here);
//! bad input gets the answer the service promises (404, 400, 1009, 1003, error frames, 1013, the
//! handshake timeout); SIGTERM stops it with exit 0 and its counters.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use fog_signal::client::Event;
use fog_signal::msg::{Candidate, CandidateKind, ErrorCode, ServerMsg};
use support::signal::{
    SignalFogd, SignalPeer, TlsClient, description, next_frame, open, recv, self_signed_cert, tcp,
    until_close,
};
use support::{A1, FinalStats, answers_stun, free_port_pair};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// The error code of an error frame; panics on any other frame.
fn error_code(m: &ServerMsg) -> u16 {
    match m {
        ServerMsg::Error { code, .. } => *code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Sends raw bytes on a new TCP connection and reads until the server closes it.
fn raw_exchange(fogd: &SignalFogd, request: &[u8]) -> String {
    let mut stream = tcp(fogd.addr, WAIT);
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("the server did not close the connection: {e}"));
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn two_peers_authenticate_register_offer_and_answer() {
    let fogd = SignalFogd::start(&["--realm", "signal.test"]);
    let mut a = SignalPeer::join(fogd.addr, None, "signal.test", 1, Some("Alice-Laptop"));
    let mut b = SignalPeer::join(fogd.addr, None, "signal.test", 2, None);
    let (a_id, b_id) = (a.client.peer_id(), b.client.peer_id());

    let r = a.client.register("printer-7").unwrap();
    let registered = a.wait_for(WAIT, |e| matches!(e, Event::Registered { .. }));
    assert_eq!(
        registered,
        Event::Registered {
            request: r,
            alias: "printer-7".into()
        }
    );

    let l = b.client.lookup("alice-laptop").unwrap();
    let found = b.wait_for(WAIT, |e| matches!(e, Event::LookupResult { .. }));
    assert_eq!(
        found,
        Event::LookupResult {
            request: l,
            peer: Some(a_id),
            online: true
        }
    );

    let o = b.client.connect(a_id, description(2)).unwrap();
    let session = match b.wait_for(WAIT, |e| matches!(e, Event::OfferSent { .. })) {
        Event::OfferSent { request, session } => {
            assert_eq!(request, o);
            session
        }
        _ => unreachable!(),
    };
    let offer = a.wait_for(WAIT, |e| matches!(e, Event::Offer { .. }));
    assert_eq!(
        offer,
        Event::Offer {
            session,
            from: b_id,
            description: description(2)
        }
    );

    a.client.answer(session, description(1)).unwrap();
    a.send_queued();
    let answer = b.wait_for(WAIT, |e| matches!(e, Event::Answer { .. }));
    assert_eq!(
        answer,
        Event::Answer {
            session,
            from: a_id,
            description: description(1)
        }
    );
    // Both sides are told when to punch.
    b.wait_for(
        WAIT,
        |e| matches!(e, Event::PunchAt { session: s, .. } if *s == session),
    );
    a.wait_for(
        WAIT,
        |e| matches!(e, Event::PunchAt { session: s, .. } if *s == session),
    );

    // A trickled candidate reaches the other side of the session only.
    let late = Candidate {
        kind: CandidateKind::Relay,
        addr: "198.51.100.1:50000".parse().unwrap(),
        priority: 16_777_215,
        related: None,
    };
    a.client.trickle(session, Some(late)).unwrap();
    a.send_queued();
    let trickled = b.wait_for(WAIT, |e| matches!(e, Event::Candidate { .. }));
    assert_eq!(
        trickled,
        Event::Candidate {
            session,
            candidate: Some(late),
            signature: None,
        }
    );

    let stats = fogd.stop();
    assert_eq!(stats.get("upgraded"), 2);
    assert_eq!(stats.get("peers_at_stop"), 2);
    assert_eq!(stats.get("closed_by_server"), 0);
    // hello and auth from each, then register, lookup, offer, answer, candidate.
    assert_eq!(stats.get("frames_in"), 9);
}

#[test]
fn a_wrong_path_gets_404_and_is_closed() {
    let fogd = SignalFogd::start(&[]);
    match open(fogd.addr, "/signal", None) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        Ok(_) => panic!("upgraded on /signal"),
        Err(e) => panic!("expected a 404, got {e}"),
    }
    let answer = raw_exchange(
        &fogd,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(
        answer.ends_with("not found: signaling is served at /ws\n"),
        "{answer}"
    );
    assert_eq!(fogd.stop().get("not_found"), 2);
}

#[test]
fn requests_that_are_not_an_upgrade_get_400_and_are_closed() {
    let fogd = SignalFogd::start(&[]);
    for request in [
        &b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\xa5 this is not HTTP\r\n\r\n",
        b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ] {
        let answer = raw_exchange(&fogd, request);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {answer}"
        );
    }
    assert_eq!(fogd.stop().get("bad_requests"), 3);
}

#[test]
fn plain_gets_get_the_browser_client_files_or_404() {
    let fogd = SignalFogd::start(&[]);
    let js = raw_exchange(&fogd, b"GET /fogconnect.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(js.starts_with("HTTP/1.1 200 OK\r\n"), "{js}");
    assert!(
        js.contains("Content-Type: text/javascript; charset=utf-8\r\n"),
        "{js}"
    );
    assert!(js.contains("export class Signal"), "{js}");
    let page = raw_exchange(
        &fogd,
        b"GET /?peer=X&selftest=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(
        page.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{page}"
    );
    assert!(page.contains("import { Identity, Signal } from \"/fogconnect.js\""));
    for path in [
        "/etc/passwd",
        "/../fogconnect.js",
        "/fogconnect.js/x",
        "/web/index.html",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw_exchange(&fogd, request.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {answer}"
        );
    }
    let stats = fogd.stop();
    assert_eq!(stats.get("served"), 6);
    assert_eq!(stats.get("bad_requests"), 0);
}

#[test]
fn a_frame_over_the_limit_is_closed_with_1009() {
    let fogd = SignalFogd::start(&["--max-frame-len", "2048"]);
    let mut ws = open(fogd.addr, "/ws", None).unwrap();
    // Exactly the limit passes to the machine (which finds no JSON in it) ...
    ws.send(Message::text("x".repeat(2048))).unwrap();
    assert_eq!(error_code(&next_frame(&mut ws, WAIT)), 1001);
    // ... one byte more does not.
    ws.send(Message::text("x".repeat(2049))).unwrap();
    let (code, reason, frames) = until_close(&mut ws, WAIT);
    assert_eq!(code, 1009);
    assert_eq!(reason, "frame over 2048 bytes");
    assert_eq!(frames.iter().map(error_code).collect::<Vec<_>>(), [1004]);
    let stats = fogd.stop();
    assert_eq!(stats.get("too_large"), 1);
}

#[test]
fn a_binary_frame_is_refused_with_1003() {
    let fogd = SignalFogd::start(&[]);
    let mut ws = open(fogd.addr, "/ws", None).unwrap();
    ws.send(Message::binary(br#"{"type":"ping","id":1}"#.to_vec()))
        .unwrap();
    let (code, reason, frames) = until_close(&mut ws, WAIT);
    assert_eq!(code, 1003);
    assert!(reason.contains("text frames"), "{reason}");
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(fogd.stop().get("binary_refused"), 1);
}

#[test]
fn websocket_pings_are_answered() {
    let fogd = SignalFogd::start(&[]);
    let mut ws = open(fogd.addr, "/ws", None).unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match recv(&mut ws, WAIT) {
        Ok(Some(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    drop(fogd);
}

#[test]
fn malformed_json_gets_its_error_code_and_other_peers_keep_working() {
    let fogd = SignalFogd::start(&[]);
    let realm = "127.0.0.1";
    let mut a = SignalPeer::join(fogd.addr, None, realm, 1, Some("alice"));
    let mut b = SignalPeer::join(fogd.addr, None, realm, 2, None);

    let mut raw = open(fogd.addr, "/ws", None).unwrap();
    raw.send(Message::text("{\"type\":\"hello\",")).unwrap();
    assert_eq!(error_code(&next_frame(&mut raw, WAIT)), 1001);
    raw.send(Message::text(r#"{"type":"teleport"}"#)).unwrap();
    assert_eq!(error_code(&next_frame(&mut raw, WAIT)), 1002);
    // The bad connection itself stays open, and so do the others.
    raw.send(Message::text(r#"{"type":"ping","id":5}"#))
        .unwrap();
    assert_eq!(next_frame(&mut raw, WAIT), ServerMsg::Pong { id: 5 });

    let l = b.client.lookup("alice").unwrap();
    assert_eq!(
        b.wait_for(WAIT, |e| matches!(e, Event::LookupResult { .. })),
        Event::LookupResult {
            request: l,
            peer: Some(a.client.peer_id()),
            online: true
        }
    );
    let r = a.client.register("alice-2").unwrap();
    a.send_queued();
    assert_eq!(
        a.wait_for(WAIT, |e| matches!(e, Event::Registered { .. })),
        Event::Registered {
            request: r,
            alias: "alice-2".into()
        }
    );
    drop(fogd);
}

#[test]
fn connections_over_the_limit_are_refused_with_a_reason() {
    let fogd = SignalFogd::start(&["--max-connections", "2"]);
    let mut first = open(fogd.addr, "/ws", None).unwrap();
    let _second = open(fogd.addr, "/ws", None).unwrap();
    let mut third = open(fogd.addr, "/ws", None).unwrap();
    let (code, reason, frames) = until_close(&mut third, WAIT);
    assert_eq!(code, 1013);
    assert_eq!(reason, "server full");
    assert_eq!(frames.iter().map(error_code).collect::<Vec<_>>(), [3002]);
    // The ones inside the limit are served.
    first
        .send(Message::text(r#"{"type":"ping","id":9}"#))
        .unwrap();
    assert_eq!(next_frame(&mut first, WAIT), ServerMsg::Pong { id: 9 });
    let stats = fogd.stop();
    assert_eq!(stats.get("upgraded"), 3);
    assert_eq!(stats.get("closed_by_server"), 1);
}

#[test]
fn a_slow_handshake_is_cut_after_the_timeout() {
    let fogd = SignalFogd::start(&["--handshake-timeout-ms", "400"]);
    let started = Instant::now();
    let mut slow = tcp(fogd.addr, WAIT);
    // Half a request, then nothing: the slowloris pattern.
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    let outcome = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        matches!(&outcome, Ok(0))
            || matches!(&outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{outcome:?}"
    );
    assert!(rest.is_empty(), "the server answered {rest:?}");
    assert!(waited >= Duration::from_millis(350), "cut after {waited:?}");
    assert!(waited < Duration::from_secs(3), "cut after {waited:?}");
    // A prompt client is still served.
    assert!(open(fogd.addr, "/ws", None).is_ok());
    assert_eq!(fogd.stop().get("handshake_timeouts"), 1);
}

#[test]
fn sigterm_stops_both_services_with_exit_0_and_their_counters() {
    let (p1, _) = free_port_pair();
    let stun = std::net::SocketAddr::new(A1, p1);
    let stun_arg = stun.to_string();
    let mut fogd = SignalFogd::start(&["--stun", &stun_arg]);
    assert!(answers_stun(stun, WAIT), "STUN does not answer");
    let mut peer = SignalPeer::join(fogd.addr, None, "127.0.0.1", 3, None);

    let status = fogd.child.terminate(Duration::from_secs(10));
    let text = fogd.child.output_text();
    let status = status.unwrap_or_else(|| panic!("fogd did not exit on SIGTERM\n{text}"));
    assert!(status.success(), "fogd exited with {status}\n{text}");
    // The open connection was told why it ends.
    let (code, reason, _) = until_close(&mut peer.ws, WAIT);
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));

    let log = fogd.child.stderr_text();
    let signal = FinalStats::parse_line(&log, "signal stopped").expect("signal counters");
    assert_eq!(signal.get("upgraded"), 1);
    assert_eq!(signal.get("frames_in"), 2, "hello and auth");
    assert_eq!(signal.get("frames_out"), 2, "challenge and welcome");
    assert_eq!(signal.get("peers_at_stop"), 1);
    let stun = FinalStats::parse_line(&log, "STUN stopped").expect("STUN counters");
    assert!(stun.get("answered") >= 1, "{stun:?}");
}

#[test]
fn wss_end_to_end_with_a_generated_certificate() {
    let (cert, key, der) = self_signed_cert();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let fogd = SignalFogd::start(&["--tls-cert", cert, "--tls-key", key, "--realm", "localhost"]);
    let tls = TlsClient::trusting(der, "localhost");
    let mut a = SignalPeer::join(fogd.addr, Some(&tls), "localhost", 1, Some("alice"));
    let mut b = SignalPeer::join(fogd.addr, Some(&tls), "localhost", 2, None);

    b.client
        .connect(a.client.peer_id(), description(2))
        .unwrap();
    b.send_queued();
    let session = match a.wait_for(WAIT, |e| matches!(e, Event::Offer { .. })) {
        Event::Offer {
            session,
            from,
            description: d,
        } => {
            assert_eq!((from, d), (b.client.peer_id(), description(2)));
            session
        }
        _ => unreachable!(),
    };
    a.client.answer(session, description(1)).unwrap();
    a.send_queued();
    match b.wait_for(WAIT, |e| matches!(e, Event::Answer { .. })) {
        Event::Answer { description: d, .. } => assert_eq!(d, description(1)),
        _ => unreachable!(),
    }

    // Plain WebSocket on the TLS port is not TLS: refused without an upgrade.
    assert!(open(fogd.addr, "/ws", None).is_err());
    // The certificate is checked: a client trusting another one refuses the server.
    let (_, _, other) = self_signed_cert();
    let stranger = TlsClient::trusting(other, "localhost");
    assert!(open(fogd.addr, "/ws", Some(&stranger)).is_err());

    let stats = fogd.stop();
    assert_eq!(stats.get("upgraded"), 2);
    assert!(stats.get("tls_errors") >= 2, "{stats:?}");
}

#[test]
fn a_client_that_does_not_read_is_dropped_at_max_unsent() {
    // Offers of about 6 KiB to one peer that never reads: once the kernel's buffers are full,
    // fogd's own buffer for it grows to --max-unsent and the connection is dropped.
    let fogd = SignalFogd::start(&[
        "--max-pending-offers",
        "100000",
        "--frames-per-second",
        "100000",
        "--max-unsent",
        "65536",
    ]);
    let realm = "127.0.0.1";
    let mut sender = SignalPeer::join(fogd.addr, None, realm, 1, None);
    let sleeper = SignalPeer::join(fogd.addr, None, realm, 2, None);
    let mut big = description(1);
    big.candidates = (0..48)
        .map(|i| Candidate {
            kind: CandidateKind::Host,
            addr: std::net::SocketAddr::new(A1, 20_000 + i),
            priority: 2_130_706_431,
            related: Some("192.0.2.200:65000".parse().unwrap()),
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u32;
    while !fogd.child.stderr_text().contains("does not read") {
        assert!(
            Instant::now() < deadline,
            "not dropped after {sent} offers\n{}",
            fogd.child.output_text()
        );
        // Ten at a time, each batch answered before the next, so that the sender stays
        // within its burst of 40 frames however fogd's reads coalesce.
        for _ in 0..10 {
            sender
                .client
                .connect(sleeper.client.peer_id(), big.clone())
                .unwrap();
            sent += 1;
        }
        for _ in 0..10 {
            let reply = sender.wait_for(WAIT, |e| {
                matches!(e, Event::OfferSent { .. } | Event::Error { .. })
            });
            // Once fogd has dropped the sleeper, offers to it find nobody; nothing else fails.
            if let Event::Error { code, .. } = reply {
                assert_eq!(
                    code,
                    ErrorCode::UnknownPeer,
                    "after {sent} offers: {reply:?}"
                );
            }
        }
    }
    let stats = fogd.stop();
    assert_eq!(stats.get("overflowed"), 1);
    assert_eq!(stats.get("peers_at_stop"), 1);
    drop(sleeper);
}

#[test]
fn a_config_file_sets_limits_and_a_misspelt_key_stops_the_start() {
    let path = support::scratch_file("fogd.toml");
    std::fs::write(&path, "[signal]\nmax-connections = 1\n").unwrap();
    let fogd = SignalFogd::start(&["--config", path.to_str().unwrap()]);
    let _first = open(fogd.addr, "/ws", None).unwrap();
    let mut second = open(fogd.addr, "/ws", None).unwrap();
    let (code, _, _) = until_close(&mut second, WAIT);
    assert_eq!(code, 1013);
    drop(fogd);

    std::fs::write(
        &path,
        "[signal]\nsignal = \"127.0.0.1:0\"\nmax-conections = 1\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fogd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown field `max-conections`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");

    // A file that names no service, and no service flag: nothing to run.
    std::fs::write(&path, "[signal]\nmax-peers = 5\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fogd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no service configured"), "{stderr}");
}

#[test]
fn the_server_key_is_created_once_and_kept() {
    let path = support::scratch_file("server.key");
    let key = path.to_str().unwrap();
    let first = SignalFogd::start(&["--key", key]);
    let id_line = |log: &str| {
        log.lines()
            .find(|l| l.contains("signal listening"))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("server=")))
            .map(str::to_owned)
            .expect("server= in the listening line")
    };
    let created = id_line(&first.child.stderr_text());
    assert!(first.child.stderr_text().contains("key=created in"));
    drop(first);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = SignalFogd::start(&["--key", key]);
    assert_eq!(id_line(&second.child.stderr_text()), created);
    assert!(second.child.stderr_text().contains("key=loaded from"));
}

#[test]
fn a_handshake_sent_in_pieces_completes() {
    let fogd = SignalFogd::start(&["--handshake-timeout-ms", "3000"]);
    let mut stream = tcp(fogd.addr, WAIT);
    let request = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // Five pieces with pauses: each reaches fogd as its own read, mid-handshake.
    for piece in request.as_bytes().chunks(request.len() / 5 + 1) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    // RFC 6455 §1.3's example key and its accept value.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let conn = support::signal::Conn::Plain(stream);
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(conn, tungstenite::protocol::Role::Client, None);
    ws.send(Message::text(r#"{"type":"ping","id":3}"#)).unwrap();
    assert_eq!(next_frame(&mut ws, WAIT), ServerMsg::Pong { id: 3 });
    assert_eq!(fogd.stop().get("upgraded"), 1);
}

#[test]
fn a_close_from_the_client_is_answered_and_counted() {
    let fogd = SignalFogd::start(&[]);
    let mut ws = open(fogd.addr, "/ws", None).unwrap();
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    // The server's reply completes the closing handshake; then the connection ends.
    let end = loop {
        match recv(&mut ws, WAIT) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no reply to the close frame"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, tungstenite::Error::ConnectionClosed), "{end}");
    let stats = fogd.stop();
    assert_eq!(stats.get("closed_by_client"), 1);
    assert_eq!(stats.get("connections_at_stop"), 0);
}

#[test]
fn a_text_frame_that_is_not_utf8_is_closed_with_1007() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let fogd = SignalFogd::start(&[]);
    let mut ws = open(fogd.addr, "/ws", None).unwrap();
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).unwrap();
    let (code, reason, frames) = until_close(&mut ws, WAIT);
    assert_eq!((code, reason.as_str()), (1007, "text frame is not UTF-8"));
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(fogd.stop().get("protocol_errors"), 1);
}

#[test]
fn idle_sockets_beyond_the_slack_are_dropped_at_once() {
    // One connection allowed, plus 256 sockets of slack for handshakes and refusals.
    let fogd = SignalFogd::start(&["--max-connections", "1", "--handshake-timeout-ms", "60000"]);
    let _open = open(fogd.addr, "/ws", None).unwrap();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| tcp(fogd.addr, Duration::from_millis(20)))
        .collect();
    // Count the ones fogd closed unanswered (without blocking: an open socket has nothing to
    // read, a dropped one is at its end), until all it will drop are dropped.
    for stream in &idle {
        stream.set_nonblocking(true).unwrap();
    }
    let count_closed = || {
        idle.iter()
            .filter(|stream| {
                let mut stream: &std::net::TcpStream = stream;
                matches!(stream.read(&mut [0u8; 1]), Ok(0))
            })
            .count()
    };
    let deadline = Instant::now() + WAIT;
    let mut closed = count_closed();
    while closed < 300 - 256 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        closed = count_closed();
    }
    assert_eq!(closed, 300 - 256);
    let stats = fogd.stop();
    assert_eq!(stats.get("dropped_at_capacity"), 300 - 256);
    assert_eq!(stats.get("accepted"), 301);
}
