//! The AMQP 0-9-1 (RabbitMQ) downstream; see [`AmqpDownstream`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{Notify, watch};

use crate::downstream::{
    Command, CommandResponse, CommandRouter, CommandSubscription, Downstream, DownstreamError,
    DownstreamFuture, DownstreamMessage, EndpointKind, ORIG_ADAPTER, Qos, command_routing_key,
};

/// An [`AmqpConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpConfigError {
    /// The broker URL does not parse.
    #[error("invalid AMQP URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// Exchange names (`{prefix}.command_response`) would exceed 255 bytes.
    #[error("exchange prefix too long")]
    PrefixTooLong,
}

/// Settings of the AMQP downstream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// Broker URI, `amqp://user:pass@host:port/vhost` (`amqps://` for TLS).
    pub url: String,
    /// Exchange name prefix. Default: `hono`.
    pub exchange_prefix: String,
    /// How long a confirmed send waits for the broker. Default: 2 s.
    pub confirm_timeout: Duration,
    /// Declare the durable queue `{prefix}.event.{tenant}` on a tenant's
    /// first event, so events are kept while no application is connected.
    /// Default: true.
    pub declare_event_queues: bool,
    /// First reconnect delay. Default: 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub reconnect_max: Duration,
    /// Timeout of connecting and declaring the topology. Default: 10 s.
    pub connect_timeout: Duration,
    /// Connection name shown in the RabbitMQ management UI. Default:
    /// `hono-coap`.
    pub connection_name: String,
}

impl AmqpConfig {
    /// Defaults for the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange_prefix: "hono".into(),
            confirm_timeout: Duration::from_secs(2),
            declare_event_queues: true,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            connection_name: ORIG_ADAPTER.into(),
        }
    }

    /// Sets the exchange prefix (default `hono`).
    pub fn with_exchange_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exchange_prefix = prefix.into();
        self
    }

    /// Sets the confirm timeout (default 2 s).
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Enables or disables declaring event queues (default enabled).
    pub fn with_event_queues(mut self, declare: bool) -> Self {
        self.declare_event_queues = declare;
        self
    }

    /// Sets the reconnect back-off bounds (default 100 ms … 5 s).
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The exchange of an endpoint: `{prefix}.{name}`.
    pub fn exchange(&self, name: &str) -> String {
        format!("{}.{name}", self.exchange_prefix)
    }

    /// The durable event queue of a tenant: `{prefix}.event.{tenant}`.
    pub fn event_queue(&self, tenant_id: &str) -> String {
        format!("{}.event.{tenant_id}", self.exchange_prefix)
    }
}

/// The [`Downstream`] on RabbitMQ (AMQP 0-9-1, via `lapin`).
///
/// Topology (prefix default `hono`), declared on every (re)connect:
/// ```text
/// {prefix}.telemetry         direct, durable   key {tenant}          <- adapter (mandatory)
/// {prefix}.event             direct, durable   key {tenant}          <- adapter (mandatory, persistent)
///   └─ {prefix}.event.{tenant}  durable queue, declared on first event of a tenant
/// {prefix}.command           direct, durable   key {tenant}/{device} <- applications
///   └─ {prefix}.command.{instance}  exclusive auto-delete queue of this adapter,
///                                  bound per waiting device
/// {prefix}.command_response  direct, durable   key = reply_to        <- adapter (mandatory)
/// ```
///
/// One supervisor task owns the connection: it connects, declares the
/// topology, re-binds the devices currently waiting, consumes commands and,
/// when the connection or a channel breaks, tears everything down and
/// reconnects with exponential back-off. While it is down every send fails
/// at once with [`DownstreamError::Unavailable`].
///
/// Publishing uses one channel in confirm mode. A QoS 1 send waits for the
/// broker's confirm (bounded by [`AmqpConfig::confirm_timeout`]); a message
/// the broker returned as unroutable (`mandatory`, no queue bound) is
/// reported as [`DownstreamError::Unroutable`]. QoS 0 sends do not wait: a
/// small task awaits and discards their confirms (lapin would otherwise keep
/// dropped confirms until the next `wait_for_confirms`).
///
/// Commands: applications publish to `{prefix}.command` with routing key
/// `{tenant}/{device}`, the command name in header `subject` (or the `type`
/// property), `correlation_id` and `reply_to` for request-response commands
/// (`message_id` stands in for a missing `correlation_id`), and should set
/// `mandatory` (a returned command means the device is not waiting). A
/// command that finds no waiting device here, or one that already has an
/// untaken command, is answered with status 503; one without a name, or whose
/// ids do not fit a request id, with 400 (only if it has `reply_to`).
///
/// Dropping it stops the supervisor task and closes the connection.
#[derive(Debug)]
pub struct AmqpDownstream {
    inner: Arc<Inner>,
    /// Dropped with the downstream: tells the supervisor to stop.
    _stop: watch::Sender<()>,
}

