//! A flood of spoofed ClientHellos (no cookie, or a cookie minted for another
//! address) allocates nothing, and a legitimate client completes its
//! handshake in the middle of it. One test per file: the RSS figures are the
//! process's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::time::Instant;

use support::*;

const FLOOD: u32 = 10_000;

#[test]
fn spoofed_client_hello_flood_allocates_nothing() {
    let mut h = Harness::new(server_config());
    let conn = connector(IDENTITY, KEY);

    // Material for the flood: a real first ClientHello and a real second
    // ClientHello whose cookie is bound to addr(0).
    let mut sample = h.peer(addr(0), &conn);
    let (_, first_hello) = h.to_server.pop().unwrap();
    h.server
        .handle_datagram(Instant::now(), addr(0), &first_hello);
    h.collect_server(&mut [&mut sample]);
    let hvr = sample.inbox.pop().unwrap();
    sample.session.handle_datagram(Instant::now(), &hvr);
    let cookie_hello = sample.session.poll_transmit().unwrap();
    assert_eq!(h.server.stats().hello_verify_requests_sent, 1);

    let rss_before = vm_rss_kib();
    let mut legit = h.peer(addr(FLOOD + 10), &conn);
    let started = Instant::now();
    let mut legit_hvrs = 0;
    for n in 1..=FLOOD {
        let spoofed = addr(n);
        // Half without cookie, half replaying a cookie minted for addr(0).
        let datagram = if n % 2 == 0 {
            &first_hello
        } else {
            &cookie_hello
        };
        h.server.handle_datagram(Instant::now(), spoofed, datagram);
        // Spoofed sources never answer: drop whatever the server sends.
        while h.server.poll_transmit().is_some() {}
        if n == FLOOD / 2 {
            // The legitimate client handshakes in the middle of the flood.
            // (Its ClientHello may have been retransmitted meanwhile: OpenSSL
            // retransmits on an expired wall-clock timer when it reads.)
            let before = h.server.stats().hello_verify_requests_sent;
            h.pump(&mut [&mut legit]);
            legit_hvrs = h.server.stats().hello_verify_requests_sent - before;
        }
    }
    let elapsed = started.elapsed();
    let rss_after = vm_rss_kib();
    let stats = h.server.stats();
    println!(
        "flood of {FLOOD} spoofed ClientHellos in {elapsed:?}: VmRSS before {rss_before} KiB, \
         after {rss_after} KiB (+{} KiB); {stats:?}",
        rss_after.saturating_sub(rss_before)
    );
    assert!(legit.session.is_established(), "{:?}", legit.events);
    assert_eq!(stats.sessions, 1, "only the legitimate session exists");
    assert_eq!(stats.handshakes_in_progress, 0);
    assert_eq!(stats.handshakes_started, 1);
    assert_eq!(stats.handshakes_completed, 1);
    // 1 for the sample, the legitimate client's, one per spoofed hello.
    assert!((1..=2).contains(&legit_hvrs));
    assert_eq!(
        stats.hello_verify_requests_sent,
        u64::from(FLOOD) + 1 + legit_hvrs
    );
    assert_eq!(stats.handshakes_failed.total(), 0);
    // Generous bound: nothing per spoofed peer is kept.
    assert!(
        rss_after.saturating_sub(rss_before) < 4 * 1024,
        "RSS grew by {} KiB",
        rss_after - rss_before
    );
}
