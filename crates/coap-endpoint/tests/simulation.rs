#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Message layer behaviour in virtual time: two endpoints over a simulated
//! link, or one endpoint against a scripted peer.

mod support;

use std::time::Duration;

use bytes::Bytes;
use coap_endpoint::coap_codec::{Block, Code, Message, MessageType, OptionNumber};
use coap_endpoint::{AckTimeout, CancelReason, Event, Peer, RequestFailure, response};
use support::{Dir, LinkConfig, Script, Sim, config};

fn get(path: &str) -> Message {
    Message::new(MessageType::Con, Code::GET, 0).with_uri_path(path)
}

fn responses(events: &[Event]) -> Vec<Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Response { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

fn echo_auto(sim: &mut Sim) {
    sim.auto = Some(Box::new(|req| {
        Some(response(Code::CONTENT).with_payload(req.message.payload.clone()))
    }));
}

// ---------------------------------------------------------------------------
// Retransmission
// ---------------------------------------------------------------------------

#[test]
fn con_retransmission_schedule_doubles_within_bounds_and_gives_up() {
    for seed in 0..20 {
        let link = LinkConfig {
            drop_to_server: 1.0,
            ..LinkConfig::default()
        };
        let mut sim = Sim::with_seed(seed, link);
        let id = sim
            .client
            .send_request(sim.now, sim.server_peer.clone(), get("x"), true)
            .unwrap();
        let failed_in_time = sim.run_until(Duration::from_secs(200), |s| {
            s.client_events
                .iter()
                .any(|e| matches!(e, Event::RequestFailed { .. }))
        });
        assert!(failed_in_time);
        let gave_up_at = sim.elapsed().as_secs_f64();
        sim.run_for(Duration::from_secs(100));
        let sent = sim.sent(Dir::ToServer);
        assert_eq!(sent.len(), 5, "1 transmission + MAX_RETRANSMIT 4");
        let mid = sent[0].message.message_id;
        assert!(
            sent.iter().all(|s| s.message.message_id == mid),
            "same message id"
        );
        let gaps: Vec<f64> = sent
            .windows(2)
            .map(|w| (w[1].at - w[0].at).as_secs_f64())
            .collect();
        let first = gaps[0];
        assert!(
            (2.0..=3.0).contains(&first),
            "initial timeout {first} in [2, 3]"
        );
        for (i, gap) in gaps.iter().enumerate() {
            let expected = first * f64::from(1u32 << i);
            assert!(
                (gap - expected).abs() < 1e-3,
                "gap {i}: {gap} vs {expected}"
            );
        }
        let failed: Vec<_> = sim
            .client_events
            .iter()
            .filter_map(|e| match e {
                Event::RequestFailed { request, reason } => Some((*request, *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(failed, vec![(id, RequestFailure::Timeout)]);
        // Gives up 16 * T0 after the last retransmission: 31 * T0 in total.
        assert!(
            (gave_up_at - 31.0 * first).abs() < 1e-3,
            "gave up at {gave_up_at}, T0 {first}"
        );
        assert_eq!(sim.client.stats().give_ups, 1);
        assert_eq!(sim.client.stats().retransmissions, 4);
    }
}

#[test]
fn nstart_one_queues_a_second_con_to_the_same_peer() {
    let mut server = config(4);
    server.default_ack_timeout = AckTimeout::Never;
    let mut sim = Sim::new(config(3), server, LinkConfig::default(), 3);
    let a = sim
        .client
        .send_request(sim.now, sim.server_peer.clone(), get("a"), true)
        .unwrap();
    let b = sim
        .client
        .send_request(sim.now, sim.server_peer.clone(), get("b"), true)
        .unwrap();
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.sent(Dir::ToServer).len(), 1, "only one CON outstanding");
    assert_eq!(sim.server_requests.len(), 1);
    let first = sim.server_requests.pop().unwrap();
    sim.server
        .respond(sim.now, first.id, response(Code::CONTENT))
        .unwrap();
    sim.run_for(Duration::from_millis(500));
    assert_eq!(
        sim.sent(Dir::ToServer).len(),
        2,
        "the second goes once the first is answered"
    );
    let second = sim.server_requests.pop().unwrap();
    sim.server
        .respond(sim.now, second.id, response(Code::CONTENT))
        .unwrap();
    sim.run_for(Duration::from_millis(500));
    let ids: Vec<_> = sim
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Response { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![a, b]);
}

// ---------------------------------------------------------------------------
// Deduplication
// ---------------------------------------------------------------------------

#[test]
fn duplicate_con_gets_the_cached_response_and_reaches_the_app_once() {
    let mut s = Script::new(config(1));
    let request = Message::new(MessageType::Con, Code::POST, 0x1234)
        .with_token(&b"tk"[..])
        .with_uri_path("echo")
        .with_payload(&b"hello"[..]);
    assert!(s.send(&request).is_empty());
    let r = s.request();
    s.ep.respond(
        s.now,
        r.id,
        response(Code::CHANGED).with_payload(&b"ok"[..]),
    )
    .unwrap();
    let first = s.transmits();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].mtype, MessageType::Ack);
    assert_eq!(first[0].message_id, 0x1234);
    s.advance(Duration::from_secs(100));
    let again = s.send(&request);
    assert_eq!(again, first, "the cached response, byte for byte");
    assert!(s.events().is_empty(), "not handed to the app again");
    assert_eq!(s.ep.stats().dedup_con_hits, 1);
    // After EXCHANGE_LIFETIME the id is forgotten: a new request.
    s.advance(Duration::from_secs(150));
    assert!(s.send(&request).is_empty());
    assert_eq!(s.events().len(), 1);
}

#[test]
fn duplicate_con_before_the_answer_gets_nothing_or_the_empty_ack() {
    let mut cfg = config(1);
    cfg.default_ack_timeout = AckTimeout::After(Duration::from_secs(1));
    let mut s = Script::new(cfg);
    let request = Message::new(MessageType::Con, Code::GET, 7).with_token(&b"t"[..]);
    s.send(&request);
    let _r = s.request();
    assert!(s.send(&request).is_empty(), "no ACK sent yet: nothing");
    let sent = s.advance(Duration::from_secs(1));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, Message::empty_ack(7));
    assert_eq!(
        s.send(&request),
        vec![Message::empty_ack(7)],
        "the empty ACK again"
    );
}

#[test]
fn duplicate_non_is_dropped_within_non_lifetime() {
    let mut s = Script::new(config(1));
    let request = Message::new(MessageType::Non, Code::GET, 99).with_token(&b"n"[..]);
    s.send(&request);
    assert_eq!(s.events().len(), 1);
    s.advance(Duration::from_secs(100));
    assert!(s.send(&request).is_empty());
    assert!(s.events().is_empty());
    assert_eq!(s.ep.stats().dedup_non_hits, 1);
    s.advance(Duration::from_secs(200));
    s.send(&request);
    assert_eq!(s.events().len(), 1, "after NON_LIFETIME it is new");
}

#[test]
fn dedup_memory_is_bounded_per_peer_and_globally() {
    let mut cfg = config(1);
    cfg.max_dedup_per_peer = 10;
    cfg.max_dedup_total = 25;
    let mut s = Script::new(cfg);
    for mid in 0..40u16 {
        s.send(&Message::new(MessageType::Non, Code::GET, mid));
    }
    assert_eq!(s.ep.stats().dedup_entries, 10);
    assert_eq!(s.ep.stats().dedup_evictions, 30);
    for port in 0..5u16 {
        s.peer = Peer::new(support::addr(1000 + port));
        for mid in 0..10u16 {
            s.send(&Message::new(MessageType::Non, Code::GET, mid));
        }
    }
    assert!(s.ep.stats().dedup_entries <= 25);
}

// ---------------------------------------------------------------------------
// Piggybacked and separate responses
// ---------------------------------------------------------------------------

#[test]
fn piggybacked_response_end_to_end() {
    let mut sim = Sim::with_seed(5, LinkConfig::default());
    echo_auto(&mut sim);
    let request = Message::new(MessageType::Con, Code::POST, 0)
        .with_uri_path("echo")
        .with_payload(&b"hi"[..]);
    sim.client
        .send_request(sim.now, sim.server_peer.clone(), request, true)
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let to_client = sim.sent(Dir::ToClient);
    assert_eq!(to_client.len(), 1);
    assert_eq!(to_client[0].message.mtype, MessageType::Ack);
    assert_eq!(
        to_client[0].message.message_id,
        sim.sent(Dir::ToServer)[0].message.message_id
    );
    let got = responses(&sim.client_events);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"hi");
}

