//! Python bindings for DBN record handling (`mbostream_book::dbn`), registered into `mbostream_core._engine`.
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bytes_of;

/// What `compact_mbo` returns: `(mbo_bytes, [(rtype, count)], consumed)`.
type Compacted<'py> = (Bound<'py, PyBytes>, Vec<(u8, u64)>, usize);

/// Copies the MBO records out of a buffer of mixed DBN records (walking each header's length).
///
/// Returns `(mbo_bytes, other_record_counts_by_rtype, consumed)`; `consumed` stops before a
/// trailing partial record, which the caller must carry into the next chunk.
#[pyfunction]
fn compact_mbo<'py>(py: Python<'py>, buf: PyBuffer<u8>) -> PyResult<Compacted<'py>> {
    let data = bytes_of(&buf)?;
    let mut out = Vec::with_capacity(data.len());
    let found = mbostream_book::compact_mbo(data, &mut out).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((PyBytes::new(py, &out), found.others, found.consumed))
}

/// Adds this module's functions to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compact_mbo, m)?)?;
    Ok(())
}
