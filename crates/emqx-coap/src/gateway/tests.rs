//! Resource logic against the embedded broker, in virtual time where
//! timers matter; notifications through a real endpoint on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use coap_endpoint::{EndpointConfig, Peer, Server};
use tokio::net::UdpSocket;

use super::*;
use crate::broker::embedded::{EmbeddedBroker, EmbeddedConfig};
use crate::broker::{BoxFuture, BrokerError, Subscribed};
use crate::topic::TopicName;

const L: ListenerId = ListenerId(0);

struct Fixture {
    gateway: Gateway,
    broker: Arc<EmbeddedBroker>,
    deliveries: Option<Deliveries>,
}

fn fixture(settings: GatewaySettings) -> Fixture {
    fixture_with_auth(settings, None)
}

fn fixture_with_auth(settings: GatewaySettings, auth: Option<AuthFile>) -> Fixture {
    let (broker, deliveries) = EmbeddedBroker::new(EmbeddedConfig::default());
    let broker = Arc::new(broker);
    let gateway = Gateway::new(broker.clone(), auth.map(Arc::new), settings);
    Fixture {
        gateway,
        broker,
        deliveries: Some(deliveries),
    }
}

fn connection_mode() -> GatewaySettings {
    GatewaySettings {
        connection_required: true,
        ..GatewaySettings::default()
    }
}

fn peer(port: u16) -> Peer {
    Peer::new(SocketAddr::from(([192, 0, 2, 1], port)))
}

fn req(code: Code, path: &str, queries: &[&str]) -> Message {
    let mut m = Message::new(MessageType::Con, code, 7)
        .with_token(&b"tk"[..])
        .with_uri_path(path);
    for q in queries {
        m = m.with_uri_query(q);
    }
    m
}

impl Fixture {
    async fn at(&self, from: &Peer, message: Message, now: Instant) -> Reply {
        let observe =
            message.code == Code::GET && message.observe() == Some(0) && !message.token.is_empty();
        self.gateway
            .handle_at(L, from, &message, observe, now)
            .await
    }

    async fn send(&self, message: Message) -> Reply {
        self.at(&peer(1000), message, Instant::now()).await
    }

    async fn code(&self, message: Message) -> Code {
        self.send(message).await.response.code
    }

    /// How many subscribers a publish to `topic` reaches right now.
    fn subscribers_of(&self, topic: &str) -> usize {
        self.broker
            .publish_at(
                Publish::new(TopicName::new(topic).unwrap(), "probe"),
                Instant::now(),
            )
            .unwrap()
    }

    async fn connect(&self, from: &Peer, clientid: &str, now: Instant) -> String {
        let reply = self
            .at(
                from,
                req(
                    Code::POST,
                    "mqtt/connection",
                    &[&format!("clientid={clientid}")],
                ),
                now,
            )
            .await;
        assert_eq!(reply.response.code, Code::CREATED);
        String::from_utf8(reply.response.payload.to_vec()).unwrap()
    }
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.response.payload).into_owned()
}

#[tokio::test]
async fn routing_and_method_errors() {
    let f = fixture(GatewaySettings::default());
    assert_eq!(f.code(req(Code::POST, "ps/a/b", &[])).await, Code::CHANGED);
    assert_eq!(
        f.code(req(Code::PUT, "ps/a/b", &[])).await,
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        f.code(req(Code::DELETE, "ps/a/b", &[])).await,
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        f.code(req(Code::GET, "mqtt/connection", &[])).await,
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        f.code(req(Code::POST, "mqtt/other", &[])).await,
        Code::NOT_FOUND
    );
    assert_eq!(
        f.code(req(Code::POST, "mqtt/connection/x", &[])).await,
        Code::NOT_FOUND
    );
    assert_eq!(
        f.code(req(Code::POST, "other/a", &[])).await,
        Code::NOT_FOUND
    );
    assert_eq!(f.code(req(Code::GET, "", &[])).await, Code::NOT_FOUND);
    // Missing topic, wildcard publish, bad parameters.
    assert_eq!(f.code(req(Code::POST, "ps", &[])).await, Code::BAD_REQUEST);
    let wildcard = f.send(req(Code::POST, "ps/a/+", &[])).await;
    assert_eq!(wildcard.response.code, Code::BAD_REQUEST);
    assert_eq!(
        wildcard.response.content_format(),
        Some(ContentFormat::TEXT_PLAIN)
    );
    assert!(text(&wildcard).contains("wildcard"), "{}", text(&wildcard));
    assert_eq!(
        f.code(req(Code::POST, "ps/a/%23", &[])).await,
        Code::BAD_REQUEST
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["qos=3"])).await,
        Code::BAD_REQUEST
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["retain=maybe"])).await,
        Code::BAD_REQUEST
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["expiry=x"])).await,
        Code::BAD_REQUEST
    );
    // Observe without a CoAP token.
    let mut no_token = req(Code::GET, "ps/a", &[]).with_observe(0);
    no_token.token = Bytes::new();
    assert_eq!(f.code(no_token).await, Code::BAD_REQUEST);
    assert_eq!(
        f.code(req(Code::GET, "ps/a/+/b#", &[]).with_observe(0))
            .await,
        Code::BAD_REQUEST
    );
}

