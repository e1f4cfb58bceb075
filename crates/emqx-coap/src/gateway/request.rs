//! Reading a request: query parameters (long and short names, percent-
//! decoded), the topic from the Uri-Path, and the one place where a failure
//! becomes a CoAP response.

use std::borrow::Cow;

use coap_endpoint::coap_codec::uri::percent_decode;
use coap_endpoint::coap_codec::{Code, ContentFormat, Message};
use coap_endpoint::response;

use crate::broker::{BrokerError, Qos};

/// The query parameters the gateway understands. Values are percent-decoded
/// UTF-8; for a key given twice the first value wins; entries without `=`
/// and unknown keys are ignored.
#[derive(Default, Clone, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) clientid: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) qos: Option<String>,
    pub(crate) retain: Option<String>,
    pub(crate) expiry: Option<String>,
}

impl std::fmt::Debug for Params {
    // Never print the password or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("clientid", &self.clientid)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl Params {
    /// Reads the Uri-Query options of `message`.
    pub(crate) fn parse(message: &Message) -> Result<Self, Failure> {
        let mut params = Params::default();
        for entry in message.uri_query() {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (entry.get(..eq), entry.get(eq + 1..));
            let (Some(key), Some(value)) = (key, value) else {
                continue;
            };
            let slot = match key {
                b"clientid" | b"c" => &mut params.clientid,
                b"username" | b"u" => &mut params.username,
                b"password" | b"p" => &mut params.password,
                b"token" | b"t" => &mut params.token,
                b"qos" | b"q" => &mut params.qos,
                b"retain" | b"r" => &mut params.retain,
                b"expiry" => &mut params.expiry,
                _ => continue,
            };
            if slot.is_some() {
                continue;
            }
            let decoded = percent_decode(value).map_err(|_| {
                Failure::BadRequest(
                    format!(
                        "query parameter {}: bad percent-encoding",
                        String::from_utf8_lossy(key)
                    )
                    .into(),
                )
            })?;
            let text = String::from_utf8(decoded.into_owned()).map_err(|_| {
                Failure::BadRequest(
                    format!(
                        "query parameter {}: not UTF-8",
                        String::from_utf8_lossy(key)
                    )
                    .into(),
                )
            })?;
            *slot = Some(text);
        }
        Ok(params)
    }

    /// The `qos` parameter, if given: 0, 1 or 2.
    pub(crate) fn qos(&self) -> Result<Option<Qos>, Failure> {
        match self.qos.as_deref() {
            None => Ok(None),
            Some(v) => v
                .parse::<u8>()
                .ok()
                .and_then(Qos::from_u8)
                .map(Some)
                .ok_or_else(|| Failure::BadRequest("qos must be 0, 1 or 2".into())),
        }
    }

    /// The `retain` parameter: `true`/`false` (also `1`/`0`); absent = false.
    pub(crate) fn retain(&self) -> Result<bool, Failure> {
        match self.retain.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(_) => Err(Failure::BadRequest("retain must be true or false".into())),
        }
    }

    /// The `expiry` parameter in seconds; absent or 0 = no expiry.
    pub(crate) fn expiry(&self) -> Result<Option<std::time::Duration>, Failure> {
        match self.expiry.as_deref() {
            None => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(0) => Ok(None),
                Ok(secs) => Ok(Some(std::time::Duration::from_secs(u64::from(secs)))),
                Err(_) => Err(Failure::BadRequest(
                    "expiry must be a number of seconds".into(),
                )),
            },
        }
    }
}

/// The topic (or filter) named by the Uri-Path segments after `ps`: joined
/// with `/`, then percent-decoded (`%2B` → `+`, `%23` → `#`, `%2F` → `/`).
/// An empty segment makes an empty level; no segment at all is an error.
pub(crate) fn topic_from_path<'a>(
    segments: impl Iterator<Item = &'a [u8]>,
) -> Result<String, Failure> {
    let mut joined: Vec<u8> = Vec::new();
    let mut count = 0usize;
    for segment in segments {
        if count > 0 {
            joined.push(b'/');
        }
        joined.extend_from_slice(segment);
        count += 1;
    }
    if count == 0 {
        return Err(Failure::BadRequest("missing topic after ps/".into()));
    }
    let decoded: Cow<'_, [u8]> = percent_decode(&joined)
        .map_err(|_| Failure::BadRequest("topic: bad percent-encoding".into()))?;
    let topic = String::from_utf8(decoded.into_owned())
        .map_err(|_| Failure::BadRequest("topic is not UTF-8".into()))?;
    if topic.is_empty() {
        return Err(Failure::BadRequest("missing topic after ps/".into()));
    }
    Ok(topic)
}

