//! Thin tokio drivers: [`DtlsSocket`] runs a [`DtlsServer`] on a UDP socket,
//! [`DtlsClient`] runs one [`ClientSession`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::batch::{self, Datagrams};
use crate::client::{ClientEvent, ClientSession, DtlsConnector};
use crate::config::{ConfigError, ServerConfig};
use crate::server::{DtlsServer, ServerEvent};
use crate::stats::{HandshakeFailure, ServerStats};
use crate::{CloseReason, SendError, Transmit};

/// One decrypted datagram with its authenticated origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The PSK identity that authenticated the session.
    pub identity: Bytes,
    /// The plaintext.
    pub bytes: Bytes,
}

/// What [`DtlsSocket::recv_event`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketEvent {
    /// A decrypted datagram.
    Data(Datagram),
    /// A handshake finished.
    SessionEstablished {
        /// The peer's address.
        peer: SocketAddr,
        /// The authenticated PSK identity.
        identity: Bytes,
    },
    /// An established session ended (per-peer state kept above this layer
    /// can go).
    SessionClosed {
        /// The peer's address.
        peer: SocketAddr,
        /// The session's PSK identity.
        identity: Bytes,
        /// Why.
        reason: CloseReason,
    },
}

/// Errors of the tokio drivers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Socket I/O failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The configuration could not be turned into an OpenSSL context.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client handshake failed.
    #[error("DTLS handshake failed: {0:?}")]
    Handshake(HandshakeFailure),
    /// The session was closed.
    #[error("DTLS session closed: {0:?}")]
    Closed(CloseReason),
    /// Sending failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The driver task has stopped.
    #[error("DTLS socket driver stopped")]
    DriverStopped,
}

/// Capacity of the queue of events waiting for `recv`/`recv_event`; when
/// full, further events are dropped and counted
/// (`dropped.receive_queue_full`).
const RECEIVE_QUEUE: usize = 4096;

