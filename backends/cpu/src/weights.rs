//! Weight matrices that live in the memory-mapped GGUF file, and the threaded matrix
//! multiplication over them.

use rayon::prelude::*;

use crate::ggml_order;
use crate::kernels::{self, Q4_0_BYTES, Q8_0_BYTES, Q8Rows, QK};
use crate::kquants::{self as kq, Q8KRows, QK_K};

/// The element types this engine computes with (named as ggml names them).
#[allow(non_camel_case_types)]
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
    /// ggml Q5_0: blocks of 32 5-bit values (offset 16) with an f16 scale.
    Q5_0,
    /// ggml Q5_1: blocks of 32 5-bit values with an f16 scale and an f16 min.
    Q5_1,
    /// ggml Q2_K: super-blocks of 256 2-bit values, 4-bit scales and mins per 16.
    Q2_K,
    /// ggml Q3_K: super-blocks of 256 3-bit values, 6-bit scales per 16.
    Q3_K,
    /// ggml Q4_K: super-blocks of 256 nibbles, 6-bit scales and mins per 32.
    Q4_K,
    /// ggml Q5_K: super-blocks of 256 5-bit values, 6-bit scales and mins per 32.
    Q5_K,
    /// ggml Q6_K: super-blocks of 256 6-bit values (offset 32), 8-bit scales per 16.
    Q6_K,
    /// bfloat16.
    BF16,
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
            G::Q5_0 => Some(WType::Q5_0),
            G::Q5_1 => Some(WType::Q5_1),
            G::Q2_K => Some(WType::Q2_K),
            G::Q3_K => Some(WType::Q3_K),
            G::Q4_K => Some(WType::Q4_K),
            G::Q5_K => Some(WType::Q5_K),
            G::Q6_K => Some(WType::Q6_K),
            G::BF16 => Some(WType::BF16),
            _ => None,
        }
    }

    /// Bytes of a row of `n` elements (`n` a multiple of the block size for Q types).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            WType::F32 => 4 * n,
            WType::F16 | WType::BF16 => 2 * n,
            WType::Q8_0 => n / QK * Q8_0_BYTES,
            WType::Q4_0 => n / QK * Q4_0_BYTES,
            WType::Q5_0 => n / QK * kq::Q5_0_BYTES,
            WType::Q5_1 => n / QK * kq::Q5_1_BYTES,
            WType::Q2_K => n / QK_K * kq::Q2_K_BYTES,
            WType::Q3_K => n / QK_K * kq::Q3_K_BYTES,
            WType::Q4_K => n / QK_K * kq::Q4_K_BYTES,
            WType::Q5_K => n / QK_K * kq::Q5_K_BYTES,
            WType::Q6_K => n / QK_K * kq::Q6_K_BYTES,
        }
    }

    /// Elements per block.
    pub fn block(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q8_0 | WType::Q4_0 | WType::Q5_0 | WType::Q5_1 => QK,
            WType::Q2_K | WType::Q3_K | WType::Q4_K | WType::Q5_K | WType::Q6_K => QK_K,
        }
    }

    /// Whether weights of `self` and `other` multiply the same prepared activations, so
    /// that they can share one [`Prepared`] (and one [`matmul_multi`]).
    pub fn shares_activations(self, other: WType) -> bool {
        self.acts() == other.acts()
    }

    /// How activations must be prepared for this weight type.
    fn acts(self) -> ActKind {
        match self {
            WType::F32 => ActKind::F32,
            WType::F16 => ActKind::F16,
            WType::BF16 => ActKind::Bf16,
            WType::Q8_0 | WType::Q4_0 | WType::Q5_0 | WType::Q5_1 => ActKind::Q8,
            WType::Q2_K | WType::Q3_K | WType::Q4_K | WType::Q5_K | WType::Q6_K => ActKind::Q8K,
        }
    }
}

