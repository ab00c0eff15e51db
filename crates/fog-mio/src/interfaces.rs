//! The machine's interface addresses, for host candidates (the one piece of gathering that
//! needs the operating system; which addresses qualify is
//! [`fog_ice`'s `HostFilter`](https://docs.rs/fog-ice), sans-IO).

use std::io;
use std::net::IpAddr;

/// Every address of every interface that is up, IPv4 and IPv6, in the order the operating
/// system lists them (`getifaddrs`).
pub fn addresses() -> io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| i.ip())
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed() {
        let all = super::addresses().unwrap();
        assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
    }
}
