//! Python bindings for the book engine: `Market` (every book of a feed) and the anomaly kinds.
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::book::BOOK_STATE_WORDS;
use std::collections::HashSet;

use mbostream_book::{book_key, Book, EventRow, Market, ANOMALY_KIND_COUNT, EVENT_ROW_SIZE};

use crate::{bytes_of, lineproto, stats};

type LevelTuple = (i64, u64, u32);
type OrderTuple = (u64, u32);
type LevelWithOrders = (i64, u64, u32, Vec<OrderTuple>);
/// An integrity violation: `(index, instrument_id, publisher_id, sequence, message)`.
type ViolationTuple = (u64, u32, u16, u32, String);
/// What `apply` returns: `(end, consistent, event_rows, violations, books)`; `books`, when asked
/// for, the books with an event row, each once in the order of its first (as [`distinct_books`]).
type Applied<'py> = (usize, bool, Bound<'py, PyBytes>, Vec<ViolationTuple>, Vec<u64>);

/// Distinct books [`distinct_books`] looks up in a list before it keeps a set of them.
const DISTINCT_BOOKS_LIST_MAX: usize = 16;

/// The distinct books of `rows` (event rows, [`EVENT_ROW_SIZE`] bytes each), each once in the order
/// of its first row, keyed as [`book_key`]: the books a replay step changed. The hub found them in
/// the rows with numpy, a few vectorised passes and their temporaries: ~20 µs a 1,000-record step
/// (1% of a core at 500k records/s), against 1-2 µs here. A pass over the rows, so only for the
/// callers that ask (the replay, a gateway's ingest), not for bulk applies.
fn distinct_books(rows: &[u8]) -> Vec<u64> {
    let mut found: Vec<u64> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new(); // past DISTINCT_BOOKS_LIST_MAX of them
    let mut last = None;
    for row in rows.chunks_exact(EVENT_ROW_SIZE).map(EventRow::decode) {
        // The row widens the record's u16 publisher id to a u32: narrowing it back loses nothing.
        let key = book_key(row.instrument_id, row.publisher_id as u16);
        if last == Some(key) {
            continue;
        }
        last = Some(key);
        let new = if found.len() < DISTINCT_BOOKS_LIST_MAX {
            !found.contains(&key)
        } else {
            if seen.is_empty() {
                seen.extend(found.iter().copied());
            }
            seen.insert(key)
        };
        if new {
            found.push(key);
        }
    }
    found
}

/// All books of a feed, fed with raw DBN MBO records.
#[pyclass(module = "mbostream_core._engine", name = "Market")]
struct PyMarket {
    inner: Market,
}

impl PyMarket {
    fn book(&self, instrument_id: u32, publisher_id: u16) -> PyResult<&Book> {
        self.inner.book(instrument_id, publisher_id).ok_or_else(|| {
            PyKeyError::new_err(format!("no book for instrument_id={instrument_id} publisher_id={publisher_id}"))
        })
    }
}

fn levels(book: &Book, is_bid: bool, depth: usize) -> Vec<LevelTuple> {
    let n = if depth == 0 { usize::MAX } else { depth };
    book.ladder(is_bid).iter_best_first().take(n).map(|l| (l.price, l.size, l.count)).collect()
}

fn levels_with_orders(book: &Book, is_bid: bool, depth: usize) -> Vec<LevelWithOrders> {
    let n = if depth == 0 { usize::MAX } else { depth };
    book.ladder(is_bid)
        .iter_best_first()
        .take(n)
        .map(|l| (l.price, l.size, l.count, book.queue(l).map(|o| (o.order_id, o.size)).collect()))
        .collect()
}

#[pymethods]
impl PyMarket {
    #[new]
    fn new() -> Self {
        PyMarket { inner: Market::new() }
    }

