//! Telemetry and events through the real binary: libcoap clients (OpenSSL,
//! GnuTLS, no-TLS) on the device side, RabbitMQ (`AMQP_URL`) and lapin on
//! the application side. Hono's own CoAP integration cases, one adapter per
//! test (unique exchange prefix), run concurrently.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[macro_use]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

#[tokio::test]
async fn telemetry_via_post_with_psk_arrives_with_headers() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;

    // 60 messages: both DTLS stacks, short and long names, 10 at a time.
    let mut sent = HashSet::new();
    for batch in 0..6 {
        let mut runs = Vec::new();
        for i in 0..10 {
            let n = batch * 10 + i;
            let client = if n % 2 == 0 { OPENSSL } else { GNUTLS };
            let path = if n % 3 == 0 { "/telemetry" } else { "/t" };
            let body = format!("{{\"n\":{n}}}");
            sent.insert(body.clone());
            let args = args![
                psk(SENSOR),
                "-m",
                "post",
                "-t",
                "application/json",
                "-e",
                body,
                adapter.coaps(path)
            ];
            runs.push(tokio::spawn(run(client, args)));
        }
        for r in runs {
            let r = r.await.unwrap();
            assert_eq!(r.code(), "2.04", "{r:?}");
        }
    }
    let mut received = HashSet::new();
    for _ in 0..60 {
        let d = expect(&mut telemetry).await;
        assert_eq!(header_str(&d, "device_id").as_deref(), Some("4711"));
        assert_eq!(header_str(&d, "tenant_id").as_deref(), Some(TENANT));
        assert_eq!(header_str(&d, "orig_adapter").as_deref(), Some("hono-coap"));
        let orig = header_str(&d, "orig_address").unwrap();
        assert!(orig == "/t" || orig == "/telemetry", "{orig}");
        assert_eq!(header_int(&d, "qos"), Some(1));
        assert!(header_int(&d, "creation-time").unwrap() > 1_700_000_000_000);
        assert_eq!(header_str(&d, "gateway_id"), None);
        assert_eq!(content_type(&d).as_deref(), Some("application/json"));
        assert_eq!(*d.properties.delivery_mode(), Some(1));
        assert!(d.properties.message_id().is_some());
        assert!(d.properties.timestamp().is_some());
        received.insert(String::from_utf8(d.data.clone()).unwrap());
    }
    assert_eq!(received, sent);
    assert!(
        next(&mut telemetry, Duration::from_millis(200))
            .await
            .is_none()
    );

    // NON telemetry is QoS 0.
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-N",
            "-m",
            "post",
            "-e",
            "non",
            adapter.coaps("/t")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut telemetry).await;
    assert_eq!(header_int(&d, "qos"), Some(0));
    // no Content-Format: the device's default content type
    assert_eq!(content_type(&d).as_deref(), Some("application/json"));
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn unauthenticated_devices_and_gateways() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;

    // unauthenticated PUT on the insecure port
    let r = run(
        NOTLS,
        args![
            "-m",
            "put",
            "-e",
            "plain",
            adapter.coap("/t/DEFAULT_TENANT/4712")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut telemetry).await;
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4712"));
    assert_eq!(header_str(&d, "gateway_id"), None);
    assert_eq!(
        header_str(&d, "orig_address").as_deref(),
        Some("/t/DEFAULT_TENANT/4712")
    );
    assert_eq!(
        content_type(&d).as_deref(),
        Some("application/octet-stream")
    );
    // POST without identity: 4.01
    let r = run(NOTLS, args!["-m", "post", "-e", "x", adapter.coap("/t")]).await;
    assert_eq!(r.code(), "4.01", "{r:?}");
    // missing tenant for an unauthenticated device: 4.04
    let r = run(
        NOTLS,
        args!["-m", "put", "-e", "x", adapter.coap("/t//4712")],
    )
    .await;
    assert_eq!(r.code(), "4.04", "{r:?}");

    // gateway with tenant and with empty tenant, both DTLS stacks
    for (client, path) in [
        (OPENSSL, "/t/DEFAULT_TENANT/4711"),
        (GNUTLS, "/t//4711"),
        (OPENSSL, "/telemetry//4712"),
    ] {
        let r = run(
            client,
            args![psk(GATEWAY), "-m", "put", "-e", "gw", adapter.coaps(path)],
        )
        .await;
        assert_eq!(r.code(), "2.04", "{path}: {r:?}");
        let d = expect(&mut telemetry).await;
        assert_eq!(header_str(&d, "gateway_id").as_deref(), Some("gw-1"));
        assert_eq!(header_str(&d, "orig_address").as_deref(), Some(path));
    }
    // refusals
    let cases: [((&str, &str), &str, &str); 6] = [
        // gw-2 is not in 4711's via
        (("gw2@DEFAULT_TENANT", "gw-secret"), "/t//4711", "4.03"),
        // gw-off is in via but disabled
        (("gwoff@DEFAULT_TENANT", "gw-secret"), "/t//4711", "4.03"),
        // another tenant in the URI
        (GATEWAY, "/t/OTHER/4711", "4.03"),
        // disabled device (authenticates, then 4.04)
        (("off1@DEFAULT_TENANT", "hono-secret"), "/t", "4.04"),
        // adapter not enabled for the tenant
        (("d1@NOADAPTER", "hono-secret"), "/t", "4.03"),
        // gateway for a disabled device
        (GATEWAY, "/t//dev-off", "4.04"),
    ];
    let mut runs = Vec::new();
    for (identity, path, code) in cases {
        let method = if path == "/t" { "post" } else { "put" };
        let args = args![psk(identity), "-m", method, "-e", "x", adapter.coaps(path)];
        runs.push((path, code, tokio::spawn(run(OPENSSL, args))));
    }
    for (path, code, r) in runs {
        let r = r.await.unwrap();
        assert_eq!(r.code(), code, "{path}: {r:?}");
    }
    assert!(
        next(&mut telemetry, Duration::from_millis(200))
            .await
            .is_none()
    );
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn wrong_psk_fails_the_handshake() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let (a, b) = tokio::join!(
        run_wait(
            OPENSSL,
            2,
            args![
                psk((SENSOR.0, "wrong")),
                "-m",
                "post",
                "-e",
                "x",
                adapter.coaps("/t")
            ],
        ),
        run_wait(
            GNUTLS,
            2,
            args![
                psk(("nobody@DEFAULT_TENANT", "hono-secret")),
                "-m",
                "post",
                "-e",
                "x",
                adapter.coaps("/t")
            ],
        ),
    );
    assert_eq!(a.code(), "none", "{a:?}");
    assert_eq!(b.code(), "none", "{b:?}");
    assert!(
        next(&mut telemetry, Duration::from_millis(200))
            .await
            .is_none()
    );
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn payload_rules_size_limit_and_resources() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;

    // empty message with a Content-Format: forwarded with that type
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-t",
            "text/plain",
            adapter.coaps("/t")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut telemetry).await;
    assert!(d.data.is_empty());
    assert_eq!(
        content_type(&d).as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // empty notification
    let r = run(
        OPENSSL,
        args![psk(SENSOR), "-m", "post", adapter.coaps("/t?empty")],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut telemetry).await;
    assert_eq!(
        content_type(&d).as_deref(),
        Some("application/vnd.eclipse-hono-empty-notification")
    );

    let big = "x".repeat(4096);
    let cases = [
        // empty body without Content-Format or ?empty
        (
            args![psk(SENSOR), "-m", "post", adapter.coaps("/t")],
            "4.00",
        ),
        // ?empty with a body
        (
            args![
                psk(SENSOR),
                "-m",
                "post",
                "-e",
                "x",
                adapter.coaps("/t?empty")
            ],
            "4.00",
        ),
        // NON event
        (
            args![
                psk(SENSOR),
                "-N",
                "-m",
                "post",
                "-e",
                "x",
                adapter.coaps("/e")
            ],
            "4.00",
        ),
        // over --max-payload-size (2048)
        (
            args![psk(SENSOR), "-m", "post", "-e", big, adapter.coaps("/t")],
            "4.13",
        ),
        // GET / reveals nothing; unknown resources
        (args![psk(SENSOR), "-m", "get", adapter.coaps("/")], "4.04"),
        (
            args![psk(SENSOR), "-m", "post", "-e", "x", adapter.coaps("/nope")],
            "4.04",
        ),
        // other methods
        (args![psk(SENSOR), "-m", "get", adapter.coaps("/t")], "4.05"),
        (
            args![psk(SENSOR), "-m", "delete", adapter.coaps("/e")],
            "4.05",
        ),
    ];
    let mut runs = Vec::new();
    for (args, code) in cases {
        let label = args.join(" ");
        runs.push((label, code, tokio::spawn(run(OPENSSL, args))));
    }
    for (label, code, r) in runs {
        let r = r.await.unwrap();
        assert_eq!(r.code(), code, "{label}: {r:?}");
        // errors carry a text/plain diagnostic
        assert!(
            r.diagnostic.starts_with(code),
            "{label}: {:?}",
            r.diagnostic
        );
    }
    assert!(
        next(&mut telemetry, Duration::from_millis(200))
            .await
            .is_none()
    );
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn events_wait_for_the_application_and_telemetry_without_consumer_gets_503() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    // no application connected yet
    let r = run(
        GNUTLS,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "kept",
            adapter.coaps("/event")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let r = run(
        OPENSSL,
        args![psk(SENSOR), "-m", "post", "-e", "lost", adapter.coaps("/t")],
    )
    .await;
    assert_eq!(r.code(), "5.03", "{r:?}");
    assert_eq!(r.option_values("Max-Age"), vec!["2"], "{r:?}");
    assert!(r.diagnostic.starts_with("5.03"), "{:?}", r.diagnostic);

    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut events = app.consume_events(TENANT).await;
    let d = expect(&mut events).await;
    assert_eq!(d.data, b"kept");
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(header_str(&d, "orig_address").as_deref(), Some("/event"));
    assert_eq!(header_int(&d, "qos"), Some(1));
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn data_volume_limit_gives_429() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", "LIMITED").await;
    let identity = ("d1@LIMITED", "hono-secret");
    let body = "y".repeat(60);
    let r = run(
        OPENSSL,
        args![
            psk(identity),
            "-m",
            "post",
            "-e",
            &body,
            adapter.coaps("/t")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    expect(&mut telemetry).await;
    let r = run(
        GNUTLS,
        args![
            psk(identity),
            "-m",
            "post",
            "-e",
            &body,
            adapter.coaps("/t")
        ],
    )
    .await;
    assert_eq!(r.code(), "4.29", "{r:?}");
    assert!(
        next(&mut telemetry, Duration::from_millis(200))
            .await
            .is_none()
    );
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn server_time_option() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let _telemetry = app.consume("telemetry", TENANT).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for args in [
        args![
            psk(SENSOR),
            "-O",
            "65000",
            "-m",
            "post",
            "-e",
            "x",
            adapter.coaps("/t")
        ],
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "x",
            adapter.coaps("/t?hono-time")
        ],
        args![
            "-m",
            "put",
            "-e",
            "x",
            adapter.coap("/t/DEFAULT_TENANT/4711?hono-time")
        ],
    ] {
        let client = if args[0] == "-u" { OPENSSL } else { NOTLS };
        let r = run(client, args).await;
        assert_eq!(r.code(), "2.04", "{r:?}");
        let values = r.option_values("65000");
        assert_eq!(values.len(), 1, "{r:?}");
        let millis = decode_escaped_uint(&values[0]);
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(before <= millis && millis <= after, "{millis} {r:?}");
    }
    let r = run(
        OPENSSL,
        args![psk(SENSOR), "-m", "post", "-e", "x", adapter.coaps("/t")],
    )
    .await;
    assert!(r.option_values("65000").is_empty(), "{r:?}");
    app.cleanup(&[]).await;
}

/// Decodes libcoap's printing of an opaque option (`\x01\xA2...`, printable
/// bytes as themselves) as a big-endian unsigned integer.
fn decode_escaped_uint(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut value = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap();
            i += 4;
            u8::from_str_radix(hex, 16).unwrap()
        } else {
            i += 1;
            bytes[i - 1]
        };
        value = (value << 8) | u64::from(byte);
    }
    value
}
