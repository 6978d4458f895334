//! The storage pipeline end to end: real records through the engine, blocks out of the thread,
//! inflated and compared with what the formatter writes for the same steps.
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbostream_book::record::{Mbo, ACTION_ADD, ACTION_CANCEL, ACTION_TRADE, F_LAST, MBO_RECORD_SIZE, SIDE_ASK, SIDE_BID};
use mbostream_book::{Market, EVENT_ROW_SIZE};
use mbostream_lineproto::{Block, BookDepth, Formatter, Pipeline, PipelineConfig, PipelineError};

const T0: u64 = 1_758_742_200_000_000_000;
const CLX5: u32 = 432669;
const CLZ5: u32 = 432670;
const TAKE: Duration = Duration::from_secs(10);

/// One replay step: its records and the engine's event rows for them.
#[derive(Clone)]
struct Step {
    records: Vec<u8>,
    rows: Vec<u8>,
}

/// `n` pairs of records on `instrument_id` (an add, then a cancel of it or a trade, with F_LAST).
fn records(instrument_id: u32, n: usize, t: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let ts = t + i as u64 * 1000;
        let rec = |action, side, flags, ts_event| Mbo {
            publisher_id: 1,
            instrument_id,
            ts_event,
            order_id: i as u64 + 1,
            price: 64_830_000_000 + (i as i64 % 5) * 10_000_000,
            size: 2,
            flags,
            channel_id: 26,
            action,
            side,
            ts_recv: ts_event + 500,
            ts_in_delta: 0,
            sequence: i as u32,
        };
        rec(ACTION_ADD, SIDE_BID, 0, ts).encode_into(&mut out);
        let second = if i % 3 == 0 { rec(ACTION_TRADE, SIDE_ASK, F_LAST, ts + 1) } else { rec(ACTION_CANCEL, SIDE_BID, F_LAST, ts + 1) };
        second.encode_into(&mut out);
    }
    out
}

/// One replay step of `records`, with the rows `market` writes for them.
fn step(market: &mut Market, records: Vec<u8>) -> Step {
    let mut rows = Vec::new();
    let n = records.len() / MBO_RECORD_SIZE;
    market.apply_slice(&records, MBO_RECORD_SIZE, 0, n, true, 0, &mut rows, None);
    Step { records, rows }
}

/// `n` steps of one record pair each.
fn steps(market: &mut Market, instrument_id: u32, n: usize, t: u64) -> Vec<Step> {
    (0..n).map(|i| step(market, records(instrument_id, 1, t + i as u64 * 1000))).collect()
}

fn config(batch_points: usize) -> PipelineConfig {
    PipelineConfig { mbo: true, depth_levels: 5, batch_points, flush_interval: Duration::from_secs(3600), level: 1 }
}

fn symbols() -> Vec<(u32, String)> {
    vec![(CLX5, "CLX5".into()), (CLZ5, "CLZ5".into())]
}

/// What a formatter with every symbol writes for `steps`, in order.
fn formatted(steps: &[Step]) -> Vec<u8> {
    let mut f = Formatter::new();
    for (id, s) in symbols() {
        f.set_symbol(id, &s);
    }
    let mut out = Vec::new();
    for s in steps {
        let records = (0, s.records.len() / MBO_RECORD_SIZE);
        let events = (0, s.rows.len() / EVENT_ROW_SIZE);
        f.batch(&s.records, MBO_RECORD_SIZE, records, &s.rows, events, true, &mut out).unwrap();
    }
    out
}

fn inflate(block: &Block) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&block.bytes[..]).read_to_end(&mut raw).unwrap();
    assert_eq!(raw.iter().filter(|&&b| b == b'\n').count(), block.lines as usize, "a block's LINES is its line count");
    raw
}

/// Takes until the pipeline has finished: the blocks, and the missing symbols reported.
fn drain(p: &Pipeline<Vec<u8>>) -> (Vec<Block>, Vec<u32>) {
    let deadline = Instant::now() + TAKE;
    let (mut blocks, mut missing) = (Vec::new(), Vec::new());
    loop {
        let taken = p.take(TAKE);
        blocks.extend(taken.blocks);
        missing.extend(taken.missing);
        if taken.finished {
            return (blocks, missing);
        }
        assert!(Instant::now() < deadline, "the pipeline did not finish");
    }
}

fn offer_all(p: &Pipeline<Vec<u8>>, steps: &[Step]) {
    for s in steps {
        p.offer(s.records.clone(), s.rows.clone()).unwrap();
    }
}

#[test]
fn steps_come_out_as_the_formatters_lines_in_order() {
    let mut market = Market::new();
    let steps = steps(&mut market, CLX5, 40, T0);
    let p = Pipeline::new(config(1000)).unwrap();
    p.set_symbols(symbols()).unwrap();
    offer_all(&p, &steps);
    p.close();
    let (blocks, missing) = drain(&p);
    p.join();

    let raw: Vec<u8> = blocks.iter().flat_map(inflate).collect();
    let expected = formatted(&steps);
    assert_eq!(String::from_utf8(raw).unwrap(), String::from_utf8(expected.clone()).unwrap());
    assert!(missing.is_empty());
    let lines = expected.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(p.formatted(), lines);
    assert_eq!((p.backlog(), p.backlog_bytes(), p.skipped()), (0, 0, 0), "nothing is held once everything was taken");
}

