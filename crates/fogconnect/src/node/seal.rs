//! Authenticated, sealed sessions.
//!
//! **Set-up.** Each side makes an ephemeral X25519 key (RFC 7748) per connection and signs
//! its description with its Ed25519 identity: the offer's transcript binds the offerer, the
//! peer it is for, the service, the candidates, the NAT behaviour, the transports, the QUIC
//! certificate's fingerprint (if any), the check username and the key; the answer's binds, besides its own, the session the server named and
//! the offer's key, so that it answers that offer only. A node refuses a description whose
//! signature does not verify against the peer it expects, so the signaling server, which sees
//! and forwards everything, can neither forge nor alter a session.
//!
//! **Keys.** HKDF-SHA256 (RFC 5869) over the X25519 shared secret, salted with the session,
//! with both identities and both keys as context, gives a ChaCha20-Poly1305 key and a session
//! tag per direction, and each side's connectivity-check password. The passwords are the key
//! confirmation: a check's MESSAGE-INTEGRITY proves the sender holds the exchange's secret, so
//! a party that replays an old offer, or a server that answers for a peer, never gets a path.
//!
//! **Datagrams** on the path: the framing byte (7), the receiver's session tag (8 bytes), a
//! sequence number (8 bytes, big-endian), then the AEAD's output over a kind byte and the
//! payload, with the 17-byte header as associated data and the sequence number as the nonce
//! (RFC 8439 §2.8). 33 bytes of overhead. Forged, altered and replayed datagrams are dropped
//! and counted; a window of
//! 1,984 datagrams admits reordering (RFC 6479's ring of bitmap blocks; WireGuard's too).

// ring's ChaCha20-Poly1305 (RFC 8439, the same bytes as the `chacha20poly1305` crate gave):
// its assembly is several times faster on 1.4 KB datagrams, whose per-message Poly1305 set-up
// and finalisation dominated the RustCrypto backend's cost in the transfer bench's profile.
use fog_signal::PeerId;
use fog_signal::msg::{Description, ExchangeKey, SessionId};
use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// The framing byte of a sealed datagram (fog-core's demux table).
pub const FRAMING: u8 = fog_core::FogFraming::Data.byte();
/// Framing byte, tag, sequence number.
const HEADER_LEN: usize = 1 + 8 + 8;
/// The Poly1305 tag.
const AEAD_TAG_LEN: usize = 16;
/// What sealing adds to a payload: the header, the kind byte and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + AEAD_TAG_LEN;
/// Where the payload starts in a sealed datagram: after the header and the kind byte.
pub const PAYLOAD_AT: usize = HEADER_LEN + 1;
/// Where the packet starts in a tagged QUIC datagram: after the framing byte and the tag.
pub const QUIC_PACKET_AT: usize = 1 + 8;
/// The replay bitmap's 64-bit blocks, a ring (RFC 6479 §2's layout).
const BLOCKS: usize = 32;
/// Datagrams behind the highest one seen that are still accepted (once each): one block less
/// than the ring holds, so a block is never reused while a number in it can still arrive. A
/// node sends bursts of a hundred and more (a KCP flush, a QUIC window), and a reordering
/// path may deliver the first of one after the last; 64 refused those as replays.
const WINDOW: u64 = ((BLOCKS - 1) * 64) as u64;

/// What a sealed datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An application datagram.
    Data = 0,
    /// The connection's close: a code (u32, big-endian) and a reason follow.
    Close = 1,
    /// A probe of the relay over signaling.
    Probe = 2,
    /// The echo of a probe.
    Echo = 3,
    /// A datagram of the connection's transport, its framing byte first (fog-core's
    /// `FogFraming`: 4 for KCP).
    Transport = 4,
    /// The acknowledgement of a close: it stops the closer's retransmissions (the node's
    /// `linger` module).
    CloseAck = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Data,
            1 => Kind::Close,
            2 => Kind::Probe,
            3 => Kind::Echo,
            4 => Kind::Transport,
            5 => Kind::CloseAck,
            _ => return None,
        })
    }
}

/// Why a sealed datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It does not decrypt (forged or altered), or its kind is unknown.
    Forged,
    /// Its sequence number was seen, or is too old for the window.
    Replayed,
}

