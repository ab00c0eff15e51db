//! uTP, the Micro Transport Protocol (BEP 29), with LEDBAT congestion control (RFC 6817),
//! sans-IO.
//!
//! An [`Endpoint`] owns every connection on one UDP socket's worth of uTP datagrams: it opens
//! connections ([`Endpoint::connect`]), accepts them up to [`Config::max_connections`]
//! (refusing more with ST_RESET), demuxes datagrams by (peer address, connection id), and
//! polls out what to send. It never touches a socket, the clock or the OS random source:
//! `now` comes with every call, the 32-bit microsecond timestamps on the wire are `now` minus
//! the epoch given to [`Endpoint::new`] (wrapping), and connection ids and initial sequence
//! numbers come from the seed in [`Config`].
//!
//! Driving it:
//!
//! ```no_run
//! use std::net::{SocketAddr, UdpSocket};
//! use std::time::Instant;
//! use fog_utp::{Config, Endpoint, Event};
//!
//! # #[allow(clippy::disallowed_methods)]
//! # fn main() -> std::io::Result<()> {
//! let socket = UdpSocket::bind("127.0.0.1:0")?;
//! let epoch = Instant::now();
//! let mut endpoint = Endpoint::new(Config::with_seed([7; 32]), epoch);
//! let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
//! let conn = endpoint.connect(Instant::now(), peer).expect("room for a connection");
//! endpoint.write(conn, b"hello").expect("room in the send buffer");
//! let mut buf = [0u8; 1500];
//! loop {
//!     let now = Instant::now();
//!     // 1. transmits, 2. events, 3. the next deadline (after every input or command).
//!     while let Some(t) = endpoint.poll_transmit(now, &mut buf) {
//!         socket.send_to(&buf[..t.len], t.destination)?;
//!     }
//!     while let Some(event) = endpoint.poll_event() {
//!         if let Event::Readable(c) = event {
//!             let mut data = [0u8; 4096];
//!             while let Ok(n @ 1..) = endpoint.read(c, &mut data) { let _ = &data[..n]; }
//!         }
//!     }
//!     let wait = endpoint.poll_timeout().map(|t| t.saturating_duration_since(now));
//!     socket.set_read_timeout(wait.filter(|d| !d.is_zero()))?;
//!     match socket.recv_from(&mut buf) {
//!         Ok((n, from)) => endpoint.handle_packet(Instant::now(), from, &buf[..n]),
//!         Err(_) => endpoint.handle_timeout(Instant::now()),
//!     }
//! }
//! # }
//! ```
//!
//! Why our own and not a crate: the uTP crates on crates.io own their sockets and an async
//! runtime (librqbit-utp needs tokio); FogConnect runs every protocol as a sans-IO machine on one
//! socket, so the protocol had to be written in that shape. libutp's behaviour is the
//! reference, and `tests/interop.rs` checks against libutp itself (the npm package
//! `utp-native`) and librqbit-utp.
//!
//! Behaviours worth knowing, each tested in `tests/pair.rs`:
//! - the acceptor answers a SYN with an ST_STATE whose `seq_nr` its first data packet reuses;
//!   the initiator therefore acks `seq_nr - 1` until that data arrives (libutp does the same);
//! - the acceptor reports [`Event::Incoming`] at the SYN and may write at once; it counts as
//!   connected on the initiator's next packet that acks its answer (libutp waits for data;
//!   an ack of our random `seq_nr` proves as much); if none comes within
//!   [`Config::handshake_timeout`] the connection ends (`TimedOut`), so spoofed SYNs cannot hold
//!   the accept slots;
//! - a packet whose `ack_nr` acks what we never sent, or lies more than 3 packets below what is
//!   in flight, is dropped (BEP 29's fix against reflection; libutp's `ACK_NR_ALLOWED_WINDOW`);
//! - a resent SYN from the same peer and connection id is answered again, never a second
//!   connection;
//! - the FIN carries no payload, occupies a sequence number and is acked like data;
//! - a measured delay difference of exactly 0 µs goes out as 1 µs, since 0 on the wire means
//!   "no sample" (BEP 29), and without any sample LEDBAT counts the delay as 0 (libutp);
//! - loss is detected as libutp does (three duplicate acks, or three packets selectively
//!   acked past a hole) and starts a recovery (RFC 6582 §3.2: one window reduction until all
//!   that was in flight is acked); within it, a packet still unacked that was sent before
//!   one now acked is lost too (RFC 8985 RACK), so a burst of losses longer than a selective
//!   ack reaches, or a lost retransmission, is resent at the next ack, not at the timeout;
//! - in-order full-sized data is acked every second packet (RFC 5681 §4.2), the odd one
//!   within 10 ms; a packet out of order, one that fills a hole, a short one and every other
//!   packet type are acked at once (libutp acks once per batch its socket reads, which a
//!   sans-IO machine does not see);
//! - the SYN is retried [`Config::syn_retransmits`] times (default 4, given up at 31 s),
//!   more than libutp's 2, so that the caller's own connect deadline is the bound;
//! - once connected, data in flight goes again on [`Config::data_retransmits`] timeouts in a
//!   row (default 4, libutp's) before the connection ends `TimedOut`, each wait twice the last
//!   up to [`Config::max_rto`]; `None` never gives up, for an owner that watches the path
//!   itself (FogConnect's node).
//!
//! Not implemented: MTU discovery (packets are at most [`Config::max_packet_size`]), the
//! clock-drift compensation of libutp's `their_hist` (the base-delay history absorbs slow
//! drift), and the extension-bits extension (type 2, skipped when received).

