//! `corral serve`: settings merged (flag, `CORRAL_*`, config file, default), the backend
//! for GGUF models chosen and reported, then the server.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use corral_host::{
    config::{ConfigError, ServerConfig},
    engine_loop::SpecSettings,
    runtime::{GlobalOptions, Runtime},
    server::{ServeOptions, Settings, guard::ApiKeys, serve_blocking, util::parse_duration},
};
use corral_plugin_host::{Isolation, Status};

/// `corral serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Backend to use (name, variant or name:variant); default auto.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Address to listen on (default: the config's `[server] host`, else 127.0.0.1:11434;
    /// port 0 picks a free one). Ollama's OLLAMA_HOST comes after these, and only its port
    /// is taken unless it names a loopback address.
    #[arg(long, env = "CORRAL_HOST")]
    pub host: Option<String>,
    /// How long a model stays loaded after its last request (5m, 30s, 0, -1 = forever).
    #[arg(long, env = "CORRAL_KEEP_ALIVE", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,
    /// Models loaded at once (least recently used unloaded first).
    #[arg(long, env = "CORRAL_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,
    /// Parallel sequences per model.
    #[arg(long, env = "CORRAL_NUM_PARALLEL")]
    pub num_parallel: Option<u32>,
    /// Requests waiting per model beyond the running ones; more get 503.
    #[arg(long, env = "CORRAL_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Context length per sequence (default: the model's, at most 4096).
    #[arg(long, env = "CORRAL_CONTEXT_LENGTH")]
    pub num_ctx: Option<u32>,
    /// Compute threads (default: the engine's choice).
    #[arg(long, short = 't', env = "CORRAL_NUM_THREADS")]
    pub threads: Option<u32>,
    /// Extra allowed CORS origins, comma-separated (local origins are always allowed).
    #[arg(long, env = "CORRAL_ORIGINS", value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Model store directory (default: $CORRAL_MODELS, the config's `models`, else the
    /// platform's data directory).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Where engines run: `process` (the default: a worker process per loaded model, so
    /// an engine that crashes takes only its model down) or `in-process`.
    #[arg(long, env = "CORRAL_ISOLATION", value_name = "MODE")]
    pub isolation: Option<String>,
    /// Seconds running requests get to finish at shutdown before they are cancelled.
    #[arg(long, env = "CORRAL_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// A file of API keys, one per line; requests must then carry one (`Authorization:
    /// Bearer KEY` or `x-api-key: KEY`). Also `CORRAL_API_KEYS` (comma-separated) and the
    /// config's `[server] api_keys` / `api_key_file`.
    #[arg(long, env = "CORRAL_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Let requests name model files under DIR by absolute path (repeatable; also
    /// `CORRAL_ALLOW_MODEL_PATHS`, `:`-separated). Without it, a model is a store name.
    #[arg(long = "allow-model-paths", value_name = "DIR")]
    pub allow_model_paths: Vec<PathBuf>,
    /// Let `/api/pull` and `/api/push` requests ask for plain HTTP to a registry
    /// (`insecure: true`, `corral pull --insecure` through this server). Without it such
    /// requests get 403, so a client cannot make the server fetch plain-HTTP URLs. Also
    /// `CORRAL_ALLOW_INSECURE_REGISTRIES=1` and the config's `[server]
    /// allow_insecure_registries`.
    #[arg(
        long,
        env = "CORRAL_ALLOW_INSECURE_REGISTRIES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_insecure_registries: bool,
    /// The KV cache's element type for every model: f16 (default), q8_0 (about half the
    /// memory) or q4_0; also `CORRAL_KV_CACHE_TYPE`, Ollama's `OLLAMA_KV_CACHE_TYPE` and
    /// the config's `[server] kv_cache_type`. A model's `PARAMETER kv_cache_type` wins.
    #[arg(long, value_name = "TYPE")]
    pub kv_cache_type: Option<String>,
    /// Flash attention for every model: on, off or auto (default); also
    /// `CORRAL_FLASH_ATTENTION`, Ollama's `OLLAMA_FLASH_ATTENTION` and `[server]
    /// flash_attention`. A model's `PARAMETER flash_attention` wins.
    #[arg(long, value_name = "MODE")]
    pub flash_attention: Option<String>,
    /// Speculative decoding by default: `off` (the default), `auto` (prompt-lookup
    /// drafts while they are accepted), `ngram` (on every step that finds a match),
    /// `draft` (the model's `PARAMETER draft_model`). Requests override it with
    /// `options.speculative`.
    #[arg(long, env = "CORRAL_SPECULATIVE", value_name = "MODE")]
    pub speculative: Option<String>,
    /// Most draft tokens per speculation round (default 8; requests: `options.draft_max`).
    #[arg(long, env = "CORRAL_DRAFT_MAX", value_name = "N")]
    pub draft_max: Option<u32>,
    /// RPC workers (`corral worker` on other machines) whose devices models may use
    /// beside this machine's: `host:port`, comma-separated or repeated; also
    /// `CORRAL_RPC` and the config's `[backends.llama-cpp] rpc`.
    #[arg(long, env = "CORRAL_RPC", value_name = "HOST:PORT", value_delimiter = ',')]
    pub rpc: Vec<String>,
}

