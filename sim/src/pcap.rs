//! Pcap files of simulated UDP traffic, for Wireshark and tshark.
//!
//! The simulator moves UDP payloads between socket addresses, not IP packets, so
//! [`PcapWriter::write_udp`] synthesizes the IPv4 or IPv6 header and the UDP header around each
//! payload, with correct checksums, so that a dissector checks them as it would on a real wire.
//!
//! The file is classic libpcap (not pcapng), little-endian, with nanosecond timestamps (magic
//! `0xa1b23c4d`), snapshot length [`SNAPLEN`] and link type [`LINKTYPE_RAW`]: each record is a
//! bare IP packet whose version nibble says IPv4 or IPv6, so both families share one file.
//! Format: draft-ietf-opsawg-pcap §4 (file header) and §5 (packet record).
//!
//! Timestamps are [`BASE_EPOCH_SECS`] plus the virtual time since the simulator's epoch, never
//! the wall clock, so the same run writes the same file byte for byte.
//!
//! ```
//! use std::time::Duration;
//! use fog_sim::pcap::PcapWriter;
//!
//! let mut pcap = PcapWriter::new(Vec::new())?;
//! let (a, b) = ("192.0.2.1:5000".parse().unwrap(), "198.51.100.1:3478".parse().unwrap());
//! pcap.write_udp(Duration::from_millis(20), a, b, 64, b"hello")?;
//! assert_eq!(pcap.packets(), 1);
//! let file: Vec<u8> = pcap.into_inner(); // file header, record header, IPv4, UDP, payload
//! assert_eq!(file.len(), 24 + 16 + 20 + 8 + 5);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

/// The Unix time, in seconds, that virtual time zero is recorded at: 2023-11-14 22:13:20 UTC.
///
/// A fixed base rather than the wall clock keeps captures deterministic; it is recent so that
/// tools showing absolute times show plausible dates.
pub const BASE_EPOCH_SECS: u32 = 1_700_000_000;

/// `LINKTYPE_RAW`: each record is an IPv4 or IPv6 packet, told apart by its version nibble
/// (tcpdump.org link-layer header types).
pub const LINKTYPE_RAW: u32 = 101;

/// The snapshot length written in the file header. IPv4 packets never exceed it; an IPv6 packet
/// longer than this (UDP payload above 65 495 bytes) is recorded truncated to it, with its full
/// length kept as the record's original length, as a capture on a real interface would.
pub const SNAPLEN: u32 = 65_535;

/// The largest UDP payload in an IPv4 packet: total length 65 535 less 20 (IP) and 8 (UDP).
pub const MAX_UDP_PAYLOAD_V4: usize = 65_507;

/// The largest UDP payload in an IPv6 packet without a jumbogram: the UDP length field, 65 535,
/// less the 8-byte UDP header (RFC 8200 §3 payload length counts the UDP header).
pub const MAX_UDP_PAYLOAD_V6: usize = 65_527;

/// Little-endian nanosecond-resolution pcap (draft-ietf-opsawg-pcap §4).
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
const RECORD_HEADER_LEN: usize = 16;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
/// IANA protocol number of UDP, in IPv4's protocol and IPv6's next-header field.
const IP_PROTO_UDP: u8 = 17;
/// Flags and fragment offset with only Don't Fragment set (RFC 791 §3.1), as stacks that do path
/// MTU discovery send UDP.
const IPV4_DF: u16 = 0x4000;

/// Why a UDP datagram cannot be put in an IP packet. Both are misuse by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPacketError {
    /// The source and destination are of different address families.
    MixedFamilies,
    /// The payload does not fit the family's length fields.
    PayloadTooLong {
        /// The payload's length.
        len: usize,
        /// The largest payload the family allows: [`MAX_UDP_PAYLOAD_V4`] or [`MAX_UDP_PAYLOAD_V6`].
        max: usize,
    },
}