#![forbid(unsafe_code)]

mod conn;
mod ledbat;
mod timer;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;

use conn::Connection;
use wire::{Packet, PacketType, Repr};

/// Endpoint configuration. Every bound a remote party could grow is here.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the generator for connection ids and initial sequence numbers.
    pub seed: [u8; 32],
    /// Connections (ours and accepted) at most; a SYN beyond it is answered with ST_RESET.
    pub max_connections: usize,
    /// Whether to accept incoming connections at all.
    pub accept: bool,
    /// Bytes a connection buffers to send (unsent plus in flight); `write` takes no more.
    pub send_buffer: usize,
    /// Bytes a connection buffers received (unread plus out of order); this is the wnd_size
    /// we advertise.
    pub recv_buffer: usize,
    /// Largest uTP packet we send, header included (libutp's `PACKET_SIZE` is 1435 with MTU
    /// probing; 1400 fits a 1500-byte MTU behind tunnels without probing).
    pub max_packet_size: usize,
    /// ST_STATE after this much silence from us, for NAT bindings (libutp: 29 s).
    pub keepalive_interval: Duration,
    /// Retransmissions of the SYN (and of what an acceptor sent before the initiator's first
    /// packet) before the connection ends `TimedOut`; each waits twice as long as the one
    /// before, from 1 s (BEP 29). libutp gives up after 2 (with a 3 s first timeout); the
    /// default 4 sends SYNs at 0, 1, 3, 7 and 15 s and gives up at 31 s, so a burst of loss
    /// does not end a connection the caller's own deadline (a connect timeout) would still
    /// wait for.
    pub syn_retransmits: u32,
    /// Consecutive retransmission timeouts of data in flight on a connected connection before
    /// it ends `TimedOut`: `Some(4)` by default, libutp's limit (`check_timeouts`), for a
    /// uTP that is alone in judging whether the peer is still there. `None`: never; what is
    /// in flight goes again every [`Config::max_rto`] at most for as long as the connection
    /// lives, and its owner ends it when the peer is gone. That is for an owner that watches
    /// the path itself (FogConnect's node: its consent checks, RFC 7675, and its idle
    /// timeout): on a lossy path a run of lost acks is not a dead peer (the chaos run lost
    /// every ack of one packet's four retransmissions on a relayed path of 16 % loss while
    /// checks on the same path were answered).
    pub data_retransmits: Option<u32>,
    /// The longest retransmission timeout: doubling stops here (RFC 6298 §2.5 allows a
    /// maximum, of at least 60 s for TCP; the default). Never below 1 s, BEP 29's minimum.
    pub max_rto: Duration,
    /// How long an accepted connection waits for the initiator's first packet after the SYN
    /// before it is dropped.
    pub handshake_timeout: Duration,
    /// ST_RESETs to unknown or refused peers queued at most; more are dropped, so garbage
    /// cannot make us send without bound.
    pub max_pending_resets: usize,
    /// For tests: the initial sequence number of connections we open, instead of a random one.
    pub initial_seq_nr: Option<u16>,
}

