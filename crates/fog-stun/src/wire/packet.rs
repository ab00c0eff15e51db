//! A zero-copy view of a STUN datagram: the header fields and the attribute TLVs
//! (RFC 5389 §6 and §15).
//!
//! [`Packet::new_checked`] validates everything the accessors rely on, so that after it succeeds
//! no accessor can panic, whatever the bytes.

use super::{Class, Cookie, DecodeError, HEADER_LEN, MAGIC_COOKIE, Method, TransactionId};

/// Byte ranges of the header and of an attribute header (RFC 5389 §6, §15).
mod field {
    use std::ops::Range;

    pub(super) const TYPE: Range<usize> = 0..2;
    pub(super) const LENGTH: Range<usize> = 2..4;
    pub(super) const COOKIE: Range<usize> = 4..8;
    pub(super) const TRANSACTION_ID: Range<usize> = 8..20;

    pub(super) const ATTR_TYPE: Range<usize> = 0..2;
    pub(super) const ATTR_LENGTH: Range<usize> = 2..4;
    pub(super) const ATTR_HEADER_LEN: usize = 4;
}

/// A read-only view of a STUN message in a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// One attribute as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type (RFC 5389 §15: below 0x8000 is comprehension-required).
    pub kind: u16,
    /// Offset of the attribute's type field from the start of the message.
    pub offset: usize,
    /// The value, without the padding to a multiple of 4 (RFC 5389 §15).
    pub value: &'a [u8],
}

impl RawAttribute<'_> {
    /// Whether an agent that does not understand this attribute must reject the message
    /// (RFC 5389 §15: types 0x0000–0x7FFF).
    pub fn is_comprehension_required(&self) -> bool {
        self.kind < 0x8000
    }

    /// Bytes the attribute occupies: header, value and padding.
    pub fn wire_len(&self) -> usize {
        field::ATTR_HEADER_LEN + padded(self.value.len())
    }
}

/// A big-endian u16 from a 2-byte slice (callers pass a `field` range).
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The value length rounded up to the 4-byte boundary attributes are aligned on (RFC 5389 §15).
pub(crate) const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it. Accessors may panic on a buffer that would not pass
    /// [`check_len`](Self::check_len).
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks what the accessors rely on: a 20-byte header whose two top bits are zero, a
    /// length that is a multiple of 4 and covers exactly the rest of the datagram (RFC 5389 §6),
    /// and attributes that each fit inside it (§15).
    ///
    /// The magic cookie is not checked: a message without it is an RFC 3489 message
    /// ([`Cookie::Classic`]).
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::TooShort);
        }
        if bytes[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let length = usize::from(be16(&bytes[field::LENGTH]));
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(DecodeError::BadLength);
        }
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            let header_end = offset + field::ATTR_HEADER_LEN;
            let Some(header) = bytes.get(offset..header_end) else {
                return Err(DecodeError::TruncatedAttribute);
            };
            let value_len = usize::from(be16(&header[field::ATTR_LENGTH]));
            let end = header_end + padded(value_len);
            if end > bytes.len() {
                return Err(DecodeError::TruncatedAttribute);
            }
            offset = end;
        }
        Ok(())
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, range: std::ops::Range<usize>) -> u16 {
        be16(&self.buffer.as_ref()[range])
    }

    /// The 14-bit message type (RFC 5389 §6, Figure 3).
    pub fn message_type(&self) -> u16 {
        self.u16_at(field::TYPE)
    }

    /// The class bits C1 C0 of the message type (RFC 5389 §6).
    pub fn class(&self) -> Class {
        let t = self.message_type();
        match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }

    /// The method bits M11–M0 of the message type (RFC 5389 §6).
    pub fn method(&self) -> Method {
        let t = self.message_type();
        Method((t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80))
    }

    /// The message length: bytes after the header (RFC 5389 §6).
    pub fn length(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// The magic cookie, or the first four bytes of an RFC 3489 transaction ID.
    pub fn cookie(&self) -> Cookie {
        let b = &self.buffer.as_ref()[field::COOKIE];
        let word = [b[0], b[1], b[2], b[3]];
        if u32::from_be_bytes(word) == MAGIC_COOKIE {
            Cookie::Magic
        } else {
            Cookie::Classic(word)
        }
    }

    /// The 96-bit transaction ID (RFC 5389 §6).
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buffer.as_ref()[field::TRANSACTION_ID]);
        TransactionId::new(id)
    }

    /// The attributes in wire order.
    pub fn attributes(&self) -> RawAttributes<'_> {
        RawAttributes {
            bytes: self.buffer.as_ref(),
            offset: HEADER_LEN,
        }
    }
}

