//! Property test: random valid and invalid record sequences, over several books, applied to the
//! engine and to a deliberately naive model of the documented rules. At every F_LAST the engine's
//! views (BBO, levels with sizes and counts, queues, orders by id), anomaly counts and log, statistics,
//! event row and integrity check must agree with the model, and its snapshot must replay into the
//! same book.
mod common;

use std::collections::HashMap;

use common::{levels, LevelDump};
use mbostream_book::market::{STATE_CROSSED, STATE_LOCKED, STATE_TOP_CHANGED};
use mbostream_book::record::*;
use mbostream_book::{AnomalyKind, Book, EventRow, Market, ANOMALY_KIND_COUNT, EVENT_ROW_SIZE};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// (instrument_id, publisher_id) of the books the records go to.
const KEYS: [(u32, u16); 3] = [(7, 1), (7, 2), (8, 1)];
const PRICES: [i64; 5] = [99_750_000_000, 100_000_000_000, 100_250_000_000, 100_500_000_000, 100_750_000_000];
const MAX_ID: u64 = 12;

/// A side's best level as (price, size, count), `None` when the side is empty.
type Top = Option<(i64, u64, u32)>;

#[derive(Clone, Debug)]
struct ModelOrder {
    id: u64,
    is_bid: bool,
    price: i64,
    size: u32,
}

/// One book as the README states the rules, with no cleverness: the orders of both sides in one
/// vector in priority order (a move to the back of a queue is a remove and a push), levels found
/// by scanning, aggregates summed on read.
#[derive(Clone, Debug, Default)]
struct ModelBook {
    orders: Vec<ModelOrder>,
    /// Top-of-book level per side (index 0: bid, 1: ask).
    tob: [Option<(i64, u32)>; 2],
    anomalies: [u64; ANOMALY_KIND_COUNT],
    record_count: u64,
    event_count: u64,
    fill_count: u64,
    unattributed_fills: u64,
    fills_over_displayed: u64,
    trade_count: u64,
    volume: u64,
    clear_count: u64,
    last_trade: Option<(i64, u32, u8)>,
    in_event: bool,
    /// (bid, ask) best levels at the previous F_LAST.
    last_top: (Top, Top),
    /// Modifies of resting orders that sent them to the back of a queue, and that kept their place
    /// (tallied so a test can show the generated records reach both rules).
    moved_back: u64,
    kept_place: u64,
}

fn side_index(is_bid: bool) -> usize {
    if is_bid {
        0
    } else {
        1
    }
}

impl ModelBook {
    fn position(&self, id: u64) -> Option<usize> {
        self.orders.iter().position(|o| o.id == id)
    }

    fn count(&mut self, kind: AnomalyKind) {
        self.anomalies[kind as usize] += 1;
    }

    fn push(&mut self, id: u64, is_bid: bool, price: i64, size: u32) {
        // An order on a top-of-book side ends top-of-book mode there.
        self.tob[side_index(is_bid)] = None;
        self.orders.push(ModelOrder { id, is_bid, price, size });
    }

    fn clear_side(&mut self, is_bid: bool) {
        self.orders.retain(|o| o.is_bid != is_bid);
        self.tob[side_index(is_bid)] = None;
    }

