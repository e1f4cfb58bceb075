//! `coap-dtls`: DTLS 1.2 (RFC 6347) with pre-shared keys (RFC 4279) on
//! OpenSSL, serving many peers on one UDP socket, for CoAP's `coaps://`
//! (RFC 7252 §9.1).
//!
//! **For:** turning UDP datagrams into authenticated plaintext datagrams and
//! back: datagrams in and out, each tagged with the peer's address and the
//! PSK identity that authenticated. **Not for:** anything CoAP (that is
//! `coap-endpoint`'s job, which adapts this crate behind a feature), key
//! storage (the application implements [`PskStore`]), certificates/RPK, or
//! DTLS 1.3.
//!
//! # Shape
//!
//! - [`DtlsServer`]: a sans-IO state machine (no socket, no clock; the
//!   `quinn-proto` shape). Its type docs give the order of calls.
//! - [`DtlsSocket`]: a thin tokio driver that owns a `UdpSocket` and the
//!   timer and exposes `recv()` / `send_to()`.
//! - [`DtlsConnector`] + [`ClientSession`] (sans-IO) and [`DtlsClient`]
//!   (tokio): the client used by tests and the load generator.
//!
//! ```text
//!  UDP datagram (peer, bytes)
//!     │
//!     ▼
//!  record::parse ──not DTLS──────────────────────────▶ drop (counted)
//!     │ epoch-0 ClientHello?
//!     ├─yes─▶ cookie = HMAC(secret, peer ‖ random) valid?
//!     │          ├─no──▶ HelloVerifyRequest ──────────▶ transmit (no state)
//!     │          └─yes─▶ caps ok? ─▶ new Ssl + DTLSv1_listen ─┐
//!     │ no                                                    │
//!     ▼                                                       ▼
//!  sessions[peer] ──none──▶ drop        SslStream<DatagramPipe> (one per peer)
//!     ├─handshaking / non-AEAD suite────────▶ accept / ssl_read
//!     │                                           │ handshake done, AEAD suite:
//!     │                                           ▼ derive keys, free the Ssl
//!     └─compact session───────────────────▶ epoch? replay window? AEAD open
//!                                                 │            │
//!                              transmits (peer, bytes)   events: Data{peer,
//!                                                        identity, bytes}, ...
//! ```
//!
//! # Use
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! use coap_dtls::{ClientConfig, DtlsClient, DtlsConnector, DtlsSocket, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Server: keys answered from memory; anything implementing `PskStore`.
//! let mut keys = HashMap::new();
//! keys.insert(b"sensor1@DEFAULT_TENANT".to_vec(), b"hono-secret".to_vec());
//! let server = DtlsSocket::bind("0.0.0.0:5684".parse()?, ServerConfig::new(Arc::new(keys))).await?;
//! tokio::spawn(async move {
//!     while let Ok(datagram) = server.recv().await {
//!         // datagram.identity authenticated datagram.peer; reply in plaintext.
//!         let _ = server.send_to(datagram.peer, &datagram.bytes).await;
//!     }
//! });
//!
//! // Client.
//! let connector = DtlsConnector::new(ClientConfig::new("sensor1@DEFAULT_TENANT", "hono-secret"))?;
//! let mut client = DtlsClient::connect(&connector, "127.0.0.1:5684".parse()?).await?;
//! client.send(b"hello").await?;
//! let echoed = client.recv().await?;
//! # let _ = echoed;
//! # Ok(())
//! # }
//! ```
//!
//! # Compact sessions
//!
//! OpenSSL keeps about 30 KiB per `SSL` object, also while a session is
//! idle. So once a handshake has finished with an AEAD cipher suite
//! (`PSK-AES128-CCM8`, `PSK-AES128-CCM`, `PSK-AES128-GCM-SHA256`, the
//! AES-256-CCM variants, `PSK-`/`ECDHE-PSK-CHACHA20-POLY1305`), the server
//! derives the session's record keys itself and frees the `SSL` object
//! ([`ServerConfig::compact_sessions`], on by default). What remains per
//! session is the peer's identity, the suite, the two write keys and IVs,
//! our write epoch and sequence number, a 64-record replay window, and
//! until the client's first application record our last handshake flight
//! (about 100 bytes). Sessions with other suites (CBC) stay on OpenSSL's
//! record layer as before.
//!
//! - **Keys** are the ones OpenSSL uses: `key_block = PRF(master_secret,
//!   "key expansion", server_random + client_random)` with the SHA-256 PRF
//!   (RFC 5246 §6.3), from `SSL_SESSION_get_master_key` and the hello
//!   randoms; unit tests compare them with the keys of OpenSSL's own client
//!   and the PRF with OpenSSL's exporter.
//! - **Record format** as OpenSSL's record layer: AES-CCM (RFC 6655,
//!   RFC 7251) and AES-GCM (RFC 5288) with nonce = 4-byte salt ‖ 8-byte
//!   explicit nonce (we send `epoch ‖ sequence_number`, never repeated
//!   under one key); ChaCha20-Poly1305 with RFC 7905's XOR nonce;
//!   additional data `epoch ‖ seq ‖ type ‖ version ‖ length` (RFC 5246
//!   §6.2.3.3, RFC 6347 §4.1.2.1). Tests encrypt with one side and decrypt
//!   with the other for every suite, and the libcoap interop tests (OpenSSL
//!   and GnuTLS clients) run over compact sessions.
//! - **Replay detection** (RFC 6347 §4.1.2.6): a 64-record sliding window,
//!   checked before decryption and moved only by records that
//!   authenticated. Records from another epoch, that fail to authenticate
//!   or that are replays are dropped silently and counted
//!   ([`DroppedDatagrams::other_epoch`], `undecryptable`, `replayed`).
//! - **Sequence numbers** never wrap: the session is closed when its 2^48
//!   write sequence numbers are used up.
//! - **Alerts**: an authenticated close_notify or fatal alert ends the
//!   session; unauthenticated (epoch-0) alerts are ignored, as OpenSSL
//!   does after the handshake. [`DtlsServer::close`] sends an encrypted
//!   close_notify.
//! - **Lost last flight**: our ChangeCipherSpec + Finished flight is kept
//!   until the client's first application record; an authenticated
//!   retransmission of the client's Finished gets it again, at most
//!   `max_retransmissions` times.
//! - **No renegotiation**: a handshake record after the handshake is
//!   dropped (counted as `unexpected_record`), the contexts also set
//!   `SSL_OP_NO_RENEGOTIATION`; so the keys never change in a session.
//! - A negotiated max_fragment_length (RFC 6066) caps the records we send.
//! - Keys are overwritten (`OPENSSL_cleanse`) when a session ends. Records
//!   are sealed and opened with two cipher contexts shared by all sessions
//!   of a server, re-keyed per record: no per-session OpenSSL state.
//!
//! Measured on the development machine (`examples/server_costs.rs`,
//! release build, OpenSSL 3.0, glibc; not asserted by tests):
//!
//! | per idle established session        | OpenSSL record layer | compact  |
//! |-------------------------------------|----------------------|----------|
//! | RSS growth, 1 000 sessions          | 33.6 KiB             | 0.86 KiB |
//! | RSS growth, 10 000 sessions         | 33.6 KiB             | 0.73 KiB |
//! | server CPU, receive 100-byte record | ~0.95 µs             | ~0.55 µs |
//! | server CPU, send 100-byte record    | ~0.57 µs             | ~0.44 µs |
//!
//! (CPU: best of five runs of 200 000 records; about 1.5 times the
//! request/response pairs per second of server CPU.) On loopback with
//! sockets (`examples/loopback_bench.rs`, `ours` vs `ours-openssl`) the
//! request rate is bound by the OpenSSL client and the system calls: both
//! modes measured about 58 000 sequential requests/s over one session
//! and 60 000–80 000 over 8 parallel sessions on the shared 2-core
//! machine, equal within its noise.
//!
//! # Security notes
//!
//! - **Cookie before state** (RFC 6347 §4.2.1): a ClientHello without a
//!   valid cookie is answered with a HelloVerifyRequest built by this crate
//!   (60 bytes, smaller than any ClientHello, so no amplification) and
//!   nothing is stored: no `Ssl`, no map entry. The cookie is
//!   HMAC-SHA256 over the peer address and the client random under a secret
//!   that rotates every `cookie_lifetime` (current and previous accepted).
//!   Only a ClientHello with a valid cookie, i.e. from an address that can
//!   receive, gets an OpenSSL object; it is handed to OpenSSL through
//!   `DTLSv1_listen` so that OpenSSL continues the handshake with the
//!   sequence numbers RFC 6347 §4.2.2 prescribes.
//! - **Caps**: at most `max_handshakes` handshakes at once and
//!   `max_sessions` sessions; a handshake has a deadline and a bounded
//!   number of retransmissions; idle sessions are evicted after
//!   `idle_timeout`. An established session with an AEAD suite keeps no
//!   OpenSSL object (see "Compact sessions"); one that does has its record
//!   buffers released while idle (`SSL_free_buffers`).
//! - **Isolation**: every call works on one session and never waits; a stuck
//!   handshake holds one slot until its deadline.
//! - **PSK lookups** happen inside OpenSSL's synchronous callback, so
//!   [`PskStore::key`] must answer from memory.
//! - Plaintext datagrams, records that fail to decrypt and replays are
//!   dropped and counted ([`ServerStats::dropped`]).
//! - A wrong key is not reported by the peer: DTLS discards records that
//!   fail to decrypt, so such a handshake ends by timeout.
//!
//! # Not available
//!
//! DTLS Connection ID (RFC 9146) is not implemented by OpenSSL 3.0, so a
//! session is bound to the peer's address; a client whose address changes
//! (NAT rebinding) must handshake again: its new ClientHello goes through the
//! cookie exchange at the new address, and the old session ages out
//! (`idle_timeout`). A PSK handshake is cheap (no public-key operation
//! unless an ECDHE-PSK suite is chosen; about 0.2 ms of CPU on loopback),
//! so this is the "cheap address change". Session resumption is
//! deliberately not offered: it would let a client whose identity was
//! removed from the [`PskStore`] resume without a new key lookup, and the
//! server-side session cache would cost memory per peer.
#![warn(missing_docs, unreachable_pub)]

mod addr_hash;
mod batch;
mod client;
mod compact;
mod config;
mod cookie;
mod ffi;
mod key_block;
mod pipe;
pub mod record;
mod replay;
mod server;
mod socket;
mod stats;

use std::net::SocketAddr;

use bytes::Bytes;

pub use client::{ClientEvent, ClientSession, DtlsConnector};
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use compact::fuzzing;
pub use config::{
    ClientConfig, ConfigError, DEFAULT_CIPHER_LIST, DEFAULT_MTU, PskStore, Retransmission,
    ServerConfig,
};
pub use server::{DtlsServer, MAX_PLAINTEXT, ServerEvent};
pub use socket::{Datagram, DtlsClient, DtlsSocket, SocketError, SocketEvent};
pub use stats::{DropReason, DroppedDatagrams, HandshakeFailure, HandshakeFailures, ServerStats};

/// A datagram to send on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: SocketAddr,
    /// UDP payload.
    pub bytes: Bytes,
}

