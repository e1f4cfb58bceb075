//! Compact established sessions: once a handshake with an AEAD cipher suite
//! has finished, the server keeps only the record keys and sequence state
//! and frees OpenSSL's `SSL` object (about 30 KiB); this module then
//! protects and unprotects the session's records itself, in the format of
//! RFC 6347 §4.1 / RFC 5246 §6.2.3.3 that OpenSSL's record layer uses.
//!
//! ```text
//! finished SSL ──master secret, randoms, suite──▶ key_block ──▶ RecordKeys
//!      │ (freed)                                                  │
//!      └─ our last flight (CCS + Finished), kept until the        ▼
//!         client's first application record            CompactSession
//!                                                       seal: plaintext ─▶ record
//!  datagram ─▶ records ─▶ epoch? replay window? ─▶ AEAD open ─▶ Received
//! ```
//!
//! Record protection (all suites: epoch-1 keys, no MAC keys):
//!
//! - AES-CCM (RFC 6655 §3, RFC 7251) and AES-GCM (RFC 5288 §3): nonce =
//!   `salt (4 bytes of *_write_IV) ‖ nonce_explicit (8 bytes)`; the
//!   explicit nonce travels in front of the ciphertext. We send
//!   `epoch ‖ sequence_number` as explicit nonce, like OpenSSL, so a nonce
//!   never repeats under one key.
//! - ChaCha20-Poly1305 (RFC 7905 §2): nonce = `*_write_IV (12 bytes) XOR
//!   (0⁴ ‖ epoch ‖ sequence_number)`, nothing explicit.
//! - Additional data (RFC 5246 §6.2.3.3 with RFC 6347 §4.1.2.1's 64-bit
//!   `epoch ‖ sequence_number`): `seq_num (8) ‖ type (1) ‖ version (2) ‖
//!   plaintext length (2)`.

use bytes::Bytes;
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;
use openssl::ssl::SslRef;

use crate::ffi;
use crate::key_block::{AeadSuite, MAX_IV_LEN, RecordKeys};
use crate::record::{
    self, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, DTLS_1_2, RECORD_HEADER_LEN,
};
use crate::replay::ReplayWindow;
use crate::server::MAX_PLAINTEXT;
use crate::stats::DropReason;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

/// Largest DTLS record sequence number (48 bits, RFC 6347 §4.1).
const MAX_SEQUENCE_NUMBER: u64 = (1 << 48) - 1;
/// Alert level `warning` (RFC 5246 §7.2).
const ALERT_WARNING: u8 = 1;
/// Alert level `fatal`.
const ALERT_FATAL: u8 = 2;
/// Alert description `close_notify`.
const ALERT_CLOSE_NOTIFY: u8 = 0;
/// Length of the additional data of a TLS 1.2 AEAD record.
const AAD_LEN: usize = 13;
/// All AEAD nonces here are 12 bytes.
const NONCE_LEN: usize = 12;
/// Largest tag.
const MAX_TAG_LEN: usize = 16;

/// One established session's record state without OpenSSL: about 200
/// bytes on the heap instead of OpenSSL's ~30 KiB `SSL` object.
pub(crate) struct CompactSession {
    suite: AeadSuite,
    keys: RecordKeys,
    /// The epoch both directions use (1 after the only handshake: there is
    /// no renegotiation).
    epoch: u16,
    /// Sequence number of our next record in `epoch`.
    next_write_seq: u64,
    /// Which of the peer's records in `epoch` were received.
    replay: ReplayWindow,
    /// Our last handshake flight, resent when the peer retransmits its
    /// Finished (it did not get ours); dropped at the peer's first
    /// application record, which proves it has our Finished.
    last_flight: Option<LastFlight>,
    /// OpenSSL's name of the suite, for `cipher_suite()`.
    cipher_name: &'static str,
    /// Largest plaintext of one record within the MTU.
    max_plaintext: u16,
}

struct LastFlight {
    datagrams: Vec<Bytes>,
    resends_left: u32,
}

/// What one received record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Received {
    /// Application data for the application.
    Data(Bytes),
    /// The peer closed the session (close_notify). Nothing after it in the
    /// datagram is read.
    CloseNotify,
    /// The peer sent a fatal alert (its description). Nothing after it is
    /// read.
    FatalAlert(u8),
    /// The peer retransmitted its Finished: send these datagrams (our last
    /// flight) again.
    ResendFlight(Vec<Bytes>),
    /// The record was dropped.
    Dropped(DropReason),
}

/// Why a record could not be sealed.
#[derive(Debug)]
pub(crate) enum SealError {
    /// All 2^48 sequence numbers of the epoch are used; the session must
    /// end (RFC 6347 §4.1: a sequence number MUST NOT wrap).
    SequenceExhausted,
    /// The plaintext does not fit one record.
    TooLarge,
    /// OpenSSL's cipher failed.
    Cipher(ErrorStack),
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealError::SequenceExhausted => f.write_str("record sequence numbers exhausted"),
            SealError::TooLarge => f.write_str("plaintext does not fit one record"),
            SealError::Cipher(error) => write!(f, "record encryption failed: {error}"),
        }
    }
}

