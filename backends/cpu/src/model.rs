//! Loading a llama-family GGUF model: hyperparameters, the weights (memory-mapped, never
//! copied), the tokenizer and the metadata the host shows.

use std::path::Path;
use std::sync::Arc;

use corral_backend_api::{
    BackendError, Capabilities, ContextParams, ModelInfo, SpecialTokenIds, plugin::Model,
};
use corral_gguf::{GgufError, Value, reader::GgufFile};
use memmap2::Mmap;

use crate::context::CpuContext;
use crate::tokenizer::Tokenizer;
use crate::weights::{WType, Weight};
use crate::{CpuOptions, Error};

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs `(2i, 2i+1)`: llama, mistral (ggml's "normal" mode).
    Norm,
    /// Halves `(i, i + d/2)`: qwen2, gemma3 (ggml's "neox" mode).
    Neox,
}

/// The feed-forward activation of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, mistral, qwen2.
    Silu,
    /// GELU, tanh approximation (GeGLU): gemma.
    GeluTanh,
}

/// The hyperparameters of a llama-family model.
#[derive(Debug, Clone)]
pub struct Hparams {
    /// GGUF architecture name.
    pub arch: String,
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
    /// Width of one head.
    pub head_dim: usize,
    /// Dimensions of each head that rotary embeddings rotate.
    pub n_rot: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RoPE linear scaling (positions are multiplied by it).
    pub rope_freq_scale: f32,
    /// RoPE pairing.
    pub rope_kind: RopeKind,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// Factor on the token embeddings (gemma: `sqrt(n_embd)`; else 1).
    pub embd_scale: f32,
    /// Attention scale (`1/sqrt(head_dim)`).
    pub attn_scale: f32,
    /// Whether the scale multiplies the queries before attention (gemma, as llama.cpp's
    /// graph does) rather than the scores.
    pub scale_queries: bool,
    /// Feed-forward activation.
    pub act: Activation,
    /// Sliding-window attention: the window (0: none) and the layer pattern (every
    /// `swa_pattern`-th layer is global, the others see the last `swa_window` positions).
    pub swa_window: usize,
    /// See `swa_window`.
    pub swa_pattern: usize,
    /// RoPE base of the sliding-window layers.
    pub rope_base_swa: f32,
    /// Final logit soft-capping (`cap · tanh(logit / cap)`), when the model has it.
    pub final_softcap: Option<f32>,
}

impl Hparams {
    /// Width of the keys (and values) of all KV heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether layer `l` attends through the sliding window (llama.cpp's
    /// `set_swa_pattern`: all but every `swa_pattern`-th layer).
    pub fn is_swa(&self, l: usize) -> bool {
        self.swa_window > 0 && self.swa_pattern > 0 && l % self.swa_pattern < self.swa_pattern - 1
    }

