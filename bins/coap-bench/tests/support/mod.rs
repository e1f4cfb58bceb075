//! Helpers for the `coap-bench` integration tests: run the built binary,
//! start libcoap's servers and the UDP echo on free loopback ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_coap-bench");

/// A child process killed when dropped.
pub(crate) struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails with a clear message when a libcoap binary is missing.
pub(crate) fn require(program: &str) {
    match Command::new(program)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(error) => panic!(
            "{program} is not runnable ({error}): install Debian's libcoap3-bin \
             (scripts/test.sh does: apt-get install -y libcoap3-bin)"
        ),
    }
}

/// A UDP port free right now on 127.0.0.1 (and, with `pair`, the next one too).
pub(crate) fn free_port(pair: bool) -> u16 {
    for _ in 0..100 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if !pair {
            return port;
        }
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// Runs `coap-bench` with `args` and returns its output (time-limited).
pub(crate) fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "coap-bench {args:?} ran for {:?}",
        started.elapsed()
    );
    output
}

/// Runs `coap-bench load … --json` and parses the summary.
pub(crate) fn load_json(args: &[&str]) -> Value {
    let mut all = vec!["load", "--json", "--quiet"];
    all.extend_from_slice(args);
    let output = run(&all);
    assert!(
        output.status.success(),
        "coap-bench {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Starts `coap-bench udp-echo` on a free port; returns the guard and address.
pub(crate) fn start_echo() -> (Guard, String) {
    let mut child = Command::new(BIN)
        .args(["udp-echo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("udp-echo listening on ")
        .unwrap_or_else(|| panic!("unexpected udp-echo output {line:?}"))
        .to_owned();
    (guard, addr)
}

/// Starts a libcoap server (`coap-server-notls` or `-openssl`) with extra
/// arguments on `port` and waits until `/time` answers on `probe_uri`.
pub(crate) fn start_libcoap(program: &str, port: u16, extra: &[&str], probe: &[&str]) -> Guard {
    require(program);
    let port_text = port.to_string();
    let mut args = vec!["-A", "127.0.0.1", "-p", port_text.as_str()];
    args.extend_from_slice(extra);
    let child = Command::new(program)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut all = vec!["request", "--timeout", "300ms"];
        all.extend_from_slice(probe);
        if run(&all).status.success() {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "{program} did not come up on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `summary["latency_us"][name]` as a number.
pub(crate) fn latency(summary: &Value, name: &str) -> u64 {
    summary["latency_us"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("latency_us.{name} missing in {summary}"))
}

/// Checks the latency fields are present and ordered.
pub(crate) fn assert_latency_ordered(summary: &Value) {
    let (min, p50, p90, p99, p999, max) = (
        latency(summary, "min"),
        latency(summary, "p50"),
        latency(summary, "p90"),
        latency(summary, "p99"),
        latency(summary, "p999"),
        latency(summary, "max"),
    );
    assert!(min > 0, "{summary}");
    assert!(
        min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{summary}"
    );
}

pub(crate) fn u(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {summary}"))
}
