//! Replays generated files into an independent reference book and checks the feed's contract.

use std::collections::{BTreeMap, HashMap, VecDeque};

use mbostream_book::record::*;

use crate::{generate, generate_into, InstrumentSpec, SynthConfig};

const START_TS: u64 = 1_767_225_600_000_000_000;

fn config(seed: u64, records: u64, instruments: u32) -> SynthConfig {
    SynthConfig { seed, records, instruments, start_ts: START_TS }
}

fn side_index(side: u8) -> usize {
    match side {
        SIDE_BID => 0,
        SIDE_ASK => 1,
        other => panic!("unexpected side {:?}", other as char),
    }
}

/// Databento's reference rules: orders by id, each side a sorted map of price → FIFO of ids.
#[derive(Default)]
struct RefBook {
    orders: HashMap<u64, (u8, i64, u32)>,
    sides: [BTreeMap<i64, VecDeque<u64>>; 2],
}

impl RefBook {
    fn best(&self, side: usize) -> Option<i64> {
        let mut prices = self.sides[side].keys();
        if side == 0 { prices.next_back() } else { prices.next() }.copied()
    }

    fn unqueue(&mut self, id: u64) {
        let (side, price, _) = self.orders[&id];
        let level = self.sides[side_index(side)].get_mut(&price).unwrap();
        level.retain(|&o| o != id);
        if level.is_empty() {
            self.sides[side_index(side)].remove(&price);
        }
    }

    fn enqueue(&mut self, id: u64, side: u8, price: i64, size: u32) {
        self.orders.insert(id, (side, price, size));
        self.sides[side_index(side)].entry(price).or_default().push_back(id);
    }

    /// The first `n` resting ids of `side` in price-time priority.
    fn priority(&self, side: usize, n: usize) -> Vec<u64> {
        let levels: Box<dyn Iterator<Item = &VecDeque<u64>>> =
            if side == 0 { Box::new(self.sides[0].values().rev()) } else { Box::new(self.sides[1].values()) };
        levels.flat_map(|level| level.iter().copied()).take(n).collect()
    }

    fn apply(&mut self, m: &Mbo) {
        match m.action {
            ACTION_CLEAR => *self = RefBook::default(),
            ACTION_ADD => {
                assert!(m.size > 0 && !self.orders.contains_key(&m.order_id), "bad add {m:?}");
                self.enqueue(m.order_id, m.side, m.price, m.size);
            }
            ACTION_CANCEL => {
                let (side, price, size) = *self.orders.get(&m.order_id).unwrap_or_else(|| panic!("unknown id {m:?}"));
                assert!(side == m.side && price == m.price && m.size > 0 && m.size <= size, "bad cancel {m:?}");
                if m.size == size {
                    self.unqueue(m.order_id);
                    self.orders.remove(&m.order_id);
                } else {
                    self.orders.insert(m.order_id, (side, price, size - m.size));
                }
            }
            ACTION_MODIFY => {
                let (side, price, size) = *self.orders.get(&m.order_id).unwrap_or_else(|| panic!("unknown id {m:?}"));
                assert!(side == m.side && m.size > 0, "bad modify {m:?}");
                if m.price != price || m.size > size {
                    // Price change or size increase loses priority.
                    self.unqueue(m.order_id);
                    self.enqueue(m.order_id, side, m.price, m.size);
                } else {
                    self.orders.insert(m.order_id, (side, price, m.size));
                }
            }
            ACTION_TRADE | ACTION_FILL => {}
            other => panic!("unexpected action {:?}", other as char),
        }
    }
}

/// An aggressor being checked: its T, and the resting queue its F records must follow.
struct Trade {
    price: i64,
    size: u32,
    expected: Vec<u64>,
    fills: Vec<(u64, u32)>,
}

