//! Binding requests answered per second by fogd and by coturn's `turnserver --stun-only`, in one
//! run, on loopback, with the same client and the same single core for each server.
//!
//! ```text
//! cargo bench -p fogd --bench stun_load
//! cargo bench -p fogd --bench stun_load -- --seconds 5 --rounds 3 --sockets 8 --window 8
//! ```
//!
//! Each server listens on 127.0.0.1 and 127.0.0.2 (two ports each, as for RFC 5780) and is pinned
//! to CPU 0 with `taskset -c 0`; this process, the client, pins itself to CPU 1. fogd runs with
//! `--stun-no-rate-limit`: every request comes from 127.0.0.1, and the default limit of 20
//! answers per second per source IP would otherwise be what is measured. coturn has no per-source
//! limit for Binding requests.
//!
//! The client keeps `window` Binding requests in flight on each of `sockets` UDP sockets (a
//! closed loop: each answer releases the next request), so the server's socket queue never runs
//! dry and never overflows. A socket that hears nothing for 50 ms is assumed to have lost its
//! requests and is refilled. After a one-second warm-up it counts valid Binding success answers
//! for `seconds`, and reads the server's CPU time from /proc to show whether the server was the
//! bottleneck (about 100 % of its core) or the client was. Servers alternate, `rounds` times each
//! (who goes first alternates too).
//!
//! The summary compares, each as a median over the rounds and as the median of the per-round
//! ratios to coturn (back-to-back runs, so the ratio moves less than the rates):
//!
//! - answers per second, the issue's figure;
//! - answers per second of the server's own CPU time, which holds still when other work on a
//!   shared machine takes the client's or the server's core;
//! - the ratio over the rounds in which both servers used at least 95 % of their core, i.e.
//!   where the rate measured is really the server's.
//!
//! It sends only to addresses on this machine (127.0.0.1), and stops by itself.

// A load generator reads the clock to pace and measure itself.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fog_stun::wire::{BindingRequest, TransactionId};
use support::{
    A1, A2, ChildGuard, all_answer, clock_ticks_per_s, coturn_args, cpu_ticks, find_tool,
    free_port_pair, load_average, median, pin_self_to_cpu1,
};

/// A socket with requests in flight and no answer for this long is refilled.
const STALL: Duration = Duration::from_millis(50);
const WARM_UP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Options {
    seconds: u64,
    rounds: usize,
    sockets: usize,
    window: usize,
    /// Also run coturn with one relay thread (`-m 1`) besides its default.
    coturn_one_thread: bool,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 5,
            rounds: 3,
            sockets: 8,
            window: 8,
            coturn_one_thread: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} takes a positive number"))
            };
            match arg.as_str() {
                "--seconds" => options.seconds = value("--seconds").max(1),
                "--rounds" => options.rounds = value("--rounds").max(1) as usize,
                "--sockets" => options.sockets = value("--sockets").max(1) as usize,
                "--window" => options.window = value("--window").max(1) as usize,
                "--coturn-one-thread" => options.coturn_one_thread = true,
                // `cargo bench` passes --bench to every bench binary.
                "--bench" => {}
                other => panic!(
                    "unknown argument {other}; known: --seconds N --rounds N --sockets N \
                     --window N --coturn-one-thread"
                ),
            }
        }
        options
    }
}

/// A server under test: how to start it on a port pair.
#[derive(Debug, Clone)]
struct Contender {
    label: &'static str,
    program: PathBuf,
    args: fn(u16, u16) -> Vec<String>,
}

fn fogd_args(p1: u16, p2: u16) -> Vec<String> {
    vec![
        "--stun".into(),
        format!("127.0.0.1:{p1}"),
        "--stun-alt".into(),
        format!("127.0.0.2:{p2}"),
        "--stun-no-rate-limit".into(),
    ]
}

fn coturn_one_thread_args(p1: u16, p2: u16) -> Vec<String> {
    let mut args = coturn_args(p1, p2);
    args.extend(["--relay-threads".into(), "1".into()]);
    args
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    answers_per_s: f64,
    /// The server's CPU time over the measured interval, as a share of one core.
    server_cpu: Option<f64>,
    /// Sockets refilled after a stall (lost requests).
    stalls: u64,
}

