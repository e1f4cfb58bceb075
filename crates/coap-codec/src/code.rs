//! The 8-bit message code (RFC 7252 §3, §12.1): a 3-bit class and a 5-bit detail.

use std::fmt;

/// A CoAP message code: `class.detail`, e.g. `0.01` (GET) or `2.05` (Content).
///
/// A newtype over the raw byte so that unknown codes survive a round trip.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(u8);

impl Code {
    /// 0.00 — the empty message (RFC 7252 §4.1).
    pub const EMPTY: Code = Code::new(0, 0);

    // Methods: RFC 7252 §12.1.1 and RFC 8132.
    /// 0.01 GET.
    pub const GET: Code = Code::new(0, 1);
    /// 0.02 POST.
    pub const POST: Code = Code::new(0, 2);
    /// 0.03 PUT.
    pub const PUT: Code = Code::new(0, 3);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code::new(0, 4);
    /// 0.05 FETCH (RFC 8132).
    pub const FETCH: Code = Code::new(0, 5);
    /// 0.06 PATCH (RFC 8132).
    pub const PATCH: Code = Code::new(0, 6);
    /// 0.07 iPATCH (RFC 8132).
    pub const IPATCH: Code = Code::new(0, 7);

    // Success: RFC 7252 §12.1.2, RFC 7959.
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959 §2.9.1).
    pub const CONTINUE: Code = Code::new(2, 31);

    // Client errors: RFC 7252 §12.1.2, RFC 7959, RFC 8132, RFC 8516.
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    /// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.09 Conflict (RFC 8132).
    pub const CONFLICT: Code = Code::new(4, 9);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Code = Code::new(4, 12);
    /// 4.13 Request Entity Too Large (RFC 7252, RFC 7959 §2.9.3).
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    /// 4.22 Unprocessable Entity (RFC 8132).
    pub const UNPROCESSABLE_ENTITY: Code = Code::new(4, 22);
    /// 4.29 Too Many Requests (RFC 8516).
    pub const TOO_MANY_REQUESTS: Code = Code::new(4, 29);

    // Server errors: RFC 7252 §12.1.2, RFC 8768.
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    /// 5.02 Bad Gateway.
    pub const BAD_GATEWAY: Code = Code::new(5, 2);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.04 Gateway Timeout.
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code::new(5, 5);
    /// 5.08 Hop Limit Reached (RFC 8768).
    pub const HOP_LIMIT_REACHED: Code = Code::new(5, 8);

    // Signaling codes, CoAP over TCP only: RFC 8323 §5.
    /// 7.01 CSM (Capabilities and Settings Message).
    pub const CSM: Code = Code::new(7, 1);
    /// 7.02 Ping.
    pub const PING: Code = Code::new(7, 2);
    /// 7.03 Pong.
    pub const PONG: Code = Code::new(7, 3);
    /// 7.04 Release.
    pub const RELEASE: Code = Code::new(7, 4);
    /// 7.05 Abort.
    pub const ABORT: Code = Code::new(7, 5);

    /// Builds a code from its class (0–7) and detail (0–31); extra bits are masked off.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code(((class & 0x07) << 5) | (detail & 0x1f))
    }

    /// Wraps a raw code byte as read from the wire.
    pub const fn from_u8(raw: u8) -> Code {
        Code(raw)
    }

    /// The raw code byte as written on the wire.
    pub const fn to_u8(self) -> u8 {
        self.0
    }

    /// The class: the upper 3 bits (`c` in `c.dd`).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail: the lower 5 bits (`dd` in `c.dd`).
    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// True for 0.00, the empty message.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True for class 0 with a non-zero detail (any method code, known or not).
    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    /// True for the response classes 2, 4 and 5.
    pub const fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    /// True for class 7, the RFC 8323 signaling codes (only valid over TCP).
    pub const fn is_signaling(self) -> bool {
        self.class() == 7
    }

    /// True for the reserved classes 1, 3 and 6 (RFC 7252 §12.1).
    ///
    /// Class 7 is reserved in UDP but carries signaling over TCP, so it is
    /// not included here; the UDP parser rejects it separately.
    pub const fn is_reserved_class(self) -> bool {
        matches!(self.class(), 1 | 3 | 6)
    }

    /// True for the method codes this crate names (GET … iPATCH).
    pub const fn is_known_method(self) -> bool {
        self.class() == 0 && self.detail() >= 1 && self.detail() <= 7
    }

    /// The registered name of the code, e.g. `"Content"` for 2.05.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Code::EMPTY => "Empty",
            Code::GET => "GET",
            Code::POST => "POST",
            Code::PUT => "PUT",
            Code::DELETE => "DELETE",
            Code::FETCH => "FETCH",
            Code::PATCH => "PATCH",
            Code::IPATCH => "iPATCH",
            Code::CREATED => "Created",
            Code::DELETED => "Deleted",
            Code::VALID => "Valid",
            Code::CHANGED => "Changed",
            Code::CONTENT => "Content",
            Code::CONTINUE => "Continue",
            Code::BAD_REQUEST => "Bad Request",
            Code::UNAUTHORIZED => "Unauthorized",
            Code::BAD_OPTION => "Bad Option",
            Code::FORBIDDEN => "Forbidden",
            Code::NOT_FOUND => "Not Found",
            Code::METHOD_NOT_ALLOWED => "Method Not Allowed",
            Code::NOT_ACCEPTABLE => "Not Acceptable",
            Code::REQUEST_ENTITY_INCOMPLETE => "Request Entity Incomplete",
            Code::CONFLICT => "Conflict",
            Code::PRECONDITION_FAILED => "Precondition Failed",
            Code::REQUEST_ENTITY_TOO_LARGE => "Request Entity Too Large",
            Code::UNSUPPORTED_CONTENT_FORMAT => "Unsupported Content-Format",
            Code::UNPROCESSABLE_ENTITY => "Unprocessable Entity",
            Code::TOO_MANY_REQUESTS => "Too Many Requests",
            Code::INTERNAL_SERVER_ERROR => "Internal Server Error",
            Code::NOT_IMPLEMENTED => "Not Implemented",
            Code::BAD_GATEWAY => "Bad Gateway",
            Code::SERVICE_UNAVAILABLE => "Service Unavailable",
            Code::GATEWAY_TIMEOUT => "Gateway Timeout",
            Code::PROXYING_NOT_SUPPORTED => "Proxying Not Supported",
            Code::HOP_LIMIT_REACHED => "Hop Limit Reached",
            Code::CSM => "CSM",
            Code::PING => "Ping",
            Code::PONG => "Pong",
            Code::RELEASE => "Release",
            Code::ABORT => "Abort",
            _ => return None,
        })
    }
}

