//! The KV cache: one growable store per sequence, in the element type the load chose.
//!
//! A sequence holds cells (a position with its keys and values in every layer) in the
//! order they were decoded. Each layer keeps its keys and values as bytes, `cells ×
//! row_bytes`, in one of llama.cpp's cache types ([`KvType`]): F16 (the default), or
//! ggml's Q8_0 and Q4_0 blocks of 32 values with an f16 scale, which halve and quarter the
//! cache (`kv_cache_type`, `OLLAMA_KV_CACHE_TYPE`). The stores grow by amortised
//! doubling, so decoding a token appends one row per layer and never copies the whole
//! cache. Attention masks by position (a cell is visible to a token when its position is
//! not greater), so cells need no particular order, and removing or copying ranges of
//! positions is a filter.

use half::f16;

use crate::kernels::{Q4_0_BYTES, Q8_0_BYTES, QK, q8_0_block};
use crate::weights::WType;

/// The element type of a KV cache (`kv_cache_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvType {
    /// 16-bit floats, llama.cpp's default.
    #[default]
    F16,
    /// ggml's Q8_0: 32 signed bytes and an f16 scale per block (34 bytes per 32 values).
    Q8_0,
    /// ggml's Q4_0: 32 nibbles with an offset of 8 and an f16 scale (18 bytes per 32).
    Q4_0,
}

impl KvType {
    /// The type a load's `kv_cache_type` option names (none or empty: F16).
    pub fn parse(name: Option<&str>) -> Result<KvType, String> {
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "f16") => Ok(KvType::F16),
            Some("q8_0") => Ok(KvType::Q8_0),
            Some("q4_0") => Ok(KvType::Q4_0),
            Some(other) => Err(format!(
                "kv_cache_type {other:?}: the cpu backend keeps its KV cache as f16, q8_0 or q4_0"
            )),
        }
    }

    /// The name the settings use.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Whether the type is made of blocks of 32 values (so a head must be a whole number
    /// of blocks).
    pub fn is_quantized(self) -> bool {
        self != KvType::F16
    }

    /// The weight type of the same layout (for dequantizing a row).
    pub fn wtype(self) -> WType {
        match self {
            KvType::F16 => WType::F16,
            KvType::Q8_0 => WType::Q8_0,
            KvType::Q4_0 => WType::Q4_0,
        }
    }

    /// Bytes of `n` values (for the quantized types `n` is a multiple of 32).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n / QK * Q8_0_BYTES,
            KvType::Q4_0 => n / QK * Q4_0_BYTES,
        }
    }

    /// Converts `x` into `out` (`row_bytes(x.len())` bytes) as llama.cpp stores a row of
    /// keys or values in a cache of this type (ggml's `from_float`: `quantize_row_q8_0`,
    /// `quantize_row_q4_0_ref`).
    pub fn store(self, x: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.row_bytes(x.len()));
        match self {
            KvType::F16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(x) {
                    o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            KvType::Q8_0 => {
                let mut q = [0i8; QK];
                for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
                    let (d, _) = q8_0_block(xb, &mut q);
                    blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    for (o, &v) in blk[2..].iter_mut().zip(&q) {
                        *o = v as u8;
                    }
                }
            }
            KvType::Q4_0 => {
                for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
                    quantize_q4_0_block(xb, blk);
                }
            }
        }
    }

    /// The values of the row `bytes` (of this type) into `out`.
    pub fn load(self, bytes: &[u8], out: &mut [f32]) {
        crate::kernels::dequantize_row(self.wtype(), bytes, out);
    }
}