impl CompactSession {
    /// Takes over the record layer of the finished server session `ssl`,
    /// whose last flight (ChangeCipherSpec + Finished, as written) is
    /// `last_flight`. `None` if the suite is not an AEAD suite this module
    /// serves, OpenSSL lacks the cipher, or the flight carries no record of
    /// the new epoch.
    pub(crate) fn from_finished_server(
        ssl: &SslRef,
        last_flight: Vec<Bytes>,
        mtu: u16,
        max_resends: u32,
        protection: &RecordProtection,
    ) -> Option<Self> {
        let cipher_name = ssl.current_cipher()?.name();
        let (suite, keys) = RecordKeys::from_ssl(ssl)?;
        if !protection.supports(suite) {
            return None;
        }
        // Our epoch and next sequence number continue after the records of
        // the new epoch OpenSSL wrote (its Finished).
        let mut newest: Option<(u16, u64)> = None;
        for datagram in &last_flight {
            let mut rest: &[u8] = datagram;
            while let Ok((tail, rec)) = record::parse_record(rest) {
                if rec.epoch > 0 {
                    newest = newest.max(Some((rec.epoch, rec.sequence_number)));
                }
                rest = tail;
            }
        }
        let (epoch, last_seq) = newest?;
        let overhead = RECORD_HEADER_LEN + suite.expansion();
        // A peer that negotiated max_fragment_length (RFC 6066 §4) gets no
        // larger records from us.
        let max_plaintext = usize::from(mtu)
            .saturating_sub(overhead)
            .min(MAX_PLAINTEXT)
            .min(ffi::max_fragment_length(ssl).unwrap_or(MAX_PLAINTEXT));
        Some(CompactSession {
            suite,
            keys,
            epoch,
            next_write_seq: last_seq + 1,
            replay: ReplayWindow::default(),
            last_flight: Some(LastFlight {
                datagrams: last_flight,
                resends_left: max_resends,
            }),
            cipher_name,
            max_plaintext: u16::try_from(max_plaintext).unwrap_or(u16::MAX),
        })
    }

