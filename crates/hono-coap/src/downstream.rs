//! The north-bound interface: what the CoAP layer sends to applications and
//! how commands come back.
//!
//! [`Downstream`] is an object-safe trait (methods return boxed futures), so
//! the adapter holds an `Arc<dyn Downstream>` chosen at start-up — AMQP, in
//! process or stdout — and its request handling is the same for all three.
//! One heap allocation per message is negligible next to a broker round
//! trip.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::request_id::{RequestId, RequestIdError};

/// The value of the `orig_adapter` header.
pub const ORIG_ADAPTER: &str = "hono-coap";

/// Future returned by [`Downstream`] operations.
pub type DownstreamFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DownstreamError>> + Send + 'a>>;

/// Where telemetry, events and command responses go, and where commands
/// come from.
pub trait Downstream: Send + Sync {
    /// Forwards telemetry. With [`Qos::AtLeastOnce`] this resolves only when
    /// the message was accepted downstream (AMQP: publisher confirm) and
    /// fails with [`DownstreamError::Unroutable`] if nobody consumes it;
    /// with [`Qos::AtMostOnce`] it resolves once the message is handed over.
    fn send_telemetry(&self, message: DownstreamMessage, qos: Qos) -> DownstreamFuture<'_, ()>;

    /// Forwards an event; always confirmed (at least once) and kept for
    /// applications that are not connected (AMQP: durable tenant queue).
    fn send_event(&self, message: DownstreamMessage) -> DownstreamFuture<'_, ()>;

    /// Forwards a device's command response to the application that is
    /// waiting for it; [`DownstreamError::Unroutable`] if none is.
    fn send_command_response(&self, response: CommandResponse) -> DownstreamFuture<'_, ()>;

    /// Whether messages can be sent right now (for readiness probes).
    fn is_ready(&self) -> bool;

    /// Starts routing commands for this device to this adapter instance.
    ///
    /// At most one command is buffered: a second one that arrives before the
    /// first was taken is rejected (503 to the application). A new
    /// subscription for the same device replaces the previous one (whose
    /// [`CommandSubscription::recv`] then returns `None`).
    fn subscribe_commands<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> DownstreamFuture<'a, CommandSubscription>;

    /// Stops routing commands for this subscription's device (unless a newer
    /// subscription replaced it) and rejects, with a 503 response, any
    /// command that arrived but was not taken.
    fn unsubscribe_commands(&self, subscription: CommandSubscription) -> DownstreamFuture<'_, ()>;

    /// Rejects a command that can no longer be delivered (e.g. its device
    /// stopped waiting): answers it with status 503 if it expects a response
    /// (`reply_to`), otherwise drops it.
    fn reject_command(&self, command: Command) -> DownstreamFuture<'_, ()>;
}

/// Why a downstream operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownstreamError {
    /// Nobody consumes the message (AMQP: returned as unroutable). CoAP 5.03.
    #[error("no consumer for the message")]
    Unroutable,
    /// The broker is down, refused (nack) or did not confirm in time.
    /// CoAP 5.03.
    #[error("downstream unavailable: {0}")]
    Unavailable(String),
    /// The message cannot be expressed downstream (e.g. an id longer than
    /// AMQP's 255-byte short strings). CoAP 4.00.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Delivery guarantee of telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Qos {
    /// NON request: not confirmed (header `qos` = 0).
    AtMostOnce,
    /// CON request: confirmed (header `qos` = 1).
    AtLeastOnce,
}

impl Qos {
    /// The `qos` header value (0 or 1).
    pub fn level(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
        }
    }
}

/// Telemetry or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// Telemetry (`/t`, `/telemetry`).
    Telemetry,
    /// Event (`/e`, `/event`).
    Event,
}

/// A telemetry message or event from a device.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DownstreamMessage {
    /// Tenant of the device.
    pub tenant_id: String,
    /// The device the data is from.
    pub device_id: String,
    /// The gateway that sent it on the device's behalf.
    pub gateway_id: Option<String>,
    /// Content type of the payload.
    pub content_type: String,
    /// The payload.
    pub payload: Bytes,
    /// `/` + the request's Uri-Path (header `orig_address`).
    pub orig_address: String,
    /// Seconds the device waits for a command (header `ttd`).
    pub ttd: Option<u32>,
    /// Time-to-live (AMQP `expiration`).
    pub ttl: Option<Duration>,
    /// When the adapter received the message (header `creation-time`,
    /// property `timestamp`).
    pub creation_time: SystemTime,
    /// The device's `defaults` (see [`crate::Authorized::message_defaults`]),
    /// added as headers; a header the adapter sets itself is not overridden,
    /// and `content-type` and `ttl` are not added (they have their own
    /// fields).
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

