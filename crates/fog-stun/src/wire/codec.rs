//! The stun_codec attribute set, and the attributes written here because stun_codec 0.4 lacks
//! them or gets them wrong.
//!
//! Only [`super`] uses this module: everything above `wire` sees the typed
//! [`Attributes`](super::Attributes), never stun_codec.
//!
//! Written here:
//! - PADDING (RFC 5780 §7.6): stun_codec has none. The value is counted, never stored, so a
//!   64 KB padding costs no allocation; it is emitted as zeros.
//! - CHANGED-ADDRESS (RFC 3489 §11.2.3) and SOURCE-ADDRESS (RFC 3489 §11.2.5): removed from
//!   RFC 5389 (§18.2 reserves 0x0004 and 0x0005), but classic servers (stund) still send them.
//! - CHANGE-REQUEST (RFC 5780 §7.2): stun_codec 0.4 encodes the flags at the right bits
//!   (change IP = 0x4, change port = 0x2) but decodes them from 0x2 and 0x1, so it misreads
//!   every real client and its own output.
//! - RESPONSE-PORT (RFC 5780 §7.5): stun_codec 0.4's encoder always writes port 0.
//! - NOMINATION (draft-thatcher-ice-renomination-01 §4): not in any RFC.

use bytecodec::fixnum::{U32beDecoder, U32beEncoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, Result, SizedEncode, TryTaggedDecode};
use std::net::SocketAddr;
use stun_codec::net::{SocketAddrDecoder, SocketAddrEncoder};
use stun_codec::rfc5245::attributes::{IceControlled, IceControlling, Priority, UseCandidate};
use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, MappedAddress, Nonce, Realm, Software, UnknownAttributes, Username,
    XorMappedAddress, XorMappedAddress2,
};
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
use stun_codec::{Attribute, AttributeType};

// MESSAGE-INTEGRITY and FINGERPRINT are not members: they cover the bytes before them, so
// `wire` checks and writes them on the datagram itself (see `super::trailer`). stun_codec's own
// versions recompute them over a re-encoding of the decoded message, which differs from what was
// received whenever a sender used non-zero attribute padding or reserved bits, and compare the
// HMAC in variable time.
stun_codec::define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    [
        // RFC 5389 §15
        MappedAddress,
        XorMappedAddress,
        XorMappedAddress2,
        Username,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        Software,
        AlternateServer,
        // RFC 5780 §7 (the two stun_codec gets right)
        ResponseOrigin,
        OtherAddress,
        // RFC 8445 §16.1, ICE connectivity checks (stun_codec's `rfc5245` module)
        Priority,
        UseCandidate,
        IceControlled,
        IceControlling,
        // Written here
        ChangeRequest,
        ResponsePort,
        Padding,
        ChangedAddress,
        SourceAddress,
        Nomination
    ]
);

/// Forwards `Decode` to the inner decoder, mapping the finished item.
macro_rules! forward_decode {
    ($decoder:ident, $item:ident, $map:expr) => {
        impl Decode for $decoder {
            type Item = $item;

            fn decode(&mut self, buf: &[u8], eos: Eos) -> Result<usize> {
                self.0.decode(buf, eos)
            }

            fn finish_decoding(&mut self) -> Result<Self::Item> {
                self.0.finish_decoding().map($map)
            }

            fn requiring_bytes(&self) -> ByteCount {
                self.0.requiring_bytes()
            }

            fn is_idle(&self) -> bool {
                self.0.is_idle()
            }
        }

        impl TryTaggedDecode for $decoder {
            type Tag = AttributeType;

            fn try_start_decoding(&mut self, tag: Self::Tag) -> Result<bool> {
                Ok(tag.as_u16() == $item::CODEPOINT)
            }
        }
    };
}