/// The framing byte of a connection's QUIC packet, or an RTC connection's DTLS application
/// data, behind the receiver's session tag, not sealed again (see the `quic` and `rtc`
/// modules).
pub const QUIC_FRAMING: u8 = fog_core::FogFraming::QuicTagged.byte();

/// The session tag and the QUIC packet of a tagged QUIC datagram, if it is one.
pub fn quic_of(datagram: &[u8]) -> Option<([u8; 8], &[u8])> {
    if datagram.first() != Some(&QUIC_FRAMING) {
        return None;
    }
    let tag = datagram.get(1..9)?.try_into().ok()?;
    Some((tag, datagram.get(9..).filter(|p| !p.is_empty())?))
}

/// The session tag a sealed datagram names, if it is one.
pub fn tag_of(datagram: &[u8]) -> Option<[u8; 8]> {
    if datagram.len() < OVERHEAD || datagram[0] != FRAMING {
        return None;
    }
    datagram[1..9].try_into().ok()
}

/// One side's ephemeral exchange secret for a connection.
pub struct Exchange(StaticSecret);

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exchange(..)")
    }
}

impl Exchange {
    /// From 32 bytes of the node's generator.
    pub fn new(bytes: [u8; 32]) -> Exchange {
        Exchange(StaticSecret::from(bytes))
    }

    /// The public key to send the peer.
    pub fn public(&self) -> ExchangeKey {
        ExchangeKey(PublicKey::from(&self.0).to_bytes())
    }
}

/// Who made a description, for whom, and where it stands in the exchange.
pub enum Role<'a> {
    /// An offer from `from` to `to`.
    Offer {
        /// The offerer.
        from: PeerId,
        /// The peer it is for.
        to: PeerId,
    },
    /// An answer from `from` to the offerer `to`, in `session`, to the offer whose key was
    /// `offer_key`.
    Answer {
        /// The answerer.
        from: PeerId,
        /// The offerer.
        to: PeerId,
        /// The session the server named.
        session: SessionId,
        /// The offer's exchange key.
        offer_key: &'a ExchangeKey,
    },
}

/// The bytes a description's signature covers: every field the other side relies on, each
/// length-prefixed, after a domain label (so no two inputs give the same bytes, and a
/// signature made for one purpose is useless for another). The password field is left out:
/// the check passwords come from the exchange.
pub fn transcript(role: &Role<'_>, description: &Description, key: &ExchangeKey) -> Vec<u8> {
    let mut t = Transcript::default();
    match role {
        Role::Offer { from, to } => {
            t.put(b"fogconnect-offer-v1");
            t.put(from.as_bytes());
            t.put(to.as_bytes());
        }
        Role::Answer {
            from,
            to,
            session,
            offer_key,
        } => {
            t.put(b"fogconnect-answer-v1");
            t.put(from.as_bytes());
            t.put(to.as_bytes());
            t.put(&session.0);
            t.put(&offer_key.0);
        }
    }
    t.put(&description.service.to_be_bytes());
    t.put(description.credentials.ufrag.as_bytes());
    t.put(&(description.candidates.len() as u32).to_be_bytes());
    for c in &description.candidates {
        t.candidate(c);
    }
    let nat = description
        .nat
        .map(|n| format!("{n:?}"))
        .unwrap_or_default();
    t.put(nat.as_bytes());
    t.put(&(description.transports.len() as u32).to_be_bytes());
    for transport in &description.transports {
        t.put(format!("{transport:?}").as_bytes());
    }
    // Only when present, so descriptions without one keep their transcript.
    if let Some(fingerprint) = &description.quic {
        t.put(b"quic-certificate");
        t.put(&fingerprint.0);
    }
    if let Some(fingerprint) = &description.rtc {
        t.put(b"rtc-certificate");
        t.put(&fingerprint.0);
    }
    t.put(&key.0);
    t.0
}

/// The bytes a behaviour update's signature covers: who sends it to whom, in which session,
/// and the behaviour (written as the description's transcript writes it).
pub fn nat_transcript(
    from: PeerId,
    to: PeerId,
    session: SessionId,
    nat: &fog_signal::msg::NatBehaviour,
) -> Vec<u8> {
    let mut t = Transcript::default();
    t.put(b"fogconnect-nat-v1");
    t.put(from.as_bytes());
    t.put(to.as_bytes());
    t.put(&session.0);
    t.put(format!("{nat:?}").as_bytes());
    t.0
}

