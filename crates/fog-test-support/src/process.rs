//! Child processes whose output outlives them, in Cargo's scratch directory for tests.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A unique path in Cargo's scratch directory for integration tests, named after the package
/// under test, this process and `name`.
pub fn scratch_file(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (dir, package) = scratch_dir();
    dir.join(format!("{package}-{}-{n}-{name}", std::process::id()))
}

/// Cargo's scratch directory for integration tests and benches, `<target-dir>/tmp`, and the name
/// of the package under test.
///
/// Cargo names the directory in `CARGO_TARGET_TMPDIR` only while it compiles a test or a bench,
/// not a library they use, so it is found from the running test's own path,
/// `<target-dir>/[<triple>/]<profile>/deps/<test>`; outside that layout, the system's temporary
/// directory. The package name is the `CARGO_PKG_NAME` that `cargo test` and `cargo bench` set.
fn scratch_dir() -> &'static (PathBuf, String) {
    static SCRATCH: OnceLock<(PathBuf, String)> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .and_then(|profile_dir| {
                let (target_dir, _) = target_dir_of(profile_dir)?;
                Some(target_dir.join("tmp"))
            })
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "fog".to_owned());
        (dir, package)
    })
}

/// The target directory Cargo builds into, and the target triple when cross-building, from a
/// profile directory inside it (`<target-dir>/<profile>` or `<target-dir>/<triple>/<profile>`);
/// `None` outside that layout. Cargo marks the target directory itself with CACHEDIR.TAG.
pub fn target_dir_of(profile_dir: &Path) -> Option<(&Path, Option<&str>)> {
    let above = profile_dir.parent()?;
    if above.join("CACHEDIR.TAG").exists() {
        return Some((above, None));
    }
    let target_dir = above.parent()?;
    target_dir
        .join("CACHEDIR.TAG")
        .exists()
        .then(|| (target_dir, above.file_name().and_then(|n| n.to_str())))
}

/// The `fogd` binary, built for the profile and target of the binary at `near` (a test's own
/// executable, or a binary Cargo built for it), which lies in `<target-dir>/<profile>` or its
/// `deps`.
///
/// Cargo gives integration tests only their own package's binaries (`CARGO_BIN_EXE_*`): a
/// dev-dependency on fogd (a library too) brings its library, not its binary. Instead the
/// first call builds it with [`cargo_built`]. `FOGD_BIN=/path/to/fogd` skips the build and uses that
/// binary.
pub fn fogd_exe(near: &Path, manifest_dir: &Path) -> PathBuf {
    static FOGD: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOGD.get_or_init(|| {
        if let Some(path) = std::env::var_os("FOGD_BIN") {
            return PathBuf::from(path);
        }
        cargo_built(
            near,
            manifest_dir,
            &["-p", "fogd"],
            &format!("fogd{}", std::env::consts::EXE_SUFFIX),
        )
    })
    .clone()
}

