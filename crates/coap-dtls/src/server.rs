//! The sans-IO DTLS server: many peers, one socket's worth of datagrams.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslStream};

use crate::addr_hash::AddrHashBuilder;
use crate::compact::{self, CompactSession, Received, RecordProtection};
use crate::config::{ConfigError, ServerConfig};
use crate::cookie::CookieSecrets;
use crate::ffi::{self, TimeoutOutcome};
use crate::pipe::DatagramPipe;
use crate::record::{self, ClientHello, ParseError};
use crate::stats::{DropReason, HandshakeFailure, ServerStats};
use crate::{CloseReason, SendError, Transmit};

/// Largest plaintext one `send` may carry (one DTLS record; TLS's 2^14).
pub const MAX_PLAINTEXT: usize = 16_384;

/// What the server hands up to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A handshake finished; `identity` is the PSK identity that
    /// authenticated.
    SessionEstablished {
        /// The peer's address.
        peer: SocketAddr,
        /// The authenticated PSK identity.
        identity: Bytes,
    },
    /// One decrypted application datagram.
    Data {
        /// The peer's address.
        peer: SocketAddr,
        /// The PSK identity the session authenticated with.
        identity: Bytes,
        /// The plaintext.
        bytes: Bytes,
    },
    /// An established session ended.
    SessionClosed {
        /// The peer's address.
        peer: SocketAddr,
        /// The PSK identity of the session.
        identity: Bytes,
        /// Why.
        reason: CloseReason,
    },
}

/// A DTLS 1.2 PSK server for many peers as a state machine without sockets
/// or clocks (the shape of `quinn-proto`'s `Endpoint`).
///
/// # Order of calls
///
/// 1. For every datagram received on the socket:
///    [`handle_datagram(now, peer, bytes)`](Self::handle_datagram).
/// 2. Then drain [`poll_transmit`](Self::poll_transmit) and send each
///    [`Transmit`] on the socket, and drain [`poll_event`](Self::poll_event)
///    (decrypted data, sessions established/closed).
/// 3. To send application data: [`send(peer, bytes)`](Self::send), then
///    drain `poll_transmit` again.
/// 4. Arm a timer at [`poll_timeout`](Self::poll_timeout); when it fires,
///    call [`handle_timeout(now)`](Self::handle_timeout) and drain both
///    queues again. `poll_timeout` may change after any call, so read it
///    again after each.
///
/// Every call returns quickly and never blocks on one peer: a stuck
/// handshake only holds its own (capped) slot.
///
/// # Time
///
/// `now` drives handshake deadlines, idle eviction and cookie rotation. The
/// handshake retransmission timer itself lives inside OpenSSL, which reads
/// the wall clock; `poll_timeout` converts its remaining time relative to
/// the last `now` given, so pass `Instant::now()` in production.
pub struct DtlsServer {
    config: ServerConfig,
    context: SslContext,
    cookies: CookieSecrets,
    sessions: HashMap<SocketAddr, Session, AddrHashBuilder>,
    /// (deadline, peer) for every session: retransmission, handshake
    /// deadline, idle eviction, whichever is first.
    timers: BTreeSet<(Instant, SocketAddr)>,
    handshaking: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    read_buf: Vec<u8>,
    /// Ciphers and the cipher context of compact sessions.
    protection: RecordProtection,
    /// Scratch list for what a compact session received.
    received: Vec<Received>,
}

struct Session {
    /// OpenSSL's object: runs the handshake, and afterwards the record
    /// layer unless the session was compacted (then `None`).
    tls: Option<Tls>,
    state: SessionState,
    /// The ClientHello random that started the session: a cookie-verified
    /// ClientHello with the same random is a retransmission, another one is
    /// a new handshake (the device rebooted).
    client_random: [u8; 32],
    last_activity: Instant,
    deadline: Instant,
}

/// A session's OpenSSL stream over its in-memory BIO.
struct Tls {
    /// Use through `stream()`, which restores freed buffers first.
    stream: SslStream<DatagramPipe>,
    /// Whether `SSL_free_buffers` released the record buffers while idle.
    buffers_released: bool,
}

impl Tls {
    /// The OpenSSL stream, with its record buffers allocated: OpenSSL's DTLS
    /// write path does not reallocate them by itself after
    /// `SSL_free_buffers`.
    fn stream(&mut self) -> &mut SslStream<DatagramPipe> {
        if self.buffers_released {
            self.buffers_released = !ffi::alloc_buffers(&mut self.stream);
        }
        &mut self.stream
    }

