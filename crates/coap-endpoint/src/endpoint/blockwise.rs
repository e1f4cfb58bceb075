//! Block-wise transfers (RFC 7959): Block1 reassembly, the Block2 cache of
//! responses served block by block, and cutting bodies into blocks.
//!
//! Block1 reassemblies in progress: the bodies, their expiry, and the caps
//! on what peers can make the endpoint hold.
//!
//! Every transfer is keyed by (peer, Request-Tag, URI). Caps:
//!
//! - per peer (`max_reassemblies_per_peer`): a peer that starts one more
//!   transfer loses its own least recently touched one;
//! - in total (`max_reassemblies` transfers, `max_reassembly_memory`
//!   bytes): room is made by evicting the least recently touched transfer
//!   of the peer holding the most transfers (for the count) or the most
//!   bytes (for memory); ties go to the peer whose oldest transfer is the
//!   least recently touched.
//!
//! So one address (or a few) cannot lock everybody else out: a newcomer
//! always gets room, taken from whoever holds the most. An evicted
//! transfer's next block finds no state and is answered 4.08 by the caller.
//!
//! Every operation is O(log n) in the number of transfers (B-tree indexes,
//! no scans); each eviction removes an entry inserted once, so the
//! evictions a request triggers are amortised O(log n) too.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// (peer, Request-Tag, URI key) of one transfer.
pub(crate) type ReassemblyKey = (Peer, Option<Bytes>, Vec<u8>);

/// The limits applied when a transfer is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReassemblyLimits {
    pub(crate) max_transfers: usize,
    pub(crate) max_per_peer: usize,
    pub(crate) max_bytes: usize,
}

#[derive(Debug)]
struct Transfer {
    /// Last touch; also the key in `by_touch` and the peer's set.
    serial: u64,
    expires: Instant,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
struct PeerTransfers {
    /// Touch serials of this peer's transfers, oldest first.
    serials: BTreeSet<u64>,
    bytes: usize,
}

impl PeerTransfers {
    fn oldest(&self) -> u64 {
        self.serials.first().copied().unwrap_or(0)
    }
}

/// Index entry: (weight, least recently touched first, peer).
type Ranked = (usize, Reverse<u64>, Peer);

/// The Block1 transfers in progress, with LRU eviction per peer and
/// towards the heaviest peer.
#[derive(Debug, Default)]
pub(crate) struct Reassemblies {
    transfers: FastMap<ReassemblyKey, Transfer>,
    /// Every transfer by last touch. The lifetime is the same for all, so
    /// this is also the expiry order.
    by_touch: BTreeMap<u64, ReassemblyKey>,
    peers: FastMap<Peer, PeerTransfers>,
    /// Peers by number of transfers.
    by_count: BTreeSet<Ranked>,
    /// Peers by bytes held.
    by_bytes: BTreeSet<Ranked>,
    bytes: usize,
    next_serial: u64,
    evictions: u64,
}

impl Reassemblies {
    /// Transfers held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Body bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Transfers evicted to make room (not counting expiry).
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Transfers `peer` holds.
    #[cfg(test)]
    pub(crate) fn peer_len(&self, peer: &Peer) -> usize {
        self.peers.get(peer).map_or(0, |p| p.serials.len())
    }

    /// When the least recently touched transfer expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let (_, key) = self.by_touch.first_key_value()?;
        self.transfers.get(key).map(|t| t.expires)
    }

    /// Removes the transfer and returns its body.
    pub(crate) fn take(&mut self, key: &ReassemblyKey) -> Option<Vec<u8>> {
        let transfer = self.transfers.remove(key)?;
        self.by_touch.remove(&transfer.serial);
        self.bytes = self.bytes.saturating_sub(transfer.body.len());
        let peer = &key.0;
        self.unrank(peer);
        let empty = match self.peers.get_mut(peer) {
            Some(state) => {
                state.serials.remove(&transfer.serial);
                state.bytes = state.bytes.saturating_sub(transfer.body.len());
                state.serials.is_empty()
            }
            None => false,
        };
        if empty {
            self.peers.remove(peer);
        } else {
            self.rank(peer);
        }
        Some(transfer.body)
    }

