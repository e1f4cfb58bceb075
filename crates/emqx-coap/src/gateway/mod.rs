//! The CoAP side of EMQX mode: the `mqtt/connection` and `ps/{topic}`
//! resources, connection-mode sessions, observe relations as broker
//! subscriptions, and notifications from broker deliveries.
//!
//! ```text
//!  coap-endpoint Server ──IncomingRequestHandle──▶ Gateway::serve
//!        ▲   │                                        │ route: mqtt/connection | ps/{topic} | 4.04
//!        │   │ ServerEvent::ObserveCancelled ─────────┤ params, session/token or per-request auth,
//!        │   └──────────────▶ Gateway::handle_event   │ ACL, mountpoint, Broker publish/subscribe
//!        │                                            ▼
//!        └── EndpointHandle::notify ◀── Gateway::run_deliveries ◀── broker::Deliveries
//!                                     Gateway::run_expiry (heartbeat × 1.5, idle observers)
//! ```
//!
//! How to run it: build a [`Gateway`] from an `Arc<dyn Broker>` and
//! [`GatewaySettings`], spawn [`Gateway::run_deliveries`] with the broker's
//! [`Deliveries`] and [`Gateway::run_expiry`], then hand each
//! `coap_endpoint::Server` (plain UDP, DTLS) to [`Gateway::run_server`].
//! Tests and custom drivers call [`Gateway::handle_at`] with an explicit
//! time instead, then [`Gateway::finish_observe`] with the relation the
//! endpoint established.
//!
//! Invariants:
//! - Every failure becomes exactly one response in one place
//!   (`request::Failure::response`): 4.00/4.01/4.04/4.05/4.13/4.29/5.00/5.03
//!   with a short UTF-8 diagnostic and Content-Format 0.
//! - A connection-mode session is keyed by clientid; a valid request from a
//!   new address moves the session and its observe relations there
//!   (`EndpointHandle::rebind`).
//! - Every observer owns exactly one broker subscription (its
//!   [`SubscriberId`]); whichever way the relation ends (deregistration,
//!   RST, CON timeout, session end, idle lifetime) the subscription is
//!   removed at the broker.
//! - Maps keyed by something a peer controls are bounded
//!   ([`GatewaySettings::max_sessions`], [`GatewaySettings::max_observers`],
//!   the bad-token limiter).

mod management;
mod request;
mod resources;
mod session;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType};
use coap_endpoint::{
    EndpointHandle, IncomingRequestHandle, NotifyError, Peer, RelationId, Server, ServerError,
    ServerEvent, Transport, response,
};
use tokio::sync::Semaphore;

use crate::auth::{Action, AuthCache, AuthFile, Requester};
use crate::broker::presence::{PresenceEvent, publish_presence};
use crate::broker::{
    Broker, ClientInfo, Deliveries, Delivery, Message as BrokerMessage, Publish, Qos, SubscriberId,
};
use crate::mountpoint::Mountpoint;
use crate::redact::redact_uri;
use crate::topic::{TopicFilter, TopicName};
use request::{Failure, Params, topic_from_path};
use session::{BadTokenLimiter, LimitKey, Session, Sessions, new_token, tokens_equal};

/// Which listener (CoAP server) a request came through; relation ids are
/// only unique per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub(crate) usize);

/// How a QoS is chosen when the request has no `qos` parameter
/// (`--publish-qos`, `--subscribe-qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QosPolicy {
    /// CON → QoS 1, NON → QoS 0 (the default).
    #[default]
    Coap,
    /// Always this QoS.
    Fixed(Qos),
}

impl QosPolicy {
    /// The QoS for a request of the given message type.
    pub fn resolve(self, confirmable: bool) -> Qos {
        match self {
            Self::Coap if confirmable => Qos::AtLeastOnce,
            Self::Coap => Qos::AtMostOnce,
            Self::Fixed(qos) => qos,
        }
    }
}

impl FromStr for QosPolicy {
    type Err = String;

