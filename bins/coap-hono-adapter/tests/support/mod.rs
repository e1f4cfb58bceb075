//! Shared by the integration tests: start the real binary with a registry
//! file, drive it with libcoap's clients, and play the application on
//! RabbitMQ with lapin.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
#[allow(unused_imports, reason = "not every test file uses every helper")]
pub(crate) use test_support::amqp::{amqp_url, header_int, header_str, next};
use test_support::process::collect_lines;
#[allow(unused_imports, reason = "not every test file uses every helper")]
pub(crate) use test_support::process::listening;

/// The registry most tests use (Hono's sample identities).
pub(crate) const REGISTRY: &str = r#"{
  "tenants": [
    {"tenant-id": "DEFAULT_TENANT", "max-ttd": 20},
    {"tenant-id": "NOADAPTER", "adapters": [{"type": "hono-mqtt", "enabled": true}]},
    {"tenant-id": "ACKNOW", "adapters": [{"type": "hono-coap", "enabled": true,
       "ext": {"timeoutToAck": 0, "deviceTriggeredTimeoutToAck": 5000}}]},
    {"tenant-id": "NEVERACK", "adapters": [{"type": "hono-coap", "enabled": true, "ext": {"timeoutToAck": -1}}]},
    {"tenant-id": "LIMITED", "resource-limits": {"data-volume": {"max-bytes": 100,
       "effective-since": "2020-01-01T00:00:00Z", "period": {"mode": "days", "no-of-days": 100000}}}}
  ],
  "devices": [
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "via": ["gw-1", "gw-off"],
     "defaults": {"content-type": "application/json"}},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4712", "via": ["gw-1"]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "dev-off", "enabled": false},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-1"},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-2"},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-off", "enabled": false},
    {"tenant-id": "NOADAPTER", "device-id": "d1"},
    {"tenant-id": "ACKNOW", "device-id": "d1"},
    {"tenant-id": "NEVERACK", "device-id": "d1"},
    {"tenant-id": "LIMITED", "device-id": "d1"}
  ],
  "credentials": [
    {"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "type": "psk", "auth-id": "sensor1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "dev-off", "type": "psk", "auth-id": "off1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-1", "type": "psk", "auth-id": "gw",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-2", "type": "psk", "auth-id": "gw2",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "DEFAULT_TENANT", "device-id": "gw-off", "type": "psk", "auth-id": "gwoff",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "NOADAPTER", "device-id": "d1", "type": "psk", "auth-id": "d1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "ACKNOW", "device-id": "d1", "type": "psk", "auth-id": "d1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "NEVERACK", "device-id": "d1", "type": "psk", "auth-id": "d1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "LIMITED", "device-id": "d1", "type": "psk", "auth-id": "d1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]}
  ]
}"#;

/// libcoap's client built with OpenSSL.
pub(crate) const OPENSSL: &str = "coap-client-openssl";
/// libcoap's client built with GnuTLS.
pub(crate) const GNUTLS: &str = "coap-client-gnutls";
/// libcoap's client without DTLS.
pub(crate) const NOTLS: &str = "coap-client-notls";

pub(crate) const TENANT: &str = "DEFAULT_TENANT";
pub(crate) const SENSOR: (&str, &str) = ("sensor1@DEFAULT_TENANT", "hono-secret");
pub(crate) const GATEWAY: (&str, &str) = ("gw@DEFAULT_TENANT", "gw-secret");

/// A unique exchange prefix, so tests do not see each other's messages.
pub(crate) fn unique_prefix() -> String {
    test_support::amqp::unique_prefix("it")
}

