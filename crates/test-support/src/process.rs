//! Output lines of child processes and the gateways' `listening` lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Appends every line of `stream` to `into`, on a thread of its own, until
/// the stream ends or yields something that is not text.
pub fn collect_lines(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
}

/// The address of the first `listening what=WHAT addr=ADDR` line.
pub fn listening(lines: &[String], what: &str) -> Option<SocketAddr> {
    let needle = format!("what={what} addr=");
    lines.iter().find_map(|l| {
        let rest = l.get(l.find(&needle)? + needle.len()..)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
