//! The pairing oracle: for two NAT behaviours, what a correct peer-to-peer stack must achieve over
//! UDP, and by which route.
//!
//! For every pair of [`Behaviour`]s, [`oracle`] says whether a direct path must come up, by which
//! method, and with what probability, or why only the relay can carry the traffic; [`pairing`]
//! adds the [`Route`]: which side anchors the path and how each side comes to know the other's
//! endpoint. fog-ice's punching strategy carries the route out, and fog-sim's NAT matrix checks
//! what the stack achieves against the outcome. Both sides of a connection compute the same
//! route from the two behaviours they exchanged over signaling.
//!
//! # The model
//!
//! Side A and side B are each one host behind its own [`Behaviour`] (the outermost effective one,
//! see [`Behaviour::behind`]). Both reach a rendezvous/STUN server and a relay on the open
//! internet, so each knows its server-reflexive address (srflx) and the peer's, and both start
//! punching at an agreed instant. Each NAT keeps one external IP address for its host (RFC 4787
//! §4.1, REQ-2, "paired" pooling), which the simulator does too.
//!
//! A **direct path** is a pair of external endpoints `(a, b)` such that A's datagrams to `b` leave
//! A's NAT from `a` and B's datagrams to `a` leave B's NAT from `b`: each side sends to the address
//! its peer's datagrams come from. ICE fails a check whose response does not come back symmetric
//! (RFC 8445 §7.2.5.2.1), and a transport's path is one 4-tuple. Once both sides send on such a
//! pair, every filter admits it (each binding has sent to exactly the other endpoint), so the
//! whole question is whether each side can come to *know* the other's endpoint of some pair. A
//! pair of asymmetric one-way paths (possible between two address-and-port-dependent NATs that
//! admit unknown ports) does not count.
//!
//! A correct stack has this toolbox, and no more is promised:
//! - **srflx exchange** through the rendezvous;
//! - **peer-reflexive learning**: the source of a datagram that got through becomes a candidate and
//!   is answered;
//! - **port prediction** for a NAT whose new ports follow a pattern: the local port of a fresh
//!   socket for a port-preserving NAT, srflx + Δ (then + 2Δ, ...) for a sequential one;
//! - **one birthday round** ([`ProbeBudget`]): the side with random ports opens `k` sockets to the
//!   other's known endpoint, and the other, whose endpoint stays fixed while it does so, sends `n`
//!   probes to random ports.
//!
//! Not modelled: binding timeouts, other hosts behind the same NAT taking predicted ports, the
//! Linux "inbound leaves state" quirk (which can deadlock even cone-to-cone punching; see the
//! simulator's `NatConfig::inbound_leaves_state`), binding caps, and hairpinning (the two sides
//! are behind different NATs, so `hairpinning` never matters here).
//!
//! # What decides the outcome
//!
//! Four properties of each side, derived from RFC 4787's mapping (§4.1), filtering (§5) and port
//! assignment (§4.2.1); [`Behaviour::Open`] is EIM+EIF and [`Behaviour::Firewall`] is EIM with its
//! filtering, since the host's own address is its external endpoint:
//! - *stable*: the mapping is endpoint-independent (EIM) or address-dependent (ADM), so one
//!   socket has one external endpoint toward every port of the peer's IP. Such a side can probe
//!   many ports of the peer, and answer a newly learnt port, without moving its own endpoint.
//!   An address-and-port-dependent (APDM) side gets a new endpoint for every new destination.
//! - *admits any port*: filtering is endpoint-independent (EIF) or address-dependent (ADF). A
//!   binding that has sent anything to the peer's IP then admits every port of that IP, because the
//!   peer's NAT keeps one external IP. In simultaneous punching each side has sent to the peer's
//!   IP, so ADF acts like EIF on those bindings.
//! - *srflx admits the peer*: the binding the STUN server saw lets in datagrams from any of the
//!   peer's endpoints: true for EIF, and for EIM+ADF (the one EIM binding has sent to the peer's
//!   IP). A symmetric ADF or APDF side drops them: its srflx binding only ever talked to the STUN
//!   server.
//! - *predictable*: EIM (the srflx is the endpoint), or a new port that follows a pattern
//!   (preserved or sequential). A random-port symmetric side is not.
//!
//! The rules, best method first, are in [`oracle`] and next to the private functions below.

use std::fmt;

use crate::nat::{Behaviour, Filtering, Mapping, PortPattern};

/// How much a birthday-paradox search may spend (Tailscale, "How NAT traversal works", 2020).
///
/// The side behind random-port NAT opens [`sockets`](Self::sockets) sockets that all send to the
/// other side's endpoint, so `k` of the [`port_range`](Self::port_range) ports are open toward it;
/// the other side sends [`probes`](Self::probes) datagrams to random ports. One probe hits with
/// chance `k / range`, so the search succeeds with `P = 1 − (1 − k/range)^n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeBudget {
    /// `k`: sockets the random-port side opens toward the peer.
    pub sockets: u32,
    /// `n`: probes the other side sends to random ports.
    pub probes: u32,
    /// Number of ports the random-port NAT picks from.
    pub port_range: u32,
}

