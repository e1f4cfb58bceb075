//! The MQTT broker under test, plain rumqttc publishing, and a private
//! mosquitto.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::net::free_tcp_port;

/// `MQTT_URL` from the environment; fails the test when unset.
pub fn mqtt_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| {
        panic!(
            "MQTT_URL is not set. Run the suite with scripts/test.sh (it starts mosquitto and sets MQTT_URL), \
             or export MQTT_URL=mqtt://127.0.0.1:1883 for a running mosquitto."
        )
    })
}

/// Host and port of an `mqtt://host[:port]` URL (port 1883 if absent).
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("mqtt://").expect("mqtt:// URL");
    let (h, p) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or((rest, "1883"));
    (h.to_owned(), p.parse().unwrap())
}

/// Publishes one message as client `client_id` with a plain rumqttc MQTT 5
/// client and waits (at most 5 s) for its acknowledgement (QoS 1/2) or for
/// it to be written (QoS 0).
pub async fn publish(
    url: &str,
    client_id: String,
    topic: &str,
    payload: &str,
    qos: u8,
    retain: bool,
) {
    let (host, port) = host_port(url);
    let options = MqttOptions::new(client_id, host, port);
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    client
        .publish(topic, q, retain, payload.as_bytes().to_vec())
        .await
        .unwrap();
    let done = async {
        loop {
            match eventloop.poll().await.unwrap() {
                Event::Outgoing(rumqttc::Outgoing::Publish(_)) if qos == 0 => {
                    client.disconnect().await.unwrap();
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => return,
                Event::Incoming(Packet::PubAck(_)) if qos == 1 => return,
                Event::Incoming(Packet::PubComp(_)) if qos == 2 => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .unwrap();
}

/// A mosquitto of a test's own on a free loopback port (anonymous access,
/// no persistence), killed on drop.
pub struct PrivateMosquitto {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateMosquitto {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_tcp_port();
        let dir = tempfile::Builder::new()
            .prefix("test-support-mosq-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut me = Self {
            port,
            dir,
            child: None,
        };
        me.restart();
        me
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills it (if running) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits (at most 5 s) until it
    /// accepts.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
