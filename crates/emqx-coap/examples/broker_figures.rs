#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Rough figures for the broker side (run in release mode):
//!
//! ```sh
//! cargo run --release -p emqx-coap --example broker_figures            # in-process only
//! MQTT_URL=mqtt://127.0.0.1:1883 cargo run --release -p emqx-coap --example broker_figures
//! ```
//!
//! Prints trie lookup time with many unrelated filters, embedded-broker
//! publish rate, and (with `MQTT_URL`) QoS 1 publish rate through rumqttc,
//! one at a time and with 64 in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use emqx_coap::broker::embedded::{EmbeddedBroker, EmbeddedConfig};
use emqx_coap::broker::mqtt::{MqttBroker, MqttConfig};
use emqx_coap::broker::{Broker, ClientInfo, Publish, Qos, SubscriberId};
use emqx_coap::topic::{TopicFilter, TopicName};
use emqx_coap::trie::TopicTrie;

fn main() {
    trie_lookup(1_000);
    trie_lookup(100_000);
    embedded_publish();
    if let Ok(url) = std::env::var("MQTT_URL") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(mqtt_publish(&url));
    } else {
        println!(
            "the rumqttc figures need MQTT_URL (e.g. MQTT_URL=mqtt://127.0.0.1:1883, as scripts/test.sh sets it)"
        );
    }
}

fn trie_lookup(filters: u32) {
    let mut trie = TopicTrie::new();
    for i in 0..filters {
        trie.insert(&format!("site/{}/dev/{i}/temp", i % 100), i, ());
    }
    trie.insert("site/+/dev/+/temp", u32::MAX, ());
    trie.insert("site/#", u32::MAX - 1, ());
    let n = 200_000u32;
    let started = Instant::now();
    let mut hits = 0usize;
    for i in 0..n {
        let topic = format!("site/{}/dev/{}/temp", i % 100, i % filters);
        trie.for_each_match(&topic, |_, _| hits += 1);
    }
    let per = started.elapsed() / n;
    println!("trie: {filters} filters, lookup (incl. topic formatting) {per:?}, {hits} hits");
}

fn embedded_publish() {
    let (broker, mut rx) = EmbeddedBroker::new(EmbeddedConfig {
        queue_capacity: 1_000_000,
        ..EmbeddedConfig::default()
    });
    let c = ClientInfo::default();
    let now = Instant::now();
    for s in 0..10 {
        broker
            .subscribe_at(
                &c,
                SubscriberId(s),
                &TopicFilter::new(format!("b/{s}/+")).unwrap(),
                Qos::AtLeastOnce,
                now,
            )
            .unwrap();
    }
    let topics: Vec<TopicName> = (0..10)
        .map(|s| TopicName::new(format!("b/{s}/x")).unwrap())
        .collect();
    let n = 500_000;
    let started = Instant::now();
    for i in 0..n {
        let t = topics[i % 10].clone();
        broker
            .publish_at(Publish::new(t, "payload").qos(Qos::AtLeastOnce), now)
            .unwrap();
    }
    let elapsed = started.elapsed();
    let mut received = 0;
    while rx.try_recv().is_some() {
        received += 1;
    }
    println!(
        "embedded: {n} QoS 1 publishes in {elapsed:?} ({:.0}/s), {received} delivered",
        n as f64 / elapsed.as_secs_f64()
    );
}

async fn mqtt_publish(url: &str) {
    let (broker, _rx) = MqttBroker::start(MqttConfig::from_url(url).unwrap()).unwrap();
    broker.wait_ready(Duration::from_secs(5)).await.unwrap();
    let broker = Arc::new(broker);
    let c = ClientInfo::default();
    let topic = TopicName::new("emqx-coap-figures/x").unwrap();

    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        broker
            .publish(
                &c,
                Publish::new(topic.clone(), "payload").qos(Qos::AtLeastOnce),
            )
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "mqtt: {n} sequential QoS 1 publishes in {elapsed:?} ({:?} per ack round trip)",
        elapsed / n
    );

    let n = 20_000u32;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let broker = broker.clone();
        let topic = TopicName::new(format!("emqx-coap-figures/{w}")).unwrap();
        tasks.push(tokio::spawn(async move {
            let c = ClientInfo::default();
            for _ in 0..n / 64 {
                broker
                    .publish(
                        &c,
                        Publish::new(topic.clone(), "payload").qos(Qos::AtLeastOnce),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let done = n / 64 * 64;
    println!(
        "mqtt: {done} QoS 1 publishes, 64 in flight, in {elapsed:?} ({:.0}/s)",
        f64::from(done) / elapsed.as_secs_f64()
    );
}