    /// `coap`, `qos0`, `qos1` or `qos2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coap" => Ok(Self::Coap),
            "qos0" => Ok(Self::Fixed(Qos::AtMostOnce)),
            "qos1" => Ok(Self::Fixed(Qos::AtLeastOnce)),
            "qos2" => Ok(Self::Fixed(Qos::ExactlyOnce)),
            other => Err(format!(
                "QoS policy {other:?}: expected coap, qos0, qos1 or qos2"
            )),
        }
    }
}

impl std::fmt::Display for QosPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Coap => f.write_str("coap"),
            Self::Fixed(qos) => write!(f, "qos{}", qos.as_u8()),
        }
    }
}

/// Message type of notifications (`--notify-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyType {
    /// QoS 0 → NON, QoS ≥ 1 → CON (the default).
    #[default]
    Qos,
    /// Always CON.
    Con,
    /// Always NON (the endpoint still sends a CON every
    /// `observe_con_every` notifications to check the observer is alive).
    Non,
}

impl FromStr for NotifyType {
    type Err = String;

    /// `qos`, `con` or `non`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qos" => Ok(Self::Qos),
            "con" => Ok(Self::Con),
            "non" => Ok(Self::Non),
            other => Err(format!("notify type {other:?}: expected qos, con or non")),
        }
    }
}

impl std::fmt::Display for NotifyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Qos => "qos",
            Self::Con => "con",
            Self::Non => "non",
        })
    }
}

/// Behaviour of the gateway. `Default` gives the spec's defaults; each
/// field states its own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewaySettings {
    /// Connection mode: `POST mqtt/connection` first, then clientid + token
    /// on every request. Default false (connectionless).
    pub connection_required: bool,
    /// Heartbeat interval; a session without a request for 1.5 × this
    /// expires. Default 30 s.
    pub heartbeat: Duration,
    /// Notification message type. Default [`NotifyType::Qos`].
    pub notify_type: NotifyType,
    /// Publish QoS without a `qos` parameter. Default [`QosPolicy::Coap`].
    pub publish_qos: QosPolicy,
    /// Subscription QoS without a `qos` parameter. Default [`QosPolicy::Coap`].
    pub subscribe_qos: QosPolicy,
    /// Topic prefix with `${clientid}` / `${username}`. Default empty.
    pub mountpoint: Mountpoint,
    /// Largest publish payload; larger gets 4.13. Default 4 MiB.
    pub max_payload_size: usize,
    /// Max-Age of 5.03 answers (broker unavailable, limits). Default 5 s.
    pub unavailable_max_age: u32,
    /// Most connection-mode sessions; more get 5.03. Default 100 000.
    pub max_sessions: usize,
    /// Most observe relations (broker subscriptions); more get 5.03.
    /// Default 100 000.
    pub max_observers: usize,
    /// Connectionless observers without a notification or request for
    /// this long are ended (final 4.04 notification). Default `None`: they
    /// live until RST, a CON timeout or deregistration.
    pub observe_idle_lifetime: Option<Duration>,
    /// Node name for `$SYS/brokers/<node>/gateway/coap/clients/...`
    /// presence events; `None` (the default) sends none.
    pub presence_node: Option<String>,
    /// Password-hash checks running at once (they are slow on purpose).
    /// Default 4.
    pub auth_concurrency: usize,
    /// Remember successful per-request authentications this long
    /// ([`AuthCache`]). Default `None` (verify every request).
    pub auth_cache_ttl: Option<Duration>,
    /// Bad tokens per clientid or per IP address within
    /// [`GatewaySettings::bad_token_window`] before further token checks
    /// are refused with 4.29. Default 10.
    pub bad_token_limit: u32,
    /// The bad-token window. Default 10 s.
    pub bad_token_window: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            connection_required: false,
            heartbeat: Duration::from_secs(30),
            notify_type: NotifyType::Qos,
            publish_qos: QosPolicy::Coap,
            subscribe_qos: QosPolicy::Coap,
            mountpoint: Mountpoint::default(),
            max_payload_size: 4 * 1024 * 1024,
            unavailable_max_age: 5,
            max_sessions: 100_000,
            max_observers: 100_000,
            observe_idle_lifetime: None,
            presence_node: None,
            auth_concurrency: 4,
            auth_cache_ttl: None,
            bad_token_limit: 10,
            bad_token_window: Duration::from_secs(10),
        }
    }
}

