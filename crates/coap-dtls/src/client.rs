//! The sans-IO DTLS client: one session to one server.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslStream};

use crate::config::{ClientConfig, ConfigError};
use crate::ffi::{self, TimeoutOutcome};
use crate::pipe::DatagramPipe;
use crate::server::{MAX_PLAINTEXT, is_would_block};
use crate::stats::HandshakeFailure;
use crate::{CloseReason, SendError};

/// A client configuration turned into an OpenSSL context, cheap to clone and
/// to start many sessions from (the load generator does).
#[derive(Clone)]
pub struct DtlsConnector {
    config: ClientConfig,
    context: SslContext,
}

impl std::fmt::Debug for DtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsConnector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DtlsConnector {
    /// Builds the OpenSSL client context.
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        let context = config.build_context()?;
        Ok(DtlsConnector { config, context })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts a handshake; the ClientHello is ready in `poll_transmit`.
    pub fn connect(&self, now: Instant) -> Result<ClientSession, ConfigError> {
        let mut ssl = Ssl::new(&self.context)?;
        ssl.set_mtu(u32::from(self.config.mtu))?;
        ffi::set_retransmit_timer(&mut ssl, self.config.retransmission.timer())?;
        ssl.set_connect_state();
        let stream = SslStream::new(ssl, DatagramPipe::default())?;
        let mut session = ClientSession {
            stream,
            state: ClientState::Handshaking {
                started: now,
                retransmissions: 0,
            },
            config: self.config.clone(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            read_buf: vec![0; MAX_PLAINTEXT + 2048],
            now,
        };
        session.drive();
        Ok(session)
    }
}

/// What a client session hands up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake finished.
    Connected,
    /// One decrypted datagram from the server.
    Data(Bytes),
    /// The handshake failed.
    HandshakeFailed(HandshakeFailure),
    /// The established session ended.
    Closed(CloseReason),
}

/// One client session as a state machine without socket or clock.
///
/// # Order of calls
///
/// [`DtlsConnector::connect`] → drain [`poll_transmit`](Self::poll_transmit)
/// to the socket → for each datagram from the server
/// [`handle_datagram`](Self::handle_datagram) → drain `poll_transmit` and
/// [`poll_event`](Self::poll_event) → at [`poll_timeout`](Self::poll_timeout)
/// call [`handle_timeout`](Self::handle_timeout). Once
/// [`ClientEvent::Connected`] came, [`send`](Self::send) encrypts data.
pub struct ClientSession {
    stream: SslStream<DatagramPipe>,
    state: ClientState,
    config: ClientConfig,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    read_buf: Vec<u8>,
    now: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientState {
    Handshaking {
        started: Instant,
        retransmissions: u32,
    },
    Established,
    Closed,
}

impl ClientSession {
    /// Feeds one datagram received from the server.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        self.now = now;
        if self.state == ClientState::Closed {
            return;
        }
        let _ = self.stream.get_mut().push(datagram);
        self.drive();
    }

    /// Retransmits the last flight if OpenSSL's timer expired; fails the
    /// handshake past its deadline or retransmission bound.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if let ClientState::Handshaking {
            started,
            retransmissions,
        } = &mut self.state
        {
            let failed = if now.saturating_duration_since(*started) >= self.config.handshake_timeout
            {
                true
            } else {
                match ffi::handle_retransmit_timeout(&mut self.stream) {
                    TimeoutOutcome::NotExpired => false,
                    TimeoutOutcome::Retransmitted => {
                        *retransmissions += 1;
                        *retransmissions > self.config.retransmission.max_retransmissions
                    }
                    TimeoutOutcome::Failed => true,
                }
            };
            self.flush();
            if failed {
                self.fail(HandshakeFailure::Timeout);
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next (only
    /// while handshaking).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Handshaking { started, .. } => {
                let deadline = started + self.config.handshake_timeout;
                Some(match ffi::retransmit_timeout(&self.stream) {
                    Some(left) => deadline.min(self.now + left),
                    None => deadline,
                })
            }
            _ => None,
        }
    }

    /// The next datagram to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether the handshake has finished and the session is open.
    pub fn is_established(&self) -> bool {
        self.state == ClientState::Established
    }

    /// The largest datagram [`send`](Self::send) accepts (MTU minus record
    /// overhead), once established.
    pub fn max_plaintext(&self) -> Option<usize> {
        if !self.is_established() {
            return None;
        }
        ffi::data_mtu(&self.stream)
    }

    /// The negotiated cipher suite's OpenSSL name, once established.
    pub fn cipher_suite(&self) -> Option<&'static str> {
        if !self.is_established() {
            return None;
        }
        self.stream
            .ssl()
            .current_cipher()
            .map(|cipher| cipher.name())
    }

    /// Whether the session failed or closed.
    pub fn is_closed(&self) -> bool {
        self.state == ClientState::Closed
    }

    /// Encrypts `bytes` as one record; the datagram is then in
    /// `poll_transmit`.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        if bytes.len() > MAX_PLAINTEXT {
            return Err(SendError::TooLarge(bytes.len()));
        }
        match self.state {
            ClientState::Established => {}
            ClientState::Handshaking { .. } => return Err(SendError::NotEstablished),
            ClientState::Closed => return Err(SendError::NoSession),
        }
        if ffi::data_mtu(&self.stream).is_some_and(|max| bytes.len() > max) {
            return Err(SendError::TooLarge(bytes.len()));
        }
        match self.stream.ssl_write(bytes) {
            Ok(_) => {
                self.flush();
                Ok(())
            }
            Err(error) => {
                self.flush();
                self.close_with(CloseReason::Error(error.to_string()));
                Err(SendError::SessionFailed(error.to_string()))
            }
        }
    }

    /// Sends close_notify and closes the session.
    pub fn close(&mut self) {
        if self.state == ClientState::Closed {
            return;
        }
        let _ = self.stream.shutdown();
        self.flush();
        self.close_with(CloseReason::LocalClose);
    }

    fn drive(&mut self) {
        if let ClientState::Handshaking { .. } = self.state {
            match self.stream.connect() {
                Ok(()) => {
                    self.state = ClientState::Established;
                    self.events.push_back(ClientEvent::Connected);
                }
                Err(error) if is_would_block(&error) => {}
                Err(error) => {
                    self.flush();
                    return self.fail(HandshakeFailure::classify(&error));
                }
            }
        }
        if self.state == ClientState::Established {
            loop {
                match self.stream.ssl_read(&mut self.read_buf) {
                    Ok(n) => {
                        let bytes = Bytes::copy_from_slice(self.read_buf.get(..n).unwrap_or(&[]));
                        self.events.push_back(ClientEvent::Data(bytes));
                    }
                    Err(error) if error.code() == ErrorCode::ZERO_RETURN => {
                        self.flush();
                        return self.close_with(CloseReason::CloseNotify);
                    }
                    Err(error) if is_would_block(&error) => break,
                    Err(error) => {
                        self.flush();
                        return self.close_with(CloseReason::classify(&error));
                    }
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        let pipe = self.stream.get_mut();
        for datagram in pipe.outgoing.drain(..) {
            self.transmits.push_back(Bytes::from(datagram));
        }
    }

    fn fail(&mut self, failure: HandshakeFailure) {
        self.state = ClientState::Closed;
        self.events.push_back(ClientEvent::HandshakeFailed(failure));
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.state = ClientState::Closed;
        self.events.push_back(ClientEvent::Closed(reason));
    }
}
