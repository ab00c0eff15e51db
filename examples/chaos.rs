//! The chaos run: random worlds and timelines (`fog_examples::chaos`) checked against the
//! reference model, seed after seed.
//!
//! ```text
//! cargo run --release -p fog-examples --example chaos -- --seeds 1000 [--start 0] [--json]
//! cargo run --release -p fog-examples --example chaos -- --seeds 1 --start SEED --shrink KIND
//! FOG_CHAOS_TRACE=1 cargo run --release -p fog-examples --example chaos -- --seeds 1 --start SEED
//! FOG_CHAOS_SIMTRACE=FILE ... writes every packet's hop of the run (fog-sim's trace) to FILE
//! ```
//!
//! Prints the seeds run, the steps, the violations (each with its seed and step), the panics
//! (each seed runs under `catch_unwind`), and the slowest (wall clock) and worst (most
//! violations) seeds.

// A program, not a machine: the wall clock measures each seed's run (the slowest case).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use fog_examples::chaos::{describe, generate, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let seeds = value("--seeds", 100);
    let start = value("--start", 0);
    let json = args.iter().any(|a| a == "--json");
    // `--shrink KIND`: for the first seed with a violation of KIND, print its smallest plan.
    if let Some(kind) = args
        .iter()
        .position(|a| a == "--shrink")
        .and_then(|i| args.get(i + 1))
    {
        for seed in start..start + seeds {
            let plan = generate(seed);
            if run(&plan).violations.iter().any(|v| v.kind == kind) {
                let small = fog_examples::chaos::shrink(&plan, kind, 200);
                let out = run(&small);
                print!("{}", describe(&small));
                for v in out.violations {
                    println!("{v}");
                }
                return;
            }
        }
        println!("no seed with {kind}");
        return;
    }
    // Panics are counted, not printed as they happen.
    std::panic::set_hook(Box::new(|_| {}));
    let began = Instant::now();
    let (mut steps, mut connects, mut connected, mut sent, mut received) = (0, 0, 0, 0, 0);
    let mut virtual_time = Duration::ZERO;
    let mut violations = Vec::new();
    let mut panics = Vec::new();
    let mut slowest = (Duration::ZERO, 0);
    let mut worst = (0, 0);
    for seed in start..start + seeds {
        let plan = generate(seed);
        steps += plan.steps.len();
        let t = Instant::now();
        let out = std::panic::catch_unwind(|| run(&plan));
        let took = t.elapsed();
        if took > slowest.0 {
            slowest = (took, seed);
        }
        match out {
            Ok(o) => {
                connects += o.connects;
                connected += o.connected;
                sent += o.messages.0;
                received += o.messages.1;
                virtual_time += o.virtual_time;
                if o.violations.len() > worst.0 {
                    worst = (o.violations.len(), seed);
                }
                for v in o.violations {
                    violations.push((seed, v));
                }
            }
            Err(e) => {
                let what = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panics.push((seed, what));
            }
        }
    }
    let wall = began.elapsed();
    if json {
        let list: Vec<serde_json::Value> = violations
            .iter()
            .map(|(seed, v)| {
                serde_json::json!({"seed": seed, "step": v.step, "kind": v.kind, "detail": v.detail})
            })
            .collect();
        let panics: Vec<serde_json::Value> = panics
            .iter()
            .map(|(seed, what)| serde_json::json!({"seed": seed, "panic": what}))
            .collect();
        let doc = serde_json::json!({
            "seeds": seeds, "start": start, "steps": steps,
            "connects": connects, "connected": connected,
            "messages_sent": sent, "messages_received": received,
            "virtual_seconds": virtual_time.as_secs(), "wall_seconds": wall.as_secs_f64(),
            "violations": list, "panics": panics,
            "slowest": {"seed": slowest.1, "seconds": slowest.0.as_secs_f64()},
            "worst": {"seed": worst.1, "violations": worst.0},
        });
        println!("{doc:#}");
        return;
    }
    println!("seeds      {seeds} (from {start})");
    println!("steps      {steps}");
    println!("connects   {connects} ({connected} connected)");
    println!("messages   {sent} sent, {received} received");
    println!(
        "virtual    {} s in {:.1} s of wall clock",
        virtual_time.as_secs(),
        wall.as_secs_f64()
    );
    println!("violations {}", violations.len());
    println!("panics     {}", panics.len());
    println!(
        "slowest    seed {} ({:.2} s)",
        slowest.1,
        slowest.0.as_secs_f64()
    );
    println!("worst      seed {} ({} violations)", worst.1, worst.0);
    let mut kinds = std::collections::BTreeMap::new();
    for (_, v) in &violations {
        *kinds.entry(v.kind).or_insert(0) += 1;
    }
    for (kind, n) in kinds {
        println!("  {kind}: {n}");
    }
    for (seed, v) in violations.iter().take(20) {
        println!("seed {seed} {v}");
    }
    for (seed, what) in panics.iter().take(20) {
        println!("seed {seed} panicked: {what}");
    }
    if let Some((seed, _)) = violations.first() {
        print!("first failing plan:\n{}", describe(&generate(*seed)));
    }
}
