//! The model generator: GGUF files with random weights and a real vocabulary, in the
//! architectures llama.cpp runs (llama, Llama 3.1, qwen2, qwen3, gemma2, gemma3, phi3;
//! see [`Arch`]), stored as F32, F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K or llama.cpp's
//! `Q4_K_M` mix ([`WeightType`]).
//!
//! ```no_run
//! use corral_gguf::generate::{generate_model, Arch, GenerateOptions, ModelShape, WeightType};
//! # fn main() -> Result<(), corral_gguf::GgufError> {
//! let opts = GenerateOptions {
//!     arch: Arch::Qwen3,
//!     shape: ModelShape::tiny(),
//!     weight_type: WeightType::Q4_K_M,
//!     seed: 1,
//!     name: "tiny-test".into(),
//!     ..Default::default()
//! };
//! let report = generate_model("tiny.gguf".as_ref(), &opts)?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Weights: 1-D norm weights are F32 near 1.0; matrices are normal with standard
//! deviation `1/sqrt(row length)` (the output matrix scaled by [`OUTPUT_GAIN`] so the
//! logits spread widely and greedy decoding never ties); the token embeddings have
//! standard deviation 1, or are scaled like the output matrix when they are also the
//! output (tied embeddings). Data are generated in chunks of rows, each chunk from its own
//! RNG stream derived from (seed, tensor, chunk), on every core, so the file is the same
//! whatever the thread count, and only a few MiB are in memory at any time. The values
//! do not depend on the weight type: a `Q4_K_M` file holds exactly what
//! `llama-quantize` makes of the `F32` file of the same options.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::bpe::{Bpe, PreTokenizer};
use crate::error::GgufError;
use crate::quant;
use crate::types::{GgmlType, Value, ValueType};
use crate::writer::{GgufBuilder, GgufWriter};

mod arch;
pub mod lora;
mod mix;

pub use arch::{Arch, llama3_rope_factors};

/// The ChatML template written to `tokenizer.chat_template` unless another is given,
/// with tools as Qwen 2.5's ChatML offers them: a conversation without tools renders as
/// plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per message); with tools, a
/// system turn lists them (after the first system message's text) and asks for calls
/// in `<tool_call>` tags, and an assistant message's `tool_calls` render in those tags.
pub const CHATML_TEMPLATE: &str = "{%- if tools %}{{ '<|im_start|>system\\n' }}\
{%- if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}\
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\
{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}\
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n\
{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}\
{%- endif %}\
{%- for message in messages %}\
{%- if not (tools and loop.first and message['role'] == 'system') %}\
{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}\
{%- for call in message['tool_calls'] or [] %}\
{{- ('\\n' if message['content'] or not loop.first else '') + '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' + \
(call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}\
{%- endfor %}\
{{- '<|im_end|>\\n' }}\
{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Scale of the output matrix relative to `1/sqrt(n_embd)`: the logits come out with a
/// standard deviation of about this much.
pub const OUTPUT_GAIN: f32 = 3.0;
/// `llama.rope.freq_base` of [`Arch::Llama`] (the other architectures: see [`Arch`]).
pub const ROPE_FREQ_BASE: f32 = 10_000.0;
/// `llama.attention.layer_norm_rms_epsilon` of [`Arch::Llama`].
pub const RMS_NORM_EPS: f32 = 1e-5;
/// Elements generated per RNG stream (rounded to whole rows).
const CHUNK_ELEMS: usize = 1 << 16;
/// Chunks each thread handles per batch.
const CHUNKS_PER_THREAD: usize = 16;

/// The hyperparameters of a model (the architecture adds its own fixed ones, see
/// [`Arch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Vocabulary size, the 4 special tokens included.
    pub n_vocab: u32,
    /// Width of the residual stream.
    pub n_embd: u32,
    /// Number of transformer blocks.
    pub n_layer: u32,
    /// Hidden width of the feed-forward network.
    pub n_ff: u32,
    /// Attention (query) heads.
    pub n_head: u32,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: u32,
    /// Training context length (`{arch}.context_length`).
    pub n_ctx_train: u32,
    /// Size of one attention head when it is not `n_embd / n_head` (Qwen3 and Gemma
    /// models have such heads; written as `attention.key_length`/`value_length`).
    /// `None`: `n_embd / n_head`.
    pub n_embd_head: Option<u32>,
    /// Sliding-window size for the architectures with one (Gemma 2 and 3; Phi-3 only
    /// when set). `None`: the architecture's default, see [`Arch::sliding_window`].
    pub n_swa: Option<u32>,
}

