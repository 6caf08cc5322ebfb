//! Q5_0, Q5_1 and the K types Q4_K, Q5_K, Q6_K: ports of ggml's reference quantizers
//! (`quantize_row_*_ref` in `ggml/src/ggml-quants.c`, which `ggml_quantize_chunk` and
//! so `llama-quantize` use when no importance matrix is given) and of its
//! dequantizers.
//!
//! The ports keep ggml's operations in ggml's order, in f32, so their output is
//! byte-identical to ggml's as compiled without floating-point contraction (ggml's
//! CPU-independent code, `ggml-base`, is built that way for x86-64 unless an `-march`
//! with FMA is forced on it): the helpers `make_qkx2_quants` and `make_qx_quants`, the
//! magic-number `nearest_int`, C's float-to-integer truncation, and ggml's own f32→f16
//! conversion.
//!
//! Block layouts (little-endian f16 scales):
//!
//! - Q5_0 (22 bytes / 32): `d`, `qh[4]` (bit j = high bit of element j), `qs[16]`
//!   (element j low nibble, element j+16 high nibble); value `(q - 16) * d`.
//! - Q5_1 (24 bytes / 32): `d`, `m`, `qh[4]`, `qs[16]`; value `q * d + m`.
//! - Q4_K (144 bytes / 256): `d`, `dmin`, `scales[12]` (eight 6-bit scales and mins),
//!   `qs[128]`; value `d * sc * q - dmin * m` per 32-element sub-block.
//! - Q5_K (176 bytes / 256): `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`.
//! - Q6_K (210 bytes / 256): `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`; value
//!   `d * scale * (q - 32)` per 16-element sub-block.

/// Elements per K-type super-block.
pub const QK_K: usize = 256;
/// Bytes per Q5_0 block.
pub const Q5_0_BLOCK_BYTES: usize = 22;
/// Bytes per Q5_1 block.
pub const Q5_1_BLOCK_BYTES: usize = 24;
/// Bytes per Q4_K block.
pub const Q4_K_BLOCK_BYTES: usize = 144;
/// Bytes per Q5_K block.
pub const Q5_K_BLOCK_BYTES: usize = 176;
/// Bytes per Q6_K block.
pub const Q6_K_BLOCK_BYTES: usize = 210;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `ggml_compute_fp32_to_fp16` (round to nearest even; NaN to 0x7E00 with the
/// sign), bit for bit.
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
}

/// f16 bits to f32 (exact).
pub fn fp16_to_fp32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

fn read_f16(b: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn write_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

/// ggml's `nearest_int`: round to nearest (even) by adding 1.5·2^23, valid for
/// |x| ≤ 4194303; outside that it returns what ggml's bit arithmetic returns.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// C's conversion of a float to a 32-bit int as x86-64 does it (`cvttss2si`):
/// truncation, and `i32::MIN` for NaN or out of range (Rust's `as` saturates instead).
#[inline]
fn c_trunc_i32(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) { v as i32 } else { i32::MIN }
}

