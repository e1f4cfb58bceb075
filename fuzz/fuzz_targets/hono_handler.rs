//! Drives the Hono adapter (`hono_coap::HonoAdapter::handle_from`) with the
//! in-process downstream and an in-memory registry (`FileRegistry` from
//! JSON: enabled, disabled and adapter-less tenants, devices reachable
//! only via gateways, disabled devices and gateways, PSK identities,
//! `timeoutToAck` variants, a data-volume limit, `max-ttd`), in tokio's
//! paused virtual time.
//!
//! Operations: requests from four addresses, with a PSK identity from a
//! list (known, unknown, malformed, other separators) or none, CON/NON,
//! any method, URIs built from `t`/`telemetry`/`e`/`event`/`cr`/
//! `command_response` plus tenant/device/request-id segments (own, empty,
//! foreign, unknown, encoded request ids of earlier commands, raw
//! segments), query parameters (`hono-ttd`, `empty`, `piggy`,
//! `hono-time`, `hono-cmd-status`, raw), the time option, Content-Format
//! and payloads; each request runs in its own task, so command waits
//! overlap. Also: commands from the application (one-way and
//! request-response, to waiting or absent devices), clock advances,
//! consumers attaching and draining (telemetry, events, command
//! responses), the downstream going down and up, kicks from the
//! management table and a graceful-shutdown start.
//!
//! Checks:
//! - nothing panics (in the harness or in any request task);
//! - every request gets exactly one answer, and at the end (after the
//!   longest TTD has passed in virtual time) every request has finished:
//!   no wait hangs;
//! - `set_ack_timeout` is called at most once per request;
//! - answers are response codes and encode with the request's token;
//!   2.xx only for POST/PUT;
//! - everything the downstream received names a registered device of an
//!   enabled tenant (no unauthorized data gets through), with a payload
//!   within `max_payload_size`;
//! - the client table stays within `max_clients`; at the end no device
//!   waits for a command and no command wait is registered.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message, MessageType, OptionNumber};
use coap_endpoint::{AckTimeout, Peer};
use hono_coap::{
    AdapterSettings, Command, CommandResponse, DEFAULT_MAX_TTD_SECS, FileRegistry, HonoAdapter,
    InProcessDownstream, InProcessMessage, TIME_OPTION,
};
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;

const MAX_OPS: usize = 64;
const MAX_CLIENTS: usize = 3;
const MAX_PAYLOAD: usize = 300;
/// The longest TTD any tenant allows (the default `max-ttd`).
const MAX_TTD: u64 = DEFAULT_MAX_TTD_SECS as u64;

const REGISTRY: &str = r#"{
  "tenants": [
    {"tenant-id": "T", "max-ttd": 30},
    {"tenant-id": "off", "enabled": false},
    {"tenant-id": "noadapter", "adapters": [{"type": "hono-mqtt", "enabled": true}]},
    {"tenant-id": "ack0", "max-ttd": 5, "adapters": [{"type": "hono-coap", "enabled": true,
       "ext": {"timeoutToAck": 0, "deviceTriggeredTimeoutToAck": 700}}]},
    {"tenant-id": "ackneg", "adapters": [{"type": "hono-coap", "enabled": true, "ext": {"timeoutToAck": -1}}]},
    {"tenant-id": "limited", "minimum-message-size": 10,
     "resource-limits": {"data-volume": {"max-bytes": 25, "effective-since": "2020-01-01T00:00:00Z",
                                          "period": {"mode": "days", "no-of-days": 100000}}}}
  ],
  "devices": [
    {"tenant-id": "T", "device-id": "4711", "via": ["gw-1", "gw-off"],
     "defaults": {"content-type": "application/json", "site": "lab"}},
    {"tenant-id": "T", "device-id": "4712", "via": ["gw-1"]},
    {"tenant-id": "T", "device-id": "plain"},
    {"tenant-id": "T", "device-id": "dev-off", "enabled": false, "via": ["gw-1"]},
    {"tenant-id": "T", "device-id": "gw-1"},
    {"tenant-id": "T", "device-id": "gw-2"},
    {"tenant-id": "T", "device-id": "gw-off", "enabled": false},
    {"tenant-id": "off", "device-id": "d"},
    {"tenant-id": "noadapter", "device-id": "d"},
    {"tenant-id": "ack0", "device-id": "d"},
    {"tenant-id": "ackneg", "device-id": "d"},
    {"tenant-id": "limited", "device-id": "d"}
  ],
  "credentials": [
    {"tenant-id": "T", "device-id": "4711", "type": "psk", "auth-id": "sensor1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "T", "device-id": "dev-off", "type": "psk", "auth-id": "off1",
     "secrets": [{"key": "aG9uby1zZWNyZXQ="}]},
    {"tenant-id": "T", "device-id": "gw-1", "type": "psk", "auth-id": "gw",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "T", "device-id": "gw-2", "type": "psk", "auth-id": "gw2",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "T", "device-id": "gw-off", "type": "psk", "auth-id": "gwoff",
     "secrets": [{"key": "Z3ctc2VjcmV0"}]},
    {"tenant-id": "noadapter", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "off", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "ack0", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "ackneg", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]},
    {"tenant-id": "limited", "device-id": "d", "type": "psk", "auth-id": "d", "secrets": [{"key": "eA=="}]}
  ]
}"#;