/// A matrix of `rows` rows of `cols` elements at `offset` in the mapped file, or, after
/// [`Weight::copy_to_memory`], in the engine's own memory (Q4_K in its interleaved
/// layout).
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
    /// The copy the matmul reads instead of the file, when there is one.
    pub copy: Option<std::sync::Arc<WeightCopy>>,
}

/// A weight's rows copied out of the file by [`Weight::copy_to_memory`].
#[derive(Debug)]
pub struct WeightCopy {
    /// The rows: as in the file, or (Q4_K) interleaved by [`kq::repack_q4_k_x8`] in
    /// groups of 8 rows, one group after the other.
    pub bytes: PackedBytes,
    /// Whether the rows are interleaved.
    pub interleaved: bool,
}

/// Memory for copied weights: an anonymous mapping whose used range starts on a 2 MiB
/// boundary and is advised for transparent huge pages (`MADV_HUGEPAGE`; on a system whose
/// THP setting is `madvise`, the usual default, nothing else gets them), so that the decode
/// kernels' streaming reads are not slowed by TLB misses.
pub struct PackedBytes {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl PackedBytes {
    const HUGE_PAGE: usize = 2 << 20;

    /// `len` zeroed bytes.
    fn zeroed(len: usize) -> std::io::Result<PackedBytes> {
        let map = memmap2::MmapMut::map_anon(len + Self::HUGE_PAGE)?;
        let start = map.as_ptr().align_offset(Self::HUGE_PAGE).min(Self::HUGE_PAGE);
        #[cfg(target_os = "linux")]
        if let Err(e) = map.advise_range(memmap2::Advice::HugePage, start, len) {
            log::debug!("no transparent huge pages for copied weights: {e}");
        }
        Ok(PackedBytes { map, start, len })
    }
}

impl std::ops::Deref for PackedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PackedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for PackedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBytes({} bytes)", self.len)
    }
}

impl Weight {
    /// A weight read in place from the mapped file.
    pub fn in_file(ty: WType, rows: usize, cols: usize, offset: usize) -> Weight {
        Weight { ty, rows, cols, offset, row_bytes: ty.row_bytes(cols), copy: None }
    }

