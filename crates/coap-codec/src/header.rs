//! The fixed 4-byte header of a CoAP-over-UDP message (RFC 7252 §3).

use std::fmt;

use crate::code::Code;

/// The message type carried in the 2-bit `T` field (RFC 7252 §3, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Confirmable (0): needs an ACK or RST.
    Con,
    /// Non-confirmable (1).
    Non,
    /// Acknowledgement (2).
    Ack,
    /// Reset (3).
    Rst,
}

impl MessageType {
    /// Decodes the 2-bit type field; only the two low bits of `bits` are looked at.
    pub const fn from_bits(bits: u8) -> MessageType {
        match bits & 0x03 {
            0 => MessageType::Con,
            1 => MessageType::Non,
            2 => MessageType::Ack,
            _ => MessageType::Rst,
        }
    }

    /// The 2-bit wire value (0–3).
    pub const fn to_bits(self) -> u8 {
        match self {
            MessageType::Con => 0,
            MessageType::Non => 1,
            MessageType::Ack => 2,
            MessageType::Rst => 3,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageType::Con => "CON",
            MessageType::Non => "NON",
            MessageType::Ack => "ACK",
            MessageType::Rst => "RST",
        })
    }
}

/// The fixed header fields of a UDP message, as read by [`peek_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The message type.
    pub mtype: MessageType,
    /// The raw 4-bit token length field (TKL). With RFC 8974, 13 and 14 mean
    /// that an extended length follows the header.
    pub tkl: u8,
    /// The message code.
    pub code: Code,
    /// The message id.
    pub message_id: u16,
}

/// The only protocol version defined by RFC 7252.
pub const COAP_VERSION: u8 = 1;

/// Reads the 4-byte header without looking further.
///
/// Returns `None` when fewer than 4 bytes are given or the version is not 1;
/// both are messages the message layer drops silently (RFC 7252 §3: "Messages
/// with unknown version numbers MUST be silently ignored"). When a full parse
/// fails *after* the header, this tells the caller the type and message id
/// so it can answer a CON with an RST.
pub fn peek_header(datagram: &[u8]) -> Option<Header> {
    let (first, code, mid_hi, mid_lo) = match datagram {
        [a, b, c, d, ..] => (*a, *b, *c, *d),
        _ => return None,
    };
    if first >> 6 != COAP_VERSION {
        return None;
    }
    Some(Header {
        mtype: MessageType::from_bits(first >> 4),
        tkl: first & 0x0f,
        code: Code::from_u8(code),
        message_id: u16::from_be_bytes([mid_hi, mid_lo]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_header_reads_fields() {
        let h = peek_header(&[0x52, 0x01, 0x12, 0x34, 0xaa, 0xbb]).unwrap();
        assert_eq!(h.mtype, MessageType::Non);
        assert_eq!(h.tkl, 2);
        assert_eq!(h.code, Code::GET);
        assert_eq!(h.message_id, 0x1234);
    }

    #[test]
    fn peek_header_rejects_short_and_wrong_version() {
        assert_eq!(peek_header(&[0x40, 0x01, 0x00]), None);
        assert_eq!(peek_header(&[0x80, 0x01, 0x00, 0x01]), None);
        assert!(peek_header(&[0x40, 0x01, 0x00, 0x01]).is_some());
    }

    #[test]
    fn message_type_bits_round_trip() {
        for bits in 0..4 {
            assert_eq!(MessageType::from_bits(bits).to_bits(), bits);
        }
    }
}
