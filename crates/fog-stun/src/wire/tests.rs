use super::*;
use proptest::prelude::*;

/// Bytes from hex with whitespace and `#` comments, the layout RFC 5769 prints its vectors in.
fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

const RFC5769_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
const RFC5769_TRANSACTION: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1: sample request.
const RFC5769_2_1: &str = "
    00 01 00 58   # Request type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 10   # SOFTWARE attribute header
    53 54 55 4e   # }
    20 74 65 73   # }  User-agent...
    74 20 63 6c   # }  ...name
    69 65 6e 74   # }
    00 24 00 04   # PRIORITY attribute header
    6e 00 01 ff   # ICE priority value
    80 29 00 08   # ICE-CONTROLLED attribute header
    93 2f f9 b1   # }  Pseudo-random tie breaker...
    51 26 3b 36   # }   ...for ICE control
    00 06 00 09   # USERNAME attribute header
    65 76 74 6a   # }
    3a 68 36 76   # }  Username (9 bytes) and padding (3 bytes)
    59 20 20 20   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    9a ea a7 0c   # }
    bf d8 cb 56   # }
    78 1e f2 b5   # }  HMAC-SHA1 fingerprint
    b2 d3 f2 49   # }
    c1 b5 71 a2   # }
    80 28 00 04   # FINGERPRINT attribute header
    e5 7a 3b cf   # CRC32 fingerprint
";

/// RFC 5769 §2.2: sample IPv4 response.
const RFC5769_2_2: &str = "
    01 01 00 3c   # Response type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 0b   # SOFTWARE attribute header
    74 65 73 74   # }
    20 76 65 63   # }  UTF-8 server name
    74 6f 72 20   # }
    00 20 00 08   # XOR-MAPPED-ADDRESS attribute header
    00 01 a1 47   # Address family (IPv4) and xor'd mapped port number
    e1 12 a6 43   # Xor'd mapped IPv4 address
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    2b 91 f5 99   # }
    fd 9e 90 c3   # }
    8c 74 89 f9   # }  HMAC-SHA1 fingerprint
    2a f9 ba 53   # }
    f0 6b e7 d7   # }
    80 28 00 04   # FINGERPRINT attribute header
    c0 7d 4c 96   # CRC32 fingerprint
";

/// RFC 5769 §2.3: sample IPv6 response.
const RFC5769_2_3: &str = "
    01 01 00 48   # Response type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 0b   # SOFTWARE attribute header
    74 65 73 74   # }
    20 76 65 63   # }  UTF-8 server name
    74 6f 72 20   # }
    00 20 00 14   # XOR-MAPPED-ADDRESS attribute header
    00 02 a1 47   # Address family (IPv6) and xor'd mapped port number
    01 13 a9 fa   # }
    a5 d3 f1 79   # }  Xor'd mapped IPv6 address
    bc 25 f4 b5   # }
    be d2 b9 d9   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    a3 82 95 4e   # }
    4b e6 7b f1   # }
    17 84 c9 7c   # }  HMAC-SHA1 fingerprint
    82 92 c2 75   # }
    bf e3 ed 41   # }
    80 28 00 04   # FINGERPRINT attribute header
    c8 fb 0b 4c   # CRC32 fingerprint
";

/// RFC 5769 §2.4: sample request with long-term authentication.
const RFC5769_2_4: &str = "
    00 01 00 60   # Request type and message length
    21 12 a4 42   # Magic cookie
    78 ad 34 33   # }
    c6 ad 72 c0   # }  Transaction ID
    29 da 41 2e   # }
    00 06 00 12   # USERNAME attribute header
    e3 83 9e e3   # }
    83 88 e3 83   # }
    aa e3 83 83   # }  Username value (18 bytes) and padding (2 bytes)
    e3 82 af e3   # }
    82 b9 00 00   # }
    00 15 00 1c   # NONCE attribute header
    66 2f 2f 34   # }
    39 39 6b 39   # }
    35 34 64 36   # }
    4f 4c 33 34   # }  Nonce value
    6f 4c 39 46   # }
    53 54 76 79   # }
    36 34 73 41   # }
    00 14 00 0b   # REALM attribute header
    65 78 61 6d   # }
    70 6c 65 2e   # }  Realm value (11 bytes) and padding (1 byte)
    6f 72 67 00   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    f6 70 24 65   # }
    6d d6 4a 3e   # }
    02 b8 e0 71   # }  HMAC-SHA1 fingerprint
    2e 85 c9 a2   # }
    8c a8 96 66   # }
