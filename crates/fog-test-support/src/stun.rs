//! Free ports on two loopback addresses, a STUN probe, and the independent STUN servers.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};

use crate::{A1, A2, ChildGuard, scratch_file};

/// How long a server may take to answer its first Binding request.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Two ports P1, P2 such that all of A1:P1, A1:P2, A2:P1, A2:P2 were free a moment ago: the OS
/// picks P1 and P2 on A1, and a pair whose twins on A2 are taken is drawn again. The sockets are
/// closed on return, so another process could take a port before the server binds it; starting
/// a server therefore retries with new ports when a bind fails.
pub fn free_port_pair() -> (u16, u16) {
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

/// Sends Binding requests to `server` until one is answered or `timeout` passes.
pub fn answers_stun(server: SocketAddr, timeout: Duration) -> bool {
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

/// Whether every address in `addrs` answers a Binding request within [`START_TIMEOUT`].
pub fn all_answer(addrs: &[SocketAddr]) -> bool {
    addrs.iter().all(|&a| answers_stun(a, START_TIMEOUT))
}

/// A STUN server on A1:P1 with alternate A2:P2 (or on A1:P1 alone), answering; killed when
/// dropped.
pub struct Server {
    /// The server process.
    pub child: ChildGuard,
    /// A1:P1.
    pub primary: SocketAddr,
    /// A2:P2, when it has one.
    pub alternate: Option<SocketAddr>,
}

impl Server {
    /// Starts `program` with the arguments `args(p1, p2)` gives for a free port pair and waits
    /// until A1:P1 (and with `two_addresses`, each of A1:P2, A2:P1, A2:P2 too) answers a Binding
    /// request; retried with new ports if not (another process may take a port between the
    /// probe and the server's bind).
    pub fn start(
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
            if all_answer(&addrs) {
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

    /// `turnserver --stun-only` with [`coturn_args`].
    pub fn coturn(turnserver: &Path) -> Self {
        Self::start("turnserver", turnserver, coturn_args, true)
    }

    /// `stund -h 127.0.0.1 -a 127.0.0.2 -p P1 -o P2`, in the foreground: the classic RFC 3489
    /// server, which answers with MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS only.
    pub fn stund(stund: &Path) -> Self {
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

/// The arguments of `turnserver --stun-only` on 127.0.0.1:P1 with alternate 127.0.0.2:P2: no
/// TURN, no TLS/DTLS, no TCP, no CLI, no authentication, no configuration file, its log on
/// stdout, its pid file in the scratch directory.
pub fn coturn_args(p1: u16, p2: u16) -> Vec<String> {
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
}

/// fogd (the binary at `fogd`) on loopback with free ports: STUN on A1 and A2 (RFC 5780's two
/// addresses) and signaling on A1, plus `extra` arguments; retries with new ports when another
/// process took one. The child (named `name-<attempt>`), the primary STUN address and the
/// signaling address.
pub fn fogd_on_loopback(
    fogd: &Path,
    name: &str,
    extra: &[&str],
    timeout: Duration,
) -> (ChildGuard, SocketAddr, SocketAddr) {
    for attempt in 0..5 {
        let (p1, p2) = free_port_pair();
        let signal = std::net::TcpListener::bind((A1, 0))
            .and_then(|l| l.local_addr())
            .expect("a free TCP port");
        let stun = SocketAddr::new(A1, p1);
        let mut command = Command::new(fogd);
        command
            .args([
                "--stun",
                &stun.to_string(),
                "--stun-alt",
                &SocketAddr::new(A2, p2).to_string(),
                "--signal",
                &signal.to_string(),
            ])
            .args(extra);
        let label = format!("{name}-{attempt}");
        if let Some(child) = crate::spawn_listening(&label, &mut command, signal, timeout) {
            return (child, stun, signal);
        }
    }
    panic!("fogd could not start on free ports");
}
