//! The binary across a RabbitMQ restart, on a private node of this test
//! (never the shared one): devices get 5.03 (Max-Age 2) while it is down,
//! the adapter recovers by itself, and no event that got a 2.04 is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[macro_use]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use test_support::rabbit::PrivateRabbit;

async fn send_event(adapter: &Adapter, client: &str, body: &str) -> ClientRun {
    run_wait(
        client,
        8,
        args![psk(SENSOR), "-m", "post", "-e", body, adapter.coaps("/e")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_gives_503_then_recovers_without_losing_events() {
    let rabbit = PrivateRabbit::new("hono-adapter-rabbit-", "honoadapter");
    tokio::task::block_in_place(|| rabbit.start());
    let url = rabbit.url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &["--http", "127.0.0.1:0"]);
    let http = adapter.http.unwrap();
    let adapter = Arc::new(adapter);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    for i in 0..5 {
        let body = format!("before-{i}");
        let r = send_event(&adapter, OPENSSL, &body).await;
        assert_eq!(r.code(), "2.04", "{r:?}");
        acked.lock().unwrap().push(body);
    }
    assert_eq!(http_status(http, "/readyz").await, 200);

    // Devices keep sending events the whole time; every 2.04 is recorded.
    let stop_sending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (adapter, acked, stop) = (adapter.clone(), acked.clone(), stop_sending.clone());
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = format!("during-{i}");
                let client = if i % 2 == 0 { OPENSSL } else { GNUTLS };
                let r = send_event(&adapter, client, &body).await;
                if r.code() == "2.04" {
                    acked.lock().unwrap().push(body);
                }
                codes.push(r.code());
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    tokio::task::block_in_place(|| rabbit.stop());
    // down: CON requests get 5.03 with Max-Age 2, readiness fails
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = run(
            OPENSSL,
            args![psk(SENSOR), "-m", "post", "-e", "t", adapter.coaps("/t")],
        )
        .await;
        if r.code() == "5.03" {
            assert_eq!(r.option_values("Max-Age"), vec!["2"], "{r:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 5.03 while the broker is down: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = send_event(&adapter, GNUTLS, "refused").await;
    assert_eq!(r.code(), "5.03", "{r:?}");
    assert_eq!(http_status(http, "/readyz").await, 503);

    tokio::task::block_in_place(|| rabbit.start());
    // recovers by itself
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send_event(&adapter, OPENSSL, "after-0").await;
        if r.code() == "2.04" {
            acked.lock().unwrap().push("after-0".to_owned());
            break;
        }
        assert!(Instant::now() < deadline, "adapter did not recover: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_sending.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = sender.await.unwrap();
    assert!(codes.iter().any(|c| c == "5.03"), "{codes:?}");
    assert!(
        codes.iter().all(|c| c == "2.04" || c == "5.03"),
        "{codes:?}"
    );
    for i in 1..4 {
        let body = format!("after-{i}");
        let r = send_event(&adapter, GNUTLS, &body).await;
        assert_eq!(r.code(), "2.04", "{r:?}");
        acked.lock().unwrap().push(body);
    }
    assert_eq!(http_status(http, "/readyz").await, 200);

    // every acknowledged event is in the durable queue
    let app = App::connect(&url, &adapter.prefix).await;
    let mut events = app
        .consume_queue(&format!("{}.event.{TENANT}", adapter.prefix))
        .await;
    let mut got = Vec::new();
    while let Some(d) = next(&mut events, Duration::from_millis(500)).await {
        got.push(String::from_utf8(d.data.clone()).unwrap());
    }
    let acked = acked.lock().unwrap().clone();
    for body in &acked {
        assert!(
            got.contains(body),
            "acknowledged event {body} lost; got {got:?}"
        );
    }
    assert!(!got.contains(&"refused".to_owned()));
    // telemetry routes again through the re-declared topology
    let mut app = app;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "t-after",
            adapter.coaps("/t")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert_eq!(expect(&mut telemetry).await.data, b"t-after");
    drop(adapter);
    app.cleanup(&[]).await;
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    test_support::http::request(addr, "GET", path).await.0
}
