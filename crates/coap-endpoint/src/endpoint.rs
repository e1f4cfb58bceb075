//! The sans-IO message layer: deduplication, piggybacked and separate
//! responses, retransmission, observe relations and block-wise transfers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_codec::option_value::observe;
use coap_codec::{
    Block, Code, CodecSettings, EncodeError, Message, MessageRef, MessageType, OptionNumber,
    encode_uint, peek_header, validate_request,
};

use crate::config::{AckTimeout, ConfigError, EndpointConfig};
use crate::peer::Peer;
use crate::random::SeededRng;
use crate::reaction::{Fault, Reaction, wire_reaction};
use crate::stats::{Counters, Stats};
use crate::types::{
    CancelReason, ClientRequestId, Event, IncomingRequest, NotifyError, RelationId, RequestFailure,
    RequestId, RespondError, SendRequestError, Transmit,
};

/// The CoAP message layer of one local endpoint (server and client side),
/// as a state machine without sockets or clocks.
///
/// # Order of calls
///
/// 1. Feed input: [`handle_datagram`](Self::handle_datagram) for every
///    datagram the transport receives, [`handle_timeout`](Self::handle_timeout)
///    whenever the instant last returned by [`poll_timeout`](Self::poll_timeout)
///    has passed, and application calls ([`respond`](Self::respond),
///    [`set_ack_timeout`](Self::set_ack_timeout), [`notify`](Self::notify),
///    [`send_request`](Self::send_request), [`rebind`](Self::rebind), …).
/// 2. After each input, drain [`poll_transmit`](Self::poll_transmit) until
///    `None` and send every datagram, then drain
///    [`poll_event`](Self::poll_event) until `None` and act on the events.
/// 3. Ask [`poll_timeout`](Self::poll_timeout) for the next deadline and
///    wait until then or the next input. `now` must never go backwards.
///
/// Every method returns at once; nothing blocks and every map keyed by a
/// peer is bounded by a field of [`EndpointConfig`].
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    codec: CodecSettings,
    rng: SeededRng,
    counters: Counters,
    next_mid: u16,
    next_id: u64,
    next_serial: u64,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    peers: HashMap<Peer, PeerState>,
    exchanges: HashMap<(Peer, u16), Exchange>,
    exchange_order: VecDeque<(Instant, u64, Peer, u16)>,
    requests: HashMap<RequestId, PendingRequest>,
    relations: HashMap<RelationId, Relation>,
    relation_index: HashMap<(Peer, Bytes), RelationId>,
    recent_non: HashMap<(Peer, u16), RelationId>,
    recent_non_order: VecDeque<(Peer, u16)>,
    client: HashMap<ClientRequestId, ClientRequest>,
    client_tokens: HashMap<(Peer, Bytes), ClientRequestId>,
    block_cache: HashMap<(Peer, Vec<u8>), CachedBody>,
    block_cache_order: VecDeque<(Instant, u64, Peer, Vec<u8>)>,
    block_cache_bytes: usize,
    reassemblies: HashMap<ReassemblyKey, Reassembly>,
    reassembly_order: VecDeque<(Instant, u64, ReassemblyKey)>,
    reassembly_bytes: usize,
}

type ReassemblyKey = (Peer, Option<Bytes>, Vec<u8>);

/// How many recent NON notification message ids are remembered so that an
/// RST to one of them ends its relation (RFC 7641 §3.6).
const RECENT_NON_CAP: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retransmit { peer: Peer, mid: u16 },
    EarlyAck(RequestId),
    ClientDeadline(ClientRequestId),
}

#[derive(Debug, Default)]
struct PeerState {
    dedup: VecDeque<(u16, u64)>,
    in_flight: Option<InFlight>,
    queue: VecDeque<Outgoing>,
    pending: usize,
    relations: usize,
}

impl PeerState {
    fn is_idle(&self) -> bool {
        self.dedup.is_empty()
            && self.in_flight.is_none()
            && self.queue.is_empty()
            && self.pending == 0
            && self.relations == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Request(ClientRequestId),
    Notification(RelationId),
    Separate(Option<RelationId>),
}

#[derive(Debug)]
struct Outgoing {
    message: Message,
    purpose: Purpose,
}

#[derive(Debug)]
struct InFlight {
    mid: u16,
    bytes: Bytes,
    purpose: Purpose,
    attempts: u32,
    timeout: Duration,
    next_at: Instant,
    /// A newer notification of the same relation waiting to take this
    /// slot's place (RFC 7641 §4.5.2).
    replacement: Option<Message>,
}

#[derive(Debug)]
struct Exchange {
    serial: u64,
    expires: Instant,
    state: ExchangeState,
}

#[derive(Debug)]
enum ExchangeState {
    /// Handed to the application; the empty ACK if one was sent.
    Pending { ack: Option<Bytes> },
    /// Answered: the datagram to send again for a duplicate.
    Answered(Bytes),
    /// A NON, or a message whose duplicates need no answer.
    Seen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObserveIntent {
    None,
    Register,
}

#[derive(Debug)]
struct PendingRequest {
    peer: Peer,
    mid: u16,
    token: Bytes,
    confirmable: bool,
    arrived: Instant,
    ack_sent: bool,
    ack_deadline: Option<Instant>,
    uri: Vec<u8>,
    block1: Option<Block>,
    block2: Option<Block>,
    observe: ObserveIntent,
}

#[derive(Debug)]
struct Relation {
    peer: Peer,
    token: Bytes,
    uri: Vec<u8>,
    seq: u32,
    since_con: u32,
    last_con: Instant,
    szx: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    /// Waiting for the ACK of a CON (or any answer to a NON).
    Sent,
    /// Got the empty ACK, waiting for the separate response.
    AwaitingSeparate,
    /// Observing: got the first response, notifications follow.
    Observing,
}

#[derive(Debug)]
struct ClientRequest {
    peer: Peer,
    token: Bytes,
    template: Message,
    body: Bytes,
    confirmable: bool,
    observe: bool,
    phase: ClientPhase,
    deadline: Option<Instant>,
    block1: Option<(usize, u8)>,
    block2_body: Vec<u8>,
    /// The first Block2 block (payload removed): its options (Observe,
    /// Content-Format, ETag, …) are those of the reassembled response.
    block2_first: Option<Message>,
}

#[derive(Debug)]
struct CachedBody {
    serial: u64,
    response: Message,
}

#[derive(Debug)]
struct Reassembly {
    serial: u64,
    body: Vec<u8>,
}

impl Endpoint {
    /// A new endpoint; fails if the configuration is inconsistent.
    pub fn new(config: EndpointConfig) -> Result<Endpoint, ConfigError> {
        config.validate()?;
        let mut rng = SeededRng::new(config.rng_seed.unwrap_or_else(SeededRng::entropy_seed));
        let codec = match config.extended_tokens {
            Some(max) => CodecSettings::DEFAULT.with_extended_tokens(max),
            None => CodecSettings::DEFAULT,
        };
        let next_mid = rng.next_u64() as u16;
        Ok(Endpoint {
            config,
            codec,
            rng,
            counters: Counters::default(),
            next_mid,
            next_id: 1,
            next_serial: 1,
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            peers: HashMap::new(),
            exchanges: HashMap::new(),
            exchange_order: VecDeque::new(),
            requests: HashMap::new(),
            relations: HashMap::new(),
            relation_index: HashMap::new(),
            recent_non: HashMap::new(),
            recent_non_order: VecDeque::new(),
            client: HashMap::new(),
            client_tokens: HashMap::new(),
            block_cache: HashMap::new(),
            block_cache_order: VecDeque::new(),
            block_cache_bytes: 0,
            reassemblies: HashMap::new(),
            reassembly_order: VecDeque::new(),
            reassembly_bytes: 0,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        stats.observers = self.relations.len() as u64;
        stats.dedup_entries = self.exchanges.len() as u64;
        stats
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.transmits.pop_front();
        if transmit.is_some() {
            self.counters.stats.datagrams_out += 1;
        }
        transmit
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut next = self.timers.peek().map(|Reverse((at, _))| *at);
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        consider(self.exchange_order.front().map(|e| e.0));
        consider(self.block_cache_order.front().map(|e| e.0));
        consider(self.reassembly_order.front().map(|e| e.0));
        next
    }

    /// Requests handed to the application and not answered yet.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// True if no confirmable message waits for an ACK and nothing is
    /// queued (used by drivers to finish a graceful shutdown).
    pub fn is_quiescent(&self) -> bool {
        self.requests.is_empty()
            && self
                .peers
                .values()
                .all(|p| p.in_flight.is_none() && p.queue.is_empty())
    }

    /// The observer of a relation, if it is alive.
    pub fn relation_peer(&self, relation: RelationId) -> Option<&Peer> {
        self.relations.get(&relation).map(|r| &r.peer)
    }

    /// Processes expired timers: retransmissions, early ACKs, client
    /// deadlines and the expiry of deduplication and block-wise state.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Retransmit { peer, mid } => self.on_retransmit_timer(now, at, peer, mid),
                Timer::EarlyAck(id) => self.on_early_ack_timer(now, at, id),
                Timer::ClientDeadline(id) => {
                    let due = self.client.get(&id).is_some_and(|c| c.deadline == Some(at));
                    if due {
                        self.fail_client(id, RequestFailure::Timeout);
                    }
                }
            }
        }
        self.expire_exchanges(now);
        self.expire_block_state(now);
    }

