//! The server machine driven with `TurnMessage` reprs (smoltcp's style): one input, then every
//! transmit decoded and checked.

use super::*;
use crate::wire::ChannelData;

const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "fog.test";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn listen() -> SocketAddr {
    addr("198.51.100.1:3478")
}
fn client() -> SocketAddr {
    addr("203.0.113.5:40000")
}
fn peer() -> SocketAddr {
    addr("203.0.113.9:50000")
}

fn secret() -> AuthSecret {
    AuthSecret::new(b"s3cret".to_vec())
}

struct H {
    server: Server,
    t0: Instant,
    now: Instant,
    next_tid: u8,
    /// Socket requests drained so far, in order.
    requests: Vec<SocketRequest>,
}

/// What the client side of a test knows after a 401.
#[derive(Clone)]
struct Creds {
    username: String,
    nonce: String,
    key: IntegrityKey,
}

impl H {
    fn new(limits: Limits) -> Self {
        Self::with_peers(limits, PeerPolicy::default())
    }

    fn with_peers(limits: Limits, peers: PeerPolicy) -> Self {
        #[allow(clippy::disallowed_methods)] // tests take any epoch
        let t0 = Instant::now();
        let mut config = ServerConfig::new(listen(), REALM, secret(), [7; 32], (t0, UNIX0));
        config.limits = limits;
        config.peers = peers;
        config.relay_ports = 50000..=50009;
        Self {
            server: Server::new(config),
            t0,
            now: t0,
            next_tid: 0,
            requests: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.requests
            .extend(std::iter::from_fn(|| self.server.poll_socket_request()));
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        TransactionId::new([self.next_tid; 12])
    }

    /// Feeds a datagram; returns every transmit with its bytes.
    fn input(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        bytes: &[u8],
    ) -> Vec<(Transmit, Vec<u8>)> {
        let p = Receive {
            source: from,
            local,
            payload: bytes,
        };
        assert!(self.server.accepts(&p) || local != listen());
        self.server.handle_packet(self.now, p);
        // The contract's order: socket requests before transmits.
        self.requests
            .extend(std::iter::from_fn(|| self.server.poll_socket_request()));
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            out.push((t, buf[..t.len].to_vec()));
        }
        out
    }

    /// Sends `msg` from `from`, signed with `key`; expects exactly one answer from the listen
    /// address, and returns it decoded with its length.
    fn ask_from(
        &mut self,
        from: SocketAddr,
        msg: &TurnMessage,
        key: Option<&IntegrityKey>,
    ) -> (TurnMessage, usize) {
        let bytes = msg.to_bytes(key).unwrap();
        let out = self.input(from, listen(), &bytes);
        assert_eq!(out.len(), 1, "one answer");
        let (t, bytes) = &out[0];
        assert_eq!(t.source, Some(listen()));
        assert_eq!(t.destination, from);
        let answer = TurnMessage::decode(bytes).unwrap();
        assert_eq!(answer.transaction_id, msg.transaction_id);
        (answer, bytes.len())
    }

    fn ask(&mut self, msg: &TurnMessage, key: Option<&IntegrityKey>) -> TurnMessage {
        self.ask_from(client(), msg, key).0
    }

    fn request(&mut self, m: crate::wire::Method, creds: Option<&Creds>) -> TurnMessage {
        let mut msg = TurnMessage::new(Class::Request, m, self.tid());
        if let Some(c) = creds {
            msg.username = Some(c.username.clone());
            msg.realm = Some(REALM.to_owned());
            msg.nonce = Some(c.nonce.clone());
        }
        msg
    }

    /// A 401 challenge for `username` valid for an hour from now, and the credentials that
    /// follow from it.
    fn login_from(&mut self, from: SocketAddr, user: &str) -> Creds {
        let mut msg = self.request(method::ALLOCATE, None);
        msg.requested_transport = Some(TRANSPORT_UDP);
        let (challenge, len) = self.ask_from(from, &msg, None);
        assert_eq!(challenge.error_code(), Some(code::UNAUTHORIZED));
        assert!(
            len < 160,
            "an unauthenticated answer stays small: {len} bytes"
        );
        assert_eq!(challenge.realm.as_deref(), Some(REALM));
        let expiry = UNIX0 + (self.now - self.t0).as_secs() + 3600;
        let (username, password) = secret().credentials(expiry, user);
        Creds {
            key: IntegrityKey::long_term(&username, REALM, &password),
            username,
            nonce: challenge.nonce.unwrap(),
        }
    }

    fn allocate_from(&mut self, from: SocketAddr, creds: &Creds) -> TurnMessage {
        let mut msg = self.request(method::ALLOCATE, Some(creds));
        msg.requested_transport = Some(TRANSPORT_UDP);
        self.ask_from(from, &msg, Some(&creds.key)).0
    }

    /// Logs in and allocates for `client()`; returns the credentials and the relayed address.
    fn allocated(&mut self) -> (Creds, SocketAddr) {
        let creds = self.login_from(client(), "alice");
        let answer = self.allocate_from(client(), &creds);
        assert_eq!(answer.class, Class::SuccessResponse, "{answer:?}");
        (creds, answer.xor_relayed_address.unwrap())
    }

    fn permit(&mut self, creds: &Creds, peer: SocketAddr) {
        let mut msg = self.request(method::CREATE_PERMISSION, Some(creds));
        msg.xor_peer_addresses = vec![peer];
        let answer = self.ask(&msg, Some(&creds.key));
        assert_eq!(answer.class, Class::SuccessResponse, "{answer:?}");
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

#[test]
fn allocate_after_a_challenge() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();
    assert_eq!(relayed.ip(), listen().ip());
    assert!((50000..=50009).contains(&relayed.port()));
    // The relayed address was asked bound with the Allocate's answer, and only it.
    assert_eq!(h.requests, vec![SocketRequest::Bind(relayed)]);
    // The success response is signed with the long-term key and says who the client is.
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    let bytes = msg.to_bytes(Some(&creds.key)).unwrap();
    let out = h.input(client(), listen(), &bytes);
    // A second Allocate (another transaction) on the same 5-tuple is a mismatch.
    let answer = TurnMessage::decode(&out[0].1).unwrap();
    assert_eq!(answer.error_code(), Some(code::ALLOCATION_MISMATCH));
    crate::wire::verify_integrity(&out[0].1, &creds.key).unwrap();
    assert_eq!(
        h.events(),
        vec![Event::Allocated {
            client: client(),
            relayed,
            user: "alice".to_owned()
        }]
    );
    assert_eq!(h.server.relayed_address(client()), Some(relayed));
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.t0 + Duration::from_secs(600))
    );
}

