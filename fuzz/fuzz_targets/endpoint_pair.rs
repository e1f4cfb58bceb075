//! A client `Endpoint` and a server `Endpoint` over a link whose losses,
//! duplications, reorderings and delays come from the fuzz input, in
//! virtual time with a punctual driver for both sides.
//!
//! The client sends CON and NON requests (small and Block1 bodies, GET with
//! Observe); the server application answers at once, later, after changing
//! the ACK timeout, or never, with bodies large enough for Block2, and
//! sends notifications. Each request names itself in its Uri-Query
//! (`n=<number>&l=<body length>`), and every body is a pattern derived
//! from that number, so cross-talk and corruption are visible.
//!
//! Properties:
//! - nothing panics; every datagram either side sends parses;
//! - every client request completes exactly once: one final `Response` or
//!   `RequestFailed`, nothing after it, and after the link heals and all
//!   timers run out, every request has completed (or is observing);
//! - a response reaches the request that asked: its payload is the pattern
//!   of that request's number, whole (Block2 reassembled) for 2.05;
//! - the server application gets whole, correct request bodies (Block1
//!   reassembled under loss, duplication and reordering);
//! - relations end only by an event or an application call.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, Message, MessageRef, MessageType};
use coap_endpoint::{
    AckTimeout, ClientRequestId, Endpoint, EndpointConfig, Event, Peer, RelationId, RequestId,
};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 400;

