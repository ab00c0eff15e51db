//! The rewrites of incoming packets: address parameters out of INIT and INIT ACK, and a
//! SHUTDOWN held back while our data is outstanding ([`split_shutdown`]); and one packet
//! sctp-proto does not make: the COOKIE ACK a shutting-down association owes a repeated
//! COOKIE ECHO ([`cookie_ack_for`]).
//!
//! Address parameters:
//! sctp-proto stops parsing an INIT or INIT ACK at any parameter it does not implement whose
//! type says "stop processing" (the two high bits 00, RFC 9260 §3.2.1), and it implements none
//! of the address parameters: IPv4 Address (5), IPv6 Address (6), Cookie Preservative (9) and
//! Host Name Address (11) (RFC 9260 §3.3.2.1). usrsctp lists every local address in its INIT
//! ACK, so without this no handshake with it would complete. An association here is
//! single-homed on whatever path its driver picked (RFC 6951 §5.5 has the encapsulating side
//! ignore the listed addresses' UDP ports as well), so the parameters carry nothing we would
//! use: they are removed, and the checksum computed again.
//!
//! Only a packet whose CRC32c checks is rewritten (RFC 9260 §6.8): a corrupt packet must stay
//! corrupt. INIT and INIT ACK are never bundled with other chunks (RFC 9260 §6.10), so the
//! chunk is the packet's only one.

use crc::{CRC_32_ISCSI, Crc};

/// CRC32c, SCTP's checksum (RFC 9260 §6.8, Appendix A).
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

mod field {
    use std::ops::Range;
    /// The common header's checksum (RFC 9260 §3.1), little-endian on the wire as CRC32c is
    /// computed (Appendix A).
    pub(super) const CHECKSUM: Range<usize> = 8..12;
    /// Where the first chunk starts.
    pub(super) const FIRST_CHUNK: usize = 12;
    /// Chunk header: type, flags, length (RFC 9260 §3.2).
    pub(super) const CHUNK_HEADER: usize = 4;
    /// INIT/INIT ACK fixed part after the chunk header: initiate tag, a_rwnd, OS, MIS,
    /// initial TSN (RFC 9260 §3.3.2).
    pub(super) const INIT_FIXED: usize = 16;
}

const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const SHUTDOWN: u8 = 7;
const COOKIE_ECHO: u8 = 10;
const COOKIE_ACK: u8 = 11;

/// Parameters dropped from INIT and INIT ACK (RFC 9260 §3.3.2.1, §3.3.3.1).
fn is_dropped(param_type: u16) -> bool {
    matches!(param_type, 5 | 6 | 9 | 11)
}