/// A running `coap-hono-adapter` process.
pub(crate) struct Adapter {
    child: Option<Child>,
    pub(crate) dtls: SocketAddr,
    pub(crate) udp: Option<SocketAddr>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) prefix: String,
    pub(crate) registry_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Adapter {
    /// Starts the adapter on loopback (DTLS and insecure UDP on port 0) with
    /// `registry` against the broker at `amqp` (a unique prefix) plus
    /// `extra` flags, and waits for the listening lines.
    pub(crate) fn start(registry: &str, amqp: Option<&str>, extra: &[&str]) -> Self {
        Self::try_start(registry, amqp, extra).unwrap_or_else(|(log, status)| {
            panic!("adapter did not start ({status:?}):\n{}", log.join("\n"))
        })
    }

    /// Like [`start`](Self::start); on failure returns the log and the exit
    /// status.
    pub(crate) fn try_start(
        registry: &str,
        amqp: Option<&str>,
        extra: &[&str],
    ) -> Result<Self, (Vec<String>, Option<ExitStatus>)> {
        let dir = tempfile::tempdir().unwrap();
        let registry_path = dir.path().join("registry.json");
        std::fs::write(&registry_path, registry).unwrap();
        let prefix = unique_prefix();
        let mut command = Process::new(env!("CARGO_BIN_EXE_coap-hono-adapter"));
        command
            .arg("--registry")
            .arg(&registry_path)
            .args(["--dtls", "127.0.0.1:0", "--exchange-prefix", &prefix])
            .args(["--log", "debug"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !extra.contains(&"--insecure-udp") {
            command.args(["--insecure-udp", "127.0.0.1:0"]);
        }
        if let Some(url) = amqp {
            command.args(["--amqp", url]);
        }
        let mut child = command.spawn().expect("cannot start coap-hono-adapter");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stderr.take().unwrap(), log.clone());
        collect_lines(child.stdout.take().unwrap(), stdout.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = log.lock().unwrap().clone();
            let dtls = listening(&lines, "dtls");
            let udp = listening(&lines, "udp");
            let http = listening(&lines, "http");
            if let (Some(dtls), Some(_)) = (dtls, udp) {
                return Ok(Self {
                    child: Some(child),
                    dtls,
                    udp,
                    http,
                    prefix,
                    registry_path,
                    log,
                    stdout,
                    _dir: dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err((log.lock().unwrap().clone(), Some(status)));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err((lines, None));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The insecure UDP address.
    pub(crate) fn udp(&self) -> SocketAddr {
        self.udp.expect("started without --insecure-udp")
    }

    /// `coaps://127.0.0.1:PORT/path`.
    pub(crate) fn coaps(&self, path: &str) -> String {
        format!("coaps://{}{path}", self.dtls)
    }

    /// `coap://127.0.0.1:PORT/path` (insecure port).
    pub(crate) fn coap(&self, path: &str) -> String {
        format!("coap://{}{path}", self.udp())
    }

    /// The log lines so far.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The stdout lines so far.
    pub(crate) fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub(crate) async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Process::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `timeout`).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("adapter did not exit; log:\n{}", self.log().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One CoAP message as printed by `coap-client -v 6`.
#[derive(Debug, Clone)]
pub(crate) struct Pdu {
    /// CON, NON, ACK, RST.
    pub(crate) mtype: String,
    /// "2.04", "POST", "0.00" ...
    pub(crate) code: String,
    /// The option list as printed, e.g. `Location-Path:c, 65000:\x01...`.
    pub(crate) options: String,
    /// The payload as printed (printable bytes as themselves).
    pub(crate) payload: String,
}

/// What a coap-client run showed.
#[derive(Debug, Clone)]
pub(crate) struct ClientRun {
    /// Every PDU line, requests and responses.
    pub(crate) pdus: Vec<Pdu>,
    /// The payload of the final response, as printed in its PDU line.
    pub(crate) payload: String,
    /// What the client printed for an error response (`CODE text`).
    pub(crate) diagnostic: String,
    /// stderr as a whole (logs).
    pub(crate) stderr: String,
}

impl ClientRun {
    /// The final response (last PDU with a response code other than 0.00).
    pub(crate) fn response(&self) -> Option<&Pdu> {
        self.pdus
            .iter()
            .rev()
            .find(|p| p.code.contains('.') && p.code != "0.00")
    }

    /// The response code, or `"none"`.
    pub(crate) fn code(&self) -> String {
        self.response()
            .map(|p| p.code.clone())
            .unwrap_or_else(|| "none".to_owned())
    }

    /// The values of an option of the response, in order.
    pub(crate) fn option_values(&self, name: &str) -> Vec<String> {
        let Some(response) = self.response() else {
            return Vec::new();
        };
        let prefix = format!("{name}:");
        response
            .options
            .split(", ")
            .filter_map(|o| o.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }
}

/// Runs a libcoap client (`coap-client-openssl`, `-gnutls`, `-notls`) with
/// `-v 6 -B 5` and `args`.
pub(crate) async fn coap_client(client: &str, args: &[&str]) -> ClientRun {
    coap_client_with_wait(client, 5, args).await
}

/// [`coap_client`] with `-B wait_secs`.
pub(crate) async fn coap_client_with_wait(
    client: &str,
    wait_secs: u32,
    args: &[&str],
) -> ClientRun {
    let output = tokio::process::Command::new(client)
        .args(["-v", "6", "-B", &wait_secs.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run {client} ({e}); scripts/test.sh installs libcoap3-bin")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let pdus = stdout
        .lines()
        .chain(stderr.lines())
        .filter_map(parse_pdu)
        .collect();
    let plain = |text: &str| {
        text.lines()
            .filter(|l| parse_pdu(l).is_none() && !is_log_line(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let pdus: Vec<Pdu> = pdus;
    let payload = pdus
        .iter()
        .rev()
        .find(|p| p.code.contains('.') && p.code != "0.00")
        .map(|p| p.payload.clone())
        .unwrap_or_default();
    ClientRun {
        pdus,
        payload,
        diagnostic: plain(&stderr),
        stderr,
    }
}

/// libcoap log lines start with a time stamp such as `Nov 23 05:49:10.643`.
fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':'
}

fn parse_pdu(line: &str) -> Option<Pdu> {
    let start = line.find("v:1 t:")?;
    let rest = &line[start + 6..];
    let mtype = rest.split_whitespace().next()?.to_owned();
    let code_start = rest.find(" c:")? + 3;
    let code = rest[code_start..].split_whitespace().next()?.to_owned();
    // Options are printed as ` [ A:1, B:2 ]` (` [ ]` when there are none)
    // and the payload follows ` :: `.
    let head = rest.split(" :: ").next().unwrap_or(rest);
    let options = match (head.find(" ["), head.rfind(']')) {
        (Some(a), Some(b)) if b > a + 2 => head[a + 2..b].trim().to_owned(),
        _ => String::new(),
    };
    let payload = rest
        .split_once(" :: ")
        .map(|(_, p)| p.trim_end().trim_matches('\'').to_owned())
        .unwrap_or_default();
    Some(Pdu {
        mtype,
        code,
        options,
        payload,
    })
}

/// PSK client arguments.
pub(crate) fn psk(identity: (&str, &str)) -> [String; 4] {
    [
        "-u".into(),
        identity.0.into(),
        "-k".into(),
        identity.1.into(),
    ]
}

/// Runs a client with owned arguments.
pub(crate) async fn run(client: &str, args: Vec<String>) -> ClientRun {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    coap_client(client, &refs).await
}

/// [`run`] with `-B wait_secs`.
pub(crate) async fn run_wait(client: &str, wait_secs: u32, args: Vec<String>) -> ClientRun {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    coap_client_with_wait(client, wait_secs, &refs).await
}

/// Builds an argument list.
macro_rules! args {
    ($($part:expr),* $(,)?) => {{
        let mut v: Vec<String> = Vec::new();
        $( v.extend($crate::support::IntoArgs::into_args($part)); )*
        v
    }};
}

/// Things that become arguments.
pub(crate) trait IntoArgs {
    fn into_args(self) -> Vec<String>;
}
impl IntoArgs for &str {
    fn into_args(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}
impl IntoArgs for String {
    fn into_args(self) -> Vec<String> {
        vec![self]
    }
}
impl IntoArgs for &String {
    fn into_args(self) -> Vec<String> {
        vec![self.clone()]
    }
}
impl<const N: usize> IntoArgs for [String; N] {
    fn into_args(self) -> Vec<String> {
        self.to_vec()
    }
}

pub(crate) use test_support::amqp::App;

/// Commands as this binary's tests send them.
pub(crate) trait SendCommand {
    /// Publishes a command (mandatory); `true` if routed to a waiting
    /// device, `false` if the broker returned it.
    async fn send_command(&self, command: &Cmd<'_>) -> bool;
    /// Sends a command once the device waits (retrying while it is
    /// returned as unroutable, up to 10 s).
    async fn send_command_when_waiting(&self, command: &Cmd<'_>);
}

impl SendCommand for App {
    /// Publishes a command (mandatory); `true` if routed to a waiting
    /// device, `false` if the broker returned it.
    async fn send_command(&self, command: &Cmd<'_>) -> bool {
        self.publish_command(&test_support::amqp::Command {
            tenant: command.tenant,
            device: command.device,
            name: command.name,
            content_type: command.content_type,
            correlation_id: command.reply.map(|(c, _)| c),
            reply_to: command.reply.map(|(_, r)| r),
            payload: command.payload,
        })
        .await
    }

    /// Sends a command once the device waits (retrying while it is
    /// returned as unroutable, up to 10 s).
    async fn send_command_when_waiting(&self, command: &Cmd<'_>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.send_command(command).await {
            assert!(
                Instant::now() < deadline,
                "{}/{} never waited for a command",
                command.tenant,
                command.device
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A command as an application sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cmd<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) device: &'a str,
    pub(crate) name: &'a str,
    pub(crate) content_type: Option<&'a str>,
    /// `(correlation_id, reply_to)` of a request-response command.
    pub(crate) reply: Option<(&'a str, &'a str)>,
    pub(crate) payload: &'a [u8],
}

impl<'a> Cmd<'a> {
    /// A one-way command for a device of DEFAULT_TENANT.
    pub(crate) fn one_way(device: &'a str, name: &'a str, payload: &'a [u8]) -> Self {
        Self {
            tenant: TENANT,
            device,
            name,
            content_type: None,
            reply: None,
            payload,
        }
    }

    /// Makes it request-response.
    pub(crate) fn reply(mut self, correlation_id: &'a str, reply_to: &'a str) -> Self {
        self.reply = Some((correlation_id, reply_to));
        self
    }

    /// Sets the content type.
    pub(crate) fn content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }
}

/// The next delivery within 5 s; fails otherwise.
pub(crate) async fn expect(consumer: &mut lapin::Consumer) -> Delivery {
    next(consumer, Duration::from_secs(5))
        .await
        .expect("no message arrived within 5 s")
}

/// The content type property.
pub(crate) fn content_type(d: &Delivery) -> Option<String> {
    d.properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_owned())
}