#[test]
fn a_retransmitted_allocate_gets_the_same_answer() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.lifetime = Some(1200);
    let first = h.ask(&msg, Some(&creds.key));
    let again = h.ask(&msg, Some(&creds.key));
    assert_eq!(first.class, Class::SuccessResponse);
    assert_eq!(first.lifetime, Some(1200));
    assert_eq!(again.xor_relayed_address, first.xor_relayed_address);
    assert_eq!(again.xor_mapped_address, Some(client()));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn credentials_are_checked() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");

    // Wrong password.
    let mut bad = creds.clone();
    bad.key = IntegrityKey::long_term(&creds.username, REALM, "guess");
    assert_eq!(h.allocate_from(client(), &bad).error_code(), Some(401));

    // An expired username, correctly signed.
    let (username, password) = secret().credentials(UNIX0 - 1, "alice");
    let expired = Creds {
        key: IntegrityKey::long_term(&username, REALM, &password),
        username,
        nonce: creds.nonce.clone(),
    };
    assert_eq!(h.allocate_from(client(), &expired).error_code(), Some(401));

    // A username not of the scheme.
    let plain = Creds {
        key: IntegrityKey::long_term("alice", REALM, "pw"),
        username: "alice".to_owned(),
        nonce: creds.nonce.clone(),
    };
    assert_eq!(h.allocate_from(client(), &plain).error_code(), Some(401));

    // A nonce made for another client address.
    let other = addr("203.0.113.5:40001");
    assert_eq!(h.allocate_from(other, &creds).error_code(), Some(438));

    // MESSAGE-INTEGRITY without NONCE.
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.nonce = None;
    msg.requested_transport = Some(TRANSPORT_UDP);
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(400));

    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(
        h.server.stats().unauthenticated,
        5,
        "the 400 is not a challenge"
    );
    // The right credentials still work.
    assert_eq!(
        h.allocate_from(client(), &creds).class,
        Class::SuccessResponse
    );
}

#[test]
fn nonces_go_stale() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    h.advance(Duration::from_secs(601));
    let stale = h.allocate_from(client(), &creds);
    assert_eq!(stale.error_code(), Some(code::STALE_NONCE));
    let fresh = Creds {
        nonce: stale.nonce.unwrap(),
        ..creds.clone()
    };
    assert_ne!(fresh.nonce, creds.nonce);
    assert_eq!(
        h.allocate_from(client(), &fresh).class,
        Class::SuccessResponse
    );
}

#[test]
fn bad_allocate_requests() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(400));
    msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(6);
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(442));
    msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.requested_address_family = Some(AddressFamily::V6);
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(440));
    // Refresh without an allocation.
    let msg = h.request(method::REFRESH, Some(&creds));
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(437));
}

/// RESERVATION-TOKEN is not supported: 420 with UNKNOWN-ATTRIBUTES once authenticated, but a
/// stranger only gets the 401.
#[test]
fn unknown_attributes_after_authentication() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    let mut bytes = msg.to_bytes(None).unwrap();
    // Insert RESERVATION-TOKEN before the FINGERPRINT, then sign by hand.
    bytes.truncate(bytes.len() - 8);
    bytes.extend_from_slice(&[0x00, 0x22, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]);
    let len = bytes.len();
    bytes.resize(len + 32, 0);
    let n = fog_stun::wire::append_trailer(&mut bytes, len, Some(&creds.key), true).unwrap();
    let out = h.input(client(), listen(), &bytes[..n]);
    let answer = TurnMessage::decode(&out[0].1).unwrap();
    assert_eq!(answer.error_code(), Some(420));
    assert_eq!(answer.unknown_attributes, vec![0x0022]);
    let n = fog_stun::wire::append_trailer(&mut bytes, len, None, true).unwrap();
    let out = h.input(client(), listen(), &bytes[..n]);
    let answer = TurnMessage::decode(&out[0].1).unwrap();
    assert_eq!(answer.error_code(), Some(401));
    assert!(answer.unknown_attributes.is_empty());
}

#[test]
fn lifetimes_are_clamped_and_refresh_zero_deallocates() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();
    let mut msg = h.request(method::REFRESH, Some(&creds));
    msg.lifetime = Some(10);
    assert_eq!(h.ask(&msg, Some(&creds.key)).lifetime, Some(600));
    msg = h.request(method::REFRESH, Some(&creds));
    msg.lifetime = Some(100_000);
    assert_eq!(h.ask(&msg, Some(&creds.key)).lifetime, Some(3600));
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.t0 + Duration::from_secs(3600))
    );
    h.events();
    msg = h.request(method::REFRESH, Some(&creds));
    msg.lifetime = Some(0);
    let answer = h.ask(&msg, Some(&creds.key));
    assert_eq!(answer.class, Class::SuccessResponse);
    assert_eq!(answer.lifetime, Some(0));
    assert_eq!(
        h.events(),
        vec![Event::Released {
            client: client(),
            relayed,
            reason: Release::Deallocated
        }]
    );
    assert_eq!(
        h.requests,
        vec![SocketRequest::Bind(relayed), SocketRequest::Unbind(relayed)]
    );
    // The retransmission of that Refresh finds nothing (the client takes 437 as done).
    assert_eq!(h.ask(&msg, Some(&creds.key)).error_code(), Some(437));
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn another_username_on_the_5_tuple_is_441() {
    let mut h = H::new(Limits::default());
    let (_, _) = h.allocated();
    let bob = h.login_from(client(), "bob");
    let msg = h.request(method::REFRESH, Some(&bob));
    assert_eq!(h.ask(&msg, Some(&bob.key)).error_code(), Some(441));
}

