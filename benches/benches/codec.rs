#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Parse and encode the same realistic messages with `coap-codec` and with
//! `coap-lite`, in one run, so the ratio is measured on equal footing.
//!
//! Parse: ours = `MessageRef::parse` + reading every option and the payload
//! (zero-copy) and `Message::from_bytes` (owned); coap-lite =
//! `Packet::from_bytes` (owned). Encode: both produce a fresh buffer from a
//! prepared message (`Message::to_bytes` vs `Packet::to_bytes`); ours also
//! into a reused `BytesMut` (what the endpoint does).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use coap_codec::{Block, Code, ContentFormat, Message, MessageRef, MessageType};
use coap_lite::Packet;
use criterion::{Criterion, criterion_group};

fn messages() -> Vec<(&'static str, Message)> {
    let token = Bytes::from_static(&[0x4a, 0x11, 0x9c, 0x02]);
    vec![
        (
            "con_post",
            Message::new(MessageType::Con, Code::POST, 0x7d34)
                .with_token(token.clone())
                .with_uri_path("ps/sensors/temperature")
                .with_uri_query("c=client-0042")
                .with_uri_query("u=device")
                .with_content_format(ContentFormat::JSON)
                .with_payload(vec![b'7'; 64]),
        ),
        (
            "observe_notification",
            Message::new(MessageType::Non, Code::CONTENT, 0x1001)
                .with_token(token.clone())
                .with_observe(4711)
                .with_content_format(ContentFormat::JSON)
                .with_payload(&b"{\"temperature\":21.5,\"unit\":\"C\"}"[..]),
        ),
        ("empty_ack", Message::empty_ack(0x7d34)),
        (
            "block2_1024",
            Message::new(MessageType::Ack, Code::CONTENT, 0x7d35)
                .with_token(token)
                .with_content_format(ContentFormat::OCTET_STREAM)
                .with_block2(Block::new(0, true, 6).unwrap())
                .with_uint_option(coap_codec::OptionNumber::SIZE2, 4096)
                .with_payload(vec![0xa5; 1024]),
        ),
    ]
}

/// What a server reads from a request: every option and the payload.
fn read_all(msg: &MessageRef<'_>) -> usize {
    let mut sum = msg.token().len() + usize::from(msg.message_id());
    for o in msg.options() {
        sum += usize::from(o.number.0) + o.value.len();
    }
    sum + msg.payload().len()
}

fn bench(c: &mut Criterion) {
    for (name, msg) in messages() {
        let wire = msg.to_bytes().unwrap();
        let lite = Packet::from_bytes(&wire).unwrap();
        assert_eq!(
            lite.to_bytes().unwrap(),
            wire,
            "coap-lite encodes {name} identically"
        );

        let mut group = c.benchmark_group(format!("parse/{name}"));
        group.bench_function("coap-codec MessageRef", |b| {
            b.iter(|| read_all(&MessageRef::parse(black_box(&wire)).unwrap()))
        });
        group.bench_function("coap-codec MessageRef validate only", |b| {
            b.iter(|| MessageRef::parse(black_box(&wire)).unwrap())
        });
        group.bench_function("coap-codec Message", |b| {
            b.iter(|| Message::from_bytes(black_box(wire.clone())).unwrap())
        });
        group.bench_function("coap-lite", |b| {
            b.iter(|| Packet::from_bytes(black_box(&wire)).unwrap())
        });
        group.finish();

        let mut group = c.benchmark_group(format!("encode/{name}"));
        group.bench_function("coap-codec to_bytes", |b| {
            b.iter(|| black_box(&msg).to_bytes().unwrap())
        });
        let mut buf = BytesMut::with_capacity(2048);
        group.bench_function("coap-codec reused buffer", |b| {
            b.iter(|| {
                buf.clear();
                black_box(&msg).encode(&mut buf).unwrap()
            })
        });
        group.bench_function("coap-lite", |b| {
            b.iter(|| black_box(&lite).to_bytes().unwrap())
        });
        group.finish();
    }
}

/// Best-of-batches timing, interleaving the contenders batch by batch, so
/// that load from other processes on a shared machine hits both alike; the
/// minimum per-iteration time of many batches is robust to preemption.
fn interleaved_min_ns(contenders: &mut [&mut dyn FnMut()], rounds: usize, batch: u32) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; contenders.len()];
    for _ in 0..rounds {
        for (i, f) in contenders.iter_mut().enumerate() {
            let start = std::time::Instant::now();
            for _ in 0..batch {
                f();
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(batch);
            best[i] = best[i].min(ns);
        }
    }
    best
}

fn ratio_report() {
    println!("\ninterleaved best-of-300-batches (ns/op) and coap-lite / coap-codec ratio:");
    println!("| message | op | coap-codec | coap-lite | ratio |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (name, msg) in messages() {
        let wire = msg.to_bytes().unwrap();
        let lite = Packet::from_bytes(&wire).unwrap();
        let mut ours_parse = || {
            black_box(read_all(&MessageRef::parse(black_box(&wire)).unwrap()));
        };
        let mut ours_owned = || {
            black_box(Message::from_bytes(black_box(wire.clone())).unwrap());
        };
        let mut lite_parse = || {
            black_box(Packet::from_bytes(black_box(&wire)).unwrap());
        };
        let p = interleaved_min_ns(
            &mut [&mut ours_parse, &mut ours_owned, &mut lite_parse],
            300,
            500,
        );
        println!(
            "| {name} | parse (MessageRef + read all) | {:.1} | {:.1} | {:.1}x |",
            p[0],
            p[2],
            p[2] / p[0]
        );
        println!(
            "| {name} | parse (owned Message) | {:.1} | {:.1} | {:.1}x |",
            p[1],
            p[2],
            p[2] / p[1]
        );
        let mut buf = BytesMut::with_capacity(2048);
        let mut ours_enc = || {
            black_box(black_box(&msg).to_bytes().unwrap());
        };
        let mut ours_reuse = || {
            buf.clear();
            black_box(black_box(&msg).encode(&mut buf).unwrap());
        };
        let mut lite_enc = || {
            black_box(black_box(&lite).to_bytes().unwrap());
        };
        let e = interleaved_min_ns(
            &mut [&mut ours_enc, &mut ours_reuse, &mut lite_enc],
            300,
            500,
        );
        println!(
            "| {name} | encode (to_bytes, fresh buffer) | {:.1} | {:.1} | {:.1}x |",
            e[0],
            e[2],
            e[2] / e[0]
        );
        println!(
            "| {name} | encode (reused BytesMut) | {:.1} | {:.1} | {:.1}x |",
            e[1],
            e[2],
            e[2] / e[1]
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_report();
}
