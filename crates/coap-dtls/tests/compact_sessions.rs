//! Compact sessions seen from outside: which suites are compacted, records
//! both ways against OpenSSL's client record layer, a lost last flight,
//! replays, and the same behaviour with the switch off.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_dtls::{ClientConfig, ClientEvent, CloseReason, DtlsConnector, ServerEvent};
use support::*;

/// Every PSK suite OpenSSL 3.0 offers for DTLS 1.2 that is worth testing:
/// the AEAD ones (compacted) and a CBC one (stays on OpenSSL).
const SUITES: [(&str, bool); 8] = [
    ("PSK-AES128-CCM8", true),
    ("PSK-AES128-CCM", true),
    ("PSK-AES128-GCM-SHA256", true),
    ("PSK-AES256-CCM8", true),
    ("PSK-AES256-CCM", true),
    ("PSK-CHACHA20-POLY1305", true),
    ("ECDHE-PSK-CHACHA20-POLY1305", true),
    ("ECDHE-PSK-AES128-CBC-SHA256", false),
];

fn connector_for(suite: &str) -> DtlsConnector {
    let mut config = ClientConfig::new(IDENTITY, KEY);
    config.cipher_list = suite.to_owned();
    config.retransmission = fast_retransmission();
    DtlsConnector::new(config).unwrap()
}

fn all_suites_server(compact: bool) -> Harness {
    let mut config = server_config();
    config.cipher_list = SUITES.map(|(suite, _)| suite).join(":");
    config.compact_sessions = compact;
    Harness::new(config)
}

/// Sends `n` datagrams each way and checks they arrive once, in order.
fn exchange(h: &mut Harness, client: &mut Peer, n: usize) {
    let server_data_before = data_events(&h.server_events).len();
    let client_data_before = client_data(&client.events).len();
    for i in 0..n {
        client.session.send(format!("up {i}").as_bytes()).unwrap();
        h.collect_client(client);
        h.server
            .send(Instant::now(), client.addr, format!("down {i}").as_bytes())
            .unwrap();
        h.collect_server(&mut [&mut *client]);
        h.pump(&mut [&mut *client]);
    }
    let up: Vec<Bytes> = data_events(&h.server_events)[server_data_before..]
        .iter()
        .map(|(_, _, b)| b.clone())
        .collect();
    let down = client_data(&client.events)[client_data_before..].to_vec();
    for i in 0..n {
        assert_eq!(up[i], format!("up {i}").as_bytes());
        assert_eq!(down[i], format!("down {i}").as_bytes());
    }
    assert_eq!((up.len(), down.len()), (n, n));
}

#[test]
fn aead_suites_are_compacted_and_others_stay_on_openssl() {
    for (suite, compacted) in SUITES {
        let mut h = all_suites_server(true);
        let mut client = h.peer(addr(1), &connector_for(suite));
        h.pump(&mut [&mut client]);
        assert!(client.session.is_established(), "{suite}");
        assert_eq!(h.server.cipher_suite(addr(1)), Some(suite));
        assert_eq!(
            h.server.stats().sessions_compacted,
            u64::from(compacted),
            "{suite}"
        );
        // The same record overhead as OpenSSL's client computes.
        assert_eq!(
            h.server.max_plaintext(addr(1)),
            client.session.max_plaintext(),
            "{suite}"
        );
        exchange(&mut h, &mut client, 3);
        // A full-size datagram fits the MTU.
        let max = h.server.max_plaintext(addr(1)).unwrap();
        h.server
            .send(Instant::now(), addr(1), &vec![7; max])
            .unwrap();
        let t = h.server.poll_transmit().unwrap();
        let mtu = usize::from(coap_dtls::DEFAULT_MTU);
        if compacted {
            assert_eq!(t.bytes.len(), mtu, "{suite}");
        } else {
            // CBC pads to whole blocks.
            assert!(t.bytes.len() <= mtu, "{suite}");
        }
        client.session.handle_datagram(Instant::now(), &t.bytes);
        h.collect_client(&mut client);
        assert_eq!(client_data(&client.events).last().unwrap().len(), max);
        assert_eq!(h.server.stats().dropped.undecryptable, 0, "{suite}");
    }
}

#[test]
fn the_switch_off_keeps_every_session_on_openssl() {
    for (suite, _) in SUITES {
        let mut h = all_suites_server(false);
        let mut client = h.peer(addr(1), &connector_for(suite));
        h.pump(&mut [&mut client]);
        assert!(client.session.is_established(), "{suite}");
        assert_eq!(h.server.stats().sessions_compacted, 0);
        exchange(&mut h, &mut client, 2);
    }
}

