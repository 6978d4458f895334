//! The market: every book by (instrument_id, publisher_id), fed record by record or by slices of
//! raw DBN records, emitting one BBO row per F_LAST (the only moments a book may be read).
use crate::book::{AnomalyLog, Bbo, Book};
use crate::hash::IdMap;
use crate::record::{
    u16_at, u32_at, u64_at, Mbo, ACTION_ADD, ACTION_CANCEL, ACTION_FILL, ACTION_MODIFY, F_LAST, MBO_RECORD_SIZE, UNDEF_PRICE,
};

/// Default bound of the anomaly log between two drains.
pub const DEFAULT_ANOMALY_LOG_CAPACITY: usize = 100_000;

/// Size in bytes of one [`EventRow`] as written by [`Market::apply_slice`].
pub const EVENT_ROW_SIZE: usize = 80;

/// `EventRow::state` bit: best bid above best ask.
pub const STATE_CROSSED: u32 = 1;
/// `EventRow::state` bit: best bid equals best ask.
pub const STATE_LOCKED: u32 = 2;
/// `EventRow::state` bit: the BBO differs from the book's previous F_LAST.
pub const STATE_TOP_CHANGED: u32 = 4;

/// How many records ahead `apply_slice` asks for a record's order index bucket, and then for the
/// order itself (once its bucket should be cached): hints that let the lookups of the records in
/// between overlap with memory, instead of each waiting for its own.
const PREFETCH_INDEX_AHEAD: usize = 16;
const PREFETCH_ORDER_AHEAD: usize = 8;
/// No book to prefetch for (a record of another action, or of a book not seen yet).
const NO_BOOK: u32 = u32::MAX;

/// The book key: instrument id and publisher id in one integer.
#[inline(always)]
pub fn book_key(instrument_id: u32, publisher_id: u16) -> u64 {
    ((instrument_id as u64) << 16) | publisher_id as u64
}

/// What a consumer learns at one F_LAST: which book, when, and its BBO then.
/// Encoded little-endian in this field order (80 bytes); absent sides have price UNDEF_PRICE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Index of the F_LAST record within the applied slice.
    pub index: u64,
    pub ts_event: u64,
    pub ts_recv: u64,
    pub bid_price: i64,
    pub ask_price: i64,
    pub bid_size: u64,
    pub ask_size: u64,
    pub instrument_id: u32,
    pub publisher_id: u32,
    pub bid_count: u32,
    pub ask_count: u32,
    pub sequence: u32,
    pub state: u32,
}

