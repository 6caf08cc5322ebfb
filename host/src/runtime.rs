//! What every command that needs an engine does first: read the config, probe the
//! machine, find the plugins ([`corral_plugin_host::PluginCatalog`]), and choose one.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use corral_backend_api::{BackendError, ErrorKind, LoadOptions};
use corral_plugin_host::{
    Choice, Isolation, LoadedPlugin, Model, NoBackend, PluginCatalog, Selector,
    worker::WorkerCommand,
};

use crate::config::{Config, ConfigError};

/// The default engine watchdog: a call unanswered this long counts as a hung engine.
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(300);

/// The hidden subcommand of `corral` that runs an engine worker.
pub const WORKER_SUBCOMMAND: &str = "engine-worker";

/// The hidden subcommand of `corral` that opens one plugin library in a worker process
/// and says what it found (`corral_plugin_host::inspect`).
pub const INSPECT_SUBCOMMAND: &str = "plugin-inspect";

/// How long opening (and initialising) one plugin in an inspection worker may take.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Options shared by every command (global CLI flags and their environment variables).
#[derive(Debug, Clone, Default)]
pub struct GlobalOptions {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--plugin-dir DIR`, repeatable.
    pub plugin_dirs: Vec<PathBuf>,
}

/// The config in force and the plugin catalog.
pub struct Runtime {
    /// The config in force.
    pub config: Config,
    /// Where it came from.
    pub config_path: Option<PathBuf>,
    /// The machine's plugins; each is opened at most once per process.
    pub catalog: PluginCatalog,
}

impl Runtime {
    /// Reads the config, probes, discovers plugins.
    pub fn new(global: &GlobalOptions) -> Result<Runtime, ConfigError> {
        let (config, config_path) = Config::load(global.config.as_deref())?;
        let machine = corral_probe::probe(&corral_probe::ProbeOptions::system());
        let env_path = std::env::var("CORRAL_PLUGIN_PATH").ok();
        let search_path = corral_plugin_host::search_path(
            &global.plugin_dirs,
            env_path.as_deref(),
            &config.plugin_dirs,
        );
        let mut catalog = PluginCatalog::new(search_path, machine, config.backends.clone());
        catalog.inspector =
            std::env::current_exe().ok().map(|exe| corral_plugin_host::inspect::Inspector {
                exe,
                args: vec![INSPECT_SUBCOMMAND.into()],
                timeout: INSPECT_TIMEOUT,
            });
        Ok(Runtime { config, config_path, catalog })
    }

    /// [`Runtime::new`] with engines isolated as asked: `flag` (`--isolation`, merged
    /// with `CORRAL_ISOLATION` by clap), else the config's `isolation`, else `default`.
    pub fn with_isolation(
        global: &GlobalOptions,
        flag: Option<&str>,
        default: Isolation,
    ) -> Result<Runtime, ConfigError> {
        let mut rt = Runtime::new(global)?;
        // The value may come from a flag, the environment or the file: the message names
        // the setting, not a file it may not be in.
        let isolation = match flag.or(rt.config.isolation.as_deref()) {
            Some(s) => s.parse::<Isolation>().map_err(ConfigError::Setting)?,
            None => default,
        };
        let timeout = std::env::var("CORRAL_ENGINE_TIMEOUT")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| rt.config.engine_timeout.clone());
        let watchdog = match timeout {
            Some(t) => crate::server::util::parse_duration(&t)
                .flatten()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                ConfigError::Setting(format!(
                    "engine timeout {t:?} (CORRAL_ENGINE_TIMEOUT or engine_timeout): use a \
                         duration such as 300s or 5m"
                ))
            })?,
            None => DEFAULT_ENGINE_TIMEOUT,
        };
        let worker = std::env::current_exe().ok().map(|exe| WorkerCommand {
            exe,
            args: vec![WORKER_SUBCOMMAND.into()],
            watchdog,
        });
        if worker.is_none() && isolation == Isolation::Process {
            tracing::warn!("cannot find corral's own executable: engines run in-process");
        }
        rt.catalog.set_isolation(isolation, worker);
        Ok(rt)
    }

    /// The selector from a `--backend` flag (already merged with `CORRAL_BACKEND` by
    /// clap), falling back to the config's `backend`, then `auto`.
    pub fn selector(&self, flag: Option<&str>, format: Option<&str>) -> Selector {
        Selector {
            backend: flag.map(str::to_string).or_else(|| self.config.backend.clone()),
            preference: self.config.preference.clone(),
            format: format.map(str::to_string),
            passed_over: Vec::new(),
        }
    }

    /// Chooses and opens a backend (reusing one opened before); an error listing every
    /// plugin and why it cannot serve when none can.
    pub fn choose(&self, selector: &Selector) -> Result<(Arc<LoadedPlugin>, Choice), NoBackend> {
        self.catalog.choose_one(selector)
    }
}

/// How well a loaded model's engine serves what the model and the settings ask for (the
/// caller's judgement, given to [`Runtime::load_model`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// It serves everything asked.
    Runs,
    /// It runs the model, but another engine would honour a setting this one cannot (a
    /// KV cache type, RPC workers): with the choice automatic, the next engine that can
    /// run the model is used instead; when none can, this one, and the caller warns.
    Prefers(String),
    /// It cannot serve the model as asked (LoRA adapters it cannot apply).
    CannotRun(String),
}

impl Fit {
    /// The one rule of how well `model`'s engine serves the model `r` with the KV cache
    /// settings `kv` and the RPC workers `rpc`: LoRA adapters it cannot apply are
    /// [`Fit::CannotRun`]; a cache type or RPC workers it cannot honour are
    /// [`Fit::Prefers`].
    pub fn judge(
        model: &Model,
        r: &crate::models::ModelRef,
        kv: crate::kv_cache::KvSettings,
        rpc: &crate::rpc::RemoteDevices,
    ) -> Fit {
        let engine = model.plugin.manifest.id();
        if let Some(why) = r.adapters_refused(model.capabilities, &engine) {
            return Fit::CannotRun(why);
        }
        match kv
            .not_honoured_by(model.capabilities, &engine)
            .or_else(|| rpc.unused_warning(model.capabilities, &engine))
        {
            Some(why) => Fit::Prefers(why),
            None => Fit::Runs,
        }
    }
}

/// An engine tried for a model and not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOver {
    /// The plugin (`name:variant`).
    pub engine: String,
    /// Why.
    pub why: String,
}

/// Why [`Runtime::load_model`] loaded nothing.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    /// No plugin can run models of the format here at all.
    #[error(transparent)]
    NoBackend(#[from] NoBackend),
    /// An engine failed to load the model for a reason another engine would share (the
    /// file, memory, a crash): the error's kind says which.
    #[error("{engine} could not load {path}: {error}{}", then_tried(others))]
    Engine {
        /// The plugin (`name:variant`).
        engine: String,
        /// The model file.
        path: String,
        /// The engine's error.
        error: BackendError,
        /// The engines tried after it, and why each did not run the model either.
        others: Vec<PassedOver>,
    },
    /// No engine that may be used can run the model: each one tried, and why not.
    #[error("{}", cannot_run_message(model, passed, explicit.as_deref()))]
    CannotRun {
        /// The model, as named.
        model: String,
        /// Every engine tried, in order.
        passed: Vec<PassedOver>,
        /// The backend asked for by name, when the choice was not automatic.
        explicit: Option<String>,
    },
}

impl ModelLoadError {
    /// Its class (exit code, HTTP status): an engine's error keeps its kind's (out of
    /// memory is a 507); a model no engine can run is the request's (400).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass;
        match self {
            ModelLoadError::NoBackend(n) => ErrorClass::of_no_backend(n),
            ModelLoadError::Engine { error, .. } => ErrorClass::of_backend(error.kind),
            ModelLoadError::CannotRun { .. } => ErrorClass::BadInput,
        }
    }
}

fn then_tried(others: &[PassedOver]) -> String {
    others.iter().map(|p| format!("; then {}: {}", p.engine, p.why)).collect()
}

fn cannot_run_message(model: &str, passed: &[PassedOver], explicit: Option<&str>) -> String {
    match (passed, explicit) {
        ([one], Some(asked)) => format!(
            "the {} engine (backend {asked:?}) cannot run model {model}: {}; choose another \
             backend, or none, to let corral pick an engine that can",
            one.engine, one.why
        ),
        _ => {
            let tried: Vec<String> =
                passed.iter().map(|p| format!("{}: {}", p.engine, p.why)).collect();
            format!("no installed engine can run model {model}: {}", tried.join("; "))
        }
    }
}

impl Runtime {
    /// Loads a model through the engine the selector ranks first and, when the choice is
    /// automatic, the next one whenever an engine cannot run it: its load says
    /// `Unsupported` (an architecture or a quantization it lacks) or fails otherwise (the
    /// first such failure is the answer when no engine loads the model), or `fit` judges
    /// it unable ([`Fit::CannotRun`]) or less able than another ([`Fit::Prefers`]). This is
    /// how a faster engine that runs fewer models can rank first: every model still loads
    /// where some engine can run it. With a backend named, only that one is tried. Each
    /// engine passed over is logged with the reason; the model's `plugin` says which
    /// engine runs it.
    pub fn load_model(
        &self,
        selector: &Selector,
        model: &str,
        (path, format): (&Path, &str),
        options: &LoadOptions,
        mut fit: impl FnMut(&Model) -> Fit,
    ) -> Result<Model, ModelLoadError> {
        let mut selector = selector.clone();
        let explicit = selector.explicit().map(str::to_string);
        let load = |plugin: &Arc<LoadedPlugin>| {
            Model::load(plugin.clone(), &path.to_string_lossy(), format, options.clone()).map_err(
                |error| ModelLoadError::Engine {
                    engine: plugin.manifest.id(),
                    path: path.display().to_string(),
                    error,
                    others: Vec::new(),
                },
            )
        };
        let mut passed: Vec<PassedOver> = Vec::new();
        // An engine that runs the model but honours less than a later one might, kept
        // for when no later engine runs it at all.
        let mut second_best: Option<PathBuf> = None;
        // The first load that failed for another reason than `Unsupported`, and its
        // place in `passed`.
        let mut first_failure: Option<(usize, ModelLoadError)> = None;
        let mut next = Some(self.choose(&selector)?.0);
        while let Some(plugin) = next.take() {
            let engine = plugin.manifest.id();
            // `kept`: a model that runs with less than asked, served when no other engine
            // is left to try.
            let (why, kept) = match load(&plugin) {
                Ok(m) => match fit(&m) {
                    Fit::Runs => return Ok(m),
                    Fit::CannotRun(why) => (why, None),
                    // Named, or one that ran it passed over already: this one serves.
                    Fit::Prefers(_) if explicit.is_some() || second_best.is_some() => {
                        return Ok(m);
                    }
                    Fit::Prefers(why) => (why, Some(m)),
                },
                Err(ModelLoadError::Engine { error, .. })
                    if error.kind == ErrorKind::Unsupported =>
                {
                    (error.message.to_string(), None)
                }
                // Named: its error is the answer.
                Err(e) if explicit.is_some() => return Err(e),
                // Any other failure (a file this engine reads more strictly than another,
                // memory, a crash) is tried on the next engine too; when none loads the
                // model, the first such error is the answer (its kind gives the class).
                Err(e) => {
                    let why = e.to_string();
                    first_failure.get_or_insert((passed.len(), e));
                    (why, None)
                }
            };
            passed.push(PassedOver { engine: engine.clone(), why: why.clone() });
            if explicit.is_some() {
                break;
            }
            selector.passed_over.push((plugin.manifest_path.clone(), why.clone()));
            next = self.choose(&selector).ok().map(|(p, _)| p);
            match kept {
                Some(m) if next.is_none() => return Ok(m),
                Some(_) => second_best = Some(plugin.manifest_path.clone()),
                None => {}
            }
            tracing::info!(model, engine, "engine passed over: {why}");
        }
        if let Some(manifest) = second_best {
            // No engine after it runs the model: back to the one that runs it with less.
            selector.passed_over.retain(|(p, _)| *p != manifest);
            let plugin = self.choose(&selector)?.0;
            tracing::info!(model, engine = %plugin.manifest.id(), "no other engine runs it: back to this one");
            return load(&plugin);
        }
        match first_failure {
            // The engines after it are named with their reasons (a crash among them
            // counts for the server's crash-loop rule, which reads the message).
            Some((at, ModelLoadError::Engine { engine, path, error, .. })) => {
                let others = passed.split_off(at + 1);
                Err(ModelLoadError::Engine { engine, path, error, others })
            }
            Some((_, other)) => Err(other),
            None => Err(ModelLoadError::CannotRun { model: model.to_string(), passed, explicit }),
        }
    }
}