    /// The raw bytes of row `r` in the file.
    #[inline]
    pub fn row<'a>(&self, map: &'a [u8], r: usize) -> &'a [u8] {
        let at = self.offset + r * self.row_bytes;
        &map[at..at + self.row_bytes]
    }

    /// Whether [`Weight::copy_to_memory`] interleaves the rows: Q4_K, Q4_0, Q5_0 and
    /// Q8_0, whole groups of 8 (not Q5_0 and Q8_0 in the agreement mode, whose products
    /// need ggml's per-output lanes from rows in file order).
    pub fn interleavable(&self) -> bool {
        matches!(self.ty, WType::Q4_K | WType::Q4_0 | WType::Q5_0 | WType::Q8_0)
            && !(ggml_order::match_llama_cpp() && matches!(self.ty, WType::Q5_0 | WType::Q8_0))
            && self.rows.is_multiple_of(GROUP)
            && self.rows > 0
    }

    /// Bytes of one group of 8 interleaved rows, for an interleavable weight.
    fn group_bytes(&self) -> usize {
        match self.ty {
            WType::Q4_K => self.cols / QK_K * kq::Q4K_X8_BYTES,
            WType::Q5_0 => self.cols / QK * kernels::Q5_0_X8_BYTES,
            WType::Q8_0 => self.cols / QK * kernels::Q8_0_X8_BYTES,
            _ => self.cols / QK * kernels::Q4_0_X8_BYTES,
        }
    }

    /// Interleaves 8 rows of an interleavable weight into `out` ([`Weight::group_bytes`]).
    fn repack_group(&self, rows: [&[u8]; GROUP], out: &mut [u8]) {
        match self.ty {
            WType::Q4_K => kq::repack_q4_k_x8(rows, self.cols / QK_K, out),
            WType::Q5_0 => kernels::repack_q5_0_x8(rows, self.cols / QK, out),
            WType::Q8_0 => kernels::repack_q8_0_x8(rows, self.cols / QK, out),
            _ => kernels::repack_q4_0_x8(rows, self.cols / QK, out),
        }
    }

    /// The bytes the copy of this weight takes: the file's rows, or for interleaved Q4_K
    /// 32 bytes more per super-block of 8 rows (interleaved Q4_0, Q5_0 and Q8_0 take what
    /// the file does).
    pub fn copy_bytes(&self) -> usize {
        if self.interleavable() {
            self.rows / GROUP * self.group_bytes()
        } else {
            self.rows * self.row_bytes
        }
    }

    /// Copies the weight's rows into memory of the engine's own ([`PackedBytes`]: huge
    /// pages where the system allows them), in parallel on the current rayon pool; Q4_K,
    /// Q4_0, Q5_0 and Q8_0 rows go into the interleaved layouts the kernels read
    /// ([`kq::repack_q4_k_x8`]: 2.8% larger, no 6-bit scale decoding per token;
    /// [`kernels::repack_q4_0_x8`], [`kernels::repack_q5_0_x8`],
    /// [`kernels::repack_q8_0_x8`]: the same size), other
    /// types as they are in the file. Returns whether it copied (not when a copy exists or
    /// no memory could be mapped); the caller may then release the file's pages.
    pub fn copy_to_memory(&mut self, map: &[u8]) -> bool {
        if self.copy.is_some() || self.rows == 0 {
            return false;
        }
        let len = self.rows * self.row_bytes;
        assert!(self.offset + len <= map.len(), "weight outside the file");
        let Ok(mut bytes) = PackedBytes::zeroed(self.copy_bytes()) else {
            log::warn!("cannot map memory for a weight's copy; reading it in place");
            return false;
        };
        let interleaved = self.interleavable();
        if interleaved {
            let w = &*self;
            bytes.par_chunks_mut(self.group_bytes()).enumerate().for_each(|(g, out)| {
                w.repack_group(std::array::from_fn(|i| w.row(map, g * GROUP + i)), out);
            });
        } else {
            const CHUNK: usize = 1 << 20;
            let from = &map[self.offset..self.offset + len];
            bytes.par_chunks_mut(CHUNK).zip(from.par_chunks(CHUNK)).for_each(|(o, i)| {
                o.copy_from_slice(i);
            });
        }
        self.copy = Some(std::sync::Arc::new(WeightCopy { bytes, interleaved }));
        true
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
    Bf16,
    Q8,
    Q8K,
}

