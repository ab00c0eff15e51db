//! Time-limited credentials in coturn's `use-auth-secret` scheme (the "TURN REST API" draft,
//! draft-uberti-behave-turn-rest-00 §2.2), which fog-signal hands out.
//!
//! The username is `"<expiry unix time>:<user>"` and the password is
//! `base64(HMAC-SHA1(secret, username))`. The server holds only the secret: it recomputes the
//! password from the username, so it keeps no user table, and it refuses a username whose expiry
//! has passed. The MESSAGE-INTEGRITY key is then the ordinary long-term one,
//! MD5(username ":" realm ":" password) (RFC 8489 §9.2.2), so any TURN client works unchanged.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};

/// The secret shared by the TURN server and whoever issues credentials (fog-signal's
/// `RelayConfig::secret`). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSecret(Vec<u8>);

impl AuthSecret {
    /// The secret with these bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The password for `username`: base64(HMAC-SHA1(secret, username)).
    pub fn password(&self, username: &str) -> String {
        // HMAC takes keys of any length; the error branch cannot happen.
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// A username valid until `expiry` (Unix seconds) for `user`, and its password: what a
    /// credential issuer hands a client.
    pub fn credentials(&self, expiry: u64, user: &str) -> (String, String) {
        let username = format!("{expiry}:{user}");
        let password = self.password(&username);
        (username, password)
    }
}

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthSecret(..)")
    }
}

/// A username of the scheme, split: when it expires and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedUsername<'a> {
    /// Unix seconds after which the username is refused.
    pub expiry: u64,
    /// The part after the colon (the whole username's user part; empty when there is none).
    /// Quotas per user count by it.
    pub user: &'a str,
}

impl<'a> TimedUsername<'a> {
    /// Splits `"<expiry>:<user>"` or a bare `"<expiry>"` (coturn accepts both); `None` for
    /// anything else, which the server refuses like a wrong password.
    pub fn parse(username: &'a str) -> Option<Self> {
        let (stamp, user) = match username.split_once(':') {
            Some((stamp, user)) => (stamp, user),
            None => (username, ""),
        };
        if stamp.is_empty() || stamp.len() > 20 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let expiry = stamp.parse().ok()?;
        Some(Self { expiry, user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same construction fog-signal's server uses, checked against a value computed
    /// independently: `printf %s '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64`.
    #[test]
    fn password_is_base64_hmac_sha1() {
        let secret = AuthSecret::new(b"secret".to_vec());
        let (username, password) = secret.credentials(1_700_000_000, "alice");
        assert_eq!(username, "1700000000:alice");
        assert_eq!(password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_ne!(
            password,
            AuthSecret::new(b"other".to_vec()).password(&username)
        );
        assert_eq!(format!("{secret:?}"), "AuthSecret(..)");
    }

    #[test]
    fn usernames_parse() {
        assert_eq!(
            TimedUsername::parse("1700000000:alice"),
            Some(TimedUsername {
                expiry: 1_700_000_000,
                user: "alice"
            })
        );
        assert_eq!(
            TimedUsername::parse("42"),
            Some(TimedUsername {
                expiry: 42,
                user: ""
            })
        );
        assert_eq!(TimedUsername::parse("alice:1700000000"), None);
        assert_eq!(TimedUsername::parse(":x"), None);
        assert_eq!(TimedUsername::parse("+5:x"), None);
        assert_eq!(TimedUsername::parse("99999999999999999999999:x"), None);
    }
}
