//! Connection-mode sessions (keyed by clientid, not by address), their
//! tokens, and the limiter for repeated bad tokens. Pure data with time as
//! an argument, so expiry and limits are tested in virtual time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use coap_endpoint::Peer;

use super::ListenerId;
use crate::broker::ClientInfo;

/// One connection-mode session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// clientid, username and password given at `POST mqtt/connection`.
    pub(crate) client: ClientInfo,
    /// The token handed out (decimal string of a random 32-bit value).
    pub(crate) token: String,
    /// Listener and address of the latest valid request.
    pub(crate) listener: ListenerId,
    pub(crate) peer: Peer,
    /// Time of the latest valid request.
    pub(crate) last_seen: Instant,
    /// Time of the `POST mqtt/connection` that opened the session.
    pub(crate) connected_at: Instant,
}

/// A fresh token: the decimal string of an unpredictable 32-bit value
/// (EMQX clients parse it as a number).
pub(crate) fn new_token() -> String {
    rand::random::<u32>().to_string()
}

/// Compares tokens without an early exit on the first differing byte.
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// All sessions, with an index from (listener, peer) to clientid so that a
/// second clientid on one peer is refused.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_client: HashMap<String, Session>,
    by_peer: HashMap<(ListenerId, Peer), String>,
}

impl Sessions {
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.by_client.values()
    }

    pub(crate) fn get(&self, clientid: &str) -> Option<&Session> {
        self.by_client.get(clientid)
    }

    /// The clientid of the session last seen at `peer` on `listener`.
    pub(crate) fn clientid_at(&self, listener: ListenerId, peer: &Peer) -> Option<&str> {
        self.by_peer
            .get(&(listener, peer.clone()))
            .map(String::as_str)
    }

    /// Inserts (or replaces) the session of its clientid; returns the old one.
    pub(crate) fn insert(&mut self, session: Session) -> Option<Session> {
        let clientid = session.client.clientid.clone().unwrap_or_default();
        let old = self.remove(&clientid);
        self.by_peer
            .insert((session.listener, session.peer.clone()), clientid.clone());
        self.by_client.insert(clientid, session);
        old
    }

    pub(crate) fn remove(&mut self, clientid: &str) -> Option<Session> {
        let session = self.by_client.remove(clientid)?;
        let key = (session.listener, session.peer.clone());
        if self.by_peer.get(&key).is_some_and(|c| c == clientid) {
            self.by_peer.remove(&key);
        }
        Some(session)
    }

    /// Marks a valid request at `now` from `peer`; returns the previous
    /// (listener, peer) if the device's address changed.
    pub(crate) fn touch(
        &mut self,
        clientid: &str,
        listener: ListenerId,
        peer: &Peer,
        now: Instant,
    ) -> Option<(ListenerId, Peer)> {
        let session = self.by_client.get_mut(clientid)?;
        session.last_seen = now;
        if session.listener == listener && session.peer == *peer {
            return None;
        }
        let old = (session.listener, session.peer.clone());
        session.listener = listener;
        session.peer = peer.clone();
        if self.by_peer.get(&old).is_some_and(|c| c == clientid) {
            self.by_peer.remove(&old);
        }
        self.by_peer
            .insert((listener, peer.clone()), clientid.to_owned());
        Some(old)
    }

    /// Removes and returns the sessions without a request for longer than
    /// `lifetime` at `now`.
    pub(crate) fn expire(&mut self, now: Instant, lifetime: Duration) -> Vec<Session> {
        let expired: Vec<String> = self
            .by_client
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) > lifetime)
            .map(|(c, _)| c.clone())
            .collect();
        expired.iter().filter_map(|c| self.remove(c)).collect()
    }
}

/// What a bad-token limit is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LimitKey {
    /// The sender's IP address (all ports: NAT rebinding does not reset it).
    /// Many devices may share one address behind a NAT, so an address gets
    /// [`ADDRESS_LIMIT_FACTOR`] times the per-client limit.
    Ip(IpAddr),
    /// The clientid the token was presented for.
    Client(String),
}

/// How many times the per-client limit one IP address may fail before it is
/// refused: devices behind one NAT share the address, and one misbehaving
/// device must not lock out its neighbours.
pub(crate) const ADDRESS_LIMIT_FACTOR: u32 = 10;

impl LimitKey {
    fn limit(&self, per_client: u32) -> u32 {
        match self {
            LimitKey::Ip(_) => per_client.saturating_mul(ADDRESS_LIMIT_FACTOR),
            LimitKey::Client(_) => per_client,
        }
    }
}

/// Counts bad tokens per key in fixed windows; a key with `limit` failures
/// in the current window is refused until the window ends. Bounded: when
/// full, expired entries go first, then the entry with the oldest window.
#[derive(Debug)]
pub(crate) struct BadTokenLimiter {
    entries: HashMap<LimitKey, (u32, Instant)>,
    limit: u32,
    window: Duration,
    capacity: usize,
}

