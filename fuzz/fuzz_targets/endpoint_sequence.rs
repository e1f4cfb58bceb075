//! Drives one `coap_endpoint::Endpoint` (server and client side) through an
//! arbitrary sequence of operations in virtual time: datagrams from four
//! peers (raw bytes, or structured CoAP built with coap-codec — requests,
//! Block1/Block2, Observe, answers to what the endpoint sent), clock
//! advances with or without a punctual driver, application answers (now,
//! later, with a changed ACK timeout), notifications, outgoing requests,
//! rebinds and cancellations.
//!
//! After every step all transmits and events are drained and checked:
//! - nothing panics;
//! - every transmit parses with the endpoint's codec settings, goes to a
//!   known peer, carries at most `max_block_size` payload bytes; an ACK or
//!   RST only ever names a message id that peer sent; one CON message id is
//!   sent at most 1 + MAX_RETRANSMIT times;
//! - the caps hold: dedup entries, observe relations (total and per peer),
//!   pending requests (total and per peer);
//! - the endpoint and the application agree: `pending_requests()` equals the
//!   requests handed out and not answered; `respond` on an answered id is
//!   `UnknownRequest`; a relation ends only by an event or an application
//!   call (`relation_peer` is `Some` for every other one); a client request
//!   gets no event after its final one, and `cancel_request` is true exactly
//!   for unfinished requests; no two notifications (different message ids)
//!   of one relation carry the same Observe value;
//! - request events carry no Block1/Block2/Size1 options;
//! - right after `handle_timeout(now)`, `poll_timeout()` is `None` or later
//!   than `now` (a driver never spins);
//! - a confirmable message with a message id the peer never used before is
//!   answered (ACK/RST) or handed to the application;
//! - at the end, with every timer run out: no dedup entry is left, every
//!   client request has completed (or observes), and the endpoint is
//!   quiescent exactly when no request waits for the application.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_endpoint::coap_codec::{
    Block, Code, CodecSettings, Message, MessageRef, MessageType, OptionNumber, peek_header,
};
use coap_endpoint::{
    AckTimeout, ClientRequestId, Endpoint, EndpointConfig, Event, NotifyError, Peer, RelationId,
    RequestId, RespondError,
};
use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 6] = ["", "a", "ps/t", "obs", "big", "a/b/c"];
const MAX_OPS: usize = 256;

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    block_szx: u8,
    max_retransmit: u8,
    con_every: u8,
    ack_policy: u8,
    extended_tokens: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Raw {
        peer: u8,
        bytes: Vec<u8>,
    },
    Msg(PeerMsg),
    Reply(Reply),
    Advance {
        millis: u16,
        punctual: bool,
    },
    Sleep {
        secs: u8,
        punctual: bool,
    },
    Timeout,
    Respond {
        pick: u8,
        msg: AppMsg,
    },
    SetAckTimeout {
        pick: u8,
        millis: i16,
    },
    Notify {
        pick: u8,
        msg: AppMsg,
        confirmable: bool,
    },
    Send {
        peer: u8,
        req: AppReq,
        confirmable: bool,
    },
    Rebind {
        from: u8,
        to: u8,
    },
    CancelRequest {
        pick: u8,
    },
    CancelObserve {
        pick: u8,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CodeSpec {
    Get,
    Post,
    Put,
    Delete,
    Fetch,
    Content,
    Changed,
    Continue,
    NotFound,
    Empty,
    Raw(u8),
}

impl CodeSpec {
    fn code(self) -> Code {
        match self {
            CodeSpec::Get => Code::GET,
            CodeSpec::Post => Code::POST,
            CodeSpec::Put => Code::PUT,
            CodeSpec::Delete => Code::DELETE,
            CodeSpec::Fetch => Code::FETCH,
            CodeSpec::Content => Code::CONTENT,
            CodeSpec::Changed => Code::CHANGED,
            CodeSpec::Continue => Code::CONTINUE,
            CodeSpec::NotFound => Code::NOT_FOUND,
            CodeSpec::Empty => Code::EMPTY,
            CodeSpec::Raw(c) => Code::from_u8(c),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MidSpec {
    Fresh,
    Recent(u8),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TokenSpec {
    Empty,
    Small(u8),
    Fresh,
    Long(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct BlockSpec {
    num: u8,
    more: bool,
    szx: u8,
}

impl BlockSpec {
    fn block(self) -> Block {
        Block {
            num: u32::from(self.num % 8),
            more: self.more,
            szx: self.szx % 8,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PayloadSpec {
    None,
    FullBlock,
    Len(u16),
}

impl PayloadSpec {
    fn bytes(self, block: Option<Block>, max: usize, fill: u8) -> Bytes {
        let len = match self {
            PayloadSpec::None => 0,
            PayloadSpec::FullBlock => block.map_or(16, |b| 16usize << b.szx.min(6)),
            PayloadSpec::Len(n) => usize::from(n) % max,
        };
        Bytes::from(vec![fill; len])
    }
}

#[derive(Arbitrary, Debug)]
struct PeerMsg {
    peer: u8,
    mtype: u8,
    code: CodeSpec,
    mid: MidSpec,
    token: TokenSpec,
    path: u8,
    query: Option<u8>,
    observe: Option<u8>,
    block1: Option<BlockSpec>,
    block2: Option<BlockSpec>,
    size1: Option<u16>,
    request_tag: Option<u8>,
    payload: PayloadSpec,
    extra: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum ReplyKind {
    EmptyAck,
    Rst,
    Piggyback,
    SeparateCon,
    SeparateNon,
}

/// An answer from a peer to one of the last transmits of the endpoint.
#[derive(Arbitrary, Debug)]
struct Reply {
    pick: u8,
    kind: ReplyKind,
    code: CodeSpec,
    observe: Option<u8>,
    echo_block1: bool,
    block2: Option<BlockSpec>,
    payload: PayloadSpec,
}

#[derive(Arbitrary, Debug)]
struct AppMsg {
    code: CodeSpec,
    observe: bool,
    payload: PayloadSpec,
    content_format: Option<u16>,
    extra: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
struct AppReq {
    code: CodeSpec,
    path: u8,
    observe: Option<u8>,
    payload: PayloadSpec,
    extra: Option<(u16, u8)>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn peers() -> [Peer; 4] {
    let a: SocketAddr = "192.0.2.1:5683".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:5683".parse().unwrap();
    let c: SocketAddr = "192.0.2.2:40000".parse().unwrap();
    [
        Peer::new(a),
        Peer::new(b),
        Peer::new(c),
        Peer::authenticated(a, &b"dev"[..]),
    ]
}

fn with_extra(mut m: Message, extra: Option<(u16, u8)>) -> Message {
    if let Some((number, len)) = extra {
        m.add_option(OptionNumber(number), vec![0x5a; usize::from(len % 24)]);
    }
    m
}

struct ClientTrack {
    peer: usize,
    observe: bool,
    observing: bool,
    done: bool,
}

struct Harness {
    ep: Endpoint,
    config: EndpointConfig,
    settings: CodecSettings,
    peers: [Peer; 4],
    now: Instant,
    /// Requests handed out and not answered: id, peer index, observe registration.
    pending: Vec<(RequestId, usize, bool)>,
    answered: Vec<RequestId>,
    seen_requests: HashSet<RequestId>,
    relations: Vec<RelationId>,
    ended_relations: Vec<RelationId>,
    clients: HashMap<ClientRequestId, ClientTrack>,
    client_order: Vec<ClientRequestId>,
    /// The last transmits (peer index, message) for `Reply`.
    recent: VecDeque<(usize, Message)>,
    /// Message ids each peer sent (for the ACK/RST check).
    peer_mids: Vec<HashSet<u16>>,
    peer_recent_mids: Vec<VecDeque<u16>>,
    next_peer_mid: [u16; 4],
    next_token: u64,
    con_sends: HashMap<(usize, u16), u32>,
    observe_values: HashMap<(usize, Bytes), HashMap<u32, u16>>,
    /// ACK/RST (peer, message id) sent and requests handed out since the
    /// last delivered datagram.
    step_answers: Vec<(usize, u16)>,
    step_requests: usize,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        let mut config = EndpointConfig::default();
        config.rng_seed = Some(input.seed);
        config.max_block_size = 16 << (input.block_szx % 7);
        config.max_retransmit = u32::from(input.max_retransmit % 5);
        config.observe_con_every = u32::from(input.con_every % 6) + 1;
        config.observe_con_interval = Duration::from_secs(60);
        config.default_ack_timeout = match input.ack_policy % 4 {
            0 => AckTimeout::Never,
            1 => AckTimeout::Immediately,
            2 => AckTimeout::After(Duration::from_millis(500)),
            _ => AckTimeout::After(Duration::from_secs(1)),
        };
        config.extended_tokens = input.extended_tokens.then_some(16);
        config.max_dedup_per_peer = 6;
        config.max_dedup_total = 16;
        config.max_pending_requests = 6;
        config.max_pending_per_peer = 4;
        config.max_queued_per_peer = 3;
        config.max_relations = 5;
        config.max_relations_per_peer = 2;
        config.max_body_size = 3000;
        config.max_reassembly_memory = 1500;
        config.max_reassemblies = 3;
        config.block_cache_entries = 3;
        config.block_cache_memory = 4096;
        let settings = match config.extended_tokens {
            Some(n) => CodecSettings::DEFAULT.with_extended_tokens(n),
            None => CodecSettings::DEFAULT,
        };
        let ep = Endpoint::new(config.clone()).expect("valid config");
        Harness {
            ep,
            config,
            settings,
            peers: peers(),
            now: base(),
            pending: Vec::new(),
            answered: Vec::new(),
            seen_requests: HashSet::new(),
            relations: Vec::new(),
            ended_relations: Vec::new(),
            clients: HashMap::new(),
            client_order: Vec::new(),
            recent: VecDeque::new(),
            peer_mids: vec![HashSet::new(); 4],
            peer_recent_mids: vec![VecDeque::new(); 4],
            next_peer_mid: [0x100, 0x2000, 0x4000, 0x6000],
            next_token: 1,
            con_sends: HashMap::new(),
            observe_values: HashMap::new(),
            step_answers: Vec::new(),
            step_requests: 0,
        }
    }

    fn peer_index(&self, peer: &Peer) -> usize {
        self.peers
            .iter()
            .position(|p| p == peer)
            .unwrap_or_else(|| panic!("transmit/event for unknown peer {peer}"))
    }

    fn deliver(&mut self, peer: usize, bytes: &[u8]) {
        // A confirmable message with a message id this peer never used must
        // get an ACK or RST, or reach the application (RFC 7252 §4.2);
        // unknown response codes are ignored (spec table).
        let must_answer = MessageRef::parse_with(bytes, &self.settings)
            .ok()
            .and_then(|m| {
                let code = m.code();
                let answerable = code.is_empty() || code.is_request() || code.name().is_some();
                (m.mtype() == MessageType::Con
                    && answerable
                    && !self.peer_mids[peer].contains(&m.message_id()))
                .then_some(m.message_id())
            });
        self.step_answers.clear();
        self.step_requests = 0;
        if let Some(h) = peek_header(bytes) {
            self.peer_mids[peer].insert(h.message_id);
            let recent = &mut self.peer_recent_mids[peer];
            recent.push_back(h.message_id);
            if recent.len() > 8 {
                recent.pop_front();
            }
        }
        let peer_key = self.peers[peer].clone();
        self.ep.handle_datagram(self.now, peer_key, bytes);
        self.drain();
        if let Some(mid) = must_answer {
            assert!(
                self.step_requests > 0 || self.step_answers.contains(&(peer, mid)),
                "CON {mid} from {} neither answered nor handed to the application",
                self.peers[peer]
            );
        }
    }

    fn mid(&mut self, peer: usize, spec: MidSpec) -> u16 {
        match spec {
            MidSpec::Fresh => {
                let mid = self.next_peer_mid[peer];
                self.next_peer_mid[peer] = mid.wrapping_add(1);
                mid
            }
            MidSpec::Recent(i) => {
                let recent = &self.peer_recent_mids[peer];
                if recent.is_empty() {
                    0
                } else {
                    recent[usize::from(i) % recent.len()]
                }
            }
            MidSpec::Raw(m) => m,
        }
    }

    fn token(&mut self, spec: TokenSpec) -> Bytes {
        match spec {
            TokenSpec::Empty => Bytes::new(),
            TokenSpec::Small(t) => Bytes::from(vec![t % 4]),
            TokenSpec::Fresh => {
                self.next_token += 1;
                Bytes::copy_from_slice(&self.next_token.to_be_bytes()[4..])
            }
            TokenSpec::Long(n) => Bytes::from(vec![0xab; usize::from(n % 20)]),
        }
    }

    fn peer_msg(&mut self, m: &PeerMsg) {
        let peer = usize::from(m.peer % 4);
        let mtype = MessageType::from_bits(m.mtype % 4);
        let mid = self.mid(peer, m.mid);
        let mut msg = Message::new(mtype, m.code.code(), mid).with_token(self.token(m.token));
        let path = PATHS[usize::from(m.path) % PATHS.len()];
        if !path.is_empty() {
            msg = msg.with_uri_path(path);
        }
        if let Some(q) = m.query {
            msg = msg.with_uri_query(&format!("k={}", q % 3));
        }
        if let Some(o) = m.observe {
            msg = msg.with_uint_option(OptionNumber::OBSERVE, u32::from(o % 3));
        }
        let b1 = m.block1.map(BlockSpec::block);
        if let Some(b) = b1 {
            msg = msg.with_option(OptionNumber::BLOCK1, Bytes::copy_from_slice(&b.encode()));
        }
        if let Some(b) = m.block2.map(BlockSpec::block) {
            msg = msg.with_option(OptionNumber::BLOCK2, Bytes::copy_from_slice(&b.encode()));
        }
        if let Some(s) = m.size1 {
            msg = msg.with_uint_option(OptionNumber::SIZE1, u32::from(s) * 4);
        }
        if let Some(t) = m.request_tag {
            msg = msg.with_option(OptionNumber::REQUEST_TAG, vec![t % 3]);
        }
        msg = with_extra(msg, m.extra);
        msg.payload = m.payload.bytes(b1, 1400, 0x31);
        let wide = CodecSettings::DEFAULT.with_extended_tokens(65804);
        if let Ok(bytes) = msg.to_bytes_with(&wide) {
            self.deliver(peer, &bytes);
        }
    }

    fn reply(&mut self, r: &Reply) {
        if self.recent.is_empty() {
            return;
        }
        let (peer, to) = self.recent[usize::from(r.pick) % self.recent.len()].clone();
        let msg = match r.kind {
            ReplyKind::EmptyAck => Message::empty_ack(to.message_id),
            ReplyKind::Rst => Message::reset(to.message_id),
            ReplyKind::Piggyback | ReplyKind::SeparateCon | ReplyKind::SeparateNon => {
                let (mtype, mid) = match r.kind {
                    ReplyKind::Piggyback => (MessageType::Ack, to.message_id),
                    ReplyKind::SeparateCon => (MessageType::Con, self.mid(peer, MidSpec::Fresh)),
                    _ => (MessageType::Non, self.mid(peer, MidSpec::Fresh)),
                };
                let mut msg = Message::new(mtype, r.code.code(), mid).with_token(to.token.clone());
                if let Some(o) = r.observe {
                    msg = msg.with_uint_option(OptionNumber::OBSERVE, u32::from(o));
                }
                if r.echo_block1
                    && let Some(b1) = to.block1()
                {
                    msg = msg.with_block1(Block { more: true, ..b1 });
                }
                // A Block2 answer follows the block number the request asked for.
                let b2 = r.block2.map(|spec| {
                    let mut b = spec.block();
                    if let Some(asked) = to.block2() {
                        b.num = asked.num;
                    }
                    b
                });
                if let Some(b) = b2 {
                    msg =
                        msg.with_option(OptionNumber::BLOCK2, Bytes::copy_from_slice(&b.encode()));
                }
                msg.payload = r.payload.bytes(b2, 1200, 0x42);
                msg
            }
        };
        let wide = CodecSettings::DEFAULT.with_extended_tokens(65804);
        if let Ok(bytes) = msg.to_bytes_with(&wide) {
            self.deliver(peer, &bytes);
        }
    }

    fn app_msg(&self, m: &AppMsg) -> Message {
        let mut msg = Message::new(MessageType::Ack, m.code.code(), 0);
        if m.observe {
            msg = msg.with_observe(0);
        }
        if let Some(cf) = m.content_format {
            msg = msg.with_uint_option(OptionNumber::CONTENT_FORMAT, u32::from(cf));
        }
        msg = with_extra(msg, m.extra);
        msg.payload = m.payload.bytes(None, 3500, 0x61);
        msg
    }

    /// Advance the clock to `target`; a punctual driver handles every
    /// deadline on time, a late one only at the end.
    fn advance_to(&mut self, target: Instant, punctual: bool) {
        if punctual {
            for _ in 0..512 {
                match self.ep.poll_timeout() {
                    Some(at) if at <= target => {
                        self.now = self.now.max(at);
                        self.timeout();
                    }
                    _ => break,
                }
            }
        }
        self.now = self.now.max(target);
        self.timeout();
    }

    fn timeout(&mut self) {
        self.ep.handle_timeout(self.now);
        if let Some(at) = self.ep.poll_timeout() {
            assert!(
                at > self.now,
                "poll_timeout {:?} not after handle_timeout(now)",
                at - base()
            );
        }
        self.drain();
    }

    fn respond(&mut self, pick: u8, m: &AppMsg) {
        let dead = pick >= 240 && !self.answered.is_empty();
        if dead {
            let id = self.answered[usize::from(pick) % self.answered.len()];
            let r = self.ep.respond(self.now, id, self.app_msg(m));
            assert!(
                matches!(r, Err(RespondError::UnknownRequest)),
                "answered twice: {r:?}"
            );
            return;
        }
        if self.pending.is_empty() {
            return;
        }
        let msg = self.app_msg(m);
        let (id, _, registration) = self.pending.remove(usize::from(pick) % self.pending.len());
        self.answered.push(id);
        let observable = registration && msg.code.class() == 2 && msg.observe().is_some();
        match self.ep.respond(self.now, id, msg) {
            Ok(Some(relation)) => {
                assert!(observable, "relation from a non-observe answer or request");
                assert!(
                    !self.ended_relations.contains(&relation),
                    "ended relation id reused"
                );
                if !self.relations.contains(&relation) {
                    self.relations.push(relation);
                }
            }
            // QueueFull: a separate response for a peer whose CON queue
            // is full (it does not acknowledge); the request is finished.
            Ok(None) | Err(RespondError::Encode(_)) | Err(RespondError::QueueFull) => {}
            Err(e) => panic!("respond on a pending request: {e:?}"),
        }
        self.drain();
    }

    fn notify(&mut self, pick: u8, m: &AppMsg, confirmable: bool) {
        if self.relations.is_empty() {
            return;
        }
        let relation = self.relations[usize::from(pick) % self.relations.len()];
        let msg = self.app_msg(m);
        let ends = msg.code.class() != 2;
        match self.ep.notify(self.now, relation, msg, confirmable) {
            Ok(()) => {
                if ends {
                    self.end_relation(relation);
                }
            }
            Err(NotifyError::Encode(_)) => {}
            // A final notification that found the peer's queue full: the
            // relation has ended all the same.
            Err(NotifyError::QueueFull) if ends => self.end_relation(relation),
            Err(e) => panic!("notify on a live relation: {e:?}"),
        }
        self.drain();
    }

    fn end_relation(&mut self, relation: RelationId) {
        self.relations.retain(|r| *r != relation);
        self.ended_relations.push(relation);
        // A new relation may reuse the token; start the Observe check afresh.
        self.observe_values.clear();
    }

    fn send(&mut self, peer: usize, r: &AppReq, confirmable: bool) {
        if self.clients.values().filter(|c| !c.done).count() >= 8 {
            return;
        }
        let code = r.code.code();
        let mut msg = Message::new(MessageType::Con, code, 0);
        let path = PATHS[usize::from(r.path) % PATHS.len()];
        if !path.is_empty() {
            msg = msg.with_uri_path(path);
        }
        if let Some(o) = r.observe {
            msg = msg.with_uint_option(OptionNumber::OBSERVE, u32::from(o % 2));
        }
        msg = with_extra(msg, r.extra);
        msg.payload = r.payload.bytes(None, 3200, 0x71);
        let observe = code == Code::GET && r.observe.is_some_and(|o| o % 2 == 0);
        let peer_key = self.peers[peer].clone();
        if let Ok(id) = self.ep.send_request(self.now, peer_key, msg, confirmable) {
            assert!(!self.clients.contains_key(&id), "client request id reused");
            let track = ClientTrack {
                peer,
                observe,
                observing: false,
                done: false,
            };
            self.clients.insert(id, track);
            self.client_order.push(id);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(t) = self.ep.poll_transmit() {
            let peer = self.peer_index(&t.peer);
            let msg = match MessageRef::parse_with(&t.bytes, &self.settings) {
                Ok(m) => m,
                Err(e) => panic!(
                    "endpoint sent a malformed datagram ({e}): {:02x?}",
                    &t.bytes[..]
                ),
            };
            // Bodies go block-wise; only the endpoint's own diagnostic
            // payloads (4.xx/5.xx) may exceed a tiny block size.
            let limit = if msg.code().class() >= 4 {
                self.config.max_block_size.max(128)
            } else {
                self.config.max_block_size
            };
            assert!(
                msg.payload().len() <= limit,
                "payload {} over max_block_size",
                msg.payload().len()
            );
            match msg.mtype() {
                MessageType::Ack | MessageType::Rst => {
                    assert!(
                        self.peer_mids[peer].contains(&msg.message_id()),
                        "{} for message id {} that {} never sent",
                        msg.mtype(),
                        msg.message_id(),
                        self.peers[peer]
                    );
                    self.step_answers.push((peer, msg.message_id()));
                }
                MessageType::Con => {
                    let n = self.con_sends.entry((peer, msg.message_id())).or_default();
                    *n += 1;
                    assert!(*n <= 1 + self.config.max_retransmit, "CON sent {n} times");
                }
                MessageType::Non => {}
            }
            if msg.code().is_response()
                && msg.code().class() == 2
                && let Some(seq) = msg.observe()
            {
                let key = (peer, Bytes::copy_from_slice(msg.token()));
                let seen = self.observe_values.entry(key).or_default();
                let mid = *seen.entry(seq).or_insert(msg.message_id());
                assert!(
                    mid == msg.message_id(),
                    "Observe value {seq} sent twice (message ids {mid} and {})",
                    msg.message_id()
                );
            }
            let owned = msg.to_message();
            self.recent.push_back((peer, owned));
            if self.recent.len() > 16 {
                self.recent.pop_front();
            }
        }
        while let Some(event) = self.ep.poll_event() {
            self.event(event);
        }
        self.check_state();
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Request(req) => {
                let peer = self.peer_index(&req.peer);
                assert!(self.seen_requests.insert(req.id), "request id repeated");
                for n in [
                    OptionNumber::BLOCK1,
                    OptionNumber::BLOCK2,
                    OptionNumber::SIZE1,
                ] {
                    assert!(
                        req.message.option(n).is_none(),
                        "request event still carries {n}"
                    );
                }
                self.pending.push((req.id, peer, req.observe_registration));
                self.step_requests += 1;
            }
            Event::Response {
                request,
                response,
                peer,
            } => {
                let peer = self.peer_index(&peer);
                let track = self
                    .clients
                    .get_mut(&request)
                    .unwrap_or_else(|| panic!("response for unknown {request}"));
                assert!(!track.done, "response after the final event of {request}");
                assert_eq!(track.peer, peer, "response from another peer");
                let keep =
                    track.observe && response.code.class() == 2 && response.observe().is_some();
                track.done = !keep;
                track.observing |= keep;
            }
            Event::RequestFailed { request, .. } => {
                let track = self
                    .clients
                    .get_mut(&request)
                    .unwrap_or_else(|| panic!("failure for unknown {request}"));
                assert!(!track.done, "failure after the final event of {request}");
                track.done = true;
            }
            Event::ObserveCancelled { relation, peer, .. } => {
                self.peer_index(&peer);
                assert!(
                    self.relations.contains(&relation),
                    "cancel event for {relation} the application does not hold"
                );
                self.end_relation(relation);
            }
            _ => {}
        }
    }

    fn check_state(&self) {
        let c = &self.config;
        let stats = self.ep.stats();
        assert!(
            stats.dedup_entries as usize <= c.max_dedup_total,
            "dedup over cap"
        );
        assert!(
            stats.dedup_entries as usize <= 4 * c.max_dedup_per_peer,
            "dedup over per-peer cap"
        );
        assert!(
            stats.observers as usize <= c.max_relations,
            "relations over cap"
        );
        assert_eq!(
            stats.observers as usize,
            self.relations.len(),
            "relations disagree"
        );
        assert_eq!(
            self.ep.pending_requests(),
            self.pending.len(),
            "pending requests disagree"
        );
        assert!(
            self.pending.len() <= c.max_pending_requests,
            "pending over cap"
        );
        let mut per_peer = [0usize; 4];
        for (_, p, _) in &self.pending {
            per_peer[*p] += 1;
        }
        assert!(
            per_peer.iter().all(|n| *n <= c.max_pending_per_peer),
            "pending per peer over cap"
        );
        let mut rel_per_peer = [0usize; 4];
        for r in &self.relations {
            let peer = self
                .ep
                .relation_peer(*r)
                .unwrap_or_else(|| panic!("{r} vanished without an event"));
            rel_per_peer[self.peer_index(peer)] += 1;
        }
        assert!(
            rel_per_peer.iter().all(|n| *n <= c.max_relations_per_peer),
            "relations per peer over cap: {rel_per_peer:?}"
        );
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Raw { peer, bytes } => self.deliver(usize::from(peer % 4), bytes),
            Op::Msg(m) => self.peer_msg(m),
            Op::Reply(r) => self.reply(r),
            Op::Advance { millis, punctual } => {
                let target = self.now + Duration::from_millis(u64::from(*millis));
                self.advance_to(target, *punctual);
            }
            Op::Sleep { secs, punctual } => {
                let target = self.now + Duration::from_secs(u64::from(*secs) * 2);
                self.advance_to(target, *punctual);
            }
            Op::Timeout => self.timeout(),
            Op::Respond { pick, msg } => self.respond(*pick, msg),
            Op::SetAckTimeout { pick, millis } => {
                if self.pending.is_empty() {
                    return;
                }
                let (id, _, _) = self.pending[usize::from(*pick) % self.pending.len()];
                let timeout = AckTimeout::from_millis(i64::from(*millis));
                self.ep
                    .set_ack_timeout(self.now, id, timeout)
                    .expect("pending request");
                self.drain();
            }
            Op::Notify {
                pick,
                msg,
                confirmable,
            } => self.notify(*pick, msg, *confirmable),
            Op::Send {
                peer,
                req,
                confirmable,
            } => self.send(usize::from(peer % 4), req, *confirmable),
            Op::Rebind { from, to } => {
                let (from, to) = (usize::from(from % 4), usize::from(to % 4));
                let old = self.peers[from].clone();
                self.ep.rebind(self.now, &old, self.peers[to].clone());
                // An in-flight notification is re-sent to the new address.
                self.con_sends.clear();
                self.observe_values.clear();
                self.drain();
            }
            Op::CancelRequest { pick } => {
                if self.client_order.is_empty() {
                    return;
                }
                let id = self.client_order[usize::from(*pick) % self.client_order.len()];
                let live = self.clients.get(&id).is_some_and(|c| !c.done);
                assert_eq!(
                    self.ep.cancel_request(id),
                    live,
                    "cancel_request disagrees for {id}"
                );
                if let Some(c) = self.clients.get_mut(&id) {
                    c.done = true;
                }
                self.drain();
            }
            Op::CancelObserve { pick } => {
                if self.relations.is_empty() {
                    return;
                }
                let relation = self.relations[usize::from(*pick) % self.relations.len()];
                assert!(
                    self.ep.cancel_observe(relation),
                    "live relation not cancelled"
                );
                self.end_relation(relation);
                self.drain();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    // Let every timer run out (a punctual driver): the endpoint must settle.
    for _ in 0..10_000 {
        match h.ep.poll_timeout() {
            Some(at) => {
                h.now = h.now.max(at);
                h.timeout();
            }
            None => break,
        }
    }
    assert!(h.ep.poll_timeout().is_none(), "timers never run out");
    let stats = h.ep.stats();
    assert_eq!(
        stats.dedup_entries, 0,
        "dedup entries outlive their lifetime"
    );
    for (id, c) in &h.clients {
        assert!(c.done || c.observing, "{id} never completed");
    }
    assert_eq!(
        h.ep.is_quiescent(),
        h.pending.is_empty(),
        "not quiescent after all timers"
    );
});
