//! A fast, deterministic hasher for integer keys (order ids, book keys).
//!
//! SipHash (std's default) costs more than the rest of an order lookup; order ids are not
//! attacker-chosen hash-flooding input in this setting, so a multiplicative hash is enough.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline(always)]
    fn write_u64(&mut self, x: u64) {
        // Fibonacci hashing; the rotation moves the well-mixed high bits down to the bucket bits.
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

/// `HashMap` keyed by integers with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
