//! Bulk transfer through two in-memory KCP machines, ours (fog-kcp) against the `kcp` crate
//! (the Rust port of ikcp) driven the same way: 3,048 messages of 1,376 bytes (4,194,048 bytes, one
//! full segment each at the default MTU of 1,400) from A to B, `nodelay(1, 10, 2, 1)`, windows of
//! 256, no loss. Virtual time advances 10 ms (one flush interval) per step; every datagram of a
//! step is delivered within it. What is measured is the CPU cost of the protocol work per byte:
//! segmenting, flushing, encoding, parsing, acknowledging, reassembling.
//!
//! `cargo bench -p fog-benches --bench kcp`

// Instant::now only gives virtual time its epoch.
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hint::black_box;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fog_kcp::{Config, Kcp, NoDelay};

const MESSAGE: usize = 1376;
/// 3,048 messages: 4,194,048 bytes, just under 4 MiB.
const TOTAL: usize = 3048 * MESSAGE;
const WINDOW: u16 = 256;
const STEP: Duration = Duration::from_millis(10);

fn config() -> Config {
    Config::default()
        .with_nodelay(NoDelay::FAST)
        .with_windows(WINDOW, WINDOW)
}

/// Ours: returns the bytes B received and the steps (of 10 virtual ms) it took.
fn fog_kcp_transfer(payload: &[u8]) -> (usize, u32) {
    let mut steps = 0;
    let epoch = Instant::now();
    let mut now = epoch;
    let mut a = Kcp::new(1, config(), now);
    let mut b = Kcp::new(1, config(), now);
    let mut buf = vec![0u8; 1500];
    let mut message = vec![0u8; a.max_message_len()];
    let (mut queued, mut received) = (0, 0);
    while received < TOTAL {
        while queued < TOTAL && a.waiting_to_send() < usize::from(WINDOW) * 2 {
            a.send(payload).expect("queue has room");
            queued += payload.len();
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_packet(now, &buf[..n]).expect("our own datagram");
        }
        while let Some(n) = b.recv(&mut message).expect("large enough") {
            received += n;
        }
        b.handle_timeout(now);
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.handle_packet(now, &buf[..n]).expect("our own datagram");
        }
        now += STEP;
        steps += 1;
    }
    (received, steps)
}

/// The `kcp` crate's output: datagrams into a shared queue.
#[derive(Clone, Default)]
struct Wire(Rc<RefCell<VecDeque<Vec<u8>>>>);

impl io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().push_back(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kcp_crate(wire: &Wire) -> kcp::Kcp<Wire> {
    let mut k = kcp::Kcp::new(1, wire.clone());
    k.set_nodelay(true, 10, 2, true);
    k.set_wndsize(WINDOW, WINDOW);
    k
}

/// The `kcp` crate, the same steps: returns the bytes B received and the steps it took.
fn kcp_crate_transfer(payload: &[u8]) -> (usize, u32) {
    let mut steps = 0;
    let (a_out, b_out) = (Wire::default(), Wire::default());
    let mut a = kcp_crate(&a_out);
    let mut b = kcp_crate(&b_out);
    let mut message = vec![0u8; 256 * 1024];
    let (mut queued, mut received) = (0, 0);
    let mut ms = 0u32;
    while received < TOTAL {
        while queued < TOTAL && a.wait_snd() < usize::from(WINDOW) * 2 {
            a.send(payload).expect("queue has room");
            queued += payload.len();
        }
        a.update(ms).expect("update");
        b.update(ms).expect("update");
        while let Some(d) = a_out.0.borrow_mut().pop_front() {
            b.input(&d).expect("its own datagram");
        }
        while let Ok(n) = b.recv(&mut message) {
            received += n;
        }
        b.flush().expect("flush");
        while let Some(d) = b_out.0.borrow_mut().pop_front() {
            a.input(&d).expect("its own datagram");
        }
        ms += STEP.as_millis() as u32;
        steps += 1;
    }
    (received, steps)
}

fn bulk(c: &mut Criterion) {
    let payload: Vec<u8> = (0..MESSAGE).map(|i| i as u8).collect();
    let (ours, our_steps) = fog_kcp_transfer(&payload);
    let (theirs, their_steps) = kcp_crate_transfer(&payload);
    assert_eq!((ours, theirs), (TOTAL, TOTAL));
    eprintln!("virtual steps of 10 ms: fog-kcp {our_steps}, kcp crate {their_steps}");
    let mut group = c.benchmark_group("kcp_bulk");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    group.bench_function("fog-kcp", |bench| {
        bench.iter(|| black_box(fog_kcp_transfer(black_box(&payload))))
    });
    group.bench_function("kcp-crate", |bench| {
        bench.iter(|| black_box(kcp_crate_transfer(black_box(&payload))))
    });
    group.finish();
}

criterion_group!(benches, bulk);
criterion_main!(benches);
