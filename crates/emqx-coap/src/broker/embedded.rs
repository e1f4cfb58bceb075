//! The in-process broker: local subscriptions in a topic trie, retained
//! messages with MQTT 5 expiry, QoS semantics inside the process.
//!
//! Every operation exists in two forms: the [`Broker`] trait methods, which
//! read the clock, and `*_at(now)` methods that take the time as an argument
//! so retained-message expiry is tested in virtual time.
//!
//! Inside one process there is no loss between "accepted" and "queued", so a
//! QoS 1/2 publish is acknowledged once it has been routed to every matching
//! subscriber's queue (and stored, if retained). The delivered QoS is
//! min(publish QoS, subscription QoS); a full subscriber queue drops its
//! oldest message (counted in [`Deliveries::dropped`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::retained::TopicStore;
use super::subscriptions::LocalSubscriptions;
use super::{
    BoxFuture, Broker, BrokerError, ClientInfo, Deliveries, DeliveryHub, Message, Publish, Qos,
    Subscribed, SubscriberId, min_qos,
};
use crate::topic::{TopicFilter, TopicName};

/// Limits of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Messages queued per subscriber before the oldest is dropped.
    /// Default is 100.
    pub queue_capacity: usize,
    /// Most retained messages stored; a retained publish to a new topic
    /// beyond it fails with [`BrokerError::Limit`]. Default is 100 000.
    pub max_retained: usize,
    /// Most (filter, subscriber) pairs. Default is 1 000 000.
    pub max_subscriptions: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 100,
            max_retained: 100_000,
            max_subscriptions: 1_000_000,
        }
    }
}

/// The in-process broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    config: EmbeddedConfig,
    state: Mutex<State>,
    hub: Arc<DeliveryHub>,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: LocalSubscriptions,
    retained: TopicStore<Retained>,
}

#[derive(Debug, Clone)]
struct Retained {
    payload: Bytes,
    qos: Qos,
    content_type: Option<String>,
    expires_at: Option<Instant>,
}

impl Retained {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn to_message(&self, topic: &str, sub_qos: Qos, now: Instant) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: self.payload.clone(),
            qos: min_qos(self.qos, sub_qos),
            retain: true,
            // MQTT 5 §3.3.2.3.3: the forwarded interval is the received one
            // minus the time the message waited in the server.
            expiry: self.expires_at.map(|at| at.saturating_duration_since(now)),
            content_type: self.content_type.clone(),
        }
    }
}

