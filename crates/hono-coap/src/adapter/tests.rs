//! The resource layer against the in-process downstream and an in-memory
//! registry.

use std::sync::Mutex;

use super::*;
use crate::file_registry::FileRegistry;
use crate::in_process::InProcessDownstream;

const T: &str = "DEFAULT_TENANT";

const REGISTRY: &str = r#"{
  "tenants": [
    {"tenant-id": "DEFAULT_TENANT", "max-ttd": 30},
    {"tenant-id": "off", "enabled": false},
    {"tenant-id": "noadapter", "adapters": [{"type": "hono-mqtt", "enabled": true}]},
    {"tenant-id": "ack0", "adapters": [{"type": "hono-coap", "enabled": true,
       "ext": {"timeoutToAck": 0, "deviceTriggeredTimeoutToAck": 700}}]},
    {"tenant-id": "ackneg", "adapters": [{"type": "hono-coap", "enabled": true, "ext": {"timeoutToAck": -1}}]},
    {"tenant-id": "limited", "minimum-message-size": 10,
     "resource-limits": {"data-volume": {"max-bytes": 25, "effective-since": "2020-01-01T00:00:00Z",
                                          "period": {"mode": "days", "no-of-days": 100000}}}}
  ],
  "devices": [
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "via": ["gw-1", "gw-off"],
     "defaults": {"content-type": "application/json", "site": "lab"}},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4712", "via": ["gw-1"]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "plain"},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "dev-off", "enabled": false, "via": ["gw-1"]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-1"},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-2"},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-off", "enabled": false},
    {"tenant-id": "off", "device-id": "d"},
    {"tenant-id": "noadapter", "device-id": "d"},
    {"tenant-id": "ack0", "device-id": "d"},
    {"tenant-id": "ackneg", "device-id": "d"},
    {"tenant-id": "limited", "device-id": "d"}
  ],
  "credentials": [
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "type": "psk", "auth-id": "sensor1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "dev-off", "type": "psk", "auth-id": "off1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-1", "type": "psk", "auth-id": "gw",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-2", "type": "psk", "auth-id": "gw2",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-off", "type": "psk", "auth-id": "gwoff",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "noadapter", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "off", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "ack0", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "ackneg", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "limited", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]}
  ]
}"#;

struct Fixture {
    adapter: Arc<HonoAdapter>,
    downstream: Arc<InProcessDownstream>,
}

fn fixture() -> Fixture {
    fixture_with(AdapterSettings::default())
}

fn fixture_with(settings: AdapterSettings) -> Fixture {
    let registry = Arc::new(FileRegistry::from_json(REGISTRY).unwrap());
    let downstream = Arc::new(InProcessDownstream::new());
    let adapter = Arc::new(HonoAdapter::new(registry, downstream.clone(), settings));
    Fixture {
        adapter,
        downstream,
    }
}

/// A request: `uri` is path and optional `?query&query`.
fn request(mtype: MessageType, code: Code, uri: &str) -> Message {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut message = Message::new(mtype, code, 1);
    if path != "/" {
        for segment in path.trim_start_matches('/').split('/') {
            message.add_option(OptionNumber::URI_PATH, segment.to_owned());
        }
    }
    for entry in query.split('&').filter(|e| !e.is_empty()) {
        message.add_option(OptionNumber::URI_QUERY, entry.to_owned());
    }
    message
}

fn con(code: Code, uri: &str, body: &str) -> Message {
    request(MessageType::Con, code, uri).with_payload(body.to_owned())
}

fn post(uri: &str, body: &str) -> Message {
    con(Code::POST, uri, body).with_content_format(ContentFormat::TEXT_PLAIN)
}

fn put(uri: &str, body: &str) -> Message {
    con(Code::PUT, uri, body).with_content_format(ContentFormat::TEXT_PLAIN)
}

impl Fixture {
    async fn call(&self, identity: Option<&str>, message: &Message) -> Message {
        self.adapter
            .handle(identity.map(str::as_bytes), message, &|_| {})
            .await
    }

