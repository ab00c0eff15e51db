//! The server ranker fed arbitrary datagrams (raw, or Binding responses to its real probes
//! from the right or a wrong server) at arbitrary times.
//!
//! Invariants: nothing panics; once drained it never asks to be woken before `now`; it
//! finishes by its deadline; its choice, if any, is a server that answered.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_stun::rank::{Event, RankConfig, Ranker};
use fog_stun::wire::{BindingResponse, Message};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input {
    Raw { from: u8, bytes: Vec<u8> },
    Answer { probe: u8, from: u8, error: bool },
    Wait { ms: u16 },
}

fuzz_target!(|data: (u8, Vec<Input>)| {
    let (n, inputs) = data;
    let servers: Vec<SocketAddr> = (0..n % 5)
        .map(|i| SocketAddr::from(([198, 51, 100, i + 1], 3478)))
        .collect();
    let source = SocketAddr::from(([192, 0, 2, 1], 5000));
    let start = Instant::now();
    let mut now = start;
    let mut ranker = Ranker::new(RankConfig::new(source, 7), servers.clone(), now);
    let mut sent: Vec<(Message, SocketAddr)> = Vec::new();
    let mut buf = vec![0u8; 1500];
    let mut done = None;
    for input in inputs.into_iter().take(200) {
        match input {
            Input::Raw { from, bytes } => {
                let source = SocketAddr::from(([198, 51, 100, from % 6], 3478));
                ranker.handle_packet(
                    now,
                    Receive {
                        source,
                        local: source,
                        payload: &bytes,
                    },
                );
            }
            Input::Answer { probe, from, error } => {
                if let Some((request, to)) = sent.get(usize::from(probe) % sent.len().max(1)) {
                    let mut answer = BindingResponse {
                        transaction_id: request.transaction_id,
                        xor_mapped: Some(source),
                        ..BindingResponse::default()
                    };
                    if error {
                        answer.error = Some(fog_stun::wire::ErrorCode::new(400));
                    }
                    let mut out = vec![0u8; 200];
                    if let Ok(len) = answer.encode(&mut out) {
                        let from = if from % 4 == 0 {
                            SocketAddr::from(([203, 0, 113, 9], 3478))
                        } else {
                            *to
                        };
                        ranker.handle_packet(
                            now,
                            Receive {
                                source: from,
                                local: source,
                                payload: &out[..len],
                            },
                        );
                    }
                }
            }
            Input::Wait { ms } => {
                now += Duration::from_millis(u64::from(ms % 3000));
                ranker.handle_timeout(now);
            }
        }
        // The driving contract's order: transmits, events, then the timer.
        while let Some(t) = ranker.poll_transmit(now, &mut buf) {
            assert!(servers.contains(&t.destination));
            if let Ok(m) = Message::decode(&buf[..t.len]) {
                sent.push((m, t.destination));
            }
        }
        if let Some(t) = ranker.poll_timeout() {
            assert!(t >= now, "asked to be woken in the past");
        }
        if let Some(Event::Done(ranking)) = ranker.poll_event() {
            done = Some(ranking);
        }
        if now >= start + Duration::from_secs(2) {
            assert!(ranker.is_done(), "past the deadline and not done");
        }
    }
    if let Some(ranking) = done {
        if let Some(i) = ranking.choice() {
            assert!(ranking.servers[i].1.is_some());
        }
    }
});
