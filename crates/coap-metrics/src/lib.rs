//! A CoAP listener's statistics as Prometheus metrics.
//!
//! Both gateway binaries expose the same endpoint and DTLS families
//! (`coap_datagrams_in_total`, `coap_requests_total{listener,method}`,
//! `dtls_handshakes_total{result}`, …) so one dashboard serves both. The
//! endpoint keeps plain totals in its [`Stats`]; this crate copies them into
//! a [`MetricsRegistry`] once a second: [`ListenerMetrics`] registers the
//! families and [`ListenerMetrics::copy`] adds what each total grew by.
//!
//! `gateway-kit` stays free of CoAP; this crate is the one place that knows
//! both sides.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use coap_endpoint::{DtlsTransport, EndpointHandle, Peer, Stats, Transport};
use gateway_kit::{Counter, Gauge, MetricsError, MetricsRegistry};

/// A counter that follows a total read elsewhere (a statistics snapshot):
/// each [`follow`](Self::follow) adds what the total grew by since the last
/// one. A total that goes down (a restarted source) adds nothing.
#[derive(Debug)]
pub struct TotalCounter {
    counter: Counter,
    last: u64,
}

impl TotalCounter {
    /// Follows `counter`, starting from a total of zero.
    pub fn new(counter: Counter) -> Self {
        Self { counter, last: 0 }
    }

    /// Takes the latest total.
    pub fn follow(&mut self, total: u64) {
        if total > self.last {
            self.counter.inc_by(total - self.last);
        }
        self.last = total;
    }
}

/// Sets a gauge from an unsigned count, saturating at `i64::MAX`.
pub fn set_gauge(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// One listener's endpoint statistics as metrics, labelled `listener`.
#[derive(Debug)]
pub struct EndpointMetrics {
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
    block1_evictions: TotalCounter,
    observers: Gauge,
}

impl EndpointMetrics {
    /// Registers the families for the listener named `listener` (`udp`,
    /// `dtls`, …) whose endpoint `handle` answers statistics requests.
    pub fn register(
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
                "CON messages (notifications, separate responses, requests to devices) sent again \
                 after an ACK timeout.",
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
                "Queued outgoing messages (notifications, separate responses) dropped because a \
                 peer's queue was full.",
            )?,
            overload_rejections: counter(
                "coap_overload_rejections_total",
                "Requests refused with 5.03 because too many were pending.",
            )?,
            malformed: counter(
                "coap_malformed_total",
                "Malformed datagrams (answered with RST or 4.0x, or dropped).",
            )?,
            block1_evictions: counter(
                "coap_block1_evictions_total",
                "Block1 uploads in reassembly evicted to make room for others (per-peer or \
                 global cap); their next block gets 4.08.",
            )?,
            observers: registry.gauge(
                "coap_observers",
                "Observe relations held by the endpoint.",
                &labels,
            )?,
            handle,
        })
    }

    /// Asks the endpoint for its statistics and copies them; does nothing
    /// when the endpoint has stopped.
    pub async fn refresh(&mut self) {
        if let Ok(stats) = self.handle.stats().await {
            self.copy(&stats);
        }
    }

    /// Copies one statistics snapshot.
    pub fn copy(&mut self, stats: &Stats) {
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
        self.block1_evictions.follow(stats.block1_evictions);
        set_gauge(&self.observers, stats.observers);
    }
}

/// The DTLS transport shared between the CoAP server and the metrics task
/// (which reads its session and handshake counters).
#[derive(Debug, Clone)]
pub struct SharedDtls(pub Arc<DtlsTransport>);

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

/// The DTLS socket's counters as metrics: `dtls_sessions` and
/// `dtls_handshakes_total{result="completed"|"failed"}`.
#[derive(Debug)]
pub struct DtlsMetrics {
    transport: Arc<DtlsTransport>,
    sessions: Gauge,
    completed: TotalCounter,
    failed: TotalCounter,
}

impl DtlsMetrics {
    /// Registers the families for `transport`.
    pub fn register(
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

    /// Copies the socket's current counters.
    pub fn copy(&mut self) {
        let stats = self.transport.socket().stats();
        set_gauge(
            &self.sessions,
            u64::try_from(stats.sessions).unwrap_or(u64::MAX),
        );
        self.completed.follow(stats.handshakes_completed);
        self.failed.follow(stats.handshakes_failed.total());
    }
}

/// Every listener of one binary: its endpoints and, when it has one, its
/// DTLS socket.
#[derive(Debug)]
pub struct ListenerMetrics {
    endpoints: Vec<EndpointMetrics>,
    dtls: Option<DtlsMetrics>,
}

impl ListenerMetrics {
    /// Registers the families for each `(listener name, endpoint)` and for
    /// the DTLS socket.
    pub fn register(
        registry: &MetricsRegistry,
        handles: Vec<(&str, EndpointHandle)>,
        dtls: Option<Arc<DtlsTransport>>,
    ) -> Result<Self, MetricsError> {
        let mut endpoints = Vec::with_capacity(handles.len());
        for (listener, handle) in handles {
            endpoints.push(EndpointMetrics::register(registry, listener, handle)?);
        }
        let dtls = dtls
            .map(|transport| DtlsMetrics::register(registry, transport))
            .transpose()?;
        Ok(Self { endpoints, dtls })
    }

    /// Copies every listener's statistics once.
    pub async fn refresh(&mut self) {
        if let Some(dtls) = &mut self.dtls {
            dtls.copy();
        }
        for endpoint in &mut self.endpoints {
            endpoint.refresh().await;
        }
    }
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
    fn gauges_saturate() {
        let registry = MetricsRegistry::new();
        let gauge = registry.gauge("g", "Test.", &[]).unwrap();
        set_gauge(&gauge, u64::MAX);
        assert_eq!(gauge.get(), i64::MAX);
        set_gauge(&gauge, 7);
        assert_eq!(gauge.get(), 7);
    }
}
