//! The storage pipeline: replay steps in, gzip blocks of line protocol out, on a thread of its own.
//!
//! ```text
//! caller ── offer(records, rows) ──▶ channel ──▶ pipeline thread ──▶ blocks ──▶ take() (consumer)
//!           offer_depth(table)                   format, cut, gzip
//! ```
//!
//! The producer (the replay) only moves buffers into a channel (no copy, no formatting); the
//! thread formats, cuts blocks of about `batch_points` lines (or older than `flush_interval`) and
//! compresses them. The consumer collects finished blocks with [`Pipeline::take`], so storage costs
//! the producer one call per step and the consumer a few takes per second.
//!
//! Symbols: the thread resolves none. An instrument without a symbol parks its step (and every
//! later one, so order is kept) and is reported by `take`; the consumer resolves it and calls
//! [`Pipeline::set_symbols`], which releases the parked steps.
//!
//! Buffers are any `AsRef<[u8]>` the thread may own: the Python binding passes references to
//! Python objects, the tests plain vectors.
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::EVENT_ROW_SIZE;

use crate::block::BlockEncoder;
use crate::depth::BookDepth;
use crate::format::{Formatter, MissingSymbols};
use crate::priority::lower_thread_priority;

/// Pause between polls of the channel while steps flow, and its cap while idle.
const POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What the pipeline stores and how it cuts blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Write an `mbo` point per record (`trades` and `bbo` points are always written).
    pub mbo: bool,
    /// Levels a side of each `depth` point.
    pub depth_levels: usize,
    /// Lines per block (a block holds at most twice as many); must be above 0.
    pub batch_points: usize,
    /// Age after which a partly filled block is compressed anyway.
    pub flush_interval: Duration,
    /// Compression level, 0..=9.
    pub level: u32,
}

/// Why the pipeline refused a call.
#[derive(Debug)]
pub enum PipelineError {
    /// `batch_points` is 0, the flush interval is not positive, or the level is above 9.
    InvalidConfig,
    /// The records buffer is not whole MBO records.
    PartialRecords,
    /// The rows buffer is not whole event rows.
    PartialRows,
    /// [`Pipeline::close`] was called.
    Closed,
    /// The pipeline thread is gone (it panicked, or was stopped).
    Exited,
    /// The thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::InvalidConfig => {
                write!(f, "batch_points > 0, flush_interval > 0 and level 0..=9 are required")
            }
            PipelineError::PartialRecords => write!(f, "records must be whole {MBO_RECORD_SIZE}-byte MBO records"),
            PipelineError::PartialRows => write!(f, "rows must be whole {EVENT_ROW_SIZE}-byte event rows"),
            PipelineError::Closed => write!(f, "the storage pipeline is closed"),
            PipelineError::Exited => write!(f, "the storage pipeline thread has exited"),
            PipelineError::Spawn(e) => write!(f, "cannot start the storage thread: {e}"),
        }
    }
}

impl std::error::Error for PipelineError {}

/// One finished block: a gzip member (see [`crate::block`]) and the lines it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub bytes: Vec<u8>,
    pub lines: u32,
}

/// What one [`Pipeline::take`] collected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Finished blocks, in feed order.
    pub blocks: Vec<Block>,
    /// Instruments that need a symbol (each reported once).
    pub missing: Vec<u32>,
    /// The thread has ended: everything offered before `close` is in this or an earlier take.
    pub finished: bool,
}

enum Item<B> {
    Step { records: B, rows: B },
    Depth(Arc<Vec<BookDepth>>),
    Symbols(Vec<(u32, String)>),
    Stop,
}

