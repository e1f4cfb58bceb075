//! More hostile input: (a) EMQX mode with an authentication file and ACL
//! rules, on the embedded broker and on mosquitto: a user trying topics the
//! ACL denies, other users' passwords, clientids and session tokens gets
//! 4.01 (docs/emqx-mode.md: ACL deny → 4.01; 4.00 for a missing token), a
//! session of another user's clientid cannot be taken over, and nothing of
//! it reaches the broker's subscribers; (b) the malformed-record
//! table sent to the DTLS ports of both binaries, from fresh addresses and
//! from the address of an established session: dropped silently, nothing
//! crashes, the established session goes on and a real DTLS client
//! (`coap-client-openssl`) still works afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_dtls::{ClientConfig, ClientEvent, ClientSession, DtlsConnector};
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use fault_injection_tests::hono_registry::{D0, registry_file};
use fault_injection_tests::{
    CoapClient, GatewayProcess, MqttWitness, Tally, mqtt_url, temp_file, unique,
};
use tokio::net::UdpSocket;

// ---- (a) authentication file and ACL ------------------------------------

/// bcrypt (cost 4, fast enough for a debug build) of `pa`, `pb` and `pw`.
const HASH_A: &str = "$2b$04$f3mUcVnx/wdUaTidKp7jseD7qgQ.FbD2rvUAK6uSVSX4mnMpNvSKi";
const HASH_B: &str = "$2b$04$7HGoEMc4Z/dTmdlGrqMsnOpIQyrD.BtDXfq4qQNsteh3kzanqgqfW";
const HASH_W: &str = "$2b$04$c3GKie/CwR7wYu3tg7i6XuTYZJRp79d6s7BkhsQtFizuNkQioSnka";

/// Users `a`, `b` (devices) and `w` (a witness that may subscribe to
/// everything). Each device owns `devices/<username>/#` except its
/// `secret`, may publish `telemetry/<username>` and subscribe
/// `broadcast/#`; nothing else (deny when no rule applies).
fn auth_file() -> fault_injection_tests::TempFile {
    temp_file(
        "auth.toml",
        &format!(
            r##"
[[users]]
username = "a"
password_hash = "{HASH_A}"

[[users]]
username = "b"
password_hash = "{HASH_B}"

[[users]]
username = "w"
password_hash = "{HASH_W}"

[[acl]]
permission = "allow"
action = "subscribe"
topic = "#"
username = "w"

[[acl]]
permission = "deny"
action = "all"
topic = "devices/${{username}}/secret"

[[acl]]
permission = "allow"
action = "all"
topic = "devices/${{username}}/#"

[[acl]]
permission = "allow"
action = "subscribe"
topic = "broadcast/#"

[[acl]]
permission = "allow"
action = "publish"
topic = "telemetry/${{username}}"
"##
        ),
    )
}

const A: &str = "username=a&password=pa";
const B: &str = "username=b&password=pb";
const W: &str = "username=w&password=pw";

/// `a=1&b=2` as separate Uri-Query options.
fn queries(q: &str) -> Vec<&str> {
    q.split('&').filter(|s| !s.is_empty()).collect()
}

fn post(c: &CoapClient, topic: &str, q: &str, payload: &str) -> Message {
    c.build(
        MessageType::Con,
        Code::POST,
        &format!("ps/{topic}"),
        &queries(&format!("qos=1&{q}")),
    )
    .with_payload(payload.to_owned().into_bytes())
}

fn observe(c: &CoapClient, filter: &str, q: &str) -> Message {
    c.build(
        MessageType::Con,
        Code::GET,
        &format!("ps/{filter}"),
        &queries(&format!("qos=1&{q}")),
    )
    .with_observe(0)
}

async fn code(c: &CoapClient, m: Message) -> Code {
    c.request(m).await.code().expect("an answer")
}

/// What the ACL run saw.
struct AclRun {
    refused: usize,
    accepted: usize,
    witness_seen: BTreeSet<String>,
    takeover: (Code, Code),
}

