//! A loaded model: metadata, vocabulary and llama.cpp's tokenizer, contexts.

use std::ffi::c_char;
use std::sync::{Arc, OnceLock};

use corral_gguf::special::SpecialMatcher;

use crate::special_split::{self, Affixes, WHOLE_BELOW};

use corral_backend_api::{
    BackendError, Capabilities, ContextParams, ModelInfo, SpecialTokenIds, plugin::Model,
};
use llama_cpp_sys_2 as sys;

use crate::backend::LlamaOptions;
use crate::context::LlamaContext;
use corral_gguf::pooling::Pooling;

use crate::gguf_check::{GgufSummary, SpmGaps, file_type_name};
use crate::logging;

/// Owns the `llama_model` and frees it when the last model handle or context goes.
pub(crate) struct ModelInner {
    pub(crate) ptr: *mut sys::llama_model,
    pub(crate) vocab: *const sys::llama_vocab,
    pub(crate) n_vocab: u32,
    pub(crate) options: Arc<LlamaOptions>,
    pub(crate) metadata: ModelInfo,
    special: SpecialTokenIds,
    /// What the model can do, asked of llama.cpp on first use ([`ModelInner::probe`]).
    capabilities: OnceLock<Capabilities>,
    /// The load's KV cache type and flash attention setting, for every context.
    pub(crate) kv: KvSettings,
    /// Whether the load's `rpc` option was honoured (the model may use other machines).
    remote: bool,
    /// The load's LoRA adapters, applied to every context.
    pub(crate) adapters: crate::lora::Adapters,
    /// Whether every layer computes on this machine's CPU (no GPU device, or
    /// `n_gpu_layers = 0`, and no other machine): where flash attention's `auto` means off
    /// ([`corral_probe::ggml`]).
    pub(crate) cpu_only: bool,
    /// Attention heads (llama.cpp's `n_head`), for the size of the attention scores.
    pub(crate) n_head: u32,
    /// Elements per head of keys and of values (`attention.key_length` and
    /// `value_length`, else `n_embd / n_head`).
    pub(crate) head_sizes: (u32, u32),
    /// How an embedding context pools, or why this file makes no sequence embedding.
    pub(crate) embedding_pooling: Result<Pooling, String>,
    /// What a SentencePiece vocabulary without every byte token cannot spell; texts with
    /// such a character are refused before llama.cpp's tokenizer throws on them.
    spm_gaps: Option<Arc<SpmGaps>>,
    /// The vocabulary's special tokens, for cutting long texts before `llama_tokenize`
    /// (built on the first long text).
    special_matcher: OnceLock<SpecialMatcher>,
    /// What `add_special` adds around a text, for texts tokenized in pieces (`None`: not
    /// derivable; such texts go whole).
    affixes: OnceLock<Option<Affixes>>,
}

/// The KV cache's element type and flash attention, from a load's engine-specific
/// options (`kv_cache_type`, `flash_attention`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KvSettings {
    /// `None`: llama.cpp's default (f16).
    pub(crate) cache_type: Option<sys::ggml_type>,
    /// `None`: the backend option `flash_attn`, else llama.cpp's auto.
    pub(crate) flash_attention: Option<bool>,
}

impl KvSettings {
    /// Reads and checks the settings of a load.
    pub(crate) fn from_extra(
        s: &corral_backend_api::LoadSettings,
    ) -> Result<KvSettings, BackendError> {
        let cache_type = match s.extra(corral_backend_api::EXTRA_KV_CACHE_TYPE) {
            None | Some("" | "f16") => None,
            Some("q8_0") => Some(sys::GGML_TYPE_Q8_0),
            Some("q4_0") => Some(sys::GGML_TYPE_Q4_0),
            Some(other) => {
                return Err(BackendError::invalid(format!(
                    "kv_cache_type {other:?}: llama.cpp takes f16, q8_0 or q4_0"
                )));
            }
        };
        let flash_attention = match s.extra(corral_backend_api::EXTRA_FLASH_ATTENTION) {
            None | Some("" | "auto") => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(other) => {
                return Err(BackendError::invalid(format!(
                    "flash_attention {other:?}: use on, off or auto"
                )));
            }
        };
        if cache_type.is_some() && flash_attention == Some(false) {
            return Err(BackendError::invalid(
                "a quantized KV cache needs flash attention in llama.cpp: set flash_attention \
                 to on or auto, or kv_cache_type to f16",
            ));
        }
        Ok(KvSettings { cache_type, flash_attention })
    }
}

