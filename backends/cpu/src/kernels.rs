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

use crate::kv::KvType;

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
        let (db, sum) = q8_0_block(xb, &mut qs[b * QK..(b + 1) * QK]);
        d[b] = db;
        s[b] = db * sum as f32;
        c[b] = -8 * sum;
    }
}

/// One block of 32 values as [`quantize_row_q8_0`] quantizes it into `q`; returns the
/// scale (an f16 value) and the sum of the quantized values.
pub fn q8_0_block(xb: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let db = f16::from_f32(amax / 127.0).to_f32();
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, v) in q.iter_mut().zip(xb) {
        let r = (v * id).round_ties_even() as i32;
        *o = r as i8;
        sum += r;
    }
    (db, sum)
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

/// Whether products that stream their weights from memory (single tokens, and small
/// batches: [`small_batch`]) prefetch them in software, `prefetcht0` 4 KiB ahead of the
/// walk. On by default on Intel CPUs: on Sapphire Rapids the hardware prefetchers alone
/// streamed the weights at about half the measured read bandwidth, and prefetching raised
/// decode 1.3-1.5x. Off elsewhere: on the AMD EPYC of an earlier measurement software
/// prefetching made the streaming 10-20% slower (its hardware prefetchers already kept
/// up). `CORRAL_CPU_PREFETCH=1` or `0` overrides; read once per process.
pub fn prefetch_weights() -> bool {
    static CHOSEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var("CORRAL_CPU_PREFETCH").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => cpu_vendor() == *b"GenuineIntel",
    })
}

thread_local! {
    static SMALL_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the products this thread runs next as part of a small batch (a decode step of a
/// few sequences, [`SMALL_BATCH_TOKENS`] tokens or fewer), whose weight walks stream from
/// memory as a single token's do and so prefetch too; a prefill's token tiles re-read
/// cached weights, where prefetching measured 2-6% slower. `weights::matmul_multi` sets it
/// in every task.
pub fn set_small_batch(small: bool) {
    SMALL_BATCH.with(|c| c.set(small));
}

/// Whether this thread's products belong to a small batch ([`set_small_batch`]).
#[inline]
pub fn small_batch() -> bool {
    SMALL_BATCH.with(std::cell::Cell::get)
}

/// Whether a product of `tokens` activation rows at once prefetches its weights: where
/// [`prefetch_weights`] allows, for single tokens and within a [`small_batch`].
#[inline]
pub fn prefetching(tokens: usize) -> bool {
    prefetch_weights() && (tokens == 1 || small_batch())
}

/// Batches of up to this many tokens count as small ([`set_small_batch`]).
pub const SMALL_BATCH_TOKENS: usize = 8;

/// The CPU's vendor string (`GenuineIntel`, `AuthenticAMD`, ...); zeros off x86-64.
fn cpu_vendor() -> [u8; 12] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&r.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r.edx.to_le_bytes());
        v[8..].copy_from_slice(&r.ecx.to_le_bytes());
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        [0; 12]
    }
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

/// Rows of a Q4_0 or Q5_0 matrix the interleaved kernels handle at once.
pub const Q4_0_GROUP: usize = 8;
/// Bytes of one block of [`Q4_0_GROUP`] Q4_0 rows in the interleaved layout of
/// [`repack_q4_0_x8`]: the 8 rows' f16 scales, then their 128 bytes of nibbles (the same
/// 144 bytes as the 8 blocks it replaces).
pub const Q4_0_X8_BYTES: usize = 16 + 128;
/// Bytes of one block of 8 Q5_0 rows in the interleaved layout of [`repack_q5_0_x8`]: the
/// scales, 32 bytes of fifth bits, the 128 bytes of nibbles (176, as the 8 blocks).
pub const Q5_0_X8_BYTES: usize = 16 + 32 + 128;

/// Bytes of one interleaved block of 8 rows: Q4_0 or (`FIVE`) Q5_0.
const fn x8_bytes<const FIVE: bool>() -> usize {
    if FIVE { Q5_0_X8_BYTES } else { Q4_0_X8_BYTES }
}

/// Interleaves blocks of 8 Q4_0 rows for [`gemm_q4_0_x8`], the layout the engine keeps
/// Q4_0 matmul weights in after load (llama.cpp's `block_q4_0x8` idea, in this engine's
/// own layout). Per block of 32 values ([`Q4_0_X8_BYTES`]): the rows' `d` as f16, then 4
/// chunks of 32 bytes, chunk `q` holding bytes `4q..4q + 4` of each row's nibbles side by
/// side (byte `4r + i`: value `4q + i` of row `r` in its low nibble, value `16 + 4q + i`
/// in its high nibble), so that one load and a mask give 4 values of every row that one
/// broadcast activation chunk multiplies.
pub fn repack_q4_0_x8(rows: [&[u8]; Q4_0_GROUP], nb: usize, out: &mut [u8]) {
    repack_x8::<false>(rows, nb, out);
}

/// Interleaves blocks of 8 Q5_0 rows for [`gemm_q5_0_x8`]: as [`repack_q4_0_x8`] with
/// the rows' fifth bits between the scales and the nibbles, 8 bytes per chunk `q`: byte
/// `r` holds bits `4q..4q + 4` of row `r`'s `qh` (the fifth bits of the low nibbles the
/// chunk holds) in its low half and bits `16 + 4q..20 + 4q` in its high half.
pub fn repack_q5_0_x8(rows: [&[u8]; Q4_0_GROUP], nb: usize, out: &mut [u8]) {
    repack_x8::<true>(rows, nb, out);
}

fn repack_x8<const FIVE: bool>(rows: [&[u8]; Q4_0_GROUP], nb: usize, out: &mut [u8]) {
    let (blk_bytes, qs_at) = if FIVE { (crate::kquants::Q5_0_BYTES, 6) } else { (Q4_0_BYTES, 2) };
    let bytes = x8_bytes::<FIVE>();
    assert!(out.len() >= nb * bytes, "repack output too short");
    for row in rows {
        assert!(row.len() >= nb * blk_bytes, "row shorter than its blocks");
    }
    for b in 0..nb {
        let (d, rest) = out[b * bytes..(b + 1) * bytes].split_at_mut(16);
        let (hb, qs) = rest.split_at_mut(if FIVE { 32 } else { 0 });
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * blk_bytes..(b + 1) * blk_bytes];
            d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            for q in 0..4 {
                qs[32 * q + 4 * r..32 * q + 4 * r + 4]
                    .copy_from_slice(&blk[qs_at + 4 * q..qs_at + 4 + 4 * q]);
            }
            if FIVE {
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for q in 0..4 {
                    let lo = (qh >> (4 * q)) & 0x0f;
                    let hi = (qh >> (16 + 4 * q)) & 0x0f;
                    hb[8 * q + r] = (lo | (hi << 4)) as u8;
                }
            }
        }
    }
}