/// The bytes a trickled candidate's signature covers: who sends it to whom, in which session,
/// and the candidate, after a domain label of its own.
pub fn candidate_transcript(
    from: PeerId,
    to: PeerId,
    session: SessionId,
    c: &fog_signal::msg::Candidate,
) -> Vec<u8> {
    let mut t = Transcript::default();
    t.put(b"fogconnect-candidate-v1");
    t.put(from.as_bytes());
    t.put(to.as_bytes());
    t.put(&session.0);
    t.candidate(c);
    t.0
}

/// A transcript being written: every field length-prefixed.
#[derive(Default)]
struct Transcript(Vec<u8>);

impl Transcript {
    fn put(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// A candidate in the wire's own spelling of each field: what the receiver parsed is what
    /// was signed.
    fn candidate(&mut self, c: &fog_signal::msg::Candidate) {
        self.put(kind_name(c.kind).as_bytes());
        self.put(c.addr.to_string().as_bytes());
        self.put(&c.priority.to_be_bytes());
        self.put(
            c.related
                .map(|r| r.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
}

fn kind_name(kind: fog_signal::msg::CandidateKind) -> &'static str {
    use fog_signal::msg::CandidateKind as K;
    match kind {
        K::Host => "host",
        K::Srflx => "srflx",
        K::Prflx => "prflx",
        K::Predicted => "predicted",
        K::Relay => "relay",
        K::Mapped => "mapped",
    }
}

/// A connection's keys, one direction each, and the check passwords. `seal` and `open` are
/// what the node does with every datagram of the connection; they are public for benchmarks
/// and fuzzing.
pub struct Keys {
    send: LessSafeKey,
    recv: LessSafeKey,
    /// The sending key's bytes, for the test that opens our datagrams with another
    /// implementation.
    #[cfg(test)]
    send_key: [u8; 32],
    /// The tag our datagrams carry (the peer's receive tag), and the one we accept.
    pub(crate) send_tag: [u8; 8],
    pub(crate) recv_tag: [u8; 8],
    next_seq: u64,
    /// One past the highest sequence number accepted, and which of the [`WINDOW`] below it
    /// were: sequence number `n` is bit `n % 64` of block `(n / 64) % BLOCKS`.
    top: u64,
    seen: [u64; BLOCKS],
    /// Our check password (the peer's checks to us carry it), and the peer's.
    pub(crate) local_pwd: String,
    pub(crate) remote_pwd: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Keys {
    /// The keys of the session between `offerer` and `answerer`, from our exchange secret and
    /// the peer's key.
    pub fn derive(
        mine: &Exchange,
        theirs: &ExchangeKey,
        session: SessionId,
        offerer: PeerId,
        answerer: PeerId,
        we_offered: bool,
    ) -> Keys {
        let shared = mine.0.diffie_hellman(&PublicKey::from(theirs.0));
        let ours = mine.public();
        let (offer_key, answer_key) = if we_offered {
            (ours, *theirs)
        } else {
            (*theirs, ours)
        };
        let mut info = Vec::with_capacity(160);
        info.extend_from_slice(b"fogconnect-keys-v1");
        info.extend_from_slice(offerer.as_bytes());
        info.extend_from_slice(answerer.as_bytes());
        info.extend_from_slice(&offer_key.0);
        info.extend_from_slice(&answer_key.0);
        let hkdf = Hkdf::<Sha256>::new(Some(&session.0), shared.as_bytes());
        // 2 keys, 2 tags, 2 passwords (18 bytes each: 24 characters of base64, above RFC
        // 8445 §5.3's 128 bits).
        let mut okm = [0u8; 32 + 32 + 8 + 8 + 18 + 18];
        // 116 bytes is far below HKDF-SHA256's limit of 255 × 32.
        hkdf.expand(&info, &mut okm)
            .unwrap_or_else(|_| unreachable!("a short output"));
        let (o2a, rest) = okm.split_at(32);
        let (a2o, rest) = rest.split_at(32);
        let (tag_o2a, rest) = rest.split_at(8);
        let (tag_a2o, rest) = rest.split_at(8);
        let (pwd_o, pwd_a) = rest.split_at(18);
        let cipher = |k: &[u8]| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k)
                    .unwrap_or_else(|_| unreachable!("a 32-byte key")),
            )
        };
        let pwd = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        };
        let tag = |b: &[u8]| -> [u8; 8] { b.try_into().unwrap_or_else(|_| unreachable!()) };
        let (send, recv, send_tag, recv_tag, local_pwd, remote_pwd) = if we_offered {
            (o2a, a2o, tag_o2a, tag_a2o, pwd_o, pwd_a)
        } else {
            (a2o, o2a, tag_a2o, tag_o2a, pwd_a, pwd_o)
        };
        Keys {
            send: cipher(send),
            recv: cipher(recv),
            #[cfg(test)]
            send_key: send.try_into().unwrap_or_else(|_| unreachable!()),
            send_tag: tag(send_tag),
            recv_tag: tag(recv_tag),
            next_seq: 0,
            top: 0,
            seen: [0; BLOCKS],
            local_pwd: pwd(local_pwd),
            remote_pwd: pwd(remote_pwd),
        }
    }

