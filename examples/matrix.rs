//! The NAT matrix: every pair of simulator presets, many seeds, under the WAN profile of
//! `fog_examples::scenario`, next to what the pairing oracle says a correct stack must achieve.
//!
//! ```text
//! cargo run --release --example matrix                  # 20 seeds per pair, a Markdown table
//! cargo run --release --example matrix -- --seeds 5 --json
//! ```
//!
//! Per pair: direct % (ended on a direct path), relayed % (connected through the TURN relay
//! only), failed % (no path), median and p95 time from `connect` to a verified path at both
//! nodes (relayed or direct; virtual ms), the median time to a direct path, the oracle's
//! expectation, and a flag on every disagreement or missed target:
//! - `MISS`: the oracle promises a certain direct path (plain, peer-reflexive, predicted) and a
//!   seed did not get one;
//! - `LOW`: a birthday pair below 95 % direct (the issue's target);
//! - `EXTRA`: the oracle says relay and a seed went direct anyway (the oracle would be wrong);
//! - `FAIL`: a seed ended with no path at all;
//! - `SLOW`: a seed that ended relayed took over 1 s to its first path.
//!
//! Exit status 0 when there is no `MISS` and no `EXTRA`, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use fog_core::pairing::{Method, Outcome, ProbeBudget, oracle};
use fog_examples::scenario::{Profile, run};
use fog_sim::presets::Preset;

struct Options {
    seeds: u64,
    json: bool,
}

fn options() -> Options {
    let mut options = Options {
        seeds: 20,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seeds" => {
                options.seeds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| {
                        eprintln!("matrix: --seeds takes a positive number");
                        std::process::exit(2)
                    });
            }
            "--json" => options.json = true,
            other => {
                eprintln!("matrix: unknown argument {other}; known: --seeds N, --json");
                std::process::exit(2);
            }
        }
    }
    options
}

/// The value at quantile `q` of sorted `samples` (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{}", d.as_millis()))
}

fn main() -> ExitCode {
    let options = options();
    let profile = Profile::default();
    let budget = ProbeBudget::default();
    let presets = Preset::ALL;
    if !options.json {
        println!(
            "NAT matrix: {} seeds per pair; access 10 ms + 1 % loss each way per node (peers 20 ms \
             apart), STUN 35 ms, signaling 30 / 40 ms; lower bound for cone pairs {} ms\n",
            options.seeds,
            profile.lower_bound().as_millis()
        );
        println!(
            "| A | B | oracle | direct % | relayed % | failed % | path median ms | path p95 ms | \
             direct median ms | flag |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    let mut disagreements = 0;
    let mut rows = Vec::new();
    for a in presets {
        for b in presets {
            let expected = oracle(a.behaviour(), b.behaviour(), &budget);
            let mut direct = 0u64;
            let mut connected = 0u64;
            let mut not_ready = 0u64;
            let mut slow_relay = 0u64;
            let mut times = Vec::new();
            let mut direct_times = Vec::new();
            for seed in 0..options.seeds {
                let r = run(a, b, seed, &profile);
                if !r.ready {
                    not_ready += 1;
                }
                if r.connected {
                    connected += 1;
                    times.extend(r.time_to_path);
                    if !r.direct && r.time_to_path.is_none_or(|t| t > Duration::from_secs(1)) {
                        slow_relay += 1;
                    }
                }
                if r.direct {
                    direct += 1;
                    direct_times.extend(r.time_to_direct);
                }
            }
            times.sort_unstable();
            direct_times.sort_unstable();
            let n = options.seeds as f64;
            let direct_pct = direct as f64 * 100.0 / n;
            let relayed_pct = (connected - direct) as f64 * 100.0 / n;
            let failed_pct = (options.seeds - connected) as f64 * 100.0 / n;
            let mut flags = Vec::new();
            match expected {
                Outcome::Direct(Method::Birthday { .. }) if direct_pct < 95.0 => flags.push("LOW"),
                Outcome::Direct(Method::Birthday { .. }) => {}
                Outcome::Direct(_) if direct < options.seeds => flags.push("MISS"),
                Outcome::Relay(_) if direct > 0 => flags.push("EXTRA"),
                _ => {}
            }
            if connected < options.seeds {
                flags.push("FAIL");
            }
            if slow_relay > 0 {
                flags.push("SLOW");
            }
            if flags.contains(&"MISS") || flags.contains(&"EXTRA") {
                disagreements += 1;
            }
            let flag = flags.join(" ");
            let (median, p95) = (quantile(&times, 0.5), quantile(&times, 0.95));
            let direct_median = quantile(&direct_times, 0.5);
            if options.json {
                rows.push(serde_json::json!({
                    "a": a.name(), "b": b.name(), "oracle": expected.to_string(),
                    "seeds": options.seeds, "direct": direct, "relayed": connected - direct,
                    "failed": options.seeds - connected, "not_ready": not_ready,
                    "median_ms": median.map(|d| d.as_millis() as u64),
                    "p95_ms": p95.map(|d| d.as_millis() as u64),
                    "direct_median_ms": direct_median.map(|d| d.as_millis() as u64),
                    "flag": flag,
                }));
            } else {
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                    a.name(),
                    b.name(),
                    expected,
                    direct_pct,
                    relayed_pct,
                    failed_pct,
                    ms(median),
                    ms(p95),
                    ms(direct_median),
                    flag
                );
            }
        }
    }
    if options.json {
        let out = serde_json::json!({
            "seeds": options.seeds,
            "lower_bound_ms": profile.lower_bound().as_millis() as u64,
            "pairs": rows,
            "disagreements": disagreements,
        });
        println!("{out}");
    } else {
        println!("\n{disagreements} disagreement(s) with the oracle (MISS or EXTRA)");
    }
    if disagreements == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
