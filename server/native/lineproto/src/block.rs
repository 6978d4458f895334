//! Gzip blocks: the unit in which line protocol is spooled and sent to InfluxDB.
//!
//! A block is one gzip member (RFC 1952) holding whole lines, with one extra subfield that makes
//! it self-describing (as BGZF's `BSIZE` does), so the spool can walk, cut and read whole blocks
//! without inflating them. Concatenated blocks are a valid multi-member gzip stream: `zcat` reads
//! a spool segment, and InfluxDB reads several blocks sent as one `Content-Encoding: gzip` body.
//!
//! ```text
//! 0   1f 8b 08 04      ID1 ID2, CM = deflate, FLG = FEXTRA
//! 4   00 00 00 00      MTIME = 0
//! 8   00 ff            XFL, OS = unknown
//! 10  10 00            XLEN = 16
//! 12  'M' 'B' 0c 00    subfield id, LEN = 12
//! 16  u32 BSIZE        size of the whole member in bytes
//! 20  u32 LINES        lines (points) in the member
//! 24  u32 RSIZE        uncompressed size in bytes
//! 28  raw deflate stream
//!     u32 CRC32, u32 ISIZE (= RSIZE)
//! ```
//! All integers little-endian. `mbostream.storage.blocks` is the Python reader (and writer) of the
//! same format.
use libdeflater::{crc32, CompressionLvl, Compressor};

/// Bytes before the deflate stream.
pub const BLOCK_HEADER_SIZE: usize = 28;
/// Largest uncompressed block: RSIZE is a u32, and InfluxDB reads a body in memory.
pub const MAX_BLOCK_RAW_BYTES: usize = 1 << 30;

/// Compresses blocks; keeps the compressor's state (a few hundred KB) between blocks.
pub struct BlockEncoder {
    compressor: Compressor,
}

impl BlockEncoder {
    /// An encoder at `level` 0 (stored) to 9 (higher levels act as 9).
    pub fn new(level: u32) -> Self {
        let level = CompressionLvl::new(level.min(9) as i32).expect("0..=9 is a libdeflate level");
        BlockEncoder { compressor: Compressor::new(level) }
    }

    /// Appends one block of `raw` (whole lines, `lines` of them) to `out`.
    ///
    /// # Panics
    /// When `raw` is larger than [`MAX_BLOCK_RAW_BYTES`] (callers cut blocks far smaller).
    pub fn encode(&mut self, raw: &[u8], lines: u32, out: &mut Vec<u8>) {
        assert!(raw.len() <= MAX_BLOCK_RAW_BYTES, "a block holds at most 1 GiB");
        let start = out.len();
        out.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff, 16, 0, b'M', b'B', 12, 0]);
        out.extend_from_slice(&[0; 12]); // BSIZE, LINES, RSIZE: filled in below
        let data = out.len();
        let bound = self.compressor.deflate_compress_bound(raw.len());
        out.resize(data + bound, 0);
        let written = self
            .compressor
            .deflate_compress(raw, &mut out[data..])
            .expect("the output holds the compressor's bound");
        out.truncate(data + written);
        out.extend_from_slice(&crc32(raw).to_le_bytes());
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let size = (out.len() - start) as u32;
        out[start + 16..start + 20].copy_from_slice(&size.to_le_bytes());
        out[start + 20..start + 24].copy_from_slice(&lines.to_le_bytes());
        out[start + 24..start + 28].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    }
}

/// Appends one block of `raw` (whole lines, `lines` of them) compressed at `level` (0–9) to `out`.
pub fn encode_block(raw: &[u8], lines: u32, level: u32, out: &mut Vec<u8>) {
    BlockEncoder::new(level).encode(raw, lines, out);
}
