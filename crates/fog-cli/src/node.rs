//! `fogconnect serve` and `fogconnect connect`: the whole FogConnect node on real sockets.
//!
//! The node runs on fog-runtime (a fog-mio driver and the signaling WebSocket on threads of
//! their own); this module only turns its events into lines and its commands into calls on
//! the runtime's handle. `serve` registers an alias and echoes every datagram it receives;
//! `connect` connects to a peer, sends one datagram and waits for the echo (with
//! `--until-direct`, also for a direct path to replace a relayed one, and for the echo on it).

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use fog_runtime::{Handle, Runtime, RuntimeConfig};
use fog_signal::PeerId;
use fogconnect::{AcceptPolicy, ConnectionId, Event, NodeConfig, ServerChoice, Via};
use serde_json::json;

use crate::cli::{ConnectArgs, Families, Interfaces, NodeArgs, ServeArgs};
use crate::nat::resolve;
use crate::peer::identity;

/// A running node and how to print its events.
pub(crate) struct Running {
    runtime: Runtime,
    pub(crate) handle: Handle,
    pub(crate) json: bool,
    /// `--nat-cache`: where a finished discovery's findings go.
    nat_cache: Option<std::path::PathBuf>,
}

/// How often `--interfaces auto` reads the interface addresses again.
const GATHER_EVERY: Duration = Duration::from_secs(10);

/// When the process started, as near as `main` can tell: `--json` lines carry `t_ms` from it.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Marks the process start (the first thing `main` does).
// The binary reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// A `--json` line (an object) with `t_ms`, the milliseconds since the process started, first.
// The binary reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn stamped(line: &str) -> String {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0;
    match line.strip_prefix('{') {
        Some("}") => format!("{{\"t_ms\":{t:.1}}}"),
        Some(rest) => format!("{{\"t_ms\":{t:.1},{rest}"),
        None => line.to_owned(),
    }
}

pub(crate) fn start(
    args: &NodeArgs,
    alias: Option<&str>,
    accept: AcceptPolicy,
) -> Result<Running, String> {
    // IPv4: the node's base socket is on the interface that reaches the signaling server,
    // which the runtime finds (an unspecified base address), with a free port.
    let v4 = |server| resolve(server, Families::V4Only).map_err(|e| e.to_string());
    let stun = v4(&args.stun)?;
    let turn = args.turn.as_ref().map(v4).transpose()?;
    let key = identity(args.signaling.key.as_deref())?;
    // fog-runtime seeds the node from the OS random source itself.
    let seed = 0;
    let base = "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?;
    let mut config = NodeConfig::new(key, args.signaling.signal.realm(), stun, base, seed);
    config.alias = alias.map(str::to_owned);
    config.server_key = args.signaling.server_key;
    config.turn = turn;
    config.direct = !args.relay_only;
    config.accept = accept;
    for alternative in &args.alternative {
        config.alternatives.push(ServerChoice {
            stun: v4(&alternative.stun)?,
            turn: alternative.turn.as_ref().map(v4).transpose()?,
        });
    }
    if let Some(path) = &args.nat_cache {
        // A cache that cannot be read costs the fast start only.
        match crate::nat_cache::load(path) {
            Ok(known) => config.known_nats = known,
            Err(e) => eprintln!("fogconnect: --nat-cache not used: {e}"),
        }
    }
    let mut runtime_config = RuntimeConfig::new(config, args.signaling.signal.clone());
    runtime_config.tls_roots = crate::peer::tls_roots(&args.signaling)?;
    runtime_config.port_mapping = !args.no_port_mapping;
    match &args.interfaces {
        Interfaces::Auto => runtime_config.gather_every = Some(GATHER_EVERY),
        Interfaces::List(ips) => runtime_config.node.interfaces = ips.clone(),
    }
    let runtime = Runtime::start(runtime_config).map_err(|e| e.to_string())?;
    Ok(Running {
        handle: runtime.handle(),
        runtime,
        json: args.signaling.json,
        nat_cache: args.nat_cache.clone(),
    })
}