impl ModelShape {
    /// A model small enough to generate in a few milliseconds: 512 tokens, 64 wide,
    /// 2 layers, 4 heads over 2 KV heads, context 512 (about 140K parameters).
    pub fn tiny() -> Self {
        ModelShape {
            n_vocab: 512,
            n_embd: 64,
            n_layer: 2,
            n_ff: 128,
            n_head: 4,
            n_head_kv: 2,
            n_ctx_train: 512,
            n_embd_head: None,
            n_swa: None,
        }
    }

    /// About 5M parameters: 4096 tokens, 256 wide, 4 layers, 8 heads over 4.
    pub fn small() -> Self {
        ModelShape {
            n_vocab: 4096,
            n_embd: 256,
            n_layer: 4,
            n_ff: 768,
            n_head: 8,
            n_head_kv: 4,
            n_ctx_train: 1024,
            n_embd_head: None,
            n_swa: None,
        }
    }

    /// About 110M parameters: 16384 tokens, 768 wide, 12 layers, 12 heads over 4.
    pub fn medium() -> Self {
        ModelShape {
            n_vocab: 16384,
            n_embd: 768,
            n_layer: 12,
            n_ff: 2048,
            n_head: 12,
            n_head_kv: 4,
            n_ctx_train: 2048,
            n_embd_head: None,
            n_swa: None,
        }
    }

    /// TinyLlama 1.1B's shape: 32000 tokens, 2048 wide, 22 layers, FFN 5632, 32 heads
    /// over 4 KV heads, context 2048.
    pub fn tinyllama() -> Self {
        ModelShape {
            n_vocab: 32000,
            n_embd: 2048,
            n_layer: 22,
            n_ff: 5632,
            n_head: 32,
            n_head_kv: 4,
            n_ctx_train: 2048,
            n_embd_head: None,
            n_swa: None,
        }
    }

    /// Parses a preset name ("tiny", "small", "medium", "tinyllama" or "1b"), optionally
    /// followed by overrides: `tiny:n_layer=4,n_ctx_train=1024`. The keys are the field
    /// names, also accepted without the `n_` prefix (`layer=4`); `head_dim` sets
    /// `n_embd_head` and `swa` / `sliding_window` sets `n_swa`.
    pub fn parse(spec: &str) -> Result<ModelShape, GgufError> {
        let (name, overrides) = spec.split_once(':').unwrap_or((spec, ""));
        let mut shape = match name.trim().to_ascii_lowercase().as_str() {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            "medium" => Self::medium(),
            "tinyllama" | "tinyllama-1.1b" | "1b" => Self::tinyllama(),
            other => {
                return Err(GgufError::Generate(format!(
                    "unknown model shape '{other}' (known: tiny, small, medium, tinyllama)"
                )));
            }
        };
        for kv in overrides.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                GgufError::Generate(format!("shape override '{kv}' is not key=value"))
            })?;
            let v: u32 = v.trim().parse().map_err(|_| {
                GgufError::Generate(format!("shape override '{kv}': not a whole number"))
            })?;
            let k = k.trim();
            match k.strip_prefix("n_").unwrap_or(k) {
                "embd_head" | "head_dim" => {
                    shape.n_embd_head = Some(v);
                    continue;
                }
                "swa" | "sliding_window" => {
                    shape.n_swa = Some(v);
                    continue;
                }
                _ => {}
            }
            let field = match k.strip_prefix("n_").unwrap_or(k) {
                "vocab" => &mut shape.n_vocab,
                "embd" => &mut shape.n_embd,
                "layer" => &mut shape.n_layer,
                "ff" => &mut shape.n_ff,
                "head" => &mut shape.n_head,
                "head_kv" => &mut shape.n_head_kv,
                "ctx_train" | "ctx" => &mut shape.n_ctx_train,
                _ => {
                    return Err(GgufError::Generate(format!(
                        "unknown shape field '{k}' (n_vocab, n_embd, n_layer, n_ff, n_head, \
                         n_head_kv, n_ctx_train, head_dim, swa)"
                    )));
                }
            };
            *field = v;
        }
        shape.validate()?;
        Ok(shape)
    }

    /// Checks the shape is consistent: everything positive, heads divide the width
    /// (unless a head size is given), KV heads divide the heads, an even head size (for
    /// RoPE), room for the vocabulary.
    pub fn validate(&self) -> Result<(), GgufError> {
        let bad = |m: String| Err(GgufError::Generate(format!("invalid shape {self:?}: {m}")));
        let s = self;
        if [s.n_embd, s.n_layer, s.n_ff, s.n_head, s.n_head_kv, s.n_ctx_train].contains(&0) {
            return bad("every dimension must be positive".into());
        }
        if s.n_vocab < 260 {
            return bad("n_vocab must be at least 260 (256 bytes and 4 special tokens)".into());
        }
        match s.n_embd_head {
            Some(h) if h == 0 || !h.is_multiple_of(2) => {
                return bad("the head size must be positive and even".into());
            }
            Some(_) => {}
            None if !s.n_embd.is_multiple_of(s.n_head)
                || !(s.n_embd / s.n_head).is_multiple_of(2) =>
            {
                return bad("n_embd must be n_head times an even head size".into());
            }
            None => {}
        }
        if !s.n_head.is_multiple_of(s.n_head_kv) {
            return bad("n_head must be a multiple of n_head_kv".into());
        }
        Ok(())
    }

    /// Size of one attention head: `n_embd_head`, else `n_embd / n_head`.
    pub fn head_dim(&self) -> u32 {
        self.n_embd_head.unwrap_or(self.n_embd / self.n_head)
    }

    /// Width of the K and V projections.
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim() * self.n_head_kv
    }

    /// Total parameters (tensor elements) of the generated [`Arch::Llama`] model
    /// ([`GenerateReport::parameter_count`] has the count of any architecture).
    pub fn parameter_count(&self) -> u64 {
        let (e, v, f, kv) =
            (self.n_embd as u64, self.n_vocab as u64, self.n_ff as u64, self.n_embd_kv() as u64);
        let q = u64::from(self.n_head) * u64::from(self.head_dim());
        let block = 2 * e + 2 * e * q + 2 * e * kv + 3 * e * f;
        2 * e * v + e + self.n_layer as u64 * block
    }
}