impl BadTokenLimiter {
    pub(crate) fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            limit: limit.max(1),
            window,
            capacity: capacity.max(1),
        }
    }

    /// `Some(wait)` if any of `keys` is over its limit at `now`.
    pub(crate) fn blocked(&self, keys: &[LimitKey], now: Instant) -> Option<Duration> {
        keys.iter()
            .filter_map(|k| {
                self.entries
                    .get(k)
                    .map(|entry| (k.limit(self.limit), entry))
            })
            .filter(|(limit, (count, start))| *count >= *limit && now < *start + self.window)
            .map(|(_, (_, start))| (*start + self.window).saturating_duration_since(now))
            .max()
    }

    /// Records one bad token for each of `keys`.
    pub(crate) fn record(&mut self, keys: &[LimitKey], now: Instant) {
        for key in keys {
            if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
                self.prune(now);
                if self.entries.len() >= self.capacity {
                    let oldest = self
                        .entries
                        .iter()
                        .min_by_key(|(_, (_, start))| *start)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        self.entries.remove(&oldest);
                    }
                }
            }
            let window = self.window;
            let entry = self.entries.entry(key.clone()).or_insert((0, now));
            if now >= entry.1 + window {
                *entry = (0, now);
            }
            entry.0 = entry.0.saturating_add(1);
        }
    }

    /// Forgets entries whose window is over.
    pub(crate) fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.entries.retain(|_, (_, start)| now < *start + window);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::new(([10, 0, 0, 1], port).into())
    }

    fn session(clientid: &str, port: u16, now: Instant) -> Session {
        Session {
            client: ClientInfo::with_clientid(clientid),
            token: new_token(),
            listener: ListenerId(0),
            peer: peer(port),
            last_seen: now,
            connected_at: now,
        }
    }

    #[test]
    fn tokens_are_decimal_u32_and_vary() {
        let tokens: Vec<String> = (0..50).map(|_| new_token()).collect();
        for t in &tokens {
            assert!(t.parse::<u32>().is_ok(), "{t}");
        }
        let distinct: std::collections::HashSet<_> = tokens.iter().collect();
        assert!(distinct.len() > 45);
        assert!(tokens_equal("123", "123"));
        assert!(!tokens_equal("123", "124"));
        assert!(!tokens_equal("123", "1234"));
    }

    #[test]
    fn sessions_follow_the_newest_address_and_expire() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.insert(session("a", 1000, t0));
        assert_eq!(s.clientid_at(ListenerId(0), &peer(1000)), Some("a"));
        // Same address: nothing moved.
        assert_eq!(s.touch("a", ListenerId(0), &peer(1000), t0), None);
        // NAT rebinding: the old address is reported and forgotten.
        let moved = s.touch(
            "a",
            ListenerId(0),
            &peer(2000),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(moved, Some((ListenerId(0), peer(1000))));
        assert_eq!(s.clientid_at(ListenerId(0), &peer(1000)), None);
        assert_eq!(s.clientid_at(ListenerId(0), &peer(2000)), Some("a"));
        let life = Duration::from_secs(45);
        assert!(s.expire(t0 + Duration::from_secs(55), life).is_empty());
        let gone = s.expire(t0 + Duration::from_secs(56), life);
        assert_eq!(gone.len(), 1);
        assert_eq!(s.len(), 0);
        assert_eq!(s.clientid_at(ListenerId(0), &peer(2000)), None);
    }

    #[test]
    fn replacing_a_session_returns_the_old_one() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.insert(session("a", 1000, t0));
        let old = s.insert(session("a", 1001, t0)).unwrap();
        assert_eq!(old.peer, peer(1000));
        assert_eq!(s.clientid_at(ListenerId(0), &peer(1000)), None);
        assert_eq!(s.clientid_at(ListenerId(0), &peer(1001)), Some("a"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn limiter_blocks_after_limit_until_window_ends() {
        let t0 = Instant::now();
        let mut l = BadTokenLimiter::new(3, Duration::from_secs(10), 100);
        let keys = [
            LimitKey::Ip([10, 0, 0, 1].into()),
            LimitKey::Client("a".into()),
        ];
        for _ in 0..2 {
            l.record(&keys, t0);
        }
        assert_eq!(l.blocked(&keys, t0), None);
        l.record(&keys, t0);
        assert_eq!(
            l.blocked(&keys, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        // Another client from another address is not affected.
        let other = [
            LimitKey::Ip([10, 0, 0, 2].into()),
            LimitKey::Client("b".into()),
        ];
        assert_eq!(l.blocked(&other, t0), None);
        // Only the clientid matches: still blocked (distributed guessing).
        let same_client = [
            LimitKey::Ip([10, 0, 0, 3].into()),
            LimitKey::Client("a".into()),
        ];
        assert!(l.blocked(&same_client, t0).is_some());
        // Only the address matches: a NAT neighbour is not blocked until the
        // address has failed ADDRESS_LIMIT_FACTOR times as often.
        let neighbour = [
            LimitKey::Ip([10, 0, 0, 1].into()),
            LimitKey::Client("n".into()),
        ];
        assert_eq!(l.blocked(&neighbour, t0), None);
        for _ in 3..3 * ADDRESS_LIMIT_FACTOR {
            l.record(&[LimitKey::Ip([10, 0, 0, 1].into())], t0);
        }
        assert!(l.blocked(&neighbour, t0).is_some());
        assert_eq!(l.blocked(&keys, t0 + Duration::from_secs(10)), None);
        // A new window starts counting from zero.
        l.record(&keys, t0 + Duration::from_secs(11));
        assert_eq!(l.blocked(&keys, t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn limiter_is_bounded() {
        let t0 = Instant::now();
        let mut l = BadTokenLimiter::new(3, Duration::from_secs(10), 4);
        for i in 0..100u32 {
            l.record(
                &[LimitKey::Client(i.to_string())],
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(l.len() <= 4);
        l.prune(t0 + Duration::from_secs(60));
        assert_eq!(l.len(), 0);
    }
}