    /// OpenSSL's name of the negotiated suite.
    pub(crate) fn cipher_name(&self) -> &'static str {
        self.cipher_name
    }

    /// Largest plaintext one record may carry within the MTU.
    pub(crate) fn max_plaintext(&self) -> usize {
        usize::from(self.max_plaintext)
    }

    /// Whether our last handshake flight is still kept for resending.
    #[cfg(test)]
    pub(crate) fn keeps_last_flight(&self) -> bool {
        self.last_flight.is_some()
    }

    /// One protected record (a whole datagram) carrying `plaintext` as
    /// `content_type`.
    pub(crate) fn seal(
        &mut self,
        protection: &mut RecordProtection,
        content_type: u8,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let seq = self.next_write_seq;
        if seq > MAX_SEQUENCE_NUMBER {
            return Err(SealError::SequenceExhausted);
        }
        // Advance first: a nonce is never used twice, even after a failure.
        self.next_write_seq = seq + 1;
        let seq_num = (u64::from(self.epoch) << 48) | seq;
        let fragment_len = self.suite.expansion() + plaintext.len();
        let fragment_len = u16::try_from(fragment_len).map_err(|_| SealError::TooLarge)?;
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + usize::from(fragment_len));
        out.push(content_type);
        out.extend_from_slice(&DTLS_1_2.to_be_bytes());
        out.extend_from_slice(&seq_num.to_be_bytes());
        out.extend_from_slice(&fragment_len.to_be_bytes());
        let key = self.keys.server_write_key.get(..self.suite.key_len());
        let iv = self.keys.server_write_iv.get(..self.suite.fixed_iv_len());
        let (Some(key), Some(iv)) = (key, iv) else {
            return Err(SealError::Cipher(ErrorStack::get()));
        };
        protection
            .seal(
                self.suite,
                key,
                iv,
                seq_num,
                content_type,
                plaintext,
                &mut out,
            )
            .map_err(SealError::Cipher)?;
        Ok(out)
    }

    /// A close_notify alert record (RFC 5246 §7.2.1).
    pub(crate) fn close_notify(
        &mut self,
        protection: &mut RecordProtection,
    ) -> Result<Vec<u8>, SealError> {
        self.seal(
            protection,
            CONTENT_ALERT,
            &[ALERT_WARNING, ALERT_CLOSE_NOTIFY],
        )
    }

    /// Reads every record of one datagram from the peer; what each did goes
    /// to `out`. `buf` is scratch space for plaintext (at least
    /// [`MAX_PLAINTEXT`] bytes).
    pub(crate) fn receive(
        &mut self,
        protection: &mut RecordProtection,
        datagram: &[u8],
        buf: &mut [u8],
        out: &mut Vec<Received>,
    ) {
        let mut rest = datagram;
        while !rest.is_empty() {
            let (tail, rec) = match record::parse_record(rest) {
                Ok(parsed) => parsed,
                Err(_) => {
                    out.push(Received::Dropped(DropReason::Malformed));
                    return;
                }
            };
            rest = tail;
            if rec.epoch != self.epoch {
                // Late epoch-0 handshake records (the peer's retransmitted
                // ClientKeyExchange/ChangeCipherSpec), or garbage.
                out.push(Received::Dropped(DropReason::OtherEpoch));
                continue;
            }
            if rec.version != DTLS_1_2 {
                out.push(Received::Dropped(DropReason::Malformed));
                continue;
            }
            // RFC 6347 §4.1.2.6: duplicates are discarded before the
            // (costlier) decryption; the window moves only after the
            // record authenticated.
            if !self.replay.is_fresh(rec.sequence_number) {
                out.push(Received::Dropped(DropReason::Replayed));
                continue;
            }
            let seq_num = (u64::from(rec.epoch) << 48) | rec.sequence_number;
            let key = self.keys.client_write_key.get(..self.suite.key_len());
            let iv = self.keys.client_write_iv.get(..self.suite.fixed_iv_len());
            let (Some(key), Some(iv)) = (key, iv) else {
                out.push(Received::Dropped(DropReason::Undecryptable));
                continue;
            };
            let opened = protection.open(
                self.suite,
                key,
                iv,
                seq_num,
                rec.content_type,
                rec.version,
                rec.fragment,
                buf,
            );
            let Some(plaintext) = opened.and_then(|n| buf.get(..n)) else {
                // RFC 6347 §4.1.2.7: invalid records are silently discarded.
                out.push(Received::Dropped(DropReason::Undecryptable));
                continue;
            };
            self.replay.mark(rec.sequence_number);
            match (rec.content_type, plaintext) {
                (CONTENT_APPLICATION_DATA, data) => {
                    // The peer has our Finished: no more resends needed.
                    self.last_flight = None;
                    // Empty records carry nothing (OpenSSL skips them too).
                    if !data.is_empty() {
                        out.push(Received::Data(Bytes::copy_from_slice(data)));
                    }
                }
                (CONTENT_ALERT, [_, ALERT_CLOSE_NOTIFY]) => {
                    out.push(Received::CloseNotify);
                    return;
                }
                (CONTENT_ALERT, [ALERT_FATAL, description]) => {
                    out.push(Received::FatalAlert(*description));
                    return;
                }
                // Other warnings (e.g. no_renegotiation) change nothing.
                (CONTENT_ALERT, [ALERT_WARNING, _]) => {}
                (CONTENT_HANDSHAKE, _) => match &mut self.last_flight {
                    // The peer's Finished again: ours was lost.
                    Some(flight) if flight.resends_left > 0 => {
                        flight.resends_left -= 1;
                        out.push(Received::ResendFlight(flight.datagrams.clone()));
                    }
                    // A handshake message after the handshake is a
                    // renegotiation attempt: refused (the contexts set
                    // SSL_OP_NO_RENEGOTIATION too).
                    _ => out.push(Received::Dropped(DropReason::UnexpectedRecord)),
                },
                _ => out.push(Received::Dropped(DropReason::UnexpectedRecord)),
            }
        }
    }

    /// Test hook: pretend many records were sent.
    #[cfg(test)]
    pub(crate) fn set_next_write_seq(&mut self, seq: u64) {
        self.next_write_seq = seq;
    }
}

/// The AEAD ciphers, fetched once per server, and two reusable cipher
/// contexts (one encrypting, one decrypting): every record is sealed or
/// opened by re-keying one of them, so no per-session OpenSSL state exists.
/// A context is set up for a cipher (nonce and tag length) only when the
/// suite changes from the previous record's; re-keying alone is cheap.
pub(crate) struct RecordProtection {
    sealer: CipherCtx,
    /// The suite `sealer` is set up for; `None` after any failure.
    sealer_suite: Option<AeadSuite>,
    opener: CipherCtx,
    /// The suite `opener` is set up for; `None` after any failure.
    opener_suite: Option<AeadSuite>,
    ciphers: Ciphers,
}

struct Ciphers {
    aes_128_ccm: Option<Cipher>,
    aes_256_ccm: Option<Cipher>,
    aes_128_gcm: Option<Cipher>,
    chacha20_poly1305: Option<Cipher>,
}

impl Ciphers {
    fn get(&self, suite: AeadSuite) -> Option<&CipherRef> {
        let cipher = match suite {
            AeadSuite::AesCcm { key_len: 32, .. } => &self.aes_256_ccm,
            AeadSuite::AesCcm { .. } => &self.aes_128_ccm,
            AeadSuite::Aes128Gcm => &self.aes_128_gcm,
            AeadSuite::Chacha20Poly1305 => &self.chacha20_poly1305,
        };
        cipher.as_deref()
    }
}

impl RecordProtection {
    /// Fetches the ciphers from OpenSSL's default provider; a cipher the
    /// provider lacks only means sessions with that suite stay on
    /// OpenSSL's record layer.
    pub(crate) fn new() -> Result<Self, ErrorStack> {
        let fetch = |name: &str| Cipher::fetch(None, name, None).ok();
        Ok(RecordProtection {
            sealer: CipherCtx::new()?,
            sealer_suite: None,
            opener: CipherCtx::new()?,
            opener_suite: None,
            ciphers: Ciphers {
                aes_128_ccm: fetch("AES-128-CCM"),
                aes_256_ccm: fetch("AES-256-CCM"),
                aes_128_gcm: fetch("AES-128-GCM"),
                chacha20_poly1305: fetch("ChaCha20-Poly1305"),
            },
        })
    }