    // ----------------------------------------------------------------
    // Incoming datagrams
    // ----------------------------------------------------------------

    /// Processes one received datagram from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: Peer, datagram: &[u8]) {
        self.counters.stats.datagrams_in += 1;
        let msg = match MessageRef::parse_with(datagram, &self.codec) {
            Ok(msg) => msg,
            Err(error) => {
                let header = peek_header(datagram);
                self.react(now, &peer, Fault::Parse { error, header }, None);
                return;
            }
        };
        let code = msg.code();
        if code.is_empty() {
            match msg.mtype() {
                MessageType::Con => {
                    let fault = Fault::Ping {
                        message_id: msg.message_id(),
                    };
                    self.react(now, &peer, fault, None);
                }
                MessageType::Ack => self.on_ack(now, &peer, msg.message_id()),
                MessageType::Rst => self.on_reset(now, &peer, msg.message_id()),
                MessageType::Non => self.counters.stats.malformed.dropped += 1,
            }
        } else if code.is_request() {
            self.on_request(now, peer, &msg);
        } else if code.is_response() {
            if code.name().is_none() {
                self.react(now, &peer, Fault::UnknownResponseCode(code), None);
            } else {
                self.on_response(now, peer, &msg);
            }
        } else {
            self.counters.stats.malformed.dropped += 1;
        }
    }

    /// Applies [`wire_reaction`] and counts it. `request` is the parsed
    /// request when the reaction is an error response.
    fn react(&mut self, now: Instant, peer: &Peer, fault: Fault, request: Option<&MessageRef<'_>>) {
        match wire_reaction(&fault) {
            Reaction::Drop => match fault {
                Fault::UnknownResponseCode(_) => {
                    self.counters.stats.malformed.unknown_response += 1
                }
                _ => self.counters.stats.malformed.dropped += 1,
            },
            Reaction::Reset(mid) => {
                match fault {
                    Fault::Ping { .. } => self.counters.stats.pings += 1,
                    _ => self.counters.stats.malformed.reset += 1,
                }
                self.send_message(peer, &Message::reset(mid));
            }
            Reaction::Respond { code, diagnostic } => {
                let m = &mut self.counters.stats.malformed;
                match code {
                    Code::BAD_OPTION => m.bad_option += 1,
                    Code::METHOD_NOT_ALLOWED => m.method_not_allowed += 1,
                    _ => m.bad_request += 1,
                }
                if let Some(request) = request {
                    let response = Message::new(MessageType::Ack, code, 0)
                        .with_payload(Bytes::from(diagnostic.into_bytes()));
                    self.reply_direct(now, peer, request, response);
                }
            }
        }
    }

    /// Sends a response straight away (piggybacked on the ACK for a CON,
    /// NON with a fresh message id for a NON) and caches it for duplicates.
    fn reply_direct(
        &mut self,
        _now: Instant,
        peer: &Peer,
        request: &MessageRef<'_>,
        mut response: Message,
    ) {
        response.token = Bytes::copy_from_slice(request.token());
        let confirmable = request.mtype() == MessageType::Con;
        if confirmable {
            response.mtype = MessageType::Ack;
            response.message_id = request.message_id();
        } else {
            response.mtype = MessageType::Non;
            response.message_id = self.fresh_mid();
        }
        let bytes = match response.to_bytes_with(&self.codec) {
            Ok(bytes) => bytes,
            Err(_) => {
                // Never leave a request unanswered: 5.00 without options.
                response = Message::new(response.mtype, Code::INTERNAL_SERVER_ERROR, 0)
                    .with_token(response.token.clone());
                response.message_id = if confirmable {
                    request.message_id()
                } else {
                    self.fresh_mid()
                };
                match response.to_bytes_with(&self.codec) {
                    Ok(bytes) => bytes,
                    Err(_) => return,
                }
            }
        };
        self.counters.response_out(response.code);
        if confirmable {
            self.set_exchange_state(
                peer,
                request.message_id(),
                ExchangeState::Answered(bytes.clone()),
            );
        }
        self.transmits.push_back(Transmit {
            peer: peer.clone(),
            bytes,
        });
    }

