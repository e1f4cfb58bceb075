//! The management API on the `--http` server: connection-mode clients,
//! their subscriptions, kicking one, and sending a CoAP request to a device.
//!
//! ```text
//! GET    /api/clients[?clientid=&username=&peer=&like=&page=1&limit=100]
//!            → {"data": [client], "meta": {"page", "limit", "count", "hasnext"}}
//! GET    /api/clients/{clientid}                → client | 404
//! DELETE /api/clients/{clientid}                → 204 (session ended; over DTLS also
//!                                                the DTLS session, so the device needs a
//!                                                new handshake) | 404
//! GET    /api/clients/{clientid}/subscriptions  → [{filter, qos}] | 404
//! POST   /api/clients/{clientid}/request        {method, path, query?, payload?, content_format?,
//!                                                timeout?} → {code, payload, content_format?,
//!                                                content_type?} | 400 | 404 | 502 | 504
//! client = {"clientid", "username", "peer", "connected_at", "connected_at_unix_ms",
//!           "idle_ms", "subscriptions"}
//! ```
//!
//! The search parameters are substrings (`clientid=dev` finds `dev-1` and
//! `old-dev`); `like_clientid` / `like_username` are accepted as EMQX
//! spells them; `like` matches any of clientid, username, peer. Given
//! filters must all match. Pages start at 1.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coap_endpoint::DtlsTransport;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use emqx_coap::gateway::{ClientQuery, ClientSummary, DeviceRequestError, Gateway, ListenerId};
use gateway_kit::axum::extract::rejection::{JsonRejection, QueryRejection};
use gateway_kit::axum::extract::{FromRef, Path, Query, State};
use gateway_kit::axum::http::StatusCode;
use gateway_kit::axum::routing::{get, post};
use gateway_kit::axum::{Json, Router};
use gateway_kit::{ApiError, HumanDuration};
use serde::{Deserialize, Serialize};

/// Longest wait for a device's answer.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait for a device's answer when the request names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size when none is asked for.
const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
const MAX_LIMIT: usize = 1000;

/// The DTLS listener: its id in the gateway and its transport (to close a
/// kicked client's DTLS session).
#[derive(Clone)]
pub(crate) struct DtlsListener {
    pub(crate) id: ListenerId,
    pub(crate) transport: Arc<DtlsTransport>,
}

#[derive(Clone)]
struct ApiState {
    gateway: Gateway,
    dtls: Option<DtlsListener>,
}

impl FromRef<ApiState> for Gateway {
    fn from_ref(state: &ApiState) -> Gateway {
        state.gateway.clone()
    }
}

