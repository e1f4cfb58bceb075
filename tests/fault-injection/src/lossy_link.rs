//! A UDP proxy that plays a bad network between CoAP clients and a gateway:
//! it drops, duplicates and delays datagrams in both directions from one
//! seeded RNG; independent random delays reorder them. Each client address
//! gets its own upstream socket, so the gateway sees one peer per client —
//! and [`LossyLink::rebind_all`] gives every client a new upstream port, the
//! way a NAT rebinding does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Fault rates, applied per datagram and per direction.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a (not dropped) datagram is sent twice.
    pub duplicate: f64,
    /// Each copy is delayed uniformly in `0..=max_delay` (reorders them).
    pub max_delay: Duration,
}

/// Counters of one link.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Datagrams received from either side.
    pub seen: AtomicU64,
    /// Dropped.
    pub dropped: AtomicU64,
    /// Extra copies sent.
    pub duplicated: AtomicU64,
    /// Copies sent later than a datagram that arrived after them.
    pub delayed: AtomicU64,
}

impl LinkStats {
    /// `seen/dropped/duplicated` as one line.
    pub fn summary(&self) -> String {
        format!(
            "link seen={} dropped={} duplicated={} delayed={}",
            self.seen.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.duplicated.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed)
        )
    }
}

struct Upstream {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

struct Shared {
    front: Arc<UdpSocket>,
    gateway: SocketAddr,
    config: LinkConfig,
    rng: Mutex<StdRng>,
    upstreams: Mutex<HashMap<SocketAddr, Upstream>>,
    stats: Arc<LinkStats>,
}

/// The proxy; clients send to [`LossyLink::addr`]. Stops on drop.
pub struct LossyLink {
    shared: Arc<Shared>,
    front_task: JoinHandle<()>,
    /// Counters.
    pub stats: Arc<LinkStats>,
}

impl LossyLink {
    /// A proxy on a free loopback port in front of `gateway`.
    pub async fn start(gateway: SocketAddr, config: LinkConfig, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let stats = Arc::new(LinkStats::default());
        let shared = Arc::new(Shared {
            front,
            gateway,
            config,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            upstreams: Mutex::new(HashMap::new()),
            stats: stats.clone(),
        });
        let front_task = tokio::spawn(front_loop(shared.clone()));
        Self {
            shared,
            front_task,
            stats,
        }
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.shared.front.local_addr().unwrap()
    }

    /// Forgets every client's upstream socket: the next datagram of each
    /// client leaves from a new source port (a NAT rebinding). Datagrams the
    /// gateway sends to an old port are lost, as behind a real NAT.
    pub fn rebind_all(&self) {
        let old: Vec<Upstream> = self
            .shared
            .upstreams
            .lock()
            .unwrap()
            .drain()
            .map(|(_, u)| u)
            .collect();
        for u in old {
            u.reader.abort();
        }
    }

    /// The gateway-facing address currently used for `client`.
    pub fn upstream_of(&self, client: SocketAddr) -> Option<SocketAddr> {
        let map = self.shared.upstreams.lock().unwrap();
        map.get(&client).and_then(|u| u.socket.local_addr().ok())
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.front_task.abort();
        self.rebind_all();
    }
}

/// What to do with one datagram: the delays of its copies (none = drop).
fn fate(shared: &Shared) -> Vec<Duration> {
    let mut rng = shared.rng.lock().unwrap();
    let c = shared.config;
    shared.stats.seen.fetch_add(1, Ordering::Relaxed);
    if rng.random_bool(c.loss) {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return Vec::new();
    }
    let copies = if rng.random_bool(c.duplicate) {
        shared.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    let max = c.max_delay.as_micros() as u64;
    (0..copies)
        .map(|_| {
            Duration::from_micros(if max == 0 {
                0
            } else {
                rng.random_range(0..=max)
            })
        })
        .collect()
}

fn send_later(shared: &Arc<Shared>, socket: Arc<UdpSocket>, to: SocketAddr, bytes: Vec<u8>) {
    for delay in fate(shared) {
        let socket = socket.clone();
        let bytes = bytes.clone();
        if delay.is_zero() {
            let _ = socket.try_send_to(&bytes, to);
            continue;
        }
        shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&bytes, to).await;
        });
    }
}

async fn front_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = shared.front.recv_from(&mut buf).await else {
            continue;
        };
        let upstream = upstream_for(&shared, client).await;
        send_later(&shared, upstream, shared.gateway, buf[..n].to_vec());
    }
}

async fn upstream_for(shared: &Arc<Shared>, client: SocketAddr) -> Arc<UdpSocket> {
    if let Some(u) = shared.upstreams.lock().unwrap().get(&client) {
        return u.socket.clone();
    }
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let reader = {
        let (shared, socket) = (shared.clone(), socket.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, _)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                send_later(&shared, shared.front.clone(), client, buf[..n].to_vec());
            }
        })
    };
    shared.upstreams.lock().unwrap().insert(
        client,
        Upstream {
            socket: socket.clone(),
            reader,
        },
    );
    socket
}
