//! The engine's 80-byte event rows (one per F_LAST), read back from the buffer it returns.

pub use mbostream_book::{EventRow, EVENT_ROW_SIZE};

/// Decodes one row from the first [`EVENT_ROW_SIZE`] bytes of `b` (layout of `EventRow`).
#[inline]
pub fn decode_event_row(b: &[u8]) -> EventRow {
    EventRow::decode(b)
}
