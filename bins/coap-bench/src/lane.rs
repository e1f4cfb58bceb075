//! One lane: a socket (or DTLS session) shared by a group of simulated
//! clients, driven by a single tokio task that sends, receives, retransmits
//! and times out without locks or channels.
//!
//! ```text
//!  issue(client) ─ template ─ patch mid/token/ts ─▶ transport.send
//!      ▲                                              │
//!      │ closed loop: next request          UDP datagram from the server
//!      │                                              ▼
//!  complete(slot) ◀── match ACK/RST by message id, CON/NON by token
//!      ▲
//!  timers: timeouts (FIFO, constant timeout) · CON retransmissions (heap)
//! ```
//!
//! Requests in flight live in a slab of slots. The 8-byte token is the slot
//! index and a generation number, so a response (piggy-backed, separate or
//! an echoed request) finds its slot without hashing; an empty ACK or RST
//! finds it through a small message-id map of the requests in flight. Message
//! ids are allocated per lane (per socket), because the server deduplicates
//! per source endpoint. Stale timer entries are skipped by generation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_codec::{MessageRef, MessageType};
use hdrhistogram::Histogram;

use crate::report::{self, Counters, FLUSH_INTERVAL, RunProgress};
use crate::target::{TOKEN_LEN, Template, wall_micros};
use crate::transport::Transport;

/// Most requests in flight on one lane (half the message-id space, so a
/// message id is not reused while the server may still remember it).
pub(crate) const MAX_IN_FLIGHT_PER_LANE: usize = 32_768;
/// Datagrams handled per wake-up before timers get a turn.
const RECV_BATCH: usize = 64;
/// Open-loop sends per wake-up before receiving gets a turn.
const SEND_BATCH: usize = 256;
const NO_SLOT: u32 = u32::MAX;
/// Open loop: a request may go out this much before its scheduled time.
/// tokio's timer wheel has 1 ms granularity and rounds up; waking 1 ms early
/// keeps sends on schedule instead of up to 1 ms late (which would be
/// charged to the server's latency).
const OPEN_LOOP_EARLY: Duration = Duration::from_millis(1);

/// What all lanes of a run share.
#[derive(Debug)]
pub(crate) struct Plan {
    /// One template, or one per client (URI with `{client}`).
    pub(crate) templates: Vec<Template>,
    pub(crate) confirmable: bool,
    /// Per-request limit, from the (scheduled) send.
    pub(crate) timeout: Duration,
    /// RFC 7252 ACK_TIMEOUT (first retransmission after 1–1.5 × this).
    pub(crate) ack_timeout: Duration,
    /// RFC 7252 MAX_RETRANSMIT.
    pub(crate) max_retransmit: u32,
    /// Requests scheduled before this are not measured.
    pub(crate) warmup_end: Instant,
    /// No request is sent from this instant on.
    pub(crate) stop_at: Option<Instant>,
    /// At most this many measured requests in total.
    pub(crate) max_requests: Option<u64>,
    pub(crate) issued: AtomicU64,
    /// Set on Ctrl-C or when the request budget is used up.
    pub(crate) stop: AtomicBool,
    pub(crate) progress: Arc<RunProgress>,
}

enum Permit {
    Stop,
    Warmup,
    Measured,
}

impl Plan {
    fn permit(&self, now: Instant) -> Permit {
        if self.stop.load(Ordering::Relaxed) || self.stop_at.is_some_and(|at| now >= at) {
            return Permit::Stop;
        }
        if now < self.warmup_end {
            return Permit::Warmup;
        }
        if let Some(max) = self.max_requests
            && self.issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            self.stop.store(true, Ordering::Relaxed);
            return Permit::Stop;
        }
        Permit::Measured
    }

    fn template(&self, client: u32) -> Option<&Template> {
        if self.templates.len() == 1 {
            self.templates.first()
        } else {
            self.templates.get(client as usize)
        }
    }
}

/// Open-loop schedule of one lane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenLoop {
    /// Time between two sends of this lane.
    pub(crate) interval: Duration,
    /// The first send.
    pub(crate) first: Instant,
}

