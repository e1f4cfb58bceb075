//! The CoAP resources of Hono's CoAP adapter: [`HonoAdapter`] turns one
//! device request into one response, calling the registry, the message
//! limits and the [`Downstream`].
//!
//! ```text
//! request ─ resource (t|telemetry, e|event, cr|command_response) ─ method ─ target
//!   POST /t            authenticated device itself (4.01 without identity)
//!   PUT  /t/T/D        unauthenticated device (plain UDP), or a gateway for D
//!   PUT  /t//D         gateway (tenant = its own)
//!   ─ CON/NON rules ─ 4.13 size ─ payload rules ─ authorize ─ data volume
//!   ─ [hono-ttd: subscribe commands] ─ Downstream send (CON: broker confirm)
//!   ─ [wait for a command until the TTD ends] ─ 2.04 (+ command)
//! ```

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType, OptionNumber};
use coap_endpoint::{AckTimeout, IncomingRequestHandle, Peer, response};
use tokio::sync::watch;

use crate::authorization::{Authorized, authorize};
use crate::clients::{ClientTable, ClientTransport, CommandWaitGuard, DEFAULT_MAX_CLIENTS};
use crate::downstream::{
    Command, CommandResponse, CommandSubscription, Downstream, DownstreamMessage, Qos,
};
use crate::message_limits::{DataVolumeMeter, check_payload_size};
use crate::registry::{CREDENTIALS_TYPE_PSK, DEFAULT_PSK_SEPARATOR, PskIdentity, Registry};
use crate::rejection::RequestRejected;
use crate::request_id::RequestId;

/// Hono's experimental "time" option (0xfde8): in a request it asks for the
/// server time, in a response it carries the epoch milliseconds.
pub const TIME_OPTION: OptionNumber = OptionNumber(0xfde8);

/// Content type of an empty notification (`?empty`).
pub const EMPTY_NOTIFICATION_CONTENT_TYPE: &str = "application/vnd.eclipse-hono-empty-notification";

/// Content type of a non-empty payload when neither the request nor the
/// device's defaults name one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Max-Age of a 5.03 response, seconds (the client may retry after it).
pub const SERVICE_UNAVAILABLE_MAX_AGE: u32 = 2;

/// Longest Location-Path segment or Location-Query value (RFC 7252 §5.10).
const MAX_LOCATION_OPTION_LEN: usize = 255;

/// Most devices a gateway's own command wait subscribes for (the devices
/// that last sent through it).
pub const MAX_GATEWAY_DEVICE_SUBSCRIPTIONS: usize = 256;

