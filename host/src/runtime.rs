//! What every command that needs an engine does first: read the config, probe the
//! machine, find the plugins ([`corral_plugin_host::PluginCatalog`]), and choose one.

use std::{path::PathBuf, sync::Arc};

use corral_plugin_host::{Choice, LoadedPlugin, NoBackend, PluginCatalog, Selector};

use crate::config::{Config, ConfigError};

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
        let catalog = PluginCatalog::new(search_path, machine, config.backends.clone());
        Ok(Runtime { config, config_path, catalog })
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
