use super::*;
use proptest::prelude::*;
use std::net::SocketAddr;

/// Bytes from hex with whitespace and `#` comments.
fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// An Allocate request for UDP, no trailer (RFC 8656 §7.1, §18.7).
const ALLOCATE: &str = "
    00 03 00 08   # Allocate request, length 8
    21 12 a4 42   # magic cookie
    b7 e7 a7 01 bc 34 d6 86 fa 87 df ae   # transaction ID
    00 19 00 04   # REQUESTED-TRANSPORT
    11 00 00 00   # UDP, RFFU
";

/// A Send indication to 192.0.2.1:32853 carrying \"hi\" (RFC 8656 §11.1, §18.3, §18.4). The
/// address is XORed as in RFC 5769 §2.2: port 0x8055 ^ 0x2112, address ^ 0x2112a442.
const SEND: &str = "
    00 16 00 14   # Send indication, length 20
    21 12 a4 42
    b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    00 12 00 08   # XOR-PEER-ADDRESS
    00 01 a1 47   # IPv4, port 32853
    e1 12 a6 43   # 192.0.2.1
    00 13 00 02   # DATA
    68 69 00 00   # \"hi\", padded
";

#[test]
fn allocate_request_bytes() {
    let mut m = TurnMessage::new(Class::Request, method::ALLOCATE, TransactionId::new(TID));
    m.requested_transport = Some(TRANSPORT_UDP);
    m.fingerprint = false;
    assert_eq!(m.to_bytes(None).unwrap(), hex(ALLOCATE));
    let back = TurnMessage::decode(&hex(ALLOCATE)).unwrap();
    assert_eq!(back, m);
}

#[test]
fn send_indication_bytes() {
    let mut m = TurnMessage::new(Class::Indication, method::SEND, TransactionId::new(TID));
    m.xor_peer_addresses = vec!["192.0.2.1:32853".parse().unwrap()];
    m.data = Some(b"hi".to_vec());
    m.fingerprint = false;
    assert_eq!(m.to_bytes(None).unwrap(), hex(SEND));
    assert_eq!(TurnMessage::decode(&hex(SEND)).unwrap(), m);
}

/// Every attribute, IPv6 addresses (masked with the transaction ID too), MESSAGE-INTEGRITY with
/// a long-term key and FINGERPRINT: decodes to the same message, verifies with the key only.
#[test]
fn round_trip_with_trailer() {
    let mut m = TurnMessage::new(
        Class::SuccessResponse,
        method::ALLOCATE,
        TransactionId::new(TID),
    );
    m.username = Some("1700000000:peer".to_owned());
    m.realm = Some("fog".to_owned());
    m.nonce = Some("abcdef".to_owned());
    m.xor_mapped_address = Some("[2001:db8::1]:40000".parse().unwrap());
    m.xor_relayed_address = Some("198.51.100.1:50000".parse().unwrap());
    m.xor_peer_addresses = vec![
        "[2001:db8::2]:1".parse().unwrap(),
        "203.0.113.9:65535".parse().unwrap(),
    ];
    m.lifetime = Some(600);
    m.channel_number = Some(0x4001);
    m.requested_address_family = Some(AddressFamily::V4);
    m.even_port = Some(false);
    m.data = Some(vec![1, 2, 3, 4, 5]);
    m.software = Some("x".to_owned());
    let key = IntegrityKey::long_term("1700000000:peer", "fog", "secret");
    let bytes = m.to_bytes(Some(&key)).unwrap();
    assert_eq!(bytes.len(), m.encoded_len(true));
    let back = TurnMessage::decode(&bytes).unwrap();
    assert!(back.integrity && back.fingerprint);
    assert_eq!(
        TurnMessage {
            integrity: false,
            ..back
        },
        m
    );
    verify_integrity(&bytes, &key).unwrap();
    let wrong = IntegrityKey::long_term("1700000000:peer", "fog", "other");
    assert_eq!(
        verify_integrity(&bytes, &wrong),
        Err(DecodeError::IntegrityMismatch)
    );
    // A flipped bit in DATA breaks FINGERPRINT, which decode checks.
    let mut bad = bytes.clone();
    let at = bad.windows(5).position(|w| w == [1, 2, 3, 4, 5]).unwrap();
    bad[at] ^= 1;
    assert_eq!(
        TurnMessage::decode(&bad),
        Err(DecodeError::FingerprintMismatch)
    );
}