    /// Two matching sides of one session made from fixed inputs (the offerer's first): for
    /// benchmarks, fuzzing and tests, never for a real session.
    pub fn fixed_pair() -> (Keys, Keys) {
        let a = fog_signal::KeyPair::from_seed(&[1; 32]).peer_id();
        let b = fog_signal::KeyPair::from_seed(&[2; 32]).peer_id();
        let (ea, eb) = (Exchange::new([3; 32]), Exchange::new([4; 32]));
        let session = SessionId([5; 16]);
        (
            Keys::derive(&ea, &eb.public(), session, a, b, true),
            Keys::derive(&eb, &ea.public(), session, a, b, false),
        )
    }

    /// The tag the peer's datagrams to us carry.
    pub fn recv_tag(&self) -> [u8; 8] {
        self.recv_tag
    }

    /// A QUIC packet of this connection for the path: the framing byte and the peer's session
    /// tag before it, and nothing else (QUIC protects its packets itself).
    pub fn tag_quic(&self, packet: &[u8]) -> Vec<u8> {
        let mut out = vec![0; QUIC_PACKET_AT];
        out.extend_from_slice(packet);
        self.tag_quic_in_place(&mut out);
        out
    }

    /// [`tag_quic`](Self::tag_quic) of the packet already at [`QUIC_PACKET_AT`] in `datagram`:
    /// writes the framing byte and the tag before it.
    pub fn tag_quic_in_place(&self, datagram: &mut [u8]) {
        assert!(datagram.len() >= QUIC_PACKET_AT, "no room for the tag");
        datagram[0] = QUIC_FRAMING;
        datagram[1..QUIC_PACKET_AT].copy_from_slice(&self.send_tag);
    }

    /// A sealed datagram of `kind` carrying `payload`.
    pub fn seal(&mut self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.resize(PAYLOAD_AT, 0);
        out.extend_from_slice(payload);
        self.seal_in_place(kind, &mut out);
        out
    }

