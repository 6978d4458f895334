//! mbostream-synth: deterministic synthetic CME-style MBO feed.
//!
//! The project's default data and benchmark load: a stream of 56-byte DBN MBO records that looks
//! like CME Globex (`GLBX.MDP3`) under Databento's conventions and replays into an L3 book with
//! zero anomalies. The same [`SynthConfig`] gives the same bytes on every machine, forever: the
//! PRNG (xoshiro256**) is our own and no libm transcendental is used.
//!
//! # Model
//!
//! - **Instruments**: CME futures (ESZ6, NQZ6, CLZ6, GCG7, ZNH7, …, then later contract months),
//!   each with its own tick grid and start price; every price is on the grid (integers, 1e-9).
//! - **Snapshot**: per instrument an `R` then one `A` per resting order in queue priority
//!   (2,000–5,000 orders over ~400 price levels, spread one tick), flagged
//!   `F_SNAPSHOT | F_BAD_TS_RECV`, the last one also `F_LAST`.
//! - **Fair value** follows a slow mean-reverting (Ornstein–Uhlenbeck) walk; the gap between it
//!   and the mid tilts aggressors and spread-improving adds to one side, so the mid follows it.
//! - **Live events** (bursts stay on one instrument): passive adds, mostly at or near the touch,
//!   improving the spread when it is wider than a tick; cancels, full or partial, biased toward the
//!   touch; modifies (size down keeps priority; size up or price change goes to the back); and
//!   aggressors: `T` (aggressor side, first level price, traded size), `F` per resting order in
//!   price-time priority, their `C` (filled) or `M` (partly filled), and maybe the remainder as `A`.
//! - **Order count** stays in a band: the add/cancel balance is fed back from the deviation from
//!   the snapshot's count. Order sizes are discrete Pareto (mostly 1–3 lots, a heavy tail).
//! - **Time**: inter-event gaps of sub-µs bursts, 1–256 µs, and rare 0.5–16 ms lulls; all records of
//!   an event share `ts_event`; `ts_recv` strictly increases through the file; `ts_in_delta` is
//!   the send-to-receive latency; `sequence` increases per instrument, order ids per new order.
//!
//! Every multi-record event's last record has `F_LAST`; the book is never crossed at an `F_LAST`.
//! Exactly `records` records are written: an event that no longer fits becomes a passive add.

mod generator;
mod instruments;
mod ladder;
mod rng;
#[cfg(test)]
mod tests;

/// Largest supported [`SynthConfig::instruments`] (each book keeps a 4,096-tick ladder per side).
pub const MAX_INSTRUMENTS: u32 = 1024;

/// One generated instrument (`publisher_id` 1 = `GLBX.MDP3`; prices in 1e-9 units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentSpec {
    pub instrument_id: u32,
    pub publisher_id: u16,
    pub symbol: String,
    pub tick: i64,
    pub start_price: i64,
}

/// What to generate: `records` records in total (snapshots included) for `instruments`
/// instruments (1..=[`MAX_INSTRUMENTS`] unless `records` is 0), the first at `start_ts` (ns UNIX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    pub seed: u64,
    pub records: u64,
    pub instruments: u32,
    pub start_ts: u64,
}

/// Returns the instruments and the records as concatenated 56-byte DBN MBO records.
pub fn generate(cfg: &SynthConfig) -> (Vec<InstrumentSpec>, Vec<u8>) {
    let record_size = mbostream_book::record::MBO_RECORD_SIZE;
    let mut bytes = Vec::with_capacity((cfg.records as usize).saturating_mul(record_size));
    let specs = generate_into(cfg, 1 << 16, &mut |chunk: &[u8]| bytes.extend_from_slice(chunk));
    (specs, bytes)
}

/// Streaming form: calls `sink` with chunks of whole records (so a 50M-record file needs no 2.8 GB buffer).
///
/// Every chunk but the last holds exactly `chunk_records` records (at least one).
pub fn generate_into(cfg: &SynthConfig, chunk_records: usize, sink: &mut dyn FnMut(&[u8])) -> Vec<InstrumentSpec> {
    generator::run(cfg, chunk_records, sink)
}