/// A DTLS server on one UDP socket.
///
/// A background task owns the receive side and the timer; `send_to` encrypts
/// under a short lock and sends directly. Dropping the `DtlsSocket` stops the
/// task.
///
/// Use either [`recv`](Self::recv) (data only; session events are skipped)
/// or [`recv_event`](Self::recv_event) (data and session
/// established/closed), from one consumer.
pub struct DtlsSocket {
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::Receiver<SocketEvent>>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

struct Shared {
    server: Mutex<DtlsServer>,
    socket: UdpSocket,
    receive_queue_full: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DtlsServer> {
        // A panic while holding the lock cannot leave the server in a state
        // worse than the panic itself; keep serving.
        self.server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl DtlsSocket {
    /// Binds `addr` and starts the driver task (needs a tokio runtime).
    /// The socket asks for 4 MiB of receive and send buffer (best effort,
    /// capped by `net.core.rmem_max` / `wmem_max`) so that bursts queue in
    /// the kernel instead of being dropped.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, SocketError> {
        let socket = UdpSocket::bind(addr).await?;
        #[cfg(target_os = "linux")]
        {
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(&socket, sockopt::RcvBuf, &(4 << 20));
            let _ = setsockopt(&socket, sockopt::SndBuf, &(4 << 20));
        }
        Self::from_socket(socket, config)
    }

    /// Runs on an already bound socket.
    pub fn from_socket(socket: UdpSocket, config: ServerConfig) -> Result<Self, SocketError> {
        let local_addr = socket.local_addr()?;
        let server = DtlsServer::new(config, Instant::now())?;
        let shared = Arc::new(Shared {
            server: Mutex::new(server),
            socket,
            receive_queue_full: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        let task = tokio::spawn(drive_server(Arc::clone(&shared), tx));
        Ok(DtlsSocket {
            shared,
            events: tokio::sync::Mutex::new(rx),
            local_addr,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next decrypted datagram from any peer (session events skipped).
    pub async fn recv(&self) -> Result<Datagram, SocketError> {
        loop {
            if let SocketEvent::Data(datagram) = self.recv_event().await? {
                return Ok(datagram);
            }
        }
    }

    /// The next decrypted datagram or session event.
    pub async fn recv_event(&self) -> Result<SocketEvent, SocketError> {
        self.events
            .lock()
            .await
            .recv()
            .await
            .ok_or(SocketError::DriverStopped)
    }

    /// Encrypts `bytes` for the established session with `peer` and sends it.
    pub async fn send_to(&self, peer: SocketAddr, bytes: &[u8]) -> Result<(), SocketError> {
        let transmits = {
            let mut server = self.shared.lock();
            server.send(Instant::now(), peer, bytes)?;
            drain_transmits(&mut server)
        };
        for transmit in transmits {
            self.shared
                .socket
                .send_to(&transmit.bytes, transmit.peer)
                .await?;
        }
        Ok(())
    }

    /// Encrypts each `(peer, plaintext)` for its peer's established session
    /// under one lock and sends the records together (one `sendmmsg` on
    /// Linux). A datagram that cannot be encrypted or sent is logged and
    /// skipped; returns how many were encrypted.
    pub async fn send_many<'a>(
        &self,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
    ) -> usize {
        let (sealed, transmits) = {
            let mut server = self.shared.lock();
            let now = Instant::now();
            let mut sealed = 0;
            for (peer, bytes) in datagrams {
                match server.send(now, peer, bytes) {
                    Ok(()) => sealed += 1,
                    Err(error) => tracing::debug!(%error, %peer, "DTLS send failed"),
                }
            }
            (sealed, drain_transmits(&mut server))
        };
        batch::send_all(&self.shared.socket, &transmits).await;
        sealed
    }

    /// Waits for at least one decrypted datagram, then takes those already
    /// queued, up to `max` in all, handing each to `f` (session events are
    /// skipped). Cancel-safe. Returns how many were handed over.
    pub async fn recv_many(
        &self,
        max: usize,
        mut f: impl FnMut(Datagram),
    ) -> Result<usize, SocketError> {
        let mut events = self.events.lock().await;
        let mut count = 0;
        while count == 0 {
            if let SocketEvent::Data(datagram) =
                events.recv().await.ok_or(SocketError::DriverStopped)?
            {
                f(datagram);
                count += 1;
            }
        }
        while count < max {
            match events.try_recv() {
                Ok(SocketEvent::Data(datagram)) => {
                    f(datagram);
                    count += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(count)
    }

    /// Closes the session with `peer` (close_notify); false if none.
    pub async fn close(&self, peer: SocketAddr) -> Result<bool, SocketError> {
        let (closed, transmits) = {
            let mut server = self.shared.lock();
            let closed = server.close(Instant::now(), peer);
            (closed, drain_transmits(&mut server))
        };
        for transmit in transmits {
            self.shared
                .socket
                .send_to(&transmit.bytes, transmit.peer)
                .await?;
        }
        Ok(closed)
    }

    /// Sends close_notify to every peer and drops all sessions (graceful
    /// shutdown); the socket keeps serving new handshakes until dropped.
    pub async fn close_all(&self) -> Result<(), SocketError> {
        let transmits = {
            let mut server = self.shared.lock();
            server.close_all(Instant::now());
            drain_transmits(&mut server)
        };
        for transmit in transmits {
            self.shared
                .socket
                .send_to(&transmit.bytes, transmit.peer)
                .await?;
        }
        Ok(())
    }

    /// The authenticated identity of the session with `peer`, if established.
    pub fn identity(&self, peer: SocketAddr) -> Option<Bytes> {
        self.shared.lock().identity(peer).cloned()
    }

    /// The largest datagram `send_to` accepts for `peer` (MTU minus the
    /// negotiated suite's record overhead), if established.
    pub fn max_plaintext(&self, peer: SocketAddr) -> Option<usize> {
        self.shared.lock().max_plaintext(peer)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        let mut stats = self.shared.lock().stats();
        stats.dropped.receive_queue_full = self.shared.receive_queue_full.load(Ordering::Relaxed);
        stats
    }
}

impl Drop for DtlsSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn drain_transmits(server: &mut DtlsServer) -> Vec<Transmit> {
    std::iter::from_fn(|| server.poll_transmit()).collect()
}

/// The receive/timer loop of a `DtlsSocket`: each wakeup takes every
/// datagram already queued (one `recvmmsg` on Linux), feeds them to the
/// server under one lock and sends the answers together.
async fn drive_server(shared: Arc<Shared>, events: mpsc::Sender<SocketEvent>) {
    let mut datagrams = Datagrams::new();
    loop {
        let deadline = shared.lock().poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let transmits = tokio::select! {
            received = datagrams.recv(&shared.socket) => {
                if let Err(error) = received {
                    // E.g. ICMP errors surfacing on the socket: keep serving.
                    tracing::debug!(%error, "DTLS socket receive error");
                    continue;
                }
                let now = Instant::now();
                let mut server = shared.lock();
                for (peer, datagram) in datagrams.iter() {
                    server.handle_datagram(now, peer, datagram);
                }
                collect(&shared, &mut server, &events)
            }
            () = sleep => {
                let mut server = shared.lock();
                server.handle_timeout(Instant::now());
                collect(&shared, &mut server, &events)
            }
        };
        batch::send_all(&shared.socket, &transmits).await;
    }
}

fn collect(
    shared: &Shared,
    server: &mut DtlsServer,
    events: &mpsc::Sender<SocketEvent>,
) -> Vec<Transmit> {
    while let Some(event) = server.poll_event() {
        let event = match event {
            ServerEvent::Data {
                peer,
                identity,
                bytes,
            } => SocketEvent::Data(Datagram {
                peer,
                identity,
                bytes,
            }),
            ServerEvent::SessionEstablished { peer, identity } => {
                tracing::debug!(%peer, identity = %String::from_utf8_lossy(&identity), "DTLS session established");
                SocketEvent::SessionEstablished { peer, identity }
            }
            ServerEvent::SessionClosed {
                peer,
                identity,
                reason,
            } => {
                tracing::debug!(%peer, ?reason, "DTLS session closed");
                SocketEvent::SessionClosed {
                    peer,
                    identity,
                    reason,
                }
            }
        };
        if events.try_send(event).is_err() {
            shared.receive_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
    drain_transmits(server)
}

/// A DTLS client on its own connected UDP socket: one session to one
/// server. Methods take `&mut self`; there is no background task, timers are
/// served while `connect`/`recv` wait.
pub struct DtlsClient {
    socket: UdpSocket,
    session: ClientSession,
    pending: std::collections::VecDeque<Bytes>,
    buf: Vec<u8>,
}

impl DtlsClient {
    /// Binds an ephemeral port on the matching loopback/any address,
    /// connects it to `server` and completes the handshake.
    pub async fn connect(
        connector: &DtlsConnector,
        server: SocketAddr,
    ) -> Result<Self, SocketError> {
        let bind: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        let session = connector.connect(Instant::now())?;
        let mut client = DtlsClient {
            socket,
            session,
            pending: std::collections::VecDeque::new(),
            buf: vec![0; 65_536],
        };
        client.flush().await?;
        while !client.session.is_established() {
            client.step().await?;
        }
        Ok(client)
    }

    /// The local address of the client's socket.
    pub fn local_addr(&self) -> Result<SocketAddr, SocketError> {
        Ok(self.socket.local_addr()?)
    }

    /// Encrypts and sends one datagram.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SocketError> {
        self.session.send(bytes)?;
        self.flush().await
    }

    /// The next decrypted datagram from the server.
    pub async fn recv(&mut self) -> Result<Bytes, SocketError> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Ok(bytes);
            }
            self.step().await?;
        }
    }

    /// Like [`recv`](Self::recv) with a time limit; `Ok(None)` on timeout.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Option<Bytes>, SocketError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends close_notify.
    pub async fn close(&mut self) -> Result<(), SocketError> {
        self.session.close();
        self.flush().await
    }

    /// Waits for one datagram or timer expiry and processes it.
    async fn step(&mut self) -> Result<(), SocketError> {
        let deadline = self.session.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = self.socket.recv(&mut self.buf) => {
                match received {
                    Ok(n) => self.session.handle_datagram(Instant::now(), self.buf.get(..n).unwrap_or(&[])),
                    // ICMP port unreachable on a connected socket: the
                    // server is not (yet) there; retransmission handles it.
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(error) => return Err(error.into()),
                }
            }
            () = sleep => self.session.handle_timeout(Instant::now()),
        }
        self.flush().await?;
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Connected => {}
                ClientEvent::Data(bytes) => self.pending.push_back(bytes),
                ClientEvent::HandshakeFailed(failure) => {
                    return Err(SocketError::Handshake(failure));
                }
                ClientEvent::Closed(reason) => return Err(SocketError::Closed(reason)),
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SocketError> {
        while let Some(datagram) = self.session.poll_transmit() {
            match self.socket.send(&datagram).await {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}
