#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Rough cost of the metrics hot path and of a scrape.
//! Run with `cargo run --release -p gateway-kit --example metrics_hot_path`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gateway_kit::{BROKER_RTT_BUCKETS, MetricsRegistry};

fn per_op(label: &str, n: u64, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    let elapsed = start.elapsed();
    println!(
        "{label:<44} {:>7.2} ns/op",
        elapsed.as_nanos() as f64 / n as f64
    );
}

fn main() {
    let registry = MetricsRegistry::new();
    let counter = registry
        .counter("coap_requests_total", "requests", &[("code", "2.05")])
        .unwrap();
    let histogram = registry
        .histogram("broker_rtt_seconds", "rtt", &[], BROKER_RTT_BUCKETS)
        .unwrap();
    const N: u64 = 20_000_000;

    per_op("Counter::inc (1 thread)", N, || {
        for _ in 0..N {
            black_box(&counter).inc();
        }
    });
    per_op("Counter::inc (2 threads, same counter)", 2 * N, || {
        std::thread::scope(|s| {
            for _ in 0..2 {
                let c = counter.clone();
                s.spawn(move || {
                    for _ in 0..N {
                        black_box(&c).inc();
                    }
                });
            }
        });
    });
    per_op("Histogram::observe_duration (1 thread)", N, || {
        for i in 0..N {
            black_box(&histogram).observe_duration(Duration::from_micros(i % 20_000));
        }
    });

    for code in 0..100 {
        registry
            .counter("many_total", "many", &[("code", &code.to_string())])
            .unwrap()
            .inc();
    }
    let scrapes = 10_000;
    let mut bytes = 0;
    per_op("render (103 series + 15-bucket histogram)", scrapes, || {
        for _ in 0..scrapes {
            bytes = black_box(registry.render()).len();
        }
    });
    println!("scrape size: {bytes} bytes");
}
