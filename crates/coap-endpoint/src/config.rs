//! Endpoint configuration: RFC 7252 transmission parameters, limits and
//! observe/block-wise knobs. Every field states its default.

use std::time::Duration;

/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME with the default parameters.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 §4.8.2 NON_LIFETIME with the default parameters.
pub const NON_LIFETIME: Duration = Duration::from_secs(145);
/// RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT with the default parameters.
pub const MAX_TRANSMIT_WAIT: Duration = Duration::from_secs(93);

/// When the endpoint sends an empty ACK for a confirmable request the
/// application has not answered yet (turning a piggybacked response into a
/// separate one, RFC 7252 §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckTimeout {
    /// Never send an early ACK: always piggyback, however long the
    /// application takes (Hono's `timeoutToAck = -1`). The client may
    /// retransmit meanwhile; duplicates are absorbed.
    Never,
    /// ACK at once, then send the response as a separate CON (`0`).
    Immediately,
    /// ACK if the application has not answered within this time (`N` ms).
    After(Duration),
}

impl AckTimeout {
    /// Hono's `timeoutToAck` convention: negative → [`AckTimeout::Never`],
    /// 0 → [`AckTimeout::Immediately`], N → after N milliseconds.
    pub fn from_millis(millis: i64) -> AckTimeout {
        match u64::try_from(millis) {
            Err(_) => AckTimeout::Never,
            Ok(0) => AckTimeout::Immediately,
            Ok(ms) => AckTimeout::After(Duration::from_millis(ms)),
        }
    }
}

