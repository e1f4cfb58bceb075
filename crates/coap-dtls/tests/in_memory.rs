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
    assert!(
        client.session.is_established(),
        "client events: {:?}",
        client.events
    );
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

    h.server
        .send(std::time::Instant::now(), addr(1), b"hello client")
        .unwrap();
    h.collect_server(&mut [&mut client]);
    h.pump(&mut [&mut client]);
    assert_eq!(
        client_data(&client.events),
        vec![bytes::Bytes::from_static(b"hello client")]
    );
}

fn established_pair() -> (Harness, Peer) {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    h.pump(&mut [&mut client]);
    assert!(client.session.is_established());
    (h, client)
}

fn content_type(d: &[u8]) -> u8 {
    d[0]
}

fn handshake_type(d: &[u8]) -> Option<u8> {
    // epoch-0 handshake record: msg_type follows the 13-byte record header
    (d[0] == 22 && d[3] == 0 && d[4] == 0).then(|| d[13])
}

#[test]
fn lost_first_server_flight_is_retransmitted() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut dropped = 0;
    let done = h.run_until(
        &mut [&mut client],
        Duration::from_secs(2),
        |to_server, d| {
            // Lose the first ServerHello flight once.
            if !to_server && handshake_type(d) == Some(2) && dropped == 0 {
                dropped += 1;
                return false;
            }
            true
        },
        |_, peers| peers[0].session.is_established(),
    );
    assert!(done, "client events: {:?}", client.events);
    assert_eq!(dropped, 1);
    assert_eq!(h.server.stats().handshakes_completed, 1);
}

#[test]
fn lost_client_flights_and_hello_verify_request_are_retransmitted() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut lost_hvr = false;
    let mut lost_cke = false;
    let done = h.run_until(
        &mut [&mut client],
        Duration::from_secs(2),
        |to_server, d| {
            if !to_server && handshake_type(d) == Some(3) && !lost_hvr {
                lost_hvr = true;
                return false;
            }
            // ClientKeyExchange (16) flight, once.
            if to_server && handshake_type(d) == Some(16) && !lost_cke {
                lost_cke = true;
                return false;
            }
            true
        },
        |h, peers| peers[0].session.is_established() && h.server.stats().handshakes_completed == 1,
    );
    assert!(
        done,
        "client events: {:?}, stats {:?}",
        client.events,
        h.server.stats()
    );
    assert!(lost_hvr && lost_cke);
    // The client's ClientHello without cookie was sent twice, so two HVRs.
    assert_eq!(h.server.stats().hello_verify_requests_sent, 2);
    assert!(h.server.stats().retransmissions <= 2);
}

#[test]
fn lost_server_finished_is_recovered() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut lost = 0;
    let done = h.run_until(
        &mut [&mut client],
        Duration::from_secs(2),
        |to_server, d| {
            // The server's last flight: ChangeCipherSpec and the encrypted
            // Finished (epoch 1).
            if !to_server && (content_type(d) == 20 || (d[0] == 22 && d[4] == 1)) && lost < 2 {
                lost += 1;
                return false;
            }
            true
        },
        |_, peers| peers[0].session.is_established(),
    );
    assert!(done, "client events: {:?}", client.events);
    assert!(lost >= 1);
}

#[test]
fn reordered_flights_complete() {
    // A small MTU and a long identity hint make the flights several
    // datagrams; every batch is delivered in reverse.
    let mut config = server_config();
    config.mtu = 256;
    config.identity_hint = Some(vec![b'h'; 200]);
    config.cipher_list = "ECDHE-PSK-CHACHA20-POLY1305".into();
    let mut h = Harness::new(config);
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut largest_batch = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !client.session.is_established() && std::time::Instant::now() < deadline {
        let mut batch = std::mem::take(&mut h.to_server);
        batch.reverse();
        largest_batch = largest_batch.max(batch.len());
        for (from, d) in batch {
            h.server
                .handle_datagram(std::time::Instant::now(), from, &d);
        }
        h.collect_server(&mut [&mut client]);
        let mut inbox = std::mem::take(&mut client.inbox);
        largest_batch = largest_batch.max(inbox.len());
        assert!(inbox.iter().all(|d| d.len() <= 256), "datagram above MTU");
        inbox.reverse();
        for d in inbox {
            client
                .session
                .handle_datagram(std::time::Instant::now(), &d);
        }
        h.collect_client(&mut client);
        std::thread::sleep(Duration::from_millis(2));
        h.fire_timers(&mut [&mut client]);
    }
    assert!(
        client.session.is_established(),
        "events {:?}",
        client.events
    );
    assert!(largest_batch >= 2, "no flight had more than one datagram");
    assert_eq!(
        client.session.cipher_suite(),
        Some("ECDHE-PSK-CHACHA20-POLY1305")
    );
}

