//! TURN over a byte stream (TCP or TLS, RFC 8656 §3.1): cutting the stream into STUN messages and
//! ChannelData messages.
//!
//! On a stream nothing marks where a message ends, so each one's length comes from its own
//! header: a STUN message is its 20-byte header plus the header's length field (RFC 8489 §5,
//! always a multiple of 4), a ChannelData message its 4-byte header plus the length field, padded
//! to a multiple of 4 — padding that is optional over UDP is required over TCP (RFC 8656 §12.5).
//! The first two bits tell them apart (00 STUN, 01 ChannelData, §12.4 and RFC 9443); anything
//! else cannot be resynchronised, so it ends the connection.
//!
//! [`Framer`] is sans-IO: the driver pushes what it read, then takes messages until there are no
//! complete ones left. It holds at most one incomplete message (never longer than its limit) plus
//! the last chunk pushed.

use std::fmt;

use fog_stun::wire::{HEADER_LEN, MAGIC_COOKIE};

use super::CHANNEL_DATA_HEADER_LEN;

/// The longest message a stream can carry: a ChannelData message of 65,535 bytes of data, its
/// header and 1 byte of padding (a STUN message is at most 20 + 65,532 bytes).
pub const MAX_STREAM_MESSAGE: usize = CHANNEL_DATA_HEADER_LEN + 65_536;

