//! Python bindings for `mbostream-synth` (registered into `mbostream_core._engine`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_synth::{generate_into, SynthConfig, MAX_INSTRUMENTS};

/// One generated instrument: `(instrument_id, publisher_id, symbol, tick, start_price)`.
type InstrumentTuple = (u32, u16, String, i64, i64);

/// Generates synthetic MBO records, calling `sink(bytes)` with chunks of whole 56-byte records.
///
/// Returns the instruments as `[(instrument_id, publisher_id, symbol, tick, start_price), ...]`.
#[pyfunction]
#[pyo3(signature = (sink, *, seed, records, instruments, start_ts, chunk_records=65536))]
fn generate(
    py: Python<'_>,
    sink: Bound<'_, PyAny>,
    seed: u64,
    records: u64,
    instruments: u32,
    start_ts: u64,
    chunk_records: usize,
) -> PyResult<Vec<InstrumentTuple>> {
    if instruments == 0 || instruments > MAX_INSTRUMENTS {
        return Err(PyValueError::new_err(format!("instruments must be 1..={MAX_INSTRUMENTS}, got {instruments}")));
    }
    let cfg = SynthConfig { seed, records, instruments, start_ts };
    let mut error: Option<PyErr> = None;
    let specs = generate_into(&cfg, chunk_records.max(1), &mut |chunk: &[u8]| {
        if error.is_none() {
            if let Err(e) = sink.call1((PyBytes::new(py, chunk),)) {
                error = Some(e);
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    Ok(specs.into_iter().map(|s| (s.instrument_id, s.publisher_id, s.symbol, s.tick, s.start_price)).collect())
}

/// Adds this module's functions to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(generate, m)?)?;
    m.add("SYNTH_MAX_INSTRUMENTS", MAX_INSTRUMENTS)?;
    Ok(())
}
