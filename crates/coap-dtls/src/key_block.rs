//! TLS 1.2 key expansion (RFC 5246 §6.3) for the AEAD cipher suites a
//! compact session serves: the same record keys OpenSSL derives, computed
//! from the master secret and the two hello randoms of a finished
//! handshake.
//!
//! ```text
//! key_block = PRF(master_secret, "key expansion",
//!                 server_random + client_random)      (RFC 5246 §6.3)
//! PRF = P_SHA256 (RFC 5246 §5; every suite here uses the SHA-256 PRF)
//! key_block = client_write_key ‖ server_write_key
//!           ‖ client_write_IV  ‖ server_write_IV     (no MAC keys: AEAD)
//! ```

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::ssl::{SslRef, SslVersion};

use crate::ffi;

/// Length of a TLS 1.2 master secret (RFC 5246 §8.1).
const MASTER_SECRET_LEN: usize = 48;
/// Output length of HMAC-SHA256.
const SHA256_LEN: usize = 32;
/// Largest AEAD key (AES-256, ChaCha20).
pub(crate) const MAX_KEY_LEN: usize = 32;
/// Largest `fixed_iv_length` (ChaCha20-Poly1305, RFC 7905 §2).
pub(crate) const MAX_IV_LEN: usize = 12;

/// The AEAD cipher suites whose records this crate protects itself, by
/// their record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AeadSuite {
    /// AES-CCM with an 8- or 16-byte tag (RFC 6655, RFC 7251): 4-byte salt,
    /// 8-byte explicit nonce.
    AesCcm {
        /// 16 or 32.
        key_len: u8,
        /// 8 (`_CCM_8`) or 16.
        tag_len: u8,
    },
    /// AES-128-GCM (RFC 5288): 4-byte salt, 8-byte explicit nonce, 16-byte
    /// tag.
    Aes128Gcm,
    /// ChaCha20-Poly1305 (RFC 7905): 12-byte IV XORed with the sequence
    /// number, no explicit nonce, 16-byte tag.
    Chacha20Poly1305,
}

impl AeadSuite {
    /// The suite for an IANA cipher suite number, if it is one of the AEAD
    /// suites with the SHA-256 PRF that compact sessions serve.
    pub(crate) fn from_protocol_id(id: [u8; 2]) -> Option<Self> {
        let ccm = |key_len, tag_len| Some(AeadSuite::AesCcm { key_len, tag_len });
        match u16::from_be_bytes(id) {
            // TLS_PSK_WITH_AES_128_CCM_8, TLS_PSK_DHE_WITH_AES_128_CCM_8
            0xc0a8 | 0xc0aa => ccm(16, 8),
            // TLS_PSK_WITH_AES_256_CCM_8, TLS_PSK_DHE_WITH_AES_256_CCM_8
            0xc0a9 | 0xc0ab => ccm(32, 8),
            // TLS_PSK_WITH_AES_128_CCM, TLS_DHE_PSK_WITH_AES_128_CCM
            0xc0a4 | 0xc0a6 => ccm(16, 16),
            // TLS_PSK_WITH_AES_256_CCM, TLS_DHE_PSK_WITH_AES_256_CCM
            0xc0a5 | 0xc0a7 => ccm(32, 16),
            // TLS_PSK_WITH_AES_128_GCM_SHA256, TLS_DHE_PSK_WITH_AES_128_GCM_SHA256
            0x00a8 | 0x00aa => Some(AeadSuite::Aes128Gcm),
            // TLS_{PSK,ECDHE_PSK,DHE_PSK}_WITH_CHACHA20_POLY1305_SHA256
            0xccab..=0xccad => Some(AeadSuite::Chacha20Poly1305),
            _ => None,
        }
    }

    /// `enc_key_length`.
    pub(crate) fn key_len(self) -> usize {
        match self {
            AeadSuite::AesCcm { key_len, .. } => usize::from(key_len),
            AeadSuite::Aes128Gcm => 16,
            AeadSuite::Chacha20Poly1305 => 32,
        }
    }