/// `T` Q8_0 activation rows times 8 Q4_0 rows in the layout of [`repack_q4_0_x8`]:
/// `out[t][r]`, at level `isa`. The integer sums are the row kernel's; per block the float
/// step is the row kernel's too (`acc += isum · (d_w · d_a)`).
#[inline]
pub fn gemm_q4_0_x8<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
) -> [[f32; Q4_0_GROUP]; T] {
    gemm_x8::<T, false>(isa, packed, a)
}

/// As [`gemm_q4_0_x8`] for 8 Q5_0 rows in the layout of [`repack_q5_0_x8`].
#[inline]
pub fn gemm_q5_0_x8<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
) -> [[f32; Q4_0_GROUP]; T] {
    gemm_x8::<T, true>(isa, packed, a)
}

#[inline]
fn gemm_x8<const T: usize, const FIVE: bool>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
) -> [[f32; Q4_0_GROUP]; T] {
    let nb = q8_blocks(packed, &a, x8_bytes::<FIVE>());
    dispatch!(isa, gemm_x8::<T, FIVE>(packed, a, nb), gemm_x8_portable::<T, FIVE>(packed, a, nb))
}

/// [`gemm_q4_0_x8`] over consecutive groups of 8 rows (`packed` holds `out.len()` groups
/// of `a`'s block count each), one dispatch for all of them: `out[g][t][r]`.
pub fn gemm_q4_0_x8_groups<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
    out: &mut [[[f32; Q4_0_GROUP]; T]],
) {
    gemm_x8_groups::<T, false>(isa, packed, a, out);
}

/// [`gemm_q5_0_x8`] over consecutive groups of 8 rows.
pub fn gemm_q5_0_x8_groups<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
    out: &mut [[[f32; Q4_0_GROUP]; T]],
) {
    gemm_x8_groups::<T, true>(isa, packed, a, out);
}

fn gemm_x8_groups<const T: usize, const FIVE: bool>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
    out: &mut [[[f32; Q4_0_GROUP]; T]],
) {
    let nb = a[0].d.len();
    let group = nb * x8_bytes::<FIVE>();
    assert!(packed.len() >= out.len() * group, "packed groups shorter than the output");
    if out.is_empty() {
        return;
    }
    q8_blocks(&packed[..group], &a, x8_bytes::<FIVE>());
    dispatch!(isa, gemm_x8_groups::<T, FIVE>(packed, a, nb, out), {
        for (g, o) in out.iter_mut().enumerate() {
            *o = gemm_x8_portable::<T, FIVE>(&packed[g * group..(g + 1) * group], a, nb);
        }
    });
}

fn gemm_x8_portable<const T: usize, const FIVE: bool>(
    packed: &[u8],
    a: [ActRow<'_>; T],
    nb: usize,
) -> [[f32; Q4_0_GROUP]; T] {
    let bytes = x8_bytes::<FIVE>();
    let qs_at = if FIVE { 48 } else { 16 };
    let mut out = [[0f32; Q4_0_GROUP]; T];
    for b in 0..nb {
        let g = &packed[b * bytes..(b + 1) * bytes];
        for r in 0..Q4_0_GROUP {
            let dw = f16_at(g, 2 * r);
            for (o, y) in out.iter_mut().zip(&a) {
                let q8 = &y.qs[b * QK..(b + 1) * QK];
                // The offset of 8 (Q4_0) or 16 (Q5_0) times the activations' sum.
                let mut sum = if FIVE { 2 * y.c[b] } else { y.c[b] };
                for q in 0..4 {
                    let h = if FIVE { g[16 + 8 * q + r] } else { 0 };
                    for i in 0..4 {
                        let v = g[qs_at + 32 * q + 4 * r + i];
                        let lo = (v & 0x0f) | (((h >> i) & 1) << 4);
                        let hi = (v >> 4) | (((h >> (4 + i)) & 1) << 4);
                        sum += i32::from(lo) * i32::from(q8[4 * q + i]);
                        sum += i32::from(hi) * i32::from(q8[16 + 4 * q + i]);
                    }
                }
                o[r] += sum as f32 * (dw * y.d[b]);
            }
        }
    }
    out
}

/// Bytes of one block of [`Q4_0_GROUP`] Q8_0 rows in the interleaved layout of
/// [`repack_q8_0_x8`]: the 8 rows' f16 scales, then their 256 signed bytes (272, the same
/// as the 8 blocks it replaces).
pub const Q8_0_X8_BYTES: usize = 16 + 256;

/// Interleaves blocks of 8 Q8_0 rows for [`gemm_q8_0_x8`], the layout the engine keeps
/// Q8_0 matmul weights in after load. Per block of 32 values ([`Q8_0_X8_BYTES`]): the
/// rows' `d` as f16, then 8 chunks of 32 bytes, chunk `q` holding values `4q..4q + 4` of
/// each row side by side (byte `32q + 4r + i`: value `4q + i` of row `r`), so that one
/// load gives 4 values of every row that one broadcast activation chunk multiplies, and
/// the float step (`acc += isum · d_w · d_a`) is one vector operation for 8 rows.
pub fn repack_q8_0_x8(rows: [&[u8]; Q4_0_GROUP], nb: usize, out: &mut [u8]) {
    assert!(out.len() >= nb * Q8_0_X8_BYTES, "repack output too short");
    for row in rows {
        assert!(row.len() >= nb * Q8_0_BYTES, "row shorter than its blocks");
    }
    for b in 0..nb {
        let (d, qs) = out[b * Q8_0_X8_BYTES..(b + 1) * Q8_0_X8_BYTES].split_at_mut(16);
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
            d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            for q in 0..QK / 4 {
                qs[32 * q + 4 * r..32 * q + 4 * r + 4].copy_from_slice(&blk[2 + 4 * q..6 + 4 * q]);
            }
        }
    }
}

/// `T` Q8_0 activation rows times 8 Q8_0 rows in the layout of [`repack_q8_0_x8`]:
/// `out[t][r]`, at level `isa`. The integer sums are the row kernel's (exact); the float
/// additions run block by block per row.
#[inline]
pub fn gemm_q8_0_x8<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
) -> [[f32; Q4_0_GROUP]; T] {
    let nb = q8_blocks(packed, &a, Q8_0_X8_BYTES);
    dispatch!(isa, gemm_q8_0_x8::<T>(packed, a, nb), gemm_q8_0_x8_portable::<T>(packed, a, nb))
}