impl Default for ProbeBudget {
    /// `k = 256`, `n = 1024` over the 64,512 ports from 1024 to 65535: about 98 % (Tailscale, 2020).
    fn default() -> Self {
        Self {
            sockets: 256,
            probes: 1024,
            port_range: 65_535 - 1024 + 1,
        }
    }
}

impl ProbeBudget {
    /// `1 − (1 − k/range)^n`, in `[0, 1]`: 0 when any of the three is zero, 1 when `k ≥ range`.
    pub fn birthday_probability(&self) -> f64 {
        if self.sockets == 0 || self.probes == 0 || self.port_range == 0 {
            return 0.0;
        }
        if self.sockets >= self.port_range {
            return 1.0;
        }
        let hit = f64::from(self.sockets) / f64::from(self.port_range);
        // 1 − e^(n·ln(1 − q)), computed with ln_1p/exp_m1 to stay exact for small q.
        -(f64::from(self.probes) * (-hit).ln_1p()).exp_m1()
    }
}

/// What a correct stack must achieve between two behaviours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A direct UDP path, found by this method.
    Direct(Method),
    /// Only the relay carries the traffic.
    Relay(RelayReason),
}

/// How the direct path is found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Both sides send to each other's server-reflexive address: both mappings are
    /// endpoint-independent, so the srflx is each side's endpoint toward the peer too.
    Plain,
    /// One side's filter admits the peer's unknown new port; it learns that peer-reflexive
    /// address and answers it from an endpoint that does not change, which the peer's binding
    /// has already sent to.
    PeerReflexive,
    /// At least one side's new port has to be predicted (the local port of a fresh socket behind
    /// a port-preserving NAT, srflx + Δ behind a sequential one). Certain when nothing disturbs
    /// the NAT's port allocation.
    Predicted {
        /// Both sides' ports are predictions. Neither side learns anything until its prediction is
        /// right, and behind an APDM NAT every wrong guess burns a mapping and moves the port the
        /// peer aims at, so another host taking a port breaks it: fragile (NAT-NOTES, "each side
        /// targets exactly +Δ"). When `false`, the side doing the predicting keeps one endpoint
        /// toward the peer and can probe a window of candidates to absorb small disturbances.
        mutual: bool,
    },
    /// One birthday round (see [`ProbeBudget`]); may come on top of a prediction.
    Birthday {
        /// `1 − (1 − k/range)^n` for the budget given to [`oracle`].
        probability: f64,
    },
}

/// Why only the relay works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayReason {
    /// One side cannot send or receive UDP at all.
    UdpBlocked,
    /// Both sides' new ports are random and neither side can learn the other's: finding a pair
    /// would need about `range / n` sockets per side or several birthday rounds (NAT-NOTES: about
    /// 170,000 probes).
    BothRandom,
    /// One side's new ports are random and the other's, though predictable, move with every new
    /// destination port (APDM) or are not admitted without an exact match: the predictable side
    /// cannot probe for the random one without burning its own prediction.
    PredictableWithRandom,
    /// A birthday round would be needed but the budget has no sockets, no probes or no ports.
    NoProbes,
}

impl Outcome {
    /// Whether the oracle expects a direct path (possibly with a probability below 1).
    pub fn is_direct(&self) -> bool {
        matches!(self, Outcome::Direct(_))
    }

    /// Chance that a correct stack finds the direct path: 1 for plain, peer-reflexive and
    /// predicted, the budget's birthday probability, 0 for the relay.
    pub fn success_probability(&self) -> f64 {
        match self {
            Outcome::Direct(Method::Birthday { probability }) => *probability,
            Outcome::Direct(_) => 1.0,
            Outcome::Relay(_) => 0.0,
        }
    }
}

/// What a correct stack must achieve over UDP between side `a` and side `b`; symmetric in them.
///
/// The rules, from first principles (module docs give the model and the four properties):
/// 1. Either side [`UdpBlocked`](Behaviour::UdpBlocked): relay.
/// 2. Both EIM (open, firewall, cone NATs): **plain**. Each srflx is that side's endpoint toward
///    everyone, both send to it, and once both have sent every filter admits the other.
/// 3. A *stable* side S (EIM or ADM), whose endpoint `s` toward the peer O is one for all of O's
///    ports: O sends to `s` from whatever endpoint `o` its NAT gives it, and the pair `(s, o)` is a
///    path. It takes two things, each free, predicted or guessed (the private `via_stable` lists
///    every way): O learning `s`, then S learning `o`. The cheapest combination wins; both free is
///    **peer-reflexive** (e.g. EIM+EIF/ADF against anything), any prediction is **predicted**,
///    a guess is **birthday**.
/// 4. Both predictable and not EIM: each side aims its first new mapping at the other's
///    prediction: **predicted, mutual** (NAT-NOTES' sequential-with-sequential, fragile).
/// 5. Nothing applies: relay, because of random ports on one side
///    ([`RelayReason::PredictableWithRandom`]) or both ([`RelayReason::BothRandom`]). Rules 3 and 4
///    cover every pair without a random-port symmetric side, and every pair with an EIM side.
///
/// A birthday outcome whose probability is 0 for `budget` is [`RelayReason::NoProbes`].
pub fn oracle(a: Behaviour, b: Behaviour, budget: &ProbeBudget) -> Outcome {
    pairing(a, b, budget).outcome
}

