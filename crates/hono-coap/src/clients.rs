//! The bounded table of known clients behind the management API: who sent
//! from which address, when last, and which command waits are open.
//!
//! ```text
//! HonoAdapter::process ─touch(peer, tenant, device, auth-id, now)─▶ ClientTable
//!   (hot path: one lock, one lookup by peer address, no allocation
//!    unless the peer is new or now speaks for another device)
//! upload with hono-ttd ─begin_wait(peer, devices)─▶ CommandWaitGuard ─ kicked()?
//! management API ─search / find / command_waits / kick─▶ ClientTable
//! ```
//!
//! A client is one peer address (a DTLS session or a plain-UDP source)
//! with the tenant and device it authenticated as (for a gateway: the
//! gateway itself) or, on plain UDP, the tenant and device its URI named.
//! One device has at most one entry: when it shows up from a new address
//! (a new DTLS session after a NAT rebinding or restart) its entry moves to
//! the new address (counters start over, the old address's command waits
//! end; logged at debug — only a new client is logged at info). The table holds at most `capacity` entries; when full,
//! the entry idle the longest is evicted (an approximation: entries are
//! queued by the time they were queued, and one active since gets a
//! second chance at the back of the queue).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Default capacity of [`ClientTable`].
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

/// How a client reaches the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientTransport {
    /// A DTLS-PSK session.
    Dtls,
    /// Plain UDP (unauthenticated device).
    Udp,
}

impl ClientTransport {
    /// `"dtls"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dtls => "dtls",
            Self::Udp => "udp",
        }
    }
}

/// A snapshot of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The tenant.
    pub tenant_id: String,
    /// The device (for a gateway: the gateway's own device id).
    pub device_id: String,
    /// The PSK auth-id of a DTLS client.
    pub auth_id: Option<String>,
    /// The peer address.
    pub peer: SocketAddr,
    /// DTLS or plain UDP.
    pub transport: ClientTransport,
    /// When the first request from this address was seen.
    pub first_seen: Instant,
    /// When the latest request was seen.
    pub last_activity: Instant,
    /// Requests seen from this address.
    pub requests: u64,
    /// Open command waits (requests with `hono-ttd` still waiting).
    pub command_waits: usize,
}

/// One open command wait of a client: the devices it listens for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandWaitInfo {
    /// The devices subscribed for (the device itself, and for a gateway
    /// the devices that last sent through it).
    pub devices: Vec<String>,
    /// When the wait began.
    pub since: Instant,
    /// When the wait ends at the latest (`since + ttd`).
    pub until: Instant,
}

/// A search of the table; every given field must match (case-sensitive
/// substrings); `None` matches everything.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ClientQuery<'a> {
    /// Substring of the tenant id.
    pub tenant: Option<&'a str>,
    /// Substring of the device id.
    pub device: Option<&'a str>,
    /// Substring of the auth-id (clients without one never match).
    pub auth_id: Option<&'a str>,
    /// Substring of any of tenant, device or auth-id.
    pub any: Option<&'a str>,
}

impl ClientQuery<'_> {
    fn matches(&self, entry: &Entry) -> bool {
        let has = |field: &str, needle: Option<&str>| needle.is_none_or(|n| field.contains(n));
        has(&entry.tenant_id, self.tenant)
            && has(&entry.device_id, self.device)
            && self
                .auth_id
                .is_none_or(|n| entry.auth_id.as_deref().is_some_and(|a| a.contains(n)))
            && self.any.is_none_or(|n| {
                entry.tenant_id.contains(n)
                    || entry.device_id.contains(n)
                    || entry.auth_id.as_deref().is_some_and(|a| a.contains(n))
            })
    }
}

/// One page of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientPage {
    /// How many clients matched in all.
    pub total: usize,
    /// The clients of the page, ordered by tenant, then device.
    pub clients: Vec<ClientInfo>,
}

/// The bounded table of known clients; see the module docs.
#[derive(Debug)]
pub struct ClientTable {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_peer: HashMap<SocketAddr, Entry>,
    by_device: HashMap<(String, String), SocketAddr>,
    /// `(peer, entry id, queued at)`, oldest first; stale items are skipped.
    order: VecDeque<(SocketAddr, u64, Instant)>,
    next_id: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    tenant_id: String,
    device_id: String,
    auth_id: Option<String>,
    transport: ClientTransport,
    first_seen: Instant,
    last_activity: Instant,
    requests: u64,
    waits: Vec<Wait>,
}