/// [`gemm_q8_0_x8`] over consecutive groups of 8 rows (`packed` holds `out.len()` groups
/// of `a`'s block count each), one dispatch for all of them: `out[g][t][r]`.
pub fn gemm_q8_0_x8_groups<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [ActRow<'_>; T],
    out: &mut [[[f32; Q4_0_GROUP]; T]],
) {
    let nb = a[0].d.len();
    let group = nb * Q8_0_X8_BYTES;
    assert!(packed.len() >= out.len() * group, "packed groups shorter than the output");
    if out.is_empty() {
        return;
    }
    q8_blocks(&packed[..group], &a, Q8_0_X8_BYTES);
    dispatch!(isa, gemm_q8_0_x8_groups::<T>(packed, a, nb, out), {
        for (g, o) in out.iter_mut().enumerate() {
            *o = gemm_q8_0_x8_portable::<T>(&packed[g * group..(g + 1) * group], a, nb);
        }
    });
}

fn gemm_q8_0_x8_portable<const T: usize>(
    packed: &[u8],
    a: [ActRow<'_>; T],
    nb: usize,
) -> [[f32; Q4_0_GROUP]; T] {
    let mut out = [[0f32; Q4_0_GROUP]; T];
    for b in 0..nb {
        let g = &packed[b * Q8_0_X8_BYTES..(b + 1) * Q8_0_X8_BYTES];
        for r in 0..Q4_0_GROUP {
            let dw = f16_at(g, 2 * r);
            for (o, y) in out.iter_mut().zip(&a) {
                let q8 = &y.qs[b * QK..(b + 1) * QK];
                let mut sum = 0i32;
                for q in 0..QK / 4 {
                    for i in 0..4 {
                        let w = g[16 + 32 * q + 4 * r + i] as i8;
                        sum += i32::from(w) * i32::from(q8[4 * q + i]);
                    }
                }
                o[r] += sum as f32 * (dw * y.d[b]);
            }
        }
    }
    out
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

/// Where one KV head's rows lie in a layer's cache: `cells × ty.row_bytes(kv_dim)` bytes
/// of keys and of values, the head's `hd` values at value `offset` of each cell.
#[derive(Clone, Copy)]
pub struct KvHead<'a> {
    /// The cache's element type.
    pub ty: KvType,
    /// Keys.
    pub k: &'a [u8],
    /// Values.
    pub v: &'a [u8],
    /// Values per cell.
    pub kv_dim: usize,
    /// The head's offset in a cell, in values.
    pub offset: usize,
}

impl<'a> KvHead<'a> {
    /// Bytes per cell.
    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.kv_dim)
    }

    /// The bytes of the head's `hd` values in cell `cell` of `store` (the keys or the
    /// values).
    fn head(&self, store: &'a [u8], cell: u32, hd: usize) -> &'a [u8] {
        let at = cell as usize * self.row_bytes() + self.ty.row_bytes(self.offset);
        &store[at..at + self.ty.row_bytes(hd)]
    }

    /// Value `i` of an F16 head's bytes.
    fn f16_value(bytes: &[u8], i: usize) -> f32 {
        f16_at(bytes, 2 * i)
    }
}

/// The running state of llama.cpp's one-row flash attention for `g` query heads of `hd`
/// values: the f16 accumulators of the weighted values (`g × hd`), and per head the
/// running maximum score and the sum of the weights.
pub struct OnlineSoftmax<'a> {
    /// Accumulated values, f16 as llama.cpp keeps them (`VKQ16`).
    pub acc: &'a mut [f16],
    /// Running maximum of each head's scores.
    pub max: &'a mut [f32],
    /// Each head's sum of `exp(score - max)`.
    pub sum: &'a mut [f32],
}

/// Checks what the attention kernels read unchecked: `q` holds whole heads of the state's
/// count, the accumulators (`lens.0`) match the query and the per-head vectors (`lens.1`,
/// `lens.2`) its head count, the head lies inside a cell and every cell inside the cache.
/// Returns (heads, head size).
fn check_attention(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    lens: (usize, usize, usize),
) -> (usize, usize) {
    let g = lens.1;
    assert!(g > 0 && q.len().is_multiple_of(g), "query heads and state disagree");
    let hd = q.len() / g;
    assert!(lens.0 == q.len() && lens.2 == g, "state sizes");
    assert!(kv.offset + hd <= kv.kv_dim, "head outside the cell");
    if kv.ty.is_quantized() {
        assert!(
            [hd, kv.offset, kv.kv_dim].iter().all(|n| n.is_multiple_of(QK)),
            "a quantized head is whole blocks"
        );
    }
    let n_cells = kv.k.len().min(kv.v.len()) / kv.row_bytes().max(1);
    assert!(cells.iter().all(|&c| (c as usize) < n_cells), "cell outside the cache");
    (g, hd)
}

/// How llama.cpp's CPU flash attention rounds its f16 value accumulator, which depends on
/// how ggml was compiled. Without AVX512-FP16, `ggml_vec_scale_f16` and `ggml_vec_mad_f16`
/// compute each step in f32 (`fma(v, w, acc)`) and round the result to f16. Compiled for a
/// CPU that has AVX512-FP16 (`-march=native` on Sapphire Rapids and later, as the
/// llama.cpp plugin and `llama-raw` are built), they run in f16 arithmetic: the factor is
/// rounded to f16 first and each result is rounded once from the exact value. On Gemma 3
/// 270M this choice alone halves the KL divergence of this engine's logits from llama.cpp's
/// on such a CPU (16 prompts: 1.44e-2 -> 7.3e-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaRounding {
    /// f32 arithmetic, the result rounded to f16 (ggml without AVX512-FP16).
    F32Fma,
    /// f16 arithmetic (ggml built with AVX512-FP16).
    F16Native,
}

/// The rounding of llama.cpp built natively for this CPU: [`FaRounding::F16Native`] when
/// the kernels run at the AVX-512 level and the CPU has AVX512-FP16.
pub fn fa_rounding() -> FaRounding {
    static CHOSEN: std::sync::OnceLock<FaRounding> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if isa() == Isa::Avx512Vnni && is_x86_feature_detected!("avx512fp16") {
            return FaRounding::F16Native;
        }
        FaRounding::F32Fma
    })
}

/// `a + p` rounded once to f16, for f32 values whose exact sum need not be an f32 (as an
/// AVX512-FP16 `vfmadd` rounds): the sum rounded to odd in f32 (Knuth's two-sum gives the
/// rounding error exactly), then to the nearest f16, which rounds the exact sum correctly
/// because f32 carries more than two bits beyond f16's precision.
pub(crate) fn f16_of_exact_sum(a: f32, p: f32) -> f16 {
    let r = a + p;
    let bb = r - a;
    let err = (a - (r - bb)) + (p - bb);
    let mut bits = r.to_bits();
    if err != 0.0 {
        if (err.to_bits() ^ bits) >> 31 != 0 {
            // The exact sum lies below |r|: truncate to the f32 under it.
            bits -= 1;
        }
        bits |= 1;
    }
    f16::from_f32(f32::from_bits(bits))
}

