//! Python bindings for `mbostream-lineproto` (registered into `mbostream_core._engine`).
//!
//! Conversion and delegation only: buffers in, `(bytes, points)` out, with the GIL released while
//! formatting. The Python side (`mbostream.storage.lineproto`) resolves symbols and cuts windows.
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::EVENT_ROW_SIZE;
use std::sync::Arc;

use mbostream_lineproto::{encode_block, BookDepth, Formatter, MissingSymbols, BLOCK_HEADER_SIZE, MAX_POINT_TIME, REWIND_WINDOW_NS};

use crate::bytes_of;

fn missing(err: MissingSymbols) -> PyErr {
    PyKeyError::new_err(err.0)
}

fn window(
    len_bytes: usize,
    stride: usize,
    start: usize,
    stop: Option<usize>,
) -> PyResult<(usize, usize)> {
    let total = len_bytes / stride;
    let stop = stop.unwrap_or(total);
    if start > stop || stop > total {
        return Err(PyValueError::new_err(format!(
            "window {start}..{stop} is outside the {total} rows of the buffer"
        )));
    }
    Ok((start, stop))
}

fn check_stride(stride: usize) -> PyResult<()> {
    if stride < MBO_RECORD_SIZE {
        return Err(PyValueError::new_err(format!(
            "stride {stride} is below the MBO record size"
        )));
    }
    Ok(())
}

/// Formats MBO records and event rows into InfluxDB line protocol, keeping the point clocks.
///
/// Every formatting method raises `KeyError([instrument_id, ...])` without output when an
/// instrument has no symbol yet (see `set_symbol`).
#[pyclass(module = "mbostream_core._engine", name = "LineFormatter")]
struct PyLineFormatter {
    inner: Formatter,
}

#[pymethods]
impl PyLineFormatter {
    #[new]
    fn new() -> Self {
        PyLineFormatter {
            inner: Formatter::new(),
        }
    }

    /// Sets the symbol written as the `instrument` tag of `instrument_id`.
    fn set_symbol(&mut self, instrument_id: u32, symbol: &str) {
        self.inner.set_symbol(instrument_id, symbol);
    }

    /// The escaped tag set of one book: `,instrument=…,instrument_id=…,publisher_id=…`.
    fn book_tags<'py>(
        &mut self,
        py: Python<'py>,
        instrument_id: u32,
        publisher_id: u16,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let tags = self
            .inner
            .book_tags(instrument_id, publisher_id)
            .map_err(missing)?;
        Ok(PyBytes::new(py, tags))
    }

    /// One replay step: `mbo` (with `mbo`) and `trades` points of records `start..stop`, then
    /// `bbo` points of event rows `row_start..row_stop`, in one call: `(line_protocol, points)`.
    #[pyo3(signature = (buf, rows, mbo, stride=MBO_RECORD_SIZE, start=0, stop=None, row_start=0, row_stop=None))]
    #[allow(clippy::too_many_arguments)]
    fn batch<'py>(
        &mut self,
        py: Python<'py>,
        buf: PyBuffer<u8>,
        rows: PyBuffer<u8>,
        mbo: bool,
        stride: usize,
        start: usize,
        stop: Option<usize>,
        row_start: usize,
        row_stop: Option<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        check_stride(stride)?;
        let data = bytes_of(&buf)?;
        let row_data = bytes_of(&rows)?;
        let records = window(data.len(), stride, start, stop)?;
        let events = window(row_data.len(), EVENT_ROW_SIZE, row_start, row_stop)?;
        let fmt = &mut self.inner;
        let (out, n) = py
            .detach(|| {
                let mut out = Vec::new();
                fmt.batch(data, stride, records, row_data, events, mbo, &mut out)
                    .map(|n| (out, n))
            })
            .map_err(missing)?;
        Ok((PyBytes::new(py, &out), n))
    }

    /// Several whole replay steps `[(records, rows), ...]` in one call (the GIL released once):
    /// `mbo` (with `mbo`), `trades` and `bbo` points of each, in order: `(line_protocol, points)`.
    #[pyo3(signature = (steps, mbo, stride=MBO_RECORD_SIZE))]
    fn batches<'py>(
        &mut self,
        py: Python<'py>,
        steps: Vec<(PyBuffer<u8>, PyBuffer<u8>)>,
        mbo: bool,
        stride: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        check_stride(stride)?;
        let mut slices = Vec::with_capacity(steps.len());
        for (buf, rows) in &steps {
            let (data, row_data) = (bytes_of(buf)?, bytes_of(rows)?);
            slices.push((
                data,
                (0, data.len() / stride),
                row_data,
                (0, row_data.len() / EVENT_ROW_SIZE),
            ));
        }
        let fmt = &mut self.inner;
        let (out, n) = py
            .detach(|| {
                for &(data, records, row_data, events) in &slices {
                    fmt.check_batch(data, stride, records, row_data, events)?;
                }
                let mut out = Vec::new();
                let mut n = 0;
                for &(data, records, row_data, events) in &slices {
                    n += fmt.batch(data, stride, records, row_data, events, mbo, &mut out)?;
                }
                Ok((out, n))
            })
            .map_err(missing)?;
        Ok((PyBytes::new(py, &out), n))
    }

    /// One `depth` point per book of a depth sample that changed since its previous sample
    /// (at most `levels` levels a side): `(line_protocol, points)`.
    fn depth<'py>(&mut self, py: Python<'py>, table: &PyDepthTable, levels: usize) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let mut out = Vec::new();
        let n = self.inner.depth(&table.books, levels, &mut out).map_err(missing)?;
        Ok((PyBytes::new(py, &out), n))
    }

    /// Records and rows skipped so far because neither timestamp was a usable point time.
    #[getter]
    fn skipped(&self) -> u64 {
        self.inner.skipped
    }
}

