//! uTP bulk transfer: 4 MiB one way over fog-utp, (a) two endpoints in memory in virtual time
//! (the stack's own cost), (b) two endpoints on loopback UDP sockets driven by one thread, and
//! (c) librqbit-utp on loopback (tokio, its default options) for comparison, in one run.
//!
//! `cargo bench -p fog-benches --bench utp`
//!
//! Throughput is in payload bytes.

// Sockets and the wall clock are what (b) and (c) measure.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fog_utp::{Config, ConnectionHandle, Endpoint, Event};

const SIZE: usize = 4 << 20;

/// A one-way transfer of `data` from endpoint `a` to endpoint `b`, without the network.
struct Bulk<'d> {
    a: Endpoint,
    b: Endpoint,
    conn: ConnectionHandle,
    incoming: Option<ConnectionHandle>,
    data: &'d [u8],
    off: usize,
    got: usize,
    rbuf: Vec<u8>,
}

impl<'d> Bulk<'d> {
    fn new(epoch: Instant, to_b: SocketAddr, data: &'d [u8]) -> Self {
        let mut a = Config::with_seed([1; 32]);
        a.send_buffer = 4 << 20;
        let mut b = Config::with_seed([2; 32]);
        b.recv_buffer = 4 << 20;
        let mut a = Endpoint::new(a, epoch);
        let conn = a.connect(epoch, to_b).unwrap();
        Bulk {
            a,
            b: Endpoint::new(b, epoch),
            conn,
            incoming: None,
            data,
            off: 0,
            got: 0,
            rbuf: vec![0u8; 1 << 16],
        }
    }

    /// Writes what fits, reads what arrived; true while bytes are still to come.
    fn pump(&mut self) -> bool {
        while self.off < self.data.len() {
            match self.a.write(self.conn, &self.data[self.off..]) {
                Ok(n) => self.off += n,
                Err(_) => break,
            }
        }
        while self.a.poll_event().is_some() {}
        while let Some(e) = self.b.poll_event() {
            if let Event::Incoming { conn, .. } = e {
                self.incoming = Some(conn);
            }
        }
        if let Some(c) = self.incoming {
            while let Ok(k @ 1..) = self.b.read(c, &mut self.rbuf) {
                self.got += k;
            }
        }
        self.got < self.data.len()
    }
}

/// (a): every datagram delivered at once, virtual time advancing 50 µs per round.
fn in_memory(data: &[u8]) -> usize {
    let epoch = Instant::now();
    let mut now = epoch;
    let (pa, pb): (SocketAddr, SocketAddr) =
        ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
    let mut t = Bulk::new(epoch, pb, data);
    let mut buf = vec![0u8; 1500];
    while t.pump() {
        while let Some(tx) = t.a.poll_transmit(now, &mut buf) {
            t.b.handle_packet(now, pa, &buf[..tx.len]);
        }
        while let Some(tx) = t.b.poll_transmit(now, &mut buf) {
            t.a.handle_packet(now, pb, &buf[..tx.len]);
        }
        now += Duration::from_micros(50);
        for ep in [&mut t.a, &mut t.b] {
            if ep.poll_timeout().is_some_and(|d| d <= now) {
                ep.handle_timeout(now);
            }
        }
    }
    t.got
}

/// (b): two nonblocking loopback sockets, one thread driving both endpoints.
fn loopback(data: &[u8]) -> usize {
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    sa.set_nonblocking(true).unwrap();
    sb.set_nonblocking(true).unwrap();
    let mut t = Bulk::new(Instant::now(), sb.local_addr().unwrap(), data);
    let mut buf = vec![0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.pump() {
        assert!(
            Instant::now() < deadline,
            "loopback transfer stalled at {}",
            t.got
        );
        for (ep, sock) in [(&mut t.a, &sa), (&mut t.b, &sb)] {
            let now = Instant::now();
            while let Some(tx) = ep.poll_transmit(now, &mut buf) {
                // A full socket buffer is a loss, as on a real path.
                let _ = sock.send_to(&buf[..tx.len], tx.destination);
            }
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => ep.handle_packet(Instant::now(), from, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            let now = Instant::now();
            if ep.poll_timeout().is_some_and(|d| d <= now) {
                ep.handle_timeout(now);
            }
        }
    }
    t.got
}

/// (c): librqbit-utp, one socket each, on a tokio runtime.
fn librqbit(rt: &tokio::runtime::Runtime, data: &[u8]) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt.block_on(async {
        let server = librqbit_utp::UtpSocket::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = librqbit_utp::UtpSocket::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.bind_addr();
        let reader = tokio::spawn(async move {
            let mut s = server.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < SIZE {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n;
            }
            got
        });
        let mut s = client.connect(addr).await.unwrap();
        s.write_all(data).await.unwrap();
        s.flush().await.unwrap();
        let got = reader.await.unwrap();
        drop(s);
        got
    })
}

fn bulk(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 251) as u8).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("utp_bulk_4MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("fog_utp_in_memory", |bench| {
        bench.iter(|| assert_eq!(black_box(in_memory(&data)), SIZE));
    });
    group.bench_function("fog_utp_loopback", |bench| {
        bench.iter(|| assert_eq!(black_box(loopback(&data)), SIZE));
    });
    group.bench_function("librqbit_utp_loopback", |bench| {
        bench.iter(|| assert_eq!(black_box(librqbit(&rt, &data)), SIZE));
    });
    group.finish();
}

criterion_group!(benches, bulk);
criterion_main!(benches);