#[test]
fn an_allocation_expires() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();
    h.permit(&creds, peer());
    h.events();
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(
        h.events(),
        vec![Event::Released {
            client: client(),
            relayed,
            reason: Release::Expired
        }]
    );
    assert_eq!(
        h.requests,
        vec![SocketRequest::Bind(relayed), SocketRequest::Unbind(relayed)]
    );
    // Peer data to the old relayed address is no longer accepted or relayed.
    let p = Receive {
        source: peer(),
        local: relayed,
        payload: b"late",
    };
    assert!(!h.server.accepts(&p));
    assert!(h.input(peer(), relayed, b"late").is_empty());
}

#[test]
fn permissions_guard_both_directions() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();

    // Without a permission nothing passes either way.
    assert!(h.input(peer(), relayed, b"hello").is_empty());
    let mut send = TurnMessage::new(Class::Indication, method::SEND, h.tid());
    send.xor_peer_addresses = vec![peer()];
    send.data = Some(b"out".to_vec());
    assert!(
        h.input(client(), listen(), &send.to_bytes(None).unwrap())
            .is_empty()
    );
    assert_eq!(h.server.stats().dropped_no_permission, 2);

    h.permit(&creds, peer());
    // Peer → client as a Data indication naming the peer.
    let out = h.input(peer(), relayed, b"hello");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.destination, client());
    assert_eq!(out[0].0.source, Some(listen()));
    let data = TurnMessage::decode(&out[0].1).unwrap();
    assert_eq!((data.class, data.method), (Class::Indication, method::DATA));
    assert_eq!(data.xor_peer_addresses, vec![peer()]);
    assert_eq!(data.data.as_deref(), Some(&b"hello"[..]));
    // A permission is per IP: another port of the same peer passes too (RFC 8656 §9).
    let other_port = addr("203.0.113.9:50001");
    assert_eq!(h.input(other_port, relayed, b"x").len(), 1);
    // Another IP does not.
    assert!(
        h.input(addr("203.0.113.10:50000"), relayed, b"x")
            .is_empty()
    );

    // Client → peer from the relayed address.
    let out = h.input(client(), listen(), &send.to_bytes(None).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.source, Some(relayed));
    assert_eq!(out[0].0.destination, peer());
    assert_eq!(out[0].1, b"out");

    // Permissions last 300 s.
    h.advance(Duration::from_secs(300));
    assert!(h.input(peer(), relayed, b"hello").is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 4);
    assert_eq!(h.server.stats().relayed_to_client, 2);
    assert_eq!(h.server.stats().relayed_to_peer, 1);
}

#[test]
fn channels_carry_data_both_ways() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();
    let mut bind = h.request(method::CHANNEL_BIND, Some(&creds));
    bind.channel_number = Some(0x4001);
    bind.xor_peer_addresses = vec![peer()];
    assert_eq!(h.ask(&bind, Some(&creds.key)).class, Class::SuccessResponse);

    // Peer → client as ChannelData.
    let out = h.input(peer(), relayed, b"hello");
    assert_eq!(
        ChannelData::decode(&out[0].1).unwrap(),
        ChannelData {
            channel: 0x4001,
            data: b"hello"
        }
    );
    // Client → peer.
    let mut buf = [0u8; 16];
    let n = ChannelData {
        channel: 0x4001,
        data: b"back",
    }
    .encode(true, &mut buf)
    .unwrap();
    let out = h.input(client(), listen(), &buf[..n]);
    assert_eq!(out[0].0.source, Some(relayed));
    assert_eq!(out[0].1, b"back");
    // An unbound channel is dropped.
    buf[1] = 0x02;
    assert!(h.input(client(), listen(), &buf[..n]).is_empty());

    // Another peer on the same channel, or the same peer on another channel: 400.
    let mut clash = h.request(method::CHANNEL_BIND, Some(&creds));
    clash.channel_number = Some(0x4001);
    clash.xor_peer_addresses = vec![addr("203.0.113.10:1")];
    assert_eq!(h.ask(&clash, Some(&creds.key)).error_code(), Some(400));
    clash.transaction_id = h.tid();
    clash.channel_number = Some(0x4002);
    clash.xor_peer_addresses = vec![peer()];
    assert_eq!(h.ask(&clash, Some(&creds.key)).error_code(), Some(400));
    clash.transaction_id = h.tid();
    clash.channel_number = Some(0x3FFF);
    assert_eq!(h.ask(&clash, Some(&creds.key)).error_code(), Some(400));

    // Rebinding refreshes; after 600 s without one the channel is gone, and (the permission
    // having lapsed at 300 s) so is the peer's way in.
    h.advance(Duration::from_secs(299));
    bind.transaction_id = h.tid();
    assert_eq!(h.ask(&bind, Some(&creds.key)).class, Class::SuccessResponse);
    h.advance(Duration::from_secs(299));
    assert_eq!(h.input(peer(), relayed, b"still").len(), 1);
    h.advance(Duration::from_secs(301));
    assert!(h.input(peer(), relayed, b"gone").is_empty());
}

