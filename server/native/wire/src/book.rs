//! The `StreamBookResponse` encoder: one book, cut to a depth, straight from the engine.
//!
//! A book stream's payload is built once per refresh for every client of a channel; built in
//! Python (a view, a `BookSnapshot` message, two serializations) it cost about 50 µs a book, here
//! a few. The output is what the Python protobuf runtime makes of the same book (fields at their
//! proto3 default omitted, `bbo` present only with a side, `last_trade` present once there was a
//! trade, anomaly kinds never seen absent); `tests/test_book_payload.py` holds the two to each
//! other message for message. Field numbers follow `proto/mbostream/v1/book.proto` and
//! `market_data.proto`.
use mbostream_book::record::UNDEF_PRICE;
use mbostream_book::{AnomalyKind, Book};

use crate::encode::{tag, varint, WIRE_LEN, WIRE_VARINT};

const SIDE_BID: u64 = 1;
const SIDE_ASK: u64 = 2;
const SIDE_NONE: u64 = 3;

/// A varint field, omitted at zero (proto3). Signed int64 values go as their two's complement.
#[inline]
fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, WIRE_VARINT);
        varint(out, v);
    }
}

#[inline]
fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    uint(out, field, v as u64);
}

#[inline]
fn boolean(out: &mut Vec<u8>, field: u32, v: bool) {
    uint(out, field, v as u64);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        tag(out, field, WIRE_LEN);
        varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

/// A length-delimited submessage written by `body` (present even when empty).
fn message(out: &mut Vec<u8>, field: u32, scratch: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    body(scratch);
    tag(out, field, WIRE_LEN);
    varint(out, scratch.len() as u64);
    out.extend_from_slice(scratch);
}

fn side(code: u8) -> u64 {
    match code {
        b'B' => SIDE_BID,
        b'A' => SIDE_ASK,
        _ => SIDE_NONE,
    }
}

/// What to cut and stamp: levels per side (0: all), with their L3 queues or not, and the replay
/// position and symbol the message carries.
#[derive(Clone, Copy, Debug)]
pub struct BookCut<'a> {
    pub depth: usize,
    pub orders: bool,
    pub symbol: &'a str,
    pub replay_sequence: u64,
}

/// A serialized `BookSnapshot` of `book` as it is now (call it between events).
pub fn encode_book_snapshot(book: &Book, cut: &BookCut<'_>) -> Vec<u8> {
    let s = &book.stats;
    let take = if cut.depth == 0 { usize::MAX } else { cut.depth };
    let mut out = Vec::with_capacity(128 + 32 * take.min(64) * 2);
    let mut level_buf = Vec::with_capacity(64);
    let mut scratch = Vec::with_capacity(32);
    uint(&mut out, 1, book.instrument_id as u64);
    uint(&mut out, 2, book.publisher_id as u64);
    string(&mut out, 3, cut.symbol);
    for (field, is_bid) in [(4, true), (5, false)] {
        for level in book.ladder(is_bid).iter_best_first().take(take) {
            level_buf.clear();
            int(&mut level_buf, 1, level.price);
            uint(&mut level_buf, 2, level.size);
            uint(&mut level_buf, 3, level.count as u64);
            if cut.orders {
                for order in book.queue(level) {
                    message(&mut level_buf, 4, &mut scratch, |o| {
                        uint(o, 1, order.order_id);
                        uint(o, 2, order.size as u64);
                    });
                }
            }
            tag(&mut out, field, WIRE_LEN);
            varint(&mut out, level_buf.len() as u64);
            out.extend_from_slice(&level_buf);
        }
    }
    uint(&mut out, 6, book.bids.len() as u64);
    uint(&mut out, 7, book.asks.len() as u64);
    let best_bid = book.ladder(true).iter_best_first().next();
    let best_ask = book.ladder(false).iter_best_first().next();
    if best_bid.is_some() || best_ask.is_some() {
        message(&mut out, 8, &mut scratch, |b| {
            if let Some(l) = best_bid {
                boolean(b, 1, true);
                int(b, 2, l.price);
                uint(b, 3, l.size);
                uint(b, 4, l.count as u64);
            }
            if let Some(l) = best_ask {
                boolean(b, 5, true);
                int(b, 6, l.price);
                uint(b, 7, l.size);
                uint(b, 8, l.count as u64);
            }
        });
    }
    if s.last_trade_price != UNDEF_PRICE {
        message(&mut out, 9, &mut scratch, |t| {
            int(t, 1, s.last_trade_price);
            uint(t, 2, s.last_trade_size as u64);
            uint(t, 3, side(s.last_trade_side));
            uint(t, 4, s.last_trade_ts);
        });
    }
    uint(&mut out, 10, s.volume);
    uint(&mut out, 11, s.trade_count);
    uint(&mut out, 12, s.consistent_sequence as u64);
    uint(&mut out, 13, cut.replay_sequence);
    uint(&mut out, 14, s.consistent_ts_event);
    uint(&mut out, 15, s.consistent_ts_recv);
    boolean(&mut out, 16, s.crossed);
    boolean(&mut out, 17, s.locked);
    uint(&mut out, 18, s.crossed_since);
    for kind in AnomalyKind::ALL {
        let count = book.anomalies[kind as usize];
        if count != 0 {
            message(&mut out, 19, &mut scratch, |e| {
                string(e, 1, kind.name());
                uint(e, 2, count);
            });
        }
    }
    out
}

/// The two shared halves of a book's `StreamBookResponse` messages: `single` is `{book, ts_out}`,
/// `multi` is `{books: [book]}` (concatenated with other books' into one combined message).
pub fn encode_book_payload(book: &Book, cut: &BookCut<'_>, ts_out: u64) -> (Vec<u8>, Vec<u8>) {
    let snapshot = encode_book_snapshot(book, cut);
    let mut single = Vec::with_capacity(snapshot.len() + 16);
    tag(&mut single, 1, WIRE_LEN);
    varint(&mut single, snapshot.len() as u64);
    single.extend_from_slice(&snapshot);
    uint(&mut single, 3, ts_out);
    let mut multi = Vec::with_capacity(snapshot.len() + 4);
    tag(&mut multi, 5, WIRE_LEN);
    varint(&mut multi, snapshot.len() as u64);
    multi.extend_from_slice(&snapshot);
    (single, multi)
}
