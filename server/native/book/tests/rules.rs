//! One table row per documented MBO book rule and per anomaly kind (README "Book rules"): records
//! in; levels with their FIFO queues, anomaly counts and the statistics the rule touches out.
mod common;

use common::{levels, LevelDump};
use mbostream_book::market::{STATE_CROSSED, STATE_LOCKED, STATE_TOP_CHANGED};
use mbostream_book::record::*;
use mbostream_book::{AnomalyKind, BookStats, EventRow, Market, EVENT_ROW_SIZE};

const P1: i64 = 100_000_000_000;
const P2: i64 = 100_250_000_000;
const P3: i64 = 100_500_000_000;
const P4: i64 = 100_750_000_000;
const P5: i64 = 101_000_000_000;
const B: u8 = SIDE_BID;
const A: u8 = SIDE_ASK;
const N: u8 = SIDE_NONE;
const T0: u64 = 1_758_742_200_000_000_000;

/// A record ending its event (F_LAST) for instrument 1, publisher 1.
fn rec(action: u8, side: u8, order_id: u64, price: i64, size: u32) -> Mbo {
    Mbo { publisher_id: 1, instrument_id: 1, order_id, price, size, flags: F_LAST, action, side, ..Mbo::default() }
}

fn add(side: u8, id: u64, price: i64, size: u32) -> Mbo {
    rec(ACTION_ADD, side, id, price, size)
}
fn cancel(side: u8, id: u64, price: i64, size: u32) -> Mbo {
    rec(ACTION_CANCEL, side, id, price, size)
}
fn modify(side: u8, id: u64, price: i64, size: u32) -> Mbo {
    rec(ACTION_MODIFY, side, id, price, size)
}
fn fill(side: u8, id: u64, price: i64, size: u32) -> Mbo {
    rec(ACTION_FILL, side, id, price, size)
}
fn trade(side: u8, price: i64, size: u32) -> Mbo {
    rec(ACTION_TRADE, side, 0, price, size)
}
fn clear() -> Mbo {
    rec(ACTION_CLEAR, N, 0, UNDEF_PRICE, 0)
}
fn tob(side: u8, price: i64, size: u32) -> Mbo {
    Mbo { flags: F_LAST | F_TOB, ..rec(ACTION_ADD, side, 0, price, size) }
}
/// The same record inside an event (no F_LAST).
fn mid(m: Mbo) -> Mbo {
    Mbo { flags: m.flags & !F_LAST, ..m }
}
fn level(price: i64, queue: &[(u64, u32)]) -> LevelDump {
    let size = queue.iter().map(|&(_, s)| s as u64).sum();
    (price, size, queue.len() as u32, queue.to_vec())
}
fn tob_level(price: i64, size: u64) -> LevelDump {
    (price, size, 0, Vec::new())
}

