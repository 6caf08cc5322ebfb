//! `corral probe`, `backends`, `plugin check` and `model generate`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use corral_host::runtime::{GlobalOptions, Runtime};
use corral_plugin_host::{
    Isolation, PluginReport, Status,
    conformance::{self, Outcome},
};

/// `corral probe`.
#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Probe a fake root (a directory tree with /proc and /sys files) instead of this
    /// machine; GPU runtime libraries are not opened then.
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
    /// RPC workers to ask what they lend (`host:port`, comma-separated); also
    /// `CORRAL_RPC` and the config's `[backends.llama-cpp] rpc`.
    #[arg(long, env = "CORRAL_RPC", value_name = "HOST:PORT", value_delimiter = ',')]
    pub rpc: Vec<String>,
}

/// The RPC workers the settings name, asked what they lend.
fn rpc_workers(global: &GlobalOptions, flag: &[String]) -> Vec<corral_host::rpc::WorkerReport> {
    let config = corral_host::config::Config::load(global.config.as_deref())
        .map(|(c, _)| c)
        .unwrap_or_default();
    let remote = corral_host::rpc::RemoteDevices::from_settings(flag, &config);
    corral_host::rpc::probe_workers(&remote.endpoints)
}

pub(crate) fn probe(global: &GlobalOptions, a: &ProbeArgs) -> Result<()> {
    let opts = match &a.root {
        Some(root) => corral_probe::ProbeOptions {
            root: root.clone(),
            use_runtime_libraries: false,
            ..corral_probe::ProbeOptions::system()
        },
        None => corral_probe::ProbeOptions::system(),
    };
    let machine = corral_probe::probe(&opts);
    let workers = rpc_workers(global, &a.rpc);
    if a.json {
        let mut v = serde_json::to_value(&machine)?;
        if !workers.is_empty() {
            v["rpc_workers"] = serde_json::to_value(&workers)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", machine.render_text());
        if !workers.is_empty() {
            print!("{}", corral_host::rpc::render_workers(&workers));
        }
    }
    Ok(())
}

/// `corral backends`.
#[derive(Args, Debug)]
pub(crate) struct BackendsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Backend to choose (name, variant or name:variant); default auto.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Only consider plugins that run this model format (gguf, onnx).
    #[arg(long)]
    pub format: Option<String>,
    /// Open every plugin that could run here (in a worker process, as `corral serve`
    /// would) and report those that fail to load as unavailable, with the reason.
    #[arg(long)]
    pub check: bool,
    /// Where engines run (as for `corral serve`): `process` (default) or `in-process`.
    #[arg(long, env = "CORRAL_ISOLATION", value_name = "MODE")]
    pub isolation: Option<String>,
    /// RPC workers whose devices models may use (`host:port`, comma-separated): listed
    /// with what they lend; also `CORRAL_RPC` and the config's `[backends.llama-cpp] rpc`.
    #[arg(long, env = "CORRAL_RPC", value_name = "HOST:PORT", value_delimiter = ',')]
    pub rpc: Vec<String>,
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
        if r.status != Status::Unavailable && !r.isolation.is_empty() {
            println!("{:>16} isolation: {}", "", r.isolation);
        }
        for d in &r.devices {
            println!("{:>16} device: {d}", "");
        }
    }
}

