//! RFC 7641 §4.5: an observer that stops acknowledging CON notifications
//! loses its relation after MAX_RETRANSMIT retransmissions. With the
//! transmission-parameter flags (`--ack-timeout 100ms --ack-random-factor 1
//! --max-retransmit 2`) the gateway gives up after 100 + 200 + 400 ms =
//! 700 ms instead of up to ~93 s, so the test can watch it: the CON copies
//! arrive on the RFC schedule, the subscription disappears from the
//! management API and the metrics, and a later publish sends nothing more
//! to the silent client. (Removal on RST is covered elsewhere.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, Message, MessageType};
use fault_injection_tests::GatewayProcess;
use fault_injection_tests::process::{http_get, metric_sum};
use tokio::net::UdpSocket;

const ACK_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_RETRANSMIT: u32 = 2;

/// One device: a socket, a clientid and its session token.
struct Device {
    socket: UdpSocket,
    server: SocketAddr,
    clientid: String,
    token: String,
    mid: u16,
}

impl Device {
    async fn connect(server: SocketAddr, clientid: &str) -> Self {
        let mut me = Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            clientid: clientid.to_owned(),
            token: String::new(),
            mid: rand::random(),
        };
        let query = format!("clientid={clientid}");
        let m = me.con(Code::POST, "mqtt/connection", &[&query]);
        let answer = me.exchange(&m).await;
        assert_eq!(answer.code, Code::CREATED, "connect {clientid}");
        me.token = String::from_utf8(answer.payload.to_vec()).unwrap();
        me
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

    fn authed(&mut self, code: Code, path: &str, extra: &[&str]) -> Message {
        let id = format!("clientid={}", self.clientid);
        let token = format!("token={}", self.token);
        let mut queries = vec![id.as_str(), token.as_str()];
        queries.extend_from_slice(extra);
        self.con(code, path, &queries)
    }

    async fn recv_within(&self, within: Duration) -> Option<(Message, Instant)> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(within, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some((
            Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap(),
            Instant::now(),
        ))
    }

    async fn send(&self, m: &Message) {
        self.socket
            .send_to(&m.to_bytes().unwrap(), self.server)
            .await
            .unwrap();
    }

    /// Sends a request and returns its response (piggybacked or separate).
    async fn exchange(&self, request: &Message) -> Message {
        self.send(request).await;
        loop {
            let (m, _) = self
                .recv_within(Duration::from_secs(5))
                .await
                .expect("a response within 5 s");
            if m.mtype == MessageType::Ack && m.code == Code::EMPTY {
                continue;
            }
            if m.token == request.token && m.code.is_response() {
                if m.mtype == MessageType::Con {
                    self.send(&Message::empty_ack(m.message_id)).await;
                }
                return m;
            }
        }
    }
}

async fn subscriptions(http: SocketAddr, clientid: &str) -> String {
    let path = format!("/api/clients/{clientid}/subscriptions");
    tokio::task::spawn_blocking(move || http_get(http, &path))
        .await
        .unwrap()
}