impl FromStr for ModelShape {
    type Err = GgufError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The storage type of the weight matrices (norm weights, biases and other 1-D tensors
/// are always F32).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// Everything F32 (`general.file_type` 0, ALL_F32).
    F32,
    /// Matrices F16 (file type 1, MOSTLY_F16).
    F16,
    /// Matrices Q8_0 (file type 7, MOSTLY_Q8_0).
    Q8_0,
    /// Matrices Q4_0 (file type 2, MOSTLY_Q4_0).
    Q4_0,
    /// Every matrix Q4_K (file type 14, MOSTLY_Q4_K_S), Q5_0 where rows are not whole
    /// 256-blocks: what `llama-quantize --pure F32.gguf out.gguf Q4_K_S` writes.
    Q4_K,
    /// Every matrix Q5_K (file type 16, MOSTLY_Q5_K_S), Q5_1 where rows are not whole
    /// 256-blocks: `llama-quantize --pure ... Q5_K_S`.
    Q5_K,
    /// Every matrix Q6_K (file type 18, MOSTLY_Q6_K), Q8_0 where rows are not whole
    /// 256-blocks: `llama-quantize ... Q6_K`.
    Q6_K,
    /// llama.cpp's Q4_K_M mix (file type 15): Q4_K, with Q6_K for the output, for
    /// attn_v (or a fused attn_qkv) and ffn_down in the first and last eighth of the
    /// layers and every third layer between, the fallbacks where rows are not whole
    /// 256-blocks (Q4_K→Q5_0, Q6_K→Q8_0, a tied output's type for the token embeddings):
    /// exactly `llama-quantize F32.gguf out.gguf Q4_K_M`.
    Q4_K_M,
}

impl WeightType {
    /// All of them, in order of decreasing precision (roughly).
    pub const ALL: [WeightType; 8] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::Q8_0,
        WeightType::Q6_K,
        WeightType::Q5_K,
        WeightType::Q4_K_M,
        WeightType::Q4_K,
        WeightType::Q4_0,
    ];