#[tokio::test]
async fn publish_carries_qos_retain_expiry_and_content_type() {
    let f = fixture(GatewaySettings::default());
    let mut f = f;
    let mut rx = f.deliveries.take().unwrap();
    let sub = SubscriberId(999);
    f.broker
        .subscribe_at(
            &ClientInfo::default(),
            sub,
            &TopicFilter::new("dev/#").unwrap(),
            Qos::ExactlyOnce,
            Instant::now(),
        )
        .unwrap();
    let post = req(Code::POST, "ps/dev/%2Btemp", &[]);
    // `%2B` decodes to `+`: a wildcard, refused.
    assert_eq!(f.code(post).await, Code::BAD_REQUEST);
    let post = req(Code::POST, "ps/dev/temp", &["q=2", "r=true", "expiry=60"])
        .with_content_format(ContentFormat::JSON)
        .with_payload(&b"{\"t\":1}"[..]);
    assert_eq!(f.code(post).await, Code::CHANGED);
    let d = rx.try_recv().unwrap();
    assert_eq!(d.message.topic, "dev/temp");
    assert_eq!(&d.message.payload[..], b"{\"t\":1}");
    assert_eq!(d.message.qos, Qos::ExactlyOnce);
    assert_eq!(d.message.content_type.as_deref(), Some("application/json"));
    assert!(d.message.expiry.unwrap() <= Duration::from_secs(60));
    let retained = f
        .broker
        .retained_at(&TopicName::new("dev/temp").unwrap(), Instant::now())
        .unwrap();
    assert_eq!(&retained.payload[..], b"{\"t\":1}");
    // Retained message expires with the publish's expiry.
    assert!(
        f.broker
            .retained_at(
                &TopicName::new("dev/temp").unwrap(),
                Instant::now() + Duration::from_secs(61)
            )
            .is_none()
    );
    // Default policy `coap`: CON → QoS 1, NON → QoS 0; empty segment = empty level.
    assert_eq!(
        f.code(req(Code::POST, "ps/dev//x", &[])).await,
        Code::CHANGED
    );
    let d = rx.try_recv().unwrap();
    assert_eq!(
        (d.message.topic.as_str(), d.message.qos),
        ("dev//x", Qos::AtLeastOnce)
    );
    let mut non = req(Code::POST, "ps/dev/x", &[]);
    non.mtype = MessageType::Non;
    assert_eq!(f.code(non).await, Code::CHANGED);
    assert_eq!(rx.try_recv().unwrap().message.qos, Qos::AtMostOnce);
}

#[tokio::test]
async fn fixed_publish_qos_and_payload_limit() {
    let f = fixture(GatewaySettings {
        publish_qos: QosPolicy::Fixed(Qos::ExactlyOnce),
        max_payload_size: 4,
        ..GatewaySettings::default()
    });
    let mut f = f;
    let mut rx = f.deliveries.take().unwrap();
    f.broker
        .subscribe_at(
            &ClientInfo::default(),
            SubscriberId(1),
            &TopicFilter::new("a").unwrap(),
            Qos::ExactlyOnce,
            Instant::now(),
        )
        .unwrap();
    let mut non = req(Code::POST, "ps/a", &[]).with_payload(&b"1234"[..]);
    non.mtype = MessageType::Non;
    assert_eq!(f.code(non).await, Code::CHANGED);
    assert_eq!(rx.try_recv().unwrap().message.qos, Qos::ExactlyOnce);
    let big = req(Code::POST, "ps/a", &[]).with_payload(&b"12345"[..]);
    assert_eq!(f.code(big).await, Code::REQUEST_ENTITY_TOO_LARGE);
    assert!(rx.try_recv().is_none());
}

#[tokio::test]
async fn observe_returns_retained_and_subscribes_until_released() {
    let f = fixture(GatewaySettings::default());
    f.broker
        .publish_at(
            Publish::new(TopicName::new("s/1").unwrap(), "21.5").retain(true),
            Instant::now(),
        )
        .unwrap();
    let reply = f.send(req(Code::GET, "ps/s/1", &[]).with_observe(0)).await;
    assert_eq!(reply.response.code, Code::CONTENT);
    assert_eq!(reply.response.observe(), Some(0));
    assert_eq!(&reply.response.payload[..], b"21.5");
    let subscriber = reply.subscriber().unwrap();
    assert_eq!(f.subscribers_of("s/1"), 1);
    // No relation established (e.g. the endpoint refused it): unsubscribed.
    f.gateway.finish_observe(L, subscriber, None).await;
    assert_eq!(f.subscribers_of("s/1"), 0);
    assert_eq!(f.gateway.observer_count(), 0);
    // No retained message: empty 2.05.
    let reply = f.send(req(Code::GET, "ps/s/2", &[]).with_observe(0)).await;
    assert_eq!(reply.response.code, Code::CONTENT);
    assert!(reply.response.payload.is_empty());
    // Wildcard observe is a wildcard subscription.
    let reply = f
        .send(req(Code::GET, "ps/s/%2B", &["qos=0"]).with_observe(0))
        .await;
    assert_eq!(reply.response.code, Code::CONTENT);
    assert_eq!(f.subscribers_of("s/9"), 1);
    // Observe 1 on the same filter from the same peer: 2.07 and unsubscribed.
    let reply = f
        .send(req(Code::GET, "ps/s/%2B", &[]).with_observe(1))
        .await;
    assert_eq!(reply.response.code, UNSUBSCRIBED);
    assert_eq!(f.subscribers_of("s/9"), 0);
}

#[tokio::test]
async fn plain_get_reads_the_retained_message() {
    let f = fixture(GatewaySettings::default());
    f.broker
        .publish_at(
            Publish::new(TopicName::new("r/x").unwrap(), "on").retain(true),
            Instant::now(),
        )
        .unwrap();
    let reply = f.send(req(Code::GET, "ps/r/x", &[])).await;
    assert_eq!(
        (reply.response.code, &reply.response.payload[..]),
        (Code::CONTENT, &b"on"[..])
    );
    assert_eq!(reply.response.observe(), None);
    assert_eq!(f.code(req(Code::GET, "ps/r/y", &[])).await, Code::NOT_FOUND);
    assert_eq!(
        f.code(req(Code::GET, "ps/r/%23", &[])).await,
        Code::BAD_REQUEST
    );
}

