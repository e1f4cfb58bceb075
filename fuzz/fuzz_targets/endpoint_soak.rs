//! Memory growth of one `coap_endpoint::Endpoint` under a repeated peer
//! workload: a short fuzzed body of peer datagrams (structured CoAP or raw
//! bytes) and application answers is repeated 600 times, the virtual clock
//! advancing 200 ms per round with a punctual driver (120 s in all).
//!
//! Everything the endpoint keeps is meant to be bounded by a config cap or
//! by a short time window (early-ACK timers, a retransmission's span of at
//! most ~48 s). So once the first 60 s have passed, the live heap must stop
//! growing: from round 300 to round 600 it may grow by at most 32 KiB.
//! State that is only trimmed by a long lifetime (145 s, 247 s) and not by
//! a cap grows linearly here and fails the check.
//!
//! Live heap is measured with a counting global allocator; the harness
//! itself keeps only bounded state between the two measurements.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_endpoint::coap_codec::{Block, Code, Message, MessageType, OptionNumber};
use coap_endpoint::{AckTimeout, Endpoint, EndpointConfig, Event, Peer, RequestId};
use libfuzzer_sys::fuzz_target;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROUNDS: usize = 600;
const STEP: Duration = Duration::from_millis(200);
const ALLOWED_GROWTH: isize = 32 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    ack_policy: u8,
    body: Vec<SoakOp>,
}

#[derive(Arbitrary, Debug)]
enum SoakOp {
    Msg(PeerMsg),
    Raw {
        peer: u8,
        bytes: Vec<u8>,
    },
    /// The application answers its oldest pending request.
    Respond {
        len: u16,
        observe: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct PeerMsg {
    peer: u8,
    mtype: u8,
    code: u8,
    fresh_mid: bool,
    token: u8,
    path: u8,
    observe: Option<u8>,
    block1: Option<(u8, bool, u8)>,
    block2: Option<(u8, u8)>,
    request_tag: Option<u8>,
    payload: u8,
}

const PATHS: [&str; 4] = ["a", "ps/t", "obs", "b/c"];
const CODES: [Code; 6] = [
    Code::GET,
    Code::POST,
    Code::PUT,
    Code::DELETE,
    Code::CONTENT,
    Code::EMPTY,
];

fn peers() -> &'static [Peer; 4] {
    static PEERS: OnceLock<[Peer; 4]> = OnceLock::new();
    PEERS.get_or_init(|| {
        let a: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:5683".parse().unwrap();
        let c: SocketAddr = "192.0.2.3:5683".parse().unwrap();
        [
            Peer::new(a),
            Peer::new(b),
            Peer::new(c),
            Peer::authenticated(a, &b"dev"[..]),
        ]
    })
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn build(m: &PeerMsg, mid: u16) -> Option<Bytes> {
    let mtype = MessageType::from_bits(m.mtype % 4);
    let code = CODES[usize::from(m.code) % CODES.len()];
    let mut msg = Message::new(mtype, code, mid)
        .with_token(vec![m.token % 4; usize::from(m.token % 3)])
        .with_uri_path(PATHS[usize::from(m.path) % PATHS.len()]);
    if let Some(o) = m.observe {
        msg = msg.with_uint_option(OptionNumber::OBSERVE, u32::from(o % 2));
    }
    let mut szx = 2;
    if let Some((num, more, s)) = m.block1 {
        szx = s % 7;
        msg = msg.with_block1(Block {
            num: u32::from(num % 4),
            more,
            szx,
        });
    }
    if let Some((num, s)) = m.block2 {
        msg = msg.with_block2(Block {
            num: u32::from(num % 4),
            more: false,
            szx: s % 7,
        });
    }
    if let Some(t) = m.request_tag {
        msg = msg.with_option(OptionNumber::REQUEST_TAG, vec![t % 2]);
    }
    let len = if m.payload % 2 == 0 {
        16usize << szx
    } else {
        usize::from(m.payload)
    };
    msg = msg.with_payload(vec![0x33; len]);
    msg.to_bytes().ok()
}

struct Soak {
    ep: Endpoint,
    now: Instant,
    mids: [u16; 4],
    /// Bounded by `max_pending_requests`.
    pending: Vec<RequestId>,
}

impl Soak {
    fn drain(&mut self) {
        while self.ep.poll_transmit().is_some() {}
        while let Some(event) = self.ep.poll_event() {
            if let Event::Request(req) = event {
                self.pending.push(req.id);
            }
        }
        assert!(self.pending.len() <= self.ep.config().max_pending_requests);
    }

    fn round(&mut self, body: &[SoakOp]) {
        for op in body {
            match op {
                SoakOp::Msg(m) => {
                    let peer = usize::from(m.peer % 4);
                    let mid = self.mids[peer];
                    if m.fresh_mid {
                        self.mids[peer] = mid.wrapping_add(1);
                    }
                    if let Some(bytes) = build(m, mid) {
                        self.ep
                            .handle_datagram(self.now, peers()[peer].clone(), &bytes);
                    }
                }
                SoakOp::Raw { peer, bytes } => {
                    self.ep.handle_datagram(
                        self.now,
                        peers()[usize::from(peer % 4)].clone(),
                        bytes,
                    );
                }
                SoakOp::Respond { len, observe } => {
                    if !self.pending.is_empty() {
                        let id = self.pending.remove(0);
                        let mut response = Message::new(MessageType::Ack, Code::CONTENT, 0)
                            .with_payload(vec![0x44; usize::from(*len) % 3000]);
                        if *observe {
                            response = response.with_observe(0);
                        }
                        let _ = self.ep.respond(self.now, id, response);
                    }
                }
            }
            self.drain();
        }
        let target = self.now + STEP;
        while let Some(at) = self.ep.poll_timeout().filter(|at| *at <= target) {
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
        self.ep.handle_timeout(self.now);
        self.drain();
    }
}

fuzz_target!(|input: Input| {
    if input.body.is_empty() || input.body.len() > 4 {
        return;
    }
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(input.seed);
    config.default_ack_timeout = match input.ack_policy % 3 {
        0 => AckTimeout::Never,
        1 => AckTimeout::Immediately,
        _ => AckTimeout::After(Duration::from_secs(1)),
    };
    // Small enough to be reached within the first 60 s: a separate
    // response queue (one per peer that never ACKs) fills only as fast as
    // that peer's requests get through, and a full default queue (32
    // blocks of ~1 KiB per peer) would look like growth.
    config.max_queued_per_peer = 3;
    config.max_dedup_per_peer = 8;
    config.max_dedup_total = 24;
    config.max_pending_requests = 6;
    config.max_pending_per_peer = 4;
    config.max_relations = 6;
    config.max_relations_per_peer = 3;
    config.max_body_size = 3000;
    config.max_reassembly_memory = 2048;
    config.max_reassemblies = 4;
    config.block_cache_entries = 4;
    config.block_cache_memory = 8192;
    let mut soak = Soak {
        ep: Endpoint::new(config).expect("valid config"),
        now: base(),
        mids: [0x1000, 0x3000, 0x5000, 0x7000],
        pending: Vec::with_capacity(64),
    };
    let mut half = 0;
    for round in 0..ROUNDS {
        if round == ROUNDS / 2 {
            half = LIVE.load(Ordering::Relaxed);
        }
        soak.round(&input.body);
    }
    let growth = LIVE.load(Ordering::Relaxed) - half;
    assert!(
        growth <= ALLOWED_GROWTH,
        "live heap grew by {growth} bytes between 60 s and 120 s of a steady workload"
    );
});