    /// The stream for calls that do not touch the record layer.
    fn stream_ref(&self) -> &SslStream<DatagramPipe> {
        &self.stream
    }

    /// The in-memory BIO.
    fn pipe(&mut self) -> &mut DatagramPipe {
        self.stream.get_mut()
    }

    /// Frees the record buffers of an idle established session.
    fn release_buffers(&mut self) {
        if !self.buffers_released {
            self.buffers_released = ffi::free_buffers(&mut self.stream);
        }
    }
}

enum SessionState {
    Handshaking {
        started: Instant,
        retransmissions: u32,
    },
    Established {
        identity: Bytes,
        /// Set when the record layer was taken over from OpenSSL (and
        /// `Session::tls` freed).
        compact: Option<Box<CompactSession>>,
    },
}

impl SessionState {
    fn is_established(&self) -> bool {
        matches!(self, SessionState::Established { .. })
    }
}

/// What happened to a session during one step.
enum Step {
    Continue,
    Failed(HandshakeFailure),
    Closed(CloseReason),
}

impl DtlsServer {
    /// Creates a server; builds the OpenSSL context and the first cookie
    /// secrets.
    pub fn new(config: ServerConfig, now: Instant) -> Result<Self, ConfigError> {
        let context = config.build_context()?;
        let cookies = CookieSecrets::new(now, config.cookie_lifetime)?;
        Ok(DtlsServer {
            config,
            context,
            cookies,
            sessions: HashMap::default(),
            timers: BTreeSet::new(),
            handshaking: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            read_buf: vec![0; MAX_PLAINTEXT + 2048],
            protection: RecordProtection::new()?,
            received: Vec::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Feeds one received datagram from `peer`.
    ///
    /// Epoch-0 ClientHellos go through the stateless cookie check first
    /// (RFC 6347 §4.2.1): without a valid cookie they are answered with a
    /// HelloVerifyRequest and nothing is stored. Everything else goes to the
    /// peer's session, if there is one, and is dropped (and counted) if not.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if self.cookies.rotate_if_due(now).is_err() {
            tracing::warn!("cookie secret rotation failed; keeping the old secret");
        }
        let first_record = match record::parse_record(datagram) {
            Ok((_, record)) => record,
            Err(ParseError::NotDtls) => return self.drop_datagram(DropReason::NotDtls),
            Err(_) => return self.drop_datagram(DropReason::Malformed),
        };
        if first_record.content_type == record::CONTENT_HANDSHAKE && first_record.epoch == 0 {
            match ClientHello::parse_datagram(datagram) {
                Ok(hello) => return self.handle_client_hello(now, peer, datagram, &hello),
                Err(ParseError::NotClientHello) => {}
                Err(_) => return self.drop_datagram(DropReason::Malformed),
            }
        }
        let Some(session) = self.sessions.get_mut(&peer) else {
            return self.drop_datagram(DropReason::NoSession);
        };
        let Some(tls) = &mut session.tls else {
            return self.receive_compact(now, peer, datagram);
        };
        if !tls.pipe().push(datagram) {
            return self.drop_datagram(DropReason::SessionQueueFull);
        }
        let is_app_data = first_record.content_type == record::CONTENT_APPLICATION_DATA;
        self.drive(now, peer, is_app_data);
    }

    /// Lets OpenSSL retransmit flights whose timer expired, fails handshakes
    /// past their deadline or retransmission bound, and evicts idle
    /// sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Take the due entries first: each session is visited once per call
        // even if OpenSSL reports its timer as already expired again.
        let mut due = Vec::new();
        while let Some(&(deadline, peer)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.remove(&(deadline, peer));
            due.push(peer);
        }
        for peer in due {
            let Some(session) = self.sessions.get_mut(&peer) else {
                continue;
            };
            let step = match &mut session.state {
                SessionState::Handshaking {
                    started,
                    retransmissions,
                } => {
                    if now.saturating_duration_since(*started) >= self.config.handshake_timeout {
                        Step::Failed(HandshakeFailure::Timeout)
                    } else if let Some(tls) = &mut session.tls {
                        // Buffers are only released once established.
                        match ffi::handle_retransmit_timeout(&mut tls.stream) {
                            TimeoutOutcome::NotExpired => Step::Continue,
                            TimeoutOutcome::Retransmitted => {
                                *retransmissions += 1;
                                self.stats.retransmissions += 1;
                                if *retransmissions > self.config.retransmission.max_retransmissions
                                {
                                    Step::Failed(HandshakeFailure::Timeout)
                                } else {
                                    Step::Continue
                                }
                            }
                            TimeoutOutcome::Failed => Step::Failed(HandshakeFailure::Timeout),
                        }
                    } else {
                        Step::Failed(HandshakeFailure::Timeout)
                    }
                }
                SessionState::Established { .. } => {
                    if now.saturating_duration_since(session.last_activity)
                        >= self.config.idle_timeout
                    {
                        Step::Closed(CloseReason::IdleTimeout)
                    } else {
                        // A retransmission timer may still run right after
                        // the handshake.
                        if let Some(tls) = &mut session.tls {
                            let _ = ffi::handle_retransmit_timeout(tls.stream());
                        }
                        Step::Continue
                    }
                }
            };
            self.finish_step(now, peer, step);
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has work, if any session exists.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    /// The next datagram to send on the socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Encrypts `bytes` as one record for the established session with
    /// `peer`; the datagram is then available from `poll_transmit`.
    /// `bytes` must fit one datagram ([`max_plaintext`](Self::max_plaintext)).
    pub fn send(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        if bytes.len() > MAX_PLAINTEXT {
            return Err(SendError::TooLarge(bytes.len()));
        }
        let session = self.sessions.get_mut(&peer).ok_or(SendError::NoSession)?;
        let SessionState::Established { compact, .. } = &mut session.state else {
            return Err(SendError::NotEstablished);
        };
        if let Some(records) = compact {
            // One datagram must stay within the MTU: no IP fragmentation.
            if bytes.len() > records.max_plaintext() {
                return Err(SendError::TooLarge(bytes.len()));
            }
            return match records.seal(
                &mut self.protection,
                record::CONTENT_APPLICATION_DATA,
                bytes,
            ) {
                Ok(datagram) => {
                    session.last_activity = now;
                    self.push_transmit(peer, datagram);
                    self.rearm(now, peer);
                    Ok(())
                }
                Err(error) => {
                    let reason = CloseReason::Error(error.to_string());
                    self.finish_step(now, peer, Step::Closed(reason));
                    Err(SendError::SessionFailed(error.to_string()))
                }
            };
        }
        let Some(tls) = &mut session.tls else {
            return Err(SendError::NotEstablished);
        };
        // One datagram must stay within the MTU: no IP fragmentation.
        if ffi::data_mtu(tls.stream_ref()).is_some_and(|max| bytes.len() > max) {
            return Err(SendError::TooLarge(bytes.len()));
        }
        match tls.stream().ssl_write(bytes) {
            Ok(_) => {
                session.last_activity = now;
                self.flush_outgoing(peer);
                self.rearm(now, peer);
                Ok(())
            }
            Err(error) => {
                let reason = CloseReason::Error(error.to_string());
                self.finish_step(now, peer, Step::Closed(reason));
                Err(SendError::SessionFailed(error.to_string()))
            }
        }
    }

    /// Closes the session with `peer`, sending a close_notify alert. Returns
    /// false if there was none. A `SessionClosed` event follows if it was
    /// established.
    pub fn close(&mut self, now: Instant, peer: SocketAddr) -> bool {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return false;
        };
        if let Some(tls) = &mut session.tls {
            let _ = tls.stream().shutdown();
        } else if let SessionState::Established {
            compact: Some(records),
            ..
        } = &mut session.state
            && let Ok(alert) = records.close_notify(&mut self.protection)
        {
            self.push_transmit(peer, alert);
        }
        self.finish_step(now, peer, Step::Closed(CloseReason::LocalClose));
        true
    }

    /// Closes every session (close_notify to established peers), e.g. on
    /// shutdown. `SessionClosed` events follow.
    pub fn close_all(&mut self, now: Instant) {
        let peers: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.close(now, peer);
        }
    }

