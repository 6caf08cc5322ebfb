//! The engine handles: what the host holds of an initialised plugin, a model it loaded,
//! and a context of that model.
//!
//! The host talks to an engine through three object-safe interfaces,
//! [`BackendHandle`], [`ModelHandle`] and [`ContextHandle`], which carry plain Rust types
//! and [`BackendError`]s, never abi_stable's. Today one implementation exists:
//! [`crate::in_process`], which calls the plugin's objects directly in this process. A
//! second one (a worker process per model that serves the same calls) fits behind the
//! same interfaces, so the engine loop, the scheduler and the conformance suite never
//! know which one they drive.
//!
//! [`Model`] and [`Context`] are the types the rest of the host uses: thin wrappers over
//! the handles that cache what never changes (metadata, special tokens, vocabulary
//! size, context parameters) and add the helpers every caller wants (`prefill`,
//! `is_eog`).

use std::{path::PathBuf, sync::Arc};

use corral_backend_api::{
    BackendError, BatchEntry, Capabilities, ContextParams, Device, LoadOptions, ModelInfo,
    SpecialTokenIds,
};

use crate::manifest::Manifest;

/// Which kind of KV cache a context gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    /// One cache shared by every sequence: any sequence may use all of `n_ctx`.
    Shared,
    /// The cache split evenly between the `n_seq_max` sequences (ABI 1.1
    /// `new_context_per_sequence`): each holds `n_ctx / n_seq_max` positions, and an
    /// engine may attend over one sequence's cells only.
    PerSequence,
}

/// An initialised backend: lists its devices and loads models.
pub trait BackendHandle: Send + Sync {
    /// The compute devices this backend uses.
    fn devices(&self) -> Vec<Device>;
    /// One line describing the engine build.
    fn describe(&self) -> String;
    /// Where the engine runs: `in-process` or `process`.
    fn isolation(&self) -> &'static str {
        "in-process"
    }
    /// Loads the model at `path` (of `format`).
    fn load_model(
        &self,
        path: &str,
        format: &str,
        options: LoadOptions,
    ) -> Result<Box<dyn ModelHandle>, BackendError>;
    /// Serves this machine's devices to other machines on `endpoint` (ABI 1.3
    /// `Backend::lend_devices`; `corral worker`) and blocks while it serves. Only an
    /// engine in this process can: the default answers `Unsupported`.
    fn lend_devices(&self, endpoint: &str, options: LoadOptions) -> Result<(), BackendError> {
        let _ = (endpoint, options);
        Err(BackendError::unsupported(
            "devices are lent by an engine opened in this process, not in a worker",
        ))
    }
}

/// A model loaded by an engine.
pub trait ModelHandle: Send + Sync {
    /// Metadata as the engine reports it.
    fn metadata(&self) -> ModelInfo;
    /// Special tokens.
    fn special_tokens(&self) -> SpecialTokenIds;
    /// Vocabulary size.
    fn vocab_size(&self) -> u32;
    /// What the engine declares it can do with this model.
    fn capabilities(&self) -> Capabilities;
    /// `Err` with what happened once the engine is gone for good (its worker process
    /// crashed or hung); every later call fails the same way.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The pid of the worker process that runs the engine, if it runs in one.
    fn worker_pid(&self) -> Option<u32> {
        None
    }
    /// Text to tokens.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError>;
    /// One token's bytes.
    fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError>;
    /// Tokens to text.
    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError>;
    /// Creates a context of `kind`.
    fn new_context(
        &self,
        params: &ContextParams,
        kind: ContextKind,
    ) -> Result<Box<dyn ContextHandle>, BackendError>;
}

/// A context: a KV cache and the decoder over it. Driven from one thread at a time.
pub trait ContextHandle: Send {
    /// Parameters after the engine's adjustments.
    fn params(&self) -> ContextParams;
    /// Decodes a batch.
    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError>;
    /// Logits of entry `index` of the last batch, in a buffer the handle owns and the
    /// caller may modify in place (valid until the next call).
    fn logits(&mut self, index: u32) -> Result<&mut [f32], BackendError>;
    /// Pooled embedding of a sequence.
    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError>;
    /// Removes `[p0, p1)` of `seq` (`p1 < 0`: to the end; `seq < 0`: all sequences).
    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError>;
    /// Shares `[p0, p1)` of `src` with `dst`.
    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError>;
    /// Largest position of `seq`, `-1` when empty.
    fn kv_pos_max(&self, seq: u32) -> i32;
    /// Empties the cache.
    fn kv_clear(&mut self) -> Result<(), BackendError>;
    /// Adds `delta` to positions `[p0, p1)` of `seq`.
    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError>;
}

