//! The forward pass of a llama-family transformer over a batch that mixes sequences.
//!
//! Numerics follow llama.cpp's CPU backend where it matters for agreement: RMS norm with a
//! double-precision sum, RoPE angles built by repeated multiplication as ggml's cache
//! does (with its frequency factors, linear scale and attention factor), activations
//! rounded to f16 for F16 weights and quantized to Q8_0 for Q8_0/Q4_0 weights, keys and
//! values stored as F16, attention scores soft-capped inside the flash-attention loop as
//! ggml's `flash_attn_ext` does.

use half::f16;
use rayon::prelude::*;

use corral_backend_api::BatchEntry;

use crate::kernels;
use crate::kv::{SeqCache, hadamard};
use crate::model::{Activation, Hparams, ModelInner, RopeKind};
use crate::weights::{Prepared, Weight, matmul, matmul_multi};

/// `CORRAL_CPU_DUMP=DIR`: the forward pass writes its intermediate values under
/// llama.cpp's graph names (`attn_norm-3`, `l_out-17`, `result_output`) to
/// `DIR/NAME.f32` (raw little-endian f32, every row of the batch), as `llama-raw` does
/// with `LLAMA_RAW_DUMP`, so the two engines can be compared stage by stage.
fn dump(name: &str, layer: Option<usize>, data: &[f32]) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("CORRAL_CPU_DUMP").map(Into::into)) else {
        return;
    };
    let file = match layer {
        Some(l) => format!("{name}-{l}.f32"),
        None => format!("{name}.f32"),
    };
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Err(e) = std::fs::write(dir.join(file), bytes) {
        log::warn!("CORRAL_CPU_DUMP: {e}");
    }
}

/// Reusable buffers of a context.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rope: Vec<f32>,
    prep: Prepared,
    /// Timing per phase, when profiling is on.
    pub profile: Option<Profile>,
}

/// Accumulated time per phase of the forward pass (set `CORRAL_CPU_PROFILE=1`).
#[derive(Default, Debug, Clone)]
pub struct Profile {
    /// (phase, seconds, calls).
    pub phases: Vec<(&'static str, f64, u64)>,
}

impl Profile {
    fn add(&mut self, name: &'static str, secs: f64) {
        match self.phases.iter_mut().find(|p| p.0 == name) {
            Some(p) => {
                p.1 += secs;
                p.2 += 1;
            }
            None => self.phases.push((name, secs, 1)),
        }
    }
}

struct Timer(Option<std::time::Instant>);

impl Timer {
    fn start(on: bool) -> Timer {
        Timer(on.then(std::time::Instant::now))
    }
    fn lap(&mut self, p: &mut Option<Profile>, name: &'static str) {
        if let (Some(t), Some(p)) = (self.0.as_mut(), p.as_mut()) {
            let now = std::time::Instant::now();
            p.add(name, (now - *t).as_secs_f64());
            *t = now;
        }
    }
}

fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    let n = w.len();
    out[..x.len()].par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, x)| {
        let sum: f64 = x.iter().map(|v| (v * v) as f64).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
            *o = (x * scale) * w;
        }
    });
}

/// RMS-normalises every `w.len()`-wide chunk of `x` in place (per-head q/k norms, the
/// post-norms), using `tmp` as scratch.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32, tmp: &mut Vec<f32>) {
    tmp.clear();
    tmp.extend_from_slice(x);
    rms_norm(tmp, w, x, eps);
}

/// GELU as ggml's CPU backend computes it: the tanh approximation read from a table of
/// f16 inputs and outputs (`GGML_GELU_FP16`), 0 below -10 and the identity above 10.
fn gelu_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    f16::from_bits(gelu_table()[usize::from(f16::from_f32(x).to_bits())]).to_f32()
}

/// The tanh-approximated GELU of every f16 value, rounded to f16 (ggml's
/// `ggml_table_gelu_f16`), built once: 128 KiB.
fn gelu_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|bits| gelu_f16_entry(f16::from_bits(bits))).collect())
}

