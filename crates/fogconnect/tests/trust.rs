//! The signaling server is trusted for delivery only. A server that forges the sender of an
//! offer, alters an offer or an answer, or replays an offer in a new session never gets a
//! node to report a connection with a peer that did not make it: what does not verify is
//! dropped and counted, and a replayed offer (whose signature is genuine) never gets a path,
//! because the check passwords come from a key exchange the server cannot complete.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fog_examples::scenario::{Observed, Profile, Scenario, SimNode};
use fog_signal::KeyPair;
use fog_signal::msg::{ServerMsg, SessionId};
use fog_signal::server::{ConnId, Output, Server};
use fog_sim::presets::Preset;
use fog_sim::signal::SignalServer;
use fogconnect::node::seal::{Role, candidate_transcript, transcript};
use fogconnect::{Event, FailReason};

/// What the server does to the frames it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// Offers name a third peer as their sender.
    ForgeSender,
    /// Offers carry one more candidate, an address of the server's choice.
    AlterOffer,
    /// Answers carry one more candidate.
    AlterAnswer,
    /// Every offer is also delivered again later, in a session of the server's making.
    ReplayOffer,
    /// Every answer is followed by a thousand trickled candidates signed by the answerer (as
    /// a hostile peer could send them).
    FloodCandidates,
    /// Every answer is followed by a candidate of the server's own, unsigned.
    InjectCandidate,
    /// Every answer is rewritten and signed again by the answerer (a hostile peer, whose key
    /// the test lends the server): it claims a random-port symmetric NAT, and its
    /// server-reflexive candidate is [`VICTIM`], an address the answerer does not own, so
    /// that the offerer's plan sprays the victim's IP with a birthday round.
    AimAtVictim,
    /// Every answer names a QUIC certificate fingerprint that is not the answerer's and is
    /// signed again by the answerer (a broken or hostile peer).
    WrongCertificate,
    /// Every behaviour update (sent when a node's discovery ends with another behaviour than
    /// it offered or answered with) claims a random-port symmetric NAT instead.
    AlterNat,
}

/// A third party's address, which the hostile answerer names as its own.
const VICTIM: std::net::SocketAddr = std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9)),
    4000,
);

/// fog-signal's server with a tampering step on its way out.
struct Malicious {
    inner: Server,
    tamper: Tamper,
    out: VecDeque<Output>,
    /// Offers to replay: (when, connection, frame).
    replays: Vec<(Instant, ConnId, ServerMsg)>,
    /// Trickles to send right after the answer just forwarded: to whom, in which session,
    /// how many.
    flood: Option<(ConnId, SessionId, u16)>,
    /// The answerer's key, which a hostile peer has (and the server does not).
    answerer: KeyPair,
    /// The offerer's peer ID.
    offerer: fog_signal::PeerId,
    /// The exchange key of the offer last forwarded, which an answer's signature covers.
    offer_key: Option<fog_signal::msg::ExchangeKey>,
    now: Instant,
}

fn third_party() -> fog_signal::PeerId {
    KeyPair::from_seed(&[77; 32]).peer_id()
}

impl Malicious {
    fn tamper(&mut self, conn: ConnId, frame: String) -> String {
        let Ok(mut msg) = ServerMsg::decode(&frame) else {
            return frame;
        };
        let extra = fog_signal::msg::Candidate {
            kind: fog_signal::msg::CandidateKind::Host,
            addr: "198.51.100.66:4444".parse().unwrap(),
            priority: 1,
            related: None,
        };
        match (&mut msg, self.tamper) {
            (ServerMsg::Offer { from, .. }, Tamper::ForgeSender) => *from = third_party(),
            (ServerMsg::Offer { description, .. }, Tamper::AlterOffer) => {
                description.candidates.push(extra);
            }
            (ServerMsg::Answer { description, .. }, Tamper::AlterAnswer) => {
                description.candidates.push(extra);
            }
            (ServerMsg::Nat { nat, .. }, Tamper::AlterNat) => {
                *nat = fog_signal::msg::NatBehaviour::Nat {
                    mapping: fog_signal::msg::Mapping::AddressAndPortDependent,
                    filtering: fog_signal::msg::Filtering::AddressAndPortDependent,
                    ports: fog_signal::msg::PortPattern::Random,
                    hairpinning: false,
                };
            }
            (ServerMsg::Offer { .. }, Tamper::ReplayOffer) => {
                let mut again = msg.clone();
                if let ServerMsg::Offer { session: s, .. } = &mut again {
                    let mut raw = s.0;
                    raw[0] ^= 0xff;
                    *s = SessionId(raw);
                }
                self.replays
                    .push((self.now + Duration::from_secs(5), conn, again));
                return frame;
            }
            (ServerMsg::Answer { session, .. }, Tamper::FloodCandidates) => {
                self.flood = Some((conn, *session, 1_000));
                return frame;
            }
            (ServerMsg::Answer { session, .. }, Tamper::InjectCandidate) => {
                self.flood = Some((conn, *session, 1));
                return frame;
            }
            (
                ServerMsg::Offer { description, .. },
                Tamper::AimAtVictim | Tamper::WrongCertificate,
            ) => {
                self.offer_key = description.seal.map(|s| s.key);
                return frame;
            }
            (
                ServerMsg::Answer {
                    session,
                    description,
                    ..
                },
                tamper @ (Tamper::AimAtVictim | Tamper::WrongCertificate),
            ) => {
                let Some(offer_key) = self.offer_key else {
                    return frame;
                };
                if tamper == Tamper::WrongCertificate && description.rtc.is_some() {
                    description.rtc = Some(fog_signal::msg::CertFingerprint([0xee; 32]));
                } else if tamper == Tamper::WrongCertificate {
                    description.quic = Some(fog_signal::msg::CertFingerprint([0xee; 32]));
                } else {
                    aim_at_victim(description);
                }
                let role = Role::Answer {
                    from: self.answerer.peer_id(),
                    to: self.offerer,
                    session: *session,
                    offer_key: &offer_key,
                };
                if let Some(key) = description.seal.map(|s| s.key) {
                    let signed = transcript(&role, description, &key);
                    let signature = fog_signal::msg::Sig(self.answerer.sign(&signed));
                    description.seal = Some(fog_signal::msg::Seal { key, signature });
                }
            }
            _ => return frame,
        }
        msg.encode()
    }
}