/// The most parallel sequences per model: llama.cpp's `n_seq_max` limit.
const MAX_NUM_PARALLEL: u32 = 256;

/// The global KV settings: flag, then environment, then config.
fn kv_settings(a: &ServeArgs, cfg: &ServerConfig) -> Result<corral_host::kv_cache::KvSettings> {
    use corral_host::kv_cache::{FlashAttention, KvCacheType, KvSettings};
    let mut kv = KvSettings::global(cfg.kv_cache_type.as_deref(), cfg.flash_attention.as_deref())?;
    if let Some(t) = &a.kv_cache_type {
        kv.cache_type = KvCacheType::parse(t)?;
    }
    if let Some(f) = &a.flash_attention {
        kv.flash_attention = FlashAttention::parse(f)?;
    }
    Ok(kv)
}

/// The environment variables read later (per request, per load) whose value cannot be
/// used: refused at startup with the variable's name, rather than replaced by the default
/// without a word (a typo in `CORRAL_MODELS_READONLY` left the store writable).
fn check_environment() -> Result<(), ConfigError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let bad =
        |name: &str, v: &str, what: &str| ConfigError::Setting(format!("{name}={v:?}: {what}"));
    if let Some(v) = var("CORRAL_READ_TIMEOUT")
        && !v.trim().parse::<u64>().is_ok_and(|s| s > 0)
    {
        return Err(bad("CORRAL_READ_TIMEOUT", &v, "give a whole number of seconds above 0"));
    }
    if let Some(v) = var("CORRAL_RELOAD_WAIT")
        && !v.trim().parse::<f64>().is_ok_and(|s| s.is_finite() && (0.0..1e9).contains(&s))
    {
        return Err(bad("CORRAL_RELOAD_WAIT", &v, "give a number of seconds, 0 or more"));
    }
    if let Some(v) = var(corral_registry::oci::MAX_BLOB_SIZE_ENV)
        && corral_registry::oci::parse_size(&v).is_none()
    {
        return Err(bad(
            corral_registry::oci::MAX_BLOB_SIZE_ENV,
            &v,
            "give a size in bytes or with K, M, G or T (e.g. 300G)",
        ));
    }
    if let Some(v) = var("CORRAL_TEMPLATE_TIMEOUT")
        && !humantime::parse_duration(v.trim()).is_ok_and(|d| !d.is_zero())
    {
        return Err(bad("CORRAL_TEMPLATE_TIMEOUT", &v, "give a duration such as 10s or 500ms"));
    }
    if let Some(v) = var("CORRAL_TEMPLATE_MEMORY")
        && !v.trim().parse::<u64>().is_ok_and(|m| m > 0)
    {
        return Err(bad("CORRAL_TEMPLATE_MEMORY", &v, "give a whole number of MiB above 0"));
    }
    for name in ["CORRAL_MODELS_READONLY", "CORRAL_NO_REMOTE"] {
        if let Some(v) = var(name)
            && corral_host::models::switch_value(&v).is_none()
        {
            return Err(bad(name, &v, "give 1, true, yes or on (or 0, false, no, off)"));
        }
    }
    Ok(())
}

/// The listening address from a flag, `CORRAL_HOST` or the config: `HOST:PORT`, `HOST`
/// (port 11434), `:PORT` (loopback), with or without `http://` (the form the client
/// commands take from the same variable).
fn listen_address(given: Option<String>) -> Result<String, ConfigError> {
    let raw = given.unwrap_or_default();
    if raw.trim().trim_end_matches('/').is_empty() {
        return Ok("127.0.0.1:11434".into());
    }
    let refuse =
        |what: &str| Err(ConfigError::Setting(format!("cannot listen on {raw:?}: {what}")));
    // The one reading of the address, the client's: the same forms on both sides.
    let url = match corral_host::client::parse_address(&raw) {
        Ok(u) => u,
        Err(why) => return refuse(&why),
    };
    let Some(authority) = url.strip_prefix("http://") else {
        return refuse("serve speaks plain HTTP: give HOST:PORT or http://HOST:PORT");
    };
    if authority.contains('/') {
        return refuse("give HOST:PORT, without a path");
    }
    Ok(authority.to_string())
}