/// Hooks for metrics; every method has a no-op default.
pub trait GatewayObserver: Send + Sync {
    /// A response with `code` was produced for a request.
    fn response(&self, code: Code) {
        let _ = code;
    }
    /// A publish was accepted by the broker.
    fn published(&self, qos: Qos) {
        let _ = qos;
    }
    /// A notification was handed to the endpoint.
    fn notified(&self, confirmable: bool) {
        let _ = confirmable;
    }
    /// The broker answered a QoS ≥ 1 publish or a subscribe (accepted or
    /// refused) after `took`.
    fn broker_round_trip(&self, operation: BrokerOperation, took: Duration) {
        let _ = (operation, took);
    }
}

/// What [`GatewayObserver::broker_round_trip`] timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BrokerOperation {
    /// A QoS 1 or 2 publish, until PUBACK / PUBCOMP (or refusal).
    Publish,
    /// A subscribe, until SUBACK (or refusal).
    Subscribe,
}

/// A connection-mode client, for the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientSummary {
    /// The clientid.
    pub clientid: String,
    /// The username given at connect, if any.
    pub username: Option<String>,
    /// The device's latest address (`identity@addr` over DTLS).
    pub peer: String,
    /// Time since the latest valid request.
    pub idle: Duration,
    /// Time since the session was opened (`POST mqtt/connection`).
    pub connected_for: Duration,
    /// Observe relations (subscriptions) of the session.
    pub subscriptions: usize,
}

/// Which clients [`Gateway::search_clients`] returns: every given field
/// must be a substring of the client's; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientQuery {
    /// Substring of the clientid.
    pub clientid: Option<String>,
    /// Substring of the username (a client without one never matches).
    pub username: Option<String>,
    /// Substring of the peer address as shown (`127.0.0.1:5683`,
    /// `identity@addr` over DTLS).
    pub peer: Option<String>,
    /// Substring of any of clientid, username, peer.
    pub any: Option<String>,
}

/// Where a session ended by [`Gateway::kick_session`] was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KickedSession {
    /// The listener of the device's latest valid request.
    pub listener: ListenerId,
    /// The device's latest address (with the PSK identity over DTLS).
    pub peer: Peer,
}

/// One page of [`Gateway::search_clients`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientPage {
    /// The clients on this page, sorted by clientid.
    pub clients: Vec<ClientSummary>,
    /// How many clients matched in all.
    pub total: usize,
}

/// One subscription (observe relation) of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionSummary {
    /// The filter as subscribed at the broker (mountpoint applied).
    pub filter: String,
    /// Subscription QoS.
    pub qos: Qos,
}

/// Why [`Gateway::request_device`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceRequestError {
    /// No connection-mode session with this clientid.
    #[error("no such client")]
    UnknownClient,
    /// The device did not answer in time.
    #[error("the device did not answer in time")]
    Timeout,
    /// The device answered with RST or the exchange failed otherwise.
    #[error("request failed: {0}")]
    Failed(String),
}

struct NoObserver;

impl GatewayObserver for NoObserver {}

/// The answer to one request, from [`Gateway::handle_at`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response to send.
    pub response: Message,
    subscriber: Option<SubscriberId>,
}

impl Reply {
    /// For an accepted observe registration: the subscriber to pass to
    /// [`Gateway::finish_observe`] once the response is sent.
    pub fn subscriber(&self) -> Option<SubscriberId> {
        self.subscriber
    }

    fn code(code: Code) -> Self {
        Self {
            response: response(code),
            subscriber: None,
        }
    }
}

/// The answer to an observe cancellation (GET + Observe 1), as EMQX sends
/// it. Not a code registered by RFC 7252; clients treat it as a 2.xx
/// success.
pub const UNSUBSCRIBED: Code = Code::new(2, 7);

/// Notifications queued for an observer whose relation is not established
/// yet (wildcard retained messages arrive right after the subscribe).
const EARLY_DELIVERIES: usize = 32;

