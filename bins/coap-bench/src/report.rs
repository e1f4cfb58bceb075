//! Counters, the once-a-second progress line and the final summary (text or
//! JSON).
//!
//! Each lane counts into its own [`Counters`] and latency histogram (no
//! sharing on the hot path). Every [`FLUSH_INTERVAL`] a lane publishes its
//! totals into its [`LaneProgress`] atomics and merges the latencies recorded
//! since the last flush into the run's shared histogram, which the progress
//! printer and the final summary read.
//!
//! # JSON summary fields (`--json`)
//!
//! | field | meaning |
//! | --- | --- |
//! | `target` | the target URI |
//! | `method`, `type` | request method (`GET`…) and message type (`CON`/`NON`) |
//! | `mode` | `closed` (one request in flight per client) or `open` (fixed rate) |
//! | `clients`, `sockets` | simulated clients, UDP sockets used |
//! | `requested_rate` | `--rate` (open loop), else `null` |
//! | `elapsed_s` | measured window: end of warm-up to the last response (or the end of sending) |
//! | `requests_sent` | requests sent in the measured window (first transmissions) |
//! | `responses` | answered requests (any code, including echoed requests) |
//! | `responses_by_code` | object, code (`"2.05"`; `"0.01"` for a reflected GET) → count |
//! | `timeouts` | requests without an answer within `--timeout` |
//! | `retransmissions` | CON retransmissions (RFC 7252 §4.2) |
//! | `errors` | object: `reset` (RST received), `send` (socket/DTLS send failed), `backlog` (open loop could not send: too many in flight), `malformed` (unparsable datagrams), `unmatched` (datagrams matching no request) |
//! | `errors_total` | `reset + send + backlog` (requests that failed without a timeout) |
//! | `throughput_rps` | `responses / elapsed_s` |
//! | `latency_us` | object `min`, `p50`, `p90`, `p99`, `p999`, `max`, `mean` in µs; from the scheduled send time in open loop |
//! | `observe` | observe mode only (the top-level counters and `latency_us` then describe the registrations, `throughput_rps` is 0): `observers`, `registered`, `registration_failed`, `notifications`, `notifications_with_timestamp`, `notifications_per_observer_min`/`_max`, `notifications_per_s`, `delivery_latency_us` (same shape as `latency_us`, receive time minus the timestamp embedded by the publisher) |
//! | `publish` | observe mode with `--publish-rate`: the publisher's own summary (same fields as the top level) |

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_codec::Code;
use hdrhistogram::Histogram;
use serde::Serialize;

/// How often lanes publish their counters.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Highest latency the histograms track (µs); larger values are clamped.
const MAX_TRACKABLE_US: u64 = 600_000_000;

/// A latency histogram with microsecond resolution.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("hdrhistogram rejected constant bounds")
}

/// Records `micros` clamped into the tracked range.
pub(crate) fn record(histogram: &mut Histogram<u64>, micros: u64) {
    let _ = histogram.record(micros.clamp(1, MAX_TRACKABLE_US));
}

/// What one lane counted.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub(crate) sent: u64,
    pub(crate) responses: u64,
    pub(crate) codes: [u64; 256],
    pub(crate) timeouts: u64,
    pub(crate) retransmissions: u64,
    pub(crate) resets: u64,
    pub(crate) send_errors: u64,
    pub(crate) backlog: u64,
    pub(crate) malformed: u64,
    pub(crate) unmatched: u64,
    /// When the last measured response arrived.
    pub(crate) last_response: Option<Instant>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            sent: 0,
            responses: 0,
            codes: [0; 256],
            timeouts: 0,
            retransmissions: 0,
            resets: 0,
            send_errors: 0,
            backlog: 0,
            malformed: 0,
            unmatched: 0,
            last_response: None,
        }
    }
}

