//! The model generator's quantizers (`corral_gguf::quant`) against ggml's own, which this
//! crate links through llama-cpp-sys-2: `ggml_quantize_chunk` without an importance
//! matrix (what `llama-quantize` calls when given none) and each type's `to_float`.
//! Every byte, and every bit of every dequantized f32, must agree, on thousands of
//! random rows of many kinds (scales from 1e-8 to 1e12, one-signed, spiky, on the
//! rounding grid) and on edge rows (all zero, constant).
//!
//! The reference is the ggml that corral's llama.cpp plugin runs, built by cargo like the
//! rest of the crate, so the test needs nothing beyond crates.io. ggml's quantizers live
//! in `ggml-base`, which is compiled for plain x86-64 (no FMA contraction) unless the
//! build forces an `-march` on it; the Rust port matches that build.

use corral_gguf::{GgmlType, quant};
use llama_cpp_sys_2 as sys;

/// SplitMix64 with Box-Muller: deterministic rows without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Number of row kinds [`rows`] makes.
const KINDS: usize = 16;

/// `count` rows of `n` values, kind `r % KINDS` for row `r`.
fn rows(n: usize, count: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(n * count);
    for r in 0..count {
        let scale = 10f32.powi(rng.below(14) as i32 - 8);
        for i in 0..n {
            let g = rng.normal();
            v.push(match r % KINDS {
                0 => 0.0,
                1 => 0.25,
                2 => -7.0 * scale,
                3 => g * scale,
                4 => g.abs() * scale,
                5 => -g.abs() * scale,
                6 if i % 37 == 0 => 100.0 * scale,
                6 => g * 0.01 * scale,
                7 => (rng.below(16) as f32 - 8.0) * 0.5,
                8 => (rng.below(64) as f32 - 32.0) * 0.125 * scale,
                9 if rng.below(2) == 0 => 1e-20 * g,
                9 => 1e6 * g,
                10 => g * 1e12,
                11 => g * 1e-18,
                12 if i % 2 == 0 => scale,
                12 => -scale,
                13 => i as f32 * scale,
                14 => g * g * g * scale,
                _ => (rng.uniform() as f32 * 2.0 - 1.0) * scale,
            });
        }
    }
    v
}

fn ggml_quantize(ty: GgmlType, x: &[f32], n: usize) -> Vec<u8> {
    let n_rows = x.len() / n;
    let row_bytes = ty.row_bytes(n as u64).expect("whole blocks") as usize;
    let mut out = vec![0u8; row_bytes * n_rows];
    // SAFETY: `x` holds n_rows × n floats and `out` n_rows rows of `ty`; a null imatrix
    // is allowed for these types.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.as_u32() as sys::ggml_type,
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            n_rows as i64,
            n as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, out.len(), "{ty}: ggml wrote another size");
    out
}

fn ggml_dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: the traits of a valid type are static; `to_float` reads the n values
    // `bytes` encodes and writes n floats to `out`.
    unsafe {
        let traits = sys::ggml_get_type_traits(ty.as_u32() as sys::ggml_type);
        let to_float = (*traits).to_float.expect("ggml dequantizes this type");
        to_float(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    out
}

const TYPES: [GgmlType; 7] = [
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
];

#[test]
fn quantization_is_byte_identical_to_ggml() {
    for (n, count) in [(256usize, 1600usize), (512, 1200), (2048, 300)] {
        for ty in TYPES {
            let x = rows(n, count, (n as u64) << 8 | u64::from(ty.as_u32()));
            let row_bytes = ty.row_bytes(n as u64).expect("whole blocks") as usize;
            let mut ours = vec![0u8; row_bytes * count];
            quant::quantize(ty, &x, &mut ours).expect("quantize");
            let theirs = ggml_quantize(ty, &x, n);
            let differing: Vec<(usize, usize)> = (0..count)
                .filter(|&r| {
                    ours[r * row_bytes..][..row_bytes] != theirs[r * row_bytes..][..row_bytes]
                })
                .map(|r| (r, r % KINDS))
                .collect();
            println!("{ty}: {count} rows of {n}: {} byte-identical", count - differing.len());
            assert!(differing.is_empty(), "{ty}, rows of {n}: (row, kind) differ: {differing:?}");

            let ours_back = quant::dequantize(ty, &ours, x.len()).expect("dequantize");
            let theirs_back = ggml_dequantize(ty, &theirs, x.len());
            let first =
                ours_back.iter().zip(&theirs_back).position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first, None, "{ty}: dequantized value differs at {first:?}");
        }
    }
}

#[test]
fn f16_is_byte_identical_to_ggml() {
    let x = rows(256, 400, 99);
    let mut ours = vec![0u8; x.len() * 2];
    quant::quantize(GgmlType::F16, &x, &mut ours).expect("quantize");
    assert_eq!(ours, ggml_quantize(GgmlType::F16, &x, 256));
}
