//! The signaling channel's engine: connections between nodes and the one server machine,
//! scheduled on the simulator's queue. The public vocabulary is in [`crate::signal`].

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use rand::RngExt as _;

use super::{Action, Kind, NodeId, Sim};
use crate::link::nanos;
use crate::signal::{
    Closed, ConnId, Output, Request, SignalLink, SignalNode, SignalServer, SignalStats, State,
};

/// The server as the simulator holds it, its type erased.
pub(super) trait HostedServer: SignalServer {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<S: SignalServer + 'static> HostedServer for S {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Queue entries of the channel.
#[derive(Debug, Clone, Copy)]
pub(super) enum SignalAction {
    /// The head of one direction of `conn` arrives (`up`: at the server).
    Arrive { conn: ConnId, up: bool },
    /// The server's timer, valid only if `generation` is current.
    ServerTimer { generation: u64 },
    /// A connect to an unreachable server gives up.
    Unreachable { conn: ConnId },
    /// The server learns that a severed `conn` is gone.
    ServerLost { conn: ConnId },
}

/// What travels on one direction of a connection.
#[derive(Debug)]
enum Item {
    /// Up: the upgrade request; down: its acceptance.
    Open,
    Frame(String),
    /// Up: the node closed; down: the server closed with this code and reason.
    Close(Option<(u16, String)>),
}

/// One direction of one connection: FIFO, like a TCP byte stream.
#[derive(Debug, Default)]
struct Direction {
    /// In sending order, each with its arrival (ns since epoch); arrivals never decrease.
    items: VecDeque<(u64, Item)>,
    /// Latest arrival scheduled (ns since epoch): nothing later arrives before it.
    last_arrival: u64,
    /// When the sender's bandwidth is free again (ns since epoch).
    busy_until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeSide {
    Connecting,
    Open,
    Gone,
}

#[derive(Debug)]
struct Conn {
    host: NodeId,
    node: NodeSide,
    /// The server has been told of the connection and has not yet been told (or decided) it ended.
    server_open: bool,
    /// Cut: nothing more travels on it.
    severed: bool,
    /// The upgrade request was put on the wire (not so for a connect to a blocked server).
    wired: bool,
    up: Direction,
    down: Direction,
}

#[derive(Debug, Default)]
struct Endpoint {
    link: SignalLink,
    blocked: bool,
    current: Option<ConnId>,
}

/// All signaling state of a [`Sim`].
#[derive(Default)]
pub(super) struct Signaling {
    server: Option<Box<dyn HostedServer>>,
    server_timer: Option<u64>,
    server_timer_generation: u64,
    next_conn: u64,
    conns: BTreeMap<ConnId, Conn>,
    endpoints: BTreeMap<NodeId, Endpoint>,
    stats: SignalStats,
}

impl Sim {
    /// Hosts `server` as the signaling server every node's channel leads to. It is polled at
    /// once.
    ///
    /// # Panics
    /// If a server already holds open connections: the new one would not know them.
    pub fn set_signal_server<S: SignalServer + 'static>(&mut self, server: S) {
        assert!(
            self.signaling.conns.values().all(|c| !c.server_open),
            "the signaling server still has open connections"
        );
        self.signaling.server = Some(Box::new(server));
        self.drain_signal_server();
    }

    /// The signaling server.
    ///
    /// # Panics
    /// If there is none or it is of another type.
    pub fn signal_server<S: 'static>(&self) -> &S {
        self.signaling
            .server
            .as_ref()
            .and_then(|s| s.as_any().downcast_ref())
            .expect("a signaling server of that type")
    }

