//! WebRTC data channels as a connection's transport ([`Transport::Rtc`](fog_signal::msg::Transport)).
//!
//! Each connection runs a fog-rtc peer (str0m's ICE, DTLS, SCTP and DCEP) whose datagrams ride
//! inside the session's sealed datagrams ([`seal::Kind::Transport`](super::seal::Kind)) on
//! whatever path the connection has: direct, TURN, or the signaling relay, and a relay→direct
//! change moves them without the peer noticing. The peer only ever sees two made-up host
//! candidates, one per side, so its ICE agent's checks and consent run over the seal too
//! (cheap, and they keep str0m's own liveness honest); no framing byte is needed, since only
//! this connection's transport datagrams reach it and they start with a STUN or DTLS byte.
//! `docs/rtc.md` says why this rather than raw datagrams on the punched path (which browsers
//! will need).
//!
//! **Identity.** The node makes one DTLS certificate and signs its SHA-256 fingerprint into
//! every offer or answer that names RTC ([`Description::rtc`](fog_signal::msg::Description));
//! each side's peer is told the fingerprint the other signed, and str0m refuses a DTLS
//! handshake whose certificate does not hash to it. A signaling server that swaps
//! descriptions cannot re-sign them, and one that forwards them untouched cannot present the
//! signed certificate: either way no channel opens.
//!
//! **ICE credentials** come from the session id (both sides know it); they need no secrecy,
//! since only sealed datagrams of this session reach the peer.
//!
//! **DTLS application data is not sealed twice.** Once the peer is connected, a datagram that
//! is nothing but DTLS 1.2 application-data records of a protected epoch
//! ([`protects_itself`](Rtc::protects_itself)) rides behind framing byte 8 and the receiver's
//! session tag, as QUIC's packets do ([`seal::quic_of`](super::seal::quic_of)); everything
//! else (ICE's checks and consent, the handshake, alerts, anything before `Connected`) stays
//! sealed. Sealing the bulk again bought nothing the records do not have already: they are
//! AEAD-protected (RFC 6347 §4.1.2: authenticity, secrecy) under keys of a handshake whose
//! certificates are checked against the fingerprints both sides signed into their
//! descriptions (above), so neither a path observer nor the signaling server can forge,
//! alter or read them; dimpl drops a replayed record (RFC 6347 §4.1.2.6's window) and, once
//! the handshake is over, silently discards one that does not open (§4.1.2.7), so a forged
//! tagged datagram costs the connection nothing; and a receiver takes a tagged datagram only
//! under the same test, so an attacker who learns the tag cannot inject a plaintext
//! handshake record or anything for ICE. What the path sees is what the seal showed (a tag,
//! sequence numbers, lengths); the certificates in the handshake stay sealed.
//!
//! **Messages.** The caller (offerer) opens one reliable, ordered channel, `fog`; every
//! [`send`](super::Node::send) is one message on it (at most [`MAX_MESSAGE`], the SCTP
//! message size a peer assumes without SDP), delivered whole as one
//! [`Event::Data`](super::Event).
//!
//! **Close.** Graceful: the channel is reset once everything queued was acknowledged
//! (RFC 8831 §6.7), which the peer sees after the last message; then the Node closes the
//! connection with the caller's code and reason.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use fog_core::{Receive, SansIo, Transmit};
use fog_rtc::{
    BrowserSetup, ChannelId, ChannelOptions, Config, DirectSetup, Event as RtcEvent,
    IceCredentials, Identity, Peer, Role, SendError as RtcSendError,
};
use fog_signal::msg::{CertFingerprint, SessionId};
use sha2::{Digest, Sha256};

use super::event::SendError;
use super::transport::Happened;

/// The largest message one `send` takes over RTC: str0m's default for a peer that advertised
/// no `max-message-size` (RFC 8841 §6), which is what a direct setup has.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// The label of the connection's one channel.
const LABEL: &str = "fog";
/// The caller's and the answerer's made-up candidates (TEST-NET-1, never routed).
const CALLER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const ANSWERER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 9);

