//! Brokers killed with `kill -9` under sustained concurrent CON load, on
//! private instances of this test: mosquitto under the EMQX-mode gateway,
//! RabbitMQ under the Hono-mode adapter. While the broker is down the
//! gateways answer 5.03; after the restart they recover within seconds; no
//! message they acknowledged with 2.04 is lost (duplicates are counted).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, MessageType};
use fault_injection_tests::hono_registry::registry_file;
use fault_injection_tests::{
    GatewayProcess, Load, MakeRequest, MqttWitness, PrivateMosquitto, PrivateRabbit, Tally,
    drain_queue, unique,
};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_kill9_under_load_loses_no_acknowledged_publish() {
    let mut mosquitto = tokio::task::block_in_place(PrivateMosquitto::start);
    let url = mosquitto.url();
    let mut gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &[
            "--udp",
            "127.0.0.1:0",
            "--broker",
            &url,
            "--http",
            "127.0.0.1:0",
        ],
        &["udp", "http"],
    );
    let prefix = format!("fault/kill/{}", unique());
    let tally = Arc::new(Tally::default());
    let mut witness = MqttWitness::start(&url, &format!("{prefix}/#"), tally.clone()).await;
    let topic_prefix = prefix.clone();
    let make: Arc<MakeRequest> = Arc::new(move |client, c, seq| {
        let topic = format!("{topic_prefix}/c{c}");
        let payload = format!("c{c}-{seq}");
        let m = client
            .build(
                MessageType::Con,
                Code::POST,
                &format!("ps/{topic}"),
                &["qos=1"],
            )
            .with_payload(payload.clone().into_bytes());
        (m, format!("{topic} {payload}"))
    });
    let load = Load::start(gw.addr("udp"), CLIENTS, tally.clone(), make).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| mosquitto.kill9());
    let first_503 = load
        .wait_for(killed, "5.03", Duration::from_secs(10))
        .await
        .expect("5.03 while mosquitto is down");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Hold the devices while the broker comes back and the witness (not the
    // gateway) subscribes again: mosquitto without persistence would drop
    // what arrives before, which says nothing about the gateway.
    load.set_paused(true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let down_codes = load.codes_since(killed);
    let restarted = Instant::now();
    tokio::task::block_in_place(|| mosquitto.restart());
    witness.wait_subscribed(2).await;
    load.set_paused(false);
    let recovered = load
        .wait_for(restarted, "2.04", Duration::from_secs(30))
        .await
        .expect("gateway recovered within 30 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while !tally.figures().lost.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = tally.figures();
    let count = |code: &str| down_codes.iter().filter(|c| *c == code).count();
    println!(
        "FIGURES mosquitto_kill9 clients={CLIENTS} {} first_503_after={:?} while_down: 5.03={} 2.04={} none={} recovery_after_restart={:?}",
        figures.line(),
        first_503 - killed,
        count("5.03"),
        count("2.04"),
        count("none"),
        recovered - restarted,
    );
    assert!(
        figures.lost.is_empty(),
        "{} acknowledged publishes lost, e.g. {:?}",
        figures.lost.len(),
        &figures.lost[..figures.lost.len().min(10)]
    );
    for code in figures.codes.keys() {
        assert!(
            code == "2.04" || code == "5.03",
            "unexpected answers {:?}",
            figures.codes
        );
    }
    assert!(
        recovered - restarted < Duration::from_secs(10),
        "slow recovery"
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_kill9_under_load_loses_no_acknowledged_event() {
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let url = rabbit.url();
    let registry = registry_file();
    let prefix = format!("fk{:x}", rand::random::<u32>());
    let mut adapter = support::hono_adapter(&registry, &url, &prefix, &["udp", "dtls", "http"]);
    let tally = Arc::new(Tally::default());
    let make: Arc<MakeRequest> = Arc::new(move |client, c, seq| {
        let payload = format!("d{c}-{seq}");
        let m = client
            .build(MessageType::Con, Code::PUT, &format!("e/TA/d{c}"), &[])
            .with_content_format(coap_endpoint::coap_codec::ContentFormat::TEXT_PLAIN)
            .with_payload(payload.clone().into_bytes());
        (m, payload)
    });
    let load = Load::start(adapter.addr("udp"), CLIENTS, tally.clone(), make).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tally.figures().acknowledged > 0,
        "no event acknowledged before the kill: {}",
        tally.figures().line()
    );

    let killed = Instant::now();
    tokio::task::block_in_place(|| rabbit.kill9());
    let first_503 = load
        .wait_for(killed, "5.03", Duration::from_secs(15))
        .await
        .expect("5.03 while RabbitMQ is down");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| rabbit.boot());
    let booted = Instant::now();
    let recovered = load
        .wait_for(booted, "2.04", Duration::from_secs(30))
        .await
        .expect("adapter recovered within 30 s of RabbitMQ accepting again");
    let down_codes: Vec<String> = load.codes_since(killed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;

    let drained = drain_queue(
        &url,
        &format!("{prefix}.event.TA"),
        &tally,
        Duration::from_millis(1500),
    )
    .await;
    let figures = tally.figures();
    let count = |code: &str| down_codes.iter().filter(|c| *c == code).count();
    println!(
        "FIGURES rabbitmq_kill9 clients={CLIENTS} {} drained={drained} first_503_after={:?} after_kill: 5.03={} 2.04={} none={} broker_boot={:?} recovery_after_broker_accepts={:?}",
        figures.line(),
        first_503 - killed,
        count("5.03"),
        count("2.04"),
        count("none"),
        booted - restarted,
        recovered - booted,
    );
    assert!(
        figures.lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        figures.lost.len(),
        &figures.lost[..figures.lost.len().min(10)]
    );
    for code in figures.codes.keys() {
        assert!(
            code == "2.04" || code == "5.03",
            "unexpected answers {:?}",
            figures.codes
        );
    }
    assert!(
        recovered - booted < Duration::from_secs(15),
        "slow recovery"
    );
    adapter.assert_alive();
    drop(registry);
}