    /// The authenticated identity of the established session with `peer`.
    pub fn identity(&self, peer: SocketAddr) -> Option<&Bytes> {
        match &self.sessions.get(&peer)?.state {
            SessionState::Established { identity, .. } => Some(identity),
            SessionState::Handshaking { .. } => None,
        }
    }

    /// The largest datagram [`send`](Self::send) accepts for the established
    /// session with `peer`: the MTU minus the record overhead of the
    /// negotiated cipher suite (1203 bytes for CCM_8 at the default MTU).
    pub fn max_plaintext(&self, peer: SocketAddr) -> Option<usize> {
        let session = self.sessions.get(&peer)?;
        match (&session.state, &session.tls) {
            (
                SessionState::Established {
                    compact: Some(records),
                    ..
                },
                _,
            ) => Some(records.max_plaintext()),
            (SessionState::Established { .. }, Some(tls)) => ffi::data_mtu(tls.stream_ref()),
            _ => None,
        }
    }

    /// The negotiated cipher suite (OpenSSL name) of the established
    /// session with `peer`.
    pub fn cipher_suite(&self, peer: SocketAddr) -> Option<&'static str> {
        let session = self.sessions.get(&peer)?;
        match (&session.state, &session.tls) {
            (
                SessionState::Established {
                    compact: Some(records),
                    ..
                },
                _,
            ) => Some(records.cipher_name()),
            (SessionState::Established { .. }, Some(tls)) => tls
                .stream_ref()
                .ssl()
                .current_cipher()
                .map(|cipher| cipher.name()),
            _ => None,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        let mut stats = self.stats.clone();
        stats.sessions = self.sessions.len();
        stats.handshakes_in_progress = self.handshaking;
        stats
    }

