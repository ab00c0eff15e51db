//! A real browser dials a node by peer ID (issue 13, part 3): fogd (STUN and signaling, and
//! the page and `fogconnect.js` it serves), a node on fog-runtime, and headless Chromium from
//! Debian on the page `/?peer=<node>&selftest=1048576`, on loopback. The page signs its offer
//! with a WebCrypto Ed25519 key, verifies the node's signed answer, opens a data channel
//! (raw ICE and DTLS on the node's socket, `Transport::Browser`), sends 1 MiB in a pattern
//! the node checks byte by byte and echoes, checks the echo, and reports its verdict as one
//! text message on the channel. The test fails if any byte differs either way, if the
//! verdict is not `ok`, or if nothing arrives in time; then it kills the browser. No
//! WebDriver.
//!
//! Skips with a message without `chromium`, fails without it when `FOG_REQUIRE_INTEROP=1`
//! (CI: `.ci/run` installs it).

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig, RuntimeError};
use fog_test_support::ChildGuard;
use fogconnect::{AcceptPolicy, Event, FailReason, KeyPair, NodeConfig, SendError, Transport};

const WAIT: Duration = Duration::from_secs(20);
/// From the browser's start to its verdict (a second or two when all is well; Chromium's
/// first start on a loaded 2-core machine takes a few).
const LIMIT: Duration = Duration::from_secs(60);
const SIZE: usize = 1 << 20;

/// Byte `i` of the page's pattern (`index.html`'s `patternByte`).
fn pattern(i: usize) -> u8 {
    ((i as u32).wrapping_mul(31).wrapping_add((i as u32) >> 8) & 255) as u8
}

