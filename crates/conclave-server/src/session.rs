//! The dashboard's session cookie: a name and a value derived from the admin token with
//! HMAC-SHA256, so that it survives server restarts, changes when the admin token is replaced, and
//! does not reveal the token. The auth middleware and the dashboard both use it, so it lives
//! apart from either.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The dashboard's session cookie for one admin token.
#[derive(Clone)]
pub struct DashboardSession {
    name: String,
    value: String,
}

impl DashboardSession {
    pub fn from_admin_token(admin_token: &str) -> DashboardSession {
        let key = admin_token.as_bytes();
        // The name differs between projects so that two servers on one host (cookies are not
        // scoped by port) do not overwrite each other's session.
        let name_id = hex(&hmac_sha256(key, b"conclave dashboard cookie name"));
        DashboardSession {
            name: format!("conclave_session_{}", &name_id[..12]),
            value: hex(&hmac_sha256(key, b"conclave dashboard session v1")),
        }
    }

    #[cfg(test)]
    pub(crate) fn cookie_name(&self) -> &str {
        &self.name
    }

    /// The `Set-Cookie` value that logs the browser in.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.name, self.value
        )
    }

    /// Whether the request carries this server's session cookie.
    pub fn is_presented(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| self.matches(name, value))
    }

    /// Whether a cookie `name=value` is this session's; the value is compared in constant time.
    fn matches(&self, name: &str, value: &str) -> bool {
        name == self.name && bool::from(value.as_bytes().ct_eq(self.value.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(error) => unreachable!("HMAC accepts any key length: {error}"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_session_matches_only_its_own_name_and_value() {
        let session = DashboardSession::from_admin_token("cva_secret");
        let other = DashboardSession::from_admin_token("cva_other");
        assert_ne!(session.cookie_name(), other.cookie_name());
        let cookie = session.set_cookie();
        let (name, rest) = cookie.split_once('=').expect("name=value");
        let value = rest.split(';').next().unwrap_or_default();
        assert!(session.matches(name, value));
        assert!(!other.matches(name, value));
        assert!(!session.matches(name, "00"));
        assert!(!session.matches(name, &value[..value.len() - 1]));
    }
}