/// [`oracle`]'s outcome with the route that achieves it.
///
/// The outcome is symmetric in `a` and `b`; the route is the mirror image when the sides are
/// swapped, except where two routes tie, where the one anchored on `a` wins. The two peers of a
/// connection therefore call this with the same order (offerer first) to agree on a route.
pub fn pairing(a: Behaviour, b: Behaviour, budget: &ProbeBudget) -> Pairing {
    let relay = |reason| Pairing {
        outcome: Outcome::Relay(reason),
        route: None,
    };
    let (Some(sa), Some(sb)) = (Traits::of(a), Traits::of(b)) else {
        return relay(RelayReason::UdpBlocked);
    };
    let both_eim = sa.eim() && sb.eim();
    let anchored = |stable: Who, x: Traits, y: Traits| {
        via_stable(x, y).map(|(plan, learn_anchor, learn_other)| {
            let route = Route::Anchored {
                stable,
                learn_anchor,
                learn_other,
            };
            (plan, route)
        })
    };
    let best = [
        anchored(Who::A, sa, sb),
        anchored(Who::B, sb, sa),
        mutual_prediction(sa, sb).map(|plan| (plan, Route::Mutual)),
    ]
    .into_iter()
    .flatten()
    .map(|(plan, route)| (plan.method(both_eim, budget), route))
    .min_by_key(|(method, _)| method.rank());
    match best {
        Some((Method::Birthday { probability }, _)) if probability <= 0.0 => {
            relay(RelayReason::NoProbes)
        }
        Some((method, route)) => Pairing {
            outcome: Outcome::Direct(method),
            route: Some(route),
        },
        None if sa.random() && sb.random() => relay(RelayReason::BothRandom),
        // Rules 3 and 4 leave only pairs with at least one random-port symmetric side.
        None => relay(RelayReason::PredictableWithRandom),
    }
}

/// What [`pairing`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pairing {
    /// What a correct stack must achieve.
    pub outcome: Outcome,
    /// How, when the outcome is direct; `None` for the relay.
    pub route: Option<Route>,
}

/// One of the two sides given to [`pairing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    /// The first argument.
    A,
    /// The second argument.
    B,
}

impl Who {
    /// The other side.
    pub fn other(self) -> Who {
        match self {
            Who::A => Who::B,
            Who::B => Who::A,
        }
    }
}

/// The way to a direct path that [`pairing`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Rule 3: the path is anchored on the endpoint `s` of the `stable` side (EIM or ADM) toward
    /// the other side's IP; the other side's endpoint `o` is whatever its NAT gives it toward
    /// `s`.
    Anchored {
        /// The side whose endpoint anchors the path.
        stable: Who,
        /// How the other side comes to know `s`.
        learn_anchor: LearnAnchor,
        /// How the stable side comes to know `o`.
        learn_other: LearnOther,
    },
    /// Rule 4: both sides are symmetric with a port pattern; each sends exactly one flow, to the
    /// other's predicted next port, from its own predicted next port.
    Mutual,
}

/// How the non-anchor side comes to know the anchor endpoint `s` (see [`Route::Anchored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LearnAnchor {
    /// The stable side is EIM (`s` is its server-reflexive address), or the other side's srflx
    /// binding admits the stable side's datagram from `s`, which it then learns as
    /// peer-reflexive.
    Free,
    /// The stable side is ADM with a port pattern: `s` is its predicted next port, which it
    /// advertises.
    Predicted,
    /// The stable side's srflx binding admits anyone: the other side sends to it from a new
    /// binding `e` (which admits any port of the stable side's IP), the stable side learns `e`
    /// and answers from `s`.
    Taught,
    /// The other side has a port pattern and its new bindings admit any port of the stable
    /// side's IP: it sends toward the stable side's IP first, from its advertised predicted port
    /// `e`, and the stable side aims at `e` from `s`.
    OtherPredicted,
    /// A birthday round: the other side (random ports) opens many sockets toward the stable
    /// side's srflx, and the stable side sprays random ports of the other side's IP from `s`.
    Birthday,
}

/// How the anchor side comes to know the other side's endpoint `o` (see [`Route::Anchored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LearnOther {
    /// The other side is EIM (`o` is its srflx), the anchor's filter admits any port of the
    /// other side's IP, or an ADM other side answers from the binding it already made toward the
    /// anchor: the anchor learns `o` as peer-reflexive.
    Free,
    /// The other side advertises its predicted next port and the anchor aims at it.
    Predicted,
    /// A birthday round: the other side opens many sockets toward `s`, the anchor sprays.
    Birthday,
}

