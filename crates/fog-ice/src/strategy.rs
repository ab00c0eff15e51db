//! The pairing strategy: what this side does to reach the peer, chosen from both sides' NAT
//! behaviour.
//!
//! Both peers learn both behaviours over signaling (each offer and answer carries its sender's
//! discovered behaviour) and call [`Plan::new`] with the same order of sides (the offerer is
//! [`Who::A`]), so they agree on one [`Route`] from [`fog_core::pairing`] — the rules the simulator
//! checks the stack against — and each carries out its half of it.
//!
//! What a route asks of a side, in the terms of [`Route::Anchored`] (the stable side S anchors
//! the path on its endpoint `s` toward the other side O's IP; `o` is O's endpoint toward `s`):
//!
//! | route piece | S does | O does |
//! |---|---|---|
//! | O learns `s`: free | checks O's srflx | checks S's srflx, answers what reaches it |
//! | O learns `s`: predicted (S is ADM) | advertises its next port; first new flow to O's IP | aims exactly at S's prediction |
//! | O learns `s`: taught | answers what reaches its srflx | checks S's srflx first |
//! | O learns `s`: O predicted | aims at a window of O's predictions | advertises its next port; first new flow to S's IP |
//! | O learns `s`: birthday | sprays O's IP from `s` | opens many sockets toward S's srflx |
//! | S learns `o`: free | answers what reaches it | checks `s` |
//! | S learns `o`: predicted | aims at a window of O's predictions | advertises its next port; first new flow to `s` |
//! | S learns `o`: birthday | sprays O's IP from `s` | opens many sockets toward `s` |
//!
//! [`Route::Mutual`]: each side advertises its next port and sends exactly one flow, to the
//! other's prediction, and nothing else (NAT-NOTES: every stray probe burns a mapping and moves
//! the port the peer aims at).
//!
//! A stable side may probe a window of the peer's predicted ports: its own endpoint does not
//! move when it does. A side whose own next port is a prediction must not open any other new
//! flow first ([`Plan::single_flow`]).

use std::time::Duration;

use fog_core::nat::{Behaviour, Mapping, PortPattern};
use fog_core::pairing::{LearnAnchor, LearnOther, Outcome, ProbeBudget, Route, Who, pairing};

/// Tunables of the strategy, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyConfig {
    /// The birthday round's size: sockets the random side opens, probes the other side sends
    /// (default k = 256, n = 1024 over 64,512 ports: about 98 %).
    pub budget: ProbeBudget,
    /// Pace of the birthday spray (default 500 probes per second, so 1024 probes take about 2 s).
    pub spray_rate: u32,
    /// Predicted ports a stable side aims at beyond the first (default 2: `p`, `p+Δ`, `p+2Δ`),
    /// which absorbs a port or two taken by other hosts behind the peer's NAT.
    pub prediction_window: u16,
    /// Time to keep punching before relying on the relay alone (default 5 s).
    pub punch_for: Duration,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            budget: ProbeBudget::default(),
            spray_rate: 500,
            prediction_window: 2,
            punch_for: Duration::from_secs(5),
        }
    }
}

/// What this side predicts about its own next mapping, to advertise as a `predicted` candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPrediction {
    /// The next new mapping of the main socket is the last one seen plus `delta`.
    NextPort {
        /// The NAT's step between consecutive mappings.
        delta: i32,
    },
    /// A port-preserving symmetric NAT: punch from a fresh socket, whose local port the NAT
    /// keeps as its external one.
    FreshSocket,
}

/// This side's part in a birthday round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Birthday {
    /// Open this many sockets, each sending to the peer's endpoint, so that many of our NAT's
    /// ports admit the peer.
    Open {
        /// k.
        sockets: u32,
    },
    /// Send this many probes to random ports of the peer's IP, at `rate` per second.
    Spray {
        /// n.
        probes: u32,
        /// Probes per second.
        rate: u32,
    },
}

