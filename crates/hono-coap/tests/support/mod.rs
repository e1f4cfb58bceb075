//! Helpers shared by the RabbitMQ tests: the broker URL, unique exchange
//! prefixes, an application-side lapin client and clean-up.
#![allow(dead_code)]

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// The broker under test.
pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "AMQP_URL is not set: these tests need RabbitMQ; run them with scripts/test.sh \
             (which starts one), or export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
        )
    })
}

/// A unique exchange prefix, so tests do not see each other's messages.
pub(crate) fn unique_prefix() -> String {
    format!("test-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The application side: a plain lapin connection.
pub(crate) struct App {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) prefix: String,
    queues: Vec<String>,
}

impl App {
    pub(crate) async fn connect(url: &str, prefix: &str) -> Self {
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

    /// Declares a server-named exclusive queue bound to `{prefix}.{exchange}`
    /// with `key` and consumes it.
    pub(crate) async fn consume(&mut self, exchange: &str, key: &str) -> lapin::Consumer {
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
        self.channel
            .queue_bind(
                name.clone().into(),
                format!("{}.{exchange}", self.prefix).into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.queues.push(name.clone());
        self.consume_queue(&name).await
    }

    /// Consumes an existing queue (auto-ack).
    pub(crate) async fn consume_queue(&self, queue: &str) -> lapin::Consumer {
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

    /// Publishes a command as an application does (mandatory); returns
    /// `true` if it was routed, `false` if the broker returned it.
    pub(crate) async fn send_command(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        correlation_id: Option<&str>,
        reply_to: Option<&str>,
        payload: &[u8],
    ) -> bool {
        let mut headers = FieldTable::default();
        headers.insert(
            "subject".into(),
            AMQPValue::LongString(LongString::from(name.as_bytes().to_vec())),
        );
        let mut props = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into());
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(c.into());
        }
        if let Some(r) = reply_to {
            props = props.with_reply_to(r.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                format!("{}.command", self.prefix).into(),
                format!("{tenant}/{device}").into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
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

    /// Deletes the prefix's exchanges and the given queues.
    pub(crate) async fn cleanup(&self, extra_queues: &[String]) {
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

/// Fails unless the prefix's exchanges are gone (checked with passive
/// declarations, each on a fresh channel since a failed one closes it).
pub(crate) async fn assert_exchanges_deleted(url: &str, prefix: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    for e in ["telemetry", "event", "command", "command_response"] {
        let channel = connection.create_channel().await.unwrap();
        let found = channel
            .exchange_declare(
                format!("{prefix}.{e}").into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(found.is_err(), "exchange {prefix}.{e} was left behind");
    }
    let _ = connection.close(200, "checked".into()).await;
}

/// Whether a queue exists (passive declaration on a fresh channel; an
/// exclusive queue of another connection answers RESOURCE_LOCKED).
pub(crate) async fn queue_exists(connection: &Connection, name: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            true
        }
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => false,
                AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => true,
                other => panic!("unexpected answer to a passive declare: {other:?}"),
            },
            other => panic!("unexpected error: {other:?}"),
        },
    }
}

/// The next delivery within `timeout`, or `None`.
pub(crate) async fn next(consumer: &mut lapin::Consumer, timeout: Duration) -> Option<Delivery> {
    match tokio::time::timeout(timeout, consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(other) => panic!("consumer ended: {other:?}"),
        Err(_) => None,
    }
}

/// A header of a delivery as a string (long or short string).
pub(crate) fn header_str(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A header of a delivery as an integer.
pub(crate) fn header_int(d: &Delivery, name: &str) -> Option<i64> {
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