";

/// RFC 5769 §2.4's username: "マトリックス" (MA TO RI RU KU SU), unchanged by SASLprep.
const RFC5769_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// RFC 5769 §2.4's password before SASLprep: soft hyphen (mapped to nothing), feminine ordinal
/// (NFKC: "a"), Roman numeral nine (NFKC: "IX").
const RFC5769_PASSWORD_RAW: &str = "The\u{00AD}M\u{00AA}tr\u{2168}";
/// The same after SASLprep.
const RFC5769_PASSWORD_PREPPED: &str = "TheMatrIX";

#[test]
fn rfc5769_2_1_request_with_short_term_integrity_and_fingerprint() {
    let bytes = hex(RFC5769_2_1);
    let message = Message::decode(&bytes).unwrap();
    assert_eq!(message.class, Class::Request);
    assert_eq!(message.method, Method::BINDING);
    assert_eq!(message.cookie, Cookie::Magic);
    assert_eq!(
        message.transaction_id,
        TransactionId::new(RFC5769_TRANSACTION)
    );
    assert_eq!(
        message.attributes.software.as_deref(),
        Some("STUN test client")
    );
    assert_eq!(message.attributes.username.as_deref(), Some("evtj:h6vY"));
    // The ICE attributes (RFC 8445 §16.1): PRIORITY 0x6e0001ff, ICE-CONTROLLED's tie-breaker.
    assert_eq!(message.attributes.priority, Some(0x6e00_01ff));
    assert_eq!(
        message.attributes.ice_controlled,
        Some(0x932f_f9b1_5126_3b36)
    );
    assert_eq!(message.attributes.ice_controlling, None);
    assert_eq!(message.attributes.nomination, None);
    assert!(!message.attributes.use_candidate);
    assert!(message.unknown_required.is_empty());
    assert!(message.integrity && message.fingerprint);

    let key = IntegrityKey::short_term(RFC5769_PASSWORD);
    assert_eq!(verify_integrity(&bytes, &key), Ok(()));
    assert_eq!(Message::decode_verified(&bytes, &key), Ok(message));
    assert_eq!(
        verify_integrity(&bytes, &IntegrityKey::short_term("wrong")),
        Err(DecodeError::IntegrityMismatch)
    );
}

