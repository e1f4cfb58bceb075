//! A small CoAP client over one UDP socket with its own CON retransmission
//! (so it survives a lossy link), responses matched by token, and observe
//! notifications collected on a channel (CON ones acknowledged).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, Message, MessageType};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Retransmission of CON requests (RFC 7252 §4.2 shape, faster numbers).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First timeout; doubled after each retransmission.
    pub ack_timeout: Duration,
    /// Retransmissions after the first send.
    pub max_retransmit: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_millis(300),
            max_retransmit: 6,
        }
    }
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Exchange {
    /// The response, if one came.
    pub response: Option<Message>,
    /// Transmissions of the request (1 = no retransmission).
    pub transmissions: u32,
}

impl Exchange {
    /// The response code, or `None` after giving up.
    pub fn code(&self) -> Option<Code> {
        self.response.as_ref().map(|m| m.code)
    }
}

type Pending = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Message>>>>;

/// The client. Dropping it stops its reader.
pub struct CoapClient {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    next_mid: AtomicU16,
    next_token: AtomicU64,
    pending: Pending,
    observing: Arc<Mutex<HashSet<Bytes>>>,
    notifications: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    reader: JoinHandle<()>,
    /// Retransmission policy for [`CoapClient::request`].
    pub retry: RetryPolicy,
}

impl CoapClient {
    /// A client on a fresh loopback port talking to `server`.
    pub async fn new(server: SocketAddr) -> Self {
        Self::new_from("127.0.0.1:0", server).await
    }

    /// A client bound to `bind` (e.g. `127.0.0.2:0`, another loopback
    /// source address) talking to `server`.
    pub async fn new_from(bind: &str, server: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind(bind).await.unwrap());
        let pending: Pending = Arc::default();
        let observing: Arc<Mutex<HashSet<Bytes>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            socket.clone(),
            pending.clone(),
            observing.clone(),
            tx,
        ));
        Self {
            socket,
            server,
            next_mid: AtomicU16::new(rand::random()),
            next_token: AtomicU64::new(rand::random()),
            pending,
            observing,
            notifications: tokio::sync::Mutex::new(rx),
            reader,
            retry: RetryPolicy::default(),
        }
    }

    /// The client's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// A fresh message id.
    pub fn mid(&self) -> u16 {
        self.next_mid.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh 8-byte token.
    pub fn token(&self) -> Bytes {
        Bytes::copy_from_slice(
            &self
                .next_token
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes(),
        )
    }

    /// A request with a fresh id and token: `path` split on `/`, each of
    /// `queries` one Uri-Query.
    pub fn build(&self, mtype: MessageType, code: Code, path: &str, queries: &[&str]) -> Message {
        let mut m = Message::new(mtype, code, self.mid())
            .with_token(self.token())
            .with_uri_path(path);
        for q in queries {
            m = m.with_uri_query(q);
        }
        m
    }

    /// Sends raw bytes to the server.
    pub async fn send_raw(&self, bytes: &[u8]) {
        let _ = self.socket.send_to(bytes, self.server).await;
    }

    /// Sends `request` (CON: retransmitted per [`CoapClient::retry`]) and
    /// waits for the response with its token. A NON request waits one
    /// `ack_timeout × 2^max_retransmit` for a response.
    pub async fn request(&self, request: Message) -> Exchange {
        let (tx, mut rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap()
            .insert(request.token.clone(), tx);
        let bytes = request.to_bytes().unwrap();
        let mut timeout = self.retry.ack_timeout;
        let mut transmissions = 0;
        let attempts = if request.mtype == MessageType::Con {
            self.retry.max_retransmit + 1
        } else {
            1
        };
        let mut response = None;
        for attempt in 0..attempts {
            self.send_raw(&bytes).await;
            transmissions += 1;
            let wait = if request.mtype == MessageType::Con {
                timeout
            } else {
                self.retry.ack_timeout * 2u32.pow(self.retry.max_retransmit.min(6))
            };
            if let Ok(r) = tokio::time::timeout(wait, &mut rx).await {
                response = r.ok();
                break;
            }
            if attempt + 1 < attempts {
                timeout *= 2;
            }
        }
        self.pending.lock().unwrap().remove(&request.token);
        Exchange {
            response,
            transmissions,
        }
    }

    /// Registers `token` so later responses with it count as notifications.
    pub fn observe_token(&self, token: &Bytes) {
        self.observing.lock().unwrap().insert(token.clone());
    }

    /// The next notification within `within`.
    pub async fn notification(&self, within: Duration) -> Option<Message> {
        let mut rx = self.notifications.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }
}

impl Drop for CoapClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    socket: Arc<UdpSocket>,
    pending: Pending,
    observing: Arc<Mutex<HashSet<Bytes>>>,
    notifications: mpsc::UnboundedSender<Message>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(m) = Message::from_bytes(Bytes::copy_from_slice(&buf[..n])) else {
            continue;
        };
        if m.mtype == MessageType::Con {
            let ack = Message::empty_ack(m.message_id).to_bytes().unwrap();
            let _ = socket.send_to(&ack, from).await;
        }
        if !m.code.is_response() {
            continue;
        }
        let waiter = pending.lock().unwrap().remove(&m.token);
        if let Some(waiter) = waiter {
            let _ = waiter.send(m);
        } else if observing.lock().unwrap().contains(&m.token) {
            let _ = notifications.send(m);
        }
    }
}
