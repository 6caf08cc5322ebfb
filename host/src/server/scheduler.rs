//! The scheduler: which models are loaded, for how long, and whether a request may run.
//!
//! Models load on first use, stay for their `keep_alive` after the
//! last request ends (negative: forever; 0: unload as soon as idle), and are evicted
//! least-recently-used first when `max_loaded_models` is reached or when the memory
//! estimate (weights, f16 KV cache, output rows, engine overhead) of the new model does not fit beside the others
//! in the probe's available memory. Only idle models are evicted; when every loaded model
//! is busy, a load waits up to 30 s for one to become idle, then answers 503. Each loaded
//! model has one engine loop with `num_parallel` sequences; a request beyond them waits
//! in that loop's queue, and beyond `max_queue` waiting it is answered 503.
//!
//! Locks: a request for a loaded model takes only the short `models` map lock, never
//! an await on a load; loads of one model are serialised by a per-model lock (so one
//! load serves every request that waits for it); making room (evictions) for loads of
//! different models is serialised by `load_lock`, which also reserves the load's
//! estimate, and the engine's load itself runs outside it, beside other models' loads. Resolution (store lookup, template translation) happens when
//! a model loads; a loaded model keeps its [`ModelRef`]. Engine threads are joined only
//! on the blocking pool, never on an async worker.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use corral_backend_api::{ContextParams, LoadOptions};

use crate::kv_cache::{FlashAttention, KvCacheType, KvSettings};
use corral_generation::{
    context::{context_length, exceeds_training},
    options::SamplingOptions,
};
use corral_plugin_host::{Context, LoadedPlugin, Model};
use serde_json::Value;

use corral_generation::structured::TokenTable;

use crate::errors::ErrorClass;

use super::{metrics::Metrics, util::ApiError};
use crate::{
    engine_loop::{EngineHandle, LoopConfig, Request, SpecSettings},
    models::{ModelRef, PathRule, Resolver},
    prompt::Templater,
    runtime::{Fit, ModelLoadError, Runtime},
};

/// Settings of the scheduler (flags, `CORRAL_*`, config file, defaults merged).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default keep-alive; `None` keeps models loaded forever.
    pub keep_alive: Option<Duration>,
    /// Models loaded at once.
    pub max_loaded_models: usize,
    /// Parallel sequences per model.
    pub num_parallel: u32,
    /// Requests waiting per model beyond the running ones.
    pub max_queue: usize,
    /// Context per sequence (`None`: the rule of
    /// [`corral_generation::context::context_length`]).
    pub num_ctx: Option<u32>,
    /// Compute threads (0: the engine's choice).
    pub threads: u32,
    /// Backend selector (`--backend`).
    pub backend: Option<String>,
    /// Directories whose files requests may name by path (`--allow-model-paths`);
    /// empty: model names only.
    pub allow_model_paths: Vec<std::path::PathBuf>,
    /// Whether `/api/pull` and `/api/push` may speak plain HTTP to a registry when a
    /// request asks for it (`insecure: true`); otherwise such a request gets 403
    /// (`--allow-insecure-registries`).
    pub allow_insecure_registries: bool,
    /// The KV cache type and flash attention for every model (a model's PARAMETERs win).
    pub kv: crate::kv_cache::KvSettings,
    /// Speculative decoding's defaults (`--speculative`, `--draft-max`).
    pub speculation: SpecSettings,
    /// RPC workers every model may use, and the split (`--rpc`, `CORRAL_RPC`, the
    /// config's `[backends.llama-cpp] rpc`).
    pub rpc: crate::rpc::RemoteDevices,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keep_alive: Some(Duration::from_secs(300)),
            max_loaded_models: 3,
            num_parallel: 4,
            max_queue: 512,
            num_ctx: None,
            threads: 0,
            backend: None,
            allow_model_paths: Vec::new(),
            allow_insecure_registries: false,
            kv: Default::default(),
            speculation: SpecSettings::default(),
            rpc: crate::rpc::RemoteDevices::default(),
        }
    }
}

/// After this many engine crashes in a row while loading a model, it is refused for a
/// while instead of being loaded again in a loop.
pub const CRASH_LOOP_LOADS: u32 = 3;
/// How long a model that crash-loops is refused.
pub const CRASH_LOOP_PAUSE: Duration = Duration::from_secs(60);

/// A model as a request names it, before it is resolved.
#[derive(Debug, Clone)]
pub struct Named {
    /// The canonical name (`tiny:latest`) or the path.
    pub name: String,
}

/// A loaded model with its engine loop.
pub struct Loaded {
    /// What was loaded.
    pub model_ref: ModelRef,
    /// The model.
    pub model: Arc<Model>,
    /// The engine loop.
    pub engine: EngineHandle,
    /// Chat template.
    pub templater: Templater,
    /// What the model can do (`completion` or `embedding`, `tools`, `thinking`,
    /// `vision`), as `/api/show` lists it; requests that need more are refused.
    pub capabilities: Vec<&'static str>,
    /// Context per sequence.
    pub num_ctx: u32,
    /// Memory estimate in bytes.
    pub size_estimate: u64,
    /// Of which in GPU memory (`size_vram` of `/api/ps`): the whole estimate when the
    /// engine computes on a GPU or other accelerator with every layer offloaded (the
    /// default), 0 on a CPU.
    pub size_vram: u64,
    /// The KV cache type and flash attention it was loaded with (what the engine honours).
    pub kv: KvSettings,
    /// Bytes of KV cache per position of one sequence (`/api/ps`).
    pub kv_bytes_per_token: u64,
    /// When it was loaded.
    pub loaded_at: Instant,
    /// Requests using it now.
    pub inflight: AtomicUsize,
    /// When it unloads if idle (`None`: never); valid while `inflight == 0`.
    pub expires: Mutex<Option<Instant>>,
    /// Wall-clock twin of `expires` for `/api/ps`.
    pub expires_wall: Mutex<Option<SystemTime>>,
    /// Last use, for LRU.
    pub last_used: Mutex<Instant>,
    /// The context embeddings are computed in, and the positions it was made for.
    embed_ctx: Mutex<Option<(u32, Context)>>,
    /// Engine memory an embedding takes per input token beyond the model's estimate:
    /// llama.cpp on the CPU keeps a row of logits for every position of a pooled
    /// embedding (`n_vocab × 4` bytes, and as much again in its compute buffer); 0 where
    /// that memory is not the host's (a GPU) or not taken (the pure-Rust engine).
    embed_bytes_per_token: u64,
    tokens: OnceLock<Arc<TokenTable>>,
    admission: Mutex<()>,
}

/// Positions of the context that embeds `tokens` tokens of a model served with windows of
/// `num_ctx`: the input rounded up to a multiple of 512, at most `num_ctx`, so that the
/// buffers llama.cpp reserves for a whole context of pooled embeddings (a row of logits
/// per position: 2 MiB each with Gemma 3's 262,144-token vocabulary) follow the input.
fn embedding_context_size(tokens: usize, num_ctx: u32) -> u32 {
    let rounded = u32::try_from(tokens.max(1).div_ceil(512) * 512).unwrap_or(u32::MAX);
    rounded.min(num_ctx.max(1))
}

/// The machine's memory available now (its cgroup's limit included): a probe of memory
/// only, cheap (/proc/meminfo and cgroup files).
fn memory_available_now() -> Option<u64> {
    corral_probe::probe(&corral_probe::ProbeOptions {
        use_runtime_libraries: false,
        ..corral_probe::ProbeOptions::system()
    })
    .memory
    .effective_available_bytes
}

/// Embeddings whose engine rows take more than this are checked against the memory
/// available first (the probe reads /proc files).
const EMBEDDING_ROWS_CHECKED: u64 = 256 << 20;

/// A model's token table for structured output: every token's bytes, the end-of-generation
/// tokens, and BOS as a token never allowed.
pub fn token_table(model: &Model) -> TokenTable {
    let by_id = (0..model.vocab_size).map(|id| model.token_bytes(id).unwrap_or_default());
    let never: Vec<u32> = model.special.bos.into_iter().collect();
    TokenTable::new(by_id.collect(), model.special.eog.clone(), &never)
}

