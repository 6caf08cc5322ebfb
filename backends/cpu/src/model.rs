//! Loading a GGUF model of one of the architectures this engine runs (llama, mistral,
//! qwen2, qwen3, gemma2, gemma3, phi3): hyperparameters, the weights (memory-mapped, never
//! copied), the tokenizer and the metadata the host shows.
//!
//! Every architecture is read as llama.cpp reads it (`src/models/<arch>.cpp`,
//! `load_arch_hparams` and `load_arch_tensors`, and the shared `load_hparams`): the same
//! metadata keys with the same defaults, the same required and optional tensors (fused
//! `attn_qkv` wherever llama.cpp accepts it), and, as llama.cpp's loader does, a file with
//! a tensor that its architecture does not use is refused rather than run without it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use corral_backend_api::{
    BackendError, Capabilities, ContextParams, ModelInfo, SpecialTokenIds, plugin::Model,
};
use corral_gguf::{GgmlType, GgufError, Value, pooling::Pooling, reader::GgufFile};
use memmap2::Mmap;

use crate::context::CpuContext;
use crate::kv::{KvRotation, KvType};
use crate::tokenizer::Tokenizer;
use crate::weights::{WType, Weight};
use crate::{CpuOptions, Error};

/// The architectures this engine runs, as a sentence (for messages and docs).
pub const SUPPORTED_ARCHITECTURES: &str = "llama (with Llama 3 RoPE frequency factors), \
     mistral, qwen2, qwen3, gemma2, gemma3 and phi3";

/// The model architectures this engine runs (GGUF `general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Llama 1–3 and the many models converted to it (optional biases,
    /// `rope_freqs` for Llama 3.1+).
    Llama,
    /// `mistral`: read as llama.
    Mistral,
    /// `qwen2`: q/k/v biases, NEOX RoPE, optional output bias.
    Qwen2,
    /// `qwen3`: per-head RMS norms of q and k, `key_length` heads, NEOX RoPE.
    Qwen3,
    /// `gemma2`: attention and final logit soft-capping, alternating sliding-window
    /// layers, post-norms, GeGLU, scaled embeddings.
    Gemma2,
    /// `gemma3`: like gemma2 with q/k norms and 5 sliding-window layers per global one.
    Gemma3,
    /// `phi3`: fused `attn_qkv` and gate+up, NEOX RoPE, LongRoPE factors.
    Phi3,
}

impl Arch {
    /// The architecture named `name`, if this engine runs it.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma2" => Arch::Gemma2,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }

    /// How RoPE pairs dimensions in this architecture (llama.cpp's
    /// `llama_model_rope_type`).
    pub fn rope_kind(self) -> RopeKind {
        match self {
            Arch::Llama | Arch::Mistral => RopeKind::Norm,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3 => RopeKind::Neox,
        }
    }

    fn is_llama(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }

    fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs `(2i, 2i+1)`: llama, mistral (ggml's "normal" mode).
    Norm,
    /// Halves `(i, i + n_rot/2)`: qwen2, qwen3, gemma2, gemma3, phi3 (ggml's "neox" mode).
    Neox,
}

/// The feed-forward activation of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, mistral, qwen2, qwen3, phi3.
    Silu,
    /// GELU, tanh approximation (GeGLU): gemma2, gemma3.
    GeluTanh,
}

/// The hyperparameters of a model.
#[derive(Debug, Clone)]
pub struct Hparams {
    /// GGUF architecture name.
    pub arch: String,
    /// The architecture.
    pub kind: Arch,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Layers.
    pub n_layer: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Width of one head (`{arch}.attention.key_length`, else `n_embd / n_head`).
    pub head_dim: usize,
    /// Dimensions of each head that rotary embeddings rotate.
    pub n_rot: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// RoPE base frequency of the global layers.
    pub rope_base: f32,
    /// RoPE linear scaling of the global layers (angles are multiplied by it:
    /// `1 / rope.scaling.factor`).
    pub rope_freq_scale: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_swa: f32,
    /// RoPE linear scaling of the sliding-window layers.
    pub rope_freq_scale_swa: f32,
    /// Factor on the RoPE cosines and sines (`rope.scaling.attn_factor`, LongRoPE; 1
    /// otherwise), ggml's `attn_factor`.
    pub rope_attn_factor: f32,
    /// RoPE pairing.
    pub rope_kind: RopeKind,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// The original context length of a RoPE-extended model
    /// (`rope.scaling.original_context_length`, else `n_ctx_train`): contexts longer than
    /// this use the long LongRoPE factors.
    pub n_ctx_orig: usize,
    /// Factor on the token embeddings (gemma: `sqrt(n_embd)`; else 1).
    pub embd_scale: f32,
    /// Attention scale (`1/sqrt(head_dim)`, or gemma 27B's `1/sqrt(n_embd/n_head)`).
    pub attn_scale: f32,
    /// Whether the scale multiplies the queries before attention (gemma, phi3, as
    /// llama.cpp's graphs do) rather than the scores.
    pub scale_queries: bool,
    /// Feed-forward activation.
    pub act: Activation,
    /// Attention logit soft-capping (`cap · tanh(score / cap)`), gemma2.
    pub attn_softcap: Option<f32>,
    /// Sliding-window attention: the window (0: none). A token at position p on a
    /// sliding-window layer sees the cells at positions q with `p - q < swa_window`.
    pub swa_window: usize,
    /// Which layers attend through the sliding window (llama.cpp's `is_swa`).
    pub swa_layers: Vec<bool>,
    /// Final logit soft-capping (`cap · tanh(logit / cap)`), when the model has it.
    pub final_softcap: Option<f32>,
    /// How embedding contexts pool a sequence (`{arch}.pooling_type`, default mean), or
    /// why this file makes no sequence embedding (generation is unaffected).
    pub pooling: Result<Pooling, String>,
    /// Whether a token attends only to positions up to its own (`{arch}.attention.causal`,
    /// default true); false: to every cell of its sequence, as an encoder does.
    pub causal: bool,
}

