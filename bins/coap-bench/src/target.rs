//! The target URI (`coap://host:port/path?query` or `coaps://…`) and the
//! request templates built from it.
//!
//! A template is the encoded request with message id 0, an 8-byte zero
//! token and (optionally) a fixed-width timestamp field in the payload; the
//! load generator copies it into its send buffer and patches those bytes in
//! place, so sending a request allocates nothing.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use coap_codec::{Code, ContentFormat, Message, MessageType, OptionNumber, uri};

/// Length of the tokens the generator uses: 4 bytes of slot index and 4
/// bytes of generation (see `lane.rs`).
pub(crate) const TOKEN_LEN: usize = 8;

/// Marks the send timestamp in a payload: followed by [`TIMESTAMP_DIGITS`]
/// decimal digits of microseconds since the Unix epoch.
pub(crate) const TIMESTAMP_PREFIX: &[u8] = b"coap-bench-ts=";
/// Width of the zero-padded timestamp.
pub(crate) const TIMESTAMP_DIGITS: usize = 20;

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Placeholder in the URI replaced by the client's index (0-based).
pub(crate) const CLIENT_PLACEHOLDER: &str = "{client}";

/// A parsed target URI.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `coaps://`.
    pub(crate) secure: bool,
    /// The resolved server address.
    pub(crate) addr: SocketAddr,
    /// Path as written (still percent-encoded, may hold `{client}`).
    pub(crate) path: String,
    /// Query as written without `?` (may hold `{client}`).
    pub(crate) query: String,
}

impl Target {
    /// Parses and resolves `coap[s]://host[:port][/path][?query]`.
    pub(crate) fn parse(uri: &str) -> anyhow::Result<Target> {
        let (secure, rest) = if let Some(rest) = uri.strip_prefix("coap://") {
            (false, rest)
        } else if let Some(rest) = uri.strip_prefix("coaps://") {
            (true, rest)
        } else {
            bail!("target URI must start with coap:// or coaps://: {uri}");
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, query),
            None => (tail, ""),
        };
        let default_port = if secure { 5684 } else { 5683 };
        let host_port = if authority.starts_with('[') {
            // IPv6 literal: "[::1]" or "[::1]:5683"
            if authority.ends_with(']') {
                format!("{authority}:{default_port}")
            } else {
                authority.to_owned()
            }
        } else if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        if authority.is_empty() {
            bail!("target URI has no host: {uri}");
        }
        let addr = host_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} resolves to no address"))?;
        Ok(Target {
            secure,
            addr,
            path: path.to_owned(),
            query: query.to_owned(),
        })
    }

    /// Whether the path or query holds `{client}`.
    pub(crate) fn per_client(&self) -> bool {
        self.path.contains(CLIENT_PLACEHOLDER) || self.query.contains(CLIENT_PLACEHOLDER)
    }

    /// Adds Uri-Path and Uri-Query options (percent-decoded) to `msg`, with
    /// `{client}` replaced by `client`.
    pub(crate) fn add_uri_options(
        &self,
        msg: &mut Message,
        client: u32,
        extra_query: &[String],
    ) -> anyhow::Result<()> {
        let client = client.to_string();
        let path = self.path.replace(CLIENT_PLACEHOLDER, &client);
        let query = self.query.replace(CLIENT_PLACEHOLDER, &client);
        for segment in uri::split_path(&path) {
            let segment = segment.with_context(|| format!("bad path {path}"))?;
            msg.add_option(OptionNumber::URI_PATH, segment.into_owned());
        }
        for entry in uri::split_query(&query) {
            let entry = entry.with_context(|| format!("bad query {query}"))?;
            msg.add_option(OptionNumber::URI_QUERY, entry.into_owned());
        }
        for entry in extra_query {
            msg.add_option(OptionNumber::URI_QUERY, entry.clone().into_bytes());
        }
        Ok(())
    }
}

/// What every request of a run looks like.
#[derive(Debug, Clone)]
pub(crate) struct RequestShape {
    pub(crate) mtype: MessageType,
    pub(crate) code: Code,
    pub(crate) content_format: Option<u16>,
    /// Observe option value (0 register, 1 deregister), if any.
    pub(crate) observe: Option<u32>,
    pub(crate) payload: Vec<u8>,
    /// Put a timestamp field at the start of the payload.
    pub(crate) timestamp: bool,
}

/// One encoded request with the positions of the bytes patched per send.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    /// Offset of the timestamp digits, if the payload carries one.
    timestamp_at: Option<usize>,
}