fn fogd() -> (ChildGuard, SocketAddr, SocketAddr) {
    let exe = fog_test_support::fogd_exe(
        &std::env::current_exe().expect("the test's own path"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    fog_test_support::fogd_for_nodes(
        &exe,
        "fogd-browser",
        |_| vec!["--stun-no-rate-limit".to_owned()],
        WAIT,
    )
}

fn chromium(url: &str) -> ChildGuard {
    let Some(exe) = fog_test_support::find_tool("chromium") else {
        unreachable!("checked by the caller");
    };
    let profile = fog_test_support::scratch_file("chromium-profile");
    let _ = std::fs::create_dir_all(&profile);
    let mut command = Command::new(exe);
    command.args([
        "--headless=new",
        "--no-sandbox",
        &format!("--user-data-dir={}", profile.display()),
        "--no-first-run",
        "--disable-gpu",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        // The page's console on stderr, for a failure's message.
        "--enable-logging=stderr",
        "--v=0",
        url,
    ]);
    ChildGuard::spawn("chromium", &mut command).expect("starting chromium")
}

/// A node on fog-runtime answering everyone, behind a fogd of its own, once it is ready
/// (fogd, the node, and fogd's signaling address).
fn lab() -> (ChildGuard, Runtime, SocketAddr) {
    let t0 = Instant::now();
    let (fogd, stun, signal) = fogd();
    let key = KeyPair::from_seed(&[31; 32]);
    let mut node = NodeConfig::new(key, "127.0.0.1", stun, "127.0.0.1:0".parse().unwrap(), 7);
    node.accept = AcceptPolicy::All;
    let runtime = Runtime::start(RuntimeConfig::new(
        node,
        format!("ws://{signal}/ws").parse().unwrap(),
    ))
    .expect("the node starts");
    let ready_by = Instant::now() + WAIT;
    loop {
        match runtime.events().recv_timeout(ready_by - Instant::now()) {
            Ok(Event::Ready { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("the node never got ready ({e})"),
        }
    }
    eprintln!(
        "browser: fogd and the node ready after {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    (fogd, runtime, signal)
}

/// Whether chromium is here; if not, says the test is skipped (or fails it under
/// `FOG_REQUIRE_INTEROP=1`).
fn have_chromium(test: &str) -> bool {
    if fog_test_support::find_tool("chromium").is_some() {
        return true;
    }
    fog_test_support::skip_or_fail(
        test,
        "chromium is not installed (apt-get install chromium)",
        "FOG_REQUIRE_INTEROP",
    );
    false
}

#[test]
fn headless_chromium_echoes_1_mib_through_a_node() {
    if !have_chromium("headless_chromium_echoes_1_mib_through_a_node") {
        return;
    }
    let t0 = Instant::now();
    let (fogd, runtime, signal) = lab();
    let handle = runtime.handle();
    let url = format!("http://{signal}/?peer={}&selftest={SIZE}", handle.peer_id());
    let started = Instant::now();
    let mut browser = chromium(&url);
    let deadline = started + LIMIT;

    let mut conn = None;
    let mut connected_at = None;
    let mut got = 0usize;
    let mut echo: VecDeque<Vec<u8>> = VecDeque::new();
    let verdict = loop {
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "no verdict from the page in {LIMIT:?} (connected: {}, {got} bytes received)\n{}\n{}",
                connected_at.is_some(),
                browser.output_text(),
                fogd.output_text()
            );
        }
        match runtime.events().recv_timeout(Duration::from_millis(5)) {
            Ok(Event::Incoming { transport, .. }) => {
                assert_eq!(transport, Transport::Browser, "the page offers `browser`");
            }
            Ok(Event::Connected { id, passive, .. }) => {
                assert!(passive);
                conn = Some(id);
                connected_at = Some(started.elapsed());
            }
            Ok(Event::Data { id, data }) if Some(id) == conn => {
                if got < SIZE {
                    for (k, &v) in data.iter().enumerate() {
                        assert_eq!(v, pattern(got + k), "byte {} from the browser", got + k);
                    }
                    got += data.len();
                    echo.push_back(data);
                } else {
                    break String::from_utf8_lossy(&data).into_owned();
                }
            }
            Ok(Event::Failed { reason, .. }) => panic!(
                "the browser's connection failed: {reason}\n{}",
                browser.output_text()
            ),
            Ok(Event::Closed { reason, .. }) => panic!(
                "the browser's connection closed early: {reason}\n{}",
                browser.output_text()
            ),
            _ => {}
        }
        // Echo in order; a full channel says Blocked until it has room.
        while let (Some(id), Some(message)) = (conn, echo.front()) {
            match handle.send(id, message) {
                Ok(()) => {
                    echo.pop_front();
                }
                Err(RuntimeError::Send(SendError::Blocked)) => break,
                Err(e) => panic!("echo: {e}"),
            }
        }
    };
    let elapsed = started.elapsed();
    let _ = browser.terminate(Duration::from_secs(5));
    eprintln!(
        "browser: terminated after {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        verdict.starts_with("fogconnect-selftest: ok"),
        "the page says: {verdict}\n{}",
        browser.output_text()
    );
    assert_eq!(got, SIZE);
    eprintln!(
        "browser: connected {:.0} ms after Chromium's start, verdict after {:.0} ms: {verdict}",
        connected_at.unwrap_or_default().as_secs_f64() * 1000.0,
        elapsed.as_secs_f64() * 1000.0
    );
}

/// The page signs a DTLS fingerprint other than its browser's certificate's (`&lie=1`): the
/// node's WebRTC peer refuses the handshake, the connection fails with `BrowserFailed`, and
/// nothing is ever connected or delivered.
#[test]
fn a_browser_that_signs_another_certificate_is_refused() {
    if !have_chromium("a_browser_that_signs_another_certificate_is_refused") {
        return;
    }
    let (fogd, runtime, signal) = lab();
    let url = format!(
        "http://{signal}/?peer={}&selftest={SIZE}&lie=1",
        runtime.handle().peer_id()
    );
    let mut browser = chromium(&url);
    let deadline = Instant::now() + LIMIT;
    let mut incoming = None;
    let reason = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime.events().recv_timeout(left) {
            Ok(Event::Incoming { id, transport, .. }) => {
                assert_eq!(transport, Transport::Browser);
                incoming = Some(id);
            }
            Ok(Event::Failed { id, reason }) if Some(id) == incoming => break reason,
            Ok(e @ (Event::Connected { .. } | Event::Data { .. } | Event::Closed { .. })) => {
                panic!("a browser with another certificate got {e:?}")
            }
            Ok(_) => {}
            Err(e) => panic!(
                "no failure in {LIMIT:?} ({e}); incoming: {incoming:?}\n{}\n{}",
                browser.output_text(),
                fogd.output_text()
            ),
        }
    };
    let _ = browser.terminate(Duration::from_secs(5));
    assert_eq!(reason, FailReason::BrowserFailed);
}
