//! The scheduler: which models are loaded, for how long, and whether a request may run.
//!
//! Models load on first use (one load at a time), stay for their `keep_alive` after the
//! last request ends (negative: forever; 0: unload as soon as idle), and are evicted
//! least-recently-used first when `max_loaded_models` is reached or when the memory
//! estimate (weights file + f16 KV cache) of the new model does not fit beside the others
//! in the probe's available memory. Only idle models are evicted; when every loaded model
//! is busy, a load waits up to 30 s for one to become idle, then answers 503. Each loaded
//! model has one engine loop with `num_parallel` sequences; a request beyond them waits
//! in that loop's queue, and beyond `max_queue` waiting it is answered 503.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use corral_backend_api::{ContextParams, LoadOptions};
use corral_generation::options::SamplingOptions;
use serde_json::{Map, Value};

use super::{metrics::Metrics, structured::TokenTable, util::ApiError};
use crate::{
    engine::{Context, Model},
    engine_loop::{EngineHandle, LoopConfig, Request},
    plugins::LoadedPlugin,
    prompt::Templater,
    runtime::Runtime,
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
    /// Context per sequence (default: the model's, at most 2048... see `num_ctx_for`).
    pub num_ctx: Option<u32>,
    /// Compute threads (0: the engine's choice).
    pub threads: u32,
    /// Backend selector (`--backend`).
    pub backend: Option<String>,
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
        }
    }
}

/// A model a request names, resolved to a file and its defaults.
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// The name as shown in answers (`tiny:latest`, or the path).
    pub name: String,
    /// The weights file.
    pub path: PathBuf,
    /// Its format (`gguf`, `onnx`, or a plugin's own).
    pub format: String,
    /// TEMPLATE of the store model, if any.
    pub template: Option<String>,
    /// SYSTEM of the store model, if any.
    pub system: Option<String>,
    /// PARAMETERs of the store model: generation defaults.
    pub params: Map<String, Value>,
    /// Digest (manifest digest for store models, empty for paths).
    pub digest: String,
    /// Weights size in bytes.
    pub size: u64,
    /// Modification time.
    pub modified: SystemTime,
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
    /// Context per sequence.
    pub num_ctx: u32,
    /// Memory estimate in bytes.
    pub size_estimate: u64,
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
    embed_ctx: Mutex<Option<Context>>,
    tokens: OnceLock<Arc<TokenTable>>,
    admission: Mutex<()>,
}

impl Loaded {
    /// The token table for structured output (built on first use).
    pub fn token_table(&self) -> Result<Arc<TokenTable>, ApiError> {
        if let Some(t) = self.tokens.get() {
            return Ok(t.clone());
        }
        let mut by_id = Vec::with_capacity(self.model.vocab_size as usize);
        for id in 0..self.model.vocab_size {
            by_id.push(self.model.token_bytes(id).unwrap_or_default());
        }
        let s = &self.model.special;
        let eog: Vec<u32> = s.eog.iter().copied().collect();
        let never: Vec<u32> = s.bos.into_option().into_iter().collect();
        let t = Arc::new(TokenTable::new(by_id, eog, &never));
        Ok(self.tokens.get_or_init(|| t).clone())
    }

    /// Queues a generation, or 503 when the queue is full.
    pub fn submit(&self, req: Request, max_queue: usize) -> Result<(), ApiError> {
        let _g = self.admission.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut guard = self.embed_ctx.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let params = ContextParams {
                n_ctx: self.num_ctx,
                n_batch: self.num_ctx,
                n_seq_max: 1,
                n_threads: self.engine.config.n_threads,
                n_threads_batch: self.engine.config.n_threads,
                embeddings: true,
                seed: 0,
            };
            *guard = Some(self.model.new_context(&params)?);
        }
        let Some(ctx) = guard.as_mut() else { return Err(ApiError::internal("no context")) };
        ctx.kv_clear()?;
        ctx.prefill(0, 0, tokens)?;
        Ok(ctx.embeddings(0)?)
    }
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
        *self.loaded.last_used.lock().unwrap_or_else(|e| e.into_inner()) = now;
        *self.loaded.expires.lock().unwrap_or_else(|e| e.into_inner()) =
            self.keep_alive.map(|d| now + d);
        *self.loaded.expires_wall.lock().unwrap_or_else(|e| e.into_inner()) =
            self.keep_alive.map(|d| SystemTime::now() + d);
        self.loaded.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The scheduler.
