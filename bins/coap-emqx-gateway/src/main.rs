//! `coap-emqx-gateway`: an EMQX-compatible CoAP pub/sub gateway. Devices
//! publish with `POST ps/{topic}`, observe with `GET ps/{topic}` +
//! Observe, and may open connection-mode sessions at `mqtt/connection`
//! (spec `emqx-mode.md`, user guide `docs/emqx-mode.md`).
//!
//! This binary only composes the crates: flags/env/TOML → config
//! (`gateway-kit`), the broker (`emqx-coap`'s embedded broker or rumqttc
//! to an MQTT broker), the authentication file, the CoAP resources
//! (`emqx_coap::gateway`), the plain-UDP and DTLS-PSK CoAP servers
//! (`coap-endpoint` over `coap-dtls`), the metrics/health HTTP server with
//! the management API (`api`) and signal handling.
//!
//! ```text
//! device ─coap──────────────▶ UDP server ──┐
//! device ─coaps (PSK file)──▶ DTLS server ─┴▶ Gateway ─▶ Broker (embedded | MQTT)
//!            ▲                                  ▲            │
//!            └──── notifications ◀── run_deliveries ◀── Deliveries
//! ```
//!
//! Every bound address is logged as one line
//! (`listening what=udp addr=127.0.0.1:40312`); a bad flag, an unreadable
//! file or a port in use ends the process with one line on stderr and a
//! non-zero exit; SIGINT/SIGTERM stop accepting, answer in-flight requests
//! and exit 0.

mod api;
mod config;
mod metrics;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use coap_endpoint::{DtlsTransport, EndpointConfig, Server};
use emqx_coap::auth::AuthFile;
use emqx_coap::broker::mqtt::{MqttProtocol, SessionModel};
use emqx_coap::broker::{Broker, BrokerKind};
use emqx_coap::gateway::{Gateway, GatewaySettings, NotifyType, QosPolicy};
use emqx_coap::mountpoint::Mountpoint;
use emqx_coap::psk_file::PskFile;
use gateway_kit::{HttpServer, MetricsRegistry, Readiness, Shutdown, ShutdownReason, startup};

use crate::config::{Cli, Config, ENV_PREFIX};

const PROGRAM: &str = "coap-emqx-gateway";