/// Settings of the resource layer; `Default` gives the spec's defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdapterSettings {
    /// Largest accepted body (`--max-payload-size`). Default 2048.
    pub max_payload_size: usize,
    /// `timeoutToAck` in ms when the tenant sets none (`--timeout-to-ack`);
    /// -1 = always piggy-back, 0 = ACK at once. Default 500.
    pub timeout_to_ack_ms: i64,
    /// Separator of auth-id and tenant in a PSK identity. Default `@`.
    pub psk_separator: char,
    /// Entries of the "which gateway did device D last send through" map.
    /// Default 100 000.
    pub max_gateway_routes: usize,
    /// Capacity of the table of known clients (the management API's
    /// view); the longest idle is evicted when full. Default 100 000.
    pub max_clients: usize,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        Self {
            max_payload_size: 2048,
            timeout_to_ack_ms: 500,
            psk_separator: DEFAULT_PSK_SEPARATOR,
            max_gateway_routes: 100_000,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// What the adapter reports for metrics; every method has a no-op default.
pub trait AdapterObserver: Send + Sync {
    /// A response with `code` is about to be sent.
    fn response(&self, code: Code) {
        let _ = code;
    }
    /// A message was forwarded downstream (`"telemetry"`, `"event"`,
    /// `"command_response"`).
    fn forwarded(&self, kind: &'static str) {
        let _ = kind;
    }
    /// A command was put into a response to a waiting device.
    fn command_delivered(&self) {}
    /// The downstream accepted a message of `kind` (`"telemetry"`,
    /// `"event"`, `"command_response"`) after `took` (for confirmed
    /// messages: until the broker's confirm).
    fn broker_round_trip(&self, kind: &'static str, took: Duration) {
        let _ = (kind, took);
    }
    /// A request with `hono-ttd` began waiting for a command.
    fn command_wait_started(&self) {}
    /// That wait ended (command, timeout, kick or shutdown).
    fn command_wait_ended(&self) {}
}

struct NoObserver;
impl AdapterObserver for NoObserver {}

/// Hono's CoAP resources on top of a [`Registry`] and a [`Downstream`].
///
/// Call [`serve`](Self::serve) from a `coap_endpoint::Server` handler, or
/// [`handle`](Self::handle) with a request and an ack-timeout callback (as
/// the unit tests do). Embedded in a Rust service with the in-process
/// downstream:
///
/// ```no_run
/// use std::sync::Arc;
/// use coap_endpoint::{EndpointConfig, IncomingRequestHandle, Server};
/// use hono_coap::{AdapterSettings, FileRegistry, HonoAdapter, InProcessDownstream};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Arc::new(FileRegistry::load("registry.json")?);
/// let downstream = Arc::new(InProcessDownstream::new());
/// let mut telemetry = downstream.consume_telemetry("DEFAULT_TENANT");
/// let adapter = Arc::new(HonoAdapter::new(registry, downstream.clone(), AdapterSettings::default()));
/// // Plain UDP: unauthenticated devices PUT /t/{tenant}/{device}. For
/// // DTLS-PSK use `coap_endpoint::DtlsTransport` with a PSK store answered
/// // by `Registry::psk_for_identity`.
/// let server = Server::bind("127.0.0.1:5683".parse()?, EndpointConfig::default()).await?;
/// tokio::spawn(async move {
///     while let Some(message) = telemetry.recv().await {
///         println!("{} sent {} bytes", message.message.device_id, message.message.payload.len());
///     }
/// });
/// let handler = move |request: IncomingRequestHandle| {
///     let adapter = adapter.clone();
///     async move { adapter.serve(request).await }
/// };
/// server.run(handler, std::future::pending::<()>()).await?;
/// # Ok(())
/// # }
/// ```
pub struct HonoAdapter {
    registry: Arc<dyn Registry>,
    downstream: Arc<dyn Downstream>,
    settings: AdapterSettings,
    meter: DataVolumeMeter,
    gateway_routes: Mutex<GatewayRoutes>,
    observer: Arc<dyn AdapterObserver>,
    stopping: watch::Sender<bool>,
    clients: Arc<ClientTable>,
}

impl std::fmt::Debug for HonoAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HonoAdapter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Which endpoint a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Telemetry,
    Event,
    CommandResponse,
}

impl Resource {
    /// The resource and whether the long name was used.
    fn parse(segment: &[u8]) -> Option<(Self, bool)> {
        match segment {
            b"t" => Some((Self::Telemetry, false)),
            b"telemetry" => Some((Self::Telemetry, true)),
            b"e" => Some((Self::Event, false)),
            b"event" => Some((Self::Event, true)),
            b"cr" => Some((Self::CommandResponse, false)),
            b"command_response" => Some((Self::CommandResponse, true)),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Event => "event",
            Self::CommandResponse => "command_response",
        }
    }
}

/// Who sends, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tenant_id: String,
    device_id: String,
    /// The authenticated client when it acts for another device.
    gateway_id: Option<String>,
    /// `true` for plain-UDP devices (no identity).
    unauthenticated: bool,
}

/// How the Location-Path of a command addresses its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addressing {
    /// The authenticated device itself: `c`, `cr/{id}`.
    Own,
    /// Unauthenticated device: `c`, `cr/{tenant}/{device}/{id}`.
    Unauthenticated,
    /// Via a gateway: `c//{device}`, `cr//{device}/{id}`.
    Gateway,
}

