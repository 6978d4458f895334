//! The storage pipeline: replay steps in, gzip blocks of line protocol out, on a native thread.
//!
//! ```text
//! event loop ── offer(records, rows) ──▶ channel ──▶ pipeline thread ──▶ blocks ──▶ take() (hand-off thread)
//!              offer_depth(table)                     format, cut, gzip           (Python: spool, HTTP)
//! ```
//!
//! The replay's event loop only moves references into a channel (no copy, no formatting); the
//! thread formats, cuts blocks of about `batch_points` lines (or older than `flush_interval`) and
//! compresses them without ever taking the GIL. The Python hand-off thread collects finished
//! blocks with [`PyPipeline::take`], so the storage costs the replay one call per step and the
//! GIL a few takes per second rather than work per step.
//!
//! Symbols: the thread cannot call Python. An instrument without a symbol parks its step (and
//! every later one, so order is kept) and is reported by `take`; the hand-off thread resolves it and
//! calls `set_symbols`, which releases the parked steps.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::EVENT_ROW_SIZE;
use mbostream_lineproto::{BlockEncoder, BookDepth, Formatter, MissingSymbols};

use crate::lineproto::PyDepthTable;

/// Pause between polls of the channel while steps flow, and its cap while idle.
const POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(50);

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

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see `unsafe impl Send`; `ptr..ptr+len` is the exported buffer of `_owner`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

enum Item {
    Step { records: Held, rows: Held },
    Depth(Arc<Vec<BookDepth>>),
    Symbols(Vec<(u32, String)>),
    Stop,
}

impl Item {
    /// Bytes of Python buffers this item keeps alive.
    fn held_bytes(&self) -> u64 {
        match self {
            Item::Step { records, rows } => (records.len + rows.len) as u64,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Out {
    blocks: VecDeque<(Vec<u8>, u32)>,
    missing: Vec<u32>,
    finished: bool,
}

#[derive(Default)]
struct Shared {
    out: Mutex<Out>,
    ready: Condvar,
    /// Items offered and not yet formatted.
    queued: AtomicU64,
    /// Bytes of the steps offered and not yet formatted (the memory they hold), plus those of the
    /// blocks made and not yet taken.
    queued_bytes: AtomicU64,
    /// Lines formatted so far (also those still waiting in an unfinished block).
    formatted: AtomicU64,
    skipped: AtomicU64,
}

impl Shared {
    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone, Copy)]
struct Config {
    mbo: bool,
    depth_levels: usize,
    batch_points: usize,
    flush_interval: Duration,
}

/// What the thread keeps between items.
struct Worker {
    cfg: Config,
    shared: Arc<Shared>,
    fmt: Formatter,
    encoder: BlockEncoder,
    /// Lines of the block being filled.
    pending: Vec<u8>,
    pending_lines: usize,
    oldest: Option<Instant>,
    scratch: Vec<u8>,
    /// Steps waiting for symbols, in feed order.
    parked: VecDeque<Item>,
    requested: Vec<u32>,
}

enum Outcome {
    Done,
    Parked(Item),
}

impl Worker {
    /// Polls the channel rather than blocking on it: a blocked receiver would be woken by every
    /// `offer` (a futex call on the event loop's thread per replay step), while a poll takes
    /// whatever queued meanwhile in one go, for a few milliseconds of storage latency.
    fn run(mut self, rx: Receiver<Item>) {
        let mut stopping = false;
        let mut pause = POLL;
        loop {
            let mut got = false;
            loop {
                match rx.try_recv() {
                    Ok(item) => {
                        got = true;
                        stopping |= self.handle(item);
                    }
                    Err(TryRecvError::Empty) => break,
                    // Nobody can send symbols or take blocks any more: what is parked is dropped.
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        self.parked.clear();
                        break;
                    }
                }
            }
            if self.oldest.is_some_and(|t| t.elapsed() >= self.cfg.flush_interval) {
                self.emit();
            }
            if stopping && self.parked.is_empty() {
                break;
            }
            pause = if got { POLL } else { (pause * 2).min(IDLE_POLL) };
            let due = self.oldest.map_or(pause, |t| self.cfg.flush_interval.saturating_sub(t.elapsed()));
            std::thread::sleep(pause.min(due).max(Duration::from_micros(100)));
        }
        self.emit();
        let mut out = self.shared.out();
        out.finished = true;
        self.shared.ready.notify_all();
    }

    /// Takes one item from the channel; true for `Stop`.
    fn handle(&mut self, item: Item) -> bool {
        match item {
            Item::Symbols(symbols) => {
                for (id, symbol) in &symbols {
                    self.fmt.set_symbol(*id, symbol);
                }
                self.requested.retain(|id| !symbols.iter().any(|(s, _)| s == id));
                while let Some(item) = self.parked.pop_front() {
                    if let Outcome::Parked(item) = self.process(item) {
                        self.parked.push_front(item);
                        break;
                    }
                }
            }
            Item::Stop => return true,
            item if !self.parked.is_empty() => self.parked.push_back(item),
            item => {
                if let Outcome::Parked(item) = self.process(item) {
                    self.parked.push_back(item);
                }
            }
        }
        false
    }

    fn process(&mut self, item: Item) -> Outcome {
        self.scratch.clear();
        let result = match &item {
            Item::Step { records, rows } => {
                let (data, row_data) = (records.bytes(), rows.bytes());
                let records_span = (0, data.len() / MBO_RECORD_SIZE);
                let events_span = (0, row_data.len() / EVENT_ROW_SIZE);
                self.fmt.batch(data, MBO_RECORD_SIZE, records_span, row_data, events_span, self.cfg.mbo, &mut self.scratch)
            }
            Item::Depth(books) => self.fmt.depth(books, self.cfg.depth_levels, &mut self.scratch),
            Item::Symbols(_) | Item::Stop => Ok(0),
        };
        self.shared.skipped.store(self.fmt.skipped, Ordering::Relaxed);
        match result {
            Ok(lines) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.shared.queued_bytes.fetch_sub(item.held_bytes(), Ordering::Relaxed);
                self.add(lines);
                Outcome::Done
            }
            Err(MissingSymbols(ids)) => {
                let new: Vec<u32> = ids.into_iter().filter(|id| !self.requested.contains(id)).collect();
                if !new.is_empty() {
                    self.requested.extend(&new);
                    self.shared.out().missing.extend(new);
                    self.shared.ready.notify_all();
                }
                Outcome::Parked(item)
            }
        }
    }

