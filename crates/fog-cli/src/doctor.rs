//! `fogconnect doctor PEER`: connects to a peer as `connect` does, waits until punching has
//! had its round (a direct path, or the round over), and explains the connection from the
//! node's own record (`Node::diagnose`): both NAT behaviours, what the pairing expects of
//! them and the route it chose, what each candidate pair did, the path that won, and what
//! would make a relayed connection direct.

// The binary reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, Mapping, PortPattern};
use fog_core::pairing::{Outcome, RelayReason};
use fog_signal::PeerId;
use fogconnect::{AcceptPolicy, ConnectionId, Diagnosis, Event, Via};
use serde_json::json;

use crate::cli::DoctorArgs;
use crate::node::{stamped, start};

/// How long punching may go on before the doctor explains what it has (the strategy's
/// default round is 5 s; a birthday round ends within it).
const PUNCH_WAIT: Duration = Duration::from_secs(8);

/// Pairs listed in the text output (a birthday round has hundreds).
const PAIRS_SHOWN: usize = 12;

pub(crate) fn doctor(args: &DoctorArgs) -> Result<(), String> {
    let mut node = start(&args.node, None, AcceptPolicy::Ask)?;
    let deadline = Instant::now()
        + args
            .node
            .signaling
            .timeout
            .unwrap_or(Duration::from_secs(30));
    let mut resolved: Option<PeerId> = args.peer.parse().ok();
    let mut lookup = resolved.is_none();
    let mut asked = false;
    let (mut ready, mut up) = (false, false);
    let mut connection: Option<ConnectionId> = None;
    let mut connected_at: Option<Instant> = None;
    let mut settled = false;
    while Instant::now() < deadline && !settled {
        for event in node.step()? {
            match event {
                Event::Ready { .. } => ready = true,
                Event::SignalingUp => up = true,
                Event::LookupResult { peer, online, .. } => {
                    lookup = false;
                    resolved = match (peer, online) {
                        (Some(p), true) => Some(p),
                        (Some(p), false) => {
                            return Err(format!("{} ({p}) is not online", args.peer));
                        }
                        (None, _) => return Err(format!("no peer is known as {}", args.peer)),
                    };
                }
                Event::Connected { id, via, .. } if Some(id) == connection => {
                    connected_at = Some(Instant::now());
                    settled |= via == Via::Direct;
                }
                Event::PathChanged { id, via, .. } if Some(id) == connection => {
                    settled |= via == Via::Direct;
                }
                // Punching's round is over: what the doctor sees now is what there is.
                Event::DirectFailed { id } if Some(id) == connection => settled = true,
                Event::Failed { id, reason } if Some(id) == connection => {
                    return Err(format!("the connection failed: {reason}"));
                }
                _ => {}
            }
        }
        if up && lookup && !asked {
            node.handle.lookup(&args.peer).map_err(|e| e.to_string())?;
            asked = true;
        }
        if ready && up && connection.is_none() {
            if let Some(peer) = resolved.take() {
                let id = node
                    .handle
                    .connect(peer, args.service)
                    .map_err(|e| e.to_string())?;
                connection = Some(id);
            }
        }
        settled |= connected_at.is_some_and(|t| t.elapsed() >= PUNCH_WAIT);
    }
    let Some(id) = connection else {
        return Err("no connection before the timeout".into());
    };
    let diagnosis = node
        .handle
        .diagnose(id)
        .map_err(|e| e.to_string())?
        .ok_or("the connection is gone")?;
    let (why, advice) = explain(&diagnosis);
    if node.json {
        let pairs: Vec<_> = diagnosis
            .pairs
            .iter()
            .map(|p| {
                json!({"local": p.local.to_string(), "remote": p.remote.to_string(),
                    "state": p.state, "relayed": p.relayed, "heard": p.heard,
                    "nominated": p.nominated, "rtt_ms": p.rtt.map(|r| r.as_secs_f64() * 1000.0)})
            })
            .collect();
        let line = json!({
            "event": "diagnosis",
            "ours": diagnosis.ours.map(|b| b.to_string()),
            "theirs": diagnosis.theirs.map(|b| b.to_string()),
            "outcome": diagnosis.outcome.map(|o| o.to_string()),
            "route": diagnosis.route,
            "path": diagnosis.path.map(|(via, local, remote)| json!({
                "via": crate::node::via_name(via), "local": local.to_string(),
                "remote": remote.to_string()})),
            "pairs": pairs,
            "checks_sent": diagnosis.checks_sent,
            "why": why,
            "advice": advice,
        });
        println!("{}", stamped(&line.to_string()));
    } else {
        print_text(&diagnosis, &why, advice.as_deref());
    }
    Ok(())
}