type StatCheck = (&'static str, fn(&BookStats) -> u64, u64);

struct Case {
    name: &'static str,
    records: Vec<Mbo>,
    bids: Vec<LevelDump>,
    asks: Vec<LevelDump>,
    anomalies: Vec<(AnomalyKind, u64)>,
    stats: Vec<StatCheck>,
}

fn case(name: &'static str, records: Vec<Mbo>, bids: Vec<LevelDump>, asks: Vec<LevelDump>) -> Case {
    Case { name, records, bids, asks, anomalies: Vec::new(), stats: Vec::new() }
}

impl Case {
    fn anomalies(mut self, expected: &[(AnomalyKind, u64)]) -> Case {
        self.anomalies = expected.to_vec();
        self
    }
    fn stats(mut self, expected: &[StatCheck]) -> Case {
        self.stats = expected.to_vec();
        self
    }
}

/// Applies records through the market with increasing sequence numbers and timestamps.
fn run(records: &[Mbo]) -> Market {
    let mut market = Market::new();
    for (i, m) in records.iter().enumerate() {
        let ts = T0 + 1_000 * i as u64;
        market.apply(&Mbo { sequence: i as u32 + 1, ts_event: ts, ts_recv: ts + 500, ..*m });
    }
    market
}

fn rule_cases() -> Vec<Case> {
    vec![
        case(
            "add joins the back of its level",
            vec![add(B, 1, P1, 5), add(B, 2, P1, 3), add(B, 3, P2, 1)],
            vec![level(P2, &[(3, 1)]), level(P1, &[(1, 5), (2, 3)])],
            vec![],
        ),
        case(
            "bids are best at the highest price, asks at the lowest",
            vec![add(A, 1, P5, 1), add(B, 2, P1, 2), add(A, 3, P4, 3), add(B, 4, P2, 4)],
            vec![level(P2, &[(4, 4)]), level(P1, &[(2, 2)])],
            vec![level(P4, &[(3, 3)]), level(P5, &[(1, 1)])],
        ),
        case(
            "partial cancel reduces the order and keeps its place",
            vec![add(A, 1, P4, 5), add(A, 2, P4, 3), cancel(A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 3), (2, 3)])],
        ),
        case(
            "full cancel removes the order and its emptied level",
            vec![add(A, 1, P4, 5), add(A, 2, P5, 1), cancel(A, 1, P4, 5)],
            vec![],
            vec![level(P5, &[(2, 1)])],
        ),
        case(
            "cancel from the middle of a queue keeps the others in order",
            vec![add(B, 1, P1, 1), add(B, 2, P1, 2), add(B, 3, P1, 3), cancel(B, 2, P1, 2)],
            vec![level(P1, &[(1, 1), (3, 3)])],
            vec![],
        ),
        case(
            "modify price change: back of the new level",
            vec![add(B, 1, P1, 1), add(B, 2, P2, 1), add(B, 3, P1, 1), modify(B, 1, P2, 1)],
            vec![level(P2, &[(2, 1), (1, 1)]), level(P1, &[(3, 1)])],
            vec![],
        ),
        case(
            "modify price change with a smaller size still loses priority; the old level goes",
            vec![add(B, 1, P2, 5), add(B, 2, P1, 1), add(B, 3, P1, 1), modify(B, 1, P1, 2)],
            vec![level(P1, &[(2, 1), (3, 1), (1, 2)])],
            vec![],
        ),
        case(
            "modify size increase: back of its level",
            vec![add(B, 1, P1, 1), add(B, 2, P1, 1), modify(B, 1, P1, 4)],
            vec![level(P1, &[(2, 1), (1, 4)])],
            vec![],
        ),
        case(
            "modify size decrease keeps its place",
            vec![add(B, 1, P1, 4), add(B, 2, P1, 1), modify(B, 1, P1, 2)],
            vec![level(P1, &[(1, 2), (2, 1)])],
            vec![],
        ),
        case(
            "modify to the same price and size keeps its place",
            vec![add(A, 1, P4, 4), add(A, 2, P4, 1), modify(A, 1, P4, 4)],
            vec![],
            vec![level(P4, &[(1, 4), (2, 1)])],
        ),
        case(
            "trade leaves resting orders alone and feeds volume",
            vec![add(A, 1, P4, 5), trade(B, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 5)])],
        )
        .stats(&[("trade_count", |s| s.trade_count, 1), ("volume", |s| s.volume, 2)]),
        case(
            "fill leaves resting orders alone and adds no volume",
            vec![add(A, 1, P4, 5), fill(A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 5)])],
        )
        .stats(&[("fill_count", |s| s.fill_count, 1), ("volume", |s| s.volume, 0)]),
        case(
            "N record leaves resting orders alone",
            vec![add(A, 1, P4, 5), rec(ACTION_NONE, A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 5)])],
        )
        .stats(&[("record_count", |s| s.record_count, 2)]),
        case(
            "a fill is followed by its own cancel, which moves the book",
            vec![add(A, 1, P4, 5), add(A, 2, P4, 1), mid(trade(B, P4, 2)), mid(fill(A, 1, P4, 2)), cancel(A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 3), (2, 1)])],
        )
        .stats(&[("volume", |s| s.volume, 2), ("fill_count", |s| s.fill_count, 1)]),
        case("clear empties both sides", vec![add(A, 1, P4, 5), add(B, 2, P1, 5), clear()], vec![], vec![]).stats(&[(
            "clear_count",
            |s| s.clear_count,
            1,
        )]),
        case("clear keeps trade history", vec![add(A, 1, P4, 5), trade(B, P4, 3), clear()], vec![], vec![])
            .stats(&[("volume", |s| s.volume, 3), ("trade_count", |s| s.trade_count, 1)]),
        case(
            "orders after a clear build from empty (no duplicate id)",
            vec![add(A, 1, P4, 5), clear(), add(A, 1, P5, 2)],
            vec![],
            vec![level(P5, &[(1, 2)])],
        ),
        case(
            "F_TOB add replaces the whole side by one level that counts no orders",
            vec![add(B, 1, P1, 5), add(B, 2, P2, 5), add(A, 3, P5, 1), tob(B, P3, 7)],
            vec![tob_level(P3, 7)],
            vec![level(P5, &[(3, 1)])],
        ),
        case(
            "F_TOB add with UNDEF_PRICE only clears the side",
            vec![tob(A, P4, 7), tob(B, P1, 2), tob(A, UNDEF_PRICE, 0)],
            vec![tob_level(P1, 2)],
            vec![],
        ),
        case(
            "successive F_TOB adds replace each other",
            vec![tob(B, P1, 2), tob(B, P2, 3)],
            vec![tob_level(P2, 3)],
            vec![],
        ),
        case(
            "an order-by-order add ends top-of-book mode for its side only",
            vec![tob(B, P1, 2), tob(A, P5, 4), add(B, 1, P2, 1)],
            vec![level(P2, &[(1, 1)])],
            vec![tob_level(P5, 4)],
        ),
        case(
            "F_TOB add of size 0 clears the side and is a zero_size anomaly",
            vec![add(B, 1, P1, 1), tob(B, P2, 0)],
            vec![],
            vec![],
        )
        .anomalies(&[(AnomalyKind::ZeroSize, 1)]),
        case(
            "a crossed book is state: nothing is deleted to uncross it",
            vec![add(B, 1, P3, 1), add(A, 2, P2, 1)],
            vec![level(P3, &[(1, 1)])],
            vec![level(P2, &[(2, 1)])],
        )
        .stats(&[
            ("crossed", |s| s.crossed as u64, 1),
            ("crossed_intervals", |s| s.crossed_intervals, 1),
            ("locked", |s| s.locked as u64, 0),
        ]),
        case(
            "a locked book is state",
            vec![add(B, 1, P2, 1), add(A, 2, P2, 3)],
            vec![level(P2, &[(1, 1)])],
            vec![level(P2, &[(2, 3)])],
        )
        .stats(&[("locked", |s| s.locked as u64, 1), ("crossed", |s| s.crossed as u64, 0)]),
        case(
            "records without F_LAST are applied; the event ends at the F_LAST",
            vec![mid(add(B, 1, P1, 1)), mid(add(B, 2, P1, 2)), add(A, 3, P4, 1)],
            vec![level(P1, &[(1, 1), (2, 2)])],
            vec![level(P4, &[(3, 1)])],
        )
        .stats(&[
            ("record_count", |s| s.record_count, 3),
            ("event_count", |s| s.event_count, 1),
            ("consistent_sequence", |s| s.consistent_sequence as u64, 3),
        ]),
        case(
            "snapshot records (F_SNAPSHOT: R then A...) rebuild the book like live ones",
            vec![
                add(B, 9, P2, 4),
                Mbo { flags: F_SNAPSHOT | F_BAD_TS_RECV, ..clear() },
                Mbo { flags: F_SNAPSHOT | F_BAD_TS_RECV, ..add(B, 1, P1, 1) },
                Mbo { flags: F_SNAPSHOT | F_BAD_TS_RECV, ..add(B, 2, P1, 2) },
                Mbo { flags: F_SNAPSHOT | F_BAD_TS_RECV | F_LAST, ..add(A, 3, P4, 1) },
            ],
            vec![level(P1, &[(1, 1), (2, 2)])],
            vec![level(P4, &[(3, 1)])],
        ),
    ]
}