    /// Moves the lines just formatted (in `scratch`) into the block being filled.
    fn add(&mut self, lines: usize) {
        if lines == 0 {
            return;
        }
        self.shared.formatted.fetch_add(lines as u64, Ordering::Relaxed);
        if self.pending_lines > 0 && self.pending_lines + lines > self.cfg.batch_points {
            self.emit();
        }
        if self.pending.is_empty() {
            std::mem::swap(&mut self.pending, &mut self.scratch);
        } else {
            self.pending.extend_from_slice(&self.scratch);
        }
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.pending_lines += lines;
        if self.pending_lines >= self.cfg.batch_points {
            self.emit();
        }
    }

    /// Compresses the pending lines into blocks of at most `2 * batch_points` lines each.
    fn emit(&mut self) {
        if self.pending_lines == 0 {
            return;
        }
        let mut blocks = Vec::new();
        let mut rest: &[u8] = &self.pending;
        let mut lines_left = self.pending_lines;
        while lines_left > 0 {
            let (take, cut) = if lines_left > 2 * self.cfg.batch_points {
                (self.cfg.batch_points, nth_line_end(rest, self.cfg.batch_points))
            } else {
                (lines_left, rest.len())
            };
            let mut block = Vec::new();
            self.encoder.encode(&rest[..cut], take as u32, &mut block);
            blocks.push((block, take as u32));
            rest = &rest[cut..];
            lines_left -= take;
        }
        self.pending.clear();
        self.pending_lines = 0;
        self.oldest = None;
        let bytes: usize = blocks.iter().map(|(b, _)| b.len()).sum();
        self.shared.queued_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.shared.out().blocks.extend(blocks);
        self.shared.ready.notify_all();
    }
}

/// How much lower than the replay the storage threads run (a nice increment): when both want a
/// core, the replay wins, and storage catches up from its queue.
pub const STORAGE_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`STORAGE_NICE`] (on Linux the nice value is a
/// per-thread attribute); best effort: a failure leaves the thread at the process's priority.
/// The pipeline thread calls it at start; Python storage threads call it through the binding.
#[pyfunction]
#[pyo3(name = "lower_thread_priority")]
pub fn lower_priority() {
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (current + STORAGE_NICE).min(19));
    }
}

/// Byte offset just past the `n`-th newline of `data` (its length if it has fewer).
fn nth_line_end(data: &[u8], n: usize) -> usize {
    let mut seen = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    data.len()
}

/// Formats, cuts and compresses the stored measurements on a thread of its own.
///
/// `offer` and `offer_depth` never block. `take` returns finished blocks as `(gzip member,
/// lines)`, the instruments that need a symbol, and whether the pipeline has finished (after
/// `close`, once everything offered before it is in a block returned by this or an earlier take).
#[pyclass(module = "mbostream._engine", name = "Pipeline", frozen)]
pub struct PyPipeline {
    tx: Sender<Item>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl PyPipeline {
    fn send(&self, item: Item) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("the storage pipeline is closed"));
        }
        let bytes = item.held_bytes();
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send(item).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            PyRuntimeError::new_err("the storage pipeline thread has exited")
        })
    }
}