#[test]
fn separate_response_after_ack_timeout_is_a_con_acked_by_the_client() {
    let mut sim = Sim::with_seed(6, LinkConfig::default());
    let id = sim
        .client
        .send_request(sim.now, sim.server_peer.clone(), get("slow"), true)
        .unwrap();
    sim.run_for(Duration::from_secs(5));
    // The default ack timeout (1 s) sent an empty ACK; the client stopped retransmitting.
    let acks = sim.sent_of(Dir::ToClient, MessageType::Ack);
    assert_eq!(acks.len(), 1);
    assert!(acks[0].message.code.is_empty());
    assert!(
        (acks[0].at.as_secs_f64() - 1.01).abs() < 0.02,
        "{:?}",
        acks[0].at
    );
    assert_eq!(sim.sent(Dir::ToServer).len(), 1);
    let req = sim.server_requests.pop().unwrap();
    sim.server
        .respond(
            sim.now,
            req.id,
            response(Code::CONTENT).with_payload(&b"late"[..]),
        )
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let cons = sim.sent_of(Dir::ToClient, MessageType::Con);
    assert_eq!(cons.len(), 1, "separate response is a CON");
    let client_acks = sim.sent_of(Dir::ToServer, MessageType::Ack);
    assert_eq!(client_acks.len(), 1);
    assert_eq!(
        client_acks[0].message.message_id,
        cons[0].message.message_id
    );
    let got = responses(&sim.client_events);
    assert_eq!(&got[0].payload[..], b"late");
    assert!(matches!(sim.client_events[0], Event::Response { request, .. } if request == id));
    sim.run_for(Duration::from_secs(60));
    assert_eq!(
        sim.sent_of(Dir::ToClient, MessageType::Con).len(),
        1,
        "no retransmission after ACK"
    );
}

