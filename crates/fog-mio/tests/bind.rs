//! Binding addresses before anything is sent from them, on loopback: a machine's
//! `SocketRequest`s and the owner's `Driver::bind`/`unbind`. This is what a TURN server's
//! relayed addresses need: a peer may send to one before the server has sent from it.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use fog_mio::{Config, Driver};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Asks for the socket requests it is given and records every datagram; sends nothing.
#[derive(Default)]
struct Binder {
    requests: VecDeque<SocketRequest>,
    arrivals: Vec<(SocketAddr, Vec<u8>)>,
    bind_errors: Vec<SocketAddr>,
}

impl SansIo for Binder {
    type Event = ();

    fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
        self.arrivals.push((packet.local, packet.payload.to_vec()));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        self.requests.pop_front()
    }
    fn handle_bind_error(&mut self, _now: Instant, addr: SocketAddr) {
        self.bind_errors.push(addr);
    }
    fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<Transmit> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A port on 127.0.0.1 that nothing is bound to right now.
fn free_port() -> SocketAddr {
    UdpSocket::bind((V4, 0)).unwrap().local_addr().unwrap()
}

/// Steps the driver until it has recorded `n` arrivals or `wait` has passed.
fn run_for_arrivals(driver: &mut Driver<Binder>, n: usize, wait: Duration) {
    let deadline = Instant::now() + wait;
    while driver.machine().arrivals.len() < n && Instant::now() < deadline {
        driver
            .turn(Some(Duration::from_millis(10)), |_, ()| {})
            .unwrap();
    }
}

#[test]
fn a_requested_bind_receives_before_any_send_and_an_unbind_closes_the_socket() {
    let mut driver = Driver::new(Binder::default(), &[SocketAddr::new(V4, 0)]).unwrap();
    let base = driver.local_addrs()[0];
    let relayed = free_port();
    let peer = UdpSocket::bind((V4, 0)).unwrap();

    driver
        .machine_mut()
        .requests
        .push_back(SocketRequest::Bind(relayed));
    driver.drain(|_, ()| {});
    assert_eq!(driver.local_addrs(), [base, relayed]);
    assert_eq!(driver.stats().bound_on_request, 1);

    // The machine has sent nothing from `relayed`, yet the peer's datagram is received there.
    peer.send_to(b"early", relayed).unwrap();
    run_for_arrivals(&mut driver, 1, Duration::from_secs(5));
    assert_eq!(driver.machine().arrivals, [(relayed, b"early".to_vec())]);
    assert_eq!(driver.stats().sent, 0);

    driver
        .machine_mut()
        .requests
        .push_back(SocketRequest::Unbind(relayed));
    driver.drain(|_, ()| {});
    assert_eq!(driver.local_addrs(), [base]);
    assert_eq!(driver.stats().unbound, 1);
    // The port is free again: the socket is closed, not just forgotten.
    drop(UdpSocket::bind(relayed).expect("the unbound port can be bound again"));
    peer.send_to(b"late", relayed).unwrap();
    run_for_arrivals(&mut driver, 2, Duration::from_millis(200));
    assert_eq!(
        driver.machine().arrivals.len(),
        1,
        "nothing after the unbind"
    );

    // Binding again reuses the freed slot, and the new socket receives.
    driver
        .machine_mut()
        .requests
        .push_back(SocketRequest::Bind(relayed));
    driver.drain(|_, ()| {});
    peer.send_to(b"again", relayed).unwrap();
    run_for_arrivals(&mut driver, 2, Duration::from_secs(5));
    assert_eq!(driver.machine().arrivals[1], (relayed, b"again".to_vec()));
    assert_eq!(driver.stats().bound_on_request, 2);
    assert_eq!(driver.stats().bind_errors, 0);
}

#[test]
fn the_owner_binds_and_unbinds_and_the_cap_counts_only_open_sockets() {
    let config = Config::new().max_on_demand_sockets(1);
    let mut driver =
        Driver::with_config(Binder::default(), &[SocketAddr::new(V4, 0)], config).unwrap();
    let base = driver.local_addrs()[0];
    let peer = UdpSocket::bind((V4, 0)).unwrap();

    // Port 0 picks a free port, and the answer names it.
    let first = driver.bind(SocketAddr::new(V4, 0)).unwrap();
    assert_ne!(first.port(), 0);
    assert_eq!(
        driver.bind(first).unwrap(),
        first,
        "binding twice is no error"
    );
    peer.send_to(b"one", first).unwrap();
    run_for_arrivals(&mut driver, 1, Duration::from_secs(5));
    assert_eq!(driver.machine().arrivals, [(first, b"one".to_vec())]);

    // The cap is one extra socket: a second bind, by the owner or the machine, is refused.
    let second = free_port();
    assert!(driver.bind(second).is_err());
    driver
        .machine_mut()
        .requests
        .push_back(SocketRequest::Bind(second));
    driver.drain(|_, ()| {});
    assert_eq!(driver.stats().bind_errors, 1);
    assert_eq!(
        driver.machine().bind_errors,
        [second],
        "the machine is told"
    );
    assert_eq!(driver.local_addrs(), [base, first]);

    // The sockets the driver was built with stay; the extra one goes and frees its place.
    assert!(!driver.unbind(base));
    assert!(driver.unbind(first));
    assert!(!driver.unbind(first), "unbinding twice finds nothing");
    assert_eq!(driver.bind(second).unwrap(), second);
    assert_eq!(driver.local_addrs(), [base, second]);
    assert_eq!(driver.stats().unbound, 1);
}

#[test]
fn without_a_bind_a_datagram_to_a_fresh_address_is_not_received() {
    // The gap the requests close: the driver knows nothing of `fresh` until it sends from it.
    let mut driver = Driver::new(Binder::default(), &[SocketAddr::new(V4, 0)]).unwrap();
    let fresh = free_port();
    let peer = UdpSocket::bind((V4, 0)).unwrap();
    peer.send_to(b"lost", fresh).unwrap();
    run_for_arrivals(&mut driver, 1, Duration::from_millis(200));
    assert!(driver.machine().arrivals.is_empty());
    assert_eq!(driver.stats().received, 0);
}

#[test]
fn a_bind_of_a_taken_port_is_reported_to_the_machine() {
    let mut driver = Driver::new(Binder::default(), &[SocketAddr::new(V4, 0)]).unwrap();
    let taken = UdpSocket::bind((V4, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let wildcard = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4000);
    let machine = driver.machine_mut();
    machine.requests.push_back(SocketRequest::Bind(addr));
    machine.requests.push_back(SocketRequest::Bind(wildcard));
    driver.drain(|_, ()| {});
    assert_eq!(driver.machine().bind_errors, [addr, wildcard]);
    assert_eq!(driver.stats().bind_errors, 2);
    assert_eq!(driver.local_addrs().len(), 1);
}
