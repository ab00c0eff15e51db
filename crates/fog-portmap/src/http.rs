//! The HTTP/1.1 (RFC 9112) a UPnP control point needs: `http://` URLs, one request per
//! connection (`Connection: close`), and a bounded response reader that understands
//! `Content-Length`, `chunked` (RFC 9112 §7.1) and a body that ends with the connection.

use crate::ParseError;

/// An `http://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The host as written (an IPv4 address, a bracketed IPv6 address or a name).
    pub host: String,
    /// The port (80 when absent, RFC 9110 §4.2.1).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute `http://` URL (RFC 9110 §4.2.1); `https` and userinfo are refused.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        let rest = text
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .map(|_| &text[7..])
            .ok_or(ParseError::Url)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(ParseError::Url);
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let end = bracketed.find(']').ok_or(ParseError::Url)?;
            let after = &bracketed[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| ParseError::Url)?,
                None if after.is_empty() => 80,
                None => return Err(ParseError::Url),
            };
            (&authority[..end + 2], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| ParseError::Url)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::Url);
        }
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::Url);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `reference` (an absolute URL, an absolute path or a relative path, as UPnP
    /// descriptions write a controlURL) resolved against `self` (RFC 3986 §5.2, the cases
    /// devices use).
    pub fn join(&self, reference: &str) -> Result<Self, ParseError> {
        let reference = reference.trim();
        // `get`, not indexing: byte 7 may fall inside a character of hostile text.
        if reference
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
        {
            return Self::parse(reference);
        }
        if reference.contains("://") || reference.is_empty() {
            return Err(ParseError::Url);
        }
        let path = if reference.starts_with('/') {
            reference.to_owned()
        } else {
            let dir = self.path.rfind('/').map_or("/", |i| &self.path[..=i]);
            format!("{dir}{reference}")
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::Url);
        }
        Ok(Self {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }
}

/// Builds a request; `host` is the `Host` header's value (RFC 9112 §3.2).
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Collects a response's bytes as they arrive, refusing more than its limit.
#[derive(Debug)]
pub struct ResponseReader {
    buf: Vec<u8>,
    limit: usize,
}

impl ResponseReader {
    /// A reader that refuses responses longer than `limit` bytes (headers and body, as sent).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Takes more bytes; returns the response once it is complete. `eof` says the peer closed
    /// the connection after these bytes.
    pub fn push(&mut self, data: &[u8], eof: bool) -> Result<Option<Response>, ParseError> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(ParseError::TooLong);
        }
        self.buf.extend_from_slice(data);
        parse_response(&self.buf, eof)
    }
}

/// Parses `bytes` as one response; `Ok(None)` while more may come (`eof` false).
pub fn parse_response(bytes: &[u8], eof: bool) -> Result<Option<Response>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => return Err(ParseError::Truncated),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ParseError::Http),
    };
    let status = response.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).map_err(|_| ParseError::Http)?;
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ParseError::Http)?,
            );
        }
    }
    let rest = &bytes[head..];
    // RFC 9112 §6.3: chunked wins over Content-Length; neither means "until the close".
    if chunked {
        return match dechunk(rest)? {
            Some(body) => Ok(Some(Response { status, body })),
            None if eof => Err(ParseError::Truncated),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if rest.len() >= n => Ok(Some(Response {
            status,
            body: rest[..n].to_vec(),
        })),
        Some(_) if eof => Err(ParseError::Truncated),
        Some(_) => Ok(None),
        None if eof => Ok(Some(Response {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1); `None` until the last chunk has arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, ParseError> {
    let mut body = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ParseError::Http),
        };
        rest = &rest[used..];
        if size == 0 {
            // Trailers are not read: the body is complete.
            return Ok(Some(body));
        }
        let size = usize::try_from(size).map_err(|_| ParseError::TooLong)?;
        if rest.len() < size.saturating_add(2) {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err(ParseError::Http);
        }
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("192.168.1.1", 5000, "/rootDesc.xml")
        );
        let u = Url::parse("HTTP://router.lan").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("router.lan", 80, "/")
        );
        let u = Url::parse("http://[fe80::1]:80/a").unwrap();
        assert_eq!(u.host, "[fe80::1]");
        for bad in [
            "https://x/",
            "http://",
            "http://a:b/",
            "http://u@h/",
            "ftp://x",
            "http://h/ a",
        ] {
            assert_eq!(Url::parse(bad), Err(ParseError::Url), "{bad}");
        }
        let base = Url::parse("http://10.0.0.1:49152/dev/desc.xml").unwrap();
        assert_eq!(base.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(base.join("ctl").unwrap().path, "/dev/ctl");
        assert_eq!(base.join("http://10.0.0.2:1/x").unwrap().host, "10.0.0.2");
        assert!(base.join("").is_err());
        // Found by the portmap_http fuzz target: a character across byte 7 panicked.
        // Found by the portmap_http fuzz target: a character across byte 7 panicked. Paths
        // must be ASCII (RFC 3986 §2: others are percent-encoded), so these are refused.
        assert_eq!(base.join("/ct,\u{51615}s"), Err(ParseError::Url));
        assert!(base.join("abc\u{51615}").is_err());
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let mut r = ResponseReader::new(1000);
        assert_eq!(
            r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false),
            Ok(None)
        );
        assert_eq!(
            r.push(b"cde", false),
            Ok(Some(Response {
                status: 200,
                body: b"abcde".to_vec()
            }))
        );
        let chunked = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false),
            Ok(Some(Response {
                status: 500,
                body: b"abcde".to_vec()
            }))
        );
        assert_eq!(
            parse_response(&chunked[..chunked.len() - 7], false),
            Ok(None)
        );
        assert_eq!(
            parse_response(&chunked[..chunked.len() - 7], true),
            Err(ParseError::Truncated)
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\nxyz", true),
            Ok(Some(Response {
                status: 200,
                body: b"xyz".to_vec()
            }))
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\nxyz", false),
            Ok(None)
        );
        assert_eq!(
            parse_response(b"garbage\r\n\r\n", false),
            Err(ParseError::Http)
        );
        let mut small = ResponseReader::new(10);
        assert_eq!(
            small.push(b"HTTP/1.1 200 OK\r\n", false),
            Err(ParseError::TooLong)
        );
        let req = request(
            "POST",
            "1.2.3.4:5",
            "/c",
            &[("SOAPAction", "\"a#b\"")],
            b"xy",
        );
        assert_eq!(
            req,
            b"POST /c HTTP/1.1\r\nHost: 1.2.3.4:5\r\nConnection: close\r\nSOAPAction: \"a#b\"\r\nContent-Length: 2\r\n\r\nxy"
        );
    }
}
