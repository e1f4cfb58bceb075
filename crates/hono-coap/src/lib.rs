//! `hono-coap`: the Eclipse-Hono-compatible side of the CoAP gateway —
//! Hono's CoAP resources and everything behind them.
//!
//! What it is for:
//! - the device registry ([`Registry`] trait, [`FileRegistry`] with Hono's
//!   JSON record shapes, PSK look-up for the DTLS handshake, reload on
//!   demand or when the file changes);
//! - Hono's authorization checks ([`authorize`]) with typed errors that name
//!   the CoAP code they map to;
//! - message limits ([`DataVolumeMeter`], [`check_payload_size`]);
//! - command request ids ([`RequestId`]);
//! - the north-bound side ([`Downstream`] trait): RabbitMQ over AMQP 0-9-1
//!   ([`AmqpDownstream`], via `lapin`), in-process channels
//!   ([`InProcessDownstream`]) and JSON lines on stdout ([`StdoutDownstream`]);
//! - the CoAP resources ([`HonoAdapter`]): `telemetry`/`t`, `event`/`e`,
//!   `command_response`/`cr` with Hono's URI shapes, response codes,
//!   payload rules, `hono-ttd` command delivery, `timeoutToAck` and the
//!   server-time option, on top of `coap-endpoint`'s server; every rejection
//!   maps to its CoAP code in one place ([`RequestRejected::code`]);
//! - the bounded table of known clients ([`ClientTable`]: tenant, device,
//!   auth-id, address, last activity, open command waits; kick), which a
//!   management API reads.
//!
//! What it is not for: the CoAP message layer and DTLS (`coap-endpoint`,
//! `coap-dtls`), process concerns such as flags, signals and metrics
//! export (the `coap-hono-adapter` binary).
//!
//! Errors and the CoAP code the resource layer answers with (see
//! [`RequestRejected`]; also 4.01 for POST without identity, 4.05 for other
//! methods, 4.00 for payload and NON rules):
//!
//! | error | CoAP |
//! | --- | --- |
//! | [`AuthorizationError`] `TenantDisabled`, `AdapterDisabled`, `GatewayNotAuthorized`, `GatewayDisabled` | 4.03 |
//! | [`AuthorizationError`] `TenantUnknown`, `DeviceUnknown`, `DeviceDisabled` | 4.04 |
//! | [`PayloadTooLarge`] | 4.13 |
//! | [`DataVolumeExceeded`] | 4.29 |
//! | [`RequestIdError`] (device-presented request id) | 4.00 |
//! | [`DownstreamError::Invalid`] | 4.00 |
//! | [`DownstreamError::Unroutable`], [`DownstreamError::Unavailable`], [`AuthorizationError`] `Registry` | 5.03 |
//!
//! Data flow (one telemetry request with `hono-ttd`):
//! ```text
//! coap_endpoint::Server --IncomingRequestHandle--> HonoAdapter::serve
//!              --resource, method, target (identity / URI)--> 4.01 4.04 4.05 4.03
//! DTLS PSK callback --Registry::psk_for_identity--> key   (sync, in-memory snapshot)
//! CoAP request --authorize()--> Authorized{tenant, device, gateway}
//!              --DataVolumeMeter::check--> ok | 4.29
//!              --Downstream::subscribe_commands(tenant, device)--> CommandSubscription
//!              --Downstream::send_telemetry(msg, qos)--> ok | Unroutable | Unavailable
//!                   AmqpDownstream: basic.publish(mandatory) to {prefix}.telemetry,
//!                   key {tenant}; await publisher confirm (QoS 1)
//!              <--CommandSubscription::recv-- {prefix}.command, key {tenant}/{device}
//!              --Downstream::unsubscribe_commands--> unbind; late commands -> 503 response
//! CoAP command response --RequestId::decode--> Downstream::send_command_response
//!                   -> {prefix}.command_response, key = reply_to
//! ```

mod adapter;
mod amqp;
mod authorization;
mod clients;
mod downstream;
mod file_registry;
mod in_process;
mod message_limits;
mod registry;
mod rejection;
mod request_id;
mod stdout;

pub use adapter::{
    AdapterObserver, AdapterSettings, DEFAULT_CONTENT_TYPE, EMPTY_NOTIFICATION_CONTENT_TYPE,
    HonoAdapter, MAX_GATEWAY_DEVICE_SUBSCRIPTIONS, SERVICE_UNAVAILABLE_MAX_AGE, TIME_OPTION,
    rejection_response,
};
pub use amqp::{AmqpConfig, AmqpConfigError, AmqpDownstream};
pub use authorization::{AuthorizationError, Authorized, authorize};
pub use clients::{
    ClientInfo, ClientPage, ClientQuery, ClientTable, ClientTransport, CommandWaitGuard,
    CommandWaitInfo, DEFAULT_MAX_CLIENTS,
};
pub use downstream::{
    Command, CommandResponse, CommandSubscription, Downstream, DownstreamError, DownstreamFuture,
    DownstreamMessage, EndpointKind, ORIG_ADAPTER, Qos,
};
pub use file_registry::{FileRegistry, RegistryLoadError, ReloadOutcome};
pub use in_process::{InProcessDownstream, InProcessMessage};
pub use message_limits::{
    AccountingPeriod, DataVolumeExceeded, DataVolumeMeter, PayloadTooLarge, accounted_size,
    check_payload_size, current_period,
};
pub use registry::{
    ADAPTER_TYPE, AdapterConfig, CREDENTIALS_TYPE_PSK, Credentials, DEFAULT_MAX_TTD_SECS,
    DEFAULT_PSK_SEPARATOR, DataVolume, Device, Period, PskGrant, PskIdentity, PskIdentityError,
    Registry, RegistryError, RegistryFuture, RegistrySnapshot, ResourceLimits, Secret, SecretKey,
    Tenant,
};
pub use rejection::RequestRejected;
pub use request_id::{MAX_REQUEST_ID_LEN, RequestId, RequestIdError};
pub use stdout::StdoutDownstream;
