#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Regression tests for bugs found by the fuzz targets (see fuzz/README.md).

use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Block, Code, ContentFormat, Message, MessageType, OptionNumber};
use coap_endpoint::{
    AckTimeout, CancelReason, ConfigError, Endpoint, EndpointConfig, Event, NotifyError, Peer,
    RelationId, RespondError,
};

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

/// Bug 3: a response that fails to encode is not cached for Block2; a CON
/// follow-up is still answered (or reaches the application).
#[test]
fn a_block2_follow_up_of_an_unencodable_response_is_answered() {
    let mut ep = Endpoint::new(config()).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let get = Message::new(MessageType::Con, Code::GET, 1)
        .with_token(&b"t"[..])
        .with_uri_path("big");
    ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("no request")
    };
    // Content-Format takes at most 2 bytes: this response cannot be encoded.
    let response = Message::new(MessageType::Ack, Code::CONTENT, 0)
        .with_option(OptionNumber::CONTENT_FORMAT, vec![1, 2, 3])
        .with_payload(vec![b'x'; 3000]);
    assert!(ep.respond(now, req.id, response).is_err());
    let first = ep.poll_transmit().expect("5.00 for block 0");
    assert_eq!(
        Message::from_bytes(first.bytes).unwrap().code,
        Code::INTERNAL_SERVER_ERROR
    );

    let follow_up = Message::new(MessageType::Con, Code::GET, 2)
        .with_token(&b"u"[..])
        .with_uri_path("big")
        .with_block2(Block {
            num: 1,
            more: false,
            szx: 6,
        });
    ep.handle_datagram(now, peer.clone(), &follow_up.to_bytes().unwrap());
    assert_eq!(ep.stats().block2_cache_hits, 0, "nothing was cached");
    let answered =
        ep.poll_transmit().is_some() || matches!(ep.poll_event(), Some(Event::Request(_)));
    assert!(
        answered,
        "a CON Block2 follow-up got neither an answer nor reached the application"
    );
}

/// Bug 3 (notify): an unencodable block-wise notification is refused and
/// leaves nothing in the Block2 cache.
#[test]
fn an_unencodable_notification_is_not_cached() {
    let mut c = config();
    c.max_block_size = 16;
    let mut ep = Endpoint::new(c).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let get = Message::new(MessageType::Con, Code::GET, 1)
        .with_token(&b"t"[..])
        .with_uri_path("obs")
        .with_observe(0);
    ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("no request")
    };
    let relation = ep
        .respond(
            now,
            req.id,
            Message::new(MessageType::Ack, Code::CONTENT, 0).with_observe(0),
        )
        .unwrap()
        .unwrap();
    while ep.poll_transmit().is_some() {}
    let bad = Message::new(MessageType::Non, Code::CONTENT, 0)
        .with_option(OptionNumber::CONTENT_FORMAT, vec![1, 2, 3])
        .with_payload(vec![b'x'; 100]);
    assert!(ep.notify(now, relation, bad, false).is_err());
    let follow_up = Message::new(MessageType::Con, Code::GET, 2)
        .with_token(&b"u"[..])
        .with_uri_path("obs")
        .with_block2(Block {
            num: 1,
            more: false,
            szx: 0,
        });
    ep.handle_datagram(now, peer, &follow_up.to_bytes().unwrap());
    assert_eq!(ep.stats().block2_cache_hits, 0);
}

