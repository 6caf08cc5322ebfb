//! What each architecture's file holds: its hyperparameter keys and its tensors, with
//! the names, shapes and conventions llama.cpp's loader expects (`src/llama-arch.cpp`,
//! `src/models/*.cpp`) and `convert_hf_to_gguf.py` writes.

use std::fmt;
use std::str::FromStr;

use crate::error::GgufError;
use crate::types::{GgmlType, Value};
use crate::writer::GgufBuilder;

use super::{Init, ModelShape, OUTPUT_GAIN, Plan};

/// The model architecture a generated file declares and whose tensors it holds.
///
/// Every variant loads and runs in llama.cpp. What each one writes (keys beyond the
/// common `{arch}.context_length`, `embedding_length`, `block_count`,
/// `feed_forward_length`, `attention.head_count(_kv)`, `attention.layer_norm_rms_epsilon`,
/// `rope.freq_base`):
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Arch {
    /// `llama` as Llama 2 / TinyLlama / Mistral files have it: RMS eps 1e-5, RoPE base
    /// 10000, `rope.dimension_count`, separate Q/K/V, SwiGLU FFN. The default.
    #[default]
    Llama,
    /// `llama` as Llama 3.1 files have it: RoPE base 500000 and the `rope_freqs.weight`
    /// tensor (head_dim/2 F32 frequency factors) that `convert_hf_to_gguf.py` computes for
    /// `rope_type: llama3` with factor 8, low_freq_factor 1, high_freq_factor 4,
    /// original_max_position_embeddings 8192.
    Llama3,
    /// `qwen2`: biases on Q, K and V (`attn_q.bias`, ...), RMS eps 1e-6, RoPE base 1e6,
    /// no `rope.dimension_count` (NEOX RoPE in llama.cpp).
    Qwen2,
    /// `qwen3`: RMS norms on each query and key head (`attn_q_norm`, `attn_k_norm`, head_dim
    /// wide) before RoPE, `attention.key_length`/`value_length` (head_dim may differ from
    /// n_embd/n_head), RMS eps 1e-6, RoPE base 1e6 (NEOX RoPE).
    Qwen3,
    /// `gemma2`: embeddings scaled by sqrt(n_embd), GELU FFN, norms after attention and
    /// FFN (`post_attention_norm`, `post_ffw_norm`), attention logit soft-capping 50,
    /// final logit soft-capping 30, sliding-window attention on every other layer
    /// (even layers, `attention.sliding_window`), key/value_length, tied embeddings,
    /// RMS eps 1e-6, RoPE base 10000 (NEOX).
    Gemma2,
    /// `gemma3`: as Gemma 2 without soft-capping, plus query/key head norms; five
    /// sliding-window layers of six (llama.cpp's default pattern: layer i is local
    /// unless i % 6 == 5), global RoPE base 1e6 and local base 10000
    /// (`rope.freq_base_swa`), tied embeddings.
    Gemma3,
    /// `phi3`: one fused `attn_qkv` ([n_embd, n_embd + 2·n_embd_kv], Q then K then V
    /// rows), one fused `ffn_up` of width 2·n_ff (the first half is the gate, the second
    /// the up projection: SwiGLU), no `ffn_gate`, `rope.dimension_count`,
    /// `rope.scaling.original_context_length`, RMS eps 1e-5, RoPE base 10000 (NEOX).
    Phi3,
}

impl Arch {
    /// Every architecture, in declaration order.
    pub const ALL: [Arch; 7] = [
        Arch::Llama,
        Arch::Llama3,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Phi3,
    ];

