#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
// The counting global allocator needs unsafe (GlobalAlloc).
#![allow(unsafe_code)]
//! Regression (fuzz bug 2): a peer that restarts a Block1 transfer (block 0,
//! more=1) with fresh message ids keeps one reassembly; the expiry order
//! list must not grow by one entry per datagram.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use coap_endpoint::coap_codec::{Block, Code, Message, MessageType};
use coap_endpoint::{Endpoint, EndpointConfig, Peer};

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
// ~3 MB over this run, so the bound is 512 KiB.
#[test]
fn restarting_block1_transfers_keep_memory_bounded() {
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(1);
    config.max_reassemblies = 4;
    config.max_reassembly_memory = 4096;
    let mut ep = Endpoint::new(config).unwrap();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let now = Instant::now();
    let long_path = "x".repeat(200);
    let send = |ep: &mut Endpoint, mid: u16, more: bool| {
        let msg = Message::new(MessageType::Con, Code::POST, mid)
            .with_token(&b"t"[..])
            .with_uri_path(&long_path)
            .with_block1(Block {
                num: 0,
                more,
                szx: 0,
            })
            .with_payload(vec![0u8; 16]);
        ep.handle_datagram(now, peer.clone(), &msg.to_bytes().unwrap());
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    };
    for mid in 0..5000u16 {
        send(&mut ep, mid, true);
    }
    let after_warmup = LIVE.load(Ordering::Relaxed);
    for mid in 5000..25000u16 {
        // Restarts, with now and then a single-block transfer that ends one.
        send(&mut ep, mid, mid % 7 != 0);
    }
    let growth = LIVE.load(Ordering::Relaxed) - after_warmup;
    // One reassembly, 256 dedup entries: steady state after the warm-up.
    assert!(
        growth < 512 * 1024,
        "live heap grew by {growth} bytes over 20 000 restarts"
    );
}
