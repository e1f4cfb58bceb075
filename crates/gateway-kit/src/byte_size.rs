//! `ByteSize`: sizes written as `2048`, `4MiB`, `64 KiB`, `1GB`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes that parses from and prints as human text, in clap
/// (`FromStr`) and in serde (a TOML integer `2048` or string `"4MiB"`).
///
/// Units (case-insensitive, optional space before them): none or `B`;
/// binary `KiB`, `MiB`, `GiB`, `TiB` and their short forms `K`, `M`, `G`, `T`
/// (powers of 1024, as most tools read them); decimal `kB`, `MB`, `GB`, `TB`
/// (powers of 1000). Printing uses the largest binary unit that keeps the
/// value exact (`4194304` prints `4MiB`, `1000` prints `1000`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a text is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ByteSizeParseError {
    /// The text does not start with a whole number.
    #[error("invalid size {0:?}, expected e.g. \"2048\", \"64KiB\", \"4MiB\"")]
    Invalid(String),
    /// The unit is not a known one.
    #[error("size {text:?} has unknown unit {unit:?} (use B, KiB, MiB, GiB, kB, MB, GB)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The number of bytes as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        ByteSize(bytes)
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let digits_len = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(digits_len);
        if digits.is_empty() {
            return Err(ByteSizeParseError::Invalid(text.to_owned()));
        }
        let unit = unit.trim_start();
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(ByteSizeParseError::UnknownUnit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let value: u64 = digits
            .parse()
            .map_err(|_| ByteSizeParseError::Overflow(text.to_owned()))?;
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeParseError::Overflow(text.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        match UNITS
            .iter()
            .find(|(size, _)| self.0 != 0 && self.0.is_multiple_of(*size))
        {
            Some((size, name)) => write!(f, "{}{name}", self.0 / size),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count such as 2048 or a size such as \"4MiB\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, ByteSizeParseError> {
        s.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse("2048").unwrap(), 2048);
        assert_eq!(parse("2048B").unwrap(), 2048);
        assert_eq!(parse("4MiB").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse("4 mib").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse("64KiB").unwrap(), 65_536);
        assert_eq!(parse("64K").unwrap(), 65_536);
        assert_eq!(parse("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse("2kB").unwrap(), 2_000);
        assert_eq!(parse("0").unwrap(), 0);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(parse(""), Err(ByteSizeParseError::Invalid(_))));
        assert!(matches!(parse("MiB"), Err(ByteSizeParseError::Invalid(_))));
        assert!(matches!(parse("-1"), Err(ByteSizeParseError::Invalid(_))));
        assert!(matches!(
            parse("1.5MiB"),
            Err(ByteSizeParseError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("4XB"),
            Err(ByteSizeParseError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("99999999999999999999"),
            Err(ByteSizeParseError::Overflow(_))
        ));
        assert!(matches!(
            parse("17000000TiB"),
            Err(ByteSizeParseError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in ["1000", "4MiB", "2KiB", "1GiB", "0", "1025"] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.to_string(), text, "{text}");
        }
    }

    #[test]
    fn deserializes_integer_or_string() {
        #[derive(Deserialize)]
        struct S {
            a: ByteSize,
            b: ByteSize,
        }
        let s: S = toml::from_str("a = 2048\nb = \"4MiB\"\n").unwrap();
        assert_eq!((s.a.0, s.b.0), (2048, 4 << 20));
        assert!(toml::from_str::<S>("a = -1\nb = 1\n").is_err());
    }
}
