//! Memory: resident set (VmRSS) and its peak (VmHWM) of FogConnect's processes, read from
//! /proc, against issue 18's goals (an idle node ≤ 2 MB, a node with 1,000 connections
//! ≤ 30 MB).
//!
//! ```text
//! cargo bench -p fogd --bench memory
//! cargo bench -p fogd --bench memory -- --json
//! cargo bench -p fogd --bench memory -- --connections 1000 --transports quic,kcp --idle 5
//! cargo bench -p fogd --bench memory -- --skip-fogd
//! cargo bench -p fogd --bench memory -- --skip-fogd --transports none --builds default
//! FOG_RELR=0 cargo bench -p fogd --bench memory -- --skip-fogd --transports none --builds default
//! cargo bench -p fogd --bench memory -- --skip-fogd --transports none \
//!     --builds default,small,static --fault-around both
//! ```
//!
//! The last three measure only the idle nodes; `FOG_RELR=0` builds `fogconnect` without packed
//! relative relocations (see `crates/fog-cli/build.rs`), for the comparison. `--fault-around
//! both` measures each idle node twice, as it runs (fault-around off on its own code:
//! `fogconnect_ffi::memory`) and with the kernel's default (`FOG_FAULT_AROUND=1`); `on` only the
//! latter. `--builds static` links glibc statically: `fogconnect` built with
//! `RUSTFLAGS="-C target-feature=+crt-static" --target <host>` in `<target-dir>/static`
//! (build scripts and proc macros stay dynamic), and the C echo server with `cc -static`.
//!
//! Three parts, each process on its own, all on loopback through a fogd this bench starts:
//!
//! 1. **Idle nodes**: the C echo example (`crates/fog-ffi/examples-c/echo_server.c`, compiled
//!    with `cc` against the static library, as `fog-ffi`'s `c_examples` test does) and
//!    `fogconnect serve`, each measured `--idle` seconds (default 5) after it said it was
//!    ready (discovery done, registered with fogd).
//! 2. **1,000 idle connections per transport** (`--connections`, `--transports`): an
//!    accepting node and a calling node, each a fog-runtime `Runtime` in a process of its own
//!    (this bench re-executed with `--role acceptor` or `--role caller`). The acceptor is
//!    measured idle, then the caller opens every connection to it at once, and once all are
//!    up (or failed) and `--idle` seconds passed, both are measured again. Per connection:
//!    (RSS with them − RSS idle) / connections. fogd runs with its per-source STUN limit off,
//!    its frame rate and pending-offer limits lifted (every offer goes through one signaling
//!    connection), and the acceptor with room for every offer at once.
//! 3. **fogd with 10,000 registered peers**: `signal_load`'s first phase (it registers
//!    `--peers` peers over WebSocket and reads fogd's RSS; run here by `cargo bench`, with
//!    one second of offers after it).
//!
//! Each figure comes with the split /proc/PID/status gives (anonymous, file-backed) and the
//! thread count, so that a miss says where the memory is. It prints a table, or with `--json`
//! one JSON object. Each process it starts is killed when the bench ends.

// A bench reads the clock to wait and pace itself.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig};
use fogconnect::{AcceptPolicy, Event, KeyPair, NodeConfig, Transport};

use support::signal::free_tcp_port;
use support::{ChildGuard, Fogd, fd_limit, load_average, raise_fd_limit_or_reexec, status_kib};

/// The acceptor's service number.
const SERVICE: u16 = 7;
/// The acceptor's key seed: the caller derives its peer ID from it.
const ACCEPTOR_SEED: [u8; 32] = [0xAC; 32];
/// How long a child may take to say it is ready, and the connections to come up.
const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(90);

