//! Server and client configuration and the PSK lookup trait.

use std::ffi::CString;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{
    SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode, SslVersion,
};

use crate::ffi::RetransmitTimer;

/// Where the server finds the key for a PSK identity.
///
/// OpenSSL asks from inside the handshake, synchronously: answer from memory
/// (a map or a registry snapshot the application keeps current), never with
/// blocking I/O. `None` fails the handshake with an `unknown_psk_identity`
/// alert (RFC 4279 §2).
pub trait PskStore: Send + Sync + 'static {
    /// The key for `identity`, or `None` if the identity is unknown.
    fn key(&self, identity: &[u8]) -> Option<Vec<u8>>;
}

impl<F> PskStore for F
where
    F: Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    fn key(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self(identity)
    }
}

impl PskStore for std::collections::HashMap<Vec<u8>, Vec<u8>> {
    fn key(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self.get(identity).cloned()
    }
}

/// The default cipher list: RFC 7925's mandatory `TLS_PSK_WITH_AES_128_CCM_8`,
/// `TLS_PSK_WITH_AES_128_GCM_SHA256`, `TLS_PSK_WITH_AES_128_CCM`, then the
/// ECDHE-PSK suites OpenSSL 3.0 has (it has no ECDHE-PSK AEAD suite with AES).
pub const DEFAULT_CIPHER_LIST: &str = "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256:PSK-AES128-CCM:\
ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256";

/// Default DTLS MTU: the IPv6 minimum link MTU 1280 minus the IPv6 (40) and
/// UDP (8) headers.
pub const DEFAULT_MTU: u16 = 1280 - 48;

/// Errors while building an OpenSSL context from a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// OpenSSL refused a setting (e.g. a cipher list naming no known suite).
    #[error("OpenSSL rejected the configuration: {0}")]
    OpenSsl(#[from] ErrorStack),
    /// The identity hint or the client identity contains a NUL byte, or the
    /// identity/key is too long for OpenSSL.
    #[error("invalid PSK identity, hint or key: {0}")]
    InvalidPsk(&'static str),
    /// The MTU is below what DTLS can work with (256).
    #[error("MTU {0} is too small")]
    MtuTooSmall(u16),
}

/// Handshake retransmission: OpenSSL retransmits a flight when its timer
/// expires (RFC 6347 §4.2.4), starting at `initial` and doubling up to
/// `max`; the handshake fails after `max_retransmissions` or when it has
/// not finished within the handshake timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmission {
    /// First retransmission timeout. Default 1 s (RFC 6347 §4.2.4.1).
    pub initial: Duration,
    /// Upper bound of the doubling back-off. Default 8 s.
    pub max: Duration,
    /// Number of retransmissions of one session after which its handshake is
    /// abandoned. Default 6.
    pub max_retransmissions: u32,
}

impl Default for Retransmission {
    fn default() -> Self {
        Retransmission {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            max_retransmissions: 6,
        }
    }
}

impl Retransmission {
    pub(crate) fn timer(&self) -> RetransmitTimer {
        let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1_000);
        RetransmitTimer {
            initial_us: micros(self.initial),
            max_us: micros(self.max).max(micros(self.initial)),
        }
    }
}

