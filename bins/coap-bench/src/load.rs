//! `load`: sets up the lanes from the command line, runs them, prints the
//! progress line and the summary.
//!
//! ```text
//!  args ─▶ Target + RequestShape ─▶ templates (one, or one per client)
//!        ─▶ K transports (UDP sockets, or one DTLS session per client)
//!        ─▶ K lanes (clients i ≡ lane i mod K) ─▶ tokio tasks
//!        ─▶ merge counters + shared histogram ─▶ Summary (text / JSON)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use coap_codec::{Code, MessageType};
use coap_dtls::{ClientConfig, DtlsConnector};
use tokio::task::JoinSet;

use crate::lane::{Lane, OpenLoop, Plan};
use crate::report::{Counters, RunLabel, RunProgress, Summary};
use crate::target::{RequestShape, Target, Template};
use crate::transport::Transport;

/// Request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub(crate) fn code(self) -> Code {
        match self {
            Method::Get => Code::GET,
            Method::Post => Code::POST,
            Method::Put => Code::PUT,
            Method::Delete => Code::DELETE,
        }
    }
}

/// What the request looks like (shared by `load` and `request`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RequestArgs {
    /// Target: coap://host[:port]/path?query or coaps://… (`{client}` in the
    /// path or query is replaced by the client's index).
    pub(crate) uri: String,
    /// Request method.
    #[arg(long, short = 'm', value_enum, default_value = "get")]
    pub(crate) method: Method,
    /// Payload text.
    #[arg(long, short = 'e', conflicts_with = "payload_size")]
    pub(crate) payload: Option<String>,
    /// Payload of N bytes ('x').
    #[arg(long)]
    pub(crate) payload_size: Option<usize>,
    /// Content-Format option value (e.g. 0 text/plain, 50 JSON).
    #[arg(long, short = 't')]
    pub(crate) content_format: Option<u16>,
    /// Send NON requests (default CON).
    #[arg(long, conflicts_with = "con")]
    pub(crate) non: bool,
    /// Send CON requests (the default).
    #[arg(long)]
    pub(crate) con: bool,
    /// Per-request timeout (covers CON retransmissions).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// DTLS PSK identity (coaps://); `{client}` becomes the client's index
    /// (e.g. `dev{client}@DEFAULT_TENANT` for Hono).
    #[arg(long, short = 'u', default_value = "coap-bench")]
    pub(crate) psk_identity: String,
    /// DTLS pre-shared key (coaps://): the bytes of the string, or
    /// `hex:0a1b…` for binary keys (as in the gateways' PSK files).
    #[arg(long, short = 'k')]
    pub(crate) psk_key: Option<String>,
}

impl RequestArgs {
    pub(crate) fn payload_bytes(&self) -> Vec<u8> {
        match (&self.payload, self.payload_size) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(size)) => vec![b'x'; size],
            (None, None) => Vec::new(),
        }
    }

    pub(crate) fn mtype(&self) -> MessageType {
        if self.non {
            MessageType::Non
        } else {
            MessageType::Con
        }
    }

    /// The DTLS connector for client 0 (`request`, observers).
    pub(crate) fn connector(&self) -> anyhow::Result<DtlsConnector> {
        self.connector_for(0)
    }

    /// The DTLS connector for `client` (`{client}` in the identity is
    /// replaced by its index).
    pub(crate) fn connector_for(&self, client: u32) -> anyhow::Result<DtlsConnector> {
        let Some(key) = &self.psk_key else {
            bail!("coaps:// needs --psk-key (and --psk-identity)");
        };
        let identity = self
            .psk_identity
            .replace(crate::target::CLIENT_PLACEHOLDER, &client.to_string());
        DtlsConnector::new(ClientConfig::new(identity.into_bytes(), parse_key(key)?))
            .context("cannot set up DTLS")
    }

    /// Whether every client needs its own connector.
    fn identity_per_client(&self) -> bool {
        self.psk_identity
            .contains(crate::target::CLIENT_PLACEHOLDER)
    }
}

