//! The engine's 80-byte event rows (one per F_LAST), read back from the buffer it returns.

pub use mbostream_book::{EventRow, EVENT_ROW_SIZE};

#[inline(always)]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[inline(always)]
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Decodes one row from the first [`EVENT_ROW_SIZE`] bytes of `b` (layout of `EventRow`).
#[inline]
pub fn decode_event_row(b: &[u8]) -> EventRow {
    let b = &b[..EVENT_ROW_SIZE];
    EventRow {
        index: u64_at(b, 0),
        ts_event: u64_at(b, 8),
        ts_recv: u64_at(b, 16),
        bid_price: u64_at(b, 24) as i64,
        ask_price: u64_at(b, 32) as i64,
        bid_size: u64_at(b, 40),
        ask_size: u64_at(b, 48),
        instrument_id: u32_at(b, 56),
        publisher_id: u32_at(b, 60),
        bid_count: u32_at(b, 64),
        ask_count: u32_at(b, 68),
        sequence: u32_at(b, 72),
        state: u32_at(b, 76),
    }
}
