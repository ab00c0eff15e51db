//! The uTP packet on the wire (BEP 29, "Header format"), as a zero-copy view and a `Repr`.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Extensions follow the header as a chain: each is `next extension type (u8)`, `len (u8)` and
//! `len` bytes. Type 1 is the selective ACK; other types are skipped by their length (BEP 29,
//! "Extensions"), as libutp's `utp_process_incoming` does.

use std::fmt;

/// BEP 29 version 1, the only one.
pub const VERSION: u8 = 1;
/// The fixed header.
pub const HEADER_LEN: usize = 20;
/// Extension type of the selective ACK (BEP 29, "Extension: Selective ACK").
pub const EXT_SELECTIVE_ACK: u8 = 1;
/// The longest selective ACK bitmask we keep: 256 packets past `ack_nr + 1`, more than
/// fit in any receive window we accept out of order. Longer masks are parsed and truncated.
pub const MAX_SACK_LEN: usize = 32;

mod field {
    use std::ops::Range;
    pub(super) const TYPE_VER: usize = 0;
    pub(super) const EXTENSION: usize = 1;
    pub(super) const CONN_ID: Range<usize> = 2..4;
    pub(super) const TIMESTAMP: Range<usize> = 4..8;
    pub(super) const TIMESTAMP_DIFF: Range<usize> = 8..12;
    pub(super) const WND_SIZE: Range<usize> = 12..16;
    pub(super) const SEQ_NR: Range<usize> = 16..18;
    pub(super) const ACK_NR: Range<usize> = 18..20;
}

/// Why bytes are not a uTP packet. Small on purpose: the caller counts and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the 20-byte header.
    Truncated,
    /// Version is not 1.
    BadVersion,
    /// Type is not one of the five BEP 29 types.
    BadType,
    /// An extension's length runs past the end of the datagram.
    BadExtension,
    /// A selective ACK whose length is zero or not a multiple of 4 (BEP 29).
    BadSelectiveAck,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "shorter than the uTP header",
            WireError::BadVersion => "uTP version is not 1",
            WireError::BadType => "unknown uTP packet type",
            WireError::BadExtension => "uTP extension runs past the datagram",
            WireError::BadSelectiveAck => "selective ACK length is not a positive multiple of 4",
        })
    }
}

impl std::error::Error for WireError {}

/// The five packet types (BEP 29, "type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketType {
    /// Data; carries payload and occupies a sequence number.
    Data = 0,
    /// Finish: the last sequence number of the stream; no payload.
    Fin = 1,
    /// State: an ack only; does not occupy a sequence number.
    State = 2,
    /// Reset: terminate the connection.
    Reset = 3,
    /// Synchronize: opens a connection; occupies a sequence number.
    Syn = 4,
}

impl PacketType {
    fn from_nibble(n: u8) -> Result<Self, WireError> {
        Ok(match n {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return Err(WireError::BadType),
        })
    }
}

