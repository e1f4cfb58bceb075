#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! DTLS-PSK with libcoap's OpenSSL and GnuTLS clients, and the command
//! line: bad flags, unreadable files, a port in use, environment and
//! config file layering, SIGTERM.

mod support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use support::{BIN, Gateway, TempDir, coap_client};

fn psk_file(dir: &TempDir) -> String {
    dir.file(
        "psk.txt",
        "# identity:secret\nsensor1:secret-1\nbinary:hex:00112233445566778899aabbccddeeff\n",
    )
    .to_str()
    .unwrap()
    .to_owned()
}

#[tokio::test]
async fn publish_and_observe_over_dtls_psk() {
    let dir = TempDir::new("dtls");
    let psk = psk_file(&dir);
    let gw = Gateway::start(&["--dtls", "127.0.0.1:0", "--psk-file", &psk]);
    let uri = gw.coaps_uri("ps/dtls/t");
    let observer = {
        let uri = uri.clone();
        tokio::spawn(async move {
            coap_client(
                "coap-client-openssl",
                &[
                    "-u", "sensor1", "-k", "secret-1", "-m", "get", "-s", "3", "-B", "4", &uri,
                ],
            )
            .await
        })
    };
    gw.wait_log_async(Duration::from_secs(10), |l| {
        l.contains("method=GET") && l.contains("ps/dtls/t") && l.contains("code=2.05")
    })
    .await;
    // The PSK identity is the clientid when none is given.
    let line = gw
        .lines()
        .into_iter()
        .find(|l| l.contains("ps/dtls/t"))
        .unwrap();
    assert!(line.contains("peer=sensor1@127.0.0.1:"), "{line}");
    let run = coap_client(
        "coap-client-openssl",
        &[
            "-u", "sensor1", "-k", "secret-1", "-m", "post", "-e", "secure", &uri,
        ],
    )
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
    let run = coap_client(
        "coap-client-gnutls",
        &[
            "-u",
            "sensor1",
            "-k",
            "wrong-key",
            "-B",
            "2",
            "-m",
            "post",
            "-e",
            "x",
            &uri,
        ],
    )
    .await;
    assert!(
        run.responses.is_empty(),
        "wrong key must fail the handshake: {run:?}"
    );
    let observed = observer.await.unwrap();
    let payloads: Vec<&str> = observed
        .responses
        .iter()
        .map(|s| s.payload.as_str())
        .collect();
    assert_eq!(payloads, ["", "secure"], "{observed:?}");
}

#[tokio::test]
async fn dtls_identity_is_the_clientid_in_connection_mode() {
    let dir = TempDir::new("dtls-conn");
    let psk = psk_file(&dir);
    let gw = Gateway::start(&[
        "--dtls",
        "127.0.0.1:0",
        "--psk-file",
        &psk,
        "--connection-required",
    ]);
    let auth = ["-u", "sensor1", "-k", "secret-1"];
    let run = coap_client(
        "coap-client-gnutls",
        &[&auth[..], &["-m", "post", &gw.coaps_uri("mqtt/connection")]].concat(),
    )
    .await;
    assert_eq!(run.code(), "2.01", "{run:?}");
    let token = run.payload().to_owned();
    gw.wait_log(Duration::from_secs(2), |l| {
        l.contains("session started") && l.contains("clientid=sensor1")
    });
    let uri = gw.coaps_uri(&format!("ps/dtls/conn?token={token}"));
    let run = coap_client(
        "coap-client-openssl",
        &[&auth[..], &["-m", "post", "-e", "1", &uri]].concat(),
    )
    .await;
    assert_eq!(run.code(), "2.04", "{run:?}");
}

fn run_bin(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn one_error_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("coap-emqx-gateway: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn bad_flags_files_and_ports_give_one_line_and_a_non_zero_exit() {
    let line = one_error_line(&run_bin(&["--no-such-flag"], &[]));
    assert!(line.contains("--no-such-flag"), "{line}");
    let line = one_error_line(&run_bin(&["--notify-type", "sometimes"], &[]));
    assert!(line.contains("sometimes"), "{line}");
    let line = one_error_line(&run_bin(
        &[
            "--udp",
            "127.0.0.1:0",
            "--auth-file",
            "/nonexistent/auth.toml",
        ],
        &[],
    ));
    assert!(line.contains("/nonexistent/auth.toml"), "{line}");
    let line = one_error_line(&run_bin(
        &[
            "--udp",
            "127.0.0.1:0",
            "--dtls",
            "127.0.0.1:0",
            "--psk-file",
            "/nonexistent/psk",
        ],
        &[],
    ));
    assert!(line.contains("/nonexistent/psk"), "{line}");
    let line = one_error_line(&run_bin(
        &["--udp", "127.0.0.1:0", "--dtls", "127.0.0.1:0"],
        &[],
    ));
    assert!(line.contains("--psk-file"), "{line}");
    let dir = TempDir::new("badauth");
    let plain = dir.file(
        "auth.toml",
        "[[users]]\nusername = \"a\"\npassword = \"plain\"\n",
    );
    let line = one_error_line(&run_bin(
        &[
            "--udp",
            "127.0.0.1:0",
            "--auth-file",
            plain.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(line.contains("auth.toml"), "{line}");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = one_error_line(&run_bin(&["--udp", &addr], &[]));
    assert!(line.contains(&addr) && line.contains("in use"), "{line}");
    let line = one_error_line(&run_bin(&["--broker", "amqp://x"], &[]));
    assert!(line.contains("amqp://x"), "{line}");
}

#[test]
fn flags_over_environment_over_config_file() {
    let dir = TempDir::new("cfg");
    let file = dir.file(
        "gw.toml",
        "heartbeat = \"7s\"\nnotify_type = \"con\"\nmountpoint = \"m/\"\n",
    );
    let out = run_bin(
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--notify-type",
            "non",
        ],
        &[
            ("COAP_EMQX_HEARTBEAT", "9s"),
            ("COAP_EMQX_MOUNTPOINT", "e/"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(config["notify_type"].as_str(), Some("non"), "flag wins");
    assert_eq!(
        config["heartbeat"].as_str(),
        Some("9s"),
        "environment over file"
    );
    assert_eq!(config["mountpoint"].as_str(), Some("e/"));
    assert_eq!(config["udp"].as_str(), Some("0.0.0.0:5683"), "default");
    let bad = dir.file("bad.toml", "heartbeat = \"7 parsecs\"\n");
    let line = one_error_line(&run_bin(&["--config", bad.to_str().unwrap()], &[]));
    assert!(
        line.contains("bad.toml") && line.contains("heartbeat"),
        "{line}"
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_http_reports_health_and_metrics() {
    let mut gw = Gateway::start(&["--http", "127.0.0.1:0"]);
    let run = support::coap(&["-m", "post", "-e", "m", &gw.uri("ps/metrics/x")]).await;
    assert_eq!(run.code(), "2.04");
    let http = gw.http.unwrap();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(http).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("emqx_coap_responses_total{code=\"2.04\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("emqx_coap_publishes_total{qos=\"1\"} 1"),
        "{metrics}"
    );
    let status = gw.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}
