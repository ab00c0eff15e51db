//! Random worlds and timelines checked against the reference model (`fog_examples::chaos`):
//! `FOG_CHAOS_SEEDS` seeds from `FOG_CHAOS_START` (40 from 0 by default: about 10 s in a debug
//! build, under 1 s in release; the long runs are the `chaos` example's). A failure names the seed and a shrunk step list; replay it
//! with `FOG_CHAOS_TRACE=1 cargo run --release -p fog-examples --example chaos -- --seeds 1
//! --start SEED`.

use fog_examples::chaos::{Op, Plan, Step, describe, generate, run, shrink};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seeds of the default range whose first violation is a known bug not fixed yet, each with
/// the bug (see `benches/RESULTS.md`, "Chaos in the simulator"). None today: seed 0's plan
/// ran differently once the answerer's agent began before its answer left (2026-12-07) and
/// met an idle uTP connection's retransmission timeout, doubled on every idle expiry to a
/// minute, so its first write into a route outage waited that long after the route came
/// back (fixed in fog-utp, `the_acceptors_first_data_survives_an_outage`).
const KNOWN: &[(u64, &str)] = &[];

fn check(plan: &Plan) -> Result<(), String> {
    let out = std::panic::catch_unwind(|| run(plan));
    let (kind, first) = match out {
        Ok(o) => match o.violations.first() {
            None => return Ok(()),
            Some(v) => (v.kind.to_owned(), v.to_string()),
        },
        Err(_) => ("panic".to_owned(), "panicked".to_owned()),
    };
    let small = shrink(plan, &kind, 60);
    Err(format!(
        "seed {}: {first}\nshrunk ({} of {} steps):\n{}",
        plan.seed,
        small.steps.len(),
        plan.steps.len(),
        describe(&small)
    ))
}

