//! The MQTT broker under test, plain rumqttc publishing, and a private
//! mosquitto.

use std::net::TcpStream;
use std::path::Path;
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

/// A mosquitto of a test's own on a free loopback port (no persistence,
/// room for 100 000 queued messages per client), killed on drop: plain
/// ([`start`](Self::start)), with users and ACLs
/// ([`start_with_auth`](Self::start_with_auth)) or with TLS
/// ([`start_tls`](Self::start_tls)).
pub struct PrivateMosquitto {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateMosquitto {
    /// Anonymous access.
    pub fn start() -> Self {
        Self::start_in(temp_dir(), "allow_anonymous true\n")
    }

    /// With a password file (`allow_anonymous false`) and an ACL file.
    pub fn start_with_auth(users: &[(&str, &str)], acl: &str) -> Self {
        let dir = temp_dir();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for (user, password) in users {
            let status = Command::new("mosquitto_passwd")
                .args(["-b", passwd.to_str().unwrap(), user, password])
                .status()
                .expect("mosquitto_passwd is installed");
            assert!(status.success());
        }
        let aclfile = dir.path().join("acl");
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
        let path = dir.path();
        let ca = make_ca(path, "ca");
        openssl(
            path,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            path.join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            path,
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
                "-out",
                "server.crt",
                "-days",
                "1",
                "-extfile",
                "ext",
            ],
        );
        // mosquitto started as root reads its files as user "mosquitto".
        for f in ["ca.crt", "server.crt", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let extra = format!(
            "allow_anonymous true\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n",
            path.display()
        );
        (Self::start_in(dir, &extra), ca)
    }

    /// A CA the broker does not use (for a failing verification).
    pub fn unrelated_ca() -> Vec<u8> {
        let dir = temp_dir();
        make_ca(dir.path(), "other")
    }

    fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        let port = free_tcp_port();
        let config = format!(
            "listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 100000\n{extra}"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        // mosquitto started as root drops to user "mosquitto".
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
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

    /// `kill -9` (no goodbye to any client) and reap; the port stays
    /// ours for a restart (nothing else binds it in time).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits (at most 10 s) until it
    /// accepts.
    pub fn restart(&mut self) {
        self.kill9();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
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
        self.kill9();
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("test-support-mosq-")
        .tempdir()
        .unwrap()
}

fn openssl(dir: &Path, args: &[&str]) {
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

/// A self-signed CA `NAME.key` / `NAME.crt` in `dir`; returns the PEM.
fn make_ca(dir: &Path, name: &str) -> Vec<u8> {
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