// SAFETY: a llama_model is immutable after loading; llama.cpp documents its tokenizer API
// as thread-safe and creates contexts from one model on several threads. Freeing happens
// once, in Drop, when no handle is left.
unsafe impl Send for ModelInner {}
// SAFETY: see above; every method takes the model by const pointer.
unsafe impl Sync for ModelInner {}

impl Drop for ModelInner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file; contexts hold an Arc
        // to this value, so none is alive any more.
        unsafe { sys::llama_model_free(self.ptr) };
    }
}

/// Calls a snprintf-like llama.cpp function (returns the full length) with a growing buffer.
fn read_string(mut f: impl FnMut(*mut c_char, usize) -> i32) -> Option<String> {
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        let n = f(buf.as_mut_ptr().cast(), cap);
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n < cap {
            buf.truncate(n);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        cap = n + 1;
    }
}

impl ModelInner {
    pub(crate) fn new(
        ptr: *mut sys::llama_model,
        summary: GgufSummary,
        options: Arc<LlamaOptions>,
        kv_settings: KvSettings,
        placement: Option<(crate::rpc::Placement, bool)>,
        cpu_only: bool,
        adapters: crate::lora::Adapters,
    ) -> Self {
        // SAFETY (whole block): `ptr` is a live model; the vocab pointer lives as long as it;
        // token ids passed are below n_tokens; buffers passed to the meta functions have the
        // length given.
        unsafe {
            let vocab = sys::llama_model_get_vocab(ptr);
            let n_vocab = sys::llama_vocab_n_tokens(vocab).max(0) as u32;

            let mut kv = Vec::new();
            for i in 0..sys::llama_model_meta_count(ptr).max(0) {
                let key = read_string(|b, n| sys::llama_model_meta_key_by_index(ptr, i, b, n));
                let val = read_string(|b, n| sys::llama_model_meta_val_str_by_index(ptr, i, b, n));
                if let (Some(k), Some(v)) = (key, val) {
                    kv.push((k, v));
                }
            }
            kv.extend(summary.arrays.iter().cloned());
            kv.sort_by(|a, b| a.0.cmp(&b.0));
            let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let desc = read_string(|b, n| sys::llama_model_desc(ptr, b, n)).unwrap_or_default();
            let quantization = match summary.file_type {
                Some(ft) => file_type_name(ft),
                None => file_type_name(sys::llama_model_ftype(ptr)),
            };
            let architecture = summary
                .architecture
                .clone()
                .or_else(|| get("general.architecture"))
                .unwrap_or_default();
            let name = get("general.name").unwrap_or_default();
            let n_head = sys::llama_model_n_head(ptr).max(1) as u32;
            let n_embd = sys::llama_model_n_embd(ptr).max(0) as u32;
            let head_size = |key: &str| {
                get(&format!("{architecture}.attention.{key}"))
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(n_embd / n_head)
            };
            let head_sizes = (head_size("key_length"), head_size("value_length"));
            kv.push(("llama_cpp.description".into(), desc));
            let remote = placement.as_ref().is_some_and(|(_, remote)| *remote);
            if let Some((p, _)) = &placement
                && let Ok(json) = serde_json::to_string(p)
            {
                kv.push((corral_backend_api::META_PLACEMENT.into(), json));
            }
            let metadata = ModelInfo {
                architecture,
                name,
                parameter_count: sys::llama_model_n_params(ptr),
                context_length: sys::llama_model_n_ctx_train(ptr).max(0) as u32,
                embedding_length: sys::llama_model_n_embd(ptr).max(0) as u32,
                block_count: sys::llama_model_n_layer(ptr).max(0) as u32,
                quantization,
                size_bytes: sys::llama_model_size(ptr),
                kv,
            };

            let tok = |t: sys::llama_token| {
                if t >= 0 && (t as u32) < n_vocab { Some(t as u32) } else { None }
            };
            let eog: Vec<u32> = (0..n_vocab)
                .filter(|&t| sys::llama_vocab_is_eog(vocab, t as sys::llama_token))
                .collect();
            let special = SpecialTokenIds {
                bos: tok(sys::llama_vocab_bos(vocab)),
                eos: tok(sys::llama_vocab_eos(vocab)),
                eot: tok(sys::llama_vocab_eot(vocab)),
                eog,
                add_bos: sys::llama_vocab_get_add_bos(vocab),
                add_eos: sys::llama_vocab_get_add_eos(vocab),
            };
            let capabilities = OnceLock::new();
            ModelInner {
                ptr,
                vocab,
                n_vocab,
                options,
                metadata,
                special,
                capabilities,
                kv: kv_settings,
                remote,
                adapters,
                cpu_only,
                n_head,
                head_sizes,
                embedding_pooling: summary.embedding_pooling,
                spm_gaps: summary.spm_gaps,
                special_matcher: OnceLock::new(),
                affixes: OnceLock::new(),
            }
        }
    }