    /// The ggml type of the matrices (for `Q4_K_M`, its default type Q4_K; see
    /// [`GenerateReport::tensor_types`] for what each tensor got).
    pub fn ggml_type(self) -> GgmlType {
        match self {
            WeightType::F32 => GgmlType::F32,
            WeightType::F16 => GgmlType::F16,
            WeightType::Q8_0 => GgmlType::Q8_0,
            WeightType::Q4_0 => GgmlType::Q4_0,
            WeightType::Q4_K | WeightType::Q4_K_M => GgmlType::Q4_K,
            WeightType::Q5_K => GgmlType::Q5_K,
            WeightType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// llama.cpp's `general.file_type` number.
    pub fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q8_0 => 7,
            WeightType::Q4_K => 14,
            WeightType::Q4_K_M => 15,
            WeightType::Q5_K => 16,
            WeightType::Q6_K => 18,
        }
    }

    /// "F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K" or "Q4_K_M".
    pub fn name(self) -> &'static str {
        match self {
            WeightType::Q4_K_M => "Q4_K_M",
            other => other.ggml_type().name(),
        }
    }

    /// Whether any tensor is quantized (`general.quantization_version` is written).
    pub fn is_quantized(self) -> bool {
        !matches!(self, WeightType::F32 | WeightType::F16)
    }

    /// Parses a name, case-insensitively ("q4_k_m", "Q8_0", "f16", "q6_k", ...).
    pub fn parse(s: &str) -> Result<WeightType, GgufError> {
        Self::ALL.into_iter().find(|w| w.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|w| w.name()).collect();
            GgufError::Generate(format!("unknown weight type '{s}' (known: {})", known.join(", ")))
        })
    }
}

impl FromStr for WeightType {
    type Err = GgufError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of vocabulary a generated file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VocabKind {
    /// GPT-2 byte-level BPE (`tokenizer.ggml.model = "gpt2"`; pre-tokenizer `llama-bpe`
    /// for [`Arch::Llama3`], `qwen2` for Qwen, `gpt-2` otherwise),
    /// trained on the embedded corpus; ChatML special tokens (see [`crate::bpe`]).
    Bpe,
    /// SentencePiece (`tokenizer.ggml.model = "llama"`): pieces with scores, byte
    /// fallback tokens `<0x00>`..`<0xFF>`, the architecture's special tokens (see
    /// [`crate::spm`]).
    SentencePiece,
}

impl VocabKind {
    /// "bpe" or "spm".
    pub fn name(self) -> &'static str {
        match self {
            VocabKind::Bpe => "bpe",
            VocabKind::SentencePiece => "spm",
        }
    }

    /// Parses "bpe" / "gpt2" or "spm" / "sentencepiece" / "llama".
    pub fn parse(s: &str) -> Result<VocabKind, GgufError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bpe" | "gpt2" => Ok(VocabKind::Bpe),
            "spm" | "sentencepiece" | "llama" => Ok(VocabKind::SentencePiece),
            _ => Err(GgufError::Generate(format!("unknown vocabulary '{s}' (bpe, spm)"))),
        }
    }
}

impl fmt::Display for VocabKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// The architecture (default [`Arch::Llama`]).
    pub arch: Arch,
    /// The hyperparameters.
    pub shape: ModelShape,
    /// Storage type of the weight matrices.
    pub weight_type: WeightType,
    /// Seed of every random choice (weights and filler merges); the same options give
    /// a byte-identical file.
    pub seed: u64,
    /// `general.name`.
    pub name: String,
    /// `tokenizer.chat_template`; `None` writes the vocabulary's template: ChatML
    /// ([`CHATML_TEMPLATE`]) for BPE, the Gemma or Phi-3 format for SentencePiece.
    pub chat_template: Option<String>,
    /// Whether the output projection is the token embedding matrix (no `output.weight`);
    /// `None`: the architecture's default ([`Arch::ties_embeddings_by_default`]).
    pub tied_embeddings: Option<bool>,
    /// The vocabulary; `None`: the architecture's default
    /// ([`Arch::uses_sentencepiece_by_default`]).
    pub vocab: Option<VocabKind>,
}

impl Default for GenerateOptions {
    /// The tiny llama shape in F16, seed 0, named "corral-random-tiny".
    fn default() -> Self {
        GenerateOptions {
            arch: Arch::Llama,
            shape: ModelShape::tiny(),
            weight_type: WeightType::F16,
            seed: 0,
            name: "corral-random-tiny".into(),
            chat_template: None,
            tied_embeddings: None,
            vocab: None,
        }
    }
}

impl GenerateOptions {
    /// Whether the file will tie the output to the token embeddings.
    pub fn ties_embeddings(&self) -> bool {
        self.tied_embeddings.unwrap_or(self.arch.ties_embeddings_by_default())
    }

