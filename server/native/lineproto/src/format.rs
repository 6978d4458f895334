//! The three high-volume measurements, formatted straight from their buffers.
//!
//! ```text
//! mbo,action=A,instrument=CLX5,instrument_id=432669,publisher_id=1,side=B order_id=…i,price=…i,size=…i,flags=…i,sequence=…i,ts_event=…i,ts_recv=…i <time>
//! trades,instrument=CLX5,instrument_id=432669,publisher_id=1,side=A price=…i,size=…i,order_id=…i,sequence=…i,ts_event=…i,ts_recv=…i <time>
//! bbo,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_price=…i,bid_size=…i,bid_count=…i,ask_price=…i,ask_size=…i,ask_count=…i,spread=…i,mid=…i,crossed=…,locked=…,sequence=…i,ts_event=…i,ts_recv=…i <time>
//! ```
//!
//! Tags are written sorted by key (what InfluxDB stores, so it need not sort them). Unsigned
//! 64-bit values (`order_id`, timestamps) are written as the int64 with the same bits: InfluxDB 1.x
//! has no unsigned type, and no real value reaches 2^63 (UNDEF_TIMESTAMP reads back as -1).
//! Prices stay 1e-9 fixed-point integers; an absent side's price fields are omitted.

use mbostream_book::hash::IdMap;
use mbostream_book::market::{book_key, STATE_CROSSED, STATE_LOCKED, STATE_TOP_CHANGED};
use mbostream_book::record::{Mbo, ACTION_TRADE, MBO_RECORD_SIZE, UNDEF_PRICE};
use mbostream_book::{EventRow, EVENT_ROW_SIZE};

use crate::clock::{time_base, SeriesClock};
use crate::depth::DepthState;
use crate::escape::{push_code, push_tag_value};
use crate::number::{push_int_field, push_u64};

/// Bytes reserved per `mbo` line before formatting (a typical line is about 225).
const MBO_LINE_RESERVE: usize = 240;
/// Bytes reserved per `bbo` line (a typical line is about 300).
const BBO_LINE_RESERVE: usize = 320;

/// Instruments that appear in the input but have no symbol yet; nothing was formatted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSymbols(pub Vec<u32>);

/// The measurements with one point per MBO record it takes.
#[derive(Clone, Copy)]
enum RecordMeasurement {
    /// Every record.
    Mbo,
    /// `T` records only.
    Trades,
}

#[inline(always)]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Formats records and event rows into line protocol; holds the symbols and the point clocks.
#[derive(Default, Debug)]
pub struct Formatter {
    /// instrument_id → escaped symbol.
    pub(crate) symbols: IdMap<u32, Vec<u8>>,
    /// book key → `,instrument=…,instrument_id=…,publisher_id=…` (the book's tags, escaped).
    pub(crate) book_tags: IdMap<u64, Vec<u8>>,
    mbo_clock: SeriesClock,
    trade_clock: SeriesClock,
    bbo_clock: SeriesClock,
    pub(crate) depth_clock: SeriesClock,
    /// book key → what its last `depth` point showed (see [`crate::depth`]).
    pub(crate) depth_state: IdMap<u64, DepthState>,
    /// Records and rows skipped because neither `ts_event` nor `ts_recv` is a usable time.
    pub skipped: u64,
}

/// Returns the cached tag set of a book, rendering it on first use.
pub(crate) fn tags_of<'a>(
    cache: &'a mut IdMap<u64, Vec<u8>>,
    symbols: &IdMap<u32, Vec<u8>>,
    instrument_id: u32,
    publisher_id: u16,
) -> &'a [u8] {
    cache
        .entry(book_key(instrument_id, publisher_id))
        .or_insert_with(|| {
            let symbol = &symbols[&instrument_id];
            let mut t = Vec::with_capacity(48 + symbol.len());
            t.extend_from_slice(b",instrument=");
            t.extend_from_slice(symbol);
            t.extend_from_slice(b",instrument_id=");
            push_u64(&mut t, instrument_id as u64);
            t.extend_from_slice(b",publisher_id=");
            push_u64(&mut t, publisher_id as u64);
            t
        })
}

#[inline(always)]
fn push_field(out: &mut Vec<u8>, key: &[u8], value: i64) {
    out.extend_from_slice(key);
    push_int_field(out, value);
}

#[inline(always)]
fn push_time(out: &mut Vec<u8>, time: u64) {
    out.push(b' ');
    push_u64(out, time);
    out.push(b'\n');
}

