//! Prometheus metrics: responses by code, publishes and notifications
//! (pre-resolved counters fed by the gateway's hooks), sessions and
//! observers, and each listener's endpoint statistics (copied once a
//! second).

use std::time::Duration;

use coap_endpoint::EndpointHandle;
use coap_endpoint::coap_codec::Code;
use emqx_coap::broker::Qos;
use emqx_coap::gateway::{Gateway, GatewayObserver};
use gateway_kit::{Counter, Gauge, MetricsError, MetricsRegistry};

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

/// The gateway's counters.
pub(crate) struct GatewayMetrics {
    responses: Vec<(Code, Counter)>,
    other_responses: Counter,
    publishes: [Counter; 3],
    notifications_con: Counter,
    notifications_non: Counter,
}

impl GatewayMetrics {
    /// Registers the counters.
    pub(crate) fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        const RESPONSES: &str = "emqx_coap_responses_total";
        const RESPONSES_HELP: &str = "Responses sent by the gateway, by CoAP code.";
        let mut responses = Vec::with_capacity(CODES.len());
        for code in CODES {
            let label = code.to_string();
            responses.push((
                code,
                registry.counter(RESPONSES, RESPONSES_HELP, &[("code", &label)])?,
            ));
        }
        const PUBLISHES: &str = "emqx_coap_publishes_total";
        const PUBLISHES_HELP: &str = "Publishes accepted by the broker, by QoS.";
        const NOTIFICATIONS: &str = "emqx_coap_notifications_total";
        const NOTIFICATIONS_HELP: &str = "Notifications handed to the endpoint, by message type.";
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
}

struct EndpointGauges {
    handle: EndpointHandle,
    datagrams_in: Gauge,
    datagrams_out: Gauge,
    retransmissions: Gauge,
    dedup_hits: Gauge,
    queue_drops: Gauge,
    observers: Gauge,
    malformed: Gauge,
}

/// Copies the gateway's session/observer counts and each listener's
/// endpoint statistics into gauges once a second.
pub(crate) fn spawn_gauges(
    registry: &MetricsRegistry,
    gateway: Gateway,
    handles: Vec<(&'static str, EndpointHandle)>,
) -> Result<(), MetricsError> {
    let sessions = registry.gauge("emqx_coap_sessions", "Connection-mode sessions.", &[])?;
    let observers = registry.gauge(
        "emqx_coap_observers",
        "Observe relations (broker subscriptions).",
        &[],
    )?;
    let mut listeners = Vec::with_capacity(handles.len());
    for (listener, handle) in handles {
        let labels = [("listener", listener)];
        let gauge = |name: &str, help: &str| registry.gauge(name, help, &labels);
        listeners.push(EndpointGauges {
            handle,
            datagrams_in: gauge("coap_datagrams_in", "Datagrams received.")?,
            datagrams_out: gauge("coap_datagrams_out", "Datagrams sent.")?,
            retransmissions: gauge("coap_retransmissions", "CON retransmissions sent.")?,
            dedup_hits: gauge(
                "coap_dedup_hits",
                "Duplicate requests answered from the cache.",
            )?,
            queue_drops: gauge("coap_queue_drops", "Queued notifications dropped.")?,
            observers: gauge("coap_observers", "Observe relations held by the endpoint.")?,
            malformed: gauge(
                "coap_malformed",
                "Malformed datagrams (reset, dropped or 4.0x).",
            )?,
        });
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        loop {
            ticker.tick().await;
            set(&sessions, gateway.session_count() as u64);
            set(&observers, gateway.observer_count() as u64);
            for l in &listeners {
                let Ok(stats) = l.handle.stats().await else {
                    continue;
                };
                set(&l.datagrams_in, stats.datagrams_in);
                set(&l.datagrams_out, stats.datagrams_out);
                set(&l.retransmissions, stats.retransmissions);
                set(
                    &l.dedup_hits,
                    stats.dedup_con_hits.saturating_add(stats.dedup_non_hits),
                );
                set(&l.queue_drops, stats.queue_drops);
                set(&l.observers, stats.observers);
                let m = &stats.malformed;
                set(
                    &l.malformed,
                    m.reset
                        .saturating_add(m.dropped)
                        .saturating_add(m.bad_option)
                        .saturating_add(m.bad_request)
                        .saturating_add(m.method_not_allowed),
                );
            }
        }
    });
    Ok(())
}