    /// `fixed_iv_length`: the implicit part of the nonce.
    pub(crate) fn fixed_iv_len(self) -> usize {
        match self {
            AeadSuite::AesCcm { .. } | AeadSuite::Aes128Gcm => 4,
            AeadSuite::Chacha20Poly1305 => 12,
        }
    }

    /// `record_iv_length`: the explicit nonce carried in each record.
    pub(crate) fn explicit_nonce_len(self) -> usize {
        match self {
            AeadSuite::AesCcm { .. } | AeadSuite::Aes128Gcm => 8,
            AeadSuite::Chacha20Poly1305 => 0,
        }
    }

    /// Authentication tag length.
    pub(crate) fn tag_len(self) -> usize {
        match self {
            AeadSuite::AesCcm { tag_len, .. } => usize::from(tag_len),
            AeadSuite::Aes128Gcm | AeadSuite::Chacha20Poly1305 => 16,
        }
    }

    /// Bytes a record adds to its plaintext besides the 13-byte header.
    pub(crate) fn expansion(self) -> usize {
        self.explicit_nonce_len() + self.tag_len()
    }
}

/// The four secrets of one session's epoch-1 record protection. Zeroed
/// when dropped.
pub(crate) struct RecordKeys {
    pub(crate) client_write_key: [u8; MAX_KEY_LEN],
    pub(crate) server_write_key: [u8; MAX_KEY_LEN],
    pub(crate) client_write_iv: [u8; MAX_IV_LEN],
    pub(crate) server_write_iv: [u8; MAX_IV_LEN],
}

impl Drop for RecordKeys {
    fn drop(&mut self) {
        ffi::cleanse(&mut self.client_write_key);
        ffi::cleanse(&mut self.server_write_key);
        ffi::cleanse(&mut self.client_write_iv);
        ffi::cleanse(&mut self.server_write_iv);
    }
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeys(<redacted>)")
    }
}

impl RecordKeys {
    /// Derives the keys of `suite` from a finished TLS 1.2 handshake's
    /// master secret and randoms (RFC 5246 §6.3).
    pub(crate) fn derive(
        suite: AeadSuite,
        master_secret: &[u8],
        client_random: &[u8],
        server_random: &[u8],
    ) -> Result<Self, ErrorStack> {
        let key_len = suite.key_len();
        let iv_len = suite.fixed_iv_len();
        let mut block = [0u8; 2 * (MAX_KEY_LEN + MAX_IV_LEN)];
        let used = 2 * (key_len + iv_len);
        let result = match block.get_mut(..used) {
            Some(out) => p_sha256(
                master_secret,
                b"key expansion",
                &[server_random, client_random],
                out,
            ),
            None => Ok(()),
        };
        let mut keys = RecordKeys {
            client_write_key: [0; MAX_KEY_LEN],
            server_write_key: [0; MAX_KEY_LEN],
            client_write_iv: [0; MAX_IV_LEN],
            server_write_iv: [0; MAX_IV_LEN],
        };
        if result.is_ok() {
            let mut rest: &[u8] = &block;
            let parts = [
                keys.client_write_key.get_mut(..key_len),
                keys.server_write_key.get_mut(..key_len),
                keys.client_write_iv.get_mut(..iv_len),
                keys.server_write_iv.get_mut(..iv_len),
            ];
            for dst in parts.into_iter().flatten() {
                let (src, tail) = rest.split_at_checked(dst.len()).unwrap_or((&[], &[]));
                dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
                rest = tail;
            }
        }
        ffi::cleanse(&mut block);
        result.map(|()| keys)
    }

