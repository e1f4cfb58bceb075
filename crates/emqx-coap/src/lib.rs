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

pub mod auth;
pub mod broker;
pub mod mountpoint;
pub mod redact;
pub mod topic;
pub mod trie;