    fn apply(&mut self, m: &Mbo) {
        use AnomalyKind::*;
        let side = match m.side {
            SIDE_BID => Some(true),
            SIDE_ASK => Some(false),
            _ => None,
        };
        let found = self.position(m.order_id);
        match m.action {
            ACTION_ADD => match side {
                None => self.count(UnknownSide),
                Some(is_bid) if m.flags & F_TOB != 0 => {
                    self.clear_side(is_bid);
                    if m.price != UNDEF_PRICE {
                        if m.size == 0 {
                            self.count(ZeroSize);
                        } else {
                            self.tob[side_index(is_bid)] = Some((m.price, m.size));
                        }
                    }
                }
                Some(_) if m.size == 0 => self.count(ZeroSize),
                Some(_) if m.price == UNDEF_PRICE => self.count(UndefinedPrice),
                Some(is_bid) => {
                    if let Some(i) = found {
                        self.count(DuplicateAdd);
                        self.orders.remove(i);
                    }
                    self.push(m.order_id, is_bid, m.price, m.size);
                }
            },
            ACTION_CANCEL => match found {
                None => self.count(CancelUnknownOrder),
                Some(_) if m.size == 0 => self.count(ZeroSize),
                Some(i) if m.size >= self.orders[i].size => {
                    if m.size > self.orders[i].size {
                        self.count(CancelExceedsSize);
                    }
                    self.orders.remove(i);
                }
                Some(i) => self.orders[i].size -= m.size,
            },
            ACTION_MODIFY => match (side, found) {
                (None, _) => self.count(UnknownSide),
                (Some(is_bid), None) => {
                    self.count(ModifyUnknownOrder);
                    if m.size == 0 {
                        self.count(ZeroSize);
                    } else if m.price == UNDEF_PRICE {
                        self.count(UndefinedPrice);
                    } else {
                        self.push(m.order_id, is_bid, m.price, m.size);
                    }
                }
                (Some(_), Some(i)) if m.size == 0 => {
                    self.count(ZeroSize);
                    self.orders.remove(i);
                }
                (Some(_), Some(_)) if m.price == UNDEF_PRICE => self.count(UndefinedPrice),
                (Some(is_bid), Some(i)) => {
                    let old = self.orders[i].clone();
                    if old.is_bid != is_bid {
                        self.count(ModifySideChange);
                    }
                    if old.is_bid != is_bid || old.price != m.price || m.size > old.size {
                        self.orders.remove(i);
                        self.push(m.order_id, is_bid, m.price, m.size);
                        self.moved_back += 1;
                    } else {
                        self.orders[i].size = m.size;
                        self.kept_place += 1;
                    }
                }
            },
            ACTION_CLEAR => {
                self.orders.clear();
                self.tob = [None, None];
                self.clear_count += 1;
            }
            ACTION_TRADE => {
                if m.price != UNDEF_PRICE {
                    self.trade_count += 1;
                    self.volume += m.size as u64;
                    self.last_trade = Some((m.price, m.size, m.side));
                }
            }
            ACTION_FILL => {
                self.fill_count += 1;
                match found {
                    None if m.side == SIDE_NONE => self.unattributed_fills += 1,
                    None => self.count(FillUnknownOrder),
                    Some(i) if m.size > self.orders[i].size => self.fills_over_displayed += 1,
                    Some(_) => {}
                }
            }
            ACTION_NONE => {}
            _ => self.count(UnknownAction),
        }
        self.record_count += 1;
        self.in_event = m.flags & F_LAST == 0;
        if !self.in_event {
            self.event_count += 1;
        }
    }

    fn levels(&self, is_bid: bool) -> Vec<LevelDump> {
        if let Some((price, size)) = self.tob[side_index(is_bid)] {
            return vec![(price, size as u64, 0, Vec::new())];
        }
        let mut prices: Vec<i64> = self.orders.iter().filter(|o| o.is_bid == is_bid).map(|o| o.price).collect();
        prices.sort_unstable();
        prices.dedup();
        if is_bid {
            prices.reverse();
        }
        prices
            .into_iter()
            .map(|price| {
                let queue: Vec<(u64, u32)> = self
                    .orders
                    .iter()
                    .filter(|o| o.is_bid == is_bid && o.price == price)
                    .map(|o| (o.id, o.size))
                    .collect();
                (price, queue.iter().map(|&(_, s)| s as u64).sum(), queue.len() as u32, queue)
            })
            .collect()
    }

    fn top(&self, is_bid: bool) -> Top {
        self.levels(is_bid).first().map(|l| (l.0, l.1, l.2))
    }
}

