//! The KCP segment as the reference C `ikcp.c` puts it on the wire (`ikcp_encode_seg`): a
//! 24-byte little-endian header followed by `len` bytes of data, several segments back to back in
//! one datagram.
//!
//! ```text
//!  0               4       5       6               8
//! +---------------+-------+-------+---------------+
//! |     conv      |  cmd  |  frg  |      wnd      |
//! +---------------+-------+-------+---------------+
//! |      ts       |      sn       |      una      |   (each 4 bytes)
//! +---------------+---------------+---------------+
//! |      len      |  data (len bytes) ...
//! +---------------+
//! ```
//!
//! [`Segment`] is a zero-copy view checked once by [`Segment::new_checked`]; [`SegmentRepr`] is its
//! parsed form ([`SegmentRepr::parse`], [`SegmentRepr::emit`]); [`Segments`] walks a datagram.

use core::fmt;

/// Bytes of the segment header (`IKCP_OVERHEAD` in ikcp.c).
pub const HEADER_LEN: usize = 24;

mod field {
    use core::ops::Range;

    pub(super) const CONV: Range<usize> = 0..4;
    pub(super) const CMD: usize = 4;
    pub(super) const FRG: usize = 5;
    pub(super) const WND: Range<usize> = 6..8;
    pub(super) const TS: Range<usize> = 8..12;
    pub(super) const SN: Range<usize> = 12..16;
    pub(super) const UNA: Range<usize> = 16..20;
    pub(super) const LEN: Range<usize> = 20..24;
    pub(super) const DATA: usize = 24;
}

/// The segment commands of ikcp.c (`IKCP_CMD_*`), and the two FogConnect uses behind its framing
/// byte (never sent on a plain KCP socket; see the crate docs, "FogConnect connections").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// 81: data (`IKCP_CMD_PUSH`).
    Push,
    /// 82: acknowledges one `sn` and echoes its `ts` (`IKCP_CMD_ACK`).
    Ack,
    /// 83: asks the peer for its window (`IKCP_CMD_WASK`).
    WindowAsk,
    /// 84: tells the peer our window (`IKCP_CMD_WINS`).
    WindowTell,
    /// 88: FogConnect's hello (and its answer, told apart by `sn`).
    FogHello,
    /// 89: FogConnect's close (and its answer, told apart by `sn`).
    FogClose,
}

impl Command {
    /// The command byte.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Push => 81,
            Self::Ack => 82,
            Self::WindowAsk => 83,
            Self::WindowTell => 84,
            Self::FogHello => 88,
            Self::FogClose => 89,
        }
    }

    /// The command a byte names, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            81 => Some(Self::Push),
            82 => Some(Self::Ack),
            83 => Some(Self::WindowAsk),
            84 => Some(Self::WindowTell),
            88 => Some(Self::FogHello),
            89 => Some(Self::FogClose),
            _ => None,
        }
    }

    /// Whether ikcp.c itself knows this command (FogConnect's two are ours only).
    pub const fn is_ikcp(self) -> bool {
        matches!(
            self,
            Self::Push | Self::Ack | Self::WindowAsk | Self::WindowTell
        )
    }
}