/// Activations prepared for one weight type: F32 as they are, rounded to f16 or bf16 (as
/// ggml converts them for F16/BF16 weights), quantized to Q8_0 (Q4_0, Q5_0, Q5_1, Q8_0
/// weights) or to Q8_K (k-quant weights).
#[derive(Default)]
pub struct Prepared {
    kind: Option<ActKind>,
    f: Vec<f32>,
    q: Q8Rows,
    qk: Q8KRows,
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
            ActKind::Bf16 => {
                self.f.resize(n * k, 0.0);
                self.f.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, i)| {
                    for (o, i) in o.iter_mut().zip(i) {
                        *o = kq::round_bf16(*i);
                    }
                });
            }
            ActKind::Q8K => {
                self.qk.resize(n, k);
                let Q8KRows { qs, d, bsums, .. } = &mut self.qk;
                qs.par_chunks_mut(k)
                    .zip(d.par_chunks_mut(k / QK_K))
                    .zip(bsums.par_chunks_mut(k / 16))
                    .zip(x.par_chunks(k))
                    .for_each(|(((qs, d), bsums), x)| kq::quantize_row_q8_k(x, qs, d, bsums));
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

/// Rows per interleaved group: the same for every interleaved type (Q4_K, Q4_0, Q5_0,
/// Q8_0).
const GROUP: usize = kq::Q4K_GROUP;
const _: () = assert!(kernels::Q4_0_GROUP == GROUP, "one group size for every layout");

/// Tokens per tile in the batched kernels when AVX-512 is in use: 8 accumulators fit its
/// 32 vector registers; other levels use tiles of 4 (AVX2 has 16 registers).
const TILE: usize = 8;

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
        // Where the rows are read: the weight's copy (its rows from offset 0) or the file.
        // (A view of the weight without its copy: no reference count touched per call.)
        let (src, offset, interleaved) = match &w.copy {
            Some(c) => (&c.bytes[..], 0, c.interleaved),
            None => (map, w.offset, false),
        };
        let w = Weight { offset, copy: None, ..Weight::in_file(w.ty, w.rows, w.cols, 0) };
        let m = w.rows;
        assert_eq!(a.kind, Some(w.ty.acts()), "activations prepared for another weight type");
        assert_eq!(a.k, w.cols, "activation width differs from the weight's row length");
        assert!(y.len() >= n * m, "output buffer too small");
        assert!(
            interleaved || w.offset + m * w.row_bytes <= src.len(),
            "weight outside the mapped file"
        );
        // Enough chunks to balance the threads, rows per chunk a multiple of 4. Batches
        // use small chunks so that a chunk's weights stay in L1/L2 while every token tile
        // of the batch streams past them.
        let share = (m * threads * 8).div_ceil(total_rows.max(1)).max(1);
        let chunk = if n == 1 {
            let unit = if interleaved { GROUP } else { 4 };
            m.div_ceil(share).next_multiple_of(unit).max(unit)
        } else {
            // The AVX-512 Q4_K kernel takes interleaved groups in pairs: 16 rows at least.
            let least =
                if interleaved && kernels::isa() == kernels::Isa::Avx512Vnni { 16 } else { 8 };
            let by_cache = (16 * 1024 / w.row_bytes.max(1)).clamp(least, 64) / 8 * 8;
            by_cache.min(m.div_ceil(threads * 4).next_multiple_of(8)).max(least)
        };
        let mut r0 = 0;
        while r0 < m {
            chunks.push((ji, r0, (r0 + chunk).min(m)));
            r0 += chunk;
        }
        outs.push((OutPtr(y.as_mut_ptr()), w, src, interleaved));
    }
    let outs = &outs;
    let isa = kernels::isa();
    let big_tiles = isa == kernels::Isa::Avx512Vnni;
    let small_batch = n > 1 && n <= kernels::SMALL_BATCH_TOKENS;
    chunks.into_par_iter().for_each(|(ji, r0, r1)| {
        kernels::set_small_batch(small_batch);
        let (out, ref w, map, interleaved) = outs[ji];
        let m = w.rows;
        let put = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n and r < m, so the index is inside y (checked above); rows
            // r0..r1 belong to this task alone.
            unsafe { *out.0.add(t * m + r) = v };
        };
        if interleaved {
            let packed = (map, w.group_bytes());
            if w.ty == WType::Q4_K {
                // The agreement mode takes a batch's fours in ggml's gemm order; single
                // tokens are in its gemv order either way.
                let fns: GroupsFns<_> = if ggml_order::match_llama_cpp() {
                    (kq::gemm_q4_k_x8_groups::<4, true>, kq::gemm_q4_k_x8_groups::<1, false>)
                } else {
                    (kq::gemm_q4_k_x8_groups::<4, false>, kq::gemm_q4_k_x8_groups::<1, false>)
                };
                matmul_interleaved(packed, (r0, r1), n, |t| a.qk.row(t), isa, fns, &put);
            } else {
                let fns: GroupsFns<_> = match w.ty {
                    WType::Q5_0 => {
                        (kernels::gemm_q5_0_x8_groups::<4>, kernels::gemm_q5_0_x8_groups::<1>)
                    }
                    WType::Q8_0 => {
                        (kernels::gemm_q8_0_x8_groups::<4>, kernels::gemm_q8_0_x8_groups::<1>)
                    }
                    _ => (kernels::gemm_q4_0_x8_groups::<4>, kernels::gemm_q4_0_x8_groups::<1>),
                };
                matmul_interleaved(packed, (r0, r1), n, |t| a.q.row(t), isa, fns, &put);
            }
            return;
        }
        if ggml_order::match_llama_cpp()
            && matches!(w.ty, WType::Q5_0 | WType::Q8_0 | WType::Q4_K | WType::Q6_K)
        {
            rows_in_ggml_order(map, w, (r0, r1), n, a, isa, &put);
            return;
        }
        match w.ty.acts() {
            ActKind::Q8 => {
                // Batches of Q4_0 and Q5_0 (Q8_0: of more than 8 tokens; below that the
                // repacking cost more than it saved, `kernel-bench q8_0 262144 640 N 2 10
                // file`) read in the file: groups of 8 rows interleaved once per chunk as
                // a weight copy is at load; the rows left over go through the row kernels.
                let grouped = match w.ty {
                    WType::Q4_0 | WType::Q5_0 => true,
                    WType::Q8_0 => n > 8,
                    _ => false,
                };
                let r0 = if grouped && n >= 4 && isa != kernels::Isa::Portable {
                    groups(
                        map,
                        w,
                        (r0, r1),
                        n,
                        |t| a.q.row(t),
                        |p, rows| match w.ty {
                            WType::Q5_0 => kernels::gemm_q5_0_x8::<4>(isa, p, rows),
                            WType::Q8_0 => kernels::gemm_q8_0_x8::<4>(isa, p, rows),
                            _ => kernels::gemm_q4_0_x8::<4>(isa, p, rows),
                        },
                        &put,
                    )
                } else {
                    r0
                };
                let dots = dots!(kernels::rows_q8);
                tiles(map, w, (r0, r1), n, |t| a.q.row(t), &dots, (isa, big_tiles), put);
            }
            ActKind::Q8K => {
                // Batches of Q4_K read in the file: groups of 8 rows interleaved once per
                // chunk as a weight copy is at load (`kq::repack_q4_k_x8`); the rows left
                // over go through the row kernels.
                let r0 = if w.ty == WType::Q4_K && n >= 4 && isa != kernels::Isa::Portable {
                    groups(
                        map,
                        w,
                        (r0, r1),
                        n,
                        |t| a.qk.row(t),
                        |p, rows| kq::gemm_q4_k_x8::<4>(isa, p, rows),
                        &put,
                    )
                } else {
                    r0
                };
                let dots = dots!(kq::rows_q8k);
                tiles(map, w, (r0, r1), n, |t| a.qk.row(t), &dots, (isa, big_tiles), put);
            }
            ActKind::F32 | ActKind::F16 | ActKind::Bf16 => {
                let k = a.k;
                for r in r0..r1 {
                    let row = w.row(map, r);
                    for t in 0..n {
                        let x = &a.f[t * k..(t + 1) * k];
                        let v = match w.ty {
                            WType::F32 => kernels::dot_f32(row, x),
                            WType::BF16 => kq::dot_bf16(row, x),
                            _ => kernels::dot_f16(row, x),
                        };
                        put(t, r, v);
                    }
                }
            }
        }
    });
}

