//! The sans-IO message layer: deduplication, piggybacked and separate
//! responses, retransmission, observe relations and block-wise transfers.
//!
//! This file holds the [`Endpoint`] and its request/response, retransmission
//! and client paths; the submodules add the rest of its methods:
//! [`dedup`] (duplicate detection and cached answers), [`observe`]
//! (relations and notifications) and [`blockwise`] (Block1 reassembly, the
//! Block2 cache and segmentation).

mod blockwise;
mod dedup;
mod observe;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_codec::option_value::observe as observe_option;
use coap_codec::{
    Block, Code, CodecSettings, EncodeError, Message, MessageRef, MessageType, OptionNumber,
    encode_uint, peek_header, validate_request,
};

use crate::config::{AckTimeout, ConfigError, EndpointConfig};
use crate::fast_hash::{FastMap, fast_map};
use crate::peer::Peer;
use crate::random::SeededRng;
use crate::reaction::{Fault, Reaction, wire_reaction};
use crate::small_bytes::SmallBytes;
use crate::stats::{Counters, Stats};
use crate::types::{
    CancelReason, ClientRequestId, Event, IncomingRequest, NotifyError, RelationId, RequestFailure,
    RequestId, RespondError, SendRequestError, Transmit,
};

use blockwise::{CachedBody, Reassemblies, client_block1_message, segment};
use dedup::{DedupFifo, ExchangeState, ExchangeTable};
use observe::{Relation, RelationIndex};

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
    peers: FastMap<Peer, PeerState>,
    exchanges: ExchangeTable,
    exchange_order: VecDeque<(Instant, u64, Peer, u16)>,
    requests: FastMap<RequestId, PendingRequest>,
    relations: FastMap<RelationId, Relation>,
    relation_index: RelationIndex,
    recent_non: FastMap<(Peer, u16), RelationId>,
    recent_non_order: VecDeque<(Peer, u16)>,
    client: FastMap<ClientRequestId, ClientRequest>,
    client_tokens: FastMap<(Peer, Bytes), ClientRequestId>,
    block_cache: FastMap<(Peer, Vec<u8>), CachedBody>,
    block_cache_order: VecDeque<(Instant, u64, Peer, Vec<u8>)>,
    block_cache_bytes: usize,
    reassemblies: Reassemblies,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retransmit { peer: Peer, mid: u16 },
    EarlyAck(RequestId),
    ClientDeadline(ClientRequestId),
}

/// What the endpoint keeps per peer. Most peers are idle observers with
/// one deduplication entry, so it is small (64 bytes): the CON in flight is
/// boxed, the queue allocates only when used, and one dedup entry is held
/// inline.
#[derive(Debug, Default)]
struct PeerState {
    dedup: DedupFifo,
    in_flight: Option<Box<InFlight>>,
    queue: VecDeque<Outgoing>,
    /// Requests handed to the application, not answered yet (at most
    /// `max_pending_per_peer`).
    pending: u32,
    /// Observe relations (at most `max_relations_per_peer`).
    relations: u32,
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
        let dedup_capacity = config.max_dedup_total.min(4096);
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
            peers: fast_map(),
            // Sized for a steady load up front (hashbrown rehashed the
            // growing table regularly under SipHash-era profiles).
            exchanges: ExchangeTable::with_capacity(dedup_capacity),
            exchange_order: VecDeque::new(),
            requests: fast_map(),
            relations: fast_map(),
            relation_index: RelationIndex::default(),
            recent_non: fast_map(),
            recent_non_order: VecDeque::new(),
            client: fast_map(),
            client_tokens: fast_map(),
            block_cache: fast_map(),
            block_cache_order: VecDeque::new(),
            block_cache_bytes: 0,
            reassemblies: Reassemblies::default(),
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
        stats.block1_evictions = self.reassemblies.evictions();
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
        consider(self.reassemblies.next_expiry());
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
        // A burst (e.g. thousands of registrations, each with an early-ACK
        // timer) leaves the heap's capacity behind; give most of it back
        // once the heap is mostly empty (amortised O(1) per timer).
        if self.timers.capacity() > 1024 && self.timers.len() * 4 < self.timers.capacity() {
            self.timers.shrink_to(self.timers.len() * 2);
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
                ExchangeState::Answered(SmallBytes::new(&bytes)),
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
                Some(observe_option::DEREGISTER) => {
                    if let Some(relation) = self.relation_of(&peer, &token) {
                        self.cancel_relation(relation, Some(CancelReason::Deregistered));
                    }
                }
                Some(observe_option::REGISTER) if !token.is_empty() => {
                    intent = ObserveIntent::Register
                }
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

        let peer_pending = self.peers.get(&peer).map_or(0, |p| p.pending as usize);
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
        let state = self.peers.entry(peer.clone()).or_default();
        state.pending = state.pending.saturating_add(1);
        self.requests.insert(id, pending);
        self.events.push_back(Event::Request(IncomingRequest {
            id,
            peer,
            message,
            observe_registration: intent == ObserveIntent::Register,
        }));
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
        state.in_flight = Some(Box::new(InFlight {
            mid,
            bytes: bytes.clone(),
            purpose,
            attempts: 0,
            timeout,
            next_at,
            replacement: None,
        }));
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
        let existing = self.relation_of(&pending.peer, &pending.token);
        match self.finish_response(now, &pending, response) {
            Ok(relation) => Ok(relation),
            Err(error) => {
                // A relation this failed answer established was never the
                // application's: end it silently (the 5.00 below would
                // otherwise report it as declined).
                if let Some(new) = self.relation_of(&pending.peer, &pending.token)
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
            self.set_exchange_state(&pending.peer, pending.mid, ExchangeState::PendingAcked);
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
                    r.seq = observe_option::next(r.seq);
                    r.seq
                });
                response.set_option(
                    OptionNumber::OBSERVE,
                    Bytes::copy_from_slice(&observe_option::encode(seq)),
                );
            }
            None => {
                response.remove_option(OptionNumber::OBSERVE);
                if pending.observe == ObserveIntent::Register
                    && let Some(old) = self.relation_of(&pending.peer, &pending.token)
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
                ExchangeState::Answered(SmallBytes::new(&bytes)),
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
        let observe =
            request.code == Code::GET && request.observe() == Some(observe_option::REGISTER);
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
                let ours = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.in_flight.as_ref())
                    .and_then(|f| match f.purpose {
                        Purpose::Request(id) if f.mid == mid => Some(id),
                        _ => None,
                    });
                let Some(id) = ours else {
                    return; // late duplicate or unknown: ignored
                };
                if self.client.get(&id).is_none_or(|c| c.token != token) {
                    // It acknowledges our CON but answers another token
                    // (RFC 7252 §5.3.2): not our response. Taken as an
                    // empty ACK, so the request waits for a separate
                    // response under its deadline instead of for ever.
                    self.on_ack(now, &peer, mid);
                    return;
                }
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.in_flight = None;
                }
                self.send_next_queued(now, &peer);
                self.on_client_response(now, id, msg);
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
                        self.set_exchange_state(
                            &peer,
                            mid,
                            ExchangeState::Answered(SmallBytes::new(&bytes)),
                        );
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