#[test]
fn separate_response_is_retransmitted_until_acked() {
    let mut cfg = config(1);
    cfg.default_ack_timeout = AckTimeout::Immediately;
    let mut s = Script::new(cfg);
    s.send(&Message::new(MessageType::Con, Code::GET, 1).with_token(&b"a"[..]));
    assert_eq!(s.transmits().len(), 0);
    let r = s.request();
    s.ep.respond(s.now, r.id, response(Code::CONTENT)).unwrap();
    let sent = s.transmits();
    assert_eq!(sent[0].mtype, MessageType::Con);
    let retrans = s.advance(Duration::from_secs(10));
    assert!(!retrans.is_empty());
    assert!(
        retrans
            .iter()
            .all(|(_, m)| m.message_id == sent[0].message_id)
    );
    s.send(&Message::empty_ack(sent[0].message_id));
    assert!(s.advance(Duration::from_secs(100)).is_empty());
}

#[test]
fn immediate_ack_when_the_request_says_zero() {
    let mut s = Script::new(config(1));
    s.send(&Message::new(MessageType::Con, Code::POST, 10).with_token(&b"a"[..]));
    let r = s.request();
    s.ep.set_ack_timeout(s.now, r.id, AckTimeout::from_millis(0))
        .unwrap();
    assert_eq!(s.transmits(), vec![Message::empty_ack(10)]);
}

#[test]
fn never_ack_early_keeps_piggybacking() {
    let mut s = Script::new(config(1));
    let request = Message::new(MessageType::Con, Code::POST, 11).with_token(&b"a"[..]);
    s.send(&request);
    let r = s.request();
    s.ep.set_ack_timeout(s.now, r.id, AckTimeout::from_millis(-1))
        .unwrap();
    assert!(
        s.advance(Duration::from_secs(30)).is_empty(),
        "no empty ACK ever"
    );
    assert!(
        s.send(&request).is_empty(),
        "a retransmission meanwhile gets nothing"
    );
    s.ep.respond(s.now, r.id, response(Code::CHANGED)).unwrap();
    let sent = s.transmits();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mtype, MessageType::Ack);
    assert_eq!(sent[0].message_id, 11);
    assert_eq!(sent[0].code, Code::CHANGED);
}

#[test]
fn custom_ack_timeout_counts_from_arrival() {
    let mut s = Script::new(config(1));
    s.send(&Message::new(MessageType::Con, Code::POST, 12).with_token(&b"a"[..]));
    let r = s.request();
    s.ep.set_ack_timeout(s.now, r.id, AckTimeout::from_millis(300))
        .unwrap();
    let sent = s.advance(Duration::from_secs(2));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, Duration::from_millis(300));
}

#[test]
fn non_request_gets_non_response_with_fresh_message_id() {
    let mut s = Script::new(config(1));
    s.send(&Message::new(MessageType::Non, Code::GET, 500).with_token(&b"q"[..]));
    let r = s.request();
    s.ep.respond(s.now, r.id, response(Code::CONTENT)).unwrap();
    let sent = s.transmits();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mtype, MessageType::Non);
    assert_ne!(sent[0].message_id, 500);
    assert_eq!(&sent[0].token[..], b"q");
}

#[test]
fn ack_and_rst_for_unknown_message_ids_are_ignored() {
    let mut s = Script::new(config(1));
    assert!(s.send(&Message::empty_ack(77)).is_empty());
    assert!(s.send(&Message::reset(78)).is_empty());
    assert!(s.events().is_empty());
}

#[test]
fn unknown_response_code_is_ignored() {
    let mut s = Script::new(config(1));
    let odd = Message::new(MessageType::Con, Code::new(2, 20), 5).with_token(&b"x"[..]);
    assert!(s.send(&odd).is_empty());
    assert_eq!(s.ep.stats().malformed.unknown_response, 1);
}

// ---------------------------------------------------------------------------
// Observe (server side)
// ---------------------------------------------------------------------------

fn register(s: &mut Script, token: &[u8], mid: u16) -> coap_endpoint::RelationId {
    let reg = Message::new(MessageType::Con, Code::GET, mid)
        .with_token(Bytes::copy_from_slice(token))
        .with_uri_path("obs")
        .with_observe(0);
    s.send(&reg);
    let r = s.request();
    assert!(r.observe_registration);
    let relation =
        s.ep.respond(
            s.now,
            r.id,
            response(Code::CONTENT)
                .with_observe(0)
                .with_payload(&b"v0"[..]),
        )
        .unwrap()
        .expect("relation established");
    let sent = s.transmits();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].observe().is_some());
    relation
}

fn notification(payload: &str) -> Message {
    response(Code::CONTENT).with_payload(payload.as_bytes().to_vec())
}

