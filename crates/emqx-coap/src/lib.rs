//! `emqx-coap`: the broker side and security pieces of the EMQX-style CoAP
//! pub/sub gateway (binary `coap-emqx-gateway`, spec `emqx-mode.md`).
//!
//! What it is for:
//! - [`topic`]: MQTT topic name/filter validation and matching;
//! - [`trie`]: the filter → subscriber index used for fan-out;
//! - [`mountpoint`]: `${clientid}`/`${username}` topic prefixes;
//! - [`broker`]: the [`broker::Broker`] trait with an in-process
//!   implementation ([`broker::embedded`]) and an MQTT one through rumqttc
//!   ([`broker::mqtt`]);
//! - [`auth`]: the TOML authentication file (argon2/bcrypt hashes, ACL);
//! - [`redact`]: keeping passwords and tokens out of logged URIs.
//!
//! What it is not for: CoAP. It does not parse messages, keep observe
//! relations or know about tokens of the `mqtt/connection` resource; the CoAP
//! request handling of EMQX mode sits on top of this crate.
//!
//! Data flow:
//! ```text
//! CoAP request handler ──publish/subscribe──▶ dyn Broker ──▶ embedded trie
//!        ▲                                        │        └▶ rumqttc ─▶ MQTT broker
//!        │                                        ▼
//!        └───────── Deliveries::recv() ◀── per-subscriber bounded queues
//!                  (subscriber id, message)        ▲
//!                                                  └── MQTT PUBLISH fanned out
//!                                                      through the local trie
//! ```

//!
//! How the CoAP layer uses it:
//! 1. At start: [`broker::BrokerKind::from_flag`] (`--broker`) →
//!    [`broker::BrokerKind::start`] gives an `Arc<dyn Broker>` and the one
//!    [`broker::Deliveries`] receiver; optionally [`auth::AuthFile::load`]
//!    (`--auth-file`) and a [`mountpoint::Mountpoint`] (`--mountpoint`).
//! 2. Per request: validate with [`topic::TopicName::new`] /
//!    [`topic::TopicFilter::new`] (4.00 on error), authenticate
//!    ([`auth::AuthFile::authenticate`], in `spawn_blocking`) and authorize
//!    ([`auth::AuthFile::authorize`]), mount, then
//!    [`broker::Broker::publish`] / [`broker::Broker::subscribe`] /
//!    [`broker::Broker::unsubscribe`] / [`broker::Broker::retained`].
//!    Error mapping: [`broker::BrokerError::Unavailable`] → 5.03,
//!    `NotAuthorized` → 4.01, `TooLarge` → 4.13, `MissingClientId` → 4.00,
//!    `Limit` → 5.03, others → 5.00.
//! 3. One task loops on [`broker::Deliveries::recv`] and turns each
//!    `(subscriber, message)` into a notification of the observe relation
//!    the caller registered under that [`broker::SubscriberId`], after
//!    [`mountpoint::Mountpoint::strip`].
//! 4. On `DELETE mqtt/connection` or heartbeat expiry:
//!    [`broker::Broker::disconnect_client`] and, if wanted,
//!    [`broker::presence::publish_presence`].
//! 5. Log URIs only through [`redact::redact_uri`].

pub mod auth;
pub mod broker;
pub mod gateway;
pub mod mountpoint;
pub mod psk_file;
pub mod redact;
pub mod topic;
pub mod trie;
