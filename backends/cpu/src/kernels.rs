//! Dot-product kernels: quantized weight rows against Q8_0-quantized activations, F16 and
//! F32 rows against F32 activations, and the F16 KV-cache helpers of attention.
//!
//! The SIMD level is chosen at compile time (`-C target-cpu=...`, one plugin variant per
//! x86-64 level, see `build-variant.sh`): AVX-512 VNNI (`vpdpbusd`), AVX2+FMA+F16C
//! (`vpmaddubsw`), or portable scalar code. Every path computes the same integer block
//! sums, so they differ only in float summation order.
//!
//! The quantized path is llama.cpp's: activations are quantized per block of 32 to Q8_0
//! (an f16 scale and 32 signed bytes), each block's integer dot product is exact, and
//! blocks are combined in f32 with the product of the two scales.

use half::f16;

/// Elements per quantization block (Q4_0, Q8_0).
pub const QK: usize = 32;
/// Bytes of a Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;
/// Bytes of a Q8_0 block: an f16 scale and 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;

/// Rows of activations quantized to Q8_0, struct-of-arrays: row `t` holds
/// `qs[t*k..(t+1)*k]`, scales `d[t*k/32..]` and `s[t*k/32..]` (`d * Σ qs` of each block,
/// which the Q4_0 kernel uses to fold in the weights' offset of 8).
#[derive(Default)]
pub struct Q8Rows {
    /// Quantized values.
    pub qs: Vec<i8>,
    /// Block scales (the f16 scale, widened).
    pub d: Vec<f32>,
    /// Block scale times the block's sum of values.
    pub s: Vec<f32>,
    /// `-8 ×` the block's sum of values: the start value of a Q4_0 block's integer dot
    /// product with unsigned nibbles, which folds in Q4_0's offset of 8 exactly.
    pub c: Vec<i32>,
    /// Row length.
    pub k: usize,
}

impl Q8Rows {
    /// Resizes for `n` rows of `k` (a multiple of 32) elements.
    pub fn resize(&mut self, n: usize, k: usize) {
        self.k = k;
        self.qs.resize(n * k, 0);
        self.d.resize(n * k / QK, 0.0);
        self.s.resize(n * k / QK, 0.0);
        self.c.resize(n * k / QK, 0);
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> ActRow<'_> {
        let nb = self.k / QK;
        ActRow {
            qs: &self.qs[t * self.k..(t + 1) * self.k],
            d: &self.d[t * nb..(t + 1) * nb],
            s: &self.s[t * nb..(t + 1) * nb],
            c: &self.c[t * nb..(t + 1) * nb],
        }
    }
}

/// One row of Q8_0 activations (see [`Q8Rows`]).
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    /// Values.
    pub qs: &'a [i8],
    /// Block scales.
    pub d: &'a [f32],
    /// Scale times sum per block.
    pub s: &'a [f32],
    /// `-8 ×` sum per block.
    pub c: &'a [i32],
}

/// Quantizes one row (`x.len()` a multiple of 32) to Q8_0 the way ggml's AVX2 code does:
/// scale `max|x| / 127` rounded to f16, values `round_half_even(x * 127 / max|x|)`.
pub fn quantize_row_q8_0(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let q = &mut qs[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for (o, v) in q.iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i32;
            *o = r as i8;
            sum += r;
        }
        d[b] = db;
        s[b] = db * sum as f32;
        c[b] = -8 * sum;
    }
}

#[inline]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dot products of one Q4_0 weight row with `T` Q8_0 activation rows.
#[inline]
pub fn dot_q4_0<const T: usize>(w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = a[0].d.len();
    debug_assert!(w.len() >= nb * Q4_0_BYTES);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the target features this module needs are enabled at compile time, and
        // every row holds `nb` whole blocks (checked by the callers' shapes; debug-asserted).
        unsafe { simd::dot_q4_0::<T>(w, a, nb) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        let mut out = [0f32; T];
        for b in 0..nb {
            let blk = &w[b * Q4_0_BYTES..(b + 1) * Q4_0_BYTES];
            let dw = f16_at(blk, 0);
            for (t, r) in a.iter().enumerate() {
                let (q, d) = (&r.qs[b * QK..(b + 1) * QK], r.d);
                let mut sum = 0i32;
                for j in 0..16 {
                    let lo = (blk[2 + j] & 0x0f) as i32 - 8;
                    let hi = (blk[2 + j] >> 4) as i32 - 8;
                    sum += lo * q[j] as i32 + hi * q[j + 16] as i32;
                }
                out[t] += sum as f32 * (dw * d[b]);
            }
        }
        out
    }
}

