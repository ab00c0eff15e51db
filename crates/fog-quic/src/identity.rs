//! Peers authenticated by their Ed25519 identities: no certificate authority, no host names.
//!
//! Each side presents a self-signed X.509 certificate whose key is its FogConnect identity key
//! ([`KeyPair`]). The verifiers here ignore names, chains, validity periods and CAs; they accept
//! a peer when the certificate's Ed25519 public key is the [`PeerId`] the caller expected (or, on
//! the accepting side, one the [`AcceptPolicy`] admits), and rustls still checks the TLS 1.3
//! `CertificateVerify` signature against that key (RFC 8446 §4.4.3), so holding a copy of
//! someone's certificate proves nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fog_signal::{KeyPair, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::time_provider::TimeProvider;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE, AlgorithmIdentifier
/// { id-Ed25519 (1.3.101.112) }, BIT STRING of 33 bytes (no unused bits) holding the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7): version 0, the algorithm,
/// and an OCTET STRING wrapping the OCTET STRING of the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A certificate and private key that present an identity in the TLS handshake.
#[derive(Clone)]
pub struct Certificate {
    der: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    peer_id: PeerId,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("peer_id", &self.peer_id)
            .field("fingerprint", &Fingerprint::of(&self.der))
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be made from an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateBuildError(String);

impl fmt::Display for CertificateBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot build the identity certificate: {}", self.0)
    }
}

impl std::error::Error for CertificateBuildError {}

impl Certificate {
    /// A self-signed certificate whose key is `identity`'s Ed25519 key.
    ///
    /// Ed25519 signatures are deterministic (RFC 8032 §5.1.6) and the certificate's fields are
    /// fixed, so the same identity always gives the same certificate and [`Fingerprint`].
    pub fn self_signed(identity: &KeyPair) -> Result<Self, CertificateBuildError> {
        let seed = identity.to_seed();
        let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + 32);
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(seed.as_slice());
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let signing = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
            .map_err(|e| CertificateBuildError(e.to_string()))?;
        // No names: peers are named by their keys. The subject says whose key it is, for people
        // reading a capture, and is never checked.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CertificateBuildError(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.peer_id().to_string());
        let cert = params
            .self_signed(&signing)
            .map_err(|e| CertificateBuildError(e.to_string()))?;
        let der = cert.der().clone();
        debug_assert_eq!(ed25519_key_of(&der), Some(identity.peer_id()));
        Ok(Certificate {
            der,
            key: Arc::new(key),
            peer_id: identity.peer_id(),
        })
    }

    /// The certificate in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whose certificate this is.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The certificate's fingerprint, for the Node to sign into its offers.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.der)
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// SHA-256 of a certificate's DER encoding (the form RFC 8122 §5 uses for `a=fingerprint`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    /// Upper-case hex pairs separated by colons, as in RFC 8122 §5.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Which peers an [`Endpoint`](crate::Endpoint) lets finish a handshake it did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// Anyone with a valid Ed25519 certificate; the owner compares the verified
    /// [`PeerId`] in [`Event::Connected`](crate::Event::Connected) with the offer it signed.
    Any,
    /// Only these peers; the others fail the handshake (TLS alert `access_denied`).
    Only(BTreeSet<PeerId>),
}

