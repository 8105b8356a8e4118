//! Shared helpers for ferry's benchmarks: the deterministic mixed-content
//! data that every stage and end-to-end measurement uses, plus the stage
//! ceilings and process measurements of the end-to-end harness (`src/bin/e2e/`),
//! and the UDP delay line of the WAN benchmark (`src/bin/ferry-udp-proxy.rs`).

pub mod ceilings;
pub mod delay_line;
pub mod measure;
pub mod sys;

use rand::{Rng, RngCore, SeedableRng};

/// `count` chunks of `size` bytes: 50 % random, 25 % zero, 25 % log-like text.
pub fn mixed_chunks(count: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut chunk = vec![0u8; size];
            match rng.gen_range(0..4) {
                0 | 1 => rng.fill_bytes(&mut chunk),
                2 => {}
                _ => {
                    let mut pos = 0;
                    while pos < size {
                        let line = format!(
                            "2026-11-22T00:00:{:02} INFO osd.{} pg 2.{:x} scrub ok objects {}\n",
                            rng.gen_range(0..60),
                            rng.gen_range(0..12),
                            rng.gen_range(0..256),
                            rng.gen_range(0..100_000)
                        );
                        let n = line.len().min(size - pos);
                        chunk[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
                        pos += n;
                    }
                }
            }
            chunk
        })
        .collect()
}
