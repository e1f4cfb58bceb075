//! One MQTT connection ("link"): a rumqttc client plus its event loop on a
//! task of its own, with packet-id correlation of acknowledgements.
//!
//! rumqttc 0.25 has no per-request ack handle. What it does give: requests
//! are taken from its channel strictly in order, and each one taken yields
//! an `Outgoing::Publish(pkid)` / `Subscribe(pkid)` / `Unsubscribe(pkid)`
//! event (or `AwaitAck(pkid)` when a publish collides on a packet id and is
//! sent later, after the ack of that id, as the next `Outgoing::Publish`).
//! So every request we put into the channel is also pushed, under the same
//! lock, onto our FIFO `awaiting_pkid`; the outgoing event pops the FIFO and
//! files the waiter under the packet id; PUBACK / PUBCOMP / SUBACK resolve
//! it.
//!
//! Requests are submitted only while the link is up. When the connection
//! fails, under the same lock, the event loop's leftover requests are
//! discarded (a clean session resends nothing) and every waiter fails with
//! `Unavailable`. This keeps the FIFO and rumqttc's channel in step and
//! means no publish is ever reported as accepted without its ack.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{MqttConfig, MqttProtocol};
use crate::broker::embedded::expiry_secs;
use crate::broker::subscriptions::LocalSubscriptions;
use crate::broker::{BrokerError, DeliveryHub, Message, Publish, Qos, SubscriberId, min_qos};
use crate::topic::{has_wildcard, matches};

/// Connection status as seen by callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkStatus {
    Connecting,
    Up,
    Down,
    /// The broker refused the credentials; the link has stopped.
    NotAuthorized,
    /// Closed on purpose (client disconnected / broker dropped).
    Closed,
}

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

/// The waiter of a QoS ≥ 1 publish and when its ack is due. Publishes have
/// no timer each: the link's ack sweeper fails overdue ones (see
/// [`sweep_acks`]), which saves a timer registration per publish.
struct PubWaiter {
    tx: Waiter,
    due: Instant,
}

/// A QoS 2 publish waiting for its PUBCOMP.
struct PubComp {
    pkid: u16,
    waiter: PubWaiter,
    /// rumqttc sent another publish with this packet id before the
    /// PUBCOMP (the id was still in use at the broker): the outcome of both
    /// is unknown, so both fail rather than risk a false success (a broker
    /// may take the second as a reused id and drop the first). Only MQTT 5
    /// links publish QoS 2 (see [`publish_qos4`]).
    reused: bool,
}

/// The error for a publish whose packet id rumqttc reused too early.
fn reused_id_error() -> BrokerError {
    BrokerError::Unavailable("MQTT packet id reused before PUBCOMP; outcome unknown".into())
}

/// State of the link's ack sweeper task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweeper {
    /// Not spawned yet (no QoS ≥ 1 publish so far).
    NotStarted,
    /// Parked until a publish needs it.
    Idle,
    /// Checking deadlines every tick.
    Busy,
}

/// Outcome of [`Link::submit`].
enum Submitted {
    /// Queued to rumqttc; the ack to wait for (none for QoS 0).
    Sent(Option<oneshot::Receiver<Result<(), BrokerError>>>),
    /// The link is not up yet: the message back, to try again.
    NotUp(Publish),
}

enum Pending {
    Publish(Option<PubWaiter>),
    Subscribe(Option<SubAckTarget>),
    Unsubscribe,
}

/// Who learns the outcome of a SUBSCRIBE.
enum SubAckTarget {
    /// Everyone waiting in `LinkState::subscribing` for this filter.
    Filter(String),
    /// One waiter (a retained-message probe).
    Waiter(Waiter),
}

/// Catches the retained messages the broker sends in answer to one
/// SUBSCRIBE (they are the only messages that arrive with the retain flag
/// set, since we never ask for retain-as-published), so they go to whoever
/// subscribed and not to every local subscriber of the filter.
struct Probe {
    id: u64,
    filter: String,
    tag: u32,
    target: ProbeTarget,
}

enum ProbeTarget {
    /// Exact topic: the first retained copy, for the waiting caller.
    Reply(Option<oneshot::Sender<Message>>),
    /// Wildcard filter: retained copies queued for one local subscriber.
    Subscriber { id: SubscriberId, qos: Qos },
}

/// Waiters of sent QoS ≥ 1 publishes, indexed by packet id: rumqttc hands
/// out ids from 1 up to its inflight limit, so the table stays small and a
/// lookup is an index instead of a hash (it runs twice per publish).
#[derive(Default)]
struct PubAcks {
    slots: Vec<Option<PubWaiter>>,
}

impl PubAcks {
    fn insert(&mut self, pkid: u16, waiter: PubWaiter) {
        let i = usize::from(pkid);
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(waiter);
        }
    }

    fn remove(&mut self, pkid: u16) -> Option<PubWaiter> {
        self.slots.get_mut(usize::from(pkid)).and_then(Option::take)
    }

    fn drain(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.slots.iter_mut().filter_map(|s| s.take().map(|w| w.tx))
    }

    fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Takes the waiters whose ack is overdue at `now`.
    fn take_overdue(&mut self, now: Instant, out: &mut Vec<Waiter>) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|w| w.due <= now)
                && let Some(w) = slot.take()
            {
                out.push(w.tx);
            }
        }
    }
}

struct LinkState {
    up: bool,
    closed: bool,
    awaiting_pkid: VecDeque<Pending>,
    collided: Option<Pending>,
    pub_acks: PubAcks,
    /// QoS 2 publishes past PUBREC, waiting for PUBCOMP, oldest first.
    /// rumqttc frees a packet id at PUBREC and may hand it to another
    /// publish before the PUBCOMP, so these cannot stay in `pub_acks`.
    pub_comps: VecDeque<PubComp>,
    sub_acks: HashMap<u16, SubAckTarget>,
    /// Filters whose broker-level SUBSCRIBE is not acknowledged yet, with
    /// every local subscriber waiting for it (the first and any that joined
    /// meanwhile), so nobody is told "subscribed" before the broker said so.
    subscribing: HashMap<String, Vec<Waiter>>,
    subscriptions: LocalSubscriptions,
    next_tag: u32,
    /// Whether SUBSCRIBE carries our tag as Subscription Identifier.
    subscription_ids: bool,
    probes: Vec<Probe>,
    next_probe: u64,
    /// While the link is down: why, and when the next reconnect attempt
    /// starts (in the past while an attempt is in progress).
    down: Option<(String, Instant)>,
    sweeper: Sweeper,
}

