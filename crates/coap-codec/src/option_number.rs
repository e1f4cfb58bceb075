//! Option numbers (RFC 7252 §5.4, §12.2) and what is known about each.

use std::fmt;

/// A CoAP option number.
///
/// A newtype over `u16` so that unknown numbers survive parsing and
/// encoding unchanged. The critical / unsafe / no-cache-key properties are
/// derived from the number itself (RFC 7252 §5.4.6).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OptionNumber(pub u16);

/// The value format of an option (RFC 7252 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptionFormat {
    /// Zero-length value.
    Empty,
    /// Opaque bytes.
    Opaque,
    /// Unsigned integer in network byte order, shortest form.
    Uint,
    /// UTF-8 string (Net-Unicode).
    String,
}

/// What this crate knows about a registered option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OptionDefinition {
    /// Registered name, e.g. `"Uri-Path"`.
    pub name: &'static str,
    /// Value format.
    pub format: OptionFormat,
    /// Smallest allowed value length in bytes.
    pub min_len: usize,
    /// Largest allowed value length in bytes.
    pub max_len: usize,
    /// Whether the option may occur more than once.
    pub repeatable: bool,
}

const fn def(
    name: &'static str,
    format: OptionFormat,
    min_len: usize,
    max_len: usize,
    repeatable: bool,
) -> OptionDefinition {
    OptionDefinition {
        name,
        format,
        min_len,
        max_len,
        repeatable,
    }
}

impl OptionNumber {
    /// 1 If-Match (RFC 7252).
    pub const IF_MATCH: OptionNumber = OptionNumber(1);
    /// 3 Uri-Host (RFC 7252).
    pub const URI_HOST: OptionNumber = OptionNumber(3);
    /// 4 ETag (RFC 7252).
    pub const ETAG: OptionNumber = OptionNumber(4);
    /// 5 If-None-Match (RFC 7252).
    pub const IF_NONE_MATCH: OptionNumber = OptionNumber(5);
    /// 6 Observe (RFC 7641).
    pub const OBSERVE: OptionNumber = OptionNumber(6);
    /// 7 Uri-Port (RFC 7252).
    pub const URI_PORT: OptionNumber = OptionNumber(7);
    /// 8 Location-Path (RFC 7252).
    pub const LOCATION_PATH: OptionNumber = OptionNumber(8);
    /// 9 OSCORE (RFC 8613).
    pub const OSCORE: OptionNumber = OptionNumber(9);
    /// 11 Uri-Path (RFC 7252).
    pub const URI_PATH: OptionNumber = OptionNumber(11);
    /// 12 Content-Format (RFC 7252).
    pub const CONTENT_FORMAT: OptionNumber = OptionNumber(12);
    /// 14 Max-Age (RFC 7252).
    pub const MAX_AGE: OptionNumber = OptionNumber(14);
    /// 15 Uri-Query (RFC 7252).
    pub const URI_QUERY: OptionNumber = OptionNumber(15);
    /// 16 Hop-Limit (RFC 8768).
    pub const HOP_LIMIT: OptionNumber = OptionNumber(16);
    /// 17 Accept (RFC 7252).
    pub const ACCEPT: OptionNumber = OptionNumber(17);
    /// 19 Q-Block1 (RFC 9177).
    pub const Q_BLOCK1: OptionNumber = OptionNumber(19);
    /// 20 Location-Query (RFC 7252).
    pub const LOCATION_QUERY: OptionNumber = OptionNumber(20);
    /// 23 Block2 (RFC 7959).
    pub const BLOCK2: OptionNumber = OptionNumber(23);
    /// 27 Block1 (RFC 7959).
    pub const BLOCK1: OptionNumber = OptionNumber(27);
    /// 28 Size2 (RFC 7959).
    pub const SIZE2: OptionNumber = OptionNumber(28);
    /// 31 Q-Block2 (RFC 9177).
    pub const Q_BLOCK2: OptionNumber = OptionNumber(31);
    /// 35 Proxy-Uri (RFC 7252).
    pub const PROXY_URI: OptionNumber = OptionNumber(35);
    /// 39 Proxy-Scheme (RFC 7252).
    pub const PROXY_SCHEME: OptionNumber = OptionNumber(39);
    /// 60 Size1 (RFC 7252, RFC 7959).
    pub const SIZE1: OptionNumber = OptionNumber(60);
    /// 252 Echo (RFC 9175).
    pub const ECHO: OptionNumber = OptionNumber(252);
    /// 258 No-Response (RFC 7967).
    pub const NO_RESPONSE: OptionNumber = OptionNumber(258);
    /// 292 Request-Tag (RFC 9175).
    pub const REQUEST_TAG: OptionNumber = OptionNumber(292);

