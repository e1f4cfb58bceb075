#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! libcoap's `coap-client-notls` (Debian libcoap3-bin) against the
//! `echo_server` example over real UDP sockets.

mod echo;

use echo::{EchoServer, run_client};

const CLIENT: &str = "coap-client-notls";

fn uri(server: &EchoServer, path: &str) -> String {
    format!("coap://{}{}", server.udp, path)
}

fn client(args: &[&str]) -> echo::ClientRun {
    let run = run_client(CLIENT, args);
    assert!(run.success, "{CLIENT} {args:?} failed: {}", run.stderr);
    run
}

#[test]
fn get_post_put_delete() {
    let server = EchoServer::start(&[]);
    let echo = uri(&server, "/echo");
    let run = client(&["-B", "5", "-m", "post", "-e", "hello", &echo]);
    assert_eq!(run.stdout.trim_end(), "hello");
    let run = client(&["-B", "5", "-m", "put", "-e", "put-body", &echo]);
    assert_eq!(run.stdout.trim_end(), "put-body");

    let item = uri(&server, "/store/item");
    client(&["-B", "5", "-m", "put", "-e", "stored-value", &item]);
    let run = client(&["-B", "5", "-m", "get", &item]);
    assert_eq!(run.stdout.trim_end(), "stored-value");
    client(&["-B", "5", "-m", "delete", &item]);
    let run = run_client(CLIENT, &["-B", "5", "-m", "get", &item]);
    assert!(
        run.stderr.contains("4.04") || run.stdout.contains("4.04"),
        "{} {}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn non_confirmable_request() {
    let server = EchoServer::start(&[]);
    let run = client(&[
        "-B",
        "5",
        "-N",
        "-m",
        "post",
        "-e",
        "non-body",
        &uri(&server, "/echo"),
    ]);
    assert_eq!(run.stdout.trim_end(), "non-body");
}

#[test]
fn observe_delivers_notifications() {
    let server = EchoServer::start(&[]);
    let run = client(&["-s", "3", "-B", "5", &uri(&server, "/counter")]);
    // Notifications are the counter values; libcoap prints them back to back.
    let digits: String = run.stdout.chars().filter(char::is_ascii_digit).collect();
    assert!(
        digits.len() >= 3,
        "initial response and at least two notifications: {:?}",
        run.stdout
    );
}

#[test]
fn block2_download_with_small_blocks() {
    let server = EchoServer::start(&[]);
    let run = client(&["-B", "5", "-b", "64", &uri(&server, "/large")]);
    let body = run.stdout.strip_suffix('\n').unwrap_or(&run.stdout);
    assert_eq!(body.len(), 5000);
    assert!(body.starts_with("line 0000 of the large resource"));
}

#[test]
fn block1_upload_with_small_blocks_then_block2_back() {
    let server = EchoServer::start(&[]);
    let dir = std::env::temp_dir().join(format!("coap-endpoint-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body.txt");
    let payload: String = (0..6000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(&file, &payload).unwrap();
    let upload = uri(&server, "/upload");
    let run = client(&[
        "-B",
        "5",
        "-b",
        "64",
        "-m",
        "post",
        "-f",
        file.to_str().unwrap(),
        &upload,
    ]);
    assert_eq!(run.stdout.trim_end(), "received 6000 bytes");
    let run = client(&["-B", "5", "-b", "128", &upload]);
    assert_eq!(
        run.stdout.strip_suffix('\n').unwrap_or(&run.stdout),
        payload
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn well_known_core_lists_resources() {
    let server = EchoServer::start(&[]);
    let run = client(&["-B", "5", &uri(&server, "/.well-known/core")]);
    for resource in ["</echo>", "</counter>;obs", "</large>;sz=5000", "</upload>"] {
        assert!(
            run.stdout.contains(resource),
            "{resource} missing in {}",
            run.stdout
        );
    }
}

#[test]
fn slow_handler_gets_a_separate_response() {
    let server = EchoServer::start(&[]);
    let run = client(&["-B", "8", &uri(&server, "/slow")]);
    assert_eq!(run.stdout.trim_end(), "finally");
}