enum LinkClient {
    V5(rumqttc::v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

pub(super) struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    client: LinkClient,
    state: Mutex<LinkState>,
    status: watch::Sender<LinkStatus>,
    hub: Arc<DeliveryHub>,
    config: Arc<MqttConfig>,
    /// Credentials this link connected with (per-client model).
    credentials: Option<(Option<String>, Option<String>)>,
    /// PUBLISH packets received from the broker.
    received: AtomicU64,
    /// Mirror of `LinkState::closed` for the event loop, which checks it
    /// before every poll.
    closed: AtomicBool,
    /// Wakes the parked ack sweeper.
    sweep_wake: Arc<Notify>,
}

/// What the event loop reports, independent of the MQTT version.
enum LinkEvent {
    /// Connected; `subscription_ids` is false when the broker said it does
    /// not support MQTT 5 Subscription Identifiers (and for MQTT 3.1.1).
    ConnAck {
        subscription_ids: bool,
    },
    OutPublish(u16),
    OutAwaitAck(u16),
    OutSubscribe(u16),
    OutUnsubscribe(u16),
    OutDisconnect,
    PubAck(u16, Result<(), BrokerError>),
    PubRec(u16, Result<(), BrokerError>),
    PubComp(u16, Result<(), BrokerError>),
    SubAck(u16, Result<(), BrokerError>),
    Publish(IncomingPublish),
    Other,
}

struct IncomingPublish {
    topic: String,
    payload: Bytes,
    qos: Qos,
    retain: bool,
    expiry: Option<Duration>,
    content_type: Option<String>,
    subscription_ids: Vec<usize>,
}

/// Largest MQTT 5 subscription identifier (variable byte integer).
const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

impl Link {
    /// Creates the link and starts its event loop task (needs a tokio
    /// runtime). `client_id` is the MQTT client id.
    pub(super) fn start(
        config: Arc<MqttConfig>,
        hub: Arc<DeliveryHub>,
        client_id: String,
        credentials: Option<(Option<String>, Option<String>)>,
    ) -> Self {
        let (host, port) = (config.host.clone(), config.port);
        let creds = credentials
            .clone()
            .or_else(|| Some((config.username.clone(), config.password.clone())))
            .and_then(|(u, p)| u.map(|u| (u, p.unwrap_or_default())));
        let keep_alive = config.keep_alive.max(Duration::from_secs(1));
        let connect_timeout = config.connect_timeout.as_secs().max(1);
        let (status, _) = watch::channel(LinkStatus::Connecting);
        let state = Mutex::new(LinkState {
            up: false,
            closed: false,
            awaiting_pkid: VecDeque::new(),
            collided: None,
            pub_acks: PubAcks::default(),
            pub_comps: VecDeque::new(),
            sweeper: Sweeper::NotStarted,
            sub_acks: HashMap::new(),
            subscribing: HashMap::new(),
            subscriptions: LocalSubscriptions::default(),
            next_tag: 1,
            subscription_ids: false,
            probes: Vec::new(),
            next_probe: 0,
            down: None,
        });
        match config.protocol {
            MqttProtocol::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(client_id, host, port);
                options.set_keep_alive(keep_alive).set_clean_start(true);
                options.set_max_packet_size(Some(
                    u32::try_from(config.max_packet_size).unwrap_or(u32::MAX),
                ));
                if let Some(transport) = tls_transport(&config) {
                    options.set_transport(transport);
                }
                options.set_connection_timeout(connect_timeout);
                if let Some((u, p)) = creds {
                    options.set_credentials(u, p);
                }
                let (client, eventloop) =
                    rumqttc::v5::AsyncClient::new(options, config.request_capacity);
                let shared = Arc::new(Shared {
                    client: LinkClient::V5(client),
                    state,
                    status,
                    hub,
                    config,
                    credentials,
                    received: AtomicU64::new(0),
                    closed: AtomicBool::new(false),
                    sweep_wake: Arc::new(Notify::new()),
                });
                tokio::spawn(drive_v5(Arc::downgrade(&shared), eventloop));
                Self { shared }
            }
            MqttProtocol::V311 => {
                let mut options = rumqttc::MqttOptions::new(client_id, host, port);
                options.set_keep_alive(keep_alive).set_clean_session(true);
                options.set_max_packet_size(config.max_packet_size, config.max_packet_size);
                if let Some(transport) = tls_transport(&config) {
                    options.set_transport(transport);
                }
                if let Some((u, p)) = creds {
                    options.set_credentials(u, p);
                }
                let (client, mut eventloop) =
                    rumqttc::AsyncClient::new(options, config.request_capacity);
                let mut network = rumqttc::NetworkOptions::new();
                network.set_connection_timeout(connect_timeout);
                eventloop.set_network_options(network);
                let shared = Arc::new(Shared {
                    client: LinkClient::V4(client),
                    state,
                    status,
                    hub,
                    config,
                    credentials,
                    received: AtomicU64::new(0),
                    closed: AtomicBool::new(false),
                    sweep_wake: Arc::new(Notify::new()),
                });
                tokio::spawn(drive_v4(Arc::downgrade(&shared), eventloop));
                Self { shared }
            }
        }
    }

    pub(super) fn credentials(&self) -> Option<&(Option<String>, Option<String>)> {
        self.shared.credentials.as_ref()
    }

    pub(super) fn is_up(&self) -> bool {
        *self.shared.status.borrow() == LinkStatus::Up
    }

