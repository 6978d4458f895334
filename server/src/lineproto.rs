//! Python bindings for `mbostream-lineproto` (registered into `mbostream._engine`).
use pyo3::prelude::*;

/// Adds this module's functions to `mbostream._engine`.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