    /// Stores `body` under `key` as the most recently touched transfer,
    /// expiring at `expires`, after evicting others as the limits demand.
    /// Any transfer already under `key` is replaced. Returns false (and
    /// stores nothing) if the body alone exceeds the memory limit or no
    /// transfer may be held at all.
    pub(crate) fn insert(
        &mut self,
        key: ReassemblyKey,
        body: Vec<u8>,
        expires: Instant,
        limits: ReassemblyLimits,
    ) -> bool {
        self.take(&key);
        if body.len() > limits.max_bytes || limits.max_transfers == 0 || limits.max_per_peer == 0 {
            return false;
        }
        let peer = key.0.clone();
        // The peer's own cap: its least recently touched transfer goes.
        while self
            .peers
            .get(&peer)
            .is_some_and(|p| p.serials.len() >= limits.max_per_peer)
        {
            if !self.evict_oldest_of(&peer) {
                break;
            }
        }
        // The global caps: room is taken from the heaviest peer.
        while self.transfers.len() >= limits.max_transfers {
            let Some((_, _, heaviest)) = self.by_count.last().cloned() else {
                break;
            };
            if !self.evict_oldest_of(&heaviest) {
                break;
            }
        }
        while self.bytes + body.len() > limits.max_bytes {
            let Some((_, _, heaviest)) = self.by_bytes.last().cloned() else {
                break;
            };
            if !self.evict_oldest_of(&heaviest) {
                break;
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.unrank(&peer);
        let state = self.peers.entry(peer.clone()).or_default();
        state.serials.insert(serial);
        state.bytes += body.len();
        self.rank(&peer);
        self.bytes += body.len();
        self.by_touch.insert(serial, key.clone());
        self.transfers.insert(
            key,
            Transfer {
                serial,
                expires,
                body,
            },
        );
        true
    }

    /// Drops the transfers whose lifetime has passed.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((_, key)) = self.by_touch.first_key_value() {
            let due = self.transfers.get(key).is_none_or(|t| t.expires <= now);
            if !due {
                break;
            }
            let key = key.clone();
            if self.take(&key).is_none() {
                // Not indexed consistently (never happens): do not loop.
                self.by_touch.pop_first();
            }
        }
    }

    /// Evicts `peer`'s least recently touched transfer; false if it has none.
    fn evict_oldest_of(&mut self, peer: &Peer) -> bool {
        let Some(serial) = self
            .peers
            .get(peer)
            .and_then(|p| p.serials.first().copied())
        else {
            return false;
        };
        let Some(key) = self.by_touch.get(&serial).cloned() else {
            return false;
        };
        self.evictions += 1;
        self.take(&key).is_some()
    }

    fn unrank(&mut self, peer: &Peer) {
        if let Some(state) = self.peers.get(peer) {
            let oldest = Reverse(state.oldest());
            self.by_count
                .remove(&(state.serials.len(), oldest, peer.clone()));
            self.by_bytes.remove(&(state.bytes, oldest, peer.clone()));
        }
    }

    fn rank(&mut self, peer: &Peer) {
        if let Some(state) = self.peers.get(peer) {
            let oldest = Reverse(state.oldest());
            self.by_count
                .insert((state.serials.len(), oldest, peer.clone()));
            self.by_bytes.insert((state.bytes, oldest, peer.clone()));
        }
    }

    /// The body of a transfer.
    #[cfg(test)]
    pub(crate) fn body(&self, key: &ReassemblyKey) -> Option<&[u8]> {
        self.transfers.get(key).map(|t| t.body.as_slice())
    }
}

#[derive(Debug)]
pub(super) struct CachedBody {
    pub(super) serial: u64,
    pub(super) response: Message,
}