/// Bug 5: a Block2 follow-up of a POST that misses the cache is answered
/// 4.08 and never handed to the application as a new (empty) POST; a GET
/// follow-up goes to the application with its Block2 option in effect.
#[test]
fn a_post_block2_follow_up_without_cache_is_not_a_new_post() {
    let mut ep = Endpoint::new(config()).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let block3 = Block {
        num: 3,
        more: false,
        szx: 0,
    };
    let follow_up = Message::new(MessageType::Con, Code::POST, 7)
        .with_token(&b"t"[..])
        .with_uri_path("ps/topic")
        .with_block2(block3);
    ep.handle_datagram(now, peer.clone(), &follow_up.to_bytes().unwrap());
    assert!(
        ep.poll_event().is_none(),
        "the POST reached the application again"
    );
    let reply = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
    assert_eq!(reply.code, Code::REQUEST_ENTITY_INCOMPLETE);
    assert_eq!(reply.message_id, 7);
    assert_eq!(ep.stats().block2_cache_misses, 1);
    assert_eq!(ep.pending_requests(), 0);

    // GET: the application answers again and the client gets block 3.
    let get = Message::new(MessageType::Con, Code::GET, 8)
        .with_token(&b"u"[..])
        .with_uri_path("big")
        .with_block2(block3);
    ep.handle_datagram(now, peer, &get.to_bytes().unwrap());
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("the GET follow-up did not reach the application")
    };
    assert!(req.message.block2().is_none());
    let body: Vec<u8> = (0..100u8).collect();
    ep.respond(
        now,
        req.id,
        Message::new(MessageType::Ack, Code::CONTENT, 0).with_payload(body),
    )
    .unwrap();
    let reply = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
    assert_eq!(reply.block2().unwrap().num, 3);
    assert_eq!(&reply.payload[..], &(48..64u8).collect::<Vec<_>>()[..]);
}

/// Bug 6: a block-wise response to an observe registration keeps the first
/// block's Observe option and the client keeps observing.
#[test]
fn a_block_wise_observe_response_keeps_observing() {
    let mk = |seed| {
        let mut c = config();
        c.rng_seed = Some(seed);
        c.max_block_size = 16;
        Endpoint::new(c).unwrap()
    };
    let (mut client, mut server) = (mk(1), mk(2));
    let cp = Peer::new("198.51.100.1:40000".parse().unwrap());
    let sp = Peer::new("198.51.100.2:5683".parse().unwrap());
    let now = Instant::now();
    let get = Message::new(MessageType::Con, Code::GET, 0)
        .with_uri_path("obs")
        .with_observe(0);
    let id = client.send_request(now, sp.clone(), get, true).unwrap();
    let mut response = None;
    let mut relation = None;
    for _ in 0..50 {
        while let Some(t) = client.poll_transmit() {
            server.handle_datagram(now, cp.clone(), &t.bytes);
        }
        while let Some(Event::Request(req)) = server.poll_event() {
            let r = Message::new(MessageType::Ack, Code::CONTENT, 0)
                .with_observe(0)
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_payload(vec![b'x'; 100]);
            if let Some(rel) = server.respond(now, req.id, r).unwrap() {
                relation = Some(rel);
            }
        }
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, sp.clone(), &t.bytes);
        }
        while let Some(e) = client.poll_event() {
            if let Event::Response {
                request,
                response: r,
                ..
            } = e
            {
                assert_eq!(request, id);
                response = Some(r);
            }
        }
    }
    let response = response.expect("a response");
    assert_eq!(response.payload.len(), 100);
    assert!(response.block2().is_none());
    assert!(
        response.observe().is_some(),
        "reassembled observe response lost its Observe option"
    );
    assert_eq!(response.content_format(), Some(ContentFormat::TEXT_PLAIN));
    // Still observing: a notification reaches the client request.
    let relation = relation.expect("relation");
    server
        .notify(
            now,
            relation,
            Message::new(MessageType::Non, Code::CONTENT, 0).with_payload(&b"n"[..]),
            false,
        )
        .unwrap();
    while let Some(t) = server.poll_transmit() {
        client.handle_datagram(now, sp.clone(), &t.bytes);
    }
    assert!(matches!(
        client.poll_event(),
        Some(Event::Response { request, .. }) if request == id
    ));
    assert!(
        client.cancel_request(id),
        "the observation ended after its first block-wise response"
    );
}

