//! Helpers shared by the integration tests of this workspace, for tests
//! only (a dev-dependency, never published, never linked into a binary).
//!
//! - [`net`]: free loopback ports.
//! - [`amqp`]: the RabbitMQ under test (`AMQP_URL`, failing loudly when it
//!   is not set), unique exchange prefixes, an application-side lapin client
//!   ([`amqp::App`]) and reading deliveries and their headers.
//! - [`dtls`]: a DTLS-PSK session with the workspace's own client and its
//!   first non-empty answer.
//! - [`http`]: a minimal HTTP/1.1 request (health, `/metrics`, management
//!   API).
//! - [`mqtt`]: the MQTT broker under test (`MQTT_URL`, failing loudly when
//!   it is not set), publishing with a plain rumqttc client, and a private
//!   mosquitto a test may stop and restart ([`mqtt::PrivateMosquitto`]).
//! - [`rabbit`]: a private RabbitMQ node on free ports that a test may stop
//!   and start again ([`rabbit::PrivateRabbit`]).
//! - [`process`]: collecting a child's output lines and finding the
//!   `listening what=… addr=…` lines the gateways log.
//!
//! Everything here fails loudly (panics with a message saying what is
//! missing), since its callers are tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure must stop the test with a message"
)]

pub mod amqp;
pub mod dtls;
pub mod http;
pub mod mqtt;
pub mod net;
pub mod process;
pub mod rabbit;