    fn drop_datagram(&mut self, reason: DropReason) {
        self.stats.dropped.count(reason);
    }

    fn handle_client_hello(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        hello: &ClientHello<'_>,
    ) {
        if !self.cookies.verify(peer, hello.random, hello.cookie) {
            return self.send_hello_verify_request(peer, hello);
        }
        if let Some(existing) = self.sessions.get_mut(&peer) {
            if existing.client_random == *hello.random {
                // The same ClientHello again: a retransmission for the
                // running handshake (OpenSSL ignores it if it is stale).
                if matches!(existing.state, SessionState::Handshaking { .. })
                    && existing
                        .tls
                        .as_mut()
                        .is_some_and(|tls| tls.pipe().push(datagram))
                {
                    return self.drive(now, peer, false);
                }
                return self.drop_datagram(DropReason::StaleClientHello);
            }
            // A new handshake from an address with a session: the device
            // rebooted or lost its state. The cookie proved the address is
            // reachable (RFC 6347 §4.2.8), so the old session goes.
            self.finish_step(now, peer, Step::Closed(CloseReason::Replaced));
        }
        if self.handshaking >= self.config.max_handshakes {
            return self.drop_datagram(DropReason::HandshakeLimit);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return self.drop_datagram(DropReason::SessionLimit);
        }
        let stream = match self.new_session_stream(datagram) {
            Ok(Some(stream)) => stream,
            Ok(None) => return self.drop_datagram(DropReason::Malformed),
            Err(error) => {
                tracing::debug!(%peer, %error, "OpenSSL refused a cookie-verified ClientHello");
                return self.drop_datagram(DropReason::Malformed);
            }
        };
        self.stats.handshakes_started += 1;
        self.handshaking += 1;
        self.sessions.insert(
            peer,
            Session {
                tls: Some(Tls {
                    stream,
                    buffers_released: false,
                }),
                state: SessionState::Handshaking {
                    started: now,
                    retransmissions: 0,
                },
                client_random: *hello.random,
                last_activity: now,
                deadline: now,
            },
        );
        self.drive(now, peer, false);
    }

    fn send_hello_verify_request(&mut self, peer: SocketAddr, hello: &ClientHello<'_>) {
        let datagram = self
            .cookies
            .issue(peer, hello.random)
            .ok()
            .and_then(|cookie| record::hello_verify_request(hello.record_sequence_number, &cookie));
        match datagram {
            Some(datagram) => {
                self.stats.hello_verify_requests_sent += 1;
                self.push_transmit(peer, datagram);
            }
            None => self.drop_datagram(DropReason::Malformed),
        }
    }

    /// A server `Ssl` that has consumed `datagram` (a cookie-verified
    /// ClientHello) through `DTLSv1_listen`.
    fn new_session_stream(
        &self,
        datagram: &[u8],
    ) -> Result<Option<SslStream<DatagramPipe>>, openssl::error::ErrorStack> {
        let mut ssl = Ssl::new(&self.context)?;
        ssl.set_mtu(u32::from(self.config.mtu))?;
        ffi::set_retransmit_timer(&mut ssl, self.config.retransmission.timer())?;
        ssl.set_accept_state();
        let mut stream = SslStream::new(ssl, DatagramPipe::with_datagram(datagram))?;
        if ffi::listen(&mut stream)? {
            Ok(Some(stream))
        } else {
            Ok(None)
        }
    }