/// PSK identities `auth-id@tenant` (and malformed ones).
const IDENTITIES: [&[u8]; 12] = [
    b"sensor1@T",
    b"gw@T",
    b"gw2@T",
    b"gwoff@T",
    b"off1@T",
    b"d@off",
    b"d@noadapter",
    b"d@ack0",
    b"d@ackneg",
    b"d@limited",
    b"nobody@T",
    b"\xff@T@x",
];
const TENANTS: [&str; 8] = [
    "T",
    "off",
    "noadapter",
    "ack0",
    "ackneg",
    "limited",
    "",
    "nope",
];
const DEVICES: [&str; 9] = [
    "4711", "4712", "plain", "dev-off", "gw-1", "gw-2", "gw-off", "d", "",
];
/// Devices that may have data forwarded (registered, enabled, in a tenant
/// with the CoAP adapter enabled).
const ALLOWED: [(&str, &str); 8] = [
    ("T", "4711"),
    ("T", "4712"),
    ("T", "plain"),
    ("T", "gw-1"),
    ("T", "gw-2"),
    ("ack0", "d"),
    ("ackneg", "d"),
    ("limited", "d"),
];
const REPLY_TO: [&str; 2] = ["app", "other"];

#[derive(Arbitrary, Debug, Clone)]
enum Segment {
    Tenant(u8),
    Device(u8),
    /// The request id of an earlier command (from a 2.04's Location-Path).
    RequestId(u8),
    Text(String),
    Empty,
}

