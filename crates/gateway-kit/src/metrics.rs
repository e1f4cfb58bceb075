//! A small metrics registry rendered in the Prometheus text format (0.0.4).
//!
//! Hand-written rather than `prometheus-client` because what the gateway
//! needs is small (counters, gauges, fixed-bucket histograms, constant
//! labels) and this keeps the hot path to one relaxed atomic add on a handle
//! the caller already holds: label sets are resolved once, at registration,
//! and the handle is an `Arc` around the atomic. The registry itself is only
//! locked when registering and when rendering `/metrics`.
//!
//! ```text
//!  startup:  registry.counter(name, help, labels) ──▶ Counter (Arc<AtomicU64>)
//!  hot path: counter.inc()                          (one atomic add, no lock)
//!  scrape:   registry.render() ──▶ "# HELP ..\n# TYPE ..\nname{labels} value\n"
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Buckets (seconds) for the broker round-trip time: 0.5 ms to 10 s.
pub const BROKER_RTT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of [`MetricsRegistry::render`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A set of metric families; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    families: Arc<Mutex<Vec<Family>>>,
}

/// Why a metric could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The metric name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}")]
    InvalidName(String),
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*`, starts with `__`, repeats,
    /// or is `le` on a histogram.
    #[error("invalid label name {label:?} on metric {metric:?}")]
    InvalidLabel {
        /// The metric.
        metric: String,
        /// The label name.
        label: String,
    },
    /// The name is already registered with another type, help text, label
    /// names or buckets.
    #[error(
        "metric {0:?} is already registered with a different type, help, label names or buckets"
    )]
    Conflict(String),
    /// Histogram buckets must be finite and strictly increasing.
    #[error("histogram {0:?} needs finite, strictly increasing buckets")]
    InvalidBuckets(String),
}

/// A monotonically increasing count. `Default` gives a handle that belongs to
/// no registry (useful in tests and for optional metrics).
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (sessions, observers, queue depth).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets, with their sum and count.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds (inclusive, `le`), strictly increasing; `+Inf` is implicit.
    bounds: Box<[f64]>,
    /// Per-bucket counts, *not* cumulative; one more than `bounds` for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with the given bucket bounds that belongs to no registry.
    pub fn detached(bounds: &[f64]) -> Result<Histogram, MetricsError> {
        if !buckets_valid(bounds) {
            return Err(MetricsError::InvalidBuckets(String::new()));
        }
        Ok(Histogram::with_bounds(bounds))
    }

    fn with_bounds(bounds: &[f64]) -> Histogram {
        Histogram(Arc::new(HistogramCore {
            bounds: bounds.into(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation; NaN is ignored.
    #[inline]
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let core = &*self.0;
        let index = core.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = core.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // There is no atomic f64 add; a compare-exchange loop is uncontended
        // in practice (one broker confirm at a time per session).
        let _ = core
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Records a duration in seconds.
    #[inline]
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    label_names: Vec<String>,
    buckets: Vec<f64>,
    series: Vec<Series>,
}

struct Series {
    /// Label values in the family's label-name order.
    label_values: Vec<String>,
    /// `name="escaped value",...` without braces, computed once.
    rendered_labels: String,
    metric: SeriesMetric,
}

enum SeriesMetric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or finds) the counter `name` with these constant labels.
    ///
    /// Registering the same name and label values again returns a handle to
    /// the same counter, so components may register independently.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Counter, MetricsError> {
        match self.register(name, help, Kind::Counter, labels, &[], || {
            SeriesMetric::Counter(Counter::default())
        })? {
            SeriesMetric::Counter(c) => Ok(c.clone()),
            _ => Err(MetricsError::Conflict(name.to_owned())),
        }
    }

    /// Registers (or finds) the gauge `name` with these constant labels.
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, MetricsError> {
        match self.register(name, help, Kind::Gauge, labels, &[], || {
            SeriesMetric::Gauge(Gauge::default())
        })? {
            SeriesMetric::Gauge(g) => Ok(g.clone()),
            _ => Err(MetricsError::Conflict(name.to_owned())),
        }
    }

    /// Registers (or finds) the histogram `name` with these constant labels
    /// and bucket upper bounds (e.g. [`BROKER_RTT_BUCKETS`]).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        if !buckets_valid(buckets) {
            return Err(MetricsError::InvalidBuckets(name.to_owned()));
        }
        match self.register(name, help, Kind::Histogram, labels, buckets, || {
            SeriesMetric::Histogram(Histogram::with_bounds(buckets))
        })? {
            SeriesMetric::Histogram(h) => Ok(h.clone()),
            _ => Err(MetricsError::Conflict(name.to_owned())),
        }
    }

    /// Renders every family in registration order in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::with_capacity(256 * families.len().max(1));
        for family in families.iter() {
            render_family(&mut out, family);
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Family>> {
        // A panic while holding the lock cannot leave the vector half-updated
        // in a way that matters for rendering, so a poisoned lock is used as is.
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        buckets: &[f64],
        make: impl FnOnce() -> SeriesMetric,
    ) -> Result<SeriesMetric, MetricsError> {
        if !valid_metric_name(name) {
            return Err(MetricsError::InvalidName(name.to_owned()));
        }
        for (i, (label, _)) in labels.iter().enumerate() {
            let repeated = labels.iter().take(i).any(|(other, _)| other == label);
            if !valid_label_name(label) || repeated || (kind == Kind::Histogram && *label == "le") {
                return Err(MetricsError::InvalidLabel {
                    metric: name.to_owned(),
                    label: (*label).to_owned(),
                });
            }
        }
        let mut families = self.lock();
        let index = match families.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    label_names: labels.iter().map(|(n, _)| (*n).to_owned()).collect(),
                    buckets: buckets.to_vec(),
                    series: Vec::new(),
                });
                families.len() - 1
            }
        };
        let Some(family) = families.get_mut(index) else {
            return Err(MetricsError::Conflict(name.to_owned()));
        };
        let same_shape = family.kind == kind
            && family.help == help
            && family.buckets == buckets
            && family.label_names.len() == labels.len()
            && family
                .label_names
                .iter()
                .zip(labels)
                .all(|(known, (given, _))| known == given);
        if !same_shape {
            return Err(MetricsError::Conflict(name.to_owned()));
        }
        let existing = family.series.iter().position(|s| {
            s.label_values
                .iter()
                .zip(labels)
                .all(|(known, (_, given))| known == given)
        });
        let series_index = match existing {
            Some(i) => i,
            None => {
                family.series.push(Series {
                    label_values: labels.iter().map(|(_, v)| (*v).to_owned()).collect(),
                    rendered_labels: render_labels(labels),
                    metric: make(),
                });
                family.series.len() - 1
            }
        };
        match family.series.get(series_index).map(|s| &s.metric) {
            Some(SeriesMetric::Counter(c)) => Ok(SeriesMetric::Counter(c.clone())),
            Some(SeriesMetric::Gauge(g)) => Ok(SeriesMetric::Gauge(g.clone())),
            Some(SeriesMetric::Histogram(h)) => Ok(SeriesMetric::Histogram(h.clone())),
            None => Err(MetricsError::Conflict(name.to_owned())),
        }
    }
}

fn render_family(out: &mut String, family: &Family) {
    let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
    for series in &family.series {
        let labels = &series.rendered_labels;
        match &series.metric {
            SeriesMetric::Counter(c) => write_sample(out, &family.name, "", labels, c.get()),
            SeriesMetric::Gauge(g) => write_sample(out, &family.name, "", labels, g.get()),
            SeriesMetric::Histogram(h) => render_histogram(out, &family.name, labels, h),
        }
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, histogram: &Histogram) {
    let core = &*histogram.0;
    let separator = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (i, count) in core.counts.iter().enumerate() {
        cumulative += count.load(Ordering::Relaxed);
        let le = core
            .bounds
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"{le}\"}} {cumulative}"
        );
    }
    // The count is the +Inf bucket, so the two always agree in one scrape.
    write_sample(out, name, "_sum", labels, format_float(histogram.sum()));
    write_sample(out, name, "_count", labels, cumulative);
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    value: impl std::fmt::Display,
) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name}{suffix} {value}");
    } else {
        let _ = writeln!(out, "{name}{suffix}{{{labels}}} {value}");
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value_into(&mut out, value);
        out.push('"');
    }
    out
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed (not quotes).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

fn buckets_valid(bounds: &[f64]) -> bool {
    bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| matches!(w, [a, b] if a < b))
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_gauge_text() {
        let registry = MetricsRegistry::new();
        let ok = registry
            .counter(
                "coap_requests_total",
                "CoAP requests by response code",
                &[("code", "2.05")],
            )
            .unwrap();
        let not_found = registry
            .counter(
                "coap_requests_total",
                "CoAP requests by response code",
                &[("code", "4.04")],
            )
            .unwrap();
        let sessions = registry
            .gauge("coap_sessions", "Open sessions", &[])
            .unwrap();
        ok.inc();
        ok.inc_by(2);
        not_found.inc();
        sessions.inc();
        sessions.inc();
        sessions.dec();
        assert_eq!(
            registry.render(),
            "# HELP coap_requests_total CoAP requests by response code\n\
             # TYPE coap_requests_total counter\n\
             coap_requests_total{code=\"2.05\"} 3\n\
             coap_requests_total{code=\"4.04\"} 1\n\
             # HELP coap_sessions Open sessions\n\
             # TYPE coap_sessions gauge\n\
             coap_sessions 1\n"
        );
    }

    #[test]
    fn registering_twice_shares_the_series() {
        let registry = MetricsRegistry::new();
        let a = registry.counter("x_total", "x", &[("k", "v")]).unwrap();
        let b = registry.counter("x_total", "x", &[("k", "v")]).unwrap();
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
        assert_eq!(registry.render().matches("x_total{").count(), 1);
    }

    #[test]
    fn label_and_help_escaping() {
        let registry = MetricsRegistry::new();
        registry
            .counter(
                "esc_total",
                "a \\ back\nslash \"q\"",
                &[("v", "a\"b\\c\nd")],
            )
            .unwrap()
            .inc();
        let text = registry.render();
        assert!(
            text.contains("# HELP esc_total a \\\\ back\\nslash \"q\"\n"),
            "{text}"
        );
        assert!(
            text.contains("esc_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_sum_count() {
        let registry = MetricsRegistry::new();
        let rtt = registry
            .histogram(
                "broker_rtt_seconds",
                "Broker round trip",
                &[("broker", "mqtt")],
                &[0.01, 0.1, 1.0],
            )
            .unwrap();
        rtt.observe(0.005);
        rtt.observe(0.01); // le is inclusive
        rtt.observe_duration(Duration::from_millis(50));
        rtt.observe(3.0);
        rtt.observe(f64::NAN);
        assert_eq!(rtt.count(), 4);
        let text = registry.render();
        let expected = "# HELP broker_rtt_seconds Broker round trip\n\
             # TYPE broker_rtt_seconds histogram\n\
             broker_rtt_seconds_bucket{broker=\"mqtt\",le=\"0.01\"} 2\n\
             broker_rtt_seconds_bucket{broker=\"mqtt\",le=\"0.1\"} 3\n\
             broker_rtt_seconds_bucket{broker=\"mqtt\",le=\"1\"} 3\n\
             broker_rtt_seconds_bucket{broker=\"mqtt\",le=\"+Inf\"} 4\n";
        assert!(text.starts_with(expected), "{text}");
        let sum_line = text
            .lines()
            .find(|l| l.starts_with("broker_rtt_seconds_sum"))
            .unwrap();
        let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 3.065).abs() < 1e-9, "{sum_line}");
        assert!(
            text.ends_with("broker_rtt_seconds_count{broker=\"mqtt\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_without_labels_and_default_buckets() {
        let registry = MetricsRegistry::new();
        let h = registry
            .histogram("rtt_seconds", "rtt", &[], BROKER_RTT_BUCKETS)
            .unwrap();
        h.observe(0.0001);
        let text = registry.render();
        assert!(
            text.contains("rtt_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("rtt_seconds_bucket{le=\"10\"} 1\n"), "{text}");
        assert!(text.contains("rtt_seconds_count 1\n"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("rtt_seconds_bucket"))
                .count(),
            BROKER_RTT_BUCKETS.len() + 1
        );
    }

    #[test]
    fn registration_errors() {
        let registry = MetricsRegistry::new();
        assert!(matches!(
            registry.counter("1bad", "h", &[]),
            Err(MetricsError::InvalidName(_))
        ));
        assert!(matches!(
            registry.counter("a-b", "h", &[]),
            Err(MetricsError::InvalidName(_))
        ));
        assert!(matches!(
            registry.counter("ok_total", "h", &[("__x", "v")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            registry.counter("ok_total", "h", &[("a", "1"), ("a", "2")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            registry.histogram("h_seconds", "h", &[("le", "1")], &[1.0]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            registry.histogram("h_seconds", "h", &[], &[1.0, 1.0]),
            Err(MetricsError::InvalidBuckets(_))
        ));
        registry.counter("ok_total", "h", &[("a", "1")]).unwrap();
        assert!(matches!(
            registry.gauge("ok_total", "h", &[("a", "1")]),
            Err(MetricsError::Conflict(_))
        ));
        assert!(matches!(
            registry.counter("ok_total", "h", &[("b", "1")]),
            Err(MetricsError::Conflict(_))
        ));
        assert!(matches!(
            registry.counter("ok_total", "other", &[("a", "1")]),
            Err(MetricsError::Conflict(_))
        ));
        // Nothing half-registered by the failures above.
        assert_eq!(registry.render().matches("# TYPE").count(), 1);
    }
}
