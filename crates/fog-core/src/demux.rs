//! Demultiplexing one UDP socket by the first byte of each datagram.
//!
//! FogConnect runs every protocol of a node on one UDP socket, so that the NAT binding that
//! discovery measured and punching opened is the one the transports use. RFC 7983 §7 and its update
//! RFC 9443 §3 split the first byte into ranges; protocols whose first byte is arbitrary (a KCP
//! conversation id, an SCTP port, a uTP version nibble) are wrapped in one framing byte of ours,
//! taken from the range 4–15 that neither RFC assigns.
//!
//! | first byte | protocol | why |
//! |---|---|---|
//! | 0–3 | STUN ([`Protocol::Stun`]) | RFC 5389 §6: the two top bits are zero; RFC 7983 §7 |
//! | 4 | KCP in our framing ([`FogFraming::Kcp`]) | free range, ours |
//! | 5 | uTP in our framing ([`FogFraming::Utp`]) | free range, ours |
//! | 6 | SCTP in our framing ([`FogFraming::Sctp`]) | free range, ours |
//! | 7 | an application datagram, unreliable, in our framing ([`FogFraming::Data`]) | free range, ours |
//! | 8 | a connection's QUIC packet (or an RTC connection's DTLS application data) behind the receiver's session tag ([`FogFraming::QuicTagged`]) | free range, ours |
//! | 9–15 | reserved for our framing ([`Protocol::Unknown`]) | free range, kept for later |
//! | 16–19 | ZRTP ([`Protocol::Zrtp`]), not spoken here | RFC 7983 §7 |
//! | 20–63 | DTLS ([`Protocol::Dtls`]) | RFC 7983 §7 (content types 20–63) |
//! | 64–79 | TURN ChannelData if it came from a TURN server we use, else QUIC short header | RFC 8656 §12 (channels 0x4000–0x4FFF); RFC 9443 §3 notes the overlap |
//! | 80–127 | QUIC short header ([`Protocol::Quic`]) | RFC 9000 §17.3: form bit 0, fixed bit 1 |
//! | 128–191 | RTP/RTCP ([`Protocol::Rtp`]), not spoken here | RFC 7983 §7 (version 2) |
//! | 192–255 | QUIC long header ([`Protocol::Quic`]) | RFC 9000 §17.2: form bit 1, fixed bit 1 |
//!
//! QUIC must keep its fixed bit set (no "grease", RFC 9287), or its packets would fall into the
//! RTP and DTLS ranges; quinn-proto's `EndpointConfig::grease_quic_bit(false)` does that.
//!
//! The overlap at 64–79 cannot be settled from the bytes: a QUIC short header's first byte there
//! is legal. It is settled by where the datagram came from, which only the caller knows: ChannelData
//! only ever arrives from a TURN server on which we hold an allocation (RFC 8656 §12.5).

/// The protocol a datagram belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// STUN (and TURN control messages, which are STUN).
    Stun,
    /// TURN ChannelData (RFC 8656 §12.4).
    ChannelData,
    /// DTLS, as used by WebRTC data channels.
    Dtls,
    /// QUIC with the fixed bit set.
    Quic,
    /// One of our own framed protocols; the payload starts after the framing byte.
    Fog(FogFraming),
    /// ZRTP (RFC 6189); recognised so it can be counted, never handled.
    Zrtp,
    /// RTP or RTCP; recognised so it can be counted, never handled.
    Rtp,
    /// Nothing FogConnect speaks: an empty datagram, a reserved framing byte, or a datagram too
    /// short for the protocol its first byte names.
    Unknown,
}

/// Our framing byte for protocols whose own first byte is arbitrary.
///
/// The wire form is this byte followed by the protocol's datagram unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FogFraming {
    /// KCP (the C ikcp wire format follows the byte).
    Kcp = 4,
    /// uTP (BEP 29) follows the byte.
    Utp = 5,
    /// A plain SCTP common header (RFC 9260 §3) follows the byte.
    Sctp = 6,
    /// A sealed datagram of a connection follows the byte: the application's own datagrams
    /// (the node's unreliable datagram service, beside the transports) and the node's messages
    /// about the connection (its close).
    Data = 7,
    /// A QUIC packet of a connection follows the byte and the receiver's 8-byte session tag:
    /// QUIC's own packet protection seals it, the tag names the connection.
    QuicTagged = 8,
}

/// Smallest STUN message: the 20-byte header (RFC 8489 §5).
const STUN_HEADER_LEN: usize = 20;
/// Smallest ChannelData message: channel number and length (RFC 8656 §12.4).
const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Smallest QUIC long header that names a version: first byte + 4-byte version (RFC 9000 §17.2).
const QUIC_LONG_MIN_LEN: usize = 5;
/// Smallest DTLS record: the 13-byte record header (RFC 6347 §4.1).
const DTLS_RECORD_HEADER_LEN: usize = 13;

