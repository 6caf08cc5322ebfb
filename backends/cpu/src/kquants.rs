//! ggml's k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: super-blocks of 256 weights with 6- or
//! 8-bit sub-block scales), Q5_0/Q5_1 and BF16: block layouts, dequantization and dot
//! products as ggml computes them.
//!
//! - K-quant weights multiply activations quantized to **Q8_K** (blocks of 256: an f32
//!   scale, 256 signed bytes and the sums of each 16), exactly as ggml's
//!   `quantize_row_q8_K_ref`. The dot products follow ggml's generic reference
//!   (`ggml_vec_dot_q4_K_q8_K_generic` and its siblings): an exact integer sum per
//!   super-block (sub-block scale × Σ q·q8, and for Q2_K/Q4_K/Q5_K the mins through the
//!   activation's `bsums`), scaled once per super-block in f32.
//! - Q5_0/Q5_1 weights multiply the Q8_0 activations of Q4_0/Q8_0 ([`ActRow`]), with
//!   ggml's integer block dot (`ggml_vec_dot_q5_0_q8_0`).
//! - BF16 weights multiply activations rounded to bf16 (ggml converts them so), in f32.
//!
//! The kernels are portable scalar code over blocks unpacked to bytes once per weight block
//! (and shared by every token of a tile); the inner 16-element integer sums are what the
//! compiler vectorizes.

use half::f16;

use crate::kernels::{ActRow, Isa, QK, check_rows, dispatch, q8_blocks};

/// Elements per k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Bytes of a Q2_K block: `u8 scales[16]; u8 qs[64]; f16 d; f16 dmin`.
pub const Q2_K_BYTES: usize = 84;
/// Bytes of a Q3_K block: `u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d`.
pub const Q3_K_BYTES: usize = 110;
/// Bytes of a Q4_K block: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of a Q5_K block: `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of a Q6_K block: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`.
pub const Q6_K_BYTES: usize = 210;
/// Bytes of a Q5_0 block: `f16 d; u8 qh[4]; u8 qs[16]`.
pub const Q5_0_BYTES: usize = 22;
/// Bytes of a Q5_1 block: `f16 d; f16 m; u8 qh[4]; u8 qs[16]`.
pub const Q5_1_BYTES: usize = 24;

/// Rows of activations quantized to Q8_K, struct-of-arrays: row `t` holds
/// `qs[t*k..(t+1)*k]`, scales `d[t*k/256..]` and `bsums[t*k/16..]`.
#[derive(Default)]
pub struct Q8KRows {
    /// Quantized values.
    pub qs: Vec<i8>,
    /// Block scales (`1 / iscale`).
    pub d: Vec<f32>,
    /// Sums of each 16 consecutive values.
    pub bsums: Vec<i16>,
    /// Row length.
    pub k: usize,
}

impl Q8KRows {
    /// Resizes for `n` rows of `k` (a multiple of 256) elements.
    pub fn resize(&mut self, n: usize, k: usize) {
        self.k = k;
        self.qs.resize(n * k, 0);
        self.d.resize(n * k / QK_K, 0.0);
        self.bsums.resize(n * k / 16, 0);
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> Q8KRow<'_> {
        let (k, nb) = (self.k, self.k / QK_K);
        Q8KRow {
            qs: &self.qs[t * k..(t + 1) * k],
            d: &self.d[t * nb..(t + 1) * nb],
            bsums: &self.bsums[t * k / 16..(t + 1) * k / 16],
        }
    }
}

/// One row of Q8_K activations (see [`Q8KRows`]).
#[derive(Clone, Copy)]
pub struct Q8KRow<'a> {
    /// Values.
    pub qs: &'a [i8],
    /// Block scales.
    pub d: &'a [f32],
    /// Sums of each 16 values.
    pub bsums: &'a [i16],
}

/// ggml's `nearest_int`: round half to even through the float adder (|x| < 2^22).
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    debug_assert!(fval.abs() <= 4_194_303.0 || fval.is_nan());
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Quantizes one row (`x.len()` a multiple of 256) to Q8_K exactly as ggml's
/// `quantize_row_q8_K_ref`: the signed value of largest magnitude `max`, `iscale =
/// -127/max`, values `min(127, nearest_int(iscale·x))`, `d = 1/iscale`; an all-zero block
/// gets `d = 0`.
pub fn quantize_row_q8_k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for (b, xb) in x.chunks_exact(QK_K).enumerate() {
        let q = &mut qs[b * QK_K..(b + 1) * QK_K];
        let bs = &mut bsums[b * 16..(b + 1) * 16];
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            d[b] = 0.0;
            q.fill(0);
            bs.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in q.iter_mut().zip(xb) {
            *o = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in bs.iter_mut().zip(q.chunks_exact(16)) {
            *s = g.iter().map(|&v| i16::from(v)).sum();
        }
        d[b] = 1.0 / iscale;
    }
}

#[inline]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a
/// Q4_K/Q5_K block's 12 scale bytes.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 16 6-bit scales of a Q3_K block (before subtracting 32), as ggml unpacks them.
#[inline]
fn q3_k_scales(s: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, a) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&a.to_le_bytes());
    }
    out
}

/// A k-quant super-block unpacked for the integer dot product: 256 small signed values,
/// a scale and a min per 16 values, and the block's float scales.
pub(crate) struct KBlock {
    pub(crate) q: [i8; QK_K],
    pub(crate) sc: [i32; 16],
    pub(crate) mins: [i32; 16],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
}

impl Default for KBlock {
    fn default() -> Self {
        KBlock { q: [0; QK_K], sc: [0; 16], mins: [0; 16], d: 0.0, dmin: 0.0 }
    }
}

fn unpack_q2_k(blk: &[u8], kb: &mut KBlock) {
    let (scales, qs) = (&blk[..16], &blk[16..80]);
    kb.d = f16_at(blk, 80);
    kb.dmin = f16_at(blk, 82);
    for ((sc, m), &s) in kb.sc.iter_mut().zip(&mut kb.mins).zip(scales) {
        *sc = i32::from(s & 0x0f);
        *m = i32::from(s >> 4);
    }
    for h in 0..2 {
        let q2 = &qs[32 * h..32 * h + 32];
        for s in 0..4 {
            let o = &mut kb.q[128 * h + 32 * s..128 * h + 32 * s + 32];
            for (o, &v) in o.iter_mut().zip(q2) {
                *o = ((v >> (2 * s)) & 3) as i8;
            }
        }
    }
}