pub struct Scheduler {
    /// Settings in force.
    pub settings: Settings,
    rt: Runtime,
    plugins: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    models: Mutex<HashMap<String, Arc<Loaded>>>,
    load_lock: tokio::sync::Mutex<()>,
    /// The model store, when one could be opened.
    pub store: Option<corral_registry::Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Memory estimate: the weights file plus an f16 KV cache for every sequence
/// (2 × n_layer × n_ctx × n_embd_kv × 2 bytes).
pub fn estimate_memory(path: &std::path::Path, n_ctx_total: u64) -> u64 {
    let file = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let Ok(g) = corral_gguf::reader::GgufFile::open(path) else { return file };
    let arch = g.architecture().unwrap_or("llama").to_string();
    let get = |k: &str| {
        g.get_u64(&format!("{arch}.{k}"))
            .or_else(|| g.get_u32(&format!("{arch}.{k}")).map(u64::from))
    };
    let n_layer = get("block_count").unwrap_or(0);
    let n_embd = get("embedding_length").unwrap_or(0);
    let n_head = get("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = get("attention.head_count_kv").unwrap_or(n_head);
    let n_embd_kv = n_embd * n_head_kv / n_head;
    file + 2 * n_layer * n_ctx_total * n_embd_kv * 2
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
            plugins: Mutex::new(HashMap::new()),
            models: Mutex::new(HashMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            store,
            metrics,
        }
    }

    /// The model format of a file: a format some plugin declares as its extension
    /// (the example plugin's `toy`), else the usual rule (directory/.onnx: onnx, else gguf).
    pub fn format_of(&self, path: &std::path::Path) -> String {
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            let ext = ext.to_ascii_lowercase();
            let declared = self
                .rt
                .discovered
                .iter()
                .any(|d| d.manifest.as_ref().is_ok_and(|m| m.formats.contains(&ext)));
            if declared {
                return ext;
            }
        }
        crate::runtime::format_of(path).to_string()
    }

    /// Resolves a request's `model`: an absolute path to a model file, or a store name.
    pub fn resolve(&self, name: &str) -> Result<ModelRef, ApiError> {
        if name.trim().is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        let p = std::path::Path::new(name);
        if p.is_absolute() {
            let meta = std::fs::metadata(p).map_err(|_| ApiError::model_not_found(name))?;
            return Ok(ModelRef {
                name: name.to_string(),
                path: p.to_path_buf(),
                format: self.format_of(p),
                template: None,
                system: None,
                params: Map::new(),
                digest: String::new(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        let parsed = corral_registry::ModelName::parse(name).map_err(|e| match e {
            corral_registry::Error::InvalidName { .. } => ApiError::model_not_found(name),
            e => ApiError::from(e),
        })?;
        let Some(store) = &self.store else { return Err(ApiError::model_not_found(name)) };
        let m = match store.get(&parsed) {
            Ok(m) => m,
            Err(corral_registry::Error::ModelNotFound(_)) => {
                return Err(ApiError::model_not_found(name));
            }
            Err(e) => return Err(ApiError::internal(e.to_string())),
        };
        Ok(ModelRef {
            name: m.name.to_string(),
            format: self.format_of(&m.model_path),
            path: m.model_path.clone(),
            // Ollama's Go templates are translated to Jinja, so pulled models chat right.
            template: crate::models::jinja_template(&m.name.to_string(), m.template.as_deref()),
            system: m.system.clone(),
            params: m.params.clone(),
            digest: m.manifest_digest.to_string().trim_start_matches("sha256:").to_string(),
            size: m.model_size,
            modified: m.modified,
        })
    }

    fn plugin_for(&self, format: &str) -> Result<Arc<LoadedPlugin>, ApiError> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plugins.get(format) {
            return Ok(p.clone());
        }
        let selector = self.rt.selector(self.settings.backend.as_deref(), Some(format));
        let (p, _) = self.rt.choose(&selector).map_err(|e| ApiError::internal(format!("{e:#}")))?;
        tracing::info!(format, backend = %p.manifest.id(), "backend chosen");
        plugins.insert(format.to_string(), p.clone());
        Ok(p)
    }

    /// The context length for a model: the setting, else the model's, at most 4096.
    fn num_ctx_for(&self, model: &Model, params: &Map<String, Value>) -> u32 {
        if let Some(n) = params.get("num_ctx").and_then(Value::as_u64) {
            return n.clamp(1, u64::from(u32::MAX)) as u32;
        }
        self.settings.num_ctx.unwrap_or_else(|| {
            let m = model.meta.context_length;
            if m == 0 { 2048 } else { m.min(4096) }
        })
    }

    /// The loaded models.
    pub fn loaded(&self) -> Vec<Arc<Loaded>> {
        let mut v: Vec<Arc<Loaded>> =
            self.models.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.model_ref.name.cmp(&b.model_ref.name));
        v
    }

    /// Uses `r` (loading it if needed) for one request. Returns the guard and the load
    /// time (zero when it was loaded already).
    pub async fn acquire(
        self: &Arc<Self>,
        r: &ModelRef,
        keep_alive: Option<Option<Duration>>,
    ) -> Result<(UseGuard, Duration), ApiError> {
        let keep_alive = keep_alive.unwrap_or(self.settings.keep_alive);
        let _lock = self.load_lock.lock().await;
        if let Some(l) = self.models.lock().unwrap_or_else(|e| e.into_inner()).get(&r.name) {
            l.inflight.fetch_add(1, Ordering::SeqCst);
            return Ok((UseGuard { loaded: l.clone(), keep_alive }, Duration::ZERO));
        }
        let n_parallel = self.settings.num_parallel.max(1);
        let ctx_guess = self.settings.num_ctx.unwrap_or(2048);
        let estimate = estimate_memory(&r.path, u64::from(ctx_guess) * u64::from(n_parallel));
        self.make_room(estimate).await?;
        let plugin = self.plugin_for(&r.format)?;
        let me = self.clone();
        let r2 = r.clone();
        let t = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || me.load_blocking(plugin, r2, n_parallel))
            .await
            .map_err(|e| ApiError::internal(format!("model load task failed: {e}")))??;
        let load_time = t.elapsed();
        tracing::info!(model = %r.name, secs = load_time.as_secs_f64(), "model loaded");
        let loaded = Arc::new(loaded);
        loaded.inflight.fetch_add(1, Ordering::SeqCst);
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.name.clone(), loaded.clone());
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        Ok((UseGuard { loaded, keep_alive }, load_time))
    }