#[test]
fn registration_needs_the_apps_observe_answer() {
    let mut s = Script::new(config(1));
    let reg = Message::new(MessageType::Con, Code::GET, 1)
        .with_token(&b"t1"[..])
        .with_uri_path("obs")
        .with_observe(0);
    s.send(&reg);
    let r = s.request();
    let relation = s.ep.respond(s.now, r.id, response(Code::CONTENT)).unwrap();
    assert!(relation.is_none(), "no Observe in the answer: no relation");
    assert!(s.transmits()[0].observe().is_none());
    // No token: not a registration.
    s.send(
        &Message::new(MessageType::Con, Code::GET, 2)
            .with_uri_path("obs")
            .with_observe(0),
    );
    assert!(!s.request().observe_registration);
    assert_eq!(s.ep.stats().observers, 0);
}

#[test]
fn notifications_carry_strictly_increasing_sequence_numbers() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    let mut last = None;
    for i in 0..10 {
        s.ep.notify(s.now, relation, notification(&format!("v{i}")), false)
            .unwrap();
        for m in s.transmits() {
            if m.mtype == MessageType::Con {
                s.send(&Message::empty_ack(m.message_id));
            }
            assert_eq!(&m.token[..], b"tok");
            let seq = m.observe().unwrap();
            if let Some(prev) = last {
                assert!(coap_endpoint::coap_codec::option_value::observe::is_newer(
                    prev, seq
                ));
                assert_eq!(seq, (prev + 1) % (1 << 24));
            }
            last = Some(seq);
        }
    }
}

#[test]
fn deregistration_with_observe_one_ends_the_relation() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    let dereg = Message::new(MessageType::Con, Code::GET, 2)
        .with_token(&b"tok"[..])
        .with_uri_path("obs")
        .with_observe(1);
    s.send(&dereg);
    let events = s.events();
    assert!(events.iter().any(|e| matches!(e,
        Event::ObserveCancelled { relation: r, reason: CancelReason::Deregistered, .. } if *r == relation)));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Request(r) if !r.observe_registration)),
        "the GET itself is still answered by the app"
    );
    assert!(
        s.ep.notify(s.now, relation, notification("x"), false)
            .is_err()
    );
    assert_eq!(s.ep.stats().observers, 0);
}

#[test]
fn rst_to_a_notification_ends_the_relation() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("a"), true)
        .unwrap();
    let sent = s.transmits();
    assert_eq!(sent[0].mtype, MessageType::Con);
    s.send(&Message::reset(sent[0].message_id));
    assert!(s.events().iter().any(|e| matches!(
        e,
        Event::ObserveCancelled {
            reason: CancelReason::Reset,
            ..
        }
    )));
    assert!(
        s.advance(Duration::from_secs(100)).is_empty(),
        "no retransmission after RST"
    );

    // Also for a NON notification.
    let relation = register(&mut s, b"tok2", 3);
    s.ep.notify(s.now, relation, notification("b"), false)
        .unwrap();
    let sent = s.transmits();
    assert_eq!(sent[0].mtype, MessageType::Non);
    s.send(&Message::reset(sent[0].message_id));
    assert!(s.events().iter().any(|e| matches!(
        e,
        Event::ObserveCancelled {
            reason: CancelReason::Reset,
            ..
        }
    )));
}

#[test]
fn con_notification_timeout_ends_the_relation() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("a"), true)
        .unwrap();
    s.transmits();
    let retrans = s.advance(Duration::from_secs(100));
    assert_eq!(retrans.len(), 4);
    let events = s.events();
    assert!(events.iter().any(|e| matches!(e,
        Event::ObserveCancelled { relation: r, reason: CancelReason::Timeout, .. } if *r == relation)));
    assert_eq!(s.ep.stats().observers, 0);
}

#[test]
fn newer_notification_replaces_the_unacknowledged_one() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("old"), true)
        .unwrap();
    let first = s.transmits();
    assert_eq!(first.len(), 1);
    s.ep.notify(s.now, relation, notification("new"), true)
        .unwrap();
    s.ep.notify(s.now, relation, notification("newest"), false)
        .unwrap();
    assert!(
        s.transmits().is_empty(),
        "not queued behind nor sent beside the old one"
    );
    let retrans = s.advance(Duration::from_secs(4));
    assert_eq!(retrans.len(), 1);
    let (_, m) = &retrans[0];
    assert_eq!(&m.payload[..], b"newest");
    assert!(m.observe().unwrap() > first[0].observe().unwrap());
    assert_eq!(m.mtype, MessageType::Con);
    s.send(&Message::empty_ack(m.message_id));
    assert!(
        s.advance(Duration::from_secs(100)).is_empty(),
        "old one never sent again"
    );
}

#[test]
fn ack_of_the_old_notification_sends_the_replacement_at_once() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("old"), true)
        .unwrap();
    let first = s.transmits();
    s.ep.notify(s.now, relation, notification("new"), true)
        .unwrap();
    let sent = s.send(&Message::empty_ack(first[0].message_id));
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].payload[..], b"new");
}