#[test]
fn quotas() {
    let limits = Limits {
        max_allocations: 3,
        max_allocations_per_user: 2,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let c = |i: u16| SocketAddr::new(client().ip(), 40000 + i);
    for i in 0..2 {
        let creds = h.login_from(c(i), "alice");
        assert_eq!(h.allocate_from(c(i), &creds).class, Class::SuccessResponse);
    }
    let creds = h.login_from(c(2), "alice");
    assert_eq!(h.allocate_from(c(2), &creds).error_code(), Some(486));
    let creds = h.login_from(c(3), "bob");
    assert_eq!(h.allocate_from(c(3), &creds).class, Class::SuccessResponse);
    let creds = h.login_from(c(4), "carol");
    assert_eq!(h.allocate_from(c(4), &creds).error_code(), Some(508));
}

#[test]
fn the_port_range_runs_out() {
    let mut h = H::new(Limits::default());
    let c = |i: u16| SocketAddr::new(client().ip(), 40000 + i);
    let mut ports = Vec::new();
    for i in 0..10 {
        let creds = h.login_from(c(i), &format!("u{i}"));
        let answer = h.allocate_from(c(i), &creds);
        ports.push(answer.xor_relayed_address.unwrap().port());
    }
    ports.sort();
    assert_eq!(ports, (50000..=50009).collect::<Vec<_>>());
    let creds = h.login_from(c(10), "u10");
    assert_eq!(h.allocate_from(c(10), &creds).error_code(), Some(508));
}

#[test]
fn bandwidth_is_limited_per_allocation() {
    let limits = Limits {
        bandwidth_bytes_per_s: 1000,
        burst_bytes: 1000,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (creds, relayed) = h.allocated();
    h.permit(&creds, peer());
    let chunk = [0u8; 400];
    assert_eq!(h.input(peer(), relayed, &chunk).len(), 1);
    assert_eq!(h.input(peer(), relayed, &chunk).len(), 1);
    assert!(h.input(peer(), relayed, &chunk).is_empty());
    assert_eq!(h.server.stats().dropped_bandwidth, 1);
    h.now += Duration::from_millis(200);
    assert_eq!(h.input(peer(), relayed, &chunk).len(), 1);
}

#[test]
fn binding_requests_are_answered_and_junk_is_not() {
    let mut h = H::new(Limits::default());
    let msg = TurnMessage::new(Class::Request, method::BINDING, h.tid());
    let answer = h.ask(&msg, None);
    assert_eq!(answer.xor_mapped_address, Some(client()));
    assert!(h.input(client(), listen(), b"\x00\x01junk").is_empty());
    assert!(h.input(client(), listen(), b"\xffjunk").is_empty());
    // A keepalive Binding indication is not answered.
    let ind = TurnMessage::new(Class::Indication, method::BINDING, h.tid());
    assert!(
        h.input(client(), listen(), &ind.to_bytes(None).unwrap())
            .is_empty()
    );
    assert_eq!(h.server.stats().dropped_malformed, 2);
    assert_eq!(h.server.stats().keepalives, 1);
}

/// An IPv6 relay behind an IPv4 listen address: REQUESTED-ADDRESS-FAMILY must ask for IPv6,
/// since its absence means IPv4 (RFC 8656 §7.2 item 7); peers must then be IPv6 too (443).
#[test]
fn address_families() {
    let mut h = H::new(Limits::default());
    h.server.config.relay_ip = "2001:db8::1".parse().unwrap();
    let creds = h.login_from(client(), "alice");
    assert_eq!(h.allocate_from(client(), &creds).error_code(), Some(440));
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.requested_address_family = Some(AddressFamily::V6);
    let answer = h.ask(&msg, Some(&creds.key));
    let relayed = answer.xor_relayed_address.unwrap();
    assert_eq!(relayed.ip(), "2001:db8::1".parse::<IpAddr>().unwrap());
    let mut perm = h.request(method::CREATE_PERMISSION, Some(&creds));
    perm.xor_peer_addresses = vec![peer()];
    assert_eq!(h.ask(&perm, Some(&creds.key)).error_code(), Some(443));
    perm.transaction_id = h.tid();
    perm.xor_peer_addresses = vec![addr("[2001:db8::9]:1")];
    assert_eq!(h.ask(&perm, Some(&creds.key)).class, Class::SuccessResponse);
}

/// DONT-FRAGMENT cannot be honoured here, so a Send indication carrying it is dropped, not
/// relayed without it (RFC 8489 §6.3.2: unknown comprehension-required attributes in an
/// indication).
#[test]
fn a_send_indication_with_dont_fragment_is_dropped() {
    let mut h = H::new(Limits::default());
    let (creds, _) = h.allocated();
    h.permit(&creds, peer());
    let mut send = TurnMessage::new(Class::Indication, method::SEND, h.tid());
    send.xor_peer_addresses = vec![peer()];
    send.data = Some(b"df".to_vec());
    send.fingerprint = false;
    let mut bytes = send.to_bytes(None).unwrap();
    assert_eq!(h.input(client(), listen(), &bytes).len(), 1);
    bytes.extend_from_slice(&[0x00, 0x1A, 0x00, 0x00]);
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert!(h.input(client(), listen(), &bytes).is_empty());
    assert_eq!(h.server.stats().dropped_malformed, 1);
}

/// Strangers get at most a burst of answers per source IP, then silence: the server cannot be
/// used to flood a spoofed address with 401s.
#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut h = H::new(Limits::default());
    let mut answered = 0;
    for _ in 0..50 {
        let msg = h.request(method::ALLOCATE, None);
        let bytes = msg.to_bytes(None).unwrap();
        answered += h.input(client(), listen(), &bytes).len();
    }
    assert_eq!(answered, 40, "the default burst");
    assert_eq!(h.server.stats().dropped_rate_limited, 10);
    // Another source is not affected, and the first one recovers at 20/s.
    let msg = h.request(method::ALLOCATE, None);
    let bytes = msg.to_bytes(None).unwrap();
    assert_eq!(h.input(addr("192.0.2.7:1"), listen(), &bytes).len(), 1);
    h.now += Duration::from_millis(100);
    assert_eq!(h.input(client(), listen(), &bytes).len(), 1);
    // An authenticated client is never charged.
    let mut h = H::new(Limits::default());
    let (creds, _) = h.allocated();
    for _ in 0..60 {
        let msg = h.request(method::REFRESH, Some(&creds));
        assert_eq!(h.ask(&msg, Some(&creds.key)).class, Class::SuccessResponse);
    }
}

/// EVEN-PORT (RFC 8656 §7.2 item 8): an even port when asked; a reservation of the next port
/// cannot be made here, so R set is a 508.
#[test]
fn even_port() {
    let mut h = H::new(Limits::default());
    let c = |i: u16| SocketAddr::new(client().ip(), 40000 + i);
    for i in 0..5 {
        let creds = h.login_from(c(i), &format!("u{i}"));
        let mut msg = h.request(method::ALLOCATE, Some(&creds));
        msg.requested_transport = Some(TRANSPORT_UDP);
        msg.even_port = Some(false);
        let answer = h.ask_from(c(i), &msg, Some(&creds.key)).0;
        assert_eq!(
            answer.xor_relayed_address.unwrap().port() % 2,
            0,
            "{answer:?}"
        );
    }
    // Five even ports in 50000–50009 are all taken now.
    let creds = h.login_from(c(5), "u5");
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.even_port = Some(false);
    assert_eq!(
        h.ask_from(c(5), &msg, Some(&creds.key)).0.error_code(),
        Some(508)
    );
    msg.transaction_id = h.tid();
    msg.even_port = Some(true);
    assert_eq!(
        h.ask_from(c(5), &msg, Some(&creds.key)).0.error_code(),
        Some(508)
    );
    msg.transaction_id = h.tid();
    msg.even_port = None;
    assert_eq!(
        h.ask_from(c(5), &msg, Some(&creds.key)).0.class,
        Class::SuccessResponse
    );
}

/// Sends an Allocate from `client()` without draining anything; returns its transaction.
fn allocate_undrained(h: &mut H, creds: &Creds) -> TransactionId {
    let mut msg = h.request(method::ALLOCATE, Some(creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    let bytes = msg.to_bytes(Some(&creds.key)).unwrap();
    let p = Receive {
        source: client(),
        local: listen(),
        payload: &bytes,
    };
    h.server.handle_packet(h.now, p);
    msg.transaction_id
}

fn transmits(h: &mut H) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    std::iter::from_fn(|| {
        h.server
            .poll_transmit(h.now, &mut buf)
            .map(|t| buf[..t.len].to_vec())
    })
    .collect()
}

#[test]
fn a_relayed_port_that_cannot_be_bound_is_replaced_before_the_answer_leaves() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    let tid = allocate_undrained(&mut h, &creds);
    let Some(SocketRequest::Bind(first)) = h.server.poll_socket_request() else {
        panic!("no bind asked");
    };
    // The driver reports the failure while it drains socket requests, before any transmit.
    h.server.handle_bind_error(h.now, first);
    let Some(SocketRequest::Bind(second)) = h.server.poll_socket_request() else {
        panic!("no second bind asked");
    };
    assert_ne!(second, first);
    assert!((50000..=50009).contains(&second.port()));
    assert_eq!(h.server.poll_socket_request(), None);

    let out = transmits(&mut h);
    assert_eq!(out.len(), 1, "one answer");
    let answer = TurnMessage::decode(&out[0]).unwrap();
    assert_eq!(answer.class, Class::SuccessResponse);
    assert_eq!(answer.transaction_id, tid);
    assert_eq!(answer.xor_relayed_address, Some(second));
    crate::wire::verify_integrity(&out[0], &creds.key).unwrap();
    assert_eq!(
        h.events(),
        vec![Event::Allocated {
            client: client(),
            relayed: second,
            user: "alice".to_owned()
        }]
    );
    assert_eq!(h.server.relayed_address(client()), Some(second));
    assert_eq!(h.server.stats().relay_bind_errors, 1);
    let stray = Receive {
        source: peer(),
        local: first,
        payload: b"x",
    };
    assert!(
        !h.server.accepts(&stray),
        "the failed address is not the relay"
    );

    // A retransmitted Allocate gets the same, moved, answer.
    let mut again = h.request(method::ALLOCATE, Some(&creds));
    again.transaction_id = tid;
    again.requested_transport = Some(TRANSPORT_UDP);
    let answer = h.ask(&again, Some(&creds.key));
    assert_eq!(answer.xor_relayed_address, Some(second));
}

#[test]
fn when_no_relayed_port_can_be_bound_the_allocate_gets_508_and_leaves_nothing() {
    let mut h = H::new(Limits::default());
    h.server.config.relay_ports = 50000..=50000;
    let creds = h.login_from(client(), "alice");
    allocate_undrained(&mut h, &creds);
    let Some(SocketRequest::Bind(only)) = h.server.poll_socket_request() else {
        panic!("no bind asked");
    };
    h.server.handle_bind_error(h.now, only);
    assert_eq!(h.server.poll_socket_request(), None, "no port left to try");
    let out = transmits(&mut h);
    assert_eq!(out.len(), 1);
    let answer = TurnMessage::decode(&out[0]).unwrap();
    assert_eq!(answer.error_code(), Some(code::INSUFFICIENT_CAPACITY));
    crate::wire::verify_integrity(&out[0], &creds.key).unwrap();
    assert_eq!(h.events(), vec![], "the allocation never was");
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None);
    // The user's quota is not held by it.
    assert!(h.server.per_user.is_empty());
}