#[derive(Debug)]
struct Inner {
    config: AmqpConfig,
    /// Name of this instance's command queue.
    command_queue: String,
    /// `{prefix}.telemetry` and `{prefix}.event`, built once (not per
    /// message).
    telemetry_exchange: ShortString,
    event_exchange: ShortString,
    router: CommandRouter,
    /// The current connection, `None` while down.
    live: Mutex<Option<Arc<Live>>>,
    /// `true` while connected and set up.
    ready: watch::Sender<bool>,
    /// Held while changing command routing (router entry + broker binding,
    /// and the re-binding after a reconnect), so bind and unbind calls for a
    /// device reach the broker in the order the router saw them.
    binding: tokio::sync::Mutex<()>,
    /// Successful connects so far (1 = never reconnected).
    connects: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Live {
    connection: Connection,
    /// Confirm mode; used for all publishing.
    publish: Channel,
    /// Declarations, (un)bindings and the command consumer.
    control: Channel,
    /// Tenants whose event queue was declared on this connection.
    event_queues: Mutex<HashSet<String>>,
    /// A publish or bind failed on this connection: reconnect. Per
    /// connection, so a failure seen on an old one cannot tear down the next.
    broken: Notify,
}

impl AmqpDownstream {
    /// Starts connecting in the background and returns at once; sends fail
    /// with [`DownstreamError::Unavailable`] until the connection is up (see
    /// [`wait_ready`](Self::wait_ready)). A broker that cannot be reached is
    /// retried forever; a URL that cannot be parsed is an error here. Must
    /// be called inside a tokio runtime.
    pub fn start(config: AmqpConfig) -> Result<Self, AmqpConfigError> {
        config
            .url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|reason| AmqpConfigError::InvalidUrl {
                url: redact(&config.url),
                reason,
            })?;
        for name in ["command", "command_response"] {
            if ShortString::try_new(config.exchange(name)).is_err() {
                return Err(AmqpConfigError::PrefixTooLong);
            }
        }
        let telemetry_exchange = ShortString::try_new(config.exchange("telemetry"))
            .map_err(|_| AmqpConfigError::PrefixTooLong)?;
        let event_exchange = ShortString::try_new(config.exchange("event"))
            .map_err(|_| AmqpConfigError::PrefixTooLong)?;
        let instance: u64 = rand::random();
        let command_queue = format!(
            "{}.command.{}-{instance:016x}",
            config.exchange_prefix, ORIG_ADAPTER
        );
        let (ready, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            command_queue,
            telemetry_exchange,
            event_exchange,
            router: CommandRouter::default(),
            live: Mutex::new(None),
            ready,
            binding: tokio::sync::Mutex::new(()),
            connects: std::sync::atomic::AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(());
        tokio::spawn(supervise(inner.clone(), stopped));
        Ok(Self { inner, _stop: stop })
    }

    /// Waits until the connection is up, at most `timeout`; `true` if it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.inner.ready.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// How often the downstream connected successfully so far (1 = never
    /// reconnected); for metrics and tests.
    pub fn connects(&self) -> u64 {
        self.inner
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Name of this instance's exclusive command queue.
    pub fn command_queue(&self) -> &str {
        &self.inner.command_queue
    }
}

impl Inner {
    fn live(&self) -> Result<Arc<Live>, DownstreamError> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DownstreamError::Unavailable("not connected to the AMQP broker".into()))
    }