#[test]
fn flights_are_fragmented_to_the_mtu() {
    let mut config = server_config();
    config.mtu = 256;
    config.identity_hint = Some(vec![b'h'; 250]);
    let mut h = Harness::new(config);
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut sizes = Vec::new();
    h.pump_with(&mut [&mut client], |to_server, d| {
        if !to_server {
            sizes.push(d.len());
        }
        true
    });
    assert!(
        client.session.is_established(),
        "events {:?}",
        client.events
    );
    assert!(sizes.iter().all(|&n| n <= 256), "{sizes:?}");
    // The ServerHello flight (with the 250-byte hint in ServerKeyExchange)
    // is larger than one datagram: it fills one to the MTU and continues.
    assert!(sizes.contains(&256), "{sizes:?}");
    assert!(sizes.iter().skip(1).sum::<usize>() > 256 + 67, "{sizes:?}");
}

#[test]
fn application_datagrams_are_limited_to_the_default_mtu() {
    let (mut h, mut client) = established_pair();
    let max = h.server.max_plaintext(addr(1)).unwrap();
    // 1280 - 48 = 1232 bytes of UDP payload; CCM_8 costs 13 + 8 + 8.
    assert_eq!(max, 1232 - 29);
    assert_eq!(client.session.max_plaintext(), Some(max));
    let now = std::time::Instant::now();
    assert_eq!(
        h.server.send(now, addr(1), &vec![1; max + 1]),
        Err(coap_dtls::SendError::TooLarge(max + 1))
    );
    h.server.send(now, addr(1), &vec![1; max]).unwrap();
    let t = h.server.poll_transmit().unwrap();
    assert_eq!(t.bytes.len(), 1232);
    client.session.handle_datagram(now, &t.bytes);
    h.collect_client(&mut client);
    assert_eq!(client_data(&client.events)[0].len(), max);
}

#[test]
fn cipher_suites_are_negotiated_as_configured() {
    for suite in [
        "PSK-AES128-CCM8",
        "PSK-AES128-GCM-SHA256",
        "ECDHE-PSK-CHACHA20-POLY1305",
        "ECDHE-PSK-AES128-CBC-SHA256",
    ] {
        let mut h = Harness::new(server_config());
        let mut config = coap_dtls::ClientConfig::new(IDENTITY, KEY);
        config.cipher_list = suite.to_owned();
        let connector = coap_dtls::DtlsConnector::new(config).unwrap();
        let mut client = h.peer(addr(1), &connector);
        h.pump(&mut [&mut client]);
        assert_eq!(client.session.cipher_suite(), Some(suite));
        assert_eq!(h.server.cipher_suite(addr(1)), Some(suite));
        client.session.send(suite.as_bytes()).unwrap();
        h.collect_client(&mut client);
        h.pump(&mut [&mut client]);
        assert_eq!(
            data_events(&h.server_events)[0].2.as_ref(),
            suite.as_bytes()
        );
    }
}

#[test]
fn the_default_server_prefers_ccm8() {
    let (h, client) = established_pair();
    assert_eq!(client.session.cipher_suite(), Some("PSK-AES128-CCM8"));
    assert_eq!(h.server.cipher_suite(addr(1)), Some("PSK-AES128-CCM8"));
}

#[test]
fn unknown_identity_fails_with_an_alert() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(b"nobody", KEY));
    h.pump(&mut [&mut client]);
    let stats = h.server.stats();
    assert_eq!(stats.handshakes_failed.unknown_identity, 1, "{stats:?}");
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.handshakes_in_progress, 0);
    assert!(client.session.is_closed());
    assert!(
        client.events.contains(&ClientEvent::HandshakeFailed(
            coap_dtls::HandshakeFailure::AlertReceived
        )),
        "{:?}",
        client.events
    );
    assert!(h.server_events.is_empty());
}