/// What an RTC connection needs from the Node to start.
pub(super) struct Opening<'a> {
    /// Our DTLS certificate (its fingerprint is in our signed description).
    pub identity: &'a Identity,
    /// The fingerprint the peer signed into its description.
    pub fingerprint: Option<CertFingerprint>,
    /// The session both sides share.
    pub session: SessionId,
    /// Whether we are the offerer (DTLS client, opens the channel).
    pub caller: bool,
}

/// One connection's WebRTC peer and its channel.
pub(super) struct Rtc {
    peer: Peer,
    caller: bool,
    channel: Option<ChannelId>,
    open: bool,
    closing: bool,
    over: bool,
    happened: Vec<Happened>,
    addr: SocketAddr,
    remote: SocketAddr,
    /// A browser's peer: raw ICE and DTLS on the node's socket, not inside the seal
    /// (`docs/browser.md`); `addr` and `remote` are then real addresses, `remote` the last
    /// one the browser was heard from.
    raw: bool,
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc")
            .field("open", &self.open)
            .field("closing", &self.closing)
            .field("over", &self.over)
            .finish_non_exhaustive()
    }
}

/// ICE credentials of one side of `session`.
fn credentials(session: SessionId, caller: bool) -> IceCredentials {
    let mut h = Sha256::new();
    h.update(b"fogconnect-rtc-ice-v1");
    h.update(session.0);
    h.update([u8::from(caller)]);
    IceCredentials::from_seed(h.finalize().into())
}

/// Whether `datagram` is one or more whole DTLS 1.2 records (RFC 6347 §4.1: type, version,
/// epoch, sequence number, length, fragment), each application data (RFC 5246 §6.2.1, 23)
/// under a protected epoch (not 0, which is plaintext), and nothing else.
fn dtls_application_data(datagram: &[u8]) -> bool {
    /// RFC 6347 §4.1's record header.
    const HEADER: usize = 13;
    /// RFC 5246 §A.1 `ContentType.application_data`.
    const APPLICATION_DATA: u8 = 23;
    /// RFC 6347 §4.1: DTLS 1.2 is {254, 253}.
    const DTLS_1_2: [u8; 2] = [254, 253];
    let mut rest = datagram;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(header) = rest.get(..HEADER) else {
            return false;
        };
        if header[0] != APPLICATION_DATA || header[1..3] != DTLS_1_2 || header[3..5] == [0, 0] {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let Some(next) = rest.get(HEADER + len..) else {
            return false;
        };
        rest = next;
    }
    true
}

impl Rtc {
    /// The connection's peer; `None` without the peer's signed fingerprint or if the peer
    /// cannot be built (reported by the Node as the transport failing).
    pub(super) fn new(opening: Opening<'_>, now: Instant) -> Option<Rtc> {
        let fingerprint = opening.fingerprint?;
        let (addr, remote) = if opening.caller {
            (CALLER, ANSWERER)
        } else {
            (ANSWERER, CALLER)
        };
        let setup = DirectSetup {
            identity: opening.identity.clone(),
            role: if opening.caller {
                Role::Active
            } else {
                Role::Passive
            },
            local_ice: credentials(opening.session, opening.caller),
            remote_ice: credentials(opening.session, !opening.caller),
            remote_fingerprint: fingerprint.0,
            local: addr,
            remote,
        };
        let channels = if opening.caller {
            vec![ChannelOptions::reliable(LABEL)]
        } else {
            Vec::new()
        };
        let config = Config {
            max_message: MAX_MESSAGE as u32,
            ..Config::default()
        };
        let (peer, ids) = Peer::direct(now, setup, config, &channels).ok()?;
        Some(Rtc {
            peer,
            caller: opening.caller,
            channel: ids.first().copied(),
            open: false,
            closing: false,
            over: false,
            happened: Vec::new(),
            addr,
            remote,
            raw: false,
        })
    }