impl Hparams {
    /// Width of the keys (and values) of all KV heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the queries of all heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Whether layer `l` attends through the sliding window.
    pub fn is_swa(&self, l: usize) -> bool {
        self.swa_window > 0 && self.swa_layers.get(l).copied().unwrap_or(false)
    }

    /// The RoPE base of layer `l` (llama.cpp's `get_rope_freq_base`).
    pub fn rope_base_of(&self, l: usize) -> f32 {
        if self.swa_layers.get(l).copied().unwrap_or(false) {
            self.rope_base_swa
        } else {
            self.rope_base
        }
    }

    /// The RoPE linear scaling of layer `l` (llama.cpp's `get_rope_freq_scale`).
    pub fn rope_scale_of(&self, l: usize) -> f32 {
        if self.swa_layers.get(l).copied().unwrap_or(false) {
            self.rope_freq_scale_swa
        } else {
            self.rope_freq_scale
        }
    }
}

/// RoPE frequency factors, ggml's `freq_factors`: the angle of pair `i` is divided by
/// factor `i` (`n_rot / 2` of them, F32 in the file).
#[derive(Debug, Clone, Default)]
pub struct RopeFactors {
    /// `rope_freqs.weight` (Llama 3.1+ frequency scaling), used at every context size.
    pub freqs: Option<Vec<f32>>,
    /// `rope_factors_long.weight` (LongRoPE: phi3): for contexts longer than
    /// [`Hparams::n_ctx_orig`].
    pub long: Option<Vec<f32>>,
    /// `rope_factors_short.weight` (LongRoPE): for contexts up to [`Hparams::n_ctx_orig`].
    pub short: Option<Vec<f32>>,
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Layer {
    /// RMS norm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection (rows of a fused `attn_qkv` when the file has one).
    pub wq: Weight,
    /// Key projection.
    pub wk: Weight,
    /// Value projection.
    pub wv: Weight,
    /// Optional biases of q, k, v (qwen2).
    pub bq: Option<Vec<f32>>,
    /// Key bias.
    pub bk: Option<Vec<f32>>,
    /// Value bias.
    pub bv: Option<Vec<f32>>,
    /// Attention output projection.
    pub wo: Weight,
    /// Attention output bias (llama, optional).
    pub bo: Option<Vec<f32>>,
    /// RMS norm of each query head (gemma3, qwen3), `head_dim` wide.
    pub q_norm: Option<Vec<f32>>,
    /// RMS norm of each key head.
    pub k_norm: Option<Vec<f32>>,
    /// RMS norm of the attention output before the residual (gemma).
    pub post_attn_norm: Option<Vec<f32>>,
    /// RMS norm before the feed-forward.
    pub ffn_norm: Vec<f32>,
    /// RMS norm of the feed-forward output before the residual (gemma).
    pub post_ffn_norm: Option<Vec<f32>>,
    /// Gate projection (phi3: the first `n_ff` rows of the fused `ffn_up`).
    pub w_gate: Weight,
    /// Up projection (phi3: the last `n_ff` rows of the fused `ffn_up`).
    pub w_up: Weight,
    /// Down projection.
    pub w_down: Weight,
    /// Feed-forward biases (llama, optional): gate, up, down.
    pub b_gate: Option<Vec<f32>>,
    /// Up bias.
    pub b_up: Option<Vec<f32>>,
    /// Down bias.
    pub b_down: Option<Vec<f32>>,
}

/// Everything a context needs of a model, shared by all its contexts.
pub struct ModelInner {
    /// The mapped file.
    pub map: Mmap,
    /// Hyperparameters.
    pub hp: Hparams,
    /// Token embeddings (`n_vocab` rows of `n_embd`).
    pub tok_embd: Weight,
    /// Final norm.
    pub output_norm: Vec<f32>,
    /// Output projection (the token embeddings when tied).
    pub output: Weight,
    /// Output bias (qwen2, optional).
    pub output_b: Option<Vec<f32>>,
    /// RoPE frequency factors.
    pub rope_factors: RopeFactors,
    /// Blocks.
    pub layers: Vec<Layer>,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Special tokens.
    pub special: SpecialTokenIds,
    /// Metadata for the host.
    pub metadata: ModelInfo,
    /// Engine options.
    pub options: CpuOptions,
    /// The element type of its contexts' KV caches (the load's `kv_cache_type`).
    pub kv_type: KvType,
    /// The rotation of the keys and values a quantized cache keeps, as llama.cpp's.
    pub kv_rotation: KvRotation,
}

impl ModelInner {
    /// The mapped bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Bytes of one cell's keys (or values) in one layer of a context's KV cache.
    pub fn kv_row_bytes(&self) -> usize {
        self.kv_type.row_bytes(self.hp.kv_dim())
    }

