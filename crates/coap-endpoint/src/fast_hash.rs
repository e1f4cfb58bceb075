//! A keyed hash for the endpoint's maps (peer → state, (peer, mid) →
//! exchange, ids → requests).
//!
//! std's `RandomState` (SipHash-1-3) cost ~300 instructions per `Peer` key
//! and a request looked its peer up several times: 3.3k instructions per
//! request over UDP (16% of the EMQX gateway's total), 4.4k over DTLS.
//! This hasher folds each written word into the state with one 64×64→128-bit
//! multiply (high and low halves xored), keyed by two per-map random words
//! (taken from a `RandomState`, which is seeded by the OS once per process
//! and advanced per instance), so the bucket of a key cannot be predicted
//! by a remote peer that does not know the key. The maps keyed by
//! attacker-chosen data are bounded by [`crate::EndpointConfig`] anyway.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

/// A `HashMap` with the endpoint's keyed fast hash.
pub(crate) type FastMap<K, V> = HashMap<K, V, FastHashBuilder>;

/// An empty [`FastMap`] with its own random key.
pub(crate) fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(FastHashBuilder::default())
}

/// An odd constant with well-mixed bits (π's fractional part).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    // Truncations intended: low and high halves of the product.
    #[allow(clippy::cast_possible_truncation)]
    let (low, high) = (full as u64, (full >> 64) as u64);
    low ^ high
}

/// Builds [`FastHasher`]s with this map's random key.
#[derive(Clone, Debug)]
pub(crate) struct FastHashBuilder {
    seed: u64,
    finish_key: u64,
}

impl Default for FastHashBuilder {
    fn default() -> Self {
        let random = RandomState::new();
        FastHashBuilder {
            seed: random.hash_one(0x5eed_u64),
            finish_key: random.hash_one(0xf1_u64) | 1,
        }
    }
}

impl BuildHasher for FastHashBuilder {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            state: self.seed,
            finish_key: self.finish_key,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct FastHasher {
    state: u64,
    finish_key: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.state = folded_multiply(self.state ^ word, MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
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

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        // Truncation intended: the low half, then the high half.
        #[allow(clippy::cast_possible_truncation)]
        self.mix(i as u64);
        self.mix((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.finish_key)
    }
}

/// A map keyed by a value that already is a keyed hash (the dedup and
/// observe indexes' 64-bit keys): the key is its own hash.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

/// See [`PassThrough`]; only `write_u64` is meant to be used.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Peer;
    use std::collections::HashSet;
    use std::net::SocketAddr;

    #[test]
    fn peers_spread_over_buckets() {
        let build = FastHashBuilder::default();
        // 64k ports of one address, and 64k addresses of one port: the low
        // 16 bits (what a 64k-bucket table uses) should rarely collide.
        let by_port: HashSet<u64> = (0..=u16::MAX)
            .map(|port| {
                build.hash_one(Peer::new(SocketAddr::from(([192, 0, 2, 1], port)))) & 0xffff
            })
            .collect();
        let by_addr: HashSet<u64> = (0..=u16::MAX)
            .map(|n| {
                let [a, b] = n.to_be_bytes();
                build.hash_one(Peer::new(SocketAddr::from(([10, 0, a, b], 5684)))) & 0xffff
            })
            .collect();
        // The top 7 bits are what hashbrown compares in its control bytes.
        let top: HashSet<u64> = (0..=255u16)
            .map(|port| build.hash_one(Peer::new(SocketAddr::from(([192, 0, 2, 1], port)))) >> 57)
            .collect();
        // A random function fills ~63% of 65536 buckets with 65536 keys.
        assert!(by_port.len() > 38_000, "{}", by_port.len());
        assert!(by_addr.len() > 38_000, "{}", by_addr.len());
        assert!(top.len() > 100, "{}", top.len());
    }

    #[test]
    fn keys_differ_between_maps() {
        let peer = Peer::new(SocketAddr::from(([127, 0, 0, 1], 5684)));
        let build = FastHashBuilder::default();
        let a = build.hash_one(&peer);
        let b = FastHashBuilder::default().hash_one(&peer);
        assert_ne!(a, b);
        assert_eq!(a, build.hash_one(peer.clone()));
    }
}