    /// The answering peer of a browser that offered `remote_ice` and signed
    /// `fingerprint`, on our sockets `locals`, checking the browser's candidates `remotes`;
    /// `None` if the peer cannot be built.
    pub(super) fn browser(
        identity: &Identity,
        local_ice: IceCredentials,
        remote_ice: IceCredentials,
        fingerprint: CertFingerprint,
        locals: Vec<SocketAddr>,
        remotes: Vec<SocketAddr>,
        now: Instant,
    ) -> Option<Rtc> {
        let addr = *locals.first()?;
        let setup = BrowserSetup {
            identity: identity.clone(),
            local_ice,
            remote_ice,
            remote_fingerprint: fingerprint.0,
            locals,
            remotes,
        };
        let config = Config {
            max_message: MAX_MESSAGE as u32,
            ..Config::default()
        };
        let peer = Peer::browser(now, setup, config).ok()?;
        Some(Rtc {
            peer,
            caller: false,
            channel: None,
            open: false,
            closing: false,
            over: false,
            happened: Vec::new(),
            addr,
            remote: addr,
            raw: true,
        })
    }

    /// Whether this is a browser's peer, whose datagrams go raw on the node's socket.
    pub(super) fn is_raw(&self) -> bool {
        self.raw
    }

    /// Our socket and the browser's address, as last heard.
    pub(super) fn path(&self) -> (SocketAddr, SocketAddr) {
        (self.addr, self.remote)
    }

    /// Whether `packet`, from the node's socket, is this browser peer's: a STUN message whose
    /// USERNAME starts with our ufrag (or an answer to our check), or DTLS from an address its
    /// checks made a candidate (str0m's own demux).
    pub(super) fn accepts(&self, packet: &Receive<'_>) -> bool {
        self.raw && !self.over && self.peer.accepts(packet)
    }

    /// A raw datagram from the node's socket that [`accepts`](Self::accepts) took.
    pub(super) fn handle_raw(&mut self, now: Instant, packet: Receive<'_>) {
        (self.addr, self.remote) = (packet.local, packet.source);
        self.peer.handle_packet(now, packet);
    }

    /// The next raw datagram for the node's socket.
    pub(super) fn poll_transmit_raw(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.peer.poll_transmit(now, buf)
    }

    /// Whether `datagram` (ours to send, or one behind our session tag) may travel without
    /// the session's seal: the peer is connected (its DTLS discards a record that does not
    /// open rather than failing) and the datagram holds only DTLS application data of a
    /// protected epoch. See the module docs for why that is enough.
    pub(super) fn protects_itself(&self, datagram: &[u8]) -> bool {
        !self.raw && !self.over && self.peer.is_connected() && dtls_application_data(datagram)
    }

    /// Queues one message.
    pub(super) fn send(&mut self, now: Instant, data: &[u8]) -> Result<(), SendError> {
        if self.over || self.closing {
            return Err(SendError::NotConnected);
        }
        if data.len() > MAX_MESSAGE {
            return Err(SendError::TooLong);
        }
        let Some(channel) = self.channel.filter(|_| self.open) else {
            // Until the channel opens the sender waits for `Writable`.
            return Err(SendError::Blocked);
        };
        self.peer
            .send(now, channel, data, true)
            .map_err(|e| match e {
                RtcSendError::Blocked => SendError::Blocked,
                RtcSendError::TooLong => SendError::TooLong,
                RtcSendError::NotOpen => SendError::NotConnected,
            })
    }

    /// Whether a sender told `Blocked` may try again.
    pub(super) fn has_room(&mut self) -> bool {
        match self.channel {
            Some(channel) if self.open => self.peer.has_room(channel),
            _ => false,
        }
    }

    /// One of its datagrams arrived (unsealed); `false` if the peer could not take it.
    pub(super) fn handle_packet(&mut self, now: Instant, datagram: &[u8]) -> bool {
        let before = self.peer.stats();
        self.peer.handle_packet(
            now,
            Receive {
                source: self.remote,
                local: self.addr,
                payload: datagram,
            },
        );
        self.peer.stats() == before
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.peer.handle_timeout(now);
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.peer.poll_timeout()
    }

