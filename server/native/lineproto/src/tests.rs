//! Table tests of the line formats, escaping, number formatting and the point clock.

use mbostream_book::market::{EventRow, Market, EVENT_ROW_SIZE, STATE_TOP_CHANGED};
use mbostream_book::record::{
    Mbo, ACTION_ADD, ACTION_CANCEL, ACTION_TRADE, F_LAST, MBO_RECORD_SIZE, SIDE_ASK, SIDE_BID,
};

use crate::clock::{SeriesClock, REWIND_WINDOW_NS};
use crate::escape::{push_code, push_tag_value};
use crate::format::{Formatter, MissingSymbols};
use crate::number::{push_i64, push_u64};

const T0: u64 = 1_758_742_200_000_000_000;

fn rec(
    action: u8,
    side: u8,
    order_id: u64,
    price: i64,
    size: u32,
    ts_event: u64,
    flags: u8,
) -> Mbo {
    Mbo {
        publisher_id: 1,
        instrument_id: 432669,
        ts_event,
        order_id,
        price,
        size,
        flags,
        channel_id: 26,
        action,
        side,
        ts_recv: ts_event.wrapping_add(500),
        ts_in_delta: 17528,
        sequence: 94_225_061,
    }
}

fn encode(records: &[Mbo]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in records {
        r.encode_into(&mut buf);
    }
    buf
}

fn text(out: &[u8]) -> Vec<String> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn formatter() -> Formatter {
    let mut f = Formatter::new();
    f.set_symbol(432669, "CLX5");
    f
}

#[test]
fn integers_match_std_formatting() {
    for v in [
        0u64,
        1,
        9,
        10,
        99,
        100,
        101,
        12345,
        u32::MAX as u64,
        u64::MAX,
        10u64.pow(19),
    ] {
        let mut out = Vec::new();
        push_u64(&mut out, v);
        assert_eq!(out, v.to_string().into_bytes());
    }
    for v in [0i64, -1, -9, -10, 64_830_000_000, i64::MIN, i64::MAX] {
        let mut out = Vec::new();
        push_i64(&mut out, v);
        assert_eq!(out, v.to_string().into_bytes());
    }
}

#[test]
fn tag_values_are_escaped_like_the_official_client() {
    let cases = [
        ("CLX5", "CLX5"),
        ("ES H4", "ES\\ H4"),
        ("a,b=c", "a\\,b\\=c"),
        ("ends\\", "ends\\\\"),
        ("two\nlines\tand\r", "two\\nlines\\tand\\r"),
        ("ÜSD-€", "ÜSD-€"),
    ];
    for (raw, escaped) in cases {
        let mut out = Vec::new();
        push_tag_value(&mut out, raw);
        assert_eq!(String::from_utf8(out).unwrap(), escaped, "{raw:?}");
    }
}

#[test]
fn odd_codes_become_hex() {
    let mut out = Vec::new();
    push_code(&mut out, b'A');
    push_code(&mut out, 0);
    push_code(&mut out, b' ');
    assert_eq!(out, b"Ax00x20");
}

#[test]
fn clock_keeps_each_key_strictly_increasing() {
    let mut c = SeriesClock::new();
    assert_eq!(c.stamp(1, 100), 100);
    assert_eq!(c.stamp(1, 100), 101); // same ts_event: nudged
    assert_eq!(c.stamp(1, 100), 102);
    assert_eq!(c.stamp(1, 101), 103); // next ts_event already taken by a nudge
    assert_eq!(c.stamp(1, 200), 200);
    assert_eq!(c.stamp(1, 150), 201); // slightly out of order: still after the last point
    assert_eq!(c.stamp(2, 100), 100); // other books have their own clocks
    let far = 200 + REWIND_WINDOW_NS + 10;
    assert_eq!(c.stamp(1, far), far);
    assert_eq!(c.stamp(1, 100), 100); // a rewind beyond the window restarts the timeline
}

#[test]
fn mbo_lines_carry_every_field_and_unique_times() {
    let records = [
        rec(ACTION_ADD, SIDE_BID, 7, 64_830_000_000, 3, T0, 0),
        rec(
            ACTION_CANCEL,
            SIDE_ASK,
            u64::MAX,
            64_840_000_000,
            1,
            T0,
            F_LAST,
        ),
    ];
    let buf = encode(&records);
    let mut out = Vec::new();
    let n = formatter()
        .mbo(&buf, MBO_RECORD_SIZE, 0, 2, &mut out)
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        text(&out),
        [
            format!(
                "mbo,action=A,instrument=CLX5,instrument_id=432669,publisher_id=1,side=B order_id=7i,price=64830000000i,\
                 size=3i,flags=0i,sequence=94225061i,ts_event={T0}i,ts_recv={}i {T0}",
                T0 + 500
            ),
            format!(
                "mbo,action=C,instrument=CLX5,instrument_id=432669,publisher_id=1,side=A order_id=-1i,price=64840000000i,\
                 size=1i,flags=128i,sequence=94225061i,ts_event={T0}i,ts_recv={}i {}",
                T0 + 500,
                T0 + 1
            ),
        ]
    );
}