impl EmbeddedBroker {
    /// A broker and the receiver of its deliveries.
    pub fn new(config: EmbeddedConfig) -> (Self, Deliveries) {
        let hub = DeliveryHub::new(config.queue_capacity);
        let broker = Self {
            config,
            state: Mutex::new(State::default()),
            hub: hub.clone(),
        };
        (broker, Deliveries::new(hub))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes at time `now`; returns how many subscribers it was queued for.
    pub fn publish_at(&self, message: Publish, now: Instant) -> Result<usize, BrokerError> {
        let mut state = self.lock();
        let topic = message.topic.as_str();
        if message.retain {
            if message.payload.is_empty() {
                // MQTT 3.3.1.3: a retained message with an empty payload
                // removes the retained message of the topic.
                state.retained.remove(topic);
            } else {
                if !state.retained.contains(topic)
                    && state.retained.len() >= self.config.max_retained
                {
                    state.retained.retain(|r| !r.is_expired(now));
                    if state.retained.len() >= self.config.max_retained {
                        return Err(BrokerError::Limit("retained messages"));
                    }
                }
                let expires_at = message.expiry.and_then(|e| now.checked_add(e));
                state.retained.insert(
                    topic,
                    Retained {
                        payload: message.payload.clone(),
                        qos: message.qos,
                        content_type: message.content_type.clone(),
                        expires_at,
                    },
                );
            }
        }
        let mut delivered = 0;
        state
            .subscriptions
            .for_each_match(topic, |subscriber, entry| {
                delivered += 1;
                self.hub.push(
                    *subscriber,
                    Message {
                        topic: topic.to_owned(),
                        payload: message.payload.clone(),
                        qos: min_qos(message.qos, entry.qos),
                        retain: false,
                        expiry: message.expiry,
                        content_type: message.content_type.clone(),
                    },
                );
            });
        Ok(delivered)
    }

    /// Subscribes at time `now`. An exact topic's retained message is
    /// returned; a wildcard filter's retained messages are queued to the
    /// subscriber's deliveries (see [`Subscribed::retained`]).
    pub fn subscribe_at(
        &self,
        client: &ClientInfo,
        subscriber: SubscriberId,
        filter: &TopicFilter,
        qos: Qos,
        now: Instant,
    ) -> Result<Subscribed, BrokerError> {
        let mut state = self.lock();
        if state.subscriptions.len() >= self.config.max_subscriptions {
            return Err(BrokerError::Limit("subscriptions"));
        }
        state.subscriptions.add(
            client.clientid.as_deref(),
            subscriber,
            filter.as_str(),
            qos,
            0,
        );
        let retained = if filter.has_wildcard() {
            // Expired messages are skipped here and purged when the store
            // is full or when looked up by topic.
            let mut found: Vec<Message> = Vec::new();
            state.retained.for_each_match(filter.as_str(), |topic, r| {
                if !r.is_expired(now) {
                    found.push(r.to_message(topic, qos, now));
                }
            });
            found.sort_by(|a, b| a.topic.cmp(&b.topic));
            // Wildcard: the retained messages follow as deliveries.
            for message in found {
                self.hub.push_at(subscriber, message, now);
            }
            Vec::new()
        } else {
            retained_of(&mut state, filter.as_str(), now)
                .map(|r| r.to_message(filter.as_str(), qos, now))
                .into_iter()
                .collect()
        };
        Ok(Subscribed {
            qos: Some(qos),
            retained,
        })
    }

    /// The retained message of `topic` at time `now`.
    pub fn retained_at(&self, topic: &TopicName, now: Instant) -> Option<Message> {
        let mut state = self.lock();
        retained_of(&mut state, topic.as_str(), now)
            .map(|r| r.to_message(topic.as_str(), r.qos, now))
    }

    /// Removes `subscriber` from `filter`.
    pub fn unsubscribe_now(&self, subscriber: SubscriberId, filter: &TopicFilter) {
        let mut state = self.lock();
        state.subscriptions.remove(subscriber, filter.as_str());
        if state.subscriptions.is_gone(subscriber) {
            self.hub.remove(subscriber);
        }
    }

    /// Drops all subscriptions and queued messages of `clientid`.
    pub fn disconnect_now(&self, clientid: &str) {
        let mut state = self.lock();
        let (subscribers, _) = state.subscriptions.remove_client(clientid);
        for s in subscribers {
            self.hub.remove(s);
        }
    }
}

fn retained_of(state: &mut State, topic: &str, now: Instant) -> Option<Retained> {
    let r = state.retained.get(topic)?;
    if r.is_expired(now) {
        state.retained.remove(topic);
        return None;
    }
    Some(r.clone())
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.hub.close();
    }
}

