//! Shared harness for the fault-injection tests in `tests/`: it runs the
//! real gateway binaries as child processes, puts a lossy UDP link between
//! them and CoAP clients, starts and `kill -9`s private brokers, and counts
//! what was sent, acknowledged, delivered and duplicated.
//!
//! **For:** black-box reliability tests of `coap-emqx-gateway` and
//! `coap-hono-adapter`. **Not for:** production code; a harness failure is a
//! test failure, so this crate panics freely (see the lint allowance below).
//!
//! ```text
//!  CoapClient ──UDP──▶ LossyLink (seeded: drop, duplicate, delay, reorder) ──▶ gateway process
//!                                                                                 │
//!  Tally ◀── MqttWitness / AMQP consumer ◀── private or shared broker ◀───────────┘
//! ```
// A test harness: panicking is how it reports a broken expectation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod binaries;
pub mod brokers;
pub mod coap_client;
pub mod hono_registry;
pub mod load;
pub mod lossy_link;
pub mod process;
pub mod tally;
pub mod temp_file;

pub use binaries::gateway_binary;
pub use brokers::{MqttWitness, PrivateMosquitto, PrivateRabbit, amqp_url, drain_queue, mqtt_url};
pub use coap_client::{CoapClient, Exchange, RetryPolicy};
pub use load::{Load, MakeRequest};
pub use lossy_link::{LinkConfig, LinkStats, LossyLink};
pub use process::GatewayProcess;
pub use tally::{Figures, Tally};
pub use temp_file::{TempFile, temp_file};

/// A string no other test (or run) uses, for topic and exchange prefixes.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
