//! The message-layer settings both binaries accept from flags, environment
//! and file, checked the same way: RFC 7252's ACK_TIMEOUT,
//! ACK_RANDOM_FACTOR and MAX_RETRANSMIT, and the DTLS idle timeout. Clap
//! checks flags, not values from the environment or the TOML file, so the
//! binaries check the merged configuration with these and exit with the
//! one-line error.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Largest `max_retransmit` accepted (2^20 × ACK_TIMEOUT is already far
/// beyond any useful give-up time).
pub const MAX_RETRANSMIT_LIMIT: u32 = 20;

/// The longest `ack_timeout` accepted.
const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(3600);

/// Shortest and longest `dtls_idle_timeout` accepted.
pub const DTLS_IDLE_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(7 * 24 * 3600);

/// The RFC 7252 transmission parameters, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transmission {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
}

impl Transmission {
    /// The three parameters, or a one-line error naming the key.
    pub fn checked(
        ack_timeout: Duration,
        ack_random_factor: f64,
        max_retransmit: u32,
    ) -> Result<Transmission, String> {
        if ack_timeout.is_zero() || ack_timeout > MAX_ACK_TIMEOUT {
            return Err(format!(
                "ack_timeout {ack_timeout:?}: must be more than 0 and at most 1h"
            ));
        }
        let factor = ack_random_factor;
        if !factor.is_finite() || !(1.0..=10.0).contains(&factor) {
            return Err(format!(
                "ack_random_factor {factor}: must be a number from 1 to 10"
            ));
        }
        if max_retransmit > MAX_RETRANSMIT_LIMIT {
            return Err(format!(
                "max_retransmit {max_retransmit}: must be at most {MAX_RETRANSMIT_LIMIT}"
            ));
        }
        // The last retransmission waits ack_timeout × factor × 2^n; the
        // endpoint refuses more than a year.
        let longest = ack_timeout.as_secs_f64() * factor * f64::from(1u32 << max_retransmit);
        if longest > 365.0 * 24.0 * 3600.0 {
            return Err(format!(
                "max_retransmit {max_retransmit} with ack_timeout {ack_timeout:?} × {factor}: \
                 the last retransmission timeout would exceed one year"
            ));
        }
        Ok(Transmission {
            ack_timeout,
            ack_random_factor: factor,
            max_retransmit,
        })
    }
}

/// `timeout` if it is within [`DTLS_IDLE_TIMEOUT_RANGE`], else a one-line
/// error naming the key.
pub fn checked_dtls_idle_timeout(timeout: Duration) -> Result<Duration, String> {
    if DTLS_IDLE_TIMEOUT_RANGE.contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!(
            "dtls_idle_timeout {timeout:?}: must be from 10s to 7d"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let second = Duration::from_secs(1);
        assert_eq!(
            Transmission::checked(second * 2, 1.5, 4),
            Ok(Transmission {
                ack_timeout: second * 2,
                ack_random_factor: 1.5,
                max_retransmit: 4
            })
        );
        assert!(Transmission::checked(second, 1.0, MAX_RETRANSMIT_LIMIT).is_ok());
        for (ack_timeout, factor, max_retransmit, key) in [
            (Duration::ZERO, 1.5, 4, "ack_timeout"),
            (second * 7200, 1.5, 4, "ack_timeout"),
            (second, 0.9, 4, "ack_random_factor"),
            (second, f64::NAN, 4, "ack_random_factor"),
            (second, f64::INFINITY, 4, "ack_random_factor"),
            (second, 1.0, MAX_RETRANSMIT_LIMIT + 1, "max_retransmit"),
            (second * 3600, 10.0, 20, "max_retransmit"),
        ] {
            let error = Transmission::checked(ack_timeout, factor, max_retransmit).unwrap_err();
            assert!(error.starts_with(key), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
        assert_eq!(checked_dtls_idle_timeout(second * 10), Ok(second * 10));
        assert!(checked_dtls_idle_timeout(second * 9).is_err());
        assert!(checked_dtls_idle_timeout(second * 7 * 24 * 3600 + second).is_err());
    }
}