impl Method {
    /// Preference order, best first; every birthday in one oracle call has the same probability.
    fn rank(&self) -> u8 {
        match self {
            Method::Plain => 0,
            Method::PeerReflexive => 1,
            Method::Predicted { mutual: false } => 2,
            Method::Predicted { mutual: true } => 3,
            Method::Birthday { .. } => 4,
        }
    }
}

impl fmt::Display for Outcome {
    /// A short label, as in the cells of fog-sim's oracle tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Direct(method) => method.fmt(f),
            Outcome::Relay(reason) => write!(f, "relay ({reason})"),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Plain => f.write_str("plain"),
            Method::PeerReflexive => f.write_str("prflx"),
            Method::Predicted { mutual: false } => f.write_str("predict"),
            Method::Predicted { mutual: true } => f.write_str("predict both"),
            Method::Birthday { probability } => write!(f, "birthday {:.0}%", probability * 100.0),
        }
    }
}

impl fmt::Display for RelayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayReason::UdpBlocked => "no UDP",
            RelayReason::BothRandom => "both random",
            RelayReason::PredictableWithRandom => "one random",
            RelayReason::NoProbes => "no probes",
        })
    }
}

/// One side, reduced to what decides connectivity.
#[derive(Debug, Clone, Copy)]
struct Traits {
    mapping: Mapping,
    filtering: Filtering,
    ports: PortPattern,
}

impl Traits {
    /// `None` when UDP is blocked. Open is EIM+EIF and a firewall is EIM with its filtering: the
    /// host's own address is the external endpoint toward everyone.
    fn of(behaviour: Behaviour) -> Option<Traits> {
        let eim = Mapping::EndpointIndependent;
        match behaviour {
            Behaviour::UdpBlocked => None,
            Behaviour::Open => Some(Traits {
                mapping: eim,
                filtering: Filtering::EndpointIndependent,
                ports: PortPattern::Preserved,
            }),
            Behaviour::Firewall { filtering } => Some(Traits {
                mapping: eim,
                filtering,
                ports: PortPattern::Preserved,
            }),
            Behaviour::Nat {
                mapping,
                filtering,
                ports,
                hairpinning: _,
            } => Some(Traits {
                mapping,
                filtering,
                ports,
            }),
        }
    }

    fn eim(&self) -> bool {
        self.mapping == Mapping::EndpointIndependent
    }

    /// One external endpoint toward every port of the peer's IP (EIM, or ADM: RFC 4787 §4.1).
    fn stable(&self) -> bool {
        self.mapping != Mapping::AddressAndPortDependent
    }

    /// A binding that has sent to the peer's IP admits any port of it (EIF, ADF: RFC 4787 §5).
    fn admits_any_port(&self) -> bool {
        self.filtering != Filtering::AddressAndPortDependent
    }

    /// The binding the STUN server saw admits the peer: EIF, or EIM+ADF, whose single binding
    /// sends to the peer's srflx and so to the peer's IP.
    fn srflx_admits_peer(&self) -> bool {
        self.filtering == Filtering::EndpointIndependent
            || (self.eim() && self.filtering == Filtering::AddressDependent)
    }

    /// The peer can know this side's endpoint toward it before any datagram passes.
    fn predictable(&self) -> bool {
        self.eim() || self.ports != PortPattern::Random
    }

    /// A symmetric NAT with random ports: nothing about its next mapping can be known.
    fn random(&self) -> bool {
        !self.predictable()
    }
}

/// What a way to a direct path relies on.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    /// Side A's new port is a prediction B aims at.
    predicted_a: bool,
    /// Side B's new port is a prediction A aims at.
    predicted_b: bool,
    /// A birthday round is needed.
    birthday: bool,
}

impl Plan {
    fn method(self, both_eim: bool, budget: &ProbeBudget) -> Method {
        if self.birthday {
            Method::Birthday {
                probability: budget.birthday_probability(),
            }
        } else if self.predicted_a || self.predicted_b {
            Method::Predicted {
                mutual: self.predicted_a && self.predicted_b,
            }
        } else if both_eim {
            Method::Plain
        } else {
            Method::PeerReflexive
        }
    }
}