fn anomaly_cases() -> Vec<Case> {
    use AnomalyKind::*;
    vec![
        case(
            "cancel_unknown_order: ignored",
            vec![add(B, 1, P1, 1), cancel(B, 42, P1, 1)],
            vec![level(P1, &[(1, 1)])],
            vec![],
        )
        .anomalies(&[(CancelUnknownOrder, 1)]),
        case("fill_unknown_order: nothing to change", vec![fill(B, 42, P1, 1)], vec![], vec![])
            .anomalies(&[(FillUnknownOrder, 1)])
            .stats(&[("fill_count", |s| s.fill_count, 1), ("unattributed_fills", |s| s.unattributed_fills, 0)]),
        case("side-N fill of an unknown id: unattributed, not an anomaly", vec![fill(N, 42, P1, 1)], vec![], vec![])
            .stats(&[("unattributed_fills", |s| s.unattributed_fills, 1)]),
        case(
            "fill over the displayed size: a feed fact, not an anomaly",
            vec![add(B, 1, P1, 1), mid(fill(B, 1, P1, 2)), modify(B, 1, P1, 3)],
            vec![level(P1, &[(1, 3)])],
            vec![],
        )
        .stats(&[("fills_over_displayed", |s| s.fills_over_displayed, 1)]),
        case(
            "fill of exactly the displayed size is not over it",
            vec![add(B, 1, P1, 2), mid(fill(B, 1, P1, 2)), cancel(B, 1, P1, 2)],
            vec![],
            vec![],
        )
        .stats(&[("fills_over_displayed", |s| s.fills_over_displayed, 0)]),
        case(
            "modify_unknown_order: treated as an add",
            vec![add(B, 1, P1, 1), modify(B, 42, P1, 3)],
            vec![level(P1, &[(1, 1), (42, 3)])],
            vec![],
        )
        .anomalies(&[(ModifyUnknownOrder, 1)]),
        case("modify_unknown_order of size 0: nothing added", vec![modify(B, 42, P1, 0)], vec![], vec![])
            .anomalies(&[(ModifyUnknownOrder, 1), (ZeroSize, 1)]),
        case("modify_unknown_order at UNDEF_PRICE: nothing added", vec![modify(A, 42, UNDEF_PRICE, 2)], vec![], vec![])
            .anomalies(&[(ModifyUnknownOrder, 1), (UndefinedPrice, 1)]),
        case(
            "duplicate_add: the old order leaves, the new one queues at the back",
            vec![add(B, 1, P1, 1), add(B, 2, P1, 1), add(B, 1, P1, 5)],
            vec![level(P1, &[(2, 1), (1, 5)])],
            vec![],
        )
        .anomalies(&[(DuplicateAdd, 1)]),
        case(
            "duplicate_add on the other side: the old order's level goes",
            vec![add(B, 1, P1, 1), add(A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(1, 2)])],
        )
        .anomalies(&[(DuplicateAdd, 1)]),
        case(
            "cancel_exceeds_size: the order is removed",
            vec![add(B, 1, P1, 2), add(B, 2, P1, 1), cancel(B, 1, P1, 3)],
            vec![level(P1, &[(2, 1)])],
            vec![],
        )
        .anomalies(&[(CancelExceedsSize, 1)]),
        case(
            "modify_side_change: removed from its side, back of the other",
            vec![add(A, 7, P4, 1), add(B, 1, P1, 2), modify(A, 1, P4, 2)],
            vec![],
            vec![level(P4, &[(7, 1), (1, 2)])],
        )
        .anomalies(&[(ModifySideChange, 1)]),
        case("zero_size add: ignored", vec![add(B, 1, P1, 0)], vec![], vec![]).anomalies(&[(ZeroSize, 1)]),
        case(
            "zero_size modify: the order is removed",
            vec![add(B, 1, P1, 2), add(B, 2, P1, 2), modify(B, 1, P1, 0)],
            vec![level(P1, &[(2, 2)])],
            vec![],
        )
        .anomalies(&[(ZeroSize, 1)]),
        case(
            "zero_size cancel: a no-op",
            vec![add(B, 1, P1, 2), cancel(B, 1, P1, 0)],
            vec![level(P1, &[(1, 2)])],
            vec![],
        )
        .anomalies(&[(ZeroSize, 1)]),
        case(
            "unknown_action: ignored",
            vec![add(B, 1, P1, 1), rec(b'X', B, 1, P1, 1)],
            vec![level(P1, &[(1, 1)])],
            vec![],
        )
        .anomalies(&[(UnknownAction, 1)]),
        case("unknown_side add: ignored", vec![add(N, 1, P1, 1)], vec![], vec![]).anomalies(&[(UnknownSide, 1)]),
        case(
            "unknown_side modify of a resting order: ignored",
            vec![add(B, 1, P1, 2), modify(b'X', 1, P2, 5)],
            vec![level(P1, &[(1, 2)])],
            vec![],
        )
        .anomalies(&[(UnknownSide, 1)]),
        case(
            "unknown_side F_TOB add: ignored, the side is kept",
            vec![add(B, 1, P1, 2), Mbo { side: N, ..tob(B, P2, 3) }],
            vec![level(P1, &[(1, 2)])],
            vec![],
        )
        .anomalies(&[(UnknownSide, 1)]),
        case("undefined_price add: ignored", vec![add(B, 1, UNDEF_PRICE, 1)], vec![], vec![])
            .anomalies(&[(UndefinedPrice, 1)]),
        case(
            "undefined_price modify of a resting order: ignored, the order keeps its place",
            vec![add(B, 1, P1, 2), add(B, 2, P1, 1), modify(B, 1, UNDEF_PRICE, 5)],
            vec![level(P1, &[(1, 2), (2, 1)])],
            vec![],
        )
        .anomalies(&[(UndefinedPrice, 1)]),
    ]
}

