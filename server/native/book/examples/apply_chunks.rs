//! The engine's cost per record as the server pays it: a decoded DBN file applied in chunks (as
//! the paced replay applies them, events completed), optionally with other work between chunks
//! that evicts the caches, as the server's storage, encoding and gRPC work do.
//!
//! cargo run --release --example apply_chunks -- FILE.dbn [CHUNK_RECORDS] [EVICT_KIB] [ROUNDS]
//!
//! Prints the median over ROUNDS of ns per record applied (the apply calls only, not the evicting).
use std::time::Instant;

use mbostream_book::{compact_mbo, Market};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).expect("usage: apply_chunks FILE.dbn [CHUNK_RECORDS] [EVICT_KIB] [ROUNDS]");
    let chunk: usize = args.get(2).map_or(500, |a| a.parse().expect("CHUNK_RECORDS"));
    let evict_kib: usize = args.get(3).map_or(0, |a| a.parse().expect("EVICT_KIB"));
    let rounds: usize = args.get(4).map_or(5, |a| a.parse().expect("ROUNDS"));
    let data = std::fs::read(file).expect("read the file");
    assert!(&data[..3] == b"DBN", "{file}: not an uncompressed DBN file");
    let start = 8 + u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
    let mut records = Vec::new();
    compact_mbo(&data[start..], &mut records).expect("DBN records");
    let total = records.len() / 56;
    let mut evict = vec![0u8; evict_kib * 1024];
    let mut per_record = Vec::new();
    for _ in 0..rounds {
        let mut market = Market::new();
        let mut events = Vec::new();
        let (mut pos, mut busy) = (0usize, 0u128);
        while pos < total {
            let started = Instant::now();
            let end = market.apply_slice(&records, 56, pos, pos + chunk, true, 100_000, &mut events, None).end;
            busy += started.elapsed().as_nanos();
            events.clear();
            for line in evict.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            pos = end;
        }
        std::hint::black_box(&evict);
        per_record.push(busy as f64 / total as f64);
    }
    per_record.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{total} records, chunks of {chunk}, {evict_kib} KiB evicted between chunks: {:.1} ns/record (median of {rounds}; min {:.1}, max {:.1})",
        per_record[rounds / 2],
        per_record[0],
        per_record[rounds - 1]
    );
}
