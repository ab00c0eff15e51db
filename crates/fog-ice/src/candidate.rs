//! Candidates and their priorities (RFC 8445 §5.1.2), and the predicted candidates FogConnect adds.

use std::net::SocketAddr;

/// How a candidate was found. `Predicted` is FogConnect's own: an address the NAT's port pattern
/// says a new mapping will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An address of a local interface (RFC 8445 §5.1.1.1).
    Host,
    /// The mapping a STUN server saw (§5.1.1.2).
    ServerReflexive,
    /// The mapping a peer saw, learnt from a connectivity check (§7.2.5.3.1, §7.3.1.3).
    PeerReflexive,
    /// A mapping predicted from the NAT's port allocation pattern.
    Predicted,
    /// A TURN relayed address (§5.1.1.2).
    Relayed,
    /// A port the side's router forwards to it (PCP, NAT-PMP or UPnP IGD), which a probe from
    /// outside has reached: anyone may send to it, so the side is directly reachable there
    /// whatever its NAT does to new flows.
    Mapped,
}

impl Kind {
    /// RFC 8445 §5.1.2.2's recommended type preferences (host 126, peer-reflexive 110,
    /// server-reflexive 100, relayed 0); a prediction ranks just below server-reflexive, since
    /// it is a server-reflexive address not yet seen, and a verified port mapping just above
    /// it, since a probe from outside has come through it.
    pub fn type_preference(self) -> u32 {
        match self {
            Kind::Host => 126,
            Kind::PeerReflexive => 110,
            Kind::Mapped => 105,
            Kind::ServerReflexive => 100,
            Kind::Predicted => 90,
            Kind::Relayed => 0,
        }
    }

    /// The short name ICE uses in SDP (RFC 8839 §5.1: `host`, `srflx`, `prflx`, `relay`), and
    /// `predicted` and `mapped` for ours.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::ServerReflexive => "srflx",
            Kind::PeerReflexive => "prflx",
            Kind::Predicted => "predicted",
            Kind::Relayed => "relay",
            Kind::Mapped => "mapped",
        }
    }
}

/// A candidate: where a side may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// How it was found.
    pub kind: Kind,
    /// The transport address.
    pub addr: SocketAddr,
    /// RFC 8445 §5.1.2 priority.
    pub priority: u32,
}

impl Candidate {
    /// A candidate of component 1 with the priority RFC 8445 §5.1.2.1 gives it: a local
    /// preference of 65535 for IPv6 and 65534 for IPv4 (prefer IPv6 when both work, §5.1.2.2).
    pub fn new(kind: Kind, addr: SocketAddr) -> Candidate {
        let local = if addr.is_ipv6() { 65_535 } else { 65_534 };
        Candidate {
            kind,
            addr,
            priority: priority(kind.type_preference(), local, 1),
        }
    }
}

/// RFC 8445 §5.1.2.1: `2^24 · type preference + 2^8 · local preference + (256 − component)`.
pub fn priority(type_preference: u32, local_preference: u32, component: u32) -> u32 {
    (type_preference.min(126) << 24)
        | (local_preference.min(65_535) << 8)
        | (256 - component.clamp(1, 256))
}

/// RFC 8445 §6.1.2.3: the priority of a pair from the controlling agent's candidate priority `g`
/// and the controlled agent's `d`: `2^32 · min(G, D) + 2 · max(G, D) + (G > D ? 1 : 0)`.
/// Candidate priorities are below 2^31 (§5.1.2.1), where this fits 64 bits; it saturates above.
pub fn pair_priority(g: u32, d: u32) -> u64 {
    (u64::from(g.min(d)) << 32)
        .saturating_add(2 * u64::from(g.max(d)))
        .saturating_add(u64::from(g > d))
}

/// The addresses a NAT with a sequential pattern will give the next `count` new mappings, after
/// the last one seen at `last`: `last + Δ`, `last + 2Δ`, ... (ports outside 1–65535 are
/// skipped).
pub fn predicted(last: SocketAddr, delta: i32, count: u16) -> Vec<SocketAddr> {
    (1..=i64::from(count))
        .filter_map(|i| {
            let port = i64::from(last.port()) + i * i64::from(delta);
            u16::try_from(port)
                .ok()
                .filter(|&p| p != 0)
                .map(|p| SocketAddr::new(last.ip(), p))
        })
        .collect()
}

