//! Datagrams to the agents, directly or through our TURN allocation, and the relay over
//! signaling.

use std::time::Instant;

use fog_core::{Receive, SansIo};
use fog_ice::candidate::{Candidate, Kind};
use fog_signal::msg::SessionId;
use fog_turn::client::{Event as TurnEvent, State as TurnState};

use super::seal::Kind as Sealed;
use super::{
    ConnectionId, Event, Node, RELAY_AT_ONCE_EVERY, RELAY_RETRY_FIRST, RELAY_RETRY_MAX,
    SIGNAL_RELAY_KEEPALIVE, UNSPECIFIED, Via,
};

/// The fewest seconds between two echoes on the relay over signaling: each costs a frame of
/// our own signaling rate, which a peer must not spend for us.
const ECHO_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Node {
    /// Hands a datagram to the agent that owns it; the peer counts as heard when the agent
    /// took it as authentic (it dropped nothing).
    pub(super) fn give_agent(&mut self, now: Instant, packet: Receive<'_>) {
        for conn in self.conns.values_mut() {
            let Some(agent) = conn.agent_mut() else {
                continue;
            };
            if !agent.owns(&packet) {
                continue;
            }
            let before = agent.stats();
            agent.handle_packet(now, packet);
            let after = agent.stats();
            if (after.malformed, after.unauthenticated, after.stray)
                == (before.malformed, before.unauthenticated, before.stray)
            {
                conn.heard(now);
            }
            self.relay_permissions(now);
            self.drain_agents();
            return;
        }
    }

    /// Hands the TURN client's events on: the allocation to the agents, relayed data to the
    /// connection or agent it is for.
    pub(super) fn drain_turn(&mut self, now: Instant) {
        let Some(turn) = &mut self.turn else {
            return;
        };
        let mut events = Vec::new();
        while let Some(event) = turn.poll_event() {
            events.push(event);
        }
        let mut lost = false;
        for event in events {
            match event {
                TurnEvent::Allocated { relayed, .. } => {
                    self.relay_made_at = Some(now);
                    self.relayed = Some(relayed);
                    self.events.push_back(Event::RelayReady { relayed });
                    let candidate = Candidate::new(Kind::Relayed, relayed);
                    let mut trickles = Vec::new();
                    for conn in self.conns.values_mut() {
                        if let Some(agent) = conn.agent_mut() {
                            agent.set_relayed(now, relayed);
                        }
                        // Connections that described themselves before the relay existed learn
                        // it now (trickle), or once the server names the session.
                        match conn.session {
                            Some(session) => trickles.push((session, conn.peer)),
                            None => conn.untrickled.push(candidate),
                        }
                    }
                    for (session, peer) in trickles {
                        self.trickle(session, peer, &candidate);
                    }
                    self.relay_permissions(now);
                }
                TurnEvent::Data { peer, data, .. } => {
                    let Some(relayed) = self.relayed else {
                        continue;
                    };
                    if self.deliver(now, &data, None) {
                        continue;
                    }
                    let packet = Receive {
                        source: peer,
                        local: relayed,
                        payload: &data,
                    };
                    self.give_agent(now, packet);
                }
                // A failed Allocate or Refresh closes the client: the allocation is gone (a
                // NAT that rebound us, a server that restarted or refused us).
                TurnEvent::Error(_) => {
                    lost |= self
                        .turn
                        .as_ref()
                        .is_some_and(|t| t.state() == TurnState::Closed);
                }
                _ => {}
            }
        }
        if lost {
            self.relay_lost(now);
        }
    }

    /// The TURN allocation is gone, or the attempt to make one failed: its relayed candidate
    /// is withdrawn (its pairs fail, a connection on it moves to another path or waits for the
    /// new relay), and fresh credentials are asked for, for a new allocation that trickles
    /// like the first: at once when an allocation that worked was lost (at most once per
    /// [`RELAY_AT_ONCE_EVERY`]), after the back-off otherwise.
    pub(super) fn relay_lost(&mut self, now: Instant) {
        self.turn = None;
        self.turn_sent = false;
        self.relay_requested = false;
        self.counters.relays_lost += 1;
        let worked = self.relayed.is_some();
        if self
            .relay_made_at
            .take()
            .is_some_and(|made| worked && now >= made + RELAY_RETRY_MAX)
        {
            self.relay_backoff = RELAY_RETRY_FIRST;
        }
        if let Some(old) = self.relayed.take() {
            for conn in self.conns.values_mut() {
                if let Some(agent) = conn.agent_mut() {
                    agent.relay_lost(now, old);
                }
            }
            self.drain_agents();
            self.events.push_back(Event::CandidatesChanged {
                added: Vec::new(),
                removed: vec![old],
            });
        }
        let at_once = worked
            && self
                .relay_at_once
                .is_none_or(|t| now >= t + RELAY_AT_ONCE_EVERY);
        if at_once {
            self.relay_at_once = Some(now);
            self.relay_retry_at = Some(now);
            self.relay_retry(now);
        } else {
            self.relay_retry_at = Some(now + self.relay_backoff);
            self.relay_backoff = (self.relay_backoff * 2).min(RELAY_RETRY_MAX);
        }
    }

    /// Asks for new relay credentials once the back-off after a lost allocation is over.
    pub(super) fn relay_retry(&mut self, now: Instant) {
        if self.relay_retry_at.is_some_and(|t| t <= now) && self.client.is_authenticated() {
            self.relay_retry_at = None;
            if self.config.turn.is_some() && !self.relay_requested {
                self.relay_requested = self.client.request_relay().is_ok();
            }
        }
    }

    /// Our mapping changed: a TURN allocation made from the old one is probably gone (the
    /// server knows it by its 5-tuple), so it is refreshed now; the refresh fails if it is.
    pub(super) fn check_relay(&mut self, now: Instant) {
        if let Some(turn) = &mut self.turn {
            let _ = turn.refresh_now(now);
        }
    }

    /// Permissions on our allocation for every peer address a relay pair talks to.
    /// Called after every datagram an agent took (it may have learnt a peer-reflexive
    /// address), so it allocates nothing; `create_permission` is a lookup for a known IP.
    pub(super) fn relay_permissions(&mut self, now: Instant) {
        let Some(turn) = &mut self.turn else {
            return;
        };
        for conn in self.conns.values() {
            if let Some(agent) = conn.agent() {
                for peer in agent.relay_peers() {
                    let _ = turn.create_permission(now, peer.ip());
                }
            }
        }
    }

    /// Probes due on the relays over signaling.
    pub(super) fn signal_relay_timeouts(&mut self, now: Instant) {
        for conn in self.conns.values_mut() {
            let (Some(relay), Some(session), Some(keys)) =
                (&mut conn.signal_relay, conn.session, &mut conn.keys)
            else {
                continue;
            };
            if now >= relay.next_probe {
                // Without an authenticated connection the probe waits for the next turn.
                relay.next_probe = now + SIGNAL_RELAY_KEEPALIVE;
                let probe = keys.seal(Sealed::Probe, &[]);
                if self.client.relay(session, &probe).is_ok() {
                    relay.probe_sent = Some(now);
                }
            }
        }
    }

    /// A datagram from the peer of `session` through the signaling server: sealed like any.
    pub(super) fn handle_relay_frame(&mut self, now: Instant, session: SessionId, data: &[u8]) {
        if !self.by_session.contains_key(&session) || !self.deliver(now, data, None) {
            self.counters.stray += 1;
        }
    }

    /// The peer probed the relay over signaling: echo, at most once per [`ECHO_EVERY`].
    pub(super) fn echo(&mut self, now: Instant, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (Some(session), Some(keys)) = (conn.session, &mut conn.keys) else {
            return;
        };
        if conn.last_echo.is_some_and(|t| now < t + ECHO_EVERY) {
            self.counters.echoes_refused += 1;
            return;
        }
        conn.last_echo = Some(now);
        let echo = keys.seal(Sealed::Echo, &[]);
        let _ = self.client.relay(session, &echo);
    }

    /// Our probe came back: the relay over signaling works (the echo opened with the session's
    /// keys, so the peer is who it says).
    pub(super) fn echoed(&mut self, now: Instant, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(relay) = &mut conn.signal_relay else {
            return;
        };
        let Some(sent) = relay.probe_sent.take() else {
            return;
        };
        let rtt = now.saturating_duration_since(sent);
        relay.rtt = Some(rtt);
        if !conn.connected() {
            self.path_selected(id, UNSPECIFIED, UNSPECIFIED, rtt, Via::Signaling);
        }
    }
}
