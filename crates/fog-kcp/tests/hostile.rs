//! Hostile segments: dropped and counted, never a panic, never an unbounded buffer.

// Tests may read the clock: it only gives virtual time its epoch.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use fog_kcp::wire::{Command, SegmentRepr, WireError};
use fog_kcp::{Config, Kcp, PacketError};
use fog_test_support::SplitMix;

fn segment(repr: SegmentRepr, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(data, &mut buf);
    buf
}

fn push(conv: u32, sn: u32, frg: u8, data: &[u8]) -> Vec<u8> {
    segment(
        SegmentRepr {
            conv,
            cmd: Command::Push,
            frg,
            wnd: 128,
            ts: 0,
            sn,
            una: 0,
            len: data.len() as u32,
        },
        data,
    )
}

#[test]
fn wrong_conv_short_and_truncated_are_dropped_and_counted() {
    let now = Instant::now();
    let mut kcp = Kcp::new(1, Config::default(), now);
    assert_eq!(
        kcp.handle_packet(now, &push(2, 0, 0, b"x")),
        Err(PacketError::WrongConv {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        kcp.handle_packet(now, &[0; 23]),
        Err(PacketError::Malformed(WireError::TooShort))
    );
    let mut huge = push(1, 0, 0, b"abc");
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        kcp.handle_packet(now, &huge),
        Err(PacketError::Malformed(WireError::Truncated))
    );
    let mut beyond = push(1, 0, 0, b"abc");
    beyond[20] = 4;
    assert_eq!(
        kcp.handle_packet(now, &beyond),
        Err(PacketError::Malformed(WireError::Truncated))
    );
    let mut unknown = push(1, 0, 0, b"abc");
    unknown[4] = 0;
    assert_eq!(
        kcp.handle_packet(now, &unknown),
        Err(PacketError::Malformed(WireError::UnknownCommand(0)))
    );
    // A good segment followed by one of another conversation: the whole datagram is dropped.
    let mut mixed = push(1, 0, 0, b"ok");
    mixed.extend(push(9, 1, 0, b"no"));
    assert!(kcp.handle_packet(now, &mixed).is_err());
    assert_eq!(kcp.stats().datagrams_dropped, 6);
    assert_eq!(kcp.stats().datagrams_received, 0);
    assert_eq!(kcp.recv_queue_len(), 0, "nothing of a bad datagram applied");
    assert_eq!(kcp.poll_timeout(), None, "nothing to acknowledge");
}

#[test]
fn far_away_sn_and_una_change_nothing() {
    let now = Instant::now();
    let mut kcp = Kcp::new(1, Config::default(), now);
    kcp.send(b"mine").unwrap();
    kcp.handle_timeout(now);
    let mut buf = vec![0; 1500];
    assert!(kcp.poll_transmit(now, &mut buf).is_some());
    assert_eq!(kcp.waiting_to_send(), 1);
    for sn in [128, 1 << 20, u32::MAX / 2, u32::MAX / 2 + 1, u32::MAX] {
        // una far ahead acknowledges nothing we sent.
        let mut seg = SegmentRepr {
            conv: 1,
            cmd: Command::Push,
            frg: 0,
            wnd: 128,
            ts: 0,
            sn,
            una: sn,
            len: 1,
        };
        kcp.handle_packet(now, &segment(seg, b"z")).unwrap();
        seg.cmd = Command::Ack;
        seg.len = 0;
        kcp.handle_packet(now, &segment(seg, &[])).unwrap();
    }
    assert_eq!(
        kcp.waiting_to_send(),
        1,
        "our segment is still unacknowledged"
    );
    assert_eq!(kcp.recv_buffer_len(), 0, "outside the window: not stored");
    // Ahead of the window: not acknowledged. On the 32-bit circle 2^32-1 is just *behind*
    // rcv_nxt: an old segment, which ikcp.c acknowledges again (the first ack may have been lost).
    assert_eq!(kcp.pending_acks(), 1);
    assert!(kcp.stats().hostile_segments >= 4);
}

#[test]
fn receive_buffer_and_ack_list_stay_bounded() {
    let now = Instant::now();
    let config = Config {
        ack_list_limit: 300,
        ..Config::default()
    };
    let mut kcp = Kcp::new(1, config, now);
    let data = vec![7u8; 1000];
    // Everything but sn 0: the buffer holds at most the window; duplicates are not stored.
    for round in 0..3 {
        for sn in 1..1000u32 {
            let _ = round;
            kcp.handle_packet(now, &push(1, sn, 0, &data)).unwrap();
        }
    }
    assert_eq!(
        kcp.recv_buffer_len(),
        127,
        "sn 1..=127 of a 128-segment window"
    );
    assert_eq!(kcp.pending_acks(), 300);
    assert!(kcp.stats().acks_dropped > 0);
    let mut buf = vec![0; 1 << 20];
    assert_eq!(kcp.recv(&mut buf), Ok(None));
}

#[test]
fn impossible_fragment_countdown_does_not_stall() {
    let now = Instant::now();
    let mut kcp = Kcp::new(1, Config::default(), now);
    // frg 200 can never be completed in a 128-segment queue; then a whole message.
    kcp.handle_packet(now, &push(1, 0, 200, b"bogus")).unwrap();
    kcp.handle_packet(now, &push(1, 1, 0, b"fine")).unwrap();
    let mut buf = [0; 64];
    assert_eq!(kcp.recv(&mut buf), Ok(Some(4)));
    assert_eq!(&buf[..4], b"fine");
    assert_eq!(kcp.stats().hostile_segments, 1);
}

#[test]
fn random_bytes_never_panic() {
    let now = Instant::now();
    let mut kcp = Kcp::new(0x0403_0201, Config::fast(), now);
    let mut rng = SplitMix(0x1234_5678_9abc_def0);
    let mut next = || rng.next_u64();
    let mut buf = vec![0; 1500];
    for i in 0..20_000u32 {
        let len = (next() % 200) as usize;
        let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 24 {
            // Mostly our conversation and known commands, so the deeper paths run.
            datagram[..4].copy_from_slice(&0x0403_0201u32.to_le_bytes());
            datagram[4] = 81 + (next() % 4) as u8;
            let body = (len - 24) as u32;
            datagram[20..24].copy_from_slice(&(next() as u32 % (body + 2)).to_le_bytes());
        }
        let t = now + Duration::from_millis(u64::from(i));
        let _ = kcp.handle_packet(t, &datagram);
        kcp.handle_timeout(t);
        while kcp.poll_transmit(t, &mut buf).is_some() {}
        let _ = kcp.recv(&mut buf);
        assert!(kcp.recv_buffer_len() <= 128);
        assert!(kcp.recv_queue_len() <= 128);
        assert!(kcp.pending_acks() <= kcp.config().ack_list_limit);
    }
}
