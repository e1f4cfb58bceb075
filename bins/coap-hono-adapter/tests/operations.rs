//! Operating the binary: the management API on `--http` (list, search,
//! page, kick — a kicked DTLS session no longer works and the device must
//! re-handshake — and command waits), and SIGTERM during a load of CON
//! telemetry (everything acknowledged reached RabbitMQ; exit 0).
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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_dtls::DtlsClient;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use futures_lite::StreamExt as _;
use serde_json::Value;
use support::*;

/// A DTLS-PSK session made with our own client, so the test can keep
/// using it after the kick.
async fn dtls_session(server: SocketAddr, (identity, key): (&str, &str)) -> DtlsClient {
    test_support::dtls::session(server, identity, key).await
}

fn telemetry(message_id: u16, uri: &str, body: &str) -> Vec<u8> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut message = Message::new(MessageType::Con, Code::POST, message_id)
        .with_token(message_id.to_be_bytes().to_vec())
        .with_uri_path(path)
        .with_content_format(ContentFormat::TEXT_PLAIN)
        .with_payload(body.as_bytes().to_vec());
    if !query.is_empty() {
        message = message.with_uri_query(query);
    }
    let mut buf = Vec::new();
    message.encode(&mut buf).unwrap();
    buf
}

/// The first non-empty response on `session` within `limit` (empty ACKs
/// are skipped), or `None`.
async fn response(session: &mut DtlsClient, limit: Duration) -> Option<Message> {
    test_support::dtls::first_response(session, limit).await
}

