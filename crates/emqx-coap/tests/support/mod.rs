#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]
//! Test support: the broker URL, private mosquitto instances, and MQTT
//! clients written directly with rumqttc (independent of the code under
//! test).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

pub use test_support::mqtt::{PrivateMosquitto, host_port, mqtt_url};

/// A topic prefix no other test (or test run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("emqx-coap-test/{name}/{}-{nanos}", std::process::id())
}

fn client_id(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t-{name}-{}-{nanos}", std::process::id())
}

#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub expiry: Option<u32>,
}

/// A plain rumqttc MQTT 5 subscriber.
pub struct ExternalSubscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    _client: AsyncClient,
}

impl ExternalSubscriber {
    /// Connects, subscribes to `filter` at QoS 2 and waits for the SUBACK.
    pub async fn start(url: &str, filter: &str) -> Self {
        let (host, port) = host_port(url);
        let options = MqttOptions::new(client_id("sub"), host, port);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::ExactlyOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subacked = Some(subacked_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(s) = subacked.take() {
                            let _ = s.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let props = p.properties.unwrap_or_default();
                        let _ = tx.send(Received {
                            topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            expiry: props.message_expiry_interval,
                        });
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subacked_rx)
            .await
            .unwrap()
            .unwrap();
        Self {
            rx,
            _client: client,
        }
    }

    /// The next message, or `None` after `wait` without one.
    #[allow(dead_code)]
    pub async fn try_next(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a message within 5 s")
            .unwrap()
    }
}

/// Publishes one message with a plain rumqttc client and waits for its
/// acknowledgement (QoS 1/2) or for it to be written (QoS 0).
pub async fn external_publish(url: &str, topic: &str, payload: &str, qos: u8) {
    external_publish_with(url, topic, payload, qos, false).await;
}

pub async fn external_publish_with(url: &str, topic: &str, payload: &str, qos: u8, retain: bool) {
    test_support::mqtt::publish(url, client_id("pub"), topic, payload, qos, retain).await;
}

/// Runs `mosquitto_sub -V mqttv5 -C 1` on `topic` and returns its one line
/// formatted `%t|%q|%r|%E|%p` (topic, QoS, retain, expiry, payload).
pub async fn mosquitto_sub_one(url: &str, topic: &str) -> String {
    let (host, port) = host_port(url);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("mosquitto_sub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "-t",
                &topic,
                "-q",
                "2",
            ])
            .args(["-C", "1", "-W", "5", "-F", "%t|%q|%r|%E|%p"])
            .output()
            .expect("mosquitto_sub is installed (scripts/test.sh installs mosquitto-clients)");
        assert!(out.status.success(), "mosquitto_sub failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    })
    .await
    .unwrap()
}
