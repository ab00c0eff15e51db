//! The C API between two contexts through a fogd on loopback, called as C would call it: an
//! alias dial, a decision left for later and then taken, data, stats and addresses, a
//! disconnect that reaches both sides, the handles going stale afterwards, a refusal decided
//! later, and a context released from its own callback.

// Tests read the wall clock for their own deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::net::SocketAddr;
use std::ptr::null;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

use common::{WAIT, fogd};
use fogconnect_ffi::*;

/// What a callback saw: the handle, the event (or `PASSIVE`), the bytes.
type Seen = (fc_conn, c_int, Vec<u8>);
const PASSIVE: c_int = -100;

unsafe extern "C" fn on_event(
    conn: fc_conn,
    event: c_int,
    data: *const u8,
    len: usize,
    arg: *mut c_void,
) {
    // SAFETY: the library passes `len` readable bytes (and a NUL after them).
    let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
    // SAFETY: `arg` is a leaked `Sender<Seen>` of this test, alive for the whole process.
    let tx = unsafe { &*arg.cast::<Sender<Seen>>() };
    let _ = tx.send((conn, event, bytes));
}

unsafe extern "C" fn on_incoming(
    _ctx: *mut fc_context,
    conn: fc_conn,
    peer: *const c_char,
    _service: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: the library passes the peer ID as a NUL-terminated string.
    let peer = unsafe { CStr::from_ptr(peer) }.to_bytes().to_vec();
    // SAFETY: as in on_event.
    let tx = unsafe { &*arg.cast::<Sender<Seen>>() };
    let _ = tx.send((conn, PASSIVE, peer));
    FC_DECIDE_LATER
}

/// What `fc_release` answered when `release_on_connected` called it.
static RELEASED_IN_CALLBACK: AtomicI32 = AtomicI32::new(1);

/// Releases the context in `arg` from its own callback, once connected.
unsafe extern "C" fn release_on_connected(
    _conn: fc_conn,
    event: c_int,
    _data: *const u8,
    _len: usize,
    arg: *mut c_void,
) {
    if event == FC_EVENT_CONNECTED {
        RELEASED_IN_CALLBACK.store(fc_release(arg.cast()), Ordering::SeqCst);
    }
}

/// A channel whose sender a callback can reach through `arg` (leaked: callbacks may run until
/// the process ends).
fn channel() -> (*mut c_void, Receiver<Seen>) {
    let (tx, rx) = mpsc::channel::<Seen>();
    (Box::into_raw(Box::new(tx)).cast(), rx)
}

fn next(rx: &Receiver<Seen>, what: &str) -> Seen {
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("no {what} within {WAIT:?}: {e}"))
}

