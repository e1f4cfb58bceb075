//! `load` against `udp-echo`: every reflected request counts as answered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use support::{assert_latency_ordered, load_json, start_echo, u};

#[test]
fn closed_loop_against_echo_answers_every_request() {
    let (_echo, addr) = start_echo();
    let uri = format!("coap://{addr}/bench");
    let summary = load_json(&[
        &uri,
        "--requests",
        "2000",
        "--clients",
        "8",
        "--sockets",
        "4",
    ]);
    assert_eq!(u(&summary, "requests_sent"), 2000, "{summary}");
    assert_eq!(u(&summary, "responses"), 2000, "{summary}");
    // The echo reflects the CON GET itself.
    assert_eq!(summary["responses_by_code"]["0.01"], 2000, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
    assert_eq!(u(&summary, "errors_total"), 0, "{summary}");
    assert_eq!(summary["clients"], 8);
    assert_eq!(summary["sockets"], 4);
    assert_eq!(summary["mode"], "closed");
    assert!(summary["throughput_rps"].as_f64().unwrap() > 0.0);
    assert_latency_ordered(&summary);
}

#[test]
fn duration_run_against_echo_with_non_and_payload() {
    let (_echo, addr) = start_echo();
    let uri = format!("coap://{addr}/ps/bench/{{client}}?clientid=c{{client}}");
    let summary = load_json(&[
        &uri,
        "--duration",
        "1s",
        "--non",
        "--method",
        "post",
        "--payload-size",
        "64",
        "--timestamp",
        "--clients",
        "32",
    ]);
    let sent = u(&summary, "requests_sent");
    assert!(sent > 100, "{summary}");
    assert_eq!(u(&summary, "responses"), sent, "{summary}");
    assert_eq!(summary["responses_by_code"]["0.02"], sent, "{summary}");
    assert_eq!(summary["type"], "NON");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
    assert_latency_ordered(&summary);
}