impl Config {
    /// Defaults with `seed`.
    pub fn with_seed(seed: [u8; 32]) -> Self {
        Config {
            seed,
            max_connections: 256,
            accept: true,
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_packet_size: 1400,
            keepalive_interval: Duration::from_secs(29),
            syn_retransmits: 4,
            data_retransmits: Some(4),
            max_rto: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(30),
            max_pending_resets: 64,
            initial_seq_nr: None,
        }
    }
}

/// Identifies a connection of an [`Endpoint`] for as long as it exists; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs sent and acked, all data delivered.
    Done,
    /// The peer sent ST_RESET.
    ResetByPeer,
    /// We called [`Endpoint::reset`].
    ResetLocally,
    /// Nothing acked after repeated retransmissions ([`Config::data_retransmits`], or
    /// [`Config::syn_retransmits`] while connecting).
    TimedOut,
}

/// What the endpoint reports. Every event names its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A peer opened a connection and we accepted it.
    Incoming {
        /// The new connection.
        conn: ConnectionHandle,
        /// Who opened it.
        peer: SocketAddr,
    },
    /// A connection we opened got its answer.
    Connected(ConnectionHandle),
    /// Data arrived in order where there was none to read.
    Readable(ConnectionHandle),
    /// The send buffer has room again after a `write` returned [`WriteError::WouldBlock`].
    Writable(ConnectionHandle),
    /// The peer's FIN arrived with everything before it: reads end after the buffered data.
    Finished(ConnectionHandle),
    /// The connection ended. After [`CloseReason::Done`] it lingers a few seconds (acking
    /// late FINs; buffered data can still be read), otherwise it is gone at once.
    Closed {
        /// The connection.
        conn: ConnectionHandle,
        /// Why.
        reason: CloseReason,
    },
}

/// Why [`Endpoint::connect`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// [`Config::max_connections`] reached (a local limit).
    TooManyConnections,
    /// No free connection id towards this peer was found (a local limit).
    NoConnectionId,
}

/// Why [`Endpoint::write`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The send buffer is full; [`Event::Writable`] follows when it drains (a local limit).
    WouldBlock,
    /// [`Endpoint::close`] was called: nothing more may be written (caller misuse).
    Finished,
    /// The connection was reset or timed out.
    Closed,
    /// No such connection (caller misuse, or it was removed).
    UnknownConnection,
}

/// Why [`Endpoint::read`] read nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing buffered yet; [`Event::Readable`] follows.
    WouldBlock,
    /// The connection was reset or timed out.
    Closed,
    /// No such connection.
    UnknownConnection,
}

macro_rules! display_error {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$v => $s),* })
            }
        }
        impl std::error::Error for $t {}
    };
}
display_error!(ConnectError {
    TooManyConnections => "too many uTP connections",
    NoConnectionId => "no free uTP connection id towards this peer",
});
display_error!(WriteError {
    WouldBlock => "uTP send buffer full",
    Finished => "uTP connection already closed for writing",
    Closed => "uTP connection reset or timed out",
    UnknownConnection => "no such uTP connection",
});
display_error!(ReadError {
    WouldBlock => "nothing to read yet",
    Closed => "uTP connection reset or timed out",
    UnknownConnection => "no such uTP connection",
});

