//! The event model: per-instrument snapshots, then interleaved live events, written as DBN MBO records.

use mbostream_book::record::{
    Mbo, ACTION_ADD, ACTION_CANCEL, ACTION_CLEAR, ACTION_FILL, ACTION_MODIFY, ACTION_TRADE, F_BAD_TS_RECV, F_LAST,
    F_SNAPSHOT, MBO_RECORD_SIZE, SIDE_ASK, SIDE_BID, SIDE_NONE, UNDEF_PRICE,
};

use crate::instruments::{listing, Listing, GLBX_MDP3};
use crate::ladder::{Ladder, ASK, BID, CENTER, LEVELS, NIL};
use crate::rng::Rng;
use crate::{InstrumentSpec, SynthConfig, MAX_INSTRUMENTS};

/// Resting orders per instrument at the start (and the centre of the band the count stays in).
const SNAPSHOT_ORDERS_MIN: u64 = 2_000;
const SNAPSHOT_ORDERS_SPAN: u64 = 3_000;
/// At most this share of `records` goes to snapshots, so small files still have live events.
const SNAPSHOT_SHARE_DIVISOR: u64 = 4;

/// Event mix of one live event: aggressive orders, modifies; the rest add or cancel.
const P_AGGRESSIVE: f64 = 0.06;
const P_MODIFY: f64 = 0.12;
/// Share of add-or-cancel events that add when the book holds its target count; the deviation
/// from target feeds back with `ADD_GAIN`, which keeps the order count in a band.
const P_ADD_AT_TARGET: f64 = 0.55;
const ADD_GAIN: f64 = 0.5;
/// With a gap in the spread, a passive add improves the touch with this probability.
const P_IMPROVE: f64 = 0.3;
const P_PARTIAL_CANCEL: f64 = 0.15;
/// Half of the cancels prefer the nearer of two orders: quotes near the touch are short-lived.
const P_CANCEL_NEAR_TOUCH: f64 = 0.5;
/// Aggressors that sweep up to 3 ticks through the touch rather than hitting it only.
const P_SWEEP: f64 = 0.2;
const P_REST_REMAINDER: f64 = 0.5;
/// An aggressor stops after this many fills (bounds the event length).
const MAX_FILLS: usize = 64;
const MAX_ORDER_SIZE: u32 = 500;
const MAX_AGGRESSOR_SIZE: u32 = 300;
/// Modifies grow only orders below half this size, so none ever exceeds it.
const MAX_MODIFIED_SIZE: u32 = 5_000;
/// The next event is on the same instrument with this probability: activity comes in bursts.
const P_STICKY: f64 = 0.6;

/// Fair value, in ticks from the start price: an Ornstein–Uhlenbeck walk moving ~0.03 tick per
/// event (~10 ticks a minute at the mean event rate), reverting over ~3.5M events (sd ~40 ticks).
const FAIR_SIGMA: f64 = 0.03;
const FAIR_THETA: f64 = 2.8e-7;
const FAIR_LIMIT: f64 = 700.0;
/// How strongly the gap between fair value and mid tilts aggressors and improvers to one side.
const TILT_PER_TICK: f64 = 0.03;
const MAX_TILT: f64 = 0.3;

struct Meta {
    instrument_id: u32,
    channel_id: u8,
    tick: i64,
    /// Price of ladder tick 0, in ticks.
    base_ticks: i64,
    sequence: u32,
}

impl Meta {
    fn price(&self, tick: u32) -> i64 {
        (self.base_ticks + i64::from(tick)) * self.tick
    }
}

struct Book {
    meta: Meta,
    ladder: Ladder,
    fair: f64,
    target: usize,
}

impl Book {
    /// Shift of the buy probability toward fair value: positive when the mid is below it.
    fn tilt(&self) -> f64 {
        let mid = match (self.ladder.best(BID), self.ladder.best(ASK)) {
            (Some(bid), Some(ask)) => f64::from(bid + ask) * 0.5,
            (Some(tick), None) | (None, Some(tick)) => f64::from(tick),
            (None, None) => return 0.0,
        };
        ((self.fair - (mid - f64::from(CENTER))) * TILT_PER_TICK).clamp(-MAX_TILT, MAX_TILT)
    }
}