#[derive(Debug)]
struct Wait {
    id: u64,
    devices: Vec<String>,
    since: Instant,
    until: Instant,
    kick: oneshot::Sender<()>,
}

impl Entry {
    fn info(&self, peer: SocketAddr) -> ClientInfo {
        ClientInfo {
            tenant_id: self.tenant_id.clone(),
            device_id: self.device_id.clone(),
            auth_id: self.auth_id.clone(),
            peer,
            transport: self.transport,
            first_seen: self.first_seen,
            last_activity: self.last_activity,
            requests: self.requests,
            command_waits: self.waits.len(),
        }
    }
}

impl ClientTable {
    /// An empty table holding at most `capacity` clients (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The most clients held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.lock().by_peer.len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a request from `peer` acting as `tenant`/`device`.
    pub fn touch(
        &self,
        peer: SocketAddr,
        transport: ClientTransport,
        tenant: &str,
        device: &str,
        auth_id: Option<&str>,
        now: Instant,
    ) {
        let mut inner = self.lock();
        if let Some(entry) = inner.by_peer.get_mut(&peer)
            && entry.tenant_id == tenant
            && entry.device_id == device
        {
            entry.last_activity = now;
            entry.requests = entry.requests.saturating_add(1);
            if entry.auth_id.as_deref() != auth_id {
                entry.auth_id = auth_id.map(str::to_owned);
            }
            entry.transport = transport;
            return;
        }
        // A new address, or an address that now speaks for another device
        // (plain UDP): the slow path.
        inner.remove_peer(peer);
        let key = (tenant.to_owned(), device.to_owned());
        if let Some(previous) = inner.by_device.get(&key).copied()
            && let Some(mut entry) = inner.by_peer.remove(&previous)
        {
            // The device moved (new DTLS session, NAT rebinding): its entry
            // moves in place, keeping its strings; the old address's
            // command waits end with the old address (their guards name
            // it), and the counters start over for the new address.
            entry.auth_id = auth_id.map(str::to_owned);
            entry.transport = transport;
            entry.first_seen = now;
            entry.last_activity = now;
            entry.requests = 1;
            entry.waits = Vec::new();
            let id = entry.id;
            inner.by_peer.insert(peer, entry);
            if let Some(slot) = inner.by_device.get_mut(&key) {
                *slot = peer;
            }
            inner.order.push_back((peer, id, now));
            tracing::debug!(%peer, %previous, tenant, device, transport = transport.as_str(), "client moved");
            if inner.order.len() > inner.by_peer.len().saturating_mul(2).saturating_add(16) {
                inner.compact_order();
            }
            return;
        }
        while inner.by_peer.len() >= self.capacity {
            if !inner.evict_one() {
                break;
            }
        }
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        inner.by_device.insert(key, peer);
        inner.by_peer.insert(
            peer,
            Entry {
                id,
                tenant_id: tenant.to_owned(),
                device_id: device.to_owned(),
                auth_id: auth_id.map(str::to_owned),
                transport,
                first_seen: now,
                last_activity: now,
                requests: 1,
                waits: Vec::new(),
            },
        );
        inner.order.push_back((peer, id, now));
        tracing::info!(%peer, tenant, device, auth_id, transport = transport.as_str(), "client seen");
        // Items of entries removed otherwise than by eviction stay queued
        // until skipped; keep them from piling up.
        if inner.order.len() > inner.by_peer.len().saturating_mul(2).saturating_add(16) {
            inner.compact_order();
        }
    }

    /// Registers an open command wait of the client at `peer` for
    /// `devices`, ending at `now + ttd` at the latest. `None` if the client
    /// is not in the table (the wait then cannot be kicked). Dropping the
    /// guard ends the registration.
    pub fn begin_wait(
        self: &Arc<Self>,
        peer: SocketAddr,
        devices: Vec<String>,
        now: Instant,
        ttd: Duration,
    ) -> Option<CommandWaitGuard> {
        let mut inner = self.lock();
        let wait_id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let entry = inner.by_peer.get_mut(&peer)?;
        let (kick, kicked) = oneshot::channel();
        entry.waits.push(Wait {
            id: wait_id,
            devices,
            since: now,
            until: now.checked_add(ttd).unwrap_or(now),
            kick,
        });
        Some(CommandWaitGuard {
            table: Arc::clone(self),
            peer,
            wait_id,
            kicked: Some(kicked),
        })
    }

    /// The client acting as `tenant`/`device`.
    pub fn find(&self, tenant: &str, device: &str) -> Option<ClientInfo> {
        let inner = self.lock();
        let peer = inner.peer_of(tenant, device)?;
        inner.by_peer.get(&peer).map(|e| e.info(peer))
    }

