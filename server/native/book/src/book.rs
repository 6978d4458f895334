//! The L3 book of one (instrument_id, publisher_id): orders by id, two ladders of FIFO queues,
//! and the statistics that are kept incrementally as records are applied.
use crate::anomaly::{Anomaly, AnomalyKind, ANOMALY_KIND_COUNT};
use crate::hash::{prefetch, OrderIndex};
use crate::ladder::Ladder;
use crate::level::{Level, LevelView, NIL};
use crate::record::*;

/// Below this size of order index a book's orders are left to the cache (see [`Book::prefetch_index`]):
/// 64 KiB of buckets, about 2,600 orders.
const PREFETCH_MIN_INDEX_BYTES: usize = 64 * 1024;

/// A resting order. `priority` is the market-wide stamp of the record that gave it its queue place.
#[derive(Clone, Copy, Debug)]
pub struct Order {
    pub order_id: u64,
    pub price: i64,
    pub size: u32,
    pub is_bid: bool,
    pub priority: u64,
    /// `ts_event` of the record that gave the order its queue place (re-emitted in snapshots).
    pub ts_event: u64,
    /// `sequence` of the last record that changed the order.
    pub sequence: u32,
    prev: u32,
    next: u32,
}

/// Best bid and offer: `None` for an empty side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bbo {
    pub bid: Option<LevelView>,
    pub ask: Option<LevelView>,
}

impl Bbo {
    /// Crossed: best bid above best ask. Locked: equal. Both need both sides present.
    pub fn crossed_locked(&self) -> (bool, bool) {
        match (self.bid, self.ask) {
            (Some(b), Some(a)) => (b.price > a.price, b.price == a.price),
            _ => (false, false),
        }
    }
}

/// Statistics kept as records are applied (never recomputed on read).
#[derive(Clone, Debug, Default)]
pub struct BookStats {
    /// Records applied to this book.
    pub record_count: u64,
    /// Records with F_LAST applied to this book (events).
    pub event_count: u64,
    pub last_sequence: u32,
    pub last_ts_event: u64,
    pub last_ts_recv: u64,
    pub channel_id: u8,
    /// sequence / ts_event / ts_recv of the last F_LAST record: the moment the views describe.
    pub consistent_sequence: u32,
    pub consistent_ts_event: u64,
    pub consistent_ts_recv: u64,
    /// Last `T` record: price (UNDEF_PRICE before any trade), size, aggressor side, ts_event.
    pub last_trade_price: i64,
    pub last_trade_size: u32,
    pub last_trade_side: u8,
    pub last_trade_ts: u64,
    /// Sum of `T` sizes; `F` records are the passive side of the same trades and are not added.
    pub volume: u64,
    pub trade_count: u64,
    pub fill_count: u64,
    /// Side-`N` fills, which name no resting order (auction prints): not an anomaly.
    pub unattributed_fills: u64,
    /// Fills larger than the resting order's displayed size (iceberg refills): a feed fact, not an
    /// anomaly; the `M`/`C` that follows drives the book.
    pub fills_over_displayed: u64,
    pub clear_count: u64,
    /// Crossed/locked state at the last F_LAST and since when (ts_event), with interval totals.
    pub crossed: bool,
    pub locked: bool,
    pub crossed_since: u64,
    pub locked_since: u64,
    pub crossed_intervals: u64,
    pub locked_intervals: u64,
    pub crossed_ns: u64,
    pub locked_ns: u64,
}

/// Words in a book's saved state ([`Book::state_words`]): a version word, the statistics, the anomaly counts.
pub const BOOK_STATE_WORDS: usize = 1 + 30 + ANOMALY_KIND_COUNT;
const BOOK_STATE_VERSION: u64 = 0x4d42_5354_0000_0001;

