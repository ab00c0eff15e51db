//! The WebRTC anchor of the transfer bench: two `str0m` `Rtc`s (the WebRTC stack under our
//! `Transport::Rtc`) on two UDP sockets on loopback, one thread each, driven as str0m's own
//! examples drive it (poll every output, sleep on the socket until the next timeout). One
//! ordered, reliable data channel negotiated in the SDP, the same bytes in the same messages,
//! hashed the same way; the same SCTP limits as our peers (1 MiB buffered, 256 KiB messages),
//! and a send that str0m refuses for want of room is tried again after the next input, as our
//! sender waits for `Writable`. No seal, no signaling, no path selection: what the WebRTC
//! stack alone costs here.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::{LIMIT, Options, Pattern, Run, cpu_seconds};

/// Bytes a channel may hold unacknowledged (fog-rtc's `Config::max_buffered`).
const MAX_BUFFERED: usize = 1 << 20;
/// The largest message (fog-rtc's `Config::max_message`).
const MAX_MESSAGE: u32 = 256 * 1024;

fn rtc(socket: &UdpSocket) -> Rtc {
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_sctp_max_buffered_amount(MAX_BUFFERED)
        .set_sctp_max_message_size(MAX_MESSAGE)
        .clear_codecs()
        .build(Instant::now());
    let local = socket.local_addr().expect("a bound socket");
    let candidate = Candidate::host(local, "udp").expect("a host candidate");
    rtc.add_local_candidate(candidate);
    rtc
}

/// What one side does with its channel between two turns of the loop.
trait Side {
    /// Each turn of the loop, before str0m's output is polled (the sender writes what now fits).
    fn turn(&mut self, _rtc: &mut Rtc) {}
    /// An event str0m reported.
    fn event(&mut self, rtc: &mut Rtc, event: Event);
    /// Whether the side is done.
    fn done(&self) -> bool;
}

/// Runs `rtc` on `socket` until `side` is done or [`LIMIT`] passed.
fn drive(mut rtc: Rtc, socket: &UdpSocket, side: &mut impl Side) {
    let deadline = Instant::now() + LIMIT;
    let mut datagram = vec![0u8; 2048];
    while !side.done() && Instant::now() < deadline {
        side.turn(&mut rtc);
        let timeout = loop {
            match rtc.poll_output().expect("str0m runs") {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => side.event(&mut rtc, e),
            }
        };
        let wait = timeout.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(wait.max(Duration::from_micros(50))))
            .expect("a read timeout");
        if let Ok((n, source)) = socket.recv_from(&mut datagram) {
            if let Ok(contents) = datagram[..n].try_into() {
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: socket.local_addr().expect("a bound socket"),
                        contents,
                    },
                );
                rtc.handle_input(input).expect("str0m takes the datagram");
            }
        }
        let now = Instant::now();
        if now >= timeout {
            rtc.handle_input(Input::Timeout(now))
                .expect("str0m takes the time");
        }
    }
}

/// The sender: fills the channel from the pattern once it is open.
struct Sender {
    channel: Option<ChannelId>,
    pattern: Pattern,
    hash: Sha256,
    message: Vec<u8>,
    /// Bytes of `message` still to be written (a refused write keeps them).
    pending: usize,
    left: u64,
    started: Option<(Instant, f64)>,
    receiver_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Sender {
    fn fill(&mut self, rtc: &mut Rtc) {
        let Some(id) = self.channel else { return };
        let Some(mut channel) = rtc.channel(id) else {
            return;
        };
        loop {
            if self.pending == 0 {
                if self.left == 0 {
                    return;
                }
                let n = (self.message.len() as u64).min(self.left) as usize;
                self.pattern.fill(&mut self.message[..n]);
                self.hash.update(&self.message[..n]);
                self.left -= n as u64;
                self.pending = n;
            }
            match channel.write(true, &self.message[..self.pending]) {
                Ok(true) => self.pending = 0,
                // No room: again after the next input.
                Ok(false) => return,
                Err(e) => panic!("the anchor's write: {e}"),
            }
        }
    }
}

impl Side for Sender {
    fn turn(&mut self, rtc: &mut Rtc) {
        self.fill(rtc);
    }

    fn event(&mut self, rtc: &mut Rtc, event: Event) {
        if let Event::ChannelOpen(id, _) = event {
            self.channel = Some(id);
            self.started = Some((Instant::now(), cpu_seconds()));
        }
        self.fill(rtc);
    }

    fn done(&self) -> bool {
        self.receiver_done
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The receiver: hashes every message.
struct Receiver {
    hash: Sha256,
    got: u64,
    size: u64,
}

impl Side for Receiver {
    fn event(&mut self, _rtc: &mut Rtc, event: Event) {
        if let Event::ChannelData(d) = event {
            self.got += d.data.len() as u64;
            self.hash.update(&d.data);
        }
    }

    fn done(&self) -> bool {
        self.got >= self.size
    }
}

pub(super) fn str0m_rtc(o: &Options) -> Run {
    let a = UdpSocket::bind((super::A1, 0)).expect("a socket");
    let b = UdpSocket::bind((super::A1, 0)).expect("a socket");
    let (mut ra, mut rb) = (rtc(&a), rtc(&b));
    // The offer carries the channel; B answers; both know each other's host candidate.
    let mut api = ra.sdp_api();
    let _ = api.add_channel("bench".into());
    let (offer, pending) = api.apply().expect("an offer");
    let answer = rb.sdp_api().accept_offer(offer).expect("an answer");
    ra.sdp_api()
        .accept_answer(pending, answer)
        .expect("the answer taken");
    let receiver_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = receiver_done.clone();
    let size = o.size;
    let receiver = std::thread::spawn(move || {
        let mut side = Receiver {
            hash: Sha256::new(),
            got: 0,
            size,
        };
        drive(rb, &b, &mut side);
        let end = Instant::now();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (end, side.got, side.hash.finalize())
    });
    let mut sender = Sender {
        channel: None,
        pattern: Pattern(7),
        hash: Sha256::new(),
        message: vec![0u8; o.message],
        pending: 0,
        left: o.size,
        started: None,
        receiver_done,
    };
    // The sender keeps its loop turning until the receiver has everything.
    drive(ra, &a, &mut sender);
    let (end, got, theirs) = receiver.join().expect("the receiver");
    let (start, cpu0) = sender.started.expect("the channel opened");
    Run {
        secs: end.duration_since(start).as_secs_f64(),
        cpu_s: cpu_seconds() - cpu0,
        hash_ok: got == o.size && theirs == sender.hash.finalize(),
    }
}