pub(crate) fn backends(global: &GlobalOptions, a: &BackendsArgs) -> Result<()> {
    let rt = Runtime::with_isolation(global, a.isolation.as_deref(), Isolation::Process)?;
    let selector = rt.selector(a.backend.as_deref(), a.format.as_deref());
    let mut choice =
        if a.check { rt.catalog.check_all(&selector)? } else { rt.catalog.choose(&selector)? };
    // Every plugin listed as available has had its library opened in a worker process.
    rt.catalog.verify(&mut choice);
    let warnings = corral_plugin_host::misnamed_manifests(&rt.catalog.search_path);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let remote = corral_host::rpc::RemoteDevices::from_settings(&a.rpc, &rt.config);
    let workers = corral_host::rpc::probe_workers(&remote.endpoints);
    if a.json {
        let out = serde_json::json!({
            "plugin_path": rt.catalog.search_path,
            "config": rt.config_path,
            "plugins": choice.reports,
            "warnings": warnings,
            "rpc_workers": workers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "plugin path: {}",
            rt.catalog
                .search_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        print_reports(&choice.reports);
        if !workers.is_empty() {
            print!("{}", corral_host::rpc::render_workers(&workers));
        }
    }
    Ok(())
}

/// `corral plugin check`.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The plugin: its manifest, its directory, its library (with a manifest beside it),
    /// or the name of one on the plugin path (`my-engine`, `llama-cpp:vulkan`).
    pub path: PathBuf,
    /// Model to run the checks on (default: a tiny generated GGUF model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `corral plugin check`: the conformance suite on one plugin, in an engine worker
/// process as `corral serve` runs it (its watchdog `CORRAL_ENGINE_TIMEOUT`), so that a
/// plugin that aborts, segfaults or hangs fails the check that was running; each line
/// is printed as its check ends.
pub(crate) fn plugin_check(global: &GlobalOptions, a: &CheckArgs) -> Result<()> {
    let rt = Runtime::with_isolation(global, Some("process"), Isolation::Process)?;
    let manifest_path = if a.path.exists() {
        conformance::find_manifest(&a.path)?
    } else {
        // Neither a path nor an installed plugin: not found (exit code 3).
        manifest_named(&rt.catalog, &a.path.to_string_lossy())
            .map_err(|e| super::Missing(super::error_line(&e)))?
    };
    let manifest = corral_plugin_host::Manifest::load(&manifest_path)?;
    if let Err(unmet) = corral_probe::check(&manifest.requires, &rt.catalog.machine) {
        eprintln!("warning: {} says it cannot run here: {unmet}; checking anyway", manifest.id());
    }
    let options = corral_plugin_host::choice::merged_options(&manifest, &rt.catalog.options);
    let report = match rt.catalog.worker.clone() {
        Some(worker) => {
            let json = a.json;
            let mut progress = |p: conformance::Progress<'_>| {
                if json {
                    return;
                }
                match p {
                    conformance::Progress::Start { plugin, model } => {
                        println!("{}", conformance::Report::heading(plugin, model));
                    }
                    conformance::Progress::Result(r) => println!("{r}"),
                }
            };
            let report = conformance::check_plugin_isolated(
                &manifest_path,
                a.model.as_deref(),
                options,
                worker,
                &mut progress,
            )?;
            if !json {
                println!("{}", report.summary());
            }
            report
        }
        None => {
            eprintln!("warning: cannot find corral's own executable: checking in this process");
            let report =
                conformance::check_plugin_with(&manifest_path, a.model.as_deref(), Some(options))?;
            if !a.json {
                println!("{report}");
            }
            report
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.results)?);
    }
    let failed = report.count(Outcome::Fail);
    if failed > 0 {
        bail!("{} failed {failed} conformance check(s)", manifest.id());
    }
    Ok(())
}

/// The manifest of the one plugin on the search path that `selector` names (as
/// `--backend` names plugins), for `plugin check NAME`.
fn manifest_named(catalog: &corral_plugin_host::PluginCatalog, selector: &str) -> Result<PathBuf> {
    let named: Vec<_> = catalog
        .discovered
        .iter()
        .filter(|d| d.manifest.as_ref().is_ok_and(|m| m.matches(selector)))
        .collect();
    let ids = || {
        let ids: Vec<String> = named
            .iter()
            .filter_map(|d| d.manifest.as_ref().ok().map(corral_plugin_host::Manifest::id))
            .collect();
        ids.join(", ")
    };
    match named.as_slice() {
        [one] => Ok(one.manifest_path.clone()),
        [] => bail!(
            "{selector} is neither a path nor a plugin on the plugin path ({}); `corral \
             backends` lists the plugins found",
            std::env::join_paths(&catalog.search_path)
                .map_or_else(|_| "?".into(), |p| p.to_string_lossy().into_owned())
        ),
        _ => bail!("{selector} names several plugins ({}); give NAME:VARIANT or a path", ids()),
    }
}