    /// Checks a token id.
    pub fn check_token(&self, token: u32) -> Result<(), BackendError> {
        if (token as usize) < self.hp.n_vocab {
            Ok(())
        } else {
            Err(BackendError::invalid(format!(
                "token id {token} is out of range: the vocabulary has {} tokens",
                self.hp.n_vocab
            )))
        }
    }

    /// The RoPE frequency factors for a context of `n_ctx_seq` cells per sequence, as
    /// llama.cpp's `get_rope_factors` chooses them: `rope_freqs` when the file has it,
    /// else the long LongRoPE factors above the original context length and the short
    /// ones up to it.
    pub fn rope_factors(&self, n_ctx_seq: usize) -> Option<&[f32]> {
        let f = &self.rope_factors;
        if let Some(v) = &f.freqs {
            return Some(v);
        }
        if n_ctx_seq > self.hp.n_ctx_orig { f.long.as_deref() } else { f.short.as_deref() }
    }
}

fn gguf_err(path: &str, e: GgufError) -> BackendError {
    BackendError::invalid(format!("cannot load {path}: {e}"))
}

/// The rows `[r0, r0 + n)` of `w` as a weight of their own (a part of a fused tensor:
/// rows are contiguous in the file, whatever the element type).
fn row_range(w: &Weight, r0: usize, n: usize) -> Weight {
    Weight {
        ty: w.ty,
        rows: n,
        cols: w.cols,
        offset: w.offset + r0 * w.row_bytes,
        row_bytes: w.row_bytes,
        copy: None,
    }
}

/// Copies the matmul weights into the engine's memory ([`Weight::copy_to_memory`]: huge
/// pages, Q4_K and Q4_0 interleaved for the kernels) and releases the file's pages of
/// each, so that the process holds one copy: the pages are clean and would come back from
/// the file if read again. The token embeddings are read by row and stay in the file; an
/// output matrix tied to them is copied too (every token reads all of it), and the few
/// embedding rows a batch reads come back from the page cache.
fn copy_weights(map: &Mmap, layers: &mut [Layer], output: &mut Weight) {
    let start = std::time::Instant::now();
    let mut weights: Vec<&mut Weight> = layers
        .iter_mut()
        .flat_map(|l| {
            [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down]
        })
        .collect();
    weights.push(output);
    let (mut count, mut interleaved, mut bytes) = (0usize, 0usize, 0usize);
    for w in weights {
        if w.copy_to_memory(map) {
            count += 1;
            interleaved += usize::from(w.interleavable());
            bytes += w.copy_bytes();
            release_pages(map, w.offset, w.rows * w.row_bytes);
        }
    }
    if count > 0 {
        log::info!(
            "cpu backend copied {count} weights ({:.1} MiB, {interleaved} interleaved) in {:.2} s",
            bytes as f64 / (1u64 << 20) as f64,
            start.elapsed().as_secs_f64()
        );
    }
}

/// Drops the resident pages of `len` bytes at `offset` in the mapped file.
#[cfg(unix)]
fn release_pages(map: &Mmap, offset: usize, len: usize) {
    // SAFETY: the map is a private read-only file mapping that nothing writes, so
    // MADV_DONTNEED only drops resident pages, and a later read of the range faults them
    // in from the file again: every reference into the map stays valid.
    let released =
        unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    if let Err(e) = released {
        log::debug!("cannot release the file pages of a copied weight: {e}");
    }
}

#[cfg(not(unix))]
fn release_pages(_map: &Mmap, _offset: usize, _len: usize) {}

/// llama.cpp's `set_swa_pattern(n, dense_first = false)`: every `n`-th layer is global,
/// the others slide (`n == 0`: all slide).
fn swa_pattern(n: usize, n_layer: usize) -> Vec<bool> {
    (0..n_layer).map(|l| n == 0 || l % n < n - 1).collect()
}

/// Loads a GGUF model whose contexts keep their KV caches as `kv_type`.
pub fn load(path: &str, options: CpuOptions, kv_type: KvType) -> Result<CpuModel, BackendError> {
    let p = Path::new(path);
    if !p.exists() {
        return Err(BackendError::not_found(format!("model file {path} does not exist")));
    }
    let file = GgufFile::open(p).map_err(|e| match e {
        GgufError::Io { .. } => BackendError::invalid(format!("cannot read {path}: {e}")),
        e => gguf_err(path, e),
    })?;
    let arch = file.architecture().unwrap_or("").to_string();
    let kind = match Arch::from_name(&arch) {
        Some(k) => k,
        None if arch.is_empty() => {
            return Err(BackendError::invalid(format!("{path}: general.architecture is missing")));
        }
        None => {
            return Err(BackendError::unsupported(format!(
                "architecture '{arch}' is not supported by the cpu backend (it runs \
                 {SUPPORTED_ARCHITECTURES}); use the llama-cpp backend for this model"
            )));
        }
    };
    let fh = std::fs::File::open(p)
        .map_err(|e| BackendError::invalid(format!("cannot open {path}: {e}")))?;
    // SAFETY: the file is mapped read-only; corral never writes model files while they
    // are loaded, and every access below is bounds-checked against the map's length
    // (the reader already checked that each tensor lies inside the file).
    let map = unsafe { Mmap::map(&fh) }
        .map_err(|e| BackendError::internal(format!("cannot memory-map {path}: {e}")))?;
    if (map.len() as u64) < file.file_len() {
        return Err(BackendError::invalid(format!("{path}: the file shrank while loading")));
    }

    let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| match e {
        Error::Unsupported(m) => BackendError::unsupported(format!("{path}: {m}")),
        e => BackendError::invalid(format!("{path}: {e}")),
    })?;
    let hp = hparams(&file, path, &arch, kind, tokenizer.vocab_size())?;
    let (n_embd, n_layer, n_ff, head_dim) = (hp.n_embd, hp.n_layer, hp.n_ff, hp.head_dim);
    if kv_type.is_quantized() && !head_dim.is_multiple_of(crate::kernels::QK) {
        // As llama.cpp, which cannot store a head that is not whole blocks either.
        return Err(BackendError::unsupported(format!(
            "{path}: a {} KV cache needs heads of a multiple of 32 values; this model's have \
             {head_dim}: use kv_cache_type f16",
            kv_type.name()
        )));
    }

