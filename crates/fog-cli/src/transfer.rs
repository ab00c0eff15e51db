//! `fogconnect send` and `fogconnect recv`: a file over a KCP connection, with a progress bar
//! and a SHA-256 check.
//!
//! The exchange, one KCP message each (KCP keeps messages whole and in order):
//! 1. sender: `FOGFILE1 <size> <name>` (the file's base name, UTF-8);
//! 2. sender: the file's bytes, in messages of at most [`CHUNK`] bytes, `size` in all;
//! 3. sender: `FOGEND <sha256 hex>`;
//! 4. receiver: `FOGOK <hex>` when its own hash of what it wrote matches, `FOGBAD <hex>`
//!    otherwise; then the sender closes.
//!
//! The receiver writes to `.<name>.part` in its directory and renames it to a free name
//! (`name`, `name.1`, ...) only once the hash matched; a mismatch or a lost connection removes
//! the part file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fog_runtime::RuntimeError;
use fog_signal::PeerId;
use fogconnect::{AcceptPolicy, ConnectionId, Event, SendError, Transport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{RecvArgs, SendArgs};
use crate::node::start;

/// The largest data message.
const CHUNK: usize = 60_000;
/// The service number of file transfers.
const SERVICE: u16 = 21;
/// What `recv` says to a caller over another transport.
const REFUSED_NOT_KCP: u32 = 1;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A progress bar on stderr for `size` bytes (hidden with `--json`).
fn progress(size: u64, json: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// With `--json`, a `progress` line at most every [`PROGRESS_EVERY`] and one at the end:
/// bytes so far, the total, and the average rate since the first byte.
struct JsonProgress {
    file: String,
    total: u64,
    started: Option<Instant>,
    last: Option<Instant>,
}

/// How often a `--json` transfer prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

impl JsonProgress {
    fn new(file: &str, total: u64) -> Self {
        JsonProgress {
            file: file.to_owned(),
            total,
            started: None,
            last: None,
        }
    }

    // The binary reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn update(&mut self, bytes: u64) {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let due = self.last.is_none_or(|t| now - t >= PROGRESS_EVERY);
        if !due && bytes < self.total {
            return;
        }
        self.last = Some(now);
        let secs = (now - started).as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        let line = json!({"event": "progress", "file": self.file, "bytes": bytes,
            "total": self.total, "rate_bps": rate.round()});
        println!("{}", crate::node::stamped(&line.to_string()));
    }
}

/// `fogconnect send FILE PEER`.
// The binary reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn send(args: &SendArgs) -> Result<(), String> {
    let path = &args.file;
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name in UTF-8", path.display()))?
        .to_owned();
    let mut node = start(&args.node, None, AcceptPolicy::Ask)?;
    let deadline = args.node.signaling.timeout.map(|t| Instant::now() + t);
    let mut ready = (false, false);
    let mut resolved: Option<PeerId> = args.peer.parse().ok();
    let mut asked = false;
    let mut id: Option<ConnectionId> = None;
    let mut connected = false;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    // The message waiting for room in the stream, and whether the header and end went.
    let mut pending: Option<Vec<u8>> = None;
    let mut header_sent = false;
    let mut end_sent = false;
    let mut bar: Option<ProgressBar> = None;
    let mut json_progress: Option<JsonProgress> = None;
    let started = Instant::now();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(format!("timed out after {sent} of {size} bytes"));
        }
        for event in node.step()? {
            node.report(&event);
            match event {
                Event::Ready { .. } => ready.0 = true,
                Event::SignalingUp => ready.1 = true,
                Event::LookupResult { peer, online, .. } => {
                    resolved = match (peer, online) {
                        (Some(p), true) => Some(p),
                        (Some(p), false) => {
                            return Err(format!("{} ({p}) is not online", args.peer));
                        }
                        (None, _) => return Err(format!("no peer is known as {}", args.peer)),
                    };
                }
                Event::Connected { id: c, .. } if Some(c) == id => connected = true,
                Event::Data { id: c, data } if Some(c) == id => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    let ours = hex(&hasher.clone().finalize());
                    let verdict = text.strip_prefix("FOGOK ").map(|h| h == ours);
                    if let Some(bar) = &bar {
                        bar.finish();
                    }
                    let c = id.expect("the connection");
                    let _ = node.handle.close(c, 0, "done");
                    for _ in 0..10 {
                        node.step()?;
                    }
                    return match verdict {
                        Some(true) => {
                            let secs = started.elapsed().as_secs_f64();
                            if node.json {
                                println!(
                                    "{}",
                                    json!({"event": "sent", "file": name, "bytes": size,
                                        "sha256": ours, "secs": secs, "verified": true})
                                );
                            } else {
                                println!(
                                    "sent {name}: {size} bytes, SHA-256 {ours}, verified by the receiver"
                                );
                            }
                            Ok(())
                        }
                        _ => Err(format!("the receiver's check failed: {text}")),
                    };
                }
                Event::Failed { id: c, reason } if Some(c) == id => {
                    return Err(reason.to_string());
                }
                Event::Closed { id: c, reason, .. } if Some(c) == id => {
                    return Err(format!("the connection closed: {reason}"));
                }
                _ => {}
            }
        }
        if ready.1 && resolved.is_none() && !asked {
            node.handle.lookup(&args.peer).map_err(|e| e.to_string())?;
            asked = true;
        }
        if ready.0 && ready.1 && id.is_none() {
            if let Some(peer) = resolved {
                id = Some(
                    node.handle
                        .connect_with(peer, SERVICE, Transport::Kcp)
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        let Some(c) = id.filter(|_| connected) else {
            continue;
        };
        let bar = bar.get_or_insert_with(|| progress(size, node.json, &name));
        if node.json && json_progress.is_none() {
            json_progress = Some(JsonProgress::new(&name, size));
        }
        // As much as the stream takes now.
        loop {
            let message = match pending.take() {
                Some(m) => m,
                None if !header_sent => {
                    header_sent = true;
                    format!("FOGFILE1 {size} {name}").into_bytes()
                }
                None if sent < size => {
                    let mut buf = vec![0u8; CHUNK.min((size - sent) as usize)];
                    file.read_exact(&mut buf)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    hasher.update(&buf);
                    sent += buf.len() as u64;
                    bar.set_position(sent);
                    if let Some(p) = &mut json_progress {
                        p.update(sent);
                    }
                    buf
                }
                None if !end_sent => {
                    end_sent = true;
                    format!("FOGEND {}", hex(&hasher.clone().finalize())).into_bytes()
                }
                None => break,
            };
            match node.handle.send(c, &message) {
                Ok(()) => {}
                Err(RuntimeError::Send(SendError::Blocked)) => {
                    pending = Some(message);
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// A file on its way in.
struct Incoming {
    name: String,
    size: u64,
    got: u64,
    part: PathBuf,
    file: File,
    hasher: Sha256,
    bar: ProgressBar,
    /// With `--json`.
    progress: Option<JsonProgress>,
}

/// `fogconnect recv [DIR]`.
pub(crate) fn recv(args: &RecvArgs) -> Result<(), String> {
    if !args.dir.is_dir() {
        return Err(format!("{} is not a directory", args.dir.display()));
    }
    let mut node = start(&args.node, args.alias.as_deref(), AcceptPolicy::Ask)?;
    let mut files: BTreeMap<ConnectionId, Option<Incoming>> = BTreeMap::new();
    let mut done = 0u64;
    loop {
        for event in node.step()? {
            node.report(&event);
            match event {
                Event::Incoming { id, transport, .. } => {
                    if transport == Transport::Kcp {
                        node.handle.accept(id).map_err(|e| e.to_string())?;
                        files.insert(id, None);
                    } else {
                        let _ = node.handle.refuse(
                            id,
                            REFUSED_NOT_KCP,
                            "fogconnect recv takes files over KCP",
                        );
                    }
                }
                Event::Data { id, data } => {
                    let Some(slot) = files.get_mut(&id) else {
                        continue;
                    };
                    match take(&args.dir, slot, &data, node.json) {
                        Ok(None) => {}
                        Ok(Some(reply)) => {
                            let ok = reply.starts_with("FOGOK");
                            let _ = node.handle.send(id, reply.as_bytes());
                            if ok {
                                done += 1;
                            }
                        }
                        Err(e) => {
                            eprintln!("fogconnect: {e}");
                            if let Some(Some(f)) = files.remove(&id) {
                                let _ = std::fs::remove_file(&f.part);
                            }
                            let _ = node.handle.close(id, 2, &e);
                        }
                    }
                }
                Event::Closed { id, .. } | Event::Failed { id, .. } => {
                    if let Some(Some(f)) = files.remove(&id) {
                        f.bar.abandon();
                        let _ = std::fs::remove_file(&f.part);
                    }
                }
                _ => {}
            }
        }
        if args.count.is_some_and(|c| done >= c) {
            // The last verdict leaves before we go.
            for _ in 0..10 {
                node.step()?;
            }
            return Ok(());
        }
    }
}

/// One message of a transfer into `slot`: `Some(reply)` once the file is complete (the
/// verdict to send back), an error for a sender that breaks the exchange.
fn take(
    dir: &Path,
    slot: &mut Option<Incoming>,
    data: &[u8],
    json: bool,
) -> Result<Option<String>, String> {
    let Some(incoming) = slot else {
        let header = std::str::from_utf8(data).map_err(|_| "a header that is not UTF-8")?;
        let mut words = header.splitn(3, ' ');
        let (Some("FOGFILE1"), Some(size), Some(name)) = (words.next(), words.next(), words.next())
        else {
            return Err(format!("not a file header: {header:.60}"));
        };
        let size: u64 = size.parse().map_err(|_| "a header with a bad size")?;
        // Only a base name: nothing the sender says may leave the directory.
        let name = Path::new(name)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('.'))
            .ok_or_else(|| format!("a file name we will not write: {name:.60}"))?
            .to_owned();
        let part = dir.join(format!(".{name}.part"));
        let file = File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let bar = progress(size, json, &name);
        let json_progress = json.then(|| JsonProgress::new(&name, size));
        *slot = Some(Incoming {
            name,
            size,
            got: 0,
            part,
            file,
            hasher: Sha256::new(),
            bar,
            progress: json_progress,
        });
        return Ok(None);
    };
    if incoming.got < incoming.size {
        let room = incoming.size - incoming.got;
        if data.len() as u64 > room {
            return Err(format!("more than the {} bytes announced", incoming.size));
        }
        incoming
            .file
            .write_all(data)
            .map_err(|e| format!("{}: {e}", incoming.part.display()))?;
        incoming.hasher.update(data);
        incoming.got += data.len() as u64;
        incoming.bar.set_position(incoming.got);
        if let Some(p) = &mut incoming.progress {
            p.update(incoming.got);
        }
        return Ok(None);
    }
    let end = std::str::from_utf8(data).unwrap_or("");
    let theirs = end
        .strip_prefix("FOGEND ")
        .ok_or_else(|| format!("not the end of the file: {end:.60}"))?;
    let ours = hex(&incoming.hasher.clone().finalize());
    incoming.bar.finish();
    if theirs != ours {
        let _ = std::fs::remove_file(&incoming.part);
        return Ok(Some(format!("FOGBAD {ours}")));
    }
    incoming
        .file
        .flush()
        .map_err(|e| format!("{}: {e}", incoming.part.display()))?;
    let target = free_name(dir, &incoming.name);
    std::fs::rename(&incoming.part, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    if json {
        println!(
            "{}",
            json!({"event": "received", "file": target.display().to_string(),
                "bytes": incoming.size, "sha256": ours, "verified": true})
        );
    } else {
        println!(
            "received {}: {} bytes, SHA-256 {ours}, verified",
            target.display(),
            incoming.size
        );
    }
    Ok(Some(format!("FOGOK {ours}")))
}

/// `name` in `dir`, or `name.1`, `name.2`, ... if taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|k| dir.join(format!("{name}.{k}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}
