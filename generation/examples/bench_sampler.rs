//! Times one sampling step on a 32000-token vocabulary for a few option sets.
//!
//! `cargo run --release -p corral-generation --example bench_sampler`

use std::time::Instant;

use corral_generation::{Sampler, SamplingOptions};

fn main() {
    let vocab = 32_000usize;
    // Deterministic pseudo-random logits in [-10, 10).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let logits: Vec<f32> = (0..vocab)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
        })
        .collect();
    let history: Vec<u32> = (0..512u32).map(|i| i * 61 % vocab as u32).collect();
    let cases: [(&str, SamplingOptions); 5] = [
        ("ollama defaults (top_k 40, top_p 0.9)", SamplingOptions::default()),
        ("greedy", SamplingOptions { temperature: 0.0, ..Default::default() }),
        ("top_k 0, top_p 0.9", SamplingOptions { top_k: 0, ..Default::default() }),
        (
            "top_k 0, top_p 1, min_p 0.05",
            SamplingOptions { top_k: 0, top_p: 1.0, min_p: 0.05, ..Default::default() },
        ),
        (
            "top_k 0, top_p 1 (full softmax)",
            SamplingOptions { top_k: 0, top_p: 1.0, ..Default::default() },
        ),
    ];
    let iters = 2000;
    for (name, mut opts) in cases {
        opts.seed = Some(1);
        let mut s = match Sampler::new(&opts, vocab) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        let mut buf = logits.clone();
        let mut sink = 0u64;
        let start = Instant::now();
        for _ in 0..iters {
            buf.copy_from_slice(&logits);
            sink += u64::from(s.sample(&mut buf, &history));
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
        println!("{name:40} {per:8.1} us/step (checksum {sink})");
    }
}