    // Every tensor the architecture reads is recorded; any other is refused at the end.
    let used: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    let has = |name: &str| file.tensor(name).is_some();
    let data_offset = file.data_offset() as usize;
    let tensor = |name: &str, cols: usize, rows: usize| -> Result<Weight, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::invalid(format!("{path}: tensor {name} is missing")))?;
        used.borrow_mut().insert(name.to_string());
        let dims: Vec<u64> = t.dims.iter().copied().chain(std::iter::repeat(1)).take(2).collect();
        if dims != [cols as u64, rows as u64] || t.dims.iter().skip(2).any(|&d| d != 1) {
            return Err(BackendError::invalid(format!(
                "{path}: tensor {name} has shape {:?}, expected [{cols}, {rows}]",
                t.dims
            )));
        }
        let ty = WType::from_ggml(t.ggml_type).ok_or_else(|| {
            BackendError::unsupported(format!(
                "{path}: tensor {name} is {}, which the cpu backend does not support (it \
                 runs F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1 and Q2_K-Q6_K)",
                t.ggml_type.name()
            ))
        })?;
        if !cols.is_multiple_of(ty.block()) {
            return Err(BackendError::invalid(format!("{path}: tensor {name}: bad row length")));
        }
        let row_bytes = ty.row_bytes(cols);
        let offset = data_offset + t.offset as usize;
        if offset + row_bytes * rows > map.len() {
            return Err(BackendError::invalid(format!(
                "{path}: tensor {name} is truncated (the file ends before its data)"
            )));
        }
        Ok(Weight { ty, rows, cols, offset, row_bytes, copy: None })
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>, BackendError> {
        let w = tensor(name, n, 1)?;
        let mut v = vec![0f32; n];
        w.dequantize_row(&map, 0, &mut v);
        Ok(v)
    };
    let opt_vector = |name: &str, n: usize| -> Result<Option<Vec<f32>>, BackendError> {
        if has(name) { vector(name, n).map(Some) } else { Ok(None) }
    };
    // RoPE factors: F32 only, as ggml's rope requires.
    let factors = |name: &str| -> Result<Option<Vec<f32>>, BackendError> {
        match file.tensor(name) {
            None => Ok(None),
            Some(t) if t.ggml_type != GgmlType::F32 => Err(BackendError::invalid(format!(
                "{path}: tensor {name} is {}; RoPE frequency factors must be F32",
                t.ggml_type.name()
            ))),
            Some(_) => vector(name, hp.n_rot / 2).map(Some),
        }
    };

    let kv_dim = hp.kv_dim();
    let q_dim = hp.q_dim();
    let tok_embd = tensor("token_embd.weight", n_embd, hp.n_vocab)?;
    // gemma2 always ties the output to the token embeddings (llama.cpp reads no
    // output.weight for it); the others use output.weight when the file has one.
    let mut output = if kind != Arch::Gemma2 && has("output.weight") {
        tensor("output.weight", n_embd, hp.n_vocab)?
    } else {
        tok_embd.clone()
    };
    let output_b = if kind == Arch::Qwen2 { opt_vector("output.bias", hp.n_vocab)? } else { None };
    // Matmul kernels need whole Q8_0 blocks of activations.
    for (what, n) in [("embedding", n_embd), ("feed-forward", n_ff), ("attention", q_dim)] {
        if n % 32 != 0 {
            return Err(BackendError::unsupported(format!(
                "{path}: {what} width {n} is not a multiple of 32, which the cpu backend needs"
            )));
        }
    }
    let longrope = file.get_str(&format!("{arch}.rope.scaling.type")) == Some("longrope");
    // As llama.cpp: llama reads rope_freqs (or, with LongRoPE scaling, the long and short
    // factors), phi3 the long and short factors, the others none (such a tensor in their
    // files is refused below as unused).
    let rope_factors = match kind {
        k if k.is_llama() && !longrope => {
            RopeFactors { freqs: factors("rope_freqs.weight")?, ..Default::default() }
        }
        k if k.is_llama() || k == Arch::Phi3 => RopeFactors {
            freqs: None,
            long: factors("rope_factors_long.weight")?,
            short: factors("rope_factors_short.weight")?,
        },
        _ => RopeFactors::default(),
    };

    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        // q, k and v: one fused tensor (its rows are q, then k, then v) or three.
        let (wq, wk, wv, bq, bk, bv) = if has(&b("attn_qkv.weight")) {
            let w = tensor(&b("attn_qkv.weight"), n_embd, q_dim + 2 * kv_dim)?;
            let (bq, bk, bv) = if has(&b("attn_qkv.bias")) {
                let v = vector(&b("attn_qkv.bias"), q_dim + 2 * kv_dim)?;
                let (q, kv) = v.split_at(q_dim);
                let (k, v) = kv.split_at(kv_dim);
                (Some(q.to_vec()), Some(k.to_vec()), Some(v.to_vec()))
            } else {
                // llama.cpp adds separate biases to a fused product only when all three
                // are there.
                let q = opt_vector(&b("attn_q.bias"), q_dim)?;
                let k = opt_vector(&b("attn_k.bias"), kv_dim)?;
                let v = opt_vector(&b("attn_v.bias"), kv_dim)?;
                if q.is_some() && k.is_some() && v.is_some() {
                    (q, k, v)
                } else {
                    (None, None, None)
                }
            };
            let (q, k, v) = (
                row_range(&w, 0, q_dim),
                row_range(&w, q_dim, kv_dim),
                row_range(&w, q_dim + kv_dim, kv_dim),
            );
            (q, k, v, bq, bk, bv)
        } else {
            (
                tensor(&b("attn_q.weight"), n_embd, q_dim)?,
                tensor(&b("attn_k.weight"), n_embd, kv_dim)?,
                tensor(&b("attn_v.weight"), n_embd, kv_dim)?,
                opt_vector(&b("attn_q.bias"), q_dim)?,
                opt_vector(&b("attn_k.bias"), kv_dim)?,
                opt_vector(&b("attn_v.bias"), kv_dim)?,
            )
        };
        // Gate and up: phi3 fuses them in ffn_up (gate rows first, as ggml_swiglu splits
        // a row: silu(first half) * second half).
        let (w_gate, w_up) = if kind == Arch::Phi3 {
            let w = tensor(&b("ffn_up.weight"), n_embd, 2 * n_ff)?;
            (row_range(&w, 0, n_ff), row_range(&w, n_ff, n_ff))
        } else {
            (
                tensor(&b("ffn_gate.weight"), n_embd, n_ff)?,
                tensor(&b("ffn_up.weight"), n_embd, n_ff)?,
            )
        };
        let qk_norms = matches!(kind, Arch::Qwen3 | Arch::Gemma3);
        let llama_bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>, BackendError> {
            if kind.is_llama() { opt_vector(&b(name), n) } else { Ok(None) }
        };
        layers.push(Layer {
            attn_norm: vector(&b("attn_norm.weight"), n_embd)?,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            wo: tensor(&b("attn_output.weight"), q_dim, n_embd)?,
            bo: llama_bias("attn_output.bias", n_embd)?,
            q_norm: if qk_norms { Some(vector(&b("attn_q_norm.weight"), head_dim)?) } else { None },
            k_norm: if qk_norms { Some(vector(&b("attn_k_norm.weight"), head_dim)?) } else { None },
            post_attn_norm: if kind.is_gemma() {
                Some(vector(&b("post_attention_norm.weight"), n_embd)?)
            } else {
                None
            },
            ffn_norm: vector(&b("ffn_norm.weight"), n_embd)?,
            post_ffn_norm: if kind.is_gemma() {
                Some(vector(&b("post_ffw_norm.weight"), n_embd)?)
            } else {
                None
            },
            w_gate,
            w_up,
            w_down: tensor(&b("ffn_down.weight"), n_ff, n_embd)?,
            b_gate: llama_bias("ffn_gate.bias", n_ff)?,
            b_up: llama_bias("ffn_up.bias", n_ff)?,
            b_down: llama_bias("ffn_down.bias", n_embd)?,
        });
    }
    let output_norm = vector("output_norm.weight", n_embd)?;
    // As llama.cpp's loader ("wrong number of tensors"): a tensor the architecture does
    // not read means a variant this engine would run wrongly.
    let used = used.into_inner();
    if let Some(t) = file.tensors().iter().find(|t| !used.contains(&t.name)) {
        let n = file.tensors().iter().filter(|t| !used.contains(&t.name)).count();
        return Err(BackendError::unsupported(format!(
            "{path}: tensor {} ({n} unused in all) is not part of a {arch} model as the cpu \
             backend reads it (llama.cpp would refuse the file too, or it is a variant the \
             engine does not run); use the llama-cpp backend for this model",
            t.name
        )));
    }
    if options.copy_weights.unwrap_or(true) {
        copy_weights(&map, &mut layers, &mut output);
    }
    let special = tokenizer.special_tokens(&file);
    let metadata = metadata(&file, &hp, &map);
    log::info!(
        "cpu backend loaded {path}: {arch}, {n_layer} layers, width {n_embd}, vocab {}, {}",
        hp.n_vocab,
        metadata.quantization
    );
    let inner = ModelInner {
        map,
        hp,
        tok_embd,
        output_norm,
        output,
        output_b,
        rope_factors,
        layers,
        tokenizer,
        special,
        metadata,
        options,
        kv_type,
        kv_rotation: KvRotation::for_cache(kv_type, head_dim),
    };
    Ok(CpuModel { inner: Arc::new(inner) })
}