#[derive(Default)]
struct Stats {
    live_boundaries: u64,
    one_sided: u64,
    levels: u64,
    top_orders: u64,
    one_tick_spreads: u64,
    wide_spreads: u64,
    trades: u64,
    min_orders: usize,
    max_orders: usize,
    min_mid: i64,
    max_mid: i64,
}

/// Replays `bytes`, asserting the whole contract; returns per-instrument snapshot sizes and stats.
fn replay(specs: &[InstrumentSpec], bytes: &[u8]) -> (Vec<usize>, HashMap<u32, Stats>) {
    assert_eq!(bytes.len() % MBO_RECORD_SIZE, 0);
    let tick_of: HashMap<u32, i64> = specs.iter().map(|s| (s.instrument_id, s.tick)).collect();
    let mut books: HashMap<u32, RefBook> = HashMap::new();
    let mut stats: HashMap<u32, Stats> = HashMap::new();
    let mut channels: HashMap<u32, u8> = HashMap::new();
    let mut sequences: HashMap<u32, u32> = HashMap::new();
    let mut snapshot_sizes: Vec<usize> = Vec::new();
    let (mut last_recv, mut last_id, mut in_snapshot) = (0u64, 0u64, true);
    let mut open_event: Option<(u32, u64)> = None;
    let mut trade: Option<Trade> = None;
    for (n, raw) in bytes.chunks_exact(MBO_RECORD_SIZE).enumerate() {
        let m = Mbo::decode(raw);
        assert_eq!((raw[0], raw[1]), (MBO_LENGTH_WORDS, RTYPE_MBO));
        assert!(n == 0 || m.ts_recv > last_recv, "ts_recv not increasing at {n}");
        assert_eq!(n == 0, m.ts_recv == START_TS);
        assert!(m.ts_event <= m.ts_recv && m.ts_in_delta >= 0 && m.publisher_id == 1, "bad times {m:?}");
        last_recv = m.ts_recv;
        let tick = tick_of[&m.instrument_id];
        assert_eq!(*channels.entry(m.instrument_id).or_insert(m.channel_id), m.channel_id);
        let sequence = sequences.entry(m.instrument_id).or_insert(0);
        assert!(m.sequence > *sequence);
        *sequence = m.sequence;
        if m.action != ACTION_CLEAR {
            assert!(m.size > 0 && m.price % tick == 0, "bad size or off-grid price {m:?}");
        }
        if let Some((instrument, ts_event)) = open_event {
            assert_eq!((instrument, ts_event), (m.instrument_id, m.ts_event), "event interleaved at {n}");
        }
        open_event = if m.flags & F_LAST == 0 { Some((m.instrument_id, m.ts_event)) } else { None };

        let snapshot = m.flags & F_SNAPSHOT != 0;
        if snapshot {
            assert!(in_snapshot, "snapshot record after live records at {n}");
            assert_eq!(m.flags & !F_LAST, F_SNAPSHOT | F_BAD_TS_RECV);
            if m.action == ACTION_CLEAR {
                assert!(!books.contains_key(&m.instrument_id), "second snapshot");
                assert_eq!(m.instrument_id, specs[snapshot_sizes.len()].instrument_id, "snapshots out of order");
                snapshot_sizes.push(0);
            } else {
                assert_eq!(m.action, ACTION_ADD);
                *snapshot_sizes.last_mut().unwrap() += 1;
            }
            assert_eq!(m.action == ACTION_CLEAR, !books.contains_key(&m.instrument_id));
        } else {
            in_snapshot = false;
            assert!((m.flags == F_LAST || m.flags == 0) && m.ts_in_delta > 0, "bad live flags {m:?}");
        }
        let book = books.entry(m.instrument_id).or_default();

        if m.action != ACTION_FILL {
            if let Some(t) = trade.take() {
                assert_eq!(t.fills.iter().map(|f| f.0).collect::<Vec<_>>(), t.expected[..t.fills.len()]);
                assert_eq!(t.fills.iter().map(|f| f.1).sum::<u32>(), t.size);
                assert_eq!(t.price, book.orders[&t.fills[0].0].1);
                for &(id, fill) in &t.fills[..t.fills.len() - 1] {
                    assert_eq!(fill, book.orders[&id].2, "an order behind a partly filled one was filled");
                }
            }
        }
        match m.action {
            ACTION_TRADE => {
                let resting = 1 - side_index(m.side);
                trade =
                    Some(Trade { price: m.price, size: m.size, expected: book.priority(resting, 70), fills: vec![] });
                stats.entry(m.instrument_id).or_default().trades += 1;
            }
            ACTION_FILL => {
                let t = trade.as_mut().expect("F without T");
                let &(side, price, size) = book.orders.get(&m.order_id).expect("fill of an unknown order");
                assert!(side == m.side && price == m.price && m.size <= size, "bad fill {m:?}");
                t.fills.push((m.order_id, m.size));
            }
            ACTION_ADD => {
                assert!(m.order_id > last_id, "order ids not increasing at {n}");
                last_id = m.order_id;
            }
            _ => {}
        }
        book.apply(&m);

        if m.flags & F_LAST != 0 && !snapshot {
            let s = stats.entry(m.instrument_id).or_default();
            let (Some(bid), Some(ask)) = (book.best(0), book.best(1)) else {
                s.one_sided += 1;
                continue;
            };
            assert!(bid < ask, "crossed book at record {n}");
            let count = book.orders.len();
            if s.live_boundaries == 0 {
                (s.min_orders, s.max_orders, s.min_mid, s.max_mid) = (count, count, bid / tick, bid / tick);
            }
            s.live_boundaries += 1;
            s.levels += (book.sides[0].len() + book.sides[1].len()) as u64;
            s.top_orders += book.sides[0][&bid].len() as u64;
            s.one_tick_spreads += u64::from(ask - bid == tick);
            s.wide_spreads += u64::from(ask - bid > 3 * tick);
            (s.min_orders, s.max_orders) = (s.min_orders.min(count), s.max_orders.max(count));
            (s.min_mid, s.max_mid) = (s.min_mid.min(bid / tick), s.max_mid.max(bid / tick));
        }
    }
    if !bytes.is_empty() {
        let last = Mbo::decode(&bytes[bytes.len() - MBO_RECORD_SIZE..]);
        assert!(last.flags & F_LAST != 0, "file does not end at an event boundary");
    }
    (snapshot_sizes, stats)
}