impl<B: AsRef<[u8]>> Item<B> {
    /// Bytes of buffers this item keeps alive.
    fn held_bytes(&self) -> u64 {
        match self {
            Item::Step { records, rows } => (records.as_ref().len() + rows.as_ref().len()) as u64,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Out {
    blocks: VecDeque<Block>,
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

/// What the thread keeps between items.
struct Worker<B> {
    cfg: PipelineConfig,
    shared: Arc<Shared>,
    fmt: Formatter,
    encoder: BlockEncoder,
    /// Lines of the block being filled.
    pending: Vec<u8>,
    pending_lines: usize,
    oldest: Option<Instant>,
    scratch: Vec<u8>,
    /// Steps waiting for symbols, in feed order.
    parked: VecDeque<Item<B>>,
    requested: Vec<u32>,
}

enum Outcome<B> {
    Done,
    Parked(Item<B>),
}

impl<B: AsRef<[u8]>> Worker<B> {
    fn new(cfg: PipelineConfig, shared: Arc<Shared>) -> Self {
        Worker {
            cfg,
            shared,
            fmt: Formatter::new(),
            encoder: BlockEncoder::new(cfg.level),
            pending: Vec::new(),
            pending_lines: 0,
            oldest: None,
            scratch: Vec::new(),
            parked: VecDeque::new(),
            requested: Vec::new(),
        }
    }

    /// Polls the channel rather than blocking on it: a blocked receiver would be woken by every
    /// `offer` (a futex call on the producer's thread per replay step), while a poll takes
    /// whatever queued meanwhile in one go, for a few milliseconds of storage latency.
    fn run(mut self, rx: Receiver<Item<B>>) {
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
    fn handle(&mut self, item: Item<B>) -> bool {
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

    fn process(&mut self, item: Item<B>) -> Outcome<B> {
        self.scratch.clear();
        let result = match &item {
            Item::Step { records, rows } => {
                let (data, row_data) = (records.as_ref(), rows.as_ref());
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
            let mut bytes = Vec::new();
            self.encoder.encode(&rest[..cut], take as u32, &mut bytes);
            blocks.push(Block { bytes, lines: take as u32 });
            rest = &rest[cut..];
            lines_left -= take;
        }
        self.pending.clear();
        self.pending_lines = 0;
        self.oldest = None;
        let bytes: usize = blocks.iter().map(|b| b.bytes.len()).sum();
        self.shared.queued_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.shared.out().blocks.extend(blocks);
        self.shared.ready.notify_all();
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
/// `offer` and `offer_depth` never block. `take` returns finished blocks, the instruments that
/// need a symbol, and whether the pipeline has finished (after `close`, once everything offered
/// before it is in a block returned by this or an earlier take). Dropping the pipeline stops the
/// thread without joining it; steps still waiting for a symbol are dropped with it.
pub struct Pipeline<B> {
    tx: Sender<Item<B>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl<B: AsRef<[u8]> + Send + 'static> Pipeline<B> {
    /// Starts the thread (named `mbostream-store`, at [`lower_thread_priority`]).
    pub fn new(cfg: PipelineConfig) -> Result<Self, PipelineError> {
        if cfg.batch_points == 0 || cfg.level > 9 {
            return Err(PipelineError::InvalidConfig);
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(cfg, shared.clone());
        let thread = std::thread::Builder::new()
            .name("mbostream-store".into())
            .spawn(move || {
                lower_thread_priority();
                worker.run(rx)
            })
            .map_err(PipelineError::Spawn)?;
        Ok(Pipeline { tx, shared, thread: Mutex::new(Some(thread)), closed: AtomicBool::new(false) })
    }

    fn send(&self, item: Item<B>) -> Result<(), PipelineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PipelineError::Closed);
        }
        let bytes = item.held_bytes();
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send(item).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            PipelineError::Exited
        })
    }

    /// Queues one replay step: its MBO records (56 bytes each) and the engine's event rows
    /// (80 bytes each), kept until formatted. Never blocks.
    pub fn offer(&self, records: B, rows: B) -> Result<(), PipelineError> {
        if records.as_ref().len() % MBO_RECORD_SIZE != 0 {
            return Err(PipelineError::PartialRecords);
        }
        if rows.as_ref().len() % EVENT_ROW_SIZE != 0 {
            return Err(PipelineError::PartialRows);
        }
        self.send(Item::Step { records, rows })
    }

    /// Queues one depth sample. Never blocks.
    pub fn offer_depth(&self, books: Arc<Vec<BookDepth>>) -> Result<(), PipelineError> {
        self.send(Item::Depth(books))
    }

    /// Gives instruments their `instrument` tag; releases the steps that waited for them.
    pub fn set_symbols(&self, symbols: Vec<(u32, String)>) -> Result<(), PipelineError> {
        self.tx.send(Item::Symbols(symbols)).map_err(|_| PipelineError::Exited)
    }

    /// Stops taking items; the thread formats what is queued, hands on the last block and ends.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Item::Stop);
        }
    }

    /// Waits up to `timeout` for output (blocks, missing symbols or the end) and takes it.
    pub fn take(&self, timeout: Duration) -> Taken {
        let mut out = self.shared.out();
        let deadline = Instant::now() + timeout;
        while out.blocks.is_empty() && out.missing.is_empty() && !out.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            out = self.shared.ready.wait_timeout(out, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let blocks: Vec<Block> = std::mem::take(&mut out.blocks).into();
        let bytes: usize = blocks.iter().map(|b| b.bytes.len()).sum();
        self.shared.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        Taken { blocks, missing: std::mem::take(&mut out.missing), finished: out.finished }
    }

    /// Items offered and not yet formatted (steps parked for a symbol included).
    pub fn backlog(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Bytes of the record and event buffers queued and not yet formatted, and of the blocks
    /// made and not yet taken: what storage holds in memory.
    pub fn backlog_bytes(&self) -> u64 {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Lines formatted so far.
    pub fn formatted(&self) -> u64 {
        self.shared.formatted.load(Ordering::Relaxed)
    }

    /// Records and rows skipped because neither timestamp was a usable point time.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Waits for the thread to end (after `close` and once `take` reported finished).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl<B> Drop for Pipeline<B> {
    fn drop(&mut self) {
        // The thread ends once the channel is closed; it is not joined here (it may hold steps
        // that wait for symbols nobody will give any more: they are dropped with it).
        let _ = self.tx.send(Item::Stop);
    }
}