/// Whether the packet's checksum is right.
pub(crate) fn checksum_ok(packet: &[u8]) -> bool {
    let Some(stored) = packet.get(field::CHECKSUM) else {
        return false;
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let mut digest = CRC32C.digest();
    digest.update(&packet[..field::CHECKSUM.start]);
    digest.update(&[0; 4]);
    digest.update(&packet[field::CHECKSUM.end..]);
    digest.finalize() == stored
}

/// Writes the checksum of `packet` into it.
fn seal_checksum(packet: &mut [u8]) {
    packet[field::CHECKSUM].copy_from_slice(&[0; 4]);
    let sum = CRC32C.checksum(packet);
    packet[field::CHECKSUM].copy_from_slice(&sum.to_le_bytes());
}

/// The packet without its INIT's or INIT ACK's address parameters, or `None` when there is
/// nothing to remove (or it is not an INIT/INIT ACK with a good checksum, or it is malformed:
/// then sctp-proto judges it as it is).
pub(crate) fn strip_addresses(packet: &[u8]) -> Option<Vec<u8>> {
    let chunk = packet.get(field::FIRST_CHUNK..)?;
    let (&kind, _) = chunk.split_first()?;
    if kind != INIT && kind != INIT_ACK {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([*chunk.get(2)?, *chunk.get(3)?]));
    let params_start = field::CHUNK_HEADER + field::INIT_FIXED;
    if length < params_start || length > chunk.len() || !checksum_ok(packet) {
        return None;
    }
    let mut kept = Vec::with_capacity(chunk.len());
    kept.extend_from_slice(&chunk[..params_start]);
    let mut at = params_start;
    let mut end = params_start;
    let mut dropped = false;
    while at + 4 <= length {
        let param_type = u16::from_be_bytes([chunk[at], chunk[at + 1]]);
        let param_len = usize::from(u16::from_be_bytes([chunk[at + 2], chunk[at + 3]]));
        if param_len < 4 || at + param_len > length {
            // Malformed: leave the verdict to sctp-proto's parser.
            return None;
        }
        // Padded to 4 bytes, except perhaps the last (RFC 9260 §3.2.1).
        let padded = (at + param_len.next_multiple_of(4)).min(length);
        if is_dropped(param_type) {
            dropped = true;
        } else {
            kept.extend_from_slice(&chunk[at..at + param_len]);
            end = kept.len();
            kept.extend_from_slice(&chunk[at + param_len..padded]);
        }
        at = padded;
    }
    if !dropped {
        return None;
    }
    // The chunk length leaves out the last parameter's padding; the packet carries it
    // (RFC 9260 §3.2).
    kept.truncate(end);
    let chunk_len = u16::try_from(end).ok()?;
    kept[2..4].copy_from_slice(&chunk_len.to_be_bytes());
    kept.resize(kept.len().next_multiple_of(4), 0);
    let mut out = Vec::with_capacity(field::FIRST_CHUNK + kept.len());
    out.extend_from_slice(&packet[..field::FIRST_CHUNK]);
    out.extend_from_slice(&kept);
    seal_checksum(&mut out);
    Some(out)
}

/// A packet with a SHUTDOWN chunk (RFC 9260 §3.3.8) cut in two: the packet without it (`None`
/// when nothing else was in it) and a packet of the SHUTDOWN alone, each with the same common
/// header and its own checksum. `None` when there is no SHUTDOWN, the checksum is wrong or the
/// chunks are malformed (then sctp-proto judges the packet as it is).
///
/// Why: sctp-proto answers a SHUTDOWN with its SHUTDOWN ACK as soon as nothing is *in flight*,
/// and sends nothing new after it, so messages still queued are lost; RFC 9260 §9.2 has the
/// SHUTDOWN's receiver deliver all its outstanding data first. The association holds the
/// SHUTDOWN back until what it sent is acknowledged and only then lets sctp-proto see it. The
/// chunk's Cumulative TSN Ack is not lost by the wait: sctp-proto does not read it, and the
/// SHUTDOWN's sender acknowledges our DATA with SACKs.
pub(crate) fn split_shutdown(packet: &[u8]) -> Option<(Option<Vec<u8>>, Vec<u8>)> {
    // Called for every packet while our data is outstanding: find the SHUTDOWN first, without
    // copying anything, and cut only a packet that has one.
    let header = packet.get(..field::FIRST_CHUNK)?;
    let mut shutdown = None;
    let mut at = field::FIRST_CHUNK;
    while at < packet.len() {
        let chunk = packet.get(at..at + field::CHUNK_HEADER)?;
        let len = usize::from(u16::from_be_bytes([chunk[2], chunk[3]]));
        if len < field::CHUNK_HEADER || at + len > packet.len() {
            return None;
        }
        let padded = (at + len.next_multiple_of(4)).min(packet.len());
        if chunk[0] == SHUTDOWN {
            shutdown = Some(at..padded);
        }
        at = padded;
    }
    let shutdown = shutdown?;
    if !checksum_ok(packet) {
        return None;
    }
    let mut alone = header.to_vec();
    alone.extend_from_slice(&packet[shutdown]);
    seal_checksum(&mut alone);
    // Every other chunk, in order (a second SHUTDOWN in the packet goes too).
    let mut rest = header.to_vec();
    let mut at = field::FIRST_CHUNK;
    while at < packet.len() {
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        let padded = (at + len.next_multiple_of(4)).min(packet.len());
        if packet[at] != SHUTDOWN {
            rest.extend_from_slice(&packet[at..padded]);
        }
        at = padded;
    }
    let rest = (rest.len() > field::FIRST_CHUNK).then(|| {
        seal_checksum(&mut rest);
        rest
    });
    Some((rest, alone))
}

/// The COOKIE ACK that answers `packet` if it is a COOKIE ECHO with a good checksum: ports
/// swapped, `peer_tag` as its verification tag (RFC 9260 §3.3.12, §8.5).
///
/// Why: when our COOKIE ACK is lost the peer repeats its COOKIE ECHO, and RFC 9260 §5.2.4
/// (action D, the tags match) has us answer it again whatever we did meanwhile. sctp-proto
/// answers only while established: once it shuts down (ours began before the lost ACK was
/// noticed) it stays silent, the peer's handshake never completes, and neither its data nor
/// the shutdown can go on (found by the chaos run, seed 1231).
pub(crate) fn cookie_ack_for(packet: &[u8], peer_tag: [u8; 4]) -> Option<Vec<u8>> {
    let header = packet.get(..field::FIRST_CHUNK)?;
    if *packet.get(field::FIRST_CHUNK)? != COOKIE_ECHO || !checksum_ok(packet) {
        return None;
    }
    let mut ack = Vec::with_capacity(field::FIRST_CHUNK + field::CHUNK_HEADER);
    ack.extend_from_slice(&header[2..4]);
    ack.extend_from_slice(&header[0..2]);
    ack.extend_from_slice(&peer_tag);
    ack.extend_from_slice(&[0; 4]);
    ack.extend_from_slice(&[COOKIE_ACK, 0, 0, 4]);
    seal_checksum(&mut ack);
    Some(ack)
}

/// `packet` cut into packets of at most `max` bytes, each with the same common header, its
/// share of the chunks in order and its own checksum; `packet` itself when it fits.
///
/// sctp-proto decides whether a DATA chunk still fits a packet by the chunk's user data
/// alone, without its 16-byte header or its padding, so a bundle can pass the size it was
/// given by up to the header plus 3 bytes per chunk. Chunks other than INIT, INIT ACK and
/// SHUTDOWN COMPLETE may be bundled or not at will (RFC 9260 §6.10), so splitting the bundle
/// changes nothing for the receiver. A single chunk larger than `max` cannot be split: it goes
/// out whole, and the caller decides (the association drops it and counts it).
pub(crate) fn split(packet: Vec<u8>, max: usize) -> Vec<Vec<u8>> {
    if packet.len() <= max || packet.len() < field::FIRST_CHUNK {
        return vec![packet];
    }
    let header = &packet[..field::FIRST_CHUNK];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut current = header.to_vec();
    let mut at = field::FIRST_CHUNK;
    while at + field::CHUNK_HEADER <= packet.len() {
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        if len < field::CHUNK_HEADER || at + len > packet.len() {
            // Not a packet sctp-proto would make; send it as it is.
            return vec![packet];
        }
        let padded = (at + len.next_multiple_of(4)).min(packet.len());
        if current.len() > field::FIRST_CHUNK && current.len() + (padded - at) > max {
            out.push(std::mem::replace(&mut current, header.to_vec()));
        }
        current.extend_from_slice(&packet[at..padded]);
        at = padded;
    }
    if current.len() > field::FIRST_CHUNK {
        out.push(current);
    }
    for p in &mut out {
        seal_checksum(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The start of usrsctp 0.9.5's INIT ACK to our INIT over UDP encapsulation on loopback
    /// (captured with tshark): ECN, Forward-TSN-Supported, Supported Extensions, Random,
    /// HMAC, Chunk List, then two IPv6 and two IPv4 addresses, then the first 24 bytes of the
    /// State Cookie (whole, the packet is 472 bytes).
    const USRSCTP_INIT_ACK: &str = concat!(
        "000713886701a7a67150464a020001ccfc38396300020000000a0800707e13ac80000004c0000004",
        "80080009c00fc1808200000080020024644d936e11c3ea22b3b9033ab940dad9b01a9e612a7a9daa",
        "2cbb1645e9bc269980040006000100008003000680c1000000060014fd0000000000000000000000",
        "0000000200050008c00002020006001400000000000000000000000000000001000500087f000001",
        "000701384b414d452d42534420312e3100000000dc65166b",
    );

    #[test]
    fn the_usrsctp_init_ack_loses_its_addresses_and_keeps_the_rest() {
        // Everything before the State Cookie, then a short cookie of our own, with a fresh
        // checksum.
        let original = hex(USRSCTP_INIT_ACK);
        let before_cookie = 12 + 20 + 4 + 4 + 12 + 36 + 8 + 8 + 20 + 8 + 20 + 8;
        let mut packet = original[..before_cookie].to_vec();
        packet.extend_from_slice(&[0x00, 0x07, 0x00, 0x0a, 1, 2, 3, 4, 5, 6, 0, 0]);
        let chunk_len = u16::try_from(packet.len() - 12 - 2).unwrap();
        packet[14..16].copy_from_slice(&chunk_len.to_be_bytes());
        seal_checksum(&mut packet);
        assert!(checksum_ok(&packet));

        let out = strip_addresses(&packet).expect("addresses to strip");
        assert!(checksum_ok(&out));
        assert_eq!(out.len(), packet.len() - (20 + 8 + 20 + 8));
        // Header and fixed part untouched but for the length and checksum.
        assert_eq!(out[..8], packet[..8]);
        assert_eq!(out[12..14], packet[12..14]);
        assert_eq!(out[16..32], packet[16..32]);
        let chunk_len = usize::from(u16::from_be_bytes([out[14], out[15]]));
        assert_eq!(chunk_len, 4 + 16 + 4 + 4 + 12 + 36 + 8 + 8 + 10);
        // The parameters left, in order: ECN, FWD-TSN, extensions, random, HMAC, chunk list,
        // cookie.
        let mut at = 32;
        let mut types = Vec::new();
        while at + 4 <= 12 + chunk_len {
            types.push(u16::from_be_bytes([out[at], out[at + 1]]));
            let len = usize::from(u16::from_be_bytes([out[at + 2], out[at + 3]]));
            at += len.next_multiple_of(4);
        }
        assert_eq!(
            types,
            [0x8000, 0xc000, 0x8008, 0x8002, 0x8004, 0x8003, 0x0007]
        );
        // Nothing left to strip the second time.
        assert_eq!(strip_addresses(&out), None);
    }

    /// A packet of `chunks` DATA-like chunks of the given value lengths (type 0, padded).
    fn bundle(chunks: &[usize]) -> Vec<u8> {
        let mut p = vec![0x13, 0x88, 0x13, 0x88, 1, 2, 3, 4, 0, 0, 0, 0];
        for (i, &n) in chunks.iter().enumerate() {
            let len = u16::try_from(16 + n).unwrap();
            p.extend_from_slice(&[0, 3]);
            p.extend_from_slice(&len.to_be_bytes());
            p.extend((0..12 + n).map(|k| (k + i) as u8));
            p.resize(p.len().next_multiple_of(4), 0);
        }
        seal_checksum(&mut p);
        p
    }

    #[test]
    fn an_oversized_bundle_is_split_into_packets_that_fit() {
        let packet = bundle(&[600, 1, 700, 3, 1000]);
        let parts = split(packet.clone(), 1365);
        assert!(parts.len() > 1);
        let mut chunks = Vec::new();
        for p in &parts {
            assert!(p.len() <= 1365, "{}", p.len());
            assert!(checksum_ok(p));
            assert_eq!(p[..8], packet[..8]);
            chunks.extend_from_slice(&p[12..]);
        }
        // The same chunks, in the same order.
        assert_eq!(chunks, packet[12..]);
        // What fits stays whole.
        let small = bundle(&[100, 200]);
        assert_eq!(split(small.clone(), 1365), [small]);
        // One chunk over the limit goes out alone, as it is.
        let big = bundle(&[1400]);
        assert_eq!(split(big.clone(), 1365), [big]);
    }

    #[test]
    fn a_shutdown_is_cut_out_of_its_bundle() {
        // SACK-like (type 3), SHUTDOWN (type 7, cumulative TSN ack 0x01020304), DATA-like.
        let mut p = vec![0x13, 0x88, 0x13, 0x88, 9, 9, 9, 9, 0, 0, 0, 0];
        let sack = [3, 0, 0, 8, 0xaa, 0xbb, 0xcc, 0xdd];
        let shutdown = [7, 0, 0, 8, 1, 2, 3, 4];
        let data = [0, 3, 0, 5, 0xee, 0, 0, 0];
        for c in [&sack[..], &shutdown, &data] {
            p.extend_from_slice(c);
        }
        seal_checksum(&mut p);
        let (rest, alone) = split_shutdown(&p).expect("a shutdown");
        let rest = rest.expect("other chunks");
        assert!(checksum_ok(&rest) && checksum_ok(&alone));
        assert_eq!(rest[..8], p[..8]);
        assert_eq!(alone[..8], p[..8]);
        assert_eq!(alone[12..], shutdown);
        assert_eq!(rest[12..20], sack);
        assert_eq!(rest[20..], data);
        // A SHUTDOWN alone leaves nothing else.
        let mut only = p[..12].to_vec();
        only.extend_from_slice(&shutdown);
        seal_checksum(&mut only);
        assert_eq!(split_shutdown(&only), Some((None, only.clone())));
        // No SHUTDOWN, a bad checksum, a malformed chunk or a truncation: left alone.
        let mut no = p[..12].to_vec();
        no.extend_from_slice(&sack);
        seal_checksum(&mut no);
        assert_eq!(split_shutdown(&no), None);
        let mut corrupt = p.clone();
        corrupt[20] ^= 1;
        assert_eq!(split_shutdown(&corrupt), None);
        let mut bad_len = only.clone();
        bad_len[15] = 2;
        seal_checksum(&mut bad_len);
        assert_eq!(split_shutdown(&bad_len), None);
        for len in 0..p.len() {
            assert_eq!(split_shutdown(&p[..len]), None, "{len}");
        }
    }

    #[test]
    fn a_cookie_echo_is_answered_with_a_cookie_ack() {
        let mut echo = vec![0x13, 0x88, 0x27, 0x10, 1, 2, 3, 4, 0, 0, 0, 0];
        echo.extend_from_slice(&[COOKIE_ECHO, 0, 0, 8, 9, 9, 9, 9]);
        seal_checksum(&mut echo);
        let ack = cookie_ack_for(&echo, [5, 6, 7, 8]).expect("an ack");
        assert!(checksum_ok(&ack));
        assert_eq!(ack[..8], [0x27, 0x10, 0x13, 0x88, 5, 6, 7, 8]);
        assert_eq!(ack[12..], [COOKIE_ACK, 0, 0, 4]);
        // Not a COOKIE ECHO, or corrupt, or short: nothing.
        let mut other = echo.clone();
        other[12] = 3;
        seal_checksum(&mut other);
        assert_eq!(cookie_ack_for(&other, [5, 6, 7, 8]), None);
        let mut corrupt = echo.clone();
        corrupt[16] ^= 1;
        assert_eq!(cookie_ack_for(&corrupt, [5, 6, 7, 8]), None);
        for len in 0..echo.len() {
            assert_eq!(cookie_ack_for(&echo[..len], [5, 6, 7, 8]), None, "{len}");
        }
    }

    #[test]
    fn a_corrupt_or_other_packet_is_left_alone() {
        let original = hex(USRSCTP_INIT_ACK);
        // The capture is truncated, so its checksum no longer matches: untouched.
        assert!(!checksum_ok(&original));
        assert_eq!(strip_addresses(&original), None);
        // Not an INIT: a SACK-like chunk type.
        let mut other = original[..40].to_vec();
        other[12] = 3;
        seal_checksum(&mut other);
        assert_eq!(strip_addresses(&other), None);
        for len in 0..40 {
            assert_eq!(strip_addresses(&original[..len]), None);
        }
    }
}