fn string_out(f: impl FnOnce(*mut c_char, usize) -> c_int) -> String {
    let mut buf = [0 as c_char; 128];
    let n = f(buf.as_mut_ptr(), buf.len());
    assert!(n >= 0, "{n}");
    // SAFETY: the function wrote a NUL-terminated string into `buf`.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn two_contexts_connect_exchange_and_disconnect() {
    let (_fogd, stun, signal) = fogd();
    let url = CString::new(format!("ws://{signal}/ws")).unwrap();
    let stun = CString::new(stun.to_string()).unwrap();
    let (alice, bob) = (fc_init(), fc_init());
    let (alice_arg, alice_rx) = channel();
    let (bob_arg, bob_rx) = channel();
    // SAFETY: NUL-terminated strings; the callbacks match their types.
    unsafe {
        assert_eq!(fc_set_id(alice, c"alice".as_ptr()), FC_OK);
        assert_eq!(
            fc_passive_link_setcb(alice, Some(on_incoming), alice_arg),
            FC_OK
        );
        for ctx in [alice, bob] {
            assert_eq!(
                fc_signal_init(ctx, url.as_ptr(), stun.as_ptr(), null(), null()),
                FC_OK
            );
            assert_eq!(fc_wait_ready(ctx, WAIT.as_millis() as u32), FC_OK);
        }
        assert_eq!(fc_set_id(alice, c"late".as_ptr()), FC_ERR_ALREADY_STARTED);
        assert_eq!(
            fc_signal_init(alice, url.as_ptr(), stun.as_ptr(), null(), null()),
            FC_ERR_ALREADY_STARTED
        );
    }
    let alice_id = string_out(|b, l| unsafe_peer_id(alice, b, l));
    let bob_id = string_out(|b, l| unsafe_peer_id(bob, b, l));
    let bob_own = CString::new(bob_id.clone()).unwrap();

    let to_self = dial(bob, &bob_own, on_event, bob_arg);
    let unknown = dial(bob, c"nobody", on_event, bob_arg);
    let b = dial(bob, c"alice", on_event, bob_arg);
    assert_eq!(to_self, i64::from(FC_ERR_SELF_CONNECT));
    assert!(unknown > 0 && b > unknown, "{unknown} {b}");
    assert_eq!(fc_is_passive(b), 0);

    // The unknown alias fails on its own; the dial to alice waits for her decision.
    let (conn, event, why) = next(&bob_rx, "the unknown alias's error");
    assert_eq!((conn, event), (unknown, FC_EVENT_ERROR));
    assert!(String::from_utf8_lossy(&why).contains("nobody"), "{why:?}");
    let (a, event, peer) = next(&alice_rx, "the incoming connection");
    assert_eq!(event, PASSIVE);
    assert_eq!(String::from_utf8(peer).unwrap(), bob_id);
    assert_eq!(fc_is_passive(a), 1);
    assert_eq!(fc_get_convention_number(a), (5 << 4) | FC_PROTOCOL_DATAGRAM);
    assert_eq!(fc_get_convention_number(b), (5 << 4) | FC_PROTOCOL_DATAGRAM);
    assert_eq!(fc_event_setcb(a, Some(on_event), alice_arg), FC_OK);
    assert_eq!(unsafe_send(a, b"early"), FC_ERR_NOT_CONNECTED);
    assert_eq!(fc_accept(a), FC_OK);
    assert_eq!(fc_accept(a), FC_ERR_NOT_INCOMING);

    let (conn, event, _) = next(&bob_rx, "bob's connected");
    assert_eq!((conn, event), (b, FC_EVENT_CONNECTED));
    let (conn, event, _) = next(&alice_rx, "alice's connected");
    assert_eq!((conn, event), (a, FC_EVENT_CONNECTED));
    assert_eq!(unsafe_send(b, b"ping"), FC_OK);
    // A datagram connection takes no more than one datagram.
    let big = vec![0u8; FC_MAX_DATAGRAM + 1];
    assert_eq!(unsafe_send(b, &big), FC_ERR_TOO_LONG);
    let (conn, event, data) = next(&alice_rx, "the datagram");
    assert_eq!(
        (conn, event, data.as_slice()),
        (a, FC_EVENT_DATA, &b"ping"[..])
    );

    let mut stats = fc_conn_stats::default();
    // SAFETY: `stats` is ours.
    assert_eq!(unsafe { fc_stats(b, &mut stats) }, FC_OK);
    assert_eq!(
        (stats.protocol, stats.service, stats.passive),
        (FC_PROTOCOL_DATAGRAM, 5, 0)
    );
    assert_eq!((stats.sent_datagrams, stats.sent_bytes), (1, 4));
    assert_eq!(stats.via, FC_VIA_DIRECT);
    assert!(fc_get_uploadspeed(b) >= 0 && fc_get_downloadspeed(a) >= 0);
    let remote: SocketAddr = string_out(|p, l| unsafe_addr(b, true, p, l))
        .parse()
        .unwrap();
    let local: SocketAddr = string_out(|p, l| unsafe_addr(a, false, p, l))
        .parse()
        .unwrap();
    assert_eq!(
        remote, local,
        "bob's remote is alice's local on a direct loopback path"
    );
    assert_eq!(string_out(|p, l| unsafe_peer(b, p, l)), alice_id);

    let marker = 0x5eed_usize as *mut c_void;
    assert_eq!(fc_set_userdata(b, marker), FC_OK);
    assert_eq!(fc_get_userdata(b), marker);

    // Bob hangs up: his handler hears DISCONNECT, alice's EOF; both handles go stale.
    assert_eq!(fc_disconnect(b), FC_OK);
    let (conn, event, _) = next(&bob_rx, "bob's disconnect");
    assert_eq!((conn, event), (b, FC_EVENT_DISCONNECT));
    let (conn, event, _) = next(&alice_rx, "alice's EOF");
    assert_eq!((conn, event), (a, FC_EVENT_EOF));
    let deadline = std::time::Instant::now() + WAIT;
    while fc_is_passive(a) != FC_ERR_INVALID_CONNECTION
        || fc_is_passive(b) != FC_ERR_INVALID_CONNECTION
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the handles stay valid"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(unsafe_send(b, b"late"), FC_ERR_INVALID_CONNECTION);
    assert_eq!(unsafe_send(a, b"late"), FC_ERR_INVALID_CONNECTION);
    assert!(fc_get_userdata(b).is_null());
    assert_eq!(fc_disconnect(b), FC_ERR_INVALID_CONNECTION);

    let mut report = [0 as c_char; 1024];
    // SAFETY: `report` with its length.
    let n = unsafe { fc_nat_report(alice, report.as_mut_ptr(), report.len()) };
    assert!(n > 0, "{n}");
    assert_eq!(fc_get_dropped(alice), 0);

    // A refusal decided later reaches the caller as an error, and ends the handle here.
    let b3 = dial(bob, c"alice", on_event, bob_arg);
    let (a3, event, _) = next(&alice_rx, "the incoming connection to refuse");
    assert_eq!(event, PASSIVE);
    assert_eq!(fc_refuse(a3, 7), FC_OK);
    assert_eq!(fc_is_passive(a3), FC_ERR_INVALID_CONNECTION);
    let (conn, event, why) = next(&bob_rx, "the refusal");
    assert_eq!((conn, event), (b3, FC_EVENT_ERROR));
    assert!(
        String::from_utf8_lossy(&why).contains("refused by the peer (code 7"),
        "{why:?}"
    );

    // A callback may release its own context: bob does so once connected again; alice hears
    // the end of that connection. Bob can connect, and close, a moment before alice's own
    // check of the path comes back; she then hears the close as a cancellation (the race is
    // in fogconnect's lifecycle tests, `a_close_the_moment_the_caller_connects_...`).
    let b2 = dial(bob, c"alice", release_on_connected, bob.cast());
    assert!(b2 > b3, "{b2}");
    let (a2, event, _) = next(&alice_rx, "the second incoming connection");
    assert_eq!(event, PASSIVE);
    assert_eq!(fc_event_setcb(a2, Some(on_event), alice_arg), FC_OK);
    assert_eq!(fc_accept(a2), FC_OK);
    let (conn, event, why) = next(&alice_rx, "alice's second connected");
    assert_eq!(conn, a2);
    if event == FC_EVENT_CONNECTED {
        let (conn, event, _) = next(&alice_rx, "the end of the released context's connection");
        assert_eq!((conn, event), (a2, FC_EVENT_EOF));
    } else {
        let why = String::from_utf8_lossy(&why);
        assert_eq!(event, FC_EVENT_ERROR, "{why}");
        assert!(
            why.contains("cancelled by the peer (code 0: shutdown)"),
            "{why}"
        );
    }
    // The peer hears the close while the release is still flushing and joining.
    let deadline = std::time::Instant::now() + WAIT;
    while RELEASED_IN_CALLBACK.load(Ordering::SeqCst) == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the release did not return"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(RELEASED_IN_CALLBACK.load(Ordering::SeqCst), FC_OK);
    assert_eq!(fc_release(bob), FC_ERR_INVALID_CONTEXT);
    assert_eq!(fc_is_passive(b2), FC_ERR_INVALID_CONNECTION);
    assert_eq!(fc_release(alice), FC_OK);
}

