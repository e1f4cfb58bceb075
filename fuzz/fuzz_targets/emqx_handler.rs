//! Drives the EMQX gateway (`emqx_coap::gateway::Gateway`) with the
//! embedded broker behind a sans-IO `coap_endpoint::Endpoint`, in virtual
//! time: the harness is the driver that `Gateway::run_server` would be.
//!
//! Four peers (three UDP addresses, one DTLS identity `dev`) send requests
//! built from the input — POST/PUT/GET/DELETE/other codes on
//! `mqtt/connection` and `ps/{topic}` (topics and filters incl. wildcards,
//! `$SYS`, percent-encoded levels, empty levels) or arbitrary paths, CON
//! or NON, with query parameters in long and short form (clientid,
//! username, password, the session token the gateway handed out or a
//! stale or wrong one, qos, retain, expiry, raw entries), Observe 0/1,
//! Content-Format and payloads — plus raw datagrams, repeated datagrams,
//! ACK/RST answers to what the endpoint sent, clock advances (with a
//! punctual timer driver), `Gateway::expire_at`, publishes from the broker
//! side (`EmbeddedBroker::publish_at`), notifications on established
//! relations and two requests handled concurrently. The gateway settings
//! (connection mode, caps, heartbeat, mountpoint, QoS policies, idle
//! lifetime, presence, a bcrypt authentication file with ACL and optional
//! cache, bad-token limiter) come from the input.
//!
//! Every request event goes to `Gateway::handle_at(now)`; the reply is
//! passed to `Endpoint::respond`, then `Gateway::finish_observe` for an
//! observe registration; `ObserveCancelled` events go to
//! `Gateway::handle_event`; broker deliveries run through
//! `Gateway::run_deliveries` on the runtime. The gateway's endpoint handle
//! belongs to a server that is not running, so its notifications and
//! rebinds fail with `Stopped` (the harness performs the rebind itself when
//! a session moves).
//!
//! Checks after every step:
//! - nothing panics, no future stays pending (the handler never hangs);
//! - every reply is a response code; 4.xx/5.xx carry a UTF-8 diagnostic
//!   with Content-Format 0; 2.xx codes fit the method; only a 2.05 answer
//!   to an observe registration carries a subscriber; every reply encodes
//!   with the request's token;
//! - every transmit parses and goes to a known peer; an ACK/RST names a
//!   message id the peer used; all answers to one CON (peer, message id)
//!   are byte-identical (at most one answer per CON request);
//! - caps: sessions ≤ `max_sessions`, observers ≤ `max_observers`,
//!   endpoint relations ≤ the endpoint's cap; a broker-side publish
//!   reaches no more subscribers than the gateway has observers (a
//!   released observer left no subscription behind);
//! - at the end: after `expire_at` far in the future, no session is left
//!   and only connectionless observers remain; retained messages ≤
//!   `max_retained`.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_endpoint::coap_codec::{
    Code, ContentFormat, Message, MessageRef, MessageType, OptionNumber, peek_header,
};
use coap_endpoint::transport::Transport;
use coap_endpoint::{
    AckTimeout, EXCHANGE_LIFETIME, Endpoint, EndpointConfig, Event, IncomingRequest, Peer,
    RelationId, Server, ServerEvent,
};
use emqx_coap::auth::AuthFile;
use emqx_coap::broker::embedded::{EmbeddedBroker, EmbeddedConfig};
use emqx_coap::broker::{Publish, Qos, SubscriberId};
use emqx_coap::gateway::{
    Gateway, GatewaySettings, ListenerId, NotifyType, QosPolicy, Reply, UNSUBSCRIBED,
};
use emqx_coap::mountpoint::Mountpoint;
use emqx_coap::topic::TopicName;
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 96;
const MAX_SESSIONS: usize = 3;
const MAX_OBSERVERS: usize = 4;
const MAX_RETAINED: usize = 5;
const MAX_RELATIONS: usize = 6;

