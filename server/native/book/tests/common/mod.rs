//! Shared by the book's integration tests: a plain dump of a book's levels.
use mbostream_book::Book;

/// One level as the tests compare it: price, total size, order count, and the queue front first
/// as `(order_id, size)`. A top-of-book level has a size, a count of 0 and an empty queue.
pub type LevelDump = (i64, u64, u32, Vec<(u64, u32)>);

/// A side's levels best first, each with its FIFO queue.
pub fn levels(book: &Book, is_bid: bool) -> Vec<LevelDump> {
    book.ladder(is_bid)
        .iter_best_first()
        .map(|level| {
            let queue = book.queue(level).map(|o| (o.order_id, o.size)).collect();
            (level.price, level.size, level.count, queue)
        })
        .collect()
}