struct Options {
    json: bool,
    idle: Duration,
    connections: usize,
    transports: Vec<Transport>,
    peers: usize,
    skip_fogd: bool,
    skip_idle: bool,
    /// The builds whose idle nodes are measured (`--builds`).
    builds: Vec<Build>,
    /// Whether idle nodes run with the kernel's fault-around on their code (`--fault-around`):
    /// `false` is how they run by default (`fogconnect_ffi::memory`), `true` is `FOG_FAULT_AROUND=1`.
    fault_around: Vec<bool>,
}

/// A build of the idle nodes: a Cargo profile and the features of fog-cli and fog-ffi.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Build {
    /// The bench's own profile (release, with debug info) and every transport.
    Default,
    /// `--profile small` (Cargo.toml: size over speed, LTO, one codegen unit, abort on
    /// panic, stripped), every transport.
    Small,
    /// The bench's own profile with glibc linked statically (`+crt-static`, `cc -static`):
    /// no ld.so, libc.so, libm or libgcc_s mapped.
    Static,
}

impl Build {
    fn parse(name: &str) -> Self {
        match name {
            "default" => Build::Default,
            "small" => Build::Small,
            "static" => Build::Static,
            other => panic!("unknown build {other}; known: default, small, static"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Build::Default => "default",
            Build::Small => "small",
            Build::Static => "static",
        }
    }

    /// The Cargo profile, or `None` for the bench's own.
    fn profile(&self) -> Option<&'static str> {
        match self {
            Build::Default | Build::Static => None,
            Build::Small => Some("small"),
        }
    }

    /// A path inside this build's profile directory, next to `exe` (the bench's binary), for
    /// `fog_test_support::cargo_built` to read the profile from.
    fn near(&self, exe: &Path) -> PathBuf {
        let Some(profile) = self.profile() else {
            return exe.to_path_buf();
        };
        let mut dir = exe.parent().expect("the bench has a directory");
        if dir.file_name().and_then(|n| n.to_str()) == Some("deps") {
            dir = dir.parent().expect("deps has a parent");
        }
        dir.parent()
            .expect("the profile directory has a parent")
            .join(profile)
            .join("memory")
    }
}

fn parse_transport(name: &str) -> Transport {
    match name {
        "datagram" => Transport::Datagram,
        "kcp" => Transport::Kcp,
        "quic" => Transport::Quic,
        "utp" => Transport::Utp,
        other => panic!("unknown transport {other}; known: datagram, kcp, quic, utp"),
    }
}

fn transport_name(t: &Transport) -> String {
    format!("{t:?}").to_lowercase()
}

/// A child role's arguments: the role, the signaling URL, the STUN server, and for the caller
/// the transport and the number of connections.
struct Role {
    role: String,
    signal: String,
    stun: SocketAddr,
    transport: Transport,
    connections: usize,
}

fn parse() -> (Options, Option<Role>) {
    let mut options = Options {
        json: false,
        idle: Duration::from_secs(5),
        connections: 1_000,
        transports: vec![
            Transport::Datagram,
            Transport::Kcp,
            Transport::Quic,
            Transport::Utp,
        ],
        peers: 10_000,
        skip_fogd: false,
        skip_idle: false,
        builds: vec![Build::Default, Build::Small],
        fault_around: vec![false],
    };
    let (mut role, mut signal, mut stun, mut transport) = (None, None, None, Transport::Datagram);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} takes a value"))
        };
        let number = |name: &str, v: String| -> usize {
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("{name} takes a positive number"))
        };
        match arg.as_str() {
            "--json" => options.json = true,
            "--idle" => options.idle = Duration::from_secs(number(&arg, value(&arg)) as u64),
            "--connections" => options.connections = number(&arg, value(&arg)),
            "--peers" => options.peers = number(&arg, value(&arg)),
            "--transports" => {
                let list = value(&arg);
                options.transports = match list.as_str() {
                    "none" => Vec::new(),
                    _ => list.split(',').map(parse_transport).collect(),
                };
            }
            "--skip-fogd" => options.skip_fogd = true,
            "--skip-idle" => options.skip_idle = true,
            "--builds" => options.builds = value(&arg).split(',').map(Build::parse).collect(),
            "--fault-around" => {
                options.fault_around = match value(&arg).as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    "both" => vec![true, false],
                    other => panic!("--fault-around off|on|both, not {other}"),
                }
            }
            "--role" => role = Some(value(&arg)),
            "--signal" => signal = Some(value(&arg)),
            "--stun" => stun = Some(value(&arg).parse().expect("--stun IP:PORT")),
            "--transport" => transport = parse_transport(&value(&arg)),
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; known: --json --idle SECS --connections N \
                 --transports a,b|none --peers N --skip-fogd --skip-idle \
                 --builds default,small,static --fault-around off|on|both"
            ),
        }
    }
    let role = role.map(|role| Role {
        role,
        signal: signal.expect("a role needs --signal"),
        stun: stun.expect("a role needs --stun"),
        transport,
        connections: options.connections,
    });
    (options, role)
}