    /// [`seal`](Self::seal) of the payload already at [`PAYLOAD_AT`] in `datagram` (a
    /// transport writes its packet there, in a buffer the node reuses): writes the header and
    /// the kind before it, encrypts it in place and appends the tag. No copy of the payload.
    pub fn seal_in_place(&mut self, kind: Kind, datagram: &mut Vec<u8>) {
        assert!(datagram.len() >= PAYLOAD_AT, "no room for the header");
        let seq = self.next_seq;
        self.next_seq += 1;
        datagram[0] = FRAMING;
        datagram[1..9].copy_from_slice(&self.send_tag);
        datagram[9..HEADER_LEN].copy_from_slice(&seq.to_be_bytes());
        datagram[HEADER_LEN] = kind as u8;
        let (header, plain) = datagram.split_at_mut(HEADER_LEN);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(seq), Aad::from(&*header), plain)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 seals any length we send"));
        datagram.extend_from_slice(tag.as_ref());
    }

    /// The kind and payload of a sealed datagram for us (its tag already matched).
    pub fn open(&mut self, datagram: &[u8]) -> Result<(Kind, Vec<u8>), Refused> {
        let mut plain = Vec::new();
        let kind = self.open_into(datagram, &mut plain)?;
        plain.remove(0);
        Ok((kind, plain))
    }

    /// [`open`](Self::open) into `plain`, a buffer the caller reuses: on success it holds the
    /// kind byte and then the payload (`&plain[1..]`), so a datagram costs no allocation and no
    /// move of its payload.
    pub fn open_into(&mut self, datagram: &[u8], plain: &mut Vec<u8>) -> Result<Kind, Refused> {
        if datagram.len() < OVERHEAD {
            return Err(Refused::Forged);
        }
        let (header, sealed) = datagram.split_at(HEADER_LEN);
        let seq = u64::from_be_bytes(header[9..].try_into().map_err(|_| Refused::Forged)?);
        if !self.fresh(seq) {
            return Err(Refused::Replayed);
        }
        let (ciphertext, tag) = sealed.split_at(sealed.len() - AEAD_TAG_LEN);
        plain.clear();
        plain.extend_from_slice(ciphertext);
        let tag = Tag::try_from(tag).map_err(|_| Refused::Forged)?;
        self.recv
            .open_in_place_separate_tag(nonce(seq), Aad::from(header), tag, plain, 0..)
            .map_err(|_| Refused::Forged)?;
        let kind = plain
            .first()
            .and_then(|&k| Kind::from_byte(k))
            .ok_or(Refused::Forged)?;
        // Only an authentic datagram moves the window.
        self.mark(seq);
        Ok(kind)
    }

    fn fresh(&self, seq: u64) -> bool {
        if seq >= self.top {
            return true;
        }
        let behind = self.top - 1 - seq;
        let (block, bit) = slot(seq);
        behind < WINDOW && self.seen[block] & bit == 0
    }

    fn mark(&mut self, seq: u64) {
        if seq >= self.top {
            // The blocks the window moves into start empty: those after the highest one's,
            // up to the new one's (all of them after a jump of a whole ring).
            let first = if self.top == 0 {
                0
            } else {
                (self.top - 1) / 64 + 1
            };
            let last = seq / 64;
            if last >= first {
                let fresh = (last - first + 1).min(BLOCKS as u64);
                for b in 0..fresh {
                    self.seen[((first + b) % BLOCKS as u64) as usize] = 0;
                }
            }
            self.top = seq + 1;
        }
        let (block, bit) = slot(seq);
        self.seen[block] |= bit;
    }
}

/// Where a sequence number's bit is in the replay ring.
fn slot(seq: u64) -> (usize, u64) {
    (((seq / 64) % BLOCKS as u64) as usize, 1 << (seq % 64))
}

