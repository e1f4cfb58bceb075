//! Measures handshakes/s and request/response round trips/s of our
//! `DtlsClient` on loopback, against our `DtlsSocket` (echo) or against
//! libcoap's `coap-server-openssl` (CoAP GET on its DTLS port). Not a test:
//! figures depend on the machine.
//!
//! ```text
//! cargo run --release -p coap-dtls --example loopback_bench -- ours
//! cargo run --release -p coap-dtls --example loopback_bench -- ours-openssl
//! cargo run --release -p coap-dtls --example loopback_bench -- libcoap
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_dtls::{ClientConfig, DtlsClient, DtlsConnector, DtlsSocket, ServerConfig};

const IDENTITY: &[u8] = b"bench";
const KEY: &[u8] = b"bench-secret";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let target = std::env::args().nth(1).unwrap_or_else(|| "ours".into());
    let handshakes: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let requests: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);

    let (addr, _server, _child) = match target.as_str() {
        "ours" | "ours-openssl" => {
            let mut keys = HashMap::new();
            keys.insert(IDENTITY.to_vec(), KEY.to_vec());
            let mut config = ServerConfig::new(Arc::new(keys));
            // `ours-openssl`: established sessions stay on OpenSSL's record
            // layer (no compact sessions), for comparison.
            config.compact_sessions = target == "ours";
            let socket = Arc::new(
                DtlsSocket::bind("127.0.0.1:0".parse().unwrap(), config)
                    .await
                    .unwrap(),
            );
            let echo = Arc::clone(&socket);
            tokio::spawn(async move {
                while let Ok(dg) = echo.recv().await {
                    // Answer like a CoAP server would: an ACK of the same
                    // size class.
                    let _ = echo.send_to(dg.peer, &dg.bytes).await;
                }
            });
            (socket.local_addr(), Some(socket), None)
        }
        "libcoap" => {
            let port = free_udp_port();
            let child: Child = Command::new("coap-server-openssl")
                .args([
                    "-A",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-k",
                    "bench-secret",
                    "-v",
                    "0",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("coap-server-openssl (Debian libcoap3-bin) must be installed");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let addr: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
            (addr, None, Some(KillOnDrop(child)))
        }
        other => panic!("unknown target {other}: use ours, ours-openssl or libcoap"),
    };

    let connector = DtlsConnector::new(ClientConfig::new(IDENTITY, KEY)).unwrap();

    // Sequential handshakes (each: ClientHello, HVR, ClientHello+cookie,
    // ServerHello flight, client flight, server Finished).
    let started = Instant::now();
    for _ in 0..handshakes {
        let mut client = DtlsClient::connect(&connector, addr).await.unwrap();
        client.close().await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{target}: {handshakes} sequential handshakes in {elapsed:.2?}: {:.0} handshakes/s",
        handshakes as f64 / elapsed.as_secs_f64()
    );

    // Parallel handshakes from 8 tasks.
    let started = Instant::now();
    let per_task = handshakes / 8;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let mut client = DtlsClient::connect(&connector, addr).await.unwrap();
                    client.close().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{target}: {} handshakes from 8 parallel clients in {elapsed:.2?}: {:.0} handshakes/s",
        per_task * 8,
        (per_task * 8) as f64 / elapsed.as_secs_f64()
    );

    // Request/response over one established session.
    let mut client = DtlsClient::connect(&connector, addr).await.unwrap();
    let started = Instant::now();
    for n in 0..requests {
        let request = coap_get(n as u16);
        client.send(&request).await.unwrap();
        let reply = client
            .recv_timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("reply");
        assert!(reply.len() >= 4);
    }
    let elapsed = started.elapsed();
    println!(
        "{target}: {requests} sequential requests over one session in {elapsed:.2?}: {:.0} requests/s",
        requests as f64 / elapsed.as_secs_f64()
    );

    // Request/response over 8 sessions in parallel.
    let started = Instant::now();
    let per_task = requests / 8;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut client = DtlsClient::connect(&connector, addr).await.unwrap();
                for n in 0..per_task {
                    client.send(&coap_get(n as u16)).await.unwrap();
                    client
                        .recv_timeout(Duration::from_secs(2))
                        .await
                        .unwrap()
                        .expect("reply");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{target}: {} requests over 8 parallel sessions in {elapsed:.2?}: {:.0} requests/s",
        per_task * 8,
        (per_task * 8) as f64 / elapsed.as_secs_f64()
    );
    if let Some(server) = _server {
        println!("{target}: server stats {:?}", server.stats());
    }
}

/// CoAP CON GET / with message id `mid` and a 2-byte token (RFC 7252 §3).
fn coap_get(mid: u16) -> Vec<u8> {
    let [a, b] = mid.to_be_bytes();
    vec![0x42, 0x01, a, b, a, b]
}

fn free_udp_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if port < 65_000 && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
