//! The in-process downstream; see [`InProcessDownstream`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::downstream::{
    Command, CommandResponse, CommandRouter, CommandSubscription, Delivery, Downstream,
    DownstreamError, DownstreamFuture, DownstreamMessage, EndpointKind, Qos,
};

/// Capacity of each consumer channel.
const CONSUMER_CAPACITY: usize = 1024;
/// Events kept per tenant while no consumer is attached.
const MAX_STORED_EVENTS: usize = 10_000;

/// A message as received by an in-process consumer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InProcessMessage {
    /// Telemetry or event.
    pub kind: EndpointKind,
    /// QoS it was sent with (events: always at least once).
    pub qos: Qos,
    /// The message.
    pub message: DownstreamMessage,
}

/// A [`Downstream`] on in-process channels, for embedding the adapter in a
/// Rust service and for testing the CoAP layer without a broker.
///
/// It mirrors the AMQP semantics: telemetry with no consumer for its tenant
/// is unroutable (reported for QoS 1, silently dropped for QoS 0); events
/// with no consumer are kept (bounded) and handed to the next consumer of the
/// tenant, like the durable event queue; command responses with no consumer
/// for their `reply_to` are unroutable; commands with no waiting device are
/// unroutable for the application.
#[derive(Debug)]
pub struct InProcessDownstream {
    available: AtomicBool,
    router: CommandRouter,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    telemetry: HashMap<String, mpsc::Sender<InProcessMessage>>,
    events: HashMap<String, mpsc::Sender<InProcessMessage>>,
    stored_events: HashMap<String, VecDeque<InProcessMessage>>,
    responses: HashMap<String, mpsc::Sender<CommandResponse>>,
}

impl Default for InProcessDownstream {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessDownstream {
    /// An available downstream with no consumers.
    pub fn new() -> Self {
        Self {
            available: AtomicBool::new(true),
            router: CommandRouter::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// Makes every send fail with [`DownstreamError::Unavailable`] (a "broker
    /// down" switch for tests of the CoAP layer).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Consumes the tenant's telemetry (replacing a previous consumer).
    pub fn consume_telemetry(&self, tenant_id: &str) -> mpsc::Receiver<InProcessMessage> {
        let (tx, rx) = mpsc::channel(CONSUMER_CAPACITY);
        self.lock().telemetry.insert(tenant_id.to_owned(), tx);
        rx
    }

    /// Consumes the tenant's events, starting with those stored while no
    /// consumer was attached (replacing a previous consumer).
    pub fn consume_events(&self, tenant_id: &str) -> mpsc::Receiver<InProcessMessage> {
        let (tx, rx) = mpsc::channel(CONSUMER_CAPACITY + MAX_STORED_EVENTS);
        let mut state = self.lock();
        for stored in state.stored_events.remove(tenant_id).unwrap_or_default() {
            // Capacity covers every stored event.
            let _ = tx.try_send(stored);
        }
        state.events.insert(tenant_id.to_owned(), tx);
        rx
    }

    /// Consumes command responses routed to `reply_to`.
    pub fn consume_command_responses(&self, reply_to: &str) -> mpsc::Receiver<CommandResponse> {
        let (tx, rx) = mpsc::channel(CONSUMER_CAPACITY);
        self.lock().responses.insert(reply_to.to_owned(), tx);
        rx
    }

    /// Sends a command as an application would; [`DownstreamError::Unroutable`]
    /// if its device is not waiting. A command that finds its device's buffer
    /// full is rejected with a 503 response (if it has `reply_to`).
    pub fn send_command(&self, command: Command) -> Result<(), DownstreamError> {
        if !self
            .router
            .is_subscribed(&crate::downstream::command_routing_key(
                &command.tenant_id,
                &command.device_id,
            ))
        {
            return Err(DownstreamError::Unroutable);
        }
        if let Delivery::Refused(command) = self.router.deliver(command) {
            self.respond_rejected(&command);
        }
        Ok(())
    }

    /// Whether a device (or a gateway for it) currently waits for a command
    /// here.
    pub fn is_device_waiting(&self, tenant_id: &str, device_id: &str) -> bool {
        self.router
            .is_subscribed(&crate::downstream::command_routing_key(
                tenant_id, device_id,
            ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_available(&self) -> Result<(), DownstreamError> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(DownstreamError::Unavailable(
                "in-process downstream switched off".into(),
            ))
        }
    }

    fn respond_rejected(&self, command: &Command) {
        if let Some(response) = CommandResponse::rejecting(command, 503, SystemTime::now()) {
            let _ = self.route_response(response);
        }
    }

    fn route_response(&self, response: CommandResponse) -> Result<(), DownstreamError> {
        let mut state = self.lock();
        let Some(tx) = state.responses.get(&response.reply_to) else {
            return Err(DownstreamError::Unroutable);
        };
        match tx.try_send(response) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DownstreamError::Unavailable(
                "response consumer is not keeping up".into(),
            )),
            Err(mpsc::error::TrySendError::Closed(r)) => {
                state.responses.remove(&r.reply_to);
                Err(DownstreamError::Unroutable)
            }
        }
    }

    fn telemetry(&self, message: DownstreamMessage, qos: Qos) -> Result<(), DownstreamError> {
        self.check_available()?;
        let mut state = self.lock();
        let tenant = message.tenant_id.clone();
        let outcome = match state.telemetry.get(&tenant) {
            None => Err(DownstreamError::Unroutable),
            Some(tx) => match tx.try_send(InProcessMessage {
                kind: EndpointKind::Telemetry,
                qos,
                message,
            }) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(DownstreamError::Unavailable(
                    "telemetry consumer is not keeping up".into(),
                )),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    state.telemetry.remove(&tenant);
                    Err(DownstreamError::Unroutable)
                }
            },
        };
        match qos {
            // Like an unconfirmed AMQP publish: the sender does not learn.
            Qos::AtMostOnce => Ok(()),
            Qos::AtLeastOnce => outcome,
        }
    }

