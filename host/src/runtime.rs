//! What every command that needs an engine does first: read the config, probe the
//! machine, find the plugins ([`corral_plugin_host::PluginCatalog`]), and choose one.

use std::{path::PathBuf, sync::Arc, time::Duration};

use corral_plugin_host::{
    Choice, Isolation, LoadedPlugin, NoBackend, PluginCatalog, Selector, worker::WorkerCommand,
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
        }
    }

    /// Chooses and opens a backend (reusing one opened before); an error listing every
    /// plugin and why it cannot serve when none can.
    pub fn choose(&self, selector: &Selector) -> Result<(Arc<LoadedPlugin>, Choice), NoBackend> {
        self.catalog.choose_one(selector)
    }
}
