//! What fogd's integration tests share: free ports on two loopback IPs, child processes that die
//! with their guard, a STUN probe to know a server is up, the external tools and their output;
//! [`signal`] has the signaling side (a fogd serving it, WebSocket clients, a signaling peer).

// Each test file uses part of this module; what one of them leaves unused is not dead.
#![allow(dead_code)]

pub(crate) mod signal;

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};

pub(crate) const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
pub(crate) const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long a server may take to answer its first Binding request.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Two ports P1, P2 such that all of A1:P1, A1:P2, A2:P1, A2:P2 were free a moment ago: the OS
/// picks P1 and P2 on A1, and a pair whose twins on A2 are taken is drawn again. The sockets are
/// closed on return, so another process could take a port before the server binds it; starting
/// a server therefore retries with new ports when a bind fails.
pub(crate) fn free_port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let Ok(s1) = UdpSocket::bind((A1, 0)) else {
            continue;
        };
        let Ok(s2) = UdpSocket::bind((A1, 0)) else {
            continue;
        };
        let p1 = s1.local_addr().unwrap().port();
        let p2 = s2.local_addr().unwrap().port();
        let twins = (UdpSocket::bind((A2, p1)), UdpSocket::bind((A2, p2)));
        if let (Ok(_), Ok(_)) = twins {
            return (p1, p2);
        }
    }
    panic!("found no free port pair on {A1} and {A2}");
}

/// A unique path in Cargo's scratch directory for integration tests.
pub(crate) fn scratch_file(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("fogd-{}-{n}-{name}", std::process::id()))
}

/// A child process that is killed and reaped when the guard goes out of scope, also when the
/// test panics; its stdout and stderr go to files that outlive it.
pub(crate) struct ChildGuard {
    name: String,
    child: Option<Child>,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and its output redirected to scratch files.
    pub(crate) fn spawn(name: &str, command: &mut Command) -> io::Result<Self> {
        let stdout = scratch_file(&format!("{name}.out"));
        let stderr = scratch_file(&format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.as_ref().expect("child is running").id()
    }

    /// The exit status, if the child has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit; kills it after that.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit. The shell's `kill` builtin sends it: the workspace
    /// forbids `unsafe` (so no `libc::kill`), and a minimal Debian has `sh` but not always the
    /// procps `kill` binary.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.id())])
            .status()
            .expect("running sh -c kill");
        assert!(status.success(), "kill -TERM {} failed", self.id());
        self.wait_timeout(timeout)
    }

