//! A deterministic two-endpoint simulation: virtual time and a link that
//! drops, duplicates and reorders datagrams with a seeded generator.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Message, MessageType};
use coap_endpoint::{Endpoint, EndpointConfig, Event, IncomingRequest, Peer};

/// Direction of a datagram on the simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// Link behaviour; probabilities in [0, 1].
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    pub latency: Duration,
    pub drop_to_server: f64,
    pub drop_to_client: f64,
    pub duplicate: f64,
    /// Probability of an extra random delay of up to 3 s (reordering).
    pub reorder: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_millis(10),
            drop_to_server: 0.0,
            drop_to_client: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

struct InTransit {
    at: Instant,
    seq: u64,
    dir: Dir,
    bytes: bytes::Bytes,
}

/// One entry of the wire log: every datagram an endpoint emitted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Duration,
    pub dir: Dir,
    pub message: Message,
}

type AutoResponder = Box<dyn FnMut(&IncomingRequest) -> Option<Message>>;

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub client: Endpoint,
    pub server: Endpoint,
    /// How the server sees the client.
    pub client_peer: Peer,
    /// How the client sees the server.
    pub server_peer: Peer,
    pub link: LinkConfig,
    rng: u64,
    seq: u64,
    in_transit: Vec<InTransit>,
    pub wire: Vec<Sent>,
    /// Requests the server application has not answered (no auto responder,
    /// or it returned None).
    pub server_requests: Vec<IncomingRequest>,
    /// Other server events (observe cancellations, client-side events).
    pub server_events: Vec<Event>,
    pub client_events: Vec<Event>,
    /// Requests the client application received (the client is an
    /// endpoint too).
    pub client_requests: Vec<IncomingRequest>,
    pub auto: Option<AutoResponder>,
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

pub fn config(seed: u64) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(seed);
    config
}

impl Sim {
    pub fn new(client: EndpointConfig, server: EndpointConfig, link: LinkConfig, seed: u64) -> Sim {
        let start = Instant::now();
        Sim {
            start,
            now: start,
            client: Endpoint::new(client).unwrap(),
            server: Endpoint::new(server).unwrap(),
            client_peer: Peer::new(addr(40000)),
            server_peer: Peer::new(addr(5683)),
            link,
            rng: seed ^ 0x1234_5678_9abc_def0,
            seq: 0,
            in_transit: Vec::new(),
            wire: Vec::new(),
            server_requests: Vec::new(),
            server_events: Vec::new(),
            client_events: Vec::new(),
            client_requests: Vec::new(),
            auto: None,
        }
    }

    pub fn with_seed(seed: u64, link: LinkConfig) -> Sim {
        Sim::new(config(seed), config(seed + 1), link, seed)
    }

    fn random(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn send(&mut self, dir: Dir, bytes: bytes::Bytes) {
        if let Ok(message) = Message::from_bytes(bytes.clone()) {
            self.wire.push(Sent {
                at: self.elapsed(),
                dir,
                message,
            });
        }
        let drop = match dir {
            Dir::ToServer => self.link.drop_to_server,
            Dir::ToClient => self.link.drop_to_client,
        };
        if self.random() < drop {
            return;
        }
        let copies = if self.random() < self.link.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.link.latency;
            if self.random() < self.link.reorder {
                delay += Duration::from_secs_f64(self.random() * 3.0);
            }
            self.seq += 1;
            self.in_transit.push(InTransit {
                at: self.now + delay,
                seq: self.seq,
                dir,
                bytes: bytes.clone(),
            });
        }
    }

