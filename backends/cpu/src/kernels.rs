//! Dot-product kernels: quantized weight rows against Q8_0-quantized activations, F16 and
//! F32 rows against F32 activations, and the F16 KV-cache helpers of attention.
//!
//! The SIMD level is chosen at run time ([`isa`]): AVX-512 VNNI (`vpdpbusd`), AVX2+FMA+F16C
//! (`vpmaddubsw`), both in [`crate::simd`] and compiled into every build, or the portable
//! code here. Every path computes the same integer block sums, so they differ only in float
//! summation order.
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

/// An instruction-set level of the kernels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (what the compiler makes of it for the build's target).
    Portable,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI.
    Avx512Vnni,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni];

    /// The name used in logs and in `CORRAL_CPU_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// The best level this CPU runs (detected once).
    pub fn detected() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                let vnni = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni");
                match (avx2, vnni) {
                    (true, true) => Isa::Avx512Vnni,
                    (true, false) => Isa::Avx2,
                    _ => Isa::Portable,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                Isa::Portable
            }
        })
    }

    /// The levels this CPU runs, lowest first (tests compare them all).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|&l| l <= Isa::detected()).collect()
    }
}

/// The level the kernels use: [`Isa::detected`], lowered by `CORRAL_CPU_ISA` (`portable`,
/// `avx2`, `avx512vnni`) when that names a lower level; read once per process.
pub fn isa() -> Isa {
    static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = Isa::detected();
        let asked = std::env::var("CORRAL_CPU_ISA").ok();
        match asked.as_deref().map(|v| Isa::ALL.into_iter().find(|l| l.name() == v.trim())) {
            Some(Some(l)) if l <= detected => l,
            Some(Some(l)) => {
                log::warn!(
                    "CORRAL_CPU_ISA={} is not supported here; using {}",
                    l.name(),
                    detected.name()
                );
                detected
            }
            Some(None) => {
                log::warn!(
                    "CORRAL_CPU_ISA={:?} is not a level (portable, avx2, avx512vnni); using {}",
                    asked.unwrap_or_default(),
                    detected.name()
                );
                detected
            }
            None => detected,
        }
    })
}