    /// Waits until the link is up, refused or closed, at most `wait`.
    pub(super) async fn wait_connected(&self, wait: Duration) -> Result<(), BrokerError> {
        let mut rx = self.shared.status.subscribe();
        let status = tokio::time::timeout(
            wait,
            rx.wait_for(|s| !matches!(s, LinkStatus::Connecting | LinkStatus::Down)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| *s);
        match status {
            Some(LinkStatus::Up) => Ok(()),
            Some(LinkStatus::NotAuthorized) => Err(BrokerError::NotAuthorized),
            Some(LinkStatus::Closed) => Err(BrokerError::Unavailable("connection closed".into())),
            _ => Err(BrokerError::Unavailable(format!(
                "not connected to the MQTT broker within {} ms",
                wait.as_millis()
            ))),
        }
    }

    /// Now plus `unavailable_wait` (saturating: a huge configured wait
    /// means "a year", not an overflow).
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.shared.config.unavailable_wait)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
    }

    /// Waits until the link is up, at most until `deadline`, but gives up
    /// at once when the connection is known to be down (lost and not
    /// re-established yet): a device is then told to come back later
    /// ([`BrokerError::Down`]) instead of being held. Only a link that is
    /// still making its first connection attempt is waited for.
    async fn wait_until(&self, deadline: Instant) -> Result<(), BrokerError> {
        let mut rx = self.shared.status.subscribe();
        loop {
            let status = *rx.borrow_and_update();
            match status {
                LinkStatus::Up => return Ok(()),
                LinkStatus::Down => return Err(self.shared.down_error()),
                LinkStatus::NotAuthorized => return Err(BrokerError::NotAuthorized),
                LinkStatus::Closed => {
                    return Err(BrokerError::Unavailable("connection closed".into()));
                }
                LinkStatus::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::Unavailable("connection closed".into())),
                Err(_) => {
                    return Err(BrokerError::Unavailable(format!(
                        "not connected to the MQTT broker within {} ms",
                        self.shared.config.unavailable_wait.as_millis()
                    )));
                }
            }
        }
    }

    /// Like [`Link::wait_connected`], but returns at once when the
    /// connection is known to be down (see [`Link::wait_until`]).
    pub(super) async fn wait_usable(&self, wait: Duration) -> Result<(), BrokerError> {
        let now = Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.wait_until(deadline).await
    }

    /// Publishes; for QoS ≥ 1 waits for PUBACK / PUBCOMP.
    pub(super) async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        // Fixed header, packet id, property headers: well under 64 bytes.
        let size = message.payload.len()
            + message.topic.as_str().len()
            + message.content_type.as_ref().map_or(0, String::len)
            + 64;
        let max = self.shared.config.max_packet_size;
        if size > max {
            return Err(BrokerError::TooLarge { size, max });
        }
        // Only needed when the link is not up yet (no clock read per publish).
        let mut deadline = None;
        let mut message = message;
        loop {
            match self.submit(message)? {
                Submitted::Sent(None) => return Ok(()),
                // No timer here: the ack sweeper fails it when overdue.
                Submitted::Sent(Some(ack)) => {
                    return ack.await.unwrap_or_else(|_| {
                        Err(BrokerError::Unavailable("connection closed".into()))
                    });
                }
                Submitted::NotUp(m) => {
                    message = m;
                    let deadline = *deadline.get_or_insert_with(|| self.deadline());
                    self.wait_until(deadline).await?;
                }
            }
        }
    }

    /// Hands `message` to rumqttc if the link is up (moving topic and
    /// payload, no copies here); gives it back when a QoS ≥ 1 publish has
    /// to wait for the connection.
    fn submit(&self, message: Publish) -> Result<Submitted, BrokerError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(BrokerError::Unavailable("connection closed".into()));
        }
        if state.up {
            let qos = message.qos;
            self.shared.client.try_publish(message)?;
            let (waiter, rx) = if qos == Qos::AtMostOnce {
                (None, None)
            } else {
                let (tx, rx) = oneshot::channel();
                let now = Instant::now();
                let due = now
                    .checked_add(self.shared.config.ack_timeout)
                    .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
                self.shared.start_sweeper(&mut state);
                (Some(PubWaiter { tx, due }), Some(rx))
            };
            state.awaiting_pkid.push_back(Pending::Publish(waiter));
            Ok(Submitted::Sent(rx))
        } else if message.qos == Qos::AtMostOnce {
            if state.down.is_some() {
                return Err(self.shared.down_error_locked(&state));
            }
            Err(BrokerError::Unavailable(
                "not connected to the MQTT broker".into(),
            ))
        } else {
            Ok(Submitted::NotUp(message))
        }
    }

    async fn await_ack(
        &self,
        ack: oneshot::Receiver<Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        match tokio::time::timeout(self.shared.config.ack_timeout, ack).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Unavailable("connection closed".into())),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "no acknowledgement from the MQTT broker within {} ms",
                self.shared.config.ack_timeout.as_millis()
            ))),
        }
    }

    /// Adds a local subscription; subscribes at the broker for the first
    /// local subscriber of `filter` and waits for the SUBACK. Later
    /// subscribers of an established filter make the link SUBSCRIBE again,
    /// which makes the broker resend the retained messages.
    ///
    /// Retained messages: for an exact topic the one retained message is
    /// returned (waiting at most `retained_probe_wait` after the SUBACK);
    /// for a wildcard filter they are queued to this subscriber's
    /// deliveries as they arrive.
    pub(super) async fn subscribe(
        &self,
        clientid: Option<&str>,
        subscriber: SubscriberId,
        filter: &str,
        qos: Qos,
    ) -> Result<Vec<Message>, BrokerError> {
        let exact = !has_wildcard(filter);
        let deadline = self.deadline();
        let (ack, reply, probe_id) = loop {
            let submitted = {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(BrokerError::Unavailable("connection closed".into()));
                }
                if state.up {
                    if state.subscriptions.len() >= self.shared.config.max_subscriptions {
                        return Err(BrokerError::Limit("subscriptions"));
                    }
                    let new_tag = state.take_tag();
                    let added = state
                        .subscriptions
                        .add(clientid, subscriber, filter, qos, new_tag);
                    let tag = state.subscriptions.filter_tag(filter).unwrap_or(new_tag);
                    let (reply_tx, reply_rx) = if exact {
                        let (tx, rx) = oneshot::channel();
                        (Some(tx), Some(rx))
                    } else {
                        (None, None)
                    };
                    let target = match reply_tx {
                        Some(tx) => ProbeTarget::Reply(Some(tx)),
                        None => ProbeTarget::Subscriber {
                            id: subscriber,
                            qos,
                        },
                    };
                    let probe_id = state.add_probe(filter, tag, target);
                    let (tx, rx) = oneshot::channel();
                    let sent = if added.first_for_filter {
                        let sent = self
                            .shared
                            .client
                            .try_subscribe(filter, state.subscription_ids.then_some(tag));
                        if sent.is_ok() {
                            state.awaiting_pkid.push_back(Pending::Subscribe(Some(
                                SubAckTarget::Filter(filter.to_owned()),
                            )));
                            state
                                .subscribing
                                .entry(filter.to_owned())
                                .or_default()
                                .push(tx);
                        }
                        sent
                    } else if let Some(waiting) = state.subscribing.get_mut(filter) {
                        waiting.push(tx);
                        Ok(())
                    } else {
                        let sent = self
                            .shared
                            .client
                            .try_subscribe(filter, state.subscription_ids.then_some(tag));
                        if sent.is_ok() {
                            state
                                .awaiting_pkid
                                .push_back(Pending::Subscribe(Some(SubAckTarget::Waiter(tx))));
                        }
                        sent
                    };
                    if let Err(e) = sent {
                        state.remove_probe(probe_id);
                        drop(state);
                        self.unsubscribe(subscriber, filter);
                        return Err(e);
                    }
                    Some((rx, reply_rx, probe_id))
                } else {
                    None
                }
            };
            match submitted {
                Some(s) => break s,
                None => self.wait_until(deadline).await?,
            }
        };
        // Removes the probe however this future ends (also when dropped).
        let probe = ProbeGuard {
            shared: self.shared.clone(),
            id: probe_id,
        };
        if let Err(e) = self.await_ack(ack).await {
            drop(probe);
            self.unsubscribe(subscriber, filter);
            return Err(e);
        }
        let wait = self.shared.config.retained_probe_wait;
        match reply {
            Some(reply) => {
                let message = tokio::time::timeout(wait, reply)
                    .await
                    .ok()
                    .and_then(Result::ok);
                drop(probe);
                Ok(message
                    .map(|m| Message {
                        qos: min_qos(m.qos, qos),
                        ..m
                    })
                    .into_iter()
                    .collect())
            }
            None => {
                // Retained messages keep flowing to the subscriber for a
                // short while; then the probe goes.
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    drop(probe);
                });
                Ok(Vec::new())
            }
        }
    }

    /// Removes a local subscription; unsubscribes at the broker when it was
    /// the last one of `filter`. Does not wait for the UNSUBACK.
    pub(super) fn unsubscribe(&self, subscriber: SubscriberId, filter: &str) {
        let mut state = self.shared.lock();
        let removed = state.subscriptions.remove(subscriber, filter);
        if removed.last_for_filter && state.up {
            self.shared.unsubscribe_at_broker(&mut state, filter);
        }
    }

    /// Number of filters this link has subscribed at the broker (filters
    /// with at least one local subscriber).
    pub(super) fn broker_filters(&self) -> usize {
        self.shared.lock().subscriptions.filters().count()
    }

    /// PUBLISH packets received from the broker so far.
    pub(super) fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// True if `subscriber` has no subscription on this link.
    pub(super) fn has_no(&self, subscriber: SubscriberId) -> bool {
        self.shared.lock().subscriptions.is_gone(subscriber)
    }

    /// Drops all subscriptions of `clientid`; returns its subscribers.
    pub(super) fn remove_client(&self, clientid: &str) -> Vec<SubscriberId> {
        let mut state = self.shared.lock();
        let (subscribers, filters) = state.subscriptions.remove_client(clientid);
        if state.up {
            for filter in filters {
                self.shared.unsubscribe_at_broker(&mut state, &filter);
            }
        }
        subscribers
    }

    /// The retained message of `topic`: subscribes to it, takes the
    /// retained message the broker sends after the SUBACK (waiting at most
    /// `retained_probe_wait`), and unsubscribes again unless the filter has
    /// local subscribers (whom the probe's copy does not reach).
    pub(super) async fn retained(&self, topic: &str) -> Result<Option<Message>, BrokerError> {
        let deadline = self.deadline();
        let (ack, reply, probe_id) = loop {
            let submitted = {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(BrokerError::Unavailable("connection closed".into()));
                }
                if state.up {
                    // Re-using the tag of an existing subscription keeps its
                    // subscription identifier valid after our re-SUBSCRIBE.
                    let tag = match state.subscriptions.filter_tag(topic) {
                        Some(tag) => tag,
                        None => state.take_tag(),
                    };
                    self.shared
                        .client
                        .try_subscribe(topic, state.subscription_ids.then_some(tag))?;
                    let (tx, rx) = oneshot::channel();
                    state
                        .awaiting_pkid
                        .push_back(Pending::Subscribe(Some(SubAckTarget::Waiter(tx))));
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let probe_id = state.add_probe(topic, tag, ProbeTarget::Reply(Some(reply_tx)));
                    Some((rx, reply_rx, probe_id))
                } else {
                    None
                }
            };
            match submitted {
                Some(s) => break s,
                None => self.wait_until(deadline).await?,
            }
        };
        let probe = ProbeGuard {
            shared: self.shared.clone(),
            id: probe_id,
        };
        let acked = self.await_ack(ack).await;
        let message = match acked {
            Ok(()) => tokio::time::timeout(self.shared.config.retained_probe_wait, reply)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        drop(probe);
        let mut state = self.shared.lock();
        if state.subscriptions.filter_tag(topic).is_none() && state.up {
            self.shared.unsubscribe_at_broker(&mut state, topic);
        }
        drop(state);
        acked.map(|()| message)
    }

    /// Sends DISCONNECT and stops the link; pending waiters fail.
    pub(super) fn close(&self) {
        let waiters = {
            let mut state = self.shared.lock();
            state.closed = true;
            self.shared.closed.store(true, Ordering::Release);
            state.up = false;
            state.take_waiters()
        };
        fail_all(
            waiters,
            &BrokerError::Unavailable("connection closed".into()),
        );
        self.shared.client.try_disconnect();
        self.shared.status.send_replace(LinkStatus::Closed);
        self.shared.sweep_wake.notify_one();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

/// Removes a probe when dropped.
struct ProbeGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.shared.lock().remove_probe(self.id);
    }
}

