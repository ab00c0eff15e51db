//! `fog_utp::wire`: the header and the extension chain of arbitrary bytes.
//!
//! Invariants: nothing panics; what parses re-emits to bytes that parse to the same `Repr`
//! with the same payload.

#![no_main]

use fog_utp::wire::{Packet, Repr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    // Every accessor of a checked packet is total.
    let _ = (
        packet.packet_type(),
        packet.version(),
        packet.first_extension(),
        packet.connection_id(),
        packet.timestamp(),
        packet.timestamp_difference(),
        packet.wnd_size(),
        packet.seq_nr(),
        packet.ack_nr(),
    );
    let payload = packet.payload();
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    let mut out = vec![0u8; repr.buffer_len() + payload.len()];
    repr.emit(&mut Packet::new_unchecked(&mut out[..]));
    out[repr.buffer_len()..].copy_from_slice(payload);
    let again = Packet::new_checked(&out[..]).expect("our own packet checks");
    assert_eq!(Repr::parse(&again).expect("our own packet parses"), repr);
    assert_eq!(again.payload(), payload);
});