/// One step of the online softmax over a score `sc` (before soft-capping): the score
/// soft-capped as `cap·tanh(sc)` when `softcap` is not 0; on a new maximum `max` moves to
/// it and the step is `(exp(old - new), 1)`, else `(1, exp(sc - max))`: the accumulator's
/// rescale and the cell's weight, as ggml's one-row flash attention computes them.
#[inline]
pub(crate) fn softmax_step(sc: f32, softcap: f32, max: &mut f32) -> (f32, f32) {
    let sc = if softcap != 0.0 { softcap * sc.tanh() } else { sc };
    if sc > *max {
        let ms = (*max - sc).exp();
        *max = sc;
        (ms, 1.0)
    } else {
        (1.0, (sc - *max).exp())
    }
}

/// One step of the f16 accumulator, `acc = f16(f16(acc·ms) + w·x)` (the rescale only when
/// `ms` is not 1), rounded as `rounding` says; `x` is an f16 value.
#[inline]
pub(crate) fn fa_step(acc: f16, x: f32, (ms, w): (f32, f32), rounding: FaRounding) -> f16 {
    match rounding {
        FaRounding::F32Fma => {
            let scaled =
                if ms != 1.0 { f16::from_f32(acc.to_f32() * ms).to_f32() } else { acc.to_f32() };
            f16::from_f32(x.mul_add(w, scaled))
        }
        FaRounding::F16Native => {
            let (ms, w) = (f16::from_f32(ms).to_f32(), f16::from_f32(w).to_f32());
            // Products of two f16 values are exact in f32.
            let scaled =
                if ms != 1.0 { f16::from_f32(acc.to_f32() * ms).to_f32() } else { acc.to_f32() };
            f16_of_exact_sum(scaled, x * w)
        }
    }
}

/// llama.cpp's CPU flash attention, one-row path (`ggml_compute_forward_flash_attn_ext_f16`
/// for fewer than 64 query rows), for the `g = state.max.len()` query heads in `q` (`g ×
/// hd`, already rounded to f16) that share the KV head `kv`, over the cells `cells` in
/// order: per cell the score `q·k·scale` (soft-capped as `cap·tanh(score)` when `softcap`
/// is not 0; the SIMD levels sum the dot product in `ggml_vec_dot_f16`'s order), then the
/// online softmax step `acc = f16(f16(acc·ms) + w·v)` with `ms` rescaling the accumulator
/// when the maximum moves, rounded as [`fa_rounding`] says, and the weights' sum
/// `sum·ms + w` in one fused multiply-add (as the compiler contracts ggml's). The rounding
/// to f16 after each step is llama.cpp's; keeping it makes this engine's attention agree
/// with llama.cpp's to float-summation order. The heads share each cell's key and value
/// loads.
pub fn attend_heads_f16(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    scale: (f32, f32),
    state: OnlineSoftmax<'_>,
) {
    attend_heads_f16_rounded(q, kv, cells, scale, state, fa_rounding());
}

/// [`attend_heads_f16`] with the given rounding.
fn attend_heads_f16_rounded(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: OnlineSoftmax<'_>,
    rounding: FaRounding,
) {
    assert_eq!(kv.ty, KvType::F16, "an F16 cache");
    let (g, hd) =
        check_attention(q, kv, cells, (state.acc.len(), state.max.len(), state.sum.len()));
    if hd.is_multiple_of(8) && hd <= 256 && g <= 64 {
        let (k, v) = (kv.k.as_ptr(), kv.v.as_ptr());
        let acc = state.acc.as_mut_ptr().cast::<u8>();
        let dims = (kv.kv_dim, kv.offset);
        let OnlineSoftmax { acc: acc16, max, sum } = state;
        with_scratch(2 * g * FA_BLOCK, |scratch| {
            dispatch!(
                isa(),
                attend_heads_f16(
                    q,
                    (k, v),
                    dims,
                    cells,
                    (scale, softcap),
                    acc,
                    (max, sum),
                    scratch,
                    rounding == FaRounding::F16Native
                ),
                attend_heads_f16_portable(
                    q,
                    kv,
                    cells,
                    (scale, softcap),
                    OnlineSoftmax { acc: acc16, max, sum },
                    rounding
                )
            );
        });
    } else {
        attend_heads_f16_portable(q, kv, cells, (scale, softcap), state, rounding);
    }
}

fn attend_heads_f16_portable(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: OnlineSoftmax<'_>,
    rounding: FaRounding,
) {
    let g = state.max.len();
    let hd = q.len() / g;
    for &cell in cells {
        let (k, v) = (kv.head(kv.k, cell, hd), kv.head(kv.v, cell, hd));
        for h in 0..g {
            let qh = &q[h * hd..(h + 1) * hd];
            let dot = qh.iter().enumerate().map(|(i, a)| a * KvHead::f16_value(k, i));
            let (ms, w) = softmax_step(dot.sum::<f32>() * scale, softcap, &mut state.max[h]);
            state.sum[h] = state.sum[h].mul_add(ms, w);
            for (i, a) in state.acc[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                *a = fa_step(*a, KvHead::f16_value(v, i), (ms, w), rounding);
            }
        }
    }
}

/// Cells per tile of llama.cpp's tiled flash attention (`GGML_FA_TILE_KV`).
pub const FA_TILE_KV: usize = 64;
/// Cells per block of the one-row attention kernel (scores, then softmax steps, then
/// values).
pub const FA_BLOCK: usize = 16;

/// Runs `f` with a pointer to at least `len` floats of this thread's scratch memory
/// (kept between calls, so the attention kernels neither allocate nor clear per call).
fn with_scratch<R>(len: usize, f: impl FnOnce(*mut f32) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(s.as_mut_ptr())
    })
}

/// The running state of an attention with f32 accumulators (llama.cpp's tiled path, and
/// its one-row path over a quantized cache) for `g` query heads: the accumulators
/// (`g × hd`), and per head the running maximum and the sum of the weights.
pub struct SoftmaxF32<'a> {
    /// Accumulated values.
    pub acc: &'a mut [f32],
    /// Running maximum of each head's scores.
    pub max: &'a mut [f32],
    /// Each head's sum of `exp(score - max)`.
    pub sum: &'a mut [f32],
}

