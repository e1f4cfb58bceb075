//! Memory per established session (reported; bounded loosely). One test per
//! file: the RSS figures are the process's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use support::*;

const SESSIONS: u32 = 1_000;

#[test]
fn established_sessions_stay_small() {
    let mut h = Harness::new(server_config());
    let conn = connector(IDENTITY, KEY);
    // Warm up allocator and OpenSSL with one session first.
    let mut warm = h.peer(addr(0), &conn);
    h.pump(&mut [&mut warm]);
    let rss_before = vm_rss_kib();
    for n in 1..=SESSIONS {
        let mut client = h.peer(addr(n), &conn);
        h.pump(&mut [&mut client]);
        assert!(client.session.is_established());
        // The client side is dropped: only the server's memory remains.
    }
    let rss_after = vm_rss_kib();
    let stats = h.server.stats();
    assert_eq!(stats.sessions, SESSIONS as usize + 1);
    // Every session runs on the compact record layer (the default).
    assert_eq!(stats.sessions_compacted, u64::from(SESSIONS) + 1);
    let per_session = rss_after.saturating_sub(rss_before) as f64 / f64::from(SESSIONS);
    println!(
        "{SESSIONS} established server sessions: VmRSS {rss_before} -> {rss_after} KiB, \
         {per_session:.1} KiB per session"
    );
    assert!(per_session < 64.0, "{per_session} KiB per session");
}