/// `load` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// Simulated clients (each keeps one request in flight in closed loop).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub(crate) clients: usize,
    /// UDP sockets the clients share (default min(clients, 64)); with DTLS
    /// every client has its own socket and session.
    #[arg(long)]
    pub(crate) sockets: Option<usize>,
    /// Open loop: total requests per second, latency from the scheduled send.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Stop sending after this long (after the warm-up); default 10s unless
    /// --requests is given.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Stop after this many measured requests.
    #[arg(long, short = 'n')]
    pub(crate) requests: Option<u64>,
    /// Unmeasured warm-up period before measuring.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// RFC 7252 ACK_TIMEOUT for CON retransmissions.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) ack_timeout: Duration,
    /// RFC 7252 MAX_RETRANSMIT.
    #[arg(long, default_value_t = 4)]
    pub(crate) max_retransmit: u32,
    /// Put a send timestamp (`coap-bench-ts=<µs since epoch>`) at the start
    /// of the payload.
    #[arg(long)]
    pub(crate) timestamp: bool,
    /// Observe mode: N observers register (GET + Observe 0) on the target
    /// and count notifications.
    #[arg(long)]
    pub(crate) observe: Option<usize>,
    /// Observe mode: also publish (POST, or PUT with `--method put`; the
    /// payload is timestamped) to the target at this rate, to measure the
    /// fan-out latency.
    #[arg(long, requires = "observe")]
    pub(crate) publish_rate: Option<f64>,
    /// Print one JSON object instead of the text summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// EMQX connection mode: before measuring, each client POSTs to this
    /// path and query on the target (e.g.
    /// `mqtt/connection?clientid=c{client}&username=u&password=p`), expects
    /// 2.01 with the token as payload, and adds `token=<token>` to its
    /// requests (whose URI should carry the same `clientid=c{client}`).
    /// Every client gets its own socket.
    #[arg(long)]
    pub(crate) connect: Option<String>,
    /// Handshake time limit per DTLS session.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) handshake_timeout: Duration,
}

