//! Weight matrices that live in the memory-mapped GGUF file, and the threaded matrix
//! multiplication over them.

use rayon::prelude::*;

use crate::kernels::{self, Q4_0_BYTES, Q8_0_BYTES, Q8Rows, QK};

/// The element types this engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// ggml Q8_0: blocks of 32 signed bytes with an f16 scale.
    Q8_0,
    /// ggml Q4_0: blocks of 32 nibbles (offset 8) with an f16 scale.
    Q4_0,
}

impl WType {
    /// The type of a GGUF tensor, if this engine supports it.
    pub fn from_ggml(t: corral_gguf::GgmlType) -> Option<WType> {
        use corral_gguf::GgmlType as G;
        match t {
            G::F32 => Some(WType::F32),
            G::F16 => Some(WType::F16),
            G::Q8_0 => Some(WType::Q8_0),
            G::Q4_0 => Some(WType::Q4_0),
            _ => None,
        }
    }

    /// Bytes of a row of `n` elements (`n` a multiple of the block size for Q types).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            WType::F32 => 4 * n,
            WType::F16 => 2 * n,
            WType::Q8_0 => n / QK * Q8_0_BYTES,
            WType::Q4_0 => n / QK * Q4_0_BYTES,
        }
    }

    /// Elements per block.
    pub fn block(self) -> usize {
        match self {
            WType::F32 | WType::F16 => 1,
            WType::Q8_0 | WType::Q4_0 => QK,
        }
    }

    /// How activations must be prepared for this weight type.
    fn acts(self) -> ActKind {
        match self {
            WType::F32 => ActKind::F32,
            WType::F16 => ActKind::F16,
            WType::Q8_0 | WType::Q4_0 => ActKind::Q8,
        }
    }
}

/// A matrix of `rows` rows of `cols` elements at `offset` in the mapped file.
#[derive(Debug, Clone)]
pub struct Weight {
    /// Element type.
    pub ty: WType,
    /// Output features.
    pub rows: usize,
    /// Input features (the row length).
    pub cols: usize,
    /// Byte offset of row 0 in the file.
    pub offset: usize,
    /// Bytes per row.
    pub row_bytes: usize,
}

impl Weight {
    /// The raw bytes of row `r`.
    #[inline]
    pub fn row<'a>(&self, map: &'a [u8], r: usize) -> &'a [u8] {
        let at = self.offset + r * self.row_bytes;
        &map[at..at + self.row_bytes]
    }

    /// Row `r` as f32.
    pub fn dequantize_row(&self, map: &[u8], r: usize, out: &mut [f32]) {
        kernels::dequantize_row(self.ty, self.row(map, r), &mut out[..self.cols]);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    F32,
    F16,
    Q8,
}

/// Activations prepared for one weight type: F32 as they are, rounded to f16 (as ggml
/// converts them for F16 weights), or quantized to Q8_0.
#[derive(Default)]
pub struct Prepared {
    kind: Option<ActKind>,
    f: Vec<f32>,
    q: Q8Rows,
    n: usize,
    k: usize,
}

impl Prepared {
    /// Prepares `n` rows of `k` activations in `x` for multiplication by weights of `ty`.
    pub fn prepare(&mut self, ty: WType, x: &[f32], n: usize, k: usize) {
        let kind = ty.acts();
        self.kind = Some(kind);
        self.n = n;
        self.k = k;
        match kind {
            ActKind::F32 => {
                self.f.clear();
                self.f.extend_from_slice(&x[..n * k]);
            }
            ActKind::F16 => {
                self.f.resize(n * k, 0.0);
                self.f.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, i)| {
                    for (o, i) in o.iter_mut().zip(i) {
                        *o = half::f16::from_f32(*i).to_f32();
                    }
                });
            }
            ActKind::Q8 => {
                self.q.resize(n, k);
                let nb = k / QK;
                let Q8Rows { qs, d, s, c, .. } = &mut self.q;
                qs.par_chunks_mut(k)
                    .zip(d.par_chunks_mut(nb))
                    .zip(s.par_chunks_mut(nb))
                    .zip(c.par_chunks_mut(nb))
                    .zip(x.par_chunks(k))
                    .for_each(|((((qs, d), s), c), x)| kernels::quantize_row_q8_0(x, qs, d, s, c));
            }
        }
    }
}

/// A raw output pointer shared by the tasks of one matmul, each writing its own rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (distinct rows of the weight) and the matmul
// waits for all of them before the buffer is used again.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Tokens per tile in the batched kernels: 8 accumulators fit AVX-512's 32 vector
/// registers, 4 fit AVX2's 16.
const TILE: usize = if cfg!(target_feature = "avx512f") { 8 } else { 4 };

