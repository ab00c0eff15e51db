//! Typed errors, kept apart by who is to blame: the caller's misuse, a limit, or the peer.

use std::fmt;

use quinn_proto as qp;

/// Why [`Endpoint::connect`](crate::Endpoint::connect) could not start a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The caller named an address no one can be at (port 0, unspecified IP).
    InvalidRemote(std::net::SocketAddr),
    /// A local limit: [`Config::max_connections`](crate::Config::max_connections) are open, or
    /// connection ids ran out.
    TooManyConnections,
    /// The TLS configuration for this dial could not be built.
    Tls(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::InvalidRemote(a) => write!(f, "cannot dial {a}"),
            ConnectError::TooManyConnections => f.write_str("too many connections"),
            ConnectError::Tls(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why an operation on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    /// No such connection (never was, or drained).
    UnknownConnection,
    /// The connection is closed.
    Closed,
    /// An application error code must be below 2^62 (RFC 9000 §16).
    CodeTooLarge,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnError::UnknownConnection => "no such connection",
            ConnError::Closed => "connection closed",
            ConnError::CodeTooLarge => "error code must be below 2^62",
        })
    }
}

impl std::error::Error for ConnError {}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// No such connection (never was, or drained).
    UnknownConnection,
    /// The connection is closed.
    Closed,
    /// No such stream in this direction, or it is already finished or reset.
    UnknownStream,
    /// A unidirectional stream used the wrong way: a write to one the peer opened, or a read
    /// from one we opened.
    WrongDirection,
    /// Flow control or the send window is full (write), or nothing has arrived yet (read);
    /// [`Event::Writable`](crate::Event::Writable) or
    /// [`Event::Readable`](crate::Event::Readable) follows.
    Blocked,
    /// The peer allows no more streams of this kind now;
    /// [`Event::StreamsAvailable`](crate::Event::StreamsAvailable) follows.
    Limit,
    /// The peer asked us to stop sending (STOP_SENDING) with this code.
    Stopped(u64),
    /// The peer abandoned the stream (RESET_STREAM) with this code.
    Reset(u64),
    /// An application error code must be below 2^62 (RFC 9000 §16).
    CodeTooLarge,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::UnknownConnection => f.write_str("no such connection"),
            StreamError::Closed => f.write_str("connection closed"),
            StreamError::UnknownStream => f.write_str("no such stream, or it is closed"),
            StreamError::WrongDirection => {
                f.write_str("a unidirectional stream only carries data from its opener")
            }
            StreamError::Blocked => f.write_str("blocked: wait for the stream's event"),
            StreamError::Limit => f.write_str("the peer allows no more streams now"),
            StreamError::Stopped(code) => write!(f, "peer stopped the stream (code {code})"),
            StreamError::Reset(code) => write!(f, "peer reset the stream (code {code})"),
            StreamError::CodeTooLarge => f.write_str("error code must be below 2^62"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Why a datagram could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    /// No such connection (never was, or drained).
    UnknownConnection,
    /// The connection is closed.
    Closed,
    /// Larger than the path and the peer allow now.
    TooLarge {
        /// The largest datagram that fits now (0 before the handshake says).
        max: usize,
    },
    /// The peer does not take datagrams (RFC 9221 §3: no `max_datagram_frame_size`).
    UnsupportedByPeer,
    /// Datagrams are off in our [`Config`](crate::Config).
    Disabled,
    /// The send buffer is full; [`Event::DatagramsUnblocked`](crate::Event::DatagramsUnblocked)
    /// follows.
    Blocked,
}

impl fmt::Display for DatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatagramError::UnknownConnection => f.write_str("no such connection"),
            DatagramError::Closed => f.write_str("connection closed"),
            DatagramError::TooLarge { max } => write!(f, "datagram too large (max {max} bytes)"),
            DatagramError::UnsupportedByPeer => f.write_str("the peer takes no datagrams"),
            DatagramError::Disabled => f.write_str("datagrams are disabled"),
            DatagramError::Blocked => f.write_str("datagram send buffer full"),
        }
    }
}