impl HonoAdapter {
    /// An adapter with `settings`.
    pub fn new(
        registry: Arc<dyn Registry>,
        downstream: Arc<dyn Downstream>,
        settings: AdapterSettings,
    ) -> Self {
        Self {
            registry,
            downstream,
            meter: DataVolumeMeter::new(),
            gateway_routes: Mutex::new(GatewayRoutes::new(settings.max_gateway_routes)),
            clients: Arc::new(ClientTable::new(settings.max_clients)),
            settings,
            observer: Arc::new(NoObserver),
            stopping: watch::Sender::new(false),
        }
    }

    /// Reports to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn AdapterObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// The known clients: who sent from which address, and their open
    /// command waits (for a management API; see [`ClientTable`]).
    pub fn clients(&self) -> &Arc<ClientTable> {
        &self.clients
    }

    /// The settings in use.
    pub fn settings(&self) -> &AdapterSettings {
        &self.settings
    }

    /// Ends every command wait at once (answered without a command) and
    /// refuses new requests with 5.03: call it when a graceful shutdown
    /// starts, so in-flight requests are answered within the drain.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Handles a request from the endpoint and sends its response.
    pub async fn serve(&self, request: IncomingRequestHandle) {
        let IncomingRequestHandle {
            peer,
            message,
            responder,
            ..
        } = request;
        let answer = self
            .handle_from(Some(&peer), &message, &|timeout| {
                responder.set_ack_timeout(timeout)
            })
            .await;
        tracing::debug!(%peer, code = %answer.code, "answered");
        if let Err(error) = responder.respond(answer).await {
            tracing::debug!(%peer, %error, "response not sent");
        }
    }

