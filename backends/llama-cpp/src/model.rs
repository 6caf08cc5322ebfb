//! A loaded model: metadata, vocabulary and llama.cpp's tokenizer, contexts.

use std::ffi::c_char;
use std::sync::Arc;

use corral_backend_api::{
    BackendError, ContextParams, ModelMetadata, RString, RVec, SpecialTokens, Tuple2, plugin::Model,
};
use llama_cpp_sys_2 as sys;

use crate::backend::LlamaOptions;
use crate::context::LlamaContext;
use crate::gguf_check::{GgufSummary, file_type_name};

/// Owns the `llama_model` and frees it when the last model handle or context goes.
pub(crate) struct ModelInner {
    pub(crate) ptr: *mut sys::llama_model,
    pub(crate) vocab: *const sys::llama_vocab,
    pub(crate) n_vocab: u32,
    pub(crate) options: Arc<LlamaOptions>,
    metadata: ModelMetadata,
    special: SpecialTokens,
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
            let mut kv_out: Vec<Tuple2<RString, RString>> =
                kv.into_iter().map(|(k, v)| Tuple2(k.into(), v.into())).collect();
            kv_out.push(Tuple2("llama_cpp.description".into(), desc.into()));
            let metadata = ModelMetadata {
                architecture: architecture.into(),
                name: name.into(),
                parameter_count: sys::llama_model_n_params(ptr),
                context_length: sys::llama_model_n_ctx_train(ptr).max(0) as u32,
                embedding_length: sys::llama_model_n_embd(ptr).max(0) as u32,
                block_count: sys::llama_model_n_layer(ptr).max(0) as u32,
                quantization: quantization.into(),
                size_bytes: sys::llama_model_size(ptr),
                kv: RVec::from(kv_out),
            };

            let tok = |t: sys::llama_token| {
                if t >= 0 && (t as u32) < n_vocab { Some(t as u32) } else { None }
            };
            let eog: Vec<u32> = (0..n_vocab)
                .filter(|&t| sys::llama_vocab_is_eog(vocab, t as sys::llama_token))
                .collect();
            let special = SpecialTokens {
                bos: tok(sys::llama_vocab_bos(vocab)).into(),
                eos: tok(sys::llama_vocab_eos(vocab)).into(),
                eot: tok(sys::llama_vocab_eot(vocab)).into(),
                eog: RVec::from(eog),
                add_bos: sys::llama_vocab_get_add_bos(vocab),
                add_eos: sys::llama_vocab_get_add_eos(vocab),
            };
            ModelInner { ptr, vocab, n_vocab, options, metadata, special }
        }
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

    fn metadata(&self) -> ModelMetadata {
        self.inner.metadata.clone()
    }

    fn vocab_size(&self) -> u32 {
        self.inner.n_vocab
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.inner.special.clone()
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
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
                    self.inner.vocab,
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
                return Ok(out.into_iter().map(|t| t as u32).collect());
            }
            cap = n.unsigned_abs() as usize;
        }
        Err(BackendError::internal("llama_tokenize kept asking for a larger buffer"))
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
