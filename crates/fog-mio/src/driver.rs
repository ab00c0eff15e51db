//! The event loop: sockets in, the machine's drain order out, the timer armed in between.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use mio::{Events, Interest, Poll, Token};

use crate::socket::UdpSlot;
use crate::{Handle, Stats};

/// The largest UDP payload an IPv4 or IPv6 datagram can carry without jumbograms, and the
/// buffer size the [`SansIo::poll_transmit`] contract promises.
const BUF_LEN: usize = 65_535;

/// Datagrams one `recvmmsg` call may return, each into a buffer of [`BUF_LEN`] bytes (one of
/// them may hold a GRO train of up to 64 KiB). quinn-udp takes at most 32 per call.
const RECV_BATCH: usize = 8;

/// The payload bytes one segmented send may carry: the kernel refuses a UDP send longer than
/// 65,535 bytes with its headers (RFC 768's 16-bit length; IPv6's 40-byte header).
const MAX_RUN_BYTES: usize = 65_535 - 8 - 40;

/// The most datagrams in one segmented send (Linux's `UDP_MAX_SEGMENTS`).
const MAX_RUN_SEGMENTS: usize = 64;

/// The waker's token; socket tokens are indexes into the socket table, which the on-demand cap
/// keeps far below this.
const WAKER: Token = Token(usize::MAX);

/// mio events read per `poll`; sockets with more readiness are picked up at the next turn.
const EVENTS_CAPACITY: usize = 256;

/// Limits of a [`Driver`]; [`Config::default`] suits most uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    max_on_demand_sockets: usize,
    read_budget: usize,
    buffers: crate::socket::BufferSizes,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_on_demand_sockets: 1024,
            read_budget: 64,
            buffers: crate::socket::BufferSizes::default(),
        }
    }
}

impl Config {
    /// The default limits: 1,024 on-demand sockets, 64 datagrams per socket per turn.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sockets the driver keeps open beyond those it was built with: bound on demand
    /// for transmits whose source is not bound yet (port-pattern discovery, birthday punching),
    /// by a machine's [`SocketRequest::Bind`] (a TURN server's relayed addresses) or by
    /// [`Driver::bind`]. A transmit that would exceed the cap is dropped, counted in
    /// [`Stats::dropped_unknown_source`] and logged; a bind that would is refused and counted in
    /// [`Stats::bind_errors`]. Unbound sockets no longer count. The cap keeps a misbehaving
    /// machine from exhausting file descriptors; 1,024 covers a birthday punch's few hundred
    /// ports.
    pub fn max_on_demand_sockets(mut self, max: usize) -> Self {
        self.max_on_demand_sockets = max;
        self
    }

    /// How many datagrams a turn reads from one socket before it moves on; a socket with more
    /// waiting is read again at the next turn, which then does not block. The budget keeps a
    /// flooded socket from starving the timer and the other sockets.
    ///
    /// # Panics
    ///
    /// If `budget` is 0.
    pub fn read_budget(mut self, budget: usize) -> Self {
        assert!(budget > 0, "a read budget of 0 would never read a datagram");
        self.read_budget = budget;
        self
    }

    /// The kernel receive and send buffer sizes (`SO_RCVBUF`, `SO_SNDBUF`) to ask for on every
    /// socket the driver binds, at construction and later; `None` keeps the OS default (Linux:
    /// `net.core.rmem_default`, about 208 KiB, which a server's burst overflows). The OS may
    /// grant less (Linux caps at `net.core.rmem_max` / `wmem_max`) or report more (Linux doubles
    /// the value for its bookkeeping); [`Driver::buffer_sizes`] tells what it granted. A refusal
    /// is not an error: the socket keeps what it had.
    pub fn socket_buffers(mut self, recv: Option<usize>, send: Option<usize>) -> Self {
        self.buffers = crate::socket::BufferSizes { recv, send };
        self
    }
}

/// Whether a driver is still running after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Keep stepping.
    Running,
    /// [`Handle::shutdown`] was called; the driver will do no more waiting.
    Shutdown,
}

/// Runs one [`SansIo`] machine on real UDP sockets with a mio event loop.
///
/// The driver owns the machine, the sockets, the clock and the buffers reused for every
/// datagram: eight receive buffers of 65,535 bytes for one `recvmmsg`, and a transmit
/// buffer where a run of datagrams to one destination is gathered for one segmented send (each
/// `poll_transmit` still gets 65,535 bytes). Each input is followed by the drain order of
/// [`SansIo`]: transmits, then events (handed to the `on_event` callback), then the next
/// deadline arms the poll timeout.
pub struct Driver<M: SansIo> {
    machine: M,
    io: Io,
    recv_buf: Box<[u8]>,
    send_buf: Box<[u8]>,
}

/// Everything but the machine and the buffers, so that the machine, a buffer and the sockets
/// can be borrowed at once.
struct Io {
    poll: Poll,
    events: Events,
    /// Indexed by token; `None` where a socket was unbound, until a new bind reuses the slot.
    sockets: Vec<Option<UdpSlot>>,
    /// Empty slots of `sockets`.
    free: Vec<usize>,
    /// Bound addresses in binding order, for [`Driver::local_addrs`].
    addrs: Vec<SocketAddr>,
    by_addr: BTreeMap<SocketAddr, usize>,
    /// How many sockets were bound at construction (slots `0..configured`, never unbound).
    configured: usize,
    default_v4: Option<usize>,
    default_v6: Option<usize>,
    /// Sockets with `pending` set, in the order they became readable.
    pending: Vec<usize>,
    /// Datagrams polled but not sent yet, at the start of the transmit buffer.
    run: Option<Run>,
    config: Config,
    stats: Stats,
    handle: Handle,
}

