//! tshark reads the captures of [`fog_sim::pcap::PcapWriter`] as written: the addresses, ports,
//! TTLs, lengths and timestamps come back, and it finds every IPv4 and UDP checksum good.
//!
//! Skipped, with a message, where `tshark` is not on `PATH`; CI installs it.

use std::{
    fs::File,
    io::{self, BufWriter},
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use fog_sim::pcap::{BASE_EPOCH_SECS, PcapWriter, udp_ip_packet};

/// The `-e` fields asked of tshark, in output order.
const FIELDS: [&str; 15] = [
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "udp.srcport",
    "udp.dstport",
    "ip.ttl",
    "ipv6.hlim",
    "ip.id",
    "ip.flags.df",
    "udp.length",
    "udp.checksum",
    "udp.checksum.status",
    "ip.checksum.status",
];

struct Datagram {
    at: Duration,
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    payload: Vec<u8>,
}

/// Removes the capture even when an assertion fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn tshark_reads_what_was_written() {
    match Command::new("tshark").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("tshark --version failed: {out:?}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            assert!(
                std::env::var("FOG_REQUIRE_TSHARK").as_deref() != Ok("1"),
                "tshark is required (FOG_REQUIRE_TSHARK=1) but not found"
            );
            println!("tshark not found; skipped");
            return;
        }
        Err(e) => panic!("running tshark: {e}"),
    }

    let datagrams = datagrams();
    let file = TempFile(
        std::env::temp_dir().join(format!("fog-sim-pcap-tshark-{}.pcap", std::process::id())),
    );
    let mut pcap = PcapWriter::new(BufWriter::new(File::create(&file.0).unwrap())).unwrap();
    for d in &datagrams {
        pcap.write_udp(d.at, d.src, d.dst, d.ttl, &d.payload)
            .unwrap();
    }
    assert_eq!(pcap.packets(), datagrams.len() as u64);
    pcap.into_inner().into_inner().unwrap().sync_all().unwrap();

    let mut tshark = Command::new("tshark");
    // -n: no name resolution, so addresses print as numbers and nothing is looked up.
    tshark.args(["-n", "-r"]).arg(&file.0);
    tshark.args([
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ]);
    tshark.args(["-T", "fields", "-E", "separator=/t"]);
    for field in FIELDS {
        tshark.args(["-e", field]);
    }
    let out = tshark.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{tshark:?}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{context}");
    println!("{context}");

    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), datagrams.len(), "{context}");
    let mut ident = 0;
    for (n, (d, row)) in datagrams.iter().zip(&rows).enumerate() {
        assert_eq!(row.len(), FIELDS.len(), "packet {n}: {context}");
        let field = |name: &str| row[FIELDS.iter().position(|f| *f == name).unwrap()];
        let number = |name: &str| {
            let s = field(name);
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("packet {n}: {name} = {s:?}: {context}"))
        };
        let check =
            |name: &str, ok: bool| assert!(ok, "packet {n}: {name} = {:?}: {context}", field(name));

        let (secs, nanos) = field("frame.time_epoch").split_once('.').unwrap();
        assert_eq!(
            secs.parse::<u64>().unwrap(),
            u64::from(BASE_EPOCH_SECS) + d.at.as_secs(),
            "packet {n}: {context}"
        );
        assert_eq!(
            format!("{nanos:0<9}"),
            format!("{:09}", d.at.subsec_nanos()),
            "packet {n}: {context}"
        );
        assert_eq!(
            number("udp.srcport"),
            u64::from(d.src.port()),
            "packet {n}: {context}"
        );
        assert_eq!(
            number("udp.dstport"),
            u64::from(d.dst.port()),
            "packet {n}: {context}"
        );
        assert_eq!(
            number("udp.length"),
            d.payload.len() as u64 + 8,
            "packet {n}: {context}"
        );
        assert_eq!(
            number("udp.checksum"),
            u64::from(udp_checksum(d)),
            "packet {n}: {context}"
        );
        check("udp.checksum.status", good(field("udp.checksum.status")));

        let ip = d.src.ip().to_string();
        let dst_ip = d.dst.ip().to_string();
        if d.src.is_ipv4() {
            assert_eq!(
                (field("ip.src"), field("ip.dst")),
                (&*ip, &*dst_ip),
                "packet {n}: {context}"
            );
            check("ipv6.src", field("ipv6.src").is_empty());
            assert_eq!(number("ip.ttl"), u64::from(d.ttl), "packet {n}: {context}");
            check("ipv6.hlim", field("ipv6.hlim").is_empty());
            assert_eq!(number("ip.id"), ident, "packet {n}: {context}");
            ident += 1;
            check("ip.flags.df", matches!(field("ip.flags.df"), "1" | "True"));
            check("ip.checksum.status", good(field("ip.checksum.status")));
        } else {
            assert_eq!(
                (field("ipv6.src"), field("ipv6.dst")),
                (&*ip, &*dst_ip),
                "packet {n}: {context}"
            );
            check("ip.src", field("ip.src").is_empty());
            assert_eq!(
                number("ipv6.hlim"),
                u64::from(d.ttl),
                "packet {n}: {context}"
            );
            check("ip.ttl", field("ip.ttl").is_empty());
            check("ip.checksum.status", field("ip.checksum.status").is_empty());
        }
    }
}

