//! fogd's answer to a plain HTTP request (`crates/fogd/src/web.rs`, included whole: it depends
//! on nothing else in fogd) on arbitrary bytes: the first bytes of a request that was not a
//! WebSocket upgrade, as fogd keeps them.
//!
//! Invariants: nothing panics; an answer is a 200 with one of the compiled-in files or a 404,
//! always a complete HTTP/1.1 response whose Content-Length is its body's; only a request line
//! that starts with `GET ` gets one.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/fogd/src/web.rs"]
mod web;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(web::HEAD_MAX)];
    let Some(answer) = web::respond(head) else {
        return;
    };
    assert!(head.starts_with(b"GET "));
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let headers = std::str::from_utf8(&answer[..split]).expect("ASCII headers");
    let body = &answer[split + 4..];
    assert!(
        headers.starts_with("HTTP/1.1 200 OK\r\n")
            || headers.starts_with("HTTP/1.1 404 Not Found\r\n")
    );
    assert!(headers.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
});