pub(crate) fn generate_model(a: &crate::GenerateArgs) -> Result<()> {
    use corral_gguf::generate::{
        Arch, GenerateOptions, ModelShape, VocabKind, WeightType, generate_model,
    };
    // Argument errors are the user's (exit code 2), in plain words.
    let usage = |flag: &str, e: &dyn std::fmt::Display| super::Usage(format!("{flag}: {e}"));
    let arch = Arch::parse(&a.arch).map_err(|e| usage("--arch", &e))?;
    check_shape_overrides(&a.shape)?;
    let shape = ModelShape::parse(&a.shape)
        .map_err(|e| usage(&format!("--shape {}", a.shape), &without_debug_struct(&e)))?;
    let weight_type = WeightType::parse(&a.weight_type).map_err(|e| usage("--type", &e))?;
    let vocab =
        a.vocab.as_deref().map(VocabKind::parse).transpose().map_err(|e| usage("--vocab", &e))?;
    if a.output.is_dir() {
        return Err(super::Usage(format!(
            "{} is a directory: name the model file to write",
            a.output.display()
        ))
        .into());
    }
    let parent = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    if !parent.is_dir() {
        return Err(super::Missing(format!(
            "the directory {} (of {}) does not exist",
            parent.display(),
            a.output.display()
        ))
        .into());
    }
    // The size before a byte is written: a shape past the disk's free space is refused.
    let estimate = estimated_size(&shape, weight_type.ggml_type());
    if let Some(free) = free_space(parent)
        && estimate > free as f64
    {
        return Err(super::Usage(format!(
            "--shape {} --type {} makes a model of about {}, more than the {} free in {}",
            a.shape,
            a.weight_type,
            super::models::human_bytes(estimate.min(u64::MAX as f64) as u64),
            super::models::human_bytes(free),
            parent.display()
        ))
        .into());
    }
    let preset = a.shape.split(':').next().unwrap_or("model");
    let name = if arch == Arch::Llama {
        format!("corral-random-{preset}")
    } else {
        format!("corral-random-{arch}-{preset}")
    };
    let opts = GenerateOptions {
        arch,
        shape,
        weight_type,
        seed: a.seed,
        name,
        vocab,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    // The generator writes `<output>.partial` and renames it at the end; a failure
    // leaves no part of it behind.
    let mut partial = a.output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let had_partial = partial.exists();
    let report = match generate_model(&a.output, &opts) {
        Ok(r) => r,
        Err(e) => {
            if !had_partial {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(match e {
                corral_gguf::GgufError::Generate(m) => {
                    super::Usage(without_debug_struct(&m)).into()
                }
                other => other.into(),
            });
        }
    };
    eprintln!("wrote {report} ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// The overrides of `--shape PRESET:key=value,...` checked one by one, so an error names
/// the field: a value that is not a whole number, one past the largest (2^32 - 1), a
/// dimension of 0.
fn check_shape_overrides(spec: &str) -> Result<()> {
    let Some((_, overrides)) = spec.split_once(':') else { return Ok(()) };
    for kv in overrides.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(super::Usage(format!("--shape: {kv:?} is not key=value")).into());
        };
        let (k, v) = (k.trim(), v.trim());
        let bad = |why: String| -> Result<()> {
            Err(super::Usage(format!("--shape: {k}={v}: {why}")).into())
        };
        match v.parse::<u32>() {
            Ok(0) if !matches!(k, "swa" | "sliding_window" | "n_swa") => {
                return bad(format!("{k} must be at least 1"));
            }
            Ok(_) => {}
            Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                return bad(format!("{k} is too large (at most {})", u32::MAX));
            }
            Err(_) => return bad(format!("{k} must be a whole number")),
        }
    }
    Ok(())
}

/// A generator message without the `ModelShape { .. }` it quotes (the user wrote a
/// preset and overrides, not that struct).
fn without_debug_struct(e: &dyn std::fmt::Display) -> String {
    let m = e.to_string();
    match m.find(" ModelShape {").and_then(|s| m[s..].find('}').map(|e| (s, s + e + 1))) {
        Some((start, end)) => format!("{}{}", &m[..start], &m[end..]),
        None => m,
    }
}

/// About how many bytes a model of `shape` takes with weights of type `ty` (f64: an
/// absurd shape does not overflow).
fn estimated_size(shape: &corral_gguf::generate::ModelShape, ty: corral_gguf::GgmlType) -> f64 {
    let f = |n: u32| f64::from(n);
    let (e, v, ff) = (f(shape.n_embd), f(shape.n_vocab), f(shape.n_ff));
    let head = f(shape.n_embd_head.unwrap_or(shape.n_embd / shape.n_head.max(1)));
    let (q, kv) = (f(shape.n_head) * head, f(shape.n_head_kv) * head);
    let block = 2.0 * e + 2.0 * e * q + 2.0 * e * kv + 3.0 * e * ff;
    let params = 2.0 * e * v + e + f(shape.n_layer) * block;
    params * ty.type_size() as f64 / ty.block_size().max(1) as f64
}

/// Bytes free to this user on the filesystem of `dir`; `None` where it cannot be known.
fn free_space(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    (st.f_blocks > 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

/// `corral plugin new`.
#[derive(Args, Debug)]
pub(crate) struct NewArgs {
    /// The plugin's name (lowercase letters, digits and '-'); also the crate's.
    pub name: String,
    /// Where to write the crate (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `corral plugin new NAME [--dir DIR]`.
pub(crate) fn plugin_new(a: &NewArgs) -> Result<()> {
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    let written = super::scaffold::write(&a.name, &dir)?;
    println!("wrote {} files of plugin {} into {}", written.len(), a.name, dir.display());
    println!("next: cd {} && cargo build --release && cargo test", dir.display());
    println!("then: corral plugin install target/release/lib{}.so", a.name.replace('-', "_"));
    Ok(())
}

/// `corral plugin install`.
#[derive(Args, Debug)]
pub(crate) struct InstallArgs {
    /// The built plugin: its library (with its manifest beside it, as the crate's
    /// build.rs writes it), its manifest, or its directory.
    pub path: PathBuf,
}

/// `corral plugin install PATH`: checked in a worker process, then copied into the
/// user's plugin directory.
pub(crate) fn plugin_install(global: &GlobalOptions, a: &InstallArgs) -> Result<()> {
    let rt = Runtime::new(global)?;
    if !a.path.exists() {
        return Err(super::Missing(format!("{} does not exist", a.path.display())).into());
    }
    let manifest_path = conformance::find_manifest(&a.path)?;
    let manifest = corral_plugin_host::Manifest::load(&manifest_path)?;
    let Some(root) = corral_plugin_host::user_plugin_dir() else {
        bail!("HOME is not set: there is no user plugin directory to install into");
    };
    let Some(inspector) = &rt.catalog.inspector else {
        bail!("cannot find corral's own executable to check the plugin in a worker");
    };
    let options = corral_plugin_host::choice::merged_options(&manifest, &rt.catalog.options);
    let done = corral_plugin_host::install::install(&manifest_path, inspector, &options, &root)?;
    if let Some(note) = &done.inspection.abi_note {
        eprintln!("warning: {}: {note}", done.plugin);
    }
    println!(
        "{} {} (ABI {}, {}) into {}",
        if done.replaced { "reinstalled" } else { "installed" },
        done.plugin,
        done.inspection.abi,
        done.inspection.engine.as_deref().unwrap_or("engine not described"),
        done.dir.display()
    );
    if !rt.catalog.search_path.iter().any(|d| d == &root) {
        eprintln!(
            "warning: {} is not on this plugin path (CORRAL_PLUGIN_PATH_ONLY?)",
            root.display()
        );
    }
    Ok(())
}

/// `corral plugin remove`.
#[derive(Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The plugin: its name, `name:variant`, `name-variant` or its directory. A name
    /// or variant that several installed plugins carry removes nothing (a name match
    /// wins over a variant match).
    pub name: String,
}

/// `corral plugin remove NAME`: from the user's plugin directory only.
pub(crate) fn plugin_remove(a: &RemoveArgs) -> Result<()> {
    let Some(root) = corral_plugin_host::user_plugin_dir() else {
        bail!("HOME is not set: there is no user plugin directory");
    };
    use corral_plugin_host::install::InstallError;
    let removed = corral_plugin_host::install::remove(&a.name, &root).map_err(|e| match e {
        InstallError::NotInstalled { .. } => anyhow::Error::from(super::Missing(e.to_string())),
        InstallError::BadName(_) => super::Usage(e.to_string()).into(),
        other => other.into(),
    })?;
    for dir in removed {
        println!("removed {}", dir.display());
    }
    Ok(())
}
