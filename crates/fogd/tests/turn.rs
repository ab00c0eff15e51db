//! TURN over loopback, against an independent implementation each way, with `use-auth-secret`
//! credentials only:
//!
//! - fog-turn's client, driven on fog-mio, against coturn's `turnserver` (`--use-auth-secret
//!   --static-auth-secret`, no other auth): allocate, permission, Send and Data indications both
//!   ways with a UDP peer socket of the test's, ChannelBind and ChannelData both ways, deallocate;
//! - coturn's `turnutils_uclient` against fogd's TURN, two clients relaying to each other's
//!   relayed address, which finds no socket unless fogd binds it before it sends from it (the 50 %
//!   loss of the earlier manual run): no loss allowed;
//! - the same fog-turn client against fogd, with credentials and the `turn:` URL that fogd's
//!   signaling hands out from the same secret;
//! - `turnutils_uclient -t` against fogd's TURN over TCP (RFC 8656 §3.1), in channel mode with
//!   odd-length messages (so that ChannelData is padded both ways, §12.5) and with Send
//!   indications; and a client of the test's own over TCP for what uclient does not do: garbage,
//!   the per-IP quota, the idle timeout, and a closed connection freeing its allocation.
//!
//! uclient runs both in its default channel mode, where it draws channel numbers from RFC 5766's
//! 0x4000–0x7FFF (fogd accepts them, though fog-turn's own client binds only RFC 8656 §12's
//! 0x4000–0x4FFF, because RFC 9443 gives first bytes 0x50–0x7F to QUIC on a shared socket), and
//! with `-s` (Send indications). It also runs with `-c` (no RTCP allocation), since RTCP pairs
//! ask for EVEN-PORT with a reservation, which fog-turn answers with 508.
//!
//! Every peer here is on loopback, which fogd refuses by default (RFC 8656 §21.3; coturn's
//! CVE-2020-26262): the tests opt in with `--turn-allow-peer 127.0.0.0/8`, and one checks the
//! refusals without it.
//!
//! Relayed ports come from 20000–31999, below Linux's default ephemeral range (32768–60999), so
//! that ports the OS hands to other processes' sockets do not land in them.
//!
//! The tools come from Debian's coturn package (`.ci/run` installs it). Without them each test
//! says SKIPPED and passes, unless `FOG_REQUIRE_INTEROP=1`, which CI sets.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use fog_mio::Driver;
use fog_turn::auth::AuthSecret;
use fog_turn::client::{Client, ClientConfig, Error, Event, Request, Via};
use fog_turn::wire::ChannelData;
use support::signal::SignalFogd;
use support::{A1, ChildGuard, FinalStats, free_port_pair, interop_tools};

const SECRET: &str = "interop-secret";
/// How long one step of a relay exchange may take on loopback.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams each way in each phase of [`exercise_relay`].
const ROUNDS: usize = 8;

/// 100 relay ports below the ephemeral range, different for each process and each `slot`.
fn relay_ports(slot: u32) -> (u16, u16) {
    let base = 20_000 + ((std::process::id() * 7 + slot * 13) % 120) * 100;
    let base = u16::try_from(base).expect("below 32000");
    (base, base + 99)
}

/// Payload `i` of a phase: its tag, its number, and a length that varies up to 1,200 bytes.
fn payload(tag: &str, i: usize) -> Vec<u8> {
    let mut p = format!("{tag}-{i}-").into_bytes();
    p.extend((0..(i * 150) % 1200).map(|k| (k as u8) ^ (i as u8)));
    p
}

/// A fog-turn client on a fog-mio driver, and the events it has reported.
struct TurnClient {
    driver: Driver<Client>,
    events: Vec<Event>,
    /// The server's log, shown when a step times out (a server that never answered says why
    /// there, if anywhere).
    server_log: Option<PathBuf>,
}

impl TurnClient {
    fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        let config = ClientConfig::new(server, username, password, 7);
        let driver = Driver::new(Client::new(config), &[SocketAddr::new(A1, 0)])
            .expect("binding the client's socket");
        Self {
            driver,
            events: Vec::new(),
            server_log: None,
        }
    }

    /// Shows the end of `log` (the server's stderr) when a step times out.
    fn logging(mut self, log: &Path) -> Self {
        self.server_log = Some(log.to_path_buf());
        self
    }

    /// The last 4,000 characters of the server's log, if the client has one.
    fn log_tail(&self) -> String {
        let Some(path) = &self.server_log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!(
            "\n--- the server's log ({}) ---\n{}",
            path.display(),
            &text[start..]
        )
    }

    /// Runs a command on the machine with a fresh `now`, then sends what it queued.
    fn command<T>(&mut self, f: impl FnOnce(&mut Client, Instant) -> T) -> T {
        let out = f(self.driver.machine_mut(), Instant::now());
        let events = &mut self.events;
        self.driver.drain(|_, e| events.push(e));
        out
    }

    /// Steps the driver until an event `want` picks arrives (taken out of `events`); panics
    /// with every event seen after [`STEP_TIMEOUT`] or on an `Error` event.
    fn wait<T>(&mut self, what: &str, want: impl Fn(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(i) = self.events.iter().position(|e| want(e).is_some()) {
                let event = self.events.remove(i);
                return want(&event).expect("matched a moment ago");
            }
            if let Some(error) = self.events.iter().find(|e| matches!(e, Event::Error(_))) {
                panic!("waiting for {what}: {error:?}; events {:?}", self.events);
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {STEP_TIMEOUT:?}; events {:?}{}",
                self.events,
                self.log_tail()
            );
            let events = &mut self.events;
            self.driver
                .turn(Some(Duration::from_millis(10)), |_, e| events.push(e))
                .expect("driver turn");
        }
    }
}