    /// Every option number this crate has a definition for, ascending.
    pub const KNOWN: [OptionNumber; 26] = [
        Self::IF_MATCH,
        Self::URI_HOST,
        Self::ETAG,
        Self::IF_NONE_MATCH,
        Self::OBSERVE,
        Self::URI_PORT,
        Self::LOCATION_PATH,
        Self::OSCORE,
        Self::URI_PATH,
        Self::CONTENT_FORMAT,
        Self::MAX_AGE,
        Self::URI_QUERY,
        Self::HOP_LIMIT,
        Self::ACCEPT,
        Self::Q_BLOCK1,
        Self::LOCATION_QUERY,
        Self::BLOCK2,
        Self::BLOCK1,
        Self::SIZE2,
        Self::Q_BLOCK2,
        Self::PROXY_URI,
        Self::PROXY_SCHEME,
        Self::SIZE1,
        Self::ECHO,
        Self::NO_RESPONSE,
        Self::REQUEST_TAG,
    ];

    /// The raw number.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// Critical options must be understood by the receiver (odd numbers, RFC 7252 §5.4.1).
    pub const fn is_critical(self) -> bool {
        self.0 & 0x01 != 0
    }

    /// Elective options may be ignored when unrecognised (even numbers).
    pub const fn is_elective(self) -> bool {
        !self.is_critical()
    }

    /// Unsafe-to-forward options must be understood by a proxy (bit 1, RFC 7252 §5.4.2).
    pub const fn is_unsafe(self) -> bool {
        self.0 & 0x02 != 0
    }

    /// NoCacheKey: safe-to-forward options with bits 1–4 equal to `1110`
    /// are not part of the cache key (RFC 7252 §5.4.6).
    pub const fn is_no_cache_key(self) -> bool {
        self.0 & 0x1e == 0x1c
    }

    /// What this crate knows about the option (RFC 7252 §5.10 table and the
    /// registering RFCs), or `None` for an unregistered number.
    pub const fn definition(self) -> Option<OptionDefinition> {
        use OptionFormat::*;
        Some(match self.0 {
            1 => def("If-Match", Opaque, 0, 8, true),
            3 => def("Uri-Host", String, 1, 255, false),
            4 => def("ETag", Opaque, 1, 8, true),
            5 => def("If-None-Match", Empty, 0, 0, false),
            6 => def("Observe", Uint, 0, 3, false),
            7 => def("Uri-Port", Uint, 0, 2, false),
            8 => def("Location-Path", String, 0, 255, true),
            9 => def("OSCORE", Opaque, 0, 255, false),
            11 => def("Uri-Path", String, 0, 255, true),
            12 => def("Content-Format", Uint, 0, 2, false),
            14 => def("Max-Age", Uint, 0, 4, false),
            15 => def("Uri-Query", String, 0, 255, true),
            16 => def("Hop-Limit", Uint, 1, 1, false),
            17 => def("Accept", Uint, 0, 2, false),
            19 => def("Q-Block1", Uint, 0, 3, false),
            20 => def("Location-Query", String, 0, 255, true),
            23 => def("Block2", Uint, 0, 3, false),
            27 => def("Block1", Uint, 0, 3, false),
            28 => def("Size2", Uint, 0, 4, false),
            31 => def("Q-Block2", Uint, 0, 3, false),
            35 => def("Proxy-Uri", String, 1, 1034, false),
            39 => def("Proxy-Scheme", String, 1, 255, false),
            60 => def("Size1", Uint, 0, 4, false),
            252 => def("Echo", Opaque, 1, 40, false),
            258 => def("No-Response", Uint, 0, 1, false),
            292 => def("Request-Tag", Opaque, 0, 8, true),
            _ => return None,
        })
    }