/// Writes records into chunks of whole records and hands full chunks to the sink.
struct Emitter<'s> {
    buf: Vec<u8>,
    chunk_bytes: usize,
    sink: &'s mut dyn FnMut(&[u8]),
    remaining: u64,
    /// `ts_recv` is strictly increasing: the next record's is at least this.
    next_recv: u64,
    ts_event: u64,
    ts_sent: u64,
    recv_floor: u64,
}

impl Emitter<'_> {
    /// Starts an event matched at `ts_event`, sent `engine_ns` later, received `wire_ns` after that.
    fn begin(&mut self, ts_event: u64, engine_ns: u64, wire_ns: u64) {
        self.ts_event = ts_event;
        self.ts_sent = ts_event + engine_ns;
        self.recv_floor = self.ts_sent + wire_ns;
    }

    #[allow(clippy::too_many_arguments)]
    fn record(&mut self, meta: &mut Meta, action: u8, side: u8, price: i64, size: u32, order_id: u64, flags: u8) {
        let ts_recv = self.recv_floor.max(self.next_recv);
        self.next_recv = ts_recv + 1;
        meta.sequence += 1;
        let mbo = Mbo {
            publisher_id: GLBX_MDP3,
            instrument_id: meta.instrument_id,
            ts_event: self.ts_event,
            order_id,
            price,
            size,
            flags,
            channel_id: meta.channel_id,
            action,
            side,
            ts_recv,
            ts_in_delta: (ts_recv - self.ts_sent) as i32,
            sequence: meta.sequence,
        };
        mbo.encode_into(&mut self.buf);
        self.remaining -= 1;
        if self.buf.len() >= self.chunk_bytes {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
    }
}

/// DBN side of a ladder side.
const SIDE_BYTES: [u8; 2] = [SIDE_BID, SIDE_ASK];

fn last_flag(is_last: bool) -> u8 {
    if is_last {
        F_LAST
    } else {
        0
    }
}

/// Order ids of new orders increase by small random steps, like exchange-assigned ids.
fn next_order_id(last: &mut u64, rng: &mut Rng) -> u64 {
    *last += 1 + (rng.next_u64() & 3);
    *last
}

/// Ticks behind the touch of a new passive order: mostly at or next to it, with a long flat tail.
fn depth(rng: &mut Rng) -> u32 {
    match rng.below(100) {
        0..=24 => rng.halving(12),
        25..=69 => rng.below(60).min(rng.below(60)) as u32,
        _ => rng.below(200) as u32,
    }
}

/// Nanoseconds to the next event: sub-µs bursts, 1–256 µs log-uniform by octave, rare ms lulls.
fn gap(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=16 => 100 + rng.below(900),
        17..=97 => {
            let octave = 1_000 << rng.below(8);
            octave + rng.below(octave)
        }
        _ => {
            let octave = 500_000 << rng.below(4);
            octave + rng.below(octave)
        }
    }
}

struct Generator<'s> {
    rng: Rng,
    books: Vec<Book>,
    em: Emitter<'s>,
    next_order_id: u64,
    /// Planned fills of the current aggressor: (slot, quantity); reused to avoid allocation.
    fills: Vec<(u32, u32)>,
}