#[test]
fn a_lost_last_flight_is_resent_by_the_compact_session() {
    let mut h = Harness::new(server_config());
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    let mut lost = 0;
    let done = h.run_until(
        &mut [&mut client],
        Duration::from_secs(2),
        |to_server, d| {
            // The server's last flight: ChangeCipherSpec and the encrypted
            // Finished (epoch 1), lost twice.
            if !to_server && (d[0] == 20 || (d[0] == 22 && d[4] == 1)) && lost < 2 {
                lost += 1;
                return false;
            }
            true
        },
        |_, peers| peers[0].session.is_established(),
    );
    assert!(done, "client events: {:?}", client.events);
    assert!(lost >= 1);
    let stats = h.server.stats();
    assert_eq!(stats.sessions_compacted, 1, "{stats:?}");
    // The handshake finished on the server before the flight was lost, so
    // the resend came from the compact session.
    assert!(stats.retransmissions >= 1, "{stats:?}");
    assert_eq!(stats.handshakes_completed, 1);
    exchange(&mut h, &mut client, 2);
}

#[test]
fn replayed_and_reordered_records_inside_the_window() {
    for compact in [true, false] {
        let mut h = all_suites_server(compact);
        let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
        h.pump(&mut [&mut client]);
        let mut sent = Vec::new();
        for i in 0..5u8 {
            client.session.send(&[b'r', i]).unwrap();
            sent.push(client.session.poll_transmit().unwrap());
        }
        let now = Instant::now();
        // Out of order, every datagram twice.
        for i in [4, 1, 0, 4, 3, 2, 1, 0, 3, 2] {
            h.server.handle_datagram(now, addr(1), &sent[i]);
        }
        h.collect_server(&mut [&mut client]);
        let got: Vec<u8> = data_events(&h.server_events)
            .iter()
            .map(|(_, _, b)| b[1])
            .collect();
        assert_eq!(got, vec![4, 1, 0, 3, 2], "compact {compact}");
        let dropped = h.server.stats().dropped;
        if compact {
            assert_eq!(dropped.replayed, 5, "{dropped:?}");
        } else {
            // OpenSSL does not say why it discarded a record.
            assert_eq!(dropped.undecryptable, 5, "{dropped:?}");
        }
    }
}

#[test]
fn closing_works_both_ways_on_a_compact_session() {
    let mut h = Harness::new(server_config());
    let conn = connector(IDENTITY, KEY);
    let mut a = h.peer(addr(1), &conn);
    let mut b = h.peer(addr(2), &conn);
    h.pump(&mut [&mut a, &mut b]);
    assert_eq!(h.server.stats().sessions_compacted, 2);
    // The client closes.
    a.session.close();
    h.collect_client(&mut a);
    h.pump(&mut [&mut a, &mut b]);
    assert!(h.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::SessionClosed { peer, reason: CloseReason::CloseNotify, .. } if *peer == addr(1)
    )));
    // The server closes.
    assert!(h.server.close(Instant::now(), addr(2)));
    h.collect_server(&mut [&mut a, &mut b]);
    h.pump(&mut [&mut a, &mut b]);
    assert!(
        b.events
            .contains(&ClientEvent::Closed(CloseReason::CloseNotify)),
        "{:?}",
        b.events
    );
    assert_eq!(h.server.stats().sessions, 0);
    assert_eq!(h.server.stats().sessions_closed, 2);
}

#[test]
fn traffic_keeps_a_session_alive_and_eviction_follows_the_last_activity() {
    let mut config = server_config();
    config.idle_timeout = Duration::from_secs(60);
    let mut h = Harness::new(config);
    let mut client = h.peer(addr(1), &connector(IDENTITY, KEY));
    h.pump(&mut [&mut client]);
    let t0 = Instant::now();
    // Activity 30 s later (virtual time).
    client.session.send(b"still here").unwrap();
    let datagram = client.session.poll_transmit().unwrap();
    h.server
        .handle_datagram(t0 + Duration::from_secs(30), addr(1), &datagram);
    // The first idle deadline passes: the session was active, it stays and
    // its timer moves to 60 s after the activity.
    h.server.handle_timeout(t0 + Duration::from_secs(61));
    assert_eq!(h.server.stats().sessions, 1);
    let next = h.server.poll_timeout().unwrap();
    assert!(next >= t0 + Duration::from_secs(90), "{next:?}");
    assert!(next <= t0 + Duration::from_secs(91), "{next:?}");
    h.server.handle_timeout(next);
    let stats = h.server.stats();
    assert_eq!((stats.sessions, stats.evictions), (0, 1), "{stats:?}");
}