/// Why a request failed; [`Failure::response`] is the one place that turns
/// it into a CoAP response (code, short UTF-8 diagnostic, Content-Format 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 4.00.
    BadRequest(Cow<'static, str>),
    /// 4.01.
    Unauthorized(Cow<'static, str>),
    /// 4.04.
    NotFound(Cow<'static, str>),
    /// 4.05.
    MethodNotAllowed,
    /// 4.13.
    TooLarge { max: usize },
    /// 4.29 with Max-Age (repeated bad tokens).
    TooManyRequests { retry_after: u32 },
    /// 5.03 with Max-Age.
    Unavailable {
        reason: Cow<'static, str>,
        max_age: u32,
    },
    /// 5.00.
    Internal(Cow<'static, str>),
}

impl Failure {
    /// The response code.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::BadRequest(_) => Code::BAD_REQUEST,
            Self::Unauthorized(_) => Code::UNAUTHORIZED,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::MethodNotAllowed => Code::METHOD_NOT_ALLOWED,
            Self::TooLarge { .. } => Code::REQUEST_ENTITY_TOO_LARGE,
            Self::TooManyRequests { .. } => Code::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => Code::SERVICE_UNAVAILABLE,
            Self::Internal(_) => Code::INTERNAL_SERVER_ERROR,
        }
    }

    /// The diagnostic payload.
    pub(crate) fn diagnostic(&self) -> Cow<'_, str> {
        match self {
            Self::BadRequest(m) | Self::Unauthorized(m) | Self::NotFound(m) | Self::Internal(m) => {
                Cow::Borrowed(m.as_ref())
            }
            Self::MethodNotAllowed => Cow::Borrowed("method not allowed"),
            Self::TooLarge { max } => Cow::Owned(format!("payload larger than {max} bytes")),
            Self::TooManyRequests { .. } => Cow::Borrowed("too many bad tokens, retry later"),
            Self::Unavailable { reason, .. } => Cow::Borrowed(reason.as_ref()),
        }
    }

    /// The response message.
    pub(crate) fn response(&self) -> Message {
        let mut message = response(self.code())
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_payload(self.diagnostic().into_owned().into_bytes());
        match self {
            Self::TooManyRequests { retry_after } => {
                message = message.with_uint_option(
                    coap_endpoint::coap_codec::OptionNumber::MAX_AGE,
                    *retry_after,
                );
            }
            Self::Unavailable { max_age, .. } => {
                message = message
                    .with_uint_option(coap_endpoint::coap_codec::OptionNumber::MAX_AGE, *max_age);
            }
            _ => {}
        }
        message
    }

    /// The failure a broker error maps to (see the crate docs).
    pub(crate) fn from_broker(error: BrokerError, max_age: u32) -> Self {
        match error {
            BrokerError::Unavailable(reason) => Self::Unavailable {
                reason: format!("broker unavailable: {reason}").into(),
                max_age,
            },
            BrokerError::Down {
                reason,
                retry_after,
            } => Self::Unavailable {
                reason: format!("broker unavailable (reconnecting): {reason}").into(),
                max_age: retry_after_secs(retry_after),
            },
            BrokerError::NotAuthorized => Self::Unauthorized("not authorized by the broker".into()),
            BrokerError::TooLarge { max, .. } => Self::TooLarge { max },
            BrokerError::MissingClientId => Self::BadRequest("a clientid is required".into()),
            BrokerError::Limit(what) => Self::Unavailable {
                reason: format!("limit reached: {what}").into(),
                max_age,
            },
            other => Self::Internal(other.to_string().into()),
        }
    }
}

