#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! The gateway on a real mosquitto (`--broker mqtt://...`): the shared one
//! at `MQTT_URL` (unique topic prefix per test) and, for the broker-outage
//! test, a private instance started by the test.

mod support;

use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, MessageType};
use support::{
    Gateway, MqttSubscriber, PrivateMosquitto, RawClient, coap, mqtt_publish, mqtt_url,
    unique_prefix,
};

#[tokio::test]
async fn publishes_reach_an_mqtt_subscriber_with_qos_retain_and_expiry() {
    let url = mqtt_url();
    let prefix = unique_prefix("pub");
    let mut sub = MqttSubscriber::start(&url, &format!("{prefix}/#")).await;
    let gw = Gateway::start(&["--broker", &url]);
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "21.5",
        &gw.uri(&format!("ps/{prefix}/temp?qos=1&retain=true&expiry=120")),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let m = sub.next().await;
    assert_eq!(m.topic, format!("{prefix}/temp"));
    assert_eq!(&m.payload[..], b"21.5");
    assert_eq!(m.qos, 1);
    assert!(!m.retain, "live delivery does not carry retain");
    let expiry = m.expiry.expect("message expiry interval");
    assert!((110..=120).contains(&expiry), "{expiry}");
    // The broker kept it as retained: a new subscriber gets it with the
    // retain flag.
    let mut late = MqttSubscriber::start(&url, &format!("{prefix}/temp")).await;
    let r = late.next().await;
    assert!(r.retain);
    assert_eq!(&r.payload[..], b"21.5");
    // QoS 2 and QoS 0 (a NON request under --publish-qos coap).
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "q2",
        &gw.uri(&format!("ps/{prefix}/a?q=2")),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let m = sub.next().await;
    assert_eq!((m.qos, &m.payload[..], m.expiry), (2, &b"q2"[..], None));
    let run = coap(&[
        "-m",
        "post",
        "-N",
        "-e",
        "q0",
        &gw.uri(&format!("ps/{prefix}/b")),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let m = sub.next().await;
    assert_eq!((m.topic, m.qos), (format!("{prefix}/b"), 0));
    // Clear the retained message.
    mqtt_publish(&url, &format!("{prefix}/temp"), "", 1, true).await;
}

#[tokio::test]
async fn mqtt_publishes_become_notifications_con_for_qos1_non_for_qos0() {
    let url = mqtt_url();
    let prefix = unique_prefix("notify");
    let gw = Gateway::start(&["--broker", &url]);
    let exact = RawClient::new(gw.udp).await;
    let plus = RawClient::new(gw.udp).await;
    let hash = RawClient::new(gw.udp).await;
    for (client, path) in [
        (&exact, format!("ps/{prefix}/dev/t")),
        (&plus, format!("ps/{prefix}/%2B/t")),
        (&hash, format!("ps/{prefix}/%23")),
    ] {
        let answer = client
            .exchange(
                client
                    .request(Code::GET, b"o", &path, &["qos=1"])
                    .with_observe(0),
            )
            .await;
        assert_eq!(answer.code, Code::CONTENT, "{path}");
    }
    mqtt_publish(&url, &format!("{prefix}/dev/t"), "one", 1, false).await;
    for client in [&exact, &plus, &hash] {
        let n = client.notification(true).await;
        assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"one"[..]));
    }
    mqtt_publish(&url, &format!("{prefix}/dev/t"), "zero", 0, false).await;
    for client in [&exact, &plus, &hash] {
        let n = client.notification(true).await;
        assert_eq!((n.mtype, &n.payload[..]), (MessageType::Non, &b"zero"[..]));
    }
    mqtt_publish(&url, &format!("{prefix}/other/deeper"), "deep", 1, false).await;
    assert_eq!(&hash.notification(true).await.payload[..], b"deep");
    assert!(plus.recv_within(Duration::from_millis(200)).await.is_none());
    // Unsubscribe (2.07) stops notifications; the others continue.
    let answer = plus
        .exchange(
            plus.request(Code::GET, b"o", &format!("ps/{prefix}/%2B/t"), &[])
                .with_observe(1),
        )
        .await;
    assert_eq!(answer.code.to_string(), "2.07");
    mqtt_publish(&url, &format!("{prefix}/dev/t"), "after", 1, false).await;
    assert_eq!(&exact.notification(true).await.payload[..], b"after");
    assert!(plus.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn retained_messages_from_the_broker_on_observe_and_get() {
    let url = mqtt_url();
    let prefix = unique_prefix("retained");
    mqtt_publish(&url, &format!("{prefix}/r"), "stored", 1, true).await;
    let gw = Gateway::start(&["--broker", &url]);
    let run = coap(&["-m", "get", &gw.uri(&format!("ps/{prefix}/r"))]).await;
    assert_eq!((run.code(), run.payload()), ("2.05", "stored"), "{run:?}");
    let run = coap(&["-m", "get", &gw.uri(&format!("ps/{prefix}/none"))]).await;
    assert_eq!(run.code(), "4.04", "{run:?}");
    let run = coap(&[
        "-m",
        "get",
        "-s",
        "1",
        "-B",
        "2",
        &gw.uri(&format!("ps/{prefix}/r")),
    ])
    .await;
    assert_eq!(run.responses[0].payload, "stored", "{run:?}");
    let dev = RawClient::new(gw.udp).await;
    let answer = dev
        .exchange(
            dev.request(Code::GET, b"w", &format!("ps/{prefix}/%2B"), &[])
                .with_observe(0),
        )
        .await;
    assert_eq!(answer.code, Code::CONTENT);
    let n = dev.notification(true).await;
    assert_eq!(&n.payload[..], b"stored");
    mqtt_publish(&url, &format!("{prefix}/r"), "", 1, true).await;
}

#[tokio::test]
async fn broker_outage_gives_503_and_every_acknowledged_publish_arrives() {
    let mut mosquitto = PrivateMosquitto::start();
    let url = mosquitto.url();
    let prefix = unique_prefix("outage");
    let mut sub = MqttSubscriber::start(&url, &format!("{prefix}/#")).await;
    let gw = Gateway::start(&["--broker", &url]);
    let dev = RawClient::new(gw.udp).await;
    let publish = |n: u32| {
        dev.request(Code::POST, b"p", &format!("ps/{prefix}/seq"), &["qos=1"])
            .with_payload(n.to_string().into_bytes())
    };
    let mut acknowledged = Vec::new();
    let mut n = 0;
    // Up: 2.04.
    for _ in 0..3 {
        n += 1;
        let answer = dev.exchange(publish(n)).await;
        assert_eq!(answer.code, Code::CHANGED);
        acknowledged.push(n);
    }
    mosquitto.kill9();
    // Down: 5.03 with Max-Age, never 2.04 for a message the broker did not take.
    let mut unavailable = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while unavailable < 2 {
        assert!(
            Instant::now() < deadline,
            "no 5.03 while the broker is down"
        );
        n += 1;
        let answer = dev.exchange(publish(n)).await;
        match answer.code {
            Code::SERVICE_UNAVAILABLE => {
                assert!(answer.max_age().is_some(), "5.03 carries Max-Age");
                unavailable += 1;
            }
            Code::CHANGED => acknowledged.push(n),
            other => panic!("unexpected {other}"),
        }
    }
    mosquitto.restart();
    // Our own subscriber must be back before "every 2.04 arrived" means
    // anything.
    sub.wait_subscribed(2).await;
    // Back: 2.04 again within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok_again = 0;
    while ok_again < 3 {
        assert!(
            Instant::now() < deadline,
            "no 2.04 after the broker came back"
        );
        n += 1;
        let answer = dev.exchange(publish(n)).await;
        if answer.code == Code::CHANGED {
            acknowledged.push(n);
            ok_again += 1;
        } else {
            assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every publish that got 2.04 reached the subscriber (which itself
    // reconnected; the ones from before the outage it got already).
    let mut seen = std::collections::BTreeSet::new();
    while let Some(m) = sub.next_within(Duration::from_secs(3)).await {
        seen.insert(
            String::from_utf8(m.payload.to_vec())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        if acknowledged.iter().all(|a| seen.contains(a)) {
            break;
        }
    }
    let missing: Vec<u32> = acknowledged
        .iter()
        .copied()
        .filter(|a| !seen.contains(a))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
}

#[tokio::test]
async fn connection_mode_on_mqtt_with_per_client_sessions() {
    let url = mqtt_url();
    let prefix = unique_prefix("perclient");
    let mut sub = MqttSubscriber::start(&url, &format!("{prefix}/#")).await;
    let gw = Gateway::start(&[
        "--broker",
        &url,
        "--mqtt-session",
        "per-client",
        "--connection-required",
        "--mountpoint",
        &format!("{prefix}/${{clientid}}/"),
    ]);
    let clientid = format!("pc-{}", support::unique());
    let run = coap(&[
        "-m",
        "post",
        &gw.uri(&format!("mqtt/connection?clientid={clientid}")),
    ])
    .await;
    assert_eq!(run.code(), "2.01", "{run:?}");
    let token = run.payload().to_owned();
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "m",
        &gw.uri(&format!("ps/up?clientid={clientid}&token={token}")),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let m = sub.next().await;
    assert_eq!(m.topic, format!("{prefix}/{clientid}/up"));
    let run = coap(&[
        "-m",
        "delete",
        &gw.uri(&format!(
            "mqtt/connection?clientid={clientid}&token={token}"
        )),
    ])
    .await;
    assert_eq!(run.code(), "2.02", "{run:?}");
}