fn unpack_q3_k(blk: &[u8], kb: &mut KBlock) {
    let (hmask, qs) = (&blk[..32], &blk[32..96]);
    kb.d = f16_at(blk, 108);
    kb.dmin = 0.0;
    for (o, s) in kb.sc.iter_mut().zip(q3_k_scales(&blk[96..108])) {
        *o = i32::from(s) - 32;
    }
    kb.mins = [0; 16];
    for h in 0..2 {
        let q3 = &qs[32 * h..32 * h + 32];
        for s in 0..4 {
            let m = 1u8 << (4 * h + s);
            let o = &mut kb.q[128 * h + 32 * s..128 * h + 32 * s + 32];
            for ((o, &v), &hm) in o.iter_mut().zip(q3).zip(hmask) {
                *o = ((v >> (2 * s)) & 3) as i8 - if hm & m != 0 { 0 } else { 4 };
            }
        }
    }
}

/// Q4_K and Q5_K (with `qh`): 8 sub-blocks of 32 with 6-bit scales and mins.
fn unpack_q45_k(blk: &[u8], qh: Option<&[u8]>, qs: &[u8], kb: &mut KBlock) {
    kb.d = f16_at(blk, 0);
    kb.dmin = f16_at(blk, 2);
    let scales = &blk[4..16];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, scales);
        kb.sc[2 * j] = i32::from(s);
        kb.sc[2 * j + 1] = i32::from(s);
        kb.mins[2 * j] = i32::from(m);
        kb.mins[2 * j + 1] = i32::from(m);
    }
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let (lo, hi) = kb.q[64 * j..64 * j + 64].split_at_mut(32);
        for l in 0..32 {
            lo[l] = (q[l] & 0x0f) as i8;
            hi[l] = (q[l] >> 4) as i8;
        }
        if let Some(qh) = qh {
            for l in 0..32 {
                lo[l] |= (((qh[l] >> (2 * j)) & 1) << 4) as i8;
                hi[l] |= (((qh[l] >> (2 * j + 1)) & 1) << 4) as i8;
            }
        }
    }
}

pub(crate) fn unpack_q4_k(blk: &[u8], kb: &mut KBlock) {
    unpack_q45_k(blk, None, &blk[16..144], kb);
}

fn unpack_q5_k(blk: &[u8], kb: &mut KBlock) {
    unpack_q45_k(blk, Some(&blk[16..48]), &blk[48..176], kb);
}

pub(crate) fn unpack_q6_k(blk: &[u8], kb: &mut KBlock) {
    let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
    kb.d = f16_at(blk, 208);
    kb.dmin = 0.0;
    for (o, &s) in kb.sc.iter_mut().zip(scales) {
        *o = i32::from(s as i8);
    }
    kb.mins = [0; 16];
    for h in 0..2 {
        let (ql, qh) = (&ql[64 * h..64 * h + 64], &qh[32 * h..32 * h + 32]);
        let o = &mut kb.q[128 * h..128 * h + 128];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// Dot products of one k-quant weight row (`bytes` per block, unpacked by `unpack`) with
/// `T` Q8_K activation rows: per super-block the exact integer sum
/// `Σ_g sc[g]·Σ q·q8` and `Σ_g min[g]·bsums[g]`, then
/// `(d·d_y)·isum − (dmin·d_y)·msum` in f32, as ggml's generic kernels.
#[inline(always)]
fn dot_k<const T: usize>(
    w: &[u8],
    a: [Q8KRow<'_>; T],
    bytes: usize,
    unpack: fn(&[u8], &mut KBlock),
) -> [f32; T] {
    let nb = a[0].d.len();
    debug_assert!(w.len() >= nb * bytes);
    let mut kb = KBlock::default();
    let mut out = [0f32; T];
    for b in 0..nb {
        unpack(&w[b * bytes..(b + 1) * bytes], &mut kb);
        for (o, r) in out.iter_mut().zip(&a) {
            let q8 = &r.qs[b * QK_K..(b + 1) * QK_K];
            let bs = &r.bsums[b * 16..(b + 1) * 16];
            let mut isum = 0i32;
            let mut msum = 0i32;
            for g in 0..16 {
                let s: i32 = kb.q[16 * g..16 * g + 16]
                    .iter()
                    .zip(&q8[16 * g..16 * g + 16])
                    .map(|(&x, &y)| i32::from(x) * i32::from(y))
                    .sum();
                isum += kb.sc[g] * s;
                msum += kb.mins[g] * i32::from(bs[g]);
            }
            let yd = r.d[b];
            *o += (kb.d * yd) * isum as f32 - (kb.dmin * yd) * msum as f32;
        }
    }
    out
}

/// Q8_K activation rows' super-block count, after checking them against a weight row.
#[inline]
fn q8k_blocks<const T: usize>(w: &[u8], a: &[Q8KRow<'_>; T], bytes: usize) -> usize {
    let nb = a[0].d.len();
    for r in a {
        assert!(r.d.len() >= nb && r.bsums.len() >= 16 * nb, "activation scales short");
    }
    check_rows(w, nb, bytes, a.map(|r| r.qs.len()), QK_K);
    nb
}

/// Dot products of one Q2_K weight row with `T` Q8_K activation rows, at level `isa`.
#[inline]
pub fn dot_q2_k<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T]) -> [f32; T] {
    let nb = q8k_blocks(w, &a, Q2_K_BYTES);
    dispatch!(isa, dot_q2_k::<T>(w, a, nb), dot_k(w, a, Q2_K_BYTES, unpack_q2_k))
}

/// Dot products of one Q3_K weight row with `T` Q8_K activation rows, at level `isa`.
#[inline]
pub fn dot_q3_k<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T]) -> [f32; T] {
    let nb = q8k_blocks(w, &a, Q3_K_BYTES);
    dispatch!(isa, dot_q3_k::<T>(w, a, nb), dot_k(w, a, Q3_K_BYTES, unpack_q3_k))
}

/// Dot products of one Q4_K weight row with `T` Q8_K activation rows, at level `isa`.
#[inline]
pub fn dot_q4_k<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T]) -> [f32; T] {
    let nb = q8k_blocks(w, &a, Q4_K_BYTES);
    dispatch!(isa, dot_q4_k::<T>(w, a, nb), dot_k(w, a, Q4_K_BYTES, unpack_q4_k))
}