/// Which order a step names: a raw id (maybe unknown), or the `n`-th resting order of the book.
#[derive(Clone, Copy, Debug)]
enum Id {
    Raw(u64),
    Resting(usize),
}

/// Side and price relative to the named order when it rests, so that valid moves are common.
#[derive(Clone, Copy, Debug)]
enum SideChoice {
    Same,
    Other,
    Byte(u8),
}

#[derive(Clone, Copy, Debug)]
enum PriceChoice {
    Same,
    Level(usize),
    Undefined,
}

/// One record before it is resolved against the model (which knows the resting orders).
#[derive(Clone, Copy, Debug)]
struct Step {
    key: usize,
    action: u8,
    id: Id,
    side: SideChoice,
    price: PriceChoice,
    size: u32,
    tob: bool,
    last: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let key = prop_oneof![4 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)];
    let action = prop_oneof![
        30 => Just(ACTION_ADD),
        15 => Just(ACTION_CANCEL),
        22 => Just(ACTION_MODIFY),
        8 => Just(ACTION_FILL),
        5 => Just(ACTION_TRADE),
        3 => Just(ACTION_NONE),
        2 => Just(ACTION_CLEAR),
        1 => Just(b'X'),
    ];
    let id = prop_oneof![1 => (1..=MAX_ID).prop_map(Id::Raw), 1 => any::<usize>().prop_map(Id::Resting)];
    let side = prop_oneof![
        8 => Just(SideChoice::Same),
        4 => Just(SideChoice::Byte(SIDE_BID)),
        4 => Just(SideChoice::Byte(SIDE_ASK)),
        1 => Just(SideChoice::Other),
        1 => Just(SideChoice::Byte(SIDE_NONE)),
        1 => Just(SideChoice::Byte(b'?')),
    ];
    let price = prop_oneof![
        6 => Just(PriceChoice::Same),
        10 => (0..PRICES.len()).prop_map(PriceChoice::Level),
        1 => Just(PriceChoice::Undefined),
    ];
    let size = prop_oneof![1 => Just(0u32), 8 => 1..=6u32];
    (key, action, id, side, price, size, prop::bool::weighted(0.08), prop::bool::weighted(0.75)).prop_map(
        |(key, action, id, side, price, size, tob, last)| Step { key, action, id, side, price, size, tob, last },
    )
}

/// The record a step stands for, given the model's resting orders.
fn resolve(s: &Step, model: &ModelBook, sequence: u32) -> Mbo {
    let resting = match s.id {
        Id::Resting(n) if !model.orders.is_empty() => Some(&model.orders[n % model.orders.len()]),
        _ => None,
    };
    let order_id = match (s.id, resting) {
        (_, Some(o)) => o.id,
        (Id::Raw(id), None) => id,
        (Id::Resting(n), None) => 1 + n as u64 % MAX_ID,
    };
    let resting_bid = resting.is_none_or(|o| o.is_bid);
    let side = match s.side {
        SideChoice::Same => {
            if resting_bid {
                SIDE_BID
            } else {
                SIDE_ASK
            }
        }
        SideChoice::Other => {
            if resting_bid {
                SIDE_ASK
            } else {
                SIDE_BID
            }
        }
        SideChoice::Byte(b) => b,
    };
    let price = match s.price {
        PriceChoice::Same => resting.map_or(PRICES[2], |o| o.price),
        PriceChoice::Level(i) => PRICES[i],
        PriceChoice::Undefined => UNDEF_PRICE,
    };
    let tob = s.tob && s.action == ACTION_ADD;
    let (instrument_id, publisher_id) = KEYS[s.key];
    Mbo {
        instrument_id,
        publisher_id,
        order_id: if tob { 0 } else { order_id },
        price,
        size: s.size,
        flags: (if s.last { F_LAST } else { 0 }) | (if tob { F_TOB } else { 0 }),
        action: s.action,
        side: if s.action == ACTION_CLEAR { SIDE_NONE } else { side },
        ts_event: 1_000 * sequence as u64,
        ts_recv: 1_000 * sequence as u64 + 1,
        sequence,
        ..Mbo::default()
    }
}