/// A zero-copy view of a uTP packet. After [`Packet::new_checked`] no accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic until [`Packet::check_len`] passed.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` and checks the header and the whole extension chain fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the header length, version, type and that every extension lies inside the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if data[field::TYPE_VER] & 0x0f != VERSION {
            return Err(WireError::BadVersion);
        }
        PacketType::from_nibble(data[field::TYPE_VER] >> 4)?;
        self.walk_extensions(|_, _| Ok(())).map(|_| ())
    }

    /// Walks the extension chain, calling `f(type, body)` for each; returns the payload offset.
    fn walk_extensions(
        &self,
        mut f: impl FnMut(u8, &[u8]) -> Result<(), WireError>,
    ) -> Result<usize, WireError> {
        let data = self.buffer.as_ref();
        let mut kind = data[field::EXTENSION];
        let mut at = HEADER_LEN;
        // Each extension takes at least 2 bytes, so the walk ends within the datagram.
        while kind != 0 {
            let (next, len) = match data.get(at..at + 2) {
                Some(&[next, len]) => (next, usize::from(len)),
                _ => return Err(WireError::BadExtension),
            };
            let body = data
                .get(at + 2..at + 2 + len)
                .ok_or(WireError::BadExtension)?;
            f(kind, body)?;
            kind = next;
            at += 2 + len;
        }
        Ok(at)
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        // check_len has accepted the nibble; Data is never reached for a checked packet.
        PacketType::from_nibble(self.buffer.as_ref()[field::TYPE_VER] >> 4)
            .unwrap_or(PacketType::Data)
    }

    /// The version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE_VER] & 0x0f
    }

    /// The type of the first extension (0: none).
    pub fn first_extension(&self) -> u8 {
        self.buffer.as_ref()[field::EXTENSION]
    }

    /// connection_id.
    pub fn connection_id(&self) -> u16 {
        u16::from_be_bytes(self.array(field::CONN_ID))
    }

    /// timestamp_microseconds.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes(self.array(field::TIMESTAMP))
    }

    /// timestamp_difference_microseconds.
    pub fn timestamp_difference(&self) -> u32 {
        u32::from_be_bytes(self.array(field::TIMESTAMP_DIFF))
    }

    /// wnd_size: bytes the sender can still receive.
    pub fn wnd_size(&self) -> u32 {
        u32::from_be_bytes(self.array(field::WND_SIZE))
    }

    /// seq_nr.
    pub fn seq_nr(&self) -> u16 {
        u16::from_be_bytes(self.array(field::SEQ_NR))
    }

    /// ack_nr.
    pub fn ack_nr(&self) -> u16 {
        u16::from_be_bytes(self.array(field::ACK_NR))
    }

    /// The payload after the extension chain (empty if the chain is malformed, which
    /// `check_len` rejects).
    pub fn payload(&self) -> &[u8] {
        let at = self.walk_extensions(|_, _| Ok(())).unwrap_or(usize::MAX);
        self.buffer.as_ref().get(at..).unwrap_or(&[])
    }

    fn array<const N: usize>(&self, range: std::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[range]);
        out
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }

    /// Sets type and version.
    pub fn set_type(&mut self, kind: PacketType) {
        self.buffer.as_mut()[field::TYPE_VER] = ((kind as u8) << 4) | VERSION;
    }

    /// Sets the first extension type.
    pub fn set_first_extension(&mut self, kind: u8) {
        self.buffer.as_mut()[field::EXTENSION] = kind;
    }

    /// Sets connection_id.
    pub fn set_connection_id(&mut self, v: u16) {
        self.put(field::CONN_ID, &v.to_be_bytes());
    }

    /// Sets timestamp_microseconds.
    pub fn set_timestamp(&mut self, v: u32) {
        self.put(field::TIMESTAMP, &v.to_be_bytes());
    }

    /// Sets timestamp_difference_microseconds.
    pub fn set_timestamp_difference(&mut self, v: u32) {
        self.put(field::TIMESTAMP_DIFF, &v.to_be_bytes());
    }

    /// Sets wnd_size.
    pub fn set_wnd_size(&mut self, v: u32) {
        self.put(field::WND_SIZE, &v.to_be_bytes());
    }

    /// Sets seq_nr.
    pub fn set_seq_nr(&mut self, v: u16) {
        self.put(field::SEQ_NR, &v.to_be_bytes());
    }

    /// Sets ack_nr.
    pub fn set_ack_nr(&mut self, v: u16) {
        self.put(field::ACK_NR, &v.to_be_bytes());
    }
}

/// A selective ACK bitmask (BEP 29): bit `i` (LSB first within each byte) says packet
/// `ack_nr + 2 + i` was received.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SelectiveAck {
    len: u8,
    bits: [u8; MAX_SACK_LEN],
}