impl Counters {
    /// Adds `other` into `self`.
    pub(crate) fn merge(&mut self, other: &Counters) {
        self.sent += other.sent;
        self.responses += other.responses;
        for (mine, theirs) in self.codes.iter_mut().zip(other.codes.iter()) {
            *mine += theirs;
        }
        self.timeouts += other.timeouts;
        self.retransmissions += other.retransmissions;
        self.resets += other.resets;
        self.send_errors += other.send_errors;
        self.backlog += other.backlog;
        self.malformed += other.malformed;
        self.unmatched += other.unmatched;
        self.last_response = match (self.last_response, other.last_response) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn errors_total(&self) -> u64 {
        self.resets + self.send_errors + self.backlog
    }
}

/// A lane's totals as published for the progress line.
#[derive(Debug, Default)]
pub(crate) struct LaneProgress {
    sent: AtomicU64,
    responses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    retransmissions: AtomicU64,
}

impl LaneProgress {
    /// Publishes `counters`.
    pub(crate) fn publish(&self, counters: &Counters) {
        self.sent.store(counters.sent, Ordering::Relaxed);
        self.responses.store(counters.responses, Ordering::Relaxed);
        self.errors
            .store(counters.errors_total(), Ordering::Relaxed);
        self.timeouts.store(counters.timeouts, Ordering::Relaxed);
        self.retransmissions
            .store(counters.retransmissions, Ordering::Relaxed);
    }
}

/// Shared state read by the progress printer.
#[derive(Debug)]
pub(crate) struct RunProgress {
    /// One entry per lane.
    pub(crate) lanes: Vec<std::sync::Arc<LaneProgress>>,
    /// Cumulative latency histogram of measured requests.
    pub(crate) latency: Mutex<Histogram<u64>>,
    /// Extra counter shown as `notif` (observe mode).
    pub(crate) notifications: AtomicU64,
}

impl RunProgress {
    /// Progress for `lanes` lanes.
    pub(crate) fn new(lanes: usize) -> Self {
        RunProgress {
            lanes: (0..lanes).map(|_| Default::default()).collect(),
            latency: Mutex::new(new_histogram()),
            notifications: AtomicU64::new(0),
        }
    }

    /// Merges `interval` into the shared histogram and resets it.
    pub(crate) fn merge_latency(&self, interval: &mut Histogram<u64>) {
        if interval.is_empty() {
            return;
        }
        if let Ok(mut latency) = self.latency.lock() {
            let _ = latency.add(&*interval);
        }
        interval.reset();
    }

    fn totals(&self) -> [u64; 5] {
        let mut totals = [0u64; 5];
        for lane in &self.lanes {
            let values = [
                lane.sent.load(Ordering::Relaxed),
                lane.responses.load(Ordering::Relaxed),
                lane.errors.load(Ordering::Relaxed),
                lane.timeouts.load(Ordering::Relaxed),
                lane.retransmissions.load(Ordering::Relaxed),
            ];
            for (total, value) in totals.iter_mut().zip(values) {
                *total += value;
            }
        }
        totals
    }

