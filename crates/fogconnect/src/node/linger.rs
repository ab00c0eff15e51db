//! A close outlives its connection (issue 16).
//!
//! A connection is released as soon as it ends, but its sealed close may be lost on the path,
//! and the copy over signaling is lost too when our signaling connection is down at that
//! moment. So the closer keeps a small record of the close (its keys, the path, the message)
//! and sends it again, [`CLOSE_RTO`] doubling, until the peer acknowledges it with a sealed
//! [`Kind::CloseAck`] or [`CLOSE_TRIES`] retransmissions went unanswered (a peer that is gone
//! answers nothing: the record goes then anyway, 7.75 s after the close). The side that heard
//! a close (on the path or over signaling) answers it, and keeps a record for
//! [`ACK_LINGER`] to answer the copies still coming, as TCP's TIME-WAIT does for its last
//! ACK (RFC 9293 §3.6.1). A close over signaling that could not leave (no authenticated
//! connection) goes with the next retransmission that finds one.
//!
//! Everything here is bounded: at most [`MAX_LINGERING`] records (the oldest goes first),
//! each for at most [`ACK_LINGER`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::SocketRequest;
use fog_signal::msg::SessionId;

use super::Node;
use super::seal::{Keys, Kind};

/// The first retransmission of a close goes this long after it; each next one twice as long
/// after the one before (RFC 6298 §5.5's back-off; a closed connection has no RTT estimate
/// left to start from, and 250 ms is a few round trips on most paths).
pub(super) const CLOSE_RTO: Duration = Duration::from_millis(250);
/// Retransmissions of a close after its first copies: the last leaves 250 ms + 0.5 + 1 + 2 +
/// 4 s = 7.75 s after the close, and the record goes one back-off later.
pub(super) const CLOSE_TRIES: u32 = 5;
/// How long a node that heard a close answers its copies: longer than a closer retransmits.
pub(super) const ACK_LINGER: Duration = Duration::from_secs(20);
/// The most closes remembered at once; over it the one due soonest goes.
pub(super) const MAX_LINGERING: usize = 1_024;

/// Which side of the close a record is on.
#[derive(Debug)]
pub(super) enum Role {
    /// We closed: the close goes again until the peer acknowledges it.
    Closer {
        /// The close's payload (code and reason).
        message: Vec<u8>,
        /// Retransmissions so far.
        tries: u32,
        /// The wait before the next one.
        rto: Duration,
        /// A close over signaling still to send (it found no authenticated connection).
        signal: Option<(SessionId, u32, String)>,
    },
    /// The peer closed: each copy that comes again is acknowledged.
    Acker,
}

/// What a released connection leaves of its close.
#[derive(Debug)]
pub(super) struct Linger {
    pub(super) keys: Keys,
    /// (our socket, the peer's address) of the connection's last path.
    pub(super) path: (SocketAddr, SocketAddr),
    pub(super) role: Role,
    /// The next retransmission, or the record's end.
    pub(super) next_at: Instant,
    /// A socket of a birthday round the path used, kept bound until the record goes.
    pub(super) socket: Option<SocketAddr>,
}

impl Node {
    /// Keeps `linger` (under the session tag the peer's datagrams carry to us).
    pub(super) fn linger(&mut self, tag: [u8; 8], linger: Linger) {
        if self.lingering.len() >= MAX_LINGERING {
            let soonest = self
                .lingering
                .iter()
                .min_by_key(|(_, l)| l.next_at)
                .map(|(t, _)| *t);
            if let Some(t) = soonest {
                self.unlinger(t);
            }
        }
        if let Some(old) = self.lingering.insert(tag, linger) {
            self.release_socket(old.socket);
        }
    }

    /// Forgets a record, and the socket it kept bound.
    fn unlinger(&mut self, tag: [u8; 8]) {
        if let Some(old) = self.lingering.remove(&tag) {
            self.release_socket(old.socket);
        }
    }

    fn release_socket(&mut self, socket: Option<SocketAddr>) {
        if let Some(socket) = socket {
            self.socket_requests
                .push_back(SocketRequest::Unbind(socket));
        }
    }

    /// A sealed datagram for a connection no longer held: whether a record opened it. A
    /// close is acknowledged (on the path it came by, else on the record's); an
    /// acknowledgement ends our retransmissions.
    pub(super) fn linger_deliver(
        &mut self,
        tag: [u8; 8],
        payload: &[u8],
        direct: Option<(SocketAddr, SocketAddr)>,
    ) -> bool {
        let Some(linger) = self.lingering.get_mut(&tag) else {
            return false;
        };
        let Ok((kind, _)) = linger.keys.open(payload) else {
            return false;
        };
        match kind {
            Kind::Close => {
                let (local, remote) = direct.unwrap_or(linger.path);
                let ack = linger.keys.seal(Kind::CloseAck, &[]);
                if self.can_send_from(local, tag) {
                    self.outgoing.push_back((local, remote, ack));
                }
            }
            Kind::CloseAck if matches!(linger.role, Role::Closer { .. }) => self.unlinger(tag),
            _ => {}
        }
        true
    }

    /// Retransmits the closes that are due and forgets the records whose time is up.
    pub(super) fn linger_timeouts(&mut self, now: Instant) {
        let due: Vec<[u8; 8]> = self
            .lingering
            .iter()
            .filter(|(_, l)| l.next_at <= now)
            .map(|(t, _)| *t)
            .collect();
        for tag in due {
            let usable = self
                .lingering
                .get(&tag)
                .is_some_and(|l| self.can_send_from(l.path.0, tag));
            let authenticated = self.client.is_authenticated();
            let Some(linger) = self.lingering.get_mut(&tag) else {
                continue;
            };
            let Role::Closer {
                message,
                tries,
                rto,
                signal,
            } = &mut linger.role
            else {
                self.unlinger(tag);
                continue;
            };
            if *tries >= CLOSE_TRIES || !usable {
                self.unlinger(tag);
                continue;
            }
            *tries += 1;
            let sealed = linger.keys.seal(Kind::Close, message);
            linger.next_at = now + *rto;
            *rto = rto.saturating_mul(2);
            let (local, remote) = linger.path;
            let resend = if authenticated { signal.take() } else { None };
            self.outgoing.push_back((local, remote, sealed));
            if let Some((session, code, reason)) = resend {
                let _ = self.client.close(session, code, &reason);
            }
        }
    }

    /// Whether the node still has the socket `local` (a record's path may outlive it: an
    /// interface gone, a relay allocation replaced).
    fn can_send_from(&self, local: SocketAddr, tag: [u8; 8]) -> bool {
        local == self.config.base
            || self.hosts.contains(&local)
            || self.relayed == Some(local)
            || self
                .lingering
                .get(&tag)
                .is_some_and(|l| l.socket == Some(local))
    }

    /// The records' deadlines.
    pub(super) fn linger_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.lingering.values().map(|l| l.next_at)
    }

    /// Sockets the records keep bound.
    pub(super) fn linger_sockets(&self) -> usize {
        self.lingering
            .values()
            .filter(|l| l.socket.is_some())
            .count()
    }
}