    /// The name used on the command line ("llama", "llama3", "qwen2", ...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Llama3 => "llama3",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// `general.architecture` and the prefix of the architecture's keys ("llama" for
    /// both Llama variants).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Llama3 => "llama",
            other => other.name(),
        }
    }

    /// Parses a name, case-insensitively ("llama", "llama3", "qwen2", "qwen3", "gemma2",
    /// "gemma3", "phi3"; "llama-3" and "llama3.1" are accepted too).
    pub fn parse(s: &str) -> Result<Arch, GgufError> {
        let t = s.trim().to_ascii_lowercase();
        let t = match t.as_str() {
            "llama-3" | "llama3.1" | "llama-3.1" => "llama3",
            "phi-3" => "phi3",
            other => other,
        };
        Self::ALL.into_iter().find(|a| a.name() == t).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            GgufError::Generate(format!("unknown architecture '{s}' (known: {})", known.join(", ")))
        })
    }

    /// Whether the output projection is the token embedding matrix unless told
    /// otherwise (Gemma: always; the others: a separate `output.weight`).
    pub fn ties_embeddings_by_default(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// Whether the vocabulary is SentencePiece (`tokenizer.ggml.model = "llama"`) unless
    /// told otherwise: Gemma and Phi-3, as their real files; the others use byte-level
    /// BPE (`gpt2`).
    pub fn uses_sentencepiece_by_default(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3)
    }

    pub(super) fn spec(self) -> Spec {
        let base = Spec {
            rms_eps: 1e-5,
            rope_base: 10_000.0,
            rope_base_swa: None,
            attn_softcap: None,
            final_softcap: None,
            default_swa: None,
            qk_norm: false,
            qkv_bias: false,
            post_norms: false,
            fused_qkv: false,
            fused_gate_up: false,
            rope_freqs: false,
            rope_dim_key: true,
            key_length_key: false,
            q_width_is_n_embd: false,
            add_bos: true,
            scales_embeddings: false,
        };
        match self {
            Arch::Llama => base,
            Arch::Llama3 => Spec { rope_base: 500_000.0, rope_freqs: true, ..base },
            Arch::Qwen2 => Spec {
                rms_eps: 1e-6,
                rope_base: 1_000_000.0,
                qkv_bias: true,
                rope_dim_key: false,
                q_width_is_n_embd: true,
                add_bos: false,
                ..base
            },
            Arch::Qwen3 => Spec {
                rms_eps: 1e-6,
                rope_base: 1_000_000.0,
                qk_norm: true,
                rope_dim_key: false,
                key_length_key: true,
                add_bos: false,
                ..base
            },
            Arch::Gemma2 => Spec {
                rms_eps: 1e-6,
                attn_softcap: Some(50.0),
                final_softcap: Some(30.0),
                default_swa: Some(4096),
                post_norms: true,
                scales_embeddings: true,
                rope_dim_key: false,
                key_length_key: true,
                ..base
            },
            Arch::Gemma3 => Spec {
                rms_eps: 1e-6,
                rope_base: 1_000_000.0,
                rope_base_swa: Some(10_000.0),
                default_swa: Some(512),
                qk_norm: true,
                post_norms: true,
                scales_embeddings: true,
                rope_dim_key: false,
                key_length_key: true,
                ..base
            },
            Arch::Phi3 => {
                Spec { fused_qkv: true, fused_gate_up: true, q_width_is_n_embd: true, ..base }
            }
        }
    }

    /// The sliding window written for this shape, if the architecture has one: the
    /// shape's `n_swa`, else the real models' window (Gemma 2: 4096, Gemma 3: 512) capped
    /// at a quarter of the training context, so that small test models do slide. Phi-3
    /// writes one only when the shape sets it (llama.cpp ignores it and warns).
    pub fn sliding_window(self, shape: &ModelShape) -> Option<u32> {
        match (shape.n_swa, self.spec().default_swa) {
            (Some(w), _) => Some(w),
            (None, Some(real)) => Some(real.min(shape.n_ctx_train / 4).max(1)),
            (None, None) => None,
        }
    }

    /// Checks what this architecture's loader requires of a shape.
    pub(super) fn check_shape(self, shape: &ModelShape, tied: bool) -> Result<(), GgufError> {
        let bad = |m: String| Err(GgufError::Generate(format!("{self}: {m}")));
        let spec = self.spec();
        if spec.q_width_is_n_embd
            && shape.n_embd_head.is_some_and(|h| h * shape.n_head != shape.n_embd)
        {
            return bad(format!(
                "llama.cpp requires n_head × head size = n_embd for {}; drop the head size",
                self.gguf_name()
            ));
        }
        if self == Arch::Gemma2 && !tied {
            return bad("gemma2 always ties the output to the token embeddings".into());
        }
        if let Some(0) = shape.n_swa {
            return bad("the sliding window must be positive".into());
        }
        Ok(())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = GgufError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The fixed facts of one architecture.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec {
    pub(super) rms_eps: f32,
    pub(super) rope_base: f32,
    pub(super) rope_base_swa: Option<f32>,
    pub(super) attn_softcap: Option<f32>,
    pub(super) final_softcap: Option<f32>,
    /// The real models' sliding window (see [`Arch::sliding_window`]).
    pub(super) default_swa: Option<u32>,
    pub(super) qk_norm: bool,
    pub(super) qkv_bias: bool,
    pub(super) post_norms: bool,
    pub(super) fused_qkv: bool,
    pub(super) fused_gate_up: bool,
    pub(super) rope_freqs: bool,
    /// Writes `rope.dimension_count`.
    pub(super) rope_dim_key: bool,
    /// Writes `attention.key_length`/`value_length` even when the head size is
    /// n_embd/n_head.
    pub(super) key_length_key: bool,
    /// llama.cpp sizes the Q projection n_embd wide (no separate head size).
    pub(super) q_width_is_n_embd: bool,
    /// `tokenizer.ggml.add_bos_token` (Qwen's files: false).
    pub(super) add_bos: bool,
    /// llama.cpp multiplies the token embeddings by sqrt(n_embd) (Gemma).
    pub(super) scales_embeddings: bool,
}

/// Llama 3.1's RoPE scaling (`rope_scaling` of its config.json).
pub(super) const LLAMA3_ROPE_FACTOR: f32 = 8.0;
pub(super) const LLAMA3_LOW_FREQ_FACTOR: f32 = 1.0;
pub(super) const LLAMA3_HIGH_FREQ_FACTOR: f32 = 4.0;
pub(super) const LLAMA3_ORIGINAL_CONTEXT: f32 = 8192.0;

/// The `rope_freqs.weight` values `convert_hf_to_gguf.py` writes for a Llama 3.1 model
/// (`LlamaModel.generate_extra_tensors`), computed in f32 as torch does there: one factor
/// per rotated pair, 1 for short wavelengths, 8 for long ones, smoothly in between.
pub fn llama3_rope_factors(freq_base: f32, head_dim: u32) -> Vec<f32> {
    let dim = head_dim as f32;
    let low_wavelen = LLAMA3_ORIGINAL_CONTEXT / LLAMA3_LOW_FREQ_FACTOR;
    let high_wavelen = LLAMA3_ORIGINAL_CONTEXT / LLAMA3_HIGH_FREQ_FACTOR;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / freq_base.powf((2 * i) as f32 / dim);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                LLAMA3_ROPE_FACTOR
            } else {
                let smooth = (LLAMA3_ORIGINAL_CONTEXT / wavelen - LLAMA3_LOW_FREQ_FACTOR)
                    / (LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR);
                1.0 / ((1.0 - smooth) / LLAMA3_ROPE_FACTOR + smooth)
            }
        })
        .collect()
}

