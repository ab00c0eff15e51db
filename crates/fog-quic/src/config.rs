//! What an [`Endpoint`](crate::Endpoint) is configured with.

use std::fmt;
use std::time::Duration;

use crate::identity::AcceptPolicy;

/// The endpoint's configuration. [`Config::default`] suits a FogConnect node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The services this endpoint accepts connections for, each offered as the ALPN protocol
    /// `fog/<service>`. Empty: the endpoint only dials, and incoming handshakes are dropped.
    pub services: Vec<u16>,
    /// Which peers may complete a handshake this endpoint did not start.
    pub accept: AcceptPolicy,
    /// At most this many connections at once, incoming and outgoing; more incoming handshakes
    /// are refused (QUIC `CONNECTION_REFUSED`), more dials fail with
    /// [`ConnectError::TooManyConnections`](crate::ConnectError::TooManyConnections).
    pub max_connections: usize,
    /// A connection that hears nothing for this long is closed (RFC 9000 §10.1; the smaller of
    /// both peers' values applies).
    pub idle_timeout: Duration,
    /// Send a PING after this much quiet, to keep NAT bindings open; `None` sends none.
    pub keep_alive: Option<Duration>,
    /// The largest UDP payload sent (RFC 9000 §14: at least 1200), also advertised as our
    /// `max_udp_payload_size` so peers keep to it. Path MTU discovery is off: a relayed path
    /// (TURN adds its own headers) cannot promise unfragmented delivery of more.
    pub initial_mtu: u16,
    /// Bytes a peer may send on one stream beyond what the application has read.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on all streams of a connection beyond what has been read.
    pub receive_window: u32,
    /// Bytes the application may queue for sending on a connection before writes say
    /// [`StreamError::Blocked`](crate::StreamError::Blocked).
    pub send_window: u64,
    /// Streams of each direction a peer may have open at once.
    pub max_streams: u32,
    /// Bytes of received datagrams kept until read; older ones are dropped past it. Zero
    /// turns datagrams off (the peer learns it from the transport parameters).
    pub datagram_receive_buffer: usize,
    /// Bytes of datagrams queued for sending before sends say
    /// [`DatagramError::Blocked`](crate::DatagramError::Blocked).
    pub datagram_send_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            services: Vec::new(),
            accept: AcceptPolicy::Any,
            max_connections: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            initial_mtu: 1200,
            stream_receive_window: 1024 * 1024,
            receive_window: 4 * 1024 * 1024,
            send_window: 4 * 1024 * 1024,
            max_streams: 100,
            datagram_receive_buffer: 256 * 1024,
            datagram_send_buffer: 256 * 1024,
        }
    }
}

impl Config {
    /// Accept connections for `service` too.
    pub fn with_service(mut self, service: u16) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// The largest datagram [`Endpoint::poll_transmit`](crate::Endpoint::poll_transmit) writes:
    /// its buffer must be at least this long.
    pub fn max_datagram_len(&self) -> usize {
        usize::from(self.initial_mtu)
    }
}

/// The ALPN protocol name of a service, `fog/<service>`.
pub fn alpn(service: u16) -> Vec<u8> {
    format!("fog/{service}").into_bytes()
}

/// The service an ALPN protocol name stands for, if it is one of ours.
pub fn service_of_alpn(alpn: &[u8]) -> Option<u16> {
    let digits = alpn.strip_prefix(b"fog/")?;
    let text = std::str::from_utf8(digits).ok()?;
    // Exactly the decimal form `alpn` writes: no sign, no leading zeros.
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) || text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

/// Why a [`Config`] or identity could not make an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `initial_mtu` is below QUIC's minimum of 1200 (RFC 9000 §14).
    MtuTooSmall(u16),
    /// `initial_mtu` is above the largest UDP payload, 65527 (RFC 9000 §18.2).
    MtuTooLarge(u16),
    /// `idle_timeout` does not fit QUIC's 62-bit millisecond field (RFC 9000 §18.2).
    IdleTimeoutTooLarge(Duration),
    /// `max_connections` is zero.
    NoConnections,
    /// The identity certificate or TLS configuration could not be built.
    Tls(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MtuTooSmall(mtu) => {
                write!(f, "initial MTU {mtu} is below QUIC's minimum of 1200")
            }
            ConfigError::MtuTooLarge(mtu) => {
                write!(
                    f,
                    "initial MTU {mtu} is above the largest UDP payload of 65527"
                )
            }
            ConfigError::IdleTimeoutTooLarge(t) => write!(f, "idle timeout {t:?} is too large"),
            ConfigError::NoConnections => f.write_str("max_connections must be at least 1"),
            ConfigError::Tls(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_round_trips_and_rejects_look_alikes() {
        for service in [0, 1, 7, 443, u16::MAX] {
            assert_eq!(service_of_alpn(&alpn(service)), Some(service));
        }
        assert_eq!(alpn(7), b"fog/7");
        for bad in [
            &b"fog/"[..],
            b"fog/07",
            b"fog/+7",
            b"fog/65536",
            b"h3",
            b"fog/7 ",
            b"FOG/7",
        ] {
            assert_eq!(
                service_of_alpn(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