    /// The vocabulary the file will hold.
    pub fn vocab_kind(&self) -> VocabKind {
        self.vocab.unwrap_or(if self.arch.uses_sentencepiece_by_default() {
            VocabKind::SentencePiece
        } else {
            VocabKind::Bpe
        })
    }
}

/// What [`generate_model`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateReport {
    /// The file written.
    pub path: PathBuf,
    /// The architecture.
    pub arch: Arch,
    /// Its size in bytes.
    pub file_size: u64,
    /// Total tensor elements.
    pub parameter_count: u64,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Each tensor's name and storage type, in file order.
    pub tensor_types: Vec<(String, GgmlType)>,
    /// The vocabulary's kind.
    pub vocab_kind: VocabKind,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// BPE: merges learned from the corpus (the rest are seeded filler); SentencePiece:
    /// pieces learned from the corpus.
    pub learned_merges: usize,
    /// BPE: total merges; SentencePiece: 0.
    pub merges: usize,
    /// Threads used to make the weights.
    pub threads: usize,
    /// Wall time of the whole generation.
    pub elapsed: Duration,
}

impl fmt::Display for GenerateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vocab = match self.vocab_kind {
            VocabKind::Bpe => format!(
                "{} BPE tokens ({} merges, {} learned)",
                self.vocab_size, self.merges, self.learned_merges
            ),
            VocabKind::SentencePiece => format!(
                "{} SentencePiece tokens ({} pieces learned)",
                self.vocab_size, self.learned_merges
            ),
        };
        write!(
            f,
            "{} ({}): {:.1} MB, {} parameters in {} tensors, {vocab}, {:.2} s on {} threads",
            self.path.display(),
            self.arch,
            self.file_size as f64 / 1e6,
            self.parameter_count,
            self.tensor_count,
            self.elapsed.as_secs_f64(),
            self.threads
        )
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Norm weights: 1 + 0.05 * N(0, 1).
    Norm,
    /// Norm weights with a gain: gain * (1 + 0.05 * N(0, 1)).
    ScaledNorm(f32),
    /// N(0, std^2).
    Normal(f32),
    /// Llama 3.1's RoPE frequency factors ([`llama3_rope_factors`]), not random.
    Llama3RopeFactors {
        /// `rope.freq_base`.
        freq_base: f32,
        /// The head size (the tensor has half as many values).
        head_dim: u32,
    },
}

#[derive(Debug, Clone)]
struct Plan {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    init: Init,
}

/// The tensors of the file, with their storage types chosen.
fn plan_tensors(opts: &GenerateOptions) -> Vec<Plan> {
    let shape = &opts.shape;
    let mut plans = arch::plan_tensors(opts.arch, shape, opts.ties_embeddings());
    let refs: Vec<mix::TensorRef<'_>> =
        plans.iter().map(|p| mix::TensorRef { name: &p.name, dims: &p.dims }).collect();
    let facts = mix::ModelFacts {
        arch: opts.arch,
        n_layer: shape.n_layer,
        n_head: shape.n_head,
        n_head_kv: shape.n_head_kv,
    };
    let types = mix::choose_types(facts, opts.weight_type, &refs);
    for (p, ty) in plans.iter_mut().zip(types) {
        p.ty = ty;
    }
    plans
}

/// The vocabulary written to a file.
enum Vocab {
    Bpe(Box<Bpe>),
    Spm(crate::spm::Spm),
}

impl Vocab {
    fn build(opts: &GenerateOptions) -> Result<Vocab, GgufError> {
        let n_vocab = opts.shape.n_vocab as usize;
        Ok(match opts.vocab_kind() {
            VocabKind::Bpe => {
                // The pre-tokenizer of the family's real files: Llama 3's for llama3,
                // Qwen 2's for qwen2/qwen3, GPT-2's otherwise.
                let pre = match opts.arch {
                    Arch::Llama3 => PreTokenizer::Llama3,
                    Arch::Qwen2 | Arch::Qwen3 => PreTokenizer::Qwen2,
                    _ => PreTokenizer::Gpt2,
                };
                Vocab::Bpe(Box::new(Bpe::train(n_vocab, opts.seed)?.with_pre(pre)?))
            }
            VocabKind::SentencePiece => {
                let style = match opts.arch {
                    Arch::Gemma2 | Arch::Gemma3 => crate::spm::SpecialStyle::Gemma,
                    Arch::Phi3 => crate::spm::SpecialStyle::Phi3,
                    _ => crate::spm::SpecialStyle::Llama,
                };
                Vocab::Spm(crate::spm::Spm::train(n_vocab, style, opts.seed)?)
            }
        })
    }

