//! fogd's STUN service on real loopback sockets, seen by a minimal client written here on
//! `fog_stun::wire` and `std::net::UdpSocket`: the RFC 5780 attributes, CHANGE-REQUEST from the
//! other IP and port, hostile input, the rate limit, clean shutdown and start-up errors.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use fog_stun::wire::{
    BindingRequest, BindingResponse, Class, Cookie, ErrorCode, Message, Method, TransactionId,
};
use support::{A1, A2, ChildGuard, Fogd, free_port_pair};

/// A client socket on 127.0.0.1 that gives up on an answer after a second.
fn client() -> UdpSocket {
    let socket = UdpSocket::bind((A1, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket
}

/// Sends `request` to `server` and returns the answer with the address it came from.
fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    request: &BindingRequest,
) -> (BindingResponse, SocketAddr) {
    let mut buf = [0u8; 1500];
    let len = request.encode(&mut buf).unwrap();
    socket.send_to(&buf[..len], server).unwrap();
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {server}: {e}"));
    let response = BindingResponse::decode(&buf[..n])
        .expect("a valid STUN message")
        .expect("a Binding response");
    assert_eq!(response.transaction_id, request.transaction_id);
    (response, from)
}

fn request(id: u8, change_ip: bool, change_port: bool) -> BindingRequest {
    BindingRequest {
        change_ip,
        change_port,
        fingerprint: true,
        ..BindingRequest::new(TransactionId::new([id; 12]))
    }
}

#[test]
fn binding_answers_carry_the_rfc5780_attributes_from_the_right_address() {
    let fogd = Fogd::start(&[]);
    let (a1p1, a2p2) = (fogd.primary, fogd.alternate.unwrap());
    let (p1, p2) = (a1p1.port(), a2p2.port());
    let socket = client();
    let me = socket.local_addr().unwrap();

    // (change IP, change port) -> where the answer must come from, for a request to A1:P1.
    let cases = [
        ((false, false), a1p1),
        ((false, true), SocketAddr::new(A1, p2)),
        ((true, false), SocketAddr::new(A2, p1)),
        ((true, true), a2p2),
    ];
    for (i, ((change_ip, change_port), expected_from)) in cases.into_iter().enumerate() {
        let (response, from) = exchange(&socket, a1p1, &request(i as u8, change_ip, change_port));
        let what = format!("change_ip={change_ip} change_port={change_port}");
        assert_eq!(response.error, None, "{what}");
        assert_eq!(from, expected_from, "{what}: sent from");
        assert_eq!(response.xor_mapped, Some(me), "{what}: XOR-MAPPED-ADDRESS");
        assert_eq!(response.mapped, Some(me), "{what}: MAPPED-ADDRESS");
        assert_eq!(
            response.response_origin,
            Some(from),
            "{what}: RESPONSE-ORIGIN"
        );
        // OTHER-ADDRESS is the other IP and port of the address the request arrived on.
        assert_eq!(response.other_address, Some(a2p2), "{what}: OTHER-ADDRESS");
        assert!(response.fingerprint, "{what}: FINGERPRINT mirrored");
    }

    // Arriving on A2:P2, "the other" is A1:P1.
    let (response, from) = exchange(&socket, a2p2, &request(9, true, true));
    assert_eq!(from, a1p1);
    assert_eq!(response.response_origin, Some(a1p1));
    assert_eq!(response.other_address, Some(a1p1));
    assert_eq!(response.xor_mapped, Some(me));

    let stats = fogd.stop();
    assert_eq!(stats.get("answered"), 5);
    assert_eq!(stats.get("sent"), 5);
}

#[test]
fn rfc3489_clients_get_mapped_source_and_changed_address() {
    let fogd = Fogd::start(&[]);
    let socket = client();
    let mut message = Message::new(Class::Request, Method::BINDING, TransactionId::new([3; 12]));
    message.cookie = Cookie::Classic([1, 2, 3, 4]);
    let bytes = message.to_bytes(None).unwrap();
    socket.send_to(&bytes, fogd.primary).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    let response = BindingResponse::decode(&buf[..n]).unwrap().unwrap();
    assert_eq!(from, fogd.primary);
    assert_eq!(response.cookie, Cookie::Classic([1, 2, 3, 4]));
    assert_eq!(response.mapped, Some(socket.local_addr().unwrap()));
    assert_eq!(response.xor_mapped, None);
    assert_eq!(response.source_address, Some(fogd.primary));
    assert_eq!(response.changed_address, fogd.alternate);
    assert_eq!(fogd.stop().get("classic"), 1);
}

#[test]
fn one_ipv6_address_answers_and_refuses_change_request() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if UdpSocket::bind((v6, 0)).is_err() {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    }
    let fogd = Fogd::start_with(|p1, _| (SocketAddr::new(v6, p1), None), &[]);
    let socket = UdpSocket::bind((v6, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (response, from) = exchange(&socket, fogd.primary, &request(1, false, false));
    assert_eq!(from, fogd.primary);
    assert_eq!(response.xor_mapped, Some(socket.local_addr().unwrap()));
    assert_eq!(response.other_address, None);
    // RFC 5780 §6.1: without an alternate address, CHANGE-REQUEST is an unknown attribute.
    let (response, _) = exchange(&socket, fogd.primary, &request(2, true, false));
    assert_eq!(
        response.error.map(|e| e.code),
        Some(ErrorCode::UNKNOWN_ATTRIBUTE)
    );
    let stats = fogd.stop();
    assert_eq!(
        (stats.get("answered"), stats.get("error_responses")),
        (1, 1)
    );
}

#[test]
fn garbage_is_counted_and_fogd_keeps_answering() {
    let fogd = Fogd::start(&[]);
    let socket = client();
    let server = fogd.primary;

    // First byte 0–3 and at least a header long (STUN by RFC 7983) but not a valid message:
    // the server machine counts them.
    let mut stun_looking: Vec<Vec<u8>> = vec![
        // A length field (0x0303) the datagram does not have.
        vec![0x03; 20],
        // A header whose length field promises more than follows.
        [
            &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42][..],
            &[0; 12],
        ]
        .concat(),
        // A length not a multiple of 4.
        [
            &[0x00, 0x01, 0x00, 0x02, 0x21, 0x12, 0xA4, 0x42][..],
            &[0; 14],
        ]
        .concat(),
        // An attribute running past the end.
        [
            &[0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42][..],
            &[0; 12],
            &[0x00, 0x20, 0x00, 0x40],
        ]
        .concat(),
    ];
    // Pseudo-random bytes (a fixed LCG, so a failure replays), first byte forced into 0–3.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for len in [20usize, 28, 64, 100, 548, 1200] {
        let bytes = (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let b = (state >> 56) as u8;
                if i == 0 { b & 0x03 } else { b }
            })
            .collect();
        stun_looking.push(bytes);
    }
    // Not STUN by the first byte (DTLS, QUIC, ours), or shorter than a STUN header: the machine
    // does not accept them and the driver counts them.
    let not_stun: Vec<Vec<u8>> = vec![
        vec![0x16; 50],
        vec![0xC0; 1200],
        vec![0xFF],
        vec![64; 3],
        vec![0],
        vec![0; 19],
    ];
    // Valid STUN, but not a Binding request: a Binding success response and an indication.
    let mut not_binding = Vec::new();
    for class in [Class::SuccessResponse, Class::Indication] {
        let message = Message::new(class, Method::BINDING, TransactionId::new([5; 12]));
        not_binding.push(message.to_bytes(None).unwrap());
    }

    for datagram in stun_looking.iter().chain(&not_stun).chain(&not_binding) {
        socket.send_to(datagram, server).unwrap();
    }
    // fogd answers nothing of that; the next answer is to this request.
    let (response, _) = exchange(&socket, server, &request(42, false, false));
    assert_eq!(response.xor_mapped, Some(socket.local_addr().unwrap()));
    let (response, from) = exchange(&socket, server, &request(43, true, true));
    assert_eq!(response.error, None);
    assert_eq!(from, fogd.alternate.unwrap());

    let stats = fogd.stop();
    assert_eq!(stats.get("malformed"), stun_looking.len() as u64);
    assert_eq!(stats.get("not_stun"), not_stun.len() as u64);
    assert_eq!(stats.get("not_binding"), not_binding.len() as u64);
    assert_eq!(stats.get("answered"), 2);
    assert_eq!(stats.get("recv_errors"), 0);
}