impl LinkState {
    fn add_probe(&mut self, filter: &str, tag: u32, target: ProbeTarget) -> u64 {
        let id = self.next_probe;
        self.next_probe = self.next_probe.wrapping_add(1);
        self.probes.push(Probe {
            id,
            filter: filter.to_owned(),
            tag,
            target,
        });
        id
    }

    fn remove_probe(&mut self, id: u64) {
        self.probes.retain(|p| p.id != id);
    }

    fn take_tag(&mut self) -> u32 {
        let tag = self.next_tag;
        self.next_tag = if tag >= MAX_SUBSCRIPTION_ID {
            1
        } else {
            tag + 1
        };
        tag
    }

    /// Publish waiters whose ack is overdue at `now` (their queue entries
    /// stay, so the FIFO stays in step with rumqttc).
    fn take_overdue(&mut self, now: Instant) -> Vec<Waiter> {
        let mut overdue = Vec::new();
        for pending in self.awaiting_pkid.iter_mut().chain(self.collided.as_mut()) {
            if let Pending::Publish(slot) = pending
                && slot.as_ref().is_some_and(|w| w.due <= now)
                && let Some(w) = slot.take()
            {
                overdue.push(w.tx);
            }
        }
        self.pub_acks.take_overdue(now, &mut overdue);
        let mut i = 0;
        while let Some(c) = self.pub_comps.get(i) {
            if c.waiter.due <= now {
                if let Some(c) = self.pub_comps.remove(i) {
                    overdue.push(c.waiter.tx);
                }
            } else {
                i += 1;
            }
        }
        overdue
    }