/// The top levels of every book at one moment (`Market.depth_table`): what a `depth` sample holds.
#[pyclass(module = "mbostream_core._engine", name = "DepthTable", frozen)]
pub struct PyDepthTable {
    pub(crate) books: Arc<Vec<BookDepth>>,
}

impl PyDepthTable {
    pub(crate) fn new(books: Vec<BookDepth>) -> Self {
        PyDepthTable { books: Arc::new(books) }
    }
}

type DepthRow = (u32, u16, u32, u64, u64, u64, u32, u32, Vec<(i64, u64, u32)>, Vec<(i64, u64, u32)>);

#[pymethods]
impl PyDepthTable {
    /// A table from rows as `rows()` returns them (for tests and tools; the sink takes
    /// `Market.depth_table`).
    #[new]
    fn from_rows(rows: Vec<DepthRow>) -> Self {
        let books = rows
            .into_iter()
            .map(|(instrument_id, publisher_id, sequence, ts_event, ts_recv, record_count, bid_levels, ask_levels, bids, asks)| BookDepth {
                instrument_id,
                publisher_id,
                sequence,
                ts_event,
                ts_recv,
                record_count,
                bid_levels,
                ask_levels,
                bids,
                asks,
            })
            .collect();
        PyDepthTable::new(books)
    }

    fn __len__(&self) -> usize {
        self.books.len()
    }

    /// Every book as `(instrument_id, publisher_id, sequence, ts_event, ts_recv, record_count,
    /// bid_levels, ask_levels, bids, asks)`, levels as `(price, size, count)` best first.
    fn rows(&self) -> Vec<DepthRow> {
        self.books
            .iter()
            .map(|b| {
                (b.instrument_id, b.publisher_id, b.sequence, b.ts_event, b.ts_recv, b.record_count, b.bid_levels, b.ask_levels, b.bids.clone(), b.asks.clone())
            })
            .collect()
    }
}

/// One gzip block (see `mbostream.storage.blocks`) of `lines` whole lines, at `level` 0–9.
#[pyfunction]
fn encode_lines_block<'py>(py: Python<'py>, raw: PyBuffer<u8>, lines: u32, level: u32) -> PyResult<Bound<'py, PyBytes>> {
    let data = bytes_of(&raw)?;
    if level > 9 {
        return Err(PyValueError::new_err("level must be 0..=9"));
    }
    let mut out = Vec::new();
    py.detach(|| encode_block(data, lines, level, &mut out));
    Ok(PyBytes::new(py, &out))
}

/// Adds this module's classes to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLineFormatter>()?;
    m.add_class::<PyDepthTable>()?;
    m.add_function(wrap_pyfunction!(encode_lines_block, m)?)?;
    m.add("BLOCK_HEADER_SIZE", BLOCK_HEADER_SIZE)?;
    m.add("LINEPROTO_REWIND_WINDOW_NS", REWIND_WINDOW_NS)?;
    m.add("LINEPROTO_MAX_POINT_TIME", MAX_POINT_TIME)?;
    Ok(())
}
