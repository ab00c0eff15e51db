//! A file over FogConnect on real sockets, with the runtime crate and a reliable transport:
//! `file_transfer serve ALIAS DIR` takes files into DIR; `file_transfer send ALIAS FILE
//! [kcp|quic|utp]` finds the peer by its alias, connects over the named transport (KCP by
//! default), sends the file with progress, and leaves once the receiver confirmed it whole.
//!
//! ```text
//! cargo run --release -p fogd -- --stun 127.0.0.1:3478 --stun-alt 127.0.0.2:3479 --signal 127.0.0.1:7600 &
//! cargo run --release -p fog-examples --example file_transfer -- serve bob /tmp/inbox &
//! cargo run --release -p fog-examples --example file_transfer -- send bob ./notes.pdf quic
//! ```
//!
//! `FOG_SIGNAL` (default `ws://127.0.0.1:7600/ws`) and `FOG_STUN` (default `127.0.0.1:3478`)
//! name the servers.
//!
//! The protocol is this example's own, on the transport's ordered, reliable messages: a header
//! (`FOGFILE1`, the size as 8 bytes big-endian, the name), then the file in chunks of 32 KiB,
//! then the receiver's answer `ok SIZE CHECKSUM` (FNV-1a 64 of the bytes, in hex) or `error
//! WHY`. The sender compares the checksum with its own. A name is reduced to its last path
//! component, and the receiver refuses one that would be hidden or empty, and a file it
//! already has: it never writes outside DIR and never overwrites.
//! Over `--transport utp` a message may arrive split or joined (uTP is a byte stream), so the
//! receiver reassembles by count, never by message.

// An example program is a driver: it reads the clock (progress, its deadline) and the OS random
// source (the node's key).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fog_runtime::{Runtime, RuntimeConfig, RuntimeError};
use fogconnect::{AcceptPolicy, ConnectionId, Event, KeyPair, NodeConfig, SendError, Transport};

const MAGIC: &[u8; 8] = b"FOGFILE1";
const CHUNK: usize = 32 * 1024;
/// The service number the receiver answers on.
const SERVICE: u16 = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: file_transfer serve ALIAS DIR | file_transfer send ALIAS FILE [kcp|quic|utp]";
    let (mode, alias, path) = match &args[..] {
        [mode, alias, path, ..] if mode == "serve" || mode == "send" => {
            (mode.as_str(), alias.clone(), PathBuf::from(path))
        }
        _ => return Err(usage.into()),
    };
    let transport = match args.get(3).map(String::as_str) {
        None | Some("kcp") => Transport::Kcp,
        Some("quic") => Transport::Quic,
        Some("utp") => Transport::Utp,
        Some(other) => return Err(format!("unknown transport {other}; {usage}").into()),
    };
    let signal = std::env::var("FOG_SIGNAL").unwrap_or_else(|_| "ws://127.0.0.1:7600/ws".into());
    let stun = std::env::var("FOG_STUN").unwrap_or_else(|_| "127.0.0.1:3478".into());

    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    let key = KeyPair::from_seed(&seed);
    let mut node = NodeConfig::new(key, "127.0.0.1", stun.parse()?, "0.0.0.0:0".parse()?, 0);
    if mode == "serve" {
        node.alias = Some(alias.clone());
        node.accept = AcceptPolicy::All;
    }
    let runtime = Runtime::start(RuntimeConfig::new(node, signal.parse()?))?;
    let result = if mode == "serve" {
        serve(&runtime, &path)
    } else {
        send(&runtime, &alias, &path, transport)
    };
    runtime.shutdown()?;
    result
}

/// One incoming file: where it goes and what came so far.
struct Incoming {
    /// The header's bytes until it is whole.
    head: Vec<u8>,
    file: Option<(File, PathBuf, u64)>,
    received: u64,
    checksum: Fnv,
}

fn serve(runtime: &Runtime, dir: &Path) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let handle = runtime.handle();
    println!("peer id {}", handle.peer_id());
    let mut files: BTreeMap<ConnectionId, Incoming> = BTreeMap::new();
    loop {
        let event = runtime.events().recv()?;
        match event {
            Event::Ready { behaviour, .. } => println!("ready: NAT {behaviour}"),
            Event::Connected { id, peer, via, .. } => {
                println!("{peer} connected ({via:?})");
                files.insert(
                    id,
                    Incoming {
                        head: Vec::new(),
                        file: None,
                        received: 0,
                        checksum: Fnv::new(),
                    },
                );
            }
            Event::Data { id, data } => {
                let Some(incoming) = files.get_mut(&id) else {
                    continue;
                };
                match take(incoming, dir, &data) {
                    Ok(Some(answer)) => {
                        handle.send(id, answer.as_bytes())?;
                        files.remove(&id);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        println!("refused: {why}");
                        handle.send(id, format!("error {why}").as_bytes())?;
                        files.remove(&id);
                    }
                }
            }
            Event::Closed { id, .. } | Event::Failed { id, .. } => {
                if let Some(Incoming {
                    file: Some((_, path, size)),
                    received,
                    ..
                }) = files.remove(&id)
                {
                    // Incomplete: what came is left for the user to see, and said so.
                    println!(
                        "incomplete: {} ({received} of {size} bytes)",
                        path.display()
                    );
                }
            }
            _ => {}
        }
    }
}