/// The EMQX-mode gateway; cheap to clone (shared state).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner {
    broker: Arc<dyn Broker>,
    auth: Option<Arc<AuthFile>>,
    auth_cache: Option<Arc<AuthCache>>,
    auth_slots: Arc<Semaphore>,
    settings: GatewaySettings,
    state: Mutex<State>,
    listeners: Mutex<Vec<EndpointHandle>>,
    next_subscriber: AtomicU64,
    observer: Arc<dyn GatewayObserver>,
}

struct State {
    sessions: Sessions,
    observers: HashMap<SubscriberId, Observer>,
    relations: HashMap<(ListenerId, RelationId), SubscriberId>,
    limiter: BadTokenLimiter,
}

/// One observe relation and the broker subscription behind it.
struct Observer {
    client: ClientInfo,
    /// Mounted filter, as subscribed at the broker.
    filter: TopicFilter,
    qos: Qos,
    listener: ListenerId,
    peer: Peer,
    /// The CoAP token of the registration.
    token: Bytes,
    /// The connection-mode session (clientid) it belongs to.
    session: Option<String>,
    relation: Option<RelationId>,
    early: VecDeque<BrokerMessage>,
    last_activity: Instant,
}

/// Who a request acts for, after authentication.
struct Who {
    client: ClientInfo,
    session: Option<String>,
}

/// How an observe relation ends from the gateway's side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The endpoint already ended it (event, deregistration, unknown relation).
    Gone,
    /// End it silently.
    Silent,
    /// Send a final error notification with this code and text.
    Final(Code, &'static str),
}

impl Gateway {
    /// A gateway on `broker`; `auth` enables username/password checks and
    /// ACLs.
    pub fn new(
        broker: Arc<dyn Broker>,
        auth: Option<Arc<AuthFile>>,
        settings: GatewaySettings,
    ) -> Self {
        let auth_cache = match (&auth, settings.auth_cache_ttl) {
            (Some(_), Some(ttl)) => Some(Arc::new(AuthCache::new(10_000, ttl))),
            _ => None,
        };
        let limiter =
            BadTokenLimiter::new(settings.bad_token_limit, settings.bad_token_window, 100_000);
        Self {
            inner: Arc::new(Inner {
                broker,
                auth,
                auth_cache,
                auth_slots: Arc::new(Semaphore::new(settings.auth_concurrency.max(1))),
                state: Mutex::new(State {
                    sessions: Sessions::default(),
                    observers: HashMap::new(),
                    relations: HashMap::new(),
                    limiter,
                }),
                settings,
                listeners: Mutex::new(Vec::new()),
                next_subscriber: AtomicU64::new(1),
                observer: Arc::new(NoObserver),
            }),
        }
    }

