//! A small seeded generator for message ids, tokens and retransmission
//! jitter. Not cryptographic: tokens are only "not trivially guessable"
//! (RFC 7252 §5.3.1) and the seed is injectable so that simulations are
//! deterministic.

use std::hash::{BuildHasher, Hasher};

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and every seed gives a
/// full-period sequence.
#[derive(Debug, Clone)]
pub(crate) struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub(crate) fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    /// A seed from the process's hash randomness (no clock read).
    pub(crate) fn entropy_seed() -> u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        hasher.finish()
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