/// llama.cpp's CPU flash attention, tiled path (64 query rows or more), for the
/// `g = state.max.len()` query heads in `q` (`g × hd`, f32) that share the KV head `kv`,
/// over the visible cells `cells` (ascending; tile `t` is cells `64t..64t + 64` of the
/// cache): per tile every head's scores (soft-capped as in [`attend_heads_f16`]), the
/// running maximum moved once to the tile's (the accumulator and sum rescaled), the tile's
/// weights `exp(score - max)` summed in f64 (as `ggml_vec_soft_max_f32`) and their values
/// added to an f32 accumulator. The heads share each cell's key and value loads.
pub fn attend_heads_tiled(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: SoftmaxF32<'_>,
) {
    assert_eq!(kv.ty, KvType::F16, "an F16 cache");
    let (g, hd) =
        check_attention(q, kv, cells, (state.acc.len(), state.max.len(), state.sum.len()));
    assert!(cells.windows(2).all(|w| w[0] < w[1]), "cells out of order");
    if hd.is_multiple_of(8) && hd <= 256 && g <= 64 {
        let (k, v) = (kv.k.as_ptr(), kv.v.as_ptr());
        let dims = (kv.kv_dim, kv.offset);
        let SoftmaxF32 { acc, max, sum } = state;
        with_scratch(g * FA_TILE_KV, |scratch| {
            dispatch!(
                isa(),
                attend_heads_tiled(
                    q,
                    (k, v),
                    dims,
                    cells,
                    (scale, softcap),
                    acc,
                    (max, sum),
                    scratch
                ),
                attend_heads_tiled_portable(
                    q,
                    kv,
                    cells,
                    (scale, softcap),
                    SoftmaxF32 { acc, max, sum }
                )
            );
        });
    } else {
        attend_heads_tiled_portable(q, kv, cells, (scale, softcap), state);
    }
}

fn attend_heads_tiled_portable(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: SoftmaxF32<'_>,
) {
    let g = state.max.len();
    let hd = q.len() / g;
    let mut weights = vec![0f32; FA_TILE_KV];
    for tile in cells.chunk_by(|a, b| a / FA_TILE_KV as u32 == b / FA_TILE_KV as u32) {
        for h in 0..g {
            let qh = &q[h * hd..(h + 1) * hd];
            for (w, &cell) in weights.iter_mut().zip(tile) {
                let k = kv.head(kv.k, cell, hd);
                let dot = qh.iter().enumerate().map(|(i, a)| a * KvHead::f16_value(k, i));
                let mut sc = dot.sum::<f32>() * scale;
                if softcap != 0.0 {
                    sc = softcap * sc.tanh();
                }
                *w = sc;
            }
            let ws = &mut weights[..tile.len()];
            let tile_max = ws.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let acc = &mut state.acc[h * hd..(h + 1) * hd];
            if tile_max > state.max[h] {
                let ms = (state.max[h] - tile_max).exp();
                acc.iter_mut().for_each(|a| *a *= ms);
                state.sum[h] *= ms;
                state.max[h] = tile_max;
            }
            let mut tile_sum = 0f64;
            for w in ws.iter_mut() {
                *w = (*w - state.max[h]).exp();
                tile_sum += f64::from(*w);
            }
            state.sum[h] += tile_sum as f32;
            for (&w, &cell) in ws.iter().zip(tile) {
                let v = kv.head(kv.v, cell, hd);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += w * KvHead::f16_value(v, i);
                }
            }
        }
    }
}

/// llama.cpp's CPU flash attention over a quantized cache (`kv.ty` Q8_0 or Q4_0), which
/// takes its one-row path for every batch size (`ggml_compute_forward_flash_attn_ext_f16`
/// tiles only F16 and F32 caches), for the `g = state.max.len()` query heads in `q` (`g ×
/// hd`, f32) that share the KV head `kv`, over the cells `cells` in order: each head's
/// query quantized to Q8_0 (K's dot type), per cell the score as
/// `ggml_vec_dot_q8_0_q8_0`/`ggml_vec_dot_q4_0_q8_0` times `scale` (soft-capped as in
/// [`attend_heads_f16`]), then the online softmax step: on a new maximum the f32
/// accumulator scaled by `ms = exp(old - new)`, then the cell's value (dequantized once
/// for all heads) added as `fma(v, w, acc)`, and the sum `sum·ms + w`. At the SIMD levels
/// every step is ggml's to the bit; the heads share each cell's loads.
pub fn attend_heads_quantized(
    q: &[f32],
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: SoftmaxF32<'_>,
) {
    assert!(kv.ty.is_quantized(), "a quantized cache");
    let (g, hd) =
        check_attention(q, kv, cells, (state.acc.len(), state.max.len(), state.sum.len()));
    thread_local! {
        static QUERY: std::cell::RefCell<Q8Rows> = std::cell::RefCell::new(Q8Rows::default());
    }
    QUERY.with(|rows| {
        let rows = &mut *rows.borrow_mut();
        rows.resize(g, hd);
        // Blocks of 32 never straddle two heads, so the heads quantize as one row.
        quantize_row_q8_0(q, &mut rows.qs, &mut rows.d, &mut rows.s, &mut rows.c);
        if hd <= 256 && g <= 64 {
            let dims = (kv.row_bytes(), kv.ty.row_bytes(kv.offset), kv.ty == KvType::Q4_0);
            let SoftmaxF32 { acc, max, sum } = state;
            with_scratch(2 * g * FA_BLOCK, |scratch| {
                dispatch!(
                    isa(),
                    attend_heads_quantized(
                        (&rows.qs, &rows.d),
                        (kv.k.as_ptr(), kv.v.as_ptr()),
                        dims,
                        cells,
                        (scale, softcap),
                        acc,
                        (max, sum),
                        scratch
                    ),
                    attend_heads_quantized_portable(
                        rows,
                        kv,
                        cells,
                        (scale, softcap),
                        SoftmaxF32 { acc, max, sum }
                    )
                );
            });
        } else {
            attend_heads_quantized_portable(rows, kv, cells, (scale, softcap), state);
        }
    });
}

