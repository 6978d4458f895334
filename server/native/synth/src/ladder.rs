//! The generator's own L3 book: price levels indexed by tick offset, each an index-linked FIFO.
//!
//! Every operation is O(1) except re-finding the best level after the best one empties, which
//! walks to the next occupied tick (a few ticks in a book this dense).

pub(crate) const BID: usize = 0;
pub(crate) const ASK: usize = 1;
/// Tick offsets per side; the start price sits at `CENTER` and the mid stays within ±1,000 ticks.
pub(crate) const LEVELS: u32 = 4096;
pub(crate) const CENTER: u32 = LEVELS / 2;
/// End of a FIFO / no level.
pub(crate) const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
pub(crate) struct Order {
    pub(crate) id: u64,
    pub(crate) size: u32,
    pub(crate) tick: u32,
    pub(crate) side: u8,
    pub(crate) next: u32,
    prev: u32,
    /// Index in `Ladder::live`, for O(1) swap-remove.
    live_pos: u32,
}

#[derive(Clone, Copy)]
struct Level {
    head: u32,
    tail: u32,
}

const EMPTY: Level = Level { head: NIL, tail: NIL };

pub(crate) struct Ladder {
    levels: [Vec<Level>; 2],
    /// Order slots; freed slots are reused, so the slab never outgrows the peak order count.
    orders: Vec<Order>,
    free: Vec<u32>,
    /// Slots of all resting orders, in no particular order: uniform random picks.
    live: Vec<u32>,
    best: [u32; 2],
}

impl Ladder {
    pub(crate) fn new() -> Ladder {
        Ladder {
            levels: [vec![EMPTY; LEVELS as usize], vec![EMPTY; LEVELS as usize]],
            orders: Vec::new(),
            free: Vec::new(),
            live: Vec::new(),
            best: [NIL, NIL],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn best(&self, side: usize) -> Option<u32> {
        let tick = self.best[side];
        (tick != NIL).then_some(tick)
    }

    pub(crate) fn order(&self, slot: u32) -> &Order {
        &self.orders[slot as usize]
    }

    /// First order (in queue priority) at `tick`, or `NIL`.
    pub(crate) fn head(&self, side: usize, tick: u32) -> u32 {
        self.levels[side][tick as usize].head
    }

    /// The `k`-th resting order, `k < len()`.
    pub(crate) fn live_slot(&self, k: usize) -> u32 {
        self.live[k]
    }

    pub(crate) fn set_id(&mut self, slot: u32, id: u64) {
        self.orders[slot as usize].id = id;
    }

    /// Ticks between the order and the touch of its own side.
    pub(crate) fn touch_distance(&self, slot: u32) -> u32 {
        let order = self.order(slot);
        let best = self.best[order.side as usize];
        if order.side as usize == BID {
            best - order.tick
        } else {
            order.tick - best
        }
    }

    /// Next occupied level after `tick` moving away from the touch, not beyond `limit`.
    pub(crate) fn next_level(&self, side: usize, tick: u32, limit: u32) -> Option<u32> {
        let occupied = |t: &u32| self.levels[side][*t as usize].head != NIL;
        if side == BID {
            (limit..tick).rev().find(occupied)
        } else {
            (tick + 1..=limit).find(occupied)
        }
    }

    /// Rests a new order at the back of its level's queue.
    pub(crate) fn insert(&mut self, side: usize, tick: u32, id: u64, size: u32) -> u32 {
        let order = Order { id, size, tick, side: side as u8, next: NIL, prev: NIL, live_pos: self.live.len() as u32 };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.orders[slot as usize] = order;
                slot
            }
            None => {
                self.orders.push(order);
                (self.orders.len() - 1) as u32
            }
        };
        self.live.push(slot);
        self.append(slot);
        slot
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        let pos = self.orders[slot as usize].live_pos as usize;
        self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            self.orders[moved as usize].live_pos = pos as u32;
        }
        self.free.push(slot);
    }

    /// Size decrease: keeps queue priority.
    pub(crate) fn reduce(&mut self, slot: u32, by: u32) {
        self.orders[slot as usize].size -= by;
    }

    /// Price change or size increase: loses queue priority (goes to the back at `tick`).
    pub(crate) fn requeue(&mut self, slot: u32, tick: u32, size: u32) {
        let order = &mut self.orders[slot as usize];
        order.size = size;
        if order.tick == tick && order.next == NIL {
            return;
        }
        self.unlink(slot);
        self.orders[slot as usize].tick = tick;
        self.append(slot);
    }

    fn append(&mut self, slot: u32) {
        let Order { side, tick, .. } = self.orders[slot as usize];
        let (side, level) = (side as usize, &mut self.levels[side as usize][tick as usize]);
        self.orders[slot as usize].prev = level.tail;
        self.orders[slot as usize].next = NIL;
        match level.tail {
            NIL => level.head = slot,
            tail => self.orders[tail as usize].next = slot,
        }
        level.tail = slot;
        let best = self.best[side];
        if best == NIL || (side == BID && tick > best) || (side == ASK && tick < best) {
            self.best[side] = tick;
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Order { side, tick, prev, next, .. } = self.orders[slot as usize];
        let (side, level) = (side as usize, &mut self.levels[side as usize][tick as usize]);
        match prev {
            NIL => level.head = next,
            prev => self.orders[prev as usize].next = next,
        }
        match next {
            NIL => level.tail = prev,
            next => self.orders[next as usize].prev = prev,
        }
        if level.head == NIL && self.best[side] == tick {
            let occupied = |t: &u32| self.levels[side][*t as usize].head != NIL;
            let next_best =
                if side == BID { (0..tick).rev().find(occupied) } else { (tick + 1..LEVELS).find(occupied) };
            self.best[side] = next_best.unwrap_or(NIL);
        }
    }
}