    /// Gives `f` the signaling server and the current instant, then drains it.
    ///
    /// # Panics
    /// If there is none or it is of another type.
    pub fn with_signal_server<S: 'static, R>(&mut self, f: impl FnOnce(&mut S, Instant) -> R) -> R {
        let now = self.now();
        let server = self
            .signaling
            .server
            .as_mut()
            .and_then(|s| s.as_any_mut().downcast_mut::<S>())
            .expect("a signaling server of that type");
        let result = f(server, now);
        self.drain_signal_server();
        result
    }

    /// Sets the path between `host` and the signaling server. Messages already in flight keep
    /// their arrival times; the FIFO order holds across the change.
    pub fn set_signal_link(&mut self, host: NodeId, link: SignalLink) {
        self.signaling.endpoints.entry(host).or_default().link = link;
    }

    /// Where `host`'s signaling connection is.
    pub fn signal_state(&self, host: NodeId) -> State {
        let Some(conn) = self.signaling.endpoints.get(&host).and_then(|e| e.current) else {
            return State::Idle;
        };
        match self.signaling.conns[&conn].node {
            NodeSide::Open => State::Open(conn),
            NodeSide::Connecting => State::Connecting(conn),
            NodeSide::Gone => State::Idle,
        }
    }

    /// Signaling connections still tracked: open at either end or with messages on the wire.
    /// Zero once every connection has closed and the channel is quiet.
    pub fn signal_connections(&self) -> usize {
        self.signaling.conns.len()
    }

    /// Counters of the signaling channel.
    pub fn signal_stats(&self) -> &SignalStats {
        &self.signaling.stats
    }

    /// Opens a signaling connection from `host` (what a machine asks with [`Request::Connect`]).
    ///
    /// # Panics
    /// If no signaling server is hosted, `host` runs no [`SignalNode`] machine, or `host` already
    /// has a connection open or opening.
    pub fn signal_connect(&mut self, host: NodeId) {
        assert!(
            self.signaling.server.is_some(),
            "no signaling server: call set_signal_server first"
        );
        assert!(
            self.has_signal_node(host),
            "{host} runs no signaling machine: use set_signal_machine"
        );
        assert_eq!(
            self.signal_state(host),
            State::Idle,
            "{host} already has a signaling connection"
        );
        self.connect_signal(host);
    }

    /// Closes `host`'s signaling connection gracefully: the close follows the frames already
    /// sent, the server is told when it arrives, the node at once ([`Closed::Local`]). Does
    /// nothing if there is no connection.
    pub fn signal_close(&mut self, host: NodeId) {
        self.close_signal(host);
    }

    /// Cuts `host`'s signaling connection: frames in flight either way are lost, the node is told
    /// at once ([`Closed::Severed`]) and the server one latency later. Does nothing if there is
    /// no connection.
    pub fn signal_sever(&mut self, host: NodeId) {
        let Some(conn) = self
            .signaling
            .endpoints
            .get_mut(&host)
            .and_then(|e| e.current.take())
        else {
            return;
        };
        if let Some(c) = self.signaling.conns.get_mut(&conn) {
            c.node = NodeSide::Gone;
        }
        self.cut_signal(host, conn, "sever");
        self.collect(conn);
        self.notify_closed(host, Closed::Severed);
    }

    /// Breaks `host`'s open signaling connection without telling the node, as a NAT that
    /// forgot the connection's flow does to a WebSocket over TCP (the server's next segment is
    /// answered with a reset, the node's are lost or reset only once it sends): frames in
    /// flight either way are lost, the server is told one latency later, and the node's end
    /// stays open, every frame it sends lost, until the node closes it itself. A connection
    /// still opening is severed ([`signal_sever`](Self::signal_sever)). Does nothing if there
    /// is no connection.
    pub fn signal_break(&mut self, host: NodeId) {
        let Some(conn) = self.signaling.endpoints.get(&host).and_then(|e| e.current) else {
            return;
        };
        if self.signal_state(host) != State::Open(conn) {
            self.signal_sever(host);
            return;
        }
        if self.signaling.conns.get(&conn).is_some_and(|c| !c.severed) {
            self.cut_signal(host, conn, "break");
        }
    }

    /// What severing and breaking share: connection `conn` of `host` is marked severed, the
    /// frames in flight either way are lost (counted and traced as `what`), and the server,
    /// if it had the connection open, is told one latency later.
    fn cut_signal(&mut self, host: NodeId, conn: ConnId, what: &str) {
        let latency = nanos(self.signaling.endpoints[&host].link.latency);
        let c = self
            .signaling
            .conns
            .get_mut(&conn)
            .expect("a current connection is known");
        c.severed = true;
        let lost =
            c.up.items
                .drain(..)
                .chain(c.down.items.drain(..))
                .filter(|(_, i)| matches!(i, Item::Frame(_)))
                .count();
        let server_open = c.server_open;
        self.signaling.stats.frames_lost += lost as u64;
        self.signal_trace(host, conn, format_args!("{what} lost={lost}"));
        if server_open {
            self.schedule(
                self.now + latency,
                Action::Signal(SignalAction::ServerLost { conn }),
            );
        }
    }

    /// Makes the signaling server unreachable from `host` (or reachable again). Blocking severs
    /// an open connection; while blocked, a connect fails after the link's connect timeout.
    pub fn set_signal_blocked(&mut self, host: NodeId, blocked: bool) {
        self.signaling.endpoints.entry(host).or_default().blocked = blocked;
        if blocked {
            self.signal_sever(host);
        }
    }

    /// Runs a queued channel action.
    pub(super) fn run_signal_action(&mut self, action: SignalAction) {
        match action {
            SignalAction::Arrive { conn, up } => {
                self.signal_arrive(conn, up);
                self.collect(conn);
            }
            SignalAction::ServerTimer { generation } => {
                if self.signaling.server_timer_generation != generation {
                    return;
                }
                self.signaling.server_timer = None;
                let now = self.now();
                if let Some(server) = self.signaling.server.as_mut() {
                    server.handle_timeout(now);
                }
                self.trace_line(format_args!("timer signal-server"));
                self.drain_signal_server();
            }
            SignalAction::Unreachable { conn } => {
                let Some(host) = self.signaling.conns.get(&conn).map(|c| c.host) else {
                    return;
                };
                if self.signaling.endpoints[&host].current != Some(conn) {
                    return;
                }
                self.signaling
                    .endpoints
                    .get_mut(&host)
                    .expect("known")
                    .current = None;
                self.signaling.conns.get_mut(&conn).expect("known").node = NodeSide::Gone;
                self.signal_trace(host, conn, format_args!("unreachable"));
                self.collect(conn);
                self.notify_closed(host, Closed::Unreachable);
            }
            SignalAction::ServerLost { conn } => {
                let Some(c) = self.signaling.conns.get_mut(&conn) else {
                    return;
                };
                if !c.server_open {
                    return;
                }
                c.server_open = false;
                let host = c.host;
                self.signal_trace(host, conn, format_args!("server-lost"));
                self.collect(conn);
                self.server_disconnect(conn);
            }
        }
    }

    /// Takes what a node's machine produced for the channel while the simulator drains it:
    /// frames go out at once, requests are returned to run after the machine is back in place.
    pub(super) fn take_signal_output(
        &mut self,
        host: NodeId,
        node: &mut dyn SignalNode,
    ) -> Vec<Request> {
        while let Some(frame) = node.poll_signal_frame() {
            match self.signal_state(host) {
                // Broken under the node ([`Sim::signal_break`]): lost on the way.
                State::Open(conn) if self.signaling.conns[&conn].severed => {
                    self.signaling.stats.frames_lost += 1;
                    self.signal_trace(host, conn, format_args!("lost len={}", frame.len()));
                }
                State::Open(conn) => self.signal_send(conn, true, Item::Frame(frame), 0),
                state => {
                    self.signaling.stats.frames_discarded += 1;
                    let name = self.node(host).name.clone();
                    self.trace_line(format_args!(
                        "signal discard {name} {state} len={}",
                        frame.len()
                    ));
                }
            }
        }
        std::iter::from_fn(|| node.poll_signal_request()).collect()
    }

    /// Runs a request a node's machine made.
    pub(super) fn run_signal_request(&mut self, host: NodeId, request: Request) {
        match (request, self.signal_state(host)) {
            (Request::Connect, State::Idle) if self.signaling.server.is_some() => {
                self.connect_signal(host)
            }
            (Request::Close, State::Open(_) | State::Connecting(_)) => self.close_signal(host),
            (request, state) => {
                let name = self.node(host).name.clone();
                self.trace_line(format_args!("signal ignore {name} {request:?} {state}"));
            }
        }
    }

    fn has_signal_node(&mut self, host: NodeId) -> bool {
        match &mut self.nodes[host.0 as usize].kind {
            Kind::Host(h) => h.machine.as_mut().is_some_and(|m| m.signal().is_some()),
            _ => false,
        }
    }

    fn connect_signal(&mut self, host: NodeId) {
        self.signaling.next_conn += 1;
        let conn = ConnId(self.signaling.next_conn);
        self.signaling.stats.connects += 1;
        let endpoint = self.signaling.endpoints.entry(host).or_default();
        endpoint.current = Some(conn);
        let blocked = endpoint.blocked;
        let setup = nanos(endpoint.link.latency) * 2 * u64::from(endpoint.link.setup_round_trips);
        let timeout = nanos(endpoint.link.connect_timeout);
        self.signaling.conns.insert(
            conn,
            Conn {
                host,
                node: NodeSide::Connecting,
                server_open: false,
                severed: false,
                wired: !blocked,
                up: Direction::default(),
                down: Direction::default(),
            },
        );
        self.signal_trace(host, conn, format_args!("connect"));
        if blocked {
            self.schedule(
                self.now + timeout,
                Action::Signal(SignalAction::Unreachable { conn }),
            );
        } else {
            self.signal_send(conn, true, Item::Open, setup);
        }
    }

    fn close_signal(&mut self, host: NodeId) {
        let Some(conn) = self
            .signaling
            .endpoints
            .get_mut(&host)
            .and_then(|e| e.current.take())
        else {
            return;
        };
        let c = self.signaling.conns.get_mut(&conn).expect("known");
        c.node = NodeSide::Gone;
        // A broken connection ([`Sim::signal_break`]) carries nothing more.
        let wired = c.wired && !c.severed;
        self.signal_trace(host, conn, format_args!("close"));
        // Behind the upgrade request if that is still travelling; a blocked connect has nothing
        // on the wire (the server never heard of it) and just stops.
        if wired {
            self.signal_send(conn, true, Item::Close(None), 0);
        }
        self.collect(conn);
        self.notify_closed(host, Closed::Local);
    }

    /// Puts `item` on a direction of `conn`; it arrives after the link's latency, its jitter and
    /// `extra`, and never before the item sent ahead of it.
    fn signal_send(&mut self, conn: ConnId, up: bool, item: Item, extra: u64) {
        let c = self.signaling.conns.get_mut(&conn).expect("known");
        debug_assert!(!c.severed, "nothing travels on a severed connection");
        let link = &self.signaling.endpoints[&c.host].link;
        let dir = if up { &mut c.up } else { &mut c.down };
        let mut departure = self.now + extra;
        if let Item::Frame(frame) = &item {
            self.signaling.stats.frames_sent += 1;
            if let Some(bps) = link.bandwidth_bps.filter(|&b| b > 0) {
                let wire = (frame.len() as u128 * 8 * 1_000_000_000 / u128::from(bps)) as u64;
                departure = dir.busy_until.max(departure) + wire;
                dir.busy_until = departure;
            }
        }
        let jitter = nanos(link.jitter);
        let spread = if jitter == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter)
        };
        let at = (departure + nanos(link.latency) + spread).max(dir.last_arrival);
        dir.last_arrival = at;
        dir.items.push_back((at, item));
        let host = c.host;
        if self.trace.is_some() {
            let (what, len) = match dir.items.back().map(|(_, i)| i) {
                Some(Item::Frame(f)) => ("frame", f.len()),
                Some(Item::Open) => ("open", 0),
                _ => ("close", 0),
            };
            let way = if up { "up" } else { "down" };
            let due = at - self.now;
            self.signal_trace(
                host,
                conn,
                format_args!("send {way} {what} len={len} in={due}"),
            );
        }
        self.schedule(at, Action::Signal(SignalAction::Arrive { conn, up }));
    }

    fn signal_arrive(&mut self, conn: ConnId, up: bool) {
        // Gone when the connection was severed and forgotten with this item on the wire.
        let Some(c) = self.signaling.conns.get_mut(&conn) else {
            return;
        };
        let host = c.host;
        let dir = if up { &mut c.up } else { &mut c.down };
        // Empty when the connection was severed with this item on the wire.
        let Some((at, item)) = dir.items.pop_front() else {
            return;
        };
        // Arrivals of one direction are queued in sending order with non-decreasing times, and
        // the queue runs equal times in scheduling order: the head is always the one due.
        debug_assert_eq!(at, self.now, "signaling arrivals out of FIFO order");
        if up {
            self.arrive_at_server(host, conn, item);
        } else {
            self.arrive_at_node(host, conn, item);
        }
    }

    fn arrive_at_server(&mut self, host: NodeId, conn: ConnId, item: Item) {
        let now = self.now();
        let server_open = self.signaling.conns[&conn].server_open;
        match item {
            Item::Open => {
                self.signaling
                    .conns
                    .get_mut(&conn)
                    .expect("known")
                    .server_open = true;
                self.signal_trace(host, conn, format_args!("accept"));
                // The acceptance goes down first, so it precedes anything the server sends.
                self.signal_send(conn, false, Item::Open, 0);
                if let Some(server) = self.signaling.server.as_mut() {
                    server.handle_connect(now, conn);
                }
                self.drain_signal_server();
            }
            Item::Frame(frame) if server_open => {
                self.signaling.stats.frames_delivered += 1;
                self.signal_trace(host, conn, format_args!("to-server len={}", frame.len()));
                if let Some(server) = self.signaling.server.as_mut() {
                    server.handle_frame(now, conn, &frame);
                }
                self.drain_signal_server();
            }
            Item::Frame(frame) => {
                self.signaling.stats.frames_discarded += 1;
                self.signal_trace(
                    host,
                    conn,
                    format_args!("discard to-server len={}", frame.len()),
                );
            }
            Item::Close(_) if server_open => {
                self.signaling
                    .conns
                    .get_mut(&conn)
                    .expect("known")
                    .server_open = false;
                self.signal_trace(host, conn, format_args!("node-closed"));
                self.server_disconnect(conn);
            }
            Item::Close(_) => {}
        }
    }

    fn arrive_at_node(&mut self, host: NodeId, conn: ConnId, item: Item) {
        let side = self.signaling.conns[&conn].node;
        match item {
            Item::Open if side == NodeSide::Connecting => {
                self.signaling.conns.get_mut(&conn).expect("known").node = NodeSide::Open;
                self.signal_trace(host, conn, format_args!("open"));
                self.with_signal_node(host, |node, now| node.handle_signal_open(now));
            }
            Item::Frame(frame) if side == NodeSide::Open => {
                self.signaling.stats.frames_delivered += 1;
                self.signal_trace(host, conn, format_args!("to-node len={}", frame.len()));
                self.with_signal_node(host, |node, now| node.handle_signal_frame(now, &frame));
            }
            Item::Close(Some((code, reason))) if side != NodeSide::Gone => {
                self.signaling.conns.get_mut(&conn).expect("known").node = NodeSide::Gone;
                self.signaling
                    .endpoints
                    .get_mut(&host)
                    .expect("known")
                    .current = None;
                self.signal_trace(host, conn, format_args!("server-closed code={code}"));
                self.notify_closed(host, Closed::Server { code, reason });
            }
            Item::Frame(_) => {
                self.signaling.stats.frames_discarded += 1;
                self.signal_trace(host, conn, format_args!("discard to-node"));
            }
            Item::Open | Item::Close(_) => {}
        }
    }

    /// Forgets `conn` once neither end holds it open and nothing is on its wire; queued actions
    /// that still name it find it gone and do nothing.
    fn collect(&mut self, conn: ConnId) {
        let done = self.signaling.conns.get(&conn).is_some_and(|c| {
            c.node == NodeSide::Gone
                && !c.server_open
                && c.up.items.is_empty()
                && c.down.items.is_empty()
        });
        if done {
            self.signaling.conns.remove(&conn);
        }
    }

    fn server_disconnect(&mut self, conn: ConnId) {
        let now = self.now();
        if let Some(server) = self.signaling.server.as_mut() {
            server.handle_disconnect(now, conn);
        }
        self.drain_signal_server();
    }

    fn notify_closed(&mut self, host: NodeId, why: Closed) {
        self.with_signal_node(host, move |node, now| node.handle_signal_closed(now, why));
    }

    /// Calls `f` on `host`'s signaling machine, then drains the host.
    fn with_signal_node(&mut self, host: NodeId, f: impl FnOnce(&mut dyn SignalNode, Instant)) {
        let now = self.now();
        if let Some(node) = self
            .host_mut(host)
            .machine
            .as_mut()
            .and_then(|m| m.signal())
        {
            f(node, now);
        }
        self.drain(host);
    }

    /// Drains the server's outputs onto the connections, then re-arms its timer.
    pub(super) fn drain_signal_server(&mut self) {
        let Some(mut server) = self.signaling.server.take() else {
            return;
        };
        while let Some(out) = server.poll_output() {
            let (conn, item) = match out {
                Output::Send { conn, frame } => (conn, Item::Frame(frame)),
                Output::Close { conn, code, reason } => (conn, Item::Close(Some((code, reason)))),
            };
            let usable = self
                .signaling
                .conns
                .get(&conn)
                .filter(|c| c.server_open && !c.severed)
                .map(|c| c.host);
            match (usable, item) {
                (Some(host), Item::Close(close)) => {
                    // The server has forgotten the connection: no handle_disconnect follows.
                    self.signaling
                        .conns
                        .get_mut(&conn)
                        .expect("known")
                        .server_open = false;
                    self.signal_trace(host, conn, format_args!("server-close"));
                    self.signal_send(conn, false, Item::Close(close), 0);
                }
                (Some(_), item) => self.signal_send(conn, false, item, 0),
                (None, item) => {
                    if let Item::Frame(_) = item {
                        self.signaling.stats.frames_discarded += 1;
                    }
                    if let Some(c) = self.signaling.conns.get_mut(&conn) {
                        // A close on a severed connection the server has not heard about yet:
                        // it has forgotten the connection, so the later notice is not given.
                        if matches!(item, Item::Close(_)) {
                            c.server_open = false;
                        }
                    }
                    self.trace_line(format_args!("signal discard from-server c{}", conn.0));
                }
            }
        }
        let deadline = server.poll_timeout().map(|t| self.offset(t).max(self.now));
        self.signaling.server = Some(server);
        if deadline != self.signaling.server_timer {
            self.signaling.server_timer = deadline;
            self.signaling.server_timer_generation += 1;
            let generation = self.signaling.server_timer_generation;
            if let Some(at) = deadline {
                self.schedule(at, Action::Signal(SignalAction::ServerTimer { generation }));
            }
        }
    }

    fn signal_trace(&mut self, host: NodeId, conn: ConnId, what: std::fmt::Arguments<'_>) {
        if self.trace.is_some() {
            let name = self.node(host).name.clone();
            self.trace_line(format_args!("signal {name} c{} {what}", conn.0));
        }
    }
}