    /// A broker call failed on a connection we believed live.
    fn fail(&self, live: &Live, what: &str, error: &lapin::Error) -> DownstreamError {
        tracing::warn!(%error, "AMQP {what} failed; reconnecting");
        live.broken.notify_one();
        DownstreamError::Unavailable(format!("AMQP {what} failed: {error}"))
    }

    async fn publish(
        &self,
        exchange: ShortString,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        wait_for_confirm: bool,
    ) -> Result<(), DownstreamError> {
        let live = self.live()?;
        let routing_key = short(routing_key, "routing key")?;
        let confirm = live
            .publish
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(|e| self.fail(&live, "publish", &e))?;
        let timeout = self.config.confirm_timeout;
        if !wait_for_confirm {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, confirm).await;
            });
            return Ok(());
        }
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(DownstreamError::Unavailable(format!(
                "broker did not confirm within {timeout:?}"
            ))),
            Ok(Err(e)) => Err(self.fail(&live, "publisher confirm", &e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(DownstreamError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(DownstreamError::Unavailable(
                "broker refused the message (nack)".into(),
            )),
        }
    }

    async fn ensure_event_queue(&self, tenant_id: &str) -> Result<(), DownstreamError> {
        if !self.config.declare_event_queues {
            return Ok(());
        }
        let live = self.live()?;
        if live
            .event_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant_id)
        {
            return Ok(());
        }
        let queue = short(self.config.event_queue(tenant_id), "event queue name")?;
        let exchange = short(self.config.exchange("event"), "exchange")?;
        let key = short(tenant_id, "tenant id")?;
        let declared = tokio::time::timeout(
            self.config.confirm_timeout,
            declare_event_queue(&live.connection, queue, exchange, key),
        )
        .await;
        match declared {
            Ok(Ok(())) => {}
            Ok(Err(e)) if live.connection.status().connected() => {
                // A channel-level refusal (e.g. permissions): report it, but
                // the connection itself is fine.
                return Err(DownstreamError::Unavailable(format!(
                    "cannot declare event queue: {e}"
                )));
            }
            Ok(Err(e)) => return Err(self.fail(&live, "event queue declare", &e)),
            Err(_) => {
                return Err(DownstreamError::Unavailable(
                    "event queue declaration timed out".into(),
                ));
            }
        }
        live.event_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant_id.to_owned());
        Ok(())
    }

    async fn send(
        &self,
        kind: EndpointKind,
        message: DownstreamMessage,
        qos: Qos,
    ) -> Result<(), DownstreamError> {
        let (exchange, delivery_mode) = match kind {
            EndpointKind::Telemetry => (self.telemetry_exchange.clone(), 1),
            EndpointKind::Event => {
                self.ensure_event_queue(&message.tenant_id).await?;
                (self.event_exchange.clone(), 2)
            }
        };
        let properties = message_properties(&message, qos, delivery_mode)?;
        self.publish(
            exchange,
            &message.tenant_id,
            &message.payload,
            properties,
            qos == Qos::AtLeastOnce,
        )
        .await
    }

    async fn send_response(&self, response: CommandResponse) -> Result<(), DownstreamError> {
        let mut headers = FieldTable::default();
        headers.insert(
            "status".into(),
            AMQPValue::LongInt(i32::from(response.status)),
        );
        headers.insert("tenant_id".into(), long(&response.tenant_id));
        headers.insert("device_id".into(), long(&response.device_id));
        headers.insert(
            "creation-time".into(),
            AMQPValue::LongLongInt(epoch_millis(response.creation_time)),
        );
        let mut properties = BasicProperties::default()
            .with_correlation_id(short(&response.correlation_id, "correlation id")?)
            .with_timestamp(epoch_secs(response.creation_time))
            .with_headers(headers);
        if let Some(ct) = &response.content_type {
            properties = properties.with_content_type(short(ct, "content type")?);
        }
        self.publish(
            short(self.config.exchange("command_response"), "exchange")?,
            &response.reply_to,
            &response.payload,
            properties,
            true,
        )
        .await
    }

    /// Binds or unbinds a device's routing key on this instance's command
    /// queue. The caller holds `binding`.
    async fn bind_command(&self, routing_key: &str, bind: bool) -> Result<(), DownstreamError> {
        let live = self.live()?;
        let queue = short(&self.command_queue, "queue")?;
        let exchange = short(self.config.exchange("command"), "exchange")?;
        let key = short(routing_key, "routing key")?;
        let call = async {
            if bind {
                live.control
                    .queue_bind(
                        queue,
                        exchange,
                        key,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            } else {
                live.control
                    .queue_unbind(queue, exchange, key, FieldTable::default())
                    .await
            }
        };
        let what = if bind {
            "command bind"
        } else {
            "command unbind"
        };
        match tokio::time::timeout(self.config.confirm_timeout, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(&live, what, &e)),
            Err(_) => {
                live.broken.notify_one();
                Err(DownstreamError::Unavailable(format!(
                    "AMQP {what} timed out"
                )))
            }
        }
    }

    /// Answers a command that cannot be delivered with `status`, if it
    /// expects a response. Runs in its own task: the caller does not wait.
    fn reject_in_background(self: &Arc<Self>, command: Command, status: u16) {
        let Some(response) = CommandResponse::rejecting(&command, status, SystemTime::now()) else {
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(error) = inner.send_response(response).await {
                tracing::debug!(%error, device = %command.device_id, "rejection of a command not delivered");
            }
        });
    }

    /// A delivery from the command queue.
    fn on_command(self: &Arc<Self>, delivery: Delivery) {
        match parse_command(&delivery) {
            ParsedCommand::Valid(command) => {
                if let crate::downstream::Delivery::Refused(command) = self.router.deliver(command)
                {
                    tracing::debug!(device = %command.device_id, "command for a device that is not waiting (or already has one)");
                    self.reject_in_background(command, 503);
                }
            }
            ParsedCommand::Malformed(command, reason) => {
                tracing::warn!(routing_key = %delivery.routing_key, reason, "malformed command");
                if let Some(command) = command {
                    self.reject_in_background(command, 400);
                }
            }
        }
    }
}

