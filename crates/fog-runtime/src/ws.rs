//! The signaling connection's transport: a `ws://` or `wss://` URL and a blocking WebSocket
//! over TCP, through TLS (rustls on ring) for `wss://`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use tungstenite::WebSocket;
use tungstenite::protocol::WebSocketConfig;

/// Frames larger than this from the server close the connection. fogd's own limit for frames it
/// accepts is 16 KiB; what it sends is smaller still.
pub const MAX_FRAME: usize = 64 * 1024;

/// A parsed `ws://HOST[:PORT][/PATH]` or `wss://HOST[:PORT][/PATH]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalUrl {
    /// `wss://`: the WebSocket runs over TLS, and the server's certificate must be valid for
    /// the host.
    pub tls: bool,
    /// The host as written (a name, an IPv4 address or a bracketed IPv6 address).
    pub host: String,
    /// The port (default 7600, fogd's).
    pub port: u16,
    /// The path (default `/ws`).
    pub path: String,
}

/// fogd's default signaling port.
pub const DEFAULT_SIGNAL_PORT: u16 = 7600;

impl std::str::FromStr for SignalUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = match (s.strip_prefix("ws://"), s.strip_prefix("wss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("'{s}' does not start with ws:// or wss://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        if authority.is_empty() {
            return Err(format!("'{s}' names no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{s}': unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None if after.is_empty() => DEFAULT_SIGNAL_PORT,
                None => return Err(format!("'{s}': unexpected '{after}' after the host")),
            };
            (format!("[{addr}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host.to_owned(), parse_port(p)?),
                None => (authority.to_owned(), DEFAULT_SIGNAL_PORT),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("'{s}' names no host"));
        }
        Ok(SignalUrl {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("'{p}' is not a port (1-65535)")),
    }
}

impl fmt::Display for SignalUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
    }
}

impl SignalUrl {
    /// The host without IPv6 brackets: the realm the client signs into its auth transcript.
    pub fn realm(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Why a WebSocket to the signaling server could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Name resolution or the TCP connect failed.
    Connect(String),
    /// The WebSocket upgrade failed (wrong path, not a WebSocket server, ...).
    Handshake(String),
    /// A socket option could not be set.
    Io(io::Error),
    /// TLS could not start: a bad server name, or roots that cannot be used.
    Tls(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "cannot reach the signaling server: {e}"),
            OpenError::Handshake(e) => write!(f, "the WebSocket handshake failed: {e}"),
            OpenError::Io(e) => write!(f, "the signaling connection broke: {e}"),
            OpenError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Which certificate authorities a `wss://` connection trusts.
#[derive(Clone)]
pub struct TlsRoots {
    /// `None`: Mozilla's roots, whose configuration is built on the first `wss://` open (a
    /// `ws://` node never runs rustls; building it at start paged in about 0.5 MiB of
    /// rustls, ring and webpki code, which an idle node then held: the memory bench).
    config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsRoots")
    }
}

impl Default for TlsRoots {
    /// Mozilla's root program (webpki-roots): what a public server's certificate chains to.
    fn default() -> Self {
        TlsRoots { config: None }
    }
}

impl TlsRoots {
    /// Only these certificates (a private CA, or a server's self-signed certificate).
    pub fn trusting(
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, OpenError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates {
            roots
                .add(cert)
                .map_err(|e| OpenError::Tls(format!("an unusable root certificate: {e}")))?;
        }
        Ok(TlsRoots::from_store(roots))
    }

