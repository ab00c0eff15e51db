//! The cost of sealing and opening one datagram of a session (fogconnect's `seal`:
//! ChaCha20-Poly1305 with the 17-byte header as associated data, and the replay window), for
//! payloads of 64 and 1,366 bytes (the largest `Node::send` takes), on one core.
//!
//! `cargo bench -p fog-benches --bench seal`
//!
//! Throughput is in bytes of payload.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fogconnect::node::seal::{Keys, Kind};

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for len in [64usize, fogconnect::MAX_DATAGRAM] {
        let payload = vec![0x5a; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("seal_{len}"), |bench| {
            let (mut a, _) = Keys::fixed_pair();
            bench.iter(|| black_box(a.seal(Kind::Data, black_box(&payload))));
        });
        group.bench_function(format!("seal_and_open_{len}"), |bench| {
            let (mut a, mut b) = Keys::fixed_pair();
            bench.iter(|| {
                let sealed = a.seal(Kind::Data, black_box(&payload));
                black_box(b.open(&sealed).ok())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