    /// Whether `suite`'s cipher is available.
    pub(crate) fn supports(&self, suite: AeadSuite) -> bool {
        self.ciphers.get(suite).is_some()
    }

    /// Appends `nonce_explicit ‖ ciphertext ‖ tag` of one record to `out`.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        suite: AeadSuite,
        key: &[u8],
        iv: &[u8],
        seq_num: u64,
        content_type: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ErrorStack> {
        let cipher = self.ciphers.get(suite).ok_or_else(ErrorStack::get)?;
        let explicit = seq_num.to_be_bytes();
        let nonce = nonce(suite, iv, explicit);
        let aad = additional_data(seq_num, content_type, DTLS_1_2, plaintext.len())?;
        let ctx = &mut self.sealer;
        let ccm = matches!(suite, AeadSuite::AesCcm { .. });
        if self.sealer_suite.take() != Some(suite) {
            ctx.encrypt_init(Some(cipher), None, None)?;
            ctx.set_iv_length(NONCE_LEN)?;
            if ccm {
                ctx.set_tag_length(suite.tag_len())?;
            }
        }
        ctx.encrypt_init(None, Some(key), Some(&nonce))?;
        if ccm {
            ctx.set_data_len(plaintext.len())?;
        }
        ctx.cipher_update(&aad, None)?;
        if suite.explicit_nonce_len() > 0 {
            out.extend_from_slice(&explicit);
        }
        let start = out.len();
        out.resize(start + plaintext.len(), 0);
        let Some(dst) = out.get_mut(start..) else {
            return Err(ErrorStack::get());
        };
        let written = ctx.cipher_update(plaintext, Some(dst))?;
        let mut scratch = [0u8; MAX_TAG_LEN];
        let finished = ctx.cipher_final(&mut scratch)?;
        if written != plaintext.len() || finished != 0 {
            return Err(ErrorStack::get());
        }
        let tag = scratch
            .get_mut(..suite.tag_len())
            .ok_or_else(ErrorStack::get)?;
        ctx.tag(tag)?;
        out.extend_from_slice(tag);
        self.sealer_suite = Some(suite);
        Ok(())
    }

    /// Decrypts and authenticates one record's fragment into `out`;
    /// returns the plaintext length, `None` if it does not authenticate
    /// (or is too short or too long).
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        suite: AeadSuite,
        key: &[u8],
        iv: &[u8],
        seq_num: u64,
        content_type: u8,
        version: u16,
        fragment: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let (explicit, sealed) = fragment.split_at_checked(suite.explicit_nonce_len())?;
        let ciphertext_len = sealed.len().checked_sub(suite.tag_len())?;
        // RFC 5246 §6.2.3: a plaintext over 2^14 is a record_overflow.
        if ciphertext_len > MAX_PLAINTEXT {
            return None;
        }
        let (ciphertext, tag) = sealed.split_at_checked(ciphertext_len)?;
        let explicit: [u8; 8] = match suite.explicit_nonce_len() {
            0 => seq_num.to_be_bytes(),
            _ => explicit.try_into().ok()?,
        };
        let nonce = nonce(suite, iv, explicit);
        let aad = additional_data(seq_num, content_type, version, ciphertext_len).ok()?;
        let dst = out.get_mut(..ciphertext_len)?;
        let cipher = self.ciphers.get(suite)?;
        let ctx = &mut self.opener;
        let ccm = matches!(suite, AeadSuite::AesCcm { .. });
        let set_up = self.opener_suite.take() == Some(suite);
        let result = (|| -> Result<bool, ErrorStack> {
            if !set_up {
                ctx.decrypt_init(Some(cipher), None, None)?;
                ctx.set_iv_length(NONCE_LEN)?;
            }
            if ccm {
                // CCM checks the tag inside the update call, so it comes
                // first (before the key, as OpenSSL's CCM wants it).
                ctx.set_tag(tag)?;
            }
            ctx.decrypt_init(None, Some(key), Some(&nonce))?;
            if ccm {
                ctx.set_data_len(ciphertext_len)?;
            }
            ctx.cipher_update(&aad, None)?;
            let written = ctx.cipher_update(ciphertext, Some(dst))?;
            if !ccm {
                ctx.set_tag(tag)?;
                let mut scratch = [0u8; MAX_TAG_LEN];
                if ctx.cipher_final(&mut scratch)? != 0 {
                    return Ok(false);
                }
            }
            Ok(written == ciphertext_len)
        })();
        match result {
            Ok(true) => {
                self.opener_suite = Some(suite);
                Some(ciphertext_len)
            }
            _ => {
                // A failed authentication leaves OpenSSL errors queued and
                // possibly unauthenticated plaintext in `dst`: clear both.
                let _ = ErrorStack::get();
                if let Some(dst) = out.get_mut(..ciphertext_len) {
                    dst.fill(0);
                }
                None
            }
        }
    }
}