impl<M: SansIo> Driver<M> {
    /// Binds a UDP socket on each of `local` (port 0 picks a free port) and returns a driver
    /// for `machine` with the default [`Config`].
    ///
    /// The first address of each family is the default source for transmits whose
    /// [`source`](Transmit::source) is `None`.
    pub fn new(machine: M, local: &[SocketAddr]) -> io::Result<Self> {
        Self::with_config(machine, local, Config::default())
    }

    /// [`new`](Self::new) with explicit limits.
    pub fn with_config(machine: M, local: &[SocketAddr], config: Config) -> io::Result<Self> {
        let poll = Poll::new()?;
        let handle = Handle::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut io = Io {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            sockets: Vec::with_capacity(local.len()),
            free: Vec::new(),
            addrs: Vec::with_capacity(local.len()),
            by_addr: BTreeMap::new(),
            configured: 0,
            default_v4: None,
            default_v6: None,
            pending: Vec::new(),
            run: None,
            config,
            stats: Stats::default(),
            handle,
        };
        for &addr in local {
            io.bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
        }
        io.configured = io.sockets.len();
        Ok(Self {
            machine,
            io,
            recv_buf: vec![0; RECV_BATCH * BUF_LEN].into_boxed_slice(),
            send_buf: vec![0; MAX_RUN_BYTES + BUF_LEN].into_boxed_slice(),
        })
    }

