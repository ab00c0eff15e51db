//! Our candidates: the description we offer or answer, further interfaces, the keepalive that
//! notices a new mapping, and trickling what changed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, PortPattern};
use fog_core::{Receive, SocketRequest};
use fog_ice::candidate::{self as ice_candidate, Candidate, Kind};
use fog_signal::msg::{self, CandidateKind, Description, Transport};

use super::{ConnectionId, Event, Node};

impl Node {
    /// Our further interface addresses are now `addresses` (the base's own is ignored): new
    /// ones get a socket at the base's port and become host candidates, trickled to the peer
    /// of every connection and checked at once; gone ones are unbound, and a connection whose
    /// path used one moves to another path without waiting for consent to lapse. Reported as
    /// [`Event::CandidatesChanged`].
    pub fn set_interfaces(&mut self, now: Instant, addresses: &[IpAddr]) {
        self.now = self.now.max(now);
        let port = self.config.base.port();
        self.refused.retain(|ip| addresses.contains(ip));
        let wanted: Vec<SocketAddr> = addresses
            .iter()
            .filter(|ip| **ip != self.config.base.ip() && !ip.is_unspecified())
            .filter(|ip| !self.refused.contains(ip))
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let removed: Vec<SocketAddr> = self
            .hosts
            .iter()
            .filter(|h| !wanted.contains(h))
            .copied()
            .collect();
        let mut added = Vec::new();
        for host in wanted {
            if !self.hosts.contains(&host) && !added.contains(&host) {
                added.push(host);
            }
        }
        for &gone in &removed {
            self.hosts.retain(|h| *h != gone);
            self.socket_requests.push_back(SocketRequest::Unbind(gone));
            for conn in self.conns.values_mut() {
                if let Some(agent) = conn.agent_mut() {
                    agent.remove_local(now, gone);
                }
            }
        }
        for &host in &added {
            self.hosts.push(host);
            self.socket_requests.push_back(SocketRequest::Bind(host));
            for conn in self.conns.values_mut() {
                if let Some(agent) = conn.agent_mut() {
                    agent.add_local(now, host);
                }
            }
        }
        let added: Vec<Candidate> = if self.config.direct {
            added
                .into_iter()
                .map(|a| Candidate::new(Kind::Host, a))
                .collect()
        } else {
            Vec::new()
        };
        self.changed(added, removed);
        self.drain_agents();
    }

    /// Checks the base socket's mapping now rather than at the next keepalive (after a network
    /// change the application noticed, say); a new server-reflexive address is reported as
    /// [`Event::CandidatesChanged`] and trickled.
    pub fn regather(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.report.is_some() {
            self.watch_from(now);
        }
    }

