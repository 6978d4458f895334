//! The byte layouts of the two fixed-size records the engine reads and writes, as field tables.
//!
//! Another language views a buffer of these records in place (Python builds numpy dtypes) from
//! these tables instead of copying the layout by hand. Each field is `(name, numpy type string,
//! byte offset)`; every type is little-endian, `S1` is one ASCII byte.
use crate::market::EVENT_ROW_SIZE;
use crate::record::MBO_RECORD_SIZE;

/// One field of a record layout: `(name, numpy type string, byte offset)`.
pub type Field = (&'static str, &'static str, usize);

/// The DBN MBO record ([`crate::Mbo`], [`MBO_RECORD_SIZE`] bytes), names as in Databento's `MboMsg`.
pub const MBO_FIELDS: [Field; 15] = [
    ("length", "u1", 0),
    ("rtype", "u1", 1),
    ("publisher_id", "<u2", 2),
    ("instrument_id", "<u4", 4),
    ("ts_event", "<u8", 8),
    ("order_id", "<u8", 16),
    ("price", "<i8", 24),
    ("size", "<u4", 32),
    ("flags", "u1", 36),
    ("channel_id", "u1", 37),
    ("action", "S1", 38),
    ("side", "S1", 39),
    ("ts_recv", "<u8", 40),
    ("ts_in_delta", "<i4", 48),
    ("sequence", "<u4", 52),
];

/// The engine's event row, one per F_LAST ([`crate::EventRow`], [`EVENT_ROW_SIZE`] bytes).
pub const EVENT_ROW_FIELDS: [Field; 13] = [
    ("index", "<u8", 0),
    ("ts_event", "<u8", 8),
    ("ts_recv", "<u8", 16),
    ("bid_price", "<i8", 24),
    ("ask_price", "<i8", 32),
    ("bid_size", "<u8", 40),
    ("ask_size", "<u8", 48),
    ("instrument_id", "<u4", 56),
    ("publisher_id", "<u4", 60),
    ("bid_count", "<u4", 64),
    ("ask_count", "<u4", 68),
    ("sequence", "<u4", 72),
    ("state", "<u4", 76),
];

/// Total size of a layout: where its last field ends (every type string ends with its size).
const fn record_size(fields: &[Field]) -> usize {
    let (_, ty, offset) = fields[fields.len() - 1];
    let bytes = ty.as_bytes();
    offset + (bytes[bytes.len() - 1] - b'0') as usize
}

const _: () = assert!(record_size(&MBO_FIELDS) == MBO_RECORD_SIZE);
const _: () = assert!(record_size(&EVENT_ROW_FIELDS) == EVENT_ROW_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventRow, Mbo};

    fn field_size(ty: &str) -> usize {
        ty[ty.len() - 1..].parse().expect("a type string ends with its size")
    }

    /// A record in which every field holds a distinct value, and that value per field name.
    fn distinct(fields: &[Field], size: usize) -> (Vec<u8>, Vec<(&'static str, u64)>) {
        let mut buf = vec![0u8; size];
        let mut values = Vec::new();
        for (i, &(name, ty, offset)) in fields.iter().enumerate() {
            let n = field_size(ty);
            // Distinct non-zero bytes per field, so a shifted or resized field is caught.
            let bytes: Vec<u8> = (0..n).map(|b| (i * 8 + b + 1) as u8).collect();
            buf[offset..offset + n].copy_from_slice(&bytes);
            let mut word = [0u8; 8];
            word[..n].copy_from_slice(&bytes);
            values.push((name, u64::from_le_bytes(word)));
        }
        (buf, values)
    }

    #[test]
    fn fields_are_contiguous_and_fill_the_record() {
        for (fields, size) in [(&MBO_FIELDS[..], MBO_RECORD_SIZE), (&EVENT_ROW_FIELDS[..], EVENT_ROW_SIZE)] {
            let mut end = 0;
            for &(name, ty, offset) in fields {
                assert_eq!(offset, end, "{name} starts where the previous field ends");
                assert_eq!(offset % field_size(ty), 0, "{name} is aligned");
                end = offset + field_size(ty);
            }
            assert_eq!(end, size);
        }
    }

    #[test]
    fn the_mbo_table_is_what_decode_reads() {
        let (buf, values) = distinct(&MBO_FIELDS, MBO_RECORD_SIZE);
        let m = Mbo::decode(&buf);
        for (name, v) in values {
            let got = match name {
                "length" => buf[0] as u64,
                "rtype" => buf[1] as u64,
                "publisher_id" => m.publisher_id as u64,
                "instrument_id" => m.instrument_id as u64,
                "ts_event" => m.ts_event,
                "order_id" => m.order_id,
                "price" => m.price as u64,
                "size" => m.size as u64,
                "flags" => m.flags as u64,
                "channel_id" => m.channel_id as u64,
                "action" => m.action as u64,
                "side" => m.side as u64,
                "ts_recv" => m.ts_recv,
                "ts_in_delta" => m.ts_in_delta as u32 as u64,
                "sequence" => m.sequence as u64,
                other => panic!("unknown field {other}"),
            };
            assert_eq!(got, v, "{name}");
        }
        let mut encoded = Vec::new();
        m.encode_into(&mut encoded);
        assert_eq!(encoded[2..], buf[2..], "encode writes the same layout (the header bytes are fixed)");
    }

    #[test]
    fn the_event_row_table_is_what_decode_reads() {
        let (buf, values) = distinct(&EVENT_ROW_FIELDS, EVENT_ROW_SIZE);
        let e = EventRow::decode(&buf);
        for (name, v) in values {
            let got = match name {
                "index" => e.index,
                "ts_event" => e.ts_event,
                "ts_recv" => e.ts_recv,
                "bid_price" => e.bid_price as u64,
                "ask_price" => e.ask_price as u64,
                "bid_size" => e.bid_size,
                "ask_size" => e.ask_size,
                "instrument_id" => e.instrument_id as u64,
                "publisher_id" => e.publisher_id as u64,
                "bid_count" => e.bid_count as u64,
                "ask_count" => e.ask_count as u64,
                "sequence" => e.sequence as u64,
                "state" => e.state as u64,
                other => panic!("unknown field {other}"),
            };
            assert_eq!(got, v, "{name}");
        }
    }
}