/// One message cut from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole STUN message, header included.
    Stun(&'a [u8]),
    /// A whole ChannelData message, header included, padding left out (so that
    /// [`ChannelData::decode`](super::ChannelData::decode) reads it as it would a datagram).
    ChannelData(&'a [u8]),
}

/// Why a stream cannot be read on: the peer's fault, and the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameError {
    /// The first byte of a message is neither STUN's (0–3) nor ChannelData's (0x40–0x7F).
    BadFirstByte(u8),
    /// A STUN header whose length field is not a multiple of 4 (RFC 8489 §5).
    BadStunLength(u16),
    /// A STUN header without the magic cookie (RFC 8489 §5).
    BadCookie,
    /// A message longer than the framer's limit.
    TooLong(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFirstByte(b) => {
                write!(f, "first byte 0x{b:02x} is neither STUN nor ChannelData")
            }
            Self::BadStunLength(l) => write!(f, "STUN length {l} is not a multiple of 4"),
            Self::BadCookie => write!(f, "STUN header without the magic cookie"),
            Self::TooLong(n) => write!(f, "a {n}-byte message is over the limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Cuts a byte stream into [`Frame`]s; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` before this were handed out already.
    start: usize,
    max_message: usize,
    /// Set once the stream has failed; every later call returns it again.
    failed: Option<FrameError>,
}

/// Past this capacity an emptied buffer gives its memory back, so that one large message does
/// not pin 64 KiB to an idle connection.
const KEEP_CAPACITY: usize = 4096;

impl Framer {
    /// A framer refusing messages longer than `max_message` bytes (padding included), at most
    /// [`MAX_STREAM_MESSAGE`].
    ///
    /// # Panics
    ///
    /// If `max_message` is under 20 (a STUN header) or over [`MAX_STREAM_MESSAGE`].
    pub fn new(max_message: usize) -> Self {
        assert!(
            (HEADER_LEN..=MAX_STREAM_MESSAGE).contains(&max_message),
            "max_message must be {HEADER_LEN}..={MAX_STREAM_MESSAGE}"
        );
        Self {
            buf: Vec::new(),
            start: 0,
            max_message,
            failed: None,
        }
    }

    /// Appends bytes read from the stream. Take every complete message with
    /// [`next_frame`](Self::next_frame) before pushing more: that is what bounds the buffer.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a message handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `None` until more bytes come, or the error that ends the
    /// stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let rest = &self.buf[self.start..];
        let (len, padded, stun) = match message_len(rest, self.max_message) {
            Ok(Some(lengths)) => lengths,
            Ok(None) => {
                if rest.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                    self.buf = Vec::new();
                    self.start = 0;
                }
                return Ok(None);
            }
            Err(e) => {
                self.failed = Some(e);
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        if rest.len() < padded {
            return Ok(None);
        }
        let at = self.start;
        self.start += padded;
        let message = &self.buf[at..at + len];
        Ok(Some(if stun {
            Frame::Stun(message)
        } else {
            Frame::ChannelData(message)
        }))
    }
}

/// The message at the start of `rest`: its length without and with padding, and whether it is
/// STUN; `None` while the header is incomplete.
fn message_len(rest: &[u8], max: usize) -> Result<Option<(usize, usize, bool)>, FrameError> {
    let Some(&first) = rest.first() else {
        return Ok(None);
    };
    let stun = match first {
        0..=3 => true,
        0x40..=0x7F => false,
        b => return Err(FrameError::BadFirstByte(b)),
    };
    let Some(&[_, _, l0, l1]) = rest.get(..4) else {
        return Ok(None);
    };
    let field = u16::from_be_bytes([l0, l1]);
    let (len, padded) = if stun {
        // RFC 8489 §5: the length excludes the header and is a multiple of 4.
        if field % 4 != 0 {
            return Err(FrameError::BadStunLength(field));
        }
        let len = HEADER_LEN + usize::from(field);
        (len, len)
    } else {
        // RFC 8656 §12.5: over TCP the message is padded to a multiple of 4.
        let len = CHANNEL_DATA_HEADER_LEN + usize::from(field);
        (len, (len + 3) & !3)
    };
    if padded > max {
        return Err(FrameError::TooLong(padded));
    }
    if stun {
        if let Some(cookie) = rest.get(4..8) {
            if cookie != MAGIC_COOKIE.to_be_bytes() {
                return Err(FrameError::BadCookie);
            }
        }
    }
    Ok(Some((len, padded, stun)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request with no attributes (RFC 8489 §5 header, transaction ID 1..=12).
    fn binding() -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        m.extend(1..=12u8);
        m
    }

    fn frames(framer: &mut Framer) -> Vec<Frame<'static>> {
        let mut out = Vec::new();
        while let Some(f) = framer.next_frame().expect("well-formed") {
            out.push(match f {
                Frame::Stun(b) => Frame::Stun(b.to_vec().leak()),
                Frame::ChannelData(b) => Frame::ChannelData(b.to_vec().leak()),
            });
        }
        out
    }

    #[test]
    fn messages_split_at_every_byte_come_out_whole() {
        // A STUN message, a ChannelData of 5 bytes padded with 3, then one of 4 bytes unpadded.
        let mut stream = binding();
        let cd5 = [0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
        stream.extend_from_slice(&cd5);
        stream.extend_from_slice(&[0, 0, 0]);
        let cd4 = [0x7F, 0xFF, 0x00, 0x04, 1, 2, 3, 4];
        stream.extend_from_slice(&cd4);
        for split in 0..=stream.len() {
            for step in [1, 3, 7, stream.len().max(1)] {
                let mut f = Framer::new(MAX_STREAM_MESSAGE);
                let mut got = Vec::new();
                let (a, b) = stream.split_at(split);
                for chunk in a.chunks(step).chain(b.chunks(step)) {
                    f.push(chunk);
                    got.extend(frames(&mut f));
                }
                assert_eq!(
                    got,
                    [
                        Frame::Stun(&binding()[..]),
                        Frame::ChannelData(&cd5[..]),
                        Frame::ChannelData(&cd4[..]),
                    ],
                    "split {split} step {step}"
                );
                assert_eq!(f.buffered(), 0);
            }
        }
    }

    #[test]
    fn an_incomplete_message_waits() {
        let mut f = Framer::new(MAX_STREAM_MESSAGE);
        // ChannelData of 1 byte: the message is 5 bytes but takes 8 on the stream.
        f.push(&[0x40, 0x01, 0x00, 0x01, 0xAA, 0, 0]);
        assert_eq!(f.next_frame(), Ok(None));
        f.push(&[0]);
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::ChannelData(&[0x40, 0x01, 0x00, 0x01, 0xAA])))
        );
        assert_eq!(f.next_frame(), Ok(None));
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut f = Framer::new(100);
        // 20 + 84 = 104 bytes announced: refused before any body arrives.
        f.push(&[0x00, 0x01, 0x00, 84]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLong(104)));
        // The error sticks, and the framer holds nothing more.
        f.push(&binding());
        assert_eq!(f.next_frame(), Err(FrameError::TooLong(104)));
        assert_eq!(f.buffered(), 0);
        // ChannelData: 4 + 93 = 97, padded to 100, fits; 4 + 97 = 101 → 104 does not.
        let mut f = Framer::new(100);
        f.push(&[0x40, 0x00, 0x00, 93]);
        assert_eq!(f.next_frame(), Ok(None));
        let mut f = Framer::new(100);
        f.push(&[0x40, 0x00, 0x00, 97]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLong(104)));
        // The largest message of all fits the largest limit.
        let mut f = Framer::new(MAX_STREAM_MESSAGE);
        f.push(&[0x40, 0x00, 0xFF, 0xFF]);
        assert_eq!(f.next_frame(), Ok(None));
    }

    #[test]
    fn garbage_ends_the_stream() {
        let cases: [(&[u8], FrameError); 4] = [
            (&[0x16, 0x03, 0x01], FrameError::BadFirstByte(0x16)),
            (&[0x80], FrameError::BadFirstByte(0x80)),
            (&[0x00, 0x01, 0x00, 0x02], FrameError::BadStunLength(2)),
            (
                &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x43],
                FrameError::BadCookie,
            ),
        ];
        for (bytes, error) in cases {
            let mut f = Framer::new(MAX_STREAM_MESSAGE);
            f.push(bytes);
            assert_eq!(f.next_frame(), Err(error), "{bytes:02x?}");
        }
        // Garbage after a good message: the good one first, then the error.
        let mut f = Framer::new(MAX_STREAM_MESSAGE);
        let mut bytes = binding();
        bytes.push(0xFF);
        f.push(&bytes);
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Stun(_)))));
        assert_eq!(f.next_frame(), Err(FrameError::BadFirstByte(0xFF)));
    }

    #[test]
    fn the_buffer_holds_one_partial_message_plus_a_chunk() {
        let mut f = Framer::new(MAX_STREAM_MESSAGE);
        let mut one = vec![0x40, 0x00, 0x00, 0x04, 9, 9, 9, 9];
        one.extend_from_slice(&[0x40, 0x00, 0x00, 0x10]); // the start of a 20-byte one
        for _ in 0..1000 {
            f.push(&one[..8]);
            assert_eq!(frames(&mut f).len(), 1);
        }
        f.push(&one[8..]);
        assert_eq!(frames(&mut f).len(), 0);
        assert_eq!(f.buffered(), 4);
        assert!(f.buf.len() <= 12, "consumed bytes are dropped on push");
    }
}