/// Dot products of one Q5_K weight row with `T` Q8_K activation rows, at level `isa`.
#[inline]
pub fn dot_q5_k<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T]) -> [f32; T] {
    let nb = q8k_blocks(w, &a, Q5_K_BYTES);
    dispatch!(isa, dot_q5_k::<T>(w, a, nb), dot_k(w, a, Q5_K_BYTES, unpack_q5_k))
}

/// Dot products of one Q6_K weight row with `T` Q8_K activation rows, at level `isa`.
#[inline]
pub fn dot_q6_k<const T: usize>(isa: Isa, w: &[u8], a: [Q8KRow<'_>; T]) -> [f32; T] {
    let nb = q8k_blocks(w, &a, Q6_K_BYTES);
    dispatch!(isa, dot_q6_k::<T>(w, a, nb), dot_k(w, a, Q6_K_BYTES, unpack_q6_k))
}

/// `out[r] = w_r · a` for the `out.len()` k-quant rows of `row_bytes` at the start of
/// `w`, all of type `ty` (Q2_K to Q6_K), against `T` Q8_K activation rows, at level
/// `isa`. The bounds are checked once for the whole range.
pub fn rows_q8k<const T: usize>(
    isa: Isa,
    ty: crate::weights::WType,
    w: &[u8],
    row_bytes: usize,
    a: [Q8KRow<'_>; T],
    out: &mut [[f32; T]],
) {
    use crate::weights::WType;
    let (bytes, kind): (usize, u8) = match ty {
        WType::Q2_K => (Q2_K_BYTES, 2),
        WType::Q3_K => (Q3_K_BYTES, 3),
        WType::Q4_K => (Q4_K_BYTES, 4),
        WType::Q5_K => (Q5_K_BYTES, 5),
        _ => (Q6_K_BYTES, 6),
    };
    if out.is_empty() {
        return;
    }
    assert!(w.len() >= out.len() * row_bytes, "weight rows outside the slice");
    let nb = q8k_blocks(&w[..row_bytes.min(w.len())], &a, bytes);
    assert!(nb * bytes <= row_bytes, "rows shorter than their blocks");
    match (isa.min(Isa::detected()), kind) {
        (Isa::Portable, _) => {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * row_bytes..(r + 1) * row_bytes];
                *o = match kind {
                    2 => dot_q2_k::<T>(Isa::Portable, row, a),
                    3 => dot_q3_k::<T>(Isa::Portable, row, a),
                    4 => dot_q4_k::<T>(Isa::Portable, row, a),
                    5 => dot_q5_k::<T>(Isa::Portable, row, a),
                    _ => dot_q6_k::<T>(Isa::Portable, row, a),
                };
            }
        }
        (_, 2) => dispatch!(isa, rows_q8k::<T, 2>(w, row_bytes, a, nb, out), ()),
        (_, 3) => dispatch!(isa, rows_q8k::<T, 3>(w, row_bytes, a, nb, out), ()),
        (_, 4) => dispatch!(isa, rows_q8k::<T, 4>(w, row_bytes, a, nb, out), ()),
        (_, 5) => dispatch!(isa, rows_q8k::<T, 5>(w, row_bytes, a, nb, out), ()),
        _ => dispatch!(isa, rows_q8k::<T, 6>(w, row_bytes, a, nb, out), ()),
    }
}

/// Rows of a Q4_K matrix the interleaved kernel handles at once.
pub const Q4K_GROUP: usize = 8;
/// Bytes of one super-block of [`Q4K_GROUP`] Q4_K rows in the interleaved layout that
/// [`repack_q4_k_x8`] makes at load time: the 8 rows' 1,152 bytes plus 32 (their scales
/// and mins unpacked to bytes).
pub const Q4K_X8_BYTES: usize = 1024 + 64 + 64 + 16 + 16;

/// Interleaves super-blocks of 8 Q4_K rows for [`gemm_q4_k_x8`], the layout the engine
/// keeps Q4_K matmul weights in after load (llama.cpp's `block_q4_Kx8` idea, in this
/// engine's own layout). Per super-block ([`Q4K_X8_BYTES`]):
///
/// - 1,024 bytes of nibbles: for sub-block `j` (32 values) and quarter `q`, 32 bytes
///   whose byte `4r + i` holds value `4q + i` of row `r` in its low nibble and value
///   `16 + 4q + i` in its high nibble, so one load and a mask give the 4 values of every
///   row that one broadcast activation chunk multiplies;
/// - 64 bytes of sub-block scales, `[j][r]`; 64 bytes of mins, `[j / 2][r][j % 2]`;
/// - the rows' `d`, then `dmin`, as f16.
///
/// Compared with the rows it replaces it reads 2.8% more bytes and decodes no 6-bit
/// fields per token.
pub fn repack_q4_k_x8(rows: [&[u8]; Q4K_GROUP], nb: usize, out: &mut [u8]) {
    assert!(out.len() >= nb * Q4K_X8_BYTES, "repack output too short");
    for row in rows {
        assert!(row.len() >= nb * Q4_K_BYTES, "Q4_K row shorter than its blocks");
    }
    for b in 0..nb {
        let o = &mut out[b * Q4K_X8_BYTES..(b + 1) * Q4K_X8_BYTES];
        let (qs, rest) = o.split_at_mut(1024);
        let (scales, rest) = rest.split_at_mut(64);
        let (mins, rest) = rest.split_at_mut(64);
        let (d, dmin) = rest.split_at_mut(16);
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * Q4_K_BYTES..(b + 1) * Q4_K_BYTES];
            let value = |j: usize, l: usize| (blk[16 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0f;
            for j in 0..8 {
                for q in 0..4 {
                    for i in 0..4 {
                        qs[(4 * j + q) * 32 + 4 * r + i] =
                            value(j, 4 * q + i) | (value(j, 16 + 4 * q + i) << 4);
                    }
                }
                let (s, m) = scale_min_k4(j, &blk[4..16]);
                scales[8 * j + r] = s;
                mins[16 * (j / 2) + 2 * r + j % 2] = m;
            }
            d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            dmin[2 * r..2 * r + 2].copy_from_slice(&blk[2..4]);
        }
    }
}