/// Configuration of an [`Endpoint`](crate::Endpoint).
///
/// Build with `EndpointConfig::default()` and change fields. Limits exist
/// for everything a peer can make the endpoint remember.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// ACK_TIMEOUT, the initial retransmission timeout. Default 2 s.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the initial timeout is drawn from
    /// `[ack_timeout, ack_timeout * factor]`. Default 1.5.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT. Default 4.
    pub max_retransmit: u32,
    /// How long a CON's message id is remembered for deduplication.
    /// Default [`EXCHANGE_LIFETIME`] (247 s).
    pub exchange_lifetime: Duration,
    /// How long a NON's message id is remembered. Default [`NON_LIFETIME`] (145 s).
    pub non_lifetime: Duration,
    /// Deduplication entries kept per peer (oldest evicted). Default 256.
    pub max_dedup_per_peer: usize,
    /// Deduplication entries kept in total (oldest evicted). Default 200 000.
    pub max_dedup_total: usize,
    /// Default early-ACK policy for confirmable requests; overridable per
    /// request. Default `After(1 s)` (below ACK_TIMEOUT, so a client does
    /// not retransmit needlessly).
    pub default_ack_timeout: AckTimeout,
    /// Requests handed to the application and not yet answered, in total;
    /// beyond it new requests get 5.03. Default 10 000.
    pub max_pending_requests: usize,
    /// The same per peer. Default 64.
    pub max_pending_per_peer: usize,
    /// Outgoing confirmable messages queued per peer behind the one in
    /// flight (NSTART = 1). Notifications beyond it drop the oldest queued
    /// notification (counted); requests are refused. Default 32.
    pub max_queued_per_peer: usize,
    /// How long a client request waits for a separate response after the
    /// empty ACK, or for any response to a NON request. Default
    /// [`MAX_TRANSMIT_WAIT`] (93 s).
    pub response_timeout: Duration,
    /// Every this many notifications of a relation at least one is sent
    /// confirmable, even if the application asked for NON. Default 20.
    pub observe_con_every: u32,
    /// At least one confirmable notification per relation this often
    /// (RFC 7641 §4.5: at least every 24 hours). Default 24 h.
    pub observe_con_interval: Duration,
    /// Observe relations in total; beyond it a registration is answered
    /// without Observe (no relation). Default 100 000.
    pub max_relations: usize,
    /// Observe relations per peer. Default 64.
    pub max_relations_per_peer: usize,
    /// Largest block size the endpoint sends or accepts (16…1024, a power
    /// of two). Default 1024.
    pub max_block_size: usize,
    /// Largest request body accepted through Block1 and largest response
    /// body reassembled through Block2 by the client side. Default 4 MiB.
    pub max_body_size: usize,
    /// Memory for Block1 reassemblies in progress, all peers together.
    /// When a block would exceed it, the least recently touched transfer
    /// of the peer holding the most bytes is evicted (its next block gets
    /// 4.08); only a body larger than this on its own gets 5.03. Default
    /// 64 MiB.
    pub max_reassembly_memory: usize,
    /// Block1 reassemblies in progress in total. A new transfer beyond it
    /// evicts the least recently touched transfer of the peer holding the
    /// most (its next block gets 4.08), so one peer cannot lock the others
    /// out. Default 4096.
    pub max_reassemblies: usize,
    /// Block1 reassemblies in progress per peer (at least 1). A peer that
    /// starts one more loses its own least recently touched transfer.
    /// Default 16.
    pub max_reassemblies_per_peer: usize,
    /// An unfinished Block1 transfer is forgotten this long after its last
    /// block. Default [`EXCHANGE_LIFETIME`].
    pub reassembly_lifetime: Duration,
    /// Responses kept for Block2 follow-up requests (entries). Default 1024.
    pub block_cache_entries: usize,
    /// Memory of that cache. Default 32 MiB.
    pub block_cache_memory: usize,
    /// How long a cached body serves follow-ups. Default 120 s.
    pub block_cache_lifetime: Duration,
    /// Accept RFC 8974 extended tokens up to this many bytes; `None`
    /// rejects tokens over 8 bytes with RST (RFC 7252). Default `None`.
    pub extended_tokens: Option<usize>,
    /// Seed of the generator for message ids, tokens and jitter; `None`
    /// draws one from the process's hash randomness. Set it in tests for
    /// determinism. Default `None`.
    pub rng_seed: Option<u64>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: EXCHANGE_LIFETIME,
            non_lifetime: NON_LIFETIME,
            max_dedup_per_peer: 256,
            max_dedup_total: 200_000,
            default_ack_timeout: AckTimeout::After(Duration::from_secs(1)),
            max_pending_requests: 10_000,
            max_pending_per_peer: 64,
            max_queued_per_peer: 32,
            response_timeout: MAX_TRANSMIT_WAIT,
            observe_con_every: 20,
            observe_con_interval: Duration::from_secs(24 * 3600),
            max_relations: 100_000,
            max_relations_per_peer: 64,
            max_block_size: 1024,
            max_body_size: 4 * 1024 * 1024,
            max_reassembly_memory: 64 * 1024 * 1024,
            max_reassemblies: 4096,
            max_reassemblies_per_peer: 16,
            reassembly_lifetime: EXCHANGE_LIFETIME,
            block_cache_entries: 1024,
            block_cache_memory: 32 * 1024 * 1024,
            block_cache_lifetime: Duration::from_secs(120),
            extended_tokens: None,
            rng_seed: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_block_size` is not a power of two in 16…1024.
    #[error("max_block_size {0} is not a power of two in 16..=1024")]
    BlockSize(usize),
    /// `ack_random_factor` is below 1 or not finite.
    #[error("ack_random_factor {0} must be finite and >= 1")]
    RandomFactor(f64),
    /// `ack_timeout` is zero.
    #[error("ack_timeout must be positive")]
    AckTimeout,
    /// `observe_con_every` is zero.
    #[error("observe_con_every must be at least 1")]
    ConEvery,
    /// A duration field is longer than [`MAX_CONFIG_DURATION`] (deadlines
    /// computed from it could overflow the clock).
    #[error("{0} is longer than the maximum of one year")]
    DurationTooLong(&'static str),
    /// `max_retransmit` (with `ack_timeout` and `ack_random_factor`) makes
    /// the last retransmission timeout longer than [`MAX_CONFIG_DURATION`].
    #[error("max_retransmit {0} makes the retransmission timeout exceed one year")]
    MaxRetransmit(u32),
    /// `max_reassemblies_per_peer` is zero.
    #[error("max_reassemblies_per_peer must be at least 1")]
    ReassembliesPerPeer,
}

/// The longest duration any [`EndpointConfig`] field (or the largest
/// retransmission timeout it implies) may have: one year. Deadlines are
/// `now + duration`, which must not overflow the clock.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl EndpointConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let size = self.max_block_size;
        if !(16..=1024).contains(&size) || !size.is_power_of_two() {
            return Err(ConfigError::BlockSize(size));
        }
        if !self.ack_random_factor.is_finite() || self.ack_random_factor < 1.0 {
            return Err(ConfigError::RandomFactor(self.ack_random_factor));
        }
        if self.ack_timeout.is_zero() {
            return Err(ConfigError::AckTimeout);
        }
        if self.observe_con_every == 0 {
            return Err(ConfigError::ConEvery);
        }
        if self.max_reassemblies_per_peer == 0 {
            return Err(ConfigError::ReassembliesPerPeer);
        }
        let default_ack = match self.default_ack_timeout {
            AckTimeout::After(delay) => delay,
            AckTimeout::Never | AckTimeout::Immediately => Duration::ZERO,
        };
        for (name, value) in [
            ("ack_timeout", self.ack_timeout),
            ("exchange_lifetime", self.exchange_lifetime),
            ("non_lifetime", self.non_lifetime),
            ("response_timeout", self.response_timeout),
            ("observe_con_interval", self.observe_con_interval),
            ("reassembly_lifetime", self.reassembly_lifetime),
            ("block_cache_lifetime", self.block_cache_lifetime),
            ("default_ack_timeout", default_ack),
        ] {
            if value > MAX_CONFIG_DURATION {
                return Err(ConfigError::DurationTooLong(name));
            }
        }
        // The last retransmission waits ack_timeout * factor * 2^max_retransmit.
        let longest = self.ack_timeout.as_secs_f64()
            * self.ack_random_factor
            * 2f64.powi(i32::try_from(self.max_retransmit).unwrap_or(i32::MAX));
        if !longest.is_finite() || longest > MAX_CONFIG_DURATION.as_secs_f64() {
            return Err(ConfigError::MaxRetransmit(self.max_retransmit));
        }
        Ok(())
    }

    /// SZX of `max_block_size`.
    pub(crate) fn max_szx(&self) -> u8 {
        // 16 << szx == size; validated to be a power of two in range.
        (self.max_block_size.trailing_zeros().saturating_sub(4)).min(6) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hono_timeout_to_ack_convention() {
        assert_eq!(AckTimeout::from_millis(-1), AckTimeout::Never);
        assert_eq!(AckTimeout::from_millis(0), AckTimeout::Immediately);
        assert_eq!(
            AckTimeout::from_millis(500),
            AckTimeout::After(Duration::from_millis(500))
        );
    }

    #[test]
    fn block_size_must_be_a_power_of_two_in_range() {
        for (size, szx) in [(16, 0), (64, 2), (1024, 6)] {
            let config = EndpointConfig {
                max_block_size: size,
                ..EndpointConfig::default()
            };
            assert!(config.validate().is_ok());
            assert_eq!(config.max_szx(), szx);
        }
        for size in [0, 8, 100, 2048] {
            let config = EndpointConfig {
                max_block_size: size,
                ..EndpointConfig::default()
            };
            assert_eq!(config.validate(), Err(ConfigError::BlockSize(size)));
        }
        let config = EndpointConfig {
            ack_random_factor: 0.5,
            ..EndpointConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn durations_that_could_overflow_the_clock_are_refused() {
        let config = EndpointConfig {
            exchange_lifetime: Duration::MAX,
            ..EndpointConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::DurationTooLong("exchange_lifetime"))
        );
        let config = EndpointConfig {
            default_ack_timeout: AckTimeout::After(Duration::MAX),
            ..EndpointConfig::default()
        };
        assert!(config.validate().is_err());
        let config = EndpointConfig {
            max_retransmit: 64,
            ..EndpointConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::MaxRetransmit(64)));
        let config = EndpointConfig {
            ack_random_factor: 1e300,
            ..EndpointConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(EndpointConfig::default().validate().is_ok());
    }

    #[test]
    fn a_peer_must_be_allowed_one_reassembly() {
        let config = EndpointConfig {
            max_reassemblies_per_peer: 0,
            ..EndpointConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ReassembliesPerPeer));
        let config = EndpointConfig {
            max_reassemblies_per_peer: 1,
            ..EndpointConfig::default()
        };
        assert!(config.validate().is_ok());
    }
}