    fn on_request(&mut self, now: Instant, peer: Peer, msg: &MessageRef<'_>) {
        let mid = msg.message_id();
        let confirmable = msg.mtype() == MessageType::Con;
        if !confirmable && msg.mtype() != MessageType::Non {
            // A request in an ACK or RST is meaningless (§4.2, §4.3).
            self.counters.stats.malformed.dropped += 1;
            return;
        }
        if self.answer_duplicate(now, &peer, mid, confirmable) {
            return;
        }
        self.remember_exchange(now, &peer, mid, confirmable);

        if let Err(error) = validate_request(msg) {
            self.react(now, &peer, Fault::Request(error), Some(msg));
            return;
        }
        self.counters.request_in(msg.code());

        let uri = uri_key(msg);
        let token = Bytes::copy_from_slice(msg.token());
        let mut intent = ObserveIntent::None;
        if msg.code() == Code::GET {
            match msg.observe() {
                Some(observe::DEREGISTER) => {
                    if let Some(&relation) = self.relation_index.get(&(peer.clone(), token.clone()))
                    {
                        self.cancel_relation(relation, Some(CancelReason::Deregistered));
                    }
                }
                Some(observe::REGISTER) if !token.is_empty() => intent = ObserveIntent::Register,
                _ => {}
            }
        }

        // Block2 follow-up served from the cache (RFC 7959 §2.4).
        let block2 = msg.block2();
        if let Some(b2) = block2.filter(|b| b.num > 0)
            && let Some(cached) = self.block_cache.get(&(peer.clone(), uri.clone()))
        {
            let szx = b2.szx.min(self.config.max_szx());
            let reply = match segment(&cached.response, b2.num, szx) {
                Some(reply) => reply,
                None => Message::new(MessageType::Ack, Code::BAD_OPTION, 0)
                    .with_payload(&b"block number out of range"[..]),
            };
            self.counters.stats.block2_cache_hits += 1;
            self.reply_direct(now, &peer, msg, reply);
            return;
        }
        // A follow-up (num > 0) whose body is no longer cached (expired,
        // evicted, or a late datagram). Running an unsafe method again for
        // it would execute the request twice (e.g. publish an empty
        // message), so only GET and FETCH, which are safe, go to the
        // application — with the Block2 option kept in effect: the
        // application's answer is cut to the block asked for. Everything
        // else gets 4.08: the client has to start over.
        if block2.is_some_and(|b| b.num > 0) && !matches!(msg.code(), Code::GET | Code::FETCH) {
            self.counters.stats.block2_cache_misses += 1;
            let reply = Message::new(MessageType::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 0)
                .with_payload(&b"block-wise response no longer available"[..]);
            self.reply_direct(now, &peer, msg, reply);
            return;
        }

        // Block1 reassembly (RFC 7959 §2.5).
        let mut body: Option<Bytes> = None;
        let mut block1_echo = None;
        if let Some(b1) = msg.block1() {
            match self.reassemble(now, &peer, msg, &uri, b1) {
                Ok(Some((complete, echo))) => {
                    body = Some(complete);
                    block1_echo = Some(echo);
                }
                Ok(None) => return, // 2.31 sent
                Err(reply) => {
                    self.counters.stats.block1_rejections += 1;
                    self.reply_direct(now, &peer, msg, reply);
                    return;
                }
            }
        }

        let peer_pending = self.peers.get(&peer).map_or(0, |p| p.pending);
        if self.requests.len() >= self.config.max_pending_requests
            || peer_pending >= self.config.max_pending_per_peer
        {
            self.counters.stats.overload_rejections += 1;
            let reply = Message::new(MessageType::Ack, Code::SERVICE_UNAVAILABLE, 0)
                .with_uint_option(OptionNumber::MAX_AGE, 1);
            self.reply_direct(now, &peer, msg, reply);
            return;
        }

        let mut message = msg.to_message();
        message.remove_option(OptionNumber::BLOCK1);
        message.remove_option(OptionNumber::BLOCK2);
        message.remove_option(OptionNumber::SIZE1);
        if let Some(body) = body {
            message.payload = body;
        }
        let id = RequestId(self.fresh_id());
        let mut pending = PendingRequest {
            peer: peer.clone(),
            mid,
            token,
            confirmable,
            arrived: now,
            ack_sent: false,
            ack_deadline: None,
            uri,
            block1: block1_echo,
            block2,
            observe: intent,
        };
        if confirmable {
            match self.config.default_ack_timeout {
                AckTimeout::Never => {}
                AckTimeout::Immediately => self.send_early_ack(&mut pending),
                AckTimeout::After(delay) => {
                    let at = now + delay;
                    pending.ack_deadline = Some(at);
                    self.push_timer(at, Timer::EarlyAck(id));
                }
            }
        }
        self.peers.entry(peer.clone()).or_default().pending += 1;
        self.requests.insert(id, pending);
        self.events.push_back(Event::Request(IncomingRequest {
            id,
            peer,
            message,
            observe_registration: intent == ObserveIntent::Register,
        }));
    }

