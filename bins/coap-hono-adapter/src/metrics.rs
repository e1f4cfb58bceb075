//! Prometheus metrics: responses by code, forwarded messages, broker round
//! trips and command waits (from the adapter, pre-resolved handles),
//! endpoint and DTLS statistics (copied from each listener's `Stats` once a
//! second, under the same names as in EMQX mode).

use std::sync::Arc;
use std::time::Duration;

use coap_endpoint::coap_codec::Code;
use coap_endpoint::{DtlsTransport, EndpointHandle};
use coap_metrics::{ListenerMetrics, set_gauge};
use gateway_kit::{BROKER_RTT_BUCKETS, Counter, Gauge, Histogram, MetricsError, MetricsRegistry};
use hono_coap::{AdapterObserver, ClientTable};

/// Codes the adapter answers with; anything else counts as `other`.
const CODES: [Code; 12] = [
    Code::CHANGED,
    Code::BAD_REQUEST,
    Code::UNAUTHORIZED,
    Code::FORBIDDEN,
    Code::NOT_FOUND,
    Code::METHOD_NOT_ALLOWED,
    Code::REQUEST_ENTITY_TOO_LARGE,
    Code::TOO_MANY_REQUESTS,
    Code::INTERNAL_SERVER_ERROR,
    Code::SERVICE_UNAVAILABLE,
    Code::BAD_OPTION,
    Code::CONTENT,
];

/// The adapter's counters.
pub(crate) struct AdapterMetrics {
    responses: Vec<(Code, Counter)>,
    other_responses: Counter,
    telemetry: Counter,
    events: Counter,
    command_responses: Counter,
    commands: Counter,
    /// Broker round trips by kind: telemetry, event, command_response.
    round_trips: [Histogram; 3],
    command_waits: Gauge,
}

impl AdapterMetrics {
    /// Registers the counters.
    pub(crate) fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        const RESPONSES: &str = "hono_coap_responses_total";
        const RESPONSES_HELP: &str = "Responses sent by the adapter, by CoAP code.";
        let mut responses = Vec::with_capacity(CODES.len());
        for code in CODES {
            let label = code.to_string();
            responses.push((
                code,
                registry.counter(RESPONSES, RESPONSES_HELP, &[("code", &label)])?,
            ));
        }
        let other_responses = registry.counter(RESPONSES, RESPONSES_HELP, &[("code", "other")])?;
        const FORWARDED: &str = "hono_coap_messages_forwarded_total";
        const FORWARDED_HELP: &str = "Messages accepted downstream, by kind.";
        Ok(Self {
            responses,
            other_responses,
            telemetry: registry.counter(FORWARDED, FORWARDED_HELP, &[("kind", "telemetry")])?,
            events: registry.counter(FORWARDED, FORWARDED_HELP, &[("kind", "event")])?,
            command_responses: registry.counter(
                FORWARDED,
                FORWARDED_HELP,
                &[("kind", "command_response")],
            )?,
            commands: registry.counter(
                "hono_coap_commands_delivered_total",
                "Commands delivered to waiting devices.",
                &[],
            )?,
            round_trips: [
                round_trip(registry, "telemetry")?,
                round_trip(registry, "event")?,
                round_trip(registry, "command_response")?,
            ],
            command_waits: registry.gauge(
                "hono_coap_command_waits",
                "Requests with hono-ttd waiting for a command now.",
                &[],
            )?,
        })
    }
}

impl AdapterObserver for AdapterMetrics {
    fn response(&self, code: Code) {
        match self.responses.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self.other_responses.inc(),
        }
    }

    fn forwarded(&self, kind: &'static str) {
        match kind {
            "telemetry" => self.telemetry.inc(),
            "event" => self.events.inc(),
            _ => self.command_responses.inc(),
        }
    }

    fn command_delivered(&self) {
        self.commands.inc();
    }

    fn broker_round_trip(&self, kind: &'static str, took: Duration) {
        let index = match kind {
            "telemetry" => 0,
            "event" => 1,
            _ => 2,
        };
        if let Some(histogram) = self.round_trips.get(index) {
            histogram.observe_duration(took);
        }
    }

    fn command_wait_started(&self) {
        self.command_waits.inc();
    }

    fn command_wait_ended(&self) {
        self.command_waits.dec();
    }
}

fn round_trip(registry: &MetricsRegistry, kind: &str) -> Result<Histogram, MetricsError> {
    registry.histogram(
        "hono_coap_broker_round_trip_seconds",
        "Time from handing a message to the downstream until it was accepted (for CON \
         telemetry and events: the RabbitMQ publisher confirm), by kind.",
        &[("kind", kind)],
        BROKER_RTT_BUCKETS,
    )
}

pub(crate) use coap_metrics::SharedDtls;

/// Copies each listener's endpoint statistics, the DTLS counters and the
/// size of the client table into metrics once a second.
pub(crate) fn spawn_endpoint_stats(
    registry: &MetricsRegistry,
    handles: Vec<(&'static str, EndpointHandle)>,
    dtls: Arc<DtlsTransport>,
    clients: Arc<ClientTable>,
) -> Result<(), MetricsError> {
    let known_clients = registry.gauge(
        "hono_coap_clients",
        "Clients in the management API's table (devices seen recently, capped by --max-clients).",
        &[],
    )?;
    let mut listeners = ListenerMetrics::register(registry, handles, Some(dtls))?;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            set_gauge(
                &known_clients,
                u64::try_from(clients.len()).unwrap_or(u64::MAX),
            );
            listeners.refresh().await;
        }
    });
    Ok(())
}
