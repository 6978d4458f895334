//! Decimal formatting of integers into a byte vector (the `i` field values and timestamps).
//!
//! Eight digits per 64-bit division, two per table lookup (as in `itoa`): formatting integers is
//! most of the work of a line, and a timestamp has nineteen digits.

const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

#[inline(always)]
fn pair(n: u32) -> [u8; 2] {
    let i = n as usize * 2;
    [DIGIT_PAIRS[i], DIGIT_PAIRS[i + 1]]
}

/// Appends exactly eight digits (leading zeros kept) of `v < 10^8`.
#[inline(always)]
fn push_eight(out: &mut Vec<u8>, v: u32) {
    let (high, low) = (v / 10_000, v % 10_000);
    let [a, b] = pair(high / 100);
    let [c, d] = pair(high % 100);
    let [e, f] = pair(low / 100);
    let [g, h] = pair(low % 100);
    out.extend_from_slice(&[a, b, c, d, e, f, g, h]);
}

/// Appends the digits of `v < 10^8` without leading zeros.
#[inline(always)]
fn push_small(out: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 8];
    let mut pos = buf.len();
    while v >= 100 {
        pos -= 2;
        buf[pos..pos + 2].copy_from_slice(&pair(v % 100));
        v /= 100;
    }
    if v >= 10 {
        pos -= 2;
        buf[pos..pos + 2].copy_from_slice(&pair(v));
    } else {
        pos -= 1;
        buf[pos] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[pos..]);
}

/// Appends the decimal digits of `v`, eight digits per step (timestamps have 19).
#[inline]
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    const E8: u64 = 100_000_000;
    if v < E8 {
        push_small(out, v as u32);
    } else if v < E8 * E8 {
        push_small(out, (v / E8) as u32);
        push_eight(out, (v % E8) as u32);
    } else {
        let high = v / E8;
        push_small(out, (high / E8) as u32);
        push_eight(out, (high % E8) as u32);
        push_eight(out, (v % E8) as u32);
    }
}

/// Appends the decimal digits of `v`, with a leading `-` when negative.
#[inline]
pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends `v` as a line-protocol integer field value (`123i`).
#[inline]
pub fn push_int_field(out: &mut Vec<u8>, v: i64) {
    push_i64(out, v);
    out.push(b'i');
}
