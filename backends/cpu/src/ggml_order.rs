//! Matrix products in llama.cpp's float order, for the agreement mode
//! ([`match_llama_cpp`]): the same integer sums as the engine's fast kernels, with the
//! float additions in the order and grouping of the ggml CPU kernels that llama.cpp runs on
//! x86 with AVX2 or AVX-512 for the weight types of the common K-quant mixes:
//!
//! - Q5_0, Q8_0 ([`q0_rows`]): `ggml_vec_dot_q5_0_q8_0`/`ggml_vec_dot_q8_0_q8_0` for one
//!   token and llamafile's tinyBLAS for batches, both 8 f32 lanes per output, lane `l`
//!   taking `fma(d_w·d_a, Σ products of bytes 4l..4l+3)` block by block, then
//!   `hsum_float_8`.
//! - Q4_K ([`q4k_rows`]): the repacked kernels ggml uses on AVX2 machines, one fused
//!   multiply-add per super-block for single tokens (`ggml_gemv_q4_K_8x8_q8_K`) and one per
//!   64 values for the tokens of a batch taken in fours (`ggml_gemm_q4_K_8x8_q8_K`, AVX-512
//!   path), the mins in a second accumulator subtracted at the end.
//! - Q6_K ([`q6k_rows`]): `ggml_vec_dot_q6_K_q8_K` (the engine's own Q6_K kernel already
//!   adds in that order) for batches of fewer than 8 tokens, ggml's tiled K-quant matmul
//!   (one exact integer sum per block, times `d_w`, times `d_a` added with one fused
//!   multiply-add) for larger ones.
//!
//! With these, the flash-attention rounding ([`crate::kernels::FaRounding`]), RoPE and the
//! GELU table as ggml's compiler contracts them, and Q8_0/Q8_K activations quantized as
//! ggml does, the engine's logits on Gemma 3 270M Q4_K_M equal llama.cpp's bit for bit
//! (`scripts/compare-dumps.py` shows every stage equal) on an AVX-512 machine. Other weight
//! types keep the engine's own order.

use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;

use crate::kernels::{ActRow, Isa, Q8_0_BYTES, QK, dispatch};
use crate::kquants::{
    KBlock, Q4_K_BYTES, Q5_0_BYTES, Q6_K_BYTES, Q8KRow, QK_K, unpack_q4_k, unpack_q6_k,
};

static MATCH_LLAMA_CPP: AtomicBool = AtomicBool::new(false);

/// Whether matrix products of the types above run in llama.cpp's float order (the
/// `match_llama_cpp` option of the cpu backend, or `CORRAL_CPU_MATCH_LLAMA_CPP=1`). Off by
/// default: the engine's own kernels are faster (they sum each block's integers once for
/// 8 rows) and agree with llama.cpp to float-summation order.
pub fn match_llama_cpp() -> bool {
    MATCH_LLAMA_CPP.load(Ordering::Relaxed)
}

/// Sets [`match_llama_cpp`] for this process (the backend does at initialisation; weights
/// loaded afterwards keep their rows in file order so the row kernels can read them).
pub fn set_match_llama_cpp(on: bool) {
    MATCH_LLAMA_CPP.store(on, Ordering::Relaxed);
}

/// One Q5_0 (`five`) or Q8_0 weight row times `T` Q8_0 activation rows.
pub fn q0_rows<const T: usize>(isa: Isa, five: bool, w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let bytes = if five { Q5_0_BYTES } else { Q8_0_BYTES };
    let nb = w.len() / bytes;
    for r in &a {
        assert!(
            r.qs.len() >= nb * QK && r.d.len() >= nb,
            "activation row shorter than the weight row"
        );
    }
    if five {
        dispatch!(isa, dot_q0_ggml::<T, true>(w, a, nb), q0_portable(true, w, a, nb))
    } else {
        dispatch!(isa, dot_q0_ggml::<T, false>(w, a, nb), q0_portable(false, w, a, nb))
    }
}