/// Bug 1: when a peer's CON queue is full, a separate response displaces
/// a queued notification rather than being refused; a final notification
/// that finds no room is refused with `QueueFull` and still ends the
/// relation.
#[test]
fn separate_responses_displace_queued_notifications_first() {
    let mut c = config();
    c.default_ack_timeout = AckTimeout::Immediately;
    c.max_queued_per_peer = 1;
    let mut ep = Endpoint::new(c).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let request = |ep: &mut Endpoint, mid: u16, observe: bool| {
        let mut get = Message::new(MessageType::Con, Code::GET, mid)
            .with_token(vec![mid as u8])
            .with_uri_path("x");
        if observe {
            get = get.with_observe(0);
        }
        ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
        while ep.poll_transmit().is_some() {}
        let Some(Event::Request(req)) = ep.poll_event() else {
            panic!("no request")
        };
        req.id
    };
    let ok = || Message::new(MessageType::Ack, Code::CONTENT, 0);
    // Relation via a separate response: it is in flight (never ACKed).
    let obs = request(&mut ep, 1, true);
    let relation = ep.respond(now, obs, ok().with_observe(0)).unwrap().unwrap();
    // A CON notification queues behind it.
    ep.notify(now, relation, ok(), true).unwrap();
    // A separate response displaces that notification.
    let second = request(&mut ep, 2, false);
    assert_eq!(ep.respond(now, second, ok()), Ok(None));
    assert_eq!(ep.stats().queue_drops, 1);
    // The next one finds the queue full of responses: refused.
    let third = request(&mut ep, 3, false);
    assert_eq!(ep.respond(now, third, ok()), Err(RespondError::QueueFull));
    assert_eq!(ep.stats().queue_drops, 2);
    assert_eq!(ep.pending_requests(), 0);
    // An observe registration refused this way makes no relation.
    let fourth = request(&mut ep, 4, true);
    assert_eq!(
        ep.respond(now, fourth, ok().with_observe(0)),
        Err(RespondError::QueueFull)
    );
    assert_eq!(ep.stats().observers, 1);
    // A final notification without room ends the relation all the same.
    let gone = Message::new(MessageType::Con, Code::NOT_FOUND, 0);
    assert_eq!(
        ep.notify(now, relation, gone, true),
        Err(NotifyError::QueueFull)
    );
    assert_eq!(ep.relation_peer(relation), None);
}

fn observe(ep: &mut Endpoint, now: Instant, peer: &Peer, mid: u16, token: &[u8]) -> RelationId {
    let get = Message::new(MessageType::Con, Code::GET, mid)
        .with_token(token.to_vec())
        .with_uri_path("obs")
        .with_observe(0);
    ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
    while ep.poll_transmit().is_some() {}
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("no request")
    };
    let response = Message::new(MessageType::Ack, Code::CONTENT, 0).with_observe(0);
    let relation = ep
        .respond(now, req.id, response)
        .unwrap()
        .expect("relation");
    while ep.poll_transmit().is_some() {}
    relation
}

fn not_rebound(ep: &mut Endpoint) -> Vec<RelationId> {
    let mut ended = Vec::new();
    while let Some(event) = ep.poll_event() {
        if let Event::ObserveCancelled {
            relation,
            reason: CancelReason::NotRebound,
            ..
        } = event
        {
            ended.push(relation);
        }
    }
    ended
}

/// Bug 4: `rebind` respects `max_relations_per_peer` at the new address;
/// the oldest relations that do not fit end with an event.
#[test]
fn rebind_respects_the_per_peer_relation_cap() {
    let mut c = config();
    c.max_relations_per_peer = 3;
    let mut ep = Endpoint::new(c).unwrap();
    let now = Instant::now();
    let a = Peer::new("192.0.2.1:5683".parse().unwrap());
    let b = Peer::new("192.0.2.2:5683".parse().unwrap());
    let a1 = observe(&mut ep, now, &a, 1, b"1");
    let a2 = observe(&mut ep, now, &a, 2, b"2");
    let b3 = observe(&mut ep, now, &b, 3, b"3");
    let b4 = observe(&mut ep, now, &b, 4, b"4");
    assert_eq!(ep.rebind(now, &a, b.clone()), 1);
    assert_eq!(not_rebound(&mut ep), vec![a1]);
    for r in [a2, b3, b4] {
        assert_eq!(ep.relation_peer(r), Some(&b));
    }
    assert_eq!(ep.relation_peer(a1), None);
    // The moved relation is reachable at b: deregistering ends it.
    let dereg = Message::new(MessageType::Con, Code::GET, 5)
        .with_token(&b"2"[..])
        .with_uri_path("obs")
        .with_observe(1);
    ep.handle_datagram(now, b.clone(), &dereg.to_bytes().unwrap());
    assert_eq!(ep.relation_peer(a2), None);
    assert_eq!(ep.stats().observers, 2);
}

