//! `HumanDuration`: durations written as `30s`, `500ms`, `2m`, `1h30m`, `1.5s`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that parses from and prints as human text, in clap
/// (`FromStr`) and in serde (a TOML string such as `heartbeat = "30s"`).
///
/// Accepted: one or more `<number><unit>` parts (`1h30m`, `2m 5s`), where the
/// number may have a fraction (`1.5s`) and the unit is one of `ns`, `us`
/// (or `µs`), `ms`, `s`, `m`, `h`, `d`. A bare number is rejected because its
/// unit would be a guess. Printing uses the largest unit that keeps the value
/// exact (`90s` prints `90s`, `120s` prints `2m`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationParseError {
    /// The text is empty.
    #[error("empty duration, expected e.g. \"30s\"")]
    Empty,
    /// A number is not followed by a unit.
    #[error("duration {0:?} has no unit, expected e.g. \"30s\", \"500ms\", \"2m\"")]
    MissingUnit(String),
    /// The unit is not one of ns, us, ms, s, m, h, d.
    #[error("duration {text:?} has unknown unit {unit:?} (use ns, us, ms, s, m, h or d)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Something other than a number where a number belongs.
    #[error("invalid duration {0:?}, expected e.g. \"30s\", \"500ms\", \"2m\"")]
    Invalid(String),
    /// The value does not fit a `Duration`.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(DurationParseError::Empty);
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_len);
            let after = after.trim_start();
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            if number.is_empty() {
                return Err(DurationParseError::Invalid(text.to_owned()));
            }
            if unit.is_empty() {
                return Err(DurationParseError::MissingUnit(text.to_owned()));
            }
            let nanos_per_unit: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                _ => {
                    return Err(DurationParseError::UnknownUnit {
                        text: text.to_owned(),
                        unit: unit.to_owned(),
                    });
                }
            };
            let nanos = scaled(number, nanos_per_unit)
                .ok_or_else(|| DurationParseError::Invalid(text.to_owned()))?;
            let part = duration_from_nanos(nanos)
                .ok_or_else(|| DurationParseError::Overflow(text.to_owned()))?;
            total = total
                .checked_add(part)
                .ok_or_else(|| DurationParseError::Overflow(text.to_owned()))?;
            rest = after.trim_start();
        }
        Ok(HumanDuration(total))
    }
}

/// `number` (digits with an optional fraction) times `unit` nanoseconds,
/// in integer arithmetic so `0.1s` is exactly 100 ms. Fraction digits
/// beyond nanosecond precision are dropped.
fn scaled(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut result = whole_value.checked_mul(unit)?;
    let mut place = unit;
    for digit in fraction.chars() {
        let d = u128::from(digit.to_digit(10)?);
        place /= 10;
        if place == 0 {
            break;
        }
        result = result.checked_add(d.checked_mul(place)?)?;
    }
    Some(result)
}

fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        // The largest unit that divides the value exactly; `ns` always does.
        let (size, name) = UNITS
            .iter()
            .copied()
            .find(|(size, _)| nanos.is_multiple_of(*size))
            .unwrap_or((1, "ns"));
        write!(f, "{}{name}", nanos / size)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Duration, DurationParseError> {
        s.parse::<HumanDuration>().map(HumanDuration::get)
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("2m 5s").unwrap(), Duration::from_secs(125));
        assert_eq!(parse(" 1.5s ").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(parse(""), Err(DurationParseError::Empty));
        assert!(matches!(
            parse("30"),
            Err(DurationParseError::MissingUnit(_))
        ));
        assert!(matches!(
            parse("3x"),
            Err(DurationParseError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("s"), Err(DurationParseError::Invalid(_))));
        assert!(matches!(
            parse("1.2.3s"),
            Err(DurationParseError::Invalid(_))
        ));
        assert!(matches!(parse("-1s"), Err(DurationParseError::Invalid(_))));
        assert!(matches!(
            parse("99999999999999999999999d"),
            Err(DurationParseError::Invalid(_) | DurationParseError::Overflow(_))
        ));
        assert!(matches!(
            parse("999999999999999d"),
            Err(DurationParseError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "30s", "500ms", "2m", "90s", "1h", "250us", "7ns", "1d", "0s",
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }
}