/// Generates `cfg.records` records into `sink`, in chunks of `chunk_records` records.
pub(crate) fn run(cfg: &SynthConfig, chunk_records: usize, sink: &mut dyn FnMut(&[u8])) -> Vec<InstrumentSpec> {
    assert!(cfg.instruments <= MAX_INSTRUMENTS, "SynthConfig.instruments must be at most {MAX_INSTRUMENTS}");
    assert!(cfg.instruments > 0 || cfg.records == 0, "SynthConfig.instruments must be positive when records > 0");
    let chunk_bytes = chunk_records.max(1) * MBO_RECORD_SIZE;
    let listings: Vec<Listing> = (0..cfg.instruments).map(listing).collect();
    let mut rng = Rng::new(cfg.seed);
    let next_order_id = 6_000_000_000_000 + rng.below(1_000_000_000_000);
    let books = listings
        .iter()
        .map(|l| Book {
            meta: Meta {
                instrument_id: l.spec.instrument_id,
                channel_id: l.channel_id,
                tick: l.spec.tick,
                base_ticks: l.start_ticks - i64::from(CENTER),
                sequence: 1_000_000 + rng.below(100_000_000) as u32,
            },
            ladder: Ladder::new(),
            fair: 0.0,
            target: 0,
        })
        .collect();
    let em = Emitter {
        buf: Vec::with_capacity(chunk_bytes),
        chunk_bytes,
        sink,
        remaining: cfg.records,
        next_recv: cfg.start_ts,
        ts_event: 0,
        ts_sent: 0,
        recv_floor: 0,
    };
    let mut g = Generator { rng, books, em, next_order_id, fills: Vec::with_capacity(MAX_FILLS) };
    g.snapshots(cfg);
    g.live();
    g.em.flush();
    listings.into_iter().map(|l| l.spec).collect()
}

