//! Maps keyed by integers: a fast, deterministic hasher for book keys ([`IdMap`]) and the order
//! index of a book ([`OrderIndex`]), whose buckets can be fetched ahead of their lookups.
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

/// A slot value meaning "no entry" in an [`OrderIndex`] bucket.
const VACANT: u32 = u32::MAX;

/// One bucket of an [`OrderIndex`]: 16 bytes, four to a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Bucket {
    key: u64,
    slot: u32,
}

const VACANT_BUCKET: Bucket = Bucket { key: 0, slot: VACANT };

/// Order id → slab slot: open addressing with linear probing, at most 5/8 full.
///
/// A table of our own rather than `HashMap` for one reason: [`OrderIndex::prefetch`]. Where an
/// id's bucket lives is known before the lookup, so the market can ask for it records ahead
/// (`Market::apply_slice`), and the lookup finds it in the cache instead of waiting on memory, which
/// is most of what a lookup costs once other work has taken the cache. Removal shifts the
/// following entries back (no tombstones), so probes stay as short as the load allows.
#[derive(Clone, Debug)]
pub struct OrderIndex {
    buckets: Vec<Bucket>,
    /// 64 minus log2 of the bucket count: the hash's top bits pick the home bucket.
    shift: u32,
    len: usize,
}

impl Default for OrderIndex {
    fn default() -> Self {
        OrderIndex::new()
    }
}

impl OrderIndex {
    const MIN_BUCKETS: usize = 16;

    pub fn new() -> OrderIndex {
        OrderIndex::with_buckets(Self::MIN_BUCKETS)
    }

    fn with_buckets(n: usize) -> OrderIndex {
        debug_assert!(n.is_power_of_two());
        OrderIndex { buckets: vec![VACANT_BUCKET; n], shift: 64 - n.trailing_zeros(), len: 0 }
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing: the product's top bits are well mixed for sequential and strided ids.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of buckets (what a lookup may have to fetch from memory).
    #[inline(always)]
    pub fn table_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    /// The bucket holding `key`, if present.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let b = self.buckets[i];
            if b.slot == VACANT {
                return None;
            }
            if b.key == key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    pub fn get(&self, key: u64) -> Option<u32> {
        self.find(key).map(|i| self.buckets[i].slot)
    }

    /// Maps `key` to `slot` (replacing any previous slot); `slot` must not be `u32::MAX`.
    pub fn insert(&mut self, key: u64, slot: u32) {
        assert!(slot != VACANT, "slot u32::MAX is reserved");
        if (self.len + 1) * 8 > self.buckets.len() * 5 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let b = &mut self.buckets[i];
            if b.slot == VACANT {
                *b = Bucket { key, slot };
                self.len += 1;
                return;
            }
            if b.key == key {
                b.slot = slot;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Unmaps `key`; returns the slot it had.
    pub fn remove(&mut self, key: u64) -> Option<u32> {
        let mut hole = self.find(key)?;
        let slot = self.buckets[hole].slot;
        let mask = self.mask();
        // Backward-shift deletion: every entry after the hole, up to the next vacant bucket, moves
        // into the hole if its home bucket is not between the hole and where it sits.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let b = self.buckets[j];
            if b.slot == VACANT {
                break;
            }
            let home = self.home(b.key);
            let distance_now = j.wrapping_sub(home) & mask;
            let distance_at_hole = j.wrapping_sub(hole) & mask;
            if distance_now >= distance_at_hole {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = VACANT_BUCKET;
        self.len -= 1;
        Some(slot)
    }

    /// Empties the index, keeping its buckets.
    pub fn clear(&mut self) {
        if self.len != 0 {
            self.buckets.fill(VACANT_BUCKET);
            self.len = 0;
        }
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, OrderIndex::with_buckets(self.buckets.len() * 2));
        for b in old.buckets.into_iter().filter(|b| b.slot != VACANT) {
            self.insert(b.key, b.slot);
        }
    }

    /// Asks the CPU to bring `key`'s home bucket into the cache (a hint: no effect on the contents).
    #[inline(always)]
    pub fn prefetch(&self, key: u64) {
        prefetch(&self.buckets[self.home(key)]);
    }
}

/// Asks the CPU to bring the cache line holding `value` (and the next one when `T` crosses into it)
/// into the cache; a no-op where the architecture has no prefetch instruction we use.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = value as *const T as *const i8;
        let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        // SAFETY: prefetch is a hint that never faults, whatever the address.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch(first, _MM_HINT_T0);
            if (first as usize) >> 6 != (last as usize) >> 6 {
                _mm_prefetch(last, _MM_HINT_T0);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Keys whose home buckets collide and wrap around the end of a small table.
    #[test]
    fn removal_keeps_every_other_key_reachable_across_clusters_and_the_wrap() {
        let mut index = OrderIndex::new();
        let n = OrderIndex::MIN_BUCKETS;
        // Keys homed in the last two buckets, so their cluster wraps to the front.
        let keys: Vec<u64> = (0u64..100_000).filter(|&k| index.home(k) >= n - 2).take(9).collect();
        for (s, &k) in keys.iter().enumerate() {
            index.insert(k, s as u32);
        }
        assert_eq!(index.buckets.len(), n, "9 of 16: no growth yet");
        for (removed, &k) in keys.iter().enumerate() {
            assert_eq!(index.remove(k), Some(removed as u32));
            assert_eq!(index.get(k), None);
            for (s, &other) in keys.iter().enumerate().skip(removed + 1) {
                assert_eq!(index.get(other), Some(s as u32), "key {other} lost after removing {k}");
            }
        }
        assert!(index.is_empty());
        assert!(index.buckets.iter().all(|b| b.slot == VACANT));
    }

    #[test]
    fn behaves_as_a_map_under_random_inserts_removes_and_clears() {
        // A deterministic xorshift stream; ids drawn from a small range so inserts replace and
        // removes hit, and from a wide one so tables grow.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut index = OrderIndex::new();
        let mut model: HashMap<u64, u32> = HashMap::new();
        for step in 0..200_000u32 {
            let r = next();
            let key = if r & 1 == 0 { r >> 54 } else { r >> 40 };
            match (r >> 8) % 10 {
                0..=4 => {
                    index.insert(key, step);
                    model.insert(key, step);
                }
                5..=8 => assert_eq!(index.remove(key), model.remove(&key)),
                _ if step % 50_000 == 0 => {
                    index.clear();
                    model.clear();
                }
                _ => assert_eq!(index.get(key), model.get(&key).copied()),
            }
            assert_eq!(index.len(), model.len());
        }
        for (&k, &v) in &model {
            assert_eq!(index.get(k), Some(v));
        }
        assert!(index.len() * 8 <= index.buckets.len() * 5);
    }
}
