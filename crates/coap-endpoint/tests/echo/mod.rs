//! Starts the `echo_server` example as a child process for socket tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running echo_server; killed on drop.
pub struct EchoServer {
    child: Child,
    pub udp: SocketAddr,
    pub dtls: Option<SocketAddr>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example binary: `cargo test` builds examples next to the test
/// binaries (`target/debug/examples/echo_server`). `cargo test --test NAME`
/// does not, so when that binary is missing or older than the crate's
/// sources, build it into a target dir of its own (the outer cargo holds
/// the lock on ours).
pub fn echo_server_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let path = profile_dir.join("examples").join("echo_server");
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["src", "examples"]
        .iter()
        .filter_map(|dir| newest_mtime(&crate_dir.join(dir)))
        .max();
    match (built, newest_source) {
        (Some(built), Some(source)) if built >= source => return path,
        (Some(_), None) => return path,
        _ => {}
    }
    let target = profile_dir.join("echo_server_build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--example",
            "echo_server",
            "-p",
            "coap-endpoint",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("run cargo build for echo_server");
    assert!(status.success(), "building the echo_server example failed");
    let path = target.join("debug").join("examples").join("echo_server");
    assert!(path.exists(), "echo_server not found at {}", path.display());
    path
}

fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

impl EchoServer {
    pub fn start(extra: &[&str]) -> EchoServer {
        let mut child = Command::new(echo_server_path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start echo_server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("a first line").unwrap();
        let udp = first
            .strip_prefix("listening on udp://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        let dtls = if extra.contains(&"--dtls") {
            let second = lines.next().expect("a second line").unwrap();
            Some(
                second
                    .strip_prefix("listening on dtls://")
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        } else {
            None
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        EchoServer { child, udp, dtls }
    }
}

/// Fails with a clear message when a libcoap client is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: install Debian's libcoap3-bin (scripts/test.sh does)")
    })
}

/// Output of one libcoap client run.
pub struct ClientRun {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Runs a libcoap client with `args`, with a hard time limit.
pub fn run_client(tool: &str, args: &[&str]) -> ClientRun {
    let path = require_tool(tool);
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    ClientRun {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    }
}