impl Generator<'_> {
    /// Seeds each book around its start price (spread one tick), then writes each as R + A records.
    fn snapshots(&mut self, cfg: &SynthConfig) {
        let per_book_cap = (cfg.records / SNAPSHOT_SHARE_DIVISOR / u64::from(cfg.instruments.max(1))).max(2);
        for book in &mut self.books {
            let rng = &mut self.rng;
            let target = (SNAPSHOT_ORDERS_MIN + rng.below(SNAPSHOT_ORDERS_SPAN + 1)).min(per_book_cap);
            book.target = target as usize;
            for k in 0..target {
                let side = if k < 2 { k as usize } else { rng.below(2) as usize };
                let d = if k < 2 { 0 } else { depth(rng) };
                let tick = if side == BID { CENTER - d } else { CENTER + 1 + d };
                book.ladder.insert(side, tick, 0, rng.pareto_4_3(MAX_ORDER_SIZE));
            }
        }
        let snapshot = F_SNAPSHOT | F_BAD_TS_RECV;
        self.em.begin(cfg.start_ts, 0, 0);
        for book in &mut self.books {
            if self.em.remaining == 0 {
                return;
            }
            let mut left = book.ladder.len();
            let flags = snapshot | last_flag(self.em.remaining == 1);
            self.em.record(&mut book.meta, ACTION_CLEAR, SIDE_NONE, UNDEF_PRICE, 0, 0, flags);
            for side in [BID, ASK] {
                for k in 0..LEVELS {
                    let tick = if side == BID { LEVELS - 1 - k } else { k };
                    let mut slot = book.ladder.head(side, tick);
                    while slot != NIL && self.em.remaining > 0 {
                        // Ids follow queue priority, so they increase along each FIFO and through the file.
                        book.ladder.set_id(slot, next_order_id(&mut self.next_order_id, &mut self.rng));
                        let order = *book.ladder.order(slot);
                        left -= 1;
                        let flags = snapshot | last_flag(left == 0 || self.em.remaining == 1);
                        let price = book.meta.price(tick);
                        self.em.record(
                            &mut book.meta,
                            ACTION_ADD,
                            SIDE_BYTES[side],
                            price,
                            order.size,
                            order.id,
                            flags,
                        );
                        slot = order.next;
                    }
                }
            }
        }
    }

    /// Live events until the record budget is spent; bursts stay on one instrument.
    fn live(&mut self) {
        let mut clock = self.em.next_recv;
        let mut instrument = 0;
        while self.em.remaining > 0 {
            if self.books.len() > 1 && !self.rng.chance(P_STICKY) {
                instrument = self.rng.below(self.books.len() as u64) as usize;
            }
            clock += gap(&mut self.rng);
            let engine_ns = 200 + self.rng.below(3_000);
            let wire_ns = 3_000 + self.rng.below(20_000);
            self.em.begin(clock, engine_ns, wire_ns);
            self.event(instrument);
        }
    }

    /// One event; whatever cannot happen (empty book, not enough records left) becomes a passive add.
    fn event(&mut self, i: usize) {
        let book = &mut self.books[i];
        book.fair =
            (book.fair + FAIR_SIGMA * self.rng.normal() - FAIR_THETA * book.fair).clamp(-FAIR_LIMIT, FAIR_LIMIT);
        let fullness = book.ladder.len() as f64 / book.target as f64;
        let p_add = (P_ADD_AT_TARGET + ADD_GAIN * (1.0 - fullness)).clamp(0.2, 0.9);
        let u = self.rng.unit();
        let done = if u < P_AGGRESSIVE {
            self.aggress(i)
        } else if u < P_AGGRESSIVE + P_MODIFY {
            self.modify(i)
        } else if self.rng.chance(p_add) {
            false
        } else {
            self.cancel(i)
        };
        if !done {
            self.add(i);
        }
    }

    fn add(&mut self, i: usize) {
        let id = next_order_id(&mut self.next_order_id, &mut self.rng);
        let (book, rng) = (&mut self.books[i], &mut self.rng);
        let (bid, ask) = (book.ladder.best(BID), book.ladder.best(ASK));
        let (side, tick) = match (bid, ask) {
            (Some(bid), Some(ask)) if ask - bid > 1 && rng.chance(P_IMPROVE) => {
                let side = if rng.chance(0.5 + book.tilt()) { BID } else { ASK };
                let inside = 1 + rng.below(u64::from(ask - bid - 1)) as u32;
                (side, if side == BID { bid + inside } else { ask - inside })
            }
            _ => {
                let side = rng.below(2) as usize;
                let d = depth(rng);
                if side == BID {
                    let anchor = bid.or(ask.map(|a| a - 1)).unwrap_or(CENTER);
                    let tick = anchor.saturating_sub(d).max(1);
                    (side, ask.map_or(tick, |a| tick.min(a - 1)))
                } else {
                    let anchor = ask.or(bid.map(|b| b + 1)).unwrap_or(CENTER + 1);
                    let tick = (anchor + d).min(LEVELS - 2);
                    (side, bid.map_or(tick, |b| tick.max(b + 1)))
                }
            }
        };
        let size = rng.pareto_4_3(MAX_ORDER_SIZE);
        book.ladder.insert(side, tick, id, size);
        let price = book.meta.price(tick);
        self.em.record(&mut book.meta, ACTION_ADD, SIDE_BYTES[side], price, size, id, F_LAST);
    }

    fn cancel(&mut self, i: usize) -> bool {
        let (book, rng) = (&mut self.books[i], &mut self.rng);
        let ladder = &mut book.ladder;
        if ladder.len() == 0 {
            return false;
        }
        let mut slot = ladder.live_slot(rng.below(ladder.len() as u64) as usize);
        if rng.chance(P_CANCEL_NEAR_TOUCH) {
            let other = ladder.live_slot(rng.below(ladder.len() as u64) as usize);
            if ladder.touch_distance(other) < ladder.touch_distance(slot) {
                slot = other;
            }
        }
        let order = *ladder.order(slot);
        let cut = if order.size > 1 && rng.chance(P_PARTIAL_CANCEL) {
            // Partial cancel: a size decrease, keeps priority.
            let cut = 1 + rng.below(u64::from(order.size - 1)) as u32;
            ladder.reduce(slot, cut);
            cut
        } else {
            ladder.remove(slot);
            order.size
        };
        let price = book.meta.price(order.tick);
        let side = SIDE_BYTES[order.side as usize];
        self.em.record(&mut book.meta, ACTION_CANCEL, side, price, cut, order.id, F_LAST);
        true
    }

    fn modify(&mut self, i: usize) -> bool {
        let (book, rng) = (&mut self.books[i], &mut self.rng);
        let ladder = &mut book.ladder;
        if ladder.len() == 0 {
            return false;
        }
        let slot = ladder.live_slot(rng.below(ladder.len() as u64) as usize);
        let order = *ladder.order(slot);
        let side = order.side as usize;
        let kind = rng.below(100);
        let mut tick = order.tick;
        if kind >= 70 {
            let step = 1 + rng.below(3) as u32;
            tick = if rng.chance(0.5) { tick.saturating_sub(step) } else { (tick + step).min(LEVELS - 1) };
            // Never move through the opposite touch: a modify does not trade.
            tick = match (side, ladder.best(1 - side)) {
                (BID, Some(ask)) => tick.min(ask - 1),
                (ASK, Some(bid)) => tick.max(bid + 1),
                _ => tick,
            };
        }
        let size = if tick != order.tick {
            // Price change loses priority.
            ladder.requeue(slot, tick, order.size);
            order.size
        } else if order.size > 1 && (kind < 45 || order.size >= MAX_MODIFIED_SIZE / 2) {
            // Size decrease keeps priority.
            let size = 1 + rng.below(u64::from(order.size - 1)) as u32;
            ladder.reduce(slot, order.size - size);
            size
        } else {
            // Size increase loses priority.
            let size = order.size + 1 + rng.below(u64::from(order.size.max(4))) as u32;
            ladder.requeue(slot, tick, size);
            size
        };
        let price = book.meta.price(tick);
        self.em.record(&mut book.meta, ACTION_MODIFY, SIDE_BYTES[side], price, size, order.id, F_LAST);
        true
    }

    /// An order crossing the spread: T, then F per resting order in price-time priority, then
    /// their C (filled) or M (partly filled, keeps priority), then maybe the remainder as an A.
    fn aggress(&mut self, i: usize) -> bool {
        let (book, rng) = (&mut self.books[i], &mut self.rng);
        let side = if rng.chance(0.5 + book.tilt()) { BID } else { ASK };
        let resting = 1 - side;
        let Some(touch) = book.ladder.best(resting) else {
            return false;
        };
        let through = if rng.chance(P_SWEEP) { 1 + rng.below(3) as u32 } else { 0 };
        let limit = if side == BID { (touch + through).min(LEVELS - 1) } else { touch.saturating_sub(through) };
        let quantity = rng.pareto_1(MAX_AGGRESSOR_SIZE);

        self.fills.clear();
        let (mut left, mut capped, mut tick) = (quantity, false, touch);
        'levels: loop {
            let mut slot = book.ladder.head(resting, tick);
            while slot != NIL {
                let order = book.ladder.order(slot);
                let fill = left.min(order.size);
                self.fills.push((slot, fill));
                left -= fill;
                if left == 0 {
                    break 'levels;
                }
                if self.fills.len() == MAX_FILLS {
                    capped = true;
                    break 'levels;
                }
                slot = order.next;
            }
            match book.ladder.next_level(resting, tick, limit) {
                Some(next) => tick = next,
                None => break,
            }
        }
        let rests = left > 0 && !capped && rng.chance(P_REST_REMAINDER);
        let needed = 1 + 2 * self.fills.len() as u64 + u64::from(rests);
        if needed > self.em.remaining {
            return false;
        }

        let (em, meta, ladder) = (&mut self.em, &mut book.meta, &mut book.ladder);
        let touch_price = meta.price(touch);
        em.record(meta, ACTION_TRADE, SIDE_BYTES[side], touch_price, quantity - left, 0, 0);
        for &(slot, fill) in &self.fills {
            let order = ladder.order(slot);
            let price = meta.price(order.tick);
            em.record(meta, ACTION_FILL, SIDE_BYTES[resting], price, fill, order.id, 0);
        }
        for (k, &(slot, fill)) in self.fills.iter().enumerate() {
            let flags = last_flag(k + 1 == self.fills.len() && !rests);
            let order = *ladder.order(slot);
            let price = meta.price(order.tick);
            if fill == order.size {
                ladder.remove(slot);
                em.record(meta, ACTION_CANCEL, SIDE_BYTES[resting], price, fill, order.id, flags);
            } else {
                ladder.reduce(slot, fill);
                em.record(meta, ACTION_MODIFY, SIDE_BYTES[resting], price, order.size - fill, order.id, flags);
            }
        }
        if rests {
            let id = next_order_id(&mut self.next_order_id, rng);
            ladder.insert(side, limit, id, left);
            let price = meta.price(limit);
            em.record(meta, ACTION_ADD, SIDE_BYTES[side], price, left, id, F_LAST);
        }
        true
    }
}