#[test]
fn the_rate_limit_flags_reach_the_server() {
    // A burst of 20 against a budget of 5 at once, refilled at one a second.
    let fogd = Fogd::start(&["--stun-burst", "5", "--stun-rate", "1"]);
    let socket = client();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for id in 0..20u8 {
        let len = request(id, false, false).encode(&mut buf).unwrap();
        socket.send_to(&buf[..len], fogd.primary).unwrap();
    }
    let mut answers = 0;
    while socket.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    let stats = fogd.stop();
    assert_eq!(answers, 5, "answers to a burst of 20");
    assert_eq!(stats.get("answered"), 5);
    assert_eq!(stats.get("rate_limited"), 15);
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let (p1, p2) = free_port_pair();
    let _taken = UdpSocket::bind((A2, p2)).unwrap();
    let mut fogd = ChildGuard::spawn(
        "fogd-in-use",
        Command::new(env!("CARGO_BIN_EXE_fogd")).args([
            "--stun",
            &SocketAddr::new(A1, p1).to_string(),
            "--stun-alt",
            &SocketAddr::new(A2, p2).to_string(),
        ]),
    )
    .unwrap();
    let status = fogd
        .wait_timeout(Duration::from_secs(10))
        .expect("fogd exits");
    let stderr = fogd.stderr_text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("binding UDP {A2}:{p2}")),
        "names the address: {stderr}"
    );
    assert!(stderr.contains("already uses that port"), "{stderr}");
}

