//! Hostile input against both binaries: the malformed-datagram table of the
//! spec at line rate, seeded random datagrams (plain and DTLS ports),
//! oversized and abandoned block-wise transfers, an observe-registration
//! flood, a flood of spoofed DTLS ClientHellos, token brute force in EMQX
//! connection mode, and cross-client / cross-tenant access attempts. Each
//! gets its specified CoAP answer or a silent drop; afterwards the process
//! is alive, answers, and its memory stayed bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_dtls::{ClientConfig, DtlsClient, DtlsConnector};
use coap_endpoint::coap_codec::{Block, Code, ContentFormat, Message, MessageType, OptionNumber};
use fault_injection_tests::hono_registry::{B1, D0, GW, registry_file};
use fault_injection_tests::{CoapClient, GatewayProcess, unique};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// The expected reaction to one malformed datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reaction {
    /// RST echoing message id 0x1234.
    Rst,
    /// Nothing at all.
    Silence,
    /// A response with this code.
    Answer(Code),
}

fn raw(head: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    v.extend_from_slice(rest);
    v
}

fn msg(m: Message) -> Vec<u8> {
    m.to_bytes().unwrap().to_vec()
}

/// The malformed-input table of spec/coap-core.md, one datagram per row.
fn malformed_table(path: &str) -> Vec<(&'static str, Vec<u8>, Reaction)> {
    let get = |mid: u16| {
        Message::new(MessageType::Con, Code::GET, mid)
            .with_token(Bytes::from_static(b"tk"))
            .with_uri_path(path)
    };
    vec![
        (
            "version 2",
            raw(&[0x80, 0x01, 0x12, 0x34], b""),
            Reaction::Silence,
        ),
        (
            "TKL 9, CON",
            raw(&[0x49, 0x01, 0x12, 0x34], b"123456789"),
            Reaction::Rst,
        ),
        (
            "TKL 9, NON",
            raw(&[0x59, 0x01, 0x12, 0x34], b"123456789"),
            Reaction::Silence,
        ),
        (
            "class 1 code, CON",
            raw(&[0x40, 0x20, 0x12, 0x34], b""),
            Reaction::Rst,
        ),
        (
            "class 7 code, CON",
            raw(&[0x40, 0xE0, 0x12, 0x34], b""),
            Reaction::Rst,
        ),
        (
            "class 6 code, NON",
            raw(&[0x50, 0xC0, 0x12, 0x34], b""),
            Reaction::Silence,
        ),
        (
            "0.00 with token",
            raw(&[0x41, 0x00, 0x12, 0x34], b"t"),
            Reaction::Rst,
        ),
        (
            "0.00 with payload",
            raw(&[0x40, 0x00, 0x12, 0x34], b"\xffx"),
            Reaction::Rst,
        ),
        (
            "marker without payload, CON",
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xff"),
            Reaction::Rst,
        ),
        (
            "marker without payload, NON",
            raw(&[0x50, 0x01, 0x12, 0x34], b"\xff"),
            Reaction::Silence,
        ),
        (
            "option delta nibble 15",
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xf1\x00"),
            Reaction::Rst,
        ),
        (
            "option length nibble 15",
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xbf\x00"),
            Reaction::Rst,
        ),
        (
            "truncated token",
            raw(&[0x48, 0x01, 0x12, 0x34], b"abc"),
            Reaction::Rst,
        ),
        (
            "truncated option",
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xb5ps"),
            Reaction::Rst,
        ),
        (
            "truncated extended delta",
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xd1"),
            Reaction::Rst,
        ),
        (
            "unknown method 0.31",
            msg(Message::new(MessageType::Con, Code::from_u8(0x1F), 0x1234)
                .with_token(Bytes::from_static(b"tk"))),
            Reaction::Answer(Code::METHOD_NOT_ALLOWED),
        ),
        (
            "unknown critical option 65",
            msg(get(0x1234).with_option(OptionNumber(65), Bytes::from_static(b"x"))),
            Reaction::Answer(Code::BAD_OPTION),
        ),
        (
            "two Uri-Host",
            msg(get(0x1234)
                .with_option(OptionNumber::URI_HOST, Bytes::from_static(b"a"))
                .with_option(OptionNumber::URI_HOST, Bytes::from_static(b"b"))),
            Reaction::Answer(Code::BAD_OPTION),
        ),
        (
            "If-None-Match with a value",
            // the codec refuses to encode it: raw bytes (no token)
            raw(&[0x40, 0x01, 0x12, 0x34], b"\x51x\x62ps"),
            Reaction::Answer(Code::BAD_OPTION),
        ),
        (
            "Block2 of 4 bytes",
            // Uri-Path "ps", then Block2 (delta 12) with 4 bytes; raw, as
            // the codec refuses to encode it
            raw(&[0x40, 0x01, 0x12, 0x34], b"\xb2ps\xc4\x00\x00\x00\x06"),
            Reaction::Answer(Code::BAD_OPTION),
        ),
        (
            "Block1 SZX 7",
            msg(Message::new(MessageType::Con, Code::POST, 0x1234)
                .with_token(Bytes::from_static(b"tk"))
                .with_uri_path(path)
                .with_option(OptionNumber::BLOCK1, Bytes::from_static(b"\x0f"))
                .with_payload(Bytes::from_static(b"x"))),
            Reaction::Answer(Code::BAD_REQUEST),
        ),
        (
            "empty CON (ping)",
            raw(&[0x40, 0x00, 0x12, 0x34], b""),
            Reaction::Rst,
        ),
        (
            "RST for an unknown id",
            raw(&[0x70, 0x00, 0x12, 0x34], b""),
            Reaction::Silence,
        ),
        (
            "ACK for an unknown id",
            raw(&[0x60, 0x00, 0x12, 0x34], b""),
            Reaction::Silence,
        ),
        (
            "unknown response code 2.10, NON",
            raw(&[0x50, 0x4A, 0x12, 0x34], b""),
            Reaction::Silence,
        ),
        ("empty datagram", Vec::new(), Reaction::Silence),
        ("three bytes", vec![0x40, 0x01, 0x12], Reaction::Silence),
    ]
}