    /// The special-token texts llama.cpp's tokenizer parses (control, user-defined and
    /// unknown tokens, as its `cache_special_tokens`).
    fn special_matcher(&self) -> &SpecialMatcher {
        self.special_matcher.get_or_init(|| {
            special_split::matcher((0..self.n_vocab as sys::llama_token).map(|id| {
                // SAFETY: live vocabulary; `id` below its token count. The text pointer
                // is NUL-terminated and lives as long as the vocabulary; it is copied.
                unsafe {
                    let attr = sys::llama_vocab_get_attr(self.vocab, id);
                    let text = sys::llama_vocab_get_text(self.vocab, id);
                    let bytes = if text.is_null() {
                        Vec::new()
                    } else {
                        std::ffi::CStr::from_ptr(text).to_bytes().to_vec()
                    };
                    (bytes, id as u32, attr)
                }
            }))
        })
    }

    /// The tokens `add_special` adds before and after a text ([`Affixes::derive`]).
    fn affixes(&self) -> Option<&Affixes> {
        self.affixes
            .get_or_init(|| {
                let both = self.tokenize_whole(b"", true, false).ok()?;
                let with = self.tokenize_whole(b"a", true, false).ok()?;
                let bare = self.tokenize_whole(b"a", false, false).ok()?;
                Affixes::derive(&both, &with, &bare)
            })
            .as_ref()
    }