/// llama.cpp's rotation of the keys and values it keeps in a quantized cache
/// (`llama_kv_cache`'s `n_rot_k`/`n_rot_v`): before a quantized cache stores them, the
/// queries and keys go through an orthonormal Walsh-Hadamard transform of `k` values at a
/// time and the values through one of `v`, and the attention's output through the `v`
/// transform again (its own inverse), which leaves the attention unchanged but spreads
/// each head's outliers over the block, so that Q8_0 and Q4_0 lose less. `k` is the
/// largest power of two from 64 that divides the head, `v` is 64; none for an F16 cache,
/// for heads that are not a multiple of 64, or when `LLAMA_ATTN_ROT_DISABLE` is a non-zero
/// number (llama.cpp's switch, honoured the same way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvRotation {
    /// Transform size of the queries and keys (0: none).
    pub k: usize,
    /// Transform size of the values and the attention's output (0: none).
    pub v: usize,
}

impl KvRotation {
    /// The rotation llama.cpp uses for a cache of `ty` and heads of `head_dim` values.
    pub fn for_cache(ty: KvType, head_dim: usize) -> KvRotation {
        let disabled = std::env::var("LLAMA_ATTN_ROT_DISABLE")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|v| v != 0);
        if disabled || !ty.is_quantized() || head_dim == 0 || !head_dim.is_multiple_of(64) {
            return KvRotation::default();
        }
        let mut k = 64;
        while head_dim.is_multiple_of(2 * k) {
            k *= 2;
        }
        KvRotation { k, v: 64 }
    }
}

/// The orthonormal Walsh-Hadamard transform of each `n` values of `x` (`n` a power of
/// two), as ggml's `ggml_compute_forward_fwht` computes it: the values scaled by
/// `1/sqrt(n)`, then `log2(n)` passes of butterflies `(u + v, u - v)` at distances 1, 2,
/// 4, ... Each output is the same sum in the same order at any vector width, so this
/// equals ggml's to the bit. The transform is its own inverse.
pub fn hadamard(x: &mut [f32], n: usize) {
    debug_assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let scale = 1.0 / (n as f32).sqrt();
    for block in x.chunks_exact_mut(n) {
        block.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        if n >= 8 {
            // The passes at distances 1, 2 and 4 within each 8 values at once (the same
            // additions in the same order, without a loop per pass).
            for e in block.chunks_exact_mut(8) {
                let [a0, a1, a2, a3, a4, a5, a6, a7] =
                    [e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]];
                let (b0, b1, b2, b3) = (a0 + a1, a0 - a1, a2 + a3, a2 - a3);
                let (b4, b5, b6, b7) = (a4 + a5, a4 - a5, a6 + a7, a6 - a7);
                let (c0, c1, c2, c3) = (b0 + b2, b1 + b3, b0 - b2, b1 - b3);
                let (c4, c5, c6, c7) = (b4 + b6, b5 + b7, b4 - b6, b5 - b7);
                e.copy_from_slice(&[
                    c0 + c4,
                    c1 + c5,
                    c2 + c6,
                    c3 + c7,
                    c0 - c4,
                    c1 - c5,
                    c2 - c6,
                    c3 - c7,
                ]);
            }
            len = 8;
        }
        while len < n {
            for pair in block.chunks_exact_mut(2 * len) {
                let (lo, hi) = pair.split_at_mut(len);
                for (u, v) in lo.iter_mut().zip(hi) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len *= 2;
        }
    }
}

/// One block of 32 values as ggml's `quantize_row_q4_0_ref`: the value of largest
/// magnitude `max` maps to -8, the scale `d = max / -8`, each value to
/// `min(15, trunc(x/d + 8.5))`, element `j` in the low nibble of byte `j` and element
/// `j + 16` in its high nibble.
fn quantize_q4_0_block(x: &[f32], blk: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        blk[2 + j] = nibble(x[j]) | (nibble(x[j + QK / 2]) << 4);
    }
}

/// The cache of one sequence.
#[derive(Clone, Default)]
pub struct SeqCache {
    /// Position of each cell.
    pub pos: Vec<u32>,
    /// Keys per layer, `cells × row_bytes`.
    pub k: Vec<Vec<u8>>,
    /// Values per layer, `cells × row_bytes`.
    pub v: Vec<Vec<u8>>,
}