/// What a lane hands back at the end.
#[derive(Debug)]
pub(crate) struct LaneResult {
    pub(crate) counters: Counters,
    /// When this lane stopped sending.
    pub(crate) send_end: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: Instant,
    slot: u32,
    generation: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    active: bool,
    generation: u32,
    mid: u16,
    client: u32,
    /// Latency is measured from here (the scheduled time in open loop).
    scheduled: Instant,
    measured: bool,
    /// An empty ACK came: stop retransmitting, wait for the response.
    acked: bool,
    retransmits: u32,
    backoff: Duration,
    wall: u64,
}

/// One socket and its clients.
pub(crate) struct Lane {
    plan: Arc<Plan>,
    progress_index: usize,
    transport: Transport,
    clients: Vec<u32>,
    open: Option<(OpenLoop, Instant, usize)>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    /// Message id → slot of the requests in flight.
    mid_slot: HashMap<u16, u32, BuildHasherDefault<MidHasher>>,
    next_mid: u16,
    next_generation: u32,
    timeouts: VecDeque<Deadline>,
    retransmits: BinaryHeap<Reverse<Deadline>>,
    out: Vec<u8>,
    counters: Counters,
    interval: Histogram<u64>,
    sending: bool,
    send_end: Option<Instant>,
    /// Clients whose send failed; retried at the next flush.
    failed: Vec<u32>,
    next_flush: Instant,
    rng: u64,
}

impl Lane {
    /// A lane for `clients` (global client indices) on `transport`.
    pub(crate) fn new(
        plan: Arc<Plan>,
        progress_index: usize,
        transport: Transport,
        clients: Vec<u32>,
        open: Option<OpenLoop>,
        seed: u64,
    ) -> Lane {
        let mut rng = seed | 1;
        let next_mid = (xorshift(&mut rng) & 0xffff) as u16;
        Lane {
            plan,
            progress_index,
            transport,
            clients,
            open: open.map(|o| (o, o.first, 0)),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            mid_slot: HashMap::default(),
            next_mid,
            next_generation: (xorshift(&mut rng) & 0xffff_ffff) as u32,
            timeouts: VecDeque::new(),
            retransmits: BinaryHeap::new(),
            out: Vec::with_capacity(2048),
            counters: Counters::default(),
            interval: report::new_histogram(),
            sending: true,
            send_end: None,
            failed: Vec::new(),
            next_flush: Instant::now(),
            rng,
        }
    }

    /// Runs until sending has stopped and every request is answered or
    /// timed out.
    pub(crate) async fn run(mut self) -> LaneResult {
        let mut buf = vec![0u8; 65_536];
        let start = Instant::now();
        self.next_flush = start + FLUSH_INTERVAL;
        if self.open.is_none() {
            for i in 0..self.clients.len() {
                if let Some(&client) = self.clients.get(i) {
                    self.issue(client, start, start);
                }
            }
        }
        let sleep = tokio::time::sleep_until(start.into());
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            self.on_time(now);
            if !self.sending && self.in_flight == 0 {
                break;
            }
            let deadline = tokio::time::Instant::from(self.next_deadline());
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            let backlog = self.transport.has_backlog();
            tokio::select! {
                biased;
                received = self.transport.socket().recv_from(&mut buf) => {
                    self.on_received(received, &buf);
                    for _ in 0..RECV_BATCH {
                        match self.transport.socket().try_recv_from(&mut buf) {
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                            received => self.on_received(received, &buf),
                        }
                    }
                }
                _ = self.transport.socket().writable(), if backlog => {
                    self.transport.flush_backlog();
                }
                () = &mut sleep => {}
            }
        }
        self.transport.close();
        self.transport
            .drain_backlog(Duration::from_millis(200))
            .await;
        self.flush();
        LaneResult {
            counters: self.counters,
            send_end: self.send_end.unwrap_or_else(Instant::now),
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = self.next_flush;
        if let Some(d) = self.timeouts.front() {
            next = next.min(d.at);
        }
        if let Some(Reverse(d)) = self.retransmits.peek() {
            next = next.min(d.at);
        }
        if self.sending {
            if let Some((_, due, _)) = self.open {
                next = next.min(due.checked_sub(OPEN_LOOP_EARLY).unwrap_or(due));
            }
            if let Some(stop) = self.plan.stop_at {
                next = next.min(stop);
            }
        }
        next
    }

