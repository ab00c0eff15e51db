//! The NAT matrix in small: every pair of presets over a few seeds through the full node
//! (discovery, signaling, punching) under the WAN profile, checked against the pairing oracle
//! and the targets. `cargo run --release --example matrix` is the full table.

use std::time::Duration;

use fog_core::pairing::{Method, Outcome, ProbeBudget, oracle};
use fog_examples::scenario::{Profile, run};
use fog_sim::presets::Preset;

const SEEDS: u64 = 3;

#[test]
fn every_pair_meets_the_oracle() {
    let profile = Profile::default();
    let budget = ProbeBudget::default();
    let mut birthday = (0, 0);
    let mut cone_times = Vec::new();
    for a in Preset::ALL {
        for b in Preset::ALL {
            let expected = oracle(a.behaviour(), b.behaviour(), &budget);
            for seed in 0..SEEDS {
                let r = run(a, b, seed, &profile);
                let pair = format!("{} / {} seed {seed}: {expected}", a.name(), b.name());
                // Discovery and signaling come up everywhere, UDP blocked included.
                assert!(r.ready, "{pair}: not ready");
                match expected {
                    Outcome::Direct(Method::Birthday { .. }) => {
                        birthday.0 += u32::from(r.direct);
                        birthday.1 += 1;
                        // Relayed at once while the birthday round runs.
                        assert!(r.connected, "{pair}: no path at all");
                    }
                    Outcome::Direct(method) => {
                        assert!(r.direct, "{pair}: no direct path");
                        let paths = r.paths.unwrap();
                        // Each side talks to the other's public side (site n is 203.0.113.n).
                        assert_eq!(paths[0].1.ip().to_string(), "203.0.113.2", "{pair}");
                        assert_eq!(paths[1].1.ip().to_string(), "203.0.113.1", "{pair}");
                        if method == Method::Plain {
                            cone_times.push(r.time_to_direct.unwrap());
                        }
                    }
                    Outcome::Relay(_) => {
                        assert!(!r.direct, "{pair}: direct, against the oracle");
                        // A relay carries it (TURN, or the signaling server when a side has no
                        // UDP), within a second of `connect`.
                        assert!(r.connected, "{pair}: not even relayed");
                        let took = r.time_to_path.unwrap();
                        assert!(
                            took < Duration::from_secs(1),
                            "{pair}: relayed after {took:?}"
                        );
                    }
                }
            }
        }
    }
    // The birthday rounds' odds are 98 %: nearly all of the runs must make it.
    assert!(birthday.0 * 10 >= birthday.1 * 9, "birthday {birthday:?}");
    // Plain punching's median within 1.2 times the lower bound.
    cone_times.sort_unstable();
    let median = cone_times[cone_times.len() / 2];
    let bound = profile.lower_bound();
    assert!(
        median <= bound * 6 / 5,
        "median {median:?} against the bound {bound:?}"
    );
    assert!(
        median >= bound,
        "faster than physics: {median:?} < {bound:?}"
    );
}

/// The presets outside `Preset::ALL` (`Preset::EXTRA`: the address-dependent mapping fog-cli's
/// real-NAT matrix builds with nftables) against every preset and themselves, both ways: the
/// simulated node meets the oracle there too, so the lab and the simulator can be compared.
#[test]
fn the_extra_presets_meet_the_oracle() {
    let profile = Profile::default();
    let budget = ProbeBudget::default();
    let mut birthday = (0, 0);
    let all: Vec<Preset> = Preset::ALL.into_iter().chain(Preset::EXTRA).collect();
    for extra in Preset::EXTRA {
        for &other in &all {
            for (a, b) in [(extra, other), (other, extra)] {
                let expected = oracle(a.behaviour(), b.behaviour(), &budget);
                for seed in 0..SEEDS {
                    let r = run(a, b, seed, &profile);
                    let pair = format!("{} / {} seed {seed}: {expected}", a.name(), b.name());
                    assert!(r.connected, "{pair}: no path at all");
                    match expected {
                        Outcome::Direct(Method::Birthday { .. }) => {
                            birthday.0 += u32::from(r.direct);
                            birthday.1 += 1;
                        }
                        Outcome::Direct(_) => assert!(r.direct, "{pair}: no direct path"),
                        Outcome::Relay(_) => {
                            assert!(!r.direct, "{pair}: direct, against the oracle");
                        }
                    }
                }
            }
        }
    }
    assert!(birthday.0 * 10 >= birthday.1 * 9, "birthday {birthday:?}");
}
