//! What fogd's integration tests (and benches) share beyond `fog_test_support`: a fogd started
//! from this package's binary, its final counters, a process's CPU time; [`signal`] has the
//! signaling side (a fogd serving it, WebSocket clients, a signaling peer).

// Each test file uses part of this module and of its re-exports; what one of them leaves unused
// is not dead.
#![allow(dead_code, unused_imports)]

pub(crate) mod signal;

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

pub(crate) use fog_test_support::{
    A1, A2, ChildGuard, START_TIMEOUT, Server, ToolOutput, all_answer, answers_stun, coturn_args,
    find_tool, free_port_pair, interop_tools, run_tool, scratch_file,
};

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

/// /proc/loadavg's first three fields: above about 2 on this 2-core machine, something else
/// competed with a bench and its figures are suspect.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".to_owned(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

/// Moves every thread of this process to CPU 1 with `taskset`, so that a bench's client never
/// competes with the server it measures on CPU 0; `who` names the bench in the warning.
pub(crate) fn pin_self_to_cpu1(taskset: &std::path::Path, who: &str) {
    let status = Command::new(taskset)
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("{who}: could not pin the client to CPU 1");
    }
}

/// The median; NaN (printed "NaN") for no values.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A process's resident memory (VmRSS) in KiB, from /proc.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A number from /proc/PID/status: a size in KiB (`VmHWM`, `RssAnon`, ...) or a count
/// (`Threads`).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files, from /proc/self/limits.
pub(crate) fn fd_limit() -> u64 {
    limits_line().map_or(1024, |(soft, _)| soft)
}

fn limits_line() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line.split_whitespace().skip(3);
    let soft = words.next()?.parse().ok()?;
    let hard = words.next()?.parse().unwrap_or(u64::MAX);
    Some((soft, hard))
}

/// Re-executes this bench (or any program) with the soft open-file limit raised to the hard one (there is no safe
/// `setrlimit` in std, and the workspace forbids `unsafe`).
pub(crate) fn raise_fd_limit_or_reexec() {
    const MARK: &str = "FOG_BENCH_FD_REEXEC";
    let Some((soft, hard)) = limits_line() else {
        return;
    };
    let want = hard.min(1 << 20);
    if soft >= want || std::env::var_os(MARK).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {want} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(std::env::args().skip(1))
        .env(MARK, "1")
        .status()
        .expect("re-executing under sh");
    std::process::exit(status.code().unwrap_or(1));
}

/// The `q` quantile (nearest rank) of `samples`, sorted in place; `None` for none.
pub(crate) fn percentile(samples: &mut [Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    Some(samples[rank.min(samples.len() - 1)])
}

/// Waits (at most 20 s) for `child` to print a line containing `what`, on stderr or stdout.
pub(crate) fn wait_until(child: &mut ChildGuard, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.output_text().contains(what) {
            return;
        }
        if let Some(status) = child.try_wait() {
            panic!("{what}: exited with {status}\n{}", child.output_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {what:?} within 20 s\n{}", child.output_text());
}