/// Why bytes are not a segment. Small on purpose: the peer's bytes are only ever dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`] bytes.
    TooShort,
    /// The header's `len` runs past the end of the datagram.
    Truncated,
    /// A command byte ikcp.c does not know (nor FogConnect).
    UnknownCommand(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(f, "shorter than a KCP header"),
            Self::Truncated => write!(f, "segment data runs past the datagram"),
            Self::UnknownCommand(b) => write!(f, "unknown KCP command {b}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A zero-copy view of one segment at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Segment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// A view without checks; accessors may panic until [`check_len`](Self::check_len) passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view whose header and data (as `len` says) are inside `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let segment = Self::new_unchecked(buffer);
        segment.check_len()?;
        Ok(segment)
    }

    /// Checks that the header fits and the data `len` announces is present.
    pub fn check_len(&self) -> Result<(), WireError> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::TooShort);
        }
        let available = bytes.len() - HEADER_LEN;
        if usize::try_from(self.len()).map_or(true, |len| len > available) {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn u32_at(&self, range: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[range];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The conversation number both ends agreed on.
    pub fn conv(&self) -> u32 {
        self.u32_at(field::CONV)
    }

    /// The raw command byte.
    pub fn cmd(&self) -> u8 {
        self.buffer.as_ref()[field::CMD]
    }

    /// Fragments still to come after this one in the same message (0: the last or only one).
    pub fn frg(&self) -> u8 {
        self.buffer.as_ref()[field::FRG]
    }

    /// The sender's free receive window, in segments.
    pub fn wnd(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::WND];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The sender's millisecond clock (PUSH), or the echoed one (ACK).
    pub fn ts(&self) -> u32 {
        self.u32_at(field::TS)
    }

    /// The sequence number.
    pub fn sn(&self) -> u32 {
        self.u32_at(field::SN)
    }

    /// The first sequence number the sender has not received yet.
    pub fn una(&self) -> u32 {
        self.u32_at(field::UNA)
    }

    /// Bytes of data after the header.
    pub fn len(&self) -> u32 {
        self.u32_at(field::LEN)
    }

    /// Whether the segment carries no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Header plus data: where the next segment of the datagram starts.
    pub fn total_len(&self) -> usize {
        // check_len showed len fits in the buffer, hence in usize.
        HEADER_LEN + self.len() as usize
    }

    /// The segment's data.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    fn set_u32(&mut self, range: core::ops::Range<usize>, value: u32) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_le_bytes());
    }

    /// Writes the header fields (not the data).
    fn set_header(&mut self, repr: &SegmentRepr) {
        self.set_u32(field::CONV, repr.conv);
        let b = self.buffer.as_mut();
        b[field::CMD] = repr.cmd.byte();
        b[field::FRG] = repr.frg;
        b[field::WND].copy_from_slice(&repr.wnd.to_le_bytes());
        self.set_u32(field::TS, repr.ts);
        self.set_u32(field::SN, repr.sn);
        self.set_u32(field::UNA, repr.una);
        self.set_u32(field::LEN, repr.len);
    }
}

/// A segment header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentRepr {
    /// Conversation number.
    pub conv: u32,
    /// Command.
    pub cmd: Command,
    /// Fragments still to come in this message.
    pub frg: u8,
    /// Free receive window of the sender, in segments.
    pub wnd: u16,
    /// Timestamp in milliseconds.
    pub ts: u32,
    /// Sequence number.
    pub sn: u32,
    /// First unacknowledged sequence number of the sender's receive side.
    pub una: u32,
    /// Data bytes that follow the header.
    pub len: u32,
}

