//! `gateway-kit`: the plumbing both gateway binaries share.
//!
//! `coap-emqx-gateway` and `coap-hono-adapter` differ in protocol logic but
//! run the same way: flags, environment and a TOML file make one typed
//! config; `tracing` logs as text or JSON; an optional HTTP server exposes
//! Prometheus metrics, health, readiness and the binary's management API;
//! SIGINT/SIGTERM start a graceful shutdown with a bounded drain. This crate
//! holds that plumbing and nothing else.
//!
//! **Not for**: anything CoAP, MQTT or AMQP. It does not depend on the
//! protocol crates, and they need not depend on it (they take plain
//! [`Counter`]/[`Histogram`] handles or their own config structs).
//!
//! ```text
//!  argv/env ─clap─▶ ParsedArgs ─┐
//!  --config FILE ───────────────┴─config::load_layered─▶ Config ─▶ init_logging
//!                                                           │
//!   MetricsRegistry ◀── components register Counter/Gauge/Histogram handles
//!   Readiness       ◀── components register ReadyFlag ("udp", "broker")
//!        │
//!  HttpServer{/metrics,/healthz,/readyz, + binary's axum::Router}.start(addr, shutdown)
//!
//!  Shutdown::listen_for_signals ─▶ triggered() in every task ─▶ InFlight::drain(deadline)
//!  main returns startup::exit_code(...) ─▶ one line on stderr, exit 1
//! ```
//!
//! Metrics are hand-written (see [`metrics`]) rather than built on
//! `prometheus-client`: the needs are small, and it keeps the hot path to one
//! relaxed atomic add on a pre-resolved handle with no label lookup.
//!
//! A binary's `main` in outline:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::process::ExitCode;
//! use std::time::Duration;
//! use gateway_kit::{config, startup, HttpServer, LogFormat, MetricsRegistry, OpsArgs,
//!                   Readiness, Shutdown};
//!
//! /// Every knob, with its default; what --print-config prints.
//! #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config {
//!     udp: SocketAddr,
//!     http: Option<SocketAddr>,
//!     log: Option<String>,
//!     log_format: LogFormat,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { udp: ([0, 0, 0, 0], 5683).into(), http: None, log: None,
//!                  log_format: LogFormat::Text }
//!     }
//! }
//!
//! /// Example gateway.
//! #[derive(Debug, clap::Parser, serde::Serialize)]
//! struct Cli {
//!     /// UDP address to listen on [default: 0.0.0.0:5683].
//!     #[arg(long, value_name = "ADDR")]
//!     udp: Option<SocketAddr>,
//!     #[command(flatten)]
//!     #[serde(flatten)]
//!     ops: OpsArgs,
//! }
//!
//! fn main() -> ExitCode {
//!     // Every flag also reads GW_<FLAG> from the environment.
//!     let parsed = match startup::parse_args::<Cli>(Some("GW")) {
//!         Ok(parsed) => parsed,
//!         Err(e) => return e.report("gw"),
//!     };
//!     startup::exit_code("gw", run(parsed))
//! }
//!
//! #[tokio::main]
//! async fn run(parsed: startup::ParsedArgs<Cli>) -> Result<(), Box<dyn std::error::Error>> {
//!     let file = parsed.args.ops.config.as_deref();
//!     let config: Config = config::load_layered(&parsed.args, &parsed.matches, file)?;
//!     if parsed.args.ops.print_config {
//!         print!("{}", config::render(&config)?);
//!         return Ok(());
//!     }
//!     gateway_kit::init_logging(config.log.as_deref(), config.log_format)?;
//!     let shutdown = Shutdown::new();
//!     shutdown.listen_for_signals()?;
//!     let (metrics, readiness) = (MetricsRegistry::new(), Readiness::new());
//!     readiness.fail_after(&shutdown); // /readyz says 503 while draining
//!     let http_stop = Shutdown::new(); // HTTP stays up until the drain is over
//!     let http = match config.http {
//!         Some(addr) => {
//!             let running = HttpServer::new(metrics.clone(), readiness.clone())
//!                 .start(addr, http_stop.clone())
//!                 .await?;
//!             gateway_kit::announce_listener("http", running.local_addr());
//!             Some(running)
//!         }
//!         None => None,
//!     };
//!     // ... bind the UDP listener, announce it, register ReadyFlags, serve
//!     // requests holding InFlight guards ...
//!     let in_flight = gateway_kit::InFlight::new();
//!     shutdown.triggered().await;
//!     in_flight.drain(Duration::from_secs(5)).await;
//!     http_stop.trigger(gateway_kit::ShutdownReason::Requested);
//!     if let Some(http) = http {
//!         let _ = tokio::time::timeout(Duration::from_secs(1), http.stopped()).await;
//!     }
//!     Ok(())
//! }
//! ```

pub mod byte_size;
pub mod config;
pub mod duration;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod redact;
pub mod shutdown;
pub mod startup;
pub mod transmission;

/// The `axum` version the management API must be written against.
pub use axum;

pub use byte_size::{ByteSize, ByteSizeParseError};
pub use config::ConfigError;
pub use duration::{DurationParseError, HumanDuration};
pub use http::{
    ApiError, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpError, HttpServer,
    RunningHttpServer,
};
pub use logging::{LogFormat, LoggingError, init_logging};
pub use metrics::{BROKER_RTT_BUCKETS, Counter, Gauge, Histogram, MetricsError, MetricsRegistry};
pub use readiness::{Readiness, ReadyFlag};
pub use redact::{Redact, SecretUrl};
pub use shutdown::{DrainOutcome, InFlight, InFlightGuard, Shutdown, ShutdownReason};
pub use startup::{OpsArgs, ParsedArgs, announce_listener};