impl FogFraming {
    /// The framing byte.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// The framed protocol a first byte names, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            4 => Some(Self::Kcp),
            5 => Some(Self::Utp),
            6 => Some(Self::Sctp),
            7 => Some(Self::Data),
            8 => Some(Self::QuicTagged),
            _ => None,
        }
    }

    /// Writes the framing byte and `payload` into `buf`, returning the framed length, or `None`
    /// when `buf` is too small.
    pub fn frame(self, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
        let len = payload.len().checked_add(1)?;
        let out = buf.get_mut(..len)?;
        out[0] = self.byte();
        out[1..].copy_from_slice(payload);
        Some(len)
    }

    /// The inner datagram of a framed one, if `datagram` carries this framing.
    pub fn unframe(self, datagram: &[u8]) -> Option<&[u8]> {
        match datagram.split_first() {
            Some((&b, rest)) if b == self.byte() => Some(rest),
            _ => None,
        }
    }
}

/// Classifies a datagram by its first byte (see the [module table](self)).
///
/// `from_turn_server` says whether the datagram came from a TURN server on which the caller holds
/// an allocation; it settles the 64–79 range between ChannelData and QUIC. Datagrams too short for
/// the header their first byte names are [`Protocol::Unknown`], so that no handler sees a
/// truncated header.
pub fn classify(datagram: &[u8], from_turn_server: bool) -> Protocol {
    let Some(&first) = datagram.first() else {
        return Protocol::Unknown;
    };
    let len = datagram.len();
    match first {
        0..=3 if len >= STUN_HEADER_LEN => Protocol::Stun,
        4..=15 => match FogFraming::from_byte(first) {
            Some(framing) => Protocol::Fog(framing),
            None => Protocol::Unknown,
        },
        16..=19 => Protocol::Zrtp,
        20..=63 if len >= DTLS_RECORD_HEADER_LEN => Protocol::Dtls,
        64..=79 if from_turn_server => {
            if len >= CHANNEL_DATA_HEADER_LEN {
                Protocol::ChannelData
            } else {
                Protocol::Unknown
            }
        }
        64..=127 => Protocol::Quic,
        128..=191 => Protocol::Rtp,
        192..=255 if len >= QUIC_LONG_MIN_LEN => Protocol::Quic,
        _ => Protocol::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in the module docs, written out independently of `classify`'s match.
    fn expected(first: u8, from_turn_server: bool) -> Protocol {
        if first <= 3 {
            Protocol::Stun
        } else if first == 4 {
            Protocol::Fog(FogFraming::Kcp)
        } else if first == 5 {
            Protocol::Fog(FogFraming::Utp)
        } else if first == 6 {
            Protocol::Fog(FogFraming::Sctp)
        } else if first == 7 {
            Protocol::Fog(FogFraming::Data)
        } else if first == 8 {
            Protocol::Fog(FogFraming::QuicTagged)
        } else if first <= 15 {
            Protocol::Unknown
        } else if first <= 19 {
            Protocol::Zrtp
        } else if first <= 63 {
            Protocol::Dtls
        } else if first <= 79 && from_turn_server {
            Protocol::ChannelData
        } else if first <= 127 {
            Protocol::Quic
        } else if first <= 191 {
            Protocol::Rtp
        } else {
            Protocol::Quic
        }
    }

    #[test]
    fn all_256_first_bytes_follow_the_table() {
        for from_turn in [false, true] {
            for first in 0..=255u8 {
                let mut datagram = [0u8; 64];
                datagram[0] = first;
                assert_eq!(
                    classify(&datagram, from_turn),
                    expected(first, from_turn),
                    "first byte {first} (from TURN server: {from_turn})"
                );
            }
        }
    }

    #[test]
    fn truncated_headers_are_unknown() {
        assert_eq!(classify(&[], false), Protocol::Unknown);
        assert_eq!(classify(&[0x00; 19], false), Protocol::Unknown);
        assert_eq!(classify(&[0x01; 20], false), Protocol::Stun);
        assert_eq!(classify(&[0x17; 12], false), Protocol::Unknown);
        assert_eq!(classify(&[0x40, 0x00, 0x00], true), Protocol::Unknown);
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x00], true),
            Protocol::ChannelData
        );
        assert_eq!(classify(&[0xc0, 0, 0, 0], false), Protocol::Unknown);
        assert_eq!(classify(&[0xc0, 0, 0, 0, 1], false), Protocol::Quic);
    }

    #[test]
    fn stun_binding_request_from_rfc5769_is_stun() {
        // RFC 5769 §2.1 sample request, first 20 bytes (the header).
        let header = [
            0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        assert_eq!(classify(&header, false), Protocol::Stun);
        assert_eq!(classify(&header, true), Protocol::Stun);
    }

    #[test]
    fn framing_round_trips_and_refuses_small_buffers() {
        let mut buf = [0u8; 8];
        for framing in [
            FogFraming::Kcp,
            FogFraming::Utp,
            FogFraming::Sctp,
            FogFraming::Data,
        ] {
            let n = framing.frame(b"abc", &mut buf).unwrap();
            assert_eq!(n, 4);
            assert_eq!(classify(&buf[..n], false), Protocol::Fog(framing));
            assert_eq!(framing.unframe(&buf[..n]), Some(&b"abc"[..]));
            assert_eq!(FogFraming::from_byte(framing.byte()), Some(framing));
        }
        assert_eq!(FogFraming::Kcp.frame(&[0; 8], &mut buf), None);
        assert_eq!(FogFraming::Kcp.unframe(&[5, 1]), None);
        assert_eq!(FogFraming::Kcp.unframe(&[]), None);
    }
}