/// `T` Q8_K activation rows times 8 Q4_K rows in the layout of [`repack_q4_k_x8`]:
/// `out[t][r]`, at level `isa`. The integer sums are the row kernel's; only the float
/// summation order differs.
#[inline]
pub fn gemm_q4_k_x8<const T: usize>(
    isa: Isa,
    packed: &[u8],
    a: [Q8KRow<'_>; T],
) -> [[f32; Q4K_GROUP]; T] {
    let nb = q8k_blocks(packed, &a, Q4K_X8_BYTES);
    dispatch!(
        isa,
        gemm_q4_k_x8::<T, false>(packed, a, nb),
        gemm_q4_k_x8_portable::<T, false>(packed, a, nb)
    )
}

/// [`gemm_q4_k_x8`] over consecutive groups of 8 rows (`packed` holds `out.len()` groups
/// of `a`'s super-block count each), one dispatch for all of them: `out[g][t][r]`. With
/// `C` the floats follow ggml's repacked gemm (`ggml_gemm_q4_K_8x8_q8_K`, which takes a
/// batch's tokens in fours): one fused multiply-add per 64 values, the agreement mode's
/// order ([`crate::ggml_order`]); without it one per super-block, which for single
/// tokens is ggml's gemv order too.
pub fn gemm_q4_k_x8_groups<const T: usize, const C: bool>(
    isa: Isa,
    packed: &[u8],
    a: [Q8KRow<'_>; T],
    out: &mut [[[f32; Q4K_GROUP]; T]],
) {
    let nb = a[0].d.len();
    let group = nb * Q4K_X8_BYTES;
    assert!(packed.len() >= out.len() * group, "packed groups shorter than the output");
    if out.is_empty() {
        return;
    }
    q8k_blocks(&packed[..group], &a, Q4K_X8_BYTES);
    dispatch!(isa, gemm_q4_k_x8_groups::<T, C>(packed, a, nb, out), {
        for (g, o) in out.iter_mut().enumerate() {
            *o = gemm_q4_k_x8_portable::<T, C>(&packed[g * group..(g + 1) * group], a, nb);
        }
    });
}

fn gemm_q4_k_x8_portable<const T: usize, const C: bool>(
    packed: &[u8],
    a: [Q8KRow<'_>; T],
    nb: usize,
) -> [[f32; Q4K_GROUP]; T] {
    // acc - acc_min, as the SIMD kernels (and ggml) keep them.
    let mut acc = [[0f32; Q4K_GROUP]; T];
    let mut acc_min = [[0f32; Q4K_GROUP]; T];
    for b in 0..nb {
        let g = &packed[b * Q4K_X8_BYTES..(b + 1) * Q4K_X8_BYTES];
        for r in 0..Q4K_GROUP {
            let d = f16_at(g, 1152 + 2 * r);
            let dmin = f16_at(g, 1168 + 2 * r);
            for (t, y) in a.iter().enumerate() {
                let q8 = &y.qs[b * QK_K..(b + 1) * QK_K];
                let yd = y.d[b];
                let (mut isum, mut msum) = (0i32, 0i32);
                for j in 0..8 {
                    let mut s = 0i32;
                    for q in 0..4 {
                        for i in 0..4 {
                            let v = g[(4 * j + q) * 32 + 4 * r + i];
                            s += i32::from(v & 0x0f) * i32::from(q8[32 * j + 4 * q + i]);
                            s += i32::from(v >> 4) * i32::from(q8[32 * j + 16 + 4 * q + i]);
                        }
                    }
                    isum += i32::from(g[1024 + 8 * j + r]) * s;
                    let bs =
                        i32::from(y.bsums[16 * b + 2 * j]) + i32::from(y.bsums[16 * b + 2 * j + 1]);
                    msum += i32::from(g[1088 + 16 * (j / 2) + 2 * r + j % 2]) * bs;
                    if C && j % 2 == 1 {
                        acc[t][r] = (isum as f32).mul_add(d * yd, acc[t][r]);
                        acc_min[t][r] = (msum as f32).mul_add(dmin * yd, acc_min[t][r]);
                        (isum, msum) = (0, 0);
                    }
                }
                if !C {
                    acc[t][r] = (isum as f32).mul_add(d * yd, acc[t][r]);
                    acc_min[t][r] = (msum as f32).mul_add(dmin * yd, acc_min[t][r]);
                }
            }
        }
    }
    std::array::from_fn(|t| std::array::from_fn(|r| acc[t][r] - acc_min[t][r]))
}

/// The 32 5-bit values of a Q5_0/Q5_1 block (`qh` the 32 high bits, `qs` 16 bytes of
/// nibbles), unsigned, in element order.
#[inline(always)]
fn q5_values(qh: u32, qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        q[j] = (qs[j] & 0x0f) | h0 as u8;
        q[j + 16] = (qs[j] >> 4) | h1 as u8;
    }
    q
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Dot products of one Q5_0 weight row with `T` Q8_0 activation rows: per block
/// `sumi = Σ (q5 − 16)·q8`, `sumf += (d_x·d_y)·sumi` (ggml's `ggml_vec_dot_q5_0_q8_0`), at level `isa`.
#[inline]
pub fn dot_q5_0<const T: usize>(isa: Isa, w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = q8_blocks(w, &a, Q5_0_BYTES);
    dispatch!(isa, dot_q5_0::<T>(w, a, nb), dot_q5_0_portable(w, a, nb))
}

fn dot_q5_0_portable<const T: usize>(w: &[u8], a: [ActRow<'_>; T], nb: usize) -> [f32; T] {
    let mut out = [0f32; T];
    for b in 0..nb {
        let blk = &w[b * Q5_0_BYTES..(b + 1) * Q5_0_BYTES];
        let dw = f16_at(blk, 0);
        let q = q5_values(u32_at(blk, 2), &blk[6..22]).map(|v| v as i8 - 16);
        for (o, r) in out.iter_mut().zip(&a) {
            let q8 = &r.qs[b * QK..(b + 1) * QK];
            let sum: i32 = q.iter().zip(q8).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            *o += sum as f32 * (dw * r.d[b]);
        }
    }
    out
}

/// Dot products of one Q5_1 weight row with `T` Q8_0 activation rows: per block
/// `(d_x·d_y)·Σ q5·q8 + m_x·s_y` with `s_y = d_y·Σ q8` (ggml's `ggml_vec_dot_q5_1_q8_1`,
/// with the activation sum kept in f32 where Q8_1 stores it as f16).
#[inline]
pub fn dot_q5_1<const T: usize>(isa: Isa, w: &[u8], a: [ActRow<'_>; T]) -> [f32; T] {
    let nb = q8_blocks(w, &a, Q5_1_BYTES);
    dispatch!(isa, dot_q5_1::<T>(w, a, nb), dot_q5_1_portable(w, a, nb))
}

fn dot_q5_1_portable<const T: usize>(w: &[u8], a: [ActRow<'_>; T], nb: usize) -> [f32; T] {
    let mut out = [0f32; T];
    for b in 0..nb {
        let blk = &w[b * Q5_1_BYTES..(b + 1) * Q5_1_BYTES];
        let (dw, mw) = (f16_at(blk, 0), f16_at(blk, 2));
        let q = q5_values(u32_at(blk, 4), &blk[8..24]);
        for (o, r) in out.iter_mut().zip(&a) {
            let q8 = &r.qs[b * QK..(b + 1) * QK];
            let sum: i32 = q.iter().zip(q8).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            *o += sum as f32 * (dw * r.d[b]) + mw * r.s[b];
        }
    }
    out
}

/// Rounds an f32 to bf16 as ggml's `GGML_FP32_TO_BF16` (nearest, ties to even; NaN kept
/// quiet), returned widened back to f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    let h = if (u & 0x7fff_ffff) > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u + (0x7fff + ((u >> 16) & 1))) >> 16
    };
    f32::from_bits(h << 16)
}

#[inline(always)]
fn bf16_at(w: &[u8], i: usize) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])) << 16)
}

