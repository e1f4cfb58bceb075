#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Shutdown signal and draining, in virtual time.

use std::time::Duration;

use gateway_kit::shutdown::join_all_within;
use gateway_kit::{DrainOutcome, InFlight, Shutdown, ShutdownReason};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn every_clone_sees_the_first_trigger() {
    let shutdown = Shutdown::new();
    assert!(!shutdown.is_triggered());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let s = shutdown.clone();
            tokio::spawn(async move { s.triggered().await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert!(waiters.iter().all(|w| !w.is_finished()));

    shutdown.clone().trigger(ShutdownReason::Terminate);
    shutdown.trigger(ShutdownReason::Interrupt); // ignored: the first wins
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), ShutdownReason::Terminate);
    }
    assert_eq!(shutdown.reason(), Some(ShutdownReason::Terminate));
    // Awaiting after the fact returns at once.
    assert_eq!(shutdown.triggered().await, ShutdownReason::Terminate);
}

#[tokio::test(start_paused = true)]
async fn drain_returns_when_work_finishes() {
    let in_flight = InFlight::new();
    let start = Instant::now();
    for ms in [100u64, 300, 200] {
        let guard = in_flight.enter();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(guard);
        });
    }
    assert_eq!(in_flight.count(), 3);
    assert_eq!(
        in_flight.drain(Duration::from_secs(5)).await,
        DrainOutcome::Drained
    );
    // Done when the slowest finished, not at the deadline.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(in_flight.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_gives_up_at_the_deadline() {
    let in_flight = InFlight::new();
    let start = Instant::now();
    let quick = in_flight.enter();
    let _stuck = in_flight.enter();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(quick);
    });
    let outcome = in_flight.drain(Duration::from_secs(2)).await;
    assert_eq!(outcome, DrainOutcome::TimedOut { still_running: 1 });
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn drain_with_nothing_in_flight_is_immediate() {
    let start = Instant::now();
    assert_eq!(
        InFlight::new().drain(Duration::from_secs(1)).await,
        DrainOutcome::Drained
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn tasks_stop_on_shutdown_and_join_within_deadline() {
    let shutdown = Shutdown::new();
    let mut tasks = JoinSet::new();
    // A well-behaved listener loop: stops when shutdown fires.
    let s = shutdown.clone();
    tasks.spawn(async move {
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = s.triggered() => return ticks,
                _ = tokio::time::sleep(Duration::from_millis(10)) => ticks += 1,
            }
        }
    });
    // A task that ignores shutdown.
    tasks.spawn(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        0
    });
    tokio::time::sleep(Duration::from_millis(55)).await;
    shutdown.trigger(ShutdownReason::Requested);
    let start = Instant::now();
    let outcome = join_all_within(&mut tasks, Duration::from_secs(1)).await;
    assert_eq!(outcome, DrainOutcome::TimedOut { still_running: 1 });
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The stuck task was aborted.
    let next = tasks.join_next().await.unwrap();
    assert!(next.unwrap_err().is_cancelled());

    let mut polite = JoinSet::new();
    let s = shutdown.clone();
    polite.spawn(async move { s.triggered().await });
    assert_eq!(
        join_all_within(&mut polite, Duration::from_secs(1)).await,
        DrainOutcome::Drained
    );
}