impl TurnClient {
    /// Steps the driver until the Allocate is refused; returns the error code.
    fn wait_error(&mut self, what: &str) -> u16 {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            for event in &self.events {
                if let Event::Error(Error::Rejected {
                    request: Request::Allocate,
                    code,
                    ..
                }) = event
                {
                    return *code;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {STEP_TIMEOUT:?}; events {:?}{}",
                self.events,
                self.log_tail()
            );
            let events = &mut self.events;
            self.driver
                .turn(Some(Duration::from_millis(10)), |_, e| events.push(e))
                .expect("driver turn");
        }
    }
}

/// Receives `n` datagrams on `peer`, each checked to come from `from`.
fn peer_receives(peer: &UdpSocket, from: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        if let Ok((len, source)) = peer.recv_from(&mut buf) {
            assert_eq!(
                source, from,
                "a datagram to the peer not from the relayed address"
            );
            got.push(buf[..len].to_vec());
        }
    }
    got
}

/// What one full exchange through a relay showed.
#[derive(Debug)]
struct Exchange {
    relayed: SocketAddr,
}

/// Allocates at `server`, then relays [`ROUNDS`] datagrams each way with Send/Data indications
/// and again over a channel, between the client and a UDP peer socket; deallocates. Asserts every
/// byte arrived, in order, the way it should have.
fn exercise_relay(server: SocketAddr, log: &Path, username: &str, password: &str) -> Exchange {
    let mut client = TurnClient::new(server, username, password).logging(log);
    client.command(|c, now| c.allocate(now)).expect("allocate");
    let relayed = client.wait("Allocated", |e| match e {
        Event::Allocated { relayed, .. } => Some(*relayed),
        _ => None,
    });
    assert_eq!(relayed.ip(), A1, "relayed on loopback");

    let peer = UdpSocket::bind((A1, 0)).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    client
        .command(|c, now| c.create_permission(now, peer_addr.ip()))
        .expect("create permission");
    client.wait("PermissionCreated", |e| match e {
        Event::PermissionCreated { peer } if *peer == peer_addr.ip() => Some(()),
        _ => None,
    });

    // Send indications out, Data indications back.
    for i in 0..ROUNDS {
        client
            .command(|c, now| c.send_to(now, peer_addr, &payload("send", i)))
            .expect("send_to");
    }
    let got = peer_receives(&peer, relayed, ROUNDS);
    let want: Vec<Vec<u8>> = (0..ROUNDS).map(|i| payload("send", i)).collect();
    assert_eq!(got, want, "the peer got every Send indication's data");
    for i in 0..ROUNDS {
        peer.send_to(&payload("data", i), relayed).unwrap();
    }
    for i in 0..ROUNDS {
        let (data, via) = client.wait("Data", |e| match e {
            Event::Data { peer, data, via } if *peer == peer_addr => Some((data.clone(), *via)),
            _ => None,
        });
        assert_eq!(data, payload("data", i), "datagram {i} from the peer");
        assert_eq!(via, Via::Indication);
    }

    // A channel, then ChannelData both ways.
    let channel = client
        .command(|c, now| c.bind_channel(now, peer_addr))
        .expect("bind channel");
    client.wait("ChannelBound", |e| match e {
        Event::ChannelBound { peer, channel: n } if *peer == peer_addr && *n == channel => Some(()),
        _ => None,
    });
    assert!(ChannelData::is_valid_channel(channel), "{channel:#x}");
    let sent_before = client.driver.stats().sent_bytes;
    for i in 0..ROUNDS {
        client
            .command(|c, now| c.send_to(now, peer_addr, &payload("chan-out", i)))
            .expect("send_to");
    }
    // Only the 4-byte ChannelData header went with each payload: no Send indication.
    let framed: usize = (0..ROUNDS).map(|i| 4 + payload("chan-out", i).len()).sum();
    assert_eq!(
        client.driver.stats().sent_bytes - sent_before,
        framed as u64,
        "ChannelData, not Send indications"
    );
    let got = peer_receives(&peer, relayed, ROUNDS);
    let want: Vec<Vec<u8>> = (0..ROUNDS).map(|i| payload("chan-out", i)).collect();
    assert_eq!(got, want, "the peer got every ChannelData's data");
    for i in 0..ROUNDS {
        peer.send_to(&payload("chan-in", i), relayed).unwrap();
    }
    for i in 0..ROUNDS {
        let (data, via) = client.wait("Data", |e| match e {
            Event::Data { peer, data, via } if *peer == peer_addr => Some((data.clone(), *via)),
            _ => None,
        });
        assert_eq!(data, payload("chan-in", i), "datagram {i} from the peer");
        assert_eq!(via, Via::Channel);
    }

    client.command(|c, now| c.deallocate(now));
    client.wait("Deallocated", |e| {
        matches!(e, Event::Deallocated).then_some(())
    });
    assert_eq!(client.driver.machine().stats().dropped_malformed, 0);
    assert_eq!(client.driver.machine().stats().dropped_unknown_channel, 0);
    Exchange { relayed }
}