    /// The addresses of every bound socket with their ports resolved: first those the driver was
    /// built with, in the order given, then those bound since, in binding order (unbound ones
    /// left out).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.io.addrs
    }

    /// Binds a socket on `addr` now, so that datagrams to it are received before the machine
    /// sends anything from it; returns the bound address (port 0 picks a free port). Binding an
    /// address that is already bound returns it unchanged. Counts against
    /// [`Config::max_on_demand_sockets`].
    ///
    /// Machines ask for the same through [`SansIo::poll_socket_request`], which the driver
    /// carries out first in every drain; this is for the driver's owner.
    ///
    /// # Errors
    ///
    /// The OS's bind error (its message names `addr`), or an error of kind
    /// [`io::ErrorKind::Other`] when the cap is reached.
    pub fn bind(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.io.bind_extra(addr)
    }

    /// Closes the socket bound on `addr` since the driver was built (by [`bind`](Self::bind), a
    /// machine's request or on demand); returns whether there was one. The sockets the driver
    /// was built with stay: they are the default sources.
    pub fn unbind(&mut self, addr: SocketAddr) -> bool {
        self.io.unbind(addr)
    }

    /// The receive and send buffer sizes the OS reports for the socket bound on `addr` (see
    /// [`Config::socket_buffers`]); `None` when no socket is bound there or the OS does not say.
    pub fn buffer_sizes(&self, addr: SocketAddr) -> Option<(usize, usize)> {
        let index = *self.io.by_addr.get(&addr)?;
        self.io.sockets.get(index)?.as_ref()?.buffer_sizes().ok()
    }

    /// A handle that wakes or stops this driver from another thread.
    pub fn handle(&self) -> Handle {
        self.io.handle.clone()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.io.stats
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, to issue application commands between turns. Call [`drain`](Self::drain)
    /// after a command so its output leaves at once; the next turn drains it otherwise.
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// Gives the machine back, dropping the sockets.
    pub fn into_machine(self) -> M {
        self.machine
    }

    /// Drains the machine as [`SansIo`] requires after an input: sends every transmit, then
    /// hands every event to `on_event`. Call it after issuing commands through
    /// [`machine_mut`](Self::machine_mut).
    ///
    /// `on_event` may issue commands on the machine it is given; their transmits and events are
    /// drained once the current batch of events has been delivered.
    pub fn drain(&mut self, mut on_event: impl FnMut(&mut M, M::Event)) {
        self.drain_at(Instant::now(), &mut on_event);
    }

    /// Runs until [`Handle::shutdown`] is called (returning at once if it already was).
    ///
    /// Errors are those of `poll` itself, which leave the driver unusable; errors of single
    /// datagrams are counted in [`Stats`] and never end the loop.
    pub fn run(&mut self, mut on_event: impl FnMut(&mut M, M::Event)) -> io::Result<()> {
        while self.turn(None, &mut on_event)? == Status::Running {}
        Ok(())
    }

    /// Runs until `deadline` has passed or the driver is shut down, whichever comes first.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut on_event: impl FnMut(&mut M, M::Event),
    ) -> io::Result<Status> {
        loop {
            if self.io.handle.is_shutdown() {
                return Ok(Status::Shutdown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Status::Running);
            }
            if self.turn(Some(deadline - now), &mut on_event)? == Status::Shutdown {
                return Ok(Status::Shutdown);
            }
        }
    }

    /// One iteration of the loop:
    ///
    /// 1. drains output of commands issued since the last turn;
    /// 2. waits for readiness, a [`Handle`], the machine's [`poll_timeout`](SansIo::poll_timeout)
    ///    or `max_wait`, whichever comes first (`None` waits without a limit of its own; a socket
    ///    left with unread datagrams makes the wait zero);
    /// 3. reads each ready socket, feeding every accepted datagram to
    ///    [`handle_packet_of_batch`](SansIo::handle_packet_of_batch) (which says whether more
    ///    of the same `recvmmsg` follow) and sending its transmits after each,
    ///    and taking its events after each socket's batch (at most the read budget);
    /// 4. calls [`handle_timeout`](SansIo::handle_timeout) once if the deadline has come, and
    ///    drains.
    ///
    /// An interrupted wait (`EINTR`) is an empty turn. After shutdown the turn does not wait.
    pub fn turn(
        &mut self,
        max_wait: Option<Duration>,
        mut on_event: impl FnMut(&mut M, M::Event),
    ) -> io::Result<Status> {
        let now = Instant::now();
        self.drain_at(now, &mut on_event);
        if self.io.handle.is_shutdown() {
            return Ok(Status::Shutdown);
        }

        let wait = self.wait(now, max_wait);
        match self.io.poll.poll(&mut self.io.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.io.events.clear(),
            Err(e) => return Err(e),
        }
        for event in self.io.events.iter() {
            // The waker's only message is "return from poll": the shutdown flag says the rest.
            if event.token() == WAKER {
                continue;
            }
            let index = event.token().0;
            if let Some(Some(slot)) = self.io.sockets.get_mut(index) {
                if !slot.pending {
                    slot.pending = true;
                    self.io.pending.push(index);
                }
            }
        }

        let mut pending = std::mem::take(&mut self.io.pending);
        pending.retain(|&index| self.read_socket(index, &mut on_event));
        // Sockets bound while reading cannot have been marked pending meanwhile: marking happens
        // only above, and `unbind` removes its index from `io.pending`, which is empty here.
        debug_assert!(self.io.pending.is_empty());
        self.io.pending = pending;

        let now = Instant::now();
        if self.machine.poll_timeout().is_some_and(|due| due <= now) {
            self.io.stats.timeouts += 1;
            self.machine.handle_timeout(now);
            self.drain_at(now, &mut on_event);
        }

        Ok(if self.io.handle.is_shutdown() {
            Status::Shutdown
        } else {
            Status::Running
        })
    }

    /// How long `poll` may block.
    fn wait(&self, now: Instant, max_wait: Option<Duration>) -> Option<Duration> {
        if !self.io.pending.is_empty() {
            return Some(Duration::ZERO);
        }
        let until_due = self
            .machine
            .poll_timeout()
            .map(|due| due.saturating_duration_since(now));
        match (until_due, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads up to the read budget from socket `index`; returns whether it may hold more.
    /// After each datagram the machine's socket requests and transmits go out (acks leave
    /// at once); its events are taken once, after the batch, so a machine that joins what
    /// arrives meanwhile (a byte stream's data) hands over one event, not one per datagram,
    /// each of which could wake another thread.
    fn read_socket(&mut self, index: usize, on_event: &mut impl FnMut(&mut M, M::Event)) -> bool {
        let more = self.read_batch(index);
        self.drain_at(Instant::now(), on_event);
        more
    }

    /// [`read_socket`](Self::read_socket) without the events. The transmits of the whole batch
    /// are gathered (a run to one destination leaves in one segmented send) and sent before it
    /// returns.
    fn read_batch(&mut self, index: usize) -> bool {
        let more = self.read_batch_unsent(index);
        self.io.flush(&self.send_buf);
        more
    }

    /// Reads with `recvmmsg`, up to [`RECV_BATCH`] buffers per call, each possibly a GRO train
    /// of datagrams of one size from one source, cut apart here; every datagram goes to the
    /// machine on its own, as before.
    ///
    /// A socket unbound by an earlier datagram's drain in the same turn is skipped; one bound in
    /// its slot meanwhile is simply read (nothing is lost: it is nonblocking).
    fn read_batch_unsent(&mut self, index: usize) -> bool {
        let mut budget = self.io.config.read_budget;
        while budget > 0 {
            let Some(Some(slot)) = self.io.sockets.get_mut(index) else {
                return false;
            };
            let local = slot.local;
            let mut meta = [quinn_udp::RecvMeta::default(); RECV_BATCH];
            let result = {
                let mut chunks = self.recv_buf.chunks_mut(BUF_LEN);
                let mut bufs: [io::IoSliceMut<'_>; RECV_BATCH] =
                    std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
                let wanted = budget.min(RECV_BATCH);
                slot.state.recv(
                    (&slot.socket).into(),
                    &mut bufs[..wanted],
                    &mut meta[..wanted],
                )
            };
            match result {
                Ok(count) => {
                    self.io.stats.recv_calls += 1;
                    // How many datagrams this read brought: the machine hears which is the
                    // last (`handle_packet_of_batch`), so it may answer them all at once.
                    let mut left: usize = meta
                        .iter()
                        .take(count)
                        .map(|m| match (m.len.min(BUF_LEN), m.stride) {
                            (0, _) => 0,
                            (_, 0) => 1,
                            (len, stride) => len.div_ceil(stride),
                        })
                        .sum();
                    for (i, meta) in meta.iter().enumerate().take(count) {
                        let start = i * BUF_LEN;
                        let Some(train) = self.recv_buf.get(start..start + meta.len.min(BUF_LEN))
                        else {
                            continue;
                        };
                        // GRO: datagrams of `stride` bytes, the last one possibly shorter.
                        let stride = if meta.stride == 0 {
                            train.len().max(1)
                        } else {
                            meta.stride
                        };
                        for payload in train.chunks(stride) {
                            budget = budget.saturating_sub(1);
                            left = left.saturating_sub(1);
                            let now = Instant::now();
                            self.io.stats.received += 1;
                            self.io.stats.received_bytes += payload.len() as u64;
                            let packet = Receive {
                                source: meta.addr,
                                local,
                                payload,
                            };
                            if self.machine.accepts(&packet) {
                                self.machine.handle_packet_of_batch(now, packet, left > 0);
                                send_all(&mut self.machine, &mut self.io, &mut self.send_buf, now);
                            } else {
                                self.io.stats.rejected += 1;
                                tracing::trace!(source = %meta.addr, %local, len = payload.len(), "datagram not accepted by the machine");
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.pending = false;
                    return false;
                }
                // A signal arrived mid-call; the datagram, if any, is still queued.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_icmp_error(&e) => {
                    // An ICMP error about an earlier datagram (Windows reports these on
                    // unconnected sockets; Linux only with IP_RECVERR). Consuming it is enough.
                    budget -= 1;
                    self.io.stats.icmp_errors += 1;
                    tracing::debug!(%local, error = %e, "ICMP error on receive");
                }
                Err(e) => {
                    self.io.stats.recv_errors += 1;
                    tracing::warn!(%local, error = %e, "receive failed; reading again at the next readiness");
                    slot.pending = false;
                    return false;
                }
            }
        }
        true
    }

    fn drain_at(&mut self, now: Instant, on_event: &mut impl FnMut(&mut M, M::Event)) {
        drain(
            &mut self.machine,
            &mut self.io,
            &mut self.send_buf,
            now,
            on_event,
        );
    }
}

/// The [`SansIo`] drain order: every socket request, every transmit, then every event; again
/// while the event callback issued commands.
fn drain<M: SansIo>(
    machine: &mut M,
    io: &mut Io,
    buf: &mut [u8],
    mut now: Instant,
    on_event: &mut impl FnMut(&mut M, M::Event),
) {
    loop {
        send_all(machine, io, buf, now);
        io.flush(buf);
        let mut delivered = false;
        while let Some(event) = machine.poll_event() {
            delivered = true;
            on_event(machine, event);
        }
        if !delivered {
            return;
        }
        // The callback may have issued commands with a later `now` of its own; never hand the
        // machine an earlier one after that.
        now = Instant::now();
    }
}

/// The first half of the drain order: every socket request, then every transmit.
///
/// Transmits join the run gathered at the start of `buf` (each is polled into the 65,535 bytes
/// after it); a run leaves when the next transmit cannot join it, before a socket request (an
/// unbind must not overtake a datagram queued from that socket) and at [`Io::flush`], which the
/// caller calls once the input's batch is done.
fn send_all<M: SansIo>(machine: &mut M, io: &mut Io, buf: &mut [u8], now: Instant) {
    while let Some(request) = machine.poll_socket_request() {
        io.flush(buf);
        if let Err(addr) = io.carry_out(request) {
            machine.handle_bind_error(now, addr);
        }
    }
    loop {
        let start = io.run.map_or(0, |run| run.bytes);
        let Some(space) = buf.get_mut(start..start + BUF_LEN) else {
            debug_assert!(false, "a run leaves before it reaches the buffer's end");
            io.flush(buf);
            continue;
        };
        let Some(transmit) = machine.poll_transmit(now, space) else {
            return;
        };
        io.queue(&transmit, buf);
    }
}

/// Datagrams to one destination from one socket with one TTL, gathered at the start of the
/// transmit buffer for one segmented send (UDP GSO): all of `segment` bytes but the last,
/// which may be shorter and then ends the run.
#[derive(Debug, Clone, Copy)]
struct Run {
    socket: usize,
    destination: SocketAddr,
    ttl: Option<u8>,
    segment: usize,
    bytes: usize,
    count: usize,
    /// A shorter datagram ended it, or the socket takes no more per send.
    closed: bool,
}

impl Run {
    fn takes(&self, socket: usize, transmit: &Transmit) -> bool {
        !self.closed
            && self.socket == socket
            && self.destination == transmit.destination
            && self.ttl == transmit.hints.ttl
            && transmit.len <= self.segment
            && self.bytes + transmit.len <= MAX_RUN_BYTES
    }
}

impl Run {
    fn new(socket: usize, transmit: &Transmit) -> Self {
        Self {
            socket,
            destination: transmit.destination,
            ttl: transmit.hints.ttl,
            segment: transmit.len,
            bytes: transmit.len,
            count: 1,
            closed: false,
        }
    }
}

/// One `sendmsg` of `contents`: one datagram, or datagrams of `segment` bytes cut by the kernel
/// (the last may be shorter) when `segmented`. Counts the outcome; a segmented send's error is
/// returned so that the caller can send its datagrams one by one.
fn send_datagrams(
    slot: &crate::socket::UdpSlot,
    stats: &mut Stats,
    destination: SocketAddr,
    contents: &[u8],
    segment: usize,
    segmented: bool,
) -> io::Result<()> {
    let count = if segmented {
        contents.len().div_ceil(segment) as u64
    } else {
        1
    };
    let transmit = quinn_udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size: segmented.then_some(segment),
        src_ip: None,
    };
    // `try_send` retries EINTR itself.
    match slot.state.try_send((&slot.socket).into(), &transmit) {
        Ok(()) => {
            stats.sent += count;
            stats.sent_bytes += contents.len() as u64;
            stats.send_calls += 1;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            stats.send_would_block += count;
            tracing::debug!(local = %slot.local, %destination, count, "send buffer full; transmit dropped");
            Ok(())
        }
        Err(e) if segmented => {
            stats.send_errors += count;
            tracing::debug!(local = %slot.local, %destination, count, error = %e, "segmented send failed");
            Err(e)
        }
        Err(e) => {
            stats.send_errors += 1;
            tracing::debug!(local = %slot.local, %destination, error = %e, "send failed; transmit dropped");
            Ok(())
        }
    }
}

/// Receive errors that report an ICMP message about an earlier send rather than a broken socket.
fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

impl Io {
    /// Binds a socket on `addr`, registers it and records it; returns its index.
    fn bind(&mut self, addr: SocketAddr) -> io::Result<usize> {
        let mut slot = UdpSlot::bind(addr, self.config.buffers)?;
        let index = self.free.pop().unwrap_or(self.sockets.len());
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut slot.socket, Token(index), Interest::READABLE)
        {
            if index < self.sockets.len() {
                self.free.push(index);
            }
            return Err(e);
        }
        let local = slot.local;
        match local {
            SocketAddr::V4(_) => self.default_v4.get_or_insert(index),
            SocketAddr::V6(_) => self.default_v6.get_or_insert(index),
        };
        self.by_addr.insert(local, index);
        self.addrs.push(local);
        if index == self.sockets.len() {
            self.sockets.push(Some(slot));
        } else {
            self.sockets[index] = Some(slot);
        }
        Ok(index)
    }

    /// Sockets open beyond those the driver was built with.
    fn extra_sockets(&self) -> usize {
        self.by_addr.len() - self.configured
    }

    /// Binds `addr` for [`Driver::bind`] or a [`SocketRequest::Bind`], within the cap.
    fn bind_extra(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        if let Some(&index) = self.by_addr.get(&addr) {
            return Ok(self.addrs_of(index).unwrap_or(addr));
        }
        if self.extra_sockets() >= self.config.max_on_demand_sockets {
            return Err(io::Error::other(format!(
                "binding UDP {addr}: the driver's cap of {} extra sockets is reached",
                self.config.max_on_demand_sockets
            )));
        }
        let index = self
            .bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
        self.stats.bound_on_request += 1;
        Ok(self.addrs_of(index).unwrap_or(addr))
    }

    fn addrs_of(&self, index: usize) -> Option<SocketAddr> {
        self.sockets.get(index)?.as_ref().map(|slot| slot.local)
    }

    /// Closes the socket on `addr` if it is one bound after construction.
    fn unbind(&mut self, addr: SocketAddr) -> bool {
        let Some(&index) = self.by_addr.get(&addr) else {
            return false;
        };
        debug_assert!(
            self.run.is_none_or(|run| run.socket != index),
            "a run is sent before any socket request is carried out"
        );
        if index < self.configured {
            tracing::warn!(%addr, "refusing to unbind a socket the driver was built with");
            return false;
        }
        let Some(mut slot) = self.sockets.get_mut(index).and_then(Option::take) else {
            return false;
        };
        // Closing the descriptor removes it from epoll/kqueue too; deregistering first is what
        // mio asks for, and its error changes nothing.
        let _ = self.poll.registry().deregister(&mut slot.socket);
        self.by_addr.remove(&addr);
        self.addrs.retain(|&a| a != addr);
        self.pending.retain(|&i| i != index);
        self.free.push(index);
        if self.default_v4 == Some(index) {
            self.default_v4 = self.first_of_family(true);
        }
        if self.default_v6 == Some(index) {
            self.default_v6 = self.first_of_family(false);
        }
        self.stats.unbound += 1;
        true
    }

    /// The lowest-indexed bound socket of one family, the default source once the previous
    /// default is unbound.
    fn first_of_family(&self, v4: bool) -> Option<usize> {
        self.sockets
            .iter()
            .position(|slot| slot.as_ref().is_some_and(|s| s.local.is_ipv4() == v4))
    }

    /// Carries out a machine's socket request; a failed bind is counted, logged and returned
    /// with its address, for [`SansIo::handle_bind_error`].
    fn carry_out(&mut self, request: SocketRequest) -> Result<(), SocketAddr> {
        match request {
            SocketRequest::Bind(addr) if addr.port() == 0 || addr.ip().is_unspecified() => {
                self.stats.bind_errors += 1;
                tracing::warn!(%addr, "bind request without a specific IP and port; refused");
                Err(addr)
            }
            SocketRequest::Bind(addr) => match self.bind_extra(addr) {
                Ok(_) => {
                    tracing::debug!(%addr, "bound at the machine's request");
                    Ok(())
                }
                Err(e) => {
                    self.stats.bind_errors += 1;
                    tracing::warn!(error = %e, "a bind the machine asked for failed");
                    Err(addr)
                }
            },
            SocketRequest::Unbind(addr) => {
                if self.unbind(addr) {
                    tracing::debug!(%addr, "unbound at the machine's request");
                }
                Ok(())
            }
        }
    }

    /// Adds a transmit just polled (its payload in `buf` at the end of the run, or at 0) to
    /// the run, or sends the run and starts a new one with it; sends the run at once when it
    /// cannot grow.
    fn queue(&mut self, transmit: &Transmit, buf: &mut [u8]) {
        let start = self.run.map_or(0, |run| run.bytes);
        if transmit.len > BUF_LEN {
            self.stats.send_errors += 1;
            tracing::warn!(
                len = transmit.len,
                "transmit longer than the buffer it was written into; dropped"
            );
            return;
        }
        if transmit.len == 0 {
            // A segmented send cannot carry it; alone it is an empty datagram.
            self.flush(buf);
            if let Some(socket) = self.socket_for(transmit) {
                self.run = Some(Run::new(socket, transmit));
                self.flush(buf);
            }
            return;
        }
        let Some(socket) = self.socket_for(transmit) else {
            return;
        };
        match &mut self.run {
            Some(run) if run.takes(socket, transmit) => {
                run.bytes += transmit.len;
                run.count += 1;
                run.closed = transmit.len < run.segment;
            }
            Some(_) => {
                self.flush(buf);
                buf.copy_within(start..start + transmit.len, 0);
                self.run = Some(Run::new(socket, transmit));
            }
            None => self.run = Some(Run::new(socket, transmit)),
        }
        let max_segments = match self.sockets.get(socket) {
            Some(Some(slot)) => slot.max_segments().min(MAX_RUN_SEGMENTS),
            _ => 1,
        };
        if let Some(run) = &mut self.run {
            run.closed |= run.count >= max_segments;
            if run.closed || run.bytes + run.segment > MAX_RUN_BYTES {
                self.flush(buf);
            }
        }
    }

    /// Sends the run gathered at the start of `buf`, if any: one `sendmsg`, segmented when it
    /// holds several datagrams. A kernel that refuses segmentation offload (EIO where the
    /// device cannot checksum it, EINVAL for a size it will not cut) makes quinn-udp remember
    /// it for the socket; the run is then sent again one datagram at a time, and so is every
    /// later one.
    fn flush(&mut self, buf: &[u8]) {
        let Some(run) = self.run.take() else {
            return;
        };
        let Some(Some(slot)) = self.sockets.get_mut(run.socket) else {
            debug_assert!(false, "a run's socket left before the run was sent");
            self.stats.dropped_no_socket += run.count as u64;
            return;
        };
        if let Err(e) = slot.prepare_ttl(run.ttl) {
            self.stats.ttl_errors += run.count as u64;
            tracing::warn!(ttl = ?run.ttl, local = %slot.local, error = %e, "TTL hint refused; transmit dropped");
            return;
        }
        let contents = &buf[..run.bytes];
        let segmented = run.count > 1;
        match send_datagrams(
            slot,
            &mut self.stats,
            run.destination,
            contents,
            run.segment,
            segmented,
        ) {
            Err(_) if segmented && slot.max_segments() <= 1 => {
                self.stats.segmentation_refused += 1;
                tracing::info!(local = %slot.local, "the kernel refused UDP segmentation offload; sending one datagram at a time");
                for datagram in contents.chunks(run.segment) {
                    let _ = send_datagrams(
                        slot,
                        &mut self.stats,
                        run.destination,
                        datagram,
                        run.segment,
                        false,
                    );
                }
            }
            _ => {}
        }
    }
    /// The socket a transmit leaves from, binding its source on demand; `None` (counted and
    /// logged) when there is none.
    fn socket_for(&mut self, transmit: &Transmit) -> Option<usize> {
        let destination = transmit.destination;
        let Some(source) = transmit.source else {
            let default = if destination.is_ipv4() {
                self.default_v4
            } else {
                self.default_v6
            };
            if default.is_none() {
                self.stats.dropped_no_socket += 1;
                tracing::warn!(%destination, "no socket of the destination's address family; transmit dropped");
            }
            return default;
        };
        if source.is_ipv4() != destination.is_ipv4() {
            self.stats.dropped_no_socket += 1;
            tracing::warn!(%source, %destination, "source and destination address families differ; transmit dropped");
            return None;
        }
        if let Some(&index) = self.by_addr.get(&source) {
            return Some(index);
        }
        if source.port() == 0 {
            // Binding port 0 would pick a new port per transmit, which no machine can name again.
            self.stats.dropped_unknown_source += 1;
            tracing::warn!(%source, "transmit source has port 0 and is not bound; dropped");
            return None;
        }
        if self.extra_sockets() >= self.config.max_on_demand_sockets {
            self.stats.dropped_unknown_source += 1;
            tracing::warn!(
                %source,
                cap = self.config.max_on_demand_sockets,
                "on-demand socket cap reached; transmit dropped"
            );
            return None;
        }
        match self.bind(source) {
            Ok(index) => {
                self.stats.bound_on_demand += 1;
                tracing::debug!(%source, "bound a socket on demand");
                Some(index)
            }
            Err(e) => {
                self.stats.dropped_unknown_source += 1;
                tracing::warn!(%source, error = %e, "binding a transmit's source failed; dropped");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends each queued transmit once; records nothing.
    #[derive(Default)]
    struct Sender {
        queue: Vec<(Transmit, Vec<u8>)>,
    }

    impl SansIo for Sender {
        type Event = ();

        fn handle_packet(&mut self, _now: Instant, _packet: Receive<'_>) {}

        fn handle_timeout(&mut self, _now: Instant) {}

        fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
            if self.queue.is_empty() {
                return None;
            }
            let (transmit, payload) = self.queue.remove(0);
            buf[..payload.len()].copy_from_slice(&payload);
            Some(transmit)
        }

        fn poll_event(&mut self) -> Option<()> {
            None
        }

        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn ttl_hint_applies_to_its_datagram_and_the_default_returns_after() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let mut driver = Driver::new(Sender::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        let default_ttl = driver.io.sockets[0].as_ref().unwrap().default_ttl();

        driver
            .machine_mut()
            .queue
            .push((Transmit::new(to, 1).with_ttl(3), vec![1]));
        driver.drain(|_, ()| {});
        assert_eq!(driver.io.sockets[0].as_ref().unwrap().os_ttl().unwrap(), 3);

        driver
            .machine_mut()
            .queue
            .push((Transmit::new(to, 1), vec![2]));
        driver.drain(|_, ()| {});
        assert_eq!(
            driver.io.sockets[0].as_ref().unwrap().os_ttl().unwrap(),
            default_ttl
        );
        assert_eq!(driver.stats().sent, 2);
        assert_eq!(driver.stats().ttl_errors, 0);
    }

    #[test]
    fn transmits_without_a_socket_of_their_family_are_counted_and_dropped() {
        let mut driver = Driver::new(Sender::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        let v4 = driver.local_addrs()[0];
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        driver
            .machine_mut()
            .queue
            .push((Transmit::new(v6, 1), vec![0]));
        driver
            .machine_mut()
            .queue
            .push((Transmit::new(v6, 1).from_source(v4), vec![0]));
        driver.machine_mut().queue.push((
            Transmit::new(v4, 1).from_source("127.0.0.1:0".parse().unwrap()),
            vec![0],
        ));
        driver.drain(|_, ()| {});
        let stats = driver.stats();
        assert_eq!(stats.dropped_no_socket, 2);
        assert_eq!(stats.dropped_unknown_source, 1);
        assert_eq!(stats.sent, 0);
        assert_eq!(driver.local_addrs().len(), 1);
    }

    /// The buffer sizes asked for apply to the sockets bound at construction and to those bound
    /// later. The size asked for is below Linux's default cap (`rmem_max`, `wmem_max`), so the
    /// kernel grants it exactly (and reports twice as much).
    #[test]
    fn socket_buffers_apply_to_every_socket() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let plain = Driver::new(Sender::default(), &[local]).unwrap();
        let default = plain.buffer_sizes(plain.local_addrs()[0]).unwrap();
        let config = Config::new().socket_buffers(Some(100_000), Some(60_000));
        let mut driver = Driver::with_config(Sender::default(), &[local], config).unwrap();
        let extra = driver.bind(local).unwrap();
        for addr in [driver.local_addrs()[0], extra] {
            let sizes = driver.buffer_sizes(addr).unwrap();
            assert_ne!(sizes, default, "{addr}");
            if cfg!(target_os = "linux") {
                assert_eq!(sizes, (200_000, 120_000), "{addr}");
            }
        }
        assert_eq!(driver.buffer_sizes("127.0.0.1:1".parse().unwrap()), None);
    }

    /// Records the local address of every datagram it is handed.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<SocketAddr>,
        /// For each datagram, whether the driver said more of its read follow.
        more: Vec<bool>,
    }

    impl SansIo for Recorder {
        type Event = ();

        fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
            self.seen.push(packet.local);
        }
        fn handle_packet_of_batch(&mut self, _now: Instant, packet: Receive<'_>, more: bool) {
            self.more.push(more);
            self.seen.push(packet.local);
        }
        fn handle_timeout(&mut self, _now: Instant) {}
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

    /// A flooded socket (a busy TURN allocation) gets one read budget per turn, and a quiet
    /// socket that is ready in the same turn is read in that turn, not after the flood.
    #[test]
    fn a_flooded_socket_does_not_starve_the_others() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config::new()
            .read_budget(16)
            .socket_buffers(Some(1 << 20), None);
        let mut driver = Driver::with_config(Recorder::default(), &[local, local], config).unwrap();
        let [busy, quiet] = [driver.local_addrs()[0], driver.local_addrs()[1]];
        let sender = std::net::UdpSocket::bind(local).unwrap();
        for _ in 0..200 {
            sender.send_to(b"flood", busy).unwrap();
        }
        for _ in 0..3 {
            sender.send_to(b"hello", quiet).unwrap();
        }
        // Both sockets become ready; the first turn reads at most the budget from each.
        let deadline = Instant::now() + Duration::from_secs(5);
        while driver.machine().seen.is_empty() && Instant::now() < deadline {
            driver
                .turn(Some(Duration::from_millis(100)), |_, ()| {})
                .unwrap();
        }
        let seen = &driver.machine().seen;
        let from = |a: SocketAddr| seen.iter().filter(|&&l| l == a).count();
        assert!(from(busy) <= 16, "{} from the flooded socket", from(busy));
        assert_eq!(from(quiet), 3, "the quiet socket waited for the flood");
        // The rest of the flood follows in later turns, none lost.
        while from_count(&driver, busy) < 200 && Instant::now() < deadline {
            driver
                .turn(Some(Duration::from_millis(100)), |_, ()| {})
                .unwrap();
        }
        assert_eq!(from_count(&driver, busy), 200);
    }

    /// Answers each datagram with a transmit and an event, and logs the calls in order.
    #[derive(Default)]
    struct Echo {
        log: Vec<&'static str>,
        answer: Option<SocketAddr>,
        events: usize,
    }

    impl SansIo for Echo {
        type Event = ();

        fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
            self.log.push("packet");
            self.answer = Some(packet.source);
            self.events += 1;
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
            let to = self.answer.take()?;
            self.log.push("transmit");
            buf[0] = 1;
            Some(Transmit::new(to, 1))
        }
        fn poll_event(&mut self) -> Option<()> {
            self.events = self.events.checked_sub(1)?;
            self.log.push("event");
            Some(())
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    /// Within one socket's batch each datagram's transmits leave before the next datagram is
    /// read, and the events are taken once, after the batch.
    #[test]
    fn transmits_follow_each_datagram_and_events_the_batch() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut driver = Driver::new(Echo::default(), &[local]).unwrap();
        let to = driver.local_addrs()[0];
        let peer = std::net::UdpSocket::bind(local).unwrap();
        for _ in 0..3 {
            peer.send_to(b"x", to).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = 0;
        while events < 3 && Instant::now() < deadline {
            driver
                .turn(Some(Duration::from_millis(100)), |_, ()| events += 1)
                .unwrap();
        }
        let log = driver.machine().log.join(" ");
        // Loopback queues all three before the first read, so they make one batch.
        assert_eq!(
            log,
            "packet transmit packet transmit packet transmit event event event"
        );
        let mut buf = [0u8; 8];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..3 {
            assert_eq!(peer.recv_from(&mut buf).unwrap().0, 1);
        }
    }

    /// The machine hears which datagram is the last of a read (a QUIC receiver acknowledges
    /// the batch once), whether the kernel joined them (GRO, same-size datagrams) or not.
    #[test]
    fn the_last_datagram_of_a_read_is_marked() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut driver = Driver::new(Recorder::default(), &[local]).unwrap();
        let to = driver.local_addrs()[0];
        let peer = std::net::UdpSocket::bind(local).unwrap();
        // Three of one size (one GRO train where the kernel joins them), then a shorter one.
        for len in [100, 100, 100, 40] {
            peer.send_to(&vec![7; len], to).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while driver.machine().more.len() < 4 && Instant::now() < deadline {
            driver
                .turn(Some(Duration::from_millis(100)), |_, ()| {})
                .unwrap();
        }
        // Loopback queues all four before the first read, so they make one batch.
        assert_eq!(driver.machine().more, [true, true, true, false]);
    }

    /// Records every datagram's payload.
    #[derive(Default)]
    struct Collect {
        payloads: Vec<Vec<u8>>,
    }

    impl SansIo for Collect {
        type Event = ();

        fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
            self.payloads.push(packet.payload.to_vec());
        }
        fn handle_timeout(&mut self, _now: Instant) {}
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

    /// `count` numbered datagrams of `len` bytes (the last `last` bytes long) to `to`.
    fn numbered(to: SocketAddr, count: usize, len: usize, last: usize) -> Vec<(Transmit, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let len = if i + 1 == count { last } else { len };
                let mut payload = vec![i as u8; len];
                payload[0] = (i >> 8) as u8;
                (Transmit::new(to, len), payload)
            })
            .collect()
    }

    fn receive_all(sink: &std::net::UdpSocket, count: usize) -> Vec<Vec<u8>> {
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        (0..count)
            .map(|_| {
                let (len, _) = sink.recv_from(&mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    /// A drain's run of datagrams to one peer leaves in one segmented send (UDP GSO, Linux
    /// 4.18 and later), cut back into the same datagrams, complete and in order; the shorter last
    /// one rides along. A datagram to another peer starts a run of its own.
    #[test]
    fn a_run_to_one_peer_leaves_in_one_send_and_arrives_whole_and_in_order() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let mut driver = Driver::new(Sender::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        assert!(
            driver.io.sockets[0].as_ref().unwrap().max_segments() > 1,
            "this kernel has no UDP segmentation offload"
        );
        let sent = numbered(to, 40, 1_000, 300);
        driver.machine_mut().queue.extend(sent.clone());
        driver
            .machine_mut()
            .queue
            .push((Transmit::new(other.local_addr().unwrap(), 5), vec![9; 5]));
        driver.drain(|_, ()| {});
        let stats = driver.stats();
        assert_eq!(stats.sent, 41);
        assert_eq!(
            stats.send_calls, 2,
            "one send for the run, one for the other peer"
        );
        let got = receive_all(&sink, 40);
        let want: Vec<Vec<u8>> = sent.into_iter().map(|(_, p)| p).collect();
        assert!(got == want, "datagrams lost, cut wrongly or reordered");
        assert_eq!(receive_all(&other, 1), vec![vec![9; 5]]);
    }

    /// Runs end at the kernel's 64 segments and at 64 KiB; a longer burst becomes several sends.
    #[test]
    fn a_long_burst_is_cut_into_runs_the_kernel_takes() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket2::SockRef::from(&sink)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        let to = sink.local_addr().unwrap();
        let mut driver = Driver::new(Sender::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        // 150 of 100 bytes: 64 + 64 + 22 segments; 100 of 1,400 bytes: 46 + 46 + 8 (64 KiB).
        let mut sent = numbered(to, 150, 100, 100);
        sent.extend(numbered(to, 100, 1_400, 1_400));
        driver.machine_mut().queue.extend(sent.clone());
        driver.drain(|_, ()| {});
        assert_eq!(driver.stats().sent, 250);
        assert_eq!(driver.stats().send_calls, 6);
        let got = receive_all(&sink, 250);
        let want: Vec<Vec<u8>> = sent.into_iter().map(|(_, p)| p).collect();
        assert!(got == want, "datagrams lost, cut wrongly or reordered");
    }

    /// A segmented send the kernel refuses (here EINVAL: more segments than its
    /// `UDP_MAX_SEGMENTS`, 64 before Linux 6.9 and 128 since, which the driver never asks for) is sent again one datagram at a time, complete and in
    /// order, and the socket sends one datagram per call from then on.
    #[test]
    fn a_refused_segmented_send_falls_back_to_one_datagram_per_send() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&sink)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        let to = sink.local_addr().unwrap();
        let mut driver = Driver::new(Sender::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        let count = 500;
        let sent = numbered(to, count, 8, 8);
        let mut buf = vec![0u8; MAX_RUN_BYTES + BUF_LEN];
        for (i, (_, payload)) in sent.iter().enumerate() {
            buf[i * 8..(i + 1) * 8].copy_from_slice(payload);
        }
        driver.io.run = Some(Run {
            socket: 0,
            destination: to,
            ttl: None,
            segment: 8,
            bytes: count * 8,
            count,
            closed: true,
        });
        driver.io.flush(&buf);
        let stats = driver.stats();
        assert_eq!(stats.segmentation_refused, 1);
        assert_eq!(stats.sent, count as u64);
        assert_eq!(stats.send_calls, count as u64);
        assert_eq!(driver.io.sockets[0].as_ref().unwrap().max_segments(), 1);
        let got = receive_all(&sink, count);
        let want: Vec<Vec<u8>> = sent.into_iter().map(|(_, p)| p).collect();
        assert!(got == want, "datagrams lost or reordered in the fallback");

        // Remembered: the next run goes one datagram per call without trying again.
        driver.machine_mut().queue.extend(numbered(to, 5, 100, 100));
        driver.drain(|_, ()| {});
        assert_eq!(driver.stats().send_calls, count as u64 + 5);
        assert_eq!(driver.stats().segmentation_refused, 1);
        assert_eq!(receive_all(&sink, 5).len(), 5);
    }

    /// Between two drivers a segmented run may arrive joined (GRO) and several datagrams come
    /// per `recvmmsg`: the receiving machine still sees each datagram on its own, whole and in
    /// order, in fewer calls than datagrams.
    #[test]
    fn datagrams_read_in_batches_reach_the_machine_one_by_one() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config::new().socket_buffers(Some(1 << 20), None);
        let mut receiver = Driver::with_config(Collect::default(), &[local], config).unwrap();
        let to = receiver.local_addrs()[0];
        let mut sender = Driver::new(Sender::default(), &[local]).unwrap();
        let mut sent = numbered(to, 60, 1_200, 700);
        sent.extend(numbered(to, 20, 50, 50));
        sender.machine_mut().queue.extend(sent.clone());
        sender.drain(|_, ()| {});
        assert_eq!(sender.stats().sent, 80);
        let deadline = Instant::now() + Duration::from_secs(5);
        while receiver.machine().payloads.len() < 80 && Instant::now() < deadline {
            receiver
                .turn(Some(Duration::from_millis(100)), |_, ()| {})
                .unwrap();
        }
        let want: Vec<Vec<u8>> = sent.into_iter().map(|(_, p)| p).collect();
        assert!(
            receiver.machine().payloads == want,
            "datagrams lost, joined or reordered"
        );
        let stats = receiver.stats();
        assert_eq!(stats.received, 80);
        assert!(
            stats.recv_calls < 20,
            "{} receive calls for 80 datagrams",
            stats.recv_calls
        );
    }

    fn from_count(driver: &Driver<Recorder>, addr: SocketAddr) -> usize {
        driver.machine().seen.iter().filter(|&&l| l == addr).count()
    }
}