/// Both families, odd and empty payloads, the largest packets that fit the snapshot length, the
/// extreme TTLs and ports, and a UDP checksum that computes to zero.
fn datagrams() -> Vec<Datagram> {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let d = |at, src, dst, ttl, payload| Datagram {
        at,
        src: addr(src),
        dst: addr(dst),
        ttl,
        payload,
    };
    let v4 = ("192.0.2.1:40000", "198.51.100.7:50000");
    let v6 = ("[2001:db8::1]:40001", "[2001:db8:ffff::2]:50001");
    vec![
        d(Duration::ZERO, v4.0, v4.1, 64, b"hello".to_vec()),
        d(Duration::new(1, 5), v6.0, v6.1, 3, vec![7; 33]),
        d(
            Duration::new(2, 123_456_789),
            "10.0.0.1:1",
            "10.0.0.2:65535",
            255,
            zero_sum_payload(),
        ),
        d(
            Duration::new(2, 500_000_000),
            "[::1]:65535",
            "[::1]:1",
            0,
            Vec::new(),
        ),
        d(Duration::new(3, 0), v4.1, v4.0, 2, vec![0xa5; 65_507]),
        // 40 + 8 + 65 487 = 65 535: the largest IPv6 packet recorded whole.
        d(
            Duration::new(86_400, 999_999_999),
            v6.1,
            v6.0,
            255,
            vec![0x5a; 65_487],
        ),
        d(
            Duration::new(86_401, 0),
            "203.0.113.9:3478",
            "192.0.2.1:40000",
            1,
            Vec::new(),
        ),
    ]
}

/// A payload whose UDP checksum from 10.0.0.1:1 to 10.0.0.2:65535 computes to zero, so it is sent
/// as 0xffff: its last word is the checksum the same datagram has with that word zero.
fn zero_sum_payload() -> Vec<u8> {
    let mut payload = b"sum to zero\0\0\0".to_vec();
    let d = Datagram {
        at: Duration::ZERO,
        src: "10.0.0.1:1".parse().unwrap(),
        dst: "10.0.0.2:65535".parse().unwrap(),
        ttl: 0,
        payload: payload.clone(),
    };
    let n = payload.len();
    payload[n - 2..].copy_from_slice(&udp_checksum(&d).to_be_bytes());
    let d = Datagram { payload, ..d };
    assert_eq!(udp_checksum(&d), 0xffff);
    d.payload
}

fn udp_checksum(d: &Datagram) -> u16 {
    let mut pkt = Vec::new();
    udp_ip_packet(d.src, d.dst, d.ttl, 0, &d.payload, &mut pkt).unwrap();
    let udp = if d.src.is_ipv4() { 20 } else { 40 };
    u16::from_be_bytes([pkt[udp + 6], pkt[udp + 7]])
}

/// tshark prints the checksum status as its value, 1 for good; later versions may name it.
fn good(status: &str) -> bool {
    matches!(status, "1" | "Good")
}
