#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]
//! Test support: the broker URL, private mosquitto instances, and MQTT
//! clients written directly with rumqttc (independent of the code under
//! test).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// `MQTT_URL` from the environment; fails the test when unset.
pub fn mqtt_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| {
        panic!(
            "MQTT_URL is not set. Run the suite with scripts/test.sh (it starts mosquitto and sets MQTT_URL), \
             or export MQTT_URL=mqtt://127.0.0.1:1883 for a running mosquitto."
        )
    })
}

pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("mqtt://").expect("mqtt:// URL");
    let (h, p) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or((rest, "1883"));
    (h.to_owned(), p.parse().unwrap())
}

/// A topic prefix no other test (or test run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("emqx-coap-test/{name}/{}-{nanos}", std::process::id())
}

fn client_id(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t-{name}-{}-{nanos}", std::process::id())
}

#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub expiry: Option<u32>,
}

/// A plain rumqttc MQTT 5 subscriber.
pub struct ExternalSubscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    _client: AsyncClient,
}

impl ExternalSubscriber {
    /// Connects, subscribes to `filter` at QoS 2 and waits for the SUBACK.
    pub async fn start(url: &str, filter: &str) -> Self {
        let (host, port) = host_port(url);
        let options = MqttOptions::new(client_id("sub"), host, port);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::ExactlyOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subacked = Some(subacked_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(s) = subacked.take() {
                            let _ = s.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let props = p.properties.unwrap_or_default();
                        let _ = tx.send(Received {
                            topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            expiry: props.message_expiry_interval,
                        });
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subacked_rx)
            .await
            .unwrap()
            .unwrap();
        Self {
            rx,
            _client: client,
        }
    }

    /// The next message, or `None` after `wait` without one.
    #[allow(dead_code)]
    pub async fn try_next(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a message within 5 s")
            .unwrap()
    }
}

/// Publishes one message with a plain rumqttc client and waits for its
/// acknowledgement (QoS 1/2) or for it to be written (QoS 0).
pub async fn external_publish(url: &str, topic: &str, payload: &str, qos: u8) {
    external_publish_with(url, topic, payload, qos, false).await;
}

pub async fn external_publish_with(url: &str, topic: &str, payload: &str, qos: u8, retain: bool) {
    let (host, port) = host_port(url);
    let options = MqttOptions::new(client_id("pub"), host, port);
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

/// Runs `mosquitto_sub -V mqttv5 -C 1` on `topic` and returns its one line
/// formatted `%t|%q|%r|%E|%p` (topic, QoS, retain, expiry, payload).
pub async fn mosquitto_sub_one(url: &str, topic: &str) -> String {
    let (host, port) = host_port(url);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("mosquitto_sub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "-t",
                &topic,
                "-q",
                "2",
            ])
            .args(["-C", "1", "-W", "5", "-F", "%t|%q|%r|%E|%p"])
            .output()
            .expect("mosquitto_sub is installed (scripts/test.sh installs mosquitto-clients)");
        assert!(out.status.success(), "mosquitto_sub failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    })
    .await
    .unwrap()
}

/// A mosquitto of our own on a free loopback port, killed on drop.
pub struct PrivateMosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateMosquitto {
    pub fn start() -> Self {
        Self::start_config("allow_anonymous true\n")
    }

    /// With a password file (`allow_anonymous false`) and an ACL file.
    pub fn start_with_auth(users: &[(&str, &str)], acl: &str) -> Self {
        let dir = temp_dir();
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for (user, password) in users {
            let status = Command::new("mosquitto_passwd")
                .args(["-b", passwd.to_str().unwrap(), user, password])
                .status()
                .expect("mosquitto_passwd is installed");
            assert!(status.success());
        }
        let aclfile = dir.join("acl");
        std::fs::write(&aclfile, acl).unwrap();
        let extra = format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwd.display(),
            aclfile.display()
        );
        Self::start_in(dir, &extra)
    }

    /// With a TLS listener; returns the PEM of the CA that signed the
    /// broker's certificate (for 127.0.0.1 and localhost).
    pub fn start_tls() -> (Self, Vec<u8>) {
        let dir = temp_dir();
        let ca = make_ca(&dir, "ca");
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ]
            .iter()
            .chain(&[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ])
            .copied()
            .collect::<Vec<_>>(),
        );
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
            ]
            .iter()
            .chain(&["-out", "server.crt", "-days", "1", "-extfile", "ext"])
            .copied()
            .collect::<Vec<_>>(),
        );
        // mosquitto started as root reads its files as user "mosquitto".
        for f in ["ca.crt", "server.crt", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let extra = format!(
            "allow_anonymous true\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n",
            dir.display()
        );
        (Self::start_in(dir, &extra), ca)
    }

    /// A CA the broker does not use (for a failing verification).
    pub fn unrelated_ca() -> Vec<u8> {
        let dir = temp_dir();
        let ca = make_ca(&dir, "other");
        let _ = std::fs::remove_dir_all(&dir);
        ca
    }

    fn start_config(extra: &str) -> Self {
        Self::start_in(temp_dir(), extra)
    }

    fn start_in(dir: PathBuf, extra: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!("listener {port} 127.0.0.1\npersistence false\n{extra}");
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        let mut me = Self {
            port,
            dir,
            child: None,
        };
        me.restart();
        me
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker (the port stays ours: nothing else binds it in time).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits until it accepts.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let cn = format!("/CN=test-{name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "1",
            "-subj",
            &cn,
        ],
    );
    std::fs::read(dir.join(&crt)).unwrap()
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("emqx-coap-mosq-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
