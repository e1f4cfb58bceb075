//! The tokio drivers on loopback: our `DtlsClient` against our `DtlsSocket`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use coap_dtls::{DtlsClient, DtlsSocket, SocketError};
use support::*;

async fn echo_server() -> Arc<DtlsSocket> {
    let socket = Arc::new(
        DtlsSocket::bind("127.0.0.1:0".parse().unwrap(), server_config())
            .await
            .unwrap(),
    );
    let server = Arc::clone(&socket);
    tokio::spawn(async move {
        while let Ok(dg) = server.recv().await {
            let mut reply = dg.identity.to_vec();
            reply.extend_from_slice(b": ");
            reply.extend_from_slice(&dg.bytes);
            if server.send_to(dg.peer, &reply).await.is_err() {
                break;
            }
        }
    });
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_exchange_datagrams() {
    let server = echo_server().await;
    let mut client = DtlsClient::connect(&connector(IDENTITY, KEY), server.local_addr())
        .await
        .unwrap();
    for n in 0..20 {
        let msg = format!("ping {n}");
        client.send(msg.as_bytes()).await.unwrap();
        let reply = client
            .recv_timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply.as_ref(),
            format!("sensor1@DEFAULT_TENANT: ping {n}").as_bytes()
        );
    }
    let me = client.local_addr().unwrap();
    let me = std::net::SocketAddr::from(([127, 0, 0, 1], me.port()));
    assert_eq!(server.identity(me).as_deref(), Some(IDENTITY));
    assert_eq!(server.max_plaintext(me), Some(1232 - 29));
    client.close().await.unwrap();
    // The server sees close_notify and drops the session.
    for _ in 0..100 {
        if server.stats().sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = server.stats();
    assert_eq!(stats.sessions, 0, "{stats:?}");
    assert_eq!(stats.sessions_closed, 1);
    assert_eq!(stats.data_in, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_in_parallel_keep_their_identities() {
    let server = echo_server().await;
    let addr = server.local_addr();
    let mut tasks = Vec::new();
    for n in 0..20 {
        tasks.push(tokio::spawn(async move {
            let (identity, key): (&[u8], &[u8]) = if n % 2 == 0 {
                (IDENTITY, KEY)
            } else {
                (b"other", b"other-key")
            };
            let mut client = DtlsClient::connect(&connector(identity, key), addr)
                .await
                .unwrap();
            client.send(format!("{n}").as_bytes()).await.unwrap();
            let reply = client
                .recv_timeout(Duration::from_secs(3))
                .await
                .unwrap()
                .unwrap();
            let mut expected = identity.to_vec();
            expected.extend_from_slice(format!(": {n}").as_bytes());
            assert_eq!(reply.as_ref(), expected.as_slice());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 20, "{stats:?}");
    assert_eq!(stats.sessions, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_coap_to_the_dtls_port_is_dropped() {
    let server = echo_server().await;
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(&[0x40, 0x01, 0x12, 0x34], server.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_millis(200), raw.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "the server answered a plaintext datagram");
    // And the server still serves.
    let mut client = DtlsClient::connect(&connector(IDENTITY, KEY), server.local_addr())
        .await
        .unwrap();
    client.send(b"after").await.unwrap();
    assert!(
        client
            .recv_timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(server.stats().dropped.not_dtls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_identity_and_wrong_key_fail_to_connect() {
    let server = echo_server().await;
    let err = DtlsClient::connect(&connector(b"nobody", KEY), server.local_addr())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SocketError::Handshake(_)), "{err:?}");
    let err = DtlsClient::connect(&connector(IDENTITY, b"wrong"), server.local_addr())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SocketError::Handshake(_)), "{err:?}");
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 0);
    assert_eq!(stats.handshakes_failed.unknown_identity, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_events_reach_recv_event() {
    let server = DtlsSocket::bind("127.0.0.1:0".parse().unwrap(), server_config())
        .await
        .unwrap();
    let mut client = DtlsClient::connect(&connector(IDENTITY, KEY), server.local_addr())
        .await
        .unwrap();
    let next = || async {
        tokio::time::timeout(Duration::from_secs(2), server.recv_event())
            .await
            .unwrap()
            .unwrap()
    };
    let peer = match next().await {
        coap_dtls::SocketEvent::SessionEstablished { peer, identity } => {
            assert_eq!(identity.as_ref(), IDENTITY);
            peer
        }
        other => panic!("{other:?}"),
    };
    client.send(b"one").await.unwrap();
    match next().await {
        coap_dtls::SocketEvent::Data(dg) => {
            assert_eq!(dg.peer, peer);
            assert_eq!(dg.bytes.as_ref(), b"one");
        }
        other => panic!("{other:?}"),
    }
    client.close().await.unwrap();
    match next().await {
        coap_dtls::SocketEvent::SessionClosed {
            peer: p, reason, ..
        } => {
            assert_eq!(p, peer);
            assert_eq!(reason, coap_dtls::CloseReason::CloseNotify);
        }
        other => panic!("{other:?}"),
    }
}