    /// The open command waits of the client acting as `tenant`/`device`;
    /// `None` if there is no such client.
    pub fn command_waits(&self, tenant: &str, device: &str) -> Option<Vec<CommandWaitInfo>> {
        let inner = self.lock();
        let peer = inner.peer_of(tenant, device)?;
        let entry = inner.by_peer.get(&peer)?;
        Some(
            entry
                .waits
                .iter()
                .map(|w| CommandWaitInfo {
                    devices: w.devices.clone(),
                    since: w.since,
                    until: w.until,
                })
                .collect(),
        )
    }

    /// The clients matching `query`, ordered by tenant and device, from
    /// the `offset`-th match on, at most `limit`.
    pub fn search(&self, query: &ClientQuery<'_>, offset: usize, limit: usize) -> ClientPage {
        let inner = self.lock();
        let mut matches: Vec<(&SocketAddr, &Entry)> = inner
            .by_peer
            .iter()
            .filter(|(_, e)| query.matches(e))
            .collect();
        matches.sort_by(|a, b| {
            (&a.1.tenant_id, &a.1.device_id, a.0).cmp(&(&b.1.tenant_id, &b.1.device_id, b.0))
        });
        ClientPage {
            total: matches.len(),
            clients: matches
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|(peer, e)| e.info(*peer))
                .collect(),
        }
    }

    /// Removes the client acting as `tenant`/`device` and ends its command
    /// waits (they are answered without a command). Returns what it was,
    /// so the caller can end its DTLS session; `None` if unknown.
    pub fn kick(&self, tenant: &str, device: &str) -> Option<ClientInfo> {
        let mut inner = self.lock();
        let peer = inner.peer_of(tenant, device)?;
        let entry = inner.remove_peer(peer)?;
        let info = entry.info(peer);
        for wait in entry.waits {
            // The waiter may be gone already; nothing to do then.
            let _ = wait.kick.send(());
        }
        Some(info)
    }

    fn end_wait(&self, peer: SocketAddr, wait_id: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.by_peer.get_mut(&peer) {
            entry.waits.retain(|w| w.id != wait_id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn peer_of(&self, tenant: &str, device: &str) -> Option<SocketAddr> {
        self.by_device
            .get(&(tenant.to_owned(), device.to_owned()))
            .copied()
    }

    fn remove_peer(&mut self, peer: SocketAddr) -> Option<Entry> {
        let entry = self.by_peer.remove(&peer)?;
        if let MapEntry::Occupied(o) = self
            .by_device
            .entry((entry.tenant_id.clone(), entry.device_id.clone()))
            && *o.get() == peer
        {
            o.remove();
        }
        Some(entry)
    }

    /// Drops queue items whose entry is gone or was replaced.
    fn compact_order(&mut self) {
        let by_peer = &self.by_peer;
        self.order
            .retain(|(peer, id, _)| by_peer.get(peer).is_some_and(|e| e.id == *id));
    }

    /// Evicts the entry idle the longest (second-chance queue); false if
    /// there is nothing to evict.
    fn evict_one(&mut self) -> bool {
        // Every live entry has one queue item, and an item is re-queued at
        // most once per pass, so this ends within twice the queue length.
        let mut budget = self.order.len().saturating_mul(2).saturating_add(1);
        while let Some((peer, id, queued)) = self.order.pop_front() {
            budget = budget.saturating_sub(1);
            let Some(entry) = self.by_peer.get(&peer) else {
                continue;
            };
            if entry.id != id {
                continue;
            }
            if entry.last_activity > queued && budget > 0 {
                let last = entry.last_activity;
                self.order.push_back((peer, id, last));
                continue;
            }
            if let Some(evicted) = self.remove_peer(peer) {
                tracing::debug!(%peer, tenant = %evicted.tenant_id, device = %evicted.device_id,
                                "client table full: longest idle client dropped from the table");
            }
            return true;
        }
        false
    }
}

/// An open command wait in the [`ClientTable`]; ends when dropped.
#[derive(Debug)]
pub struct CommandWaitGuard {
    table: Arc<ClientTable>,
    peer: SocketAddr,
    wait_id: u64,
    kicked: Option<oneshot::Receiver<()>>,
}

impl CommandWaitGuard {
    /// Completes when the client is kicked; never completes otherwise
    /// (also not when the entry is evicted: the wait then simply runs on).
    pub async fn kicked(&mut self) {
        match self.kicked.as_mut() {
            Some(receiver) => {
                if receiver.await.is_err() {
                    self.kicked = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for CommandWaitGuard {
    fn drop(&mut self) {
        self.table.end_wait(self.peer, self.wait_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn touch_records_and_updates() {
        let table = ClientTable::new(10);
        let t0 = Instant::now();
        table.touch(addr(1), ClientTransport::Dtls, "T", "d1", Some("a1"), t0);
        table.touch(
            addr(1),
            ClientTransport::Dtls,
            "T",
            "d1",
            Some("a1"),
            t0 + Duration::from_secs(3),
        );
        let c = table.find("T", "d1").unwrap();
        assert_eq!(c.requests, 2);
        assert_eq!(c.first_seen, t0);
        assert_eq!(c.last_activity, t0 + Duration::from_secs(3));
        assert_eq!(c.auth_id.as_deref(), Some("a1"));
        assert_eq!(c.peer, addr(1));
        assert!(table.find("T", "d2").is_none());
    }

    #[test]
    fn a_device_has_one_entry_and_a_peer_one_device() {
        let table = ClientTable::new(10);
        let now = Instant::now();
        table.touch(addr(1), ClientTransport::Dtls, "T", "d1", None, now);
        // d1 re-handshakes from a new port: the old entry goes.
        table.touch(addr(2), ClientTransport::Dtls, "T", "d1", None, now);
        assert_eq!(table.len(), 1);
        assert_eq!(table.find("T", "d1").unwrap().peer, addr(2));
        // The address now speaks for d2 (plain UDP): d1 is gone.
        table.touch(addr(2), ClientTransport::Udp, "T", "d2", None, now);
        assert_eq!(table.len(), 1);
        assert!(table.find("T", "d1").is_none());
        assert_eq!(
            table.find("T", "d2").unwrap().transport,
            ClientTransport::Udp
        );
    }

    #[test]
    fn a_moved_device_keeps_one_entry_for_its_new_address() {
        let table = Arc::new(ClientTable::new(2));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        table.touch(addr(1), ClientTransport::Dtls, "T", "d1", Some("a"), at(0));
        table.touch(addr(1), ClientTransport::Dtls, "T", "d1", Some("a"), at(1));
        let wait = table.begin_wait(addr(1), vec!["d1".into()], at(1), Duration::from_secs(60));
        assert!(wait.is_some());
        table.touch(addr(2), ClientTransport::Dtls, "T", "d1", Some("b"), at(2));
        assert_eq!(table.len(), 1);
        let c = table.find("T", "d1").unwrap();
        assert_eq!(c.peer, addr(2));
        assert_eq!(c.auth_id.as_deref(), Some("b"));
        assert_eq!((c.requests, c.first_seen, c.command_waits), (1, at(2), 0));
        // The old address's wait ends with it; its guard finds nothing.
        drop(wait);
        assert_eq!(table.command_waits("T", "d1"), Some(Vec::new()));
        // Back and forth many times: the order queue stays bounded and
        // eviction still picks the longest idle entry.
        for i in 0..100u16 {
            table.touch(
                addr(10 + i % 2),
                ClientTransport::Udp,
                "T",
                "d1",
                None,
                at(3),
            );
        }
        let held = table.len();
        assert!(table.lock().order.len() <= 2 * held + 16);
        table.touch(addr(50), ClientTransport::Udp, "T", "d2", None, at(4));
        table.touch(addr(51), ClientTransport::Udp, "T", "d3", None, at(5));
        assert_eq!(table.len(), 2);
        assert!(table.find("T", "d1").is_none());
        assert!(table.find("T", "d2").is_some() && table.find("T", "d3").is_some());
    }

    #[test]
    fn full_table_evicts_the_longest_idle() {
        let table = ClientTable::new(3);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        table.touch(addr(1), ClientTransport::Udp, "T", "a", None, at(0));
        table.touch(addr(2), ClientTransport::Udp, "T", "b", None, at(1));
        table.touch(addr(3), ClientTransport::Udp, "T", "c", None, at(2));
        // "a" is active again, so "b" is now the longest idle.
        table.touch(addr(1), ClientTransport::Udp, "T", "a", None, at(3));
        table.touch(addr(4), ClientTransport::Udp, "T", "d", None, at(4));
        assert_eq!(table.len(), 3);
        assert!(table.find("T", "b").is_none());
        for d in ["a", "c", "d"] {
            assert!(table.find("T", d).is_some(), "{d}");
        }
        // Many more: the size stays at the capacity.
        for i in 0..1000u16 {
            table.touch(
                addr(100 + i),
                ClientTransport::Udp,
                "T",
                &format!("x{i}"),
                None,
                at(10 + u64::from(i)),
            );
        }
        assert_eq!(table.len(), 3);
        assert!(table.find("T", "x999").is_some());
        // A device moving between addresses leaves no pile of queue items.
        for i in 0..1000u16 {
            table.touch(
                addr(5000 + i),
                ClientTransport::Dtls,
                "T",
                "x999",
                None,
                at(2000),
            );
        }
        let inner = table.lock();
        assert_eq!(inner.by_device.len(), 3);
        assert!(
            inner.order.len() <= 3 * 2 + 16,
            "queue grew: {}",
            inner.order.len()
        );
    }

    #[test]
    fn search_filters_orders_and_pages() {
        let table = ClientTable::new(100);
        let now = Instant::now();
        for (port, tenant, device, auth) in [
            (1, "acme", "pump-2", Some("p2")),
            (2, "acme", "pump-1", Some("p1")),
            (3, "other", "valve", None),
            (4, "acme", "gate", Some("gw")),
        ] {
            table.touch(addr(port), ClientTransport::Dtls, tenant, device, auth, now);
        }
        let all = table.search(&ClientQuery::default(), 0, 10);
        assert_eq!(all.total, 4);
        let names: Vec<_> = all.clients.iter().map(|c| c.device_id.as_str()).collect();
        assert_eq!(names, ["gate", "pump-1", "pump-2", "valve"]);
        let q = ClientQuery {
            device: Some("pump"),
            ..ClientQuery::default()
        };
        let page = table.search(&q, 1, 1);
        assert_eq!(page.total, 2);
        assert_eq!(page.clients.len(), 1);
        assert_eq!(page.clients[0].device_id, "pump-2");
        let q = ClientQuery {
            auth_id: Some("p"),
            tenant: Some("acm"),
            ..ClientQuery::default()
        };
        assert_eq!(table.search(&q, 0, 10).total, 2);
        let q = ClientQuery {
            any: Some("other"),
            ..ClientQuery::default()
        };
        assert_eq!(table.search(&q, 0, 10).clients[0].device_id, "valve");
        let q = ClientQuery {
            auth_id: Some(""),
            ..ClientQuery::default()
        };
        assert_eq!(table.search(&q, 0, 10).total, 3, "no auth-id never matches");
        assert!(
            table
                .search(&ClientQuery::default(), 10, 10)
                .clients
                .is_empty()
        );
    }

    #[tokio::test]
    async fn kick_ends_waits_and_removes_the_client() {
        let table = Arc::new(ClientTable::new(10));
        let now = Instant::now();
        table.touch(addr(1), ClientTransport::Dtls, "T", "gw", Some("gw"), now);
        let mut wait = table
            .begin_wait(
                addr(1),
                vec!["gw".into(), "d7".into()],
                now,
                Duration::from_secs(10),
            )
            .unwrap();
        let waits = table.command_waits("T", "gw").unwrap();
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].devices, ["gw", "d7"]);
        assert_eq!(waits[0].until, now + Duration::from_secs(10));
        assert_eq!(table.find("T", "gw").unwrap().command_waits, 1);

        let kicked = table.kick("T", "gw").unwrap();
        assert_eq!(kicked.peer, addr(1));
        tokio::time::timeout(Duration::from_secs(1), wait.kicked())
            .await
            .expect("wait not ended by the kick");
        assert!(table.find("T", "gw").is_none());
        assert!(table.kick("T", "gw").is_none());
        assert!(table.command_waits("T", "gw").is_none());
        drop(wait);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn finished_and_evicted_waits() {
        let table = Arc::new(ClientTable::new(1));
        let now = Instant::now();
        assert!(
            table
                .begin_wait(addr(1), vec![], now, Duration::from_secs(1))
                .is_none(),
            "unknown peer"
        );
        table.touch(addr(1), ClientTransport::Udp, "T", "a", None, now);
        let wait = table
            .begin_wait(addr(1), vec!["a".into()], now, Duration::from_secs(1))
            .unwrap();
        drop(wait);
        assert_eq!(table.command_waits("T", "a").unwrap().len(), 0);
        let mut wait = table
            .begin_wait(addr(1), vec!["a".into()], now, Duration::from_secs(1))
            .unwrap();
        // Evicted by a newcomer: the wait is not ended.
        table.touch(addr(2), ClientTransport::Udp, "T", "b", None, now);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.kicked())
                .await
                .is_err()
        );
    }
}