/// Reads the hyperparameters of `kind` as llama.cpp's `load_hparams` and the
/// architecture's `load_arch_hparams` do.
fn hparams(
    file: &GgufFile,
    path: &str,
    arch: &str,
    kind: Arch,
    n_vocab: usize,
) -> Result<Hparams, BackendError> {
    let key = |k: &str| format!("{arch}.{k}");
    let invalid = |m: String| BackendError::invalid(format!("{path}: {m}"));
    // A count that llama.cpp accepts as one number or as one per layer: per-layer arrays
    // are run only when every layer has the same value.
    let count = |k: &str| -> Result<Option<usize>, BackendError> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(Value::Array { values, .. }) => {
                let vals: Option<Vec<u64>> = values.iter().map(Value::as_u64).collect();
                match vals.as_deref() {
                    Some([first, rest @ ..]) if rest.iter().all(|v| v == first) => {
                        Ok(Some(*first as usize))
                    }
                    _ => Err(BackendError::unsupported(format!(
                        "{path}: {} differs between layers, which the cpu backend does not \
                         support; use the llama-cpp backend for this model",
                        key(k)
                    ))),
                }
            }
            Some(v) => v
                .as_u64()
                .map(|v| Some(v as usize))
                .ok_or_else(|| invalid(format!("metadata key {} is not a count", key(k)))),
        }
    };
    let need = |k: &str| -> Result<usize, BackendError> {
        count(k)?.ok_or_else(|| invalid(format!("metadata key {} is missing", key(k))))
    };
    if file.get_u64(&key("expert_count")).is_some_and(|n| n > 0) {
        return Err(BackendError::unsupported(format!(
            "{path}: mixture-of-experts models ({}) are not supported by the cpu backend; use \
             the llama-cpp backend for this model",
            key("expert_count")
        )));
    }
    let n_embd = need("embedding_length")?;
    let n_layer = need("block_count")?;
    if n_layer == 0 || n_embd == 0 {
        return Err(invalid(format!(
            "{} is {n_layer} and {} is {n_embd}: a model has layers and a width",
            key("block_count"),
            key("embedding_length")
        )));
    }
    let n_ff = need("feed_forward_length")?;
    let n_head = need("attention.head_count")?;
    let n_head_kv = count("attention.head_count_kv")?.unwrap_or(n_head);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(invalid(format!("{n_head} heads cannot share {n_head_kv} KV heads")));
    }
    // Sizes are multiplied together below; no real model comes near these bounds.
    const MAX_DIM: usize = 1 << 20;
    let head_dim_key = file.get_u64(&key("attention.key_length")).unwrap_or(0) as usize;
    for (what, v) in [
        ("embedding_length", n_embd),
        ("block_count", n_layer),
        ("feed_forward_length", n_ff),
        ("attention.head_count", n_head),
        ("attention.key_length", head_dim_key),
    ] {
        if v > MAX_DIM {
            return Err(invalid(format!("{} is {v}, beyond any model's", key(what))));
        }
    }
    let head_dim = match file.get_u64(&key("attention.key_length")) {
        Some(d) => d as usize,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(invalid(format!("{n_head} heads do not fit a width of {n_embd}")));
        }
    };
    let head_dim_v =
        file.get_u64(&key("attention.value_length")).map_or(n_embd / n_head, |v| v as usize);
    if head_dim_v != head_dim {
        return Err(BackendError::unsupported(format!(
            "{path}: keys of {head_dim} and values of {head_dim_v} per head; the cpu backend \
             needs them equal (use the llama-cpp backend for this model)"
        )));
    }
    let n_rot = file.get_u64(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
    if n_rot == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) || head_dim == 0 {
        return Err(invalid(format!("rope dimension {n_rot} does not fit heads of {head_dim}")));
    }
    // llama.cpp refuses llama files whose rotation is partial ("invalid n_rot") and
    // asserts a whole rotation for qwen3.
    if n_rot != head_dim && (kind.is_llama() || kind == Arch::Qwen3) {
        return Err(invalid(format!(
            "rope dimension {n_rot} differs from the head width {head_dim}, which {arch} \
             does not allow"
        )));
    }

    // RoPE scaling as llama.cpp's load_hparams: the type defaults to linear, the factor
    // is read whatever the type, and "none" turns scaling off.
    let factor = file
        .get_f64(&key("rope.scaling.factor"))
        .or_else(|| file.get_f64(&key("rope.scale_linear")))
        .unwrap_or(0.0) as f32;
    if !factor.is_finite() || factor < 0.0 {
        return Err(invalid(format!("rope scaling factor {factor} is not a positive number")));
    }
    let train_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
    let rope_freq_scale = match file.get_str(&key("rope.scaling.type")).unwrap_or("linear") {
        "none" => 1.0,
        "linear" | "longrope" => train_scale,
        "yarn" => {
            return Err(BackendError::unsupported(format!(
                "{path}: YaRN rope scaling is not supported by the cpu backend; use the \
                 llama-cpp backend for this model"
            )));
        }
        other => return Err(invalid(format!("unknown rope scaling type '{other}'"))),
    };
    let rope_attn_factor = file.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(1.0) as f32;
    let rope_base = file.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32;
    let n_ctx_train = file.get_u64(&key("context_length")).unwrap_or(2048) as usize;
    let n_ctx_orig = file
        .get_u64(&key("rope.scaling.original_context_length"))
        .filter(|&n| n > 0)
        .map_or(n_ctx_train, |n| n as usize);

    let mut hp = Hparams {
        arch: arch.to_string(),
        kind,
        n_vocab,
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        n_rot,
        eps: file.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
        rope_base,
        rope_freq_scale,
        rope_base_swa: 10000.0,
        rope_freq_scale_swa: 1.0,
        rope_attn_factor,
        rope_kind: kind.rope_kind(),
        n_ctx_train,
        n_ctx_orig,
        embd_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_queries: false,
        act: Activation::Silu,
        attn_softcap: None,
        swa_window: 0,
        swa_layers: vec![false; n_layer],
        final_softcap: None,
        pooling: Pooling::for_sequence_embedding(file),
        causal: file.get_bool(&key("attention.causal")).unwrap_or(true),
    };
    // llama.cpp's load_swa_pattern: `attention.sliding_window_pattern` as one flag per
    // layer, or as the period n (every n-th layer global), else the architecture's n.
    let swa_layers = |default: usize| -> Result<Vec<bool>, BackendError> {
        let k = key("attention.sliding_window_pattern");
        match file.get(&k) {
            None => Ok(swa_pattern(default, n_layer)),
            Some(Value::Array { values, .. }) => {
                let mut v = vec![false; n_layer];
                for (dst, x) in v.iter_mut().zip(values) {
                    *dst = match x {
                        Value::Bool(b) => *b,
                        x => {
                            x.as_u64().ok_or_else(|| {
                                invalid(format!("{k} holds {}, not flags", x.display_short()))
                            })? != 0
                        }
                    };
                }
                Ok(v)
            }
            Some(x) => {
                let n = x.as_u64().ok_or_else(|| invalid(format!("{k} is not a count")))?;
                Ok(swa_pattern(n as usize, n_layer))
            }
        }
    };
    let softcap = |k: &str, default: Option<f64>| {
        file.get_f64(&key(k)).or(default).filter(|c| *c > 0.0).map(|c| c as f32)
    };
    // gemma 27B (46 layers for gemma2, 62 for gemma3) scales queries by the width per
    // head of n_embd, as llama.cpp does after gemma_pytorch.
    let gemma_scale = |n_layer_27b: usize| {
        if n_layer == n_layer_27b {
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        }
    };
    match kind {
        Arch::Gemma2 => {
            // llama_model_gemma2::load_arch_hparams: sliding window (4096 unless set) on
            // every other layer, soft-capped attention scores (50) and logits (30).
            hp.embd_scale = (n_embd as f32).sqrt();
            hp.scale_queries = true;
            hp.act = Activation::GeluTanh;
            hp.swa_window = file.get_u64(&key("attention.sliding_window")).unwrap_or(4096) as usize;
            if hp.swa_window == 0 {
                return Err(invalid(format!("{} is 0", key("attention.sliding_window"))));
            }
            hp.swa_layers = swa_layers(2)?;
            hp.rope_base_swa =
                file.get_f64(&key("rope.freq_base_swa")).map_or(rope_base, |b| b as f32);
            hp.rope_freq_scale_swa = train_scale;
            hp.attn_softcap = softcap("attn_logit_softcapping", Some(50.0));
            hp.final_softcap = softcap("final_logit_softcapping", Some(30.0));
            hp.attn_scale = gemma_scale(46);
        }
        Arch::Gemma3 => {
            // Embeddings scaled by sqrt(n_embd), queries scaled before attention, GeGLU,
            // and (when the file sets a window) five sliding-window layers (RoPE base
            // 10000 unless set, no linear scaling) to every global one.
            hp.embd_scale = (n_embd as f32).sqrt();
            hp.scale_queries = true;
            hp.act = Activation::GeluTanh;
            hp.swa_window = file.get_u64(&key("attention.sliding_window")).unwrap_or(0) as usize;
            if hp.swa_window > 0 {
                hp.swa_layers = swa_layers(6)?;
                hp.rope_base_swa =
                    file.get_f64(&key("rope.freq_base_swa")).map_or(10000.0, |b| b as f32);
            }
            hp.final_softcap = softcap("final_logit_softcapping", None);
            hp.attn_scale = gemma_scale(62);
        }
        Arch::Phi3 => {
            // Queries are scaled before attention. llama.cpp turns phi3's sliding window
            // off (its conversion does not describe which layers slide), so this engine
            // does too, to compute what llama.cpp computes.
            hp.scale_queries = true;
            if file.get_u64(&key("attention.sliding_window")).is_some_and(|w| w > 0) {
                log::warn!(
                    "{path}: phi3's sliding window is ignored, as llama.cpp ignores it \
                     (attention is global on every layer)"
                );
            }
        }
        Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => {}
    }
    // Numbers that would turn every activation into NaN: refused with the key, as the
    // llama.cpp plugin refuses them.
    for (what, v, min) in [
        ("attention.layer_norm_rms_epsilon", hp.eps, 0.0),
        ("rope.freq_base", hp.rope_base, 1.0),
        ("rope.freq_base_swa", hp.rope_base_swa, 1.0),
        ("rope.scaling.attn_factor", hp.rope_attn_factor, 0.0),
    ] {
        if !(v.is_finite() && v >= min) || (what == "rope.scaling.attn_factor" && v > 1e3) {
            return Err(invalid(format!("{} is {v}", key(what))));
        }
    }
    if !hp.rope_freq_scale.is_finite() || !hp.rope_freq_scale_swa.is_finite() {
        return Err(invalid(format!(
            "{} makes the RoPE scale infinite",
            key("rope.scaling.factor")
        )));
    }
    Ok(hp)
}

