//! Batched socket I/O for the server driver: every wakeup reads what the
//! kernel has queued with one `recvmmsg(2)` and the resulting records leave
//! with one `sendmmsg(2)` (Linux; one datagram per call elsewhere).

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::Transmit;

/// Most datagrams one call moves.
pub(crate) const MAX_BATCH: usize = 32;
/// Largest datagram a slot holds (a UDP payload can be no larger).
const SLOT: usize = 65_536;

/// Receive buffers for up to [`MAX_BATCH`] datagrams. The storage is one
/// zeroed allocation whose pages are touched only when the kernel writes
/// them.
pub(crate) struct Datagrams {
    storage: Vec<u8>,
    /// Length and sender of each datagram of the last receive, by slot.
    received: Vec<(usize, SocketAddr)>,
}

impl Datagrams {
    pub(crate) fn new() -> Self {
        Datagrams {
            storage: vec![0u8; MAX_BATCH * SLOT],
            received: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Waits until at least one datagram is there and receives what is
    /// queued (cancel-safe: the read happens inside one poll).
    pub(crate) async fn recv(&mut self, socket: &UdpSocket) -> io::Result<()> {
        self.received.clear();
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            let (storage, received) = (&mut self.storage, &mut self.received);
            socket
                .async_io(Interest::READABLE, || mmsg::recv(fd, storage, received))
                .await
        }
        #[cfg(not(target_os = "linux"))]
        {
            let slot = self.storage.get_mut(..SLOT).unwrap_or_default();
            let (n, peer) = socket.recv_from(slot).await?;
            self.received.push((n, peer));
            Ok(())
        }
    }

    /// The datagrams of the last receive, in arrival order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.received
            .iter()
            .enumerate()
            // Port 0: a sender of an address family we do not speak.
            .filter(|(_, (_, peer))| peer.port() != 0)
            .map(|(slot, &(len, peer))| {
                let start = slot * SLOT;
                (
                    peer,
                    self.storage
                        .get(start..start + len.min(SLOT))
                        .unwrap_or_default(),
                )
            })
    }
}

/// Sends every transmit; one that cannot be sent is logged and skipped.
pub(crate) async fn send_all(socket: &UdpSocket, transmits: &[Transmit]) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let mut rest = transmits;
        while !rest.is_empty() {
            let sent = socket
                .async_io(Interest::WRITABLE, || mmsg::send(fd, rest))
                .await;
            let skip = match sent {
                Ok(sent) => sent.max(1),
                Err(error) => {
                    if let Some(first) = rest.first() {
                        tracing::debug!(%error, peer = %first.peer, "DTLS socket send error");
                    }
                    1
                }
            };
            rest = rest.get(skip..).unwrap_or_default();
        }
    }
    #[cfg(not(target_os = "linux"))]
    for transmit in transmits {
        if let Err(error) = socket.send_to(&transmit.bytes, transmit.peer).await {
            tracing::debug!(%error, peer = %transmit.peer, "DTLS socket send error");
        }
    }
}

#[cfg(target_os = "linux")]
mod mmsg {
    use std::cell::RefCell;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use nix::sys::socket::{
        ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
    };

    use super::{MAX_BATCH, SLOT};
    use crate::Transmit;

    thread_local! {
        // Rebuilt by every call; one set per thread saves allocations (the
        // headers hold raw pointers, so they cannot live in the driver's
        // `Send` future).
        static RECV_HEADERS: RefCell<MultiHeaders<SockaddrStorage>> =
            RefCell::new(MultiHeaders::preallocate(MAX_BATCH, None));
        static SEND_HEADERS: RefCell<MultiHeaders<SockaddrStorage>> =
            RefCell::new(MultiHeaders::preallocate(MAX_BATCH, None));
    }

    fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = storage.as_sockaddr_in() {
            return Some(SocketAddr::V4((*v4).into()));
        }
        storage
            .as_sockaddr_in6()
            .map(|v6| SocketAddr::V6((*v6).into()))
    }

    /// One non-blocking `recvmmsg`; `WouldBlock` when nothing is queued.
    /// `received` gets one entry per slot written (a sender of an unknown
    /// address family gets length 0 and the unspecified address, which no
    /// session has).
    pub(super) fn recv(
        fd: RawFd,
        storage: &mut [u8],
        received: &mut Vec<(usize, SocketAddr)>,
    ) -> io::Result<()> {
        received.clear();
        RECV_HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = storage
                .chunks_mut(SLOT)
                .take(MAX_BATCH)
                .map(|slot| [IoSliceMut::new(slot)])
                .collect();
            let results = recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for message in results {
                let entry = match message.address.as_ref().and_then(socket_addr) {
                    Some(peer) => (message.bytes, peer),
                    None => (0, SocketAddr::from(([0, 0, 0, 0], 0))),
                };
                received.push(entry);
            }
            Ok(())
        })
    }

    /// One non-blocking `sendmmsg` of (a prefix of) `transmits`; returns
    /// how many were sent. An error means the first one failed.
    pub(super) fn send(fd: RawFd, transmits: &[Transmit]) -> io::Result<usize> {
        let chunk = transmits
            .get(..transmits.len().min(MAX_BATCH))
            .unwrap_or_default();
        SEND_HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let iovs: Vec<[IoSlice<'_>; 1]> = chunk
                .iter()
                .map(|transmit| [IoSlice::new(&transmit.bytes)])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk
                .iter()
                .map(|transmit| Some(SockaddrStorage::from(transmit.peer)))
                .collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            sendmmsg(
                fd,
                &mut headers,
                iovs.iter(),
                &addrs,
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|results| results.count())
            .map_err(io::Error::from)
        })
    }
}