/// Forwards `Encode` to the inner encoder, mapping the item first.
macro_rules! forward_encode {
    ($encoder:ident, $item:ident, $map:expr) => {
        impl Encode for $encoder {
            type Item = $item;

            fn encode(&mut self, buf: &mut [u8], eos: Eos) -> Result<usize> {
                self.0.encode(buf, eos)
            }

            fn start_encoding(&mut self, item: Self::Item) -> Result<()> {
                self.0.start_encoding($map(item))
            }

            fn requiring_bytes(&self) -> ByteCount {
                self.0.requiring_bytes()
            }

            fn is_idle(&self) -> bool {
                self.0.is_idle()
            }
        }

        impl SizedEncode for $encoder {
            fn exact_requiring_bytes(&self) -> u64 {
                self.0.exact_requiring_bytes()
            }
        }
    };
}

/// An attribute whose value is one transport address in MAPPED-ADDRESS form (RFC 5389 §15.1).
macro_rules! address_attribute {
    ($name:ident, $decoder:ident, $encoder:ident, $codepoint:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub(crate) struct $name(pub(crate) SocketAddr);

        impl $name {
            pub(crate) const CODEPOINT: u16 = $codepoint;
        }

        impl Attribute for $name {
            type Decoder = $decoder;
            type Encoder = $encoder;

            fn get_type(&self) -> AttributeType {
                AttributeType::new(Self::CODEPOINT)
            }
        }

        #[derive(Debug, Default)]
        pub(crate) struct $decoder(SocketAddrDecoder);
        forward_decode!($decoder, $name, $name);

        #[derive(Debug, Default)]
        pub(crate) struct $encoder(SocketAddrEncoder);
        forward_encode!($encoder, $name, |item: $name| item.0);
    };
}

// RFC 3489 §11.2.3: where responses come from when both change flags are set.
address_attribute!(
    ChangedAddress,
    ChangedAddressDecoder,
    ChangedAddressEncoder,
    0x0005
);
// RFC 3489 §11.2.5: where this response was sent from.
address_attribute!(
    SourceAddress,
    SourceAddressDecoder,
    SourceAddressEncoder,
    0x0004
);

/// NOMINATION (draft-thatcher-ice-renomination-01 §4): a 24-bit nomination count in the low
/// three bytes of a 32-bit value. The draft names no code point; 0xC001 is the one libwebrtc
/// uses, in the comprehension-optional range, so an agent that does not know it ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Nomination(pub(crate) u32);

impl Nomination {
    pub(crate) const CODEPOINT: u16 = 0xC001;
    /// The value's 24 bits.
    pub(crate) const MASK: u32 = 0x00ff_ffff;
}

impl Attribute for Nomination {
    type Decoder = NominationDecoder;
    type Encoder = NominationEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub(crate) struct NominationDecoder(U32beDecoder);
forward_decode!(NominationDecoder, Nomination, |word: u32| {
    Nomination(word & Nomination::MASK)
});

#[derive(Debug, Default)]
pub(crate) struct NominationEncoder(U32beEncoder);
forward_encode!(NominationEncoder, Nomination, |item: Nomination| {
    item.0 & Nomination::MASK
});

/// CHANGE-REQUEST (RFC 5780 §7.2; same layout in RFC 3489 §11.2.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ChangeRequest {
    pub(crate) change_ip: bool,
    pub(crate) change_port: bool,
}

impl ChangeRequest {
    pub(crate) const CODEPOINT: u16 = 0x0003;
    /// The "A" bit (RFC 5780 §7.2).
    const CHANGE_IP: u32 = 0x4;
    /// The "B" bit (RFC 5780 §7.2).
    const CHANGE_PORT: u32 = 0x2;
}

