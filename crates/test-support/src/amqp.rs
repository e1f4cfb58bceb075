//! The RabbitMQ under test and the application side of it.

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// The broker under test: `AMQP_URL`; fails loudly when it is not set.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "AMQP_URL is not set: these tests need RabbitMQ; run them with scripts/test.sh \
             (which starts one), or export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
        )
    })
}

/// A unique exchange prefix `{tag}-{48 random bits in hex}`, so tests do
/// not see each other's messages.
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A command as an application publishes it to `{prefix}.command` with
/// routing key `{tenant}/{device}`.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// The tenant of the device.
    pub tenant: &'a str,
    /// The device.
    pub device: &'a str,
    /// The command name (the `subject` header).
    pub name: &'a str,
    /// The content type property, if any.
    pub content_type: Option<&'a str>,
    /// The correlation id property, if any.
    pub correlation_id: Option<&'a str>,
    /// The reply-to property, if any.
    pub reply_to: Option<&'a str>,
    /// The body.
    pub payload: &'a [u8],
}

/// The application side: a plain lapin connection with publisher confirms,
/// working on the exchanges of one prefix.
pub struct App {
    /// The connection.
    pub connection: Connection,
    /// A channel in confirm mode.
    pub channel: Channel,
    /// The exchange prefix.
    pub prefix: String,
    /// Queues this app bound, deleted by [`cleanup`](Self::cleanup).
    queues: Vec<String>,
}

impl App {
    /// Connects to `url` for the exchanges of `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("test client cannot connect to RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            connection,
            channel,
            prefix: prefix.to_owned(),
            queues: Vec::new(),
        }
    }

    /// An exclusive server-named queue bound to `{prefix}.{exchange}` with
    /// `key`, consumed (auto-ack).
    pub async fn consume(&mut self, exchange: &str, key: &str) -> lapin::Consumer {
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let name = queue.name().as_str().to_owned();
        self.bind(&name, exchange, key).await;
        self.consume_queue(&name).await
    }

    /// Declares the durable event queue the adapter uses for `tenant`
    /// (`{prefix}.event.{tenant}`), bound, and consumes it.
    pub async fn consume_events(&mut self, tenant: &str) -> lapin::Consumer {
        let name = format!("{}.event.{tenant}", self.prefix);
        self.channel
            .queue_declare(
                name.clone().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.bind(&name, "event", tenant).await;
        self.consume_queue(&name).await
    }

    async fn bind(&mut self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                format!("{}.{exchange}", self.prefix).into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.queues.push(queue.to_owned());
    }

    /// Consumes an existing queue (auto-ack).
    pub async fn consume_queue(&self, queue: &str) -> lapin::Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                format!("test-{:x}", rand::random::<u32>()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Publishes a command (mandatory); `true` if it was routed, `false` if
    /// the broker returned it.
    pub async fn publish_command(&self, command: &Command<'_>) -> bool {
        let mut headers = FieldTable::default();
        headers.insert(
            "subject".into(),
            AMQPValue::LongString(LongString::from(command.name.as_bytes().to_vec())),
        );
        let mut props = BasicProperties::default().with_headers(headers);
        if let Some(ct) = command.content_type {
            props = props.with_content_type(ct.into());
        }
        if let Some(c) = command.correlation_id {
            props = props.with_correlation_id(c.into());
        }
        if let Some(r) = command.reply_to {
            props = props.with_reply_to(r.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                format!("{}.command", self.prefix).into(),
                format!("{}/{}", command.tenant, command.device).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                command.payload,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        match confirm {
            Confirmation::Ack(None) => true,
            Confirmation::Ack(Some(_)) => false,
            other => panic!("unexpected confirmation {other:?}"),
        }
    }

    /// Deletes the queues this app bound, `extra_queues`, and the prefix's
    /// exchanges, and closes the connection.
    pub async fn cleanup(&self, extra_queues: &[String]) {
        for q in self.queues.iter().chain(extra_queues) {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in ["telemetry", "event", "command", "command_response"] {
            let _ = self
                .channel
                .exchange_delete(
                    format!("{}.{e}", self.prefix).into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// The next delivery within `timeout`, or `None`; fails if the consumer
/// ended.
pub async fn next(consumer: &mut lapin::Consumer, timeout: Duration) -> Option<Delivery> {
    match tokio::time::timeout(timeout, consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(other) => panic!("consumer ended: {other:?}"),
        Err(_) => None,
    }
}

/// A header of a delivery as a string (long or short string; anything else
/// in its debug form).
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A header of a delivery as an integer.
pub fn header_int(d: &Delivery, name: &str) -> Option<i64> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        _ => None,
    }
}
