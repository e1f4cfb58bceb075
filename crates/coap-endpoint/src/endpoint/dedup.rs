//! Deduplication (RFC 7252 §4.5): every message id a peer used within
//! EXCHANGE_LIFETIME (CON) or NON_LIFETIME (NON) is remembered, with the
//! answer to send again for a duplicate CON; bounded per peer and in total
//! (oldest first).
//!
//! The entries are found by a 64-bit keyed hash of (peer, message id): an
//! idle observer's registration entry is the endpoint's most numerous state,
//! and the full key would cost 72 bytes in the map on top of the 96-byte
//! expiry-list entry that already names it. The hash is the endpoint's
//! keyed fast hash (`fast_hash`) with a per-endpoint random key, and the
//! map uses it as its own bucket hash (no second hashing); an entry counts as (peer, mid)'s only if that
//! peer's FIFO holds (mid, serial) — serials are unique — so a collision
//! never answers one peer with another's response. A second live entry
//! whose hash is taken goes to an overflow map keyed by the full (peer,
//! mid).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash, Hasher};

use crate::fast_hash::{FastHashBuilder, PassThrough};

use super::*;

/// The peer's deduplication entries, oldest first: (message id, serial).
/// One entry (the common case: an observer's registration) needs no heap.
#[derive(Debug, Default)]
pub(super) enum DedupFifo {
    #[default]
    Empty,
    One(u16, u64),
    /// Boxed: keeps the enum (and every idle peer's state) at 16 bytes;
    /// only busy peers pay for the extra allocation.
    #[allow(clippy::box_collection)]
    Many(Box<VecDeque<(u16, u64)>>),
}

