//! The broker references against real brokers: `mqtt-publish` (MQTT_URL)
//! and `amqp-publish` / `amqp-consume` (AMQP_URL).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{BIN, Guard, run, u};

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests through scripts/test.sh, which starts private \
             brokers, or export {name} (e.g. MQTT_URL=mqtt://127.0.0.1:1883, \
             AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f)"
        )
    })
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn json_of(args: &[&str]) -> Value {
    let output = run(args);
    assert!(
        output.status.success(),
        "coap-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn mqtt_publish_qos1_reaches_the_broker() {
    let url = env_url("MQTT_URL");
    let authority = url.trim_start_matches("mqtt://");
    let (host, port) = authority.rsplit_once(':').unwrap();
    let prefix = unique("coap-bench-test");
    // A real subscriber counts what the broker delivers.
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-t",
            &format!("{prefix}/#"),
            "-C",
            "20",
        ])
        .args(["-W", "20", "-F", "%t"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients; scripts/test.sh installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let topic = format!("{prefix}/{{client}}");
    let summary = json_of(&[
        "mqtt-publish",
        &url,
        "--topic",
        &topic,
        "--qos",
        "1",
        "--clients",
        "2",
        "--duration",
        "500ms",
        "--json",
    ]);
    let mut topics = String::new();
    sub.stdout
        .take()
        .unwrap()
        .read_to_string(&mut topics)
        .unwrap();
    let _ = sub.wait();
    assert_eq!(summary["method"], "PUBLISH");
    assert_eq!(summary["type"], "QoS1");
    assert_eq!(summary["clients"], 2);
    let ok = summary["responses_by_code"]["ok"].as_u64().unwrap();
    assert!(ok >= 20, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
    assert_eq!(u(&summary, "requests_sent"), ok, "{summary}");
    assert!(summary["throughput_rps"].as_f64().unwrap() > 0.0);
    assert!(summary["latency_us"]["p50"].as_u64().unwrap() > 0);
    let lines: Vec<&str> = topics.lines().collect();
    assert_eq!(lines.len(), 20, "{topics}");
    assert!(
        lines
            .iter()
            .all(|t| *t == format!("{prefix}/0") || *t == format!("{prefix}/1")),
        "{topics}"
    );
}

#[test]
fn mqtt_publish_rejects_other_schemes() {
    let output = run(&["mqtt-publish", "http://127.0.0.1:1", "-d", "100ms"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("mqtt://HOST:PORT"));
}

#[test]
fn amqp_publish_with_confirms_is_consumed() {
    let url = env_url("AMQP_URL");
    let exchange = unique("coap-bench-test");
    let mut child = Command::new(BIN)
        .args([
            "amqp-consume",
            &url,
            "--exchange",
            &exchange,
            "--routing-key",
            "k",
        ])
        .args(["--auto-delete", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let consumer = Guard(child);
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("amqp-consume ready queue="), "{ready:?}");

    let summary = json_of(&[
        "amqp-publish",
        &url,
        "--exchange",
        &exchange,
        "--routing-key",
        "k",
        "--auto-delete",
        "--clients",
        "4",
        "--duration",
        "500ms",
        "--json",
    ]);
    assert_eq!(summary["type"], "confirm");
    let ok = summary["responses_by_code"]["ok"].as_u64().unwrap();
    assert!(ok > 10, "{summary}");
    assert_eq!(u(&summary, "errors_total"), 0, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");

    // SIGTERM ends the consumer with its count.
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &consumer.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let counted: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(
        counted["messages"].as_u64().unwrap(),
        ok,
        "{counted} vs {summary}"
    );
}

#[test]
fn amqp_publish_without_a_bound_queue_is_refused() {
    let url = env_url("AMQP_URL");
    let exchange = unique("coap-bench-test-unbound");
    let summary = json_of(&[
        "amqp-publish",
        &url,
        "--exchange",
        &exchange,
        "--auto-delete",
        "--duration",
        "200ms",
        "--json",
    ]);
    // Mandatory publishes with nowhere to go come back as returns.
    assert!(
        summary["responses_by_code"].get("ok").is_none(),
        "{summary}"
    );
    assert!(u(&summary, "errors_total") > 0, "{summary}");
    assert_eq!(
        summary["responses_by_code"]["refused"],
        summary["errors_total"]
    );
}
