//! Brokers: the shared ones from `MQTT_URL` / `AMQP_URL`, private mosquitto
//! and RabbitMQ instances that tests may `kill -9`, and witnesses that count
//! what reached them.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::tally::Tally;
use crate::unique;

/// `MQTT_URL`; fails the test, naming `scripts/test.sh`, when unset.
pub fn mqtt_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| {
        panic!(
            "MQTT_URL is not set: this test needs mosquitto. Run the suite with scripts/test.sh \
             (it starts one and sets MQTT_URL), or export MQTT_URL=mqtt://127.0.0.1:1883"
        )
    })
}

/// `AMQP_URL`; fails the test, naming `scripts/test.sh`, when unset.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "AMQP_URL is not set: this test needs RabbitMQ. Run the suite with scripts/test.sh \
             (it starts one and sets AMQP_URL), or export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not accept on port {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fault-{name}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A mosquitto of this test's own (no persistence) on a free port.
pub use test_support::mqtt::PrivateMosquitto;

/// A RabbitMQ node of this test's own on free ports; its data directory
/// survives restarts (so durable queues and persistent messages do).
pub struct PrivateRabbit {
    dir: PathBuf,
    /// Erlang node name (unique; it also finds the node's OS process).
    pub node: String,
    /// AMQP port.
    pub port: u16,
    dist_port: u16,
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP (about 7 s).
    pub fn start() -> Self {
        let dir = temp_dir("rabbit");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("plugins"), "").unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot chown to rabbitmq");
        let port = free_port();
        let me = Self {
            node: format!("fault{port}@localhost"),
            dist_port: free_port(),
            port,
            dir,
        };
        me.boot();
        me
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (again) and waits for the AMQP port.
    pub fn boot(&self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .current_dir(&self.dir)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", self.dir.join("ff"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server is installed (scripts/test.sh installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        wait_port(self.port, Duration::from_secs(60), "private RabbitMQ");
    }

    /// The node's Erlang VM processes, found by the unique node name in
    /// their environment (`RABBITMQ_NODENAME`; the command line does not
    /// carry it).
    fn vm_pids(&self) -> Vec<u32> {
        let needle = format!("RABBITMQ_NODENAME={}", self.node);
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let is_vm = cmdline
                .split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"beam.smp") || a.ends_with(b"beam"));
            if !is_vm {
                continue;
            }
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// `kill -9` of the node's VM; waits until the port is closed.
    pub fn kill9(&self) {
        let pids = self.vm_pids();
        assert!(!pids.is_empty(), "no VM process for node {}", self.node);
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ still accepts after kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&self) {
        for pid in self.vm_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An MQTT 5 subscriber that records every message on `filter` in a
/// [`Tally`] as `"TOPIC PAYLOAD"` and subscribes again after each reconnect.
pub struct MqttWitness {
    subacks: tokio::sync::watch::Receiver<u32>,
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl MqttWitness {
    /// Connects, subscribes at QoS 1 and waits for the SUBACK.
    pub async fn start(url: &str, filter: &str, tally: Arc<Tally>) -> Self {
        let rest = url.strip_prefix("mqtt://").expect("mqtt:// URL");
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .unwrap_or((rest, "1883"));
        let mut options =
            MqttOptions::new(format!("fault-w-{}", unique()), host, port.parse().unwrap());
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (subacks_tx, subacks) = tokio::sync::watch::channel(0u32);
        let resubscriber = client.clone();
        let filter = filter.to_owned();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let (c, f) = (resubscriber.clone(), filter.clone());
                        tokio::spawn(async move {
                            let _ = c.subscribe(f, QoS::AtLeastOnce).await;
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => subacks_tx.send_modify(|n| *n += 1),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        tally.delivered(&format!(
                            "{} {}",
                            String::from_utf8_lossy(&p.topic),
                            String::from_utf8_lossy(&p.payload)
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut me = Self {
            subacks,
            _client: client,
            task,
        };
        me.wait_subscribed(1).await;
        me
    }

    /// Waits for the `n`th SUBACK (2 = subscribed again after a restart).
    pub async fn wait_subscribed(&mut self, n: u32) {
        tokio::time::timeout(Duration::from_secs(15), self.subacks.wait_for(|k| *k >= n))
            .await
            .expect("MQTT witness subscribed within 15 s")
            .unwrap();
    }
}

impl Drop for MqttWitness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Consumes `queue` on `url` until it stays empty for `quiet`, recording
/// each body in `tally`; returns the number of deliveries.
pub async fn drain_queue(url: &str, queue: &str, tally: &Tally, quiet: Duration) -> u64 {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} does not exist: {e}"));
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("drain-{}", unique()).into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut n = 0;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
        tally.delivered(&String::from_utf8_lossy(&d.data));
        n += 1;
    }
    let _ = connection.close(200, "drained".into()).await;
    n
}
