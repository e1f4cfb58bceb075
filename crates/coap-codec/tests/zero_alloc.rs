#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Proves that the borrowed parse — header, token, iterating every option,
//! typed option reads and the payload — performs no heap allocation, using
//! a global allocator that counts allocations made on the current thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coap_codec::{
    Block, Code, ContentFormat, Message, MessageRef, MessageType, OptionNumber, TcpFrameRef,
    validate_request,
};

thread_local! {
    // `const` initialisation: reading this from inside the allocator never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAllocator;

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the only addition is a
// thread-local counter update, which does not allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` via `alloc` above with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged; `ptr`/`layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Does everything the server hot path does with a datagram; returns a
/// checksum so the optimiser cannot drop the work.
fn read_everything(datagram: &[u8]) -> usize {
    let msg = MessageRef::parse(datagram).unwrap();
    let mut sum =
        usize::from(msg.message_id()) + msg.token().len() + usize::from(msg.code().to_u8());
    for opt in msg.options() {
        sum += usize::from(opt.number.0) + opt.value.len();
    }
    for seg in msg.uri_path() {
        sum += seg.len();
    }
    sum += msg
        .query_param("c")
        .map_or(0, |p| p.value.map_or(0, <[u8]>::len));
    sum += msg.content_format().map_or(0, |c| usize::from(c.0));
    sum += msg.block2().map_or(0, Block::size);
    sum += msg.observe().unwrap_or(0) as usize;
    sum += usize::from(validate_request(&msg).is_ok());
    sum + msg.payload().iter().map(|&b| usize::from(b)).sum::<usize>()
}

#[test]
fn borrowed_parse_does_not_allocate() {
    let post = Message::new(MessageType::Con, Code::POST, 0x1234)
        .with_token(&b"\x01\x02\x03\x04"[..])
        .with_uri_path("ps/sensors/temperature")
        .with_uri_query("c=client1")
        .with_uri_query("u=user")
        .with_content_format(ContentFormat::JSON)
        .with_option(OptionNumber(2049), &b"unknown critical"[..])
        .with_payload(vec![0x42; 64])
        .to_bytes()
        .unwrap();
    let notification = Message::new(MessageType::Non, Code::CONTENT, 7)
        .with_token(&b"obs"[..])
        .with_observe(12345)
        .with_block2(Block::new(1, true, 6).unwrap())
        .with_payload(vec![1u8; 1024])
        .to_bytes()
        .unwrap();
    let tcp = Message::new(MessageType::Con, Code::GET, 0)
        .with_uri_path("a/b")
        .to_tcp_bytes(&coap_codec::CodecSettings::DEFAULT)
        .unwrap();
    // Warm up anything lazily initialised, then count.
    let expected = read_everything(&post) + read_everything(&notification);

    let before = allocations();
    let mut sum = 0;
    for _ in 0..100 {
        sum += read_everything(&post);
        sum += read_everything(&notification);
        let (frame, used) = TcpFrameRef::parse(&tcp).unwrap();
        sum += used + frame.options().map(|o| o.value.len()).sum::<usize>();
        // Errors are plain values too.
        sum += usize::from(MessageRef::parse(&post[..post.len() - 70]).is_err());
    }
    let after = allocations();

    assert_eq!(
        after - before,
        0,
        "borrowed parsing allocated {} times",
        after - before
    );
    assert_eq!(sum, 100 * (expected + tcp.len() + 2 + 1));

    // The counter does see allocations (so the zero above means something).
    let before = allocations();
    let owned = MessageRef::parse(&post).unwrap().to_message();
    assert!(allocations() > before);
    assert_eq!(owned.payload.len(), 64);
}
