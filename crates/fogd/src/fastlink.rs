//! The cluster's fast path: two Redis connections that the signaling loop drives itself, on
//! its own `mio::Poll`, so that a frame crossing instances passes no thread but the two loops
//! and Redis.
//!
//! The cluster bench's hop trace showed where the time of a cross-instance offer went before:
//! each way, the offer or answer was handed from the loop to the command thread (a channel and
//! a wake-up), from Redis to the other instance's subscriber thread, and from there to its loop
//! (a queue and the loop's waker): four thread wake-ups per offer beyond Redis itself, each
//! 10–27 µs at the median and up to 66 µs at the 99th percentile on the busy 2-core test
//! machine (benches/RESULTS.md, "Signaling in a cluster"), and each a place to wait behind
//! other work (the lease, registrations).
//!
//! - The **command link** carries `EVALSHA forward` for [`ClusterOutput::Offer`] and
//!   [`ClusterOutput::Forward`]: the loop writes the command and reads the reply (Redis answers
//!   in order, so a queue of what is waiting says what each reply answers).
//! - The **subscription link** is subscribed to the instance's channel; the loop reads the
//!   published frames itself.
//!
//! The blocking parts stay on the cluster's threads: they connect, authenticate, select the
//! database, load the script or subscribe, then hand the socket over ([`Handoff`]). A link
//! that fails or stops answering for [`REPLY_TIMEOUT`] is dropped; what it had in flight is
//! answered "not delivered" (delivery is at most once), and the thread that made it makes a
//! new one. Everything else (presence, lookups, aliases) stays on the command thread, and a
//! frame takes the fast path only when that keeps the order the machine asked for (see
//! [`crate::cluster::Cluster::submit`]).
//!
//! [`ClusterOutput::Offer`]: fog_signal::server::ClusterOutput::Offer
//! [`ClusterOutput::Forward`]: fog_signal::server::ClusterOutput::Forward

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use fog_signal::PeerId;
use fog_signal::server::QueryId;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::resp::{self, Value};

/// The command link's token on the loop's `Poll`.
pub(crate) const COMMAND_TOKEN: Token = Token(usize::MAX - 2);
/// The subscription link's token.
pub(crate) const SUBSCRIPTION_TOKEN: Token = Token(usize::MAX - 3);
/// A reply later than this drops the link (the threads' connections use the same bound).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Commands in flight on the command link; past that, frames go through the command thread.
const MAX_IN_FLIGHT: usize = 4_096;
/// Unsent bytes kept for the command link before frames go through the command thread.
const MAX_OUT: usize = 4 << 20;

/// How to open a link: Redis's address and what to say first.
#[derive(Clone)]
pub(crate) struct Handshake {
    host: String,
    port: u16,
    /// `AUTH [user] password`, `SELECT db`, as the URL gives them.
    preamble: Vec<Vec<u8>>,
}

impl Handshake {
    /// From the cluster's Redis URL; `None` when it is not plain TCP (then the threads carry
    /// everything, as before the fast path).
    pub(crate) fn new(info: &redis::ConnectionInfo) -> Option<Handshake> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        let mut preamble = Vec::new();
        if let Some(password) = settings.password() {
            preamble.push(match settings.username() {
                Some(user) => resp::command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => resp::command(&[b"AUTH", password.as_bytes()]),
            });
        }
        if settings.db() != 0 {
            preamble.push(resp::command(&[
                b"SELECT",
                settings.db().to_string().as_bytes(),
            ]));
        }
        Some(Handshake {
            host: host.clone(),
            port: *port,
            preamble,
        })
    }

    /// Blocking, on a cluster thread: connects, says the preamble and then `then`, reads a
    /// reply to each (an error reply fails the link), and returns the socket, non-blocking,
    /// for the loop, with what was read past the last reply (a message published right after
    /// a subscription).
    pub(crate) fn open(
        &self,
        timeout: Duration,
        then: &[Vec<u8>],
    ) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // Small commands answered at once: no Nagle delay (RFC 896 against RFC 1122's
        // delayed ACK).
        stream.set_nodelay(true)?;
        let mut buf = Vec::new();
        for cmd in self.preamble.iter().chain(then) {
            stream.write_all(cmd)?;
            loop {
                match resp::parse(&buf).map_err(|e| io::Error::other(format!("{e:?}")))? {
                    Some((Value::Error(e), _)) => {
                        return Err(io::Error::other(String::from_utf8_lossy(&e).into_owned()));
                    }
                    Some((_, used)) => {
                        buf.drain(..used);
                        break;
                    }
                    None => {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk)?;
                        if n == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        stream.set_nonblocking(true)?;
        Ok((stream, buf))
    }
}

/// A socket a cluster thread hands to the loop.
pub(crate) enum Handoff {
    Command(std::net::TcpStream),
    /// The socket and what was read past the subscription's confirmation.
    Subscription(std::net::TcpStream, Vec<u8>),
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handoff::Command(_) => "Handoff::Command",
            Handoff::Subscription(..) => "Handoff::Subscription",
        })
    }
}

