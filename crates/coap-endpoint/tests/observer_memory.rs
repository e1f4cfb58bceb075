#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
// The counting global allocator needs unsafe (GlobalAlloc).
#![allow(unsafe_code)]
//! Issue 8: heap bytes per idle connectionless observer in the sans-IO
//! endpoint. 100 000 peers each register (CON GET, Observe 0, 8-byte
//! token) and get a piggybacked 2.05 with Observe; then nothing happens.
//! What stays is the relation and the deduplication entry of the
//! registration (kept for EXCHANGE_LIFETIME so that a retransmitted
//! registration gets the same answer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use coap_endpoint::{Endpoint, EndpointConfig, Event, Peer};

struct Counting;
/// Bytes requested and live.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The same as glibc malloc spends them: 8-byte header, 16-byte
/// granularity, 32-byte minimum chunk (what RSS sees, before fragmentation).
static LIVE_CHUNKS: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        LIVE_CHUNKS.fetch_add(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        LIVE_CHUNKS.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - l.size() as isize, Ordering::Relaxed);
        LIVE_CHUNKS.fetch_add(chunk(new_size) - chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.realloc(p, l, new_size) }
    }
}
#[global_allocator]
static A: Counting = Counting;

const OBSERVERS: u32 = 100_000;

/// Observer `i`'s address: its own peer, or one of `OBSERVERS / 50` peers
/// with 50 observers each (coap-bench's `--observe 100000 --sockets 2000`).
fn peer(i: u32, shared: bool) -> Peer {
    if shared {
        return Peer::new(SocketAddr::from(([10, 1, 0, 1], 20_000 + (i / 50) as u16)));
    }
    let ip = Ipv4Addr::from(0x0a00_0000 + i / 50);
    Peer::new(SocketAddr::from((ip, 40_000 + (i % 50) as u16)))
}

/// Heap bytes per observer (live heap after − before, over `OBSERVERS`):
/// requested, and as malloc chunks.
fn bytes_per_observer(shared: bool) -> (f64, f64) {
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(7);
    config.max_relations = OBSERVERS as usize;
    let mut ep = Endpoint::new(config).unwrap();
    let now = Instant::now();
    let before = (
        LIVE.load(Ordering::Relaxed),
        LIVE_CHUNKS.load(Ordering::Relaxed),
    );
    for i in 0..OBSERVERS {
        let token = u64::from(i).to_be_bytes();
        let register = Message::new(MessageType::Con, Code::GET, (i % 65_536) as u16)
            .with_token(token.to_vec())
            .with_uri_path(&format!("ps/devices/sensor-{i:06}/temperature"))
            .with_observe(0);
        ep.handle_datagram(now, peer(i, shared), &register.to_bytes().unwrap());
        let Some(Event::Request(request)) = ep.poll_event() else {
            panic!("registration {i} not delivered")
        };
        assert!(request.observe_registration);
        let answer = Message::new(MessageType::Ack, Code::CONTENT, 0)
            .with_observe(0)
            .with_content_format(ContentFormat::TEXT_PLAIN);
        let relation = ep.respond(now, request.id, answer).unwrap();
        assert!(relation.is_some(), "observer {i} got a relation");
        while ep.poll_transmit().is_some() {}
    }
    // Idle: timers that fire now (early ACKs of answered requests) go.
    ep.handle_timeout(now + Duration::from_secs(2));
    while ep.poll_transmit().is_some() {}
    assert_eq!(ep.stats().observers, u64::from(OBSERVERS));
    let per = (
        (LIVE.load(Ordering::Relaxed) - before.0) as f64 / f64::from(OBSERVERS),
        (LIVE_CHUNKS.load(Ordering::Relaxed) - before.1) as f64 / f64::from(OBSERVERS),
    );
    // The dedup entries still answer a retransmitted registration.
    let again = Message::new(MessageType::Con, Code::GET, 5)
        .with_token(5u64.to_be_bytes().to_vec())
        .with_uri_path("ps/devices/sensor-000005/temperature")
        .with_observe(0);
    ep.handle_datagram(
        now + Duration::from_secs(3),
        peer(5, shared),
        &again.to_bytes().unwrap(),
    );
    let dup = Message::from_bytes(ep.poll_transmit().expect("cached answer").bytes).unwrap();
    assert_eq!(dup.code, Code::CONTENT);
    assert_eq!(dup.message_id, 5);
    assert!(
        ep.poll_event().is_none(),
        "a duplicate is not a new request"
    );
    drop(ep);
    per
}

/// Before the compaction (issue 8) this was 1 373 bytes requested (1 457
/// as malloc chunks) with one peer per observer and 800 (868) with 50 per
/// peer, after it 618 (630) and 475 (488); the bound catches a regression.
#[test]
fn idle_observer_heap_bytes() {
    let (requested, chunks) = bytes_per_observer(false);
    println!(
        "FIGURES heap bytes per idle observer ({OBSERVERS} observers, one peer each): {requested:.0} requested, {chunks:.0} as malloc chunks"
    );
    assert!(requested < 700.0, "{requested:.0} bytes per observer");
    let (requested, chunks) = bytes_per_observer(true);
    println!(
        "FIGURES heap bytes per idle observer ({OBSERVERS} observers, 50 per peer): {requested:.0} requested, {chunks:.0} as malloc chunks"
    );
    assert!(requested < 700.0, "{requested:.0} bytes per observer");
}
