//! A keyed hash for the session table (socket address → session).
//!
//! std's `RandomState` (SipHash-1-3) cost ~300 instructions per lookup of a
//! `SocketAddr` (one `write` per field), and an established session's
//! record is looked up four times per request/response pair. This hasher
//! folds each written word into the state with one 64×64→128-bit multiply
//! (high and low halves xored), keyed by two per-table random words, so the
//! bucket of an address cannot be predicted without the key. Session
//! entries exist only after the cookie exchange proved the address, which
//! limits what an attacker can insert anyway.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// An odd constant with well-mixed bits (π's fractional part).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    // Truncations intended: low and high halves of the product.
    #[allow(clippy::cast_possible_truncation)]
    let (low, high) = (full as u64, (full >> 64) as u64);
    low ^ high
}

/// Builds [`AddrHasher`]s with this table's random key.
#[derive(Clone, Debug)]
pub(crate) struct AddrHashBuilder {
    seed: u64,
    finish_key: u64,
}

impl Default for AddrHashBuilder {
    fn default() -> Self {
        // RandomState is seeded from the OS once per process and advanced
        // per instance: a fresh, unpredictable key per table.
        let random = RandomState::new();
        AddrHashBuilder {
            seed: random.hash_one(0x5eed_u64),
            finish_key: random.hash_one(0xf1_u64) | 1,
        }
    }
}

impl BuildHasher for AddrHashBuilder {
    type Hasher = AddrHasher;

    fn build_hasher(&self) -> AddrHasher {
        AddrHasher {
            state: self.seed,
            finish_key: self.finish_key,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct AddrHasher {
    state: u64,
    finish_key: u64,
}

impl AddrHasher {
    fn mix(&mut self, word: u64) {
        self.state = folded_multiply(self.state ^ word, MULTIPLIER);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        if let Some(dst) = word.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        // The length goes into the top byte: "ab" and "ab\0" differ.
        self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.finish_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;

    #[test]
    fn addresses_spread_over_buckets() {
        let build = AddrHashBuilder::default();
        // 64k ports of one address, and 64k addresses of one port: the low
        // 16 bits (what a 64k-bucket table uses) should rarely collide.
        let by_port: HashSet<u64> = (0..=u16::MAX)
            .map(|port| build.hash_one(SocketAddr::from(([192, 0, 2, 1], port))) & 0xffff)
            .collect();
        let by_addr: HashSet<u64> = (0..=u16::MAX)
            .map(|n| {
                let [a, b] = n.to_be_bytes();
                build.hash_one(SocketAddr::from(([10, 0, a, b], 5684))) & 0xffff
            })
            .collect();
        // A random function fills ~63% of 65536 buckets with 65536 keys.
        assert!(by_port.len() > 38_000, "{}", by_port.len());
        assert!(by_addr.len() > 38_000, "{}", by_addr.len());
    }

    #[test]
    fn keys_differ_between_tables() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 5684));
        let a = AddrHashBuilder::default().hash_one(addr);
        let b = AddrHashBuilder::default().hash_one(addr);
        assert_ne!(a, b);
        assert_eq!(a, a);
    }
}
