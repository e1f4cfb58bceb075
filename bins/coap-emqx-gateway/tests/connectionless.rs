#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Connectionless mode (the default) against the real binary with the
//! embedded broker: libcoap's `coap-client-notls` where it can express the
//! case, a raw UDP client where message types, empty tokens or RST matter.

mod support;

use std::time::Duration;

use coap_endpoint::coap_codec::{Code, MessageType};
use support::{Gateway, RawClient, TempDir, coap};

#[tokio::test]
async fn publish_and_observe_with_coap_client() {
    let gw = Gateway::start(&[]);
    let uri = gw.uri("ps/coap/test");
    // Observe for 3 s in the background.
    let observer = {
        let uri = uri.clone();
        tokio::spawn(async move { coap(&["-m", "get", "-s", "3", "-B", "4", &uri]).await })
    };
    gw.wait_log_async(Duration::from_secs(5), |l| {
        l.contains("method=GET") && l.contains("ps/coap/test") && l.contains("code=2.05")
    })
    .await;
    let run = coap(&["-m", "post", "-e", "hello", &uri]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    assert!(
        run.stdout
            .lines()
            .all(|l| !l.contains("hello") || l.contains("v:1"))
    );
    let run = coap(&["-m", "post", "-N", "-e", "world", &uri]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    assert_eq!(run.responses[0].mtype, "NON", "NON request, NON answer");
    let observed = observer.await.unwrap();
    let payloads: Vec<&str> = observed
        .responses
        .iter()
        .map(|s| s.payload.as_str())
        .collect();
    assert_eq!(payloads, ["", "hello", "world"], "{observed:?}");
    // Default --notify-type qos: the CON publish became QoS 1 → CON
    // notification; the NON publish QoS 0 → NON notification.
    let types: Vec<&str> = observed
        .responses
        .iter()
        .map(|s| s.mtype.as_str())
        .collect();
    assert_eq!(types, ["ACK", "CON", "NON"], "{observed:?}");
}

#[tokio::test]
async fn retained_message_on_subscribe_and_on_plain_get() {
    let gw = Gateway::start(&[]);
    let uri = gw.uri("ps/ret/1");
    let run = coap(&["-m", "get", &uri]).await;
    assert_eq!(run.code(), "4.04", "{run:?}");
    let run = coap(&["-m", "post", "-e", "kept", &gw.uri("ps/ret/1?retain=true")]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let run = coap(&["-m", "get", &uri]).await;
    assert_eq!((run.code(), run.payload()), ("2.05", "kept"), "{run:?}");
    let run = coap(&["-m", "get", "-s", "1", "-B", "2", &uri]).await;
    assert_eq!(run.responses[0].code, "2.05");
    assert_eq!(run.responses[0].payload, "kept", "{run:?}");
    // A wildcard observe gets the matching retained messages as
    // notifications.
    let dev = RawClient::new(gw.udp).await;
    let answer = dev
        .exchange(
            dev.request(Code::GET, b"w", "ps/ret/+", &[])
                .with_observe(0),
        )
        .await;
    assert_eq!(answer.code, Code::CONTENT);
    assert!(answer.payload.is_empty());
    let n = dev.notification(true).await;
    assert_eq!((n.code, &n.payload[..]), (Code::CONTENT, &b"kept"[..]));
}

#[tokio::test]
async fn method_and_request_errors() {
    let gw = Gateway::start(&[]);
    for (method, path, code) in [
        ("put", "ps/a/b", "4.05"),
        ("delete", "ps/a/b", "4.05"),
        ("get", "mqtt/connection", "4.05"),
        ("post", "ps/a/%2B", "4.00"),
        ("post", "ps/a/%23", "4.00"),
        ("post", "ps/a?qos=5", "4.00"),
        ("post", "ps/a?retain=perhaps", "4.00"),
        ("post", "nothing/here", "4.04"),
        ("post", "mqtt/session", "4.04"),
    ] {
        let run = coap(&["-m", method, "-e", "x", &gw.uri(path)]).await;
        assert_eq!(run.code(), code, "{method} {path}: {run:?}");
        assert!(!run.payload().is_empty(), "diagnostic payload for {code}");
    }
    // Observe without a token: 4.00 (libcoap always sends a token).
    let dev = RawClient::new(gw.udp).await;
    let answer = dev
        .exchange(dev.request(Code::GET, b"", "ps/a", &[]).with_observe(0))
        .await;
    assert_eq!(answer.code, Code::BAD_REQUEST);
    assert_eq!(&answer.payload[..], b"observe needs a token");
}

#[tokio::test]
async fn wildcard_filters_and_unsubscribe() {
    let gw = Gateway::start(&[]);
    let plus = RawClient::new(gw.udp).await;
    let hash = RawClient::new(gw.udp).await;
    assert_eq!(
        plus.exchange(
            plus.request(Code::GET, b"p", "ps/w/+/t", &[])
                .with_observe(0)
        )
        .await
        .code,
        Code::CONTENT
    );
    assert_eq!(
        hash.exchange(
            hash.request(Code::GET, b"h", "ps/w/%23", &[])
                .with_observe(0)
        )
        .await
        .code,
        Code::CONTENT
    );
    let publisher = RawClient::new(gw.udp).await;
    let publish = |topic: &str, body: &'static str| {
        publisher
            .request(Code::POST, b"x", topic, &["qos=0"])
            .with_payload(body.as_bytes())
    };
    assert_eq!(
        publisher.exchange(publish("ps/w/a/t", "one")).await.code,
        Code::CHANGED
    );
    assert_eq!(&plus.notification(true).await.payload[..], b"one");
    assert_eq!(&hash.notification(true).await.payload[..], b"one");
    assert_eq!(
        publisher.exchange(publish("ps/w/a/b/c", "two")).await.code,
        Code::CHANGED
    );
    assert_eq!(&hash.notification(true).await.payload[..], b"two");
    assert!(plus.recv_within(Duration::from_millis(200)).await.is_none());
    // GET with Observe 1: 2.07, no more notifications.
    let answer = plus
        .exchange(
            plus.request(Code::GET, b"p", "ps/w/+/t", &[])
                .with_observe(1),
        )
        .await;
    assert_eq!(answer.code.to_string(), "2.07");
    assert_eq!(
        publisher.exchange(publish("ps/w/z/t", "three")).await.code,
        Code::CHANGED
    );
    assert_eq!(&hash.notification(true).await.payload[..], b"three");
    assert!(plus.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn rst_to_a_notification_removes_the_relation() {
    let gw = Gateway::start(&[]);
    let dev = RawClient::new(gw.udp).await;
    assert_eq!(
        dev.exchange(
            dev.request(Code::GET, b"r", "ps/rst/x", &[])
                .with_observe(0)
        )
        .await
        .code,
        Code::CONTENT
    );
    let publisher = RawClient::new(gw.udp).await;
    let publish = |body: &'static str| {
        publisher
            .request(Code::POST, b"x", "ps/rst/x", &["qos=1"])
            .with_payload(body.as_bytes())
    };
    assert_eq!(publisher.exchange(publish("a")).await.code, Code::CHANGED);
    let n = dev.notification(false).await;
    assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"a"[..]));
    dev.reset(&n).await;
    gw.wait_log_async(Duration::from_secs(3), |l| {
        l.contains("observe relation ended") && l.contains("Reset")
    })
    .await;
    assert_eq!(publisher.exchange(publish("b")).await.code, Code::CHANGED);
    assert!(dev.recv_within(Duration::from_millis(300)).await.is_none());
}

async fn notification_types(notify_type: &str, expect_qos0: MessageType, expect_qos1: MessageType) {
    let gw = Gateway::start(&["--notify-type", notify_type]);
    let dev = RawClient::new(gw.udp).await;
    assert_eq!(
        dev.exchange(
            dev.request(Code::GET, b"n", "ps/nt", &["qos=2"])
                .with_observe(0)
        )
        .await
        .code,
        Code::CONTENT
    );
    let publisher = RawClient::new(gw.udp).await;
    for (qos, expected) in [("qos=0", expect_qos0), ("qos=1", expect_qos1)] {
        let m = publisher
            .request(Code::POST, b"x", "ps/nt", &[qos])
            .with_payload(qos.as_bytes());
        assert_eq!(publisher.exchange(m).await.code, Code::CHANGED);
        let n = dev.notification(true).await;
        assert_eq!(
            (n.mtype, &n.payload[..]),
            (expected, qos.as_bytes()),
            "{notify_type}"
        );
    }
}

#[tokio::test]
async fn notify_type_qos_con_non() {
    tokio::join!(
        notification_types("qos", MessageType::Non, MessageType::Con),
        notification_types("con", MessageType::Con, MessageType::Con),
        notification_types("non", MessageType::Non, MessageType::Non),
    );
}

#[tokio::test]
async fn per_request_authentication_with_an_auth_file() {
    let dir = TempDir::new("auth");
    let hash = bcrypt::hash("pw1", 4).unwrap();
    let auth = dir.file(
        "auth.toml",
        &format!(
            "[[users]]\nusername = \"dev\"\npassword_hash = \"{hash}\"\n\n\
             [[acl]]\npermission = \"allow\"\naction = \"publish\"\ntopic = \"up/${{username}}/#\"\n\n\
             [[acl]]\npermission = \"allow\"\naction = \"subscribe\"\ntopic = \"down/#\"\n"
        ),
    );
    let gw = Gateway::start(&["--auth-file", auth.to_str().unwrap()]);
    for (path, code) in [
        ("ps/up/dev/t", "4.01"),
        ("ps/up/dev/t?username=dev&password=bad", "4.01"),
        ("ps/up/dev/t?username=nobody&password=pw1", "4.01"),
        ("ps/up/dev/t?username=dev&password=pw1", "2.04"),
        ("ps/up/dev/t?u=dev&p=pw1", "2.04"),
        // Not remembered for the peer or the clientid.
        ("ps/up/dev/t?clientid=x", "4.01"),
        // ACL: publish only below up/<username>/.
        ("ps/up/other/t?u=dev&p=pw1", "4.01"),
        ("ps/down/x?u=dev&p=pw1", "4.01"),
    ] {
        let run = coap(&["-m", "post", "-e", "1", &gw.uri(path)]).await;
        assert_eq!(run.code(), code, "{path}: {run:?}");
    }
    let run = coap(&[
        "-m",
        "get",
        "-s",
        "1",
        "-B",
        "2",
        &gw.uri("ps/down/x?u=dev&p=pw1"),
    ])
    .await;
    assert_eq!(run.responses[0].code, "2.05", "{run:?}");
    let run = coap(&[
        "-m",
        "get",
        "-s",
        "1",
        "-B",
        "2",
        &gw.uri("ps/up/dev/t?u=dev&p=pw1"),
    ])
    .await;
    assert_eq!(run.code(), "4.01", "{run:?}");
    let log = gw.lines().join("\n");
    assert!(!log.contains("pw1"), "password in the log");
}

#[tokio::test]
async fn large_payloads_go_block_wise() {
    let gw = Gateway::start(&["--max-block-size", "64"]);
    let body: String = (0..300)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let run = coap(&[
        "-m",
        "post",
        "-b",
        "64",
        "-e",
        &body,
        &gw.uri("ps/big?retain=true"),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let run = coap(&["-m", "get", "-b", "64", &gw.uri("ps/big")]).await;
    assert!(run.responses.len() >= 5, "several blocks: {run:?}");
    assert_eq!(run.code(), "2.05");
    let got: String = run.responses.iter().map(|s| s.payload.as_str()).collect();
    assert_eq!(got, body);
}