/// The answer of a hostile peer that claims a random-port NAT and a victim's address as its
/// own.
fn aim_at_victim(description: &mut fog_signal::msg::Description) {
    description.nat = Some(fog_signal::msg::NatBehaviour::Nat {
        mapping: fog_signal::msg::Mapping::AddressAndPortDependent,
        filtering: fog_signal::msg::Filtering::AddressAndPortDependent,
        ports: fog_signal::msg::PortPattern::Random,
        hairpinning: false,
    });
    description.candidates = vec![fog_signal::msg::Candidate {
        kind: fog_signal::msg::CandidateKind::Srflx,
        addr: VICTIM,
        priority: 1,
        related: None,
    }];
}

impl SignalServer for Malicious {
    fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        self.inner.handle_connect(now, conn);
    }
    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: &str) {
        self.now = now;
        self.inner.handle_frame(now, conn, frame);
    }
    fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        self.inner.handle_disconnect(now, conn);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.inner.handle_timeout(now);
        let due: Vec<_> = self
            .replays
            .iter()
            .filter(|r| r.0 <= now)
            .cloned()
            .collect();
        self.replays.retain(|r| r.0 > now);
        for (_, conn, msg) in due {
            self.out.push_back(Output::Send {
                conn,
                frame: msg.encode(),
            });
        }
    }
    fn poll_output(&mut self) -> Option<Output> {
        while let Some(out) = self.inner.poll_output() {
            let out = match out {
                Output::Send { conn, frame } => Output::Send {
                    conn,
                    frame: self.tamper(conn, frame),
                },
                other => other,
            };
            self.out.push_back(out);
            if let Some((conn, session, count)) = self.flood.take() {
                for i in 0..count {
                    let candidate = fog_signal::msg::Candidate {
                        kind: fog_signal::msg::CandidateKind::Host,
                        addr: std::net::SocketAddr::from(([198, 51, 100, 77], 10_000 + i)),
                        priority: 1,
                        related: None,
                    };
                    // The flood is the answerer's own (signed); an injection is not.
                    let signature = (self.tamper == Tamper::FloodCandidates).then(|| {
                        let transcript = candidate_transcript(
                            self.answerer.peer_id(),
                            self.offerer,
                            session,
                            &candidate,
                        );
                        fog_signal::msg::Sig(self.answerer.sign(&transcript))
                    });
                    let trickle = ServerMsg::Candidate {
                        session,
                        candidate: Some(candidate),
                        signature,
                    };
                    self.out.push_back(Output::Send {
                        conn,
                        frame: trickle.encode(),
                    });
                }
            }
        }
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let replay = self.replays.iter().map(|r| r.0).min();
        [self.inner.poll_timeout(), replay]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The scenario's seed.
const SEED: u64 = 31;

/// Node `n`'s identity in the scenario of `seed` (as `fog_examples::scenario` makes it).
fn node_key(seed: u64, n: u8) -> KeyPair {
    let mut key_seed = [n; 32];
    key_seed[..8].copy_from_slice(&seed.to_le_bytes());
    KeyPair::from_seed(&key_seed)
}

/// Puts a server that tampers as `tamper` says in `s` (with the answerer's key, as a hostile
/// answerer has it) and waits until both nodes are ready.
fn malicious(s: &mut Scenario, tamper: Tamper) {
    let server = Malicious {
        inner: Server::new(s.signal_config.clone()),
        tamper,
        out: VecDeque::new(),
        replays: Vec::new(),
        flood: None,
        answerer: node_key(SEED, 2),
        offerer: s.hosts[0].1,
        offer_key: None,
        now: s.sim.now(),
    };
    s.sim.set_signal_server(server);
    assert!(s.wait_ready());
}

/// Runs A → B under a server that tampers as `tamper` says: B accepts every offer. Both
/// nodes' events, and their counters.
fn run(tamper: Tamper) -> (Scenario, [fogconnect::Counters; 2]) {
    let profile = Profile {
        connect_timeout: Some(Duration::from_secs(10)),
        ..Profile::default()
    };
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, SEED, &profile);
    malicious(&mut s, tamper);
    s.connect();
    s.run_for(Duration::from_secs(20));
    let counters = [0, 1].map(|i| s.with_node(i, |n, _| n.counters()));
    (s, counters)
}