#[derive(Arbitrary, Debug, Clone)]
enum Query {
    Ttd(u16),
    TtdText(String),
    Empty,
    Piggy,
    Time,
    CmdStatus(u16),
    CmdStatusText(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
struct Request {
    peer: u8,
    identity: Option<u8>,
    con: bool,
    method: u8,
    resource: u8,
    segments: Vec<Segment>,
    queries: Vec<Query>,
    time_option: bool,
    content_format: Option<u16>,
    payload: Vec<u8>,
    long_payload: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request(Request),
    Command {
        tenant: u8,
        device: u8,
        name: String,
        payload: Vec<u8>,
        reply: Option<(String, u8)>,
        content_type: Option<String>,
    },
    Advance(u16),
    Sleep(u8),
    ConsumeTelemetry(u8),
    ConsumeEvents(u8),
    ConsumeResponses(u8),
    Drain,
    Available(bool),
    Kick {
        tenant: u8,
        device: u8,
    },
    /// A graceful shutdown starts (only for a multiple of 16, so that
    /// most runs stay open).
    Shutdown(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    timeout_to_ack: i16,
    max_gateway_routes: u8,
    ops: Vec<Op>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

/// `COAP_FUZZ_TRACE=1`: print each answer code (to see what a corpus
/// reaches).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("COAP_FUZZ_TRACE").is_some())
}

fn registry() -> Arc<FileRegistry> {
    static REG: OnceLock<Arc<FileRegistry>> = OnceLock::new();
    REG.get_or_init(|| Arc::new(FileRegistry::from_json(REGISTRY).expect("registry")))
        .clone()
}

fn peers() -> [std::net::SocketAddr; 4] {
    [
        "192.0.2.1:5683".parse().unwrap(),
        "192.0.2.2:5683".parse().unwrap(),
        "192.0.2.2:40000".parse().unwrap(),
        "[2001:db8::1]:5684".parse().unwrap(),
    ]
}

fn method(m: u8) -> Code {
    match m % 8 {
        0..=2 => Code::POST,
        3..=5 => Code::PUT,
        6 => Code::GET,
        _ => Code::DELETE,
    }
}

/// One request task's record.
struct Call {
    method: Code,
    token: Bytes,
    answer: Arc<Mutex<Option<Message>>>,
    ack_calls: Arc<Mutex<Vec<AckTimeout>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Harness {
    adapter: Arc<HonoAdapter>,
    downstream: Arc<InProcessDownstream>,
    calls: Vec<Call>,
    telemetry: Vec<mpsc::Receiver<InProcessMessage>>,
    events: Vec<mpsc::Receiver<InProcessMessage>>,
    responses: Vec<mpsc::Receiver<CommandResponse>>,
    /// Request ids seen in answers (Location-Path of commands).
    request_ids: Vec<String>,
    next_token: u32,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        let mut settings = AdapterSettings::default();
        settings.max_payload_size = MAX_PAYLOAD;
        settings.timeout_to_ack_ms = i64::from(input.timeout_to_ack % 2000);
        settings.max_gateway_routes = usize::from(input.max_gateway_routes % 4) + 1;
        settings.max_clients = MAX_CLIENTS;
        let downstream = Arc::new(InProcessDownstream::new());
        let adapter = Arc::new(HonoAdapter::new(registry(), downstream.clone(), settings));
        Harness {
            adapter,
            downstream,
            calls: Vec::new(),
            telemetry: Vec::new(),
            events: Vec::new(),
            responses: Vec::new(),
            request_ids: Vec::new(),
            next_token: 1,
        }
    }

    fn build(&mut self, r: &Request) -> Message {
        let mtype = if r.con {
            MessageType::Con
        } else {
            MessageType::Non
        };
        self.next_token += 1;
        let mut m = Message::new(mtype, method(r.method), 7)
            .with_token(Bytes::copy_from_slice(&self.next_token.to_be_bytes()));
        let resource: &[u8] = match r.resource % 8 {
            0 => b"t",
            1 => b"telemetry",
            2 => b"e",
            3 => b"event",
            4 => b"cr",
            5 => b"command_response",
            6 => b"c",
            _ => b"",
        };
        m.add_option(OptionNumber::URI_PATH, resource.to_vec());
        for s in r.segments.iter().take(5) {
            let v: Vec<u8> = match s {
                Segment::Tenant(t) => TENANTS[usize::from(*t) % TENANTS.len()].into(),
                Segment::Device(d) => DEVICES[usize::from(*d) % DEVICES.len()].into(),
                Segment::RequestId(i) => match self.request_ids.len() {
                    0 => b"0123".to_vec(),
                    n => self.request_ids[usize::from(*i) % n].clone().into_bytes(),
                },
                Segment::Text(t) => t.as_bytes().to_vec(),
                Segment::Empty => Vec::new(),
            };
            if v.len() <= 255 {
                m.add_option(OptionNumber::URI_PATH, v);
            }
        }
        for q in r.queries.iter().take(6) {
            let v: Vec<u8> = match q {
                Query::Ttd(n) => format!("hono-ttd={}", n % 70).into_bytes(),
                Query::TtdText(t) => format!("hono-ttd={t}").into_bytes(),
                Query::Empty => b"empty".to_vec(),
                Query::Piggy => b"piggy".to_vec(),
                Query::Time => b"hono-time".to_vec(),
                Query::CmdStatus(s) => format!("hono-cmd-status={}", s % 700).into_bytes(),
                Query::CmdStatusText(t) => format!("hono-cmd-status={t}").into_bytes(),
                Query::Raw(b) => b.clone(),
            };
            if v.len() <= 255 {
                m.add_option(OptionNumber::URI_QUERY, v);
            }
        }
        if r.time_option {
            m.add_option(TIME_OPTION, Vec::new());
        }
        if let Some(cf) = r.content_format {
            m = m.with_content_format(ContentFormat(cf % 120));
        }
        let payload = match r.long_payload {
            Some(n) => vec![b'p'; usize::from(n) % (MAX_PAYLOAD + 40)],
            None => r.payload.clone(),
        };
        m.with_payload(payload)
    }

    fn request(&mut self, r: &Request) {
        let message = self.build(r);
        let peer_addr = peers()[usize::from(r.peer) % 4];
        let peer = match r.identity {
            Some(i) => {
                Peer::authenticated(peer_addr, IDENTITIES[usize::from(i) % IDENTITIES.len()])
            }
            None => Peer::new(peer_addr),
        };
        let answer = Arc::new(Mutex::new(None));
        let ack_calls = Arc::new(Mutex::new(Vec::new()));
        let (a, k, adapter) = (answer.clone(), ack_calls.clone(), self.adapter.clone());
        let token = message.token.clone();
        let method = message.code;
        let task = runtime().spawn(async move {
            let calls = k.clone();
            let reply = adapter
                .handle_from(Some(&peer), &message, &move |t| {
                    calls.lock().unwrap().push(t)
                })
                .await;
            let mut slot = a.lock().unwrap();
            assert!(slot.is_none(), "two answers to one request");
            *slot = Some(reply);
        });
        self.calls.push(Call {
            method,
            token,
            answer,
            ack_calls,
            task,
        });
        self.settle();
    }

    /// Lets the request tasks run (no virtual time passes).
    fn settle(&mut self) {
        runtime().block_on(async {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        });
        self.collect();
    }

    /// Checks finished calls.
    fn collect(&mut self) {
        let mut i = 0;
        while i < self.calls.len() {
            if !self.calls[i].task.is_finished() {
                i += 1;
                continue;
            }
            let call = self.calls.swap_remove(i);
            if let Err(e) = runtime().block_on(call.task) {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("request task failed: {e}");
            }
            let answer = call
                .answer
                .lock()
                .unwrap()
                .take()
                .expect("finished without an answer");
            self.check_answer(call.method, &call.token, &answer);
            let acks = call.ack_calls.lock().unwrap().len();
            assert!(acks <= 1, "set_ack_timeout called {acks} times");
        }
        self.check_state();
    }

    fn check_answer(&mut self, method: Code, token: &Bytes, answer: &Message) {
        if trace() {
            eprintln!(
                "{method} -> {} {:?}",
                answer.code,
                String::from_utf8_lossy(&answer.payload)
            );
        }
        let class = answer.code.class();
        assert!(
            matches!(class, 2 | 4 | 5),
            "answer {} is not a response",
            answer.code
        );
        if class == 2 {
            assert!(
                method == Code::POST || method == Code::PUT,
                "{method} answered {}",
                answer.code
            );
        }
        let mut wire = answer.clone();
        wire.mtype = MessageType::Ack;
        wire.message_id = 7;
        wire.token = token.clone();
        if let Err(e) = wire.to_bytes() {
            panic!("answer {} does not encode: {e}", answer.code);
        }
        // Remember request ids of delivered request-response commands.
        let path: Vec<String> = answer
            .options_of(OptionNumber::LOCATION_PATH)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if let Some(last) = path.last()
            && path
                .first()
                .is_some_and(|f| f == "cr" || f == "command_response")
        {
            self.request_ids.push(last.clone());
            if self.request_ids.len() > 8 {
                self.request_ids.remove(0);
            }
        }
    }

    fn check_message(m: &InProcessMessage) {
        let d = &m.message;
        assert!(
            ALLOWED
                .iter()
                .any(|(t, dev)| *t == d.tenant_id && *dev == d.device_id),
            "data of {}/{} forwarded",
            d.tenant_id,
            d.device_id
        );
        assert!(
            d.payload.len() <= MAX_PAYLOAD,
            "payload over the limit forwarded"
        );
        if let Some(gw) = &d.gateway_id {
            // Only gw-1 is in a device's `via` list (4711, 4712, dev-off).
            assert!(
                gw == "gw-1"
                    && d.tenant_id == "T"
                    && (d.device_id == "4711" || d.device_id == "4712"),
                "forwarded via gateway {gw} of {}/{}",
                d.tenant_id,
                d.device_id
            );
        }
    }

    fn drain(&mut self) {
        for rx in self.telemetry.iter_mut().chain(self.events.iter_mut()) {
            while let Ok(m) = rx.try_recv() {
                Self::check_message(&m);
            }
        }
        for rx in &mut self.responses {
            while rx.try_recv().is_ok() {}
        }
    }

    fn check_state(&self) {
        let clients = self.adapter.clients().len();
        assert!(clients <= MAX_CLIENTS, "{clients} clients in the table");
    }

    fn sleep(&mut self, d: Duration) {
        // Paused clock: the runtime advances to each timer in turn.
        runtime().block_on(async move { tokio::time::sleep(d).await });
        self.settle();
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Request(r) => self.request(r),
            Op::Command {
                tenant,
                device,
                name,
                payload,
                reply,
                content_type,
            } => {
                let tenant = TENANTS[usize::from(*tenant) % TENANTS.len()];
                let device = DEVICES[usize::from(*device) % DEVICES.len()];
                let mut c = Command::one_way(tenant, device, name.clone(), payload.clone());
                if let Some((id, to)) = reply {
                    c = c.with_reply(id.clone(), REPLY_TO[usize::from(*to) % REPLY_TO.len()]);
                }
                if let Some(ct) = content_type {
                    c = c.with_content_type(ct.clone());
                }
                let _ = self.downstream.send_command(c);
                self.settle();
            }
            Op::Advance(ms) => self.sleep(Duration::from_millis(u64::from(*ms))),
            Op::Sleep(s) => self.sleep(Duration::from_secs(u64::from(*s % 40))),
            Op::ConsumeTelemetry(t) => {
                let rx = self
                    .downstream
                    .consume_telemetry(TENANTS[usize::from(*t) % TENANTS.len()]);
                self.telemetry.push(rx);
            }
            Op::ConsumeEvents(t) => {
                let rx = self
                    .downstream
                    .consume_events(TENANTS[usize::from(*t) % TENANTS.len()]);
                self.events.push(rx);
            }
            Op::ConsumeResponses(r) => {
                let rx = self
                    .downstream
                    .consume_command_responses(REPLY_TO[usize::from(*r) % REPLY_TO.len()]);
                self.responses.push(rx);
            }
            Op::Drain => self.drain(),
            Op::Available(a) => self.downstream.set_available(*a),
            Op::Kick { tenant, device } => {
                let _ = self.adapter.clients().kick(
                    TENANTS[usize::from(*tenant) % TENANTS.len()],
                    DEVICES[usize::from(*device) % DEVICES.len()],
                );
                self.settle();
            }
            Op::Shutdown(n) => {
                if n % 16 == 0 {
                    self.adapter.begin_shutdown();
                    self.settle();
                }
            }
        }
    }

    fn finish(mut self) {
        // Every wait ends by its TTD at the latest.
        self.sleep(Duration::from_secs(MAX_TTD + 5));
        self.drain();
        assert!(
            self.calls.is_empty(),
            "{} requests still unanswered after the longest TTD",
            self.calls.len()
        );
        for t in TENANTS {
            for d in DEVICES {
                assert!(
                    !self.downstream.is_device_waiting(t, d),
                    "{t}/{d} still waits for a command"
                );
                if let Some(waits) = self.adapter.clients().command_waits(t, d) {
                    assert!(waits.is_empty(), "{t}/{d} has command waits left");
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    h.finish();
});
