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

use std::sync::Arc;
use std::time::Duration;

use coap_endpoint::coap_codec::Code;
use coap_endpoint::{DtlsTransport, EndpointHandle};
use coap_metrics::{ListenerMetrics, set_gauge};
use emqx_coap::broker::Qos;
use emqx_coap::gateway::{BrokerOperation, Gateway, GatewayObserver};
use gateway_kit::{Counter, Histogram, MetricsError, MetricsRegistry};

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

pub(crate) use coap_metrics::SharedDtls;

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
    let mut listeners = ListenerMetrics::register(registry, handles, dtls)?;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            set_gauge(&sessions, gateway.session_count() as u64);
            set_gauge(&observers, gateway.observer_count() as u64);
            listeners.refresh().await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
