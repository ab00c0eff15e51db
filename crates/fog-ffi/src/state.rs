//! Every context and connection the C side holds a handle to, in one table behind one lock,
//! and each context's event thread.
//!
//! C never gets a pointer into this table: a context pointer is a number in disguise and a
//! connection handle a number, both never reused, so a stale one finds nothing and the call
//! returns an error instead of touching freed memory.
//!
//! Locking: the table's lock is never held while C code runs. It may be held across a call of
//! the runtime's [`Handle`] (which waits for the runtime's thread), because the runtime's
//! thread never takes it: its event callback only puts the event on a channel. That lets
//! `fc_connect` record its connection before the event thread can see an event about it.

use std::collections::BTreeMap;
use std::ffi::{CString, c_int};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use fog_runtime::{Handle, Runtime};
use fogconnect::{CandidateKind, CloseReason, ConnectionId, Event, FailReason, KeyPair, PeerId};

use crate::{
    Error, FC_ACCEPT, FC_DECIDE_LATER, FC_EVENT_CONNECTED, FC_EVENT_DATA, FC_EVENT_DISCONNECT,
    FC_EVENT_EOF, FC_EVENT_ERROR, FC_EVENT_PATH_CHANGED, FC_EVENT_TIMEOUT, FC_EVENT_WRITABLE,
    FC_PROTOCOL_DATAGRAM, fc_close_cb, fc_conn, fc_event_cb, fc_passive_cb, fc_recv_cb,
};

/// The table.
pub(crate) struct Table {
    next_context: usize,
    next_conn: fc_conn,
    contexts: BTreeMap<usize, Context>,
    /// Which context each live connection handle belongs to.
    conn_context: BTreeMap<fc_conn, usize>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    next_context: 0,
    next_conn: 0,
    contexts: BTreeMap::new(),
    conn_context: BTreeMap::new(),
});

/// The table, locked. A panic while it was held (a bug of ours, caught at the boundary) leaves
/// entries that are still each whole, so the poison is ignored.
pub(crate) fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one `fc_init` made.
pub(crate) struct Context {
    pub(crate) key: KeyPair,
    pub(crate) alias: Option<String>,
    pub(crate) phase: Phase,
    pub(crate) passive: Option<(fc_passive_cb, usize)>,
    pub(crate) conns: BTreeMap<fc_conn, Conn>,
    by_id: BTreeMap<ConnectionId, fc_conn>,
    pub(crate) signaling_up: bool,
    /// The NAT's behaviour, once discovery finished.
    pub(crate) nat: Option<String>,
    /// Our candidates: kind name and address, in the order learnt.
    pub(crate) candidates: Vec<(&'static str, SocketAddr)>,
    /// Set when the context is released: its event thread delivers nothing more.
    pub(crate) released: Arc<AtomicBool>,
}

/// Where a context is in its life.
pub(crate) enum Phase {
    /// Made; `fc_set_id` and the callbacks may be set.
    Idle,
    /// `fc_signal_init` is opening the signaling connection.
    Starting,
    /// Running.
    Running(Box<Running>),
}

/// A started context's runtime and event thread.
pub(crate) struct Running {
    pub(crate) handle: Handle,
    pub(crate) runtime: Runtime,
    pub(crate) events: JoinHandle<()>,
    pub(crate) gate: DataGate,
}

/// One connection handle.
pub(crate) struct Conn {
    pub(crate) link: Link,
    pub(crate) protocol: u8,
    pub(crate) service: u16,
    pub(crate) passive: bool,
    pub(crate) peer: Option<PeerId>,
    pub(crate) userdata: usize,
    pub(crate) on_event: Option<(fc_event_cb, usize)>,
    pub(crate) on_recv: fc_recv_cb,
    pub(crate) on_close: fc_close_cb,
    /// `fc_send` was (or is being) told `FC_ERR_BLOCKED`: the next `Writable` wakes it.
    pub(crate) wants_room: bool,
}

/// What a connection handle stands for in the runtime.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Dialled by alias: waiting for the lookup (asked, or to ask once signaling is up).
    Resolving { alias: String, asked: bool },
    /// A runtime connection.
    Live(ConnectionId),
}

impl Conn {
    /// A connection handle with no callbacks yet.
    pub(crate) fn new(link: Link, protocol: u8, service: u16, passive: bool) -> Conn {
        Conn {
            link,
            protocol,
            service,
            passive,
            peer: None,
            userdata: 0,
            on_event: None,
            on_recv: None,
            on_close: None,
            wants_room: false,
        }
    }
}

