//! The model store commands: `corral create`, `list`, `show`, `cp`, `rm`, `pull`, `push`.
//!
//! Errors carry their exit code through [`corral_host::errors`]: 2 for bad input (a bad
//! name, a Modelfile error with line and column, a read-only store), 3 for a model or
//! file that does not exist, 1 otherwise.

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use clap::Args;
use corral_host::{
    config::Config,
    models::{self, ModelsError},
    runtime::GlobalOptions,
};
use corral_registry::{ModelName, Store, modelfile, oci};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where the store is (shared by every store command).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Model store directory (default: $CORRAL_MODELS, the config's `models`, else the
    /// platform's data directory; an Ollama models directory works as is).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Open the store read-only: nothing is written there (also CORRAL_MODELS_READONLY=1).
    #[arg(long)]
    pub models_readonly: bool,
}

impl StoreArgs {
    /// Opens the store, creating it if needed (commands that write).
    fn open(&self, global: &GlobalOptions) -> Result<Store> {
        let (config, _) = Config::load(global.config.as_deref())?;
        Ok(models::open_store(self.models.as_deref(), self.models_readonly, &config)?)
    }

    /// Opens the store if it exists (commands that only read never create one).
    fn open_existing(&self, global: &GlobalOptions) -> Result<Option<Store>> {
        let (config, _) = Config::load(global.config.as_deref())?;
        let root = models::store_root(self.models.as_deref(), &config)?;
        if !root.exists() {
            return Ok(None);
        }
        Ok(Some(models::open_store(Some(&root), self.models_readonly, &config)?))
    }

    /// The existing store, or "not found" for `name` when there is none.
    fn open_with(&self, global: &GlobalOptions, name: &str) -> Result<Store> {
        match self.open_existing(global)? {
            Some(s) => Ok(s),
            None => Err(ModelsError::NotFound(name.to_string()).into()),
        }
    }
}

fn parse_name(s: &str) -> Result<ModelName> {
    Ok(ModelName::parse(s)?)
}