#[test]
fn error_notification_ends_the_relation_and_is_still_delivered() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("a"), true)
        .unwrap();
    let first = s.transmits();
    // While "a" is unacknowledged the resource goes away: 4.04 ends the relation.
    s.ep.notify(s.now, relation, response(Code::NOT_FOUND), false)
        .unwrap();
    assert_eq!(s.ep.stats().observers, 0);
    assert!(
        s.ep.notify(s.now, relation, notification("b"), false)
            .is_err()
    );
    let next = s.send(&Message::empty_ack(first[0].message_id));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].code, Code::NOT_FOUND);
    assert_eq!(
        next[0].mtype,
        MessageType::Con,
        "the final notification is confirmable"
    );
    assert!(next[0].observe().is_none(), "and carries no Observe option");
    assert_eq!(&next[0].token[..], b"tok");
    assert!(s.events().is_empty(), "the application ended it: no event");
}

#[test]
fn every_nth_notification_is_confirmable() {
    let mut cfg = config(1);
    cfg.observe_con_every = 3;
    let mut s = Script::new(cfg);
    let relation = register(&mut s, b"tok", 1);
    let mut types = Vec::new();
    for i in 0..9 {
        s.ep.notify(s.now, relation, notification(&i.to_string()), false)
            .unwrap();
        for m in s.transmits() {
            types.push(m.mtype);
            if m.mtype == MessageType::Con {
                s.send(&Message::empty_ack(m.message_id));
            }
        }
    }
    use MessageType::{Con, Non};
    assert_eq!(types, vec![Non, Non, Con, Non, Non, Con, Non, Non, Con]);
}

#[test]
fn a_confirmable_notification_at_least_every_24_hours() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(s.now, relation, notification("a"), false)
        .unwrap();
    assert_eq!(s.transmits()[0].mtype, MessageType::Non);
    s.advance(Duration::from_secs(24 * 3600));
    s.ep.notify(s.now, relation, notification("b"), false)
        .unwrap();
    assert_eq!(s.transmits()[0].mtype, MessageType::Con);
}

#[test]
fn per_peer_notification_queue_is_bounded_dropping_the_oldest() {
    let mut cfg = config(1);
    cfg.max_queued_per_peer = 2;
    let mut s = Script::new(cfg);
    let relations: Vec<_> = (0..5u8)
        .map(|i| register(&mut s, &[b'r', i], u16::from(i) + 1))
        .collect();
    for (i, r) in relations.iter().enumerate() {
        s.ep.notify(s.now, *r, notification(&format!("n{i}")), true)
            .unwrap();
    }
    let sent = s.transmits();
    assert_eq!(sent.len(), 1, "NSTART 1");
    assert_eq!(s.ep.stats().queue_drops, 2);
    // ACK one by one: the two newest queued ones follow (n3, n4), n1/n2 were dropped.
    let mut payloads = vec![sent[0].payload.clone()];
    let mut current = sent[0].message_id;
    for _ in 0..2 {
        let next = s.send(&Message::empty_ack(current));
        assert_eq!(next.len(), 1);
        payloads.push(next[0].payload.clone());
        current = next[0].message_id;
    }
    assert!(s.send(&Message::empty_ack(current)).is_empty());
    assert_eq!(
        payloads,
        vec![Bytes::from("n0"), Bytes::from("n3"), Bytes::from("n4")]
    );
}

#[test]
fn rebind_moves_relations_to_the_new_address() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    let old = s.peer.clone();
    let new = Peer::new(support::addr(40001));
    assert_eq!(s.ep.rebind(s.now, &old, new.clone()), 1);
    assert_eq!(s.ep.relation_peer(relation), Some(&new));
    s.ep.notify(s.now, relation, notification("moved"), false)
        .unwrap();
    let sent = s.transmits_to();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, new);
    // Deregistration now comes from the new address.
    s.peer = new;
    s.send(
        &Message::new(MessageType::Con, Code::GET, 9)
            .with_token(&b"tok"[..])
            .with_observe(1),
    );
    assert!(
        s.events()
            .iter()
            .any(|e| matches!(e, Event::ObserveCancelled { .. }))
    );
}

#[test]
fn observe_end_to_end_with_loss() {
    let link = LinkConfig {
        drop_to_client: 0.2,
        drop_to_server: 0.2,
        ..LinkConfig::default()
    };
    let mut sim = Sim::with_seed(11, link);
    let reg = get("obs").with_observe(0);
    let id = sim
        .client
        .send_request(sim.now, sim.server_peer.clone(), reg, true)
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s.server_requests.is_empty()));
    let r = sim.server_requests.pop().unwrap();
    let relation = sim
        .server
        .respond(
            sim.now,
            r.id,
            response(Code::CONTENT)
                .with_observe(0)
                .with_payload(&b"0"[..]),
        )
        .unwrap()
        .unwrap();
    for i in 1..=10 {
        sim.run_for(Duration::from_secs(5));
        sim.server
            .notify(sim.now, relation, notification(&i.to_string()), true)
            .unwrap();
    }
    sim.run_for(Duration::from_secs(120));
    let got = responses(&sim.client_events);
    assert!(
        sim.client_events
            .iter()
            .all(|e| matches!(e, Event::Response { request, .. } if *request == id))
    );
    // The last notification always arrives (newer ones replace older ones).
    assert_eq!(&got.last().unwrap().payload[..], b"10");
    let seqs: Vec<u32> = got.iter().map(|m| m.observe().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    // Client cancels locally: the next notification is answered with RST.
    sim.client.cancel_request(id);
    sim.server
        .notify(sim.now, relation, notification("bye"), true)
        .unwrap();
    sim.link.drop_to_client = 0.0;
    sim.link.drop_to_server = 0.0;
    sim.run_for(Duration::from_secs(100));
    assert!(sim.server_events.iter().any(|e| matches!(
        e,
        Event::ObserveCancelled {
            reason: CancelReason::Reset,
            ..
        }
    )));
}