/// One gateway process with the auth file; `broker_args` picks the broker.
/// Runs the connectionless cases, then (another process, connection
/// mode) the session-token cases.
async fn acl_scenario(broker_args: &[&str], tally: Option<&Tally>, prefix: &str) -> AclRun {
    let auth = auth_file();
    let auth_path = auth.to_str().unwrap().to_owned();
    let mut args = vec!["--udp", "127.0.0.1:0", "--auth-file", &auth_path];
    args.extend_from_slice(broker_args);
    let mut gw = GatewayProcess::start("coap-emqx-gateway", &args, &["udp"]);
    let target = gw.addr("udp");
    let witness = CoapClient::new(target).await;
    // QoS 0: NON notifications, none replaced by a newer one while another
    // is in flight.
    let m = witness
        .build(
            MessageType::Con,
            Code::GET,
            "ps/%23",
            &queries(&format!("qos=0&{W}")),
        )
        .with_observe(0);
    witness.observe_token(&m.token);
    assert_eq!(code(&witness, m).await, Code::CONTENT, "witness observes #");

    let a = CoapClient::new(target).await;
    let b = CoapClient::new(target).await;
    let mut refused = 0;
    let mut accepted = 0;
    let mut allowed_payloads = Vec::new();
    let key = |topic: &str, payload: &str| format!("{prefix}{topic} {payload}");

    // Allowed: the positive controls.
    for (client, topic, creds, payload) in [
        (&a, "devices/a/t", A, "ok-1"),
        (&a, "telemetry/a", A, "ok-2"),
        (&b, "devices/b/t", B, "ok-3"),
    ] {
        assert_eq!(
            code(client, post(client, topic, creds, payload)).await,
            Code::CHANGED,
            "{topic} {creds}"
        );
        if let Some(t) = tally {
            t.answered(&key(topic, payload), "2.04", true);
        }
        allowed_payloads.push(payload);
        accepted += 1;
    }
    // Denied publishes: other users' topics, the own secret, a
    // subscribe-only tree, wrong or missing credentials, another
    // device's clientid.
    let denied_publishes = [
        ("devices/b/t", A.to_owned()),
        ("devices/a/secret", A.to_owned()),
        ("broadcast/x", A.to_owned()),
        ("telemetry/b", A.to_owned()),
        ("something/else", A.to_owned()),
        ("devices/b/t", format!("clientid=b&{A}")),
        ("devices/a/t", "username=a&password=pb".to_owned()),
        ("devices/b/t", "username=b&password=pa".to_owned()),
        ("devices/a/t", "username=a".to_owned()),
        ("devices/a/t", String::new()),
        ("devices/nobody/t", "username=nobody&password=x".to_owned()),
        ("devices/+/t", "username=%2B&password=pa".to_owned()),
        // w may subscribe to everything, publish only in its own tree
        ("devices/a/t", W.to_owned()),
    ];
    for (i, (topic, creds)) in denied_publishes.iter().enumerate() {
        let payload = format!("deny-{i}");
        let got = code(&a, post(&a, topic, creds, &payload)).await;
        assert!(
            got == Code::UNAUTHORIZED || (got == Code::BAD_REQUEST && topic.contains('+')),
            "publish {topic} with {creds:?}: {got}"
        );
        if let Some(t) = tally {
            t.answered(&key(topic, &payload), &got.to_string(), false);
        }
        refused += 1;
    }
    // Denied observes (any notification for them would be a leak: the
    // client listens on their tokens) and a retained read.
    for filter in [
        "devices/b/%23",
        "devices/%2B/t",
        "%23",
        "devices/a/%2B",
        "devices/a/secret",
        "telemetry/a",
    ] {
        let m = observe(&a, filter, A);
        a.observe_token(&m.token);
        assert_eq!(code(&a, m).await, Code::UNAUTHORIZED, "observe {filter}");
        refused += 1;
    }
    let m = a.build(MessageType::Con, Code::GET, "ps/devices/b/t", &queries(A));
    assert_eq!(code(&a, m).await, Code::UNAUTHORIZED, "GET devices/b/t");
    refused += 1;
    // Allowed observes of a, to see that it gets what it may.
    let m = observe(&a, "broadcast/%23", A);
    a.observe_token(&m.token);
    assert_eq!(code(&a, m).await, Code::CONTENT);
    // b publishes into its own tree: a must get nothing of it.
    assert_eq!(
        code(&b, post(&b, "devices/b/t", B, "ok-4")).await,
        Code::CHANGED
    );
    if let Some(t) = tally {
        t.answered(&key("devices/b/t", "ok-4"), "2.04", true);
    }
    allowed_payloads.push("ok-4");
    accepted += 1;
    if let Some(n) = a.notification(Duration::from_millis(500)).await {
        panic!(
            "a was notified of {:?}",
            String::from_utf8_lossy(&n.payload)
        );
    }

    // The witness saw every accepted publish and nothing else.
    let mut witness_seen = BTreeSet::new();
    while let Some(n) = witness.notification(Duration::from_millis(700)).await {
        witness_seen.insert(String::from_utf8(n.payload.to_vec()).unwrap());
    }
    for p in &allowed_payloads {
        assert!(
            witness_seen.contains(*p),
            "witness missed {p}: {witness_seen:?}"
        );
    }
    assert!(
        witness_seen.iter().all(|p| p.starts_with("ok-")),
        "a refused publish reached the broker's subscribers: {witness_seen:?}"
    );
    gw.assert_alive();
    drop(gw);

    // Connection mode: session tokens.
    let mut args = vec![
        "--udp",
        "127.0.0.1:0",
        "--auth-file",
        &auth_path,
        "--connection-required",
    ];
    args.extend_from_slice(broker_args);
    let mut gw = GatewayProcess::start("coap-emqx-gateway", &args, &["udp"]);
    let target = gw.addr("udp");
    let a = CoapClient::new(target).await;
    let b = CoapClient::new(target).await;
    let (ca, cb) = (format!("ca-{}", unique()), format!("cb-{}", unique()));
    let connect = |c: &CoapClient, q: String| {
        c.build(
            MessageType::Con,
            Code::POST,
            "mqtt/connection",
            &queries(&q),
        )
    };
    let r = a.request(connect(&a, format!("clientid={ca}&{A}"))).await;
    assert_eq!(r.code(), Some(Code::CREATED));
    let ta = String::from_utf8(r.response.unwrap().payload.to_vec()).unwrap();
    let r = b.request(connect(&b, format!("clientid={cb}&{B}"))).await;
    assert_eq!(r.code(), Some(Code::CREATED));
    let tb = String::from_utf8(r.response.unwrap().payload.to_vec()).unwrap();

    let session_cases = [
        // a's token with b's clientid, b's token with a's clientid
        (format!("clientid={cb}&token={ta}"), Code::UNAUTHORIZED),
        (format!("clientid={ca}&token={tb}"), Code::UNAUTHORIZED),
        // a's own session, b's topic: the ACL
        (format!("clientid={ca}&token={ta}"), Code::UNAUTHORIZED),
        // b's clientid without a token
        (format!("clientid={cb}"), Code::BAD_REQUEST),
        // b's clientid with b's password but no token
        (format!("clientid={cb}&{B}"), Code::BAD_REQUEST),
    ];
    for (i, (q, expected)) in session_cases.iter().enumerate() {
        let payload = format!("deny-s{i}");
        let got = code(&a, post(&a, "devices/b/t", q, &payload)).await;
        assert_eq!(got, *expected, "publish devices/b/t with {q}");
        if let Some(t) = tally {
            t.answered(&key("devices/b/t", &payload), &got.to_string(), false);
        }
        let m = observe(&a, "devices/b/%23", q);
        a.observe_token(&m.token);
        assert_eq!(code(&a, m).await, *expected, "observe devices/b/# with {q}");
        refused += 2;
    }
    // Connecting as b with a wrong password, or as a with b's password.
    for q in [
        format!("clientid={cb}&username=b&password=pa"),
        format!("clientid={ca}-2&username=a&password=pb"),
        format!("clientid={cb}"),
    ] {
        // From a fresh address: a's own already holds a session of ca,
        // which alone makes another clientid a 4.00.
        let other = CoapClient::new(target).await;
        let got = other.request(connect(&other, q.clone())).await.code();
        assert_eq!(got, Some(Code::UNAUTHORIZED), "connect {q}");
        refused += 1;
    }
    // b's session is untouched by all that.
    let ok = post(
        &b,
        "devices/b/t",
        &format!("clientid={cb}&token={tb}"),
        "ok-c1",
    );
    assert_eq!(code(&b, ok).await, Code::CHANGED, "b's own session");
    if let Some(t) = tally {
        t.answered(&key("devices/b/t", "ok-c1"), "2.04", true);
    }
    accepted += 1;
    if let Some(n) = a.notification(Duration::from_millis(500)).await {
        panic!(
            "a was notified of {:?}",
            String::from_utf8_lossy(&n.payload)
        );
    }
    // a's valid credentials with b's clientid, from an address without a
    // session: a takeover by another user is refused, b's session and
    // token stay (a reconnect of b itself would take over).
    let evil = CoapClient::new(target).await;
    let takeover = evil
        .request(connect(&evil, format!("clientid={cb}&{A}")))
        .await
        .code()
        .unwrap();
    assert_eq!(takeover, Code::UNAUTHORIZED, "a opens a session as {cb}");
    refused += 1;
    let ok = post(
        &b,
        "devices/b/t",
        &format!("clientid={cb}&token={tb}"),
        "ok-c2",
    );
    let b_after = code(&b, ok).await;
    assert_eq!(
        b_after,
        Code::CHANGED,
        "b's token after a's takeover attempt"
    );
    if let Some(t) = tally {
        t.answered(&key("devices/b/t", "ok-c2"), "2.04", true);
    }
    accepted += 1;
    gw.assert_alive();
    AclRun {
        refused,
        accepted,
        witness_seen,
        takeover: (takeover, b_after),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_and_foreign_credentials_are_refused_on_the_embedded_broker() {
    let run = acl_scenario(&[], None, "").await;
    println!(
        "FIGURES hostile_acl broker=embedded refused={} accepted={} witness_saw={:?} takeover_by_other_user={} victim_token_after={}",
        run.refused, run.accepted, run.witness_seen, run.takeover.0, run.takeover.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_and_foreign_credentials_are_refused_on_mosquitto() {
    let url = mqtt_url();
    let prefix = format!("fault/acl/{}/", unique());
    let tally = Arc::new(Tally::default());
    let _mqtt = MqttWitness::start(&url, &format!("{prefix}#"), tally.clone()).await;
    let run = acl_scenario(
        &["--broker", &url, "--mountpoint", &prefix],
        Some(&tally),
        &prefix,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !tally.figures().lost.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let figures = tally.figures();
    println!(
        "FIGURES hostile_acl broker=mosquitto refused={} accepted={} takeover_by_other_user={} victim_token_after={} {}",
        run.refused,
        run.accepted,
        run.takeover.0,
        run.takeover.1,
        figures.line()
    );
    assert!(
        figures.lost.is_empty(),
        "accepted but not at mosquitto: {:?}",
        figures.lost
    );
    assert_eq!(
        figures.unacknowledged_delivered, 0,
        "a refused publish reached mosquitto"
    );
}

// ---- (b) malformed records on the DTLS port ------------------------------

/// A DTLS 1.2 record: content type, version, epoch, sequence number,
/// length (as given, not necessarily the body's), body.
fn record(
    content_type: u8,
    version: u16,
    epoch: u16,
    seq: u64,
    length: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut r = vec![content_type];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&seq.to_be_bytes()[2..]);
    r.extend_from_slice(&length.to_be_bytes());
    r.extend_from_slice(body);
    r
}

fn exact(content_type: u8, epoch: u16, seq: u64, body: &[u8]) -> Vec<u8> {
    record(content_type, 0xfefd, epoch, seq, body.len() as u16, body)
}

/// A handshake message header: type, length, message_seq, fragment
/// offset, fragment length.
fn handshake(
    msg_type: u8,
    length: u32,
    seq: u16,
    offset: u32,
    frag_len: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut h = vec![msg_type];
    h.extend_from_slice(&length.to_be_bytes()[1..]);
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&offset.to_be_bytes()[1..]);
    h.extend_from_slice(&frag_len.to_be_bytes()[1..]);
    h.extend_from_slice(body);
    h
}

/// The table: (name, datagram). Every entry must be dropped without an
/// answer, by a server with or without a session for the sender.
fn malformed_dtls_table() -> Vec<(&'static str, Vec<u8>)> {
    let coap = Message::new(MessageType::Con, Code::GET, 0x4242)
        .with_token(Bytes::from_static(b"tk"))
        .with_uri_path("ps/x")
        .to_bytes()
        .unwrap()
        .to_vec();
    let hello_body = {
        // client_version, random, empty session id, cookie length 255
        // (but no cookie): truncated.
        let mut b = vec![0xfe, 0xfd];
        b.extend_from_slice(&[7u8; 32]);
        b.push(0);
        b.push(255);
        b
    };
    let client_hello = handshake(
        1,
        hello_body.len() as u32,
        0,
        0,
        hello_body.len() as u32,
        &hello_body,
    );
    let mut two_records = exact(22, 0, 1, &client_hello);
    two_records.extend_from_slice(&record(22, 0xfefd, 0, 2, 300, &[1, 2, 3]));
    let mut huge = record(22, 0xfefd, 0, 3, 0xffff, &[0u8; 1200]);
    huge.truncate(1213);
    vec![
        ("plaintext CoAP CON GET", coap),
        ("plaintext CoAP with a handshake-looking first byte", {
            let mut c = Message::new(MessageType::Non, Code::POST, 1)
                .with_uri_path("ps/x")
                .with_payload(&b"xx"[..])
                .to_bytes()
                .unwrap()
                .to_vec();
            c[0] = 22;
            c
        }),
        ("empty datagram", Vec::new()),
        ("one byte", vec![22]),
        (
            "truncated record header (5 bytes)",
            vec![22, 0xfe, 0xfd, 0, 0],
        ),
        (
            "truncated record header (12 bytes)",
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "length beyond the datagram",
            record(22, 0xfefd, 0, 0, 500, &[1u8; 20]),
        ),
        ("length 0xffff, 1200 bytes", huge),
        ("zero-length handshake record", exact(22, 0, 0, &[])),
        (
            "ClientHello fragment truncated inside the handshake header",
            exact(22, 0, 0, &[1, 0, 0]),
        ),
        (
            "ClientHello with a cookie length past the end",
            exact(22, 0, 0, &client_hello),
        ),
        (
            "handshake length 16 MiB, fragment length past the record",
            exact(
                22,
                0,
                0,
                &handshake(1, 0xff_ffff, 0, 0, 0xff_ffff, &[0u8; 40]),
            ),
        ),
        (
            "fragment offset beyond the message length",
            exact(22, 0, 0, &handshake(1, 10, 0, 0x00ff_0000, 10, &[0u8; 10])),
        ),
        (
            "a malformed ClientHello record followed by a truncated one",
            two_records,
        ),
        (
            "ClientHello in epoch 1 (wrong epoch)",
            exact(22, 1, 0, &client_hello),
        ),
        (
            "ClientHello in epoch 0xffff",
            exact(22, 0xffff, 0xffff_ffff_ffff, &client_hello),
        ),
        (
            "application data in epoch 0",
            exact(23, 0, 5, b"hello in the clear"),
        ),
        (
            "application data in epoch 1, garbage ciphertext",
            exact(23, 1, 7, &[0x55u8; 64]),
        ),
        (
            "application data in epoch 9",
            exact(23, 9, 1, &[0xaau8; 48]),
        ),
        (
            "change_cipher_spec without a handshake",
            exact(20, 0, 1, &[1]),
        ),
        ("alert without a session", exact(21, 0, 1, &[2, 40])),
        (
            "heartbeat request",
            exact(24, 0, 1, &[1, 0xff, 0xff, 0, 0, 0]),
        ),
        ("content type 0", exact(0, 0, 1, &[0u8; 16])),
        ("content type 19", exact(19, 0, 1, &[0u8; 16])),
        ("content type 25", exact(25, 0, 1, &[0u8; 16])),
        ("content type 255", exact(255, 0, 1, &[0u8; 16])),
        (
            "TLS 1.2 version in a DTLS record",
            record(22, 0x0303, 0, 0, client_hello.len() as u16, &client_hello),
        ),
        (
            "version 0x0000",
            record(22, 0x0000, 0, 0, client_hello.len() as u16, &client_hello),
        ),
        ("DTLS 1.3 unified header (0x2f)", {
            let mut v = vec![0x2f, 0, 1, 0, 16];
            v.extend_from_slice(&[9u8; 16]);
            v
        }),
        ("64 KiB of zeros", vec![0u8; 65_000]),
        (
            "64 KiB with a handshake header",
            record(22, 0xfefd, 0, 0, 0xffff, &[0x11u8; 64_000]),
        ),
    ]
}

/// Nothing comes back on `socket` within `within`.
async fn silent(socket: &UdpSocket, within: Duration) -> Result<(), Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(within, socket.recv_from(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(Ok((n, _))) => Err(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("recv: {e}"),
    }
}

/// A DTLS session over a socket the test owns (so it can also send raw
/// datagrams from the session's address).
struct Session {
    socket: UdpSocket,
    server: SocketAddr,
    dtls: ClientSession,
    mid: u16,
}

impl Session {
    async fn connect(server: SocketAddr, identity: &str, key: &str) -> Self {
        let connector = DtlsConnector::new(ClientConfig::new(identity, key)).unwrap();
        let mut me = Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            dtls: connector.connect(Instant::now()).unwrap(),
            mid: 1,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        loop {
            me.flush().await;
            match me.dtls.poll_event() {
                Some(ClientEvent::Connected) => return me,
                Some(other) => panic!("handshake: {other:?}"),
                None => {}
            }
            assert!(Instant::now() < deadline, "no handshake within 10 s");
            let wake = me
                .dtls
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
            let wait = wake
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            match tokio::time::timeout(wait, me.socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => me.dtls.handle_datagram(Instant::now(), &buf[..n]),
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => me.dtls.handle_timeout(Instant::now()),
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(d) = self.dtls.poll_transmit() {
            self.socket.send_to(&d, self.server).await.unwrap();
        }
    }

    /// Sends one CoAP request through the session; returns the response and
    /// the ciphertext datagram that carried the request.
    async fn request(&mut self, m: Message) -> (Message, Vec<u8>) {
        let mut m = m;
        self.mid = self.mid.wrapping_add(1);
        m.message_id = self.mid;
        self.dtls.send(&m.to_bytes().unwrap()).unwrap();
        let mut sent = Vec::new();
        while let Some(d) = self.dtls.poll_transmit() {
            self.socket.send_to(&d, self.server).await.unwrap();
            sent = d.to_vec();
        }
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, _) = tokio::time::timeout(left, self.socket.recv_from(&mut buf))
                .await
                .expect("a response through the session within 5 s")
                .unwrap();
            self.dtls.handle_datagram(Instant::now(), &buf[..n]);
            self.flush().await;
            while let Some(event) = self.dtls.poll_event() {
                match event {
                    ClientEvent::Data(d) => {
                        let r = Message::from_bytes(d).unwrap();
                        if r.token == m.token && r.code.is_response() {
                            return (r, sent);
                        }
                    }
                    other => panic!("session event {other:?}"),
                }
            }
        }
    }

    /// Nothing decryptable or raw comes back within `within`.
    async fn silent(&mut self, within: Duration) -> Result<(), String> {
        match silent(&self.socket, within).await {
            Ok(()) => Ok(()),
            Err(d) => {
                self.dtls.handle_datagram(Instant::now(), &d);
                let events: Vec<String> = std::iter::from_fn(|| self.dtls.poll_event())
                    .map(|e| format!("{e:?}"))
                    .collect();
                Err(format!("{} bytes back, events {events:?}", d.len()))
            }
        }
    }
}

/// Sends the table to `dtls` from fresh sockets and from the address of an
/// established session; the session must survive. Returns the number of
/// datagrams sent.
async fn dtls_table_against(
    process: &mut GatewayProcess,
    dtls: SocketAddr,
    identity: &str,
    key: &str,
    request: impl Fn() -> Message,
    ok: Code,
) -> usize {
    let table = malformed_dtls_table();
    let mut sent = 0;
    for (name, datagram) in &table {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(datagram, dtls).await.unwrap();
        sent += 1;
        if let Err(back) = silent(&socket, Duration::from_millis(150)).await {
            panic!(
                "{}: {name}: answered with {} bytes",
                process.name,
                back.len()
            );
        }
    }
    process.assert_alive();

    let mut session = Session::connect(dtls, identity, key).await;
    let (r, carried) = session.request(request()).await;
    assert_eq!(r.code, ok, "{}: request through the session", process.name);
    // Everything again from the session's own address, plus a replay of
    // the record that carried the request (the replay window drops it, so
    // it is neither answered from the dedup cache nor published again).
    let mut with_replay = table.clone();
    with_replay.push(("replayed application record", carried));
    for (name, datagram) in &with_replay {
        session.socket.send_to(datagram, dtls).await.unwrap();
        sent += 1;
        if let Err(what) = session.silent(Duration::from_millis(150)).await {
            panic!(
                "{}: {name} from the session's address: {what}",
                process.name
            );
        }
        assert!(!session.dtls.is_closed(), "{name} closed the session");
    }
    let (r, _) = session.request(request()).await;
    assert_eq!(
        r.code, ok,
        "{}: the session goes on after the table",
        process.name
    );
    process.assert_alive();
    sent
}

/// A CoAP error code (4.xx, 5.xx) in coap-client's output, if any (it
/// prints nothing for a 2.04 without payload, the code for errors).
fn error_code(out: &str) -> Option<&str> {
    out.split_whitespace().find(|w| {
        let b = w.as_bytes();
        b.len() == 4
            && (b[0] == b'4' || b[0] == b'5')
            && b[1] == b'.'
            && b[2..].iter().all(u8::is_ascii_digit)
    })
}

fn coap_client_openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("coap-client-openssl")
        .args(args)
        .output()
        .expect("coap-client-openssl is installed (scripts/test.sh installs libcoap3-bin)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dtls_records_are_dropped_silently_and_dtls_keeps_working() {
    // EMQX mode, embedded broker.
    let psk = temp_file("psk.txt", "dev1:secret-one\n");
    let mut gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &[
            "--udp",
            "127.0.0.1:0",
            "--dtls",
            "127.0.0.1:0",
            "--psk-file",
            psk.to_str().unwrap(),
        ],
        &["udp", "dtls"],
    );
    let emqx_dtls = gw.addr("dtls");
    let mid = std::sync::atomic::AtomicU16::new(1);
    let sent_e = dtls_table_against(
        &mut gw,
        emqx_dtls,
        "dev1",
        "secret-one",
        || {
            Message::new(MessageType::Con, Code::POST, 0)
                .with_token(Bytes::copy_from_slice(
                    &mid.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        .to_be_bytes(),
                ))
                .with_uri_path("ps/dtls/alive")
                .with_uri_query("qos=1")
                .with_payload(&b"alive"[..])
        },
        Code::CHANGED,
    )
    .await;
    let out = tokio::task::spawn_blocking(move || {
        coap_client_openssl(&[
            "-m",
            "post",
            "-e",
            "after-the-table",
            "-u",
            "dev1",
            "-k",
            "secret-one",
            &format!("coaps://{emqx_dtls}/ps/dtls/alive?qos=1"),
        ])
    })
    .await
    .unwrap();
    // coap-client prints nothing for a 2.04 without payload, the code for
    // errors.
    assert_eq!(
        error_code(&out),
        None,
        "coap-client-openssl after the table: {out:?}"
    );
    gw.assert_alive();

    // Hono mode.
    let registry = registry_file();
    let mut adapter = GatewayProcess::start(
        "coap-hono-adapter",
        &[
            "--registry",
            registry.to_str().unwrap(),
            "--dtls",
            "127.0.0.1:0",
        ],
        &["dtls"],
    );
    let hono_dtls = adapter.addr("dtls");
    let sent_h = dtls_table_against(
        &mut adapter,
        hono_dtls,
        D0.0,
        D0.1,
        || {
            Message::new(MessageType::Con, Code::POST, 0)
                .with_token(Bytes::copy_from_slice(
                    &mid.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        .to_be_bytes(),
                ))
                .with_uri_path("t")
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_payload(&b"alive"[..])
        },
        Code::CHANGED,
    )
    .await;
    let (identity, key) = D0;
    let out = tokio::task::spawn_blocking(move || {
        coap_client_openssl(&[
            "-m",
            "post",
            "-t",
            "text/plain",
            "-e",
            "after-the-table",
            "-u",
            identity,
            "-k",
            key,
            &format!("coaps://{hono_dtls}/t"),
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        error_code(&out),
        None,
        "coap-client-openssl after the table: {out:?}"
    );
    adapter.assert_alive();
    println!(
        "FIGURES hostile_dtls table={} entries (+1 replay from the session address) datagrams emqx={sent_e} hono={sent_h}: all dropped silently, sessions survived, coap-client-openssl ok",
        malformed_dtls_table().len()
    );
}