/// Rows `r0..r1` of a Q5_0, Q8_0, Q4_K or Q6_K weight (rows in file order) times the `n`
/// prepared activation rows in llama.cpp's float order ([`ggml_order`]): tokens in fours,
/// then singles, as ggml's repacked Q4_K kernels split a batch.
fn rows_in_ggml_order(
    map: &[u8],
    w: &Weight,
    (r0, r1): (usize, usize),
    n: usize,
    a: &Prepared,
    isa: kernels::Isa,
    put: &impl Fn(usize, usize, f32),
) {
    fn tile<const T: usize>(
        ty: WType,
        row: &[u8],
        a: &Prepared,
        (t0, n): (usize, usize),
        isa: kernels::Isa,
    ) -> [f32; T] {
        match ty {
            WType::Q4_K => {
                let rows = std::array::from_fn(|i| a.qk.row(t0 + i));
                // ggml's gemm takes the batch's tokens in fours, its gemv the rest.
                ggml_order::q4k_rows::<T>(isa, row, rows, [T == 4; T])
            }
            WType::Q6_K => {
                ggml_order::q6k_rows::<T>(isa, row, std::array::from_fn(|i| a.qk.row(t0 + i)), n)
            }
            _ => {
                let rows = std::array::from_fn(|i| a.q.row(t0 + i));
                ggml_order::q0_rows::<T>(isa, ty == WType::Q5_0, row, rows)
            }
        }
    }
    for r in r0..r1 {
        let row = w.row(map, r);
        let mut t = 0;
        while t + 4 <= n {
            for (i, v) in tile::<4>(w.ty, row, a, (t, n), isa).into_iter().enumerate() {
                put(t + i, r, v);
            }
            t += 4;
        }
        while t < n {
            put(t, r, tile::<1>(w.ty, row, a, (t, n), isa)[0]);
            t += 1;
        }
    }
}