/// Topics / filters, as written after `ps/` (split into Uri-Path segments
/// at `/`).
const TOPICS: [&str; 16] = [
    "a",
    "a/b",
    "a/+",
    "#",
    "a/#",
    "+/b",
    "$SYS/#",
    "secret/x",
    "a/%23",
    "a//b",
    "t/%2B",
    "x/y/z",
    "%",
    "dev/${clientid}",
    "+",
    "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9",
];
const CLIENTIDS: [&str; 5] = ["c1", "c2", "c3", "dev", "a/b"];
const USERS: [&str; 3] = ["alice", "bob", ""];
const PASSWORDS: [&str; 2] = ["pw", "nope"];

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    connection_required: bool,
    heartbeat_secs: u8,
    notify_type: u8,
    publish_qos: u8,
    subscribe_qos: u8,
    mountpoint: u8,
    max_payload: u16,
    idle_lifetime: Option<u8>,
    presence: bool,
    auth: u8,
    bad_token_limit: u8,
    bad_token_window: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Path_ {
    Connection,
    Ps(u8),
    Ps2(u8),
    Ps3(u8),
    PsSegments(Vec<String>),
    Mqtt(Vec<String>),
    Raw(Vec<Vec<u8>>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TokenSpec {
    /// The latest token the gateway gave this clientid.
    Latest(u8),
    /// The one before.
    Stale(u8),
    Wrong,
    Empty,
}

#[derive(Arbitrary, Debug, Clone)]
enum Query {
    ClientId(u8),
    Username(u8),
    Password(u8),
    Token(TokenSpec),
    Qos(u8),
    Retain(u8),
    Expiry(u16),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
struct Request {
    peer: u8,
    con: bool,
    method: u8,
    path: Path_,
    /// Short parameter names (`c`, `u`, `p`, `t`, `q`, `r`).
    short: bool,
    clientid: Option<u8>,
    credentials: Option<(u8, u8)>,
    session_token: Option<TokenSpec>,
    qos: Option<u8>,
    retain: Option<u8>,
    expiry: Option<u16>,
    /// More entries, after the ones above.
    queries: Vec<(bool, Query)>,
    observe: Option<u8>,
    content_format: Option<u16>,
    payload: Vec<u8>,
    long_payload: Option<u16>,
    token: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request(Request),
    /// Two requests whose handling runs concurrently.
    Pair(Request, Request),
    Raw {
        peer: u8,
        bytes: Vec<u8>,
    },
    /// The peer's last datagram again (a retransmission).
    Repeat(u8),
    /// An empty ACK or RST to one of the last transmits.
    Answer {
        pick: u8,
        rst: bool,
    },
    Advance(u16),
    Sleep(u8),
    Expire,
    BrokerPublish {
        topic: u8,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        expiry: Option<u8>,
    },
    Notify {
        pick: u8,
        con: bool,
        code: u8,
    },
}

/// A transport that never delivers anything (the gateway's listener handle
/// belongs to a server that never runs).
struct Nowhere;

impl Transport for Nowhere {
    async fn recv(&self, _buf: &mut [u8]) -> std::io::Result<(usize, Peer)> {
        std::future::pending().await
    }

    async fn send(&self, _peer: &Peer, _bytes: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 5683)))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// `COAP_FUZZ_TRACE=1`: print each reply code (to see what a corpus
/// reaches).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("COAP_FUZZ_TRACE").is_some())
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn auth_file(acl: bool) -> AuthFile {
    static HASH: OnceLock<String> = OnceLock::new();
    let hash = HASH.get_or_init(|| bcrypt::hash("pw", 4).expect("bcrypt"));
    let rules = if acl {
        r##"
[[acl]]
permission = "deny"
action = "all"
topic = "secret/#"

[[acl]]
permission = "allow"
action = "publish"
topic = "dev/${clientid}"

[[acl]]
permission = "deny"
action = "subscribe"
topic = "eq #"

[[acl]]
permission = "allow"
action = "all"
topic = "#"
"##
    } else {
        r##"
[[acl]]
permission = "allow"
action = "all"
topic = "#"
"##
    };
    let text = format!(
        "[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\n[[users]]\nusername = \"bob\"\npassword_hash = \"{hash}\"\n{rules}"
    );
    AuthFile::parse(&text, Path::new("auth.toml")).expect("auth file")
}

fn peers() -> [Peer; 4] {
    let a: SocketAddr = "192.0.2.1:5683".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:5683".parse().unwrap();
    let c: SocketAddr = "192.0.2.2:40000".parse().unwrap();
    [
        Peer::new(a),
        Peer::new(b),
        Peer::new(c),
        Peer::authenticated(a, &b"dev"[..]),
    ]
}

/// The first value of a query parameter given by its long or short name
/// (the gateway's rule: the first wins).
fn param(m: &Message, long: &str, short: &str) -> Option<String> {
    m.uri_query().find_map(|entry| {
        let eq = entry.iter().position(|b| *b == b'=')?;
        let key = &entry[..eq];
        (key == long.as_bytes() || key == short.as_bytes())
            .then(|| String::from_utf8_lossy(&entry[eq + 1..]).into_owned())
    })
}

fn method(m: u8) -> Code {
    match m % 8 {
        0 | 1 => Code::POST,
        2 | 3 => Code::GET,
        4 => Code::PUT,
        5 => Code::DELETE,
        6 => Code::new(0, 5), // FETCH
        _ => Code::new(0, 31),
    }
}

struct Harness {
    gateway: Gateway,
    broker: Arc<EmbeddedBroker>,
    deliveries_task: tokio::task::JoinHandle<()>,
    settings: GatewaySettings,
    listener: ListenerId,
    ep: Endpoint,
    peers: [Peer; 4],
    now: Instant,
    tokens: HashMap<&'static str, Vec<String>>,
    /// Where the harness last saw each session's valid request.
    session_peer: HashMap<String, usize>,
    relations: Vec<RelationId>,
    /// Subscribers handed out by the gateway (observe registrations).
    subscribers: HashSet<SubscriberId>,
    /// Message ids each peer sent.
    peer_mids: Vec<HashSet<u16>>,
    /// Structured CON requests: (peer, mid) → when first sent, first
    /// answer bytes.
    answers: HashMap<(usize, u16), (Instant, Option<Bytes>)>,
    tainted: HashSet<(usize, u16)>,
    last_datagram: Vec<Option<Bytes>>,
    next_mid: [u16; 4],
    next_token: u64,
    recent: VecDeque<(usize, Message)>,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        let mut settings = GatewaySettings::default();
        settings.connection_required = input.connection_required;
        settings.heartbeat = Duration::from_secs(u64::from(input.heartbeat_secs % 60) + 1);
        settings.notify_type = match input.notify_type % 3 {
            0 => NotifyType::Qos,
            1 => NotifyType::Con,
            _ => NotifyType::Non,
        };
        let policy = |p: u8| match p % 4 {
            0 => QosPolicy::Coap,
            n => QosPolicy::Fixed(Qos::from_u8(n - 1).unwrap_or(Qos::AtMostOnce)),
        };
        settings.publish_qos = policy(input.publish_qos);
        settings.subscribe_qos = policy(input.subscribe_qos);
        settings.mountpoint = match input.mountpoint % 4 {
            0 => Mountpoint::default(),
            1 => Mountpoint::new("m/${clientid}/"),
            2 => Mountpoint::new("${username}/"),
            _ => Mountpoint::new("fixed/"),
        };
        settings.max_payload_size = usize::from(input.max_payload % 2048);
        settings.max_sessions = MAX_SESSIONS;
        settings.max_observers = MAX_OBSERVERS;
        settings.observe_idle_lifetime = input
            .idle_lifetime
            .map(|s| Duration::from_secs(u64::from(s % 120) + 1));
        settings.presence_node = input.presence.then(|| "node1".to_owned());
        settings.auth_cache_ttl = (input.auth & 4 != 0).then_some(Duration::from_secs(30));
        settings.bad_token_limit = u32::from(input.bad_token_limit % 4) + 1;
        settings.bad_token_window = Duration::from_secs(u64::from(input.bad_token_window % 20) + 1);
        let auth = match input.auth % 4 {
            0 | 1 => None,
            2 => Some(Arc::new(auth_file(false))),
            _ => Some(Arc::new(auth_file(true))),
        };
        let (broker, deliveries) = EmbeddedBroker::new(EmbeddedConfig {
            queue_capacity: 4,
            max_retained: MAX_RETAINED,
            max_subscriptions: 64,
        });
        let broker = Arc::new(broker);
        let gateway = Gateway::new(broker.clone(), auth, settings.clone());
        let server = Server::new(Nowhere, EndpointConfig::default()).expect("server");
        let listener = gateway.attach(server.handle());
        drop(server);
        let g = gateway.clone();
        let deliveries_task = runtime().spawn(async move { g.run_deliveries(deliveries).await });

        let mut config = EndpointConfig::default();
        config.rng_seed = Some(input.seed);
        config.default_ack_timeout = AckTimeout::Never;
        config.max_relations = MAX_RELATIONS;
        config.max_relations_per_peer = 3;
        config.max_pending_requests = 8;
        config.max_queued_per_peer = 4;
        // Above the number of operations: no deduplication entry is evicted
        // (an evicted one would rightly let a duplicate CON be answered
        // again).
        config.max_dedup_per_peer = 512;
        config.max_dedup_total = 2048;
        let ep = Endpoint::new(config).expect("endpoint config");
        Harness {
            gateway,
            broker,
            deliveries_task,
            settings,
            listener,
            ep,
            peers: peers(),
            now: base(),
            tokens: HashMap::new(),
            session_peer: HashMap::new(),
            relations: Vec::new(),
            subscribers: HashSet::new(),
            peer_mids: vec![HashSet::new(); 4],
            answers: HashMap::new(),
            tainted: HashSet::new(),
            last_datagram: vec![None; 4],
            next_mid: [0x100, 0x2000, 0x4000, 0x6000],
            next_token: 1,
            recent: VecDeque::new(),
        }
    }

    fn peer_index(&self, peer: &Peer) -> usize {
        self.peers
            .iter()
            .position(|p| p == peer)
            .unwrap_or_else(|| panic!("transmit for unknown peer {peer}"))
    }

    fn token_value(&self, spec: TokenSpec) -> String {
        match spec {
            TokenSpec::Latest(c) | TokenSpec::Stale(c) => {
                let id = CLIENTIDS[usize::from(c) % CLIENTIDS.len()];
                let list = self.tokens.get(id).map(Vec::as_slice).unwrap_or(&[]);
                let back = usize::from(matches!(spec, TokenSpec::Stale(_))) + 1;
                list.len()
                    .checked_sub(back)
                    .and_then(|i| list.get(i))
                    .cloned()
                    .unwrap_or_else(|| "nosuchtoken".to_owned())
            }
            TokenSpec::Wrong => "0123456789abcdef".to_owned(),
            TokenSpec::Empty => String::new(),
        }
    }

    fn build(&mut self, r: &Request) -> (usize, Message) {
        let peer = usize::from(r.peer) % 4;
        let mid = self.next_mid[peer];
        self.next_mid[peer] = mid.wrapping_add(1);
        let mtype = if r.con {
            MessageType::Con
        } else {
            MessageType::Non
        };
        let token: Bytes = match r.token % 4 {
            0 => Bytes::new(),
            _ => {
                self.next_token += 1;
                Bytes::copy_from_slice(&self.next_token.to_be_bytes()[5..])
            }
        };
        let mut m = Message::new(mtype, method(r.method), mid).with_token(token);
        let mut segments: Vec<Vec<u8>> = Vec::new();
        match &r.path {
            Path_::Connection => {
                segments.push(b"mqtt".to_vec());
                segments.push(b"connection".to_vec());
            }
            Path_::Ps(t) | Path_::Ps2(t) | Path_::Ps3(t) => {
                segments.push(b"ps".to_vec());
                for s in TOPICS[usize::from(*t) % TOPICS.len()].split('/') {
                    segments.push(s.as_bytes().to_vec());
                }
            }
            Path_::PsSegments(s) => {
                segments.push(b"ps".to_vec());
                segments.extend(s.iter().take(8).map(|s| s.as_bytes().to_vec()));
            }
            Path_::Mqtt(s) => {
                segments.push(b"mqtt".to_vec());
                segments.extend(s.iter().take(4).map(|s| s.as_bytes().to_vec()));
            }
            Path_::Raw(s) => segments.extend(s.iter().take(8).cloned()),
        }
        for s in segments {
            if s.len() <= 255 {
                m.add_option(OptionNumber::URI_PATH, s);
            }
        }
        if let Some(o) = r.observe {
            m = m.with_observe(u32::from(o % 3));
        }
        let mut queries: Vec<(bool, Query)> = Vec::new();
        if let Some(c) = r.clientid {
            queries.push((r.short, Query::ClientId(c)));
        }
        if let Some((u, p)) = r.credentials {
            queries.push((r.short, Query::Username(u)));
            queries.push((r.short, Query::Password(p)));
        }
        if let Some(t) = r.session_token {
            queries.push((r.short, Query::Token(t)));
        }
        if let Some(q) = r.qos {
            queries.push((r.short, Query::Qos(q)));
        }
        if let Some(v) = r.retain {
            queries.push((r.short, Query::Retain(v)));
        }
        if let Some(e) = r.expiry {
            queries.push((r.short, Query::Expiry(e)));
        }
        queries.extend(r.queries.iter().take(4).cloned());
        for (short, q) in &queries {
            let (long, short_name) = match q {
                Query::ClientId(_) => ("clientid", "c"),
                Query::Username(_) => ("username", "u"),
                Query::Password(_) => ("password", "p"),
                Query::Token(_) => ("token", "t"),
                Query::Qos(_) => ("qos", "q"),
                Query::Retain(_) => ("retain", "r"),
                Query::Expiry(_) => ("expiry", "expiry"),
                Query::Text(_) | Query::Bytes(_) => ("", ""),
            };
            let key = if *short { short_name } else { long };
            let value: Vec<u8> = match q {
                Query::ClientId(c) => CLIENTIDS[usize::from(*c) % CLIENTIDS.len()].into(),
                Query::Username(u) => USERS[usize::from(*u) % USERS.len()].into(),
                Query::Password(p) => PASSWORDS[usize::from(*p) % PASSWORDS.len()].into(),
                Query::Token(t) => self.token_value(*t).into_bytes(),
                Query::Qos(q) => ["0", "1", "2", "3", "x", ""][usize::from(*q) % 6].into(),
                Query::Retain(v) => {
                    ["true", "false", "1", "0", "maybe"][usize::from(*v) % 5].into()
                }
                Query::Expiry(e) => match e % 4 {
                    0 => b"0".to_vec(),
                    1 => b"-1".to_vec(),
                    2 => b"99999999999".to_vec(),
                    _ => (e / 4).to_string().into_bytes(),
                },
                Query::Text(t) => t.as_bytes().to_vec(),
                Query::Bytes(b) => b.clone(),
            };
            let entry = if key.is_empty() {
                value
            } else {
                let mut e = key.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(&value);
                e
            };
            if entry.len() <= 255 {
                m.add_option(OptionNumber::URI_QUERY, entry);
            }
        }
        if let Some(cf) = r.content_format {
            m = m.with_content_format(ContentFormat(cf % 128));
        }
        let payload = match r.long_payload {
            Some(n) => vec![b'x'; usize::from(n % 1100)],
            None => r.payload.clone(),
        };
        m = m.with_payload(payload);
        (peer, m)
    }

    /// A CON from `key` expects at most one answer within
    /// EXCHANGE_LIFETIME (after that, the message id may be reused).
    fn expect_answer(&mut self, key: (usize, u16)) {
        let now = self.now;
        let entry = self.answers.entry(key).or_insert((now, None));
        if now.duration_since(entry.0) > EXCHANGE_LIFETIME {
            *entry = (now, None);
        }
    }

    /// Hands a datagram to the endpoint and handles what follows.
    fn deliver(&mut self, peer: usize, bytes: Bytes, structured: bool) {
        if let Some(h) = peek_header(&bytes) {
            self.peer_mids[peer].insert(h.message_id);
            if h.mtype == MessageType::Con {
                let key = (peer, h.message_id);
                if structured {
                    self.expect_answer(key);
                } else {
                    self.tainted.insert(key);
                }
            }
        }
        self.last_datagram[peer] = Some(bytes.clone());
        self.ep
            .handle_datagram(self.now, self.peers[peer].clone(), &bytes);
        self.drain();
    }

    fn handle_one(&mut self, req: IncomingRequest) {
        let reply = runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                self.gateway.handle_at(
                    self.listener,
                    &req.peer,
                    &req.message,
                    req.observe_registration,
                    self.now,
                ),
            )
            .await
            .expect("handle_at hangs")
        });
        self.finish(req, reply);
    }

    fn handle_two(&mut self, a: IncomingRequest, b: IncomingRequest) {
        let (ra, rb) = runtime().block_on(async {
            let fa = self.gateway.handle_at(
                self.listener,
                &a.peer,
                &a.message,
                a.observe_registration,
                self.now,
            );
            let fb = self.gateway.handle_at(
                self.listener,
                &b.peer,
                &b.message,
                b.observe_registration,
                self.now,
            );
            tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(fa, fb) })
                .await
                .expect("handle_at hangs")
        });
        self.finish(a, ra);
        self.finish(b, rb);
    }

    fn check_reply(&self, req: &IncomingRequest, reply: &Reply) {
        let r = &reply.response;
        let class = r.code.class();
        assert!(
            matches!(class, 2 | 4 | 5),
            "reply code {} is not a response",
            r.code
        );
        if class >= 4 {
            assert_eq!(
                r.content_format(),
                Some(ContentFormat::TEXT_PLAIN),
                "{} without Content-Format 0",
                r.code
            );
            assert!(
                std::str::from_utf8(&r.payload).is_ok(),
                "diagnostic is not UTF-8"
            );
        } else {
            let m = req.message.code;
            let ok = match r.code {
                Code::CREATED => m == Code::POST,
                Code::CHANGED => m == Code::POST || m == Code::PUT,
                Code::DELETED => m == Code::DELETE,
                Code::CONTENT => m == Code::GET,
                c if c == UNSUBSCRIBED => m == Code::GET,
                _ => false,
            };
            assert!(ok, "{} answered with {}", m, r.code);
        }
        if reply.subscriber().is_some() {
            assert!(
                req.observe_registration && r.code == Code::CONTENT,
                "subscriber on a non-registration reply {}",
                r.code
            );
        }
        let mut wire = r.clone();
        wire.mtype = MessageType::Ack;
        wire.message_id = req.message.message_id;
        wire.token = req.message.token.clone();
        if req.observe_registration && class == 2 {
            wire = wire.with_observe(2);
        }
        if let Err(e) = wire.to_bytes() {
            panic!("reply {} does not encode: {e}", r.code);
        }
    }

    fn finish(&mut self, req: IncomingRequest, reply: Reply) {
        self.check_reply(&req, &reply);
        if trace() {
            eprintln!(
                "{} {:?} -> {} {:?}",
                req.message.code,
                req.message
                    .uri_path()
                    .map(String::from_utf8_lossy)
                    .collect::<Vec<_>>(),
                reply.response.code,
                String::from_utf8_lossy(&reply.response.payload)
            );
        }
        let peer = self.peer_index(&req.peer);
        // A session token handed out: remember it for later requests.
        if reply.response.code == Code::CREATED {
            let token = String::from_utf8(reply.response.payload.to_vec()).expect("token text");
            let clientid = param(&req.message, "clientid", "c").or_else(|| {
                req.peer
                    .identity
                    .as_ref()
                    .map(|i| String::from_utf8_lossy(i).into_owned())
            });
            if let Some(id) = clientid.and_then(|c| CLIENTIDS.iter().find(|k| **k == c)) {
                self.tokens.entry(id).or_default().push(token);
            }
        }
        // A valid connection-mode request from a new address moves the
        // session; the gateway's handle cannot reach this endpoint, so the
        // harness rebinds as the running server would.
        if reply.response.code.class() == 2
            && let Some(t) = param(&req.message, "token", "t")
        {
            let owner = self
                .tokens
                .iter()
                .find(|(_, list)| list.last() == Some(&t))
                .map(|(id, _)| (*id).to_owned());
            if let Some(id) = owner {
                if let Some(old) = self.session_peer.insert(id, peer)
                    && old != peer
                {
                    let (old, new) = (self.peers[old].clone(), self.peers[peer].clone());
                    self.ep.rebind(self.now, &old, new);
                }
            }
        }
        if reply.response.code == Code::CREATED
            && let Some(id) = param(&req.message, "clientid", "c")
        {
            self.session_peer.insert(id, peer);
        }
        let subscriber = reply.subscriber();
        let result = self.ep.respond(self.now, req.id, reply.response);
        let relation = result.ok().flatten();
        if let Some(sub) = subscriber {
            assert!(self.subscribers.insert(sub), "subscriber id reused");
            runtime().block_on(self.gateway.finish_observe(self.listener, sub, relation));
        }
        if let Some(rel) = relation {
            self.relations.push(rel);
        }
        self.settle();
    }

    /// Lets the delivery task run.
    fn settle(&self) {
        runtime().block_on(async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        });
    }

    fn drain(&mut self) {
        loop {
            while let Some(t) = self.ep.poll_transmit() {
                let peer = self.peer_index(&t.peer);
                let msg = match MessageRef::parse(&t.bytes) {
                    Ok(m) => m,
                    Err(e) => panic!("endpoint sent a malformed datagram ({e})"),
                };
                if matches!(msg.mtype(), MessageType::Ack | MessageType::Rst) {
                    let mid = msg.message_id();
                    assert!(
                        self.peer_mids[peer].contains(&mid),
                        "{} for message id {mid} the peer never sent",
                        msg.mtype()
                    );
                    let key = (peer, mid);
                    if !self.tainted.contains(&key)
                        && let Some((_, slot)) = self.answers.get_mut(&key)
                    {
                        match slot {
                            None => *slot = Some(t.bytes.clone()),
                            Some(first) => assert_eq!(
                                first, &t.bytes,
                                "two different answers to CON {mid} from peer {peer}"
                            ),
                        }
                    }
                }
                self.recent.push_back((peer, msg.to_message()));
                if self.recent.len() > 16 {
                    self.recent.pop_front();
                }
            }
            let Some(event) = self.ep.poll_event() else {
                break;
            };
            match event {
                Event::Request(req) => self.handle_one(req),
                Event::ObserveCancelled {
                    relation,
                    peer,
                    reason,
                } => {
                    self.relations.retain(|r| *r != relation);
                    runtime().block_on(self.gateway.handle_event(
                        self.listener,
                        ServerEvent::ObserveCancelled {
                            relation,
                            peer,
                            reason,
                        },
                    ));
                }
                _ => {}
            }
        }
        self.check_state();
    }

    fn check_state(&self) {
        assert!(
            self.gateway.session_count() <= MAX_SESSIONS,
            "{} sessions",
            self.gateway.session_count()
        );
        assert!(
            self.gateway.observer_count() <= MAX_OBSERVERS,
            "{} observers",
            self.gateway.observer_count()
        );
        assert!(self.relations.len() <= MAX_RELATIONS);
    }

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..256 {
            match self.ep.poll_timeout() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    self.ep.handle_timeout(self.now);
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = target;
        self.ep.handle_timeout(self.now);
        self.drain();
    }

    fn broker_publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        expiry: Option<u8>,
    ) {
        let Ok(name) = TopicName::new(topic) else {
            return;
        };
        let publish = Publish::new(name, payload)
            .qos(Qos::from_u8(qos % 3).unwrap_or(Qos::AtMostOnce))
            .retain(retain)
            .expiry(expiry.map(|s| Duration::from_secs(u64::from(s))));
        if let Ok(reached) = self.broker.publish_at(publish, self.now) {
            let observers = self.gateway.observer_count();
            assert!(
                reached <= observers,
                "publish to {topic} reached {reached} subscribers, gateway has {observers} observers"
            );
        }
        self.settle();
    }

    fn request(&mut self, r: &Request) {
        let (peer, m) = self.build(r);
        let Ok(bytes) = m.to_bytes() else {
            return;
        };
        self.deliver(peer, bytes, true);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Request(r) => self.request(r),
            Op::Pair(a, b) => {
                // Both datagrams reach the endpoint first; their requests
                // are then handled at the same time.
                let (pa, ma) = self.build(a);
                let (pb, mb) = self.build(b);
                let (Ok(ba), Ok(bb)) = (ma.to_bytes(), mb.to_bytes()) else {
                    return;
                };
                for (p, bytes) in [(pa, &ba), (pb, &bb)] {
                    if let Some(h) = peek_header(bytes) {
                        self.peer_mids[p].insert(h.message_id);
                        if h.mtype == MessageType::Con {
                            self.expect_answer((p, h.message_id));
                        }
                    }
                    self.last_datagram[p] = Some(bytes.clone());
                    self.ep
                        .handle_datagram(self.now, self.peers[p].clone(), bytes);
                }
                let mut requests = Vec::new();
                while let Some(event) = self.ep.poll_event() {
                    match event {
                        Event::Request(req) => requests.push(req),
                        Event::ObserveCancelled {
                            relation,
                            peer,
                            reason,
                        } => {
                            self.relations.retain(|r| *r != relation);
                            runtime().block_on(self.gateway.handle_event(
                                self.listener,
                                ServerEvent::ObserveCancelled {
                                    relation,
                                    peer,
                                    reason,
                                },
                            ));
                        }
                        _ => {}
                    }
                }
                if requests.len() == 2 {
                    let b = requests.pop().unwrap();
                    let a = requests.pop().unwrap();
                    self.handle_two(a, b);
                } else {
                    for req in requests {
                        self.handle_one(req);
                    }
                }
                self.drain();
            }
            Op::Raw { peer, bytes } => {
                let peer = usize::from(*peer) % 4;
                self.deliver(peer, Bytes::copy_from_slice(bytes), false);
            }
            Op::Repeat(peer) => {
                let peer = usize::from(*peer) % 4;
                if let Some(bytes) = self.last_datagram[peer].clone() {
                    let structured = peek_header(&bytes)
                        .is_some_and(|h| !self.tainted.contains(&(peer, h.message_id)));
                    self.deliver(peer, bytes, structured);
                }
            }
            Op::Answer { pick, rst } => {
                let cons: Vec<(usize, u16)> = self
                    .recent
                    .iter()
                    .filter(|(_, m)| m.mtype == MessageType::Con)
                    .map(|(p, m)| (*p, m.message_id))
                    .collect();
                if cons.is_empty() {
                    return;
                }
                let (peer, mid) = cons[usize::from(*pick) % cons.len()];
                let m = if *rst {
                    Message::reset(mid)
                } else {
                    Message::empty_ack(mid)
                };
                if let Ok(bytes) = m.to_bytes() {
                    self.last_datagram[peer] = Some(bytes.clone());
                    self.ep
                        .handle_datagram(self.now, self.peers[peer].clone(), &bytes);
                    self.drain();
                }
            }
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(*ms))),
            Op::Sleep(s) => self.advance(Duration::from_secs(u64::from(*s))),
            Op::Expire => {
                runtime().block_on(self.gateway.expire_at(self.now));
                self.settle();
                self.drain();
            }
            Op::BrokerPublish {
                topic,
                payload,
                qos,
                retain,
                expiry,
            } => {
                let topic = TOPICS[usize::from(*topic) % TOPICS.len()];
                self.broker_publish(topic, payload.clone(), *qos, *retain, *expiry);
            }
            Op::Notify { pick, con, code } => {
                if self.relations.is_empty() {
                    return;
                }
                let relation = self.relations[usize::from(*pick) % self.relations.len()];
                // As the gateway notifies (2.05; final notifications only
                // come from the gateway itself).
                let n = Message::new(MessageType::Non, Code::CONTENT, 0)
                    .with_payload(vec![b'n'; usize::from(*code)]);
                if self.ep.notify(self.now, relation, n, *con).is_err() {
                    self.relations.retain(|r| *r != relation);
                }
                self.drain();
            }
        }
    }

    fn finish_run(mut self) {
        // Every session ends by heartbeat expiry; only connectionless
        // observers may remain.
        let far = self.now + Duration::from_secs(3600);
        self.advance(Duration::from_secs(3600));
        runtime().block_on(self.gateway.expire_at(far));
        self.settle();
        self.drain();
        assert_eq!(
            self.gateway.session_count(),
            0,
            "sessions left after expiry"
        );
        // Retained messages stored under the known topic names (the
        // broker refuses new ones beyond its cap).
        let mut stored = 0;
        for t in TOPICS {
            if let Ok(name) = TopicName::new(t) {
                stored += usize::from(self.broker.retained_at(&name, self.now).is_some());
            }
        }
        assert!(stored <= MAX_RETAINED, "{stored} retained messages");
        self.deliveries_task.abort();
        runtime().block_on(async {
            tokio::task::yield_now().await;
        });
        let _ = self.settings;
        let _ = self.subscribers;
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    h.finish_run();
});
