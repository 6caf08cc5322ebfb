//! Safe host-side handles over a plugin's model and context objects.
//!
//! These turn the ABI's `RResult`s into `Result<_, BackendError>` and own the reusable
//! logits buffer, so the rest of the host never touches abi_stable types.

use std::sync::Arc;

use corral_backend_api::{
    BackendError, BatchEntry, ContextBox, ContextParams, LoadOptions, ModelBox, ModelMetadata,
    ModelSpec, RString, RVec, SpecialTokens,
};

use crate::plugins::LoadedPlugin;

/// A model loaded by a plugin, with its metadata cached.
pub struct Model {
    inner: ModelBox,
    /// The plugin that loaded it (kept alive as long as the model).
    pub plugin: Arc<LoadedPlugin>,
    /// Metadata as the plugin reported it at load time.
    pub meta: ModelMetadata,
    /// Special tokens.
    pub special: SpecialTokens,
    /// Vocabulary size.
    pub vocab_size: u32,
}

impl Model {
    /// Loads `path` (of `format`) through `plugin`.
    pub fn load(
        plugin: Arc<LoadedPlugin>,
        path: &str,
        format: &str,
        options: LoadOptions,
    ) -> Result<Model, BackendError> {
        let spec = ModelSpec { path: RString::from(path), format: RString::from(format), options };
        let inner = plugin.backend.load_model(&spec).into_result()?;
        let meta = inner.metadata();
        let special = inner.special_tokens();
        let vocab_size = inner.vocab_size();
        Ok(Model { inner, plugin, meta, special, vocab_size })
    }

    /// Text to tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        Ok(self.inner.tokenize(text.into(), add_special, parse_special).into_result()?.into_vec())
    }

    /// One token's bytes.
    pub fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        Ok(self.inner.token_to_bytes(token).into_result()?.into_vec())
    }

    /// Tokens to text.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        Ok(self.inner.detokenize(tokens.into()).into_result()?.into_string())
    }

    /// Whether `token` ends generation.
    pub fn is_eog(&self, token: u32) -> bool {
        self.special.eog.contains(&token)
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.meta.get("tokenizer.chat_template")
    }

    /// Creates a context.
    pub fn new_context(&self, params: &ContextParams) -> Result<Context, BackendError> {
        let inner = self.inner.new_context(params).into_result()?;
        let params = inner.params();
        Ok(Context { inner, params, logits: RVec::new() })
    }

    /// Creates a context whose KV cache is split evenly between its sequences: each may
    /// hold `n_ctx / n_seq_max` positions (ABI 1.1; the loader refuses older plugins).
    pub fn new_context_per_sequence(
        &self,
        params: &ContextParams,
    ) -> Result<Context, BackendError> {
        let inner = self.inner.new_context_per_sequence(params).into_result()?;
        let params = inner.params();
        Ok(Context { inner, params, logits: RVec::new() })
    }
}

/// A context: KV cache plus decoder. Drive it from one thread at a time.
pub struct Context {
    inner: ContextBox,
    /// Effective parameters.
    pub params: ContextParams,
    logits: RVec<f32>,
}

impl Context {
    /// Decodes a batch.
    pub fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.inner.decode(batch.into()).into_result()
    }

    /// Logits of entry `index` of the last batch (valid until the next call).
    pub fn logits(&mut self, index: usize) -> Result<&[f32], BackendError> {
        self.logits_mut(index).map(|l| &*l)
    }

    /// Like [`Context::logits`], but the host-owned copy may be modified in place (the
    /// sampler does), sparing the engine loop a second copy per token.
    pub fn logits_mut(&mut self, index: usize) -> Result<&mut [f32], BackendError> {
        let index =
            u32::try_from(index).map_err(|_| BackendError::invalid("batch index too large"))?;
        self.inner.logits(index, &mut self.logits).into_result()?;
        Ok(self.logits.as_mut_slice())
    }

    /// Pooled embedding of a sequence.
    pub fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        Ok(self.inner.embeddings(seq).into_result()?.into_vec())
    }

    /// Removes `[p0, p1)` of `seq` (`p1 < 0`: to the end; `seq < 0`: all sequences).
    pub fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_remove(seq, p0, p1).into_result()
    }

    /// Shares `[p0, p1)` of `src` with `dst`.
    pub fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_copy(src, dst, p0, p1).into_result()
    }

    /// Largest position of `seq`, `-1` when empty.
    pub fn kv_pos_max(&self, seq: u32) -> i32 {
        self.inner.kv_pos_max(seq)
    }

    /// Empties the cache.
    pub fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.inner.kv_clear().into_result()
    }

    /// Adds `delta` to positions `[p0, p1)` of `seq` (ABI 1.1; `Unsupported` from an
    /// engine that cannot).
    pub fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.inner.kv_shift(seq, p0, p1, delta).into_result()
    }

    /// Decodes `tokens` into `seq` starting at `pos0`, in chunks of `n_batch`, asking for
    /// logits of the last token only. Returns the batch index of that token's logits in
    /// the final chunk.
    pub fn prefill(&mut self, seq: u32, pos0: u32, tokens: &[u32]) -> Result<usize, BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::invalid("nothing to decode: the prompt is empty"));
        }
        let n_batch = self.params.n_batch.max(1) as usize;
        let mut last = 0;
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            let base = pos0 as usize + c * n_batch;
            let is_last_chunk = (c + 1) * n_batch >= tokens.len();
            let batch: Vec<BatchEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, &t)| BatchEntry {
                    token: t,
                    pos: (base + i) as u32,
                    seq,
                    logits: is_last_chunk && i + 1 == chunk.len(),
                })
                .collect();
            self.decode(&batch)?;
            last = chunk.len() - 1;
        }
        Ok(last)
    }
}