#[pymethods]
impl PyPipeline {
    #[new]
    #[pyo3(signature = (*, mbo, depth_levels, batch_points, flush_interval, level))]
    fn new(mbo: bool, depth_levels: usize, batch_points: usize, flush_interval: f64, level: u32) -> PyResult<Self> {
        if batch_points == 0 || !(flush_interval > 0.0 && flush_interval.is_finite()) || level > 9 {
            return Err(PyValueError::new_err("batch_points > 0, flush_interval > 0 and level 0..=9 are required"));
        }
        let cfg = Config { mbo, depth_levels, batch_points, flush_interval: Duration::from_secs_f64(flush_interval) };
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            cfg,
            shared: shared.clone(),
            fmt: Formatter::new(),
            encoder: BlockEncoder::new(level),
            pending: Vec::new(),
            pending_lines: 0,
            oldest: None,
            scratch: Vec::new(),
            parked: VecDeque::new(),
            requested: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("mbostream-store".into())
            .spawn(move || {
                lower_priority();
                worker.run(rx)
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the storage thread: {e}")))?;
        Ok(PyPipeline { tx, shared, thread: Mutex::new(Some(thread)), closed: AtomicBool::new(false) })
    }

    /// Queues one replay step: its MBO records and the engine's event rows (both C-contiguous
    /// buffers, kept by reference until formatted). Never blocks.
    fn offer(&self, records: &Bound<'_, PyAny>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let records = Held::new(records)?;
        if records.len % MBO_RECORD_SIZE != 0 {
            return Err(PyValueError::new_err("records must be whole 56-byte MBO records"));
        }
        let rows = Held::new(rows)?;
        if rows.len % EVENT_ROW_SIZE != 0 {
            return Err(PyValueError::new_err("rows must be whole 80-byte event rows"));
        }
        self.send(Item::Step { records, rows })
    }

    /// Queues one depth sample (a `Market.depth_table`). Never blocks.
    fn offer_depth(&self, table: &PyDepthTable) -> PyResult<()> {
        self.send(Item::Depth(table.books.clone()))
    }

    /// Gives instruments their `instrument` tag; releases the steps that waited for them.
    fn set_symbols(&self, symbols: Vec<(u32, String)>) -> PyResult<()> {
        self.tx
            .send(Item::Symbols(symbols))
            .map_err(|_| PyRuntimeError::new_err("the storage pipeline thread has exited"))
    }

    /// Stops taking items; the thread formats what is queued, hands on the last block and ends.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Item::Stop);
        }
    }

    /// Waits up to `timeout` seconds for output: `(blocks, missing_symbols, finished)`.
    fn take<'py>(&self, py: Python<'py>, timeout: f64) -> (Vec<(Bound<'py, PyBytes>, u32)>, Vec<u32>, bool) {
        let shared = self.shared.clone();
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let (blocks, missing, finished) = py.detach(move || {
            let mut out = shared.out();
            let deadline = Instant::now() + wait;
            while out.blocks.is_empty() && out.missing.is_empty() && !out.finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                out = shared.ready.wait_timeout(out, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            let blocks = std::mem::take(&mut out.blocks);
            let bytes: usize = blocks.iter().map(|(b, _)| b.len()).sum();
            shared.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
            (blocks, std::mem::take(&mut out.missing), out.finished)
        });
        let blocks = blocks.into_iter().map(|(data, lines)| (PyBytes::new(py, &data), lines)).collect();
        (blocks, missing, finished)
    }

    /// Items offered and not yet formatted (steps parked for a symbol included).
    #[getter]
    fn backlog(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Bytes of the record and event buffers queued and not yet formatted, and of the blocks
    /// made and not yet taken: what storage holds in memory.
    #[getter]
    fn backlog_bytes(&self) -> u64 {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Lines formatted so far.
    #[getter]
    fn formatted(&self) -> u64 {
        self.shared.formatted.load(Ordering::Relaxed)
    }

    /// Records and rows skipped because neither timestamp was a usable point time.
    #[getter]
    fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Waits for the thread to end (after `close` and once `take` reported finished).
    fn join(&self, py: Python<'_>) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            py.detach(move || {
                let _ = thread.join();
            });
        }
    }
}

impl Drop for PyPipeline {
    fn drop(&mut self) {
        // The thread ends once the channel is closed; it is not joined here (it may hold steps
        // that wait for symbols nobody will give any more: they are dropped with it).
        let _ = self.tx.send(Item::Stop);
    }
}