#[test]
fn random_scenarios_keep_the_model() {
    let seeds = env("FOG_CHAOS_SEEDS", 40);
    let start = env("FOG_CHAOS_START", 0);
    let mut failures = Vec::new();
    for seed in start..start + seeds {
        if let Some((_, why)) = KNOWN.iter().find(|(s, _)| *s == seed) {
            eprintln!("seed {seed} skipped: known bug: {why}");
            continue;
        }
        if let Err(e) = check(&generate(seed)) {
            failures.push(e);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Seeds that broke the model in the fifth 3,000-seed run (benches/RESULTS.md, "Sixth run"),
/// each fixed since. A seed's scenario shifts with any change to what the nodes send, so these
/// guard the fixes only as long as the seeds still reach the same states; the fixes have tests
/// of their own where one could be written (fog-ice
/// `a_controlled_side_on_the_relay_follows_the_peer_back_to_its_direct_pair`).
/// - 922, 1248, 1346, 1490, 1608 (not-direct): after the peer's NAT rebooted, one side went
///   to TURN and stayed while the other used the new direct pair.
/// - 1689 (closed-without-cause): QUIC failed a connection whose peer had just finished its
///   stream, on a second read of the ended stream.
///
/// At the fixes' parent (91fc603), 922, 1346, 1490 and 1689 still failed; 1248 and 1608
/// already passed there (their draws had shifted).
#[test]
fn seeds_of_the_fifth_run_keep_the_model() {
    let failures: Vec<String> = [922, 1248, 1346, 1490, 1608, 1689]
        .into_iter()
        .filter_map(|seed| check(&generate(seed)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Seed 6893 of the sixth run's 10,000 (closed-without-cause, uTP): after the route between
/// the two sites went down, the connection went on through TURN across a link of about 16 %
/// loss; every ack of one packet's four retransmissions was lost while checks on the same path
/// got through, and uTP gave up (`TransportFailed`). A reliable transport of the node no longer
/// gives up on its own while the node's path is alive (fog-utp `Config::data_retransmits`,
/// test `an_owner_watched_connection_outlives_lost_acks`; KCP's dead link likewise); the
/// node's idle timeout and consent end a connection whose peer is gone. Fails without it
/// (node 0 #9 side 0 ended `TransportFailed` with fog-utp's default limit, libutp's 4).
#[test]
fn seed_6893_utp_does_not_give_up_on_a_live_lossy_path() {
    check(&generate(6893)).unwrap();
}

/// Seeds that broke the model on main after the sixth run (benches/RESULTS.md, "Seventh
/// run"), fixed in fog-ice since; the same caveat as above, and the fixes' own tests are
/// fog-ice `after_the_path_was_lost_the_controlled_side_follows_the_peers_checks`,
/// `a_new_source_whose_check_failed_is_checked_again` and
/// `after_the_relay_path_was_lost_and_came_back_punching_resumes`.
/// - 1811 (not-direct, the split shape): one side's direct pair and then its backup relay
///   pair lost their consent on links losing 11 % and 20 % (`PathLost`), while the peer's
///   checks on the direct pair were answered; nothing brought the side back.
/// - 4197 (not-direct, both on TURN): each side lost its relay path once for a consent
///   timeout during a five-minute route outage, which stopped the rounds of punching for good.
///
/// Both failed on main at 533c440 (single-seed runs of a release build).
#[test]
fn seeds_after_the_sixth_run_keep_the_model() {
    let failures: Vec<String> = [1811, 4197]
        .into_iter()
        .filter_map(|seed| check(&generate(seed)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_seed_is_a_scenario() {
    let (a, b) = (generate(42), generate(42));
    assert_eq!(a.steps, b.steps);
    assert_eq!(describe(&a), describe(&b));
    assert_ne!(describe(&a), describe(&generate(43)));
}

/// Two open hosts, one KCP connection, five messages: what the model must let pass.
fn quiet_plan() -> Plan {
    let mut plan = generate(1);
    plan.nodes.truncate(2);
    for n in &mut plan.nodes {
        n.preset = fog_sim::presets::Preset::OpenInternet;
    }
    let ms = std::time::Duration::from_millis;
    plan.steps = vec![
        Step {
            after: ms(100),
            op: Some(Op::Connect {
                label: 0,
                from: 0,
                to: 1,
                transport: fogconnect::Transport::Kcp,
            }),
        },
        Step {
            after: ms(2000),
            op: Some(Op::Send {
                label: 0,
                side: 0,
                count: 5,
                size: 100,
            }),
        },
    ];
    plan
}

#[test]
fn a_quiet_world_keeps_the_model() {
    let out = run(&quiet_plan());
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert_eq!(out.messages, (5, 5));
    assert_eq!((out.connects, out.connected), (1, 1));
}

/// The model can fail: payloads naming another connection are caught as they arrive.
#[test]
fn the_model_sees_a_message_on_the_wrong_connection() {
    let mut plan = quiet_plan();
    plan.sabotage = true;
    let out = run(&plan);
    let crossed = out
        .violations
        .iter()
        .filter(|v| v.kind == "data-crossed")
        .count();
    assert_eq!(crossed, 5, "{:?}", out.violations);
}

/// Seed 4, shrunk to one step: node 3 (symmetric, random ports) connects to node 0 (CGNAT)
/// over QUIC, its direct path from a fresh socket. At the final close the node queued its
/// sealed close from that socket and asked the driver to unbind it in the same turn; drivers
/// take socket requests first, so the close left from a socket already given back and the
/// socket stayed held.
#[test]
fn seed_4_a_close_leaves_before_its_socket_is_unbound() {
    let mut plan = generate(4);
    plan.steps = vec![Step {
        after: std::time::Duration::from_millis(2645),
        op: Some(Op::Connect {
            label: 1,
            from: 3,
            to: 0,
            transport: fogconnect::Transport::Quic,
        }),
    }];
    let out = run(&plan);
    let kept: Vec<_> = out
        .violations
        .iter()
        .filter(|v| v.kind == "resources-kept")
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}

/// Seed 4, shrunk: with the route between nodes 0 and 3 down, node 3 connects to node 0 over
/// QUIC through TURN. At the final close node 0's sealed close went out through its relay
/// after the connection was released, and sending it created again the permission the
/// release had just dropped, kept alive for good.
#[test]
fn seed_4_a_close_through_the_relay_keeps_no_permission() {
    let ms = std::time::Duration::from_millis;
    let mut plan = generate(4);
    plan.steps = vec![
        Step {
            after: ms(2205),
            op: Some(Op::Route {
                a: 0,
                b: 3,
                down: true,
            }),
        },
        Step {
            after: ms(2645),
            op: Some(Op::Connect {
                label: 1,
                from: 3,
                to: 0,
                transport: fogconnect::Transport::Quic,
            }),
        },
        Step {
            after: ms(2988),
            op: Some(Op::ResetNat { node: 1 }),
        },
    ];
    let out = run(&plan);
    let kept: Vec<_> = out
        .violations
        .iter()
        .filter(|v| v.kind == "resources-kept")
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}
