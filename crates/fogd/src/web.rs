//! The browser client's static files, served on the signaling listener (`docs/browser.md`).
//!
//! A browser page that dials a node needs `fogconnect.js` from somewhere; fogd already listens
//! for HTTP (the WebSocket upgrade), so a plain `GET` of one of the few compiled-in paths
//! below is answered with that file, and any other `GET` with 404. Nothing is read from the
//! file system and no path is interpreted (no directory, no `..`, no percent-decoding): the
//! request target, less its query, must equal one of the names. Anything that is not a
//! `GET` stays a 400, as before.
//!
//! The module depends on nothing else in fogd, so that `fuzz/fuzz_targets/fogd_web.rs` can
//! include it whole (it parses bytes from the network).

/// The JavaScript client (ES module, no build step).
const FOGCONNECT_JS: &str = include_str!("../web/fogconnect.js");
/// The demo page: type a peer ID or alias, connect, chat; with `?peer=…&selftest=N` it echoes
/// N bytes through the channel and reports (the CI test's page).
const DEMO_HTML: &str = include_str!("../web/index.html");

/// The files: path, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", DEMO_HTML),
    ("/demo.html", "text/html; charset=utf-8", DEMO_HTML),
    (
        "/fogconnect.js",
        "text/javascript; charset=utf-8",
        FOGCONNECT_JS,
    ),
];

/// Signaling's path (`signal::PATH`), repeated so that this module stands alone: the fuzz
/// target `fogd_web` includes this file as it is.
const WS_PATH: &str = "/ws";

/// The longest request head looked at: the request line is in the first bytes.
pub(crate) const HEAD_MAX: usize = 4096;

/// The HTTP response to a request that was not a WebSocket upgrade, from the first bytes of
/// the request (`head`): a file, a 404, or `None` when it is no complete `GET` request line
/// (then fogd answers 400 as for any other bad request).
pub(crate) fn respond(head: &[u8]) -> Option<Vec<u8>> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path == WS_PATH {
        // The signaling endpoint without an upgrade stays a 400 that says so.
        return None;
    }
    Some(match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => response("200 OK", content_type, body),
        None => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: fogd serves /ws (signaling), / and /fogconnect.js\n",
        ),
    })
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ws_path_is_signaling_s() {
        assert_eq!(WS_PATH, crate::signal::PATH);
    }

    fn status(head: &[u8]) -> Option<String> {
        let r = respond(head)?;
        let text = String::from_utf8(r).unwrap();
        Some(text.lines().next().unwrap().to_owned())
    }

    #[test]
    fn serves_the_files_and_nothing_else() {
        let js = respond(b"GET /fogconnect.js HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let js = String::from_utf8(js).unwrap();
        assert!(js.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(js.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(js.ends_with(FOGCONNECT_JS));
        assert!(js.contains(&format!("Content-Length: {}\r\n", FOGCONNECT_JS.len())));
        for page in ["/", "/demo.html", "/?peer=ABC&selftest=10"] {
            let head = format!("GET {page} HTTP/1.1\r\n\r\n");
            let r = String::from_utf8(respond(head.as_bytes()).unwrap()).unwrap();
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
            assert!(r.contains("text/html"), "{page}");
        }
        for other in [
            "/fogconnect.js/",
            "/../Cargo.toml",
            "/%2e%2e/x",
            "//fogconnect.js",
            "/FOGCONNECT.JS",
            "/web/fogconnect.js",
            "http://x/fogconnect.js",
        ] {
            let head = format!("GET {other} HTTP/1.1\r\n\r\n");
            assert_eq!(
                status(head.as_bytes()).as_deref(),
                Some("HTTP/1.1 404 Not Found"),
                "{other}"
            );
        }
    }

    #[test]
    fn anything_but_a_get_line_is_left_to_the_400() {
        for head in [
            &b"POST / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1",
            b"GET /\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 extra\r\n",
            b"GET / SPDY/3\r\n",
            b"\xff\xfe\r\n",
            b"",
            b"GET /ws HTTP/1.1\r\n",
            b"GET /ws?x=1 HTTP/1.1\r\n",
        ] {
            assert!(respond(head).is_none(), "{head:?}");
        }
    }

    /// Arbitrary and mangled requests never panic, and whatever is answered is a complete
    /// response whose Content-Length is its body's (the fuzz target `fogd_web` checks the same
    /// on libFuzzer's inputs).
    #[test]
    fn no_input_panics_and_every_answer_is_whole() {
        let seeds: [&[u8]; 4] = [
            b"GET /fogconnect.js HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /?peer=a HTTP/1.0\r\n",
            b"GET /nope HTTP/1.1\r\n\r\n",
            b"\r\n",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % (input.len() + 1);
                match next() % 3 {
                    0 => input.insert(at, next() as u8),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.truncate(at),
                }
            }
            if let Some(answer) = respond(&input) {
                let text = String::from_utf8(answer).expect("UTF-8");
                let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
                assert!(head.contains(&format!("Content-Length: {}", body.len())));
                assert!(input.starts_with(b"GET "));
            }
        }
    }
}