    /// One Block1 block: `Ok(Some(body, echo))` when the transfer is
    /// complete, `Ok(None)` when 2.31 was sent, `Err(reply)` to refuse.
    fn reassemble(
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
            self.drop_reassembly(&key);
            return Ok(Some((
                Bytes::copy_from_slice(payload),
                Block {
                    num: 0,
                    more: false,
                    szx,
                },
            )));
        }
        if b1.num == 0 {
            self.drop_reassembly(&key);
            if self.reassemblies.len() >= self.config.max_reassemblies
                || self.reassembly_bytes + payload.len() > self.config.max_reassembly_memory
            {
                return Err(Message::new(MessageType::Ack, Code::SERVICE_UNAVAILABLE, 0)
                    .with_uint_option(OptionNumber::MAX_AGE, 5));
            }
            let serial = self.fresh_serial();
            let expires = now + self.config.reassembly_lifetime;
            self.reassemblies.insert(
                key.clone(),
                Reassembly {
                    serial,
                    body: Vec::new(),
                },
            );
            self.reassembly_order
                .push_back((expires, serial, key.clone()));
            // Completed, restarted and refused transfers leave their entry
            // behind until it expires; drop the dead ones once they
            // outnumber the live ones, so that the list stays within
            // 2 × max_reassemblies + 16 whatever the datagram rate.
            if self.reassembly_order.len() > 2 * self.reassemblies.len() + 16 {
                let live = &self.reassemblies;
                self.reassembly_order
                    .retain(|(_, serial, key)| live.get(key).is_some_and(|r| r.serial == *serial));
            }
        }
        let Some(assembly) = self.reassemblies.get_mut(&key) else {
            // RFC 7959 §2.5: a block without the start of its body.
            return Err(
                Message::new(MessageType::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 0)
                    .with_payload(&b"missing earlier blocks"[..]),
            );
        };
        let repeat = b1.more
            && b1.num > 0
            && b1.offset() + payload.len() == assembly.body.len()
            && assembly.body.get(b1.offset()..) == Some(payload);
        if repeat {
            // The same block again under a new message id (our 2.31 was
            // lost and the client re-sent rather than retransmitted):
            // confirm it again without appending.
            let reply = Message::new(MessageType::Ack, Code::CONTINUE, 0).with_option(
                OptionNumber::BLOCK1,
                Bytes::copy_from_slice(
                    &Block {
                        num: b1.num,
                        more: true,
                        szx,
                    }
                    .encode(),
                ),
            );
            self.reply_direct(now, peer, msg, reply);
            return Ok(None);
        }
        if assembly.body.len() != b1.offset() {
            self.drop_reassembly(&key);
            return Err(
                Message::new(MessageType::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 0)
                    .with_payload(&b"block out of order"[..]),
            );
        }
        if assembly.body.len() + payload.len() > max_body {
            self.drop_reassembly(&key);
            return Err(too_large());
        }
        if self.reassembly_bytes + payload.len() > self.config.max_reassembly_memory {
            self.drop_reassembly(&key);
            return Err(Message::new(MessageType::Ack, Code::SERVICE_UNAVAILABLE, 0)
                .with_uint_option(OptionNumber::MAX_AGE, 5));
        }
        assembly.body.extend_from_slice(payload);
        self.reassembly_bytes += payload.len();
        if b1.more {
            let reply = Message::new(MessageType::Ack, Code::CONTINUE, 0).with_option(
                OptionNumber::BLOCK1,
                Bytes::copy_from_slice(
                    &Block {
                        num: b1.num,
                        more: true,
                        szx,
                    }
                    .encode(),
                ),
            );
            self.reply_direct(now, peer, msg, reply);
            return Ok(None);
        }
        let body = match self.reassemblies.remove(&key) {
            Some(assembly) => {
                self.reassembly_bytes = self.reassembly_bytes.saturating_sub(assembly.body.len());
                Bytes::from(assembly.body)
            }
            None => Bytes::new(),
        };
        self.counters.stats.block1_transfers += 1;
        Ok(Some((
            body,
            Block {
                num: b1.num,
                more: false,
                szx,
            },
        )))
    }

    fn drop_reassembly(&mut self, key: &ReassemblyKey) {
        if let Some(old) = self.reassemblies.remove(key) {
            self.reassembly_bytes = self.reassembly_bytes.saturating_sub(old.body.len());
        }
    }

    /// Answers a duplicate (true) or reports a new message id (false).
    fn answer_duplicate(&mut self, now: Instant, peer: &Peer, mid: u16, confirmable: bool) -> bool {
        let key = (peer.clone(), mid);
        let Some(exchange) = self.exchanges.get(&key) else {
            return false;
        };
        if exchange.expires <= now {
            return false;
        }
        if confirmable {
            self.counters.stats.dedup_con_hits += 1;
            let again = match &exchange.state {
                ExchangeState::Answered(bytes) => Some(bytes.clone()),
                ExchangeState::Pending { ack } => ack.clone(),
                ExchangeState::Seen => None,
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

    fn remember_exchange(&mut self, now: Instant, peer: &Peer, mid: u16, confirmable: bool) {
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
            let key = (peer.clone(), old_mid);
            if self
                .exchanges
                .get(&key)
                .is_some_and(|e| e.serial == old_serial)
            {
                self.exchanges.remove(&key);
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
            (peer.clone(), mid),
            Exchange {
                serial,
                expires,
                state: ExchangeState::Seen,
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
            self.exchange_order.retain(|(_, serial, peer, mid)| {
                live.get(&(peer.clone(), *mid))
                    .is_some_and(|e| e.serial == *serial)
            });
        }
        if confirmable {
            self.set_exchange_state(peer, mid, ExchangeState::Pending { ack: None });
        }
    }

    /// Removes a dedup entry if it still has `serial`; true if removed.
    fn remove_exchange(&mut self, peer: &Peer, mid: u16, serial: u64) -> bool {
        let key = (peer.clone(), mid);
        if self.exchanges.get(&key).is_none_or(|e| e.serial != serial) {
            return false;
        }
        self.exchanges.remove(&key);
        if let Some(state) = self.peers.get_mut(peer) {
            while let Some(&(m, s)) = state.dedup.front() {
                let live = self
                    .exchanges
                    .get(&(peer.clone(), m))
                    .is_some_and(|e| e.serial == s);
                if live {
                    break;
                }
                state.dedup.pop_front();
            }
        }
        self.forget_peer_if_idle(peer);
        true
    }

    fn set_exchange_state(&mut self, peer: &Peer, mid: u16, state: ExchangeState) {
        if let Some(exchange) = self.exchanges.get_mut(&(peer.clone(), mid)) {
            exchange.state = state;
        }
    }

    fn expire_exchanges(&mut self, now: Instant) {
        while let Some((expires, serial, peer, mid)) = self.exchange_order.front().cloned() {
            if expires > now {
                break;
            }
            self.exchange_order.pop_front();
            self.remove_exchange(&peer, mid, serial);
        }
    }

    fn expire_block_state(&mut self, now: Instant) {
        while let Some((expires, serial, _, _)) = self.block_cache_order.front() {
            if *expires > now {
                break;
            }
            let serial = *serial;
            if let Some((_, _, peer, uri)) = self.block_cache_order.pop_front() {
                self.remove_cached_body(&(peer, uri), serial);
            }
        }
        while let Some((expires, serial, _)) = self.reassembly_order.front() {
            if *expires > now {
                break;
            }
            let serial = *serial;
            if let Some((_, _, key)) = self.reassembly_order.pop_front()
                && self
                    .reassemblies
                    .get(&key)
                    .is_some_and(|r| r.serial == serial)
            {
                self.drop_reassembly(&key);
            }
        }
    }

    fn forget_peer_if_idle(&mut self, peer: &Peer) {
        if self.peers.get(peer).is_some_and(PeerState::is_idle) {
            self.peers.remove(peer);
        }
    }

    // ----------------------------------------------------------------
    // ACK / RST / retransmission
    // ----------------------------------------------------------------

    fn on_ack(&mut self, now: Instant, peer: &Peer, mid: u16) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        if state.in_flight.as_ref().is_none_or(|f| f.mid != mid) {
            return; // RFC 7252 §4.2: ACK for an unknown message id is ignored.
        }
        let Some(flight) = state.in_flight.take() else {
            return;
        };
        if let Some(replacement) = flight.replacement {
            // The older notification arrived; send the newest one now.
            self.start_transmission(now, peer, replacement, flight.purpose);
            return;
        }
        if let Purpose::Request(id) = flight.purpose
            && let Some(request) = self.client.get_mut(&id)
            && request.phase == ClientPhase::Sent
        {
            request.phase = ClientPhase::AwaitingSeparate;
            let at = now + self.config.response_timeout;
            request.deadline = Some(at);
            self.push_timer(at, Timer::ClientDeadline(id));
        }
        self.send_next_queued(now, peer);
    }

    fn on_reset(&mut self, now: Instant, peer: &Peer, mid: u16) {
        let in_flight = self
            .peers
            .get(peer)
            .and_then(|p| p.in_flight.as_ref())
            .is_some_and(|f| f.mid == mid);
        if in_flight {
            let flight = self.peers.get_mut(peer).and_then(|p| p.in_flight.take());
            if let Some(flight) = flight {
                self.purpose_failed(flight.purpose, CancelReason::Reset, RequestFailure::Reset);
            }
            self.send_next_queued(now, peer);
            return;
        }
        // RFC 7641 §3.6: an RST to a NON notification also ends the relation.
        if let Some(relation) = self.recent_non.remove(&(peer.clone(), mid)) {
            self.cancel_relation(relation, Some(CancelReason::Reset));
        }
    }

    fn purpose_failed(&mut self, purpose: Purpose, cancel: CancelReason, failure: RequestFailure) {
        match purpose {
            Purpose::Notification(relation) | Purpose::Separate(Some(relation)) => {
                self.cancel_relation(relation, Some(cancel));
            }
            Purpose::Request(id) => self.fail_client(id, failure),
            Purpose::Separate(None) => {}
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant, at: Instant, peer: Peer, mid: u16) {
        let max_retransmit = self.config.max_retransmit;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(flight) = state.in_flight.as_mut() else {
            return;
        };
        if flight.mid != mid || flight.next_at != at {
            return; // stale timer
        }
        if flight.attempts >= max_retransmit {
            let purpose = flight.purpose;
            state.in_flight = None;
            self.counters.stats.give_ups += 1;
            self.purpose_failed(purpose, CancelReason::Timeout, RequestFailure::Timeout);
            self.send_next_queued(now, &peer);
            return;
        }
        flight.attempts += 1;
        flight.timeout = flight.timeout.saturating_mul(2);
        flight.next_at = now + flight.timeout;
        if let Some(mut replacement) = flight.replacement.take() {
            // RFC 7641 §4.5.2: the newer notification takes over the
            // retransmission counter and timeout of the older one.
            let new_mid = self.next_mid;
            self.next_mid = self.next_mid.wrapping_add(1);
            replacement.mtype = MessageType::Con;
            replacement.message_id = new_mid;
            if let Ok(bytes) = replacement.to_bytes_with(&self.codec) {
                flight.mid = new_mid;
                flight.bytes = bytes;
            }
        }
        let (mid, next_at, bytes) = (flight.mid, flight.next_at, flight.bytes.clone());
        self.counters.stats.retransmissions += 1;
        self.push_timer(
            next_at,
            Timer::Retransmit {
                peer: peer.clone(),
                mid,
            },
        );
        self.transmits.push_back(Transmit { peer, bytes });
    }

    /// True if a separate response (or final notification) for `peer` can
    /// be sent or queued: nothing in flight, room in the queue, or a queued
    /// notification it may displace (a newer notification supersedes it
    /// anyway, RFC 7641 §4.5.2).
    fn separate_slot_available(&self, peer: &Peer) -> bool {
        self.peers.get(peer).is_none_or(|state| {
            state.in_flight.is_none()
                || state.queue.len() < self.config.max_queued_per_peer
                || state
                    .queue
                    .iter()
                    .any(|q| matches!(q.purpose, Purpose::Notification(_)))
        })
    }

    /// Sends a CON now if the peer has no CON in flight (NSTART 1), else
    /// queues it. Returns false if it had to be dropped.
    fn enqueue_con(
        &mut self,
        now: Instant,
        peer: &Peer,
        message: Message,
        purpose: Purpose,
    ) -> bool {
        let cap = self.config.max_queued_per_peer;
        let state = self.peers.entry(peer.clone()).or_default();
        let Some(flight) = state.in_flight.as_mut() else {
            self.start_transmission(now, peer, message, purpose);
            return true;
        };
        if let Purpose::Notification(relation) = purpose {
            if flight.purpose == purpose {
                flight.replacement = Some(message);
                return true;
            }
            if let Some(queued) = state.queue.iter_mut().find(|q| q.purpose == purpose) {
                queued.message = message;
                return true;
            }
            if state.queue.len() >= cap {
                let oldest = state
                    .queue
                    .iter()
                    .position(|q| matches!(q.purpose, Purpose::Notification(r) if r != relation));
                match oldest {
                    Some(index) => {
                        state.queue.remove(index);
                        self.counters.stats.queue_drops += 1;
                    }
                    None => {
                        self.counters.stats.queue_drops += 1;
                        return false;
                    }
                }
            }
        } else if matches!(purpose, Purpose::Request(_)) && state.queue.len() >= cap {
            return false;
        } else if state.queue.len() >= cap {
            // A separate response: displace the oldest queued notification,
            // else drop it (callers check `separate_slot_available` first).
            self.counters.stats.queue_drops += 1;
            let oldest = state
                .queue
                .iter()
                .position(|q| matches!(q.purpose, Purpose::Notification(_)));
            match oldest {
                Some(index) => {
                    state.queue.remove(index);
                }
                None => return false,
            }
        }
        state.queue.push_back(Outgoing { message, purpose });
        true
    }

    fn start_transmission(
        &mut self,
        now: Instant,
        peer: &Peer,
        mut message: Message,
        purpose: Purpose,
    ) {
        let mid = self.fresh_mid();
        message.mtype = MessageType::Con;
        message.message_id = mid;
        let Ok(bytes) = message.to_bytes_with(&self.codec) else {
            self.send_next_queued(now, peer);
            return;
        };
        let base = self.config.ack_timeout.as_secs_f64();
        let factor = 1.0 + (self.config.ack_random_factor - 1.0) * self.rng.next_f64();
        let timeout = Duration::from_secs_f64(base * factor);
        let next_at = now + timeout;
        let state = self.peers.entry(peer.clone()).or_default();
        state.in_flight = Some(InFlight {
            mid,
            bytes: bytes.clone(),
            purpose,
            attempts: 0,
            timeout,
            next_at,
            replacement: None,
        });
        self.push_timer(
            next_at,
            Timer::Retransmit {
                peer: peer.clone(),
                mid,
            },
        );
        self.transmits.push_back(Transmit {
            peer: peer.clone(),
            bytes,
        });
    }

    fn send_next_queued(&mut self, now: Instant, peer: &Peer) {
        let next = self.peers.get_mut(peer).and_then(|p| {
            if p.in_flight.is_some() {
                None
            } else {
                p.queue.pop_front()
            }
        });
        match next {
            Some(outgoing) => {
                self.start_transmission(now, peer, outgoing.message, outgoing.purpose)
            }
            None => self.forget_peer_if_idle(peer),
        }
    }

    fn send_message(&mut self, peer: &Peer, message: &Message) {
        if let Ok(bytes) = message.to_bytes_with(&self.codec) {
            self.transmits.push_back(Transmit {
                peer: peer.clone(),
                bytes,
            });
        }
    }

    // ----------------------------------------------------------------
    // Server side: answering
    // ----------------------------------------------------------------

    /// Answers request `id`. The response's type, message id and token are
    /// set by the endpoint (piggybacked on the ACK if the ACK was not sent
    /// yet, else a separate CON; NON for a NON request). A payload larger
    /// than the block size is sent block-wise (Block2) and kept for the
    /// follow-up requests.
    ///
    /// For an observe registration ([`IncomingRequest::observe_registration`]),
    /// a 2.xx response carrying an Observe option establishes a relation
    /// whose id is returned; the endpoint sets the Observe value.
    ///
    /// A separate response waits behind the peer's CON in flight; when
    /// `max_queued_per_peer` are already waiting it displaces the oldest
    /// queued notification, else it is not sent and this returns
    /// [`RespondError::QueueFull`] (the request is finished either way).
    pub fn respond(
        &mut self,
        now: Instant,
        id: RequestId,
        response: Message,
    ) -> Result<Option<RelationId>, RespondError> {
        let pending = self
            .requests
            .remove(&id)
            .ok_or(RespondError::UnknownRequest)?;
        if let Some(state) = self.peers.get_mut(&pending.peer) {
            state.pending = state.pending.saturating_sub(1);
        }
        let separate = pending.confirmable && pending.ack_sent;
        if separate && !self.separate_slot_available(&pending.peer) {
            // Bounded like every other queued CON: refuse rather than
            // queue without limit for a peer that does not acknowledge.
            self.counters.stats.queue_drops += 1;
            return Err(RespondError::QueueFull);
        }
        let key = (pending.peer.clone(), pending.token.clone());
        let existing = self.relation_index.get(&key).copied();
        match self.finish_response(now, &pending, response) {
            Ok(relation) => Ok(relation),
            Err(error) => {
                // A relation this failed answer established was never the
                // application's: end it silently (the 5.00 below would
                // otherwise report it as declined).
                if let Some(new) = self.relation_index.get(&key).copied()
                    && Some(new) != existing
                {
                    self.cancel_relation(new, None);
                }
                let fallback = Message::new(MessageType::Ack, Code::INTERNAL_SERVER_ERROR, 0);
                let _ = self.finish_response(now, &pending, fallback);
                Err(RespondError::Encode(error))
            }
        }
    }

    /// Changes when the empty ACK for request `id` is sent (Hono's
    /// `timeoutToAck`), counted from the request's arrival. Has no effect
    /// on NON requests or once the ACK was sent.
    pub fn set_ack_timeout(
        &mut self,
        now: Instant,
        id: RequestId,
        timeout: AckTimeout,
    ) -> Result<(), RespondError> {
        let mut pending = self
            .requests
            .remove(&id)
            .ok_or(RespondError::UnknownRequest)?;
        if pending.confirmable && !pending.ack_sent {
            match timeout {
                AckTimeout::Never => pending.ack_deadline = None,
                AckTimeout::Immediately => self.send_early_ack(&mut pending),
                AckTimeout::After(delay) => match pending.arrived.checked_add(delay) {
                    Some(at) if at <= now => self.send_early_ack(&mut pending),
                    Some(at) => {
                        pending.ack_deadline = Some(at);
                        self.push_timer(at, Timer::EarlyAck(id));
                    }
                    // Beyond the clock's range: never in practice.
                    None => pending.ack_deadline = None,
                },
            }
        }
        self.requests.insert(id, pending);
        Ok(())
    }

    fn on_early_ack_timer(&mut self, _now: Instant, at: Instant, id: RequestId) {
        let Some(mut pending) = self.requests.remove(&id) else {
            return;
        };
        if !pending.ack_sent && pending.ack_deadline == Some(at) {
            self.send_early_ack(&mut pending);
        }
        self.requests.insert(id, pending);
    }

    fn send_early_ack(&mut self, pending: &mut PendingRequest) {
        pending.ack_sent = true;
        pending.ack_deadline = None;
        let ack = Message::empty_ack(pending.mid);
        if let Ok(bytes) = ack.to_bytes_with(&self.codec) {
            self.set_exchange_state(
                &pending.peer,
                pending.mid,
                ExchangeState::Pending {
                    ack: Some(bytes.clone()),
                },
            );
            self.transmits.push_back(Transmit {
                peer: pending.peer.clone(),
                bytes,
            });
        }
    }

    fn finish_response(
        &mut self,
        now: Instant,
        pending: &PendingRequest,
        mut response: Message,
    ) -> Result<Option<RelationId>, EncodeError> {
        response.token = pending.token.clone();
        if let Some(b1) = pending.block1 {
            response.set_option(OptionNumber::BLOCK1, Bytes::copy_from_slice(&b1.encode()));
        }
        let key = (pending.peer.clone(), pending.token.clone());
        let wants_relation = pending.observe == ObserveIntent::Register
            && response.code.class() == 2
            && response.observe().is_some();
        let szx = pending
            .block2
            .map_or(self.config.max_szx(), |b| b.szx.min(self.config.max_szx()));
        let mut relation = None;
        if wants_relation {
            relation = self.establish_relation(now, pending, szx);
        }
        match relation {
            Some(id) => {
                let seq = self.relations.get_mut(&id).map_or(0, |r| {
                    r.seq = observe::next(r.seq);
                    r.seq
                });
                response.set_option(
                    OptionNumber::OBSERVE,
                    Bytes::copy_from_slice(&observe::encode(seq)),
                );
            }
            None => {
                response.remove_option(OptionNumber::OBSERVE);
                if pending.observe == ObserveIntent::Register
                    && let Some(&old) = self.relation_index.get(&key)
                {
                    self.cancel_relation(old, Some(CancelReason::Declined));
                }
            }
        }
        let block_size = 16usize << szx;
        let num = pending.block2.map_or(0, |b| b.num);
        // The whole body, cached for the Block2 follow-ups only once the
        // block sent now has encoded (else the follow-ups would be served
        // a body that cannot be sent).
        let mut full = None;
        if response.payload.len() > block_size || num > 0 {
            if response.payload.len() > block_size {
                full = Some(response.clone());
            }
            response = match segment(&response, num, szx) {
                Some(block) => block,
                None => Message::new(MessageType::Ack, Code::BAD_OPTION, 0)
                    .with_token(pending.token.clone())
                    .with_payload(&b"block number out of range"[..]),
            };
        }
        let code = response.code;
        if pending.confirmable && !pending.ack_sent {
            response.mtype = MessageType::Ack;
            response.message_id = pending.mid;
            let bytes = response.to_bytes_with(&self.codec)?;
            self.set_exchange_state(
                &pending.peer,
                pending.mid,
                ExchangeState::Answered(bytes.clone()),
            );
            self.transmits.push_back(Transmit {
                peer: pending.peer.clone(),
                bytes,
            });
            if relation.is_some() {
                self.mark_con(relation, now);
            }
        } else if pending.confirmable {
            // Separate response (RFC 7252 §5.2.2): a CON of its own.
            response.to_bytes_with(&self.codec)?;
            self.enqueue_con(now, &pending.peer, response, Purpose::Separate(relation));
            self.mark_con(relation, now);
        } else {
            response.mtype = MessageType::Non;
            response.message_id = self.fresh_mid();
            let bytes = response.to_bytes_with(&self.codec)?;
            self.transmits.push_back(Transmit {
                peer: pending.peer.clone(),
                bytes,
            });
        }
        if let Some(full) = full {
            self.cache_body(now, &pending.peer, &pending.uri, &full);
        }
        self.counters.response_out(code);
        Ok(relation)
    }

    fn mark_con(&mut self, relation: Option<RelationId>, now: Instant) {
        if let Some(relation) = relation.and_then(|id| self.relations.get_mut(&id)) {
            relation.since_con = 0;
            relation.last_con = now;
        }
    }

    fn establish_relation(
        &mut self,
        now: Instant,
        pending: &PendingRequest,
        szx: u8,
    ) -> Option<RelationId> {
        let key = (pending.peer.clone(), pending.token.clone());
        if let Some(&existing) = self.relation_index.get(&key)
            && let Some(relation) = self.relations.get_mut(&existing)
        {
            relation.uri = pending.uri.clone();
            relation.szx = szx;
            return Some(existing);
        }
        let per_peer = self.peers.get(&pending.peer).map_or(0, |p| p.relations);
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
                token: pending.token.clone(),
                uri: pending.uri.clone(),
                seq,
                since_con: 0,
                last_con: now,
                szx,
            },
        );
        self.relation_index.insert(key, id);
        self.peers
            .entry(pending.peer.clone())
            .or_default()
            .relations += 1;
        self.counters.stats.relations_established += 1;
        Some(id)
    }

    /// Ends a relation; `reason` `Some` emits [`Event::ObserveCancelled`].
    fn cancel_relation(&mut self, id: RelationId, reason: Option<CancelReason>) {
        let Some(relation) = self.relations.remove(&id) else {
            return;
        };
        self.relation_index
            .remove(&(relation.peer.clone(), relation.token.clone()));
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
        notification.token = rel.token.clone();
        let ends = notification.code.class() != 2;
        let con = confirmable
            || ends
            || rel.since_con + 1 >= con_every
            || now.saturating_duration_since(rel.last_con) >= con_interval;
        if ends {
            notification.remove_option(OptionNumber::OBSERVE);
        } else {
            rel.seq = observe::next(rel.seq);
            notification.set_option(
                OptionNumber::OBSERVE,
                Bytes::copy_from_slice(&observe::encode(rel.seq)),
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

    fn remember_non_notification(&mut self, peer: &Peer, mid: u16, relation: RelationId) {
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
            .saturating_sub(self.peers.get(&new).map_or(0, |p| p.relations));
        let mut ids = Vec::new();
        let mut refused = Vec::new();
        for id in candidates {
            let collides = self.relations.get(&id).is_some_and(|r| {
                self.relation_index
                    .contains_key(&(new.clone(), r.token.clone()))
            });
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
                self.relation_index
                    .remove(&(old.clone(), relation.token.clone()));
                relation.peer = new.clone();
                self.relation_index
                    .insert((new.clone(), relation.token.clone()), *id);
            }
        }
        let mut moved_flight = None;
        let mut moved_queue = Vec::new();
        if let Some(state) = self.peers.get_mut(old) {
            state.relations = state.relations.saturating_sub(ids.len());
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
        self.peers.entry(new.clone()).or_default().relations += ids.len();
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

    // ----------------------------------------------------------------
    // Block2 cache
    // ----------------------------------------------------------------

    fn cache_body(&mut self, now: Instant, peer: &Peer, uri: &[u8], response: &Message) {
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

    fn remove_cached_body(&mut self, key: &(Peer, Vec<u8>), serial: u64) -> bool {
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

    // ----------------------------------------------------------------
    // Client side
    // ----------------------------------------------------------------

    /// Sends `request` (its code, options and payload; type, message id and
    /// token are set here) to `peer`, as CON (retransmitted, NSTART 1) or
    /// NON. A payload over `max_block_size` goes block-wise (Block1); a
    /// Block2 response is fetched block by block and handed over whole. GET
    /// with Observe 0 keeps the request alive: every notification comes as
    /// another [`Event::Response`] until [`cancel_request`](Self::cancel_request).
    pub fn send_request(
        &mut self,
        now: Instant,
        peer: Peer,
        request: Message,
        confirmable: bool,
    ) -> Result<ClientRequestId, SendRequestError> {
        if !request.code.is_request() {
            return Err(SendRequestError::NotARequest);
        }
        if request.payload.len() > self.config.max_body_size {
            return Err(SendRequestError::BodyTooLarge);
        }
        let queued = self.peers.get(&peer).is_some_and(|p| {
            p.in_flight.is_some() && p.queue.len() >= self.config.max_queued_per_peer
        });
        if confirmable && queued {
            return Err(SendRequestError::QueueFull);
        }
        let id = ClientRequestId(self.fresh_id());
        let token = Bytes::copy_from_slice(&self.rng.next_u64().to_be_bytes());
        let observe = request.code == Code::GET && request.observe() == Some(observe::REGISTER);
        let mut template = request.clone();
        template.payload = Bytes::new();
        template.token = token.clone();
        template.remove_option(OptionNumber::BLOCK1);
        let body = request.payload;
        let block1 =
            (body.len() > self.config.max_block_size).then_some((0usize, self.config.max_szx()));
        let mut client = ClientRequest {
            peer: peer.clone(),
            token: token.clone(),
            template,
            body,
            confirmable,
            observe,
            phase: ClientPhase::Sent,
            deadline: None,
            block1,
            block2_body: Vec::new(),
            block2_first: None,
        };
        let first = client_block1_message(&client);
        first.to_bytes_with(&self.codec)?;
        if !confirmable {
            let at = now + self.config.response_timeout;
            client.deadline = Some(at);
            self.push_timer(at, Timer::ClientDeadline(id));
        }
        self.client.insert(id, client);
        self.client_tokens.insert((peer.clone(), token), id);
        self.send_client_message(now, id, first);
        Ok(id)
    }

    /// Forgets a client request (e.g. stops observing: the next
    /// notification is answered with RST, RFC 7641 §3.6).
    pub fn cancel_request(&mut self, id: ClientRequestId) -> bool {
        match self.client.remove(&id) {
            Some(request) => {
                self.client_tokens.remove(&(request.peer, request.token));
                true
            }
            None => false,
        }
    }

    fn send_client_message(&mut self, now: Instant, id: ClientRequestId, mut message: Message) {
        let Some(client) = self.client.get_mut(&id) else {
            return;
        };
        let peer = client.peer.clone();
        if client.confirmable {
            client.phase = ClientPhase::Sent;
            client.deadline = None;
            if !self.enqueue_con(now, &peer, message, Purpose::Request(id)) {
                self.fail_client(id, RequestFailure::Timeout);
            }
        } else {
            let at = now + self.config.response_timeout;
            client.deadline = Some(at);
            self.push_timer(at, Timer::ClientDeadline(id));
            message.mtype = MessageType::Non;
            message.message_id = self.fresh_mid();
            self.send_message(&peer, &message);
        }
    }

    fn fail_client(&mut self, id: ClientRequestId, reason: RequestFailure) {
        if self.cancel_request(id) {
            self.events.push_back(Event::RequestFailed {
                request: id,
                reason,
            });
        }
    }

    fn on_response(&mut self, now: Instant, peer: Peer, msg: &MessageRef<'_>) {
        let mid = msg.message_id();
        let token = Bytes::copy_from_slice(msg.token());
        match msg.mtype() {
            MessageType::Ack => {
                let matches = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.in_flight.as_ref())
                    .is_some_and(|f| f.mid == mid && matches!(f.purpose, Purpose::Request(_)));
                if !matches {
                    return; // late duplicate or unknown: ignored
                }
                let flight = self.peers.get_mut(&peer).and_then(|p| p.in_flight.take());
                let Some(flight) = flight else { return };
                let Purpose::Request(id) = flight.purpose else {
                    return;
                };
                self.send_next_queued(now, &peer);
                if self.client.get(&id).is_some_and(|c| c.token == token) {
                    self.on_client_response(now, id, msg);
                }
            }
            MessageType::Con | MessageType::Non => {
                let confirmable = msg.mtype() == MessageType::Con;
                if self.answer_duplicate(now, &peer, mid, confirmable) {
                    return;
                }
                self.remember_exchange(now, &peer, mid, confirmable);
                let id = self.client_tokens.get(&(peer.clone(), token)).copied();
                let reply = match id {
                    Some(_) if confirmable => Some(Message::empty_ack(mid)),
                    Some(_) => None,
                    // RFC 7252 §5.3.2 / RFC 7641 §3.6: reject what we do not expect.
                    None => Some(Message::reset(mid)),
                };
                if let Some(reply) = reply
                    && let Ok(bytes) = reply.to_bytes_with(&self.codec)
                {
                    if confirmable {
                        self.set_exchange_state(&peer, mid, ExchangeState::Answered(bytes.clone()));
                    }
                    self.transmits.push_back(Transmit {
                        peer: peer.clone(),
                        bytes,
                    });
                }
                if let Some(id) = id {
                    // A separate response also completes a CON still waiting
                    // for its ACK (the ACK may have been lost).
                    let flight_is_ours = self
                        .peers
                        .get(&peer)
                        .and_then(|p| p.in_flight.as_ref())
                        .is_some_and(|f| f.purpose == Purpose::Request(id));
                    if flight_is_ours {
                        if let Some(state) = self.peers.get_mut(&peer) {
                            state.in_flight = None;
                        }
                        self.send_next_queued(now, &peer);
                    }
                    self.on_client_response(now, id, msg);
                }
            }
            MessageType::Rst => {}
        }
    }

    fn on_client_response(&mut self, now: Instant, id: ClientRequestId, msg: &MessageRef<'_>) {
        let max_body = self.config.max_body_size;
        let max_szx = self.config.max_szx();
        let Some(client) = self.client.get_mut(&id) else {
            return;
        };
        let peer = client.peer.clone();
        // Block1: the server wants the next block.
        if msg.code() == Code::CONTINUE {
            if let Some((offset, szx)) = client.block1 {
                let sent = (16usize << szx).min(client.body.len().saturating_sub(offset));
                let next_offset = offset + sent;
                let server_szx = msg.block1().map_or(szx, |b| b.szx).min(szx).min(max_szx);
                if next_offset < client.body.len() {
                    client.block1 = Some((next_offset, server_szx));
                    let next = client_block1_message(client);
                    self.send_client_message(now, id, next);
                    return;
                }
            }
            self.fail_client(id, RequestFailure::Protocol);
            return;
        }
        let observing = client.phase == ClientPhase::Observing;
        if let Some(b2) = msg.block2() {
            if b2.num == 0 {
                client.block2_body.clear();
                let mut first = msg.to_message();
                first.payload = Bytes::new();
                client.block2_first = Some(first);
            }
            if b2.offset() != client.block2_body.len() {
                if observing {
                    return;
                }
                self.fail_client(id, RequestFailure::Protocol);
                return;
            }
            client.block2_body.extend_from_slice(msg.payload());
            if client.block2_body.len() > max_body {
                self.fail_client(id, RequestFailure::BodyTooLarge);
                return;
            }
            if b2.more && !observing {
                let mut next = client.template.clone();
                next.remove_option(OptionNumber::OBSERVE);
                next.remove_option(OptionNumber::BLOCK1);
                next.set_option(
                    OptionNumber::BLOCK2,
                    Bytes::copy_from_slice(
                        &Block {
                            num: b2.num + 1,
                            more: false,
                            szx: b2.szx,
                        }
                        .encode(),
                    ),
                );
                client.block1 = None;
                self.send_client_message(now, id, next);
                return;
            }
        }
        let mut response = msg.to_message();
        if msg.block2().is_some() && !observing {
            // The reassembled response carries the first block's options:
            // the follow-ups' answers have no Observe (RFC 7959 §3.4).
            if let Some(first) = client.block2_first.take() {
                response = first;
            }
            response.payload = Bytes::from(std::mem::take(&mut client.block2_body));
            response.remove_option(OptionNumber::BLOCK2);
        }
        let keep = client.observe && response.code.class() == 2 && response.observe().is_some();
        if keep {
            client.phase = ClientPhase::Observing;
            client.deadline = None;
            client.block1 = None;
        }
        self.events.push_back(Event::Response {
            request: id,
            peer,
            response,
        });
        if !keep {
            self.cancel_request(id);
        }
    }

    // ----------------------------------------------------------------
    // small helpers
    // ----------------------------------------------------------------

    /// Schedules `timer`. Timers are not removed when they become moot
    /// (answered requests, ACKed CONs, replaced deadlines: they are
    /// skipped when due), so once the heap holds twice as many as can be
    /// live, the dead and duplicate ones are dropped (amortised O(log n)).
    fn push_timer(&mut self, at: Instant, timer: Timer) {
        let live_bound = self.peers.len() + self.requests.len() + self.client.len();
        if self.timers.len() >= 2 * live_bound + 64 {
            let mut kept: Vec<Reverse<(Instant, Timer)>> = std::mem::take(&mut self.timers)
                .into_vec()
                .into_iter()
                .filter(|Reverse((at, timer))| self.timer_is_live(*at, timer))
                .collect();
            kept.sort_unstable();
            kept.dedup();
            self.timers = BinaryHeap::from(kept);
        }
        self.timers.push(Reverse((at, timer)));
    }

    /// Whether a scheduled timer would still do something when due (the
    /// same tests its handlers apply).
    fn timer_is_live(&self, at: Instant, timer: &Timer) -> bool {
        match timer {
            Timer::Retransmit { peer, mid } => self
                .peers
                .get(peer)
                .and_then(|p| p.in_flight.as_ref())
                .is_some_and(|f| f.mid == *mid && f.next_at == at),
            Timer::EarlyAck(id) => self
                .requests
                .get(id)
                .is_some_and(|p| !p.ack_sent && p.ack_deadline == Some(at)),
            Timer::ClientDeadline(id) => {
                self.client.get(id).is_some_and(|c| c.deadline == Some(at))
            }
        }
    }

    fn fresh_mid(&mut self) -> u16 {
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        mid
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn fresh_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }
}

/// The Block1 message for the client's current offset (or the whole
/// request if it fits one block).
fn client_block1_message(client: &ClientRequest) -> Message {
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
fn segment(full: &Message, num: u32, szx: u8) -> Option<Message> {
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

/// The request's target as bytes (`path/segments?query&entries`): the key
/// of Block1 reassembly, the Block2 cache and relations.
fn uri_key(msg: &MessageRef<'_>) -> Vec<u8> {
    let mut key = Vec::new();
    for (index, segment) in msg.uri_path().enumerate() {
        if index > 0 {
            key.push(b'/');
        }
        key.extend_from_slice(segment);
    }
    for (index, entry) in msg.uri_query().enumerate() {
        key.push(if index == 0 { b'?' } else { b'&' });
        key.extend_from_slice(entry);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let config = EndpointConfig {
            rng_seed: Some(1),
            ..EndpointConfig::default()
        };
        Endpoint::new(config).unwrap()
    }

    #[test]
    fn moot_timers_do_not_pile_up() {
        let mut ep = endpoint();
        let now = Instant::now();
        let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
        // Answered requests leave their early-ACK timer (default After(1 s)).
        for mid in 0..5000u16 {
            let get = Message::new(MessageType::Con, Code::GET, mid).with_uri_path("x");
            ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
            let Some(Event::Request(req)) = ep.poll_event() else {
                panic!("no request")
            };
            ep.respond(
                now,
                req.id,
                Message::new(MessageType::Ack, Code::CONTENT, 0),
            )
            .unwrap();
            while ep.poll_transmit().is_some() {}
        }
        assert!(ep.timers.len() <= 2 + 64 + 1, "{} timers", ep.timers.len());
        // Repeated set_ack_timeout on one request.
        let get = Message::new(MessageType::Con, Code::GET, 9999).with_uri_path("x");
        ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
        let Some(Event::Request(req)) = ep.poll_event() else {
            panic!("no request")
        };
        for ms in 0..5000u64 {
            let delay = Duration::from_millis(2000 + ms % 3);
            ep.set_ack_timeout(now, req.id, AckTimeout::After(delay))
                .unwrap();
        }
        assert!(
            ep.timers.len() <= 2 * 2 + 64 + 1,
            "{} timers",
            ep.timers.len()
        );
        // The live one still fires.
        ep.handle_timeout(now + Duration::from_millis(2002));
        let ack = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
        assert_eq!(ack.mtype, MessageType::Ack);
        assert!(ack.code.is_empty());
    }
}