/// The 12-byte AEAD nonce of a record (see the module docs).
fn nonce(suite: AeadSuite, iv: &[u8], explicit: [u8; 8]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    match suite {
        AeadSuite::AesCcm { .. } | AeadSuite::Aes128Gcm => {
            let (salt, tail) = nonce.split_at_mut(4);
            salt.iter_mut().zip(iv).for_each(|(d, s)| *d = *s);
            tail.copy_from_slice(&explicit);
        }
        AeadSuite::Chacha20Poly1305 => {
            let mut padded = [0u8; MAX_IV_LEN];
            if let Some(tail) = padded.get_mut(4..) {
                tail.copy_from_slice(&explicit);
            }
            nonce
                .iter_mut()
                .zip(iv.iter().zip(padded))
                .for_each(|(d, (i, p))| *d = i ^ p);
        }
    }
    nonce
}

/// `seq_num ‖ type ‖ version ‖ length` (RFC 5246 §6.2.3.3).
fn additional_data(
    seq_num: u64,
    content_type: u8,
    version: u16,
    plaintext_len: usize,
) -> Result<[u8; AAD_LEN], ErrorStack> {
    let len = u16::try_from(plaintext_len).map_err(|_| ErrorStack::get())?;
    let mut aad = [0u8; AAD_LEN];
    let (seq, rest) = aad.split_at_mut(8);
    seq.copy_from_slice(&seq_num.to_be_bytes());
    let (ty, rest) = rest.split_at_mut(1);
    ty.copy_from_slice(&[content_type]);
    let (ver, len_bytes) = rest.split_at_mut(2);
    ver.copy_from_slice(&version.to_be_bytes());
    len_bytes.copy_from_slice(&len.to_be_bytes());
    Ok(aad)
}

/// The name of an alert description (RFC 5246 §7.2, RFC 4279 §2).
pub(crate) fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        47 => "illegal_parameter",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        90 => "user_canceled",
        100 => "no_renegotiation",
        110 => "unsupported_extension",
        115 => "unknown_psk_identity",
        _ => "unknown alert",
    }
}

#[cfg(test)]
mod tests {
    use openssl::ssl::{ErrorCode, Ssl, SslStream};

    use super::*;
    use crate::config::base_context;
    use crate::pipe::DatagramPipe;

    const IDENTITY: &[u8] = b"client1";
    const KEY: &[u8] = b"compact-test-key";
    const MTU: u16 = 1232;

    /// The AEAD suites OpenSSL 3.0 negotiates for DTLS 1.2 PSK, all served
    /// by compact sessions.
    const SUITES: [&str; 7] = [
        "PSK-AES128-CCM8",
        "PSK-AES128-CCM",
        "PSK-AES128-GCM-SHA256",
        "PSK-AES256-CCM8",
        "PSK-AES256-CCM",
        "PSK-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305",
    ];

    struct Pair {
        client: SslStream<DatagramPipe>,
        server: SslStream<DatagramPipe>,
        /// What the server wrote in the call that finished its handshake.
        server_last_flight: Vec<Bytes>,
        /// The client datagrams that call read (its last flight).
        client_last_flight: Vec<Vec<u8>>,
    }

    fn stream(ssl: Ssl) -> SslStream<DatagramPipe> {
        SslStream::new(ssl, DatagramPipe::default()).unwrap()
    }

    /// A full OpenSSL client/server handshake over in-memory pipes.
    fn handshake(suite: &str) -> Pair {
        handshake_with(suite, |_| {})
    }

    fn handshake_with(suite: &str, client_setup: impl FnOnce(&mut SslRef)) -> Pair {
        let mut server_ctx = base_context().unwrap();
        server_ctx.set_cipher_list(suite).unwrap();
        server_ctx.set_psk_server_callback(|_, identity, psk| {
            assert_eq!(identity, Some(IDENTITY));
            psk[..KEY.len()].copy_from_slice(KEY);
            Ok(KEY.len())
        });
        let mut client_ctx = base_context().unwrap();
        client_ctx.set_cipher_list(suite).unwrap();
        client_ctx.set_psk_client_callback(|_, _, identity, psk| {
            identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
            identity[IDENTITY.len()] = 0;
            psk[..KEY.len()].copy_from_slice(KEY);
            Ok(KEY.len())
        });
        let (server_ctx, client_ctx) = (server_ctx.build(), client_ctx.build());
        let mut server = Ssl::new(&server_ctx).unwrap();
        server.set_mtu(u32::from(MTU)).unwrap();
        server.set_accept_state();
        let mut client = Ssl::new(&client_ctx).unwrap();
        client.set_mtu(u32::from(MTU)).unwrap();
        client.set_connect_state();
        client_setup(&mut client);
        let (mut client, mut server) = (stream(client), stream(server));
        let (mut client_done, mut server_done) = (false, false);
        let mut server_last_flight = Vec::new();
        let mut client_last_flight = Vec::new();
        for _ in 0..20 {
            if !client_done {
                match client.connect() {
                    Ok(()) => client_done = true,
                    Err(e) if e.code() == ErrorCode::WANT_READ => {}
                    Err(e) => panic!("{suite}: client: {e}"),
                }
            }
            let sent: Vec<Vec<u8>> = client.get_mut().outgoing.drain(..).collect();
            for d in &sent {
                server.get_mut().push(d);
            }
            if !server_done && !sent.is_empty() {
                match server.accept() {
                    Ok(()) => {
                        server_done = true;
                        client_last_flight = sent;
                        server_last_flight = server
                            .get_mut()
                            .outgoing
                            .iter()
                            .map(|d| Bytes::copy_from_slice(d))
                            .collect();
                    }
                    Err(e) if e.code() == ErrorCode::WANT_READ => {}
                    Err(e) => panic!("{suite}: server: {e}"),
                }
            }
            for d in server.get_mut().outgoing.drain(..) {
                client.get_mut().push(&d);
            }
            if client_done && server_done {
                assert_eq!(client.ssl().current_cipher().unwrap().name(), suite);
                return Pair {
                    client,
                    server,
                    server_last_flight,
                    client_last_flight,
                };
            }
        }
        panic!("{suite}: handshake did not finish");
    }