    fn load_blocking(
        &self,
        plugin: Arc<LoadedPlugin>,
        r: ModelRef,
        n_parallel: u32,
    ) -> Result<Loaded, ApiError> {
        let options = LoadOptions { n_threads: self.settings.threads, ..Default::default() };
        let model = Model::load(plugin.clone(), &r.path.to_string_lossy(), &r.format, options)
            .map_err(|e| {
                ApiError::internal(format!(
                    "{} could not load {}: {e}",
                    plugin.manifest.id(),
                    r.path.display()
                ))
            })?;
        let model = Arc::new(model);
        let num_ctx = self.num_ctx_for(&model, &r.params);
        let templater = match r.template.as_deref() {
            Some(t) => Templater::with_source(&model, Some(t)).or_else(|e| {
                tracing::warn!(model = %r.name, "TEMPLATE not usable ({e:#}); using the model's own");
                Templater::for_model(&model)
            }),
            None => Templater::for_model(&model),
        }
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let engine = EngineHandle::start(
            model.clone(),
            LoopConfig { n_parallel, num_ctx, n_batch: 512, n_threads: self.settings.threads },
        )?;
        let size_estimate = estimate_memory(&r.path, u64::from(num_ctx) * u64::from(n_parallel));
        Ok(Loaded {
            model_ref: r,
            model,
            engine,
            templater,
            num_ctx,
            size_estimate,
            loaded_at: Instant::now(),
            inflight: AtomicUsize::new(0),
            expires: Mutex::new(None),
            expires_wall: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
            embed_ctx: Mutex::new(None),
            tokens: OnceLock::new(),
            admission: Mutex::new(()),
        })
    }

    async fn make_room(&self, estimate: u64) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let loaded = self.loaded();
            if loaded.is_empty() {
                if let Some(avail) = self.available_memory()
                    && estimate > avail
                {
                    tracing::warn!(
                        "model needs about {} MiB, {} MiB available; loading anyway",
                        estimate >> 20,
                        avail >> 20
                    );
                }
                return Ok(());
            }
            let used: u64 = loaded.iter().map(|l| l.size_estimate).sum();
            let too_many = loaded.len() >= self.settings.max_loaded_models.max(1);
            let too_big =
                self.available_memory().is_some_and(|avail| used > 0 && used + estimate > avail);
            if !too_many && !too_big {
                return Ok(());
            }
            let victim = loaded
                .iter()
                .filter(|l| l.inflight.load(Ordering::SeqCst) == 0)
                .min_by_key(|l| *l.last_used.lock().unwrap_or_else(|e| e.into_inner()))
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
        // Re-probe only memory: cheap (/proc/meminfo and cgroup files).
        let m = corral_probe::probe(&corral_probe::ProbeOptions {
            use_runtime_libraries: false,
            ..corral_probe::ProbeOptions::system()
        });
        let used_by_us: u64 = self.loaded().iter().map(|l| l.size_estimate).sum();
        // The probe sees our own models as used; add them back so the check compares the
        // new model against what is free beside them.
        m.memory.effective_available_bytes.map(|a| a + used_by_us)
    }

    /// Unloads `name` now (waits for its engine thread to end).
    pub async fn unload(&self, name: &str) -> bool {
        let removed = self.models.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.metrics.loaded_models.store(self.loaded().len(), Ordering::Relaxed);
        match removed {
            Some(l) => {
                tracing::info!(model = %name, "unloading");
                let _ = tokio::task::spawn_blocking(move || drop(l)).await;
                true
            }
            None => false,
        }
    }

    /// Unloads every idle model whose keep-alive has expired.
    pub async fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .loaded()
            .into_iter()
            .filter(|l| {
                l.inflight.load(Ordering::SeqCst) == 0
                    && l.active() == 0
                    && l.expires.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t <= now)
            })
            .map(|l| l.model_ref.name.clone())
            .collect();
        for name in expired {
            let _lock = self.load_lock.lock().await;
            // Re-check under the lock: a request may have started meanwhile.
            let still = self
                .models
                .lock()
                .unwrap_or_else(|e| e.into_inner())
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
