//! The EMQX-mode gateway on mosquitto with its clients behind a lossy link
//! (20 % loss each way, duplicates, delays that reorder; seeded RNG):
//! every CON publish that got 2.04 reaches the broker exactly as sent, and
//! an observer gets every QoS 1 notification — or, if a CON notification
//! is never acknowledged, the relation is removed (RFC 7641 §4.5), never
//! left silently stuck.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, MessageType};
use fault_injection_tests::{
    CoapClient, GatewayProcess, LinkConfig, LossyLink, MqttWitness, Tally, mqtt_url, unique,
};

const LOSSY: LinkConfig = LinkConfig {
    loss: 0.2,
    duplicate: 0.05,
    max_delay: Duration::from_millis(40),
};

fn gateway(broker: &str) -> GatewayProcess {
    GatewayProcess::start(
        "coap-emqx-gateway",
        &[
            "--udp",
            "127.0.0.1:0",
            "--broker",
            broker,
            "--http",
            "127.0.0.1:0",
        ],
        &["udp", "http"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn con_publishes_through_a_lossy_link_reach_the_broker_at_least_once() {
    let url = mqtt_url();
    let mut gw = gateway(&url);
    let prefix = format!("fault/lossy/{}", unique());
    let tally = Arc::new(Tally::default());
    let _witness = MqttWitness::start(&url, &format!("{prefix}/#"), tally.clone()).await;
    let seed = 0x5eed_0001;
    let link = Arc::new(LossyLink::start(gw.addr("udp"), LOSSY, seed).await);

    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 40;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (link, tally, prefix) = (link.clone(), tally.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let client = CoapClient::new(link.addr()).await;
            let mut retransmissions = 0;
            for seq in 0..PER_CLIENT {
                let topic = format!("{prefix}/c{c}");
                // A recognisable body with every byte value class in it.
                let payload = format!("c{c}-{seq}-{}", "x".repeat(seq * 7 % 200));
                let request = client
                    .build(
                        MessageType::Con,
                        Code::POST,
                        &format!("ps/{topic}"),
                        &["qos=1"],
                    )
                    .with_payload(payload.clone().into_bytes());
                tally.sent();
                let exchange = client.request(request).await;
                retransmissions += exchange.transmissions - 1;
                let key = format!("{topic} {payload}");
                match exchange.code() {
                    Some(code) => tally.answered(&key, &code.to_string(), code == Code::CHANGED),
                    None => tally.answered(&key, "none", false),
                }
            }
            retransmissions
        }));
    }
    let mut client_retransmissions = 0;
    for t in tasks {
        client_retransmissions += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    // The broker delivers to the witness within a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tally.figures().lost.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = tally.figures();
    println!(
        "FIGURES lossy_publish seed={seed:#x} clients={CLIENTS} {} client_retransmissions={client_retransmissions} {} gateway_dedup_hits={} elapsed={elapsed:?}",
        figures.line(),
        link.stats.summary(),
        gw.metric("coap_dedup_hits"),
    );
    assert!(
        figures.lost.is_empty(),
        "acknowledged publishes lost: {:?}",
        figures.lost
    );
    // Only 2.04 (or no answer after all retransmissions) is a valid end.
    for code in figures.codes.keys() {
        assert!(code == "2.04" || code == "none", "{:?}", figures.codes);
    }
    assert!(
        figures.acknowledged as usize >= CLIENTS * PER_CLIENT * 95 / 100,
        "{}",
        figures.line()
    );
    assert!(
        link.stats
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    gw.assert_alive();
}

/// Observer behind the lossy link; publisher on a clean path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_behind_a_lossy_link_gets_every_qos1_notification_or_loses_the_relation() {
    let url = mqtt_url();
    let mut gw = gateway(&url);
    let topic = format!("fault/lossy-observe/{}", unique());
    let seed = 0x5eed_0002;
    let link = LossyLink::start(gw.addr("udp"), LOSSY, seed).await;
    let observer = CoapClient::new(link.addr()).await;
    let publisher = CoapClient::new(gw.addr("udp")).await;

    let register = observer
        .build(
            MessageType::Con,
            Code::GET,
            &format!("ps/{topic}"),
            &["qos=1"],
        )
        .with_observe(0);
    observer.observe_token(&register.token);
    let token = register.token.clone();
    let response = observer.request(register).await;
    assert_eq!(response.code(), Some(Code::CONTENT), "{response:?}");
    // the broker subscription is in place once the 2.05 came
    let publish = |body: String| {
        let m = publisher
            .build(
                MessageType::Con,
                Code::POST,
                &format!("ps/{topic}"),
                &["qos=1"],
            )
            .with_payload(body.into_bytes());
        publisher.request(m)
    };

    // Phase 1: one message at a time; each must arrive, unless the
    // gateway gave up on a CON notification and removed the relation.
    const SEQUENTIAL: usize = 10;
    let mut received = Vec::<String>::new();
    let mut seen_mids = HashSet::new();
    let mut duplicate_copies = 0;
    let mut removed = false;
    let started = Instant::now();
    'outer: for i in 0..SEQUENTIAL {
        let body = format!("seq-{i}");
        assert_eq!(publish(body.clone()).await.code(), Some(Code::CHANGED));
        // The gateway retransmits a CON notification for up to ~93 s.
        let deadline = Instant::now() + Duration::from_secs(100);
        loop {
            let Some(n) = observer.notification(Duration::from_millis(500)).await else {
                if Instant::now() > deadline {
                    removed = true;
                    break 'outer;
                }
                continue;
            };
            assert_eq!(n.token, token);
            assert_eq!(n.mtype, MessageType::Con, "QoS 1 notifications are CON");
            if !seen_mids.insert(n.message_id) {
                duplicate_copies += 1;
                continue;
            }
            let payload = String::from_utf8_lossy(&n.payload).into_owned();
            let done = payload == body;
            received.push(payload);
            if done {
                break;
            }
        }
    }
    let sequential_time = started.elapsed();
    if removed {
        // Never silently stuck: the relation is gone at the gateway.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric("emqx_coap_observers") > 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(gw.metric("emqx_coap_observers"), 0.0, "relation stuck");
        println!(
            "FIGURES lossy_observe seed={seed:#x} relation_removed_after={} notifications {}",
            received.len(),
            link.stats.summary()
        );
        gw.assert_alive();
        return;
    }
    let expected: Vec<String> = (0..SEQUENTIAL).map(|i| format!("seq-{i}")).collect();
    assert_eq!(received, expected, "every QoS 1 notification, in order");

    // Phase 2: a burst faster than the link can carry CON notifications:
    // queued older notifications of the relation may be replaced by newer
    // ones (RFC 7641 §4.5.2), but the newest state always arrives.
    const BURST: usize = 30;
    for i in 0..BURST {
        assert_eq!(
            publish(format!("burst-{i}")).await.code(),
            Some(Code::CHANGED)
        );
    }
    let last = format!("burst-{}", BURST - 1);
    let mut burst_received = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(100);
    while !burst_received.contains(&last) {
        let Some(n) = observer.notification(Duration::from_millis(500)).await else {
            if Instant::now() > deadline {
                assert_eq!(gw.metric("emqx_coap_observers"), 0.0, "relation stuck");
                removed = true;
                break;
            }
            continue;
        };
        if !seen_mids.insert(n.message_id) {
            duplicate_copies += 1;
            continue;
        }
        let p = String::from_utf8_lossy(&n.payload).into_owned();
        assert!(p.starts_with("burst-"), "{p}");
        burst_received.insert(p);
    }
    println!(
        "FIGURES lossy_observe seed={seed:#x} sequential_delivered={}/{SEQUENTIAL} in {sequential_time:?} burst_published={BURST} burst_delivered={} burst_superseded={} last_delivered={} duplicate_copies_absorbed={duplicate_copies} gateway_retransmissions={} {}",
        received.len(),
        burst_received.len(),
        BURST - burst_received.len(),
        !removed,
        gw.metric("coap_retransmissions"),
        link.stats.summary()
    );
    gw.assert_alive();
}

