#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Connection mode (`--connection-required`) against the real binary with
//! the embedded broker, driven by libcoap's `coap-client-notls` and a raw
//! UDP client.

mod support;

use std::time::Duration;

use coap_endpoint::coap_codec::{Code, MessageType};
use support::{Gateway, RawClient, coap};

/// Query parameter names: long (`clientid`, ...) or short (`c`, ...).
struct Names {
    clientid: &'static str,
    token: &'static str,
    username: &'static str,
    password: &'static str,
}

const LONG: Names = Names {
    clientid: "clientid",
    token: "token",
    username: "username",
    password: "password",
};
const SHORT: Names = Names {
    clientid: "c",
    token: "t",
    username: "u",
    password: "p",
};

fn auth_file(dir: &support::TempDir) -> String {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    dir.file(
        "auth.toml",
        &format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\n\
             [[acl]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"#\"\n"
        ),
    )
    .to_str()
    .unwrap()
    .to_owned()
}

async fn lifecycle(n: Names) {
    let dir = support::TempDir::new("conn-auth");
    let auth = auth_file(&dir);
    let gw = Gateway::start(&["--connection-required", "--auth-file", &auth]);
    let (c, t, u, p) = (n.clientid, n.token, n.username, n.password);
    let conn = |q: &str| gw.uri(&format!("mqtt/connection?{q}"));

    // Missing clientid: 4.00; bad credentials: 4.01.
    let run = coap(&["-m", "post", &conn(&format!("{u}=alice&{p}=s3cret"))]).await;
    assert_eq!(run.code(), "4.00", "{run:?}");
    let run = coap(&[
        "-m",
        "post",
        &conn(&format!("{c}=dev1&{u}=alice&{p}=wrong")),
    ])
    .await;
    assert_eq!(run.code(), "4.01", "{run:?}");
    // Create: 2.01 with the token as payload.
    let run = coap(&[
        "-m",
        "post",
        &conn(&format!("{c}=dev1&{u}=alice&{p}=s3cret")),
    ])
    .await;
    assert_eq!(run.code(), "2.01", "{run:?}");
    let token = run.payload().to_owned();
    token.parse::<u32>().expect("decimal 32-bit token");
    // Heartbeat: 2.04 (each coap-client run uses a new source port, so
    // this also shows the token is valid from a new port).
    let run = coap(&["-m", "put", &conn(&format!("{c}=dev1&{t}={token}"))]).await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    // Publish with the token.
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "22",
        &gw.uri(&format!("ps/room/temp?{c}=dev1&{t}={token}")),
    ])
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    // Wrong token: 4.01; missing token: 4.00; missing clientid: 4.00.
    let wrong = token.parse::<u32>().unwrap().wrapping_add(1);
    let run = coap(&["-m", "put", &conn(&format!("{c}=dev1&{t}={wrong}"))]).await;
    assert_eq!(run.code(), "4.01", "{run:?}");
    let run = coap(&["-m", "put", &conn(&format!("{c}=dev1"))]).await;
    assert_eq!(run.code(), "4.00", "{run:?}");
    let run = coap(&["-m", "put", &conn(&format!("{t}={token}"))]).await;
    assert_eq!(run.code(), "4.00", "{run:?}");
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "1",
        &gw.uri(&format!("ps/room/temp?{c}=dev1")),
    ])
    .await;
    assert_eq!(run.code(), "4.00", "{run:?}");
    let run = coap(&[
        "-m",
        "post",
        "-e",
        "1",
        &gw.uri(&format!("ps/room/temp?{c}=dev1&{t}={wrong}")),
    ])
    .await;
    assert_eq!(run.code(), "4.01", "{run:?}");
    // Close: 2.02; afterwards the token is invalid.
    let run = coap(&["-m", "delete", &conn(&format!("{c}=dev1&{t}={token}"))]).await;
    assert_eq!(run.code(), "2.02", "{run:?}");
    let run = coap(&["-m", "put", &conn(&format!("{c}=dev1&{t}={token}"))]).await;
    assert_eq!(run.code(), "4.01", "{run:?}");
    // Secrets never reach the log.
    let log = gw.lines().join("\n");
    assert!(!log.contains("s3cret"), "password in the log");
    assert!(!log.contains(&token), "token in the log");
}

#[tokio::test]
async fn create_heartbeat_close_and_errors_with_long_names() {
    lifecycle(LONG).await;
}