    /// Moves every transmit onto the link and every event to its list,
    /// letting the auto responder answer requests.
    pub fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(t) = self.client.poll_transmit() {
                assert_eq!(t.peer, self.server_peer);
                self.send(Dir::ToServer, t.bytes);
                progress = true;
            }
            while let Some(t) = self.server.poll_transmit() {
                assert_eq!(t.peer.addr, self.client_peer.addr);
                self.send(Dir::ToClient, t.bytes);
                progress = true;
            }
            while let Some(event) = self.server.poll_event() {
                progress = true;
                match event {
                    Event::Request(request) => {
                        let answer = self.auto.as_mut().and_then(|auto| auto(&request));
                        match answer {
                            Some(response) => {
                                self.server.respond(self.now, request.id, response).unwrap();
                            }
                            None => self.server_requests.push(request),
                        }
                    }
                    other => self.server_events.push(other),
                }
            }
            while let Some(event) = self.client.poll_event() {
                progress = true;
                match event {
                    Event::Request(request) => self.client_requests.push(request),
                    other => self.client_events.push(other),
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn next_time(&mut self) -> Option<Instant> {
        let link = self.in_transit.iter().map(|t| t.at).min();
        [link, self.client.poll_timeout(), self.server.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Advances to the next thing that happens, if it is not after `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.pump();
        let Some(next) = self.next_time() else {
            return false;
        };
        if next > limit {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        let mut due: Vec<InTransit> = Vec::new();
        let mut i = 0;
        while i < self.in_transit.len() {
            if self.in_transit[i].at <= now {
                due.push(self.in_transit.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|t| (t.at, t.seq));
        for t in due {
            match t.dir {
                Dir::ToServer => {
                    self.server
                        .handle_datagram(now, self.client_peer.clone(), &t.bytes)
                }
                Dir::ToClient => {
                    self.client
                        .handle_datagram(now, self.server_peer.clone(), &t.bytes)
                }
            }
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
        self.pump();
        true
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.step(end) {}
        self.now = self.now.max(end);
        self.pump();
    }

    /// Runs until `done` holds (checked after each step) or `limit` passes.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(end) {
                return done(self);
            }
        }
    }

    /// Wire log entries in one direction.
    pub fn sent(&self, dir: Dir) -> Vec<Sent> {
        self.wire.iter().filter(|s| s.dir == dir).cloned().collect()
    }

    /// Datagrams of `mtype` in direction `dir`.
    pub fn sent_of(&self, dir: Dir, mtype: MessageType) -> Vec<Sent> {
        self.wire
            .iter()
            .filter(|s| s.dir == dir && s.message.mtype == mtype)
            .cloned()
            .collect()
    }
}

/// One endpoint driven by hand-written datagrams: a scripted peer.
pub struct Script {
    pub start: Instant,
    pub now: Instant,
    pub ep: Endpoint,
    pub peer: Peer,
}

impl Script {
    pub fn new(config: EndpointConfig) -> Script {
        let start = Instant::now();
        Script {
            start,
            now: start,
            ep: Endpoint::new(config).unwrap(),
            peer: Peer::new(addr(40000)),
        }
    }

    /// Feeds `message` from the scripted peer; returns what the endpoint sent.
    pub fn send(&mut self, message: &Message) -> Vec<Message> {
        let bytes = message.to_bytes().unwrap();
        self.raw(&bytes)
    }

    /// Feeds raw bytes; returns what the endpoint sent.
    pub fn raw(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.ep.handle_datagram(self.now, self.peer.clone(), bytes);
        self.transmits()
    }

    /// Everything the endpoint wants to send now (to any peer).
    pub fn transmits(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(t) = self.ep.poll_transmit() {
            out.push(Message::from_bytes(t.bytes).unwrap());
        }
        out
    }

    /// Transmits with their destination.
    pub fn transmits_to(&mut self) -> Vec<(Peer, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.ep.poll_transmit() {
            out.push((t.peer, Message::from_bytes(t.bytes).unwrap()));
        }
        out
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ep.poll_event()).collect()
    }

    /// The single pending request event.
    pub fn request(&mut self) -> IncomingRequest {
        let mut requests: Vec<IncomingRequest> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(requests.len(), 1, "expected exactly one request");
        requests.pop().unwrap()
    }

    /// Advances virtual time by `d`, firing timers; returns (time since
    /// start, message) for everything sent meanwhile.
    pub fn advance(&mut self, d: Duration) -> Vec<(Duration, Message)> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(at) = self.ep.poll_timeout() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
            for m in self.transmits() {
                out.push((self.now - self.start, m));
            }
        }
        self.now = end;
        self.ep.handle_timeout(self.now);
        for m in self.transmits() {
            out.push((self.now - self.start, m));
        }
        out
    }
}