    /// The suite and keys of the established DTLS 1.2 session `ssl`, or
    /// `None` if its cipher suite is not one compact sessions serve (or
    /// OpenSSL does not expose the secrets).
    pub(crate) fn from_ssl(ssl: &SslRef) -> Option<(AeadSuite, Self)> {
        if ssl.version2() != Some(SslVersion::DTLS1_2) {
            return None;
        }
        let suite = AeadSuite::from_protocol_id(ssl.current_cipher()?.protocol_id())?;
        let mut master = [0u8; MASTER_SECRET_LEN];
        let copied = ssl.session()?.master_key(&mut master);
        let mut client_random = [0u8; 32];
        let mut server_random = [0u8; 32];
        let randoms_ok = ssl.client_random(&mut client_random) == 32
            && ssl.server_random(&mut server_random) == 32;
        let keys = if copied == MASTER_SECRET_LEN && randoms_ok {
            Self::derive(suite, &master, &client_random, &server_random).ok()
        } else {
            None
        };
        ffi::cleanse(&mut master);
        keys.map(|keys| (suite, keys))
    }
}

/// `P_SHA256(secret, label + seed)` (RFC 5246 §5), filling `out`:
///
/// ```text
/// P_hash(secret, seed) = HMAC(secret, A(1) + seed) + HMAC(secret, A(2) + seed) + ...
/// A(0) = seed, A(i) = HMAC(secret, A(i-1))
/// ```
pub(crate) fn p_sha256(
    secret: &[u8],
    label: &[u8],
    seed: &[&[u8]],
    out: &mut [u8],
) -> Result<(), ErrorStack> {
    let key = PKey::hmac(secret)?;
    let hmac = |a: Option<&[u8]>, with_seed: bool| -> Result<[u8; SHA256_LEN], ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
        if let Some(a) = a {
            signer.update(a)?;
        }
        if with_seed {
            signer.update(label)?;
            for part in seed {
                signer.update(part)?;
            }
        }
        let mut mac = [0u8; SHA256_LEN];
        signer.sign(&mut mac)?;
        Ok(mac)
    };
    // A(1) = HMAC(secret, A(0)) with A(0) = label + seed.
    let mut a = hmac(None, true)?;
    for chunk in out.chunks_mut(SHA256_LEN) {
        let block = hmac(Some(&a), true)?;
        chunk.iter_mut().zip(block).for_each(|(d, s)| *d = s);
        a = hmac(Some(&a), false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widely used TLS 1.2 PRF (SHA-256) test vector posted to the
    /// IETF TLS list (secret, seed and label below, 100 bytes of output).
    #[test]
    fn p_sha256_known_answer() {
        let secret = hex("9bbe436ba940f017b17652849a71db35");
        let seed = hex("a0ba9f936cda311827a6f796ffd5198c");
        let expected = hex(
            "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a\
             6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab\
             4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701\
             87347b66",
        );
        let mut out = vec![0u8; expected.len()];
        p_sha256(&secret, b"test label", &[&seed], &mut out).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn suites_by_number() {
        assert_eq!(
            AeadSuite::from_protocol_id([0xc0, 0xa8]),
            Some(AeadSuite::AesCcm {
                key_len: 16,
                tag_len: 8
            })
        );
        assert_eq!(
            AeadSuite::from_protocol_id([0x00, 0xa8]),
            Some(AeadSuite::Aes128Gcm)
        );
        assert_eq!(
            AeadSuite::from_protocol_id([0xcc, 0xac]),
            Some(AeadSuite::Chacha20Poly1305)
        );
        // PSK-AES256-GCM-SHA384 uses the SHA-384 PRF; CBC suites are not
        // AEAD: both stay on OpenSSL's record layer.
        assert_eq!(AeadSuite::from_protocol_id([0x00, 0xa9]), None);
        assert_eq!(AeadSuite::from_protocol_id([0xc0, 0x37]), None);
        let ccm8 = AeadSuite::AesCcm {
            key_len: 16,
            tag_len: 8,
        };
        assert_eq!(ccm8.expansion(), 16);
        assert_eq!(AeadSuite::Aes128Gcm.expansion(), 24);
        assert_eq!(AeadSuite::Chacha20Poly1305.expansion(), 16);
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
