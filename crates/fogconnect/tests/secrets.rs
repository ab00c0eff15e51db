//! What an observer learns from a node's traffic does not predict its secrets: the
//! transaction IDs of its Bindings (which a STUN server and anyone on the path read) say
//! nothing about the check credentials of its next offer.
//!
//! The attack this guards against worked on the node's former generator, SplitMix64, whose
//! output function is a bijection: the keepalive's transaction ID carried one raw 64-bit
//! output, from which the state and every later output (the credentials among them) follow.
//! The test runs that attack on what the node sends now.

use std::time::Duration;

use fog_examples::scenario::{Observed, Profile, Scenario, SimNode};
use fog_sim::presets::Preset;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The multiplicative inverse of an odd number modulo 2^64 (Newton's iteration).
fn inverse(a: u64) -> u64 {
    let mut x = a;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

/// Undoes `z ^= z >> shift`.
fn unshift(z: u64, shift: u32) -> u64 {
    let mut x = z;
    let mut s = shift;
    while s < 64 {
        x ^= z >> s;
        s += shift;
    }
    x
}

/// The SplitMix64 state behind one output.
fn state_of(output: u64) -> u64 {
    let mut z = unshift(output, 31);
    z = z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
    z = unshift(z, 27);
    z = z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
    unshift(z, 30)
}

/// The ufrag a SplitMix-driven node would make from output `r`.
fn ufrag_of(r: u64) -> String {
    (0..8)
        .map(|i| char::from(ICE_CHARS[((r >> (i * 6)) & 63) as usize]))
        .collect()
}

#[test]
fn the_inversion_recovers_a_splitmix_state() {
    // The attack itself works: without this, the test below could pass by a broken attack.
    let state = 0x1234_5678_9abc_def0u64;
    assert_eq!(state_of(finalize(state)), state);
    let next = finalize(state.wrapping_add(GAMMA));
    assert_eq!(
        finalize(state_of(finalize(state)).wrapping_add(GAMMA)),
        next
    );
}

#[test]
fn transaction_ids_do_not_predict_the_next_credentials() {
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 21, &Profile::default());
    assert!(s.wait_ready());
    let host = s.hosts[0].0;
    s.sim
        .with_machine(host, |m: &mut SimNode, _| m.log = Some(Observed::default()));
    // Past a keepalive (every 15 s), then an offer.
    s.run_for(Duration::from_secs(16));
    s.connect();
    s.run_for(Duration::from_secs(1));
    let Observed {
        datagrams, frames, ..
    } = s
        .sim
        .with_machine(host, |m: &mut SimNode, _| m.log.take())
        .expect("logged");
    // Every transaction ID the node sent in a STUN request (first byte 0x00 or 0x01: a
    // Binding request or indication), as the observer reads it.
    let ids: Vec<u64> = datagrams
        .iter()
        .filter(|(_, d)| d.len() >= 20 && d[0] < 2 && d[4..8] == [0x21, 0x12, 0xa4, 0x42])
        .flat_map(|(_, d)| {
            let tid = &d[8..20];
            [
                u64::from_le_bytes(tid[..8].try_into().unwrap()),
                u64::from_le_bytes(tid[4..].try_into().unwrap()),
            ]
        })
        .collect();
    assert!(
        datagrams
            .iter()
            .any(|(_, d)| d.len() >= 20 && &d[16..20] == b"keep"),
        "the keepalive went out"
    );
    let offer = frames
        .iter()
        .find(|f| f.contains(r#""type":"offer""#))
        .expect("an offer");
    let offer: serde_json::Value = serde_json::from_str(offer).unwrap();
    let ufrag = offer["description"]["credentials"]["ufrag"]
        .as_str()
        .unwrap()
        .to_owned();
    // From each observed value, the next 10,000 outputs of the generator it would come from.
    for id in ids {
        let state = state_of(id);
        for k in 1..10_000u64 {
            let r = finalize(state.wrapping_add(GAMMA.wrapping_mul(k)));
            assert_ne!(
                ufrag_of(r),
                ufrag,
                "the credentials follow from a transaction ID the node sent"
            );
        }
    }
}