/// Calls `crate::simd::<level>::$f` for the x86 levels and evaluates `$portable` otherwise.
/// The level is first capped at [`Isa::detected`], so a SIMD function runs only on a CPU
/// that has its features.
macro_rules! dispatch {
    ($isa:expr, $f:ident $(::<$($t:tt),+>)? ($($arg:expr),*), $portable:expr) => {{
        match $isa.min($crate::kernels::Isa::detected()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the level's features (capped at the detected level just
            // above), and the callers asserted that every slice holds the blocks or
            // elements the kernel reads.
            $crate::kernels::Isa::Avx512Vnni => unsafe { $crate::simd::avx512::$f$(::<$($t),+>)?($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            $crate::kernels::Isa::Avx2 => unsafe { $crate::simd::avx2::$f$(::<$($t),+>)?($($arg),*) },
            _ => $portable,
        }
    }};
}
pub(crate) use dispatch;

/// Asserts that a quantized weight row holds `nb` blocks of `bytes` and that every
/// activation row holds `nb` blocks of `block` values (the SIMD kernels read unchecked).
#[inline]
pub(crate) fn check_rows<const T: usize>(
    w: &[u8],
    nb: usize,
    bytes: usize,
    qs: [usize; T],
    block: usize,
) {
    assert!(w.len() >= nb * bytes, "weight row shorter than its blocks");
    for q in qs {
        assert!(q >= nb * block, "activation row shorter than the weight row");
    }
}

/// Q8_0 activation rows' block count, after checking them against a weight row.
#[inline]
pub(crate) fn q8_blocks<const T: usize>(w: &[u8], a: &[ActRow<'_>; T], bytes: usize) -> usize {
    let nb = a[0].d.len();
    for r in a {
        assert!(r.d.len() >= nb && r.s.len() >= nb && r.c.len() >= nb, "activation scales short");
    }
    check_rows(w, nb, bytes, a.map(|r| r.qs.len()), QK);
    nb
}

/// Dot products of one Q4_0 weight row with `T` Q8_0 activation rows, at level `isa`.
#[inline]
pub fn dot_q4_0<const T: usize>(isa: Isa, w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = q8_blocks(w, &a, Q4_0_BYTES);
    dispatch!(isa, dot_q4_0::<T>(w, a, nb), {
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
    })
}

/// Dot products of one Q8_0 weight row with `T` Q8_0 activation rows, at level `isa`.
#[inline]
pub fn dot_q8_0<const T: usize>(isa: Isa, w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = q8_blocks(w, &a, Q8_0_BYTES);
    dispatch!(isa, dot_q8_0::<T>(w, a, nb), {
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
    })
}

/// `out[r] = w_r · a` for the `out.len()` rows of `row_bytes` at the start of `w`, all of
/// weight type `ty` (Q4_0, Q8_0, Q5_0 or Q5_1) against `T` Q8_0 activation rows, at
/// level `isa`. The bounds are checked once for the whole range.
pub fn rows_q8<const T: usize>(
    isa: Isa,
    ty: crate::weights::WType,
    w: &[u8],
    row_bytes: usize,
    a: [ActRow<'_>; T],
    out: &mut [[f32; T]],
) {
    use crate::kquants as kq;
    use crate::weights::WType;
    let bytes = match ty {
        WType::Q4_0 => Q4_0_BYTES,
        WType::Q5_0 => kq::Q5_0_BYTES,
        WType::Q5_1 => kq::Q5_1_BYTES,
        _ => Q8_0_BYTES,
    };
    if out.is_empty() {
        return;
    }
    assert!(w.len() >= out.len() * row_bytes, "weight rows outside the slice");
    let nb = q8_blocks(&w[..row_bytes.min(w.len())], &a, bytes);
    assert!(nb * bytes <= row_bytes, "rows shorter than their blocks");
    match (isa.min(Isa::detected()), ty) {
        (Isa::Portable, _) => {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * row_bytes..(r + 1) * row_bytes];
                *o = match ty {
                    WType::Q4_0 => dot_q4_0::<T>(Isa::Portable, row, a),
                    WType::Q5_0 => kq::dot_q5_0::<T>(Isa::Portable, row, a),
                    WType::Q5_1 => kq::dot_q5_1::<T>(Isa::Portable, row, a),
                    _ => dot_q8_0::<T>(Isa::Portable, row, a),
                };
            }
        }
        (_, WType::Q4_0) => dispatch!(isa, rows_q8::<T, 0>(w, row_bytes, a, nb, out), ()),
        (_, WType::Q5_0) => dispatch!(isa, rows_q8::<T, 2>(w, row_bytes, a, nb, out), ()),
        (_, WType::Q5_1) => dispatch!(isa, rows_q8::<T, 3>(w, row_bytes, a, nb, out), ()),
        _ => dispatch!(isa, rows_q8::<T, 1>(w, row_bytes, a, nb, out), ()),
    }
}

/// Rows of a Q4_0 matrix the grouped kernel handles at once.
pub const Q4_0_GROUP: usize = 8;
/// Bytes of one block of a packed group of [`Q4_0_GROUP`] Q4_0 rows.
pub const Q4_0_GROUP_BYTES: usize = 8 * 32 + 32;

/// Repacks the blocks of 8 Q4_0 rows for [`gemm_q4_0_group`]: per block, 8 vectors of 32
/// bytes, vector `c` holding the unsigned values `4c..4c+4` of every row, then the rows'
/// scales as f32 (8 rows' values side by side, as in `kquants::repack_q4_k_x8`, unpacked to bytes, one block of 32 at a time).
pub fn pack_q4_0_group(rows: [&[u8]; Q4_0_GROUP], nb: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(nb * Q4_0_GROUP_BYTES, 0);
    for b in 0..nb {
        let (u, d) = out[b * Q4_0_GROUP_BYTES..(b + 1) * Q4_0_GROUP_BYTES].split_at_mut(256);
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * Q4_0_BYTES..(b + 1) * Q4_0_BYTES];
            for l in 0..QK {
                let v = if l < 16 { blk[2 + l] & 0x0f } else { blk[2 + l - 16] >> 4 };
                u[(l / 4) * 32 + 4 * r + l % 4] = v;
            }
            d[4 * r..4 * r + 4].copy_from_slice(&f16_at(blk, 0).to_le_bytes());
        }
    }
}

/// `T` Q8_0 activation rows times a packed group of [`Q4_0_GROUP`] Q4_0 rows
/// ([`pack_q4_0_group`]): `out[t][r]`, at level `isa`; `None` at the portable level (the
/// caller uses [`rows_q8`]).
#[inline]
pub fn gemm_q4_0_group<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
) -> Option<[[f32; Q4_0_GROUP]; T]> {
    let nb = q8_blocks(packed, &a, Q4_0_GROUP_BYTES);
    match isa.min(Isa::detected()) {
        Isa::Portable => None,
        _ => Some(dispatch!(isa, gemm_q4_0_group::<T>(packed, a, nb), unreachable!())),
    }
}

/// Dot product of an F16 weight row (raw little-endian bytes) with an F32 row.
#[inline]
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    assert!(w.len() >= x.len() * 2, "F16 row shorter than the activations");
    dispatch!(isa(), dot_f16_bytes(w.as_ptr(), x), {
        x.iter().enumerate().map(|(i, v)| f16_at(w, 2 * i) * v).sum()
    })
}