async fn answer(
    socket: &UdpSocket,
    to: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Message> {
    socket.send_to(bytes, to).await.unwrap();
    // Only an ACK or RST echoing our message id answers us: a recycled
    // ephemeral port may still receive some earlier peer's notifications.
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

/// Checks every row once, then sends the table `repeats` times from 4
/// sockets as fast as they go; returns the datagrams sent at line rate and
/// the rate.
async fn malformed_table_against(
    gw: &GatewayProcess,
    target: SocketAddr,
    path: &str,
    repeats: usize,
) -> (usize, f64) {
    let table = malformed_table(path);
    for (name, bytes, expected) in &table {
        // a fresh peer per row: every row uses message id 0x1234, and a
        // repeated id from one peer would (rightly) get the cached answer
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = answer(&socket, target, bytes, Duration::from_millis(250)).await;
        match (expected, &got) {
            (Reaction::Silence, None) => {}
            (Reaction::Rst, Some(m)) if m.mtype == MessageType::Rst && m.message_id == 0x1234 => {}
            (Reaction::Answer(code), Some(m)) if m.code == *code && m.mtype == MessageType::Ack => {
            }
            _ => panic!("{}: {name}: expected {expected:?}, got {got:?}", gw.name),
        }
    }
    let table = Arc::new(table);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut sent = 0;
            for r in 0..repeats {
                for (i, (_, bytes, _)) in table.iter().enumerate() {
                    // vary the message id so dedup does not absorb it all
                    let mut b = bytes.clone();
                    if b.len() >= 4 {
                        b[2] = (r >> 8) as u8;
                        b[3] = (r as u8) ^ (i as u8);
                    }
                    if s.send_to(&b, target).await.is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    (sent, rate)
}

/// One valid request still gets its answer.
async fn still_answers(
    target: SocketAddr,
    request: impl Fn(&CoapClient) -> Message,
    expected: Code,
) {
    let client = CoapClient::new(target).await;
    let r = client.request(request(&client)).await;
    assert_eq!(r.code(), Some(expected), "no longer answers: {r:?}");
}

fn emqx(args: &[&str]) -> GatewayProcess {
    let mut all = vec!["--udp", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    all.extend_from_slice(args);
    GatewayProcess::start("coap-emqx-gateway", &all, &["udp", "http"])
}

fn hono(registry: &std::path::Path, extra: &[&str]) -> GatewayProcess {
    let mut all = vec![
        "--registry",
        registry.to_str().unwrap(),
        "--dtls",
        "127.0.0.1:0",
        "--insecure-udp",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(extra);
    GatewayProcess::start("coap-hono-adapter", &all, &["udp", "dtls", "http"])
}

fn publish(topic: &str) -> impl Fn(&CoapClient) -> Message + '_ {
    move |c| {
        c.build(
            MessageType::Con,
            Code::POST,
            &format!("ps/{topic}"),
            &["qos=1"],
        )
        .with_payload(Bytes::from_static(b"alive"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_random_datagrams_get_their_answer_and_change_nothing() {
    let mut gw = emqx(&[]);
    let registry = registry_file();
    let mut adapter = hono(&registry, &[]);
    let rss_before = (gw.rss_kib(), adapter.rss_kib());

    let (sent_e, rate_e) = malformed_table_against(&gw, gw.addr("udp"), "ps/x", 800).await;
    let (sent_h, rate_h) =
        malformed_table_against(&adapter, adapter.addr("udp"), "t/TA/d1", 800).await;

    // Seeded random datagrams: half fully random, half with a valid CoAP
    // header in front; to both UDP ports and to the DTLS port.
    let seed = 0xbad_da7a;
    let mut rng = StdRng::seed_from_u64(seed);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const RANDOM: usize = 20_000;
    let targets = [gw.addr("udp"), adapter.addr("udp"), adapter.addr("dtls")];
    for i in 0..RANDOM {
        let len = rng.random_range(0..300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 2 == 0 && b.len() >= 4 {
            b[0] = 0x40 | (b[0] & 0x3f & 0x38) | (b[0] & 0x07).min(8);
        }
        if i % 7 == 0 && !b.is_empty() {
            b[0] = 22; // DTLS handshake content type
        }
        let _ = socket.send_to(&b, targets[i % 3]).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    gw.assert_alive();
    adapter.assert_alive();
    still_answers(gw.addr("udp"), publish("alive"), Code::CHANGED).await;
    still_answers(
        adapter.addr("udp"),
        |c| {
            c.build(MessageType::Con, Code::PUT, "t/TA/d1", &[])
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_payload(Bytes::from_static(b"alive"))
        },
        Code::CHANGED,
    )
    .await;
    // and DTLS still handshakes
    let connector = DtlsConnector::new(ClientConfig::new(D0.0, D0.1)).unwrap();
    DtlsClient::connect(&connector, adapter.addr("dtls"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // /metrics refresh
    let rss_after = (gw.rss_kib(), adapter.rss_kib());
    println!(
        "FIGURES malformed emqx: {sent_e} datagrams at {rate_e:.0}/s, malformed counted {}; hono: {sent_h} at {rate_h:.0}/s, malformed counted {}; random seed={seed:#x} {RANDOM} datagrams; rss emqx {} -> {} KiB, hono {} -> {} KiB",
        gw.metric("coap_malformed"),
        adapter.metric("coap_malformed"),
        rss_before.0,
        rss_after.0,
        rss_before.1,
        rss_after.1
    );
    assert!(gw.metric("coap_malformed") > 0.0);
    for (before, after) in [(rss_before.0, rss_after.0), (rss_before.1, rss_after.1)] {
        assert!(after < before + 32 * 1024, "RSS {before} -> {after} KiB");
    }
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_abandoned_blockwise_transfers_are_bounded() {
    let mut gw = emqx(&["--max-body-size", "8192", "--max-block-size", "1024"]);
    let target = gw.addr("udp");
    let client = CoapClient::new(target).await;
    let topic = format!("fault/block/{}", unique());
    // 1. one transfer over the limit: 2.31 Continue until 8 KiB, then 4.13
    let token = client.token();
    let mut last = None;
    for num in 0..12u32 {
        let m = Message::new(MessageType::Con, Code::POST, client.mid())
            .with_token(token.clone())
            .with_uri_path(&format!("ps/{topic}"))
            .with_block1(Block::new(num, true, 6).unwrap())
            .with_payload(vec![b'a'; 1024]);
        let r = client.request(m).await;
        let code = r.code().expect("an answer");
        last = Some((num, code, r.response));
        if code != Code::CONTINUE {
            break;
        }
    }
    let (num, code, response) = last.unwrap();
    assert_eq!(code, Code::REQUEST_ENTITY_TOO_LARGE, "after block {num}");
    assert!(num <= 8, "refused late: block {num}");
    let size1 = response
        .unwrap()
        .option(OptionNumber(60))
        .map(|v| v.to_vec());
    // 2. thousands of transfers started and abandoned (first block only)
    let rss_before = gw.rss_kib();
    // 4 000 first blocks (4 MiB) from one socket: the endpoint keeps the
    // newest 16 (its per-peer cap) and evicts the older ones, so memory
    // stays flat (blockwise_fairness.rs checks that others are not locked
    // out).
    let abandoned: usize = 4_000;
    let mut sockets = Vec::new();
    for _ in 0..=abandoned / 50_000 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut continues = 0;
    let mut other = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..abandoned {
        let m = Message::new(MessageType::Con, Code::POST, i as u16)
            .with_token(Bytes::copy_from_slice(&(i as u32).to_be_bytes()))
            .with_uri_path(&format!("ps/{topic}/{i}"))
            .with_block1(Block::new(0, true, 6).unwrap())
            .with_payload(vec![b'b'; 1024]);
        // message ids wrap at 65 536: a new peer every 50 000 keeps the
        // dedup cache out of the way
        let socket = &sockets[i / 50_000];
        match answer(socket, target, &msg(m), Duration::from_secs(2)).await {
            Some(r) if r.code == Code::CONTINUE => continues += 1,
            Some(r) => *other.entry(r.code.to_string()).or_default() += 1,
            None => *other.entry("none".into()).or_default() += 1,
        }
    }
    let rss_after = gw.rss_kib();
    gw.assert_alive();
    // a complete small transfer still works
    let token = client.token();
    for num in 0..2u32 {
        let m = Message::new(MessageType::Con, Code::POST, client.mid())
            .with_token(token.clone())
            .with_uri_path(&format!("ps/{topic}"))
            .with_block1(Block::new(num, num == 0, 6).unwrap())
            .with_payload(vec![b'c'; 1024]);
        let code = client.request(m).await.code();
        assert_eq!(
            code,
            Some(if num == 0 {
                Code::CONTINUE
            } else {
                Code::CHANGED
            })
        );
    }
    println!(
        "FIGURES blockwise oversized_refused_at_block={num} size1={size1:?} abandoned={abandoned} continued={continues} other={other:?} rss {rss_before} -> {rss_after} KiB ({} KiB per abandoned transfer)",
        (rss_after.saturating_sub(rss_before)) / abandoned as u64
    );
    // 4000 × 1 KiB held would be ~4 MiB; a reassembly cap keeps it below.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_registration_flood_from_one_peer() {
    let mut gw = emqx(&[]);
    let target = gw.addr("udp");
    let rss_before = gw.rss_kib();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const FLOOD: usize = 20_000;
    let prefix = format!("fault/flood/{}", unique());
    let started = Instant::now();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    // pipelined: send 100, then read the answers
    let mut buf = vec![0u8; 2048];
    for chunk in 0..FLOOD / 100 {
        for j in 0..100 {
            let i = chunk * 100 + j;
            let m = Message::new(MessageType::Con, Code::GET, i as u16)
                .with_token(Bytes::copy_from_slice(&(i as u64).to_be_bytes()))
                .with_uri_path(&format!("ps/{prefix}/{i}"))
                .with_observe(0);
            socket.send_to(&msg(m), target).await.unwrap();
        }
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => {
                    let r = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap();
                    *codes.entry(r.code.to_string()).or_default() += 1;
                }
                _ => {
                    *codes.entry("none".into()).or_default() += 1;
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let observers = gw.metric("emqx_coap_observers");
    let rss_after = gw.rss_kib();
    gw.assert_alive();
    still_answers(target, publish("alive"), Code::CHANGED).await;
    println!(
        "FIGURES observe_flood one_peer registrations={FLOOD} in {elapsed:?} answers={codes:?} observers_held={observers} rss {rss_before} -> {rss_after} KiB ({} B per relation)",
        (rss_after.saturating_sub(rss_before)) * 1024 / FLOOD as u64
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_dtls_client_hello_flood_creates_no_state() {
    let registry = registry_file();
    let mut adapter = hono(&registry, &[]);
    let dtls = adapter.addr("dtls");
    // A real first flight, replayed from many source ports that never
    // answer the HelloVerifyRequest (as spoofed sources cannot).
    let connector = DtlsConnector::new(ClientConfig::new(D0.0, D0.1)).unwrap();
    let mut session = connector.connect(Instant::now()).unwrap();
    let hello = session.poll_transmit().expect("a ClientHello");
    let rss_before = adapter.rss_kib();
    const SOURCES: usize = 200;
    const PER_SOURCE: usize = 50;
    let mut verify_requests = 0;
    let started = Instant::now();
    for _ in 0..SOURCES {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..PER_SOURCE {
            let _ = s.send_to(&hello, dtls).await;
        }
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(5), s.recv_from(&mut buf)).await
        {
            verify_requests += 1;
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1100)).await; // /metrics refresh
    let sessions = adapter.metric("dtls_sessions");
    // a real client still gets in
    let mut client = DtlsClient::connect(&connector, dtls).await.unwrap();
    let m = Message::new(MessageType::Con, Code::POST, 7)
        .with_token(Bytes::from_static(b"ok"))
        .with_uri_path("t")
        .with_content_format(ContentFormat::TEXT_PLAIN)
        .with_payload(Bytes::from_static(b"x"));
    client.send(&msg(m)).await.unwrap();
    let r = client
        .recv_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("answer");
    let r = Message::from_bytes(r).unwrap();
    assert_eq!(r.code, Code::CHANGED);
    let rss_after = adapter.rss_kib();
    adapter.assert_alive();
    println!(
        "FIGURES client_hello_flood sources={SOURCES} hellos={} in {elapsed:?} hello_verify_requests_seen={verify_requests} dtls_sessions_during={sessions} rss {rss_before} -> {rss_after} KiB",
        SOURCES * PER_SOURCE
    );
    assert_eq!(
        sessions, 0.0,
        "cookie exchange keeps unverified peers stateless"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
    drop(registry);
}

async fn connect(client: &CoapClient, id: &str) -> String {
    let r = client
        .request(client.build(
            MessageType::Con,
            Code::POST,
            "mqtt/connection",
            &[&format!("clientid={id}")],
        ))
        .await;
    assert_eq!(r.code(), Some(Code::CREATED), "{r:?}");
    String::from_utf8(r.response.unwrap().payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_brute_force_is_rate_limited_and_cross_client_access_refused() {
    let mut gw = emqx(&[
        "--connection-required",
        "--mountpoint",
        "devices/${clientid}/",
    ]);
    let target = gw.addr("udp");
    let alice = CoapClient::new(target).await;
    let bob = CoapClient::new(target).await;
    // The attacker comes from another address (127.0.0.2), so the per-IP
    // limit does not hide the per-clientid one.
    let attacker = CoapClient::new_from("127.0.0.2:0", target).await;
    let (a_id, b_id) = (format!("alice-{}", unique()), format!("bob-{}", unique()));
    let a_token = connect(&alice, &a_id).await;
    let b_token = connect(&bob, &b_id).await;

    // cross-client: alice's token with bob's clientid, and the reverse
    let cases = [
        (format!("clientid={b_id}"), format!("token={a_token}")),
        (format!("clientid={a_id}"), format!("token={b_token}")),
    ];
    let mut cross = Vec::new();
    for (cid, tok) in &cases {
        for (method, path) in [
            (Code::POST, "ps/x"),
            (Code::GET, "ps/x"),
            (Code::DELETE, "mqtt/connection"),
        ] {
            let mut m = alice.build(MessageType::Con, method, path, &[cid, tok]);
            if method == Code::POST {
                m = m.with_payload(Bytes::from_static(b"evil"));
            }
            if method == Code::GET {
                m = m.with_observe(0);
            }
            let code = alice.request(m).await.code().unwrap();
            cross.push(code);
            assert_eq!(code, Code::UNAUTHORIZED, "{method} {path} with {cid} {tok}");
        }
    }
    // the mountpoint confines alice: a wildcard observe sees only her tree,
    // and placeholders with '/', '+' or '#' are refused
    let evil = CoapClient::new(target).await;
    let mut evil_codes = Vec::new();
    for id in ["+", "#", "a/b"] {
        let r = evil
            .request(evil.build(
                MessageType::Con,
                Code::POST,
                "mqtt/connection",
                &[&format!("clientid={id}")],
            ))
            .await;
        let code = r.code().unwrap();
        if code == Code::CREATED {
            let token = String::from_utf8(r.response.unwrap().payload.to_vec()).unwrap();
            let m = evil
                .build(
                    MessageType::Con,
                    Code::GET,
                    "ps/%23",
                    &[&format!("clientid={id}"), &format!("token={token}")],
                )
                .with_observe(0);
            let code = evil.request(m).await.code().unwrap();
            assert_eq!(
                code,
                Code::BAD_REQUEST,
                "clientid {id} used in the mountpoint"
            );
            evil_codes.push((id, code));
        } else {
            assert_eq!(code, Code::BAD_REQUEST, "clientid {id}");
            evil_codes.push((id, code));
        }
    }
    // brute force bob's token from another address
    let mut codes = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..40 {
        let guess: u32 = rng.random();
        if guess.to_string() == b_token {
            continue;
        }
        let m = attacker.build(
            MessageType::Con,
            Code::PUT,
            "mqtt/connection",
            &[&format!("clientid={b_id}"), &format!("token={guess}")],
        );
        codes.push(attacker.request(m).await.code().unwrap());
    }
    let first_429 = codes.iter().position(|c| *c == Code::TOO_MANY_REQUESTS);
    let unauthorized = codes.iter().filter(|c| **c == Code::UNAUTHORIZED).count();
    assert!(
        codes
            .iter()
            .all(|c| *c == Code::UNAUTHORIZED || *c == Code::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    let first_429 = first_429.expect("brute force is rate limited");
    assert!(first_429 <= 10, "4.29 only after {first_429} guesses");
    // once limited, even the right token from the attacker gets 4.29
    let m = attacker.build(
        MessageType::Con,
        Code::PUT,
        "mqtt/connection",
        &[&format!("clientid={b_id}"), &format!("token={b_token}")],
    );
    let with_right_token = attacker.request(m).await.code().unwrap();
    assert_eq!(with_right_token, Code::TOO_MANY_REQUESTS);

    // bob's session is untouched: his own token still works (after the
    // per-clientid window; answered 4.29 meanwhile, never 4.01)
    let m = bob.build(
        MessageType::Con,
        Code::PUT,
        "mqtt/connection",
        &[&format!("clientid={b_id}"), &format!("token={b_token}")],
    );
    let bob_code = bob.request(m).await.code().unwrap();
    assert!(
        bob_code == Code::CHANGED || bob_code == Code::TOO_MANY_REQUESTS,
        "{bob_code}"
    );
    println!(
        "FIGURES token_brute_force guesses={} unauthorized={unauthorized} first_429_at={first_429} right_token_while_limited={with_right_token} cross_client={cross:?} hostile_clientids={evil_codes:?} victim_heartbeat_during_window={bob_code}",
        codes.len()
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_and_foreign_device_access_is_refused() {
    let registry = registry_file();
    let mut adapter = hono(&registry, &[]);
    let dtls = adapter.addr("dtls");
    let request = |mid: u16, method: Code, path: &str| {
        Message::new(MessageType::Con, method, mid)
            .with_token(Bytes::copy_from_slice(&mid.to_be_bytes()))
            .with_uri_path(path)
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_payload(Bytes::from_static(b"x"))
    };
    let mut outcomes = Vec::new();
    let cases: [((&str, &str), Code, &str, Code); 7] = [
        (D0, Code::PUT, "t/TB/b1", Code::FORBIDDEN), // other tenant
        (D0, Code::PUT, "e/TB/b1", Code::FORBIDDEN),
        (D0, Code::PUT, "t/TA/solo", Code::FORBIDDEN), // not its gateway
        (GW, Code::PUT, "t/TB/b1", Code::FORBIDDEN),   // gateway, other tenant
        (GW, Code::PUT, "t/TA/solo", Code::FORBIDDEN), // gateway not in via
        (GW, Code::PUT, "t//dv", Code::CHANGED),       // allowed (control)
        (B1, Code::PUT, "t/TA/d0", Code::FORBIDDEN),
    ];
    for (i, (who, method, path, expected)) in cases.iter().enumerate() {
        let connector = DtlsConnector::new(ClientConfig::new(who.0, who.1)).unwrap();
        let mut client = DtlsClient::connect(&connector, dtls).await.unwrap();
        let m = request(i as u16 + 1, *method, path);
        client.send(&msg(m)).await.unwrap();
        let r = client
            .recv_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("answer");
        let r = Message::from_bytes(r).unwrap();
        outcomes.push(format!("{} {method} {path} -> {}", who.0, r.code));
        assert_eq!(r.code, *expected, "{} {path}", who.0);
    }
    // a tenant-A key under a tenant-B identity fails the handshake
    let connector = DtlsConnector::new(ClientConfig::new(B1.0, D0.1)).unwrap();
    let wrong_key = tokio::time::timeout(
        Duration::from_secs(20),
        DtlsClient::connect(&connector, dtls),
    )
    .await;
    assert!(
        !matches!(wrong_key, Ok(Ok(_))),
        "handshake with another tenant's key succeeded"
    );
    // unauthenticated POST on the insecure port names no device: 4.01
    still_answers(
        adapter.addr("udp"),
        |c| {
            c.build(MessageType::Con, Code::POST, "t", &[])
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_payload(Bytes::from_static(b"x"))
        },
        Code::UNAUTHORIZED,
    )
    .await;
    println!("FIGURES cross_tenant {outcomes:?} wrong_key_handshake=refused");
    adapter.assert_alive();
    drop(registry);
}
