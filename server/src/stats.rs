//! Book statistics as a typed, immutable Python object (`mbostream_core._engine.BookStats`).
use pyo3::prelude::*;

use mbostream_book::Book;

/// Statistics of one book at the moment it was read (what `Market.stats` returns).
///
/// `sequence`, `ts_event` and `ts_recv` are those of the book's last F_LAST (the moment its views
/// describe); the `last_*` ones those of the last record applied, F_LAST or not.
#[pyclass(module = "mbostream_core._engine", name = "BookStats", frozen, get_all)]
pub struct PyBookStats {
    /// Records applied to this book.
    record_count: u64,
    /// Records with F_LAST applied to this book (events).
    event_count: u64,
    last_sequence: u32,
    last_ts_event: u64,
    last_ts_recv: u64,
    sequence: u32,
    ts_event: u64,
    ts_recv: u64,
    /// Last `T` record: price (UNDEF_PRICE before any trade), size, aggressor side, ts_event.
    last_trade_price: i64,
    last_trade_size: u32,
    last_trade_side: String,
    last_trade_ts: u64,
    /// Sum of `T` sizes.
    volume: u64,
    trade_count: u64,
    fill_count: u64,
    /// Side-`N` fills (auction prints).
    unattributed_fills: u64,
    /// Fills larger than the resting order's displayed size (iceberg refills).
    fills_over_displayed: u64,
    clear_count: u64,
    /// Crossed/locked state at the last F_LAST and since when (ts_event), with interval totals.
    crossed: bool,
    locked: bool,
    crossed_since: u64,
    locked_since: u64,
    crossed_intervals: u64,
    locked_intervals: u64,
    crossed_ns: u64,
    locked_ns: u64,
    /// Resting orders and price levels a side now.
    order_count: usize,
    bid_levels: usize,
    ask_levels: usize,
    /// True while the book is inside an event (a record without F_LAST was its last).
    in_event: bool,
}

impl PyBookStats {
    pub fn of(b: &Book) -> Self {
        let s = &b.stats;
        PyBookStats {
            record_count: s.record_count,
            event_count: s.event_count,
            last_sequence: s.last_sequence,
            last_ts_event: s.last_ts_event,
            last_ts_recv: s.last_ts_recv,
            sequence: s.consistent_sequence,
            ts_event: s.consistent_ts_event,
            ts_recv: s.consistent_ts_recv,
            last_trade_price: s.last_trade_price,
            last_trade_size: s.last_trade_size,
            last_trade_side: (s.last_trade_side as char).to_string(),
            last_trade_ts: s.last_trade_ts,
            volume: s.volume,
            trade_count: s.trade_count,
            fill_count: s.fill_count,
            unattributed_fills: s.unattributed_fills,
            fills_over_displayed: s.fills_over_displayed,
            clear_count: s.clear_count,
            crossed: s.crossed,
            locked: s.locked,
            crossed_since: s.crossed_since,
            locked_since: s.locked_since,
            crossed_intervals: s.crossed_intervals,
            locked_intervals: s.locked_intervals,
            crossed_ns: s.crossed_ns,
            locked_ns: s.locked_ns,
            order_count: b.order_count(),
            bid_levels: b.bids.len(),
            ask_levels: b.asks.len(),
            in_event: b.in_event,
        }
    }
}

#[pymethods]
impl PyBookStats {
    fn __repr__(&self) -> String {
        format!(
            "BookStats(record_count={}, event_count={}, sequence={}, ts_event={}, order_count={}, bid_levels={}, ask_levels={}, in_event={})",
            self.record_count,
            self.event_count,
            self.sequence,
            self.ts_event,
            self.order_count,
            self.bid_levels,
            self.ask_levels,
            if self.in_event { "True" } else { "False" },
        )
    }
}