impl SeqCache {
    /// An empty cache for `n_layer` layers.
    pub fn new(n_layer: usize) -> SeqCache {
        SeqCache { pos: Vec::new(), k: vec![Vec::new(); n_layer], v: vec![Vec::new(); n_layer] }
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// The largest position held, or -1.
    pub fn pos_max(&self) -> i32 {
        self.pos.iter().max().map_or(-1, |&p| p as i32)
    }

    /// Keeps the cells for which `keep(pos)` holds; a cell is `row_bytes` in each store.
    pub fn retain(&mut self, row_bytes: usize, keep: impl Fn(u32) -> bool) {
        let keep_mask: Vec<bool> = self.pos.iter().map(|&p| keep(p)).collect();
        if keep_mask.iter().all(|&k| k) {
            return;
        }
        for store in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut w = 0;
            for (c, &k) in keep_mask.iter().enumerate() {
                if k {
                    if w != c {
                        store.copy_within(c * row_bytes..(c + 1) * row_bytes, w * row_bytes);
                    }
                    w += 1;
                }
            }
            store.truncate(w * row_bytes);
        }
        let mut i = 0;
        self.pos.retain(|_| {
            let k = keep_mask[i];
            i += 1;
            k
        });
    }

    /// Appends the cells of `src` for which `take(pos)` holds.
    pub fn append_from(&mut self, src: &SeqCache, row_bytes: usize, take: impl Fn(u32) -> bool) {
        for (c, &p) in src.pos.iter().enumerate() {
            if !take(p) {
                continue;
            }
            self.pos.push(p);
            for (dst, s) in self.k.iter_mut().zip(&src.k).chain(self.v.iter_mut().zip(&src.v)) {
                dst.extend_from_slice(&s[c * row_bytes..(c + 1) * row_bytes]);
            }
        }
    }

    /// Empties the cache, keeping its allocations.
    pub fn clear(&mut self) {
        self.pos.clear();
        for s in self.k.iter_mut().chain(self.v.iter_mut()) {
            s.clear();
        }
    }
}

