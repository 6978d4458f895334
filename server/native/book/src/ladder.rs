//! One side of a book: price levels in a sorted map, best price first when iterated.
use std::collections::BTreeMap;

use crate::level::Level;

/// A side's levels keyed by price. Bids are best at the highest price, asks at the lowest.
#[derive(Clone, Debug)]
pub struct Ladder {
    pub(crate) levels: BTreeMap<i64, Level>,
    pub is_bid: bool,
}

impl Ladder {
    pub(crate) fn new(is_bid: bool) -> Ladder {
        Ladder { levels: BTreeMap::new(), is_bid }
    }

    /// The best level, if any.
    #[inline]
    pub fn best(&self) -> Option<&Level> {
        if self.is_bid {
            self.levels.last_key_value().map(|(_, l)| l)
        } else {
            self.levels.first_key_value().map(|(_, l)| l)
        }
    }

    /// Levels from the best price outward.
    pub fn iter_best_first(&self) -> Box<dyn Iterator<Item = &Level> + '_> {
        if self.is_bid {
            Box::new(self.levels.values().rev())
        } else {
            Box::new(self.levels.values())
        }
    }

    /// Number of price levels.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The level at `price`, if present.
    pub fn get(&self, price: i64) -> Option<&Level> {
        self.levels.get(&price)
    }

    /// True when the side is a top-of-book side (its levels stand for no orders).
    pub fn is_top_of_book(&self) -> bool {
        self.levels.values().next().is_some_and(|l| l.tob)
    }

    /// Whether `price` is better than (strictly ahead of) `other` on this side.
    #[inline]
    pub fn is_better(&self, price: i64, other: i64) -> bool {
        if self.is_bid {
            price > other
        } else {
            price < other
        }
    }
}