/// This side's half of the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What a correct stack achieves for this pair, and how ([`fog_core::pairing`]).
    pub outcome: Outcome,
    /// The route, when the outcome is direct.
    pub route: Option<Route>,
    /// Which side of [`pairing`] this is.
    pub me: Who,
    /// Check the peer's server-reflexive candidates.
    pub to_srflx: bool,
    /// How many of the peer's predicted candidates to check: 0 none, 1 exactly the prediction,
    /// more a window.
    pub to_predicted: u16,
    /// Advertise a prediction of our own next port.
    pub predict_own: Option<OwnPrediction>,
    /// Open no new flow but the one the route names (see the module docs): our own next port is
    /// a prediction the peer aims at.
    pub single_flow: bool,
    /// Our NAT maps by destination IP only (ADM, RFC 4787 §4.1): all ports of one IP are one
    /// flow for [`single_flow`](Self::single_flow), so a window of the peer's ports costs
    /// nothing.
    pub flow_by_ip: bool,
    /// Our endpoint toward the peer is one the peer knows before any datagram passes: our
    /// srflx (our mapping is endpoint-independent) or our advertised prediction. Then our NAT
    /// only needs opening (a low-TTL check does it) and the peer's checks come through; when it
    /// is false the peer can learn our endpoint only from a datagram of ours that reaches it.
    pub known_endpoint: bool,
    /// Our part in a birthday round.
    pub birthday: Option<Birthday>,
    /// Keep punching this long, then rely on the relay.
    pub punch_for: Duration,
    /// Direct paths are off ([`Plan::relay_only`]).
    pub relay_only: bool,
}

impl Plan {
    /// The plan for side `me`, where `a` is the offerer's behaviour and `b` the answerer's.
    pub fn new(a: Behaviour, b: Behaviour, me: Who, config: &StrategyConfig) -> Plan {
        let decided = pairing(a, b, &config.budget);
        let mine = match me {
            Who::A => a,
            Who::B => b,
        };
        let mut plan = Plan {
            outcome: decided.outcome,
            route: decided.route,
            me,
            to_srflx: false,
            to_predicted: 0,
            predict_own: None,
            single_flow: false,
            flow_by_ip: matches!(
                mine,
                Behaviour::Nat {
                    mapping: Mapping::AddressDependent,
                    ..
                }
            ),
            known_endpoint: is_eim(mine),
            birthday: None,
            punch_for: config.punch_for,
            relay_only: false,
        };
        let window = 1 + config.prediction_window;
        let spray = Birthday::Spray {
            probes: config.budget.probes,
            rate: config.spray_rate.max(1),
        };
        let open = Birthday::Open {
            sockets: config.budget.sockets,
        };
        match decided.route {
            None => {}
            Some(Route::Mutual) => {
                plan.to_predicted = 1;
                plan.predict_own = own_prediction(mine);
                plan.single_flow = true;
            }
            Some(Route::Anchored {
                stable,
                learn_anchor,
                learn_other,
            }) if stable == me => {
                plan.to_srflx = true;
                match learn_anchor {
                    LearnAnchor::Free | LearnAnchor::Taught => {}
                    LearnAnchor::Predicted => {
                        plan.predict_own = own_prediction(mine);
                        plan.single_flow = true;
                    }
                    LearnAnchor::OtherPredicted => plan.to_predicted = window,
                    LearnAnchor::Birthday => plan.birthday = Some(spray),
                }
                match learn_other {
                    LearnOther::Free => {}
                    LearnOther::Predicted => plan.to_predicted = window,
                    LearnOther::Birthday => plan.birthday = Some(spray),
                }
            }
            Some(Route::Anchored {
                stable,
                learn_anchor,
                learn_other,
            }) => {
                let predicts_own = learn_other == LearnOther::Predicted
                    || learn_anchor == LearnAnchor::OtherPredicted;
                let stable_is_eim = match stable {
                    Who::A => is_eim(a),
                    Who::B => is_eim(b),
                };
                // Our single flow must go to `s`: S's srflx when S is EIM, else S's prediction
                // (below) or the address S's first datagram comes from.
                plan.to_srflx = !predicts_own
                    || stable_is_eim
                    || matches!(
                        learn_anchor,
                        LearnAnchor::OtherPredicted | LearnAnchor::Taught
                    );
                match learn_anchor {
                    LearnAnchor::Free | LearnAnchor::Taught | LearnAnchor::OtherPredicted => {}
                    // Exactly the prediction when our own port is predicted too: a window would
                    // open flows that burn our mapping.
                    LearnAnchor::Predicted => {
                        plan.to_predicted = if predicts_own { 1 } else { window }
                    }
                    LearnAnchor::Birthday => plan.birthday = Some(open),
                }
                match learn_other {
                    LearnOther::Free => {}
                    LearnOther::Predicted => {}
                    LearnOther::Birthday => plan.birthday = Some(open),
                }
                if predicts_own {
                    plan.predict_own = own_prediction(mine);
                    plan.single_flow = true;
                }
            }
        }
        plan.known_endpoint |= plan.predict_own.is_some();
        plan
    }