fn check(c: &Case) {
    let market = run(&c.records);
    let book = market.book(1, 1).unwrap_or_else(|| panic!("{}: no book", c.name));
    assert_eq!(levels(book, true), c.bids, "{}: bids", c.name);
    assert_eq!(levels(book, false), c.asks, "{}: asks", c.name);
    let queued: usize = c.bids.iter().chain(&c.asks).map(|l| l.3.len()).sum();
    assert_eq!(book.order_count(), queued, "{}: order count", c.name);

    let mut expected = [0u64; mbostream_book::ANOMALY_KIND_COUNT];
    for &(kind, n) in &c.anomalies {
        expected[kind as usize] = n;
    }
    assert_eq!(book.anomalies, expected, "{}: anomaly counts", c.name);
    let mut logged = [0u64; mbostream_book::ANOMALY_KIND_COUNT];
    for a in &market.log.entries {
        logged[a.kind as usize] += 1;
    }
    assert_eq!(logged, expected, "{}: anomaly log", c.name);

    for (name, get, want) in &c.stats {
        assert_eq!(get(&book.stats), *want, "{}: stats.{name}", c.name);
    }
    assert!(!book.in_event && market.is_consistent(), "{}: every case ends at an F_LAST", c.name);
    assert_eq!(book.check_integrity(), Vec::<String>::new(), "{}: integrity", c.name);
}

