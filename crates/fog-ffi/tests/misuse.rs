//! Misuse of the C API returns error codes: null pointers, bad strings and lengths, short
//! buffers, unknown and stale handles, calls before start and after release. No server is
//! needed for any of these (one test points at a port nobody listens on).

use std::ffi::{CStr, c_char};
use std::net::TcpListener;
use std::ptr::{null, null_mut};

use fogconnect_ffi::*;

fn text(code: i32) -> String {
    // SAFETY: fc_strerror returns a static NUL-terminated string for every code.
    unsafe { CStr::from_ptr(fc_strerror(code)) }
        .to_str()
        .expect("UTF-8")
        .to_owned()
}

/// `fc_connect` without callbacks: a handle, or a negative code.
fn dial(ctx: *mut fc_context, peer: &CStr, protocol: i32, service: i32) -> i64 {
    // SAFETY: `peer` is NUL-terminated.
    unsafe { fc_connect(ctx, peer.as_ptr(), protocol, service, None, null_mut()) }
}

/// `fc_signal_init` without a CA file, with an optional server key.
fn start(ctx: *mut fc_context, url: &CStr, stun: &CStr, server_key: Option<&CStr>) -> i32 {
    let key = server_key.map_or(null(), CStr::as_ptr);
    // SAFETY: NUL-terminated strings, or null for the key.
    unsafe { fc_signal_init(ctx, url.as_ptr(), stun.as_ptr(), null(), key) }
}

#[test]
fn null_pointers_are_refused() {
    let ctx = fc_init();
    assert!(!ctx.is_null());
    // SAFETY: every pointer is null or a NUL-terminated literal; the functions check them.
    unsafe {
        assert_eq!(fc_set_id(null_mut(), c"a".as_ptr()), FC_ERR_NULL_POINTER);
        assert_eq!(fc_set_id(ctx, null()), FC_ERR_NULL_POINTER);
        assert_eq!(
            fc_signal_init(ctx, null(), c"127.0.0.1".as_ptr(), null(), null()),
            FC_ERR_NULL_POINTER
        );
        assert_eq!(
            fc_signal_init(ctx, c"ws://127.0.0.1:9/ws".as_ptr(), null(), null(), null()),
            FC_ERR_NULL_POINTER
        );
        let dial = fc_connect(ctx, null(), FC_PROTOCOL_DATAGRAM, 1, None, null_mut());
        assert_eq!(dial, i64::from(FC_ERR_NULL_POINTER));
        assert_eq!(fc_send(1, null(), 5), FC_ERR_NULL_POINTER);
        assert_eq!(fc_stats(1, null_mut()), FC_ERR_NULL_POINTER);
        assert_eq!(fc_get_peer_id(ctx, null_mut(), 64), FC_ERR_NULL_POINTER);
        assert_eq!(fc_nat_report(ctx, null_mut(), 64), FC_ERR_NULL_POINTER);
        assert_eq!(fc_get_local_addr(1, null_mut(), 64), FC_ERR_NULL_POINTER);
        assert_eq!(pr_init_signal(null()), FC_ERR_NULL_POINTER);
    }
    assert_eq!(fc_release(null_mut()), FC_ERR_NULL_POINTER);
    assert_eq!(
        fc_passive_link_setcb(null_mut(), None, null_mut()),
        FC_ERR_NULL_POINTER
    );
    assert_eq!(fc_wait_ready(null_mut(), 0), FC_ERR_NULL_POINTER);
    assert_eq!(fc_release(ctx), FC_OK);
}