impl fmt::Debug for SelectiveAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectiveAck")
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl SelectiveAck {
    /// An empty mask of `len` bytes (4 to 32, a multiple of 4).
    pub fn new(len: usize) -> Self {
        assert!(
            (4..=MAX_SACK_LEN).contains(&len) && len % 4 == 0,
            "sack len {len}"
        );
        SelectiveAck {
            len: len as u8,
            bits: [0; MAX_SACK_LEN],
        }
    }

    /// From the bytes of the extension body; `None` unless the length is a positive multiple
    /// of 4. Bits past [`MAX_SACK_LEN`] bytes are dropped.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() % 4 != 0 {
            return None;
        }
        let kept = &bytes[..bytes.len().min(MAX_SACK_LEN)];
        let mut sack = SelectiveAck::new(kept.len());
        sack.bits[..kept.len()].copy_from_slice(kept);
        Some(sack)
    }

    /// The mask bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bits[..usize::from(self.len)]
    }

    /// How many packets the mask covers.
    pub fn capacity(&self) -> usize {
        usize::from(self.len) * 8
    }

    /// Marks packet `ack_nr + 2 + i`.
    pub fn set(&mut self, i: usize) {
        if i < self.capacity() {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }

    /// Whether packet `ack_nr + 2 + i` is marked.
    pub fn get(&self, i: usize) -> bool {
        i < self.capacity() && self.bits[i / 8] & (1 << (i % 8)) != 0
    }
}

/// A parsed uTP packet header with the extensions we understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Packet type.
    pub packet_type: PacketType,
    /// connection_id.
    pub connection_id: u16,
    /// timestamp_microseconds.
    pub timestamp: u32,
    /// timestamp_difference_microseconds.
    pub timestamp_difference: u32,
    /// wnd_size.
    pub wnd_size: u32,
    /// seq_nr.
    pub seq_nr: u16,
    /// ack_nr.
    pub ack_nr: u16,
    /// The selective ACK extension, if present.
    pub selective_ack: Option<SelectiveAck>,
}