impl Run {
    /// Answers per second of the server's own CPU time: what it would answer with its core to
    /// itself. It does not move when something else takes the client's or the server's core.
    fn per_cpu_second(&self) -> Option<f64> {
        self.server_cpu
            .filter(|&c| c > 0.05)
            .map(|c| self.answers_per_s / c)
    }

    /// Whether the server used (nearly) all of its core: the client kept up, and the rate is
    /// the server's.
    fn saturated(&self) -> bool {
        self.server_cpu.is_some_and(|c| c >= 0.95)
    }
}

fn main() {
    let options = Options::parse();
    let fogd = PathBuf::from(env!("CARGO_BIN_EXE_fogd"));
    let Some(turnserver) = find_tool("turnserver") else {
        eprintln!(
            "stun_load: turnserver not installed (Debian package coturn); nothing to compare"
        );
        return;
    };
    let taskset = find_tool("taskset");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = taskset.is_some() && cores >= 2;
    if pinned {
        pin_self_to_cpu1(taskset.as_deref().unwrap(), "stun_load");
    } else {
        eprintln!("stun_load: no taskset or fewer than 2 CPUs; servers and client are not pinned");
    }

    let mut contenders = vec![
        Contender {
            label: "fogd",
            program: fogd,
            args: fogd_args,
        },
        Contender {
            label: "coturn",
            program: turnserver.clone(),
            args: coturn_args,
        },
    ];
    if options.coturn_one_thread {
        contenders.push(Contender {
            label: "coturn -m 1",
            program: turnserver,
            args: coturn_one_thread_args,
        });
    }

    println!("load average at the start: {}", load_average());
    println!(
        "stun_load: {} s x {} rounds per server, {} sockets x {} in flight, servers {}",
        options.seconds,
        options.rounds,
        options.sockets,
        options.window,
        if pinned {
            "on CPU 0 (taskset -c 0), client on CPU 1"
        } else {
            "unpinned"
        }
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    for round in 0..options.rounds {
        // Alternate who goes first, so that a slow drift of the machine favours no one.
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let contender = &contenders[i];
            let run = measure(contender, taskset.as_deref().filter(|_| pinned), &options);
            println!(
                "  round {} {:<12} {:>9.0} answers/s  server CPU {}  stalls {}",
                round + 1,
                contender.label,
                run.answers_per_s,
                run.server_cpu
                    .map_or("?".to_owned(), |c| format!("{:.0} %", c * 100.0)),
                run.stalls
            );
            results[i].push(run);
        }
    }

    println!();
    println!(
        "| server | answers/s (median) | vs coturn | answers per CPU-second (median) | vs coturn | \
         saturated rounds: vs coturn |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, contender) in contenders.iter().enumerate() {
        let rate = median(results[i].iter().map(|r| r.answers_per_s).collect());
        let per_cpu = median(results[i].iter().filter_map(Run::per_cpu_second).collect());
        // Runs of one round were back to back, so their ratio moves less than the rates do
        // when something else wakes up on the machine.
        let pairs = || results[i].iter().zip(&results[1]);
        let rate_ratio = median(
            pairs()
                .map(|(run, coturn)| run.answers_per_s / coturn.answers_per_s)
                .collect(),
        );
        let cpu_ratio = median(
            pairs()
                .filter_map(|(run, coturn)| Some(run.per_cpu_second()? / coturn.per_cpu_second()?))
                .collect(),
        );
        let saturated: Vec<f64> = pairs()
            .filter(|(run, coturn)| run.saturated() && coturn.saturated())
            .map(|(run, coturn)| run.answers_per_s / coturn.answers_per_s)
            .collect();
        let saturated = match saturated.len() {
            0 => "none".to_owned(),
            n => format!("{:.2}x ({n} of {})", median(saturated), options.rounds),
        };
        println!(
            "| {} | {rate:.0} | {rate_ratio:.2}x | {per_cpu:.0} | {cpu_ratio:.2}x | {saturated} |",
            contender.label
        );
    }
    println!("load average at the end: {}", load_average());
}