/// A CreatePermission for `peers`, a ChannelBind to `peer` on `channel`; their answers.
fn permission_and_bind(
    h: &mut H,
    creds: &Creds,
    peer: SocketAddr,
    channel: u16,
) -> (TurnMessage, TurnMessage) {
    let mut perm = h.request(method::CREATE_PERMISSION, Some(creds));
    perm.xor_peer_addresses = vec![peer];
    let perm = h.ask(&perm, Some(&creds.key));
    let mut bind = h.request(method::CHANNEL_BIND, Some(creds));
    bind.channel_number = Some(channel);
    bind.xor_peer_addresses = vec![peer];
    (perm, h.ask(&bind, Some(&creds.key)))
}

/// A Send indication of `data` to `peer` from the client; what leaves.
fn send_to(h: &mut H, peer: SocketAddr, data: &[u8]) -> Vec<(Transmit, Vec<u8>)> {
    let mut send = TurnMessage::new(Class::Indication, method::SEND, h.tid());
    send.xor_peer_addresses = vec![peer];
    send.data = Some(data.to_vec());
    h.input(client(), listen(), &send.to_bytes(None).unwrap())
}

/// The CVE-2020-26262 class of hole: every reserved class is refused with 403 for a permission
/// and a channel, and a Send to it goes nowhere; each refusal is counted.
#[test]
fn reserved_peers_are_refused_by_default() {
    let mut h = H::new(Limits::default());
    let (creds, _) = h.allocated();
    let peers = [
        "0.0.0.0:5000",         // unspecified (Linux delivers it to local sockets)
        "127.0.0.1:3478",       // loopback
        "169.254.169.254:80",   // link-local: cloud metadata
        "224.0.0.1:5000",       // multicast
        "255.255.255.255:5000", // broadcast
        "10.0.0.1:5000",        // RFC 1918
        "172.16.5.4:5000",      // RFC 1918
        "192.168.1.1:5000",     // RFC 1918
        "100.64.0.1:5000",      // carrier-grade NAT
    ];
    let mut refused = 0;
    for (i, p) in peers.iter().enumerate() {
        let (perm, bind) = permission_and_bind(&mut h, &creds, addr(p), 0x4000 + i as u16);
        assert_eq!(perm.error_code(), Some(code::FORBIDDEN), "{p}");
        assert_eq!(bind.error_code(), Some(code::FORBIDDEN), "{p}");
        refused += 2;
        assert!(send_to(&mut h, addr(p), b"probe").is_empty(), "{p}");
    }
    let stats = *h.server.stats();
    assert_eq!(stats.refused_peer, refused);
    assert_eq!(stats.dropped_forbidden_peer, peers.len() as u64);
    assert_eq!(stats.relayed_to_peer, 0);
    // All or nothing: a public peer beside a private one installs nothing.
    let mut perm = h.request(method::CREATE_PERMISSION, Some(&creds));
    perm.xor_peer_addresses = vec![peer(), addr("10.0.0.1:1")];
    assert_eq!(h.ask(&perm, Some(&creds.key)).error_code(), Some(403));
    assert!(send_to(&mut h, peer(), b"x").is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 1);
}