/// What a command in flight on the command link answers.
#[derive(Debug)]
pub(crate) enum InFlight {
    Offer { query: QueryId, peer: PeerId },
    Forward { peer: PeerId },
}

/// What the loop learns from its links.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A reply: the frame reached this many subscribers (0: not delivered).
    Replied(InFlight, i64),
    /// A command the link lost (failed or timed out): not delivered, as far as we know.
    Lost(InFlight),
    /// A message published on the instance's channel.
    Message(Vec<u8>),
}

/// One link's socket and buffers.
struct Socket {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Socket {
    fn adopt(
        stream: std::net::TcpStream,
        input: Vec<u8>,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Socket> {
        let mut stream = TcpStream::from_std(stream);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Socket {
            stream,
            input,
            output: Vec::new(),
        })
    }

    /// Writes what it can; false when the connection failed.
    fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads what is there; false when the connection ended or failed.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// The next whole reply in the input; `Err` when the stream is not RESP we accept.
    fn next(&mut self) -> Result<Option<Value>, resp::Error> {
        match resp::parse(&self.input)? {
            Some((value, used)) => {
                self.input.drain(..used);
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

/// The loop's two links, either of which may be down.
#[derive(Default)]
pub(crate) struct Links {
    command: Option<Socket>,
    in_flight: VecDeque<(Instant, InFlight)>,
    subscription: Option<Socket>,
}

impl Links {
    /// Takes a socket a thread handed over (read at once: data may be waiting already);
    /// false when it could not be registered.
    pub(crate) fn adopt(
        &mut self,
        registry: &Registry,
        handoff: Handoff,
        out: &mut Vec<Outcome>,
    ) -> bool {
        let (adopted, token) = match handoff {
            Handoff::Command(s) => (
                Socket::adopt(s, Vec::new(), registry, COMMAND_TOKEN)
                    .map(|s| self.command = Some(s)),
                COMMAND_TOKEN,
            ),
            Handoff::Subscription(s, input) => (
                Socket::adopt(s, input, registry, SUBSCRIPTION_TOKEN)
                    .map(|s| self.subscription = Some(s)),
                SUBSCRIPTION_TOKEN,
            ),
        };
        if adopted.is_err() {
            return false;
        }
        self.ready(token, out, registry);
        true
    }

    pub(crate) fn has_command(&self) -> bool {
        self.command
            .as_ref()
            .is_some_and(|s| self.in_flight.len() < MAX_IN_FLIGHT && s.output.len() < MAX_OUT)
    }

    pub(crate) fn command_up(&self) -> bool {
        self.command.is_some()
    }

    pub(crate) fn subscription_up(&self) -> bool {
        self.subscription.is_some()
    }

    /// Sends a command (`EVALSHA` of the forward script) on the command link; its reply
    /// answers `what`. The caller checked [`has_command`](Self::has_command).
    pub(crate) fn send(
        &mut self,
        now: Instant,
        command: &[u8],
        what: InFlight,
        out: &mut Vec<Outcome>,
        registry: &Registry,
    ) {
        let Some(socket) = &mut self.command else {
            out.push(Outcome::Lost(what));
            return;
        };
        socket.output.extend_from_slice(command);
        self.in_flight.push_back((now, what));
        if !socket.flush() {
            self.drop_command(out, registry);
        }
    }

    /// Readiness on one of the links: reads replies and messages, writes what waits.
    pub(crate) fn ready(&mut self, token: Token, out: &mut Vec<Outcome>, registry: &Registry) {
        if token == COMMAND_TOKEN {
            let Some(socket) = &mut self.command else {
                return;
            };
            let mut ok = socket.flush() && socket.fill();
            // Read what arrived even when the link then turned out to be closed.
            loop {
                match socket.next() {
                    Ok(Some(value)) => {
                        let Some((_, what)) = self.in_flight.pop_front() else {
                            // A reply to nothing: the stream is not what we think it is.
                            ok = false;
                            break;
                        };
                        let receivers = match value {
                            Value::Int(n) => n,
                            // NOSCRIPT (a Redis restart under a live link) or another error:
                            // not delivered; the link is made again with the script loaded.
                            _ => {
                                ok = false;
                                0
                            }
                        };
                        out.push(Outcome::Replied(what, receivers));
                    }
                    Ok(None) => break,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                self.drop_command(out, registry);
            }
        } else if token == SUBSCRIPTION_TOKEN {
            let Some(socket) = &mut self.subscription else {
                return;
            };
            let mut ok = socket.fill();
            loop {
                match socket.next() {
                    Ok(Some(Value::Array(Some(items)))) => {
                        // `message`, the channel, the payload; anything else (a ping
                        // reply) carries nothing for us.
                        if let [Value::Bulk(Some(kind)), _, Value::Bulk(Some(payload))] =
                            items.as_slice()
                        {
                            if kind.as_slice() == b"message" {
                                out.push(Outcome::Message(payload.clone()));
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                if let Some(s) = self.subscription.take() {
                    tracing::warn!("cluster: the loop's subscription to Redis ended");
                    s.close(registry);
                }
            }
        }
    }

    /// The deadline of the oldest command in flight.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at + REPLY_TIMEOUT)
    }

    /// Drops the command link when its oldest command waited too long.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<Outcome>,
        registry: &Registry,
    ) {
        if self.poll_timeout().is_some_and(|at| at <= now) {
            tracing::warn!("cluster: Redis did not answer the loop's command link in time");
            self.drop_command(out, registry);
        }
    }

    fn drop_command(&mut self, out: &mut Vec<Outcome>, registry: &Registry) {
        if let Some(s) = self.command.take() {
            tracing::warn!("cluster: the loop's command link to Redis ended");
            s.close(registry);
        }
        out.extend(
            self.in_flight
                .drain(..)
                .map(|(_, what)| Outcome::Lost(what)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    /// A connected pair on loopback: ours (non-blocking, for the loop) and Redis's end.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (ours, theirs)
    }

    /// Polls and hands readiness to the links until `out` holds `n` outcomes.
    fn drive(poll: &mut Poll, links: &mut Links, out: &mut Vec<Outcome>, n: usize) {
        let mut events = Events::with_capacity(8);
        #[allow(clippy::disallowed_methods)] // a test of a driver reads the clock
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < n {
            #[allow(clippy::disallowed_methods)]
            let late = Instant::now() > deadline;
            assert!(!late, "only {out:?}");
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in &events {
                links.ready(e.token(), out, poll.registry());
            }
        }
    }

    #[test]
    fn replies_answer_commands_in_order_and_a_lost_link_loses_what_is_in_flight() {
        let mut poll = Poll::new().unwrap();
        let mut links = Links::default();
        let mut out = Vec::new();
        let (ours, mut redis) = pair();
        assert!(links.adopt(poll.registry(), Handoff::Command(ours), &mut out));
        assert!(links.command_up() && links.has_command());
        let a = fog_signal::KeyPair::from_seed(&[1; 32]).peer_id();
        let b = fog_signal::KeyPair::from_seed(&[2; 32]).peer_id();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let ping = resp::command(&[b"PING"]);
        let reg = poll.registry().try_clone().unwrap();
        links.send(now, &ping, InFlight::Forward { peer: a }, &mut out, &reg);
        links.send(now, &ping, InFlight::Forward { peer: b }, &mut out, &reg);
        let mut got = vec![0u8; 2 * ping.len()];
        redis.read_exact(&mut got).unwrap();
        assert_eq!(got, [ping.clone(), ping.clone()].concat());
        // The second reply arrives cut in two.
        redis.write_all(b":1\r\n:0").unwrap();
        drive(&mut poll, &mut links, &mut out, 1);
        assert!(matches!(out[0], Outcome::Replied(InFlight::Forward { peer }, 1) if peer == a));
        redis.write_all(b"\r\n").unwrap();
        drive(&mut poll, &mut links, &mut out, 2);
        assert!(matches!(out[1], Outcome::Replied(InFlight::Forward { peer }, 0) if peer == b));
        // Redis goes away with a command in flight: it is lost, and so is the link.
        links.send(now, &ping, InFlight::Forward { peer: a }, &mut out, &reg);
        drop(redis);
        drive(&mut poll, &mut links, &mut out, 3);
        assert!(matches!(out[2], Outcome::Lost(InFlight::Forward { peer }) if peer == a));
        assert!(!links.command_up());
    }

    #[test]
    fn a_silent_link_is_dropped_after_the_reply_timeout() {
        let poll = Poll::new().unwrap();
        let mut links = Links::default();
        let mut out = Vec::new();
        let (ours, _redis) = pair();
        assert!(links.adopt(poll.registry(), Handoff::Command(ours), &mut out));
        let a = fog_signal::KeyPair::from_seed(&[1; 32]).peer_id();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let ping = resp::command(&[b"PING"]);
        links.send(
            now,
            &ping,
            InFlight::Forward { peer: a },
            &mut out,
            poll.registry(),
        );
        assert_eq!(links.poll_timeout(), Some(now + REPLY_TIMEOUT));
        links.handle_timeout(now + REPLY_TIMEOUT / 2, &mut out, poll.registry());
        assert!(out.is_empty() && links.command_up());
        links.handle_timeout(now + REPLY_TIMEOUT, &mut out, poll.registry());
        assert!(matches!(out[..], [Outcome::Lost(InFlight::Forward { .. })]));
        assert!(!links.command_up() && links.poll_timeout().is_none());
    }

    #[test]
    fn published_frames_are_read_from_the_subscription_and_other_pushes_ignored() {
        let mut poll = Poll::new().unwrap();
        let mut links = Links::default();
        let mut out = Vec::new();
        let (ours, mut redis) = pair();
        // Bytes read past the confirmation during the handshake come first.
        let early = b"*3\r\n$7\r\nmessage\r\n$4\r\nfog:\r\n$1\r\nx\r\n".to_vec();
        assert!(links.adopt(
            poll.registry(),
            Handoff::Subscription(ours, early),
            &mut out
        ));
        assert!(matches!(&out[..], [Outcome::Message(m)] if m == b"x"));
        redis
            .write_all(
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$7\r\nmessage\r\n$4\r\nfog:\r\n$1\r\ny\r\n",
            )
            .unwrap();
        drive(&mut poll, &mut links, &mut out, 2);
        assert!(matches!(&out[1], Outcome::Message(m) if m == b"y"));
        // Garbage ends the subscription (the thread makes a new one).
        redis.write_all(b"?\r\n").unwrap();
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        while links.subscription_up() {
            #[allow(clippy::disallowed_methods)]
            let late = Instant::now() > deadline;
            assert!(!late);
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in &events {
                links.ready(e.token(), &mut out, poll.registry());
            }
        }
        assert_eq!(out.len(), 2);
    }
}
