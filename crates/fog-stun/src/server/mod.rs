//! The STUN server machine: RFC 5389 Binding with the RFC 5780 behaviour-discovery attributes,
//! on up to two IP addresses × two ports.
//!
//! Let A1:P1 be the primary address, A2 the alternate IP and P2 the alternate port. The server
//! answers on every configured combination ([`ServerConfig::local_addrs`]; the driver binds
//! exactly these, not a wildcard, because the local address a request arrived on decides where
//! the answer comes from). For a Binding request arriving on Da:Dp, with Ca:Cp the other
//! address and port (RFC 5780 §6.1):
//!
//! | request | answer |
//! |---|---|
//! | RFC 5389 (magic cookie) | success from Da:Dp with XOR-MAPPED-ADDRESS and MAPPED-ADDRESS (the source), RESPONSE-ORIGIN (where it is sent from) and, with both A2 and P2, OTHER-ADDRESS Ca:Cp (§6.1, §7.4) |
//! | RFC 3489 (no cookie) | success with MAPPED-ADDRESS, SOURCE-ADDRESS and, with both A2 and P2, CHANGED-ADDRESS (RFC 3489 §8.1), echoing the 128-bit ID (RFC 5389 §12.2) |
//! | CHANGE-REQUEST | sent from Ca instead of Da (change IP) and/or Cp instead of Dp (change port) (RFC 5780 §6.1 Table 1) |
//! | CHANGE-REQUEST with a flag set, and no A2 or no P2 | 420 with UNKNOWN-ATTRIBUTES 0x0003 (RFC 5780 §6, §6.1) |
//! | RESPONSE-PORT | sent to the source IP at that port (RFC 5780 §7.5) |
//! | RESPONSE-PORT with PADDING, or RESPONSE-PORT 0 | 400 to the source (RFC 5780 §6.1, §10) |
//! | PADDING of n bytes | the answer carries PADDING of n bytes, less only if the answer would pass 65,507 bytes (§6.1, §7.6) |
//! | unknown comprehension-required attributes | 420 listing them, at most 16 (RFC 5389 §7.3.1) |
//! | FINGERPRINT | the answer carries one too (RFC 5780 §6.1 wants it when STUN is multiplexed) |
//! | anything else: indications, responses, other methods, malformed bytes | dropped and counted |
//!
//! Error responses go from Da:Dp to the request's source. USERNAME and MESSAGE-INTEGRITY are
//! accepted but not checked, and answers are not signed: this is a public reflector, and RFC 5780
//! §5.2 leaves authentication to the deployment.
//!
//! # Not an amplifier
//!
//! A response is never more than [`MAX_AMPLIFICATION`] = 96 bytes longer than the request that
//! caused it, PADDING or not. The largest answer without PADDING is an RFC 5389 success over
//! IPv6: the 20-byte header and four 24-byte address attributes (XOR-MAPPED-ADDRESS,
//! MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS) is 116 bytes, against a smallest request of
//! 20. PADDING and FINGERPRINT in the answer are mirrored from the request, byte for byte, so
//! they add the same to both sides. Error answers are smaller: 420 is 48 bytes plus 2 per listed
//! attribute, each of which took at least 4 bytes of the request. RFC 3489 answers carry three
//! addresses. The `amplification_bound_*` tests check this over many request shapes, and the
//! `stun_server` fuzz target over arbitrary ones.
//!
//! On top of that, every answer is charged to the source IP's token bucket ([`RateLimit`]:
//! 20/s, burst 40 by default), so one victim IP receives at most that many answers per second
//! whoever spoofs it. RESPONSE-PORT changes only the port, never the IP, so it reaches nothing a
//! spoofed source port could not.
//!
//! # Deviations, and why
//!
//! - RFC 5780 §3 says servers SHOULD NOT answer RFC 3489 clients. This one does: the classic
//!   `stun` client is one of the independent implementations FogConnect is checked against, and
//!   its answers are smaller than RFC 5389 ones.
//! - RFC 5780 §6.1 wants 420 for any CHANGE-REQUEST without an alternate address; a
//!   CHANGE-REQUEST with neither flag set is answered normally instead, because classic clients
//!   send one in their first test and it asks for nothing the server cannot do.
//! - Requests of other methods are dropped rather than answered with 400, to reflect as little
//!   as possible.

mod rate;

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use fog_core::{Protocol, Receive, SansIo, Transmit, classify};

use crate::wire::{
    BindingResponse, Class, Cookie, EncodeError, ErrorCode, Message, Method, attribute_type,
};
pub use rate::{RateLimit, RateLimiter, Verdict};