/// Starts `contender` (under `taskset -c 0` if given), loads it and stops it.
fn measure(contender: &Contender, taskset: Option<&Path>, options: &Options) -> Run {
    let mut last = String::new();
    for _ in 0..3 {
        let (p1, p2) = free_port_pair();
        let args = (contender.args)(p1, p2);
        let mut command = match taskset {
            Some(taskset) => {
                let mut c = Command::new(taskset);
                c.args(["-c", "0"]).arg(&contender.program);
                c
            }
            None => Command::new(&contender.program),
        };
        command.args(&args);
        // Quiet logs for both: a log line per request would be measured too.
        command.env("RUST_LOG", "warn");
        // Killed and reaped when it goes out of scope, after the run.
        let child = ChildGuard::spawn(contender.label, &mut command)
            .unwrap_or_else(|e| panic!("starting {}: {e}", contender.label));
        let addrs = [(A1, p1), (A1, p2), (A2, p1), (A2, p2)].map(SocketAddr::from);
        if !all_answer(&addrs) {
            last = child.output_text();
            continue;
        }
        return load(addrs[0], child.id(), options).expect("loading the server");
    }
    panic!("{} did not start\n{last}", contender.label);
}

/// Fires Binding requests at `server` for the warm-up and the measured time.
fn load(server: SocketAddr, server_pid: u32, options: &Options) -> io::Result<Run> {
    let sockets: Vec<UdpSocket> = (0..options.sockets)
        .map(|_| {
            let s = UdpSocket::bind((A1, 0))?;
            s.set_nonblocking(true)?;
            s.connect(server)?;
            Ok(s)
        })
        .collect::<io::Result<_>>()?;
    let mut request = [0u8; 64];
    let len = BindingRequest::new(TransactionId::new([0; 12]))
        .encode(&mut request)
        .expect("a Binding request encodes");
    let request = &mut request[..len];

    let mut in_flight = vec![0usize; sockets.len()];
    let mut last_answer = vec![Instant::now(); sockets.len()];
    let mut buf = [0u8; 1500];
    let mut sequence = 0u64;
    let mut answers = 0u64;
    let mut stalls = 0u64;

    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let end = measure_from + Duration::from_secs(options.seconds);
    let mut measuring = false;
    let mut cpu_at_start = None;
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            answers = 0;
            stalls = 0;
            cpu_at_start = cpu_ticks(server_pid);
        }
        if now >= end {
            break;
        }
        for (i, socket) in sockets.iter().enumerate() {
            loop {
                match socket.recv(&mut buf) {
                    // A Binding success response (RFC 5389 §6: type 0x0101).
                    Ok(n) if n >= 20 && buf[..2] == [0x01, 0x01] => {
                        answers += 1;
                        in_flight[i] = in_flight[i].saturating_sub(1);
                        last_answer[i] = now;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors and the like: the next send finds out more.
                    Err(_) => break,
                }
            }
            if in_flight[i] > 0 && now.duration_since(last_answer[i]) > STALL {
                in_flight[i] = 0;
                last_answer[i] = now;
                stalls += 1;
            }
            while in_flight[i] < options.window {
                // A fresh transaction ID per request, as real clients send.
                sequence += 1;
                request[12..20].copy_from_slice(&sequence.to_be_bytes());
                match socket.send(request) {
                    Ok(_) => in_flight[i] += 1,
                    Err(_) => break,
                }
            }
        }
    }
    let elapsed = Instant::now().duration_since(measure_from).as_secs_f64();
    let server_cpu = cpu_at_start
        .zip(cpu_ticks(server_pid))
        .map(|(a, b)| (b - a) as f64 / clock_ticks_per_s() / elapsed);
    Ok(Run {
        answers_per_s: answers as f64 / elapsed,
        server_cpu,
        stalls,
    })
}