/// What /proc says about one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let field = |key| status_kib(pid, key).unwrap_or(0);
        Memory {
            rss: field("VmRSS"),
            hwm: field("VmHWM"),
            anon: field("RssAnon"),
            file: field("RssFile"),
            threads: field("Threads"),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"rss_kib\":{},\"hwm_kib\":{},\"anon_kib\":{},\"file_kib\":{},\"threads\":{}}}",
            self.rss, self.hwm, self.anon, self.file, self.threads
        )
    }
}

fn main() {
    raise_fd_limit_or_reexec();
    let (options, role) = parse();
    if let Some(role) = role {
        match role.role.as_str() {
            "acceptor" => run_acceptor(&role),
            "caller" => run_caller(&role),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rows: Vec<Row> = Vec::new();
    let mut json: Vec<String> = Vec::new();

    let mut breakdowns: Vec<(String, Breakdown)> = Vec::new();
    if !options.skip_idle {
        let mut builds = Vec::new();
        for build in &options.builds {
            let (parts, row, split) = idle_nodes(&exe, manifest, &options, build);
            builds.push(format!("\"{}\":{{{}}}", build.name(), parts.join(",")));
            rows.extend(row);
            breakdowns.extend(split);
        }
        json.push(format!("\"idle\":{{{}}}", builds.join(",")));
    }
    let mut per_transport = Vec::new();
    for transport in &options.transports {
        let (part, row, split) = connections(&exe, &options, transport.clone());
        per_transport.push(part);
        rows.extend(row);
        breakdowns.push(split);
    }
    if !options.transports.is_empty() {
        json.push(format!("\"connections\":{{{}}}", per_transport.join(",")));
    }
    if !options.skip_fogd {
        let (part, row) = fogd_peers(manifest, &options);
        json.push(format!("\"fogd\":{part}"));
        rows.extend(row);
    }
    json.push(format!(
        "\"breakdown\":{{{}}}",
        breakdowns
            .iter()
            .map(|(who, b)| format!("\"{who}\":{}", b.json()))
            .collect::<Vec<_>>()
            .join(",")
    ));
    json.push(format!("\"load_average\":\"{}\"", load_average()));
    if options.json {
        println!("{{{}}}", json.join(","));
    } else {
        println!(
            "| process | state | RSS KiB | peak (VmHWM) KiB | anon KiB | file KiB | threads | note |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let m = &r.memory;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.process, r.state, m.rss, m.hwm, m.anon, m.file, m.threads, r.note
            );
        }
        if let Some((_, first)) = breakdowns.first() {
            println!();
            println!("Where the idle RSS is (/proc/PID/smaps; KiB, anonymous in brackets):");
            println!();
            let heads: Vec<&str> = first.parts.iter().map(|(p, _, _)| *p).collect();
            println!("| process | {} | PSS | USS (private) |", heads.join(" | "));
            println!("|---|{}", "---|".repeat(heads.len() + 2));
            for (who, b) in &breakdowns {
                let cells: Vec<String> = b
                    .parts
                    .iter()
                    .map(|(_, rss, anon)| format!("{rss} ({anon})"))
                    .collect();
                println!("| {who} | {} | {} | {} |", cells.join(" | "), b.pss, b.uss);
            }
        }
        println!("load average {}", load_average());
    }
}

/// One line of the table.
struct Row {
    process: String,
    state: String,
    memory: Memory,
    note: String,
}

/// fogd on 127.0.0.1 (alternate 127.0.0.2) with signaling, `extra` flags, ready.
fn start_fogd(extra: &[&str]) -> (Fogd, String) {
    let signal = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let signal_arg = signal.to_string();
    let mut args = vec!["--signal", &signal_arg];
    args.extend(extra);
    let mut fogd = Fogd::start(&args);
    wait_for(&mut fogd.child, "signal listening", START);
    (fogd, format!("ws://{signal}/ws"))
}

/// Part 1: the C echo server and `fogconnect serve` of `build`, idle after registering, once
/// for each `--fault-around` choice.
fn idle_nodes(
    exe: &Path,
    manifest: &Path,
    options: &Options,
    build: &Build,
) -> (Vec<String>, Vec<Row>, Vec<(String, Breakdown)>) {
    let (fogd, url) = start_fogd(&[]);
    let signal: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("the signaling address");
    let stun = fogd.primary.to_string();
    let mut parts = Vec::new();
    let mut rows = Vec::new();
    let mut splits = Vec::new();
    let near = build.near(exe);

    let workspace = manifest.join("../..");
    let echo = echo_server(&near, &workspace, *build == Build::Static);
    if echo.is_none() {
        eprintln!("memory: no C compiler (cc or $CC): the C echo server is skipped");
    }
    let cli = match build {
        Build::Static => static_cli(exe, &workspace),
        _ => fog_test_support::cargo_built(
            &near,
            &workspace,
            &["-p", "fog-cli"],
            &format!("fogconnect{}", std::env::consts::EXE_SUFFIX),
        ),
    };
    for &around in &options.fault_around {
        // As the programs run by default (fault-around off on their own code), or as before
        // `fogconnect_ffi::memory` (the kernel's default).
        let (tag, key) = if around {
            (
                format!("{}, fault-around on", build.name()),
                "_fault_around",
            )
        } else {
            (build.name().to_owned(), "")
        };
        let env = if around { "1" } else { "0" };
        if let Some(echo) = &echo {
            let (host, port) = (signal.ip().to_string(), signal.port().to_string());
            let mut child = ChildGuard::spawn(
                "echo_server",
                Command::new(echo)
                    .args([&host, &port, &stun, "00:16:3e:00:00:07"])
                    .env("FOG_FAULT_AROUND", env),
            )
            .expect("starting echo_server");
            wait_for(&mut child, "ready", START);
            std::thread::sleep(options.idle);
            let m = Memory::of(child.id());
            parts.push(format!("\"echo_server_c{key}\":{}", m.json()));
            splits.push((format!("C echo_server ({tag})"), Breakdown::of(child.id())));
            rows.push(Row {
                process: format!("C echo_server (libfogconnect_ffi.a, {tag})"),
                state: format!("idle {} s, registered", options.idle.as_secs()),
                memory: m,
                note: goal(m.rss, 2 * 1024),
            });
        }

        let mut serve = ChildGuard::spawn(
            "fogconnect-serve",
            Command::new(&cli)
                .args([
                    "serve",
                    "--signal",
                    &url,
                    "--stun",
                    &stun,
                    "--interfaces",
                    "none",
                ])
                .env("FOG_FAULT_AROUND", env),
        )
        .expect("starting fogconnect serve");
        wait_for(&mut serve, "ready:", START);
        std::thread::sleep(options.idle);
        let m = Memory::of(serve.id());
        parts.push(format!("\"fogconnect_serve{key}\":{}", m.json()));
        splits.push((
            format!("fogconnect serve ({tag})"),
            Breakdown::of(serve.id()),
        ));
        rows.push(Row {
            process: format!("fogconnect serve ({tag})"),
            state: format!("idle {} s, registered", options.idle.as_secs()),
            memory: m,
            note: goal(m.rss, 2 * 1024),
        });
        drop(serve);
    }
    drop(fogd);
    (parts, rows, splits)
}

/// "meets"/"misses" a goal in KiB.
fn goal(kib: u64, limit: u64) -> String {
    let verdict = if kib <= limit { "meets" } else { "misses" };
    format!("{verdict} ≤ {} MB", limit / 1024)
}

/// `fogconnect` with glibc linked statically, in the profile of `exe` (the bench's binary):
/// `RUSTFLAGS="-C target-feature=+crt-static"` with an explicit `--target` (so build scripts
/// and proc macros, built for the host without `--target`'s flags, stay dynamic), in a target
/// directory of its own (`<target-dir>/static`) so that it never invalidates the others.
fn static_cli(exe: &Path, workspace: &Path) -> PathBuf {
    let mut profile_dir = exe.parent().expect("the bench has a directory");
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("deps") {
        profile_dir = profile_dir.parent().expect("deps has a parent");
    }
    let dir_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory");
    let profile = if dir_name == "debug" { "dev" } else { dir_name };
    let target_dir = profile_dir
        .parent()
        .expect("the target directory")
        .join("static");
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        panic!("the static build is for Linux with glibc");
    }
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "fog-cli", "--profile", profile])
        .args(["--target", &triple, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(workspace);
    let status = command.status().expect("running cargo build");
    assert!(status.success(), "the static build failed: {status}");
    let cli = target_dir.join(&triple).join(dir_name).join("fogconnect");
    assert!(cli.is_file(), "no {} after building it", cli.display());
    cli
}

/// The C echo server compiled against the static library (built in this profile), `-static`
/// when `static_libc`, or `None` without a C compiler.
fn echo_server(exe: &Path, workspace: &Path, static_libc: bool) -> Option<PathBuf> {
    let cc = std::env::var_os("CC").map_or_else(|| PathBuf::from("cc"), PathBuf::from);
    let cc = if cc.is_absolute() {
        cc.is_file().then_some(cc)?
    } else {
        fog_test_support::find_tool(&cc.to_string_lossy())?
    };
    let lib = fog_test_support::cargo_built(
        exe,
        workspace,
        &["-p", "fog-ffi", "--lib"],
        "libfogconnect_ffi.a",
    );
    let ffi = workspace.join("crates/fog-ffi");
    let out = fog_test_support::scratch_file("memory-echo_server");
    let mut command = Command::new(cc);
    if static_libc {
        command.arg("-static");
    }
    command
        .args(["-std=c11", "-O2", "-I"])
        .arg(ffi.join("include"))
        .arg(ffi.join("examples-c/echo_server.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out);
    let result = fog_test_support::run_command("cc-echo_server", &mut command, START * 4);
    assert_eq!(
        result.code(),
        Some(0),
        "compiling echo_server.c:\n{}",
        result.text()
    );
    Some(out)
}

/// Part 2: an acceptor holding `options.connections` idle connections on `transport`.
fn connections(
    exe: &Path,
    options: &Options,
    transport: Transport,
) -> (String, Vec<Row>, (String, Breakdown)) {
    let name = transport_name(&transport);
    let limit = (options.connections * 2).to_string();
    let (fogd, url) = start_fogd(&[
        "--stun-no-rate-limit",
        "--frames-per-second",
        "100000",
        "--max-pending-offers",
        &limit,
    ]);
    let stun = fogd.primary.to_string();
    let count = options.connections.to_string();
    let role = |role: &str| {
        let mut command = Command::new(exe);
        command.args([
            "--role",
            role,
            "--signal",
            &url,
            "--stun",
            &stun,
            "--transport",
            &name,
            "--connections",
            &count,
        ]);
        command
    };
    let need = options.connections as u64 + 256;
    if fd_limit() < need {
        eprintln!(
            "memory: {need} file descriptors may be needed, the limit is {}",
            fd_limit()
        );
    }
    let mut acceptor =
        ChildGuard::spawn("acceptor", &mut role("acceptor")).expect("starting the acceptor");
    wait_for(&mut acceptor, "acceptor ready", START);
    std::thread::sleep(options.idle);
    let idle = Memory::of(acceptor.id());
    let split = (
        format!("acceptor ({name}), idle"),
        Breakdown::of(acceptor.id()),
    );

    let began = Instant::now();
    let mut caller = ChildGuard::spawn("caller", &mut role("caller")).expect("starting the caller");
    let line = wait_for(&mut caller, "settled", SETTLE);
    let took = began.elapsed();
    let (connected, failed) = settled_counts(&line);
    std::thread::sleep(options.idle);
    let with = Memory::of(acceptor.id());
    let caller_with = Memory::of(caller.id());
    let failures = caller
        .stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix("failure: "))
        .fold(BTreeMap::<String, usize>::new(), |mut m, r| {
            *m.entry(r.to_owned()).or_default() += 1;
            m
        });
    let per = |with: u64| (with as f64 - idle.rss as f64) / connected.max(1) as f64;
    let part = format!(
        "\"{name}\":{{\"connections\":{},\"connected\":{connected},\"failed\":{failed},\
         \"settle_s\":{:.1},\"acceptor_idle\":{},\"acceptor_with\":{},\"caller_with\":{},\
         \"per_connection_kib\":{:.2},\"failures\":{{{}}}}}",
        options.connections,
        took.as_secs_f64(),
        idle.json(),
        with.json(),
        caller_with.json(),
        per(with.rss),
        failures
            .iter()
            .map(|(r, n)| format!("\"{}\":{n}", r.replace('"', "'")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let rows = vec![
        Row {
            process: format!("acceptor ({name})"),
            state: format!("idle {} s, registered", options.idle.as_secs()),
            memory: idle,
            note: goal(idle.rss, 2 * 1024),
        },
        Row {
            process: format!("acceptor ({name})"),
            state: format!(
                "{connected} connections up ({failed} failed, {:.1} s), idle {} s",
                took.as_secs_f64(),
                options.idle.as_secs()
            ),
            memory: with,
            note: format!(
                "{:.1} KiB per connection; {}",
                per(with.rss),
                goal(with.rss, 30 * 1024)
            ),
        },
        Row {
            process: format!("caller ({name})"),
            state: format!("{connected} connections up"),
            memory: caller_with,
            note: String::new(),
        },
    ];
    drop(caller);
    drop(acceptor);
    drop(fogd);
    (part, rows, split)
}

/// `settled connected=N failed=M` → (N, M).
fn settled_counts(line: &str) -> (usize, usize) {
    let get = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("connected="), get("failed="))
}

/// Part 3: `signal_load`'s registration of `options.peers` peers, run by cargo, and the fogd
/// figures it prints.
fn fogd_peers(manifest: &Path, options: &Options) -> (String, Vec<Row>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "bench",
            "--quiet",
            "-p",
            "fogd",
            "--bench",
            "signal_load",
            "--",
        ])
        .args(["--peers", &options.peers.to_string(), "--seconds", "1"])
        .current_dir(manifest)
        .output()
        .expect("running signal_load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "signal_load failed\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `| fogd RSS idle / with peers | A KiB / B KiB |` and `| fogd peak RSS (VmHWM) ... | C KiB |`
    let numbers = |marker: &str| -> Vec<u64> {
        text.lines()
            .find(|l| l.contains(marker))
            .map(|l| {
                l.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let rss = numbers("fogd RSS idle / with peers");
    let peak = numbers("fogd with peers: VmHWM");
    let (idle, with) = (
        rss.first().copied().unwrap_or(0),
        rss.get(1).copied().unwrap_or(0),
    );
    // VmHWM, RssAnon, RssFile, Threads, in that order.
    let at = |i: usize| peak.get(i).copied().unwrap_or(0);
    let memory = Memory {
        rss: with,
        hwm: at(0),
        anon: at(1),
        file: at(2),
        threads: at(3),
    };
    let per_peer = (with as f64 - idle as f64) / options.peers as f64;
    let part = format!(
        "{{\"peers\":{},\"idle_rss_kib\":{idle},\"with\":{},\"per_peer_kib\":{per_peer:.2}}}",
        options.peers,
        memory.json()
    );
    let row = Row {
        process: "fogd".into(),
        state: format!("{} registered peers (signal_load)", options.peers),
        memory,
        note: format!("idle {idle} KiB; {per_peer:.2} KiB per peer"),
    };
    (part, vec![row])
}

/// Waits for `child` to print a line containing `what` (stdout or stderr); returns the line.
fn wait_for(child: &mut ChildGuard, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(line) = child.output_text().lines().find(|l| l.contains(what)) {
            return line.to_owned();
        }
        if let Some(status) = child.try_wait() {
            panic!("{what}: exited with {status}\n{}", child.output_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {what:?} within {within:?}\n{}", child.output_text());
}

/// A node config on loopback for a role.
fn node(seed: [u8; 32], stun: SocketAddr) -> NodeConfig {
    NodeConfig::new(
        KeyPair::from_seed(&seed),
        "127.0.0.1",
        stun,
        "127.0.0.1:0".parse().expect("an address"),
        u64::from(seed[0]),
    )
}

/// Waits for `Ready` and `SignalingUp` from `runtime`.
fn wait_ready(runtime: &Runtime) {
    let (mut ready, mut up) = (false, false);
    while !(ready && up) {
        match runtime.events().recv_timeout(START) {
            Ok(Event::Ready { .. }) => ready = true,
            Ok(Event::SignalingUp) => up = true,
            Ok(_) => {}
            Err(e) => panic!("the node did not come up: {e}"),
        }
    }
}

/// The accepting node: accepts every offer, prints `acceptor ready`, runs until killed.
fn run_acceptor(role: &Role) {
    let mut node = node(ACCEPTOR_SEED, role.stun);
    node.accept = AcceptPolicy::All;
    // Every offer may arrive at once: room for all of them undecided.
    node.max_pending_incoming = role.connections * 2;
    node.max_connections = node.max_connections.max(role.connections * 2);
    let config = RuntimeConfig::new(node, role.signal.parse().expect("a ws:// URL"));
    let runtime = Runtime::start(config).expect("starting the acceptor");
    wait_ready(&runtime);
    println!("acceptor ready");
    for _event in runtime.events() {}
}

/// The calling node: opens `role.connections` connections to the acceptor on
/// `role.transport` at once, prints `settled connected=N failed=M` when each came up or
/// failed, then keeps them until killed.
fn run_caller(role: &Role) {
    let mut node = node([0xCA; 32], role.stun);
    node.max_connections = node.max_connections.max(role.connections * 2);
    let config = RuntimeConfig::new(node, role.signal.parse().expect("a ws:// URL"));
    let runtime = Runtime::start(config).expect("starting the caller");
    wait_ready(&runtime);
    let acceptor = KeyPair::from_seed(&ACCEPTOR_SEED).peer_id();
    let handle = runtime.handle();
    let mut open = std::collections::BTreeSet::new();
    for _ in 0..role.connections {
        match handle.connect_with(acceptor, SERVICE, role.transport.clone()) {
            Ok(id) => {
                open.insert(id);
            }
            Err(e) => println!("failure: connect: {e:?}"),
        }
    }
    let (mut connected, mut failed) = (0usize, role.connections - open.len());
    let deadline = Instant::now() + SETTLE;
    while !open.is_empty() && Instant::now() < deadline {
        match runtime.events().recv_timeout(Duration::from_secs(1)) {
            Ok(Event::Connected { id, .. }) if open.remove(&id) => connected += 1,
            Ok(Event::Failed { id, reason }) if open.remove(&id) => {
                failed += 1;
                println!("failure: {reason:?}");
            }
            _ => {}
        }
    }
    println!("settled connected={connected} failed={failed}");
    for _event in runtime.events() {}
}

/// Where a process's resident pages are, from /proc/PID/smaps: each mapping's `Rss` and
/// `Anonymous` summed by what it maps. File pages of the program count once they are mapped in
/// the page tables; the kernel maps up to `fault_around_bytes` (64 KiB by default) of cached
/// file pages around each fault, so a touched function brings its neighbours along.
#[derive(Debug, Clone, Default)]
struct Breakdown {
    /// (part, RSS KiB, anonymous KiB), in a fixed order.
    parts: Vec<(&'static str, u64, u64)>,
    /// Proportional set size: shared pages divided among the processes mapping them.
    pss: u64,
    /// Unique set size (private clean + private dirty): what the process alone holds.
    uss: u64,
}

impl Breakdown {
    fn of(pid: u32) -> Self {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let order = [
            "program code (r-x)",
            "program read-only data (r--)",
            "program data, relocated (rw-)",
            "libc and other libraries",
            "heap ([heap] and malloc arenas)",
            "thread stacks",
            "other anonymous mappings",
        ];
        let mut sums: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        let (mut pss, mut uss) = (0, 0);
        let mut part = order[6];
        // The previous mapping's end and whether it was an anonymous no-access one (a guard).
        let mut guard_until = 0u64;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                let perms = words.next().unwrap_or("");
                let path = words.nth(3).unwrap_or("");
                let after_guard = guard_until == start;
                guard_until = if path.is_empty() && perms.starts_with("---") {
                    end
                } else {
                    0
                };
                part = if !exe.is_empty() && path == exe {
                    match perms {
                        p if p.contains('x') => order[0],
                        p if p.contains('w') => order[2],
                        _ => order[1],
                    }
                } else if path.starts_with('/') {
                    order[3]
                } else if path == "[heap]" {
                    order[4]
                } else if path == "[stack]" {
                    order[5]
                } else if path.is_empty() && perms.starts_with("rw") {
                    // glibc's arenas for other threads start on a 64 MiB boundary
                    // (HEAP_MAX_SIZE); a thread stack lies right above its guard page.
                    if start % (64 << 20) == 0 {
                        order[4]
                    } else if after_guard {
                        order[5]
                    } else {
                        order[6]
                    }
                } else {
                    order[6]
                };
                continue;
            }
            let kib = |rest: &mut std::str::SplitWhitespace<'_>| {
                rest.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            };
            match first {
                "Rss:" => sums.entry(part).or_default().0 += kib(&mut words),
                "Anonymous:" => sums.entry(part).or_default().1 += kib(&mut words),
                "Pss:" => pss += kib(&mut words),
                "Private_Clean:" | "Private_Dirty:" => uss += kib(&mut words),
                _ => {}
            }
        }
        Breakdown {
            parts: order
                .iter()
                .map(|&p| {
                    let (rss, anon) = sums.get(p).copied().unwrap_or_default();
                    (p, rss, anon)
                })
                .collect(),
            pss,
            uss,
        }
    }

    fn json(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(p, rss, anon)| format!("\"{p}\":{{\"rss_kib\":{rss},\"anon_kib\":{anon}}}"))
            .collect();
        format!(
            "{{{},\"pss_kib\":{},\"uss_kib\":{}}}",
            parts.join(","),
            self.pss,
            self.uss
        )
    }
}
