//! `load` and `request` against libcoap's `coap-server-notls`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use support::{Guard, assert_latency_ordered, free_port, load_json, run, start_libcoap, u};

fn server() -> (Guard, u16) {
    let port = free_port(false);
    let probe = format!("coap://127.0.0.1:{port}/time");
    let guard = start_libcoap("coap-server-notls", port, &[], &[&probe]);
    (guard, port)
}

#[test]
fn con_and_non_gets_are_counted_as_2_05() {
    let (_server, port) = server();
    let uri = format!("coap://127.0.0.1:{port}/time");
    for mtype in ["--con", "--non"] {
        let summary = load_json(&[&uri, mtype, "--requests", "3000", "--clients", "16"]);
        assert_eq!(u(&summary, "responses"), 3000, "{summary}");
        assert_eq!(summary["responses_by_code"]["2.05"], 3000, "{summary}");
        assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
        assert_latency_ordered(&summary);
    }
    let root = format!("coap://127.0.0.1:{port}/");
    let summary = load_json(&[&root, "--duration", "500ms", "--warmup", "200ms"]);
    assert!(u(&summary, "responses") > 10, "{summary}");
    assert_eq!(
        summary["responses_by_code"]["2.05"], summary["responses"],
        "{summary}"
    );
}

#[test]
fn open_loop_rate_is_roughly_kept() {
    let (_server, port) = server();
    let uri = format!("coap://127.0.0.1:{port}/time");
    let summary = load_json(&[&uri, "--rate", "2000", "--duration", "1s", "--clients", "8"]);
    let sent = u(&summary, "requests_sent");
    // Loose bounds only: the machine may be busy.
    assert!((1000..=2100).contains(&sent), "{summary}");
    assert!(u(&summary, "responses") >= 1000, "{summary}");
    assert_eq!(summary["requested_rate"], 2000.0);
    assert_eq!(summary["mode"], "open");
    assert_latency_ordered(&summary);
}

#[test]
fn unknown_resource_counts_4_04() {
    let (_server, port) = server();
    let uri = format!("coap://127.0.0.1:{port}/no/such/resource");
    let summary = load_json(&[&uri, "--requests", "100"]);
    assert_eq!(summary["responses_by_code"]["4.04"], 100, "{summary}");
}

#[test]
fn request_prints_the_response() {
    let (_server, port) = server();
    let output = run(&["request", &format!("coap://127.0.0.1:{port}/")]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("2.05 Content\n"), "{stdout}");
    assert!(stdout.contains("libcoap"), "{stdout}");

    let output = run(&[
        "request",
        "--non",
        &format!("coap://127.0.0.1:{port}/.well-known/core"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("2.05 Content\n"), "{stdout}");
    assert!(stdout.contains("Content-Format (12): 40"), "{stdout}");
    assert!(stdout.contains("</time>"), "{stdout}");

    let output = run(&["request", &format!("coap://127.0.0.1:{port}/missing")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("4.04 Not Found"), "{stdout}");
}

#[test]
fn request_times_out_with_status_3() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("coap://{}/x", silent.local_addr().unwrap());
    let output = run(&["request", "--timeout", "300ms", &uri]);
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no response"));
}

#[test]
fn observe_registers_and_counts_time_notifications() {
    let (_server, port) = server();
    // libcoap's /time is observable and notifies once a second.
    let uri = format!("coap://127.0.0.1:{port}/time");
    let summary = load_json(&[&uri, "--observe", "3", "--duration", "2200ms"]);
    let observe = &summary["observe"];
    assert_eq!(observe["registered"], 3, "{summary}");
    assert_eq!(observe["registration_failed"], 0, "{summary}");
    assert!(
        observe["notifications_per_observer_min"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_eq!(summary["responses_by_code"]["2.05"], 3, "{summary}");
}

#[test]
fn observe_fan_out_with_timestamped_publishes() {
    let port = free_port(false);
    let probe = format!("coap://127.0.0.1:{port}/time");
    // -d: PUT creates observable resources that notify on every update.
    let _server = start_libcoap("coap-server-notls", port, &["-d", "10"], &[&probe]);
    let topic = format!("coap://127.0.0.1:{port}/bench-topic");
    let created = run(&["request", "-m", "put", "-e", "first", &topic]);
    assert!(String::from_utf8_lossy(&created.stdout).starts_with("2.01"));
    let summary = load_json(&[
        &topic,
        "--observe",
        "5",
        "--publish-rate",
        "100",
        "--method",
        "put",
        "--non",
        "--duration",
        "1s",
    ]);
    let observe = &summary["observe"];
    assert_eq!(observe["registered"], 5, "{summary}");
    let publish = &summary["publish"];
    let published = publish["responses_by_code"]["2.04"].as_u64().unwrap();
    assert!(published >= 50, "{summary}");
    // Every observer sees (nearly) every update; NON notifications on
    // loopback are not lost in practice, but allow a little slack.
    let min = observe["notifications_per_observer_min"].as_u64().unwrap();
    assert!(min * 10 >= published * 9, "{summary}");
    let with_ts = observe["notifications_with_timestamp"].as_u64().unwrap();
    assert_eq!(
        with_ts,
        observe["notifications"].as_u64().unwrap(),
        "{summary}"
    );
    let delivery = &observe["delivery_latency_us"];
    assert!(delivery["p50"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        delivery["p50"].as_u64() <= delivery["max"].as_u64(),
        "{summary}"
    );
}
