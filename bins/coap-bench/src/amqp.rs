//! The RabbitMQ references: `amqp-publish` (lapin alone publishing with
//! publisher confirms, N publishers in a closed loop on one connection, as
//! the Hono adapter does) and `amqp-consume` (a queue bound to an exchange,
//! counting what arrives — without one, a CON telemetry to the adapter is
//! unroutable and answered 5.03).
//!
//! ```text
//!  amqp-publish: N tasks ─basic.publish(mandatory)─▶ confirm channel(s) ─▶ exchange ─▶ bound queue
//!                           ◀──────── basic.ack / return + ack / nack ──────┘
//!  amqp-consume: declare exchange, exclusive queue, bind KEY ─▶ consume (no-ack), count
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::closed_loop::{self, Label, Operation, Outcome, Window};
use crate::load::parse_duration;

/// Where messages go (shared by both subcommands).
#[derive(Debug, Clone, Args)]
pub(crate) struct Route {
    /// RabbitMQ: amqp://USER:PASS@HOST:PORT/VHOST (`%2f` for `/`).
    pub(crate) url: String,
    /// Exchange (declared direct and durable, as the Hono adapter's).
    #[arg(long, default_value = "coap-bench")]
    pub(crate) exchange: String,
    /// Routing key.
    #[arg(long, default_value = "bench")]
    pub(crate) routing_key: String,
    /// Declare the exchange transient and auto-deleted instead (tests;
    /// both sides must declare it alike).
    #[arg(long)]
    pub(crate) auto_delete: bool,
}

/// `amqp-publish` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct AmqpPublishArgs {
    #[command(flatten)]
    pub(crate) route: Route,
    /// Concurrent publishers (each with one unconfirmed message at a time).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub(crate) clients: usize,
    /// Confirm-mode channels the publishers share (default 1, like the
    /// adapter's single publishing channel).
    #[arg(long, default_value_t = 1)]
    pub(crate) channels: usize,
    /// Payload of N bytes ('x').
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_size: usize,
    /// Measuring window (after the warm-up).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Unmeasured warm-up.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Limit per publish and confirm.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Print one JSON object instead of the text summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Accepted for symmetry with `load` (this command prints no progress).
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// `amqp-consume` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct AmqpConsumeArgs {
    #[command(flatten)]
    pub(crate) route: Route,
    /// Stop after this long; default: until SIGINT/SIGTERM.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    pub(crate) messages: Option<u64>,
    /// Print one JSON object at the end instead of a text line.
    #[arg(long)]
    pub(crate) json: bool,
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", redact(url)))
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = url.get(scheme + 3..at).unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***{}",
                url.get(..scheme + 3).unwrap_or_default(),
                url.get(at..).unwrap_or_default()
            )
        }
        _ => url.to_owned(),
    }
}

async fn declare_exchange(channel: &Channel, route: &Route) -> anyhow::Result<()> {
    let exchange = &route.exchange;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: !route.auto_delete,
                auto_delete: route.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot declare exchange {exchange:?}"))
}

/// One publisher: a handle on a confirm-mode channel.
struct Publisher {
    channel: Channel,
    exchange: String,
    routing_key: String,
    payload: Vec<u8>,
}

impl Operation for Publisher {
    async fn run(&mut self) -> anyhow::Result<Outcome> {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &self.payload,
                BasicProperties::default().with_delivery_mode(1),
            )
            .await
            .context("basic.publish")?;
        Ok(match confirm.await.context("publisher confirm")? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Outcome::Ok,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => Outcome::Refused,
        })
    }
}

/// `coap-bench amqp-publish`.
pub(crate) async fn publish_main(args: AmqpPublishArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.channels == 0 {
        bail!("--clients and --channels must be at least 1");
    }
    let route = &args.route;
    let connection = connect(&route.url).await?;
    let mut channels = Vec::with_capacity(args.channels);
    for _ in 0..args.channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        channels.push(channel);
    }
    if let Some(first) = channels.first() {
        declare_exchange(first, route).await?;
    }
    let window = Window::starting_now(args.warmup, args.duration, args.timeout);
    let mut workers = JoinSet::new();
    for client in 0..args.clients {
        let Some(channel) = channels.get(client % channels.len()) else {
            continue;
        };
        let mut publisher = Publisher {
            channel: channel.clone(),
            exchange: route.exchange.clone(),
            routing_key: route.routing_key.clone(),
            payload: vec![b'x'; args.payload_size],
        };
        workers.spawn(async move { closed_loop::drive(window, &mut publisher).await });
    }
    let mut tallies = Vec::with_capacity(args.clients);
    while let Some(result) = workers.join_next().await {
        tallies.push(result.context("publisher task")??);
    }
    let _ = connection.close(200, "done".into()).await;
    let label = Label {
        target: format!(
            "{} exchange {} key {}",
            redact(&route.url),
            route.exchange,
            route.routing_key
        ),
        method: "PUBLISH".into(),
        mtype: "confirm".into(),
        clients: args.clients,
        connections: 1,
    };
    let summary = closed_loop::summarize(&label, &window, &tallies);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

/// What `amqp-consume` prints at the end.
#[derive(Debug, Serialize)]
struct ConsumeSummary {
    queue: String,
    messages: u64,
    /// First message to the end.
    elapsed_s: f64,
    messages_per_s: f64,
}

/// `coap-bench amqp-consume`: prints `amqp-consume ready queue=NAME` on
/// stdout once the queue is bound and consumed, then a summary at the end.
pub(crate) async fn consume_main(args: AmqpConsumeArgs) -> anyhow::Result<()> {
    let route = &args.route;
    let connection = connect(&route.url).await?;
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, route).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("cannot declare the queue")?;
    let name = queue.name().clone();
    channel
        .queue_bind(
            name.clone(),
            route.exchange.as_str().into(),
            route.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot bind the queue")?;
    let mut consumer = channel
        .basic_consume(
            name.clone(),
            "coap-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("cannot consume")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "amqp-consume ready queue={name}")?;
        out.flush()?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + d)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(365 * 86_400));
    let limit = args.messages.unwrap_or(u64::MAX);
    let mut messages = 0u64;
    let mut first: Option<Instant> = None;
    while messages < limit {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(_)) => {
                    first.get_or_insert_with(Instant::now);
                    messages += 1;
                }
                Some(Err(error)) => return Err(error).context("consumer"),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let elapsed = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let summary = ConsumeSummary {
        queue: name.to_string(),
        messages,
        elapsed_s: (elapsed * 1000.0).round() / 1000.0,
        messages_per_s: if elapsed > 0.0 {
            (messages as f64 / elapsed * 10.0).round() / 10.0
        } else {
            0.0
        },
    };
    let _ = connection.close(200, "done".into()).await;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "amqp-consume: {} message(s) on {} in {:.3} s ({:.1}/s)",
            summary.messages, summary.queue, summary.elapsed_s, summary.messages_per_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }
}