/// How long start-up waits for an MQTT broker before serving anyway
/// (QoS ≥ 1 publishes get 5.03 until it is connected).
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

    let settings = gateway_settings(&config)?;
    let auth = match &config.auth_file {
        Some(path) => {
            let auth =
                AuthFile::load(path).map_err(|e| anyhow::anyhow!("authentication file {e}"))?;
            tracing::info!(path = %path.display(), users = auth.user_count(), "authentication file loaded");
            Some(Arc::new(auth))
        }
        None => None,
    };
    let psk = match (config.dtls, &config.psk_file) {
        (Some(_), Some(path)) => {
            let psk = PskFile::load(path).map_err(flat)?;
            tracing::info!(path = %path.display(), identities = psk.len(), "PSK file loaded");
            Some(psk)
        }
        (Some(_), None) => bail!("--dtls needs --psk-file FILE (identity:secret lines)"),
        (None, _) => None,
    };

    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    let metrics = MetricsRegistry::new();
    let readiness = Readiness::new();
    readiness.fail_after(&shutdown);

    let (broker, deliveries) = start_broker(&config).await?;
    {
        let broker = broker.clone();
        readiness.check("broker", move || broker.is_ready());
    }

    let observer = Arc::new(metrics::GatewayMetrics::register(&metrics)?);
    let gateway = Gateway::new(broker.clone(), auth, settings).with_observer(observer);

    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.max_block_size = config.max_block_size.as_usize();
    endpoint_config.max_body_size = config.max_body_size.as_usize();
    // At most one CON notification in flight per peer; up to
    // `max_queued_notifications` (default 100) more wait (oldest dropped
    // and counted, a newer one for the same relation replaces the queued
    // one).
    if config.max_queued_notifications == 0 {
        bail!("max_queued_notifications must be at least 1");
    }
    endpoint_config.max_queued_per_peer = config.max_queued_notifications;
    let transmission = config.transmission().map_err(anyhow::Error::msg)?;
    let dtls_idle_timeout = config.dtls_idle_timeout().map_err(anyhow::Error::msg)?;
    endpoint_config.ack_timeout = transmission.ack_timeout;
    endpoint_config.ack_random_factor = transmission.ack_random_factor;
    endpoint_config.max_retransmit = transmission.max_retransmit;

    // Bind everything before serving, so a port in use ends the process
    // before anything is announced as ready.
    let udp_server = Server::bind(config.udp, endpoint_config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for UDP on {}: {e}", config.udp))?
        .with_shutdown_grace(config.shutdown_grace.get());
    let mut dtls_transport = None;
    let mut dtls_listener = None;
    let dtls_server = match (config.dtls, psk) {
        (Some(addr), Some(psk)) => {
            let store = Arc::new(psk.into_map());
            let mut dtls_config = coap_dtls::ServerConfig::new(store);
            dtls_config.idle_timeout = dtls_idle_timeout;
            let transport = DtlsTransport::bind(addr, dtls_config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for DTLS on {addr}: {e}"))?;
            // Shared with the metrics task, which reads its handshake counters.
            let transport = Arc::new(transport);
            dtls_transport = Some(transport.clone());
            let server = Server::new(
                metrics::SharedDtls(transport.clone()),
                endpoint_config.clone(),
            )?
            .with_shutdown_grace(config.shutdown_grace.get());
            // Attached now, so that the management API knows which
            // listener is the DTLS one (a kick closes the DTLS session).
            let id = gateway.attach(server.handle());
            dtls_listener = Some(api::DtlsListener { id, transport });
            Some((id, server))
        }
        _ => None,
    };

    let http_stop = Shutdown::new();
    let http = match config.http {
        Some(addr) => {
            let running = HttpServer::new(metrics.clone(), readiness.clone())
                .with_api(api::router(gateway.clone(), dtls_listener))
                .start(addr, http_stop.clone())
                .await
                .with_context(|| format!("cannot serve HTTP on {addr}"))?;
            gateway_kit::announce_listener("http", running.local_addr());
            Some(running)
        }
        None => None,
    };

    let background = {
        let g = gateway.clone();
        let deliveries_task = tokio::spawn(async move { g.run_deliveries(deliveries).await });
        let g = gateway.clone();
        let expiry_task = tokio::spawn(async move { g.run_expiry().await });
        [deliveries_task, expiry_task]
    };

    let mut servers = tokio::task::JoinSet::new();
    let mut endpoint_handles = Vec::new();
    {
        endpoint_handles.push(("udp", udp_server.handle()));
        let ready = readiness.flag("udp");
        gateway_kit::announce_listener("udp", udp_server.local_addr()?);
        ready.set_ready(true);
        let g = gateway.clone();
        let stop = shutdown.triggered_owned();
        servers.spawn(async move {
            let result = g
                .run_server(udp_server, async move {
                    stop.await;
                })
                .await;
            ready.set_ready(false);
            result
        });
    }
    if let Some((dtls_id, dtls_server)) = dtls_server {
        endpoint_handles.push(("dtls", dtls_server.handle()));
        let ready = readiness.flag("dtls");
        gateway_kit::announce_listener("dtls", dtls_server.local_addr()?);
        ready.set_ready(true);
        let g = gateway.clone();
        let stop = shutdown.triggered_owned();
        servers.spawn(async move {
            let result = g
                .run_attached(dtls_id, dtls_server, async move {
                    stop.await;
                })
                .await;
            ready.set_ready(false);
            result
        });
    }
    metrics::spawn_stats_copier(&metrics, gateway.clone(), endpoint_handles, dtls_transport)?;
    tracing::info!(
        broker = %config.broker,
        connection_required = config.connection_required,
        "gateway started"
    );

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
    for task in background {
        task.abort();
    }
    http_stop.trigger(ShutdownReason::Requested);
    if let Some(http) = http {
        let _ = tokio::time::timeout(Duration::from_secs(1), http.stopped()).await;
    }
    Ok(())
}

/// An error whose message already names its cause, without the source
/// chain (which would repeat the cause in the one-line report).
fn flat(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// The gateway's behaviour from the config.
fn gateway_settings(config: &Config) -> anyhow::Result<GatewaySettings> {
    let mut settings = GatewaySettings::default();
    settings.connection_required = config.connection_required;
    if config.heartbeat.get().is_zero() {
        bail!("--heartbeat must be longer than 0s");
    }
    settings.heartbeat = config.heartbeat.get();
    settings.notify_type = config
        .notify_type
        .parse::<NotifyType>()
        .map_err(anyhow::Error::msg)?;
    settings.publish_qos = config
        .publish_qos
        .parse::<QosPolicy>()
        .map_err(anyhow::Error::msg)?;
    settings.subscribe_qos = config
        .subscribe_qos
        .parse::<QosPolicy>()
        .map_err(anyhow::Error::msg)?;
    settings.mountpoint = Mountpoint::new(config.mountpoint.clone());
    settings.max_payload_size = config.max_body_size.as_usize();
    settings.observe_idle_lifetime = config.observe_idle_lifetime.map(|d| d.get());
    settings.auth_cache_ttl = config.auth_cache_ttl.map(|d| d.get());
    settings.presence_node = config.presence_node.clone();
    Ok(settings)
}

/// Starts the broker named by `--broker`.
async fn start_broker(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Broker>, emqx_coap::broker::Deliveries)> {
    let mut kind = BrokerKind::from_flag(&config.broker)?;
    if let BrokerKind::Mqtt(mqtt) = &mut kind {
        mqtt.session = config.mqtt_session.parse::<SessionModel>()?;
        mqtt.protocol = config.mqtt_version.parse::<MqttProtocol>()?;
        mqtt.username = config.mqtt_username.clone();
        mqtt.password = config.mqtt_password.as_ref().map(|p| p.expose().clone());
        // Room for the MQTT header and properties around the largest body.
        mqtt.max_packet_size = config.max_body_size.as_usize().saturating_add(64 * 1024);
    }
    let is_mqtt = matches!(kind, BrokerKind::Mqtt(_));
    let (broker, deliveries) = kind.start()?;
    if is_mqtt {
        let deadline = tokio::time::Instant::now() + BROKER_WAIT;
        while !broker.is_ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if broker.is_ready() {
            tracing::info!(broker = %config.broker, "connected to the MQTT broker");
        } else {
            tracing::warn!(broker = %config.broker, "MQTT broker not reachable yet; retrying in the background");
        }
    }
    Ok((broker, deliveries))
}

/// The default filter keeps rumqttc quiet below warnings.
fn log_filter(configured: Option<&str>) -> String {
    let base = configured
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| gateway_kit::logging::DEFAULT_LOG_LEVEL.to_owned());
    if base.contains("rumqttc") {
        base
    } else {
        format!("{base},rumqttc=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config() {
        let mut config = Config {
            notify_type: "con".into(),
            publish_qos: "qos2".into(),
            connection_required: true,
            ..Config::default()
        };
        let s = gateway_settings(&config).unwrap();
        assert_eq!(s.notify_type, NotifyType::Con);
        assert_eq!(
            s.publish_qos,
            QosPolicy::Fixed(emqx_coap::broker::Qos::ExactlyOnce)
        );
        assert!(s.connection_required);
        config.notify_type = "sometimes".into();
        assert!(gateway_settings(&config).is_err());
    }

    #[test]
    fn rumqttc_is_quiet_unless_asked() {
        assert_eq!(log_filter(Some("debug")), "debug,rumqttc=warn");
        assert_eq!(log_filter(Some("rumqttc=trace")), "rumqttc=trace");
    }
}
