//! Interop with an independent WebRTC stack, aiortc 1.16.0 (PyPI, in the venv `.ci/run` installs
//! at `$FOG_PEERS_DIR/venv`, default `~/.cache/fogconnect-peers/venv`), on a real UDP socket on
//! 127.0.0.1 (port 0), each test bounded in time, the child killed at the end.
//!
//! SDP goes through files and the child's stdout (script: `tests/interop/aiortc_peer.py`, which
//! echoes every message). Both directions: we offer and aiortc answers; aiortc offers and we
//! answer. Each moves messages of many sizes, binary and text, on a reliable ordered channel
//! (and, when we offer, an unordered partially reliable one too) and checks every echo; then
//! our graceful close reaches aiortc. A third test alters the fingerprint in aiortc's answer, as
//! a man in the middle of the signaling would, and checks that no channel opens.

// Tests read the wall clock: these run on real sockets.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo};
use fog_rtc::{ChannelId, ChannelOptions, Config, Event, Identity, Peer, Reliability};
use fog_test_support::{ChildGuard, peers_python, scratch_file, skip_or_fail};

const PEER: &str = include_str!("interop/aiortc_peer.py");
/// Each test's own bound.
const TEST_LIMIT: Duration = Duration::from_secs(25);

/// The venv's Python if it has aiortc 1.16.0, or `None` after saying why (skip or fail).
fn aiortc(test: &str) -> Option<PathBuf> {
    let python = peers_python();
    let ok = python.is_file()
        && Command::new(&python)
            .args([
                "-c",
                "import aiortc, sys; sys.exit(aiortc.__version__ != '1.16.0')",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "no aiortc 1.16.0 in {} (run `bash .ci/run apt`, which installs the Python peers)",
        python.display()
    );
    skip_or_fail(test, &why, "FOG_REQUIRE_INTEROP");
    None
}

/// Starts the script in `role`, reading the other side's SDP from `input`.
fn spawn(python: &Path, name: &str, role: &str, input: &Path) -> ChildGuard {
    let script = scratch_file(&format!("{name}.py"));
    std::fs::write(&script, PEER).unwrap();
    let _ = std::fs::remove_file(input);
    ChildGuard::spawn(
        name,
        Command::new(python)
            .arg(&script)
            .arg(role)
            .arg(input)
            .arg(TEST_LIMIT.as_secs().to_string()),
    )
    .expect("starting python")
}

/// Writes `sdp` to `path` whole (the script polls for the file).
fn hand_over(path: &Path, sdp: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, sdp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits for the child to print a whole line starting with `prefix`, returning the rest.
fn wait_line(child: &mut ChildGuard, prefix: &str) -> String {
    let started = Instant::now();
    loop {
        let text = child.stdout_text();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(rest) = complete
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        {
            return rest;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15) && child.try_wait().is_none(),
            "no {prefix:?} line from aiortc:\n{}",
            child.output_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn sdp_line(child: &mut ChildGuard, prefix: &str) -> String {
    serde_json::from_str(&wait_line(child, prefix)).expect("a JSON string")
}

/// Our peer on a real socket.
struct Driver {
    socket: UdpSocket,
    peer: Peer,
    events: Vec<Event>,
    out: Vec<u8>,
    inbound: Vec<u8>,
}

impl Driver {
    fn socket() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        socket
    }

    fn new(socket: UdpSocket, peer: Peer) -> Driver {
        Driver {
            socket,
            peer,
            events: Vec::new(),
            out: vec![0; 65_535],
            inbound: vec![0; 65_535],
        }
    }

    /// One round: transmits, events, at most one datagram in, timers.
    fn turn(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.peer.poll_transmit(now, &mut self.out) {
            // Loopback only: the peer's candidates are 127.0.0.1.
            assert!(t.destination.ip().is_loopback(), "{t:?}");
            let _ = self.socket.send_to(&self.out[..t.len], t.destination);
        }
        while let Some(e) = self.peer.poll_event() {
            self.events.push(e);
        }
        if let Ok((n, source)) = self.socket.recv_from(&mut self.inbound) {
            let local = self.socket.local_addr().unwrap();
            self.peer.handle_packet(
                Instant::now(),
                Receive {
                    source,
                    local,
                    payload: &self.inbound[..n],
                },
            );
        }
        let now = Instant::now();
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.peer.handle_timeout(now);
        }
    }

    /// Turns until `until` holds; panics with `what` and the child's output past the limit.
    fn until(
        &mut self,
        child: &ChildGuard,
        what: &str,
        started: Instant,
        mut until: impl FnMut(&mut Driver) -> bool,
    ) {
        while !until(self) {
            assert!(
                started.elapsed() < TEST_LIMIT,
                "{what}: timed out; our events {:?}\n{}",
                self.events,
                child.output_text()
            );
            self.turn();
        }
    }

    fn opened(&self) -> Vec<(ChannelId, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelOpen { channel, label } => Some((*channel, label.clone())),
                _ => None,
            })
            .collect()
    }

    fn echoes(&self, channel: ChannelId) -> Vec<(bool, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message {
                    channel: c,
                    binary,
                    data,
                } if *c == channel => Some((*binary, data.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Message `k`: binary of a pattern, 1 byte to ~48 KiB (several SCTP fragments), every fifth
/// one text.
fn message(k: u32) -> (bool, Vec<u8>) {
    let len = 1 + (k as usize * 7919) % 48_000;
    if k % 5 == 4 {
        return (
            false,
            format!("text message {k}: {}", "é".repeat(len % 200)).into_bytes(),
        );
    }
    (
        true,
        (0..len)
            .map(|i| (i as u32 ^ k.wrapping_mul(131)) as u8)
            .collect(),
    )
}

/// Sends `count` messages on `channel` as the queue allows and checks every echo, in order.
fn echo(d: &mut Driver, child: &ChildGuard, started: Instant, channel: ChannelId, count: u32) {
    let mut next = 0;
    d.until(child, "echoes", started, |d| {
        while next < count {
            let (binary, data) = message(next);
            match d.peer.send(Instant::now(), channel, &data, binary) {
                Ok(()) => next += 1,
                Err(fog_rtc::SendError::Blocked) => break,
                Err(e) => panic!("send {next}: {e:?}"),
            }
        }
        d.echoes(channel).len() >= count as usize
    });
    let got = d.echoes(channel);
    assert_eq!(got.len(), count as usize);
    for (k, echo) in got.iter().enumerate() {
        assert!(*echo == message(k as u32), "echo {k} differs");
    }
}

/// Our graceful close reaches aiortc, which says so and exits.
fn close(d: &mut Driver, child: &mut ChildGuard, started: Instant, channel: ChannelId) {
    d.peer.close_channel(Instant::now(), channel);
    d.until(child, "our close", started, |d| {
        d.events.contains(&Event::ChannelClosed { channel })
    });
    // Driven on until aiortc has seen it (its stream reset needs our answers).
    d.until(child, "aiortc seeing our close", started, |_| {
        child.stdout_text().contains("CLOSED ")
    });
    let limit = TEST_LIMIT.saturating_sub(started.elapsed());
    assert!(
        child.wait_timeout(limit).is_some(),
        "aiortc did not end:\n{}",
        child.output_text()
    );
}

#[test]
fn we_offer_aiortc_answers_and_echoes() {
    let Some(python) = aiortc("we_offer_aiortc_answers_and_echoes") else {
        return;
    };
    let started = Instant::now();
    let socket = Driver::socket();
    let local: SocketAddr = socket.local_addr().unwrap();
    let (peer, offer, channel) = Peer::offer(
        Instant::now(),
        &Identity::generate().unwrap(),
        Config::default(),
        &[local],
        ChannelOptions::reliable("fog"),
    )
    .unwrap();
    let input = scratch_file("rtc-we-offer.sdp");
    let mut child = spawn(&python, "aiortc_answerer", "answer", &input);
    hand_over(&input, &offer);
    let answer = sdp_line(&mut child, "ANSWER ");
    let mut d = Driver::new(socket, peer);
    d.peer.accept_answer(Instant::now(), &answer).unwrap();
    d.until(&child, "channel open", started, |d| {
        d.opened().iter().any(|(c, _)| *c == channel)
    });
    assert!(d.events.contains(&Event::Connected));
    echo(&mut d, &child, started, channel, 60);
    // A second channel, unordered and partially reliable, opened in band (DCEP) on the live
    // association: on loopback nothing is lost, so every echo comes back.
    let lossy = d
        .peer
        .open_channel(
            Instant::now(),
            &ChannelOptions {
                label: "lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits(2),
            },
        )
        .unwrap();
    d.until(&child, "second channel", started, |d| {
        d.opened().iter().any(|(c, _)| *c == lossy)
    });
    for k in 0..20u32 {
        d.peer
            .send(Instant::now(), lossy, &k.to_be_bytes(), true)
            .unwrap();
    }
    d.until(&child, "unordered echoes", started, |d| {
        d.echoes(lossy).len() == 20
    });
    let mut got: Vec<u32> = d
        .echoes(lossy)
        .iter()
        .map(|(_, m)| u32::from_be_bytes(m[..4].try_into().unwrap()))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    close(&mut d, &mut child, started, channel);
}

#[test]
fn aiortc_offers_we_answer_and_it_echoes() {
    let Some(python) = aiortc("aiortc_offers_we_answer_and_it_echoes") else {
        return;
    };
    let started = Instant::now();
    let input = scratch_file("rtc-they-offer.sdp");
    let mut child = spawn(&python, "aiortc_offerer", "offer", &input);
    let offer = sdp_line(&mut child, "OFFER ");
    let socket = Driver::socket();
    let local: SocketAddr = socket.local_addr().unwrap();
    let (peer, answer) = Peer::answer(
        Instant::now(),
        &Identity::generate().unwrap(),
        Config::default(),
        &[local],
        &offer,
    )
    .unwrap();
    hand_over(&input, &answer);
    let mut d = Driver::new(socket, peer);
    d.until(&child, "aiortc's channel", started, |d| {
        !d.opened().is_empty()
    });
    let (channel, label) = d.opened()[0].clone();
    assert_eq!(label, "aiortc");
    echo(&mut d, &child, started, channel, 40);
    close(&mut d, &mut child, started, channel);
}

/// A man in the middle of the signaling swaps the fingerprint in aiortc's answer for his own
/// certificate's: our DTLS handshake with aiortc (whose certificate does not match) fails, and
/// no channel opens.
#[test]
fn an_answer_with_another_fingerprint_opens_nothing() {
    let Some(python) = aiortc("an_answer_with_another_fingerprint_opens_nothing") else {
        return;
    };
    let started = Instant::now();
    let socket = Driver::socket();
    let local: SocketAddr = socket.local_addr().unwrap();
    let (peer, offer, _) = Peer::offer(
        Instant::now(),
        &Identity::generate().unwrap(),
        Config::default(),
        &[local],
        ChannelOptions::reliable("fog"),
    )
    .unwrap();
    let input = scratch_file("rtc-mitm.sdp");
    let mut child = spawn(&python, "aiortc_mitm", "answer", &input);
    hand_over(&input, &offer);
    let answer = sdp_line(&mut child, "ANSWER ");
    let mallory: String = Identity::generate()
        .unwrap()
        .fingerprint()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut swapped = 0;
    let answer: String = answer
        .lines()
        .map(|l| {
            if l.starts_with("a=fingerprint:sha-256 ") {
                swapped += 1;
                format!("a=fingerprint:sha-256 {mallory}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    assert!(swapped > 0, "aiortc's answer has a sha-256 fingerprint");
    let mut d = Driver::new(socket, peer);
    d.peer.accept_answer(Instant::now(), &answer).unwrap();
    d.until(&child, "the refusal", started, |d| d.peer.is_over());
    assert!(d.opened().is_empty(), "{:?}", d.events);
    assert!(!d.events.contains(&Event::Connected));
}