    /// Whether any publish waits for its ack.
    fn has_publish_waiters(&self) -> bool {
        !self.pub_acks.is_empty()
            || !self.pub_comps.is_empty()
            || self
                .awaiting_pkid
                .iter()
                .chain(self.collided.as_ref())
                .any(|p| matches!(p, Pending::Publish(Some(_))))
    }

    fn take_waiters(&mut self) -> Vec<Waiter> {
        let mut waiters = Vec::new();
        for pending in self.awaiting_pkid.drain(..).chain(self.collided.take()) {
            match pending {
                Pending::Publish(Some(w)) => waiters.push(w.tx),
                Pending::Subscribe(Some(SubAckTarget::Waiter(w))) => waiters.push(w),
                _ => {}
            }
        }
        waiters.extend(self.subscribing.drain().flat_map(|(_, ws)| ws));
        waiters.extend(self.pub_acks.drain());
        waiters.extend(self.pub_comps.drain(..).map(|c| c.waiter.tx));
        for (_, target) in self.sub_acks.drain() {
            if let SubAckTarget::Waiter(w) = target {
                waiters.push(w);
            }
        }
        self.probes.clear();
        waiters
    }
}

fn fail_all(waiters: Vec<Waiter>, error: &BrokerError) {
    for w in waiters {
        let _ = w.send(Err(error.clone()));
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure the ack sweeper runs (a publish is about to wait).
    fn start_sweeper(self: &Arc<Self>, state: &mut LinkState) {
        match state.sweeper {
            Sweeper::Busy => {}
            Sweeper::Idle => {
                state.sweeper = Sweeper::Busy;
                self.sweep_wake.notify_one();
            }
            Sweeper::NotStarted => {
                state.sweeper = Sweeper::Busy;
                tokio::spawn(sweep_acks(Arc::downgrade(self), self.sweep_wake.clone()));
            }
        }
    }

    fn unsubscribe_at_broker(&self, state: &mut LinkState, filter: &str) {
        match self.client.try_unsubscribe(filter) {
            Ok(()) => state.awaiting_pkid.push_back(Pending::Unsubscribe),
            Err(e) => warn!(filter, error = %e, "could not unsubscribe at the MQTT broker"),
        }
    }

    /// Handles one event of the event loop. Returns false when the loop
    /// should stop.
    fn handle(&self, event: LinkEvent) -> bool {
        self.handle_locked(&mut self.lock(), event)
    }

    /// Handles `events` in order under one lock (an event the event loop
    /// returned plus those it had already buffered behind it, e.g. a batch
    /// of PUBACKs read at once). `on_connack` runs for a CONNACK. Returns
    /// false when the loop should stop.
    fn handle_batch(
        &self,
        events: impl Iterator<Item = LinkEvent>,
        mut on_connack: impl FnMut(),
    ) -> bool {
        let mut state = self.lock();
        for event in events {
            if matches!(event, LinkEvent::ConnAck { .. }) {
                on_connack();
            }
            if !self.handle_locked(&mut state, event) {
                return false;
            }
        }
        true
    }

    fn handle_locked(&self, state: &mut LinkState, event: LinkEvent) -> bool {
        match event {
            LinkEvent::ConnAck { subscription_ids } => {
                if state.closed {
                    return false;
                }
                state.up = true;
                state.subscription_ids = subscription_ids;
                // Clean session: the broker forgot our subscriptions.
                let filters: Vec<(String, u32)> = state
                    .subscriptions
                    .filters()
                    .map(|(f, tag)| (f.to_owned(), tag))
                    .collect();
                for (filter, tag) in filters {
                    match self
                        .client
                        .try_subscribe(&filter, state.subscription_ids.then_some(tag))
                    {
                        Ok(()) => state.awaiting_pkid.push_back(Pending::Subscribe(None)),
                        Err(e) => {
                            warn!(filter, error = %e, "could not re-subscribe after reconnect")
                        }
                    }
                }
                state.down = None;
                // Under the lock, so `up` and the status never disagree for
                // a caller that checks both.
                self.status.send_replace(LinkStatus::Up);
                info!("connected to the MQTT broker");
            }
            LinkEvent::OutPublish(pkid) => {
                let pending = state
                    .collided
                    .take()
                    .or_else(|| state.awaiting_pkid.pop_front());
                match pending {
                    Some(Pending::Publish(Some(w))) => {
                        if let Some(c) = state.pub_comps.iter_mut().find(|c| c.pkid == pkid) {
                            c.reused = true;
                            let _ = w.tx.send(Err(reused_id_error()));
                        } else {
                            // An unacked waiter under the same id can only
                            // be left from a lost ack: it fails (dropped).
                            state.pub_acks.insert(pkid, w);
                        }
                    }
                    Some(Pending::Publish(None)) => {}
                    _ => warn!(pkid, "outgoing publish without a matching request"),
                }
            }
            LinkEvent::OutAwaitAck(pkid) => {
                debug!(pkid, "packet id collision, publish deferred");
                state.collided = state.awaiting_pkid.pop_front();
            }
            LinkEvent::OutSubscribe(pkid) => match state.awaiting_pkid.pop_front() {
                Some(Pending::Subscribe(Some(target))) => {
                    state.sub_acks.insert(pkid, target);
                }
                Some(Pending::Subscribe(None)) => {}
                _ => warn!(pkid, "outgoing subscribe without a matching request"),
            },
            LinkEvent::OutUnsubscribe(pkid) => {
                if !matches!(state.awaiting_pkid.pop_front(), Some(Pending::Unsubscribe)) {
                    warn!(pkid, "outgoing unsubscribe without a matching request");
                }
            }
            LinkEvent::OutDisconnect => return false,
            LinkEvent::PubAck(pkid, result) => {
                if let Some(w) = state.pub_acks.remove(pkid) {
                    let _ = w.tx.send(result);
                }
            }
            LinkEvent::PubRec(pkid, result) => {
                if let Some(w) = state.pub_acks.remove(pkid) {
                    match result {
                        Ok(()) => state.pub_comps.push_back(PubComp {
                            pkid,
                            waiter: w,
                            reused: false,
                        }),
                        Err(e) => {
                            let _ = w.tx.send(Err(e));
                        }
                    }
                }
            }
            LinkEvent::PubComp(pkid, result) => {
                let i = state.pub_comps.iter().position(|c| c.pkid == pkid);
                if let Some(c) = i.and_then(|i| state.pub_comps.remove(i)) {
                    let result = if c.reused {
                        Err(reused_id_error())
                    } else {
                        result
                    };
                    let _ = c.waiter.tx.send(result);
                }
            }
            LinkEvent::SubAck(pkid, result) => match state.sub_acks.remove(&pkid) {
                Some(SubAckTarget::Waiter(w)) => {
                    let _ = w.send(result);
                }
                Some(SubAckTarget::Filter(filter)) => {
                    for w in state.subscribing.remove(&filter).unwrap_or_default() {
                        let _ = w.send(result.clone());
                    }
                }
                None => {}
            },
            LinkEvent::Publish(publish) => self.deliver(state, publish),
            LinkEvent::Other => {}
        }
        true
    }

    fn deliver(&self, state: &mut LinkState, p: IncomingPublish) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let ids = &p.subscription_ids;
        let tagged = |tag: u32| ids.is_empty() || ids.contains(&(tag as usize));
        if p.retain {
            let mut consumed = false;
            for probe in state
                .probes
                .iter_mut()
                .filter(|pr| tagged(pr.tag) && matches(&pr.filter, &p.topic))
            {
                match &mut probe.target {
                    ProbeTarget::Reply(reply) => {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(message_of(&p, p.qos));
                            consumed = true;
                        }
                    }
                    ProbeTarget::Subscriber { id, qos } => {
                        self.hub.push(*id, message_of(&p, min_qos(p.qos, *qos)));
                        consumed = true;
                    }
                }
            }
            if consumed {
                return;
            }
        }
        state
            .subscriptions
            .for_each_match(&p.topic, |subscriber, entry| {
                if tagged(entry.tag) {
                    self.hub
                        .push(*subscriber, message_of(&p, min_qos(p.qos, entry.qos)));
                }
            });
    }

    /// The event loop reported `error` (`refused`: the broker refused the
    /// credentials): acks read before the failure still count (`stale`
    /// events), then everything pending fails (see
    /// [`Shared::connection_lost`]; `discard` empties rumqttc's queues).
    /// Returns the delay before the next reconnect attempt, or `None` when
    /// the event loop must stop (refused or closed on purpose).
    fn connection_failed(
        &self,
        error: &dyn std::fmt::Display,
        refused: bool,
        attempt: u32,
        stale: Vec<LinkEvent>,
        discard: impl FnOnce(),
    ) -> Option<Duration> {
        let closed = self.lock().closed;
        let status = if closed {
            LinkStatus::Closed
        } else if refused {
            LinkStatus::NotAuthorized
        } else {
            LinkStatus::Down
        };
        if !closed {
            warn!(%error, "MQTT connection lost");
        }
        let err = if refused {
            BrokerError::NotAuthorized
        } else {
            BrokerError::Unavailable(format!("MQTT connection lost: {error}"))
        };
        for event in stale.into_iter().filter(is_ack) {
            self.handle(event);
        }
        let delay = backoff(
            attempt,
            self.config.reconnect_min,
            self.config.reconnect_max,
        );
        let retry_in = (!refused && !closed).then_some(delay);
        self.connection_lost(status, err, retry_in, discard);
        retry_in
    }

    /// The connection failed: discard what rumqttc still holds, fail every
    /// waiter. `discard` runs under the state lock.
    /// `retry_in` is the delay before the next reconnect attempt (none
    /// when the link stops for good).
    fn connection_lost(
        &self,
        status: LinkStatus,
        error: BrokerError,
        retry_in: Option<Duration>,
        discard: impl FnOnce(),
    ) {
        let waiters = {
            let mut state = self.lock();
            state.up = false;
            if let Some(delay) = retry_in {
                let reason = match &error {
                    BrokerError::Unavailable(reason) => reason.clone(),
                    other => other.to_string(),
                };
                state.down = Some((reason, Instant::now() + delay));
            }
            discard();
            let waiters = state.take_waiters();
            self.status.send_replace(status);
            waiters
        };
        fail_all(waiters, &error);
    }

    /// The error for an operation refused because the link is down.
    fn down_error(&self) -> BrokerError {
        self.down_error_locked(&self.lock())
    }

    fn down_error_locked(&self, state: &LinkState) -> BrokerError {
        match &state.down {
            Some((reason, next_attempt)) => BrokerError::Down {
                reason: reason.clone(),
                retry_after: next_attempt.saturating_duration_since(Instant::now()),
            },
            None => BrokerError::Down {
                reason: "not connected to the MQTT broker".into(),
                retry_after: Duration::ZERO,
            },
        }
    }
}