#[test]
fn error_response_round_trip() {
    let request = TurnMessage::new(Class::Request, method::REFRESH, TransactionId::new(TID));
    let mut e = TurnMessage::error_response(&request, code::STALE_NONCE);
    e.nonce = Some("n2".to_owned());
    e.realm = Some("fog".to_owned());
    let back = TurnMessage::decode(&e.to_bytes(None).unwrap()).unwrap();
    assert_eq!(back.error_code(), Some(438));
    assert_eq!(back.error.unwrap().reason, "Stale Nonce");
    assert_eq!(back.nonce.as_deref(), Some("n2"));
    assert_eq!(back.method, method::REFRESH);
    assert_eq!(back.class, Class::ErrorResponse);
}

/// A 300 carries ALTERNATE-SERVER as a plain address (RFC 8489 §14.15), v4 and v6, and the
/// bytes are the family, the port and the address as they are (no XOR).
#[test]
fn try_alternate_round_trip() {
    let request = TurnMessage::new(Class::Request, method::ALLOCATE, TransactionId::new(TID));
    for alternate in ["192.0.2.7:3478", "[2001:db8::7]:3479"] {
        let alternate: SocketAddr = alternate.parse().unwrap();
        let mut e = TurnMessage::error_response(&request, code::TRY_ALTERNATE);
        e.alternate_server = Some(alternate);
        let bytes = e.to_bytes(None).unwrap();
        assert_eq!(bytes.len(), e.encoded_len(false));
        let back = TurnMessage::decode(&bytes).unwrap();
        assert_eq!(back.error_code(), Some(300));
        assert_eq!(back.alternate_server, Some(alternate));
        let port = alternate.port().to_be_bytes();
        assert!(
            bytes
                .windows(4)
                .any(|w| w == [0x80, 0x23, 0, if alternate.is_ipv4() { 8 } else { 20 }])
        );
        assert!(bytes.windows(2).any(|w| w == port));
    }
}

