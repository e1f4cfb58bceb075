//! Request ids of request-response commands.
//!
//! The device echoes the request id in its command response
//! (`cr/{req-id}`). It carries the command's `correlation_id` and `reply_to`
//! itself, so the response can be routed by whichever adapter instance the
//! device happens to reach, without shared state.
//!
//! Format: base64url without padding of
//! `[version = 1][len(correlation_id): u8][correlation_id][reply_to]`, at
//! most [`MAX_REQUEST_ID_LEN`] characters, so it fits a CoAP Uri-Path
//! segment and is URL-safe.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Longest request id, in bytes (characters).
pub const MAX_REQUEST_ID_LEN: usize = 200;

const VERSION: u8 = 1;

/// Why a request id cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestIdError {
    /// The correlation id or reply-to is empty.
    #[error("correlation id and reply-to must not be empty")]
    Empty,
    /// The encoded id would exceed [`MAX_REQUEST_ID_LEN`], or a request id
    /// presented by a device does.
    #[error("request id longer than {MAX_REQUEST_ID_LEN} bytes")]
    TooLong,
    /// A presented request id is not one this adapter made.
    #[error("malformed request id")]
    Malformed,
}

/// The routing information of a request-response command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// The command's `correlation_id`.
    pub correlation_id: String,
    /// The command's `reply_to` (routing key of the response).
    pub reply_to: String,
}

impl RequestId {
    /// Encodes into the opaque, URL-safe form sent to the device.
    pub fn encode(&self) -> Result<String, RequestIdError> {
        if self.correlation_id.is_empty() || self.reply_to.is_empty() {
            return Err(RequestIdError::Empty);
        }
        let corr_len =
            u8::try_from(self.correlation_id.len()).map_err(|_| RequestIdError::TooLong)?;
        let raw_len = 2 + self.correlation_id.len() + self.reply_to.len();
        // base64 without padding: 4 characters per 3 bytes, rounded up.
        if (raw_len * 4).div_ceil(3) > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong);
        }
        let mut raw = Vec::with_capacity(raw_len);
        raw.push(VERSION);
        raw.push(corr_len);
        raw.extend_from_slice(self.correlation_id.as_bytes());
        raw.extend_from_slice(self.reply_to.as_bytes());
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Decodes a request id presented by a device.
    pub fn decode(text: &str) -> Result<Self, RequestIdError> {
        if text.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| RequestIdError::Malformed)?;
        let [version, corr_len, rest @ ..] = raw.as_slice() else {
            return Err(RequestIdError::Malformed);
        };
        if *version != VERSION {
            return Err(RequestIdError::Malformed);
        }
        let (corr, reply_to) = rest
            .split_at_checked(usize::from(*corr_len))
            .ok_or(RequestIdError::Malformed)?;
        if corr.is_empty() || reply_to.is_empty() {
            return Err(RequestIdError::Malformed);
        }
        Ok(Self {
            correlation_id: String::from_utf8(corr.to_vec())
                .map_err(|_| RequestIdError::Malformed)?,
            reply_to: String::from_utf8(reply_to.to_vec())
                .map_err(|_| RequestIdError::Malformed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: &str, r: &str) -> RequestId {
        RequestId {
            correlation_id: c.into(),
            reply_to: r.into(),
        }
    }

    #[test]
    fn round_trip() {
        for rid in [
            id("1", "r"),
            id("cmd-4711-0001", "command_response/DEFAULT_TENANT/app-1"),
            id("ünïcødé/?&=#", "reply to with spaces"),
        ] {
            let text = rid.encode().unwrap();
            assert!(text.len() <= MAX_REQUEST_ID_LEN);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{text}"
            );
            assert_eq!(RequestId::decode(&text).unwrap(), rid);
        }
    }

    #[test]
    fn longest_fitting_and_too_long() {
        // 150 raw bytes encode to exactly 200 characters.
        let fits = id(&"c".repeat(48), &"r".repeat(100));
        assert_eq!(fits.encode().unwrap().len(), 200);
        assert_eq!(
            id(&"c".repeat(48), &"r".repeat(101)).encode(),
            Err(RequestIdError::TooLong)
        );
        assert_eq!(
            id(&"c".repeat(256), "r").encode(),
            Err(RequestIdError::TooLong)
        );
        assert_eq!(id("", "r").encode(), Err(RequestIdError::Empty));
        assert_eq!(id("c", "").encode(), Err(RequestIdError::Empty));
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trip(c in "\\PC{1,60}", r in "\\PC{1,60}") {
            let rid = id(&c, &r);
            match rid.encode() {
                Ok(text) => {
                    proptest::prop_assert!(text.len() <= MAX_REQUEST_ID_LEN);
                    proptest::prop_assert_eq!(RequestId::decode(&text), Ok(rid));
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e, RequestIdError::TooLong);
                    proptest::prop_assert!(((2 + c.len() + r.len()) * 4).div_ceil(3) > MAX_REQUEST_ID_LEN);
                }
            }
        }

        #[test]
        fn decode_never_panics(text in "\\PC{0,250}") {
            let _ = RequestId::decode(&text);
        }

        #[test]
        fn decode_of_arbitrary_bytes_is_safe(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let text = URL_SAFE_NO_PAD.encode(&raw);
            if let Ok(rid) = RequestId::decode(&text) {
                // Whatever decodes re-encodes to the same text.
                proptest::prop_assert_eq!(rid.encode(), Ok(text));
            }
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            RequestId::decode(&"A".repeat(201)),
            Err(RequestIdError::TooLong)
        );
        let good = id("corr", "reply").encode().unwrap();
        for bad in [
            String::new(),
            "!!!".into(),
            format!("{good}="),
            // version 2
            URL_SAFE_NO_PAD.encode([2, 1, b'c', b'r']),
            // length beyond the end
            URL_SAFE_NO_PAD.encode([1, 9, b'c', b'r']),
            // empty reply-to / correlation id
            URL_SAFE_NO_PAD.encode([1, 1, b'c']),
            URL_SAFE_NO_PAD.encode([1, 0, b'r']),
            // not UTF-8
            URL_SAFE_NO_PAD.encode([1, 1, 0xff, b'r']),
            URL_SAFE_NO_PAD.encode([1]),
        ] {
            assert_eq!(
                RequestId::decode(&bad),
                Err(RequestIdError::Malformed),
                "{bad:?}"
            );
        }
    }
}
