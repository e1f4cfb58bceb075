//! While the broker is known to be down, both binaries refuse requests that
//! need it at once: a piggybacked 5.03 Service Unavailable with Max-Age and
//! a diagnostic payload, within milliseconds, not an empty ACK and a
//! separate response seconds later. After the broker is back, requests are
//! accepted again and reach it. Private brokers of this test only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use fault_injection_tests::hono_registry::registry_file;
use fault_injection_tests::{
    GatewayProcess, MqttWitness, PrivateMosquitto, PrivateRabbit, Tally, drain_queue, unique,
};
use tokio::net::UdpSocket;

/// How fast a refusal must come: far below the 1 s after which the endpoint
/// would send an empty ACK and answer separately.
const PROMPT: Duration = Duration::from_millis(500);

/// A bare CoAP client: one request, the first datagram that answers it.
struct Device {
    socket: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

/// The first datagram answering a request, and how long it took.
struct FirstAnswer {
    message: Message,
    after: Duration,
}

impl Device {
    async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            mid: rand::random(),
        }
    }

    fn con(&mut self, code: Code, path: &str, queries: &[&str]) -> Message {
        self.mid = self.mid.wrapping_add(1);
        let mut m = Message::new(MessageType::Con, code, self.mid)
            .with_token(Bytes::copy_from_slice(&self.mid.to_be_bytes()))
            .with_uri_path(path);
        for q in queries {
            m = m.with_uri_query(q);
        }
        m
    }

    /// Sends `request` once and returns the first datagram with its message
    /// id (ACK) or token (a separate response), within 5 s.
    async fn first_answer(&self, request: &Message) -> FirstAnswer {
        let sent = Instant::now();
        self.socket
            .send_to(&request.to_bytes().unwrap(), self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
                    .await
                    .expect("an answer within 5 s")
                    .unwrap();
            let m = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap();
            if m.message_id == request.message_id || m.token == request.token {
                return FirstAnswer {
                    message: m,
                    after: sent.elapsed(),
                };
            }
        }
    }

    /// Sends `request` and returns the final response (acknowledging a
    /// separate CON response), within 10 s.
    async fn exchange(&self, request: &Message) -> Message {
        let first = self.first_answer(request).await.message;
        if first.code != Code::EMPTY {
            return first;
        }
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buf))
                    .await
                    .expect("a separate response within 10 s")
                    .unwrap();
            let m = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap();
            if m.token == request.token && m.code.is_response() {
                if m.mtype == MessageType::Con {
                    let ack = Message::empty_ack(m.message_id).to_bytes().unwrap();
                    self.socket.send_to(&ack, self.server).await.unwrap();
                }
                return m;
            }
        }
    }
}

