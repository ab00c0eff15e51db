//! Which peer addresses the relay may reach: the defence against the class of hole behind
//! coturn's CVE-2020-26262, where an authenticated client uses the relay to reach services on the
//! relay host (loopback, the server's own ports) or on its private network.
//!
//! RFC 8656 §21.3 (and §9, which lets a server refuse a permission with 403) leaves the filter to
//! the server; this one refuses by default every address that is not a plain unicast address of
//! the public Internet ([`ReservedClass`]), and the server's own service addresses always. The
//! operator may open ranges again ([`PeerPolicy::allow`]) and close more ([`PeerPolicy::deny`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP prefix such as `10.0.0.0/8` or `fc00::/7`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// Why text is not an [`IpPrefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// The part before `/` is not an IP address.
    Address(String),
    /// The length is not a number, or longer than the family's 32 or 128 bits.
    Length(String),
    /// Bits are set past the prefix length (`10.0.0.1/8`): almost always a typo for another range.
    HostBits(String),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(s) => write!(f, "{s:?}: not an IP address or CIDR prefix"),
            Self::Length(s) => write!(f, "{s:?}: the prefix length is out of range"),
            Self::HostBits(s) => write!(
                f,
                "{s:?}: bits are set past the prefix length; write the network address"
            ),
        }
    }
}

impl std::error::Error for PrefixError {}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl IpPrefix {
    /// The prefix of `len` bits of `addr`.
    ///
    /// # Errors
    ///
    /// [`PrefixError::Length`] past the family's width, [`PrefixError::HostBits`] when `addr`
    /// has bits set past `len`.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let (value, width) = bits(addr);
        if len > width {
            return Err(PrefixError::Length(format!("{addr}/{len}")));
        }
        if value & !Self::mask(len, width) != 0 {
            return Err(PrefixError::HostBits(format!("{addr}/{len}")));
        }
        Ok(Self { addr, len })
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            len,
        }
    }

    const fn v6(segments: [u16; 8], len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            len,
        }
    }

    /// The first `len` of `width` bits set.
    fn mask(len: u8, width: u8) -> u128 {
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        match u32::from(width - len) {
            128 => 0,
            shift => all & (all << shift),
        }
    }

    /// Whether `ip` is in the prefix (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (want, width) = bits(self.addr);
        let (have, have_width) = bits(ip);
        width == have_width && have & Self::mask(self.len, width) == want
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| PrefixError::Address(s.to_owned()))?;
        let len = match len {
            Some(len) => len
                .trim()
                .parse::<u8>()
                .map_err(|_| PrefixError::Length(s.to_owned()))?,
            None => bits(addr).1,
        };
        Self::new(addr, len)
    }
}

/// A class of addresses the relay refuses unless [`PeerPolicy::allow`] opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReservedClass {
    /// 0.0.0.0/8 (RFC 1122 §3.2.1.3: "this network"; Linux delivers 0.0.0.0 to local sockets)
    /// and `::`.
    Unspecified,
    /// 127.0.0.0/8 and `::1`: the relay host itself.
    Loopback,
    /// 169.254.0.0/16 (RFC 3927) and fe80::/10 (RFC 4291 §2.5.6): links of the relay host, cloud
    /// metadata services among them.
    LinkLocal,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 240.0.0.0/4 (RFC 1112 §4 reserved), which holds the limited broadcast 255.255.255.255.
    Broadcast,
    /// 10/8, 172.16/12, 192.168/16 (RFC 1918), fc00::/7 (RFC 4193 unique local) and fec0::/10
    /// (the deprecated site-local, RFC 3879).
    Private,
    /// 100.64.0.0/10 (RFC 6598): carrier-grade NAT's shared space, private to an operator.
    CarrierGrade,
    /// Other IPv6 forms that do not name a public unicast host: IPv4-compatible ::/96 (RFC 4291
    /// §2.5.5.1, deprecated), the NAT64 local-use 64:ff9b:1::/48 (RFC 8215) and the discard
    /// prefix 100::/64 (RFC 6666).
    OtherIpv6,
}

