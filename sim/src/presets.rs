//! Named NAT set-ups met in the wild, and how to attach one to a simulated network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::behaviour::{Behaviour, Filtering, Mapping, PortAssignment};
use crate::link::LinkConfig;
use crate::nat::NatConfig;
use crate::net::{NodeId, Sim};

/// A NAT set-up between a host and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// A public address, nothing in the way.
    OpenInternet,
    /// EIM + EIF, ports preserved.
    FullCone,
    /// EIM + ADF, ports preserved.
    RestrictedCone,
    /// EIM + APDF, ports preserved: what Linux `masquerade` does by default and what most home
    /// routers do.
    PortRestrictedCone,
    /// A port-restricted cone whose unsolicited inbound datagrams leave conntrack state, as a Linux
    /// router that accepts input does; classifiers see a plain port-restricted cone.
    PortRestrictedConeInboundState,
    /// A stateful firewall without NAT that filters by address and port.
    Firewall,
    /// APDM + APDF with sequential ports (+1).
    SymmetricSequential,
    /// APDM + APDF with random ports (Linux `masquerade random-fully`).
    SymmetricRandom,
    /// A port-restricted home NAT behind a carrier-grade NAT (RFC 6598 space, 100.64.0.0/10) that is
    /// EIM + APDF with random ports and hairpinning (RFC 6888 REQ-9).
    CgnatBehindHome,
    /// UDP does not pass.
    UdpBlocked,
    /// ADM + APDF with random ports: one external port per internal endpoint and destination
    /// IP, whatever the destination port, drawn at random. Linux makes it with an `snat` to a
    /// port hashed from the destination IP and the source port (fog-cli's netns matrix, kind
    /// `adm`). Not in [`ALL`](Self::ALL): see [`EXTRA`](Self::EXTRA).
    AddressDependent,
}

/// A host attached behind a preset.
#[derive(Debug, Clone)]
pub struct Site {
    /// The host.
    pub host: NodeId,
    /// Its private (or public, when open) address.
    pub host_addr: IpAddr,
    /// The middleboxes from the host outwards.
    pub middleboxes: Vec<NodeId>,
}

impl Preset {
    /// Every preset, in the order tables list them.
    pub const ALL: [Preset; 10] = [
        Preset::OpenInternet,
        Preset::FullCone,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedConeInboundState,
        Preset::Firewall,
        Preset::SymmetricSequential,
        Preset::SymmetricRandom,
        Preset::CgnatBehindHome,
        Preset::UdpBlocked,
    ];

