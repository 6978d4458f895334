//! mbostream-book: the pure, synchronous L3 order book engine (no I/O, no Python, no clocks).
//!
//! Rules are Databento's documented MBO book rules: `A` queues at the back of its level (`F_TOB`
//! replaces the side), `C` reduces or removes, `M` moves (price change or size increase loses
//! priority; size decrease keeps it), `T`/`F`/`N` leave orders alone, `R` clears, and a book is read
//! only after a record with `F_LAST`.
pub mod anomaly;
pub mod book;
pub mod dbn;
pub mod hash;
pub mod ladder;
pub mod layout;
pub mod level;
pub mod market;
pub mod record;

pub use anomaly::{Anomaly, AnomalyKind, ANOMALY_KIND_COUNT};
pub use book::{AnomalyLog, Bbo, Book, BookStats, Order};
pub use dbn::{compact_mbo, Compacted, DbnError};
pub use ladder::Ladder;
pub use level::{Level, LevelView};
pub use market::{book_key, EventRow, IntegrityViolation, Market, SliceEnd, EVENT_ROW_SIZE};
pub use record::Mbo;