/// Dot product of a BF16 weight row (raw little-endian bytes) with an F32 row (already
/// rounded to bf16 by the caller, as ggml converts activations for BF16 weights).
#[inline]
pub fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    debug_assert!(w.len() >= x.len() * 2);
    // Eight partial sums, so that the compiler can keep them in one vector.
    let mut acc = [0f32; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            let i = 8 * c + l;
            *a += bf16_at(w, i) * x[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (i, v) in x.iter().enumerate().skip(8 * chunks) {
        s += bf16_at(w, i) * v;
    }
    s
}

/// Dequantizes `out.len() / 256` Q2_K blocks.
pub fn dequantize_q2_k(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q2_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (scales, qs) = (&blk[..16], &blk[16..80]);
        let (d, min) = (f16_at(blk, 80), f16_at(blk, 82));
        for h in 0..2 {
            let q = &qs[32 * h..32 * h + 32];
            for s in 0..4 {
                for half in 0..2 {
                    let sc = scales[8 * h + 2 * s + half];
                    let dl = d * f32::from(sc & 0x0f);
                    let ml = min * f32::from(sc >> 4);
                    let at = 128 * h + 32 * s + 16 * half;
                    for l in 0..16 {
                        let v = (q[16 * half + l] >> (2 * s)) & 3;
                        y[at + l] = dl * f32::from(v) - ml;
                    }
                }
            }
        }
    }
}

/// Dequantizes `out.len() / 256` Q3_K blocks.
pub fn dequantize_q3_k(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q3_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (hmask, qs) = (&blk[..32], &blk[32..96]);
        let scales = q3_k_scales(&blk[96..108]);
        let d = f16_at(blk, 108);
        for h in 0..2 {
            let q = &qs[32 * h..32 * h + 32];
            for s in 0..4 {
                let m = 1u8 << (4 * h + s);
                for half in 0..2 {
                    let dl = d * f32::from(scales[8 * h + 2 * s + half] as i8 - 32);
                    let at = 128 * h + 32 * s + 16 * half;
                    for l in 0..16 {
                        let j = 16 * half + l;
                        let v =
                            ((q[j] >> (2 * s)) & 3) as i8 - if hmask[j] & m != 0 { 0 } else { 4 };
                        y[at + l] = dl * f32::from(v);
                    }
                }
            }
        }
    }
}

fn dequantize_q45_k(blk: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(blk, 0), f16_at(blk, 2));
    let scales = &blk[4..16];
    for j in 0..4 {
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            let (mut lo, mut hi) = (q[l] & 0x0f, q[l] >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * j)) & 1) << 4;
                hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
            }
            y[64 * j + l] = d1 * f32::from(lo) - m1;
            y[64 * j + 32 + l] = d2 * f32::from(hi) - m2;
        }
    }
}

/// Dequantizes `out.len() / 256` Q4_K blocks.
pub fn dequantize_q4_k(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        dequantize_q45_k(blk, None, &blk[16..144], y);
    }
}

/// Dequantizes `out.len() / 256` Q5_K blocks.
pub fn dequantize_q5_k(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q5_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        dequantize_q45_k(blk, Some(&blk[16..48]), &blk[48..176], y);
    }
}

/// Dequantizes `out.len() / 256` Q6_K blocks.
pub fn dequantize_q6_k(w: &[u8], out: &mut [f32]) {
    let mut kb = KBlock::default();
    for (blk, y) in w.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        unpack_q6_k(blk, &mut kb);
        for (g, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = kb.d * kb.sc[g] as f32;
            for (o, &q) in y.iter_mut().zip(&kb.q[16 * g..16 * g + 16]) {
                *o = dl * f32::from(q);
            }
        }
    }
}

/// Dequantizes `out.len() / 32` Q5_0 blocks.
pub fn dequantize_q5_0(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        let q = q5_values(u32_at(blk, 2), &blk[6..22]);
        for (o, &q) in y.iter_mut().zip(&q) {
            *o = f32::from(q as i8 - 16) * d;
        }
    }
}

/// Dequantizes `out.len() / 32` Q5_1 blocks.
pub fn dequantize_q5_1(w: &[u8], out: &mut [f32]) {
    for (blk, y) in w.chunks_exact(Q5_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        let q = q5_values(u32_at(blk, 4), &blk[8..24]);
        for (o, &q) in y.iter_mut().zip(&q) {
            *o = f32::from(q) * d + m;
        }
    }
}

