#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! `Peer` hashes only its address (the DTLS identity is implied by it), so
//! a plain-UDP sender and DTLS sessions under different identities at one
//! address share every hash. They must still be separate peers: a
//! duplicate is answered with its own exchange's response, never with the
//! one another identity got for the same message id.

use std::net::SocketAddr;
use std::time::Instant;

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use coap_endpoint::{Endpoint, EndpointConfig, Event, Peer};

fn request(mid: u16) -> Vec<u8> {
    Message::new(MessageType::Con, Code::POST, mid)
        .with_token(vec![7])
        .with_uri_path("ps/t")
        .to_bytes()
        .unwrap()
        .to_vec()
}

#[test]
fn peers_at_one_address_keep_their_own_exchanges() {
    let addr = SocketAddr::from(([198, 51, 100, 7], 5684));
    let peers = [
        Peer::new(addr),
        Peer::authenticated(addr, &b"device-a"[..]),
        Peer::authenticated(addr, &b"device-b"[..]),
    ];
    let mut ep = Endpoint::new(EndpointConfig::default()).unwrap();
    let now = Instant::now();
    // Every peer sends message id 42; each one is a new request.
    for (i, peer) in peers.iter().enumerate() {
        ep.handle_datagram(now, peer.clone(), &request(42));
        let Some(Event::Request(r)) = ep.poll_event() else {
            panic!("peer {i} got no request event")
        };
        assert_eq!(&r.peer, peer);
        let answer = Message::new(MessageType::Ack, Code::CHANGED, 0)
            .with_payload(format!("answer {i}").into_bytes());
        ep.respond(now, r.id, answer).unwrap();
        let sent = ep.poll_transmit().unwrap();
        assert_eq!(&sent.peer, peer);
    }
    // Each duplicate gets its own answer again, to its own peer.
    for (i, peer) in peers.iter().enumerate().rev() {
        ep.handle_datagram(now, peer.clone(), &request(42));
        assert!(ep.poll_event().is_none(), "peer {i}: duplicate delivered");
        let again = ep.poll_transmit().unwrap();
        assert_eq!(&again.peer, peer);
        let reply = Message::from_bytes(again.bytes).unwrap();
        assert_eq!(reply.message_id, 42);
        assert_eq!(&reply.payload[..], format!("answer {i}").as_bytes());
    }
    assert_eq!(ep.stats().dedup_con_hits, 3);
}