impl Endpoint {
    /// One Block1 block: `Ok(Some(body, echo))` when the transfer is
    /// complete, `Ok(None)` when 2.31 was sent, `Err(reply)` to refuse.
    pub(super) fn reassemble(
        &mut self,
        now: Instant,
        peer: &Peer,
        msg: &MessageRef<'_>,
        uri: &[u8],
        b1: Block,
    ) -> Result<Option<(Bytes, Block)>, Message> {
        let max_body = self.config.max_body_size;
        let too_large = || {
            Message::new(MessageType::Ack, Code::REQUEST_ENTITY_TOO_LARGE, 0).with_uint_option(
                OptionNumber::SIZE1,
                u32::try_from(max_body).unwrap_or(u32::MAX),
            )
        };
        if msg.size1().is_some_and(|s| s as usize > max_body) {
            return Err(too_large());
        }
        let szx = b1.szx.min(self.config.max_szx());
        let payload = msg.payload();
        let tag = msg
            .option(OptionNumber::REQUEST_TAG)
            .map(Bytes::copy_from_slice);
        let key: ReassemblyKey = (peer.clone(), tag, uri.to_vec());

        if b1.num == 0 && !b1.more {
            // A single-block transfer: nothing to keep.
            self.reassemblies.take(&key);
            return Ok(Some((
                Bytes::copy_from_slice(payload),
                Block {
                    num: 0,
                    more: false,
                    szx,
                },
            )));
        }
        let continue_reply = |num| {
            Message::new(MessageType::Ack, Code::CONTINUE, 0).with_option(
                OptionNumber::BLOCK1,
                Bytes::copy_from_slice(
                    &Block {
                        num,
                        more: true,
                        szx,
                    }
                    .encode(),
                ),
            )
        };
        let expires = now + self.config.reassembly_lifetime;
        let limits = ReassemblyLimits {
            max_transfers: self.config.max_reassemblies,
            max_per_peer: self.config.max_reassemblies_per_peer,
            max_bytes: self.config.max_reassembly_memory,
        };
        let mut body = if b1.num == 0 {
            // A (re)start: any earlier transfer under this key is replaced.
            self.reassemblies.take(&key);
            Vec::new()
        } else {
            // Taken out while this block is processed, stored again (as
            // the most recently touched) if the transfer goes on.
            let Some(body) = self.reassemblies.take(&key) else {
                // RFC 7959 §2.5: a block without the start of its body
                // (never started, expired, or evicted to make room).
                return Err(
                    Message::new(MessageType::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 0)
                        .with_payload(&b"missing earlier blocks"[..]),
                );
            };
            let repeat = b1.more
                && b1.offset() + payload.len() == body.len()
                && body.get(b1.offset()..) == Some(payload);
            if repeat {
                // The same block again under a new message id (our 2.31 was
                // lost and the client re-sent rather than retransmitted):
                // confirm it again without appending.
                self.reassemblies.insert(key, body, expires, limits);
                self.reply_direct(now, peer, msg, continue_reply(b1.num));
                return Ok(None);
            }
            if body.len() != b1.offset() {
                return Err(
                    Message::new(MessageType::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 0)
                        .with_payload(&b"block out of order"[..]),
                );
            }
            body
        };
        if body.len() + payload.len() > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(payload);
        if b1.more {
            // Room is made by evicting other transfers (the peer's own
            // oldest beyond its cap, else the heaviest peer's oldest); only
            // a body larger than all reassembly memory is refused.
            if !self.reassemblies.insert(key, body, expires, limits) {
                return Err(Message::new(MessageType::Ack, Code::SERVICE_UNAVAILABLE, 0)
                    .with_uint_option(OptionNumber::MAX_AGE, 5));
            }
            self.reply_direct(now, peer, msg, continue_reply(b1.num));
            return Ok(None);
        }
        self.counters.stats.block1_transfers += 1;
        Ok(Some((
            Bytes::from(body),
            Block {
                num: b1.num,
                more: false,
                szx,
            },
        )))
    }

    pub(super) fn expire_block_state(&mut self, now: Instant) {
        while let Some((expires, serial, _, _)) = self.block_cache_order.front() {
            if *expires > now {
                break;
            }
            let serial = *serial;
            if let Some((_, _, peer, uri)) = self.block_cache_order.pop_front() {
                self.remove_cached_body(&(peer, uri), serial);
            }
        }
        self.reassemblies.expire(now);
    }