    /// The certificates of a PEM file (`-----BEGIN CERTIFICATE-----` blocks).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, OpenError> {
        use rustls::pki_types::pem::PemObject as _;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| OpenError::Tls(format!("{}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| OpenError::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(OpenError::Tls(format!(
                "{}: no certificate",
                path.display()
            )));
        }
        TlsRoots::trusting(certs)
    }

    fn from_store(roots: rustls::RootCertStore) -> Self {
        TlsRoots {
            config: Some(client_config(roots)),
        }
    }

    /// The client configuration: these roots, or Mozilla's, built once per process.
    fn config(&self) -> Arc<rustls::ClientConfig> {
        static MOZILLA: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
        match &self.config {
            Some(config) => config.clone(),
            None => MOZILLA
                .get_or_init(|| {
                    client_config(rustls::RootCertStore::from_iter(
                        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                    ))
                })
                .clone(),
        }
    }
}

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The ring provider supports the safe default versions; this cannot fail.
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"));
    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The signaling connection's byte stream: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum SignalStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl SignalStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            SignalStream::Plain(s) => s,
            SignalStream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for SignalStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SignalStream::Plain(s) => s.read(buf),
            SignalStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for SignalStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SignalStream::Plain(s) => s.write(buf),
            SignalStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SignalStream::Plain(s) => s.flush(),
            SignalStream::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `url` within `timeout` and upgrades to a WebSocket (through TLS for `wss://`,
/// trusting `roots`); returns it with the local address of the TCP connection (the interface
/// that reaches the server).
pub fn open_websocket(
    url: &SignalUrl,
    timeout: Duration,
    roots: &TlsRoots,
) -> Result<(WebSocket<SignalStream>, SocketAddr), OpenError> {
    let addrs: Vec<SocketAddr> = (url.realm(), url.port)
        .to_socket_addrs()
        .map_err(|e| OpenError::Connect(format!("{}: {e}", url.host)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    let stream = stream.ok_or_else(|| {
        OpenError::Connect(last.unwrap_or_else(|| format!("{} has no address", url.host)))
    })?;
    stream.set_nodelay(true).map_err(OpenError::Io)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(OpenError::Io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(OpenError::Io)?;
    let local = stream.local_addr().map_err(OpenError::Io)?;
    let stream = if url.tls {
        let name = ServerName::try_from(url.realm().to_owned())
            .map_err(|e| OpenError::Tls(format!("{}: {e}", url.host)))?;
        let client = rustls::ClientConnection::new(roots.config(), name)
            .map_err(|e| OpenError::Tls(e.to_string()))?;
        SignalStream::Tls(Box::new(rustls::StreamOwned::new(client, stream)))
    } else {
        SignalStream::Plain(stream)
    };
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _response) =
        tungstenite::client::client_with_config(url.to_string(), stream, Some(ws_config))
            .map_err(|e| OpenError::Handshake(handshake_error(&e)))?;
    Ok((ws, local))
}

fn handshake_error<S: tungstenite::handshake::HandshakeRole>(
    e: &tungstenite::HandshakeError<S>,
) -> String {
    match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            format!("the server answered HTTP {}", response.status())
        }
        tungstenite::HandshakeError::Failure(e) => e.to_string(),
        tungstenite::HandshakeError::Interrupted(_) => "timed out".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<(String, u16, String), String> {
        s.parse::<SignalUrl>().map(|u| (u.host, u.port, u.path))
    }

    #[test]
    fn urls() {
        assert_eq!(
            url("ws://127.0.0.1:7600/ws"),
            Ok(("127.0.0.1".into(), 7600, "/ws".into()))
        );
        assert_eq!(
            url("ws://example.org"),
            Ok(("example.org".into(), 7600, "/ws".into()))
        );
        assert_eq!(url("ws://[::1]:9/x"), Ok(("[::1]".into(), 9, "/x".into())));
        assert_eq!(url("ws://[::1]"), Ok(("[::1]".into(), 7600, "/ws".into())));
        assert_eq!(
            "ws://[::1]:9/x".parse::<SignalUrl>().unwrap().realm(),
            "::1"
        );
        assert_eq!(
            "ws://h:1/ws".parse::<SignalUrl>().unwrap().to_string(),
            "ws://h:1/ws"
        );
        for bad in [
            "http://h/ws",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:x",
            "ws://[::1",
            "ws://[::1]x",
            "ws://[]:1",
        ] {
            assert!(url(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(url("wss://h/ws"), Ok(("h".into(), 7600, "/ws".into())));
        let secure = "wss://h:443/ws".parse::<SignalUrl>().unwrap();
        assert!(secure.tls);
        assert_eq!(secure.to_string(), "wss://h:443/ws");
        assert!(!"ws://h/ws".parse::<SignalUrl>().unwrap().tls);
    }
}