#[tokio::test]
async fn create_heartbeat_close_and_errors_with_short_names() {
    lifecycle(SHORT).await;
}

#[tokio::test]
async fn heartbeat_expiry_removes_the_session_and_its_subscriptions() {
    let gw = Gateway::start(&["--connection-required", "--heartbeat", "1s"]);
    let dev = RawClient::new(gw.udp).await;
    let created = dev
        .exchange(dev_request(
            &dev,
            Code::POST,
            "mqtt/connection",
            &["clientid=hb"],
        ))
        .await;
    assert_eq!(created.code, Code::CREATED);
    let token = format!(
        "token={}",
        String::from_utf8(created.payload.to_vec()).unwrap()
    );
    let observe = dev
        .request(Code::GET, b"ob", "ps/hb/t", &["clientid=hb", &token])
        .with_observe(0);
    let answer = dev.exchange(observe).await;
    assert_eq!(answer.code, Code::CONTENT);
    // A publisher with its own session keeps heartbeating.
    let publisher = RawClient::new(gw.udp).await;
    let created = publisher
        .exchange(publisher.request(Code::POST, b"p", "mqtt/connection", &["clientid=pub"]))
        .await;
    let pub_token = format!(
        "token={}",
        String::from_utf8(created.payload.to_vec()).unwrap()
    );
    let publish = |p: &RawClient, body: &'static str| {
        p.request(Code::POST, b"pp", "ps/hb/t", &["clientid=pub", &pub_token])
            .with_payload(body.as_bytes())
    };
    let m = publish(&publisher, "before");
    assert_eq!(publisher.exchange(m).await.code, Code::CHANGED);
    let n = dev.notification(true).await;
    assert_eq!(&n.payload[..], b"before");
    // No request from `hb` for more than 1.5 s: its session ends; the
    // relation ends with a final error notification.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hb = publisher.request(
            Code::PUT,
            b"h",
            "mqtt/connection",
            &["clientid=pub", &pub_token],
        );
        assert_eq!(publisher.exchange(hb).await.code, Code::CHANGED);
    }
    gw.wait_log_async(Duration::from_secs(3), |l| {
        l.contains("session ended") && l.contains("clientid=hb") && l.contains("heartbeat expired")
    })
    .await;
    let last = dev.notification(true).await;
    assert_eq!(
        last.code,
        Code::UNAUTHORIZED,
        "final notification: {last:?}"
    );
    let m = publish(&publisher, "after");
    assert_eq!(publisher.exchange(m).await.code, Code::CHANGED);
    assert!(
        dev.recv_within(Duration::from_millis(300)).await.is_none(),
        "no notification after the session expired"
    );
    let hb = dev.request(Code::PUT, b"h", "mqtt/connection", &["clientid=hb", &token]);
    assert_eq!(dev.exchange(hb).await.code, Code::UNAUTHORIZED);
}

fn dev_request(
    c: &RawClient,
    code: Code,
    path: &str,
    queries: &[&str],
) -> coap_endpoint::coap_codec::Message {
    c.request(code, b"x", path, queries)
}