/// One entry of [`gelu_table`]: `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))` in f32
/// (`1 + 0.044715·x·x` in one fused multiply-add, as ggml's table comes out of its
/// compiler), rounded to f16.
fn gelu_f16_entry(x: f16) -> u16 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    let x = x.to_f32();
    // `1 + a·x·x` fused as the compiler contracts ggml's `ggml_gelu_f32`.
    let inner = (COEF_A * x).mul_add(x, 1.0);
    let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh());
    f16::from_f32(y).to_bits()
}

/// The RoPE of one layer: base, linear scale and frequency factors.
#[derive(Clone, Copy)]
struct RopeParams<'a> {
    base: f32,
    scale: f32,
    factors: Option<&'a [f32]>,
}

impl<'a> RopeParams<'a> {
    fn of_layer(hp: &Hparams, l: usize, factors: Option<&'a [f32]>) -> Self {
        RopeParams { base: hp.rope_base_of(l), scale: hp.rope_scale_of(l), factors }
    }

    fn same(&self, other: &RopeParams) -> bool {
        self.base == other.base && self.scale == other.scale
    }
}

/// Writes (cos, sin) of each rotated pair at position `pos` into `out` (`n_rot` values)
/// as ggml's rope cache (`ggml_rope_cache_init`, no YaRN) computes them: the angle of
/// pair i is `pos · base^(-2i/n_rot)` (by repeated multiplication), divided by the pair's
/// frequency factor, times the linear scale; cosine and sine are multiplied by the
/// attention factor.
fn rope_angles(hp: &Hparams, rope: &RopeParams, pos: f32, out: &mut [f32]) {
    let half = hp.n_rot / 2;
    let theta_scale = rope.base.powf(-2.0 / hp.n_rot as f32);
    let mscale = hp.rope_attn_factor;
    let mut theta = pos;
    for i in 0..half {
        let ff = rope.factors.map_or(1.0, |f| f[i]);
        let th = rope.scale * (theta / ff);
        out[2 * i] = th.cos() * mscale;
        out[2 * i + 1] = th.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Fills `table` with (cos, sin) of each rotated pair for each batch position.
fn rope_table(hp: &Hparams, batch: &[BatchEntry], rope: &RopeParams, table: &mut Vec<f32>) {
    let n = hp.n_rot;
    table.resize(batch.len() * n, 0.0);
    for (e, t) in batch.iter().zip(table.chunks_mut(n)) {
        rope_angles(hp, rope, e.pos as f32, t);
    }
}

fn apply_rope(m: &ModelInner, x: &mut [f32], n_heads: usize, table: &[f32]) {
    let hp = &m.hp;
    let hd = hp.head_dim;
    let half = hp.n_rot / 2;
    let kind = hp.rope_kind;
    x.par_chunks_mut(n_heads * hd).zip(table.par_chunks(half * 2)).for_each(|(row, t)| {
        for head in row.chunks_mut(hd) {
            for i in 0..half {
                let (c, s) = (t[2 * i], t[2 * i + 1]);
                let (a, b) = match kind {
                    RopeKind::Norm => (2 * i, 2 * i + 1),
                    RopeKind::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                (head[a], head[b]) = rotate(x0, x1, c, s);
            }
        }
    });
}

/// One rotated pair, `(x0·cos − x1·sin, x0·sin + x1·cos)`, with the fused multiply-adds the
/// compiler makes of ggml's `rotate_pairs` (the first product of each fused, the second
/// rounded): the rotated queries and keys equal llama.cpp's bit for bit.
#[inline]
fn rotate(x0: f32, x1: f32, c: f32, s: f32) -> (f32, f32) {
    (x0.mul_add(c, -(x1 * s)), x0.mul_add(s, x1 * c))
}

/// Rotates the cached keys of one cell (`kv_dim` values of the cache's type, every KV
/// head) further by `delta` positions: RoPE rotations compose, so keys stored at position
/// p become the keys of position p + delta (a context shift). `layer` chooses the RoPE
/// base and scale, `factors` are the context's frequency factors
/// ([`ModelInner::rope_factors`]). As llama.cpp's K-shift, the rotation includes the
/// attention factor, and a quantized cell is read into f32, rotated and stored again
/// (keys kept under a Hadamard transform, `kv::KvRotation`, taken out of it first and put
/// back after).
pub(crate) fn rerotate_keys(
    m: &ModelInner,
    layer: usize,
    cell: &mut [u8],
    delta: i32,
    factors: Option<&[f32]>,
) {
    let hp = &m.hp;
    let mut k = vec![0f32; hp.kv_dim()];
    m.kv_type.load(cell, &mut k);
    let transform = m.kv_rotation.k;
    if transform > 0 {
        hadamard(&mut k, transform);
    }
    let (hd, half) = (hp.head_dim, hp.n_rot / 2);
    let mut angles = vec![0f32; hp.n_rot];
    rope_angles(hp, &RopeParams::of_layer(hp, layer, factors), delta as f32, &mut angles);
    let table: Vec<(f32, f32)> = angles.chunks(2).map(|cs| (cs[0], cs[1])).collect();
    for head in k.chunks_mut(hd) {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (a, b) = match hp.rope_kind {
                RopeKind::Norm => (2 * i, 2 * i + 1),
                RopeKind::Neox => (i, i + half),
            };
            (head[a], head[b]) = rotate(head[a], head[b], c, s);
        }
    }
    if transform > 0 {
        hadamard(&mut k, transform);
    }
    m.kv_type.store(&k, cell);
}

/// [`hadamard`] of each `size` values of the `n` rows in `x`, on the pool's threads for a
/// batch of more than a few rows (a token's rows take a few microseconds).
fn transform_rows(x: &mut [f32], size: usize, n: usize) {
    if n < 8 {
        hadamard(x, size);
    } else {
        let per_task = size * (x.len() / size).div_ceil(rayon::current_num_threads() * 4).max(1);
        x.par_chunks_mut(per_task).for_each(|c| hadamard(c, size));
    }
}

fn add_bias(x: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_mut(b.len()) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }
}

/// Multiplies `x` (n rows) by `w` into `y`, preparing the activations unless `reuse`
/// says the scratch already holds them prepared for this weight type and input.
fn mm(
    map: &[u8],
    w: &Weight,
    prep: &mut Prepared,
    x: &[f32],
    n: usize,
    y: &mut Vec<f32>,
    reuse: bool,
) {
    if !reuse {
        prep.prepare(w.ty, x, n, w.cols);
    }
    y.resize(n * w.rows, 0.0);
    matmul(map, w, prep, y);
}

/// What a forward pass produces for the rows that asked for output.
pub enum Output {
    /// Logits, `rows × n_vocab`.
    Logits(Vec<f32>),
    /// Final (normed) hidden states, `rows × n_embd`.
    Hidden(Vec<f32>),
}

/// Runs the model over `batch`, appending each entry's keys and values to its
/// sequence's cache (`caches[seq]`), and returns the output of the entries in `out_rows`
/// (batch indices, ascending). `rope_factors` are the context's RoPE frequency factors
/// ([`ModelInner::rope_factors`]). Must run inside the context's thread pool.
pub fn forward(
    m: &ModelInner,
    caches: &mut [SeqCache],
    batch: &[BatchEntry],
    out_rows: &[usize],
    hidden: bool,
    rope_factors: Option<&[f32]>,
    s: &mut Scratch,
) -> Output {
    let hp = &m.hp;
    let map = m.bytes();
    let mut n = batch.len();
    let d = hp.n_embd;
    let hd = hp.head_dim;
    let kv_dim = hp.kv_dim();
    let kv_type = m.kv_type;
    let row_bytes = kv_type.row_bytes(kv_dim);
    let q_dim = hp.q_dim();
    let mut prof = s.profile.take();
    let mut timer = Timer::start(prof.is_some());

    // Token embeddings.
    s.x.resize(n * d, 0.0);
    for (e, row) in batch.iter().zip(s.x.chunks_mut(d)) {
        m.tok_embd.dequantize_row(map, e.token as usize, row);
        if hp.embd_scale != 1.0 {
            row.iter_mut().for_each(|v| *v *= hp.embd_scale);
        }
    }
    // One table for the global layers, and one for the sliding-window layers when their
    // RoPE base or scale differs.
    let rope_global =
        RopeParams { base: hp.rope_base, scale: hp.rope_freq_scale, factors: rope_factors };
    rope_table(hp, batch, &rope_global, &mut s.rope);
    let mut rope_swa = Vec::new();
    if let Some(l) = (0..hp.n_layer).find(|&l| hp.swa_layers[l]) {
        let swa = RopeParams::of_layer(hp, l, rope_factors);
        if !swa.same(&rope_global) {
            rope_table(hp, batch, &swa, &mut rope_swa);
        }
    }

    // Each entry's cell index in its sequence's cache; positions are appended now, keys
    // and values layer by layer.
    let mut cell = Vec::with_capacity(n);
    for e in batch {
        let c = &mut caches[e.seq as usize];
        cell.push(c.pos.len());
        c.pos.push(e.pos);
    }
    for e in batch {
        let c = &mut caches[e.seq as usize];
        let cells = c.pos.len();
        for l in 0..hp.n_layer {
            c.k[l].resize(cells * row_bytes, 0);
            c.v[l].resize(cells * row_bytes, 0);
        }
    }
    dump("inp_scaled", None, &s.x);
    timer.lap(&mut prof, "embed");

    // Scores are scaled, or (gemma, phi3) the queries before attention. With soft-capping
    // (gemma2) a score is `cap · tanh(q·k · scale/cap)`, as ggml's flash attention divides
    // its scale by the cap once.
    let kq_scale = if hp.scale_queries { 1.0 } else { hp.attn_scale };
    let (score_scale, softcap) = match hp.attn_softcap {
        Some(cap) => (kq_scale / cap, cap),
        None => (kq_scale, 0.0),
    };
    let mut compacted = false;
    let group = hp.n_head / hp.n_head_kv;
    for (l, layer) in m.layers.iter().enumerate() {
        rms_norm(&s.x, &layer.attn_norm, &mut resize(&mut s.h, n * d)[..], hp.eps);
        dump("attn_norm", Some(l), &s.h);
        timer.lap(&mut prof, "norm");
        if layer.wk.ty == layer.wq.ty && layer.wv.ty == layer.wq.ty {
            s.prep.prepare(layer.wq.ty, &s.h, n, d);
            s.q.resize(n * q_dim, 0.0);
            s.k.resize(n * kv_dim, 0.0);
            s.v.resize(n * kv_dim, 0.0);
            matmul_multi(
                map,
                &mut [
                    (&layer.wq, &mut s.q[..]),
                    (&layer.wk, &mut s.k[..]),
                    (&layer.wv, &mut s.v[..]),
                ],
                &s.prep,
            );
        } else {
            mm(map, &layer.wq, &mut s.prep, &s.h, n, &mut s.q, false);
            mm(map, &layer.wk, &mut s.prep, &s.h, n, &mut s.k, false);
            mm(map, &layer.wv, &mut s.prep, &s.h, n, &mut s.v, false);
        }
        timer.lap(&mut prof, "matmul qkv");
        add_bias(&mut s.q, &layer.bq);
        add_bias(&mut s.k, &layer.bk);
        add_bias(&mut s.v, &layer.bv);
        dump("Vcur", Some(l), &s.v);
        if let Some(w) = &layer.q_norm {
            rms_norm_in_place(&mut s.q, w, hp.eps, &mut s.tmp);
            dump("Qcur_normed", Some(l), &s.q);
        }
        if let Some(w) = &layer.k_norm {
            rms_norm_in_place(&mut s.k, w, hp.eps, &mut s.tmp);
            dump("Kcur_normed", Some(l), &s.k);
        }
        let swa = hp.is_swa(l);
        let table = if hp.swa_layers[l] && !rope_swa.is_empty() { &rope_swa } else { &s.rope };
        apply_rope(m, &mut s.q, hp.n_head, table);
        apply_rope(m, &mut s.k, hp.n_head_kv, table);
        dump("Qcur", Some(l), &s.q);
        dump("Kcur", Some(l), &s.k);
        if hp.scale_queries {
            let a = hp.attn_scale;
            s.q.par_iter_mut().for_each(|v| *v *= a);
        }
        // A quantized cache keeps rotated keys and values (kv::KvRotation).
        let rot = m.kv_rotation;
        if rot.k > 0 {
            transform_rows(&mut s.q, rot.k, n);
            transform_rows(&mut s.k, rot.k, n);
        }
        if rot.v > 0 {
            transform_rows(&mut s.v, rot.v, n);
        }
        let window = if swa { hp.swa_window as u32 } else { u32::MAX };
        for (i, e) in batch.iter().enumerate() {
            let c = &mut caches[e.seq as usize];
            let at = cell[i] * row_bytes;
            let row = i * kv_dim..(i + 1) * kv_dim;
            kv_type.store(&s.k[row.clone()], &mut c.k[l][at..at + row_bytes]);
            kv_type.store(&s.v[row], &mut c.v[l][at..at + row_bytes]);
        }
        timer.lap(&mut prof, "rope+kv store");

        // Attention, computed as llama.cpp's CPU flash attention does: for batches of
        // fewer than FA_TILE_Q rows its one-row path (the query rounded to f16, an online
        // softmax over the cells in cache order, an f16 accumulator for the weighted
        // values), for larger batches its tiled path (f32 query and accumulator, the
        // softmax's maximum moved once per tile of cells).
        let caches_ro: &[SeqCache] = caches;
        let q = &s.q;
        let att = resize(&mut s.att, n * q_dim);
        let tiled = batch.len() >= FA_TILE_Q;
        // One task per (entry, heads sharing a KV head): the heads read each cell's key
        // and value once.
        let threads = rayon::current_num_threads().max(1);
        let per_task = heads_per_task(group, hp.n_head, n, threads);
        let tasks_per_entry = hp.n_head / per_task;
        att.par_chunks_mut(per_task * hd).enumerate().for_each_init(
            || (Vec::new(), vec![0f32; per_task * hd], vec![f16::ZERO; per_task * hd]),
            |(cells, qg, acc16), (idx, out)| {
                let (i, first) = (idx / tasks_per_entry, (idx % tasks_per_entry) * per_task);
                let e = &batch[i];
                let c = &caches_ro[e.seq as usize];
                cells.clear();
                cells.extend(
                    c.pos
                        .iter()
                        .enumerate()
                        .filter(|&(_, &p)| visible(p, e.pos, window, hp.causal))
                        .map(|(cell, _)| cell as u32),
                );
                let at = i * q_dim + first * hd;
                qg.copy_from_slice(&q[at..at + per_task * hd]);
                let mut max = [f32::NEG_INFINITY; MAX_HEADS_PER_TASK];
                let mut sum = [0f32; MAX_HEADS_PER_TASK];
                let (max, sum) = (&mut max[..per_task], &mut sum[..per_task]);
                let kv = kernels::KvHead {
                    ty: kv_type,
                    k: &c.k[l],
                    v: &c.v[l],
                    kv_dim,
                    offset: (first / group) * hd,
                };
                let scale = (score_scale, softcap);
                if tiled || kv_type.is_quantized() {
                    out.fill(0.0);
                    let state = kernels::SoftmaxF32 { acc: out, max, sum };
                    if kv_type.is_quantized() {
                        kernels::attend_heads_quantized(qg, kv, cells, scale, state);
                    } else {
                        kernels::attend_heads_tiled(qg, kv, cells, scale, state);
                    }
                    for (h, o) in out.chunks_mut(hd).enumerate() {
                        let inv = if sum[h] != 0.0 { 1.0 / sum[h] } else { 0.0 };
                        o.iter_mut().for_each(|o| *o *= inv);
                    }
                } else {
                    kernels::round_f16(qg);
                    acc16.fill(f16::ZERO);
                    let state = kernels::OnlineSoftmax { acc: acc16, max, sum };
                    kernels::attend_heads_f16(qg, kv, cells, scale, state);
                    for (h, o) in out.chunks_mut(hd).enumerate() {
                        let inv = if sum[h] > 0.0 { 1.0 / sum[h] } else { 0.0 };
                        for (o, a) in o.iter_mut().zip(&acc16[h * hd..(h + 1) * hd]) {
                            *o = a.to_f32() * inv;
                        }
                    }
                }
            },
        );
        dump("kqv_out", Some(l), &s.att);
        if rot.v > 0 {
            transform_rows(&mut s.att, rot.v, n);
        }
        timer.lap(&mut prof, "attention");
        // After the last layer's attention only the rows that produce output matter (as
        // llama.cpp's inp_out_ids): keep those rows of x and att.
        if l + 1 == hp.n_layer && out_rows.len() < n {
            for (j, &i) in out_rows.iter().enumerate() {
                s.x.copy_within(i * d..(i + 1) * d, j * d);
                s.att.copy_within(i * q_dim..(i + 1) * q_dim, j * q_dim);
            }
            n = out_rows.len();
            s.x.truncate(n * d);
            s.att.truncate(n * q_dim);
            compacted = true;
            if n == 0 {
                break;
            }
        }
        mm(map, &layer.wo, &mut s.prep, &s.att, n, &mut s.tmp, false);
        add_bias(&mut s.tmp, &layer.bo);
        timer.lap(&mut prof, "matmul wo");
        dump("attn_out", Some(l), &s.tmp);
        if let Some(w) = &layer.post_attn_norm {
            rms_norm_in_place(&mut s.tmp, w, hp.eps, &mut s.h);
            dump("attn_post_norm", Some(l), &s.tmp);
        }
        add_in_place(&mut s.x, &s.tmp);
        dump("sa_out", Some(l), &s.x);

        rms_norm(&s.x, &layer.ffn_norm, &mut resize(&mut s.h, n * d)[..], hp.eps);
        dump("ffn_norm", Some(l), &s.h);
        timer.lap(&mut prof, "norm");
        if layer.w_up.ty == layer.w_gate.ty {
            s.prep.prepare(layer.w_gate.ty, &s.h, n, d);
            s.gate.resize(n * hp.n_ff, 0.0);
            s.up.resize(n * hp.n_ff, 0.0);
            matmul_multi(
                map,
                &mut [(&layer.w_gate, &mut s.gate[..]), (&layer.w_up, &mut s.up[..])],
                &s.prep,
            );
        } else {
            mm(map, &layer.w_gate, &mut s.prep, &s.h, n, &mut s.gate, false);
            mm(map, &layer.w_up, &mut s.prep, &s.h, n, &mut s.up, false);
        }
        add_bias(&mut s.gate, &layer.b_gate);
        add_bias(&mut s.up, &layer.b_up);
        dump("ffn_gate", Some(l), &s.gate);
        dump("ffn_up", Some(l), &s.up);
        timer.lap(&mut prof, "matmul gate+up");
        let nff = hp.n_ff;
        let act = hp.act;
        s.gate.par_chunks_mut(nff).zip(s.up.par_chunks(nff)).for_each(|(g, u)| {
            for (g, u) in g.iter_mut().zip(u) {
                *g = match act {
                    Activation::Silu => *g / (1.0 + (-*g).exp()) * u,
                    Activation::GeluTanh => gelu_ggml(*g) * u,
                };
            }
        });
        dump("ffn_geglu", Some(l), &s.gate);
        timer.lap(&mut prof, "glu");
        mm(map, &layer.w_down, &mut s.prep, &s.gate, n, &mut s.tmp, false);
        add_bias(&mut s.tmp, &layer.b_down);
        timer.lap(&mut prof, "matmul down");
        dump("ffn_out", Some(l), &s.tmp);
        if let Some(w) = &layer.post_ffn_norm {
            rms_norm_in_place(&mut s.tmp, w, hp.eps, &mut s.h);
            dump("ffn_post_norm", Some(l), &s.tmp);
        }
        add_in_place(&mut s.x, &s.tmp);
        dump("l_out", Some(l), &s.x);
    }

    // Output rows only.
    let r = out_rows.len();
    let mut hsel = Vec::with_capacity(r * d);
    for (j, &i) in out_rows.iter().enumerate() {
        let row = if compacted { j } else { i };
        hsel.extend_from_slice(&s.x[row * d..(row + 1) * d]);
    }
    let mut normed = vec![0f32; r * d];
    rms_norm(&hsel, &m.output_norm, &mut normed, hp.eps);
    dump("result_norm", None, &normed);
    let out = if hidden {
        Output::Hidden(normed)
    } else {
        let mut logits = Vec::new();
        if r > 0 {
            mm(map, &m.output, &mut s.prep, &normed, r, &mut logits, false);
            add_bias(&mut logits, &m.output_b);
            if let Some(cap) = hp.final_softcap {
                logits.par_iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
            }
        }
        dump("result_output", None, &logits);
        Output::Logits(logits)
    };
    timer.lap(&mut prof, "output");
    s.profile = prof;
    out
}

/// llama.cpp's CPU flash attention (`ggml_compute_forward_flash_attn_ext_f16`) takes its
/// tiled path when a batch has at least this many query rows (`GGML_FA_TILE_Q`), its
/// one-row path below.
const FA_TILE_Q: usize = 64;
/// Query heads one attention task of the one-row path handles at most (the kernel's
/// limit, `kernels::attend_heads_f16`).
const MAX_HEADS_PER_TASK: usize = 64;

/// Query heads per attention task for `n` entries of `n_head` heads in KV groups of
/// `group`: the whole group, split into its next smaller divisor while there would be
/// fewer than two tasks per thread or more than [`MAX_HEADS_PER_TASK`] heads per task.
fn heads_per_task(group: usize, n_head: usize, n: usize, threads: usize) -> usize {
    let mut per_task = group.max(1);
    while per_task > 1 && (per_task > MAX_HEADS_PER_TASK || n * n_head / per_task < 2 * threads) {
        per_task = (1..per_task).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1);
    }
    per_task
}

