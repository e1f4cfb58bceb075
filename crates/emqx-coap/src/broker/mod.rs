//! The broker the gateway publishes to and subscribes at.
//!
//! [`Broker`] is an object-safe trait (methods return
//! [`BoxFuture`]s), so the CoAP layer holds an `Arc<dyn Broker>` and does not
//! care which implementation it talks to:
//!
//! - [`embedded::EmbeddedBroker`]: in-process topic trie, retained messages
//!   with expiry, QoS inside the process;
//! - [`mqtt::MqttBroker`]: an external MQTT broker through rumqttc (session
//!   model `shared` or `per-client`).
//!
//! Messages for local subscribers come out of one [`Deliveries`] receiver per
//! broker, returned by the constructor. Each subscriber has a bounded queue;
//! when it is full the oldest message is dropped and counted
//! ([`Deliveries::dropped`]), so a slow CoAP peer never makes the broker side
//! block or grow without bound.
//!
//! Who chooses subscriber ids: the caller (e.g. one id per observe
//! relation). One subscriber id may be subscribed to several filters.

mod delivery;
pub mod embedded;
pub mod mqtt;
pub mod presence;
mod retained;
mod subscriptions;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

pub(crate) use delivery::DeliveryHub;
pub use delivery::{Deliveries, Delivery};

use crate::topic::{TopicFilter, TopicName};

/// A boxed, sendable future, as returned by [`Broker`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// At most once (fire and forget).
    AtMostOnce = 0,
    /// At least once (PUBACK).
    AtLeastOnce = 1,
    /// Exactly once (PUBREC/PUBREL/PUBCOMP).
    ExactlyOnce = 2,
}

impl Qos {
    /// From the numeric value 0, 1 or 2.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The numeric value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Identifies one local subscriber (chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId(pub u64);

/// Who is acting: the CoAP client's identity as the broker sees it.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientInfo {
    /// MQTT client id, if the device gave one.
    pub clientid: Option<String>,
    /// Username, if any.
    pub username: Option<String>,
    /// Password, if any (used by the `per-client` MQTT session model).
    pub password: Option<String>,
}

impl ClientInfo {
    /// A client with only a client id.
    pub fn with_clientid(clientid: impl Into<String>) -> Self {
        Self {
            clientid: Some(clientid.into()),
            ..Self::default()
        }
    }
}

impl fmt::Debug for ClientInfo {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInfo")
            .field("clientid", &self.clientid)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic (mountpoint already applied).
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// Requested QoS.
    pub qos: Qos,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval.
    pub expiry: Option<Duration>,
    /// MQTT 5 content type, if known.
    pub content_type: Option<String>,
}

impl Publish {
    /// A QoS 0, non-retained message without expiry.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: Qos::AtMostOnce,
            retain: false,
            expiry: None,
            content_type: None,
        }
    }

    /// Sets the QoS.
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the retain flag.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the message expiry interval.
    pub fn expiry(mut self, expiry: Option<Duration>) -> Self {
        self.expiry = expiry;
        self
    }
}

/// A message delivered to a local subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (still mounted).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Delivered QoS: min(publish QoS, subscription QoS).
    pub qos: Qos,
    /// True for a retained message sent because of a (new) subscription.
    pub retain: bool,
    /// Remaining message expiry interval, if the message has one.
    pub expiry: Option<Duration>,
    /// MQTT 5 content type, if known.
    pub content_type: Option<String>,
}

/// What a successful subscribe returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribed {
    /// Granted QoS.
    pub qos: Option<Qos>,
    /// For a filter without wildcards: the topic's retained message, if
    /// any (delivered QoS applied), for the 2.05 that answers the observe.
    /// For a wildcard filter this is empty: the matching retained messages
    /// are queued to [`Deliveries`] for this subscriber (with `retain`
    /// set), to be sent as notifications.
    pub retained: Vec<Message>,
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker is not reachable (or did not acknowledge in time); the
    /// message may not have been accepted. CoAP: 5.03.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The connection to the broker is known to be down (lost, and not
    /// re-established yet): the operation was refused at once, without
    /// waiting. CoAP: 5.03 with Max-Age = `retry_after` (at least 1 s).
    #[error("broker unavailable: {reason}; next reconnect attempt in {} ms", retry_after.as_millis())]
    Down {
        /// Why the connection is down (the last connection error).
        reason: String,
        /// Time until the next reconnect attempt (zero while one is in
        /// progress).
        retry_after: Duration,
    },
    /// The broker refused the client's credentials or the action. CoAP: 4.01.
    #[error("not authorized by the broker")]
    NotAuthorized,
    /// The broker refused the request for another reason (reason code).
    #[error("refused by the broker: {0}")]
    Rejected(String),
    /// The request needs a client id (per-client session model).
    #[error("a clientid is required")]
    MissingClientId,
    /// The message is larger than the broker connection accepts. CoAP: 4.13.
    #[error("message too large: {size} bytes, at most {max}")]
    TooLarge {
        /// Estimated packet size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A bounded resource is full (too many clients, retained messages, ...).
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The broker was configured wrongly (e.g. an unsupported URL scheme).
    #[error("broker configuration: {0}")]
    Config(String),
}