/// Iterator over a checked packet's attributes, see [`Packet::attributes`].
#[derive(Debug, Clone)]
pub struct RawAttributes<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // `get` rather than indexing: on an unchecked packet the iterator stops instead of
        // panicking.
        let offset = self.offset;
        let header = self
            .bytes
            .get(offset..offset.checked_add(field::ATTR_HEADER_LEN)?)?;
        let kind = be16(&header[field::ATTR_TYPE]);
        let value_len = usize::from(be16(&header[field::ATTR_LENGTH]));
        let value_start = offset + field::ATTR_HEADER_LEN;
        let value = self.bytes.get(value_start..value_start + value_len)?;
        self.offset = value_start + padded(value_len);
        Some(RawAttribute {
            kind,
            offset,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        // A Binding success response (0x0101) with one 4-byte attribute.
        let mut bytes = vec![0x01, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        bytes.extend_from_slice(&[7; 12]);
        bytes.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.class(), Class::SuccessResponse);
        assert_eq!(packet.method(), Method::BINDING);
        assert_eq!(packet.length(), 8);
        assert_eq!(packet.cookie(), Cookie::Magic);
        assert_eq!(packet.transaction_id(), TransactionId::new([7; 12]));
        let attrs: Vec<_> = packet.attributes().collect();
        assert_eq!(
            attrs,
            [RawAttribute {
                kind: 0x8028,
                offset: 20,
                value: &[1, 2, 3, 4]
            }]
        );
        assert!(!attrs[0].is_comprehension_required());
        assert_eq!(attrs[0].wire_len(), 8);
    }

    #[test]
    fn every_class_and_a_high_method() {
        // Allocate (0x003) error response is 0x0113 (RFC 5766 §13, RFC 5389 §6).
        let mut bytes = vec![0x01, 0x13, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        bytes.extend_from_slice(&[0; 12]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.class(), Class::ErrorResponse);
        assert_eq!(packet.method(), Method(3));
        // Method 0xFFF, indication: every method bit set, C0 set.
        bytes[0] = 0x3E;
        bytes[1] = 0xFF;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.class(), Class::Indication);
        assert_eq!(packet.method(), Method(0xFFF));
    }

    #[test]
    fn checks_refuse_what_accessors_cannot_read() {
        let header = |len: u16| {
            let mut b = vec![0x00, 0x01];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            b.extend_from_slice(&[0; 12]);
            b
        };
        assert_eq!(
            Packet::new_checked(&[0u8; 19][..]).unwrap_err(),
            DecodeError::TooShort
        );
        let mut not_stun = header(0);
        not_stun[0] = 0x40;
        assert_eq!(
            Packet::new_checked(&not_stun[..]).unwrap_err(),
            DecodeError::NotStun
        );
        let mut unaligned = header(2);
        unaligned.extend_from_slice(&[0, 0]);
        assert_eq!(
            Packet::new_checked(&unaligned[..]).unwrap_err(),
            DecodeError::BadLength
        );
        let mut short = header(8);
        short.extend_from_slice(&[0; 4]);
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            DecodeError::BadLength
        );
        // An attribute claiming 5 value bytes needs 8 with padding; only 4 are there.
        let mut overrun = header(8);
        overrun.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, 1, 2, 3, 4]);
        assert_eq!(
            Packet::new_checked(&overrun[..]).unwrap_err(),
            DecodeError::TruncatedAttribute
        );
        // A zero-length attribute is fine; a lone half header is not.
        let mut empty_value = header(4);
        empty_value.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        assert!(Packet::new_checked(&empty_value[..]).is_ok());
    }

    #[test]
    fn classic_cookie_is_kept() {
        let mut bytes = vec![0x00, 0x01, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef];
        bytes.extend_from_slice(&[1; 12]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.cookie(), Cookie::Classic([0xde, 0xad, 0xbe, 0xef]));
    }
}