#[test]
fn rfc5769_2_2_ipv4_response() {
    let bytes = hex(RFC5769_2_2);
    let key = IntegrityKey::short_term(RFC5769_PASSWORD);
    let message = Message::decode_verified(&bytes, &key).unwrap();
    assert_eq!(message.class, Class::SuccessResponse);
    // 11 bytes; the 12th (a space) is padding.
    assert_eq!(message.attributes.software.as_deref(), Some("test vector"));
    let response = BindingResponse::from_message(message).unwrap();
    assert_eq!(
        response.xor_mapped,
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert_eq!(response.mapped_address(), response.xor_mapped);
    assert!(response.error.is_none() && response.fingerprint);
}

#[test]
fn rfc5769_2_3_ipv6_response() {
    let bytes = hex(RFC5769_2_3);
    let key = IntegrityKey::short_term(RFC5769_PASSWORD);
    let response =
        BindingResponse::from_message(Message::decode_verified(&bytes, &key).unwrap()).unwrap();
    assert_eq!(
        response.xor_mapped,
        Some(
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        )
    );
}

#[test]
fn rfc5769_2_4_long_term_needs_the_saslprepped_password() {
    let bytes = hex(RFC5769_2_4);
    let message = Message::decode(&bytes).unwrap();
    let a = &message.attributes;
    assert_eq!(a.username.as_deref(), Some(RFC5769_USERNAME));
    assert_eq!(a.nonce.as_deref(), Some("f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(a.realm.as_deref(), Some("example.org"));
    assert!(message.integrity && !message.fingerprint);

    let prepped =
        IntegrityKey::long_term(RFC5769_USERNAME, "example.org", RFC5769_PASSWORD_PREPPED);
    assert_eq!(verify_integrity(&bytes, &prepped), Ok(()));
    // Without SASLprep the raw password gives another key: documented limitation.
    let raw = IntegrityKey::long_term(RFC5769_USERNAME, "example.org", RFC5769_PASSWORD_RAW);
    assert_eq!(
        verify_integrity(&bytes, &raw),
        Err(DecodeError::IntegrityMismatch)
    );

    // Zero padding and our attribute order match the vector, so encoding reproduces it exactly,
    // MESSAGE-INTEGRITY included.
    let request = BindingRequest {
        credentials: Some(Credentials::LongTerm {
            username: RFC5769_USERNAME.to_owned(),
            realm: "example.org".to_owned(),
            nonce: "f//499k954d6OL34oL9FSTvy64sA".to_owned(),
            password: RFC5769_PASSWORD_PREPPED.to_owned(),
        }),
        ..BindingRequest::new(message.transaction_id)
    };
    let mut buf = [0u8; 256];
    let n = request.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn tampering_is_caught_by_fingerprint_then_integrity() {
    let mut bytes = hex(RFC5769_2_2);
    bytes[24] ^= 0x01; // a SOFTWARE byte
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::FingerprintMismatch)
    );

    let mut bytes = hex(RFC5769_2_4);
    bytes[24] ^= 0x01; // a USERNAME byte; there is no FINGERPRINT
    let key = IntegrityKey::long_term(RFC5769_USERNAME, "example.org", RFC5769_PASSWORD_PREPPED);
    assert!(Message::decode(&bytes).is_ok());
    assert_eq!(
        Message::decode_verified(&bytes, &key),
        Err(DecodeError::IntegrityMismatch)
    );
    let plain = hex(RFC5769_2_2);
    let without = &plain[..]; // has MESSAGE-INTEGRITY
    assert!(Message::decode_verified(without, &key).is_err());
    let mut buf = [0u8; 64];
    let n = BindingRequest::new(TransactionId::new([1; 12]))
        .encode(&mut buf)
        .unwrap();
    assert_eq!(
        Message::decode_verified(&buf[..n], &key),
        Err(DecodeError::IntegrityMissing)
    );
}

fn every_attribute() -> Attributes {
    Attributes {
        mapped_address: Some("192.0.2.1:1".parse().unwrap()),
        xor_mapped_address: Some("[2001:db8::1]:65535".parse().unwrap()),
        username: Some("user".to_owned()),
        error_code: Some(ErrorCode::new(ErrorCode::UNKNOWN_ATTRIBUTE)),
        unknown_attributes: vec![0x0024, 0x7fff, 0x0002],
        realm: Some("realm".to_owned()),
        nonce: Some("nonce".to_owned()),
        software: Some(SOFTWARE.to_owned()),
        alternate_server: Some("198.51.100.7:3478".parse().unwrap()),
        change_request: Some(ChangeRequest {
            change_ip: true,
            change_port: false,
        }),
        response_port: Some(40_000),
        padding: Some(13),
        response_origin: Some("203.0.113.1:3478".parse().unwrap()),
        other_address: Some("203.0.113.2:3479".parse().unwrap()),
        source_address: Some("203.0.113.1:3478".parse().unwrap()),
        changed_address: Some("203.0.113.2:3479".parse().unwrap()),
        priority: Some(0x7e00_00ff),
        use_candidate: true,
        ice_controlled: Some(1),
        ice_controlling: Some(u64::MAX),
        nomination: Some(0x00ff_fffe),
    }
}

#[test]
fn round_trip_every_attribute_with_and_without_trailer() {
    let key = IntegrityKey::short_term("secret");
    for (with_key, fingerprint) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut message = Message::new(
            Class::ErrorResponse,
            Method::BINDING,
            TransactionId::new([9; 12]),
        );
        message.attributes = every_attribute();
        message.fingerprint = fingerprint;
        let bytes = message.to_bytes(with_key.then_some(&key)).unwrap();
        let decoded = Message::decode(&bytes).unwrap();
        let expected = Message {
            integrity: with_key,
            ..message.clone()
        };
        assert_eq!(decoded, expected);
        if with_key {
            assert_eq!(Message::decode_verified(&bytes, &key), Ok(expected));
        }
    }
}

#[test]
fn change_request_and_response_port_bits() {
    let mut message = Message::new(Class::Request, Method::BINDING, TransactionId::new([0; 12]));
    for (ip, port, word) in [
        (true, false, [0, 0, 0, 4]),
        (false, true, [0, 0, 0, 2]),
        (true, true, [0, 0, 0, 6]),
        (false, false, [0, 0, 0, 0]),
    ] {
        message.attributes.change_request = Some(ChangeRequest {
            change_ip: ip,
            change_port: port,
        });
        let bytes = message.to_bytes(None).unwrap();
        // RFC 5780 §7.2: "A" (change IP) is 0x4, "B" (change port) is 0x2.
        assert_eq!(
            &bytes[20..],
            &[&[0x00, 0x03, 0x00, 0x04][..], &word].concat()[..]
        );
        assert_eq!(
            Message::decode(&bytes).unwrap().attributes.change_request,
            message.attributes.change_request
        );
    }
    message.attributes.change_request = None;
    message.attributes.response_port = Some(0x1234);
    let bytes = message.to_bytes(None).unwrap();
    // RFC 5780 §7.5: the port, then two bytes of padding.
    assert_eq!(&bytes[20..], &hex("0027 0004 1234 0000")[..]);
}

#[test]
fn message_type_interleaves_the_class_bits() {
    // RFC 5389 §6: Binding request 0x0001, success 0x0101, error 0x0111; every method bit set
    // in an indication is 0x3EFF.
    for (class, method, expected) in [
        (Class::Request, 0x001, 0x0001u16),
        (Class::SuccessResponse, 0x001, 0x0101),
        (Class::ErrorResponse, 0x001, 0x0111),
        (Class::Indication, 0xFFF, 0x3EFF),
    ] {
        let message = Message::new(
            class,
            Method::new(method).unwrap(),
            TransactionId::default(),
        );
        let bytes = message.to_bytes(None).unwrap();
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), expected);
        assert_eq!(Message::decode(&bytes), Ok(message));
    }
}

