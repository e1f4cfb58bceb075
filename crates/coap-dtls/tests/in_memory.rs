//! Client and server exchanging datagrams through an in-memory harness: no
//! sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::time::Duration;

use coap_dtls::{ClientEvent, CloseReason, ServerEvent};
use support::*;

#[test]
fn handshake_and_data_both_ways() {
    let mut h = Harness::new(server_config());
    let connector = connector(IDENTITY, KEY);
    let mut client = h.peer(addr(1), &connector);
    h.pump(&mut [&mut client]);
    assert!(client.session.is_established(), "client events: {:?}", client.events);
    assert!(client.events.contains(&ClientEvent::Connected));
    let stats = h.server.stats();
    assert_eq!(stats.hello_verify_requests_sent, 1);
    assert_eq!(stats.handshakes_started, 1);
    assert_eq!(stats.handshakes_completed, 1);
    assert_eq!(stats.sessions, 1);
    assert_eq!(stats.handshakes_in_progress, 0);
    assert!(matches!(
        &h.server_events[0],
        ServerEvent::SessionEstablished { peer, identity } if *peer == addr(1) && identity.as_ref() == IDENTITY
    ));

    client.session.send(b"hello server").unwrap();
    h.collect_client(&mut client);
    h.pump(&mut [&mut client]);
    let data = data_events(&h.server_events);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0, addr(1));
    assert_eq!(data[0].1.as_ref(), IDENTITY);
    assert_eq!(data[0].2.as_ref(), b"hello server");

    h.server.send(std::time::Instant::now(), addr(1), b"hello client").unwrap();
    h.collect_server(&mut [&mut client]);
    h.pump(&mut [&mut client]);
    assert_eq!(client_data(&client.events), vec![bytes::Bytes::from_static(b"hello client")]);
}
