//! Request-level checks on a parsed message (RFC 7252 §5.4.1, §5.4.5,
//! §5.10.8.2, §5.8; RFC 7959 §2.2). A message can be well-formed and still
//! be a request the server must refuse with a 4.xx response; these checks
//! name the reason and the option so the diagnostic payload can say which.

use crate::code::Code;
use crate::message_ref::MessageRef;
use crate::option_number::OptionNumber;
use crate::option_value::{Block, length_in_range};
use crate::options::OptionRef;

/// Why a well-formed request must be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The message is not a request (class 0 with a non-zero detail).
    #[error("{code} is not a request code")]
    NotARequest {
        /// The code found.
        code: Code,
    },
    /// Method code not known to this server (e.g. 0.31). Response: 4.05.
    #[error("unknown method {code}")]
    UnknownMethod {
        /// The code found.
        code: Code,
    },
    /// A critical option the server does not recognise (RFC 7252 §5.4.1). Response: 4.02.
    #[error("unrecognised critical option {number}")]
    UnrecognizedCriticalOption {
        /// The option.
        number: OptionNumber,
    },
    /// A non-repeatable critical option occurs more than once (RFC 7252 §5.4.5). Response: 4.02.
    #[error("critical option {number} is repeated")]
    RepeatedCriticalOption {
        /// The option.
        number: OptionNumber,
    },
    /// If-None-Match with a non-empty value (RFC 7252 §5.10.8.2: it is empty). Response: 4.02.
    #[error("If-None-Match has a {len}-byte value; it must be empty")]
    IfNoneMatchWithValue {
        /// The value length.
        len: usize,
    },
    /// Block1/Block2 value longer than 3 bytes (RFC 7959 §2.2; a critical
    /// option of out-of-range length is unrecognised, RFC 7252 §5.4.3). Response: 4.02.
    #[error("{number} value is {len} bytes, longer than 3")]
    BlockValueTooLong {
        /// Block1 or Block2.
        number: OptionNumber,
        /// The value length.
        len: usize,
    },
    /// Any other recognised critical option whose length is out of its
    /// registered range (RFC 7252 §5.4.3). Response: 4.02.
    #[error("{number} value length {len} is out of range")]
    CriticalOptionLength {
        /// The option.
        number: OptionNumber,
        /// The value length.
        len: usize,
    },
    /// Block1/Block2 with SZX 7 in a request (RFC 7959 §2.2). Response: 4.00.
    #[error("{number} uses the reserved block size exponent 7")]
    ReservedBlockSize {
        /// Block1 or Block2.
        number: OptionNumber,
    },
}

impl RequestError {
    /// The response code RFC 7252 / RFC 7959 prescribe for this error.
    pub fn response_code(&self) -> Code {
        match self {
            RequestError::NotARequest { .. } => Code::BAD_REQUEST,
            RequestError::UnknownMethod { .. } => Code::METHOD_NOT_ALLOWED,
            RequestError::UnrecognizedCriticalOption { .. }
            | RequestError::RepeatedCriticalOption { .. }
            | RequestError::IfNoneMatchWithValue { .. }
            | RequestError::BlockValueTooLong { .. }
            | RequestError::CriticalOptionLength { .. } => Code::BAD_OPTION,
            RequestError::ReservedBlockSize { .. } => Code::BAD_REQUEST,
        }
    }

    /// The option the error is about, if any (for the diagnostic payload).
    pub fn option(&self) -> Option<OptionNumber> {
        match *self {
            RequestError::UnrecognizedCriticalOption { number }
            | RequestError::RepeatedCriticalOption { number }
            | RequestError::BlockValueTooLong { number, .. }
            | RequestError::CriticalOptionLength { number, .. }
            | RequestError::ReservedBlockSize { number } => Some(number),
            RequestError::IfNoneMatchWithValue { .. } => Some(OptionNumber::IF_NONE_MATCH),
            RequestError::NotARequest { .. } | RequestError::UnknownMethod { .. } => None,
        }
    }
}

/// The critical options a server built on this crate recognises by default:
/// every option with a definition here except OSCORE (9), Q-Block1 (19) and
/// Q-Block2 (31), which need protocol support the message layer lacks.
pub fn recognised_by_default(number: OptionNumber) -> bool {
    number.is_known()
        && number != OptionNumber::OSCORE
        && number != OptionNumber::Q_BLOCK1
        && number != OptionNumber::Q_BLOCK2
}

/// Validates a request with [`recognised_by_default`]. See
/// [`validate_request_with`].
pub fn validate_request(msg: &MessageRef<'_>) -> Result<(), RequestError> {
    validate_request_with(msg, recognised_by_default)
}

/// Validates a request:
///
/// 1. the code is a known method (else 4.05);
/// 2. every critical option is recognised (`is_recognised`), not repeated
///    unless repeatable, and within its registered length — with the
///    specific errors for If-None-Match with a value and Block1/Block2
///    longer than 3 bytes (4.02);
/// 3. Block1/Block2 do not use SZX 7 (4.00).
///
/// Elective options are never an error: unknown, repeated or malformed
/// elective options are to be ignored (RFC 7252 §5.4.1, §5.4.5).
pub fn validate_request_with(
    msg: &MessageRef<'_>,
    is_recognised: impl Fn(OptionNumber) -> bool,
) -> Result<(), RequestError> {
    validate_parts(msg.code(), msg.options(), is_recognised)
}

pub(crate) fn validate_parts<'a>(
    code: Code,
    options: impl Iterator<Item = OptionRef<'a>>,
    is_recognised: impl Fn(OptionNumber) -> bool,
) -> Result<(), RequestError> {
    if !code.is_request() {
        return Err(RequestError::NotARequest { code });
    }
    if !code.is_known_method() {
        return Err(RequestError::UnknownMethod { code });
    }
    let mut previous: Option<OptionNumber> = None;
    let mut block_szx_error: Option<RequestError> = None;
    for opt in options {
        let number = opt.number;
        let repeated = previous == Some(number);
        previous = Some(number);
        if !number.is_critical() {
            continue;
        }
        if !is_recognised(number) {
            return Err(RequestError::UnrecognizedCriticalOption { number });
        }
        if repeated && number.is_repeatable() != Some(true) {
            return Err(RequestError::RepeatedCriticalOption { number });
        }
        let len = opt.value.len();
        if number == OptionNumber::IF_NONE_MATCH && len != 0 {
            return Err(RequestError::IfNoneMatchWithValue { len });
        }
        if number == OptionNumber::BLOCK1 || number == OptionNumber::BLOCK2 {
            match Block::decode(opt.value) {
                Err(_) => return Err(RequestError::BlockValueTooLong { number, len }),
                Ok(block) if block.szx == Block::SZX_RESERVED => {
                    // 4.02 problems anywhere in the message take precedence
                    // over this 4.00, so keep scanning.
                    block_szx_error.get_or_insert(RequestError::ReservedBlockSize { number });
                }
                Ok(_) => {}
            }
            continue;
        }
        if !length_in_range(number, len) {
            return Err(RequestError::CriticalOptionLength { number, len });
        }
    }
    match block_szx_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
