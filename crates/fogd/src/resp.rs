//! Redis replies (RESP2, the "Redis serialization protocol specification" page of the Redis
//! docs) read incrementally from a non-blocking socket: the cluster's fast path, where the
//! signaling loop itself writes `EVALSHA`s and reads their replies and the frames published to
//! its channel, without a thread in between.
//!
//! Only what those connections carry is accepted: integers, simple strings, errors, bulk
//! strings and arrays two deep (a published message is an array of three bulk strings), each
//! bounded; anything else is an error, and the caller drops the connection. Self-contained (it
//! depends on nothing else in fogd) so that `fuzz/fuzz_targets/fogd_resp.rs` includes it whole.

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `:<n>`.
    Int(i64),
    /// `+<text>`.
    Simple(Vec<u8>),
    /// `-<text>`: the command failed.
    Error(Vec<u8>),
    /// `$<len>` and the bytes, or `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*<n>` and the values, or `*-1` (`None`).
    Array(Option<Vec<Value>>),
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error {
    /// Not RESP2 as Redis writes it.
    Malformed,
    /// Longer, wider or deeper than the bounds below.
    TooLarge,
}

/// The longest bulk string: a forwarded frame is at most twice the signaling frame limit.
pub(crate) const MAX_BULK: usize = 1 << 20;
/// The longest header line (`:<i64>`, `$<len>`, an error's text).
const MAX_LINE: usize = 512;
/// The widest array (a published message has 3 elements, a subscription confirmation 3).
const MAX_ARRAY: usize = 16;
/// How deep arrays nest.
const MAX_DEPTH: usize = 2;

/// Parses one value at the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` when
/// `buf` holds only part of it (read more and call again with the whole buffer).
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, Error> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Value, usize)>, Error> {
    let Some((&kind, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let Some(end) = rest.windows(2).take(MAX_LINE).position(|w| w == b"\r\n") else {
        return if rest.len() > MAX_LINE {
            Err(Error::TooLarge)
        } else {
            Ok(None)
        };
    };
    let line = &rest[..end];
    let used = 1 + end + 2;
    match kind {
        b':' => Ok(Some((Value::Int(number(line)?), used))),
        b'+' => Ok(Some((Value::Simple(line.to_vec()), used))),
        b'-' => Ok(Some((Value::Error(line.to_vec()), used))),
        b'$' => {
            let len = number(line)?;
            if len == -1 {
                return Ok(Some((Value::Bulk(None), used)));
            }
            let len = usize::try_from(len).map_err(|_| Error::Malformed)?;
            if len > MAX_BULK {
                return Err(Error::TooLarge);
            }
            let Some(body) = buf.get(used..used + len + 2) else {
                return Ok(None);
            };
            if &body[len..] != b"\r\n" {
                return Err(Error::Malformed);
            }
            Ok(Some((
                Value::Bulk(Some(body[..len].to_vec())),
                used + len + 2,
            )))
        }
        b'*' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Some((Value::Array(None), used)));
            }
            let n = usize::try_from(n).map_err(|_| Error::Malformed)?;
            if n > MAX_ARRAY || depth >= MAX_DEPTH {
                return Err(Error::TooLarge);
            }
            let mut items = Vec::with_capacity(n);
            let mut at = used;
            for _ in 0..n {
                let Some((item, len)) = parse_at(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += len;
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(Error::Malformed),
    }
}

/// A decimal integer as Redis writes one: an optional `-`, then digits.
fn number(line: &[u8]) -> Result<i64, Error> {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed);
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Error::Malformed)
}

/// A command as RESP2 sends it: an array of bulk strings.
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn replies_parse_whole_and_wait_when_cut() {
        let message = b"*3\r\n$7\r\nmessage\r\n$9\r\nfog:ch:a1\r\n$5\r\nf x y\r\n:1\r\n";
        let want = Value::Array(Some(vec![
            bulk("message"),
            bulk("fog:ch:a1"),
            bulk("f x y"),
        ]));
        assert_eq!(parse(message), Ok(Some((want, message.len() - 4))));
        // Every cut short of the whole first value asks for more.
        for cut in 0..message.len() - 4 {
            assert_eq!(parse(&message[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(b":-12\r\n"), Ok(Some((Value::Int(-12), 6))));
        assert_eq!(
            parse(b"-NOSCRIPT x\r\n"),
            Ok(Some((Value::Error(b"NOSCRIPT x".to_vec()), 13)))
        );
        assert_eq!(
            parse(b"+OK\r\n"),
            Ok(Some((Value::Simple(b"OK".to_vec()), 5)))
        );
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Value::Bulk(None), 5))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((Value::Array(None), 5))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Some((bulk(""), 6))));
    }

    #[test]
    fn bad_or_oversized_replies_are_refused() {
        for bad in [
            &b"?x\r\n"[..],
            b":\r\n",
            b":1x\r\n",
            b":--1\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-2\r\n",
        ] {
            assert_eq!(parse(bad), Err(Error::Malformed), "{bad:?}");
        }
        assert_eq!(parse(b"*17\r\n"), Err(Error::TooLarge));
        assert_eq!(parse(b"*1\r\n*1\r\n*1\r\n"), Err(Error::TooLarge));
        assert_eq!(
            parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()),
            Err(Error::TooLarge)
        );
        assert_eq!(parse(&[b'+'; 600]), Err(Error::TooLarge));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"PING", b"a b"]),
            b"*2\r\n$4\r\nPING\r\n$3\r\na b\r\n"
        );
    }
}
