//! Observe mode (`load --observe N`): N observers register on the target
//! (CON GET + Observe 0, RFC 7641), then count the notifications they get;
//! with `--publish-rate M` a publisher (an open-loop lane set sending POSTs
//! with a timestamped payload to the same URI) runs meanwhile, so the
//! fan-out latency is receive time − the timestamp in the payload.
//!
//! ```text
//!  register all ──▶ (publisher: POST ts=… at M/s) ──▶ grace ──▶ deregister (NON, Observe 1)
//!        observers: notification ─▶ ACK if CON ─▶ count, latency = now − ts
//! ```
//!
//! The publisher and the observers run in one process, so the wall clocks
//! agree; across machines the clocks would need to be synchronised.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use coap_codec::{Code, MessageRef, MessageType};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::lane::{token_of, xorshift};
use crate::load::{LoadArgs, prepare};
use crate::report::{self, Counters, Latency, ObserveSummary, RunLabel, RunProgress, Summary};
use crate::target::{RequestShape, TOKEN_LEN, Target, Template, find_timestamp, wall_micros};
use crate::transport::Transport;

/// How long notifications may still arrive after publishing stops.
const GRACE: Duration = Duration::from_millis(500);

/// What the observe lanes share.
struct Shared {
    registered: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    progress: RunProgress,
}

struct Observer {
    token: [u8; TOKEN_LEN],
    client: u32,
    registered: bool,
    failed: bool,
    /// Registration: message id, first send, retransmissions done, next retransmission.
    mid: u16,
    started: Instant,
    retransmits: u32,
    next_retransmit: Option<Instant>,
    notifications: u64,
}

struct ObserveLane {
    shared: Arc<Shared>,
    transport: Transport,
    templates: Arc<Vec<Template>>,
    deregister: Arc<Vec<Template>>,
    observers: Vec<Observer>,
    by_mid: HashMap<u16, usize>,
    next_mid: u16,
    out: Vec<u8>,
    ack_timeout: Duration,
    timeout: Duration,
    max_retransmit: u32,
    counters: Counters,
    delivery: Histogram<u64>,
    /// Delivery latencies since the last flush (for the progress line).
    interval: Histogram<u64>,
    registration: Histogram<u64>,
    with_timestamp: u64,
}

struct ObserveResult {
    counters: Counters,
    delivery: Histogram<u64>,
    registration: Histogram<u64>,
    with_timestamp: u64,
    per_observer: Vec<u64>,
}