    fn event(&self, message: DownstreamMessage) -> Result<(), DownstreamError> {
        self.check_available()?;
        let mut state = self.lock();
        let tenant = message.tenant_id.clone();
        let mut event = InProcessMessage {
            kind: EndpointKind::Event,
            qos: Qos::AtLeastOnce,
            message,
        };
        if let Some(tx) = state.events.get(&tenant) {
            match tx.try_send(event) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(DownstreamError::Unavailable(
                        "event consumer is not keeping up".into(),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(e)) => {
                    state.events.remove(&tenant);
                    event = e;
                }
            }
        }
        let stored = state.stored_events.entry(tenant).or_default();
        if stored.len() >= MAX_STORED_EVENTS {
            return Err(DownstreamError::Unavailable("event store full".into()));
        }
        stored.push_back(event);
        Ok(())
    }
}

impl Downstream for InProcessDownstream {
    fn send_telemetry(&self, message: DownstreamMessage, qos: Qos) -> DownstreamFuture<'_, ()> {
        let outcome = self.telemetry(message, qos);
        Box::pin(async move { outcome })
    }

    fn send_event(&self, message: DownstreamMessage) -> DownstreamFuture<'_, ()> {
        let outcome = self.event(message);
        Box::pin(async move { outcome })
    }

    fn send_command_response(&self, response: CommandResponse) -> DownstreamFuture<'_, ()> {
        let outcome = self
            .check_available()
            .and_then(|()| self.route_response(response));
        Box::pin(async move { outcome })
    }

    fn is_ready(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn subscribe_commands<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> DownstreamFuture<'a, CommandSubscription> {
        let outcome = self
            .check_available()
            .map(|()| self.router.subscribe(tenant_id, device_id));
        Box::pin(async move { outcome })
    }

    fn unsubscribe_commands(&self, subscription: CommandSubscription) -> DownstreamFuture<'_, ()> {
        let (tenant_id, device_id, id, left) = subscription.close();
        self.router.unsubscribe(&tenant_id, &device_id, id);
        for command in &left {
            self.respond_rejected(command);
        }
        Box::pin(async move { Ok(()) })
    }

    fn reject_command(&self, command: Command) -> DownstreamFuture<'_, ()> {
        self.respond_rejected(&command);
        Box::pin(async move { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::request_id::RequestId;

    fn msg(tenant: &str, payload: &'static str) -> DownstreamMessage {
        DownstreamMessage::new(
            tenant,
            "4711",
            "text/plain",
            payload,
            "/telemetry",
            SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn telemetry_needs_a_consumer_for_qos1() {
        let d = InProcessDownstream::new();
        assert!(matches!(
            d.send_telemetry(msg("t", "a"), Qos::AtLeastOnce).await,
            Err(DownstreamError::Unroutable)
        ));
        d.send_telemetry(msg("t", "b"), Qos::AtMostOnce)
            .await
            .unwrap();
        let mut rx = d.consume_telemetry("t");
        d.send_telemetry(msg("t", "c"), Qos::AtLeastOnce)
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(
            (got.kind, got.qos, &got.message.payload[..]),
            (EndpointKind::Telemetry, Qos::AtLeastOnce, &b"c"[..])
        );
        assert!(rx.try_recv().is_err());
        // another tenant is still unroutable
        assert!(
            d.send_telemetry(msg("u", "d"), Qos::AtLeastOnce)
                .await
                .is_err()
        );
        drop(rx);
        assert!(matches!(
            d.send_telemetry(msg("t", "e"), Qos::AtLeastOnce).await,
            Err(DownstreamError::Unroutable)
        ));
        d.set_available(false);
        assert!(!d.is_ready());
        assert!(matches!(
            d.send_telemetry(msg("t", "f"), Qos::AtMostOnce).await,
            Err(DownstreamError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn events_are_kept_until_a_consumer_attaches() {
        let d = InProcessDownstream::new();
        d.send_event(msg("t", "1")).await.unwrap();
        d.send_event(msg("t", "2")).await.unwrap();
        let mut rx = d.consume_events("t");
        d.send_event(msg("t", "3")).await.unwrap();
        for want in ["1", "2", "3"] {
            let got = rx.recv().await.unwrap();
            assert_eq!(got.kind, EndpointKind::Event);
            assert_eq!(&got.message.payload[..], want.as_bytes());
        }
        drop(rx);
        d.send_event(msg("t", "4")).await.unwrap();
        let mut rx = d.consume_events("t");
        assert_eq!(&rx.recv().await.unwrap().message.payload[..], b"4");
    }

    #[tokio::test]
    async fn commands_reach_the_waiting_device_and_late_ones_get_503() {
        let d = InProcessDownstream::new();
        let mut responses = d.consume_command_responses("app-1");
        let cmd =
            || Command::one_way("t", "4711", "setVolume", "{\"v\":3}").with_reply("c1", "app-1");
        assert!(matches!(
            d.send_command(cmd()),
            Err(DownstreamError::Unroutable)
        ));

        let mut sub = d.subscribe_commands("t", "4711").await.unwrap();
        d.send_command(cmd()).unwrap();
        // A second command while the first is not taken yet: 503 right away.
        d.send_command(Command::one_way("t", "4711", "second", "").with_reply("c2", "app-1"))
            .unwrap();
        let rejected = responses.recv().await.unwrap();
        assert_eq!(
            (rejected.status, rejected.correlation_id.as_str()),
            (503, "c2")
        );

        let got = sub.recv().await.unwrap();
        assert_eq!(got.name, "setVolume");
        let rid = RequestId::decode(&got.request_id().unwrap().unwrap()).unwrap();
        // One more arrives before the device stops waiting: rejected on unsubscribe.
        d.send_command(Command::one_way("t", "4711", "third", "").with_reply("c3", "app-1"))
            .unwrap();
        d.unsubscribe_commands(sub).await.unwrap();
        assert_eq!(responses.recv().await.unwrap().correlation_id, "c3");
        assert!(matches!(
            d.send_command(cmd()),
            Err(DownstreamError::Unroutable)
        ));

        // The device answers the first command.
        let response = CommandResponse::new("t", "4711", rid, 200, "ok", SystemTime::now());
        d.send_command_response(response).await.unwrap();
        let got = responses.recv().await.unwrap();
        assert_eq!(
            (got.status, got.correlation_id.as_str(), &got.payload[..]),
            (200, "c1", &b"ok"[..])
        );

        // No application waits on another reply_to.
        let orphan = CommandResponse::new(
            "t",
            "4711",
            RequestId {
                correlation_id: "x".into(),
                reply_to: "gone".into(),
            },
            200,
            "",
            SystemTime::now(),
        );
        assert!(matches!(
            d.send_command_response(orphan).await,
            Err(DownstreamError::Unroutable)
        ));

        // A late command handed back by the CoAP layer.
        d.reject_command(cmd()).await.unwrap();
        assert_eq!(responses.recv().await.unwrap().status, 503);
        // One-way commands are just dropped.
        d.reject_command(Command::one_way("t", "4711", "x", ""))
            .await
            .unwrap();
        assert!(responses.try_recv().is_err());
    }
}