fn attend_heads_quantized_portable(
    query: &Q8Rows,
    kv: KvHead<'_>,
    cells: &[u32],
    (scale, softcap): (f32, f32),
    state: SoftmaxF32<'_>,
) {
    let g = state.max.len();
    let hd = query.k;
    let mut value = vec![0f32; hd];
    for &cell in cells {
        let k = kv.head(kv.k, cell, hd);
        kv.ty.load(kv.head(kv.v, cell, hd), &mut value);
        for h in 0..g {
            let a = query.row(h);
            let dot = match kv.ty {
                KvType::Q4_0 => dot_q4_0::<1>(Isa::Portable, k, [a]),
                _ => dot_q8_0::<1>(Isa::Portable, k, [a]),
            };
            let acc = &mut state.acc[h * hd..(h + 1) * hd];
            let (ms, w) = softmax_step(dot[0] * scale, softcap, &mut state.max[h]);
            if ms != 1.0 {
                acc.iter_mut().for_each(|a| *a *= ms);
            }
            for (a, x) in acc.iter_mut().zip(&value) {
                *a = x.mul_add(w, *a);
            }
            state.sum[h] = state.sum[h].mul_add(ms, w);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID's vendor string, which picks the prefetch default, reads as one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cpu_vendor_is_a_vendor_string() {
        let v = cpu_vendor();
        assert!(v.iter().all(u8::is_ascii_graphic), "{v:?}");
    }

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

    /// The interleaved Q4_0 and Q5_0 kernels over 8 rows equal the row kernels on each
    /// row (to float summation order), for 1 and 4 tokens at every level.
    #[test]
    fn interleaved_q4_0_q5_0_and_q8_0_equal_row_dots() {
        use corral_gguf::types::GgmlType;
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Kind {
            Q4_0,
            Q5_0,
            Q8_0,
            /// Q8_0 rows of random bytes: -128 included, which no quantizer writes.
            Q8_0Raw,
        }
        for kind in [Kind::Q4_0, Kind::Q5_0, Kind::Q8_0, Kind::Q8_0Raw] {
            let (ty, bytes, packed_bytes) = match kind {
                Kind::Q5_0 => (GgmlType::Q5_0, crate::kquants::Q5_0_BYTES, Q5_0_X8_BYTES),
                Kind::Q4_0 => (GgmlType::Q4_0, Q4_0_BYTES, Q4_0_X8_BYTES),
                Kind::Q8_0 | Kind::Q8_0Raw => (GgmlType::Q8_0, Q8_0_BYTES, Q8_0_X8_BYTES),
            };
            let mut seed = 9;
            let k = 5 * QK;
            let rows: Vec<Vec<u8>> = (0..Q4_0_GROUP)
                .map(|r| {
                    let w: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
                    let mut q = vec![0u8; k / QK * bytes];
                    corral_gguf::quant::quantize(ty, &w, &mut q).expect("quantize");
                    if kind == Kind::Q8_0Raw {
                        for (i, b) in q.iter_mut().enumerate() {
                            if i % Q8_0_BYTES >= 2 {
                                *b = (lcg(&mut seed) * 128.0) as i8 as u8;
                            }
                        }
                        q[2 + r] = 0x80;
                    }
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
            let row_refs = std::array::from_fn(|r| rows[r].as_slice());
            let mut packed = vec![0u8; nb * packed_bytes];
            match kind {
                Kind::Q5_0 => repack_q5_0_x8(row_refs, nb, &mut packed),
                Kind::Q4_0 => repack_q4_0_x8(row_refs, nb, &mut packed),
                Kind::Q8_0 | Kind::Q8_0Raw => repack_q8_0_x8(row_refs, nb, &mut packed),
            }
            let a: [ActRow<'_>; 4] = std::array::from_fn(|t| acts.row(t));
            for isa in Isa::available() {
                let (four, one) = match kind {
                    Kind::Q5_0 => (
                        gemm_q5_0_x8::<4>(isa, &packed, a),
                        gemm_q5_0_x8::<1>(isa, &packed, [a[2]]),
                    ),
                    Kind::Q4_0 => (
                        gemm_q4_0_x8::<4>(isa, &packed, a),
                        gemm_q4_0_x8::<1>(isa, &packed, [a[2]]),
                    ),
                    Kind::Q8_0 | Kind::Q8_0Raw => (
                        gemm_q8_0_x8::<4>(isa, &packed, a),
                        gemm_q8_0_x8::<1>(isa, &packed, [a[2]]),
                    ),
                };
                let mut groups = [[[0f32; Q4_0_GROUP]; 4]; 2];
                let twice = [packed.clone(), packed.clone()].concat();
                match kind {
                    Kind::Q5_0 => gemm_q5_0_x8_groups::<4>(isa, &twice, a, &mut groups),
                    Kind::Q4_0 => gemm_q4_0_x8_groups::<4>(isa, &twice, a, &mut groups),
                    Kind::Q8_0 | Kind::Q8_0Raw => {
                        gemm_q8_0_x8_groups::<4>(isa, &twice, a, &mut groups);
                    }
                }
                assert_eq!(groups[0], four, "{kind:?} {isa:?}: groups differ from one call");
                assert_eq!(groups[1], four, "{kind:?} {isa:?}: groups differ from one call");
                for (r, row) in rows.iter().enumerate() {
                    let want = match kind {
                        Kind::Q5_0 => crate::kquants::dot_q5_0::<4>(Isa::Portable, row, a),
                        Kind::Q4_0 => dot_q4_0::<4>(Isa::Portable, row, a),
                        Kind::Q8_0 | Kind::Q8_0Raw => dot_q8_0::<4>(Isa::Portable, row, a),
                    };
                    for t in 0..4 {
                        let tol = 1e-5 * want[t].abs().max(1.0);
                        assert!(
                            (four[t][r] - want[t]).abs() <= tol,
                            "{kind:?} {isa:?} row {r} token {t}: {} vs {}",
                            four[t][r],
                            want[t]
                        );
                    }
                    assert!((one[0][r] - want[2]).abs() <= 1e-5 * want[2].abs().max(1.0));
                }
            }
        }
    }

    /// Attention of one query head over `cells` in f64: the softmax of
    /// `q·k·scale` (soft-capped when `softcap` is not 0) times the values.
    fn reference_attention(
        qh: &[f32],
        kv: KvHead<'_>,
        cells: &[u32],
        scale: f32,
        softcap: f32,
    ) -> Vec<f64> {
        let hd = qh.len();
        let values = |store, c| {
            let mut x = vec![0f32; hd];
            kv.ty.load(kv.head(store, c, hd), &mut x);
            x
        };
        let scores: Vec<f64> = cells
            .iter()
            .map(|&c| {
                let k = values(kv.k, c);
                let d: f64 = (0..hd).map(|i| f64::from(qh[i]) * f64::from(k[i])).sum();
                let sc = d * f64::from(scale);
                if softcap != 0.0 { f64::from(softcap) * sc.tanh() } else { sc }
            })
            .collect();
        let m = scores.iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        let mut out = vec![0f64; hd];
        for (&c, s) in cells.iter().zip(&scores) {
            for (o, v) in out.iter_mut().zip(values(kv.v, c)) {
                *o += (s - m).exp() / z * f64::from(v);
            }
        }
        out
    }

    /// Random keys and values, `n` of each, stored as `ty`.
    fn random_kv(seed: &mut u64, n: usize, ty: KvType) -> (Vec<u8>, Vec<u8>) {
        let row = |seed: &mut u64| {
            let x: Vec<f32> = (0..n).map(|_| lcg(seed)).collect();
            let mut bytes = vec![0u8; ty.row_bytes(n)];
            ty.store(&x, &mut bytes);
            bytes
        };
        (row(seed), row(seed))
    }

    /// Queries of `q.len() / head_dim` heads sharing one KV head, over `cells`.
    struct AttentionCase<'a> {
        head_dim: usize,
        q: &'a [f32],
        kv: KvHead<'a>,
        cells: &'a [u32],
        scale: f32,
        softcap: f32,
    }

    impl AttentionCase<'_> {
        /// Every head's portable output within `to_reference` of the f64 softmax, and the
        /// SIMD output within `to_portable` of the portable one.
        fn assert_heads(
            &self,
            portable: &[f32],
            simd: &[f32],
            (to_reference, to_portable): (f64, f32),
        ) {
            let hd = self.head_dim;
            for h in 0..self.q.len() / hd {
                let qh = &self.q[h * hd..(h + 1) * hd];
                let want = reference_attention(qh, self.kv, self.cells, self.scale, self.softcap);
                for (i, want) in want.into_iter().enumerate() {
                    let (p, x) = (portable[h * hd + i], simd[h * hd + i]);
                    assert!(
                        (f64::from(p) - want).abs() < to_reference,
                        "head {h} [{i}]: {p} vs {want}"
                    );
                    assert!((p - x).abs() < to_portable, "head {h} [{i}]: portable {p} simd {x}");
                }
            }
        }
    }

    /// The attention kernel at every level equals the portable one (to the summation
    /// order of the scores) and a plain f64 softmax-weighted sum (to f16 accumulation),
    /// with and without soft-capping, for 1 and 4 heads sharing a KV head, in both of
    /// llama.cpp's roundings.
    #[test]
    fn attention_heads_agree_at_every_level_and_with_a_plain_softmax() {
        let mut seed = 5;
        let (hd, kv_dim, cells_n) = (64, 3 * 64, 37);
        let (k, v) = random_kv(&mut seed, cells_n * kv_dim, KvType::F16);
        // Cells out of order and some skipped, as a sliding window or a cache with holes.
        let cells: Vec<u32> = (0..cells_n as u32).rev().filter(|c| c % 5 != 2).collect();
        let kv = KvHead { ty: KvType::F16, k: &k, v: &v, kv_dim, offset: hd };
        for g in [1usize, 4] {
            let mut q: Vec<f32> = (0..g * hd).map(|_| lcg(&mut seed) * 2.0).collect();
            round_f16(&mut q);
            for (softcap, rounding) in [0.0f32, 5.0]
                .into_iter()
                .flat_map(|c| [(c, FaRounding::F32Fma), (c, FaRounding::F16Native)])
            {
                let scale = if softcap != 0.0 { 0.125 / softcap } else { 0.125 };
                let run = |isa: Isa| {
                    let mut acc = vec![f16::ZERO; g * hd];
                    let (mut max, mut sum) = (vec![f32::NEG_INFINITY; g], vec![0f32; g]);
                    let state = OnlineSoftmax { acc: &mut acc, max: &mut max, sum: &mut sum };
                    let scale = (scale, softcap);
                    if isa == Isa::Portable {
                        attend_heads_f16_portable(&q, kv, &cells, scale, state, rounding);
                    } else {
                        assert!(isa <= Isa::detected());
                        attend_heads_f16_rounded(&q, kv, &cells, scale, state, rounding);
                    }
                    (0..g * hd).map(|i| acc[i].to_f32() / sum[i / hd]).collect::<Vec<f32>>()
                };
                let (portable, simd) = (run(Isa::Portable), run(Isa::detected()));
                let case = AttentionCase { head_dim: hd, q: &q, kv, cells: &cells, scale, softcap };
                case.assert_heads(&portable, &simd, (5e-3, 2e-3));
            }
        }
    }

    /// The tiled attention kernel at every level equals the portable one and a plain f64
    /// softmax-weighted sum, over cells in three tiles with holes, with and without
    /// soft-capping, for 1 and 8 heads sharing a KV head.
    #[test]
    fn tiled_attention_agrees_at_every_level_and_with_a_plain_softmax() {
        let mut seed = 11;
        let (hd, kv_dim, cells_n) = (64, 2 * 64, 150);
        let (k, v) = random_kv(&mut seed, cells_n * kv_dim, KvType::F16);
        let cells: Vec<u32> =
            (0..cells_n as u32).filter(|c| c % 7 != 3 && !(70..90).contains(c)).collect();
        let kv = KvHead { ty: KvType::F16, k: &k, v: &v, kv_dim, offset: hd };
        for g in [1usize, 8] {
            let q: Vec<f32> = (0..g * hd).map(|_| lcg(&mut seed) * 2.0).collect();
            for softcap in [0.0f32, 5.0] {
                let scale = if softcap != 0.0 { 0.125 / softcap } else { 0.125 };
                let run = |portable: bool| {
                    let mut acc = vec![0f32; g * hd];
                    let (mut max, mut sum) = (vec![f32::NEG_INFINITY; g], vec![0f32; g]);
                    let state = SoftmaxF32 { acc: &mut acc, max: &mut max, sum: &mut sum };
                    if portable {
                        attend_heads_tiled_portable(&q, kv, &cells, (scale, softcap), state);
                    } else {
                        attend_heads_tiled(&q, kv, &cells, (scale, softcap), state);
                    }
                    (0..g * hd).map(|i| acc[i] / sum[i / hd]).collect::<Vec<f32>>()
                };
                let (portable, simd) = (run(true), run(false));
                let case = AttentionCase { head_dim: hd, q: &q, kv, cells: &cells, scale, softcap };
                case.assert_heads(&portable, &simd, (1e-5, 1e-5));
            }
        }
    }

    /// Attention over a Q8_0 or Q4_0 cache at the detected level equals the portable
    /// kernel (to the summation order of the scores) and a plain f64 softmax over the
    /// dequantized keys and values (to the query's Q8_0 rounding), with and without
    /// soft-capping, for 1 and 4 heads sharing a KV head of 64 and of 256 values, over
    /// cells out of order with holes.
    #[test]
    fn quantized_attention_agrees_at_every_level_and_with_a_plain_softmax() {
        let mut seed = 23;
        for ty in [KvType::Q8_0, KvType::Q4_0] {
            for hd in [64usize, 256] {
                let (kv_dim, cells_n) = (2 * hd, 45);
                let (k, v) = random_kv(&mut seed, cells_n * kv_dim, ty);
                let cells: Vec<u32> = (0..cells_n as u32).rev().filter(|c| c % 6 != 1).collect();
                let kv = KvHead { ty, k: &k, v: &v, kv_dim, offset: hd };
                for g in [1usize, 4] {
                    let q: Vec<f32> = (0..g * hd).map(|_| lcg(&mut seed) * 2.0).collect();
                    for softcap in [0.0f32, 5.0] {
                        let scale = if softcap != 0.0 { 0.125 / softcap } else { 0.125 };
                        let run = |portable: bool| {
                            let mut acc = vec![0f32; g * hd];
                            let (mut max, mut sum) = (vec![f32::NEG_INFINITY; g], vec![0f32; g]);
                            let state = SoftmaxF32 { acc: &mut acc, max: &mut max, sum: &mut sum };
                            if portable {
                                let mut rows = Q8Rows::default();
                                rows.resize(g, hd);
                                let Q8Rows { qs, d, s, c, .. } = &mut rows;
                                quantize_row_q8_0(&q, qs, d, s, c);
                                attend_heads_quantized_portable(
                                    &rows,
                                    kv,
                                    &cells,
                                    (scale, softcap),
                                    state,
                                );
                            } else {
                                attend_heads_quantized(&q, kv, &cells, (scale, softcap), state);
                            }
                            (0..g * hd).map(|i| acc[i] / sum[i / hd]).collect::<Vec<f32>>()
                        };
                        let (portable, simd) = (run(true), run(false));
                        let case = AttentionCase {
                            head_dim: hd,
                            q: &q,
                            kv,
                            cells: &cells,
                            scale,
                            softcap,
                        };
                        case.assert_heads(&portable, &simd, (2e-2, 1e-5));
                    }
                }
            }
        }
    }

    /// `f16_of_exact_sum` rounds the exact sum of two f32 once: against f64 (where these
    /// sums are exact) on sums that straddle f16 rounding midpoints, of either sign, and
    /// into f16's subnormal range.
    #[test]
    fn f16_of_an_exact_sum_is_rounded_once() {
        let mut seed = 17;
        for i in 0..200_000 {
            let scale = [1.0f32, 1e-3, 1e-6, 300.0][i % 4];
            // An f16 accumulator and the product of two f16 values (exact in f32).
            let a = f16::from_f32(lcg(&mut seed) * scale).to_f32();
            let x = f16::from_f32(lcg(&mut seed) * 4.0).to_f32();
            let w = f16::from_f32(lcg(&mut seed).abs()).to_f32();
            let p = x * w;
            let want = nearest_f16(f64::from(a) + f64::from(p));
            assert_eq!(f16_of_exact_sum(a, p), want, "{a} + {p}");
        }
        // A sum whose f32 rounding lands on an f16 midpoint while the exact sum is above
        // it: rounding twice would go to even (down), once goes up.
        let (a, p) = (1.0f32 + f32::powi(2.0, -11), f32::powi(2.0, -40));
        assert_eq!(f16_of_exact_sum(a, p).to_f32(), 1.0 + f32::powi(2.0, -10));
        assert_eq!(f16::from_f32(a + p).to_f32(), 1.0);
    }

    /// The f16 nearest to `s` (ties to even), chosen among `half`'s conversion and its
    /// neighbours by distance in f64 (`half`'s own conversion from f64 goes through f32, and
    /// so rounds twice).
    fn nearest_f16(s: f64) -> f16 {
        let c = f16::from_f64(s);
        let near = |b: u16| f16::from_bits(b);
        let (bits, sign) = (c.to_bits() & 0x7fff, c.to_bits() & 0x8000);
        let mut candidates = vec![c];
        if bits > 0 {
            candidates.push(near(sign | (bits - 1)));
        }
        if bits < 0x7bff {
            candidates.push(near(sign | (bits + 1)));
        }
        candidates.sort_by(|x, y| {
            let (dx, dy) = ((x.to_f64() - s).abs(), (y.to_f64() - s).abs());
            dx.total_cmp(&dy).then((x.to_bits() & 1).cmp(&(y.to_bits() & 1)))
        });
        candidates[0]
    }

    /// The AVX-512 f16-arithmetic accumulator step equals `fa_step` bit for bit, with and
    /// without a rescale, over a row longer than one vector with a tail.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_f16_accumulate_equals_the_scalar_step() {
        if Isa::detected() < Isa::Avx512Vnni {
            eprintln!("SKIP: no AVX-512 on this CPU");
            return;
        }
        let mut seed = 23;
        let n = 40;
        for round in 0..2000 {
            let acc: Vec<f16> = (0..n).map(|_| f16::from_f32(lcg(&mut seed) * 50.0)).collect();
            let v: Vec<f32> =
                (0..n).map(|_| f16::from_f32(lcg(&mut seed) * 8.0).to_f32()).collect();
            let ms = if round % 2 == 0 { 1.0 } else { lcg(&mut seed).abs() };
            let w = lcg(&mut seed).abs();
            let want: Vec<f16> = acc
                .iter()
                .zip(&v)
                .map(|(&a, &x)| fa_step(a, x, (ms, w), FaRounding::F16Native))
                .collect();
            let mut got = acc.clone();
            // SAFETY: AVX-512 checked above; both rows hold n values.
            unsafe {
                crate::simd::avx512::fa_accumulate_f16(
                    got.as_mut_ptr().cast(),
                    v.as_ptr(),
                    n,
                    (ms, w),
                );
            }
            assert_eq!(got, want, "round {round}");
        }
    }

    /// The f16-arithmetic accumulator step (AVX512-FP16 instructions, straight from f16
    /// values) equals the scalar step bit for bit, the rescale, 32- and 8-wide chunks and
    /// a scalar tail included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn f16_arithmetic_accumulate_equals_the_scalar_step() {
        if Isa::detected() < Isa::Avx512Vnni || !crate::simd::avx512::has_f16_arithmetic() {
            eprintln!("SKIP: no AVX512-FP16 on this CPU");
            return;
        }
        let mut seed = 29;
        for (round, n) in (0..3000).zip([40usize, 64, 44, 8, 256, 3].into_iter().cycle()) {
            let acc: Vec<f16> = (0..n).map(|_| f16::from_f32(lcg(&mut seed) * 50.0)).collect();
            let v: Vec<f16> = (0..n).map(|_| f16::from_f32(lcg(&mut seed) * 8.0)).collect();
            let ms = match round % 3 {
                0 => 1.0,
                1 => lcg(&mut seed).abs(),
                _ => lcg(&mut seed).abs() * 1e-6,
            };
            let w = if round % 7 == 0 { lcg(&mut seed).abs() * 1e-6 } else { lcg(&mut seed).abs() };
            let want: Vec<f16> = acc
                .iter()
                .zip(&v)
                .map(|(&a, &x)| fa_step(a, x.to_f32(), (ms, w), FaRounding::F16Native))
                .collect();
            let mut got = acc.clone();
            // SAFETY: AVX-512 and AVX512-FP16 checked above; both rows hold n values.
            unsafe {
                crate::simd::avx512::fa_accumulate_f16_values(
                    got.as_mut_ptr().cast(),
                    v.as_ptr().cast(),
                    n,
                    (ms, w),
                );
            }
            assert_eq!(got, want, "round {round}, n {n}");
        }
    }

    #[test]
    fn float_dots() {
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