    /// Whether the route leads to a direct path (with certainty or with the birthday odds),
    /// and direct paths are allowed.
    pub fn is_direct(&self) -> bool {
        self.outcome.is_direct() && !self.relay_only
    }

    /// The same plan with every direct action off: the connection goes through a relay only
    /// (an application that does not want its address known to the peer, or a test that
    /// forces the relay).
    pub fn relay_only(mut self) -> Plan {
        self.relay_only = true;
        self.to_srflx = false;
        self.to_predicted = 0;
        self.predict_own = None;
        self.single_flow = false;
        self.birthday = None;
        self
    }
}

/// The behaviour to plan with for a side that does (`mapped`) or does not offer a verified
/// port mapping ([`Kind::Mapped`](crate::candidate::Kind::Mapped)).
///
/// A router that forwards an external port to the side's base socket admits anyone there, and
/// the answers to what comes in leave from that same external port (they are the reverse
/// direction of the forwarded flow): toward a peer that sends first, the side is an open host
/// at its mapped address, whatever its NAT does to flows it starts. So the pair is planned as
/// if the side were [`Behaviour::Open`]: [`pairing`] anchors the path on it, the peer sends
/// to the mapped address from whatever endpoint its NAT gives it, and the mapped side learns
/// that endpoint as peer-reflexive. A random-port symmetric NAT with a mapping against another
/// one therefore goes direct, where without it only the relay can carry the pair. A side
/// without UDP stays blocked.
pub fn with_mapping(behaviour: Behaviour, mapped: bool) -> Behaviour {
    if mapped && behaviour != Behaviour::UdpBlocked {
        Behaviour::Open
    } else {
        behaviour
    }
}

/// Whether the side's srflx is its endpoint toward everyone.
fn is_eim(behaviour: Behaviour) -> bool {
    behaviour.mapping() == Some(Mapping::EndpointIndependent)
}

