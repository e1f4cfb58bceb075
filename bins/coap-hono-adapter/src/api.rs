//! The management API on the `--http` server: the clients the adapter has
//! seen, their open command waits, and kicking one.
//!
//! ```text
//! GET    /api/clients[?tenant=&device=&auth_id=&like=&page=1&limit=100]
//!            → {"data": [client], "meta": {"page", "limit", "count", "hasnext"}}
//! GET    /api/clients/{tenant}/{device}                → client | 404
//! DELETE /api/clients/{tenant}/{device}                → 204 (DTLS session closed,
//!                                                        command waits ended) | 404
//! GET    /api/clients/{tenant}/{device}/subscriptions  → [{"device_id", "waiting_ms",
//!                                                        "remaining_ms"}] | 404
//! client = {"tenant_id", "device_id", "auth_id", "peer", "transport" (dtls | udp),
//!           "idle_ms", "age_ms", "last_activity_unix_ms", "requests", "command_waits"}
//! ```
//!
//! A client is a device as the adapter saw it: for DTLS the device the PSK
//! identity belongs to (for a gateway: the gateway), for plain UDP the
//! device named in the URI. `device` in a path is percent-decoded, so a
//! device id with `/` is written `%2F`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coap_endpoint::DtlsTransport;
use gateway_kit::ApiError;
use gateway_kit::axum::extract::{Path, Query, State};
use gateway_kit::axum::http::StatusCode;
use gateway_kit::axum::routing::get;
use gateway_kit::axum::{Json, Router};
use hono_coap::{ClientInfo, ClientQuery, ClientTable, ClientTransport};
use serde::{Deserialize, Serialize};

/// Page size when none is asked for.
const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
const MAX_LIMIT: usize = 1000;

/// What the handlers work on.
#[derive(Clone)]
pub(crate) struct ApiState {
    clients: Arc<ClientTable>,
    dtls: Arc<DtlsTransport>,
}

/// The routes, with the client table and the DTLS transport (to close a
/// kicked client's session) as state.
pub(crate) fn router(clients: Arc<ClientTable>, dtls: Arc<DtlsTransport>) -> Router {
    Router::new()
        .route("/api/clients", get(list))
        .route("/api/clients/{tenant}/{device}", get(one).delete(kick))
        .route(
            "/api/clients/{tenant}/{device}/subscriptions",
            get(subscriptions),
        )
        .with_state(ApiState { clients, dtls })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    tenant: Option<String>,
    device: Option<String>,
    auth_id: Option<String>,
    like: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ClientJson {
    tenant_id: String,
    device_id: String,
    auth_id: Option<String>,
    peer: String,
    transport: &'static str,
    idle_ms: u64,
    age_ms: u64,
    last_activity_unix_ms: u64,
    requests: u64,
    command_waits: usize,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ClientJson {
    fn new(c: ClientInfo, now: Instant, wall: SystemTime) -> Self {
        let idle = now.saturating_duration_since(c.last_activity);
        let last_activity_unix_ms = wall
            .checked_sub(idle)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, millis);
        Self {
            transport: c.transport.as_str(),
            idle_ms: millis(idle),
            age_ms: millis(now.saturating_duration_since(c.first_seen)),
            last_activity_unix_ms,
            peer: c.peer.to_string(),
            tenant_id: c.tenant_id,
            device_id: c.device_id,
            auth_id: c.auth_id,
            requests: c.requests,
            command_waits: c.command_waits,
        }
    }
}

#[derive(Debug, Serialize)]
struct PageJson {
    data: Vec<ClientJson>,
    meta: MetaJson,
}

#[derive(Debug, Serialize)]
struct MetaJson {
    page: usize,
    limit: usize,
    count: usize,
    hasnext: bool,
}

async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, gateway_kit::axum::extract::rejection::QueryRejection>,
) -> Result<Json<PageJson>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::bad_request("page starts at 1"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    let mut search = ClientQuery::default();
    search.tenant = q.tenant.as_deref();
    search.device = q.device.as_deref();
    search.auth_id = q.auth_id.as_deref();
    search.any = q.like.as_deref();
    let offset = (page - 1).saturating_mul(limit);
    let found = state.clients.search(&search, offset, limit);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let hasnext = offset.saturating_add(found.clients.len()) < found.total;
    Ok(Json(PageJson {
        data: found
            .clients
            .into_iter()
            .map(|c| ClientJson::new(c, now, wall))
            .collect(),
        meta: MetaJson {
            page,
            limit,
            count: found.total,
            hasnext,
        },
    }))
}

fn no_client(tenant: &str, device: &str) -> ApiError {
    ApiError::not_found(format!("no client {tenant}/{device}"))
}

async fn one(
    State(state): State<ApiState>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<Json<ClientJson>, ApiError> {
    state
        .clients
        .find(&tenant, &device)
        .map(|c| Json(ClientJson::new(c, Instant::now(), SystemTime::now())))
        .ok_or_else(|| no_client(&tenant, &device))
}

async fn kick(
    State(state): State<ApiState>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // Out of the table first (its command waits end now), then the DTLS
    // session goes: the device's next record over it is not answered, and
    // it needs a new handshake.
    let client = state
        .clients
        .kick(&tenant, &device)
        .ok_or_else(|| no_client(&tenant, &device))?;
    if client.transport == ClientTransport::Dtls {
        match state.dtls.socket().close(client.peer).await {
            Ok(closed) => {
                tracing::info!(tenant = %tenant, device = %device, peer = %client.peer,
                               session_closed = closed, "client kicked");
            }
            Err(error) => {
                tracing::warn!(tenant = %tenant, device = %device, peer = %client.peer,
                               %error, "client kicked; closing its DTLS session failed");
            }
        }
    } else {
        tracing::info!(tenant = %tenant, device = %device, peer = %client.peer, "client kicked");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
struct SubscriptionJson {
    device_id: String,
    waiting_ms: u64,
    remaining_ms: u64,
}

async fn subscriptions(
    State(state): State<ApiState>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<Json<Vec<SubscriptionJson>>, ApiError> {
    let waits = state
        .clients
        .command_waits(&tenant, &device)
        .ok_or_else(|| no_client(&tenant, &device))?;
    let now = Instant::now();
    Ok(Json(
        waits
            .into_iter()
            .flat_map(|w| {
                let waiting_ms = millis(now.saturating_duration_since(w.since));
                let remaining_ms = millis(w.until.saturating_duration_since(now));
                w.devices
                    .into_iter()
                    .map(move |device_id| SubscriptionJson {
                        device_id,
                        waiting_ms,
                        remaining_ms,
                    })
            })
            .collect(),
    ))
}