    pub(crate) fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub(crate) fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both outputs, for a failure message.
    pub(crate) fn output_text(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout_text(),
            self.name,
            self.stderr_text()
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A program's output after it ran to completion (or was killed at its deadline).
#[derive(Debug)]
pub(crate) struct ToolOutput {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl ToolOutput {
    /// Everything printed, stdout first.
    pub(crate) fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `program args` for at most `timeout`.
pub(crate) fn run_tool(program: &Path, args: &[String], timeout: Duration) -> ToolOutput {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    let mut child = ChildGuard::spawn(&name, Command::new(program).args(args))
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let status = child.wait_timeout(timeout);
    ToolOutput {
        status,
        stdout: child.stdout_text(),
        stderr: child.stderr_text(),
    }
}

/// Sends Binding requests to `server` until one is answered or `timeout` passes.
pub(crate) fn answers_stun(server: SocketAddr, timeout: Duration) -> bool {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (A1, 0).into(),
        SocketAddr::V6(_) => "[::1]:0".parse().unwrap(),
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    let mut id = 0u8;
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        let request = BindingRequest::new(TransactionId::new([id; 12]));
        let len = request.encode(&mut buf).unwrap();
        if socket.send_to(&buf[..len], server).is_err() {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Ok(Some(response)) = BindingResponse::decode(&buf[..n]) {
                if response.error.is_none() {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether every address in `addrs` answers a Binding request within the start timeout.
pub(crate) fn all_answer(addrs: &[SocketAddr]) -> bool {
    addrs.iter().all(|&a| answers_stun(a, START_TIMEOUT))
}

/// A running fogd.
pub(crate) struct Fogd {
    pub(crate) child: ChildGuard,
    /// A1:P1.
    pub(crate) primary: SocketAddr,
    /// A2:P2, when started with an alternate.
    pub(crate) alternate: Option<SocketAddr>,
}

impl Fogd {
    /// fogd on A1:P1 with alternate A2:P2 on free ports, with `extra` flags, answering.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_with(
            |p1, p2| (SocketAddr::new(A1, p1), Some(SocketAddr::new(A2, p2))),
            extra,
        )
    }

    /// fogd on the addresses `addrs(p1, p2)` picks from a free port pair, retried with new ports
    /// when a bind fails because another process took one meanwhile.
    ///
    /// fogd is ready once it logs `STUN listening`: every socket is bound by then, so a datagram
    /// sent afterwards waits in its socket's queue. Waiting for that line rather than probing with
    /// requests keeps fogd's counters exactly what each test sent.
    pub(crate) fn start_with(
        addrs: impl Fn(u16, u16) -> (SocketAddr, Option<SocketAddr>),
        extra: &[&str],
    ) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let (p1, p2) = free_port_pair();
            let (primary, alternate) = addrs(p1, p2);
            let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
            command.arg("--stun").arg(primary.to_string());
            if let Some(alt) = alternate {
                command.arg("--stun-alt").arg(alt.to_string());
            }
            command.args(extra);
            let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
            let deadline = Instant::now() + START_TIMEOUT;
            let mut exited = None;
            while Instant::now() < deadline && exited.is_none() {
                if child.stderr_text().contains("STUN listening") {
                    return Self {
                        child,
                        primary,
                        alternate,
                    };
                }
                exited = child.try_wait();
                thread::sleep(Duration::from_millis(10));
            }
            last = child.output_text();
            if exited.is_some() && last.contains("already uses that port") {
                continue;
            }
            panic!("fogd did not start on {primary}, {alternate:?} (exit: {exited:?})\n{last}");
        }
        panic!("fogd found no free ports in 5 tries\n{last}");
    }

    /// Stops fogd with SIGTERM and returns its final `STUN stopped` counters.
    pub(crate) fn stop(mut self) -> FinalStats {
        let status = self.child.terminate(Duration::from_secs(10));
        let text = self.child.output_text();
        let status = status.unwrap_or_else(|| panic!("fogd did not exit on SIGTERM\n{text}"));
        assert!(status.success(), "fogd exited with {status}\n{text}");
        FinalStats::parse_line(&self.child.stderr_text(), "STUN stopped")
            .unwrap_or_else(|| panic!("no `STUN stopped` line\n{text}"))
    }
}

/// The `key=value` pairs of one of fogd's final log lines (`STUN stopped`, `signal stopped`).
#[derive(Debug)]
pub(crate) struct FinalStats(Vec<(String, String)>);

impl FinalStats {
    /// The pairs of the first line of `log` that contains `marker`.
    pub(crate) fn parse_line(log: &str, marker: &str) -> Option<Self> {
        let line = log.lines().find(|l| l.contains(marker))?;
        let pairs = line
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Self(pairs))
    }

    /// A counter; panics if absent.
    pub(crate) fn get(&self, key: &str) -> u64 {
        let (_, value) = self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.0));
        value.parse().unwrap_or_else(|_| panic!("{key}={value}"))
    }
}

/// Where an external tool is: on PATH, or in the sbin directories a non-root PATH may lack
/// (Debian installs stund in /usr/sbin).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tools an interop test needs, or `None` (after saying so) when one is missing and
/// `FOG_REQUIRE_INTEROP` is not `1`; with it set, a missing tool fails the test.
pub(crate) fn interop_tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
    let found = names.map(find_tool);
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Some(found.map(Option::unwrap));
    }
    let message = format!(
        "{test}: {} not installed (Debian packages coturn, stun-client, stun-server)",
        missing.join(", ")
    );
    if std::env::var("FOG_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message}, and FOG_REQUIRE_INTEROP=1");
    }
    // Straight to stderr: libtest captures `eprintln!` of a passing test, and a skip must show.
    let _ = writeln!(
        io::stderr(),
        "SKIPPED {message}; set FOG_REQUIRE_INTEROP=1 to fail instead"
    );
    None
}

/// A process's CPU time (user + system) in clock ticks, from /proc.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub(crate) fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