#[test]
fn padding_content_is_free_form_and_only_its_length_is_kept() {
    // A request with PADDING of 5 bytes of 0xAA (plus 3 alignment bytes of 0xBB) and a
    // FINGERPRINT over those bytes: both are accepted as sent.
    let mut bytes = hex("0001 0000 2112a442 000000000000000000000000 0026 0005 aaaaaaaaaa bbbbbb");
    bytes.resize(bytes.len() + 8, 0);
    let n = trailer::append_fingerprint(&mut bytes, 32);
    let with_fp = &bytes[..n];
    let message = Message::decode(with_fp).unwrap();
    assert_eq!(message.attributes.padding, Some(5));
    assert!(message.fingerprint);
    // Emitted as zeros.
    let out = message.to_bytes(None).unwrap();
    assert_eq!(&out[20..32], &hex("0026 0005 0000000000 000000")[..]);
}

#[test]
fn classic_rfc3489_response_from_stund() {
    // What stund sends: no cookie (the 128-bit ID starts 0xdeadbeef), MAPPED-ADDRESS,
    // SOURCE-ADDRESS, CHANGED-ADDRESS (RFC 3489 §11.1).
    let bytes = hex("
        0101 0024 deadbeef 0102030405060708090a0b0c
        0001 0008 0001 1f90 c0000201   # MAPPED-ADDRESS 192.0.2.1:8080
        0004 0008 0001 0d96 cb007101   # SOURCE-ADDRESS 203.0.113.1:3478
        0005 0008 0001 0d97 cb007102   # CHANGED-ADDRESS 203.0.113.2:3479
    ");
    let message = Message::decode(&bytes).unwrap();
    assert_eq!(message.cookie, Cookie::Classic([0xde, 0xad, 0xbe, 0xef]));
    let response = BindingResponse::from_message(message.clone()).unwrap();
    assert_eq!(
        response.mapped_address(),
        Some("192.0.2.1:8080".parse().unwrap())
    );
    assert_eq!(response.origin(), Some("203.0.113.1:3478".parse().unwrap()));
    assert_eq!(response.other(), Some("203.0.113.2:3479".parse().unwrap()));
    assert!(response.xor_mapped.is_none() && response.response_origin.is_none());
    // Re-encoding keeps the 128-bit ID and reproduces the bytes.
    assert_eq!(response.to_message().to_bytes(None).unwrap(), bytes);
    let mut signed = response;
    signed.fingerprint = true;
    assert_eq!(
        signed.encode(&mut [0u8; 128]),
        Err(EncodeError::ClassicTrailer)
    );
}

#[test]
fn trailer_placement_rules() {
    let tid = TransactionId::new([5; 12]);
    let mut message = Message::new(Class::Request, Method::BINDING, tid);
    message.fingerprint = true;
    let mut bytes = message.to_bytes(None).unwrap();
    // An attribute after FINGERPRINT (RFC 5389 §15.5).
    bytes.extend_from_slice(&hex("8022 0000"));
    let len = (bytes.len() - HEADER_LEN) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::FingerprintNotLast)
    );

    // MESSAGE-INTEGRITY must be 20 bytes.
    let bytes = hex("0001 0008 2112a442 050505050505050505050505 0008 0004 00000000");
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::InvalidAttribute(
            attribute_type::MESSAGE_INTEGRITY
        ))
    );

    // Attributes after MESSAGE-INTEGRITY are ignored (RFC 5389 §15.4), even unknown required
    // ones; a FINGERPRINT after it is checked.
    let key = IntegrityKey::short_term("k");
    let mut message = Message::new(Class::Request, Method::BINDING, tid);
    message.attributes.software = Some("before".to_owned());
    let mut bytes = message.to_bytes(Some(&key)).unwrap();
    bytes.extend_from_slice(&hex("7777 0000"));
    let len = (bytes.len() - HEADER_LEN) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let decoded = Message::decode_verified(&bytes, &key).unwrap();
    assert!(decoded.unknown_required.is_empty());
    assert_eq!(decoded.attributes.software.as_deref(), Some("before"));
}