impl SegmentRepr {
    /// Parses a checked view's header.
    pub fn parse<T: AsRef<[u8]>>(segment: &Segment<T>) -> Result<Self, WireError> {
        segment.check_len()?;
        let cmd =
            Command::from_byte(segment.cmd()).ok_or(WireError::UnknownCommand(segment.cmd()))?;
        Ok(Self {
            conv: segment.conv(),
            cmd,
            frg: segment.frg(),
            wnd: segment.wnd(),
            ts: segment.ts(),
            sn: segment.sn(),
            una: segment.una(),
            len: segment.len(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes with `payload`: header plus data.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    /// Writes the header and `payload` (whose length must be `self.len`) to the start of `buf`,
    /// returning the bytes written.
    ///
    /// # Panics
    /// When `payload.len() != self.len` or `buf` is shorter than [`buffer_len`](Self::buffer_len):
    /// both are the caller's mistakes.
    pub fn emit(&self, payload: &[u8], buf: &mut [u8]) -> usize {
        assert_eq!(
            payload.len(),
            self.len as usize,
            "payload length is not repr.len"
        );
        let total = self.buffer_len();
        assert!(buf.len() >= total, "buffer too short for the segment");
        Segment::new_unchecked(&mut buf[..total]).set_header(self);
        buf[HEADER_LEN..total].copy_from_slice(payload);
        total
    }
}

/// The segments of one datagram, in order; stops at the first malformed one (after yielding its
/// error).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Segments<'a> {
    /// Walks `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Self {
            rest: datagram,
            failed: false,
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<(SegmentRepr, &'a [u8]), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let parsed = Segment::new_checked(self.rest).and_then(|seg| {
            let repr = SegmentRepr::parse(&seg)?;
            Ok((repr, seg.total_len()))
        });
        match parsed {
            Ok((repr, total)) => {
                let (this, rest) = self.rest.split_at(total);
                self.rest = rest;
                Some(Ok((repr, &this[HEADER_LEN..])))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PUSH of "hi" on conv 0x11223344: frg 1, wnd 128, ts 1000, sn 7, una 3, len 2, as
    /// ikcp_encode_seg lays it out (little-endian throughout).
    const PUSH: [u8; 26] = [
        0x44, 0x33, 0x22, 0x11, // conv
        81,   // cmd PUSH
        1,    // frg
        0x80, 0x00, // wnd 128
        0xe8, 0x03, 0x00, 0x00, // ts 1000
        0x07, 0x00, 0x00, 0x00, // sn 7
        0x03, 0x00, 0x00, 0x00, // una 3
        0x02, 0x00, 0x00, 0x00, // len 2
        b'h', b'i',
    ];

    fn push_repr() -> SegmentRepr {
        SegmentRepr {
            conv: 0x1122_3344,
            cmd: Command::Push,
            frg: 1,
            wnd: 128,
            ts: 1000,
            sn: 7,
            una: 3,
            len: 2,
        }
    }

    #[test]
    fn parses_literal_push() {
        let seg = Segment::new_checked(&PUSH[..]).unwrap();
        assert_eq!(SegmentRepr::parse(&seg).unwrap(), push_repr());
        assert_eq!(seg.payload(), b"hi");
        assert_eq!(seg.total_len(), 26);
    }

    #[test]
    fn emits_literal_push() {
        let mut buf = [0xaa; 40];
        let n = push_repr().emit(b"hi", &mut buf);
        assert_eq!(&buf[..n], &PUSH[..]);
        assert_eq!(buf[n], 0xaa, "nothing written past the segment");
    }

    #[test]
    fn literal_ack_header() {
        // ACK of sn 0x01020304 echoing ts 0xfffffffe on conv 1, wnd 0xffff, una 9.
        let repr = SegmentRepr {
            conv: 1,
            cmd: Command::Ack,
            frg: 0,
            wnd: 0xffff,
            ts: 0xffff_fffe,
            sn: 0x0102_0304,
            una: 9,
            len: 0,
        };
        let mut buf = [0; HEADER_LEN];
        repr.emit(&[], &mut buf);
        assert_eq!(
            buf,
            [
                1, 0, 0, 0, 82, 0, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 4, 3, 2, 1, 9, 0, 0, 0, 0,
                0, 0, 0
            ]
        );
    }

    #[test]
    fn repr_round_trips_every_command() {
        for cmd in [
            Command::Push,
            Command::Ack,
            Command::WindowAsk,
            Command::WindowTell,
            Command::FogHello,
            Command::FogClose,
        ] {
            assert_eq!(Command::from_byte(cmd.byte()), Some(cmd));
            let repr = SegmentRepr {
                cmd,
                len: 3,
                ..push_repr()
            };
            let mut buf = vec![0; repr.buffer_len()];
            repr.emit(b"abc", &mut buf);
            let seg = Segment::new_checked(&buf[..]).unwrap();
            assert_eq!(SegmentRepr::parse(&seg).unwrap(), repr);
            assert_eq!(seg.payload(), b"abc");
        }
    }

    #[test]
    fn refuses_short_truncated_and_unknown() {
        assert_eq!(
            Segment::new_checked(&PUSH[..23]).unwrap_err(),
            WireError::TooShort
        );
        assert_eq!(
            Segment::new_checked(&PUSH[..25]).unwrap_err(),
            WireError::Truncated
        );
        let mut huge = PUSH;
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Segment::new_checked(&huge[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut unknown = PUSH;
        unknown[4] = 80;
        let seg = Segment::new_checked(&unknown[..]).unwrap();
        assert_eq!(
            SegmentRepr::parse(&seg).unwrap_err(),
            WireError::UnknownCommand(80)
        );
    }

    #[test]
    fn walks_several_segments_then_stops_at_garbage() {
        let mut datagram = PUSH.to_vec();
        datagram.extend_from_slice(&PUSH);
        datagram.extend_from_slice(&[1, 2, 3]);
        let items: Vec<_> = Segments::new(&datagram).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], Ok((push_repr(), &b"hi"[..])));
        assert_eq!(items[1], Ok((push_repr(), &b"hi"[..])));
        assert_eq!(items[2], Err(WireError::TooShort));
    }
}
