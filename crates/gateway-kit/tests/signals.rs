#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! A real SIGTERM fires `Shutdown` (own test binary: it changes the process's
//! signal disposition).

use std::time::Duration;

use gateway_kit::{Shutdown, ShutdownReason};

#[tokio::test]
async fn sigterm_triggers_shutdown() {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals().unwrap();
    assert!(!shutdown.is_triggered());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reason = tokio::time::timeout(Duration::from_secs(5), shutdown.triggered())
        .await
        .expect("SIGTERM did not trigger shutdown");
    assert_eq!(reason, ShutdownReason::Terminate);
}