fn get(store: &Store, arg: &str) -> Result<corral_registry::ResolvedModel> {
    let name = parse_name(arg)?;
    match store.get(&name) {
        Ok(r) => Ok(r),
        Err(corral_registry::Error::ModelNotFound(_)) => {
            Err(ModelsError::NotFound(arg.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `corral create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the model to create (e.g. `mymodel`, `mymodel:v2`).
    pub name: String,
    /// The Modelfile.
    #[arg(short = 'f', long = "file", default_value = "Modelfile", value_name = "FILE")]
    pub file: PathBuf,
    /// Reference a FROM GGUF file where it is instead of copying it into the store.
    #[arg(long)]
    pub link: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral create NAME -f Modelfile [--link]`.
pub fn create(global: &GlobalOptions, a: &CreateArgs) -> Result<()> {
    let name = parse_name(&a.name)?;
    if !a.file.is_file() {
        return Err(ModelsError::NoSuchFile(a.file.display().to_string()))
            .context("the Modelfile (-f FILE) is missing");
    }
    let mf = modelfile::parse_file(&a.file).with_context(|| format!("in {}", a.file.display()))?;
    let base = a
        .file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let store = a.store.open(global)?;
    let opts = modelfile::CreateOptions { link: a.link };
    modelfile::create(&store, &name, &mf, &base, &opts, &mut |s| eprintln!("{s}"))?;
    Ok(())
}

/// `corral list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Bytes as Ollama prints them (decimal units): `620 MB`, `4.7 GB`, `12 KB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    for (unit, size) in UNITS {
        if b as f64 >= size {
            let v = b as f64 / size;
            return if v >= 10.0 || v.fract() == 0.0 {
                format!("{} {unit}", v as u64)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

/// A time as Ollama's `list` prints it: `2 minutes ago`, `About an hour ago`, `3 days ago`.
pub fn human_time(t: SystemTime, now: SystemTime) -> String {
    let (d, suffix) = match now.duration_since(t) {
        Ok(d) => (d, "ago"),
        Err(e) => (e.duration(), "from now"),
    };
    let s = d.as_secs();
    let text = if s < 1 {
        "Less than a second".to_string()
    } else if s == 1 {
        "1 second".to_string()
    } else if s < 60 {
        format!("{s} seconds")
    } else if s / 60 == 1 {
        "About a minute".to_string()
    } else if s / 60 < 60 {
        format!("{} minutes", s / 60)
    } else {
        let hours = (d.as_secs_f64() / 3600.0).round() as u64;
        if hours == 1 {
            "About an hour".to_string()
        } else if hours < 48 {
            format!("{hours} hours")
        } else if hours < 24 * 7 * 2 {
            format!("{} days", hours / 24)
        } else if hours < 24 * 30 * 2 {
            format!("{} weeks", hours / 24 / 7)
        } else if hours < 24 * 365 * 2 {
            format!("{} months", hours / 24 / 30)
        } else {
            format!("{} years", hours / 24 / 365)
        }
    };
    format!("{text} {suffix}")
}

/// `corral list`: NAME, ID, SIZE, MODIFIED.
pub fn list(global: &GlobalOptions, a: &ListArgs) -> Result<()> {
    let mut models = match a.store.open_existing(global)? {
        Some(store) => store.list()?,
        None => Vec::new(),
    };
    models.sort_by_key(|m| std::cmp::Reverse(m.modified));
    let now = SystemTime::now();
    let rows: Vec<[String; 4]> = models
        .iter()
        .map(|m| {
            [
                m.name.to_string(),
                m.digest.hex()[..12].to_string(),
                human_bytes(m.size),
                human_time(m.modified, now),
            ]
        })
        .collect();
    let header = ["NAME", "ID", "SIZE", "MODIFIED"].map(String::from);
    let mut widths = [0usize; 4];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}    {:<w1$}    {:<w2$}    {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    Ok(())
}

/// `corral show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The model.
    pub name: String,
    /// Print the model's Modelfile.
    #[arg(long, group = "part")]
    pub modelfile: bool,
    /// Print its PARAMETERs.
    #[arg(long, group = "part")]
    pub parameters: bool,
    /// Print its TEMPLATE (as stored: Go or Jinja).
    #[arg(long, group = "part")]
    pub template: bool,
    /// Print its SYSTEM message.
    #[arg(long, group = "part")]
    pub system: bool,
    /// Print its LICENSE.
    #[arg(long, group = "part")]
    pub license: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// A count as Ollama prints it: `8.0B`, `1.2M`, `25K`.
pub fn human_count(n: u64) -> String {
    for (unit, size) in [("B", 1e9), ("M", 1e6), ("K", 1e3)] {
        if n as f64 >= size {
            let v = n as f64 / size;
            return if v.fract() == 0.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    n.to_string()
}

fn indent(text: &str, by: &str) -> String {
    text.trim_end().lines().map(|l| format!("{by}{l}\n")).collect()
}

/// `corral show NAME [--modelfile|--parameters|--template|--system|--license]`.
pub fn show(global: &GlobalOptions, a: &ShowArgs) -> Result<()> {
    let store = a.store.open_with(global, &a.name)?;
    let r = get(&store, &a.name)?;
    if a.modelfile {
        print!("{}", modelfile::to_modelfile(&r));
        return Ok(());
    }
    if a.parameters {
        print!("{}", modelfile::parameters_text(&r));
        return Ok(());
    }
    if a.template {
        println!("{}", r.template.as_deref().unwrap_or_default());
        return Ok(());
    }
    if a.system {
        println!("{}", r.system.as_deref().unwrap_or_default());
        return Ok(());
    }
    if a.license {
        println!("{}", r.license.join("\n\n"));
        return Ok(());
    }
    let mut out = String::from("  Model\n");
    let mut row = |k: &str, v: String| out.push_str(&format!("    {k:<20}{v}\n"));
    match corral_gguf::reader::GgufFile::open(&r.model_path) {
        Ok(g) => {
            let s = g.summary();
            row("architecture", s.architecture.unwrap_or_else(|| "unknown".into()));
            row("parameters", human_count(s.parameter_count));
            if let Some(c) = s.context_length {
                row("context length", c.to_string());
            }
            if let Some(e) = s.embedding_length {
                row("embedding length", e.to_string());
            }
            row("quantization", s.quantization);
        }
        Err(e) => {
            row("format", r.config.model_format.clone());
            row("size", human_bytes(r.model_size));
            tracing::debug!("not a readable GGUF: {e}");
        }
    }
    if let Some(l) = &r.link {
        row("linked file", l.path.display().to_string());
    }
    if !r.params.is_empty() {
        out.push_str("\n  Parameters\n");
        out.push_str(&indent(&modelfile::parameters_text(&r).replace("PARAMETER ", ""), "    "));
    }
    if let Some(s) = &r.system {
        out.push_str("\n  System\n");
        out.push_str(&indent(s, "    "));
    }
    if !r.license.is_empty() {
        out.push_str("\n  License\n");
        for l in &r.license {
            // The first lines, as Ollama shows them.
            let head: Vec<&str> = l.trim().lines().take(2).collect();
            out.push_str(&indent(&head.join("\n"), "    "));
        }
    }
    print!("{out}");
    Ok(())
}

/// `corral cp`.
#[derive(Args, Debug)]
pub struct CpArgs {
    /// The model to copy.
    pub source: String,
    /// The new name.
    pub destination: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral cp SRC DST`.
pub fn cp(global: &GlobalOptions, a: &CpArgs) -> Result<()> {
    let (src, dst) = (parse_name(&a.source)?, parse_name(&a.destination)?);
    let store = a.store.open_with(global, &a.source)?;
    match store.copy(&src, &dst) {
        Err(corral_registry::Error::ModelNotFound(_)) => {
            return Err(ModelsError::NotFound(a.source.clone()).into());
        }
        r => r?,
    }
    println!("copied '{}' to '{}'", a.source, a.destination);
    Ok(())
}

/// `corral rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// The models to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral rm NAME...`: each model's manifest, then the blobs no other model uses.
pub fn rm(global: &GlobalOptions, a: &RmArgs) -> Result<()> {
    let names = a.names.iter().map(|n| parse_name(n)).collect::<Result<Vec<_>>>()?;
    let store = a.store.open_with(global, &a.names[0])?;
    for (arg, name) in a.names.iter().zip(&names) {
        match store.remove(name) {
            Ok(_) => println!("deleted '{arg}'"),
            Err(corral_registry::Error::ModelNotFound(_)) => {
                return Err(ModelsError::NotFound(arg.clone()).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `corral pull` / `corral push`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// The model (`llama3`, `registry.example.com/ns/model:tag`).
    pub name: String,
    /// Speak plain HTTP to the registry (local registries).
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Progress bars, one per blob, and status lines, as `ollama pull` prints them.
struct ProgressUi {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    last: Mutex<String>,
    tty: bool,
}

impl ProgressUi {
    fn new() -> ProgressUi {
        let tty = std::io::stderr().is_terminal();
        let target =
            if tty { ProgressDrawTarget::stderr_with_hz(10) } else { ProgressDrawTarget::hidden() };
        ProgressUi {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            last: Mutex::new(String::new()),
            tty,
        }
    }

    fn line(&self, s: &str) {
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            eprintln!("{s}");
        }
    }

    fn update(&self, p: &oci::Progress) {
        match (&p.digest, p.total) {
            (Some(d), Some(total)) => {
                let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
                let pb = bars.entry(d.clone()).or_insert_with(|| {
                    let pb = self.multi.add(ProgressBar::new(total));
                    let style = ProgressStyle::with_template(
                        "{msg}... {percent:>3}% ▕{bar:25}▏ {decimal_bytes}/{decimal_total_bytes}  \
                         {decimal_bytes_per_sec} {eta}",
                    )
                    .map(|s| s.progress_chars("█ "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                    pb.set_style(style);
                    pb.set_message(p.status.clone());
                    pb
                });
                let done = p.completed.unwrap_or(0).min(total);
                pb.set_position(done);
                if done >= total && !pb.is_finished() {
                    pb.finish();
                    // The next status line (verifying, writing) is new again.
                    self.last.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    if !self.tty {
                        eprintln!("{}... 100% {}", p.status, human_bytes(total));
                    }
                }
            }
            _ => {
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != p.status {
                    last.clone_from(&p.status);
                    self.line(&p.status);
                }
            }
        }
    }
}

fn transfer(global: &GlobalOptions, a: &TransferArgs, push: bool) -> Result<()> {
    let name = parse_name(&a.name)?;
    let store = if push { a.store.open_with(global, &a.name)? } else { a.store.open(global)? };
    let client =
        oci::Client::new(oci::ClientOptions { insecure: a.insecure, ..Default::default() })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ui = ProgressUi::new();
    let cb = |p: &oci::Progress| ui.update(p);
    if push {
        rt.block_on(client.push(&store, &name, &cb))?;
    } else {
        rt.block_on(client.pull(&store, &name, &cb))?;
    }
    Ok(())
}

/// `corral pull NAME [--insecure]`.
pub fn pull(global: &GlobalOptions, a: &TransferArgs) -> Result<()> {
    transfer(global, a, false)
}

/// `corral push NAME [--insecure]`.
pub fn push(global: &GlobalOptions, a: &TransferArgs) -> Result<()> {
    transfer(global, a, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_like_ollama() {
        assert_eq!(human_bytes(620_000_000), "620 MB");
        assert_eq!(human_bytes(4_700_000_000), "4.7 GB");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_000_000), "2 MB");
        assert_eq!(human_count(8_030_000_000), "8.0B");
        assert_eq!(human_count(1_500_000), "1.5M");
        let now = SystemTime::now();
        let ago = |s: u64| human_time(now - std::time::Duration::from_secs(s), now);
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(30), "30 seconds ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(3600), "About an hour ago");
        assert_eq!(ago(3 * 86400), "3 days ago");
    }
}
