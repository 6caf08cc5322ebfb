//! What every command that needs an engine does first: read the config, probe the
//! machine, find the plugins, and choose one.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{
    config::Config,
    plugins::{self, Choice, Discovered, Selector},
};

/// Options shared by every command (global CLI flags and their environment variables).
#[derive(Debug, Clone, Default)]
pub struct GlobalOptions {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--plugin-dir DIR`, repeatable.
    pub plugin_dirs: Vec<PathBuf>,
}

/// Config, probe and discovered plugins.
pub struct Runtime {
    /// The config in force.
    pub config: Config,
    /// Where it came from.
    pub config_path: Option<PathBuf>,
    /// The machine.
    pub machine: corral_probe::MachineInfo,
    /// The plugin search path.
    pub plugin_path: Vec<PathBuf>,
    /// Every manifest found.
    pub discovered: Vec<Discovered>,
}

impl Runtime {
    /// Reads the config, probes, discovers plugins.
    pub fn new(global: &GlobalOptions) -> Result<Runtime> {
        let (config, config_path) = Config::load(global.config.as_deref())?;
        let machine = corral_probe::probe(&corral_probe::ProbeOptions::system());
        let env_path = std::env::var("CORRAL_PLUGIN_PATH").ok();
        let plugin_path =
            plugins::search_path(&global.plugin_dirs, env_path.as_deref(), &config.plugin_dirs);
        let discovered = plugins::discover(&plugin_path);
        tracing::debug!(?plugin_path, found = discovered.len(), "plugin discovery");
        Ok(Runtime { config, config_path, machine, plugin_path, discovered })
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

    /// Chooses and loads a backend; an error when none can be loaded.
    pub fn choose(
        &self,
        selector: &Selector,
    ) -> Result<(std::sync::Arc<plugins::LoadedPlugin>, Choice)> {
        let choice = plugins::choose(&self.discovered, &self.machine, selector, &self.config)?;
        match &choice.chosen {
            Some(p) => Ok((p.clone(), choice)),
            None => {
                let mut msg = String::from("no backend could be loaded");
                if let Some(f) = &selector.format {
                    msg.push_str(&format!(" for {f} models"));
                }
                if choice.reports.is_empty() {
                    msg.push_str(&format!(
                        ": no plugin manifests found on the plugin path ({})",
                        self.plugin_path
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ));
                }
                for r in &choice.reports {
                    msg.push_str(&format!("\n  {}:{}: {}", r.name, r.variant, r.reason));
                }
                bail!(msg)
            }
        }
    }
}

/// Model format from a path: a directory is ONNX, `.onnx` is ONNX, anything else GGUF.
pub fn format_of(path: &std::path::Path) -> &'static str {
    if path.is_dir() || path.extension().is_some_and(|e| e == "onnx") { "onnx" } else { "gguf" }
}

/// Resolves a user's model argument to a file that exists: a path, or a model of the
/// store (`$CORRAL_MODELS`, the default config's `models`, or the platform default).
pub fn model_path(arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return p.canonicalize().with_context(|| format!("cannot resolve {arg}"));
    }
    Ok(crate::models::resolve_for(&GlobalOptions::default(), arg)?.path)
}
