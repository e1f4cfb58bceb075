//! `request`: one request, the response printed — a tiny `coap-client`.
//!
//! Output on stdout: the response code and name (`2.05 Content`), one line
//! per option (`Content-Format (12): 0`), and, after an empty line, the
//! payload (lossy UTF-8). Exit status 0 when a response arrived (whatever
//! its code), 3 on timeout, 1 on other errors.

use std::io;
use std::time::{Duration, Instant};

use anyhow::bail;
use coap_codec::{MessageRef, MessageType, OptionFormat, OptionNumber, decode_uint};

use crate::load::RequestArgs;
use crate::target::{RequestShape, TOKEN_LEN, Target, Template, wall_micros};
use crate::transport::Transport;

/// Exit status when no response arrived in time.
pub(crate) const EXIT_TIMEOUT: i32 = 3;

/// `request` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// Observe value to send (0 register); prints the first response only.
    #[arg(long)]
    pub(crate) observe: Option<u32>,
    /// RFC 7252 ACK_TIMEOUT for CON retransmissions.
    #[arg(long, default_value = "2s", value_parser = crate::load::parse_duration)]
    pub(crate) ack_timeout: Duration,
}

/// Sends the request and prints the response; returns the exit status.
pub(crate) async fn main(args: Args) -> anyhow::Result<i32> {
    let req = &args.request;
    let target = Target::parse(&req.uri)?;
    let shape = RequestShape {
        mtype: req.mtype(),
        code: req.method.code(),
        content_format: req.content_format,
        observe: args.observe,
        payload: req.payload_bytes(),
        timestamp: false,
    };
    let template = Template::build(&target, &shape, 0, &[])?;
    let mut transport = if target.secure {
        Transport::dtls(target.addr, &req.connector()?, req.timeout).await?
    } else {
        Transport::udp(target.addr)?
    };
    let limits = ExchangeLimits {
        timeout: req.timeout,
        ack_timeout: args.ack_timeout,
    };
    let outcome = exchange(&mut transport, &template, shape.mtype, limits).await?;
    transport.close();
    transport.drain_backlog(Duration::from_millis(100)).await;
    match outcome {
        Exchange::Response(datagram) => {
            let msg = MessageRef::parse(&datagram)?;
            print_response(&msg);
            Ok(0)
        }
        Exchange::Timeout { retransmissions } => {
            eprintln!(
                "coap-bench: no response within {:?} ({retransmissions} retransmissions)",
                req.timeout
            );
            Ok(EXIT_TIMEOUT)
        }
    }
}

/// Time limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExchangeLimits {
    pub(crate) timeout: Duration,
    pub(crate) ack_timeout: Duration,
}

/// How an exchange ended.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// The response datagram (piggy-backed, separate, or NON).
    Response(Vec<u8>),
    /// Nothing within the timeout.
    Timeout { retransmissions: u32 },
}

/// Sends `template` as one request (CON: retransmitted per RFC 7252 §4.2)
/// and waits for its response.
pub(crate) async fn exchange(
    transport: &mut Transport,
    template: &Template,
    mtype: MessageType,
    limits: ExchangeLimits,
) -> anyhow::Result<Exchange> {
    let mut seed = wall_micros() ^ u64::from(std::process::id()).rotate_left(32) | 1;
    let mid = (crate::lane::xorshift(&mut seed) & 0xffff) as u16;
    let token: [u8; TOKEN_LEN] = crate::lane::xorshift(&mut seed).to_be_bytes();
    let mut out = Vec::new();
    template.write(&mut out, mid, &token, 0);

    let start = Instant::now();
    let deadline = start + limits.timeout;
    let mut backoff = limits.ack_timeout;
    let mut next_retransmit = (mtype == MessageType::Con).then(|| start + backoff);
    let mut retransmissions = 0;
    send(transport, &out).await?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let wake = next_retransmit.map_or(deadline, |at| at.min(deadline));
        let received = tokio::select! {
            received = transport.socket().recv_from(&mut buf) => received,
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Exchange::Timeout { retransmissions });
                }
                if next_retransmit.is_some_and(|at| now >= at) && retransmissions < 4 {
                    retransmissions += 1;
                    backoff *= 2;
                    next_retransmit = Some(now + backoff);
                    send(transport, &out).await?;
                }
                continue;
            }
        };
        let (n, from) = match received {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(error) => return Err(error.into()),
        };
        if from != transport.peer() {
            continue;
        }
        let datagram = buf.get(..n).unwrap_or_default().to_vec();
        let mut datagrams = Vec::new();
        if transport.handle_datagram(&datagram)? {
            while let Some(plaintext) = transport.next_plaintext() {
                datagrams.push(plaintext.to_vec());
            }
        } else {
            datagrams.push(datagram);
        }
        for datagram in datagrams {
            let Ok(msg) = MessageRef::parse(&datagram) else {
                continue;
            };
            match msg.mtype() {
                MessageType::Ack if msg.message_id() == mid => {
                    if msg.code().is_empty() {
                        next_retransmit = None;
                    } else if msg.token() == token {
                        return Ok(Exchange::Response(datagram));
                    }
                }
                MessageType::Rst if msg.message_id() == mid => {
                    bail!("the server answered with RST");
                }
                MessageType::Con | MessageType::Non if msg.token() == token => {
                    if msg.mtype() == MessageType::Con {
                        let [hi, lo] = msg.message_id().to_be_bytes();
                        send(transport, &[0x60, 0, hi, lo]).await?;
                    }
                    return Ok(Exchange::Response(datagram));
                }
                _ => {}
            }
        }
    }
}

async fn send(transport: &mut Transport, datagram: &[u8]) -> anyhow::Result<()> {
    transport
        .send(datagram)
        .map_err(|failure| anyhow::anyhow!("cannot send: {failure:?}"))?;
    transport.drain_backlog(Duration::from_secs(1)).await;
    Ok(())
}

fn print_response(msg: &MessageRef<'_>) {
    let code = msg.code();
    println!("{code} {}", code.name().unwrap_or(""));
    for option in msg.options() {
        let format = option.number.definition().map(|d| d.format);
        let value = match format {
            Some(OptionFormat::Uint) => decode_uint(option.value)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| hex(option.value)),
            Some(OptionFormat::String) => String::from_utf8_lossy(option.value).into_owned(),
            _ if option.number == OptionNumber::BLOCK2 || option.number == OptionNumber::BLOCK1 => {
                coap_codec::Block::decode(option.value)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|_| hex(option.value))
            }
            _ => hex(option.value),
        };
        println!("{}: {value}", option.number);
    }
    if !msg.payload().is_empty() {
        println!();
        println!("{}", String::from_utf8_lossy(msg.payload()));
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let mut out = String::from("0x");
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