    /// Runs OpenSSL on whatever the session has queued: handshake progress
    /// or decryption, then collects its output.
    fn drive(&mut self, now: Instant, peer: SocketAddr, expect_data: bool) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let Some(tls) = &mut session.tls else {
            return;
        };
        let mut step = Step::Continue;
        let mut finished_now = false;
        if let SessionState::Handshaking { .. } = session.state {
            match tls.stream().accept() {
                Ok(()) => {
                    let identity = tls
                        .stream_ref()
                        .ssl()
                        .psk_identity()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default();
                    session.state = SessionState::Established {
                        identity: identity.clone(),
                        compact: None,
                    };
                    session.last_activity = now;
                    finished_now = true;
                    self.handshaking = self.handshaking.saturating_sub(1);
                    self.stats.handshakes_completed += 1;
                    self.events
                        .push_back(ServerEvent::SessionEstablished { peer, identity });
                }
                Err(error) if is_would_block(&error) => {}
                Err(error) => step = Step::Failed(HandshakeFailure::classify(&error)),
            }
        }
        if let (Step::Continue, SessionState::Established { identity, .. }) =
            (&step, &session.state)
        {
            let identity = identity.clone();
            let mut delivered = false;
            loop {
                match tls.stream().ssl_read(&mut self.read_buf) {
                    Ok(n) => {
                        let bytes = Bytes::copy_from_slice(self.read_buf.get(..n).unwrap_or(&[]));
                        delivered = true;
                        session.last_activity = now;
                        self.stats.data_in += 1;
                        self.events.push_back(ServerEvent::Data {
                            peer,
                            identity: identity.clone(),
                            bytes,
                        });
                    }
                    Err(error) if error.code() == ErrorCode::ZERO_RETURN => {
                        step = Step::Closed(CloseReason::CloseNotify);
                        break;
                    }
                    Err(error) if is_would_block(&error) => break,
                    Err(error) => {
                        step = Step::Closed(CloseReason::classify(&error));
                        break;
                    }
                }
            }
            if expect_data && !delivered && matches!(step, Step::Continue) {
                // DTLS silently discards records that fail to decrypt or
                // are replays (RFC 6347 §4.1.2.7).
                self.stats.dropped.count(DropReason::Undecryptable);
            }
        }
        if finished_now && matches!(step, Step::Continue) && self.config.compact_sessions {
            self.compact(peer);
        }
        self.finish_step(now, peer, step);
    }

    /// Takes the record layer of a session whose handshake just finished
    /// away from OpenSSL and frees its `SSL` object, if the suite is one
    /// [`CompactSession`] serves; otherwise the session stays on OpenSSL.
    fn compact(&mut self, peer: SocketAddr) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let (Some(tls), SessionState::Established { compact, .. }) =
            (&mut session.tls, &mut session.state)
        else {
            return;
        };
        // What OpenSSL wrote in the call that finished the handshake is
        // our last flight (ChangeCipherSpec + Finished).
        let flight: Vec<Bytes> = tls
            .pipe()
            .outgoing
            .iter()
            .map(|datagram| Bytes::copy_from_slice(datagram))
            .collect();
        let Some(records) = CompactSession::from_finished_server(
            tls.stream_ref().ssl(),
            flight,
            self.config.mtu,
            self.config.retransmission.max_retransmissions,
            &self.protection,
        ) else {
            return;
        };
        // Send the flight before OpenSSL's object (and its BIO) goes.
        let outgoing = std::mem::take(&mut tls.pipe().outgoing);
        *compact = Some(Box::new(records));
        session.tls = None;
        self.stats.sessions_compacted += 1;
        for datagram in outgoing {
            self.push_transmit(peer, datagram);
        }
    }

    /// Reads a datagram for a compact session.
    fn receive_compact(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let SessionState::Established {
            identity,
            compact: Some(records),
        } = &mut session.state
        else {
            return;
        };
        let mut received = std::mem::take(&mut self.received);
        records.receive(
            &mut self.protection,
            datagram,
            &mut self.read_buf,
            &mut received,
        );
        let mut step = Step::Continue;
        for outcome in received.drain(..) {
            match outcome {
                Received::Data(bytes) => {
                    session.last_activity = now;
                    self.stats.data_in += 1;
                    self.events.push_back(ServerEvent::Data {
                        peer,
                        identity: identity.clone(),
                        bytes,
                    });
                }
                Received::CloseNotify => step = Step::Closed(CloseReason::CloseNotify),
                Received::FatalAlert(description) => {
                    step = Step::Closed(CloseReason::Alert(format!(
                        "fatal alert {} ({description})",
                        compact::alert_name(description)
                    )));
                }
                Received::ResendFlight(datagrams) => {
                    self.stats.retransmissions += 1;
                    for bytes in datagrams {
                        enqueue_transmit(&mut self.transmits, &mut self.stats, peer, bytes);
                    }
                }
                Received::Dropped(reason) => self.stats.dropped.count(reason),
            }
        }
        self.received = received;
        self.finish_step(now, peer, step);
    }

    /// Collects the session's output, then either rearms its timer or
    /// removes it.
    fn finish_step(&mut self, now: Instant, peer: SocketAddr, step: Step) {
        self.flush_outgoing(peer);
        match step {
            Step::Continue => self.rearm(now, peer),
            Step::Failed(failure) => {
                self.stats.handshakes_failed.count(failure);
                self.remove(peer, None);
            }
            Step::Closed(reason) => {
                if reason == CloseReason::IdleTimeout {
                    self.stats.evictions += 1;
                }
                self.remove(peer, Some(reason));
            }
        }
    }

    fn remove(&mut self, peer: SocketAddr, reason: Option<CloseReason>) {
        let Some(session) = self.sessions.remove(&peer) else {
            return;
        };
        self.timers.remove(&(session.deadline, peer));
        match session.state {
            SessionState::Handshaking { .. } => {
                self.handshaking = self.handshaking.saturating_sub(1);
                if reason.is_some() {
                    // A handshake replaced or closed before it finished.
                    self.stats
                        .handshakes_failed
                        .count(HandshakeFailure::Aborted);
                }
            }
            SessionState::Established { identity, .. } => {
                self.stats.sessions_closed += 1;
                self.events.push_back(ServerEvent::SessionClosed {
                    peer,
                    identity,
                    reason: reason.unwrap_or(CloseReason::LocalClose),
                });
            }
        }
    }

    fn flush_outgoing(&mut self, peer: SocketAddr) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let Some(tls) = &mut session.tls else {
            return;
        };
        let outgoing = std::mem::take(&mut tls.pipe().outgoing);
        tls.pipe().shrink();
        if session.state.is_established() {
            tls.release_buffers();
        }
        for datagram in outgoing {
            self.push_transmit(peer, datagram);
        }
    }

    fn push_transmit(&mut self, peer: SocketAddr, datagram: Vec<u8>) {
        enqueue_transmit(
            &mut self.transmits,
            &mut self.stats,
            peer,
            Bytes::from(datagram),
        );
    }

    /// Recomputes the session's next deadline.
    fn rearm(&mut self, now: Instant, peer: SocketAddr) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let mut deadline = match session.state {
            SessionState::Handshaking { started, .. } => started + self.config.handshake_timeout,
            SessionState::Established { .. } => session.last_activity + self.config.idle_timeout,
        };
        if let Some(left) = session
            .tls
            .as_ref()
            .and_then(|tls| ffi::retransmit_timeout(tls.stream_ref()))
        {
            deadline = deadline.min(now + left);
        }
        // An established session's idle deadline only moves later with
        // traffic: keep the earlier timer, which then finds the session
        // active and rearms it (one wake-up per idle period instead of a
        // timer-set update per datagram).
        let keep_earlier = session.state.is_established()
            && session.deadline <= deadline
            && session.deadline > now;
        if keep_earlier && self.timers.contains(&(session.deadline, peer)) {
            return;
        }
        if deadline != session.deadline || !self.timers.contains(&(deadline, peer)) {
            self.timers.remove(&(session.deadline, peer));
            session.deadline = deadline;
            self.timers.insert((deadline, peer));
        }
    }
}

fn enqueue_transmit(
    transmits: &mut VecDeque<Transmit>,
    stats: &mut ServerStats,
    peer: SocketAddr,
    bytes: Bytes,
) {
    stats.datagrams_out += 1;
    stats.bytes_out += bytes.len() as u64;
    transmits.push_back(Transmit { peer, bytes });
}

pub(crate) fn is_would_block(error: &openssl::ssl::Error) -> bool {
    error.code() == ErrorCode::WANT_READ || error.code() == ErrorCode::WANT_WRITE
}