// ---------------------------------------------------------------------------
// Block-wise
// ---------------------------------------------------------------------------

fn body(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

#[test]
fn block1_upload_client_to_server_reassembles_the_body() {
    let mut client = config(1);
    client.max_block_size = 64;
    let mut sim = Sim::new(client, config(2), LinkConfig::default(), 1);
    sim.auto = Some(Box::new(|req| {
        Some(
            response(Code::CHANGED)
                .with_payload(req.message.payload.len().to_string().into_bytes()),
        )
    }));
    let payload = body(1000);
    let request = Message::new(MessageType::Con, Code::POST, 0)
        .with_uri_path("up")
        .with_payload(payload);
    sim.client
        .send_request(sim.now, sim.server_peer.clone(), request, true)
        .unwrap();
    sim.run_for(Duration::from_secs(5));
    let got = responses(&sim.client_events);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"1000");
    let blocks = sim.sent(Dir::ToServer);
    assert_eq!(blocks.len(), 16, "1000 bytes in 64-byte blocks");
    let continues = sim
        .wire
        .iter()
        .filter(|s| s.message.code == Code::CONTINUE)
        .count();
    assert_eq!(continues, 15);
    assert_eq!(sim.server.stats().block1_transfers, 1);
    let last = &sim.sent(Dir::ToClient)[15].message;
    assert_eq!(
        last.block1().unwrap(),
        Block {
            num: 15,
            more: false,
            szx: 2
        }
    );
}

#[test]
fn block2_download_server_to_client_with_early_negotiation() {
    let mut sim = Sim::with_seed(2, LinkConfig::default());
    let large = body(5000);
    let served = large.clone();
    sim.auto = Some(Box::new(move |_| {
        Some(response(Code::CONTENT).with_payload(served.clone()))
    }));
    // Early negotiation: the client asks for 128-byte blocks.
    let request = get("large").with_block2(Block {
        num: 0,
        more: false,
        szx: 3,
    });
    sim.client
        .send_request(sim.now, sim.server_peer.clone(), request, true)
        .unwrap();
    sim.run_for(Duration::from_secs(10));
    let got = responses(&sim.client_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, large);
    let blocks = sim.sent(Dir::ToClient);
    assert_eq!(blocks.len(), 40);
    assert!(blocks.iter().all(|b| b.message.block2().unwrap().szx == 3));
    assert_eq!(blocks[0].message.size2(), Some(5000));
    assert_eq!(sim.server_requests.len(), 0);
    assert_eq!(
        sim.server.stats().block2_cache_hits,
        39,
        "follow-ups served from the cache"
    );
}