/// Asserts a prompt, piggybacked 5.03 with Max-Age in `max_age` and a
/// diagnostic payload; returns how long it took.
fn assert_prompt_503(
    what: &str,
    answer: &FirstAnswer,
    max_age: std::ops::RangeInclusive<u32>,
) -> Duration {
    let m = &answer.message;
    assert_eq!(
        (m.mtype, m.code),
        (MessageType::Ack, Code::SERVICE_UNAVAILABLE),
        "{what}: expected a piggybacked 5.03, got {:?} {} after {:?} ({:?})",
        m.mtype,
        m.code,
        answer.after,
        String::from_utf8_lossy(&m.payload)
    );
    assert!(
        answer.after < PROMPT,
        "{what}: 5.03 took {:?}",
        answer.after
    );
    let age = m.max_age().expect("5.03 carries Max-Age");
    assert!(
        max_age.contains(&age),
        "{what}: Max-Age {age}, expected {max_age:?}"
    );
    assert!(
        !m.payload.is_empty(),
        "{what}: 5.03 without a diagnostic payload"
    );
    answer.after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_mode_refuses_at_once_while_mosquitto_is_down() {
    let mut mosquitto = tokio::task::block_in_place(PrivateMosquitto::start);
    let url = mosquitto.url();
    let mut gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &["--udp", "127.0.0.1:0", "--broker", &url],
        &["udp"],
    );
    let prefix = format!("fault/fast/{}", unique());
    let tally = Arc::new(Tally::default());
    let mut witness = MqttWitness::start(&url, &format!("{prefix}/#"), tally.clone()).await;
    let mut dev = Device::new(gw.addr("udp")).await;
    let mut seq = 0u32;
    let mut publish = |dev: &mut Device| {
        seq += 1;
        let payload = format!("m{seq}");
        let m = dev
            .con(Code::POST, &format!("ps/{prefix}/t"), &["qos=1"])
            .with_payload(payload.clone().into_bytes());
        (m, format!("{prefix}/t {payload}"))
    };

    let (m, key) = publish(&mut dev);
    assert_eq!(dev.exchange(&m).await.code, Code::CHANGED);
    tally.answered(&key, "2.04", true);

    tokio::task::block_in_place(|| mosquitto.kill9());
    let killed = Instant::now();
    // The first publish may still meet the connection before the gateway
    // saw it break (then it is an in-flight publish: 5.03 without PUBACK,
    // never 2.04). Once the loss is known every refusal is immediate.
    let mut first = None;
    while first.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no 5.03 within 10 s of the kill"
        );
        let (m, key) = publish(&mut dev);
        let code = dev.exchange(&m).await.code;
        assert_eq!(code, Code::SERVICE_UNAVAILABLE, "after the kill");
        tally.answered(&key, "5.03", false);
        first = Some(killed.elapsed());
    }
    let mut slowest = Duration::ZERO;
    let mut total = Duration::ZERO;
    const N: u32 = 20;
    for _ in 0..N {
        let (m, key) = publish(&mut dev);
        let answer = dev.first_answer(&m).await;
        // Max-Age: until the next reconnect attempt (back-off 100 ms to
        // 5 s), at least 1.
        let after = assert_prompt_503("QoS 1 publish", &answer, 1..=5);
        tally.answered(&key, "5.03", false);
        slowest = slowest.max(after);
        total += after;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An observe of a ps/ topic and a GET of its retained message need the
    // broker too.
    let m = dev
        .con(Code::GET, &format!("ps/{prefix}/o"), &["qos=1"])
        .with_observe(0);
    assert_prompt_503("observe", &dev.first_answer(&m).await, 1..=5);
    let m = dev.con(Code::GET, &format!("ps/{prefix}/o"), &[]);
    assert_prompt_503("retained GET", &dev.first_answer(&m).await, 1..=5);
    gw.assert_alive();

    tokio::task::block_in_place(|| mosquitto.restart());
    let restarted = Instant::now();
    witness.wait_subscribed(2).await;
    let mut back = None;
    let mut accepted = 0;
    while accepted < 5 {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "no 2.04 within 15 s of the restart"
        );
        let (m, key) = publish(&mut dev);
        match dev.exchange(&m).await.code {
            Code::CHANGED => {
                tally.answered(&key, "2.04", true);
                back.get_or_insert(restarted.elapsed());
                accepted += 1;
            }
            Code::SERVICE_UNAVAILABLE => {
                tally.answered(&key, "5.03", false);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other} after the restart"),
        }
    }
    // Every 2.04 reached the witness; nothing refused did.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tally.figures().lost.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = tally.figures();
    println!(
        "FIGURES emqx_fail_fast first_503_after_kill={first:?} refusals={N} mean={:?} slowest={slowest:?} back_to_2.04_after_restart={back:?} {}",
        total / N,
        figures.line()
    );
    assert!(
        figures.lost.is_empty(),
        "acknowledged but not delivered: {:?}",
        figures.lost
    );
    assert_eq!(
        figures.unacknowledged_delivered, 0,
        "a refused publish reached the broker"
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hono_mode_refuses_at_once_while_rabbitmq_is_down() {
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let url = rabbit.url();
    let registry = registry_file();
    let prefix = format!("ff{:x}", rand::random::<u32>());
    let mut adapter = support::hono_adapter(&registry, &url, &prefix, &["udp", "dtls"]);
    let tally = Arc::new(Tally::default());
    let mut dev = Device::new(adapter.addr("udp")).await;
    let mut seq = 0u32;
    let mut event = |dev: &mut Device| {
        seq += 1;
        let payload = format!("e{seq}");
        let m = dev
            .con(Code::PUT, "e/TA/d1", &[])
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_payload(payload.clone().into_bytes());
        (m, payload)
    };
    let (m, key) = event(&mut dev);
    assert_eq!(dev.exchange(&m).await.code, Code::CHANGED);
    tally.answered(&key, "2.04", true);

    let killed = Instant::now();
    tokio::task::block_in_place(|| rabbit.kill9());
    let mut first = None;
    while first.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no 5.03 within 15 s of the kill"
        );
        let (m, key) = event(&mut dev);
        match dev.exchange(&m).await.code {
            Code::SERVICE_UNAVAILABLE => {
                tally.answered(&key, "5.03", false);
                first = Some(killed.elapsed());
            }
            Code::CHANGED => tally.answered(&key, "2.04", true),
            other => panic!("unexpected {other} after the kill"),
        }
    }
    let mut slowest = Duration::ZERO;
    let mut total = Duration::ZERO;
    const N: u32 = 20;
    for _ in 0..N {
        let (m, key) = event(&mut dev);
        let answer = dev.first_answer(&m).await;
        let after = assert_prompt_503("CON event", &answer, 1..=60);
        tally.answered(&key, "5.03", false);
        slowest = slowest.max(after);
        total += after;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    adapter.assert_alive();

    tokio::task::block_in_place(|| rabbit.boot());
    let booted = Instant::now();
    let mut back = None;
    let mut accepted = 0;
    while accepted < 3 {
        assert!(
            booted.elapsed() < Duration::from_secs(30),
            "no 2.04 within 30 s of the boot"
        );
        let (m, key) = event(&mut dev);
        match dev.exchange(&m).await.code {
            Code::CHANGED => {
                tally.answered(&key, "2.04", true);
                back.get_or_insert(booted.elapsed());
                accepted += 1;
            }
            Code::SERVICE_UNAVAILABLE => {
                tally.answered(&key, "5.03", false);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("unexpected {other} after the boot"),
        }
    }
    let drained = drain_queue(
        &url,
        &format!("{prefix}.event.TA"),
        &tally,
        Duration::from_millis(1500),
    )
    .await;
    let figures = tally.figures();
    println!(
        "FIGURES hono_fail_fast first_503_after_kill={first:?} refusals={N} mean={:?} slowest={slowest:?} back_to_2.04_after_boot={back:?} drained={drained} {}",
        total / N,
        figures.line()
    );
    assert!(
        figures.lost.is_empty(),
        "acknowledged events lost: {:?}",
        figures.lost
    );
    adapter.assert_alive();
}
