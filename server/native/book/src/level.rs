//! A price level: the aggregate (size, count) kept incrementally, and the ends of its FIFO queue.

/// Slot index meaning "no order".
pub const NIL: u32 = u32::MAX;

/// One price level of one side. Orders form a doubly linked FIFO list through the book's slab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub price: i64,
    /// Sum of the resting orders' sizes (or the published size of a top-of-book level).
    pub size: u64,
    /// Number of resting orders; always 0 for a top-of-book level, which stands for no single order.
    pub count: u32,
    /// Set for a level created by an F_TOB add: it carries a size but no orders.
    pub tob: bool,
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl Level {
    pub(crate) fn new(price: i64) -> Level {
        Level { price, size: 0, count: 0, tob: false, head: NIL, tail: NIL }
    }

    pub(crate) fn top_of_book(price: i64, size: u32) -> Level {
        Level { price, size: size as u64, count: 0, tob: true, head: NIL, tail: NIL }
    }

    /// True when the level holds nothing and must leave the ladder.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head == NIL && !self.tob
    }
}

/// The aggregated view of a level (what MBP-10 calls a level): price, total size, order count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelView {
    pub price: i64,
    pub size: u64,
    pub count: u32,
}

impl From<&Level> for LevelView {
    fn from(l: &Level) -> LevelView {
        LevelView { price: l.price, size: l.size, count: l.count }
    }
}
