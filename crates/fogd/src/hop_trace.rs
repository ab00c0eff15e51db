//! Per-hop timestamps of frames that cross instances, for the cluster bench only: with
//! `FOGD_CLUSTER_TRACE=<file>` in the environment each hop appends one line,
//! `<realtime ns> <pid> <hop> <frame hash>`, so that the bench can line up the hops of one
//! offer across processes (every process on the machine reads the same clock). Without the
//! variable a hop costs one load of a `OnceLock`.
//!
//! The realtime clock, not `Instant`, because the lines of several processes are merged.

use std::fs::File;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

static FILE: OnceLock<Option<Mutex<File>>> = OnceLock::new();

fn file() -> Option<&'static Mutex<File>> {
    FILE.get_or_init(|| {
        let path = std::env::var_os("FOGD_CLUSTER_TRACE")?;
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    })
    .as_ref()
}

/// FNV-1a: names a frame on both sides of Redis (the same text goes out and comes in).
fn hash(frame: &str) -> u64 {
    frame.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Records that `frame` passed `hop` now.
pub(crate) fn hop(hop: &str, frame: &str) {
    let Some(file) = file() else {
        return;
    };
    #[allow(clippy::disallowed_methods)] // a trace across processes needs the shared clock
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let line = format!("{ns} {} {hop} {:016x}\n", std::process::id(), hash(frame));
    if let Ok(mut f) = file.lock() {
        // One write per line: O_APPEND keeps the lines of several processes whole.
        let _ = f.write_all(line.as_bytes());
    }
}

/// Whether tracing is on (to skip work that only the trace needs).
pub(crate) fn enabled() -> bool {
    file().is_some()
}
