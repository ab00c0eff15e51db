//! The sealed datagram format (fogconnect's `seal`): arbitrary bytes given to `open` never
//! panic and never open (they are not sealed with the session's key), and whatever is sealed
//! opens once on the other side, intact, and not twice. A tagged QUIC datagram's parser takes
//! any bytes without panicking and gives back exactly what was tagged.

#![no_main]

use fogconnect::node::seal::{Keys, Kind, Refused, quic_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (garbage, payload) = input;
    let (mut a, mut b) = Keys::fixed_pair();
    assert!(b.open(&garbage).is_err(), "arbitrary bytes opened");
    let sealed = a.seal(Kind::Data, &payload);
    assert_eq!(b.open(&sealed), Ok((Kind::Data, payload.clone())));
    assert_eq!(b.open(&sealed), Err(Refused::Replayed));
    let _ = quic_of(&garbage);
    if !payload.is_empty() {
        let tagged = a.tag_quic(&payload);
        assert_eq!(quic_of(&tagged), Some((b.recv_tag(), &payload[..])));
    }
});