#[test]
fn wrong_key_fails_both_sides() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, b"wrong key"));
    let failed = h.run_until(
        &mut [&mut client],
        Duration::from_secs(3),
        |_, _| true,
        |h, peers| peers[0].session.is_closed() && h.server.stats().sessions == 0,
    );
    assert!(
        failed,
        "client {:?} server {:?}",
        client.events,
        h.server.stats()
    );
    assert!(!client.events.contains(&ClientEvent::Connected));
    let stats = h.server.stats();
    assert_eq!(stats.handshakes_completed, 0);
    assert_eq!(stats.handshakes_failed.total(), 1, "{stats:?}");
    assert!(data_events(&h.server_events).is_empty());
}

#[test]
fn close_notify_from_client_ends_the_session() {
    let (mut h, mut client) = established_pair();
    client.session.close();
    h.collect_client(&mut client);
    h.pump(&mut [&mut client]);
    assert!(h.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::SessionClosed { peer, reason: CloseReason::CloseNotify, .. } if *peer == addr(1)
    )), "{:?}", h.server_events);
    assert_eq!(h.server.stats().sessions, 0);
    assert_eq!(
        h.server.send(std::time::Instant::now(), addr(1), b"x"),
        Err(coap_dtls::SendError::NoSession)
    );
}

#[test]
fn close_from_server_sends_close_notify() {
    let (mut h, mut client) = established_pair();
    assert!(h.server.close(std::time::Instant::now(), addr(1)));
    h.collect_server(&mut [&mut client]);
    h.pump(&mut [&mut client]);
    assert!(
        client
            .events
            .contains(&ClientEvent::Closed(CloseReason::CloseNotify)),
        "{:?}",
        client.events
    );
    assert!(h.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::SessionClosed {
            reason: CloseReason::LocalClose,
            ..
        }
    )));
}

#[test]
fn fatal_alert_during_handshake_ends_it() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    // Deliver ClientHello, HVR, ClientHello with cookie; hold the rest.
    let mut steps = 0;
    h.pump_with(&mut [&mut client], |to_server, _| {
        steps += 1;
        steps <= 3 || !to_server
    });
    assert_eq!(h.server.stats().handshakes_in_progress, 1);
    // A plaintext fatal handshake_failure alert (epoch 0, high sequence
    // number), as a peer that gives up would send.
    let alert = [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 50, 0, 2, 2, 40];
    h.server
        .handle_datagram(std::time::Instant::now(), addr(1), &alert);
    let stats = h.server.stats();
    assert_eq!(stats.handshakes_failed.alert_received, 1, "{stats:?}");
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.handshakes_in_progress, 0);
}

#[test]
fn plaintext_and_undecryptable_datagrams_are_dropped() {
    let (mut h, mut client) = established_pair();
    let now = std::time::Instant::now();
    // Plaintext CoAP CON GET.
    h.server
        .handle_datagram(now, addr(1), &[0x40, 0x01, 0x12, 0x34]);
    h.server
        .handle_datagram(now, addr(2), &[0x50, 0x02, 0x00, 0x01, 0xff, b'x']);
    // An application-data record at epoch 1 with garbage ciphertext.
    let mut junk = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 99, 0, 40];
    junk.extend_from_slice(&[0xab; 40]);
    h.server.handle_datagram(now, addr(1), &junk);
    // Truncated record header.
    h.server.handle_datagram(now, addr(1), &[22, 0xfe, 0xfd, 0]);
    let stats = h.server.stats();
    assert_eq!(stats.dropped.not_dtls, 2, "{stats:?}");
    assert_eq!(stats.dropped.undecryptable, 1, "{stats:?}");
    assert_eq!(stats.dropped.malformed, 1, "{stats:?}");
    assert_eq!(stats.sessions, 1);
    assert!(h.server.poll_transmit().is_none());
    // The session still works.
    client.session.send(b"still here").unwrap();
    h.collect_client(&mut client);
    h.pump(&mut [&mut client]);
    assert_eq!(data_events(&h.server_events)[0].2.as_ref(), b"still here");
}

