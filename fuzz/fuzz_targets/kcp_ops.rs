//! Two KCP machines (plain, or FogConnect connections) driven by an arbitrary sequence of
//! operations: sends of any size, reads with any buffer, time passing, the link delivering,
//! dropping, duplicating or reordering datagrams, hostile segments built from parts (any
//! command, fragment count, window, sequence numbers, length) and raw bytes.
//!
//! Invariants: nothing panics; the receive buffer and queue stay within the receive window, the
//! acknowledgement list and send queue within their limits; no datagram exceeds the MTU; after
//! `handle_timeout(now)` no machine asks to be woken before `now`; without hostile input,
//! message mode delivers exactly the messages sent, in order, and stream mode a prefix of the
//! bytes sent.

#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_kcp::wire::{Command, SegmentRepr};
use fog_kcp::{Config, Connection, Kcp, Mode, NoDelay, Role};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Setup {
    connections: bool,
    stream: bool,
    nodelay: u8,
    interval: u16,
    resend: u8,
    nc: bool,
    mtu: u16,
    send_window: u8,
    recv_window: u8,
    send_queue_limit: u8,
    ack_list_limit: u8,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Send {
        from: bool,
        len: u16,
        fill: u8,
    },
    Recv {
        who: bool,
        buf: u16,
    },
    Advance {
        ms: u16,
    },
    Deliver {
        index: u8,
    },
    Drop {
        index: u8,
    },
    Duplicate {
        index: u8,
    },
    Close {
        who: bool,
    },
    Segment {
        to: bool,
        cmd: u8,
        frg: u8,
        wnd: u16,
        ts: u32,
        sn: u16,
        una: u16,
        len: u16,
        lie_about_len: bool,
    },
    Raw {
        to: bool,
        bytes: Vec<u8>,
    },
}

const CONV: u32 = 0x0b0c_0d0e;

enum Peer {
    Plain(Kcp),
    Conn(Connection),
}

