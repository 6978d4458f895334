//! Our encoder against a protobuf runtime: random batches encoded by `encode_event_batch`, decoded
//! by prost into a mirror of `StreamEventsResponse`, every column compared; prost's own encoding of
//! the decoded message must be the very same bytes.
use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::Mbo;
use mbostream_wire::{encode_event_batch, EventBatch};
use prost::Message;
use proptest::prelude::*;

/// Mirror of `mbostream.v1.StreamEventsResponse` (proto/mbostream/v1/market_data.proto); the
/// `mirror_matches_the_proto` test holds its fields to the file.
#[derive(Clone, PartialEq, prost::Message)]
struct StreamEventsResponse {
    #[prost(uint64, tag = "1")]
    batch_sequence: u64,
    #[prost(bool, tag = "2")]
    snapshot: bool,
    #[prost(uint64, tag = "3")]
    ts_out: u64,
    #[prost(uint64, repeated, tag = "4")]
    replay_sequence: Vec<u64>,
    #[prost(uint64, repeated, tag = "5")]
    ts_event: Vec<u64>,
    #[prost(uint64, repeated, tag = "6")]
    ts_recv: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    order_id: Vec<u64>,
    #[prost(sint64, repeated, tag = "8")]
    price: Vec<i64>,
    #[prost(uint32, repeated, tag = "9")]
    size: Vec<u32>,
    #[prost(bytes = "vec", tag = "10")]
    action: Vec<u8>,
    #[prost(bytes = "vec", tag = "11")]
    side: Vec<u8>,
    #[prost(bytes = "vec", tag = "12")]
    flags: Vec<u8>,
    #[prost(uint32, repeated, tag = "13")]
    sequence: Vec<u32>,
    #[prost(uint32, repeated, tag = "14")]
    instrument_id: Vec<u32>,
    #[prost(uint32, repeated, tag = "15")]
    publisher_id: Vec<u32>,
    #[prost(string, tag = "16")]
    epoch: String,
}

/// The mirror's fields as the proto declares them: `(type, name, number)`.
const MIRROR_FIELDS: [(&str, &str, u32); 16] = [
    ("uint64", "batch_sequence", 1),
    ("bool", "snapshot", 2),
    ("uint64", "ts_out", 3),
    ("repeated uint64", "replay_sequence", 4),
    ("repeated uint64", "ts_event", 5),
    ("repeated uint64", "ts_recv", 6),
    ("repeated uint64", "order_id", 7),
    ("repeated sint64", "price", 8),
    ("repeated uint32", "size", 9),
    ("bytes", "action", 10),
    ("bytes", "side", 11),
    ("bytes", "flags", 12),
    ("repeated uint32", "sequence", 13),
    ("repeated uint32", "instrument_id", 14),
    ("repeated uint32", "publisher_id", 15),
    ("string", "epoch", 16),
];

#[test]
fn mirror_matches_the_proto() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../proto/mbostream/v1/market_data.proto");
    let proto = std::fs::read_to_string(path).expect("the proto file");
    let body = proto
        .split("message StreamEventsResponse {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("StreamEventsResponse in the proto");
    let declared: Vec<(String, String, u32)> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| {
            let (decl, number) = l.trim_end_matches(';').split_once('=').expect("a field line");
            let (ty, name) = decl.trim().rsplit_once(' ').expect("type and name");
            (ty.to_owned(), name.to_owned(), number.trim().parse().expect("a field number"))
        })
        .collect();
    let mirror: Vec<(String, String, u32)> = MIRROR_FIELDS.iter().map(|&(t, n, f)| (t.to_owned(), n.to_owned(), f)).collect();
    assert_eq!(declared, mirror);
}

fn arb_record() -> impl Strategy<Value = Mbo> {
    let ids = (any::<u16>(), any::<u32>(), any::<u64>(), any::<u32>());
    let book = (any::<i64>(), any::<u32>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>());
    let times = (any::<u64>(), any::<u64>(), any::<i32>());
    (ids, book, times).prop_map(
        |((publisher_id, instrument_id, order_id, sequence), (price, size, flags, channel_id, action, side), (ts_event, ts_recv, ts_in_delta))| Mbo {
            publisher_id,
            instrument_id,
            ts_event,
            order_id,
            price,
            size,
            flags,
            channel_id,
            action,
            side,
            ts_recv,
            ts_in_delta,
            sequence,
        },
    )
}

/// The records laid `stride` apart (the bytes between records are noise), as the replay hands them.
fn buffer(records: &[Mbo], stride: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode_into(&mut out);
        out.resize(out.len() + stride - MBO_RECORD_SIZE, 0xA5);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_column_round_trips_through_prost(
        records in prop::collection::vec(arb_record(), 0..64),
        positions_seed in any::<u64>(),
        padding in prop_oneof![Just(0usize), Just(8usize)],
        batch_sequence in any::<u64>(),
        snapshot in any::<bool>(),
        ts_out in any::<u64>(),
        epoch in prop_oneof![Just(String::new()), "[0-9a-f]{16}", ".{0,24}"],
    ) {
        let stride = MBO_RECORD_SIZE + padding;
        let positions: Vec<u64> = (0..records.len() as u64).map(|i| positions_seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
        let position_bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
        let batch = EventBatch { batch_sequence, snapshot, ts_out, epoch: &epoch };

        let bytes = encode_event_batch(&buffer(&records, stride), stride, &position_bytes, &batch).unwrap();
        let decoded = StreamEventsResponse::decode(bytes.as_slice()).unwrap();

        prop_assert_eq!(decoded.batch_sequence, batch_sequence);
        prop_assert_eq!(decoded.snapshot, snapshot);
        prop_assert_eq!(decoded.ts_out, ts_out);
        prop_assert_eq!(&decoded.epoch, &epoch);
        prop_assert_eq!(&decoded.replay_sequence, &positions);
        let column = |f: fn(&Mbo) -> u64| records.iter().map(f).collect::<Vec<u64>>();
        prop_assert_eq!(&decoded.ts_event, &column(|r| r.ts_event));
        prop_assert_eq!(&decoded.ts_recv, &column(|r| r.ts_recv));
        prop_assert_eq!(&decoded.order_id, &column(|r| r.order_id));
        prop_assert_eq!(&decoded.price, &records.iter().map(|r| r.price).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.size, &records.iter().map(|r| r.size).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.action, &records.iter().map(|r| r.action).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.side, &records.iter().map(|r| r.side).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.flags, &records.iter().map(|r| r.flags).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.sequence, &records.iter().map(|r| r.sequence).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.instrument_id, &records.iter().map(|r| r.instrument_id).collect::<Vec<_>>());
        prop_assert_eq!(&decoded.publisher_id, &records.iter().map(|r| r.publisher_id as u32).collect::<Vec<_>>());
        // Same field order, same omitted defaults: the runtime's own bytes are ours.
        prop_assert_eq!(decoded.encode_to_vec(), bytes);
    }
}