#[test]
fn new_client_hello_from_an_address_with_a_session_replaces_it() {
    let mut h = Harness::new(server_config());
    let conn = connector(IDENTITY, KEY);
    let mut a = h.peer(addr(1), &conn);
    let mut b = h.peer(addr(2), &connector(b"other", b"other-key"));
    h.pump(&mut [&mut a, &mut b]);
    assert!(a.session.is_established() && b.session.is_established());

    // Device at addr(1) reboots: a fresh session from the same address.
    let mut a2 = h.peer(addr(1), &conn);
    h.pump(&mut [&mut a2, &mut b]);
    assert!(a2.session.is_established(), "{:?}", a2.events);
    assert!(h.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::SessionClosed { peer, reason: CloseReason::Replaced, .. } if *peer == addr(1)
    )));
    let stats = h.server.stats();
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.handshakes_completed, 3);

    // b is undisturbed; the new a works.
    b.session.send(b"from b").unwrap();
    a2.session.send(b"from a2").unwrap();
    h.collect_client(&mut b);
    h.collect_client(&mut a2);
    h.pump(&mut [&mut a2, &mut b]);
    let data = data_events(&h.server_events);
    assert!(
        data.iter()
            .any(|(p, id, d)| *p == addr(2) && id.as_ref() == b"other" && d.as_ref() == b"from b")
    );
    assert!(
        data.iter()
            .any(|(p, id, d)| *p == addr(1) && id.as_ref() == IDENTITY && d.as_ref() == b"from a2")
    );
}

#[test]
fn client_hello_without_cookie_does_not_touch_an_existing_session() {
    let (mut h, mut client) = established_pair();
    let conn = connector(IDENTITY, KEY);
    let mut probe = h.peer(addr(1), &conn);
    // Deliver only the probe's first ClientHello.
    let (from, d) = h.to_server.pop().unwrap();
    h.server
        .handle_datagram(std::time::Instant::now(), from, &d);
    assert_eq!(h.server.stats().hello_verify_requests_sent, 2);
    assert_eq!(h.server.stats().sessions, 1);
    assert!(h.server.identity(addr(1)).is_some());
    drop(probe.session.poll_transmit());
    client.session.send(b"ok").unwrap();
    h.collect_client(&mut client);
    h.collect_server(&mut [&mut client]);
    for (from, d) in std::mem::take(&mut h.to_server) {
        h.server
            .handle_datagram(std::time::Instant::now(), from, &d);
    }
    h.collect_server(&mut [&mut client]);
    assert_eq!(
        data_events(&h.server_events).last().unwrap().2.as_ref(),
        b"ok"
    );
}

#[test]
fn idle_sessions_are_evicted_in_virtual_time() {
    let (mut h, _client) = established_pair();
    let now = std::time::Instant::now();
    let idle = h.server.config().idle_timeout;
    let deadline = h.server.poll_timeout().unwrap();
    assert!(deadline <= now + idle + Duration::from_secs(1));
    h.server.handle_timeout(now + idle / 2);
    assert_eq!(h.server.stats().sessions, 1);
    h.server.handle_timeout(now + idle + Duration::from_secs(1));
    let stats = h.server.stats();
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.evictions, 1);
    assert!(h.server.poll_timeout().is_none());
    while let Some(e) = h.server.poll_event() {
        h.server_events.push(e);
    }
    assert!(h.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::SessionClosed {
            reason: CloseReason::IdleTimeout,
            ..
        }
    )));
}

#[test]
fn stuck_handshake_times_out_without_blocking_others() {
    let mut h = Harness::new(server_config());
    let mut stuck = h.peer(addr(1), &connector(IDENTITY, KEY));
    // stuck delivers ClientHello, gets HVR, sends ClientHello+cookie, then
    // goes silent.
    let mut steps = 0;
    h.pump_with(&mut [&mut stuck], |to_server, _| {
        steps += 1;
        steps <= 3 || !to_server
    });
    assert_eq!(h.server.stats().handshakes_in_progress, 1);
    let mut good = h.peer(addr(2), &connector(IDENTITY, KEY));
    h.pump(&mut [&mut good]);
    assert!(good.session.is_established());
    // Past the handshake deadline (virtual time), the stuck one is gone.
    let later = std::time::Instant::now() + Duration::from_secs(3);
    h.server.handle_timeout(later);
    let stats = h.server.stats();
    assert_eq!(stats.handshakes_failed.timeout, 1, "{stats:?}");
    assert_eq!(stats.sessions, 1);
    assert_eq!(stats.handshakes_in_progress, 0);
}