fn metadata(file: &GgufFile, hp: &Hparams, map: &Mmap) -> ModelInfo {
    let summary = file.summary();
    let mut kv: Vec<(String, String)> = file
        .metadata()
        .iter()
        .map(|(k, v)| {
            let text = match v {
                // Strings whole: the host reads the chat template from here.
                Value::String(s) => s.clone(),
                v => v.display_short(),
            };
            (k.clone(), text)
        })
        .collect();
    kv.sort_by(|a, b| a.0.cmp(&b.0));
    let data: u64 = file.tensors().iter().map(|t| t.size).sum();
    ModelInfo {
        architecture: hp.arch.as_str().into(),
        name: summary.name.unwrap_or_default(),
        parameter_count: summary.parameter_count,
        context_length: hp.n_ctx_train as u32,
        embedding_length: hp.n_embd as u32,
        block_count: hp.n_layer as u32,
        quantization: summary.quantization,
        size_bytes: data.min(map.len() as u64),
        kv,
    }
}

/// A loaded model. Cheap to clone; contexts keep it alive.
#[derive(Clone)]
pub struct CpuModel {
    pub(crate) inner: Arc<ModelInner>,
}

impl CpuModel {
    /// The model's hyperparameters.
    pub fn hparams(&self) -> &Hparams {
        &self.inner.hp
    }
}