/// What a side whose new ports follow a pattern advertises about its next one. An EIM side has
/// nothing to predict (its srflx is its endpoint); a random one cannot.
fn own_prediction(behaviour: Behaviour) -> Option<OwnPrediction> {
    match behaviour {
        Behaviour::Nat {
            mapping: Mapping::EndpointIndependent,
            ..
        } => None,
        Behaviour::Nat {
            ports: PortPattern::Sequential { delta },
            ..
        } => Some(OwnPrediction::NextPort { delta }),
        Behaviour::Nat {
            ports: PortPattern::Preserved,
            ..
        } => Some(OwnPrediction::FreshSocket),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fog_core::nat::Filtering;
    use fog_core::pairing::Method;

    use super::*;

    const EIM: Mapping = Mapping::EndpointIndependent;
    const APDM: Mapping = Mapping::AddressAndPortDependent;
    const APDF: Filtering = Filtering::AddressAndPortDependent;
    const EIF: Filtering = Filtering::EndpointIndependent;
    const SEQ: PortPattern = PortPattern::Sequential { delta: 1 };

    fn plans(a: Behaviour, b: Behaviour) -> (Plan, Plan) {
        let config = StrategyConfig::default();
        (
            Plan::new(a, b, Who::A, &config),
            Plan::new(a, b, Who::B, &config),
        )
    }

    #[test]
    fn cone_with_cone_checks_srflx_only() {
        let cone = Behaviour::nat(EIM, APDF, PortPattern::Preserved);
        let (a, b) = plans(cone, cone);
        assert_eq!(a.outcome, Outcome::Direct(Method::Plain));
        for p in [&a, &b] {
            assert!(p.to_srflx && p.to_predicted == 0 && p.birthday.is_none());
            assert!(p.predict_own.is_none() && !p.single_flow);
        }
    }

    #[test]
    fn port_restricted_with_sequential_predicts_the_symmetric_side() {
        let cone = Behaviour::nat(EIM, APDF, PortPattern::Preserved);
        let seq = Behaviour::nat(APDM, APDF, SEQ);
        let (a, b) = plans(cone, seq);
        // The cone anchors, aims at a window of the symmetric side's predictions.
        assert_eq!(a.to_predicted, 3);
        assert!(a.predict_own.is_none() && !a.single_flow);
        // The symmetric side advertises its next port and opens only the flow to the cone.
        assert_eq!(b.predict_own, Some(OwnPrediction::NextPort { delta: 1 }));
        assert!(b.single_flow && b.to_srflx);
    }

    #[test]
    fn port_restricted_with_random_is_a_birthday() {
        let cone = Behaviour::nat(EIM, APDF, PortPattern::Preserved);
        let random = Behaviour::nat(APDM, APDF, PortPattern::Random);
        let (a, b) = plans(random, cone);
        assert_eq!(a.birthday, Some(Birthday::Open { sockets: 256 }));
        assert_eq!(
            b.birthday,
            Some(Birthday::Spray {
                probes: 1024,
                rate: 500
            })
        );
        assert!(a.predict_own.is_none() && !a.single_flow);
    }

    #[test]
    fn sequential_with_sequential_is_one_exact_flow_each() {
        let seq = Behaviour::nat(APDM, APDF, SEQ);
        let (a, b) = plans(seq, seq);
        assert_eq!(a.route, Some(Route::Mutual));
        for p in [&a, &b] {
            assert_eq!(p.to_predicted, 1);
            assert!(!p.to_srflx && p.single_flow);
            assert_eq!(p.predict_own, Some(OwnPrediction::NextPort { delta: 1 }));
        }
    }

    #[test]
    fn full_cone_with_random_needs_nothing_special() {
        let full = Behaviour::nat(EIM, EIF, PortPattern::Preserved);
        let random = Behaviour::nat(APDM, APDF, PortPattern::Random);
        let (a, b) = plans(full, random);
        assert_eq!(a.outcome, Outcome::Direct(Method::PeerReflexive));
        for p in [&a, &b] {
            assert!(p.to_srflx && p.birthday.is_none() && !p.single_flow);
        }
    }

    #[test]
    fn relay_pairs_do_nothing_direct() {
        let random = Behaviour::nat(APDM, APDF, PortPattern::Random);
        let (a, b) = plans(random, random);
        for p in [&a, &b] {
            assert!(!p.is_direct());
            assert!(!p.to_srflx && p.to_predicted == 0 && p.birthday.is_none());
        }
        let (a, _) = plans(Behaviour::UdpBlocked, Behaviour::Open);
        assert!(!a.is_direct());
    }

    #[test]
    fn a_verified_mapping_makes_random_with_random_direct() {
        let random = Behaviour::nat(APDM, APDF, PortPattern::Random);
        assert_eq!(with_mapping(random, false), random);
        assert_eq!(
            with_mapping(Behaviour::UdpBlocked, true),
            Behaviour::UdpBlocked
        );
        for (a_mapped, b_mapped) in [(true, false), (false, true), (true, true)] {
            let (a, b) = plans(
                with_mapping(random, a_mapped),
                with_mapping(random, b_mapped),
            );
            assert!(a.is_direct() && b.is_direct(), "{a_mapped} {b_mapped}");
            for p in [&a, &b] {
                assert!(p.birthday.is_none() && !p.single_flow && p.predict_own.is_none());
            }
        }
    }

    /// Every direct route gives each side something to send, and a birthday to both or neither.
    #[test]
    fn every_direct_plan_sends() {
        let mut all = vec![Behaviour::Open];
        for mapping in [EIM, Mapping::AddressDependent, APDM] {
            for filtering in [EIF, Filtering::AddressDependent, APDF] {
                for ports in [PortPattern::Preserved, SEQ, PortPattern::Random] {
                    all.push(Behaviour::nat(mapping, filtering, ports));
                }
            }
        }
        for &x in &all {
            for &y in &all {
                let (a, b) = plans(x, y);
                if !a.is_direct() {
                    continue;
                }
                for p in [&a, &b] {
                    // A side may only answer: it waits for the stable side's first datagram,
                    // which its srflx binding admits, and answers it as its one flow.
                    let answers_only = matches!(
                        p.route,
                        Some(Route::Anchored {
                            stable,
                            learn_anchor: LearnAnchor::Free,
                            ..
                        }) if stable != p.me
                    ) && p.single_flow;
                    assert!(
                        p.to_srflx || p.to_predicted > 0 || p.birthday.is_some() || answers_only,
                        "{x} vs {y}: {p:?}"
                    );
                }
                assert_eq!(
                    a.birthday.is_some(),
                    b.birthday.is_some(),
                    "{x} vs {y}: {a:?} {b:?}"
                );
                // A side that predicts its own port probes a window only when its NAT maps by
                // IP alone.
                for p in [&a, &b] {
                    if p.single_flow && !p.flow_by_ip {
                        assert!(p.to_predicted <= 1, "{x} vs {y}: {p:?}");
                    }
                }
            }
        }
    }
}
