//! The `depth` measurement: top-N levels of every book, sampled by the sink on an interval.
//!
//! ```text
//! depth,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_px_00=…i,bid_sz_00=…i,bid_ct_00=…i,…,ask_px_00=…i,…,bid_levels=…i,ask_levels=…i,sequence=…i,ts_event=…i,ts_recv=…i <time>
//! ```
//!
//! A sample is a [`BookDepth`] per book, taken between replay steps (when every book is
//! consistent). A book that did not change since its previous sample (same sequence, `ts_event`
//! and record count) is not written again; the point time follows the same per-book rule as the
//! other measurements ([`crate::SeriesClock`]), so two samples of one book never collide.
use mbostream_book::market::book_key;

use crate::clock::{MAX_POINT_TIME, REWIND_WINDOW_NS};
use crate::format::{tags_of, Formatter, MissingSymbols};
use crate::number::{push_int_field, push_u64};

/// One aggregated level: `(price, size, count)`.
pub type Level = (i64, u64, u32);

/// The state of one book at a sample, best levels first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookDepth {
    pub instrument_id: u32,
    pub publisher_id: u16,
    /// Sequence, `ts_event` and `ts_recv` of the book's last F_LAST.
    pub sequence: u32,
    pub ts_event: u64,
    pub ts_recv: u64,
    /// Records applied to the book so far (tells two samples of an unchanged book apart).
    pub record_count: u64,
    /// Levels per side in the whole book (the sample holds at most N of them).
    pub bid_levels: u32,
    pub ask_levels: u32,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// What decides whether a book changed since its last sample.
pub(crate) type DepthState = (u32, u64, u64);

/// Bytes reserved per level of a `depth` line (three fields of about 20 bytes).
const LEVEL_RESERVE: usize = 64;

impl Formatter {
    /// Appends one `depth` point (at most `levels` levels a side) per book of `books` that
    /// changed since its previous sample; returns the number of points.
    ///
    /// Checks every instrument first: on `Err` nothing was appended and no state moved.
    pub fn depth(&mut self, books: &[BookDepth], levels: usize, out: &mut Vec<u8>) -> Result<usize, MissingSymbols> {
        self.check_ids(books.iter().map(|b| b.instrument_id))?;
        let mut n = 0;
        for b in books {
            let key = book_key(b.instrument_id, b.publisher_id);
            let state = (b.sequence, b.ts_event, b.record_count);
            if self.depth_state.get(&key) == Some(&state) || !(0 < b.ts_event && b.ts_event <= MAX_POINT_TIME - REWIND_WINDOW_NS) {
                continue;
            }
            self.depth_state.insert(key, state);
            let time = self.depth_clock.stamp(key, b.ts_event);
            out.reserve(128 + 2 * levels * LEVEL_RESERVE);
            out.extend_from_slice(b"depth");
            out.extend_from_slice(tags_of(&mut self.book_tags, &self.symbols, b.instrument_id, b.publisher_id));
            out.push(b' ');
            for (side, side_levels) in [(b"bid" as &[u8], &b.bids), (b"ask", &b.asks)] {
                for (i, &(price, size, count)) in side_levels.iter().take(levels).enumerate() {
                    push_level_field(out, side, b"_px_", i, price);
                    out.push(b',');
                    push_level_field(out, side, b"_sz_", i, size as i64);
                    out.push(b',');
                    push_level_field(out, side, b"_ct_", i, count as i64);
                    out.push(b',');
                }
            }
            out.extend_from_slice(b"bid_levels=");
            push_int_field(out, b.bid_levels as i64);
            out.extend_from_slice(b",ask_levels=");
            push_int_field(out, b.ask_levels as i64);
            out.extend_from_slice(b",sequence=");
            push_int_field(out, b.sequence as i64);
            out.extend_from_slice(b",ts_event=");
            push_int_field(out, b.ts_event as i64);
            out.extend_from_slice(b",ts_recv=");
            push_int_field(out, b.ts_recv as i64);
            out.push(b' ');
            push_u64(out, time);
            out.push(b'\n');
            n += 1;
        }
        Ok(n)
    }
}

/// `bid_px_07=…i`: the level index is written with two digits (levels are at most 99).
#[inline]
fn push_level_field(out: &mut Vec<u8>, side: &[u8], name: &[u8], index: usize, value: i64) {
    out.extend_from_slice(side);
    out.extend_from_slice(name);
    out.push(b'0' + (index / 10 % 10) as u8);
    out.push(b'0' + (index % 10) as u8);
    out.push(b'=');
    push_int_field(out, value);
}
