//! Sustained concurrent CON load: N clients, each with one request in
//! flight, every request with a unique payload; every final answer goes
//! into a [`Tally`] and a timeline (for outage and recovery times).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_endpoint::coap_codec::{Code, Message};
use tokio::task::JoinHandle;

use crate::coap_client::{CoapClient, RetryPolicy};
use crate::tally::Tally;

/// Builds request `seq` of client `client`: the message and the key under
/// which the broker side will report it.
pub type MakeRequest = dyn Fn(&CoapClient, usize, usize) -> (Message, String) + Send + Sync;

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// What was sent, acknowledged, refused.
    pub tally: Arc<Tally>,
    /// (when the answer came, code or `none`).
    pub timeline: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Load {
    /// Starts `clients` clients against `server`.
    pub async fn start(
        server: SocketAddr,
        clients: usize,
        tally: Arc<Tally>,
        make: Arc<MakeRequest>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let timeline: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut client = CoapClient::new(server).await;
            client.retry = RetryPolicy {
                ack_timeout: Duration::from_millis(1000),
                max_retransmit: 3,
            };
            let (stop, pause, tally, timeline, make) = (
                stop.clone(),
                pause.clone(),
                tally.clone(),
                timeline.clone(),
                make.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    if pause.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let (request, key) = make(&client, c, seq);
                    seq += 1;
                    tally.sent();
                    let exchange = client.request(request).await;
                    let code = exchange
                        .code()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "none".to_owned());
                    let ok = exchange.code() == Some(Code::CHANGED);
                    tally.answered(&key, &code, ok);
                    timeline.lock().unwrap().push((Instant::now(), code));
                    if !ok {
                        // A device backs off a little after a refusal.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        Self {
            stop,
            pause,
            tasks,
            tally,
            timeline,
        }
    }

    /// Holds (or releases) the clients before their next request.
    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }

    /// Codes answered after `since`.
    pub fn codes_since(&self, since: Instant) -> Vec<String> {
        self.timeline
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The first answer with `code` after `since`.
    pub fn first_since(&self, since: Instant, code: &str) -> Option<Instant> {
        self.timeline
            .lock()
            .unwrap()
            .iter()
            .find(|(t, c)| *t >= since && c == code)
            .map(|(t, _)| *t)
    }

    /// Waits until `code` was answered after `since` (at most `within`).
    pub async fn wait_for(&self, since: Instant, code: &str, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.first_since(since, code) {
                return Some(t);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients after their current request.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
