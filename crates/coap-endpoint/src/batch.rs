//! Batched datagram I/O: a [`RecvBatch`] holds up to N received datagrams
//! (one wakeup of the driver), and on Linux the plain-UDP transport fills it
//! with one `recvmmsg(2)` and flushes the responses with one `sendmmsg(2)`.
//!
//! Why: on a loaded server every datagram used to cost a `recvfrom`, a
//! `sendto`, a reactor round trip and a pass of the driver loop. Reading
//! what the kernel has queued in one call and answering it in one call
//! divides the fixed part of that cost by the batch size; at one request
//! in flight nothing changes (a batch of one).

use bytes::Bytes;

use crate::peer::Peer;

/// Largest datagram a slot holds (a UDP payload can be no larger).
pub(crate) const SLOT: usize = 65_536;

/// Datagrams received in one go, in arrival order.
///
/// Slots for socket reads are `SLOT` bytes each in one zero-initialised
/// allocation; pages the kernel never writes are never touched, so a batch
/// of 32 costs about one page per slot used, not 2 MiB.
#[derive(Debug)]
pub struct RecvBatch {
    storage: Vec<u8>,
    items: Vec<Item>,
    /// Slots of `storage` handed out since the last `drain_with`/`clear`.
    used_slots: usize,
    capacity: usize,
}

#[derive(Debug)]
struct Item {
    peer: Peer,
    data: Data,
}

#[derive(Debug)]
enum Data {
    /// `len` bytes at the start of slot `index` of `storage`.
    Slot { index: usize, len: usize },
    /// Bytes that arrived already owned (e.g. DTLS plaintext).
    Owned(Bytes),
}

impl RecvBatch {
    /// A batch of at most `capacity` datagrams (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecvBatch {
            storage: Vec::new(),
            items: Vec::with_capacity(capacity),
            used_slots: 0,
            capacity,
        }
    }

    /// How many datagrams fit.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many datagrams are held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether no further datagram fits.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity || self.used_slots >= self.capacity
    }

    /// Forgets the datagrams held.
    pub fn clear(&mut self) {
        self.items.clear();
        self.used_slots = 0;
    }

    /// Adds a datagram that is already owned; false (and nothing added)
    /// when the batch is full.
    pub fn push_bytes(&mut self, peer: Peer, bytes: Bytes) -> bool {
        if self.items.len() >= self.capacity {
            return false;
        }
        self.items.push(Item {
            peer,
            data: Data::Owned(bytes),
        });
        true
    }

    /// The free slot buffers, in order, for a receive of several
    /// datagrams at once; then [`commit_slot`](Self::commit_slot) each
    /// datagram with its offset and [`consume_slots`](Self::consume_slots)
    /// how many slots were written.
    pub(crate) fn free_slots(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let free = self
            .capacity
            .saturating_sub(self.items.len())
            .min(self.capacity.saturating_sub(self.used_slots));
        let needed = self.capacity * SLOT;
        if self.storage.len() < needed {
            self.storage = vec![0u8; needed];
        }
        self.storage
            .get_mut(self.used_slots * SLOT..)
            .unwrap_or_default()
            .chunks_mut(SLOT)
            .take(free)
    }

    /// The next free slot buffer, for a single receive; then
    /// `commit_slot(0, …)` and `consume_slots(1)`.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        self.free_slots().next()
    }

    /// Records that `len` bytes from `peer` were written into free slot
    /// number `offset` (0 = the first free one).
    pub fn commit_slot(&mut self, offset: usize, len: usize, peer: Peer) {
        let index = self.used_slots + offset;
        if index >= self.capacity || self.items.len() >= self.capacity {
            return;
        }
        self.items.push(Item {
            peer,
            data: Data::Slot {
                index,
                len: len.min(SLOT),
            },
        });
    }

    /// Marks `count` free slots as written (committed or skipped).
    pub fn consume_slots(&mut self, count: usize) {
        self.used_slots = (self.used_slots + count).min(self.capacity);
    }

    /// Hands every datagram (sender and bytes), in arrival order, to `f`
    /// and empties the batch.
    pub fn drain_with(&mut self, mut f: impl FnMut(Peer, &[u8])) {
        let storage = &self.storage;
        for item in self.items.drain(..) {
            match item.data {
                Data::Slot { index, len } => {
                    let bytes = storage
                        .get(index * SLOT..index * SLOT + len)
                        .unwrap_or_default();
                    f(item.peer, bytes);
                }
                Data::Owned(bytes) => f(item.peer, &bytes),
            }
        }
        self.used_slots = 0;
    }
}

/// `recvmmsg(2)` / `sendmmsg(2)` through nix (no `unsafe` here).
#[cfg(target_os = "linux")]
pub(crate) mod mmsg {
    use std::cell::RefCell;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use nix::sys::socket::{
        ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
    };

    use super::RecvBatch;
    use crate::peer::Peer;
    use crate::types::Transmit;

