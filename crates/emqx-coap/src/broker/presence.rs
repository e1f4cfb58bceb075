//! Optional client presence events, as EMQX publishes them:
//! `$SYS/brokers/<node>/gateway/coap/clients/<clientid>/connected` and
//! `.../disconnected`, QoS 0, not retained, with a small JSON payload
//! (`clientid`, `username`, `proto_name`, `ts` in milliseconds since the
//! Unix epoch). The CoAP layer calls [`publish_presence`] when a
//! connection-mode session starts and ends.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Broker, BrokerError, ClientInfo, Publish};
use crate::topic::{TopicName, has_wildcard};

/// Which presence event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The client connected (`POST mqtt/connection` succeeded).
    Connected,
    /// The client disconnected or its session expired.
    Disconnected,
}

impl PresenceEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

/// The event topic; `None` if `node` or `clientid` is empty or contains
/// `/`, `+` or `#` (it would not name one client).
pub fn presence_topic(node: &str, clientid: &str, event: PresenceEvent) -> Option<TopicName> {
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && !has_wildcard(s);
    if !safe(node) || !safe(clientid) {
        return None;
    }
    TopicName::new(format!(
        "$SYS/brokers/{node}/gateway/coap/clients/{clientid}/{}",
        event.as_str()
    ))
    .ok()
}

/// The JSON payload of an event at time `at`.
pub fn presence_payload(client: &ClientInfo, event: PresenceEvent, at: SystemTime) -> Bytes {
    let ts = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut body = serde_json::json!({
        "clientid": client.clientid,
        "username": client.username,
        "proto_name": "CoAP",
        "ts": ts as u64,
    });
    if event == PresenceEvent::Disconnected
        && let Some(map) = body.as_object_mut()
    {
        map.insert("reason".into(), serde_json::Value::from("normal"));
    }
    Bytes::from(body.to_string())
}

/// Publishes a presence event for `client` (QoS 0). Clients without a
/// usable client id produce no event.
pub async fn publish_presence(
    broker: &dyn Broker,
    node: &str,
    client: &ClientInfo,
    event: PresenceEvent,
) -> Result<(), BrokerError> {
    let Some(clientid) = client.clientid.as_deref() else {
        return Ok(());
    };
    let Some(topic) = presence_topic(node, clientid, event) else {
        return Ok(());
    };
    let payload = presence_payload(client, event, SystemTime::now());
    broker.publish(client, Publish::new(topic, payload)).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::embedded::{EmbeddedBroker, EmbeddedConfig};
    use crate::broker::{Qos, SubscriberId};
    use crate::topic::TopicFilter;

    #[test]
    fn topic_and_payload() {
        let t = presence_topic("gw1", "dev-9", PresenceEvent::Connected).unwrap();
        assert_eq!(
            t.as_str(),
            "$SYS/brokers/gw1/gateway/coap/clients/dev-9/connected"
        );
        assert!(presence_topic("gw1", "a/b", PresenceEvent::Connected).is_none());
        assert!(presence_topic("gw1", "#", PresenceEvent::Connected).is_none());
        assert!(presence_topic("", "x", PresenceEvent::Connected).is_none());
        let client = ClientInfo {
            clientid: Some("dev-9".into()),
            username: Some("u".into()),
            password: Some("never-logged".into()),
        };
        let at = UNIX_EPOCH + Duration::from_millis(1234);
        let json: serde_json::Value =
            serde_json::from_slice(&presence_payload(&client, PresenceEvent::Disconnected, at))
                .unwrap();
        assert_eq!(json["clientid"], "dev-9");
        assert_eq!(json["username"], "u");
        assert_eq!(json["ts"], 1234);
        assert_eq!(json["reason"], "normal");
        assert!(json.get("password").is_none());
    }

    #[tokio::test]
    async fn published_through_a_broker() {
        let (broker, mut rx) = EmbeddedBroker::new(EmbeddedConfig::default());
        let watcher = ClientInfo::default();
        let f = TopicFilter::new("$SYS/brokers/+/gateway/coap/clients/+/+").unwrap();
        broker
            .subscribe(&watcher, SubscriberId(1), &f, Qos::AtMostOnce)
            .await
            .unwrap();
        let dev = ClientInfo::with_clientid("dev-1");
        publish_presence(&broker, "node1", &dev, PresenceEvent::Connected)
            .await
            .unwrap();
        publish_presence(
            &broker,
            "node1",
            &ClientInfo::default(),
            PresenceEvent::Connected,
        )
        .await
        .unwrap();
        publish_presence(&broker, "node1", &dev, PresenceEvent::Disconnected)
            .await
            .unwrap();
        let topics: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|d| d.message.topic)
            .collect();
        assert_eq!(
            topics,
            vec![
                "$SYS/brokers/node1/gateway/coap/clients/dev-1/connected".to_owned(),
                "$SYS/brokers/node1/gateway/coap/clients/dev-1/disconnected".to_owned(),
            ]
        );
    }
}
