//! Helpers shared by the RabbitMQ tests: the broker URL, unique exchange
//! prefixes, an application-side lapin client and clean-up.
#![allow(dead_code)]

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
#[allow(unused_imports, reason = "not every test file uses every helper")]
pub(crate) use test_support::amqp::{amqp_url, header_int, header_str, next};

/// A unique exchange prefix, so tests do not see each other's messages.
pub(crate) fn unique_prefix() -> String {
    test_support::amqp::unique_prefix("test")
}

pub(crate) use test_support::amqp::App;

/// Commands as this crate's tests send them.
pub(crate) trait SendCommand {
    /// Publishes a JSON command as an application does (mandatory);
    /// returns `true` if it was routed, `false` if the broker returned it.
    async fn send_command(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        correlation_id: Option<&str>,
        reply_to: Option<&str>,
        payload: &[u8],
    ) -> bool;
}

impl SendCommand for App {
    async fn send_command(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        correlation_id: Option<&str>,
        reply_to: Option<&str>,
        payload: &[u8],
    ) -> bool {
        self.publish_command(&test_support::amqp::Command {
            tenant,
            device,
            name,
            content_type: Some("application/json"),
            correlation_id,
            reply_to,
            payload,
        })
        .await
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