    /// `llama_tokenize` over the whole of `text`.
    fn tokenize_whole(
        &self,
        text: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<sys::llama_token>, BackendError> {
        let len = i32::try_from(text.len()).map_err(|_| {
            BackendError::invalid(format!("text of {} bytes is too long to tokenize", text.len()))
        })?;
        // A token covers at least one byte, plus bos/eos.
        let mut cap = text.len() + 4;
        for _ in 0..2 {
            let mut out: Vec<sys::llama_token> = vec![0; cap];
            let cap_i32 = i32::try_from(cap)
                .map_err(|_| BackendError::invalid("text too long to tokenize"))?;
            // SAFETY: `text` is valid for `len` bytes (it need not be NUL-terminated: the
            // length is given); `out` holds `cap` tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    cap_i32,
                    add_special,
                    parse_special,
                )
            };
            if n == i32::MIN {
                return Err(BackendError::invalid("tokenization result too large"));
            }
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            cap = n.unsigned_abs() as usize;
        }
        Err(BackendError::internal("llama_tokenize kept asking for a larger buffer"))
    }

    /// Tokenizes `text` as `llama_tokenize` does; a long text in pieces cut where the
    /// result cannot change ([`crate::special_split`]), so that llama.cpp's
    /// special-token pass, quadratic in its matches, stays short.
    pub(crate) fn tokenize(
        &self,
        text: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        if let Some((what, byte)) = self.spm_gaps.as_ref().and_then(|g| g.unspellable(text)) {
            return Err(BackendError::invalid(format!(
                "this model's vocabulary cannot spell {what:?}: it has no piece for it and no \
                 byte token <0x{byte:02X}> (a SentencePiece vocabulary without byte fallback)"
            )));
        }
        // llama.cpp gives -1 (no token) for text its vocabulary has no unknown token for
        // (BERT, RWKV and T5 vocabularies without one).
        let as_ids = |v: Vec<sys::llama_token>| -> Result<Vec<u32>, BackendError> {
            v.into_iter()
                .map(|t| {
                    u32::try_from(t).map_err(|_| {
                        BackendError::invalid(
                            "the text holds something this vocabulary has no token for, \
                             not even an unknown token",
                        )
                    })
                })
                .collect()
        };
        if text.len() < WHOLE_BELOW {
            return self.tokenize_whole(text, add_special, parse_special).and_then(as_ids);
        }
        let cuts = special_split::cuts(self.special_matcher(), text, parse_special);
        let affixes = if add_special { self.affixes().cloned() } else { Some(Affixes::default()) };
        let Some(affixes) = affixes.filter(|_| !cuts.is_empty()) else {
            return self.tokenize_whole(text, add_special, parse_special).and_then(as_ids);
        };
        let mut out = affixes.before;
        let mut start = 0;
        for end in cuts.into_iter().chain([text.len()]) {
            out.extend(self.tokenize_whole(&text[start..end], false, parse_special)?);
            start = end;
        }
        out.extend(affixes.after);
        as_ids(out)
    }

    /// The sliding window whose older positions this backend's contexts drop: the model's
    /// `n_swa` when the `swa_full` option keeps those layers at window size, else 0 (every
    /// position kept, or no sliding window).
    pub(crate) fn pruned_window(&self) -> i32 {
        if self.options.swa_full() {
            return 0;
        }
        // SAFETY: `self.ptr` is a live model.
        unsafe { sys::llama_model_n_swa(self.ptr) }.max(0)
    }

    /// What this model can do here, asked of llama.cpp. llama.cpp answers per context, so
    /// a small throwaway context is made with the settings [`LlamaContext`] uses
    /// (`swa_full`, on which a sliding-window model's shift depends), and asked whether
    /// its attention is causal (a model that can generate; BERT-style encoders and
    /// diffusion models are not) and whether its memory can shift
    /// (`llama_memory_can_shift`: false for M-RoPE models, models without a KV cache,
    /// ...). Embeddings: every model, mean-pooled by llama.cpp. A per-sequence context
    /// unless the `kv_unified = true` option makes every context shared. When even the
    /// small context cannot be made, generation is declared from
    /// `llama_model_has_decoder` alone and context shift not at all.
    fn probe(&self) -> Capabilities {
        // Every context applies the load's kv_cache_type and flash_attention,
        // and its LoRA adapters.
        let mut caps = Capabilities::EMBEDDINGS
            | Capabilities::KV_CACHE_TYPES
            | Capabilities::FLASH_ATTENTION
            | Capabilities::LORA_ADAPTERS;
        if self.options.kv_unified != Some(true) {
            caps |= Capabilities::PER_SEQUENCE_CONTEXT;
        }
        if self.remote {
            caps |= Capabilities::REMOTE_DEVICES;
        }
        // SAFETY: returns a plain struct by value.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = 256;
        cp.n_batch = 32;
        cp.n_ubatch = 32;
        cp.n_seq_max = 1;
        // As every context of this backend makes it (a window-size sliding-window cache
        // cannot shift).
        cp.swa_full = self.options.swa_full();
        cp.n_threads = 1;
        cp.n_threads_batch = 1;
        // SAFETY: the model is alive (`self` owns it); `cp` is fully initialised. A probe
        // that fails only logs, at trace level.
        let ctx = logging::quietly(|| unsafe { sys::llama_init_from_model(self.ptr, cp) });
        // SAFETY: `self.ptr` is a live model.
        let has_decoder = unsafe { sys::llama_model_has_decoder(self.ptr) };
        if ctx.is_null() {
            log::debug!("llama.cpp could not make a probe context; context shift not declared");
            if has_decoder {
                caps |= Capabilities::GENERATION;
            }
            return caps;
        }
        // SAFETY: `ctx` is a live context, freed once right after; its memory handle (null
        // for a model without one, which `llama_memory_can_shift` answers false) lives as
        // long as it.
        let (causal, can_shift) = unsafe {
            let answer = (
                sys::llama_get_causal_attn(ctx),
                sys::llama_memory_can_shift(sys::llama_get_memory(ctx)),
            );
            sys::llama_free(ctx);
            answer
        };
        if has_decoder && causal {
            caps |= Capabilities::GENERATION;
        }
        // A sliding-window cache kept at window size cannot shift; the small probe context
        // does not show it (its full cache is no larger than the window's, and llama.cpp
        // answers from the two sizes), the server's contexts would.
        if can_shift && self.pruned_window() == 0 {
            caps |= Capabilities::CONTEXT_SHIFT;
        }
        caps
    }

    pub(crate) fn check_token(&self, token: u32) -> Result<sys::llama_token, BackendError> {
        if token < self.n_vocab {
            Ok(token as sys::llama_token)
        } else {
            Err(BackendError::invalid(format!(
                "token id {token} is out of range: the vocabulary has {} tokens",
                self.n_vocab
            )))
        }
    }
}

