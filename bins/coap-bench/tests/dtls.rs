//! `load` and `request` over DTLS-PSK against libcoap's `coap-server-openssl`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use support::{assert_latency_ordered, free_port, load_json, run, start_libcoap, u};

const KEY: &str = "bench-secret";

#[test]
fn load_and_request_over_dtls_psk() {
    let port = free_port(true);
    let uri = format!("coaps://127.0.0.1:{}/time", port + 1);
    let _server = start_libcoap(
        "coap-server-openssl",
        port,
        &["-k", KEY],
        &[&uri, "-u", "bench", "-k", KEY],
    );
    let summary = load_json(&[
        &uri,
        "-u",
        "bench",
        "-k",
        KEY,
        "--requests",
        "1000",
        "--clients",
        "4",
    ]);
    assert_eq!(summary["sockets"], 4, "one session per client: {summary}");
    assert_eq!(summary["responses_by_code"]["2.05"], 1000, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
    assert_latency_ordered(&summary);

    // Per-client identities and a hex-written key (the same bytes).
    let hex_key: String = KEY.bytes().map(|b| format!("{b:02x}")).collect();
    let summary = load_json(&[
        &uri,
        "-u",
        "dev{client}@tenant",
        "-k",
        &format!("hex:{hex_key}"),
        "--non",
        "--requests",
        "300",
        "--clients",
        "3",
    ]);
    assert_eq!(summary["responses_by_code"]["2.05"], 300, "{summary}");

    let output = run(&["request", &uri, "-u", "bench", "-k", KEY]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("2.05 Content"));

    // A wrong key never completes the handshake: a clear error, on time.
    let output = run(&[
        "load",
        &uri,
        "-u",
        "bench",
        "-k",
        "wrong",
        "--handshake-timeout",
        "1s",
        "--duration",
        "1s",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("handshake"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn load_over_dtls_against_the_gnutls_server() {
    // A second, independent DTLS stack on the server side.
    let port = free_port(true);
    let uri = format!("coaps://127.0.0.1:{}/time", port + 1);
    let _server = start_libcoap(
        "coap-server-gnutls",
        port,
        &["-k", KEY],
        &[&uri, "-u", "bench", "-k", KEY],
    );
    let summary = load_json(&[
        &uri,
        "-u",
        "bench",
        "-k",
        KEY,
        "--requests",
        "500",
        "--clients",
        "2",
    ]);
    assert_eq!(summary["responses_by_code"]["2.05"], 500, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");
}
