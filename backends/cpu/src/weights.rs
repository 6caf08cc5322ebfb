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

/// Tokens per tile in the batched kernels.
const TILE: usize = 4;

/// `y[t][r] = W[r] · x[t]` for the `n` prepared rows, `y` laid out `n × w.rows`. Runs on
/// the current rayon pool, splitting the weight's rows.
pub fn matmul(map: &[u8], w: &Weight, a: &Prepared, y: &mut [f32]) {
    let n = a.n;
    let m = w.rows;
    assert_eq!(a.kind, Some(w.ty.acts()), "activations prepared for another weight type");
    assert_eq!(a.k, w.cols, "activation width differs from the weight's row length");
    assert!(y.len() >= n * m, "output buffer too small");
    assert!(w.offset + m * w.row_bytes <= map.len(), "weight outside the mapped file");
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance the threads, rows per chunk a multiple of 4. Batches use
    // small chunks so that a chunk's weights stay in L1/L2 while every token tile of the
    // batch streams past them.
    let chunk = if n == 1 {
        m.div_ceil(threads * 8).next_multiple_of(4).max(4)
    } else {
        let by_cache = (16 * 1024 / w.row_bytes.max(1)).clamp(4, 64) / 4 * 4;
        by_cache.min(m.div_ceil(threads * 4).next_multiple_of(4)).max(4)
    };
    let out = OutPtr(y.as_mut_ptr());
    (0..m.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let out = out;
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(m);
        let put = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n and r < m, so the index is inside y (checked above); rows
            // r0..r1 belong to this task alone.
            unsafe { *out.0.add(t * m + r) = v };
        };
        match w.ty.acts() {
            ActKind::Q8 => {
                let dot4 = match w.ty {
                    WType::Q4_0 => kernels::dot_q4_0::<TILE>,
                    _ => kernels::dot_q8_0::<TILE>,
                };
                let dot1 = match w.ty {
                    WType::Q4_0 => kernels::dot_q4_0::<1>,
                    _ => kernels::dot_q8_0::<1>,
                };
                let mut t = 0;
                while t + TILE <= n {
                    let rows = [a.q.row(t), a.q.row(t + 1), a.q.row(t + 2), a.q.row(t + 3)];
                    for r in r0..r1 {
                        let v = dot4(w.row(map, r), rows);
                        for (i, v) in v.into_iter().enumerate() {
                            put(t + i, r, v);
                        }
                    }
                    t += TILE;
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