/// The tensors of `arch` at `shape`, in file order, with their initialisation; the
/// storage type is chosen later (`mix::choose_types`), F32 until then.
pub(super) fn plan_tensors(arch: Arch, shape: &ModelShape, tied: bool) -> Vec<Plan> {
    let spec = arch.spec();
    let (e, v, f) = (u64::from(shape.n_embd), u64::from(shape.n_vocab), u64::from(shape.n_ff));
    let hd = u64::from(shape.head_dim());
    let (q, kv) = (u64::from(shape.n_head) * hd, u64::from(shape.n_head_kv) * hd);
    let inv = |n: u64| 1.0 / (n as f32).sqrt();
    let tensor =
        |name: String, dims: Vec<u64>, init: Init| Plan { name, dims, ty: GgmlType::F32, init };
    let mat = |name: String, row: u64, rows: u64, std: f32| {
        tensor(name, vec![row, rows], Init::Normal(std))
    };
    let norm = |name: String, n: u64| tensor(name, vec![n], Init::Norm);

    // Tied: the one matrix is also the output projection. With random weights the last
    // hidden state correlates with the input token's own embedding, by about
    // sqrt(n_embd) × (input RMS) / (residual RMS) standard deviations of the logits, so
    // a large embedding makes every token predict itself. The embedding is made small
    // (input RMS 1/(4·sqrt(n_embd)), after Gemma's sqrt(n_embd) scaling where it
    // applies), which leaves that bias near a tenth of the logits' spread, and the output
    // norm's gain restores logits with a standard deviation of OUTPUT_GAIN.
    let (embd_std, out_norm) = if tied {
        let sqrt_e = (e as f32).sqrt();
        let input_rms = 0.25 / sqrt_e;
        let std = if spec.scales_embeddings { input_rms / sqrt_e } else { input_rms };
        (std, Init::ScaledNorm(OUTPUT_GAIN / (std * sqrt_e)))
    } else {
        (1.0, Init::Norm)
    };
    let mut plans = vec![
        mat("token_embd.weight".into(), e, v, embd_std),
        tensor("output_norm.weight".into(), vec![e], out_norm),
    ];
    if !tied {
        plans.push(mat("output.weight".into(), e, v, OUTPUT_GAIN * inv(e)));
    }
    if spec.rope_freqs {
        plans.push(tensor(
            "rope_freqs.weight".into(),
            vec![hd / 2],
            Init::Llama3RopeFactors { freq_base: spec.rope_base, head_dim: shape.head_dim() },
        ));
    }
    for i in 0..shape.n_layer {
        let w = |s: &str| format!("blk.{i}.{s}.weight");
        let b = |s: &str| format!("blk.{i}.{s}.bias");
        plans.push(norm(w("attn_norm"), e));
        if spec.fused_qkv {
            plans.push(mat(w("attn_qkv"), e, q + 2 * kv, inv(e)));
        } else {
            plans.push(mat(w("attn_q"), e, q, inv(e)));
            plans.push(mat(w("attn_k"), e, kv, inv(e)));
            plans.push(mat(w("attn_v"), e, kv, inv(e)));
        }
        if spec.qkv_bias {
            plans.push(tensor(b("attn_q"), vec![q], Init::Normal(QKV_BIAS_STD)));
            plans.push(tensor(b("attn_k"), vec![kv], Init::Normal(QKV_BIAS_STD)));
            plans.push(tensor(b("attn_v"), vec![kv], Init::Normal(QKV_BIAS_STD)));
        }
        if spec.qk_norm {
            plans.push(norm(w("attn_q_norm"), hd));
            plans.push(norm(w("attn_k_norm"), hd));
        }
        plans.push(mat(w("attn_output"), q, e, inv(q)));
        if spec.post_norms {
            plans.push(norm(w("post_attention_norm"), e));
        }
        plans.push(norm(w("ffn_norm"), e));
        if spec.fused_gate_up {
            plans.push(mat(w("ffn_up"), e, 2 * f, inv(e)));
        } else {
            plans.push(mat(w("ffn_gate"), e, f, inv(e)));
            plans.push(mat(w("ffn_up"), e, f, inv(e)));
        }
        plans.push(mat(w("ffn_down"), f, e, inv(f)));
        if spec.post_norms {
            plans.push(norm(w("post_ffw_norm"), e));
        }
    }
    plans
}

