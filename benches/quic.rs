//! QUIC bulk transfer: 4 MiB one way over one bidirectional stream of fog-quic, between two
//! endpoints in memory in virtual time (the stack's own CPU cost: quinn-proto, AES-GCM packet
//! protection, our wrapper), the handshake done in setup and not measured.
//!
//! `cargo bench -p fog-benches --bench quic`
//!
//! Throughput is in payload bytes.

// The wall clock only gives virtual time its epoch.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fog_quic::{Config, ConnHandle, Endpoint, Event, Read, StreamKind};
use fog_signal::KeyPair;

const SIZE: usize = 4 << 20;
const SERVICE: u16 = 7;

struct Pair {
    now: Instant,
    server: Endpoint,
    client: Endpoint,
    conn: ConnHandle,
    incoming: Option<ConnHandle>,
    addrs: [SocketAddr; 2],
    buf: Vec<u8>,
}

impl Pair {
    /// Two endpoints with a completed handshake.
    fn connected() -> Self {
        let now = Instant::now();
        let s_id = KeyPair::from_seed(&[1; 32]);
        let c_id = KeyPair::from_seed(&[2; 32]);
        let server =
            Endpoint::new(Config::default().with_service(SERVICE), &s_id, [1; 32], now).unwrap();
        let mut client = Endpoint::new(Config::default(), &c_id, [2; 32], now).unwrap();
        let addrs: [SocketAddr; 2] = ["10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap()];
        let conn = client
            .connect(now, addrs[0], s_id.peer_id(), SERVICE)
            .unwrap();
        let mut p = Pair {
            now,
            server,
            client,
            conn,
            incoming: None,
            addrs,
            buf: vec![0; 1500],
        };
        let mut connected = 0;
        while connected < 2 {
            p.round();
            while let Some(e) = p.client.poll_event() {
                connected += usize::from(matches!(e, Event::Connected { .. }));
            }
            while let Some(e) = p.server.poll_event() {
                if let Event::Connected { conn, .. } = e {
                    p.incoming = Some(conn);
                    connected += 1;
                }
            }
        }
        p
    }

    /// Every datagram delivered at once, then virtual time advances 50 µs.
    fn round(&mut self) {
        while let Some(t) = self.client.poll_transmit(self.now, &mut self.buf) {
            self.server
                .handle_datagram(self.now, self.addrs[1], &self.buf[..t.len]);
        }
        while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
            self.client
                .handle_datagram(self.now, self.addrs[0], &self.buf[..t.len]);
        }
        self.now += Duration::from_micros(50);
        for ep in [&mut self.client, &mut self.server] {
            if ep.poll_timeout().is_some_and(|d| d <= self.now) {
                ep.handle_timeout(self.now);
            }
        }
    }
}

fn transfer(mut p: Pair, data: &[u8]) -> usize {
    let stream = p.client.open(p.conn, StreamKind::Bidirectional).unwrap();
    let server = p.incoming.unwrap();
    let mut off = 0;
    let mut finished = false;
    let mut got = 0;
    let mut theirs = None;
    let mut rbuf = vec![0u8; 1 << 16];
    loop {
        while off < data.len() {
            match p.client.write(p.conn, stream, &data[off..]) {
                Ok(n) => off += n,
                Err(_) => break,
            }
        }
        if off == data.len() && !finished {
            p.client.finish(p.conn, stream).unwrap();
            finished = true;
        }
        while p.client.poll_event().is_some() {}
        while let Some(e) = p.server.poll_event() {
            if let Event::StreamOpened { stream, .. } = e {
                theirs = Some(stream);
            }
        }
        if let Some(s) = theirs {
            loop {
                match p.server.read(server, s, &mut rbuf) {
                    Ok(Read::Data(n)) => got += n,
                    Ok(Read::Finished) => return got,
                    Err(_) => break,
                }
            }
        }
        p.round();
    }
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let mut group = c.benchmark_group("quic_bulk_4MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("fog_quic_in_memory", |b| {
        b.iter_batched(
            Pair::connected,
            |p| {
                let got = transfer(p, black_box(&data));
                assert_eq!(got, SIZE);
                got
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
