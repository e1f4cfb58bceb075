//! The management API on the `--http` server: connection-mode clients,
//! their subscriptions, kicking one, and sending a CoAP request to a device.
//!
//! ```text
//! GET    /api/clients[?like=SUBSTRING]          → [{clientid, username, peer, idle_ms, subscriptions}]
//! GET    /api/clients/{clientid}                → {...} | 404
//! DELETE /api/clients/{clientid}                → 204 (session ended) | 404
//! GET    /api/clients/{clientid}/subscriptions  → [{filter, qos}] | 404
//! POST   /api/clients/{clientid}/request        {method, path, payload?, content_type?, timeout_ms?}
//!                                               → {code, payload, content_type?} | 404 | 502 | 504
//! ```

use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use emqx_coap::gateway::{ClientSummary, DeviceRequestError, Gateway};
use gateway_kit::ApiError;
use gateway_kit::axum::extract::{Path, Query, State};
use gateway_kit::axum::http::StatusCode;
use gateway_kit::axum::routing::{get, post};
use gateway_kit::axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Longest wait for a device's answer.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// The routes, with the gateway as state.
pub(crate) fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/api/clients", get(list))
        .route("/api/clients/{clientid}", get(one).delete(kick))
        .route("/api/clients/{clientid}/subscriptions", get(subscriptions))
        .route("/api/clients/{clientid}/request", post(request))
        .with_state(gateway)
}

#[derive(Deserialize)]
struct ListQuery {
    like: Option<String>,
}

#[derive(Serialize)]
struct ClientJson {
    clientid: String,
    username: Option<String>,
    peer: String,
    idle_ms: u64,
    subscriptions: usize,
}

impl From<ClientSummary> for ClientJson {
    fn from(c: ClientSummary) -> Self {
        Self {
            clientid: c.clientid,
            username: c.username,
            peer: c.peer,
            idle_ms: u64::try_from(c.idle.as_millis()).unwrap_or(u64::MAX),
            subscriptions: c.subscriptions,
        }
    }
}

async fn list(State(gateway): State<Gateway>, Query(q): Query<ListQuery>) -> Json<Vec<ClientJson>> {
    let like = q.like.unwrap_or_default();
    Json(
        gateway
            .clients_at(&like, Instant::now())
            .into_iter()
            .map(ClientJson::from)
            .collect(),
    )
}

async fn one(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
) -> Result<Json<ClientJson>, ApiError> {
    gateway
        .client_at(&clientid, Instant::now())
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::not_found(format!("no client {clientid:?}")))
}

async fn kick(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
) -> Result<StatusCode, ApiError> {
    if gateway.kick(&clientid).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no client {clientid:?}")))
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRequest {
    /// get | post | put | delete
    method: String,
    /// `a/b?x=1&y=2`
    path: String,
    #[serde(default)]
    payload: Option<String>,
    /// A media type (`application/json`) or a Content-Format number.
    #[serde(default)]
    content_type: Option<String>,
    /// Default 5000, at most 120000.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct DeviceResponse {
    code: String,
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

async fn request(
    State(gateway): State<Gateway>,
    Path(clientid): Path<String>,
    Json(body): Json<DeviceRequest>,
) -> Result<Json<DeviceResponse>, ApiError> {
    let message = to_message(&body)?;
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(5000)).min(MAX_TIMEOUT);
    match gateway.request_device(&clientid, message, timeout).await {
        Ok(answer) => Ok(Json(DeviceResponse {
            code: answer.code.to_string(),
            payload: String::from_utf8_lossy(&answer.payload).into_owned(),
            content_type: answer.content_format().map(|f| {
                f.media_type()
                    .map_or_else(|| f.0.to_string(), str::to_owned)
            }),
        })),
        Err(DeviceRequestError::UnknownClient) => {
            Err(ApiError::not_found(format!("no client {clientid:?}")))
        }
        Err(DeviceRequestError::Timeout) => Err(ApiError::timeout("the device did not answer")),
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
    for entry in query.split('&').filter(|e| !e.is_empty()) {
        message = message.with_uri_query(entry);
    }
    if let Some(content_type) = &body.content_type {
        let format = emqx_coap::gateway::content_format_for(content_type)
            .or_else(|| content_type.parse::<u16>().ok().map(ContentFormat))
            .ok_or_else(|| ApiError::bad_request(format!("content type {content_type:?}")))?;
        message = message.with_content_format(format);
    }
    if let Some(payload) = &body.payload {
        message = message.with_payload(payload.clone().into_bytes());
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

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
