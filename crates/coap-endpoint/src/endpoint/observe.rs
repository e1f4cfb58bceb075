//! Observe (RFC 7641, server side): relations, notifications, rebinding,
//! and the index from (peer, token) to relation.
//!
//! The index is kept small: idle observers are the endpoint's most numerous
//! state.
//!
//! Each relation is found by a 64-bit keyed hash of its peer and token (a
//! 16-byte map entry instead of the 100-byte peer and token). The hash is
//! the endpoint's keyed fast hash (`fast_hash`) with a per-endpoint random
//! key, so a peer cannot aim for collisions; should two live relations still share a hash, the second
//! goes to an overflow map keyed by the full (peer, token). A hit in the
//! hash map counts only after the caller confirmed the relation really has
//! that peer and token, so a collision never finds the wrong relation.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use crate::fast_hash::{FastHashBuilder, PassThrough};

use super::*;

#[derive(Debug, Default)]
pub(crate) struct RelationIndex {
    hasher: FastHashBuilder,
    /// Keyed by the hash itself (already keyed and mixed).
    by_hash: HashMap<u64, RelationId, PassThrough>,
    /// Relations whose hash another relation already holds in `by_hash`.
    overflow: FastMap<(Peer, Box<[u8]>), RelationId>,
    /// Tests only: every key hashes alike, to exercise the overflow.
    #[cfg(test)]
    collide: bool,
}