/// Credentials of the `use-auth-secret` scheme for `user`, valid for an hour.
fn credentials(user: &str) -> (String, String) {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    AuthSecret::new(SECRET.as_bytes()).credentials(unix + 3600, user)
}

/// coturn's `turnserver` relaying on loopback with `use-auth-secret` as its only auth.
struct Coturn {
    child: ChildGuard,
    addr: SocketAddr,
    /// Its `--min-port` and `--max-port`.
    ports: (u16, u16),
}

impl Coturn {
    fn start(turnserver: &Path) -> Self {
        let mut last = String::new();
        for attempt in 0..3 {
            let (port, _) = free_port_pair();
            let ports = relay_ports(attempt);
            let (low, high) = ports;
            let pidfile = support::scratch_file("turnserver.pid");
            let mut command = Command::new(turnserver);
            command.args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
            ]);
            command.args(["--listening-port", &port.to_string()]);
            command.args([
                "--min-port",
                &low.to_string(),
                "--max-port",
                &high.to_string(),
            ]);
            command.args(["--use-auth-secret", "--static-auth-secret", SECRET]);
            command.args(["--realm", "fog.test", "--allow-loopback-peers"]);
            command.args([
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-tcp-relay",
                "--no-cli",
            ]);
            command.args(["--log-file", "stdout", "--simple-log"]);
            command.arg("--pidfile").arg(&pidfile);
            let mut child = ChildGuard::spawn("turnserver", &mut command).expect("spawning");
            let addr = SocketAddr::new(A1, port);
            if support::answers_stun(addr, Duration::from_secs(10)) {
                return Self { child, addr, ports };
            }
            last = format!("exit: {:?}\n{}", child.try_wait(), child.output_text());
        }
        panic!("turnserver did not answer in 3 tries\n{last}");
    }
}

#[test]
fn fog_turn_client_relays_both_ways_through_coturn() {
    let Some([turnserver]) = interop_tools(
        "fog_turn_client_relays_both_ways_through_coturn",
        ["turnserver"],
    ) else {
        return;
    };
    let coturn = Coturn::start(&turnserver);
    let (username, password) = credentials("alice");
    let exchange = exercise_relay(coturn.addr, &coturn.child.stderr, &username, &password);
    eprintln!("through coturn: {exchange:?}");
    let (low, high) = coturn.ports;
    assert!(
        (low..=high).contains(&exchange.relayed.port()),
        "coturn relayed from {} outside its --min-port/--max-port",
        exchange.relayed
    );

    // A wrong password gets nowhere: coturn takes only what the secret makes.
    let mut stranger = TurnClient::new(coturn.addr, &username, "not-the-password");
    stranger.command(|c, now| c.allocate(now)).unwrap();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !stranger.events.iter().any(|e| matches!(e, Event::Error(_))) {
        assert!(Instant::now() < deadline, "no error for a bad password");
        let events = &mut stranger.events;
        stranger
            .driver
            .turn(Some(Duration::from_millis(10)), |_, e| events.push(e))
            .unwrap();
    }
    assert!(
        !stranger
            .events
            .iter()
            .any(|e| matches!(e, Event::Allocated { .. })),
        "{:?}",
        stranger.events
    );
    drop(coturn.child);
}

/// The next [`relay_ports`] slot for [`TurnFogd::start`]; other tests use slots below 100.
static NEXT_SLOT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);

/// fogd serving TURN (and `extra`) on a free port with relay ports from `relay_ports(slot)`,
/// once it logs `TURN listening`.
struct TurnFogd {
    child: ChildGuard,
    addr: SocketAddr,
}

impl TurnFogd {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_ports(None, extra)
    }

    /// With `--turn-ports` from `ports`, or from [`relay_ports`] when `None`.
    fn start_with_ports(ports: Option<(u16, u16)>, extra: &[&str]) -> Self {
        let mut last = String::new();
        for attempt in 0..5 {
            let (port, _) = free_port_pair();
            let addr = SocketAddr::new(A1, port);
            // A slot of its own for each start, so that tests running at once do not draw
            // relay ports from the same range (a collision is handled, but counted).
            let slot = NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (low, high) = ports.unwrap_or_else(|| relay_ports(slot + attempt));
            let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
            command.arg("--turn").arg(addr.to_string());
            command.args(["--turn-secret", SECRET]);
            command.arg("--turn-ports").arg(format!("{low}-{high}"));
            command.args(extra);
            let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
            if wait_for_log(&mut child, "TURN listening") {
                return Self { child, addr };
            }
            last = child.output_text();
            if !last.contains("already uses that port") {
                break;
            }
        }
        panic!("fogd did not start TURN\n{last}");
    }

    /// SIGTERM, exit 0, and the `TURN stopped` counters.
    fn stop(mut self) -> FinalStats {
        stop_for(&mut self.child, "TURN stopped")
    }
}