/// The Hono-mode adapter behind the same lossy link: CON events (unauthenticated
/// PUT on the insecure port) that got 2.04 are all in the durable event queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn con_events_through_a_lossy_link_reach_rabbitmq_at_least_once() {
    let url = fault_injection_tests::amqp_url();
    let registry = fault_injection_tests::hono_registry::registry_file();
    let prefix = format!("fl{:x}", rand::random::<u32>());
    let mut adapter = support::hono_adapter(&registry, &url, &prefix, &["udp", "dtls", "http"]);
    let seed = 0x5eed_0003;
    let link = Arc::new(LossyLink::start(adapter.addr("udp"), LOSSY, seed).await);
    let tally = Arc::new(Tally::default());
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 40;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (link, tally) = (link.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let client = CoapClient::new(link.addr()).await;
            for seq in 0..PER_CLIENT {
                let payload = format!("d{c}-{seq}");
                let request = client
                    .build(MessageType::Con, Code::PUT, &format!("e/TA/d{c}"), &[])
                    .with_content_format(coap_endpoint::coap_codec::ContentFormat::TEXT_PLAIN)
                    .with_payload(payload.clone().into_bytes());
                tally.sent();
                let exchange = client.request(request).await;
                match exchange.code() {
                    Some(code) => {
                        tally.answered(&payload, &code.to_string(), code == Code::CHANGED)
                    }
                    None => tally.answered(&payload, "none", false),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let drained = fault_injection_tests::drain_queue(
        &url,
        &format!("{prefix}.event.TA"),
        &tally,
        Duration::from_millis(1000),
    )
    .await;
    let figures = tally.figures();
    println!(
        "FIGURES lossy_events seed={seed:#x} clients={CLIENTS} {} drained={drained} {} adapter_dedup_hits={}",
        figures.line(),
        link.stats.summary(),
        adapter.metric("coap_dedup_hits"),
    );
    assert!(
        figures.lost.is_empty(),
        "acknowledged events lost: {:?}",
        figures.lost
    );
    for code in figures.codes.keys() {
        assert!(code == "2.04" || code == "none", "{:?}", figures.codes);
    }
    assert!(figures.acknowledged as usize >= CLIENTS * PER_CLIENT * 95 / 100);
    adapter.assert_alive();
    drop(registry);
}

/// DTLS-PSK devices on the Hono-mode adapter behind the lossy link: the
/// handshake survives the loss (flights are retransmitted) and CON events
/// that got 2.04 are all in the durable queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_handshakes_and_events_survive_a_lossy_link() {
    use coap_dtls::{ClientConfig, DtlsClient, DtlsConnector};
    use coap_endpoint::coap_codec::Message;

    let url = fault_injection_tests::amqp_url();
    let registry = fault_injection_tests::hono_registry::registry_file();
    let prefix = format!("fd{:x}", rand::random::<u32>());
    let mut adapter = support::hono_adapter(&registry, &url, &prefix, &["dtls", "http"]);
    let seed = 0x5eed_0004;
    let link = LossyLink::start(adapter.addr("dtls"), LOSSY, seed).await;
    let (identity, key) = fault_injection_tests::hono_registry::D0;
    let connector = DtlsConnector::new(ClientConfig::new(identity, key)).unwrap();
    let tally = Tally::default();
    const SESSIONS: usize = 3;
    const PER_SESSION: usize = 10;
    let mut handshake_times = Vec::new();
    let mut retransmissions = 0;
    let mut handshake_attempts = 0;
    for s in 0..SESSIONS {
        let started = Instant::now();
        // A device whose handshake gives up starts a new one, as real ones do.
        let mut client = None;
        for _ in 0..4 {
            handshake_attempts += 1;
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(30),
                DtlsClient::connect(&connector, link.addr()),
            )
            .await
            {
                client = Some(c);
                break;
            }
        }
        let mut client = client.expect("a handshake over the lossy link within 4 attempts");
        handshake_times.push(started.elapsed());
        for i in 0..PER_SESSION {
            let payload = format!("s{s}-{i}");
            let mid = (s * 100 + i) as u16;
            let request = Message::new(MessageType::Con, Code::POST, mid)
                .with_token(bytes::Bytes::copy_from_slice(&mid.to_be_bytes()))
                .with_uri_path("e")
                .with_content_format(coap_endpoint::coap_codec::ContentFormat::TEXT_PLAIN)
                .with_payload(payload.clone().into_bytes());
            tally.sent();
            let bytes = request.to_bytes().unwrap();
            let mut answer = None;
            // CON retransmission with the same message id: 300 ms, doubling
            'attempts: for attempt in 0..7u32 {
                if attempt > 0 {
                    retransmissions += 1;
                }
                client.send(&bytes).await.unwrap();
                let deadline = Instant::now() + Duration::from_millis(300 << attempt);
                while let Some(datagram) = client
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .await
                    .unwrap()
                {
                    let Ok(m) = Message::from_bytes(datagram) else {
                        continue;
                    };
                    if m.token == request.token && m.code.is_response() {
                        answer = Some(m.code);
                        break 'attempts;
                    }
                }
            }
            match answer {
                Some(code) => tally.answered(&payload, &code.to_string(), code == Code::CHANGED),
                None => tally.answered(&payload, "none", false),
            }
        }
    }
    let drained = fault_injection_tests::drain_queue(
        &url,
        &format!("{prefix}.event.TA"),
        &tally,
        Duration::from_millis(1000),
    )
    .await;
    let figures = tally.figures();
    println!(
        "FIGURES lossy_dtls seed={seed:#x} sessions={SESSIONS} handshake_attempts={handshake_attempts} handshakes={handshake_times:?} {} drained={drained} client_retransmissions={retransmissions} {}",
        figures.line(),
        link.stats.summary(),
    );
    assert!(
        figures.lost.is_empty(),
        "acknowledged events lost: {:?}",
        figures.lost
    );
    for code in figures.codes.keys() {
        assert!(code == "2.04" || code == "none", "{:?}", figures.codes);
    }
    assert!(figures.acknowledged as usize >= SESSIONS * PER_SESSION * 9 / 10);
    adapter.assert_alive();
    drop(registry);
}