#[test]
fn unknown_attributes_required_versus_optional() {
    let bytes = hex("
        0001 0014 2112a442 000000000000000000000000
        0002 0000            # RESPONSE-ADDRESS (RFC 3489): required, not understood here
        c0ff 0000            # comprehension-optional: ignored
        0002 0000            # repeated: listed once
        0030 0004 00000000   # another required one
    ");
    let message = Message::decode(&bytes).unwrap();
    assert_eq!(message.unknown_required, [0x0002, 0x0030]);
}

#[test]
fn invalid_values_name_their_attribute() {
    // MAPPED-ADDRESS with address family 3.
    let bytes = hex("0101 000c 2112a442 000000000000000000000000 0001 0008 0003 0000 00000000");
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::InvalidAttribute(
            attribute_type::MAPPED_ADDRESS
        ))
    );
    // SOFTWARE that is not UTF-8.
    let bytes = hex("0101 0008 2112a442 000000000000000000000000 8022 0002 ff fe 0000");
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::InvalidAttribute(attribute_type::SOFTWARE))
    );
}

#[test]
fn encode_errors_are_the_callers() {
    let tid = TransactionId::new([0; 12]);
    let request = BindingRequest::new(tid);
    assert_eq!(
        request.encode(&mut [0u8; 19]),
        Err(EncodeError::BufferTooSmall { needed: 20 })
    );
    let mut message = Message::new(Class::Request, Method::BINDING, tid);
    message.attributes.software = Some("x".repeat(200));
    assert_eq!(
        message.to_bytes(None),
        Err(EncodeError::InvalidAttribute(attribute_type::SOFTWARE))
    );
    message.attributes.software = None;
    message.attributes.padding = Some(u16::MAX);
    message.attributes.username = Some("u".to_owned());
    assert_eq!(message.to_bytes(None), Err(EncodeError::TooLong));
    message.attributes.username = None;
    message.attributes.padding = Some(u16::MAX - 4 - 3);
    assert_eq!(message.to_bytes(None).map(|b| b.len()), Ok(20 + 65_532));
}

#[test]
fn binding_request_attributes() {
    let request = BindingRequest {
        change_ip: true,
        change_port: true,
        padding: Some(100),
        software: true,
        fingerprint: true,
        ..BindingRequest::new(TransactionId::new([3; 12]))
    };
    let mut buf = [0u8; 512];
    let n = request.encode(&mut buf).unwrap();
    let message = Message::decode(&buf[..n]).unwrap();
    assert_eq!(
        message.attributes.change_request,
        Some(ChangeRequest {
            change_ip: true,
            change_port: true
        })
    );
    assert_eq!(message.attributes.padding, Some(100));
    assert_eq!(message.attributes.software.as_deref(), Some(SOFTWARE));
    assert!(message.fingerprint && !message.integrity);
    // No flags, no CHANGE-REQUEST.
    let plain = BindingRequest::new(TransactionId::new([3; 12]));
    assert_eq!(plain.encode(&mut buf), Ok(20));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 :/\u{e9}\u{30de}]{0,40}"
}

