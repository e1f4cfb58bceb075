//! The stdout downstream; see [`StdoutDownstream`].

use std::io::Write;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use serde::Serialize;

use crate::downstream::{
    Command, CommandResponse, CommandRouter, CommandSubscription, Downstream, DownstreamError,
    DownstreamFuture, DownstreamMessage, EndpointKind, ORIG_ADAPTER, Qos,
};

/// A [`Downstream`] that prints each telemetry message and event as one
/// JSON line — the binary's default without `--amqp`, so a first run shows
/// something. There are no applications behind it: no commands arrive and
/// command responses are unroutable.
pub struct StdoutDownstream {
    out: Mutex<Box<dyn Write + Send>>,
    router: CommandRouter,
}

impl std::fmt::Debug for StdoutDownstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutDownstream").finish_non_exhaustive()
    }
}

impl Default for StdoutDownstream {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: EndpointKind,
    tenant_id: &'a str,
    device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_id: Option<&'a str>,
    orig_adapter: &'static str,
    orig_address: &'a str,
    qos: u8,
    content_type: &'a str,
    creation_time: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttd: Option<u32>,
    /// The payload as text when it is UTF-8 ...
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    /// ... otherwise base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl StdoutDownstream {
    /// Writes to the process's stdout.
    pub fn new() -> Self {
        Self::with_writer(Box::new(std::io::stdout()))
    }

    /// Writes to `out` instead (e.g. a file or a buffer in tests).
    pub fn with_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
            router: CommandRouter::default(),
        }
    }

    fn print(
        &self,
        kind: EndpointKind,
        qos: Qos,
        m: &DownstreamMessage,
    ) -> Result<(), DownstreamError> {
        let text = std::str::from_utf8(&m.payload).ok();
        let line = Line {
            kind,
            tenant_id: &m.tenant_id,
            device_id: &m.device_id,
            gateway_id: m.gateway_id.as_deref(),
            orig_adapter: ORIG_ADAPTER,
            orig_address: &m.orig_address,
            qos: qos.level(),
            content_type: &m.content_type,
            creation_time: m
                .creation_time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            ttd: m.ttd,
            payload: text,
            payload_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            },
        };
        let mut json =
            serde_json::to_vec(&line).map_err(|e| DownstreamError::Invalid(e.to_string()))?;
        json.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(&json)
            .and_then(|()| out.flush())
            .map_err(|e| DownstreamError::Unavailable(format!("cannot write to stdout: {e}")))
    }
}

impl Downstream for StdoutDownstream {
    fn send_telemetry(&self, message: DownstreamMessage, qos: Qos) -> DownstreamFuture<'_, ()> {
        let outcome = self.print(EndpointKind::Telemetry, qos, &message);
        Box::pin(async move { outcome })
    }

    fn send_event(&self, message: DownstreamMessage) -> DownstreamFuture<'_, ()> {
        let outcome = self.print(EndpointKind::Event, Qos::AtLeastOnce, &message);
        Box::pin(async move { outcome })
    }

    fn send_command_response(&self, _response: CommandResponse) -> DownstreamFuture<'_, ()> {
        Box::pin(async move { Err(DownstreamError::Unroutable) })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn subscribe_commands<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> DownstreamFuture<'a, CommandSubscription> {
        let subscription = self.router.subscribe(tenant_id, device_id);
        Box::pin(async move { Ok(subscription) })
    }

    fn unsubscribe_commands(&self, subscription: CommandSubscription) -> DownstreamFuture<'_, ()> {
        let (tenant_id, device_id, id, _left) = subscription.close();
        self.router.unsubscribe(&tenant_id, &device_id, id);
        Box::pin(async move { Ok(()) })
    }

    fn reject_command(&self, _command: Command) -> DownstreamFuture<'_, ()> {
        Box::pin(async move { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_json_line_per_message() {
        let buffer = Buffer::default();
        let d = StdoutDownstream::with_writer(Box::new(buffer.clone()));
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        d.send_telemetry(
            DownstreamMessage::new(
                "DEFAULT_TENANT",
                "4711",
                "application/json",
                "{\"temp\":5}",
                "/t",
                at,
            )
            .with_gateway("gw-1")
            .with_ttd(30),
            Qos::AtMostOnce,
        )
        .await
        .unwrap();
        d.send_event(DownstreamMessage::new(
            "t",
            "d",
            "application/octet-stream",
            vec![0xff, 0],
            "/event",
            at,
        ))
        .await
        .unwrap();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            serde_json::json!({"type": "telemetry", "tenant_id": "DEFAULT_TENANT", "device_id": "4711",
                "gateway_id": "gw-1", "orig_adapter": "hono-coap", "orig_address": "/t", "qos": 0,
                "content_type": "application/json", "creation_time": 1_700_000_000_123u64, "ttd": 30,
                "payload": "{\"temp\":5}"})
        );
        assert_eq!(lines[1]["type"], "event");
        assert_eq!(lines[1]["qos"], 1);
        assert_eq!(lines[1]["payload_base64"], "/wA=");
        assert!(lines[1].get("payload").is_none());
        let response = CommandResponse::new(
            "t",
            "d",
            crate::RequestId {
                correlation_id: "c".into(),
                reply_to: "r".into(),
            },
            200,
            "",
            at,
        );
        assert!(matches!(
            d.send_command_response(response).await,
            Err(DownstreamError::Unroutable)
        ));
    }
}
