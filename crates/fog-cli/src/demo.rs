//! `fogconnect demo` (also what `fogconnect` with no subcommand runs): FogConnect's main job,
//! end to end, on loopback, with nothing to set up.
//!
//! It starts fogd's STUN and signaling services on threads of this process (the `fogd` library,
//! on free ports of 127.0.0.1, and 127.0.0.2 for the RFC 5780 second address), then two whole
//! nodes (fog-runtime, each its own UDP socket, key and threads) that discover their NAT against
//! it and register. Node A then connects to node B once with each transport the node runs:
//! datagrams are echoed by B and compared, reliable transports carry `--size` bytes of a
//! pattern that B hashes (SHA-256) and the hashes must agree. The report says, per transport,
//! the path, the time to connect, the path's RTT, the throughput and the check; both nodes'
//! NAT types come from their discovery (`Event::Ready`). Exit 0 when every transport connected
//! and delivered intact, 1 with the reason on stderr otherwise.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser as _;
use fog_runtime::{Handle, Runtime, RuntimeConfig, RuntimeError};
use fogconnect::{AcceptPolicy, ConnectionId, Event, NodeConfig, SendError, Transport, Via};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::DemoArgs;
use crate::peer::identity;

/// The service number the demo's connections ask for.
const SERVICE: u16 = 1;
/// Datagrams echoed per datagram connection, and their size (below `MAX_DATAGRAM`).
const PINGS: usize = 20;
const PING_LEN: usize = 1_000;
/// The message size on reliable transports, as in the transfer bench.
const MESSAGE: usize = 60_000;
/// How often fogd's ports are chosen again when a free port was taken before fogd bound it.
const START_ATTEMPTS: usize = 5;

/// The wall clock: a command-line tool measuring what it shows may read it.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// What one node found when it came up.
struct NodeReport {
    peer: String,
    nat: String,
    public: Option<SocketAddr>,
    ready_in: Duration,
}

/// One transport's run.
struct Leg {
    transport: Transport,
    via: Via,
    local: SocketAddr,
    remote: SocketAddr,
    connect: Duration,
    rtt: Duration,
    /// Bytes that went to B (pings or the pattern).
    bytes: u64,
    /// From the first byte sent to the last received (the last echo for datagrams).
    secs: f64,
    /// For datagrams: "20/20 echoed"; for the rest: the hash comparison.
    check: String,
    ok: bool,
}

/// What B tells the demo about a reliable connection once all its bytes arrived.
struct Received {
    at: Instant,
    digest: [u8; 32],
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), String> {
    let started = now();
    let deadline = started + args.timeout;
    eprintln!("starting fogd (STUN and signaling) in this process on loopback");
    let (fogd, stun, url) = start_fogd()?;
    let result = with_fogd(args, stun, &url, deadline, started);
    // The nodes are gone by now; fogd's loops end at once.
    let stopped = fogd.stop().map_err(|e| format!("stopping fogd: {e}"));
    let report = result?;
    stopped?;
    let text = if args.json {
        report.json(args.size, stun, &url, started).to_string()
    } else {
        report.text(args.size, stun, &url, started)
    };
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        // `fogconnect demo | head` is fine.
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(format!("writing the report: {e}")),
    }
    if report.legs.iter().all(|l| l.ok) {
        Ok(())
    } else {
        Err("a transport delivered something other than what was sent".into())
    }
}

/// Everything the demo measured.
struct Report {
    a: NodeReport,
    b: NodeReport,
    legs: Vec<Leg>,
}

fn with_fogd(
    args: &DemoArgs,
    stun: SocketAddr,
    url: &str,
    deadline: Instant,
    started: Instant,
) -> Result<Report, String> {
    let (a, a_events, transports) = node(stun, url)?;
    let (b, b_events, _) = node(stun, url)?;
    let (ha, hb) = (a.handle(), b.handle());
    let a_report = ready(&ha, &a_events, deadline, started).map_err(|e| format!("node A: {e}"))?;
    let b_report = ready(&hb, &b_events, deadline, started).map_err(|e| format!("node B: {e}"))?;
    eprintln!("both nodes ready (A {}, B {})", a_report.nat, b_report.nat);

    // B answers on a thread of its own: it echoes datagrams and hashes the rest.
    let (received_tx, received) = mpsc::channel();
    let size = args.size;
    let hb_thread = hb.clone();
    let responder = thread::spawn(move || respond(&hb_thread, &b_events, size, &received_tx));

    let mut legs = Vec::new();
    let mut outcome = Ok(());
    for transport in transports {
        eprintln!("connecting over {}", String::from(transport.clone()));
        match leg(
            &ha,
            &hb,
            &a_events,
            &received,
            transport.clone(),
            size,
            deadline,
        ) {
            Ok(leg) => legs.push(leg),
            Err(e) => {
                outcome = Err(format!("{}: {e}", String::from(transport)));
                break;
            }
        }
    }
    let _ = a.shutdown();
    let _ = b.shutdown();
    // B's event channel closes with its runtime, which ends the responder.
    let _ = responder.join();
    outcome.map(|()| Report {
        a: a_report,
        b: b_report,
        legs,
    })
}

