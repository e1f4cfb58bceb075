//! Prometheus metrics.
//!
//! Two sources:
//! - the gateway's hooks ([`GatewayMetrics`], a [`GatewayObserver`]):
//!   responses by code, messages in (publishes accepted by the broker) and
//!   out (notifications), the broker round-trip histogram. Every handle is
//!   resolved at start-up, so the hot path is one relaxed atomic add (two
//!   clock reads for a round trip);
//! - a task that copies, once a second, each listener's endpoint
//!   statistics (datagrams, requests by method, retransmissions, dedup
//!   hits, queue drops, ...), the DTLS handshake counters and the
//!   session/observer counts. Totals become counters (the task adds the
//!   difference since the last copy); current counts become gauges.
//!
//! ```text
//! Gateway ──hooks──▶ GatewayMetrics (counters, histogram) ──┐
//! EndpointHandle::stats ─┐                                  ├─▶ MetricsRegistry ─▶ GET /metrics
//! DtlsSocket::stats ─────┴─ every 1 s ─▶ counters, gauges ──┘
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_endpoint::coap_codec::Code;
use coap_endpoint::{DtlsTransport, EndpointHandle, Peer, Stats, Transport};
use emqx_coap::broker::Qos;
use emqx_coap::gateway::{BrokerOperation, Gateway, GatewayObserver};
use gateway_kit::{Counter, Gauge, Histogram, MetricsError, MetricsRegistry};

/// Codes the gateway answers with; anything else counts as `other`.
const CODES: [Code; 14] = [
    Code::CREATED,
    Code::DELETED,
    emqx_coap::gateway::UNSUBSCRIBED,
    Code::CHANGED,
    Code::CONTENT,
    Code::BAD_REQUEST,
    Code::UNAUTHORIZED,
    Code::NOT_FOUND,
    Code::METHOD_NOT_ALLOWED,
    Code::REQUEST_ENTITY_TOO_LARGE,
    Code::TOO_MANY_REQUESTS,
    Code::INTERNAL_SERVER_ERROR,
    Code::SERVICE_UNAVAILABLE,
    Code::BAD_OPTION,
];

/// The gateway's counters, fed by its hooks.
pub(crate) struct GatewayMetrics {
    responses: Vec<(Code, Counter)>,
    other_responses: Counter,
    publishes: [Counter; 3],
    notifications_con: Counter,
    notifications_non: Counter,
    round_trip_publish: Histogram,
    round_trip_subscribe: Histogram,
}

impl GatewayMetrics {
    /// Registers the counters and the histogram.
    pub(crate) fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        const RESPONSES: &str = "emqx_coap_responses_total";
        const RESPONSES_HELP: &str =
            "Responses to CoAP requests, by CoAP code (2.05 includes observe registrations).";
        let mut responses = Vec::with_capacity(CODES.len());
        for code in CODES {
            let label = code.to_string();
            responses.push((
                code,
                registry.counter(RESPONSES, RESPONSES_HELP, &[("code", &label)])?,
            ));
        }
        const PUBLISHES: &str = "emqx_coap_publishes_total";
        const PUBLISHES_HELP: &str =
            "Messages in: publishes from devices accepted by the broker, by QoS.";
        const NOTIFICATIONS: &str = "emqx_coap_notifications_total";
        const NOTIFICATIONS_HELP: &str =
            "Messages out: notifications handed to the endpoint for observers, by message type.";
        const ROUND_TRIP: &str = "emqx_coap_broker_round_trip_seconds";
        const ROUND_TRIP_HELP: &str = "Time from handing a QoS 1/2 publish or a subscribe to the \
             broker until it acknowledged or refused it, by operation.";
        let buckets = gateway_kit::metrics::BROKER_RTT_BUCKETS;
        Ok(Self {
            responses,
            other_responses: registry.counter(RESPONSES, RESPONSES_HELP, &[("code", "other")])?,
            publishes: [
                registry.counter(PUBLISHES, PUBLISHES_HELP, &[("qos", "0")])?,
                registry.counter(PUBLISHES, PUBLISHES_HELP, &[("qos", "1")])?,
                registry.counter(PUBLISHES, PUBLISHES_HELP, &[("qos", "2")])?,
            ],
            notifications_con: registry.counter(
                NOTIFICATIONS,
                NOTIFICATIONS_HELP,
                &[("type", "con")],
            )?,
            notifications_non: registry.counter(
                NOTIFICATIONS,
                NOTIFICATIONS_HELP,
                &[("type", "non")],
            )?,
            round_trip_publish: registry.histogram(
                ROUND_TRIP,
                ROUND_TRIP_HELP,
                &[("operation", "publish")],
                buckets,
            )?,
            round_trip_subscribe: registry.histogram(
                ROUND_TRIP,
                ROUND_TRIP_HELP,
                &[("operation", "subscribe")],
                buckets,
            )?,
        })
    }
}

