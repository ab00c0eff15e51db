//! The nearest of several configured servers, in the simulator: both nodes are configured
//! with a far STUN/TURN pair first and the usual one as the alternative; they measure both,
//! pick the near one, and connect through it (relayed when the NATs leave no choice, so that
//! the relay chosen is the one used).

use std::time::Duration;

use fog_examples::scenario::{Profile, Scenario};
use fog_sim::presets::Preset;
use fogconnect::Event;

#[test]
fn nodes_use_the_nearest_stun_and_turn_servers() {
    let profile = Profile {
        far_servers: Some(Duration::from_millis(150)),
        ..Profile::default()
    };
    let mut s = Scenario::new(
        Preset::SymmetricRandom,
        Preset::SymmetricRandom,
        3,
        &profile,
    );
    assert!(s.wait_ready());
    for i in 0..2 {
        let (stun, turn, rtts) = s.events[i]
            .iter()
            .find_map(|(_, e)| match e {
                Event::ServerChosen { stun, turn, rtts } => Some((*stun, *turn, rtts.clone())),
                _ => None,
            })
            .expect("a server was chosen");
        // The near pair: 198.51.100.x (the far one is 198.51.101.x).
        assert_eq!(
            stun,
            "198.51.100.1:3478".parse().unwrap(),
            "node {i}: {rtts:?}"
        );
        assert_eq!(turn, Some("198.51.100.3:3478".parse().unwrap()));
        // The far one's answer (about 320 ms) may come after the ranking settled (3 times
        // the near one's 70 ms): it could not have won anyway.
        let near = rtts[1].1.expect("the near server answered");
        assert!(
            rtts[0]
                .1
                .is_none_or(|far| far > near + Duration::from_millis(200)),
            "node {i}: {rtts:?}"
        );
    }
    s.connect();
    s.run_for(Duration::from_secs(3));
    for i in 0..2 {
        let paths = s.paths(i);
        let (_, local, remote, relayed) = *paths.last().expect("connected");
        assert!(relayed, "node {i}: {paths:?}");
        let relay: std::net::IpAddr = "198.51.100.3".parse().unwrap();
        assert!(
            local.ip() == relay || remote.ip() == relay,
            "node {i}: {paths:?}"
        );
    }
}