    pub(super) fn cache_body(&mut self, now: Instant, peer: &Peer, uri: &[u8], response: &Message) {
        let size = response.payload.len();
        if size > self.config.block_cache_memory {
            return;
        }
        let key = (peer.clone(), uri.to_vec());
        if let Some(old) = self.block_cache.remove(&key) {
            self.block_cache_bytes = self
                .block_cache_bytes
                .saturating_sub(old.response.payload.len());
        }
        while self.block_cache_order.len() >= self.config.block_cache_entries.max(1)
            || self.block_cache_bytes + size > self.config.block_cache_memory
        {
            let Some((_, serial, old_peer, old_uri)) = self.block_cache_order.pop_front() else {
                break;
            };
            if self.remove_cached_body(&(old_peer, old_uri), serial) {
                self.counters.stats.block_cache_evictions += 1;
            }
        }
        let serial = self.fresh_serial();
        let expires = now + self.config.block_cache_lifetime;
        let mut stored = response.clone();
        stored.remove_option(OptionNumber::OBSERVE);
        stored.remove_option(OptionNumber::BLOCK2);
        stored.remove_option(OptionNumber::BLOCK1);
        self.block_cache_bytes += size;
        self.block_cache.insert(
            key,
            CachedBody {
                serial,
                response: stored,
            },
        );
        self.block_cache_order
            .push_back((expires, serial, peer.clone(), uri.to_vec()));
    }

    pub(super) fn remove_cached_body(&mut self, key: &(Peer, Vec<u8>), serial: u64) -> bool {
        if self.block_cache.get(key).is_none_or(|c| c.serial != serial) {
            return false;
        }
        if let Some(old) = self.block_cache.remove(key) {
            self.block_cache_bytes = self
                .block_cache_bytes
                .saturating_sub(old.response.payload.len());
        }
        true
    }
}

/// The Block1 message for the client's current offset (or the whole
/// request if it fits one block).
pub(super) fn client_block1_message(client: &ClientRequest) -> Message {
    let mut message = client.template.clone();
    match client.block1 {
        None => message.payload = client.body.clone(),
        Some((offset, szx)) => {
            let size = 16usize << szx;
            let end = (offset + size).min(client.body.len());
            let more = end < client.body.len();
            let num = u32::try_from(offset / size).unwrap_or(Block::MAX_NUM);
            message.payload = client.body.slice(offset.min(end)..end);
            message.set_option(
                OptionNumber::BLOCK1,
                Bytes::copy_from_slice(&Block { num, more, szx }.encode()),
            );
            if offset == 0 {
                let total = u32::try_from(client.body.len()).unwrap_or(u32::MAX);
                message.set_option(
                    OptionNumber::SIZE1,
                    Bytes::copy_from_slice(&encode_uint(total)),
                );
            }
        }
    }
    message
}