/// Dequantizes a BF16 row.
pub fn dequantize_bf16(w: &[u8], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = bf16_at(w, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Q8Rows, dequantize_row, quantize_row_q8_0};
    use crate::weights::WType;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn lcg_byte(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 56) as u8
    }

    /// (bytes per block, elements per block, offsets of the block's f16 fields).
    fn layout(ty: WType) -> (usize, usize, &'static [usize]) {
        match ty {
            WType::Q8_0 => (34, 32, &[0]),
            WType::Q4_0 => (18, 32, &[0]),
            WType::Q5_0 => (Q5_0_BYTES, 32, &[0]),
            WType::Q5_1 => (Q5_1_BYTES, 32, &[0, 2]),
            WType::Q2_K => (Q2_K_BYTES, QK_K, &[80, 82]),
            WType::Q3_K => (Q3_K_BYTES, QK_K, &[108]),
            WType::Q4_K => (Q4_K_BYTES, QK_K, &[0, 2]),
            WType::Q5_K => (Q5_K_BYTES, QK_K, &[0, 2]),
            WType::Q6_K => (Q6_K_BYTES, QK_K, &[208]),
            WType::F16 | WType::BF16 => (2, 1, &[]),
            WType::F32 => (4, 1, &[]),
        }
    }

    /// A random row of `k` elements of `ty`: random bytes with finite, moderate scales.
    fn random_row(ty: WType, k: usize, seed: &mut u64) -> Vec<u8> {
        let (bytes, elems, f16s) = layout(ty);
        let mut w: Vec<u8> = (0..k / elems * bytes).map(|_| lcg_byte(seed)).collect();
        match ty {
            WType::BF16 => {
                for c in w.chunks_exact_mut(2) {
                    let v = lcg(seed).to_bits() >> 16;
                    c.copy_from_slice(&(v as u16).to_le_bytes());
                }
            }
            WType::F16 => {
                for c in w.chunks_exact_mut(2) {
                    c.copy_from_slice(&f16::from_f32(lcg(seed)).to_le_bytes());
                }
            }
            WType::F32 => {
                for c in w.chunks_exact_mut(4) {
                    c.copy_from_slice(&lcg(seed).to_le_bytes());
                }
            }
            _ => {
                for blk in w.chunks_exact_mut(bytes) {
                    for &at in f16s {
                        let v = f16::from_f32(lcg(seed) * 0.05);
                        blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        w
    }

    type Dot<R, const T: usize> = fn(Isa, &[u8], [R; T]) -> [f32; T];

    const TYPES: [WType; 7] =
        [WType::Q5_0, WType::Q5_1, WType::Q2_K, WType::Q3_K, WType::Q4_K, WType::Q5_K, WType::Q6_K];

    /// `dot(w, quantized x)` equals `Σ dequantize(w)·dequantize(q8(x))` (in f64) within
    /// 1e-5 of `Σ |w·x|`, for one row and a tile of three, for every new quantized type, at
    /// every instruction-set level this CPU runs.
    #[test]
    fn dots_match_dequantized_reference() {
        for isa in Isa::available() {
            dots_match_dequantized_reference_at(isa);
        }
    }

    /// 8 random Q4_K rows of `k` values and 4 rows of Q8_K activations.
    fn q4_k_group_and_acts(k: usize, mut seed: u64) -> (Vec<Vec<u8>>, Q8KRows) {
        let nb = k / QK_K;
        let rows = (0..Q4K_GROUP).map(|_| random_row(WType::Q4_K, k, &mut seed)).collect();
        let mut q = Q8KRows::default();
        q.resize(4, k);
        for t in 0..4 {
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed) * 3.0).collect();
            quantize_row_q8_k(
                &x,
                &mut q.qs[t * k..(t + 1) * k],
                &mut q.d[t * nb..(t + 1) * nb],
                &mut q.bsums[t * 16 * nb..(t + 1) * 16 * nb],
            );
        }
        (rows, q)
    }

    /// The interleaved Q4_K layout made at load time, times 1 and 4 activation rows,
    /// equals the row kernel on each original row (to float summation order), at every
    /// SIMD level, including the portable one.
    #[test]
    fn repacked_q4_k_x8_equals_row_dots() {
        let k = 3 * QK_K;
        let nb = k / QK_K;
        let (rows, q) = q4_k_group_and_acts(k, 9);
        let mut packed = vec![0u8; nb * Q4K_X8_BYTES];
        repack_q4_k_x8(std::array::from_fn(|r| rows[r].as_slice()), nb, &mut packed);
        let acts: [Q8KRow<'_>; 4] = std::array::from_fn(|t| q.row(t));
        for isa in Isa::available() {
            let four = gemm_q4_k_x8::<4>(isa, &packed, acts);
            let one = gemm_q4_k_x8::<1>(isa, &packed, [acts[2]]);
            for (r, row) in rows.iter().enumerate() {
                let want = dot_q4_k::<4>(Isa::Portable, row, acts);
                for t in 0..4 {
                    let tol = 1e-5 * want[t].abs().max(1.0);
                    assert!(
                        (four[t][r] - want[t]).abs() <= tol,
                        "{isa:?} row {r} token {t}: {} vs {}",
                        four[t][r],
                        want[t]
                    );
                }
                let tol = 1e-5 * want[2].abs().max(1.0);
                assert!((one[0][r] - want[2]).abs() <= tol, "{isa:?} row {r}, one token");
            }
        }
    }

    /// Consecutive groups through [`gemm_q4_k_x8_groups`] (which the AVX-512 level takes
    /// in pairs, 16 rows per register, an odd last group alone) equal each group through
    /// [`gemm_q4_k_x8`] bit for bit, at every level, for 1 and 4 tokens.
    #[test]
    fn q4_k_groups_equal_single_groups_bit_for_bit() {
        let k = 2 * QK_K;
        let nb = k / QK_K;
        let groups = 3;
        let mut packed = vec![0u8; groups * nb * Q4K_X8_BYTES];
        for (g, chunk) in packed.chunks_mut(nb * Q4K_X8_BYTES).enumerate() {
            let (rows, _) = q4_k_group_and_acts(k, 100 + g as u64);
            repack_q4_k_x8(std::array::from_fn(|r| rows[r].as_slice()), nb, chunk);
        }
        let (_, q) = q4_k_group_and_acts(k, 7);
        let acts: [Q8KRow<'_>; 4] = std::array::from_fn(|t| q.row(t));
        for isa in Isa::available() {
            let mut four = vec![[[0f32; Q4K_GROUP]; 4]; groups];
            gemm_q4_k_x8_groups::<4, false>(isa, &packed, acts, &mut four);
            let mut one = vec![[[0f32; Q4K_GROUP]; 1]; groups];
            gemm_q4_k_x8_groups::<1, false>(isa, &packed, [acts[1]], &mut one);
            for (g, chunk) in packed.chunks(nb * Q4K_X8_BYTES).enumerate() {
                let bits = |v: &[[f32; Q4K_GROUP]]| -> Vec<u32> {
                    v.iter().flatten().map(|x| x.to_bits()).collect()
                };
                assert_eq!(
                    bits(&four[g]),
                    bits(&gemm_q4_k_x8::<4>(isa, chunk, acts)),
                    "{isa:?} {g}"
                );
                assert_eq!(
                    bits(&one[g]),
                    bits(&gemm_q4_k_x8::<1>(isa, chunk, [acts[1]])),
                    "{isa:?}"
                );
            }
        }
    }

    fn dots_match_dequantized_reference_at(isa: Isa) {
        let mut seed = 11;
        let k = 2 * QK_K;
        for ty in TYPES {
            for rep in 0..20 {
                let w = random_row(ty, k, &mut seed);
                let mut wd = vec![0f32; k];
                dequantize_row(ty, &w, &mut wd);
                let xs: Vec<Vec<f32>> = (0..3)
                    .map(|i| {
                        let s = if i == 2 && rep % 2 == 0 { 0.0 } else { 3.0 };
                        (0..k).map(|_| lcg(&mut seed) * s).collect()
                    })
                    .collect();
                let (got1, got3, xd): (Vec<f32>, [f32; 3], Vec<Vec<f32>>) = if layout(ty).1 == QK_K
                {
                    let mut q = Q8KRows::default();
                    q.resize(3, k);
                    for (t, x) in xs.iter().enumerate() {
                        quantize_row_q8_k(
                            x,
                            &mut q.qs[t * k..(t + 1) * k],
                            &mut q.d[t * 2..(t + 1) * 2],
                            &mut q.bsums[t * 32..(t + 1) * 32],
                        );
                    }
                    let f: fn(Isa, &[u8], [Q8KRow<'_>; 1]) -> [f32; 1] = match ty {
                        WType::Q2_K => dot_q2_k::<1>,
                        WType::Q3_K => dot_q3_k::<1>,
                        WType::Q4_K => dot_q4_k::<1>,
                        WType::Q5_K => dot_q5_k::<1>,
                        _ => dot_q6_k::<1>,
                    };
                    let f3: fn(Isa, &[u8], [Q8KRow<'_>; 3]) -> [f32; 3] = match ty {
                        WType::Q2_K => dot_q2_k::<3>,
                        WType::Q3_K => dot_q3_k::<3>,
                        WType::Q4_K => dot_q4_k::<3>,
                        WType::Q5_K => dot_q5_k::<3>,
                        _ => dot_q6_k::<3>,
                    };
                    let got1 = (0..3).map(|t| f(isa, &w, [q.row(t)])[0]).collect();
                    let got3 = f3(isa, &w, [q.row(0), q.row(1), q.row(2)]);
                    let xd = (0..3)
                        .map(|t| {
                            let r = q.row(t);
                            (0..k).map(|i| r.qs[i] as f32 * r.d[i / QK_K]).collect()
                        })
                        .collect();
                    (got1, got3, xd)
                } else {
                    let mut q = Q8Rows::default();
                    q.resize(3, k);
                    let nb = k / QK;
                    for (t, x) in xs.iter().enumerate() {
                        let Q8Rows { qs, d, s, c, .. } = &mut q;
                        quantize_row_q8_0(
                            x,
                            &mut qs[t * k..(t + 1) * k],
                            &mut d[t * nb..(t + 1) * nb],
                            &mut s[t * nb..(t + 1) * nb],
                            &mut c[t * nb..(t + 1) * nb],
                        );
                    }
                    let (f, f3): (Dot<ActRow<'_>, 1>, Dot<ActRow<'_>, 3>) = if ty == WType::Q5_0 {
                        (dot_q5_0::<1>, dot_q5_0::<3>)
                    } else {
                        (dot_q5_1::<1>, dot_q5_1::<3>)
                    };
                    let got1 = (0..3).map(|t| f(isa, &w, [q.row(t)])[0]).collect();
                    let got3 = f3(isa, &w, [q.row(0), q.row(1), q.row(2)]);
                    let xd = (0..3)
                        .map(|t| {
                            let r = q.row(t);
                            (0..k).map(|i| r.qs[i] as f32 * r.d[i / QK]).collect()
                        })
                        .collect();
                    (got1, got3, xd)
                };
                for t in 0..3 {
                    let want: f64 =
                        wd.iter().zip(&xd[t]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    let mag: f64 = wd
                        .iter()
                        .zip(&xd[t])
                        .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
                        .sum();
                    let err = (f64::from(got1[t]) - want).abs();
                    assert!(
                        err <= 1e-5 * mag.max(1e-30),
                        "{isa:?} {ty:?} rep {rep} row {t}: {} vs {want} (Σ|·| {mag})",
                        got1[t]
                    );
                    assert_eq!(got1[t], got3[t], "{isa:?} {ty:?}: tile of 3 differs from one row");
                }
            }
        }
    }

    #[test]
    fn q8_k_quantization_follows_ggml_reference() {
        // max = -127 (the signed value of largest magnitude), so iscale = -127/max = 1:
        // ties round half to even, d = 1.
        let mut x = vec![0f32; QK_K];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        x[4] = 0.5;
        x[5] = 126.6;
        let (mut qs, mut d, mut bs) = (vec![0i8; QK_K], vec![0f32; 1], vec![0i16; 16]);
        quantize_row_q8_k(&x, &mut qs, &mut d, &mut bs);
        assert_eq!(&qs[..6], &[-127, 2, 4, -2, 0, 127]);
        assert_eq!(d[0], 1.0);
        assert_eq!(bs[0], -127 + 2 + 4 - 2 + 127);
        assert!(bs[1..].iter().all(|&s| s == 0));
        // Positive max: iscale negative, d negative, q = -round(127 x / max).
        let x: Vec<f32> = (0..QK_K).map(|i| i as f32 / 255.0).collect();
        quantize_row_q8_k(&x, &mut qs, &mut d, &mut bs);
        assert_eq!(qs[255], -127);
        assert_eq!(d[0], 1.0 / (-127.0f32 / 1.0));
        for (g, s) in bs.iter().enumerate() {
            assert_eq!(*s, qs[16 * g..16 * g + 16].iter().map(|&v| i16::from(v)).sum::<i16>());
        }
        // All zeros: d = 0.
        quantize_row_q8_k(&vec![0.0; QK_K], &mut qs, &mut d, &mut bs);
        assert_eq!(d[0], 0.0);
        assert!(qs.iter().all(|&v| v == 0));
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-1.49), -1);
    }

    #[test]
    fn bf16_rounding_and_dot() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        let mut seed = 5;
        for n in [1usize, 8, 13, 64] {
            let w = random_row(WType::BF16, n, &mut seed);
            let x: Vec<f32> = (0..n).map(|_| round_bf16(lcg(&mut seed))).collect();
            let mut wd = vec![0f32; n];
            dequantize_bf16(&w, &mut wd);
            let want: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
            assert!((dot_bf16(&w, &x) - want).abs() < 1e-5);
        }
    }

    const PYTHON: &str = "/var/tmp/corral-ci-venv/bin/python";
    const GEMMA: &str = "/var/tmp/corral-models/gemma-3-270m-q4_k_m.gguf";
    const PY_DEQUANT: &str = "
import sys, numpy as np
from gguf import quants, GGMLQuantizationType as T
out = sys.stdout.buffer
for line in sys.stdin:
    path, off, n, qt = line.split()
    data = np.fromfile(path, dtype=np.uint8, count=int(n), offset=int(off))
    out.write(np.asarray(quants.dequantize(data, T(int(qt))), dtype='<f4').tobytes())
";

    /// Dequantizes `(path, offset, bytes, type)` ranges with the Python `gguf` package;
    /// `None` when that Python is not available.
    fn python_dequantize(reqs: &[(String, usize, usize, WType)]) -> Option<Vec<f32>> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        if !std::path::Path::new(PYTHON).exists() {
            return None;
        }
        let ggml = |ty: WType| match ty {
            WType::F32 => 0,
            WType::F16 => 1,
            WType::Q4_0 => 2,
            WType::Q5_0 => 6,
            WType::Q5_1 => 7,
            WType::Q8_0 => 8,
            WType::Q2_K => 10,
            WType::Q3_K => 11,
            WType::Q4_K => 12,
            WType::Q5_K => 13,
            WType::Q6_K => 14,
            WType::BF16 => 30,
        };
        let mut child = Command::new(PYTHON)
            .args(["-c", PY_DEQUANT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut input = String::new();
        for (p, off, n, ty) in reqs {
            input.push_str(&format!("{p} {off} {n} {}\n", ggml(*ty)));
        }
        child.stdin.take()?.write_all(input.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        if !out.status.success() {
            eprintln!("SKIP: {PYTHON} cannot dequantize (is the gguf package installed?)");
            return None;
        }
        Some(
            out.stdout
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    fn assert_same(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g - w).abs() <= 1e-6 * w.abs(),
                "{what}[{i}]: {g} vs gguf-py {w}"
            );
        }
    }

    /// Random rows of every supported type, dequantized here and by the Python `gguf`
    /// package.
    #[test]
    fn dequantize_matches_gguf_py_on_random_blocks() {
        let mut seed = 99;
        let k = 2 * QK_K;
        let types = [
            WType::Q5_0,
            WType::Q5_1,
            WType::Q2_K,
            WType::Q3_K,
            WType::Q4_K,
            WType::Q5_K,
            WType::Q6_K,
            WType::BF16,
            WType::Q8_0,
            WType::Q4_0,
            WType::F16,
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rows.bin");
        let mut file = Vec::new();
        let mut reqs = Vec::new();
        let mut ours = Vec::new();
        for ty in types {
            for _ in 0..4 {
                let w = random_row(ty, k, &mut seed);
                let mut d = vec![0f32; k];
                dequantize_row(ty, &w, &mut d);
                reqs.push((path.display().to_string(), file.len(), w.len(), ty));
                file.extend_from_slice(&w);
                ours.push(d);
            }
        }
        std::fs::write(&path, &file).expect("write");
        let Some(py) = python_dequantize(&reqs) else {
            eprintln!("SKIP: {PYTHON} with the gguf package is not available");
            return;
        };
        assert_eq!(py.len(), ours.len() * k);
        for (i, (d, r)) in ours.iter().zip(&reqs).enumerate() {
            assert_same(&format!("{:?} row {i}", r.3), d, &py[i * k..(i + 1) * k]);
        }
    }

    /// Rows of real tensors (Q5_0, Q4_K, Q6_K, Q8_0) of Gemma 3 270M Q4_K_M, dequantized
    /// here and by the Python `gguf` package.
    #[test]
    fn dequantize_matches_gguf_py_on_gemma_q4_k_m() {
        let gemma = std::env::var("CORRAL_GEMMA_Q4KM").unwrap_or_else(|_| GEMMA.to_string());
        if !std::path::Path::new(&gemma).exists() {
            eprintln!("SKIP: {gemma} is missing (scripts/fetch-models.sh)");
            return;
        }
        let file = corral_gguf::reader::GgufFile::open(&gemma).expect("open gguf");
        let base = file.data_offset() as usize;
        let mut reqs = Vec::new();
        let mut ours = Vec::new();
        for want in [WType::Q5_0, WType::Q4_K, WType::Q6_K, WType::Q8_0] {
            let infos: Vec<_> = file
                .tensors()
                .iter()
                .filter(|t| WType::from_ggml(t.ggml_type) == Some(want) && t.dims.len() == 2)
                .collect();
            assert!(!infos.is_empty(), "no {want:?} tensor in {gemma}");
            // The first and the last tensor of the type; rows 0, 1 and the last.
            for t in [infos[0], infos[infos.len() - 1]] {
                let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
                let rb = want.row_bytes(cols);
                let data = std::fs::read(&gemma).expect("read");
                for r in [0, 1, rows - 1] {
                    let off = base + t.offset as usize + r * rb;
                    let mut d = vec![0f32; cols];
                    dequantize_row(want, &data[off..off + rb], &mut d);
                    reqs.push((gemma.clone(), off, rb, want));
                    ours.push((format!("{} row {r}", t.name), d));
                }
            }
        }
        let Some(py) = python_dequantize(&reqs) else {
            eprintln!("SKIP: {PYTHON} with the gguf package is not available");
            return;
        };
        let mut at = 0;
        for (what, d) in &ours {
            assert_same(what, d, &py[at..at + d.len()]);
            at += d.len();
        }
        assert_eq!(at, py.len());
    }
}