impl Running {
    /// The node's events of the next 20 ms (or fewer, if one comes sooner).
    pub(crate) fn step(&mut self) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        match self
            .runtime
            .events()
            .recv_timeout(Duration::from_millis(20))
        {
            Ok(event) => events.push(event),
            Err(RecvTimeoutError::Timeout) => return Ok(events),
            Err(RecvTimeoutError::Disconnected) => return Err("the node stopped".into()),
        }
        events.extend(self.runtime.events().try_iter());
        Ok(events)
    }

    pub(crate) fn report(&self, event: &Event) {
        let line = match event {
            Event::Ready { behaviour, public } => {
                if self.json {
                    json!({"event": "ready", "nat": behaviour.to_string(), "public": public.map(|p| p.to_string())}).to_string()
                } else {
                    format!(
                        "ready: NAT {behaviour}, public address {}",
                        public.map_or("none".into(), |p| p.to_string())
                    )
                }
            }
            Event::Connected {
                id,
                peer,
                local,
                remote,
                rtt,
                via,
                ..
            } => {
                if self.json {
                    json!({"event": "connected", "connection": id.to_string(), "peer": peer.to_string(),
                        "local": local.to_string(), "remote": remote.to_string(),
                        "rtt_ms": rtt.as_secs_f64() * 1000.0, "via": via_name(*via)}).to_string()
                } else {
                    format!(
                        "connected to {peer} via {} ({local} -> {remote}, rtt {:.1} ms)",
                        via_name(*via),
                        rtt.as_secs_f64() * 1000.0
                    )
                }
            }
            Event::PathChanged {
                id,
                local,
                remote,
                rtt,
                via,
            } => {
                if self.json {
                    json!({"event": "path_changed", "connection": id.to_string(),
                        "local": local.to_string(), "remote": remote.to_string(),
                        "rtt_ms": rtt.as_secs_f64() * 1000.0, "via": via_name(*via)})
                    .to_string()
                } else {
                    format!("path changed: via {} ({local} -> {remote})", via_name(*via))
                }
            }
            Event::NatUpdated { behaviour } => {
                if self.json {
                    json!({"event": "nat_updated", "nat": behaviour.to_string()}).to_string()
                } else {
                    format!("NAT behaviour now known in full: {behaviour}")
                }
            }
            Event::NatKnown(known) => {
                let Some(path) = &self.nat_cache else {
                    return;
                };
                if let Err(e) = crate::nat_cache::save(path, *known) {
                    eprintln!("fogconnect: --nat-cache not written: {e}");
                    return;
                }
                if self.json {
                    json!({"event": "nat_remembered", "nat": known.behaviour.to_string(),
                        "public": known.public.to_string(), "file": path.display().to_string()})
                    .to_string()
                } else {
                    format!("NAT behaviour remembered in {}", path.display())
                }
            }
            Event::CandidatesChanged { added, removed } => {
                let added: Vec<String> = added
                    .iter()
                    .map(|c| format!("{} {}", c.kind.name(), c.addr))
                    .collect();
                let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
                if self.json {
                    json!({"event": "candidates_changed", "added": added, "removed": removed})
                        .to_string()
                } else {
                    format!(
                        "candidates changed: added [{}], removed [{}]",
                        added.join(", "),
                        removed.join(", ")
                    )
                }
            }
            Event::ServerChosen { stun, turn, rtts } => {
                let ms = |r: &Option<Duration>| r.map(|r| r.as_secs_f64() * 1000.0);
                if self.json {
                    let rtts: Vec<_> = rtts
                        .iter()
                        .map(|(s, r)| json!({"stun": s.to_string(), "rtt_ms": ms(r)}))
                        .collect();
                    json!({"event": "server_chosen", "stun": stun.to_string(),
                        "turn": turn.map(|t| t.to_string()), "rtts": rtts})
                    .to_string()
                } else {
                    let rtts: Vec<String> = rtts
                        .iter()
                        .map(|(s, r)| match ms(r) {
                            Some(ms) => format!("{s} {ms:.1} ms"),
                            None => format!("{s} no answer"),
                        })
                        .collect();
                    format!("server chosen: STUN {stun} ({})", rtts.join(", "))
                }
            }
            Event::DirectFailed { id } => {
                if self.json {
                    json!({"event": "direct_failed", "connection": id.to_string()}).to_string()
                } else {
                    "no direct path yet: punching goes on now and then while the relay carries \
                     the connection"
                        .to_owned()
                }
            }
            Event::PathLost { id } => {
                if self.json {
                    json!({"event": "path_lost", "connection": id.to_string()}).to_string()
                } else {
                    "the path stopped answering".to_owned()
                }
            }
            Event::Failed { id, reason } => {
                if self.json {
                    json!({"event": "failed", "connection": id.to_string(), "reason": reason.to_string()}).to_string()
                } else {
                    format!("connection {id} failed: {reason}")
                }
            }
            Event::Closed {
                id,
                reason,
                by_peer,
            } => {
                if self.json {
                    json!({"event": "closed", "connection": id.to_string(), "reason": reason.to_string(), "by_peer": by_peer}).to_string()
                } else {
                    let who = if *by_peer { "the peer" } else { "us" };
                    format!("connection {id} closed by {who}: {reason}")
                }
            }
            _ => return,
        };
        if self.json {
            println!("{}", stamped(&line));
        } else {
            println!("{line}");
        }
    }
}

