//! WebRTC data channels for FogConnect, sans-IO: one [`Peer`] is one `RTCPeerConnection`'s
//! worth of ICE, DTLS, SCTP and DCEP (RFC 8831, RFC 8832), driven like every FogConnect machine
//! ([`fog_core::SansIo`]).
//!
//! Underneath is [str0m](https://docs.rs/str0m)'s `Rtc` whole (its own ICE agent, DTLS on
//! dimpl, SCTP on sctp-proto, DCEP, SDP); `docs/rtc.md` says why it was chosen over our own
//! DTLS+SCTP+DCEP on dimpl and sctp-proto, with the build time and size it costs. This crate
//! keeps str0m's contract (every mutation is followed by draining its output) inside each call,
//! so a driver sees the usual order: input, then `poll_transmit`, `poll_event`, `poll_timeout`.
//!
//! A peer is set up one of two ways:
//!
//! - [`Peer::direct`]: both sides already agree on everything (ICE credentials, the DTLS
//!   fingerprints, who is active) through something else, such as FogConnect's signed
//!   offer/answer. No SDP.
//! - [`Peer::offer`] / [`Peer::answer`] and [`Peer::accept_answer`]: SDP (RFC 8866, JSEP
//!   RFC 9429), for independent WebRTC stacks and browsers.
//!
//! Either way the peer's DTLS certificate must hash to the fingerprint it was told (RFC 8122
//! §5, RFC 8827 §6.5): str0m refuses the handshake otherwise, and the peer ends with
//! [`Event::Failed`]. That is what binds a data channel to an identity: a node signs its
//! [`Identity::fingerprint`] into its offer or answer.
//!
//! **Randomness.** ICE credentials in direct mode come from the caller; everything else that
//! str0m, dimpl and sctp-proto draw (the certificate's key, DTLS randoms, SCTP verification
//! tags and initial TSNs) comes from their own OS-backed sources. That is this crate's one
//! exception to "no OS random source in a protocol crate", as rustls' is fog-quic's.
//!
//! ```no_run
//! use std::time::Instant;
//! use fog_core::{Receive, SansIo};
//! use fog_rtc::{ChannelOptions, Config, Identity, Peer};
//!
//! let now = Instant::now();
//! let identity = Identity::generate().expect("a certificate");
//! let local = "127.0.0.1:5000".parse().unwrap();
//! let (mut peer, offer, channel) =
//!     Peer::offer(now, &identity, Config::default(), &[local], ChannelOptions::reliable("chat"))
//!         .unwrap();
//! // ... send `offer` (SDP) to the other side, get its answer ...
//! # let answer = String::new();
//! peer.accept_answer(now, &answer).unwrap();
//! let mut buf = vec![0u8; 65_535];
//! loop {
//!     while let Some(t) = peer.poll_transmit(now, &mut buf) {
//!         // socket.send_to(&buf[..t.len], t.destination)
//! #       let _ = t;
//!     }
//!     while let Some(event) = peer.poll_event() {
//!         // Event::ChannelOpen, Event::Message, ...
//! #       let _ = event;
//!     }
//!     // wait for a datagram or peer.poll_timeout(), then:
//!     # let payload = [0u8; 0];
//!     peer.handle_packet(now, Receive { source: local, local, payload: &payload });
//!     let _ = peer.send(now, channel, b"hello", true);
//! }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId as RtcChannel, Reliability as RtcReliability};
use str0m::config::{CryptoProvider, DtlsCert, Fingerprint};
use str0m::net::Protocol;
use str0m::{Candidate, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

/// The hash named in SDP's `a=fingerprint` and used for [`Identity::fingerprint`].
const HASH: &str = "sha-256";

/// A DTLS certificate and key: what a peer proves itself with. Make one per node (or per
/// connection) and sign its [`fingerprint`](Identity::fingerprint) into what the other side
/// trusts.
#[derive(Clone)]
pub struct Identity {
    cert: DtlsCert,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256, from the crypto provider, whose key comes
    /// from the OS random source). `None` if the provider cannot make one.
    pub fn generate() -> Option<Identity> {
        let cert = provider().dtls_provider.generate_certificate()?;
        let fingerprint = Sha256::digest(&cert.certificate).into();
        Some(Identity { cert, fingerprint })
    }

    /// SHA-256 of the certificate's DER (RFC 8122 §5): what `a=fingerprint:sha-256` carries.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// The crypto provider every peer uses, chosen by str0m's features (aws-lc-rs here).
fn provider() -> CryptoProvider {
    str0m::crypto::from_feature_flags()
}

/// ICE credentials (RFC 8445 §5.3): the username fragment and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// `ice-ufrag`, 4 to 256 characters.
    pub ufrag: String,
    /// `ice-pwd`, 22 to 256 characters.
    pub pwd: String,
}

impl IceCredentials {
    /// Credentials drawn from `seed` (ICE characters, RFC 8839 §5.4): 8 for the fragment, 24
    /// for the password.
    pub fn from_seed(seed: [u8; 32]) -> IceCredentials {
        const ICE_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        let mut draw = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ICE_CHARS[(rng.next_u32() & 63) as usize]))
                .collect()
        };
        let ufrag = draw(8);
        let pwd = draw(24);
        IceCredentials { ufrag, pwd }
    }
}

