//! `mqtt-publish`: the plain-MQTT reference — N MQTT 5 clients (rumqttc,
//! one TCP connection each) publishing in a closed loop to a broker, so a
//! CoAP→MQTT gateway can be compared with what an MQTT client alone gets
//! from the same broker at the same concurrency.
//!
//! ```text
//!  client i ─connect─▶ broker ; loop { PUBLISH topic(i) ─▶ QoS 1: wait PUBACK
//!                                                         QoS 0: wait until written }
//! ```
//!
//! Latency is publish call → PUBACK (QoS 1), or → the packet handed to the
//! socket (QoS 0, which has no answer).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::task::JoinSet;

use crate::closed_loop::{self, Label, Operation, Outcome, Window};
use crate::load::parse_duration;
use crate::target::CLIENT_PLACEHOLDER;

/// `mqtt-publish` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct MqttPublishArgs {
    /// Broker: mqtt://HOST:PORT.
    pub(crate) url: String,
    /// Topic; `{client}` becomes the client's index.
    #[arg(long, default_value = "coap-bench/{client}")]
    pub(crate) topic: String,
    /// QoS 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Concurrent publishers (one connection each, one publish in flight).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub(crate) clients: usize,
    /// Payload of N bytes ('x').
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_size: usize,
    /// Measuring window (after the warm-up).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Unmeasured warm-up.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Limit per publish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Print one JSON object instead of the text summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Accepted for symmetry with `load` (this command prints no progress).
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// `host`, `port` of `mqtt://host[:port]`.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("mqtt://") else {
        bail!("the broker URL must look like mqtt://HOST:PORT, not {url:?}");
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse()
                .with_context(|| format!("bad port in {url:?}"))?,
        )),
        None => Ok((authority.to_owned(), 1883)),
    }
}

/// One connected publisher.
struct Publisher {
    client: AsyncClient,
    events: EventLoop,
    topic: String,
    qos: QoS,
    payload: Bytes,
}

impl Publisher {
    async fn connect(
        host: &str,
        port: u16,
        id: String,
        topic: String,
        qos: QoS,
        payload: Bytes,
    ) -> anyhow::Result<Publisher> {
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 16);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(anyhow::anyhow!("cannot connect: {error}")),
                }
            }
        })
        .await;
        match connected {
            Ok(result) => result?,
            Err(_) => bail!("no CONNACK within 10 s"),
        }
        Ok(Publisher {
            client,
            events,
            topic,
            qos,
            payload,
        })
    }
}

impl Operation for Publisher {
    async fn run(&mut self) -> anyhow::Result<Outcome> {
        self.client
            .publish(self.topic.clone(), self.qos, false, self.payload.clone())
            .await
            .context("publish request")?;
        let mut pkid = None;
        loop {
            let event = self.events.poll().await.context("MQTT connection")?;
            match event {
                Event::Outgoing(Outgoing::Publish(id)) => {
                    if self.qos == QoS::AtMostOnce {
                        return Ok(Outcome::Ok);
                    }
                    pkid = Some(id);
                }
                Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == pkid => {
                    return Ok(match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Outcome::Ok,
                        _ => Outcome::Refused,
                    });
                }
                _ => {}
            }
        }
    }
}

/// `coap-bench mqtt-publish`.
pub(crate) async fn main(args: MqttPublishArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let (host, port) = host_port(&args.url)?;
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let payload = Bytes::from(vec![b'x'; args.payload_size]);
    let mut connecting = JoinSet::new();
    for client in 0..args.clients {
        let id = format!("coap-bench-{}-{client}", std::process::id());
        let topic = args.topic.replace(CLIENT_PLACEHOLDER, &client.to_string());
        let (host, payload) = (host.clone(), payload.clone());
        connecting.spawn(async move {
            Publisher::connect(&host, port, id, topic, qos, payload)
                .await
                .with_context(|| format!("client {client}"))
        });
    }
    let mut publishers = Vec::with_capacity(args.clients);
    while let Some(result) = connecting.join_next().await {
        publishers.push(result.context("connect task")??);
    }
    let window = Window::starting_now(args.warmup, args.duration, args.timeout);
    let mut workers = JoinSet::new();
    for mut publisher in publishers {
        workers.spawn(async move {
            let tally = closed_loop::drive(window, &mut publisher).await;
            let _ = publisher.client.disconnect().await;
            tally
        });
    }
    let mut tallies = Vec::with_capacity(args.clients);
    while let Some(result) = workers.join_next().await {
        tallies.push(result.context("publisher task")??);
    }
    let label = Label {
        target: format!("{}/{}", args.url.trim_end_matches('/'), args.topic),
        method: "PUBLISH".into(),
        mtype: format!("QoS{}", args.qos),
        clients: args.clients,
        connections: args.clients,
    };
    let summary = closed_loop::summarize(&label, &window, &tallies);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            host_port("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(host_port("mqtt://h").unwrap(), ("h".into(), 1883));
        assert!(host_port("http://h").is_err());
        assert!(host_port("mqtt://h:x").is_err());
    }
}