impl Repr {
    /// Parses a checked packet: the header, and the selective ACK if the chain holds one
    /// (the first one wins; unknown extensions are skipped).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, WireError> {
        packet.check_len()?;
        let mut selective_ack = None;
        packet.walk_extensions(|kind, body| {
            if kind == EXT_SELECTIVE_ACK && selective_ack.is_none() {
                selective_ack =
                    Some(SelectiveAck::from_bytes(body).ok_or(WireError::BadSelectiveAck)?);
            }
            Ok(())
        })?;
        Ok(Repr {
            packet_type: packet.packet_type(),
            connection_id: packet.connection_id(),
            timestamp: packet.timestamp(),
            timestamp_difference: packet.timestamp_difference(),
            wnd_size: packet.wnd_size(),
            seq_nr: packet.seq_nr(),
            ack_nr: packet.ack_nr(),
            selective_ack,
        })
    }

    /// Header plus extensions, without payload.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.selective_ack.map_or(0, |s| 2 + s.bytes().len())
    }

    /// Writes header and extensions into `packet`, whose buffer must hold
    /// [`buffer_len`](Self::buffer_len) bytes; the payload goes after them.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        assert!(packet.buffer.as_ref().len() >= self.buffer_len());
        packet.set_type(self.packet_type);
        packet.set_connection_id(self.connection_id);
        packet.set_timestamp(self.timestamp);
        packet.set_timestamp_difference(self.timestamp_difference);
        packet.set_wnd_size(self.wnd_size);
        packet.set_seq_nr(self.seq_nr);
        packet.set_ack_nr(self.ack_nr);
        match &self.selective_ack {
            None => packet.set_first_extension(0),
            Some(sack) => {
                packet.set_first_extension(EXT_SELECTIVE_ACK);
                let bytes = sack.bytes();
                let buf = packet.buffer.as_mut();
                buf[HEADER_LEN] = 0;
                buf[HEADER_LEN + 1] = bytes.len() as u8;
                buf[HEADER_LEN + 2..HEADER_LEN + 2 + bytes.len()].copy_from_slice(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ST_DATA packet written out by hand from BEP 29's header diagram: type 0, version 1,
    /// no extension, connection_id 0x1234, timestamp 0x01020304, difference 0x0a0b0c0d,
    /// wnd_size 0x00100000, seq_nr 0xfffe, ack_nr 0x0001, payload "hi".
    const DATA: [u8; 22] = [
        0x01, 0x00, 0x12, 0x34, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x10, 0x00,
        0x00, 0xff, 0xfe, 0x00, 0x01, b'h', b'i',
    ];

    /// A ST_STATE with a 4-byte selective ACK acking ack_nr+2 and ack_nr+4 (bits 0 and 2) and
    /// ack_nr+2+8 (byte 1, bit 0).
    const STATE_SACK: [u8; 26] = [
        0x21, 0x01, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x04,
        0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x04, 0x05, 0x01, 0x00, 0x00,
    ];

    #[test]
    fn data_header_fields() {
        let p = Packet::new_checked(&DATA[..]).unwrap();
        assert_eq!(p.packet_type(), PacketType::Data);
        assert_eq!(p.version(), 1);
        assert_eq!(p.connection_id(), 0x1234);
        assert_eq!(p.timestamp(), 0x0102_0304);
        assert_eq!(p.timestamp_difference(), 0x0a0b_0c0d);
        assert_eq!(p.wnd_size(), 0x0010_0000);
        assert_eq!(p.seq_nr(), 0xfffe);
        assert_eq!(p.ack_nr(), 1);
        assert_eq!(p.payload(), b"hi");
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(repr.selective_ack, None);
        let mut out = vec![0u8; repr.buffer_len() + 2];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        out[20..].copy_from_slice(b"hi");
        assert_eq!(out, DATA);
    }

    #[test]
    fn state_with_selective_ack() {
        let p = Packet::new_checked(&STATE_SACK[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(repr.packet_type, PacketType::State);
        assert_eq!(repr.connection_id, 0xbeef);
        assert_eq!(repr.seq_nr, 5);
        assert_eq!(repr.ack_nr, 3);
        let sack = repr.selective_ack.unwrap();
        assert_eq!(sack.bytes(), &[0x05, 0x01, 0, 0]);
        let marked: Vec<usize> = (0..32).filter(|&i| sack.get(i)).collect();
        assert_eq!(marked, vec![0, 2, 8]);
        assert!(p.payload().is_empty());
        let mut built = SelectiveAck::new(4);
        for i in [0, 2, 8] {
            built.set(i);
        }
        let mut out = vec![0u8; repr.buffer_len()];
        Repr {
            selective_ack: Some(built),
            ..repr
        }
        .emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, STATE_SACK);
    }

    #[test]
    fn unknown_extensions_are_skipped() {
        // ext 2 (extension bits, 8 bytes) then ext 1 (sack, 4 bytes), then payload "x".
        let mut bytes = DATA[..20].to_vec();
        bytes[1] = 2;
        bytes.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 4, 1, 0, 0, 0]);
        bytes.push(b'x');
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.payload(), b"x");
        let repr = Repr::parse(&p).unwrap();
        assert!(repr.selective_ack.unwrap().get(0));
    }

    #[test]
    fn hostile_bytes_are_errors() {
        assert_eq!(
            Packet::new_checked(&DATA[..19]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = DATA;
        bad[0] = 0x02;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadVersion
        );
        bad[0] = 0x51;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadType
        );
        // An extension whose length runs past the end.
        let mut ext = DATA[..20].to_vec();
        ext[1] = 1;
        ext.extend_from_slice(&[0, 200, 1, 2]);
        assert_eq!(
            Packet::new_checked(&ext[..]).unwrap_err(),
            WireError::BadExtension
        );
        // A chain that claims another extension after the last byte.
        let mut chain = DATA[..20].to_vec();
        chain[1] = 7;
        chain.extend_from_slice(&[9, 0]);
        assert_eq!(
            Packet::new_checked(&chain[..]).unwrap_err(),
            WireError::BadExtension
        );
        // A sack of 3 bytes.
        let mut sack = DATA[..20].to_vec();
        sack[1] = 1;
        sack.extend_from_slice(&[0, 3, 1, 2, 3]);
        let p = Packet::new_checked(&sack[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap_err(), WireError::BadSelectiveAck);
    }

    #[test]
    fn long_sack_is_truncated_not_rejected() {
        let mut bytes = DATA[..20].to_vec();
        bytes[1] = 1;
        bytes.push(0);
        bytes.push(40);
        bytes.extend_from_slice(&[0xff; 40]);
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.selective_ack.unwrap().bytes().len(), MAX_SACK_LEN);
    }
}