impl fmt::Display for UdpPacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MixedFamilies => {
                f.write_str("source and destination are of different IP families")
            }
            Self::PayloadTooLong { len, max } => {
                write!(f, "UDP payload of {len} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for UdpPacketError {}

impl From<UdpPacketError> for io::Error {
    fn from(e: UdpPacketError) -> Self {
        Self::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Writes UDP datagrams as a libpcap file of raw IP packets, in the order they are given.
///
/// Records are not sorted: give them in non-decreasing time, as the simulator's event loop does.
/// If the underlying writer fails part-way, the file may end in a partial record.
pub struct PcapWriter<W: io::Write> {
    w: W,
    packets: u64,
    /// The next IPv4 identification; IPv6 packets carry none (no fragment header is written).
    ident: u16,
    /// Reused for each record so that writing allocates only until the largest packet is seen.
    buf: Vec<u8>,
}

impl<W: io::Write> PcapWriter<W> {
    /// Writes the 24-byte file header to `w`.
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(&global_header())?;
        Ok(Self {
            w,
            packets: 0,
            ident: 0,
            buf: Vec::new(),
        })
    }

    /// Records one UDP datagram sent from `src` to `dst` at `at` of virtual time, inside a
    /// synthesized IP packet whose TTL (IPv4) or hop limit (IPv6) is `ttl`.
    ///
    /// IPv4 packets take their identification from a counter in this writer, starting at 0.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if the families of `src` and `dst` differ, if the payload
    /// is longer than [`MAX_UDP_PAYLOAD_V4`] or [`MAX_UDP_PAYLOAD_V6`], or if `at` is past what a
    /// 32-bit timestamp holds (about 82 years of virtual time); nothing is written then.
    /// Otherwise, any error of the underlying writer.
    pub fn write_udp(
        &mut self,
        at: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        ttl: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        let ts_sec = u32::try_from(at.as_secs())
            .ok()
            .and_then(|s| BASE_EPOCH_SECS.checked_add(s))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "virtual time past what a pcap timestamp holds",
                )
            })?;
        self.buf.clear();
        udp_ip_packet(src, dst, ttl, self.ident, payload, &mut self.buf)?;
        let orig_len = self.buf.len();
        self.buf.truncate(SNAPLEN as usize);

        let mut header = [0; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&ts_sec.to_le_bytes());
        header[4..8].copy_from_slice(&at.subsec_nanos().to_le_bytes());
        header[8..12].copy_from_slice(&len_u32(self.buf.len()).to_le_bytes());
        header[12..16].copy_from_slice(&len_u32(orig_len).to_le_bytes());
        self.w.write_all(&header)?;
        self.w.write_all(&self.buf)?;

        if src.is_ipv4() {
            self.ident = self.ident.wrapping_add(1);
        }
        self.packets += 1;
        Ok(())
    }

    /// How many packets have been recorded.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The underlying writer, for instance the bytes written so far when it is a `Vec<u8>`.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// Gives back the underlying writer. Nothing is buffered here, so nothing is lost.
    pub fn into_inner(self) -> W {
        self.w
    }
}

impl<W: io::Write + fmt::Debug> fmt::Debug for PcapWriter<W> {
    // Leaves out the scratch buffer: up to 64 KiB of a past packet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcapWriter")
            .field("w", &self.w)
            .field("packets", &self.packets)
            .field("ident", &self.ident)
            .finish_non_exhaustive()
    }
}