/// Declares a tenant's durable event queue (unless it exists, possibly
/// declared by an application with other arguments) and binds it. Uses
/// throw-away channels because a refused passive declaration closes its
/// channel.
async fn declare_event_queue(
    connection: &Connection,
    queue: ShortString,
    exchange: ShortString,
    tenant_id: ShortString,
) -> Result<(), lapin::Error> {
    // Both channels are opened up front: lapin may hand out the id of a
    // channel that is still closing after a refused passive declaration.
    let probe = connection.create_channel().await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = probe
        .queue_declare(queue.clone(), passive, FieldTable::default())
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "event queue exists".into()).await;
    } else {
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_bind(
            queue,
            exchange,
            tenant_id,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "event queue declared".into()).await;
    Ok(())
}

/// A command delivery, read.
enum ParsedCommand {
    Valid(Command),
    /// What could be read (to answer the application with 400) and why it
    /// is not a valid command.
    Malformed(Option<Command>, &'static str),
}

/// Reads a command delivery.
fn parse_command(delivery: &Delivery) -> ParsedCommand {
    let props = &delivery.properties;
    let Some((tenant_id, device_id)) = delivery.routing_key.as_str().split_once('/') else {
        return ParsedCommand::Malformed(None, "routing key is not {tenant}/{device}");
    };
    let header = |name: &str| -> Option<String> {
        match props.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    };
    let name = header("subject").or_else(|| props.kind().as_ref().map(|k| k.as_str().to_owned()));
    let reply_to = props.reply_to().as_ref().map(|s| s.as_str().to_owned());
    // As Hono does for AMQP 1.0: without a correlation id the message id
    // correlates the response.
    let correlation_id = props
        .correlation_id()
        .as_ref()
        .or(props.message_id().as_ref())
        .map(|s| s.as_str().to_owned());
    let command = Command {
        tenant_id: tenant_id.to_owned(),
        device_id: device_id.to_owned(),
        name: name.clone().unwrap_or_default(),
        correlation_id,
        reply_to,
        content_type: props.content_type().as_ref().map(|s| s.as_str().to_owned()),
        payload: delivery.data.clone().into(),
    };
    if name.as_deref().is_none_or(str::is_empty) {
        return ParsedCommand::Malformed(
            Some(command),
            "no command name (header subject or property type)",
        );
    }
    if command.reply_to.is_some() {
        if command.correlation_id.is_none() {
            return ParsedCommand::Malformed(
                Some(command),
                "request-response command without correlation id",
            );
        }
        if let Some(Err(_)) = command.request_id() {
            return ParsedCommand::Malformed(
                Some(command),
                "correlation id and reply-to too long for a request id",
            );
        }
    }
    ParsedCommand::Valid(command)
}

fn message_properties(
    message: &DownstreamMessage,
    qos: Qos,
    delivery_mode: u8,
) -> Result<BasicProperties, DownstreamError> {
    let mut headers = FieldTable::default();
    headers.insert("device_id".into(), long(&message.device_id));
    headers.insert("tenant_id".into(), long(&message.tenant_id));
    headers.insert("orig_adapter".into(), long(ORIG_ADAPTER));
    headers.insert("orig_address".into(), long(&message.orig_address));
    headers.insert("qos".into(), AMQPValue::LongInt(i32::from(qos.level())));
    headers.insert(
        "creation-time".into(),
        AMQPValue::LongLongInt(epoch_millis(message.creation_time)),
    );
    if let Some(ttd) = message.ttd {
        headers.insert("ttd".into(), AMQPValue::LongLongInt(i64::from(ttd)));
    }
    if let Some(gateway) = &message.gateway_id {
        headers.insert("gateway_id".into(), long(gateway));
    }
    for (name, value) in &message.defaults {
        // As Hono: content-type and ttl have their own properties.
        if name == "content-type" || name == "ttl" || headers.inner().contains_key(name.as_str()) {
            continue;
        }
        let Ok(key) = ShortString::try_new(name.as_str()) else {
            continue;
        };
        headers.insert(key, json_to_amqp(value));
    }
    let mut properties = BasicProperties::default()
        .with_content_type(short(&message.content_type, "content type")?)
        .with_timestamp(epoch_secs(message.creation_time))
        .with_message_id(short(message_id(), "message id")?)
        .with_delivery_mode(delivery_mode)
        .with_headers(headers);
    if let Some(ttl) = message.ttl {
        properties = properties.with_expiration(short(ttl.as_millis().to_string(), "expiration")?);
    }
    Ok(properties)
}

fn json_to_amqp(value: &serde_json::Value) -> AMQPValue {
    match value {
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => long(&n.to_string()),
        },
        serde_json::Value::String(s) => long(s),
        other => long(&other.to_string()),
    }
}