    fn on_received(&mut self, received: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        let (n, from) = match received {
            Ok(received) => received,
            // ICMP errors surface here; the requests time out.
            Err(_) => return,
        };
        let now = Instant::now();
        if from != self.transport.peer() {
            self.counters.unmatched += 1;
            return;
        }
        let datagram = buf.get(..n).unwrap_or_default();
        match self.transport.handle_datagram(datagram) {
            Ok(false) => self.on_coap(datagram, now),
            Ok(true) => {
                while let Some(plaintext) = self.transport.next_plaintext() {
                    self.on_coap(&plaintext, now);
                }
            }
            Err(error) => {
                eprintln!("coap-bench: {error}");
                self.stop_sending(now);
            }
        }
    }

    fn on_coap(&mut self, datagram: &[u8], now: Instant) {
        let Ok(msg) = MessageRef::parse(datagram) else {
            self.counters.malformed += 1;
            return;
        };
        match msg.mtype() {
            MessageType::Ack | MessageType::Rst => {
                let index = self
                    .mid_slot
                    .get(&msg.message_id())
                    .copied()
                    .unwrap_or(NO_SLOT);
                let Some(slot) = self.slots.get_mut(index as usize).filter(|s| s.active) else {
                    self.counters.unmatched += 1;
                    return;
                };
                if msg.mtype() == MessageType::Rst {
                    if slot.measured {
                        self.counters.resets += 1;
                    }
                    self.finish(index, now);
                } else if msg.code().is_empty() {
                    slot.acked = true;
                } else if token_of(index, slot.generation) == msg.token() {
                    self.complete(index, msg.code().to_u8(), now);
                } else {
                    self.counters.unmatched += 1;
                }
            }
            MessageType::Con | MessageType::Non => {
                let matched = slot_of(msg.token()).filter(|(index, generation)| {
                    self.slots
                        .get(*index as usize)
                        .is_some_and(|s| s.active && s.generation == *generation)
                });
                let is_request = msg.code().is_request();
                match matched {
                    // An echoed request is its own response only with the
                    // same message id.
                    Some((index, _)) if is_request => {
                        let same_mid = self
                            .slots
                            .get(index as usize)
                            .is_some_and(|s| s.mid == msg.message_id());
                        if same_mid {
                            self.complete(index, msg.code().to_u8(), now);
                        } else {
                            self.counters.unmatched += 1;
                        }
                    }
                    Some((index, _)) => {
                        if msg.mtype() == MessageType::Con {
                            self.send_empty(MessageType::Ack, msg.message_id());
                        }
                        self.complete(index, msg.code().to_u8(), now);
                    }
                    None => {
                        self.counters.unmatched += 1;
                        // RFC 7252 §4.2: reject a CON we cannot process.
                        if msg.mtype() == MessageType::Con && !is_request {
                            self.send_empty(MessageType::Rst, msg.message_id());
                        }
                    }
                }
            }
        }
    }

    fn send_empty(&mut self, mtype: MessageType, mid: u16) {
        let [hi, lo] = mid.to_be_bytes();
        let datagram = [0x40 | (mtype.to_bits() << 4), 0, hi, lo];
        let _ = self.transport.send(&datagram);
    }