    async fn code(&self, identity: Option<&str>, message: &Message) -> Code {
        self.call(identity, message).await.code
    }
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

fn location_path(message: &Message) -> Vec<String> {
    message
        .options_of(OptionNumber::LOCATION_PATH)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn location_query(message: &Message) -> Vec<String> {
    message
        .options_of(OptionNumber::LOCATION_QUERY)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

const SENSOR: Option<&str> = Some("sensor1@DEFAULT_TENANT");
const GW: Option<&str> = Some("gw@DEFAULT_TENANT");

#[tokio::test]
async fn authenticated_post_forwards_with_headers() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    for uri in ["/t", "/telemetry"] {
        let answer = f
            .call(
                SENSOR,
                &con(Code::POST, uri, "{\"temp\":5}").with_content_format(ContentFormat::JSON),
            )
            .await;
        assert_eq!(answer.code, Code::CHANGED);
        assert!(answer.payload.is_empty());
        let got = telemetry.recv().await.unwrap();
        assert_eq!(got.qos, Qos::AtLeastOnce);
        let m = got.message;
        assert_eq!((m.tenant_id.as_str(), m.device_id.as_str()), (T, "4711"));
        assert_eq!(m.gateway_id, None);
        assert_eq!(m.content_type, "application/json");
        assert_eq!(m.orig_address, uri);
        assert_eq!(m.payload.as_ref(), b"{\"temp\":5}");
        assert_eq!(m.ttd, None);
        assert_eq!(m.defaults.get("site").and_then(|v| v.as_str()), Some("lab"));
    }
    let mut events = f.downstream.consume_events(T);
    for uri in ["/e", "/event"] {
        assert_eq!(f.code(SENSOR, &post(uri, "ev")).await, Code::CHANGED);
        let got = events.recv().await.unwrap();
        assert_eq!(got.message.content_type, "text/plain; charset=utf-8");
        assert_eq!(got.message.orig_address, uri);
    }
}

#[tokio::test]
async fn non_telemetry_is_qos0_and_non_event_or_response_is_rejected() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    let non = request(MessageType::Non, Code::POST, "/t")
        .with_payload("x")
        .with_content_format(ContentFormat::TEXT_PLAIN);
    assert_eq!(f.code(SENSOR, &non).await, Code::CHANGED);
    assert_eq!(telemetry.recv().await.unwrap().qos, Qos::AtMostOnce);
    for uri in ["/e", "/cr/abc?hono-cmd-status=200"] {
        let non = request(MessageType::Non, Code::POST, uri).with_payload("x");
        let answer = f.call(SENSOR, &non).await;
        assert_eq!(answer.code, Code::BAD_REQUEST, "{uri}");
        assert!(text(&answer).contains("CON"), "{}", text(&answer));
        assert_eq!(answer.content_format(), Some(ContentFormat::TEXT_PLAIN));
    }
    // NON telemetry without consumer still gets 2.04 (QoS 0 is not confirmed)
    let non = request(MessageType::Non, Code::POST, "/t")
        .with_payload("x")
        .with_content_format(ContentFormat::TEXT_PLAIN);
    drop(telemetry);
    assert_eq!(f.code(SENSOR, &non).await, Code::CHANGED);
}

#[tokio::test]
async fn resources_and_methods() {
    let f = fixture();
    let _t = f.downstream.consume_telemetry(T);
    // GET / reveals nothing
    assert_eq!(
        f.code(SENSOR, &request(MessageType::Con, Code::GET, "/"))
            .await,
        Code::NOT_FOUND
    );
    assert_eq!(
        f.code(None, &request(MessageType::Con, Code::GET, "/"))
            .await,
        Code::NOT_FOUND
    );
    for uri in ["/x", "/c", "/command", "/tele", "/.well-known/core"] {
        assert_eq!(
            f.code(SENSOR, &post(uri, "x")).await,
            Code::NOT_FOUND,
            "{uri}"
        );
    }
    for method in [Code::GET, Code::DELETE, Code::FETCH, Code::PATCH] {
        assert_eq!(
            f.code(SENSOR, &con(method, "/t", "")).await,
            Code::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
    // POST with extra segments
    assert_eq!(
        f.code(SENSOR, &post("/t/DEFAULT_TENANT/4711", "x")).await,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn post_needs_identity_and_put_needs_tenant_and_device() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    let answer = f.call(None, &post("/t", "x")).await;
    assert_eq!(answer.code, Code::UNAUTHORIZED);
    assert_eq!(f.code(None, &post("/e", "x")).await, Code::UNAUTHORIZED);
    assert_eq!(
        f.code(Some("nobody@DEFAULT_TENANT"), &post("/t", "x"))
            .await,
        Code::UNAUTHORIZED
    );

    assert_eq!(
        f.code(None, &put("/t/DEFAULT_TENANT/4711", "x")).await,
        Code::CHANGED
    );
    let m = telemetry.recv().await.unwrap().message;
    assert_eq!((m.device_id.as_str(), m.gateway_id.clone()), ("4711", None));
    assert_eq!(m.orig_address, "/t/DEFAULT_TENANT/4711");

    for uri in [
        "/t//4711",
        "/t/DEFAULT_TENANT",
        "/t/DEFAULT_TENANT/",
        "/t",
        "/t/a/b/c",
    ] {
        assert_eq!(f.code(None, &put(uri, "x")).await, Code::NOT_FOUND, "{uri}");
    }
    assert_eq!(
        f.code(SENSOR, &put("/t/DEFAULT_TENANT/", "x")).await,
        Code::NOT_FOUND
    );
    // authenticated PUT naming itself = itself
    assert_eq!(
        f.code(SENSOR, &put("/t/DEFAULT_TENANT/4711", "x")).await,
        Code::CHANGED
    );
    assert_eq!(telemetry.recv().await.unwrap().message.gateway_id, None);
    assert_eq!(f.code(SENSOR, &put("/t//4711", "x")).await, Code::CHANGED);
    let _ = telemetry.recv().await.unwrap();
    // unknown device, unknown tenant
    assert_eq!(
        f.code(None, &put("/t/DEFAULT_TENANT/nope", "x")).await,
        Code::NOT_FOUND
    );
    assert_eq!(
        f.code(None, &put("/t/nope/4711", "x")).await,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn gateways() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    for uri in ["/t/DEFAULT_TENANT/4711", "/t//4711", "/telemetry//4711"] {
        assert_eq!(f.code(GW, &put(uri, "x")).await, Code::CHANGED, "{uri}");
        let m = telemetry.recv().await.unwrap().message;
        assert_eq!(m.device_id, "4711");
        assert_eq!(m.gateway_id.as_deref(), Some("gw-1"));
        assert_eq!(m.orig_address, uri);
    }
    // gw-2 is not in 4711's via
    let answer = f
        .call(Some("gw2@DEFAULT_TENANT"), &put("/t//4711", "x"))
        .await;
    assert_eq!(answer.code, Code::FORBIDDEN);
    // gw-off is in via but disabled
    assert_eq!(
        f.code(Some("gwoff@DEFAULT_TENANT"), &put("/t//4711", "x"))
            .await,
        Code::FORBIDDEN
    );
    // other tenant in URI
    assert_eq!(
        f.code(GW, &put("/t/other/4711", "x")).await,
        Code::FORBIDDEN
    );
    assert_eq!(
        f.code(SENSOR, &put("/t/other/4711", "x")).await,
        Code::FORBIDDEN
    );
    // gateway for a disabled device
    assert_eq!(f.code(GW, &put("/t//dev-off", "x")).await, Code::NOT_FOUND);
}

#[tokio::test]
async fn registry_states() {
    let f = fixture();
    // disabled device still authenticates, then 4.04
    assert_eq!(
        f.code(Some("off1@DEFAULT_TENANT"), &post("/t", "x")).await,
        Code::NOT_FOUND
    );
    assert_eq!(
        f.code(Some("d@noadapter"), &post("/t", "x")).await,
        Code::FORBIDDEN
    );
    assert_eq!(
        f.code(Some("d@off"), &post("/t", "x")).await,
        Code::FORBIDDEN
    );
    assert_eq!(
        f.code(None, &put("/t/noadapter/d", "x")).await,
        Code::FORBIDDEN
    );
    assert_eq!(
        f.code(None, &put("/t/DEFAULT_TENANT/dev-off", "x")).await,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn payload_rules_and_content_types() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    // empty body with Content-Format: forwarded with that type
    let m = con(Code::POST, "/t", "").with_content_format(ContentFormat::JSON);
    assert_eq!(f.code(SENSOR, &m).await, Code::CHANGED);
    let got = telemetry.recv().await.unwrap().message;
    assert_eq!(
        (got.content_type.as_str(), got.payload.len()),
        ("application/json", 0)
    );
    // empty body without either → 4.00
    let answer = f.call(SENSOR, &con(Code::POST, "/t", "")).await;
    assert_eq!(answer.code, Code::BAD_REQUEST);
    assert!(text(&answer).contains("Content-Format"));
    // ?empty: the empty-notification type, even with a Content-Format
    for m in [
        con(Code::POST, "/t?empty", ""),
        con(Code::POST, "/t?empty", "").with_content_format(ContentFormat::JSON),
    ] {
        assert_eq!(f.code(SENSOR, &m).await, Code::CHANGED);
        assert_eq!(
            telemetry.recv().await.unwrap().message.content_type,
            EMPTY_NOTIFICATION_CONTENT_TYPE
        );
    }
    // ?empty with a body → 4.00
    assert_eq!(
        f.code(SENSOR, &con(Code::POST, "/t?empty", "x")).await,
        Code::BAD_REQUEST
    );
    // body without Content-Format: the device's default, else octet-stream
    assert_eq!(
        f.code(SENSOR, &con(Code::POST, "/t", "x")).await,
        Code::CHANGED
    );
    assert_eq!(
        telemetry.recv().await.unwrap().message.content_type,
        "application/json"
    );
    assert_eq!(
        f.code(None, &con(Code::PUT, "/t/DEFAULT_TENANT/plain", "x"))
            .await,
        Code::CHANGED
    );
    assert_eq!(
        telemetry.recv().await.unwrap().message.content_type,
        DEFAULT_CONTENT_TYPE
    );
}

#[tokio::test]
async fn payload_size_limit() {
    let f = fixture_with(AdapterSettings {
        max_payload_size: 16,
        ..AdapterSettings::default()
    });
    let _t = f.downstream.consume_telemetry(T);
    assert_eq!(
        f.code(SENSOR, &post("/t", &"x".repeat(16))).await,
        Code::CHANGED
    );
    let answer = f.call(SENSOR, &post("/t", &"x".repeat(17))).await;
    assert_eq!(answer.code, Code::REQUEST_ENTITY_TOO_LARGE);
    // size is checked before authorization (as the CoAP stack does)
    assert_eq!(
        f.code(None, &put("/t/DEFAULT_TENANT/nope", &"x".repeat(17)))
            .await,
        Code::REQUEST_ENTITY_TOO_LARGE
    );
}

#[tokio::test]
async fn data_volume_limit() {
    let f = fixture();
    let _t = f.downstream.consume_telemetry("limited");
    // minimum-message-size 10: 3 bytes count 10; limit 25
    assert_eq!(
        f.code(Some("d@limited"), &post("/t", "abc")).await,
        Code::CHANGED
    );
    assert_eq!(
        f.code(Some("d@limited"), &post("/t", "abc")).await,
        Code::CHANGED
    );
    let answer = f.call(Some("d@limited"), &post("/t", "abc")).await;
    assert_eq!(answer.code, Code::TOO_MANY_REQUESTS);
    // failed deliveries are not counted
    let f = fixture();
    assert_eq!(
        f.code(Some("d@limited"), &post("/t", "abc")).await,
        Code::SERVICE_UNAVAILABLE
    );
    let _t = f.downstream.consume_telemetry("limited");
    assert_eq!(
        f.code(Some("d@limited"), &post("/t", "abc")).await,
        Code::CHANGED
    );
    assert_eq!(
        f.code(Some("d@limited"), &post("/t", "abc")).await,
        Code::CHANGED
    );
}

#[tokio::test]
async fn unavailable_and_unroutable_get_503_with_max_age() {
    let f = fixture();
    let answer = f.call(SENSOR, &post("/t", "x")).await;
    assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(answer.max_age(), Some(2));
    assert_eq!(answer.content_format(), Some(ContentFormat::TEXT_PLAIN));
    assert!(!answer.payload.is_empty());
    // events are kept without a consumer
    assert_eq!(f.code(SENSOR, &post("/e", "kept")).await, Code::CHANGED);
    let mut events = f.downstream.consume_events(T);
    assert_eq!(
        events.recv().await.unwrap().message.payload.as_ref(),
        b"kept"
    );
    f.downstream.set_available(false);
    let answer = f.call(SENSOR, &post("/e", "x")).await;
    assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(answer.max_age(), Some(2));
}

#[tokio::test]
async fn server_time_option() {
    let f = fixture();
    let _t = f.downstream.consume_telemetry(T);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for m in [
        post("/t", "x").with_option(TIME_OPTION, Vec::new()),
        post("/t?hono-time", "x"),
        // also on errors
        con(Code::POST, "/t?hono-time", ""),
    ] {
        let answer = f.call(SENSOR, &m).await;
        let value = answer.option(TIME_OPTION).expect("time option");
        let millis = value.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(before <= millis && millis <= after, "{millis}");
    }
    assert!(
        f.call(SENSOR, &post("/t", "x"))
            .await
            .option(TIME_OPTION)
            .is_none()
    );
}

#[tokio::test]
async fn ack_timeout_follows_tenant_and_piggy() {
    let f = fixture_with(AdapterSettings {
        timeout_to_ack_ms: 250,
        ..AdapterSettings::default()
    });
    for tenant in [T, "ack0", "ackneg"] {
        let _keep = f.downstream.consume_telemetry(tenant);
        std::mem::forget(_keep);
    }
    let seen = Mutex::new(Vec::new());
    let record = |t: AckTimeout| seen.lock().unwrap().push(t);
    let cases = [
        (SENSOR, "/t", AckTimeout::After(Duration::from_millis(250))),
        (Some("d@ack0"), "/t", AckTimeout::Immediately),
        (
            Some("d@ack0"),
            "/t?piggy",
            AckTimeout::After(Duration::from_millis(700)),
        ),
        (Some("d@ackneg"), "/t", AckTimeout::Never),
        (Some("d@ackneg"), "/t?piggy", AckTimeout::Never),
    ];
    for (identity, uri, expected) in cases {
        seen.lock().unwrap().clear();
        let answer = f
            .adapter
            .handle(identity.map(str::as_bytes), &post(uri, "x"), &record)
            .await;
        assert_eq!(answer.code, Code::CHANGED);
        assert_eq!(*seen.lock().unwrap(), vec![expected], "{identity:?} {uri}");
    }
}

/// Starts a request in a task and waits until the device is subscribed.
async fn start_waiting(
    f: &Fixture,
    identity: Option<&'static str>,
    message: Message,
    tenant: &str,
    device: &str,
) -> tokio::task::JoinHandle<Message> {
    let adapter = f.adapter.clone();
    let task = tokio::spawn(async move {
        adapter
            .handle(identity.map(str::as_bytes), &message, &|_| {})
            .await
    });
    wait_subscribed(f, tenant, device).await;
    task
}

async fn wait_subscribed(f: &Fixture, tenant: &str, device: &str) {
    for _ in 0..1000 {
        if f.downstream.is_device_waiting(tenant, device) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{tenant}/{device} never subscribed");
}

#[tokio::test]
async fn ttd_delivers_one_way_and_request_response_commands() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    // one-way, short names
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=10", "x"), T, "4711").await;
    assert_eq!(telemetry.recv().await.unwrap().message.ttd, Some(10));
    f.downstream
        .send_command(
            Command::one_way(T, "4711", "setBrightness", "{\"b\":87}")
                .with_content_type("application/json"),
        )
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    assert_eq!(location_query(&answer), vec!["hono-command=setBrightness"]);
    assert_eq!(location_path(&answer), vec!["c"]);
    assert_eq!(answer.content_format(), Some(ContentFormat::JSON));
    assert_eq!(text(&answer), "{\"b\":87}");
    assert!(
        !f.downstream.is_device_waiting(T, "4711"),
        "unsubscribed after the command"
    );

    // request-response, long names, event
    let mut events = f.downstream.consume_events(T);
    let waiting = start_waiting(&f, SENSOR, post("/event?hono-ttd=10", "x"), T, "4711").await;
    assert_eq!(events.recv().await.unwrap().message.ttd, Some(10));
    f.downstream
        .send_command(
            Command::one_way(T, "4711", "reboot", "now")
                .with_reply("corr-1", "app-1")
                .with_content_type("application/x-unknown"),
        )
        .unwrap();
    let answer = waiting.await.unwrap();
    let path = location_path(&answer);
    assert_eq!(path.len(), 2, "{path:?}");
    assert_eq!(path[0], "command_response");
    let rid = RequestId::decode(&path[1]).unwrap();
    assert_eq!(
        (rid.correlation_id.as_str(), rid.reply_to.as_str()),
        ("corr-1", "app-1")
    );
    assert_eq!(answer.content_format(), None, "no CoAP number for the type");
    assert_eq!(text(&answer), "now");
}

#[tokio::test]
async fn command_response_round_trip() {
    let f = fixture();
    let mut responses = f.downstream.consume_command_responses("app-1");
    let rid = RequestId {
        correlation_id: "corr-1".into(),
        reply_to: "app-1".into(),
    }
    .encode()
    .unwrap();
    let answer = f
        .call(
            SENSOR,
            &con(
                Code::POST,
                &format!("/cr/{rid}?hono-cmd-status=200"),
                "{\"ok\":1}",
            )
            .with_content_format(ContentFormat::JSON),
        )
        .await;
    assert_eq!(answer.code, Code::CHANGED);
    let r = responses.recv().await.unwrap();
    assert_eq!(
        (r.status, r.correlation_id.as_str(), r.device_id.as_str()),
        (200, "corr-1", "4711")
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.payload.as_ref(), b"{\"ok\":1}");
    // long name, unauthenticated, gateway
    for (identity, method, uri, device, status) in [
        (
            SENSOR,
            Code::POST,
            format!("/command_response/{rid}?hono-cmd-status=404"),
            "4711",
            404,
        ),
        (
            None,
            Code::PUT,
            format!("/cr/DEFAULT_TENANT/4712/{rid}?hono-cmd-status=500"),
            "4712",
            500,
        ),
        (
            GW,
            Code::PUT,
            format!("/cr//4711/{rid}?hono-cmd-status=201"),
            "4711",
            201,
        ),
    ] {
        assert_eq!(
            f.code(identity, &con(method, &uri, "")).await,
            Code::CHANGED,
            "{uri}"
        );
        let r = responses.recv().await.unwrap();
        assert_eq!((r.device_id.as_str(), r.status), (device, status));
        assert_eq!(r.content_type, None);
    }
    // a gateway not in via
    assert_eq!(
        f.code(
            Some("gw2@DEFAULT_TENANT"),
            &con(
                Code::PUT,
                &format!("/cr//4711/{rid}?hono-cmd-status=200"),
                ""
            )
        )
        .await,
        Code::FORBIDDEN
    );
}

#[tokio::test]
async fn command_response_errors() {
    let f = fixture();
    let _responses = f.downstream.consume_command_responses("app-1");
    let rid = RequestId {
        correlation_id: "c".into(),
        reply_to: "app-1".into(),
    }
    .encode()
    .unwrap();
    for status in [
        "",
        "?hono-cmd-status",
        "?hono-cmd-status=abc",
        "?hono-cmd-status=302",
        "?hono-cmd-status=600",
        "?hono-cmd-status=199",
    ] {
        let uri = format!("/cr/{rid}{status}");
        assert_eq!(
            f.code(SENSOR, &post(&uri, "")).await,
            Code::BAD_REQUEST,
            "{uri}"
        );
    }
    for uri in [
        "/cr/garbage!?hono-cmd-status=200",
        "/cr?hono-cmd-status=200",
    ] {
        assert_eq!(
            f.code(SENSOR, &post(uri, "")).await,
            Code::BAD_REQUEST,
            "{uri}"
        );
    }
    assert_eq!(
        f.code(
            None,
            &put("/cr/DEFAULT_TENANT/4711?hono-cmd-status=200", "")
        )
        .await,
        Code::BAD_REQUEST
    );
    // nobody waits for this reply_to
    let other = RequestId {
        correlation_id: "c".into(),
        reply_to: "gone".into(),
    }
    .encode()
    .unwrap();
    let answer = f
        .call(
            SENSOR,
            &post(&format!("/cr/{other}?hono-cmd-status=200"), ""),
        )
        .await;
    assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(answer.max_age(), Some(2));
    // authorization applies
    assert_eq!(
        f.code(
            None,
            &put(
                &format!("/cr/DEFAULT_TENANT/dev-off/{rid}?hono-cmd-status=200"),
                ""
            )
        )
        .await,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn ttd_for_unauthenticated_devices_and_gateways() {
    let f = fixture();
    let _telemetry = f.downstream.consume_telemetry(T);
    // unauthenticated: one-way `c`, request-response `cr/{tenant}/{device}/{id}`
    let waiting = start_waiting(
        &f,
        None,
        put("/t/DEFAULT_TENANT/4712?hono-ttd=5", "x"),
        T,
        "4712",
    )
    .await;
    f.downstream
        .send_command(Command::one_way(T, "4712", "open", ""))
        .unwrap();
    assert_eq!(location_path(&waiting.await.unwrap()), vec!["c"]);
    let waiting = start_waiting(
        &f,
        None,
        put("/telemetry/DEFAULT_TENANT/4712?hono-ttd=5", "x"),
        T,
        "4712",
    )
    .await;
    f.downstream
        .send_command(Command::one_way(T, "4712", "open", "").with_reply("k", "app"))
        .unwrap();
    let path = location_path(&waiting.await.unwrap());
    assert_eq!(&path[..3], ["command_response", T, "4712"]);
    assert_eq!(RequestId::decode(&path[3]).unwrap().correlation_id, "k");

    // a gateway for one device: `c//{device}`, `cr//{device}/{id}`
    let waiting = start_waiting(&f, GW, put("/t//4711?hono-ttd=5", "x"), T, "4711").await;
    assert!(!f.downstream.is_device_waiting(T, "gw-1"));
    f.downstream
        .send_command(Command::one_way(T, "4711", "blink", ""))
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(location_path(&answer), vec!["c", "", "4711"]);
    assert_eq!(location_query(&answer), vec!["hono-command=blink"]);
    let waiting = start_waiting(
        &f,
        GW,
        put("/t/DEFAULT_TENANT/4711?hono-ttd=5", "x"),
        T,
        "4711",
    )
    .await;
    f.downstream
        .send_command(Command::one_way(T, "4711", "blink", "").with_reply("k", "app"))
        .unwrap();
    let path = location_path(&waiting.await.unwrap());
    assert_eq!(&path[..3], ["cr", "", "4711"]);
}

#[tokio::test]
async fn gateway_waiting_for_itself_also_waits_for_its_devices() {
    let f = fixture();
    let _telemetry = f.downstream.consume_telemetry(T);
    // 4711 and 4712 last sent through gw-1
    assert_eq!(f.code(GW, &put("/t//4711", "x")).await, Code::CHANGED);
    assert_eq!(f.code(GW, &put("/t//4712", "x")).await, Code::CHANGED);
    let waiting = start_waiting(&f, GW, post("/t?hono-ttd=5", "x"), T, "gw-1").await;
    assert!(f.downstream.is_device_waiting(T, "4711"));
    assert!(f.downstream.is_device_waiting(T, "4712"));
    f.downstream
        .send_command(Command::one_way(T, "4712", "blink", "").with_reply("k", "app"))
        .unwrap();
    let answer = waiting.await.unwrap();
    let path = location_path(&answer);
    assert_eq!(&path[..3], ["cr", "", "4712"]);
    for device in ["gw-1", "4711", "4712"] {
        assert!(!f.downstream.is_device_waiting(T, device), "{device}");
    }
    // a command for the gateway itself: plain `c`
    let waiting = start_waiting(&f, GW, post("/t?hono-ttd=5", "x"), T, "gw-1").await;
    f.downstream
        .send_command(Command::one_way(T, "gw-1", "x", ""))
        .unwrap();
    assert_eq!(location_path(&waiting.await.unwrap()), vec!["c"]);
    // 4711 then sends through gw-2 (not in its via: refused, route unchanged);
    // a device that moved to another gateway leaves gw-1's list
    let mut routes = GatewayRoutes::new(10);
    routes.record(T, "a", "g1");
    routes.record(T, "b", "g1");
    routes.record(T, "a", "g2");
    assert_eq!(routes.devices_of(T, "g1"), vec!["b"]);
    assert_eq!(routes.devices_of(T, "g2"), vec!["a"]);
}

#[test]
fn gateway_routes_are_bounded() {
    let mut routes = GatewayRoutes::new(3);
    for d in ["a", "b", "c", "d", "e"] {
        routes.record(T, d, "g");
    }
    assert_eq!(routes.devices_of(T, "g"), vec!["a", "b", "c"]);
    // moving a known device is still possible when full
    routes.record(T, "a", "h");
    assert_eq!(routes.devices_of(T, "h"), vec!["a"]);
    assert_eq!(routes.last_gateway.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn ttd_expires_is_capped_and_second_command_is_rejected() {
    let f = fixture();
    let mut telemetry = f.downstream.consume_telemetry(T);
    let mut responses = f.downstream.consume_command_responses("app");
    // max-ttd of DEFAULT_TENANT is 30: 100 is capped
    let started = tokio::time::Instant::now();
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=100", "x"), T, "4711").await;
    assert_eq!(telemetry.recv().await.unwrap().message.ttd, Some(30));
    let answer = waiting.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(answer.code, Code::CHANGED);
    assert!(location_path(&answer).is_empty());
    assert!(!f.downstream.is_device_waiting(T, "4711"));
    // non-integer and zero TTDs are ignored
    for uri in [
        "/t?hono-ttd=abc",
        "/t?hono-ttd=0",
        "/t?hono-ttd=-5",
        "/t?hono-ttd",
    ] {
        let answer = f.call(SENSOR, &post(uri, "x")).await;
        assert_eq!(answer.code, Code::CHANGED);
        assert_eq!(telemetry.recv().await.unwrap().message.ttd, None, "{uri}");
    }
    // two commands for a waiting device: the first is delivered, the second
    // gets a 503 response
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=10", "x"), T, "4711").await;
    f.downstream
        .send_command(Command::one_way(T, "4711", "first", "").with_reply("1", "app"))
        .unwrap();
    f.downstream
        .send_command(Command::one_way(T, "4711", "second", "").with_reply("2", "app"))
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(location_query(&answer), vec!["hono-command=first"]);
    let rejected = responses.recv().await.unwrap();
    assert_eq!(
        (rejected.status, rejected.correlation_id.as_str()),
        (503, "2")
    );
    // after the wait the device is not reachable
    assert!(
        f.downstream
            .send_command(Command::one_way(T, "4711", "late", ""))
            .is_err()
    );
}

#[tokio::test]
async fn failed_send_unsubscribes_and_shutdown_ends_waits() {
    let f = fixture();
    // no telemetry consumer: 5.03, and the device is not left subscribed
    let answer = f.call(SENSOR, &post("/t?hono-ttd=10", "x")).await;
    assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
    assert!(!f.downstream.is_device_waiting(T, "4711"));
    let _telemetry = f.downstream.consume_telemetry(T);
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=30", "x"), T, "4711").await;
    f.adapter.begin_shutdown();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    assert!(!f.downstream.is_device_waiting(T, "4711"));
    assert_eq!(
        f.code(SENSOR, &post("/t", "x")).await,
        Code::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn observer_sees_codes_and_forwards() {
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl AdapterObserver for Seen {
        fn response(&self, code: Code) {
            self.0.lock().unwrap().push(code.to_string());
        }
        fn forwarded(&self, kind: &'static str) {
            self.0.lock().unwrap().push(kind.to_owned());
        }
    }
    let registry = Arc::new(FileRegistry::from_json(REGISTRY).unwrap());
    let downstream = Arc::new(InProcessDownstream::new());
    let seen = Arc::new(Seen::default());
    let adapter = HonoAdapter::new(registry, downstream.clone(), AdapterSettings::default())
        .with_observer(seen.clone());
    let _t = downstream.consume_telemetry(T);
    adapter
        .handle(SENSOR.map(str::as_bytes), &post("/t", "x"), &|_| {})
        .await;
    adapter.handle(None, &post("/t", "x"), &|_| {}).await;
    assert_eq!(*seen.0.lock().unwrap(), vec!["telemetry", "2.04", "4.01"]);
}

#[tokio::test]
async fn command_names_too_long_for_coap_are_refused_with_400() {
    let f = fixture();
    let _telemetry = f.downstream.consume_telemetry(T);
    let mut responses = f.downstream.consume_command_responses("app");
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=5", "x"), T, "4711").await;
    let long_name = "n".repeat(250);
    f.downstream
        .send_command(Command::one_way(T, "4711", long_name, "").with_reply("k", "app"))
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    assert!(location_query(&answer).is_empty());
    assert!(location_path(&answer).is_empty());
    assert!(answer.to_bytes().is_ok());
    let refused = responses.recv().await.unwrap();
    assert_eq!(
        (refused.status, refused.correlation_id.as_str()),
        (400, "k")
    );
    // 242 bytes of name + "hono-command=" is exactly 255: delivered
    let waiting = start_waiting(&f, SENSOR, post("/t?hono-ttd=5", "x"), T, "4711").await;
    f.downstream
        .send_command(Command::one_way(T, "4711", "n".repeat(242), ""))
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(location_query(&answer)[0].len(), 255);
    assert!(answer.to_bytes().is_ok());
}

#[tokio::test]
async fn odd_paths() {
    let f = fixture();
    let _t = f.downstream.consume_telemetry(T);
    // non-UTF-8 segment
    let mut m = post("/t", "x");
    m.remove_option(OptionNumber::URI_PATH);
    m.add_option(OptionNumber::URI_PATH, "t");
    m.add_option(OptionNumber::URI_PATH, vec![0xff, 0xfe]);
    m.add_option(OptionNumber::URI_PATH, "4711");
    assert_eq!(
        f.code(None, &m.clone().with_payload("x")).await,
        Code::NOT_FOUND
    );
    // POST /cr without a request id
    assert_eq!(
        f.code(SENSOR, &post("/cr?hono-cmd-status=200", "")).await,
        Code::BAD_REQUEST
    );
    // names are case-sensitive
    assert_eq!(f.code(SENSOR, &post("/T", "x")).await, Code::NOT_FOUND);
    assert_eq!(
        f.code(SENSOR, &post("/Telemetry", "x")).await,
        Code::NOT_FOUND
    );
    // a malformed PSK identity
    assert_eq!(
        f.code(Some("no-separator"), &post("/t", "x")).await,
        Code::UNAUTHORIZED
    );
}

#[tokio::test]
async fn clients_are_recorded_listed_and_kicked_out_of_their_wait() {
    let f = fixture();
    let _telemetry = f.downstream.consume_telemetry(T);
    let gw_peer = Peer::authenticated(
        "127.0.0.1:40001".parse().unwrap(),
        &b"gw@DEFAULT_TENANT"[..],
    );
    let udp_peer = Peer::new("127.0.0.1:40002".parse().unwrap());
    // The gateway sends for 4711 (so it also waits for 4711 later); a
    // plain-UDP device sends for itself; a rejected URI records nothing.
    let answer = f
        .adapter
        .handle_from(Some(&gw_peer), &put("/t//4711", "x"), &|_| {})
        .await;
    assert_eq!(answer.code, Code::CHANGED);
    let answer = f
        .adapter
        .handle_from(
            Some(&udp_peer),
            &put("/t/DEFAULT_TENANT/plain", "x"),
            &|_| {},
        )
        .await;
    assert_eq!(answer.code, Code::CHANGED);
    let stranger = Peer::new("127.0.0.1:40003".parse().unwrap());
    let _ = f
        .adapter
        .handle_from(Some(&stranger), &put("/nothing", "x"), &|_| {})
        .await;
    let clients = f.adapter.clients();
    assert_eq!(clients.len(), 2);
    let gw = clients.find(T, "gw-1").unwrap();
    assert_eq!(gw.auth_id.as_deref(), Some("gw"));
    assert_eq!(gw.transport, ClientTransport::Dtls);
    assert_eq!(gw.peer, gw_peer.addr);
    let plain = clients.find(T, "plain").unwrap();
    assert_eq!(
        (plain.transport, plain.auth_id),
        (ClientTransport::Udp, None)
    );

    // The gateway waits for itself and its device; the kick ends the wait
    // at once (no command) and unsubscribes.
    let adapter = f.adapter.clone();
    let waiting = tokio::spawn(async move {
        adapter
            .handle_from(Some(&gw_peer), &post("/t?hono-ttd=30", "x"), &|_| {})
            .await
    });
    wait_subscribed(&f, T, "4711").await;
    let mut waits = None;
    for _ in 0..1000 {
        waits = clients.command_waits(T, "gw-1").filter(|w| !w.is_empty());
        if waits.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let waits = waits.expect("wait not registered");
    assert_eq!(waits[0].devices, ["gw-1", "4711"]);
    assert!(clients.kick(T, "gw-1").is_some());
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("kick did not end the wait")
        .unwrap();
    assert_eq!(answer.code, Code::CHANGED);
    assert!(answer.option(OptionNumber::LOCATION_QUERY).is_none());
    assert!(!f.downstream.is_device_waiting(T, "4711"));
    assert!(!f.downstream.is_device_waiting(T, "gw-1"));
    assert!(clients.find(T, "gw-1").is_none());
}

#[test]
fn client_table_capacity_comes_from_the_settings() {
    let settings = AdapterSettings {
        max_clients: 7,
        ..AdapterSettings::default()
    };
    assert_eq!(fixture_with(settings).adapter.clients().capacity(), 7);
}

#[tokio::test]
async fn unauthenticated_clients_are_recorded_only_for_known_devices() {
    let f = fixture();
    let _telemetry = f.downstream.consume_telemetry(T);
    for (port, uri) in [
        (40010, "/t/DEFAULT_TENANT/no-such-device"),
        (40011, "/t/no-such-tenant/4711"),
        (40012, "/t/DEFAULT_TENANT/dev-off"),
    ] {
        let peer = Peer::new(SocketAddr::from(([127, 0, 0, 1], port)));
        let answer = f
            .adapter
            .handle_from(Some(&peer), &put(uri, "x"), &|_| {})
            .await;
        assert_ne!(answer.code, Code::CHANGED, "{uri}");
    }
    assert!(f.adapter.clients().is_empty());
    let peer = Peer::new(SocketAddr::from(([127, 0, 0, 1], 40013)));
    let answer = f
        .adapter
        .handle_from(Some(&peer), &put("/t/DEFAULT_TENANT/4711", "x"), &|_| {})
        .await;
    assert_eq!(answer.code, Code::CHANGED);
    assert_eq!(f.adapter.clients().len(), 1);
}