prop_compose! {
    fn arb_attributes()(
        addrs in proptest::collection::vec(proptest::option::of(arb_addr()), 8),
        texts in proptest::collection::vec(proptest::option::of(arb_text()), 4),
        error in proptest::option::of((300u16..600, arb_text())),
        unknown in proptest::collection::vec(any::<u16>(), 0..6),
        change in proptest::option::of((any::<bool>(), any::<bool>())),
        response_port in proptest::option::of(any::<u16>()),
        padding in proptest::option::of(0u16..2000),
        ice in (proptest::option::of(any::<u32>()), any::<bool>(), proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>())),
        nomination in proptest::option::of(0u32..0x0100_0000),
    ) -> Attributes {
        Attributes {
            mapped_address: addrs[0],
            xor_mapped_address: addrs[1],
            alternate_server: addrs[2],
            response_origin: addrs[3],
            other_address: addrs[4],
            source_address: addrs[5],
            changed_address: addrs[6],
            username: texts[0].clone(),
            realm: texts[1].clone(),
            nonce: texts[2].clone(),
            software: texts[3].clone(),
            error_code: error.map(|(code, reason)| ErrorCode { code, reason }),
            unknown_attributes: unknown,
            change_request: change.map(|(change_ip, change_port)| ChangeRequest { change_ip, change_port }),
            response_port,
            padding,
            priority: ice.0,
            use_candidate: ice.1,
            ice_controlled: ice.2,
            ice_controlling: ice.3,
            nomination,
        }
    }
}

fn arb_class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::SuccessResponse),
        Just(Class::ErrorResponse),
    ]
}

/// Bytes shaped like STUN (valid header and attribute layout, random types and values), so that
/// decoding gets past the packet checks into the attribute decoders.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    let attr = (
        prop_oneof![
            Just(0x0001u16),
            Just(0x0003),
            Just(0x0004),
            Just(0x0005),
            Just(0x0006),
            Just(0x0008),
            Just(0x0009),
            Just(0x000A),
            Just(0x0014),
            Just(0x0015),
            Just(0x0020),
            Just(0x0026),
            Just(0x0027),
            Just(0x8020),
            Just(0x8022),
            Just(0x8023),
            Just(0x8028),
            Just(0x802B),
            Just(0x802C),
            any::<u16>(),
        ],
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    (
        0u16..0x4000,
        any::<bool>(),
        any::<[u8; 16]>(),
        proptest::collection::vec(attr, 0..8),
    )
        .prop_map(|(kind, magic, id, attrs)| {
            let mut body = Vec::new();
            for (t, value) in attrs {
                body.extend_from_slice(&t.to_be_bytes());
                body.extend_from_slice(&(value.len() as u16).to_be_bytes());
                body.extend_from_slice(&value);
                body.resize(body.len() + packet::padded(value.len()) - value.len(), 0);
            }
            let mut bytes = kind.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            if magic {
                bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
                bytes.extend_from_slice(&id[4..]);
            } else {
                bytes.extend_from_slice(&id);
            }
            bytes.extend_from_slice(&body);
            bytes
        })
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
        let _ = verify_integrity(&bytes, &IntegrityKey::short_term("k"));
    }

    #[test]
    fn decode_never_panics_on_stun_shaped_bytes(bytes in stun_shaped()) {
        if let Ok(message) = Message::decode(&bytes) {
            // Whatever decodes re-encodes (classic messages without a trailer), and the
            // re-encoding decodes to the same Repr.
            let mut message = message;
            if matches!(message.cookie, Cookie::Classic(_)) {
                message.fingerprint = false;
            }
            message.integrity = false;
            message.unknown_required.clear();
            if let Ok(again) = message.to_bytes(None) {
                prop_assert_eq!(Message::decode(&again), Ok(message));
            }
        }
        let _ = Message::decode_verified(&bytes, &IntegrityKey::short_term("k"));
    }

    #[test]
    fn round_trip(
        class in arb_class(),
        method in 0u16..0x1000,
        id in any::<[u8; 12]>(),
        classic in proptest::option::of(any::<[u8; 4]>()),
        attributes in arb_attributes(),
        fingerprint in any::<bool>(),
        key in proptest::option::of("[a-z]{1,12}"),
    ) {
        let mut message = Message::new(class, Method::new(method).unwrap(), TransactionId::new(id));
        message.attributes = attributes;
        // A classic cookie that happens to be the magic one is a modern message.
        message.cookie = match classic {
            Some(c) if u32::from_be_bytes(c) != MAGIC_COOKIE => Cookie::Classic(c),
            _ => Cookie::Magic,
        };
        let classic = message.cookie != Cookie::Magic;
        message.fingerprint = fingerprint && !classic;
        let key = key.filter(|_| !classic).map(|k| IntegrityKey::short_term(&k));
        let bytes = message.to_bytes(key.as_ref()).unwrap();
        let expected = Message { integrity: key.is_some(), ..message };
        prop_assert_eq!(Message::decode(&bytes), Ok(expected.clone()));
        if let Some(key) = &key {
            prop_assert_eq!(Message::decode_verified(&bytes, key), Ok(expected));
        }
    }
}