/// One Q4_K weight row times `T` Q8_K activation rows; `chunked[t]`: token `t` is one of a
/// batch's fours (ggml's gemm), else a single (its gemv).
pub fn q4k_rows<const T: usize>(
    isa: Isa,
    w: &[u8],
    a: [Q8KRow<'_>; T],
    chunked: [bool; T],
) -> [f32; T] {
    let nb = w.len() / Q4_K_BYTES;
    check_q8k(&a, nb);
    dispatch!(isa, dot_q4_k_ggml::<T>(w, a, nb, chunked), q4k_portable(w, a, nb, chunked))
}

/// One Q6_K weight row times `T` Q8_K activation rows of a batch of `n` tokens (ggml's
/// tiled order from 8 tokens on).
pub fn q6k_rows<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T], n: usize) -> [f32; T] {
    let nb = w.len() / Q6_K_BYTES;
    check_q8k(&a, nb);
    if n >= 8 {
        dispatch!(isa, dot_q6_k_tiled::<T>(w, a, nb), q6k_tiled_portable(w, a, nb))
    } else {
        dispatch!(isa, dot_q6_k::<T>(w, a, nb), q6k_lanes_portable(w, a, nb))
    }
}

fn check_q8k<const T: usize>(a: &[Q8KRow<'_>; T], nb: usize) {
    for r in a {
        assert!(
            r.qs.len() >= nb * QK_K && r.d.len() >= nb && r.bsums.len() >= 16 * nb,
            "activation row shorter than the weight row"
        );
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `hsum_float_8`: the upper half onto the lower, then pairs two apart, then neighbours.
fn hsum8(lanes: [f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|l| lanes[l + 4] + lanes[l]);
    (t[0] + t[2]) + (t[1] + t[3])
}

fn q0_portable<const T: usize>(five: bool, w: &[u8], a: [ActRow<'_>; T], nb: usize) -> [f32; T] {
    let bytes = if five { Q5_0_BYTES } else { Q8_0_BYTES };
    let mut lanes = [[0f32; 8]; T];
    for b in 0..nb {
        let blk = &w[b * bytes..(b + 1) * bytes];
        let dw = f16_at(blk, 0);
        let mut v = [0i32; QK];
        if five {
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            for j in 0..16 {
                let lo = i32::from(blk[6 + j] & 0x0f) | (((qh >> j) & 1) as i32) << 4;
                let hi = i32::from(blk[6 + j] >> 4) | (((qh >> (j + 16)) & 1) as i32) << 4;
                (v[j], v[j + 16]) = (lo - 16, hi - 16);
            }
        } else {
            for (j, x) in v.iter_mut().enumerate() {
                *x = i32::from(blk[2 + j] as i8);
            }
        }
        for (lanes, r) in lanes.iter_mut().zip(&a) {
            let y = &r.qs[b * QK..(b + 1) * QK];
            let d = dw * r.d[b];
            for (l, lane) in lanes.iter_mut().enumerate() {
                let s: i32 = (4 * l..4 * l + 4).map(|i| v[i] * i32::from(y[i])).sum();
                *lane = d.mul_add(s as f32, *lane);
            }
        }
    }
    lanes.map(hsum8)
}

fn q4k_portable<const T: usize>(
    w: &[u8],
    a: [Q8KRow<'_>; T],
    nb: usize,
    chunked: [bool; T],
) -> [f32; T] {
    let (mut acc, mut acc_min) = ([0f32; T], [0f32; T]);
    let mut kb = KBlock::default();
    for b in 0..nb {
        unpack_q4_k(&w[b * Q4_K_BYTES..(b + 1) * Q4_K_BYTES], &mut kb);
        for t in 0..T {
            let y = &a[t].qs[b * QK_K..(b + 1) * QK_K];
            let bs = &a[t].bsums[16 * b..16 * b + 16];
            let (dd, dm) = (kb.d * a[t].d[b], kb.dmin * a[t].d[b]);
            let (mut isum, mut imin) = (0i32, 0i32);
            // 64 values (two sub-blocks, four 16-value groups) at a time.
            for c in 0..4 {
                let (mut s, mut m) = (0i32, 0i32);
                for (g, &bsum) in bs.iter().enumerate().skip(4 * c).take(4) {
                    let dot: i32 =
                        (16 * g..16 * g + 16).map(|e| i32::from(kb.q[e]) * i32::from(y[e])).sum();
                    s += kb.sc[g] * dot;
                    m += kb.mins[g] * i32::from(bsum);
                }
                if chunked[t] {
                    acc[t] = (s as f32).mul_add(dd, acc[t]);
                    acc_min[t] = (m as f32).mul_add(dm, acc_min[t]);
                } else {
                    (isum, imin) = (isum + s, imin + m);
                }
            }
            if !chunked[t] {
                acc[t] = (isum as f32).mul_add(dd, acc[t]);
                acc_min[t] = (imin as f32).mul_add(dm, acc_min[t]);
            }
        }
    }
    std::array::from_fn(|t| acc[t] - acc_min[t])
}

/// `ggml_vec_dot_q6_K_q8_K` (AVX2): lane `l` the scaled products of bytes `4l..4l+3` of
/// each 32-value chunk, less `32·(sc[2l]·bsum[2l] + sc[2l+1]·bsum[2l+1])`.
fn q6k_lanes_portable<const T: usize>(w: &[u8], a: [Q8KRow<'_>; T], nb: usize) -> [f32; T] {
    let mut lanes = [[0f32; 8]; T];
    let mut kb = KBlock::default();
    for b in 0..nb {
        // `kb.q` holds the values less 32; ggml's lanes take them unsigned.
        unpack_q6_k(&w[b * Q6_K_BYTES..(b + 1) * Q6_K_BYTES], &mut kb);
        for (lanes, r) in lanes.iter_mut().zip(&a) {
            let y = &r.qs[b * QK_K..(b + 1) * QK_K];
            let bs = &r.bsums[16 * b..16 * b + 16];
            let d = r.d[b] * kb.d;
            for (l, lane) in lanes.iter_mut().enumerate() {
                let mut s: i32 = (0..8)
                    .flat_map(|k| (4 * l..4 * l + 4).map(move |i| 32 * k + i))
                    .map(|e| kb.sc[e / 16] * (i32::from(kb.q[e]) + 32) * i32::from(y[e]))
                    .sum();
                s -= 32
                    * (i32::from(bs[2 * l]) * kb.sc[2 * l]
                        + i32::from(bs[2 * l + 1]) * kb.sc[2 * l + 1]);
                *lane = d.mul_add(s as f32, *lane);
            }
        }
    }
    lanes.map(hsum8)
}

fn q6k_tiled_portable<const T: usize>(w: &[u8], a: [Q8KRow<'_>; T], nb: usize) -> [f32; T] {
    let mut out = [0f32; T];
    let mut kb = KBlock::default();
    for b in 0..nb {
        unpack_q6_k(&w[b * Q6_K_BYTES..(b + 1) * Q6_K_BYTES], &mut kb);
        for (o, r) in out.iter_mut().zip(&a) {
            let y = &r.qs[b * QK_K..(b + 1) * QK_K];
            let s1: i32 = (0..16)
                .map(|g| {
                    let raw: i32 =
                        (16 * g..16 * g + 16).map(|e| i32::from(kb.q[e]) * i32::from(y[e])).sum();
                    kb.sc[g] * raw
                })
                .sum();
            *o = (s1 as f32 * kb.d).mul_add(r.d[b], *o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Q8Rows, quantize_row_q8_0};
    use crate::kquants::{Q8KRows, quantize_row_q8_k};
    use corral_gguf::types::GgmlType;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn quantized(ty: GgmlType, seed: &mut u64, k: usize) -> Vec<u8> {
        let w: Vec<f32> = (0..k).map(|_| lcg(seed) * 0.2).collect();
        let bytes = ty.row_bytes(k as u64).expect("a whole row") as usize;
        let mut out = vec![0u8; bytes];
        corral_gguf::quant::quantize(ty, &w, &mut out).expect("quantize");
        out
    }

    /// Every SIMD level gives the portable code's results bit for bit: the same integers
    /// and the same float operations in the same order.
    #[test]
    fn every_level_sums_in_the_same_order() {
        let mut seed = 31;
        let k = 4 * QK_K;
        let mut q8 = Q8Rows::default();
        q8.resize(4, k);
        let mut q8k = Q8KRows::default();
        q8k.resize(4, k);
        for t in 0..4 {
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed) * (t + 1) as f32).collect();
            let r = t * k..(t + 1) * k;
            let (b, bk) = (t * k / QK..(t + 1) * k / QK, t * k / QK_K..(t + 1) * k / QK_K);
            quantize_row_q8_0(
                &x,
                &mut q8.qs[r.clone()],
                &mut q8.d[b.clone()],
                &mut q8.s[b.clone()],
                &mut q8.c[b],
            );
            let bs = t * k / 16..(t + 1) * k / 16;
            quantize_row_q8_k(&x, &mut q8k.qs[r], &mut q8k.d[bk], &mut q8k.bsums[bs]);
        }
        let a4 = [q8.row(0), q8.row(1), q8.row(2), q8.row(3)];
        let k4 = [q8k.row(0), q8k.row(1), q8k.row(2), q8k.row(3)];
        let q5 = quantized(GgmlType::Q5_0, &mut seed, k);
        let q80 = quantized(GgmlType::Q8_0, &mut seed, k);
        let q4k = quantized(GgmlType::Q4_K, &mut seed, k);
        let q6k = quantized(GgmlType::Q6_K, &mut seed, k);
        for isa in Isa::available() {
            let p = Isa::Portable;
            assert_eq!(q0_rows(isa, true, &q5, a4), q0_rows(p, true, &q5, a4), "{isa:?}");
            assert_eq!(q0_rows(isa, false, &q80, a4), q0_rows(p, false, &q80, a4), "{isa:?}");
            for chunked in [[true; 4], [false; 4], [true, false, true, false]] {
                let (got, want) =
                    (q4k_rows(isa, &q4k, k4, chunked), q4k_rows(p, &q4k, k4, chunked));
                assert_eq!(got, want, "{isa:?} {chunked:?}");
            }
            for n in [1, 8] {
                assert_eq!(q6k_rows(isa, &q6k, k4, n), q6k_rows(p, &q6k, k4, n), "{isa:?} {n}");
            }
        }
    }

    /// The interleaved Q4_K kernels the agreement mode keeps (weights repacked at load) give
    /// `q4k_rows`'s results bit for bit: tokens in fours in ggml's gemm order (`C`), single
    /// tokens in its gemv order (the fast path's own), at every level; 3 groups of 8 rows,
    /// so the AVX-512 level's pairs and its odd group are both covered.
    #[test]
    fn interleaved_q4_k_in_ggml_order_equals_the_row_kernels() {
        use crate::kquants::{Q4K_GROUP, Q4K_X8_BYTES, gemm_q4_k_x8_groups, repack_q4_k_x8};
        let mut seed = 77;
        let k = 3 * QK_K;
        let nb = k / QK_K;
        let mut q8k = Q8KRows::default();
        q8k.resize(4, k);
        for t in 0..4 {
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed) * (t + 1) as f32).collect();
            let (r, bk) = (t * k..(t + 1) * k, t * nb..(t + 1) * nb);
            let bs = t * k / 16..(t + 1) * k / 16;
            quantize_row_q8_k(&x, &mut q8k.qs[r], &mut q8k.d[bk], &mut q8k.bsums[bs]);
        }
        let k4 = [q8k.row(0), q8k.row(1), q8k.row(2), q8k.row(3)];
        let rows: Vec<Vec<u8>> =
            (0..3 * Q4K_GROUP).map(|_| quantized(GgmlType::Q4_K, &mut seed, k)).collect();
        let mut packed = vec![0u8; 3 * nb * Q4K_X8_BYTES];
        for (g, chunk) in packed.chunks_mut(nb * Q4K_X8_BYTES).enumerate() {
            let group: [&[u8]; Q4K_GROUP] = std::array::from_fn(|r| &rows[8 * g + r][..]);
            repack_q4_k_x8(group, nb, chunk);
        }
        for isa in Isa::available() {
            let mut four = vec![[[0f32; Q4K_GROUP]; 4]; 3];
            gemm_q4_k_x8_groups::<4, true>(isa, &packed, k4, &mut four);
            let mut one = vec![[[0f32; Q4K_GROUP]; 1]; 3];
            gemm_q4_k_x8_groups::<1, false>(isa, &packed, [k4[2]], &mut one);
            for (i, row) in rows.iter().enumerate() {
                let (g, r) = (i / Q4K_GROUP, i % Q4K_GROUP);
                let want4 = q4k_rows(Isa::Portable, row, k4, [true; 4]);
                let got4: [f32; 4] = std::array::from_fn(|t| four[g][t][r]);
                assert_eq!(got4.map(f32::to_bits), want4.map(f32::to_bits), "{isa:?} row {i}");
                let want1 = q4k_rows(Isa::Portable, row, [k4[2]], [false]);
                assert_eq!(one[g][0][r].to_bits(), want1[0].to_bits(), "{isa:?} row {i}, one");
            }
        }
    }
}