/// A response is at most this many bytes longer than its request (see the
/// [module docs](self)).
pub const MAX_AMPLIFICATION: usize = 96;

/// The largest response: the largest UDP payload over IPv4 (65,535 − 20 − 8).
pub const MAX_RESPONSE_LEN: usize = 65_507;

/// UNKNOWN-ATTRIBUTES lists at most this many types; a request with more is answered with the
/// first ones.
const MAX_UNKNOWN_LISTED: usize = 16;

/// Responses waiting for `poll_transmit`. A driver drains after every input, so one is the
/// normal high-water mark; the bound only matters for a driver that does not.
const MAX_PENDING: usize = 64;

/// Events waiting for `poll_event`, bounded for the same reason.
const MAX_EVENTS: usize = 64;

/// Where and how the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// A1:P1, the primary address.
    pub primary: SocketAddr,
    /// A2, the alternate IP, in the same family as A1.
    pub alternate_ip: Option<IpAddr>,
    /// P2, the alternate port.
    pub alternate_port: Option<u16>,
    /// The per-source rate limit; `None` turns it off (for benchmarks on loopback).
    pub rate_limit: Option<RateLimit>,
}

/// Why a list of addresses does not describe a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigError {
    /// No address at all.
    Empty,
    /// More than two distinct IPs.
    TooManyIps,
    /// More than two distinct ports.
    TooManyPorts,
    /// IPv4 and IPv6 mixed: an alternate must be reachable the same way as the primary.
    MixedFamilies,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "no address given",
            Self::TooManyIps => "more than two IP addresses",
            Self::TooManyPorts => "more than two ports",
            Self::MixedFamilies => "IPv4 and IPv6 addresses mixed",
        })
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// A one-address server on `primary` with the default rate limit.
    pub fn new(primary: SocketAddr) -> Self {
        Self {
            primary,
            alternate_ip: None,
            alternate_port: None,
            rate_limit: Some(RateLimit::default()),
        }
    }

    /// The same with alternate IP `ip` and alternate port `port`: a full RFC 5780 server.
    pub fn with_alternate(mut self, ip: IpAddr, port: u16) -> Self {
        self.alternate_ip = Some(ip);
        self.alternate_port = Some(port);
        self
    }

    /// A server from the addresses it listens on: the first is A1:P1, and the others name at
    /// most one more IP (A2) and one more port (P2). `[A1:P1, A2:P2]` is enough for a full
    /// server; [`local_addrs`](Self::local_addrs) then lists all four combinations to bind.
    pub fn from_addrs(addrs: &[SocketAddr]) -> Result<Self, ConfigError> {
        let (&primary, rest) = addrs.split_first().ok_or(ConfigError::Empty)?;
        let mut config = Self::new(primary);
        for addr in rest {
            if addr.is_ipv4() != primary.is_ipv4() {
                return Err(ConfigError::MixedFamilies);
            }
            if addr.ip() != primary.ip() {
                match config.alternate_ip {
                    Some(ip) if ip != addr.ip() => return Err(ConfigError::TooManyIps),
                    _ => config.alternate_ip = Some(addr.ip()),
                }
            }
            if addr.port() != primary.port() {
                match config.alternate_port {
                    Some(port) if port != addr.port() => return Err(ConfigError::TooManyPorts),
                    _ => config.alternate_port = Some(addr.port()),
                }
            }
        }
        Ok(config)
    }

    /// Every address the server answers on, primary first: A1:P1, A1:P2, A2:P1, A2:P2 as
    /// configured. The driver binds each of them.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let ips = std::iter::once(self.primary.ip()).chain(self.alternate_ip);
        let ports: Vec<u16> = std::iter::once(self.primary.port())
            .chain(self.alternate_port)
            .collect();
        ips.flat_map(|ip| ports.iter().map(move |&port| SocketAddr::new(ip, port)))
            .collect()
    }

    /// A2:P2, which OTHER-ADDRESS advertises, when the server has both (RFC 5780 §6).
    pub fn other_address(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.alternate_ip?, self.alternate_port?))
    }
}

