//! The AMQP downstream across a broker restart, on a private RabbitMQ node
//! (never the shared one): sends fail with `Unavailable` while it is down,
//! the adapter reconnects on its own, re-declares its topology and command
//! bindings, and no confirmed event is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant, SystemTime};

use hono_coap::{AmqpConfig, AmqpDownstream, Downstream, DownstreamError, DownstreamMessage, Qos};
use support::{App, next, unique_prefix};

/// A RabbitMQ node of this test's own, on free ports, with its data under a
/// temporary directory that survives restarts of the node.
struct PrivateRabbit {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chown_to_rabbitmq(path: &Path) {
    let status = Process::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(
        status.success(),
        "cannot chown {} to rabbitmq",
        path.display()
    );
}

impl PrivateRabbit {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hono-rabbit-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("mnesia")).unwrap();
        std::fs::create_dir_all(root.join("log")).unwrap();
        std::fs::write(root.join("plugins"), "").unwrap();
        std::fs::write(root.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        chown_to_rabbitmq(root);
        let port = free_port();
        Self {
            node: format!("honotest{port}@localhost"),
            dist_port: free_port(),
            port,
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn start(&self) {
        let root = self.root();
        let status = Process::new("rabbitmq-server")
            .arg("-detached")
            .current_dir(&root)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", root.join("plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", root.join("ff"))
            .env("RABBITMQ_CONFIG_FILE", root.join("rabbitmq"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("rabbitmq-server is not installed; scripts/test.sh installs it");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ did not start; logs in {}",
                root.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctl(&self, args: &[&str]) {
        let status = Process::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .current_dir(self.root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    fn stop(&self) {
        let _ = Process::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .current_dir(self.root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn event(tenant: &str, payload: String) -> DownstreamMessage {
    DownstreamMessage::new(
        tenant,
        "4711",
        "text/plain",
        payload,
        "/event",
        SystemTime::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_without_losing_confirmed_events() {
    let rabbit = PrivateRabbit::new();
    rabbit.start();
    let prefix = unique_prefix();
    let tenant = "RESTART_TENANT";
    let downstream = AmqpDownstream::start(
        AmqpConfig::new(rabbit.url())
            .with_exchange_prefix(&prefix)
            .with_confirm_timeout(Duration::from_secs(2))
            .with_reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .unwrap();
    assert!(downstream.wait_ready(Duration::from_secs(10)).await);
    let mut sub = downstream.subscribe_commands(tenant, "4711").await.unwrap();

    let mut confirmed = Vec::new();
    for i in 0..20 {
        downstream
            .send_event(event(tenant, format!("before-{i}")))
            .await
            .unwrap();
        confirmed.push(format!("before-{i}"));
    }

    // Broker down: sends fail fast with Unavailable, readiness goes down.
    tokio::task::block_in_place(|| rabbit.stop());
    let started = Instant::now();
    while downstream.is_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "adapter still ready with the broker down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attempt in 0..3 {
        let t = Instant::now();
        let err = downstream
            .send_event(event(tenant, format!("during-{attempt}")))
            .await
            .unwrap_err();
        assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
        let err = downstream
            .send_telemetry(event(tenant, "t".into()), Qos::AtLeastOnce)
            .await
            .unwrap_err();
        assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a send waited for a down broker"
        );
    }
    assert!(
        downstream
            .subscribe_commands(tenant, "other")
            .await
            .is_err()
    );

    // Broker back (same node, same data): the adapter reconnects by itself.
    tokio::task::block_in_place(|| rabbit.start());
    assert!(
        downstream.wait_ready(Duration::from_secs(20)).await,
        "adapter did not reconnect after the broker restart"
    );
    assert_eq!(downstream.connects(), 2);
    for i in 0..5 {
        downstream
            .send_event(event(tenant, format!("after-{i}")))
            .await
            .unwrap();
        confirmed.push(format!("after-{i}"));
    }

    let mut app = App::connect(&rabbit.url(), &prefix).await;
    // Every confirmed event is in the durable queue, in order; none of the
    // refused ones is.
    let mut events = app.consume_queue(&format!("{prefix}.event.{tenant}")).await;
    let mut got = Vec::new();
    while let Some(d) = next(&mut events, Duration::from_millis(500)).await {
        got.push(String::from_utf8(d.data).unwrap());
    }
    assert_eq!(got, confirmed);

    // Topology re-declared: telemetry exchange routes again.
    let mut telemetry = app.consume("telemetry", tenant).await;
    downstream
        .send_telemetry(event(tenant, "t-after".into()), Qos::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        next(&mut telemetry, Duration::from_secs(5))
            .await
            .unwrap()
            .data,
        b"t-after"
    );

    // The waiting device's command binding was re-established.
    assert!(
        app.send_command(tenant, "4711", "ping", Some("c1"), Some("app"), b"")
            .await
    );
    let cmd = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.name, "ping");

    // A broker that stops confirming (memory alarm: publishers blocked):
    // a confirmed send gives up after the confirm timeout.
    tokio::task::block_in_place(|| rabbit.ctl(&["set_vm_memory_high_watermark", "0"]));
    let t = Instant::now();
    let err = downstream
        .send_telemetry(event(tenant, "blocked".into()), Qos::AtLeastOnce)
        .await
        .unwrap_err();
    assert!(matches!(err, DownstreamError::Unavailable(_)), "{err:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "waited {waited:?} for a blocked broker"
    );
    tokio::task::block_in_place(|| rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    downstream
        .send_telemetry(event(tenant, "unblocked".into()), Qos::AtLeastOnce)
        .await
        .unwrap();
    // The refused message may still arrive (at least once is not at most
    // once); the confirmed one must.
    let mut seen = Vec::new();
    while let Some(d) = next(&mut telemetry, Duration::from_millis(500)).await {
        seen.push(String::from_utf8(d.data).unwrap());
    }
    assert!(seen.contains(&"unblocked".to_owned()), "{seen:?}");

    drop(downstream);
    app.cleanup(&[format!("{prefix}.event.{tenant}")]).await;
    tokio::task::block_in_place(|| rabbit.stop());
}
