//! Subcommand implementations: argument structs and the code that prints.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use corral_backend_api::LoadOptions;
use corral_host::{
    conformance::{self, Outcome},
    engine::Model,
    plugins::{self, PluginReport, Status},
    runtime::{self, GlobalOptions, Runtime},
};

/// Maps an error to an exit code: 2 for bad input the user can fix, 3 for something not
/// found, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use corral_backend_api::ErrorKind;
    for cause in e.chain() {
        if let Some(be) = cause.downcast_ref::<corral_backend_api::BackendError>() {
            return match be.kind {
                ErrorKind::InvalidInput | ErrorKind::Unsupported => 2,
                ErrorKind::NotFound => 3,
                _ => 1,
            };
        }
        if cause.downcast_ref::<plugins::ChoiceError>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<corral_host::config::ConfigError>().is_some()
            || cause.downcast_ref::<corral_generation::context::ContextError>().is_some()
            || cause.downcast_ref::<corral_generation::options::OptionsError>().is_some()
            || cause.downcast_ref::<corral_generation::template::TemplateError>().is_some()
        {
            return 2;
        }
    }
    1
}

/// `corral probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Probe a fake root (a directory tree with /proc and /sys files) instead of this
    /// machine; GPU runtime libraries are not opened then.
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

pub fn probe(a: &ProbeArgs) -> Result<()> {
    let opts = match &a.root {
        Some(root) => corral_probe::ProbeOptions {
            root: root.clone(),
            use_runtime_libraries: false,
            ..corral_probe::ProbeOptions::system()
        },
        None => corral_probe::ProbeOptions::system(),
    };
    let machine = corral_probe::probe(&opts);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&machine)?);
    } else {
        print!("{}", machine.render_text());
    }
    Ok(())
}

/// `corral backends`.
#[derive(Args, Debug)]
pub struct BackendsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Backend to choose (name, variant or name:variant); default auto.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Only consider plugins that run this model format (gguf, onnx).
    #[arg(long)]
    pub format: Option<String>,
}

fn print_reports(reports: &[PluginReport]) {
    if reports.is_empty() {
        println!("no backend plugins found");
        return;
    }
    println!(
        "{:<14} {:<16} {:<8} {:<5} {:<10} {:<11} REASON",
        "NAME", "VARIANT", "VERSION", "ABI", "FORMATS", "STATUS"
    );
    for r in reports {
        let status = match r.status {
            Status::Chosen => "chosen",
            Status::Available => "available",
            Status::Unavailable => "unavailable",
        };
        println!(
            "{:<14} {:<16} {:<8} {:<5} {:<10} {:<11} {}",
            r.name,
            r.variant,
            r.version,
            r.abi,
            r.formats.join(","),
            status,
            r.reason
        );
        if !r.engine.is_empty() {
            println!("{:>16} engine: {}", "", r.engine);
        }
        for d in &r.devices {
            println!("{:>16} device: {d}", "");
        }
    }
}

pub fn backends(global: &GlobalOptions, a: &BackendsArgs) -> Result<()> {
    let rt = Runtime::new(global)?;
    let selector = rt.selector(a.backend.as_deref(), a.format.as_deref());
    let choice = plugins::choose(&rt.discovered, &rt.machine, &selector, &rt.config)?;
    if a.json {
        let out = serde_json::json!({
            "plugin_path": rt.plugin_path,
            "config": rt.config_path,
            "plugins": choice.reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "plugin path: {}",
            rt.plugin_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        );
        print_reports(&choice.reports);
    }
    Ok(())
}

/// `corral serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Backend to use (name, variant or name:variant); default auto.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Address to listen on (default 127.0.0.1:11434; port 0 picks a free one).
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
    /// Seconds running requests get to finish at shutdown before they are cancelled.
    #[arg(long, env = "CORRAL_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
}

pub fn serve(global: &GlobalOptions, a: ServeArgs) -> Result<()> {
    use corral_host::server::{ServeOptions, Settings, util::parse_duration};
    let rt = Runtime::new(global)?;
    // Say which backend serves GGUF models; models of other formats choose their own
    // backend on first use.
    let selector = rt.selector(a.backend.as_deref(), Some("gguf"));
    match plugins::choose(&rt.discovered, &rt.machine, &selector, &rt.config) {
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
        num_parallel: a
            .num_parallel
            .or(cfg.num_parallel.map(|n| n as u32))
            .unwrap_or(defaults.num_parallel)
            .max(1),
        max_queue: a.max_queue.or(cfg.max_queue).unwrap_or(defaults.max_queue),
        num_ctx: a.num_ctx.or(cfg.num_ctx),
        threads: a.threads.or(cfg.threads).unwrap_or(0),
        backend: a.backend.clone(),
    };
    let mut origins = a.origins.clone();
    origins.extend(cfg.origins.iter().cloned());
    origins.retain(|o| !o.trim().is_empty());
    let host = a.host.or_else(|| cfg.host.clone()).unwrap_or_else(|| "127.0.0.1:11434".to_string());
    let host = if host.contains(':') { host } else { format!("{host}:11434") };
    let models = a
        .models
        .or_else(|| {
            std::env::var_os("CORRAL_MODELS")
                .filter(|v| !v.is_empty())
                .and_then(|_| corral_registry::Store::default_root().ok())
        })
        .or_else(|| rt.config.models.clone());
    let opts = ServeOptions {
        host,
        settings,
        origins,
        models,
        shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace),
    };
    corral_host::server::serve_blocking(rt, opts)
}

