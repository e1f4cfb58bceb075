//! Prometheus metrics: responses by code and forwarded messages (from the
//! adapter, pre-resolved counters), endpoint and DTLS statistics (copied
//! from each listener's `Stats` once a second).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_endpoint::coap_codec::Code;
use coap_endpoint::{DtlsTransport, EndpointHandle, Peer, Transport};
use gateway_kit::{Counter, Gauge, MetricsError, MetricsRegistry};
use hono_coap::AdapterObserver;

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
}

struct EndpointGauges {
    handle: EndpointHandle,
    datagrams_in: Gauge,
    datagrams_out: Gauge,
    retransmissions: Gauge,
    dedup_hits: Gauge,
    queue_drops: Gauge,
    overload_rejections: Gauge,
    malformed: Gauge,
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

struct DtlsGauges {
    transport: Arc<DtlsTransport>,
    sessions: Gauge,
    handshakes_completed: Gauge,
    handshakes_failed: Gauge,
}

/// Copies each listener's endpoint statistics and the DTLS counters into
/// gauges once a second.
pub(crate) fn spawn_endpoint_stats(
    registry: &MetricsRegistry,
    handles: Vec<(&'static str, EndpointHandle)>,
    dtls: Arc<DtlsTransport>,
) -> Result<(), MetricsError> {
    let dtls = DtlsGauges {
        transport: dtls,
        sessions: registry.gauge(
            "dtls_sessions",
            "DTLS sessions (handshaking and established).",
            &[],
        )?,
        handshakes_completed: registry.gauge(
            "dtls_handshakes_completed",
            "DTLS handshakes completed since start.",
            &[],
        )?,
        handshakes_failed: registry.gauge(
            "dtls_handshakes_failed",
            "DTLS handshakes failed since start (timeout, unknown identity, alert, ...).",
            &[],
        )?,
    };
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
            queue_drops: gauge("coap_queue_drops", "Queued messages dropped.")?,
            overload_rejections: gauge(
                "coap_overload_rejections",
                "Requests refused with 5.03 because too many were pending.",
            )?,
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
            let stats = dtls.transport.socket().stats();
            set(
                &dtls.sessions,
                u64::try_from(stats.sessions).unwrap_or(u64::MAX),
            );
            set(&dtls.handshakes_completed, stats.handshakes_completed);
            set(&dtls.handshakes_failed, stats.handshakes_failed.total());
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
                set(&l.overload_rejections, stats.overload_rejections);
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