/// TURN attributes are understood (EVEN-PORT with R set, the first one counting);
/// RESERVATION-TOKEN and DONT-FRAGMENT (not supported) are reported for a 420, once each.
#[test]
fn unknown_required_lists_only_what_is_not_understood() {
    let mut bytes = hex(ALLOCATE);
    bytes.extend_from_slice(&hex("00 18 00 01 80 00 00 00
         00 22 00 08 01 02 03 04 05 06 07 08
         00 1a 00 00
         00 18 00 01 00 00 00 00
         00 22 00 08 01 02 03 04 05 06 07 08"));
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let m = TurnMessage::decode(&bytes).unwrap();
    assert_eq!(m.requested_transport, Some(17));
    assert_eq!(m.even_port, Some(true));
    assert_eq!(
        m.unknown_required,
        vec![
            attribute_type::RESERVATION_TOKEN,
            attribute_type::DONT_FRAGMENT
        ]
    );
}

#[test]
fn malformed_turn_attributes_are_errors() {
    // LIFETIME of 3 bytes.
    let mut bytes = hex(ALLOCATE);
    bytes.extend_from_slice(&hex("00 0d 00 03 00 00 01 00"));
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        TurnMessage::decode(&bytes),
        Err(DecodeError::InvalidAttribute(attribute_type::LIFETIME))
    );
    // XOR-PEER-ADDRESS with family 3.
    let mut bytes = hex(SEND);
    bytes[25] = 0x03;
    assert_eq!(
        TurnMessage::decode(&bytes),
        Err(DecodeError::InvalidAttribute(
            attribute_type::XOR_PEER_ADDRESS
        ))
    );
}

#[test]
fn encode_refuses_bad_values_and_small_buffers() {
    let mut m = TurnMessage::new(Class::Request, method::ALLOCATE, TransactionId::new(TID));
    m.username = Some("u".repeat(MAX_USERNAME_LEN + 1));
    assert_eq!(
        m.to_bytes(None),
        Err(EncodeError::InvalidAttribute(attribute_type::USERNAME))
    );
    m.username = None;
    m.error = Some(ErrorCode {
        code: 700,
        reason: String::new(),
    });
    assert_eq!(
        m.to_bytes(None),
        Err(EncodeError::InvalidAttribute(attribute_type::ERROR_CODE))
    );
    m.error = None;
    let mut small = [0u8; 27];
    assert_eq!(
        m.encode(None, &mut small),
        Err(EncodeError::BufferTooSmall { needed: 28 })
    );
    m.data = Some(vec![0; 70_000]);
    assert_eq!(m.to_bytes(None), Err(EncodeError::TooLong));
}

#[test]
fn channel_data_bytes() {
    let msg = ChannelData {
        channel: 0x4001,
        data: b"abc",
    };
    let mut buf = [0xffu8; 16];
    assert_eq!(msg.encode(false, &mut buf), Some(7));
    assert_eq!(&buf[..7], &hex("40 01 00 03 61 62 63")[..]);
    assert_eq!(msg.encode(true, &mut buf), Some(8));
    assert_eq!(&buf[..8], &hex("40 01 00 03 61 62 63 00")[..]);
    assert_eq!(ChannelData::decode(&buf[..8]), Ok(msg));
    assert_eq!(ChannelData::decode(&buf[..7]), Ok(msg));
    assert_eq!(
        ChannelData::decode(&buf[..6]),
        Err(ChannelDataError::Truncated)
    );
    assert_eq!(
        ChannelData::decode(&[0x40, 0]),
        Err(ChannelDataError::TooShort)
    );
    // RFC 5766's upper channels are accepted (see MAX_CHANNEL_ACCEPTED); 0x8000 is not.
    assert_eq!(
        ChannelData::decode(&hex("7f ff 00 00")),
        Ok(ChannelData {
            channel: 0x7fff,
            data: &[]
        })
    );
    assert_eq!(
        ChannelData::decode(&hex("80 00 00 00")),
        Err(ChannelDataError::BadChannel(0x8000))
    );
    assert_eq!(
        ChannelData::decode(&hex("3f ff 00 00")),
        Err(ChannelDataError::BadChannel(0x3fff))
    );
    assert_eq!(msg.encode(false, &mut buf[..6]), None);
    let empty = ChannelData {
        channel: 0x4fff,
        data: &[],
    };
    assert_eq!(empty.encode(true, &mut buf), Some(4));
    assert_eq!(ChannelData::decode(&buf[..4]), Ok(empty));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = TurnMessage::decode(&bytes);
        let _ = ChannelData::decode(&bytes);
    }

    /// Valid headers with arbitrary attribute bytes reach the attribute parsers.
    #[test]
    fn decode_of_arbitrary_attributes_never_panics(
        kind in prop_oneof![Just(0x000Cu16), Just(0x000D), Just(0x0012), Just(0x0013), Just(0x0016), Just(0x0017), Just(0x0019), any::<u16>()],
        value in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = hex(ALLOCATE);
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&value);
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let _ = TurnMessage::decode(&bytes);
    }

    #[test]
    fn round_trip(
        peers in proptest::collection::vec(arb_addr(), 0..4),
        relayed in proptest::option::of(arb_addr()),
        lifetime in proptest::option::of(any::<u32>()),
        channel in proptest::option::of(any::<u16>()),
        data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
        tid in any::<[u8; 12]>(),
    ) {
        let mut m = TurnMessage::new(Class::Indication, method::DATA, TransactionId::new(tid));
        m.xor_peer_addresses = peers;
        m.xor_relayed_address = relayed;
        m.lifetime = lifetime;
        m.channel_number = channel;
        m.data = data;
        let bytes = m.to_bytes(None).unwrap();
        prop_assert_eq!(TurnMessage::decode(&bytes).unwrap(), m);
    }
}