/// `corral plugin check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The plugin: its manifest, its directory, or its library (with a manifest beside it).
    pub path: PathBuf,
    /// Model to run the checks on (default: a tiny generated GGUF model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn find_manifest(path: &std::path::Path) -> Result<PathBuf> {
    if path.is_dir() {
        let m = path.join(plugins::DIR_MANIFEST_NAME);
        if m.is_file() {
            return Ok(m);
        }
        bail!("{} holds no {}", path.display(), plugins::DIR_MANIFEST_NAME);
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(path.to_path_buf());
    }
    // A library: find a manifest beside it that names it.
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let lib = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    for d in plugins::discover(&[dir.to_path_buf()]) {
        if d.manifest.as_ref().is_ok_and(|m| m.library == lib) {
            return Ok(d.manifest_path);
        }
    }
    let own = dir.join(plugins::DIR_MANIFEST_NAME);
    if own.is_file() {
        return Ok(own);
    }
    bail!(
        "no manifest beside {} names it; a plugin ships a manifest TOML with its library",
        path.display()
    )
}

pub fn plugin_check(global: &GlobalOptions, a: &CheckArgs) -> Result<()> {
    let rt = Runtime::new(global)?;
    let manifest_path = find_manifest(&a.path)?;
    let manifest = corral_host::manifest::Manifest::load(&manifest_path)?;
    if let Err(unmet) = corral_probe::check(&manifest.requires, &rt.machine) {
        eprintln!("warning: {} says it cannot run here: {unmet}; checking anyway", manifest.id());
    }
    let plugin = Arc::new(plugins::load(
        &manifest,
        &manifest_path,
        plugins::merged_options(&manifest, &rt.config),
    )?);
    let _tmp;
    let model_path = match &a.model {
        Some(m) => m.clone(),
        None => {
            let dir = tempfile::tempdir()?;
            let p = dir.path().join("tiny.gguf");
            let opts = corral_gguf::generate::GenerateOptions {
                weight_type: corral_gguf::generate::WeightType::F32,
                ..Default::default()
            };
            corral_gguf::generate::generate_llama(&p, &opts)?;
            _tmp = dir;
            p
        }
    };
    let format = manifest.formats.first().cloned().unwrap_or_else(|| "gguf".into());
    let format = if manifest.formats.iter().any(|f| f == runtime::format_of(&model_path)) {
        runtime::format_of(&model_path).to_string()
    } else {
        format
    };
    let model = Model::load(plugin, &model_path.to_string_lossy(), &format, LoadOptions::default())
        .with_context(|| format!("{} could not load {}", manifest.id(), model_path.display()))?;
    let tolerance = conformance::Tolerance::for_quantization(&model.meta.quantization);
    let results = conformance::run_all(&model, &tolerance);
    let failed = results.iter().filter(|r| r.outcome == Outcome::Fail).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("conformance of {} on {}:", manifest.id(), model_path.display());
        for r in &results {
            let tag = match r.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            println!("  {tag} {:<26} {}", r.name, r.detail);
        }
        let passed = results.iter().filter(|r| r.outcome == Outcome::Pass).count();
        let skipped = results.iter().filter(|r| r.outcome == Outcome::Skip).count();
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    if failed > 0 {
        bail!("{} failed {failed} conformance check(s)", manifest.id());
    }
    Ok(())
}

pub fn generate_model(a: &crate::GenerateArgs) -> Result<()> {
    use corral_gguf::generate::{GenerateOptions, ModelShape, WeightType, generate_llama};
    let shape = ModelShape::parse(&a.shape)?;
    let weight_type = WeightType::parse(&a.weight_type)?;
    let name = format!("corral-random-{}", a.shape.split(':').next().unwrap_or("model"));
    let opts = GenerateOptions { shape, weight_type, seed: a.seed, name, chat_template: None };
    let t = std::time::Instant::now();
    let report = generate_llama(&a.output, &opts)?;
    eprintln!("wrote {} in {:.1}s: {report:?}", a.output.display(), t.elapsed().as_secs_f64());
    Ok(())
}

pub use corral_host::cli_run::{BenchArgs, RunArgs, bench, run};
