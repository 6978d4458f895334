//! Point timestamps: `ts_event`, nudged forward so that no two points of one book collide.
//!
//! InfluxDB keeps one point per (measurement, tag set, timestamp): a second write with the same
//! three replaces the first. Hundreds of MBO records of one book can share a `ts_event` (648 in the
//! CLX5 sample), so the point time of each book is kept strictly increasing in feed order:
//! `time = max(ts_event, previous time + 1)`. The nudge is a few nanoseconds at most in real data,
//! the exact `ts_event` is always stored as a field, and ordering a book's points by time gives
//! feed order back.
//!
//! A `ts_event` more than [`REWIND_WINDOW_NS`] behind the book's clock is a new timeline (the replay
//! looped or restarted): the clock starts again from it, so a replayed stretch of feed maps onto the
//! very same points as the first pass and overwrites them with identical values.

use mbostream_book::hash::IdMap;

/// Largest timestamp InfluxDB accepts (`math.MaxInt64 - 1` ns).
pub const MAX_POINT_TIME: u64 = (i64::MAX - 1) as u64;

/// How far `ts_event` may run behind a book's clock and still be nudged rather than restart it.
pub const REWIND_WINDOW_NS: u64 = 1_000_000_000;

/// Strictly increasing point times per key (a book, within one measurement).
#[derive(Default, Clone, Debug)]
pub struct SeriesClock {
    last: IdMap<u64, u64>,
}

impl SeriesClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The point time for an event of `key` at `ts` (at most [`MAX_POINT_TIME`]).
    #[inline]
    pub fn stamp(&mut self, key: u64, ts: u64) -> u64 {
        let last = self.last.entry(key).or_insert(u64::MAX);
        let time = if *last != u64::MAX && ts <= *last && *last - ts <= REWIND_WINDOW_NS {
            *last + 1
        } else {
            ts
        };
        *last = time;
        time
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.last.clear();
    }
}

/// The time base of a record: `ts_event`, or `ts_recv` when `ts_event` is undefined or out of
/// InfluxDB's range; None when neither is usable.
#[inline]
pub fn time_base(ts_event: u64, ts_recv: u64) -> Option<u64> {
    if ts_event <= MAX_POINT_TIME - REWIND_WINDOW_NS {
        Some(ts_event)
    } else if ts_recv <= MAX_POINT_TIME - REWIND_WINDOW_NS {
        Some(ts_recv)
    } else {
        None
    }
}
