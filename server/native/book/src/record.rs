//! The MBO record as it lies in a DBN file: 56 little-endian bytes (DBN v1, v2 and v3 agree).

/// Size in bytes of one MBO record without `ts_out`.
pub const MBO_RECORD_SIZE: usize = 56;
/// DBN `rtype` of MBO records.
pub const RTYPE_MBO: u8 = 0xA0;
/// DBN header `length` of an MBO record, in 4-byte words.
pub const MBO_LENGTH_WORDS: u8 = 14;

/// Sentinel for "no price" (i64::MAX).
pub const UNDEF_PRICE: i64 = i64::MAX;

/// Last record of an event for its instrument: the book is consistent after it.
pub const F_LAST: u8 = 1 << 7;
/// Top-of-book message: replaces the whole side, not an individual order.
pub const F_TOB: u8 = 1 << 6;
/// Record from a snapshot (replay or live), not from the live feed.
pub const F_SNAPSHOT: u8 = 1 << 5;
/// Record carries aggregated price-level information.
pub const F_MBP: u8 = 1 << 4;
/// `ts_recv` is inaccurate (for snapshots: the snapshot generation time).
pub const F_BAD_TS_RECV: u8 = 1 << 3;
/// An unrecoverable gap was seen in the channel: the book may be wrong.
pub const F_MAYBE_BAD_BOOK: u8 = 1 << 2;

pub const ACTION_ADD: u8 = b'A';
pub const ACTION_CANCEL: u8 = b'C';
pub const ACTION_MODIFY: u8 = b'M';
pub const ACTION_CLEAR: u8 = b'R';
pub const ACTION_TRADE: u8 = b'T';
pub const ACTION_FILL: u8 = b'F';
pub const ACTION_NONE: u8 = b'N';

pub const SIDE_BID: u8 = b'B';
pub const SIDE_ASK: u8 = b'A';
pub const SIDE_NONE: u8 = b'N';

/// One decoded MBO record (field names as in Databento's `MboMsg`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mbo {
    pub publisher_id: u16,
    pub instrument_id: u32,
    pub ts_event: u64,
    pub order_id: u64,
    pub price: i64,
    pub size: u32,
    pub flags: u8,
    pub channel_id: u8,
    pub action: u8,
    pub side: u8,
    pub ts_recv: u64,
    pub ts_in_delta: i32,
    pub sequence: u32,
}

#[inline(always)]
pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline(always)]
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
#[inline(always)]
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl Mbo {
    /// Decodes one record from the first 56 bytes of `b` (the header's length/rtype are not checked).
    #[inline(always)]
    pub fn decode(b: &[u8]) -> Mbo {
        let b = &b[..MBO_RECORD_SIZE];
        Mbo {
            publisher_id: u16_at(b, 2),
            instrument_id: u32_at(b, 4),
            ts_event: u64_at(b, 8),
            order_id: u64_at(b, 16),
            price: u64_at(b, 24) as i64,
            size: u32_at(b, 32),
            flags: b[36],
            channel_id: b[37],
            action: b[38],
            side: b[39],
            ts_recv: u64_at(b, 40),
            ts_in_delta: u32_at(b, 48) as i32,
            sequence: u32_at(b, 52),
        }
    }

    /// Appends the 56-byte DBN encoding of this record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(MBO_LENGTH_WORDS);
        out.push(RTYPE_MBO);
        out.extend_from_slice(&self.publisher_id.to_le_bytes());
        out.extend_from_slice(&self.instrument_id.to_le_bytes());
        out.extend_from_slice(&self.ts_event.to_le_bytes());
        out.extend_from_slice(&self.order_id.to_le_bytes());
        out.extend_from_slice(&self.price.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.push(self.flags);
        out.push(self.channel_id);
        out.push(self.action);
        out.push(self.side);
        out.extend_from_slice(&self.ts_recv.to_le_bytes());
        out.extend_from_slice(&self.ts_in_delta.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let m = Mbo {
            publisher_id: 1,
            instrument_id: 432669,
            ts_event: 1_758_742_200_000_860_311,
            order_id: 8_058_566_314_544,
            price: 64_830_000_000,
            size: 7,
            flags: F_LAST,
            channel_id: 26,
            action: ACTION_ADD,
            side: SIDE_ASK,
            ts_recv: 1_758_742_200_001_385_399,
            ts_in_delta: 17528,
            sequence: 94_225_061,
        };
        let mut out = Vec::new();
        m.encode_into(&mut out);
        assert_eq!(out.len(), MBO_RECORD_SIZE);
        assert_eq!(Mbo::decode(&out), m);
    }
}