    /// Handles one request: `identity` is the DTLS PSK identity (`None` on
    /// plain UDP); `set_ack_timeout` is called once the tenant's
    /// `timeoutToAck` is known. Returns the response (type, id and token are
    /// the endpoint's business).
    pub async fn handle(
        &self,
        identity: Option<&[u8]>,
        request: &Message,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Message {
        self.respond(None, identity, request, set_ack_timeout).await
    }

    /// [`handle`](Self::handle) for a request from `peer` (its identity is
    /// the DTLS PSK identity): also records the client in
    /// [`clients`](Self::clients), so it can be listed and kicked.
    pub async fn handle_from(
        &self,
        peer: Option<&Peer>,
        request: &Message,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Message {
        let identity = peer.and_then(|p| p.identity.as_deref());
        self.respond(peer.map(|p| p.addr), identity, request, set_ack_timeout)
            .await
    }

    async fn respond(
        &self,
        peer: Option<SocketAddr>,
        identity: Option<&[u8]>,
        request: &Message,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Message {
        let mut answer = match self.process(peer, identity, request, set_ack_timeout).await {
            Ok(answer) => answer,
            Err(rejection) => {
                tracing::debug!(%rejection, "request rejected");
                rejection_response(&rejection)
            }
        };
        if request.option(TIME_OPTION).is_some() || request.query_param("hono-time").is_some() {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            answer.set_option(TIME_OPTION, encode_u64(millis));
        }
        self.observer.response(answer.code);
        answer
    }

    async fn process(
        &self,
        peer: Option<SocketAddr>,
        identity: Option<&[u8]>,
        request: &Message,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Result<Message, RequestRejected> {
        let segments: Vec<&[u8]> = request.uri_path().collect();
        let (resource, long_names) = segments
            .first()
            .and_then(|s| Resource::parse(s))
            .ok_or(RequestRejected::UnknownResource)?;
        let code = request.code;
        if code != Code::POST && code != Code::PUT {
            return Err(RequestRejected::MethodNotAllowed);
        }
        if *self.stopping.borrow() {
            return Err(RequestRejected::ShuttingDown);
        }
        let rest: Vec<String> = segments
            .get(1..)
            .unwrap_or(&[])
            .iter()
            .map(|s| String::from_utf8(s.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|_| RequestRejected::PathShape("path segments must be UTF-8"))?;
        let (target, request_id) = self
            .target(identity, code == Code::PUT, resource, &rest)
            .await?;
        // Authenticated clients are recorded at once; a plain-UDP client
        // only once the device it names passed authorization, so random
        // URIs cannot push real devices out of the bounded table.
        if let (Some(peer), Some(identity)) = (peer, identity) {
            self.record_client(peer, Some(identity), &target);
        }
        let confirmable = request.mtype == MessageType::Con;
        if resource != Resource::Telemetry && !confirmable {
            return Err(RequestRejected::NotConfirmable(resource.name()));
        }
        check_payload_size(request.payload.len(), self.settings.max_payload_size)?;
        match resource {
            Resource::CommandResponse => {
                self.command_response(
                    peer,
                    request,
                    &target,
                    request_id.unwrap_or_default(),
                    set_ack_timeout,
                )
                .await
            }
            Resource::Telemetry | Resource::Event => {
                self.upload(
                    peer,
                    request,
                    resource,
                    long_names,
                    &target,
                    set_ack_timeout,
                )
                .await
            }
        }
    }

    /// Resolves who sends for whom from the method, the identity and the
    /// path after the resource name; also returns the request id of a
    /// command response.
    async fn target(
        &self,
        identity: Option<&[u8]>,
        put: bool,
        resource: Resource,
        rest: &[String],
    ) -> Result<(Target, Option<String>), RequestRejected> {
        let authenticated = match identity {
            None => None,
            Some(identity) => Some(self.identify(identity).await?),
        };
        if !put {
            let Some((tenant_id, device_id)) = authenticated else {
                return Err(RequestRejected::Unauthenticated);
            };
            let request_id = match (resource, rest) {
                (Resource::CommandResponse, [id]) => Some(id.clone()),
                (Resource::CommandResponse, []) => {
                    return Err(RequestRejected::RequestId(
                        crate::request_id::RequestIdError::Malformed,
                    ));
                }
                (_, []) => None,
                _ => return Err(RequestRejected::PathShape("POST takes no tenant or device")),
            };
            return Ok((
                Target {
                    tenant_id,
                    device_id,
                    gateway_id: None,
                    unauthenticated: false,
                },
                request_id,
            ));
        }
        let (tenant, device, request_id) = match (resource, rest) {
            (Resource::CommandResponse, [t, d, id]) => (t, d, Some(id.clone())),
            (Resource::CommandResponse, [_, _]) => {
                return Err(RequestRejected::RequestId(
                    crate::request_id::RequestIdError::Malformed,
                ));
            }
            (Resource::Telemetry | Resource::Event, [t, d]) => (t, d, None),
            _ => {
                return Err(RequestRejected::PathShape(
                    "URI must name tenant and device",
                ));
            }
        };
        if device.is_empty() {
            return Err(RequestRejected::PathShape(
                "URI must name tenant and device",
            ));
        }
        let target = match authenticated {
            None => {
                if tenant.is_empty() {
                    return Err(RequestRejected::PathShape(
                        "URI must name tenant and device",
                    ));
                }
                Target {
                    tenant_id: tenant.clone(),
                    device_id: device.clone(),
                    gateway_id: None,
                    unauthenticated: true,
                }
            }
            Some((own_tenant, own_device)) => {
                if !tenant.is_empty() && *tenant != own_tenant {
                    return Err(RequestRejected::ForeignTenant);
                }
                let gateway_id = (*device != own_device).then_some(own_device);
                Target {
                    tenant_id: own_tenant,
                    device_id: device.clone(),
                    gateway_id,
                    unauthenticated: false,
                }
            }
        };
        Ok((target, request_id))
    }

    /// Notes the request in the client table: the authenticated device
    /// (for a gateway: the gateway) with its auth-id, or on plain UDP the
    /// device the URI names.
    fn record_client(&self, peer: SocketAddr, identity: Option<&[u8]>, target: &Target) {
        let now = std::time::Instant::now();
        match identity {
            Some(identity) => {
                let auth_id = PskIdentity::parse(identity, self.settings.psk_separator)
                    .ok()
                    .map(|p| p.auth_id);
                self.clients.touch(
                    peer,
                    ClientTransport::Dtls,
                    &target.tenant_id,
                    own_device(target),
                    auth_id,
                    now,
                );
            }
            None => self.clients.touch(
                peer,
                ClientTransport::Udp,
                &target.tenant_id,
                &target.device_id,
                None,
                now,
            ),
        }
    }

    /// Tenant and device of a DTLS PSK identity.
    async fn identify(&self, identity: &[u8]) -> Result<(String, String), RequestRejected> {
        let parsed = PskIdentity::parse(identity, self.settings.psk_separator)
            .map_err(|_| RequestRejected::UnknownIdentity)?;
        let credentials = self
            .registry
            .credentials(parsed.tenant_id, parsed.auth_id, CREDENTIALS_TYPE_PSK)
            .await
            .map_err(|e| RequestRejected::Authorization(e.into()))?
            .ok_or(RequestRejected::UnknownIdentity)?;
        Ok((parsed.tenant_id.to_owned(), credentials.device_id.clone()))
    }

    async fn authorize(&self, target: &Target) -> Result<Authorized, RequestRejected> {
        Ok(authorize(
            self.registry.as_ref(),
            &target.tenant_id,
            &target.device_id,
            target.gateway_id.as_deref(),
        )
        .await?)
    }

    /// Tells the endpoint when to send an empty ACK for this tenant.
    fn apply_ack_timeout(
        &self,
        request: &Message,
        authorized: &Authorized,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) {
        let tenant = &authorized.tenant;
        let mut millis = tenant
            .timeout_to_ack_ms()
            .unwrap_or(self.settings.timeout_to_ack_ms);
        if millis == 0 && request.query_param("piggy").is_some() {
            millis = tenant
                .device_triggered_timeout_to_ack_ms()
                .unwrap_or(self.settings.timeout_to_ack_ms);
        }
        set_ack_timeout(AckTimeout::from_millis(millis));
    }

    async fn upload(
        &self,
        peer: Option<SocketAddr>,
        request: &Message,
        resource: Resource,
        long_names: bool,
        target: &Target,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Result<Message, RequestRejected> {
        let empty_flag = request.query_param("empty").is_some();
        let body = &request.payload;
        let content_format = request.content_format();
        if empty_flag && !body.is_empty() {
            return Err(RequestRejected::PayloadRule(
                "an empty notification must not have a body",
            ));
        }
        if body.is_empty() && !empty_flag && content_format.is_none() {
            return Err(RequestRejected::PayloadRule(
                "empty body needs a Content-Format or the empty parameter",
            ));
        }
        let authorized = self.authorize(target).await?;
        if let (Some(peer), true) = (peer, target.unauthenticated) {
            self.record_client(peer, None, target);
        }
        self.apply_ack_timeout(request, &authorized, set_ack_timeout);
        let now = SystemTime::now();
        self.meter.check(&authorized.tenant, body.len(), now)?;
        if let Some(gateway) = &authorized.gateway {
            self.routes()
                .record(&target.tenant_id, &target.device_id, &gateway.device_id);
        }

        let content_type = if empty_flag {
            EMPTY_NOTIFICATION_CONTENT_TYPE.to_owned()
        } else if let Some(media_type) = content_format.and_then(ContentFormat::media_type) {
            media_type.to_owned()
        } else {
            authorized
                .default_content_type()
                .unwrap_or(DEFAULT_CONTENT_TYPE)
                .to_owned()
        };
        let ttd = request
            .query_param("hono-ttd")
            .and_then(|p| p.value_str())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|v| *v > 0)
            .map(|v| v.min(authorized.tenant.max_ttd_secs()))
            .filter(|v| *v > 0);
        let orig_address = orig_address(request);
        let mut message = DownstreamMessage::new(
            target.tenant_id.clone(),
            target.device_id.clone(),
            content_type,
            body.clone(),
            orig_address,
            now,
        )
        .with_defaults(authorized.message_defaults());
        if let Some(gateway) = &authorized.gateway {
            message = message.with_gateway(gateway.device_id.clone());
        }
        if let Some(ttd) = ttd {
            message = message.with_ttd(ttd);
        }
        if let (Resource::Event, Some(ttl)) = (resource, authorized.event_ttl()) {
            message = message.with_ttl(ttl);
        }

        // Subscribe before forwarding, so that an application reacting to
        // the message at once finds the device waiting.
        let mut subscriptions = match ttd {
            Some(_) => self.subscribe(target, &authorized).await?,
            None => Vec::new(),
        };
        let started = std::time::Instant::now();
        let sent = match resource {
            Resource::Event => self.downstream.send_event(message).await,
            _ => {
                let qos = if request.mtype == MessageType::Con {
                    Qos::AtLeastOnce
                } else {
                    Qos::AtMostOnce
                };
                self.downstream.send_telemetry(message, qos).await
            }
        };
        if let Err(error) = sent {
            self.unsubscribe(subscriptions).await;
            return Err(error.into());
        }
        self.observer
            .broker_round_trip(resource.name(), started.elapsed());
        self.meter.record(&authorized.tenant, body.len(), now);
        self.observer.forwarded(resource.name());

        let mut answer = response(Code::CHANGED);
        if let Some(ttd) = ttd {
            let ttd = Duration::from_secs(u64::from(ttd));
            let mut registration = peer.and_then(|peer| {
                let devices = subscriptions
                    .iter()
                    .map(|s| s.device_id().to_owned())
                    .collect();
                self.clients
                    .begin_wait(peer, devices, std::time::Instant::now(), ttd)
            });
            let counted = CountedWait::start(self.observer.as_ref());
            let command = self
                .wait_for_command(&mut subscriptions, ttd, registration.as_mut())
                .await;
            drop(counted);
            drop(registration);
            self.unsubscribe(subscriptions).await;
            if let Some(command) = command {
                let addressing = if target.unauthenticated {
                    Addressing::Unauthenticated
                } else if command.device_id != own_device(target) {
                    Addressing::Gateway
                } else {
                    Addressing::Own
                };
                answer = self.command_answer(command, addressing, long_names).await;
            }
        }
        Ok(answer)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, GatewayRoutes> {
        self.gateway_routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Command subscriptions for a waiting device: the device itself and,
    /// when a device sends for itself, each device that last sent through it
    /// as a gateway (and still may).
    async fn subscribe(
        &self,
        target: &Target,
        authorized: &Authorized,
    ) -> Result<Vec<CommandSubscription>, RequestRejected> {
        let mut devices = vec![target.device_id.clone()];
        if authorized.gateway.is_none() && !target.unauthenticated {
            let routed = self
                .routes()
                .devices_of(&target.tenant_id, &target.device_id);
            for device in routed.into_iter().take(MAX_GATEWAY_DEVICE_SUBSCRIPTIONS) {
                if authorize(
                    self.registry.as_ref(),
                    &target.tenant_id,
                    &device,
                    Some(&target.device_id),
                )
                .await
                .is_ok()
                {
                    devices.push(device);
                }
            }
        }
        let mut subscriptions = Vec::with_capacity(devices.len());
        for device in &devices {
            match self
                .downstream
                .subscribe_commands(&target.tenant_id, device)
                .await
            {
                Ok(subscription) => subscriptions.push(subscription),
                Err(error) => {
                    self.unsubscribe(subscriptions).await;
                    return Err(error.into());
                }
            }
        }
        Ok(subscriptions)
    }

    async fn unsubscribe(&self, subscriptions: Vec<CommandSubscription>) {
        for subscription in subscriptions {
            if let Err(error) = self.downstream.unsubscribe_commands(subscription).await {
                tracing::debug!(%error, "command unsubscribe failed");
            }
        }
    }

    /// The first command on any subscription within `ttd`; `None` when the
    /// time is up, every subscription ended, the client was kicked, or the
    /// adapter shuts down.
    async fn wait_for_command(
        &self,
        subscriptions: &mut [CommandSubscription],
        ttd: Duration,
        registration: Option<&mut CommandWaitGuard>,
    ) -> Option<Command> {
        let mut open = vec![true; subscriptions.len()];
        let first = poll_fn(|cx| {
            let mut any_open = false;
            for (subscription, open) in subscriptions.iter_mut().zip(open.iter_mut()) {
                if !*open {
                    continue;
                }
                match subscription.poll_recv(cx) {
                    Poll::Ready(Some(command)) => return Poll::Ready(Some(command)),
                    Poll::Ready(None) => *open = false,
                    Poll::Pending => any_open = true,
                }
            }
            if any_open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        });
        let mut stopping = self.stopping.subscribe();
        let kicked = async {
            match registration {
                Some(registration) => registration.kicked().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = tokio::time::timeout(ttd, first) => command.ok().flatten(),
            _ = stopping.wait_for(|s| *s) => None,
            () = kicked => {
                tracing::debug!("command wait ended: client kicked");
                None
            }
        }
    }

    /// The 2.04 carrying a command.
    async fn command_answer(
        &self,
        command: Command,
        addressing: Addressing,
        long_names: bool,
    ) -> Message {
        let request_id = match command.request_id() {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(error)) => {
                tracing::warn!(%error, "command with unusable ids rejected");
                if let Err(error) = self.downstream.reject_command(command).await {
                    tracing::debug!(%error, "command rejection failed");
                }
                return response(Code::CHANGED);
            }
        };
        let query = format!("hono-command={}", command.name);
        let mut path: Vec<String> = Vec::with_capacity(4);
        let endpoint = match (&request_id, long_names) {
            (None, false) => "c",
            (None, true) => "command",
            (Some(_), false) => "cr",
            (Some(_), true) => "command_response",
        };
        path.push(endpoint.to_owned());
        match (addressing, &request_id) {
            (Addressing::Gateway, _) => {
                path.push(String::new());
                path.push(command.device_id.clone());
            }
            (Addressing::Unauthenticated, Some(_)) => {
                path.push(command.tenant_id.clone());
                path.push(command.device_id.clone());
            }
            _ => {}
        }
        if let Some(id) = request_id {
            path.push(id);
        }
        // Location-Path and Location-Query values are at most 255 bytes
        // (RFC 7252 §5.10): a command that cannot be expressed is refused
        // with 400 rather than sent as a response that cannot be encoded.
        if query.len() > MAX_LOCATION_OPTION_LEN
            || path.iter().any(|s| s.len() > MAX_LOCATION_OPTION_LEN)
        {
            tracing::warn!(
                name_len = command.name.len(),
                "command name or ids too long for CoAP"
            );
            let rejection = CommandResponse::rejecting(&command, 400, SystemTime::now());
            if let Some(Err(error)) = match rejection {
                Some(r) => Some(self.downstream.send_command_response(r).await),
                None => None,
            } {
                tracing::debug!(%error, "command rejection failed");
            }
            return response(Code::CHANGED);
        }
        let mut answer = response(Code::CHANGED)
            .with_option(OptionNumber::LOCATION_QUERY, query)
            .with_payload(command.payload.clone());
        if let Some(format) = command
            .content_type
            .as_deref()
            .and_then(ContentFormat::from_media_type)
        {
            answer = answer.with_content_format(format);
        }
        for segment in path {
            answer.add_option(OptionNumber::LOCATION_PATH, segment);
        }
        self.observer.command_delivered();
        answer
    }

    async fn command_response(
        &self,
        peer: Option<SocketAddr>,
        request: &Message,
        target: &Target,
        request_id: String,
        set_ack_timeout: &(dyn Fn(AckTimeout) + Sync),
    ) -> Result<Message, RequestRejected> {
        let status = request
            .query_param("hono-cmd-status")
            .and_then(|p| p.value_str())
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|s| (200..300).contains(s) || (400..600).contains(s))
            .ok_or(RequestRejected::CommandStatus)?;
        let routing = RequestId::decode(&request_id)?;
        let authorized = self.authorize(target).await?;
        if let (Some(peer), true) = (peer, target.unauthenticated) {
            self.record_client(peer, None, target);
        }
        self.apply_ack_timeout(request, &authorized, set_ack_timeout);
        let now = SystemTime::now();
        self.meter
            .check(&authorized.tenant, request.payload.len(), now)?;
        let mut response_message = CommandResponse::new(
            target.tenant_id.clone(),
            target.device_id.clone(),
            routing,
            status,
            request.payload.clone(),
            now,
        );
        if let Some(media_type) = request.content_format().and_then(ContentFormat::media_type) {
            response_message = response_message.with_content_type(media_type);
        }
        let started = std::time::Instant::now();
        self.downstream
            .send_command_response(response_message)
            .await?;
        self.observer
            .broker_round_trip("command_response", started.elapsed());
        self.meter
            .record(&authorized.tenant, request.payload.len(), now);
        self.observer.forwarded("command_response");
        Ok(response(Code::CHANGED))
    }
}

/// Reports a command wait to the observer from start to end, also when
/// the request's future is dropped mid-wait.
struct CountedWait<'a>(&'a dyn AdapterObserver);

impl<'a> CountedWait<'a> {
    fn start(observer: &'a dyn AdapterObserver) -> Self {
        observer.command_wait_started();
        Self(observer)
    }
}

impl Drop for CountedWait<'_> {
    fn drop(&mut self) {
        self.0.command_wait_ended();
    }
}

/// The device the request was authenticated as (for a gateway: the gateway).
fn own_device(target: &Target) -> &str {
    target.gateway_id.as_deref().unwrap_or(&target.device_id)
}

/// `/` + the request's Uri-Path.
fn orig_address(request: &Message) -> String {
    let mut address = String::new();
    for segment in request.uri_path() {
        address.push('/');
        address.push_str(&String::from_utf8_lossy(segment));
    }
    if address.is_empty() {
        address.push('/');
    }
    address
}

/// The error response for a rejection: its code, a text/plain diagnostic
/// and, for 5.03, Max-Age 2.
pub fn rejection_response(rejection: &RequestRejected) -> Message {
    let code = rejection.code();
    let mut answer = response(code)
        .with_content_format(ContentFormat::TEXT_PLAIN)
        .with_payload(Bytes::from(rejection.to_string()));
    if code == Code::SERVICE_UNAVAILABLE {
        answer.set_uint_option(OptionNumber::MAX_AGE, SERVICE_UNAVAILABLE_MAX_AGE);
    }
    answer
}

/// Shortest big-endian form of a u64 (an empty value for 0).
fn encode_u64(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or(&[]).to_vec()
}

/// Which gateway each device last sent through, and the reverse, bounded.
#[derive(Debug)]
struct GatewayRoutes {
    max: usize,
    /// `(tenant, device)` → gateway.
    last_gateway: HashMap<(String, String), String>,
    /// `(tenant, gateway)` → devices.
    devices: HashMap<(String, String), HashSet<String>>,
}

impl GatewayRoutes {
    fn new(max: usize) -> Self {
        Self {
            max,
            last_gateway: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    fn record(&mut self, tenant: &str, device: &str, gateway: &str) {
        let key = (tenant.to_owned(), device.to_owned());
        match self.last_gateway.get(&key) {
            Some(current) if current == gateway => return,
            Some(previous) => {
                let previous_key = (tenant.to_owned(), previous.clone());
                if let Some(set) = self.devices.get_mut(&previous_key) {
                    set.remove(device);
                    if set.is_empty() {
                        self.devices.remove(&previous_key);
                    }
                }
            }
            None if self.last_gateway.len() >= self.max => return,
            None => {}
        }
        self.last_gateway.insert(key, gateway.to_owned());
        self.devices
            .entry((tenant.to_owned(), gateway.to_owned()))
            .or_default()
            .insert(device.to_owned());
    }

    fn devices_of(&self, tenant: &str, gateway: &str) -> Vec<String> {
        let mut devices: Vec<String> = self
            .devices
            .get(&(tenant.to_owned(), gateway.to_owned()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        devices.sort();
        devices
    }
}

#[cfg(test)]
mod tests;