async fn metrics(http: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_con_notifications_end_the_relation_within_the_give_up_time() {
    let ack_timeout = format!("{}ms", ACK_TIMEOUT.as_millis());
    let max_retransmit = MAX_RETRANSMIT.to_string();
    let mut gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &[
            "--udp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--connection-required",
            "--heartbeat",
            "10m",
            "--ack-timeout",
            &ack_timeout,
            "--ack-random-factor",
            "1",
            "--max-retransmit",
            &max_retransmit,
        ],
        &["udp", "http"],
    );
    let (udp, http) = (gw.addr("udp"), gw.addr("http"));
    let mut observer = Device::connect(udp, "silent-observer").await;
    let mut publisher = Device::connect(udp, "publisher").await;

    let m = observer
        .authed(Code::GET, "ps/give-up/t", &["qos=1"])
        .with_observe(0);
    let observe_token = m.token.clone();
    let answer = observer.exchange(&m).await;
    assert_eq!(answer.code, Code::CONTENT);
    assert!(answer.observe().is_some(), "registered");
    let listed = subscriptions(http, "silent-observer").await;
    assert!(listed.contains("give-up/t"), "{listed}");

    // A live relation: the first notification is CON and acknowledged.
    let m = publisher
        .authed(Code::POST, "ps/give-up/t", &["qos=1"])
        .with_payload(&b"one"[..]);
    assert_eq!(publisher.exchange(&m).await.code, Code::CHANGED);
    let (n, _) = observer
        .recv_within(Duration::from_secs(2))
        .await
        .expect("first notification");
    assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"one"[..]));
    assert_eq!(n.token, observe_token);
    observer.send(&Message::empty_ack(n.message_id)).await;

    // From now on the observer says nothing.
    let m = publisher
        .authed(Code::POST, "ps/give-up/t", &["qos=1"])
        .with_payload(&b"two"[..]);
    assert_eq!(publisher.exchange(&m).await.code, Code::CHANGED);
    // Watch the management API meanwhile: when does the subscription go?
    let watcher = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            let listed = subscriptions(http, "silent-observer").await;
            if !listed.contains("give-up/t") {
                return Instant::now();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "subscription still listed after 10 s: {listed}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut copies: Vec<Instant> = Vec::new();
    let mut message_id = None;
    // ACK_TIMEOUT × (2^(MAX_RETRANSMIT+1) − 1) with factor 1: 700 ms.
    let give_up = ACK_TIMEOUT * ((1 << (MAX_RETRANSMIT + 1)) - 1);
    while let Some((n, at)) = observer
        .recv_within(give_up + Duration::from_millis(500))
        .await
    {
        assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"two"[..]));
        assert_eq!(
            *message_id.get_or_insert(n.message_id),
            n.message_id,
            "same message, retransmitted"
        );
        copies.push(at);
    }
    assert_eq!(
        copies.len() as u32,
        MAX_RETRANSMIT + 1,
        "one transmission and MAX_RETRANSMIT retransmissions"
    );
    let first = copies[0];
    let gaps: Vec<Duration> = copies.windows(2).map(|w| w[1] - w[0]).collect();
    // Timeouts double: ~100 ms, then ~200 ms.
    for (i, gap) in gaps.iter().enumerate() {
        let expected = ACK_TIMEOUT * (1 << i);
        assert!(
            *gap >= expected.mul_f64(0.8) && *gap <= expected * 2 + Duration::from_millis(100),
            "gap {i}: {gap:?}, expected about {expected:?} ({gaps:?})"
        );
    }

    // The relation and its subscription are gone.
    let removed = watcher.await.unwrap() - first;
    assert!(
        removed <= give_up + Duration::from_millis(600),
        "relation removed after {removed:?}, give-up time {give_up:?}"
    );

    // A later publish causes no traffic to the silent client.
    let m = publisher
        .authed(Code::POST, "ps/give-up/t", &["qos=1"])
        .with_payload(&b"three"[..]);
    assert_eq!(publisher.exchange(&m).await.code, Code::CHANGED);
    let stray = observer.recv_within(Duration::from_secs(1)).await;
    assert!(
        stray.is_none(),
        "datagram after the relation ended: {stray:?}"
    );

    // The metrics agree (copied once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics(http).await;
        if metric_sum(&text, "emqx_coap_observers") == Some(0.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "emqx_coap_observers not 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let retransmissions = metric_sum(&text, "coap_retransmissions_total").unwrap_or(0.0);
    assert!(
        retransmissions >= f64::from(MAX_RETRANSMIT),
        "{retransmissions}"
    );
    println!(
        "FIGURES observe_give_up ack_timeout={ACK_TIMEOUT:?} max_retransmit={MAX_RETRANSMIT} copies={} gaps={gaps:?} computed_give_up={give_up:?} removed_after={removed:?}",
        copies.len()
    );
    gw.assert_alive();
}