impl Book {
    /// The book's statistics and anomaly counts as words, for a replica that rebuilds the book from
    /// a snapshot (`R` + `A`…) and must then carry the same counters as the book it copies.
    pub fn state_words(&self) -> [u64; BOOK_STATE_WORDS] {
        let s = &self.stats;
        let mut w = [0u64; BOOK_STATE_WORDS];
        let stats = [
            s.record_count,
            s.event_count,
            s.last_sequence as u64,
            s.last_ts_event,
            s.last_ts_recv,
            s.channel_id as u64,
            s.consistent_sequence as u64,
            s.consistent_ts_event,
            s.consistent_ts_recv,
            s.last_trade_price as u64,
            s.last_trade_size as u64,
            s.last_trade_side as u64,
            s.last_trade_ts,
            s.volume,
            s.trade_count,
            s.fill_count,
            s.unattributed_fills,
            s.fills_over_displayed,
            s.clear_count,
            s.crossed as u64,
            s.locked as u64,
            s.crossed_since,
            s.locked_since,
            s.crossed_intervals,
            s.locked_intervals,
            s.crossed_ns,
            s.locked_ns,
            0,
            0,
            0,
        ];
        w[0] = BOOK_STATE_VERSION;
        w[1..31].copy_from_slice(&stats);
        w[31..].copy_from_slice(&self.anomalies);
        w
    }

    /// Restores what [`Book::state_words`] saved; the levels and queues are the snapshot's business.
    /// Returns false (and changes nothing) for words of another layout version.
    pub fn restore_state_words(&mut self, w: &[u64; BOOK_STATE_WORDS]) -> bool {
        if w[0] != BOOK_STATE_VERSION {
            return false;
        }
        let v = &w[1..31];
        let s = &mut self.stats;
        s.record_count = v[0];
        s.event_count = v[1];
        s.last_sequence = v[2] as u32;
        s.last_ts_event = v[3];
        s.last_ts_recv = v[4];
        s.channel_id = v[5] as u8;
        s.consistent_sequence = v[6] as u32;
        s.consistent_ts_event = v[7];
        s.consistent_ts_recv = v[8];
        s.last_trade_price = v[9] as i64;
        s.last_trade_size = v[10] as u32;
        s.last_trade_side = v[11] as u8;
        s.last_trade_ts = v[12];
        s.volume = v[13];
        s.trade_count = v[14];
        s.fill_count = v[15];
        s.unattributed_fills = v[16];
        s.fills_over_displayed = v[17];
        s.clear_count = v[18];
        s.crossed = v[19] != 0;
        s.locked = v[20] != 0;
        s.crossed_since = v[21];
        s.locked_since = v[22];
        s.crossed_intervals = v[23];
        s.locked_intervals = v[24];
        s.crossed_ns = v[25];
        s.locked_ns = v[26];
        self.anomalies.copy_from_slice(&w[31..]);
        true
    }
}

/// Times one condition of the book seen at each F_LAST (crossed, or locked): an interval opens at
/// the `ts_event` where it becomes true and its length is added to `total_ns` where it ends.
fn track_interval(now: bool, ts_event: u64, active: &mut bool, since: &mut u64, intervals: &mut u64, total_ns: &mut u64) {
    if now == *active {
        return;
    }
    if now {
        *since = ts_event;
        *intervals += 1;
    } else {
        *total_ns += ts_event.saturating_sub(*since);
        *since = 0;
    }
    *active = now;
}

/// A full-depth book. All mutation goes through [`Book::apply`].
#[derive(Clone, Debug)]
pub struct Book {
    pub instrument_id: u32,
    pub publisher_id: u16,
    slab: Vec<Order>,
    free: Vec<u32>,
    index: OrderIndex,
    pub bids: Ladder,
    pub asks: Ladder,
    pub stats: BookStats,
    pub anomalies: [u64; ANOMALY_KIND_COUNT],
    /// True between a record without F_LAST and the next F_LAST: views are not consistent then.
    pub in_event: bool,
    /// BBO at the previous F_LAST, to tell whether the top changed.
    pub last_bbo: Bbo,
}

impl Book {
    pub fn new(instrument_id: u32, publisher_id: u16) -> Book {
        Book {
            instrument_id,
            publisher_id,
            slab: Vec::new(),
            free: Vec::new(),
            index: OrderIndex::new(),
            bids: Ladder::new(true),
            asks: Ladder::new(false),
            stats: BookStats { last_trade_price: UNDEF_PRICE, last_trade_side: SIDE_NONE, ..Default::default() },
            anomalies: [0; ANOMALY_KIND_COUNT],
            in_event: false,
            last_bbo: Bbo::default(),
        }
    }

    /// Number of resting orders.
    pub fn order_count(&self) -> usize {
        self.index.len()
    }

    /// The resting order with this id.
    pub fn order(&self, order_id: u64) -> Option<&Order> {
        self.index.get(order_id).map(|s| &self.slab[s as usize])
    }