impl EventRow {
    /// Decodes one row from the first [`EVENT_ROW_SIZE`] bytes of `b` (the inverse of the encoding).
    #[inline]
    pub fn decode(b: &[u8]) -> EventRow {
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

    fn encode_into(&self, out: &mut Vec<u8>) {
        for v in [self.index, self.ts_event, self.ts_recv] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.bid_price, self.ask_price] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.bid_size, self.ask_size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.instrument_id, self.publisher_id, self.bid_count, self.ask_count, self.sequence, self.state] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A broken invariant found by an audited [`Market::apply_slice`], at the F_LAST record `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityViolation {
    pub index: u64,
    pub instrument_id: u32,
    pub publisher_id: u16,
    pub sequence: u32,
    pub message: String,
}

/// Where [`Market::apply_slice`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceEnd {
    /// Index one past the last applied record.
    pub end: usize,
    /// True when no book is inside an event (all views are consistent).
    pub consistent: bool,
}

/// All books of a feed.
#[derive(Clone, Debug)]
pub struct Market {
    books: Vec<Book>,
    index: IdMap<u64, u32>,
    last_key: u64,
    last_book: u32,
    /// Records applied so far (also the next record's priority stamp).
    pub records_applied: u64,
    /// Books currently inside an event.
    pending: u32,
    pub log: AnomalyLog,
}

impl Default for Market {
    fn default() -> Self {
        Market::new()
    }
}

impl Market {
    pub fn new() -> Market {
        Market {
            books: Vec::new(),
            index: IdMap::default(),
            last_key: u64::MAX,
            last_book: 0,
            records_applied: 0,
            pending: 0,
            log: AnomalyLog::new(DEFAULT_ANOMALY_LOG_CAPACITY),
        }
    }

    /// Books in order of first appearance.
    pub fn books(&self) -> &[Book] {
        &self.books
    }

    /// The book for a key, if records for it were seen.
    pub fn book(&self, instrument_id: u32, publisher_id: u16) -> Option<&Book> {
        self.index.get(&book_key(instrument_id, publisher_id)).map(|&i| &self.books[i as usize])
    }

    /// The book for a key, mutable (restoring a replica's saved state; records go through `apply`).
    pub fn book_mut(&mut self, instrument_id: u32, publisher_id: u16) -> Option<&mut Book> {
        let i = *self.index.get(&book_key(instrument_id, publisher_id))?;
        Some(&mut self.books[i as usize])
    }

    /// True when no book is inside an event.
    pub fn is_consistent(&self) -> bool {
        self.pending == 0
    }

    /// The index of the book of `key`, if records for it were seen (the last book's is kept at hand).
    #[inline(always)]
    fn known_book(&self, key: u64) -> Option<u32> {
        if key == self.last_key {
            Some(self.last_book)
        } else {
            self.index.get(&key).copied()
        }
    }

    #[inline]
    fn book_index(&mut self, m: &Mbo) -> usize {
        let key = book_key(m.instrument_id, m.publisher_id);
        let i = match self.known_book(key) {
            Some(i) => i,
            None => {
                self.books.push(Book::new(m.instrument_id, m.publisher_id));
                let i = (self.books.len() - 1) as u32;
                self.index.insert(key, i);
                i
            }
        };
        self.last_key = key;
        self.last_book = i;
        i as usize
    }

    /// The book of the record at `at` if it names an order (`A`, `C`, `M`, `F`) of a known book,
    /// after asking for that order's index bucket to be brought into the cache (a hint).
    #[inline(always)]
    fn prefetch_index(&self, buf: &[u8], stride: usize, at: usize) -> u32 {
        let b = &buf[at * stride..at * stride + MBO_RECORD_SIZE];
        if !matches!(b[38], ACTION_CANCEL | ACTION_MODIFY | ACTION_FILL | ACTION_ADD) {
            return NO_BOOK;
        }
        let Some(i) = self.known_book(book_key(u32_at(b, 4), u16_at(b, 2))) else {
            return NO_BOOK;
        };
        // An add's order is new: nothing of it rests yet to fetch.
        if !self.books[i as usize].prefetch_index(u64_at(b, 16)) || b[38] == ACTION_ADD {
            NO_BOOK
        } else {
            i
        }
    }

    /// Applies one record; returns the index of the book it went to.
    #[inline]
    pub fn apply(&mut self, m: &Mbo) -> usize {
        let i = self.book_index(m);
        let book = &mut self.books[i];
        let was_pending = book.in_event;
        book.apply(m, self.records_applied, &mut self.log);
        self.records_applied += 1;
        match (was_pending, book.in_event) {
            (false, true) => self.pending += 1,
            (true, false) => self.pending -= 1,
            _ => {}
        }
        i
    }

    /// Applies records `start..stop` of `buf` (records of `stride` bytes, MBO layout in the first 56),
    /// appending an [`EventRow`] to `events` for every F_LAST. With `complete_events`, keeps going past
    /// `stop` (at most `max_extra` records) until no book is inside an event, so views read after the
    /// call are consistent. With `audit`, checks the book's integrity after every F_LAST and appends
    /// each violation, with the record's index, to `audit`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_slice(
        &mut self,
        buf: &[u8],
        stride: usize,
        start: usize,
        stop: usize,
        complete_events: bool,
        max_extra: usize,
        events: &mut Vec<u8>,
        mut audit: Option<&mut Vec<IntegrityViolation>>,
    ) -> SliceEnd {
        assert!(stride >= MBO_RECORD_SIZE, "record stride below the MBO record size");
        let total = buf.len() / stride;
        let stop = stop.min(total);
        let hard_stop = if complete_events { stop.saturating_add(max_extra).min(total) } else { stop };
        let mut i = start;
        // Records before PREFETCH_ORDER_AHEAD past the start had no bucket asked for: nothing to fetch.
        let mut ahead = [NO_BOOK; PREFETCH_INDEX_AHEAD];
        while i < hard_stop {
            if i >= stop && self.pending == 0 {
                break;
            }
            // Hints only: the bucket of the order PREFETCH_INDEX_AHEAD records on, then (its book
            // remembered in `ahead`) the order PREFETCH_ORDER_AHEAD records on.
            let j = i + PREFETCH_INDEX_AHEAD;
            ahead[j % PREFETCH_INDEX_AHEAD] = if j < hard_stop { self.prefetch_index(buf, stride, j) } else { NO_BOOK };
            let k = i + PREFETCH_ORDER_AHEAD;
            let book = ahead[k % PREFETCH_INDEX_AHEAD];
            if book != NO_BOOK {
                self.books[book as usize].prefetch_order(u64_at(&buf[k * stride..], 16));
            }
            let m = Mbo::decode(&buf[i * stride..]);
            let b = self.apply(&m);
            if m.flags & F_LAST != 0 {
                let book = &mut self.books[b];
                let bbo = book.bbo();
                let row = event_row(i as u64, &m, &bbo, &book.last_bbo);
                book.last_bbo = bbo;
                row.encode_into(events);
                if let Some(violations) = audit.as_deref_mut() {
                    for message in book.check_integrity() {
                        violations.push(IntegrityViolation {
                            index: i as u64,
                            instrument_id: m.instrument_id,
                            publisher_id: m.publisher_id,
                            sequence: m.sequence,
                            message,
                        });
                    }
                }
            }
            i += 1;
        }
        SliceEnd { end: i.max(start), consistent: self.pending == 0 }
    }
}

fn event_row(index: u64, m: &Mbo, bbo: &Bbo, previous: &Bbo) -> EventRow {
    let (crossed, locked) = bbo.crossed_locked();
    let mut state = 0;
    if crossed {
        state |= STATE_CROSSED;
    }
    if locked {
        state |= STATE_LOCKED;
    }
    if bbo != previous {
        state |= STATE_TOP_CHANGED;
    }
    let (bid_price, bid_size, bid_count) = bbo.bid.map_or((UNDEF_PRICE, 0, 0), |l| (l.price, l.size, l.count));
    let (ask_price, ask_size, ask_count) = bbo.ask.map_or((UNDEF_PRICE, 0, 0), |l| (l.price, l.size, l.count));
    EventRow {
        index,
        ts_event: m.ts_event,
        ts_recv: m.ts_recv,
        bid_price,
        ask_price,
        bid_size,
        ask_size,
        instrument_id: m.instrument_id,
        publisher_id: m.publisher_id as u32,
        bid_count,
        ask_count,
        sequence: m.sequence,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_row_round_trip() {
        let row = EventRow {
            index: 7,
            ts_event: 1,
            ts_recv: 2,
            bid_price: 64_830_000_000,
            ask_price: UNDEF_PRICE,
            bid_size: 5,
            ask_size: 0,
            instrument_id: 432669,
            publisher_id: 1,
            bid_count: 3,
            ask_count: 0,
            sequence: 94_225_061,
            state: STATE_TOP_CHANGED,
        };
        let mut out = Vec::new();
        row.encode_into(&mut out);
        assert_eq!(out.len(), EVENT_ROW_SIZE);
        assert_eq!(EventRow::decode(&out), row);
    }
}
