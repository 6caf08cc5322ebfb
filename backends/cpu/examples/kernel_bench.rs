//! `kernel-bench`: throughput of the matmul kernels on random weights, n tokens at a time.
//!
//! ```text
//! kernel-bench [TYPE q4_0|q8_0|f16|q5_0|q5_1|q2_k..q6_k] [ROWS 5632] [COLS 2048] [N 1] [THREADS 1] [REPS 50] [file|copy]
//! ```
//! Prints the best time per multiplication, the weight bytes per second and the integer
//! multiply-adds per second.

use corral_backend_cpu::weights::{Prepared, WType, Weight, matmul};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let ty = match arg(0, "q4_0").as_str() {
        "q8_0" => WType::Q8_0,
        "f16" => WType::F16,
        "q5_0" => WType::Q5_0,
        "q5_1" => WType::Q5_1,
        "q2_k" => WType::Q2_K,
        "q3_k" => WType::Q3_K,
        "q4_k" => WType::Q4_K,
        "q5_k" => WType::Q5_K,
        "q6_k" => WType::Q6_K,
        _ => WType::Q4_0,
    };
    let rows: usize = arg(1, "5632").parse().unwrap_or(5632);
    let cols: usize = arg(2, "2048").parse().unwrap_or(2048);
    let n: usize = arg(3, "1").parse().unwrap_or(1);
    let threads: usize = arg(4, "1").parse().unwrap_or(1);
    let reps: usize = arg(5, "50").parse().unwrap_or(50);
    let row_bytes = ty.row_bytes(cols);
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let mut map = vec![0u8; rows * row_bytes];
    for (i, b) in map.iter_mut().enumerate() {
        // Small f16 scales at each block start keep the sums finite.
        *b = if ty != WType::F16 && i % (row_bytes / (cols / 32)).max(1) == 1 {
            0x20
        } else {
            rnd() as u8
        };
    }
    let mut w = Weight::in_file(ty, rows, cols, 0);
    if arg(6, "file") == "copy" && !w.copy_to_memory(&map) {
        eprintln!("cannot copy the weight; timing it in place");
    }
    let x: Vec<f32> = (0..n * cols).map(|_| (rnd() % 1000) as f32 / 500.0 - 1.0).collect();
    let mut y = vec![0f32; n * rows];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let mut prep = Prepared::default();
    let mut best = f64::MAX;
    pool.install(|| {
        prep.prepare(ty, &x, n, cols);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            matmul(&map, &w, &prep, &mut y);
            best = best.min(t.elapsed().as_secs_f64());
        }
    });
    println!(
        "{ty:?} {rows}x{cols} n={n} threads={threads}: best {:.3} ms, {:.1} GB/s of weights, {:.1} G MAC/s",
        best * 1e3,
        (rows * row_bytes) as f64 / best / 1e9,
        (rows * cols * n) as f64 / best / 1e9
    );
}