    pub fn ladder(&self, is_bid: bool) -> &Ladder {
        if is_bid {
            &self.bids
        } else {
            &self.asks
        }
    }

    /// Best bid and offer.
    #[inline]
    pub fn bbo(&self) -> Bbo {
        Bbo { bid: self.bids.best().map(LevelView::from), ask: self.asks.best().map(LevelView::from) }
    }

    /// Asks for the cache line of `order_id`'s index bucket: a hint for a record a few ahead
    /// (see `Market::apply_slice`), with no effect on the book. False (and no hint) for a book small
    /// enough to stay in the cache, where the hint costs more than it saves.
    #[inline(always)]
    pub fn prefetch_index(&self, order_id: u64) -> bool {
        if self.index.table_bytes() < PREFETCH_MIN_INDEX_BYTES {
            return false;
        }
        self.index.prefetch(order_id);
        true
    }

    /// Asks for the cache lines of the resting order `order_id`, if it rests here: the second stage
    /// of the hint, taken when its index bucket should already be cached.
    #[inline(always)]
    pub fn prefetch_order(&self, order_id: u64) {
        if let Some(slot) = self.index.get(order_id) {
            prefetch(&self.slab[slot as usize]);
        }
    }

    /// Orders of a level in queue priority order.
    pub fn queue<'a>(&'a self, level: &'a Level) -> impl Iterator<Item = &'a Order> + 'a {
        let mut cur = level.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let o = &self.slab[cur as usize];
            cur = o.next;
            Some(o)
        })
    }

    /// Applies one record. `stamp` is the market-wide record position (priority and anomaly context).
    pub fn apply(&mut self, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        match m.action {
            ACTION_ADD => self.add(m, stamp, log),
            ACTION_CANCEL => self.cancel(m, stamp, log),
            ACTION_MODIFY => self.modify(m, stamp, log),
            ACTION_CLEAR => self.clear(),
            ACTION_TRADE => self.trade(m),
            ACTION_FILL => self.fill(m, stamp, log),
            ACTION_NONE => {}
            _ => self.report(AnomalyKind::UnknownAction, m, stamp, log),
        }
        let s = &mut self.stats;
        s.record_count += 1;
        s.last_sequence = m.sequence;
        s.last_ts_event = m.ts_event;
        s.last_ts_recv = m.ts_recv;
        s.channel_id = m.channel_id;
        if m.flags & F_LAST != 0 {
            self.end_event(m);
        } else {
            self.in_event = true;
        }
    }

    fn end_event(&mut self, m: &Mbo) {
        self.in_event = false;
        let bbo = self.bbo();
        let s = &mut self.stats;
        s.event_count += 1;
        s.consistent_sequence = m.sequence;
        s.consistent_ts_event = m.ts_event;
        s.consistent_ts_recv = m.ts_recv;
        let (crossed, locked) = bbo.crossed_locked();
        track_interval(crossed, m.ts_event, &mut s.crossed, &mut s.crossed_since, &mut s.crossed_intervals, &mut s.crossed_ns);
        track_interval(locked, m.ts_event, &mut s.locked, &mut s.locked_since, &mut s.locked_intervals, &mut s.locked_ns);
    }

    fn report(&mut self, kind: AnomalyKind, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        self.anomalies[kind as usize] += 1;
        log.push(Anomaly {
            kind,
            record_index: stamp,
            instrument_id: m.instrument_id,
            publisher_id: m.publisher_id,
            order_id: m.order_id,
            sequence: m.sequence,
            ts_event: m.ts_event,
            action: m.action,
            side: m.side,
        });
    }

    #[inline]
    fn side_of(m: &Mbo) -> Option<bool> {
        match m.side {
            SIDE_BID => Some(true),
            SIDE_ASK => Some(false),
            _ => None,
        }
    }

    fn add(&mut self, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        let Some(is_bid) = Self::side_of(m) else {
            return self.report(AnomalyKind::UnknownSide, m, stamp, log);
        };
        if m.flags & F_TOB != 0 {
            // A top-of-book add replaces the whole side; UNDEF_PRICE only clears it.
            self.clear_side(is_bid);
            if m.price == UNDEF_PRICE {
                return;
            }
            if m.size == 0 {
                return self.report(AnomalyKind::ZeroSize, m, stamp, log);
            }
            let ladder = if is_bid { &mut self.bids } else { &mut self.asks };
            ladder.levels.insert(m.price, Level::top_of_book(m.price, m.size));
            return;
        }
        if m.size == 0 {
            return self.report(AnomalyKind::ZeroSize, m, stamp, log);
        }
        if m.price == UNDEF_PRICE {
            return self.report(AnomalyKind::UndefinedPrice, m, stamp, log);
        }
        if let Some(slot) = self.index.get(m.order_id) {
            // The newest message about an id wins: the old order leaves, the new one queues at the back.
            self.report(AnomalyKind::DuplicateAdd, m, stamp, log);
            self.remove_slot(slot);
        }
        self.insert_order(m, is_bid, stamp);
    }

    fn cancel(&mut self, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        let Some(slot) = self.index.get(m.order_id) else {
            return self.report(AnomalyKind::CancelUnknownOrder, m, stamp, log);
        };
        if m.size == 0 {
            return self.report(AnomalyKind::ZeroSize, m, stamp, log);
        }
        let o = self.slab[slot as usize];
        if m.size >= o.size {
            if m.size > o.size {
                self.report(AnomalyKind::CancelExceedsSize, m, stamp, log);
            }
            self.remove_slot(slot);
            return;
        }
        // A partial cancel keeps the order's place in the queue.
        self.slab[slot as usize].size -= m.size;
        self.slab[slot as usize].sequence = m.sequence;
        let ladder = if o.is_bid { &mut self.bids } else { &mut self.asks };
        ladder.levels.get_mut(&o.price).expect("resting order has a level").size -= m.size as u64;
    }

    fn modify(&mut self, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        let Some(is_bid) = Self::side_of(m) else {
            return self.report(AnomalyKind::UnknownSide, m, stamp, log);
        };
        let Some(slot) = self.index.get(m.order_id) else {
            // An unknown id is treated as an add (Databento's reference book does the same).
            self.report(AnomalyKind::ModifyUnknownOrder, m, stamp, log);
            if m.size == 0 {
                return self.report(AnomalyKind::ZeroSize, m, stamp, log);
            }
            if m.price == UNDEF_PRICE {
                return self.report(AnomalyKind::UndefinedPrice, m, stamp, log);
            }
            self.insert_order(m, is_bid, stamp);
            return;
        };
        if m.size == 0 {
            self.report(AnomalyKind::ZeroSize, m, stamp, log);
            self.remove_slot(slot);
            return;
        }
        if m.price == UNDEF_PRICE {
            return self.report(AnomalyKind::UndefinedPrice, m, stamp, log);
        }
        let o = self.slab[slot as usize];
        if o.is_bid != is_bid {
            // A side change is a new order on the other side: it queues at the back there.
            self.report(AnomalyKind::ModifySideChange, m, stamp, log);
            self.remove_slot(slot);
            self.insert_order(m, is_bid, stamp);
            return;
        }
        if o.price != m.price || m.size > o.size {
            // Price change loses priority; size increase loses priority.
            self.unlink(slot);
            let order = &mut self.slab[slot as usize];
            order.price = m.price;
            order.size = m.size;
            order.priority = stamp;
            order.ts_event = m.ts_event;
            order.sequence = m.sequence;
            self.push_back(slot);
            return;
        }
        // Size decrease (or no change) keeps priority.
        let delta = (o.size - m.size) as u64;
        let order = &mut self.slab[slot as usize];
        order.size = m.size;
        order.sequence = m.sequence;
        let ladder = if is_bid { &mut self.bids } else { &mut self.asks };
        ladder.levels.get_mut(&o.price).expect("resting order has a level").size -= delta;
    }

    fn fill(&mut self, m: &Mbo, stamp: u64, log: &mut AnomalyLog) {
        self.stats.fill_count += 1;
        match self.index.get(m.order_id) {
            None if m.side == SIDE_NONE => self.stats.unattributed_fills += 1,
            None => self.report(AnomalyKind::FillUnknownOrder, m, stamp, log),
            Some(slot) if m.size > self.slab[slot as usize].size => self.stats.fills_over_displayed += 1,
            Some(_) => {}
        }
    }

    fn trade(&mut self, m: &Mbo) {
        if m.price == UNDEF_PRICE {
            return;
        }
        let s = &mut self.stats;
        s.last_trade_price = m.price;
        s.last_trade_size = m.size;
        s.last_trade_side = m.side;
        s.last_trade_ts = m.ts_event;
        s.volume += m.size as u64;
        s.trade_count += 1;
    }

    /// Empties the book (an `R` record). Trade statistics are history and are kept.
    pub fn clear(&mut self) {
        self.stats.clear_count += 1;
        self.bids.levels.clear();
        self.asks.levels.clear();
        self.index.clear();
        self.slab.clear();
        self.free.clear();
    }

    fn clear_side(&mut self, is_bid: bool) {
        let ladder = if is_bid { &mut self.bids } else { &mut self.asks };
        let levels = std::mem::take(&mut ladder.levels);
        for level in levels.values() {
            let mut cur = level.head;
            while cur != NIL {
                let o = self.slab[cur as usize];
                self.index.remove(o.order_id);
                self.free.push(cur);
                cur = o.next;
            }
        }
    }

    fn insert_order(&mut self, m: &Mbo, is_bid: bool, stamp: u64) {
        if self.ladder(is_bid).is_top_of_book() {
            // An order-by-order add ends top-of-book mode for this side.
            self.clear_side(is_bid);
        }
        let order = Order {
            order_id: m.order_id,
            price: m.price,
            size: m.size,
            is_bid,
            priority: stamp,
            ts_event: m.ts_event,
            sequence: m.sequence,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = order;
                s
            }
            None => {
                self.slab.push(order);
                (self.slab.len() - 1) as u32
            }
        };
        self.index.insert(m.order_id, slot);
        self.push_back(slot);
    }

    /// Appends a slot (with its price, side and size already set) to the back of its level.
    fn push_back(&mut self, slot: u32) {
        let o = self.slab[slot as usize];
        let ladder = if o.is_bid { &mut self.bids } else { &mut self.asks };
        let level = ladder.levels.entry(o.price).or_insert_with(|| Level::new(o.price));
        let old_tail = level.tail;
        level.tail = slot;
        if old_tail == NIL {
            level.head = slot;
        }
        level.size += o.size as u64;
        level.count += 1;
        let order = &mut self.slab[slot as usize];
        order.prev = old_tail;
        order.next = NIL;
        if old_tail != NIL {
            self.slab[old_tail as usize].next = slot;
        }
    }

    /// Takes a slot out of its level's queue; removes the level when it empties.
    fn unlink(&mut self, slot: u32) {
        let o = self.slab[slot as usize];
        let ladder = if o.is_bid { &mut self.bids } else { &mut self.asks };
        let level = ladder.levels.get_mut(&o.price).expect("resting order has a level");
        if o.prev == NIL {
            level.head = o.next;
        } else {
            self.slab[o.prev as usize].next = o.next;
        }
        if o.next == NIL {
            level.tail = o.prev;
        } else {
            self.slab[o.next as usize].prev = o.prev;
        }
        level.size -= o.size as u64;
        level.count -= 1;
        if level.is_empty() {
            ladder.levels.remove(&o.price);
        }
    }

    fn remove_slot(&mut self, slot: u32) {
        self.unlink(slot);
        let id = self.slab[slot as usize].order_id;
        self.index.remove(id);
        self.free.push(slot);
    }

    /// The book as an MBO snapshot: `R` then one `A` per order in queue priority order (bids best
    /// first, then asks), all flagged F_SNAPSHOT | F_BAD_TS_RECV, the last also F_LAST. Replaying it
    /// into an empty book reproduces this book's levels and queues exactly.
    pub fn snapshot(&self, ts_recv: u64) -> Vec<Mbo> {
        let flags = F_SNAPSHOT | F_BAD_TS_RECV;
        let base = Mbo {
            publisher_id: self.publisher_id,
            instrument_id: self.instrument_id,
            ts_event: self.stats.consistent_ts_event,
            order_id: 0,
            price: UNDEF_PRICE,
            size: 0,
            flags,
            channel_id: self.stats.channel_id,
            action: ACTION_CLEAR,
            side: SIDE_NONE,
            ts_recv,
            ts_in_delta: 0,
            sequence: 0,
        };
        let mut out = Vec::with_capacity(self.order_count() + 3);
        out.push(base);
        for ladder in [&self.bids, &self.asks] {
            let side = if ladder.is_bid { SIDE_BID } else { SIDE_ASK };
            for level in ladder.iter_best_first() {
                if level.tob {
                    out.push(Mbo {
                        price: level.price,
                        size: level.size as u32,
                        flags: flags | F_TOB,
                        action: ACTION_ADD,
                        side,
                        sequence: self.stats.consistent_sequence,
                        ..base
                    });
                    continue;
                }
                for o in self.queue(level) {
                    out.push(Mbo {
                        ts_event: o.ts_event,
                        order_id: o.order_id,
                        price: o.price,
                        size: o.size,
                        action: ACTION_ADD,
                        side,
                        sequence: o.sequence,
                        ..base
                    });
                }
            }
        }
        out.last_mut().expect("snapshot has its R").flags |= F_LAST;
        out
    }

    /// Checks every structural invariant; returns one message per violation (empty: sound).
    ///
    /// Invariants: each level's size equals the sum of its orders and its count their number; no
    /// empty level; every resting size > 0; each order sits in exactly one queue, at its own price
    /// and side; the id index and the queues agree; within a queue, priority stamps strictly increase
    /// (queue order is arrival order changed only by the priority-loss rules).
    pub fn check_integrity(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = 0usize;
        for ladder in [&self.bids, &self.asks] {
            let side = if ladder.is_bid { "bid" } else { "ask" };
            let tob_levels = ladder.levels.values().filter(|l| l.tob).count();
            if tob_levels > 0 && ladder.len() != 1 {
                errors.push(format!("{side}: top-of-book side has {} levels", ladder.len()));
            }
            for (&price, level) in &ladder.levels {
                if level.price != price {
                    errors.push(format!("{side} {price}: level keyed under another price {}", level.price));
                }
                if level.tob {
                    if level.count != 0 || level.head != NIL || level.size == 0 {
                        errors.push(format!("{side} {price}: top-of-book level with orders or no size"));
                    }
                    continue;
                }
                if level.head == NIL {
                    errors.push(format!("{side} {price}: empty level"));
                    continue;
                }
                let (mut n, mut sum, mut prev, mut prev_priority) = (0u32, 0u64, NIL, None::<u64>);
                let mut cur = level.head;
                while cur != NIL {
                    let o = &self.slab[cur as usize];
                    n += 1;
                    seen += 1;
                    sum += o.size as u64;
                    if o.size == 0 {
                        errors.push(format!("{side} {price}: order {} has size 0", o.order_id));
                    }
                    if o.price != price || o.is_bid != ladder.is_bid {
                        errors.push(format!("{side} {price}: order {} belongs elsewhere", o.order_id));
                    }
                    if o.prev != prev {
                        errors.push(format!("{side} {price}: broken queue link at order {}", o.order_id));
                    }
                    if self.index.get(o.order_id) != Some(cur) {
                        errors.push(format!("{side} {price}: order {} not indexed at its slot", o.order_id));
                    }
                    if prev_priority.is_some_and(|p| p >= o.priority) {
                        errors.push(format!("{side} {price}: order {} out of priority order", o.order_id));
                    }
                    prev_priority = Some(o.priority);
                    prev = cur;
                    cur = o.next;
                    if n as usize > self.slab.len() {
                        errors.push(format!("{side} {price}: queue cycle"));
                        break;
                    }
                }
                if level.tail != prev {
                    errors.push(format!("{side} {price}: tail is not the last order"));
                }
                if n != level.count {
                    errors.push(format!("{side} {price}: count {} but {n} orders", level.count));
                }
                if sum != level.size {
                    errors.push(format!("{side} {price}: size {} but orders sum to {sum}", level.size));
                }
            }
        }
        if seen != self.index.len() {
            errors.push(format!("{} orders indexed but {seen} in queues", self.index.len()));
        }
        if self.slab.len() != self.index.len() + self.free.len() {
            errors.push("slab slots leak".to_string());
        }
        errors
    }
}

/// Where books report anomalies: bounded, so a pathological file cannot grow memory without limit.
#[derive(Clone, Debug)]
pub struct AnomalyLog {
    pub entries: Vec<Anomaly>,
    pub capacity: usize,
    /// Anomalies counted but not kept because the log was full.
    pub dropped: u64,
}

impl AnomalyLog {
    pub fn new(capacity: usize) -> AnomalyLog {
        AnomalyLog { entries: Vec::new(), capacity, dropped: 0 }
    }

    #[inline]
    pub fn push(&mut self, a: Anomaly) {
        if self.entries.len() < self.capacity {
            self.entries.push(a);
        } else {
            self.dropped += 1;
        }
    }
}