fn view(top: Top) -> (i64, u64, u32) {
    top.unwrap_or((UNDEF_PRICE, 0, 0))
}

/// Everything a reader can see of a consistent book, against the model.
fn assert_matches(book: &Book, model: &ModelBook) -> Result<(), TestCaseError> {
    let key = (book.instrument_id, book.publisher_id);
    prop_assert_eq!(levels(book, true), model.levels(true), "bids of {:?}", key);
    prop_assert_eq!(levels(book, false), model.levels(false), "asks of {:?}", key);
    let bbo = book.bbo();
    prop_assert_eq!(bbo.bid.map(|l| (l.price, l.size, l.count)), model.top(true));
    prop_assert_eq!(bbo.ask.map(|l| (l.price, l.size, l.count)), model.top(false));
    prop_assert_eq!(book.order_count(), model.orders.len());
    for o in &model.orders {
        let found = book.order(o.id).map(|e| (e.price, e.size, e.is_bid));
        prop_assert_eq!(found, Some((o.price, o.size, o.is_bid)), "order {} of {:?}", o.id, key);
    }
    prop_assert_eq!(book.anomalies, model.anomalies, "anomaly counts of {:?}", key);
    let s = &book.stats;
    prop_assert_eq!(
        (s.record_count, s.event_count, s.fill_count, s.unattributed_fills, s.fills_over_displayed),
        (model.record_count, model.event_count, model.fill_count, model.unattributed_fills, model.fills_over_displayed)
    );
    prop_assert_eq!((s.trade_count, s.volume, s.clear_count), (model.trade_count, model.volume, model.clear_count));
    let last_trade = (s.trade_count > 0).then_some((s.last_trade_price, s.last_trade_size, s.last_trade_side));
    prop_assert_eq!(last_trade, model.last_trade);
    let (bid, ask) = (model.top(true), model.top(false));
    let (crossed, locked) = match (bid, ask) {
        (Some(b), Some(a)) => (b.0 > a.0, b.0 == a.0),
        _ => (false, false),
    };
    prop_assert_eq!((s.crossed, s.locked), (crossed, locked));
    prop_assert_eq!(book.check_integrity(), Vec::<String>::new());

    let replica = {
        let mut market = Market::new();
        for m in book.snapshot(1) {
            market.apply(&m);
        }
        market
    };
    let copy = replica.book(book.instrument_id, book.publisher_id).expect("a snapshot has its R");
    prop_assert_eq!(levels(copy, true), model.levels(true), "snapshot bids of {:?}", key);
    prop_assert_eq!(levels(copy, false), model.levels(false), "snapshot asks of {:?}", key);
    Ok(())
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut market = Market::new();
    let mut models: HashMap<(u32, u16), ModelBook> = HashMap::new();
    let mut first_seen: Vec<(u32, u16)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let key = KEYS[s.key];
        if !models.contains_key(&key) {
            first_seen.push(key);
        }
        let model = models.entry(key).or_default();
        let m = resolve(s, model, i as u32 + 1);
        let before = model.anomalies.iter().sum::<u64>();
        model.apply(&m);
        let raised = model.anomalies.iter().sum::<u64>() - before;

        let mut buf = Vec::new();
        m.encode_into(&mut buf);
        let logged = market.log.entries.len();
        let (mut events, mut audit) = (Vec::new(), Vec::new());
        let end = market.apply_slice(&buf, MBO_RECORD_SIZE, 0, 1, false, 0, &mut events, Some(&mut audit));
        prop_assert_eq!(end.end, 1);
        prop_assert_eq!(audit, vec![], "integrity after record {}: {:?}", i, m);
        let new_entries = &market.log.entries[logged..];
        prop_assert_eq!(new_entries.len() as u64, raised, "anomalies logged for record {}: {:?}", i, m);
        for a in new_entries {
            prop_assert_eq!((a.record_index, a.order_id, a.sequence), (i as u64, m.order_id, m.sequence));
        }
        let book = market.book(key.0, key.1).expect("the record's book exists");
        prop_assert_eq!(book.in_event, model.in_event);
        prop_assert_eq!(market.is_consistent(), models.values().all(|b| !b.in_event));

        if m.flags & F_LAST == 0 {
            prop_assert!(events.is_empty(), "an event row before the F_LAST");
            continue;
        }
        prop_assert_eq!(events.len(), EVENT_ROW_SIZE);
        let row = EventRow::decode(&events);
        let model = models.get_mut(&key).expect("model of the record's book");
        let (bid, ask) = (model.top(true), model.top(false));
        prop_assert_eq!((row.bid_price, row.bid_size, row.bid_count), view(bid));
        prop_assert_eq!((row.ask_price, row.ask_size, row.ask_count), view(ask));
        prop_assert_eq!((row.instrument_id, row.publisher_id as u16, row.sequence), (key.0, key.1, m.sequence));
        let (crossed, locked) = match (bid, ask) {
            (Some(b), Some(a)) => (b.0 > a.0, b.0 == a.0),
            _ => (false, false),
        };
        prop_assert_eq!(row.state & STATE_CROSSED != 0, crossed);
        prop_assert_eq!(row.state & STATE_LOCKED != 0, locked);
        prop_assert_eq!(row.state & STATE_TOP_CHANGED != 0, (bid, ask) != model.last_top);
        model.last_top = (bid, ask);

        for (k, model) in &models {
            if !model.in_event {
                assert_matches(market.book(k.0, k.1).expect("a modelled book exists"), model)?;
            }
        }
    }
    let keys: Vec<(u32, u16)> = market.books().iter().map(|b| (b.instrument_id, b.publisher_id)).collect();
    prop_assert_eq!(keys, first_seen);
    Ok(())
}

