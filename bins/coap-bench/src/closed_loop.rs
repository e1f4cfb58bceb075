//! A closed-loop driver for the broker reference clients (`mqtt-publish`,
//! `amqp-publish`): N workers, each with one operation in flight, a warm-up
//! that is not measured, a fixed measuring window, and the same
//! [`Summary`] (and JSON) as `load`.
//!
//! ```text
//!  worker i: loop { t0 = now; op().await; if t0 ≥ warm-up end { count, record now − t0 } }
//!            until the window ends ─▶ merge counters + histograms ─▶ Summary
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{self, Errors, Latency, Summary};

/// What one operation ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered (acknowledged, confirmed, or written for QoS 0).
    Ok,
    /// The broker refused it (nack, returned as unroutable).
    Refused,
    /// No answer within the operation's time limit.
    Timeout,
}

/// The measuring window shared by all workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Operations started before this are not measured.
    pub(crate) warmup_end: Instant,
    /// No operation starts after this.
    pub(crate) stop_at: Instant,
    /// Limit per operation.
    pub(crate) timeout: Duration,
}

impl Window {
    /// A window starting now.
    pub(crate) fn starting_now(warmup: Duration, duration: Duration, timeout: Duration) -> Self {
        let warmup_end = Instant::now() + warmup;
        Window {
            warmup_end,
            stop_at: warmup_end + duration,
            timeout,
        }
    }
}

/// What one worker counted.
pub(crate) struct WorkerTally {
    sent: u64,
    ok: u64,
    refused: u64,
    timeouts: u64,
    last_ok: Option<Instant>,
    latency: Histogram<u64>,
}

impl Default for WorkerTally {
    fn default() -> Self {
        WorkerTally {
            sent: 0,
            ok: 0,
            refused: 0,
            timeouts: 0,
            last_ok: None,
            latency: report::new_histogram(),
        }
    }
}

/// One kind of operation a worker repeats (one publish and its answer).
pub(crate) trait Operation {
    /// Performs one operation. `Err` means the connection is unusable.
    fn run(&mut self) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// Runs `op` in a closed loop until the window ends. An `Err` from `op`
/// (the connection broke) ends the worker early with that error.
pub(crate) async fn drive(window: Window, op: &mut impl Operation) -> anyhow::Result<WorkerTally> {
    let mut tally = WorkerTally::default();
    loop {
        let started = Instant::now();
        if started >= window.stop_at {
            return Ok(tally);
        }
        let outcome = match tokio::time::timeout(window.timeout, op.run()).await {
            Ok(result) => result?,
            Err(_) => Outcome::Timeout,
        };
        if started < window.warmup_end {
            continue;
        }
        tally.sent += 1;
        match outcome {
            Outcome::Ok => {
                let now = Instant::now();
                tally.ok += 1;
                tally.last_ok = Some(now);
                report::record(
                    &mut tally.latency,
                    now.saturating_duration_since(started).as_micros() as u64,
                );
            }
            Outcome::Refused => tally.refused += 1,
            Outcome::Timeout => tally.timeouts += 1,
        }
    }
}

/// How the run is labelled in the summary.
pub(crate) struct Label {
    pub(crate) target: String,
    /// e.g. `PUBLISH`.
    pub(crate) method: String,
    /// e.g. `QoS1`, `confirm`.
    pub(crate) mtype: String,
    pub(crate) clients: usize,
    /// Connections used.
    pub(crate) connections: usize,
}

/// Merges the workers' tallies into a summary. The answered operations are
/// counted under `ok`, refusals under `refused`.
pub(crate) fn summarize(label: &Label, window: &Window, tallies: &[WorkerTally]) -> Summary {
    let mut latency = report::new_histogram();
    let (mut sent, mut ok, mut refused, mut timeouts) = (0, 0, 0, 0);
    let mut last_ok: Option<Instant> = None;
    for tally in tallies {
        sent += tally.sent;
        ok += tally.ok;
        refused += tally.refused;
        timeouts += tally.timeouts;
        last_ok = match (last_ok, tally.last_ok) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let _ = latency.add(&tally.latency);
    }
    let end = last_ok.unwrap_or(window.stop_at).max(window.stop_at);
    let elapsed = end
        .saturating_duration_since(window.warmup_end)
        .as_secs_f64();
    let mut by_code = BTreeMap::new();
    if ok > 0 {
        by_code.insert("ok".to_owned(), ok);
    }
    if refused > 0 {
        by_code.insert("refused".to_owned(), refused);
    }
    Summary {
        target: label.target.clone(),
        method: label.method.clone(),
        mtype: label.mtype.clone(),
        mode: "closed",
        clients: label.clients,
        sockets: label.connections,
        requested_rate: None,
        elapsed_s: (elapsed * 1000.0).round() / 1000.0,
        requests_sent: sent,
        responses: ok + refused,
        responses_by_code: by_code,
        timeouts,
        retransmissions: 0,
        errors: Errors {
            reset: 0,
            send: 0,
            backlog: 0,
            malformed: 0,
            unmatched: 0,
        },
        errors_total: refused,
        throughput_rps: if elapsed > 0.0 {
            (ok as f64 / elapsed * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency_us: Latency::of(&latency),
        observe: None,
        publish: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sleeps `pause`; every third call is refused.
    struct Sleeper {
        calls: u32,
        pause: Duration,
    }

    impl Operation for Sleeper {
        async fn run(&mut self) -> anyhow::Result<Outcome> {
            self.calls += 1;
            tokio::time::sleep(self.pause).await;
            Ok(if self.calls.is_multiple_of(3) {
                Outcome::Refused
            } else {
                Outcome::Ok
            })
        }
    }

    #[tokio::test]
    async fn counts_only_after_the_warmup_and_stops_at_the_end() {
        let window = Window::starting_now(
            Duration::from_millis(50),
            Duration::from_millis(100),
            Duration::from_millis(20),
        );
        let mut op = Sleeper {
            calls: 0,
            pause: Duration::from_millis(5),
        };
        let tally = drive(window, &mut op).await.unwrap();
        let calls = op.calls;
        assert!(Instant::now() >= window.stop_at);
        assert!(
            u64::from(calls) > tally.sent,
            "warm-up calls are not counted"
        );
        assert_eq!(tally.sent, tally.ok + tally.refused + tally.timeouts);
        assert!(tally.refused > 0 && tally.ok > tally.refused);
        let label = Label {
            target: "t".into(),
            method: "PUBLISH".into(),
            mtype: "QoS1".into(),
            clients: 1,
            connections: 1,
        };
        let summary = summarize(&label, &window, &[tally]);
        assert_eq!(summary.errors_total, summary.responses_by_code["refused"]);
        assert!(summary.latency_us.p50 >= 5_000, "{:?}", summary.latency_us);
        assert!(summary.throughput_rps > 0.0);
    }

    #[tokio::test]
    async fn a_slow_operation_is_a_timeout() {
        let window = Window::starting_now(
            Duration::ZERO,
            Duration::from_millis(30),
            Duration::from_millis(10),
        );
        let mut op = Sleeper {
            calls: 0,
            pause: Duration::from_secs(5),
        };
        let tally = drive(window, &mut op).await.unwrap();
        assert!(tally.timeouts >= 1);
        assert_eq!(tally.ok, 0);
    }
}
