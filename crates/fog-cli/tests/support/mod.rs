//! What fog-cli's integration tests share: the `fogconnect` and `fogd` binaries, free ports on
//! two loopback IPs, child processes that die with their guard, the independent STUN servers
//! and clients, and their output. The process and port helpers follow fogd's
//! `tests/support`, which cannot be shared across packages' test directories.

// Each test file uses part of this module; what one of them leaves unused is not dead.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};

pub(crate) const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
pub(crate) const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long a server may take to answer its first Binding request.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `fogconnect nat` run gets this long; on loopback it takes well under a second, and a
/// silent server about five.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `fogconnect` binary Cargo built for these tests.
pub(crate) fn fogconnect_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fogconnect"))
}

/// The `fogd` binary, built for the same profile and target as `fogconnect`.
///
/// Cargo gives integration tests only their own package's binaries (`CARGO_BIN_EXE_*`), and fogd
/// is a binary-only package, so it cannot be a dev-dependency. Instead the first call runs
/// `cargo build -p fogd` into the target directory `fogconnect` was built in (Cargo releases its
/// build lock while tests run, and the build is a no-op when fogd is fresh, as after
/// `cargo test --workspace`, which builds it for fogd's own tests) and returns the binary next
/// to `fogconnect`. `FOGD_BIN=/path/to/fogd` skips the build and uses that binary.
pub(crate) fn fogd_exe() -> PathBuf {
    static FOGD: OnceLock<PathBuf> = OnceLock::new();
    FOGD.get_or_init(|| {
        if let Some(path) = std::env::var_os("FOGD_BIN") {
            return PathBuf::from(path);
        }
        let exe = fogconnect_exe();
        let profile_dir = exe.parent().expect("fogconnect has a directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("cannot tell the profile from {}", exe.display()),
        };
        let above = profile_dir.parent().expect("a target directory");
        // target/<profile>/ or, when cross-building, target/<triple>/<profile>/; Cargo marks the
        // target directory itself with CACHEDIR.TAG.
        let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
            (above, None)
        } else {
            (
                above.parent().expect("a target directory"),
                above.file_name().and_then(|n| n.to_str()),
            )
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--quiet", "-p", "fogd", "--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(triple) = triple {
            command.args(["--target", triple]);
        }
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("running cargo build -p fogd: {e}"));
        assert!(status.success(), "cargo build -p fogd failed: {status}");
        let fogd = profile_dir.join(format!("fogd{}", std::env::consts::EXE_SUFFIX));
        assert!(fogd.is_file(), "no {} after building it", fogd.display());
        fogd
    })
    .clone()
}

/// Two ports P1, P2 such that all of A1:P1, A1:P2, A2:P1, A2:P2 were free a moment ago (see
/// fogd's tests: a server that then fails to bind is restarted with new ports).
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
    dir.join(format!("fog-cli-{}-{n}-{name}", std::process::id()))
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

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
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
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// The exit code; `None` if the program was killed at its deadline or by a signal.
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `command` for at most `timeout`.
pub(crate) fn run_command(name: &str, command: &mut Command, timeout: Duration) -> ToolOutput {
    let mut child =
        ChildGuard::spawn(name, command).unwrap_or_else(|e| panic!("running {name}: {e}"));
    let status = child.wait_timeout(timeout);
    ToolOutput {
        status,
        stdout: child.stdout_text(),
        stderr: child.stderr_text(),
    }
}

/// Runs `program args` for at most `timeout`.
pub(crate) fn run_tool(program: &Path, args: &[String], timeout: Duration) -> ToolOutput {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    run_command(&name, Command::new(program).args(args), timeout)
}

/// `fogconnect args`, to completion.
pub(crate) fn fogconnect(args: &[&str]) -> ToolOutput {
    run_command(
        "fogconnect",
        Command::new(fogconnect_exe()).args(args),
        CLIENT_TIMEOUT,
    )
}

