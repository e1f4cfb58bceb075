//! In-memory harness: a `DtlsServer` and `ClientSession`s exchanging
//! datagrams through queues the test controls (drop, reorder, inspect).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_dtls::{
    ClientConfig, ClientEvent, ClientSession, DtlsConnector, DtlsServer, Retransmission,
    ServerConfig, ServerEvent,
};

pub const IDENTITY: &[u8] = b"sensor1@DEFAULT_TENANT";
pub const KEY: &[u8] = b"hono-secret";

pub fn store() -> Arc<HashMap<Vec<u8>, Vec<u8>>> {
    let mut keys = HashMap::new();
    keys.insert(IDENTITY.to_vec(), KEY.to_vec());
    keys.insert(b"other".to_vec(), b"other-key".to_vec());
    Arc::new(keys)
}

/// Short timers so lost-flight tests run in milliseconds (OpenSSL's
/// retransmission timer reads the wall clock).
pub fn fast_retransmission() -> Retransmission {
    Retransmission {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(80),
        max_retransmissions: 4,
    }
}

pub fn server_config() -> ServerConfig {
    let mut config = ServerConfig::new(store());
    config.retransmission = fast_retransmission();
    config.handshake_timeout = Duration::from_secs(2);
    config
}

pub fn connector(identity: &[u8], key: &[u8]) -> DtlsConnector {
    let mut config = ClientConfig::new(identity, key);
    config.retransmission = fast_retransmission();
    config.handshake_timeout = Duration::from_secs(2);
    DtlsConnector::new(config).unwrap()
}

pub fn addr(n: u32) -> SocketAddr {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
    SocketAddr::from((ip, 40_000 + (n % 20_000) as u16))
}

/// One client at `addr` talking to the shared server.
pub struct Peer {
    pub addr: SocketAddr,
    pub session: ClientSession,
    /// Datagrams from the server not yet delivered.
    pub inbox: Vec<Bytes>,
    pub events: Vec<ClientEvent>,
}

pub struct Harness {
    pub server: DtlsServer,
    /// Datagrams from clients not yet delivered to the server.
    pub to_server: Vec<(SocketAddr, Bytes)>,
    pub server_events: Vec<ServerEvent>,
}

impl Harness {
    pub fn new(config: ServerConfig) -> Self {
        Harness {
            server: DtlsServer::new(config, Instant::now()).unwrap(),
            to_server: Vec::new(),
            server_events: Vec::new(),
        }
    }

    pub fn peer(&mut self, addr: SocketAddr, connector: &DtlsConnector) -> Peer {
        let mut peer = Peer {
            addr,
            session: connector.connect(Instant::now()).unwrap(),
            inbox: Vec::new(),
            events: Vec::new(),
        };
        self.collect_client(&mut peer);
        peer
    }

    pub fn collect_client(&mut self, peer: &mut Peer) {
        while let Some(d) = peer.session.poll_transmit() {
            self.to_server.push((peer.addr, d));
        }
        while let Some(e) = peer.session.poll_event() {
            peer.events.push(e);
        }
    }

    /// Moves server output into the peers' inboxes (unknown addresses: lost).
    pub fn collect_server(&mut self, peers: &mut [&mut Peer]) {
        while let Some(t) = self.server.poll_transmit() {
            if let Some(p) = peers.iter_mut().find(|p| p.addr == t.peer) {
                p.inbox.push(t.bytes);
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// Delivers everything queued both ways, filtered by `keep(direction
    /// to_server, index)`, until quiet.
    pub fn pump_with(
        &mut self,
        peers: &mut [&mut Peer],
        mut keep: impl FnMut(bool, &[u8]) -> bool,
    ) {
        for _ in 0..100 {
            let mut moved = false;
            for (from, d) in std::mem::take(&mut self.to_server) {
                moved = true;
                if keep(true, &d) {
                    self.server.handle_datagram(Instant::now(), from, &d);
                }
            }
            self.collect_server(peers);
            for p in peers.iter_mut() {
                for d in std::mem::take(&mut p.inbox) {
                    moved = true;
                    if keep(false, &d) {
                        p.session.handle_datagram(Instant::now(), &d);
                    }
                }
            }
            for p in peers.iter_mut() {
                self.collect_client(p);
            }
            if !moved {
                return;
            }
        }
        panic!("harness did not settle");
    }

    pub fn pump(&mut self, peers: &mut [&mut Peer]) {
        self.pump_with(peers, |_, _| true);
    }

    /// Fires due timers on both sides (real clock: OpenSSL's timer is
    /// wall-clock).
    pub fn fire_timers(&mut self, peers: &mut [&mut Peer]) {
        let now = Instant::now();
        self.server.handle_timeout(now);
        for p in peers.iter_mut() {
            p.session.handle_timeout(now);
            self.collect_client(p);
        }
        self.collect_server(peers);
    }

    /// Runs timers and delivery until `done` or `limit` passes.
    pub fn run_until(
        &mut self,
        peers: &mut [&mut Peer],
        limit: Duration,
        mut keep: impl FnMut(bool, &[u8]) -> bool,
        mut done: impl FnMut(&Harness, &[&mut Peer]) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.pump_with(peers, &mut keep);
            if done(self, peers) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            self.fire_timers(peers);
        }
        false
    }
}

pub fn data_events(events: &[ServerEvent]) -> Vec<(SocketAddr, Bytes, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Data {
                peer,
                identity,
                bytes,
            } => Some((*peer, identity.clone(), bytes.clone())),
            _ => None,
        })
        .collect()
}

pub fn client_data(events: &[ClientEvent]) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Data(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

pub fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
