//! The model store commands: `corral create`, `list`, `show`, `cp`, `rm`, `pull`, `push`.
//!
//! Each goes through the `corral serve` answering at `CORRAL_HOST` when there is one, so
//! it sees and changes the server's store (the rule of [`corral_host::client`]), and
//! works on the local store in this process otherwise; `--local`, `--models DIR` and
//! `--models-readonly` name the local store and so force it. Both paths print the same
//! tables, sections and status lines.
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
    client::Server,
    config::Config,
    models::{self, ModelsError},
    runtime::GlobalOptions,
};
use corral_registry::{
    ModelName, Store,
    modelfile::{self, Directive, Modelfile},
    oci,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

/// Where the store is (shared by every store command).
#[derive(Args, Debug, Clone)]
pub(crate) struct StoreArgs {
    /// Model store directory (default: $CORRAL_MODELS, the config's `models`, else the
    /// platform's data directory; an Ollama models directory works as is).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Open the store read-only: nothing is written there (also CORRAL_MODELS_READONLY=1).
    #[arg(long)]
    pub models_readonly: bool,
    /// Work on the local store in this process even when a `corral serve` answers at
    /// CORRAL_HOST (`--models` and `--models-readonly` imply it).
    #[arg(long)]
    pub local: bool,
}

impl StoreArgs {
    /// The server to go through: the `corral serve` answering at `CORRAL_HOST`, unless
    /// `--local`, `--models` or `--models-readonly` name the local store.
    fn server(&self, global: &GlobalOptions) -> Result<Option<Server>> {
        if self.local || self.models.is_some() || self.models_readonly {
            return Ok(None);
        }
        super::reachable_server(global)
    }

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
pub(crate) struct CreateArgs {
    /// Name of the model to create (e.g. `mymodel`, `mymodel:v2`).
    pub name: String,
    /// The Modelfile.
    #[arg(short = 'f', long = "file", default_value = "Modelfile", value_name = "FILE")]
    pub file: PathBuf,
    /// Reference a FROM GGUF file where it is instead of copying it into the store.
    #[arg(long)]
    pub link: bool,
    /// Make a remote model: MODEL on REMOTE (a `[remotes.REMOTE]` of the server's
    /// config), e.g. `--remote lab:llama3.1:70b`. A Modelfile, if there is one, may add
    /// SYSTEM, PARAMETER and MESSAGE lines (the same as `FROM MODEL` + `REMOTE REMOTE`).
    #[arg(long, value_name = "REMOTE:MODEL")]
    pub remote: Option<String>,
    /// Quantize the model to this type (Ollama's flag): refused, since corral has no
    /// quantizer; quantize the GGUF file with llama.cpp's `llama-quantize` first.
    #[arg(short = 'q', long, value_name = "TYPE")]
    pub quantize: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral create NAME -f Modelfile [--link]`.
pub(crate) fn create(global: &GlobalOptions, a: &CreateArgs) -> Result<()> {
    // Before anything is read or sent: a flag that would be ignored is refused.
    if let Some(q) = a.quantize.as_deref().filter(|q| !q.trim().is_empty()) {
        return Err(super::Usage(format!(
            "--quantize {q}: corral cannot quantize models (it has no quantizer); quantize \
             the GGUF file with llama.cpp's llama-quantize (e.g. `llama-quantize in.gguf \
             out.gguf {q}`) and create the model FROM the result"
        ))
        .into());
    }
    let name = parse_name(&a.name)?;
    let mf = match &a.remote {
        Some(spec) => remote_modelfile(spec, &a.file)?,
        None => {
            if !a.file.is_file() {
                return Err(ModelsError::NoSuchFile(a.file.display().to_string()))
                    .context("the Modelfile (-f FILE) is missing");
            }
            modelfile::parse_file(&a.file).with_context(|| format!("in {}", a.file.display()))?
        }
    };
    let base = a
        .file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    corral_host::models::check_templates(&mf)?;
    if let Some(server) = a.store.server(global)? {
        return create_remote(&server, &name, a, &mf, &base);
    }
    let store = a.store.open(global)?;
    let opts = modelfile::CreateOptions { link: a.link };
    modelfile::create(&store, &name, &mf, &base, &opts, &mut |s| eprintln!("{s}"))?;
    Ok(())
}

/// The Modelfile of `create --remote REMOTE:MODEL`: `FROM MODEL` and `REMOTE REMOTE`, with
/// the SYSTEM, PARAMETER and MESSAGE lines of `file` when it exists.
fn remote_modelfile(spec: &str, file: &Path) -> Result<Modelfile> {
    let usage = || {
        corral_backend_api::BackendError::invalid(format!(
            "--remote {spec:?}: give REMOTE:MODEL, e.g. lab:llama3.1:70b"
        ))
    };
    let (remote, model) = spec.split_once(':').ok_or_else(usage)?;
    if remote.is_empty() || model.is_empty() {
        return Err(usage().into());
    }
    let mut mf = if file.is_file() {
        modelfile::parse_file(file).with_context(|| format!("in {}", file.display()))?
    } else {
        Modelfile::default()
    };
    if let Some(c) = mf.commands.iter().find(|c| matches!(c.directive, Directive::From(_))) {
        return Err(at(c, "--remote names the model: drop FROM from the Modelfile".into()));
    }
    let cmd = |directive| modelfile::Command { line: 1, column: 1, value_pos: (1, 1), directive };
    mf.commands.insert(0, cmd(Directive::From(model.to_string())));
    mf.commands.push(cmd(Directive::Remote(remote.to_string())));
    Ok(mf)
}

/// A Modelfile error at `cmd`'s value (exit code 2, as the local path's).
fn at(cmd: &modelfile::Command, message: String) -> anyhow::Error {
    corral_registry::Error::Modelfile { line: cmd.value_pos.0, column: cmd.value_pos.1, message }
        .into()
}

/// A `FROM` path: `~/` is the home directory, a relative path is the Modelfile's `base`.
fn resolve_path(base: &Path, v: &str) -> PathBuf {
    if let Some(rest) = v.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(v)
}

/// Refuses, at `cmd`, what a server cannot be given through its API.
fn needs_local(server: &Server, cmd: &modelfile::Command, what: &str) -> anyhow::Error {
    at(
        cmd,
        format!(
            "{what} cannot be sent to the corral serve at {}: use --local to create the model \
             in the local store",
            server.url
        ),
    )
}

/// A GGUF file the Modelfile names, checked as the local path checks it.
fn check_gguf(cmd: &modelfile::Command, path: &Path) -> Result<()> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| at(cmd, format!("{}: {e}", path.display())))?;
    if &magic != b"GGUF" {
        return Err(at(cmd, format!("{} is not a GGUF file (bad magic)", path.display())));
    }
    Ok(())
}

/// What a Modelfile's `FROM` names.
enum FromSource {
    /// A GGUF file on this machine.
    File(PathBuf),
    /// A model in the server's store.
    Model(String),
}

/// `corral create` through a server: the Modelfile is parsed here, a `FROM` file is
/// uploaded as a blob (not sent when the server has it) and the model is created with
/// Ollama's structured `/api/create`.
fn create_remote(
    server: &Server,
    name: &ModelName,
    a: &CreateArgs,
    mf: &Modelfile,
    base: &Path,
) -> Result<()> {
    if a.link {
        return Err(corral_backend_api::BackendError::invalid(format!(
            "--link keeps the FROM file where it is, which the corral serve at {} cannot do \
             through its API: use --local to create the model in the local store",
            server.url
        ))
        .into());
    }
    let mut from = None;
    let mut remote_host = None;
    // With REMOTE, FROM names the model on the remote: no file is read or sent.
    let remote = mf.commands.iter().any(|c| matches!(c.directive, Directive::Remote(_)));
    let (mut template, mut system) = (None, None);
    let parameters = mf.parameters();
    let mut messages = Vec::new();
    let mut licenses = Vec::new();
    let mut adapters = Vec::new();
    for cmd in &mf.commands {
        match &cmd.directive {
            Directive::Remote(r) => remote_host = Some(r.clone()),
            Directive::From(v) if remote => from = Some(FromSource::Model(v.clone())),
            Directive::From(v) => {
                if from.is_some() {
                    return Err(needs_local(server, cmd, "a second FROM"));
                }
                let path = resolve_path(base, v);
                if path.is_dir() {
                    return Err(needs_local(
                        server,
                        cmd,
                        &format!("FROM {v}, a directory (an ONNX model),"),
                    ));
                }
                from = Some(if corral_host::models::looks_like_path(v) || path.is_file() {
                    check_gguf(cmd, &path)?;
                    FromSource::File(path)
                } else {
                    ModelName::parse(v).map_err(|e| {
                        at(
                            cmd,
                            format!("FROM {v:?} is neither an existing file nor a model name: {e}"),
                        )
                    })?;
                    FromSource::Model(v.clone())
                });
            }
            // Uploaded as blobs below, as FROM files are (Ollama's `adapters`).
            Directive::Adapter(v) => {
                let path = resolve_path(base, v);
                check_gguf(cmd, &path)?;
                adapters.push(path);
            }
            Directive::Template(t) => template = Some(t.clone()),
            Directive::System(t) => system = Some(t.clone()),
            Directive::License(t) => licenses.push(Value::String(t.clone())),
            Directive::Message { role, content } => {
                messages.push(json!({"role": role, "content": content}));
            }
            // Taken together below (`Modelfile::parameters`).
            Directive::Parameter { .. } => {}
        }
    }
    let mut body = json!({"model": name.to_string(), "stream": true});
    match from {
        Some(FromSource::File(path)) => {
            eprintln!("transferring model data");
            let digest = server.upload_file(&path)?;
            let file = path
                .file_name()
                .map_or_else(|| "model.gguf".into(), |f| f.to_string_lossy().into_owned());
            body["files"] = json!({ file: digest });
        }
        Some(FromSource::Model(m)) => body["from"] = json!(m),
        // The parser refuses a Modelfile without FROM; the server says so too.
        None => {}
    }
    if !adapters.is_empty() {
        let mut named = serde_json::Map::new();
        for (i, path) in adapters.iter().enumerate() {
            eprintln!("transferring adapter data");
            let digest = server.upload_file(path)?;
            // Names only key the map (in order): one per adapter, as given.
            let file = path
                .file_name()
                .map_or_else(|| "adapter.gguf".into(), |f| f.to_string_lossy().into_owned());
            named.insert(format!("{i:03}-{file}"), json!(digest));
        }
        body["adapters"] = Value::Object(named);
    }
    let optional = [
        ("remote_host", remote_host.map(Value::String)),
        ("template", template.map(Value::String)),
        ("system", system.map(Value::String)),
        ("parameters", (!parameters.is_empty()).then_some(Value::Object(parameters))),
        ("messages", (!messages.is_empty()).then_some(Value::Array(messages))),
        ("license", (!licenses.is_empty()).then_some(Value::Array(licenses))),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    let mut last = String::new();
    let end = server.ndjson("/api/create", &body, None, |line| {
        let status = line.get("status").and_then(Value::as_str).unwrap_or_default();
        if !status.is_empty() && status != last {
            eprintln!("{status}");
            last = status.to_string();
        }
        Ok(())
    })?;
    succeeded(server, "/api/create", end.as_ref())
}

/// A store stream (create, pull, push) ends with `{"status": "success"}`; one that ends
/// without it did not finish.
fn succeeded(server: &Server, path: &str, last: Option<&Value>) -> Result<()> {
    match last {
        Some(v) if v.get("status").and_then(Value::as_str) == Some("success") => Ok(()),
        Some(v) => Err(anyhow::anyhow!(
            "the server at {}'s answer to {path} ended before it was complete (its last line: \
             {})",
            server.url,
            v
        )),
        None => Err(server.unexpected(path, "")),
    }
}

/// `corral list`.
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Only the models whose name starts with this (as `ollama list NAME`; any case).
    pub prefix: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Bytes as Ollama prints them (decimal units): `620 MB`, `4.7 GB`, `12 KB`.
pub(crate) fn human_bytes(b: u64) -> String {
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

/// A time as Ollama's `list` and `ps` print it (its `format.HumanTime`): `2 minutes ago`,
/// `About an hour ago`, `3 days ago`, `4 minutes from now`; `Forever` more than 20 years
/// ahead.
pub(crate) fn human_time(t: SystemTime, now: SystemTime) -> String {
    let (d, suffix) = match now.duration_since(t) {
        Ok(d) => (d, "ago"),
        Err(e) => (e.duration(), "from now"),
    };
    if suffix == "from now" && d.as_secs() / 3600 / 24 / 365 > 20 {
        return "Forever".into();
    }
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
            format!("{} years", d.as_secs() / 3600 / 24 / 365)
        }
    };
    format!("{text} {suffix}")
}

/// One row of `corral list`.
struct ListRow {
    name: String,
    /// The manifest digest's hex.
    digest: String,
    size: u64,
    /// `None` when a server sent a time that does not parse.
    modified: Option<SystemTime>,
    /// The remote of a remote model.
    remote: Option<String>,
}

/// An RFC 3339 time as servers send it (`2024-06-01T10:00:00.123456789Z`, or with an
/// offset such as `-07:00`, which Ollama sends).
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let n = b.len();
    if n > 6 && matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':' {
        let (hours, minutes): (u64, u64) =
            (s.get(n - 5..n - 3)?.parse().ok()?, s.get(n - 2..)?.parse().ok()?);
        let offset = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
        let local = humantime::parse_rfc3339_weak(s.get(..n - 6)?).ok()?;
        // Local time = UTC + offset.
        return if b[n - 6] == b'+' {
            local.checked_sub(offset)
        } else {
            local.checked_add(offset)
        };
    }
    humantime::parse_rfc3339_weak(s).ok()
}

/// The server's models (`GET /api/tags`).
fn remote_models(server: &Server) -> Result<Vec<ListRow>> {
    let v = server.json(Method::GET, "/api/tags", None)?;
    let Some(models) = v.get("models").and_then(Value::as_array) else {
        return Err(server.unexpected("/api/tags", &v.to_string()));
    };
    Ok(models
        .iter()
        .map(|m| {
            let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default();
            let name = if text("name").is_empty() { text("model") } else { text("name") };
            ListRow {
                name: name.to_string(),
                digest: text("digest").trim_start_matches("sha256:").to_string(),
                size: m.get("size").and_then(Value::as_u64).unwrap_or(0),
                modified: parse_time(text("modified_at")),
                remote: Some(text("remote_host").to_string()).filter(|r| !r.is_empty()),
            }
        })
        .collect())
}

/// `corral list`: NAME, ID, SIZE, MODIFIED.
pub(crate) fn list(global: &GlobalOptions, a: &ListArgs) -> Result<()> {
    let mut models = match a.store.server(global)? {
        Some(server) => remote_models(&server)?,
        None => match a.store.open_existing(global)? {
            Some(store) => store
                .list()?
                .into_iter()
                .map(|m| ListRow {
                    remote: store
                        .get(&m.name)
                        .ok()
                        .filter(|r| r.config.is_remote())
                        .map(|r| r.config.remote_host),
                    name: m.name.to_string(),
                    digest: m.digest.hex(),
                    size: m.size,
                    modified: Some(m.modified),
                })
                .collect(),
            None => Vec::new(),
        },
    };
    if let Some(p) = &a.prefix {
        let p = p.to_lowercase();
        models.retain(|m| m.name.to_lowercase().starts_with(&p));
    }
    models.sort_by_key(|m| std::cmp::Reverse(m.modified));
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.digest.chars().take(12).collect(),
                // A remote model's weights are elsewhere, as `ollama list` shows cloud models.
                match &m.remote {
                    Some(r) => format!("- (remote {r})"),
                    None => human_bytes(m.size),
                },
                m.modified.map_or_else(|| "-".to_string(), |t| human_time(t, now)),
            ]
        })
        .collect();
    for line in super::table(&["NAME", "ID", "SIZE", "MODIFIED"], &rows) {
        println!("{line}");
    }
    Ok(())
}

/// `corral show`.
#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
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
pub(crate) fn human_count(n: u64) -> String {
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

/// What `corral show` prints, from the local store or from a server's `/api/show`.
pub(crate) struct ShowData {
    /// The rows of the `Model` section.
    model: Vec<(&'static str, String)>,
    /// The Modelfile (`--modelfile`).
    modelfile: String,
    /// The PARAMETER lines.
    parameters: String,
    /// The TEMPLATE as stored (Go or Jinja), or the file's own or chosen template.
    template: String,
    /// The SYSTEM message.
    pub system: Option<String>,
    licenses: Vec<String>,
}

/// What `/show` in `corral run`'s chat shows of the model it runs: a store model's as
/// `corral show` prints it, a file's from the file.
pub(crate) fn run_show_data(mref: &corral_host::models::ModelRef) -> ShowData {
    if let Some(r) = &mref.resolved {
        return local_show(r);
    }
    let mut model = Vec::new();
    if let Err(e) = gguf_rows(&mref.path, &mut model) {
        tracing::debug!("not a readable GGUF: {e}");
        model.push(("format", mref.format.clone()));
        model.push(("size", human_bytes(mref.size)));
    }
    let (template, origin) = match &mref.template_source {
        Some(t) => (t.clone(), String::new()),
        None => corral_host::prompt::file_template(&mref.path).unwrap_or_default(),
    };
    if !origin.is_empty() {
        model.push(("chat template", origin));
    }
    ShowData {
        model,
        modelfile: format!("FROM {}\n", mref.path.display()),
        parameters: String::new(),
        template,
        system: mref.system.clone(),
        licenses: Vec::new(),
    }
}

/// What `show` prints: the whole (`None`) or one part (`modelfile`, `parameters`,
/// `template`, `system`, `license`; `info` is the whole).
pub(crate) fn render_show(d: &ShowData, part: Option<&str>) -> String {
    match part {
        Some("modelfile") => return d.modelfile.clone(),
        Some("parameters") => return d.parameters.clone(),
        Some("template") => return format!("{}\n", d.template),
        Some("system") => return format!("{}\n", d.system.as_deref().unwrap_or_default()),
        Some("license") => return format!("{}\n", d.licenses.join("\n\n")),
        _ => {}
    }
    let mut out = String::from("  Model\n");
    for (k, v) in &d.model {
        out.push_str(&format!("    {k:<20}{v}\n"));
    }
    if !d.parameters.is_empty() {
        out.push_str("\n  Parameters\n");
        out.push_str(&indent(&d.parameters.replace("PARAMETER ", ""), "    "));
    }
    if let Some(s) = &d.system {
        out.push_str("\n  System\n");
        out.push_str(&indent(s, "    "));
    }
    if !d.licenses.is_empty() {
        out.push_str("\n  License\n");
        for l in &d.licenses {
            // The first lines, as Ollama shows them.
            let head: Vec<&str> = l.trim().lines().take(2).collect();
            out.push_str(&indent(&head.join("\n"), "    "));
        }
    }
    out
}

/// The `Model` rows `show` prints of a GGUF file: architecture, parameters, context and
/// embedding lengths, quantization.
fn gguf_rows(
    path: &Path,
    model: &mut Vec<(&'static str, String)>,
) -> Result<(), corral_gguf::GgufError> {
    let s = corral_gguf::reader::GgufFile::open(path)?.summary();
    model.push(("architecture", s.architecture.unwrap_or_else(|| "unknown".into())));
    model.push(("parameters", human_count(s.parameter_count)));
    if let Some(c) = s.context_length {
        model.push(("context length", c.to_string()));
    }
    if let Some(e) = s.embedding_length {
        model.push(("embedding length", e.to_string()));
    }
    model.push(("quantization", s.quantization));
    Ok(())
}

/// What `show` prints of a store model (the `Model` rows read from its file).
fn local_show(r: &corral_registry::ResolvedModel) -> ShowData {
    let mut model = Vec::new();
    if let Err(e) = gguf_rows(&r.model_path, &mut model) {
        tracing::debug!("not a readable GGUF: {e}");
        model.push(("format", r.config.model_format.clone()));
        model.push(("size", human_bytes(r.model_size)));
    }
    if let Some(l) = &r.link {
        model.push(("linked file", l.path.display().to_string()));
    }
    let (template, origin) = match &r.template {
        Some(t) => (t.clone(), "the Modelfile's TEMPLATE".to_string()),
        None => corral_host::prompt::file_template(&r.model_path).unwrap_or_default(),
    };
    if !origin.is_empty() {
        model.push(("chat template", origin));
    }
    ShowData {
        model,
        modelfile: modelfile::to_modelfile(r),
        parameters: modelfile::parameters_text(r),
        template,
        system: r.system.clone(),
        licenses: r.license.clone(),
    }
}

/// Whether a path is a blob of a store (`sha256-<64 hex>`), not a linked file.
fn is_blob_path(p: &Path) -> bool {
    p.file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("sha256-"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The same from a server's `/api/show` (and `/api/tags` for the size of a model that
/// is not GGUF). TEMPLATE and LICENSEs come from the Modelfile the server renders,
/// which holds them as stored (its `template` field is what the server renders with).
pub(crate) fn remote_show(server: &Server, name: &ModelName, arg: &str) -> Result<ShowData> {
    let v =
        server.json(Method::POST, "/api/show", Some(&json!({"model": arg, "verbose": false})))?;
    if !v.get("modelfile").is_some_and(Value::is_string) {
        return Err(server.unexpected("/api/show", &v.to_string()));
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let info = |k: &str| v.get("model_info").and_then(|i| i.get(k));
    let details = |k: &str| v.get("details").and_then(|d| d.get(k)).and_then(Value::as_str);
    let stored = modelfile::parse(&text("modelfile")).ok();
    let directives = || stored.iter().flat_map(|m| &m.commands).map(|c| &c.directive);
    let mut model = Vec::new();
    let from = directives().find_map(|d| match d {
        Directive::From(p) => Some(PathBuf::from(p)),
        _ => None,
    });
    if details("format") == Some("gguf") {
        let arch = info("general.architecture").and_then(Value::as_str).map(str::to_string);
        let arch_key =
            |k: &str| arch.as_ref().and_then(|a| info(&format!("{a}.{k}"))).and_then(Value::as_u64);
        model.push(("architecture", arch.clone().unwrap_or_else(|| "unknown".into())));
        let count = info("general.parameter_count").and_then(Value::as_u64).unwrap_or(0);
        model.push(("parameters", human_count(count)));
        if let Some(c) = arch_key("context_length") {
            model.push(("context length", c.to_string()));
        }
        if let Some(e) = arch_key("embedding_length") {
            model.push(("embedding length", e.to_string()));
        }
        model.push(("quantization", details("quantization_level").unwrap_or_default().to_string()));
        if let Some(p) = from.filter(|p| !is_blob_path(p)) {
            model.push(("linked file", p.display().to_string()));
        }
    } else {
        let format = details("format").filter(|f| !f.is_empty()).unwrap_or("unknown");
        model.push(("format", format.to_string()));
        let wanted = name.to_string();
        let size = remote_models(server)?
            .into_iter()
            .find(|m| ModelName::parse(&m.name).is_ok_and(|n| n.to_string() == wanted))
            .map_or(0, |m| m.size);
        model.push(("size", human_bytes(size)));
    }
    let (template, licenses) = match &stored {
        Some(_) => (
            directives()
                .filter_map(|d| match d {
                    Directive::Template(t) => Some(t.clone()),
                    _ => None,
                })
                .next_back()
                .unwrap_or_else(|| text("template")),
            directives()
                .filter_map(|d| match d {
                    Directive::License(l) => Some(l.clone()),
                    _ => None,
                })
                .collect(),
        ),
        None => {
            let license = text("license");
            (text("template"), if license.is_empty() { Vec::new() } else { vec![license] })
        }
    };
    let origin = text("template_origin");
    if !origin.is_empty() {
        model.push(("chat template", origin));
    }
    Ok(ShowData {
        model,
        modelfile: text("modelfile"),
        parameters: text("parameters"),
        template,
        system: v.get("system").and_then(Value::as_str).map(str::to_string),
        licenses,
    })
}

/// `corral show NAME [--modelfile|--parameters|--template|--system|--license]`.
pub(crate) fn show(global: &GlobalOptions, a: &ShowArgs) -> Result<()> {
    let d = match a.store.server(global)? {
        Some(server) => remote_show(&server, &parse_name(&a.name)?, &a.name)?,
        None => {
            let store = a.store.open_with(global, &a.name)?;
            local_show(&get(&store, &a.name)?)
        }
    };
    let part = [
        (a.modelfile, "modelfile"),
        (a.parameters, "parameters"),
        (a.template, "template"),
        (a.system, "system"),
        (a.license, "license"),
    ]
    .into_iter()
    .find_map(|(given, part)| given.then_some(part));
    print!("{}", render_show(&d, part));
    Ok(())
}

/// `corral cp`.
#[derive(Args, Debug)]
pub(crate) struct CpArgs {
    /// The model to copy.
    pub source: String,
    /// The new name.
    pub destination: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral cp SRC DST`.
pub(crate) fn cp(global: &GlobalOptions, a: &CpArgs) -> Result<()> {
    let (src, dst) = (parse_name(&a.source)?, parse_name(&a.destination)?);
    if let Some(server) = a.store.server(global)? {
        let body = json!({"source": a.source, "destination": a.destination});
        let v = server.json(Method::POST, "/api/copy", Some(&body))?;
        if !(v.is_null() || v.is_object()) {
            return Err(server.unexpected("/api/copy", &v.to_string()));
        }
        println!("copied '{}' to '{}'", a.source, a.destination);
        return Ok(());
    }
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
pub(crate) struct RmArgs {
    /// The models to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `corral rm NAME...`: each model's manifest, then the blobs no other model uses.
pub(crate) fn rm(global: &GlobalOptions, a: &RmArgs) -> Result<()> {
    let names = a.names.iter().map(|n| parse_name(n)).collect::<Result<Vec<_>>>()?;
    if let Some(server) = a.store.server(global)? {
        for arg in &a.names {
            let v = server.json(Method::DELETE, "/api/delete", Some(&json!({"model": arg})))?;
            if !(v.is_null() || v.is_object()) {
                return Err(server.unexpected("/api/delete", &v.to_string()));
            }
            println!("deleted '{arg}'");
        }
        return Ok(());
    }
    let Some(store) = a.store.open_existing(global)? else {
        return Err(ModelsError::NotInStore(a.names[0].clone()).into());
    };
    for (arg, name) in a.names.iter().zip(&names) {
        match store.remove(name) {
            Ok(_) => println!("deleted '{arg}'"),
            Err(corral_registry::Error::ModelNotFound(_)) => {
                return Err(ModelsError::NotInStore(arg.clone()).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `corral pull` / `corral push`.
#[derive(Args, Debug)]
pub(crate) struct TransferArgs {
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
                let mut bars = self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let pb = bars.entry(d.clone()).or_insert_with(|| {
                    let pb = self.multi.add(ProgressBar::new(total));
                    let style = ProgressStyle::with_template(
                        "{msg}... {percent:>3}% ▕{bar:25}▏ {decimal_bytes}/{decimal_total_bytes}  \
                         {decimal_bytes_per_sec} {eta}",
                    )
                    .map_or_else(|_| ProgressStyle::default_bar(), |s| s.progress_chars("█ "));
                    pb.set_style(style);
                    pb.set_message(p.status.clone());
                    pb
                });
                let done = p.completed.unwrap_or(0).min(total);
                pb.set_position(done);
                if done >= total && !pb.is_finished() {
                    pb.finish();
                    // The next status line (verifying, writing) is new again.
                    self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                    if !self.tty {
                        eprintln!("{}... 100% {}", p.status, human_bytes(total));
                    }
                }
            }
            _ => {
                let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last != p.status {
                    last.clone_from(&p.status);
                    self.line(&p.status);
                }
            }
        }
    }
}

/// `pull`/`push` through a server: its `/api/pull` or `/api/push` progress lines, shown
/// as the local transfer shows its own.
fn transfer_remote(server: &Server, name: &str, insecure: bool, push: bool) -> Result<()> {
    if push {
        // A model the server does not have: its "not found" (exit code 3) before any
        // registry is contacted, as the local path does.
        server.json(Method::POST, "/api/show", Some(&json!({"model": name})))?;
    }
    let ui = ProgressUi::new();
    let body = json!({"model": name, "insecure": insecure, "stream": true});
    let path = if push { "/api/push" } else { "/api/pull" };

    let end = server.ndjson(path, &body, None, |line| {
        if let Ok(p) = serde_json::from_value::<oci::Progress>(line.clone()) {
            ui.update(&p);
        }
        Ok(())
    })?;
    succeeded(server, path, end.as_ref())
}

/// Pulls `name` into the server's store, showing its progress (`run` of a model the
/// server does not have).
pub(crate) fn pull_through(server: &Server, name: &str, insecure: bool) -> Result<()> {
    transfer_remote(server, name, insecure, false)
}

/// Pushes or pulls `name` with the local store, showing progress.
fn transfer_local(store: &Store, name: &ModelName, insecure: bool, push: bool) -> Result<()> {
    let client = oci::Client::new(oci::ClientOptions { insecure, ..Default::default() })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ui = ProgressUi::new();
    let cb = |p: &oci::Progress| ui.update(p);
    if push {
        rt.block_on(client.push(store, name, &cb))?;
    } else {
        rt.block_on(client.pull(store, name, &cb))?;
    }
    Ok(())
}

/// Pulls `name` into the local store (created if needed; the store `CORRAL_MODELS`, the
/// config and `CORRAL_MODELS_READONLY` name), showing progress (`run --local` of a model
/// the store does not have).
pub(crate) fn pull_local(global: &GlobalOptions, name: &ModelName, insecure: bool) -> Result<()> {
    let (config, _) = Config::load(global.config.as_deref())?;
    let store = models::open_store(None, false, &config)?;
    transfer_local(&store, name, insecure, false)
}

fn transfer(global: &GlobalOptions, a: &TransferArgs, push: bool) -> Result<()> {
    let name = parse_name(&a.name)?;
    if let Some(server) = a.store.server(global)? {
        return transfer_remote(&server, &a.name, a.insecure, push);
    }
    let store = if push { a.store.open_with(global, &a.name)? } else { a.store.open(global)? };
    transfer_local(&store, &name, a.insecure, push)
}

/// `corral pull NAME [--insecure]`.
pub(crate) fn pull(global: &GlobalOptions, a: &TransferArgs) -> Result<()> {
    transfer(global, a, false)
}

/// `corral push NAME [--insecure]`.
pub(crate) fn push(global: &GlobalOptions, a: &TransferArgs) -> Result<()> {
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
        assert_eq!(ago(3 * 365 * 86400), "3 years ago");
        let ahead = |s: u64| human_time(now + std::time::Duration::from_secs(s), now);
        assert_eq!(ahead(4 * 60 + 30), "4 minutes from now");
        assert_eq!(ahead(30 * 365 * 86400), "Forever");
    }

    #[test]
    fn server_times_parse_with_and_without_an_offset() {
        let utc = parse_time("2024-06-01T10:00:00.5Z");
        assert!(utc.is_some());
        assert_eq!(parse_time("2024-06-01T03:00:00.5-07:00"), utc);
        assert_eq!(parse_time("2024-06-01T12:30:00.5+02:30"), utc);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn blob_paths_and_from_paths() {
        let hex = "a".repeat(64);
        assert!(is_blob_path(Path::new(&format!("/s/blobs/sha256-{hex}"))));
        assert!(!is_blob_path(Path::new("/models/tiny.gguf")));
        assert!(!is_blob_path(Path::new("/s/blobs/sha256-abc")));
        for p in ["./m.gguf", "/abs", "../up", "~/m", "model.GGUF", "C:\\m"] {
            assert!(corral_host::models::looks_like_path(p), "{p}");
        }
        for n in ["llama3", "ns/model:tag", "registry.example.com/ns/m"] {
            assert!(!corral_host::models::looks_like_path(n), "{n}");
        }
        assert_eq!(resolve_path(Path::new("/base"), "m.gguf"), Path::new("/base/m.gguf"));
    }
}
