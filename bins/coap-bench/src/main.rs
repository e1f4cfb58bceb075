//! `coap-bench`: a CoAP (RFC 7252) load generator and one-shot client over
//! UDP and DTLS-PSK, plus a UDP echo server, for measuring the gateways
//! against libcoap's server and against the kernel's ceiling.
//!
//! **For:** driving far more load than a server under test can take,
//! measuring it honestly (HDR latency histograms, open loop without
//! coordinated omission), and one-off requests in tests and scripts.
//! **Not for:** functional testing of CoAP features beyond request/response
//! and observe (no block-wise transfers, no RFC 8323 TCP).
//!
//! # Subcommands
//!
//! ```text
//! coap-bench load URI [--method get|post|put|delete] [--payload STR | --payload-size N]
//!                     [--content-format N] [--con | --non] [--clients N] [--sockets K]
//!                     [--rate R] [--duration 10s] [--requests N] [--warmup 1s]
//!                     [--timeout 5s] [--ack-timeout 2s] [--max-retransmit 4] [--timestamp]
//!                     [--observe N [--publish-rate M]] [--connect PATH?QUERY]
//!                     [--psk-identity ID --psk-key KEY] [--handshake-timeout 10s]
//!                     [--json] [--quiet]
//! coap-bench request URI [--method …] [--payload …] [--non] [--observe 0] [--psk-…]
//! coap-bench udp-echo [--listen 127.0.0.1:0] [--threads N]
//! coap-bench mqtt-publish mqtt://HOST:PORT [--topic T] [--qos 0|1] [--clients N]
//!                     [--payload-size 64] [--duration 10s] [--warmup 0s] [--json]
//! coap-bench amqp-publish AMQP_URL [--exchange X] [--routing-key K] [--clients N]
//!                     [--channels 1] [--payload-size 64] [--duration 10s] [--json]
//! coap-bench amqp-consume AMQP_URL [--exchange X] [--routing-key K] [--duration D] [--json]
//! ```
//!
//! - **load, closed loop** (default): each of `--clients` clients keeps one
//!   request in flight; clients share `--sockets` UDP sockets (default
//!   min(clients, 64)); message ids are per socket, tokens per request.
//! - **load, open loop** (`--rate R`): R requests/s in total on a fixed
//!   schedule regardless of answers; latency is measured from the scheduled
//!   send time, so a stalling server shows up in the percentiles instead of
//!   silently lowering the offered load (coordinated omission).
//! - CON requests are retransmitted per RFC 7252 §4.2 (ACK_TIMEOUT 2 s ×
//!   random 1–1.5, doubling, MAX_RETRANSMIT 4) within `--timeout`; an empty
//!   ACK stops retransmission and the separate response completes the
//!   request. Retransmissions are counted.
//! - The run ends after `--duration` (default 10 s) and/or `--requests`
//!   measured requests, plus at most `--timeout` for requests in flight.
//!   `--warmup` requests are sent but not measured. Ctrl-C stops sending.
//! - `{client}` in the URI path or query becomes the client's index, e.g.
//!   `coap://h/ps/bench/{client}?clientid=c{client}`.
//! - `coaps://`: every client gets its own socket and DTLS-PSK session
//!   (handshakes before measuring, 32 at a time). `--psk-identity` may hold
//!   `{client}` (one identity per client, e.g. Hono devices
//!   `dev{client}@TENANT`); `--psk-key hex:…` gives a binary key.
//! - EMQX connection mode (`--connect 'mqtt/connection?clientid=c{client}&…'`):
//!   each client first POSTs there on its own socket and then adds
//!   `token=<the 2.01 payload>` to its requests.
//!
//! # Examples
//!
//! ```text
//! coap-bench udp-echo --listen 127.0.0.1:5699 &
//! coap-bench load coap://127.0.0.1:5699/x --clients 64 --duration 5s
//! coap-bench load 'coap://127.0.0.1:5683/ps/bench/{client}?clientid=c{client}' \
//!     -m post --payload-size 64 --non --clients 100 --rate 20000 --duration 10s --json
//! coap-bench load coap://127.0.0.1:5683/ps/news --observe 1000 --publish-rate 10 --duration 10s
//! coap-bench load coaps://127.0.0.1:5684/telemetry -m post -t 50 -e '{"t":1}' \
//!     -u 'sensor1@DEFAULT_TENANT' -k hono-secret --clients 16 --duration 10s
//! coap-bench request coap://127.0.0.1:5683/.well-known/core
//! ```
//! - **observe** (`--observe N`): N observers register (GET + Observe 0)
//!   and count notifications; `--publish-rate M` publishes POSTs with a
//!   `coap-bench-ts=<µs>` payload to the same URI so the summary shows the
//!   fan-out delivery latency. The top-level counters then describe the
//!   registrations.
//! - A progress line per second on stderr; the summary on stdout, as text
//!   or, with `--json`, one JSON object (fields documented in `report.rs`).
//!
//! The broker references measure what a plain client gets from the same
//! broker at the same concurrency: **mqtt-publish** (rumqttc, MQTT 5, one
//! connection per client, QoS 1 waits for PUBACK) and **amqp-publish**
//! (lapin, one connection, confirm-mode channel, mandatory, each client
//! waits for its confirm), both closed loop with the `load` JSON summary
//! (`method` `PUBLISH`, `type` `QoS0`/`QoS1`/`confirm`, `responses_by_code`
//! `ok`/`refused`). **amqp-consume** binds an exclusive queue to an
//! exchange (declared direct and durable, like the Hono adapter's), prints
//! `amqp-consume ready queue=NAME` once consuming and counts messages until
//! SIGTERM/SIGINT or `--duration`.
//!
//! The **udp-echo** server reflects every datagram to its sender; a load run
//! against it counts the reflected request (same message id and token) as
//! the response, with code `0.01` etc.: the upper bound for any server on
//! this machine.
//!
//! ```text
//!  main ─▶ load::main ─▶ lanes (lane.rs: one task per socket) ─▶ report.rs
//!       ├▶ observe::run (observer lanes + a load run as publisher)
//!       ├▶ request::main (one exchange)
//!       ├▶ echo::serve (threads with SO_REUSEPORT)
//!       └▶ mqtt_publish / amqp ─▶ closed_loop::drive per client ─▶ Summary
//! ```
#![warn(missing_docs, unreachable_pub)]