impl BrokerError {
    /// True for [`BrokerError::Unavailable`] and [`BrokerError::Down`]: the
    /// broker could not take the request (CoAP 5.03).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Down { .. })
    }
}

/// The broker side of the gateway. All methods are cancellation-safe in the
/// sense that dropping a returned future never leaves state behind that
/// blocks later calls.
pub trait Broker: Send + Sync {
    /// Publishes a message.
    ///
    /// QoS 0 resolves once handed over (fire and forget). QoS ≥ 1 resolves
    /// `Ok` only after the broker acknowledged it (PUBACK / PUBCOMP, or the
    /// embedded broker routed it); an unreachable broker gives
    /// [`BrokerError::Unavailable`] within the configured bound.
    fn publish<'a>(
        &'a self,
        client: &'a ClientInfo,
        message: Publish,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Subscribes `subscriber` (belonging to `client`) to `filter`.
    fn subscribe<'a>(
        &'a self,
        client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
        qos: Qos,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>>;

    /// Removes `subscriber` from `filter`. Unknown pairs are ignored.
    fn unsubscribe<'a>(
        &'a self,
        client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The retained message of `topic`, if the broker knows one.
    fn retained<'a>(
        &'a self,
        client: &'a ClientInfo,
        topic: &'a TopicName,
    ) -> BoxFuture<'a, Result<Option<Message>, BrokerError>>;

    /// Establishes whatever the client needs at the broker (per-client
    /// model: its own MQTT connection, authenticated by the broker). A no-op
    /// for the embedded broker and the shared model.
    fn connect_client<'a>(
        &'a self,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Drops everything of a client: its subscribers' subscriptions and
    /// queued deliveries, its own connection (per-client model).
    fn disconnect_client<'a>(&'a self, client: &'a ClientInfo) -> BoxFuture<'a, ()>;

    /// True when the broker can accept QoS ≥ 1 publishes right now.
    fn is_ready(&self) -> bool;
}

/// Which broker to run, as chosen by `--broker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKind {
    /// The in-process broker.
    Embedded(embedded::EmbeddedConfig),
    /// An external MQTT broker.
    Mqtt(Box<mqtt::MqttConfig>),
}

impl BrokerKind {
    /// Parses the `--broker` value: `embedded`, `mqtt://HOST[:PORT]` or
    /// `mqtts://HOST[:PORT]`, with default settings.
    pub fn from_flag(value: &str) -> Result<Self, BrokerError> {
        if value == "embedded" {
            return Ok(Self::Embedded(embedded::EmbeddedConfig::default()));
        }
        mqtt::MqttConfig::from_url(value).map(|c| Self::Mqtt(Box::new(c)))
    }

    /// Starts the broker (`Mqtt` needs a tokio runtime).
    pub fn start(self) -> Result<(std::sync::Arc<dyn Broker>, Deliveries), BrokerError> {
        match self {
            Self::Embedded(config) => {
                let (broker, deliveries) = embedded::EmbeddedBroker::new(config);
                Ok((std::sync::Arc::new(broker), deliveries))
            }
            Self::Mqtt(config) => {
                let (broker, deliveries) = mqtt::MqttBroker::start(*config)?;
                Ok((std::sync::Arc::new(broker), deliveries))
            }
        }
    }
}

/// The smaller of two QoS levels (delivered QoS).
pub(crate) fn min_qos(a: Qos, b: Qos) -> Qos {
    a.min(b)
}
