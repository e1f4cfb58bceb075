//! The borrowed, zero-allocation view of a UDP datagram (RFC 7252 §3).

use crate::accessors::typed_option_accessors;
use crate::code::Code;
use crate::error::ParseError;
use crate::header::{COAP_VERSION, Header, MessageType};
use crate::option_number::OptionNumber;
use crate::options::{OptionValues, Options};
use crate::settings::CodecSettings;
use crate::uri::{QueryParam, find_query_param};
use crate::wire;

/// A parsed CoAP message borrowing the datagram it came from.
///
/// Parsing validates the whole message (header, token, every option, payload
/// marker) but copies nothing: token, option values and payload are slices
/// of the input, and options are decoded again lazily when iterated. This
/// is the server hot path; convert with [`MessageRef::to_message`] to keep
/// a message beyond the datagram buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef<'a> {
    mtype: MessageType,
    code: Code,
    message_id: u16,
    tkl: u8,
    token: &'a [u8],
    options: &'a [u8],
    option_count: u32,
    payload: &'a [u8],
}

impl<'a> MessageRef<'a> {
    /// Parses a datagram with the default settings (tokens up to 8 bytes).
    pub fn parse(datagram: &'a [u8]) -> Result<MessageRef<'a>, ParseError> {
        Self::parse_with(datagram, &CodecSettings::DEFAULT)
    }

    /// Parses a datagram with explicit settings (e.g. RFC 8974 extended tokens).
    ///
    /// The checks, in order: 4-byte header present, version 1, code class
    /// not reserved, empty message really empty, token length allowed and
    /// token present, every option well-formed, payload marker followed by
    /// a payload.
    pub fn parse_with(
        datagram: &'a [u8],
        settings: &CodecSettings,
    ) -> Result<MessageRef<'a>, ParseError> {
        let end = datagram.len();
        let (rest, (first, code, message_id)) =
            wire::udp_header(datagram).map_err(|e| wire::flatten(e).into_parse_error(end))?;
        let version = first >> 6;
        if version != COAP_VERSION {
            return Err(ParseError::UnsupportedVersion { version });
        }
        let mtype = MessageType::from_bits(first >> 4);
        let tkl = first & 0x0f;
        let code = Code::from_u8(code);
        // RFC 7252 §3: classes 1, 3, 6 and 7 are reserved; class 7 is only
        // meaningful over TCP (RFC 8323 signaling).
        if code.is_reserved_class() || code.is_signaling() {
            return Err(ParseError::ReservedCodeClass { code });
        }
        // RFC 7252 §4.1: "An Empty message has the Code field set to 0.00.
        // The Token Length field MUST be set to 0 and bytes of data MUST NOT
        // be present after the Message ID field."
        if code.is_empty() {
            if tkl != 0 || !rest.is_empty() {
                return Err(ParseError::NonEmptyEmptyMessage { offset: 4 });
            }
            return Ok(MessageRef {
                mtype,
                code,
                message_id,
                tkl,
                token: &[],
                options: &[],
                option_count: 0,
                payload: &[],
            });
        }
        let (rest, token) = parse_token(tkl, rest, settings, end)?;
        let body = wire::body(rest).map_err(|e| e.into_parse_error(end))?;
        Ok(MessageRef {
            mtype,
            code,
            message_id,
            tkl,
            token,
            options: body.options,
            option_count: body.option_count,
            payload: body.payload,
        })
    }

    /// The header fields.
    pub fn header(&self) -> Header {
        Header {
            mtype: self.mtype,
            tkl: self.tkl,
            code: self.code,
            message_id: self.message_id,
        }
    }

    /// Message type.
    pub fn mtype(&self) -> MessageType {
        self.mtype
    }

    /// Message code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Message id.
    pub fn message_id(&self) -> u16 {
        self.message_id
    }

    /// Token (0–8 bytes, or longer with RFC 8974 enabled).
    pub fn token(&self) -> &'a [u8] {
        self.token
    }

    /// All options in wire order.
    pub fn options(&self) -> Options<'a> {
        Options::new(self.options, self.option_count)
    }

    /// Number of options.
    pub fn option_count(&self) -> usize {
        self.option_count as usize
    }

    /// The first value of option `number`, if present.
    pub fn option(&self, number: OptionNumber) -> Option<&'a [u8]> {
        self.options_of(number).next()
    }

    /// All values of option `number`, in order.
    pub fn options_of(&self, number: OptionNumber) -> OptionValues<'a> {
        OptionValues::new(self.options(), number)
    }

    /// The Uri-Path segments, in order (not percent-encoded).
    pub fn uri_path(&self) -> OptionValues<'a> {
        self.options_of(OptionNumber::URI_PATH)
    }

    /// The Uri-Query entries, in order.
    pub fn uri_query(&self) -> OptionValues<'a> {
        self.options_of(OptionNumber::URI_QUERY)
    }

    /// The first Uri-Query entry whose key (the part before the first `=`,
    /// or the whole entry when it has no `=`) equals `key`.
    pub fn query_param(&self, key: &str) -> Option<QueryParam<'a>> {
        find_query_param(self.uri_query(), key)
    }

    /// The payload (empty when there is none).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The raw options region (for re-encoding without decoding).
    pub fn raw_options(&self) -> &'a [u8] {
        self.options
    }

    typed_option_accessors!();
}

/// Reads the token length (RFC 7252 §3, RFC 8974 §2.1) and the token.
pub(crate) fn parse_token<'a>(
    tkl: u8,
    input: &'a [u8],
    settings: &CodecSettings,
    end: usize,
) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    // RFC 7252 §3: "Lengths 9-15 are reserved, MUST NOT be sent, and MUST
    // be processed as a message format error." RFC 8974 gives 9–14 a
    // meaning; 15 stays reserved.
    if tkl == 15
        || (usize::from(tkl) > CodecSettings::RFC7252_MAX_TOKEN_LEN && !settings.extended_tokens())
    {
        return Err(ParseError::InvalidTokenLength { tkl });
    }
    let (rest, len) =
        wire::token_length(tkl, input).map_err(|e| wire::flatten(e).into_parse_error(end))?;
    if len > settings.max_token_len() {
        return Err(ParseError::TokenTooLong {
            len,
            max: settings.max_token_len(),
        });
    }
    wire::token(len, rest).map_err(|e| wire::flatten(e).into_parse_error(end))
}
