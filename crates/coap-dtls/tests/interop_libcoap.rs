//! Interop with two independent real DTLS stacks: libcoap's
//! `coap-client-openssl` and `coap-client-gnutls` (Debian `libcoap3-bin`)
//! against our `DtlsSocket`, with a tiny CoAP responder built by hand in the
//! test (this crate knows nothing of CoAP).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use coap_dtls::{DtlsSocket, ServerConfig};
use support::{IDENTITY, KEY, store};

/// A parsed CoAP request: just what the responder needs (RFC 7252 §3).
struct Request {
    confirmable: bool,
    code: u8,
    message_id: [u8; 2],
    token: Vec<u8>,
    observe: bool,
    payload: Vec<u8>,
}

fn parse_request(bytes: &[u8]) -> Option<Request> {
    let first = *bytes.first()?;
    if first >> 6 != 1 {
        return None;
    }
    let kind = (first >> 4) & 0x3;
    let tkl = (first & 0x0f) as usize;
    let code = *bytes.get(1)?;
    let message_id = [*bytes.get(2)?, *bytes.get(3)?];
    let token = bytes.get(4..4 + tkl)?.to_vec();
    let mut rest = bytes.get(4 + tkl..)?;
    let mut number = 0u32;
    let mut observe = false;
    while let Some(&byte) = rest.first() {
        if byte == 0xff {
            rest = &rest[1..];
            break;
        }
        rest = &rest[1..];
        let mut ext = |nibble: u8| -> Option<u32> {
            Some(match nibble {
                13 => {
                    let v = u32::from(*rest.first()?) + 13;
                    rest = &rest[1..];
                    v
                }
                14 => {
                    let v = u32::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])) + 269;
                    rest = &rest[2..];
                    v
                }
                n => u32::from(n),
            })
        };
        let delta = ext(byte >> 4)?;
        let len = ext(byte & 0x0f)? as usize;
        number += delta;
        let value = rest.get(..len)?;
        if number == 6 && value.iter().all(|&b| b == 0) {
            observe = true;
        }
        rest = &rest[len..];
    }
    Some(Request {
        confirmable: kind == 0,
        code,
        message_id,
        token,
        observe,
        payload: rest.to_vec(),
    })
}

/// A response: `kind` 2 = ACK (piggybacked), 1 = NON notification.
fn response(
    kind: u8,
    code: u8,
    message_id: [u8; 2],
    token: &[u8],
    observe: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![
        0x40 | (kind << 4) | token.len() as u8,
        code,
        message_id[0],
        message_id[1],
    ];
    out.extend_from_slice(token);
    if let Some(seq) = observe {
        out.push(0x61); // Observe (6), length 1
        out.push(seq);
    }
    if !payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(payload);
    }
    out
}

/// Serves until dropped: GET → 2.05 "hello <identity>", POST → 2.04 echoing
/// the payload, GET+Observe → 2.05 then `notifications` NON notifications.
async fn start_responder(notifications: u8) -> (Arc<DtlsSocket>, SocketAddr) {
    let mut config = ServerConfig::new(store());
    config.identity_hint = Some(b"coap-dtls test".to_vec());
    let socket = Arc::new(
        DtlsSocket::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap(),
    );
    let addr = socket.local_addr();
    let server = Arc::clone(&socket);
    tokio::spawn(async move {
        let mut next_mid: u16 = 0x7000;
        while let Ok(dg) = server.recv().await {
            let Some(req) = parse_request(&dg.bytes) else {
                continue;
            };
            if !req.confirmable || req.code == 0 {
                continue;
            }
            let identity = String::from_utf8_lossy(&dg.identity).into_owned();
            match req.code {
                0x01 if req.observe => {
                    let ack = response(2, 0x45, req.message_id, &req.token, Some(1), b"n=1");
                    server.send_to(dg.peer, &ack).await.unwrap();
                    for n in 2..=notifications {
                        next_mid = next_mid.wrapping_add(1);
                        let body = format!("n={n}");
                        let note = response(
                            1,
                            0x45,
                            next_mid.to_be_bytes(),
                            &req.token,
                            Some(n),
                            body.as_bytes(),
                        );
                        server.send_to(dg.peer, &note).await.unwrap();
                    }
                }
                0x01 => {
                    let body = format!("hello {identity}");
                    let ack = response(2, 0x45, req.message_id, &req.token, None, body.as_bytes());
                    server.send_to(dg.peer, &ack).await.unwrap();
                }
                0x02 => {
                    let body = format!(
                        "{identity} posted {}",
                        String::from_utf8_lossy(&req.payload)
                    );
                    let ack = response(2, 0x44, req.message_id, &req.token, None, body.as_bytes());
                    server.send_to(dg.peer, &ack).await.unwrap();
                }
                _ => {
                    let ack = response(2, 0x85, req.message_id, &req.token, None, b"");
                    server.send_to(dg.peer, &ack).await.unwrap();
                }
            }
        }
    });
    (socket, addr)
}

