//! Deterministic pseudo-random numbers: xoshiro256** seeded through splitmix64.
//!
//! Only integer arithmetic and IEEE-exact float operations (`+ - * /` and `sqrt`) are used, never
//! libm's `ln`/`exp`/`powf`, whose last bits differ between platforms: a seed gives the same
//! stream, and so the same file, on every machine and toolchain.

pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the four state words from splitmix64, as the xoshiro authors recommend.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [splitmix(), splitmix(), splitmix(), splitmix()] }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` for `n > 0` (Lemire's multiply-shift; the bias is below 2^-40 here).
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    #[inline]
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Approximately standard normal: Irwin–Hall sum of four uniforms, rescaled to unit variance.
    pub(crate) fn normal(&mut self) -> f64 {
        let sum = self.unit() + self.unit() + self.unit() + self.unit();
        (sum - 2.0) * 3f64.sqrt()
    }

    /// Geometric with p = 1/2 (P(k) = 2^-(k+1)), capped at `cap`.
    #[inline]
    pub(crate) fn halving(&mut self, cap: u32) -> u32 {
        self.next_u64().trailing_zeros().min(cap)
    }

    /// Discrete Pareto with tail index 1: P(X >= k) = 1/k, in `1..=cap`.
    #[inline]
    pub(crate) fn pareto_1(&mut self, cap: u32) -> u32 {
        let u = 1.0 - self.unit();
        (1.0 / u).min(f64::from(cap)) as u32
    }

    /// Discrete Pareto with tail index 4/3: P(X >= k) = k^(-4/3), in `1..=cap`.
    #[inline]
    pub(crate) fn pareto_4_3(&mut self, cap: u32) -> u32 {
        let u = 1.0 - self.unit();
        let root = u.sqrt();
        (1.0 / (root * root.sqrt())).min(f64::from(cap)) as u32
    }
}
