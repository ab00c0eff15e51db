//! The machine's interface addresses, for host candidates (the one piece of gathering that
//! needs the operating system; which addresses qualify is
//! [`fog_ice`'s `HostFilter`](https://docs.rs/fog-ice), sans-IO).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// Every address of every interface that is up, IPv4 and IPv6, in the order the operating
/// system lists them (`getifaddrs`).
pub fn addresses() -> io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| i.ip())
        .collect())
}

/// The IPv4 default gateway, where a port mapping is asked for (PCP, NAT-PMP, UPnP): on Linux
/// the gateway of the first default route in `/proc/net/route`; `None` elsewhere, or without
/// a default route.
pub fn default_gateway() -> Option<Ipv4Addr> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    parse_route_table(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The gateway of the first route to 0.0.0.0/0 that has one (flag RTF_GATEWAY, 0x2) in the
/// kernel's route table text: columns Iface, Destination, Gateway, Flags, ..., Mask, with
/// addresses in hexadecimal as the host stores them (little-endian on the machines Linux
/// runs on here).
fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| fields.get(i).and_then(|f| u32::from_str_radix(f, 16).ok());
        let (destination, gateway, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
        let default = destination == 0 && mask == 0 && flags & 0x2 != 0 && gateway != 0;
        default.then(|| Ipv4Addr::from(gateway.to_le_bytes()))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_route_is_read() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
\
                     eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
        assert_eq!(
            super::parse_route_table(table),
            Some(std::net::Ipv4Addr::new(192, 168, 1, 1))
        );
        let no_default = table.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(super::parse_route_table(&no_default), None);
    }

    #[test]
    fn loopback_is_listed() {
        let all = super::addresses().unwrap();
        assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
    }
}