/// Block `num` of size `16 << szx` of `full`'s payload, with Block2 (and
/// Size2 on the first block); `None` if `num` lies beyond the body.
pub(super) fn segment(full: &Message, num: u32, szx: u8) -> Option<Message> {
    let size = 16usize << szx;
    let len = full.payload.len();
    let start = (num as usize).checked_mul(size)?;
    if start >= len && num > 0 {
        return None;
    }
    let end = start.saturating_add(size).min(len);
    let more = end < len;
    let mut block = full.clone();
    block.payload = full.payload.slice(start..end);
    block.set_option(
        OptionNumber::BLOCK2,
        Bytes::copy_from_slice(&Block { num, more, szx }.encode()),
    );
    if num == 0 {
        let total = u32::try_from(len).unwrap_or(u32::MAX);
        block.set_option(
            OptionNumber::SIZE2,
            Bytes::copy_from_slice(&encode_uint(total)),
        );
    }
    Some(block)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::new(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    fn key(port: u16, uri: &str) -> ReassemblyKey {
        (peer(port), None, uri.as_bytes().to_vec())
    }

    const LIMITS: ReassemblyLimits = ReassemblyLimits {
        max_transfers: 8,
        max_per_peer: 3,
        max_bytes: 1000,
    };

    /// Internal consistency: every index agrees with the transfers.
    fn check(r: &Reassemblies) {
        assert_eq!(r.by_touch.len(), r.transfers.len());
        assert_eq!(
            r.bytes,
            r.transfers.values().map(|t| t.body.len()).sum::<usize>()
        );
        assert_eq!(r.by_count.len(), r.peers.len());
        assert_eq!(r.by_bytes.len(), r.peers.len());
        let per_peer: usize = r.peers.values().map(|p| p.serials.len()).sum();
        assert_eq!(per_peer, r.transfers.len());
        for (k, t) in &r.transfers {
            assert_eq!(r.by_touch.get(&t.serial), Some(k));
        }
    }

    #[test]
    fn per_peer_cap_evicts_the_peers_least_recently_touched() {
        let now = Instant::now();
        let mut r = Reassemblies::default();
        for uri in ["a", "b", "c"] {
            assert!(r.insert(key(1, uri), vec![0; 10], now, LIMITS));
        }
        // Touch "a": "b" is now the oldest.
        let body = r.take(&key(1, "a")).unwrap();
        assert!(r.insert(key(1, "a"), body, now, LIMITS));
        assert!(r.insert(key(2, "x"), vec![0; 10], now, LIMITS));
        assert!(r.insert(key(1, "d"), vec![0; 10], now, LIMITS));
        assert!(r.body(&key(1, "b")).is_none(), "oldest of peer 1 evicted");
        for uri in ["a", "c", "d"] {
            assert!(r.body(&key(1, uri)).is_some());
        }
        assert!(r.body(&key(2, "x")).is_some(), "other peers untouched");
        assert_eq!(r.evictions(), 1);
        check(&r);
    }

    #[test]
    fn global_caps_take_room_from_the_heaviest_peer() {
        let now = Instant::now();
        let mut r = Reassemblies::default();
        let limits = ReassemblyLimits {
            max_per_peer: 100,
            ..LIMITS
        };
        // Peer 2 holds one, peer 1 fills the rest.
        assert!(r.insert(key(2, "x"), vec![0; 10], now, limits));
        for i in 0..7 {
            assert!(r.insert(key(1, &i.to_string()), vec![0; 10], now, limits));
        }
        assert_eq!(r.len(), 8);
        assert!(r.insert(key(3, "new"), vec![0; 10], now, limits));
        assert_eq!(r.len(), 8);
        assert!(r.body(&key(1, "0")).is_none(), "heaviest peer's oldest");
        assert!(r.body(&key(2, "x")).is_some(), "the older light peer stays");
        check(&r);
        // Memory: peer 1 holds the most bytes and pays for it.
        assert!(r.insert(key(4, "big"), vec![0; 900], now, limits));
        assert!(r.bytes() <= 1000);
        assert!(r.body(&key(2, "x")).is_some());
        assert!(r.body(&key(3, "new")).is_some());
        check(&r);
        // A body over the memory limit on its own is refused, evicting nothing.
        let before = r.len();
        assert!(!r.insert(key(5, "huge"), vec![0; 1001], now, limits));
        assert_eq!(r.len(), before);
        check(&r);
    }

    #[test]
    fn transfers_expire_in_touch_order() {
        let t0 = Instant::now();
        let mut r = Reassemblies::default();
        let life = Duration::from_secs(10);
        assert!(r.insert(key(1, "a"), vec![1], t0 + life, LIMITS));
        assert!(r.insert(
            key(1, "b"),
            vec![2],
            t0 + Duration::from_secs(1) + life,
            LIMITS
        ));
        let body = r.take(&key(1, "a")).unwrap();
        assert!(r.insert(
            key(1, "a"),
            body,
            t0 + Duration::from_secs(2) + life,
            LIMITS
        ));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(11)));
        r.expire(t0 + Duration::from_secs(11));
        assert!(r.body(&key(1, "b")).is_none());
        assert!(r.body(&key(1, "a")).is_some());
        r.expire(t0 + Duration::from_secs(12));
        assert_eq!(r.len(), 0);
        assert!(r.peers.is_empty() && r.by_count.is_empty() && r.by_bytes.is_empty());
        check(&r);
    }

    fn endpoint() -> Endpoint {
        let config = EndpointConfig {
            rng_seed: Some(1),
            ..EndpointConfig::default()
        };
        Endpoint::new(config).unwrap()
    }

    /// Sends block `num` of a Block1 upload of 16-byte blocks from `peer`
    /// and returns the answer's code (`None` if the request went to the
    /// application instead).
    fn block1(
        ep: &mut Endpoint,
        now: Instant,
        peer: &Peer,
        mid: u16,
        uri: &str,
        num: u32,
        more: bool,
    ) -> Option<Code> {
        let msg = Message::new(MessageType::Con, Code::POST, mid)
            .with_token(Bytes::copy_from_slice(&mid.to_be_bytes()))
            .with_uri_path(uri)
            .with_block1(Block { num, more, szx: 0 })
            .with_payload(vec![b'x'; 16]);
        ep.handle_datagram(now, peer.clone(), &msg.to_bytes().unwrap());
        let mut code = None;
        while let Some(t) = ep.poll_transmit() {
            let reply = Message::from_bytes(t.bytes).unwrap();
            assert_eq!(reply.message_id, mid);
            code = Some(reply.code);
        }
        code
    }

    fn peer_at(port: u16) -> Peer {
        Peer::new(std::net::SocketAddr::from(([198, 51, 100, 7], port)))
    }

    /// Issue 9: one peer's 4 100 abandoned first blocks no longer lock
    /// every other client's Block1 upload out (it got 5.03 for 247 s).
    #[test]
    fn a_victim_gets_continue_after_one_peer_sent_4100_first_blocks() {
        let mut ep = endpoint();
        let now = Instant::now();
        let attacker = peer_at(1);
        for i in 0..4100u16 {
            let code = block1(&mut ep, now, &attacker, i, &format!("a/{i}"), 0, true);
            assert_eq!(code, Some(Code::CONTINUE), "first block {i}");
        }
        assert_eq!(ep.reassemblies.len(), 16, "the per-peer cap");
        let victim = peer_at(2);
        let t = now + Duration::from_secs(1);
        assert_eq!(
            block1(&mut ep, t, &victim, 1, "up", 0, true),
            Some(Code::CONTINUE)
        );
        assert_eq!(block1(&mut ep, t, &victim, 2, "up", 1, false), None);
        let Some(Event::Request(request)) = ep.poll_event() else {
            panic!("the victim's upload reaches the application")
        };
        assert_eq!(request.message.payload.len(), 32);
    }

    /// With no per-peer cap in the way, the global cap takes room from the
    /// heaviest peer: the victim gets 2.31 and finishes; the attacker's
    /// evicted transfer gets 4.08 for its next block.
    #[test]
    fn the_global_cap_evicts_the_heaviest_peers_oldest_transfer() {
        let mut ep = Endpoint::new(EndpointConfig {
            rng_seed: Some(1),
            max_reassemblies_per_peer: 100_000,
            ..EndpointConfig::default()
        })
        .unwrap();
        let now = Instant::now();
        let attacker = peer_at(1);
        let other = peer_at(3);
        assert_eq!(
            block1(&mut ep, now, &other, 1, "slow", 0, true),
            Some(Code::CONTINUE)
        );
        for i in 0..4100u16 {
            let code = block1(&mut ep, now, &attacker, i, &format!("a/{i}"), 0, true);
            assert_eq!(code, Some(Code::CONTINUE), "first block {i}");
        }
        assert_eq!(ep.reassemblies.len(), 4096);
        let victim = peer_at(2);
        assert_eq!(
            block1(&mut ep, now, &victim, 1, "up", 0, true),
            Some(Code::CONTINUE)
        );
        assert_eq!(ep.reassemblies.len(), 4096);
        assert_eq!(block1(&mut ep, now, &victim, 2, "up", 1, false), None);
        assert!(matches!(ep.poll_event(), Some(Event::Request(_))));
        // The attacker's oldest transfers were the ones evicted (5 of
        // them: 4 100 + 1 other > 4 096, then the victim's).
        for i in 0..6u16 {
            let code = block1(
                &mut ep,
                now,
                &attacker,
                10_000 + i,
                &format!("a/{i}"),
                1,
                true,
            );
            assert_eq!(code, Some(Code::REQUEST_ENTITY_INCOMPLETE), "transfer {i}");
        }
        assert_eq!(
            block1(&mut ep, now, &attacker, 10_006, "a/6", 1, true),
            Some(Code::CONTINUE)
        );
        assert_eq!(
            block1(&mut ep, now, &attacker, 20_000, "a/4099", 1, true),
            Some(Code::CONTINUE)
        );
        // The light peer's older transfer survived.
        assert_eq!(
            block1(&mut ep, now, &other, 2, "slow", 1, true),
            Some(Code::CONTINUE)
        );
    }

    #[test]
    fn the_per_peer_cap_evicts_the_least_recently_touched_transfer() {
        let mut ep = endpoint();
        let now = Instant::now();
        let peer = peer_at(1);
        for i in 0..16u16 {
            let code = block1(&mut ep, now, &peer, i, &format!("t/{i}"), 0, true);
            assert_eq!(code, Some(Code::CONTINUE));
        }
        // Touch transfer 0: transfer 1 becomes the least recently touched.
        assert_eq!(
            block1(&mut ep, now, &peer, 100, "t/0", 1, true),
            Some(Code::CONTINUE)
        );
        assert_eq!(
            block1(&mut ep, now, &peer, 16, "t/16", 0, true),
            Some(Code::CONTINUE)
        );
        assert_eq!(ep.reassemblies.peer_len(&peer), 16);
        // RFC 7959 §2.5: the evicted transfer's next block is 4.08.
        assert_eq!(
            block1(&mut ep, now, &peer, 101, "t/1", 1, true),
            Some(Code::REQUEST_ENTITY_INCOMPLETE)
        );
        assert_eq!(
            block1(&mut ep, now, &peer, 102, "t/0", 2, false),
            None,
            "the touched transfer completes"
        );
        assert!(matches!(ep.poll_event(), Some(Event::Request(_))));
        assert_eq!(
            block1(&mut ep, now, &peer, 103, "t/2", 1, true),
            Some(Code::CONTINUE)
        );
    }

    #[test]
    fn reassembly_memory_stays_bounded_under_many_peers() {
        let mut ep = Endpoint::new(EndpointConfig {
            rng_seed: Some(1),
            max_reassemblies: 1000,
            max_reassembly_memory: 20_000,
            ..EndpointConfig::default()
        })
        .unwrap();
        let mut now = Instant::now();
        let mut mid = 0u16;
        for round in 0..3u32 {
            for port in 0..200u16 {
                let peer = peer_at(1000 + port);
                for i in 0..20u32 {
                    mid = mid.wrapping_add(1);
                    let uri = format!("r/{i}");
                    let code = block1(&mut ep, now, &peer, mid, &uri, 0, true);
                    assert_eq!(code, Some(Code::CONTINUE));
                    if i % 2 == 0 {
                        mid = mid.wrapping_add(1);
                        // Continues or finds its transfer evicted; never 5.03.
                        let code = block1(&mut ep, now, &peer, mid, &uri, 1, true);
                        assert!(
                            matches!(code, Some(Code::CONTINUE | Code::REQUEST_ENTITY_INCOMPLETE)),
                            "{code:?}"
                        );
                    }
                    assert!(ep.reassemblies.peer_len(&peer) <= 16);
                    assert!(ep.reassemblies.len() <= 1000);
                    assert!(ep.reassemblies.bytes() <= 20_000);
                }
            }
            now += Duration::from_secs(10 + u64::from(round));
        }
        assert!(ep.reassemblies.evictions() > 0);
        assert_eq!(ep.stats().block1_evictions, ep.reassemblies.evictions());
        // Everything expires.
        ep.handle_timeout(now + EXCHANGE_LIFETIME_FOR_TESTS);
        assert_eq!(ep.reassemblies.len(), 0);
        assert_eq!(ep.reassemblies.bytes(), 0);
    }

    const EXCHANGE_LIFETIME_FOR_TESTS: Duration = crate::config::EXCHANGE_LIFETIME;
}
