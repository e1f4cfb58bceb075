//! Prometheus metrics: responses by code, forwarded messages, broker round
//! trips and command waits (from the adapter, pre-resolved handles),
//! endpoint and DTLS statistics (copied from each listener's `Stats` once a
//! second, under the same names as in EMQX mode).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_endpoint::coap_codec::Code;
use coap_endpoint::{DtlsTransport, EndpointHandle, Peer, Stats, Transport};
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

/// One listener's endpoint statistics as metrics (the same names as in
/// EMQX mode, so one dashboard serves both).
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
                "CON messages (separate responses carrying commands) sent again after an ACK timeout.",
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
                "Queued outgoing messages dropped because a peer's queue was full.",
            )?,
            overload_rejections: counter(
                "coap_overload_rejections_total",
                "Requests refused with 5.03 because too many were pending.",
            )?,
            malformed: counter(
                "coap_malformed_total",
                "Malformed datagrams (answered with RST or 4.0x, or dropped).",
            )?,
            handle,
        })
    }

    fn copy(&mut self, stats: &Stats) {
        self.datagrams_in.follow(stats.datagrams_in);
        self.datagrams_out.follow(stats.datagrams_out);
        let r = &stats.requests_in;
        let methods = [
            r.get,
            r.post,
            r.put,
            r.delete,
            r.fetch_patch.saturating_add(r.other),
        ];
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
    }
}

/// The DTLS transport shared between the CoAP server and the metrics task
/// (which reads its session and handshake counters).
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

/// Copies each listener's endpoint statistics, the DTLS counters and the
/// size of the client table into metrics once a second.
pub(crate) fn spawn_endpoint_stats(
    registry: &MetricsRegistry,
    handles: Vec<(&'static str, EndpointHandle)>,
    dtls: Arc<DtlsTransport>,
    clients: Arc<ClientTable>,
) -> Result<(), MetricsError> {
    let mut dtls = DtlsMetrics::register(registry, dtls)?;
    let known_clients = registry.gauge(
        "hono_coap_clients",
        "Clients in the management API's table (devices seen recently, capped by --max-clients).",
        &[],
    )?;
    let mut listeners = Vec::with_capacity(handles.len());
    for (listener, handle) in handles {
        listeners.push(EndpointMetrics::register(registry, listener, handle)?);
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            dtls.copy();
            set(
                &known_clients,
                u64::try_from(clients.len()).unwrap_or(u64::MAX),
            );
            for listener in &mut listeners {
                if let Ok(stats) = listener.handle.stats().await {
                    listener.copy(&stats);
                }
            }
        }
    });
    Ok(())
}