mod amqp;
mod closed_loop;
mod echo;
mod lane;
mod load;
mod mqtt_publish;
mod observe;
mod report;
mod request;
mod target;
mod transport;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "coap-bench",
    version,
    about = "CoAP load generator, client and UDP echo server"
)]
struct Cli {
    /// Worker threads: tokio workers, or udp-echo's reflecting threads
    /// (default: the number of cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate load against a CoAP server and summarize.
    Load(load::LoadArgs),
    /// Send one request and print the response.
    Request(request::Args),
    /// Reflect every UDP datagram to its sender (reference server).
    UdpEcho {
        /// Address to listen on (port 0: any free port; printed on stdout).
        #[arg(long, default_value = "127.0.0.1:5683")]
        listen: SocketAddr,
    },
    /// Publish to an MQTT broker with N plain MQTT clients (reference).
    MqttPublish(mqtt_publish::MqttPublishArgs),
    /// Publish to RabbitMQ with publisher confirms (reference).
    AmqpPublish(amqp::AmqpPublishArgs),
    /// Bind a queue to an exchange and count what arrives.
    AmqpConsume(amqp::AmqpConsumeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let result = match cli.command {
        Command::UdpEcho { listen } => echo::serve(listen, threads).map(|()| 0),
        command => runtime(threads).and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Load(args) => load::main(args).await.map(|()| 0),
                    Command::Request(args) => request::main(args).await,
                    Command::MqttPublish(args) => mqtt_publish::main(args).await.map(|()| 0),
                    Command::AmqpPublish(args) => amqp::publish_main(args).await.map(|()| 0),
                    Command::AmqpConsume(args) => amqp::consume_main(args).await.map(|()| 0),
                    Command::UdpEcho { .. } => Ok(0),
                }
            })
        }),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("coap-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}
