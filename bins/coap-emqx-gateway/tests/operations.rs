#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Operations of the real binary with `--http 127.0.0.1:0`: metrics that
//! move with real CoAP traffic, readiness that follows a private mosquitto,
//! the management API (search, pages, kick, subscriptions, requests to a
//! device), SIGTERM under a load of QoS 1 publishes, `--help`,
//! `--print-config` and config-file errors.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use support::{
    BIN, Gateway, MqttSubscriber, PrivateMosquitto, RawClient, TempDir, coap, http, metric,
    mqtt_url, unique_prefix,
};
use tokio::net::UdpSocket;

async fn scrape(gw: &Gateway) -> String {
    let (status, body) = http(gw.http.unwrap(), "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until every `(series, at least)` holds (endpoint statistics are
/// copied once a second), at most 5 s; returns the last scrape.
async fn scrape_until(gw: &Gateway, wanted: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(gw).await;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(series, min)| metric(&text, series).is_none_or(|v| v < *min))
            .map(|(series, min)| format!("{series} >= {min} (is {:?})", metric(&text, series)))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not reach {missing:?}; scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every family the operations spec names, with its HELP line.
const FAMILIES: &[&str] = &[
    "emqx_coap_responses_total",
    "emqx_coap_publishes_total",
    "emqx_coap_notifications_total",
    "emqx_coap_broker_round_trip_seconds",
    "emqx_coap_sessions",
    "emqx_coap_observers",
    "coap_datagrams_in_total",
    "coap_datagrams_out_total",
    "coap_requests_total",
    "coap_retransmissions_total",
    "coap_con_give_ups_total",
    "coap_dedup_hits_total",
    "coap_queue_drops_total",
    "coap_overload_rejections_total",
    "coap_malformed_total",
    "coap_observers",
];

#[tokio::test]
async fn metrics_move_with_real_coap_traffic() {
    let gw = Gateway::start(&["--http", "127.0.0.1:0", "--max-queued-notifications", "1"]);
    let before = scrape_until(&gw, &[("coap_datagrams_in_total{listener=\"udp\"}", 0.0)]).await;
    for family in FAMILIES {
        let help = format!("# HELP {family} ");
        let line = before
            .lines()
            .find(|l| l.starts_with(&help))
            .unwrap_or_else(|| panic!("no HELP for {family}:\n{before}"));
        assert!(line.len() > help.len() + 10, "thin help: {line}");
        assert!(before.contains(&format!("# TYPE {family} ")), "{family}");
    }
    for series in [
        "emqx_coap_responses_total{code=\"2.04\"}",
        "emqx_coap_publishes_total{qos=\"1\"}",
        "emqx_coap_broker_round_trip_seconds_count{operation=\"publish\"}",
        "coap_retransmissions_total{listener=\"udp\"}",
        "coap_dedup_hits_total{listener=\"udp\"}",
        "coap_queue_drops_total{listener=\"udp\"}",
        "emqx_coap_sessions",
    ] {
        assert_eq!(metric(&before, series), Some(0.0), "{series}:\n{before}");
    }

    // libcoap: an observer, a CON (QoS 1) and a NON (QoS 0) publish, a
    // connection-mode session.
    let observe_uri = gw.uri("ps/ops/metrics");
    let observer = tokio::spawn(async move { coap(&["-m", "get", "-s", "3", &observe_uri]).await });
    gw.wait_log_async(Duration::from_secs(5), |l| {
        l.contains("uri=ps/ops/metrics") && l.contains("code=2.05")
    })
    .await;
    let run = coap(&["-m", "post", "-e", "con", &gw.uri("ps/ops/metrics")]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let run = coap(&["-m", "post", "-N", "-e", "non", &gw.uri("ps/ops/metrics")]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let run = coap(&[
        "-m",
        "post",
        &gw.uri("mqtt/connection?clientid=ops-metrics"),
    ])
    .await;
    assert_eq!(run.code(), "2.01", "{run:?}");

    // A duplicate CON (same message id) is answered from the cache.
    let dup = RawClient::new(gw.udp).await;
    let post = dup.request(Code::POST, b"d", "ps/ops/dup", &["qos=0"]);
    assert_eq!(dup.exchange(post.clone()).await.code, Code::CHANGED);
    assert_eq!(dup.exchange(post).await.code, Code::CHANGED);

    // Three CON observations on one device that does not acknowledge: the
    // first notification is in flight and retransmitted, the second waits
    // in the queue (one place) and is dropped for the third.
    let device = RawClient::new(gw.udp).await;
    for topic in ["q1", "q2", "q3"] {
        let observe = device
            .request(
                Code::GET,
                topic.as_bytes(),
                &format!("ps/ops/{topic}"),
                &["qos=1"],
            )
            .with_observe(0);
        assert_eq!(device.exchange(observe).await.code, Code::CONTENT);
    }
    for topic in ["q1", "q2", "q3"] {
        let run = coap(&[
            "-m",
            "post",
            "-e",
            topic,
            &gw.uri(&format!("ps/ops/{topic}?qos=1")),
        ])
        .await;
        assert_eq!(run.code(), "2.04", "{run:?}");
    }
    let first = device.notification(false).await;
    assert_eq!(
        (first.mtype, &first.payload[..]),
        (MessageType::Con, &b"q1"[..])
    );
    let again = device
        .recv_within(Duration::from_secs(5))
        .await
        .expect("the unacknowledged notification is sent again");
    assert_eq!(again.message_id, first.message_id, "a retransmission");
    device.ack(&again).await;
    let next = device.notification(true).await;
    assert_eq!(
        &next.payload[..],
        b"q3",
        "q2 was dropped from the full queue"
    );

    let observed = observer.await.unwrap();
    let payloads: Vec<&str> = observed
        .responses
        .iter()
        .map(|s| s.payload.as_str())
        .collect();
    assert!(
        payloads.contains(&"con") && payloads.contains(&"non"),
        "{observed:?}"
    );

    let after = scrape_until(
        &gw,
        &[
            ("emqx_coap_responses_total{code=\"2.04\"}", 6.0),
            ("emqx_coap_responses_total{code=\"2.05\"}", 4.0),
            ("emqx_coap_responses_total{code=\"2.01\"}", 1.0),
            ("emqx_coap_publishes_total{qos=\"1\"}", 4.0),
            ("emqx_coap_publishes_total{qos=\"0\"}", 2.0),
            ("emqx_coap_notifications_total{type=\"con\"}", 3.0),
            ("emqx_coap_notifications_total{type=\"non\"}", 1.0),
            (
                "emqx_coap_broker_round_trip_seconds_count{operation=\"publish\"}",
                4.0,
            ),
            (
                "emqx_coap_broker_round_trip_seconds_count{operation=\"subscribe\"}",
                4.0,
            ),
            ("emqx_coap_sessions", 1.0),
            ("emqx_coap_observers", 3.0),
            ("coap_observers{listener=\"udp\"}", 3.0),
            ("coap_requests_total{listener=\"udp\",method=\"POST\"}", 7.0),
            ("coap_requests_total{listener=\"udp\",method=\"GET\"}", 4.0),
            ("coap_datagrams_in_total{listener=\"udp\"}", 15.0),
            ("coap_datagrams_out_total{listener=\"udp\"}", 15.0),
            ("coap_retransmissions_total{listener=\"udp\"}", 1.0),
            ("coap_dedup_hits_total{listener=\"udp\"}", 1.0),
            ("coap_queue_drops_total{listener=\"udp\"}", 1.0),
        ],
    )
    .await;
    // The histogram's buckets are cumulative and end in +Inf = count.
    let count = metric(
        &after,
        "emqx_coap_broker_round_trip_seconds_count{operation=\"publish\"}",
    );
    let inf = metric(
        &after,
        "emqx_coap_broker_round_trip_seconds_bucket{operation=\"publish\",le=\"+Inf\"}",
    );
    assert_eq!(count, inf, "{after}");
}

#[tokio::test]
async fn dtls_handshakes_are_counted() {
    let dir = TempDir::new("ops-dtls");
    let psk = dir.file("psk.txt", "ops-dev:ops-secret\n");
    let gw = Gateway::start(&[
        "--http",
        "127.0.0.1:0",
        "--dtls",
        "127.0.0.1:0",
        "--psk-file",
        psk.to_str().unwrap(),
    ]);
    let run = support::coap_client(
        "coap-client-openssl",
        &[
            "-u",
            "ops-dev",
            "-k",
            "ops-secret",
            "-m",
            "post",
            "-e",
            "1",
            &gw.coaps_uri("ps/ops/dtls"),
        ],
    )
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let text = scrape_until(
        &gw,
        &[
            ("dtls_handshakes_total{result=\"completed\"}", 1.0),
            (
                "coap_requests_total{listener=\"dtls\",method=\"POST\"}",
                1.0,
            ),
        ],
    )
    .await;
    assert!(text.contains("# HELP dtls_handshakes_total "), "{text}");
    assert!(text.contains("# HELP dtls_sessions "), "{text}");
}

#[tokio::test]
async fn readyz_follows_the_broker_connection() {
    let mut mosquitto = PrivateMosquitto::start();
    let url = mosquitto.url();
    let gw = Gateway::start(&["--http", "127.0.0.1:0", "--broker", &url]);
    let api = gw.http.unwrap();
    let wait_ready = |want: u16, within: Duration| async move {
        let started = Instant::now();
        loop {
            let (status, body) = http(api, "GET", "/readyz", "").await;
            if status == want {
                return (started.elapsed(), body);
            }
            assert!(
                started.elapsed() < within,
                "/readyz still {status} ({body}) after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_ready(200, Duration::from_secs(5)).await;
    assert_eq!(http(api, "GET", "/healthz", "").await.0, 200);

    mosquitto.kill9();
    let (took, body) = wait_ready(503, Duration::from_secs(5)).await;
    assert!(body.contains("broker"), "names what is not ready: {body}");
    eprintln!("not ready {took:?} after mosquitto stopped");
    // Alive all the same.
    assert_eq!(http(api, "GET", "/healthz", "").await.0, 200);

    mosquitto.restart();
    let (took, _) = wait_ready(200, Duration::from_secs(5)).await;
    eprintln!("ready again {took:?} after mosquitto started");
}

/// Opens a connection-mode session from `device`; returns the token.
async fn connect(device: &RawClient, clientid: &str, username: &str) -> String {
    let created = device
        .exchange(device.request(
            Code::POST,
            b"c",
            "mqtt/connection",
            &[
                &format!("clientid={clientid}"),
                &format!("username={username}"),
            ],
        ))
        .await;
    assert_eq!(created.code, Code::CREATED);
    String::from_utf8(created.payload.to_vec()).unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn clientids(page: &serde_json::Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn management_api_searches_kicks_and_requests_devices() {
    let gw = Gateway::start(&["--connection-required", "--http", "127.0.0.1:0"]);
    let api = gw.http.unwrap();
    let dev_a = RawClient::new(gw.udp).await;
    let dev_b = RawClient::new(gw.udp).await;
    let lamp = RawClient::new(gw.udp).await;
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let _token_a = connect(&dev_a, "dev-a", "alice").await;
    let token_b = connect(&dev_b, "dev-b", "bob").await;
    let token_lamp = connect(&lamp, "lamp-1", "alice").await;
    let observe = lamp
        .request(
            Code::GET,
            b"o",
            "ps/ops/lamp/cmd",
            &["clientid=lamp-1", &format!("token={token_lamp}"), "qos=2"],
        )
        .with_observe(0);
    assert_eq!(lamp.exchange(observe).await.code, Code::CONTENT);

    // List, search, pages.
    let (status, body) = http(api, "GET", "/api/clients", "").await;
    assert_eq!(status, 200, "{body}");
    let all = json(&body);
    assert_eq!(clientids(&all), ["dev-a", "dev-b", "lamp-1"]);
    assert_eq!(all["meta"]["count"], 3);
    let lamp_json = &all["data"][2];
    assert_eq!(lamp_json["username"], "alice");
    assert_eq!(lamp_json["subscriptions"], 1);
    assert_eq!(
        lamp_json["peer"].as_str().unwrap(),
        lamp.socket.local_addr().unwrap().to_string()
    );
    let connected_ms = lamp_json["connected_at_unix_ms"].as_u64().unwrap();
    assert!(
        connected_ms + 1000 >= started_unix_ms && connected_ms <= started_unix_ms + 30_000,
        "{lamp_json}"
    );
    let connected_at = lamp_json["connected_at"].as_str().unwrap();
    assert!(
        connected_at.ends_with('Z') && connected_at.len() == 24,
        "{connected_at}"
    );
    let search = |query: &'static str| async move {
        let (status, body) = http(api, "GET", &format!("/api/clients?{query}"), "").await;
        assert_eq!(status, 200, "{query}: {body}");
        json(&body)
    };
    assert_eq!(clientids(&search("clientid=dev").await), ["dev-a", "dev-b"]);
    assert_eq!(
        clientids(&search("username=alice").await),
        ["dev-a", "lamp-1"]
    );
    assert_eq!(
        clientids(&search("clientid=dev&username=alice").await),
        ["dev-a"]
    );
    assert_eq!(clientids(&search("like_clientid=lamp").await), ["lamp-1"]);
    assert_eq!(clientids(&search("like=bob").await), ["dev-b"]);
    let port = lamp.socket.local_addr().unwrap().port();
    let by_peer = http(api, "GET", &format!("/api/clients?peer=:{port}"), "").await;
    assert_eq!(clientids(&json(&by_peer.1)), ["lamp-1"]);
    let first = search("page=1&limit=2").await;
    assert_eq!(clientids(&first), ["dev-a", "dev-b"]);
    assert_eq!(
        (
            first["meta"]["count"].as_u64(),
            first["meta"]["hasnext"].as_bool()
        ),
        (Some(3), Some(true))
    );
    let second = search("page=2&limit=2").await;
    assert_eq!(clientids(&second), ["lamp-1"]);
    assert_eq!(second["meta"]["hasnext"], false);
    for bad in ["limit=0", "page=0", "limit=100000", "bogus=1", "page=x"] {
        let (status, body) = http(api, "GET", &format!("/api/clients?{bad}"), "").await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = http(api, "GET", "/api/clients/lamp-1", "").await;
    assert_eq!(
        (status, json(&body)["clientid"].as_str()),
        (200, Some("lamp-1"))
    );

    // Subscriptions.
    let (status, body) = http(api, "GET", "/api/clients/lamp-1/subscriptions", "").await;
    assert_eq!(status, 200, "{body}");
    let subs = json(&body);
    assert_eq!(
        (subs[0]["filter"].as_str(), subs[0]["qos"].as_u64()),
        (Some("ops/lamp/cmd"), Some(2))
    );
    assert_eq!(
        json(
            &http(api, "GET", "/api/clients/dev-a/subscriptions", "")
                .await
                .1
        ),
        serde_json::json!([])
    );
    assert_eq!(
        http(api, "GET", "/api/clients/nobody/subscriptions", "")
            .await
            .0,
        404
    );

    // A request to the lamp, answered with a piggybacked 2.05.
    let asking = tokio::spawn(async move {
        http(
            api,
            "POST",
            "/api/clients/lamp-1/request",
            r#"{"method":"get","path":"sensors/temp","query":"unit=C","content_format":"text/plain","timeout":"3s"}"#,
        )
        .await
    });
    let request = lamp.recv().await;
    assert_eq!((request.mtype, request.code), (MessageType::Con, Code::GET));
    let path: Vec<&[u8]> = request.uri_path().collect();
    assert_eq!(path, [&b"sensors"[..], b"temp"]);
    let query: Vec<&[u8]> = request.uri_query().collect();
    assert_eq!(query, [&b"unit=C"[..]]);
    let reply = Message::new(MessageType::Ack, Code::CONTENT, request.message_id)
        .with_token(request.token.clone())
        .with_content_format(ContentFormat::TEXT_PLAIN)
        .with_payload(Bytes::from_static(b"21.5"));
    lamp.send(&reply).await;
    let (status, body) = asking.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(
        (
            answer["code"].as_str(),
            answer["payload"].as_str(),
            answer["content_format"].as_u64()
        ),
        (Some("2.05"), Some("21.5"), Some(0))
    );

    // A device that does not answer: 504 after the given timeout.
    let started = Instant::now();
    let (status, body) = http(
        api,
        "POST",
        "/api/clients/dev-a/request",
        r#"{"method":"put","path":"led","payload":"on","timeout_ms":300}"#,
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("300 ms"),
        "{body}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let unasked = dev_a.recv().await;
    assert_eq!(
        (unasked.code, &unasked.payload[..]),
        (Code::PUT, &b"on"[..])
    );

    // Unknown client, bad bodies.
    let (status, body) = http(
        api,
        "POST",
        "/api/clients/nobody/request",
        r#"{"method":"get","path":"x"}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    for bad in [
        r#"{"method":"fetch","path":"x"}"#,
        r#"{"method":"get"}"#,
        r#"{"method":"get","path":"x","timeout":"soon"}"#,
        "not json",
    ] {
        let (status, body) = http(api, "POST", "/api/clients/dev-a/request", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Kick: 204, then the old token is refused with 4.01.
    assert_eq!(http(api, "DELETE", "/api/clients/dev-b", "").await.0, 204);
    assert_eq!(http(api, "GET", "/api/clients/dev-b", "").await.0, 404);
    assert_eq!(http(api, "DELETE", "/api/clients/dev-b", "").await.0, 404);
    let publish = dev_b.request(
        Code::POST,
        b"p",
        "ps/ops/after-kick",
        &["clientid=dev-b", &format!("token={token_b}")],
    );
    assert_eq!(dev_b.exchange(publish).await.code, Code::UNAUTHORIZED);
    assert_eq!(clientids(&search("clientid=dev").await), ["dev-a"]);
}

/// One device of the load: CON POSTs (QoS 1) one after the other until a
/// request gets no answer; returns the payloads answered 2.04 and the
/// other codes seen, with when.
async fn publish_until_silent(
    server: SocketAddr,
    topic: String,
    device: usize,
) -> (Vec<String>, Vec<(Code, Instant)>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut acked = Vec::new();
    let mut others = Vec::new();
    let mut buf = vec![0u8; 1500];
    for n in 0u16.. {
        let payload = format!("{device}-{n}");
        let request = Message::new(MessageType::Con, Code::POST, n)
            .with_token(Bytes::copy_from_slice(&n.to_be_bytes()))
            .with_uri_path(&topic)
            .with_uri_query("qos=1")
            .with_payload(payload.clone().into_bytes());
        socket
            .send_to(&request.to_bytes().unwrap(), server)
            .await
            .unwrap();
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await {
                Err(_) | Ok(Err(_)) => return (acked, others),
                Ok(Ok((len, _))) => {
                    let m = Message::from_bytes(Bytes::copy_from_slice(&buf[..len])).unwrap();
                    if m.token == request.token && m.code.is_response() {
                        break m;
                    }
                }
            }
        };
        if answer.code == Code::CHANGED {
            acked.push(payload);
        } else {
            others.push((answer.code, Instant::now()));
        }
    }
    (acked, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_publish() {
    let url = mqtt_url();
    let prefix = unique_prefix("sigterm");
    let mut subscriber = MqttSubscriber::start(&url, &format!("{prefix}/#")).await;
    let mut gw = Gateway::start(&["--broker", &url, "--log", "info"]);
    let server = gw.udp;
    const DEVICES: usize = 32;
    let load: Vec<_> = (0..DEVICES)
        .map(|device| {
            let topic = format!("ps/{prefix}/d{device}");
            tokio::spawn(publish_until_silent(server, topic, device))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    let (status, exit_took) = tokio::task::spawn_blocking(move || {
        let status = gw.terminate();
        (status, signalled.elapsed())
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        exit_took < Duration::from_secs(5),
        "exit took {exit_took:?}"
    );

    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    for device in load {
        let (payloads, others) = device.await.unwrap();
        acked.extend(payloads);
        refused.extend(others);
    }
    assert!(
        acked.len() > 100,
        "only {} publishes acknowledged",
        acked.len()
    );
    let mut delivered = HashSet::new();
    while let Some(message) = subscriber.next_within(Duration::from_secs(2)).await {
        delivered.insert(String::from_utf8(message.payload.to_vec()).unwrap());
        if acked.is_subset(&delivered) {
            break;
        }
    }
    let lost: Vec<&String> = acked.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not at the broker: {lost:?}"
    );
    // Under load before the signal nothing is refused; after it, new
    // requests are refused (5.03) while in-flight ones are answered.
    let early: Vec<_> = refused.iter().filter(|(_, at)| *at < signalled).collect();
    assert!(early.is_empty(), "refused before SIGTERM: {early:?}");
    eprintln!(
        "{} publishes acknowledged by {DEVICES} devices, all at the broker; {} refused after \
         SIGTERM ({:?}); exit {exit_took:?} after SIGTERM",
        acked.len(),
        refused.len(),
        refused
            .iter()
            .map(|(code, _)| *code)
            .collect::<HashSet<_>>()
    );
}

fn run_bin(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn help_documents_every_flag_and_its_default() {
    let out = run_bin(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // The long help: a flag's line, then its description up to the next flag.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") || trimmed.starts_with("-V,") {
            let flag = trimmed
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap()
                .trim_end_matches(',')
                .to_owned();
            blocks.push((flag, String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(trimmed);
            text.push(' ');
        }
    }
    let flags: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for flag in [
        "--udp",
        "--dtls",
        "--psk-file",
        "--broker",
        "--mqtt-session",
        "--mqtt-version",
        "--mqtt-username",
        "--mqtt-password",
        "--connection-required",
        "--heartbeat",
        "--notify-type",
        "--publish-qos",
        "--subscribe-qos",
        "--mountpoint",
        "--auth-file",
        "--max-block-size",
        "--max-body-size",
        "--max-queued-notifications",
        "--auth-cache-ttl",
        "--observe-idle-lifetime",
        "--presence-node",
        "--shutdown-grace",
        "--config",
        "--print-config",
        "--http",
        "--log",
        "--log-format",
    ] {
        assert!(flags.contains(&flag), "{flag} missing from --help:\n{help}");
    }
    for (flag, text) in &blocks {
        let informational = ["--help", "--version"].contains(&flag.as_str());
        assert!(
            text.len() > 20 || informational,
            "{flag}: thin help {text:?}"
        );
        let states_default =
            text.to_ascii_lowercase().contains("default") || text.contains("Off unless given");
        let exempt = ["--config", "--print-config", "--help", "--version"].contains(&flag.as_str());
        assert!(
            states_default || exempt,
            "{flag} does not state its default: {text}"
        );
    }
    // Every key has a flag now: no list of file-only keys.
    assert!(!help.contains("Config-file-only"), "{help}");
}

#[test]
fn former_file_only_keys_have_flags_and_environment_variables() {
    let out = Command::new(BIN)
        .args([
            "--print-config",
            "--mqtt-username",
            "gw",
            "--auth-cache-ttl",
            "1m",
            "--observe-idle-lifetime",
            "1h",
        ])
        .env_remove("RUST_LOG")
        .env("COAP_EMQX_MQTT_PASSWORD", "hunter2-secret")
        .env("COAP_EMQX_PRESENCE_NODE", "node-7")
        .env("COAP_EMQX_SHUTDOWN_GRACE", "250ms")
        .env("COAP_EMQX_MQTT_USERNAME", "loses-to-the-flag")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let config: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(config["mqtt_password"].as_str(), Some("***"));
    assert_eq!(config["mqtt_username"].as_str(), Some("gw"));
    assert_eq!(config["auth_cache_ttl"].as_str(), Some("1m"));
    assert_eq!(config["observe_idle_lifetime"].as_str(), Some("1h"));
    assert_eq!(config["presence_node"].as_str(), Some("node-7"));
    assert_eq!(config["shutdown_grace"].as_str(), Some("250ms"));

    // The password given as a flag is redacted as well, and the help never
    // shows an environment variable's secret value.
    let out = run_bin(&["--print-config", "--mqtt-password", "hunter2-secret"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let out = Command::new(BIN)
        .arg("--help")
        .env("COAP_EMQX_MQTT_PASSWORD", "hunter2-secret")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("COAP_EMQX_MQTT_PASSWORD"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

/// docs/configuration.md's EMQX flag table is generated from `--help`
/// (crates/gateway-kit/tools/help_to_markdown.py); this fails when a flag
/// is missing there or listed with another environment variable or default.
#[test]
fn configuration_reference_matches_help() {
    let help = String::from_utf8(run_bin(&["--help"]).stdout).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let begin = doc
        .find("<!-- BEGIN generated from `coap-emqx-gateway --help` -->")
        .expect("no generated block for coap-emqx-gateway");
    let end = doc[begin..].find("<!-- END generated").unwrap() + begin;
    let block = &doc[begin..end];
    let regenerate = "run crates/gateway-kit/tools/help_to_markdown.py (see docs/configuration.md)";
    let tag = |text: &str, name: &str| {
        let start = text.find(&format!("[{name}: "))? + name.len() + 3;
        let len = text[start..].find(']')?;
        Some(text[start..start + len].trim_end_matches('=').to_owned())
    };
    let mut flags = 0;
    let mut lines = help.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(flag) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let flag = flag.split_whitespace().next().unwrap();
        if flag == "help" || flag == "version" {
            continue;
        }
        let mut text = String::new();
        while let Some(next) = lines.peek() {
            let next = next.trim_start();
            if next.starts_with("--") || next.starts_with("-h,") || next.starts_with("-V,") {
                break;
            }
            text.push_str(lines.next().unwrap());
        }
        let row = block
            .lines()
            .find(|l| {
                l.starts_with(&format!("| `--{flag} ")) || l.starts_with(&format!("| `--{flag}`"))
            })
            .unwrap_or_else(|| panic!("--{flag} is not in docs/configuration.md; {regenerate}"));
        let env = tag(&text, "env").unwrap();
        assert!(
            row.contains(&format!("| `{env}` |")),
            "--{flag} env {env}: {row}; {regenerate}"
        );
        if let Some(default) = tag(&text, "default") {
            assert!(
                row.contains(&format!("| `{default}` |"))
                    || row.contains(&format!("| {default} |")),
                "--{flag} default {default}: {row}; {regenerate}"
            );
        }
        flags += 1;
    }
    let rows = block.lines().filter(|l| l.starts_with("| `--")).count();
    assert_eq!(
        rows, flags,
        "docs list flags that --help does not; {regenerate}"
    );
    assert!(flags >= 26, "{help}");
}

#[test]
fn print_config_redacts_secrets_and_bad_files_name_line_and_key() {
    let dir = TempDir::new("ops-cfg");
    let file = dir.file(
        "gw.toml",
        "broker = \"mqtt://127.0.0.1:1\"\nmqtt_username = \"gw\"\nmqtt_password = \"hunter2-secret\"\n",
    );
    let out = run_bin(&[
        "--config",
        file.to_str().unwrap(),
        "--print-config",
        "--heartbeat",
        "12s",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let config: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(config["mqtt_password"].as_str(), Some("***"));
    assert_eq!(config["mqtt_username"].as_str(), Some("gw"));
    assert_eq!(config["heartbeat"].as_str(), Some("12s"));
    assert_eq!(config["max_queued_notifications"].as_integer(), Some(100));

    let check = |name: &str, content: &str, line_no: &str, key: &str| {
        let bad = dir.file(name, content);
        let out = run_bin(&["--config", bad.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        let line = lines[0];
        assert!(line.starts_with("coap-emqx-gateway: "), "{line}");
        assert!(
            line.contains(name) && line.contains(line_no) && line.contains(key),
            "{line}"
        );
    };
    check(
        "unknown.toml",
        "udp = \"127.0.0.1:0\"\n\nhartbeat = \"5s\"\n",
        "line 3",
        "hartbeat",
    );
    check(
        "type.toml",
        "udp = \"127.0.0.1:0\"\nmax_queued_notifications = \"many\"\n",
        "line 2",
        "max_queued_notifications",
    );
    check(
        "value.toml",
        "# comment\nheartbeat = \"5 fortnights\"\n",
        "line 2",
        "heartbeat",
    );
}

/// `--dtls-idle-timeout` reaches the configuration, and a value out of range
/// is a one-line error before anything is bound.
#[test]
fn dtls_idle_timeout_flag() {
    let out = run_bin(&["--print-config", "--dtls-idle-timeout", "90s"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("dtls_idle_timeout = \"1m30s\"")
            || printed.contains("dtls_idle_timeout = \"90s\""),
        "{printed}"
    );
    let out = run_bin(&["--udp", "127.0.0.1:0", "--dtls-idle-timeout", "1s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("dtls_idle_timeout 1s: must be from 10s to 7d"),
        "{stderr}"
    );
}