impl DownstreamMessage {
    /// A message with no gateway, TTD, TTL or defaults.
    pub fn new(
        tenant_id: impl Into<String>,
        device_id: impl Into<String>,
        content_type: impl Into<String>,
        payload: impl Into<Bytes>,
        orig_address: impl Into<String>,
        creation_time: SystemTime,
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            device_id: device_id.into(),
            gateway_id: None,
            content_type: content_type.into(),
            payload: payload.into(),
            orig_address: orig_address.into(),
            ttd: None,
            ttl: None,
            creation_time,
            defaults: serde_json::Map::new(),
        }
    }

    /// Sets the gateway that sent the message.
    pub fn with_gateway(mut self, gateway_id: impl Into<String>) -> Self {
        self.gateway_id = Some(gateway_id.into());
        self
    }

    /// Sets the time the device waits for a command.
    pub fn with_ttd(mut self, seconds: u32) -> Self {
        self.ttd = Some(seconds);
        self
    }

    /// Sets the time-to-live.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the device's defaults.
    pub fn with_defaults(mut self, defaults: serde_json::Map<String, serde_json::Value>) -> Self {
        self.defaults = defaults;
        self
    }
}

/// A command from an application to a device.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Command {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Target device.
    pub device_id: String,
    /// Command name (AMQP header `subject`, or the `type` property).
    pub name: String,
    /// Correlation id (request-response commands).
    pub correlation_id: Option<String>,
    /// Routing key of the response; `None` for one-way commands.
    pub reply_to: Option<String>,
    /// Content type of the payload.
    pub content_type: Option<String>,
    /// The command body.
    pub payload: Bytes,
}

impl Command {
    /// A one-way command.
    pub fn one_way(
        tenant_id: impl Into<String>,
        device_id: impl Into<String>,
        name: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            device_id: device_id.into(),
            name: name.into(),
            correlation_id: None,
            reply_to: None,
            content_type: None,
            payload: payload.into(),
        }
    }

    /// Makes this a request-response command.
    pub fn with_reply(
        mut self,
        correlation_id: impl Into<String>,
        reply_to: impl Into<String>,
    ) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self.reply_to = Some(reply_to.into());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Whether the application expects no response.
    pub fn is_one_way(&self) -> bool {
        self.reply_to.is_none()
    }

    /// The encoded request id the device must echo in its response (`None`
    /// for one-way commands). Commands whose id would not fit are rejected by
    /// the downstream before delivery, so this succeeds for delivered ones.
    pub fn request_id(&self) -> Option<Result<String, RequestIdError>> {
        let reply_to = self.reply_to.as_ref()?;
        let correlation_id = self.correlation_id.clone().unwrap_or_default();
        Some(
            RequestId {
                correlation_id,
                reply_to: reply_to.clone(),
            }
            .encode(),
        )
    }
}

/// A device's response to a request-response command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandResponse {
    /// Tenant of the device.
    pub tenant_id: String,
    /// The responding device.
    pub device_id: String,
    /// From the request id.
    pub correlation_id: String,
    /// From the request id: routing key of the response.
    pub reply_to: String,
    /// `hono-cmd-status` (200-299, 400-599).
    pub status: u16,
    /// Content type of the payload, if any.
    pub content_type: Option<String>,
    /// Response body.
    pub payload: Bytes,
    /// When the adapter received it.
    pub creation_time: SystemTime,
}

impl CommandResponse {
    /// A response routed by a decoded request id.
    pub fn new(
        tenant_id: impl Into<String>,
        device_id: impl Into<String>,
        request_id: RequestId,
        status: u16,
        payload: impl Into<Bytes>,
        creation_time: SystemTime,
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            device_id: device_id.into(),
            correlation_id: request_id.correlation_id,
            reply_to: request_id.reply_to,
            status,
            content_type: None,
            payload: payload.into(),
            creation_time,
        }
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The response that rejects `command` with `status` (e.g. 503 when the
    /// device no longer waits), if the command expects one.
    pub fn rejecting(command: &Command, status: u16, now: SystemTime) -> Option<Self> {
        let reply_to = command.reply_to.clone()?;
        Some(Self {
            tenant_id: command.tenant_id.clone(),
            device_id: command.device_id.clone(),
            correlation_id: command.correlation_id.clone().unwrap_or_default(),
            reply_to,
            status,
            content_type: None,
            payload: Bytes::new(),
            creation_time: now,
        })
    }
}

/// Commands for one waiting device, as routed to this adapter instance.
#[derive(Debug)]
pub struct CommandSubscription {
    tenant_id: String,
    device_id: String,
    id: u64,
    commands: mpsc::Receiver<Command>,
}

impl CommandSubscription {
    /// Tenant of the device.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// The device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The next command; `None` once the subscription was replaced or the
    /// downstream shut down. Cancel-safe (use it in `select!` with the TTD
    /// timer).
    pub async fn recv(&mut self) -> Option<Command> {
        self.commands.recv().await
    }

    /// Polls for the next command (for waiting on several subscriptions at
    /// once); `Ready(None)` once the subscription was replaced or the
    /// downstream shut down.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Command>> {
        self.commands.poll_recv(cx)
    }

    /// Closes the channel and returns commands that arrived but were not
    /// taken.
    pub(crate) fn close(mut self) -> (String, String, u64, Vec<Command>) {
        self.commands.close();
        let mut left = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            left.push(command);
        }
        (self.tenant_id, self.device_id, self.id, left)
    }
}

