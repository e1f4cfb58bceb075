//! Command & control through the real binary: devices wait with
//! `hono-ttd`, the application publishes commands on RabbitMQ, the command
//! arrives in the 2.04 (Location-Path/Query, Content-Format, payload), and
//! the device's command response reaches the application.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[macro_use]
mod support;

use std::time::Duration;

use support::*;

/// Starts a client in the background.
fn spawn_client(client: &'static str, args: Vec<String>) -> tokio::task::JoinHandle<ClientRun> {
    tokio::spawn(run_wait(client, 15, args))
}

#[tokio::test]
async fn authenticated_device_gets_one_way_and_request_response_commands() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let mut responses = app.consume("command_response", "app-replies").await;

    // one-way, short names
    let device = spawn_client(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "{\"t\":1}",
            adapter.coaps("/t?hono-ttd=5")
        ],
    );
    let d = expect(&mut telemetry).await;
    assert_eq!(header_int(&d, "ttd"), Some(5));
    app.send_command_when_waiting(
        &Cmd::one_way("4711", "setBrightness", b"{\"brightness\":87}")
            .content_type("application/json"),
    )
    .await;
    let r = device.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert_eq!(
        r.option_values("Location-Query"),
        vec!["hono-command=setBrightness"]
    );
    assert_eq!(r.option_values("Location-Path"), vec!["c"]);
    assert_eq!(
        r.option_values("Content-Format"),
        vec!["application/json"],
        "{r:?}"
    );
    assert_eq!(r.payload, "{\"brightness\":87}");

    // request-response, long names, on an event
    let mut events = app.consume_events(TENANT).await;
    let device = spawn_client(
        GNUTLS,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "ev",
            adapter.coaps("/event?hono-ttd=5")
        ],
    );
    expect(&mut events).await;
    app.send_command_when_waiting(
        &Cmd::one_way("4711", "reboot", b"now").reply("corr-1", "app-replies"),
    )
    .await;
    let r = device.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    let path = r.option_values("Location-Path");
    assert_eq!(path.len(), 2, "{r:?}");
    assert_eq!(path[0], "command_response");
    assert_eq!(
        r.option_values("Location-Query"),
        vec!["hono-command=reboot"]
    );
    assert!(r.option_values("Content-Format").is_empty(), "{r:?}");
    assert_eq!(r.payload, "now");

    // the response, to exactly that Location-Path
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-t",
            "text/plain",
            "-e",
            "done",
            adapter.coaps(&format!("/{}/{}?hono-cmd-status=200", path[0], path[1]))
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut responses).await;
    assert_eq!(d.data, b"done");
    assert_eq!(header_int(&d, "status"), Some(200));
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4711"));
    assert_eq!(header_str(&d, "tenant_id").as_deref(), Some(TENANT));
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-1")
    );
    assert_eq!(
        content_type(&d).as_deref(),
        Some("text/plain; charset=utf-8")
    );

    // invalid responses
    let cases = [
        (format!("/cr/{}", path[1]), "4.00"),
        (format!("/cr/{}?hono-cmd-status=abc", path[1]), "4.00"),
        (format!("/cr/{}?hono-cmd-status=302", path[1]), "4.00"),
        (
            "/cr/not-a-request-id?hono-cmd-status=200".to_owned(),
            "4.00",
        ),
    ];
    for (uri, code) in cases {
        let r = run(
            OPENSSL,
            args![psk(SENSOR), "-m", "post", adapter.coaps(&uri)],
        )
        .await;
        assert_eq!(r.code(), code, "{uri}: {r:?}");
    }
    // NON response
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-N",
            "-m",
            "post",
            adapter.coaps(&format!("/cr/{}?hono-cmd-status=200", path[1]))
        ],
    )
    .await;
    assert_eq!(r.code(), "4.00", "{r:?}");
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn no_waiting_application_and_a_second_command() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let mut responses = app.consume("command_response", "replies").await;

    let device = spawn_client(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "x",
            adapter.coaps("/t?hono-ttd=5")
        ],
    );
    expect(&mut telemetry).await;
    // the telemetry arrived, so the device waits (the adapter binds before
    // forwarding); publish two commands back to back
    let first = Cmd::one_way("4711", "first", b"1").reply("c-1", "replies");
    // the device takes one command per TTD: a second one is answered 503
    // if it still reached this adapter, or returned by the broker if the
    // device had already stopped waiting (a race the test cannot steer)
    let second = Cmd::one_way("4711", "second", b"2").reply("c-2", "replies");
    let (first_routed, routed) = tokio::join!(app.send_command(&first), app.send_command(&second));
    assert!(first_routed, "the device was waiting");
    let r = device.await.unwrap();
    assert_eq!(
        r.option_values("Location-Query"),
        vec!["hono-command=first"]
    );
    if routed {
        let d = expect(&mut responses).await;
        assert_eq!(header_int(&d, "status"), Some(503));
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-2")
        );
    }
    // no longer waiting: the broker returns commands
    assert!(!app.send_command(&Cmd::one_way("4711", "late", b"")).await);

    // a response for an application that is not (or no longer) there: 5.03
    let rid = hono_coap::RequestId {
        correlation_id: "c-9".into(),
        reply_to: "nobody-listens".into(),
    }
    .encode()
    .unwrap();
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            adapter.coaps(&format!("/cr/{rid}?hono-cmd-status=200"))
        ],
    )
    .await;
    assert_eq!(r.code(), "5.03", "{r:?}");
    assert_eq!(r.option_values("Max-Age"), vec!["2"]);
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn unauthenticated_device_commands() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let mut responses = app.consume("command_response", "r").await;

    let device = spawn_client(
        NOTLS,
        args![
            "-m",
            "put",
            "-e",
            "x",
            adapter.coap("/t/DEFAULT_TENANT/4712?hono-ttd=5")
        ],
    );
    expect(&mut telemetry).await;
    app.send_command_when_waiting(&Cmd::one_way("4712", "open", b""))
        .await;
    let r = device.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert_eq!(r.option_values("Location-Path"), vec!["c"]);

    let device = spawn_client(
        NOTLS,
        args![
            "-m",
            "put",
            "-e",
            "x",
            adapter.coap("/telemetry/DEFAULT_TENANT/4712?hono-ttd=5")
        ],
    );
    expect(&mut telemetry).await;
    app.send_command_when_waiting(&Cmd::one_way("4712", "open", b"").reply("k", "r"))
        .await;
    let r = device.await.unwrap();
    let path = r.option_values("Location-Path");
    assert_eq!(path[..3], ["command_response", TENANT, "4712"], "{r:?}");
    let r = run(
        NOTLS,
        args![
            "-m",
            "put",
            "-e",
            "ok",
            adapter.coap(&format!("/{}?hono-cmd-status=204", path.join("/")))
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut responses).await;
    assert_eq!(header_int(&d, "status"), Some(204));
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4712"));
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn gateway_commands_for_one_device_and_for_all_its_devices() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let mut responses = app.consume("command_response", "r").await;

    // for one device
    let gateway = spawn_client(
        GNUTLS,
        args![
            psk(GATEWAY),
            "-m",
            "put",
            "-e",
            "x",
            adapter.coaps("/t//4711?hono-ttd=5")
        ],
    );
    expect(&mut telemetry).await;
    app.send_command_when_waiting(&Cmd::one_way("4711", "blink", b""))
        .await;
    let r = gateway.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert_eq!(r.option_values("Location-Path"), vec!["c", "", "4711"]);
    assert_eq!(
        r.option_values("Location-Query"),
        vec!["hono-command=blink"]
    );

    // 4712 sends through the gateway; then the gateway waits for itself and
    // receives the command for 4712
    let r = run(
        OPENSSL,
        args![
            psk(GATEWAY),
            "-m",
            "put",
            "-e",
            "y",
            adapter.coaps("/t/DEFAULT_TENANT/4712")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    expect(&mut telemetry).await;
    let gateway = spawn_client(
        OPENSSL,
        args![
            psk(GATEWAY),
            "-m",
            "post",
            "-e",
            "z",
            adapter.coaps("/t?hono-ttd=5")
        ],
    );
    expect(&mut telemetry).await;
    app.send_command_when_waiting(
        &Cmd::one_way("4712", "set", b"{}")
            .content_type("application/json")
            .reply("g-1", "r"),
    )
    .await;
    let r = gateway.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    let path = r.option_values("Location-Path");
    assert_eq!(path[..3], ["cr", "", "4712"], "{r:?}");
    assert_eq!(r.option_values("Content-Format"), vec!["application/json"]);
    let r = run(
        GNUTLS,
        args![
            psk(GATEWAY),
            "-m",
            "put",
            adapter.coaps(&format!("/cr//4712/{}?hono-cmd-status=200", path[3]))
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let d = expect(&mut responses).await;
    assert_eq!(header_str(&d, "device_id").as_deref(), Some("4712"));
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("g-1")
    );
    // once answered, nobody waits any more
    assert!(!app.send_command(&Cmd::one_way("4712", "late", b"")).await);
    assert!(!app.send_command(&Cmd::one_way("gw-1", "late", b"")).await);
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn separate_response_when_timeout_to_ack_is_zero() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", "ACKNOW").await;
    let identity = ("d1@ACKNOW", "hono-secret");
    let device = spawn_client(
        OPENSSL,
        args![
            psk(identity),
            "-m",
            "post",
            "-e",
            "x",
            adapter.coaps("/t?hono-ttd=3")
        ],
    );
    expect(&mut telemetry).await;
    app.send_command_when_waiting(&Cmd {
        tenant: "ACKNOW",
        ..Cmd::one_way("d1", "go", b"now")
    })
    .await;
    let r = device.await.unwrap();
    // an empty ACK first, then the response as a separate CON (a
    // piggy-backed one would be an ACK)
    let response = r.response().unwrap();
    assert_eq!(
        (response.mtype.as_str(), response.code.as_str()),
        ("CON", "2.04")
    );
    assert_eq!(r.option_values("Location-Query"), vec!["hono-command=go"]);
    assert_eq!(r.payload, "now");

    // a slow answer: `?piggy` makes ACKNOW use deviceTriggeredTimeoutToAck
    // (5 s), NEVERACK (-1) always piggy-backs, the default (500 ms) does not
    let mut never = app.consume("telemetry", "NEVERACK").await;
    let mut default_telemetry = app.consume("telemetry", TENANT).await;
    let cases = [
        (identity, "/t?hono-ttd=1&piggy", "ACK"),
        (("d1@NEVERACK", "hono-secret"), "/t?hono-ttd=1", "ACK"),
        (SENSOR, "/t?hono-ttd=1", "CON"),
    ];
    let mut runs = Vec::new();
    for (identity, uri, _) in cases {
        runs.push(spawn_client(
            OPENSSL,
            args![psk(identity), "-m", "post", "-e", "x", adapter.coaps(uri)],
        ));
    }
    for ((identity, uri, mtype), r) in cases.into_iter().zip(runs) {
        let r = r.await.unwrap();
        let response = r.response().unwrap();
        assert_eq!(
            (response.mtype.as_str(), response.code.as_str()),
            (mtype, "2.04"),
            "{identity:?} {uri}: {r:?}"
        );
    }
    expect(&mut telemetry).await;
    expect(&mut never).await;
    expect(&mut default_telemetry).await;

    // default tenant (500 ms): a quick answer is piggy-backed
    let r = run(
        OPENSSL,
        args![psk(SENSOR), "-m", "post", "-e", "x", adapter.coaps("/t")],
    )
    .await;
    expect(&mut default_telemetry).await;
    assert_eq!(r.response().unwrap().mtype, "ACK", "{r:?}");
    assert!(!r.pdus.iter().any(|p| p.code == "0.00"), "{r:?}");
    app.cleanup(&[]).await;
}

#[tokio::test]
async fn ttd_without_command_ends_after_the_ttd() {
    let url = amqp_url();
    let adapter = Adapter::start(REGISTRY, Some(&url), &[]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut telemetry = app.consume("telemetry", TENANT).await;
    let started = std::time::Instant::now();
    let r = run(
        OPENSSL,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "x",
            adapter.coaps("/t?hono-ttd=1")
        ],
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert!(r.option_values("Location-Path").is_empty());
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let d = expect(&mut telemetry).await;
    assert_eq!(header_int(&d, "ttd"), Some(1));
    assert!(!app.send_command(&Cmd::one_way("4711", "late", b"")).await);
    app.cleanup(&[]).await;
}