/// Replays a file and asserts the book's shape: spread, depth, order-count band, a wandering mid.
fn assert_realistic(specs: &[InstrumentSpec], bytes: &[u8]) {
    let (snapshots, stats) = replay(specs, bytes);
    assert_eq!(snapshots.len(), specs.len());
    for (spec, &initial) in specs.iter().zip(&snapshots) {
        assert!((2_000..=5_000).contains(&initial), "{} snapshot has {initial} orders", spec.symbol);
        let s = &stats[&spec.instrument_id];
        let (top, levels) = (s.top_orders / s.live_boundaries, s.levels / s.live_boundaries);
        println!(
            "{}: {} boundaries, {} trades, {top} orders at the best bid, {levels} levels, \
             1-tick spread {:.1}%, >3 ticks {:.2}%, orders {}..{} (start {initial}), mid range {} ticks",
            spec.symbol,
            s.live_boundaries,
            s.trades,
            100.0 * s.one_tick_spreads as f64 / s.live_boundaries as f64,
            100.0 * s.wide_spreads as f64 / s.live_boundaries as f64,
            s.min_orders,
            s.max_orders,
            s.max_mid - s.min_mid,
        );
        assert_eq!(s.one_sided, 0, "a side of the book emptied");
        assert!(s.one_tick_spreads * 2 > s.live_boundaries, "spread is usually one tick");
        assert!(s.wide_spreads * 50 < s.live_boundaries, "spread is rarely over three ticks");
        assert!(s.min_orders * 2 > initial && s.max_orders < initial * 3 / 2, "order count left its band");
        assert!(s.max_mid - s.min_mid >= 5, "the mid wanders");
        assert!(s.trades * 50 > s.live_boundaries, "aggressors trade");
        assert!((5..=80).contains(&top) && (200..=600).contains(&levels), "book shape");
    }
}

