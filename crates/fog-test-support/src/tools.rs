//! External tools, and what a test does without one: skip, or fail where CI requires it.

use std::io::{self, Write};
use std::path::PathBuf;

/// The Python of the interop peers' virtual environment that `.ci/run apt` makes:
/// `$FOG_PEERS_DIR/venv/bin/python`, by default under `~/.cache/fogconnect-peers`.
pub fn peers_python() -> PathBuf {
    let dir = std::env::var_os("FOG_PEERS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fogconnect-peers"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/fogconnect-peers"));
    dir.join("venv/bin/python")
}

/// Where an external tool is: on PATH, or in the sbin directories a non-root PATH may lack
/// (Debian installs stund in /usr/sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Says that `test` is skipped and why, straight to stderr (libtest captures `eprintln!` of a
/// passing test, and a skip must show).
pub fn say_skipped(test: &str, why: &str, require_var: &str) {
    let _ = writeln!(
        io::stderr(),
        "SKIPPED {test}: {why}; set {require_var}=1 to fail instead"
    );
}

/// What `test` does when this host lacks what it needs (`why`): fails if the environment
/// variable `require_var` is `1`, and otherwise says it is skipped (the caller then returns).
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str, require_var: &str) {
    if std::env::var(require_var).as_deref() == Ok("1") {
        panic!("{test}: {why}, and {require_var}=1");
    }
    say_skipped(test, why, require_var);
}

/// The tools an interop test needs, or `None` (after saying so) when one is missing and
/// `FOG_REQUIRE_INTEROP` is not `1`; with it set, as CI does, a missing tool fails the test.
#[track_caller]
pub fn interop_tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
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
    skip_or_fail(test, &why, "FOG_REQUIRE_INTEROP");
    None
}