/// `[p0, p1)` with llama.cpp's conventions: a negative `p0` is 0, a negative `p1` is
/// infinity.
pub fn range(p0: i32, p1: i32) -> impl Fn(u32) -> bool {
    let lo = p0.max(0) as u32;
    let hi = if p1 < 0 { u32::MAX } else { p1 as u32 };
    move |p| p >= lo && p < hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-layer F16 cache of 2 values per cell: keys `(pos, layer)`, values
    /// `(-pos, layer)`.
    fn cache(pos: &[u32]) -> SeqCache {
        let mut c = SeqCache::new(2);
        for &p in pos {
            c.pos.push(p);
            for l in 0..2 {
                let mut row = [0u8; 4];
                KvType::F16.store(&[p as f32, l as f32], &mut row);
                c.k[l].extend(row);
                KvType::F16.store(&[-(p as f32), l as f32], &mut row);
                c.v[l].extend(row);
            }
        }
        c
    }

    fn value(store: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([store[2 * i], store[2 * i + 1]]).to_f32()
    }

    #[test]
    fn retain_keeps_rows_aligned() {
        let mut c = cache(&[0, 1, 2, 3, 4]);
        c.retain(4, |p| !range(1, 3)(p));
        assert_eq!(c.pos, [0, 3, 4]);
        assert_eq!(value(&c.k[1], 2), 3.0);
        assert_eq!(value(&c.v[0], 4), -4.0);
        assert_eq!(c.pos_max(), 4);
        c.retain(4, |p| !range(-1, -1)(p));
        assert!(c.is_empty());
        assert_eq!(c.pos_max(), -1);
    }

    #[test]
    fn append_copies_ranges() {
        let src = cache(&[0, 1, 2]);
        let mut dst = SeqCache::new(2);
        dst.append_from(&src, 4, range(0, 2));
        assert_eq!(dst.pos, [0, 1]);
        assert_eq!(dst.k[0], src.k[0][..8]);
    }

    /// The rotation's sizes follow llama.cpp's rule, and the transform is orthonormal
    /// and its own inverse: against the matrix `H[i][j] = (-1)^popcount(i & j) / sqrt(n)`.
    #[test]
    fn hadamard_rotations_are_orthonormal_and_sized_as_llama_cpp_sizes_them() {
        assert_eq!(KvRotation::for_cache(KvType::F16, 256), KvRotation::default());
        assert_eq!(KvRotation::for_cache(KvType::Q8_0, 256), KvRotation { k: 256, v: 64 });
        assert_eq!(KvRotation::for_cache(KvType::Q4_0, 64), KvRotation { k: 64, v: 64 });
        assert_eq!(KvRotation::for_cache(KvType::Q8_0, 192), KvRotation { k: 64, v: 64 });
        assert_eq!(KvRotation::for_cache(KvType::Q8_0, 32), KvRotation::default());
        let n = 64;
        let x: Vec<f32> = (0..2 * n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25).collect();
        let mut y = x.clone();
        hadamard(&mut y, n);
        for (b, (xb, yb)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
            for (i, &got) in yb.iter().enumerate() {
                let sign =
                    |j: usize| if (i & j).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 };
                let want: f64 = xb.iter().enumerate().map(|(j, &v)| sign(j) * f64::from(v)).sum();
                let want = want / (n as f64).sqrt();
                assert!((f64::from(got) - want).abs() < 1e-5, "block {b} [{i}]: {got} vs {want}");
            }
        }
        hadamard(&mut y, n);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // The unrolled first passes are ggml's loop to the bit, at every size.
        for n in [2usize, 4, 8, 16, 64, 256] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 7.0).collect();
            let mut plain = x.clone();
            let scale = 1.0 / (n as f32).sqrt();
            plain.iter_mut().for_each(|v| *v *= scale);
            let mut len = 1;
            while len < n {
                for i in (0..n).step_by(2 * len) {
                    for j in i..i + len {
                        (plain[j], plain[j + len]) =
                            (plain[j] + plain[j + len], plain[j] - plain[j + len]);
                    }
                }
                len *= 2;
            }
            let mut fast = x;
            hadamard(&mut fast, n);
            assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
        }
    }

    #[test]
    fn types_parse_and_size_rows() {
        assert_eq!(KvType::parse(None), Ok(KvType::F16));
        assert_eq!(KvType::parse(Some("Q8_0")), Ok(KvType::Q8_0));
        assert_eq!(KvType::parse(Some("q4_0")), Ok(KvType::Q4_0));
        let err = KvType::parse(Some("q5_1")).unwrap_err();
        assert!(err.contains("f16, q8_0 or q4_0"), "{err}");
        assert_eq!(KvType::F16.row_bytes(256), 512);
        assert_eq!(KvType::Q8_0.row_bytes(256), 272);
        assert_eq!(KvType::Q4_0.row_bytes(256), 144);
    }

    /// Stored and read back, a row keeps its values to the type's precision: within half
    /// a step (Q4_0: a step, as ggml clips the values opposite a negative maximum at 7/8
    /// of it); a zero block stays zero.
    #[test]
    fn quantized_rows_round_trip_within_a_step() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        let mut x: Vec<f32> = (0..96).map(|_| next() * 3.0).collect();
        x[64..].fill(0.0);
        for (ty, steps) in [(KvType::F16, 2048.0), (KvType::Q8_0, 127.0), (KvType::Q4_0, 4.0)] {
            let mut bytes = vec![0u8; ty.row_bytes(x.len())];
            ty.store(&x, &mut bytes);
            let mut back = vec![0f32; x.len()];
            ty.load(&bytes, &mut back);
            for (b, block) in x.chunks(QK).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, &want) in block.iter().enumerate() {
                    let got = back[b * QK + j];
                    let tol = amax / steps * 0.5 + amax * 1e-3;
                    assert!((got - want).abs() <= tol, "{ty:?} [{b}/{j}] {got} vs {want}");
                }
            }
            assert!(back[64..].iter().all(|&v| v == 0.0), "{ty:?}: a zero block");
        }
    }
}
