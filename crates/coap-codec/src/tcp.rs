//! RFC 8323 §3 framing for CoAP over TCP/TLS/WebSocket-less streams:
//!
//! ```text
//!  0   1   2   3   4   5   6   7
//! +---------------+---------------+
//! |      Len      |      TKL      |  Extended Length (0/1/2/4 bytes)
//! +---------------+---------------+
//! |     Code      |  [Ext. TKL]  Token (TKL bytes) ...
//! |  Options (if any) ...  |1 1 1 1 1 1 1 1|  Payload (if any) ...
//! ```
//!
//! `Len` counts the options, the payload marker and the payload (not the
//! token). There is no message type and no message id.

use bytes::{BufMut, Bytes, BytesMut};

use crate::code::Code;
use crate::encode::{BufSink, Extended, extended_len_bytes, token_length_fields};
use crate::error::{EncodeError, MessagePart, ParseError};
use crate::header::MessageType;
use crate::message::Message;
use crate::message_ref::parse_token;
use crate::option_number::OptionNumber;
use crate::options::{OptionValues, Options};
use crate::settings::CodecSettings;
use crate::wire;

/// Default upper bound on a frame's Len (options + payload) accepted by
/// [`TcpFrameRef::parse`]: 64 KiB. RFC 8323 §5.3.1's default
/// Max-Message-Size is 1152; a listener can pass its own limit.
pub const DEFAULT_MAX_FRAME_BODY: usize = 64 * 1024;

/// A borrowed RFC 8323 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFrameRef<'a> {
    code: Code,
    token: &'a [u8],
    options: &'a [u8],
    option_count: u32,
    payload: &'a [u8],
}

impl<'a> TcpFrameRef<'a> {
    /// Parses one frame from the start of `input` with default settings and
    /// [`DEFAULT_MAX_FRAME_BODY`]; returns it and the number of bytes it
    /// occupies. Bytes after the frame are left alone (the next frame).
    pub fn parse(input: &'a [u8]) -> Result<(TcpFrameRef<'a>, usize), ParseError> {
        Self::parse_with(input, &CodecSettings::DEFAULT, DEFAULT_MAX_FRAME_BODY)
    }

    /// Parses one frame with explicit settings and body limit.
    pub fn parse_with(
        input: &'a [u8],
        settings: &CodecSettings,
        max_body: usize,
    ) -> Result<(TcpFrameRef<'a>, usize), ParseError> {
        let end = input.len();
        let err = |e| wire::flatten(e).into_parse_error(end);
        let (rest, first) = wire::byte(MessagePart::Header, input).map_err(err)?;
        let len_nibble = first >> 4;
        let tkl = first & 0x0f;
        let (rest, body_len) = wire::frame_length(len_nibble, rest).map_err(err)?;
        if body_len > max_body as u64 {
            return Err(ParseError::FrameTooLong {
                len: body_len,
                max: max_body,
            });
        }
        let (rest, code) = wire::byte(MessagePart::Code, rest).map_err(err)?;
        let code = Code::from_u8(code);
        if code.is_reserved_class() {
            return Err(ParseError::ReservedCodeClass { code });
        }
        let (rest, token) = parse_token(tkl, rest, settings, end)?;
        let body_start = end - rest.len();
        let body_len = body_len as usize; // bounded by max_body above
        let Some(body) = rest.get(..body_len) else {
            return Err(ParseError::Truncated {
                part: MessagePart::FrameBody,
                offset: body_start,
            });
        };
        let parsed = wire::body(body).map_err(|e| e.into_parse_error(body_start + body_len))?;
        Ok((
            TcpFrameRef {
                code,
                token,
                options: parsed.options,
                option_count: parsed.option_count,
                payload: parsed.payload,
            },
            body_start + body_len,
        ))
    }

    /// Message code (class 7 are the signaling codes).
    pub fn code(&self) -> Code {
        self.code
    }

