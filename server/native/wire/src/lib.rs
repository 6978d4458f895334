//! mbostream-wire: protobuf encoding of `mbostream.v1.StreamEventsResponse` from raw MBO records,
//! and of `StreamBookResponse` books straight from the engine (`book`).
//!
//! The event stream is the hot path of the server: building a protobuf message in Python costs
//! about a microsecond per field per record. Here the packed columns are written directly from the
//! record buffer, once per batch, and the same bytes go to every subscriber. Field numbers must
//! match `proto/mbostream/v1/market_data.proto`; `tests/round_trip.rs` decodes the output with a
//! protobuf runtime to hold them to it.
pub mod book;
pub mod encode;

pub use book::{encode_book_payload, encode_book_snapshot, BookCut};
pub use encode::{encode_event_batch, EventBatch, WireError};