/// Whether a cell at position `p` is visible from a query at `query_pos`: at or before
/// it (every later cell too when attention is not causal), and within the window on
/// sliding-window layers (llama.cpp masks a cell when query pos - cell pos >= window,
/// which never masks a later cell).
#[inline]
fn visible(p: u32, query_pos: u32, window: u32, causal: bool) -> bool {
    if p > query_pos { !causal } else { query_pos - p < window }
}

fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks take whole divisors of a KV group, at most 64 heads, and at least two tasks
    /// per thread where the heads allow it.
    #[test]
    fn attention_tasks_split_groups_by_their_divisors() {
        // (group, n_head, entries, threads) -> heads per task
        for (case, want) in [
            ((8, 32, 1, 2), 8),     // TinyLlama, one token: 4 tasks
            ((8, 32, 4, 2), 8),     // four sequences: 16 tasks
            ((4, 4, 1, 2), 1),      // Gemma 3 270M, one token: one task per head
            ((4, 4, 4, 2), 4),      // four tokens: 4 tasks, two per thread
            ((7, 28, 4, 2), 7),     // a group of 7 stays whole when there are tasks enough
            ((7, 28, 1, 8), 1),     // or drops to 1
            ((128, 128, 8, 2), 64), // never more than 64 heads per task
            ((71, 71, 8, 2), 1),    // a prime group over 64: one head per task
        ] {
            let (g, h, n, t) = case;
            let got = heads_per_task(g, h, n, t);
            assert_eq!(got, want, "{case:?}");
            assert!(g % got == 0 && got <= MAX_HEADS_PER_TASK);
        }
    }

    /// The table gives what rounding the input to f16, computing the tanh GELU in f32 and
    /// rounding the result to f16 gives, bit for bit; the ends are 0 and the identity.
    #[test]
    fn gelu_table_equals_the_direct_f16_computation() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let got = gelu_ggml(x);
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x
            } else {
                f16::from_bits(gelu_f16_entry(f16::from_f32(x))).to_f32()
            };
            assert_eq!(got.to_bits(), want.to_bits(), "gelu({x})");
            x += 0.000_731;
        }
        assert_eq!(gelu_ggml(0.0), 0.0);
        // llama.cpp's GeGLU on Gemma 3 270M (layer 0, `LLAMA_RAW_DUMP`): the table entry at
        // -1.998 differs in its last bit unless `1 + a·x·x` is fused as ggml's compiler does.
        let (gate, up) = (f32::from_bits(0xbfff_dd67), f32::from_bits(0xbff0_24bf));
        assert_eq!((gelu_ggml(gate) * up).to_bits(), 0x3dae_d4c1);
        assert!((gelu_ggml(1.0) - 0.8412).abs() < 1e-3, "{}", gelu_ggml(1.0));
        assert!((gelu_ggml(-1.0) + 0.1588).abs() < 1e-3, "{}", gelu_ggml(-1.0));
    }
}