/// Whole seconds, rounded up, at least 1 (a Max-Age of 0 would tell the
/// device to retry at once, before anything changed).
fn retry_after_secs(d: std::time::Duration) -> u32 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use coap_endpoint::coap_codec::MessageType;

    use super::*;

    fn request(queries: &[&str]) -> Message {
        let mut m = Message::new(MessageType::Con, Code::POST, 1).with_uri_path("ps/a");
        for q in queries {
            m = m.with_uri_query(q);
        }
        m
    }

    #[test]
    fn long_and_short_names_are_decoded() {
        let p = Params::parse(&request(&[
            "c=dev%201",
            "u=alice",
            "p=s%26cret",
            "t=123",
            "q=1",
            "r=true",
            "expiry=60",
        ]))
        .unwrap();
        assert_eq!(p.clientid.as_deref(), Some("dev 1"));
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s&cret"));
        assert_eq!(p.token.as_deref(), Some("123"));
        assert_eq!(p.qos().unwrap(), Some(Qos::AtLeastOnce));
        assert!(p.retain().unwrap());
        assert_eq!(
            p.expiry().unwrap(),
            Some(std::time::Duration::from_secs(60))
        );
        let long = Params::parse(&request(&[
            "clientid=x",
            "username=y",
            "password=z",
            "token=9",
            "qos=2",
            "retain=false",
        ]))
        .unwrap();
        assert_eq!(long.clientid.as_deref(), Some("x"));
        assert_eq!(long.username.as_deref(), Some("y"));
        assert_eq!(long.password.as_deref(), Some("z"));
        assert_eq!(long.token.as_deref(), Some("9"));
        assert_eq!(long.qos().unwrap(), Some(Qos::ExactlyOnce));
        assert!(!long.retain().unwrap());
    }

    #[test]
    fn entries_without_equals_and_unknown_keys_are_ignored_first_value_wins() {
        let p = Params::parse(&request(&[
            "clientid", "foo=bar", "c=first", "c=second", "c=",
        ]))
        .unwrap();
        assert_eq!(p.clientid.as_deref(), Some("first"));
        let empty = Params::parse(&request(&["clientid", "qos"])).unwrap();
        assert_eq!(empty, Params::default());
    }

    #[test]
    fn bad_values_are_bad_requests() {
        for q in ["q=3", "q=x", "qos=-1"] {
            let p = Params::parse(&request(&[q])).unwrap();
            assert_eq!(p.qos().unwrap_err().code(), Code::BAD_REQUEST, "{q}");
        }
        let p = Params::parse(&request(&["r=yes"])).unwrap();
        assert_eq!(p.retain().unwrap_err().code(), Code::BAD_REQUEST);
        let p = Params::parse(&request(&["expiry=soon"])).unwrap();
        assert_eq!(p.expiry().unwrap_err().code(), Code::BAD_REQUEST);
        let p = Params::parse(&request(&["expiry=0"])).unwrap();
        assert_eq!(p.expiry().unwrap(), None);
        assert_eq!(
            Params::parse(&request(&["c=%zz"])).unwrap_err().code(),
            Code::BAD_REQUEST
        );
        assert_eq!(
            Params::parse(&request(&["c=%ff"])).unwrap_err().code(),
            Code::BAD_REQUEST
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let p = Params::parse(&request(&["p=hunter2", "t=4242"])).unwrap();
        let text = format!("{p:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("4242"),
            "{text}"
        );
    }

    fn topic(segments: &[&str]) -> Result<String, Failure> {
        topic_from_path(segments.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn topic_is_joined_then_decoded() {
        assert_eq!(topic(&["coap", "test"]).unwrap(), "coap/test");
        assert_eq!(topic(&["", "abc"]).unwrap(), "/abc");
        assert_eq!(topic(&["a", "", "b"]).unwrap(), "a//b");
        assert_eq!(topic(&["a%2Fb"]).unwrap(), "a/b");
        assert_eq!(topic(&["sensors", "%23"]).unwrap(), "sensors/#");
        assert_eq!(topic(&["a", "%2B", "c"]).unwrap(), "a/+/c");
        assert_eq!(topic(&["a", "+"]).unwrap(), "a/+");
        assert_eq!(topic(&[]).unwrap_err().code(), Code::BAD_REQUEST);
        assert_eq!(topic(&[""]).unwrap_err().code(), Code::BAD_REQUEST);
        assert_eq!(topic(&["a%"]).unwrap_err().code(), Code::BAD_REQUEST);
        assert_eq!(topic(&["%C3%28"]).unwrap_err().code(), Code::BAD_REQUEST);
    }

    #[test]
    fn failures_map_to_one_response_each() {
        let r = Failure::Unavailable {
            reason: "down".into(),
            max_age: 5,
        }
        .response();
        assert_eq!(r.code, Code::SERVICE_UNAVAILABLE);
        assert_eq!(r.max_age(), Some(5));
        assert_eq!(r.content_format(), Some(ContentFormat::TEXT_PLAIN));
        assert_eq!(&r.payload[..], b"down");
        assert_eq!(
            Failure::from_broker(BrokerError::NotAuthorized, 5).code(),
            Code::UNAUTHORIZED
        );
        assert_eq!(
            Failure::from_broker(BrokerError::TooLarge { size: 9, max: 8 }, 5).code(),
            Code::REQUEST_ENTITY_TOO_LARGE
        );
        assert_eq!(
            Failure::from_broker(BrokerError::MissingClientId, 5).code(),
            Code::BAD_REQUEST
        );
        assert_eq!(
            Failure::from_broker(BrokerError::Unavailable("x".into()), 7)
                .response()
                .max_age(),
            Some(7)
        );
        let down = |ms: u64| {
            Failure::from_broker(
                BrokerError::Down {
                    reason: "connection refused".into(),
                    retry_after: std::time::Duration::from_millis(ms),
                },
                5,
            )
            .response()
        };
        // Max-Age: seconds until the next reconnect attempt, rounded up,
        // at least 1; not the configured default.
        assert_eq!(down(0).max_age(), Some(1));
        assert_eq!(down(200).max_age(), Some(1));
        assert_eq!(down(1001).max_age(), Some(2));
        assert_eq!(down(5000).max_age(), Some(5));
        assert_eq!(down(0).code, Code::SERVICE_UNAVAILABLE);
        assert!(down(0).payload.starts_with(b"broker unavailable"));
        assert_eq!(
            Failure::TooManyRequests { retry_after: 3 }
                .response()
                .max_age(),
            Some(3)
        );
    }
}