/// Configuration of a [`DtlsServer`](crate::DtlsServer). Every field has a
/// documented default; build with [`ServerConfig::new`] and adjust fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where keys come from. No default.
    pub psk_store: Arc<dyn PskStore>,
    /// PSK identity hint sent in ServerKeyExchange. Default: none.
    pub identity_hint: Option<Vec<u8>>,
    /// OpenSSL cipher list. Default [`DEFAULT_CIPHER_LIST`].
    pub cipher_list: String,
    /// DTLS MTU (largest datagram written, without IP/UDP headers).
    /// Handshake flights are fragmented to it. Default [`DEFAULT_MTU`].
    pub mtu: u16,
    /// Retransmission timer and bound. Default [`Retransmission::default`].
    pub retransmission: Retransmission,
    /// A handshake not finished this long after it started fails. Default 30 s.
    pub handshake_timeout: Duration,
    /// An established session without traffic for this long is evicted.
    /// Default 10 min.
    pub idle_timeout: Duration,
    /// At most this many handshakes run at once; further cookie-verified
    /// ClientHellos are dropped (the client retries). Default 1024.
    pub max_handshakes: usize,
    /// At most this many sessions (handshaking + established). Default 65 536.
    pub max_sessions: usize,
    /// Cookie secret rotation period; a cookie is valid for one to two
    /// periods. Default 60 s.
    pub cookie_lifetime: Duration,
    /// After a handshake with an AEAD suite (AES-CCM, AES-CCM_8, AES-GCM,
    /// ChaCha20-Poly1305), free OpenSSL's per-session object and protect
    /// the session's records with the derived keys directly ("compact
    /// sessions", a few hundred bytes instead of ~30 KiB per session; see
    /// the crate docs). Sessions with other suites stay on OpenSSL's record
    /// layer either way. Default `true`.
    pub compact_sessions: bool,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("identity_hint", &self.identity_hint)
            .field("cipher_list", &self.cipher_list)
            .field("mtu", &self.mtu)
            .field("retransmission", &self.retransmission)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_sessions", &self.max_sessions)
            .field("cookie_lifetime", &self.cookie_lifetime)
            .field("compact_sessions", &self.compact_sessions)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with all defaults and the given key store.
    pub fn new(psk_store: Arc<dyn PskStore>) -> Self {
        ServerConfig {
            psk_store,
            identity_hint: None,
            cipher_list: DEFAULT_CIPHER_LIST.to_owned(),
            mtu: DEFAULT_MTU,
            retransmission: Retransmission::default(),
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_handshakes: 1024,
            max_sessions: 65_536,
            cookie_lifetime: Duration::from_secs(60),
            compact_sessions: true,
        }
    }

    /// Builds the shared OpenSSL server context.
    pub(crate) fn build_context(&self) -> Result<SslContext, ConfigError> {
        check_mtu(self.mtu)?;
        let mut builder = base_context()?;
        builder.set_cipher_list(&self.cipher_list)?;
        if let Some(hint) = &self.identity_hint {
            let hint = CString::new(hint.clone())
                .map_err(|_| ConfigError::InvalidPsk("identity hint contains NUL"))?;
            crate::ffi::set_psk_identity_hint(&mut builder, &hint)?;
        }
        let store = Arc::clone(&self.psk_store);
        builder.set_psk_server_callback(move |_ssl, identity, psk_out| {
            // Answered from memory (see `PskStore`). Returning 0 makes
            // OpenSSL abort with `unknown_psk_identity`.
            let Some(identity) = identity else {
                return Ok(0);
            };
            match store.key(identity) {
                Some(key) if !key.is_empty() && key.len() <= psk_out.len() => {
                    if let Some(dst) = psk_out.get_mut(..key.len()) {
                        dst.copy_from_slice(&key);
                    }
                    Ok(key.len())
                }
                _ => Ok(0),
            }
        });
        // The cookie exchange is done statelessly by `DtlsServer` before an
        // `Ssl` exists; OpenSSL only sees ClientHellos whose cookie was
        // already verified, so its own check accepts them.
        builder.set_cookie_verify_cb(|_ssl, _cookie| true);
        // OpenSSL must never send its own HelloVerifyRequest.
        builder.set_cookie_generate_cb(|_ssl, _out| Err(ErrorStack::get()));
        builder.set_options(SslOptions::COOKIE_EXCHANGE);
        // No session resumption: OpenSSL's server cache would keep an
        // SSL_SESSION per handshake (up to 20 480), and a PSK handshake
        // costs about as much as a resumption anyway.
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
        Ok(builder.build())
    }
}

/// Configuration of a client session ([`DtlsConnector`](crate::DtlsConnector)).
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// PSK identity sent to the server (no NUL bytes, at most 128 bytes).
    pub identity: Vec<u8>,
    /// The pre-shared key (at most 256 bytes).
    pub key: Vec<u8>,
    /// OpenSSL cipher list. Default [`DEFAULT_CIPHER_LIST`].
    pub cipher_list: String,
    /// DTLS MTU. Default [`DEFAULT_MTU`].
    pub mtu: u16,
    /// Retransmission timer and bound. Default [`Retransmission::default`].
    pub retransmission: Retransmission,
    /// The handshake fails if not finished within this time. Default 30 s.
    pub handshake_timeout: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &"<redacted>")
            .field("cipher_list", &self.cipher_list)
            .field("mtu", &self.mtu)
            .field("retransmission", &self.retransmission)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// A configuration with all defaults for `identity` and `key`.
    pub fn new(identity: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        ClientConfig {
            identity: identity.into(),
            key: key.into(),
            cipher_list: DEFAULT_CIPHER_LIST.to_owned(),
            mtu: DEFAULT_MTU,
            retransmission: Retransmission::default(),
            handshake_timeout: Duration::from_secs(30),
        }
    }

    pub(crate) fn build_context(&self) -> Result<SslContext, ConfigError> {
        check_mtu(self.mtu)?;
        if self.identity.contains(&0) || self.identity.len() > 128 {
            return Err(ConfigError::InvalidPsk(
                "identity contains NUL or is over 128 bytes",
            ));
        }
        if self.key.is_empty() || self.key.len() > 256 {
            return Err(ConfigError::InvalidPsk("key must be 1..=256 bytes"));
        }
        let mut builder = base_context()?;
        builder.set_cipher_list(&self.cipher_list)?;
        let identity = self.identity.clone();
        let key = self.key.clone();
        builder.set_psk_client_callback(move |_ssl, _hint, identity_out, psk_out| {
            // The identity is written as a NUL-terminated C string.
            let (Some(identity_dst), Some(key_dst)) = (
                identity_out.get_mut(..=identity.len()),
                psk_out.get_mut(..key.len()),
            ) else {
                return Ok(0);
            };
            if let Some((nul, dst)) = identity_dst.split_last_mut() {
                dst.copy_from_slice(&identity);
                *nul = 0;
            }
            key_dst.copy_from_slice(&key);
            Ok(key.len())
        });
        Ok(builder.build())
    }
}

fn check_mtu(mtu: u16) -> Result<(), ConfigError> {
    if mtu < 256 {
        return Err(ConfigError::MtuTooSmall(mtu));
    }
    Ok(())
}

/// What server and client contexts share: DTLS 1.2 only, no renegotiation,
/// no MTU discovery through the BIO, buffers released when idle.
pub(crate) fn base_context() -> Result<SslContextBuilder, ErrorStack> {
    let mut builder = SslContextBuilder::new(SslMethod::dtls())?;
    builder.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    builder.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    builder.set_options(
        SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_TICKET,
    );
    builder.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(builder)
}
