//! Typed option values: uint (RFC 7252 §3.2), Block1/Block2 (RFC 7959 §2.2)
//! and the Observe sequence number (RFC 7641 §3.4).

use std::fmt;
use std::ops::Deref;

use crate::option_number::OptionNumber;

/// Up to four bytes of an encoded uint value, without heap allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UintBytes {
    buf: [u8; 4],
    len: u8,
}

impl UintBytes {
    /// The encoded bytes (empty for zero).
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(4 - usize::from(self.len)..).unwrap_or(&[])
    }
}

impl Deref for UintBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for UintBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for UintBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UintBytes({:02x?})", self.as_slice())
    }
}

/// Encodes a uint option value in its shortest form: no leading zero bytes,
/// zero is the empty value (RFC 7252 §3.2).
pub fn encode_uint(value: u32) -> UintBytes {
    let len = 4 - (value.leading_zeros() / 8) as u8;
    UintBytes {
        buf: value.to_be_bytes(),
        len,
    }
}

/// Decodes a uint option value of up to 4 bytes. Leading zero bytes are
/// accepted (RFC 7252 §3.2 lets a recipient tolerate them).
pub fn decode_uint(value: &[u8]) -> Result<u32, OptionValueError> {
    if value.len() > 4 {
        return Err(OptionValueError::TooLong {
            len: value.len(),
            max: 4,
        });
    }
    Ok(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Why a typed option value could not be decoded or built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionValueError {
    /// The value has more bytes than the option's format allows.
    #[error("option value of {len} bytes is longer than the {max} bytes allowed")]
    TooLong {
        /// Actual length.
        len: usize,
        /// Largest allowed length.
        max: usize,
    },
    /// A block number does not fit in 20 bits.
    #[error("block number {num} does not fit in 20 bits")]
    BlockNumberTooLarge {
        /// The offending number.
        num: u32,
    },
    /// SZX is larger than 7.
    #[error("block size exponent {szx} is larger than 7")]
    InvalidSzx {
        /// The offending exponent.
        szx: u8,
    },
    /// A block size that is not a power of two between 16 and 1024.
    #[error("block size {size} is not a power of two between 16 and 1024")]
    InvalidBlockSize {
        /// The offending size.
        size: usize,
    },
}

/// A Block1 or Block2 option value (RFC 7959 §2.2): block number, more flag
/// and size exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Block number (0 ..= 2^20 - 1).
    pub num: u32,
    /// "More" flag: further blocks follow.
    pub more: bool,
    /// Size exponent: size = 2^(szx + 4). 7 is reserved over UDP (BERT over TCP).
    pub szx: u8,
}

impl Block {
    /// Largest block number that fits in the 20-bit NUM field.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// SZX value 7: reserved in RFC 7959, BERT in RFC 8323.
    pub const SZX_RESERVED: u8 = 7;

    /// Builds a block value, checking the ranges of `num` (20 bits) and `szx` (0–7).
    pub fn new(num: u32, more: bool, szx: u8) -> Result<Block, OptionValueError> {
        if num > Self::MAX_NUM {
            return Err(OptionValueError::BlockNumberTooLarge { num });
        }
        if szx > 7 {
            return Err(OptionValueError::InvalidSzx { szx });
        }
        Ok(Block { num, more, szx })
    }

    /// Builds a block value from a byte size (16, 32, …, 1024).
    pub fn with_size(num: u32, more: bool, size: usize) -> Result<Block, OptionValueError> {
        let szx = match size {
            16 => 0,
            32 => 1,
            64 => 2,
            128 => 3,
            256 => 4,
            512 => 5,
            1024 => 6,
            _ => return Err(OptionValueError::InvalidBlockSize { size }),
        };
        Block::new(num, more, szx)
    }

    /// Block size in bytes: 2^(szx + 4). For SZX 7 (BERT, RFC 8323 §6)
    /// this returns 1024, the size of one BERT unit.
    pub const fn size(self) -> usize {
        if self.szx >= 6 {
            1024
        } else {
            1 << (self.szx + 4)
        }
    }

    /// Byte offset of this block in the body: `num * size`.
    pub const fn offset(self) -> usize {
        self.num as usize * self.size()
    }

    /// Decodes a Block1/Block2 option value; values longer than 3 bytes are
    /// an error (RFC 7959 §2.2).
    pub fn decode(value: &[u8]) -> Result<Block, OptionValueError> {
        if value.len() > 3 {
            return Err(OptionValueError::TooLong {
                len: value.len(),
                max: 3,
            });
        }
        let raw = decode_uint(value)?;
        Ok(Block {
            num: raw >> 4,
            more: raw & 0x08 != 0,
            szx: (raw & 0x07) as u8,
        })
    }

    /// Encodes the value in its shortest form (0–3 bytes). Out-of-range
    /// fields are masked to 20 / 3 bits; use [`Block::new`] to check them.
    pub fn encode(self) -> UintBytes {
        let raw = ((self.num & Self::MAX_NUM) << 4)
            | (u32::from(self.more) << 3)
            | u32::from(self.szx & 0x07);
        encode_uint(raw)
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.num, u8::from(self.more), self.size())
    }
}