/// The grouped kernel of an interleaved weight for 4 and for 1 activation rows:
/// `(level, groups' bytes, activation rows, out[group][token][row])`.
type GroupsFns<R> = (
    fn(kernels::Isa, &[u8], [R; 4], &mut [[[f32; GROUP]; 4]]),
    fn(kernels::Isa, &[u8], [R; 1], &mut [[[f32; GROUP]; 1]]),
);

/// Rows `r0..r1` (whole groups of 8) of a weight interleaved by
/// [`Weight::copy_to_memory`] (`packed`, `group_bytes` per group of 8 rows) times the `n`
/// activation rows `row(t)`: 4 tokens per kernel call, then single tokens.
fn matmul_interleaved<R: Copy>(
    (packed, group_bytes): (&[u8], usize),
    (r0, r1): (usize, usize),
    n: usize,
    row: impl Fn(usize) -> R,
    isa: kernels::Isa,
    (four, one): GroupsFns<R>,
    put: &impl Fn(usize, usize, f32),
) {
    debug_assert!(r0 % GROUP == 0 && r1 % GROUP == 0);
    let (g0, g1) = (r0 / GROUP, r1 / GROUP);
    let p = &packed[g0 * group_bytes..g1 * group_bytes];
    fn spread<const T: usize>(
        out: &[[[f32; GROUP]; T]],
        (t, r0): (usize, usize),
        put: &impl Fn(usize, usize, f32),
    ) {
        for (g, tokens) in out.iter().enumerate() {
            for (i, lanes) in tokens.iter().enumerate() {
                for (j, &v) in lanes.iter().enumerate() {
                    put(t + i, r0 + g * GROUP + j, v);
                }
            }
        }
    }
    let mut t = 0;
    if n >= 4 {
        let mut out = vec![[[0f32; GROUP]; 4]; g1 - g0];
        while t + 4 <= n {
            four(isa, p, std::array::from_fn(|i| row(t + i)), &mut out);
            spread(&out, (t, r0), put);
            t += 4;
        }
    }
    if t < n {
        let mut out = vec![[[0f32; GROUP]; 1]; g1 - g0];
        while t < n {
            one(isa, p, [row(t)], &mut out);
            spread(&out, (t, r0), put);
            t += 1;
        }
    }
}

/// Rows `r0..` of an interleavable weight read in the file times `n` (at least 4)
/// activation rows `row(t)` through a grouped kernel (8 rows interleaved as
/// [`Weight::copy_to_memory`] does, then `gemm` against 4 tokens per call, the last
/// 1-3 tokens padded with a repeated row; 8 tokens per call measured no faster at the
/// AVX-512 level); returns the first row it did not handle (the last 0-7).
fn groups<R: Copy>(
    map: &[u8],
    w: &Weight,
    (r0, r1): (usize, usize),
    n: usize,
    row: impl Fn(usize) -> R,
    gemm: impl Fn(&[u8], [R; 4]) -> [[f32; GROUP]; 4],
    put: &impl Fn(usize, usize, f32),
) -> usize {
    let mut packed = vec![0u8; w.group_bytes()];
    let mut r = r0;
    while r + GROUP <= r1 {
        w.repack_group(std::array::from_fn(|i| w.row(map, r + i)), &mut packed);
        let mut t = 0;
        while t < n {
            let rows: [R; 4] = std::array::from_fn(|i| row((t + i).min(n - 1)));
            let out = gemm(&packed, rows);
            for (i, lanes) in out.iter().enumerate().take(n - t) {
                for (g, &v) in lanes.iter().enumerate() {
                    put(t + i, r + g, v);
                }
            }
            t += 4;
        }
        r += GROUP;
    }
    r
}