    /// Presets outside [`ALL`](Self::ALL), for scenarios that name them. `ALL` is what
    /// fog-examples' matrix (`benches/matrix.md`), the chaos plans and the delivery tests draw
    /// from; a preset added there changes those tables and every chaos seed's plan.
    pub const EXTRA: [Preset; 1] = [Preset::AddressDependent];

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::OpenInternet => "open-internet",
            Preset::FullCone => "full-cone",
            Preset::RestrictedCone => "restricted-cone",
            Preset::PortRestrictedCone => "port-restricted-cone",
            Preset::PortRestrictedConeInboundState => "port-restricted-inbound-state",
            Preset::Firewall => "firewall-apdf",
            Preset::SymmetricSequential => "symmetric-sequential",
            Preset::SymmetricRandom => "symmetric-random",
            Preset::CgnatBehindHome => "cgnat-behind-home",
            Preset::UdpBlocked => "udp-blocked",
            Preset::AddressDependent => "address-dependent",
        }
    }

    /// The NAT configurations from the host outwards (empty for the open internet and for UDP
    /// blocked, which is not a NAT).
    pub fn nats(self) -> Vec<NatConfig> {
        use Filtering::{
            AddressAndPortDependent as Apdf, AddressDependent as Adf, EndpointIndependent as Eif,
        };
        let cone = |filtering| NatConfig::new(Mapping::EndpointIndependent, filtering);
        let symmetric = || NatConfig::new(Mapping::AddressAndPortDependent, Apdf);
        match self {
            Preset::OpenInternet | Preset::UdpBlocked => vec![],
            Preset::FullCone => vec![cone(Eif)],
            Preset::RestrictedCone => vec![cone(Adf)],
            Preset::PortRestrictedCone => vec![cone(Apdf)],
            Preset::PortRestrictedConeInboundState => {
                vec![NatConfig {
                    inbound_leaves_state: true,
                    ..cone(Apdf)
                }]
            }
            Preset::Firewall => vec![NatConfig::firewall(Apdf)],
            Preset::SymmetricSequential => vec![NatConfig {
                ports: PortAssignment::Sequential { delta: 1 },
                ..symmetric()
            }],
            Preset::SymmetricRandom => vec![NatConfig {
                ports: PortAssignment::Random,
                ..symmetric()
            }],
            Preset::AddressDependent => vec![NatConfig {
                ports: PortAssignment::Random,
                ..NatConfig::new(Mapping::AddressDependent, Apdf)
            }],
            Preset::CgnatBehindHome => vec![
                cone(Apdf),
                NatConfig {
                    ports: PortAssignment::Random,
                    hairpinning: true,
                    // RFC 4787 REQ-5: at least 2 minutes.
                    timeouts: crate::nat::Timeouts {
                        unreplied: Duration::from_secs(120),
                        established: Duration::from_secs(300),
                    },
                    ..cone(Apdf)
                },
            ],
        }
    }

    /// What an ideal outside observer should see.
    pub fn behaviour(self) -> Behaviour {
        if self == Preset::UdpBlocked {
            return Behaviour::UdpBlocked;
        }
        self.nats()
            .iter()
            .fold(Behaviour::Open, |inner, nat| inner.behind(nat.behaviour()))
    }

    /// Attaches a host named `name` behind this preset to `sim`'s internet. `site` (1–250) picks the
    /// addresses so that several sites can share one network: public addresses in 203.0.113.0/24
    /// (RFC 5737), private ones in 192.168.`site`.0/24 and 100.64.`site`.0/24 (RFC 6598).
    ///
    /// # Panics
    /// If `site` is 0 or above 250.
    pub fn attach(self, sim: &mut Sim, name: &str, site: u8, link: LinkConfig) -> Site {
        self.attach_with(sim, name, site, link, &[])
    }

    /// [`attach`](Self::attach), with `extra` addresses on the host besides its own: IPv6 ones
    /// pass the NATs untranslated (each NAT filters them as its configuration says, as a
    /// dual-stack home router's firewall does); further IPv4 ones sit on the same LAN.
    ///
    /// # Panics
    /// If `site` is 0 or above 250, or an address is already routed.
    pub fn attach_with(
        self,
        sim: &mut Sim,
        name: &str,
        site: u8,
        link: LinkConfig,
        extra: &[IpAddr],
    ) -> Site {
        assert!((1..=250).contains(&site), "site must be in 1..=250");
        let addrs = |own: IpAddr| -> Vec<IpAddr> {
            std::iter::once(own).chain(extra.iter().copied()).collect()
        };
        let public = IpAddr::V4(Ipv4Addr::new(203, 0, 113, site));
        let private = IpAddr::V4(Ipv4Addr::new(192, 168, site, 2));
        let lan = LinkConfig::with_latency(Duration::from_micros(500));
        match self {
            Preset::OpenInternet => {
                let host = sim.add_host(name, NodeId::INTERNET, &addrs(public), link);
                Site {
                    host,
                    host_addr: public,
                    middleboxes: vec![],
                }
            }
            Preset::UdpBlocked => {
                let blocker =
                    sim.add_udp_blocker(&format!("{name}-blocker"), NodeId::INTERNET, link);
                let host = sim.add_host(name, blocker, &addrs(private), lan);
                Site {
                    host,
                    host_addr: private,
                    middleboxes: vec![blocker],
                }
            }
            Preset::Firewall => {
                let [config] = <[NatConfig; 1]>::try_from(self.nats()).expect("one firewall");
                let fw = sim.add_nat(
                    &format!("{name}-fw"),
                    NodeId::INTERNET,
                    public,
                    config,
                    link,
                );
                let host = sim.add_host(name, fw, &addrs(public), lan);
                Site {
                    host,
                    host_addr: public,
                    middleboxes: vec![fw],
                }
            }
            Preset::CgnatBehindHome => {
                let [home, cgn] = <[NatConfig; 2]>::try_from(self.nats()).expect("two NATs");
                let cgn_inside = IpAddr::V4(Ipv4Addr::new(100, 64, site, 2));
                let cgn = sim.add_nat(&format!("{name}-cgn"), NodeId::INTERNET, public, cgn, link);
                let home = sim.add_nat(&format!("{name}-home"), cgn, cgn_inside, home, lan.clone());
                let host = sim.add_host(name, home, &addrs(private), lan);
                Site {
                    host,
                    host_addr: private,
                    middleboxes: vec![home, cgn],
                }
            }
            _ => {
                let [config] = <[NatConfig; 1]>::try_from(self.nats()).expect("one NAT");
                let nat = sim.add_nat(
                    &format!("{name}-nat"),
                    NodeId::INTERNET,
                    public,
                    config,
                    link,
                );
                let host = sim.add_host(name, nat, &addrs(private), lan);
                Site {
                    host,
                    host_addr: private,
                    middleboxes: vec![nat],
                }
            }
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