#[test]
fn replays_with_zero_anomalies_and_realistic_shape() {
    let (specs, bytes) = generate(&config(7, 2_000_000, 3));
    assert_realistic(&specs, &bytes);
}

#[test]
fn snapshot_levels_look_like_a_deep_book() {
    let (specs, bytes) = generate(&config(11, 100_000, 2));
    let first = &specs[0];
    let mut levels = std::collections::BTreeSet::new();
    for raw in bytes.chunks_exact(MBO_RECORD_SIZE) {
        let m = Mbo::decode(raw);
        if m.flags & F_SNAPSHOT == 0 {
            break;
        }
        if m.instrument_id == first.instrument_id && m.action == ACTION_ADD {
            levels.insert((m.side, m.price));
        }
    }
    assert!((150..=500).contains(&levels.len()), "{} levels", levels.len());
}

#[test]
fn many_seeds_replay_cleanly() {
    for seed in 100..130 {
        let (specs, bytes) = generate(&config(seed, 150_000, 1 + seed as u32 % 5));
        replay(&specs, &bytes);
    }
}

#[test]
fn exact_record_count_for_any_budget() {
    for instruments in [1, 3, 13] {
        for records in [0, 1, 2, 3, 7, 57, 1_000, 12_345, 40_001] {
            let (specs, bytes) = generate(&config(3, records, instruments));
            assert_eq!(specs.len(), instruments as usize);
            assert_eq!(bytes.len() as u64, records * MBO_RECORD_SIZE as u64);
            replay(&specs, &bytes);
        }
    }
}

#[test]
fn same_seed_same_bytes_and_chunks_concatenate() {
    let cfg = config(42, 300_000, 4);
    let (specs, bytes) = generate(&cfg);
    assert_eq!(generate(&cfg), (specs.clone(), bytes.clone()));
    assert_ne!(generate(&SynthConfig { seed: 43, ..cfg }).1, bytes);
    let mut streamed = Vec::new();
    let streamed_specs = generate_into(&cfg, 1_000, &mut |chunk: &[u8]| {
        assert!(chunk.len() == 1_000 * MBO_RECORD_SIZE || streamed.len() + chunk.len() == bytes.len());
        streamed.extend_from_slice(chunk);
    });
    assert_eq!((streamed_specs, streamed), (specs, bytes));
}

#[test]
fn instruments_are_cme_futures_with_unique_names_and_ids() {
    let (specs, _) = generate(&config(1, 0, 1_024));
    let names: Vec<&str> = specs.iter().take(5).map(|s| s.symbol.as_str()).collect();
    assert_eq!(names, ["ESZ6", "NQZ6", "CLZ6", "GCG7", "ZNH7"]);
    assert_eq!(specs[2].start_price, 65_400_000_000);
    assert_eq!(specs[12].symbol, "ESH7");
    let symbols: std::collections::HashSet<_> = specs.iter().map(|s| &s.symbol).collect();
    let ids: std::collections::HashSet<_> = specs.iter().map(|s| s.instrument_id).collect();
    assert_eq!((symbols.len(), ids.len()), (1_024, 1_024));
    assert!(specs.iter().all(|s| s.publisher_id == 1 && s.tick > 0 && s.start_price % s.tick == 0));
}

/// Same seed, same bytes forever: a change here changes every generated file and benchmark.
#[test]
fn bytes_are_pinned() {
    let (_, bytes) = generate(&config(2026, 5_000, 2));
    let fnv1a = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    assert_eq!(fnv1a, 0x8a55_8c5b_9fea_f5e2);
}