/// What the generated sequences reach, summed over many of them: if a strategy change stopped
/// producing some rule or anomaly, the property test would pass without testing it.
#[derive(Debug, Default)]
struct Reach {
    anomalies: [u64; ANOMALY_KIND_COUNT],
    moved_back: u64,
    kept_place: u64,
    fills_over_displayed: u64,
    unattributed_fills: u64,
    clears: u64,
    top_of_book_sides: u64,
    crossed: u64,
    locked: u64,
    long_queues: u64,
    open_events_across_books: u64,
}

#[test]
fn generated_sequences_reach_every_rule_and_anomaly() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut reach = Reach::default();
    let sequences = prop::collection::vec(step(), 1..160);
    for _ in 0..100 {
        let steps = sequences.new_tree(&mut runner).expect("a generated sequence").current();
        let mut models: HashMap<(u32, u16), ModelBook> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            let model = models.entry(KEYS[s.key]).or_default();
            let m = resolve(s, model, i as u32 + 1);
            model.apply(&m);
            if m.flags & F_LAST == 0 {
                continue;
            }
            let open = models.values().filter(|b| b.in_event).count();
            reach.open_events_across_books += (open > 0) as u64;
            let model = &models[&KEYS[s.key]];
            let (bid, ask) = (model.top(true), model.top(false));
            if let (Some(b), Some(a)) = (bid, ask) {
                reach.crossed += (b.0 > a.0) as u64;
                reach.locked += (b.0 == a.0) as u64;
            }
            reach.top_of_book_sides += model.tob.iter().filter(|t| t.is_some()).count() as u64;
            reach.long_queues +=
                model.levels(true).iter().chain(&model.levels(false)).filter(|l| l.3.len() >= 3).count() as u64;
        }
        for model in models.values() {
            for (total, n) in reach.anomalies.iter_mut().zip(model.anomalies) {
                *total += n;
            }
            reach.moved_back += model.moved_back;
            reach.kept_place += model.kept_place;
            reach.fills_over_displayed += model.fills_over_displayed;
            reach.unattributed_fills += model.unattributed_fills;
            reach.clears += model.clear_count;
        }
    }
    for kind in AnomalyKind::ALL {
        assert!(reach.anomalies[kind as usize] > 0, "no {} generated: {reach:?}", kind.name());
    }
    let reached = [
        reach.moved_back,
        reach.kept_place,
        reach.fills_over_displayed,
        reach.unattributed_fills,
        reach.clears,
        reach.top_of_book_sides,
        reach.crossed,
        reach.locked,
        reach.long_queues,
        reach.open_events_across_books,
    ];
    assert!(reached.iter().all(|&n| n > 0), "a rule the sequences never reach: {reach:?}");
}

