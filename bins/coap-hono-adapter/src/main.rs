//! `coap-hono-adapter`: Eclipse Hono's CoAP protocol adapter with RabbitMQ
//! (AMQP 0-9-1) as the north-bound side.
//!
//! This binary only composes the crates: flags/env/TOML → config
//! (`gateway-kit`), the device registry file and the CoAP resources
//! (`hono-coap`), the DTLS-PSK and plain-UDP CoAP servers
//! (`coap-endpoint` over `coap-dtls`), the downstream (RabbitMQ via
//! `--amqp`, else JSON lines on stdout), signal handling, and the `--http`
//! server: metrics, health, readiness and the management API (`api`: list,
//! search and kick clients, list their command waits).
//!
//! ```text
//! device ─coaps (PSK from registry snapshot)─▶ DTLS server ─┐
//! device ─coap (--insecure-udp)──────────────▶ UDP server ──┴▶ HonoAdapter ─▶ AmqpDownstream ─▶ RabbitMQ
//!                                                                   ▲             (or stdout)
//!        SIGHUP / file change ─▶ FileRegistry::reload ──────────────┘
//! ```
//!
//! Every bound address is logged as one line
//! (`listening what=dtls addr=127.0.0.1:40312`); SIGINT/SIGTERM stop
//! accepting, answer in-flight requests and exit 0.

mod api;
mod config;
mod metrics;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use coap_endpoint::{AckTimeout, DtlsTransport, EndpointConfig, IncomingRequestHandle, Server};
use gateway_kit::{HttpServer, MetricsRegistry, Readiness, Shutdown, ShutdownReason, startup};
use hono_coap::{
    AdapterSettings, AmqpConfig, AmqpDownstream, Downstream, FileRegistry, HonoAdapter, Registry,
    StdoutDownstream,
};

use crate::config::{Cli, Config, ENV_PREFIX};

const PROGRAM: &str = "coap-hono-adapter";

/// How long start-up waits for the broker before binding the listeners
/// anyway (requests get 5.03 until it is connected).
const BROKER_WAIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let parsed = match startup::parse_args::<Cli>(Some(ENV_PREFIX)) {
        Ok(parsed) => parsed,
        Err(e) => return e.report(PROGRAM),
    };
    startup::exit_code(PROGRAM, run(parsed))
}

