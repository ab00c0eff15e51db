//! The words for NAT behaviour, in RFC 4787's terms, and how they combine when NATs nest.
//!
//! Discovery (fog-stun) reports these, the simulator (fog-sim) configures and observes them, and
//! the punching strategy will choose by them, so they live here.

use std::fmt;

/// How a NAT chooses the external endpoint for an internal one (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    /// One external endpoint per internal endpoint, whatever the destination (EIM, REQ-1).
    EndpointIndependent,
    /// A new external endpoint per destination IP address (ADM).
    AddressDependent,
    /// A new external endpoint per destination IP address and port (APDM).
    AddressAndPortDependent,
}

/// Which inbound datagrams a NAT or firewall lets through to a binding (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filtering {
    /// Anyone may send to the binding (EIF).
    EndpointIndependent,
    /// Only IP addresses the internal endpoint has sent to (ADF).
    AddressDependent,
    /// Only the exact IP address and port the internal endpoint has sent to (APDF).
    AddressAndPortDependent,
}

/// The port pattern an observer sees across consecutive new bindings, the way discovery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortPattern {
    /// The external port equals the internal one.
    Preserved,
    /// Consecutive bindings differ by a constant `delta`.
    Sequential {
        /// The constant difference.
        delta: i32,
    },
    /// No pattern: the ports must be treated as random.
    Random,
}

/// What stands between a host and the open internet, reduced to what decides connectivity.
///
/// This is what an ideal observer outside (RFC 5780 discovery plus the port pattern) can learn, and
/// what fog-sim's connectivity oracle reasons about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// A public address: no NAT and no filtering.
    Open,
    /// A stateful firewall without translation: the host's address is public, inbound is filtered.
    Firewall {
        /// What inbound traffic passes.
        filtering: Filtering,
    },
    /// A NAT (or a chain of NATs, as its outermost effective behaviour).
    Nat {
        /// Mapping behaviour.
        mapping: Mapping,
        /// Filtering behaviour.
        filtering: Filtering,
        /// External port pattern across new bindings.
        ports: PortPattern,
        /// Whether a host can reach another behind the same NAT through its external address.
        hairpinning: bool,
    },
    /// UDP does not pass at all.
    UdpBlocked,
}

impl Behaviour {
    /// A NAT without hairpinning (hairpinning never matters between two sites).
    pub const fn nat(mapping: Mapping, filtering: Filtering, ports: PortPattern) -> Behaviour {
        Behaviour::Nat {
            mapping,
            filtering,
            ports,
            hairpinning: false,
        }
    }

    /// How new external endpoints are chosen: endpoint-independent for an open host or a
    /// firewall (the host's own address is its endpoint toward everyone), `None` when UDP is
    /// blocked.
    pub fn mapping(&self) -> Option<Mapping> {
        match self {
            Behaviour::Open | Behaviour::Firewall { .. } => Some(Mapping::EndpointIndependent),
            Behaviour::Nat { mapping, .. } => Some(*mapping),
            Behaviour::UdpBlocked => None,
        }
    }

    /// The behaviour of a host behind `inner` (nearer the host) that is itself behind `outer`.
    ///
    /// The composition follows what an outside observer sees: mapping and filtering are the more
    /// dependent of the two (a dependent inner NAT gives the outer one a new internal endpoint per
    /// destination; a restrictive filter anywhere on the path drops what it drops); the port
    /// pattern is the outer one's, except that a port-preserving outer NAT shows the inner one's
    /// pattern; hairpinning through the outer external address needs the outer NAT to hairpin.
    pub fn behind(self, outer: Behaviour) -> Behaviour {
        use Behaviour::*;
        match (self, outer) {
            (UdpBlocked, _) | (_, UdpBlocked) => UdpBlocked,
            (inner, Open) => inner,
            (Open, outer) => outer,
            (Firewall { filtering: a }, Firewall { filtering: b }) => Firewall {
                filtering: a.max(b),
            },
            (
                Firewall { filtering: f },
                Nat {
                    mapping,
                    filtering,
                    ports,
                    hairpinning,
                },
            )
            | (
                Nat {
                    mapping,
                    filtering,
                    ports,
                    hairpinning,
                },
                Firewall { filtering: f },
            ) => Nat {
                mapping,
                filtering: filtering.max(f),
                ports,
                hairpinning,
            },
            (
                Nat {
                    mapping: m1,
                    filtering: f1,
                    ports: p1,
                    ..
                },
                Nat {
                    mapping: m2,
                    filtering: f2,
                    ports: p2,
                    hairpinning,
                },
            ) => Nat {
                mapping: m1.max(m2),
                filtering: f1.max(f2),
                ports: match p2 {
                    PortPattern::Preserved => p1,
                    other => other,
                },
                hairpinning,
            },
        }
    }

