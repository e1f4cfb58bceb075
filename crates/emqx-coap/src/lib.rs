//! `emqx-coap`: the EMQX-style CoAP pub/sub gateway as a library (binary
//! `coap-emqx-gateway`, spec `emqx-mode.md`, user guide
//! `docs/emqx-mode.md`).
//!
//! What it is for:
//! - [`gateway`]: the CoAP resources — `mqtt/connection` (connection-mode
//!   sessions with tokens and heartbeat expiry) and `ps/{topic}` (publish,
//!   observe = subscribe, read retained) — on top of `coap-endpoint`, with
//!   notifications from broker deliveries;
//! - [`topic`]: MQTT topic name/filter validation and matching;
//! - [`trie`]: the filter → subscriber index used for fan-out;
//! - [`mountpoint`]: `${clientid}`/`${username}` topic prefixes;
//! - [`broker`]: the [`broker::Broker`] trait with an in-process
//!   implementation ([`broker::embedded`]) and an MQTT one through rumqttc
//!   ([`broker::mqtt`]);
//! - [`auth`]: the TOML authentication file (argon2/bcrypt hashes, ACL);
//! - [`psk_file`]: the DTLS `identity:secret` file;
//! - [`redact`]: keeping passwords and tokens out of logged URIs.
//!
//! What it is not for: the CoAP message layer (deduplication,
//! retransmission, block-wise, observe bookkeeping: `coap-endpoint`), DTLS
//! (`coap-dtls`), command line, metrics export and signals (the binary and
//! `gateway-kit`).
//!
//! Data flow:
//! ```text
//!  coap-endpoint Server ─request─▶ gateway::Gateway ──publish/subscribe──▶ dyn Broker ──▶ embedded trie
//!        ▲                          (auth, ACL, mount)                       │        └▶ rumqttc ─▶ MQTT broker
//!        │                                                                   ▼
//!        └── EndpointHandle::notify ◀── Gateway::run_deliveries ◀── Deliveries (per-subscriber
//!                                                                   bounded queues)
//! ```
//!
//! Using it in another service:
//! 1. [`broker::BrokerKind::from_flag`] (`--broker`) →
//!    [`broker::BrokerKind::start`] gives an `Arc<dyn Broker>` and the one
//!    [`broker::Deliveries`] receiver; optionally [`auth::AuthFile::load`].
//! 2. [`gateway::Gateway::new`] with [`gateway::GatewaySettings`]; spawn
//!    [`gateway::Gateway::run_deliveries`] and
//!    [`gateway::Gateway::run_expiry`].
//! 3. Hand each `coap_endpoint::Server` (UDP, DTLS) to
//!    [`gateway::Gateway::run_server`].
//!
//! Error mapping (one place, `gateway`): bad request → 4.00,
//! authentication/ACL → 4.01, unknown path or no retained message → 4.04,
//! wrong method → 4.05, too large → 4.13, repeated bad tokens → 4.29,
//! [`broker::BrokerError::Unavailable`] and limits → 5.03 with Max-Age,
//! [`broker::BrokerError::Down`] → 5.03 with Max-Age = time to the next
//! reconnect attempt.

pub mod auth;
pub mod broker;
pub mod gateway;
pub mod mountpoint;
pub mod psk_file;
pub mod redact;
pub mod topic;
pub mod trie;