/// A random 128-bit message id as 32 lowercase hex digits: one allocation,
/// no `format!` machinery (this runs once per message).
fn message_id() -> String {
    let value = rand::random::<u128>();
    (0..32u32)
        .rev()
        .map(|nibble| {
            // Truncation intended: the value is one hex digit.
            #[allow(clippy::cast_possible_truncation)]
            let digit = ((value >> (nibble * 4)) & 0xf) as u32;
            char::from_digit(digit, 16).unwrap_or('0')
        })
        .collect()
}

/// `value` as a short string; takes an owned `String` without copying it.
fn short(value: impl Into<String>, what: &str) -> Result<ShortString, DownstreamError> {
    ShortString::try_new(value)
        .map_err(|_| DownstreamError::Invalid(format!("{what} longer than 255 bytes")))
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Connects, serves, reconnects — until the downstream is dropped.
async fn supervise(inner: Arc<Inner>, mut stop: watch::Receiver<()>) {
    let mut delay = inner.config.reconnect_min;
    loop {
        let setup = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(inner.config.connect_timeout, connect(&inner)) => r,
        };
        match setup {
            Ok(Ok((live, consumer))) => {
                // Re-bind the devices waiting now and go live under the
                // binding lock, so no (un)subscription slips in between.
                let binding = inner.binding.lock().await;
                let rebound = tokio::time::timeout(
                    inner.config.connect_timeout,
                    rebind_commands(&inner, &live.control),
                )
                .await;
                if !matches!(rebound, Ok(Ok(()))) {
                    drop(binding);
                    tracing::warn!(retry_in = ?delay, "cannot re-bind command routes after connecting");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        live.connection.close(200, "setup failed".into()),
                    )
                    .await;
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(inner.config.reconnect_max);
                    continue;
                }
                delay = inner.config.reconnect_min;
                let connection_events = live.connection.events_listener();
                *inner.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
                drop(binding);
                inner
                    .connects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                inner.ready.send_replace(true);
                tracing::info!(url = %redact(&inner.config.url), "connected to the AMQP broker");
                let stopped = serve(&inner, &live, consumer, connection_events, &mut stop).await;
                *inner.live.lock().unwrap_or_else(|p| p.into_inner()) = None;
                inner.ready.send_replace(false);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    live.connection
                        .close(200, "adapter reconnecting or stopping".into()),
                )
                .await;
                if stopped {
                    return;
                }
                tracing::warn!("lost the AMQP broker connection; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot connect to the AMQP broker");
            }
            Err(_) => {
                tracing::warn!(retry_in = ?delay, "connecting to the AMQP broker timed out");
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(inner.config.reconnect_max);
    }
}