#[derive(Arbitrary, Debug)]
struct Input {
    client_seed: u64,
    server_seed: u64,
    block_szx: u8,
    ack_policy: u8,
    /// How the server application treats each new request, in turn.
    answers: Vec<Answer>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Answer {
    Now,
    Later,
    AckTimeoutThenLater(i16),
    Never,
    DeclineObserve,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    DeliverAll,
    Advance(u16),
    Send {
        kind: ReqKind,
        confirmable: bool,
        body: u16,
    },
    Answer(u8),
    Notify {
        pick: u8,
        confirmable: bool,
        len: u16,
        end: bool,
    },
    Cancel(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ReqKind {
    Get,
    Post,
    Put,
    Observe,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Client,
    Server,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The body of request or response number `n`, `len` bytes long, starting
/// with `n=<n>;` so that a mix-up shows.
fn pattern(n: u32, len: usize) -> Vec<u8> {
    let mut body = format!("n={n};").into_bytes();
    let mut i = 0u32;
    while body.len() < len {
        body.push(b'a' + ((n + i) % 26) as u8);
        i += 1;
    }
    body.truncate(len.max(format!("n={n};").len()));
    body
}

/// Response body length for request number `n` (some above 1024: Block2).
fn response_len(n: u32) -> usize {
    (n as usize * 397) % 2600
}

struct ClientTrack {
    n: u32,
    observe: bool,
    observing: bool,
    done: bool,
}

struct Pair {
    client: Endpoint,
    server: Endpoint,
    client_peer: Peer,
    server_peer: Peer,
    now: Instant,
    link: VecDeque<(Side, Bytes)>,
    answers: Vec<Answer>,
    answer_turn: usize,
    next_n: u32,
    requests: HashMap<ClientRequestId, ClientTrack>,
    order: Vec<ClientRequestId>,
    /// Server requests the application still has to answer: id, number, observe.
    deferred: Vec<(RequestId, u32, bool)>,
    relations: Vec<(RelationId, u32)>,
}

fn config(seed: u64, szx: u8, ack_policy: u8) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = Some(seed);
    c.max_block_size = 16 << (szx % 7);
    c.max_body_size = 8192;
    c.default_ack_timeout = match ack_policy % 3 {
        0 => AckTimeout::Never,
        1 => AckTimeout::Immediately,
        _ => AckTimeout::After(Duration::from_secs(1)),
    };
    c
}

impl Pair {
    fn new(input: &Input) -> Pair {
        let client = Endpoint::new(config(input.client_seed, input.block_szx, 1)).expect("config");
        let server = Endpoint::new(config(
            input.server_seed,
            input.block_szx / 7,
            input.ack_policy,
        ))
        .expect("config");
        Pair {
            client,
            server,
            client_peer: Peer::new("198.51.100.1:40000".parse().unwrap()),
            server_peer: Peer::new("198.51.100.2:5683".parse().unwrap()),
            now: base(),
            link: VecDeque::new(),
            answers: if input.answers.is_empty() {
                vec![Answer::Now]
            } else {
                input.answers.clone()
            },
            answer_turn: 0,
            next_n: 1,
            requests: HashMap::new(),
            order: Vec::new(),
            deferred: Vec::new(),
            relations: Vec::new(),
        }
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.client.poll_transmit() {
                assert_eq!(t.peer, self.server_peer, "client sent elsewhere");
                MessageRef::parse(&t.bytes).expect("client sent a malformed datagram");
                if self.link.len() < 64 {
                    self.link.push_back((Side::Server, t.bytes));
                }
                progressed = true;
            }
            while let Some(t) = self.server.poll_transmit() {
                assert_eq!(t.peer, self.client_peer, "server sent elsewhere");
                MessageRef::parse(&t.bytes).expect("server sent a malformed datagram");
                if self.link.len() < 64 {
                    self.link.push_back((Side::Client, t.bytes));
                }
                progressed = true;
            }
            while let Some(e) = self.client.poll_event() {
                self.client_event(e);
                progressed = true;
            }
            while let Some(e) = self.server.poll_event() {
                self.server_event(e);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        for (relation, _) in &self.relations {
            assert!(
                self.server.relation_peer(*relation).is_some(),
                "{relation} vanished"
            );
        }
    }

    fn client_event(&mut self, event: Event) {
        match event {
            Event::Response {
                request,
                peer,
                response,
            } => {
                assert_eq!(peer, self.server_peer);
                let t = self
                    .requests
                    .get_mut(&request)
                    .expect("response for an unknown request");
                assert!(!t.done, "response after the final event of {request}");
                let keep = t.observe && response.code.class() == 2 && response.observe().is_some();
                if response.code == Code::CONTENT || response.code == Code::CHANGED {
                    let prefix = format!("n={};", t.n);
                    assert!(
                        response.payload.starts_with(prefix.as_bytes()),
                        "request n={} got {:?}",
                        t.n,
                        String::from_utf8_lossy(
                            &response.payload[..response.payload.len().min(40)]
                        )
                    );
                    if !t.observing && !keep && response.code == Code::CONTENT {
                        assert_eq!(
                            &response.payload[..],
                            &pattern(t.n, response_len(t.n))[..],
                            "body of n={} corrupted",
                            t.n
                        );
                    }
                }
                t.done = !keep;
                t.observing |= keep;
            }
            Event::RequestFailed { request, .. } => {
                let t = self
                    .requests
                    .get_mut(&request)
                    .expect("failure of an unknown request");
                assert!(!t.done, "failure after the final event of {request}");
                t.done = true;
            }
            other => panic!("unexpected client event {other:?}"),
        }
    }

    fn server_event(&mut self, event: Event) {
        match event {
            Event::Request(req) => {
                assert_eq!(req.peer, self.client_peer);
                let n: u32 = req
                    .message
                    .query_param("n")
                    .and_then(|p| p.value_str())
                    .and_then(|v| v.parse().ok())
                    .expect("request names itself");
                let len: usize = req
                    .message
                    .query_param("l")
                    .and_then(|p| p.value_str())
                    .and_then(|v| v.parse().ok())
                    .expect("request states its length");
                if req.message.code != Code::GET {
                    assert_eq!(
                        &req.message.payload[..],
                        &pattern(n, len)[..],
                        "request body of n={n} corrupted"
                    );
                }
                let answer = self.answers[self.answer_turn % self.answers.len()];
                self.answer_turn += 1;
                match answer {
                    Answer::Now => self.answer(req.id, n, req.observe_registration),
                    Answer::DeclineObserve => self.answer(req.id, n, false),
                    Answer::Later => self.deferred.push((req.id, n, req.observe_registration)),
                    Answer::AckTimeoutThenLater(ms) => {
                        self.server
                            .set_ack_timeout(
                                self.now,
                                req.id,
                                AckTimeout::from_millis(i64::from(ms)),
                            )
                            .expect("pending");
                        self.deferred.push((req.id, n, req.observe_registration));
                    }
                    Answer::Never => {}
                }
            }
            Event::ObserveCancelled { relation, peer, .. } => {
                assert_eq!(peer, self.client_peer);
                let before = self.relations.len();
                self.relations.retain(|(r, _)| *r != relation);
                assert_eq!(
                    before,
                    self.relations.len() + 1,
                    "cancel event for unknown {relation}"
                );
            }
            other => panic!("unexpected server event {other:?}"),
        }
    }

    fn answer(&mut self, id: RequestId, n: u32, observe: bool) {
        let mut response = Message::new(MessageType::Ack, Code::CONTENT, 0)
            .with_payload(pattern(n, response_len(n)));
        if observe {
            response = response.with_observe(0);
        }
        match self.server.respond(self.now, id, response) {
            Ok(Some(relation)) => {
                if !self.relations.iter().any(|(r, _)| *r == relation) {
                    self.relations.push((relation, n));
                }
            }
            Ok(None) => {}
            Err(e) => panic!("respond failed: {e}"),
        }
    }

    /// Advance to `target`, handling both sides' deadlines on time.
    fn advance(&mut self, target: Instant) {
        for _ in 0..1000 {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = self.now.max(target);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.pump();
    }

    fn deliver(&mut self, index: usize) {
        let Some((side, bytes)) = self.link.remove(index) else {
            return;
        };
        match side {
            Side::Server => self
                .server
                .handle_datagram(self.now, self.client_peer.clone(), &bytes),
            Side::Client => self
                .client
                .handle_datagram(self.now, self.server_peer.clone(), &bytes),
        }
        self.pump();
    }

    fn step(&mut self, op: &Op) {
        let pick = |i: u8, len: usize| usize::from(i) % len.max(1);
        match op {
            Op::Deliver(i) => self.deliver(pick(*i, self.link.len())),
            Op::Drop(i) => {
                let i = pick(*i, self.link.len());
                self.link.remove(i);
            }
            Op::Duplicate(i) => {
                let i = pick(*i, self.link.len());
                if let Some(d) = self.link.get(i).cloned()
                    && self.link.len() < 64
                {
                    self.link.push_back(d);
                }
            }
            Op::DeliverAll => {
                for _ in 0..64 {
                    if self.link.is_empty() {
                        break;
                    }
                    self.deliver(0);
                }
            }
            Op::Advance(ms) => {
                let target = self.now + Duration::from_millis(u64::from(*ms) * 4);
                self.advance(target);
            }
            Op::Send {
                kind,
                confirmable,
                body,
            } => {
                if self.requests.values().filter(|t| !t.done).count() >= 16 {
                    return;
                }
                let n = self.next_n;
                self.next_n += 1;
                let (code, observe, len) = match kind {
                    ReqKind::Get => (Code::GET, false, 0),
                    ReqKind::Observe => (Code::GET, true, 0),
                    ReqKind::Post => (Code::POST, false, usize::from(*body) % 3000),
                    ReqKind::Put => (Code::PUT, false, usize::from(*body) % 3000),
                };
                let mut req = Message::new(MessageType::Con, code, 0)
                    .with_uri_path("r")
                    .with_uri_query(&format!("n={n}"))
                    .with_uri_query(&format!("l={len}"));
                if observe {
                    req = req.with_observe(0);
                }
                if code != Code::GET {
                    req = req.with_payload(pattern(n, len));
                }
                let id =
                    self.client
                        .send_request(self.now, self.server_peer.clone(), req, *confirmable);
                if let Ok(id) = id {
                    self.requests.insert(
                        id,
                        ClientTrack {
                            n,
                            observe,
                            observing: false,
                            done: false,
                        },
                    );
                    self.order.push(id);
                }
                self.pump();
            }
            Op::Answer(i) => {
                if self.deferred.is_empty() {
                    return;
                }
                let (id, n, observe) = self.deferred.remove(pick(*i, self.deferred.len()));
                self.answer(id, n, observe);
                self.pump();
            }
            Op::Notify {
                pick: i,
                confirmable,
                len,
                end,
            } => {
                if self.relations.is_empty() {
                    return;
                }
                let (relation, n) = self.relations[pick(*i, self.relations.len())];
                let code = if *end { Code::NOT_FOUND } else { Code::CONTENT };
                let body = pattern(n, usize::from(*len) % 2000);
                let msg = Message::new(MessageType::Non, code, 0).with_payload(body);
                self.server
                    .notify(self.now, relation, msg, *confirmable)
                    .expect("live relation");
                if *end {
                    self.relations.retain(|(r, _)| *r != relation);
                }
                self.pump();
            }
            Op::Cancel(i) => {
                if self.order.is_empty() {
                    return;
                }
                let id = self.order[pick(*i, self.order.len())];
                let t = self.requests.get_mut(&id).expect("tracked");
                assert_eq!(
                    self.client.cancel_request(id),
                    !t.done,
                    "cancel_request disagrees"
                );
                t.done = true;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut pair = Pair::new(&input);
    for op in input.ops.iter().take(MAX_OPS) {
        pair.step(op);
    }
    // Heal the link and let every timer run out.
    for _ in 0..5000 {
        while !pair.link.is_empty() {
            pair.deliver(0);
        }
        let next = [pair.client.poll_timeout(), pair.server.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) => pair.advance(at),
            None => break,
        }
    }
    assert!(pair.link.is_empty(), "link never drained");
    for (id, t) in &pair.requests {
        assert!(t.done || t.observing, "{id} (n={}) never completed", t.n);
    }
});