    fn size(&self) -> usize {
        match self {
            Vocab::Bpe(b) => b.vocab_size(),
            Vocab::Spm(s) => s.vocab_size(),
        }
    }

    /// Writes the `tokenizer.*` keys.
    fn add_metadata(
        &self,
        b: &mut GgufBuilder,
        add_bos: bool,
        template: Option<&str>,
    ) -> Result<(), GgufError> {
        match self {
            Vocab::Bpe(bpe) => {
                b.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))?;
                b.add_metadata("tokenizer.ggml.pre", Value::String(bpe.pre().name().into()))?;
                b.add_metadata(
                    "tokenizer.ggml.tokens",
                    Value::string_array(bpe.tokens().iter().cloned()),
                )?;
                b.add_metadata(
                    "tokenizer.ggml.token_type",
                    Value::Array {
                        elem_type: ValueType::I32,
                        values: bpe.token_types().iter().map(|&t| Value::I32(t)).collect(),
                    },
                )?;
                b.add_metadata("tokenizer.ggml.merges", Value::string_array(bpe.merges_text()))?;
                let special = |id: Option<u32>, what: &str| {
                    id.map(Value::U32).ok_or_else(|| {
                        GgufError::Generate(format!("the vocabulary has no {what} token"))
                    })
                };
                b.add_metadata("tokenizer.ggml.bos_token_id", special(bpe.bos_id(), "BOS")?)?;
                b.add_metadata("tokenizer.ggml.eos_token_id", special(bpe.eos_id(), "EOS")?)?;
                b.add_metadata(
                    "tokenizer.ggml.eot_token_id",
                    special(bpe.eot_id(), "end-of-turn")?,
                )?;
                b.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(add_bos))?;
                b.add_metadata("tokenizer.ggml.add_eos_token", Value::Bool(false))?;
                let template = template.unwrap_or(CHATML_TEMPLATE);
                b.add_metadata("tokenizer.chat_template", Value::String(template.into()))?;
            }
            Vocab::Spm(spm) => spm.add_metadata(b, template)?,
        }
        Ok(())
    }
}

