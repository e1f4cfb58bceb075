//! Datagram transports: where the driver's bytes come from and go to.
//!
//! Plain UDP ([`UdpTransport`]) and DTLS ([`DtlsTransport`], feature
//! `dtls`) are interchangeable; the endpoint sees only [`Peer`]s, which
//! carry the authenticated identity when there is one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::peer::Peer;

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
}

/// Plain CoAP over a tokio `UdpSocket` (`coap://`).
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(UdpTransport {
            socket: UdpSocket::bind(addr).await?,
        })
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

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.socket.local_addr())
        }
    }
}
