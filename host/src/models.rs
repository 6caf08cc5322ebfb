//! Model resolution shared by the CLI and the server: a user's model argument (a file
//! path or a store name such as `llama3` or `127.0.0.1:5000/test/tiny:latest`) becomes a
//! [`ModelRef`]: the weights file, its format, and the model's defaults (TEMPLATE as
//! Jinja, SYSTEM, PARAMETERs, MESSAGEs).
//!
//! The store lives at (first that is set) the `--models DIR` flag, `$CORRAL_MODELS`, the
//! config's `models = "..."`, or [`Store::default_root`]. `CORRAL_MODELS_READONLY=1` (or
//! `--models-readonly`) opens it read-only, so an existing `~/.ollama/models` can be used
//! without anything being written there.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use corral_registry::{ModelName, Store, StoreOptions};
use serde_json::{Map, Value};

use crate::{config::Config, runtime::GlobalOptions};

/// The environment variable that opens the store read-only (`1`, `true`, `yes`).
pub const READONLY_ENV: &str = "CORRAL_MODELS_READONLY";

/// A model that could not be resolved or a store that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// Neither a file nor a model in the store.
    #[error("model {0:?} not found, try pulling it first")]
    NotFound(String),
    /// A path-like argument that names no file.
    #[error("model file {0} does not exist")]
    NoSuchFile(String),
    /// Not a valid model name.
    #[error("{0}")]
    InvalidName(#[source] corral_registry::Error),
    /// The store failed (broken manifest, missing blob, I/O, ...).
    #[error("{0}")]
    Store(#[source] corral_registry::Error),
}

impl ModelsError {
    /// The exit code of the CLI: 2 bad input, 3 not found, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            ModelsError::NotFound(_) | ModelsError::NoSuchFile(_) => 3,
            ModelsError::InvalidName(_) => 2,
            ModelsError::Store(e) => registry_exit_code(e),
        }
    }

    /// The HTTP status of the API: 404 not found, 400 bad input, 500 other.
    pub fn http_status(&self) -> u16 {
        match self.exit_code() {
            3 => 404,
            2 => 400,
            _ => 500,
        }
    }
}

/// The exit code for a registry error: 2 bad input (name, digest, Modelfile, read-only
/// store), 3 not found (locally or on the registry), 1 other.
pub fn registry_exit_code(e: &corral_registry::Error) -> u8 {
    use corral_registry::Error as E;
    match e {
        E::InvalidName { .. } | E::InvalidDigest { .. } | E::Modelfile { .. } | E::ReadOnly(_) => 2,
        E::ModelNotFound(_) => 3,
        E::Registry { message, .. } if message.contains("model not found") => 3,
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 3,
        _ => 1,
    }
}

/// The exit code an error calls for, when it comes from model resolution or the store.
/// `None` for other errors (the caller's own mapping applies).
pub fn exit_code(e: &anyhow::Error) -> Option<u8> {
    for cause in e.chain() {
        if let Some(m) = cause.downcast_ref::<ModelsError>() {
            return Some(m.exit_code());
        }
        if let Some(r) = cause.downcast_ref::<corral_registry::Error>() {
            return Some(registry_exit_code(r));
        }
    }
    None
}

/// A resolved model: what to load and its defaults.
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// The name as shown (`tiny:latest`), or the path as given.
    pub name: String,
    /// The weights file (or ONNX directory).
    pub path: PathBuf,
    /// `gguf`, `onnx`, or the store config's `model_format` for other formats.
    pub format: String,
    /// The TEMPLATE as Jinja, ready for [`crate::prompt::Templater::with_source`] (a Go
    /// template translated); `None` uses the model file's own template.
    pub template: Option<String>,
    /// The TEMPLATE as stored (Go or Jinja).
    pub template_source: Option<String>,
    /// SYSTEM.
    pub system: Option<String>,
    /// PARAMETERs, for `SamplingOptions::apply_json`.
    pub params: Map<String, Value>,
    /// MESSAGEs: a conversation put before the user's.
    pub messages: Vec<corral_registry::store::Message>,
    /// The manifest digest's hex (empty for files).
    pub digest: String,
    /// Size of the weights in bytes.
    pub size: u64,
    /// Modification time.
    pub modified: SystemTime,
    /// The store model, when it came from the store.
    pub resolved: Option<Box<corral_registry::ResolvedModel>>,
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// Whether `CORRAL_MODELS_READONLY` asks for a read-only store.
pub fn env_read_only() -> bool {
    std::env::var(READONLY_ENV).is_ok_and(|v| truthy(&v))
}

