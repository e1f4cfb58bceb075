//! The AMQP downstream against a real RabbitMQ (`AMQP_URL`), with a plain
//! lapin client playing the application. Each test uses its own exchange
//! prefix and deletes what it declared.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hono_coap::{
    AmqpConfig, AmqpDownstream, CommandResponse, Downstream, DownstreamError, DownstreamMessage,
    Qos, RequestId,
};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use support::{App, SendCommand as _, amqp_url, header_int, header_str, next, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn adapter(prefix: &str) -> AmqpDownstream {
    adapter_with(AmqpConfig::new(amqp_url()).with_exchange_prefix(prefix)).await
}

async fn adapter_with(config: AmqpConfig) -> AmqpDownstream {
    let d = AmqpDownstream::start(config).unwrap();
    assert!(
        d.wait_ready(WAIT).await,
        "adapter did not connect to {}",
        amqp_url()
    );
    assert!(d.is_ready());
    d
}

fn message(tenant: &str, payload: &'static str) -> DownstreamMessage {
    DownstreamMessage::new(
        tenant,
        "4711",
        "application/json",
        payload,
        "/telemetry",
        SystemTime::now(),
    )
}

#[tokio::test]
async fn telemetry_carries_hono_headers_and_properties() {
    let prefix = unique_prefix();
    let downstream = adapter(&prefix).await;
    let mut app = App::connect(&amqp_url(), &prefix).await;
    let mut telemetry = app.consume("telemetry", "DEFAULT_TENANT").await;

    let created = UNIX_EPOCH + Duration::from_millis(1_763_000_000_456);
    let mut defaults = serde_json::Map::new();
    defaults.insert("content-type".into(), "application/json".into());
    defaults.insert("customer".into(), "acme".into());
    let msg = DownstreamMessage::new(
        "DEFAULT_TENANT",
        "4712",
        "application/json",
        "{\"temp\":5}",
        "/t",
        created,
    )
    .with_gateway("gw-1")
    .with_ttd(30)
    .with_ttl(Duration::from_secs(60))
    .with_defaults(defaults);
    downstream
        .send_telemetry(msg, Qos::AtLeastOnce)
        .await
        .unwrap();

    let d = next(&mut telemetry, WAIT)
        .await
        .expect("telemetry not delivered");
    assert_eq!(d.data, b"{\"temp\":5}");
    assert_eq!(d.exchange.as_str(), format!("{prefix}.telemetry"));
    assert_eq!(d.routing_key.as_str(), "DEFAULT_TENANT");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*p.delivery_mode(), Some(1));
    assert_eq!(*p.timestamp(), Some(1_763_000_000));
    assert_eq!(p.expiration().as_ref().unwrap().as_str(), "60000");
    assert_eq!(p.message_id().as_ref().unwrap().as_str().len(), 32);
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4712"));
    assert_eq!(
        header_str(&d, "tenant_id").as_deref(),
        Some("DEFAULT_TENANT")
    );
    assert_eq!(header_str(&d, "orig_adapter").as_deref(), Some("hono-coap"));
    assert_eq!(header_str(&d, "orig_address").as_deref(), Some("/t"));
    assert_eq!(header_str(&d, "gateway_id").as_deref(), Some("gw-1"));
    assert_eq!(header_str(&d, "customer").as_deref(), Some("acme"));
    assert_eq!(header_int(&d, "qos"), Some(1));
    assert_eq!(header_int(&d, "ttd"), Some(30));
    assert_eq!(header_int(&d, "creation-time"), Some(1_763_000_000_456));

    // QoS 0 is delivered too, without waiting; without ttd/gateway/ttl.
    downstream
        .send_telemetry(message("DEFAULT_TENANT", "q0"), Qos::AtMostOnce)
        .await
        .unwrap();
    let d = next(&mut telemetry, WAIT)
        .await
        .expect("QoS 0 telemetry not delivered");
    assert_eq!(d.data, b"q0");
    assert_eq!(header_int(&d, "qos"), Some(0));
    assert_eq!(header_str(&d, "ttd"), None);
    assert_eq!(header_str(&d, "gateway_id"), None);
    assert!(d.properties.expiration().is_none());

    // Another tenant's telemetry is not delivered to this consumer.
    let _ = downstream
        .send_telemetry(message("OTHER", "x"), Qos::AtMostOnce)
        .await;
    assert!(next(&mut telemetry, QUIET).await.is_none());

    drop(downstream);
    app.cleanup(&[]).await;
    support::assert_exchanges_deleted(&amqp_url(), &prefix).await;
}