    /// The classic RFC 3489 name, which cannot express the port pattern (RFC 4787 §3).
    pub fn classic_name(&self) -> &'static str {
        match self {
            Behaviour::Open => "open internet",
            Behaviour::Firewall {
                filtering: Filtering::EndpointIndependent,
            } => "open internet",
            Behaviour::Firewall { .. } => "symmetric UDP firewall",
            Behaviour::UdpBlocked => "UDP blocked",
            Behaviour::Nat {
                mapping: Mapping::EndpointIndependent,
                filtering,
                ..
            } => match filtering {
                Filtering::EndpointIndependent => "full cone",
                Filtering::AddressDependent => "restricted cone",
                Filtering::AddressAndPortDependent => "port-restricted cone",
            },
            Behaviour::Nat { .. } => "symmetric",
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::EndpointIndependent => "EIM",
            Mapping::AddressDependent => "ADM",
            Mapping::AddressAndPortDependent => "APDM",
        })
    }
}

impl fmt::Display for Filtering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "EIF",
            Filtering::AddressDependent => "ADF",
            Filtering::AddressAndPortDependent => "APDF",
        })
    }
}

impl fmt::Display for PortPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortPattern::Preserved => f.write_str("preserved"),
            PortPattern::Sequential { delta } => write!(f, "sequential {delta:+}"),
            PortPattern::Random => f.write_str("random"),
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Open => f.write_str("open (no NAT)"),
            Behaviour::Firewall { filtering } => write!(f, "firewall, no NAT, {filtering}"),
            Behaviour::UdpBlocked => f.write_str("UDP blocked"),
            Behaviour::Nat {
                mapping,
                filtering,
                ports,
                hairpinning,
            } => write!(
                f,
                "{mapping}+{filtering}, ports {ports}, hairpin {}",
                if *hairpinning { "on" } else { "off" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Filtering::{
        AddressAndPortDependent as Apdf, AddressDependent as Adf, EndpointIndependent as Eif,
    };
    use super::Mapping::{AddressDependent as Adm, EndpointIndependent as Eim};
    use super::*;

    fn nat(
        mapping: Mapping,
        filtering: Filtering,
        ports: PortPattern,
        hairpinning: bool,
    ) -> Behaviour {
        Behaviour::Nat {
            mapping,
            filtering,
            ports,
            hairpinning,
        }
    }

    #[test]
    fn nesting_takes_the_more_dependent_property_and_the_outer_port_pattern() {
        let home = nat(Eim, Apdf, PortPattern::Preserved, false);
        let cgn = nat(Eim, Eif, PortPattern::Random, true);
        assert_eq!(home.behind(cgn), nat(Eim, Apdf, PortPattern::Random, true));
        // A port-preserving outer NAT shows the inner pattern.
        let seq = nat(Adm, Eif, PortPattern::Sequential { delta: 2 }, false);
        assert_eq!(
            seq.behind(home),
            nat(Adm, Apdf, PortPattern::Sequential { delta: 2 }, false)
        );
        assert_eq!(home.behind(Behaviour::Open), home);
        assert_eq!(Behaviour::Open.behind(home), home);
        assert_eq!(home.behind(Behaviour::UdpBlocked), Behaviour::UdpBlocked);
        let fw = |filtering| Behaviour::Firewall { filtering };
        assert_eq!(fw(Adf).behind(fw(Eif)), fw(Adf));
        assert_eq!(fw(Apdf).behind(home), home);
    }

    #[test]
    fn classic_names() {
        let p = PortPattern::Preserved;
        assert_eq!(nat(Eim, Eif, p, false).classic_name(), "full cone");
        assert_eq!(nat(Eim, Adf, p, false).classic_name(), "restricted cone");
        assert_eq!(
            nat(Eim, Apdf, p, false).classic_name(),
            "port-restricted cone"
        );
        assert_eq!(nat(Adm, Apdf, p, false).classic_name(), "symmetric");
        assert_eq!(
            Behaviour::Firewall { filtering: Apdf }.classic_name(),
            "symmetric UDP firewall"
        );
    }
}