#[test]
fn each_documented_rule() {
    for c in rule_cases() {
        check(&c);
    }
}

#[test]
fn each_anomaly_kind_is_counted_and_handled_as_documented() {
    for c in anomaly_cases() {
        check(&c);
    }
}

#[test]
fn every_anomaly_kind_has_a_row() {
    let covered: Vec<AnomalyKind> = anomaly_cases().iter().flat_map(|c| c.anomalies.iter().map(|&(k, _)| k)).collect();
    for kind in AnomalyKind::ALL {
        assert!(covered.contains(&kind), "no table row for {}", kind.name());
    }
}

#[test]
fn trades_set_last_trade_and_volume_fills_do_not() {
    let market = run(&[
        add(A, 1, P4, 5),
        mid(trade(B, P4, 2)),
        mid(fill(A, 1, P4, 2)),
        cancel(A, 1, P4, 2),
        trade(A, P1, 3),
        fill(N, 77, P1, 3),
    ]);
    let s = &market.book(1, 1).unwrap().stats;
    assert_eq!((s.last_trade_price, s.last_trade_size, s.last_trade_side), (P1, 3, A));
    assert_eq!(s.last_trade_ts, T0 + 4_000);
    assert_eq!((s.volume, s.trade_count, s.fill_count, s.unattributed_fills), (5, 2, 2, 1));
}