#[test]
fn bad_strings_and_arguments_are_refused() {
    let ctx = fc_init();
    let not_utf8 = [0xffu8, 0xfe, 0].as_ptr().cast::<c_char>();
    // SAFETY: NUL-terminated byte strings.
    unsafe {
        assert_eq!(fc_set_id(ctx, not_utf8), FC_ERR_INVALID_ARGUMENT);
        assert_eq!(fc_set_id(ctx, c"".as_ptr()), FC_ERR_INVALID_ARGUMENT);
        assert_eq!(
            start(ctx, c"http://x/", c"127.0.0.1", None),
            FC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            start(
                ctx,
                c"ws://127.0.0.1:9/ws",
                c"127.0.0.1",
                Some(c"not a peer id")
            ),
            FC_ERR_INVALID_ARGUMENT
        );
        // Every protocol is one a node runs: before a start each says the context is not
        // started, and only numbers outside them are invalid.
        for protocol in [
            FC_PROTOCOL_QUIC,
            FC_PROTOCOL_KCP,
            FC_PROTOCOL_UTP,
            FC_PROTOCOL_SCTP,
            FC_PROTOCOL_RTC,
            FC_PROTOCOL_DATAGRAM,
        ] {
            assert_eq!(
                dial(ctx, c"bob", protocol, 1),
                i64::from(FC_ERR_NOT_STARTED)
            );
        }
        assert_eq!(dial(ctx, c"bob", 0, 1), i64::from(FC_ERR_INVALID_ARGUMENT));
        assert_eq!(dial(ctx, c"bob", 99, 1), i64::from(FC_ERR_INVALID_ARGUMENT));
        // The convention number has 8 bits for the service.
        for service in [-1, 256] {
            assert_eq!(
                dial(ctx, c"bob", FC_PROTOCOL_DATAGRAM, service),
                i64::from(FC_ERR_INVALID_ARGUMENT)
            );
        }
        assert_eq!(
            dial(ctx, c"", FC_PROTOCOL_DATAGRAM, 1),
            i64::from(FC_ERR_INVALID_ARGUMENT)
        );
        // The handle is looked at first (its protocol says how long a send may be).
        let big = vec![0u8; FC_MAX_DATAGRAM + 1];
        assert_eq!(
            fc_send(1, big.as_ptr(), big.len()),
            FC_ERR_INVALID_CONNECTION
        );
        let server = pr_signal_server {
            ctx,
            url: c"127.0.0.1".as_ptr(),
            r#type: c"/ws".as_ptr(),
            port: 7600,
            certificate: null(),
            privatekey: c"key.pem".as_ptr(),
            stun: null(),
        };
        assert_eq!(pr_init_signal(&server), FC_ERR_INVALID_ARGUMENT);
        let server = pr_signal_server {
            privatekey: null(),
            port: 70_000,
            ..server
        };
        assert_eq!(pr_init_signal(&server), FC_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(fc_release(ctx), FC_OK);
}

#[test]
fn short_buffers_are_left_untouched() {
    let ctx = fc_init();
    let mut buf = [b'x' as c_char; 80];
    // SAFETY: `buf` has the lengths given (or more).
    unsafe {
        // A peer ID is 54 symbols: 54 bytes leave no room for the NUL.
        assert_eq!(
            fc_get_peer_id(ctx, buf.as_mut_ptr(), 54),
            FC_ERR_BUFFER_TOO_SMALL
        );
        assert!(buf.iter().all(|&b| b == b'x' as c_char));
        assert_eq!(
            fc_get_peer_id(ctx, buf.as_mut_ptr(), 0),
            FC_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(fc_get_peer_id(ctx, buf.as_mut_ptr(), 55), 54);
        let id = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert_eq!(id.len(), 54);
        assert!(id.parse::<fogconnect::PeerId>().is_ok(), "{id}");
    }
    assert_eq!(fc_release(ctx), FC_OK);
}

#[test]
fn calls_before_start_say_not_started() {
    let ctx = fc_init();
    let mut buf = [0 as c_char; 256];
    // SAFETY: literals and `buf`, with its length.
    unsafe {
        assert_eq!(
            dial(ctx, c"bob", FC_PROTOCOL_DATAGRAM, 1),
            i64::from(FC_ERR_NOT_STARTED)
        );
        assert_eq!(
            fc_nat_report(ctx, buf.as_mut_ptr(), buf.len()),
            FC_ERR_NOT_STARTED
        );
    }
    assert_eq!(fc_wait_ready(ctx, 0), FC_ERR_NOT_STARTED);
    assert_eq!(fc_get_dropped(ctx), i64::from(FC_ERR_NOT_STARTED));
    assert_eq!(fc_release(ctx), FC_OK);
}

#[test]
fn unknown_connection_handles_are_refused() {
    let mut buf = [0 as c_char; 64];
    let mut stats = fc_conn_stats::default();
    for conn in [0, -1, 1 << 40, i64::MAX] {
        // SAFETY: `buf` and `stats` are ours, with their sizes.
        unsafe {
            assert_eq!(fc_send(conn, b"hi".as_ptr(), 2), FC_ERR_INVALID_CONNECTION);
            assert_eq!(fc_stats(conn, &mut stats), FC_ERR_INVALID_CONNECTION);
            assert_eq!(
                fc_get_remote_addr(conn, buf.as_mut_ptr(), buf.len()),
                FC_ERR_INVALID_CONNECTION
            );
            assert_eq!(
                fc_get_peer(conn, buf.as_mut_ptr(), buf.len()),
                FC_ERR_INVALID_CONNECTION
            );
        }
        assert_eq!(fc_is_passive(conn), FC_ERR_INVALID_CONNECTION);
        assert_eq!(fc_get_convention_number(conn), FC_ERR_INVALID_CONNECTION);
        assert_eq!(fc_set_userdata(conn, null_mut()), FC_ERR_INVALID_CONNECTION);
        assert!(fc_get_userdata(conn).is_null());
        assert_eq!(
            fc_get_uploadspeed(conn),
            i64::from(FC_ERR_INVALID_CONNECTION)
        );
        assert_eq!(
            fc_get_downloadspeed(conn),
            i64::from(FC_ERR_INVALID_CONNECTION)
        );
        assert_eq!(
            fc_event_setcb(conn, None, null_mut()),
            FC_ERR_INVALID_CONNECTION
        );
        assert_eq!(pr_event_setcb(conn, None, None), FC_ERR_INVALID_CONNECTION);
        assert_eq!(fc_disconnect(conn), FC_ERR_INVALID_CONNECTION);
        assert_eq!(fc_accept(conn), FC_ERR_INVALID_CONNECTION);
        assert_eq!(fc_refuse(conn, 1), FC_ERR_INVALID_CONNECTION);
    }
}

#[test]
fn a_released_context_answers_invalid_context() {
    let ctx = fc_init();
    assert_eq!(fc_release(ctx), FC_OK);
    assert_eq!(fc_release(ctx), FC_ERR_INVALID_CONTEXT);
    assert_eq!(pr_fogconnect_release(ctx), FC_ERR_INVALID_CONTEXT);
    let mut buf = [0 as c_char; 64];
    // SAFETY: literals and `buf`, with its length.
    unsafe {
        assert_eq!(set_id(ctx, c"a".as_ptr()), FC_ERR_INVALID_CONTEXT);
        assert_eq!(
            fc_get_peer_id(ctx, buf.as_mut_ptr(), buf.len()),
            FC_ERR_INVALID_CONTEXT
        );
        assert_eq!(
            start(ctx, c"ws://127.0.0.1:9/ws", c"127.0.0.1", None),
            FC_ERR_INVALID_CONTEXT
        );
        assert_eq!(
            dial(ctx, c"bob", FC_PROTOCOL_DATAGRAM, 1),
            i64::from(FC_ERR_INVALID_CONTEXT)
        );
    }
    assert_eq!(
        fc_passive_link_setcb(ctx, None, null_mut()),
        FC_ERR_INVALID_CONTEXT
    );
    assert_eq!(fc_wait_ready(ctx, 0), FC_ERR_INVALID_CONTEXT);
    assert_eq!(fc_get_dropped(ctx), i64::from(FC_ERR_INVALID_CONTEXT));
    // A pointer that was never a context.
    let forged = std::ptr::without_provenance_mut::<fc_context>(usize::MAX);
    assert_eq!(fc_release(forged), FC_ERR_INVALID_CONTEXT);
}

#[test]
fn an_unreachable_server_leaves_the_context_as_it_was() {
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = std::ffi::CString::new(format!("ws://127.0.0.1:{port}/ws")).unwrap();
    let ctx = fc_init();
    // SAFETY: NUL-terminated strings.
    unsafe {
        assert_eq!(
            fc_signal_init(ctx, url.as_ptr(), c"127.0.0.1:9".as_ptr(), null(), null()),
            FC_ERR_SIGNALING
        );
        // Still idle: an alias may be set and a start tried again.
        assert_eq!(fc_set_id(ctx, c"alice".as_ptr()), FC_OK);
    }
    assert_eq!(fc_release(ctx), FC_OK);
}

#[test]
fn every_code_has_a_description() {
    let codes = [
        FC_OK,
        FC_ERR_NULL_POINTER,
        FC_ERR_INVALID_ARGUMENT,
        FC_ERR_INVALID_CONTEXT,
        FC_ERR_INVALID_CONNECTION,
        FC_ERR_NOT_STARTED,
        FC_ERR_ALREADY_STARTED,
        FC_ERR_UNSUPPORTED_PROTOCOL,
        FC_ERR_BUFFER_TOO_SMALL,
        FC_ERR_NOT_CONNECTED,
        FC_ERR_TOO_LONG,
        FC_ERR_BLOCKED,
        FC_ERR_SIGNALING,
        FC_ERR_IO,
        FC_ERR_STOPPED,
        FC_ERR_NOT_READY,
        FC_ERR_TOO_MANY,
        FC_ERR_SELF_CONNECT,
        FC_ERR_NOT_INCOMING,
        FC_ERR_INTERNAL,
    ];
    let unknown = text(12345);
    let mut seen = std::collections::BTreeSet::new();
    for code in codes {
        let t = text(code);
        assert_ne!(t, unknown, "code {code}");
        assert!(seen.insert(t.clone()), "code {code} shares its text: {t}");
    }
    assert_eq!(unknown, "unknown error code");
    // SAFETY: both return static NUL-terminated strings.
    unsafe {
        assert_eq!(
            CStr::from_ptr(pr_errno_mgs(FC_ERR_TOO_LONG)),
            CStr::from_ptr(fc_strerror(FC_ERR_TOO_LONG))
        );
    }
}