    /// Applies records `start..stop` of a buffer of DBN MBO records of `stride` bytes.
    ///
    /// Returns `(end, consistent, events, violations, books)`: where it stopped, whether every book
    /// is outside an event, the 80-byte event rows (one per F_LAST), with `audit` every integrity
    /// violation found after an F_LAST as `(index, instrument_id, publisher_id, sequence, message)`,
    /// and with `books` the books with a row, each once (`instrument_id << 16 | publisher_id`, in
    /// the order of its first row; empty without). The GIL is released while applying.
    #[pyo3(signature = (buf, stride=MBO_RECORD_SIZE, start=0, stop=None, complete_events=true, max_extra=1<<20, audit=false, books=false))]
    #[allow(clippy::too_many_arguments)]
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        buf: PyBuffer<u8>,
        stride: usize,
        start: usize,
        stop: Option<usize>,
        complete_events: bool,
        max_extra: usize,
        audit: bool,
        books: bool,
    ) -> PyResult<Applied<'py>> {
        if stride < MBO_RECORD_SIZE {
            return Err(PyValueError::new_err(format!("stride {stride} is below the MBO record size")));
        }
        let data = bytes_of(&buf)?;
        let total = data.len() / stride;
        let stop = stop.unwrap_or(total);
        let market = &mut self.inner;
        let (end, events, violations, books) = py.detach(|| {
            let mut events = Vec::with_capacity(stop.saturating_sub(start).min(1 << 16) * EVENT_ROW_SIZE);
            let mut violations = Vec::new();
            let sink = if audit { Some(&mut violations) } else { None };
            let end = market.apply_slice(data, stride, start, stop, complete_events, max_extra, &mut events, sink);
            let books = if books { distinct_books(&events) } else { Vec::new() };
            (end, events, violations, books)
        });
        let violations = violations
            .into_iter()
            .map(|v| (v.index, v.instrument_id, v.publisher_id, v.sequence, v.message))
            .collect();
        Ok((end.end, end.consistent, PyBytes::new(py, &events), violations, books))
    }

    /// Records applied so far.
    #[getter]
    fn records_applied(&self) -> u64 {
        self.inner.records_applied
    }

    /// True when no book is inside an event.
    #[getter]
    fn consistent(&self) -> bool {
        self.inner.is_consistent()
    }

    /// `(instrument_id, publisher_id)` of every book, in order of first appearance.
    fn books(&self) -> Vec<(u32, u16)> {
        self.inner.books().iter().map(|b| (b.instrument_id, b.publisher_id)).collect()
    }

    /// Best bid and offer as `((price, size, count) | None, (price, size, count) | None)`.
    fn bbo(&self, instrument_id: u32, publisher_id: u16) -> PyResult<(Option<LevelTuple>, Option<LevelTuple>)> {
        let b = self.book(instrument_id, publisher_id)?.bbo();
        Ok((b.bid.map(|l| (l.price, l.size, l.count)), b.ask.map(|l| (l.price, l.size, l.count))))
    }

    /// The top `depth` levels a side of every book, with what tells samples apart: one `depth`
    /// sample of the storage sink. Read it between replay steps (every book consistent).
    fn depth_table(&self, depth: usize) -> lineproto::PyDepthTable {
        let books = self
            .inner
            .books()
            .iter()
            .map(|b| {
                let s = &b.stats;
                mbostream_lineproto::BookDepth {
                    instrument_id: b.instrument_id,
                    publisher_id: b.publisher_id,
                    sequence: s.consistent_sequence,
                    ts_event: s.consistent_ts_event,
                    ts_recv: s.consistent_ts_recv,
                    record_count: s.record_count,
                    bid_levels: b.bids.len() as u32,
                    ask_levels: b.asks.len() as u32,
                    bids: levels(b, true, depth.max(1)),
                    asks: levels(b, false, depth.max(1)),
                }
            })
            .collect();
        lineproto::PyDepthTable::new(books)
    }

    /// Aggregated levels `(price, size, count)`, best first, `depth` per side (0: all).
    #[pyo3(signature = (instrument_id, publisher_id, depth=0))]
    fn depth(&self, instrument_id: u32, publisher_id: u16, depth: usize) -> PyResult<(Vec<LevelTuple>, Vec<LevelTuple>)> {
        let b = self.book(instrument_id, publisher_id)?;
        Ok((levels(b, true, depth), levels(b, false, depth)))
    }

    /// Levels with their L3 queues `(price, size, count, [(order_id, size), ...])`, best first.
    #[pyo3(signature = (instrument_id, publisher_id, depth=0))]
    fn depth_with_orders(
        &self,
        instrument_id: u32,
        publisher_id: u16,
        depth: usize,
    ) -> PyResult<(Vec<LevelWithOrders>, Vec<LevelWithOrders>)> {
        let b = self.book(instrument_id, publisher_id)?;
        Ok((levels_with_orders(b, true, depth), levels_with_orders(b, false, depth)))
    }

    /// The queue `[(order_id, size), ...]` of one level in priority order, or None without that level.
    fn level_queue(&self, instrument_id: u32, publisher_id: u16, is_bid: bool, price: i64) -> PyResult<Option<Vec<OrderTuple>>> {
        let b = self.book(instrument_id, publisher_id)?;
        Ok(b.ladder(is_bid).get(price).map(|l| b.queue(l).map(|o| (o.order_id, o.size)).collect()))
    }

    /// A resting order as `(price, size, is_bid, priority)`, or None.
    fn order(&self, instrument_id: u32, publisher_id: u16, order_id: u64) -> PyResult<Option<(i64, u32, bool, u64)>> {
        let b = self.book(instrument_id, publisher_id)?;
        Ok(b.order(order_id).map(|o| (o.price, o.size, o.is_bid, o.priority)))
    }

    /// Statistics of one book as a typed, immutable `BookStats`.
    fn stats(&self, instrument_id: u32, publisher_id: u16) -> PyResult<stats::PyBookStats> {
        Ok(stats::PyBookStats::of(self.book(instrument_id, publisher_id)?))
    }

    /// Anomaly counts of one book by kind name (every kind, zeros included).
    fn anomaly_counts(&self, instrument_id: u32, publisher_id: u16) -> PyResult<Vec<(&'static str, u64)>> {
        let b = self.book(instrument_id, publisher_id)?;
        Ok(mbostream_book::AnomalyKind::ALL.iter().map(|k| (k.name(), b.anomalies[*k as usize])).collect())
    }

    /// Takes the anomalies logged since the last call:
    /// `([(kind, record_index, instrument_id, publisher_id, order_id, sequence, ts_event, action, side)], dropped)`.
    #[allow(clippy::type_complexity)]
    fn take_anomalies(&mut self) -> (Vec<(&'static str, u64, u32, u16, u64, u32, u64, String, String)>, u64) {
        let log = &mut self.inner.log;
        let entries = std::mem::take(&mut log.entries)
            .into_iter()
            .map(|a| {
                (
                    a.kind.name(),
                    a.record_index,
                    a.instrument_id,
                    a.publisher_id,
                    a.order_id,
                    a.sequence,
                    a.ts_event,
                    (a.action as char).to_string(),
                    (a.side as char).to_string(),
                )
            })
            .collect();
        let dropped = std::mem::take(&mut log.dropped);
        (entries, dropped)
    }

    /// The book as MBO snapshot records (DBN bytes): `R` then `A` per order, F_SNAPSHOT, last F_LAST.
    fn snapshot<'py>(&self, py: Python<'py>, instrument_id: u32, publisher_id: u16, ts_recv: u64) -> PyResult<Bound<'py, PyBytes>> {
        let records = self.book(instrument_id, publisher_id)?.snapshot(ts_recv);
        let mut out = Vec::with_capacity(records.len() * MBO_RECORD_SIZE);
        for r in &records {
            r.encode_into(&mut out);
        }
        Ok(PyBytes::new(py, &out))
    }

    /// The two shared halves of a book's serialized `StreamBookResponse` (`{book, ts_out}` and
    /// `{books: [book]}`), cut to `depth` levels per side (0: all), with the L3 queues when
    /// `orders`; read between events. See `mbostream_wire::book`.
    #[pyo3(signature = (instrument_id, publisher_id, *, depth, orders, symbol, replay_sequence, ts_out))]
    #[allow(clippy::too_many_arguments)]
    fn book_payload<'py>(
        &self,
        py: Python<'py>,
        instrument_id: u32,
        publisher_id: u16,
        depth: usize,
        orders: bool,
        symbol: &str,
        replay_sequence: u64,
        ts_out: u64,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let book = self.book(instrument_id, publisher_id)?;
        let cut = mbostream_wire::BookCut { depth, orders, symbol, replay_sequence };
        let (single, multi) = mbostream_wire::encode_book_payload(book, &cut, ts_out);
        Ok((PyBytes::new(py, &single), PyBytes::new(py, &multi)))
    }

    /// The book's statistics and anomaly counts as bytes (little-endian words), to restore on a
    /// replica that rebuilds the book from its snapshot records.
    fn book_state<'py>(&self, py: Python<'py>, instrument_id: u32, publisher_id: u16) -> PyResult<Bound<'py, PyBytes>> {
        let words = self.book(instrument_id, publisher_id)?.state_words();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// Restores what `book_state` saved (after the book's snapshot records were applied).
    fn restore_book_state(&mut self, instrument_id: u32, publisher_id: u16, state: &[u8]) -> PyResult<()> {
        if state.len() != BOOK_STATE_WORDS * 8 {
            return Err(PyValueError::new_err(format!("a book state is {} bytes, got {}", BOOK_STATE_WORDS * 8, state.len())));
        }
        let mut words = [0u64; BOOK_STATE_WORDS];
        for (w, chunk) in words.iter_mut().zip(state.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        let book = self.inner.book_mut(instrument_id, publisher_id).ok_or_else(|| {
            PyKeyError::new_err(format!("no book for instrument_id={instrument_id} publisher_id={publisher_id}"))
        })?;
        if !book.restore_state_words(&words) {
            return Err(PyValueError::new_err("a book state of another layout version"));
        }
        Ok(())
    }

    /// Structural invariant violations of one book (empty when sound).
    fn check_integrity(&self, instrument_id: u32, publisher_id: u16) -> PyResult<Vec<String>> {
        Ok(self.book(instrument_id, publisher_id)?.check_integrity())
    }

    /// True while the book is inside an event (a record without F_LAST was its last).
    fn in_event(&self, instrument_id: u32, publisher_id: u16) -> PyResult<bool> {
        Ok(self.book(instrument_id, publisher_id)?.in_event)
    }
}

/// Names of every anomaly kind, in a stable order.
#[pyfunction]
fn anomaly_kinds() -> Vec<&'static str> {
    mbostream_book::AnomalyKind::ALL.iter().map(|k| k.name()).collect()
}

/// Adds `Market`, `BookStats` and the anomaly kinds to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMarket>()?;
    m.add_class::<stats::PyBookStats>()?;
    m.add_function(wrap_pyfunction!(anomaly_kinds, m)?)?;
    m.add("ANOMALY_KIND_COUNT", ANOMALY_KIND_COUNT)?;
    Ok(())
}