/// Every peer node `i` reported a path with.
fn connected_peers(s: &Scenario, i: usize) -> Vec<fog_signal::PeerId> {
    s.events[i]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Connected { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn an_honest_server_connects_them() {
    // The control: the same world with a server that forwards faithfully connects.
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 31, &Profile::default());
    assert!(s.wait_ready());
    s.connect();
    s.run_for(Duration::from_secs(3));
    assert_eq!(connected_peers(&s, 1), vec![s.hosts[0].1]);
    assert_eq!(connected_peers(&s, 0), vec![s.hosts[1].1]);
}

#[test]
fn a_forged_sender_is_dropped() {
    let (s, counters) = run(Tamper::ForgeSender);
    assert!(connected_peers(&s, 1).is_empty(), "{:?}", s.events[1]);
    assert!(
        !s.events[1]
            .iter()
            .any(|(_, e)| matches!(e, Event::Incoming { .. })),
        "the application never even hears of it"
    );
    assert!(counters[1].bad_signatures >= 1, "{counters:?}");
    assert!(connected_peers(&s, 0).is_empty());
}

#[test]
fn an_altered_offer_is_dropped() {
    let (s, counters) = run(Tamper::AlterOffer);
    assert!(connected_peers(&s, 1).is_empty());
    assert!(counters[1].bad_signatures >= 1, "{counters:?}");
    assert!(connected_peers(&s, 0).is_empty());
}

#[test]
fn an_altered_answer_is_dropped_and_the_connect_fails() {
    let (s, counters) = run(Tamper::AlterAnswer);
    assert!(connected_peers(&s, 0).is_empty(), "{:?}", s.events[0]);
    assert!(counters[0].bad_signatures >= 1, "{counters:?}");
    assert!(s.events[0].iter().any(|(_, e)| matches!(
        e,
        Event::Failed {
            reason: FailReason::TimedOut | FailReason::NoPath,
            ..
        }
    )));
}

#[test]
fn a_replayed_offer_never_gets_a_path() {
    let (s, _) = run(Tamper::ReplayOffer);
    // The genuine offer connected once; the replay shows as a second incoming connection,
    // which never gets a path and fails at its timeout.
    let incoming: Vec<_> = s.events[1]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Incoming { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(incoming.len(), 2, "{:?}", s.events[1]);
    let replayed = incoming[1];
    assert!(
        !s.events[1]
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected { id, .. } if *id == replayed)),
        "the replay connected: {:?}",
        s.events[1]
    );
    assert!(
        s.events[1]
            .iter()
            .any(|(_, e)| matches!(e, Event::Failed { id, .. } if *id == replayed))
    );
    assert_eq!(
        connected_peers(&s, 1),
        vec![s.hosts[0].1],
        "the genuine one did"
    );
}

#[test]
fn a_flood_of_trickled_candidates_is_bounded() {
    let (s, counters) = run(Tamper::FloodCandidates);
    assert!(
        counters[0].candidates_dropped >= 1_000 - 64,
        "at most 64 candidates are kept: {counters:?}"
    );
    // The connection itself is not disturbed.
    assert_eq!(connected_peers(&s, 0), vec![s.hosts[1].1]);
}

#[test]
fn an_altered_behaviour_update_is_dropped() {
    // Full cones: the first report assumes random ports (the samples are still running), the
    // final one finds them preserved, so each node sends an update in the session.
    let (s, counters) = run(Tamper::AlterNat);
    assert!(
        counters[0].bad_signatures >= 1 && counters[1].bad_signatures >= 1,
        "{counters:?}"
    );
    assert_eq!(connected_peers(&s, 0), vec![s.hosts[1].1]);
    assert_eq!(connected_peers(&s, 1), vec![s.hosts[0].1]);
}