pub(crate) fn via_name(via: Via) -> &'static str {
    via.name()
}

/// How long `serve --count` stays after its last echo, reporting what the node does (see
/// `serve`): many round trips of any path a test or a user has, and short for a process
/// that is done.
const SERVE_LINGER: Duration = Duration::from_millis(500);

/// `fogconnect serve`: answer connections and echo every datagram back.
// The binary reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn serve(args: &ServeArgs) -> Result<(), String> {
    let mut node = start(&args.node, args.alias.as_deref(), AcceptPolicy::All)?;
    let deadline = args.node.signaling.timeout.map(|t| Instant::now() + t);
    let mut echoed = 0u64;
    let mut connected = false;
    let mut done_at: Option<Instant> = None;
    loop {
        for event in node.step()? {
            node.report(&event);
            match event {
                Event::Connected { .. } => connected = true,
                Event::Data { id, data } => match node.handle.send(id, &data) {
                    Ok(()) => echoed += 1,
                    Err(e) => eprintln!("fogconnect: could not echo a datagram: {e}"),
                },
                _ => {}
            }
        }
        if args.count.is_some_and(|c| echoed >= c) {
            // The peer may have sent before our side selected the path: stay until it has
            // (at most 3 s), so that the last echo leaves and the path is reported.
            let since = *done_at.get_or_insert_with(Instant::now);
            if connected || since.elapsed() > Duration::from_secs(3) {
                // The last datagram may also have come on a path the peer has just moved to
                // and ours has not yet: the controlled side takes a nominated pair when its
                // own check on it is answered (RFC 8445 §7.3.1.5), and the peer's answer
                // can arrive right behind the datagram it sent the moment it moved (a
                // loaded machine reorders the two). Linger a little, and report what comes
                // meanwhile (a path change included: it used to be dropped here).
                let linger = Instant::now() + SERVE_LINGER;
                while Instant::now() < linger {
                    for event in node.step()? {
                        node.report(&event);
                    }
                }
                return Ok(());
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(format!("timed out ({echoed} datagrams echoed)"));
        }
    }
}