/// RFC 8439 §2.8's nonce from a sequence number: 4 zero bytes and the number (each direction
/// has its own key, so the pair (key, nonce) never repeats).
fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Keys, Keys) {
        Keys::fixed_pair()
    }

    #[test]
    fn both_sides_derive_matching_keys_and_passwords() {
        let (mut a, mut b) = pair();
        assert_eq!(a.send_tag, b.recv_tag);
        assert_eq!(a.recv_tag, b.send_tag);
        assert_ne!(a.send_tag, a.recv_tag);
        assert_eq!(
            (a.local_pwd.clone(), a.remote_pwd.clone()),
            (b.remote_pwd.clone(), b.local_pwd.clone())
        );
        assert_eq!(a.local_pwd.len(), 24);
        let sealed = a.seal(Kind::Data, b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(tag_of(&sealed), Some(b.recv_tag));
        assert_eq!(b.open(&sealed), Ok((Kind::Data, b"hello".to_vec())));
        // A datagram sealed for the other direction does not open here (its sequence number,
        // 1, is fresh for b's window: what refuses it is the key).
        let _ = b.seal(Kind::Data, b"first");
        let back = b.seal(Kind::Close, b"");
        assert_eq!(b.open(&back), Err(Refused::Forged));
        assert_eq!(a.open(&back), Ok((Kind::Close, vec![])));
    }

    /// Sealing in a reused buffer (what the node does with the buffers of datagrams already
    /// sent) gives the bytes `seal` gives, whatever the buffer held before; opening into a
    /// reused buffer gives the kind byte and the payload, and refuses what `open` refuses.
    #[test]
    fn sealing_and_opening_in_reused_buffers_change_no_byte() {
        let (mut a, mut b) = pair();
        let (mut a2, _) = pair();
        let mut reused = vec![0xAA; 200];
        for payload in [&b"first"[..], &[7u8; 150][..], b""] {
            let want = a2.seal(Kind::Transport, payload);
            reused.truncate(PAYLOAD_AT);
            reused.extend_from_slice(payload);
            a.seal_in_place(Kind::Transport, &mut reused);
            assert_eq!(reused, want);
            let mut plain = vec![0x55; 300];
            assert_eq!(b.open_into(&reused, &mut plain), Ok(Kind::Transport));
            assert_eq!(&plain[1..], payload);
            assert_eq!(b.open_into(&reused, &mut plain), Err(Refused::Replayed));
        }
        let mut quic = vec![0xAA; QUIC_PACKET_AT];
        quic.extend_from_slice(b"packet");
        a.tag_quic_in_place(&mut quic);
        assert_eq!(quic, a.tag_quic(b"packet"));
        assert_eq!(quic_of(&quic), Some((b.recv_tag, &b"packet"[..])));
    }

    /// The seal is RFC 8439's AEAD as any implementation has it: RustCrypto's
    /// `chacha20poly1305` (what the node sealed with before ring) opens what ring sealed, with
    /// the header as associated data and the nonce from the sequence number. Nodes of either
    /// build therefore talk to each other.
    #[test]
    fn another_implementation_opens_what_we_seal() {
        use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
        let (mut a, _) = pair();
        let _ = a.seal(Kind::Data, b"first");
        let sealed = a.seal(Kind::Transport, b"second datagram");
        let cipher = chacha20poly1305::ChaCha20Poly1305::new((&a.send_key).into());
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - AEAD_TAG_LEN);
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&1u64.to_be_bytes());
        let mut plain = ciphertext.to_vec();
        cipher
            .decrypt_in_place_detached((&n).into(), header, &mut plain, tag.into())
            .expect("RustCrypto opens it");
        assert_eq!(plain[0], Kind::Transport as u8);
        assert_eq!(&plain[1..], b"second datagram");
    }

    #[test]
    fn forged_altered_and_replayed_datagrams_are_refused() {
        let (mut a, mut b) = pair();
        let sealed = a.seal(Kind::Data, b"payload");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            if (1..9).contains(&i) {
                continue; // the tag routes; flipping it sends the datagram elsewhere
            }
            assert!(b.open(&bad).is_err(), "a flipped bit at {i} went through");
        }
        assert!(b.open(&sealed).is_ok());
        assert_eq!(b.open(&sealed), Err(Refused::Replayed));
        // Reordering within the window is fine, once each; too old is not. (`sealed` was 0.)
        let n = WINDOW as usize + 10;
        let later: Vec<Vec<u8>> = (0..n).map(|_| a.seal(Kind::Data, b"x")).collect();
        assert!(b.open(&later[n - 1]).is_ok());
        assert!(b.open(&later[10]).is_ok(), "WINDOW - 1 behind: inside");
        assert_eq!(b.open(&later[10]), Err(Refused::Replayed));
        assert_eq!(
            b.open(&later[8]),
            Err(Refused::Replayed),
            "WINDOW + 1 behind: too old"
        );
        assert!(b.open(&later[500]).is_ok(), "deep inside, once");
        assert_eq!(b.open(&later[500]), Err(Refused::Replayed));
        assert!(b.open(&later[n - 2]).is_ok(), "just behind the top");
        assert_eq!(b.open(&[FRAMING; 10]), Err(Refused::Forged));
    }

    #[test]
    fn the_replay_ring_agrees_with_a_plain_set() {
        let (_, mut b) = pair();
        let mut taken = std::collections::BTreeSet::new();
        let mut top = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Mostly near the top, behind and ahead; now and then a jump of several rings.
            let r = x >> 33;
            let seq = match r % 100 {
                0 => top + 5_000 + r % 10_000,
                1..=30 => top + r % 80,
                _ => top.saturating_sub(r % (WINDOW + 200)),
            };
            let model = !taken.contains(&seq) && (seq >= top || top - 1 - seq < WINDOW);
            assert_eq!(b.fresh(seq), model, "seq {seq}, top {top}");
            if model {
                b.mark(seq);
                taken.insert(seq);
                top = top.max(seq + 1);
            }
        }
    }
}
