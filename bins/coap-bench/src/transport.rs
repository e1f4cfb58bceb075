//! Plain UDP or one DTLS-PSK session, behind one non-blocking `send` and a
//! receive step that yields CoAP datagrams.
//!
//! Sends never wait: a datagram is written with `try_send`; only when the
//! kernel buffer is full is it copied into a small backlog that the lane
//! drains when the socket is writable again (the only allocation on the send
//! path, and only under back-pressure).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use coap_dtls::{ClientEvent, ClientSession, DtlsConnector};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::net::UdpSocket;

/// Most datagrams kept while the socket is not writable; beyond, sends fail.
const BACKLOG_LIMIT: usize = 4096;
/// Socket buffer size requested (the kernel may cap it at `rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// A bound UDP socket plus, for `coaps://`, an established DTLS session.
pub(crate) struct Transport {
    socket: UdpSocket,
    peer: SocketAddr,
    dtls: Option<ClientSession>,
    backlog: VecDeque<Vec<u8>>,
    /// Decrypted datagrams waiting to be handled (DTLS only).
    plaintext: VecDeque<Bytes>,
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendFailure {
    /// The backlog is full.
    Backlog,
    /// The socket or the DTLS session failed.
    Failed,
}

impl Transport {
    /// A UDP socket on an ephemeral port of the matching address family.
    pub(crate) fn udp(peer: SocketAddr) -> anyhow::Result<Transport> {
        Ok(Transport {
            socket: bind_ephemeral(peer)?,
            peer,
            dtls: None,
            backlog: VecDeque::new(),
            plaintext: VecDeque::new(),
        })
    }

    /// A connected UDP socket with a completed DTLS handshake.
    pub(crate) async fn dtls(
        peer: SocketAddr,
        connector: &DtlsConnector,
        limit: Duration,
    ) -> anyhow::Result<Transport> {
        let socket = bind_ephemeral(peer)?;
        socket.connect(peer).await?;
        let session = connector
            .connect(Instant::now())
            .context("cannot start a DTLS session")?;
        let mut transport = Transport {
            socket,
            peer,
            dtls: Some(session),
            backlog: VecDeque::new(),
            plaintext: VecDeque::new(),
        };
        let handshake = async {
            let mut buf = vec![0u8; 65_536];
            transport.flush_dtls();
            loop {
                let Some(session) = transport.dtls.as_mut() else {
                    bail!("no DTLS session");
                };
                if session.is_established() {
                    return Ok(());
                }
                if session.is_closed() {
                    bail!("DTLS handshake failed");
                }
                let deadline = session
                    .poll_timeout()
                    .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
                tokio::select! {
                    received = transport.socket.recv(&mut buf) => {
                        if let Ok(n) = received {
                            transport.handle_datagram(buf.get(..n).unwrap_or_default())?;
                        }
                    }
                    () = tokio::time::sleep_until(deadline.into()) => {
                        if let Some(session) = transport.dtls.as_mut() {
                            session.handle_timeout(Instant::now());
                        }
                        transport.flush_dtls();
                    }
                }
            }
        };
        tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| anyhow::anyhow!("DTLS handshake with {peer} timed out"))??;
        Ok(transport)
    }

    /// The underlying socket (for `recv_from` and `writable`).
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The server address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The largest CoAP datagram one DTLS record carries (None for UDP).
    pub(crate) fn max_datagram(&self) -> Option<usize> {
        self.dtls.as_ref().and_then(ClientSession::max_plaintext)
    }

    /// Whether datagrams wait for the socket to become writable.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Sends one CoAP datagram (encrypting it for DTLS) without waiting.
    pub(crate) fn send(&mut self, datagram: &[u8]) -> Result<(), SendFailure> {
        if let Some(session) = self.dtls.as_mut() {
            session.send(datagram).map_err(|_| SendFailure::Failed)?;
            self.flush_dtls();
            return Ok(());
        }
        self.send_raw(datagram)
    }

    fn send_raw(&mut self, datagram: &[u8]) -> Result<(), SendFailure> {
        if !self.backlog.is_empty() {
            return self.queue(datagram);
        }
        // A direct non-blocking syscall: tokio's `try_send_to` refuses to
        // try until its reactor has seen the socket writable once, which
        // would push the first datagrams of every socket into the backlog.
        let socket = SockRef::from(&self.socket);
        let sent = if self.dtls.is_some() {
            socket.send(datagram)
        } else {
            socket.send_to(datagram, &SockAddr::from(self.peer))
        };
        match sent {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.queue(datagram),
            // ICMP port unreachable from an earlier datagram: the server
            // is not there (yet); the request times out like a lost one.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(_) => Err(SendFailure::Failed),
        }
    }

    fn queue(&mut self, datagram: &[u8]) -> Result<(), SendFailure> {
        if self.backlog.len() >= BACKLOG_LIMIT {
            return Err(SendFailure::Backlog);
        }
        self.backlog.push_back(datagram.to_vec());
        Ok(())
    }

    /// Sends what the backlog holds until the socket would block again.
    pub(crate) fn flush_backlog(&mut self) {
        while let Some(datagram) = self.backlog.front() {
            let sent = if self.dtls.is_some() {
                self.socket.try_send(datagram)
            } else {
                self.socket.try_send_to(datagram, self.peer)
            };
            match sent {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                _ => {
                    self.backlog.pop_front();
                }
            }
        }
    }

    /// Waits until the backlog is sent (bounded by `limit`).
    pub(crate) async fn drain_backlog(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.has_backlog() && Instant::now() < deadline {
            let writable = tokio::time::timeout_at(deadline.into(), self.socket.writable()).await;
            if !matches!(writable, Ok(Ok(()))) {
                return;
            }
            self.flush_backlog();
        }
    }

    /// Handles one received UDP datagram. For plain UDP the caller uses the
    /// bytes directly (this returns `Ok(false)`); for DTLS they are
    /// decrypted into [`next_plaintext`](Self::next_plaintext) (`Ok(true)`).
    pub(crate) fn handle_datagram(&mut self, datagram: &[u8]) -> anyhow::Result<bool> {
        let Some(session) = self.dtls.as_mut() else {
            return Ok(false);
        };
        session.handle_datagram(Instant::now(), datagram);
        self.flush_dtls();
        let Some(session) = self.dtls.as_mut() else {
            return Ok(true);
        };
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Data(bytes) => self.plaintext.push_back(bytes),
                ClientEvent::Connected => {}
                ClientEvent::HandshakeFailed(failure) => {
                    bail!("DTLS handshake failed: {failure:?}")
                }
                ClientEvent::Closed(reason) => bail!("DTLS session closed: {reason:?}"),
                _ => {}
            }
        }
        Ok(true)
    }

    /// The next decrypted CoAP datagram (DTLS only).
    pub(crate) fn next_plaintext(&mut self) -> Option<Bytes> {
        self.plaintext.pop_front()
    }

    /// Sends close_notify (DTLS only).
    pub(crate) fn close(&mut self) {
        if let Some(session) = self.dtls.as_mut() {
            session.close();
            self.flush_dtls();
        }
    }

    fn flush_dtls(&mut self) {
        while let Some(datagram) = self.dtls.as_mut().and_then(ClientSession::poll_transmit) {
            let _ = self.send_raw(&datagram);
        }
    }
}

/// Binds an ephemeral port with large buffers, non-blocking, for tokio.
fn bind_ephemeral(peer: SocketAddr) -> anyhow::Result<UdpSocket> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}