#[test]
fn blocks_are_cut_between_steps_at_about_batch_points_lines() {
    let mut market = Market::new();
    // Steps of 2 to 4 lines: a block closes before the step that would take it past 7 lines.
    let steps = steps(&mut market, CLX5, 30, T0);
    let p = Pipeline::new(config(7)).unwrap();
    p.set_symbols(symbols()).unwrap();
    offer_all(&p, &steps);
    p.close();
    let (blocks, _) = drain(&p);

    assert!(blocks.len() > 4, "{} blocks", blocks.len());
    assert!(blocks.iter().all(|b| (1..=7).contains(&b.lines)), "{:?}", blocks.iter().map(|b| b.lines).collect::<Vec<_>>());
    let raw: Vec<u8> = blocks.iter().flat_map(inflate).collect();
    assert_eq!(raw, formatted(&steps));
}

#[test]
fn a_step_over_twice_batch_points_is_cut_into_blocks_of_batch_points() {
    let mut market = Market::new();
    let big = vec![step(&mut market, records(CLX5, 30, T0))];
    let p = Pipeline::new(config(7)).unwrap();
    p.set_symbols(symbols()).unwrap();
    offer_all(&p, &big);
    p.close();
    let (blocks, _) = drain(&p);

    let (last, full) = blocks.split_last().unwrap();
    assert!(!full.is_empty() && full.iter().all(|b| b.lines == 7));
    assert!((8..=14).contains(&last.lines), "the rest, over 7 and at most 14 lines: {}", last.lines);
    let raw: Vec<u8> = blocks.iter().flat_map(inflate).collect();
    assert_eq!(raw, formatted(&big));
}

#[test]
fn steps_wait_for_their_symbol_and_keep_feed_order() {
    let mut market = Market::new();
    let clz5 = steps(&mut market, CLZ5, 3, T0);
    let clx5 = steps(&mut market, CLX5, 3, T0 + 10_000);
    let p = Pipeline::new(config(1000)).unwrap();
    p.set_symbols(vec![(CLX5, "CLX5".into())]).unwrap();
    offer_all(&p, &clz5);
    offer_all(&p, &clx5);

    let taken = p.take(TAKE);
    assert_eq!(taken.missing, vec![CLZ5], "reported once, however many steps wait");
    assert!(taken.blocks.is_empty() && !taken.finished);
    assert_eq!(p.backlog(), 6, "the CLX5 steps wait behind the CLZ5 ones");
    let held: usize = clz5.iter().chain(&clx5).map(|s| s.records.len() + s.rows.len()).sum();
    assert_eq!(p.backlog_bytes(), held as u64);

    p.set_symbols(vec![(CLZ5, "CLZ5".into())]).unwrap();
    p.close();
    let (blocks, missing) = drain(&p);
    assert!(missing.is_empty());
    let raw: Vec<u8> = blocks.iter().flat_map(inflate).collect();
    assert_eq!(raw, formatted(&[clz5, clx5].concat()));
    assert_eq!(p.backlog(), 0);
}

#[test]
fn a_partly_filled_block_leaves_after_the_flush_interval() {
    let mut market = Market::new();
    let steps = steps(&mut market, CLX5, 2, T0);
    let p = Pipeline::new(PipelineConfig { flush_interval: Duration::from_millis(20), ..config(1000) }).unwrap();
    p.set_symbols(symbols()).unwrap();
    offer_all(&p, &steps);
    let deadline = Instant::now() + TAKE;
    let mut blocks = Vec::new();
    while blocks.is_empty() {
        assert!(Instant::now() < deadline, "no block without close");
        let taken = p.take(TAKE);
        assert!(!taken.finished);
        blocks.extend(taken.blocks);
    }
    let raw: Vec<u8> = blocks.iter().flat_map(inflate).collect();
    assert_eq!(raw, formatted(&steps));
}

#[test]
fn depth_samples_are_formatted_with_the_configured_levels() {
    let book = BookDepth {
        instrument_id: CLX5,
        publisher_id: 1,
        sequence: 7,
        ts_event: T0,
        ts_recv: T0 + 5,
        record_count: 7,
        bid_levels: 3,
        ask_levels: 0,
        bids: vec![(100, 1, 1), (99, 2, 1), (98, 3, 1)],
        asks: vec![],
    };
    let p = Pipeline::<Vec<u8>>::new(PipelineConfig { depth_levels: 2, ..config(1000) }).unwrap();
    p.set_symbols(symbols()).unwrap();
    p.offer_depth(Arc::new(vec![book])).unwrap();
    p.close();
    let (blocks, _) = drain(&p);
    let raw = String::from_utf8(blocks.iter().flat_map(inflate).collect()).unwrap();
    assert!(raw.starts_with("depth,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_px_00=100i,bid_sz_00=1i,bid_ct_00=1i,bid_px_01=99i,"), "{raw}");
    assert!(!raw.contains("bid_px_02"), "two levels a side: {raw}");
}

#[test]
fn refused_calls_name_what_is_wrong() {
    for bad in [PipelineConfig { batch_points: 0, ..config(1) }, PipelineConfig { level: 10, ..config(1) }] {
        let err = Pipeline::<Vec<u8>>::new(bad).err().expect("refused");
        assert!(matches!(err, PipelineError::InvalidConfig));
    }
    let p = Pipeline::<Vec<u8>>::new(config(10)).unwrap();
    let err = p.offer(vec![0; MBO_RECORD_SIZE + 1], vec![]).unwrap_err();
    assert_eq!(err.to_string(), "records must be whole 56-byte MBO records");
    let err = p.offer(vec![], vec![0; EVENT_ROW_SIZE - 1]).unwrap_err();
    assert_eq!(err.to_string(), "rows must be whole 80-byte event rows");
    assert_eq!((p.backlog(), p.backlog_bytes()), (0, 0), "a refused step is not counted");
    p.close();
    let err = p.offer(vec![], vec![]).unwrap_err();
    assert_eq!(err.to_string(), "the storage pipeline is closed");
    assert!(drain(&p).0.is_empty());
}