/// Whether `child` logs `marker` on stderr before it exits or 10 s pass.
fn wait_for_log(child: &mut ChildGuard, marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.stderr_text().contains(marker) {
            return true;
        }
        if child.try_wait().is_some() {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

fn stop_for(child: &mut ChildGuard, marker: &str) -> FinalStats {
    let status = child.terminate(Duration::from_secs(10));
    let text = child.output_text();
    let status = status.unwrap_or_else(|| panic!("fogd did not exit on SIGTERM\n{text}"));
    assert!(status.success(), "fogd exited with {status}\n{text}");
    FinalStats::parse_line(&child.stderr_text(), marker)
        .unwrap_or_else(|| panic!("no `{marker}` line\n{text}"))
}

/// The figures of uclient's final lines.
#[derive(Debug, PartialEq, Eq)]
struct UclientTotals {
    sent: u64,
    received: u64,
    lost: u64,
}

impl UclientTotals {
    fn parse(out: &str) -> Option<Self> {
        let number_after = |line: &str, key: &str| -> Option<u64> {
            let rest = &line[line.find(key)? + key.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let msgs = out
            .lines()
            .rev()
            .find(|l| l.contains("start_mclient: tot_send_msgs="))?;
        let lost = out
            .lines()
            .rev()
            .find(|l| l.contains("Total lost packets"))?;
        Some(Self {
            sent: number_after(msgs, "tot_send_msgs=")?,
            received: number_after(msgs, "tot_recv_msgs=")?,
            lost: number_after(lost, "Total lost packets ")?,
        })
    }
}

/// Peers on loopback are refused unless allowed; these tests' peers all are.
const ALLOW_LOOPBACK: [&str; 2] = ["--turn-allow-peer", "127.0.0.0/8"];

/// Runs uclient against a fogd started with `fogd_args`: `clients` clients (`-m`) sending
/// `messages` messages (`-n`) of `length` bytes (`-l`) each to each other's relayed address
/// (`-y`), with `mode` flags; returns its totals and fogd's final counters.
fn uclient_through_fogd(
    uclient: &Path,
    fogd_args: &[&str],
    mode: &[&str],
    (clients, messages, length): (u64, u64, u64),
) -> (UclientTotals, FinalStats, String) {
    let fogd = TurnFogd::start(fogd_args);
    let mut args: Vec<String> = ["-y", "-c", "-W", SECRET, "-u", "alice"]
        .iter()
        .chain(mode)
        .map(|s| (*s).to_owned())
        .collect();
    args.extend([
        "-m".to_owned(),
        clients.to_string(),
        "-n".to_owned(),
        messages.to_string(),
        "-l".to_owned(),
        length.to_string(),
        "-p".to_owned(),
        fogd.addr.port().to_string(),
        "127.0.0.1".to_owned(),
    ]);
    let output = support::run_tool(uclient, &args, Duration::from_secs(60));
    let text = output.text();
    let mut child = fogd.child;
    let stats = stop_for(&mut child, "TURN stopped");
    let context = format!(
        "uclient {args:?}
{text}
fogd: {stats:?}
{}",
        child.stderr_text()
    );
    assert!(
        output.status.is_some_and(|s| s.success()),
        "uclient failed: {context}"
    );
    let totals = UclientTotals::parse(&output.stdout)
        .unwrap_or_else(|| panic!("no totals in uclient's output: {context}"));
    (totals, stats, context)
}

/// uclient's run lost nothing and every message went client → relay → the other client's
/// relayed address → that client.
fn assert_lossless(totals: &UclientTotals, stats: &FinalStats, want: u64, context: &str) {
    assert_eq!(
        *totals,
        UclientTotals {
            sent: want,
            received: want,
            lost: 0
        },
        "{context}"
    );
    assert_eq!(stats.get("relayed_to_peer"), want, "{context}");
    assert_eq!(stats.get("relayed_to_client"), want, "{context}");
    assert_eq!(stats.get("bound"), stats.get("allocated"), "{context}");
    assert_eq!(stats.get("unbound"), stats.get("released"), "{context}");
    for zero in [
        "bind_errors",
        "dropped_no_permission",
        "dropped_no_allocation",
        "dropped_bandwidth",
        "refused_peer",
        "dropped_forbidden_peer",
        "malformed",
        "send_errors",
    ] {
        assert_eq!(stats.get(zero), 0, "{zero}: {context}");
    }
}

#[test]
fn coturn_uclient_relays_through_fogd_without_loss() {
    let Some([uclient]) = interop_tools(
        "coturn_uclient_relays_through_fogd_without_loss",
        ["turnutils_uclient"],
    ) else {
        return;
    };
    // Two clients (-m 2) sending to each other's relayed address (-y), 50 messages each, by Send
    // indication (-s).
    let (clients, messages) = (2u64, 50u64);
    let (totals, stats, context) =
        uclient_through_fogd(&uclient, &ALLOW_LOOPBACK, &["-s"], (clients, messages, 100));
    assert!(stats.get("allocated") >= clients, "{context}");
    assert_lossless(&totals, &stats, clients * messages, &context);
}

/// uclient's default mode: ChannelBind with numbers from RFC 5766's 0x4000–0x7FFF, then
/// ChannelData both ways. Four clients bind enough channels that some land above 0x4FFF.
#[test]
fn coturn_uclient_relays_through_fogd_in_its_default_channel_mode() {
    let Some([uclient]) = interop_tools(
        "coturn_uclient_relays_through_fogd_in_its_default_channel_mode",
        ["turnutils_uclient"],
    ) else {
        return;
    };
    let (clients, messages) = (4u64, 50u64);
    let (totals, stats, context) =
        uclient_through_fogd(&uclient, &ALLOW_LOOPBACK, &[], (clients, messages, 100));
    assert!(stats.get("allocated") >= clients, "{context}");
    assert_lossless(&totals, &stats, clients * messages, &context);
}

/// `--turn-bandwidth 0` is no limit: 10 clients × 500 messages × 1,000 bytes, 1 MB through each
/// allocation, which the old reading (a 64 KiB bucket never refilled) dropped 93 % of.
#[test]
fn turn_bandwidth_zero_is_unlimited() {
    let Some([uclient]) = interop_tools("turn_bandwidth_zero_is_unlimited", ["turnutils_uclient"])
    else {
        return;
    };
    let mut fogd_args = ALLOW_LOOPBACK.to_vec();
    // uclient makes more allocations than -m says; the per-user quota is not under test.
    fogd_args.extend([
        "--turn-bandwidth",
        "0",
        "--turn-max-allocations-per-user",
        "100",
    ]);
    let (clients, messages) = (10u64, 500u64);
    let (totals, stats, context) =
        uclient_through_fogd(&uclient, &fogd_args, &["-s"], (clients, messages, 1000));
    assert_eq!(stats.get("dropped_bandwidth"), 0, "{context}");
    // uclient's own loss on a shared 2-core machine is not fogd's: count what fogd saw.
    assert_eq!(stats.get("relayed_to_peer"), totals.sent, "{context}");
    assert_eq!(totals.sent, clients * messages, "{context}");
}

/// Without `--turn-allow-peer`, a loopback peer is refused (403 for the permission and the
/// channel, counted); with it, fogd's own STUN and TURN ports stay refused for channels and
/// sends, while its relayed addresses are peers like any other.
#[test]
fn fogd_refuses_loopback_peers_and_its_own_ports() {
    let peer = UdpSocket::bind((A1, 0)).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let (username, password) = credentials("erin");

    let fogd = TurnFogd::start(&[]);
    let mut client = TurnClient::new(fogd.addr, &username, &password).logging(&fogd.child.stderr);
    client.command(|c, now| c.allocate(now)).expect("allocate");
    client.wait("Allocated", |e| {
        matches!(e, Event::Allocated { .. }).then_some(())
    });
    client
        .command(|c, now| c.create_permission(now, peer_addr.ip()))
        .unwrap();
    let code = client.wait("the permission's refusal", |e| match e {
        Event::Error(Error::Rejected {
            request: Request::CreatePermission(_),
            code,
            ..
        }) => Some(*code),
        _ => None,
    });
    assert_eq!(code, 403);
    let stats = fogd.stop();
    assert_eq!(stats.get("refused_peer"), 1, "{stats:?}");

    let stun_port = free_port_pair().0;
    let stun = SocketAddr::new(A1, stun_port);
    let mut args = ALLOW_LOOPBACK.to_vec();
    let stun_arg = stun.to_string();
    args.extend(["--stun", &stun_arg]);
    let fogd = TurnFogd::start(&args);
    let mut client = TurnClient::new(fogd.addr, &username, &password).logging(&fogd.child.stderr);
    client.command(|c, now| c.allocate(now)).expect("allocate");
    client.wait("Allocated", |e| {
        matches!(e, Event::Allocated { .. }).then_some(())
    });
    for own in [stun, fogd.addr] {
        client.command(|c, now| c.bind_channel(now, own)).unwrap();
        let code = client.wait("the channel's refusal", |e| match e {
            Event::Error(Error::Rejected {
                request: Request::ChannelBind(p),
                code,
                ..
            }) if *p == own => Some(*code),
            _ => None,
        });
        assert_eq!(code, 403, "{own}");
        // A Send indication to it is dropped: a Binding request relayed to fogd's STUN port
        // would come back as a Data indication.
        client.events.clear();
        client
            .command(|c, now| c.send_to(now, own, b"\x00\x01\x00\x00"))
            .unwrap();
    }
    // The loopback peer is allowed now.
    client
        .command(|c, now| c.create_permission(now, peer_addr.ip()))
        .unwrap();
    client.wait("PermissionCreated", |e| match e {
        Event::PermissionCreated { .. } => Some(()),
        _ => None,
    });
    client
        .command(|c, now| c.send_to(now, peer_addr, b"hello"))
        .unwrap();
    let relayed = client.driver.machine().relayed_address().unwrap();
    assert_eq!(peer_receives(&peer, relayed, 1), [b"hello".to_vec()]);
    let stats = fogd.stop();
    assert_eq!(stats.get("refused_peer"), 2, "{stats:?}");
    assert_eq!(stats.get("dropped_forbidden_peer"), 2, "{stats:?}");
    assert_eq!(stats.get("relayed_to_peer"), 1, "{stats:?}");
}

#[test]
fn fog_turn_client_relays_through_fogd_with_signalings_credentials() {
    // Not an interop test: fogd and fog-turn only, so it runs everywhere.
    let turn_addr = SocketAddr::new(A1, free_port_pair().0);
    let (low, high) = relay_ports(20);
    let signal = SignalFogd::start(&[
        "--turn",
        &turn_addr.to_string(),
        "--turn-secret",
        SECRET,
        "--turn-ports",
        &format!("{low}-{high}"),
        ALLOW_LOOPBACK[0],
        ALLOW_LOOPBACK[1],
    ]);
    let mut child = signal.child;
    assert!(
        wait_for_log(&mut child, "TURN listening"),
        "{}",
        child.output_text()
    );
    let mut peer = support::signal::SignalPeer::join(signal.addr, None, "127.0.0.1", 3, None);
    peer.client.request_relay().expect("relay request");
    let credentials = peer.wait_for(STEP_TIMEOUT, |e| {
        matches!(e, fog_signal::client::Event::RelayCredentials { .. })
    });
    let fog_signal::client::Event::RelayCredentials {
        username,
        password,
        urls,
        ttl,
        ..
    } = credentials
    else {
        unreachable!("matched above");
    };
    // TURN over TCP listens on the same address by default, and signaling names it too.
    assert_eq!(
        urls,
        [
            format!("turn:{turn_addr}?transport=udp"),
            format!("turn:{turn_addr}?transport=tcp")
        ]
    );
    assert_eq!(ttl, Duration::from_secs(86_400));
    assert!(
        username.ends_with(&format!(":{}", peer.client.peer_id())),
        "{username}"
    );

    let exchange = exercise_relay(turn_addr, &child.stderr, &username, &password);
    assert!(
        (low..=high).contains(&exchange.relayed.port()),
        "{exchange:?}"
    );

    let stats = stop_for(&mut child, "TURN stopped");
    let context = format!("{stats:?}\n{}", child.output_text());
    assert_eq!(stats.get("allocated"), 1, "{context}");
    assert_eq!(stats.get("released"), 1, "{context}");
    assert_eq!(stats.get("live"), 0, "{context}");
    assert_eq!(
        (stats.get("bound"), stats.get("unbound")),
        (1, 1),
        "{context}"
    );
    let relayed = 2 * ROUNDS as u64;
    assert_eq!(stats.get("relayed_to_peer"), relayed, "{context}");
    assert_eq!(stats.get("relayed_to_client"), relayed, "{context}");
    assert_eq!(stats.get("bind_errors"), 0, "{context}");
}

#[test]
fn fogd_refuses_an_open_relay_and_a_port_shared_with_stun() {
    let fogd = env!("CARGO_BIN_EXE_fogd");
    let run = |args: &[&str]| {
        let output = Command::new(fogd)
            .args(args)
            .output()
            .expect("running fogd");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--turn", "127.0.0.1:3"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("never runs an open relay"), "{stderr}");
    let (code, stderr) = run(&[
        "--stun",
        "127.0.0.1:3",
        "--turn",
        "127.0.0.1:3",
        "--turn-secret",
        SECRET,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("give TURN another port, e.g. 127.0.0.1:3480"),
        "{stderr}"
    );
}

#[test]
fn fogd_moves_an_allocation_off_relay_ports_another_process_holds() {
    // Four consecutive free ports, three of which the test then holds: fogd must find the
    // fourth, whichever order it tries them in.
    let (base, held) = (0..40u32)
        .find_map(|slot| {
            let (low, _) = relay_ports(30 + slot);
            let sockets: Vec<UdpSocket> = (low..low + 4)
                .map_while(|p| UdpSocket::bind((A1, p)).ok())
                .collect();
            (sockets.len() == 4).then_some((low, sockets))
        })
        .expect("four consecutive free ports");
    let free = base + 2;
    let held: Vec<UdpSocket> = held
        .into_iter()
        .filter(|s| s.local_addr().unwrap().port() != free)
        .collect();
    assert_eq!(held.len(), 3);

    let fogd = TurnFogd::start_with_ports(Some((base, base + 3)), &ALLOW_LOOPBACK);
    let (username, password) = credentials("carol");
    let exchange = exercise_relay(fogd.addr, &fogd.child.stderr, &username, &password);
    assert_eq!(exchange.relayed, SocketAddr::new(A1, free), "{exchange:?}");
    let stats = fogd.stop();
    assert_eq!(stats.get("allocated"), 1, "{stats:?}");
    assert!(stats.get("bind_errors") <= 3, "{stats:?}");
    assert_eq!(stats.get("bound"), 1, "{stats:?}");
    assert_eq!(stats.get("relayed_to_peer"), 2 * ROUNDS as u64, "{stats:?}");
    drop(held);
}

#[test]
fn the_turn_table_of_a_config_file_sets_the_secret_file_and_the_quotas() {
    let secret_file = support::scratch_file("turn.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let (low, high) = relay_ports(25);
    let mut last = String::new();
    for _ in 0..5 {
        let addr = SocketAddr::new(A1, free_port_pair().0);
        let config = support::scratch_file("fogd.toml");
        let toml = format!(
            "[turn]\nturn = \"{addr}\"\nturn-secret-file = \"{}\"\nturn-ports = \"{low}-{high}\"\n\
             turn-max-allocations = 1\nturn-allow-peer = [\"10.1.0.0/16\", \"127.0.0.0/8\"]\n",
            secret_file.display()
        );
        std::fs::write(&config, toml).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
        command.arg("--config").arg(&config);
        let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
        if !wait_for_log(&mut child, "TURN listening") {
            last = child.output_text();
            continue;
        }
        let log = child.stderr_text();
        assert!(log.contains(&format!("relay_ports={low}-{high}")), "{log}");
        assert!(log.contains("max_allocations=1 "), "{log}");
        assert!(
            log.contains(r#"allow_peer=["10.1.0.0/16", "127.0.0.0/8"]"#),
            "{log}"
        );

        // The secret read from the file works; the quota of one allocation holds.
        let (username, password) = credentials("dave");
        let mut first = TurnClient::new(addr, &username, &password).logging(&child.stderr);
        first.command(|c, now| c.allocate(now)).unwrap();
        first.wait("Allocated", |e| {
            matches!(e, Event::Allocated { .. }).then_some(())
        });
        let mut second = TurnClient::new(addr, &username, &password).logging(&child.stderr);
        second.command(|c, now| c.allocate(now)).unwrap();
        let code = second.wait_error("the second allocation's error");
        assert_eq!(
            code, 508,
            "allocations over the server's quota: 508 Insufficient Capacity"
        );

        let stats = stop_for(&mut child, "TURN stopped");
        assert_eq!(stats.get("allocated"), 1, "{stats:?}");
        assert_eq!(stats.get("live"), 1, "{stats:?}");
        return;
    }
    panic!("fogd did not start TURN from the config file\n{last}");
}

/// uclient over TCP (`-t`) against fogd's TURN over TCP, on the same port as UDP: client →
/// fogd over TCP → relayed UDP address → the other client's relayed address → fogd → the other
/// client's TCP connection. 101-byte messages, so every ChannelData is padded by 3 (RFC 8656
/// §12.5) each way; then the same with Send and Data indications (`-s`).
#[test]
fn coturn_uclient_relays_through_fogd_over_tcp() {
    let Some([uclient]) = interop_tools(
        "coturn_uclient_relays_through_fogd_over_tcp",
        ["turnutils_uclient"],
    ) else {
        return;
    };
    let (clients, messages) = (2u64, 40u64);
    for mode in [&["-t"][..], &["-t", "-s"][..]] {
        let (totals, stats, context) =
            uclient_through_fogd(&uclient, &ALLOW_LOOPBACK, mode, (clients, messages, 101));
        assert!(stats.get("allocated") >= clients, "{context}");
        assert_lossless(&totals, &stats, clients * messages, &context);
        let tcp = FinalStats::parse_line(&context, "TURN/TCP stopped")
            .unwrap_or_else(|| panic!("no TURN/TCP line: {context}"));
        assert!(tcp.get("accepted") >= clients, "{context}");
        for zero in [
            "closed_malformed",
            "closed_error",
            "refused_quota",
            "dropped_unsent",
            "dropped_inbox",
        ] {
            assert_eq!(tcp.get(zero), 0, "{zero}: {context}");
        }
    }
}

/// uclient over TLS (`-t -S`) against fogd's `--turn-tls`, with the certificate signaling's
/// `wss` would use: the same relaying, inside rustls. (uclient first tries a TLS version
/// rustls does not speak and retries; that refused handshake is counted in `closed_tls`.)
#[test]
fn coturn_uclient_relays_through_fogd_over_tls() {
    let Some([uclient]) = interop_tools(
        "coturn_uclient_relays_through_fogd_over_tls",
        ["turnutils_uclient"],
    ) else {
        return;
    };
    let (cert, key, _) = fog_test_support::self_signed_cert();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (clients, messages) = (2u64, 40u64);
    let mut last = String::new();
    for _ in 0..3 {
        let tls = SocketAddr::new(A1, free_port_pair().1);
        let tls_text = tls.to_string();
        let mut fogd_args = vec![
            "--turn-tls",
            &tls_text,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ];
        fogd_args.extend(ALLOW_LOOPBACK);
        let fogd = TurnFogd::start(&fogd_args);
        if !fogd.child.stderr_text().contains("TURN/TCP listening") {
            last = fogd.child.output_text();
            continue;
        }
        let mut args: Vec<String> = ["-t", "-S", "-y", "-c", "-W", SECRET, "-u", "alice"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend([
            "-m".to_owned(),
            clients.to_string(),
            "-n".to_owned(),
            messages.to_string(),
            "-l".to_owned(),
            "101".to_owned(),
            "-p".to_owned(),
            tls.port().to_string(),
            "127.0.0.1".to_owned(),
        ]);
        let output = support::run_tool(&uclient, &args, Duration::from_secs(60));
        let mut child = fogd.child;
        let stats = stop_for(&mut child, "TURN stopped");
        let context = format!(
            "uclient {args:?}\n{}\nfogd: {stats:?}\n{}",
            output.text(),
            child.stderr_text()
        );
        assert!(
            output.status.is_some_and(|s| s.success()),
            "uclient failed: {context}"
        );
        let totals = UclientTotals::parse(&output.stdout)
            .unwrap_or_else(|| panic!("no totals in uclient's output: {context}"));
        assert_lossless(&totals, &stats, clients * messages, &context);
        let tcp = FinalStats::parse_line(&context, "TURN/TCP stopped")
            .unwrap_or_else(|| panic!("no TURN/TCP line: {context}"));
        assert!(tcp.get("accepted") >= clients, "{context}");
        assert_eq!(tcp.get("closed_malformed"), 0, "{context}");
        return;
    }
    panic!("fogd did not start TURN over TLS\n{last}");
}

/// A TURN client of the test's own over one TCP connection: whole STUN messages written, and
/// read back by the length in their header.
struct TcpTurn {
    stream: std::net::TcpStream,
    next_tid: u8,
}

impl TcpTurn {
    fn connect(server: SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(server).expect("connecting over TCP");
        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        Self {
            stream,
            next_tid: 0,
        }
    }

    fn ask(
        &mut self,
        mut msg: fog_turn::wire::TurnMessage,
        key: Option<&fog_turn::wire::IntegrityKey>,
    ) -> fog_turn::wire::TurnMessage {
        use std::io::{Read, Write};
        self.next_tid += 1;
        msg.transaction_id = fog_turn::wire::TransactionId::new([self.next_tid; 12]);
        self.stream.write_all(&msg.to_bytes(key).unwrap()).unwrap();
        let mut header = [0u8; 20];
        self.stream.read_exact(&mut header).expect("an answer");
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let mut bytes = header.to_vec();
        bytes.resize(20 + len, 0);
        self.stream.read_exact(&mut bytes[20..]).unwrap();
        let answer = fog_turn::wire::TurnMessage::decode(&bytes).unwrap();
        assert_eq!(answer.transaction_id, msg.transaction_id);
        answer
    }

    /// Allocates with `use-auth-secret` credentials for `user`; the relayed address.
    fn allocate(&mut self, user: &str) -> SocketAddr {
        use fog_turn::wire::{Class, IntegrityKey, TRANSPORT_UDP, TurnMessage, method};
        let tid = fog_turn::wire::TransactionId::new([0; 12]);
        let mut msg = TurnMessage::new(Class::Request, method::ALLOCATE, tid);
        msg.requested_transport = Some(TRANSPORT_UDP);
        let challenge = self.ask(msg.clone(), None);
        assert_eq!(challenge.error_code(), Some(401), "{challenge:?}");
        let (username, password) = credentials(user);
        let realm = challenge.realm.clone().unwrap();
        let key = IntegrityKey::long_term(&username, &realm, &password);
        msg.username = Some(username);
        msg.realm = Some(realm);
        msg.nonce = challenge.nonce;
        let answer = self.ask(msg, Some(&key));
        assert_eq!(answer.class, Class::SuccessResponse, "{answer:?}");
        answer.xor_relayed_address.unwrap()
    }

    /// Whether the server closes the connection within `within` (EOF or reset).
    fn closed_within(&mut self, within: Duration) -> bool {
        use std::io::Read;
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Not an interop test: fogd's TCP side against a client of the test's own. Garbage closes the
/// connection (counted); the per-IP quota refuses a third connection; a silent connection
/// without an allocation is closed after the idle timeout while one with an allocation stays;
/// closing that one ends its allocation.
#[test]
fn fogd_turn_over_tcp_closes_garbage_keeps_quotas_and_frees_allocations_on_close() {
    use std::io::Write;
    let fogd = TurnFogd::start(&["--turn-tcp-max-per-ip", "2", "--turn-tcp-idle", "1"]);
    let mut child = fogd.child;
    // The TCP listener is bound after the `TURN listening` line (a connect in between was
    // refused once in CI).
    assert!(
        wait_for_log(&mut child, "TURN/TCP listening"),
        "{}",
        child.output_text()
    );
    // A TLS ClientHello's first bytes are neither STUN nor ChannelData.
    let mut garbage = TcpTurn::connect(fogd.addr);
    garbage.stream.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap();
    assert!(
        garbage.closed_within(Duration::from_secs(5)),
        "garbage kept"
    );
    drop(garbage);

    let mut allocated = TcpTurn::connect(fogd.addr);
    let relayed = allocated.allocate("tcp-user");
    let mut silent = TcpTurn::connect(fogd.addr);
    // The third from 127.0.0.1 is over the quota of 2. (The kernel completes the handshake
    // before fogd accepts, so the refusal is a close.)
    let mut third = TcpTurn::connect(fogd.addr);
    assert!(
        third.closed_within(Duration::from_secs(5)),
        "quota not kept"
    );
    // The silent one goes after about a second; the allocated one outlives it.
    assert!(silent.closed_within(Duration::from_secs(5)), "idle kept");
    thread::sleep(Duration::from_millis(1500));
    let answer = {
        use fog_turn::wire::{Class, TurnMessage, method};
        let tid = fog_turn::wire::TransactionId::new([0; 12]);
        allocated.ask(TurnMessage::new(Class::Request, method::BINDING, tid), None)
    };
    assert_eq!(
        answer.xor_mapped_address,
        Some(allocated.stream.local_addr().unwrap()),
        "the allocated connection stays open"
    );
    drop(allocated);
    let ended = Instant::now() + STEP_TIMEOUT;
    while !child.stderr_text().contains("reason=ConnectionClosed") && Instant::now() < ended {
        thread::sleep(Duration::from_millis(10));
    }

    let stats = stop_for(&mut child, "TURN stopped");
    let text = child.output_text();
    let tcp = FinalStats::parse_line(&child.stderr_text(), "TURN/TCP stopped")
        .unwrap_or_else(|| panic!("no TURN/TCP line\n{text}"));
    let context = format!("{stats:?} {tcp:?} relayed {relayed}\n{text}");
    assert!(text.contains("reason=ConnectionClosed"), "{context}");
    assert_eq!(
        (
            stats.get("allocated"),
            stats.get("released"),
            stats.get("live")
        ),
        (1, 1, 0),
        "{context}"
    );
    assert_eq!(
        (stats.get("bound"), stats.get("unbound")),
        (1, 1),
        "{context}"
    );
    assert_eq!(tcp.get("closed_malformed"), 1, "{context}");
    assert_eq!(tcp.get("refused_quota"), 1, "{context}");
    assert_eq!(tcp.get("closed_idle"), 1, "{context}");
    assert_eq!(tcp.get("accepted"), 3, "{context}");
}

/// `--turn-tcp off`: no TCP listener, and signaling's URLs name UDP alone.
#[test]
fn turn_tcp_off_listens_on_udp_alone() {
    let fogd = TurnFogd::start(&["--turn-tcp", "off"]);
    let refused = std::net::TcpStream::connect_timeout(&fogd.addr, Duration::from_secs(2));
    assert!(refused.is_err(), "a TCP listener without being asked");
    let text = fogd.child.stderr_text();
    assert!(!text.contains("TURN/TCP listening"), "{text}");
}
