//! Encoding an owned [`Message`] into a `bytes::BufMut` (RFC 7252 §3).

use bytes::{BufMut, Bytes};

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
        self.head_len(self.options_len()) + self.payload_part_len()
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
        let head_len = self.checked_head_len(settings)?;
        let needed = head_len + self.payload_part_len();
        if buf.remaining_mut() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                available: buf.remaining_mut(),
            });
        }
        self.write_head(&mut BufSink(buf));
        self.put_payload(buf);
        Ok(needed)
    }

    /// Encodes into a new `Bytes` with the default settings.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        self.to_bytes_with(&CodecSettings::DEFAULT)
    }

    /// Encodes into a new `Bytes` (one allocation of exactly the encoded size).
    pub fn to_bytes_with(&self, settings: &CodecSettings) -> Result<Bytes, EncodeError> {
        let head_len = self.checked_head_len(settings)?;
        let mut buf = Vec::with_capacity(head_len + self.payload_part_len());
        self.write_head(&mut BufSink(&mut buf));
        self.put_payload(&mut buf);
        Ok(Bytes::from(buf))
    }

    /// All encoder checks; returns the length of header, token and options.
    fn checked_head_len(&self, settings: &CodecSettings) -> Result<usize, EncodeError> {
        if self.code.is_reserved_class() || self.code.is_signaling() {
            return Err(EncodeError::ReservedCodeClass { code: self.code });
        }
        let options_len = self.check(settings)?;
        Ok(self.head_len(options_len))
    }

    /// Checks token length, option value lengths and the empty-message rule;
    /// returns the length of the encoded options (one pass for both).
    pub(crate) fn check(&self, settings: &CodecSettings) -> Result<usize, EncodeError> {
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
        let mut len = 0;
        let mut prev = 0u16;
        for opt in self.option_list() {
            let value_len = opt.value.len();
            let max = opt.number.max_value_len();
            if value_len > max {
                return Err(EncodeError::OptionValueTooLong {
                    number: opt.number,
                    len: value_len,
                    max,
                });
            }
            len += option_len(opt.number.0.saturating_sub(prev), value_len);
            prev = opt.number.0;
        }
        Ok(len)
    }

    /// Length of the encoded options (without the payload marker).
    pub(crate) fn options_len(&self) -> usize {
        let mut len = 0;
        let mut prev = 0u16;
        for opt in self.option_list() {
            len += option_len(opt.number.0.saturating_sub(prev), opt.value.len());
            prev = opt.number.0;
        }
        len
    }

    /// Marker and payload, or nothing.
    pub(crate) fn payload_part_len(&self) -> usize {
        if self.payload.is_empty() {
            0
        } else {
            1 + self.payload.len()
        }
    }

    fn head_len(&self, options_len: usize) -> usize {
        4 + extended_len_bytes(self.token.len()) + self.token.len() + options_len
    }

    /// Header, token and options.
    fn write_head<S: Sink>(&self, w: &mut S) {
        let (tkl, ext) = token_length_fields(self.token.len());
        let mid = self.message_id.to_be_bytes();
        w.bytes(&[
            (COAP_VERSION << 6) | (self.mtype.to_bits() << 4) | tkl,
            self.code.to_u8(),
            mid[0],
            mid[1],
        ]);
        ext.write(w);
        w.bytes(&self.token);
        self.write_options(w);
    }

    /// Options (RFC 7252 §3.1), delta-encoded in ascending order.
    pub(crate) fn write_options<S: Sink>(&self, w: &mut S) {
        let mut prev = 0u16;
        for opt in self.option_list() {
            let delta = u32::from(opt.number.0.saturating_sub(prev));
            let (dn, dext) = nibble(delta);
            let (ln, lext) = nibble(opt.value.len() as u32);
            w.byte((dn << 4) | ln);
            dext.write(w);
            lext.write(w);
            w.bytes(&opt.value);
            prev = opt.number.0;
        }
    }

    /// Marker and payload (RFC 7252 §3: no marker for an empty payload).
    pub(crate) fn put_payload<B: BufMut>(&self, buf: &mut B) {
        if !self.payload.is_empty() {
            buf.put_u8(PAYLOAD_MARKER);
            buf.put_slice(&self.payload);
        }
    }
}

/// Where encoded bytes go. Single bytes have their own method because
/// `BufMut::put_u8` is much cheaper than a one-byte `put_slice`.
pub(crate) trait Sink {
    fn byte(&mut self, b: u8);
    fn bytes(&mut self, src: &[u8]);
}

/// Forwards to a `BufMut` whose capacity the caller checked.
pub(crate) struct BufSink<'a, B: BufMut>(pub(crate) &'a mut B);

impl<B: BufMut> Sink for BufSink<'_, B> {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.0.put_u8(b);
    }

    #[inline(always)]
    fn bytes(&mut self, src: &[u8]) {
        self.0.put_slice(src);
    }
}

/// Extended bytes following a nibble: none, one, two or four bytes.
#[derive(Clone, Copy)]
pub(crate) enum Extended {
    None,
    One(u8),
    Two(u16),
    Four(u32),
}

impl Extended {
    #[inline(always)]
    pub(crate) fn write<S: Sink>(self, w: &mut S) {
        match self {
            Extended::None => {}
            Extended::One(v) => w.byte(v),
            Extended::Two(v) => w.bytes(&v.to_be_bytes()),
            Extended::Four(v) => w.bytes(&v.to_be_bytes()),
        }
    }
}

/// RFC 7252 §3.1 nibble for an option delta or length (values above 65804
/// were rejected by `check`; they saturate here rather than panic).
#[inline(always)]
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

/// Encoded size of one option.
#[inline(always)]
fn option_len(delta: u16, value_len: usize) -> usize {
    1 + extended_len_bytes(usize::from(delta)) + extended_len_bytes(value_len) + value_len
}

/// Bytes of extension for a delta, length or token length (RFC 7252 §3.1, RFC 8974 §2.1).
#[inline(always)]
pub(crate) fn extended_len_bytes(v: usize) -> usize {
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