#[tokio::test]
async fn token_stays_valid_from_a_new_source_port_and_notifications_follow() {
    let gw = Gateway::start(&["--connection-required"]);
    let a = RawClient::new(gw.udp).await;
    let created = a
        .exchange(a.request(Code::POST, b"c", "mqtt/connection", &["c=nat"]))
        .await;
    assert_eq!(created.code, Code::CREATED);
    let token = format!("t={}", String::from_utf8(created.payload.to_vec()).unwrap());
    let answer = a
        .exchange(
            a.request(Code::GET, b"obs", "ps/nat/x", &["c=nat", &token])
                .with_observe(0),
        )
        .await;
    assert_eq!(answer.code, Code::CONTENT);
    // The NAT gave the device a new port.
    let b = RawClient::new(gw.udp).await;
    let hb = b.request(Code::PUT, b"h", "mqtt/connection", &["c=nat", &token]);
    assert_eq!(b.exchange(hb).await.code, Code::CHANGED);
    let publish = b
        .request(Code::POST, b"p", "ps/nat/x", &["c=nat", &token, "q=0"])
        .with_payload(&b"moved"[..]);
    assert_eq!(b.exchange(publish).await.code, Code::CHANGED);
    let n = b.notification(true).await;
    assert_eq!((&n.token[..], &n.payload[..]), (&b"obs"[..], &b"moved"[..]));
    assert!(a.recv_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn observe_needs_clientid_and_token_in_connection_mode() {
    let gw = Gateway::start(&["--connection-required"]);
    let dev = RawClient::new(gw.udp).await;
    let observe = dev.request(Code::GET, b"o", "ps/x", &[]).with_observe(0);
    let answer = dev.exchange(observe).await;
    assert_eq!(answer.code, Code::BAD_REQUEST);
    assert!(answer.observe().is_none());
    let observe = dev
        .request(Code::GET, b"o", "ps/x", &["clientid=x", "token=1"])
        .with_observe(0);
    assert_eq!(dev.exchange(observe).await.code, Code::UNAUTHORIZED);
    // A NON request gets a NON answer.
    let mut non = dev.request(Code::POST, b"n", "ps/x", &[]);
    non.mtype = MessageType::Non;
    dev.send(&non).await;
    let answer = dev.recv().await;
    assert_eq!(
        (answer.mtype, answer.code),
        (MessageType::Non, Code::BAD_REQUEST)
    );
}

/// `METHOD path` with an optional JSON body on the management API.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn management_api_lists_requests_and_kicks_clients() {
    let gw = Gateway::start(&["--connection-required", "--http", "127.0.0.1:0"]);
    let api = gw.http.unwrap();
    let dev = RawClient::new(gw.udp).await;
    let created = dev
        .exchange(dev.request(
            Code::POST,
            b"c",
            "mqtt/connection",
            &["clientid=api-dev", "username=u1"],
        ))
        .await;
    let token = format!(
        "token={}",
        String::from_utf8(created.payload.to_vec()).unwrap()
    );
    let answer = dev
        .exchange(
            dev.request(
                Code::GET,
                b"o",
                "ps/api/t",
                &["clientid=api-dev", &token, "qos=1"],
            )
            .with_observe(0),
        )
        .await;
    assert_eq!(answer.code, Code::CONTENT);

    let (status, body) =
        tokio::task::spawn_blocking(move || http(api, "GET", "/api/clients?like=api", ""))
            .await
            .unwrap();
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = &list["data"];
    assert_eq!(list[0]["clientid"], "api-dev");
    assert_eq!(list[0]["username"], "u1");
    assert_eq!(list[0]["subscriptions"], 1);
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(api, "GET", "/api/clients/api-dev/subscriptions", "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let subs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (subs[0]["filter"].as_str(), subs[0]["qos"].as_u64()),
        (Some("api/t"), Some(1))
    );
    let (status, _) =
        tokio::task::spawn_blocking(move || http(api, "GET", "/api/clients/nobody", ""))
            .await
            .unwrap();
    assert_eq!(status, 404);

    // A CoAP request to the device, answered by it.
    let asking = tokio::task::spawn_blocking(move || {
        http(
            api,
            "POST",
            "/api/clients/api-dev/request",
            r#"{"method":"put","path":"led?mode=on","payload":"1","content_type":"text/plain","timeout_ms":3000}"#,
        )
    });
    let request = dev.recv().await;
    assert_eq!(
        (request.mtype, request.code, &request.payload[..]),
        (MessageType::Con, Code::PUT, &b"1"[..])
    );
    let path: Vec<&[u8]> = request.uri_path().collect();
    assert_eq!(path, [&b"led"[..]]);
    let reply = coap_endpoint::coap_codec::Message::new(
        MessageType::Ack,
        Code::CHANGED,
        request.message_id,
    )
    .with_token(request.token.clone())
    .with_payload(&b"done"[..]);
    dev.send(&reply).await;
    let (status, body) = asking.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["code"].as_str(), answer["payload"].as_str()),
        (Some("2.04"), Some("done"))
    );

    // Kick: 204, the observer gets a final 4.01, the token is gone.
    let (status, _) =
        tokio::task::spawn_blocking(move || http(api, "DELETE", "/api/clients/api-dev", ""))
            .await
            .unwrap();
    assert_eq!(status, 204);
    let last = dev.notification(true).await;
    assert_eq!(last.code, Code::UNAUTHORIZED);
    let hb = dev.request(
        Code::PUT,
        b"h",
        "mqtt/connection",
        &["clientid=api-dev", &token],
    );
    assert_eq!(dev.exchange(hb).await.code, Code::UNAUTHORIZED);
}
