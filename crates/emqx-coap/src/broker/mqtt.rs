//! The gateway on an external MQTT broker (mosquitto, EMQX, ...) through
//! rumqttc, MQTT 5 by default or 3.1.1.
//!
//! Session models ([`SessionModel`]):
//! - `Shared` (default): a small pool of MQTT connections owned by the
//!   gateway. A publish goes over the connection chosen by a hash of its
//!   topic (so messages of one topic keep their order); a filter lives on
//!   the connection chosen by a hash of the filter. Each connection keeps a
//!   reference count per filter: SUBSCRIBE at the broker for the first local
//!   subscriber, UNSUBSCRIBE after the last. Broker messages are fanned out
//!   to local subscribers through the connection's own topic trie; with
//!   MQTT 5 each broker subscription carries a Subscription Identifier, so a
//!   message is given only to the subscribers of the filters it was sent
//!   for (no duplicates for overlapping filters). After a reconnect every
//!   filter is subscribed again.
//! - `PerClient`: one MQTT connection per CoAP client id, with the client's
//!   username and password, so the broker's own authentication, ACLs and
//!   presence apply. A refused CONNECT gives [`BrokerError::NotAuthorized`].
//!
//! Guarantees: a QoS ≥ 1 publish resolves `Ok` only after PUBACK (QoS 1) or
//! PUBCOMP (QoS 2). While a connection is still making its first attempt
//! an operation waits at most [`MqttConfig::unavailable_wait`] for it, then
//! fails with [`BrokerError::Unavailable`]; once a connection attempt has
//! failed (broker down, reconnecting) operations fail at once with
//! [`BrokerError::Down`], which tells when the next reconnect attempt
//! starts, so a device is answered within milliseconds instead of being
//! held; a connection lost while waiting for an ack
//! fails the publish at once; an ack that does not come within
//! [`MqttConfig::ack_timeout`] fails it too. A failure may be a false
//! negative (the broker got the message but the ack was lost), never a false
//! positive.
//!
//! Retained messages: MQTT has no "read retained" request, but a broker
//! sends the matching retained messages after every SUBSCRIBE (with the
//! retain flag set; live messages never carry it, as retain-as-published is
//! not requested). So every local subscribe sends a SUBSCRIBE (the first
//! one creates the broker-level subscription, later ones renew it) and
//! registers a probe that routes the retained copies to the new subscriber
//! only: for an exact topic the message is returned in
//! [`Subscribed::retained`] (the subscribe waits up to
//! [`MqttConfig::retained_probe_wait`] after the SUBACK when the topic has
//! none); for a wildcard filter the copies are queued to the subscriber's
//! [`Deliveries`] as they arrive. [`Broker::retained`] subscribes, takes the
//! copy and unsubscribes again. Retained copies sent after a reconnect's
//! re-SUBSCRIBE go to all local subscribers of the filter.
//!
//! TLS: `mqtts://host[:port]` (default port 8883) through native-tls
//! (OpenSSL), verifying the broker's certificate and host name against the
//! system roots or the CA in [`MqttTls::ca_pem`]. Client certificates are
//! not supported yet.

mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use link::Link;

use super::{
    BoxFuture, Broker, BrokerError, ClientInfo, Deliveries, DeliveryHub, Message, Publish, Qos,
    Subscribed, SubscriberId,
};
use crate::topic::{TopicFilter, TopicName};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttProtocol {
    /// MQTT 5 (default): expiry, content type, subscription identifiers.
    #[default]
    V5,
    /// MQTT 3.1.1: no message properties.
    V311,
}

impl std::str::FromStr for MqttProtocol {
    type Err = BrokerError;

    /// `5` / `v5` / `mqttv5` or `3.1.1` / `v311` / `mqttv311`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "5" | "v5" | "mqttv5" => Ok(Self::V5),
            "3.1.1" | "311" | "v311" | "mqttv311" => Ok(Self::V311),
            other => Err(BrokerError::Config(format!(
                "MQTT version {other:?}: expected 5 or 3.1.1"
            ))),
        }
    }
}

