//! Python bindings for the native core: the `mbostream_core._engine` module.
//!
//! Thin by design: argument conversion, GIL release and delegation only. The rules live in the
//! crates under `native/`: the book engine and DBN records (`mbostream-book`), line protocol and
//! the storage pipeline (`mbostream-lineproto`), the event-batch wire encoding (`mbostream-wire`),
//! the native streaming transport (`mbostream-h2serve`) and the synthetic feed (`mbostream-synth`).
mod dbn;
mod h2serve;
mod layout;
mod lineproto;
mod market;
mod pipeline;
mod stats;
mod synth;
mod wire;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The bytes of a C-contiguous buffer, borrowed for as long as `buf` is held.
pub(crate) fn bytes_of(buf: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("record buffer must be C-contiguous"));
    }
    // SAFETY: the buffer is contiguous, u8-typed and kept alive (and exported, so not resized)
    // by the PyBuffer for as long as the returned slice is used inside the calling method.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) })
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    market::register(m)?;
    dbn::register(m)?;
    h2serve::register(m)?;
    layout::register(m)?;
    lineproto::register(m)?;
    pipeline::register(m)?;
    synth::register(m)?;
    wire::register(m)?;
    Ok(())
}