/// `fogconnect connect`: connect to a peer, send one datagram, wait for its echo; with
/// `--until-direct` and a relayed connection, stay until a direct path takes over and send it
/// again on that one.
// The binary reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn connect(args: &ConnectArgs) -> Result<(), String> {
    let mut node = start(&args.node, None, AcceptPolicy::Ask)?;
    let deadline = Instant::now() + args.timeout();
    let target: Option<PeerId> = args.peer.parse().ok();
    let mut asked = false;
    let mut ready = (false, false);
    let mut session: Option<ConnectionId> = None;
    // The path the node uses now, and the one the last message left on.
    let mut via: Option<Via> = None;
    let mut sent_via: Option<Via> = None;
    let mut sent_at: Option<Instant> = None;
    let mut echoed = false;
    let mut lookup_pending = target.is_none();
    let mut resolved = target;
    while Instant::now() < deadline {
        for event in node.step()? {
            node.report(&event);
            match event {
                Event::Ready { .. } => ready.0 = true,
                Event::SignalingUp => ready.1 = true,
                Event::Connected { id, via: v, .. } => {
                    session = Some(id);
                    via = Some(v);
                }
                Event::PathChanged { id, via: v, .. } if Some(id) == session => {
                    via = Some(v);
                }
                Event::Data { id: s, data } if Some(s) == session => {
                    let rtt = sent_at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                    let text = String::from_utf8_lossy(&data);
                    if node.json {
                        let line = json!({"event": "echo", "connection": s.to_string(), "data": text, "rtt_ms": rtt});
                        println!("{}", stamped(&line.to_string()));
                    } else {
                        println!("echo: {text} ({rtt:.1} ms)");
                    }
                    if !args.until_direct || sent_via == Some(Via::Direct) {
                        return Ok(());
                    }
                    echoed = true;
                    sent_at = None;
                }
                Event::Failed { reason, .. } => return Err(reason.to_string()),
                Event::Closed { reason, .. } => {
                    return Err(format!("the connection closed: {reason}"));
                }
                Event::LookupFailed { .. } => {
                    return Err("the lookup got no answer: signaling dropped".into());
                }
                Event::LookupResult { peer, online, .. } => {
                    lookup_pending = false;
                    resolved = match (peer, online) {
                        (Some(p), true) => Some(p),
                        (Some(p), false) => {
                            return Err(format!("{} ({p}) is not online", args.peer));
                        }
                        (None, _) => return Err(format!("no peer is known as {}", args.peer)),
                    };
                }
                _ => {}
            }
        }
        if ready.1 && lookup_pending && !asked {
            node.handle.lookup(&args.peer).map_err(|e| e.to_string())?;
            asked = true;
        }
        if ready.0 && ready.1 && session.is_none() && sent_at.is_none() {
            if let Some(peer) = resolved.take() {
                node.handle
                    .connect(peer, args.service)
                    .map_err(|e| e.to_string())?;
                sent_at = Some(Instant::now());
            }
        }
        // The message goes once the connection is up, and with --until-direct once more
        // after the first echo, when the path is direct.
        let due = match sent_via {
            None => true,
            Some(v) => echoed && v != Via::Direct && via == Some(Via::Direct),
        };
        if let (true, Some(s)) = (due, session) {
            node.handle
                .send(s, args.message.as_bytes())
                .map_err(|e| e.to_string())?;
            sent_at = Some(Instant::now());
            sent_via = via;
            echoed = false;
        }
    }
    Err(match (session, sent_via, echoed) {
        (None, _, _) => "no connection before the timeout".into(),
        (Some(_), Some(v), true) => format!(
            "connected via {} and the echo came back, but no direct path before the timeout",
            via_name(v)
        ),
        (Some(_), Some(Via::Direct), false) if args.until_direct => {
            "a direct path took over, but the echo sent on it did not come back before the \
             timeout"
                .into()
        }
        (Some(_), _, _) => "connected, but no echo came back before the timeout".into(),
    })
}
