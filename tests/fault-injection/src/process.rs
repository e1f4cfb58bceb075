//! A gateway binary as a child process: start, find its bound addresses in
//! the `listening what=KIND addr=ADDR` log lines, read its RSS and metrics,
//! check that it is still alive, kill it on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::binaries::gateway_binary;

/// A running `coap-emqx-gateway` or `coap-hono-adapter`.
pub struct GatewayProcess {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The binary's name, for messages.
    pub name: String,
}

impl GatewayProcess {
    /// Starts `binary` with `args` (log level `info` unless the args say
    /// otherwise) and waits until a `listening what=KIND` line was logged for
    /// every kind in `listeners` (e.g. `["udp", "http"]`).
    pub fn start(binary: &str, args: &[&str], listeners: &[&str]) -> Self {
        let path = gateway_binary(binary);
        let mut command = Command::new(path);
        if !args.contains(&"--log") {
            command.args(["--log", "info"]);
        }
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        collect(child.stderr.take().expect("stderr"), log.clone());
        collect(child.stdout.take().expect("stdout"), log.clone());
        let mut me = Self {
            child: Some(child),
            log,
            name: binary.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listeners.iter().all(|kind| me.try_addr(kind).is_some()) {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{binary} exited ({status}) before listening:\n{}",
                    me.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{binary} did not announce {listeners:?} within 30 s:\n{}",
                me.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// The address of the `listening what=KIND` line.
    pub fn addr(&self, kind: &str) -> SocketAddr {
        self.try_addr(kind)
            .unwrap_or_else(|| panic!("{} announced no {kind} listener", self.name))
    }

    fn try_addr(&self, kind: &str) -> Option<SocketAddr> {
        let needle = format!("listening what={kind} addr=");
        self.lines().iter().find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log lines (stderr and stdout) so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still running; fails the test with the log
    /// tail if it exited (a crash or panic).
    pub fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            let lines = self.lines();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("{} died ({status}); log tail:\n{tail}", self.name);
        }
        let panics: Vec<String> = self
            .lines()
            .into_iter()
            .filter(|l| l.contains("panicked"))
            .collect();
        assert!(panics.is_empty(), "{} panicked: {panics:?}", self.name);
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line")
    }

    /// `GET /metrics` from the `--http` listener.
    pub fn metrics(&self) -> String {
        http_get(self.addr("http"), "/metrics")
    }

    /// The sum of every sample of `name` (all label sets) in `/metrics`;
    /// a counter may carry the `_total` suffix. Fails the test when the
    /// metric is missing, so a renamed metric never reads as 0.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        metric_sum(&text, name)
            .or_else(|| metric_sum(&text, &format!("{name}_total")))
            .unwrap_or_else(|| panic!("{} exposes no metric {name}:\n{text}", self.name))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
}

/// A blocking `GET path` over HTTP/1.1; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The sum of every sample of `name` in Prometheus text, `None` when
/// there is none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}