/// The routes, with the gateway and the DTLS listener (if any) as state.
pub(crate) fn router(gateway: Gateway, dtls: Option<DtlsListener>) -> Router {
    Router::new()
        .route("/api/clients", get(list))
        .route("/api/clients/{clientid}", get(one).delete(kick))
        .route("/api/clients/{clientid}/subscriptions", get(subscriptions))
        .route("/api/clients/{clientid}/request", post(request))
        .with_state(ApiState { gateway, dtls })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(alias = "like_clientid")]
    clientid: Option<String>,
    #[serde(alias = "like_username")]
    username: Option<String>,
    peer: Option<String>,
    like: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ClientJson {
    clientid: String,
    username: Option<String>,
    peer: String,
    /// RFC 3339, UTC, milliseconds.
    connected_at: String,
    connected_at_unix_ms: u64,
    idle_ms: u64,
    subscriptions: usize,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ClientJson {
    /// `wall` is the wall-clock time that corresponds to the `now` the
    /// summary was made at.
    fn new(c: ClientSummary, wall: SystemTime) -> Self {
        let connected_at_unix_ms = wall
            .checked_sub(c.connected_for)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, millis);
        Self {
            connected_at: rfc3339_utc_millis(connected_at_unix_ms),
            connected_at_unix_ms,
            idle_ms: millis(c.idle),
            subscriptions: c.subscriptions,
            clientid: c.clientid,
            username: c.username,
            peer: c.peer,
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
    /// Matching clients in all pages.
    count: usize,
    hasnext: bool,
}

async fn list(
    State(gateway): State<Gateway>,
    query: Result<Query<ListQuery>, QueryRejection>,
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
    search.clientid = q.clientid;
    search.username = q.username;
    search.peer = q.peer;
    search.any = q.like;
    let offset = (page - 1).saturating_mul(limit);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let found = gateway.search_clients(&search, offset, limit, now);
    let shown = offset.saturating_add(found.clients.len());
    Ok(Json(PageJson {
        data: found
            .clients
            .into_iter()
            .map(|c| ClientJson::new(c, wall))
            .collect(),
        meta: MetaJson {
            page,
            limit,
            count: found.total,
            hasnext: shown < found.total,
        },
    }))
}

async fn one(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
) -> Result<Json<ClientJson>, ApiError> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    gateway
        .client_at(&clientid, now)
        .map(|c| Json(ClientJson::new(c, wall)))
        .ok_or_else(|| ApiError::not_found(format!("no client {clientid:?}")))
}

async fn kick(
    State(state): State<ApiState>,
    Path(clientid): Path<String>,
) -> Result<StatusCode, ApiError> {
    // The session goes first (its observers get their final 4.01 over the
    // still-open DTLS session), then the DTLS session: the device's next
    // record over it is not answered, and it needs a new handshake.
    let kicked = state
        .gateway
        .kick_session(&clientid)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no client {clientid:?}")))?;
    let peer = &kicked.peer;
    match &state.dtls {
        Some(dtls) if dtls.id == kicked.listener => {
            match dtls.transport.socket().close(peer.addr).await {
                Ok(closed) => tracing::info!(clientid = %clientid, peer = %peer,
                                             dtls_session_closed = closed, "client kicked"),
                Err(error) => tracing::warn!(clientid = %clientid, peer = %peer, %error,
                                             "client kicked; closing its DTLS session failed"),
            }
        }
        _ => tracing::info!(clientid = %clientid, peer = %peer, "client kicked"),
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct SubscriptionJson {
    filter: String,
    qos: u8,
}

async fn subscriptions(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
) -> Result<Json<Vec<SubscriptionJson>>, ApiError> {
    let list = gateway
        .subscriptions(&clientid)
        .ok_or_else(|| ApiError::not_found(format!("no client {clientid:?}")))?;
    Ok(Json(
        list.into_iter()
            .map(|s| SubscriptionJson {
                filter: s.filter,
                qos: s.qos.as_u8(),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRequest {
    /// get | post | put | delete
    method: String,
    /// `a/b`, or `a/b?x=1&y=2`
    path: String,
    /// `x=1&y=2` (added after any query in `path`).
    #[serde(default)]
    query: Option<String>,
    /// UTF-8 text.
    #[serde(default)]
    payload: Option<String>,
    /// A Content-Format number (`50`) or media type (`"application/json"`).
    #[serde(default, alias = "content_type")]
    content_format: Option<FormatJson>,
    /// `"500ms"`, `"3s"`; default 5 s, at most 120 s.
    #[serde(default)]
    timeout: Option<HumanDuration>,
    /// The timeout in milliseconds (instead of `timeout`).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A Content-Format given as a number or as a media type.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FormatJson {
    Number(u16),
    Name(String),
}

#[derive(Serialize)]
struct DeviceResponse {
    code: String,
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_format: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

async fn request(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
    body: Result<Json<DeviceRequest>, JsonRejection>,
) -> Result<Json<DeviceResponse>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let message = to_message(&body)?;
    let timeout = match (body.timeout, body.timeout_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either timeout or timeout_ms, not both",
            ));
        }
        (Some(t), None) => t.get(),
        (None, Some(ms)) => Duration::from_millis(ms),
        (None, None) => DEFAULT_TIMEOUT,
    }
    .min(MAX_TIMEOUT);
    match gateway.request_device(&clientid, message, timeout).await {
        Ok(answer) => {
            let format = answer.content_format();
            Ok(Json(DeviceResponse {
                code: answer.code.to_string(),
                payload: String::from_utf8_lossy(&answer.payload).into_owned(),
                content_format: format.map(|f| f.0),
                content_type: format.and_then(|f| f.media_type()).map(str::to_owned),
            }))
        }
        Err(DeviceRequestError::UnknownClient) => {
            Err(ApiError::not_found(format!("no client {clientid:?}")))
        }
        Err(DeviceRequestError::Timeout) => Err(ApiError::timeout(format!(
            "the device did not answer within {} ms",
            timeout.as_millis()
        ))),
        Err(error) => Err(ApiError::new(StatusCode::BAD_GATEWAY, error.to_string())),
    }
}

fn to_message(body: &DeviceRequest) -> Result<Message, ApiError> {
    let code = match body.method.to_ascii_lowercase().as_str() {
        "get" => Code::GET,
        "post" => Code::POST,
        "put" => Code::PUT,
        "delete" => Code::DELETE,
        other => return Err(ApiError::bad_request(format!("method {other:?}"))),
    };
    let (path, query) = body.path.split_once('?').unwrap_or((&body.path, ""));
    let mut message = Message::new(MessageType::Con, code, 0).with_uri_path(path);
    let extra = body.query.as_deref().unwrap_or_default();
    for entry in query.split('&').chain(extra.split('&')) {
        if !entry.is_empty() {
            message = message.with_uri_query(entry);
        }
    }
    match &body.content_format {
        None => {}
        Some(FormatJson::Number(n)) => message = message.with_content_format(ContentFormat(*n)),
        Some(FormatJson::Name(name)) => {
            let format = emqx_coap::gateway::content_format_for(name)
                .or_else(|| name.parse::<u16>().ok().map(ContentFormat))
                .ok_or_else(|| ApiError::bad_request(format!("content format {name:?}")))?;
            message = message.with_content_format(format);
        }
    }
    if let Some(payload) = &body.payload {
        message = message.with_payload(payload.clone().into_bytes());
    }
    Ok(message)
}

/// `1970-01-01T00:00:00.000Z` for milliseconds since the Unix epoch.
fn rfc3339_utc_millis(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm,
    // shifted so that eras start on 0000-03-01).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc_millis(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        assert_eq!(
            rfc3339_utc_millis(951_827_696_789),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339_utc_millis(1_798_761_599_000),
            "2026-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn query_content_format_and_timeout_fields() {
        let body: DeviceRequest = serde_json::from_str(
            r#"{"method":"get","path":"a?x=1","query":"y=2","content_format":50,"timeout":"300ms"}"#,
        )
        .unwrap();
        let m = to_message(&body).unwrap();
        let queries: Vec<&[u8]> = m.uri_query().collect();
        assert_eq!(queries, [&b"x=1"[..], b"y=2"]);
        assert_eq!(m.content_format(), Some(ContentFormat(50)));
        assert_eq!(body.timeout.unwrap().get(), Duration::from_millis(300));
        let body: DeviceRequest = serde_json::from_str(
            r#"{"method":"get","path":"a","content_format":"application/json"}"#,
        )
        .unwrap();
        assert_eq!(
            to_message(&body).unwrap().content_format(),
            Some(ContentFormat(50))
        );
        assert!(
            serde_json::from_str::<DeviceRequest>(r#"{"method":"get","path":"a","bogus":1}"#)
                .is_err()
        );
    }

    #[test]
    fn device_requests_become_messages() {
        let body: DeviceRequest = serde_json::from_str(
            r#"{"method":"PUT","path":"actuators/led?mode=blink&x=1","payload":"on","content_type":"text/plain"}"#,
        )
        .unwrap();
        let m = to_message(&body).unwrap();
        assert_eq!(m.code, Code::PUT);
        let path: Vec<&[u8]> = m.uri_path().collect();
        assert_eq!(path, [&b"actuators"[..], b"led"]);
        assert_eq!(m.uri_query().count(), 2);
        assert_eq!(&m.payload[..], b"on");
        assert_eq!(m.content_format(), Some(ContentFormat::TEXT_PLAIN));
        let bad: DeviceRequest = serde_json::from_str(r#"{"method":"fetch","path":"x"}"#).unwrap();
        assert_eq!(
            to_message(&bad).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let bad: DeviceRequest =
            serde_json::from_str(r#"{"method":"get","path":"x","content_type":"no/such"}"#)
                .unwrap();
        assert_eq!(
            to_message(&bad).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