/// The same for an IPv6 relay: ::1, ::, link-local, multicast, ULA and IPv4-mapped forms of
/// denied IPv4 addresses.
#[test]
fn reserved_ipv6_peers_are_refused_by_default() {
    #[allow(clippy::disallowed_methods)] // tests take any epoch
    let t0 = Instant::now();
    let mut config = ServerConfig::new(listen(), REALM, secret(), [7; 32], (t0, UNIX0));
    config.relay_ip = "2001:db8::1".parse().unwrap();
    config.relay_ports = 50000..=50009;
    let mut h = H {
        server: Server::new(config),
        t0,
        now: t0,
        next_tid: 0,
        requests: Vec::new(),
    };
    let creds = h.login_from(client(), "alice");
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    msg.requested_address_family = Some(AddressFamily::V6);
    assert_eq!(h.ask(&msg, Some(&creds.key)).class, Class::SuccessResponse);
    for (i, p) in [
        "[::1]:5000",
        "[::]:5000",
        "[fe80::1]:5000",
        "[ff02::1]:5000",
        "[fd12:3456::1]:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::ffff:10.0.0.1]:5000",
        "[64:ff9b::a9fe:a9fe]:80",
    ]
    .iter()
    .enumerate()
    {
        let (perm, bind) = permission_and_bind(&mut h, &creds, addr(p), 0x4000 + i as u16);
        assert_eq!(perm.error_code(), Some(code::FORBIDDEN), "{p}");
        assert_eq!(bind.error_code(), Some(code::FORBIDDEN), "{p}");
    }
    let (perm, bind) = permission_and_bind(&mut h, &creds, addr("[2001:db8::9]:5000"), 0x4100);
    assert_eq!(perm.class, Class::SuccessResponse);
    assert_eq!(bind.class, Class::SuccessResponse);
}

/// The operator's ranges: an allowed private range relays; a denied public range does not; the
/// server's own addresses stay refused even inside an allowed range.
#[test]
fn operator_ranges_and_the_servers_own_addresses() {
    let policy = PeerPolicy {
        allow: vec![
            "10.1.0.0/16".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ],
        deny: vec!["203.0.113.0/24".parse().unwrap()],
        own: vec![addr("198.51.100.1:3479")],
    };
    let mut h = H::with_peers(Limits::default(), policy);
    let (creds, relayed) = h.allocated();
    let (perm, bind) = permission_and_bind(&mut h, &creds, addr("10.1.2.3:6000"), 0x4000);
    assert_eq!(
        (perm.class, bind.class),
        (Class::SuccessResponse, Class::SuccessResponse)
    );
    let out = send_to(&mut h, addr("10.1.2.3:6000"), b"in");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.source, Some(relayed));
    let (perm, _) = permission_and_bind(&mut h, &creds, addr("10.2.0.1:6000"), 0x4001);
    assert_eq!(perm.error_code(), Some(403), "outside the allowed range");
    let (perm, bind) = permission_and_bind(&mut h, &creds, peer(), 0x4002);
    assert_eq!(perm.error_code(), Some(403), "denied");
    assert_eq!(bind.error_code(), Some(403), "denied");

    // The listen address and the STUN port beside it: a permission for their IP is fine (it is
    // also the relayed addresses' IP), but a channel or a Send to those ports is not.
    for own in [listen(), addr("198.51.100.1:3479")] {
        let (perm, bind) = permission_and_bind(&mut h, &creds, own, 0x4003);
        assert_eq!(perm.class, Class::SuccessResponse, "{own}");
        assert_eq!(bind.error_code(), Some(403), "{own}");
        assert!(send_to(&mut h, own, b"binding?").is_empty(), "{own}");
    }
    // Another allocation's relayed address on the same IP is a peer like any other.
    let other = addr("198.51.100.1:50005");
    assert_eq!(send_to(&mut h, other, b"hi").len(), 1);
    assert_eq!(h.server.stats().dropped_forbidden_peer, 2);
}

