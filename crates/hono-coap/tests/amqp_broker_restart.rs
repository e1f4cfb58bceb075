//! The AMQP downstream across a broker restart, on a private RabbitMQ node
//! (never the shared one): sends fail with `Unavailable` while it is down,
//! the adapter reconnects on its own, re-declares its topology and command
//! bindings, and no confirmed event is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::time::{Duration, Instant, SystemTime};

use hono_coap::{AmqpConfig, AmqpDownstream, Downstream, DownstreamError, DownstreamMessage, Qos};
use support::{App, SendCommand as _, next, unique_prefix};
use test_support::rabbit::PrivateRabbit;

fn event(tenant: &str, payload: String) -> DownstreamMessage {
    DownstreamMessage::new(
        tenant,
        "4711",
        "text/plain",
        payload,
        "/event",
        SystemTime::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_without_losing_confirmed_events() {
    let rabbit = PrivateRabbit::new("hono-rabbit-", "honotest");
    rabbit.start();
    let prefix = unique_prefix();
    let tenant = "RESTART_TENANT";
    let downstream = AmqpDownstream::start(
        AmqpConfig::new(rabbit.url())
            .with_exchange_prefix(&prefix)
            .with_confirm_timeout(Duration::from_secs(2))
            .with_reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .unwrap();
    assert!(downstream.wait_ready(Duration::from_secs(10)).await);
    let mut sub = downstream.subscribe_commands(tenant, "4711").await.unwrap();

    let mut confirmed = Vec::new();
    for i in 0..20 {
        downstream
            .send_event(event(tenant, format!("before-{i}")))
            .await
            .unwrap();
        confirmed.push(format!("before-{i}"));
    }

    // Broker down: sends fail fast with Unavailable, readiness goes down.
    tokio::task::block_in_place(|| rabbit.stop());
    let started = Instant::now();
    while downstream.is_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "adapter still ready with the broker down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attempt in 0..3 {
        let t = Instant::now();
        let err = downstream
            .send_event(event(tenant, format!("during-{attempt}")))
            .await
            .unwrap_err();
        assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
        let err = downstream
            .send_telemetry(event(tenant, "t".into()), Qos::AtLeastOnce)
            .await
            .unwrap_err();
        assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a send waited for a down broker"
        );
    }
    assert!(
        downstream
            .subscribe_commands(tenant, "other")
            .await
            .is_err()
    );

    // Broker back (same node, same data): the adapter reconnects by itself.
    tokio::task::block_in_place(|| rabbit.start());
    assert!(
        downstream.wait_ready(Duration::from_secs(20)).await,
        "adapter did not reconnect after the broker restart"
    );
    assert_eq!(downstream.connects(), 2);
    for i in 0..5 {
        downstream
            .send_event(event(tenant, format!("after-{i}")))
            .await
            .unwrap();
        confirmed.push(format!("after-{i}"));
    }

    let mut app = App::connect(&rabbit.url(), &prefix).await;
    // Every confirmed event is in the durable queue, in order; none of the
    // refused ones is.
    let mut events = app.consume_queue(&format!("{prefix}.event.{tenant}")).await;
    let mut got = Vec::new();
    while let Some(d) = next(&mut events, Duration::from_millis(500)).await {
        got.push(String::from_utf8(d.data).unwrap());
    }
    assert_eq!(got, confirmed);

    // Topology re-declared: telemetry exchange routes again.
    let mut telemetry = app.consume("telemetry", tenant).await;
    downstream
        .send_telemetry(event(tenant, "t-after".into()), Qos::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        next(&mut telemetry, Duration::from_secs(5))
            .await
            .unwrap()
            .data,
        b"t-after"
    );

    // The waiting device's command binding was re-established.
    assert!(
        app.send_command(tenant, "4711", "ping", Some("c1"), Some("app"), b"")
            .await
    );
    let cmd = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.name, "ping");

    // A broker that stops confirming (memory alarm: publishers blocked):
    // a confirmed send gives up after the confirm timeout.
    tokio::task::block_in_place(|| rabbit.ctl(&["set_vm_memory_high_watermark", "0"]));
    let t = Instant::now();
    let err = downstream
        .send_telemetry(event(tenant, "blocked".into()), Qos::AtLeastOnce)
        .await
        .unwrap_err();
    assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "waited {waited:?} for a blocked broker"
    );
    tokio::task::block_in_place(|| rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    downstream
        .send_telemetry(event(tenant, "unblocked".into()), Qos::AtLeastOnce)
        .await
        .unwrap();
    // The refused message may still arrive (at least once is not at most
    // once); the confirmed one must.
    let mut seen = Vec::new();
    while let Some(d) = next(&mut telemetry, Duration::from_millis(500)).await {
        seen.push(String::from_utf8(d.data).unwrap());
    }
    assert!(seen.contains(&"unblocked".to_owned()), "{seen:?}");

    drop(downstream);
    app.cleanup(&[format!("{prefix}.event.{tenant}")]).await;
    tokio::task::block_in_place(|| rabbit.stop());
}