/// Bug 4: a relation whose token the new address already uses is not
/// moved over the other one (it ends with an event); both stay reachable.
#[test]
fn rebind_keeps_relations_with_the_same_token_apart() {
    let mut ep = Endpoint::new(config()).unwrap();
    let now = Instant::now();
    let a = Peer::new("192.0.2.1:5683".parse().unwrap());
    let b = Peer::new("192.0.2.2:5683".parse().unwrap());
    let on_a = observe(&mut ep, now, &a, 1, b"t");
    let on_b = observe(&mut ep, now, &b, 2, b"t");
    assert_eq!(ep.rebind(now, &a, b.clone()), 0);
    assert_eq!(not_rebound(&mut ep), vec![on_a]);
    assert_eq!(ep.relation_peer(on_b), Some(&b));
    let dereg = Message::new(MessageType::Con, Code::GET, 3)
        .with_token(&b"t"[..])
        .with_uri_path("obs")
        .with_observe(1);
    ep.handle_datagram(now, b.clone(), &dereg.to_bytes().unwrap());
    let alive = [on_a, on_b]
        .iter()
        .filter(|r| ep.relation_peer(**r).is_some())
        .count();
    assert_eq!(
        alive, 0,
        "a relation with the same token became unreachable"
    );
    assert_eq!(ep.stats().observers, 0);
}

/// Found after the fixes (endpoint_sequence): an observe registration
/// answered with a response that cannot be encoded made a relation the
/// application never got, then reported it as declined.
#[test]
fn an_unencodable_observe_answer_makes_no_relation() {
    let mut ep = Endpoint::new(config()).unwrap();
    let now = Instant::now();
    let peer = Peer::new("192.0.2.1:5683".parse().unwrap());
    let get = Message::new(MessageType::Con, Code::GET, 1)
        .with_token(&b"t"[..])
        .with_uri_path("obs")
        .with_observe(0);
    ep.handle_datagram(now, peer.clone(), &get.to_bytes().unwrap());
    let Some(Event::Request(req)) = ep.poll_event() else {
        panic!("no request")
    };
    let bad = Message::new(MessageType::Ack, Code::CONTENT, 0)
        .with_observe(0)
        .with_option(OptionNumber::CONTENT_FORMAT, vec![1, 2, 3]);
    assert!(matches!(
        ep.respond(now, req.id, bad),
        Err(RespondError::Encode(_))
    ));
    assert!(
        ep.poll_event().is_none(),
        "event for a relation never handed out"
    );
    assert_eq!(ep.stats().observers, 0);
    let reply = Message::from_bytes(ep.poll_transmit().unwrap().bytes).unwrap();
    assert_eq!(reply.code, Code::INTERNAL_SERVER_ERROR);
    assert!(reply.observe().is_none());
}

/// Bug found by `endpoint_sequence` in CI mode: an ACK that acknowledges a
/// client CON by its message id but carries another token took the CON out
/// of flight without arming the response deadline, so the request never
/// completed. It now counts as an empty ACK: the request waits for a
/// separate response and fails with a timeout when none comes.
#[test]
fn an_ack_with_a_foreign_token_leaves_the_request_under_its_deadline() {
    let mut client = Endpoint::new(config()).unwrap();
    let server = Peer::new("198.51.100.2:5683".parse().unwrap());
    let now = Instant::now();
    let get = Message::new(MessageType::Con, Code::GET, 0).with_uri_path("x");
    let id = client.send_request(now, server.clone(), get, true).unwrap();
    let sent = Message::from_bytes(client.poll_transmit().unwrap().bytes).unwrap();
    let mut foreign = sent.token.to_vec();
    match foreign.first_mut() {
        Some(byte) => *byte ^= 0xff,
        None => foreign.push(0x5a),
    }
    let ack = Message::new(MessageType::Ack, Code::CONTENT, sent.message_id)
        .with_token(foreign)
        .with_payload(&b"not yours"[..]);
    client.handle_datagram(now, server, &ack.to_bytes().unwrap());
    assert!(
        client.poll_event().is_none(),
        "a foreign response was delivered"
    );
    let mut at = now;
    for _ in 0..100 {
        let Some(next) = client.poll_timeout() else {
            break;
        };
        at = at.max(next);
        client.handle_timeout(at);
    }
    assert!(
        client.poll_transmit().is_none(),
        "retransmitted after the ACK"
    );
    match client.poll_event() {
        Some(Event::RequestFailed { request, .. }) => assert_eq!(request, id),
        other => panic!("expected the request to time out, got {other:?}"),
    }
}