#[tokio::test]
async fn management_api_lists_searches_pages_and_kicks() {
    let adapter = Adapter::start(REGISTRY, None, &["--http", "127.0.0.1:0"]);
    let http = adapter.http.unwrap();

    // The sensor over DTLS (our client), 4712 over plain UDP (libcoap).
    let mut sensor = dtls_session(adapter.dtls, SENSOR).await;
    sensor.send(&telemetry(1, "t", "one")).await.unwrap();
    let answer = response(&mut sensor, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    let r = run(
        NOTLS,
        args![
            "-m",
            "put",
            "-t",
            "text/plain",
            "-e",
            "x",
            adapter.coap("/t/DEFAULT_TENANT/4712")
        ],
    )
    .await;
    assert_eq!(r.code(), "2.04", "{r:?}");

    let (status, page) = http_json(http, "GET", "/api/clients").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["meta"]["count"], 2, "{page}");
    let sensor_json = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["device_id"] == "4711")
        .unwrap()
        .clone();
    assert_eq!(sensor_json["tenant_id"], TENANT);
    assert_eq!(sensor_json["auth_id"], "sensor1");
    assert_eq!(sensor_json["transport"], "dtls");
    assert_eq!(
        sensor_json["peer"],
        sensor
            .local_addr()
            .unwrap()
            .to_string()
            .replace("0.0.0.0", "127.0.0.1")
    );
    assert_eq!(sensor_json["requests"], 1);
    assert!(sensor_json["idle_ms"].as_u64().unwrap() < 10_000);

    // Search and pages.
    let (_, page) = http_json(http, "GET", "/api/clients?auth_id=sensor").await;
    assert_eq!(page["meta"]["count"], 1, "{page}");
    assert_eq!(page["data"][0]["device_id"], "4711");
    let (_, page) = http_json(http, "GET", "/api/clients?device=471&limit=1&page=2").await;
    assert_eq!(page["meta"]["count"], 2, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["device_id"], "4712", "sorted by device");
    assert_eq!(page["meta"]["hasnext"], false);
    let (_, page) = http_json(http, "GET", "/api/clients?device=471&limit=1").await;
    assert_eq!(page["meta"]["hasnext"], true, "{page}");
    let (_, page) = http_json(http, "GET", "/api/clients?like=nobody").await;
    assert_eq!(page["meta"]["count"], 0);
    let (status, body) = http_json(http, "GET", "/api/clients?limit=0").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"));
    let (status, _) = http_json(http, "GET", "/api/clients/DEFAULT_TENANT/nobody").await;
    assert_eq!(status, 404);
    let (status, one) = http_json(http, "GET", "/api/clients/DEFAULT_TENANT/4712").await;
    assert_eq!((status, &one["transport"]), (200, &Value::from("udp")));

    // The sensor waits for a command: the wait is listed.
    sensor
        .send(&telemetry(2, "t?hono-ttd=20", "waiting"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, subs) = http_json(
            http,
            "GET",
            "/api/clients/DEFAULT_TENANT/4711/subscriptions",
        )
        .await;
        if let Some(first) = subs.as_array().and_then(|a| a.first()) {
            assert_eq!(first["device_id"], "4711", "{subs}");
            assert!(first["remaining_ms"].as_u64().unwrap() > 10_000, "{subs}");
            break;
        }
        assert!(Instant::now() < deadline, "wait never listed: {subs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(
        metrics.contains("\nhono_coap_command_waits 1\n"),
        "{metrics}"
    );

    // Kick: 204, gone from the list, and the old session no longer works.
    let (status, _) = http_request(http, "DELETE", "/api/clients/DEFAULT_TENANT/4711").await;
    assert_eq!(status, 204);
    let (status, _) = http_request(http, "DELETE", "/api/clients/DEFAULT_TENANT/4711").await;
    assert_eq!(status, 404, "kicked twice");
    let (status, _) = http_json(
        http,
        "GET",
        "/api/clients/DEFAULT_TENANT/4711/subscriptions",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        adapter
            .wait_for_log("client kicked", Duration::from_secs(2))
            .await
    );
    // Whatever the waiting request got (its 2.04 may or may not have made
    // it out before the close), a new request over the old session is not
    // answered.
    let _ = response(&mut sensor, Duration::from_millis(300)).await;
    if sensor.send(&telemetry(3, "t", "after kick")).await.is_ok() {
        assert!(
            response(&mut sensor, Duration::from_secs(2))
                .await
                .is_none(),
            "the kicked session still works"
        );
    }
    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(
        metrics.contains("\nhono_coap_command_waits 0\n"),
        "{metrics}"
    );
    // A new handshake works, and the device is listed again.
    let mut again = dtls_session(adapter.dtls, SENSOR).await;
    again.send(&telemetry(4, "t", "new session")).await.unwrap();
    let answer = response(&mut again, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    let (status, one) = http_json(http, "GET", "/api/clients/DEFAULT_TENANT/4711").await;
    assert_eq!(status, 200);
    assert_eq!(one["requests"], 1, "a fresh entry: {one}");
    assert!(
        !adapter
            .stdout()
            .iter()
            .any(|l| l.contains("\"payload\":\"after kick\"")),
        "a request over the kicked session was forwarded"
    );
}

#[tokio::test]
async fn sigterm_during_con_load_loses_no_acknowledged_telemetry() {
    let url = amqp_url();
    let mut adapter = Adapter::start(REGISTRY, Some(&url), &["--shutdown-grace", "3s"]);
    let mut app = App::connect(&url, &adapter.prefix).await;
    let mut consumer = app.consume("telemetry", TENANT).await;
    let udp = adapter.udp();

    // Eight devices, each with one CON request in flight at a time.
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut devices = Vec::new();
    for device in 0..8u16 {
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        devices.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(udp).await.unwrap();
            let mut buf = vec![0u8; 2048];
            for seq in 0..u16::MAX {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let body = format!("d{device}-{seq}");
                let message = Message::new(MessageType::Con, Code::PUT, seq)
                    .with_token(seq.to_be_bytes().to_vec())
                    .with_uri_path("t/DEFAULT_TENANT/4711")
                    .with_content_format(ContentFormat::TEXT_PLAIN)
                    .with_payload(body.clone().into_bytes());
                let mut bytes = Vec::new();
                message.encode(&mut bytes).unwrap();
                if socket.send(&bytes).await.is_err() {
                    return;
                }
                let answer = loop {
                    match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await
                    {
                        Ok(Ok(n)) => {
                            let m = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap();
                            if m.code != Code::EMPTY && m.token[..] == seq.to_be_bytes() {
                                break Some(m);
                            }
                        }
                        // The process is gone (ICMP port unreachable) or silent.
                        Ok(Err(_)) | Err(_) => break None,
                    }
                };
                match answer {
                    Some(m) if m.code == Code::CHANGED => {
                        acknowledged.lock().unwrap().insert(body);
                    }
                    // 5.03 while shutting down, or no answer: this device stops.
                    _ => return,
                }
            }
        }));
    }
    // Let the load run, then SIGTERM in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = Instant::now();
    adapter.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = adapter.wait_exit(Duration::from_secs(10));
        (status, adapter)
    })
    .await
    .unwrap();
    let exited_after = term.elapsed();
    assert_eq!(status.0.code(), Some(0), "{:?}", status.1.log());
    assert!(
        exited_after < Duration::from_secs(5),
        "exit took {exited_after:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in devices {
        d.await.unwrap();
    }

    // Every acknowledged message is at the broker.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut received = HashSet::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        received.insert(String::from_utf8_lossy(&delivery.data).into_owned());
        if acknowledged.is_subset(&received) {
            break;
        }
    }
    eprintln!(
        "acknowledged {}, at the broker {}, exit {exited_after:?} after SIGTERM",
        acknowledged.len(),
        received.len()
    );
    let missing: Vec<_> = acknowledged.difference(&received).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages missing at the broker, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    app.cleanup(&[]).await;
}