    /// Most datagrams one call moves.
    pub(crate) const MAX_BATCH: usize = 32;

    thread_local! {
        // The message headers are plain buffers rebuilt by every call; one
        // set per thread saves two allocations per call (they hold raw
        // pointers, so they cannot live in the `Send` transport).
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

    /// One non-blocking `recvmmsg` into the free slots of `batch`; returns
    /// how many datagrams arrived (`WouldBlock` when none).
    pub(crate) fn recv(fd: RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut received = [(0usize, None::<SocketAddr>); MAX_BATCH];
        let count = RECV_HEADERS.with(|headers| -> io::Result<usize> {
            let mut headers = headers.borrow_mut();
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = batch
                .free_slots()
                .take(MAX_BATCH)
                .map(|slot| [IoSliceMut::new(slot)])
                .collect();
            if iovs.is_empty() {
                return Ok(0);
            }
            let results = recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut count = 0;
            for (message, out) in results.zip(received.iter_mut()) {
                *out = (
                    message.bytes,
                    message.address.as_ref().and_then(socket_addr),
                );
                count += 1;
            }
            Ok(count)
        })?;
        // A datagram from an address family we do not speak is skipped.
        for (offset, (len, addr)) in received.iter().take(count).enumerate() {
            if let Some(addr) = addr {
                batch.commit_slot(offset, *len, Peer::new(*addr));
            }
        }
        batch.consume_slots(count);
        Ok(count)
    }

    /// One non-blocking `sendmmsg` of (a prefix of) `transmits`; returns
    /// how many were sent. An error means the first one failed.
    pub(crate) fn send(fd: RawFd, transmits: &[Transmit]) -> io::Result<usize> {
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
                .map(|transmit| Some(SockaddrStorage::from(transmit.peer.addr)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer(port: u16) -> Peer {
        Peer::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn slots_and_owned_bytes_drain_in_arrival_order() {
        let mut batch = RecvBatch::new(3);
        let slot = batch.next_slot().expect("room");
        slot.get_mut(..2).expect("slot").copy_from_slice(b"ab");
        batch.commit_slot(0, 2, peer(1));
        batch.consume_slots(1);
        assert!(batch.push_bytes(peer(2), Bytes::from_static(b"owned")));
        let slot = batch.next_slot().expect("room");
        slot.get_mut(..3).expect("slot").copy_from_slice(b"xyz");
        batch.commit_slot(0, 3, peer(3));
        batch.consume_slots(1);
        assert!(batch.is_full());
        assert!(!batch.push_bytes(peer(4), Bytes::from_static(b"no room")));
        let mut seen = Vec::new();
        batch.drain_with(|p, bytes| seen.push((p.addr.port(), bytes.to_vec())));
        assert_eq!(
            seen,
            vec![
                (1, b"ab".to_vec()),
                (2, b"owned".to_vec()),
                (3, b"xyz".to_vec())
            ]
        );
        assert!(batch.is_empty());
        assert!(batch.next_slot().is_some());
    }

    #[test]
    fn a_commit_beyond_the_capacity_is_ignored() {
        let mut batch = RecvBatch::new(1);
        assert!(batch.next_slot().is_some());
        batch.commit_slot(5, 10, peer(1));
        assert!(batch.is_empty());
        batch.commit_slot(0, SLOT + 100, peer(1));
        batch.consume_slots(1);
        let mut lens = Vec::new();
        batch.drain_with(|_, bytes| lens.push(bytes.len()));
        assert_eq!(lens, vec![SLOT]);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn recvmmsg_and_sendmmsg_move_every_datagram() {
        use crate::transport::{Transport, UdpTransport};
        let server = UdpTransport::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let server_addr = server.local_addr().expect("addr");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        let client_addr = client.local_addr().expect("addr");
        for i in 0..40u8 {
            client.send_to(&[i; 3], server_addr).expect("send");
        }
        // 40 queued datagrams: one call takes at most the batch capacity.
        let mut batch = RecvBatch::new(32);
        let mut received = Vec::new();
        while received.len() < 40 {
            server.recv_batch(&mut batch).await.expect("recv");
            batch.drain_with(|p, bytes| {
                assert_eq!(p.addr, client_addr);
                received.push(bytes.to_vec());
            });
        }
        let expected: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 3]).collect();
        assert_eq!(received, expected);

        let transmits: Vec<crate::types::Transmit> = (0..40u8)
            .map(|i| crate::types::Transmit {
                peer: Peer::new(client_addr),
                bytes: Bytes::from(vec![i; 5]),
            })
            .collect();
        server.send_batch(&transmits).await;
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        for i in 0..40u8 {
            let (n, from) = client.recv_from(&mut buf).expect("answer");
            assert_eq!(from, server_addr);
            assert_eq!(buf.get(..n), Some(&[i; 5][..]));
        }
    }
}