#[test]
fn block1_and_block2_both_directions_over_a_lossy_link() {
    let mut client = config(7);
    client.max_block_size = 256;
    let link = LinkConfig {
        drop_to_client: 0.15,
        drop_to_server: 0.15,
        duplicate: 0.1,
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(client, config(8), link, 7);
    sim.auto = Some(Box::new(|req| {
        let mut reversed = req.message.payload.to_vec();
        reversed.reverse();
        Some(response(Code::CHANGED).with_payload(reversed))
    }));
    let payload = body(3000);
    let request = Message::new(MessageType::Con, Code::PUT, 0)
        .with_uri_path("rev")
        .with_payload(payload.clone());
    sim.client
        .send_request(sim.now, sim.server_peer.clone(), request, true)
        .unwrap();
    sim.run_for(Duration::from_secs(600));
    // Deterministic seed: with 15 % loss each way and duplicates, every
    // block gets through by retransmission.
    let got = responses(&sim.client_events);
    assert_eq!(got.len(), 1, "{:?}", sim.client_events);
    let mut expected = payload.to_vec();
    expected.reverse();
    assert_eq!(&got[0].payload[..], &expected[..]);
    assert!(
        sim.client.stats().retransmissions > 0,
        "the link did lose datagrams"
    );
    assert!(sim.client.is_quiescent() && sim.server.is_quiescent());
}

#[test]
fn block1_out_of_order_or_missing_first_block_is_4_08() {
    let mut s = Script::new(config(1));
    let block = |num, more, mid| {
        Message::new(MessageType::Con, Code::POST, mid)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_block1(Block { num, more, szx: 2 })
            .with_payload(vec![0u8; 64])
    };
    let sent = s.send(&block(1, true, 1));
    assert_eq!(sent[0].code, Code::REQUEST_ENTITY_INCOMPLETE);
    assert_eq!(s.send(&block(0, true, 2))[0].code, Code::CONTINUE);
    assert_eq!(
        s.send(&block(2, true, 3))[0].code,
        Code::REQUEST_ENTITY_INCOMPLETE
    );
    assert!(s.events().is_empty());
    assert_eq!(s.ep.stats().block1_rejections, 2);
}

#[test]
fn block1_block_repeated_under_a_new_message_id_is_confirmed_again() {
    let mut s = Script::new(config(1));
    let block = |num, more, mid| {
        Message::new(MessageType::Con, Code::POST, mid)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_block1(Block { num, more, szx: 0 })
            .with_payload(vec![num as u8; 16])
    };
    assert_eq!(s.send(&block(0, true, 1))[0].code, Code::CONTINUE);
    assert_eq!(s.send(&block(1, true, 2))[0].code, Code::CONTINUE);
    assert_eq!(
        s.send(&block(1, true, 3))[0].code,
        Code::CONTINUE,
        "repeat, new mid"
    );
    assert!(s.send(&block(2, false, 4)).is_empty());
    let r = s.request();
    assert_eq!(
        r.message.payload.len(),
        48,
        "the repeated block is not appended twice"
    );
}

#[test]
fn block1_too_large_is_4_13_with_size1() {
    let mut cfg = config(1);
    cfg.max_body_size = 100;
    let mut s = Script::new(cfg);
    let block = |num, mid| {
        Message::new(MessageType::Con, Code::POST, mid)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_block1(Block {
                num,
                more: true,
                szx: 2,
            })
            .with_payload(vec![0u8; 64])
    };
    assert_eq!(s.send(&block(0, 1))[0].code, Code::CONTINUE);
    let sent = s.send(&block(1, 2));
    assert_eq!(sent[0].code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(sent[0].size1(), Some(100));
    // Announced too large up front (Size1) is refused at once.
    let announced = block(0, 3).with_uint_option(OptionNumber::SIZE1, 5000);
    assert_eq!(s.send(&announced)[0].code, Code::REQUEST_ENTITY_TOO_LARGE);
}

#[test]
fn block1_reassembly_memory_is_capped_globally() {
    let mut cfg = config(1);
    cfg.max_reassembly_memory = 1000;
    let mut s = Script::new(cfg);
    let mut codes = Vec::new();
    for port in 0..20u16 {
        s.peer = Peer::new(support::addr(2000 + port));
        let first = Message::new(MessageType::Con, Code::POST, port)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_block1(Block {
                num: 0,
                more: true,
                szx: 2,
            })
            .with_payload(vec![0u8; 64]);
        codes.push(s.send(&first)[0].code);
    }
    // 15 * 64 bytes fit in 1000: every newcomer still gets 2.31, room is
    // made by evicting the least recently touched transfer (all peers
    // hold one), so the first five transfers were evicted.
    assert!(codes.iter().all(|c| *c == Code::CONTINUE), "{codes:?}");
    for port in [0, 1, 2, 3, 4, 19u16] {
        s.peer = Peer::new(support::addr(2000 + port));
        let next = Message::new(MessageType::Con, Code::POST, 100 + port)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_block1(Block {
                num: 1,
                more: true,
                szx: 2,
            })
            .with_payload(vec![0u8; 64]);
        let code = s.send(&next)[0].code;
        if port < 5 {
            // RFC 7959 §2.5: its state is gone.
            assert_eq!(code, Code::REQUEST_ENTITY_INCOMPLETE, "port {port}");
        } else {
            // 128 bytes now: the least recently touched other transfer
            // makes room.
            assert_eq!(code, Code::CONTINUE, "port {port}");
        }
    }
    // Unfinished transfers expire and free their memory.
    s.advance(Duration::from_secs(300));
    s.peer = Peer::new(support::addr(3000));
    let first = Message::new(MessageType::Con, Code::POST, 1)
        .with_token(&b"b"[..])
        .with_uri_path("up")
        .with_block1(Block {
            num: 0,
            more: true,
            szx: 2,
        })
        .with_payload(vec![0u8; 64]);
    assert_eq!(s.send(&first)[0].code, Code::CONTINUE);
}

#[test]
fn block2_cache_is_bounded_and_a_miss_asks_the_application_again() {
    let mut cfg = config(1);
    cfg.block_cache_entries = 2;
    let mut s = Script::new(cfg);
    let large = body(2000);
    for port in 0..3u16 {
        s.peer = Peer::new(support::addr(4000 + port));
        s.send(
            &Message::new(MessageType::Con, Code::GET, 1)
                .with_token(&b"g"[..])
                .with_uri_path("large"),
        );
        let r = s.request();
        s.ep.respond(
            s.now,
            r.id,
            response(Code::CONTENT).with_payload(large.clone()),
        )
        .unwrap();
        assert!(s.transmits()[0].block2().unwrap().more);
    }
    assert_eq!(s.ep.stats().block_cache_evictions, 1);
    // The first peer's body was evicted: its follow-up goes to the app,
    // whose fresh answer is cut at the requested block.
    s.peer = Peer::new(support::addr(4000));
    let follow = Message::new(MessageType::Con, Code::GET, 2)
        .with_token(&b"h"[..])
        .with_uri_path("large")
        .with_block2(Block {
            num: 1,
            more: false,
            szx: 6,
        });
    assert!(s.send(&follow).is_empty());
    let r = s.request();
    s.ep.respond(
        s.now,
        r.id,
        response(Code::CONTENT).with_payload(large.clone()),
    )
    .unwrap();
    let reply = s.transmits();
    assert_eq!(
        reply[0].block2().unwrap(),
        Block {
            num: 1,
            more: false,
            szx: 6
        }
    );
    assert_eq!(reply[0].payload, large.slice(1024..));
    // The third peer's body is still cached.
    s.peer = Peer::new(support::addr(4002));
    let mut follow = follow;
    follow.message_id = 3;
    assert_eq!(s.send(&follow)[0].payload, large.slice(1024..));
}

#[test]
fn block1_transfers_are_keyed_by_request_tag() {
    let mut s = Script::new(config(1));
    let block = |num, more, tag: &'static [u8], mid| {
        Message::new(MessageType::Con, Code::POST, mid)
            .with_token(&b"b"[..])
            .with_uri_path("up")
            .with_option(OptionNumber::REQUEST_TAG, tag)
            .with_block1(Block { num, more, szx: 0 })
            .with_payload(vec![tag[0]; 16])
    };
    assert_eq!(s.send(&block(0, true, b"a", 1))[0].code, Code::CONTINUE);
    assert_eq!(s.send(&block(0, true, b"b", 2))[0].code, Code::CONTINUE);
    assert!(s.send(&block(1, false, b"a", 3)).is_empty());
    let r = s.request();
    assert_eq!(&r.message.payload[..], &[b'a'; 32][..]);
    assert!(s.send(&block(1, false, b"b", 4)).is_empty());
    assert_eq!(&s.request().message.payload[..], &[b'b'; 32][..]);
}

#[test]
fn large_notification_sends_first_block_and_serves_the_rest() {
    let mut s = Script::new(config(1));
    let relation = register(&mut s, b"tok", 1);
    s.ep.notify(
        s.now,
        relation,
        response(Code::CONTENT).with_payload(body(3000)),
        false,
    )
    .unwrap();
    let sent = s.transmits();
    assert_eq!(
        sent[0].block2().unwrap(),
        Block {
            num: 0,
            more: true,
            szx: 6
        }
    );
    assert!(sent[0].observe().is_some());
    let follow = Message::new(MessageType::Con, Code::GET, 50)
        .with_token(&b"f"[..])
        .with_uri_path("obs")
        .with_block2(Block {
            num: 2,
            more: false,
            szx: 6,
        });
    let reply = s.send(&follow);
    assert_eq!(
        reply[0].block2().unwrap(),
        Block {
            num: 2,
            more: false,
            szx: 6
        }
    );
    assert_eq!(reply[0].payload, body(3000).slice(2048..));
}

// ---------------------------------------------------------------------------
// Lossy link: nothing gets stuck
// ---------------------------------------------------------------------------

#[test]
fn lossy_link_every_request_completes_or_times_out() {
    for seed in 0..6u64 {
        let mut client = config(seed);
        client.max_queued_per_peer = 100;
        let link = LinkConfig {
            latency: Duration::from_millis(30),
            drop_to_server: 0.3,
            drop_to_client: 0.3,
            duplicate: 0.2,
            reorder: 0.3,
        };
        let mut sim = Sim::new(client, config(seed + 100), link, seed);
        echo_auto(&mut sim);
        let mut ids = Vec::new();
        for i in 0..40 {
            let confirmable = i % 4 != 0;
            let request = Message::new(MessageType::Con, Code::POST, 0)
                .with_uri_path("echo")
                .with_payload(format!("m{i}").into_bytes());
            ids.push(
                sim.client
                    .send_request(sim.now, sim.server_peer.clone(), request, confirmable)
                    .unwrap(),
            );
        }
        sim.run_for(Duration::from_secs(40 * 100));
        let mut outcomes = std::collections::HashMap::new();
        for e in &sim.client_events {
            match e {
                Event::Response {
                    request, response, ..
                } => {
                    assert!(
                        outcomes
                            .insert(*request, Ok(response.payload.clone()))
                            .is_none(),
                        "one outcome each"
                    );
                }
                Event::RequestFailed { request, reason } => {
                    assert!(
                        outcomes.insert(*request, Err(*reason)).is_none(),
                        "one outcome each"
                    );
                }
                _ => {}
            }
        }
        for (i, id) in ids.iter().enumerate() {
            match outcomes.get(id) {
                Some(Ok(payload)) => assert_eq!(&payload[..], format!("m{i}").as_bytes()),
                Some(Err(_)) => {}
                None => panic!("seed {seed}: request {i} neither completed nor failed"),
            }
        }
        let completed = outcomes.values().filter(|o| o.is_ok()).count();
        assert!(completed > 10, "seed {seed}: only {completed} completed");
        assert!(sim.client.is_quiescent());
        assert!(sim.server.is_quiescent());
        assert!(sim.server.stats().dedup_con_hits > 0 || sim.server.stats().dedup_non_hits > 0);
    }
}