/// How CoAP clients map to MQTT connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionModel {
    /// A pool of `connections` gateway-owned connections.
    Shared {
        /// Pool size (at least 1).
        connections: usize,
    },
    /// One connection per client id, at most `max_clients` at once.
    PerClient {
        /// Most simultaneous client connections.
        max_clients: usize,
    },
}

impl std::str::FromStr for SessionModel {
    type Err = BrokerError;

    /// `shared` (2 connections, the default) or `per-client` (at most
    /// 10 000 client connections), as given to `--mqtt-session`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shared" => Ok(Self::Shared { connections: 2 }),
            "per-client" => Ok(Self::PerClient {
                max_clients: 10_000,
            }),
            other => Err(BrokerError::Config(format!(
                "MQTT session model {other:?}: expected shared or per-client"
            ))),
        }
    }
}

/// TLS settings of the connection to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM of the CA that signed the broker's certificate; `None` uses the
    /// system's trusted roots. Default is `None`.
    pub ca_pem: Option<Vec<u8>>,
}

/// Configuration of [`MqttBroker`]. Build it with [`MqttConfig::from_url`]
/// and change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port. Default is 1883 (8883 for `mqtts://`).
    pub port: u16,
    /// TLS, set by `mqtts://`. Default is none (plain TCP).
    pub tls: Option<MqttTls>,
    /// Protocol version. Default is MQTT 5.
    pub protocol: MqttProtocol,
    /// Session model. Default is `Shared { connections: 2 }`.
    pub session: SessionModel,
    /// Prefix of the client ids of shared connections. Default is
    /// `coap-gw-`.
    pub client_id_prefix: String,
    /// Username of shared connections. Default is none.
    pub username: Option<String>,
    /// Password of shared connections. Default is none.
    pub password: Option<String>,
    /// MQTT keep-alive. Default is 30 s.
    pub keep_alive: Duration,
    /// TCP + CONNECT timeout (whole seconds, at least 1). Default is 5 s.
    pub connect_timeout: Duration,
    /// How long an operation waits for a connection that is making its
    /// first attempt (a new per-client connection, or the gateway's
    /// connections at start) before failing with `Unavailable`. A
    /// connection known to be down fails operations at once
    /// ([`BrokerError::Down`]). Default is 2 s.
    pub unavailable_wait: Duration,
    /// How long a QoS ≥ 1 publish or a subscribe waits for its ack on a
    /// live connection. Default is 10 s.
    pub ack_timeout: Duration,
    /// How long a subscribe to an exact topic and [`Broker::retained`] wait
    /// for the retained message after the SUBACK (brokers send it right
    /// after the SUBACK; one arriving later still reaches the subscriber, as
    /// a delivery). Default is 100 ms.
    pub retained_probe_wait: Duration,
    /// First reconnect delay, doubled per failed attempt. Default is 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default is 5 s.
    pub reconnect_max: Duration,
    /// Capacity of rumqttc's request channel per connection; a full channel
    /// fails requests with `Unavailable`. Default is 1024.
    pub request_capacity: usize,
    /// Messages queued per local subscriber. Default is 100.
    pub queue_capacity: usize,
    /// Largest MQTT packet sent or accepted, in bytes: bigger publishes
    /// fail with [`BrokerError::TooLarge`] before anything is sent (an
    /// oversized packet would make rumqttc drop the connection). Default is
    /// 4 MiB + 64 KiB, matching the gateway's default CoAP body limit.
    pub max_packet_size: usize,
    /// Most (filter, subscriber) pairs per MQTT connection; more fail with
    /// [`BrokerError::Limit`]. Default is 1 000 000.
    pub max_subscriptions: usize,
}

