//! The TURN-over-TCP stream framer (RFC 8656 §3.1, §12.5) fed arbitrary bytes in arbitrary
//! chunks.
//!
//! Invariants: nothing panics; every frame is a whole message of the kind its first byte says,
//! with the length its header says (ChannelData without its padding); the bytes handed out plus
//! the padding skipped plus what is still buffered are exactly the bytes pushed, in order; the
//! buffer never holds more than one message's limit plus the last chunk; once it fails, it
//! stays failed.

#![no_main]

use fog_turn::wire::stream::{Frame, Framer, MAX_STREAM_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the limit (small ones reach TooLong); byte 1: the chunk size.
    let [limit, chunk, rest @ ..] = data else {
        return;
    };
    let max = if *limit == 0 {
        MAX_STREAM_MESSAGE
    } else {
        20 + usize::from(*limit) * 4
    };
    let chunk = usize::from(*chunk).max(1);
    let mut framer = Framer::new(max);
    let mut consumed = 0usize;
    let mut failed = false;
    let mut pushed = 0usize;
    for piece in rest.chunks(chunk) {
        framer.push(piece);
        pushed += piece.len();
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!failed);
                    let (bytes, padded) = match frame {
                        Frame::Stun(b) => {
                            assert!(b[0] < 4);
                            assert_eq!(b.len(), 20 + usize::from(u16::from_be_bytes([b[2], b[3]])));
                            (b, b.len())
                        }
                        Frame::ChannelData(b) => {
                            assert!((0x40..0x80).contains(&b[0]));
                            assert_eq!(b.len(), 4 + usize::from(u16::from_be_bytes([b[2], b[3]])));
                            (b, (b.len() + 3) & !3)
                        }
                    };
                    assert!(padded <= max);
                    assert_eq!(bytes, &rest[consumed..consumed + bytes.len()]);
                    consumed += padded;
                }
                Ok(None) => break,
                Err(e) => {
                    failed = true;
                    assert_eq!(framer.next_frame(), Err(e));
                    assert_eq!(framer.buffered(), 0);
                    break;
                }
            }
        }
        if !failed {
            assert_eq!(consumed + framer.buffered(), pushed);
            assert!(framer.buffered() < max + piece.len());
        }
    }
});
