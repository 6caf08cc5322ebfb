//! Model resolution, the one path from a user's model argument to what is loaded, for
//! the CLI and the server alike: a file path or a store name (`llama3`,
//! `127.0.0.1:5000/test/tiny:latest`) becomes a [`ModelRef`]: the weights file, its
//! format (one rule: [`corral_plugin_host::format::sniff`]), and the model's defaults
//! (TEMPLATE translated to Jinja, SYSTEM, PARAMETERs, MESSAGEs). The server resolves a
//! name only when it loads the model; a loaded model keeps its `ModelRef`.
//!
//! The store lives at (first that is set) the `--models DIR` flag, `$CORRAL_MODELS`, the
//! config's `models = "..."`, or [`Store::default_root`]. `CORRAL_MODELS_READONLY=1` (or
//! `--models-readonly`) opens it read-only, so an existing `~/.ollama/models` can be used
//! without anything being written there.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use corral_plugin_host::format::sniff;
use corral_registry::{ModelName, Store, StoreOptions};
use serde_json::{Map, Value};

use crate::{config::Config, errors::ErrorClass, runtime::GlobalOptions};

/// The environment variable that opens the store read-only (`1`, `true`, `yes`).
pub const READONLY_ENV: &str = "CORRAL_MODELS_READONLY";

/// A model that could not be resolved or a store that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// Neither a file nor a model in the store.
    #[error("model {0:?} not found, try pulling it first")]
    NotFound(String),
    /// A model `rm` (or another command that only touches what is there) did not find:
    /// no hint to pull it, which would be the wrong advice.
    #[error("model {0:?} not found")]
    NotInStore(String),
    /// A path-like argument that names no file.
    #[error("model file {0} not found: it does not exist")]
    NoSuchFile(String),
    /// A path that names something other than a file or a directory (a named pipe, a
    /// device, a socket): reading one could block forever or never end.
    #[error("model file {0} is not a regular file (a pipe, a device or a socket)")]
    NotAFile(String),
    /// A path from the network that the server does not serve.
    #[error(
        "model {0:?} is a file path, and this server takes model names only (start it with --allow-model-paths DIR to serve files under DIR)"
    )]
    PathNotAllowed(String),
    /// A relative path from the network (`./m.gguf`, `../x`): relative to nothing the
    /// client knows, so never resolved.
    #[error(
        "model {0:?} is a relative file path; over the network a model file is named by its absolute path, under a directory the server allows with --allow-model-paths"
    )]
    RelativePath(String),
    /// Not a valid model name.
    #[error("{0}")]
    InvalidName(#[source] corral_registry::Error),
    /// The store failed (broken manifest, missing blob, I/O, ...).
    #[error("{0}")]
    Store(#[source] corral_registry::Error),
}

impl ModelsError {
    /// What kind of failure this is (see [`crate::errors`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            ModelsError::NotFound(_) | ModelsError::NotInStore(_) | ModelsError::NoSuchFile(_) => {
                ErrorClass::NotFound
            }
            ModelsError::InvalidName(_) | ModelsError::NotAFile(_) => ErrorClass::BadInput,
            ModelsError::PathNotAllowed(_) | ModelsError::RelativePath(_) => ErrorClass::Forbidden,
            ModelsError::Store(e) => ErrorClass::of_registry(e),
        }
    }
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

impl ModelRef {
    /// The model's LoRA adapters (Modelfile `ADAPTER`), in the order given.
    pub fn adapters(&self) -> &[PathBuf] {
        self.resolved.as_ref().map_or(&[], |r| r.adapters.as_slice())
    }