impl Formatter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the symbol written as the `instrument` tag of `instrument_id`.
    pub fn set_symbol(&mut self, instrument_id: u32, symbol: &str) {
        let mut escaped = Vec::with_capacity(symbol.len());
        push_tag_value(&mut escaped, symbol);
        self.symbols.insert(instrument_id, escaped);
        self.book_tags
            .retain(|key, _| (key >> 16) as u32 != instrument_id);
    }

    /// The tag set of one book (`,instrument=…,instrument_id=…,publisher_id=…`).
    pub fn book_tags(
        &mut self,
        instrument_id: u32,
        publisher_id: u16,
    ) -> Result<&[u8], MissingSymbols> {
        if !self.symbols.contains_key(&instrument_id) {
            return Err(MissingSymbols(vec![instrument_id]));
        }
        Ok(tags_of(
            &mut self.book_tags,
            &self.symbols,
            instrument_id,
            publisher_id,
        ))
    }

    pub(crate) fn check_ids(&self, ids: impl Iterator<Item = u32>) -> Result<(), MissingSymbols> {
        let mut missing = Vec::new();
        let mut last = None;
        for id in ids {
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if !self.symbols.contains_key(&id) && !missing.contains(&id) {
                missing.push(id);
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MissingSymbols(missing))
        }
    }

    /// Appends one `mbo` point per record `start..stop`; returns the number of points.
    ///
    /// Checks every instrument first: on `Err` nothing was appended and no clock moved.
    pub fn mbo(
        &mut self,
        buf: &[u8],
        stride: usize,
        start: usize,
        stop: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, MissingSymbols> {
        self.record_points(RecordMeasurement::Mbo, buf, stride, (start, stop), out, |out, m| {
            push_field(out, b" order_id=", m.order_id as i64);
            push_field(out, b",price=", m.price);
            push_field(out, b",size=", m.size as i64);
            push_field(out, b",flags=", m.flags as i64);
            push_field(out, b",sequence=", m.sequence as i64);
            push_field(out, b",ts_event=", m.ts_event as i64);
            push_field(out, b",ts_recv=", m.ts_recv as i64);
        })
    }

    /// Appends one `trades` point per `T` record among `start..stop`; returns the number of points.
    pub fn trades(
        &mut self,
        buf: &[u8],
        stride: usize,
        start: usize,
        stop: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, MissingSymbols> {
        self.record_points(RecordMeasurement::Trades, buf, stride, (start, stop), out, |out, m| {
            push_field(out, b" price=", m.price);
            push_field(out, b",size=", m.size as i64);
            push_field(out, b",order_id=", m.order_id as i64);
            push_field(out, b",sequence=", m.sequence as i64);
            push_field(out, b",ts_event=", m.ts_event as i64);
            push_field(out, b",ts_recv=", m.ts_recv as i64);
        })
    }

    /// What `mbo` and `trades` share: appends one point of `measurement` per record of
    /// `records.0..records.1` that it takes, with the symbol check, time base, point clock and tag
    /// set of both; `fields` writes the measurement's field set (from its leading space).
    ///
    /// Checks every instrument first: on `Err` nothing was appended and no clock moved.
    #[inline(always)]
    fn record_points(
        &mut self,
        measurement: RecordMeasurement,
        buf: &[u8],
        stride: usize,
        records: (usize, usize),
        out: &mut Vec<u8>,
        fields: impl Fn(&mut Vec<u8>, &Mbo),
    ) -> Result<usize, MissingSymbols> {
        let (start, stop) = records;
        debug_assert!(stride >= MBO_RECORD_SIZE && stop * stride <= buf.len());
        let takes = |i: usize| match measurement {
            RecordMeasurement::Mbo => true,
            RecordMeasurement::Trades => buf[i * stride + 38] == ACTION_TRADE,
        };
        self.check_ids((start..stop).filter(|&i| takes(i)).map(|i| u32_at(buf, i * stride + 4)))?;
        let clock = match measurement {
            RecordMeasurement::Mbo => {
                out.reserve((stop - start) * MBO_LINE_RESERVE);
                &mut self.mbo_clock
            }
            RecordMeasurement::Trades => &mut self.trade_clock,
        };
        let mut n = 0;
        for i in (start..stop).filter(|&i| takes(i)) {
            let m = Mbo::decode(&buf[i * stride..]);
            let Some(base) = time_base(m.ts_event, m.ts_recv) else {
                self.skipped += 1;
                continue;
            };
            let time = clock.stamp(book_key(m.instrument_id, m.publisher_id), base);
            // Tags sorted by key: `action` (mbo only), the book's, then `side`.
            match measurement {
                RecordMeasurement::Mbo => {
                    out.extend_from_slice(b"mbo,action=");
                    push_code(out, m.action);
                }
                RecordMeasurement::Trades => out.extend_from_slice(b"trades"),
            }
            out.extend_from_slice(tags_of(&mut self.book_tags, &self.symbols, m.instrument_id, m.publisher_id));
            out.extend_from_slice(b",side=");
            push_code(out, m.side);
            fields(out, &m);
            push_time(out, time);
            n += 1;
        }
        Ok(n)
    }

    /// Everything one replay step yields: `mbo` (when asked) and `trades` points of records
    /// `records.0..records.1`, then `bbo` points of event rows `events.0..events.1`.
    ///
    /// Checks every instrument first: on `Err` nothing was appended and no clock moved.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(
        &mut self,
        buf: &[u8],
        stride: usize,
        records: (usize, usize),
        rows: &[u8],
        events: (usize, usize),
        mbo: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize, MissingSymbols> {
        self.check_batch(buf, stride, records, rows, events)?;
        let mut n = 0;
        if mbo {
            n += self.mbo(buf, stride, records.0, records.1, out)?;
        }
        n += self.trades(buf, stride, records.0, records.1, out)?;
        n += self.bbo(rows, events.0, events.1, out)?;
        Ok(n)
    }

    /// Checks that every instrument of one replay step has a symbol.
    pub fn check_batch(
        &self,
        buf: &[u8],
        stride: usize,
        records: (usize, usize),
        rows: &[u8],
        events: (usize, usize),
    ) -> Result<(), MissingSymbols> {
        let record_ids = (records.0..records.1).map(|i| u32_at(buf, i * stride + 4));
        let row_ids = (events.0..events.1).map(|i| u32_at(rows, i * EVENT_ROW_SIZE + 56));
        self.check_ids(record_ids.chain(row_ids))
    }

    /// Appends one `bbo` point per event row `start..stop` whose top of book changed.
    pub fn bbo(
        &mut self,
        rows: &[u8],
        start: usize,
        stop: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, MissingSymbols> {
        debug_assert!(stop * EVENT_ROW_SIZE <= rows.len());
        let row = |i: usize| &rows[i * EVENT_ROW_SIZE..(i + 1) * EVENT_ROW_SIZE];
        let changed: Vec<usize> = (start..stop)
            .filter(|&i| u32_at(row(i), 76) & STATE_TOP_CHANGED != 0)
            .collect();
        self.check_ids(changed.iter().map(|&i| u32_at(row(i), 56)))?;
        out.reserve(changed.len() * BBO_LINE_RESERVE);
        let mut n = 0;
        for i in changed {
            let e = EventRow::decode(row(i));
            let Some(base) = time_base(e.ts_event, e.ts_recv) else {
                self.skipped += 1;
                continue;
            };
            let publisher_id = e.publisher_id as u16;
            let time = self
                .bbo_clock
                .stamp(book_key(e.instrument_id, publisher_id), base);
            let has_bid = e.bid_price != UNDEF_PRICE;
            let has_ask = e.ask_price != UNDEF_PRICE;
            out.extend_from_slice(b"bbo");
            out.extend_from_slice(tags_of(
                &mut self.book_tags,
                &self.symbols,
                e.instrument_id,
                publisher_id,
            ));
            out.push(b' ');
            if has_bid {
                push_field(out, b"bid_price=", e.bid_price);
                out.push(b',');
            }
            push_field(out, b"bid_size=", e.bid_size as i64);
            push_field(out, b",bid_count=", e.bid_count as i64);
            if has_ask {
                push_field(out, b",ask_price=", e.ask_price);
            }
            push_field(out, b",ask_size=", e.ask_size as i64);
            push_field(out, b",ask_count=", e.ask_count as i64);
            if has_bid && has_ask {
                let (bid, ask) = (e.bid_price as i128, e.ask_price as i128);
                push_field(out, b",spread=", (ask - bid) as i64);
                // Floor of the half sum: exact for every tick size that is an even number of 1e-9.
                push_field(out, b",mid=", (bid + ask).div_euclid(2) as i64);
            }
            out.extend_from_slice(if e.state & STATE_CROSSED != 0 {
                b",crossed=true"
            } else {
                b",crossed=false"
            });
            out.extend_from_slice(if e.state & STATE_LOCKED != 0 {
                b",locked=true"
            } else {
                b",locked=false"
            });
            push_field(out, b",sequence=", e.sequence as i64);
            push_field(out, b",ts_event=", e.ts_event as i64);
            push_field(out, b",ts_recv=", e.ts_recv as i64);
            push_time(out, time);
            n += 1;
        }
        Ok(n)
    }
}