/// The built-in classes; IPv6 forms that embed an IPv4 address are judged by that address
/// (see [`embedded_v4`]).
const RESERVED: &[(IpPrefix, ReservedClass)] = &[
    (IpPrefix::v4(0, 0, 0, 0, 8), ReservedClass::Unspecified),
    (IpPrefix::v4(127, 0, 0, 0, 8), ReservedClass::Loopback),
    (IpPrefix::v4(169, 254, 0, 0, 16), ReservedClass::LinkLocal),
    (IpPrefix::v4(224, 0, 0, 0, 4), ReservedClass::Multicast),
    (IpPrefix::v4(240, 0, 0, 0, 4), ReservedClass::Broadcast),
    (IpPrefix::v4(10, 0, 0, 0, 8), ReservedClass::Private),
    (IpPrefix::v4(172, 16, 0, 0, 12), ReservedClass::Private),
    (IpPrefix::v4(192, 168, 0, 0, 16), ReservedClass::Private),
    (IpPrefix::v4(100, 64, 0, 0, 10), ReservedClass::CarrierGrade),
    (IpPrefix::v6([0; 8], 128), ReservedClass::Unspecified),
    (
        IpPrefix::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        ReservedClass::Loopback,
    ),
    (
        IpPrefix::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        ReservedClass::LinkLocal,
    ),
    (
        IpPrefix::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        ReservedClass::Multicast,
    ),
    (
        IpPrefix::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        ReservedClass::Private,
    ),
    (
        IpPrefix::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        ReservedClass::Private,
    ),
    (IpPrefix::v6([0; 8], 96), ReservedClass::OtherIpv6),
    (
        IpPrefix::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        ReservedClass::OtherIpv6,
    ),
    (
        IpPrefix::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        ReservedClass::OtherIpv6,
    ),
];

/// The IPv4 address an IPv6 address reaches in the end, where the form says: IPv4-mapped
/// ::ffff:0:0/96 (RFC 4291 §2.5.5.2; a dual-stack socket sends to the IPv4 address), NAT64's
/// well-known 64:ff9b::/96 (RFC 6052 §2.1) and 6to4's 2002::/16 (RFC 3056 §2). Without this,
/// `::ffff:127.0.0.1` would walk past every IPv4 rule.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// In a built-in class the operator did not allow.
    Reserved(ReservedClass),
    /// In a [`PeerPolicy::deny`] range the operator did not allow.
    Denied(IpPrefix),
    /// One of the server's own service addresses ([`PeerPolicy::own`] or the listen address);
    /// no allow range opens these.
    Own(SocketAddr),
}

/// What the relay may reach. The [`Default`] refuses every [`ReservedClass`], denies nothing
/// else and allows nothing back.
///
/// A peer IP is refused when it is in a [`ReservedClass`] or in a [`deny`](Self::deny) range,
/// unless it is in an [`allow`](Self::allow) range (as coturn's `allowed-peer-ip` overrides
/// `denied-peer-ip`); IPv6 forms that embed an IPv4 address ([`embedded_v4`]) are judged as that
/// IPv4 address, and also as themselves. A peer *transport address* is refused besides when it
/// is one of the server's own UDP services: the listen address and [`own`](Self::own), whatever
/// the allow ranges say (a client that wants those can reach them without a relay). Another
/// relayed address of the same server is a peer like any other: two clients of one server relay
/// to each other that way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Ranges open even when reserved or denied (`--turn-allow-peer`).
    pub allow: Vec<IpPrefix>,
    /// Ranges refused besides the reserved classes (`--turn-deny-peer`).
    pub deny: Vec<IpPrefix>,
    /// The server's other UDP service addresses (a STUN server beside it); an unspecified IP
    /// stands for every IP on that port.
    pub own: Vec<SocketAddr>,
}

impl PeerPolicy {
    /// The default policy with `allow` opened: for tests and simulations whose peers live on
    /// private or loopback addresses.
    pub fn allowing(allow: impl IntoIterator<Item = IpPrefix>) -> Self {
        Self {
            allow: allow.into_iter().collect(),
            ..Self::default()
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|p| p.contains(ip))
    }