/// Writes a GGUF model with random weights to `path`, in the architecture, shape and
/// weight type of `opts` (through a `.partial` file renamed at the end, so an
/// interrupted run leaves no broken model).
pub fn generate_model(path: &Path, opts: &GenerateOptions) -> Result<GenerateReport, GgufError> {
    let start = Instant::now();
    let shape = &opts.shape;
    shape.validate()?;
    opts.arch.check_shape(shape, opts.ties_embeddings())?;
    let vocab = Vocab::build(opts)?;
    let plans = plan_tensors(opts);
    let spec = opts.arch.spec();

    let mut b = GgufBuilder::new();
    let u32v = Value::U32;
    b.add_metadata("general.architecture", Value::String(opts.arch.gguf_name().into()))?;
    b.add_metadata("general.name", Value::String(opts.name.clone()))?;
    b.add_metadata("general.alignment", u32v(32))?;
    b.add_metadata("general.file_type", u32v(opts.weight_type.file_type()))?;
    if opts.weight_type.is_quantized() {
        b.add_metadata("general.quantization_version", u32v(2))?;
    }
    b.add_metadata("general.random_weights", Value::Bool(true))?;
    b.add_metadata("corral.generator.seed", Value::U64(opts.seed))?;
    arch::add_hparams(&mut b, opts.arch, shape)?;
    vocab.add_metadata(&mut b, spec.add_bos, opts.chat_template.as_deref())?;
    for p in &plans {
        b.add_tensor(p.name.clone(), &p.dims, p.ty)?;
    }

    let partial = partial_path(path);
    let file = File::create(&partial)
        .map_err(|e| GgufError::io(format!("creating {}", partial.display()), e))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 16);
    let result = (|| {
        let mut w = b.begin(BufWriter::with_capacity(8 << 20, file))?;
        for (i, p) in plans.iter().enumerate() {
            write_tensor(&mut w, p, chunk_seed_base(opts.seed, i as u64), threads)?;
        }
        // Flushing is enough: the rename below makes the file appear whole or not at
        // all, and these files are cheap to make again, so no fsync.
        w.finish()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(|e| {
        GgufError::io(format!("renaming {} to {}", partial.display(), path.display()), e)
    })?;
    let file_size = std::fs::metadata(path)
        .map_err(|e| GgufError::io(format!("reading the size of {}", path.display()), e))?
        .len();
    let (learned_merges, merges) = match &vocab {
        Vocab::Bpe(bpe) => (bpe.learned_merges(), bpe.n_merges()),
        Vocab::Spm(spm) => (spm.learned_pieces(), 0),
    };
    Ok(GenerateReport {
        path: path.to_path_buf(),
        arch: opts.arch,
        file_size,
        parameter_count: plans.iter().map(|p| p.dims.iter().product::<u64>()).sum(),
        tensor_count: plans.len(),
        tensor_types: plans.iter().map(|p| (p.name.clone(), p.ty)).collect(),
        vocab_kind: opts.vocab_kind(),
        vocab_size: vocab.size(),
        learned_merges,
        merges,
        threads,
        elapsed: start.elapsed(),
    })
}

/// [`generate_model`] under its first name, from when it wrote llama only: it writes the
/// architecture of `opts.arch` like [`generate_model`].
pub fn generate_llama(path: &Path, opts: &GenerateOptions) -> Result<GenerateReport, GgufError> {
    generate_model(path, opts)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn chunk_seed_base(seed: u64, tensor: u64) -> u64 {
    mix(mix(seed) ^ mix(tensor.wrapping_add(0x7465_6e73_6f72)))
}

/// Fills `out` with chunk `chunk` of a tensor.
fn fill(init: Init, base: u64, chunk: u64, out: &mut [f32]) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(base ^ mix(chunk)));
    match init {
        Init::Norm => {
            for x in out {
                *x = 1.0 + 0.05 * rng.sample::<f32, _>(StandardNormal);
            }
        }
        Init::ScaledNorm(gain) => {
            for x in out {
                *x = gain * (1.0 + 0.05 * rng.sample::<f32, _>(StandardNormal));
            }
        }
        Init::Normal(std) => {
            for x in out {
                *x = std * rng.sample::<f32, _>(StandardNormal);
            }
        }
        Init::Llama3RopeFactors { freq_base, head_dim } => {
            let factors = llama3_rope_factors(freq_base, head_dim);
            let first = chunk as usize * out.len();
            for (i, x) in out.iter_mut().enumerate() {
                *x = factors.get(first + i).copied().unwrap_or(1.0);
            }
        }
    }
}