#[test]
fn handshake_and_session_caps_hold() {
    let mut config = server_config();
    config.max_handshakes = 1;
    config.max_sessions = 2;
    let mut h = Harness::new(config);
    let conn = connector(IDENTITY, KEY);
    let mut first = h.peer(addr(1), &conn);
    // Hold first at "handshaking" (ClientHello, HVR, ClientHello+cookie).
    let mut steps = 0;
    h.pump_with(&mut [&mut first], |to_server, _| {
        steps += 1;
        steps <= 3 || !to_server
    });
    let mut second = h.peer(addr(2), &conn);
    h.pump(&mut [&mut second]);
    assert!(!second.session.is_established());
    assert_eq!(h.server.stats().dropped.handshake_limit, 1);
    assert_eq!(h.server.stats().sessions, 1);
    // first finishes (its flight is retransmitted), then second's
    // retransmitted ClientHello gets through.
    let done = h.run_until(
        &mut [&mut first, &mut second],
        Duration::from_secs(2),
        |_, _| true,
        |_, peers| peers.iter().all(|p| p.session.is_established()),
    );
    assert!(done, "{:?}", h.server.stats());
    // A third peer hits the session cap.
    let mut third = h.peer(addr(3), &conn);
    h.pump(&mut [&mut third]);
    assert!(!third.session.is_established());
    let stats = h.server.stats();
    assert_eq!(stats.sessions, 2);
    assert!(stats.dropped.session_limit >= 1, "{stats:?}");
}

#[test]
fn cookies_expire_after_two_rotations() {
    let mut h = Harness::new(server_config());
    let lifetime = h.server.config().cookie_lifetime;
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let t0 = std::time::Instant::now();
    let (from, hello) = h.to_server.pop().unwrap();
    h.server.handle_datagram(t0, from, &hello);
    let hvr = h.server.poll_transmit().unwrap();
    client.session.handle_datagram(t0, &hvr.bytes);
    let with_cookie = client.session.poll_transmit().unwrap();
    // Two rotations later the cookie is refused: a new HelloVerifyRequest,
    // no session.
    let late = t0 + lifetime * 2 + Duration::from_secs(1);
    h.server
        .handle_datagram(t0 + lifetime + Duration::from_secs(1), addr(99), &hello);
    h.server.handle_datagram(late, addr(1), &with_cookie);
    let stats = h.server.stats();
    assert_eq!(stats.hello_verify_requests_sent, 3, "{stats:?}");
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.handshakes_started, 0);
}

#[test]
fn cookie_survives_one_rotation() {
    let mut h = Harness::new(server_config());
    let lifetime = h.server.config().cookie_lifetime;
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let t0 = std::time::Instant::now();
    let (from, hello) = h.to_server.pop().unwrap();
    h.server.handle_datagram(t0, from, &hello);
    let hvr = h.server.poll_transmit().unwrap();
    client.session.handle_datagram(t0, &hvr.bytes);
    let with_cookie = client.session.poll_transmit().unwrap();
    h.server.handle_datagram(
        t0 + lifetime + Duration::from_secs(1),
        addr(1),
        &with_cookie,
    );
    let stats = h.server.stats();
    assert_eq!(stats.hello_verify_requests_sent, 1, "{stats:?}");
    assert_eq!(stats.handshakes_started, 1);
}

#[test]
fn ipv6_peers_work() {
    let mut h = Harness::new(server_config());
    let v6: std::net::SocketAddr = "[2001:db8::7]:5684".parse().unwrap();
    let mut client = h.peer(v6, &connector(IDENTITY, KEY));
    h.pump(&mut [&mut client]);
    assert!(client.session.is_established());
    client.session.send(b"v6").unwrap();
    h.collect_client(&mut client);
    h.pump(&mut [&mut client]);
    assert_eq!(data_events(&h.server_events)[0].0, v6);
}

