//! Operation sequences against a simulated network with an arbitrary NAT between a host and the
//! internet: the simulator must never panic, and once the network is quiet every datagram sent must
//! be accounted for as delivered or dropped.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use fog_sim::behaviour::{Filtering, Mapping, PortAssignment};
use fog_sim::link::LinkConfig;
use fog_sim::nat::{NatConfig, Refresh, Timeouts};
use fog_sim::probe::RawSocket;
use fog_sim::{NodeId, Sim};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    seed: u64,
    mapping: u8,
    filtering: u8,
    ports: u8,
    delta: i8,
    range_lo: u16,
    range_len: u16,
    parity: bool,
    hairpinning: bool,
    unreplied_ms: u16,
    established_ms: u16,
    refresh_both: bool,
    max_bindings: u8,
    inbound_leaves_state: bool,
    translate: bool,
    loss: u8,
    duplicate: u8,
    reorder: u8,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// The inside host sends from `port` to one of a few destinations.
    Out {
        port: u16,
        dst: u8,
        dst_port: u16,
        ttl: Option<u8>,
        len: u8,
    },
    /// An outside host sends to the NAT's external address.
    In {
        from: u8,
        from_port: u16,
        port: u16,
        len: u8,
    },
    /// Time passes.
    Wait { ms: u16 },
}

const INSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));
const EXTERNAL: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const OUTSIDE: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
];

fuzz_target!(|input: (Config, Vec<Op>)| {
    let (c, ops) = input;
    let mapping = [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ][usize::from(c.mapping % 3)];
    let filtering = [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ][usize::from(c.filtering % 3)];
    let delta = if c.delta == 0 { 1 } else { i32::from(c.delta) };
    let ports = [
        PortAssignment::Preserve,
        PortAssignment::Sequential { delta },
        PortAssignment::Random,
    ][usize::from(c.ports % 3)];
    let lo = c.range_lo.max(1);
    let hi = lo.saturating_add(c.range_len);
    let config = NatConfig {
        mapping,
        filtering,
        ports,
        port_range: lo..=hi,
        preserve_parity: c.parity,
        hairpinning: c.hairpinning,
        timeouts: Timeouts {
            unreplied: Duration::from_millis(u64::from(c.unreplied_ms)),
            established: Duration::from_millis(u64::from(c.established_ms)),
        },
        refresh: if c.refresh_both {
            Refresh::Both
        } else {
            Refresh::OutboundOnly
        },
        max_bindings: usize::from(c.max_bindings),
        inbound_leaves_state: c.inbound_leaves_state,
        translate: c.translate,
    };
    let link = LinkConfig {
        loss: f64::from(c.loss) / 255.0,
        duplicate: f64::from(c.duplicate) / 255.0,
        reorder: f64::from(c.reorder) / 255.0,
        jitter: Duration::from_millis(3),
        reorder_delay: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(c.seed);
    let nat = sim.add_nat("nat", NodeId::INTERNET, EXTERNAL, config, link.clone());
    let inside_addr = if c.translate { INSIDE } else { EXTERNAL };
    let inside = sim.add_host("inside", nat, &[inside_addr], link.clone());
    let outside = sim.add_host("outside", NodeId::INTERNET, &OUTSIDE, link);
    sim.set_machine(inside, 5000, RawSocket::new());
    sim.set_machine(outside, 3478, RawSocket::new());
    for op in ops.into_iter().take(256) {
        match op {
            Op::Out {
                port,
                dst,
                dst_port,
                ttl,
                len,
            } => {
                let to = match dst % 3 {
                    0 => SocketAddr::new(OUTSIDE[0], dst_port),
                    1 => SocketAddr::new(OUTSIDE[1], dst_port),
                    _ => SocketAddr::new(EXTERNAL, dst_port),
                };
                let payload = vec![0u8; usize::from(len)];
                sim.with_machine(inside, |m: &mut RawSocket, _| {
                    m.send_with_ttl(Some(SocketAddr::new(inside_addr, port)), to, &payload, ttl)
                });
            }
            Op::In {
                from,
                from_port,
                port,
                len,
            } => {
                let payload = vec![0u8; usize::from(len)];
                let source = SocketAddr::new(OUTSIDE[usize::from(from % 2)], from_port);
                sim.with_machine(outside, |m: &mut RawSocket, _| {
                    m.send(Some(source), SocketAddr::new(EXTERNAL, port), &payload)
                });
            }
            Op::Wait { ms } => sim.run_for(Duration::from_millis(u64::from(ms))),
        }
    }
    while sim.step() {}
    let s = sim.stats();
    assert_eq!(
        s.sent + s.duplicated,
        s.delivered + s.dropped_total(),
        "every datagram is delivered or dropped: {s:?}"
    );
});