/// Generates and writes one tensor in batches of chunks, the chunks of a batch spread
/// over `threads` threads.
fn write_tensor<W: Write>(
    w: &mut GgufWriter<W>,
    p: &Plan,
    base: u64,
    threads: usize,
) -> Result<(), GgufError> {
    let row_len = p.dims[0] as usize;
    let n_rows: usize = p.dims[1..].iter().map(|&d| d as usize).product();
    let row_bytes = p.ty.row_bytes(row_len as u64).ok_or_else(|| {
        GgufError::Generate(format!("tensor '{}' cannot be stored as {}", p.name, p.ty))
    })? as usize;
    let rows_per_chunk = (CHUNK_ELEMS / row_len).max(1);
    let n_chunks = n_rows.div_ceil(rows_per_chunk);
    let chunks_per_batch = threads * CHUNKS_PER_THREAD;
    let mut out = vec![0u8; chunks_per_batch.min(n_chunks) * rows_per_chunk * row_bytes];
    let mut first = 0;
    while first < n_chunks {
        let last = (first + chunks_per_batch).min(n_chunks);
        let rows = (last * rows_per_chunk).min(n_rows) - first * rows_per_chunk;
        let buf = &mut out[..rows * row_bytes];
        let mut jobs: Vec<(u64, &mut [u8])> = buf
            .chunks_mut(rows_per_chunk * row_bytes)
            .enumerate()
            .map(|(i, s)| ((first + i) as u64, s))
            .collect();
        let work = |jobs: &mut [(u64, &mut [u8])]| -> Result<(), GgufError> {
            let mut scratch = vec![0f32; rows_per_chunk * row_len];
            for (chunk, dst) in jobs.iter_mut() {
                let vals = &mut scratch[..dst.len() / row_bytes * row_len];
                fill(p.init, base, *chunk, vals);
                quant::quantize(p.ty, vals, dst)?;
            }
            Ok(())
        };
        let per_thread = jobs.len().div_ceil(threads);
        if threads == 1 || jobs.len() == 1 {
            work(&mut jobs)?;
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> =
                    jobs.chunks_mut(per_thread).map(|group| s.spawn(|| work(group))).collect();
                handles.into_iter().try_for_each(|h| {
                    h.join().map_err(|_| {
                        GgufError::Generate(format!("a worker panicked on tensor '{}'", p.name))
                    })?
                })
            })?;
        }
        w.write_data(buf)?;
        first = last;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::GgufFile;

    #[test]
    fn shapes_parse_and_validate() {
        assert_eq!(ModelShape::parse("tiny").unwrap(), ModelShape::tiny());
        assert_eq!(ModelShape::parse("TinyLlama").unwrap(), ModelShape::tinyllama());
        assert_eq!(ModelShape::parse("1b").unwrap(), ModelShape::tinyllama());
        let s = ModelShape::parse("tiny:n_layer=3, ctx=1024").unwrap();
        assert_eq!((s.n_layer, s.n_ctx_train), (3, 1024));
        assert!(ModelShape::parse("huge").unwrap_err().to_string().contains("unknown model shape"));
        assert!(ModelShape::parse("tiny:n_head=3").is_err());
        assert!(ModelShape::parse("tiny:n_head_kv=3").is_err());
        assert!(ModelShape::parse("tiny:vocab=100").is_err());
        assert!(ModelShape::parse("tiny:bogus=1").is_err());
        for s in [ModelShape::tiny(), ModelShape::small(), ModelShape::medium()] {
            s.validate().unwrap();
        }
        let p = ModelShape::tinyllama().parameter_count();
        assert!((1_000_000_000..1_200_000_000).contains(&p), "{p}");
    }

    #[test]
    fn weight_types() {
        assert_eq!(WeightType::parse("q4_0").unwrap(), WeightType::Q4_0);
        assert_eq!("F16".parse::<WeightType>().unwrap(), WeightType::F16);
        assert_eq!(WeightType::parse("q4_k_m").unwrap(), WeightType::Q4_K_M);
        assert_eq!(WeightType::parse("Q5_K").unwrap(), WeightType::Q5_K);
        assert!(WeightType::parse("q3_k").unwrap_err().to_string().contains("Q4_K_M"));
        assert_eq!(WeightType::Q8_0.file_type(), 7);
        assert_eq!(WeightType::Q4_K_M.file_type(), 15);
        for w in WeightType::ALL {
            assert_eq!(w.name().parse::<WeightType>().unwrap(), w);
            assert!(crate::types::file_type_name(w.file_type()).is_some());
        }
    }

    #[test]
    fn same_seed_same_file_other_seed_other_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let mut o = GenerateOptions { weight_type: WeightType::Q4_0, ..Default::default() };
        generate_llama(&a, &o).unwrap();
        generate_llama(&b, &o).unwrap();
        o.seed = 1;
        generate_llama(&c, &o).unwrap();
        let (a, b, c) =
            (std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), std::fs::read(c).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn thread_count_does_not_change_the_data() {
        let p = Plan {
            name: "t".into(),
            dims: vec![64, 5000],
            ty: GgmlType::Q8_0,
            init: Init::Normal(0.1),
        };
        let mut outs = Vec::new();
        for threads in [1, 3] {
            let mut b = GgufBuilder::new();
            b.add_tensor("t", &p.dims, p.ty).unwrap();
            let mut w = b.begin(Vec::new()).unwrap();
            write_tensor(&mut w, &p, 5, threads).unwrap();
            outs.push(w.finish().unwrap());
        }
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn weights_have_the_intended_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let o = GenerateOptions { weight_type: WeightType::F32, ..Default::default() };
        generate_llama(&path, &o).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let stats = |name: &str| {
            let t = f.tensor(name).unwrap();
            let v = quant::dequantize(
                t.ggml_type,
                &f.read_tensor_bytes(t).unwrap(),
                t.n_elements() as usize,
            )
            .unwrap();
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
            (mean, var.sqrt())
        };
        let (m, s) = stats("blk.0.attn_norm.weight");
        assert!((m - 1.0).abs() < 0.03 && s < 0.1, "{m} {s}");
        let (m, s) = stats("blk.1.ffn_down.weight");
        assert!(m.abs() < 0.01 && (s - 1.0 / 128f32.sqrt()).abs() < 0.01, "{m} {s}");
        let (_, s) = stats("output.weight");
        assert!((s - OUTPUT_GAIN / 8.0).abs() < 0.02, "{s}");
    }
}