/// Why an established session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent close_notify.
    CloseNotify,
    /// The peer sent a fatal alert (its description).
    Alert(String),
    /// No traffic for `idle_timeout`.
    IdleTimeout,
    /// A new handshake from the same address replaced it.
    Replaced,
    /// The application closed it.
    LocalClose,
    /// OpenSSL failed.
    Error(String),
}

impl CloseReason {
    pub(crate) fn classify(error: &openssl::ssl::Error) -> Self {
        let alert = error.ssl_error().and_then(|stack| {
            stack
                .errors()
                .iter()
                .filter_map(|e| e.reason())
                .find(|r| r.contains("alert"))
                .map(str::to_owned)
        });
        match alert {
            Some(alert) => CloseReason::Alert(alert),
            None => CloseReason::Error(error.to_string()),
        }
    }
}

/// Why `send` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// There is no session with that peer.
    #[error("no DTLS session with this peer")]
    NoSession,
    /// The session's handshake has not finished.
    #[error("DTLS handshake not finished")]
    NotEstablished,
    /// More than fits one datagram at the configured MTU (see
    /// `max_plaintext`), or more than [`MAX_PLAINTEXT`].
    #[error("datagram of {0} bytes does not fit one DTLS record within the MTU")]
    TooLarge(usize),
    /// OpenSSL failed to encrypt; the session was closed.
    #[error("DTLS session failed: {0}")]
    SessionFailed(String),
    /// The driver task has stopped.
    #[error("DTLS socket driver stopped")]
    DriverStopped,
}