/// Appends to `out` the IPv4 or IPv6 packet that carries `payload` from `src` to `dst` over UDP,
/// with both checksums computed.
///
/// IPv4: header without options, identification `ident`, Don't Fragment set, TTL `ttl`. IPv6:
/// traffic class and flow label zero, hop limit `ttl`, no extension headers; `ident` is unused.
/// A UDP checksum that computes to zero is sent as `0xffff` (RFC 768; RFC 8200 §8.1).
///
/// # Errors
///
/// [`UdpPacketError`] if the families differ or the payload is too long; `out` is unchanged then.
pub fn udp_ip_packet(
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    ident: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), UdpPacketError> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let udp_len = udp_len(payload, MAX_UDP_PAYLOAD_V4)?;
            let ip = ipv4_header(s, d, ttl, ident, udp_len);
            let udp = udp_header(
                src.port(),
                dst.port(),
                udp_len,
                &ipv4_pseudo(s, d, udp_len),
                payload,
            );
            out.reserve(ip.len() + udp.len() + payload.len());
            out.extend_from_slice(&ip);
            out.extend_from_slice(&udp);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let udp_len = udp_len(payload, MAX_UDP_PAYLOAD_V6)?;
            let ip = ipv6_header(s, d, ttl, udp_len);
            let udp = udp_header(
                src.port(),
                dst.port(),
                udp_len,
                &ipv6_pseudo(s, d, udp_len),
                payload,
            );
            out.reserve(ip.len() + udp.len() + payload.len());
            out.extend_from_slice(&ip);
            out.extend_from_slice(&udp);
        }
        _ => return Err(UdpPacketError::MixedFamilies),
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// The Internet checksum (RFC 1071) of the concatenation of `chunks`: the one's complement of the
/// one's complement sum of its 16-bit big-endian words, an odd last byte padded with zero.
///
/// Chunks may have odd lengths; words span their boundaries as in the concatenation. Over data
/// that already holds a correct checksum, the result is zero.
pub fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |word: u16| {
        // End-around carry keeps this the one's complement sum for any input length.
        let (s, carry) = sum.overflowing_add(u64::from(word));
        sum = s + u64::from(carry);
    };
    let mut pending: Option<u8> = None;
    for chunk in chunks {
        let mut rest = *chunk;
        if let Some(hi) = pending.take() {
            match rest.split_first() {
                Some((&lo, tail)) => {
                    add(u16::from_be_bytes([hi, lo]));
                    rest = tail;
                }
                None => {
                    pending = Some(hi);
                    continue;
                }
            }
        }
        let mut words = rest.chunks_exact(2);
        for w in &mut words {
            add(u16::from_be_bytes([w[0], w[1]]));
        }
        pending = words.remainder().first().copied();
    }
    if let Some(hi) = pending {
        add(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 0xffff, so this never truncates.
    !(sum as u16)
}

fn global_header() -> [u8; 24] {
    let mut h = [0; 24];
    h[0..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    h[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    // 8..16: thiszone and sigfigs, both zero (timestamps are UTC, accuracy unstated).
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
    h
}

/// A record length; packets are at most 65 575 bytes, so it always fits.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The UDP length field (header plus payload), if the payload is at most `max`.
fn udp_len(payload: &[u8], max: usize) -> Result<u16, UdpPacketError> {
    let too_long = UdpPacketError::PayloadTooLong {
        len: payload.len(),
        max,
    };
    if payload.len() > max {
        return Err(too_long);
    }
    u16::try_from(payload.len() + UDP_HEADER_LEN).map_err(|_| too_long)
}

/// RFC 791 §3.1, without options. `udp_len` has been checked against [`MAX_UDP_PAYLOAD_V4`].
fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    ident: u16,
    udp_len: u16,
) -> [u8; IPV4_HEADER_LEN] {
    debug_assert!(usize::from(udp_len) <= UDP_HEADER_LEN + MAX_UDP_PAYLOAD_V4);
    let total_len = udp_len.saturating_add(IPV4_HEADER_LEN as u16);
    let mut h = [0; IPV4_HEADER_LEN];
    h[0] = 0x45; // version 4, header length 5 words
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
    h[8] = ttl;
    h[9] = IP_PROTO_UDP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let checksum = internet_checksum(&[&h]);
    h[10..12].copy_from_slice(&checksum.to_be_bytes());
    h
}

/// RFC 8200 §3, without extension headers.
fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, udp_len: u16) -> [u8; IPV6_HEADER_LEN] {
    let mut h = [0; IPV6_HEADER_LEN];
    h[0] = 0x60; // version 6; traffic class and flow label zero
    h[4..6].copy_from_slice(&udp_len.to_be_bytes());
    h[6] = IP_PROTO_UDP;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// The pseudo-header the UDP checksum covers over IPv4 (RFC 768).
fn ipv4_pseudo(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> [u8; 12] {
    let mut p = [0; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = IP_PROTO_UDP;
    p[10..12].copy_from_slice(&udp_len.to_be_bytes());
    p
}

/// The pseudo-header upper-layer checksums cover over IPv6 (RFC 8200 §8.1).
fn ipv6_pseudo(src: Ipv6Addr, dst: Ipv6Addr, udp_len: u16) -> [u8; 40] {
    let mut p = [0; 40];
    p[0..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&u32::from(udp_len).to_be_bytes());
    p[39] = IP_PROTO_UDP;
    p
}

/// RFC 768. The checksum is never sent as zero: zero means "none" over IPv4 and is invalid over
/// IPv6, so a computed zero goes out as its other one's complement form, `0xffff`.
fn udp_header(
    src_port: u16,
    dst_port: u16,
    udp_len: u16,
    pseudo: &[u8],
    payload: &[u8],
) -> [u8; UDP_HEADER_LEN] {
    let mut h = [0; UDP_HEADER_LEN];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let checksum = match internet_checksum(&[pseudo, &h, payload]) {
        0 => 0xffff,
        c => c,
    };
    h[6..8].copy_from_slice(&checksum.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(lines: &[&str]) -> Vec<u8> {
        let digits: Vec<u8> = lines
            .iter()
            .flat_map(|l| l.bytes())
            .filter(|b| b.is_ascii_hexdigit())
            .collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn packet(src: &str, dst: &str, ttl: u8, ident: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        udp_ip_packet(addr(src), addr(dst), ttl, ident, payload, &mut out).unwrap();
        out
    }

    /// The UDP checksum recomputed over pseudo-header, header, checksum and payload.
    fn udp_verify(pkt: &[u8]) -> u16 {
        let (pseudo, udp) = if pkt[0] >> 4 == 4 {
            let mut p = vec![0; 12];
            p[0..8].copy_from_slice(&pkt[12..20]);
            p[9] = 17;
            p[10..12].copy_from_slice(&pkt[24..26]);
            (p, &pkt[20..])
        } else {
            let mut p = vec![0; 40];
            p[0..32].copy_from_slice(&pkt[8..40]);
            p[34..36].copy_from_slice(&pkt[44..46]);
            p[39] = 17;
            (p, &pkt[40..])
        };
        internet_checksum(&[&pseudo, udp])
    }

    #[test]
    fn ipv4_header_checksum_matches_classic_example() {
        // The worked example on Wikipedia's "IPv4 header checksum": checksum field zeroed.
        let header = hex(&["4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7"]);
        assert_eq!(internet_checksum(&[&header]), 0xb861);
        let filled = hex(&["4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7"]);
        assert_eq!(internet_checksum(&[&filled]), 0);

        let ours = ipv4_header(
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
            64,
            0,
            0x73 - 20,
        );
        assert_eq!(ours.as_slice(), filled.as_slice());
    }

    #[test]
    fn checksum_spans_odd_chunk_boundaries() {
        let data = hex(&["4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7 ab"]);
        let whole = internet_checksum(&[&data]);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(internet_checksum(&[a, b]), whole, "cut at {cut}");
            assert_eq!(internet_checksum(&[a, &[], b, &[]]), whole, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(internet_checksum(&singles), whole);
        // RFC 1071 §3's example words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            internet_checksum(&[&hex(&["0001 f203 f4f5 f6f7"])]),
            !0xddf2
        );
        assert_eq!(internet_checksum(&[]), 0xffff);
        assert_eq!(internet_checksum(&[&[0xff; 100_001]]), 0x00ff);
    }

    #[test]
    fn global_header_bytes() {
        let pcap = PcapWriter::new(Vec::new()).unwrap();
        assert_eq!(pcap.packets(), 0);
        let expected = hex(&[
            "4d3c b2a1", // magic, nanosecond timestamps, little-endian
            "0200 0400", // version 2.4
            "0000 0000", // thiszone
            "0000 0000", // sigfigs
            "ffff 0000", // snaplen 65535
            "6500 0000", // LINKTYPE_RAW
        ]);
        assert_eq!(pcap.into_inner(), expected);
    }

    // The checksums in these two fixtures were computed apart from this module (a short Python
    // script) and tshark finds them good.
    #[test]
    fn ipv4_udp_packet_bytes() {
        let pkt = packet("192.0.2.1:40000", "198.51.100.7:3478", 64, 0x1234, b"hi!");
        let expected = hex(&[
            "4500 001f 1234 4000 4011 3c5e c000 0201 c633 6407", // IPv4, checksum 3c5e
            "9c40 0d96 000b e05b",                               // UDP, checksum e05b
            "6869 21",                                           // "hi!"
        ]);
        assert_eq!(pkt, expected);
        assert_eq!(internet_checksum(&[&pkt[..20]]), 0);
        assert_eq!(udp_verify(&pkt), 0);
    }

    #[test]
    fn ipv6_udp_packet_bytes() {
        let pkt = packet(
            "[2001:db8::1]:40000",
            "[2001:db8::2]:3478",
            7,
            0x1234,
            b"hi!",
        );
        let expected = hex(&[
            "6000 0000 000b 1107",                     // IPv6, payload 11, UDP, hop limit 7
            "2001 0db8 0000 0000 0000 0000 0000 0001", // source
            "2001 0db8 0000 0000 0000 0000 0000 0002", // destination
            "9c40 0d96 000b 7123",                     // UDP, checksum 7123
            "6869 21",                                 // "hi!"
        ]);
        assert_eq!(pkt, expected);
        assert_eq!(udp_verify(&pkt), 0);
    }

    #[test]
    fn udp_checksum_of_zero_is_sent_as_ffff() {
        for (src, dst) in [("10.0.0.1:1", "10.0.0.2:2"), ("[fe80::1]:1", "[fe80::2]:2")] {
            let first = packet(src, dst, 1, 0, &[0xaa, 0xbb, 0, 0]);
            let udp_at = if first[0] >> 4 == 4 { 20 } else { 40 };
            // Putting the checksum into a zero word of the payload brings the sum to 0xffff,
            // whose complement is zero.
            let c = [first[udp_at + 6], first[udp_at + 7]];
            let pkt = packet(src, dst, 1, 0, &[0xaa, 0xbb, c[0], c[1]]);
            assert_eq!(pkt[udp_at + 6..udp_at + 8], [0xff, 0xff]);
            assert_eq!(udp_verify(&pkt), 0);
        }
    }

    #[test]
    fn records_have_virtual_timestamps_and_lengths() {
        let mut pcap = PcapWriter::new(Vec::new()).unwrap();
        let at = Duration::new(3, 123_456_789);
        pcap.write_udp(at, addr("192.0.2.1:1"), addr("192.0.2.2:2"), 64, b"x")
            .unwrap();
        let bytes = pcap.get_ref();
        let record = &bytes[24..];
        assert_eq!(record[0..4], (1_700_000_003u32).to_le_bytes());
        assert_eq!(record[4..8], 123_456_789u32.to_le_bytes());
        assert_eq!(record[8..12], 29u32.to_le_bytes());
        assert_eq!(record[12..16], 29u32.to_le_bytes());
        assert_eq!(record.len(), 16 + 29);
        assert_eq!(record[16], 0x45);
        assert_eq!(pcap.packets(), 1);
    }

    #[test]
    fn ipv4_identification_counts_per_writer() {
        let mut pcap = PcapWriter::new(Vec::new()).unwrap();
        pcap.ident = u16::MAX;
        let (v4a, v4b) = (addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        let (v6a, v6b) = (addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
        let mut idents = Vec::new();
        for (s, d) in [(v4a, v4b), (v6a, v6b), (v4a, v4b), (v4b, v4a)] {
            let start = pcap.get_ref().len();
            pcap.write_udp(Duration::ZERO, s, d, 64, b"").unwrap();
            let ip = &pcap.get_ref()[start + RECORD_HEADER_LEN..];
            if s.is_ipv4() {
                idents.push(u16::from_be_bytes([ip[4], ip[5]]));
            }
        }
        assert_eq!(idents, [u16::MAX, 0, 1]);
        assert_eq!(pcap.packets(), 4);
    }

    #[test]
    fn largest_payloads_fit_and_larger_are_refused() {
        let payload = vec![0x5a; MAX_UDP_PAYLOAD_V6 + 1];
        let (v4a, v4b) = (addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        let (v6a, v6b) = (addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
        let mut pcap = PcapWriter::new(Vec::new()).unwrap();

        pcap.write_udp(Duration::ZERO, v4a, v4b, 64, &payload[..MAX_UDP_PAYLOAD_V4])
            .unwrap();
        let ip = &pcap.get_ref()[24 + 16..];
        assert_eq!(ip.len(), 65_535);
        assert_eq!(ip[2..4], [0xff, 0xff]);
        assert_eq!(internet_checksum(&[&ip[..20]]), 0);
        assert_eq!(udp_verify(ip), 0);

        let len = pcap.get_ref().len();
        pcap.write_udp(Duration::ZERO, v6a, v6b, 64, &payload[..MAX_UDP_PAYLOAD_V6])
            .unwrap();
        let record = &pcap.get_ref()[len..];
        // Truncated to the snapshot length; the original length is kept.
        assert_eq!(record[8..12], 65_535u32.to_le_bytes());
        assert_eq!(record[12..16], 65_575u32.to_le_bytes());
        assert_eq!(record.len(), 16 + 65_535);
        assert_eq!(record[16 + 4..16 + 6], [0xff, 0xff]);

        let len = pcap.get_ref().len();
        for (s, d, n) in [
            (v4a, v4b, MAX_UDP_PAYLOAD_V4),
            (v6a, v6b, MAX_UDP_PAYLOAD_V6),
        ] {
            let err = pcap
                .write_udp(Duration::ZERO, s, d, 64, &payload[..n + 1])
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let mut out = vec![1, 2, 3];
            assert_eq!(
                udp_ip_packet(s, d, 64, 0, &payload[..n + 1], &mut out),
                Err(UdpPacketError::PayloadTooLong { len: n + 1, max: n })
            );
            assert_eq!(out, [1, 2, 3]);
        }
        assert_eq!(pcap.get_ref().len(), len);
        assert_eq!(pcap.packets(), 2);
    }

    #[test]
    fn mixed_families_are_refused() {
        let mut pcap = PcapWriter::new(Vec::new()).unwrap();
        let (v4, v6) = (addr("192.0.2.1:1"), addr("[::ffff:192.0.2.2]:2"));
        for (s, d) in [(v4, v6), (v6, v4)] {
            let err = pcap.write_udp(Duration::ZERO, s, d, 64, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let mut out = Vec::new();
            assert_eq!(
                udp_ip_packet(s, d, 64, 0, b"x", &mut out),
                Err(UdpPacketError::MixedFamilies)
            );
            assert!(out.is_empty());
        }
        assert_eq!(pcap.packets(), 0);
        assert_eq!(pcap.get_ref().len(), 24);
    }

    #[test]
    fn times_past_a_32_bit_timestamp_are_refused() {
        let mut pcap = PcapWriter::new(Vec::new()).unwrap();
        let (a, b) = (addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        let last = u64::from(u32::MAX - BASE_EPOCH_SECS);
        pcap.write_udp(Duration::new(last, 999_999_999), a, b, 64, b"")
            .unwrap();
        for at in [Duration::from_secs(last + 1), Duration::MAX] {
            let err = pcap.write_udp(at, a, b, 64, b"").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert_eq!(pcap.packets(), 1);
        assert_eq!(pcap.get_ref().len(), 24 + 16 + 28);
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            any::<([u8; 16], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    proptest! {
        #[test]
        fn any_datagram_gets_verifying_checksums(
            src in any_addr(),
            dst in any_addr(),
            ttl in any::<u8>(),
            ident in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let mut out = vec![0xee];
            let result = udp_ip_packet(src, dst, ttl, ident, &payload, &mut out);
            if src.is_ipv4() != dst.is_ipv4() {
                prop_assert_eq!(result, Err(UdpPacketError::MixedFamilies));
                prop_assert_eq!(out, [0xee]);
                return Ok(());
            }
            prop_assert_eq!(result, Ok(()));
            let pkt = &out[1..];
            let (ip_len, hop) = if src.is_ipv4() { (20, pkt[8]) } else { (40, pkt[7]) };
            prop_assert_eq!(pkt.len(), ip_len + 8 + payload.len());
            prop_assert_eq!(hop, ttl);
            if src.is_ipv4() {
                prop_assert_eq!(internet_checksum(&[&pkt[..20]]), 0);
                prop_assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
            }
            let udp = &pkt[ip_len..];
            prop_assert_eq!(&udp[0..2], &src.port().to_be_bytes());
            prop_assert_eq!(&udp[2..4], &dst.port().to_be_bytes());
            prop_assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
            prop_assert_ne!(&udp[6..8], &[0, 0]);
            prop_assert_eq!(udp_verify(pkt), 0);
            prop_assert_eq!(&udp[8..], payload.as_slice());
        }
    }

    #[test]
    fn writer_errors_are_passed_on() {
        #[derive(Debug)]
        struct Full;
        impl io::Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::StorageFull.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = PcapWriter::new(Full).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