/// Counters and estimates of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Payload bytes handed to the network for the first time.
    pub bytes_sent: u64,
    /// Payload bytes received in order.
    pub bytes_received: u64,
    /// Packets sent, all types and retransmissions included.
    pub packets_sent: u64,
    /// Packets sent again (timeout or fast retransmit).
    pub packets_resent: u64,
    /// Packets accepted for this connection.
    pub packets_received: u64,
    /// Data packets received again or already buffered out of order.
    pub duplicates_received: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// SYNs answered again.
    pub duplicate_syns: u64,
    /// Packets counted lost during a recovery because one sent after them was acknowledged
    /// (RFC 8985 RACK), beyond the fast retransmit that began it.
    pub rack_lost: u64,
    /// SYN-ACKs sent again because the initiator had not answered (acceptor only).
    pub synacks_resent: u64,
    /// Packets dropped because their ack_nr was outside what we sent (BEP 29 reflection fix).
    pub dropped_bad_ack: u64,
    /// Data dropped because the receive buffer was full.
    pub dropped_no_room: u64,
    /// Other packets dropped (too far from the expected sequence number, past the FIN).
    pub dropped: u64,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Current retransmission timeout.
    pub rto: Duration,
    /// Congestion window in bytes.
    pub cwnd: usize,
    /// Our queuing delay as LEDBAT last saw it, µs.
    pub our_delay_us: u32,
    /// The peer's advertised receive window.
    pub peer_window: usize,
    /// Bytes in flight.
    pub in_flight: usize,
    /// Bytes buffered to send (unsent and in flight).
    pub send_buffered: usize,
    /// Bytes buffered received (unread and out of order).
    pub recv_buffered: usize,
}

/// Counters of the endpoint itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that were not uTP (bad header or extension chain).
    pub dropped_malformed: u64,
    /// Datagrams for no connection of ours.
    pub dropped_unknown: u64,
    /// SYNs refused (full, or accepting is off).
    pub refused: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// ST_RESETs sent to unknown or refused peers.
    pub resets_sent: u64,
    /// ST_RESETs not sent because the queue was full.
    pub resets_dropped: u64,
}

/// Many uTP connections over one datagram socket.
#[derive(Debug)]
pub struct Endpoint {
    config: Config,
    epoch: Instant,
    rng: ChaCha20Rng,
    conns: BTreeMap<ConnectionHandle, Connection>,
    /// (peer, the connection id the peer puts in its packets to us) → connection.
    index: BTreeMap<(SocketAddr, u16), ConnectionHandle>,
    next_handle: u64,
    events: VecDeque<Event>,
    resets: VecDeque<(SocketAddr, Repr)>,
    /// Round-robin start for `poll_transmit`, so one busy connection does not starve others.
    cursor: Option<ConnectionHandle>,
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint whose wire timestamps count microseconds from `epoch`.
    pub fn new(config: Config, epoch: Instant) -> Self {
        assert!(
            config.max_packet_size > wire::HEADER_LEN + 8,
            "max_packet_size too small"
        );
        Endpoint {
            rng: ChaCha20Rng::from_seed(config.seed),
            config,
            epoch,
            conns: BTreeMap::new(),
            index: BTreeMap::new(),
            next_handle: 0,
            events: VecDeque::new(),
            resets: VecDeque::new(),
            cursor: None,
            stats: EndpointStats::default(),
        }
    }

    /// The 32-bit microsecond clock of the wire (BEP 29 "timestamp_microseconds"); it wraps
    /// every 71.6 minutes and everything that compares it wraps too.
    fn now_us(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    fn new_handle(&mut self) -> ConnectionHandle {
        self.next_handle += 1;
        ConnectionHandle(self.next_handle)
    }

    /// Opens a connection to `peer`; [`Event::Connected`] follows. Data may be written at once.
    pub fn connect(
        &mut self,
        now: Instant,
        peer: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        // Our recv id must be free, and so must recv id + 1 (what the peer would key our SYN
        // by), both for this peer.
        // A bounded search: with thousands of connections to one peer, ids may run out.
        let recv_id = (0..1024)
            .map(|_| self.rng.random::<u16>())
            .find(|&id| {
                !self.index.contains_key(&(peer, id))
                    && !self.index.contains_key(&(peer, id.wrapping_add(1)))
            })
            .ok_or(ConnectError::NoConnectionId)?;
        let isn = self
            .config
            .initial_seq_nr
            .unwrap_or_else(|| self.rng.random());
        let handle = self.new_handle();
        let conn = Connection::connect(now, &self.config, peer, recv_id, isn);
        self.index.insert((peer, recv_id), handle);
        self.conns.insert(handle, conn);
        Ok(handle)
    }

    /// Queues `data` to send; returns how much fit in the send buffer.
    pub fn write(&mut self, conn: ConnectionHandle, data: &[u8]) -> Result<usize, WriteError> {
        self.conns
            .get_mut(&conn)
            .ok_or(WriteError::UnknownConnection)?
            .write(data)
    }

    /// Reads data received in order. `Ok(0)` is the end of the stream (the peer's FIN).
    pub fn read(&mut self, conn: ConnectionHandle, buf: &mut [u8]) -> Result<usize, ReadError> {
        self.conns
            .get_mut(&conn)
            .ok_or(ReadError::UnknownConnection)?
            .read(buf)
    }

    /// Sends a FIN once everything written has been sent; the connection ends when both
    /// FINs are acked.
    pub fn close(&mut self, conn: ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.close();
        }
    }

