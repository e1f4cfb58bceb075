//! Issue 9 against the real `coap-emqx-gateway` over UDP: one peer that
//! starts thousands of Block1 uploads and abandons them must not lock every
//! other client's block-wise upload out (it used to fill the endpoint's
//! global cap of 4 096 transfers, and everybody else got 5.03 for 247 s).
//! Uses the gateway's embedded broker: no MQTT broker needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Block, Code, Message, MessageType};
use fault_injection_tests::{CoapClient, GatewayProcess, unique};
use tokio::net::UdpSocket;

/// Sends `bytes` and waits for the ACK (or RST) echoing its message id.
async fn answer(
    socket: &UdpSocket,
    to: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Message> {
    socket.send_to(bytes, to).await.unwrap();
    let mid = bytes.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, _) = tokio::time::timeout(left, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let m = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).expect("a parsable answer");
        let echoes = matches!(m.mtype, MessageType::Ack | MessageType::Rst);
        if echoes && Some(m.message_id) == mid {
            return Some(m);
        }
    }
}

fn first_block(mid: u16, path: &str) -> Vec<u8> {
    Message::new(MessageType::Con, Code::POST, mid)
        .with_token(Bytes::copy_from_slice(&u32::from(mid).to_be_bytes()))
        .with_uri_path(path)
        .with_block1(Block::new(0, true, 0).unwrap())
        .with_payload(vec![b'a'; 16])
        .to_bytes()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_lock_other_clients_out_of_block1_uploads() {
    let mut gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &["--udp", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        &["udp", "http"],
    );
    let target = gw.addr("udp");
    let topic = format!("fault/block-fair/{}", unique());

    // 4 100 first blocks (num 0, M=1, 16 bytes) with distinct tokens and
    // URIs from one socket: more than the global cap of 4 096 transfers.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const FLOOD: u16 = 4_100;
    let mut codes = BTreeMap::<String, usize>::new();
    let started = Instant::now();
    for i in 0..FLOOD {
        let bytes = first_block(i, &format!("ps/{topic}/flood/{i}"));
        let code = answer(&attacker, target, &bytes, Duration::from_secs(2))
            .await
            .map_or_else(|| "none".to_owned(), |m| m.code.to_string());
        *codes.entry(code).or_default() += 1;
    }
    let flood_time = started.elapsed();
    gw.assert_alive();
    // Every first block is accepted: the attacker's own oldest transfers
    // make room (per-peer cap), nobody else's.
    assert_eq!(
        codes.get(&Code::CONTINUE.to_string()),
        Some(&usize::from(FLOOD)),
        "{codes:?}"
    );

    // The victim, from another address, uploads 2 blocks: 2.31, then 2.04.
    let victim = CoapClient::new(target).await;
    let token = victim.token();
    let path = format!("ps/{topic}/victim");
    let mut victim_codes = Vec::new();
    for num in 0..2u32 {
        let m = Message::new(MessageType::Con, Code::POST, victim.mid())
            .with_token(token.clone())
            .with_uri_path(&path)
            .with_block1(Block::new(num, num == 0, 0).unwrap())
            .with_payload(vec![b'v'; 16]);
        victim_codes.push(victim.request(m).await.code());
    }
    assert_eq!(
        victim_codes,
        [Some(Code::CONTINUE), Some(Code::CHANGED)],
        "the victim's Block1 upload"
    );

    // The attacker's first transfer was evicted (its own cap): its next
    // block is answered 4.08 (RFC 7959 §2.5); its newest one goes on.
    let next = |mid: u16, i: u16| {
        Message::new(MessageType::Con, Code::POST, mid)
            .with_token(Bytes::copy_from_slice(&u32::from(i).to_be_bytes()))
            .with_uri_path(&format!("ps/{topic}/flood/{i}"))
            .with_block1(Block::new(1, true, 0).unwrap())
            .with_payload(vec![b'a'; 16])
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    let evicted = answer(&attacker, target, &next(FLOOD, 0), Duration::from_secs(2))
        .await
        .expect("an answer");
    assert_eq!(evicted.code, Code::REQUEST_ENTITY_INCOMPLETE);
    let newest = answer(
        &attacker,
        target,
        &next(FLOOD + 1, FLOOD - 1),
        Duration::from_secs(2),
    )
    .await
    .expect("an answer");
    assert_eq!(newest.code, Code::CONTINUE);
    println!(
        "FIGURES block1 fairness: {FLOOD} first blocks from one socket in {flood_time:?} ({codes:?}); victim {victim_codes:?}; attacker's oldest transfer then {}, newest {}",
        evicted.code, newest.code
    );
}