#[tokio::test]
async fn connection_mode_lifecycle() {
    let f = fixture(connection_mode());
    let now = Instant::now();
    let p = peer(1000);
    // Missing clientid.
    let r = f.at(&p, req(Code::POST, "mqtt/connection", &[]), now).await;
    assert_eq!(r.response.code, Code::BAD_REQUEST);
    let token = f.connect(&p, "dev1", now).await;
    assert!(token.parse::<u32>().is_ok(), "{token}");
    let c = "clientid=dev1";
    let t = format!("token={token}");
    // Heartbeat.
    let r = f
        .at(&p, req(Code::PUT, "mqtt/connection", &[c, &t]), now)
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    // Short names.
    let short_t = format!("t={token}");
    let r = f
        .at(
            &p,
            req(Code::PUT, "mqtt/connection", &["c=dev1", &short_t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    // Missing token / missing clientid / wrong token.
    for queries in [vec![c], vec![t.as_str()]] {
        let r = f
            .at(&p, req(Code::PUT, "mqtt/connection", &queries), now)
            .await;
        assert_eq!(r.response.code, Code::BAD_REQUEST, "{queries:?}");
    }
    let wrong = format!("token={}", token.parse::<u32>().unwrap().wrapping_add(1));
    let r = f
        .at(&p, req(Code::PUT, "mqtt/connection", &[c, &wrong]), now)
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
    // ps needs clientid and token in connection mode.
    let r = f.at(&p, req(Code::POST, "ps/a", &[]), now).await;
    assert_eq!(r.response.code, Code::BAD_REQUEST);
    let r = f.at(&p, req(Code::POST, "ps/a", &[c]), now).await;
    assert_eq!(r.response.code, Code::BAD_REQUEST);
    let r = f.at(&p, req(Code::POST, "ps/a", &[c, &wrong]), now).await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
    let r = f
        .at(&p, req(Code::POST, "ps/a", &["c=dev1", &short_t]), now)
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    let r = f
        .at(&p, req(Code::GET, "ps/a", &[c]).with_observe(0), now)
        .await;
    assert_eq!(r.response.code, Code::BAD_REQUEST);
    // Another clientid from the same address is refused.
    let r = f
        .at(
            &p,
            req(Code::POST, "mqtt/connection", &["clientid=dev2"]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::BAD_REQUEST);
    // Close: 2.02, then the token is gone.
    let r = f
        .at(&p, req(Code::DELETE, "mqtt/connection", &[c, &t]), now)
        .await;
    assert_eq!(r.response.code, Code::DELETED);
    assert_eq!(f.gateway.session_count(), 0);
    let r = f
        .at(&p, req(Code::PUT, "mqtt/connection", &[c, &t]), now)
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
    // Now the address is free for another clientid.
    f.connect(&p, "dev2", now).await;
}

#[tokio::test]
async fn heartbeat_expiry_removes_session_and_subscriptions_in_virtual_time() {
    let f = fixture(GatewaySettings {
        heartbeat: Duration::from_secs(30),
        ..connection_mode()
    });
    let t0 = Instant::now();
    let p = peer(1000);
    let token = f.connect(&p, "dev1", t0).await;
    let t = format!("token={token}");
    let r = f
        .at(
            &p,
            req(Code::GET, "ps/hb/x", &["clientid=dev1", &t]).with_observe(0),
            t0,
        )
        .await;
    assert_eq!(r.response.code, Code::CONTENT);
    assert_eq!(f.subscribers_of("hb/x"), 1);
    assert_eq!(f.gateway.expire_at(t0 + Duration::from_secs(44)).await, 0);
    // A heartbeat at 40 s keeps it alive until 85 s.
    let r = f
        .at(
            &p,
            req(Code::PUT, "mqtt/connection", &["clientid=dev1", &t]),
            t0 + Duration::from_secs(40),
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    assert_eq!(f.gateway.expire_at(t0 + Duration::from_secs(85)).await, 0);
    assert_eq!(f.subscribers_of("hb/x"), 1);
    assert_eq!(f.gateway.expire_at(t0 + Duration::from_secs(86)).await, 1);
    assert_eq!(f.gateway.session_count(), 0);
    assert_eq!(f.gateway.observer_count(), 0);
    assert_eq!(f.subscribers_of("hb/x"), 0);
    let r = f
        .at(
            &p,
            req(Code::PUT, "mqtt/connection", &["clientid=dev1", &t]),
            t0 + Duration::from_secs(87),
        )
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
}

#[tokio::test]
async fn connectionless_observers_survive_heartbeat_timers() {
    let f = fixture(GatewaySettings::default());
    let t0 = Instant::now();
    let r = f
        .at(&peer(1), req(Code::GET, "ps/cl/x", &[]).with_observe(0), t0)
        .await;
    assert_eq!(r.response.code, Code::CONTENT);
    f.gateway.expire_at(t0 + Duration::from_secs(3600)).await;
    assert_eq!(f.subscribers_of("cl/x"), 1);
}

#[tokio::test]
async fn session_token_works_from_a_new_address() {
    let f = fixture(connection_mode());
    let now = Instant::now();
    let token = f.connect(&peer(1000), "nat", now).await;
    let t = format!("token={token}");
    let r = f
        .at(
            &peer(2000),
            req(Code::POST, "ps/n", &["clientid=nat", &t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    let r = f
        .at(
            &peer(3000),
            req(Code::PUT, "mqtt/connection", &["clientid=nat", &t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
}

#[tokio::test]
async fn repeated_bad_tokens_are_rate_limited() {
    let f = fixture(GatewaySettings {
        bad_token_limit: 3,
        bad_token_window: Duration::from_secs(10),
        ..connection_mode()
    });
    let t0 = Instant::now();
    let token = f.connect(&peer(1), "victim", t0).await;
    let attacker = peer(9);
    for i in 0..3 {
        let r = f
            .at(
                &attacker,
                req(
                    Code::PUT,
                    "mqtt/connection",
                    &["c=victim", &format!("t=x{i}")],
                ),
                t0,
            )
            .await;
        assert_eq!(r.response.code, Code::UNAUTHORIZED);
    }
    // Even the right token is refused during the window (no oracle).
    let good = format!("t={token}");
    let r = f
        .at(
            &attacker,
            req(Code::PUT, "mqtt/connection", &["c=victim", &good]),
            t0,
        )
        .await;
    assert_eq!(r.response.code, Code::TOO_MANY_REQUESTS);
    assert_eq!(r.response.max_age(), Some(10));
    let r = f
        .at(
            &peer(1),
            req(Code::PUT, "mqtt/connection", &["c=victim", &good]),
            t0 + Duration::from_secs(11),
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
}

#[tokio::test]
async fn stale_tokens_do_not_lock_out_nat_neighbours() {
    let f = fixture(GatewaySettings {
        bad_token_limit: 3,
        bad_token_window: Duration::from_secs(10),
        ..connection_mode()
    });
    let t0 = Instant::now();
    // Two devices behind one NAT address (same IP, different ports).
    let token = f.connect(&peer(1), "good", t0).await;
    for i in 0..20 {
        // Sleepers whose sessions expired present their old tokens.
        let r = f
            .at(
                &peer(2),
                req(
                    Code::PUT,
                    "mqtt/connection",
                    &[&format!("c=sleeper{i}"), "t=12345"],
                ),
                t0,
            )
            .await;
        assert_eq!(r.response.code, Code::UNAUTHORIZED, "sleeper {i}");
    }
    let r = f
        .at(
            &peer(1),
            req(
                Code::PUT,
                "mqtt/connection",
                &["c=good", &format!("t={token}")],
            ),
            t0,
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
}

#[tokio::test]
async fn dtls_identity_is_the_default_clientid() {
    let f = fixture(connection_mode());
    let now = Instant::now();
    let p = Peer::authenticated(SocketAddr::from(([192, 0, 2, 7], 5000)), &b"sensor-7"[..]);
    let r = f.at(&p, req(Code::POST, "mqtt/connection", &[]), now).await;
    assert_eq!(r.response.code, Code::CREATED);
    let t = format!("token={}", text(&r));
    let r = f
        .at(&p, req(Code::PUT, "mqtt/connection", &[&t]), now)
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    let r = f
        .at(
            &p,
            req(Code::PUT, "mqtt/connection", &["clientid=sensor-7", &t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
}

#[tokio::test]
async fn mountpoint_is_applied_to_publish_and_subscribe() {
    let f = fixture(GatewaySettings {
        mountpoint: Mountpoint::new("tenants/${clientid}/"),
        ..GatewaySettings::default()
    });
    let mut f = f;
    let mut rx = f.deliveries.take().unwrap();
    f.broker
        .subscribe_at(
            &ClientInfo::default(),
            SubscriberId(5),
            &TopicFilter::new("tenants/#").unwrap(),
            Qos::AtMostOnce,
            Instant::now(),
        )
        .unwrap();
    assert_eq!(
        f.code(req(Code::POST, "ps/t", &["clientid=d1"])).await,
        Code::CHANGED
    );
    assert_eq!(rx.try_recv().unwrap().message.topic, "tenants/d1/t");
    // The placeholder needs a clientid.
    assert_eq!(
        f.code(req(Code::POST, "ps/t", &[])).await,
        Code::BAD_REQUEST
    );
    let r = f
        .send(req(Code::GET, "ps/x", &["clientid=d2"]).with_observe(0))
        .await;
    assert_eq!(r.response.code, Code::CONTENT);
    // The observer plus the test's own `tenants/#` subscriber.
    assert_eq!(f.subscribers_of("tenants/d2/x"), 2);
    assert_eq!(f.subscribers_of("x"), 0);
}

fn auth_file() -> AuthFile {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let text = format!(
        r##"
[[users]]
username = "alice"
password_hash = "{hash}"

[[users]]
username = "mallory"
password_hash = "{hash}"

[[acl]]
permission = "deny"
action = "all"
topic = "secret/#"

[[acl]]
permission = "allow"
action = "all"
topic = "#"
"##
    );
    AuthFile::parse(&text, Path::new("auth.toml")).unwrap()
}

#[tokio::test]
async fn per_request_authentication_and_acl() {
    let f = fixture_with_auth(GatewaySettings::default(), Some(auth_file()));
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &[])).await,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["u=alice", "p=nope"]))
            .await,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["u=bob", "p=pw"])).await,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &["u=alice", "p=pw"])).await,
        Code::CHANGED
    );
    // Never remembered: the next request without credentials fails again.
    assert_eq!(
        f.code(req(Code::POST, "ps/a", &[])).await,
        Code::UNAUTHORIZED
    );
    // ACL deny.
    assert_eq!(
        f.code(req(Code::POST, "ps/secret/x", &["u=alice", "p=pw"]))
            .await,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        f.code(req(Code::GET, "ps/secret/%23", &["u=alice", "p=pw"]).with_observe(0))
            .await,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        f.code(req(Code::GET, "ps/%23", &["u=alice", "p=pw"]).with_observe(0))
            .await,
        Code::UNAUTHORIZED,
        "a filter that overlaps a denied topic is refused"
    );
}

#[tokio::test]
async fn connection_mode_authenticates_once_at_connect() {
    let f = fixture_with_auth(connection_mode(), Some(auth_file()));
    let now = Instant::now();
    let p = peer(1);
    let r = f
        .at(
            &p,
            req(Code::POST, "mqtt/connection", &["c=d", "u=alice", "p=bad"]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
    let r = f
        .at(
            &p,
            req(Code::POST, "mqtt/connection", &["c=d", "u=alice", "p=pw"]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CREATED);
    let t = format!("t={}", text(&r));
    let r = f.at(&p, req(Code::POST, "ps/ok", &["c=d", &t]), now).await;
    assert_eq!(r.response.code, Code::CHANGED);
    let r = f
        .at(&p, req(Code::POST, "ps/secret/1", &["c=d", &t]), now)
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
}

#[tokio::test]
async fn another_user_cannot_take_over_a_clientid() {
    let f = fixture_with_auth(connection_mode(), Some(auth_file()));
    let now = Instant::now();
    let connect = |user: &'static str| req(Code::POST, "mqtt/connection", &["c=dev", user, "p=pw"]);
    let r = f.at(&peer(1), connect("u=alice"), now).await;
    assert_eq!(r.response.code, Code::CREATED);
    let t = format!("t={}", text(&r));
    // Valid credentials of another user: refused, the session stays.
    let r = f.at(&peer(2), connect("u=mallory"), now).await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED);
    assert_eq!(text(&r), "this clientid has a session of another user");
    let r = f
        .at(&peer(1), req(Code::POST, "ps/ok", &["c=dev", &t]), now)
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    // The same user takes over (a device reconnecting from a new address).
    let r = f.at(&peer(3), connect("u=alice"), now).await;
    assert_eq!(r.response.code, Code::CREATED);
    let r = f
        .at(&peer(1), req(Code::POST, "ps/ok", &["c=dev", &t]), now)
        .await;
    assert_eq!(r.response.code, Code::UNAUTHORIZED, "the old token is gone");
    // Once the session is closed the clientid is free for anyone.
    let t = format!("t={}", text(&f.at(&peer(3), connect("u=alice"), now).await));
    let r = f
        .at(
            &peer(3),
            req(Code::DELETE, "mqtt/connection", &["c=dev", &t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::DELETED);
    let r = f.at(&peer(2), connect("u=mallory"), now).await;
    assert_eq!(r.response.code, Code::CREATED);
}

/// A broker that is down.
struct DownBroker;

impl Broker for DownBroker {
    fn publish<'a>(
        &'a self,
        _: &'a ClientInfo,
        message: Publish,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if message.qos == Qos::AtMostOnce {
                Ok(())
            } else {
                Err(BrokerError::Unavailable("connection refused".into()))
            }
        })
    }
    fn subscribe<'a>(
        &'a self,
        _: &'a ClientInfo,
        _: SubscriberId,
        _: &'a TopicFilter,
        _: Qos,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>> {
        Box::pin(async { Err(BrokerError::Unavailable("connection refused".into())) })
    }
    fn unsubscribe<'a>(
        &'a self,
        _: &'a ClientInfo,
        _: SubscriberId,
        _: &'a TopicFilter,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
    fn retained<'a>(
        &'a self,
        _: &'a ClientInfo,
        _: &'a TopicName,
    ) -> BoxFuture<'a, Result<Option<BrokerMessage>, BrokerError>> {
        Box::pin(async { Err(BrokerError::Unavailable("connection refused".into())) })
    }
    fn connect_client<'a>(&'a self, _: &'a ClientInfo) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
    fn disconnect_client<'a>(&'a self, _: &'a ClientInfo) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn is_ready(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn broker_down_gives_503_with_max_age() {
    let gateway = Gateway::new(Arc::new(DownBroker), None, GatewaySettings::default());
    let r = gateway
        .handle_at(
            L,
            &peer(1),
            &req(Code::POST, "ps/a", &["qos=1"]),
            false,
            Instant::now(),
        )
        .await;
    assert_eq!(r.response.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(r.response.max_age(), Some(5));
    let r = gateway
        .handle_at(
            L,
            &peer(1),
            &req(Code::POST, "ps/a", &["qos=0"]),
            false,
            Instant::now(),
        )
        .await;
    assert_eq!(r.response.code, Code::CHANGED);
    let r = gateway
        .handle_at(
            L,
            &peer(1),
            &req(Code::GET, "ps/a", &[]).with_observe(0),
            true,
            Instant::now(),
        )
        .await;
    assert_eq!(r.response.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(gateway.observer_count(), 0);
}

#[test]
fn policies_parse_and_print() {
    for text in ["coap", "qos0", "qos1", "qos2"] {
        assert_eq!(text.parse::<QosPolicy>().unwrap().to_string(), text);
    }
    for text in ["qos", "con", "non"] {
        assert_eq!(text.parse::<NotifyType>().unwrap().to_string(), text);
    }
    assert!("qos3".parse::<QosPolicy>().is_err());
    assert!("both".parse::<NotifyType>().is_err());
    assert_eq!(QosPolicy::Coap.resolve(true), Qos::AtLeastOnce);
    assert_eq!(QosPolicy::Coap.resolve(false), Qos::AtMostOnce);
}

// ---- through a real endpoint on loopback ---------------------------------

struct Running {
    gateway: Gateway,
    broker: Arc<EmbeddedBroker>,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn running(settings: GatewaySettings) -> Running {
    let f = fixture(settings);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = f.gateway.clone();
    tokio::spawn(async move {
        let _ = g
            .run_server(server, async {
                let _ = stopped.await;
            })
            .await;
    });
    let g = f.gateway.clone();
    let deliveries = f.deliveries.unwrap();
    tokio::spawn(async move { g.run_deliveries(deliveries).await });
    Running {
        gateway: f.gateway,
        broker: f.broker,
        addr,
        stop,
    }
}

async fn exchange(socket: &UdpSocket, to: SocketAddr, message: Message) -> Message {
    socket
        .send_to(&message.to_bytes().unwrap(), to)
        .await
        .unwrap();
    recv(socket).await
}

async fn recv(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
        .await
        .expect("a datagram within 3 s")
        .unwrap();
    Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap()
}

impl Running {
    fn publish(&self, topic: &str, payload: &'static str, qos: Qos) {
        self.broker
            .publish_at(
                Publish::new(TopicName::new(topic).unwrap(), payload).qos(qos),
                Instant::now(),
            )
            .unwrap();
    }

    async fn wait_observers(&self, n: usize) {
        for _ in 0..100 {
            if self.gateway.observer_count() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("observers: {} != {n}", self.gateway.observer_count());
    }
}

fn observe(token: &'static [u8], path: &str, mid: u16) -> Message {
    Message::new(MessageType::Con, Code::GET, mid)
        .with_token(token)
        .with_observe(0)
        .with_uri_path(path)
}

#[tokio::test]
async fn notifications_follow_qos_and_end_on_rst() {
    let r = running(GatewaySettings::default()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answer = exchange(&socket, r.addr, observe(b"ob1", "ps/n/%2B", 1)).await;
    assert_eq!(
        (answer.mtype, answer.code),
        (MessageType::Ack, Code::CONTENT)
    );
    assert!(answer.observe().is_some());
    r.wait_observers(1).await;
    // Wait until the relation is attached (finish_observe ran).
    for _ in 0..100 {
        if r.gateway.state().relations.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.publish("n/a", "zero", Qos::AtMostOnce);
    let n = recv(&socket).await;
    assert_eq!(
        (n.mtype, n.code, &n.payload[..]),
        (MessageType::Non, Code::CONTENT, &b"zero"[..])
    );
    assert_eq!(&n.token[..], b"ob1");
    let first_seq = n.observe().unwrap();
    r.publish("n/b", "one", Qos::AtLeastOnce);
    let n = recv(&socket).await;
    assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"one"[..]));
    assert!(n.observe().unwrap() > first_seq);
    // RST to the CON notification ends the relation and the subscription.
    socket
        .send_to(&Message::reset(n.message_id).to_bytes().unwrap(), r.addr)
        .await
        .unwrap();
    r.wait_observers(0).await;
    assert_eq!(
        r.broker
            .publish_at(
                Publish::new(TopicName::new("n/c").unwrap(), "x"),
                Instant::now()
            )
            .unwrap(),
        0
    );
    let _ = r.stop.send(());
}

#[tokio::test]
async fn forced_notify_type_and_deregistration() {
    let r = running(GatewaySettings {
        notify_type: NotifyType::Con,
        ..GatewaySettings::default()
    })
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    exchange(&socket, r.addr, observe(b"ob2", "ps/f/x", 1)).await;
    r.wait_observers(1).await;
    for _ in 0..100 {
        if r.gateway.state().relations.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.publish("f/x", "q0", Qos::AtMostOnce);
    let n = recv(&socket).await;
    assert_eq!((n.mtype, &n.payload[..]), (MessageType::Con, &b"q0"[..]));
    socket
        .send_to(
            &Message::empty_ack(n.message_id).to_bytes().unwrap(),
            r.addr,
        )
        .await
        .unwrap();
    // GET with Observe 1: 2.07, then no more notifications.
    let dereg = Message::new(MessageType::Con, Code::GET, 2)
        .with_token(&b"ob2"[..])
        .with_observe(1)
        .with_uri_path("ps/f/x");
    let answer = exchange(&socket, r.addr, dereg).await;
    assert_eq!(answer.code.to_string(), "2.07");
    r.wait_observers(0).await;
    r.publish("f/x", "late", Qos::AtMostOnce);
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf))
            .await
            .is_err(),
        "no notification after deregistration"
    );
    let _ = r.stop.send(());
}

#[tokio::test]
async fn notifications_follow_a_session_to_its_new_address() {
    let r = running(connection_mode()).await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let connect = Message::new(MessageType::Con, Code::POST, 1)
        .with_token(&b"c"[..])
        .with_uri_path("mqtt/connection")
        .with_uri_query("clientid=roamer");
    let created = exchange(&a, r.addr, connect).await;
    assert_eq!(created.code, Code::CREATED);
    let token = format!(
        "token={}",
        String::from_utf8(created.payload.to_vec()).unwrap()
    );
    let answer = exchange(
        &a,
        r.addr,
        observe(b"ob3", "ps/roam", 2)
            .with_uri_query("clientid=roamer")
            .with_uri_query(&token),
    )
    .await;
    assert_eq!(answer.code, Code::CONTENT);
    r.wait_observers(1).await;
    // The NAT moved the device: a heartbeat from b.
    let heartbeat = Message::new(MessageType::Con, Code::PUT, 3)
        .with_token(&b"h"[..])
        .with_uri_path("mqtt/connection")
        .with_uri_query("clientid=roamer")
        .with_uri_query(&token);
    assert_eq!(exchange(&b, r.addr, heartbeat).await.code, Code::CHANGED);
    r.publish("roam", "here", Qos::AtMostOnce);
    let n = recv(&b).await;
    assert_eq!((&n.token[..], &n.payload[..]), (&b"ob3"[..], &b"here"[..]));
    let _ = r.stop.send(());
}

#[tokio::test]
async fn presence_events_on_connect_and_close() {
    let mut f = fixture(GatewaySettings {
        presence_node: Some("gw1".into()),
        ..connection_mode()
    });
    let mut rx = f.deliveries.take().unwrap();
    f.broker
        .subscribe_at(
            &ClientInfo::default(),
            SubscriberId(77),
            &TopicFilter::new("$SYS/brokers/gw1/gateway/coap/clients/+/+").unwrap(),
            Qos::AtMostOnce,
            Instant::now(),
        )
        .unwrap();
    let now = Instant::now();
    let token = f.connect(&peer(1), "p1", now).await;
    let d = rx.try_recv().unwrap();
    assert_eq!(
        d.message.topic,
        "$SYS/brokers/gw1/gateway/coap/clients/p1/connected"
    );
    let t = format!("token={token}");
    let r = f
        .at(
            &peer(1),
            req(Code::DELETE, "mqtt/connection", &["clientid=p1", &t]),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::DELETED);
    let d = rx.try_recv().unwrap();
    assert_eq!(
        d.message.topic,
        "$SYS/brokers/gw1/gateway/coap/clients/p1/disconnected"
    );
    assert!(String::from_utf8_lossy(&d.message.payload).contains("\"clientid\":\"p1\""));
}

#[tokio::test]
async fn idle_connectionless_observers_end_after_the_configured_lifetime() {
    let r = running(GatewaySettings {
        observe_idle_lifetime: Some(Duration::from_secs(600)),
        ..GatewaySettings::default()
    })
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    exchange(&socket, r.addr, observe(b"idle", "ps/idle", 1)).await;
    r.wait_observers(1).await;
    for _ in 0..100 {
        if r.gateway.state().relations.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = Instant::now();
    r.gateway.expire_at(now + Duration::from_secs(599)).await;
    assert_eq!(r.gateway.observer_count(), 1);
    r.gateway.expire_at(now + Duration::from_secs(601)).await;
    assert_eq!(r.gateway.observer_count(), 0);
    // The observer is told with a final 4.04 notification.
    let last = recv(&socket).await;
    assert_eq!(
        (last.code, &last.token[..]),
        (Code::NOT_FOUND, &b"idle"[..])
    );
    let _ = r.stop.send(());
}

#[tokio::test]
async fn management_searches_and_pages_clients() {
    let f = fixture(connection_mode());
    let now = Instant::now();
    for i in 0..7u16 {
        let reply = f
            .at(
                &peer(100 + i),
                req(
                    Code::POST,
                    "mqtt/connection",
                    &[
                        &format!("clientid=dev-{i}"),
                        &format!("username={}", if i % 2 == 0 { "even" } else { "odd" }),
                    ],
                ),
                now + Duration::from_secs(u64::from(i)),
            )
            .await;
        assert_eq!(reply.response.code, Code::CREATED);
    }
    f.connect(&peer(200), "lamp", now).await;
    let later = now + Duration::from_secs(10);
    let all = f
        .gateway
        .search_clients(&ClientQuery::default(), 0, 100, later);
    assert_eq!(all.total, 8);
    assert_eq!(all.clients[0].clientid, "dev-0");
    assert_eq!(all.clients[0].connected_for, Duration::from_secs(10));
    assert_eq!(all.clients[6].connected_for, Duration::from_secs(4));
    assert_eq!(all.clients[7].clientid, "lamp");
    // Pages of 3 over the 7 "dev-" clients: 3, 3, 1, then none.
    let dev = ClientQuery {
        clientid: Some("dev-".into()),
        ..ClientQuery::default()
    };
    let pages: Vec<Vec<String>> = (0..4)
        .map(|page| {
            let found = f.gateway.search_clients(&dev, page * 3, 3, later);
            assert_eq!(found.total, 7);
            found.clients.into_iter().map(|c| c.clientid).collect()
        })
        .collect();
    assert_eq!(pages[0], ["dev-0", "dev-1", "dev-2"]);
    assert_eq!(pages[2], ["dev-6"]);
    assert!(pages[3].is_empty());
    // Username and peer filters; all given filters must match.
    let odd = ClientQuery {
        username: Some("odd".into()),
        ..ClientQuery::default()
    };
    assert_eq!(f.gateway.search_clients(&odd, 0, 100, later).total, 3);
    let by_peer = ClientQuery {
        peer: Some(":200".into()),
        ..ClientQuery::default()
    };
    let found = f.gateway.search_clients(&by_peer, 0, 100, later);
    assert_eq!(found.clients[0].clientid, "lamp");
    let both = ClientQuery {
        clientid: Some("lamp".into()),
        username: Some("odd".into()),
        ..ClientQuery::default()
    };
    assert_eq!(f.gateway.search_clients(&both, 0, 100, later).total, 0);
    let any = ClientQuery {
        any: Some("even".into()),
        ..ClientQuery::default()
    };
    assert_eq!(f.gateway.search_clients(&any, 0, 100, later).total, 4);
}

#[derive(Default)]
struct RoundTrips(std::sync::Mutex<Vec<BrokerOperation>>);

impl GatewayObserver for RoundTrips {
    fn broker_round_trip(&self, operation: BrokerOperation, _took: Duration) {
        self.0.lock().unwrap().push(operation);
    }
}

#[tokio::test]
async fn broker_round_trips_are_reported_for_acknowledged_operations() {
    let (broker, _deliveries) = EmbeddedBroker::new(EmbeddedConfig::default());
    let trips = Arc::new(RoundTrips::default());
    let gateway = Gateway::new(Arc::new(broker), None, GatewaySettings::default())
        .with_observer(trips.clone());
    let now = Instant::now();
    let p = peer(1);
    let publish = |qos: &str| req(Code::POST, "ps/rtt", &[&format!("qos={qos}")]);
    for qos in ["0", "1", "2"] {
        let reply = gateway
            .handle_at(ListenerId(0), &p, &publish(qos), false, now)
            .await;
        assert_eq!(reply.response.code, Code::CHANGED);
    }
    let observe = req(Code::GET, "ps/rtt", &[]).with_observe(0);
    let reply = gateway
        .handle_at(ListenerId(0), &p, &observe, true, now)
        .await;
    assert_eq!(reply.response.code, Code::CONTENT);
    // QoS 0 has no acknowledgement to wait for, so no round trip.
    assert_eq!(
        *trips.0.lock().unwrap(),
        [
            BrokerOperation::Publish,
            BrokerOperation::Publish,
            BrokerOperation::Subscribe
        ]
    );
}

#[tokio::test]
async fn management_lists_clients_subscriptions_and_kicks() {
    let f = fixture(connection_mode());
    let now = Instant::now();
    let token = f.connect(&peer(1), "m-1", now).await;
    f.connect(&peer(2), "other", now).await;
    let t = format!("token={token}");
    let r = f
        .at(
            &peer(1),
            req(Code::GET, "ps/m/x", &["clientid=m-1", &t, "qos=2"]).with_observe(0),
            now,
        )
        .await;
    assert_eq!(r.response.code, Code::CONTENT);
    let all = f.gateway.clients_at("", now + Duration::from_secs(3));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].clientid, "m-1");
    assert_eq!(all[0].subscriptions, 1);
    assert_eq!(all[0].idle, Duration::from_secs(3));
    assert_eq!(f.gateway.clients_at("m-", now).len(), 1);
    assert!(f.gateway.client_at("nobody", now).is_none());
    let subs = f.gateway.subscriptions("m-1").unwrap();
    assert_eq!(
        (subs[0].filter.as_str(), subs[0].qos),
        ("m/x", Qos::ExactlyOnce)
    );
    assert!(f.gateway.subscriptions("nobody").is_none());
    let kicked = f.gateway.kick_session("m-1").await.unwrap();
    assert_eq!((kicked.listener, kicked.peer), (L, peer(1)));
    assert!(!f.gateway.kick("m-1").await);
    assert_eq!(f.subscribers_of("m/x"), 0);
    assert_eq!(
        f.gateway
            .request_device("m-1", req(Code::GET, "x", &[]), Duration::from_secs(1))
            .await,
        Err(DeviceRequestError::UnknownClient)
    );
}

#[tokio::test]
async fn management_request_reaches_the_device() {
    let r = running(connection_mode()).await;
    let device = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let connect = Message::new(MessageType::Con, Code::POST, 1)
        .with_token(&b"c"[..])
        .with_uri_path("mqtt/connection")
        .with_uri_query("clientid=target");
    assert_eq!(exchange(&device, r.addr, connect).await.code, Code::CREATED);
    let gateway = r.gateway.clone();
    let asking = tokio::spawn(async move {
        gateway
            .request_device(
                "target",
                Message::new(MessageType::Con, Code::GET, 0).with_uri_path("sensors/temp"),
                Duration::from_secs(3),
            )
            .await
    });
    let request = recv(&device).await;
    assert_eq!((request.mtype, request.code), (MessageType::Con, Code::GET));
    let answer = Message::new(MessageType::Ack, Code::CONTENT, request.message_id)
        .with_token(request.token.clone())
        .with_payload(&b"21"[..]);
    device
        .send_to(&answer.to_bytes().unwrap(), r.addr)
        .await
        .unwrap();
    let got = asking.await.unwrap().unwrap();
    assert_eq!((got.code, &got.payload[..]), (Code::CONTENT, &b"21"[..]));
    let _ = r.stop.send(());
}

#[test]
fn content_types_map_to_registered_formats_only() {
    assert_eq!(
        content_format_for("application/json"),
        Some(ContentFormat::JSON)
    );
    assert_eq!(
        content_format_for("text/plain"),
        Some(ContentFormat::TEXT_PLAIN)
    );
    assert_eq!(
        content_format_for("text/plain;charset=utf-8"),
        Some(ContentFormat::TEXT_PLAIN)
    );
    assert_eq!(content_format_for("application/x-unknown"), None);
}

#[tokio::test]
async fn many_sessions_expire_together_each_with_its_own_subscriptions() {
    let f = fixture(GatewaySettings {
        heartbeat: Duration::from_secs(10),
        ..connection_mode()
    });
    let t0 = Instant::now();
    for (i, at) in [(1u16, t0), (2, t0), (3, t0 + Duration::from_secs(10))] {
        let clientid = format!("s{i}");
        let token = f.connect(&peer(i), &clientid, at).await;
        let q = [format!("clientid={clientid}"), format!("token={token}")];
        let r = f
            .at(
                &peer(i),
                req(Code::GET, &format!("ps/many/{i}"), &[&q[0], &q[1]]).with_observe(0),
                at,
            )
            .await;
        assert_eq!(r.response.code, Code::CONTENT);
    }
    assert_eq!(f.gateway.expire_at(t0 + Duration::from_secs(16)).await, 2);
    assert_eq!(f.subscribers_of("many/1"), 0);
    assert_eq!(f.subscribers_of("many/2"), 0);
    assert_eq!(f.subscribers_of("many/3"), 1);
    assert_eq!(f.gateway.session_count(), 1);
    assert_eq!(f.gateway.observer_count(), 1);
}