impl Template {
    /// Encodes the request for `client`, with `extra_query` entries
    /// (already decoded) after the URI's own.
    pub(crate) fn build(
        target: &Target,
        shape: &RequestShape,
        client: u32,
        extra_query: &[String],
    ) -> anyhow::Result<Self> {
        let mut msg = Message::new(shape.mtype, shape.code, 0).with_token(vec![0u8; TOKEN_LEN]);
        target.add_uri_options(&mut msg, client, extra_query)?;
        if let Some(cf) = shape.content_format {
            msg = msg.with_content_format(ContentFormat(cf));
        }
        if let Some(observe) = shape.observe {
            msg = msg.with_observe(observe);
        }
        let mut payload = Vec::new();
        if shape.timestamp {
            payload.extend_from_slice(TIMESTAMP_PREFIX);
            payload.resize(TIMESTAMP_PREFIX.len() + TIMESTAMP_DIGITS, b'0');
            if shape.payload.len() > payload.len() {
                payload.push(b' ');
                let rest = shape.payload.get(payload.len()..).unwrap_or_default();
                payload.extend_from_slice(rest);
            }
        } else {
            payload.extend_from_slice(&shape.payload);
        }
        let payload_len = payload.len();
        msg = msg.with_payload(payload);
        let bytes = msg
            .to_bytes()
            .context("cannot encode the request")?
            .to_vec();
        if bytes.len() > MAX_UDP_PAYLOAD {
            anyhow::bail!(
                "a request of {} bytes does not fit one UDP datagram ({MAX_UDP_PAYLOAD}); \
                 block-wise transfer is not supported",
                bytes.len()
            );
        }
        let timestamp_at = shape
            .timestamp
            .then(|| bytes.len() - payload_len + TIMESTAMP_PREFIX.len());
        Ok(Template {
            bytes,
            timestamp_at,
        })
    }

    /// Writes the request with `mid`, `token` and (if the template has a
    /// timestamp field) `wall_micros` into `out`.
    pub(crate) fn write(
        &self,
        out: &mut Vec<u8>,
        mid: u16,
        token: &[u8; TOKEN_LEN],
        wall_micros: u64,
    ) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        if let Some(field) = out.get_mut(2..4) {
            field.copy_from_slice(&mid.to_be_bytes());
        }
        if let Some(field) = out.get_mut(4..4 + TOKEN_LEN) {
            field.copy_from_slice(token);
        }
        if let Some(at) = self.timestamp_at
            && let Some(field) = out.get_mut(at..at + TIMESTAMP_DIGITS)
        {
            write_digits(field, wall_micros);
        }
    }

    /// The encoded size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload carries a timestamp field.
    pub(crate) fn has_timestamp(&self) -> bool {
        self.timestamp_at.is_some()
    }
}

/// Writes `value` as zero-padded decimal digits filling `field`.
fn write_digits(field: &mut [u8], mut value: u64) {
    for digit in field.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Finds a send timestamp (µs since the Unix epoch) in a payload.
pub(crate) fn find_timestamp(payload: &[u8]) -> Option<u64> {
    let at = payload
        .windows(TIMESTAMP_PREFIX.len())
        .position(|window| window == TIMESTAMP_PREFIX)?;
    let digits = payload.get(at + TIMESTAMP_PREFIX.len()..)?;
    let mut value: u64 = 0;
    let mut seen = 0;
    for &byte in digits.iter().take(TIMESTAMP_DIGITS) {
        if !byte.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
        seen += 1;
    }
    (seen > 0).then_some(value)
}

/// Microseconds since the Unix epoch.
pub(crate) fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_codec::MessageRef;

    #[test]
    fn parses_uris() {
        let t = Target::parse("coap://127.0.0.1:5690/ps/a%2Fb?c=1&d").unwrap();
        assert!(!t.secure);
        assert_eq!(t.addr, "127.0.0.1:5690".parse().unwrap());
        assert_eq!(t.path, "/ps/a%2Fb");
        assert_eq!(t.query, "c=1&d");
        let t = Target::parse("coaps://[::1]").unwrap();
        assert!(t.secure);
        assert_eq!(t.addr.port(), 5684);
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn template_patches_mid_token_timestamp() {
        let target = Target::parse("coap://127.0.0.1:1/ps/t{client}?c=x{client}").unwrap();
        let shape = RequestShape {
            mtype: MessageType::Non,
            code: Code::POST,
            content_format: Some(0),
            observe: None,
            payload: vec![b'y'; 50],
            timestamp: true,
        };
        let template = Template::build(&target, &shape, 7, &["token=abc".to_owned()]).unwrap();
        let mut out = Vec::new();
        template.write(
            &mut out,
            0xABCD,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            1_700_000_000_123_456,
        );
        let msg = MessageRef::parse(&out).unwrap();
        assert_eq!(msg.message_id(), 0xABCD);
        assert_eq!(msg.token(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        let path: Vec<_> = msg.uri_path().collect();
        assert_eq!(path, vec![&b"ps"[..], &b"t7"[..]]);
        let query: Vec<_> = msg.uri_query().collect();
        assert_eq!(query, vec![&b"c=x7"[..], &b"token=abc"[..]]);
        assert_eq!(msg.payload().len(), 50);
        assert_eq!(find_timestamp(msg.payload()), Some(1_700_000_000_123_456));
    }
}