/// The Observe option value (RFC 7641 §2): 0 = register, 1 = deregister in
/// requests; a 24-bit sequence number in notifications.
pub mod observe {
    use super::{OptionValueError, UintBytes, decode_uint, encode_uint};

    /// Observe value in a request that registers an observation.
    pub const REGISTER: u32 = 0;
    /// Observe value in a request that cancels an observation.
    pub const DEREGISTER: u32 = 1;
    /// Sequence numbers are taken modulo 2^24.
    pub const SEQUENCE_MODULUS: u32 = 1 << 24;

    /// Decodes an Observe value (0–3 bytes).
    pub fn decode(value: &[u8]) -> Result<u32, OptionValueError> {
        if value.len() > 3 {
            return Err(OptionValueError::TooLong {
                len: value.len(),
                max: 3,
            });
        }
        decode_uint(value)
    }

    /// Encodes a sequence number, reduced modulo 2^24, in its shortest form.
    pub fn encode(sequence: u32) -> UintBytes {
        encode_uint(sequence % SEQUENCE_MODULUS)
    }

    /// The next sequence number after `sequence` (wraps at 2^24).
    pub const fn next(sequence: u32) -> u32 {
        (sequence.wrapping_add(1)) % SEQUENCE_MODULUS
    }

    /// RFC 7641 §3.4: is a notification with sequence `v2` newer than one
    /// with `v1`, going by sequence numbers only? (The 128-second rule is
    /// the caller's, as it needs a clock.)
    pub const fn is_newer(v1: u32, v2: u32) -> bool {
        const HALF: u32 = 1 << 23;
        let v1 = v1 % SEQUENCE_MODULUS;
        let v2 = v2 % SEQUENCE_MODULUS;
        (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF)
    }
}

/// Checks a value length against the option's registered range; unknown
/// options accept any length.
pub(crate) fn length_in_range(number: OptionNumber, len: usize) -> bool {
    match number.definition() {
        Some(d) => len >= d.min_len && len <= d.max_len,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_shortest_encoding() {
        assert_eq!(encode_uint(0).as_slice(), &[] as &[u8]);
        assert_eq!(encode_uint(1).as_slice(), &[1]);
        assert_eq!(encode_uint(255).as_slice(), &[255]);
        assert_eq!(encode_uint(256).as_slice(), &[1, 0]);
        assert_eq!(encode_uint(0x0102_0304).as_slice(), &[1, 2, 3, 4]);
        assert_eq!(encode_uint(u32::MAX).as_slice(), &[0xff; 4]);
    }

    #[test]
    fn uint_decode() {
        assert_eq!(decode_uint(&[]), Ok(0));
        assert_eq!(decode_uint(&[0, 0, 1]), Ok(1));
        assert_eq!(decode_uint(&[1, 2, 3, 4]), Ok(0x0102_0304));
        assert_eq!(
            decode_uint(&[1, 2, 3, 4, 5]),
            Err(OptionValueError::TooLong { len: 5, max: 4 })
        );
    }

    #[test]
    fn block_examples_from_rfc_7959() {
        // "2/0/1024": NUM 2, M 0, SZX 6 → 0x26.
        let b = Block::decode(&[0x26]).unwrap();
        assert_eq!(
            b,
            Block {
                num: 2,
                more: false,
                szx: 6
            }
        );
        assert_eq!(b.size(), 1024);
        assert_eq!(b.offset(), 2048);
        assert_eq!(b.encode().as_slice(), &[0x26]);
        assert_eq!(b.to_string(), "2/0/1024");
        let b = Block::new(0, true, 2).unwrap();
        assert_eq!(b.encode().as_slice(), &[0x0a]);
        assert_eq!(
            Block::new(0, false, 0).unwrap().encode().as_slice(),
            &[] as &[u8]
        );
        let big = Block::new(Block::MAX_NUM, true, 6).unwrap();
        assert_eq!(big.encode().len(), 3);
        assert_eq!(Block::decode(&big.encode()), Ok(big));
    }

    #[test]
    fn block_errors() {
        assert_eq!(
            Block::decode(&[0, 0, 0, 1]),
            Err(OptionValueError::TooLong { len: 4, max: 3 })
        );
        assert!(Block::new(1 << 20, false, 0).is_err());
        assert!(Block::new(0, false, 8).is_err());
        assert!(Block::with_size(0, false, 100).is_err());
        assert_eq!(Block::with_size(3, true, 64).unwrap().szx, 2);
        assert_eq!(Block::decode(&[0x07]).unwrap().szx, Block::SZX_RESERVED);
    }

    #[test]
    fn observe_sequence_wraps_at_24_bits() {
        assert_eq!(observe::encode(0x0100_0001).as_slice(), &[1]);
        assert_eq!(observe::next(0x00ff_ffff), 0);
        assert!(observe::is_newer(1, 2));
        assert!(!observe::is_newer(2, 1));
        assert!(observe::is_newer(0x00ff_fff0, 3));
        assert!(!observe::is_newer(5, 5));
        assert!(observe::decode(&[1, 2, 3, 4]).is_err());
        assert_eq!(observe::decode(&[1, 2, 3]), Ok(0x0001_0203));
    }
}