#[test]
fn trades_come_from_t_records_only() {
    let records = [
        rec(ACTION_ADD, SIDE_BID, 7, 64_830_000_000, 3, T0, F_LAST),
        rec(ACTION_TRADE, SIDE_ASK, 0, 64_830_000_000, 2, T0 + 10, 0),
        rec(
            ACTION_TRADE,
            SIDE_ASK,
            0,
            64_830_000_000,
            1,
            T0 + 10,
            F_LAST,
        ),
    ];
    let buf = encode(&records);
    let mut out = Vec::new();
    let n = formatter()
        .trades(&buf, MBO_RECORD_SIZE, 0, 3, &mut out)
        .unwrap();
    assert_eq!(n, 2);
    let lines = text(&out);
    assert!(lines[0].starts_with("trades,instrument=CLX5,instrument_id=432669,publisher_id=1,side=A price=64830000000i,size=2i,"));
    assert!(lines[0].ends_with(&format!(" {}", T0 + 10)));
    assert!(lines[1].ends_with(&format!(" {}", T0 + 11)));
}

#[test]
fn bbo_follows_the_engine_rows_and_omits_absent_sides() {
    let records = [
        rec(ACTION_ADD, SIDE_BID, 1, 64_830_000_000, 3, T0, F_LAST),
        rec(ACTION_ADD, SIDE_ASK, 2, 64_850_000_000, 4, T0 + 5, F_LAST),
        rec(ACTION_ADD, SIDE_ASK, 3, 64_900_000_000, 4, T0 + 6, F_LAST),
    ];
    let buf = encode(&records);
    let mut market = Market::new();
    let mut rows = Vec::new();
    market.apply_slice(&buf, MBO_RECORD_SIZE, 0, 3, true, 0, &mut rows, None);
    assert_eq!(rows.len(), 3 * EVENT_ROW_SIZE);
    assert_eq!(
        EventRow::decode(&rows[EVENT_ROW_SIZE..]).ask_price,
        64_850_000_000
    );
    let changed = (0..3)
        .filter(|&i| EventRow::decode(&rows[i * EVENT_ROW_SIZE..]).state & STATE_TOP_CHANGED != 0)
        .count();
    let mut out = Vec::new();
    let n = formatter().bbo(&rows, 0, 3, &mut out).unwrap();
    assert_eq!(n, changed);
    assert_eq!(n, 2, "the third add is behind the best ask");
    let lines = text(&out);
    assert_eq!(
        lines[0],
        format!(
            "bbo,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_price=64830000000i,bid_size=3i,bid_count=1i,\
             ask_size=0i,ask_count=0i,crossed=false,locked=false,sequence=94225061i,ts_event={T0}i,ts_recv={}i {T0}",
            T0 + 500
        )
    );
    assert!(lines[1].contains(",ask_price=64850000000i,"));
    assert!(lines[1].contains(",spread=20000000i,mid=64840000000i,"));
}

#[test]
fn missing_symbols_stop_before_any_output() {
    let buf = encode(&[rec(ACTION_TRADE, SIDE_ASK, 0, 1, 1, T0, F_LAST)]);
    let mut f = Formatter::new();
    let mut out = Vec::new();
    assert_eq!(
        f.mbo(&buf, MBO_RECORD_SIZE, 0, 1, &mut out),
        Err(MissingSymbols(vec![432669]))
    );
    assert_eq!(
        f.trades(&buf, MBO_RECORD_SIZE, 0, 1, &mut out),
        Err(MissingSymbols(vec![432669]))
    );
    assert!(out.is_empty());
    f.set_symbol(432669, "CL X5");
    assert_eq!(f.mbo(&buf, MBO_RECORD_SIZE, 0, 1, &mut out), Ok(1));
    assert!(text(&out)[0].contains(",instrument=CL\\ X5,"));
    assert!(
        text(&out)[0].ends_with(&format!(" {T0}")),
        "the failed call did not move the clock"
    );
}

#[test]
fn undefined_timestamps_fall_back_to_ts_recv_or_skip() {
    let mut r = rec(ACTION_ADD, SIDE_BID, 1, 1, 1, u64::MAX, F_LAST);
    let mut both = r;
    both.ts_recv = u64::MAX;
    r.ts_recv = T0;
    let buf = encode(&[r, both]);
    let mut f = formatter();
    let mut out = Vec::new();
    assert_eq!(f.mbo(&buf, MBO_RECORD_SIZE, 0, 2, &mut out), Ok(1));
    assert_eq!(f.skipped, 1);
    assert!(text(&out)[0].ends_with(&format!(",ts_event=-1i,ts_recv={T0}i {T0}")));
}

