//! Bounded per-subscriber delivery queues shared by both broker
//! implementations, drained by one [`Deliveries`] receiver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use super::{Message, SubscriberId};

/// One message for one local subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The subscriber it is for.
    pub subscriber: SubscriberId,
    /// The message.
    pub message: Message,
}

/// Receiver of all deliveries of one broker. Subscribers with pending
/// messages are served round-robin, so one busy topic does not starve
/// others.
#[derive(Debug)]
pub struct Deliveries {
    hub: Arc<DeliveryHub>,
}

impl Deliveries {
    pub(crate) fn new(hub: Arc<DeliveryHub>) -> Self {
        Self { hub }
    }

    /// The next delivery; `None` once the broker has been dropped and every
    /// queue is empty.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.try_recv() {
                return Some(d);
            }
            if self.hub.lock().closed {
                return None;
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between `try_recv` and here is not lost.
            self.hub.notify.notified().await;
        }
    }

    /// The next delivery if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.try_recv_at(Instant::now())
    }

    /// [`Deliveries::try_recv`] at time `now`: a message whose expiry
    /// interval ran out while queued is dropped (MQTT 5 §3.3.2.3.3) and
    /// counted in [`Deliveries::expired`]; others carry the remaining
    /// interval.
    pub fn try_recv_at(&mut self, now: Instant) -> Option<Delivery> {
        let mut state = self.hub.lock();
        while let Some(subscriber) = state.ready.pop_front() {
            let Some(queue) = state.queues.get_mut(&subscriber) else {
                continue;
            };
            let mut found = None;
            while let Some((mut message, queued_at)) = queue.pop_front() {
                let waited = now.saturating_duration_since(queued_at);
                match message.expiry {
                    Some(expiry) if waited >= expiry => {
                        self.hub.expired.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(expiry) => {
                        message.expiry = Some(expiry - waited);
                        found = Some(message);
                        break;
                    }
                    None => {
                        found = Some(message);
                        break;
                    }
                }
            }
            if !queue.is_empty() {
                state.ready.push_back(subscriber);
            }
            if let Some(message) = found {
                return Some(Delivery {
                    subscriber,
                    message,
                });
            }
        }
        None
    }

    /// Messages dropped so far because they expired while queued.
    pub fn expired(&self) -> u64 {
        self.hub.expired.load(Ordering::Relaxed)
    }

    /// Messages dropped so far because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.hub.dropped.load(Ordering::Relaxed)
    }
}

/// The sending side, owned by a broker implementation.
#[derive(Debug)]
pub(crate) struct DeliveryHub {
    state: Mutex<HubState>,
    notify: Notify,
    dropped: AtomicU64,
    expired: AtomicU64,
    capacity: usize,
}

#[derive(Debug, Default)]
struct HubState {
    queues: HashMap<SubscriberId, VecDeque<(Message, Instant)>>,
    /// Subscribers with a non-empty queue (each at most once).
    ready: VecDeque<SubscriberId>,
    closed: bool,
}

impl DeliveryHub {
    /// A hub whose per-subscriber queues hold at most `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState::default()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic elsewhere while holding the lock leaves consistent data
        // (every mutation is a single collection operation).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `message` for `subscriber`, dropping its oldest message if the
    /// queue is full.
    pub(crate) fn push(&self, subscriber: SubscriberId, message: Message) {
        self.push_at(subscriber, message, Instant::now());
    }

    /// [`DeliveryHub::push`] at time `now`.
    pub(crate) fn push_at(&self, subscriber: SubscriberId, message: Message, now: Instant) {
        let mut state = self.lock();
        let queue = state.queues.entry(subscriber).or_default();
        let was_empty = queue.is_empty();
        if queue.len() >= self.capacity {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back((message, now));
        if was_empty {
            state.ready.push_back(subscriber);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Forgets a subscriber's queued messages.
    pub(crate) fn remove(&self, subscriber: SubscriberId) {
        self.lock().queues.remove(&subscriber);
    }

    /// Marks the hub closed: the receiver ends after draining.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn queued(&self, subscriber: SubscriberId) -> usize {
        self.lock().queues.get(&subscriber).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::broker::Qos;

    fn msg(n: u8) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from(vec![n]),
            qos: Qos::AtMostOnce,
            retain: false,
            expiry: None,
            content_type: None,
        }
    }

    #[test]
    fn bounded_drop_oldest_and_round_robin() {
        let hub = DeliveryHub::new(2);
        let mut rx = Deliveries::new(hub.clone());
        let (a, b) = (SubscriberId(1), SubscriberId(2));
        for n in 0..5 {
            hub.push(a, msg(n));
        }
        hub.push(b, msg(9));
        assert_eq!(hub.queued(a), 2);
        assert_eq!(rx.dropped(), 3);
        let got: Vec<(u64, u8)> = std::iter::from_fn(|| rx.try_recv())
            .map(|d| (d.subscriber.0, d.message.payload[0]))
            .collect();
        // Oldest dropped; a and b alternate.
        assert_eq!(got, vec![(1, 3), (2, 9), (1, 4)]);
    }

    #[test]
    fn removed_subscriber_gets_nothing() {
        let hub = DeliveryHub::new(4);
        let mut rx = Deliveries::new(hub.clone());
        hub.push(SubscriberId(1), msg(1));
        hub.remove(SubscriberId(1));
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn expired_while_queued_is_dropped_and_remaining_expiry_is_passed_on() {
        let hub = DeliveryHub::new(8);
        let mut rx = Deliveries::new(hub.clone());
        let t0 = Instant::now();
        let with_expiry = |n: u8, secs: u64| Message {
            expiry: Some(std::time::Duration::from_secs(secs)),
            ..msg(n)
        };
        hub.push_at(SubscriberId(1), with_expiry(1, 5), t0);
        hub.push_at(SubscriberId(1), with_expiry(2, 60), t0);
        hub.push_at(SubscriberId(1), msg(3), t0);
        let later = t0 + std::time::Duration::from_secs(10);
        let d = rx.try_recv_at(later).unwrap();
        assert_eq!(d.message.payload[0], 2);
        assert_eq!(d.message.expiry, Some(std::time::Duration::from_secs(50)));
        assert_eq!(rx.try_recv_at(later).unwrap().message.expiry, None);
        assert!(rx.try_recv_at(later).is_none());
        assert_eq!(rx.expired(), 1);
    }

    #[tokio::test]
    async fn recv_wakes_up_and_ends_on_close() {
        let hub = DeliveryHub::new(4);
        let mut rx = Deliveries::new(hub.clone());
        let h = hub.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            h.push(SubscriberId(7), msg(7));
            h.close();
        });
        assert_eq!(rx.recv().await.unwrap().subscriber, SubscriberId(7));
        assert!(rx.recv().await.is_none());
    }
}