fn print_text(d: &Diagnosis, why: &str, advice: Option<&str>) {
    let nat = |b: Option<Behaviour>| {
        b.map_or("unknown".to_owned(), |b| {
            format!("{b} ({})", b.classic_name())
        })
    };
    println!("our NAT:    {}", nat(d.ours));
    println!("their NAT:  {}", nat(d.theirs));
    match (&d.outcome, &d.route) {
        (Some(o), Some(r)) => println!("pairing:    {o}, route {r}"),
        (Some(o), None) => println!("pairing:    {o}"),
        _ => println!("pairing:    not planned (no answer yet)"),
    }
    match d.path {
        Some((via, local, remote)) => println!(
            "path:       {} ({local} -> {remote})",
            crate::node::via_name(via)
        ),
        None => println!("path:       none"),
    }
    let succeeded = d.pairs.iter().filter(|p| p.state == "succeeded").count();
    println!(
        "pairs:      {} checked ({} checks sent), {succeeded} succeeded",
        d.pairs.len(),
        d.checks_sent
    );
    for p in d.pairs.iter().take(PAIRS_SHOWN) {
        let mut notes = Vec::new();
        if p.relayed {
            notes.push("relayed");
        }
        if p.heard {
            notes.push("heard the peer");
        }
        if p.nominated {
            notes.push("nominated");
        }
        let rtt = p.rtt.map_or(String::new(), |r| {
            format!(", {:.1} ms", r.as_secs_f64() * 1000.0)
        });
        println!(
            "  {} -> {}: {}{rtt}{}",
            p.local,
            p.remote,
            p.state,
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            }
        );
    }
    if d.pairs.len() > PAIRS_SHOWN {
        println!("  ... and {} more", d.pairs.len() - PAIRS_SHOWN);
    }
    println!("why:        {why}");
    if let Some(advice) = advice {
        println!("to go direct: {advice}");
    }
}

/// A NAT that gives each new destination a random port: nothing about its next mapping can
/// be known or guessed from outside.
fn random_symmetric(b: Option<Behaviour>) -> bool {
    matches!(
        b,
        Some(Behaviour::Nat {
            mapping: Mapping::AddressDependent | Mapping::AddressAndPortDependent,
            ports: PortPattern::Random,
            ..
        })
    )
}

/// Why the connection is on the path it is on, and what a user could change to get a direct
/// one (`None` when it is direct, or nothing on the user's side would help).
fn explain(d: &Diagnosis) -> (String, Option<String>) {
    let direct = matches!(d.path, Some((Via::Direct, ..)));
    if d.relay_only {
        return (
            "direct paths are turned off on this side (--relay-only)".into(),
            Some("run without --relay-only".into()),
        );
    }
    let portmap = "a port mapping on either router (UPnP IGD, NAT-PMP or PCP: `fogconnect nat \
                   --portmap` shows whether yours offers one), IPv6 on both networks, or another \
                   network for one side";
    let sides = match (random_symmetric(d.ours), random_symmetric(d.theirs)) {
        (true, true) => "both NATs pick a random port",
        (true, false) => "our NAT picks a random port",
        (false, true) => "the peer's NAT picks a random port",
        (false, false) => "a NAT picks a random port",
    };
    match d.outcome {
        None => ("the peer has not answered yet".into(), None),
        Some(Outcome::Direct(method)) if direct => (
            format!("a direct path was possible ({method}) and punching found it"),
            None,
        ),
        Some(Outcome::Direct(method)) => (
            format!(
                "a direct path should be possible ({method}) but punching has not found it: \
                 loss, a firewall between the networks, or a NAT that behaves otherwise than \
                 its discovery found"
            ),
            Some(
                "run `fogconnect nat` on both sides to compare; the node tries again every 20 s \
                 while the relay carries the connection"
                    .into(),
            ),
        ),
        Some(Outcome::Relay(RelayReason::UdpBlocked)) => (
            "UDP does not pass on one side: only the relay can carry the connection".into(),
            Some("allow outgoing UDP on that network, or use another one".into()),
        ),
        Some(Outcome::Relay(RelayReason::BothRandom)) => (
            format!(
                "{sides} for every new destination (symmetric NATs with random ports), so \
                 neither side can learn or guess the other's port"
            ),
            Some(portmap.into()),
        ),
        Some(Outcome::Relay(RelayReason::PredictableWithRandom)) => (
            format!(
                "{sides} for every new destination, and the other side's port moves with each \
                 destination too, so no probe can aim at it"
            ),
            Some(portmap.into()),
        ),
        Some(Outcome::Relay(RelayReason::NoProbes)) => (
            "a birthday round would be needed, but the probe budget allows none".into(),
            Some("raise the node's probe budget".into()),
        ),
    }
}
