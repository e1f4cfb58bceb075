//! Stateless cookies for the HelloVerifyRequest exchange (RFC 6347 §4.2.1).
//!
//! `cookie = HMAC-SHA256(secret, peer address || client random)`. The secret
//! rotates every `lifetime`; a cookie made with the current or the previous
//! secret is accepted, so a cookie stays valid for between one and two
//! lifetimes. Nothing per peer is stored: the server recomputes the HMAC
//! when the second ClientHello arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// Length of the cookies this crate issues.
pub(crate) const COOKIE_LEN: usize = 32;

/// The current and previous HMAC secrets.
pub(crate) struct CookieSecrets {
    current: [u8; 32],
    previous: [u8; 32],
    rotated_at: Instant,
    lifetime: Duration,
}

impl CookieSecrets {
    pub(crate) fn new(now: Instant, lifetime: Duration) -> Result<Self, ErrorStack> {
        let mut current = [0u8; 32];
        let mut previous = [0u8; 32];
        openssl::rand::rand_bytes(&mut current)?;
        openssl::rand::rand_bytes(&mut previous)?;
        Ok(CookieSecrets {
            current,
            previous,
            rotated_at: now,
            lifetime,
        })
    }

    /// Replaces the previous secret by the current one and draws a new
    /// current secret once `lifetime` has passed.
    pub(crate) fn rotate_if_due(&mut self, now: Instant) -> Result<(), ErrorStack> {
        if now.saturating_duration_since(self.rotated_at) < self.lifetime {
            return Ok(());
        }
        let mut fresh = [0u8; 32];
        openssl::rand::rand_bytes(&mut fresh)?;
        self.previous = self.current;
        self.current = fresh;
        self.rotated_at = now;
        Ok(())
    }

    /// The cookie for `peer` and `client_random` under the current secret.
    pub(crate) fn issue(
        &self,
        peer: SocketAddr,
        client_random: &[u8; 32],
    ) -> Result<[u8; COOKIE_LEN], ErrorStack> {
        mac(&self.current, peer, client_random)
    }

    /// Whether `cookie` was issued for `peer` and `client_random` under the
    /// current or previous secret (constant-time comparison).
    pub(crate) fn verify(&self, peer: SocketAddr, client_random: &[u8; 32], cookie: &[u8]) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        [&self.current, &self.previous].into_iter().any(|secret| {
            mac(secret, peer, client_random)
                .map(|expected| openssl::memcmp::eq(&expected, cookie))
                .unwrap_or(false)
        })
    }
}

fn mac(
    secret: &[u8; 32],
    peer: SocketAddr,
    client_random: &[u8; 32],
) -> Result<[u8; COOKIE_LEN], ErrorStack> {
    let key = PKey::hmac(secret)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    match peer {
        SocketAddr::V4(v4) => {
            signer.update(&[4])?;
            signer.update(&v4.ip().octets())?;
        }
        SocketAddr::V6(v6) => {
            signer.update(&[6])?;
            signer.update(&v6.ip().octets())?;
        }
    }
    signer.update(&peer.port().to_be_bytes())?;
    signer.update(client_random)?;
    let mut out = [0u8; COOKIE_LEN];
    signer.sign(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_binds_address_random_and_secret_generation() {
        let t0 = Instant::now();
        let life = Duration::from_secs(60);
        let mut secrets = CookieSecrets::new(t0, life).unwrap();
        let peer: SocketAddr = "192.0.2.1:5684".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5685".parse().unwrap();
        let random = [3u8; 32];
        let cookie = secrets.issue(peer, &random).unwrap();
        assert!(secrets.verify(peer, &random, &cookie));
        assert!(!secrets.verify(other, &random, &cookie));
        assert!(!secrets.verify(peer, &[4u8; 32], &cookie));
        assert!(!secrets.verify(peer, &random, &cookie[..31]));

        // Not yet due: nothing changes.
        secrets.rotate_if_due(t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(secrets.issue(peer, &random).unwrap(), cookie);
        // One rotation: the old cookie is still accepted.
        secrets.rotate_if_due(t0 + life).unwrap();
        assert!(secrets.verify(peer, &random, &cookie));
        assert_ne!(secrets.issue(peer, &random).unwrap(), cookie);
        // Two rotations: it is not.
        secrets.rotate_if_due(t0 + life * 2).unwrap();
        assert!(!secrets.verify(peer, &random, &cookie));
    }
}
