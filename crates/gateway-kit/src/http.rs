//! The operations HTTP server: `/metrics`, `/healthz`, `/readyz`, and the
//! binary's own management API mounted beside them.
//!
//! ```text
//!  GET /metrics ──▶ MetricsRegistry::render          (Prometheus text)
//!  GET /healthz ──▶ 200 "ok"                         (the process answers)
//!  GET /readyz  ──▶ Readiness::not_ready             (200 "ready" | 503 "not ready: ...")
//!  anything else ─▶ the binary's axum::Router        (JSON management API)
//! ```
//!
//! The server stops on the [`Shutdown`] given to [`HttpServer::start`]. To keep
//! `/metrics` and a failing `/readyz` visible while the rest drains, give it
//! its own `Shutdown` (triggered after the drain) and register
//! [`Readiness::fail_after`] with the process-wide one.
//!
//! It speaks HTTP/1.1 only, with two guards against clients that hold
//! connections open: a request head must arrive within
//! [`HttpServer::with_header_read_timeout`] (default
//! [`DEFAULT_HEADER_READ_TIMEOUT`]; idle keep-alive connections are closed
//! after it too), and at most [`HttpServer::with_max_connections`]
//! connections are served at once (default [`DEFAULT_MAX_CONNECTIONS`]);
//! further ones wait in the kernel's accept backlog. There is no
//! authentication: bind it to loopback or a private network.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::metrics::{MetricsRegistry, PROMETHEUS_CONTENT_TYPE};
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

/// Why the HTTP server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// Serving failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] io::Error),
    /// The server task panicked or was cancelled.
    #[error("HTTP server task ended abnormally: {0}")]
    Task(String),
}

/// What the operations server serves, before it is bound.
///
/// ```no_run
/// # async fn f() -> Result<(), gateway_kit::HttpError> {
/// use gateway_kit::{HttpServer, MetricsRegistry, Readiness, Shutdown};
/// use gateway_kit::axum::{routing::get, Router};
/// let api = Router::new().route("/api/clients", get(|| async { "[]" }));
/// let running = HttpServer::new(MetricsRegistry::new(), Readiness::new())
///     .with_api(api)
///     .start("127.0.0.1:0".parse().unwrap(), Shutdown::new())
///     .await?;
/// println!("http on {}", running.local_addr());
/// # Ok(()) }
/// ```
pub struct HttpServer {
    metrics: MetricsRegistry,
    readiness: Readiness,
    api: Router,
    header_read_timeout: Duration,
    max_connections: usize,
}

/// Default of [`HttpServer::with_header_read_timeout`]: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`HttpServer::with_max_connections`]: 64.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

#[derive(Clone)]
struct OpsState {
    metrics: MetricsRegistry,
    readiness: Readiness,
}

impl HttpServer {
    /// A server for these metrics and readiness checks, with no API routes.
    pub fn new(metrics: MetricsRegistry, readiness: Readiness) -> Self {
        HttpServer {
            metrics,
            readiness,
            api: Router::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// How long a client may take to send a request head (and how long an
    /// idle keep-alive connection stays open). Default is
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]. A handler that runs long (e.g.
    /// waiting for a device) is not affected.
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Most connections served at once (at least 1); more wait to be
    /// accepted. Default is [`DEFAULT_MAX_CONNECTIONS`].
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Mounts the binary's management routes (with its state already
    /// applied, i.e. a `Router<()>`). They receive every request whose path
    /// is not `/metrics`, `/healthz` or `/readyz`; those three always win, so
    /// no route can clash. Calling this again replaces the previous routes.
    pub fn with_api(mut self, api: Router) -> Self {
        self.api = api;
        self
    }

    /// The complete router, for serving it some other way (or testing).
    pub fn into_router(self) -> Router {
        let state = OpsState {
            metrics: self.metrics,
            readiness: self.readiness,
        };
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state)
            .fallback_service(self.api)
    }

    /// Binds `addr` (port 0 picks a free port) and serves on a spawned task
    /// until `stop` fires; then stops accepting and finishes open
    /// requests. Must be called inside a tokio runtime.
    pub async fn start(
        self,
        addr: SocketAddr,
        stop: Shutdown,
    ) -> Result<RunningHttpServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let limits = Limits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
        };
        let router = self.into_router();
        let task = tokio::spawn(serve(listener, router, stop, limits));
        Ok(RunningHttpServer { local_addr, task })
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    max_connections: usize,
}

/// Accepts connections until `stop` fires (at most `max_connections` at
/// once), then stops accepting and waits for open requests to finish
/// (idle connections are closed at once).
async fn serve(
    listener: TcpListener,
    router: Router,
    stop: Shutdown,
    limits: Limits,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let stopped = stop.triggered_owned();
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            _ = &mut stopped => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Per-connection failures (reset before accept) and
                    // running out of descriptors are not fatal; back off a
                    // little so the latter does not spin.
                    tracing::debug!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A started operations server.
#[derive(Debug)]
pub struct RunningHttpServer {
    local_addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl RunningHttpServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server to stop (after shutdown fired and open requests
    /// finished). Bound it with a timeout during shutdown.
    pub async fn stopped(self) -> Result<(), HttpError> {
        match self.task.await {
            Ok(result) => result.map_err(HttpError::Serve),
            Err(e) => Err(HttpError::Task(e.to_string())),
        }
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    let not_ready = state.readiness.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join(", ")),
        )
    }
}

/// An error answer for management API handlers: the status code and a JSON
/// body `{"error": "<message>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request body or query is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such client (or other object).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 503: the gateway cannot do this now (e.g. broker down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 504: a device or broker did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, message)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
