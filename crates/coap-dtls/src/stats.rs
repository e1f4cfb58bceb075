//! Plain counters, read as a snapshot through `stats()`.

/// A snapshot of a server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Sessions that exist now (handshaking + established).
    pub sessions: usize,
    /// Handshakes running now.
    pub handshakes_in_progress: usize,
    /// Handshakes started (cookie-verified ClientHellos that got an `Ssl`).
    pub handshakes_started: u64,
    /// Handshakes that finished.
    pub handshakes_completed: u64,
    /// Handshakes that failed, by reason.
    pub handshakes_failed: HandshakeFailures,
    /// HelloVerifyRequests sent (cookie exchanges).
    pub hello_verify_requests_sent: u64,
    /// Handshake flights retransmitted: on timer expiry, or our last flight
    /// again when a compact session sees the peer repeat its Finished.
    pub retransmissions: u64,
    /// Established sessions whose record layer moved from OpenSSL to a
    /// compact session (see the crate docs).
    pub sessions_compacted: u64,
    /// Established sessions that ended (any reason).
    pub sessions_closed: u64,
    /// Established sessions evicted for idleness.
    pub evictions: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received (UDP payload).
    pub bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes sent (UDP payload).
    pub bytes_out: u64,
    /// Decrypted application datagrams handed up.
    pub data_in: u64,
    /// Datagrams dropped, by reason.
    pub dropped: DroppedDatagrams,
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// Not finished in time or too many retransmissions. A wrong key shows
    /// up here: the peer's Finished fails to decrypt and DTLS discards it
    /// silently (RFC 6347 §4.1.2.7).
    Timeout,
    /// The PSK store did not know the identity (`unknown_psk_identity`).
    UnknownIdentity,
    /// The peer sent a fatal alert.
    AlertReceived,
    /// OpenSSL rejected the peer's messages (no common cipher suite, bad
    /// Finished, ...).
    Protocol,
    /// Replaced by a newer ClientHello from the same address or closed.
    Aborted,
}

impl HandshakeFailure {
    pub(crate) fn classify(error: &openssl::ssl::Error) -> Self {
        let reasons: Vec<&str> = error
            .ssl_error()
            .map(|stack| stack.errors().iter().filter_map(|e| e.reason()).collect())
            .unwrap_or_default();
        if reasons.iter().any(|r| r.contains("psk identity not found")) {
            HandshakeFailure::UnknownIdentity
        } else if reasons.iter().any(|r| r.contains("alert")) {
            HandshakeFailure::AlertReceived
        } else {
            HandshakeFailure::Protocol
        }
    }
}

/// Handshake failures by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeFailures {
    /// See [`HandshakeFailure::Timeout`].
    pub timeout: u64,
    /// See [`HandshakeFailure::UnknownIdentity`].
    pub unknown_identity: u64,
    /// See [`HandshakeFailure::AlertReceived`].
    pub alert_received: u64,
    /// See [`HandshakeFailure::Protocol`].
    pub protocol: u64,
    /// See [`HandshakeFailure::Aborted`].
    pub aborted: u64,
}

impl HandshakeFailures {
    pub(crate) fn count(&mut self, failure: HandshakeFailure) {
        match failure {
            HandshakeFailure::Timeout => self.timeout += 1,
            HandshakeFailure::UnknownIdentity => self.unknown_identity += 1,
            HandshakeFailure::AlertReceived => self.alert_received += 1,
            HandshakeFailure::Protocol => self.protocol += 1,
            HandshakeFailure::Aborted => self.aborted += 1,
        }
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.timeout + self.unknown_identity + self.alert_received + self.protocol + self.aborted
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a DTLS record (e.g. plaintext CoAP on the DTLS port).
    NotDtls,
    /// A DTLS record or ClientHello that does not parse.
    Malformed,
    /// A non-ClientHello record from an address without a session.
    NoSession,
    /// A cookie-verified ClientHello while `max_handshakes` run.
    HandshakeLimit,
    /// A cookie-verified ClientHello while `max_sessions` exist.
    SessionLimit,
    /// An application record that did not decrypt (or was a replay).
    Undecryptable,
    /// A cookie-verified ClientHello repeated for an established session.
    StaleClientHello,
    /// Too many datagrams queued for one session inside one call.
    SessionQueueFull,
    /// The application's receive queue (tokio driver) was full.
    ReceiveQueueFull,
    /// A record of an established compact session that repeats one already
    /// received or lies left of the replay window (RFC 6347 §4.1.2.6).
    Replayed,
    /// A record of an established compact session from an epoch other
    /// than the current one (e.g. a late epoch-0 handshake retransmission).
    OtherEpoch,
    /// An authenticated record an established compact session does not
    /// take: a handshake message after the handshake (renegotiation is
    /// refused), change_cipher_spec or heartbeat.
    UnexpectedRecord,
}

/// Dropped datagrams by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedDatagrams {
    /// See [`DropReason::NotDtls`].
    pub not_dtls: u64,
    /// See [`DropReason::Malformed`].
    pub malformed: u64,
    /// See [`DropReason::NoSession`].
    pub no_session: u64,
    /// See [`DropReason::HandshakeLimit`].
    pub handshake_limit: u64,
    /// See [`DropReason::SessionLimit`].
    pub session_limit: u64,
    /// See [`DropReason::Undecryptable`].
    pub undecryptable: u64,
    /// See [`DropReason::StaleClientHello`].
    pub stale_client_hello: u64,
    /// See [`DropReason::SessionQueueFull`].
    pub session_queue_full: u64,
    /// See [`DropReason::ReceiveQueueFull`].
    pub receive_queue_full: u64,
    /// See [`DropReason::Replayed`].
    pub replayed: u64,
    /// See [`DropReason::OtherEpoch`].
    pub other_epoch: u64,
    /// See [`DropReason::UnexpectedRecord`].
    pub unexpected_record: u64,
}

impl DroppedDatagrams {
    pub(crate) fn count(&mut self, reason: DropReason) {
        match reason {
            DropReason::NotDtls => self.not_dtls += 1,
            DropReason::Malformed => self.malformed += 1,
            DropReason::NoSession => self.no_session += 1,
            DropReason::HandshakeLimit => self.handshake_limit += 1,
            DropReason::SessionLimit => self.session_limit += 1,
            DropReason::Undecryptable => self.undecryptable += 1,
            DropReason::StaleClientHello => self.stale_client_hello += 1,
            DropReason::SessionQueueFull => self.session_queue_full += 1,
            DropReason::ReceiveQueueFull => self.receive_queue_full += 1,
            DropReason::Replayed => self.replayed += 1,
            DropReason::OtherEpoch => self.other_epoch += 1,
            DropReason::UnexpectedRecord => self.unexpected_record += 1,
        }
    }
}