    /// The RoPE base of layer `l`.
    pub fn rope_base_of(&self, l: usize) -> f32 {
        if self.is_swa(l) { self.rope_base_swa } else { self.rope_base }
    }
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Layer {
    /// RMS norm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
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
    /// Gate projection.
    pub w_gate: Weight,
    /// Up projection.
    pub w_up: Weight,
    /// Down projection.
    pub w_down: Weight,
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
}

impl ModelInner {
    /// The mapped bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.map
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
}

fn gguf_err(path: &str, e: GgufError) -> BackendError {
    BackendError::invalid(format!("cannot load {path}: {e}"))
}

/// Loads a GGUF model.
pub fn load(path: &str, options: CpuOptions) -> Result<CpuModel, BackendError> {
    let p = Path::new(path);
    if !p.exists() {
        return Err(BackendError::not_found(format!("model file {path} does not exist")));
    }
    let file = GgufFile::open(p).map_err(|e| match e {
        GgufError::Io { .. } => BackendError::invalid(format!("cannot read {path}: {e}")),
        e => gguf_err(path, e),
    })?;
    let arch = file.architecture().unwrap_or("").to_string();
    let rope_kind = match arch.as_str() {
        "llama" | "mistral" => RopeKind::Norm,
        "qwen2" | "gemma3" => RopeKind::Neox,
        "" => {
            return Err(BackendError::invalid(format!("{path}: general.architecture is missing")));
        }
        other => {
            return Err(BackendError::unsupported(format!(
                "architecture '{other}' is not supported by the cpu backend (it runs llama, \
                 mistral, qwen2 and gemma3); use the llama-cpp backend for this model"
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
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| -> Result<usize, BackendError> {
        file.get_u64(&key(k)).map(|v| v as usize).ok_or_else(|| {
            BackendError::invalid(format!("{path}: metadata key {} is missing", key(k)))
        })
    };
    let n_embd = need("embedding_length")?;
    let n_layer = need("block_count")?;
    let n_ff = need("feed_forward_length")?;
    let n_head = need("attention.head_count")?;
    let n_head_kv = file.get_u64(&key("attention.head_count_kv")).map_or(n_head, |v| v as usize);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
        return Err(BackendError::invalid(format!(
            "{path}: {n_head} heads and {n_head_kv} KV heads do not fit a width of {n_embd}"
        )));
    }
    let head_dim =
        file.get_u64(&key("attention.key_length")).map_or(n_embd / n_head, |v| v as usize);
    let n_rot = file.get_u64(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
    if n_rot > head_dim || n_rot % 2 != 0 || head_dim == 0 {
        return Err(BackendError::invalid(format!(
            "{path}: rope dimension {n_rot} does not fit heads of {head_dim}"
        )));
    }
    let rope_freq_scale = match file.get_str(&key("rope.scaling.type")) {
        None | Some("none") => 1.0,
        Some("linear") => {
            file.get_f64(&key("rope.scaling.factor")).filter(|f| *f > 0.0).map_or(1.0, |f| 1.0 / f)
        }
        Some(other) => {
            return Err(BackendError::unsupported(format!(
                "{path}: rope scaling '{other}' is not supported by the cpu backend"
            )));
        }
    } as f32;
    let hp = Hparams {
        arch: arch.clone(),
        n_vocab: tokenizer.vocab_size(),
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        n_rot,
        eps: file.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
        rope_base: file.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32,
        rope_freq_scale,
        rope_kind,
        n_ctx_train: file.get_u64(&key("context_length")).unwrap_or(2048) as usize,
        embd_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_queries: false,
        act: Activation::Silu,
        swa_window: 0,
        swa_pattern: 0,
        rope_base_swa: 10000.0,
        final_softcap: None,
    };
    let mut hp = hp;
    if arch == "gemma3" {
        // As llama.cpp's gemma3: embeddings scaled by sqrt(n_embd), queries scaled before
        // attention, GeGLU, and five sliding-window layers (RoPE base 10000) to every
        // global one.
        hp.embd_scale = (n_embd as f32).sqrt();
        hp.scale_queries = true;
        hp.act = Activation::GeluTanh;
        hp.swa_window = file.get_u64(&key("attention.sliding_window")).unwrap_or(0) as usize;
        hp.swa_pattern = 6;
        hp.rope_base_swa = file.get_f64(&key("rope.freq_base_swa")).map_or(10000.0, |b| b as f32);
        hp.final_softcap =
            file.get_f64(&key("final_logit_softcapping")).filter(|c| *c > 0.0).map(|c| c as f32);
    }
    let hp = hp;

    let data_offset = file.data_offset() as usize;
    let tensor = |name: &str, cols: usize, rows: usize| -> Result<Weight, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::invalid(format!("{path}: tensor {name} is missing")))?;
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
                 runs F32, F16, Q8_0 and Q4_0)",
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
        Ok(Weight { ty, rows, cols, offset, row_bytes })
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>, BackendError> {
        let w = tensor(name, n, 1)?;
        let mut v = vec![0f32; n];
        w.dequantize_row(&map, 0, &mut v);
        Ok(v)
    };
    let opt_vector = |name: &str, n: usize| -> Result<Option<Vec<f32>>, BackendError> {
        if file.tensor(name).is_some() { vector(name, n).map(Some) } else { Ok(None) }
    };
    let kv_dim = hp.kv_dim();
    let q_dim = n_head * head_dim;
    let tok_embd = tensor("token_embd.weight", n_embd, hp.n_vocab)?;
    let output = if file.tensor("output.weight").is_some() {
        tensor("output.weight", n_embd, hp.n_vocab)?
    } else {
        tok_embd.clone()
    };
    // Matmul kernels need whole Q8_0 blocks of activations.
    for (what, n) in [("embedding", n_embd), ("feed-forward", n_ff), ("attention", q_dim)] {
        if n % 32 != 0 {
            return Err(BackendError::unsupported(format!(
                "{path}: {what} width {n} is not a multiple of 32, which the cpu backend needs"
            )));
        }
    }
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        layers.push(Layer {
            attn_norm: vector(&b("attn_norm.weight"), n_embd)?,
            wq: tensor(&b("attn_q.weight"), n_embd, q_dim)?,
            wk: tensor(&b("attn_k.weight"), n_embd, kv_dim)?,
            wv: tensor(&b("attn_v.weight"), n_embd, kv_dim)?,
            bq: opt_vector(&b("attn_q.bias"), q_dim)?,
            bk: opt_vector(&b("attn_k.bias"), kv_dim)?,
            bv: opt_vector(&b("attn_v.bias"), kv_dim)?,
            wo: tensor(&b("attn_output.weight"), q_dim, n_embd)?,
            q_norm: opt_vector(&b("attn_q_norm.weight"), head_dim)?,
            k_norm: opt_vector(&b("attn_k_norm.weight"), head_dim)?,
            post_attn_norm: opt_vector(&b("post_attention_norm.weight"), n_embd)?,
            ffn_norm: vector(&b("ffn_norm.weight"), n_embd)?,
            post_ffn_norm: opt_vector(&b("post_ffw_norm.weight"), n_embd)?,
            w_gate: tensor(&b("ffn_gate.weight"), n_embd, n_ff)?,
            w_up: tensor(&b("ffn_up.weight"), n_embd, n_ff)?,
            w_down: tensor(&b("ffn_down.weight"), n_ff, n_embd)?,
        });
    }
    let output_norm = vector("output_norm.weight", n_embd)?;
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
        layers,
        tokenizer,
        special,
        metadata,
        options,
    };
    Ok(CpuModel { inner: Arc::new(inner) })
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
    /// architecture, and context shift: `kv_shift` re-rotates the cached keys (all three
    /// architectures use RoPE). Not [`Capabilities::PER_SEQUENCE_CONTEXT`]:
    /// `new_context_per_sequence` keeps the default, a shared context (whose KV caches
    /// are kept per sequence already, with the cells counted against one `n_ctx`).
    fn capabilities(&self) -> Capabilities {
        Capabilities::GENERATION | Capabilities::EMBEDDINGS | Capabilities::CONTEXT_SHIFT
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