    /// The load options that hand the adapters to the engine
    /// ([`corral_backend_api::EXTRA_LORA_ADAPTER`], once per adapter).
    pub fn adapter_options(&self) -> Vec<(String, String)> {
        self.adapters()
            .iter()
            .map(|p| {
                (
                    corral_backend_api::EXTRA_LORA_ADAPTER.to_string(),
                    p.to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    /// Why the model cannot run on an engine whose model declared `caps`: it has
    /// adapters and the engine does not apply them (running it without them would answer
    /// as another model).
    pub fn adapters_refused(
        &self,
        caps: corral_backend_api::Capabilities,
        engine: &str,
    ) -> Option<String> {
        let n = self.adapters().len();
        (n > 0 && !caps.contains(corral_backend_api::Capabilities::LORA_ADAPTERS)).then(|| {
            format!(
                "model {} has {n} LoRA adapter{} (ADAPTER), which the {engine} engine cannot \
                 apply (it declares no lora-adapters capability); load it with a backend \
                 that does, such as llama-cpp",
                self.name,
                if n == 1 { "" } else { "s" }
            )
        })
    }

    /// The bytes of the adapters' files, for the memory estimate.
    pub fn adapter_bytes(&self) -> u64 {
        self.adapters().iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

/// A switch's value: `1`, `true`, `yes`, `on` (true), `0`, `false`, `no`, `off` or empty
/// (false), any case; `None` for anything else.
pub fn switch_value(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `CORRAL_MODELS_READONLY` asks for a read-only store. A value that is neither
/// true nor false (`maybe`, `enabled`) counts as true, with a warning: a typo must not
/// leave a store writable that was meant to be read-only.
pub fn env_read_only() -> bool {
    let Ok(v) = std::env::var(READONLY_ENV) else { return false };
    switch_value(&v).unwrap_or_else(|| {
        tracing::warn!("{READONLY_ENV}={v:?} is neither true nor false: the store is read-only");
        true
    })
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

/// Whether a model argument is meant as a file path rather than a model name; one rule
/// with the Modelfile parser's `FROM` (see there).
pub use corral_registry::modelfile::looks_like_path;

/// Translates a stored TEMPLATE for the Jinja renderer; a template that cannot be used is
/// reported and dropped (the model's own template applies).
pub fn jinja_template(name: &str, source: Option<&str>) -> Option<String> {
    let src = source?;
    match corral_generation::gotemplate::prepare(src) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(model = name, "TEMPLATE not usable ({e}); using the model's own");
            None
        }
    }
}

/// Why a Modelfile TEMPLATE can never render, as Ollama refuses it when the model is
/// created: a Go template Go's parser refuses (a syntax error, an unknown function) or
/// a Jinja template that does not compile. Valid Go the translation does not take
/// (`define`, `js`, ...) passes: the model then renders with its own template, with a
/// warning at load ([`jinja_template`]).
pub fn template_error(source: &str) -> Option<String> {
    if source.trim().is_empty() {
        return None;
    }
    match corral_generation::gotemplate::prepare(source) {
        Err(e) if e.unsupported => None,
        Err(e) => Some(e.to_string()),
        Ok(jinja) => corral_generation::ChatTemplate::new(jinja).err().map(|e| e.to_string()),
    }
}

/// Refuses a Modelfile whose TEMPLATE can never render ([`template_error`]), naming the
/// line, before anything is written.
pub fn check_templates(
    mf: &corral_registry::modelfile::Modelfile,
) -> Result<(), corral_registry::Error> {
    use corral_registry::modelfile::Directive;
    for c in &mf.commands {
        if let Directive::Template(t) = &c.directive
            && let Some(why) = template_error(t)
        {
            return Err(corral_registry::Error::Modelfile {
                line: c.value_pos.0,
                column: c.value_pos.1,
                message: format!("TEMPLATE: {why}"),
            });
        }
    }
    Ok(())
}

/// Which file paths a resolution accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    /// Any path that exists, relative to the working directory or absolute (the CLI:
    /// the person at the keyboard).
    Any,
    /// Over the network: absolute paths of files under these directories only
    /// (`--allow-model-paths`); none when empty, so a model name is a name, never a path.
    Under(Vec<PathBuf>),
}

impl PathRule {
    /// Whether `path` (which exists) may be used under this rule.
    pub fn allows(&self, path: &Path) -> bool {
        match self {
            PathRule::Any => true,
            PathRule::Under(dirs) => {
                path.is_absolute()
                    && path.canonicalize().is_ok_and(|p| {
                        dirs.iter().any(|d| d.canonicalize().is_ok_and(|d| p.starts_with(d)))
                    })
            }
        }
    }
}

/// What a resolution needs besides the argument: the store (if any), which formats the
/// installed plugins declare, and which paths are accepted.
pub struct Resolver<'a> {
    /// The model store, when one exists.
    pub store: Option<&'a Store>,
    /// Whether some plugin declares a format (for files named by extension).
    pub plugin_formats: &'a dyn Fn(&str) -> bool,
    /// Which paths are accepted.
    pub paths: PathRule,
}

impl Resolver<'_> {
    /// Resolves a model argument: an existing file or directory is that file; otherwise
    /// a store name looked up in the store.
    pub fn resolve(&self, arg: &str) -> Result<ModelRef, ModelsError> {
        if arg.trim().is_empty() {
            return Err(ModelsError::InvalidName(corral_registry::Error::InvalidName {
                name: arg.to_string(),
                reason: "the model name is empty".into(),
            }));
        }
        let p = if self.paths == PathRule::Any {
            expand_tilde(Path::new(arg))
        } else {
            PathBuf::from(arg)
        };
        if p.is_absolute() || self.paths == PathRule::Any {
            if p.exists() {
                if !self.paths.allows(&p) {
                    return Err(ModelsError::PathNotAllowed(arg.to_string()));
                }
                return self.resolve_path(arg, &p);
            }
            if self.paths != PathRule::Any && looks_like_path(arg) {
                // Say the same for a path that does not exist: nothing about the server's
                // disk is revealed.
                if !matches!(&self.paths, PathRule::Under(d) if !d.is_empty()) {
                    return Err(ModelsError::PathNotAllowed(arg.to_string()));
                }
            }
        }
        let name = match ModelName::parse(arg) {
            Ok(n) => n,
            Err(_) if looks_like_path(arg) && self.paths != PathRule::Any && !p.is_absolute() => {
                return Err(ModelsError::RelativePath(arg.to_string()));
            }
            Err(_) if looks_like_path(arg) => {
                return Err(ModelsError::NoSuchFile(arg.to_string()));
            }
            Err(e) => return Err(ModelsError::InvalidName(e)),
        };
        let Some(store) = self.store else { return Err(ModelsError::NotFound(arg.to_string())) };
        match store.get(&name) {
            Ok(r) => Ok(self.resolve_stored(r)),
            Err(corral_registry::Error::ModelNotFound(_)) => {
                Err(ModelsError::NotFound(arg.to_string()))
            }
            Err(e) => Err(ModelsError::Store(e)),
        }
    }

    fn resolve_path(&self, arg: &str, path: &Path) -> Result<ModelRef, ModelsError> {
        let meta = std::fs::metadata(path).map_err(|_| ModelsError::NoSuchFile(arg.to_string()))?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(ModelsError::NotAFile(arg.to_string()));
        }
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        Ok(ModelRef {
            name: arg.to_string(),
            format: sniff(&path, None, self.plugin_formats),
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

    fn resolve_stored(&self, r: corral_registry::ResolvedModel) -> ModelRef {
        let name = r.name.to_string();
        ModelRef {
            format: sniff(&r.model_path, Some(r.config.model_format.as_str()), self.plugin_formats),
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
}

/// The key under which a model argument is loaded: a store name in its canonical form,
/// in lower case (`tiny`, `tiny:latest` and `Tiny` are one model, as the store and Ollama
/// compare names), a path as given. Needs no I/O.
pub fn load_key(arg: &str) -> String {
    match ModelName::parse(arg) {
        Ok(n) if !Path::new(arg).is_absolute() => n.to_string().to_ascii_lowercase(),
        _ => arg.to_string(),
    }
}

/// Opens the store for resolving names without creating it: a store that does not
/// exist (or cannot be opened) holds no models.
pub fn existing_store(config: &Config) -> Result<Option<Store>, ModelsError> {
    let root = store_root(None, config)?;
    if !root.is_dir() {
        return Ok(None);
    }
    Ok(Store::open(root, StoreOptions { read_only: env_read_only() })
        .map_err(|e| tracing::debug!("model store: {e}"))
        .ok())
}

/// Resolves a model argument for a command: files directly; names in the store named by
/// the config (`--config`), `$CORRAL_MODELS` and `CORRAL_MODELS_READONLY`; formats
/// declared by `catalog`'s plugins.
pub fn resolve_for(
    global: &GlobalOptions,
    catalog: Option<&corral_plugin_host::PluginCatalog>,
    arg: &str,
) -> anyhow::Result<ModelRef> {
    let (config, _) = Config::load(global.config.as_deref())?;
    let store = if ModelName::parse(arg).is_ok() { existing_store(&config)? } else { None };
    let declares = |f: &str| catalog.is_some_and(|c| c.declares_format(f));
    let resolver =
        Resolver { store: store.as_ref(), plugin_formats: &declares, paths: PathRule::Any };
    Ok(resolver.resolve(arg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ollama refuses a TEMPLATE its parser refuses when the model is created; corral
    /// did not, and the model fell back to its own template at every load.
    #[test]
    fn templates_that_can_never_render_are_refused_and_untranslatable_go_passes() {
        for bad in [
            "{{ if .Prompt }}unclosed",
            "{{ .Prompt ",
            "{{ frobnicate .Prompt }}",
            "{{ \"unterminated }}",
            "{% if messages %}no end",
        ] {
            assert!(template_error(bad).is_some(), "{bad}");
        }
        for good in [
            "",
            "{{ .System }} {{ .Prompt }}",
            "{{ define \"x\" }}x{{ end }}{{ .Prompt }}",
            "{{ js .Prompt }}",
            "{% for m in messages %}{{ m.content }}{% endfor %}",
        ] {
            assert_eq!(template_error(good), None, "{good}");
        }
        let mf =
            corral_registry::modelfile::parse("FROM x\nTEMPLATE \"{{ if .Prompt }}\"\n").unwrap();
        let e = check_templates(&mf).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("TEMPLATE"), "{e}");
    }

    #[test]
    fn load_keys_ignore_case_and_the_default_tag() {
        assert_eq!(load_key("Tiny"), load_key("tiny:latest"));
        assert_eq!(load_key("Team/Tiny:Q4"), "team/tiny:q4");
        assert_eq!(load_key("/Models/M.gguf"), "/Models/M.gguf");
    }

    #[test]
    fn files_names_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF\x03\0\0\0").unwrap();
        let none = |_: &str| false;
        let resolve = |arg: &str, store: Option<&Store>| {
            Resolver { store, plugin_formats: &none, paths: PathRule::Any }.resolve(arg)
        };
        let r = resolve(f.to_str().unwrap(), None).unwrap();
        assert_eq!(r.format, "gguf");
        assert!(r.template.is_none());

        let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
        let e = resolve("nope", Some(&store)).unwrap_err();
        assert_eq!(e.to_string(), "model \"nope\" not found, try pulling it first");
        assert_eq!(e.class().exit_code(), 3);
        assert_eq!(e.class().http_status(), 404);
        let e = resolve("a/b/c/d", Some(&store)).unwrap_err();
        assert_eq!(e.class().exit_code(), 2, "{e}");
        let e = resolve("./missing.gguf", Some(&store)).unwrap_err();
        assert_eq!(e.class().exit_code(), 3, "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        // Over the network a relative path is refused as one, existing or not (it was
        // "does not exist" for a file that does, relative to the server's directory).
        let allowed = PathRule::Under(vec![dir.path().to_path_buf()]);
        for arg in ["./m.gguf", "../../../../etc/passwd", "./missing.gguf"] {
            let e = Resolver { store: Some(&store), plugin_formats: &none, paths: allowed.clone() }
                .resolve(arg)
                .unwrap_err();
            assert_eq!(e.class().http_status(), 403, "{arg}: {e}");
            assert!(e.to_string().contains("relative file path"), "{arg}: {e}");
        }
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
        let none = |_: &str| false;
        let r =
            Resolver { store: Some(&store), plugin_formats: &none, paths: PathRule::Under(vec![]) }
                .resolve("tiny")
                .unwrap();
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
