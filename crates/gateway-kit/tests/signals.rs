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

/// A second signal ends the process at once with 130; checked in a child
/// process (this test binary running only `second_signal_child`).
#[test]
fn second_signal_exits_with_130() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "second_signal_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "child output:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
#[ignore = "run by second_signal_exits_with_130 in a child process"]
async fn second_signal_child() {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals().unwrap();
    let kill = || {
        std::process::Command::new("kill")
            .args(["-INT", &std::process::id().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill().success());
    assert_eq!(shutdown.triggered().await, ShutdownReason::Interrupt);
    assert!(kill().success());
    // The signal task exits the process; reaching the end is a failure.
    tokio::time::sleep(Duration::from_secs(5)).await;
}