    fn compact(pair: &Pair, protection: &RecordProtection) -> CompactSession {
        CompactSession::from_finished_server(
            pair.server.ssl(),
            pair.server_last_flight.clone(),
            MTU,
            2,
            protection,
        )
        .unwrap()
    }

    /// The client's side of the same keys, to forge records OpenSSL's
    /// client API cannot send (fatal alerts, renegotiation).
    fn mirrored(session: &CompactSession, client: &SslRef) -> CompactSession {
        let (suite, mut keys) = RecordKeys::from_ssl(client).unwrap();
        std::mem::swap(&mut keys.client_write_key, &mut keys.server_write_key);
        std::mem::swap(&mut keys.client_write_iv, &mut keys.server_write_iv);
        CompactSession {
            suite,
            keys,
            epoch: session.epoch,
            next_write_seq: 1_000,
            replay: ReplayWindow::default(),
            last_flight: None,
            cipher_name: session.cipher_name,
            max_plaintext: session.max_plaintext,
        }
    }

    fn client_sends(pair: &mut Pair, bytes: &[u8]) -> Vec<u8> {
        pair.client.ssl_write(bytes).unwrap();
        let mut out: Vec<Vec<u8>> = pair.client.get_mut().outgoing.drain(..).collect();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    fn client_reads(pair: &mut Pair, datagram: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        pair.client.get_mut().push(datagram);
        let mut buf = vec![0u8; 20_000];
        match pair.client.ssl_read(&mut buf) {
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) => Err(e.code()),
        }
    }

    fn receive(
        session: &mut CompactSession,
        protection: &mut RecordProtection,
        datagram: &[u8],
    ) -> Vec<Received> {
        let mut buf = vec![0u8; MAX_PLAINTEXT + 2048];
        let mut out = Vec::new();
        session.receive(protection, datagram, &mut buf, &mut out);
        out
    }