    /// Sets the metrics hooks (call before sharing the gateway).
    pub fn with_observer(mut self, observer: Arc<dyn GatewayObserver>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.observer = observer;
        }
        self
    }

    /// The settings.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// Current connection-mode sessions.
    pub fn session_count(&self) -> usize {
        self.state().sessions.len()
    }

    /// Current observers (established or being established).
    pub fn observer_count(&self) -> usize {
        self.state().observers.len()
    }

    /// Registers a listener's endpoint handle (for notifications, rebinds).
    pub fn attach(&self, handle: EndpointHandle) -> ListenerId {
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners.push(handle);
        ListenerId(listeners.len() - 1)
    }

    /// Serves `server` until `shutdown` completes: attaches it, follows its
    /// observe events and answers every request.
    pub async fn run_server<T: Transport>(
        &self,
        server: Server<T>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let listener = self.attach(server.handle());
        self.run_attached(listener, server, shutdown).await
    }

    /// Like [`Gateway::run_server`] for a server whose handle was already
    /// registered with [`Gateway::attach`] as `listener` (so that the
    /// caller knows which listener it is, e.g. to close a kicked client's
    /// DTLS session).
    pub async fn run_attached<T: Transport>(
        &self,
        listener: ListenerId,
        mut server: Server<T>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut events = server.events();
        let me = self.clone();
        let event_task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                me.handle_event(listener, event).await;
            }
        });
        let me = self.clone();
        let result = server
            .run(
                move |request: IncomingRequestHandle| {
                    let me = me.clone();
                    async move { me.serve(listener, request).await }
                },
                shutdown,
            )
            .await;
        event_task.abort();
        result
    }

    /// Answers one request from `listener` (what [`Gateway::run_server`]
    /// calls per request).
    pub async fn serve(&self, listener: ListenerId, request: IncomingRequestHandle) {
        let IncomingRequestHandle {
            peer,
            message,
            observe_registration,
            responder,
        } = request;
        let reply = self
            .handle_at(
                listener,
                &peer,
                &message,
                observe_registration,
                Instant::now(),
            )
            .await;
        let subscriber = reply.subscriber;
        let result = responder.respond(reply.response).await;
        if let Some(subscriber) = subscriber {
            let relation = result.ok().flatten();
            self.finish_observe(listener, subscriber, relation).await;
        }
    }

    /// The answer to `message` from `peer` at time `now`. For an accepted
    /// observe registration ([`Reply::subscriber`]), call
    /// [`Gateway::finish_observe`] after sending the response.
    pub async fn handle_at(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        observe_registration: bool,
        now: Instant,
    ) -> Reply {
        let reply = match self
            .route(listener, peer, message, observe_registration, now)
            .await
        {
            Ok(reply) => reply,
            Err(failure) => Reply {
                response: failure.response(),
                subscriber: None,
            },
        };
        self.inner.observer.response(reply.response.code);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let uri = describe_uri(message);
            tracing::debug!(
                peer = %peer,
                method = %message.code.name().unwrap_or("?"),
                uri = %redact_uri(&uri),
                code = %reply.response.code,
                "request"
            );
        }
        reply
    }

    /// Completes an observe registration: `Some(relation)` if the endpoint
    /// established the relation, `None` if it did not (the subscription is
    /// removed).
    pub async fn finish_observe(
        &self,
        listener: ListenerId,
        subscriber: SubscriberId,
        relation: Option<RelationId>,
    ) {
        let Some(relation) = relation else {
            self.release(subscriber, Ending::Gone).await;
            return;
        };
        let (replaced, early) = {
            let mut state = self.state();
            let replaced = state
                .relations
                .insert((listener, relation), subscriber)
                .filter(|old| *old != subscriber);
            let replaced = replaced.and_then(|old| state.observers.remove(&old).map(|o| (old, o)));
            match state.observers.get_mut(&subscriber) {
                Some(observer) => {
                    observer.relation = Some(relation);
                    (replaced, std::mem::take(&mut observer.early))
                }
                None => {
                    // Cancelled while the response was on its way.
                    state.relations.remove(&(listener, relation));
                    (replaced, VecDeque::new())
                }
            }
        };
        if let Some((old, observer)) = replaced {
            // Re-registration with the same token: the endpoint kept the
            // relation, the old subscription goes.
            self.unsubscribe(old, &observer).await;
        }
        for message in early {
            self.notify(listener, relation, subscriber, &message).await;
        }
    }

    /// Follows an endpoint event (relation ended by RST, CON timeout,
    /// deregistration): the broker subscription is removed.
    pub async fn handle_event(&self, listener: ListenerId, event: ServerEvent) {
        if let ServerEvent::ObserveCancelled {
            relation,
            peer,
            reason,
        } = event
        {
            let subscriber = self.state().relations.remove(&(listener, relation));
            if let Some(subscriber) = subscriber {
                tracing::debug!(peer = %peer, ?reason, "observe relation ended");
                self.release(subscriber, Ending::Gone).await;
            }
        }
    }

    /// Turns broker deliveries into notifications until the broker is
    /// dropped.
    pub async fn run_deliveries(&self, mut deliveries: Deliveries) {
        while let Some(delivery) = deliveries.recv().await {
            self.deliver(delivery).await;
        }
    }

    /// Runs [`Gateway::expire_at`] periodically (a quarter of the
    /// heartbeat, between 50 ms and 5 s) forever.
    pub async fn run_expiry(&self) {
        let period = (self.inner.settings.heartbeat / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            self.expire_at(Instant::now()).await;
        }
    }

    /// Ends sessions without a request for 1.5 × heartbeat (with their
    /// observers and subscriptions) and idle connectionless observers, at
    /// time `now`. Returns how many sessions ended.
    pub async fn expire_at(&self, now: Instant) -> usize {
        let lifetime = self.inner.settings.heartbeat.saturating_mul(3) / 2;
        let (sessions, idle) = {
            let mut state = self.state();
            state.limiter.prune(now);
            let sessions = state.sessions.expire(now, lifetime);
            let idle: Vec<SubscriberId> = match self.inner.settings.observe_idle_lifetime {
                Some(limit) => state
                    .observers
                    .iter()
                    .filter(|(_, o)| {
                        o.session.is_none()
                            && o.relation.is_some()
                            && now.saturating_duration_since(o.last_activity) > limit
                    })
                    .map(|(id, _)| *id)
                    .collect(),
                None => Vec::new(),
            };
            (sessions, idle)
        };
        let ended = sessions.len();
        // One pass over the observers for all expired sessions (many may
        // expire at once).
        let mut observers: HashMap<String, Vec<SubscriberId>> = sessions
            .iter()
            .map(|s| (s.client.clientid.clone().unwrap_or_default(), Vec::new()))
            .collect();
        if !observers.is_empty() {
            let state = self.state();
            for (id, o) in &state.observers {
                if let Some(list) = o.session.as_ref().and_then(|c| observers.get_mut(c)) {
                    list.push(*id);
                }
            }
        }
        for session in sessions {
            let clientid = session.client.clientid.clone().unwrap_or_default();
            let subscribers = observers.remove(&clientid).unwrap_or_default();
            self.end_session_with(
                session,
                subscribers,
                "heartbeat expired",
                Ending::Final(Code::UNAUTHORIZED, "session expired"),
            )
            .await;
        }
        for subscriber in idle {
            self.release(
                subscriber,
                Ending::Final(Code::NOT_FOUND, "observe idle lifetime over"),
            )
            .await;
        }
        ended
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation is a few map operations; a panic elsewhere leaves
        // consistent data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn listener(&self, listener: ListenerId) -> Option<EndpointHandle> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(listener.0)
            .cloned()
    }

    // ---- observers and notifications -------------------------------------

    async fn deliver(&self, delivery: Delivery) {
        let target = {
            let mut state = self.state();
            let Some(observer) = state.observers.get_mut(&delivery.subscriber) else {
                return;
            };
            observer.last_activity = Instant::now();
            match observer.relation {
                Some(relation) => (observer.listener, relation),
                None => {
                    if observer.early.len() >= EARLY_DELIVERIES {
                        observer.early.pop_front();
                    }
                    observer.early.push_back(delivery.message);
                    return;
                }
            }
        };
        self.notify(target.0, target.1, delivery.subscriber, &delivery.message)
            .await;
    }

    async fn notify(
        &self,
        listener: ListenerId,
        relation: RelationId,
        subscriber: SubscriberId,
        message: &BrokerMessage,
    ) {
        let Some(handle) = self.listener(listener) else {
            return;
        };
        let confirmable = match self.inner.settings.notify_type {
            NotifyType::Con => true,
            NotifyType::Non => false,
            NotifyType::Qos => message.qos != Qos::AtMostOnce,
        };
        let notification = with_content(response(Code::CONTENT), message);
        match handle.notify(relation, notification, confirmable).await {
            Ok(()) => self.inner.observer.notified(confirmable),
            Err(ServerError::Notify(NotifyError::UnknownRelation)) => {
                self.release(subscriber, Ending::Gone).await;
            }
            Err(error) => tracing::debug!(%error, "notification not sent"),
        }
    }

    /// The observers of a connection-mode session.
    fn session_observers(&self, clientid: &str) -> Vec<(SubscriberId, ListenerId)> {
        self.state()
            .observers
            .iter()
            .filter(|(_, o)| o.session.as_deref() == Some(clientid))
            .map(|(id, o)| (*id, o.listener))
            .collect()
    }

    /// Ends an observer: forgets it, removes its broker subscription and
    /// ends the relation at the endpoint as `ending` says.
    async fn release(&self, subscriber: SubscriberId, ending: Ending) {
        let observer = {
            let mut state = self.state();
            let Some(observer) = state.observers.remove(&subscriber) else {
                return;
            };
            if let Some(relation) = observer.relation {
                let key = (observer.listener, relation);
                if state.relations.get(&key) == Some(&subscriber) {
                    state.relations.remove(&key);
                }
            }
            observer
        };
        self.unsubscribe(subscriber, &observer).await;
        if let (Some(relation), Some(handle)) =
            (observer.relation, self.listener(observer.listener))
        {
            match ending {
                Ending::Gone => {}
                Ending::Silent => {
                    let _ = handle.cancel_observe(relation);
                }
                Ending::Final(code, text) => {
                    let last = response(code)
                        .with_content_format(ContentFormat::TEXT_PLAIN)
                        .with_payload(text.as_bytes());
                    let _ = handle.notify(relation, last, true).await;
                }
            }
        }
    }

    async fn unsubscribe(&self, subscriber: SubscriberId, observer: &Observer) {
        let _ = self
            .inner
            .broker
            .unsubscribe(&observer.client, subscriber, &observer.filter)
            .await;
    }

    /// Ends a session that is already out of the table.
    async fn end_session(&self, session: Session, why: &'static str, ending: Ending) {
        let clientid = session.client.clientid.clone().unwrap_or_default();
        let subscribers = self
            .session_observers(&clientid)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.end_session_with(session, subscribers, why, ending)
            .await;
    }

    /// Ends a session that is out of the table, with its observers.
    async fn end_session_with(
        &self,
        session: Session,
        subscribers: Vec<SubscriberId>,
        why: &'static str,
        ending: Ending,
    ) {
        let clientid = session.client.clientid.clone().unwrap_or_default();
        for subscriber in subscribers {
            self.release(subscriber, ending).await;
        }
        self.inner.broker.disconnect_client(&session.client).await;
        if let Some(node) = &self.inner.settings.presence_node {
            let _ = publish_presence(
                &*self.inner.broker,
                node,
                &session.client,
                PresenceEvent::Disconnected,
            )
            .await;
        }
        tracing::info!(clientid = %clientid, peer = %session.peer, reason = why, "session ended");
    }
}

