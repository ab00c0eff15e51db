//! The driving contract every FogConnect protocol machine follows.

use std::time::Instant;

use crate::{Receive, SocketRequest, Transmit};

/// A sans-IO state machine: all input is a timestamp plus a datagram, a timeout or an application
/// command; all output is polled.
///
/// # Drain order
///
/// After **every** input (`handle_packet`, `handle_timeout`, or an application command of the
/// concrete machine) the driver:
///
/// 1. calls [`poll_socket_request`](Self::poll_socket_request) until it returns `None`, binding
///    and unbinding local addresses as asked;
/// 2. calls [`poll_transmit`](Self::poll_transmit) until it returns `None`, sending each datagram;
/// 3. calls [`poll_event`](Self::poll_event) until it returns `None`;
/// 4. reads [`poll_timeout`](Self::poll_timeout) and arms its timer for that instant.
///
/// Socket requests come first so that an address is bound before any datagram of the same
/// input (a TURN Allocate's answer, say) tells anyone about it. Transmits come before events so a
/// datagram produced by an input is on the wire before the application reacts to the matching
/// event; the timeout comes last because draining may change it. A driver calls `handle_timeout(now)` once `now >= poll_timeout()`. A machine must tolerate
/// an early or spurious `handle_timeout` (it simply finds nothing due).
///
/// `now` never goes backwards between calls on one machine. The machine never reads a clock
/// or an OS random source; randomness comes from a seed in its config.
///
/// A parent machine drives its children inside its own `handle_*` calls, so a driver always sees
/// one machine.
pub trait SansIo {
    /// What the machine reports to the application.
    type Event;

    /// Whether this datagram belongs to this machine, for drivers that share one socket
    /// between several machines. Must not change state. The default accepts everything.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        let _ = packet;
        true
    }

    /// Feed one datagram that arrived at `now`.
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>);

    /// Feed one datagram of several the driver read at once (one `recvmmsg`), `more` saying
    /// whether others of the same read follow. The driver drains after each, as after
    /// [`handle_packet`](Self::handle_packet). While `more` is true a machine may hold back
    /// output that the following datagrams would make redundant, such as an acknowledgement
    /// (quinn's own endpoint answers all that one read brought with one: RFC 9000 §13.2.2's
    /// ACK after every second packet is a SHOULD, and the batch is far within §13.2.1's
    /// `max_ack_delay`), and releases it at the call with `more` false or at any other input.
    /// The default is `handle_packet`.
    fn handle_packet_of_batch(&mut self, now: Instant, packet: Receive<'_>, more: bool) {
        let _ = more;
        self.handle_packet(now, packet);
    }

    /// Tell the machine that `now` has come; it fires every timer that is due.
    fn handle_timeout(&mut self, now: Instant);

    /// The next change to the local addresses the machine receives on, or `None`. The default
    /// asks for none: a machine that only sends from addresses it names in
    /// [`Transmit::source`] can rely on the driver binding them on first use. A driver that
    /// cannot bind (the simulator, where every port of a host receives) drains and ignores these.
    /// A bind that fails is reported back with [`handle_bind_error`](Self::handle_bind_error).
    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        None
    }

    /// The driver could not bind `addr`, which the machine asked for with
    /// [`SocketRequest::Bind`] (another process has the port, say). The driver calls it at once,
    /// while it drains socket requests, so the machine can still change what it was about to
    /// send (a TURN server picks another relayed port before its Allocate answer leaves); any
    /// requests and transmits it queues are drained as usual. The default ignores it.
    fn handle_bind_error(&mut self, now: Instant, addr: std::net::SocketAddr) {
        let _ = (now, addr);
    }

    /// Write the next datagram to send into `buf` and describe it, or `None` when there is
    /// nothing to send. `buf` is at least 65,535 bytes long when driven by fog-mio or fog-sim;
    /// a machine whose datagram does not fit in `buf` must report that as an event rather than
    /// truncate it.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;

    /// The next event for the application, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// When the machine next wants `handle_timeout`, or `None` if it waits only for input.
    fn poll_timeout(&self) -> Option<Instant>;
}
