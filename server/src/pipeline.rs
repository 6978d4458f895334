//! Python bindings for the storage pipeline (`mbostream_lineproto::pipeline`).
//!
//! The replay's event loop offers references to its numpy buffers (no copy); the pipeline thread
//! reads them without the GIL. The Python hand-off thread takes finished blocks (the GIL released
//! while it waits), resolves missing symbols and hands the blocks to the spool.
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_lineproto::{Pipeline, PipelineConfig, PipelineError};

use crate::lineproto::PyDepthTable;

/// A buffer of a Python object, readable without the GIL while the object is held.
struct Held {
    ptr: *const u8,
    len: usize,
    /// Keeps the memory alive; dropped on the pipeline thread, where pyo3 defers the decref to
    /// the next time any thread holds the GIL.
    _owner: Py<PyAny>,
}

// SAFETY: the bytes are only read, and the owner (a read-only numpy array or bytes object, never
// resized while referenced) keeps them alive for as long as this value exists.
unsafe impl Send for Held {}

impl Held {
    /// The bytes of any C-contiguous buffer (a structured numpy array included: its raw bytes).
    fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: a simple (contiguous, unformatted) buffer request; on success the view is
        // initialised and released below, after its pointer and length were read.
        let (ptr, len) = unsafe {
            if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            let mut view = view.assume_init();
            let out = (view.buf as *const u8, view.len as usize);
            ffi::PyBuffer_Release(&mut view);
            out
        };
        Ok(Held { ptr, len, _owner: obj.clone().unbind() })
    }
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see `unsafe impl Send`; `ptr..ptr+len` is the exported buffer of `_owner`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// What `take` returns: `([(block, lines)], missing_symbols, finished)`.
type TakeResult<'py> = (Vec<(Bound<'py, PyBytes>, u32)>, Vec<u32>, bool);

fn py_err(e: PipelineError) -> PyErr {
    match e {
        PipelineError::InvalidConfig | PipelineError::PartialRecords | PipelineError::PartialRows => {
            PyValueError::new_err(e.to_string())
        }
        PipelineError::Closed | PipelineError::Exited | PipelineError::Spawn(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Lowers the calling thread's priority below the replay's (best effort); the pipeline thread
/// runs at that priority, and Python storage threads call this.
#[pyfunction]
#[pyo3(name = "lower_thread_priority")]
fn lower_priority() {
    mbostream_lineproto::lower_thread_priority();
}

/// Formats, cuts and compresses the stored measurements on a thread of its own.
///
/// `offer` and `offer_depth` never block. `take` returns finished blocks as `(gzip member,
/// lines)`, the instruments that need a symbol, and whether the pipeline has finished (after
/// `close`, once everything offered before it is in a block returned by this or an earlier take).
#[pyclass(module = "mbostream_core._engine", name = "Pipeline", frozen)]
struct PyPipeline {
    inner: Pipeline<Held>,
}

#[pymethods]
impl PyPipeline {
    #[new]
    #[pyo3(signature = (*, mbo, depth_levels, batch_points, flush_interval, level))]
    fn new(mbo: bool, depth_levels: usize, batch_points: usize, flush_interval: f64, level: u32) -> PyResult<Self> {
        if !(flush_interval > 0.0 && flush_interval.is_finite()) {
            return Err(py_err(PipelineError::InvalidConfig));
        }
        let flush_interval = Duration::try_from_secs_f64(flush_interval).map_err(|_| py_err(PipelineError::InvalidConfig))?;
        let cfg = PipelineConfig { mbo, depth_levels, batch_points, flush_interval, level };
        Ok(PyPipeline { inner: Pipeline::new(cfg).map_err(py_err)? })
    }

    /// Queues one replay step: its MBO records and the engine's event rows (both C-contiguous
    /// buffers, kept by reference until formatted). Never blocks.
    fn offer(&self, records: &Bound<'_, PyAny>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.offer(Held::new(records)?, Held::new(rows)?).map_err(py_err)
    }

    /// Queues one depth sample (a `Market.depth_table`). Never blocks.
    fn offer_depth(&self, table: &PyDepthTable) -> PyResult<()> {
        self.inner.offer_depth(table.books.clone()).map_err(py_err)
    }

    /// Gives instruments their `instrument` tag; releases the steps that waited for them.
    fn set_symbols(&self, symbols: Vec<(u32, String)>) -> PyResult<()> {
        self.inner.set_symbols(symbols).map_err(py_err)
    }

    /// Stops taking items; the thread formats what is queued, hands on the last block and ends.
    fn close(&self) {
        self.inner.close();
    }

    /// Waits up to `timeout` seconds for output: `(blocks, missing_symbols, finished)`.
    fn take<'py>(&self, py: Python<'py>, timeout: f64) -> TakeResult<'py> {
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let taken = py.detach(|| self.inner.take(wait));
        let blocks = taken.blocks.into_iter().map(|b| (PyBytes::new(py, &b.bytes), b.lines)).collect();
        (blocks, taken.missing, taken.finished)
    }

    /// Items offered and not yet formatted (steps parked for a symbol included).
    #[getter]
    fn backlog(&self) -> u64 {
        self.inner.backlog()
    }

    /// Bytes of the record and event buffers queued and not yet formatted, and of the blocks
    /// made and not yet taken: what storage holds in memory.
    #[getter]
    fn backlog_bytes(&self) -> u64 {
        self.inner.backlog_bytes()
    }

    /// Lines formatted so far.
    #[getter]
    fn formatted(&self) -> u64 {
        self.inner.formatted()
    }

    /// Records and rows skipped because neither timestamp was a usable point time.
    #[getter]
    fn skipped(&self) -> u64 {
        self.inner.skipped()
    }

    /// Waits for the thread to end (after `close` and once `take` reported finished).
    fn join(&self, py: Python<'_>) {
        py.detach(|| self.inner.join());
    }
}

/// Adds `Pipeline` and `lower_thread_priority` to `mbostream_core._engine`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPipeline>()?;
    m.add_function(wrap_pyfunction!(lower_priority, m)?)?;
    Ok(())
}
