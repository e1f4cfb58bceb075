#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! A small CoAP server showing how a Rust service embeds `coap-endpoint`.
//!
//! ```text
//! cargo run -p coap-endpoint --example echo_server -- --listen 127.0.0.1:5683 \
//!     [--dtls 127.0.0.1:5684 --psk IDENTITY:SECRET ...]
//! ```
//!
//! Prints `listening on udp://ADDR` (then `listening on dtls://ADDR`) first.
//!
//! Resources:
//! - `/echo` GET/POST/PUT: answers with the request payload
//! - `/store/{name}` PUT/POST store, GET returns, DELETE removes
//! - `/counter` and `/time` observable, change every second
//! - `/large` 5000 bytes (Block2)
//! - `/upload` POST/PUT any size (Block1), GET returns the last upload
//! - `/slow` answers after 2 s (separate response)
//! - `/whoami` the client's address and DTLS PSK identity
//! - `/.well-known/core` link-format

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message};
use coap_endpoint::server::ServerEvent;
use coap_endpoint::transport::Transport;
use coap_endpoint::{
    EndpointConfig, IncomingRequestHandle, LinkResource, RelationId, Server, render_link_format,
    response,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Observable {
    Counter,
    Time,
}

/// State shared by the UDP and DTLS servers.
#[derive(Default)]
struct Shared {
    store: Mutex<HashMap<String, Bytes>>,
    upload: Mutex<Bytes>,
    counter: Mutex<u64>,
}

/// Per-server observers (relation ids are per endpoint).
type Observers = Arc<Mutex<HashMap<RelationId, Observable>>>;

struct Args {
    listen: SocketAddr,
    dtls: Option<SocketAddr>,
    psk: Vec<(Vec<u8>, Vec<u8>)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:5683".parse().unwrap(),
        dtls: None,
        psk: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--dtls" => args.dtls = Some(value()?.parse().map_err(|e| format!("--dtls: {e}"))?),
            "--psk" => {
                let v = value()?;
                let (id, key) = v.split_once(':').ok_or("--psk wants IDENTITY:SECRET")?;
                args.psk
                    .push((id.as_bytes().to_vec(), key.as_bytes().to_vec()));
            }
            "--help" | "-h" => {
                println!("echo_server [--listen ADDR] [--dtls ADDR --psk IDENTITY:SECRET ...]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.dtls.is_some() && args.psk.is_empty() {
        return Err("--dtls needs at least one --psk IDENTITY:SECRET".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("echo_server: {error}");
            std::process::exit(2);
        }
    };
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });

    let udp = Server::bind(args.listen, EndpointConfig::default())
        .await
        .unwrap_or_else(|e| {
            eprintln!("echo_server: {e}");
            std::process::exit(1);
        });
    println!("listening on udp://{}", udp.local_addr().unwrap());
    #[cfg_attr(not(feature = "dtls"), allow(unused_mut))]
    let mut tasks = vec![tokio::spawn(serve(
        udp,
        Arc::clone(&shared),
        stop_rx.clone(),
    ))];

    #[cfg(feature = "dtls")]
    if let Some(addr) = args.dtls {
        let keys: HashMap<Vec<u8>, Vec<u8>> = args.psk.into_iter().collect();
        let config = coap_dtls::ServerConfig::new(Arc::new(keys));
        let transport = coap_endpoint::DtlsTransport::bind(addr, config)
            .await
            .unwrap_or_else(|e| {
                eprintln!("echo_server: DTLS: {e}");
                std::process::exit(1);
            });
        let server = Server::new(transport, EndpointConfig::default()).unwrap();
        println!("listening on dtls://{}", server.local_addr().unwrap());
        tasks.push(tokio::spawn(serve(
            server,
            Arc::clone(&shared),
            stop_rx.clone(),
        )));
    }
    #[cfg(not(feature = "dtls"))]
    if args.dtls.is_some() {
        eprintln!("echo_server: built without the dtls feature");
        std::process::exit(2);
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    for task in tasks {
        let _ = task.await;
    }
}

async fn serve<T: Transport>(
    mut server: Server<T>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let observers: Observers = Arc::default();
    let handle = server.handle();
    let mut events = server.events();

    // Observe relations that end (deregistration, RST, timeout) are forgotten.
    let obs = Arc::clone(&observers);
    tokio::spawn(async move {
        while let Some(ServerEvent::ObserveCancelled { relation, .. }) = events.recv().await {
            obs.lock().unwrap().remove(&relation);
        }
    });

    // Every second: bump the counter and notify every observer.
    let (obs, state) = (Arc::clone(&observers), Arc::clone(&shared));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let value = {
                let mut counter = state.counter.lock().unwrap();
                *counter += 1;
                *counter
            };
            let targets: Vec<(RelationId, Observable)> =
                obs.lock().unwrap().iter().map(|(r, o)| (*r, *o)).collect();
            for (relation, kind) in targets {
                let body = representation(kind, value);
                if handle.notify(relation, body, false).await.is_err() {
                    obs.lock().unwrap().remove(&relation);
                }
            }
        }
    });

    let handler = move |request: IncomingRequestHandle| {
        let shared = Arc::clone(&shared);
        let observers = Arc::clone(&observers);
        async move { handle_request(request, shared, observers).await }
    };
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(error) = server.run(handler, shutdown).await {
        eprintln!("echo_server: {error}");
    }
}