    /// Prints one progress line per second to stderr until dropped/aborted.
    pub(crate) async fn print_every_second(&self, label: &str, start: Instant) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last_responses = 0u64;
        let mut last_notifications = 0u64;
        loop {
            ticker.tick().await;
            let [sent, responses, errors, timeouts, retransmissions] = self.totals();
            let notifications = self.notifications.load(Ordering::Relaxed);
            let p99 = self
                .latency
                .lock()
                .map(|h| h.value_at_quantile(0.99))
                .unwrap_or(0);
            if self.lanes.is_empty() {
                // Observe mode: notifications and their delivery latency.
                eprintln!(
                    "[{label} {:>4.0}s] notif {notifications} ({}/s) delivery p99 {p99}us",
                    start.elapsed().as_secs_f64(),
                    notifications.saturating_sub(last_notifications)
                );
                last_notifications = notifications;
                continue;
            }
            let mut line = format!(
                "[{label} {:>4.0}s] {:>8}/s sent {sent} ok {responses} err {errors} timeout {timeouts} retx {retransmissions} p99 {p99}us",
                start.elapsed().as_secs_f64(),
                responses.saturating_sub(last_responses),
            );
            if notifications > 0 {
                line.push_str(&format!(
                    " notif {notifications} ({}/s)",
                    notifications.saturating_sub(last_notifications)
                ));
            }
            eprintln!("{line}");
            last_responses = responses;
            last_notifications = notifications;
        }
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) min: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Latency {
    /// Percentiles of `histogram` (all zero when empty).
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Latency {
                min: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Latency {
            min: histogram.min(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: (histogram.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Errors {
    pub(crate) reset: u64,
    pub(crate) send: u64,
    pub(crate) backlog: u64,
    pub(crate) malformed: u64,
    pub(crate) unmatched: u64,
}

/// The final summary of a load run (see the module docs for the fields).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) target: String,
    pub(crate) method: String,
    #[serde(rename = "type")]
    pub(crate) mtype: String,
    pub(crate) mode: &'static str,
    pub(crate) clients: usize,
    pub(crate) sockets: usize,
    pub(crate) requested_rate: Option<f64>,
    pub(crate) elapsed_s: f64,
    pub(crate) requests_sent: u64,
    pub(crate) responses: u64,
    pub(crate) responses_by_code: BTreeMap<String, u64>,
    pub(crate) timeouts: u64,
    pub(crate) retransmissions: u64,
    pub(crate) errors: Errors,
    pub(crate) errors_total: u64,
    pub(crate) throughput_rps: f64,
    pub(crate) latency_us: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) observe: Option<ObserveSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) publish: Option<Box<Summary>>,
}

/// What the observers saw.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ObserveSummary {
    pub(crate) observers: usize,
    pub(crate) registered: u64,
    pub(crate) registration_failed: u64,
    pub(crate) notifications: u64,
    pub(crate) notifications_with_timestamp: u64,
    pub(crate) notifications_per_observer_min: u64,
    pub(crate) notifications_per_observer_max: u64,
    /// Notifications per second over the observe period.
    pub(crate) notifications_per_s: f64,
    pub(crate) delivery_latency_us: Latency,
}

/// The run's description, filled into the summary.
#[derive(Debug, Clone)]
pub(crate) struct RunLabel {
    pub(crate) target: String,
    pub(crate) method: Code,
    pub(crate) confirmable: bool,
    pub(crate) open_rate: Option<f64>,
    pub(crate) clients: usize,
    pub(crate) sockets: usize,
}

impl Summary {
    /// Builds the summary from the merged counters and histogram.
    pub(crate) fn new(
        label: &RunLabel,
        counters: &Counters,
        latency: &Histogram<u64>,
        measure_start: Instant,
        send_end: Instant,
    ) -> Summary {
        let end = counters.last_response.unwrap_or(send_end);
        let elapsed = end.saturating_duration_since(measure_start).as_secs_f64();
        let responses_by_code = counters
            .codes
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(code, count)| (Code::from_u8(code as u8).to_string(), *count))
            .collect();
        Summary {
            target: label.target.clone(),
            method: label.method.name().unwrap_or("?").to_owned(),
            mtype: if label.confirmable { "CON" } else { "NON" }.to_owned(),
            mode: if label.open_rate.is_some() {
                "open"
            } else {
                "closed"
            },
            clients: label.clients,
            sockets: label.sockets,
            requested_rate: label.open_rate,
            elapsed_s: (elapsed * 1000.0).round() / 1000.0,
            requests_sent: counters.sent,
            responses: counters.responses,
            responses_by_code,
            timeouts: counters.timeouts,
            retransmissions: counters.retransmissions,
            errors: Errors {
                reset: counters.resets,
                send: counters.send_errors,
                backlog: counters.backlog,
                malformed: counters.malformed,
                unmatched: counters.unmatched,
            },
            errors_total: counters.errors_total(),
            throughput_rps: if elapsed > 0.0 {
                (counters.responses as f64 / elapsed * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency_us: Latency::of(latency),
            observe: None,
            publish: None,
        }
    }

    /// The human-readable form.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out, "");
        out
    }

    fn write_text(&self, out: &mut String, indent: &str) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "{indent}target            {} ({} {}, {} loop{}, {} clients on {} sockets)",
            self.target,
            self.mtype,
            self.method,
            self.mode,
            self.requested_rate
                .map(|r| format!(" at {r}/s"))
                .unwrap_or_default(),
            self.clients,
            self.sockets
        );
        let _ = writeln!(out, "{indent}elapsed           {:.3} s", self.elapsed_s);
        let _ = writeln!(out, "{indent}requests sent     {}", self.requests_sent);
        let _ = writeln!(out, "{indent}responses         {}", self.responses);
        for (code, count) in &self.responses_by_code {
            let _ = writeln!(out, "{indent}  {code}: {count}");
        }
        let _ = writeln!(out, "{indent}timeouts          {}", self.timeouts);
        let _ = writeln!(out, "{indent}retransmissions   {}", self.retransmissions);
        let e = &self.errors;
        let _ = writeln!(
            out,
            "{indent}errors            {} (reset {}, send {}, backlog {}; malformed datagrams {}, unmatched {})",
            self.errors_total, e.reset, e.send, e.backlog, e.malformed, e.unmatched
        );
        let _ = writeln!(
            out,
            "{indent}throughput        {:.1} responses/s",
            self.throughput_rps
        );
        write_latency(out, indent, "latency", &self.latency_us);
        if let Some(observe) = &self.observe {
            let _ = writeln!(
                out,
                "{indent}observers         {} ({} registered, {} failed)",
                observe.observers, observe.registered, observe.registration_failed
            );
            let _ = writeln!(
                out,
                "{indent}notifications     {} ({:.1}/s; {} with timestamp; per observer min {} max {})",
                observe.notifications,
                observe.notifications_per_s,
                observe.notifications_with_timestamp,
                observe.notifications_per_observer_min,
                observe.notifications_per_observer_max
            );
            write_latency(out, indent, "delivery", &observe.delivery_latency_us);
        }
        if let Some(publish) = &self.publish {
            let _ = writeln!(out, "{indent}publisher:");
            publish.write_text(out, "  ");
        }
    }
}

fn write_latency(out: &mut String, indent: &str, name: &str, l: &Latency) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{indent}{name:<17} p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us (min {} us, mean {:.1} us)",
        l.p50, l.p90, l.p99, l.p999, l.max, l.min, l.mean
    );
}