/// Standard deviation of Qwen2's Q/K/V biases: large enough that an engine that drops
/// them computes visibly different logits.
const QKV_BIAS_STD: f32 = 0.5;

/// Adds the `{arch}.*` hyperparameter keys.
pub(super) fn add_hparams(
    b: &mut GgufBuilder,
    arch: Arch,
    shape: &ModelShape,
) -> Result<(), GgufError> {
    let spec = arch.spec();
    let a = arch.gguf_name();
    let u32v = Value::U32;
    b.add_metadata(format!("{a}.vocab_size"), u32v(shape.n_vocab))?;
    b.add_metadata(format!("{a}.context_length"), u32v(shape.n_ctx_train))?;
    b.add_metadata(format!("{a}.embedding_length"), u32v(shape.n_embd))?;
    b.add_metadata(format!("{a}.block_count"), u32v(shape.n_layer))?;
    b.add_metadata(format!("{a}.feed_forward_length"), u32v(shape.n_ff))?;
    b.add_metadata(format!("{a}.attention.head_count"), u32v(shape.n_head))?;
    b.add_metadata(format!("{a}.attention.head_count_kv"), u32v(shape.n_head_kv))?;
    if spec.key_length_key || shape.n_embd_head.is_some() {
        b.add_metadata(format!("{a}.attention.key_length"), u32v(shape.head_dim()))?;
        b.add_metadata(format!("{a}.attention.value_length"), u32v(shape.head_dim()))?;
    }
    if spec.rope_dim_key {
        b.add_metadata(format!("{a}.rope.dimension_count"), u32v(shape.head_dim()))?;
    }
    b.add_metadata(format!("{a}.rope.freq_base"), Value::F32(spec.rope_base))?;
    if let Some(base) = spec.rope_base_swa {
        b.add_metadata(format!("{a}.rope.freq_base_swa"), Value::F32(base))?;
    }
    if arch == Arch::Phi3 {
        b.add_metadata(
            format!("{a}.rope.scaling.original_context_length"),
            u32v(shape.n_ctx_train),
        )?;
    }
    b.add_metadata(format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(spec.rms_eps))?;
    if let Some(cap) = spec.attn_softcap {
        b.add_metadata(format!("{a}.attn_logit_softcapping"), Value::F32(cap))?;
    }
    if let Some(cap) = spec.final_softcap {
        b.add_metadata(format!("{a}.final_logit_softcapping"), Value::F32(cap))?;
    }
    if let Some(window) = arch.sliding_window(shape) {
        b.add_metadata(format!("{a}.attention.sliding_window"), u32v(window))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()).unwrap(), a);
            assert_eq!(a.name().to_uppercase().parse::<Arch>().unwrap(), a);
        }
        assert_eq!(Arch::parse("llama3.1").unwrap(), Arch::Llama3);
        assert_eq!(Arch::Llama3.gguf_name(), "llama");
        let e = Arch::parse("mamba").unwrap_err().to_string();
        assert!(e.contains("unknown architecture 'mamba'") && e.contains("gemma3"), "{e}");
    }

    #[test]
    fn llama3_factors_match_convert_hf_to_gguf() {
        // head_dim 128, base 500000 (Llama 3.1 8B): the first pairs are unscaled, the
        // last ones divided by 8, and the ones between smoothly interpolated.
        let f = llama3_rope_factors(500_000.0, 128);
        assert_eq!(f.len(), 64);
        // Wavelength 2π·500000^(i/64) below 2048 for i < 29, above 8192 for i > 34.
        assert!(f[..29].iter().all(|&x| x == 1.0));
        assert!(f[35..].iter().all(|&x| x == 8.0));
        let mid: Vec<f32> = f.iter().copied().filter(|&x| x != 1.0 && x != 8.0).collect();
        assert!(!mid.is_empty() && mid.windows(2).all(|w| w[0] < w[1]), "{mid:?}");
    }

    #[test]
    fn sliding_windows() {
        let tiny = ModelShape::tiny();
        assert_eq!(Arch::Gemma2.sliding_window(&tiny), Some(128));
        assert_eq!(Arch::Gemma3.sliding_window(&tiny), Some(128));
        assert_eq!(Arch::Llama.sliding_window(&tiny), None);
        assert_eq!(Arch::Phi3.sliding_window(&tiny), None);
        let big = ModelShape { n_ctx_train: 32768, ..tiny };
        assert_eq!(Arch::Gemma3.sliding_window(&big), Some(512));
        let set = ModelShape { n_swa: Some(16), ..tiny };
        assert_eq!(Arch::Phi3.sliding_window(&set), Some(16));
    }

    #[test]
    fn tensors_per_architecture() {
        let shape = ModelShape::tiny();
        let names = |a: Arch, tied: bool| -> Vec<String> {
            plan_tensors(a, &shape, tied).into_iter().map(|p| p.name).collect()
        };
        let phi = names(Arch::Phi3, false);
        assert!(phi.contains(&"blk.0.attn_qkv.weight".to_string()));
        assert!(!phi.iter().any(|n| n.contains("ffn_gate") || n.contains("attn_q.")));
        let p = plan_tensors(Arch::Phi3, &shape, false);
        let up = p.iter().find(|p| p.name == "blk.1.ffn_up.weight").unwrap();
        assert_eq!(up.dims, vec![64, 256]);
        let qkv = p.iter().find(|p| p.name == "blk.1.attn_qkv.weight").unwrap();
        assert_eq!(qkv.dims, vec![64, 64 + 2 * 32]);

        let gemma = names(Arch::Gemma3, true);
        assert!(!gemma.contains(&"output.weight".to_string()));
        for n in ["attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"] {
            assert!(gemma.contains(&format!("blk.1.{n}.weight")), "{n}");
        }
        let qwen2 = names(Arch::Qwen2, false);
        assert!(qwen2.contains(&"blk.0.attn_k.bias".to_string()));
        assert!(names(Arch::Llama3, false).contains(&"rope_freqs.weight".to_string()));
        assert_eq!(names(Arch::Llama, false).len(), 3 + 2 * 9);
    }
}