impl Broker for EmbeddedBroker {
    fn publish<'a>(
        &'a self,
        _client: &'a ClientInfo,
        message: Publish,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let result = self.publish_at(message, Instant::now()).map(|_| ());
        Box::pin(async move { result })
    }

    fn subscribe<'a>(
        &'a self,
        client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
        qos: Qos,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>> {
        let result = self.subscribe_at(client, subscriber, filter, qos, Instant::now());
        Box::pin(async move { result })
    }

    fn unsubscribe<'a>(
        &'a self,
        _client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.unsubscribe_now(subscriber, filter);
        Box::pin(async { Ok(()) })
    }

    fn retained<'a>(
        &'a self,
        _client: &'a ClientInfo,
        topic: &'a TopicName,
    ) -> BoxFuture<'a, Result<Option<Message>, BrokerError>> {
        let result = self.retained_at(topic, Instant::now());
        Box::pin(async move { Ok(result) })
    }

    fn connect_client<'a>(
        &'a self,
        _client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn disconnect_client<'a>(&'a self, client: &'a ClientInfo) -> BoxFuture<'a, ()> {
        if let Some(clientid) = client.clientid.as_deref() {
            self.disconnect_now(clientid);
        }
        Box::pin(async {})
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// Expiry in whole seconds as MQTT carries it (rounded up so a message
/// never outlives its interval by less than a second's rounding).
pub(crate) fn expiry_secs(expiry: Duration) -> u32 {
    let secs = expiry.as_secs() + u64::from(expiry.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn qos_downgrade_and_fan_out() {
        let (b, mut rx) = EmbeddedBroker::new(EmbeddedConfig::default());
        let c = ClientInfo::with_clientid("c");
        let now = Instant::now();
        b.subscribe_at(&c, SubscriberId(1), &filter("s/+"), Qos::AtMostOnce, now)
            .unwrap();
        b.subscribe_at(&c, SubscriberId(2), &filter("s/#"), Qos::ExactlyOnce, now)
            .unwrap();
        b.subscribe_at(&c, SubscriberId(3), &filter("other"), Qos::ExactlyOnce, now)
            .unwrap();
        let n = b
            .publish_at(Publish::new(topic("s/x"), "hi").qos(Qos::AtLeastOnce), now)
            .unwrap();
        assert_eq!(n, 2);
        let mut got: Vec<(u64, Qos)> = std::iter::from_fn(|| rx.try_recv())
            .map(|d| (d.subscriber.0, d.message.qos))
            .collect();
        got.sort();
        assert_eq!(got, vec![(1, Qos::AtMostOnce), (2, Qos::AtLeastOnce)]);
    }

    #[test]
    fn retained_on_subscribe_and_lookup_and_delete() {
        let (b, mut rx) = EmbeddedBroker::new(EmbeddedConfig::default());
        let c = ClientInfo::default();
        let now = Instant::now();
        b.publish_at(
            Publish::new(topic("r/a"), "1")
                .retain(true)
                .qos(Qos::ExactlyOnce),
            now,
        )
        .unwrap();
        b.publish_at(Publish::new(topic("r/b"), "2").retain(true), now)
            .unwrap();
        b.publish_at(Publish::new(topic("r/c"), "3"), now).unwrap();
        let s = b
            .subscribe_at(&c, SubscriberId(1), &filter("r/+"), Qos::AtLeastOnce, now)
            .unwrap();
        assert!(
            s.retained.is_empty(),
            "wildcard: retained messages are deliveries"
        );
        let queued: Vec<Message> = std::iter::from_fn(|| rx.try_recv_at(now))
            .map(|d| {
                assert_eq!(d.subscriber, SubscriberId(1));
                d.message
            })
            .collect();
        let got: Vec<(&str, &[u8], Qos, bool)> = queued
            .iter()
            .map(|m| (m.topic.as_str(), &m.payload[..], m.qos, m.retain))
            .collect();
        assert_eq!(
            got,
            vec![
                ("r/a", &b"1"[..], Qos::AtLeastOnce, true),
                ("r/b", &b"2"[..], Qos::AtMostOnce, true)
            ]
        );
        let exact = b
            .subscribe_at(&c, SubscriberId(2), &filter("r/a"), Qos::ExactlyOnce, now)
            .unwrap();
        assert_eq!(exact.retained.len(), 1);
        assert_eq!(b.retained_at(&topic("r/b"), now).unwrap().payload, "2");
        assert!(b.retained_at(&topic("r/c"), now).is_none());
        // Empty retained payload deletes, and is still forwarded (not retained).
        b.publish_at(Publish::new(topic("r/a"), "").retain(true), now)
            .unwrap();
        assert!(b.retained_at(&topic("r/a"), now).is_none());
        let live: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(live.len(), 2);
        assert!(
            live.iter()
                .all(|d| !d.message.retain && d.message.payload.is_empty())
        );
    }

    #[test]
    fn retained_expires_in_virtual_time() {
        let (b, mut rx) = EmbeddedBroker::new(EmbeddedConfig::default());
        let c = ClientInfo::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        b.publish_at(
            Publish::new(topic("e/x"), "v")
                .retain(true)
                .expiry(Some(secs(10))),
            t0,
        )
        .unwrap();
        let m = b.retained_at(&topic("e/x"), t0 + secs(4)).unwrap();
        assert_eq!(m.expiry, Some(secs(6)));
        let s = b
            .subscribe_at(
                &c,
                SubscriberId(1),
                &filter("e/x"),
                Qos::AtMostOnce,
                t0 + secs(9),
            )
            .unwrap();
        assert_eq!(s.retained.len(), 1);
        assert_eq!(s.retained[0].expiry, Some(secs(1)));
        b.subscribe_at(
            &c,
            SubscriberId(2),
            &filter("e/#"),
            Qos::AtMostOnce,
            t0 + secs(9),
        )
        .unwrap();
        let d = rx.try_recv_at(t0 + secs(9)).unwrap();
        assert_eq!((d.subscriber, d.message.retain), (SubscriberId(2), true));
        assert!(b.retained_at(&topic("e/x"), t0 + secs(10)).is_none());
        let s = b
            .subscribe_at(
                &c,
                SubscriberId(3),
                &filter("e/x"),
                Qos::AtMostOnce,
                t0 + secs(11),
            )
            .unwrap();
        assert!(s.retained.is_empty());
        b.subscribe_at(
            &c,
            SubscriberId(4),
            &filter("e/#"),
            Qos::AtMostOnce,
            t0 + secs(11),
        )
        .unwrap();
        assert!(rx.try_recv_at(t0 + secs(11)).is_none());
    }

    #[test]
    fn limits_and_bounded_queue() {
        let (b, rx) = EmbeddedBroker::new(EmbeddedConfig {
            queue_capacity: 3,
            max_retained: 1,
            max_subscriptions: 1,
        });
        let now = Instant::now();
        b.publish_at(Publish::new(topic("a"), "x").retain(true), now)
            .unwrap();
        assert_eq!(
            b.publish_at(Publish::new(topic("b"), "x").retain(true), now),
            Err(BrokerError::Limit("retained messages"))
        );
        // Replacing the existing retained message is fine.
        b.publish_at(Publish::new(topic("a"), "y").retain(true), now)
            .unwrap();
        let c = ClientInfo::default();
        b.subscribe_at(&c, SubscriberId(1), &filter("q"), Qos::AtMostOnce, now)
            .unwrap();
        assert_eq!(
            b.subscribe_at(&c, SubscriberId(2), &filter("q"), Qos::AtMostOnce, now),
            Err(BrokerError::Limit("subscriptions"))
        );
        for _ in 0..10 {
            b.publish_at(Publish::new(topic("q"), "m"), now).unwrap();
        }
        assert_eq!(b.hub.queued(SubscriberId(1)), 3);
        assert_eq!(rx.dropped(), 7);
    }

    #[tokio::test]
    async fn trait_object_disconnect_drops_client_state() {
        let (b, mut rx) = EmbeddedBroker::new(EmbeddedConfig::default());
        let b: Arc<dyn Broker> = Arc::new(b);
        let c = ClientInfo::with_clientid("dev1");
        b.subscribe(&c, SubscriberId(5), &filter("d/#"), Qos::AtLeastOnce)
            .await
            .unwrap();
        b.publish(&c, Publish::new(topic("d/1"), "a").qos(Qos::ExactlyOnce))
            .await
            .unwrap();
        b.disconnect_client(&c).await;
        b.publish(&c, Publish::new(topic("d/2"), "b"))
            .await
            .unwrap();
        assert!(
            rx.try_recv().is_none(),
            "queued and later messages are gone"
        );
        assert!(b.is_ready());
        drop(b);
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn expiry_secs_rounds_up() {
        assert_eq!(expiry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(expiry_secs(Duration::from_secs(3)), 3);
        assert_eq!(expiry_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