/// `make_qkx2_quants`: an asymmetric `nmax`-level quantization of `x` with a minimum,
/// the scale and (negated) minimum chosen by a weighted search over `nstep + 1`
/// candidate scales. Returns the scale; the negated minimum goes to `the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    weights: &[f32; 32],
    l_out: &mut [u8; 32],
    the_min: &mut f32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> f32 {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        let diff = diff * diff;
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    // Sequential on purpose: an improvement replaces `min`, which the next candidates'
    // levels and scales depend on.
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        let iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                let diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out.copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// `make_qx_quants` with `rmse_type` 1 and no importance weights (what Q6_K uses): a
/// symmetric quantization to `-nmax..nmax-1` stored as `l + nmax`, the scale refined
/// by a weighted (x²) least-squares search over 18 candidate scales.
fn make_qx_quants(nmax: i32, x: &[f32; 16], l_out: &mut [i8; 16]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9i32 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
#[inline]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// One Q5_0 block: `x` has 32 values, `y` 22 bytes.
pub fn quantize_block_q5_0(x: &[f32], y: &mut [u8]) {
    let max = crate::quant::signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        // MIN(31, (int8_t)(x0 + 16.5f))
        let xi0 = (c_trunc_i32(x0 + 16.5) as i8).min(31) as u8;
        let xi1 = (c_trunc_i32(x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// One Q5_1 block: `x` has 32 values, `y` 24 bytes.
pub fn quantize_block_q5_1(x: &[f32], y: &mut [u8]) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    write_f16(y, 2, min);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[16 + j] - min) * id;
        // (uint8_t)(x0 + 0.5f)
        let xi0 = c_trunc_i32(x0 + 0.5) as u8;
        let xi1 = c_trunc_i32(x1 + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// The scales, mins and levels shared by Q4_K and Q5_K (`nmax` 15 or 31): fills the
/// 12 scale bytes at `y[4..16]`, `d` and `dmin`, and returns the levels.
fn quantize_k_scales_mins(x: &[f32], y: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().expect("32 values");
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        scales[j] = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            (&mut l[32 * j..32 * j + 32]).try_into().expect("32 levels"),
            &mut mins[j],
            rmin,
            0.1,
            nstep,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    sc.fill(0);
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    write_f16(y, 0, max_scale / 63.0);
    write_f16(y, 2, max_min / 63.0);
    let d_all = read_f16(y, 0);
    let dmin_all = read_f16(y, 2);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    l
}

/// One Q4_K super-block: `x` has 256 values, `y` 144 bytes.
pub fn quantize_block_q4_k(x: &[f32], y: &mut [u8]) {
    let l = quantize_k_scales_mins(x, y, 15, -1.0, 20);
    let qs = &mut y[16..144];
    for (jj, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            qs[32 * jj + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// One Q5_K super-block: `x` has 256 values, `y` 176 bytes.
pub fn quantize_block_q5_k(x: &[f32], y: &mut [u8]) {
    let l = quantize_k_scales_mins(x, y, 31, -0.5, 15);
    let (qh, ql) = y[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (jj, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * jj + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// One Q6_K super-block: `x` has 256 values, `y` 210 bytes.
pub fn quantize_block_q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(
            32,
            x[16 * ib..16 * ib + 16].try_into().expect("16 values"),
            (&mut l[16 * ib..16 * ib + 16]).try_into().expect("16 levels"),
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        write_f16(y, 208, 0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    write_f16(y, 208, 1.0 / iscale);
    for ib in 0..QK_K / 16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = read_f16(y, 208);
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(y[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    let lu = |i: usize| l[i] as u8;
    for (jj, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q1 = lu(j + i) & 0xF;
            let q2 = lu(j + i + 32) & 0xF;
            let q3 = lu(j + i + 64) & 0xF;
            let q4 = lu(j + i + 96) & 0xF;
            ql[64 * jj + i] = q1 | (q3 << 4);
            ql[64 * jj + i + 32] = q2 | (q4 << 4);
            qh[32 * jj + i] = (lu(j + i) >> 4)
                | ((lu(j + i + 32) >> 4) << 2)
                | ((lu(j + i + 64) >> 4) << 4)
                | ((lu(j + i + 96) >> 4) << 6);
        }
    }
}

/// Decodes one Q5_0 block into 32 values.
pub fn dequantize_block_q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = read_f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let start = out.len();
    out.resize(start + 32, 0.0);
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = i32::from((qs[j] & 0x0F) | xh0) - 16;
        let x1 = i32::from((qs[j] >> 4) | xh1) - 16;
        out[start + j] = x0 as f32 * d;
        out[start + j + 16] = x1 as f32 * d;
    }
}

/// Decodes one Q5_1 block into 32 values.
pub fn dequantize_block_q5_1(b: &[u8], out: &mut Vec<f32>) {
    let d = read_f16(b, 0);
    let m = read_f16(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let start = out.len();
    out.resize(start + 32, 0.0);
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = (qs[j] & 0x0F) | xh0;
        let x1 = (qs[j] >> 4) | xh1;
        out[start + j] = f32::from(x0) * d + m;
        out[start + j + 16] = f32::from(x1) * d + m;
    }
}

/// Decodes one Q4_K super-block into 256 values.
pub fn dequantize_block_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = read_f16(b, 0);
    let min = read_f16(b, 2);
    let scales = &b[4..16];
    let q = &b[16..144];
    for (jj, is) in (0..QK_K / 64).map(|k| (k, 2 * k)) {
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let qq = &q[32 * jj..32 * jj + 32];
        out.extend(qq.iter().map(|&v| d1 * f32::from(v & 0xF) - m1));
        out.extend(qq.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
    }
}

/// Decodes one Q5_K super-block into 256 values.
pub fn dequantize_block_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let d = read_f16(b, 0);
    let min = read_f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    let (mut u1, mut u2) = (1u8, 2u8);
    for jj in 0..QK_K / 64 {
        let is = 2 * jj;
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let q = &ql[32 * jj..32 * jj + 32];
        let hi = |h: u8, u: u8| if h & u != 0 { 16.0 } else { 0.0 };
        out.extend((0..32).map(|l| d1 * (f32::from(q[l] & 0xF) + hi(qh[l], u1)) - m1));
        out.extend((0..32).map(|l| d2 * (f32::from(q[l] >> 4) + hi(qh[l], u2)) - m2));
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// Decodes one Q6_K super-block into 256 values.
pub fn dequantize_block_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = read_f16(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for n in 0..QK_K / 128 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            y[128 * n + l] = d * s(0) * f32::from(q1);
            y[128 * n + l + 32] = d * s(2) * f32::from(q2);
            y[128 * n + l + 64] = d * s(4) * f32::from(q3);
            y[128 * n + l + 96] = d * s(6) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_matches_the_half_crate_on_finite_values() {
        for bits in (0..u32::MAX).step_by(65_537) {
            let f = f32::from_bits(bits);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7fff, 0x7E00);
                continue;
            }
            assert_eq!(fp32_to_fp16(f), half::f16::from_f32(f).to_bits(), "{f:e} ({bits:#x})");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(c_trunc_i32(f32::NAN), i32::MIN);
        assert_eq!(c_trunc_i32(-3.7), -3);
    }

    #[test]
    fn scale_min_packing_round_trips() {
        // Pack like the quantizer, unpack with get_scale_min_k4.
        let ls: Vec<u8> = (0..8).map(|j| (j * 9 + 1) as u8 % 64).collect();
        let lm: Vec<u8> = (0..8).map(|j| (63 - j * 7) as u8).collect();
        let mut sc = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                sc[j] = ls[j];
                sc[j + 4] = lm[j];
            } else {
                sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                sc[j - 4] |= (ls[j] >> 4) << 6;
                sc[j] |= (lm[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &sc), (ls[j], lm[j]));
        }
    }
}
