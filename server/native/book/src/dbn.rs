//! DBN record streams: walking the record headers of a buffer of mixed records.
//!
//! Every DBN record starts with a header whose first byte is the record's length in 4-byte words
//! and whose second is its `rtype`. A file of the MBO schema may still hold other records (symbol
//! mappings, system and error messages); the engine reads MBO records only, packed 56 bytes apart.
use std::fmt;

use crate::record::{MBO_RECORD_SIZE, RTYPE_MBO};

/// A record header that cannot be walked past: the buffer is not a DBN record stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbnError {
    /// A header says the record is 0 bytes long, at byte `at` of the buffer.
    ZeroLength { at: usize },
    /// An MBO record (rtype 0xA0) shorter than an MBO record, at byte `at`.
    ShortMbo { at: usize, len: usize },
}

impl fmt::Display for DbnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbnError::ZeroLength { at } => write!(f, "corrupt DBN record header at byte {at}: length 0"),
            DbnError::ShortMbo { at, len } => write!(f, "MBO record at byte {at} is only {len} bytes"),
        }
    }
}

impl std::error::Error for DbnError {}

/// What [`compact_mbo`] found besides the MBO records it copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Records of every other rtype, as `(rtype, count)` in rtype order (only those seen).
    pub others: Vec<(u8, u64)>,
    /// Bytes walked: the start of a trailing partial record (or the buffer's length), which the
    /// caller carries into its next chunk.
    pub consumed: usize,
}

/// Appends the MBO records of `data` (a buffer of mixed DBN records) to `out`, 56 bytes each,
/// walking each header's length; counts the other records by rtype.
///
/// On `Err` part of the records may have been appended.
pub fn compact_mbo(data: &[u8], out: &mut Vec<u8>) -> Result<Compacted, DbnError> {
    let mut others = [0u64; 256];
    let mut pos = 0;
    while pos + 2 <= data.len() {
        let len = data[pos] as usize * 4;
        if len == 0 {
            return Err(DbnError::ZeroLength { at: pos });
        }
        if pos + len > data.len() {
            break;
        }
        let rtype = data[pos + 1];
        if rtype == RTYPE_MBO {
            if len < MBO_RECORD_SIZE {
                return Err(DbnError::ShortMbo { at: pos, len });
            }
            // Newer DBN versions may append fields: the engine's layout is the first 56 bytes.
            out.extend_from_slice(&data[pos..pos + MBO_RECORD_SIZE]);
        } else {
            others[rtype as usize] += 1;
        }
        pos += len;
    }
    let others = others.iter().enumerate().filter(|(_, &c)| c > 0).map(|(r, &c)| (r as u8, c)).collect();
    Ok(Compacted { others, consumed: pos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Mbo, ACTION_ADD, F_LAST, SIDE_BID};

    const RTYPE_SYMBOL_MAPPING: u8 = 0x16;
    const RTYPE_SYSTEM: u8 = 0x17;

    fn mbo(order_id: u64) -> Vec<u8> {
        let m = Mbo { order_id, price: 64_830_000_000, size: 3, action: ACTION_ADD, side: SIDE_BID, flags: F_LAST, ..Mbo::default() };
        let mut out = Vec::new();
        m.encode_into(&mut out);
        out
    }

    fn other(rtype: u8, words: u8) -> Vec<u8> {
        let mut r = vec![0xEE; words as usize * 4];
        r[0] = words;
        r[1] = rtype;
        r
    }

    #[test]
    fn mbo_records_are_packed_and_the_others_counted() {
        let data = [mbo(1), other(RTYPE_SYMBOL_MAPPING, 44), mbo(2), other(RTYPE_SYSTEM, 80), other(RTYPE_SYSTEM, 80), mbo(3)].concat();
        let mut out = Vec::new();
        let c = compact_mbo(&data, &mut out).unwrap();
        assert_eq!(out, [mbo(1), mbo(2), mbo(3)].concat());
        assert_eq!(c.others, vec![(RTYPE_SYMBOL_MAPPING, 1), (RTYPE_SYSTEM, 2)]);
        assert_eq!(c.consumed, data.len());
    }

    #[test]
    fn a_trailing_partial_record_is_left_for_the_next_chunk() {
        let whole = [mbo(1), mbo(2)].concat();
        for cut in [whole.len() - 1, MBO_RECORD_SIZE + 1, MBO_RECORD_SIZE + 2, MBO_RECORD_SIZE] {
            let mut out = Vec::new();
            let c = compact_mbo(&whole[..cut], &mut out).unwrap();
            assert_eq!(c.consumed, MBO_RECORD_SIZE, "cut at {cut}");
            assert_eq!(out, mbo(1));
        }
        let mut out = Vec::new();
        assert_eq!(compact_mbo(&whole[..1], &mut out).unwrap().consumed, 0);
    }

    #[test]
    fn longer_mbo_records_keep_their_first_56_bytes() {
        let mut long = mbo(7);
        long[0] = 16;
        long.extend_from_slice(&[0xAB; 8]);
        let mut out = Vec::new();
        let c = compact_mbo(&[long.clone(), mbo(8)].concat(), &mut out).unwrap();
        assert_eq!(out, [&long[..MBO_RECORD_SIZE], &mbo(8)].concat());
        assert_eq!(c.consumed, 64 + MBO_RECORD_SIZE);
    }

    #[test]
    fn headers_that_cannot_be_walked_are_errors_with_their_offset() {
        let mut out = Vec::new();
        let zero = [mbo(1), vec![0, RTYPE_MBO, 0, 0]].concat();
        let err = compact_mbo(&zero, &mut out).unwrap_err();
        assert_eq!(err, DbnError::ZeroLength { at: MBO_RECORD_SIZE });
        assert_eq!(err.to_string(), "corrupt DBN record header at byte 56: length 0");

        let short = [other(RTYPE_SYSTEM, 2), other(RTYPE_MBO, 4)].concat();
        let err = compact_mbo(&short, &mut out).unwrap_err();
        assert_eq!(err, DbnError::ShortMbo { at: 8, len: 16 });
        assert_eq!(err.to_string(), "MBO record at byte 8 is only 16 bytes");
    }
}
