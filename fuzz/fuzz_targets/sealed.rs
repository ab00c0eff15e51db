//! The sealed datagram format (fogconnect's `seal`): arbitrary bytes given to `open` never
//! panic and never open (they are not sealed with the session's key), and whatever is sealed
//! opens once on the other side, intact, and not twice.

#![no_main]

use fog_signal::KeyPair;
use fog_signal::msg::SessionId;
use fogconnect::node::seal::{Exchange, Keys, Kind, Refused};
use libfuzzer_sys::fuzz_target;

fn pair() -> (Keys, Keys) {
    let a = KeyPair::from_seed(&[1; 32]).peer_id();
    let b = KeyPair::from_seed(&[2; 32]).peer_id();
    let (ea, eb) = (Exchange::new([3; 32]), Exchange::new([4; 32]));
    let session = SessionId([5; 16]);
    (
        Keys::derive(&ea, &eb.public(), session, a, b, true),
        Keys::derive(&eb, &ea.public(), session, a, b, false),
    )
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (garbage, payload) = input;
    let (mut a, mut b) = pair();
    assert!(b.open(&garbage).is_err(), "arbitrary bytes opened");
    let sealed = a.seal(Kind::Data, &payload);
    assert_eq!(b.open(&sealed), Ok((Kind::Data, payload)));
    assert_eq!(b.open(&sealed), Err(Refused::Replayed));
});