    /// Token.
    pub fn token(&self) -> &'a [u8] {
        self.token
    }

    /// All options in wire order.
    pub fn options(&self) -> Options<'a> {
        Options::new(self.options, self.option_count)
    }

    /// The first value of option `number`.
    pub fn option(&self, number: OptionNumber) -> Option<&'a [u8]> {
        self.options_of(number).next()
    }

    /// All values of option `number`.
    pub fn options_of(&self, number: OptionNumber) -> OptionValues<'a> {
        OptionValues::new(self.options(), number)
    }

    /// Payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Copies into an owned [`Message`] (type CON and message id 0, which
    /// TCP does not carry).
    pub fn to_message(&self) -> Message {
        let mut msg = Message::new(MessageType::Con, self.code, 0)
            .with_token(Bytes::copy_from_slice(self.token))
            .with_payload(Bytes::copy_from_slice(self.payload));
        for o in self.options() {
            msg.add_option(o.number, Bytes::copy_from_slice(o.value));
        }
        msg
    }
}

/// How many bytes the frame starting at `input` occupies in total, once
/// enough of its header has arrived to tell (`None` = read more first).
/// Lets a stream reader wait for a whole frame before parsing it.
pub fn tcp_frame_len(input: &[u8]) -> Option<u64> {
    let first = *input.first()?;
    let len_nibble = first >> 4;
    let tkl = first & 0x0f;
    let rest = input.get(1..)?;
    let (rest, body_len) = wire::frame_length(len_nibble, rest).ok()?;
    let ext_len_bytes = input.len() - 1 - rest.len();
    let rest = rest.get(1..)?; // code
    let (after, token_len) = match tkl {
        13 | 14 => wire::token_length(tkl, rest).ok()?,
        _ => (rest, usize::from(tkl)),
    };
    let ext_tkl_bytes = rest.len() - after.len();
    Some(1 + ext_len_bytes as u64 + 1 + ext_tkl_bytes as u64 + token_len as u64 + body_len)
}

impl Message {
    /// Number of bytes [`Message::encode_tcp`] writes.
    pub fn tcp_encoded_len(&self) -> usize {
        let body = self.options_len() + self.payload_part_len();
        1 + frame_len_ext_bytes(body)
            + 1
            + extended_len_bytes(self.token.len())
            + self.token.len()
            + body
    }

    /// Encodes the message as an RFC 8323 frame (type and message id are
    /// not part of the frame). Nothing is written when an error is returned.
    pub fn encode_tcp<B: BufMut>(
        &self,
        buf: &mut B,
        settings: &CodecSettings,
    ) -> Result<usize, EncodeError> {
        if self.code.is_reserved_class() {
            return Err(EncodeError::ReservedCodeClass { code: self.code });
        }
        let options_len = self.check(settings)?;
        let needed = self.tcp_encoded_len();
        if buf.remaining_mut() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                available: buf.remaining_mut(),
            });
        }
        let body = options_len + self.payload_part_len();
        let (len_nibble, len_ext) = frame_len_fields(body);
        let (tkl, tkl_ext) = token_length_fields(self.token.len());
        buf.put_u8((len_nibble << 4) | tkl);
        let mut sink = BufSink(buf);
        len_ext.write(&mut sink);
        sink.0.put_u8(self.code.to_u8());
        tkl_ext.write(&mut sink);
        sink.0.put_slice(&self.token);
        self.write_options(&mut sink);
        self.put_payload(buf);
        Ok(needed)
    }

    /// Encodes as an RFC 8323 frame into a new `Bytes`.
    pub fn to_tcp_bytes(&self, settings: &CodecSettings) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.tcp_encoded_len());
        self.encode_tcp(&mut buf, settings)?;
        Ok(buf.freeze())
    }
}

fn frame_len_fields(len: usize) -> (u8, Extended) {
    match len {
        0..=12 => (len as u8, Extended::None),
        13..=268 => (13, Extended::One((len - 13) as u8)),
        269..=65804 => (14, Extended::Two((len - 269) as u16)),
        _ => (
            15,
            Extended::Four(len.saturating_sub(65805).min(u32::MAX as usize) as u32),
        ),
    }
}

fn frame_len_ext_bytes(len: usize) -> usize {
    match len {
        0..=12 => 0,
        13..=268 => 1,
        269..=65804 => 2,
        _ => 4,
    }
}
