//! Counters of what the driver did with each datagram.

/// What a [`Driver`](crate::Driver) has done since it was built; read with
/// [`Driver::stats`](crate::Driver::stats).
///
/// Every datagram read and every transmit polled lands in exactly one outcome counter, so that a
/// datagram that went missing can be found here rather than in a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams read from the sockets.
    pub received: u64,
    /// Payload bytes of the datagrams read.
    pub received_bytes: u64,
    /// Datagrams read that the machine did not [`accept`](fog_core::SansIo::accepts); dropped.
    pub rejected: u64,
    /// Receive errors the OS derived from an ICMP message about an earlier datagram (connection
    /// refused or reset, host or network unreachable); the socket keeps working.
    pub icmp_errors: u64,
    /// Other receive errors; the socket is read again at its next readiness.
    pub recv_errors: u64,
    /// Datagrams handed to the OS.
    pub sent: u64,
    /// Payload bytes of the datagrams handed to the OS.
    pub sent_bytes: u64,
    /// Successful send system calls: one per datagram, or one per run of datagrams to one
    /// destination that the kernel cut apart (UDP segmentation offload); `sent / send_calls`
    /// is the batching achieved.
    pub send_calls: u64,
    /// Segmented sends the kernel refused (EIO or EINVAL: no offload on that path); their
    /// datagrams went again one by one, and so do the socket's later ones.
    pub segmentation_refused: u64,
    /// Successful receive system calls (`recvmmsg`, each of up to 8 buffers, a buffer possibly
    /// a GRO train of several datagrams); `received / recv_calls` is the batching achieved.
    pub recv_calls: u64,
    /// Transmits the OS refused to send (unreachable, message too long, ...); dropped.
    pub send_errors: u64,
    /// Transmits dropped because the socket's send buffer was full. UDP may drop; machines
    /// retransmit what matters.
    pub send_would_block: u64,
    /// Transmits dropped because no bound socket has the family of the destination: the source
    /// was `None` and no socket of that family was bound, or the source's family differs from the
    /// destination's.
    pub dropped_no_socket: u64,
    /// Transmits dropped because their source was not bound and could not be bound on demand:
    /// port 0, the on-demand cap reached, or the OS refused the bind.
    pub dropped_unknown_source: u64,
    /// Transmits dropped because the OS refused their TTL / hop-limit hint; they are not sent
    /// with a different TTL, since a punch probe with the default TTL could reach the peer's NAT.
    pub ttl_errors: u64,
    /// Sockets bound on demand for a transmit's source.
    pub bound_on_demand: u64,
    /// Sockets bound at a machine's [`SocketRequest::Bind`](fog_core::SocketRequest::Bind) or
    /// by [`Driver::bind`](crate::Driver::bind).
    pub bound_on_request: u64,
    /// Bind requests that failed: the OS refused, the cap was reached, or the address had no
    /// specific IP or port. Each is reported to the machine with
    /// [`handle_bind_error`](fog_core::SansIo::handle_bind_error).
    pub bind_errors: u64,
    /// Sockets closed by an unbind (a machine's request or [`Driver::unbind`](crate::Driver::unbind)).
    pub unbound: u64,
    /// Calls of [`handle_timeout`](fog_core::SansIo::handle_timeout).
    pub timeouts: u64,
}
