//! A blocking driver for `fog_portmap::PortMapper` on std sockets: one UDP socket for PCP,
//! NAT-PMP and SSDP, one `TcpStream` per HTTP exchange. Shared by the miniupnpd interop test
//! and the `portmap` example (`#[path]`), which are programs and may read the clock.

#![allow(clippy::disallowed_methods, dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo};
use fog_portmap::{Event, PortMapper, TcpCommand, TcpId, TcpInput};

/// The IPv4 default gateway from `/proc/net/route` (Linux).
pub(crate) fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 2 && fields[1] == "00000000" {
            let raw = u32::from_str_radix(fields[2], 16).ok()?;
            // The kernel prints the address in host (little-endian) order.
            Some(Ipv4Addr::from(raw.swap_bytes()))
        } else {
            None
        }
    })
}

/// The local address the kernel would use toward `gateway`.
pub(crate) fn local_ip_toward(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let probe = UdpSocket::bind("0.0.0.0:0")?;
    probe.connect((gateway, 5351))?;
    match probe.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(ErrorKind::Unsupported.into()),
    }
}

/// A mapper with its sockets.
pub(crate) struct Driver {
    pub(crate) mapper: PortMapper,
    udp: UdpSocket,
    local: SocketAddr,
    tcp: BTreeMap<TcpId, TcpStream>,
    buf: Vec<u8>,
}

impl Driver {
    /// Drives `mapper` from a fresh UDP socket on `local_ip`.
    pub(crate) fn new(mapper: PortMapper, local_ip: Ipv4Addr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind((local_ip, 0))?;
        let local = udp.local_addr()?;
        Ok(Self {
            mapper,
            udp,
            local,
            tcp: BTreeMap::new(),
            buf: vec![0; 65_535],
        })
    }

    /// Runs until `stop` returns true for an event or `deadline` passes; returns every
    /// event seen.
    pub(crate) fn run_until(
        &mut self,
        deadline: Instant,
        mut stop: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let now = Instant::now();
            // Drain: TCP commands, transmits, events, then wait for input or the timer.
            let mut progressed = false;
            while let Some(command) = self.mapper.poll_tcp() {
                self.tcp_command(now, command);
                progressed = true;
            }
            while let Some(t) = self.mapper.poll_transmit(now, &mut self.buf) {
                let _ = self.udp.send_to(&self.buf[..t.len], t.destination);
            }
            let mut done = false;
            while let Some(event) = self.mapper.poll_event() {
                done |= stop(&event);
                seen.push(event);
            }
            if done || now >= deadline {
                return seen;
            }
            // A TCP command's result (connected, failed) may have queued more output.
            if progressed {
                continue;
            }
            let wake = self.mapper.poll_timeout().unwrap_or(deadline).min(deadline);
            let wait = wake
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            let _ = self.udp.set_read_timeout(Some(wait));
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, source)) => {
                    let payload = self.buf[..n].to_vec();
                    let packet = Receive {
                        source,
                        local: self.local,
                        payload: &payload,
                    };
                    if self.mapper.accepts(&packet) {
                        self.mapper.handle_packet(Instant::now(), packet);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {}
            }
            self.read_tcp();
            let now = Instant::now();
            if self.mapper.poll_timeout().is_some_and(|t| t <= now) {
                self.mapper.handle_timeout(now);
            }
        }
    }

    fn tcp_command(&mut self, now: Instant, command: TcpCommand) {
        match command {
            TcpCommand::Connect { id, remote } => {
                match TcpStream::connect_timeout(&SocketAddr::V4(remote), Duration::from_secs(2)) {
                    Ok(stream) => {
                        let _ = stream.set_nonblocking(true);
                        self.tcp.insert(id, stream);
                        self.mapper.handle_tcp(now, id, TcpInput::Connected);
                    }
                    Err(_) => self.mapper.handle_tcp(now, id, TcpInput::Failed),
                }
            }
            TcpCommand::Send { id, data } => {
                let ok = self.tcp.get_mut(&id).is_some_and(|s| {
                    let _ = s.set_nonblocking(false);
                    let ok = s.write_all(&data).is_ok();
                    let _ = s.set_nonblocking(true);
                    ok
                });
                if !ok {
                    self.tcp.remove(&id);
                    self.mapper.handle_tcp(now, id, TcpInput::Failed);
                }
            }
            TcpCommand::Close { id } => {
                self.tcp.remove(&id);
            }
        }
    }

    fn read_tcp(&mut self) {
        let ids: Vec<TcpId> = self.tcp.keys().copied().collect();
        for id in ids {
            while let Some(stream) = self.tcp.get_mut(&id) {
                match stream.read(&mut self.buf) {
                    Ok(0) => {
                        self.tcp.remove(&id);
                        self.mapper.handle_tcp(Instant::now(), id, TcpInput::Closed);
                        break;
                    }
                    Ok(n) => {
                        let data = self.buf[..n].to_vec();
                        self.mapper
                            .handle_tcp(Instant::now(), id, TcpInput::Data(&data));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.tcp.remove(&id);
                        self.mapper.handle_tcp(Instant::now(), id, TcpInput::Failed);
                        break;
                    }
                }
            }
        }
    }
}

/// The internal address a mapping of `port` on this host's interface toward `gateway` uses.
pub(crate) fn internal_for(gateway: Ipv4Addr, port: u16) -> std::io::Result<SocketAddrV4> {
    Ok(SocketAddrV4::new(local_ip_toward(gateway)?, port))
}