impl Model for CpuModel {
    type Context = CpuContext;

    fn metadata(&self) -> ModelInfo {
        self.inner.metadata.clone()
    }

    fn vocab_size(&self) -> u32 {
        self.inner.hp.n_vocab as u32
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.inner.special.clone()
    }

    /// Logits and mean-pooled embeddings (the final hidden states) for every supported
    /// architecture, KV caches of the load's `kv_cache_type` (f16, q8_0 or q4_0), and
    /// context shift: `kv_shift` re-rotates the cached keys (every
    /// supported architecture uses RoPE). Not [`Capabilities::PER_SEQUENCE_CONTEXT`]:
    /// `new_context_per_sequence` keeps the default, a shared context (whose KV caches
    /// are kept per sequence already, with the cells counted against one `n_ctx`).
    fn capabilities(&self) -> Capabilities {
        Capabilities::GENERATION
            | Capabilities::EMBEDDINGS
            | Capabilities::CONTEXT_SHIFT
            | Capabilities::KV_CACHE_TYPES
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        Ok(self.inner.tokenizer.tokenize(text, add_special, parse_special, &self.inner.special))
    }

    fn token_to_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        self.inner.check_token(token)?;
        Ok(self.inner.tokenizer.token_bytes(token).unwrap_or_default().clone())
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        for &t in tokens {
            self.inner.check_token(t)?;
        }
        Ok(String::from_utf8_lossy(&self.inner.tokenizer.detokenize(tokens)).into_owned())
    }

    fn new_context(&self, params: &ContextParams) -> Result<CpuContext, BackendError> {
        CpuContext::new(self.inner.clone(), params)
    }
}