/// The key bytes: `hex:…` decoded, anything else as UTF-8 bytes.
fn parse_key(key: &str) -> anyhow::Result<Vec<u8>> {
    let Some(hex) = key.strip_prefix("hex:") else {
        return Ok(key.as_bytes().to_vec());
    };
    anyhow::ensure!(hex.len() % 2 == 0, "hex key with an odd number of digits");
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .context("hex key with a non-hex digit")
        })
        .collect()
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, `250us` or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (e.g. 10s, 500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use us, ms, s, m, h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Everything needed to run a set of lanes: shared by plain load runs and
/// the publisher of observe mode.
pub(crate) struct LoadRun {
    pub(crate) label: RunLabel,
    pub(crate) plan: Arc<Plan>,
    lanes: Vec<Lane>,
    measure_start: Instant,
}

/// Builds the lanes (connecting DTLS sessions first).
pub(crate) async fn prepare(
    args: &LoadArgs,
    shape: &RequestShape,
    clients: usize,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<LoadRun> {
    let req = &args.request;
    let target = Target::parse(&req.uri)?;
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let mut transports = if target.secure {
        connect_all(&target, req, clients, args.handshake_timeout).await?
    } else {
        // Connection mode binds a session to its peer: one socket each.
        let default = if args.connect.is_some() {
            clients
        } else {
            clients.min(64)
        };
        let sockets = args.sockets.unwrap_or(default).clamp(1, clients);
        (0..sockets)
            .map(|_| Transport::udp(target.addr))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let templates = if let Some(connect) = &args.connect {
        anyhow::ensure!(
            transports.len() == clients,
            "--connect needs one socket per client (--sockets {clients})"
        );
        let tokens = connect_clients(&target, connect, &mut transports, args).await?;
        tokens
            .iter()
            .enumerate()
            .map(|(client, token)| {
                Template::build(&target, shape, client as u32, &[format!("token={token}")])
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else if target.per_client() {
        (0..clients as u32)
            .map(|client| Template::build(&target, shape, client, &[]))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        vec![Template::build(&target, shape, 0, &[])?]
    };
    if let Some(max) = transports.first().and_then(Transport::max_datagram)
        && let Some(too_large) = templates.iter().find(|t| t.len() > max)
    {
        bail!(
            "a request of {} bytes does not fit one DTLS record ({max} bytes at this MTU); \
             block-wise transfer is not supported",
            too_large.len()
        );
    }
    let sockets = transports.len();
    let progress = Arc::new(RunProgress::new(sockets));
    let start = Instant::now();
    let warmup_end = start + args.warmup;
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let plan = Arc::new(Plan {
        templates,
        confirmable: shape.mtype == MessageType::Con,
        timeout: req.timeout,
        ack_timeout: args.ack_timeout,
        max_retransmit: args.max_retransmit,
        warmup_end,
        stop_at: duration.map(|d| warmup_end + d),
        max_requests: args.requests,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress,
    });
    let stop_watch = Arc::clone(&plan);
    tokio::spawn(async move {
        // Forward the shared Ctrl-C flag into this plan.
        while !stop_watch.stop.load(Ordering::Relaxed) {
            if stop.load(Ordering::Relaxed) {
                stop_watch.stop.store(true, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let seed = crate::target::wall_micros() ^ u64::from(std::process::id()) << 32;
    let mut lanes = Vec::with_capacity(sockets);
    for (index, transport) in transports.into_iter().enumerate() {
        let lane_clients: Vec<u32> = (index..clients)
            .step_by(sockets)
            .map(|c| c as u32)
            .collect();
        let open = rate.map(|rate| {
            let lane_rate = rate * lane_clients.len() as f64 / clients as f64;
            let interval = Duration::from_secs_f64(1.0 / lane_rate);
            OpenLoop {
                interval,
                // Stagger the lanes over one interval.
                first: start + interval.mul_f64(index as f64 / sockets as f64),
            }
        });
        lanes.push(Lane::new(
            Arc::clone(&plan),
            index,
            transport,
            lane_clients,
            open,
            seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ));
    }
    Ok(LoadRun {
        label: RunLabel {
            target: req.uri.clone(),
            method: shape.code,
            confirmable: shape.mtype == MessageType::Con,
            open_rate: rate,
            clients,
            sockets,
        },
        plan,
        lanes,
        measure_start: warmup_end,
    })
}

impl LoadRun {
    /// Runs all lanes to the end and summarizes.
    pub(crate) async fn run(self, progress_label: Option<&str>) -> anyhow::Result<Summary> {
        let printer = progress_label.map(|label| {
            let progress = Arc::clone(&self.plan.progress);
            let label = label.to_owned();
            let start = Instant::now();
            tokio::spawn(async move { progress.print_every_second(&label, start).await })
        });
        let mut tasks = JoinSet::new();
        for lane in self.lanes {
            tasks.spawn(lane.run());
        }
        let mut counters = Counters::default();
        let mut send_end = self.measure_start;
        while let Some(result) = tasks.join_next().await {
            let result = result.context("a lane failed")?;
            counters.merge(&result.counters);
            send_end = send_end.max(result.send_end);
        }
        if let Some(printer) = printer {
            printer.abort();
        }
        let latency = self
            .plan
            .progress
            .latency
            .lock()
            .map(|h| h.clone())
            .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?;
        Ok(Summary::new(
            &self.label,
            &counters,
            &latency,
            self.measure_start,
            send_end,
        ))
    }
}

/// EMQX connection mode: one CON POST per client on its own transport;
/// returns the tokens.
pub(crate) async fn connect_clients(
    target: &Target,
    connect: &str,
    transports: &mut [Transport],
    args: &LoadArgs,
) -> anyhow::Result<Vec<String>> {
    let (path, query) = connect.split_once('?').unwrap_or((connect, ""));
    let connect_target = Target {
        path: format!("/{}", path.trim_start_matches('/')),
        query: query.to_owned(),
        ..target.clone()
    };
    let shape = RequestShape {
        mtype: MessageType::Con,
        code: Code::POST,
        content_format: None,
        observe: None,
        payload: Vec::new(),
        timestamp: false,
    };
    let limits = crate::request::ExchangeLimits {
        timeout: args.request.timeout,
        ack_timeout: args.ack_timeout,
    };
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(transports.len());
    for (client, transport) in transports.iter_mut().enumerate() {
        let template = Template::build(&connect_target, &shape, client as u32, &[])?;
        let outcome =
            crate::request::exchange(transport, &template, MessageType::Con, limits).await?;
        let crate::request::Exchange::Response(datagram) = outcome else {
            bail!("client {client}: no answer to POST {connect}");
        };
        let msg = coap_codec::MessageRef::parse(&datagram)?;
        if msg.code() != Code::CREATED {
            bail!(
                "client {client}: POST {connect} answered {} {}",
                msg.code(),
                String::from_utf8_lossy(msg.payload())
            );
        }
        tokens.push(String::from_utf8_lossy(msg.payload()).into_owned());
    }
    eprintln!(
        "coap-bench: {} client(s) connected in {} ms",
        tokens.len(),
        started.elapsed().as_millis()
    );
    Ok(tokens)
}

/// Connects one DTLS session per client, a few at a time; transport `i`
/// belongs to client `i` (its identity may be per client).
async fn connect_all(
    target: &Target,
    req: &RequestArgs,
    clients: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Transport>> {
    const PARALLEL_HANDSHAKES: usize = 32;
    let shared = Arc::new(req.connector()?);
    let started = Instant::now();
    let mut slots: Vec<Option<Transport>> = (0..clients).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    while done < clients {
        while next < clients && tasks.len() < PARALLEL_HANDSHAKES {
            let connector = if req.identity_per_client() {
                Arc::new(req.connector_for(next as u32)?)
            } else {
                Arc::clone(&shared)
            };
            let addr: SocketAddr = target.addr;
            let client = next;
            tasks.spawn(async move { (client, Transport::dtls(addr, &connector, limit).await) });
            next += 1;
        }
        let Some(result) = tasks.join_next().await else {
            break;
        };
        let (client, transport) = result.context("handshake task failed")?;
        let transport = transport.with_context(|| format!("client {client}"))?;
        if let Some(slot) = slots.get_mut(client) {
            *slot = Some(transport);
        }
        done += 1;
    }
    eprintln!(
        "coap-bench: {done} DTLS session(s) established in {} ms",
        started.elapsed().as_millis()
    );
    slots
        .into_iter()
        .map(|slot| slot.context("a DTLS session is missing"))
        .collect()
}

/// `coap-bench load`.
pub(crate) async fn main(args: LoadArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("coap-bench: interrupted, finishing requests in flight");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let summary = if let Some(observers) = args.observe {
        crate::observe::run(&args, observers, stop).await?
    } else {
        let shape = RequestShape {
            mtype: args.request.mtype(),
            code: args.request.method.code(),
            content_format: args.request.content_format,
            observe: None,
            payload: args.request.payload_bytes(),
            timestamp: args.timestamp,
        };
        let run = prepare(&args, &shape, args.clients, args.rate, stop).await?;
        run.run((!args.quiet).then_some("load")).await?
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("abc").unwrap(), b"abc");
        assert_eq!(parse_key("hex:0aFF").unwrap(), vec![0x0a, 0xff]);
        assert!(parse_key("hex:0").is_err());
        assert!(parse_key("hex:zz").is_err());
    }
}
