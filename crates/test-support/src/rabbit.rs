//! A private RabbitMQ node, for tests that stop and restart the broker
//! (never the shared one).

use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_tcp_port;

/// A RabbitMQ node of a test's own, on free ports, with its data under a
/// temporary directory that survives restarts of the node. Stopped when
/// dropped.
pub struct PrivateRabbit {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
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
    /// Prepares (does not start) a node named `{node_prefix}{port}@localhost`
    /// with its data in a temporary directory named `{dir_prefix}…`.
    pub fn new(dir_prefix: &str, node_prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir()
            .unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("mnesia")).unwrap();
        std::fs::create_dir_all(root.join("log")).unwrap();
        std::fs::write(root.join("plugins"), "").unwrap();
        std::fs::write(root.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        chown_to_rabbitmq(root);
        let port = free_tcp_port();
        Self {
            node: format!("{node_prefix}{port}@localhost"),
            dist_port: free_tcp_port(),
            port,
            dir,
        }
    }

    /// The node's data directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (detached) and waits up to 60 s for its AMQP port.
    pub fn start(&self) {
        let root = self.root();
        let status = Process::new("rabbitmq-server")
            .arg("-detached")
            .current_dir(root)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", root.join("plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", root.join("ff"))
            .env("RABBITMQ_CONFIG_FILE", root.join("rabbitmq"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

    /// Runs `rabbitmqctl -n NODE args…`; fails unless it succeeds.
    pub fn ctl(&self, args: &[&str]) {
        let status = Process::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .current_dir(self.root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    /// Stops the node and waits up to 30 s for its AMQP port to close.
    pub fn stop(&self) {
        let _ = Process::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .current_dir(self.root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