/// Which interface addresses make host candidates (RFC 8445 §5.1.1.1: loopback addresses
/// are not included, nor IPv6 link-local ones unless the application wants them, since they
/// work only on one link; IPv4 link-local (RFC 3927) likewise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostFilter {
    /// Include loopback addresses (127.0.0.0/8, ::1): for tests and same-machine use.
    pub loopback: bool,
    /// Include link-local addresses (169.254.0.0/16, fe80::/10).
    pub link_local: bool,
}

impl HostFilter {
    /// Whether `ip` makes a host candidate. Never the unspecified, a multicast or broadcast
    /// address, or an IPv4-mapped IPv6 one (the IPv4 address is its own candidate).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if ip.is_loopback() {
            return self.loopback;
        }
        match ip {
            IpAddr::V4(v4) => !v4.is_broadcast() && (self.link_local || !v4.is_link_local()),
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().is_none() && (self.link_local || !v6.is_unicast_link_local())
            }
        }
    }

    /// The addresses of `ips` that make host candidates, in order, without repeats.
    pub fn filter(&self, ips: impl IntoIterator<Item = std::net::IpAddr>) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for ip in ips {
            if self.allows(ip) && !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_candidates_skip_loopback_and_link_local_unless_asked() {
        let ips: Vec<std::net::IpAddr> = [
            "127.0.0.1",
            "::1",
            "169.254.3.4",
            "fe80::1",
            "192.0.2.7",
            "2001:db8::7",
            "0.0.0.0",
            "ff02::1",
            "::ffff:192.0.2.7",
            "192.0.2.7",
            "fd00::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let keep = |f: HostFilter| -> Vec<String> {
            f.filter(ips.iter().copied())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            keep(HostFilter::default()),
            ["192.0.2.7", "2001:db8::7", "fd00::1"]
        );
        assert_eq!(
            keep(HostFilter {
                loopback: true,
                link_local: true
            }),
            [
                "127.0.0.1",
                "::1",
                "169.254.3.4",
                "fe80::1",
                "192.0.2.7",
                "2001:db8::7",
                "fd00::1"
            ]
        );
    }

    #[test]
    fn priorities_follow_rfc_8445() {
        // §5.1.2.1 with the §5.1.2.2 preferences: a host candidate of component 1.
        assert_eq!(priority(126, 65_535, 1), 0x7eff_ffff);
        assert_eq!(priority(0, 0, 256), 0);
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let host = Candidate::new(Kind::Host, v4);
        let srflx = Candidate::new(Kind::ServerReflexive, v4);
        let prflx = Candidate::new(Kind::PeerReflexive, v4);
        let predicted = Candidate::new(Kind::Predicted, v4);
        let relay = Candidate::new(Kind::Relayed, v4);
        assert!(host.priority > prflx.priority);
        assert!(prflx.priority > srflx.priority);
        assert!(srflx.priority > predicted.priority);
        assert!(predicted.priority > relay.priority);
        let v6 = Candidate::new(Kind::Host, "[2001:db8::1]:1".parse().unwrap());
        assert!(v6.priority > host.priority);
    }

    #[test]
    fn pair_priority_is_rfc_8445s_formula() {
        assert_eq!(pair_priority(1, 2), (1 << 32) + 4);
        assert_eq!(pair_priority(2, 1), (1 << 32) + 5);
        let top = 0x7eff_ffff_u32;
        assert_eq!(
            pair_priority(top, top),
            (u64::from(top) << 32) + 2 * u64::from(top)
        );
        assert_eq!(pair_priority(u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn predictions_step_by_delta_and_stay_in_range() {
        let last: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let ports = |delta, count| -> Vec<u16> {
            predicted(last, delta, count)
                .iter()
                .map(SocketAddr::port)
                .collect()
        };
        assert_eq!(ports(1, 3), [40_001, 40_002, 40_003]);
        assert_eq!(ports(-2, 2), [39_998, 39_996]);
        assert_eq!(ports(20_000, 2), [60_000]);
        assert!(predicted("203.0.113.9:1".parse().unwrap(), -1, 3).is_empty());
    }
}
