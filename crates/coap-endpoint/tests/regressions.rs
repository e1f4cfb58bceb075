#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Regression tests for bugs found by the fuzz targets (see fuzz/README.md).

use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use coap_endpoint::{AckTimeout, ConfigError, Endpoint, EndpointConfig, Event, Peer};

fn config() -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = Some(1);
    c
}

/// Bug 7: durations for which `now + d` overflows `Instant` are refused by
/// `Endpoint::new`, and an application's huge ack timeout does not panic.
#[test]
fn huge_lifetimes_are_refused_or_harmless() {
    let mut c = config();
    c.exchange_lifetime = Duration::MAX;
    assert!(matches!(
        Endpoint::new(c),
        Err(ConfigError::DurationTooLong("exchange_lifetime"))
    ));
    let mut c = config();
    c.max_retransmit = u32::MAX;
    assert!(matches!(
        Endpoint::new(c),
        Err(ConfigError::MaxRetransmit(_))
    ));

    let mut ep = Endpoint::new(config()).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let get = Message::new(MessageType::Con, Code::GET, 1).with_uri_path("x");
    ep.handle_datagram(now, peer, &get.to_bytes().unwrap());
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("no request")
    };
    ep.set_ack_timeout(now, req.id, AckTimeout::After(Duration::MAX))
        .unwrap();
    ep.handle_timeout(now + Duration::from_secs(10));
    assert!(
        ep.poll_transmit().is_none(),
        "no early ACK for a never-ending timeout"
    );
    ep.respond(
        now,
        req.id,
        Message::new(MessageType::Ack, Code::CONTENT, 0),
    )
    .unwrap();
    let ack = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
    assert_eq!(ack.mtype, MessageType::Ack);
    assert_eq!(ack.code, Code::CONTENT);
}