#[test]
fn a_candidate_the_server_injects_is_dropped() {
    let (s, counters) = run(Tamper::InjectCandidate);
    assert!(counters[0].bad_signatures >= 1, "{counters:?}");
    assert_eq!(counters[0].candidates_dropped, 0);
    assert_eq!(connected_peers(&s, 0), vec![s.hosts[1].1]);
}

#[test]
fn a_hostile_peer_cannot_aim_our_probes_at_a_third_party() {
    // Session after session, the answerer names the victim's address as its own and claims
    // the NAT that makes the offerer spray it.
    let profile = Profile {
        connect_timeout: Some(Duration::from_secs(10)),
        ..Profile::default()
    };
    // Behind a port-restricted cone, the offerer can only reach a random-port peer by a
    // birthday spray of its IP.
    let mut s = Scenario::new(Preset::PortRestrictedCone, Preset::FullCone, SEED, &profile);
    malicious(&mut s, Tamper::AimAtVictim);
    let host = s.hosts[0].0;
    s.sim
        .with_machine(host, |m: &mut SimNode, _| m.log = Some(Observed::default()));
    let sessions = 4;
    for _ in 0..sessions {
        s.connect();
        s.run_for(Duration::from_secs(12));
    }
    let log = s
        .sim
        .with_machine(host, |m: &mut SimNode, _| m.log.take())
        .expect("logged");
    let to_victim = log
        .datagrams
        .iter()
        .filter(|(to, _)| to.ip() == VICTIM.ip())
        .count();
    // Per second: never more than the birthday spray's rate (two datagrams a probe) and a
    // first burst of checks, whatever the peer claims.
    let to_victim_at: Vec<Instant> = log
        .datagrams
        .iter()
        .zip(&log.sent_at)
        .filter(|((to, _), _)| to.ip() == VICTIM.ip())
        .map(|(_, at)| *at)
        .collect();
    let per_second = to_victim_at
        .iter()
        .map(|&t| {
            to_victim_at
                .iter()
                .filter(|&&u| u >= t && u < t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let rate = fog_ice::strategy::StrategyConfig::default().spray_rate as usize;
    assert!(
        per_second <= 2 * rate + 64,
        "{per_second} datagrams to the victim in one second"
    );
    let counters = s.with_node(0, |n, _| n.counters());
    // The scenario's nodes keep the default budget.
    let budget = 2 * fog_ice::strategy::StrategyConfig::default().budget.probes
        + fogconnect::CHECK_ALLOWANCE;
    // The plan did aim at the victim (each session's round is a full birthday spray), and the
    // victim got no more than one budget's worth whatever the number of sessions.
    assert!(
        counters.probes_withheld > 0,
        "the rounds asked for more: {counters:?}"
    );
    assert!(
        to_victim > 2_000 && to_victim <= budget as usize,
        "{to_victim} datagrams to the victim over {sessions} sessions, budget {budget}"
    );
}

/// A peer that signs one QUIC certificate and presents another gets no QUIC connection: the
/// offerer's check of the certificate against the signed fingerprint fails the transport.
#[test]
fn a_quic_certificate_other_than_the_signed_one_fails_the_connection() {
    certificate_other_than_the_signed_one(fogconnect::Transport::Quic);
}

/// The same for WebRTC: the offerer's DTLS handshake refuses a certificate whose fingerprint
/// is not the one the answer signed, so no data channel opens.
#[test]
fn a_dtls_certificate_other_than_the_signed_one_fails_the_connection() {
    certificate_other_than_the_signed_one(fogconnect::Transport::Rtc);
}

fn certificate_other_than_the_signed_one(transport: fogconnect::Transport) {
    let mut s = Scenario::new(
        Preset::FullCone,
        Preset::FullCone,
        SEED,
        &Profile::default(),
    );
    for i in 0..2 {
        let transport = transport.clone();
        s.with_node(i, |n, _| {
            n.set_transports(vec![fogconnect::Transport::Datagram, transport])
        });
    }
    malicious(&mut s, Tamper::WrongCertificate);
    let to = s.hosts[1].1;
    let id = s
        .with_node(0, |n, now| n.connect_with(now, to, 1, transport))
        .expect("A may connect");
    s.run_for(Duration::from_secs(10));
    let sent = s.with_node(0, |n, now| n.send(now, id, b"hello"));
    assert!(
        sent.is_err(),
        "nothing goes on a refused certificate: {sent:?}"
    );
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(e,
            Event::Closed { id: i, reason: fogconnect::CloseReason::TransportFailed, .. }
                if *i == id)),
        "{:#?}",
        s.events[0]
    );
    assert!(
        !s.events[1]
            .iter()
            .any(|(_, e)| matches!(e, Event::Data { .. })),
        "no data either way"
    );
}
