//! The TOML config file: where it is, what it holds, and errors that name file, line and key.
//!
//! Precedence for every setting is: command-line flag, then `CORRAL_*` environment
//! variable (both handled by clap), then this file, then the built-in default.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or holds a wrong value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// `--config FILE` named a file that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A setting (flag, environment variable or config key) whose value cannot be used;
    /// the message names it.
    #[error("{0}")]
    Setting(String),
}

/// The whole config file. Every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Backend to use: `auto` (default), a plugin name (`llama-cpp`), a variant
    /// (`vulkan`) or both (`llama-cpp:vulkan`).
    pub backend: Option<String>,
    /// Order of preference among available backends when `backend` is `auto`: names,
    /// variants or `name:variant`, best first.
    pub preference: Vec<String>,
    /// Extra directories searched for plugins, before the built-in ones.
    pub plugin_dirs: Vec<PathBuf>,
    /// Per-backend options, passed to the plugin's init: `[backends.llama-cpp]`.
    pub backends: BTreeMap<String, toml::Table>,
    /// Server settings.
    pub server: ServerConfig,
    /// Where models are stored.
    pub models: Option<PathBuf>,
    /// Where engines run: `process` (a worker process per loaded model; the default of
    /// `corral serve`) or `in-process`. `[backends.NAME] isolation` overrides it per
    /// backend.
    pub isolation: Option<String>,
    /// How long an engine may take to answer one call (a decode, a load) before its
    /// worker counts as hung and is killed, e.g. `"5m"` (process isolation only).
    pub engine_timeout: Option<String>,
    /// Other servers that serve models for this one: `[remotes.NAME]`.
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// Turns every remote off (as `CORRAL_NO_REMOTE=1` does): remote models then answer
    /// 503 and nothing is sent to another machine.
    pub no_remote: bool,
}

/// `[remotes.NAME]`: another server (or several that serve the same models) that remote
/// models are sent to.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// The API it speaks: `ollama` (another corral, or Ollama; the default) or `openai`
    /// (any OpenAI-compatible server: llama-server, vLLM, a hosted API).
    pub kind: Option<String>,
    /// Its base URL, e.g. `http://10.0.0.5:11434` (`openai`: with or without `/v1`).
    pub url: Option<String>,
    /// Several servers that serve the same models: requests go to the least busy one
    /// that answers, and move on when one stops answering.
    pub urls: Vec<String>,
    /// The environment variable that holds its API key (never the key itself here).
    pub api_key_env: Option<String>,
    /// A file whose first line is its API key.
    pub api_key_file: Option<PathBuf>,
    /// Models named `MODEL:TAG-cloud` or `MODEL:cloud` (Ollama's cloud naming) go to the
    /// remotes marked default.
    pub default: bool,
    /// How long it may take to start answering, and to send the next part of a stream,
    /// e.g. `"2m"` (default 5 minutes).
    pub timeout: Option<String>,
}

/// `[server]`: settings of `corral serve`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address (`127.0.0.1:11434` by default).
    pub host: Option<String>,
    /// Default keep-alive, e.g. `"5m"`.
    pub keep_alive: Option<String>,
    /// Models loaded at once.
    pub max_loaded_models: Option<usize>,
    /// Parallel sequences per model.
    pub num_parallel: Option<usize>,
    /// Requests waiting at most.
    pub max_queue: Option<usize>,
    /// Allowed CORS origins beyond the local ones.
    pub origins: Vec<String>,
    /// Context length per sequence.
    pub num_ctx: Option<u32>,
    /// Compute threads.
    pub threads: Option<u32>,
    /// API keys requests must carry (one of them).
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line.
    pub api_key_file: Option<PathBuf>,
    /// Directories whose model files may be named by path over HTTP (otherwise only
    /// store names are accepted).
    pub allow_model_paths: Vec<PathBuf>,
    /// Let `/api/pull` and `/api/push` requests with `insecure: true` speak plain HTTP to
    /// registries (off: such requests get 403).
    pub allow_insecure_registries: Option<bool>,
    /// The KV cache's element type for every model: `f16` (default), `q8_0`, `q4_0`
    /// (a model's `PARAMETER kv_cache_type` wins).
    pub kv_cache_type: Option<String>,
    /// Flash attention for every model: `on`, `off` or `auto` (default; a model's
    /// `PARAMETER flash_attention` wins).
    pub flash_attention: Option<String>,
    /// Speculative decoding by default: `off` (the default), `auto` (prompt-lookup drafts
    /// while they are accepted), `ngram` or `draft`. Requests override it
    /// (`options.speculative`).
    pub speculative: Option<String>,
    /// Most draft tokens per speculation round (default 8, at most 64).
    pub draft_max: Option<u32>,
}

impl Config {
    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })
    }

    /// Loads `explicit` if given (it must exist), else the first of
    /// `~/.config/corral/config.toml` and `/etc/corral/config.toml` that exists, else
    /// the defaults. Returns the config and the file it came from.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(p) if p.exists() => p.to_path_buf(),
            Some(p) => return Err(ConfigError::Missing(p.to_path_buf())),
            None => match default_paths().into_iter().find(|p| p.exists()) {
                Some(p) => p,
                None => return Ok((Config::default(), None)),
            },
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Ok((Config::parse(&text, &path)?, Some(path)))
    }

    /// The plugin's options as a JSON object (what `HostServices::options_json` carries).
    pub fn backend_options_json(&self, name: &str) -> String {
        self.backends
            .get(name)
            .and_then(|t| serde_json::to_string(t).ok())
            .unwrap_or_else(|| "{}".to_string())
    }
}

/// The config files looked for, in order.
pub fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(dir).join("corral/config.toml"));
    } else if let Some(home) = std::env::var_os("HOME") {
        v.push(PathBuf::from(home).join(".config/corral/config.toml"));
    }
    v.push(PathBuf::from("/etc/corral/config.toml"));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            r#"
backend = "vulkan"
preference = ["llama-cpp:vulkan", "llama-cpp"]
[backends.llama-cpp]
n_threads = 4
[server]
host = "0.0.0.0:8080"
"#,
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.backend.as_deref(), Some("vulkan"));
        assert_eq!(c.backend_options_json("llama-cpp"), r#"{"n_threads":4}"#);
        assert_eq!(c.backend_options_json("other"), "{}");
    }

    #[test]
    fn syntax_error_names_file_line_and_key() {
        let err = Config::parse(
            "backend = \"x\"\n[server]\nmax_queue = \"ten\"\n",
            Path::new("/etc/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/c.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_queue"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::parse("bakend = \"x\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("bakend"), "{err}");
    }
}