#[tokio::main]
async fn run(parsed: startup::ParsedArgs<Cli>) -> anyhow::Result<()> {
    let file = parsed.args.ops.config.as_deref();
    let config: Config = gateway_kit::config::load_layered(&parsed.args, &parsed.matches, file)?;
    if parsed.args.ops.print_config {
        print!("{}", gateway_kit::config::render(&config)?);
        return Ok(());
    }
    gateway_kit::init_logging(Some(&log_filter(config.log.as_deref())), config.log_format)?;

    let registry_path = config
        .registry
        .clone()
        .context("--registry FILE is required (the device registry, a JSON file)")?;
    // The load error's text already names its cause.
    let registry =
        Arc::new(FileRegistry::load(&registry_path).map_err(|e| anyhow::anyhow!(e.to_string()))?);
    let (tenants, devices, credentials) = registry.snapshot().counts();
    tracing::info!(path = %registry_path.display(), tenants, devices, credentials, "device registry loaded");

    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    let metrics = MetricsRegistry::new();
    let readiness = Readiness::new();
    readiness.fail_after(&shutdown);

    let downstream: Arc<dyn Downstream> = match &config.amqp {
        Some(url) => {
            let amqp = AmqpConfig::new(url.expose())
                .with_exchange_prefix(config.exchange_prefix.clone())
                .with_confirm_timeout(config.confirm_timeout.get());
            let amqp = AmqpDownstream::start(amqp)?;
            if amqp.wait_ready(BROKER_WAIT).await {
                tracing::info!(url = %url, "connected to the AMQP broker");
            } else {
                tracing::warn!(url = %url, "AMQP broker not reachable yet; retrying in the background");
            }
            Arc::new(amqp)
        }
        None => {
            tracing::info!("no --amqp given: telemetry and events are printed to stdout");
            Arc::new(StdoutDownstream::new())
        }
    };
    {
        let downstream = downstream.clone();
        readiness.check("broker", move || downstream.is_ready());
    }

    let settings = {
        let mut s = AdapterSettings::default();
        s.max_payload_size = config.max_payload_size.as_usize();
        s.timeout_to_ack_ms = config.timeout_to_ack.0;
        s.psk_separator = config.psk_separator;
        s.max_clients = config.max_clients;
        s
    };
    let observer = Arc::new(metrics::AdapterMetrics::register(&metrics)?);
    let adapter = Arc::new(
        HonoAdapter::new(
            registry.clone() as Arc<dyn Registry>,
            downstream.clone(),
            settings,
        )
        .with_observer(observer),
    );
    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.default_ack_timeout = AckTimeout::from_millis(config.timeout_to_ack.0);
    // Block-wise bodies beyond the payload limit are refused (4.13) while
    // they arrive instead of being reassembled first.
    endpoint_config.max_body_size = config.max_payload_size.as_usize().max(1);
    let transmission = config.transmission().map_err(anyhow::Error::msg)?;
    let dtls_idle_timeout = config.dtls_idle_timeout().map_err(anyhow::Error::msg)?;
    endpoint_config.ack_timeout = transmission.ack_timeout;
    endpoint_config.ack_random_factor = transmission.ack_random_factor;
    endpoint_config.max_retransmit = transmission.max_retransmit;

    // Listeners. Bind everything before serving, so a port in use ends the
    // process before it announces anything as ready.
    let psk_registry = registry.clone();
    let separator = config.psk_separator;
    let psk_store = move |identity: &[u8]| {
        psk_registry
            .psk_for_identity(identity, separator, SystemTime::now())
            .map(|grant| grant.key)
    };
    let mut dtls_config = coap_dtls::ServerConfig::new(Arc::new(psk_store));
    dtls_config.idle_timeout = dtls_idle_timeout;
    let dtls_transport = DtlsTransport::bind(config.dtls, dtls_config)
        .await
        .with_context(|| format!("cannot listen for DTLS on {}", config.dtls))?;
    let dtls_transport = Arc::new(dtls_transport);
    let dtls_server = Server::new(
        metrics::SharedDtls(dtls_transport.clone()),
        endpoint_config.clone(),
    )?
    .with_shutdown_grace(config.shutdown_grace.get());
    let dtls_addr = dtls_server.local_addr()?;
    let udp_server = match config.insecure_udp {
        Some(addr) => Some(
            Server::bind(addr, endpoint_config.clone())
                .await
                .with_context(|| format!("cannot listen for UDP on {addr}"))?
                .with_shutdown_grace(config.shutdown_grace.get()),
        ),
        None => None,
    };

    let http_stop = Shutdown::new();
    let http = match config.http {
        Some(addr) => {
            let running = HttpServer::new(metrics.clone(), readiness.clone())
                .with_api(api::router(
                    adapter.clients().clone(),
                    dtls_transport.clone(),
                ))
                .start(addr, http_stop.clone())
                .await
                .with_context(|| format!("cannot serve HTTP on {addr}"))?;
            gateway_kit::announce_listener("http", running.local_addr());
            Some(running)
        }
        None => None,
    };

    // Registry reloads: on SIGHUP and when the file changes.
    let _watch = registry.watch(config.registry_poll_interval.get());
    spawn_sighup_reload(registry.clone())?;

    let mut servers = tokio::task::JoinSet::new();
    let mut endpoint_handles = Vec::new();
    {
        endpoint_handles.push(("dtls", dtls_server.handle()));
        let ready = readiness.flag("dtls");
        let adapter = adapter.clone();
        let stop = stop_signal(&shutdown, &adapter);
        gateway_kit::announce_listener("dtls", dtls_addr);
        ready.set_ready(true);
        servers.spawn(async move {
            let result = dtls_server.run(handler(adapter), stop).await;
            ready.set_ready(false);
            result
        });
    }
    if let Some(udp_server) = udp_server {
        endpoint_handles.push(("udp", udp_server.handle()));
        let ready = readiness.flag("udp");
        let adapter = adapter.clone();
        let stop = stop_signal(&shutdown, &adapter);
        gateway_kit::announce_listener("udp", udp_server.local_addr()?);
        ready.set_ready(true);
        servers.spawn(async move {
            let result = udp_server.run(handler(adapter), stop).await;
            ready.set_ready(false);
            result
        });
    }
    metrics::spawn_endpoint_stats(
        &metrics,
        endpoint_handles,
        dtls_transport,
        adapter.clients().clone(),
    )?;

    while let Some(result) = servers.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.trigger(ShutdownReason::Requested);
                return Err(error).context("CoAP server failed");
            }
            Err(error) => {
                shutdown.trigger(ShutdownReason::Requested);
                return Err(error).context("CoAP server task failed");
            }
        }
    }
    tracing::info!("all in-flight requests answered; stopping");
    http_stop.trigger(ShutdownReason::Requested);
    if let Some(http) = http {
        let _ = tokio::time::timeout(Duration::from_secs(1), http.stopped()).await;
    }
    drop(adapter);
    drop(downstream);
    Ok(())
}

/// The default filter keeps `lapin` at error: it logs returned (unroutable)
/// messages, payload included, at WARN.
fn log_filter(configured: Option<&str>) -> String {
    let base = configured
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| gateway_kit::logging::DEFAULT_LOG_LEVEL.to_owned());
    if base.contains("lapin") {
        base
    } else {
        format!("{base},lapin=error")
    }
}

/// The request handler of both servers.
fn handler(
    adapter: Arc<HonoAdapter>,
) -> impl Fn(IncomingRequestHandle) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
+ Send
+ Sync
+ 'static {
    move |request| {
        let adapter = adapter.clone();
        Box::pin(async move { adapter.serve(request).await })
    }
}

/// Completes when shutdown starts; first ends the adapter's command waits
/// so in-flight requests are answered within the grace period.
fn stop_signal(
    shutdown: &Shutdown,
    adapter: &Arc<HonoAdapter>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let triggered = shutdown.triggered_owned();
    let adapter = adapter.clone();
    async move {
        triggered.await;
        adapter.begin_shutdown();
    }
}

#[cfg(unix)]
fn spawn_sighup_reload(registry: Arc<FileRegistry>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the device registry");
            // Errors are logged by reload(); the previous registry stays.
            let _ = registry.reload();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn spawn_sighup_reload(_registry: Arc<FileRegistry>) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_is_quiet_unless_asked() {
        assert_eq!(log_filter(Some("debug")), "debug,lapin=error");
        assert_eq!(log_filter(Some("info,lapin=warn")), "info,lapin=warn");
    }
}
