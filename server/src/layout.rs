//! Record constants and layouts exported to Python (registered into `mbostream_core._engine`).
//!
//! Defined once, in the book crate; Python builds its numpy dtypes and flag masks from these.
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use mbostream_book::layout::{Field, EVENT_ROW_FIELDS, MBO_FIELDS};
use mbostream_book::market::{EVENT_ROW_SIZE, STATE_CROSSED, STATE_LOCKED, STATE_TOP_CHANGED};
use mbostream_book::record::{
    F_BAD_TS_RECV, F_LAST, F_MAYBE_BAD_BOOK, F_MBP, F_SNAPSHOT, F_TOB, MBO_LENGTH_WORDS, MBO_RECORD_SIZE, RTYPE_MBO,
    UNDEF_PRICE,
};

/// A layout as an immutable tuple of `(name, numpy type string, byte offset)`.
fn fields<'py>(py: Python<'py>, fields: &[Field]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, fields.iter().map(|&(name, ty, offset)| (name, ty, offset)))
}

/// Adds the record constants and layouts to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MBO_RECORD_SIZE", MBO_RECORD_SIZE)?;
    m.add("MBO_LENGTH_WORDS", MBO_LENGTH_WORDS)?;
    m.add("RTYPE_MBO", RTYPE_MBO)?;
    m.add("MBO_FIELDS", fields(py, &MBO_FIELDS)?)?;
    m.add("UNDEF_PRICE", UNDEF_PRICE)?;
    m.add("F_LAST", F_LAST)?;
    m.add("F_TOB", F_TOB)?;
    m.add("F_SNAPSHOT", F_SNAPSHOT)?;
    m.add("F_MBP", F_MBP)?;
    m.add("F_BAD_TS_RECV", F_BAD_TS_RECV)?;
    m.add("F_MAYBE_BAD_BOOK", F_MAYBE_BAD_BOOK)?;
    m.add("EVENT_ROW_SIZE", EVENT_ROW_SIZE)?;
    m.add("EVENT_ROW_FIELDS", fields(py, &EVENT_ROW_FIELDS)?)?;
    m.add("STATE_CROSSED", STATE_CROSSED)?;
    m.add("STATE_LOCKED", STATE_LOCKED)?;
    m.add("STATE_TOP_CHANGED", STATE_TOP_CHANGED)?;
    Ok(())
}