/// The row-range kernel of one activation kind for a full tile, 4 and 1 activation rows:
/// `(isa, weight type, rows' bytes, row_bytes, activation rows, one output per row)`.
struct Dots<R> {
    tile: RowsFn<R, TILE>,
    four: RowsFn<R, 4>,
    one: RowsFn<R, 1>,
}

type RowsFn<R, const T: usize> = fn(kernels::Isa, WType, &[u8], usize, [R; T], &mut [[f32; T]]);

/// [`Dots`] of a row-range kernel generic over its number of activation rows.
macro_rules! dots {
    ($($f:ident)::+) => {
        Dots { tile: $($f)::+::<TILE>, four: $($f)::+::<4>, one: $($f)::+::<1> }
    };
}
use dots;

/// Weight rows `r0..r1` times the `n` activation rows `row(t)` at level `isa`: tiles of
/// `TILE` tokens when `big_tiles` (each weight row unpacked once per tile), then 4, then
/// single tokens; each tile is one kernel call over the whole row range.
#[allow(clippy::too_many_arguments)]
fn tiles<R: Copy>(
    map: &[u8],
    w: &Weight,
    (r0, r1): (usize, usize),
    n: usize,
    row: impl Fn(usize) -> R,
    dots: &Dots<R>,
    (isa, big_tiles): (kernels::Isa, bool),
    put: impl Fn(usize, usize, f32),
) {
    let rows = &map[w.offset + r0 * w.row_bytes..w.offset + r1 * w.row_bytes];
    // Tokens t.. in tiles of T while whole tiles remain; returns the first token left.
    fn run<R, const T: usize>(
        kernel: RowsFn<R, T>,
        (isa, ty, rows, row_bytes): (kernels::Isa, WType, &[u8], usize),
        (mut t, n, r0, r1): (usize, usize, usize, usize),
        row: &impl Fn(usize) -> R,
        put: &impl Fn(usize, usize, f32),
    ) -> usize {
        if t + T > n {
            return t;
        }
        let mut out = vec![[0f32; T]; r1 - r0];
        while t + T <= n {
            kernel(isa, ty, rows, row_bytes, std::array::from_fn(|i| row(t + i)), &mut out);
            for (r, o) in out.iter().enumerate() {
                for (i, &v) in o.iter().enumerate() {
                    put(t + i, r0 + r, v);
                }
            }
            t += T;
        }
        t
    }
    let shape = (isa, w.ty, rows, w.row_bytes);
    let mut t = 0;
    if big_tiles {
        t = run(dots.tile, shape, (t, n, r0, r1), &row, &put);
    }
    t = run(dots.four, shape, (t, n, r0, r1), &row, &put);
    run(dots.one, shape, (t, n, r0, r1), &row, &put);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// A random valid row of `ty`: floats quantized with the gguf crate where it can, else
    /// random bytes with moderate f16 scales at the block's scale fields.
    fn random_row(ty: WType, k: usize, seed: &mut u64) -> Vec<u8> {
        let mut w: Vec<u8> =
            (0..ty.row_bytes(k)).map(|_| (lcg(seed) * 127.0 + 128.0) as u8).collect();
        let (bytes, f16s): (usize, &[usize]) = match ty {
            WType::F32 => {
                return (0..k).flat_map(|_| lcg(seed).to_le_bytes()).collect();
            }
            WType::F16 => {
                return (0..k).flat_map(|_| half::f16::from_f32(lcg(seed)).to_le_bytes()).collect();
            }
            WType::BF16 => {
                return (0..k)
                    .flat_map(|_| ((lcg(seed).to_bits() >> 16) as u16).to_le_bytes())
                    .collect();
            }
            WType::Q8_0 => (Q8_0_BYTES, &[0]),
            WType::Q4_0 => (Q4_0_BYTES, &[0]),
            WType::Q5_0 => (kq::Q5_0_BYTES, &[0]),
            WType::Q5_1 => (kq::Q5_1_BYTES, &[0, 2]),
            WType::Q2_K => (kq::Q2_K_BYTES, &[80, 82]),
            WType::Q3_K => (kq::Q3_K_BYTES, &[108]),
            WType::Q4_K => (kq::Q4_K_BYTES, &[0, 2]),
            WType::Q5_K => (kq::Q5_K_BYTES, &[0, 2]),
            WType::Q6_K => (kq::Q6_K_BYTES, &[208]),
        };
        for blk in w.chunks_exact_mut(bytes) {
            for &at in f16s {
                let v = half::f16::from_f32(lcg(seed) * 0.05);
                blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    /// `matmul` over every weight type, with a batch that exercises full tiles, a tile of
    /// 4 and single tokens, equals the dequantized weights times the prepared activations.
    #[test]
    fn matmul_every_type_matches_dequantized_reference() {
        let interleaves = |ty| matches!(ty, WType::Q4_K | WType::Q4_0 | WType::Q5_0 | WType::Q8_0);
        let mut seed = 21;
        let (k, n) = (512, 2 * TILE + 4 + 3);
        // Every type read in the file (13 rows: the row kernels' leftovers too), then
        // copied to memory (Q4_K, Q4_0, Q5_0 and Q8_0 interleaved: whole groups of 8 rows).
        let types = [
            WType::F32,
            WType::F16,
            WType::BF16,
            WType::Q8_0,
            WType::Q4_0,
            WType::Q5_0,
            WType::Q5_1,
            WType::Q2_K,
            WType::Q3_K,
            WType::Q4_K,
            WType::Q5_K,
            WType::Q6_K,
        ];
        let cases = types
            .map(|ty| (ty, 13, false))
            .into_iter()
            .chain(types.map(|ty| (ty, if interleaves(ty) { 24 } else { 13 }, true)));
        for (ty, rows, copy) in cases {
            let pad = 7;
            let mut map = vec![0u8; pad];
            for _ in 0..rows {
                map.extend(random_row(ty, k, &mut seed));
            }
            let mut w = Weight::in_file(ty, rows, k, pad);
            if copy {
                assert!(w.copy_to_memory(&map), "{ty:?} × {rows} rows copied");
                assert_eq!(w.copy.as_ref().map(|c| c.interleaved), Some(interleaves(ty)));
            }
            let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 2.0).collect();
            let mut a = Prepared::default();
            a.prepare(ty, &x, n, k);
            let mut y = vec![0f32; n * rows];
            matmul(&map, &w, &a, &mut y);
            // The activations as the kernels see them.
            let xd: Vec<f32> = match ty.acts() {
                ActKind::F32 | ActKind::F16 | ActKind::Bf16 => a.f.clone(),
                ActKind::Q8 => (0..n * k).map(|i| a.q.qs[i] as f32 * a.q.d[i / QK]).collect(),
                ActKind::Q8K => (0..n * k).map(|i| a.qk.qs[i] as f32 * a.qk.d[i / QK_K]).collect(),
            };
            let mut wd = vec![0f32; k];
            for r in 0..rows {
                w.dequantize_row(&map, r, &mut wd);
                for t in 0..n {
                    let terms = wd.iter().zip(&xd[t * k..(t + 1) * k]);
                    let want: f64 = terms.clone().map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    let mag: f64 = terms.map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                    let got = f64::from(y[t * rows + r]);
                    assert!(
                        (got - want).abs() <= 1e-5 * mag,
                        "{ty:?} (copied: {copy}) row {r} token {t}: {got} vs {want} (Σ|·| {mag})"
                    );
                }
            }
        }
    }
}
