//! The `StreamEventsResponse` encoder: batch header fields, then one packed column per record field.
use std::fmt;

use mbostream_book::record::MBO_RECORD_SIZE;
use mbostream_book::Mbo;

pub(crate) const WIRE_VARINT: u32 = 0;
pub(crate) const WIRE_LEN: u32 = 2;

/// The batch-level fields of one `StreamEventsResponse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBatch<'a> {
    /// Replay position of the batch's last record (field 1).
    pub batch_sequence: u64,
    /// Snapshot records rather than live ones (field 2).
    pub snapshot: bool,
    /// Publication time, ns since the UNIX epoch (field 3).
    pub ts_out: u64,
    /// Identity of the server run (field 16; omitted when empty).
    pub epoch: &'a str,
}

/// Inputs that do not make a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Records are closer together than one MBO record.
    StrideTooSmall { stride: usize },
    /// The replay positions are not one little-endian u64 per record.
    PositionsMismatch { records: usize, positions: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::StrideTooSmall { .. } => write!(f, "stride below the MBO record size"),
            WireError::PositionsMismatch { records, positions } => {
                write!(f, "{records} records but {positions} replay positions")
            }
        }
    }
}

impl std::error::Error for WireError {}

#[inline]
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub(crate) fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, ((field << 3) | wire) as u64);
}

fn packed(out: &mut Vec<u8>, field: u32, values: impl Iterator<Item = u64>, scratch: &mut Vec<u8>) {
    scratch.clear();
    for v in values {
        varint(scratch, v);
    }
    if scratch.is_empty() {
        return;
    }
    tag(out, field, WIRE_LEN);
    varint(out, scratch.len() as u64);
    out.extend_from_slice(scratch);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, values: impl Iterator<Item = u8>, n: usize) {
    if n == 0 {
        return;
    }
    tag(out, field, WIRE_LEN);
    varint(out, n as u64);
    out.extend(values);
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Encodes records (56-byte MBO layout, `stride` apart) and their replay positions (one
/// little-endian u64 per record) as a serialized `StreamEventsResponse`.
///
/// Fields at their proto3 default are omitted, as a protobuf runtime would.
pub fn encode_event_batch(records: &[u8], stride: usize, replay_sequence: &[u8], batch: &EventBatch<'_>) -> Result<Vec<u8>, WireError> {
    if stride < MBO_RECORD_SIZE {
        return Err(WireError::StrideTooSmall { stride });
    }
    let n = records.len() / stride;
    if replay_sequence.len() != n * 8 {
        return Err(WireError::PositionsMismatch { records: n, positions: replay_sequence.len() / 8 });
    }
    let recs: Vec<Mbo> = (0..n).map(|i| Mbo::decode(&records[i * stride..])).collect();
    let mut out = Vec::with_capacity(32 + batch.epoch.len() + n * 48);
    let mut scratch = Vec::with_capacity(n * 10);
    if batch.batch_sequence != 0 {
        tag(&mut out, 1, WIRE_VARINT);
        varint(&mut out, batch.batch_sequence);
    }
    if batch.snapshot {
        tag(&mut out, 2, WIRE_VARINT);
        varint(&mut out, 1);
    }
    if batch.ts_out != 0 {
        tag(&mut out, 3, WIRE_VARINT);
        varint(&mut out, batch.ts_out);
    }
    let seq_at = |i: usize| u64::from_le_bytes(replay_sequence[i * 8..i * 8 + 8].try_into().unwrap());
    packed(&mut out, 4, (0..n).map(seq_at), &mut scratch);
    packed(&mut out, 5, recs.iter().map(|r| r.ts_event), &mut scratch);
    packed(&mut out, 6, recs.iter().map(|r| r.ts_recv), &mut scratch);
    packed(&mut out, 7, recs.iter().map(|r| r.order_id), &mut scratch);
    packed(&mut out, 8, recs.iter().map(|r| zigzag(r.price)), &mut scratch);
    packed(&mut out, 9, recs.iter().map(|r| r.size as u64), &mut scratch);
    bytes_field(&mut out, 10, recs.iter().map(|r| r.action), n);
    bytes_field(&mut out, 11, recs.iter().map(|r| r.side), n);
    bytes_field(&mut out, 12, recs.iter().map(|r| r.flags), n);
    packed(&mut out, 13, recs.iter().map(|r| r.sequence as u64), &mut scratch);
    packed(&mut out, 14, recs.iter().map(|r| r.instrument_id as u64), &mut scratch);
    packed(&mut out, 15, recs.iter().map(|r| r.publisher_id as u64), &mut scratch);
    if !batch.epoch.is_empty() {
        tag(&mut out, 16, WIRE_LEN);
        varint(&mut out, batch.epoch.len() as u64);
        out.extend_from_slice(batch.epoch.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_match_the_protobuf_spec() {
        let cases: [(u64, &[u8]); 5] = [(0, &[0]), (1, &[1]), (127, &[0x7f]), (128, &[0x80, 1]), (300, &[0xac, 0x02])];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
        assert_eq!([zigzag(0), zigzag(-1), zigzag(1), zigzag(-2)], [0, 1, 2, 3]);
        assert_eq!(zigzag(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
    }

    #[test]
    fn an_empty_default_batch_is_an_empty_message() {
        assert_eq!(encode_event_batch(&[], MBO_RECORD_SIZE, &[], &EventBatch::default()), Ok(Vec::new()));
    }

    #[test]
    fn inputs_that_make_no_batch_are_errors() {
        let err = encode_event_batch(&[0; 112], 40, &[0; 16], &EventBatch::default()).unwrap_err();
        assert_eq!(err.to_string(), "stride below the MBO record size");
        let err = encode_event_batch(&[0; 112], MBO_RECORD_SIZE, &[0; 8], &EventBatch::default()).unwrap_err();
        assert_eq!(err, WireError::PositionsMismatch { records: 2, positions: 1 });
        assert_eq!(err.to_string(), "2 records but 1 replay positions");
    }
}