/// Dot products of one Q8_0 weight row with `T` Q8_0 activation rows.
#[inline]
pub fn dot_q8_0<const T: usize>(w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = a[0].d.len();
    debug_assert!(w.len() >= nb * Q8_0_BYTES);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: as in `dot_q4_0`.
        unsafe { simd::dot_q8_0::<T>(w, a, nb) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        let mut out = [0f32; T];
        for b in 0..nb {
            let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
            let dw = f16_at(blk, 0);
            for (t, r) in a.iter().enumerate() {
                let (q, d) = (&r.qs[b * QK..(b + 1) * QK], r.d);
                let mut sum = 0i32;
                for j in 0..QK {
                    sum += (blk[2 + j] as i8) as i32 * q[j] as i32;
                }
                out[t] += sum as f32 * (dw * d[b]);
            }
        }
        out
    }
}

/// Dot product of an F16 weight row (raw little-endian bytes) with an F32 row.
#[inline]
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() >= x.len() * 2);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: features enabled at compile time; `w` holds `x.len()` halves.
        unsafe { simd::dot_f16_bytes(w.as_ptr(), x) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        x.iter().enumerate().map(|(i, v)| f16_at(w, 2 * i) * v).sum()
    }
}

/// Dot product of an F32 weight row (raw little-endian bytes) with an F32 row.
#[inline]
pub fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() >= x.len() * 4);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: features enabled at compile time; `w` holds `x.len()` floats (unaligned
        // loads).
        unsafe { simd::dot_f32_ptr(w.as_ptr().cast(), x) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]) * v
            })
            .sum()
    }
}

/// `q · k` for an F32 query and an F16 key (attention scores).
#[inline]
pub fn dot_f32_f16(q: &[f32], k: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), k.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: features enabled at compile time; f16 is a transparent u16, `k` has
        // `q.len()` elements.
        unsafe { simd::dot_f16_bytes(k.as_ptr().cast(), q) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    }
}

/// `out += p * v` for an F16 value row (attention output).
#[inline]
pub fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    debug_assert_eq!(out.len(), v.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: features enabled at compile time; lengths equal.
        unsafe { simd::axpy_f16(out, p, v.as_ptr().cast()) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x.to_f32();
        }
    }
}