impl Loaded {
    /// The token table for structured output (built on first use).
    pub fn token_table(&self) -> Result<Arc<TokenTable>, ApiError> {
        if let Some(t) = self.tokens.get() {
            return Ok(t.clone());
        }
        let t = Arc::new(token_table(&self.model));
        Ok(self.tokens.get_or_init(|| t).clone())
    }

    /// Queues a generation, or 503 when the queue is full.
    pub fn submit(&self, req: Request, max_queue: usize) -> Result<(), ApiError> {
        let _g = self.admission.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let active = self.engine.active.load(Ordering::SeqCst);
        let queued = active.saturating_sub(self.engine.config.n_parallel as usize);
        if active >= self.engine.config.n_parallel as usize && queued >= max_queue {
            return Err(ApiError::busy(format!(
                "server busy: {queued} request(s) already waiting for {} (CORRAL_MAX_QUEUE={max_queue}); retry later",
                self.model_ref.name
            )));
        }
        self.engine.submit(req).map_err(ApiError::from)
    }

    /// Requests waiting (not yet decoding) in this model's loop.
    pub fn queued(&self) -> usize {
        self.engine
            .active
            .load(Ordering::SeqCst)
            .saturating_sub(self.engine.config.n_parallel as usize)
    }

    /// Sequences active (decoding or waiting).
    pub fn active(&self) -> usize {
        self.engine.active.load(Ordering::SeqCst)
    }

    /// Pooled embedding of `tokens` (blocking: call from `spawn_blocking`).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, ApiError> {
        let mut guard = self.embed_ctx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let size = embedding_context_size(tokens.len(), self.num_ctx);
        let fits = guard.as_ref().is_some_and(|(made, _)| *made >= size && *made <= 2 * size);
        // The buffers follow the context's positions, not the input's, and a context that
        // fits holds them already: only a new one is checked against the memory free.
        let rows = u64::from(size).saturating_mul(self.embed_bytes_per_token);
        if !fits
            && rows > EMBEDDING_ROWS_CHECKED
            && let Some(available) = memory_available_now().filter(|&a| rows > a)
        {
            // Contexts come in multiples of 512 positions.
            let most = available / self.embed_bytes_per_token.max(1) / 512 * 512;
            return Err(ApiError::bad_request(format!(
                "embedding {} tokens with {} needs about {} MiB of engine memory (a row \
                 of {} logits per token), and {} MiB are available: send inputs of at \
                 most {most} tokens",
                tokens.len(),
                self.model_ref.name,
                rows >> 20,
                self.model.vocab_size,
                available >> 20,
            )));
        }
        if !fits {
            // The old context's buffers go before the new one's are allocated.
            *guard = None;
            let params = ContextParams {
                n_ctx: size,
                n_batch: size,
                n_seq_max: 1,
                n_threads: self.engine.config.n_threads,
                n_threads_batch: self.engine.config.n_threads,
                embeddings: true,
                seed: 0,
            };
            *guard = Some((size, self.model.new_context(&params)?));
        }
        let Some((_, ctx)) = guard.as_mut() else { return Err(ApiError::internal("no context")) };
        ctx.kv_clear()?;
        ctx.prefill(0, 0, tokens)?;
        let v = ctx.embeddings(0)?;
        if v.is_empty() {
            return Err(ApiError::internal(format!(
                "the engine computed an empty embedding for {}",
                self.model_ref.name
            )));
        }
        // JSON has no NaN: a broken file's vector would reach the client as nulls.
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(ApiError::internal(format!(
                "the engine computed an embedding holding {bad} for {}; its weights may be \
                 broken",
                self.model_ref.name
            )));
        }
        Ok(v)
    }
}