/// Which side of the DTLS and SCTP handshakes a [`Peer::direct`] takes. The active side is
/// also ICE's controlling agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// DTLS client, SCTP client, ICE controlling.
    Active,
    /// DTLS server, SCTP server, ICE controlled.
    Passive,
}

/// Limits and tuning of one peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes queued across all channels (not yet acknowledged) before `send` says
    /// [`SendError::Blocked`].
    pub max_buffered: usize,
    /// The largest message we accept (`a=max-message-size`, RFC 8841 §6).
    pub max_message: u32,
    /// How long a graceful [`Peer::close_channel`] waits for the channel's queue to drain.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_buffered: 1 << 20,
            max_message: 256 * 1024,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`Peer::direct`] needs: everything SDP would otherwise carry.
#[derive(Debug, Clone)]
pub struct DirectSetup {
    /// Our certificate.
    pub identity: Identity,
    /// Which side of the handshakes we take.
    pub role: Role,
    /// Our ICE credentials.
    pub local_ice: IceCredentials,
    /// The peer's ICE credentials.
    pub remote_ice: IceCredentials,
    /// The SHA-256 fingerprint the peer's certificate must have.
    pub remote_fingerprint: [u8; 32],
    /// Our candidate's address (a host candidate).
    pub local: SocketAddr,
    /// The peer's candidate's address.
    pub remote: SocketAddr,
}

/// What [`Peer::browser`] needs: a [`DirectSetup`] for the answering side of a browser's
/// `RTCPeerConnection`, whose address is not known in advance.
#[derive(Debug, Clone)]
pub struct BrowserSetup {
    /// Our certificate.
    pub identity: Identity,
    /// Our ICE credentials (sent to the browser in the answer).
    pub local_ice: IceCredentials,
    /// The browser's ICE credentials (from its offer's `a=ice-ufrag` / `a=ice-pwd`).
    pub remote_ice: IceCredentials,
    /// The SHA-256 fingerprint the browser's certificate must have.
    pub remote_fingerprint: [u8; 32],
    /// Our host candidates: the addresses of the sockets the browser's checks arrive on.
    pub locals: Vec<SocketAddr>,
    /// The browser's candidates, if it sent any: we check them too, which opens our NAT
    /// toward the browser when it filters what did not go out first.
    pub remotes: Vec<SocketAddr>,
}

/// How a channel delivers (RFC 8831 §6.1, RFC 8832 §5.1's channel types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// Every message, retransmitted until acknowledged.
    Reliable,
    /// A message is given up after this many retransmissions (partial reliability, RFC 3758).
    MaxRetransmits(u16),
    /// A message is given up after this many milliseconds.
    MaxLifetime(u16),
}