impl GatewayObserver for GatewayMetrics {
    fn response(&self, code: Code) {
        match self.responses.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self.other_responses.inc(),
        }
    }

    fn published(&self, qos: Qos) {
        let index = usize::from(qos.as_u8());
        if let Some(counter) = self.publishes.get(index) {
            counter.inc();
        }
    }

    fn notified(&self, confirmable: bool) {
        if confirmable {
            self.notifications_con.inc();
        } else {
            self.notifications_non.inc();
        }
    }

    fn broker_round_trip(&self, operation: BrokerOperation, took: Duration) {
        match operation {
            BrokerOperation::Subscribe => self.round_trip_subscribe.observe_duration(took),
            _ => self.round_trip_publish.observe_duration(took),
        }
    }
}

/// A counter that follows a total read elsewhere (a statistics snapshot):
/// each copy adds what the total grew by since the last one.
struct TotalCounter {
    counter: Counter,
    last: u64,
}

impl TotalCounter {
    fn new(counter: Counter) -> Self {
        Self { counter, last: 0 }
    }

    fn follow(&mut self, total: u64) {
        if total > self.last {
            self.counter.inc_by(total - self.last);
        }
        self.last = total;
    }
}

/// One listener's endpoint statistics as metrics.
struct EndpointMetrics {
    handle: EndpointHandle,
    datagrams_in: TotalCounter,
    datagrams_out: TotalCounter,
    /// GET, POST, PUT, DELETE, other.
    requests: [TotalCounter; 5],
    retransmissions: TotalCounter,
    give_ups: TotalCounter,
    dedup_hits: TotalCounter,
    queue_drops: TotalCounter,
    overload_rejections: TotalCounter,
    malformed: TotalCounter,
    observers: Gauge,
}

impl EndpointMetrics {
    fn register(
        registry: &MetricsRegistry,
        listener: &str,
        handle: EndpointHandle,
    ) -> Result<Self, MetricsError> {
        let labels = [("listener", listener)];
        let counter =
            |name: &str, help: &str| registry.counter(name, help, &labels).map(TotalCounter::new);
        const REQUESTS: &str = "coap_requests_total";
        const REQUESTS_HELP: &str =
            "CoAP requests received (duplicates not counted), by listener and method.";
        let request = |method: &str| {
            registry
                .counter(
                    REQUESTS,
                    REQUESTS_HELP,
                    &[("listener", listener), ("method", method)],
                )
                .map(TotalCounter::new)
        };
        Ok(Self {
            datagrams_in: counter("coap_datagrams_in_total", "UDP/DTLS datagrams received.")?,
            datagrams_out: counter("coap_datagrams_out_total", "UDP/DTLS datagrams sent.")?,
            requests: [
                request("GET")?,
                request("POST")?,
                request("PUT")?,
                request("DELETE")?,
                request("other")?,
            ],
            retransmissions: counter(
                "coap_retransmissions_total",
                "CON messages (notifications, requests to devices) sent again after an ACK timeout.",
            )?,
            give_ups: counter(
                "coap_con_give_ups_total",
                "CON messages given up after the last retransmission.",
            )?,
            dedup_hits: counter(
                "coap_dedup_hits_total",
                "Duplicate requests (CON and NON) answered from the deduplication cache.",
            )?,
            queue_drops: counter(
                "coap_queue_drops_total",
                "Notifications dropped because a peer's queue was full.",
            )?,
            overload_rejections: counter(
                "coap_overload_rejections_total",
                "Requests refused with 5.03 because too many were pending.",
            )?,
            malformed: counter(
                "coap_malformed_total",
                "Malformed datagrams (answered with RST or 4.0x, or dropped).",
            )?,
            observers: registry.gauge(
                "coap_observers",
                "Observe relations held by the endpoint.",
                &labels,
            )?,
            handle,
        })
    }