/// Rule 3: a path `(a, b)` anchored on A's stable endpoint `a`, with `b` B's mapping toward `a`.
///
/// Step one, B learns `a`: every applicable [`LearnAnchor`]. Step two, A learns `b`:
/// - free when B is EIM (`b` is B's srflx);
/// - free when A admits any port: B sends to `a` from `b`, and `a` has sent to B's IP;
/// - free when B is ADM and learnt `a` on a binding `e` it made toward A's IP (`LearntB`,
///   `PredictB`, `GuessB`): B answers `a` from `e` again, which A has just sent to;
/// - otherwise B's next port is predicted when B is predictable;
/// - otherwise a birthday round: B opens `k` sockets to `a`, A sprays from `a`. Not when step
///   one already was a birthday: two rounds are not in the toolbox (the product of two odds
///   and twice the probes; the relay is the better answer).
///
/// The cheapest combination is kept.
fn via_stable(a: Traits, b: Traits) -> Option<(Plan, LearnAnchor, LearnOther)> {
    if !a.stable() {
        return None;
    }
    // Only a symmetric B makes bindings toward A's IP apart from its srflx (an EIM B's one
    // binding is its srflx, covered by `Free`).
    let b_binding_admits_a = !b.eim() && b.admits_any_port();
    let ways = [
        (a.eim() || b.srflx_admits_peer(), LearnAnchor::Free),
        (a.predictable(), LearnAnchor::Predicted),
        (
            b_binding_admits_a && a.srflx_admits_peer(),
            LearnAnchor::Taught,
        ),
        (
            b_binding_admits_a && b.predictable(),
            LearnAnchor::OtherPredicted,
        ),
        (b_binding_admits_a, LearnAnchor::Birthday),
    ];
    ways.into_iter()
        .filter(|&(applies, _)| applies)
        .filter_map(|(_, way)| {
            let mut plan = Plan::default();
            let mut b_bound_toward_a = false;
            match way {
                LearnAnchor::Free => {}
                LearnAnchor::Predicted => plan.predicted_a = true,
                LearnAnchor::Taught => b_bound_toward_a = true,
                LearnAnchor::OtherPredicted => {
                    plan.predicted_b = true;
                    b_bound_toward_a = true;
                }
                LearnAnchor::Birthday => {
                    plan.birthday = true;
                    b_bound_toward_a = true;
                }
            }
            let answers_from_known_binding =
                b_bound_toward_a && b.mapping == Mapping::AddressDependent;
            let learn_other = if b.eim() || a.admits_any_port() || answers_from_known_binding {
                LearnOther::Free
            } else if b.predictable() {
                plan.predicted_b = true;
                LearnOther::Predicted
            } else if !plan.birthday {
                plan.birthday = true;
                LearnOther::Birthday
            } else {
                return None;
            };
            Some((plan, way, learn_other))
        })
        .min_by_key(|(plan, _, _)| {
            let mutual = plan.predicted_a && plan.predicted_b;
            (plan.birthday, mutual, plan.predicted_a || plan.predicted_b)
        })
}