#[test]
fn views_and_event_rows_exist_only_at_f_last() {
    let records =
        [mid(add(B, 1, P1, 1)), mid(add(A, 2, P4, 1)), add(B, 3, P2, 1), mid(add(B, 4, P2, 2)), add(A, 5, P5, 1)];
    let mut buf = Vec::new();
    for (i, m) in records.iter().enumerate() {
        Mbo { sequence: 10 + i as u32, ts_event: T0 + i as u64, ..*m }.encode_into(&mut buf);
    }

    let mut market = Market::new();
    let mut events = Vec::new();
    let end = market.apply_slice(&buf, MBO_RECORD_SIZE, 0, 4, false, 0, &mut events, None);
    assert_eq!((end.end, end.consistent), (4, false));
    let book = market.book(1, 1).unwrap();
    assert!(book.in_event);
    assert_eq!(book.stats.consistent_sequence, 12, "the views still describe the last F_LAST");
    assert_eq!(events.len(), EVENT_ROW_SIZE, "one row, for the one F_LAST so far");
    let row = EventRow::decode(&events);
    assert_eq!((row.index, row.sequence, row.bid_price, row.bid_size, row.ask_price), (2, 12, P2, 1, P4));
    assert_ne!(row.state & STATE_TOP_CHANGED, 0);

    let mut completed = Market::new();
    let mut events = Vec::new();
    let end = completed.apply_slice(&buf, MBO_RECORD_SIZE, 0, 4, true, 10, &mut events, None);
    assert_eq!((end.end, end.consistent), (5, true), "complete_events runs on to the F_LAST");
    assert_eq!(events.len(), 2 * EVENT_ROW_SIZE);
    let row = EventRow::decode(&events[EVENT_ROW_SIZE..]);
    assert_eq!((row.index, row.bid_price, row.bid_size, row.bid_count), (4, P2, 3, 2));
    assert_eq!(completed.book(1, 1).unwrap().stats.event_count, 2);
}

#[test]
fn crossed_and_locked_intervals_are_timed_not_repaired() {
    let records = [
        add(B, 1, P2, 1),    // t0: bid only
        add(A, 2, P2, 1),    // t1: locked
        add(A, 3, P1, 1),    // t2: crossed (best ask P1 below best bid P2)
        cancel(A, 3, P1, 1), // t3: locked again
        cancel(A, 2, P2, 1), // t4: bid only
    ];
    let mut buf = Vec::new();
    for (i, m) in records.iter().enumerate() {
        Mbo { ts_event: T0 + 1_000 * i as u64, ..*m }.encode_into(&mut buf);
    }
    let mut market = Market::new();
    let mut events = Vec::new();
    let mut audit = Vec::new();
    market.apply_slice(&buf, MBO_RECORD_SIZE, 0, records.len(), false, 0, &mut events, Some(&mut audit));
    assert_eq!(audit, vec![]);
    let states: Vec<u32> =
        events.chunks(EVENT_ROW_SIZE).map(|b| EventRow::decode(b).state & (STATE_CROSSED | STATE_LOCKED)).collect();
    assert_eq!(states, vec![0, STATE_LOCKED, STATE_CROSSED, STATE_LOCKED, 0]);
    let s = &market.book(1, 1).unwrap().stats;
    assert_eq!((s.crossed, s.locked), (false, false));
    assert_eq!((s.crossed_intervals, s.crossed_ns), (1, 1_000));
    assert_eq!((s.locked_intervals, s.locked_ns), (2, 2_000));
}

