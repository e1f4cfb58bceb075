#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Measures the sans-IO state machine alone: CON GET in, piggybacked 2.05
//! out, from many peers, no sockets. Run with `--release`.
//!
//! ```text
//! cargo run --release -p coap-endpoint --example sansio_throughput
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use coap_endpoint::{Endpoint, EndpointConfig, Event, Peer, response};

fn main() {
    let mut config = EndpointConfig::default();
    config.rng_seed = Some(1);
    let mut endpoint = Endpoint::new(config).unwrap();
    let peers: Vec<Peer> = (0..1000u16)
        .map(|i| Peer::new(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5683))))
        .collect();
    let requests: Vec<Vec<u8>> = (0..u16::MAX)
        .map(|mid| {
            Message::new(MessageType::Con, Code::GET, mid)
                .with_token(mid.to_be_bytes().to_vec())
                .with_uri_path("sensors/temp")
                .to_bytes()
                .unwrap()
                .to_vec()
        })
        .collect();
    let body = response(Code::CONTENT).with_payload(&b"21.5"[..]);
    let total = 1_000_000usize;
    let start = Instant::now();
    let mut now = start;
    let mut bytes_out = 0usize;
    for i in 0..total {
        let peer = peers[i % peers.len()].clone();
        endpoint.handle_datagram(now, peer, &requests[i % requests.len()]);
        while let Some(event) = endpoint.poll_event() {
            if let Event::Request(request) = event {
                endpoint.respond(now, request.id, body.clone()).unwrap();
            }
        }
        while let Some(t) = endpoint.poll_transmit() {
            bytes_out += t.bytes.len();
        }
        if i % 1000 == 0 {
            now += Duration::from_millis(1);
            endpoint.handle_timeout(now);
        }
    }
    let elapsed = start.elapsed();
    let stats = endpoint.stats();
    println!(
        "{total} requests in {elapsed:?}: {:.0} req/s on one core; {} responses, {} dedup hits, {} dedup entries, {} bytes out",
        total as f64 / elapsed.as_secs_f64(),
        stats.responses_out.iter().map(|(_, n)| n).sum::<u64>(),
        stats.dedup_con_hits,
        stats.dedup_entries,
        bytes_out
    );
}