/// The AMQP routing key of commands for a device: `{tenant}/{device}`.
pub(crate) fn command_routing_key(tenant_id: &str, device_id: &str) -> String {
    format!("{tenant_id}/{device_id}")
}

/// Outcome of [`CommandRouter::deliver`].
#[derive(Debug)]
#[must_use]
pub(crate) enum Delivery {
    /// Handed to the waiting device's subscription.
    Queued,
    /// No device waits, or it already has a command it did not take yet.
    Refused(Command),
}

/// Which subscription receives commands for which device (shared by the
/// downstream implementations). One entry per waiting device, so it is
/// bounded by the registered devices.
#[derive(Debug, Default)]
pub(crate) struct CommandRouter {
    inner: Mutex<RouterState>,
}

#[derive(Debug, Default)]
struct RouterState {
    next_id: u64,
    /// Keyed by routing key `{tenant}/{device}`.
    slots: HashMap<String, (u64, mpsc::Sender<Command>)>,
}

impl CommandRouter {
    /// Registers (or replaces) the subscription for a device.
    pub(crate) fn subscribe(&self, tenant_id: &str, device_id: &str) -> CommandSubscription {
        let (tx, rx) = mpsc::channel(1);
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.next_id = state.next_id.wrapping_add(1);
        let id = state.next_id;
        state
            .slots
            .insert(command_routing_key(tenant_id, device_id), (id, tx));
        CommandSubscription {
            tenant_id: tenant_id.to_owned(),
            device_id: device_id.to_owned(),
            id,
            commands: rx,
        }
    }

    /// Removes the subscription `id` of a device; `true` if it was the
    /// current one (so the device no longer waits here).
    pub(crate) fn unsubscribe(&self, tenant_id: &str, device_id: &str, id: u64) -> bool {
        let key = command_routing_key(tenant_id, device_id);
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match state.slots.get(&key) {
            Some((current, _)) if *current == id => {
                state.slots.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Whether a subscription for this routing key exists.
    pub(crate) fn is_subscribed(&self, routing_key: &str) -> bool {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.slots.contains_key(routing_key)
    }

    /// Hands a command to its device's subscription; gives it back if there
    /// is none or one is already waiting to be taken.
    pub(crate) fn deliver(&self, command: Command) -> Delivery {
        let key = command_routing_key(&command.tenant_id, &command.device_id);
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match state.slots.get(&key) {
            Some((_, tx)) => match tx.try_send(command) {
                Ok(()) => Delivery::Queued,
                Err(mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c)) => {
                    Delivery::Refused(c)
                }
            },
            None => Delivery::Refused(command),
        }
    }

    /// Routing keys of all current subscriptions (to re-bind after a
    /// reconnect).
    pub(crate) fn routing_keys(&self) -> Vec<String> {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.slots.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn router_buffers_one_command_and_replaces_subscriptions() {
        let router = CommandRouter::default();
        assert!(matches!(
            router.deliver(Command::one_way("t", "d", "x", "")),
            Delivery::Refused(_)
        ));
        let mut first = router.subscribe("t", "d");
        assert!(router.is_subscribed("t/d"));
        assert!(matches!(
            router.deliver(Command::one_way("t", "d", "a", "")),
            Delivery::Queued
        ));
        let Delivery::Refused(second_cmd) = router.deliver(Command::one_way("t", "d", "b", ""))
        else {
            panic!("the second command was queued");
        };
        assert_eq!(second_cmd.name, "b");
        assert_eq!(first.recv().await.unwrap().name, "a");

        let second = router.subscribe("t", "d");
        // the first subscription's sender was dropped
        assert!(first.recv().await.is_none());
        assert!(!router.unsubscribe("t", "d", first.id));
        assert!(router.is_subscribed("t/d"));
        assert!(matches!(
            router.deliver(Command::one_way("t", "d", "c", "")),
            Delivery::Queued
        ));
        let (_, _, id, left) = second.close();
        assert_eq!(left.len(), 1);
        assert!(router.unsubscribe("t", "d", id));
        assert!(!router.is_subscribed("t/d"));
        assert!(router.routing_keys().is_empty());
    }

    #[test]
    fn rejecting_response_only_for_request_response() {
        let now = SystemTime::UNIX_EPOCH;
        assert!(
            CommandResponse::rejecting(&Command::one_way("t", "d", "x", ""), 503, now).is_none()
        );
        let cmd = Command::one_way("t", "d", "x", "").with_reply("c1", "app");
        let r = CommandResponse::rejecting(&cmd, 503, now).unwrap();
        assert_eq!(
            (r.status, r.correlation_id.as_str(), r.reply_to.as_str()),
            (503, "c1", "app")
        );
        let rid = RequestId::decode(&cmd.request_id().unwrap().unwrap()).unwrap();
        assert_eq!(rid.correlation_id, "c1");
        assert_eq!(rid.reply_to, "app");
    }
}