fn representation(kind: Observable, counter: u64) -> Message {
    let text = match kind {
        Observable::Counter => counter.to_string(),
        Observable::Time => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
    };
    response(Code::CONTENT)
        .with_content_format(ContentFormat::TEXT_PLAIN)
        .with_uint_option(coap_endpoint::coap_codec::OptionNumber::MAX_AGE, 2)
        .with_payload(text.into_bytes())
}

fn large_body() -> Bytes {
    let mut text = String::new();
    let mut line = 0;
    while text.len() < 5000 {
        text.push_str(&format!(
            "line {line:04} of the large resource, for Block2 tests\n"
        ));
        line += 1;
    }
    text.truncate(5000);
    Bytes::from(text)
}

async fn handle_request(request: IncomingRequestHandle, shared: Arc<Shared>, observers: Observers) {
    let IncomingRequestHandle {
        peer,
        message,
        observe_registration,
        responder,
    } = request;
    let segments: Vec<String> = message
        .uri_path()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = message.code;
    let reply = match (path.as_slice(), method) {
        ([".well-known", "core"], Code::GET) => response(Code::CONTENT)
            .with_content_format(ContentFormat::LINK_FORMAT)
            .with_payload(render_link_format(&[
                LinkResource::new("/echo").with_attribute("rt", "echo"),
                LinkResource::new("/store").with_attribute("rt", "store"),
                LinkResource::new("/counter")
                    .with_flag("obs")
                    .with_attribute("rt", "counter"),
                LinkResource::new("/time")
                    .with_flag("obs")
                    .with_attribute("rt", "clock"),
                LinkResource::new("/large").with_attribute("sz", "5000"),
                LinkResource::new("/upload"),
                LinkResource::new("/slow"),
                LinkResource::new("/whoami"),
            ])),
        (["echo"], Code::GET | Code::POST | Code::PUT) => {
            let code = if method == Code::GET {
                Code::CONTENT
            } else {
                Code::CHANGED
            };
            let mut reply = response(code).with_payload(message.payload.clone());
            if let Some(format) = message.content_format() {
                reply = reply.with_content_format(format);
            }
            reply
        }
        (["store", name], Code::PUT | Code::POST) => {
            let created = shared
                .store
                .lock()
                .unwrap()
                .insert((*name).to_string(), message.payload.clone())
                .is_none();
            response(if created {
                Code::CREATED
            } else {
                Code::CHANGED
            })
        }
        (["store", name], Code::GET) => match shared.store.lock().unwrap().get(*name) {
            Some(value) => response(Code::CONTENT).with_payload(value.clone()),
            None => response(Code::NOT_FOUND),
        },
        (["store", name], Code::DELETE) => {
            shared.store.lock().unwrap().remove(*name);
            response(Code::DELETED)
        }
        ([resource @ ("counter" | "time")], Code::GET) => {
            let kind = if *resource == "counter" {
                Observable::Counter
            } else {
                Observable::Time
            };
            let value = *shared.counter.lock().unwrap();
            let mut reply = representation(kind, value);
            if observe_registration {
                reply = reply.with_observe(0);
                if let Ok(Some(relation)) = responder.respond(reply).await {
                    observers.lock().unwrap().insert(relation, kind);
                }
                return;
            }
            reply
        }
        (["whoami"], Code::GET) => {
            // The transport's view of the client: the DTLS PSK identity, if any.
            let text = match &peer.identity {
                Some(identity) => format!("{} {}", String::from_utf8_lossy(identity), peer.addr),
                None => format!("anonymous {}", peer.addr),
            };
            response(Code::CONTENT).with_payload(text.into_bytes())
        }
        (["large"], Code::GET) => response(Code::CONTENT)
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_payload(large_body()),
        (["upload"], Code::POST | Code::PUT) => {
            let n = message.payload.len();
            *shared.upload.lock().unwrap() = message.payload.clone();
            response(Code::CHANGED).with_payload(format!("received {n} bytes").into_bytes())
        }
        (["upload"], Code::GET) => {
            response(Code::CONTENT).with_payload(shared.upload.lock().unwrap().clone())
        }
        (["slow"], Code::GET) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            response(Code::CONTENT).with_payload(&b"finally"[..])
        }
        (
            [".well-known", "core"]
            | ["echo"]
            | ["store", _]
            | ["counter"]
            | ["time"]
            | ["large"]
            | ["upload"]
            | ["slow"]
            | ["whoami"],
            _,
        ) => response(Code::METHOD_NOT_ALLOWED),
        _ => response(Code::NOT_FOUND),
    };
    let _ = responder.respond(reply).await;
}
