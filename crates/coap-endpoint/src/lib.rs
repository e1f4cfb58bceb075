//! `coap-endpoint`: the CoAP message layer (RFC 7252 §4), Observe
//! (RFC 7641, server side) and block-wise transfers (RFC 7959) as a sans-IO
//! state machine, plus a thin tokio driver over a pluggable datagram
//! [`Transport`] (plain UDP here, DTLS through `coap-dtls` behind the
//! default `dtls` feature).
//!
//! **For:** services that speak CoAP over datagrams — the EMQX-style and
//! Hono-style gateways, other Rust services, tests. It deduplicates,
//! piggybacks or separates responses, retransmits, keeps observe relations
//! and does block-wise transfers, and hands the application whole requests.
//! **Not for:** resources and routing (the application's business; there is
//! a [`render_link_format`] helper for `/.well-known/core`), CoAP over
//! TCP/WebSockets, OSCORE, or a full client library (the client side does
//! what gateways and tests need: send a request, get the response).
//!
//! # Data flow
//!
//! ```text
//!  Transport::recv ─(peer, bytes)─▶ Endpoint::handle_datagram
//!                                     │ parse (MessageRef, no copies)
//!                                     │ malformed? ─▶ wire_reaction: RST / drop / 4.0x
//!                                     │ duplicate? ─▶ cached reply again
//!                                     │ Block1 ─▶ reassemble, 2.31 / 4.08 / 4.13
//!                                     │ Block2 follow-up ─▶ served from cache
//!                                     ▼
//!                          Event::Request(IncomingRequest) ──▶ application
//!                                                                   │
//!   Transport::send ◀─ poll_transmit ◀─ respond / notify / send_request
//!                        (ACK piggyback, separate CON, NON, Block2 segments,
//!                         retransmission timers via poll_timeout)
//! ```
//!
//! # Order of calls (sans-IO)
//!
//! Feed `handle_datagram` / `handle_timeout` / application calls; after
//! each, drain `poll_transmit` and `poll_event`; then sleep until
//! `poll_timeout`. See [`Endpoint`]. The [`server`] module does exactly
//! this on tokio: [`server::Server::bind`] → [`server::Server::run`] with a
//! [`server::Handler`] or a request channel, and a cloneable
//! [`server::EndpointHandle`] for notifications and outgoing requests.
#![warn(missing_docs, unreachable_pub)]

mod batch;
mod config;
mod endpoint;
mod fast_hash;
mod link_format;
mod peer;
mod random;
mod reaction;
pub mod server;
mod small_bytes;
mod stats;
pub mod transport;
mod types;

pub use batch::RecvBatch;
pub use config::{
    AckTimeout, ConfigError, EXCHANGE_LIFETIME, EndpointConfig, MAX_CONFIG_DURATION,
    MAX_TRANSMIT_WAIT, NON_LIFETIME,
};
pub use endpoint::Endpoint;
pub use link_format::{LinkResource, render_link_format};
pub use peer::Peer;
pub use reaction::{Fault, Reaction, wire_reaction};
pub use server::{
    BindError, EndpointHandle, Handler, HandlerExecution, IncomingRequestHandle, Responder, Server,
    ServerError, ServerEvent, response,
};
pub use stats::{MalformedCounts, MethodCounts, Stats};
pub use transport::{Transport, UdpTransport};
pub use types::{
    CancelReason, ClientRequestId, Event, IncomingRequest, NotifyError, RelationId, RequestFailure,
    RequestId, RespondError, SendRequestError, Transmit,
};

#[cfg(feature = "dtls")]
pub use transport::DtlsTransport;

/// Re-export of the codec this crate speaks, so applications need no
/// separate dependency to build messages.
pub use coap_codec;