#[tokio::test]
async fn telemetry_without_consumer_is_unroutable() {
    let prefix = unique_prefix();
    let downstream = adapter(&prefix).await;
    let app = App::connect(&amqp_url(), &prefix).await;

    let started = std::time::Instant::now();
    let err = downstream
        .send_telemetry(message("NOBODY", "x"), Qos::AtLeastOnce)
        .await
        .unwrap_err();
    assert!(matches!(err, DownstreamError::Unroutable), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the return came from the broker, not a timeout"
    );
    // QoS 0 does not learn about it.
    downstream
        .send_telemetry(message("NOBODY", "x"), Qos::AtMostOnce)
        .await
        .unwrap();
    // The connection is still fine afterwards.
    assert!(downstream.is_ready());

    drop(downstream);
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn events_wait_in_the_durable_tenant_queue() {
    let prefix = unique_prefix();
    let downstream = adapter(&prefix).await;
    let app = App::connect(&amqp_url(), &prefix).await;
    let tenant = "EVENT_TENANT";

    // No application connected: the events are stored.
    for i in 0..3 {
        let msg = DownstreamMessage::new(
            tenant,
            "4711",
            "text/plain",
            format!("e{i}"),
            "/event",
            SystemTime::now(),
        );
        downstream.send_event(msg).await.unwrap();
    }
    let queue = downstream.config().event_queue(tenant);
    assert_eq!(queue, format!("{prefix}.event.{tenant}"));
    // The application attaches later and gets all of them, persistent.
    let mut events = app.consume_queue(&queue).await;
    for i in 0..3 {
        let d = next(&mut events, WAIT)
            .await
            .expect("stored event not delivered");
        assert_eq!(d.data, format!("e{i}").as_bytes());
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert_eq!(header_int(&d, "qos"), Some(1));
        assert_eq!(d.routing_key.as_str(), tenant);
    }
    drop(events);

    // A queue an application declared itself (with other arguments) is
    // used as it is.
    let pre = "PREDECLARED";
    let pre_queue = downstream.config().event_queue(pre);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(100));
    app.channel
        .queue_declare(
            pre_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await
        .unwrap();
    downstream.send_event(message(pre, "to-pre")).await.unwrap();
    let mut pre_events = app.consume_queue(&pre_queue).await;
    assert_eq!(next(&mut pre_events, WAIT).await.unwrap().data, b"to-pre");
    // None of this cost the adapter its connection.
    assert_eq!(downstream.connects(), 1);
    assert!(downstream.is_ready());

    // With event queues switched off and no consumer, events are unroutable.
    let other_prefix = unique_prefix();
    let no_queues = adapter_with(
        AmqpConfig::new(amqp_url())
            .with_exchange_prefix(&other_prefix)
            .with_event_queues(false),
    )
    .await;
    let err = no_queues
        .send_event(message(tenant, "lost"))
        .await
        .unwrap_err();
    assert!(matches!(err, DownstreamError::Unroutable), "{err:?}");

    drop(downstream);
    drop(no_queues);
    app.cleanup(&[queue, pre_queue]).await;
    App::connect(&amqp_url(), &other_prefix)
        .await
        .cleanup(&[])
        .await;
}

#[tokio::test]
async fn commands_reach_the_instance_that_bound_the_device() {
    let prefix = unique_prefix();
    let instance_a = adapter(&prefix).await;
    let instance_b = adapter(&prefix).await;
    assert_ne!(instance_a.command_queue(), instance_b.command_queue());
    let app = App::connect(&amqp_url(), &prefix).await;

    // Nobody waits: the application's mandatory publish comes back.
    assert!(
        !app.send_command("T", "4711", "setVolume", Some("c0"), Some("app"), b"{}")
            .await
    );

    let mut on_a = instance_a.subscribe_commands("T", "4711").await.unwrap();
    let mut on_b = instance_b.subscribe_commands("T", "4712").await.unwrap();
    assert!(
        app.send_command(
            "T",
            "4711",
            "setVolume",
            Some("c1"),
            Some("app-1"),
            b"{\"v\":3}"
        )
        .await
    );
    let cmd = tokio::time::timeout(WAIT, on_a.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cmd.tenant_id.as_str(), cmd.device_id.as_str()),
        ("T", "4711")
    );
    assert_eq!(cmd.name, "setVolume");
    assert_eq!(cmd.correlation_id.as_deref(), Some("c1"));
    assert_eq!(cmd.reply_to.as_deref(), Some("app-1"));
    assert_eq!(cmd.content_type.as_deref(), Some("application/json"));
    assert_eq!(&cmd.payload[..], b"{\"v\":3}");
    let rid = RequestId::decode(&cmd.request_id().unwrap().unwrap()).unwrap();
    assert_eq!(
        (rid.correlation_id.as_str(), rid.reply_to.as_str()),
        ("c1", "app-1")
    );
    // Instance B holds another device and sees nothing of it.
    assert!(tokio::time::timeout(QUIET, on_b.recv()).await.is_err());

    // One-way command to the device on B.
    assert!(
        app.send_command("T", "4712", "reboot", None, None, b"")
            .await
    );
    let cmd = tokio::time::timeout(WAIT, on_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(cmd.is_one_way() && cmd.request_id().is_none());
    assert_eq!(cmd.name, "reboot");

    // After unbinding, commands for the device are unroutable again.
    instance_a.unsubscribe_commands(on_a).await.unwrap();
    instance_b.unsubscribe_commands(on_b).await.unwrap();
    assert!(
        !app.send_command("T", "4711", "setVolume", Some("c2"), Some("app-1"), b"")
            .await
    );
    assert!(
        !app.send_command("T", "4712", "reboot", None, None, b"")
            .await
    );

    // Dropping an instance closes its connection: its exclusive command
    // queue disappears.
    let queue_a = instance_a.command_queue().to_owned();
    assert!(support::queue_exists(&app.connection, &queue_a).await);
    drop(instance_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while support::queue_exists(&app.connection, &queue_a).await {
        assert!(
            std::time::Instant::now() < deadline,
            "command queue of a dropped instance is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(instance_b);
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn command_responses_are_routed_by_reply_to() {
    let prefix = unique_prefix();
    let downstream = adapter(&prefix).await;
    let mut app = App::connect(&amqp_url(), &prefix).await;
    let mut responses = app.consume("command_response", "app-7").await;

    let rid = RequestId {
        correlation_id: "corr-9".into(),
        reply_to: "app-7".into(),
    };
    let rid = RequestId::decode(&rid.encode().unwrap()).unwrap();
    let created = UNIX_EPOCH + Duration::from_millis(1_763_000_000_999);
    let response = CommandResponse::new("T", "4711", rid, 200, "{\"ok\":true}", created)
        .with_content_type("application/json");
    downstream.send_command_response(response).await.unwrap();
    let d = next(&mut responses, WAIT)
        .await
        .expect("response not delivered");
    assert_eq!(d.routing_key.as_str(), "app-7");
    assert_eq!(d.data, b"{\"ok\":true}");
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "corr-9"
    );
    assert_eq!(
        d.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(header_int(&d, "status"), Some(200));
    assert_eq!(header_str(&d, "tenant_id").as_deref(), Some("T"));
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4711"));
    assert_eq!(header_int(&d, "creation-time"), Some(1_763_000_000_999));

    // No application waits on this reply_to.
    let orphan = CommandResponse::new(
        "T",
        "4711",
        RequestId {
            correlation_id: "c".into(),
            reply_to: "gone".into(),
        },
        200,
        "",
        SystemTime::now(),
    );
    let err = downstream.send_command_response(orphan).await.unwrap_err();
    assert!(matches!(err, DownstreamError::Unroutable), "{err:?}");

    drop(downstream);
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn late_commands_are_rejected_with_503() {
    let prefix = unique_prefix();
    let downstream = adapter(&prefix).await;
    let mut app = App::connect(&amqp_url(), &prefix).await;
    let mut responses = app.consume("command_response", "app-late").await;

    // A second command while the first was not taken yet: 503 at once.
    let mut sub = downstream.subscribe_commands("T", "4711").await.unwrap();
    assert!(
        app.send_command("T", "4711", "first", Some("c1"), Some("app-late"), b"")
            .await
    );
    assert!(
        app.send_command("T", "4711", "second", Some("c2"), Some("app-late"), b"")
            .await
    );
    let d = next(&mut responses, WAIT)
        .await
        .expect("no 503 for the second command");
    assert_eq!(header_int(&d, "status"), Some(503));
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "c2"
    );
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4711"));
    let first = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.name, "first");

    // The device stopped waiting (TTD over) before taking a command that
    // already arrived: unsubscribing rejects it.
    assert!(
        app.send_command("T", "4711", "third", Some("c3"), Some("app-late"), b"")
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    downstream.unsubscribe_commands(sub).await.unwrap();
    let d = next(&mut responses, WAIT)
        .await
        .expect("no 503 for the untaken command");
    assert_eq!(header_int(&d, "status"), Some(503));
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "c3"
    );

    // The CoAP layer hands back a command it could not deliver.
    downstream.reject_command(first).await.unwrap();
    let d = next(&mut responses, WAIT)
        .await
        .expect("no 503 for the rejected command");
    assert_eq!(header_int(&d, "status"), Some(503));
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "c1"
    );

    // A command without a name is answered with 400.
    let sub = downstream.subscribe_commands("T", "4711").await.unwrap();
    assert!(
        app.send_command("T", "4711", "", Some("c4"), Some("app-late"), b"")
            .await
    );
    let d = next(&mut responses, WAIT)
        .await
        .expect("no 400 for a nameless command");
    assert_eq!(header_int(&d, "status"), Some(400));
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "c4"
    );
    downstream.unsubscribe_commands(sub).await.unwrap();
    assert!(next(&mut responses, QUIET).await.is_none());

    drop(downstream);
    app.cleanup(&[]).await;
}