    /// Reports changed candidates and trickles the new ones to every connection's peer.
    pub(super) fn changed(&mut self, added: Vec<Candidate>, removed: Vec<SocketAddr>) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let mut trickles = Vec::new();
        for conn in self.conns.values_mut() {
            let Some(session) = conn.session else {
                // An offer still on its way: what went away is not worth telling.
                conn.untrickled.retain(|c| !removed.contains(&c.addr));
                conn.untrickled.extend(added.iter().copied());
                continue;
            };
            trickles.push((session, conn.peer));
        }
        for (session, peer) in trickles {
            for c in &added {
                self.trickle(session, peer, c);
            }
        }
        self.events
            .push_back(Event::CandidatesChanged { added, removed });
    }

    /// Sends the keepalive Binding at `at` (a new transaction).
    pub(super) fn watch_from(&mut self, at: Instant) {
        self.watch = Some(self.probe(self.config.base, at, *b"keep"));
    }

    /// The keepalive's answer: a mapped address that is not the one we describe is a new
    /// server-reflexive candidate.
    pub(super) fn handle_watch_answer(&mut self, now: Instant, packet: &Receive<'_>) -> bool {
        let Some(response) = self
            .watch
            .as_ref()
            .and_then(|w| w.answer(packet, self.config.stun))
        else {
            return false;
        };
        // The next one, a keepalive interval from this answer.
        self.watch_from(now + self.config.keepalive);
        let mapped = response.mapped_address();
        let old = self.report.as_ref().and_then(|r| r.mapped);
        if let (Some(new), Some(report)) = (mapped, &mut self.report) {
            if old != Some(new) && self.config.direct {
                report.mapped = Some(new);
                // Our NAT opens the new mapping toward each peer before the trickle brings
                // the peer's checks to it (`Agent::mapping_changed`).
                for conn in self.conns.values_mut() {
                    if let Some(agent) = conn.agent_mut() {
                        agent.mapping_changed();
                    }
                }
                let added = vec![Candidate::new(Kind::ServerReflexive, new)];
                self.changed(added, old.into_iter().collect());
                self.check_relay(now);
            }
        }
        true
    }

    /// Our description for a connection of `service` over `transport` (an offer names the one
    /// it asks for, an answer the one it runs), with our [`Node::current_candidates`].
    pub(super) fn description(
        &mut self,
        ufrag: &str,
        service: u16,
        transport: &Transport,
    ) -> Description {
        let candidates = self.current_candidates();
        Description {
            candidates: candidates.iter().map(to_wire).collect(),
            nat: self.behaviour().map(Into::into),
            transports: vec![transport.clone()],
            // The check passwords come from the key exchange (see `seal`); none is sent.
            credentials: msg::Credentials {
                ufrag: ufrag.to_owned(),
                pwd: String::new(),
            },
            service,
            seal: None,
            quic: None,
            rtc: None,
        }
    }

    /// Our candidates as of now: host, server-reflexive, mapped, predicted and relayed
    /// candidates of the base socket (only the relayed one when direct paths are off).
    pub(super) fn current_candidates(&self) -> Vec<Candidate> {
        let base = self.config.base;
        let mut candidates = Vec::new();
        if self.config.direct {
            // The server-reflexive address even when it is the host's own (no NAT, or a
            // firewall): the peer's plan checks server-reflexive candidates, and may skip host
            // ones.
            if let Some(mapped) = self.report.as_ref().and_then(|r| r.mapped) {
                candidates.push(Candidate::new(Kind::ServerReflexive, mapped));
            }
            if let Some(mapped) = self.mapped_candidate() {
                candidates.push(Candidate::new(Kind::Mapped, mapped));
            }
            if !candidates.iter().any(|c| c.addr == base) {
                candidates.push(Candidate::new(Kind::Host, base));
            }
            for &host in &self.hosts {
                candidates.push(Candidate::new(Kind::Host, host));
            }
            if let (
                Some(Behaviour::Nat {
                    ports: PortPattern::Sequential { delta },
                    ..
                }),
                Some(last),
            ) = (
                self.behaviour(),
                self.refresh.as_ref().and_then(|r| r.mapped),
            ) {
                for addr in ice_candidate::predicted(last, delta, 3) {
                    candidates.push(Candidate::new(Kind::Predicted, addr));
                }
            }
        }
        if let Some(relayed) = self.relayed {
            candidates.push(Candidate::new(Kind::Relayed, relayed));
        }
        candidates
    }

    /// Sends the peer of `id` all our current candidates again, in its session: what we
    /// trickled while our signaling connection was down, or while the peer's was, went
    /// nowhere. With `ask`, an end-of-candidates marker follows, which asks the peer to do
    /// the same (see [`Node::resend_asked`]).
    pub(super) fn resend_candidates(&mut self, now: Instant, id: ConnectionId, ask: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(session) = conn.session else {
            return;
        };
        conn.resent_at = Some(now);
        let peer = conn.peer;
        for c in self.current_candidates() {
            self.trickle(session, peer, &c);
        }
        if ask {
            // A session the server forgot refuses it: the connection goes on with what it has.
            let _ = self.client.trickle(session, None);
        }
    }

    /// The peer of `id` sent its end-of-candidates marker on a live connection: its signaling
    /// connection came back after an absence in which our trickles went nowhere, so all ours
    /// go again (at most once a second: the peer decides how often it asks).
    pub(super) fn resend_asked(&mut self, now: Instant, id: ConnectionId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let recent = conn
            .resent_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
        if conn.connected() && !recent {
            self.resend_candidates(now, id, false);
        }
    }
}

pub(super) fn to_wire(c: &Candidate) -> msg::Candidate {
    msg::Candidate {
        kind: match c.kind {
            Kind::Host => CandidateKind::Host,
            Kind::ServerReflexive => CandidateKind::Srflx,
            Kind::PeerReflexive => CandidateKind::Prflx,
            Kind::Predicted => CandidateKind::Predicted,
            Kind::Relayed => CandidateKind::Relay,
            Kind::Mapped => CandidateKind::Mapped,
        },
        addr: c.addr,
        priority: c.priority,
        related: None,
    }
}

pub(super) fn from_wire(c: &msg::Candidate) -> Candidate {
    Candidate {
        kind: match c.kind {
            CandidateKind::Host => Kind::Host,
            CandidateKind::Srflx => Kind::ServerReflexive,
            CandidateKind::Prflx => Kind::PeerReflexive,
            CandidateKind::Predicted => Kind::Predicted,
            CandidateKind::Relay => Kind::Relayed,
            CandidateKind::Mapped => Kind::Mapped,
        },
        addr: c.addr,
        priority: c.priority,
    }
}
