//! The real-socket examples on loopback, fogd in this process, each example a process of its
//! own (built by `cargo test`, which builds every example): `echo serve` and `echo connect`
//! send a datagram there and back; `getaddr` prints the node's addresses; `file_transfer`
//! moves a file; `hub` hands a publication to three subscribers.

#![allow(clippy::disallowed_methods)] // tests read the clock

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;

/// The example's binary beside this test's: target/<profile>/examples/echo.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p fog-examples` builds it (a `--test` filter does not)",
        path.display()
    );
    path
}

fn free_udp(ip: IpAddr) -> SocketAddr {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// fogd's services on free loopback ports: the services, the STUN address, the signaling
/// address.
fn fogd() -> (fogd::Services, SocketAddr, SocketAddr) {
    let a1 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let stun = free_udp(a1);
    let signal = TcpListener::bind(SocketAddr::new(a1, 0))
        .and_then(|l| l.local_addr())
        .expect("a free TCP port");
    let cli = fogd::Cli::try_parse_from([
        "fogd".to_owned(),
        "--stun".to_owned(),
        stun.to_string(),
        "--stun-alt".to_owned(),
        free_udp(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).to_string(),
        "--signal".to_owned(),
        signal.to_string(),
        "--stun-no-rate-limit".to_owned(),
    ])
    .expect("fogd's arguments");
    let fogd = fogd::Services::start(&cli).expect("fogd starts");
    (fogd, stun, signal)
}

#[test]
fn getaddr_prints_the_peer_id_the_nat_and_the_candidates() {
    let (fogd, stun, signal) = fogd();
    let output = Command::new(example("getaddr"))
        .envs([
            ("FOG_SIGNAL", format!("ws://{signal}/ws")),
            ("FOG_STUN", stun.to_string()),
        ])
        .output()
        .expect("getaddr runs");
    let _ = fogd.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peer id: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(id.len(), 54, "{stdout}");
    // Loopback: no NAT, so the server-reflexive address is the host's own.
    assert!(stdout.contains("nat: open (no NAT)"), "{stdout}");
    let host = stdout
        .lines()
        .find_map(|l| l.strip_prefix("candidate host "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(host.starts_with("127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains(&format!("candidate srflx {host}")),
        "{stdout}"
    );
}

#[test]
fn echo_serve_and_connect_on_loopback() {
    let (fogd, stun, signal) = fogd();
    let echo = example("echo");
    let env = [
        ("FOG_SIGNAL", format!("ws://{signal}/ws")),
        ("FOG_STUN", stun.to_string()),
    ];
    let alias = format!("echo{}", std::process::id());
    let mut serve = Command::new(&echo)
        .args(["serve", &alias])
        .envs(env.clone())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("echo serve starts");
    // The connecting side looks the alias up; until serve has registered it, that fails:
    // try again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let output = loop {
        let out = Command::new(&echo)
            .args(["connect", &alias, "there and back"])
            .envs(env.clone())
            .output()
            .expect("echo connect runs");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = fogd.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("echo: there and back"), "{stdout}");
    assert!(stdout.contains("connected to"), "{stdout}");
}

#[test]
fn file_transfer_moves_a_file_intact_over_each_reliable_transport() {
    let (fogd, stun, signal) = fogd();
    let program = example("file_transfer");
    let env = [
        ("FOG_SIGNAL", format!("ws://{signal}/ws")),
        ("FOG_STUN", stun.to_string()),
    ];
    let dir = std::env::temp_dir().join(format!("fog-file-transfer-{}", std::process::id()));
    let (inbox, outbox) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&outbox).expect("a scratch directory");
    let alias = format!("files{}", std::process::id());
    let mut serve = Command::new(&program)
        .args(["serve", &alias, inbox.to_str().expect("a UTF-8 path")])
        .envs(env.clone())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("file_transfer serve starts");
    // Bytes no transport could pass by accident: a xorshift stream, 1.5 MiB and a bit (not a
    // whole number of chunks).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let content: Vec<u8> = (0..3 * 512 * 1024 + 333)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let send = |name: &str, transport: &str| {
        let file = outbox.join(name);
        std::fs::write(&file, &content).expect("the file to send");
        // Until serve has registered its alias, the lookup fails: try again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(&program)
                .args(["send", &alias, file.to_str().expect("UTF-8"), transport])
                .envs(env.clone())
                .output()
                .expect("file_transfer send runs");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success()
                || !stderr.contains("is not online")
                || Instant::now() > deadline
            {
                return (out.status.success(), format!("{stdout}\n{stderr}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut failures = Vec::new();
    for transport in ["kcp", "quic", "utp"] {
        let name = format!("data-{transport}.bin");
        let (ok, output) = send(&name, transport);
        let arrived = std::fs::read(inbox.join(&name)).unwrap_or_default();
        if !ok
            || arrived != content
            || !output.contains("(100 %)")
            || !output.contains("confirmed by the receiver")
        {
            failures.push(format!(
                "{transport}: ok {ok}, {} of {} bytes arrived\n{output}",
                arrived.len(),
                content.len()
            ));
        }
    }
    // A name it already has is refused, and the file there stays as it was.
    let (ok, output) = send("data-kcp.bin", "kcp");
    let kept = std::fs::read(inbox.join("data-kcp.bin")).unwrap_or_default();
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = fogd.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!ok && output.contains("cannot create"), "{output}");
    assert_eq!(kept, content);
}

/// A child whose stdout lines arrive on a channel as it prints them.
struct Lines {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(command: &mut Command) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 30 s) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {needle:?} in {:#?}", self.seen),
            }
        }
    }

    /// Waits (up to 30 s) for the child to exit 0.
    fn succeeds(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                self.seen.extend(self.lines.try_iter());
                assert!(status.success(), "{status}: {:#?}", self.seen);
                return;
            }
            assert!(Instant::now() < deadline, "still running: {:#?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hub_hands_a_publication_to_every_subscriber() {
    let (fogd, stun, signal) = fogd();
    let hub = example("hub");
    let env = [
        ("FOG_SIGNAL", format!("ws://{signal}/ws")),
        ("FOG_STUN", stun.to_string()),
    ];
    let alias = format!("hub{}", std::process::id());
    let start = |args: &[&str]| Lines::spawn(Command::new(&hub).args(args).envs(env.clone()));
    let mut server = start(&["serve", &alias, "1"]);
    server.wait_for("ready");
    let mut subscribers: Vec<Lines> = (0..3).map(|_| start(&["sub", &alias])).collect();
    for sub in &mut subscribers {
        sub.wait_for("subscribed");
    }
    let mut publisher = start(&["pub", &alias, "hello, subscribers"]);
    publisher.succeeds();
    publisher.wait_for("delivered to 3 subscribers");
    for sub in &mut subscribers {
        sub.succeeds();
        sub.wait_for("received: hello, subscribers");
    }
    server.succeeds();
    server.wait_for("published \"hello, subscribers\" to 3 subscribers");
    let _ = fogd.stop();
}
