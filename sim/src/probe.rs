//! Raw probe machines: a socket a test drives by hand, and a reflector that tells a sender the
//! address it saw. They are the instruments the NAT tests and the preset survey observe with.
//!
//! The reflector speaks a tiny text protocol of the simulator's own (not STUN, which lives in
//! `fog-stun`): a request `PROBE` is answered with `SEEN <ip:port>` giving the source the request
//! arrived from; `PROBE FROM <ip:port>` asks for the answer to be sent from another of the
//! reflector's addresses, as RFC 5780's CHANGE-REQUEST does.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use fog_core::{Receive, SansIo, Transmit};

/// A datagram a [`RawSocket`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// When it arrived.
    pub at: Instant,
    /// The source as seen on arrival.
    pub source: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Outgoing {
    source: Option<SocketAddr>,
    destination: SocketAddr,
    ttl: Option<u8>,
    payload: Vec<u8>,
}

/// A host's sockets, driven by hand: queue datagrams with [`send`](Self::send), read what came back
/// from [`received`](Self::received). It accepts datagrams on every port.
#[derive(Debug, Clone, Default)]
pub struct RawSocket {
    outbox: VecDeque<Outgoing>,
    received: Vec<Datagram>,
}

impl RawSocket {
    /// A socket with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `payload` to `destination` from `source` (`None`: the host's default port; an
    /// unspecified IP: the host's address of the destination's family).
    pub fn send(&mut self, source: Option<SocketAddr>, destination: SocketAddr, payload: &[u8]) {
        self.send_with_ttl(source, destination, payload, None);
    }

    /// As [`send`](Self::send), with an IP TTL for this datagram.
    pub fn send_with_ttl(
        &mut self,
        source: Option<SocketAddr>,
        destination: SocketAddr,
        payload: &[u8],
        ttl: Option<u8>,
    ) {
        self.outbox.push_back(Outgoing {
            source,
            destination,
            ttl,
            payload: payload.to_vec(),
        });
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> &[Datagram] {
        &self.received
    }

    /// Everything received on local port `port`.
    pub fn received_on(&self, port: u16) -> impl Iterator<Item = &Datagram> {
        self.received.iter().filter(move |d| d.local.port() == port)
    }

    /// Forgets what was received.
    pub fn clear(&mut self) {
        self.received.clear();
    }
}

impl SansIo for RawSocket {
    type Event = Infallible;

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.received.push(Datagram {
            at: now,
            source: packet.source,
            local: packet.local,
            payload: packet.payload.to_vec(),
        });
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let out = self.outbox.pop_front()?;
        let len = out.payload.len().min(buf.len());
        buf[..len].copy_from_slice(&out.payload[..len]);
        let mut transmit = Transmit::new(out.destination, len);
        transmit.source = out.source;
        transmit.hints.ttl = out.ttl;
        Some(transmit)
    }

    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A server that answers `PROBE` with the source it saw, from any of its addresses on request.
#[derive(Debug, Clone)]
pub struct Reflector {
    serves: Vec<SocketAddr>,
    outbox: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    answered: u64,
    refused: u64,
}

/// The request prefix.
pub const PROBE: &[u8] = b"PROBE";
/// The answer prefix.
pub const SEEN: &[u8] = b"SEEN ";

impl Reflector {
    /// A reflector answering on each of `serves` (typically two IPs × two ports).
    pub fn new(serves: Vec<SocketAddr>) -> Self {
        Self {
            serves,
            outbox: VecDeque::new(),
            answered: 0,
            refused: 0,
        }
    }

    /// Requests answered.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Datagrams that were not a valid request, or asked for an address not served.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Builds a request, optionally asking for the answer to come from `from`.
    pub fn request(from: Option<SocketAddr>) -> Vec<u8> {
        match from {
            None => PROBE.to_vec(),
            Some(addr) => format!("PROBE FROM {addr}").into_bytes(),
        }
    }

    /// Reads the address out of an answer.
    pub fn parse_answer(payload: &[u8]) -> Option<SocketAddr> {
        std::str::from_utf8(payload.strip_prefix(SEEN)?)
            .ok()?
            .parse()
            .ok()
    }

    fn parse_request(&self, payload: &[u8], local: SocketAddr) -> Option<SocketAddr> {
        let rest = payload.strip_prefix(PROBE)?;
        if rest.is_empty() {
            return Some(local);
        }
        let from: SocketAddr = std::str::from_utf8(rest.strip_prefix(b" FROM ")?)
            .ok()?
            .parse()
            .ok()?;
        self.serves.contains(&from).then_some(from)
    }
}

impl SansIo for Reflector {
    type Event = Infallible;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        self.serves.contains(&packet.local)
    }

    fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
        match self.parse_request(packet.payload, packet.local) {
            Some(from) => {
                self.answered += 1;
                let answer = format!("SEEN {}", packet.source).into_bytes();
                self.outbox.push_back((from, packet.source, answer));
            }
            None => self.refused += 1,
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (from, to, payload) = self.outbox.pop_front()?;
        let len = payload.len().min(buf.len());
        buf[..len].copy_from_slice(&payload[..len]);
        Some(Transmit::new(to, len).from_source(from))
    }

    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflector_requests_round_trip_and_bad_ones_are_refused() {
        let a: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:3479".parse().unwrap();
        let r = Reflector::new(vec![a, b]);
        assert_eq!(r.parse_request(&Reflector::request(None), a), Some(a));
        assert_eq!(r.parse_request(&Reflector::request(Some(b)), a), Some(b));
        assert_eq!(
            r.parse_request(b"PROBE FROM 1.2.3.4:5", a),
            None,
            "not an address it serves"
        );
        assert_eq!(r.parse_request(b"PROBE FROM nonsense", a), None);
        assert_eq!(r.parse_request(b"PROBEX", a), None);
        assert_eq!(r.parse_request(b"", a), None);
        assert_eq!(
            Reflector::parse_answer(b"SEEN 10.0.0.1:40000"),
            Some("10.0.0.1:40000".parse().unwrap())
        );
        assert_eq!(Reflector::parse_answer(b"SEEN \xff"), None);
    }
}