    /// Sends a new request for `client`, scheduled at `scheduled`.
    fn issue(&mut self, client: u32, scheduled: Instant, now: Instant) {
        if !self.sending {
            return;
        }
        let measured = match self.plan.permit(now) {
            Permit::Stop => return self.stop_sending(now),
            Permit::Warmup => false,
            Permit::Measured => true,
        };
        if self.in_flight >= MAX_IN_FLIGHT_PER_LANE {
            if measured {
                self.counters.backlog += 1;
            }
            return;
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = self.slots.len() as u32;
                self.slots.push(Slot {
                    active: false,
                    generation: 0,
                    mid: 0,
                    client: 0,
                    scheduled: now,
                    measured: false,
                    acked: false,
                    retransmits: 0,
                    backoff: Duration::ZERO,
                    wall: 0,
                });
                index
            }
        };
        let mid = loop {
            let mid = self.next_mid;
            self.next_mid = self.next_mid.wrapping_add(1);
            if !self.mid_slot.contains_key(&mid) {
                break mid;
            }
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let Some(template) = self.plan.template(client) else {
            self.free.push(index);
            return;
        };
        let wall = if template.has_timestamp() {
            wall_micros()
        } else {
            0
        };
        template.write(&mut self.out, mid, &token_of(index, generation), wall);
        if self.transport.send(&self.out).is_err() {
            if measured {
                self.counters.send_errors += 1;
            }
            self.free.push(index);
            if self.open.is_none() {
                self.failed.push(client);
            }
            return;
        }
        if measured {
            self.counters.sent += 1;
        }
        let backoff = if self.plan.confirmable {
            // ACK_TIMEOUT × a random factor in [1, 1.5) (RFC 7252 §4.8).
            let fraction = (xorshift(&mut self.rng) % 1000) as f64 / 2000.0;
            self.plan.ack_timeout.mul_f64(1.0 + fraction)
        } else {
            Duration::ZERO
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = Slot {
                active: true,
                generation,
                mid,
                client,
                scheduled,
                measured,
                acked: false,
                retransmits: 0,
                backoff,
                wall,
            };
        }
        self.mid_slot.insert(mid, index);
        self.in_flight += 1;
        let deadline = Deadline {
            at: scheduled + self.plan.timeout,
            slot: index,
            generation,
        };
        // Deadlines are pushed in send order; keep the queue monotonic.
        let at = match self.timeouts.back() {
            Some(last) if last.at > deadline.at => last.at,
            _ => deadline.at,
        };
        self.timeouts.push_back(Deadline { at, ..deadline });
        if self.plan.confirmable {
            self.retransmits.push(Reverse(Deadline {
                at: now + backoff,
                slot: index,
                generation,
            }));
        }
    }

    /// A response arrived for `index`.
    fn complete(&mut self, index: u32, code: u8, now: Instant) {
        let Some(slot) = self.slots.get(index as usize).copied() else {
            return;
        };
        if slot.measured {
            self.counters.responses += 1;
            if let Some(count) = self.counters.codes.get_mut(usize::from(code)) {
                *count += 1;
            }
            let micros = now.saturating_duration_since(slot.scheduled).as_micros();
            report::record(
                &mut self.interval,
                u64::try_from(micros).unwrap_or(u64::MAX),
            );
            self.counters.last_response = Some(now);
        }
        self.finish(index, now);
    }