/// fogd's STUN (two addresses when 127.0.0.2 is there, as on Linux) and signaling on free
/// loopback ports; the STUN address and the signaling URL.
fn start_fogd() -> Result<(fogd::Services, SocketAddr, String), String> {
    let a1 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let a2 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let free_udp = |ip| {
        UdpSocket::bind(SocketAddr::new(ip, 0))
            .and_then(|s| s.local_addr())
            .map_err(|e| format!("a free UDP port on {ip}: {e}"))
    };
    let mut last_error = String::new();
    for _ in 0..START_ATTEMPTS {
        let stun = free_udp(a1)?;
        // Without a second address (macOS until `ifconfig lo0 alias 127.0.0.2`) discovery
        // still finds the mapping; the filtering tests need the other address.
        let alt = free_udp(a2).ok();
        let signal = TcpListener::bind(SocketAddr::new(a1, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free TCP port on {a1}: {e}"))?;
        let mut argv = vec![
            "fogd".to_owned(),
            "--stun".to_owned(),
            stun.to_string(),
            "--signal".to_owned(),
            signal.to_string(),
            // Two nodes on one host look like one client to a rate limit.
            "--stun-no-rate-limit".to_owned(),
        ];
        if let Some(alt) = alt {
            argv.extend(["--stun-alt".to_owned(), alt.to_string()]);
        }
        let cli = fogd::Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
        match fogd::Services::start(&cli) {
            Ok(services) => return Ok((services, stun, format!("ws://{signal}/ws"))),
            // Another program took a port between our probe and fogd's bind: choose again.
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(format!(
        "fogd could not start on free loopback ports: {last_error}"
    ))
}

/// A node on loopback with a new identity, accepting every connection; its events and the
/// transports it runs.
fn node(stun: SocketAddr, url: &str) -> Result<(Runtime, Receiver<Event>, Vec<Transport>), String> {
    let key = identity(None)?;
    let base = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut config = NodeConfig::new(key, "127.0.0.1", stun, base, 0);
    config.accept = AcceptPolicy::All;
    let transports = config.transports.clone();
    let (tx, rx) = mpsc::channel();
    let url = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let runtime = Runtime::start_with_callback(RuntimeConfig::new(config, url), move |e| {
        let _ = tx.send(e);
    })
    .map_err(|e| format!("starting a node: {e}"))?;
    Ok((runtime, rx, transports))
}

/// The next event `want` picks before `deadline`; `what` names it in the error.
fn wait_for<T>(
    events: &Receiver<Event>,
    deadline: Instant,
    what: &str,
    mut want: impl FnMut(&Event) -> Result<Option<T>, String>,
) -> Result<T, String> {
    loop {
        let left = deadline.saturating_duration_since(now());
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(v) = want(&event)? {
                    return Ok(v);
                }
            }
            Err(RecvTimeoutError::Timeout) => return Err(format!("no {what} before the timeout")),
            Err(RecvTimeoutError::Disconnected) => return Err("the node stopped".into()),
        }
    }
}

/// Waits for discovery (`Ready`) and signaling (`SignalingUp`), in either order.
fn ready(
    handle: &Handle,
    events: &Receiver<Event>,
    deadline: Instant,
    started: Instant,
) -> Result<NodeReport, String> {
    let (mut found, mut signaling) = (None, false);
    while found.is_none() || !signaling {
        wait_for(events, deadline, "discovery and signaling", |e| {
            Ok(match e {
                Event::Ready { behaviour, public } => {
                    found = Some((behaviour.to_string(), *public));
                    Some(())
                }
                Event::SignalingUp => {
                    signaling = true;
                    Some(())
                }
                _ => None,
            })
        })?;
    }
    let (nat, public) = found.unwrap_or_default();
    Ok(NodeReport {
        peer: handle.peer_id().to_string(),
        nat,
        public,
        ready_in: now().saturating_duration_since(started),
    })
}

/// Node B's side: echo every datagram on a datagram connection, hash what reliable ones carry
/// and say when `size` bytes arrived. Ends when B's runtime stops.
fn respond(handle: &Handle, events: &Receiver<Event>, size: u64, done: &Sender<Received>) {
    // Per connection: `None` for datagrams, the hash and the count so far for the rest.
    let mut conns: BTreeMap<ConnectionId, Option<(Sha256, u64)>> = BTreeMap::new();
    for event in events {
        match event {
            Event::Incoming { id, transport, .. } => {
                let state = (transport != Transport::Datagram).then(|| (Sha256::new(), 0));
                conns.insert(id, state);
            }
            Event::Data { id, data } => match conns.get_mut(&id) {
                Some(None) => {
                    // A lost echo shows as a missing one in A's count.
                    let _ = handle.send(id, &data);
                }
                Some(Some((hash, got))) => {
                    hash.update(&data);
                    *got += data.len() as u64;
                    if *got >= size {
                        if let Some(Some((hash, _))) = conns.remove(&id) {
                            let digest = hash.finalize().into();
                            let _ = done.send(Received { at: now(), digest });
                        }
                    }
                }
                None => {}
            },
            Event::Closed { id, .. } | Event::Failed { id, .. } => {
                conns.remove(&id);
            }
            _ => {}
        }
    }
}

/// One connection from A to B over `transport`, and its exchange.
fn leg(
    ha: &Handle,
    hb: &Handle,
    a_events: &Receiver<Event>,
    received: &Receiver<Received>,
    transport: Transport,
    size: u64,
    deadline: Instant,
) -> Result<Leg, String> {
    let asked = now();
    let id = ha
        .connect_with(hb.peer_id(), SERVICE, transport.clone())
        .map_err(|e| format!("connect: {e}"))?;
    let (via, local, remote, first_rtt) = wait_for(a_events, deadline, "connection", |e| {
        Ok(match e {
            Event::Connected {
                id: c,
                via,
                local,
                remote,
                rtt,
                ..
            } if *c == id => Some((*via, *local, *remote, *rtt)),
            Event::Failed { id: c, reason } if *c == id => {
                return Err(format!("the connection failed: {reason}"));
            }
            _ => None,
        })
    })?;
    let connect = now().saturating_duration_since(asked);

    let (bytes, secs, check, ok) = if transport == Transport::Datagram {
        ping(ha, a_events, id, deadline)?
    } else {
        transfer(ha, a_events, received, id, size, deadline)?
    };
    // The smoothed RTT after the exchange; the path's first measurement if there is none.
    let rtt = ha
        .stats(id)
        .ok()
        .flatten()
        .and_then(|s| s.rtt)
        .unwrap_or(first_rtt);
    let _ = ha.close(id, 0, "demo done");
    Ok(Leg {
        transport,
        via,
        local,
        remote,
        connect,
        rtt,
        bytes,
        secs,
        check,
        ok,
    })
}

/// Datagrams there and back, one at a time, each compared with what was sent.
fn ping(
    ha: &Handle,
    a_events: &Receiver<Event>,
    id: ConnectionId,
    deadline: Instant,
) -> Result<(u64, f64, String, bool), String> {
    let start = now();
    let mut echoed = 0;
    for n in 0..PINGS {
        let datagram: Vec<u8> = (0..PING_LEN).map(|i| (i * 7 + n) as u8).collect();
        ha.send(id, &datagram).map_err(|e| format!("send: {e}"))?;
        // A datagram may be lost; wait a moment for each echo, then go on.
        let wait = (now() + Duration::from_millis(500)).min(deadline);
        let echo = wait_for(a_events, wait, "echo", |e| {
            Ok(match e {
                Event::Data { id: c, data } if *c == id => Some(data.clone()),
                _ => None,
            })
        });
        if echo.is_ok_and(|e| e == datagram) {
            echoed += 1;
        }
    }
    let secs = now().saturating_duration_since(start).as_secs_f64();
    Ok((
        (PINGS * PING_LEN) as u64,
        secs,
        format!("{echoed}/{PINGS} echoed intact"),
        echoed == PINGS,
    ))
}

/// `size` bytes of a pattern in `MESSAGE`-byte messages; B's hash must be the sender's.
fn transfer(
    ha: &Handle,
    a_events: &Receiver<Event>,
    received: &Receiver<Received>,
    id: ConnectionId,
    size: u64,
    deadline: Instant,
) -> Result<(u64, f64, String, bool), String> {
    let start = now();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; MESSAGE];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        let n = (MESSAGE as u64).min(left) as usize;
        for byte in &mut buf[..n] {
            // xorshift: bytes that no transport could compress or guess.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        hash.update(&buf[..n]);
        loop {
            match ha.send(id, &buf[..n]) {
                Ok(()) => break,
                Err(RuntimeError::Send(SendError::Blocked)) => {
                    if now() > deadline {
                        return Err("sending: no room before the timeout".into());
                    }
                    // Wait for Writable (or a moment, should it have come already).
                    let _ = a_events.recv_timeout(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        left -= n as u64;
    }
    let sent: [u8; 32] = hash.finalize().into();
    let left = deadline.saturating_duration_since(now());
    let got = received
        .recv_timeout(left)
        .map_err(|_| "the receiver did not get every byte before the timeout".to_owned())?;
    let secs = got.at.saturating_duration_since(start).as_secs_f64();
    let ok = got.digest == sent;
    let check = if ok {
        format!("sha256 ok ({}…)", hex(&sent[..4]))
    } else {
        format!(
            "sha256 MISMATCH (sent {}…, got {}…)",
            hex(&sent[..4]),
            hex(&got.digest[..4])
        )
    };
    Ok((size, secs, check, ok))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    fn text(&self, size: u64, stun: SocketAddr, url: &str, started: Instant) -> String {
        let mut out = format!(
            "FogConnect demo: fogd (STUN {stun}, signaling {url}) and two nodes in this process, \
             on loopback\n\n"
        );
        for (name, n) in [("A", &self.a), ("B", &self.b)] {
            out += &format!(
                "node {name}  {}  NAT {}, public {}, ready in {:.2} s\n",
                n.peer,
                n.nat,
                n.public.map_or("none".into(), |p| p.to_string()),
                n.ready_in.as_secs_f64()
            );
        }
        out += &format!(
            "\n{:<9} {:<47} {:>8} {:>8} {:>10} {:>11}  check\n",
            "transport", "path (A -> B)", "connect", "RTT", "data", "throughput"
        );
        for l in &self.legs {
            let datagram = l.transport == Transport::Datagram;
            let data = if datagram {
                format!("{PINGS}×{PING_LEN} B")
            } else {
                format!("{:.1} MiB", mib(l.bytes))
            };
            let rate = if datagram {
                "-".to_owned()
            } else {
                format!("{:.1} MiB/s", mib(l.bytes) / l.secs.max(1e-9))
            };
            out += &format!(
                "{:<9} {:<47} {:>5.1} ms {:>5.2} ms {data:>10} {rate:>11}  {}\n",
                String::from(l.transport.clone()),
                format!("{} {} -> {}", l.via.name(), l.local, l.remote),
                ms(l.connect),
                ms(l.rtt),
                l.check
            );
        }
        let ok = self.legs.iter().filter(|l| l.ok).count();
        out += &format!(
            "\n{ok} of {} transports connected and delivered intact ({:.1} MiB each on the \
             reliable ones) in {:.1} s",
            self.legs.len(),
            mib(size),
            now().saturating_duration_since(started).as_secs_f64()
        );
        out
    }

    fn json(&self, size: u64, stun: SocketAddr, url: &str, started: Instant) -> serde_json::Value {
        let node = |n: &NodeReport| {
            json!({"peer": n.peer, "nat": n.nat, "public": n.public.map(|p| p.to_string()),
                "ready_s": n.ready_in.as_secs_f64()})
        };
        let legs: Vec<_> = self
            .legs
            .iter()
            .map(|l| {
                let datagram = l.transport == Transport::Datagram;
                json!({
                    "transport": String::from(l.transport.clone()),
                    "via": l.via.name(),
                    "local": l.local.to_string(),
                    "remote": l.remote.to_string(),
                    "connect_ms": ms(l.connect),
                    "rtt_ms": ms(l.rtt),
                    "bytes": l.bytes,
                    "secs": l.secs,
                    "mib_per_s": (!datagram).then(|| mib(l.bytes) / l.secs.max(1e-9)),
                    "check": l.check,
                    "ok": l.ok,
                })
            })
            .collect();
        json!({
            "stun": stun.to_string(),
            "signal": url,
            "size": size,
            "a": node(&self.a),
            "b": node(&self.b),
            "transports": legs,
            "ok": self.legs.iter().all(|l| l.ok),
            "secs": now().saturating_duration_since(started).as_secs_f64(),
        })
    }
}
