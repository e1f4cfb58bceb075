//! Encoding an owned [`Message`] into a `bytes::BufMut` (RFC 7252 §3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::EncodeError;
use crate::header::COAP_VERSION;
use crate::message::Message;
use crate::settings::CodecSettings;
use crate::wire::PAYLOAD_MARKER;

/// Longest option value the wire format can express (extended length 14: 65535 + 269).
pub const MAX_OPTION_VALUE_LEN: usize = 65535 + 269;

impl Message {
    /// Number of bytes [`Message::encode`] writes for this message over UDP.
    pub fn encoded_len(&self) -> usize {
        4 + extended_token_len_bytes(self.token.len()) + self.token.len() + self.body_len()
    }

    /// Encodes the message for UDP with the default settings (tokens up to 8 bytes).
    /// Returns the number of bytes written.
    pub fn encode<B: BufMut>(&self, buf: &mut B) -> Result<usize, EncodeError> {
        self.encode_with(buf, &CodecSettings::DEFAULT)
    }

    /// Encodes the message for UDP. Nothing is written when an error is returned.
    pub fn encode_with<B: BufMut>(
        &self,
        buf: &mut B,
        settings: &CodecSettings,
    ) -> Result<usize, EncodeError> {
        if self.code.is_reserved_class() || self.code.is_signaling() {
            return Err(EncodeError::ReservedCodeClass { code: self.code });
        }
        self.check(settings)?;
        let needed = self.encoded_len();
        if buf.remaining_mut() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                available: buf.remaining_mut(),
            });
        }
        let (tkl, ext) = token_length_fields(self.token.len());
        buf.put_u8((COAP_VERSION << 6) | (self.mtype.to_bits() << 4) | tkl);
        buf.put_u8(self.code.to_u8());
        buf.put_u16(self.message_id);
        put_extended(buf, ext);
        buf.put_slice(&self.token);
        self.put_body(buf);
        Ok(needed)
    }

    /// Encodes into a new `Bytes` with the default settings.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        self.to_bytes_with(&CodecSettings::DEFAULT)
    }

    /// Encodes into a new `Bytes`.
    pub fn to_bytes_with(&self, settings: &CodecSettings) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_with(&mut buf, settings)?;
        Ok(buf.freeze())
    }

    /// Checks token length, option value lengths and the empty-message rule.
    pub(crate) fn check(&self, settings: &CodecSettings) -> Result<(), EncodeError> {
        if self.token.len() > settings.max_token_len() {
            return Err(EncodeError::TokenTooLong {
                len: self.token.len(),
                max: settings.max_token_len(),
            });
        }
        if self.code.is_empty()
            && (!self.token.is_empty() || self.option_count() > 0 || !self.payload.is_empty())
        {
            return Err(EncodeError::NonEmptyEmptyMessage);
        }
        for opt in self.options() {
            let max = opt
                .number
                .definition()
                .map_or(MAX_OPTION_VALUE_LEN, |d| d.max_len);
            if opt.value.len() > max {
                return Err(EncodeError::OptionValueTooLong {
                    number: opt.number,
                    len: opt.value.len(),
                    max,
                });
            }
        }
        Ok(())
    }

    /// Length of options, payload marker and payload.
    pub(crate) fn body_len(&self) -> usize {
        let mut len = 0;
        let mut prev = 0u16;
        for opt in self.options() {
            let delta = u32::from(opt.number.0.saturating_sub(prev));
            len += 1
                + extended_len_bytes(delta)
                + extended_len_bytes(opt.value.len() as u32)
                + opt.value.len();
            prev = opt.number.0;
        }
        if !self.payload.is_empty() {
            len += 1 + self.payload.len();
        }
        len
    }

    /// Writes options (RFC 7252 §3.1, delta-encoded), marker and payload.
    pub(crate) fn put_body<B: BufMut>(&self, buf: &mut B) {
        let mut prev = 0u16;
        for opt in self.options() {
            let delta = u32::from(opt.number.0.saturating_sub(prev));
            let (dn, dext) = nibble(delta);
            let (ln, lext) = nibble(opt.value.len() as u32);
            buf.put_u8((dn << 4) | ln);
            put_extended(buf, dext);
            put_extended(buf, lext);
            buf.put_slice(opt.value);
            prev = opt.number.0;
        }
        if !self.payload.is_empty() {
            buf.put_u8(PAYLOAD_MARKER);
            buf.put_slice(&self.payload);
        }
    }
}

/// Extended bytes following a nibble: none, one byte, or two bytes.
#[derive(Clone, Copy)]
pub(crate) enum Extended {
    None,
    One(u8),
    Two(u16),
    Four(u32),
}

pub(crate) fn put_extended<B: BufMut>(buf: &mut B, ext: Extended) {
    match ext {
        Extended::None => {}
        Extended::One(v) => buf.put_u8(v),
        Extended::Two(v) => buf.put_u16(v),
        Extended::Four(v) => buf.put_u32(v),
    }
}

/// RFC 7252 §3.1 nibble for an option delta or length (values above 65804
/// were rejected by `check`; they saturate here rather than panic).
fn nibble(v: u32) -> (u8, Extended) {
    match v {
        0..=12 => (v as u8, Extended::None),
        13..=268 => (13, Extended::One((v - 13) as u8)),
        _ => (
            14,
            Extended::Two(v.saturating_sub(269).min(u32::from(u16::MAX)) as u16),
        ),
    }
}

fn extended_len_bytes(v: u32) -> usize {
    match v {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    }
}

/// RFC 8974 §2.1 TKL nibble and extended token length for `len`.
pub(crate) fn token_length_fields(len: usize) -> (u8, Extended) {
    match len {
        0..=12 => (len as u8, Extended::None),
        13..=268 => (13, Extended::One((len - 13) as u8)),
        _ => (
            14,
            Extended::Two(len.saturating_sub(269).min(usize::from(u16::MAX)) as u16),
        ),
    }
}

pub(crate) fn extended_token_len_bytes(len: usize) -> usize {
    match len {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    }
}
