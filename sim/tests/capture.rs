//! `Sim::capture` records what crosses a host or a link, as pcap that tshark reads: the host sees
//! its private addresses, the NAT's uplink sees the translated ones, with TTLs decremented per hop.
//!
//! The tshark part is skipped where tshark is missing, unless `FOG_REQUIRE_TSHARK=1` (set by
//! `.ci/run`, which installs it) makes that a failure.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use fog_sim::link::LinkConfig;
use fog_sim::presets::Preset;
use fog_sim::probe::{RawSocket, Reflector};
use fog_sim::{CaptureTarget, NodeId, Sim};

/// Counts the records of a pcap file (24-byte global header, 16-byte record headers).
fn records(pcap: &[u8]) -> usize {
    let mut at = 24;
    let mut n = 0;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + incl;
        n += 1;
    }
    assert_eq!(at, pcap.len(), "records fill the file exactly");
    n
}

fn tshark_lines(pcap: &[u8], name: &str) -> Option<Vec<String>> {
    if Command::new("tshark").arg("--version").output().is_err() {
        assert!(
            std::env::var("FOG_REQUIRE_TSHARK").as_deref() != Ok("1"),
            "tshark is required (FOG_REQUIRE_TSHARK=1) but not found"
        );
        println!("tshark not found; skipped the tshark half");
        return None;
    }
    let path = std::env::temp_dir().join(format!(
        "fog-sim-capture-{}-{name}.pcap",
        std::process::id()
    ));
    std::fs::write(&path, pcap).unwrap();
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&path)
        .args([
            "-o",
            "udp.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=,",
        ])
        .args([
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ])
        .args([
            "-e",
            "ip.ttl",
            "-e",
            "udp.checksum.status",
            "-e",
            "data.len",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn host_and_link_captures_show_both_sides_of_the_nat() {
    let mut sim = Sim::new(3);
    let site = Preset::PortRestrictedCone.attach(&mut sim, "alice", 1, LinkConfig::default());
    let nat = site.middleboxes[0];
    let server_ip = "198.51.100.1".parse().unwrap();
    let server_addr = SocketAddr::new(server_ip, 3478);
    let server = sim.add_host(
        "server",
        NodeId::INTERNET,
        &[server_ip],
        LinkConfig::default(),
    );
    sim.set_machine(server, 3478, Reflector::new(vec![server_addr]));
    sim.set_machine(site.host, 5000, RawSocket::new());
    let host_cap = sim.capture(CaptureTarget::Host(site.host));
    let link_cap = sim.capture(CaptureTarget::Link(nat));

    sim.with_machine(site.host, |s: &mut RawSocket, _| {
        s.send(None, server_addr, &Reflector::request(None))
    });
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.machine::<RawSocket>(site.host).received().len(),
        1,
        "the answer came back"
    );

    let host_pcap = sim.capture_bytes(host_cap).to_vec();
    let link_pcap = sim.capture_bytes(link_cap).to_vec();
    assert_eq!(records(&host_pcap), 2, "request sent + answer delivered");
    assert_eq!(
        records(&link_pcap),
        2,
        "request up + answer down the NAT's uplink"
    );

    let answer_len = "SEEN 203.0.113.1:5000".len();
    if let Some(lines) = tshark_lines(&host_pcap, "host") {
        assert_eq!(
            lines,
            [
                // Sent by the host with the default TTL.
                "192.168.1.2,5000,198.51.100.1,3478,64,1,5".to_owned(),
                // Answer: the internet and the NAT each took one off the reflector's 64.
                format!("198.51.100.1,3478,192.168.1.2,5000,62,1,{answer_len}"),
            ]
        );
    }
    if let Some(lines) = tshark_lines(&link_pcap, "link") {
        assert_eq!(
            lines,
            [
                // On the NAT's uplink the source is translated and the NAT took one off the TTL.
                "203.0.113.1,5000,198.51.100.1,3478,63,1,5".to_owned(),
                format!("198.51.100.1,3478,203.0.113.1,5000,63,1,{answer_len}"),
            ]
        );
    }
}
