#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! `DELETE /api/clients/{clientid}` of a DTLS client ends the DTLS session
//! too: a request over the old session gets no answer, a new handshake and
//! `POST mqtt/connection` work. Uses our own DTLS client so the test can
//! keep using the old session after the kick.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use coap_dtls::DtlsClient;
use coap_endpoint::coap_codec::{Code, Message, MessageType};
use support::{Gateway, TempDir, http};

async fn dtls_session(server: SocketAddr) -> DtlsClient {
    test_support::dtls::session(server, "sensor1", "secret-1").await
}

/// Sends a CON request over `session`; returns the first non-empty
/// response within `limit`, or `None` (no answer or a closed session).
async fn exchange(
    session: &mut DtlsClient,
    mid: u16,
    path: &str,
    queries: &[&str],
    limit: Duration,
) -> Option<Message> {
    let mut request = Message::new(MessageType::Con, Code::POST, mid)
        .with_token(mid.to_be_bytes().to_vec())
        .with_uri_path(path)
        .with_payload(b"on".to_vec());
    for q in queries {
        request = request.with_uri_query(q);
    }
    if session.send(&request.to_bytes().unwrap()).await.is_err() {
        return None;
    }
    test_support::dtls::first_response(session, limit).await
}

#[tokio::test]
async fn kick_closes_the_dtls_session_and_a_new_handshake_works() {
    let dir = TempDir::new("kick-dtls");
    let psk = dir.file("psk.txt", "sensor1:secret-1\n");
    let gw = Gateway::start(&[
        "--connection-required",
        "--dtls",
        "127.0.0.1:0",
        "--psk-file",
        psk.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ]);
    let api = gw.http.unwrap();
    let dtls = gw.dtls.unwrap();
    let wait = Duration::from_secs(5);

    let mut old = dtls_session(dtls).await;
    let created = exchange(&mut old, 1, "mqtt/connection", &["clientid=sensor1"], wait)
        .await
        .expect("no answer to POST mqtt/connection");
    assert_eq!(created.code, Code::CREATED);
    let token = String::from_utf8(created.payload.to_vec()).unwrap();
    let auth = [
        "clientid=sensor1".to_owned(),
        format!("token={token}"),
        "qos=0".to_owned(),
    ];
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    let published = exchange(&mut old, 2, "ps/kick-dtls/lamp", &auth, wait)
        .await
        .expect("no answer to a publish before the kick");
    assert_eq!(published.code, Code::CHANGED);

    let (status, body) = http(api, "DELETE", "/api/clients/sensor1", "").await;
    assert_eq!(status, 204, "{body}");
    gw.wait_log_async(wait, |l| {
        l.contains("client kicked") && l.contains("dtls_session_closed=true")
    })
    .await;
    let (status, _) = http(api, "GET", "/api/clients/sensor1", "").await;
    assert_eq!(status, 404);

    // The old DTLS session is gone: not even a 4.01 comes back.
    let answer = exchange(
        &mut old,
        3,
        "ps/kick-dtls/lamp",
        &auth,
        Duration::from_millis(700),
    )
    .await;
    assert!(answer.is_none(), "the old session was answered: {answer:?}");

    // A new handshake from the same identity and a new connection work.
    let mut fresh = dtls_session(dtls).await;
    let created = exchange(
        &mut fresh,
        1,
        "mqtt/connection",
        &["clientid=sensor1"],
        wait,
    )
    .await
    .expect("no answer to POST mqtt/connection after the kick");
    assert_eq!(created.code, Code::CREATED);
    let (status, body) = http(api, "GET", "/api/clients/sensor1", "").await;
    assert_eq!(status, 200, "{body}");
}