#[test]
fn bandwidth_zero_is_unlimited() {
    let limits = Limits {
        bandwidth_bytes_per_s: 0,
        burst_bytes: 65_535,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (creds, relayed) = h.allocated();
    h.permit(&creds, peer());
    // 10 MB at one instant, far past any burst: all of it passes.
    let chunk = [7u8; 1000];
    for _ in 0..10_000 {
        assert_eq!(h.input(peer(), relayed, &chunk).len(), 1);
    }
    assert_eq!(h.server.stats().dropped_bandwidth, 0);
    assert_eq!(h.server.stats().relayed_to_client, 10_000);
}

#[test]
fn bandwidth_above_what_is_sent_drops_nothing() {
    let limits = Limits {
        bandwidth_bytes_per_s: 1_000_000,
        burst_bytes: 1_000_000,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (creds, relayed) = h.allocated();
    h.permit(&creds, peer());
    // 500 kB/s for 10 s in 1 ms steps, half the rate.
    let chunk = [7u8; 500];
    for _ in 0..10_000 {
        h.now += Duration::from_millis(1);
        assert_eq!(h.input(peer(), relayed, &chunk).len(), 1);
    }
    assert_eq!(h.server.stats().dropped_bandwidth, 0);
}

/// RFC 5766's channel range, which clients such as coturn's uclient still use, both ways.
#[test]
fn rfc_5766_channel_numbers_are_accepted() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.allocated();
    for (channel, p) in [(0x5000u16, peer()), (0x7FFF, addr("203.0.113.10:7"))] {
        let mut bind = h.request(method::CHANNEL_BIND, Some(&creds));
        bind.channel_number = Some(channel);
        bind.xor_peer_addresses = vec![p];
        assert_eq!(
            h.ask(&bind, Some(&creds.key)).class,
            Class::SuccessResponse,
            "{channel:#x}"
        );
        let out = h.input(p, relayed, b"hello");
        assert_eq!(
            ChannelData::decode(&out[0].1).unwrap(),
            ChannelData {
                channel,
                data: b"hello"
            }
        );
        let mut buf = [0u8; 16];
        let n = ChannelData {
            channel,
            data: b"back",
        }
        .encode(true, &mut buf)
        .unwrap();
        let out = h.input(client(), listen(), &buf[..n]);
        assert_eq!(out.len(), 1, "{channel:#x}");
        assert_eq!(out[0].0.destination, p);
        assert_eq!(out[0].1, b"back");
    }
    let mut bind = h.request(method::CHANNEL_BIND, Some(&creds));
    bind.channel_number = Some(0x8000);
    bind.xor_peer_addresses = vec![addr("203.0.113.11:7")];
    assert_eq!(h.ask(&bind, Some(&creds.key)).error_code(), Some(400));
}

#[test]
fn a_channel_to_port_zero_is_refused() {
    let mut h = H::new(Limits::default());
    let (creds, _) = h.allocated();
    let mut bind = h.request(method::CHANNEL_BIND, Some(&creds));
    bind.channel_number = Some(0x4000);
    bind.xor_peer_addresses = vec![addr("203.0.113.9:0")];
    assert_eq!(h.ask(&bind, Some(&creds.key)).error_code(), Some(400));
}

#[test]
fn an_empty_user_part_is_refused() {
    let mut h = H::new(Limits::default());
    let creds = h.login_from(client(), "alice");
    let expiry = UNIX0 + 3600;
    for username in [format!("{expiry}:"), format!("{expiry}")] {
        let password = secret().password(&username);
        let empty = Creds {
            key: IntegrityKey::long_term(&username, REALM, &password),
            username: username.clone(),
            nonce: creds.nonce.clone(),
        };
        assert_eq!(
            h.allocate_from(client(), &empty).error_code(),
            Some(401),
            "{username}"
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
}

// ---- TURN over TCP (RFC 8656 §3.1) -------------------------------------------------------------

impl H {
    /// Feeds one framed message from the TCP client at `from`; returns what went to streams
    /// and asserts nothing went out as a datagram.
    fn stream_input(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<StreamTransmit> {
        self.server.handle_stream_message(self.now, from, bytes);
        self.requests
            .extend(std::iter::from_fn(|| self.server.poll_socket_request()));
        let mut buf = vec![0u8; 65_535];
        assert_eq!(self.server.poll_transmit(self.now, &mut buf), None);
        std::iter::from_fn(|| self.server.poll_stream_transmit()).collect()
    }

    fn stream_ask(
        &mut self,
        from: SocketAddr,
        msg: &TurnMessage,
        key: Option<&IntegrityKey>,
    ) -> TurnMessage {
        let out = self.stream_input(from, &msg.to_bytes(key).unwrap());
        assert_eq!(out.len(), 1, "one answer");
        assert_eq!(out[0].client, from);
        let answer = TurnMessage::decode(&out[0].bytes).unwrap();
        assert_eq!(answer.transaction_id, msg.transaction_id);
        answer
    }

    /// Logs in and allocates over TCP from `from`.
    fn stream_allocated(&mut self, from: SocketAddr) -> (Creds, SocketAddr) {
        let mut msg = self.request(method::ALLOCATE, None);
        msg.requested_transport = Some(TRANSPORT_UDP);
        let challenge = self.stream_ask(from, &msg, None);
        assert_eq!(challenge.error_code(), Some(code::UNAUTHORIZED));
        let expiry = UNIX0 + (self.now - self.t0).as_secs() + 3600;
        let (username, password) = secret().credentials(expiry, "tcp");
        let creds = Creds {
            key: IntegrityKey::long_term(&username, REALM, &password),
            username,
            nonce: challenge.nonce.unwrap(),
        };
        let mut msg = self.request(method::ALLOCATE, Some(&creds));
        msg.requested_transport = Some(TRANSPORT_UDP);
        let answer = self.stream_ask(from, &msg, Some(&creds.key));
        assert_eq!(answer.class, Class::SuccessResponse, "{answer:?}");
        assert_eq!(answer.xor_mapped_address, Some(from));
        (creds, answer.xor_relayed_address.unwrap())
    }
}

#[test]
fn an_allocation_over_tcp_relays_with_padded_channel_data_and_ends_with_its_connection() {
    let mut h = H::new(Limits::default());
    let (creds, relayed) = h.stream_allocated(client());
    assert_eq!(h.requests, vec![SocketRequest::Bind(relayed)]);
    // The UDP 5-tuple of the same address is another one: no allocation there.
    assert_eq!(h.server.relayed_address(client()), None);
    assert_eq!(h.server.stream_relayed_address(client()), Some(relayed));

    let mut bind = h.request(method::CHANNEL_BIND, Some(&creds));
    bind.channel_number = Some(0x4001);
    bind.xor_peer_addresses = vec![peer()];
    assert_eq!(
        h.stream_ask(client(), &bind, Some(&creds.key)).class,
        Class::SuccessResponse
    );
    // Peer → client: ChannelData on the stream, padded to a multiple of 4 (RFC 8656 §12.5).
    let out = h.input(peer(), relayed, b"hello");
    assert!(out.is_empty(), "nothing as a datagram");
    let streamed: Vec<_> = std::iter::from_fn(|| h.server.poll_stream_transmit()).collect();
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0].client, client());
    assert_eq!(
        streamed[0].bytes,
        [
            0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0
        ]
    );
    // Client → peer: the framer hands ChannelData over without its padding; a datagram leaves
    // from the relayed address.
    h.server.handle_stream_message(
        h.now,
        client(),
        &[0x40, 0x01, 0x00, 0x04, b'b', b'a', b'c', b'k'],
    );
    let mut buf = vec![0u8; 65_535];
    let t = h.server.poll_transmit(h.now, &mut buf).expect("relayed");
    assert_eq!((t.destination, t.source), (peer(), Some(relayed)));
    assert_eq!(&buf[..t.len], b"back");

    // The connection closes: the allocation ends, its socket is asked closed.
    h.events();
    h.server.close_stream(client());
    assert_eq!(
        h.server.poll_socket_request(),
        Some(SocketRequest::Unbind(relayed))
    );
    assert_eq!(
        h.events(),
        vec![Event::Released {
            client: client(),
            relayed,
            reason: Release::ConnectionClosed,
        }]
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.input(peer(), relayed, b"late").is_empty());
    assert_eq!(h.server.poll_stream_transmit(), None);
}

#[test]
fn tcp_and_udp_allocations_of_one_address_are_apart_and_share_the_user_quota() {
    let limits = Limits {
        max_allocations_per_user: 1,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (_, relayed) = h.stream_allocated(client());
    // The same user over UDP: over quota (486), whichever transport holds the allocation.
    let mut msg = h.request(method::ALLOCATE, None);
    msg.requested_transport = Some(TRANSPORT_UDP);
    let challenge = h.ask(&msg, None);
    let expiry = UNIX0 + 3600;
    let (username, password) = secret().credentials(expiry, "tcp");
    let creds = Creds {
        key: IntegrityKey::long_term(&username, REALM, &password),
        username,
        nonce: challenge.nonce.unwrap(),
    };
    let answer = h.allocate_from(client(), &creds);
    assert_eq!(answer.error_code(), Some(code::ALLOCATION_QUOTA_REACHED));
    // Closing a connection that never allocated, or a UDP client's address, changes nothing.
    h.server.close_stream(addr("203.0.113.5:1"));
    assert_eq!(h.server.stream_relayed_address(client()), Some(relayed));
}

#[test]
fn a_bind_failure_moves_a_tcp_allocation_before_its_answer_leaves() {
    let mut h = H::new(Limits::default());
    let mut msg = h.request(method::ALLOCATE, None);
    msg.requested_transport = Some(TRANSPORT_UDP);
    let challenge = h.stream_ask(client(), &msg, None);
    let (username, password) = secret().credentials(UNIX0 + 3600, "tcp");
    let key = IntegrityKey::long_term(&username, REALM, &password);
    let mut msg = h.request(method::ALLOCATE, None);
    msg.username = Some(username);
    msg.realm = Some(REALM.to_owned());
    msg.nonce = challenge.nonce;
    msg.requested_transport = Some(TRANSPORT_UDP);
    h.server
        .handle_stream_message(h.now, client(), &msg.to_bytes(Some(&key)).unwrap());
    let Some(SocketRequest::Bind(first)) = h.server.poll_socket_request() else {
        panic!("no bind asked");
    };
    h.server.handle_bind_error(h.now, first);
    let Some(SocketRequest::Bind(second)) = h.server.poll_socket_request() else {
        panic!("no second bind asked");
    };
    let out = h.server.poll_stream_transmit().expect("the answer");
    let answer = TurnMessage::decode(&out.bytes).unwrap();
    assert_eq!(answer.xor_relayed_address, Some(second));
    crate::wire::verify_integrity(&out.bytes, &key).unwrap();
}

/// A full server names its alternate (a UDP address) only to clients over UDP: one over TCP
/// keeps its transport when redirected (RFC 8489 §10) and would knock on a UDP port, so it
/// gets 508 Insufficient Capacity.
#[test]
fn a_full_server_sends_only_udp_clients_to_its_udp_alternate() {
    let mut h = H::new(Limits {
        max_allocations: 1,
        ..Limits::default()
    });
    let alternate = addr("198.51.100.2:3478");
    h.server.set_alternate(Some(alternate));
    h.allocated();
    // Another client over UDP: sent on.
    let other = addr("192.0.2.77:4000");
    let creds = h.login_from(other, "bob");
    let answer = h.allocate_from(other, &creds);
    assert_eq!(answer.error_code(), Some(code::TRY_ALTERNATE), "{answer:?}");
    assert_eq!(answer.alternate_server, Some(alternate));
    // A client over TCP: refused, not sent to a UDP address.
    let tcp = addr("192.0.2.78:4000");
    let mut msg = h.request(method::ALLOCATE, None);
    msg.requested_transport = Some(TRANSPORT_UDP);
    let challenge = h.stream_ask(tcp, &msg, None);
    let (username, password) = secret().credentials(UNIX0 + 3600, "carol");
    let key = IntegrityKey::long_term(&username, REALM, &password);
    let creds = Creds {
        key: key.clone(),
        username,
        nonce: challenge.nonce.unwrap(),
    };
    let mut msg = h.request(method::ALLOCATE, Some(&creds));
    msg.requested_transport = Some(TRANSPORT_UDP);
    let answer = h.stream_ask(tcp, &msg, Some(&key));
    assert_eq!(
        answer.error_code(),
        Some(code::INSUFFICIENT_CAPACITY),
        "{answer:?}"
    );
    assert_eq!(answer.alternate_server, None);
    assert_eq!(h.server.stats().redirected, 1);
}
