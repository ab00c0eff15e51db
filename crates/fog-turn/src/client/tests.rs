//! The client against hand-made answers (reprs), and against the real server in a two-machine
//! virtual-time pair (quinn-proto's `Pair::drive` shape).

use super::*;
use crate::auth::AuthSecret;
use crate::server::{Server, ServerConfig};

const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "fog.test";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn server_addr() -> SocketAddr {
    addr("198.51.100.1:3478")
}
fn client_addr() -> SocketAddr {
    addr("203.0.113.5:40000")
}
fn peer() -> SocketAddr {
    addr("203.0.113.9:50000")
}

fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)] // tests take any epoch
    Instant::now()
}

fn secret() -> AuthSecret {
    AuthSecret::new(b"s3cret".to_vec())
}

fn config(expiry: u64) -> ClientConfig {
    let (username, password) = secret().credentials(expiry, "alice");
    ClientConfig::new(server_addr(), username, password, 1)
}

/// Client, server and a peer socket wired together with no delay and no loss.
struct Pair {
    client: Client,
    server: Server,
    now: Instant,
    /// What reached the peer: (from, bytes).
    at_peer: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<Event>,
}

impl Pair {
    fn new(client: ClientConfig) -> Self {
        let t0 = epoch();
        let config = ServerConfig::new(server_addr(), REALM, secret(), [3; 32], (t0, UNIX0));
        Self {
            client: Client::new(client),
            server: Server::new(config),
            now: t0,
            at_peer: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Moves datagrams until both machines are quiet.
    fn drive(&mut self) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                assert_eq!(t.destination, server_addr());
                let p = Receive {
                    source: client_addr(),
                    local: server_addr(),
                    payload: &buf[..t.len],
                };
                let payload = p.payload.to_vec();
                self.server.handle_packet(
                    self.now,
                    Receive {
                        payload: &payload,
                        ..p
                    },
                );
                moved = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                if t.destination == client_addr() {
                    let p = Receive {
                        source: server_addr(),
                        local: client_addr(),
                        payload: &bytes,
                    };
                    assert!(self.client.accepts(&p));
                    self.client.handle_packet(self.now, p);
                } else {
                    self.at_peer.push((t.source.unwrap(), bytes));
                }
                moved = true;
            }
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
            }
            while self.server.poll_event().is_some() {}
            if !moved {
                return;
            }
        }
    }

    /// Advances to each deadline in turn until `until`.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.drive();
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    assert!(t >= self.now, "a deadline in the past");
                    self.now = t;
                    self.client.handle_timeout(t);
                    self.server.handle_timeout(t);
                }
                _ => {
                    self.now = until;
                    self.client.handle_timeout(until);
                    self.server.handle_timeout(until);
                    self.drive();
                    return;
                }
            }
        }
    }

    fn peer_sends(&mut self, from: SocketAddr, data: &[u8]) {
        let relayed = self.client.relayed_address().unwrap();
        self.server.handle_packet(
            self.now,
            Receive {
                source: from,
                local: relayed,
                payload: data,
            },
        );
        self.drive();
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

fn allocated_pair() -> Pair {
    let mut p = Pair::new(config(UNIX0 + 86_400));
    p.client.allocate(p.now).unwrap();
    p.drive();
    let events = p.take_events();
    assert!(
        matches!(events.as_slice(), [Event::Allocated { lifetime, mapped: Some(m), .. }] if *lifetime == Duration::from_secs(600) && *m == client_addr()),
        "{events:?}"
    );
    p
}

#[test]
fn allocates_after_the_401() {
    let p = allocated_pair();
    assert_eq!(p.client.state(), State::Allocated);
    assert_eq!(
        p.server.relayed_address(client_addr()),
        p.client.relayed_address()
    );
    assert_eq!(p.server.stats().unauthenticated, 1);
}

#[test]
fn commands_before_allocation_are_refused() {
    let mut c = Client::new(config(UNIX0 + 60));
    let now = epoch();
    assert_eq!(
        c.send_to(now, peer(), b"x"),
        Err(CommandError::NotAllocated)
    );
    assert_eq!(
        c.create_permission(now, peer().ip()),
        Err(CommandError::NotAllocated)
    );
    assert_eq!(c.bind_channel(now, peer()), Err(CommandError::NotAllocated));
    c.allocate(now).unwrap();
    assert_eq!(c.allocate(now), Err(CommandError::AlreadyStarted));
}

#[test]
fn expired_credentials_are_an_error() {
    let mut p = Pair::new(config(UNIX0 - 1));
    p.client.allocate(p.now).unwrap();
    p.drive();
    assert_eq!(
        p.take_events(),
        vec![Event::Error(Error::Rejected {
            request: Request::Allocate,
            code: 401,
            reason: "Unauthorized".to_owned()
        })]
    );
    assert_eq!(p.client.state(), State::Closed);
    assert_eq!(p.client.poll_timeout(), None);
}

#[test]
fn data_both_ways_by_indication_then_channel() {
    let mut p = allocated_pair();
    let now = p.now;
    p.client.create_permission(now, peer().ip()).unwrap();
    p.drive();
    assert_eq!(
        p.take_events(),
        vec![Event::PermissionCreated { peer: peer().ip() }]
    );
    let relayed = p.client.relayed_address().unwrap();

    p.client.send_to(now, peer(), b"to peer").unwrap();
    p.drive();
    assert_eq!(p.at_peer, vec![(relayed, b"to peer".to_vec())]);
    p.peer_sends(peer(), b"to client");
    assert_eq!(
        p.take_events(),
        vec![Event::Data {
            peer: peer(),
            data: b"to client".to_vec(),
            via: Via::Indication
        }]
    );

    let channel = p.client.bind_channel(now, peer()).unwrap();
    assert_eq!(channel, 0x4000);
    p.drive();
    assert_eq!(
        p.take_events(),
        vec![Event::ChannelBound {
            peer: peer(),
            channel
        }]
    );
    p.peer_sends(peer(), b"by channel");
    assert_eq!(
        p.take_events(),
        vec![Event::Data {
            peer: peer(),
            data: b"by channel".to_vec(),
            via: Via::Channel
        }]
    );
    // The client now sends ChannelData, which the server unwraps.
    p.at_peer.clear();
    p.client.send_to(now, peer(), b"back").unwrap();
    let mut buf = vec![0u8; 1500];
    let t = p.client.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(ChannelData::decode(&buf[..t.len]).unwrap().channel, channel);
    p.server.handle_packet(
        now,
        Receive {
            source: client_addr(),
            local: server_addr(),
            payload: &buf[..t.len],
        },
    );
    p.drive();
    assert_eq!(p.at_peer, vec![(relayed, b"back".to_vec())]);
}

/// Over 30 minutes the allocation, the permission and the channel stay alive with nothing but
/// the client's own refreshes; the peer can still reach the client at the end.
#[test]
fn refreshes_keep_everything_alive() {
    let mut p = allocated_pair();
    let now = p.now;
    p.client.bind_channel(now, peer()).unwrap();
    p.drive();
    p.run_until(now + Duration::from_secs(1800));
    let events = p.take_events();
    let refreshes = events
        .iter()
        .filter(|e| matches!(e, Event::Refreshed { .. }))
        .count();
    // One every 540 s: at 540, 1080, 1620.
    assert_eq!(refreshes, 3, "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Error(_))));
    assert_eq!(p.server.allocation_count(), 1);
    p.peer_sends(peer(), b"still here");
    assert_eq!(
        p.take_events(),
        vec![Event::Data {
            peer: peer(),
            data: b"still here".to_vec(),
            via: Via::Channel
        }]
    );
}

#[test]
fn deallocate() {
    let mut p = allocated_pair();
    p.client.deallocate(p.now);
    p.drive();
    assert_eq!(p.take_events(), vec![Event::Deallocated]);
    assert_eq!(p.client.state(), State::Closed);
    assert_eq!(p.server.allocation_count(), 0);
    assert_eq!(p.client.poll_timeout(), None);
}

/// Deallocating while a CreatePermission is under way: only `Deallocated` comes out.
#[test]
fn deallocate_cancels_what_is_under_way() {
    let mut p = allocated_pair();
    p.client.create_permission(p.now, peer().ip()).unwrap();
    p.client.deallocate(p.now);
    p.drive();
    assert_eq!(p.take_events(), vec![Event::Deallocated]);
    assert_eq!(
        p.server.stats().requests,
        3,
        "401, Allocate, Refresh: no CreatePermission"
    );
}

/// Hand-made answers: what the client does with each.
mod reprs {
    use super::*;

    struct One {
        client: Client,
        now: Instant,
    }

    impl One {
        fn new() -> Self {
            let mut client = Client::new(config(UNIX0 + 3600));
            let now = epoch();
            client.allocate(now).unwrap();
            Self { client, now }
        }

        /// The next request the client sends, decoded, with its bytes.
        fn sent(&mut self) -> (TurnMessage, Vec<u8>) {
            let mut buf = vec![0u8; 1500];
            let t = self
                .client
                .poll_transmit(self.now, &mut buf)
                .expect("a request");
            let bytes = buf[..t.len].to_vec();
            (TurnMessage::decode(&bytes).unwrap(), bytes)
        }

        fn answer(&mut self, m: &TurnMessage, key: Option<&IntegrityKey>) {
            let bytes = m.to_bytes(key).unwrap();
            self.client.handle_packet(
                self.now,
                Receive {
                    source: server_addr(),
                    local: client_addr(),
                    payload: &bytes,
                },
            );
        }

        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.client.poll_event()).collect()
        }
    }

    fn challenge(request: &TurnMessage, code: u16, nonce: &str) -> TurnMessage {
        let mut m = TurnMessage::error_response(request, code);
        m.realm = Some(REALM.to_owned());
        m.nonce = Some(nonce.to_owned());
        m
    }

    fn key(c: &Client) -> IntegrityKey {
        IntegrityKey::long_term(&c.config.username, REALM, &c.config.password)
    }

    #[test]
    fn a_stale_nonce_is_replaced_and_forged_answers_are_ignored() {
        let mut o = One::new();
        let (first, _) = o.sent();
        assert!(!first.integrity && first.username.is_none());
        assert_eq!(first.requested_transport, Some(17));
        assert!(first.fingerprint);
        o.answer(&challenge(&first, 401, "n1"), None);
        let (second, bytes) = o.sent();
        assert_ne!(second.transaction_id, first.transaction_id);
        assert_eq!(second.nonce.as_deref(), Some("n1"));
        crate::wire::verify_integrity(&bytes, &key(&o.client)).unwrap();

        o.answer(&challenge(&second, 438, "n2"), None);
        let (third, _) = o.sent();
        assert_eq!(third.nonce.as_deref(), Some("n2"));

        // An unsigned success is not believed; the transaction goes on.
        let mut ok = TurnMessage::new(
            Class::SuccessResponse,
            method::ALLOCATE,
            third.transaction_id,
        );
        ok.xor_relayed_address = Some(addr("198.51.100.1:50000"));
        ok.lifetime = Some(600);
        o.answer(&ok, None);
        assert_eq!(o.client.state(), State::Allocating);
        assert_eq!(o.client.stats().dropped_unmatched, 1);
        // Signed, it is.
        o.answer(&ok, Some(&key(&o.client)));
        assert_eq!(o.client.state(), State::Allocated);
        assert!(matches!(o.events().as_slice(), [Event::Allocated { .. }]));
        // The refresh is due a minute before expiry.
        assert_eq!(
            o.client.poll_timeout(),
            Some(o.now + Duration::from_secs(15)),
            "the keepalive comes first"
        );
    }

    /// A USERNAME longer than STUN allows cannot be signed: a local error, not a 400.
    #[test]
    fn an_overlong_username_is_a_local_error() {
        let mut config = config(UNIX0 + 3600);
        config.username = "u".repeat(600);
        let mut o = One {
            client: Client::new(config),
            now: epoch(),
        };
        o.client.allocate(o.now).unwrap();
        let (first, _) = o.sent();
        o.answer(&challenge(&first, 401, "n1"), None);
        assert_eq!(
            o.events(),
            vec![Event::Error(Error::Unencodable {
                request: Request::Allocate
            })]
        );
        assert_eq!(o.client.state(), State::Closed);
    }

    /// A 300 to the first, unsigned Allocate may be anyone's (RFC 8489 §14.8): not followed;
    /// to a signed one, unsigned, it is dropped as forged.
    #[test]
    fn an_unsigned_try_alternate_is_not_followed() {
        let mut o = One::new();
        let (first, _) = o.sent();
        let mut redirect = TurnMessage::error_response(&first, code::TRY_ALTERNATE);
        redirect.alternate_server = Some(addr("192.0.2.66:3478"));
        o.answer(&redirect, None);
        assert_eq!(o.client.server(), server_addr());
        assert!(matches!(
            o.events().as_slice(),
            [Event::Error(Error::Rejected { code: 300, .. })]
        ));

        let mut o = One::new();
        let (first, _) = o.sent();
        o.answer(&challenge(&first, 401, "n1"), None);
        let (second, _) = o.sent();
        let mut redirect = TurnMessage::error_response(&second, code::TRY_ALTERNATE);
        redirect.alternate_server = Some(addr("192.0.2.66:3478"));
        o.answer(&redirect, None);
        assert_eq!(o.client.server(), server_addr());
        assert_eq!(o.client.state(), State::Allocating);
        assert_eq!(o.client.stats().dropped_unmatched, 1);
    }

    #[test]
    fn a_401_with_credentials_is_final() {
        let mut o = One::new();
        let (first, _) = o.sent();
        o.answer(&challenge(&first, 401, "n1"), None);
        let (second, _) = o.sent();
        o.answer(&challenge(&second, 401, "n1"), None);
        assert_eq!(o.client.state(), State::Closed);
        assert!(matches!(
            o.events().as_slice(),
            [Event::Error(Error::Rejected { code: 401, .. })]
        ));
    }

    #[test]
    fn too_many_stale_nonces_give_up() {
        let mut o = One::new();
        let (mut m, _) = o.sent();
        o.answer(&challenge(&m, 401, "n"), None);
        for i in 0..=MAX_STALE_RETRIES {
            m = o.sent().0;
            o.answer(&challenge(&m, 438, &format!("n{i}")), None);
        }
        assert_eq!(o.client.state(), State::Closed);
        assert!(matches!(
            o.events().as_slice(),
            [Event::Error(Error::Rejected { code: 438, .. })]
        ));
    }

    /// RFC 8489 §6.2.1 via fog-stun: 7 requests, then a timeout at 39.5 s.
    #[test]
    fn a_silent_server_times_out() {
        let mut o = One::new();
        let mut sent = 0;
        let mut buf = vec![0u8; 1500];
        loop {
            while o.client.poll_transmit(o.now, &mut buf).is_some() {
                sent += 1;
            }
            let Some(t) = o.client.poll_timeout() else {
                break;
            };
            o.now = t;
            o.client.handle_timeout(t);
        }
        assert_eq!(sent, 7);
        assert_eq!(
            o.events(),
            vec![Event::Error(Error::TimedOut {
                request: Request::Allocate
            })]
        );
        assert_eq!(o.client.state(), State::Closed);
    }

    #[test]
    fn strangers_and_junk_are_dropped() {
        let mut o = One::new();
        let stranger = Receive {
            source: addr("192.0.2.99:3478"),
            local: client_addr(),
            payload: &[0, 1, 0, 0],
        };
        assert!(!o.client.accepts(&stranger));
        // From the server, only what is ours: a response to our transaction, not another's,
        // and no ChannelData on a channel we never bound.
        let (request, _) = o.sent();
        let ours = TurnMessage::error_response(&request, 401)
            .to_bytes(None)
            .unwrap();
        let mut theirs = ours.clone();
        theirs[8] ^= 1;
        for (bytes, want) in [
            (&ours[..], true),
            (&theirs[..], false),
            (&b"\x40\x00\x00\x00"[..], false),
        ] {
            let p = Receive {
                source: server_addr(),
                local: client_addr(),
                payload: bytes,
            };
            assert_eq!(o.client.accepts(&p), want, "{bytes:02x?}");
        }
        for junk in [
            &b"\x40\x00\x00\x09ab"[..],
            b"\x00\x01\x00\x00",
            b"\x41\x00\x00\x00",
        ] {
            o.client.handle_packet(
                o.now,
                Receive {
                    source: server_addr(),
                    local: client_addr(),
                    payload: junk,
                },
            );
        }
        let s = *o.client.stats();
        assert_eq!(s.dropped_malformed, 2);
        assert_eq!(s.dropped_unknown_channel, 1);
        assert!(o.events().is_empty());
    }
}