/// A channel to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    /// The label the other side sees.
    pub label: String,
    /// Whether messages arrive in the order sent.
    pub ordered: bool,
    /// Whether and how long a message is retransmitted.
    pub reliability: Reliability,
}

impl ChannelOptions {
    /// A reliable, ordered channel.
    pub fn reliable(label: &str) -> ChannelOptions {
        ChannelOptions {
            label: label.into(),
            ordered: true,
            reliability: Reliability::Reliable,
        }
    }

    fn to_config(&self) -> ChannelConfig {
        ChannelConfig {
            label: self.label.clone(),
            ordered: self.ordered,
            reliability: match self.reliability {
                Reliability::Reliable => RtcReliability::Reliable,
                Reliability::MaxRetransmits(retransmits) => {
                    RtcReliability::MaxRetransmits { retransmits }
                }
                Reliability::MaxLifetime(lifetime) => {
                    RtcReliability::MaxPacketLifetime { lifetime }
                }
            },
            ..ChannelConfig::default()
        }
    }
}

/// A data channel of one peer (ours, not the SCTP stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

/// What a peer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ICE found a path and DTLS finished, the peer's certificate matching its fingerprint.
    Connected,
    /// A channel is open (ours, or one the peer opened), with its label.
    ChannelOpen {
        /// The channel.
        channel: ChannelId,
        /// Its label.
        label: String,
    },
    /// A whole message arrived.
    Message {
        /// The channel.
        channel: ChannelId,
        /// Binary (PPID 53) or text (PPID 51).
        binary: bool,
        /// The message.
        data: Vec<u8>,
    },
    /// A channel's queue fell under half of [`Config::max_buffered`] after a send was blocked.
    Writable {
        /// The channel.
        channel: ChannelId,
    },
    /// A channel closed (we or the peer closed it, or the connection ended).
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
    },
    /// ICE lost the peer (consent expired, RFC 7675); str0m keeps checking.
    Disconnected,
    /// The peer is over: a DTLS failure (a certificate that is not the one signed, say), a
    /// protocol error, or [`Peer::close`]. Nothing more happens.
    Failed(String),
}

/// Why a [`Peer::send`] did not queue the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full; wait for [`Event::Writable`].
    Blocked,
    /// Longer than the peer accepts (its `max-message-size`).
    TooLong,
    /// The channel is not open (yet, or any more).
    NotOpen,
}

