#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
// The counting global allocator needs unsafe (GlobalAlloc).
#![allow(unsafe_code)]
//! Regression (fuzz bug 1): separate (CON) responses wait behind the one in
//! flight (NSTART 1). For a peer that never ACKs them they must stay
//! bounded by `max_queued_per_peer`: beyond it `respond` refuses with
//! `RespondError::QueueFull` (the application knows the answer was not
//! sent) and the refusal is counted as a queue drop.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use coap_endpoint::{AckTimeout, Endpoint, EndpointConfig, Event, Peer, RespondError};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

// The dedup map (std HashMap, randomly seeded) may resize once at a
// run-dependent moment (~70-140 KB); linear growth (the bug) was
// ~2.8 MB over this run, so the bound is 512 KiB.
#[test]
fn unacknowledged_separate_responses_stay_bounded() {
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(1);
    config.default_ack_timeout = AckTimeout::Immediately;
    config.max_queued_per_peer = 4;
    let mut ep = Endpoint::new(config).unwrap();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let start = Instant::now();
    let mut refused = 0u64;
    let mut round = |ep: &mut Endpoint, i: u16| {
        let now = start + Duration::from_millis(u64::from(i) * 10);
        let get = Message::new(MessageType::Con, Code::GET, i)
            .with_token(&b"t"[..])
            .with_uri_path("x");
        ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
        while ep.poll_transmit().is_some() {} // the empty ACK
        let Some(Event::Request(req)) = ep.poll_event() else {
            panic!("no request")
        };
        let response =
            Message::new(MessageType::Ack, Code::CONTENT, 0).with_payload(vec![b'x'; 512]);
        match ep.respond(now, req.id, response) {
            Ok(_) => {}
            Err(RespondError::QueueFull) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {} // separate CONs, never ACKed
        assert_eq!(ep.pending_requests(), 0);
    };
    // Warm-up past the 256 dedup entries per peer and the one-off growth
    // of the dedup map (its tombstones make it resize once, ~70 KB).
    for i in 0..3000 {
        round(&mut ep, i);
    }
    let warm = LIVE.load(Ordering::Relaxed);
    for i in 3000..7000 {
        round(&mut ep, i);
    }
    let growth = LIVE.load(Ordering::Relaxed) - warm;
    assert!(
        growth < 512 * 1024,
        "live heap grew by {growth} bytes over 4000 requests in 40 s (after a 30 s warm-up)"
    );
    // One in flight + 4 queued at a time; the in-flight one gives up after
    // ~45-93 s, so almost every response in these 70 s is refused.
    assert!(refused > 6000, "only {refused} responses refused");
    assert_eq!(ep.stats().queue_drops, refused);
}
