//! A target that never answers: timeouts are counted, CON retransmissions
//! happen, and the run ends on time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use support::{load_json, u};

#[test]
fn silent_target_times_out_and_ends_on_time() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("coap://{}/x", silent.local_addr().unwrap());
    let started = Instant::now();
    let summary = load_json(&[
        &uri,
        "--duration",
        "1s",
        "--timeout",
        "400ms",
        "--ack-timeout",
        "100ms",
        "--clients",
        "4",
    ]);
    let elapsed = started.elapsed();
    // 1 s of sending + at most one timeout for the last requests + start-up.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(u(&summary, "responses"), 0, "{summary}");
    let sent = u(&summary, "requests_sent");
    // Closed loop: each client sends again after each 400 ms timeout.
    assert!(sent >= 8, "{summary}");
    assert_eq!(u(&summary, "timeouts"), sent, "{summary}");
    // 100 ms × [1, 1.5) then doubling: one or two retransmissions within
    // 400 ms per request (fewer only if the machine stalls the timers).
    let retransmissions = u(&summary, "retransmissions");
    assert!(
        retransmissions >= 1 && retransmissions <= 2 * sent,
        "{summary}"
    );
    assert!(silent.local_addr().is_ok());
}

#[test]
fn silent_target_open_loop_non() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("coap://{}/x", silent.local_addr().unwrap());
    let started = Instant::now();
    let summary = load_json(&[
        &uri,
        "--duration",
        "1s",
        "--timeout",
        "300ms",
        "--rate",
        "200",
        "--non",
    ]);
    assert!(started.elapsed() < Duration::from_secs(4));
    let sent = u(&summary, "requests_sent");
    assert!((100..=220).contains(&sent), "{summary}");
    assert_eq!(u(&summary, "timeouts"), sent, "{summary}");
    assert_eq!(u(&summary, "retransmissions"), 0, "{summary}");
    assert_eq!(summary["mode"], "open");
}
