//! f32 to F16, Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K in ggml's exact block
//! layouts, and back.
//!
//! - F16: IEEE half precision, round to nearest even (the `half` crate, as ggml).
//! - Q8_0: blocks of 32 values, 34 bytes: f16 scale `d = amax / 127`, then 32 `i8`
//!   `round(x / d)`.
//! - Q4_0: blocks of 32 values, 18 bytes: f16 scale `d = max / -8` where `max` is the
//!   value of largest magnitude (with its sign), then 16 bytes of nibbles
//!   `q = min(15, trunc(x / d + 8.5))`; the low nibbles hold elements 0..16 and the high
//!   nibbles elements 16..32. The value is `(q - 8) * d`.
//!
//! - Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: see [`crate::kquant`].
//!
//! The quantizers follow ggml's reference `quantize_row_*_ref` operation for operation
//! (multiplying by `1/d` computed in f32), so their output is byte-identical to
//! llama.cpp's for the same input (`ggml_quantize_chunk` without an importance matrix,
//! which is what `llama-quantize` uses when given none).

use half::f16;

use crate::error::GgufError;
use crate::kquant::{self, QK_K};
use crate::types::GgmlType;

/// Elements per Q8_0 / Q4_0 block.
pub const QK: usize = 32;
/// Bytes per Q8_0 block.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes per Q4_0 block.
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// The types [`quantize`] can produce (and [`dequantize`] can read).
pub fn can_quantize_to(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | Q8_0 | Q4_0 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K)
}

/// Encodes `src` block by block with `f`, blocks of `n` values into `bytes` bytes.
fn blocks(src: &[f32], dst: &mut [u8], n: usize, bytes: usize, f: fn(&[f32], &mut [u8])) {
    for (x, y) in src.chunks_exact(n).zip(dst.chunks_exact_mut(bytes)) {
        f(x, y);
    }
}

fn check_len(ty: GgmlType, n: usize, dst_len: usize) -> Result<(), GgufError> {
    let want = ty.row_bytes(n as u64).ok_or_else(|| {
        GgufError::Invalid(format!("{n} values are not a whole number of {ty} blocks"))
    })?;
    if want != dst_len as u64 {
        return Err(GgufError::Invalid(format!(
            "{n} values as {ty} take {want} bytes, but the buffer has {dst_len}"
        )));
    }
    Ok(())
}

/// Encodes `src` as `ty` into `dst`, which must be exactly the encoded size
/// (`ty.row_bytes(src.len())`). Supports the types of [`can_quantize_to`]. The K types
/// work on 256-value super-blocks independently, so `src` may hold several rows.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), GgufError> {
    check_len(ty, src.len(), dst.len())?;
    match ty {
        GgmlType::F32 => {
            for (x, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (x, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (x, d) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_0_BLOCK_BYTES)) {
                quantize_block_q8_0(x, d);
            }
        }
        GgmlType::Q4_0 => {
            for (x, d) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q4_0_BLOCK_BYTES)) {
                quantize_block_q4_0(x, d);
            }
        }
        GgmlType::Q5_0 => {
            blocks(src, dst, QK, kquant::Q5_0_BLOCK_BYTES, kquant::quantize_block_q5_0);
        }
        GgmlType::Q5_1 => {
            blocks(src, dst, QK, kquant::Q5_1_BLOCK_BYTES, kquant::quantize_block_q5_1);
        }
        GgmlType::Q4_K => {
            blocks(src, dst, QK_K, kquant::Q4_K_BLOCK_BYTES, kquant::quantize_block_q4_k);
        }
        GgmlType::Q5_K => {
            blocks(src, dst, QK_K, kquant::Q5_K_BLOCK_BYTES, kquant::quantize_block_q5_k);
        }
        GgmlType::Q6_K => {
            blocks(src, dst, QK_K, kquant::Q6_K_BLOCK_BYTES, kquant::quantize_block_q6_k);
        }
        other => {
            return Err(GgufError::Invalid(format!("quantizing to {other} is not supported")));
        }
    }
    Ok(())
}

/// Decodes `n` values of type `ty` from `src`. Supports the types of
/// [`can_quantize_to`], as ggml's `dequantize_row_*` do.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, GgufError> {
    check_len(ty, n, src.len())?;
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => {
            out.extend(src.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        GgmlType::F16 => {
            out.extend(src.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()));
        }
        GgmlType::Q8_0 => {
            for b in src.chunks_exact(Q8_0_BLOCK_BYTES) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in src.chunks_exact(Q4_0_BLOCK_BYTES) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q5_0 => {
            for b in src.chunks_exact(kquant::Q5_0_BLOCK_BYTES) {
                kquant::dequantize_block_q5_0(b, &mut out);
            }
        }
        GgmlType::Q5_1 => {
            for b in src.chunks_exact(kquant::Q5_1_BLOCK_BYTES) {
                kquant::dequantize_block_q5_1(b, &mut out);
            }
        }
        GgmlType::Q4_K => {
            for b in src.chunks_exact(kquant::Q4_K_BLOCK_BYTES) {
                kquant::dequantize_block_q4_k(b, &mut out);
            }
        }
        GgmlType::Q5_K => {
            for b in src.chunks_exact(kquant::Q5_K_BLOCK_BYTES) {
                kquant::dequantize_block_q5_k(b, &mut out);
            }
        }
        GgmlType::Q6_K => {
            for b in src.chunks_exact(kquant::Q6_K_BLOCK_BYTES) {
                kquant::dequantize_block_q6_k(b, &mut out);
            }
        }
        other => {
            return Err(GgufError::Invalid(format!("dequantizing {other} is not supported")));
        }
    }
    Ok(out)
}