/// `acc = f16(f16(acc * ms) + p * v)` element-wise: one step of llama.cpp's CPU flash
/// attention with an F16 accumulator (`ms` is 1 when the running maximum did not move).
/// The rounding to f16 after each step is llama.cpp's; keeping it makes this engine's
/// attention agree with llama.cpp's to float-summation order.
#[inline]
pub fn fa_step_f16(acc: &mut [f32], ms: f32, p: f32, v: &[f16]) {
    debug_assert_eq!(acc.len(), v.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: features enabled at compile time; lengths equal.
        unsafe { simd::fa_step_f16(acc, ms, p, v.as_ptr().cast()) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        for (a, x) in acc.iter_mut().zip(v) {
            let scaled = if ms != 1.0 { f16::from_f32(*a * ms).to_f32() } else { *a };
            *a = f16::from_f32(x.to_f32().mul_add(p, scaled)).to_f32();
        }
    }
}

/// Rounds every element to the nearest f16 value (as ggml converts a row for F16 dots).
pub fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// Dequantizes one row of `ty`'s raw bytes into `out`.
pub fn dequantize_row(ty: crate::weights::WType, w: &[u8], out: &mut [f32]) {
    use crate::weights::WType;
    match ty {
        WType::F32 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
            }
        }
        WType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_at(w, 2 * i);
            }
        }
        WType::Q8_0 => {
            for (b, ob) in out.chunks_exact_mut(QK).enumerate() {
                let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                let d = f16_at(blk, 0);
                for (j, o) in ob.iter_mut().enumerate() {
                    *o = (blk[2 + j] as i8) as f32 * d;
                }
            }
        }
        WType::Q4_0 => {
            for (b, ob) in out.chunks_exact_mut(QK).enumerate() {
                let blk = &w[b * Q4_0_BYTES..(b + 1) * Q4_0_BYTES];
                let d = f16_at(blk, 0);
                for j in 0..16 {
                    ob[j] = ((blk[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    ob[j + 16] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WType::BF16 => crate::kquants::dequantize_bf16(w, out),
        WType::Q5_0 => crate::kquants::dequantize_q5_0(w, out),
        WType::Q5_1 => crate::kquants::dequantize_q5_1(w, out),
        WType::Q2_K => crate::kquants::dequantize_q2_k(w, out),
        WType::Q3_K => crate::kquants::dequantize_q3_k(w, out),
        WType::Q4_K => crate::kquants::dequantize_q4_k(w, out),
        WType::Q5_K => crate::kquants::dequantize_q5_k(w, out),
        WType::Q6_K => crate::kquants::dequantize_q6_k(w, out),
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
// SAFETY (for the whole module): every function here is called only through the safe
// wrappers above, which are compiled only when the target features used are enabled, and
// pass slices holding the number of blocks or elements each loop reads.
#[allow(unsafe_op_in_unsafe_fn)]
mod simd {
    use std::arch::x86_64::*;

    use super::{ActRow, Q4_0_BYTES, Q8_0_BYTES, QK};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `acc` plus unsigned bytes `u` times signed bytes `s`, summed in groups of four
    /// into 8 i32 lanes.
    #[inline(always)]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        {
            _mm256_dpbusd_epi32(acc, u, s)
        }
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        {
            // |u * s| pairs stay below 2 * 128 * 127 (Q4_0: u <= 15; Q8_0 folded to
            // |w| <= 128 and |a| <= 127): no i16 saturation.
            _mm256_add_epi32(
                acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
            )
        }
    }

    #[inline(always)]
    unsafe fn scale(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        half::f16::from_bits(bits).to_f32()
    }

    /// The 32 nibbles of a Q4_0 block as unsigned bytes, in element order.
    #[inline(always)]
    unsafe fn nibbles(blk: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(blk.add(2).cast());
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }

    /// The integer dot product of a Q4_0 block (nibbles `wu`) with activation block `b`,
    /// offset 8 folded in, as floats.
    #[inline(always)]
    unsafe fn scales4(p: *const u8, stride: usize) -> __m128 {
        let h = |j: usize| i16::from_le_bytes([*p.add(j * stride), *p.add(j * stride + 1)]);
        _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, h(3), h(2), h(1), h(0)))
    }

    /// Sums each of four i32x8 block products to one lane per 128-bit half:
    /// `[p0 p1 p2 p3 | p0' p1' p2' p3']` (the two halves add up to the block sums).
    #[inline(always)]
    unsafe fn reduce4(p0: __m256i, p1: __m256i, p2: __m256i, p3: __m256i) -> __m256 {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
        _mm256_cvtepi32_ps(h)
    }

    #[inline(always)]
    unsafe fn q4_int(wu: __m256i, a: &ActRow<'_>, b: usize) -> __m256i {
        let start = _mm256_zextsi128_si256(_mm_cvtsi32_si128(*a.c.get_unchecked(b)));
        let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK).cast());
        dot_u8_i8(start, wu, av)
    }

    /// Q4_0 row times `T` activation rows, four blocks at a time: the four blocks'
    /// integer sums are gathered into one vector (horizontal adds) so that converting to
    /// float and applying the scales costs one instruction each per four blocks.
    #[inline(always)]
    pub(super) unsafe fn dot_q4_0<const T: usize>(
        w: &[u8],
        a: [ActRow<'_>; T],
        nb: usize,
    ) -> [f32; T] {
        let wp = w.as_ptr();
        let mut acc = [_mm256_setzero_ps(); T];
        let mut b = 0;
        while b + 4 <= nb {
            let blk = wp.add(b * Q4_0_BYTES);
            let dw = scales4(blk, Q4_0_BYTES);
            let w0 = nibbles(blk);
            let w1 = nibbles(blk.add(Q4_0_BYTES));
            let w2 = nibbles(blk.add(2 * Q4_0_BYTES));
            let w3 = nibbles(blk.add(3 * Q4_0_BYTES));
            for t in 0..T {
                let r = &a[t];
                let f = reduce4(
                    q4_int(w0, r, b),
                    q4_int(w1, r, b + 1),
                    q4_int(w2, r, b + 2),
                    q4_int(w3, r, b + 3),
                );
                let s4 = _mm_mul_ps(dw, _mm_loadu_ps(r.d.as_ptr().add(b)));
                acc[t] = _mm256_fmadd_ps(f, _mm256_set_m128(s4, s4), acc[t]);
            }
            b += 4;
        }
        while b < nb {
            let blk = wp.add(b * Q4_0_BYTES);
            let dw = scale(blk);
            let wu = nibbles(blk);
            for t in 0..T {
                let p = _mm256_cvtepi32_ps(q4_int(wu, &a[t], b));
                let sc = dw * *a[t].d.get_unchecked(b);
                acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc), acc[t]);
            }
            b += 1;
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum(acc[t]);
        }
        out
    }

    #[inline(always)]
    unsafe fn q8_block(blk: *const u8, a: &ActRow<'_>, b: usize) -> __m256 {
        let wv = _mm256_loadu_si256(blk.add(2).cast());
        let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK).cast());
        let p =
            dot_u8_i8(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
        _mm256_cvtepi32_ps(p)
    }

    #[inline(always)]
    pub(super) unsafe fn dot_q8_0<const T: usize>(
        w: &[u8],
        a: [ActRow<'_>; T],
        nb: usize,
    ) -> [f32; T] {
        let wp = w.as_ptr();
        if T == 1 {
            let a0 = &a[0];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut b = 0;
            while b + 4 <= nb {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let blk = wp.add((b + j) * Q8_0_BYTES);
                    let sc = scale(blk) * *a0.d.get_unchecked(b + j);
                    *acc = _mm256_fmadd_ps(q8_block(blk, a0, b + j), _mm256_set1_ps(sc), *acc);
                }
                b += 4;
            }
            while b < nb {
                let blk = wp.add(b * Q8_0_BYTES);
                let sc = scale(blk) * *a0.d.get_unchecked(b);
                acc[0] = _mm256_fmadd_ps(q8_block(blk, a0, b), _mm256_set1_ps(sc), acc[0]);
                b += 1;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut out = [0f32; T];
            out[0] = hsum(s);
            return out;
        }
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = wp.add(b * Q8_0_BYTES);
            let dw = scale(blk);
            let wv = _mm256_loadu_si256(blk.add(2).cast());
            let wabs = _mm256_sign_epi8(wv, wv);
            for t in 0..T {
                let av = _mm256_loadu_si256(a[t].qs.as_ptr().add(b * QK).cast());
                let sa = _mm256_sign_epi8(av, wv);
                let p = _mm256_cvtepi32_ps(dot_u8_i8(_mm256_setzero_si256(), wabs, sa));
                let sc = dw * *a[t].d.get_unchecked(b);
                acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc), acc[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum(acc[t]);
        }
        out
    }

    #[cfg(target_feature = "f16c")]
    #[inline(always)]
    pub(super) unsafe fn dot_f16_bytes(w: *const u8, x: &[f32]) -> f32 {
        let n = x.len();
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * (i + 8 * j)).cast()));
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i).cast()));
            acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let mut s =
            hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s += scale(w.add(2 * i)) * x[i];
            i += 1;
        }
        s
    }

    #[inline(always)]
    pub(super) unsafe fn dot_f32_ptr(w: *const f32, x: &[f32]) -> f32 {
        let n = x.len();
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(i + 8 * j));
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let mut s =
            hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s += w.add(i).read_unaligned() * x[i];
            i += 1;
        }
        s
    }

    #[cfg(target_feature = "f16c")]
    #[inline(always)]
    pub(super) unsafe fn fa_step_f16(acc: &mut [f32], ms: f32, p: f32, v: *const u8) {
        const R: i32 = _MM_FROUND_TO_NEAREST_INT;
        let n = acc.len();
        let ap = acc.as_mut_ptr();
        let pv = _mm256_set1_ps(p);
        let msv = _mm256_set1_ps(ms);
        let mut i = 0;
        while i + 8 <= n {
            let mut a = _mm256_loadu_ps(ap.add(i));
            if ms != 1.0 {
                a = _mm256_cvtph_ps(_mm256_cvtps_ph::<R>(_mm256_mul_ps(a, msv)));
            }
            let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.add(2 * i).cast()));
            let r = _mm256_cvtph_ps(_mm256_cvtps_ph::<R>(_mm256_fmadd_ps(vv, pv, a)));
            _mm256_storeu_ps(ap.add(i), r);
            i += 8;
        }
        while i < n {
            let mut a = *ap.add(i);
            if ms != 1.0 {
                a = half::f16::from_f32(a * ms).to_f32();
            }
            *ap.add(i) = half::f16::from_f32(scale(v.add(2 * i)).mul_add(p, a)).to_f32();
            i += 1;
        }
    }

    #[cfg(target_feature = "f16c")]
    #[inline(always)]
    pub(super) unsafe fn axpy_f16(out: &mut [f32], p: f32, v: *const u8) {
        let n = out.len();
        let op = out.as_mut_ptr();
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i + 8 <= n {
            let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.add(2 * i).cast()));
            _mm256_storeu_ps(op.add(i), _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(op.add(i))));
            i += 8;
        }
        while i < n {
            *op.add(i) += p * scale(v.add(2 * i));
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn q8(x: &[f32]) -> Q8Rows {
        let mut r = Q8Rows::default();
        r.resize(1, x.len());
        quantize_row_q8_0(x, &mut r.qs, &mut r.d, &mut r.s, &mut r.c);
        r
    }

    #[test]
    fn q4_0_dot_matches_dequantized() {
        let mut seed = 7;
        let k = 256;
        let w: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
        let mut wq = vec![0u8; k / QK * Q4_0_BYTES];
        corral_gguf::quant::quantize(corral_gguf::types::GgmlType::Q4_0, &w, &mut wq)
            .expect("quantize");
        let a = q8(&x);
        let mut wd = vec![0f32; k];
        dequantize_row(crate::weights::WType::Q4_0, &wq, &mut wd);
        let mut xd = vec![0f32; k];
        for (i, v) in xd.iter_mut().enumerate() {
            *v = a.qs[i] as f32 * a.d[i / QK];
        }
        let want: f32 = wd.iter().zip(&xd).map(|(a, b)| a * b).sum();
        let [got, got2] = dot_q4_0::<2>(&wq, [a.row(0), a.row(0)]);
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
        assert_eq!(got, got2);
        let mut wq8 = vec![0u8; k / QK * Q8_0_BYTES];
        corral_gguf::quant::quantize(corral_gguf::types::GgmlType::Q8_0, &w, &mut wq8)
            .expect("quantize");
        dequantize_row(crate::weights::WType::Q8_0, &wq8, &mut wd);
        let want: f32 = wd.iter().zip(&xd).map(|(a, b)| a * b).sum();
        let [got] = dot_q8_0::<1>(&wq8, [a.row(0)]);
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
    }

    #[test]
    fn float_dots_and_axpy() {
        let mut seed = 3;
        for n in [1usize, 7, 8, 31, 32, 33, 100] {
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let want: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!((dot_f32(&bytes, &x) - want).abs() < 1e-4);
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let want16: f32 = h.iter().zip(&x).map(|(a, b)| a.to_f32() * b).sum();
            let hb: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!((dot_f16(&hb, &x) - want16).abs() < 1e-4);
            assert!((dot_f32_f16(&x, &h) - want16).abs() < 1e-4);
            let mut out = x.clone();
            axpy_f16(&mut out, 0.5, &h);
            for i in 0..n {
                assert!((out[i] - (x[i] + 0.5 * h[i].to_f32())).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn q8_quantization_matches_ggml_reference_on_simple_values() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let a = q8(&x);
        assert_eq!(a.qs[0], -127);
        assert!((a.d[0] - f16::from_f32(16.0 / 127.0).to_f32()).abs() < 1e-9);
        let sum: i32 = a.qs.iter().map(|&v| v as i32).sum();
        assert!((a.s[0] - a.d[0] * sum as f32).abs() < 1e-6);
    }
}
