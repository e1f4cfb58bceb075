//! `load --connect`: EMQX connection mode. The server here is a scripted
//! stand-in for the gateway (the real one is tested in its own crate): it
//! hands out a token per clientid and answers 2.04 only to requests that
//! carry the matching `clientid` and `token`, 4.01 otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod support;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coap_codec::{Code, Message, MessageRef, MessageType};
use support::{load_json, u};

fn query(msg: &MessageRef<'_>, key: &str) -> Option<String> {
    msg.query_param(key)
        .and_then(|p| p.value_str().map(str::to_owned))
}

fn serve(socket: UdpSocket, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(msg) = MessageRef::parse(&buf[..n]) else {
            continue;
        };
        let path: Vec<_> = msg
            .uri_path()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let clientid = query(&msg, "clientid").unwrap_or_default();
        let (code, payload) = match path.first().map(String::as_str) {
            Some("mqtt") => {
                let token = format!("{}", 1000 + tokens.len());
                tokens.insert(clientid, token.clone());
                (Code::CREATED, token)
            }
            Some("ps") => match (tokens.get(&clientid), query(&msg, "token")) {
                (Some(expected), Some(token)) if *expected == token => {
                    if msg.code() == Code::GET {
                        (Code::CONTENT, String::new())
                    } else {
                        (Code::CHANGED, String::new())
                    }
                }
                _ => (Code::UNAUTHORIZED, "bad token".to_owned()),
            },
            _ => (Code::NOT_FOUND, String::new()),
        };
        let mtype = if msg.mtype() == MessageType::Con {
            MessageType::Ack
        } else {
            MessageType::Non
        };
        let mut reply = Message::new(mtype, code, msg.message_id())
            .with_token(msg.token().to_vec())
            .with_payload(payload.into_bytes());
        if code == Code::CONTENT && msg.observe() == Some(0) {
            reply = reply.with_observe(1);
        }
        let reply = reply.to_bytes().unwrap();
        let _ = socket.send_to(&reply, peer);
    }
}

#[test]
fn connect_mode_adds_each_clients_token() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || serve(socket, stop))
    };
    let uri = format!("coap://{addr}/ps/bench/{{client}}?clientid=c{{client}}");
    let summary = load_json(&[
        &uri,
        "--method",
        "post",
        "--payload",
        "hello",
        "--clients",
        "5",
        "--requests",
        "500",
        "--connect",
        "mqtt/connection?clientid=c{client}&username=u&password=p",
    ]);
    assert_eq!(summary["sockets"], 5, "{summary}");
    assert_eq!(summary["responses_by_code"]["2.04"], 500, "{summary}");
    assert_eq!(u(&summary, "timeouts"), 0, "{summary}");

    // Observers in connection mode: each connects, then registers with
    // its clientid and token.
    let summary = load_json(&[
        &uri,
        "--observe",
        "4",
        "--duration",
        "200ms",
        "--connect",
        "mqtt/connection?clientid=c{client}",
    ]);
    assert_eq!(summary["observe"]["registered"], 4, "{summary}");
    assert_eq!(summary["sockets"], 4, "{summary}");

    // Without --connect the same requests carry no token: 4.01.
    let summary = load_json(&[
        &uri,
        "--method",
        "post",
        "--clients",
        "2",
        "--requests",
        "20",
    ]);
    assert_eq!(summary["responses_by_code"]["4.01"], 20, "{summary}");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}