impl RelationIndex {
    fn hash(&self, peer: &Peer, token: &[u8]) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        let mut hasher = self.hasher.build_hasher();
        peer.hash(&mut hasher);
        token.hash(&mut hasher);
        hasher.finish()
    }

    /// The relation of `peer` with `token`. `is` tells whether a relation
    /// has exactly that peer and token.
    pub(crate) fn get(
        &self,
        peer: &Peer,
        token: &[u8],
        is: impl Fn(RelationId) -> bool,
    ) -> Option<RelationId> {
        if let Some(&id) = self.by_hash.get(&self.hash(peer, token))
            && is(id)
        {
            return Some(id);
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow
            .get(&(peer.clone(), Box::from(token)))
            .copied()
    }

    /// Indexes a relation (its peer and token are not indexed yet).
    pub(crate) fn insert(&mut self, peer: &Peer, token: &[u8], id: RelationId) {
        let hash = self.hash(peer, token);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(hash) {
            slot.insert(id);
        } else {
            self.overflow.insert((peer.clone(), Box::from(token)), id);
        }
    }

    /// Removes relation `id`, indexed under `peer` and `token`.
    pub(crate) fn remove(&mut self, peer: &Peer, token: &[u8], id: RelationId) {
        let hash = self.hash(peer, token);
        if self.by_hash.get(&hash) == Some(&id) {
            self.by_hash.remove(&hash);
        } else if !self.overflow.is_empty() {
            let key = (peer.clone(), Box::from(token));
            if self.overflow.get(&key) == Some(&id) {
                self.overflow.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len() + self.overflow.len()
    }
}

/// How many recent NON notification message ids are remembered so that an
/// RST to one of them ends its relation (RFC 7641 §3.6).
pub(super) const RECENT_NON_CAP: usize = 4096;

#[derive(Debug)]
pub(super) struct Relation {
    pub(super) peer: Peer,
    /// Inline up to 22 bytes (every RFC 7252 token): no heap.
    pub(super) token: SmallBytes<22>,
    pub(super) uri: Box<[u8]>,
    pub(super) seq: u32,
    pub(super) since_con: u32,
    pub(super) last_con: Instant,
    pub(super) szx: u8,
}

impl Endpoint {
    /// The relation of `peer` with `token`, if any.
    pub(super) fn relation_of(&self, peer: &Peer, token: &[u8]) -> Option<RelationId> {
        let relations = &self.relations;
        self.relation_index.get(peer, token, |id| {
            relations
                .get(&id)
                .is_some_and(|r| r.peer == *peer && *r.token == *token)
        })
    }

    pub(super) fn mark_con(&mut self, relation: Option<RelationId>, now: Instant) {
        if let Some(relation) = relation.and_then(|id| self.relations.get_mut(&id)) {
            relation.since_con = 0;
            relation.last_con = now;
        }
    }

    pub(super) fn establish_relation(
        &mut self,
        now: Instant,
        pending: &PendingRequest,
        szx: u8,
    ) -> Option<RelationId> {
        if let Some(existing) = self.relation_of(&pending.peer, &pending.token)
            && let Some(relation) = self.relations.get_mut(&existing)
        {
            relation.uri = Box::from(&pending.uri[..]);
            relation.szx = szx;
            return Some(existing);
        }
        let per_peer = self
            .peers
            .get(&pending.peer)
            .map_or(0, |p| p.relations as usize);
        if self.relations.len() >= self.config.max_relations
            || per_peer >= self.config.max_relations_per_peer
        {
            return None;
        }
        let id = RelationId(self.fresh_id());
        let seq = (self.rng.next_u64() as u32) % (1 << 16);
        self.relations.insert(
            id,
            Relation {
                peer: pending.peer.clone(),
                token: SmallBytes::new(&pending.token),
                uri: Box::from(&pending.uri[..]),
                seq,
                since_con: 0,
                last_con: now,
                szx,
            },
        );
        self.relation_index
            .insert(&pending.peer, &pending.token, id);
        let state = self.peers.entry(pending.peer.clone()).or_default();
        state.relations = state.relations.saturating_add(1);
        self.counters.stats.relations_established += 1;
        Some(id)
    }

    /// Ends a relation; `reason` `Some` emits [`Event::ObserveCancelled`].
    pub(super) fn cancel_relation(&mut self, id: RelationId, reason: Option<CancelReason>) {
        let Some(relation) = self.relations.remove(&id) else {
            return;
        };
        self.relation_index
            .remove(&relation.peer, &relation.token, id);
        self.counters.stats.relations_cancelled += 1;
        if let Some(state) = self.peers.get_mut(&relation.peer) {
            state.relations = state.relations.saturating_sub(1);
            state
                .queue
                .retain(|q| q.purpose != Purpose::Notification(id));
            if let Some(flight) = state.in_flight.as_mut()
                && flight.purpose == Purpose::Notification(id)
            {
                flight.replacement = None;
            }
        }
        if let Some(reason) = reason {
            self.events.push_back(Event::ObserveCancelled {
                relation: id,
                peer: relation.peer.clone(),
                reason,
            });
        }
        self.forget_peer_if_idle(&relation.peer);
    }

    /// Ends a relation at the application's request (no event, nothing sent).
    /// Returns false if it did not exist.
    pub fn cancel_observe(&mut self, relation: RelationId) -> bool {
        let exists = self.relations.contains_key(&relation);
        self.cancel_relation(relation, None);
        exists
    }

    /// Sends a notification on `relation`. The endpoint sets type, message
    /// id, token and the Observe sequence number (24-bit, strictly
    /// increasing). `confirmable` asks for CON; NON is upgraded to CON every
    /// `observe_con_every` notifications and after `observe_con_interval`.
    /// A notification replaces an older unacknowledged one of the same
    /// relation (RFC 7641 §4.5.2). A non-2.xx code ends the relation after
    /// sending it without Observe (RFC 7641 §4.2). A large payload is sent
    /// block-wise: the first block, the rest on request.
    pub fn notify(
        &mut self,
        now: Instant,
        relation: RelationId,
        mut notification: Message,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        let con_every = self.config.observe_con_every;
        let con_interval = self.config.observe_con_interval;
        let rel = self
            .relations
            .get_mut(&relation)
            .ok_or(NotifyError::UnknownRelation)?;
        let peer = rel.peer.clone();
        notification.token = Bytes::copy_from_slice(&rel.token);
        let ends = notification.code.class() != 2;
        let con = confirmable
            || ends
            || rel.since_con + 1 >= con_every
            || now.saturating_duration_since(rel.last_con) >= con_interval;
        if ends {
            notification.remove_option(OptionNumber::OBSERVE);
        } else {
            rel.seq = observe_option::next(rel.seq);
            notification.set_option(
                OptionNumber::OBSERVE,
                Bytes::copy_from_slice(&observe_option::encode(rel.seq)),
            );
        }
        if con {
            rel.since_con = 0;
            rel.last_con = now;
        } else {
            rel.since_con += 1;
        }
        let szx = rel.szx;
        let uri = rel.uri.clone();
        notification.remove_option(OptionNumber::BLOCK2);
        let mut full = None;
        if notification.payload.len() > 16usize << szx
            && let Some(first) = segment(&notification, 0, szx)
        {
            full = Some(std::mem::replace(&mut notification, first));
        }
        // Refuse what cannot be encoded (e.g. an oversized option from the
        // application) instead of queueing it — and cache the body for the
        // Block2 follow-ups only when it encodes.
        notification.to_bytes_with(&self.codec)?;
        if let Some(full) = full {
            self.cache_body(now, &peer, &uri, &full);
        }
        self.counters.stats.notifications += 1;
        self.counters.response_out(notification.code);
        if ends {
            // The final notification supersedes anything still queued for
            // the relation; it goes out as a plain CON of its own so that
            // ending the relation does not discard it. The relation ends
            // even if the peer's queue is full (it then is not told).
            self.cancel_relation(relation, None);
            if !self.enqueue_con(now, &peer, notification, Purpose::Separate(None)) {
                return Err(NotifyError::QueueFull);
            }
            return Ok(());
        }
        let in_flight_same = self
            .peers
            .get(&peer)
            .and_then(|p| p.in_flight.as_ref())
            .is_some_and(|f| f.purpose == Purpose::Notification(relation));
        if con || in_flight_same {
            self.enqueue_con(now, &peer, notification, Purpose::Notification(relation));
        } else {
            notification.mtype = MessageType::Non;
            notification.message_id = self.fresh_mid();
            let mid = notification.message_id;
            self.send_message(&peer, &notification);
            self.remember_non_notification(&peer, mid, relation);
        }
        Ok(())
    }

    pub(super) fn remember_non_notification(
        &mut self,
        peer: &Peer,
        mid: u16,
        relation: RelationId,
    ) {
        while self.recent_non_order.len() >= RECENT_NON_CAP {
            if let Some(old) = self.recent_non_order.pop_front() {
                self.recent_non.remove(&old);
            }
        }
        self.recent_non.insert((peer.clone(), mid), relation);
        self.recent_non_order.push_back((peer.clone(), mid));
    }

    /// Moves every observe relation of `old` (and its queued notifications)
    /// to `new`, e.g. when a device behind a NAT shows up with a new port.
    /// Returns the number of relations moved.
    ///
    /// Relations already at `new` stay. A relation of `old` whose token
    /// `new` already uses, and the oldest ones beyond
    /// `max_relations_per_peer` at `new`, are not moved but ended with
    /// [`Event::ObserveCancelled`] ([`CancelReason::NotRebound`]).
    pub fn rebind(&mut self, now: Instant, old: &Peer, new: Peer) -> usize {
        if *old == new {
            return 0;
        }
        let mut candidates: Vec<RelationId> = self
            .relations
            .iter()
            .filter(|(_, r)| r.peer == *old)
            .map(|(id, _)| *id)
            .collect();
        // Newest first: ids grow with time.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let room = self
            .config
            .max_relations_per_peer
            .saturating_sub(self.peers.get(&new).map_or(0, |p| p.relations as usize));
        let mut ids = Vec::new();
        let mut refused = Vec::new();
        for id in candidates {
            let collides = self
                .relations
                .get(&id)
                .is_some_and(|r| self.relation_of(&new, &r.token).is_some());
            if collides || ids.len() >= room {
                refused.push(id);
            } else {
                ids.push(id);
            }
        }
        for id in refused {
            // Still at `old`: its queued notifications go with it.
            self.cancel_relation(id, Some(CancelReason::NotRebound));
        }
        for id in &ids {
            if let Some(relation) = self.relations.get_mut(id) {
                self.relation_index.remove(old, &relation.token, *id);
                relation.peer = new.clone();
                self.relation_index.insert(&new, &relation.token, *id);
            }
        }
        let mut moved_flight = None;
        let mut moved_queue = Vec::new();
        if let Some(state) = self.peers.get_mut(old) {
            state.relations = state
                .relations
                .saturating_sub(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            if let Some(flight) = state.in_flight.as_ref()
                && matches!(flight.purpose, Purpose::Notification(r) if ids.contains(&r))
            {
                moved_flight = state.in_flight.take();
            }
            let (notifications, rest): (VecDeque<Outgoing>, VecDeque<Outgoing>) = state
                .queue
                .drain(..)
                .partition(|q| matches!(q.purpose, Purpose::Notification(r) if ids.contains(&r)));
            state.queue = rest;
            moved_queue.extend(notifications);
        }
        let state = self.peers.entry(new.clone()).or_default();
        state.relations = state
            .relations
            .saturating_add(u32::try_from(ids.len()).unwrap_or(u32::MAX));
        if let Some(mut flight) = moved_flight {
            // Re-send the in-flight notification to the new address now,
            // keeping its retransmission state.
            let new_idle = self
                .peers
                .get(&new)
                .is_none_or(|state| state.in_flight.is_none());
            if new_idle {
                flight.next_at = now + flight.timeout;
                let (next_at, mid) = (flight.next_at, flight.mid);
                self.transmits.push_back(Transmit {
                    peer: new.clone(),
                    bytes: flight.bytes.clone(),
                });
                self.peers.entry(new.clone()).or_default().in_flight = Some(flight);
                self.push_timer(
                    next_at,
                    Timer::Retransmit {
                        peer: new.clone(),
                        mid,
                    },
                );
            } else if let Ok(message) = Message::from_bytes(flight.bytes.clone()) {
                let new_state = self.peers.entry(new.clone()).or_default();
                new_state.queue.push_front(Outgoing {
                    message: flight.replacement.unwrap_or(message),
                    purpose: flight.purpose,
                });
            }
        }
        for outgoing in moved_queue {
            self.enqueue_con(now, &new, outgoing.message, outgoing.purpose);
        }
        self.send_next_queued(now, old);
        self.send_next_queued(now, &new);
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::new(std::net::SocketAddr::from(([192, 0, 2, 9], port)))
    }

    /// Every lookup, insert and removal stays exact when all keys collide.
    #[test]
    fn colliding_hashes_never_find_the_wrong_relation() {
        for collide in [false, true] {
            let mut index = RelationIndex {
                collide,
                ..RelationIndex::default()
            };
            let mut truth: HashMap<RelationId, (Peer, Vec<u8>)> = HashMap::new();
            let keys: Vec<(Peer, Vec<u8>)> = (0..6u16)
                .flat_map(|p| (0..4u8).map(move |t| (peer(p), vec![t; usize::from(t)])))
                .collect();
            for (n, (p, t)) in keys.iter().enumerate() {
                let id = RelationId(n as u64);
                index.insert(p, t, id);
                truth.insert(id, (p.clone(), t.clone()));
            }
            let check = |index: &RelationIndex, truth: &HashMap<RelationId, (Peer, Vec<u8>)>| {
                for (p, t) in &keys {
                    let is = |id: RelationId| truth.get(&id).is_some_and(|(q, u)| q == p && u == t);
                    let expect = truth
                        .iter()
                        .find(|(_, (q, u))| q == p && u == t)
                        .map(|(id, _)| *id);
                    assert_eq!(index.get(p, t, is), expect, "{p} {t:?} collide={collide}");
                }
                assert_eq!(index.len(), truth.len());
            };
            check(&index, &truth);
            // Remove every other one (the hash holder first), then re-add.
            for n in (0..keys.len()).step_by(2) {
                let id = RelationId(n as u64);
                let (p, t) = truth.remove(&id).unwrap();
                index.remove(&p, &t, id);
                check(&index, &truth);
            }
            for n in (0..keys.len()).step_by(4) {
                let id = RelationId(100 + n as u64);
                let (p, t) = keys[n].clone();
                index.insert(&p, &t, id);
                truth.insert(id, (p, t));
                check(&index, &truth);
            }
        }
    }
}
