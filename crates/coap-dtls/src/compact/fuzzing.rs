//! Fuzzing hooks (cargo feature `fuzzing`, never on in the binaries): a
//! [`CompactSession`] built from fixed record keys instead of a finished
//! OpenSSL handshake, and the bare [`ReplayWindow`], so that the
//! `dtls_record` fuzz target can feed arbitrary records through the same
//! code the server runs for established sessions.
//!
//! Not a stable API: names and shapes follow the fuzz target.

use bytes::Bytes;

use super::{CompactSession, LastFlight, Received, RecordProtection};
use crate::key_block::{AeadSuite, MAX_IV_LEN, MAX_KEY_LEN, RecordKeys};
use crate::replay::{ReplayWindow, WINDOW};
use crate::server::MAX_PLAINTEXT;
use crate::stats::DropReason;

/// Width of the anti-replay window in records.
pub const REPLAY_WINDOW: u64 = WINDOW;

/// Number of AEAD suites [`FuzzSession::new`] accepts (`suite % SUITES`).
pub const SUITES: u8 = 6;

fn suite(index: u8) -> AeadSuite {
    match index % SUITES {
        0 => AeadSuite::AesCcm {
            key_len: 16,
            tag_len: 8,
        },
        1 => AeadSuite::AesCcm {
            key_len: 16,
            tag_len: 16,
        },
        2 => AeadSuite::AesCcm {
            key_len: 32,
            tag_len: 8,
        },
        3 => AeadSuite::AesCcm {
            key_len: 32,
            tag_len: 16,
        },
        4 => AeadSuite::Aes128Gcm,
        _ => AeadSuite::Chacha20Poly1305,
    }
}

/// The AEAD ciphers and contexts shared by all sessions of a server.
pub struct FuzzProtection(RecordProtection);

impl FuzzProtection {
    /// Fetches the ciphers; `None` if OpenSSL cannot make a context.
    pub fn new() -> Option<Self> {
        RecordProtection::new().ok().map(FuzzProtection)
    }

    /// Whether the suite with this index has its cipher.
    pub fn supports(&self, suite_index: u8) -> bool {
        self.0.supports(suite(suite_index))
    }
}

/// What one received record did ([`Received`] with the flight counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuzzReceived {
    /// Application data.
    Data(Bytes),
    /// close_notify.
    CloseNotify,
    /// A fatal alert.
    FatalAlert(u8),
    /// The last flight is resent (how many datagrams).
    ResendFlight(usize),
    /// Dropped.
    Dropped(DropReason),
}

/// Fixed key material for both directions.
#[derive(Debug, Clone, Copy)]
pub struct FuzzKeys {
    /// Client write key (the first `key_len` bytes are used).
    pub client_write_key: [u8; MAX_KEY_LEN],
    /// Server write key.
    pub server_write_key: [u8; MAX_KEY_LEN],
    /// Client write IV (the first `fixed_iv_len` bytes are used).
    pub client_write_iv: [u8; MAX_IV_LEN],
    /// Server write IV.
    pub server_write_iv: [u8; MAX_IV_LEN],
}

impl FuzzKeys {
    /// The same keys seen from the other side (client and server swapped):
    /// a session with these seals what the original opens.
    pub fn mirrored(&self) -> Self {
        FuzzKeys {
            client_write_key: self.server_write_key,
            server_write_key: self.client_write_key,
            client_write_iv: self.server_write_iv,
            server_write_iv: self.client_write_iv,
        }
    }
}

/// A compact session with fixed keys.
pub struct FuzzSession {
    inner: CompactSession,
    buf: Vec<u8>,
}

impl FuzzSession {
    /// A session of suite `suite_index % SUITES` in `epoch` whose next
    /// record gets `next_write_seq`, keeping `last_flight` for up to
    /// `max_resends` resends.
    pub fn new(
        suite_index: u8,
        keys: &FuzzKeys,
        epoch: u16,
        next_write_seq: u64,
        last_flight: Vec<Bytes>,
        max_resends: u32,
        max_plaintext: u16,
    ) -> Self {
        let suite = suite(suite_index);
        FuzzSession {
            inner: CompactSession {
                suite,
                keys: RecordKeys {
                    client_write_key: keys.client_write_key,
                    server_write_key: keys.server_write_key,
                    client_write_iv: keys.client_write_iv,
                    server_write_iv: keys.server_write_iv,
                },
                epoch,
                next_write_seq,
                replay: ReplayWindow::default(),
                last_flight: Some(LastFlight {
                    datagrams: last_flight,
                    resends_left: max_resends,
                }),
                cipher_name: "fuzz",
                max_plaintext,
            },
            buf: vec![0; MAX_PLAINTEXT],
        }
    }

    /// Bytes a record adds to its plaintext besides the 13-byte header.
    pub fn expansion(&self) -> usize {
        self.inner.suite.expansion()
    }

    /// The epoch.
    pub fn epoch(&self) -> u16 {
        self.inner.epoch
    }

    /// Sequence number of the next sealed record.
    pub fn next_write_seq(&self) -> u64 {
        self.inner.next_write_seq
    }

    /// Sets the sequence number of the next sealed record.
    pub fn set_next_write_seq(&mut self, seq: u64) {
        self.inner.next_write_seq = seq;
    }

    /// Largest plaintext per record.
    pub fn max_plaintext(&self) -> usize {
        self.inner.max_plaintext()
    }

    /// Whether the last flight is still kept.
    pub fn keeps_last_flight(&self) -> bool {
        self.inner.last_flight.is_some()
    }

    /// Whether a record with `seq` would pass the replay check.
    pub fn is_fresh(&self, seq: u64) -> bool {
        self.inner.replay.is_fresh(seq)
    }

    /// One protected record, or why not.
    pub fn seal(
        &mut self,
        protection: &mut FuzzProtection,
        content_type: u8,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.inner
            .seal(&mut protection.0, content_type, plaintext)
            .map_err(|e| e.to_string())
    }

    /// A close_notify record.
    pub fn close_notify(&mut self, protection: &mut FuzzProtection) -> Result<Vec<u8>, String> {
        self.inner
            .close_notify(&mut protection.0)
            .map_err(|e| e.to_string())
    }

    /// Reads every record of one datagram.
    pub fn receive(
        &mut self,
        protection: &mut FuzzProtection,
        datagram: &[u8],
    ) -> Vec<FuzzReceived> {
        let mut out = Vec::new();
        self.inner
            .receive(&mut protection.0, datagram, &mut self.buf, &mut out);
        out.into_iter()
            .map(|r| match r {
                Received::Data(data) => FuzzReceived::Data(data),
                Received::CloseNotify => FuzzReceived::CloseNotify,
                Received::FatalAlert(d) => FuzzReceived::FatalAlert(d),
                Received::ResendFlight(flight) => FuzzReceived::ResendFlight(flight.len()),
                Received::Dropped(reason) => FuzzReceived::Dropped(reason),
            })
            .collect()
    }
}

/// The bare anti-replay window.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuzzReplayWindow(ReplayWindow);

impl FuzzReplayWindow {
    /// See `ReplayWindow::is_fresh`.
    pub fn is_fresh(&self, seq: u64) -> bool {
        self.0.is_fresh(seq)
    }

    /// See `ReplayWindow::mark`.
    pub fn mark(&mut self, seq: u64) {
        self.0.mark(seq);
    }
}