async fn run_client(binary: &'static str, args: Vec<String>) -> Output {
    let path = format!("/usr/bin/{binary}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install the Debian package libcoap3-bin (scripts/test.sh does)"
    );
    tokio::task::spawn_blocking(move || Command::new(&path).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn args(addr: SocketAddr, key: &[u8], extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-u".to_owned(),
        String::from_utf8(IDENTITY.to_vec()).unwrap(),
        "-k".to_owned(),
        String::from_utf8(key.to_vec()).unwrap(),
        "-B".to_owned(),
        "5".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("coaps://{addr}/test"));
    args
}

async fn get_and_post(binary: &'static str) {
    let (socket, addr) = start_responder(1).await;
    let out = run_client(binary, args(addr, KEY, &[])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello sensor1@DEFAULT_TENANT"),
        "{binary} GET: stdout {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_client(
        binary,
        args(addr, KEY, &["-m", "post", "-e", "{\"temp\":5}"]),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sensor1@DEFAULT_TENANT posted {\"temp\":5}"),
        "{binary} POST: stdout {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = socket.stats();
    assert_eq!(stats.handshakes_completed, 2, "{stats:?}");
    assert!(stats.hello_verify_requests_sent >= 2, "{stats:?}");
    // Both sessions ran on the compact record layer after the handshake.
    assert_eq!(stats.sessions_compacted, 2, "{stats:?}");
    println!("{binary}: {stats:?}");
}

async fn wrong_key_fails(binary: &'static str) {
    let (socket, addr) = start_responder(1).await;
    let out = run_client(binary, args(addr, b"not-the-key", &["-B", "2"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("hello"),
        "{binary} with a wrong key got an answer: {stdout:?}"
    );
    let stats = socket.stats();
    assert_eq!(stats.handshakes_completed, 0, "{stats:?}");
    assert!(stats.handshakes_started >= 1, "{stats:?}");
}

async fn observe_200(binary: &'static str) {
    let (socket, addr) = start_responder(200).await;
    let out = run_client(binary, args(addr, KEY, &["-s", "2", "-w"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let received = (1..=200)
        .filter(|n| stdout.lines().any(|l| l.trim() == format!("n={n}")))
        .count();
    assert_eq!(
        received,
        200,
        "{binary} observe: got {received} of 200 notifications; stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = socket.stats();
    assert_eq!(stats.handshakes_completed, 1, "{stats:?}");
    assert_eq!(stats.sessions_compacted, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_get_and_post() {
    get_and_post("coap-client-openssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnutls_client_get_and_post() {
    get_and_post("coap-client-gnutls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_wrong_key_fails() {
    wrong_key_fails("coap-client-openssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnutls_client_wrong_key_fails() {
    wrong_key_fails("coap-client-gnutls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_200_notifications_over_one_session() {
    observe_200("coap-client-openssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnutls_client_200_notifications_over_one_session() {
    observe_200("coap-client-gnutls").await;
}

/// libcoap's `-l LIST` fails to send the listed datagrams: 2 is the
/// ClientHello with the cookie, 3 the client's key exchange flight. The real
/// stack must retransmit (after its 1 s timer) and our server must take the
/// retransmissions.
async fn lost_client_flights(binary: &'static str) {
    let (socket, addr) = start_responder(1).await;
    let started = std::time::Instant::now();
    let out = run_client(binary, args(addr, KEY, &["-l", "2,3"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello sensor1@DEFAULT_TENANT"),
        "{binary} with lost flights: stdout {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = socket.stats();
    assert_eq!(stats.handshakes_completed, 1, "{stats:?}");
    println!(
        "{binary} with datagrams 2 and 3 lost: {:?}, {stats:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_recovers_lost_flights() {
    lost_client_flights("coap-client-openssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnutls_client_recovers_lost_flights() {
    lost_client_flights("coap-client-gnutls").await;
}

/// Our client against libcoap's server (OpenSSL build): GET on its DTLS
/// port, 50 requests over one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_libcoap_openssl_server() {
    let path = "/usr/bin/coap-server-openssl";
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: install the Debian package libcoap3-bin (scripts/test.sh does)"
    );
    // libcoap listens on P (plain) and P+1 (DTLS).
    let port = loop {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        if port < 65_000 && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let _server_process = KillOnDrop(
        Command::new(path)
            .args([
                "-A",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-k",
                "hono-secret",
                "-v",
                "0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let connector = support::connector(IDENTITY, KEY);
    // The server needs a moment to bind; the client retransmits meanwhile.
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        coap_dtls::DtlsClient::connect(&connector, server),
    )
    .await;
    let mut client = connected.expect("handshake timed out").expect("handshake");
    for mid in 0..50u16 {
        let [a, b] = mid.to_be_bytes();
        // CON GET / with a 2-byte token.
        client.send(&[0x42, 0x01, a, b, a, b]).await.unwrap();
        let reply = client
            .recv_timeout(std::time::Duration::from_secs(2))
            .await
            .unwrap()
            .expect("reply");
        // ACK, same message id, 2.05 Content.
        assert_eq!(reply[0] >> 4, 0x6, "{reply:?}");
        assert_eq!(reply[1], 0x45, "{reply:?}");
        assert_eq!(&reply[2..4], &[a, b]);
    }
    client.close().await.unwrap();
}

/// Stops the child process even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