/// The Ed25519 public key in a DER certificate, if it has one.
///
/// A bounded walk of the DER structure down to the SubjectPublicKeyInfo (RFC 5280 §4.1):
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }`. Anything
/// malformed gives `None`; nothing here can panic on hostile bytes.
pub fn ed25519_key_of(der: &[u8]) -> Option<PeerId> {
    let (cert, _) = der_element(der, 0x30)?;
    let (mut tbs, _) = der_element(cert, 0x30)?;
    // The explicitly tagged version, when present.
    if tbs.first() == Some(&0xa0) {
        tbs = der_skip(tbs)?;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        tbs = der_skip(tbs)?;
    }
    let spki_len = der_total_len(tbs)?;
    let spki = tbs.get(..spki_len)?;
    spki_key(spki)
}

fn spki_key(spki: &[u8]) -> Option<PeerId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(PeerId::from_bytes(key))
}

fn spki_of(peer: &PeerId) -> SubjectPublicKeyInfoDer<'static> {
    let mut spki = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + 32);
    spki.extend_from_slice(&ED25519_SPKI_PREFIX);
    spki.extend_from_slice(peer.as_bytes());
    SubjectPublicKeyInfoDer::from(spki)
}

/// The header length and content length of the DER element at the start of `der`.
fn der_header(der: &[u8]) -> Option<(usize, usize)> {
    let first_len = *der.get(1)?;
    if first_len < 0x80 {
        return Some((2, usize::from(first_len)));
    }
    // Long form: 1 to 3 length bytes are plenty for a certificate (X.690 §8.1.3.5).
    let n = usize::from(first_len & 0x7f);
    if n == 0 || n > 3 {
        return None;
    }
    let mut len = 0usize;
    for &b in der.get(2..2 + n)? {
        len = (len << 8) | usize::from(b);
    }
    Some((2 + n, len))
}

fn der_total_len(der: &[u8]) -> Option<usize> {
    let (header, len) = der_header(der)?;
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some(total)
}

/// The content of the element at the start of `der` (which must have tag `tag`), and the rest.
fn der_element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *der.first()? != tag {
        return None;
    }
    let (header, len) = der_header(der)?;
    let content = der.get(header..header.checked_add(len)?)?;
    Some((content, der.get(header + len..)?))
}

/// `der` after its first element.
fn der_skip(der: &[u8]) -> Option<&[u8]> {
    der.get(der_total_len(der)?..)
}

/// rustls asks for the time only to check validity periods and session tickets; our verifiers
/// ignore validity periods (the key is the identity) and resumption is off, so a fixed instant
/// keeps the wall clock out of this crate.
#[derive(Debug)]
pub(crate) struct NoClock;

impl TimeProvider for NoClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::ZERO))
    }
}

/// The ring provider, the only crypto provider this crate uses (STYLE.md: never aws-lc).
///
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange; our peers (and aioquic)
/// agree on X25519 or the NIST curves, and the alternative providers are the aws-lc ones.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    // One per process: every endpoint's TLS configurations and every verifier share it (a
    // provider is a few hundred bytes of tables, and the Node makes an endpoint per QUIC
    // connection).
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Checks a TLS 1.3 handshake signature against the certificate's Ed25519 key, which must be
/// `expected` (or admitted by `admit`).
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    let key = ed25519_key_of(cert).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))?;
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki_of(&key), dss, algorithms)
}

/// The key of a peer's end-entity certificate, checked to be an Ed25519 key.
fn peer_key(end_entity: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    ed25519_key_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))
}

/// The signature half of both verifiers: TLS 1.3 only (QUIC, RFC 9001 §4.2), Ed25519 only, the
/// `CertificateVerify` checked against the certificate's key.
macro_rules! ed25519_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// The dialling side's verifier: the server's key must be the one the caller expected.
#[derive(Debug)]
pub(crate) struct ExpectedPeer {
    expected: PeerId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ExpectedPeer {
    pub(crate) fn new(expected: PeerId) -> Self {
        ExpectedPeer {
            expected,
            algorithms: algorithms(),
        }
    }
}

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if peer_key(end_entity)? == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    ed25519_signatures!();
}

/// The accepting side's verifier: any Ed25519 certificate, or only the peers the policy names.
/// The policy is shared with the [`Endpoint`](crate::Endpoint), so changing it applies to
/// handshakes that have not yet reached the client's certificate.
#[derive(Debug)]
pub(crate) struct PolicyVerifier {
    policy: Arc<Mutex<AcceptPolicy>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PolicyVerifier {
    pub(crate) fn new(policy: Arc<Mutex<AcceptPolicy>>) -> Self {
        PolicyVerifier {
            policy,
            algorithms: algorithms(),
        }
    }
}

impl ClientCertVerifier for PolicyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = peer_key(end_entity)?;
        // A poisoned lock means a panic elsewhere already; refusing is the safe answer.
        let admitted = match &*self
            .policy
            .lock()
            .map_err(|_| rustls::Error::General("accept policy unavailable".into()))?
        {
            AcceptPolicy::Any => true,
            AcceptPolicy::Only(peers) => peers.contains(&key),
        };
        if admitted {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    ed25519_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_identity_key() {
        let identity = KeyPair::from_seed(&[7; 32]);
        let cert = Certificate::self_signed(&identity).unwrap();
        assert_eq!(ed25519_key_of(cert.der()), Some(identity.peer_id()));
        // Deterministic: same key, same certificate, same fingerprint.
        let again = Certificate::self_signed(&identity).unwrap();
        assert_eq!(cert.fingerprint(), again.fingerprint());
        let other = Certificate::self_signed(&KeyPair::from_seed(&[8; 32])).unwrap();
        assert_ne!(cert.fingerprint(), other.fingerprint());
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let f = Fingerprint::of(b"abc");
        assert_eq!(
            f.to_string(),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn truncated_or_mangled_certificates_have_no_key() {
        let cert = Certificate::self_signed(&KeyPair::from_seed(&[9; 32])).unwrap();
        let der = cert.der();
        for len in 0..der.len() {
            // The outer length then claims more than there is.
            assert_eq!(ed25519_key_of(&der[..len]), None, "truncated to {len}");
        }
        for i in 0..der.len() {
            let mut bad = der.to_vec();
            bad[i] ^= 0xff;
            let _ = ed25519_key_of(&bad);
        }
        assert_eq!(ed25519_key_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