/// The ICE attributes survive an encode and decode with short-term integrity, as a connectivity
/// check carries them (RFC 8445 §7.1).
#[test]
fn ice_check_attributes_round_trip() {
    let mut message = Message::new(Class::Request, Method::BINDING, TransactionId::new([7; 12]));
    message.attributes.username = Some("remote:local".into());
    message.attributes.priority = Some(1_853_824_767);
    message.attributes.use_candidate = true;
    message.attributes.ice_controlling = Some(u64::MAX - 1);
    message.attributes.nomination = Some(0x00ab_cdef);
    message.fingerprint = true;
    let key = IntegrityKey::short_term("a password of twenty-two+");
    let bytes = message.to_bytes(Some(&key)).unwrap();
    let decoded = Message::decode_verified(&bytes, &key).unwrap();
    assert_eq!(decoded.attributes, message.attributes);
    assert!(decoded.integrity && decoded.fingerprint);

    message.attributes.use_candidate = false;
    message.attributes.ice_controlling = None;
    message.attributes.ice_controlled = Some(3);
    let decoded = Message::decode(&message.to_bytes(None).unwrap()).unwrap();
    assert_eq!(decoded.attributes, message.attributes);

    // NOMINATION is 24 bits on the wire (draft-thatcher-ice-renomination-01 §4), at 0xC001.
    message.attributes.nomination = Some(0xff00_0001);
    let bytes = message.to_bytes(None).unwrap();
    assert!(
        bytes
            .windows(8)
            .any(|w| w == [0xc0, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01])
    );
    assert_eq!(
        Message::decode(&bytes).unwrap().attributes.nomination,
        Some(1)
    );
}

/// `append_trailer` on a message encoded without a trailer gives the bytes `Message::encode`
/// writes with one, so a layer above (TURN) signs exactly as this crate does.
#[test]
fn append_trailer_matches_encode() {
    let mut message = Message::new(
        Class::Request,
        Method::BINDING,
        TransactionId::new(RFC5769_TRANSACTION),
    );
    message.attributes.username = Some("alice".to_owned());
    message.attributes.software = Some("x".to_owned());
    let key = IntegrityKey::short_term(RFC5769_PASSWORD);
    message.fingerprint = true;
    let expected = message.to_bytes(Some(&key)).unwrap();

    message.fingerprint = false;
    let bare = message.to_bytes(None).unwrap();
    let mut buf = vec![0u8; 200];
    buf[..bare.len()].copy_from_slice(&bare);
    let len = append_trailer(&mut buf, bare.len(), Some(&key), true).unwrap();
    assert_eq!(&buf[..len], &expected[..]);
    assert_eq!(
        append_trailer(&mut buf[..bare.len() + 4], bare.len(), Some(&key), true),
        Err(EncodeError::BufferTooSmall {
            needed: bare.len() + 32
        })
    );
    // Without a trailer only the length field is (re)written.
    let len = append_trailer(&mut buf, bare.len(), None, false).unwrap();
    assert_eq!(&buf[..len], &bare[..]);
}