/// A model loaded by llama.cpp. Cheap to clone; contexts keep it alive.
#[derive(Clone)]
pub struct LlamaModel {
    inner: Arc<ModelInner>,
}

impl LlamaModel {
    pub(crate) fn new(inner: Arc<ModelInner>) -> Self {
        LlamaModel { inner }
    }

    /// The raw `llama_model` pointer, for code in this crate's tests and tools.
    pub fn as_ptr(&self) -> *mut sys::llama_model {
        self.inner.ptr
    }
}

impl Model for LlamaModel {
    type Context = LlamaContext;

    fn metadata(&self) -> ModelInfo {
        self.inner.metadata.clone()
    }

    fn vocab_size(&self) -> u32 {
        self.inner.n_vocab
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.inner.special.clone()
    }

    /// Generation and context shift as llama.cpp answers for this model, embeddings, and
    /// a per-sequence context (one KV stream per sequence) unless the backend's
    /// `kv_unified = true` option shares every context; see [`ModelInner::probe`]. Asked
    /// once per model, on the first call.
    fn capabilities(&self) -> Capabilities {
        *self.inner.capabilities.get_or_init(|| self.inner.probe())
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        self.inner.tokenize(text.as_bytes(), add_special, parse_special)
    }

    fn token_to_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        let t = self.inner.check_token(token)?;
        let mut cap = 32usize;
        for _ in 0..2 {
            let mut buf = vec![0u8; cap];
            // SAFETY: `t` is in range; `buf` holds `cap` bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.inner.vocab,
                    t,
                    buf.as_mut_ptr().cast(),
                    cap as i32,
                    0,
                    true,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            cap = n.unsigned_abs() as usize;
        }
        Err(BackendError::internal("llama_token_to_piece kept asking for a larger buffer"))
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        let toks =
            tokens.iter().map(|&t| self.inner.check_token(t)).collect::<Result<Vec<_>, _>>()?;
        let n_tokens = i32::try_from(toks.len())
            .map_err(|_| BackendError::invalid("too many tokens to detokenize"))?;
        let mut cap = toks.len() * 8 + 16;
        for _ in 0..2 {
            let mut buf = vec![0u8; cap];
            let cap_i32 = i32::try_from(cap)
                .map_err(|_| BackendError::invalid("detokenized text too long"))?;
            // SAFETY: every token is in range; `buf` holds `cap` bytes.
            let n = unsafe {
                sys::llama_detokenize(
                    self.inner.vocab,
                    toks.as_ptr(),
                    n_tokens,
                    buf.as_mut_ptr().cast(),
                    cap_i32,
                    false,
                    true,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
            cap = n.unsigned_abs() as usize;
        }
        Err(BackendError::internal("llama_detokenize kept asking for a larger buffer"))
    }

    fn new_context(&self, params: &ContextParams) -> Result<LlamaContext, BackendError> {
        LlamaContext::new(self.inner.clone(), params, false)
    }

    fn new_context_per_sequence(
        &self,
        params: &ContextParams,
    ) -> Result<LlamaContext, BackendError> {
        LlamaContext::new(self.inner.clone(), params, true)
    }
}