/// Runs observe mode and summarizes.
pub(crate) async fn run(
    args: &LoadArgs,
    observers: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Summary> {
    let req = &args.request;
    let target = Target::parse(&req.uri)?;
    anyhow::ensure!(observers > 0, "--observe must be at least 1");
    let register = RequestShape {
        mtype: MessageType::Con,
        code: Code::GET,
        content_format: None,
        observe: Some(0),
        payload: Vec::new(),
        timestamp: false,
    };
    let deregister = RequestShape {
        mtype: MessageType::Non,
        observe: Some(1),
        ..register.clone()
    };
    let mut transports = if target.secure {
        let mut transports = Vec::with_capacity(observers);
        for observer in 0..observers {
            let connector = req.connector_for(observer as u32)?;
            transports
                .push(Transport::dtls(target.addr, &connector, args.handshake_timeout).await?);
        }
        transports
    } else {
        // Connection mode binds a session to its peer: one socket each.
        let default = if args.connect.is_some() {
            observers
        } else {
            observers.min(64)
        };
        let sockets = args.sockets.unwrap_or(default).clamp(1, observers);
        (0..sockets)
            .map(|_| Transport::udp(target.addr))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    // EMQX connection mode: every observer connects and carries its token.
    let tokens = match &args.connect {
        Some(connect) => {
            anyhow::ensure!(
                transports.len() == observers,
                "--connect needs one socket per observer (--sockets {observers})"
            );
            Some(crate::load::connect_clients(&target, connect, &mut transports, args).await?)
        }
        None => None,
    };
    let build = |shape: &RequestShape| -> anyhow::Result<Arc<Vec<Template>>> {
        let templates = match &tokens {
            Some(tokens) => tokens
                .iter()
                .enumerate()
                .map(|(c, token)| {
                    Template::build(&target, shape, c as u32, &[format!("token={token}")])
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => {
                let count = if target.per_client() { observers } else { 1 };
                (0..count as u32)
                    .map(|c| Template::build(&target, shape, c, &[]))
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
        };
        Ok(Arc::new(templates))
    };
    let templates = build(&register)?;
    let deregister = build(&deregister)?;
    let shared = Arc::new(Shared {
        registered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress: RunProgress::new(0),
    });
    let lanes = transports.len();
    let mut seed = wall_micros() | 1;
    let mut tasks = JoinSet::new();
    for (index, transport) in transports.into_iter().enumerate() {
        let observer_list: Vec<Observer> = (index..observers)
            .step_by(lanes)
            .enumerate()
            .map(|(local, client)| {
                let nonce = (xorshift(&mut seed) & 0xffff_ffff) as u32;
                Observer {
                    token: token_of(local as u32, nonce),
                    client: client as u32,
                    registered: false,
                    failed: false,
                    mid: 0,
                    started: Instant::now(),
                    retransmits: 0,
                    next_retransmit: None,
                    notifications: 0,
                }
            })
            .collect();
        let lane = ObserveLane {
            shared: Arc::clone(&shared),
            transport,
            templates: Arc::clone(&templates),
            deregister: Arc::clone(&deregister),
            observers: observer_list,
            by_mid: HashMap::new(),
            next_mid: (xorshift(&mut seed) & 0xffff) as u16,
            out: Vec::with_capacity(2048),
            ack_timeout: args.ack_timeout,
            timeout: req.timeout,
            max_retransmit: args.max_retransmit,
            counters: Counters::default(),
            delivery: report::new_histogram(),
            interval: report::new_histogram(),
            registration: report::new_histogram(),
            with_timestamp: 0,
        };
        tasks.spawn(lane.run());
    }
    let printer = (!args.quiet).then(|| {
        let shared = Arc::clone(&shared);
        let start = Instant::now();
        tokio::spawn(async move { shared.progress.print_every_second("observe", start).await })
    });

    // Registration phase: until every observer is registered or failed.
    let registration_start = Instant::now();
    let registration_limit = Instant::now() + req.timeout + Duration::from_millis(100);
    while shared.registered.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < observers as u64
        && Instant::now() < registration_limit
        && !stop.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Scripts wait for this line before sampling the server's memory.
    eprintln!(
        "coap-bench: {} observer(s) registered, {} failed, in {} ms",
        shared.registered.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        registration_start.elapsed().as_millis()
    );
    let duration = args.duration.unwrap_or(Duration::from_secs(10));
    let publish = if let Some(rate) = args.publish_rate {
        let shape = RequestShape {
            mtype: req.mtype(),
            // `--method put` publishes with PUT (e.g. libcoap's dynamic
            // resources); anything else with POST (EMQX `ps/{topic}`).
            code: if req.method == crate::load::Method::Put {
                Code::PUT
            } else {
                Code::POST
            },
            content_format: req.content_format,
            observe: None,
            payload: req.payload_bytes(),
            timestamp: true,
        };
        let mut publish_args = args.clone();
        publish_args.duration = Some(duration);
        publish_args.requests = None;
        publish_args.sockets = if args.connect.is_some() {
            None
        } else {
            Some(1)
        };
        let run = prepare(
            &publish_args,
            &shape,
            args.clients.max(1),
            Some(rate),
            Arc::clone(&stop),
        )
        .await?;
        Some(run.run((!args.quiet).then_some("publish")).await?)
    } else {
        let end = Instant::now() + duration;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    };
    tokio::time::sleep(GRACE).await;
    shared.stop.store(true, Ordering::Relaxed);

    let mut counters = Counters::default();
    let mut delivery = report::new_histogram();
    let mut registration_latency = report::new_histogram();
    let mut with_timestamp = 0;
    let mut per_observer = Vec::with_capacity(observers);
    while let Some(result) = tasks.join_next().await {
        let result = result.context("an observe lane failed")?;
        counters.merge(&result.counters);
        let _ = delivery.add(&result.delivery);
        let _ = registration_latency.add(&result.registration);
        with_timestamp += result.with_timestamp;
        per_observer.extend(result.per_observer);
    }
    if let Some(printer) = printer {
        printer.abort();
    }
    let label = RunLabel {
        target: req.uri.clone(),
        method: Code::GET,
        confirmable: true,
        open_rate: None,
        clients: observers,
        sockets: lanes,
    };
    let now = Instant::now();
    let mut summary = Summary::new(&label, &counters, &registration_latency, now, now);
    summary.elapsed_s = duration.as_secs_f64();
    summary.throughput_rps = 0.0;
    let notifications: u64 = per_observer.iter().sum();
    summary.observe = Some(ObserveSummary {
        observers,
        registered: shared.registered.load(Ordering::Relaxed),
        registration_failed: shared.failed.load(Ordering::Relaxed),
        notifications,
        notifications_per_s: (notifications as f64 / duration.as_secs_f64().max(1e-9) * 10.0)
            .round()
            / 10.0,
        notifications_with_timestamp: with_timestamp,
        notifications_per_observer_min: per_observer.iter().copied().min().unwrap_or(0),
        notifications_per_observer_max: per_observer.iter().copied().max().unwrap_or(0),
        delivery_latency_us: Latency::of(&delivery),
    });
    summary.publish = publish.map(Box::new);
    Ok(summary)
}

impl ObserveLane {
    async fn run(mut self) -> ObserveResult {
        let mut buf = vec![0u8; 65_536];
        let now = Instant::now();
        for index in 0..self.observers.len() {
            self.register(index, now);
        }
        let mut next_flush = now + report::FLUSH_INTERVAL;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.on_time(now);
            if now >= next_flush {
                self.shared.progress.merge_latency(&mut self.interval);
                next_flush = now + report::FLUSH_INTERVAL;
            }
            let backlog = self.transport.has_backlog();
            tokio::select! {
                biased;
                received = self.transport.socket().recv_from(&mut buf) => {
                    self.on_received(received, &buf);
                    for _ in 0..64 {
                        match self.transport.socket().try_recv_from(&mut buf) {
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                            received => self.on_received(received, &buf),
                        }
                    }
                }
                _ = self.transport.socket().writable(), if backlog => self.transport.flush_backlog(),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        // Deregister politely (RFC 7641 §3.6), without waiting for answers.
        for index in 0..self.observers.len() {
            let Some(observer) = self.observers.get(index) else {
                continue;
            };
            if !observer.registered {
                continue;
            }
            let (token, client) = (observer.token, observer.client);
            let mid = self.allocate_mid();
            if let Some(template) = template_for(&self.deregister, client) {
                template.write(&mut self.out, mid, &token, 0);
                let _ = self.transport.send(&self.out);
            }
        }
        self.transport.close();
        self.transport
            .drain_backlog(Duration::from_millis(200))
            .await;
        self.shared.progress.merge_latency(&mut self.interval);
        ObserveResult {
            counters: self.counters,
            delivery: self.delivery,
            registration: self.registration,
            with_timestamp: self.with_timestamp,
            per_observer: self.observers.iter().map(|o| o.notifications).collect(),
        }
    }

    fn allocate_mid(&mut self) -> u16 {
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        mid
    }

    fn register(&mut self, index: usize, now: Instant) {
        let mid = self.allocate_mid();
        let Some(observer) = self.observers.get_mut(index) else {
            return;
        };
        observer.mid = mid;
        observer.started = now;
        observer.next_retransmit = Some(now + self.ack_timeout);
        let (token, client) = (observer.token, observer.client);
        self.by_mid.insert(mid, index);
        self.counters.sent += 1;
        self.send_registration(client, mid, &token);
    }

    fn send_registration(&mut self, client: u32, mid: u16, token: &[u8; TOKEN_LEN]) {
        if let Some(template) = template_for(&self.templates, client) {
            template.write(&mut self.out, mid, token, 0);
            if self.transport.send(&self.out).is_err() {
                self.counters.send_errors += 1;
            }
        }
    }

    fn on_time(&mut self, now: Instant) {
        for index in 0..self.observers.len() {
            let Some(observer) = self.observers.get_mut(index) else {
                continue;
            };
            let Some(at) = observer.next_retransmit else {
                continue;
            };
            if now.saturating_duration_since(observer.started) >= self.timeout {
                observer.next_retransmit = None;
                observer.failed = true;
                self.by_mid.remove(&observer.mid);
                self.counters.timeouts += 1;
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            } else if at <= now && observer.retransmits < self.max_retransmit {
                observer.retransmits += 1;
                let backoff = self.ack_timeout * (1 << observer.retransmits.min(8));
                observer.next_retransmit = Some(now + backoff);
                let (client, mid, token) = (observer.client, observer.mid, observer.token);
                self.counters.retransmissions += 1;
                self.send_registration(client, mid, &token);
            }
        }
    }

    fn on_received(&mut self, received: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        let Ok((n, from)) = received else {
            return;
        };
        if from != self.transport.peer() {
            self.counters.unmatched += 1;
            return;
        }
        let datagram = buf.get(..n).unwrap_or_default();
        match self.transport.handle_datagram(datagram) {
            Ok(false) => self.on_coap(datagram, Instant::now()),
            Ok(true) => {
                while let Some(plaintext) = self.transport.next_plaintext() {
                    self.on_coap(&plaintext, Instant::now());
                }
            }
            Err(error) => eprintln!("coap-bench: {error}"),
        }
    }

    fn on_coap(&mut self, datagram: &[u8], now: Instant) {
        let Ok(msg) = MessageRef::parse(datagram) else {
            self.counters.malformed += 1;
            return;
        };
        match msg.mtype() {
            MessageType::Ack | MessageType::Rst => {
                let Some(&index) = self.by_mid.get(&msg.message_id()) else {
                    self.counters.unmatched += 1;
                    return;
                };
                if msg.mtype() == MessageType::Rst {
                    self.counters.resets += 1;
                    self.resolve(index, None, now, false);
                } else if msg.code().is_empty() {
                    // Separate response follows: stop retransmitting.
                    if let Some(observer) = self.observers.get_mut(index) {
                        observer.next_retransmit = None;
                    }
                } else {
                    self.on_response(index, &msg, now);
                }
            }
            MessageType::Con | MessageType::Non => {
                if msg.mtype() == MessageType::Con {
                    let [hi, lo] = msg.message_id().to_be_bytes();
                    let _ = self.transport.send(&[0x60, 0, hi, lo]);
                }
                let index = msg
                    .token()
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_be_bytes(b) as usize)
                    .filter(|&i| {
                        self.observers
                            .get(i)
                            .is_some_and(|o| o.token.as_slice() == msg.token())
                    });
                match index {
                    Some(index) => self.on_response(index, &msg, now),
                    None => self.counters.unmatched += 1,
                }
            }
        }
    }

    /// The registration response or a notification for observer `index`.
    fn on_response(&mut self, index: usize, msg: &MessageRef<'_>, now: Instant) {
        let Some(observer) = self.observers.get(index) else {
            return;
        };
        if observer.registered {
            if let Some(observer) = self.observers.get_mut(index) {
                observer.notifications += 1;
            }
            self.shared
                .progress
                .notifications
                .fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = find_timestamp(msg.payload()) {
                self.with_timestamp += 1;
                let micros = wall_micros().saturating_sub(sent);
                report::record(&mut self.delivery, micros);
                report::record(&mut self.interval, micros);
            }
            return;
        }
        if observer.failed {
            return;
        }
        let ok = msg.code().class() == 2 && msg.observe().is_some();
        self.resolve(index, Some(msg.code()), now, ok);
    }

    fn resolve(&mut self, index: usize, code: Option<Code>, now: Instant, ok: bool) {
        let Some(observer) = self.observers.get_mut(index) else {
            return;
        };
        if observer.registered || observer.failed {
            return;
        }
        observer.next_retransmit = None;
        self.by_mid.remove(&observer.mid);
        if code.is_some() {
            self.counters.responses += 1;
        }
        if let Some(code) = code
            && let Some(count) = self.counters.codes.get_mut(usize::from(code.to_u8()))
        {
            *count += 1;
        }
        if ok {
            observer.registered = true;
            let micros = now.saturating_duration_since(observer.started).as_micros();
            report::record(
                &mut self.registration,
                u64::try_from(micros).unwrap_or(u64::MAX),
            );
            self.counters.last_response = Some(now);
            self.shared.registered.fetch_add(1, Ordering::Relaxed);
        } else {
            observer.failed = true;
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn template_for(templates: &[Template], client: u32) -> Option<&Template> {
    if templates.len() == 1 {
        templates.first()
    } else {
        templates.get(client as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_codec::Message;

    fn observer(local: u32, client: u32) -> Observer {
        Observer {
            token: token_of(local, 0xabcd_0000 + local),
            client,
            registered: false,
            failed: false,
            mid: 0,
            started: Instant::now(),
            retransmits: 0,
            next_retransmit: None,
            notifications: 0,
        }
    }

    /// An observe lane with two observers aimed at `server`; the tests call
    /// its handlers with chosen instants (virtual time).
    fn lane(server: &std::net::UdpSocket) -> ObserveLane {
        let target =
            Target::parse(&format!("coap://{}/ps/t", server.local_addr().unwrap())).unwrap();
        let shape = RequestShape {
            mtype: MessageType::Con,
            code: Code::GET,
            content_format: None,
            observe: Some(0),
            payload: Vec::new(),
            timestamp: false,
        };
        let template = Template::build(&target, &shape, 0, &[]).unwrap();
        ObserveLane {
            shared: Arc::new(Shared {
                registered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                progress: RunProgress::new(0),
            }),
            transport: Transport::udp(target.addr).unwrap(),
            templates: Arc::new(vec![template.clone()]),
            deregister: Arc::new(vec![template]),
            observers: vec![observer(0, 0), observer(1, 1)],
            by_mid: HashMap::new(),
            next_mid: 100,
            out: Vec::new(),
            ack_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            max_retransmit: 4,
            counters: Counters::default(),
            delivery: report::new_histogram(),
            interval: report::new_histogram(),
            registration: report::new_histogram(),
            with_timestamp: 0,
        }
    }

    fn receive(server: &std::net::UdpSocket) -> Vec<u8> {
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = server.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn registers_counts_notifications_and_acks_con_ones() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut lane = lane(&server);
        let t0 = Instant::now();
        lane.register(0, t0);
        let request = receive(&server);
        let request = MessageRef::parse(&request).unwrap();
        assert_eq!(request.observe(), Some(0));
        assert_eq!(request.code(), Code::GET);
        // Piggy-backed 2.05 with Observe: registered.
        let ack = Message::new(MessageType::Ack, Code::CONTENT, request.message_id())
            .with_token(request.token().to_vec())
            .with_observe(1)
            .to_bytes()
            .unwrap();
        lane.on_coap(&ack, t0 + Duration::from_millis(3));
        assert_eq!(lane.shared.registered.load(Ordering::Relaxed), 1);
        assert_eq!(lane.registration.max() / 1000, 3);
        // A NON notification with a timestamp 2 ms old.
        let payload = format!("coap-bench-ts={:020}", wall_micros() - 2_000);
        let notification = Message::new(MessageType::Non, Code::CONTENT, 9)
            .with_token(request.token().to_vec())
            .with_observe(2)
            .with_payload(payload.into_bytes())
            .to_bytes()
            .unwrap();
        lane.on_coap(&notification, t0);
        assert_eq!(lane.observers[0].notifications, 1);
        assert_eq!(lane.with_timestamp, 1);
        assert!(lane.delivery.max() >= 2_000 && lane.delivery.max() < 1_000_000);
        // A CON notification is acknowledged with its message id.
        let con = Message::new(MessageType::Con, Code::CONTENT, 0x4242)
            .with_token(request.token().to_vec())
            .with_observe(3)
            .to_bytes()
            .unwrap();
        lane.on_coap(&con, t0);
        assert_eq!(receive(&server), vec![0x60, 0, 0x42, 0x42]);
        assert_eq!(lane.observers[0].notifications, 2);
        // Observer 1's token is not registered yet: nothing counted for it.
        let foreign = Message::new(MessageType::Non, Code::CONTENT, 10)
            .with_token(lane.observers[1].token.to_vec())
            .with_observe(2)
            .to_bytes()
            .unwrap();
        lane.on_coap(&foreign, t0);
        assert_eq!(lane.observers[1].notifications, 0);
    }

    #[tokio::test]
    async fn registration_retransmits_then_fails_in_virtual_time() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut lane = lane(&server);
        let t0 = Instant::now();
        lane.register(1, t0);
        let first = receive(&server);
        lane.on_time(t0 + Duration::from_millis(1999));
        assert_eq!(lane.counters.retransmissions, 0);
        lane.on_time(t0 + Duration::from_secs(2));
        assert_eq!(lane.counters.retransmissions, 1);
        assert_eq!(receive(&server), first);
        lane.on_time(t0 + Duration::from_secs(5));
        assert_eq!(lane.counters.timeouts, 1);
        assert_eq!(lane.shared.failed.load(Ordering::Relaxed), 1);
        assert!(lane.observers[1].failed);
        // A 4.04 for a registration is a failure too.
        lane.register(0, t0);
        let request = receive(&server);
        let request = MessageRef::parse(&request).unwrap();
        let not_found = Message::new(MessageType::Ack, Code::NOT_FOUND, request.message_id())
            .with_token(request.token().to_vec())
            .to_bytes()
            .unwrap();
        lane.on_coap(&not_found, t0);
        assert_eq!(lane.shared.failed.load(Ordering::Relaxed), 2);
        assert_eq!(lane.counters.codes[usize::from(Code::NOT_FOUND.to_u8())], 1);
    }
}