    fn copy(&mut self, stats: &Stats) {
        self.datagrams_in.follow(stats.datagrams_in);
        self.datagrams_out.follow(stats.datagrams_out);
        let r = &stats.requests_in;
        let methods = [r.get, r.post, r.put, r.delete, r.fetch_patch + r.other];
        for (counter, total) in self.requests.iter_mut().zip(methods) {
            counter.follow(total);
        }
        self.retransmissions.follow(stats.retransmissions);
        self.give_ups.follow(stats.give_ups);
        self.dedup_hits
            .follow(stats.dedup_con_hits.saturating_add(stats.dedup_non_hits));
        self.queue_drops.follow(stats.queue_drops);
        self.overload_rejections.follow(stats.overload_rejections);
        let m = &stats.malformed;
        self.malformed.follow(
            m.reset
                .saturating_add(m.dropped)
                .saturating_add(m.bad_option)
                .saturating_add(m.bad_request)
                .saturating_add(m.method_not_allowed),
        );
        set(&self.observers, stats.observers);
    }
}

/// The DTLS transport shared between the CoAP server and the metrics task
/// (which reads its handshake counters).
pub(crate) struct SharedDtls(pub(crate) Arc<DtlsTransport>);

impl Transport for SharedDtls {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Peer)> {
        self.0.recv(buf).await
    }

    async fn send(&self, peer: &Peer, bytes: &[u8]) -> io::Result<()> {
        self.0.send(peer, bytes).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The DTLS socket's counters as metrics.
struct DtlsMetrics {
    transport: Arc<DtlsTransport>,
    sessions: Gauge,
    completed: TotalCounter,
    failed: TotalCounter,
}

impl DtlsMetrics {
    fn register(
        registry: &MetricsRegistry,
        transport: Arc<DtlsTransport>,
    ) -> Result<Self, MetricsError> {
        const HANDSHAKES: &str = "dtls_handshakes_total";
        const HANDSHAKES_HELP: &str = "DTLS handshakes by result: completed, or failed (timeout, \
             unknown PSK identity, alert, protocol error).";
        Ok(Self {
            transport,
            sessions: registry.gauge(
                "dtls_sessions",
                "DTLS sessions (handshaking and established).",
                &[],
            )?,
            completed: TotalCounter::new(registry.counter(
                HANDSHAKES,
                HANDSHAKES_HELP,
                &[("result", "completed")],
            )?),
            failed: TotalCounter::new(registry.counter(
                HANDSHAKES,
                HANDSHAKES_HELP,
                &[("result", "failed")],
            )?),
        })
    }

    fn copy(&mut self) {
        let stats = self.transport.socket().stats();
        set(
            &self.sessions,
            u64::try_from(stats.sessions).unwrap_or(u64::MAX),
        );
        self.completed.follow(stats.handshakes_completed);
        self.failed.follow(stats.handshakes_failed.total());
    }
}

fn set(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// Copies the gateway's session/observer counts, each listener's endpoint
/// statistics and the DTLS counters into metrics once a second.
pub(crate) fn spawn_stats_copier(
    registry: &MetricsRegistry,
    gateway: Gateway,
    handles: Vec<(&'static str, EndpointHandle)>,
    dtls: Option<Arc<DtlsTransport>>,
) -> Result<(), MetricsError> {
    let sessions = registry.gauge(
        "emqx_coap_sessions",
        "Connection-mode sessions (clients that did POST mqtt/connection).",
        &[],
    )?;
    let observers = registry.gauge(
        "emqx_coap_observers",
        "Observe relations, each one a broker subscription.",
        &[],
    )?;
    let mut listeners = Vec::with_capacity(handles.len());
    for (listener, handle) in handles {
        listeners.push(EndpointMetrics::register(registry, listener, handle)?);
    }
    let mut dtls = dtls
        .map(|transport| DtlsMetrics::register(registry, transport))
        .transpose()?;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            set(&sessions, gateway.session_count() as u64);
            set(&observers, gateway.observer_count() as u64);
            for listener in &mut listeners {
                if let Ok(stats) = listener.handle.stats().await {
                    listener.copy(&stats);
                }
            }
            if let Some(dtls) = &mut dtls {
                dtls.copy();
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_counter_adds_the_growth_of_the_total() {
        let registry = MetricsRegistry::new();
        let counter = registry.counter("t_total", "Test.", &[]).unwrap();
        let mut total = TotalCounter::new(counter.clone());
        total.follow(5);
        total.follow(5);
        total.follow(12);
        assert_eq!(counter.get(), 12);
        // A total that went down (a restarted source) adds nothing.
        total.follow(3);
        total.follow(4);
        assert_eq!(counter.get(), 13);
    }

    #[test]
    fn every_family_has_help() {
        let registry = MetricsRegistry::new();
        GatewayMetrics::register(&registry).unwrap();
        let text = registry.render();
        for family in [
            "emqx_coap_responses_total",
            "emqx_coap_publishes_total",
            "emqx_coap_notifications_total",
            "emqx_coap_broker_round_trip_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        }
    }
}