/// `fogconnect nat --server SERVER --json -q extra`, exited 0, its JSON object parsed.
pub(crate) fn fogconnect_json(server: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let server = server.to_string();
    let mut args = vec!["nat", "--server", &server, "--json", "-q"];
    args.extend_from_slice(extra);
    let output = fogconnect(&args);
    assert_eq!(
        output.code(),
        Some(0),
        "fogconnect {args:?}\n{}",
        output.text()
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("fogconnect --json printed no JSON ({e})\n{}", output.text()))
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

/// A STUN server on A1:P1 with alternate A2:P2 (or on A1:P1 alone), answering.
pub(crate) struct Server {
    pub(crate) child: ChildGuard,
    /// A1:P1.
    pub(crate) primary: SocketAddr,
    /// A2:P2, when it has one.
    pub(crate) alternate: Option<SocketAddr>,
}

impl Server {
    /// Starts `program` with the arguments `args(p1, p2)` gives for a free port pair and waits
    /// until each of `addrs(p1, p2)` answers a Binding request; retried with new ports if not
    /// (another process may take a port between the probe and the server's bind).
    fn start(
        name: &str,
        program: &Path,
        args: impl Fn(u16, u16) -> Vec<String>,
        two_addresses: bool,
    ) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let (p1, p2) = free_port_pair();
            let mut child = ChildGuard::spawn(name, Command::new(program).args(args(p1, p2)))
                .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
            let primary = SocketAddr::new(A1, p1);
            let addrs: Vec<SocketAddr> = if two_addresses {
                [(A1, p1), (A1, p2), (A2, p1), (A2, p2)]
                    .map(SocketAddr::from)
                    .to_vec()
            } else {
                vec![primary]
            };
            if addrs.iter().all(|&a| answers_stun(a, START_TIMEOUT)) {
                return Self {
                    child,
                    primary,
                    alternate: two_addresses.then_some(SocketAddr::new(A2, p2)),
                };
            }
            let exited = child.try_wait();
            last = format!("exit: {exited:?}\n{}", child.output_text());
        }
        panic!("{name} did not answer on its addresses in 3 tries\n{last}");
    }

    /// `fogd --stun 127.0.0.1:P1 --stun-alt 127.0.0.2:P2`.
    pub(crate) fn fogd() -> Self {
        Self::start(
            "fogd",
            &fogd_exe(),
            |p1, p2| {
                vec![
                    "--stun".to_owned(),
                    SocketAddr::new(A1, p1).to_string(),
                    "--stun-alt".to_owned(),
                    SocketAddr::new(A2, p2).to_string(),
                ]
            },
            true,
        )
    }

    /// `fogd --stun 127.0.0.1:P1`: one address.
    pub(crate) fn fogd_one_address() -> Self {
        Self::start(
            "fogd",
            &fogd_exe(),
            |p1, _| vec!["--stun".to_owned(), SocketAddr::new(A1, p1).to_string()],
            false,
        )
    }

    /// `turnserver --stun-only` on 127.0.0.1 and 127.0.0.2: no TURN, no TLS/DTLS, no TCP, no
    /// CLI, no authentication, no configuration file, its log on stdout.
    pub(crate) fn coturn(turnserver: &Path) -> Self {
        Self::start(
            "turnserver",
            turnserver,
            |p1, p2| {
                let pidfile = scratch_file("turnserver.pid");
                [
                    "-n",
                    "--stun-only",
                    "--listening-ip",
                    "127.0.0.1",
                    "--listening-ip",
                    "127.0.0.2",
                    "--listening-port",
                    &p1.to_string(),
                    "--alt-listening-port",
                    &p2.to_string(),
                    "--no-tls",
                    "--no-dtls",
                    "--no-tcp",
                    "--no-cli",
                    "--no-auth",
                    "--log-file",
                    "stdout",
                    "--simple-log",
                    "--pidfile",
                    &pidfile.to_string_lossy(),
                ]
                .map(String::from)
                .to_vec()
            },
            true,
        )
    }

    /// `stund -h 127.0.0.1 -a 127.0.0.2 -p P1 -o P2`, in the foreground: the classic RFC 3489
    /// server, which answers with MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS only.
    pub(crate) fn stund(stund: &Path) -> Self {
        Self::start(
            "stund",
            stund,
            |p1, p2| {
                [
                    "-h",
                    "127.0.0.1",
                    "-a",
                    "127.0.0.2",
                    "-p",
                    &p1.to_string(),
                    "-o",
                    &p2.to_string(),
                ]
                .map(String::from)
                .to_vec()
            },
            true,
        )
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

/// Says that `test` is skipped and why, straight to stderr (libtest captures `eprintln!` of a
/// passing test, and a skip must show).
pub(crate) fn say_skipped(test: &str, why: &str, require_var: &str) {
    let _ = writeln!(
        io::stderr(),
        "SKIPPED {test}: {why}; set {require_var}=1 to fail instead"
    );
}

/// The tools an interop test needs, or `None` (after saying so) when one is missing and
/// `FOG_REQUIRE_INTEROP` is not `1`; with it set, as CI does, a missing tool fails the test.
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
    let why = format!(
        "{} not installed (Debian packages coturn, stun-client, stun-server)",
        missing.join(", ")
    );
    if std::env::var("FOG_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{test}: {why}, and FOG_REQUIRE_INTEROP=1");
    }
    say_skipped(test, &why, "FOG_REQUIRE_INTEROP");
    None
}