/// Handles commands until the connection breaks (`false`) or the downstream
/// is dropped (`true`).
async fn serve(
    inner: &Arc<Inner>,
    live: &Live,
    mut consumer: lapin::Consumer,
    events: impl futures_lite::Stream<Item = lapin::Event> + Send,
    stop: &mut watch::Receiver<()>,
) -> bool {
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            () = live.broken.notified() => return false,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => inner.on_command(delivery),
                Some(Err(error)) => {
                    tracing::warn!(%error, "command consumer failed");
                    return false;
                }
                None => return false,
            },
            event = events.next() => match event {
                // lapin reports channel errors here too (e.g. a refused
                // passive declaration on a throw-away channel); only a
                // broken connection or one of our own channels matters.
                Some(lapin::Event::Error(error)) => {
                    if !(live.connection.status().connected()
                        && live.publish.status().connected()
                        && live.control.status().connected())
                    {
                        tracing::warn!(%error, "AMQP connection error");
                        return false;
                    }
                    tracing::debug!(%error, "AMQP channel error on a throw-away channel");
                }
                Some(_) => {}
                None => return false,
            },
        }
    }
}

/// Binds the routing keys of all current subscriptions to the (new)
/// command queue.
async fn rebind_commands(inner: &Inner, control: &Channel) -> Result<(), lapin::Error> {
    for key in inner.router.routing_keys() {
        let Ok(key) = ShortString::try_new(key) else {
            continue;
        };
        control
            .queue_bind(
                inner.command_queue.clone().into(),
                inner.config.exchange("command").into(),
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Opens the connection and channels, declares the topology and starts the
/// command consumer.
async fn connect(inner: &Inner) -> Result<(Arc<Live>, lapin::Consumer), lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(inner.config.connection_name.clone().into());
    let connection = Connection::connect(&inner.config.url, properties).await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let control = connection.create_channel().await?;
    for name in ["telemetry", "event", "command", "command_response"] {
        control
            .exchange_declare(
                inner.config.exchange(name).into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let queue: ShortString = inner.command_queue.clone().into();
    control
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = control
        .basic_consume(
            queue,
            "hono-coap-commands".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((
        Arc::new(Live {
            connection,
            publish,
            control,
            event_queues: Mutex::new(HashSet::new()),
            broken: Notify::new(),
        }),
        consumer,
    ))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = url.get(scheme_end + 3..at).unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***{}",
                url.get(..scheme_end + 3).unwrap_or_default(),
                url.get(at..).unwrap_or_default()
            )
        }
        _ => url.to_owned(),
    }
}

impl Downstream for AmqpDownstream {
    fn send_telemetry(&self, message: DownstreamMessage, qos: Qos) -> DownstreamFuture<'_, ()> {
        Box::pin(self.inner.send(EndpointKind::Telemetry, message, qos))
    }

    fn send_event(&self, message: DownstreamMessage) -> DownstreamFuture<'_, ()> {
        Box::pin(
            self.inner
                .send(EndpointKind::Event, message, Qos::AtLeastOnce),
        )
    }

    fn send_command_response(&self, response: CommandResponse) -> DownstreamFuture<'_, ()> {
        Box::pin(self.inner.send_response(response))
    }

    fn is_ready(&self) -> bool {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|live| live.connection.status().connected())
    }

    fn subscribe_commands<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> DownstreamFuture<'a, CommandSubscription> {
        Box::pin(async move {
            let _binding = self.inner.binding.lock().await;
            // Route locally first so that a command arriving right after
            // the bind finds the subscription.
            let subscription = self.inner.router.subscribe(tenant_id, device_id);
            let key = command_routing_key(tenant_id, device_id);
            if let Err(error) = self.inner.bind_command(&key, true).await {
                let (t, d, id, _) = subscription.close();
                self.inner.router.unsubscribe(&t, &d, id);
                return Err(error);
            }
            Ok(subscription)
        })
    }

    fn unsubscribe_commands(&self, subscription: CommandSubscription) -> DownstreamFuture<'_, ()> {
        Box::pin(async move {
            let _binding = self.inner.binding.lock().await;
            let (tenant_id, device_id, id, left) = subscription.close();
            let current = self.inner.router.unsubscribe(&tenant_id, &device_id, id);
            for command in left {
                self.inner.reject_in_background(command, 503);
            }
            if current {
                // While down there is nothing to unbind: the exclusive queue
                // is gone and only current subscriptions are re-bound.
                match self
                    .inner
                    .bind_command(&command_routing_key(&tenant_id, &device_id), false)
                    .await
                {
                    Ok(()) | Err(DownstreamError::Unavailable(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            Ok(())
        })
    }

    fn reject_command(&self, command: Command) -> DownstreamFuture<'_, ()> {
        Box::pin(async move {
            match CommandResponse::rejecting(&command, 503, SystemTime::now()) {
                Some(response) => self.inner.send_response(response).await,
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_unusable_config() {
        let err = AmqpDownstream::start(AmqpConfig::new("http://user:pw@host")).unwrap_err();
        assert!(matches!(err, AmqpConfigError::InvalidUrl { .. }));
        assert!(!err.to_string().contains("pw"), "{err}");
        let err = AmqpDownstream::start(
            AmqpConfig::new("amqp://h").with_exchange_prefix("p".repeat(250)),
        )
        .unwrap_err();
        assert_eq!(err, AmqpConfigError::PrefixTooLong);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
    }

    #[test]
    fn properties_carry_hono_headers() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut defaults = serde_json::Map::new();
        defaults.insert("content-type".into(), "application/json".into());
        defaults.insert("device_id".into(), "spoofed".into());
        defaults.insert("importance".into(), 3.into());
        defaults.insert("ttl".into(), 30.into());
        let m = DownstreamMessage::new("t", "d", "text/plain", "x", "/telemetry", at)
            .with_gateway("gw")
            .with_ttd(20)
            .with_ttl(Duration::from_secs(30))
            .with_defaults(defaults);
        let p = message_properties(&m, Qos::AtLeastOnce, 1).unwrap();
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(h.get("device_id"), Some(&long("d")));
        assert_eq!(h.get("gateway_id"), Some(&long("gw")));
        assert_eq!(h.get("qos"), Some(&AMQPValue::LongInt(1)));
        assert_eq!(h.get("ttd"), Some(&AMQPValue::LongLongInt(20)));
        assert_eq!(
            h.get("creation-time"),
            Some(&AMQPValue::LongLongInt(1_700_000_000_123))
        );
        assert_eq!(h.get("importance"), Some(&AMQPValue::LongLongInt(3)));
        assert!(!h.contains_key("content-type"));
        assert!(!h.contains_key("ttl"));
        assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("30000"));
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(*p.delivery_mode(), Some(1));
        let long_ct = DownstreamMessage::new("t", "d", "x".repeat(300), "", "/t", at);
        assert!(matches!(
            message_properties(&long_ct, Qos::AtMostOnce, 1),
            Err(DownstreamError::Invalid(_))
        ));
    }
}
