//! Our endpoint on a real UDP socket (127.0.0.1, port 0) against independent uTP
//! implementations, both ways: libutp (the reference, through the npm package utp-native run
//! by Node) and librqbit-utp (tokio). Each test moves a few hundred KiB each way and compares
//! the bytes; each is bounded in time and kills what it started.
//!
//! utp-native is installed by `.ci/run`'s `node_peers` under `$FOG_PEERS_DIR/node`
//! (default `~/.cache/fogconnect-peers/node`); without it the libutp tests skip, or fail when
//! `FOG_REQUIRE_INTEROP=1` as in CI.

// Real sockets need the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fog_test_support::{find_tool, skip_or_fail};
use fog_utp::{
    CloseReason, Config, ConnectionHandle, ConnectionStats, Endpoint, Event, ReadError, WriteError,
};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// Bytes each way on a clean path.
const SIZE: usize = 512 * 1024;
/// Bytes each way when our side drops datagrams.
const LOSSY_SIZE: usize = 256 * 1024;
/// Datagrams our side drops, each way, in the lossy cases: the peers' retransmission and
/// selective acks have to work against each other.
const LOSS: f64 = 0.03;
/// Every test ends within this.
const DEADLINE: Duration = Duration::from_secs(20);

fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 24) as u8
        })
        .collect()
}

/// Our endpoint on a loopback socket.
struct Ours {
    socket: UdpSocket,
    ep: Endpoint,
    buf: Vec<u8>,
    /// Drop this share of datagrams sent and received (seeded).
    loss: f64,
    rng: ChaCha8Rng,
    /// Our connection's stats, as last seen.
    last: Option<ConnectionStats>,
}

impl Ours {
    fn new(seed: u8, loss: f64) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Ours {
            socket,
            ep: Endpoint::new(Config::with_seed([seed; 32]), Instant::now()),
            buf: vec![0u8; 65_536],
            loss,
            rng: ChaCha8Rng::seed_from_u64(u64::from(seed)),
            last: None,
        }
    }

    fn note_resent(&mut self, conn: ConnectionHandle) {
        if let Some(s) = self.ep.stats(conn) {
            self.last = Some(s);
        }
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.random_bool(self.loss)
    }

    fn receive(&mut self, n: usize, from: SocketAddr) {
        if !self.lost() {
            let datagram = self.buf[..n].to_vec();
            self.ep.handle_packet(Instant::now(), from, &datagram);
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Sends what is due, returns the events, then waits up to 5 ms for one datagram or the
    /// next deadline.
    fn turn(&mut self) -> Vec<Event> {
        let now = Instant::now();
        while let Some(t) = self.ep.poll_transmit(now, &mut self.buf) {
            if !self.lost() {
                self.socket
                    .send_to(&self.buf[..t.len], t.destination)
                    .unwrap();
            }
        }
        let events: Vec<Event> = std::iter::from_fn(|| self.ep.poll_event()).collect();
        let wait = self
            .ep
            .poll_timeout()
            .map_or(Duration::from_millis(5), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_micros(200), Duration::from_millis(5));
        self.socket.set_read_timeout(Some(wait)).unwrap();
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => {
                self.receive(n, from);
                // Take whatever else is queued without waiting.
                self.socket.set_nonblocking(true).unwrap();
                while let Ok((n, from)) = self.socket.recv_from(&mut self.buf) {
                    self.receive(n, from);
                }
                self.socket.set_nonblocking(false).unwrap();
            }
            Err(_) => self.ep.handle_timeout(Instant::now()),
        }
        if self.ep.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            self.ep.handle_timeout(Instant::now());
        }
        events
    }

    /// We connect to `peer`, send `data`, read the echo back, close. Returns the echo and
    /// whether the peer finished its side too.
    fn send_and_read_echo(&mut self, peer: SocketAddr, data: &[u8]) -> (Vec<u8>, bool, bool) {
        let conn = self.ep.connect(Instant::now(), peer).unwrap();
        let (mut off, mut echo, mut finished, mut closed_done) = (0, Vec::new(), false, false);
        let mut closed_called = false;
        let start = Instant::now();
        let mut rbuf = vec![0u8; 65_536];
        while start.elapsed() < DEADLINE {
            while off < data.len() {
                match self.ep.write(conn, &data[off..]) {
                    Ok(n) => off += n,
                    Err(WriteError::WouldBlock) => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            loop {
                match self.ep.read(conn, &mut rbuf) {
                    Ok(0) | Err(ReadError::WouldBlock) => break,
                    Ok(n) => echo.extend_from_slice(&rbuf[..n]),
                    Err(e) => panic!("read: {e} after {} bytes", echo.len()),
                }
            }
            if echo.len() >= data.len() && !closed_called {
                self.ep.close(conn);
                closed_called = true;
            }
            for e in self.turn() {
                match e {
                    Event::Finished(c) if c == conn => finished = true,
                    Event::Closed { conn: c, reason } if c == conn => {
                        assert_eq!(
                            reason,
                            CloseReason::Done,
                            "after {} bytes echoed",
                            echo.len()
                        );
                        closed_done = true;
                    }
                    _ => {}
                }
            }
            self.note_resent(conn);
            if closed_done {
                break;
            }
        }
        (echo, finished, closed_done)
    }

    /// We accept one connection and echo it until the peer's FIN, then close; runs until
    /// `done()` says the other side is satisfied. Returns what we received.
    fn echo_one(&mut self, mut done: impl FnMut() -> bool) -> Vec<u8> {
        let mut conn: Option<ConnectionHandle> = None;
        let mut received = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut finished = false;
        let mut rbuf = vec![0u8; 65_536];
        let start = Instant::now();
        while start.elapsed() < DEADLINE && !done() {
            for e in self.turn() {
                match e {
                    Event::Incoming { conn: c, .. } => {
                        assert!(conn.replace(c).is_none(), "a second connection");
                    }
                    Event::Finished(_) => finished = true,
                    Event::Closed { reason, .. } => {
                        assert_eq!(reason, CloseReason::Done, "after {} bytes", received.len())
                    }
                    _ => {}
                }
            }
            let Some(c) = conn else { continue };
            self.note_resent(c);
            loop {
                match self.ep.read(c, &mut rbuf) {
                    Ok(0) | Err(ReadError::WouldBlock) => break,
                    Ok(n) => {
                        received.extend_from_slice(&rbuf[..n]);
                        pending.extend_from_slice(&rbuf[..n]);
                    }
                    Err(_) => break,
                }
            }
            while !pending.is_empty() {
                match self.ep.write(c, &pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(_) => break,
                }
            }
            if finished && pending.is_empty() {
                self.ep.close(c);
            }
        }
        // Let our last packets out.
        for _ in 0..20 {
            self.turn();
        }
        received
    }
}

/// Kills and reaps the child when dropped, whatever the test did.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utp-native's directory, or `None` after skipping (or failing, under FOG_REQUIRE_INTEROP).
fn utp_native(test: &str) -> Option<(PathBuf, PathBuf)> {
    let base = std::env::var_os("FOG_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/fogconnect-peers")
        });
    let module = base.join("node/node_modules/utp-native");
    let Some(node) = find_tool("node") else {
        skip_or_fail(test, "node is not installed", "FOG_REQUIRE_INTEROP");
        return None;
    };
    if !module.join("package.json").is_file() {
        let why = format!("{} missing (run `bash .ci/run apt`)", module.display());
        skip_or_fail(test, &why, "FOG_REQUIRE_INTEROP");
        return None;
    }
    Some((node, module))
}

