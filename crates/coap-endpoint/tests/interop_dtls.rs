#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! libcoap's DTLS clients (`coap-client-openssl`, `coap-client-gnutls`:
//! two independent DTLS stacks) against `echo_server --dtls` with PSK.

mod echo;

use echo::{EchoServer, run_client};

const IDENTITY: &str = "sensor-1";
const KEY: &str = "secret-key-1";

fn server() -> EchoServer {
    EchoServer::start(&[
        "--dtls",
        "127.0.0.1:0",
        "--psk",
        &format!("{IDENTITY}:{KEY}"),
        "--psk",
        "other:x",
    ])
}

fn check(tool: &str) {
    let server = server();
    let base = format!("coaps://{}", server.dtls.unwrap());
    let run = |args: &[&str]| {
        let mut all = vec!["-u", IDENTITY, "-k", KEY, "-B", "8"];
        all.extend_from_slice(args);
        let run = run_client(tool, &all);
        assert!(run.success, "{tool} {args:?} failed: {}", run.stderr);
        run
    };
    let post = run(&["-m", "post", "-e", "over-dtls", &format!("{base}/echo")]);
    assert_eq!(post.stdout.trim_end(), "over-dtls");
    let whoami = run(&["-m", "get", &format!("{base}/whoami")]);
    assert!(
        whoami.stdout.starts_with(&format!("{IDENTITY} 127.0.0.1:")),
        "the PSK identity reaches the application: {:?}",
        whoami.stdout
    );
    run(&["-m", "put", "-e", "v", &format!("{base}/store/d")]);
    let get = run(&["-m", "get", &format!("{base}/store/d")]);
    assert_eq!(get.stdout.trim_end(), "v");
    let observe = run(&["-s", "3", &format!("{base}/counter")]);
    let digits: String = observe
        .stdout
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert!(
        digits.len() >= 3,
        "notifications over DTLS: {:?}",
        observe.stdout
    );
    let large = run(&["-b", "256", &format!("{base}/large")]);
    assert_eq!(
        large
            .stdout
            .strip_suffix('\n')
            .unwrap_or(&large.stdout)
            .len(),
        5000
    );

    // A wrong key gets no answer: the records do not decrypt, the
    // handshake fails, nothing reaches the CoAP layer.
    let wrong = run_client(
        tool,
        &[
            "-u",
            IDENTITY,
            "-k",
            "wrong",
            "-B",
            "3",
            "-m",
            "post",
            "-e",
            "never",
            &format!("{base}/echo"),
        ],
    );
    // (libcoap logs its errors on stdout; the echo would be a line "never".)
    assert!(
        !wrong.stdout.lines().any(|line| line.trim() == "never"),
        "{tool} with a wrong key got an answer: {:?}",
        wrong.stdout
    );
}

#[test]
fn openssl_client_get_post_observe_block2() {
    check("coap-client-openssl");
}

#[test]
fn gnutls_client_get_post_observe_block2() {
    check("coap-client-gnutls");
}