/// `y[t][r] = W[r] · x[t]` for the `n` prepared rows, `y` laid out `n × w.rows`. Runs on
/// the current rayon pool, splitting the weight's rows.
pub fn matmul(map: &[u8], w: &Weight, a: &Prepared, y: &mut [f32]) {
    matmul_multi(map, &mut [(w, y)], a);
}

/// Several weights of the same input width times the same prepared activations, in one
/// parallel region (q/k/v, gate/up): fewer thread wake-ups per token.
pub fn matmul_multi(map: &[u8], jobs: &mut [(&Weight, &mut [f32])], a: &Prepared) {
    let n = a.n;
    let threads = rayon::current_num_threads().max(1);
    let total_rows: usize = jobs.iter().map(|j| j.0.rows).sum();
    // (job, first row, end row) chunks.
    let mut chunks = Vec::new();
    let mut outs = Vec::with_capacity(jobs.len());
    for (ji, (w, y)) in jobs.iter_mut().enumerate() {
        let m = w.rows;
        assert_eq!(a.kind, Some(w.ty.acts()), "activations prepared for another weight type");
        assert_eq!(a.k, w.cols, "activation width differs from the weight's row length");
        assert!(y.len() >= n * m, "output buffer too small");
        assert!(w.offset + m * w.row_bytes <= map.len(), "weight outside the mapped file");
        // Enough chunks to balance the threads, rows per chunk a multiple of 4. Batches
        // use small chunks so that a chunk's weights stay in L1/L2 while every token tile
        // of the batch streams past them.
        let share = (m * threads * 8).div_ceil(total_rows.max(1)).max(1);
        let chunk = if n == 1 {
            m.div_ceil(share).next_multiple_of(4).max(4)
        } else {
            let by_cache = (16 * 1024 / w.row_bytes.max(1)).clamp(4, 64) / 4 * 4;
            by_cache.min(m.div_ceil(threads * 4).next_multiple_of(4)).max(4)
        };
        let mut r0 = 0;
        while r0 < m {
            chunks.push((ji, r0, (r0 + chunk).min(m)));
            r0 += chunk;
        }
        outs.push((OutPtr(y.as_mut_ptr()), *w));
    }
    let outs = &outs;
    chunks.into_par_iter().for_each(|(ji, r0, r1)| {
        let (out, w) = outs[ji];
        let m = w.rows;
        let put = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n and r < m, so the index is inside y (checked above); rows
            // r0..r1 belong to this task alone.
            unsafe { *out.0.add(t * m + r) = v };
        };
        match w.ty.acts() {
            ActKind::Q8 => {
                let dot_tile = match w.ty {
                    WType::Q4_0 => kernels::dot_q4_0::<TILE>,
                    _ => kernels::dot_q8_0::<TILE>,
                };
                let dot1 = match w.ty {
                    WType::Q4_0 => kernels::dot_q4_0::<1>,
                    _ => kernels::dot_q8_0::<1>,
                };
                let mut t = 0;
                while t + TILE <= n {
                    let rows: [_; TILE] = std::array::from_fn(|i| a.q.row(t + i));
                    for r in r0..r1 {
                        let v = dot_tile(w.row(map, r), rows);
                        for (i, v) in v.into_iter().enumerate() {
                            put(t + i, r, v);
                        }
                    }
                    t += TILE;
                }
                let dot4 = match w.ty {
                    WType::Q4_0 => kernels::dot_q4_0::<4>,
                    _ => kernels::dot_q8_0::<4>,
                };
                while TILE > 4 && t + 4 <= n {
                    let rows: [_; 4] = std::array::from_fn(|i| a.q.row(t + i));
                    for r in r0..r1 {
                        for (i, v) in dot4(w.row(map, r), rows).into_iter().enumerate() {
                            put(t + i, r, v);
                        }
                    }
                    t += 4;
                }
                for t in t..n {
                    for r in r0..r1 {
                        put(t, r, dot1(w.row(map, r), [a.q.row(t)])[0]);
                    }
                }
            }
            ActKind::F32 | ActKind::F16 => {
                let k = a.k;
                for r in r0..r1 {
                    let row = w.row(map, r);
                    for t in 0..n {
                        let x = &a.f[t * k..(t + 1) * k];
                        let v = if w.ty == WType::F32 {
                            kernels::dot_f32(row, x)
                        } else {
                            kernels::dot_f16(row, x)
                        };
                        put(t, r, v);
                    }
                }
            }
        }
    });
}