/// `file`, an artifact of `cargo build <args>` (`-p fogd`, `-p fog-ffi --lib`) for the profile
/// and target of the binary at `near`, in the same target directory: runs the build from
/// `manifest_dir` (Cargo releases its build lock while tests run, and the build is a no-op when
/// the artifact is fresh, as after `cargo test --workspace`) and returns
/// `<target-dir>/[<triple>/]<profile>/<file>`.
pub fn cargo_built(near: &Path, manifest_dir: &Path, args: &[&str], file: &str) -> PathBuf {
    let mut profile_dir = near.parent().expect("the binary has a directory");
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("deps") {
        profile_dir = profile_dir.parent().expect("deps has a parent");
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("cannot tell the profile from {}", near.display()),
    };
    let (target_dir, triple) = target_dir_of(profile_dir)
        .unwrap_or_else(|| panic!("cannot tell the target directory from {}", near.display()));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(manifest_dir);
    if let Some(triple) = triple {
        command.args(["--target", triple]);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running cargo build {}: {e}", args.join(" ")));
    assert!(
        status.success(),
        "cargo build {} failed: {status}",
        args.join(" ")
    );
    let artifact = profile_dir.join(file);
    assert!(
        artifact.is_file(),
        "no {} after building it",
        artifact.display()
    );
    artifact
}

/// Spawns `command` as `name` and waits up to `timeout` until `addr` accepts TCP connections
/// (a server's listening socket), then a moment more for the services it starts beside it.
/// `None` when the process exited first (another process took one of its ports: the caller
/// tries other ports); panics when it neither listens nor exits in time.
pub fn spawn_listening(
    name: &str,
    command: &mut Command,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Option<ChildGuard> {
    let mut child =
        ChildGuard::spawn(name, command).unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            thread::sleep(Duration::from_millis(100));
            return Some(child);
        }
        if child.try_wait().is_some() {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{name} did not listen on {addr} within {timeout:?}\n{}",
        child.output_text()
    );
}

/// fogd for nodes, started from `exe` as `name`: STUN on 127.0.0.1 with its alternate on
/// 127.0.0.2 and signaling on 127.0.0.1, on free ports, with the arguments `extra` gives for
/// each attempt (another attempt, on other ports, when a port was taken meanwhile). The child,
/// the STUN address and the signaling address.
pub fn fogd_for_nodes(
    exe: &Path,
    name: &str,
    extra: impl Fn(u16) -> Vec<String>,
    timeout: Duration,
) -> (ChildGuard, std::net::SocketAddr, std::net::SocketAddr) {
    use std::net::{SocketAddr, TcpListener};
    for attempt in 0..5u16 {
        let (p1, p2) = crate::free_port_pair();
        let signal = TcpListener::bind((crate::A1, 0))
            .and_then(|l| l.local_addr())
            .expect("a free TCP port");
        let stun = SocketAddr::new(crate::A1, p1);
        let mut command = Command::new(exe);
        command
            .args(["--stun", &stun.to_string()])
            .args(["--stun-alt", &SocketAddr::new(crate::A2, p2).to_string()])
            .args(["--signal", &signal.to_string()])
            .args(extra(attempt));
        let child_name = format!("{name}-{attempt}");
        if let Some(child) = spawn_listening(&child_name, &mut command, signal, timeout) {
            return (child, stun, signal);
        }
    }
    panic!("{name} could not start on free ports");
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files (for
/// `fogd --tls-cert --tls-key`); returns the certificate and key paths and the certificate
/// for a client to trust.
pub fn self_signed_cert() -> (PathBuf, PathBuf, rustls_pki_types::CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generating a certificate");
    let cert_path = scratch_file("cert.pem");
    let key_path = scratch_file("key.pem");
    fs::write(&cert_path, certified.cert.pem()).expect("writing the certificate");
    fs::write(&key_path, certified.signing_key.serialize_pem()).expect("writing the key");
    (cert_path, key_path, certified.cert.der().clone())
}

/// A child process that is killed and reaped when the guard goes out of scope, also when the
/// test panics; its stdout and stderr go to files that outlive it.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    /// Where the child's stdout goes.
    pub stdout: PathBuf,
    /// Where the child's stderr goes.
    pub stderr: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and its output redirected to scratch files.
    pub fn spawn(name: &str, command: &mut Command) -> io::Result<Self> {
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

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child is running").id()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. The shell's `kill` builtin sends
    /// it: the workspace forbids `unsafe` (so no `libc::kill`), and a minimal Debian has `sh` but
    /// not always the procps `kill` binary.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.id())])
            .status()
            .expect("running sh -c kill");
        assert!(status.success(), "kill -TERM {} failed", self.id());
        self.wait_timeout(timeout)
    }

    /// What the child has written to stdout so far.
    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the child has written to stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both outputs, for a failure message.
    pub fn output_text(&self) -> String {
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
pub struct ToolOutput {
    /// The exit status; `None` if the program was still running at its deadline.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl ToolOutput {
    /// Everything printed, stdout first.
    pub fn text(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// The exit code; `None` if the program was killed at its deadline or by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `command` for at most `timeout` (killing it then), under `name` in messages.
pub fn run_command(name: &str, command: &mut Command, timeout: Duration) -> ToolOutput {
    let mut child =
        ChildGuard::spawn(name, command).unwrap_or_else(|e| panic!("running {name}: {e}"));
    let status = child.wait_timeout(timeout);
    ToolOutput {
        status,
        stdout: child.stdout_text(),
        stderr: child.stderr_text(),
    }
}

/// Runs `program args` for at most `timeout` (killing it then).
pub fn run_tool(program: &Path, args: &[String], timeout: Duration) -> ToolOutput {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    run_command(&name, Command::new(program).args(args), timeout)
}
