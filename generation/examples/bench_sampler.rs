//! Times one sampling step on a 32000-token vocabulary for a few option sets.
//!
//! `cargo run --release -p corral-generation --example bench_sampler`
//!
//! Prints wall time and, on Linux, the thread's on-CPU time per step (from
//! `/proc/thread-self/schedstat`), which stays meaningful on a busy machine.

use std::time::Instant;

use corral_generation::{Sampler, SamplingOptions};

/// Nanoseconds this thread has run on a CPU, where the kernel tells.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn xorshift(x: &mut u64) -> f32 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x >> 40) as f32 / (1u64 << 24) as f32
}

fn main() {
    let vocab = 32_000usize;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    // Flat: uniform in [-10, 10); the nucleus at top_p 0.9 holds ~3700 tokens (worst case).
    let flat: Vec<f32> = (0..vocab).map(|_| xorshift(&mut x) * 20.0 - 10.0).collect();
    // Peaked, like a language model: a noisy floor and a handful of strong candidates.
    let mut peaked: Vec<f32> = (0..vocab)
        .map(|_| (xorshift(&mut x) + xorshift(&mut x) + xorshift(&mut x)) * 4.0 - 6.0)
        .collect();
    for (i, id) in [17usize, 404, 9000, 31_000, 123].iter().enumerate() {
        peaked[*id] = 16.0 - i as f32;
    }
    let history: Vec<u32> = (0..512u32).map(|i| i * 61 % vocab as u32).collect();
    let d = SamplingOptions::default();
    let cases: [(&str, SamplingOptions); 5] = [
        ("defaults (top_k 40, top_p 0.9)", d.clone()),
        ("greedy", SamplingOptions { temperature: 0.0, ..d.clone() }),
        ("top_k 0, top_p 0.9", SamplingOptions { top_k: 0, ..d.clone() }),
        (
            "top_k 0, top_p 1, min_p 0.05",
            SamplingOptions { top_k: 0, top_p: 1.0, min_p: 0.05, ..d.clone() },
        ),
        ("top_k 0, top_p 1 (full softmax)", SamplingOptions { top_k: 0, top_p: 1.0, ..d }),
    ];
    let iters = 2000;
    for (lname, logits) in [("flat", &flat), ("peaked", &peaked)] {
        for (name, opts) in &cases {
            let opts = SamplingOptions { seed: Some(1), ..opts.clone() };
            let mut s = match Sampler::new(&opts, vocab) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    continue;
                }
            };
            let mut buf = logits.clone();
            let mut sink = 0u64;
            let (start, cpu0) = (Instant::now(), cpu_ns());
            for _ in 0..iters {
                buf.copy_from_slice(logits);
                sink += u64::from(s.sample(&mut buf, &history));
            }
            let wall = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
            let cpu = match (cpu0, cpu_ns()) {
                (Some(a), Some(b)) => format!("{:8.1}", (b - a) as f64 / 1e3 / iters as f64),
                _ => "       ?".into(),
            };
            println!("{lname:6} {name:34} wall {wall:8.1} us  cpu {cpu} us/step  (sum {sink})");
        }
    }
}