/// `cases` generated cases; failing ones are saved next to this file
/// (tests/properties.proptest-regressions) and replayed first.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn engine_matches_the_model_at_every_f_last(steps in prop::collection::vec(step(), 1..160)) {
        run(&steps)?;
    }
}

/// The records a sequence of steps stands for, resolved against a model fed as it goes.
fn records_of(steps: &[Step]) -> Vec<Mbo> {
    let mut models: HashMap<(u32, u16), ModelBook> = HashMap::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let model = models.entry(KEYS[s.key]).or_default();
            let m = resolve(s, model, i as u32 + 1);
            model.apply(&m);
            m
        })
        .collect()
}

/// A book as compared across ways of feeding a market: its key, bid and ask levels with their
/// queues, resting orders and records applied.
type BookDump = ((u32, u16), Vec<LevelDump>, Vec<LevelDump>, usize, u64);

/// What a market holds after a run, book by book.
fn dump(market: &Market) -> Vec<BookDump> {
    let mut books: Vec<_> = market
        .books()
        .iter()
        .map(|b| ((b.instrument_id, b.publisher_id), levels(b, true), levels(b, false), b.order_count(), b.stats.record_count))
        .collect();
    books.sort_by_key(|b| b.0);
    books
}

proptest! {
    #![proptest_config(config(200))]

    /// `apply_slice` looks records ahead (cache hints for their orders): however a run is cut into
    /// slices, and whatever the stride, the books, event rows and anomalies are those of applying
    /// it one record at a time.
    #[test]
    fn slices_of_any_size_and_stride_apply_as_records_one_by_one(
        steps in prop::collection::vec(step(), 1..400),
        chunk in 1usize..40,
        padding in prop_oneof![Just(0usize), Just(8usize), Just(200usize)],
    ) {
        let records = records_of(&steps);
        let stride = MBO_RECORD_SIZE + padding;
        let mut buf = Vec::new();
        for m in &records {
            m.encode_into(&mut buf);
            buf.resize(buf.len() + padding, 0xA5);
        }

        let mut one_by_one = Market::new();
        let mut rows_one_by_one = Vec::new();
        for (i, m) in records.iter().enumerate() {
            let mut single = Vec::new();
            m.encode_into(&mut single);
            let mut events = Vec::new();
            one_by_one.apply_slice(&single, MBO_RECORD_SIZE, 0, 1, false, 0, &mut events, None);
            if !events.is_empty() {
                let mut row = EventRow::decode(&events);
                row.index = i as u64;
                rows_one_by_one.push(row);
            }
        }

        let mut sliced = Market::new();
        let mut events = Vec::new();
        let mut start = 0;
        while start < records.len() {
            start = sliced.apply_slice(&buf, stride, start, start + chunk, false, 0, &mut events, None).end;
        }
        let rows_sliced: Vec<EventRow> = events.chunks(EVENT_ROW_SIZE).map(EventRow::decode).collect();

        prop_assert_eq!(rows_sliced, rows_one_by_one);
        prop_assert_eq!(dump(&sliced), dump(&one_by_one));
        prop_assert_eq!(&sliced.log.entries, &one_by_one.log.entries);
    }
}