#[test]
fn help_documents_the_defaults() {
    let output = Command::new(env!("CARGO_BIN_EXE_fogd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "--stun <IP:PORT>",
        "--stun-alt <IP:PORT>",
        "--stun-rate <N>",
        "[default: 20]",
        "[default: 40]",
        "[default: 16384]",
        "--stun-no-rate-limit",
        "RUST_LOG",
        "SIGTERM",
    ] {
        assert!(
            help.contains(expected),
            "{expected:?} missing from:\n{help}"
        );
    }
}

/// Sends `n` Binding requests to fogd while it is stopped (SIGSTOP), so that all of them wait in
/// its socket's receive buffer at once, then lets it run and returns how many it received.
fn burst_while_stopped(extra: &[&str], n: usize) -> (u64, String) {
    let mut args = vec!["--stun-no-rate-limit"];
    args.extend_from_slice(extra);
    let fogd = Fogd::start_with(|p1, _| (SocketAddr::new(A1, p1), None), &args);
    let log = fogd.child.stderr_text();
    let pid = fogd.child.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let socket = client();
    let mut buf = [0u8; 1500];
    for i in 0..n {
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let req = BindingRequest::new(TransactionId::new(id));
        let len = req.encode(&mut buf).unwrap();
        socket.send_to(&buf[..len], fogd.primary).unwrap();
    }
    signal("-CONT");
    std::thread::sleep(Duration::from_millis(500));
    let stats = fogd.stop();
    (stats.get("received"), log)
}

/// fogd asks for 4 MiB socket buffers by default and logs what it got; a burst of 4,000
/// requests then all wait in the kernel until fogd reads them. With the OS default (about
/// 208 KiB on Linux, `--udp-recv-buffer 0`) the same burst overflows the socket.
#[test]
fn large_socket_buffers_absorb_a_burst() {
    let n = 4000;
    let (received, log) = burst_while_stopped(&[], n);
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let granted = log
        .lines()
        .find(|l| l.contains("STUN listening"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("recv_buffer="))
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no recv_buffer in the start-up line\n{log}"));
    // Linux grants min(asked, rmem_max) and reports twice that.
    assert!(
        granted >= 2 * rmem_max.min(4 << 20),
        "granted {granted}, rmem_max {rmem_max}\n{log}"
    );
    if rmem_max >= 1 << 20 {
        assert_eq!(received, n as u64, "every request of the burst was read");
    }
    let (received, _) = burst_while_stopped(&["--udp-recv-buffer", "0"], n);
    assert!(
        received < n as u64,
        "the OS default buffer held all {n}: the burst proves nothing"
    );
}