/// The listening address when it comes from Ollama's `OLLAMA_HOST` (neither `--host`,
/// `CORRAL_HOST` nor the config sets one): read as Ollama reads it, but only its port is
/// taken unless it names this machine's loopback
/// ([`corral_host::client::ollama_host_listen_address`]): a leftover
/// `OLLAMA_HOST=0.0.0.0`, which Ollama's FAQ has people set, must not put a server without
/// API keys on the network, and a client-style value (`https://server`) must not stop
/// `serve`. One warning says so.
fn ollama_listen_address(value: &str) -> Result<String, ConfigError> {
    let (address, moved) =
        corral_host::client::ollama_host_listen_address(value).map_err(|why| {
            ConfigError::Setting(format!("cannot listen on {value:?} (from OLLAMA_HOST): {why}"))
        })?;
    if moved {
        tracing::warn!(
            "OLLAMA_HOST={:?} is not an address on this machine's loopback: corral serve \
             takes only a port from Ollama's OLLAMA_HOST and listens on {address}, which other \
             machines cannot reach. To listen on the network, set CORRAL_HOST (e.g. \
             CORRAL_HOST=0.0.0.0:11434) and an API key (CORRAL_API_KEYS or --api-key-file)",
            value.trim()
        );
    }
    Ok(address)
}

/// Compute threads: 0 (the engine's choice) or at most four per logical CPU (ggml's and
/// the pure-Rust engine's limit is 512 in any case); more only thrash the machine.
fn check_threads(threads: u32) -> Result<u32, ConfigError> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32;
    let max = (4 * cpus).min(512);
    if threads > max {
        return Err(ConfigError::Setting(format!(
            "--threads {threads}: this machine has {cpus} logical CPUs; give at most {max} \
             (0 lets the engine choose)"
        )));
    }
    Ok(threads)
}

pub(crate) fn serve(global: &GlobalOptions, a: ServeArgs) -> Result<()> {
    check_environment()?;
    let rt = Runtime::with_isolation(global, a.isolation.as_deref(), Isolation::Process)?;
    // Say which backend serves GGUF models; models of other formats choose their own
    // backend on first use.
    let selector = rt.selector(a.backend.as_deref(), Some("gguf"));
    // The catalog keeps the plugin it opens here: the scheduler reuses it, so the
    // plugin is initialised once.
    match rt.catalog.choose(&selector) {
        Ok(choice) => {
            if let Some(r) = choice.reports.iter().find(|r| r.status == Status::Chosen) {
                eprintln!(
                    "corral {}: backend {}:{} for gguf: {}",
                    env!("CARGO_PKG_VERSION"),
                    r.name,
                    r.variant,
                    r.reason
                );
            } else {
                eprintln!("corral {}: no backend for gguf models", env!("CARGO_PKG_VERSION"));
            }
            for r in choice.reports.iter().filter(|r| r.status != Status::Chosen) {
                eprintln!("  skipped {}:{}: {}", r.name, r.variant, r.reason);
            }
        }
        // An unknown --backend fails at once, listing what is installed.
        Err(e) => return Err(e.into()),
    }
    let cfg = &rt.config.server;
    let defaults = Settings::default();
    let keep_alive = match a.keep_alive.as_deref().or(cfg.keep_alive.as_deref()) {
        Some(s) => parse_duration(s).with_context(|| {
            format!("invalid keep-alive {s:?}: use a duration such as 5m, 30s, 0 or -1")
        })?,
        None => defaults.keep_alive,
    };
    let settings = Settings {
        keep_alive,
        max_loaded_models: a
            .max_loaded_models
            .or(cfg.max_loaded_models)
            .unwrap_or(defaults.max_loaded_models)
            .max(1),
        num_parallel: match a.num_parallel.or(cfg.num_parallel.map(|n| n as u32)) {
            // Ollama's OLLAMA_NUM_PARALLEL=0 is its default too.
            None | Some(0) => defaults.num_parallel,
            Some(n @ 1..=MAX_NUM_PARALLEL) => n,
            Some(n) => {
                return Err(ConfigError::Setting(format!(
                    "--num-parallel {n}: at most {MAX_NUM_PARALLEL} sequences per model \
                     (llama.cpp's limit)"
                ))
                .into());
            }
        },
        max_queue: a.max_queue.or(cfg.max_queue).unwrap_or(defaults.max_queue),
        num_ctx: a.num_ctx.or(cfg.num_ctx),
        threads: check_threads(a.threads.or(cfg.threads).unwrap_or(0))?,
        backend: a.backend.clone(),
        allow_model_paths: model_paths(&a.allow_model_paths, &cfg.allow_model_paths)?,
        allow_insecure_registries: a.allow_insecure_registries
            || cfg.allow_insecure_registries.unwrap_or(false),
        kv: kv_settings(&a, cfg)?,
        speculation: SpecSettings::parse(
            a.speculative.as_deref().or(cfg.speculative.as_deref()),
            a.draft_max.or(cfg.draft_max),
        )
        .map_err(|e| anyhow::anyhow!("invalid speculative decoding setting: {e}"))?,
        rpc: corral_host::rpc::RemoteDevices::from_settings(&a.rpc, &rt.config),
    };
    settings.rpc.check().map_err(ConfigError::Setting)?;
    if !settings.rpc.is_empty() {
        eprintln!("  RPC workers: {}", settings.rpc.endpoints.join(", "));
    }
    let mut origins = a.origins.clone();
    origins.extend(cfg.origins.iter().cloned());
    origins.retain(|o| !o.trim().is_empty());
    // `--host`/`CORRAL_HOST`, the config, then Ollama's `OLLAMA_HOST`: the order the
    // client commands read them in (`client::host_setting`), so they find this server.
    let blank = |h: &String| h.trim().is_empty();
    let given = a.host.filter(|h| !blank(h)).map(|h| (h, "--host / CORRAL_HOST"));
    let given = given.or_else(|| corral_host::client::host_setting(cfg.host.as_deref()));
    let host = match given {
        Some((value, corral_host::client::OLLAMA_HOST)) => ollama_listen_address(&value)?,
        other => listen_address(other.map(|(v, _)| v))?,
    };
    let opts = ServeOptions {
        host,
        settings,
        origins,
        models: a.models,
        shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace),
        api_keys: api_keys(a.api_key_file.as_deref(), cfg)?,
    };
    serve_blocking(rt, opts)
}