/// Dials `peer` from `ctx` for service 5 over datagrams, events to `cb` with `arg`.
fn dial(
    ctx: *mut fc_context,
    peer: &CStr,
    cb: unsafe extern "C" fn(fc_conn, c_int, *const u8, usize, *mut c_void),
    arg: *mut c_void,
) -> fc_conn {
    // SAFETY: `peer` is NUL-terminated; `cb` matches fc_event_cb.
    unsafe { fc_connect(ctx, peer.as_ptr(), FC_PROTOCOL_DATAGRAM, 5, Some(cb), arg) }
}

fn unsafe_send(conn: fc_conn, data: &[u8]) -> c_int {
    // SAFETY: `data` is a live slice of `len` bytes.
    unsafe { fc_send(conn, data.as_ptr(), data.len()) }
}

fn unsafe_peer_id(ctx: *mut fc_context, buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: `buf` has `len` writable bytes (string_out's buffer).
    unsafe { fc_get_peer_id(ctx, buf, len) }
}

fn unsafe_peer(conn: fc_conn, buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: as unsafe_peer_id.
    unsafe { fc_get_peer(conn, buf, len) }
}

fn unsafe_addr(conn: fc_conn, remote: bool, buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: as unsafe_peer_id.
    unsafe {
        if remote {
            fc_get_remote_addr(conn, buf, len)
        } else {
            fc_get_local_addr(conn, buf, len)
        }
    }
}
