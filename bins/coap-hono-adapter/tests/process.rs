//! The binary as an operator runs it: flags and their errors, the stdout
//! downstream, registry reloads (SIGHUP and file change), the HTTP
//! endpoints, and a graceful shutdown that answers in-flight requests.
//! None of these need a broker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[macro_use]
mod support;

use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn binary() -> Process {
    let mut command = Process::new(env!("CARGO_BIN_EXE_coap-hono-adapter"));
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn bad_flags_and_files_end_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, REGISTRY).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"tenants\": [").unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let registry = registry.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--bogus"], 2, "--bogus"),
        (
            vec!["--registry", registry, "--dtls", "nowhere"],
            2,
            "nowhere",
        ),
        (
            vec!["--registry", registry, "--timeout-to-ack", "soon"],
            2,
            "soon",
        ),
        (vec![], 1, "--registry"),
        (
            vec!["--registry", "/does/not/exist.json"],
            1,
            "/does/not/exist.json",
        ),
        (vec!["--registry", broken.to_str().unwrap()], 1, "line 1"),
        (vec!["--registry", registry, "--dtls", &taken], 1, &taken),
        (
            vec![
                "--registry",
                registry,
                "--dtls",
                "127.0.0.1:0",
                "--insecure-udp",
                &taken,
            ],
            1,
            &taken,
        ),
        (
            vec![
                "--registry",
                registry,
                "--dtls",
                "127.0.0.1:0",
                "--amqp",
                "http://x",
            ],
            1,
            "AMQP URL",
        ),
    ];
    for (args, code, needle) in cases {
        let output = binary().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("coap-hono-adapter: ") && last.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn print_config_layers_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adapter.toml");
    std::fs::write(
        &file,
        "registry = \"/from/file.json\"\nexchange_prefix = \"file\"\nmax_payload_size = \"4KiB\"\n",
    )
    .unwrap();
    let output = binary()
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .args([
            "--exchange-prefix",
            "flag",
            "--amqp",
            "amqp://u:secret@h:5672/%2f",
        ])
        .env("COAP_HONO_TIMEOUT_TO_ACK", "-1")
        .env("COAP_HONO_EXCHANGE_PREFIX", "env")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("registry = \"/from/file.json\""), "{text}");
    assert!(text.contains("exchange_prefix = \"flag\""), "{text}");
    assert!(text.contains("timeout_to_ack = \"-1\""), "{text}");
    assert!(text.contains("max_payload_size = \"4KiB\""), "{text}");
    assert!(text.contains("dtls = \"0.0.0.0:5684\""), "{text}");
    assert!(!text.contains("secret"), "password shown: {text}");
}

#[tokio::test]
async fn stdout_downstream_and_registry_reload() {
    let registry = REGISTRY.replace(
        "{\"tenant-id\": \"DEFAULT_TENANT\", \"device-id\": \"4712\", \"via\": [\"gw-1\"]},",
        "",
    );
    assert_ne!(registry, REGISTRY);
    let adapter = Adapter::start(&registry, None, &["--http", "127.0.0.1:0"]);
    let r = run(
        NOTLS,
        args![
            "-m",
            "put",
            "-e",
            "one",
            adapter.coap("/t/DEFAULT_TENANT/4711")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    // stdout gets one JSON line per message
    let line = wait_for_stdout(&adapter, "\"payload\":\"one\"").await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["device_id"], "4711");
    assert_eq!(json["type"], "telemetry");
    assert_eq!(json["orig_address"], "/t/DEFAULT_TENANT/4711");

    // 4712 is not registered yet
    let put_4712 = args![
        "-m",
        "put",
        "-e",
        "two",
        adapter.coap("/t/DEFAULT_TENANT/4712")
    ];
    assert_eq!(run(NOTLS, put_4712.clone()).await.code(), "4.04");
    // a broken file is reported and the previous registry kept
    std::fs::write(&adapter.registry_path, "{ not json").unwrap();
    adapter.signal("HUP");
    assert!(
        adapter
            .wait_for_log("device registry not reloaded", Duration::from_secs(5))
            .await
    );
    assert_eq!(run(NOTLS, put_4712.clone()).await.code(), "4.04");
    assert_eq!(
        run(
            NOTLS,
            args![
                "-m",
                "put",
                "-e",
                "x",
                adapter.coap("/t/DEFAULT_TENANT/4711")
            ]
        )
        .await
        .code(),
        "2.04"
    );
    // the fixed file is picked up without a signal (file watch)
    std::fs::write(&adapter.registry_path, REGISTRY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = run(NOTLS, put_4712.clone()).await.code();
        if code == "2.04" {
            break;
        }
        assert!(Instant::now() < deadline, "registry never reloaded: {code}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // HTTP: health, readiness, metrics
    let http = adapter.http.unwrap();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("hono_coap_responses_total{code=\"2.04\"}"),
        "{metrics}"
    );
    let count = |code: &str| -> u64 {
        let key = format!("hono_coap_responses_total{{code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count("2.04") >= 3, "{metrics}");
    assert!(count("4.04") >= 2, "{metrics}");
    assert!(
        metrics.contains("hono_coap_messages_forwarded_total{kind=\"telemetry\"}"),
        "{metrics}"
    );
    // endpoint and DTLS statistics are copied once a second
    let r = run(
        OPENSSL,
        args![psk(SENSOR), "-m", "post", "-e", "d", adapter.coaps("/t")],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");
    let gauge = |metrics: &str, key: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = http_get(http, "/metrics").await;
        if gauge(&metrics, "dtls_handshakes_total{result=\"completed\"} ") >= 1
            && gauge(&metrics, "coap_datagrams_in_total{listener=\"udp\"} ") >= 4
            && gauge(&metrics, "coap_datagrams_in_total{listener=\"dtls\"} ") >= 1
            && gauge(
                &metrics,
                "coap_requests_total{listener=\"udp\",method=\"PUT\"} ",
            ) >= 4
            && gauge(
                &metrics,
                "coap_requests_total{listener=\"dtls\",method=\"POST\"} ",
            ) >= 1
            && gauge(&metrics, "hono_coap_clients ") >= 1
        {
            // The stdout downstream accepted the telemetry: round trips seen.
            assert!(
                gauge(
                    &metrics,
                    "hono_coap_broker_round_trip_seconds_count{kind=\"telemetry\"} "
                ) >= 3,
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_answers_waiting_requests_and_exits_zero() {
    let mut adapter = Adapter::start(REGISTRY, None, &[]);
    let device = tokio::spawn(run_wait(
        OPENSSL,
        20,
        args![
            psk(SENSOR),
            "-m",
            "post",
            "-e",
            "waiting",
            adapter.coaps("/t?hono-ttd=15")
        ],
    ));
    wait_for_stdout(&adapter, "\"payload\":\"waiting\"").await;
    let started = Instant::now();
    adapter.signal("TERM");
    let r = device.await.unwrap();
    assert_eq!(r.code(), "2.04", "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    let status = tokio::task::spawn_blocking(move || {
        let status = adapter.wait_exit(Duration::from_secs(10));
        (status, adapter)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{:?}", status.1.log());
}

async fn wait_for_stdout(adapter: &Adapter, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = adapter.stdout().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        assert!(Instant::now() < deadline, "no stdout line with {needle}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    test_support::http::request(addr, "GET", path).await
}