impl std::error::Error for DatagramError {}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it ([`Endpoint::close`](crate::Endpoint::close)).
    Local,
    /// The peer's application closed it with this code and reason.
    ByPeer {
        /// The application error code.
        code: u64,
        /// The reason, as the peer sent it.
        reason: Vec<u8>,
    },
    /// Nothing was heard for the idle timeout (or the handshake never answered).
    TimedOut,
    /// The peers share no service: ALPN failed (TLS alert `no_application_protocol`, RFC 7301
    /// §3.2), on either side.
    ServiceMismatch,
    /// A certificate was not the expected identity, or not acceptable to the accept policy, or
    /// its handshake signature failed, on either side.
    IdentityRejected,
    /// The peer sent a stateless reset (RFC 9000 §10.3): it lost the connection's state.
    Reset,
    /// The peer speaks no QUIC version we do.
    VersionMismatch,
    /// Any other protocol error, detected here (`by_peer == false`) or reported by the peer.
    Protocol {
        /// The QUIC transport error code (RFC 9000 §20.1).
        code: u64,
        /// Whether the peer reported it.
        by_peer: bool,
        /// The text that came with it.
        reason: String,
    },
}

/// QUIC carries TLS alerts as transport errors 0x0100 + alert (RFC 9001 §4.8).
const CRYPTO_ERROR_BASE: u64 = 0x100;
/// RFC 8446 §6.2 alerts that mean "your certificate is not who I accept".
const IDENTITY_ALERTS: [u64; 8] = [
    42,  // bad_certificate
    43,  // unsupported_certificate
    46,  // certificate_unknown
    48,  // unknown_ca
    49,  // access_denied
    50,  // decode_error (a certificate that is not Ed25519 X.509)
    51,  // decrypt_error (a failed CertificateVerify signature)
    116, // certificate_required
];
/// RFC 7301 §3.2.
const NO_APPLICATION_PROTOCOL: u64 = 120;

impl CloseReason {
    fn from_code(code: u64, by_peer: bool, reason: String) -> Self {
        match code.checked_sub(CRYPTO_ERROR_BASE) {
            Some(NO_APPLICATION_PROTOCOL) => CloseReason::ServiceMismatch,
            Some(alert) if IDENTITY_ALERTS.contains(&alert) => CloseReason::IdentityRejected,
            _ => CloseReason::Protocol {
                code,
                by_peer,
                reason,
            },
        }
    }

    pub(crate) fn from_quinn(e: qp::ConnectionError) -> Self {
        match e {
            qp::ConnectionError::VersionMismatch => CloseReason::VersionMismatch,
            qp::ConnectionError::TransportError(t) => {
                CloseReason::from_code(u64::from(t.code), false, t.reason)
            }
            qp::ConnectionError::ConnectionClosed(c) => CloseReason::from_code(
                u64::from(c.error_code),
                true,
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            qp::ConnectionError::ApplicationClosed(c) => CloseReason::ByPeer {
                code: c.error_code.into_inner(),
                reason: c.reason.to_vec(),
            },
            qp::ConnectionError::Reset => CloseReason::Reset,
            qp::ConnectionError::TimedOut => CloseReason::TimedOut,
            qp::ConnectionError::LocallyClosed => CloseReason::Local,
            qp::ConnectionError::CidsExhausted => CloseReason::Protocol {
                code: 0,
                by_peer: false,
                reason: "connection ids exhausted".into(),
            },
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::ByPeer { code, reason } => write!(
                f,
                "closed by peer (code {code}): {}",
                String::from_utf8_lossy(reason)
            ),
            CloseReason::TimedOut => f.write_str("timed out"),
            CloseReason::ServiceMismatch => f.write_str("no common service (ALPN mismatch)"),
            CloseReason::IdentityRejected => f.write_str("peer identity rejected"),
            CloseReason::Reset => f.write_str("reset by peer (stateless reset)"),
            CloseReason::VersionMismatch => f.write_str("no common QUIC version"),
            CloseReason::Protocol {
                code,
                by_peer,
                reason,
            } => write!(
                f,
                "protocol error {code:#x}{}: {reason}",
                if *by_peer { " from peer" } else { "" }
            ),
        }
    }
}
