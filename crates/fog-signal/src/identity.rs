//! Peer identities: Ed25519 key pairs and their public keys as [`PeerId`]s.
//!
//! A [`PeerId`] is the 32-byte Ed25519 public key. Its text form is made for people who read it
//! aloud or copy it by hand:
//!
//! - **Crockford base32**, alphabet `0123456789ABCDEFGHJKMNPQRSTVWXYZ` (no `I`, `L`, `O`, `U`).
//!   The key is read as a 256-bit big-endian number, shifted left by 4 bits to fill 52 symbols of
//!   5 bits each, most significant symbol first.
//! - **Two check symbols** follow: the 52-symbol number modulo the prime 1021, written as two
//!   base32 symbols (high 5 bits first). Changing one symbol by `d` (0 < |d| < 32) at position
//!   `i` changes the number by `d·32^i`; 1021 is a prime that divides neither factor, so the
//!   remainder changes and **every single-symbol substitution is detected**; so is every swap of
//!   two adjacent different symbols (the change is `(a−b)·31·32^i`). A substitution inside the
//!   check symbols changes the expected remainder, which is detected too.
//! - **Tolerant reading**: case-insensitive; `I`/`L` read as `1`, `O` as `0`; `-` and spaces
//!   are ignored, so `7KQ2-...` grouping is allowed. `U` is refused.
//!
//! The text form is 54 symbols; [`PeerId::short`] gives the first 8 for logs (not for identity).
//!
//! Secret keys are 32-byte Ed25519 seeds. This crate never reads OS randomness: generate a key
//! with [`KeyPair::generate`] from a caller's cryptographic RNG, or [`KeyPair::from_seed`]. The
//! key-file text format is [`KeyPair::to_key_file`] / [`KeyPair::from_key_file`]; writing it to
//! disk with the right permissions is in [`crate::keyfile`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols carrying the key: 256 bits padded to 260.
const KEY_SYMBOLS: usize = 52;
/// Length of the text form: key symbols plus two check symbols.
pub const PEER_ID_TEXT_LEN: usize = KEY_SYMBOLS + 2;
/// The checksum modulus: the largest prime below 32², so it fits two symbols.
const CHECK_PRIME: u32 = 1021;

/// A peer's identity: its 32-byte Ed25519 public key.
///
/// Holding a `PeerId` says nothing about whether the key is a valid curve point; verification
/// ([`PeerId::verify`]) rejects keys that are not.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The identity with these public-key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PeerId(bytes)
    }

    /// The public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 symbols of the text form, for logs. Not unique: never use it to identify.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// Whether `signature` is this key's strict (RFC 8032, non-malleable) signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    fn symbols(&self) -> [u8; KEY_SYMBOLS] {
        // 256 bits + 4 zero bits = 52 × 5 bits, most significant first.
        let mut out = [0u8; KEY_SYMBOLS];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out[n] = ((acc >> bits) & 31) as u8;
                n += 1;
            }
        }
        // 256 = 51·5 + 1: one bit left, padded with four zero bits.
        out[n] = ((acc << (5 - bits)) & 31) as u8;
        debug_assert_eq!(n + 1, KEY_SYMBOLS);
        out
    }
}

fn checksum(symbols: &[u8]) -> u32 {
    symbols
        .iter()
        .fold(0, |r, &v| (r * 32 + u32::from(v)) % CHECK_PRIME)
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbols = self.symbols();
        let check = checksum(&symbols);
        let mut s = String::with_capacity(PEER_ID_TEXT_LEN);
        for v in symbols
            .iter()
            .copied()
            .chain([(check >> 5) as u8, (check & 31) as u8])
        {
            s.push(char::from(ALPHABET[usize::from(v)]));
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// Why a text form did not parse as a [`PeerId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerIdParseError {
    /// Not 54 symbols after removing `-` and spaces.
    Length,
    /// A character outside the alphabet (and its tolerated look-alikes).
    Character,
    /// The check symbols do not match: a typo.
    Checksum,
    /// The padding bits are not zero (the text is not one this crate writes).
    Padding,
}

impl fmt::Display for PeerIdParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerIdParseError::Length => "a peer id is 54 base32 symbols",
            PeerIdParseError::Character => "a peer id uses Crockford base32 symbols only",
            PeerIdParseError::Checksum => "peer id checksum mismatch (typo?)",
            PeerIdParseError::Padding => "peer id padding bits are not zero",
        })
    }
}