/// One Q8_0 block: `x` has 32 values, `y` 34 bytes.
#[inline]
fn quantize_block_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, v) in y[2..].iter_mut().zip(x) {
        // C's roundf (half away from zero) then the conversion to int8_t.
        *q = ((v * id).round() as i8) as u8;
    }
}

/// The value of largest magnitude in `x` (the first of equal magnitudes), with its sign,
/// or 0: the scale source of ggml's Q4_0, Q5_0 and Q8_K reference quantizers.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// One Q4_0 block: `x` has 32 values, `y` 18 bytes.
#[inline]
fn quantize_block_q4_0(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let (lo, hi) = x.split_at(QK / 2);
    for ((q, a), b) in y[2..].iter_mut().zip(lo).zip(hi) {
        // ggml: MIN(15, (int8_t)(x*id + 8.5f)), truncating toward zero.
        let q0 = ((a * id + 8.5) as i8).min(15) as u8;
        let q1 = ((b * id + 8.5) as i8).min(15) as u8;
        *q = (q0 & 0x0f) | (q1 << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n).map(|_| rng.sample::<f32, _>(StandardNormal) * 0.1).collect()
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let mut buf = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
        quantize(ty, x, &mut buf).unwrap();
        dequantize(ty, &buf, x.len()).unwrap()
    }

    #[test]
    fn q4_0_exact_layout() {
        // Values -16..15: max magnitude is -16, so d = 2 and 1/d = 0.5.
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        let mut y = [0u8; 18];
        quantize(GgmlType::Q4_0, &x, &mut y).unwrap();
        assert_eq!(&y[..2], &[0x00, 0x40]); // f16 2.0
        assert_eq!(y[2], 0x80); // element 0 -> 0, element 16 -> 8
        assert_eq!(y[3], 0x91); // element 1 -> 1, element 17 -> 9
        assert_eq!(y[17], 0xf8); // element 15 -> 8, element 31 -> min(15, 16)
        let back = dequantize(GgmlType::Q4_0, &y, 32).unwrap();
        assert_eq!(back[0], -16.0);
        assert_eq!(back[16], 0.0);
        assert_eq!(back[31], 14.0);
    }

    #[test]
    fn q8_0_exact_layout() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5; // rounds away from zero to -64
        x[2] = 0.49;
        let mut y = [0u8; 34];
        quantize(GgmlType::Q8_0, &x, &mut y).unwrap();
        assert_eq!(&y[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(y[2] as i8, 127);
        assert_eq!(y[3] as i8, -64);
        assert_eq!(y[4] as i8, 0);
    }

    #[test]
    fn zero_blocks() {
        let x = [0.0f32; 64];
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            assert!(round_trip(ty, &x).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn round_trip_error_bounds() {
        let x = random(32 * 64, 7);
        for (ty, rel) in [(GgmlType::Q8_0, 0.5 / 127.0), (GgmlType::Q4_0, 1.0 / 8.0)] {
            let y = round_trip(ty, &x);
            let mut sq = 0.0f64;
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for (a, b) in bx.iter().zip(by) {
                    // Per-element bound from the scheme, plus the f16 rounding of d.
                    assert!((a - b).abs() <= amax * rel * 1.01 + amax * 2e-3, "{ty}: {a} vs {b}");
                    sq += f64::from((a - b) * (a - b));
                }
            }
            let rms = (sq / x.len() as f64).sqrt();
            let limit = if ty == GgmlType::Q8_0 { 0.002 } else { 0.02 };
            assert!(rms < limit, "{ty}: rms error {rms}");
        }
        let y = round_trip(GgmlType::F16, &x);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-7);
        }
        assert_eq!(round_trip(GgmlType::F32, &x), x);
    }

    #[test]
    fn k_types_and_q5_round_trip_closely() {
        // Relative RMS error of each scheme on N(0, 0.01) data, and its bits per weight.
        let x = random(256 * 32, 9);
        let rms_x = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        for (ty, limit) in [
            (GgmlType::Q6_K, 0.02),
            (GgmlType::Q5_K, 0.04),
            (GgmlType::Q4_K, 0.08),
            (GgmlType::Q5_0, 0.05),
            (GgmlType::Q5_1, 0.05),
        ] {
            let y = round_trip(ty, &x);
            let err = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
                / x.len() as f32)
                .sqrt();
            assert!(err / rms_x < limit, "{ty}: relative rms error {}", err / rms_x);
        }
    }

    #[test]
    fn special_rows_stay_finite_and_exact_where_they_can() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q5_1] {
            assert!(round_trip(ty, &[0.0; 256]).iter().all(|&v| v == 0.0), "{ty}: zeros");
            for c in [1.0f32, -3.5, 1e-20, 1e4] {
                // Below f16's range the scales flush to zero, and so do the values.
                let tolerance = if c.abs() < 1e-7 { c.abs() } else { c.abs() * 0.07 };
                let y = round_trip(ty, &[c; 256]);
                assert!(
                    y.iter().all(|v| v.is_finite() && (v - c).abs() <= tolerance),
                    "{ty} {c}: {y:?}"
                );
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut buf = [0u8; 18];
        assert!(quantize(GgmlType::Q4_0, &[0.0; 31], &mut buf).is_err());
        assert!(quantize(GgmlType::Q4_0, &[0.0; 32], &mut buf[..17]).is_err());
        assert!(quantize(GgmlType::Q6_K, &[0.0; 256], &mut [0u8; 209]).is_err());
        assert!(quantize(GgmlType::Q4_K, &[0.0; 255], &mut [0u8; 144]).is_err());
        assert!(quantize(GgmlType::IQ2_XXS, &[0.0; 256], &mut [0u8; 66]).is_err());
        assert!(dequantize(GgmlType::Q8_0, &buf, 32).is_err());
    }
}