/// Rule 4: both sides symmetric with a port pattern. Each tells the other its prediction for its
/// next mapping and sends exactly one datagram to the other's; both mappings are then toward
/// each other, so the pair is a path. Works for APDM, where nothing else does.
fn mutual_prediction(a: Traits, b: Traits) -> Option<Plan> {
    let applies = !a.eim() && !b.eim() && a.predictable() && b.predictable();
    applies.then_some(Plan {
        predicted_a: true,
        predicted_b: true,
        birthday: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIM: Mapping = Mapping::EndpointIndependent;
    const ADM: Mapping = Mapping::AddressDependent;
    const APDM: Mapping = Mapping::AddressAndPortDependent;
    const EIF: Filtering = Filtering::EndpointIndependent;
    const ADF: Filtering = Filtering::AddressDependent;
    const APDF: Filtering = Filtering::AddressAndPortDependent;
    const SEQ: PortPattern = PortPattern::Sequential { delta: 1 };
    const RANDOM: PortPattern = PortPattern::Random;
    const PRESERVED: PortPattern = PortPattern::Preserved;

    /// Every mapping × filtering × port pattern, plus open, the three firewalls and UDP blocked.
    fn every_behaviour() -> Vec<Behaviour> {
        let mut all = vec![Behaviour::Open, Behaviour::UdpBlocked];
        for filtering in [EIF, ADF, APDF] {
            all.push(Behaviour::Firewall { filtering });
            for mapping in [EIM, ADM, APDM] {
                for ports in [PRESERVED, SEQ, RANDOM] {
                    all.push(Behaviour::nat(mapping, filtering, ports));
                }
            }
        }
        all
    }

    fn check(a: Behaviour, b: Behaviour) -> Outcome {
        oracle(a, b, &ProbeBudget::default())
    }

    fn birthday() -> Outcome {
        Outcome::Direct(Method::Birthday {
            probability: ProbeBudget::default().birthday_probability(),
        })
    }

    const PLAIN: Outcome = Outcome::Direct(Method::Plain);
    const PRFLX: Outcome = Outcome::Direct(Method::PeerReflexive);
    const PREDICT: Outcome = Outcome::Direct(Method::Predicted { mutual: false });
    const PREDICT_BOTH: Outcome = Outcome::Direct(PREDICT_BOTH_METHOD);
    const PREDICT_BOTH_METHOD: Method = Method::Predicted { mutual: true };

    #[test]
    fn symmetric_for_every_pair() {
        let all = every_behaviour();
        assert_eq!(all.len(), 32);
        for &a in &all {
            for &b in &all {
                assert_eq!(check(a, b), check(b, a), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn udp_blocked_is_always_relay() {
        for b in every_behaviour() {
            let outcome = check(Behaviour::UdpBlocked, b);
            assert_eq!(outcome, Outcome::Relay(RelayReason::UdpBlocked), "{b}");
            assert!(!outcome.is_direct());
            assert_eq!(outcome.success_probability(), 0.0);
        }
    }

    // NAT-NOTES' table, row by row; "sym" there is APDM+APDF, the usual symmetric NAT.

    #[test]
    fn notes_row_full_cone() {
        let full = Behaviour::nat(EIM, EIF, PRESERVED);
        assert_eq!(check(full, full), PLAIN);
        assert_eq!(check(full, Behaviour::nat(EIM, ADF, PRESERVED)), PLAIN);
        assert_eq!(check(full, Behaviour::nat(EIM, APDF, PRESERVED)), PLAIN);
        assert_eq!(check(full, Behaviour::nat(APDM, APDF, SEQ)), PRFLX);
        assert_eq!(check(full, Behaviour::nat(APDM, APDF, RANDOM)), PRFLX);
        assert_eq!(
            check(full, Behaviour::UdpBlocked),
            Outcome::Relay(RelayReason::UdpBlocked)
        );
    }

    #[test]
    fn notes_row_restricted_cone() {
        let restricted = Behaviour::nat(EIM, ADF, PRESERVED);
        assert_eq!(check(restricted, restricted), PLAIN);
        assert_eq!(
            check(restricted, Behaviour::nat(EIM, APDF, PRESERVED)),
            PLAIN
        );
        assert_eq!(check(restricted, Behaviour::nat(APDM, APDF, SEQ)), PRFLX);
        assert_eq!(check(restricted, Behaviour::nat(APDM, APDF, RANDOM)), PRFLX);
        assert!(!check(restricted, Behaviour::UdpBlocked).is_direct());
    }

    #[test]
    fn notes_row_port_restricted_cone() {
        let port_restricted = Behaviour::nat(EIM, APDF, PRESERVED);
        assert_eq!(check(port_restricted, port_restricted), PLAIN);
        assert_eq!(
            check(port_restricted, Behaviour::nat(APDM, APDF, SEQ)),
            PREDICT
        );
        assert_eq!(
            check(port_restricted, Behaviour::nat(APDM, APDF, RANDOM)),
            birthday()
        );
        assert!(!check(port_restricted, Behaviour::UdpBlocked).is_direct());
    }

    #[test]
    fn notes_row_symmetric_sequential() {
        let sequential = Behaviour::nat(APDM, APDF, SEQ);
        assert_eq!(check(sequential, sequential), PREDICT_BOTH);
        assert_eq!(
            check(sequential, Behaviour::nat(APDM, APDF, RANDOM)),
            Outcome::Relay(RelayReason::PredictableWithRandom)
        );
        assert!(!check(sequential, Behaviour::UdpBlocked).is_direct());
    }

    #[test]
    fn notes_row_symmetric_random() {
        let random = Behaviour::nat(APDM, APDF, RANDOM);
        assert_eq!(
            check(random, random),
            Outcome::Relay(RelayReason::BothRandom)
        );
        assert!(!check(random, Behaviour::UdpBlocked).is_direct());
    }

    #[test]
    fn birthday_figures_match_notes() {
        for (probes, expected) in [(174, 0.50), (512, 0.87), (1024, 0.98)] {
            let budget = ProbeBudget {
                probes,
                ..ProbeBudget::default()
            };
            let got = oracle(
                Behaviour::nat(EIM, APDF, PRESERVED),
                Behaviour::nat(APDM, APDF, RANDOM),
                &budget,
            )
            .success_probability();
            assert!((got - expected).abs() < 0.01, "n = {probes}: {got}");
        }
    }

    #[test]
    fn budget_edges_do_not_panic() {
        let pair = (
            Behaviour::nat(EIM, APDF, PRESERVED),
            Behaviour::nat(APDM, APDF, RANDOM),
        );
        for budget in [
            ProbeBudget {
                sockets: 0,
                ..ProbeBudget::default()
            },
            ProbeBudget {
                probes: 0,
                ..ProbeBudget::default()
            },
            ProbeBudget {
                port_range: 0,
                ..ProbeBudget::default()
            },
        ] {
            assert_eq!(
                oracle(pair.0, pair.1, &budget),
                Outcome::Relay(RelayReason::NoProbes)
            );
        }
        let saturated = ProbeBudget {
            sockets: u32::MAX,
            probes: u32::MAX,
            port_range: 1,
        };
        assert_eq!(
            oracle(pair.0, pair.1, &saturated).success_probability(),
            1.0
        );
        let huge = ProbeBudget {
            sockets: 1,
            probes: u32::MAX,
            port_range: u32::MAX,
        };
        let p = huge.birthday_probability();
        assert!((0.0..=1.0).contains(&p), "{p}");
    }

    #[test]
    fn probabilities() {
        assert_eq!(PLAIN.success_probability(), 1.0);
        assert_eq!(PRFLX.success_probability(), 1.0);
        assert_eq!(PREDICT_BOTH.success_probability(), 1.0);
        assert!(PREDICT.is_direct() && birthday().is_direct());
        assert!(!Outcome::Relay(RelayReason::BothRandom).is_direct());
    }

    #[test]
    fn open_and_firewalls_are_eim_nats() {
        for b in every_behaviour() {
            assert_eq!(
                check(Behaviour::Open, b),
                check(Behaviour::nat(EIM, EIF, PRESERVED), b),
                "{b}"
            );
            for filtering in [EIF, ADF, APDF] {
                assert_eq!(
                    check(Behaviour::Firewall { filtering }, b),
                    check(Behaviour::nat(EIM, filtering, RANDOM), b),
                    "{filtering} firewall vs {b}"
                );
            }
        }
    }

    #[test]
    fn hairpinning_never_matters() {
        for a in every_behaviour() {
            for b in every_behaviour() {
                let with_hairpin = match a {
                    Behaviour::Nat {
                        mapping,
                        filtering,
                        ports,
                        ..
                    } => Behaviour::Nat {
                        mapping,
                        filtering,
                        ports,
                        hairpinning: true,
                    },
                    other => other,
                };
                assert_eq!(check(a, b), check(with_hairpin, b), "{a} vs {b}");
            }
        }
    }

    /// A less restrictive mapping, filtering or port pattern never makes the outcome worse.
    #[test]
    fn looser_never_worse() {
        let score = |o: Outcome| match o {
            Outcome::Direct(m) => m.rank(),
            Outcome::Relay(_) => 5,
        };
        let mappings = [EIM, ADM, APDM];
        let filterings = [EIF, ADF, APDF];
        let patterns = [PRESERVED, SEQ, RANDOM];
        for b in every_behaviour() {
            for m in 0..3 {
                for f in 0..3 {
                    for p in 0..3 {
                        let here = score(check(
                            Behaviour::nat(mappings[m], filterings[f], patterns[p]),
                            b,
                        ));
                        if m > 0 {
                            let looser =
                                Behaviour::nat(mappings[m - 1], filterings[f], patterns[p]);
                            assert!(score(check(looser, b)) <= here, "{looser} vs {b}");
                        }
                        if f > 0 {
                            let looser =
                                Behaviour::nat(mappings[m], filterings[f - 1], patterns[p]);
                            assert!(score(check(looser, b)) <= here, "{looser} vs {b}");
                        }
                        if p > 0 {
                            let looser =
                                Behaviour::nat(mappings[m], filterings[f], patterns[p - 1]);
                            assert!(score(check(looser, b)) <= here, "{looser} vs {b}");
                        }
                    }
                }
            }
        }
    }

    /// Cells that follow from the rules beyond NAT-NOTES' table.
    #[test]
    fn generalised_cells() {
        // A port-preserving symmetric NAT is predictable: the local port of a fresh socket.
        assert_eq!(
            check(
                Behaviour::nat(EIM, APDF, SEQ),
                Behaviour::nat(APDM, APDF, PRESERVED)
            ),
            PREDICT
        );
        assert_eq!(
            check(
                Behaviour::nat(APDM, APDF, PRESERVED),
                Behaviour::nat(APDM, APDF, SEQ)
            ),
            PREDICT_BOTH
        );
        // An ADM side's probes to many ports of one IP leave from one port: it can spray.
        assert_eq!(
            check(
                Behaviour::nat(ADM, APDF, SEQ),
                Behaviour::nat(APDM, APDF, RANDOM)
            ),
            birthday()
        );
        assert_eq!(
            check(
                Behaviour::nat(ADM, ADF, RANDOM),
                Behaviour::nat(ADM, ADF, RANDOM)
            ),
            birthday()
        );
        // An ADM+ADF side learns the port of whoever reaches it, and a symmetric EIF side's srflx
        // teaches the ADM side's port: no prediction at all.
        assert_eq!(
            check(
                Behaviour::nat(ADM, ADF, RANDOM),
                Behaviour::nat(APDM, EIF, RANDOM)
            ),
            PRFLX
        );
        // The other way round: the EIF srflx of the ADM side learns the APDM+ADF side's binding
        // toward it, sends there, and answers the APDM side's next port.
        assert_eq!(
            check(
                Behaviour::nat(ADM, EIF, RANDOM),
                Behaviour::nat(APDM, ADF, RANDOM)
            ),
            PRFLX
        );
        // Two APDM sides only ever meet by mutual prediction, whatever their filters.
        assert_eq!(
            check(
                Behaviour::nat(APDM, EIF, RANDOM),
                Behaviour::nat(APDM, EIF, RANDOM)
            ),
            Outcome::Relay(RelayReason::BothRandom)
        );
        assert_eq!(
            check(
                Behaviour::nat(APDM, EIF, SEQ),
                Behaviour::nat(APDM, ADF, PRESERVED)
            ),
            PREDICT_BOTH
        );
        // An ADM+APDF random side learns nothing and cannot be predicted.
        assert_eq!(
            check(
                Behaviour::nat(ADM, APDF, RANDOM),
                Behaviour::nat(APDM, APDF, SEQ)
            ),
            Outcome::Relay(RelayReason::PredictableWithRandom)
        );
        assert_eq!(
            check(
                Behaviour::nat(ADM, APDF, RANDOM),
                Behaviour::nat(ADM, APDF, RANDOM)
            ),
            Outcome::Relay(RelayReason::BothRandom)
        );
        // A firewall is an EIM NAT: against random ports it sprays from its own address.
        let firewall = Behaviour::Firewall { filtering: APDF };
        assert_eq!(
            check(firewall, Behaviour::nat(APDM, APDF, RANDOM)),
            birthday()
        );
    }

    /// The route says what the method needs: a prediction exactly when the method predicts, a
    /// birthday round exactly when it guesses, and a route exactly when the outcome is direct.
    #[test]
    fn routes_agree_with_methods() {
        let all = every_behaviour();
        for &a in &all {
            for &b in &all {
                let Pairing { outcome, route } = pairing(a, b, &ProbeBudget::default());
                let Outcome::Direct(method) = outcome else {
                    assert_eq!(route, None, "{a} vs {b}");
                    continue;
                };
                let route = route.unwrap_or_else(|| panic!("no route for {a} vs {b}"));
                let (predicts, guesses) = match route {
                    Route::Mutual => (true, false),
                    Route::Anchored {
                        learn_anchor,
                        learn_other,
                        ..
                    } => (
                        matches!(
                            learn_anchor,
                            LearnAnchor::Predicted | LearnAnchor::OtherPredicted
                        ) || learn_other == LearnOther::Predicted,
                        learn_anchor == LearnAnchor::Birthday
                            || learn_other == LearnOther::Birthday,
                    ),
                };
                assert_eq!(
                    guesses,
                    matches!(method, Method::Birthday { .. }),
                    "{a} vs {b}: {route:?} for {method}"
                );
                if !guesses {
                    assert_eq!(
                        predicts,
                        matches!(method, Method::Predicted { .. }),
                        "{a} vs {b}: {route:?} for {method}"
                    );
                }
                if route == Route::Mutual {
                    assert_eq!(method, PREDICT_BOTH_METHOD, "{a} vs {b}");
                }
                // Swapping the sides gives the mirror route or an equally good one.
                let swapped = pairing(b, a, &ProbeBudget::default());
                assert_eq!(swapped.outcome, outcome, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn routes_of_the_notes_table() {
        let anchored = |stable, learn_anchor, learn_other| {
            Some(Route::Anchored {
                stable,
                learn_anchor,
                learn_other,
            })
        };
        let route = |a, b| pairing(a, b, &ProbeBudget::default()).route;
        let full = Behaviour::nat(EIM, EIF, PRESERVED);
        let port_restricted = Behaviour::nat(EIM, APDF, PRESERVED);
        let sequential = Behaviour::nat(APDM, APDF, SEQ);
        let random = Behaviour::nat(APDM, APDF, RANDOM);
        assert_eq!(
            route(full, port_restricted),
            anchored(Who::A, LearnAnchor::Free, LearnOther::Free)
        );
        // The symmetric side's new port reaches the full cone, which learns it.
        assert_eq!(
            route(random, full),
            anchored(Who::B, LearnAnchor::Free, LearnOther::Free)
        );
        assert_eq!(
            route(port_restricted, sequential),
            anchored(Who::A, LearnAnchor::Free, LearnOther::Predicted)
        );
        assert_eq!(
            route(random, port_restricted),
            anchored(Who::B, LearnAnchor::Free, LearnOther::Birthday)
        );
        assert_eq!(route(sequential, sequential), Some(Route::Mutual));
        assert_eq!(route(random, random), None);
        assert_eq!(route(full, Behaviour::UdpBlocked), None);
        assert_eq!(Who::A.other(), Who::B);
    }

    #[test]
    fn every_relay_has_a_random_side() {
        let all = every_behaviour();
        for &a in &all {
            for &b in &all {
                let random = |x: Behaviour| Traits::of(x).is_some_and(|s| s.random());
                if let Outcome::Relay(reason) = check(a, b) {
                    match reason {
                        RelayReason::UdpBlocked => {}
                        RelayReason::BothRandom => assert!(random(a) && random(b), "{a} vs {b}"),
                        RelayReason::PredictableWithRandom => {
                            assert!(random(a) != random(b), "{a} vs {b}");
                        }
                        RelayReason::NoProbes => panic!("default budget: {a} vs {b}"),
                    }
                }
            }
        }
    }
}