impl DedupFifo {
    pub(super) fn len(&self) -> usize {
        match self {
            DedupFifo::Empty => 0,
            DedupFifo::One(..) => 1,
            DedupFifo::Many(queue) => queue.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn front(&self) -> Option<(u16, u64)> {
        match self {
            DedupFifo::Empty => None,
            DedupFifo::One(mid, serial) => Some((*mid, *serial)),
            DedupFifo::Many(queue) => queue.front().copied(),
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<(u16, u64)> {
        match self {
            DedupFifo::Empty => None,
            DedupFifo::One(mid, serial) => {
                let entry = (*mid, *serial);
                *self = DedupFifo::Empty;
                Some(entry)
            }
            DedupFifo::Many(queue) => {
                let entry = queue.pop_front();
                if queue.is_empty() {
                    // Back to no heap once a busy peer calms down.
                    *self = DedupFifo::Empty;
                }
                entry
            }
        }
    }

    /// True if (mid, serial) is in the FIFO (serials ascend: binary search).
    pub(super) fn contains(&self, mid: u16, serial: u64) -> bool {
        match self {
            DedupFifo::Empty => false,
            DedupFifo::One(m, s) => *m == mid && *s == serial,
            DedupFifo::Many(queue) => queue
                .binary_search_by_key(&serial, |e| e.1)
                .ok()
                .and_then(|index| queue.get(index))
                .is_some_and(|e| e.0 == mid),
        }
    }

    pub(super) fn push_back(&mut self, entry: (u16, u64)) {
        match self {
            DedupFifo::Empty => *self = DedupFifo::One(entry.0, entry.1),
            DedupFifo::One(mid, serial) => {
                let mut queue = VecDeque::with_capacity(4);
                queue.push_back((*mid, *serial));
                queue.push_back(entry);
                *self = DedupFifo::Many(Box::new(queue));
            }
            DedupFifo::Many(queue) => queue.push_back(entry),
        }
    }
}

#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) serial: u64,
    pub(super) expires: Instant,
    pub(super) state: ExchangeState,
}

#[derive(Debug)]
pub(super) enum ExchangeState {
    /// Handed to the application, no empty ACK sent.
    Pending,
    /// Handed to the application, empty ACK sent (rebuilt from the message
    /// id for a duplicate).
    PendingAcked,
    /// Answered: the datagram to send again for a duplicate. Up to 22
    /// bytes (a typical piggybacked 2.05 to an observe registration) are
    /// kept inline; a longer one in one exact-size allocation.
    Answered(SmallBytes<22>),
    /// A NON, or a message whose duplicates need no answer.
    Seen,
}

/// The deduplication entries (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct ExchangeTable {
    hasher: FastHashBuilder,
    /// Keyed by the hash itself (already keyed and mixed).
    by_hash: HashMap<u64, Exchange, PassThrough>,
    /// Entries whose hash another live entry holds in `by_hash`.
    overflow: FastMap<(Peer, u16), Exchange>,
    /// Tests only: every key hashes alike, to exercise the overflow.
    #[cfg(test)]
    pub(super) collide: bool,
}

/// True if `peer`'s FIFO names (mid, serial): the entry is (peer, mid)'s.
fn owned(peers: &FastMap<Peer, PeerState>, peer: &Peer, mid: u16, serial: u64) -> bool {
    peers
        .get(peer)
        .is_some_and(|state| state.dedup.contains(mid, serial))
}

impl ExchangeTable {
    /// An empty table with room for `capacity` entries before it first
    /// grows: a steady load then inserts and removes without rehashing.
    pub(super) fn with_capacity(capacity: usize) -> ExchangeTable {
        ExchangeTable {
            by_hash: HashMap::with_capacity_and_hasher(capacity, PassThrough),
            ..ExchangeTable::default()
        }
    }

    fn hash(&self, peer: &Peer, mid: u16) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        let mut hasher = self.hasher.build_hasher();
        peer.hash(&mut hasher);
        mid.hash(&mut hasher);
        hasher.finish()
    }

    pub(super) fn len(&self) -> usize {
        self.by_hash.len() + self.overflow.len()
    }

    /// The entry of (peer, mid).
    fn get(&self, peers: &FastMap<Peer, PeerState>, peer: &Peer, mid: u16) -> Option<&Exchange> {
        if let Some(exchange) = self.by_hash.get(&self.hash(peer, mid))
            && owned(peers, peer, mid, exchange.serial)
        {
            return Some(exchange);
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get(&(peer.clone(), mid))
    }

    fn get_mut(
        &mut self,
        peers: &FastMap<Peer, PeerState>,
        peer: &Peer,
        mid: u16,
    ) -> Option<&mut Exchange> {
        let hash = self.hash(peer, mid);
        let in_main = self
            .by_hash
            .get(&hash)
            .is_some_and(|e| owned(peers, peer, mid, e.serial));
        if in_main {
            return self.by_hash.get_mut(&hash);
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get_mut(&(peer.clone(), mid))
    }

    /// True if the entry of (peer, mid) with `serial` is held.
    fn has(&self, peer: &Peer, mid: u16, serial: u64) -> bool {
        if self
            .by_hash
            .get(&self.hash(peer, mid))
            .is_some_and(|e| e.serial == serial)
        {
            return true;
        }
        !self.overflow.is_empty()
            && self
                .overflow
                .get(&(peer.clone(), mid))
                .is_some_and(|e| e.serial == serial)
    }

    /// Removes the entry of (peer, mid) with `serial`; true if it was held.
    fn remove(&mut self, peer: &Peer, mid: u16, serial: u64) -> bool {
        let hash = self.hash(peer, mid);
        if self.by_hash.get(&hash).is_some_and(|e| e.serial == serial) {
            self.by_hash.remove(&hash);
            return true;
        }
        if self.overflow.is_empty() {
            return false;
        }
        let key = (peer.clone(), mid);
        if self.overflow.get(&key).is_some_and(|e| e.serial == serial) {
            self.overflow.remove(&key);
            return true;
        }
        false
    }

    /// Stores the entry of (peer, mid), replacing an older one; the peer's
    /// FIFO already holds (mid, exchange.serial).
    fn insert(
        &mut self,
        peers: &FastMap<Peer, PeerState>,
        peer: &Peer,
        mid: u16,
        exchange: Exchange,
    ) {
        let hash = self.hash(peer, mid);
        // One lookup: the slot is free, (peer, mid)'s own older entry, or
        // another key's (a true collision: overflow).
        match self.by_hash.entry(hash) {
            Entry::Vacant(slot) => {
                if !self.overflow.is_empty() {
                    self.overflow.remove(&(peer.clone(), mid));
                }
                slot.insert(exchange);
            }
            Entry::Occupied(mut slot) => {
                if owned(peers, peer, mid, slot.get().serial) {
                    slot.insert(exchange);
                } else {
                    self.overflow.insert((peer.clone(), mid), exchange);
                }
            }
        }
    }
}

impl Endpoint {
    /// Answers a duplicate (true) or reports a new message id (false).
    pub(super) fn answer_duplicate(
        &mut self,
        now: Instant,
        peer: &Peer,
        mid: u16,
        confirmable: bool,
    ) -> bool {
        let Some(exchange) = self.exchanges.get(&self.peers, peer, mid) else {
            return false;
        };
        if exchange.expires <= now {
            return false;
        }
        if confirmable {
            self.counters.stats.dedup_con_hits += 1;
            let again = match &exchange.state {
                ExchangeState::Answered(bytes) => Some(Bytes::copy_from_slice(bytes)),
                ExchangeState::PendingAcked => {
                    Message::empty_ack(mid).to_bytes_with(&self.codec).ok()
                }
                ExchangeState::Pending | ExchangeState::Seen => None,
            };
            if let Some(bytes) = again {
                self.transmits.push_back(Transmit {
                    peer: peer.clone(),
                    bytes,
                });
            }
        } else {
            self.counters.stats.dedup_non_hits += 1;
        }
        true
    }

    pub(super) fn remember_exchange(
        &mut self,
        now: Instant,
        peer: &Peer,
        mid: u16,
        confirmable: bool,
    ) {
        let lifetime = if confirmable {
            self.config.exchange_lifetime
        } else {
            self.config.non_lifetime
        };
        let expires = now + lifetime;
        let serial = self.fresh_serial();
        let per_peer_cap = self.config.max_dedup_per_peer.max(1);
        let state = self.peers.entry(peer.clone()).or_default();
        let mut evicted = 0;
        while state.dedup.len() >= per_peer_cap {
            let Some((old_mid, old_serial)) = state.dedup.pop_front() else {
                break;
            };
            if self.exchanges.remove(peer, old_mid, old_serial) {
                evicted += 1;
            }
        }
        state.dedup.push_back((mid, serial));
        self.counters.stats.dedup_evictions += evicted;
        while self.exchange_order.len() >= self.config.max_dedup_total.max(1) {
            let Some((_, old_serial, old_peer, old_mid)) = self.exchange_order.pop_front() else {
                break;
            };
            if self.remove_exchange(&old_peer, old_mid, old_serial) {
                self.counters.stats.dedup_evictions += 1;
            }
        }
        self.exchanges.insert(
            &self.peers,
            peer,
            mid,
            Exchange {
                serial,
                expires,
                // Set here rather than looked up again afterwards.
                state: if confirmable {
                    ExchangeState::Pending
                } else {
                    ExchangeState::Seen
                },
            },
        );
        self.exchange_order
            .push_back((expires, serial, peer.clone(), mid));
        // Entries evicted by the per-peer cap stay in the order list until
        // they expire; drop the dead ones once they outnumber the live
        // ones (amortised O(1)), so that the list follows the live entries
        // rather than the datagram rate × exchange_lifetime.
        if self.exchange_order.len() > 2 * self.exchanges.len() + 16 {
            let live = &self.exchanges;
            self.exchange_order
                .retain(|(_, serial, peer, mid)| live.has(peer, *mid, *serial));
        }
    }

    /// Removes a dedup entry if it still has `serial`; true if removed.
    pub(super) fn remove_exchange(&mut self, peer: &Peer, mid: u16, serial: u64) -> bool {
        if !self.exchanges.remove(peer, mid, serial) {
            return false;
        }
        if let Some(state) = self.peers.get_mut(peer) {
            while let Some((m, s)) = state.dedup.front() {
                if self.exchanges.has(peer, m, s) {
                    break;
                }
                state.dedup.pop_front();
            }
        }
        self.forget_peer_if_idle(peer);
        true
    }

    pub(super) fn set_exchange_state(&mut self, peer: &Peer, mid: u16, state: ExchangeState) {
        if let Some(exchange) = self.exchanges.get_mut(&self.peers, peer, mid) {
            exchange.state = state;
        }
    }

    pub(super) fn expire_exchanges(&mut self, now: Instant) {
        while let Some((expires, serial, peer, mid)) = self.exchange_order.front().cloned() {
            if expires > now {
                break;
            }
            self.exchange_order.pop_front();
            self.remove_exchange(&peer, mid, serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::new(std::net::SocketAddr::from(([203, 0, 113, 5], port)))
    }

    /// RFC 7252 §4.5 semantics hold whether or not the keys' hashes
    /// collide: a duplicate CON gets its own exchange's answer (never
    /// another peer's), a new message id is a new request, entries expire
    /// and idle peers are forgotten.
    #[test]
    fn duplicates_get_their_own_answer_even_when_all_hashes_collide() {
        for collide in [false, true] {
            let config = EndpointConfig {
                rng_seed: Some(3),
                max_dedup_per_peer: 4,
                ..EndpointConfig::default()
            };
            let mut ep = Endpoint::new(config).unwrap();
            ep.exchanges.collide = collide;
            let now = Instant::now();
            let request = |port: u16, mid: u16| {
                Message::new(MessageType::Con, Code::GET, mid)
                    .with_token(mid.to_be_bytes().to_vec())
                    .with_uri_path(&format!("r/{port}"))
                    .to_bytes()
                    .unwrap()
            };
            // 20 peers × 6 message ids (the first 2 per peer are evicted by
            // the per-peer cap of 4), each answered with its own payload.
            for port in 0..20u16 {
                for mid in 0..6u16 {
                    ep.handle_datagram(now, peer(port), &request(port, mid));
                    let Some(Event::Request(r)) = ep.poll_event() else {
                        panic!("request {port}/{mid} (collide={collide})")
                    };
                    let answer = Message::new(MessageType::Ack, Code::CONTENT, 0)
                        .with_payload(format!("{port}/{mid}").into_bytes());
                    ep.respond(now, r.id, answer).unwrap();
                    while ep.poll_transmit().is_some() {}
                }
            }
            assert_eq!(ep.exchanges.len(), 20 * 4);
            let later = now + Duration::from_secs(10);
            for port in 0..20u16 {
                // The held ones first: a new request evicts the oldest.
                for mid in [2, 3, 4, 5, 0, 1u16] {
                    ep.handle_datagram(later, peer(port), &request(port, mid));
                    if mid < 2 {
                        // Evicted: a new request.
                        let Some(Event::Request(r)) = ep.poll_event() else {
                            panic!("{port}/{mid} is new again (collide={collide})")
                        };
                        let answer = Message::new(MessageType::Ack, Code::CONTENT, 0);
                        ep.respond(later, r.id, answer).unwrap();
                        while ep.poll_transmit().is_some() {}
                        continue;
                    }
                    let reply = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
                    assert_eq!(reply.message_id, mid);
                    assert_eq!(&reply.payload[..], format!("{port}/{mid}").as_bytes());
                    assert!(
                        ep.poll_event().is_none(),
                        "{port}/{mid} (collide={collide})"
                    );
                }
            }
            // Everything expires; the peers are forgotten.
            let lifetime = crate::config::EXCHANGE_LIFETIME;
            ep.handle_timeout(later + lifetime + Duration::from_secs(1));
            assert_eq!(ep.exchanges.len(), 0, "collide={collide}");
            assert!(ep.peers.is_empty(), "collide={collide}");
        }
    }
}
