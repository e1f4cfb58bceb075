//! Measures what an established session costs the server, in memory and
//! without sockets:
//!
//! - memory per idle established session: N clients handshake with one
//!   `DtlsServer`, each client is dropped, and the growth of the process's
//!   resident set is divided by N;
//! - server CPU per application record over an established session:
//!   `handle_datagram` (decrypt) of records a client made beforehand, and
//!   `send` (encrypt) of 100-byte datagrams, timed apart from the client.
//!
//! Not a test: the figures depend on the machine, allocator and OpenSSL.
//!
//! ```text
//! cargo run --release -p coap-dtls --example server_costs -- compact 10000
//! cargo run --release -p coap-dtls --example server_costs -- openssl 10000
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use coap_dtls::{ClientConfig, ClientSession, DtlsConnector, DtlsServer, ServerConfig};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "compact".into());
    let sessions: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut keys = HashMap::new();
    keys.insert(b"sensor".to_vec(), b"sensor-secret".to_vec());
    let mut config = ServerConfig::new(Arc::new(keys));
    config.compact_sessions = match mode.as_str() {
        "compact" => true,
        "openssl" => false,
        other => panic!("mode {other}: use compact or openssl"),
    };
    config.max_sessions = sessions as usize + 2;
    let mut server = DtlsServer::new(config, Instant::now()).unwrap();
    let connector = DtlsConnector::new(ClientConfig::new("sensor", "sensor-secret")).unwrap();

    // One session first, so that allocator arenas and OpenSSL's lazily
    // built tables are not counted.
    let _ = handshake(&mut server, &connector, addr(0));
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    for n in 1..=sessions {
        // The client is dropped: only the server's memory remains.
        let _ = handshake(&mut server, &connector, addr(n));
    }
    let elapsed = started.elapsed();
    let rss_after = vm_rss_kib();
    let stats = server.stats();
    assert_eq!(stats.sessions, sessions as usize + 1);
    let per_session = (rss_after - rss_before) as f64 / f64::from(sessions);
    println!(
        "{mode}: {sessions} idle established sessions ({} compacted): VmRSS {rss_before} -> \
         {rss_after} KiB, {per_session:.2} KiB per session; {:.0} handshakes/s in memory",
        stats.sessions_compacted,
        f64::from(sessions) / elapsed.as_secs_f64()
    );

    // Records over one established session.
    const RECORDS: usize = 200_000;
    let peer = addr(sessions + 1);
    let mut client = handshake(&mut server, &connector, peer);
    let payload = [0x42u8; 100];
    let mut datagrams = Vec::with_capacity(RECORDS);
    for _ in 0..RECORDS {
        client.send(&payload).unwrap();
        datagrams.push(client.poll_transmit().unwrap());
    }
    let started = Instant::now();
    for datagram in &datagrams {
        server.handle_datagram(Instant::now(), peer, datagram);
        while server.poll_event().is_some() {}
    }
    let receive = started.elapsed();
    assert_eq!(server.stats().data_in, RECORDS as u64);
    let started = Instant::now();
    for _ in 0..RECORDS {
        server.send(Instant::now(), peer, &payload).unwrap();
        let _ = server.poll_transmit();
    }
    let send = started.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / RECORDS as f64;
    println!(
        "{mode}: server per 100-byte record: receive {:.0} ns, send {:.0} ns \
         ({:.0} request/response pairs/s of server CPU)",
        per(receive),
        per(send),
        1e9 / (per(receive) + per(send))
    );
}

fn addr(n: u32) -> SocketAddr {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
    SocketAddr::from((ip, 40_000 + (n % 20_000) as u16))
}

/// Runs one in-memory handshake to completion.
fn handshake(
    server: &mut DtlsServer,
    connector: &DtlsConnector,
    peer: SocketAddr,
) -> ClientSession {
    let mut client = connector.connect(Instant::now()).unwrap();
    for _ in 0..20 {
        let mut moved = false;
        while let Some(datagram) = client.poll_transmit() {
            moved = true;
            server.handle_datagram(Instant::now(), peer, &datagram);
        }
        while let Some(transmit) = server.poll_transmit() {
            moved = true;
            client.handle_datagram(Instant::now(), &transmit.bytes);
        }
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
    assert!(client.is_established());
    client
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