/// A minimal HTTP/1.1 request: status and body.
async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    test_support::http::request(addr, method, path).await
}

/// [`http_request`] with the body parsed as JSON.
async fn http_json(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = http_request(addr, method, path).await;
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} {body:?} is not JSON: {e}"));
    (status, value)
}

fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_coap-hono-adapter"));
    command
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    command
}

#[test]
fn bad_config_file_is_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "registry = \"r.json\"\nmax_payload_size = \"lots\"\n",
            "line 2",
            "key `max_payload_size`",
        ),
        (
            "registry = \"r.json\"\n\ndlts = \"0.0.0.0:5684\"\n",
            "line 3",
            "dlts",
        ),
        (
            "confirm_timeout = \"2 fortnights\"\n",
            "line 1",
            "key `confirm_timeout`",
        ),
        ("http = [\n", "line 1", "http"),
    ];
    for (i, (text, line, key)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("adapter-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let output = binary()
            .args(["--config", file.to_str().unwrap(), "--print-config"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{text}: {stderr}");
        assert!(
            stderr.starts_with("coap-hono-adapter: error: config file ")
                && stderr.contains(file.to_str().unwrap())
                && stderr.contains(line)
                && stderr.contains(key),
            "{text}: {stderr}"
        );
    }
}

#[test]
fn help_gives_every_flag_a_default_or_says_it_is_off() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // Split into one block per flag.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") || trimmed.starts_with("-V,") {
            blocks.push((trimmed.to_owned(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(blocks.len() >= 18, "{help}");
    for (flag, text) in &blocks {
        if ["--help", "--version", "--config", "--print-config"]
            .iter()
            .any(|f| flag.contains(f))
        {
            continue;
        }
        assert!(
            text.contains("[default: ")
                || text.contains("Off unless")
                || text.contains("Required")
                || text.contains("Without it")
                || text.contains("Default:"),
            "{flag} says nothing of its default:\n{text}"
        );
        assert!(
            text.contains("[env: COAP_HONO_"),
            "{flag} has no env var:\n{text}"
        );
    }
}

#[test]
fn print_config_shows_every_key_and_hides_the_password() {
    let output = binary()
        .args([
            "--print-config",
            "--amqp",
            "amqp://hono:s3cr3t@rabbit:5672/%2f",
        ])
        .args(["--http", "127.0.0.1:9100"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(
        text.contains("amqp = \"amqp://hono:***@rabbit:5672/%2f\""),
        "{text}"
    );
    let config: toml::Table = toml::from_str(&text).unwrap();
    for key in [
        "dtls",
        "amqp",
        "exchange_prefix",
        "max_payload_size",
        "timeout_to_ack",
        "registry_poll_interval",
        "confirm_timeout",
        "psk_separator",
        "shutdown_grace",
        "max_clients",
        "http",
        "log_format",
    ] {
        assert!(config.contains_key(key), "{key} missing:\n{text}");
    }
}

#[test]
fn configuration_reference_matches_help() {
    let output = binary().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let begin = doc
        .find("<!-- BEGIN generated from `coap-hono-adapter --help` -->")
        .expect("no generated block for coap-hono-adapter");
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
            if next.trim_start().starts_with("--") || next.trim_start().starts_with("-h,") {
                break;
            }
            text.push_str(lines.next().unwrap());
        }
        let row = block
            .lines()
            .find(|l| l.starts_with(&format!("| `--{flag}")))
            .unwrap_or_else(|| panic!("--{flag} is not in docs/configuration.md; {regenerate}"));
        let env = tag(&text, "env").unwrap();
        assert!(
            row.contains(&format!("`{env}`")),
            "--{flag}: {row}; {regenerate}"
        );
        if let Some(default) = tag(&text, "default") {
            assert!(
                row.contains(&format!("`{default}`")),
                "--{flag} default {default}: {row}; {regenerate}"
            );
        }
        flags += 1;
    }
    assert!(flags >= 17, "{help}");
}
