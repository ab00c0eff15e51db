//! Datagrams leaving and arriving.

use std::net::SocketAddr;

/// Per-datagram hints a machine may attach to a [`Transmit`].
///
/// A driver honours what its platform allows and ignores the rest; the simulator honours all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TransmitHints {
    /// IP TTL (IPv4) or hop limit (IPv6) for this datagram only. A low TTL lets a first punch probe
    /// open our own NAT's binding yet die before it reaches the peer's NAT, so that the peer's NAT
    /// does not record an unsolicited inbound flow (see `shared/NAT-NOTES.md`).
    pub ttl: Option<u8>,
}

/// A datagram a machine wants sent. The payload was written into the caller's buffer by
/// [`SansIo::poll_transmit`](crate::SansIo::poll_transmit); it is `buf[..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The local address to send from. `None` means the driver's default socket for the
    /// destination's address family. A machine that opens several local ports (port-pattern
    /// discovery, birthday punching) names the port here; the driver binds it on first use.
    pub source: Option<SocketAddr>,
    /// Length of the payload written at the start of the caller's buffer.
    pub len: usize,
    /// Optional per-datagram hints.
    pub hints: TransmitHints,
}

impl Transmit {
    /// A transmit of `len` bytes to `destination` from the default source, without hints.
    pub fn new(destination: SocketAddr, len: usize) -> Self {
        Self {
            destination,
            source: None,
            len,
            hints: TransmitHints::default(),
        }
    }

    /// The same transmit sent from `source`.
    pub fn from_source(mut self, source: SocketAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// The same transmit with an IP TTL / hop limit of `ttl`.
    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.hints.ttl = Some(ttl);
        self
    }
}

/// A change a machine asks of the set of local addresses its driver receives on.
///
/// Most machines send from their driver's sockets and never need this: a driver binds a
/// [`Transmit::source`] it does not know yet on first use. That is too late for an address a
/// machine hands out before it sends from it — a TURN server's relayed address, to which a peer
/// may send before the server has sent anything from it — so such a machine asks for the bind
/// itself, through [`SansIo::poll_socket_request`](crate::SansIo::poll_socket_request), and asks
/// again for the unbind when the address is no longer its, so that sockets do not pile up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketRequest {
    /// Receive on this address from now on (a specific IP and a non-zero port). Binding an
    /// address that is already bound is not an error.
    Bind(SocketAddr),
    /// Stop receiving on this address, which an earlier `Bind` (or an on-demand bind) opened.
    /// Unbinding an address that is not bound is not an error.
    Unbind(SocketAddr),
}

/// A datagram that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receive<'a> {
    /// Who sent it, as seen on the wire (after any NAT on the way).
    pub source: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}