#[test]
fn snapshot_replays_into_an_identical_book() {
    let market = run(&[
        add(B, 1, P1, 5),
        add(B, 2, P1, 3),
        add(A, 3, P4, 2),
        modify(B, 1, P1, 9),
        add(A, 4, P4, 1),
        add(B, 5, P2, 1),
    ]);
    let book = market.book(1, 1).unwrap();
    let snap = book.snapshot(77);
    let actions: Vec<u8> = snap.iter().map(|m| m.action).collect();
    assert_eq!(actions, b"RAAAAA".to_vec());
    assert!(snap.iter().all(|m| m.flags & F_SNAPSHOT != 0 && m.ts_recv == 77));
    let lasts: Vec<bool> = snap.iter().map(|m| m.flags & F_LAST != 0).collect();
    assert_eq!(lasts, vec![false, false, false, false, false, true]);
    let ids: Vec<u64> = snap[1..].iter().map(|m| m.order_id).collect();
    assert_eq!(ids, vec![5, 2, 1, 3, 4], "bids best first, then asks, each queue front first");

    let replica = run(&snap);
    let copy = replica.book(1, 1).unwrap();
    assert_eq!(levels(copy, true), levels(book, true));
    assert_eq!(levels(copy, false), levels(book, false));
    assert_eq!(levels(copy, true), vec![level(P2, &[(5, 1)]), level(P1, &[(2, 3), (1, 9)])]);
}

#[test]
fn snapshot_of_a_top_of_book_side_is_one_f_tob_add() {
    let market = run(&[tob(B, P2, 7), add(A, 1, P4, 2)]);
    let snap = market.book(1, 1).unwrap().snapshot(1);
    let tob_adds: Vec<(i64, u32)> = snap.iter().filter(|m| m.flags & F_TOB != 0).map(|m| (m.price, m.size)).collect();
    assert_eq!(tob_adds, vec![(P2, 7)]);
    let replica = run(&snap);
    let copy = replica.book(1, 1).unwrap();
    assert_eq!(levels(copy, true), vec![tob_level(P2, 7)]);
    assert_eq!(levels(copy, false), vec![level(P4, &[(1, 2)])]);
}

#[test]
fn anomalies_carry_their_context() {
    let mut market = Market::new();
    market.apply(&add(B, 1, P1, 1));
    market.apply(&Mbo { sequence: 777, ts_event: 123_456_789, ..rec(ACTION_CANCEL, A, 42, P1, 1) });
    let [a] = market.log.entries[..] else { panic!("one anomaly expected: {:?}", market.log.entries) };
    assert_eq!(a.kind, AnomalyKind::CancelUnknownOrder);
    assert_eq!((a.record_index, a.order_id, a.sequence, a.ts_event), (1, 42, 777, 123_456_789));
    assert_eq!((a.instrument_id, a.publisher_id, a.action, a.side), (1, 1, ACTION_CANCEL, A));
}

#[test]
fn the_anomaly_log_is_bounded_but_counts_stay_exact() {
    let mut market = Market::new();
    market.log.capacity = 2;
    for id in 0..5 {
        market.apply(&cancel(B, 100 + id, P1, 1));
    }
    assert_eq!((market.log.entries.len(), market.log.dropped), (2, 3));
    assert_eq!(market.book(1, 1).unwrap().anomalies[AnomalyKind::CancelUnknownOrder as usize], 5);
}

#[test]
fn books_are_per_instrument_and_publisher() {
    let market = run(&[
        add(B, 1, P1, 1),
        Mbo { publisher_id: 2, ..add(B, 1, P2, 2) },
        Mbo { instrument_id: 2, ..cancel(B, 1, P1, 1) },
    ]);
    let keys: Vec<(u32, u16)> = market.books().iter().map(|b| (b.instrument_id, b.publisher_id)).collect();
    assert_eq!(keys, vec![(1, 1), (1, 2), (2, 1)]);
    assert_eq!(levels(market.book(1, 1).unwrap(), true), vec![level(P1, &[(1, 1)])]);
    assert_eq!(levels(market.book(1, 2).unwrap(), true), vec![level(P2, &[(1, 2)])]);
    let other = market.book(2, 1).unwrap();
    assert_eq!(other.anomalies[AnomalyKind::CancelUnknownOrder as usize], 1, "same id, other instrument: unknown");
    assert_eq!(other.order_count(), 0);
}