/// Dot product of an F32 weight row (raw little-endian bytes) with an F32 row.
#[inline]
pub fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    assert!(w.len() >= x.len() * 4, "F32 row shorter than the activations");
    dispatch!(isa(), dot_f32_ptr(w.as_ptr().cast(), x), {
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]) * v
            })
            .sum()
    })
}

/// `q · k` for an F32 query and an F16 key (attention scores).
#[inline]
pub fn dot_f32_f16(q: &[f32], k: &[f16]) -> f32 {
    assert_eq!(q.len(), k.len());
    // f16 is a transparent u16: `k` is `q.len()` halves.
    dispatch!(isa(), dot_f16_bytes(k.as_ptr().cast(), q), {
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    })
}

/// `out += p * v` for an F16 value row (attention output).
#[inline]
pub fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len());
    dispatch!(isa(), axpy_f16(out, p, v.as_ptr().cast()), {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x.to_f32();
        }
    });
}

/// `acc = f16(f16(acc * ms) + p * v)` element-wise: one step of llama.cpp's CPU flash
/// attention with an F16 accumulator (`ms` is 1 when the running maximum did not move).
/// The rounding to f16 after each step is llama.cpp's; keeping it makes this engine's
/// attention agree with llama.cpp's to float-summation order.
#[inline]
pub fn fa_step_f16(acc: &mut [f32], ms: f32, p: f32, v: &[f16]) {
    assert_eq!(acc.len(), v.len());
    dispatch!(isa(), fa_step_f16(acc, ms, p, v.as_ptr().cast()), {
        for (a, x) in acc.iter_mut().zip(v) {
            let scaled = if ms != 1.0 { f16::from_f32(*a * ms).to_f32() } else { *a };
            *a = f16::from_f32(x.to_f32().mul_add(p, scaled)).to_f32();
        }
    });
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
        for isa in Isa::available() {
            q4_0_dot_matches_dequantized_at(isa);
        }
    }

    fn q4_0_dot_matches_dequantized_at(isa: Isa) {
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
        let [got, got2] = dot_q4_0::<2>(isa, &wq, [a.row(0), a.row(0)]);
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
        assert_eq!(got, got2);
        let mut wq8 = vec![0u8; k / QK * Q8_0_BYTES];
        corral_gguf::quant::quantize(corral_gguf::types::GgmlType::Q8_0, &w, &mut wq8)
            .expect("quantize");
        dequantize_row(crate::weights::WType::Q8_0, &wq8, &mut wd);
        let want: f32 = wd.iter().zip(&xd).map(|(a, b)| a * b).sum();
        let [got] = dot_q8_0::<1>(isa, &wq8, [a.row(0)]);
        let [got4, ..] = dot_q8_0::<4>(isa, &wq8, [a.row(0); 4]);
        assert!((got4 - want).abs() < 1e-3 * want.abs().max(1.0), "{got4} vs {want}");
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
    }

    /// The grouped Q4_0 kernel over 8 packed rows equals the row kernel on each row (to
    /// float summation order), at every SIMD level.
    #[test]
    fn grouped_q4_0_equals_row_dots() {
        let mut seed = 9;
        let k = 5 * QK;
        let rows: Vec<Vec<u8>> = (0..Q4_0_GROUP)
            .map(|_| {
                let w: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
                let mut q = vec![0u8; k / QK * Q4_0_BYTES];
                corral_gguf::quant::quantize(corral_gguf::types::GgmlType::Q4_0, &w, &mut q)
                    .expect("quantize");
                q
            })
            .collect();
        let mut acts = Q8Rows::default();
        acts.resize(4, k);
        let nb = k / QK;
        for t in 0..4 {
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed) * 2.0).collect();
            let Q8Rows { qs, d, s, c, .. } = &mut acts;
            quantize_row_q8_0(
                &x,
                &mut qs[t * k..(t + 1) * k],
                &mut d[t * nb..(t + 1) * nb],
                &mut s[t * nb..(t + 1) * nb],
                &mut c[t * nb..(t + 1) * nb],
            );
        }
        let mut packed = Vec::new();
        pack_q4_0_group(std::array::from_fn(|r| rows[r].as_slice()), nb, &mut packed);
        let a: [ActRow<'_>; 4] = std::array::from_fn(|t| acts.row(t));
        for isa in Isa::available() {
            let Some(got) = gemm_q4_0_group::<4>(isa, &packed, a) else {
                assert_eq!(isa, Isa::Portable);
                continue;
            };
            for (r, row) in rows.iter().enumerate() {
                let want = dot_q4_0::<4>(Isa::Portable, row, a);
                for t in 0..4 {
                    let tol = 1e-5 * want[t].abs().max(1.0);
                    assert!(
                        (got[t][r] - want[t]).abs() <= tol,
                        "{isa:?} row {r} token {t}: {} vs {}",
                        got[t][r],
                        want[t]
                    );
                }
            }
        }
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