/// Two servers of one deployment (same secret): `a` full, naming `b` (and `b`, when `b_full`,
/// naming `a` back). Drives the client to whichever server it sends to.
fn redirect_run(b_full: bool) -> (Client, Vec<Event>, Server, Server) {
    let t0 = epoch();
    let (a_addr, b_addr) = (server_addr(), addr("198.51.100.2:3478"));
    let full = |listen, alternate| {
        let mut config = ServerConfig::new(listen, REALM, secret(), [3; 32], (t0, UNIX0));
        config.limits.max_allocations = 0;
        let mut s = Server::new(config);
        s.set_alternate(Some(alternate));
        s
    };
    let mut a = full(a_addr, b_addr);
    let mut b = if b_full {
        full(b_addr, a_addr)
    } else {
        Server::new(ServerConfig::new(
            b_addr,
            REALM,
            secret(),
            [4; 32],
            (t0, UNIX0),
        ))
    };
    let mut client = Client::new(config(UNIX0 + 86_400));
    client.allocate(t0).unwrap();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 65_535];
    for _ in 0..20 {
        while let Some(t) = client.poll_transmit(t0, &mut buf) {
            let server = if t.destination == a_addr {
                &mut a
            } else {
                &mut b
            };
            assert!(t.destination == a_addr || t.destination == b_addr);
            let bytes = buf[..t.len].to_vec();
            server.handle_packet(
                t0,
                Receive {
                    source: client_addr(),
                    local: t.destination,
                    payload: &bytes,
                },
            );
        }
        for (server, from) in [(&mut a, a_addr), (&mut b, b_addr)] {
            while let Some(t) = server.poll_transmit(t0, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                let p = Receive {
                    source: from,
                    local: client_addr(),
                    payload: &bytes,
                };
                if client.accepts(&p) {
                    client.handle_packet(t0, p);
                }
            }
            while server.poll_event().is_some() {}
        }
        events.extend(std::iter::from_fn(|| client.poll_event()));
    }
    (client, events, a, b)
}

/// RFC 8489 §10: a full server answers the (signed) Allocate with 300 and the address of
/// another; the client challenges itself there afresh and allocates.
#[test]
fn a_full_server_sends_the_allocate_to_its_alternate() {
    let (client, events, a, b) = redirect_run(false);
    let to = addr("198.51.100.2:3478");
    assert!(
        matches!(
            events.as_slice(),
            [Event::Redirected { from, to: t }, Event::Allocated { .. }]
                if *from == server_addr() && *t == to
        ),
        "{events:?}"
    );
    assert_eq!(client.server(), to);
    assert_eq!(client.state(), State::Allocated);
    assert_eq!((a.allocation_count(), b.allocation_count()), (0, 1));
    assert_eq!(a.stats().redirected, 1);
}

/// Two full servers naming each other: the client follows once, never back, and reports the
/// second 300 as the Allocate's failure.
#[test]
fn redirects_do_not_loop() {
    let (client, events, _, b) = redirect_run(true);
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Redirected { .. },
                Event::Error(Error::Rejected {
                    request: Request::Allocate,
                    code: 300,
                    ..
                })
            ]
        ),
        "{events:?}"
    );
    assert_eq!(client.state(), State::Closed);
    assert_eq!(b.stats().redirected, 1);
}