/// Runs `node script`; its stdout is ours to read, its stderr shows in the test's output.
fn spawn_node(node: &Path, script: &Path) -> (Killed, BufReader<ChildStdout>) {
    let mut child = Command::new(node)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Killed(child), stdout)
}

fn node_script(dir: &tempdir::Dir, name: &str, body: &str) -> PathBuf {
    let path = dir.0.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// Scratch directories removed on drop (no tempfile dependency for two files), named after the
/// test so tests running in parallel never share (and delete) one.
mod tempdir {
    use std::path::PathBuf;
    pub(super) struct Dir(pub(super) PathBuf);
    impl Dir {
        pub(super) fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("fog-utp-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// We connect to a libutp echo server and send `len` bytes through a path losing `loss`.
fn we_connect_libutp_echoes_case(test: &str, seed: u8, len: usize, loss: f64) {
    let Some((node, module)) = utp_native(test) else {
        return;
    };
    let dir = tempdir::Dir::new(test);
    let script = node_script(
        &dir,
        "server.js",
        &format!(
            r#"const utp = require({module:?});
const server = utp.createServer(sock => {{ sock.on('error', e => console.error(e)); sock.pipe(sock); }});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
setTimeout(() => process.exit(3), 30000);
"#,
            module = module.display().to_string()
        ),
    );
    let (_child, mut stdout) = spawn_node(&node, &script);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().expect("the server's port");
    let mut ours = Ours::new(seed, loss);
    let data = payload(seed.into(), len);
    let (echo, finished, closed) =
        ours.send_and_read_echo(SocketAddr::from(([127, 0, 0, 1], port)), &data);
    assert_eq!(echo.len(), data.len(), "bytes echoed by libutp");
    assert!(echo == data, "libutp echoed different bytes");
    assert!(finished, "libutp's FIN did not arrive");
    assert!(closed, "the connection did not close cleanly");
    if loss > 0.0 {
        assert!(
            ours.last.is_some_and(|s| s.packets_resent > 0),
            "datagrams were dropped but nothing was sent again"
        );
    }
}

#[test]
fn we_connect_libutp_echoes() {
    we_connect_libutp_echoes_case("we_connect_libutp_echoes", 1, SIZE, 0.0);
}

#[test]
fn we_connect_libutp_echoes_with_loss() {
    we_connect_libutp_echoes_case("we_connect_libutp_echoes_with_loss", 5, LOSSY_SIZE, LOSS);
}

/// A libutp client sends `len` bytes to our echo through a path losing `loss`.
fn libutp_connects_we_echo_case(test: &str, seed: u8, len: usize, loss: f64) {
    let Some((node, module)) = utp_native(test) else {
        return;
    };
    let dir = tempdir::Dir::new(test);
    let data = payload(seed.into(), len);
    let data_path = dir.0.join("data.bin");
    std::fs::write(&data_path, &data).unwrap();
    let mut ours = Ours::new(seed, loss);
    let script = node_script(
        &dir,
        "client.js",
        &format!(
            r#"const utp = require({module:?});
const fs = require('fs');
const data = fs.readFileSync({data:?});
const sock = utp.connect({port}, '127.0.0.1');
const got = [];
let n = 0;
sock.on('data', d => {{ got.push(d); n += d.length; }});
sock.on('end', () => {{
  const echo = Buffer.concat(got);
  console.log(echo.equals(data) ? 'OK ' + n : 'MISMATCH ' + n);
  process.exit(0);
}});
sock.on('error', e => {{ console.log('ERROR ' + e); process.exit(1); }});
sock.write(data);
sock.end();
setTimeout(() => {{ console.log('TIMEOUT ' + n); process.exit(2); }}, 20000);
"#,
            module = module.display().to_string(),
            data = data_path.display().to_string(),
            port = ours.addr().port()
        ),
    );
    let (mut child, mut stdout) = spawn_node(&node, &script);
    let received = ours.echo_one(|| child.0.try_wait().ok().flatten().is_some());
    let mut verdict = String::new();
    stdout.read_line(&mut verdict).unwrap();
    let stats = (ours.ep.endpoint_stats(), ours.last);
    assert_eq!(
        received.len(),
        data.len(),
        "bytes we received from libutp (libutp said {verdict:?}; ours: {stats:?})"
    );
    assert!(received == data, "libutp sent different bytes");
    assert_eq!(
        verdict.trim(),
        format!("OK {len}"),
        "libutp's verdict on our echo"
    );
    if loss > 0.0 {
        assert!(
            ours.last.is_some_and(|s| s.packets_resent > 0),
            "datagrams were dropped but nothing was sent again"
        );
    }
}

#[test]
fn libutp_connects_we_echo() {
    libutp_connects_we_echo_case("libutp_connects_we_echo", 2, SIZE, 0.0);
}

#[test]
fn libutp_connects_we_echo_with_loss() {
    libutp_connects_we_echo_case("libutp_connects_we_echo_with_loss", 6, LOSSY_SIZE, LOSS);
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn we_connect_librqbit_echoes() {
    let rt = tokio_runtime();
    let (listener, addr) = rt.block_on(async {
        let s = librqbit_utp::UtpSocket::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = s.bind_addr();
        (s, addr)
    });
    rt.spawn(async move {
        let stream = listener.accept().await.unwrap();
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
        // Keep the socket (and so the connection) alive while we finish.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(listener);
    });
    let mut ours = Ours::new(3, 0.0);
    let data = payload(3, SIZE);
    let (echo, finished, closed) = ours.send_and_read_echo(addr, &data);

    assert_eq!(echo.len(), data.len(), "bytes echoed by librqbit-utp");
    assert!(echo == data, "librqbit-utp echoed different bytes");
    assert!(finished, "librqbit-utp's FIN did not arrive");
    assert!(closed, "the connection did not close cleanly");
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn librqbit_connects_we_echo() {
    let rt = tokio_runtime();
    let mut ours = Ours::new(4, 0.0);
    let our_addr = ours.addr();
    let data = payload(4, SIZE);
    let sent = data.clone();
    let client = rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = librqbit_utp::UtpSocket::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let stream = s.connect(our_addr).await.unwrap();
        let (mut r, mut w) = stream.split();
        let writer = async move {
            w.write_all(&sent).await.unwrap();
            w.flush().await.unwrap();
            w
        };
        let reader = async move {
            let mut echo = vec![0u8; SIZE];
            r.read_exact(&mut echo).await.map(|_| echo)
        };
        let (w, echo) = tokio::join!(writer, reader);
        drop(w);
        drop(s);
        echo
    });
    let received = ours.echo_one(|| client.is_finished());
    let echo = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(1), client).await })
        .expect("librqbit-utp's client did not finish")
        .unwrap()
        .expect("librqbit-utp read the echo");
    assert_eq!(
        received.len(),
        data.len(),
        "bytes we received from librqbit-utp"
    );
    assert!(received == data, "librqbit-utp sent different bytes");
    assert!(echo == data, "librqbit-utp got a different echo");
    rt.shutdown_timeout(Duration::from_secs(1));
}