/// `message` with the payload and, if known, the Content-Format of a broker
/// message.
fn with_content(message: Message, from: &BrokerMessage) -> Message {
    let mut message = message.with_payload(from.payload.clone());
    if let Some(format) = from.content_type.as_deref().and_then(content_format_for) {
        message = message.with_content_format(format);
    }
    message
}

/// The CoAP Content-Format of an MQTT content type, if registered:
/// the exact media type, else the type without parameters (`text/plain`
/// is Content-Format 0, `text/plain;charset=utf-8`).
pub fn content_format_for(media_type: &str) -> Option<ContentFormat> {
    if let Some(format) = ContentFormat::from_media_type(media_type) {
        return Some(format);
    }
    let bare = media_type.split(';').next().unwrap_or_default().trim();
    if bare.eq_ignore_ascii_case("text/plain") {
        return Some(ContentFormat::TEXT_PLAIN);
    }
    ContentFormat::from_media_type(bare)
}

/// The DTLS PSK identity as a clientid, if it is UTF-8.
fn identity_clientid(peer: &Peer) -> Option<String> {
    peer.identity
        .as_ref()
        .and_then(|id| std::str::from_utf8(id).ok())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// `path?query` of a request, for (redacted) logging.
fn describe_uri(message: &Message) -> String {
    let mut uri = String::new();
    for (i, segment) in message.uri_path().enumerate() {
        if i > 0 {
            uri.push('/');
        }
        uri.push_str(&String::from_utf8_lossy(segment));
    }
    for (i, entry) in message.uri_query().enumerate() {
        uri.push(if i == 0 { '?' } else { '&' });
        uri.push_str(&String::from_utf8_lossy(entry));
    }
    uri
}

#[cfg(test)]
mod tests;