/// The runtime's handle in a phase, once running.
pub(crate) fn handle_of(phase: &Phase) -> Result<&Handle, Error> {
    match phase {
        Phase::Running(running) => Ok(&running.handle),
        _ => Err(Error::NotStarted),
    }
}

impl Table {
    /// Adds a context; the number its pointer carries.
    pub(crate) fn add_context(&mut self, key: KeyPair) -> Option<usize> {
        // From 1, never 0 (null), never reused.
        self.next_context = self.next_context.checked_add(1)?;
        self.contexts.insert(
            self.next_context,
            Context {
                key,
                alias: None,
                phase: Phase::Idle,
                passive: None,
                conns: BTreeMap::new(),
                by_id: BTreeMap::new(),
                signaling_up: false,
                nat: None,
                candidates: Vec::new(),
                released: Arc::new(AtomicBool::new(false)),
            },
        );
        Some(self.next_context)
    }

    pub(crate) fn context(&mut self, ctx: usize) -> Result<&mut Context, Error> {
        self.contexts.get_mut(&ctx).ok_or(Error::InvalidContext)
    }

    /// A new connection handle of context `ctx`.
    pub(crate) fn add_conn(&mut self, ctx: usize, conn: Conn) -> Result<fc_conn, Error> {
        let next = self.next_conn.checked_add(1).ok_or(Error::TooMany)?;
        let context = self.contexts.get_mut(&ctx).ok_or(Error::InvalidContext)?;
        if let Link::Live(id) = conn.link {
            context.by_id.insert(id, next);
        }
        context.conns.insert(next, conn);
        self.next_conn = next;
        self.conn_context.insert(next, ctx);
        Ok(next)
    }

    /// The context a connection handle belongs to (which holds it in `conns`).
    pub(crate) fn context_of(&mut self, conn: fc_conn) -> Result<&mut Context, Error> {
        let ctx = self
            .conn_context
            .get(&conn)
            .ok_or(Error::InvalidConnection)?;
        let context = self.contexts.get_mut(ctx).ok_or(Error::InvalidConnection)?;
        if context.conns.contains_key(&conn) {
            Ok(context)
        } else {
            Err(Error::InvalidConnection)
        }
    }

    /// The runtime connection of a handle, and the handle of its runtime.
    pub(crate) fn live(&mut self, conn: fc_conn) -> Result<(Handle, ConnectionId), Error> {
        let context = self.context_of(conn)?;
        let handle = handle_of(&context.phase)?.clone();
        match context.conns[&conn].link {
            Link::Live(id) => Ok((handle, id)),
            Link::Resolving { .. } => Err(Error::NotConnected),
        }
    }

    /// Forgets a connection handle.
    pub(crate) fn remove_conn(&mut self, conn: fc_conn) {
        let Some(ctx) = self.conn_context.remove(&conn) else {
            return;
        };
        if let Some(context) = self.contexts.get_mut(&ctx) {
            if let Some(Conn {
                link: Link::Live(id),
                ..
            }) = context.conns.remove(&conn)
            {
                context.by_id.remove(&id);
            }
        }
    }

    /// Removes a context and all its connection handles; its event thread stops delivering.
    pub(crate) fn remove_context(&mut self, ctx: usize) -> Result<Context, Error> {
        let context = self.contexts.remove(&ctx).ok_or(Error::InvalidContext)?;
        for conn in context.conns.keys() {
            self.conn_context.remove(conn);
        }
        context.released.store(true, Ordering::SeqCst);
        Ok(context)
    }
}

/// A call into C that the event thread makes once the table is unlocked.
pub(crate) enum Call {
    Event {
        conn: fc_conn,
        cb: fc_event_cb,
        arg: usize,
        event: c_int,
        data: Vec<u8>,
    },
    Recv {
        conn: fc_conn,
        cb: fc_recv_cb,
        data: Vec<u8>,
    },
    Close {
        conn: fc_conn,
        cb: fc_close_cb,
        event: c_int,
    },
    Passive {
        ctx: usize,
        conn: fc_conn,
        cb: fc_passive_cb,
        arg: usize,
        peer: CString,
        service: u16,
    },
    /// The handle's last event was delivered: forget it.
    Forget(fc_conn),
}