    pub(super) fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.peer.poll_transmit(now, buf).map(|t| t.len)
    }

    /// Starts the graceful close.
    pub(super) fn close(&mut self, now: Instant) {
        if self.over || self.closing {
            return;
        }
        self.closing = true;
        match self.channel {
            Some(channel) if self.open => self.peer.close_channel(now, channel),
            // Nothing was ever open: nothing to deliver.
            _ => self.end(Happened::CloseDone),
        }
    }

    fn end(&mut self, how: Happened) {
        if !self.over {
            self.over = true;
            self.happened.push(how);
        }
    }

    pub(super) fn poll(&mut self) -> Vec<Happened> {
        while let Some(event) = self.peer.poll_event() {
            match event {
                RtcEvent::ChannelOpen { channel, .. } => {
                    // The caller's channel, or (answerer) the first the caller opened; the
                    // caller opens only one, so another is ignored.
                    if self.channel.is_none() && !self.caller {
                        self.channel = Some(channel);
                    }
                    if Some(channel) == self.channel && !self.open {
                        self.open = true;
                        if self.raw {
                            self.happened.push(Happened::Opened);
                        }
                    }
                }
                RtcEvent::Message { channel, data, .. }
                    if Some(channel) == self.channel && !self.over =>
                {
                    self.happened.push(Happened::Data(data));
                }
                RtcEvent::ChannelClosed { channel } if Some(channel) == self.channel => {
                    if self.peer.is_over() {
                        // The whole peer failed (its `Failed` is queued behind this).
                        self.end(Happened::Dead);
                    } else if self.closing {
                        self.end(Happened::CloseDone);
                    } else {
                        // The peer closed after all its messages (a stream reset follows the
                        // data, RFC 6525 §5.2.2); its sealed close follows.
                        self.end(Happened::PeerClosed);
                    }
                }
                RtcEvent::Failed(_) => self.end(Happened::Dead),
                _ => {}
            }
        }
        std::mem::take(&mut self.happened)
    }
}

#[cfg(test)]
mod tests {
    use super::dtls_application_data;

    /// A DTLS 1.2 record header of `kind` in `epoch` with `len` bytes of fragment after it.
    fn record(kind: u8, epoch: u16, len: usize) -> Vec<u8> {
        let mut r = vec![kind, 254, 253];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
        r.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        r.resize(13 + len, 0xAB);
        r
    }

    #[test]
    fn only_whole_protected_application_data_goes_unsealed() {
        assert!(dtls_application_data(&record(23, 1, 40)));
        let two = [record(23, 1, 40), record(23, 1, 0)].concat();
        assert!(dtls_application_data(&two));
        // Nothing, a plaintext epoch, a handshake or an alert, another version.
        assert!(!dtls_application_data(&[]));
        assert!(!dtls_application_data(&record(23, 0, 40)));
        assert!(!dtls_application_data(&record(22, 1, 40)));
        assert!(!dtls_application_data(&record(21, 1, 40)));
        let mut v10 = record(23, 1, 40);
        v10[2] = 255;
        assert!(!dtls_application_data(&v10));
        // A handshake record behind application data (a plaintext certificate, say).
        assert!(!dtls_application_data(
            &[record(23, 1, 40), record(22, 0, 40)].concat()
        ));
        // A record cut short, a header cut short, bytes after the last record.
        let whole = record(23, 1, 40);
        assert!(!dtls_application_data(&whole[..whole.len() - 1]));
        assert!(!dtls_application_data(&whole[..12]));
        assert!(!dtls_application_data(&[whole.clone(), vec![23]].concat()));
        // STUN (a consent check) never qualifies.
        assert!(!dtls_application_data(&[
            0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42
        ]));
    }

    /// It reads network bytes: any bytes at all give an answer, never a panic (lengths that
    /// point past the end above all).
    #[test]
    fn any_bytes_give_an_answer() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..20_000usize {
            let mut d = record(23, 1, n % 64);
            for b in d.iter_mut().skip(n % 14) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 3 == 0 {
                    *b = x as u8;
                }
            }
            d.truncate(n % (d.len() + 1));
            let _ = dtls_application_data(&d);
        }
    }
}
