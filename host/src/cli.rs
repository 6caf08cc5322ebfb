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
        if cause.downcast_ref::<corral_host::config::ConfigError>().is_some() {
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
    /// Address to listen on.
    #[arg(long, env = "CORRAL_HOST")]
    pub host: Option<String>,
}

pub fn serve(global: &GlobalOptions, a: ServeArgs) -> Result<()> {
    let rt = Runtime::new(global)?;
    let selector = rt.selector(a.backend.as_deref(), Some("gguf"));
    let (plugin, choice) = rt.choose(&selector)?;
    let report = choice.reports.iter().find(|r| r.status == Status::Chosen);
    eprintln!(
        "corral {}: backend {} ({}){}",
        env!("CARGO_PKG_VERSION"),
        plugin.manifest.id(),
        plugin.backend.describe(),
        report.map(|r| format!(": {}", r.reason)).unwrap_or_default()
    );
    for r in choice.reports.iter().filter(|r| r.status != Status::Chosen) {
        eprintln!("  skipped {}:{}: {}", r.name, r.variant, r.reason);
    }
    let host = a
        .host
        .or_else(|| rt.config.server.host.clone())
        .unwrap_or_else(|| "127.0.0.1:11434".to_string());
    corral_host::server::serve_blocking(rt, plugin, &host)
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
    let results = conformance::run_all(&model, &conformance::Tolerance::default());
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