    /// Frees `index`; in closed loop its client sends the next request.
    fn finish(&mut self, index: u32, now: Instant) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        slot.active = false;
        let (mid, client) = (slot.mid, slot.client);
        self.mid_slot.remove(&mid);
        self.free.push(index);
        self.in_flight -= 1;
        if self.open.is_none() {
            self.issue(client, now, now);
        }
    }

    fn on_time(&mut self, now: Instant) {
        while let Some(&deadline) = self.timeouts.front() {
            if deadline.at > now {
                break;
            }
            self.timeouts.pop_front();
            let live = self
                .slots
                .get(deadline.slot as usize)
                .filter(|s| s.active && s.generation == deadline.generation)
                .map(|s| s.measured);
            if let Some(measured) = live {
                if measured {
                    self.counters.timeouts += 1;
                }
                self.finish(deadline.slot, now);
            }
        }
        while let Some(&Reverse(deadline)) = self.retransmits.peek() {
            if deadline.at > now {
                break;
            }
            self.retransmits.pop();
            self.retransmit(deadline, now);
        }
        if self.sending
            && (self.plan.stop.load(Ordering::Relaxed)
                || self.plan.stop_at.is_some_and(|at| now >= at))
        {
            self.stop_sending(now);
        }
        if let Some((open, mut due, mut next_client)) = self.open {
            let mut sent = 0;
            while self.sending && due <= now + OPEN_LOOP_EARLY && sent < SEND_BATCH {
                if let Some(&client) = self.clients.get(next_client) {
                    // Late: latency counts from the schedule (no coordinated
                    // omission). Early (timer granularity): from the send.
                    self.issue(client, due.min(now), now);
                }
                next_client = (next_client + 1) % self.clients.len().max(1);
                due += open.interval;
                sent += 1;
            }
            self.open = Some((open, due, next_client));
        }
        if now >= self.next_flush {
            self.flush();
            self.next_flush = now + FLUSH_INTERVAL;
            for client in std::mem::take(&mut self.failed) {
                self.issue(client, now, now);
            }
        }
    }

    fn retransmit(&mut self, deadline: Deadline, now: Instant) {
        let Some(slot) = self.slots.get_mut(deadline.slot as usize) else {
            return;
        };
        if !slot.active
            || slot.generation != deadline.generation
            || slot.acked
            || slot.retransmits >= self.plan.max_retransmit
        {
            return;
        }
        slot.retransmits += 1;
        slot.backoff *= 2;
        let slot = *slot;
        if slot.measured {
            self.counters.retransmissions += 1;
        }
        if let Some(template) = self.plan.template(slot.client) {
            template.write(
                &mut self.out,
                slot.mid,
                &token_of(deadline.slot, slot.generation),
                slot.wall,
            );
            let _ = self.transport.send(&self.out);
        }
        self.retransmits.push(Reverse(Deadline {
            at: now + slot.backoff,
            ..deadline
        }));
    }

    fn stop_sending(&mut self, now: Instant) {
        if self.sending {
            self.sending = false;
            self.send_end = Some(now);
        }
    }

    fn flush(&mut self) {
        if let Some(lane) = self.plan.progress.lanes.get(self.progress_index) {
            lane.publish(&self.counters);
        }
        self.plan.progress.merge_latency(&mut self.interval);
    }
}

pub(crate) fn token_of(slot: u32, generation: u32) -> [u8; TOKEN_LEN] {
    let mut token = [0u8; TOKEN_LEN];
    let (a, b) = token.split_at_mut(4);
    a.copy_from_slice(&slot.to_be_bytes());
    b.copy_from_slice(&generation.to_be_bytes());
    token
}

fn slot_of(token: &[u8]) -> Option<(u32, u32)> {
    let token: &[u8; TOKEN_LEN] = token.try_into().ok()?;
    let (a, b) = token.split_at(4);
    Some((
        u32::from_be_bytes(a.try_into().ok()?),
        u32::from_be_bytes(b.try_into().ok()?),
    ))
}

/// Hashes a message id with one multiplication (Fibonacci hashing): the
/// keys are our own sequential ids, so no DoS-resistant hash is needed.
#[derive(Debug, Default, Clone, Copy)]
struct MidHasher(u64);