/// What the server did with the datagrams it was given. Every datagram passed to
/// `handle_packet` lands in exactly one of the counters after `received`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams handed to `handle_packet`.
    pub received: u64,
    /// Binding requests answered with a success response.
    pub answered: u64,
    /// Binding requests answered with an error response (400, 420).
    pub error_responses: u64,
    /// Datagrams that are not a valid STUN message.
    pub malformed: u64,
    /// Valid STUN that is not a Binding request: indications, responses, other methods.
    pub not_binding: u64,
    /// Binding requests over their source's rate limit.
    pub rate_limited: u64,
    /// Binding requests from a new source while the rate table was full of active sources.
    pub rate_table_full: u64,
    /// Datagrams that arrived on an address not in [`ServerConfig::local_addrs`].
    pub unknown_local: u64,
    /// Responses dropped because 64 were already waiting for `poll_transmit` (a driver that
    /// drains after every input never hits this).
    pub queue_full: u64,
    /// Of `answered` and `error_responses`: RFC 3489 requests (no magic cookie).
    pub classic: u64,
    /// Responses dropped at `poll_transmit` because the caller's buffer was too small (each
    /// also reported as [`ServerEvent::ResponseTooLarge`]).
    pub buffer_too_small: u64,
}

/// What the server reports to its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// A response did not fit the buffer given to `poll_transmit` and was dropped.
    ResponseTooLarge {
        /// Where it was going.
        destination: SocketAddr,
        /// The buffer it needed.
        needed: usize,
    },
}

/// A response waiting for `poll_transmit`: kept as a `Repr` and written into the caller's
/// buffer only then.
#[derive(Debug, Clone)]
struct Pending {
    source: SocketAddr,
    destination: SocketAddr,
    response: BindingResponse,
}

/// The STUN Binding server. Stateless apart from the rate limiter: every request is answered
/// from itself and the configuration.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    limiter: Option<RateLimiter>,
    pending: VecDeque<Pending>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
}