/// The API keys from `CORRAL_API_KEYS`, the key file (flag, else config) and the
/// config's list. A key file that cannot be read is an error, not an open server.
fn api_keys(flag_file: Option<&std::path::Path>, cfg: &ServerConfig) -> Result<ApiKeys> {
    // An empty CORRAL_API_KEYS is unset; one that names only blanks (`,`, `" "`), or a
    // config list of blanks, meant to lock the server and must not leave it open.
    let env = std::env::var("CORRAL_API_KEYS").ok().filter(|v| !v.is_empty());
    let mut keys: Vec<String> = env.iter().flat_map(|v| v.split(',')).map(str::to_string).collect();
    keys.extend(cfg.api_keys.iter().cloned());
    let listed = !keys.is_empty();
    keys.retain(|k| !k.trim().is_empty());
    if listed && keys.is_empty() {
        return Err(ConfigError::Setting(
            "the API keys given (CORRAL_API_KEYS or [server] api_keys) are all blank: give \
             keys separated by commas"
                .into(),
        )
        .into());
    }
    if let Some(file) = flag_file.or(cfg.api_key_file.as_deref()) {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the API key file {}", file.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        // A key file that was meant to lock the server must not leave it open (a secrets
        // mount not populated yet, a template that wrote nothing).
        if keys.len() == before {
            return Err(ConfigError::Setting(format!(
                "the API key file {} holds no key (one key per line; lines starting with # \
                 are comments)",
                file.display()
            ))
            .into());
        }
    }
    Ok(ApiKeys::new(keys.iter().map(String::as_str)))
}

/// The directories whose files requests may name by path: flags, then
/// `CORRAL_ALLOW_MODEL_PATHS`, then the config. Each must be an existing directory.
fn model_paths(flags: &[PathBuf], cfg: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = flags.to_vec();
    if let Ok(env) = std::env::var("CORRAL_ALLOW_MODEL_PATHS") {
        dirs.extend(env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    dirs.extend(cfg.iter().cloned());
    dirs.into_iter()
        .map(|d| {
            d.canonicalize()
                .ok()
                .filter(|c| c.is_dir())
                .with_context(|| format!("--allow-model-paths {}: not a directory", d.display()))
        })
        .collect()
}