fn expand_tilde(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    p.to_path_buf()
}

/// The store root: `flag`, else `$CORRAL_MODELS`, else the config's `models`, else the
/// platform default.
pub fn store_root(flag: Option<&Path>, config: &Config) -> Result<PathBuf, ModelsError> {
    if let Some(f) = flag {
        return Ok(expand_tilde(f));
    }
    if std::env::var_os("CORRAL_MODELS").is_some_and(|v| !v.is_empty()) {
        return Store::default_root().map_err(ModelsError::Store);
    }
    if let Some(m) = &config.models {
        return Ok(expand_tilde(m));
    }
    Store::default_root().map_err(ModelsError::Store)
}

/// Opens the store (see [`store_root`]); read-only when `read_only` or
/// `CORRAL_MODELS_READONLY` says so.
pub fn open_store(
    flag: Option<&Path>,
    read_only: bool,
    config: &Config,
) -> Result<Store, ModelsError> {
    let root = store_root(flag, config)?;
    let read_only = read_only || env_read_only();
    Store::open(root, StoreOptions { read_only }).map_err(ModelsError::Store)
}

/// Opens the store named by a [`crate::runtime::Runtime`]'s config (and the environment).
pub fn open_store_for(rt: &crate::runtime::Runtime) -> Result<Store, ModelsError> {
    open_store(None, false, &rt.config)
}

/// Whether an argument that is not a valid name was meant as a path.
fn looks_like_path(arg: &str) -> bool {
    arg.starts_with('/')
        || arg.starts_with("./")
        || arg.starts_with("../")
        || arg.starts_with('~')
        || arg.contains('\\')
        || [".gguf", ".onnx", ".bin"].iter().any(|e| arg.to_ascii_lowercase().ends_with(e))
}

/// The format of a weights file: GGUF by its magic, else by path ([`crate::runtime::format_of`]),
/// else the store config's `model_format` when it names another one.
fn sniff_format(path: &Path, declared: Option<&str>) -> String {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == b"GGUF";
    if is_gguf {
        return "gguf".into();
    }
    match declared {
        Some(d) if !d.is_empty() && d != "gguf" => d.to_string(),
        _ => crate::runtime::format_of(path).to_string(),
    }
}

/// Translates a stored TEMPLATE for the Jinja renderer; a template that cannot be used is
/// reported and dropped (the model's own template applies).
pub fn jinja_template(name: &str, source: Option<&str>) -> Option<String> {
    let src = source?;
    match crate::gotemplate::prepare(src) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(model = name, "TEMPLATE not usable ({e}); using the model's own");
            None
        }
    }
}

/// A [`ModelRef`] for a file or directory on disk.
pub fn from_path(arg: &str, path: &Path) -> Result<ModelRef, ModelsError> {
    let meta = std::fs::metadata(path).map_err(|_| ModelsError::NoSuchFile(arg.to_string()))?;
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(ModelRef {
        name: arg.to_string(),
        format: sniff_format(&path, None),
        path,
        template: None,
        template_source: None,
        system: None,
        params: Map::new(),
        messages: Vec::new(),
        digest: String::new(),
        size: meta.len(),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        resolved: None,
    })
}

/// A [`ModelRef`] for a model of the store.
pub fn from_store(r: corral_registry::ResolvedModel) -> ModelRef {
    let name = r.name.to_string();
    ModelRef {
        format: sniff_format(&r.model_path, Some(r.config.model_format.as_str())),
        path: r.model_path.clone(),
        template: jinja_template(&name, r.template.as_deref()),
        template_source: r.template.clone(),
        system: r.system.clone(),
        params: r.params.clone(),
        messages: r.messages.clone(),
        digest: r.manifest_digest.hex(),
        size: r.model_size,
        modified: r.modified,
        name,
        resolved: Some(Box::new(r)),
    }
}

