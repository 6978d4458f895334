//! mbostream-lineproto: InfluxDB line protocol from raw MBO records and event rows, column-wise.
//!
//! The storage sink writes one point per MBO record (`mbo`), per trade (`trades`), per F_LAST
//! that moved the top of book (`bbo`) and per book and depth interval (`depth`), and stores them
//! as gzip blocks (`block`), made on a thread of their own (`pipeline`). Formatting them is the
//! hot path of persistence, so it reads
//! the 56-byte DBN records and the engine's 80-byte event rows straight from their buffers and
//! appends bytes to one output vector: no object per point, no allocation per point.
//!
//! The schema (measurements, tags, fields, timestamps) is documented in `docs/storage.md`; this
//! crate is its only writer of the four measurements.
pub mod block;
pub mod clock;
pub mod depth;
pub mod escape;
pub mod format;
pub mod number;
pub mod pipeline;
pub mod priority;

pub use block::{encode_block, BlockEncoder, BLOCK_HEADER_SIZE};
pub use clock::{SeriesClock, MAX_POINT_TIME, REWIND_WINDOW_NS};
pub use depth::BookDepth;
pub use escape::push_tag_value;
pub use format::{Formatter, MissingSymbols};
pub use pipeline::{Block, Pipeline, PipelineConfig, PipelineError, Taken};
pub use priority::{lower_thread_priority, STORAGE_NICE};

#[cfg(test)]
mod tests;