/// Why a setup call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The SDP could not be parsed or did not fit (the peer's fault).
    Sdp(String),
    /// The call does not fit the peer's state (the caller's fault).
    State(&'static str),
    /// str0m refused (a local problem, such as an address it cannot use).
    Rtc(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Sdp(e) => write!(f, "bad SDP: {e}"),
            Error::State(e) => write!(f, "not now: {e}"),
            Error::Rtc(e) => write!(f, "WebRTC: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Counters of what a peer dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that were not STUN, DTLS, RTP or RTCP (RFC 7983 demux).
    pub unparsable: u64,
    /// Datagrams this peer does not accept (not from a known candidate, wrong ufrag).
    pub foreign: u64,
}

/// One channel's state on our side.
#[derive(Debug)]
struct Chan {
    rtc: RtcChannel,
    open: bool,
    /// A send was refused for lack of room: say `Writable` once there is some.
    blocked: bool,
    /// A graceful close waits for the queue to drain until this instant.
    closing: Option<Instant>,
    /// The stream reset was asked for.
    reset: bool,
}

/// One WebRTC peer connection's data channels. See the crate docs.
pub struct Peer {
    rtc: Rtc,
    config: Config,
    channels: BTreeMap<ChannelId, Chan>,
    next_channel: u32,
    transmits: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    timeout: Option<Instant>,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    over: bool,
    stats: Stats,
    now: Instant,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("connected", &self.connected)
            .field("over", &self.over)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Peer {
    fn build(
        now: Instant,
        identity: &Identity,
        config: &Config,
        ice: Option<IceCredentials>,
    ) -> Rtc {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(provider()))
            .set_dtls_cert(identity.cert.clone())
            .set_sctp_max_buffered_amount(config.max_buffered)
            .set_sctp_max_message_size(config.max_message)
            // Data channels only: no codecs in our SDP.
            .clear_codecs();
        if let Some(ice) = ice {
            rtc = rtc.set_local_ice_credentials(IceCreds {
                ufrag: ice.ufrag,
                pass: ice.pwd,
            });
        }
        rtc.build(now)
    }

    fn with(rtc: Rtc, config: Config, now: Instant) -> Peer {
        Peer {
            rtc,
            config,
            channels: BTreeMap::new(),
            next_channel: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timeout: None,
            pending: None,
            connected: false,
            over: false,
            stats: Stats::default(),
            now,
        }
    }

    /// A peer whose parameters were agreed elsewhere (no SDP). `channels` are opened once the
    /// association is up, negotiated in band (DCEP) by the active side only: the passive side
    /// passes none and learns the channels from [`Event::ChannelOpen`].
    pub fn direct(
        now: Instant,
        setup: DirectSetup,
        config: Config,
        channels: &[ChannelOptions],
    ) -> Result<(Peer, Vec<ChannelId>), Error> {
        let rtc = Self::build(now, &setup.identity, &config, Some(setup.local_ice.clone()));
        let mut peer = Peer::with(rtc, config, now);
        let local = Candidate::host(setup.local, "udp").map_err(|e| Error::Rtc(e.to_string()))?;
        let remote = Candidate::host(setup.remote, "udp").map_err(|e| Error::Rtc(e.to_string()))?;
        let active = setup.role == Role::Active;
        peer.rtc.add_local_candidate(local);
        peer.drain();
        peer.rtc.add_remote_candidate(remote);
        peer.drain();
        peer.start_direct(setup.remote_ice, &setup.remote_fingerprint, active)?;
        let mut ids = Vec::new();
        for options in channels {
            ids.push(peer.open_channel(now, options)?);
        }
        Ok((peer, ids))
    }

    /// The answering side of a browser's `RTCPeerConnection`, set up without SDP (the browser's
    /// SDP is translated elsewhere): DTLS server (`a=setup:passive` in the answer the browser
    /// sees), SCTP server, ICE controlled. The browser's own candidates (`remotes`, possibly
    /// none) are checked, and wherever its checks really come from it is learnt as a
    /// peer-reflexive candidate (RFC 8445 §7.3.1.3): how a browser behind mDNS host names or a
    /// NAT is reached. The browser opens the channels; they arrive as [`Event::ChannelOpen`].
    pub fn browser(now: Instant, setup: BrowserSetup, config: Config) -> Result<Peer, Error> {
        let rtc = Self::build(now, &setup.identity, &config, Some(setup.local_ice.clone()));
        let mut peer = Peer::with(rtc, config, now);
        peer.add_candidates(&setup.locals)?;
        for addr in &setup.remotes {
            // One the agent cannot take (a family we have no socket for) is left out.
            if let Ok(c) = Candidate::host(*addr, "udp") {
                peer.rtc.add_remote_candidate(c);
                peer.drain();
            }
        }
        peer.start_direct(setup.remote_ice, &setup.remote_fingerprint, false)?;
        Ok(peer)
    }

    /// Without SDP: the peer's ICE credentials and DTLS fingerprint, our ICE role, then DTLS
    /// and SCTP started (client and controlling when `active`).
    fn start_direct(
        &mut self,
        remote_ice: IceCredentials,
        remote_fingerprint: &[u8; 32],
        active: bool,
    ) -> Result<(), Error> {
        {
            let mut api = self.rtc.direct_api();
            api.set_remote_ice_credentials(IceCreds {
                ufrag: remote_ice.ufrag,
                pass: remote_ice.pwd,
            });
            api.set_remote_fingerprint(Fingerprint {
                hash_func: HASH.into(),
                bytes: remote_fingerprint.to_vec(),
            });
            api.set_ice_controlling(active);
        }
        self.drain();
        self.rtc
            .direct_api()
            .start_dtls(active)
            .map_err(|e| Error::Rtc(e.to_string()))?;
        self.drain();
        self.rtc.direct_api().start_sctp(active);
        self.drain();
        Ok(())
    }

    /// An SDP offerer with one data channel (an offer needs its `m=application` line) and the
    /// given host candidates: the offer to send, and the channel.
    pub fn offer(
        now: Instant,
        identity: &Identity,
        config: Config,
        candidates: &[SocketAddr],
        first: ChannelOptions,
    ) -> Result<(Peer, String, ChannelId), Error> {
        let rtc = Self::build(now, identity, &config, None);
        let mut peer = Peer::with(rtc, config, now);
        peer.add_candidates(candidates)?;
        let mut api = peer.rtc.sdp_api();
        let rtc_channel = api.add_channel_with_config(first.to_config());
        let (offer, pending) = api.apply().ok_or(Error::State("no offer to make"))?;
        peer.pending = Some(pending);
        peer.drain();
        let id = peer.track(rtc_channel);
        Ok((peer, offer.to_sdp_string(), id))
    }

    /// The offerer takes the answer (SDP).
    pub fn accept_answer(&mut self, now: Instant, answer: &str) -> Result<(), Error> {
        self.now = self.now.max(now);
        let pending = self
            .pending
            .take()
            .ok_or(Error::State("no offer pending"))?;
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| Error::Sdp(e.to_string()))?;
        let result = self.rtc.sdp_api().accept_answer(pending, answer);
        self.drain();
        result.map_err(|e| Error::Sdp(e.to_string()))
    }

    /// An SDP answerer: takes the offer, returns the answer. The offerer's channels arrive as
    /// [`Event::ChannelOpen`].
    pub fn answer(
        now: Instant,
        identity: &Identity,
        config: Config,
        candidates: &[SocketAddr],
        offer: &str,
    ) -> Result<(Peer, String), Error> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| Error::Sdp(e.to_string()))?;
        let rtc = Self::build(now, identity, &config, None);
        let mut peer = Peer::with(rtc, config, now);
        peer.add_candidates(candidates)?;
        let answer = peer.rtc.sdp_api().accept_offer(offer);
        peer.drain();
        let answer = answer.map_err(|e| Error::Sdp(e.to_string()))?;
        Ok((peer, answer.to_sdp_string()))
    }

    fn add_candidates(&mut self, candidates: &[SocketAddr]) -> Result<(), Error> {
        for addr in candidates {
            let c = Candidate::host(*addr, "udp").map_err(|e| Error::Rtc(e.to_string()))?;
            self.rtc.add_local_candidate(c);
            self.drain();
        }
        Ok(())
    }

    /// Opens a channel (DCEP, RFC 8832 §5): [`Event::ChannelOpen`] when the peer acknowledged
    /// it. Before the association is up it waits for it.
    pub fn open_channel(
        &mut self,
        now: Instant,
        options: &ChannelOptions,
    ) -> Result<ChannelId, Error> {
        self.now = self.now.max(now);
        if self.over {
            return Err(Error::State("the peer is over"));
        }
        let rtc_channel = self
            .rtc
            .direct_api()
            .create_data_channel(options.to_config());
        self.drain();
        Ok(self.track(rtc_channel))
    }

    fn track(&mut self, rtc: RtcChannel) -> ChannelId {
        if let Some((id, _)) = self.channels.iter().find(|(_, c)| c.rtc == rtc) {
            return *id;
        }
        let id = ChannelId(self.next_channel);
        self.next_channel += 1;
        self.channels.insert(
            id,
            Chan {
                rtc,
                open: false,
                blocked: false,
                closing: None,
                reset: false,
            },
        );
        id
    }

    /// Queues one message on an open channel, whole or not at all.
    pub fn send(
        &mut self,
        now: Instant,
        channel: ChannelId,
        data: &[u8],
        binary: bool,
    ) -> Result<(), SendError> {
        self.now = self.now.max(now);
        let Some(chan) = self.channels.get_mut(&channel) else {
            return Err(SendError::NotOpen);
        };
        if !chan.open || chan.closing.is_some() || self.over {
            return Err(SendError::NotOpen);
        }
        if data.len() > self.config.max_message as usize {
            return Err(SendError::TooLong);
        }
        let rtc_channel = chan.rtc;
        let Some(mut writer) = self.rtc.channel(rtc_channel) else {
            return Err(SendError::NotOpen);
        };
        let written = writer.write(binary, data);
        self.drain();
        match written {
            Ok(true) => Ok(()),
            Ok(false) => {
                if let Some(chan) = self.channels.get_mut(&channel) {
                    chan.blocked = true;
                }
                Err(SendError::Blocked)
            }
            Err(str0m::RtcError::Sctp(_)) => Err(SendError::TooLong),
            Err(_) => Err(SendError::NotOpen),
        }
    }

    /// Bytes of `channel` not yet acknowledged by the peer (0 for an unknown channel).
    pub fn buffered(&mut self, channel: ChannelId) -> usize {
        let Some(chan) = self.channels.get(&channel) else {
            return 0;
        };
        let rtc_channel = chan.rtc;
        self.rtc
            .channel(rtc_channel)
            .map_or(0, |mut c| c.buffered_amount())
    }

    /// Whether a sender told [`SendError::Blocked`] may try again.
    pub fn has_room(&mut self, channel: ChannelId) -> bool {
        self.buffered(channel) < self.config.max_buffered / 2
    }

    /// Closes a channel gracefully: once what was queued is acknowledged (or
    /// [`Config::close_timeout`] passed), its SCTP stream is reset (RFC 8831 §6.7), and
    /// [`Event::ChannelClosed`] follows on both sides.
    pub fn close_channel(&mut self, now: Instant, channel: ChannelId) {
        self.now = self.now.max(now);
        let deadline = now + self.config.close_timeout;
        if let Some(chan) = self.channels.get_mut(&channel)
            && chan.closing.is_none()
        {
            chan.closing = Some(deadline);
        }
        self.progress_closes();
        self.drain();
    }

    /// Ends the whole peer at once (SCTP ABORT-free shutdown, DTLS close_notify); for a
    /// graceful end close the channels first. [`Event::Failed`] follows.
    pub fn close(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        let _ = self.rtc.close();
        self.drain();
        if !self.over {
            self.finish("closed".into());
        }
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the peer ended ([`Event::Failed`] was queued).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// What was dropped so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The certificate fingerprint the peer presented, once DTLS got that far.
    pub fn remote_fingerprint(&mut self) -> Option<[u8; 32]> {
        let f = self.rtc.direct_api().remote_dtls_fingerprint()?.clone();
        <[u8; 32]>::try_from(f.bytes.as_slice()).ok()
    }

    /// Resets channels whose graceful close has drained or timed out.
    fn progress_closes(&mut self) {
        let closing: Vec<(ChannelId, RtcChannel, Instant)> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.reset)
            .filter_map(|(id, c)| c.closing.map(|d| (*id, c.rtc, d)))
            .collect();
        for (id, rtc, deadline) in closing {
            let buffered = self.rtc.channel(rtc).map_or(0, |mut c| c.buffered_amount());
            if buffered > 0 && self.now < deadline {
                continue;
            }
            if let Some(chan) = self.channels.get_mut(&id) {
                // Once: str0m's ChannelClose reports the reset done.
                chan.reset = true;
            }
            self.rtc.direct_api().close_data_channel(rtc);
            self.drain();
        }
    }

    /// Takes everything str0m has to say until its next deadline (its single-mutation
    /// contract: every mutation is followed by a full drain).
    fn drain(&mut self) {
        if self.over {
            return;
        }
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = Some(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if t.proto == Protocol::Udp {
                        self.transmits
                            .push_back((t.source, t.destination, t.contents.to_vec()));
                    }
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    self.finish(e.to_string());
                    return;
                }
            }
        }
        if !self.rtc.is_alive() && !self.over {
            self.finish("the connection ended".into());
        }
    }

    fn on_event(&mut self, event: str0m::Event) {
        match event {
            str0m::Event::Connected => {
                self.connected = true;
                self.events.push_back(Event::Connected);
            }
            str0m::Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.events.push_back(Event::Disconnected);
            }
            str0m::Event::ChannelOpen(rtc, label) => {
                let id = self.track(rtc);
                if let Some(chan) = self.channels.get_mut(&id) {
                    chan.open = true;
                }
                self.events
                    .push_back(Event::ChannelOpen { channel: id, label });
            }
            str0m::Event::ChannelData(d) => {
                let id = self.track(d.id);
                self.events.push_back(Event::Message {
                    channel: id,
                    binary: d.binary,
                    data: d.data,
                });
            }
            str0m::Event::ChannelClose(rtc) => {
                let found = self
                    .channels
                    .iter()
                    .find(|(_, c)| c.rtc == rtc)
                    .map(|(id, _)| *id);
                if let Some(id) = found {
                    self.channels.remove(&id);
                    self.events.push_back(Event::ChannelClosed { channel: id });
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, why: String) {
        self.over = true;
        self.timeout = None;
        for (id, _) in std::mem::take(&mut self.channels) {
            self.events.push_back(Event::ChannelClosed { channel: id });
        }
        self.events.push_back(Event::Failed(why));
    }

    /// Says `Writable` for channels that were blocked and have room again.
    fn check_writable(&mut self) {
        let blocked: Vec<(ChannelId, RtcChannel)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.blocked)
            .map(|(id, c)| (*id, c.rtc))
            .collect();
        for (id, rtc) in blocked {
            let buffered = self.rtc.channel(rtc).map_or(0, |mut c| c.buffered_amount());
            if buffered < self.config.max_buffered / 2 {
                if let Some(chan) = self.channels.get_mut(&id) {
                    chan.blocked = false;
                }
                self.events.push_back(Event::Writable { channel: id });
            }
        }
    }

    fn after_input(&mut self) {
        self.drain();
        self.progress_closes();
        self.drain();
        self.check_writable();
    }
}