/// Bounds the datagrams queued between the runtime's thread and the event thread
/// ([`FC_MAX_QUEUED_DATA`](crate::FC_MAX_QUEUED_DATA)): a peer that sends faster than the
/// callbacks take must not grow the queue without end. Other events are bounded by the node's
/// own limits (connections, lookups) and always pass.
#[derive(Clone, Default)]
pub(crate) struct DataGate {
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl DataGate {
    /// Whether an event may join the queue (on the runtime's thread); `data`: whether it is a
    /// datagram ([`Event::Data`]).
    pub(crate) fn admit(&self, data: bool) -> bool {
        if !data {
            return true;
        }
        if self.queued.load(Ordering::Acquire) >= crate::FC_MAX_QUEUED_DATA {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Datagrams dropped so far.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    /// An event left the queue (on the event thread).
    fn taken(&self, data: bool) {
        if data {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A context's event thread: takes the runtime's events in order, updates the table, and calls
/// the application's callbacks with the table unlocked.
pub(crate) fn spawn_events(
    ctx: usize,
    events: Receiver<Event>,
    gate: DataGate,
    released: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("fog-ffi-events".into())
        .spawn(move || {
            while let Ok(event) = events.recv() {
                gate.taken(matches!(event, Event::Data { .. }));
                let calls = {
                    let mut table = table();
                    if released.load(Ordering::SeqCst) {
                        return;
                    }
                    match table.on_event(ctx, event) {
                        Some(calls) => calls,
                        None => return,
                    }
                };
                for call in calls {
                    if released.load(Ordering::SeqCst) {
                        return;
                    }
                    call.run();
                }
            }
        })
}

impl Table {
    /// Takes one runtime event of context `ctx` into the table; the calls into C it asks for,
    /// or `None` when the context is gone.
    fn on_event(&mut self, ctx: usize, event: Event) -> Option<Vec<Call>> {
        let context = self.contexts.get_mut(&ctx)?;
        let handle = handle_of(&context.phase).ok()?.clone();
        let mut calls = Vec::new();
        match event {
            Event::Ready { behaviour, public } => {
                context.nat = Some(behaviour.to_string());
                context.add_candidate(CandidateKind::Host.name(), handle.local_addr());
                if let Some(public) = public {
                    context.add_candidate(CandidateKind::ServerReflexive.name(), public);
                }
            }
            Event::NatUpdated { behaviour } => context.nat = Some(behaviour.to_string()),
            Event::RelayReady { relayed } => {
                context.add_candidate(CandidateKind::Relayed.name(), relayed)
            }
            Event::CandidatesChanged { added, removed } => {
                context.candidates.retain(|(_, a)| !removed.contains(a));
                for c in added {
                    context.add_candidate(c.kind.name(), c.addr);
                }
            }
            Event::SignalingUp => {
                context.signaling_up = true;
                context.ask_lookups(&handle, None, &mut calls);
            }
            Event::SignalingDown => context.signaling_up = false,
            Event::Incoming {
                id,
                peer,
                service,
                transport,
                ..
            } => {
                let passive = context.passive;
                let protocol =
                    crate::protocol_for(&transport).unwrap_or(FC_PROTOCOL_DATAGRAM as u8);
                let mut conn = Conn::new(Link::Live(id), protocol, service, true);
                conn.peer = Some(peer);
                match (self.add_conn(ctx, conn), passive) {
                    (Ok(conn), Some((cb, arg))) => calls.push(Call::Passive {
                        ctx,
                        conn,
                        cb,
                        arg,
                        peer: CString::new(peer.to_string()).unwrap_or_default(),
                        service,
                    }),
                    // Without a passive callback every offer is accepted, as the original did.
                    (Ok(_), None) => {
                        let _ = handle.accept(id);
                    }
                    (Err(_), _) => {
                        let _ = handle.refuse(id, 0, "no room for another handle");
                    }
                }
            }
            Event::Connected { id, peer, .. } => {
                if let Some(conn) = context
                    .by_id
                    .get(&id)
                    .and_then(|c| context.conns.get_mut(c))
                {
                    conn.peer = Some(peer);
                }
                context.deliver(id, FC_EVENT_CONNECTED, &[], &mut calls);
            }
            Event::PathChanged { id, via, .. } => {
                context.deliver(id, FC_EVENT_PATH_CHANGED, via.name().as_bytes(), &mut calls);
            }
            Event::Data { id, data } => context.deliver(id, FC_EVENT_DATA, &data, &mut calls),
            Event::Writable => {
                let waiting: Vec<ConnectionId> = context
                    .conns
                    .values_mut()
                    .filter_map(|c| match (std::mem::take(&mut c.wants_room), &c.link) {
                        (true, Link::Live(id)) => Some(*id),
                        _ => None,
                    })
                    .collect();
                for id in waiting {
                    context.deliver(id, FC_EVENT_WRITABLE, &[], &mut calls);
                }
            }
            Event::Failed { id, reason } => {
                let event = match reason {
                    FailReason::TimedOut => FC_EVENT_TIMEOUT,
                    _ => FC_EVENT_ERROR,
                };
                context.deliver(id, event, reason.to_string().as_bytes(), &mut calls);
            }
            Event::Closed {
                id,
                reason,
                by_peer,
            } => {
                let event = match (&reason, by_peer) {
                    (CloseReason::Application { .. }, true) => FC_EVENT_EOF,
                    (CloseReason::Application { .. }, false) => FC_EVENT_DISCONNECT,
                    (CloseReason::IdleTimeout, _) => FC_EVENT_TIMEOUT,
                    _ => FC_EVENT_ERROR,
                };
                context.deliver(id, event, reason.to_string().as_bytes(), &mut calls);
            }
            Event::LookupResult { name, peer, online } => {
                let peer = peer.filter(|_| online).ok_or(if online {
                    "no peer has this alias"
                } else {
                    "the peer is not online"
                });
                context.resolved(&handle, &name, peer, &mut calls);
            }
            Event::LookupFailed { name } => {
                // Asked again when signaling is back.
                for conn in context.conns.values_mut() {
                    if let Link::Resolving { alias, asked } = &mut conn.link {
                        if *alias == name {
                            *asked = false;
                        }
                    }
                }
            }
            _ => {}
        }
        Some(calls)
    }

    /// What the passive callback decided for `conn`, carried out.
    fn decide(&mut self, conn: fc_conn, decision: c_int) {
        let Ok((handle, id)) = self.live(conn) else {
            return;
        };
        if decision == FC_ACCEPT {
            let _ = handle.accept(id);
        } else if decision != FC_DECIDE_LATER {
            let _ = handle.refuse(id, 0, "refused by the application");
            self.remove_conn(conn);
        }
    }
}

impl Context {
    fn add_candidate(&mut self, kind: &'static str, addr: SocketAddr) {
        if !self.candidates.iter().any(|&(k, a)| k == kind && a == addr) {
            self.candidates.push((kind, addr));
        }
    }

    /// Asks the signaling server about the aliases dialled and not yet asked about (all, or
    /// only `only`); once signaling is up.
    pub(crate) fn ask_lookups(
        &mut self,
        handle: &Handle,
        only: Option<&str>,
        calls: &mut Vec<Call>,
    ) {
        if !self.signaling_up {
            return;
        }
        let mut asked: Vec<String> = Vec::new();
        let mut failed: Vec<(String, String)> = Vec::new();
        for conn in self.conns.values_mut() {
            let Link::Resolving { alias, asked: done } = &mut conn.link else {
                continue;
            };
            if *done || only.is_some_and(|o| o != alias) {
                continue;
            }
            // One lookup answers every handle dialling the same alias.
            if !asked.contains(alias) {
                match handle.lookup(alias) {
                    Ok(()) => asked.push(alias.clone()),
                    Err(e) => {
                        failed.push((alias.clone(), e.to_string()));
                        continue;
                    }
                }
            }
            *done = true;
        }
        for (alias, why) in failed {
            self.resolved(handle, &alias, Err(&why), calls);
        }
    }

    /// A lookup's answer for the handles dialling `alias`: connect them, or fail them.
    fn resolved(
        &mut self,
        handle: &Handle,
        alias: &str,
        peer: Result<PeerId, &str>,
        calls: &mut Vec<Call>,
    ) {
        let waiting: Vec<fc_conn> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.link, Link::Resolving { alias: a, .. } if a == alias))
            .map(|(&k, _)| k)
            .collect();
        for key in waiting {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let result = match peer {
                Ok(peer) => handle
                    .connect_with(peer, conn.service, crate::transport_of(conn.protocol))
                    .map(|id| (peer, id))
                    .map_err(|e| e.to_string()),
                Err(why) => Err(format!("{alias}: {why}")),
            };
            match result {
                Ok((peer, id)) => {
                    conn.link = Link::Live(id);
                    conn.peer = Some(peer);
                    self.by_id.insert(id, key);
                }
                Err(why) => {
                    let conn = &self.conns[&key];
                    terminal(key, conn, FC_EVENT_ERROR, why.as_bytes(), calls);
                }
            }
        }
    }

    /// An event about runtime connection `id` for its handle's callbacks; the handle is
    /// forgotten after a terminal one.
    fn deliver(&mut self, id: ConnectionId, event: c_int, data: &[u8], calls: &mut Vec<Call>) {
        let Some((&key, conn)) = self
            .by_id
            .get(&id)
            .and_then(|k| self.conns.get_key_value(k))
        else {
            return;
        };
        match event {
            FC_EVENT_DATA if conn.on_recv.is_some() => calls.push(Call::Recv {
                conn: key,
                cb: conn.on_recv,
                data: with_nul(data),
            }),
            FC_EVENT_CONNECTED | FC_EVENT_DATA | FC_EVENT_PATH_CHANGED | FC_EVENT_WRITABLE => {
                calls.extend(event_call(key, conn, event, data));
            }
            _ => terminal(key, conn, event, data, calls),
        }
    }
}

/// The calls for a handle's last event: its close callback (or its event callback), then
/// forgetting it.
fn terminal(key: fc_conn, conn: &Conn, event: c_int, data: &[u8], calls: &mut Vec<Call>) {
    if conn.on_close.is_some() {
        calls.push(Call::Close {
            conn: key,
            cb: conn.on_close,
            event,
        });
    } else {
        calls.extend(event_call(key, conn, event, data));
    }
    calls.push(Call::Forget(key));
}

/// The call of a handle's event callback, if it has one.
fn event_call(key: fc_conn, conn: &Conn, event: c_int, data: &[u8]) -> Option<Call> {
    let (cb, arg) = conn.on_event?;
    Some(Call::Event {
        conn: key,
        cb,
        arg,
        event,
        data: with_nul(data),
    })
}

/// `data` and a NUL after it (not counted in the length), so text prints as it is.
fn with_nul(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.extend_from_slice(data);
    v.push(0);
    v
}

impl Call {
    fn run(self) {
        match self {
            Call::Event {
                conn,
                cb: Some(cb),
                arg,
                event,
                data,
            } => {
                // SAFETY: the application registered `cb` for this connection's events, with
                // `arg`; `data` holds len + 1 bytes (a NUL after them) and outlives the call.
                unsafe {
                    cb(
                        conn,
                        event,
                        data.as_ptr(),
                        data.len() - 1,
                        std::ptr::with_exposed_provenance_mut(arg),
                    )
                }
            }
            Call::Recv {
                conn,
                cb: Some(cb),
                data,
            } => {
                // SAFETY: the application registered `cb` for this connection's data; `data`
                // holds len + 1 bytes (a NUL after them) and outlives the call.
                unsafe { cb(conn, data.as_ptr(), data.len() - 1) }
            }
            Call::Close {
                conn,
                cb: Some(cb),
                event,
            } => {
                // SAFETY: the application registered `cb` for this connection's end.
                unsafe { cb(conn, event) }
            }
            Call::Passive {
                ctx,
                conn,
                cb: Some(cb),
                arg,
                peer,
                service,
            } => {
                let ptr = std::ptr::without_provenance_mut(ctx);
                // SAFETY: the application registered `cb` for this context's incoming
                // connections, with `arg`; `peer` is a NUL-terminated string that outlives
                // the call.
                let decision = unsafe {
                    cb(
                        ptr,
                        conn,
                        peer.as_ptr(),
                        c_int::from(service),
                        std::ptr::with_exposed_provenance_mut(arg),
                    )
                };
                table().decide(conn, decision);
            }
            Call::Forget(conn) => table().remove_conn(conn),
            Call::Event { cb: None, .. }
            | Call::Recv { cb: None, .. }
            | Call::Close { cb: None, .. }
            | Call::Passive { cb: None, .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_gate_bounds_datagrams_only() {
        let gate = DataGate::default();
        for _ in 0..crate::FC_MAX_QUEUED_DATA {
            assert!(gate.admit(true));
        }
        assert!(!gate.admit(true), "one datagram too many");
        assert!(gate.admit(false), "other events always pass");
        assert_eq!(gate.dropped(), 1);
        gate.taken(false);
        assert!(!gate.admit(true), "a taken non-datagram frees nothing");
        gate.taken(true);
        assert!(gate.admit(true), "a taken datagram frees a place");
        assert!(!gate.admit(true));
    }
}