impl Attribute for ChangeRequest {
    type Decoder = ChangeRequestDecoder;
    type Encoder = ChangeRequestEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub(crate) struct ChangeRequestDecoder(U32beDecoder);
// Other bits are reserved; RFC 5780 gives them no meaning, so they are ignored.
forward_decode!(ChangeRequestDecoder, ChangeRequest, |bits: u32| {
    ChangeRequest {
        change_ip: bits & ChangeRequest::CHANGE_IP != 0,
        change_port: bits & ChangeRequest::CHANGE_PORT != 0,
    }
});

#[derive(Debug, Default)]
pub(crate) struct ChangeRequestEncoder(U32beEncoder);
forward_encode!(
    ChangeRequestEncoder,
    ChangeRequest,
    |item: ChangeRequest| {
        let ip = if item.change_ip {
            ChangeRequest::CHANGE_IP
        } else {
            0
        };
        let port = if item.change_port {
            ChangeRequest::CHANGE_PORT
        } else {
            0
        };
        ip | port
    }
);

/// RESPONSE-PORT (RFC 5780 §7.5): a 16-bit port followed by two bytes of padding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResponsePort(pub(crate) u16);

impl ResponsePort {
    pub(crate) const CODEPOINT: u16 = 0x0027;
}

impl Attribute for ResponsePort {
    type Decoder = ResponsePortDecoder;
    type Encoder = ResponsePortEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub(crate) struct ResponsePortDecoder(U32beDecoder);
forward_decode!(ResponsePortDecoder, ResponsePort, |word: u32| {
    ResponsePort((word >> 16) as u16)
});

#[derive(Debug, Default)]
pub(crate) struct ResponsePortEncoder(U32beEncoder);
forward_encode!(ResponsePortEncoder, ResponsePort, |item: ResponsePort| {
    u32::from(item.0) << 16
});

/// PADDING (RFC 5780 §7.6): free-form bytes whose content does not matter. Only the length is
/// kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Padding(pub(crate) u16);

impl Padding {
    pub(crate) const CODEPOINT: u16 = 0x0026;
}

impl Attribute for Padding {
    type Decoder = PaddingDecoder;
    type Encoder = PaddingEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// Counts the value bytes up to the attribute's end (stun_codec bounds the value with its
/// length), like `bytecodec::bytes::RemainingBytesDecoder` but without keeping them.
#[derive(Debug, Default)]
pub(crate) struct PaddingDecoder {
    len: usize,
    eos: bool,
}

impl Decode for PaddingDecoder {
    type Item = Padding;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> Result<usize> {
        if self.eos {
            return Ok(0);
        }
        self.len = self.len.saturating_add(buf.len());
        self.eos = eos.is_reached();
        Ok(buf.len())
    }

    fn finish_decoding(&mut self) -> Result<Self::Item> {
        if !self.eos {
            return Err(bytecodec::ErrorKind::IncompleteDecoding.into());
        }
        let len = std::mem::take(&mut self.len);
        self.eos = false;
        // An attribute length is a u16, so this never saturates.
        Ok(Padding(u16::try_from(len).unwrap_or(u16::MAX)))
    }

    fn requiring_bytes(&self) -> ByteCount {
        if self.eos {
            ByteCount::Finite(0)
        } else {
            ByteCount::Infinite
        }
    }

    fn is_idle(&self) -> bool {
        self.eos
    }
}

impl TryTaggedDecode for PaddingDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: Self::Tag) -> Result<bool> {
        Ok(tag.as_u16() == Padding::CODEPOINT)
    }
}

/// Writes `n` zero bytes without allocating them.
#[derive(Debug, Default)]
pub(crate) struct PaddingEncoder {
    remaining: usize,
}

impl Encode for PaddingEncoder {
    type Item = Padding;

    fn encode(&mut self, buf: &mut [u8], _eos: Eos) -> Result<usize> {
        let n = self.remaining.min(buf.len());
        buf[..n].fill(0);
        self.remaining -= n;
        Ok(n)
    }

    fn start_encoding(&mut self, item: Self::Item) -> Result<()> {
        if self.remaining != 0 {
            return Err(bytecodec::ErrorKind::EncoderFull.into());
        }
        self.remaining = usize::from(item.0);
        Ok(())
    }

    fn requiring_bytes(&self) -> ByteCount {
        ByteCount::Finite(self.exact_requiring_bytes())
    }

    fn is_idle(&self) -> bool {
        self.remaining == 0
    }
}

impl SizedEncode for PaddingEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.remaining as u64
    }
}
