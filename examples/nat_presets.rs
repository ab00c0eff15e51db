//! Runs every NAT preset through the simulator and prints, next to each configuration, what a raw
//! probe behind it observes (RFC 5780 §4.3–4.5 tests plus the port pattern).
//!
//! `cargo run --release --example nat-presets [seed]`

use std::process::ExitCode;
use std::time::Duration;

use fog_sim::Sim;
use fog_sim::link::LinkConfig;
use fog_sim::observe::observe;
use fog_sim::presets::Preset;

fn main() -> ExitCode {
    let seed = match std::env::args().nth(1).map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(seed)) => seed,
        Some(Err(e)) => {
            eprintln!("usage: nat-presets [seed]  ({e})");
            return ExitCode::from(2);
        }
    };
    println!(
        "seed {seed}; each preset on its own simulated network, probe behind it, reflector on the internet\n"
    );
    println!(
        "{:<30} {:<44} {:<44} match",
        "preset", "configured", "observed"
    );
    let mut mismatches = 0;
    for preset in Preset::ALL {
        let mut sim = Sim::new(seed);
        let site = preset.attach(
            &mut sim,
            "probe",
            1,
            LinkConfig::with_latency(Duration::from_millis(10)),
        );
        let seen = observe(&mut sim, site.host, site.host_addr);
        let configured = preset.behaviour();
        let ok = seen.behaviour == configured;
        mismatches += usize::from(!ok);
        println!(
            "{:<30} {:<44} {:<44} {}",
            preset.name(),
            configured.to_string(),
            seen.behaviour.to_string(),
            if ok { "yes" } else { "NO" }
        );
        if let Some(mapped) = seen.mapped {
            let samples = if seen.port_samples.is_empty() {
                String::new()
            } else {
                format!(", fresh-socket ports {:?}", seen.port_samples)
            };
            println!(
                "{:<30} classic name: {}, mapped {mapped}{samples}",
                "",
                seen.behaviour.classic_name()
            );
        }
    }
    if mismatches == 0 {
        println!("\nall {} presets observed as configured", Preset::ALL.len());
        ExitCode::SUCCESS
    } else {
        println!("\n{mismatches} preset(s) observed differently from their configuration");
        ExitCode::FAILURE
    }
}