/// Takes one message of an incoming file; the answer once the file is whole.
fn take(incoming: &mut Incoming, dir: &Path, mut data: &[u8]) -> Result<Option<String>, String> {
    if incoming.file.is_none() {
        incoming.head.extend_from_slice(data);
        let Some((size, name, used)) = header(&incoming.head)? else {
            return Ok(None);
        };
        let path = dir.join(&name);
        // `create_new`: never overwrite.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {name}: {e}"))?;
        println!("receiving {name} ({size} bytes)");
        let rest = incoming.head.split_off(used);
        incoming.file = Some((file, path, size));
        incoming.head = rest;
        data = &[];
    }
    let Some((file, path, size)) = &mut incoming.file else {
        return Ok(None);
    };
    // Bytes that came with the header (uTP joins messages), then this message's.
    for part in [std::mem::take(&mut incoming.head).as_slice(), data] {
        if incoming.received + part.len() as u64 > *size {
            return Err("more bytes than the header announced".into());
        }
        file.write_all(part)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        incoming.checksum.update(part);
        incoming.received += part.len() as u64;
    }
    if incoming.received < *size {
        return Ok(None);
    }
    file.sync_all().map_err(|e| e.to_string())?;
    println!("received {} ({size} bytes)", path.display());
    Ok(Some(format!("ok {size} {:016x}", incoming.checksum.0)))
}

/// The header, once whole: size, safe name, bytes used. An error for a header no sender of
/// ours would send.
fn header(bytes: &[u8]) -> Result<Option<(u64, String, usize)>, String> {
    if bytes.len() < 18 {
        return Ok(None);
    }
    if &bytes[..8] != MAGIC {
        return Err("not a file header".into());
    }
    let size = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let Some(name) = bytes.get(18..18 + len) else {
        return Ok(None);
    };
    let name = String::from_utf8(name.to_vec()).map_err(|_| "a name that is not UTF-8")?;
    // Only the last component, and nothing hidden or empty: the file lands in DIR.
    let name = Path::new(&name)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| format!("refused name {name:?}"))?
        .to_owned();
    Ok(Some((size, name, 18 + len)))
}

fn send(
    runtime: &Runtime,
    alias: &str,
    path: &Path,
    transport: Transport,
) -> Result<(), Box<dyn Error>> {
    let handle = runtime.handle();
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the file has no name")?;
    let mut head = MAGIC.to_vec();
    head.extend(size.to_be_bytes());
    head.extend(u16::try_from(name.len())?.to_be_bytes());
    head.extend(name.as_bytes());

    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ready, mut up, mut asked) = (false, false, false);
    let mut conn = None;
    // What the transport refused last time, and whether it is file bytes (not the header).
    let mut pending: Option<(Vec<u8>, bool)> = None;
    let (mut sent, mut checksum, mut last_tenth) = (0u64, Fnv::new(), 0);
    let started = Instant::now();
    loop {
        if conn.is_none() && Instant::now() > deadline {
            return Err("not connected within 30 s".into());
        }
        let Ok(event) = runtime.events().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match event {
            Event::Ready { .. } => ready = true,
            Event::SignalingUp => up = true,
            Event::LookupResult {
                peer: Some(peer),
                online: true,
                ..
            } => {
                handle.connect_with(peer, SERVICE, transport.clone())?;
            }
            Event::LookupResult { name, .. } => return Err(format!("{name} is not online").into()),
            Event::Connected { id, via, .. } => {
                println!("connected ({via:?}, {transport:?}); sending {name} ({size} bytes)");
                conn = Some(id);
                pending = Some((head.clone(), false));
            }
            Event::Writable => {}
            Event::Data { data, .. } => {
                let answer = String::from_utf8_lossy(&data).into_owned();
                let expected = format!("ok {size} {:016x}", checksum.0);
                if answer != expected {
                    return Err(format!("the receiver said {answer:?}").into());
                }
                let secs = started.elapsed().as_secs_f64();
                println!("done: {size} bytes in {secs:.2} s, confirmed by the receiver");
                if let Some(id) = conn {
                    handle.close(id, 0, "done")?;
                }
                return Ok(());
            }
            Event::Failed { reason, .. } => return Err(reason.to_string().into()),
            Event::Closed { reason, .. } => return Err(format!("closed: {reason}").into()),
            _ => {}
        }
        if let Some(id) = conn {
            // As much as the transport takes; the rest waits for `Writable`.
            while let Some((message, data)) = pending
                .take()
                .or_else(|| next_chunk(&mut file).map(|c| (c, true)))
            {
                match handle.send(id, &message) {
                    Ok(()) => {}
                    Err(RuntimeError::Send(SendError::Blocked)) => {
                        pending = Some((message, data));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
                if !data {
                    continue;
                }
                checksum.update(&message);
                sent += message.len() as u64;
                let tenth = sent * 10 / size.max(1);
                if tenth > last_tenth {
                    last_tenth = tenth;
                    println!("sent {sent} of {size} bytes ({} %)", tenth * 10);
                }
            }
        }
        if !asked && ready && up {
            handle.lookup(alias)?;
            asked = true;
        }
    }
}

/// The next chunk of the file, or `None` at its end (or on a read error, which the missing
/// confirmation then reports).
fn next_chunk(file: &mut File) -> Option<Vec<u8>> {
    let mut chunk = vec![0u8; CHUNK];
    let n = file.read(&mut chunk).ok()?;
    (n > 0).then(|| {
        chunk.truncate(n);
        chunk
    })
}

/// FNV-1a, 64 bits: enough to catch a transfer gone wrong in an example, not an adversary
/// (the session is already authenticated and sealed end to end).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