impl std::error::Error for PeerIdParseError {}

fn symbol_value(c: u8) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        b'I' | b'L' => b'1',
        b'O' => b'0',
        c => c,
    };
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl FromStr for PeerId {
    type Err = PeerIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut values = [0u8; PEER_ID_TEXT_LEN];
        let mut n = 0;
        for c in s.bytes().filter(|c| *c != b'-' && *c != b' ') {
            if n == PEER_ID_TEXT_LEN {
                return Err(PeerIdParseError::Length);
            }
            values[n] = symbol_value(c).ok_or(PeerIdParseError::Character)?;
            n += 1;
        }
        if n != PEER_ID_TEXT_LEN {
            return Err(PeerIdParseError::Length);
        }
        let (key, check) = values.split_at(KEY_SYMBOLS);
        let expected = (u32::from(check[0]) << 5) | u32::from(check[1]);
        if checksum(key) != expected {
            return Err(PeerIdParseError::Checksum);
        }
        if key[KEY_SYMBOLS - 1] & 0b1111 != 0 {
            return Err(PeerIdParseError::Padding);
        }
        let mut bytes = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut i = 0;
        for &v in key {
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 && i < 32 {
                bits -= 8;
                bytes[i] = (acc >> bits) as u8;
                i += 1;
            }
            acc &= (1 << bits) - 1;
        }
        Ok(PeerId(bytes))
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 key pair: the node's secret identity. The secret is wiped from memory on drop.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

/// The first line of a key file.
const KEY_FILE_HEADER: &str = "fogconnect-ed25519-seed-v1";

/// Why bytes or text did not load as a [`KeyPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPairError {
    /// The first line is not `fogconnect-ed25519-seed-v1`.
    Header,
    /// The seed line is not 64 hexadecimal digits.
    Seed,
    /// The optional `peer` line does not match the key the seed gives.
    PeerMismatch,
}

impl fmt::Display for KeyPairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPairError::Header => "not a FogConnect key file (bad first line)",
            KeyPairError::Seed => "key file seed must be 64 hexadecimal digits",
            KeyPairError::PeerMismatch => "key file peer line does not match its seed",
        })
    }
}

impl std::error::Error for KeyPairError {}

