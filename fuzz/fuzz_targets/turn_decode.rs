//! TURN message and ChannelData decoding of arbitrary bytes.
//!
//! Invariants: nothing panics; a message that decodes and re-encodes decodes again to the same
//! message (less what encode does not write: the MESSAGE-INTEGRITY flag, which needs the key,
//! and the unknown attributes); a ChannelData that decodes re-encodes to the bytes it came from,
//! padding aside.

#![no_main]

use fog_turn::wire::{ChannelData, TurnMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = TurnMessage::decode(data) {
        if let Ok(bytes) = message.to_bytes(None) {
            let again = TurnMessage::decode(&bytes).expect("our own encoding decodes");
            let expected = TurnMessage {
                integrity: false,
                unknown_required: Vec::new(),
                ..message
            };
            assert_eq!(again, expected);
        }
    }
    if let Ok(cd) = ChannelData::decode(data) {
        let mut buf = vec![0u8; data.len() + 4];
        let n = cd.encode(false, &mut buf).expect("fits");
        assert_eq!(&buf[..n], &data[..n]);
    }
});
