//! `fog_stun::wire` decoding on arbitrary bytes.
//!
//! Input: the datagram itself. Besides "never panics", it checks that whatever decodes agrees
//! with the zero-copy `Packet` view, and that its `Repr` re-encodes (without and with
//! MESSAGE-INTEGRITY) to bytes that decode to the same `Repr`.

#![no_main]

use fog_stun::wire::{Cookie, EncodeError, IntegrityKey, Message, Packet, verify_integrity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = IntegrityKey::short_term("fuzz");
    let _ = verify_integrity(data, &key);
    let _ = Message::decode_verified(data, &key);
    let Ok(message) = Message::decode(data) else {
        return;
    };

    let packet = Packet::new_checked(data).expect("a decoded message passes the packet checks");
    assert_eq!(packet.class(), message.class);
    assert_eq!(packet.method(), message.method);
    assert_eq!(packet.transaction_id(), message.transaction_id);
    assert_eq!(packet.cookie(), message.cookie);
    assert!(message.unknown_required.iter().all(|&t| t < 0x8000));

    // The fields `encode` does not take from the Repr are cleared; classic messages cannot
    // carry a trailer.
    let classic = matches!(message.cookie, Cookie::Classic(_));
    let mut repr = message;
    repr.integrity = false;
    repr.unknown_required.clear();
    if classic {
        repr.fingerprint = false;
    }
    let bytes = repr
        .to_bytes(None)
        .expect("a decoded message re-encodes: it lost attributes, never gained bytes");
    assert_eq!(Message::decode(&bytes), Ok(repr.clone()));

    if !classic {
        match repr.to_bytes(Some(&key)) {
            Ok(signed) => {
                let expected = Message {
                    integrity: true,
                    ..repr
                };
                assert_eq!(Message::decode_verified(&signed, &key), Ok(expected));
            }
            // MESSAGE-INTEGRITY's 24 bytes can push a near-64 KB message over the limit.
            Err(EncodeError::TooLong) => {}
            Err(e) => panic!("signing a re-encodable message failed: {e}"),
        }
    }
});
