#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]
//! Test support: the gateway binary as a child process, libcoap's clients,
//! a raw CoAP/UDP client, MQTT clients (rumqttc) and private mosquitto
//! instances.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, Message, MessageType};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_coap-emqx-gateway");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-{}", name, unique()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn unique() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

/// The gateway binary, started with `--udp 127.0.0.1:0`, `--log debug`
/// (unless `args` has `--log`) and the given arguments; killed on drop.
pub struct Gateway {
    child: Option<Child>,
    pub udp: SocketAddr,
    pub dtls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Gateway {
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command.args(["--udp", "127.0.0.1:0"]);
        // Debug logs (one line per request) unless the test picks a level.
        if !args.contains(&"--log") {
            command.args(["--log", "debug"]);
        }
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, cv) = &*sink;
                lines.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let mut me = Self {
            child: Some(child),
            udp: "0.0.0.0:0".parse().unwrap(),
            dtls: None,
            http: None,
            log,
        };
        let wants_dtls = args.contains(&"--dtls");
        let wants_http = args.contains(&"--http");
        me.wait_log(Duration::from_secs(10), |l| l.contains("gateway started"));
        me.udp = me.listening("udp").unwrap();
        if wants_dtls {
            me.dtls = Some(me.listening("dtls").expect("dtls listener announced"));
        }
        if wants_http {
            me.http = Some(me.listening("http").expect("http listener announced"));
        }
        me
    }

    fn listening(&self, what: &str) -> Option<SocketAddr> {
        let needle = format!("listening what={what} addr=");
        self.lines().iter().find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits for a log line matching `pred` (the log so far included).
    pub fn wait_log(&self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no matching log line within {within:?}; log:\n{}",
                    guard.join("\n")
                );
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Number of log lines matching `pred`.
    pub fn count_log(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines().iter().filter(|l| pred(l)).count()
    }

    /// Waits (async-friendly) for a log line.
    pub async fn wait_log_async(
        &self,
        within: Duration,
        pred: impl Fn(&str) -> bool + Send + 'static,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching log line within {within:?}; log:\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn uri(&self, path_and_query: &str) -> String {
        format!("coap://{}/{path_and_query}", self.udp)
    }

    pub fn coaps_uri(&self, path_and_query: &str) -> String {
        format!("coaps://{}/{path_and_query}", self.dtls.unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One response as printed by libcoap's client at `-v 7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mtype: String,
    pub code: String,
    pub payload: String,
}

/// What a libcoap client run printed.
#[derive(Debug)]
pub struct ClientRun {
    /// Responses and notifications received, in order.
    pub responses: Vec<Seen>,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// The code of the last response.
    pub fn code(&self) -> &str {
        self.responses
            .last()
            .map(|s| s.code.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no response; stdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    pub fn payload(&self) -> &str {
        self.responses
            .last()
            .map(|s| s.payload.as_str())
            .unwrap_or("")
    }
}

/// Runs `client -v 7 ARGS` (libcoap) and collects the responses it got.
pub async fn coap_client(client: &str, args: &[&str]) -> ClientRun {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(client)
            .arg("-v")
            .arg("7")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("libcoap client finished within 30 s")
    .unwrap_or_else(|e| {
        panic!("{client} is installed (scripts/test.sh installs libcoap3-bin): {e}")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let responses = parse_received(&stdout);
    ClientRun {
        responses,
        stdout,
        stderr,
    }
}

/// `coap-client-notls` with `args`.
pub async fn coap(args: &[&str]) -> ClientRun {
    coap_client("coap-client-notls", args).await
}

/// Parses libcoap's debug log: a `received N bytes` line followed by the
/// message line `v:1 t:ACK c:2.05 i:... {token} [ options ] :: 'payload'`.
fn parse_received(log: &str) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut after_receive = false;
    for line in log.lines() {
        if line.contains(" received ") && line.contains(" bytes") {
            after_receive = true;
            continue;
        }
        if after_receive && let Some(start) = line.find("v:1 t:") {
            after_receive = false;
            let msg = &line[start..];
            let mut parts = msg.split_whitespace();
            let _v = parts.next();
            let mtype = parts
                .next()
                .unwrap_or("")
                .trim_start_matches("t:")
                .to_owned();
            let code = parts
                .next()
                .unwrap_or("")
                .trim_start_matches("c:")
                .to_owned();
            if code == "0.00" || !code.contains('.') {
                continue;
            }
            let payload = msg
                .find(" :: ")
                .map(|i| {
                    let p = &msg[i + 4..];
                    p.strip_prefix('\'')
                        .and_then(|p| p.strip_suffix('\''))
                        .unwrap_or(p)
                        .to_owned()
                })
                .unwrap_or_default();
            seen.push(Seen {
                mtype,
                code,
                payload,
            });
        }
    }
    seen
}

/// A CoAP client written directly on a UDP socket and the codec, for what
/// libcoap's client cannot express (empty tokens, message types of
/// notifications, RST).
pub struct RawClient {
    pub socket: UdpSocket,
    server: SocketAddr,
    next_mid: std::cell::Cell<u16>,
}

impl RawClient {
    pub async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            next_mid: std::cell::Cell::new(100),
        }
    }

    pub fn mid(&self) -> u16 {
        let mid = self.next_mid.get().wrapping_add(1);
        self.next_mid.set(mid);
        mid
    }

    /// A CON request with a fresh message id.
    pub fn request(&self, code: Code, token: &[u8], path: &str, queries: &[&str]) -> Message {
        let mut m = Message::new(MessageType::Con, code, self.mid())
            .with_token(Bytes::copy_from_slice(token))
            .with_uri_path(path);
        for q in queries {
            m = m.with_uri_query(q);
        }
        m
    }

    pub async fn send(&self, message: &Message) {
        self.socket
            .send_to(&message.to_bytes().unwrap(), self.server)
            .await
            .unwrap();
    }

    /// Sends and returns the response (piggybacked or separate; a separate
    /// CON response is acknowledged).
    pub async fn exchange(&self, message: Message) -> Message {
        self.send(&message).await;
        loop {
            let m = self.recv().await;
            if m.mtype == MessageType::Ack && m.code == Code::EMPTY {
                continue;
            }
            if m.token == message.token && m.code.is_response() {
                if m.mtype == MessageType::Con {
                    self.ack(&m).await;
                }
                return m;
            }
        }
    }

    pub async fn recv(&self) -> Message {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a datagram within 5 s")
    }

    pub async fn recv_within(&self, within: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(within, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(Message::from_bytes(Bytes::copy_from_slice(&buf[..n])).unwrap())
    }

    pub async fn ack(&self, m: &Message) {
        self.send(&Message::empty_ack(m.message_id)).await;
    }

    pub async fn reset(&self, m: &Message) {
        self.send(&Message::reset(m.message_id)).await;
    }

    /// The next notification (ACKing a CON one unless `ack` is false).
    pub async fn notification(&self, ack: bool) -> Message {
        let m = self.recv().await;
        if ack && m.mtype == MessageType::Con {
            self.ack(&m).await;
        }
        m
    }
}

// ---- MQTT ---------------------------------------------------------------

#[allow(unused_imports, reason = "not every test file uses every helper")]
pub use test_support::mqtt::{PrivateMosquitto, host_port, mqtt_url};

/// A topic prefix no other test (or test run) uses.
pub fn unique_prefix(name: &str) -> String {
    format!("coap-emqx-gw-test/{name}/{}", unique())
}

#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub expiry: Option<u32>,
}

/// A plain rumqttc MQTT 5 subscriber; it subscribes again after each
/// reconnect (a restarted private broker forgets subscriptions).
pub struct MqttSubscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    subacks: tokio::sync::watch::Receiver<u32>,
    _client: AsyncClient,
}

impl MqttSubscriber {
    /// Connects, subscribes to `filter` at QoS 2 and waits for the SUBACK.
    pub async fn start(url: &str, filter: &str) -> Self {
        let (host, port) = host_port(url);
        let mut options = MqttOptions::new(format!("t-sub-{}", unique()), host, port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacks_tx, subacks) = tokio::sync::watch::channel(0u32);
        let resubscriber = client.clone();
        let filter = filter.to_owned();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let c = resubscriber.clone();
                        let f = filter.clone();
                        tokio::spawn(async move {
                            let _ = c.subscribe(f, QoS::ExactlyOnce).await;
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        let _ = tx.send(Received {
                            topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            expiry: props.message_expiry_interval,
                        });
                    }
                    Ok(_) => {}
                    // A private broker that was stopped: keep reconnecting.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut me = Self {
            rx,
            subacks,
            _client: client,
        };
        me.wait_subscribed(1).await;
        me
    }

    /// Waits until the `n`th SUBACK (1 = first subscription, 2 = after the
    /// first reconnect, ...).
    pub async fn wait_subscribed(&mut self, n: u32) {
        tokio::time::timeout(Duration::from_secs(10), self.subacks.wait_for(|k| *k >= n))
            .await
            .expect("subscribed within 10 s")
            .unwrap();
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("an MQTT message within 5 s")
            .unwrap()
    }

    pub async fn next_within(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Publishes one message with a plain rumqttc client and waits for its
/// acknowledgement (QoS 1/2) or for it to be written (QoS 0).
pub async fn mqtt_publish(url: &str, topic: &str, payload: &str, qos: u8, retain: bool) {
    test_support::mqtt::publish(
        url,
        format!("t-pub-{}", unique()),
        topic,
        payload,
        qos,
        retain,
    )
    .await;
}

// ---- HTTP (metrics, health, management API) ------------------------------

/// `METHOD path` with an optional JSON body; returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("HTTP answer within 30 s");
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The value of one series (`name{labels}` exactly as rendered, or a bare
/// name) in a Prometheus text scrape; `None` if absent.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