    #[test]
    fn records_interoperate_with_openssl_for_every_aead_suite() {
        let mut protection = RecordProtection::new().unwrap();
        for suite in SUITES {
            let mut pair = handshake(suite);
            let mut session = compact(&pair, &protection);
            assert_eq!(session.cipher_name(), suite);
            // The keys are the ones OpenSSL's client derived.
            let (client_suite, client_keys) = RecordKeys::from_ssl(pair.client.ssl()).unwrap();
            assert_eq!(client_suite, session.suite);
            assert_eq!(client_keys.client_write_key, session.keys.client_write_key);
            assert_eq!(client_keys.server_write_key, session.keys.server_write_key);
            assert_eq!(client_keys.client_write_iv, session.keys.client_write_iv);
            assert_eq!(client_keys.server_write_iv, session.keys.server_write_iv);
            // Same record overhead as OpenSSL's DTLS_get_data_mtu.
            assert_eq!(
                Some(session.max_plaintext()),
                crate::ffi::data_mtu(&pair.client),
                "{suite}"
            );
            // OpenSSL's server object is no longer needed.
            let server = std::mem::replace(
                &mut pair.server,
                stream(Ssl::new(&base_context().unwrap().build()).unwrap()),
            );
            drop(server);

            // Server → client, small and as large as the MTU allows.
            for len in [1, 100, session.max_plaintext()] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let record = session
                    .seal(&mut protection, CONTENT_APPLICATION_DATA, &payload)
                    .unwrap();
                assert!(record.len() <= usize::from(MTU), "{suite}");
                assert_eq!(
                    client_reads(&mut pair, &record).unwrap(),
                    payload,
                    "{suite}"
                );
            }

            // Client → server.
            assert!(session.keeps_last_flight());
            for n in 0..3u8 {
                let record = client_sends(&mut pair, &[b'u', b'p', n]);
                assert_eq!(
                    receive(&mut session, &mut protection, &record),
                    vec![Received::Data(Bytes::from(vec![b'u', b'p', n]))],
                    "{suite}"
                );
                // The first application record proves our Finished arrived.
                assert!(!session.keeps_last_flight());
                // A replay is dropped before decryption.
                assert_eq!(
                    receive(&mut session, &mut protection, &record),
                    vec![Received::Dropped(DropReason::Replayed)]
                );
            }

            // A corrupted record is dropped and does not move the window:
            // the intact one is still accepted afterwards.
            let record = client_sends(&mut pair, b"intact");
            for index in [RECORD_HEADER_LEN, record.len() / 2, record.len() - 1] {
                let mut bad = record.clone();
                bad[index] ^= 0x40;
                assert_eq!(
                    receive(&mut session, &mut protection, &bad),
                    vec![Received::Dropped(DropReason::Undecryptable)],
                    "{suite} byte {index}"
                );
            }
            let mut bad_header = record.clone();
            bad_header[0] = CONTENT_HANDSHAKE; // authenticated as additional data
            assert_eq!(
                receive(&mut session, &mut protection, &bad_header),
                vec![Received::Dropped(DropReason::Undecryptable)]
            );
            assert_eq!(
                receive(&mut session, &mut protection, &record),
                vec![Received::Data(Bytes::from_static(b"intact"))]
            );

            // Two records in one datagram (RFC 6347 §4.1.1).
            let mut both = client_sends(&mut pair, b"one");
            both.extend(client_sends(&mut pair, b"two"));
            assert_eq!(
                receive(&mut session, &mut protection, &both),
                vec![
                    Received::Data(Bytes::from_static(b"one")),
                    Received::Data(Bytes::from_static(b"two"))
                ]
            );

            // close_notify both ways.
            let close = session.close_notify(&mut protection).unwrap();
            assert_eq!(client_reads(&mut pair, &close), Err(ErrorCode::ZERO_RETURN));
            let _ = pair.client.shutdown();
            let close: Vec<Vec<u8>> = pair.client.get_mut().outgoing.drain(..).collect();
            assert_eq!(
                receive(&mut session, &mut protection, &close[0]),
                vec![Received::CloseNotify]
            );
        }
    }

    #[test]
    fn key_expansion_matches_openssls_prf() {
        // RFC 5705 exporters use the same PRF with seed client_random +
        // server_random: compare ours with OpenSSL's.
        let pair = handshake("PSK-AES128-CCM8");
        let ssl = pair.server.ssl();
        let mut master = [0u8; 48];
        assert_eq!(ssl.session().unwrap().master_key(&mut master), 48);
        let (mut client_random, mut server_random) = ([0u8; 32], [0u8; 32]);
        ssl.client_random(&mut client_random);
        ssl.server_random(&mut server_random);
        let mut theirs = [0u8; 77];
        ssl.export_keying_material(&mut theirs, "EXPORTER-coap-dtls-test", None)
            .unwrap();
        let mut ours = [0u8; 77];
        crate::key_block::p_sha256(
            &master,
            b"EXPORTER-coap-dtls-test",
            &[&client_random, &server_random],
            &mut ours,
        )
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_retransmitted_finished_gets_the_last_flight_again_until_data_arrives() {
        let mut protection = RecordProtection::new().unwrap();
        let mut pair = handshake("PSK-AES128-CCM8");
        let mut session = compact(&pair, &protection);
        let finished_flight = pair.client_last_flight.concat();
        // The client's ClientKeyExchange and ChangeCipherSpec are epoch 0;
        // its Finished (epoch 1) authenticates and asks for our flight.
        let out = receive(&mut session, &mut protection, &finished_flight);
        assert_eq!(
            out.iter()
                .filter(|r| **r == Received::Dropped(DropReason::OtherEpoch))
                .count(),
            2
        );
        assert_eq!(
            out.last(),
            Some(&Received::ResendFlight(pair.server_last_flight.clone()))
        );
        // The same record again is a replay.
        let out = receive(&mut session, &mut protection, &finished_flight);
        assert_eq!(out.last(), Some(&Received::Dropped(DropReason::Replayed)));
        // A fresh Finished record (new sequence number) is resent to, up to
        // the bound (2 here).
        let mut client_side = mirrored(&session, pair.client.ssl());
        for expect_resend in [true, false] {
            let finished = client_side
                .seal(&mut protection, CONTENT_HANDSHAKE, &[20, 0, 0, 12])
                .unwrap();
            let out = receive(&mut session, &mut protection, &finished);
            assert_eq!(
                matches!(out[..], [Received::ResendFlight(_)]),
                expect_resend,
                "{out:?}"
            );
        }
        // After application data, a handshake record is a refused
        // renegotiation.
        let record = client_sends(&mut pair, b"data");
        assert_eq!(receive(&mut session, &mut protection, &record).len(), 1);
        let hello = client_side
            .seal(&mut protection, CONTENT_HANDSHAKE, &[1, 0, 0, 0])
            .unwrap();
        assert_eq!(
            receive(&mut session, &mut protection, &hello),
            vec![Received::Dropped(DropReason::UnexpectedRecord)]
        );
    }

    #[test]
    fn alerts_from_the_peer() {
        let mut protection = RecordProtection::new().unwrap();
        let pair = handshake("PSK-AES128-GCM-SHA256");
        let mut session = compact(&pair, &protection);
        let mut client_side = mirrored(&session, pair.client.ssl());
        // A warning other than close_notify changes nothing.
        let warning = client_side
            .seal(&mut protection, CONTENT_ALERT, &[ALERT_WARNING, 100])
            .unwrap();
        assert!(receive(&mut session, &mut protection, &warning).is_empty());
        // A fatal alert ends the session; records after it are not read.
        let mut fatal = client_side
            .seal(&mut protection, CONTENT_ALERT, &[ALERT_FATAL, 40])
            .unwrap();
        fatal.extend(
            client_side
                .seal(&mut protection, CONTENT_APPLICATION_DATA, b"after")
                .unwrap(),
        );
        assert_eq!(
            receive(&mut session, &mut protection, &fatal),
            vec![Received::FatalAlert(40)]
        );
        assert_eq!(alert_name(40), "handshake_failure");
        // An unencrypted (epoch 0) alert is not authenticated: ignored.
        let plain = [
            CONTENT_ALERT,
            0xfe,
            0xfd,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            9,
            0,
            2,
            2,
            40,
        ];
        assert_eq!(
            receive(&mut session, &mut protection, &plain),
            vec![Received::Dropped(DropReason::OtherEpoch)]
        );
        // Garbage after a valid record: the record counts, the rest is
        // malformed.
        let mut trailing = client_side
            .seal(&mut protection, CONTENT_APPLICATION_DATA, b"x")
            .unwrap();
        trailing.extend_from_slice(&[23, 0xfe]);
        assert_eq!(
            receive(&mut session, &mut protection, &trailing),
            vec![
                Received::Data(Bytes::from_static(b"x")),
                Received::Dropped(DropReason::Malformed)
            ]
        );
    }

    #[test]
    fn a_negotiated_max_fragment_length_caps_our_records() {
        let mut protection = RecordProtection::new().unwrap();
        // Mode 1: 512 bytes (RFC 6066 §4).
        let mut pair = handshake_with("PSK-AES128-CCM8", |ssl| {
            assert!(ffi::request_max_fragment_length(ssl, 1));
        });
        let mut session = compact(&pair, &protection);
        assert_eq!(session.max_plaintext(), 512);
        let record = session
            .seal(&mut protection, CONTENT_APPLICATION_DATA, &[1; 512])
            .unwrap();
        assert_eq!(client_reads(&mut pair, &record).unwrap(), vec![1; 512]);
        // Without the extension the MTU is the limit.
        let pair = handshake("PSK-AES128-CCM8");
        assert_eq!(compact(&pair, &protection).max_plaintext(), 1232 - 29);
    }

    /// Random datagrams and random corruptions of valid records: no panic,
    /// nothing delivered, the window not moved (the valid records still
    /// arrive afterwards).
    #[test]
    fn garbage_never_panics_or_delivers() {
        let mut protection = RecordProtection::new().unwrap();
        for suite in [
            "PSK-AES128-CCM8",
            "PSK-AES128-GCM-SHA256",
            "PSK-CHACHA20-POLY1305",
        ] {
            let mut pair = handshake(suite);
            let mut session = compact(&pair, &protection);
            let valid: Vec<Vec<u8>> = (0..4u8)
                .map(|i| client_sends(&mut pair, &[i; 40]))
                .collect();
            // xorshift: reproducible without a dependency.
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for round in 0..3_000 {
                let datagram: Vec<u8> = if round % 2 == 0 {
                    let mut d = valid[round % valid.len()].clone();
                    for _ in 0..1 + next() % 3 {
                        let at = (next() as usize) % d.len();
                        d[at] ^= 1 << (next() % 8);
                    }
                    if next() % 4 == 0 {
                        d.truncate((next() as usize) % d.len());
                    }
                    d
                } else {
                    // A header that looks right, then random bytes.
                    let len = (next() % 80) as usize;
                    let mut d = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, (next() % 9) as u8];
                    d.extend_from_slice(&(len as u16).to_be_bytes());
                    d.extend((0..len).map(|_| next() as u8));
                    d
                };
                let out = receive(&mut session, &mut protection, &datagram);
                assert!(
                    out.iter().all(|r| matches!(r, Received::Dropped(_))),
                    "{suite} round {round}: {out:?}"
                );
            }
            for (i, record) in valid.iter().enumerate() {
                assert_eq!(
                    receive(&mut session, &mut protection, record),
                    vec![Received::Data(Bytes::from(vec![i as u8; 40]))]
                );
            }
        }
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let mut protection = RecordProtection::new().unwrap();
        let mut pair = handshake("PSK-AES128-CCM8");
        let mut session = compact(&pair, &protection);
        session.set_next_write_seq(MAX_SEQUENCE_NUMBER);
        let last = session
            .seal(&mut protection, CONTENT_APPLICATION_DATA, b"last")
            .unwrap();
        assert_eq!(client_reads(&mut pair, &last).unwrap(), b"last");
        assert!(matches!(
            session.seal(&mut protection, CONTENT_APPLICATION_DATA, b"wrap"),
            Err(SealError::SequenceExhausted)
        ));
    }
}