impl KeyPair {
    /// A new key pair from the caller's cryptographic RNG (binaries pass the OS source; tests a
    /// seeded one).
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *seed);
        Self::from_seed(&seed)
    }

    /// The key pair whose RFC 8032 secret seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        KeyPair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed. Keep it secret; wrap it in [`Zeroizing`] as this does.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.signing.verifying_key().to_bytes())
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The key-file text: three lines, `fogconnect-ed25519-seed-v1`, the seed as 64 lowercase
    /// hex digits, and `peer <PeerId>` (informational, checked on load).
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let seed = self.to_seed();
        let mut s = Zeroizing::new(String::with_capacity(160));
        s.push_str(KEY_FILE_HEADER);
        s.push('\n');
        s.push_str(&crate::msg::hex::encode(&*seed));
        s.push('\n');
        s.push_str("peer ");
        s.push_str(&self.peer_id().to_string());
        s.push('\n');
        s
    }

    /// Reads [`KeyPair::to_key_file`]'s text. The `peer` line may be absent; if present it
    /// must match.
    pub fn from_key_file(text: &str) -> Result<Self, KeyPairError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyPairError::Header);
        }
        let seed_line = lines.next().ok_or(KeyPairError::Seed)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        if !crate::msg::hex::decode_into(seed_line, &mut *seed) {
            return Err(KeyPairError::Seed);
        }
        let key = KeyPair::from_seed(&seed);
        if let Some(line) = lines.next() {
            let claimed = line
                .strip_prefix("peer ")
                .and_then(|p| p.trim().parse::<PeerId>().ok());
            if claimed != Some(key.peer_id()) {
                return Err(KeyPairError::PeerMismatch);
            }
        }
        Ok(key)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "KeyPair({})", self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn key(n: u8) -> KeyPair {
        KeyPair::from_seed(&[n; 32])
    }

    #[test]
    fn text_round_trip_and_tolerance() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let id = KeyPair::generate(&mut rng).peer_id();
            let text = id.to_string();
            assert_eq!(text.len(), PEER_ID_TEXT_LEN);
            assert_eq!(text.parse::<PeerId>(), Ok(id));
            let sloppy = text
                .to_ascii_lowercase()
                .replace('1', "l")
                .replace('0', "o");
            let grouped: String = sloppy
                .chars()
                .enumerate()
                .flat_map(|(i, c)| (i % 6 == 0 && i > 0).then_some('-').into_iter().chain([c]))
                .collect();
            assert_eq!(grouped.parse::<PeerId>(), Ok(id), "{grouped}");
        }
        assert_eq!(
            PeerId::from_bytes([0; 32]).to_string(),
            "0".repeat(PEER_ID_TEXT_LEN)
        );
    }

    #[test]
    fn every_single_substitution_is_rejected() {
        let text = key(7).peer_id().to_string();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for &c in ALPHABET.iter().filter(|&&c| c != bytes[i]) {
                let mut typo = bytes.to_vec();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                assert!(typo.parse::<PeerId>().is_err(), "{typo} accepted");
            }
        }
    }

    #[test]
    fn every_adjacent_transposition_is_rejected() {
        let text = key(9).peer_id().to_string();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() - 1 {
            if bytes[i] == bytes[i + 1] {
                continue;
            }
            let mut typo = bytes.to_vec();
            typo.swap(i, i + 1);
            let typo = String::from_utf8(typo).unwrap();
            assert!(typo.parse::<PeerId>().is_err(), "{typo} accepted");
        }
    }

    #[test]
    fn bad_text_forms() {
        let text = key(3).peer_id().to_string();
        assert_eq!("".parse::<PeerId>(), Err(PeerIdParseError::Length));
        assert_eq!(text[1..].parse::<PeerId>(), Err(PeerIdParseError::Length));
        assert_eq!(
            format!("{text}0").parse::<PeerId>(),
            Err(PeerIdParseError::Length)
        );
        let with_u = format!("U{}", &text[1..]);
        assert_eq!(with_u.parse::<PeerId>(), Err(PeerIdParseError::Character));
        let non_ascii = format!("é{}", &text[2..]);
        assert!(non_ascii.parse::<PeerId>().is_err());
    }

    #[test]
    fn sign_and_verify() {
        let k = key(1);
        let sig = k.sign(b"hello");
        assert!(k.peer_id().verify(b"hello", &sig));
        assert!(!k.peer_id().verify(b"hellp", &sig));
        assert!(!key(2).peer_id().verify(b"hello", &sig));
        // Not a curve point: rejected, no panic.
        assert!(!PeerId::from_bytes([0xff; 32]).verify(b"hello", &sig));
    }

    #[test]
    fn key_file_round_trip() {
        let k = key(5);
        let text = k.to_key_file();
        assert!(text.starts_with("fogconnect-ed25519-seed-v1\n"));
        let back = KeyPair::from_key_file(&text).unwrap();
        assert_eq!(back.peer_id(), k.peer_id());
        assert_eq!(*back.to_seed(), [5; 32]);
        // Without the informational peer line.
        let two_lines: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(KeyPair::from_key_file(&two_lines).is_ok());
        assert_eq!(
            KeyPair::from_key_file("nope\n00").map(|k| k.peer_id()),
            Err(KeyPairError::Header)
        );
        let wrong_peer = text.replace(&k.peer_id().to_string(), &key(6).peer_id().to_string());
        assert_eq!(
            KeyPair::from_key_file(&wrong_peer).map(|k| k.peer_id()),
            Err(KeyPairError::PeerMismatch)
        );
        let short_seed = "fogconnect-ed25519-seed-v1\nabcd\n";
        assert_eq!(
            KeyPair::from_key_file(short_seed).map(|k| k.peer_id()),
            Err(KeyPairError::Seed)
        );
        assert!(!format!("{k:?}").contains("0505"));
    }
}
