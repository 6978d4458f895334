//! Python bindings for `mbostream-wire` (registered into `mbostream_core._engine`).
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_wire::EventBatch;

use crate::bytes_of;

/// Encodes records (56-byte MBO layout, `stride` apart) and their replay positions as a serialized
/// `StreamEventsResponse`, stamped with the server run's `epoch` (field 16; omitted when empty).
#[pyfunction]
#[pyo3(signature = (records, replay_sequence, *, batch_sequence, snapshot, ts_out, epoch="", stride=MBO_RECORD_SIZE))]
#[allow(clippy::too_many_arguments)]
pub fn encode_event_batch<'py>(
    py: Python<'py>,
    records: PyBuffer<u8>,
    replay_sequence: PyBuffer<u8>,
    batch_sequence: u64,
    snapshot: bool,
    ts_out: u64,
    epoch: &str,
    stride: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = bytes_of(&records)?;
    let seqs = bytes_of(&replay_sequence)?;
    let batch = EventBatch { batch_sequence, snapshot, ts_out, epoch };
    let out = py
        .detach(|| mbostream_wire::encode_event_batch(data, stride, seqs, &batch))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

/// Adds this module's functions to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_event_batch, m)?)?;
    Ok(())
}