impl MqttConfig {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` and fills in
    /// the defaults.
    pub fn from_url(url: &str) -> Result<Self, BrokerError> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (rest, None, 1883)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, Some(MqttTls::default()), 8883)
        } else {
            return Err(BrokerError::Config(format!(
                "broker URL {url:?} must start with mqtt:// or mqtts://"
            )));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| BrokerError::Config(format!("broker URL {url:?}: bad host or port")))?;
        Ok(Self {
            host,
            port,
            tls,
            protocol: MqttProtocol::V5,
            session: SessionModel::Shared { connections: 2 },
            client_id_prefix: "coap-gw-".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            unavailable_wait: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(10),
            retained_probe_wait: Duration::from_millis(100),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            request_capacity: 1024,
            queue_capacity: 100,
            max_subscriptions: 1_000_000,
            max_packet_size: 4 * 1024 * 1024 + 64 * 1024,
        })
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

/// The gateway's view of an external MQTT broker.
pub struct MqttBroker {
    config: Arc<MqttConfig>,
    hub: Arc<DeliveryHub>,
    model: Model,
}

enum Model {
    Shared(Vec<Link>),
    PerClient(Mutex<HashMap<String, Arc<Link>>>),
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBroker")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("session", &self.config.session)
            .finish_non_exhaustive()
    }
}

impl MqttBroker {
    /// Starts the broker side (must run inside a tokio runtime). Shared
    /// connections start connecting in the background; see
    /// [`MqttBroker::wait_ready`].
    ///
    /// Fails with [`BrokerError::Config`] outside a tokio runtime.
    pub fn start(config: MqttConfig) -> Result<(Self, Deliveries), BrokerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BrokerError::Config(
                "the MQTT broker must be started inside a tokio runtime".into(),
            ));
        }
        let config = Arc::new(config);
        let hub = DeliveryHub::new(config.queue_capacity);
        let model = match config.session {
            SessionModel::Shared { connections } => {
                let base = unique_suffix();
                let links = (0..connections.max(1))
                    .map(|i| {
                        let id = format!("{}{base}-{i}", config.client_id_prefix);
                        Link::start(config.clone(), hub.clone(), id, None)
                    })
                    .collect();
                Model::Shared(links)
            }
            SessionModel::PerClient { .. } => Model::PerClient(Mutex::new(HashMap::new())),
        };
        let broker = Self {
            config,
            hub: hub.clone(),
            model,
        };
        Ok((broker, Deliveries::new(hub)))
    }

    /// Waits until every shared connection is up (at most `wait`).
    pub async fn wait_ready(&self, wait: Duration) -> Result<(), BrokerError> {
        match &self.model {
            Model::Shared(links) => {
                for link in links {
                    link.wait_connected(wait).await?;
                }
                Ok(())
            }
            Model::PerClient(_) => Ok(()),
        }
    }

    /// Number of filters currently subscribed at the external broker (one
    /// per filter with local subscribers, whatever their number).
    pub fn broker_filters(&self) -> usize {
        match &self.model {
            Model::Shared(links) => links.iter().map(Link::broker_filters).sum(),
            Model::PerClient(map) => Self::clients(map)
                .values()
                .map(|l| l.broker_filters())
                .sum(),
        }
    }

    /// PUBLISH packets received from the external broker so far (all
    /// connections), whether or not a local subscriber wanted them.
    pub fn messages_received(&self) -> u64 {
        match &self.model {
            Model::Shared(links) => links.iter().map(Link::received).sum(),
            Model::PerClient(map) => Self::clients(map).values().map(|l| l.received()).sum(),
        }
    }

    /// The shared connection of `key` (a topic or filter): the same key
    /// always goes over the same connection, so one topic's messages keep
    /// their order. FNV-1a: runs once per publish, needs no DoS resistance
    /// (a skewed spread only loads one connection more).
    fn shared_link<'l>(links: &'l [Link], key: &str) -> Option<&'l Link> {
        if links.len() == 1 {
            return links.first();
        }
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // Fold the high half in: FNV-1a's low bits alone mix poorly.
        let h = h ^ (h >> 32);
        let n = links.len().max(1);
        links.get((h % n as u64) as usize)
    }

    fn clients(
        map: &Mutex<HashMap<String, Arc<Link>>>,
    ) -> MutexGuard<'_, HashMap<String, Arc<Link>>> {
        map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection of `client` (per-client model), created on first use
    /// and re-created when the credentials changed.
    async fn client_link(
        &self,
        map: &Mutex<HashMap<String, Arc<Link>>>,
        client: &ClientInfo,
    ) -> Result<Arc<Link>, BrokerError> {
        let clientid = client
            .clientid
            .as_deref()
            .ok_or(BrokerError::MissingClientId)?;
        let credentials = (client.username.clone(), client.password.clone());
        let link = {
            let mut clients = Self::clients(map);
            match clients.get(clientid) {
                Some(link) if link.credentials() == Some(&credentials) => link.clone(),
                _ => {
                    let max = match self.config.session {
                        SessionModel::PerClient { max_clients } => max_clients,
                        SessionModel::Shared { .. } => 0,
                    };
                    if !clients.contains_key(clientid) && clients.len() >= max {
                        return Err(BrokerError::Limit("MQTT client connections"));
                    }
                    let link = Arc::new(Link::start(
                        self.config.clone(),
                        self.hub.clone(),
                        clientid.to_owned(),
                        Some(credentials),
                    ));
                    // Replacing drops (and disconnects) the old connection.
                    clients.insert(clientid.to_owned(), link.clone());
                    link
                }
            }
        };
        match link.wait_usable(self.config.unavailable_wait).await {
            Err(BrokerError::NotAuthorized) => {
                let mut clients = Self::clients(map);
                if clients.get(clientid).is_some_and(|l| Arc::ptr_eq(l, &link)) {
                    clients.remove(clientid);
                }
                Err(BrokerError::NotAuthorized)
            }
            // A down broker: keep the connection, it reconnects by itself;
            // the operation itself reports `Unavailable`.
            _ => Ok(link),
        }
    }

    fn forget_if_gone(&self, subscriber: SubscriberId) {
        let gone = match &self.model {
            Model::Shared(links) => links.iter().all(|l| l.has_no(subscriber)),
            Model::PerClient(map) => Self::clients(map).values().all(|l| l.has_no(subscriber)),
        };
        if gone {
            self.hub.remove(subscriber);
        }
    }

    async fn do_publish(&self, client: &ClientInfo, message: Publish) -> Result<(), BrokerError> {
        match &self.model {
            Model::Shared(links) => {
                let link = Self::shared_link(links, message.topic.as_str())
                    .ok_or_else(|| BrokerError::Config("no connections".into()))?;
                link.publish(message).await
            }
            Model::PerClient(map) => self.client_link(map, client).await?.publish(message).await,
        }
    }

    async fn do_subscribe(
        &self,
        client: &ClientInfo,
        subscriber: SubscriberId,
        filter: &TopicFilter,
        qos: Qos,
    ) -> Result<Subscribed, BrokerError> {
        let clientid = client.clientid.as_deref();
        let retained = match &self.model {
            Model::Shared(links) => {
                let link = Self::shared_link(links, filter.as_str())
                    .ok_or_else(|| BrokerError::Config("no connections".into()))?;
                link.subscribe(clientid, subscriber, filter.as_str(), qos)
                    .await?
            }
            Model::PerClient(map) => {
                let link = self.client_link(map, client).await?;
                link.subscribe(clientid, subscriber, filter.as_str(), qos)
                    .await?
            }
        };
        Ok(Subscribed {
            qos: Some(qos),
            retained,
        })
    }

    async fn do_unsubscribe(
        &self,
        client: &ClientInfo,
        subscriber: SubscriberId,
        filter: &TopicFilter,
    ) {
        match &self.model {
            Model::Shared(links) => {
                if let Some(link) = Self::shared_link(links, filter.as_str()) {
                    link.unsubscribe(subscriber, filter.as_str());
                }
            }
            Model::PerClient(map) => {
                let link = client
                    .clientid
                    .as_deref()
                    .and_then(|id| Self::clients(map).get(id).cloned());
                if let Some(link) = link {
                    link.unsubscribe(subscriber, filter.as_str());
                }
            }
        }
        self.forget_if_gone(subscriber);
    }

    async fn do_retained(
        &self,
        client: &ClientInfo,
        topic: &TopicName,
    ) -> Result<Option<Message>, BrokerError> {
        match &self.model {
            Model::Shared(links) => {
                let link = Self::shared_link(links, topic.as_str())
                    .ok_or_else(|| BrokerError::Config("no connections".into()))?;
                link.retained(topic.as_str()).await
            }
            Model::PerClient(map) => {
                self.client_link(map, client)
                    .await?
                    .retained(topic.as_str())
                    .await
            }
        }
    }

    fn do_disconnect(&self, client: &ClientInfo) {
        let Some(clientid) = client.clientid.as_deref() else {
            return;
        };
        let subscribers = match &self.model {
            Model::Shared(links) => links
                .iter()
                .flat_map(|l| l.remove_client(clientid))
                .collect(),
            Model::PerClient(map) => {
                let link = Self::clients(map).remove(clientid);
                match link {
                    Some(link) => {
                        let subscribers = link.remove_client(clientid);
                        link.close();
                        subscribers
                    }
                    None => Vec::new(),
                }
            }
        };
        for s in subscribers {
            self.forget_if_gone(s);
        }
    }
}

impl Drop for MqttBroker {
    fn drop(&mut self) {
        self.hub.close();
    }
}

impl Broker for MqttBroker {
    fn publish<'a>(
        &'a self,
        client: &'a ClientInfo,
        message: Publish,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.do_publish(client, message))
    }

    fn subscribe<'a>(
        &'a self,
        client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
        qos: Qos,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>> {
        Box::pin(self.do_subscribe(client, subscriber, filter, qos))
    }

    fn unsubscribe<'a>(
        &'a self,
        client: &'a ClientInfo,
        subscriber: SubscriberId,
        filter: &'a TopicFilter,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.do_unsubscribe(client, subscriber, filter).await;
            Ok(())
        })
    }

    fn retained<'a>(
        &'a self,
        client: &'a ClientInfo,
        topic: &'a TopicName,
    ) -> BoxFuture<'a, Result<Option<Message>, BrokerError>> {
        Box::pin(self.do_retained(client, topic))
    }

    fn connect_client<'a>(
        &'a self,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            match &self.model {
                Model::Shared(_) => Ok(()),
                Model::PerClient(map) => {
                    let link = self.client_link(map, client).await?;
                    link.wait_usable(self.config.unavailable_wait).await
                }
            }
        })
    }

    fn disconnect_client<'a>(&'a self, client: &'a ClientInfo) -> BoxFuture<'a, ()> {
        self.do_disconnect(client);
        Box::pin(async {})
    }

    fn is_ready(&self) -> bool {
        match &self.model {
            Model::Shared(links) => links.iter().all(Link::is_up),
            // Per-client connections come and go with clients; the broker
            // side itself is ready.
            Model::PerClient(_) => true,
        }
    }
}

/// A suffix that makes client ids unique across gateway instances and
/// across brokers started in one process.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}-{}-{n}",
        nanos ^ u64::from(std::process::id()).rotate_left(32),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let config = MqttConfig::from_url("mqtt://127.0.0.1:1").unwrap();
        assert!(matches!(
            MqttBroker::start(config),
            Err(BrokerError::Config(_))
        ));
    }

    #[test]
    fn parses_urls() {
        let c = MqttConfig::from_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 1884));
        let c = MqttConfig::from_url("mqtt://broker.example").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker.example", 1883));
        let c = MqttConfig::from_url("mqtt://[::1]:1999/").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1999));
        let c = MqttConfig::from_url("mqtts://broker.example").unwrap();
        assert_eq!((c.port, c.tls), (8883, Some(MqttTls::default())));
        assert_eq!(MqttConfig::from_url("mqtt://x").unwrap().tls, None);
        assert!(MqttConfig::from_url("http://x").is_err());
        assert_eq!(
            "per-client".parse(),
            Ok(SessionModel::PerClient {
                max_clients: 10_000
            })
        );
        assert_eq!(
            "shared".parse(),
            Ok(SessionModel::Shared { connections: 2 })
        );
        assert!("both".parse::<SessionModel>().is_err());
        assert_eq!("3.1.1".parse(), Ok(MqttProtocol::V311));
        assert_eq!("5".parse(), Ok(MqttProtocol::V5));
        assert!(matches!(
            crate::broker::BrokerKind::from_flag("embedded"),
            Ok(crate::broker::BrokerKind::Embedded(_))
        ));
        assert!(matches!(
            crate::broker::BrokerKind::from_flag("mqtt://h:1"),
            Ok(crate::broker::BrokerKind::Mqtt(c)) if c.port == 1
        ));
        assert!(crate::broker::BrokerKind::from_flag("redis://h").is_err());
        assert!(MqttConfig::from_url("mqtt://x:notaport").is_err());
        assert!(MqttConfig::from_url("mqtt://:1883").is_err());
    }

    /// A scripted peer that accepts one MQTT 5 connection, answers CONNACK,
    /// reads the first PUBLISH and then either closes the connection or
    /// stays silent.
    async fn silent_broker(close_after_publish: bool) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            // CONNACK: no session present, success, no properties.
            socket
                .write_all(&[0x20, 0x03, 0x00, 0x00, 0x00])
                .await
                .unwrap();
            let _ = socket.read(&mut buf).await;
            if close_after_publish {
                drop(socket);
                std::future::pending::<()>().await;
            } else {
                std::future::pending::<()>().await;
            }
        });
        port
    }

    fn config_for(port: u16) -> MqttConfig {
        let mut config = MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}")).unwrap();
        config.session = SessionModel::Shared { connections: 1 };
        config.ack_timeout = Duration::from_millis(300);
        config.unavailable_wait = Duration::from_millis(300);
        config.reconnect_min = Duration::from_secs(10);
        config
    }

    #[tokio::test]
    async fn connection_lost_before_puback_is_not_a_success() {
        let port = silent_broker(true).await;
        let (broker, _rx) = MqttBroker::start(config_for(port)).unwrap();
        broker.wait_ready(Duration::from_secs(2)).await.unwrap();
        let started = std::time::Instant::now();
        let topic = TopicName::new("t").unwrap();
        let result = broker
            .publish(
                &ClientInfo::default(),
                Publish::new(topic, "p").qos(Qos::AtLeastOnce),
            )
            .await;
        assert!(
            matches!(&result, Err(BrokerError::Unavailable(m)) if m.contains("lost")),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "failed at once, not by timeout"
        );
    }

    #[tokio::test]
    async fn missing_puback_times_out_as_unavailable() {
        let port = silent_broker(false).await;
        let (broker, _rx) = MqttBroker::start(config_for(port)).unwrap();
        broker.wait_ready(Duration::from_secs(2)).await.unwrap();
        let topic = TopicName::new("t").unwrap();
        let result = broker
            .publish(
                &ClientInfo::default(),
                Publish::new(topic, "p").qos(Qos::ExactlyOnce),
            )
            .await;
        assert!(
            matches!(&result, Err(BrokerError::Unavailable(m)) if m.contains("no acknowledgement")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_broker_fails_promptly() {
        // Nothing listens on port 1 of loopback.
        let mut config = MqttConfig::from_url("mqtt://127.0.0.1:1").unwrap();
        config.unavailable_wait = Duration::from_millis(300);
        config.max_packet_size = 1000;
        let (broker, _rx) = MqttBroker::start(config).unwrap();
        let client = ClientInfo::default();
        let big = Publish::new(TopicName::new("x").unwrap(), vec![0u8; 1000]);
        assert_eq!(
            broker.publish(&client, big).await,
            Err(BrokerError::TooLarge {
                size: 1065,
                max: 1000
            })
        );
        let started = std::time::Instant::now();
        let topic = TopicName::new("x").unwrap();
        let result = broker
            .publish(&client, Publish::new(topic, "p").qos(Qos::AtLeastOnce))
            .await;
        assert!(
            result.as_ref().is_err_and(BrokerError::is_unavailable),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!broker.is_ready());
        let filter = TopicFilter::new("x/#").unwrap();
        let result = broker
            .subscribe(&client, SubscriberId(1), &filter, Qos::AtMostOnce)
            .await;
        assert!(
            result.as_ref().is_err_and(BrokerError::is_unavailable),
            "{result:?}"
        );
    }
}
