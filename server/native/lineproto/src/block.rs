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
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes before the deflate stream.
pub const BLOCK_HEADER_SIZE: usize = 28;
/// Bytes after it (CRC32 and ISIZE).
const TRAILER_SIZE: usize = 8;
/// Largest uncompressed block: RSIZE is a u32, and InfluxDB reads a body in memory.
pub const MAX_BLOCK_RAW_BYTES: usize = 1 << 30;

/// Appends one block of `raw` (whole lines, `lines` of them) compressed at `level` (0–9) to `out`.
///
/// # Panics
/// When `raw` is larger than [`MAX_BLOCK_RAW_BYTES`] (callers cut blocks far smaller).
pub fn encode_block(raw: &[u8], lines: u32, level: u32, out: &mut Vec<u8>) {
    assert!(raw.len() <= MAX_BLOCK_RAW_BYTES, "a block holds at most 1 GiB");
    let start = out.len();
    out.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff, 16, 0, b'M', b'B', 12, 0]);
    out.extend_from_slice(&[0; 12]); // BSIZE, LINES, RSIZE: filled in below
    let mut deflate = Compress::new(Compression::new(level.min(9)), false);
    // Worst case of deflate: stored blocks, 5 bytes per 64 KiB, plus a little.
    out.reserve(raw.len() + raw.len() / 16_000 * 5 + 64 + TRAILER_SIZE);
    loop {
        let consumed = deflate.total_in() as usize;
        let status = deflate
            .compress_vec(&raw[consumed..], out, FlushCompress::Finish)
            .expect("deflate into a vector cannot fail");
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => out.reserve(64 * 1024),
        }
    }
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let size = (out.len() - start) as u32;
    out[start + 16..start + 20].copy_from_slice(&size.to_le_bytes());
    out[start + 20..start + 24].copy_from_slice(&lines.to_le_bytes());
    out[start + 24..start + 28].copy_from_slice(&(raw.len() as u32).to_le_bytes());
}