#[test]
fn a_cookie_is_bound_to_the_address_it_was_issued_to() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let t0 = std::time::Instant::now();
    let (from, hello) = h.to_server.pop().unwrap();
    h.server.handle_datagram(t0, from, &hello);
    let hvr = h.server.poll_transmit().unwrap();
    client.session.handle_datagram(t0, &hvr.bytes);
    let with_cookie = client.session.poll_transmit().unwrap();
    // Same port, other host; same host, other port.
    let other_host = std::net::SocketAddr::new("10.9.9.9".parse().unwrap(), addr(1).port());
    let other_port = std::net::SocketAddr::new(addr(1).ip(), addr(1).port() + 1);
    h.server.handle_datagram(t0, other_host, &with_cookie);
    h.server.handle_datagram(t0, other_port, &with_cookie);
    assert_eq!(h.server.stats().handshakes_started, 0);
    assert_eq!(h.server.stats().hello_verify_requests_sent, 3);
    h.server.handle_datagram(t0, addr(1), &with_cookie);
    assert_eq!(h.server.stats().handshakes_started, 1);
}

#[test]
fn handshakes_complete_under_random_loss() {
    // 20 % loss in both directions, several seeds, several peers at once.
    // With 8 retransmissions a flight exchange fails with probability
    // 0.36^9 ≈ 1e-4.
    let patient = coap_dtls::Retransmission {
        max_retransmissions: 8,
        ..fast_retransmission()
    };
    for seed in 1..=4u64 {
        let mut config = server_config();
        config.retransmission = patient;
        let mut h = Harness::new(config);
        let mut client_config = coap_dtls::ClientConfig::new(IDENTITY, KEY);
        client_config.retransmission = patient;
        let conn = coap_dtls::DtlsConnector::new(client_config).unwrap();
        let mut a = h.peer(addr(1), &conn);
        let mut b = h.peer(addr(2), &conn);
        let mut c = h.peer(addr(3), &conn);
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut lost = 0;
        let done = h.run_until(
            &mut [&mut a, &mut b, &mut c],
            Duration::from_secs(5),
            |_, _| {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let keep = state % 5 != 0;
                lost += usize::from(!keep);
                keep
            },
            |_, peers| peers.iter().all(|p| p.session.is_established()),
        );
        let stats = h.server.stats();
        assert!(
            done,
            "seed {seed}: {stats:?}\n a {:?}\n b {:?}\n c {:?}",
            a.events, b.events, c.events
        );
        assert!(lost > 0, "seed {seed} lost nothing");
        // Every handshake that completed on the client completed on the
        // server too, or is about to (its last flight may still be in
        // flight); none failed.
        assert_eq!(stats.handshakes_failed.total(), 0, "seed {seed}: {stats:?}");
    }
}

#[test]
fn no_shared_cipher_suite_fails_with_an_alert() {
    let mut config = server_config();
    config.cipher_list = "PSK-AES128-CCM8".into();
    let mut h = Harness::new(config);
    let mut client_config = coap_dtls::ClientConfig::new(IDENTITY, KEY);
    client_config.cipher_list = "PSK-AES128-GCM-SHA256".into();
    let conn = coap_dtls::DtlsConnector::new(client_config).unwrap();
    let mut client = h.peer(addr(1), &conn);
    h.pump(&mut [&mut client]);
    let stats = h.server.stats();
    assert_eq!(stats.handshakes_failed.protocol, 1, "{stats:?}");
    assert_eq!(stats.sessions, 0);
    assert!(
        client.events.contains(&ClientEvent::HandshakeFailed(
            coap_dtls::HandshakeFailure::AlertReceived
        )),
        "{:?}",
        client.events
    );
}

#[test]
fn close_all_notifies_every_peer() {
    let mut h = Harness::new(server_config());
    let conn = connector(IDENTITY, KEY);
    let mut a = h.peer(addr(1), &conn);
    let mut b = h.peer(addr(2), &conn);
    h.pump(&mut [&mut a, &mut b]);
    h.server.close_all(std::time::Instant::now());
    h.collect_server(&mut [&mut a, &mut b]);
    h.pump(&mut [&mut a, &mut b]);
    for p in [&a, &b] {
        assert!(
            p.events
                .contains(&ClientEvent::Closed(CloseReason::CloseNotify)),
            "{:?}",
            p.events
        );
    }
    assert_eq!(h.server.stats().sessions, 0);
    assert_eq!(h.server.stats().sessions_closed, 2);
}
