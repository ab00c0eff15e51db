//! MESSAGE-INTEGRITY (RFC 5389 §15.4) and FINGERPRINT (§15.5), computed on the datagram bytes.
//!
//! Both cover "the message up to the attribute", with the header's length field already counting
//! the attribute itself; so they are written after the rest of the message is encoded, and
//! checked against exactly the bytes that arrived.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::packet::{Packet, RawAttribute};
use super::{DecodeError, HEADER_LEN, IntegrityKey};

/// MESSAGE-INTEGRITY type (RFC 5389 §15.4).
pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
/// FINGERPRINT type (RFC 5389 §15.5).
pub(crate) const FINGERPRINT: u16 = 0x8028;
/// HMAC-SHA1 output length (RFC 5389 §15.4).
const HMAC_LEN: usize = 20;
/// MESSAGE-INTEGRITY on the wire: 4-byte attribute header and the HMAC.
pub(crate) const INTEGRITY_WIRE_LEN: usize = 4 + HMAC_LEN;
/// FINGERPRINT on the wire: 4-byte attribute header and the CRC.
pub(crate) const FINGERPRINT_WIRE_LEN: usize = 4 + 4;
/// XORed into the CRC-32 so that a FINGERPRINT differs from a CRC another protocol carries
/// (RFC 5389 §15.5: the ASCII of "STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// The CRC-32 of ISO/IEC 13239 / ITU-T V.42, which RFC 5389 §15.5 names (the zlib/Ethernet one).
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

type HmacSha1 = Hmac<Sha1>;

/// Where the trailer attributes sit in a checked packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Trailer {
    /// Offset of the first MESSAGE-INTEGRITY attribute.
    pub(crate) integrity: Option<usize>,
    /// Offset of the FINGERPRINT attribute, which is the last one.
    pub(crate) fingerprint: Option<usize>,
}

impl Trailer {
    /// Finds the trailer attributes and checks their placement and size.
    ///
    /// RFC 5389 §15.5: FINGERPRINT is the last attribute. §15.4: attributes after
    /// MESSAGE-INTEGRITY other than FINGERPRINT are ignored (so they are not checked here either,
    /// and the body handed to the attribute decoder ends at MESSAGE-INTEGRITY).
    pub(crate) fn locate<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, DecodeError> {
        let mut trailer = Self::default();
        for RawAttribute {
            kind,
            offset,
            value,
        } in packet.attributes()
        {
            if trailer.fingerprint.is_some() {
                return Err(DecodeError::FingerprintNotLast);
            }
            match kind {
                MESSAGE_INTEGRITY if trailer.integrity.is_none() => {
                    if value.len() != HMAC_LEN {
                        return Err(DecodeError::InvalidAttribute(kind));
                    }
                    trailer.integrity = Some(offset);
                }
                FINGERPRINT => {
                    if value.len() != 4 {
                        return Err(DecodeError::InvalidAttribute(kind));
                    }
                    trailer.fingerprint = Some(offset);
                }
                _ => {}
            }
        }
        Ok(trailer)
    }

    /// Where the attributes an agent processes end.
    pub(crate) fn body_end(&self, datagram_len: usize) -> usize {
        self.integrity.or(self.fingerprint).unwrap_or(datagram_len)
    }
}

/// The FINGERPRINT value for `message`, whose length field already counts the FINGERPRINT
/// attribute (RFC 5389 §15.5).
fn fingerprint(message: &[u8]) -> u32 {
    CRC32.checksum(message) ^ FINGERPRINT_XOR
}

/// The HMAC over `bytes[..end]` with the length field replaced by `length` (RFC 5389 §15.4:
/// the length counts MESSAGE-INTEGRITY but not what follows it).
fn integrity_mac(key: &IntegrityKey, bytes: &[u8], end: usize, length: u16) -> HmacSha1 {
    let mut mac = HmacSha1::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(&bytes[..2]);
    mac.update(&length.to_be_bytes());
    mac.update(&bytes[4..end]);
    mac
}

/// The length field MESSAGE-INTEGRITY at `offset` is computed with.
fn integrity_length(offset: usize) -> u16 {
    // `offset` lies inside a checked datagram whose length fits a u16, and so does this.
    u16::try_from(offset + INTEGRITY_WIRE_LEN - HEADER_LEN).unwrap_or(u16::MAX)
}

/// Checks the FINGERPRINT at `offset` of a checked datagram.
pub(crate) fn check_fingerprint(bytes: &[u8], offset: usize) -> Result<(), DecodeError> {
    let value = &bytes[offset + 4..offset + FINGERPRINT_WIRE_LEN];
    let carried = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    if fingerprint(&bytes[..offset]) == carried {
        Ok(())
    } else {
        Err(DecodeError::FingerprintMismatch)
    }
}

/// Checks the MESSAGE-INTEGRITY at `offset` of a checked datagram, in constant time
/// (`hmac`'s `verify_slice` compares with `subtle`).
pub(crate) fn check_integrity(
    bytes: &[u8],
    offset: usize,
    key: &IntegrityKey,
) -> Result<(), DecodeError> {
    let carried = &bytes[offset + 4..offset + INTEGRITY_WIRE_LEN];
    integrity_mac(key, bytes, offset, integrity_length(offset))
        .verify_slice(carried)
        .map_err(|_| DecodeError::IntegrityMismatch)
}

/// Appends MESSAGE-INTEGRITY to the `len` bytes of `buf` and returns the new length. The caller
/// has checked that it fits.
pub(crate) fn append_integrity(buf: &mut [u8], len: usize, key: &IntegrityKey) -> usize {
    let length = integrity_length(len);
    let tag = integrity_mac(key, buf, len, length).finalize().into_bytes();
    buf[2..4].copy_from_slice(&length.to_be_bytes());
    let attr = &mut buf[len..len + INTEGRITY_WIRE_LEN];
    attr[..2].copy_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
    attr[2..4].copy_from_slice(&(HMAC_LEN as u16).to_be_bytes());
    attr[4..].copy_from_slice(&tag);
    len + INTEGRITY_WIRE_LEN
}

/// Appends FINGERPRINT to the `len` bytes of `buf` and returns the new length. The caller has
/// checked that it fits.
pub(crate) fn append_fingerprint(buf: &mut [u8], len: usize) -> usize {
    let end = len + FINGERPRINT_WIRE_LEN;
    let length = u16::try_from(end - HEADER_LEN).unwrap_or(u16::MAX);
    buf[2..4].copy_from_slice(&length.to_be_bytes());
    let crc = fingerprint(&buf[..len]);
    let attr = &mut buf[len..end];
    attr[..2].copy_from_slice(&FINGERPRINT.to_be_bytes());
    attr[2..4].copy_from_slice(&4u16.to_be_bytes());
    attr[4..].copy_from_slice(&crc.to_be_bytes());
    end
}

/// The long-term credential key (RFC 5389 §15.4), with the password used as given.
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    // RFC 5389 §15.4: key = MD5(username ":" realm ":" SASLprep(password)).
    md5::compute(format!("{username}:{realm}:{password}")).0
}
