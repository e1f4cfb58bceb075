#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! The operations HTTP server over a real TCP connection.

use std::net::SocketAddr;
use std::time::Duration;

use gateway_kit::axum::extract::{Path, State};
use gateway_kit::axum::routing::{get, post};
use gateway_kit::axum::{Json, Router};
use gateway_kit::{
    ApiError, BROKER_RTT_BUCKETS, HttpServer, MetricsRegistry, Readiness, Shutdown, ShutdownReason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection, read until the server closes it.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("server did not close the connection")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[derive(Clone)]
struct Clients(Vec<&'static str>);

fn api() -> Router {
    Router::new()
        .route(
            "/api/clients",
            get(|State(c): State<Clients>| async move { Json(c.0) }),
        )
        .route(
            "/api/clients/{clientid}/request",
            post(
                |State(c): State<Clients>,
                 Path(id): Path<String>,
                 Json(body): Json<serde_json::Value>| async move {
                    if !c.0.contains(&id.as_str()) {
                        return Err(ApiError::not_found(format!("no client {id}")));
                    }
                    Ok(Json(
                        serde_json::json!({ "client": id, "method": body["method"] }),
                    ))
                },
            ),
        )
        // A route that tries to shadow a built-in: the built-in must win.
        .route("/healthz", get(|| async { "shadowed" }))
        .with_state(Clients(vec!["dev-1", "dev-2"]))
}

#[tokio::test]
async fn serves_metrics_health_readiness_and_api() {
    let metrics = MetricsRegistry::new();
    let requests = metrics
        .counter(
            "coap_requests_total",
            "CoAP requests by code",
            &[("code", "2.04")],
        )
        .unwrap();
    let rtt = metrics
        .histogram(
            "broker_round_trip_seconds",
            "Broker round trip",
            &[],
            BROKER_RTT_BUCKETS,
        )
        .unwrap();
    requests.inc_by(3);
    rtt.observe_duration(Duration::from_millis(3));

    let readiness = Readiness::new();
    let udp = readiness.flag("udp listener");
    let broker = readiness.flag("broker");
    let shutdown = Shutdown::new();
    let server = HttpServer::new(metrics.clone(), readiness.clone())
        .with_api(api())
        .start("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let reply = request(addr, "GET", "/metrics", "").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        reply.headers
    );
    assert!(
        reply.body.contains("# TYPE coap_requests_total counter\n"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("coap_requests_total{code=\"2.04\"} 3\n"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("broker_round_trip_seconds_bucket{le=\"0.005\"} 1\n"),
        "{}",
        reply.body
    );

    let reply = request(addr, "GET", "/healthz", "").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

    let reply = request(addr, "GET", "/readyz", "").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "not ready: udp listener, broker\n");
    udp.set_ready(true);
    let reply = request(addr, "GET", "/readyz", "").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "not ready: broker\n")
    );
    broker.set_ready(true);
    let reply = request(addr, "GET", "/readyz", "").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ready\n"));

    let reply = request(addr, "GET", "/api/clients", "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&reply.body).unwrap(),
        ["dev-1", "dev-2"]
    );

    let reply = request(
        addr,
        "POST",
        "/api/clients/dev-2/request",
        r#"{"method":"GET"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"client": "dev-2", "method": "GET"})
    );

    let reply = request(
        addr,
        "POST",
        "/api/clients/nobody/request",
        r#"{"method":"GET"}"#,
    )
    .await;
    assert_eq!(reply.status, 404);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json, serde_json::json!({"error": "no client nobody"}));

    let reply = request(addr, "GET", "/no/such/route", "").await;
    assert_eq!(reply.status, 404);

    // Counters update live between scrapes.
    requests.inc();
    let reply = request(addr, "GET", "/metrics", "").await;
    assert!(
        reply
            .body
            .contains("coap_requests_total{code=\"2.04\"} 4\n"),
        "{}",
        reply.body
    );

    // Shutdown: the server stops and the port is released.
    shutdown.trigger(ShutdownReason::Requested);
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn readyz_fails_while_draining_and_metrics_stay_up() {
    let process = Shutdown::new();
    let http_stop = Shutdown::new();
    let readiness = Readiness::new();
    readiness.fail_after(&process);
    let server = HttpServer::new(MetricsRegistry::new(), readiness)
        .start("127.0.0.1:0".parse().unwrap(), http_stop.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(request(addr, "GET", "/readyz", "").await.status, 200);
    process.trigger(ShutdownReason::Terminate);
    let reply = request(addr, "GET", "/readyz", "").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "not ready: shutting down\n")
    );
    assert_eq!(request(addr, "GET", "/metrics", "").await.status, 200);
    http_stop.trigger(ShutdownReason::Requested);
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = HttpServer::new(MetricsRegistry::new(), Readiness::new())
        .start(addr, Shutdown::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_but_slow_handlers_are_not() {
    let slow = Router::new().route(
        "/api/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "done"
        }),
    );
    let running = HttpServer::new(MetricsRegistry::new(), Readiness::new())
        .with_api(slow)
        .with_header_read_timeout(Duration::from_millis(200))
        .start("127.0.0.1:0".parse().unwrap(), Shutdown::new())
        .await
        .unwrap();
    let addr = running.local_addr();
    // Half a request head, then silence: the server ends the connection.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut raw))
        .await
        .expect("a stalled request head kept the connection open")
        .ok();
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"), "{raw:?}");
    // A handler that takes longer than the head timeout still answers.
    let reply = request(addr, "GET", "/api/slow", "").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "done"));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let running = HttpServer::new(MetricsRegistry::new(), Readiness::new())
        .with_max_connections(1)
        .start("127.0.0.1:0".parse().unwrap(), Shutdown::new())
        .await
        .unwrap();
    let addr = running.local_addr();
    // The first connection holds the only slot (connected, nothing sent).
    let holder = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = tokio::spawn(request(addr, "GET", "/healthz", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "second connection served beyond the cap"
    );
    drop(holder);
    let reply = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("second connection never served")
        .unwrap();
    assert_eq!(reply.status, 200);
}