impl Peer {
    fn kcp(&self) -> &Kcp {
        match self {
            Peer::Plain(k) => k,
            Peer::Conn(c) => c.kcp(),
        }
    }
    fn send(&mut self, data: &[u8]) -> bool {
        match self {
            Peer::Plain(k) => k.send(data).is_ok(),
            Peer::Conn(c) => c.send(data).is_ok(),
        }
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self {
            Peer::Plain(k) => k.recv(buf).ok().flatten(),
            Peer::Conn(c) => c.recv(buf).ok().flatten(),
        }
    }
    fn input(&mut self, now: Instant, datagram: &[u8]) {
        match self {
            Peer::Plain(k) => {
                let _ = k.handle_packet(now, datagram);
            }
            Peer::Conn(c) => {
                let _ = c.handle_packet(now, datagram);
            }
        }
    }
    fn timeout(&mut self, now: Instant) {
        match self {
            Peer::Plain(k) => k.handle_timeout(now),
            Peer::Conn(c) => c.handle_timeout(now),
        }
    }
    fn deadline(&self) -> Option<Instant> {
        match self {
            Peer::Plain(k) => k.poll_timeout(),
            Peer::Conn(c) => c.poll_timeout(),
        }
    }
    fn transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self {
            Peer::Plain(k) => k.poll_transmit(now, buf),
            Peer::Conn(c) => c.poll_transmit(now, buf),
        }
    }
    fn drain_events(&mut self) {
        match self {
            Peer::Plain(k) => while k.poll_event().is_some() {},
            Peer::Conn(c) => while c.poll_event().is_some() {},
        }
    }
    fn framing(&self) -> bool {
        matches!(self, Peer::Conn(_))
    }
}

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    let config = Config {
        mtu: 50 + usize::from(setup.mtu) % 1500,
        send_window: u16::from(setup.send_window).max(1),
        recv_window: u16::from(setup.recv_window),
        nodelay: NoDelay {
            nodelay: u32::from(setup.nodelay % 3),
            interval: u32::from(setup.interval),
            resend: u32::from(setup.resend % 5),
            no_congestion_window: setup.nc,
        },
        mode: if setup.stream {
            Mode::Stream
        } else {
            Mode::Message
        },
        send_queue_limit: usize::from(setup.send_queue_limit).max(1) * 4,
        ack_list_limit: usize::from(setup.ack_list_limit).max(1) * 4,
        ..Config::default()
    };
    let mtu = config.mtu;
    let start = Instant::now();
    let mut now = start;
    let mut peers = if setup.connections {
        [
            Peer::Conn(Connection::new(CONV, config.clone(), Role::Initiator, now)),
            Peer::Conn(Connection::new(CONV, config.clone(), Role::Responder, now)),
        ]
    } else {
        [
            Peer::Plain(Kcp::new(CONV, config.clone(), now)),
            Peer::Plain(Kcp::new(CONV, config.clone(), now)),
        ]
    };
    // (to, datagram)
    let mut link: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut received: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut hostile = false;
    let mut buf = vec![0u8; 2048];
    let mut counter = 0u8;

    for op in ops.into_iter().take(2000) {
        match op {
            Op::Send { from, len, fill } => {
                let from = usize::from(from);
                let len = usize::from(len) % 200_000;
                let data: Vec<u8> = (0..len)
                    .map(|i| fill.wrapping_add(counter).wrapping_add(i as u8))
                    .collect();
                counter = counter.wrapping_add(1);
                if peers[from].send(&data) {
                    sent[from].push(data);
                }
            }
            Op::Recv { who, buf: size } => {
                let who = usize::from(who);
                let mut out = vec![0u8; usize::from(size)];
                while let Some(n) = peers[who].recv(&mut out) {
                    received[who].push(out[..n].to_vec());
                }
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(ms));
                for peer in &mut peers {
                    peer.timeout(now);
                    if let Some(at) = peer.deadline() {
                        assert!(at > now, "asks to be woken in the past");
                    }
                }
            }
            Op::Deliver { index } => {
                if !link.is_empty() {
                    let i = usize::from(index) % link.len();
                    if let Some((to, datagram)) = link.remove(i) {
                        peers[to].input(now, &datagram);
                    }
                }
            }
            Op::Drop { index } => {
                if !link.is_empty() {
                    let i = usize::from(index) % link.len();
                    link.remove(i);
                }
            }
            Op::Duplicate { index } => {
                if !link.is_empty() && link.len() < 4096 {
                    let i = usize::from(index) % link.len();
                    let copy = link[i].clone();
                    link.push_back(copy);
                }
            }
            Op::Close { who } => {
                if let Peer::Conn(c) = &mut peers[usize::from(who)] {
                    c.close(now);
                }
            }
            Op::Segment {
                to,
                cmd,
                frg,
                wnd,
                ts,
                sn,
                una,
                len,
                lie_about_len,
            } => {
                hostile = true;
                let to = usize::from(to);
                let cmd = Command::from_byte(cmd).unwrap_or(Command::Push);
                let len = u32::from(len % 3000);
                let repr = SegmentRepr {
                    conv: CONV,
                    cmd,
                    frg,
                    wnd,
                    ts,
                    sn: u32::from(sn),
                    una: u32::from(una),
                    len,
                };
                let payload = vec![0x5a; len as usize];
                let mut datagram = vec![0u8; 1 + repr.buffer_len()];
                datagram[0] = 4;
                repr.emit(&payload, &mut datagram[1..]);
                if lie_about_len {
                    datagram.truncate(datagram.len() / 2);
                }
                let datagram = if peers[to].framing() {
                    &datagram[..]
                } else {
                    &datagram[1..]
                };
                peers[to].input(now, datagram);
            }
            Op::Raw { to, bytes } => {
                hostile = true;
                peers[usize::from(to)].input(now, &bytes);
            }
        }
        for from in 0..2 {
            while let Some(n) = peers[from].transmit(now, &mut buf) {
                assert!(n <= mtu + usize::from(peers[from].framing()));
                if link.len() < 4096 {
                    link.push_back((1 - from, buf[..n].to_vec()));
                }
            }
            peers[from].drain_events();
            let kcp = peers[from].kcp();
            let window = usize::from(kcp.recv_window());
            assert!(kcp.recv_buffer_len() <= window);
            assert!(kcp.recv_queue_len() <= window);
            assert!(kcp.pending_acks() <= kcp.config().ack_list_limit);
            assert!(kcp.send_queue_len() <= kcp.config().send_queue_limit);
        }
    }

    if !hostile {
        for who in 0..2 {
            let got = &received[who];
            let want = &sent[1 - who];
            if setup.stream {
                let got = got.concat();
                let want = want.concat();
                assert!(got.len() <= want.len() && got[..] == want[..got.len()]);
            } else {
                assert!(got.len() <= want.len() && got[..] == want[..got.len()]);
            }
        }
    }
});