impl Hasher for MidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8 | u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// xorshift64: cheap randomness for message ids and retransmission jitter.
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{RequestShape, Target};
    use coap_codec::Code;

    /// A lane with one closed-loop CON client aimed at `server`; nothing is
    /// awaited: the tests call the lane's handlers with chosen instants.
    fn lane(server: &std::net::UdpSocket, t0: Instant) -> Lane {
        let target = Target::parse(&format!("coap://{}/x", server.local_addr().unwrap())).unwrap();
        let shape = RequestShape {
            mtype: MessageType::Con,
            code: Code::GET,
            content_format: None,
            observe: None,
            payload: Vec::new(),
            timestamp: false,
        };
        let plan = Arc::new(Plan {
            templates: vec![Template::build(&target, &shape, 0, &[]).unwrap()],
            confirmable: true,
            timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            warmup_end: t0,
            stop_at: Some(t0 + Duration::from_secs(60)),
            max_requests: None,
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            progress: Arc::new(RunProgress::new(1)),
        });
        let transport = Transport::udp(target.addr).unwrap();
        Lane::new(plan, 0, transport, vec![0], None, 42)
    }

    fn receive(server: &std::net::UdpSocket) -> (Vec<u8>, SocketAddr) {
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    }

    #[tokio::test]
    async fn con_retransmits_then_times_out_in_virtual_time() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let mut lane = lane(&server, t0);
        lane.issue(0, t0, t0);
        let (first, _) = receive(&server);
        // Not before ACK_TIMEOUT (2 s) …
        lane.on_time(t0 + Duration::from_millis(1999));
        assert_eq!(lane.counters.retransmissions, 0);
        // … and by ACK_TIMEOUT × 1.5 at the latest: the same bytes again.
        lane.on_time(t0 + Duration::from_millis(3000));
        assert_eq!(lane.counters.retransmissions, 1);
        let (again, _) = receive(&server);
        assert_eq!(first, again);
        // Doubling: the second retransmission comes 4–6 s after the first
        // send, but the 5 s timeout ends the request at t0 + 5 s.
        lane.on_time(t0 + Duration::from_millis(4999));
        assert_eq!(lane.counters.timeouts, 0);
        lane.on_time(t0 + Duration::from_secs(5));
        assert_eq!(lane.counters.timeouts, 1);
        // Closed loop: the client has sent its next request at once.
        assert_eq!(lane.counters.sent, 2);
        assert_eq!(lane.in_flight, 1);
        let (next, _) = receive(&server);
        assert_ne!(
            MessageRef::parse(&next).unwrap().message_id(),
            MessageRef::parse(&first).unwrap().message_id()
        );
    }

    #[tokio::test]
    async fn empty_ack_stops_retransmission_and_separate_response_completes() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let mut lane = lane(&server, t0);
        lane.issue(0, t0, t0);
        let (request, _) = receive(&server);
        let request = MessageRef::parse(&request).unwrap();
        let [hi, lo] = request.message_id().to_be_bytes();
        lane.on_coap(&[0x60, 0, hi, lo], t0 + Duration::from_millis(10));
        lane.on_time(t0 + Duration::from_secs(4));
        assert_eq!(
            lane.counters.retransmissions, 0,
            "an empty ACK stops retransmission"
        );
        // The separate response: CON 2.05 with the request's token.
        let response = coap_codec::Message::new(MessageType::Con, Code::CONTENT, 0x7777)
            .with_token(request.token().to_vec())
            .to_bytes()
            .unwrap();
        lane.on_coap(&response, t0 + Duration::from_millis(4500));
        assert_eq!(lane.counters.responses, 1);
        assert_eq!(lane.counters.codes[usize::from(Code::CONTENT.to_u8())], 1);
        // Latency from the send: 4.5 s.
        assert_eq!(lane.interval.len(), 1);
        assert!(lane.interval.max() >= 4_490_000 && lane.interval.max() <= 4_510_000);
        // The CON response was acknowledged (then the next request went out).
        let (ack, _) = receive(&server);
        assert_eq!(ack, vec![0x60, 0, 0x77, 0x77]);
        // A duplicate of the response matches nothing now and is rejected.
        lane.on_coap(&response, t0 + Duration::from_millis(4600));
        assert_eq!(lane.counters.unmatched, 1);
        assert_eq!(lane.counters.responses, 1);
    }

    #[tokio::test]
    async fn piggybacked_response_with_a_foreign_token_is_not_accepted() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let mut lane = lane(&server, t0);
        lane.issue(0, t0, t0);
        let (request, _) = receive(&server);
        let request = MessageRef::parse(&request).unwrap();
        let wrong = coap_codec::Message::new(MessageType::Ack, Code::CONTENT, request.message_id())
            .with_token(vec![9u8; 8])
            .to_bytes()
            .unwrap();
        lane.on_coap(&wrong, t0 + Duration::from_millis(1));
        assert_eq!(lane.counters.responses, 0);
        assert_eq!(lane.counters.unmatched, 1);
        let right = coap_codec::Message::new(MessageType::Ack, Code::CONTENT, request.message_id())
            .with_token(request.token().to_vec())
            .to_bytes()
            .unwrap();
        lane.on_coap(&right, t0 + Duration::from_millis(2));
        assert_eq!(lane.counters.responses, 1);
    }

    #[test]
    fn tokens_round_trip() {
        let token = token_of(12345, 0xdead_beef);
        assert_eq!(slot_of(&token), Some((12345, 0xdead_beef)));
        assert_eq!(slot_of(&token[..4]), None);
    }
}
