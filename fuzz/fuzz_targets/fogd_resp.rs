//! fogd's reader of Redis replies (`crates/fogd/src/resp.rs`, included whole: it depends on
//! nothing else in fogd) on arbitrary bytes, as the signaling loop reads them from its links
//! to Redis.
//!
//! Invariants: nothing panics; a parsed value never claims more bytes than it was given; a
//! value parses the same from its own bytes alone and with more bytes after it; every prefix
//! of those bytes asks for more rather than yielding a different value.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/fogd/src/resp.rs"]
mod resp;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((value, used))) = resp::parse(data) else {
        return;
    };
    assert!(used > 0 && used <= data.len());
    assert_eq!(resp::parse(&data[..used]), Ok(Some((value.clone(), used))));
    for cut in 0..used {
        assert_eq!(resp::parse(&data[..cut]), Ok(None), "cut at {cut}");
    }
});