impl Server {
    /// A server with `config`.
    ///
    /// # Panics
    ///
    /// If the alternate IP's family differs from the primary's, or the rate limit has a zero
    /// field.
    pub fn new(config: ServerConfig) -> Self {
        if let Some(ip) = config.alternate_ip {
            assert_eq!(
                ip.is_ipv4(),
                config.primary.is_ipv4(),
                "the alternate IP must be in the primary's address family"
            );
        }
        Self {
            limiter: config.rate_limit.map(RateLimiter::new),
            config,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Ca and Cp for a request that arrived on `local`, or `None` if `local` is not ours.
    fn others(&self, local: SocketAddr) -> Option<(Option<IpAddr>, Option<u16>)> {
        let (a1, p1) = (self.config.primary.ip(), self.config.primary.port());
        let (da, dp) = (local.ip(), local.port());
        let ca = if da == a1 {
            self.config.alternate_ip
        } else if Some(da) == self.config.alternate_ip {
            Some(a1)
        } else {
            return None;
        };
        let cp = if dp == p1 {
            self.config.alternate_port
        } else if Some(dp) == self.config.alternate_port {
            Some(p1)
        } else {
            return None;
        };
        Some((ca, cp))
    }

    /// The answer to a decoded Binding request: where from, where to, and what.
    fn answer(&self, local: SocketAddr, source: SocketAddr, request: &Message) -> Pending {
        let classic = matches!(request.cookie, Cookie::Classic(_));
        let a = &request.attributes;
        let error = |code: u16, unknown: Vec<u16>| {
            let mut response = BindingResponse {
                transaction_id: request.transaction_id,
                cookie: request.cookie,
                error: Some(ErrorCode::new(code)),
                unknown_attributes: unknown,
                fingerprint: request.fingerprint && !classic,
                ..BindingResponse::default()
            };
            // RFC 3489 §11.2.10 wants an even count, repeating one type if needed.
            if classic && response.unknown_attributes.len() % 2 == 1 {
                let last = response.unknown_attributes[response.unknown_attributes.len() - 1];
                response.unknown_attributes.push(last);
            }
            Pending {
                source: local,
                destination: source,
                response,
            }
        };

        // RFC 5389 §7.3.1.
        if !request.unknown_required.is_empty() {
            let listed = request.unknown_required.iter().take(MAX_UNKNOWN_LISTED);
            return error(ErrorCode::UNKNOWN_ATTRIBUTE, listed.copied().collect());
        }
        // RFC 5780 §6.1 and §7.5; port 0 cannot be sent to.
        if (a.response_port.is_some() && a.padding.is_some()) || a.response_port == Some(0) {
            return error(ErrorCode::BAD_REQUEST, Vec::new());
        }
        let other = self.config.other_address();
        let change = a.change_request.unwrap_or_default();
        // RFC 5780 §6, §6.1: no alternate address and port, no CHANGE-REQUEST.
        if (change.change_ip || change.change_port) && other.is_none() {
            return error(
                ErrorCode::UNKNOWN_ATTRIBUTE,
                vec![attribute_type::CHANGE_REQUEST],
            );
        }
        // With `other` present, both Ca and Cp exist for every local address (`others` only
        // accepts configured ones).
        let (ca, cp) = self.others(local).unwrap_or((None, None));
        let from = SocketAddr::new(
            if change.change_ip {
                ca.unwrap_or(local.ip())
            } else {
                local.ip()
            },
            if change.change_port {
                cp.unwrap_or(local.port())
            } else {
                local.port()
            },
        );
        let other = other
            .and(ca.zip(cp))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let to = SocketAddr::new(source.ip(), a.response_port.unwrap_or(source.port()));

        let mut response = BindingResponse {
            transaction_id: request.transaction_id,
            cookie: request.cookie,
            mapped: Some(source),
            ..BindingResponse::default()
        };
        if classic {
            // RFC 3489 §8.1.
            response.source_address = Some(from);
            response.changed_address = other;
        } else {
            // RFC 5780 §6.1.
            response.xor_mapped = Some(source);
            response.response_origin = Some(from);
            response.other_address = other;
            response.fingerprint = request.fingerprint;
        }
        response.padding = a.padding.map(|n| padding_within_limit(&response, n));
        if a.response_port.is_some() {
            // RFC 5780 §9.1 warns that RESPONSE-PORT lets a request aim its answer at another
            // port of its source IP, forged or not. Such an answer carries XOR-MAPPED-ADDRESS
            // alone (and FINGERPRINT if asked): 32 or 40 bytes, against a request of at least
            // 28 or 36 (header, RESPONSE-PORT, FINGERPRINT), so one datagram at most 4 bytes
            // larger than the one that asked for it, to the asker's own IP, under its rate
            // limit. A node's port-mapping probe needs only the transaction ID.
            response.mapped = None;
            response.response_origin = None;
            response.other_address = None;
        }
        Pending {
            source: from,
            destination: to,
            response,
        }
    }
}

/// The PADDING length to answer a request's `requested` bytes with: the same, unless the
/// response would then pass [`MAX_RESPONSE_LEN`] (RFC 5780 §7.6 caps PADDING at what fits a
/// datagram).
fn padding_within_limit(response: &BindingResponse, requested: u16) -> u16 {
    let without = response
        .to_message()
        .encoded_len(false)
        .unwrap_or(MAX_RESPONSE_LEN);
    // The PADDING attribute header takes 4 bytes, its value is padded to a multiple of 4.
    let room = MAX_RESPONSE_LEN.saturating_sub(without + 4) & !3;
    requested.min(u16::try_from(room).unwrap_or(u16::MAX))
}

impl SansIo for Server {
    type Event = ServerEvent;

    /// STUN by its first byte (RFC 7983 §7); everything else belongs to another machine.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        classify(packet.payload, false) == Protocol::Stun
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.stats.received += 1;
        if self.others(packet.local).is_none() {
            self.stats.unknown_local += 1;
            return;
        }
        let Ok(request) = Message::decode(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        if request.class != Class::Request || request.method != Method::BINDING {
            self.stats.not_binding += 1;
            return;
        }
        if packet.source.port() == 0 {
            // Nothing can be sent back to port 0: a forged or broken source.
            self.stats.malformed += 1;
            return;
        }
        if let Some(limiter) = &mut self.limiter {
            match limiter.check(now, packet.source.ip()) {
                Verdict::Allowed => {}
                Verdict::Limited => {
                    self.stats.rate_limited += 1;
                    return;
                }
                Verdict::TableFull => {
                    self.stats.rate_table_full += 1;
                    return;
                }
            }
        }
        if self.pending.len() >= MAX_PENDING {
            self.stats.queue_full += 1;
            return;
        }
        let pending = self.answer(packet.local, packet.source, &request);
        if pending.response.error.is_some() {
            self.stats.error_responses += 1;
        } else {
            self.stats.answered += 1;
        }
        if matches!(request.cookie, Cookie::Classic(_)) {
            self.stats.classic += 1;
        }
        self.pending.push_back(pending);
    }

    /// Nothing is timed: the rate limiter refills from the `now` of each request.
    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(pending) = self.pending.pop_front() {
            match pending.response.encode(buf) {
                Ok(len) => {
                    return Some(
                        Transmit::new(pending.destination, len).from_source(pending.source),
                    );
                }
                Err(EncodeError::BufferTooSmall { needed }) => {
                    self.stats.buffer_too_small += 1;
                    if self.events.len() < MAX_EVENTS {
                        self.events.push_back(ServerEvent::ResponseTooLarge {
                            destination: pending.destination,
                            needed,
                        });
                    }
                }
                Err(e) => {
                    // Every response is built here from checked parts; an encode error is a
                    // bug in this module, not something the network can cause.
                    debug_assert!(false, "server response failed to encode: {e}");
                }
            }
        }
        None
    }

    fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests;