impl SansIo for Peer {
    type Event = Event;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        let Ok(contents) = packet.payload.try_into() else {
            return false;
        };
        let input = Input::Receive(
            self.now,
            str0m::net::Receive {
                proto: Protocol::Udp,
                source: packet.source,
                destination: packet.local,
                contents,
            },
        );
        self.rtc.accepts(&input)
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        // RFC 7983 §7: STUN, DTLS, RTP/RTCP by the first byte; anything else is not ours.
        let Ok(contents) = packet.payload.try_into() else {
            self.stats.unparsable += 1;
            return;
        };
        let input = Input::Receive(
            self.now,
            str0m::net::Receive {
                proto: Protocol::Udp,
                source: packet.source,
                destination: packet.local,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            self.stats.foreign += 1;
            return;
        }
        if let Err(e) = self.rtc.handle_input(input) {
            self.drain();
            if !self.over {
                self.finish(e.to_string());
            }
            return;
        }
        self.after_input();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(self.now)) {
            self.drain();
            if !self.over {
                self.finish(e.to_string());
            }
            return;
        }
        self.after_input();
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (source, destination, data) = self.transmits.pop_front()?;
            // A datagram that does not fit is dropped (str0m keeps to its MTU, far below any
            // driver's buffer).
            let Some(out) = buf.get_mut(..data.len()) else {
                continue;
            };
            out.copy_from_slice(&data);
            let mut t = Transmit::new(destination, data.len());
            t.source = Some(source);
            return Some(t);
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let closing = self
            .channels
            .values()
            .filter(|c| !c.reset)
            .filter_map(|c| c.closing)
            .min();
        match (self.timeout, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