/// A plugin whose backend is initialised, with the manifest it was chosen by.
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// Where the library is.
    pub library_path: PathBuf,
    /// The version the library reports.
    pub version: String,
    /// The ABI minor the library was built for (from its header), when this process
    /// opened it; `None` when only a worker process did.
    pub abi_minor: Option<u32>,
    /// The initialised backend.
    pub backend: Arc<dyn BackendHandle>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("plugin", &self.manifest.id()).finish()
    }
}

impl LoadedPlugin {
    /// `name:variant`.
    pub fn id(&self) -> String {
        self.manifest.id()
    }

    /// Devices of the backend.
    pub fn devices(&self) -> Vec<Device> {
        self.backend.devices()
    }
}

/// A model loaded by a plugin, with what never changes cached.
pub struct Model {
    inner: Box<dyn ModelHandle>,
    /// The plugin that loaded it (kept alive as long as the model).
    pub plugin: Arc<LoadedPlugin>,
    /// Metadata as the plugin reported it at load time.
    pub meta: ModelInfo,
    /// Special tokens.
    pub special: SpecialTokenIds,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// What the engine declares it can do with this model.
    pub capabilities: Capabilities,
}

/// The largest vocabulary a model may report: 16 Mi tokens (the largest real ones hold
/// about a million).
pub const MAX_VOCAB: u32 = 1 << 24;

impl Model {
    /// Loads `path` (of `format`) through `plugin`.
    pub fn load(
        plugin: Arc<LoadedPlugin>,
        path: &str,
        format: &str,
        options: LoadOptions,
    ) -> Result<Model, BackendError> {
        let inner = plugin.backend.load_model(path, format, options)?;
        let meta = inner.metadata();
        let special = inner.special_tokens();
        let vocab_size = inner.vocab_size();
        // Every logits row the host keeps is `vocab_size` floats: an engine that reports
        // an absurd vocabulary (2^28 made each row 1 GiB and the load look hung) is
        // refused here, with the number.
        if vocab_size > MAX_VOCAB {
            return Err(BackendError::internal(format!(
                "the engine reports a vocabulary of {vocab_size} tokens, beyond any real model \
                 (at most {MAX_VOCAB})"
            )));
        }
        let capabilities = inner.capabilities();
        Ok(Model { inner, plugin, meta, special, vocab_size, capabilities })
    }

    /// `Err` with what happened once the engine is gone for good (its worker crashed or
    /// hung).
    pub fn health(&self) -> Result<(), String> {
        self.inner.health()
    }

    /// The pid of the engine's worker process, when it runs in one.
    pub fn worker_pid(&self) -> Option<u32> {
        self.inner.worker_pid()
    }

    /// Text to tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        self.inner.tokenize(text, add_special, parse_special)
    }

    /// One token's bytes.
    pub fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        self.inner.token_bytes(token)
    }

    /// Tokens to text.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        self.inner.detokenize(tokens)
    }

    /// Whether `token` ends generation.
    pub fn is_eog(&self, token: u32) -> bool {
        self.special.eog.contains(&token)
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.meta.get("tokenizer.chat_template")
    }

    /// Creates a context with one KV cache shared by all its sequences.
    pub fn new_context(&self, params: &ContextParams) -> Result<Context, BackendError> {
        Context::new(self.inner.new_context(params, ContextKind::Shared)?)
    }

    /// Creates a context whose KV cache is split evenly between its sequences: each may
    /// hold `n_ctx / n_seq_max` positions.
    pub fn new_context_per_sequence(
        &self,
        params: &ContextParams,
    ) -> Result<Context, BackendError> {
        Context::new(self.inner.new_context(params, ContextKind::PerSequence)?)
    }
}

/// A context: KV cache plus decoder. Drive it from one thread at a time.
pub struct Context {
    inner: Box<dyn ContextHandle>,
    /// Effective parameters.
    pub params: ContextParams,
}

impl Context {
    fn new(inner: Box<dyn ContextHandle>) -> Result<Context, BackendError> {
        let params = inner.params();
        Ok(Context { inner, params })
    }

    /// Decodes a batch.
    pub fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.inner.decode(batch)
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
        self.inner.logits(index)
    }

    /// Pooled embedding of a sequence.
    pub fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        self.inner.embeddings(seq)
    }

    /// Removes `[p0, p1)` of `seq` (`p1 < 0`: to the end; `seq < 0`: all sequences).
    pub fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_remove(seq, p0, p1)
    }

    /// Shares `[p0, p1)` of `src` with `dst`.
    pub fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_copy(src, dst, p0, p1)
    }

    /// Largest position of `seq`, `-1` when empty.
    pub fn kv_pos_max(&self, seq: u32) -> i32 {
        self.inner.kv_pos_max(seq)
    }

    /// Empties the cache.
    pub fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.inner.kv_clear()
    }

    /// Adds `delta` to positions `[p0, p1)` of `seq` (`Unsupported` from an engine that
    /// cannot).
    pub fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.inner.kv_shift(seq, p0, p1, delta)
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
