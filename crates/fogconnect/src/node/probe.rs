//! Plain Bindings to the STUN server: the port refresh before a prediction, and the keepalive
//! that notices a new mapping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, Transmit};
use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};

/// A plain Binding to the STUN server from one of our sockets, retransmitted on a fixed
/// interval a few times: the port refresh and the keepalive both are one.
#[derive(Debug)]
pub(super) struct Probe {
    pub(super) id: TransactionId,
    pub(super) local: SocketAddr,
    /// When the next (re)transmission is due.
    pub(super) next_at: Instant,
    pub(super) sent: u32,
}

impl Probe {
    /// The next transmission to `server` if one is due: at most `tries`, `rto` apart.
    pub(super) fn poll(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        server: SocketAddr,
        rto: Duration,
        tries: u32,
    ) -> Option<Transmit> {
        if self.sent >= tries || now < self.next_at {
            return None;
        }
        self.sent += 1;
        self.next_at = now + rto;
        let len = BindingRequest::new(self.id).encode(buf).ok()?;
        Some(Transmit::new(server, len).from_source(self.local))
    }

    /// Whether every try went out and the last one's wait is over.
    pub(super) fn exhausted(&self, now: Instant, tries: u32) -> bool {
        self.sent >= tries && now >= self.next_at
    }

    /// The answer to this probe from `server`, if `packet` is it.
    pub(super) fn answer(
        &self,
        packet: &Receive<'_>,
        server: SocketAddr,
    ) -> Option<BindingResponse> {
        if packet.local != self.local || packet.source != server {
            return None;
        }
        BindingResponse::decode(packet.payload)
            .ok()
            .flatten()
            .filter(|r| r.transaction_id == self.id)
    }
}

/// The port refresh: a Binding from a fresh port that reads the NAT's current port before we
/// predict the next.
#[derive(Debug)]
pub(super) struct Refresh {
    pub(super) probe: Probe,
    pub(super) mapped: Option<SocketAddr>,
}