#[test]
fn integers_match_std_formatting_across_every_digit_count() {
    let mut v = 1u64;
    for _ in 0..20 {
        for x in [v - 1, v, v + 1, v.saturating_mul(7), v / 3 * 2 + 1] {
            let mut out = Vec::new();
            push_u64(&mut out, x);
            assert_eq!(out, x.to_string().into_bytes());
        }
        v = v.saturating_mul(10);
    }
}

fn depth_of(sequence: u32, ts_event: u64, bids: Vec<(i64, u64, u32)>, asks: Vec<(i64, u64, u32)>) -> crate::BookDepth {
    crate::BookDepth {
        instrument_id: 432669,
        publisher_id: 1,
        sequence,
        ts_event,
        ts_recv: ts_event + 5,
        record_count: sequence as u64,
        bid_levels: bids.len() as u32,
        ask_levels: asks.len() as u32,
        bids,
        asks,
    }
}

#[test]
fn depth_lines_carry_the_top_levels_and_skip_unchanged_books() {
    let mut f = formatter();
    let bids: Vec<_> = (0..12).map(|i| (100 - i as i64, 10 + i as u64, 1 + i as u32)).collect();
    let first = depth_of(1, T0, bids.clone(), vec![(101, 3, 1)]);
    let mut out = Vec::new();
    assert_eq!(f.depth(std::slice::from_ref(&first), 11, &mut out), Ok(1));
    let line = &text(&out)[0];
    assert!(line.starts_with("depth,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_px_00=100i,bid_sz_00=10i,bid_ct_00=1i,"));
    assert!(line.contains(",bid_px_10=90i,bid_sz_10=20i,bid_ct_10=11i,ask_px_00=101i,"), "{line}");
    assert!(!line.contains("bid_px_11"), "at most 11 levels: {line}");
    assert!(line.ends_with(&format!(",bid_levels=12i,ask_levels=1i,sequence=1i,ts_event={T0}i,ts_recv={}i {T0}", T0 + 5)), "{line}");
    out.clear();
    assert_eq!(f.depth(std::slice::from_ref(&first), 11, &mut out), Ok(0), "an unchanged book is not written again");
    let changed = depth_of(2, T0, vec![], vec![]);
    assert_eq!(f.depth(&[changed], 11, &mut out), Ok(1));
    assert_eq!(text(&out)[0], format!("depth,instrument=CLX5,instrument_id=432669,publisher_id=1 bid_levels=0i,ask_levels=0i,sequence=2i,ts_event={T0}i,ts_recv={}i {}", T0 + 5, T0 + 1));
    let unknown = crate::BookDepth { instrument_id: 9, ..depth_of(3, T0, vec![], vec![]) };
    assert_eq!(f.depth(&[unknown], 1, &mut out), Err(MissingSymbols(vec![9])));
}

#[test]
fn blocks_are_self_describing_gzip_members() {
    use std::io::Read;
    let raw: Vec<u8> = (0..5000).flat_map(|i| format!("m,k=v f={i}i {i}\n").into_bytes()).collect();
    for level in [0, 1, 6, 9] {
        let mut out = vec![0xAA]; // appends after what is already there
        crate::encode_block(&raw, 5000, level, &mut out);
        let block = &out[1..];
        let u32_at = |o: usize| u32::from_le_bytes(block[o..o + 4].try_into().unwrap());
        assert_eq!(&block[..16], &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 16, 0, b'M', b'B', 12, 0]);
        assert_eq!((u32_at(16) as usize, u32_at(20), u32_at(24) as usize), (block.len(), 5000, raw.len()));
        assert_eq!(u32_at(block.len() - 4) as usize, raw.len());
        let mut two = block.to_vec();
        two.extend_from_slice(block);
        let mut inflated = Vec::new();
        flate2::read::MultiGzDecoder::new(&two[..]).read_to_end(&mut inflated).unwrap();
        assert_eq!(inflated.len(), 2 * raw.len());
        assert!(inflated[..raw.len()] == raw[..] && inflated[raw.len()..] == raw[..], "level {level}");
        if level > 0 {
            assert!(block.len() < raw.len() / 2, "level {level} compresses: {} of {}", block.len(), raw.len());
        }
    }
    let mut empty = Vec::new();
    crate::encode_block(b"", 0, 1, &mut empty);
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&empty[..]).read_to_end(&mut inflated).unwrap();
    assert!(inflated.is_empty());
}