fn message_of(p: &IncomingPublish, qos: Qos) -> Message {
    Message {
        topic: p.topic.clone(),
        payload: p.payload.clone(),
        qos,
        retain: p.retain,
        expiry: p.expiry,
        content_type: p.content_type.clone(),
    }
}

impl LinkClient {
    fn try_publish(&self, m: Publish) -> Result<(), BrokerError> {
        let result = match self {
            Self::V5(c) => {
                let properties = p5::PublishProperties {
                    message_expiry_interval: m.expiry.map(expiry_secs),
                    content_type: m.content_type,
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    m.topic.into_string(),
                    qos5(m.qos),
                    m.retain,
                    m.payload,
                    properties,
                )
                .map_err(|e| e.to_string())
            }
            Self::V4(c) => c
                .try_publish(
                    m.topic.into_string(),
                    publish_qos4(m.qos),
                    m.retain,
                    m.payload.to_vec(),
                )
                .map_err(|e| e.to_string()),
        };
        result.map_err(|e| BrokerError::Unavailable(format!("MQTT request queue: {e}")))
    }

    /// `tag`: the Subscription Identifier to send, if the broker supports them.
    fn try_subscribe(&self, filter: &str, tag: Option<u32>) -> Result<(), BrokerError> {
        // The broker-level subscription is QoS 2; each local subscriber gets
        // min(message QoS, its own QoS).
        let result = match self {
            Self::V5(c) => {
                let properties = p5::SubscribeProperties {
                    id: tag.map(|t| t as usize),
                    user_properties: Vec::new(),
                };
                c.try_subscribe_many_with_properties(
                    [p5::Filter::new(
                        filter,
                        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                    )],
                    properties,
                )
                .map_err(|e| e.to_string())
            }
            Self::V4(c) => c
                .try_subscribe(filter, rumqttc::QoS::ExactlyOnce)
                .map_err(|e| e.to_string()),
        };
        result.map_err(|e| BrokerError::Unavailable(format!("MQTT request queue: {e}")))
    }

    fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Self::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Self::V4(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    fn try_disconnect(&self) {
        let _ = match self {
            Self::V5(c) => c.try_disconnect().is_ok(),
            Self::V4(c) => c.try_disconnect().is_ok(),
        };
    }
}

fn qos5(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The QoS a publish goes to the broker with under MQTT 3.1.1: QoS 2 is
/// sent as QoS 1. A 3.1.1 PUBACK / PUBREC has no reason code, and a broker
/// that refuses a publish (mosquitto 2.0 past its incoming quota of
/// `max_inflight_messages`, which QoS 2 publishes hold until PUBREL) still
/// answers with one, so the message is lost while it looks acknowledged.
/// QoS 1 publishes hold no quota beyond the moment they are handled, so
/// they cannot hit that limit. The device gets at-least-once either way: a
/// 2.04 follows the PUBACK, and the CoAP layer drops retransmissions.
fn publish_qos4(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce | Qos::ExactlyOnce => rumqttc::QoS::AtLeastOnce,
    }
}

fn from_qos5(q: rumqttc::v5::mqttbytes::QoS) -> Qos {
    match q {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce => Qos::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce => Qos::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn from_qos4(q: rumqttc::QoS) -> Qos {
    match q {
        rumqttc::QoS::AtMostOnce => Qos::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => Qos::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn tls_transport(config: &MqttConfig) -> Option<rumqttc::Transport> {
    let tls = config.tls.as_ref()?;
    let tls_config = match &tls.ca_pem {
        Some(ca) => rumqttc::TlsConfiguration::SimpleNative {
            ca: ca.clone(),
            client_auth: None,
        },
        None => rumqttc::TlsConfiguration::Native,
    };
    Some(rumqttc::Transport::Tls(tls_config))
}

/// Delay before reconnect attempt `attempt` (0-based): doubling from
/// `min`, capped at `max`.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << attempt.min(16)).min(max)
}

fn convert_v5(event: rumqttc::v5::Event) -> LinkEvent {
    use rumqttc::Outgoing;
    use rumqttc::v5::{Event, Incoming};
    match event {
        Event::Incoming(Incoming::ConnAck(ack)) => LinkEvent::ConnAck {
            subscription_ids: ack
                .properties
                .and_then(|p| p.subscription_identifiers_available)
                != Some(0),
        },
        Event::Incoming(Incoming::PubAck(ack)) => LinkEvent::PubAck(
            ack.pkid,
            match ack.reason {
                p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => Ok(()),
                p5::PubAckReason::NotAuthorized => Err(BrokerError::NotAuthorized),
                other => Err(BrokerError::Rejected(format!("{other:?}"))),
            },
        ),
        Event::Incoming(Incoming::PubRec(rec)) => LinkEvent::PubRec(
            rec.pkid,
            match rec.reason {
                p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers => Ok(()),
                p5::PubRecReason::NotAuthorized => Err(BrokerError::NotAuthorized),
                other => Err(BrokerError::Rejected(format!("{other:?}"))),
            },
        ),
        Event::Incoming(Incoming::PubComp(comp)) => LinkEvent::PubComp(
            comp.pkid,
            match comp.reason {
                p5::PubCompReason::Success => Ok(()),
                other => Err(BrokerError::Rejected(format!("{other:?}"))),
            },
        ),
        Event::Incoming(Incoming::SubAck(ack)) => {
            let result = match ack.return_codes.first() {
                Some(p5::SubscribeReasonCode::Success(_)) => Ok(()),
                Some(p5::SubscribeReasonCode::NotAuthorized) => Err(BrokerError::NotAuthorized),
                other => Err(BrokerError::Rejected(format!("{other:?}"))),
            };
            LinkEvent::SubAck(ack.pkid, result)
        }
        Event::Incoming(Incoming::Publish(p)) => match String::from_utf8(p.topic.to_vec()) {
            Ok(topic) => {
                let props = p.properties.unwrap_or_default();
                LinkEvent::Publish(IncomingPublish {
                    topic,
                    payload: p.payload,
                    qos: from_qos5(p.qos),
                    retain: p.retain,
                    expiry: props
                        .message_expiry_interval
                        .map(|s| Duration::from_secs(u64::from(s))),
                    content_type: props.content_type,
                    subscription_ids: props.subscription_identifiers,
                })
            }
            Err(_) => {
                warn!("dropping a message whose topic is not UTF-8");
                LinkEvent::Other
            }
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::OutPublish(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => LinkEvent::OutAwaitAck(pkid),
        Event::Outgoing(Outgoing::Subscribe(pkid)) => LinkEvent::OutSubscribe(pkid),
        Event::Outgoing(Outgoing::Unsubscribe(pkid)) => LinkEvent::OutUnsubscribe(pkid),
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::OutDisconnect,
        _ => LinkEvent::Other,
    }
}

/// Fails publishes whose ack is overdue (`ack_timeout` after they were
/// queued), checking every `ack_timeout / 8` (5 ms to 500 ms) while any
/// publish waits, parked otherwise. Ends when the link is closed or gone.
async fn sweep_acks(link: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let (tick, parked) = {
            let Some(shared) = link.upgrade() else { return };
            let tick = (shared.config.ack_timeout / 8)
                .clamp(Duration::from_millis(5), Duration::from_millis(500));
            let mut state = shared.lock();
            if state.closed {
                return;
            }
            let overdue = state.take_overdue(Instant::now());
            let parked = !state.has_publish_waiters();
            if parked {
                state.sweeper = Sweeper::Idle;
            }
            drop(state);
            if !overdue.is_empty() {
                let error = BrokerError::Unavailable(format!(
                    "no acknowledgement from the MQTT broker within {} ms",
                    shared.config.ack_timeout.as_millis()
                ));
                fail_all(overdue, &error);
            }
            (tick, parked)
        };
        if parked {
            // A publish (or close) sets Busy and notifies; a notification
            // sent before this await is kept as a permit.
            wake.notified().await;
        } else {
            tokio::time::sleep(tick).await;
        }
    }
}

/// False once the link was dropped or closed: the event loop must not
/// connect again (a stale connection with the same client id would make the
/// broker disconnect its replacement).
fn still_wanted(link: &std::sync::Weak<Shared>) -> bool {
    link.upgrade()
        .is_some_and(|shared| !shared.closed.load(Ordering::Acquire))
}

/// Acknowledgements that were read before a connection failed still count.
fn is_ack(event: &LinkEvent) -> bool {
    matches!(
        event,
        LinkEvent::PubAck(..)
            | LinkEvent::PubRec(..)
            | LinkEvent::PubComp(..)
            | LinkEvent::SubAck(..)
    )
}

async fn drive_v5(link: std::sync::Weak<Shared>, mut eventloop: rumqttc::v5::EventLoop) {
    use rumqttc::v5::ConnectionError;
    let mut attempt = 0u32;
    loop {
        if !still_wanted(&link) {
            return;
        }
        let polled = eventloop.poll().await;
        let Some(shared) = link.upgrade() else { return };
        match polled {
            Ok(event) => {
                // What rumqttc buffered behind this event is handled now,
                // under the same lock: the next poll would return exactly
                // these first.
                let buffered = eventloop.state.events.drain(..).map(convert_v5);
                let events = std::iter::once(convert_v5(event)).chain(buffered);
                if !shared.handle_batch(events, || attempt = 0) {
                    return;
                }
            }
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                let refused = matches!(
                    error,
                    ConnectionError::ConnectionRefused(
                        p5::ConnectReturnCode::BadUserNamePassword
                            | p5::ConnectReturnCode::NotAuthorized
                    )
                );
                let stale: Vec<LinkEvent> =
                    eventloop.state.events.drain(..).map(convert_v5).collect();
                let retry_in = shared.connection_failed(&error, refused, attempt, stale, || {
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.collision = None;
                    eventloop.state.events.clear();
                });
                let Some(delay) = retry_in else { return };
                drop(shared);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn convert_v4(event: rumqttc::Event) -> LinkEvent {
    use rumqttc::{Event, Incoming, Outgoing, SubscribeReasonCode};
    match event {
        Event::Incoming(Incoming::ConnAck(_)) => LinkEvent::ConnAck {
            subscription_ids: false,
        },
        Event::Incoming(Incoming::PubAck(ack)) => LinkEvent::PubAck(ack.pkid, Ok(())),
        Event::Incoming(Incoming::PubRec(rec)) => LinkEvent::PubRec(rec.pkid, Ok(())),
        Event::Incoming(Incoming::PubComp(comp)) => LinkEvent::PubComp(comp.pkid, Ok(())),
        Event::Incoming(Incoming::SubAck(ack)) => {
            let result = match ack.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) => Ok(()),
                // MQTT 3.1.1 has only "Failure" (0x80); brokers
                // answer it for ACL denials.
                _ => Err(BrokerError::NotAuthorized),
            };
            LinkEvent::SubAck(ack.pkid, result)
        }
        Event::Incoming(Incoming::Publish(p)) => LinkEvent::Publish(IncomingPublish {
            topic: p.topic,
            payload: p.payload,
            qos: from_qos4(p.qos),
            retain: p.retain,
            expiry: None,
            content_type: None,
            subscription_ids: Vec::new(),
        }),
        Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::OutPublish(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => LinkEvent::OutAwaitAck(pkid),
        Event::Outgoing(Outgoing::Subscribe(pkid)) => LinkEvent::OutSubscribe(pkid),
        Event::Outgoing(Outgoing::Unsubscribe(pkid)) => LinkEvent::OutUnsubscribe(pkid),
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::OutDisconnect,
        _ => LinkEvent::Other,
    }
}

async fn drive_v4(link: std::sync::Weak<Shared>, mut eventloop: rumqttc::EventLoop) {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    let mut attempt = 0u32;
    loop {
        if !still_wanted(&link) {
            return;
        }
        let polled = eventloop.poll().await;
        let Some(shared) = link.upgrade() else { return };
        match polled {
            Ok(event) => {
                // What rumqttc buffered behind this event is handled now,
                // under the same lock: the next poll would return exactly
                // these first.
                let buffered = eventloop.state.events.drain(..).map(convert_v4);
                let events = std::iter::once(convert_v4(event)).chain(buffered);
                if !shared.handle_batch(events, || attempt = 0) {
                    return;
                }
            }
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                let refused = matches!(
                    error,
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                    )
                );
                let stale: Vec<LinkEvent> =
                    eventloop.state.events.drain(..).map(convert_v4).collect();
                let retry_in = shared.connection_failed(&error, refused, attempt, stale, || {
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.collision = None;
                    eventloop.state.events.clear();
                });
                let Some(delay) = retry_in else { return };
                drop(shared);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(0, min, max), min);
        assert_eq!(backoff(1, min, max), Duration::from_millis(200));
        assert_eq!(backoff(4, min, max), Duration::from_millis(1600));
        assert_eq!(backoff(5, min, max), max);
        assert_eq!(backoff(100, min, max), max);
    }
}
