//! One bound UDP socket: created with socket2, driven through mio, with the per-datagram TTL hint.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockRef, Socket, Type};

/// The kernel buffer sizes to ask for; `None` keeps the OS default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BufferSizes {
    pub(crate) recv: Option<usize>,
    pub(crate) send: Option<usize>,
}

/// A nonblocking UDP socket and what the driver knows about it.
#[derive(Debug)]
pub(crate) struct UdpSlot {
    pub(crate) socket: mio::net::UdpSocket,
    /// The bound address with the port resolved; what [`fog_core::Receive::local`] reports.
    pub(crate) local: SocketAddr,
    /// The TTL / hop limit the OS gave the socket, restored after a hinted datagram.
    default_ttl: u32,
    /// The TTL / hop limit the socket carries now, so that only a change costs a system call.
    current_ttl: u32,
    /// Set while the socket may still hold datagrams the driver has not read: mio is
    /// edge-triggered, and a turn reads at most `read_budget` datagrams per socket.
    pub(crate) pending: bool,
    /// quinn-udp's view of the socket: whether the kernel takes UDP segmentation offload
    /// (`UDP_SEGMENT`; it forgets it after the first EIO or EINVAL of a segmented send), and
    /// the `sendmsg`/`recvmmsg` calls with their control messages (GRO's segment size).
    pub(crate) state: quinn_udp::UdpSocketState,
}

impl UdpSlot {
    /// Binds a nonblocking UDP socket to `addr`; an IPv6 socket is IPv6-only, so that IPv4
    /// traffic always arrives on (and leaves from) an IPv4 socket with a plain IPv4 address.
    pub(crate) fn bind(addr: SocketAddr, buffers: BufferSizes) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Best effort: the OS caps the size silently, and a refusal leaves a working socket
        // with its default buffers, which `buffer_sizes` then reports.
        if let Some(size) = buffers.recv {
            if let Err(e) = socket.set_recv_buffer_size(size) {
                tracing::warn!(%addr, size, error = %e, "SO_RCVBUF refused");
            }
        }
        if let Some(size) = buffers.send {
            if let Err(e) = socket.set_send_buffer_size(size) {
                tracing::warn!(%addr, size, error = %e, "SO_SNDBUF refused");
            }
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let local = socket.local_addr()?.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "bound UDP socket has no IP address",
            )
        })?;
        let default_ttl = match local {
            SocketAddr::V4(_) => socket.ttl_v4()?,
            SocketAddr::V6(_) => socket.unicast_hops_v6()?,
        };
        // Also turns on GRO where the kernel has it (datagrams of one flow may arrive joined,
        // with their segment size), packet info, and IP_PMTUDISC_PROBE: the don't-fragment
        // bit, with the interface's MTU as the limit. FogConnect's datagrams stay under 1,400
        // bytes (`fogconnect::MAX_DATAGRAM`) so that no path has to fragment them.
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket: mio::net::UdpSocket::from_std(socket.into()),
            local,
            default_ttl,
            current_ttl: default_ttl,
            pending: false,
            state,
        })
    }

    /// How many datagrams one segmented send may carry: 1 where the kernel has no UDP
    /// segmentation offload or refused it once.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// The receive and send buffer sizes the OS reports now.
    pub(crate) fn buffer_sizes(&self) -> io::Result<(usize, usize)> {
        let socket = SockRef::from(&self.socket);
        Ok((socket.recv_buffer_size()?, socket.send_buffer_size()?))
    }

    /// Gives the socket the TTL / hop limit `hint` asks for, or its default when `hint` is `None`.
    ///
    /// The default is restored lazily, before the next datagram that carries no hint, so a run of
    /// low-TTL punch probes costs one `setsockopt` to lower and one to restore rather than two per
    /// probe. Every datagram still leaves with exactly the TTL its transmit asked for.
    pub(crate) fn prepare_ttl(&mut self, hint: Option<u8>) -> io::Result<()> {
        let ttl = hint.map_or(self.default_ttl, u32::from);
        if ttl == self.current_ttl {
            return Ok(());
        }
        let socket = SockRef::from(&self.socket);
        match self.local {
            SocketAddr::V4(_) => socket.set_ttl_v4(ttl)?,
            SocketAddr::V6(_) => socket.set_unicast_hops_v6(ttl)?,
        }
        self.current_ttl = ttl;
        Ok(())
    }

    /// The TTL / hop limit the OS reports for the socket now (for tests).
    #[cfg(test)]
    pub(crate) fn os_ttl(&self) -> io::Result<u32> {
        let socket = SockRef::from(&self.socket);
        match self.local {
            SocketAddr::V4(_) => socket.ttl_v4(),
            SocketAddr::V6(_) => socket.unicast_hops_v6(),
        }
    }

    /// The TTL / hop limit the socket had when it was bound.
    #[cfg(test)]
    pub(crate) fn default_ttl(&self) -> u32 {
        self.default_ttl
    }
}