    /// The owner moved the connection to another path (the peer's address is unchanged for
    /// uTP; the owner's tunnel changed under it). The backed-off retransmission timer belongs
    /// to the old path: what is in flight goes again now, and the give-up count starts over,
    /// so a connection that waited out a dead path is not given up just as a new one
    /// arrives. Like QUIC, which resets its loss state on a validated new path (RFC 9002
    /// §6.2.1 does not carry a backed-off PTO across paths; RFC 9000 §9.4).
    pub fn path_changed(&mut self, now: Instant, conn: ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.path_changed(now);
        }
    }

    /// Sends ST_RESET and drops the connection at once.
    pub fn reset(&mut self, conn: ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.reset();
        }
        self.collect_events(conn);
    }

    /// Counters and estimates of `conn`.
    pub fn stats(&self, conn: ConnectionHandle) -> Option<ConnectionStats> {
        self.conns.get(&conn).map(Connection::stats)
    }

    /// The endpoint's own counters.
    pub fn endpoint_stats(&self) -> EndpointStats {
        self.stats
    }

    /// How many connections exist.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The peer of `conn`.
    pub fn peer(&self, conn: ConnectionHandle) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.peer)
    }

    fn queue_reset(&mut self, to: SocketAddr, connection_id: u16, ack_nr: u16, now: Instant) {
        if self.resets.len() >= self.config.max_pending_resets {
            self.stats.resets_dropped += 1;
            return;
        }
        let repr = Repr {
            packet_type: PacketType::Reset,
            connection_id,
            timestamp: self.now_us(now),
            timestamp_difference: 0,
            wnd_size: 0,
            seq_nr: self.rng.random(),
            ack_nr,
            selective_ack: None,
        };
        self.resets.push_back((to, repr));
    }

    /// One datagram from `source`. Garbage, and packets for no connection, are counted and
    /// dropped (the latter answered with ST_RESET, within [`Config::max_pending_resets`]).
    pub fn handle_packet(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let parsed = Packet::new_checked(datagram).and_then(|p| Ok((Repr::parse(&p)?, p)));
        let Ok((repr, packet)) = parsed else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let payload = packet.payload();
        let now_us = self.now_us(now);
        match repr.packet_type {
            PacketType::Syn => {
                // The acceptor's packets to us will carry the SYN's id; ours to it id + 1.
                let key = (source, repr.connection_id.wrapping_add(1));
                if let Some(&handle) = self.index.get(&key) {
                    if let Some(c) = self.conns.get_mut(&handle) {
                        c.on_duplicate_syn(&repr);
                    }
                    return;
                }
                if !self.config.accept || self.conns.len() >= self.config.max_connections {
                    self.stats.refused += 1;
                    self.queue_reset(source, repr.connection_id, repr.seq_nr, now);
                    return;
                }
                let isn = self.rng.random();
                let handle = self.new_handle();
                let conn = Connection::accept(now, &self.config, source, &repr, isn);
                self.index.insert(key, handle);
                self.conns.insert(handle, conn);
                self.stats.accepted += 1;
                self.events.push_back(Event::Incoming {
                    conn: handle,
                    peer: source,
                });
            }
            _ => {
                let handle = self
                    .index
                    .get(&(source, repr.connection_id))
                    .copied()
                    .or_else(|| {
                        // A reset may carry either id (implementations differ); accept the peer's.
                        (repr.packet_type == PacketType::Reset)
                            .then(|| {
                                self.conns
                                    .iter()
                                    .find(|(_, c)| {
                                        c.peer == source && c.send_id == repr.connection_id
                                    })
                                    .map(|(h, _)| *h)
                            })
                            .flatten()
                    });
                let Some(handle) = handle else {
                    self.stats.dropped_unknown += 1;
                    if repr.packet_type != PacketType::Reset {
                        self.queue_reset(source, repr.connection_id, repr.seq_nr, now);
                    }
                    return;
                };
                if let Some(c) = self.conns.get_mut(&handle) {
                    c.handle_packet(now, now_us, &repr, payload);
                    c.debug_check();
                }
                self.collect_events(handle);
                self.sweep_one(handle, now);
            }
        }
    }

    /// Fires every due timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.timers.next().is_some_and(|t| t <= now))
            .map(|(h, _)| *h)
            .collect();
        for handle in handles {
            if let Some(c) = self.conns.get_mut(&handle) {
                c.handle_timeout(now);
                c.debug_check();
            }
            self.collect_events(handle);
        }
        self.sweep(now);
    }

    fn collect_events(&mut self, handle: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&handle) else {
            return;
        };
        while let Some(e) = c.events.pop_front() {
            self.events.push_back(match e {
                conn::ConnEvent::Connected => Event::Connected(handle),
                conn::ConnEvent::Readable => Event::Readable(handle),
                conn::ConnEvent::Writable => Event::Writable(handle),
                conn::ConnEvent::Finished => Event::Finished(handle),
                conn::ConnEvent::Closed(reason) => Event::Closed {
                    conn: handle,
                    reason,
                },
            });
        }
    }

    /// [`sweep`](Self::sweep) for one connection: what a datagram or a transmit touched.
    fn sweep_one(&mut self, handle: ConnectionHandle, now: Instant) {
        if self.conns.get(&handle).is_some_and(|c| c.is_removable(now))
            && let Some(c) = self.conns.remove(&handle)
        {
            self.index.remove(&(c.peer, c.recv_id));
        }
    }

    fn sweep(&mut self, now: Instant) {
        let gone: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_removable(now))
            .map(|(h, _)| *h)
            .collect();
        for handle in gone {
            if let Some(c) = self.conns.remove(&handle) {
                self.index.remove(&(c.peer, c.recv_id));
            }
        }
    }

    /// The next datagram to send, written into `buf` (1500 bytes are always enough).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, repr)) = self.resets.pop_front() {
            if buf.len() >= repr.buffer_len() {
                repr.emit(&mut Packet::new_unchecked(&mut buf[..repr.buffer_len()]));
                self.stats.resets_sent += 1;
                return Some(Transmit::new(to, repr.buffer_len()));
            }
        }
        let now_us = self.now_us(now);
        // Round robin from the cursor, without collecting the handles (this runs once per
        // datagram sent): the connections from the cursor on, then those before it.
        let start = self.cursor.unwrap_or(ConnectionHandle(0));
        let mut found = None;
        for (&handle, c) in self.conns.range_mut(start..) {
            if let Some(len) = c.poll_transmit(now, now_us, buf) {
                found = Some((handle, Transmit::new(c.peer, len)));
            }
            c.debug_check();
            if found.is_some() {
                break;
            }
        }
        if found.is_none() {
            for (&handle, c) in self.conns.range_mut(..start) {
                if let Some(len) = c.poll_transmit(now, now_us, buf) {
                    found = Some((handle, Transmit::new(c.peer, len)));
                }
                c.debug_check();
                if found.is_some() {
                    break;
                }
            }
        }
        let Some((handle, transmit)) = found else {
            self.sweep(now);
            return None;
        };
        self.cursor = self.conns.range(handle..).nth(1).map(|(h, _)| *h);
        self.collect_events(handle);
        self.sweep_one(handle, now);
        Some(transmit)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.timers.next()).min()
    }
}

impl SansIo for Endpoint {
    type Event = Event;

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        Endpoint::handle_packet(self, now, packet.source, packet.payload);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Endpoint::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Endpoint::poll_transmit(self, now, buf)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Endpoint::poll_event(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
}
