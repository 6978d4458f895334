//! Benchmark: records/s of the synthetic generator (5,000,000 records, 4 instruments, one core).
//!
//! Run with `cargo run --release -p mbostream-synth --example synth_speed`.

use std::time::Instant;

use mbostream_synth::{generate, generate_into, SynthConfig};

const RECORDS: u64 = 5_000_000;

fn main() {
    let cfg = SynthConfig { seed: 1, records: RECORDS, instruments: 4, start_ts: 1_767_225_600_000_000_000 };
    for round in 1..=3 {
        let started = Instant::now();
        let mut bytes = 0usize;
        generate_into(&cfg, 65_536, &mut |chunk: &[u8]| bytes += chunk.len());
        let streamed = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let (_, buffer) = generate(&cfg);
        let buffered = started.elapsed().as_secs_f64();
        assert_eq!(buffer.len(), bytes);
        println!(
            "round {round}: streamed {:.2} M records/s ({streamed:.3} s), into one buffer {:.2} M records/s ({buffered:.3} s)",
            RECORDS as f64 / streamed / 1e6,
            RECORDS as f64 / buffered / 1e6,
        );
    }
}