    /// Largest value length the encoder accepts: the registered maximum for
    /// a known option, otherwise what the wire format can express (65804).
    /// A plain match so the encoder's per-option check stays cheap.
    pub const fn max_value_len(self) -> usize {
        match self.0 {
            5 => 0,
            16 | 258 => 1,
            7 | 12 | 17 => 2,
            6 | 19 | 23 | 27 | 31 => 3,
            14 | 28 | 60 => 4,
            1 | 4 | 292 => 8,
            252 => 40,
            3 | 8 | 9 | 11 | 15 | 20 | 39 => 255,
            35 => 1034,
            _ => crate::encode::MAX_OPTION_VALUE_LEN,
        }
    }

    /// True when this crate has a definition for the number.
    pub const fn is_known(self) -> bool {
        self.definition().is_some()
    }

    /// Registered name, e.g. `"Uri-Path"`.
    pub fn name(self) -> Option<&'static str> {
        self.definition().map(|d| d.name)
    }

    /// Whether the option may be repeated; `None` for an unknown number.
    pub fn is_repeatable(self) -> Option<bool> {
        self.definition().map(|d| d.repeatable)
    }
}

impl From<u16> for OptionNumber {
    fn from(n: u16) -> OptionNumber {
        OptionNumber(n)
    }
}

impl From<OptionNumber> for u16 {
    fn from(n: OptionNumber) -> u16 {
        n.0
    }
}

/// Formats as the registered name and number, e.g. `Uri-Path (11)`, or just the number.
impl fmt::Display for OptionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "option {}", self.0),
        }
    }
}

impl fmt::Debug for OptionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "OptionNumber({} {name})", self.0),
            None => write!(f, "OptionNumber({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_follow_rfc_7252_table_4() {
        // RFC 7252 §5.10 table: C = critical, U = unsafe, N = NoCacheKey.
        let table: &[(OptionNumber, bool, bool, bool)] = &[
            (OptionNumber::IF_MATCH, true, false, false),
            (OptionNumber::URI_HOST, true, true, false),
            (OptionNumber::ETAG, false, false, false),
            (OptionNumber::IF_NONE_MATCH, true, false, false),
            (OptionNumber::URI_PORT, true, true, false),
            (OptionNumber::LOCATION_PATH, false, false, false),
            (OptionNumber::URI_PATH, true, true, false),
            (OptionNumber::CONTENT_FORMAT, false, false, false),
            (OptionNumber::MAX_AGE, false, true, false),
            (OptionNumber::URI_QUERY, true, true, false),
            (OptionNumber::ACCEPT, true, false, false),
            (OptionNumber::LOCATION_QUERY, false, false, false),
            (OptionNumber::PROXY_URI, true, true, false),
            (OptionNumber::PROXY_SCHEME, true, true, false),
            (OptionNumber::SIZE1, false, false, true),
            (OptionNumber::SIZE2, false, false, true),
        ];
        for &(n, c, u, nck) in table {
            assert_eq!(n.is_critical(), c, "{n} critical");
            assert_eq!(n.is_unsafe(), u, "{n} unsafe");
            assert_eq!(n.is_no_cache_key(), nck, "{n} no-cache-key");
        }
    }

    #[test]
    fn max_value_len_agrees_with_definitions() {
        for n in OptionNumber::KNOWN {
            assert_eq!(n.max_value_len(), n.definition().unwrap().max_len, "{n}");
        }
        assert_eq!(OptionNumber(2049).max_value_len(), 65804);
    }

    #[test]
    fn known_list_is_sorted_and_defined() {
        assert!(OptionNumber::KNOWN.windows(2).all(|w| w[0] < w[1]));
        assert!(OptionNumber::KNOWN.iter().all(|n| n.is_known()));
        assert!(!OptionNumber(2).is_known());
        assert_eq!(OptionNumber::URI_PATH.is_repeatable(), Some(true));
        assert_eq!(OptionNumber::URI_HOST.is_repeatable(), Some(false));
        assert_eq!(OptionNumber(65000).is_repeatable(), None);
        assert_eq!(OptionNumber::BLOCK2.to_string(), "Block2 (23)");
        assert_eq!(OptionNumber(2049).to_string(), "option 2049");
    }
}
