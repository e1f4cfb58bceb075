//! Errors of parsing and encoding. Each row of the malformed-input table in
//! the spec has its own [`ParseError`] variant, so the message layer picks
//! its wire reaction (RST / drop) from the variant alone.

use crate::code::Code;
use crate::option_number::OptionNumber;

/// Which part of a message was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessagePart {
    /// The 4-byte UDP header (or the 1-byte TCP Len/TKL byte).
    Header,
    /// An RFC 8974 extended token length, or an RFC 8323 extended length.
    ExtendedLength,
    /// The RFC 8323 code byte.
    Code,
    /// The token bytes.
    Token,
    /// An option's extended delta or extended length bytes.
    OptionHeader,
    /// An option's value bytes.
    OptionValue,
    /// An RFC 8323 frame body (options and payload) shorter than its Len says.
    FrameBody,
}

impl std::fmt::Display for MessagePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessagePart::Header => "header",
            MessagePart::ExtendedLength => "extended length",
            MessagePart::Code => "code",
            MessagePart::Token => "token",
            MessagePart::OptionHeader => "option header",
            MessagePart::OptionValue => "option value",
            MessagePart::FrameBody => "frame body",
        })
    }
}

/// A message that is not well-formed (RFC 7252 §3, §4.2, §4.3).
///
/// `offset` is the byte position in the parsed input where the fault was
/// found. After any error other than [`ParseError::Truncated`] with
/// `part: Header` and [`ParseError::UnsupportedVersion`], the 4-byte header
/// is intact and [`crate::peek_header`] returns the type and message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Version field is not 1. Message layer: drop silently.
    #[error("unsupported CoAP version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// TKL 9–15 without RFC 8974, or TKL 15 with it. Message layer: CON → RST, NON → drop.
    #[error("reserved token length nibble {tkl}")]
    InvalidTokenLength {
        /// The TKL nibble found.
        tkl: u8,
    },
    /// Extended token longer than the configured maximum. Message layer: as `InvalidTokenLength`.
    #[error("token of {len} bytes exceeds the limit of {max}")]
    TokenTooLong {
        /// Token length announced.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Code class 1, 3, 6 or 7 (7 only over UDP). Message layer: CON → RST, NON → drop.
    #[error("reserved code class in {code}")]
    ReservedCodeClass {
        /// The code found.
        code: Code,
    },
    /// 0.00 with a token, options or payload (RFC 7252 §4.1). Message layer: RST.
    #[error("empty message (0.00) with token, options or payload at byte {offset}")]
    NonEmptyEmptyMessage {
        /// Offset of the first byte after the header.
        offset: usize,
    },
    /// Payload marker 0xFF followed by nothing (RFC 7252 §3). Message layer: CON → RST, NON → drop.
    #[error("payload marker at byte {offset} is followed by no payload")]
    EmptyPayload {
        /// Offset of the 0xFF marker.
        offset: usize,
    },
    /// Option delta nibble 15 that is not the payload marker. Message layer: CON → RST, NON → drop.
    #[error("option at byte {offset} has the reserved delta nibble 15")]
    ReservedOptionDelta {
        /// Offset of the option's first byte.
        offset: usize,
    },
    /// Option length nibble 15. Message layer: CON → RST, NON → drop.
    #[error("option at byte {offset} has the reserved length nibble 15")]
    ReservedOptionLength {
        /// Offset of the option's first byte.
        offset: usize,
    },
    /// The input ends inside the named part. Message layer: CON → RST, NON → drop
    /// (drop when `part` is `Header`: there is no message id to answer).
    #[error("input ends inside the {part} at byte {offset}")]
    Truncated {
        /// What was cut short.
        part: MessagePart,
        /// Offset where the cut-short part starts.
        offset: usize,
    },
    /// Option number beyond 65535 after adding the delta. Message layer: as a format error (RST / drop).
    #[error("option at byte {offset} has a number above 65535")]
    OptionNumberOverflow {
        /// Offset of the option's first byte.
        offset: usize,
    },
    /// RFC 8323: the frame's Len field exceeds the configured maximum.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLong {
        /// Announced body length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
}

impl ParseError {
    /// The byte offset of the fault, where the variant carries one.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            ParseError::NonEmptyEmptyMessage { offset }
            | ParseError::EmptyPayload { offset }
            | ParseError::ReservedOptionDelta { offset }
            | ParseError::ReservedOptionLength { offset }
            | ParseError::Truncated { offset, .. }
            | ParseError::OptionNumberOverflow { offset } => Some(offset),
            ParseError::UnsupportedVersion { .. } => Some(0),
            ParseError::InvalidTokenLength { .. } | ParseError::ReservedCodeClass { .. } => Some(0),
            ParseError::TokenTooLong { .. } | ParseError::FrameTooLong { .. } => None,
        }
    }
}

/// A message that cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Token longer than 8 bytes without RFC 8974, or longer than 65804 with it.
    #[error("token of {len} bytes is longer than the {max} bytes allowed")]
    TokenTooLong {
        /// Token length.
        len: usize,
        /// Largest allowed length under the settings.
        max: usize,
    },
    /// An option value longer than its registered format allows, or longer
    /// than the wire format can express (65804 bytes).
    #[error("value of {number} is {len} bytes, longer than the {max} allowed")]
    OptionValueTooLong {
        /// The option.
        number: OptionNumber,
        /// Value length.
        len: usize,
        /// Largest allowed length.
        max: usize,
    },
    /// 0.00 with a token, options or payload.
    #[error("an empty message (0.00) cannot carry a token, options or payload")]
    NonEmptyEmptyMessage,
    /// A code of a reserved class (or class 7 over UDP).
    #[error("code {code} has a reserved class")]
    ReservedCodeClass {
        /// The code.
        code: Code,
    },
    /// The destination buffer has less room than the encoded message needs.
    #[error("buffer has room for {available} bytes, message needs {needed}")]
    BufferTooSmall {
        /// Encoded length.
        needed: usize,
        /// `BufMut::remaining_mut()` of the destination.
        available: usize,
    },
}