    /// Why `ip` may not be a peer, judged alone (the IPv4 form of an embedded address too).
    fn refuse_one(&self, ip: IpAddr) -> Option<Refusal> {
        if self.allowed(ip) {
            return None;
        }
        if let Some(&(_, class)) = RESERVED.iter().find(|(p, _)| p.contains(ip)) {
            return Some(Refusal::Reserved(class));
        }
        self.deny
            .iter()
            .find(|p| p.contains(ip))
            .map(|&p| Refusal::Denied(p))
    }

    /// Why a permission for `ip` must be refused (RFC 8656 §9: 403), if it must.
    pub fn check_ip(&self, ip: IpAddr) -> Option<Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => {
                    if let Some(r) = self.refuse_one(IpAddr::V4(v4)) {
                        return Some(r);
                    }
                    IpAddr::V6(v6)
                }
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        self.refuse_one(ip)
    }

    /// Why `peer` must be refused, if it must: [`check_ip`](Self::check_ip), then whether it is
    /// `listen` or one of [`own`](Self::own).
    pub fn check(&self, peer: SocketAddr, listen: SocketAddr) -> Option<Refusal> {
        if let Some(r) = self.check_ip(peer.ip()) {
            return Some(r);
        }
        let canonical = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let peer_ip = canonical(peer.ip());
        // Linux delivers a datagram to 0.0.0.0:P (or [::]:P) to the local socket on port P,
        // whatever IP it is bound to: an unspecified peer IP is every own IP.
        std::iter::once(&listen)
            .chain(&self.own)
            .find(|own| {
                own.port() == peer.port()
                    && (own.ip().is_unspecified()
                        || peer_ip.is_unspecified()
                        || canonical(own.ip()) == peer_ip)
            })
            .map(|&own| Refusal::Own(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn prefix(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_contain() {
        assert!(prefix("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!prefix("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(prefix("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!prefix("0.0.0.0/0").contains(ip("::1")));
        assert!(prefix("::/0").contains(ip("2001:db8::1")));
        assert!(prefix("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!prefix("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(prefix("fe80::/10").contains(ip("febf::1")));
        assert!(!prefix("fe80::/10").contains(ip("fec0::1")));
        assert_eq!(prefix("fc00::/7").to_string(), "fc00::/7");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/",
            "10/8",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    /// One address of each class, refused by default, IPv4 and IPv6, and the class it is in.
    const CLASSES: &[(&str, ReservedClass)] = &[
        ("0.0.0.0", ReservedClass::Unspecified),
        ("0.1.2.3", ReservedClass::Unspecified),
        ("::", ReservedClass::Unspecified),
        ("127.0.0.1", ReservedClass::Loopback),
        ("127.255.255.254", ReservedClass::Loopback),
        ("::1", ReservedClass::Loopback),
        ("169.254.169.254", ReservedClass::LinkLocal),
        ("fe80::1", ReservedClass::LinkLocal),
        ("224.0.0.1", ReservedClass::Multicast),
        ("239.255.255.250", ReservedClass::Multicast),
        ("ff02::1", ReservedClass::Multicast),
        ("255.255.255.255", ReservedClass::Broadcast),
        ("240.0.0.1", ReservedClass::Broadcast),
        ("10.0.0.1", ReservedClass::Private),
        ("172.16.0.1", ReservedClass::Private),
        ("172.31.255.255", ReservedClass::Private),
        ("192.168.1.1", ReservedClass::Private),
        ("fd00::1", ReservedClass::Private),
        ("fc00::1", ReservedClass::Private),
        ("fec0::1", ReservedClass::Private),
        ("100.64.0.1", ReservedClass::CarrierGrade),
        ("100.127.255.255", ReservedClass::CarrierGrade),
        ("::7f00:1", ReservedClass::OtherIpv6),
        ("64:ff9b:1::a00:1", ReservedClass::OtherIpv6),
        ("100::1", ReservedClass::OtherIpv6),
        // IPv4 embedded in IPv6 is judged as the IPv4 address.
        ("::ffff:127.0.0.1", ReservedClass::Loopback),
        ("::ffff:10.1.2.3", ReservedClass::Private),
        ("::ffff:0.0.0.0", ReservedClass::Unspecified),
        ("::ffff:169.254.169.254", ReservedClass::LinkLocal),
        ("64:ff9b::7f00:1", ReservedClass::Loopback),
        ("2002:c0a8:101::1", ReservedClass::Private),
    ];

    #[test]
    fn every_reserved_class_is_refused_by_default() {
        let policy = PeerPolicy::default();
        for &(addr, class) in CLASSES {
            assert_eq!(
                policy.check_ip(ip(addr)),
                Some(Refusal::Reserved(class)),
                "{addr}"
            );
        }
    }

    #[test]
    fn public_unicast_is_allowed_by_default() {
        let policy = PeerPolicy::default();
        for addr in [
            "8.8.8.8",
            "203.0.113.9",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "223.255.255.255",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(policy.check_ip(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn allow_opens_a_class_and_deny_closes_more() {
        let policy = PeerPolicy {
            allow: vec![prefix("127.0.0.0/8"), prefix("10.1.0.0/16")],
            deny: vec![prefix("203.0.113.0/24"), prefix("10.0.0.0/8")],
            own: vec![],
        };
        assert_eq!(policy.check_ip(ip("127.0.0.1")), None);
        assert_eq!(policy.check_ip(ip("::ffff:127.0.0.1")), None);
        assert_eq!(policy.check_ip(ip("10.1.2.3")), None, "allow beats deny");
        assert_eq!(
            policy.check_ip(ip("10.2.0.1")),
            Some(Refusal::Reserved(ReservedClass::Private))
        );
        assert_eq!(
            policy.check_ip(ip("203.0.113.9")),
            Some(Refusal::Denied(prefix("203.0.113.0/24")))
        );
        assert_eq!(
            policy.check_ip(ip("::ffff:203.0.113.9")),
            Some(Refusal::Denied(prefix("203.0.113.0/24"))),
            "a denied IPv4 address is denied in its mapped form too"
        );
        assert_eq!(
            policy.check_ip(ip("::1")),
            Some(Refusal::Reserved(ReservedClass::Loopback))
        );
    }

    #[test]
    fn the_servers_own_addresses_are_refused_whatever_is_allowed() {
        let policy = PeerPolicy {
            allow: vec![prefix("0.0.0.0/0"), prefix("::/0")],
            deny: vec![],
            own: vec![sa("198.51.100.1:3479"), sa("0.0.0.0:7000")],
        };
        let listen = sa("198.51.100.1:3478");
        assert_eq!(policy.check(listen, listen), Some(Refusal::Own(listen)));
        assert_eq!(
            policy.check(sa("198.51.100.1:3479"), listen),
            Some(Refusal::Own(sa("198.51.100.1:3479")))
        );
        assert_eq!(
            policy.check(sa("10.9.9.9:7000"), listen),
            Some(Refusal::Own(sa("0.0.0.0:7000")))
        );
        assert_eq!(
            policy.check(sa("[::ffff:198.51.100.1]:3478"), listen),
            Some(Refusal::Own(listen))
        );
        // Even with every range allowed, 0.0.0.0 on an own port reaches the server itself.
        assert_eq!(
            policy.check(sa("0.0.0.0:3478"), listen),
            Some(Refusal::Own(listen))
        );
        assert_eq!(
            policy.check(sa("[::ffff:0.0.0.0]:3479"), listen),
            Some(Refusal::Own(sa("198.51.100.1:3479")))
        );
        // Another port of the same IP (another allocation's relayed address) is a peer.
        assert_eq!(policy.check(sa("198.51.100.1:50000"), listen), None);
        assert_eq!(policy.check(sa("127.0.0.1:3478"), listen), None);
    }
}
