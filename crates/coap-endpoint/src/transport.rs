//! Datagram transports: where the driver's bytes come from and go to.
//!
//! Plain UDP ([`UdpTransport`]) and DTLS ([`DtlsTransport`], feature
//! `dtls`) are interchangeable; the endpoint sees only [`Peer`]s, which
//! carry the authenticated identity when there is one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::batch::RecvBatch;
use crate::peer::Peer;
use crate::types::Transmit;

/// A datagram socket as the driver needs it.
///
/// `recv` must be cancel-safe (the driver polls it inside `select!`).
pub trait Transport: Send + Sync + 'static {
    /// Waits for the next datagram, writes it into `buf` and returns its
    /// length and sender. A datagram longer than `buf` may be truncated.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, Peer)>> + Send;

    /// Sends one datagram to `peer`.
    fn send(&self, peer: &Peer, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for at least one datagram and adds it to `batch`, with what
    /// else is already queued, up to the batch's free room. Must be
    /// cancel-safe like `recv`. The default receives one datagram with
    /// `recv`.
    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            let Some(slot) = batch.next_slot() else {
                return Ok(());
            };
            let (n, peer) = self.recv(slot).await?;
            batch.commit_slot(0, n, peer);
            batch.consume_slots(1);
            Ok(())
        }
    }

    /// Sends every datagram of `transmits`; a datagram that cannot be sent
    /// is logged and skipped. The default calls `send` for each.
    fn send_batch(&self, transmits: &[Transmit]) -> impl Future<Output = ()> + Send {
        async move {
            for transmit in transmits {
                if let Err(error) = self.send(&transmit.peer, &transmit.bytes).await {
                    tracing::debug!(%error, peer = %transmit.peer, "send error");
                }
            }
        }
    }
}

/// Plain CoAP over a tokio `UdpSocket` (`coap://`).
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
}

/// Receive and send buffer size [`UdpTransport::bind`] asks the kernel for
/// (best effort; Linux caps it at `net.core.rmem_max` / `wmem_max`). With
/// the default (~208 KiB) a burst — a fleet waking at once, a load test at
/// a fixed rate — overflowed the receive queue while the driver worked
/// through its previous batch: 258 of 306k NON requests lost at 61k/s in
/// `benches/compare.sh`, where the UDP echo with 4 MiB lost none.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket`;
/// failures are ignored (the kernel's default stays).
pub fn enlarge_socket_buffers(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES);
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER_BYTES);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

impl UdpTransport {
    /// Binds `addr`, with [`SOCKET_BUFFER_BYTES`] of socket buffer.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        enlarge_socket_buffers(&socket);
        Ok(UdpTransport { socket })
    }

    /// Uses an already bound socket.
    pub fn from_socket(socket: UdpSocket) -> Self {
        UdpTransport { socket }
    }
}

impl Transport for UdpTransport {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Peer)> {
        let (n, addr) = self.socket.recv_from(buf).await?;
        Ok((n, Peer::new(addr)))
    }

    async fn send(&self, peer: &Peer, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, peer.addr).await.map(|_| ())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// One `recvmmsg(2)` per wakeup on Linux.
    #[cfg(target_os = "linux")]
    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        self.socket
            .async_io(tokio::io::Interest::READABLE, || {
                crate::batch::mmsg::recv(fd, batch)
            })
            .await
            .map(|_| ())
    }

    /// `sendmmsg(2)` of up to 32 datagrams per call on Linux.
    #[cfg(target_os = "linux")]
    async fn send_batch(&self, transmits: &[Transmit]) {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        let mut rest = transmits;
        while !rest.is_empty() {
            let sent = self
                .socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    crate::batch::mmsg::send(fd, rest)
                })
                .await;
            let skip = match sent {
                Ok(sent) => sent.max(1),
                Err(error) => {
                    // The first datagram failed (e.g. an ICMP report for
                    // its destination): drop it, send the rest.
                    if let Some(first) = rest.first() {
                        tracing::debug!(%error, peer = %first.peer, "send error");
                    }
                    1
                }
            };
            rest = rest.get(skip..).unwrap_or_default();
        }
    }
}

#[cfg(feature = "dtls")]
pub use dtls::DtlsTransport;

#[cfg(feature = "dtls")]
mod dtls {
    use super::*;

    use coap_dtls::{DtlsSocket, ServerConfig, SocketError};

    /// CoAP over DTLS 1.2 PSK (`coaps://`) through `coap-dtls`: every
    /// datagram comes with the PSK identity of its session, which becomes
    /// [`Peer::identity`].
    pub struct DtlsTransport {
        socket: DtlsSocket,
    }

    impl std::fmt::Debug for DtlsTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DtlsTransport")
                .field("local_addr", &self.socket.local_addr())
                .finish()
        }
    }

    impl DtlsTransport {
        /// Binds `addr` and starts the DTLS server (needs a tokio runtime).
        pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, SocketError> {
            Ok(DtlsTransport {
                socket: DtlsSocket::bind(addr, config).await?,
            })
        }

        /// Wraps a running DTLS socket.
        pub fn new(socket: DtlsSocket) -> Self {
            DtlsTransport { socket }
        }

        /// The DTLS socket (for its statistics).
        pub fn socket(&self) -> &DtlsSocket {
            &self.socket
        }
    }

    fn to_io(error: SocketError) -> io::Error {
        match error {
            SocketError::Io(error) => error,
            other => io::Error::other(other),
        }
    }

    impl Transport for DtlsTransport {
        async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Peer)> {
            let datagram = self.socket.recv().await.map_err(to_io)?;
            let n = datagram.bytes.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), datagram.bytes.get(..n)) {
                dst.copy_from_slice(src);
            }
            Ok((n, Peer::authenticated(datagram.peer, datagram.identity)))
        }

        async fn send(&self, peer: &Peer, bytes: &[u8]) -> io::Result<()> {
            self.socket.send_to(peer.addr, bytes).await.map_err(to_io)
        }

        /// Takes every decrypted datagram already queued, without copying.
        async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
            let room = batch.capacity().saturating_sub(batch.len());
            self.socket
                .recv_many(room.max(1), |datagram| {
                    batch.push_bytes(
                        Peer::authenticated(datagram.peer, datagram.identity),
                        datagram.bytes,
                    );
                })
                .await
                .map(|_| ())
                .map_err(to_io)
        }

        /// Encrypts all under one lock, sends them with one `sendmmsg`.
        async fn send_batch(&self, transmits: &[Transmit]) {
            self.socket
                .send_many(
                    transmits
                        .iter()
                        .map(|transmit| (transmit.peer.addr, &transmit.bytes[..])),
                )
                .await;
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.socket.local_addr())
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// What the kernel grants: the request, capped by `rmem_max` (Linux
    /// reports twice the granted size for its bookkeeping).
    #[tokio::test]
    async fn bind_enlarges_the_receive_buffer() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("rmem_max")
            .trim()
            .parse()
            .expect("number");
        let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let transport = UdpTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        use nix::sys::socket::{getsockopt, sockopt};
        let default = getsockopt(&plain, sockopt::RcvBuf).unwrap();
        let granted = getsockopt(&transport.socket, sockopt::RcvBuf).unwrap();
        assert!(
            granted >= 2 * SOCKET_BUFFER_BYTES.min(rmem_max),
            "granted {granted}, default {default}, rmem_max {rmem_max}"
        );
    }
}