/// The model's `num_ctx` PARAMETER, if it has one.
fn param_num_ctx(r: &ModelRef) -> Option<u32> {
    r.params.get("num_ctx").and_then(Value::as_u64).map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// Holds a model in use; when dropped, the model's keep-alive timer starts.
pub struct UseGuard {
    /// The model.
    pub loaded: Arc<Loaded>,
    keep_alive: Option<Duration>,
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        *self.loaded.last_used.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        *self.loaded.expires.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            self.keep_alive.map(|d| now + d);
        *self.loaded.expires_wall.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            self.keep_alive.map(|d| SystemTime::now() + d);
        self.loaded.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The scheduler.
pub struct Scheduler {
    /// Settings in force.
    pub settings: Settings,
    rt: Runtime,
    models: Mutex<HashMap<String, Arc<Loaded>>>,
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Models whose engine died; their next load counts as a restart.
    crashed: Mutex<std::collections::HashSet<String>>,
    /// Engine crashes while loading, per model: how many in a row, when the last was,
    /// and what it said.
    load_crashes: Mutex<HashMap<String, (u32, Instant, String)>>,
    /// Held while the room for a load is made (evictions) and its memory reserved; not
    /// during the engine's load itself, so a load that hangs holds up no other model's.
    load_lock: tokio::sync::Mutex<()>,
    /// Loads in flight: how many, and the bytes their estimates reserve.
    reserved: Arc<Mutex<(usize, u64)>>,
    /// The model store, when one could be opened.
    pub store: Option<corral_registry::Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// What a model needs in memory, estimated before it loads.
#[derive(Debug, Clone, Copy)]
pub struct MemoryEstimate {
    /// Bytes: weights, KV cache, output rows and the engine's own overhead
    /// ([`estimate_memory`]).
    pub bytes: u64,
    /// The context per sequence the estimate assumes.
    pub num_ctx: u32,
    /// Bytes of KV cache per position of one sequence, in the cache type assumed.
    pub kv_bytes_per_token: u64,
    /// The prompt rows the engine attends in whole tiles ([`LoopConfig::prompt_quantum`]),
    /// 1 when it has no such preference ([`ggml_cpu_prompt_quantum`]).
    pub prompt_quantum: u32,
}

/// What a loaded model costs beyond its weights, KV cache and output rows: the engine's
/// code and heap and the touched part of its compute buffers. Measured on llama.cpp's
/// worker: 18 MiB resident for a 0.5 MB model, and Gemma 3 270M resident at 617 MiB
/// after a short prompt and 640 MiB after 1,500 tokens against 576 MiB of weights, KV
/// and outputs.
pub const ENGINE_OVERHEAD: u64 = 64 << 20;

/// What the CUDA runtime takes on the GPU per engine process, beside llama.cpp's own
/// buffers: its context, the plugin's kernels once loaded, cuBLAS's handle and
/// workspace. Measured with the cuda13 variant on an NVIDIA H200 (driver 580.159, CUDA
/// 13.0): a TinyLlama-shaped Q4_K_M served with 4 sequences of 2,048 positions held
/// 1,448 MiB (nvidia-smi, the engine worker) against 857.5 MiB of llama.cpp buffers
/// (601 model, 176 KV, 80.5 compute).
pub const CUDA_RUNTIME_OVERHEAD: u64 = 590 << 20;

/// Memory estimate, saturating (a file's hostile hyperparameters cannot overflow it):
///
/// - the weights file (memory-mapped, all of it touched by a forward pass);
/// - an f16 KV cache of `n_parallel × num_ctx` cells in every layer, each cell holding
///   `n_head_kv × (key_length + value_length)` values (grouped-query attention, and head
///   sizes that are not `n_embd / n_head`, as Gemma's 256); sliding-window layers count
///   in full, since llama.cpp allocates a full-size SWA cache for the parallel
///   sequences; a non-causal encoder (`attention.causal = false`, BERT) has none;
/// - one row of logits per sequence (`n_vocab × 4` bytes: 1 MiB each for a 262k
///   vocabulary);
/// - [`ENGINE_OVERHEAD`].
///
/// - with `engine` [`EngineMemory::GgmlCpuRepack`], the weights llama.cpp's CPU backend
///   copies into its repacked layout ([`ggml_cpu_repacked_bytes`]): the mapped original
///   stays resident beside the copy;
/// - with [`EngineMemory::PureRust`], the engine's f32 scratch for a batch of
///   [`BATCH_TOKENS`] tokens (hidden state, queries, keys, values, attention output and
///   the feed-forward's gate and up, per token) and the growth of its repacked Q4_K
///   weights ([`pure_rust_repack_growth`]), less the token-embedding matrix of a
///   model with a separate output matrix (the engine reads it in place, a row per token
///   seen, so it is never all resident);
/// - with [`EngineMemory::CudaRuntime`], [`CUDA_RUNTIME_OVERHEAD`].
///
/// `num_ctx: None` takes the context-length rule's default for the file's own training
/// context. An engine whose KV cache grows with use (the pure-Rust cpu engine) reaches
/// the estimate when its context is full and holds less before. The KV cache is counted
/// in `kv_settings`' cache type, bytes per element.
pub fn estimate_memory(
    path: &std::path::Path,
    num_ctx: Option<u32>,
    n_parallel: u32,
    engine: EngineMemory,
    kv_settings: crate::kv_cache::KvSettings,
) -> MemoryEstimate {
    let kv_type = kv_settings.cache_type;
    let file = std::fs::metadata(path).map_or(0, |m| m.len());
    let Ok(g) = corral_gguf::reader::GgufFile::open(path) else {
        return MemoryEstimate {
            bytes: file,
            num_ctx: num_ctx.unwrap_or(0),
            kv_bytes_per_token: 0,
            prompt_quantum: 1,
        };
    };
    let arch = g.architecture().unwrap_or("llama").to_string();
    let get = |k: &str| {
        g.get_u64(&format!("{arch}.{k}"))
            .or_else(|| g.get_u32(&format!("{arch}.{k}")).map(u64::from))
    };
    let trained = get("context_length").and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
    let num_ctx = context_length(num_ctx, None, trained);
    let cells = u64::from(num_ctx).saturating_mul(u64::from(n_parallel));
    let n_layer = get("block_count").unwrap_or(0);
    let n_embd = get("embedding_length").unwrap_or(0);
    let n_head = get("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = get("attention.head_count_kv").unwrap_or(n_head);
    let key_length = get("attention.key_length").unwrap_or(n_embd / n_head);
    let value_length = get("attention.value_length").unwrap_or(n_embd / n_head);
    let causal = g.get_bool(&format!("{arch}.attention.causal")).unwrap_or(true);
    // K and V of every layer, in the cache's element type (f16: 2 bytes).
    let kv_bytes_per_token = if causal {
        let elements = n_layer
            .saturating_mul(n_head_kv.saturating_mul(key_length.saturating_add(value_length)));
        (elements as f64 * kv_type.bytes_per_element()).ceil() as u64
    } else {
        0
    };
    let kv = kv_bytes_per_token.saturating_mul(cells);
    let n_vocab = match g.get("tokenizer.ggml.tokens") {
        Some(corral_gguf::Value::Array { values, .. }) => values.len() as u64,
        _ => get("vocab_size").unwrap_or(0),
    };
    let outputs = u64::from(n_parallel).saturating_mul(n_vocab).saturating_mul(4);
    let (extra, lazy) = match engine {
        EngineMemory::GgmlCpuRepack { f16_step } => {
            // A quantized cache needs flash attention: no scores then.
            let scores = if kv_type == crate::kv_cache::KvCacheType::F16 && causal {
                ggml_cpu_attention_scores_bytes(
                    kv_settings.flash_attention,
                    num_ctx,
                    n_head,
                    (key_length, value_length),
                    f16_step,
                )
            } else {
                0
            };
            (ggml_cpu_repacked_bytes(g.tensors()).saturating_add(scores), 0)
        }
        EngineMemory::PureRust => {
            let n_ff = get("feed_forward_length").unwrap_or(0);
            let q_dim = n_head.saturating_mul(key_length);
            let kv_dim = n_head_kv.saturating_mul(key_length);
            let per_token = [2 * n_embd, 2 * q_dim, 2 * kv_dim, 3 * n_ff]
                .into_iter()
                .fold(0u64, u64::saturating_add)
                .saturating_mul(4);
            let scratch = per_token
                .saturating_mul(cells.clamp(1, BATCH_TOKENS))
                .saturating_add(pure_rust_repack_growth(g.tensors()));
            let untied_embeddings = match (g.tensor("token_embd.weight"), g.tensor("output.weight"))
            {
                (Some(e), Some(_)) => e.size,
                _ => 0,
            };
            (scratch, untied_embeddings)
        }
        EngineMemory::CudaRuntime => (CUDA_RUNTIME_OVERHEAD, 0),
        EngineMemory::Plain => (0, 0),
    };
    let bytes = file
        .saturating_sub(lazy)
        .saturating_add(kv)
        .saturating_add(outputs)
        .saturating_add(extra)
        .saturating_add(ENGINE_OVERHEAD);
    let prompt_quantum = match engine {
        EngineMemory::GgmlCpuRepack { f16_step } if causal => {
            ggml_cpu_prompt_quantum(kv_settings, (key_length, value_length), f16_step)
        }
        _ => 1,
    };
    MemoryEstimate { bytes, num_ctx, kv_bytes_per_token, prompt_quantum }
}

/// The KV settings an engine with `caps` honours: a model's own setting that it cannot
/// is refused (400, with the reason); a global one falls back to the default with a
/// warning.
fn honoured_kv(
    kv: KvSettings,
    caps: corral_backend_api::Capabilities,
    engine: &str,
    model: &str,
) -> Result<KvSettings, ApiError> {
    use corral_backend_api::Capabilities;
    let mut out = kv;
    if let Some(why) = kv.not_honoured_by(caps, engine) {
        if kv.cache_type_is_models {
            return Err(ApiError::bad_request(format!(
                "model {model}: {why}; remove its PARAMETER kv_cache_type or use f16"
            )));
        }
        tracing::warn!(model, "{why}: using f16");
        out.cache_type = KvCacheType::F16;
    }
    if kv.flash_attention == FlashAttention::On && !caps.contains(Capabilities::FLASH_ATTENTION) {
        let why = format!("the {engine} engine has no flash attention setting");
        if kv.flash_attention_is_models {
            return Err(ApiError::bad_request(format!(
                "model {model}: {why}; remove its PARAMETER flash_attention"
            )));
        }
        tracing::warn!(model, "{why}: flash_attention = on ignored");
        out.flash_attention = FlashAttention::Auto;
    }
    Ok(out)
}

/// A load in flight's share of [`Scheduler`]'s reservations, given back when the load
/// ends (loaded, failed, or its result dropped): it moves into the blocking load, so a
/// request that goes away mid-load does not free the room the load still takes.
struct Reservation {
    reserved: Arc<Mutex<(usize, u64)>>,
    bytes: u64,
}

impl Reservation {
    fn new(reserved: &Arc<Mutex<(usize, u64)>>, bytes: u64) -> Self {
        let mut r = reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.0 += 1;
        r.1 = r.1.saturating_add(bytes);
        Reservation { reserved: reserved.clone(), bytes }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.0 = r.0.saturating_sub(1);
        r.1 = r.1.saturating_sub(self.bytes);
    }
}

/// What [`Scheduler::make_room`] found.
enum Room {
    /// Room is made: the load may go on.
    Made,
    /// Only loads in flight stand in the way: wait for one to end (without the lock).
    WaitForLoads,
}

/// The tokens of one batch the host decodes at most ([`LoopConfig::n_batch`]).
pub const BATCH_TOKENS: u64 = 512;

/// How an engine holds a model, as far as the memory estimate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMemory {
    /// Weights, KV cache and outputs only: ONNX Runtime, llama.cpp on Vulkan, ROCm or
    /// Metal, third-party engines.
    Plain,
    /// llama.cpp through CUDA: the buffers, and the CUDA runtime's own share of the GPU.
    CudaRuntime,
    /// llama.cpp's CPU backend: besides the mapping, a repacked copy of some matrices,
    /// and the attention scores where it runs without flash attention. `f16_step`: ggml's
    /// F16 SIMD step in the plugin's build, from the CPU features its manifest requires
    /// ([`ggml_f16_step`]).
    GgmlCpuRepack {
        /// `GGML_F16_STEP`: 128 with AVX512-FP16, 64 with AVX-512, 32 with AVX.
        f16_step: Option<u32>,
    },
    /// corral's pure-Rust engine: weights used in place, f32 scratch per batch token, a
    /// KV cache that grows with use (the estimate is its peak).
    PureRust,
}

impl EngineMemory {
    /// The memory behaviour of a plugin, from its manifest: llama.cpp's CPU variants
    /// repack, its CUDA variants (`cuda12`, `cuda13`, ...) pay for the CUDA runtime;
    /// `cpu` is the pure-Rust engine.
    pub fn of_plugin(manifest: &corral_plugin_host::Manifest) -> EngineMemory {
        let cpu_variant = manifest.variant == "cpu" || manifest.variant.starts_with("cpu-");
        match manifest.name.as_str() {
            "llama-cpp" if cpu_variant => {
                EngineMemory::GgmlCpuRepack { f16_step: ggml_f16_step(&manifest.requires) }
            }
            "llama-cpp" if manifest.variant.starts_with("cuda") => EngineMemory::CudaRuntime,
            "cpu" => EngineMemory::PureRust,
            _ => EngineMemory::Plain,
        }
    }
}

/// ggml's `GGML_F16_STEP` for a llama.cpp build that requires `requires`' CPU features
/// (the plugin's build and its manifest come from the same compiler flags):
/// [`corral_probe::ggml::f16_step`].
pub fn ggml_f16_step(requires: &corral_probe::Requirements) -> Option<u32> {
    let x86_64 = requires.arch.as_deref().is_none_or(|a| a == "x86_64" || a == "amd64");
    corral_probe::ggml::f16_step(x86_64, |f| {
        requires.cpu_features.iter().any(|c| corral_probe::normalize_cpu_feature(c) == f)
    })
}

/// What llama.cpp's CPU backend holds for attention without flash attention: the f32
/// scores of one micro-batch against every position of a sequence's context, per head,
/// and the f16 copy the product with the values converts them to. Under `auto` the
/// llama-cpp plugin decides by [`corral_probe::ggml`]'s rule, applied here the same way:
/// off where ggml's kernel would walk a head element by element, with a micro-batch
/// (512, shrunk) whose scores fit the budget. `flash_attention` off: the whole 512-token
/// micro-batch, whatever the size.
pub fn ggml_cpu_attention_scores_bytes(
    flash_attention: crate::kv_cache::FlashAttention,
    num_ctx: u32,
    n_head: u64,
    head_sizes: (u64, u64),
    f16_step: Option<u32>,
) -> u64 {
    use crate::kv_cache::FlashAttention;
    use corral_probe::ggml;
    let per_token = u64::from(num_ctx.max(1)).saturating_mul(n_head.max(1)).saturating_mul(4);
    let ubatch = match flash_attention {
        FlashAttention::On => None,
        FlashAttention::Off => Some(BATCH_TOKENS),
        FlashAttention::Auto => ggml::flash_attention_is_scalar(head_sizes, f16_step)
            .then(|| ggml::ubatch_without_flash_attention(BATCH_TOKENS, num_ctx.into(), n_head))
            .flatten(),
    };
    // f32 scores and their f16 copy.
    ubatch.map_or(0, |u| u.saturating_mul(per_token).saturating_mul(3) / 2)
}

/// The prompt rows llama.cpp's CPU backend attends in whole tiles: with flash attention
/// on (asked for, or `auto` where [`corral_probe::ggml`]'s rule keeps it) and an f16
/// cache, its kernel computes [`corral_probe::ggml::FLASH_ATTENTION_TILE_ROWS`] query
/// rows of one sequence at a time and runs a slower per-row kernel on micro-batches with
/// fewer; 1 (no preference) otherwise.
pub fn ggml_cpu_prompt_quantum(
    kv: crate::kv_cache::KvSettings,
    head_sizes: (u64, u64),
    f16_step: Option<u32>,
) -> u32 {
    use crate::kv_cache::{FlashAttention, KvCacheType};
    let flash_attention = match kv.flash_attention {
        FlashAttention::On => true,
        FlashAttention::Off => false,
        FlashAttention::Auto => {
            !corral_probe::ggml::flash_attention_is_scalar(head_sizes, f16_step)
        }
    };
    if flash_attention && kv.cache_type == KvCacheType::F16 {
        corral_probe::ggml::FLASH_ATTENTION_TILE_ROWS
    } else {
        1
    }
}

/// What the pure-Rust engine's load-time repacking of Q4_K matmul weights adds: its
/// interleaved layout holds 32 bytes more per 8 rows' super-block of 1,152 (the file's
/// pages of the originals are released). The token embeddings are read in place.
pub fn pure_rust_repack_growth(tensors: &[corral_gguf::reader::TensorInfo]) -> u64 {
    tensors
        .iter()
        .filter(|t| t.name != "token_embd.weight" && t.dims.len() >= 2 && t.dims[1] % 8 == 0)
        .filter(|t| t.ggml_type == corral_gguf::GgmlType::Q4_K)
        .map(|t| t.size / 36)
        .sum()
}

/// Bytes of the weight matrices llama.cpp's CPU backend repacks on this machine
/// (`ggml_repack_get_optimal_repack_type` in ggml-cpu's `repack.cpp`): on x86-64 with
/// AVX2, Q4_0, Q4_K, IQ4_NL and MXFP4 matrices, and with AVX-512 also Q2_K, whose row
/// count is a multiple of 8. The token embeddings are read by row lookups, which the
/// repacked layout does not serve, so they stay in place (also when the output reuses
/// them). Other CPUs: none counted.
pub fn ggml_cpu_repacked_bytes(tensors: &[corral_gguf::reader::TensorInfo]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use corral_gguf::GgmlType as G;
        if !std::arch::is_x86_feature_detected!("avx2") {
            return 0;
        }
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        tensors
            .iter()
            .filter(|t| t.name != "token_embd.weight" && t.dims.len() >= 2)
            .filter(|t| t.dims[1] % 8 == 0)
            .filter(|t| match t.ggml_type {
                G::Q4_0 | G::Q4_K | G::IQ4_NL | G::MXFP4 => true,
                G::Q2_K => avx512,
                _ => false,
            })
            .map(|t| t.size)
            .sum()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tensors;
        0
    }
}

impl Scheduler {
    /// A scheduler over `rt`'s plugins and `store`.
    pub fn new(
        settings: Settings,
        rt: Runtime,
        store: Option<corral_registry::Store>,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        Scheduler {
            settings,
            rt,
            models: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            crashed: Mutex::new(Default::default()),
            load_crashes: Mutex::new(HashMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            reserved: Arc::new(Mutex::new((0, 0))),
            store,
            metrics,
        }
    }

    /// Resolves a request's `model`: an absolute path to a model file, or a store name.
    pub fn resolve(&self, name: &str) -> Result<ModelRef, ApiError> {
        if name.trim().is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        let declares = |f: &str| self.rt.catalog.declares_format(f);
        let resolver = Resolver {
            store: self.store.as_ref(),
            plugin_formats: &declares,
            paths: PathRule::Under(self.settings.allow_model_paths.clone()),
        };
        let r = resolver.resolve(name).map_err(ApiError::from)?;
        if let Some(stored) = r.resolved.as_deref()
            && stored.config.is_remote()
        {
            // Requests route remote models before they get here; what does not (a
            // remote that is not configured) cannot be loaded either.
            return Err(ApiError::busy(format!(
                "\"{}\" is model \"{}\" on remote \"{}\", which this server cannot reach; \
                 check [remotes.{}] in its config",
                r.name,
                stored.config.remote_model,
                stored.config.remote_host,
                stored.config.remote_host
            )));
        }
        Ok(r)
    }

    /// A request's `model` in the form models are loaded under (see
    /// [`crate::models::load_key`]); 400 when it is empty. Needs no I/O: the name is
    /// resolved only when the model is not loaded yet.
    pub fn named(&self, model: &str) -> Result<Named, ApiError> {
        if model.trim().is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        Ok(Named { name: crate::models::load_key(model) })
    }

    fn plugin_for(&self, format: &str) -> Result<Arc<LoadedPlugin>, ApiError> {
        let selector = self.rt.selector(self.settings.backend.as_deref(), Some(format));
        let (p, _) = self.rt.choose(&selector).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(p)
    }

    /// The loaded model under `key`, counted as in use.
    /// A model whose engine is gone (its worker crashed or hung) is forgotten here, so
    /// the request that finds it loads it again.
    /// `None` too when `num_ctx` is given and the model is loaded with another context
    /// (the caller reloads it).
    fn use_loaded(
        &self,
        key: &str,
        keep_alive: Option<Duration>,
        num_ctx: Option<u32>,
    ) -> Option<UseGuard> {
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let l = models.get(key)?;
        if let Err(why) = l.model.health() {
            tracing::warn!(model = %key, "the model's engine is gone ({why}); loading it again");
            models.remove(key);
            drop(models);
            self.engine_died(key);
            return None;
        }
        // The window the request asks for, as the load would cut it (Ollama's clamp).
        let trained = l.model.meta.context_length;
        if num_ctx.is_some_and(|n| context_length(Some(n), None, trained) != l.num_ctx) {
            return None;
        }
        l.inflight.fetch_add(1, Ordering::SeqCst);
        Some(UseGuard { loaded: l.clone(), keep_alive })
    }

    /// Counts a dead engine and remembers its model, whose next load is a restart.
    fn engine_died(&self, key: &str) {
        self.metrics.worker_crashes.fetch_add(1, Ordering::Relaxed);
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        self.crashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string());
    }

    /// Forgets every loaded model whose engine is gone (the reaper calls it, so
    /// `/api/ps` does not list dead models).
    pub fn forget_dead(&self) {
        // Health is asked outside the map's lock: noticing a death reaps the worker.
        let loaded: Vec<(String, Arc<Loaded>)> = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        let dead: Vec<String> =
            loaded.into_iter().filter(|(_, l)| l.model.health().is_err()).map(|(k, _)| k).collect();
        for key in dead {
            let removed =
                self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
            if removed.is_some() {
                tracing::warn!(model = %key, "the model's engine is gone; it loads again on the next request");
                self.engine_died(&key);
            }
        }
    }

    /// Refuses a model whose engine crashed while loading [`CRASH_LOOP_LOADS`] times in
    /// a row, for [`CRASH_LOOP_PAUSE`] after the last.
    fn check_crash_loop(&self, key: &str) -> Result<(), ApiError> {
        let failures = self.load_crashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, last, why)) = failures.get(key)
            && *n >= CRASH_LOOP_LOADS
        {
            let left = CRASH_LOOP_PAUSE.saturating_sub(last.elapsed());
            if !left.is_zero() {
                return Err(ApiError::busy(format!(
                    "model {key} crashed its engine while loading {n} times in a row (last: {why}); \
                     not loading it again for {} s",
                    left.as_secs().max(1)
                )));
            }
        }
        Ok(())
    }

    /// Records how a load ended, for the crash-loop rule.
    fn record_load(&self, key: &str, outcome: Result<(), &ApiError>) {
        let mut failures =
            self.load_crashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Err(e) if e.message.contains(corral_plugin_host::worker::DEATH_MARK) => {
                let entry =
                    failures.entry(key.to_string()).or_insert((0, Instant::now(), String::new()));
                // A crash long after the last starts a new run of crashes.
                if entry.1.elapsed() > CRASH_LOOP_PAUSE {
                    entry.0 = 0;
                }
                entry.0 += 1;
                entry.1 = Instant::now();
                entry.2 = e.message.clone();
                self.metrics.worker_crashes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                failures.remove(key);
            }
        }
    }

    /// The loaded models.
    /// Whether a model is loaded under `key` (a [`crate::models::load_key`]) now.
    pub fn is_loaded(&self, key: &str) -> bool {
        self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(key)
    }

    /// The loaded models, by name.
    pub fn loaded(&self) -> Vec<Arc<Loaded>> {
        let mut v: Vec<Arc<Loaded>> = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.model_ref.name.cmp(&b.model_ref.name));
        v
    }

    /// Uses the model a request names (resolving and loading it if it is not loaded)
    /// for one request. Returns the guard and the load time (zero when it was loaded
    /// already). A loaded model is served without waiting for any other model's load.
    ///
    /// `num_ctx` is the request's `options.num_ctx`: a model loaded with another
    /// context is reloaded with this one, as Ollama reloads its runner (see
    /// [`Scheduler::reload_wait`]); `None` uses the model as it is loaded.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        keep_alive: Option<Option<Duration>>,
        num_ctx: Option<u32>,
    ) -> Result<(UseGuard, Duration), ApiError> {
        let keep_alive = keep_alive.unwrap_or(self.settings.keep_alive);
        let key = crate::models::load_key(name);
        let num_ctx = num_ctx.map(|n| n.max(1));
        if let Some(g) = self.use_loaded(&key, keep_alive, num_ctx) {
            return Ok((g, Duration::ZERO));
        }
        // One load per model: requests for the same model wait for it here.
        let model_lock = self
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        // Owned: it moves into the load with the reservation, so a request that goes
        // away mid-load does not let a retry start a second load beside it.
        let model_guard = model_lock.lock_owned().await;
        if let Some(g) = self.use_loaded(&key, keep_alive, num_ctx) {
            return Ok((g, Duration::ZERO));
        }
        // Loaded, but with another context than the request asks for.
        let stale = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        self.check_crash_loop(&key)?;
        let r = match &stale {
            Some(l) => l.model_ref.clone(),
            None => self.resolve(name)?,
        };
        let n_parallel = self.settings.num_parallel.max(1);
        let requested = num_ctx.or_else(|| param_num_ctx(&r));
        let plugin = self.plugin_for(&r.format)?;
        let engine_memory = EngineMemory::of_plugin(&plugin.manifest);
        let kv = self
            .settings
            .kv
            .for_model(&r.params)
            .map_err(|e| ApiError::bad_request(format!("model {}: PARAMETER {e}", r.name)))?;
        let need = estimate_memory(
            &r.path,
            requested.or(self.settings.num_ctx),
            n_parallel,
            engine_memory,
            kv,
        );
        let need = self.with_draft(&r, need, n_parallel, engine_memory);
        // A model whose weights and KV cache cannot fit even alone is refused here, with
        // the numbers, rather than allocated until the kernel kills something.
        // With RPC workers, part of the model goes to other machines: the engine plans
        // the split over every device's free memory and refuses what does not fit.
        if let Some(avail) = self.available_memory()
            && need.bytes > avail
            && self.settings.rpc.is_empty()
        {
            // When a context of one position cannot fit either although the weights do,
            // no num_ctx helps: the file's hyperparameters are impossible (layer, head or
            // width counts beyond any real model), which is the file's fault, not a lack
            // of memory.
            let weights = std::fs::metadata(&r.path).map_or(0, |m| m.len());
            let minimal = estimate_memory(&r.path, Some(1), n_parallel, engine_memory, kv);
            if minimal.bytes > avail && weights <= avail {
                return Err(ApiError::bad_request(format!(
                    "model {} has impossible hyperparameters: even a context of one position \
                     would take {} MiB (its layer, head and width counts are beyond any real \
                     model)",
                    r.name,
                    minimal.bytes >> 20
                )));
            }
            return Err(ApiError::of_class(
                ErrorClass::OutOfMemory,
                format!(
                    "model {} needs about {} MiB (its weights and a KV cache of {n_parallel} \
                     sequence(s) × {} positions) but {} MiB of memory are available; lower \
                     num_ctx ({}) or CORRAL_NUM_PARALLEL",
                    r.name,
                    need.bytes >> 20,
                    need.num_ctx,
                    avail >> 20,
                    if num_ctx.is_some() {
                        "the request's options.num_ctx"
                    } else {
                        "the model's PARAMETER num_ctx or CORRAL_CONTEXT_LENGTH"
                    }
                ),
            ));
        }
        let estimate = need.bytes;
        // Room for loads of different models is made one at a time, and each load's
        // estimate is reserved before the lock is released: the engine's load then runs
        // beside other models' (one that hangs until the engine timeout holds up none).
        let mut stale = stale;
        let reservation = loop {
            let lock = self.load_lock.lock().await;
            if let Some(old) = stale.take() {
                self.retire(&key, old, num_ctx.unwrap_or(0)).await?;
            }
            match self.make_room(estimate).await? {
                Room::Made => break Reservation::new(&self.reserved, estimate),
                // Loads in flight cannot be evicted: wait for one to end, the lock free
                // for loads that do fit meanwhile.
                Room::WaitForLoads => {
                    drop(lock);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let me = self.clone();
        let t = Instant::now();
        // The reservation and the model's lock go with the load and come back with its
        // result: a request that goes away mid-load drops them only when the load ends.
        let (loaded, _held) = tokio::task::spawn_blocking(move || {
            let loaded = me.load_blocking(plugin, r, n_parallel, requested, need, kv);
            (loaded, (reservation, model_guard))
        })
        .await
        .map_err(|e| ApiError::internal(format!("model load task failed: {e}")))?;
        self.record_load(&key, loaded.as_ref().map(|_| ()));
        let loaded = loaded?;
        if self.crashed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key) {
            self.metrics.worker_restarts.fetch_add(1, Ordering::Relaxed);
        }
        let load_time = t.elapsed();
        tracing::info!(model = %loaded.model_ref.name, secs = load_time.as_secs_f64(), "model loaded");
        let loaded = Arc::new(loaded);
        loaded.inflight.fetch_add(1, Ordering::SeqCst);
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), loaded.clone());
        self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        Ok((UseGuard { loaded, keep_alive }, load_time))
    }

    /// Takes `old`, loaded under `key` with another context than a request asks for
    /// (`num_ctx`), out of use so that it can be loaded again: it leaves the map at once,
    /// so new requests for the model wait for the reload rather than keep it busy; the
    /// requests running on it finish first (up to [`Scheduler::reload_wait`]), then its
    /// engine stops. When they do not finish in time it is put back and the request is
    /// answered 503.
    async fn retire(&self, key: &str, old: Arc<Loaded>, num_ctx: u32) -> Result<(), ApiError> {
        tracing::info!(
            model = %key,
            from = old.num_ctx,
            to = num_ctx,
            "reloading the model with the context a request asks for"
        );
        {
            let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if models.get(key).is_some_and(|l| Arc::ptr_eq(l, &old)) {
                models.remove(key);
            }
        }
        if !Self::wait_idle(&old, Instant::now() + self.reload_wait()).await {
            let from = old.num_ctx;
            self.models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(key.to_string())
                .or_insert(old);
            return Err(ApiError::busy(format!(
                "model {key} is in use with num_ctx {from}; it can be reloaded with num_ctx \
                 {num_ctx} once its requests finish; retry later"
            )));
        }
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || old.engine.shutdown()).await;
        Ok(())
    }

    /// How long a reload for another `num_ctx` waits for the model's running requests:
    /// `CORRAL_RELOAD_WAIT` seconds, 30 by default.
    pub fn reload_wait(&self) -> Duration {
        std::env::var("CORRAL_RELOAD_WAIT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map_or(Duration::from_secs(30), Duration::from_secs_f64)
    }

    /// `need` plus what the model's draft model (`PARAMETER draft_model`) costs: its
    /// weights and a context of the same sequences and positions, whose KV cache is in
    /// the engine's default type (the draft loads without the model's KV settings).
    /// `kv_bytes_per_token` stays the model's own. A draft that cannot be resolved adds
    /// nothing here; loading it reports why. Its LoRA adapters' files too (llama.cpp
    /// copies them into buffers of their own).
    fn with_draft(
        &self,
        r: &ModelRef,
        mut need: MemoryEstimate,
        n_parallel: u32,
        engine: EngineMemory,
    ) -> MemoryEstimate {
        need.bytes = need.bytes.saturating_add(r.adapter_bytes());
        let draft = r.params.get("draft_model").and_then(|v| v.as_str()).map(str::trim);
        if let Some(d) = draft.filter(|n| !n.is_empty()).and_then(|n| self.resolve(n).ok()) {
            let draft_need = estimate_memory(
                &d.path,
                Some(need.num_ctx),
                n_parallel,
                engine,
                crate::kv_cache::KvSettings::default(),
            );
            need.bytes = need.bytes.saturating_add(draft_need.bytes);
        }
        need
    }

    /// The model's draft model (`PARAMETER draft_model NAME`), loaded by the same
    /// plugin; `None` when it names none. Its vocabulary is checked against the model's
    /// when the engine loop starts.
    fn load_draft(
        &self,
        plugin: &Arc<LoadedPlugin>,
        r: &ModelRef,
    ) -> Result<Option<Arc<Model>>, ApiError> {
        let Some(name) = r.params.get("draft_model") else { return Ok(None) };
        let Some(name) = name.as_str().filter(|n| !n.trim().is_empty()) else {
            return Err(ApiError::bad_request(format!(
                "model {}: PARAMETER draft_model must name a model, got {name}",
                r.name
            )));
        };
        let d = self.resolve(name).map_err(|e| ApiError {
            status: e.status,
            message: format!("draft model {name} of {}: {}", r.name, e.message),
        })?;
        if d.format != r.format {
            return Err(ApiError::bad_request(format!(
                "draft model {name} is a {} model but {} is {}: a draft model runs on its \
                 model's engine",
                d.format, r.name, r.format
            )));
        }
        let options = LoadOptions { n_threads: self.settings.threads, ..Default::default() };
        let model = Model::load(plugin.clone(), &d.path.to_string_lossy(), &d.format, options)
            .map_err(|e| {
                ApiError::of_class(
                    ErrorClass::of_backend(e.kind),
                    format!("{} could not load the draft model {name}: {e}", plugin.manifest.id()),
                )
            })?;
        tracing::info!(model = %r.name, draft = %d.name, "draft model loaded");
        Ok(Some(Arc::new(model)))
    }

    fn load_blocking(
        &self,
        plugin: Arc<LoadedPlugin>,
        r: ModelRef,
        n_parallel: u32,
        requested: Option<u32>,
        need: MemoryEstimate,
        kv: KvSettings,
    ) -> Result<Loaded, ApiError> {
        let options = LoadOptions {
            n_threads: self.settings.threads,
            extra: kv
                .extra()
                .into_iter()
                .chain(self.settings.rpc.extra())
                .chain(r.adapter_options())
                .map(|(k, v)| corral_backend_api::Tuple2(k.into(), v.into()))
                .collect(),
            ..Default::default()
        };
        let n_gpu_layers = options.n_gpu_layers;
        let selector = self.rt.selector(self.settings.backend.as_deref(), Some(&r.format));
        let model = self
            .rt
            .load_model(&selector, &r.name, (&r.path, &r.format), &options, |m| {
                Fit::judge(m, &r, kv, &self.settings.rpc)
            })
            // The class of the engine's error: an engine out of memory is a 507.
            .map_err(|e: ModelLoadError| ApiError::of_class(e.class(), e.to_string()))?;
        let model = Arc::new(model);
        // The engine that runs it, when the first one chosen could not.
        let first_choice = plugin.manifest_path.clone();
        let plugin = model.plugin.clone();
        if let Some(w) = self.settings.rpc.unused_warning(model.capabilities, &plugin.manifest.id())
        {
            tracing::warn!(model = %r.name, "{w}");
        }
        if let Some(p) = crate::rpc::Placement::of(&model.meta) {
            for line in p.lines() {
                tracing::info!(model = %r.name, "{line}");
            }
            for s in &p.skipped {
                tracing::warn!(model = %r.name, worker = %s.endpoint, "RPC worker not used: {}", s.reason);
            }
        }
        let kv = honoured_kv(kv, model.capabilities, &plugin.manifest.id(), &r.name)?;
        let trained = model.meta.context_length;
        let num_ctx = context_length(requested, self.settings.num_ctx, trained);
        if let Some(asked) = exceeds_training(requested, self.settings.num_ctx, trained) {
            tracing::warn!(
                model = %r.name,
                num_ctx = asked,
                n_ctx_train = trained,
                "requested context size too large for model; using its training context"
            );
        }
        // Whether the Modelfile's TEMPLATE is the one rendering (not blank, translated,
        // compiled): the capabilities are judged from it, else from the model's own.
        let mut stored_template = r.template.as_deref().is_some_and(|t| !t.trim().is_empty());
        let templater = match r.template.as_deref() {
            Some(t) => Templater::with_source(&model, Some(t)).or_else(|e| {
                tracing::warn!(model = %r.name, "TEMPLATE not usable ({e:#}); using the model's own");
                stored_template = false;
                Templater::for_model(&model)
            }),
            None => Templater::for_model(&model),
        }
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let draft = self.load_draft(&plugin, &r)?;
        // The estimate made before loading, unless the engine's training context changed
        // the context chosen or another engine runs the model than the one the estimate
        // was made for (reading the GGUF again costs a parse of its vocabulary).
        let need = if need.num_ctx == num_ctx && plugin.manifest_path == first_choice {
            need
        } else {
            let engine_memory = EngineMemory::of_plugin(&plugin.manifest);
            let need = estimate_memory(&r.path, Some(num_ctx), n_parallel, engine_memory, kv);
            self.with_draft(&r, need, n_parallel, engine_memory)
        };
        let size_estimate = need.bytes;
        let offloaded = n_gpu_layers != 0
            && plugin.devices().iter().any(|d| d.kind != corral_backend_api::DeviceKind::Cpu);
        // Tiles hold one sequence's rows only with a KV stream per sequence.
        let kv_unified = self
            .rt
            .config
            .backends
            .get(&plugin.manifest.name)
            .and_then(|t| t.get("kv_unified"))
            .and_then(toml::Value::as_bool)
            == Some(true);
        let prompt_quantum = if offloaded || kv_unified { 1 } else { need.prompt_quantum };
        if prompt_quantum > 1 {
            tracing::info!(
                model = %r.name,
                "prompt chunks sized to the engine's attention tiles of {prompt_quantum} rows"
            );
        }
        let engine = EngineHandle::start(
            model.clone(),
            LoopConfig {
                n_parallel,
                num_ctx,
                n_batch: BATCH_TOKENS as u32,
                n_threads: self.settings.threads,
                model_name: r.name.clone(),
                speculation: self.settings.speculation,
                draft,
                prompt_quantum,
            },
        )?;
        let template_source = r.template_source.as_deref().filter(|_| stored_template);
        let template = template_source.unwrap_or(templater.template.source());
        let capabilities = super::ollama::capabilities_of(&r, template, model.capabilities);
        let embed_bytes_per_token = match EngineMemory::of_plugin(&plugin.manifest) {
            EngineMemory::GgmlCpuRepack { .. } => u64::from(model.vocab_size) * 8,
            _ => 0,
        };
        Ok(Loaded {
            model_ref: r,
            model,
            engine,
            templater,
            capabilities,
            num_ctx,
            size_estimate,
            size_vram: if offloaded { size_estimate } else { 0 },
            kv,
            kv_bytes_per_token: need.kv_bytes_per_token,
            loaded_at: Instant::now(),
            inflight: AtomicUsize::new(0),
            expires: Mutex::new(None),
            expires_wall: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
            embed_ctx: Mutex::new(None),
            embed_bytes_per_token,
            tokens: OnceLock::new(),
            admission: Mutex::new(()),
        })
    }

    async fn make_room(&self, estimate: u64) -> Result<Room, ApiError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let loaded = self.loaded();
            let (loading, reserved) =
                *self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if loaded.is_empty() && loading == 0 {
                if let Some(avail) = self.available_memory()
                    && estimate > avail
                {
                    tracing::warn!(
                        "model needs about {} MiB, {} MiB available; loading anyway",
                        estimate >> 20,
                        avail >> 20
                    );
                }
                return Ok(Room::Made);
            }
            // Loads in flight count as loaded (their memory is not taken yet, so the
            // probe does not see it).
            let used: u64 = loaded.iter().map(|l| l.size_estimate).sum::<u64>() + reserved;
            let too_many = loaded.len() + loading >= self.settings.max_loaded_models.max(1);
            let too_big =
                self.available_memory().is_some_and(|avail| used > 0 && used + estimate > avail);
            if !too_many && !too_big {
                return Ok(Room::Made);
            }
            let victim = loaded
                .iter()
                .filter(|l| l.inflight.load(Ordering::SeqCst) == 0)
                .min_by_key(|l| {
                    *l.last_used.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .cloned();
            match victim {
                Some(v) => {
                    tracing::info!(
                        model = %v.model_ref.name,
                        reason = if too_many { "max_loaded_models" } else { "memory" },
                        "evicting the least recently used model"
                    );
                    self.unload(&v.model_ref.name).await;
                }
                // Only loads in flight (which cannot be evicted) are in the way.
                None if loading > 0 => return Ok(Room::WaitForLoads),
                None => {
                    if Instant::now() > deadline {
                        return Err(ApiError::busy(
                            "server busy: every loaded model is in use and no other fits; retry later",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn available_memory(&self) -> Option<u64> {
        let used_by_us: u64 = self.loaded().iter().map(|l| l.size_estimate).sum();
        // The probe sees our own models as used; add them back so the check compares the
        // new model against what is free beside them.
        memory_available_now().map(|a| a + used_by_us)
    }

    /// Forgets the loaded model `name` (after its name was re-created, copied over or
    /// pulled again): the next request loads what the name means now, while requests
    /// running on the old one finish on it.
    pub fn forget(&self, name: &str) {
        let key = crate::models::load_key(name);
        // The lock ends with this statement: `loaded()` below takes it again (held through
        // an `if let` body, it deadlocked every later request; `significant_drop_in_scrutinee`
        // now denies the pattern).
        let removed =
            self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        if let Some(l) = removed {
            tracing::info!(model = %key, "forgetting the loaded model: its name changed");
            self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
            // Its engine ends when the last request on it does.
            drop(l);
        }
    }

    /// Unloads `name`: it leaves the map at once (the next request loads it again), the
    /// requests that hold it finish first (up to [`Scheduler::reload_wait`]; an engine
    /// stopped under them answered 500 "the engine loop has stopped"), then its engine
    /// stops (waited for on the blocking pool). Past the wait the engine ends when its last
    /// request does. False when it was not loaded.
    pub async fn unload(&self, name: &str) -> bool {
        let key = crate::models::load_key(name);
        let removed =
            self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        let Some(l) = removed else { return false };
        tracing::info!(model = %key, "unloading");
        if !Self::wait_idle(&l, Instant::now() + self.reload_wait()).await {
            tracing::info!(model = %key, "its requests still run; its engine ends when they do");
            return true;
        }
        let _ = tokio::task::spawn_blocking(move || l.engine.shutdown()).await;
        true
    }

    /// Waits until no request holds `l` and its engine runs no sequence; false if that
    /// did not happen by `deadline`.
    async fn wait_idle(l: &Loaded, deadline: Instant) -> bool {
        while l.inflight.load(Ordering::SeqCst) > 0 || l.active() > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Holds `name`'s loads off: a load of it in flight finishes (and is in the map)
    /// before this returns, and none starts until the guard drops. `/api/delete` removes
    /// the model under it, so no load that resolved the name before the removal puts a
    /// deleted model back in the map.
    pub async fn hold_loads(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let key = crate::models::load_key(name);
        let lock = self
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Drops `name`'s entry in the load locks once nobody holds or waits on it (after
    /// [`Scheduler::hold_loads`]: one entry per deleted name would otherwise stay).
    pub fn release_loads(&self, name: &str) {
        let key = crate::models::load_key(name);
        let mut loading = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if loading.get(&key).is_some_and(|l| Arc::strong_count(l) == 1) {
            loading.remove(&key);
        }
    }

    /// Unloads every idle model whose keep-alive has expired.
    pub async fn reap(&self) {
        self.forget_dead();
        let now = Instant::now();
        let expired: Vec<String> = self
            .loaded()
            .into_iter()
            .filter(|l| {
                l.inflight.load(Ordering::SeqCst) == 0
                    && l.active() == 0
                    && l.expires
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .is_some_and(|t| t <= now)
            })
            .map(|l| l.model_ref.name.clone())
            .collect();
        for name in expired {
            let _lock = self.load_lock.lock().await;
            // Re-check under the lock: a request may have started meanwhile.
            let still = self
                .models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&name)
                .is_some_and(|l| l.inflight.load(Ordering::SeqCst) == 0);
            if still {
                tracing::info!(model = %name, "keep_alive expired");
                self.unload(&name).await;
            }
        }
    }

    /// Unloads everything (shutdown).
    pub async fn unload_all(&self) {
        for l in self.loaded() {
            self.unload(&l.model_ref.name).await;
        }
    }

    /// Sampling options for a request: the model's PARAMETERs, then the request's options.
    pub fn options_for(r: &ModelRef, request: Option<&Value>) -> Result<SamplingOptions, ApiError> {
        let mut o = SamplingOptions::default();
        o.apply_json(&Value::Object(r.params.clone()))?;
        if let Some(v) = request {
            o.apply_json(v)?;
        }
        o.validate()?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_contexts_fit_their_input() {
        assert_eq!(embedding_context_size(0, 4096), 512);
        assert_eq!(embedding_context_size(7, 4096), 512);
        assert_eq!(embedding_context_size(513, 4096), 1024);
        assert_eq!(embedding_context_size(4096, 4096), 4096);
        // Never past the window (the input is cut to it before).
        assert_eq!(embedding_context_size(100, 256), 256);
        assert_eq!(embedding_context_size(9000, 4096), 4096);
    }
    use corral_gguf::generate::{GenerateOptions, ModelShape, generate_llama};

    fn manifest(rel: &str) -> corral_plugin_host::Manifest {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        corral_plugin_host::Manifest::load(&root.join(rel)).expect("manifest")
    }

    #[test]
    fn engine_memory_follows_the_shipped_manifests() {
        let cases = [
            (
                "backends/llama-cpp/manifests/llama-cpp-cpu.toml",
                EngineMemory::GgmlCpuRepack { f16_step: None },
            ),
            (
                "backends/llama-cpp/manifests/llama-cpp-cpu-x86-64-v3.toml",
                EngineMemory::GgmlCpuRepack { f16_step: Some(32) },
            ),
            (
                "backends/llama-cpp/manifests/llama-cpp-cpu-x86-64-v4.toml",
                EngineMemory::GgmlCpuRepack { f16_step: Some(64) },
            ),
            ("backends/llama-cpp/manifests/llama-cpp-cuda12.toml", EngineMemory::CudaRuntime),
            ("backends/llama-cpp/manifests/llama-cpp-cuda13.toml", EngineMemory::CudaRuntime),
            ("backends/llama-cpp/manifests/llama-cpp-vulkan.toml", EngineMemory::Plain),
            ("backends/cpu/manifests/cpu.toml", EngineMemory::PureRust),
        ];
        for (rel, want) in cases {
            assert_eq!(EngineMemory::of_plugin(&manifest(rel)), want, "{rel}");
        }
    }

    #[test]
    fn a_cuda_engine_counts_the_cuda_runtime_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let opts = GenerateOptions { shape: ModelShape::tiny(), ..Default::default() };
        generate_llama(&path, &opts).unwrap();
        let kv = crate::kv_cache::KvSettings::default();
        let plain = estimate_memory(&path, Some(512), 4, EngineMemory::Plain, kv);
        let cuda = estimate_memory(&path, Some(512), 4, EngineMemory::CudaRuntime, kv);
        assert_eq!(cuda.bytes, plain.bytes + CUDA_RUNTIME_OVERHEAD);
        assert_eq!(cuda.kv_bytes_per_token, plain.kv_bytes_per_token);
    }

    #[test]
    fn llama_cpp_on_the_cpu_attends_prompts_in_tiles_where_flash_attention_runs() {
        use crate::kv_cache::{FlashAttention, KvCacheType, KvSettings};
        let kv = |flash_attention, cache_type| KvSettings {
            flash_attention,
            cache_type,
            ..KvSettings::default()
        };
        let auto = kv(FlashAttention::Auto, KvCacheType::F16);
        // AVX-512 (step 64) keeps flash attention for 64-wide heads: tiles of 64 rows.
        assert_eq!(ggml_cpu_prompt_quantum(auto, (64, 64), Some(64)), 64);
        // AVX512-FP16 (step 128) turns it off for them: no tiles.
        assert_eq!(ggml_cpu_prompt_quantum(auto, (64, 64), Some(128)), 1);
        assert_eq!(ggml_cpu_prompt_quantum(auto, (256, 256), Some(128)), 64);
        let off = kv(FlashAttention::Off, KvCacheType::F16);
        assert_eq!(ggml_cpu_prompt_quantum(off, (64, 64), Some(64)), 1);
        // A quantized cache runs the per-row kernel.
        let q8 = kv(FlashAttention::On, KvCacheType::Q8_0);
        assert_eq!(ggml_cpu_prompt_quantum(q8, (64, 64), Some(64)), 1);
    }

    #[test]
    fn attention_scores_count_where_llama_cpp_attends_without_flash_attention() {
        use crate::kv_cache::FlashAttention::{Auto, Off, On};
        const MIB: u64 = 1 << 20;
        // TinyLlama (32 heads of 64) at 4,096 positions with AVX512-FP16's step of 128:
        // 512 x 4,096 x 32 f32 scores (256 MiB) and their f16 copy.
        assert_eq!(ggml_cpu_attention_scores_bytes(Auto, 4096, 32, (64, 64), Some(128)), 384 * MIB);
        // With AVX-512's 64 (or Gemma 3's heads of 256) flash attention stays: nothing.
        assert_eq!(ggml_cpu_attention_scores_bytes(Auto, 4096, 32, (64, 64), Some(64)), 0);
        assert_eq!(ggml_cpu_attention_scores_bytes(Auto, 4096, 4, (256, 256), Some(128)), 0);
        // 8,192 positions: the micro-batch halves, the scores stay at 256 MiB.
        assert_eq!(ggml_cpu_attention_scores_bytes(Auto, 8192, 32, (64, 64), Some(128)), 384 * MIB);
        // 131,072 positions: flash attention stays on.
        assert_eq!(ggml_cpu_attention_scores_bytes(Auto, 131_072, 32, (64, 64), Some(128)), 0);
        // Set by hand: off costs the full micro-batch, on nothing.
        assert_eq!(ggml_cpu_attention_scores_bytes(Off, 8192, 32, (128, 128), None), 768 * MIB);
        assert_eq!(ggml_cpu_attention_scores_bytes(On, 4096, 32, (64, 64), Some(128)), 0);

        // Through the estimate: a generated model with 64-element heads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let opts = GenerateOptions { shape: ModelShape::tiny(), ..Default::default() };
        generate_llama(&path, &opts).unwrap();
        let kv = crate::kv_cache::KvSettings::default();
        let at = |f16_step| {
            estimate_memory(&path, Some(512), 4, EngineMemory::GgmlCpuRepack { f16_step }, kv).bytes
        };
        let g = corral_gguf::reader::GgufFile::open(&path).unwrap();
        let n_head = u64::from(g.get_u32("llama.attention.head_count").unwrap());
        let head = u64::from(g.get_u32("llama.embedding_length").unwrap()) / n_head;
        // A step larger than the head: the scores count, as the formula has them.
        let step = ((head + 1).next_power_of_two() * 2) as u32;
        let expected = ggml_cpu_attention_scores_bytes(Auto, 512, n_head, (head, head), Some(step));
        assert!(expected > 0);
        assert_eq!(at(Some(step)) - at(None), expected, "head {head}, step {step}");
        assert_eq!(at(Some(1)), at(None), "a step of 1 divides every head size");
    }
}