/// Resolves a model argument: an existing file or directory is that file; otherwise a
/// store name looked up in `store`.
pub fn resolve(arg: &str, store: Option<&Store>) -> Result<ModelRef, ModelsError> {
    if arg.trim().is_empty() {
        return Err(ModelsError::InvalidName(corral_registry::Error::InvalidName {
            name: arg.to_string(),
            reason: "the model name is empty".into(),
        }));
    }
    let p = expand_tilde(Path::new(arg));
    if p.exists() {
        return from_path(arg, &p);
    }
    let name = match ModelName::parse(arg) {
        Ok(n) => n,
        Err(_) if looks_like_path(arg) => return Err(ModelsError::NoSuchFile(arg.to_string())),
        Err(e) => return Err(ModelsError::InvalidName(e)),
    };
    let Some(store) = store else { return Err(ModelsError::NotFound(arg.to_string())) };
    match store.get(&name) {
        Ok(r) => Ok(from_store(r)),
        Err(corral_registry::Error::ModelNotFound(_)) => {
            Err(ModelsError::NotFound(arg.to_string()))
        }
        Err(e) => Err(ModelsError::Store(e)),
    }
}

/// Resolves a model argument for a command: files directly; names in the store named by
/// the config (`--config`), `$CORRAL_MODELS` and `CORRAL_MODELS_READONLY`.
pub fn resolve_for(global: &GlobalOptions, arg: &str) -> anyhow::Result<ModelRef> {
    let p = expand_tilde(Path::new(arg));
    if p.exists() {
        return Ok(from_path(arg, &p)?);
    }
    if ModelName::parse(arg).is_err() {
        // Not a name: a missing file or a bad name, without touching the store.
        return Ok(resolve(arg, None)?);
    }
    let (config, _) = Config::load(global.config.as_deref())?;
    // Resolving never creates a store: one that does not exist (or cannot be opened)
    // holds no models.
    let root = store_root(None, &config)?;
    let store = if root.is_dir() {
        Store::open(root, StoreOptions { read_only: env_read_only() })
            .map_err(|e| tracing::debug!("model store: {e}"))
            .ok()
    } else {
        None
    };
    Ok(resolve(arg, store.as_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_names_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF\x03\0\0\0").unwrap();
        let r = resolve(f.to_str().unwrap(), None).unwrap();
        assert_eq!(r.format, "gguf");
        assert!(r.template.is_none());

        let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
        let e = resolve("nope", Some(&store)).unwrap_err();
        assert_eq!(e.to_string(), "model \"nope\" not found, try pulling it first");
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.http_status(), 404);
        let e = resolve("a/b/c/d", Some(&store)).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let e = resolve("./missing.gguf", Some(&store)).unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn store_model_with_go_template_and_defaults() {
        use corral_registry::modelfile;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF\x03\0\0\0rest").unwrap();
        let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
        let mf = modelfile::parse(&format!(
            "FROM {}\nTEMPLATE \"\"\"{{{{ .System }}}}|{{{{ .Prompt }}}}|{{{{ .Response }}}}\"\"\"\nSYSTEM be brief\nPARAMETER temperature 0.25\n",
            f.display()
        ))
        .unwrap();
        let name = ModelName::parse("tiny").unwrap();
        modelfile::create(&store, &name, &mf, dir.path(), &Default::default(), &mut |_| {})
            .unwrap();
        let r = resolve("tiny", Some(&store)).unwrap();
        assert_eq!(r.name, "tiny:latest");
        assert_eq!(r.format, "gguf");
        assert_eq!(r.system.as_deref(), Some("be brief"));
        assert_eq!(r.params["temperature"], serde_json::json!(0.25));
        assert_eq!(r.digest.len(), 64);
        let jinja = r.template.unwrap();
        assert!(jinja.contains("{%"), "{jinja}");
        assert!(r.template_source.unwrap().contains("{{ .Prompt }}"));
    }
}
