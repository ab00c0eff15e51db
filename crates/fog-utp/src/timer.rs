//! A connection's deadlines in one table; `poll_timeout` is their minimum.

use std::time::Instant;

/// Why a connection wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The oldest packet in flight was not acked within the retransmission timeout.
    Retransmit = 0,
    /// Nothing sent for the keepalive interval: send an ST_STATE.
    Keepalive = 1,
    /// The peer's window stayed below one packet with nothing in flight: probe it.
    ZeroWindow = 2,
    /// A cleanly closed connection stops answering late FINs and is removed.
    Linger = 3,
    /// An accepted connection heard nothing after the SYN: it was likely spoofed.
    Handshake = 4,
    /// An in-order data packet waits for a second to share its ack (RFC 5681 §4.2).
    DelayedAck = 5,
}

const COUNT: usize = 6;

#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable([Option<Instant>; COUNT]);

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn clear_all(&mut self) {
        self.0 = [None; COUNT];
    }

    /// Whether `timer` is due at `now`; a due timer is cleared.
    pub(crate) fn expired(&mut self, timer: Timer, now: Instant) -> bool {
        match self.0[timer as usize] {
            Some(at) if at <= now => {
                self.0[timer as usize] = None;
                true
            }
            _ => false,
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}