impl From<u8> for Code {
    fn from(raw: u8) -> Code {
        Code(raw)
    }
}

impl From<Code> for u8 {
    fn from(code: Code) -> u8 {
        code.0
    }
}

/// Formats as `c.dd`, e.g. `2.05`.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Code({self} {name})"),
            None => write!(f, "Code({self})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_class_dot_two_digit_detail() {
        assert_eq!(Code::CONTENT.to_string(), "2.05");
        assert_eq!(Code::CONTINUE.to_string(), "2.31");
        assert_eq!(Code::GET.to_string(), "0.01");
        assert_eq!(Code::REQUEST_ENTITY_TOO_LARGE.to_string(), "4.13");
        assert_eq!(Code::from_u8(0xff).to_string(), "7.31");
    }

    #[test]
    fn raw_values_match_rfc_7252_section_12_1() {
        assert_eq!(Code::GET.to_u8(), 0x01);
        assert_eq!(Code::CREATED.to_u8(), 0x41);
        assert_eq!(Code::CONTENT.to_u8(), 0x45);
        assert_eq!(Code::BAD_OPTION.to_u8(), 0x82);
        assert_eq!(Code::PROXYING_NOT_SUPPORTED.to_u8(), 0xa5);
        assert_eq!(Code::IPATCH.to_u8(), 0x07);
    }

    #[test]
    fn classification() {
        assert!(Code::EMPTY.is_empty());
        assert!(!Code::EMPTY.is_request());
        assert!(Code::GET.is_request() && !Code::GET.is_response());
        assert!(Code::from_u8(0x1f).is_request());
        assert!(!Code::from_u8(0x1f).is_known_method());
        assert!(Code::NOT_FOUND.is_response());
        assert!(Code::new(1, 0).is_reserved_class());
        assert!(Code::new(6, 3).is_reserved_class());
        assert!(Code::PING.is_signaling());
        assert_eq!(Code::new(4, 4), Code::NOT_FOUND);
        assert_eq!(Code::NOT_FOUND.class(), 4);
        assert_eq!(Code::NOT_FOUND.detail(), 4);
        assert_eq!(Code::CONTENT.name(), Some("Content"));
        assert_eq!(Code::new(2, 9).name(), None);
    }
}
