//! Plugin discovery, loading and choice.
//!
//! Discovery reads manifests only. Loading opens a library in four checked steps, each
//! with its own message: the library file exists and `dlopen` accepts it; it exports
//! `corral_plugin_abi_major` (else it is not a corral plugin) with this host's major;
//! abi_stable's version and layout check of the root module passes; `init` succeeds.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use abi_stable::{
    library::{LibraryError, lib_header_from_path},
    sabi_trait::TD_Opaque,
    std_types::{RStr, RString},
};
use corral_backend_api::{
    ABI_MAJOR, ABI_MAJOR_SYMBOL, ABI_MINOR, BackendBox, DeviceInfo, HostServices, LogSinkBox,
    PluginInfo, PluginRootRef, ffi::FfiLogSink, types::LogLevel,
};
use serde::Serialize;

use crate::manifest::{Manifest, ManifestError};

/// Suffix of a manifest that sits directly in a plugin directory (the development
/// layout: `target/debug/llama-cpp-cpu.corral-plugin.toml` beside the library).
pub const FLAT_MANIFEST_SUFFIX: &str = ".corral-plugin.toml";
/// Name of the manifest in a plugin's own directory (the packaged layout:
/// `lib/corral/backends/llama-cpp-vulkan/manifest.toml`).
pub const DIR_MANIFEST_NAME: &str = "manifest.toml";

/// The plugin search path, in order, without duplicates: `--plugin-dir` flags,
/// `CORRAL_PLUGIN_PATH` entries, the config's `plugin_dirs`, then
/// `<exe>/../lib/corral/backends` (installed) and the executable's own directory (a
/// cargo target directory during development). With `CORRAL_PLUGIN_PATH_ONLY=1` the last
/// two are left out, so only the named directories are searched.
pub fn search_path(flags: &[PathBuf], env: Option<&str>, config: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = flags.to_vec();
    if let Some(env) = env {
        dirs.extend(env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    dirs.extend(config.iter().cloned());
    let only_named = std::env::var("CORRAL_PLUGIN_PATH_ONLY").is_ok_and(|v| v == "1");
    if !only_named
        && let Ok(exe) = std::env::current_exe()
        && let Some(bin_dir) = exe.parent()
    {
        if let Some(prefix) = bin_dir.parent() {
            dirs.push(prefix.join("lib/corral/backends"));
        }
        dirs.push(bin_dir.to_path_buf());
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

/// A manifest found on the search path, parsed or not.
#[derive(Debug)]
pub struct Discovered {
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// The manifest, or why it cannot be used.
    pub manifest: Result<Manifest, ManifestError>,
}

impl Discovered {
    /// The library the manifest names (absolute).
    pub fn library_path(&self) -> Option<PathBuf> {
        let m = self.manifest.as_ref().ok()?;
        Some(self.manifest_path.parent().unwrap_or(Path::new(".")).join(&m.library))
    }
}

/// Finds every manifest in `dirs` (flat `*.corral-plugin.toml` files and
/// `<subdir>/manifest.toml`; a directory that is itself one plugin's directory, holding
/// `manifest.toml`, counts too), in directory order then file name order.
pub fn discover(dirs: &[PathBuf]) -> Vec<Discovered> {
    let mut found = Vec::new();
    for dir in dirs {
        let own = dir.join(DIR_MANIFEST_NAME);
        if own.is_file() {
            found.push(Discovered { manifest: Manifest::load(&own), manifest_path: own });
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let candidate = if p.is_dir() {
                p.join(DIR_MANIFEST_NAME)
            } else if p
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.ends_with(FLAT_MANIFEST_SUFFIX))
            {
                p
            } else {
                continue;
            };
            if candidate.is_file() {
                let manifest = Manifest::load(&candidate);
                found.push(Discovered { manifest_path: candidate, manifest });
            }
        }
    }
    found
}

/// Why a plugin could not be loaded. Each variant's message is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest names a library that is not there.
    #[error("library {library} named by manifest {manifest} does not exist")]
    MissingLibrary {
        /// Library path.
        library: PathBuf,
        /// Manifest path.
        manifest: PathBuf,
    },
    /// The manifest declares another ABI major.
    #[error(
        "{plugin} declares ABI {declared} in its manifest but this host speaks ABI {ABI_MAJOR}.{ABI_MINOR}; install a build of the plugin for corral ABI {ABI_MAJOR}"
    )]
    ManifestAbi {
        /// `name:variant`.
        plugin: String,
        /// What the manifest says.
        declared: String,
    },
    /// `dlopen` refused the file: not a shared library for this machine.
    #[error("{library} is not a shared library this machine can load: {detail}")]
    NotALibrary {
        /// Library path.
        library: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// `dlopen` failed because a library it links against is missing.
    #[error("{library} needs a shared library this machine lacks: {detail}")]
    MissingDependency {
        /// Library path.
        library: PathBuf,
        /// The loader's message (names the missing object).
        detail: String,
    },
    /// A shared library without corral's ABI symbol.
    #[error(
        "{library} is a shared library but not a corral plugin (it exports no `{ABI_MAJOR_SYMBOL}`)"
    )]
    NotAPlugin {
        /// Library path.
        library: PathBuf,
    },
    /// A plugin built against another ABI major.
    #[error(
        "{library} was built for corral plugin ABI {found}.x but this host speaks ABI {ABI_MAJOR}.{ABI_MINOR}; rebuild it against corral-backend-api {ABI_MAJOR}.x"
    )]
    AbiMajor {
        /// Library path.
        library: PathBuf,
        /// The plugin's major.
        found: u32,
    },
    /// The plugin was built for an older minor of this ABI major.
    #[error(
        "{library} was built for corral plugin ABI {ABI_MAJOR}.{found}, older than this host's ABI {ABI_MAJOR}.{ABI_MINOR} (a host loads plugins built for its own ABI minor or a newer one); rebuild it against corral-backend-api {ABI_MAJOR}.{ABI_MINOR}"
    )]
    AbiMinor {
        /// Library path.
        library: PathBuf,
        /// The plugin's minor.
        found: u32,
    },
    /// abi_stable's header, version or layout check failed.
    #[error("{library} failed the ABI layout check (its types differ from this host's): {detail}")]
    Layout {
        /// Library path.
        library: PathBuf,
        /// abi_stable's explanation, first lines.
        detail: String,
    },
    /// The library's identity differs from its manifest's.
    #[error("{library} says it is {found} but its manifest says {expected}")]
    IdentityMismatch {
        /// Library path.
        library: PathBuf,
        /// From the library.
        found: String,
        /// From the manifest.
        expected: String,
    },
    /// The plugin's init returned an error.
    #[error("{plugin} failed to initialise: {detail}")]
    Init {
        /// `name:variant`.
        plugin: String,
        /// The plugin's error.
        detail: String,
    },
}

/// A plugin whose library is open and whose backend is initialised.
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// Where the library is.
    pub library_path: PathBuf,
    /// What the library says about itself.
    pub info: PluginInfo,
    /// The initialised backend.
    pub backend: BackendBox,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("plugin", &self.manifest.id()).finish()
    }
}

impl LoadedPlugin {
    /// Devices of the backend.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.backend.devices().into_vec()
    }
}

/// Forwards a plugin's log records into the host's `tracing` output.
struct TracingSink {
    plugin: String,
}

impl FfiLogSink for TracingSink {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let (plugin, target, message) = (self.plugin.as_str(), target.as_str(), message.as_str());
        match level {
            LogLevel::Error => {
                tracing::error!(target: "corral::plugin", plugin, target, "{message}")
            }
            LogLevel::Warn => tracing::warn!(target: "corral::plugin", plugin, target, "{message}"),
            LogLevel::Info => tracing::info!(target: "corral::plugin", plugin, target, "{message}"),
            LogLevel::Debug => {
                tracing::debug!(target: "corral::plugin", plugin, target, "{message}")
            }
            LogLevel::Trace => {
                tracing::trace!(target: "corral::plugin", plugin, target, "{message}")
            }
        }
    }
}

fn host_max_log_level() -> LogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => LogLevel::Trace,
        LevelFilter::DEBUG => LogLevel::Debug,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

fn classify_dlopen_error(library: &Path, e: &libloading::Error) -> LoadError {
    let detail = e.to_string();
    let lib_name =
        library.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    // glibc names the object it could not open; when that is not the plugin itself, a
    // dependency is missing.
    let missing_dep = detail.contains("cannot open shared object file")
        && !detail.contains(&format!("{}: cannot open", library.display()))
        && !detail.starts_with(&format!("{lib_name}: cannot open"));
    if missing_dep {
        LoadError::MissingDependency { library: library.to_path_buf(), detail }
    } else {
        LoadError::NotALibrary { library: library.to_path_buf(), detail }
    }
}

fn layout_error(library: &Path, e: LibraryError) -> LoadError {
    let text = e.to_string();
    tracing::debug!(library = %library.display(), "ABI layout check failed in full:\n{text}");
    let detail: String =
        text.lines().filter(|l| !l.trim().is_empty()).take(6).collect::<Vec<_>>().join(" | ");
    LoadError::Layout { library: library.to_path_buf(), detail }
}

/// Opens and initialises the plugin a manifest describes. `options_json` is the merged
/// options object passed to init.
pub fn load(
    manifest: &Manifest,
    manifest_path: &Path,
    options_json: String,
) -> Result<LoadedPlugin, LoadError> {
    let library = manifest_path.parent().unwrap_or(Path::new(".")).join(&manifest.library);
    if !library.is_file() {
        return Err(LoadError::MissingLibrary { library, manifest: manifest_path.to_path_buf() });
    }
    match manifest.abi_version() {
        Ok((major, _)) if major == ABI_MAJOR => {}
        _ => {
            return Err(LoadError::ManifestAbi {
                plugin: manifest.id(),
                declared: manifest.abi.clone(),
            });
        }
    }

    // SAFETY: opening a library runs its initialisers. The library comes from a plugin
    // directory the user configured (or the installation's own), which is trusted code by
    // definition, the same trust as the host binary itself.
    let lib = unsafe { libloading::Library::new(&library) }
        .map_err(|e| classify_dlopen_error(&library, &e))?;
    // SAFETY: the symbol, when present, is the `u32` static that `export_plugin!` emits.
    let found = unsafe { lib.get::<*const u32>(ABI_MAJOR_SYMBOL.as_bytes()) }
        .ok()
        // SAFETY: the pointer comes from the loaded library's symbol table and points at a
        // `u32` static that lives as long as the library, which is never unloaded.
        .map(|sym| unsafe { **sym });
    let Some(found) = found else {
        return Err(LoadError::NotAPlugin { library });
    };
    if found != ABI_MAJOR {
        return Err(LoadError::AbiMajor { library, found });
    }
    // The library stays loaded for the life of the process (abi_stable leaks its handle
    // too): objects it created may outlive any scope we could give it.
    std::mem::forget(lib);

    let header = lib_header_from_path(&library).map_err(|e| layout_error(&library, e))?;
    // abi_stable lets a library be newer than its user, not older: a plugin's vtables must
    // have every method this host's have. Say so plainly before the layout check would.
    let version = header.version_strings();
    let minor = version.version.as_str().split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
    if let Some(minor) = minor.filter(|&m| m < ABI_MINOR) {
        return Err(LoadError::AbiMinor { library, found: minor });
    }
    let root: PluginRootRef =
        header.init_root_module::<PluginRootRef>().map_err(|e| layout_error(&library, e))?;
    let info = (root.info())();
    // The name must match; a variant may differ, because one library can serve several
    // manifests (a multi-device build listed once per device API, with different options).
    if info.name.as_str() != manifest.name {
        return Err(LoadError::IdentityMismatch {
            library,
            found: format!("{}:{}", info.name, info.variant),
            expected: manifest.id(),
        });
    }
    if info.variant.as_str() != manifest.variant {
        tracing::debug!(
            "{} reports variant {} under manifest variant {}",
            library.display(),
            info.variant,
            manifest.variant
        );
    }
    let services = HostServices {
        log: LogSinkBox::from_value(TracingSink { plugin: manifest.id() }, TD_Opaque),
        options_json: RString::from(options_json),
        host_version: RString::from(env!("CARGO_PKG_VERSION")),
        max_log_level: host_max_log_level(),
    };
    let backend = (root.init())(services)
        .into_result()
        .map_err(|e| LoadError::Init { plugin: manifest.id(), detail: e.to_string() })?;
    Ok(LoadedPlugin {
        manifest: manifest.clone(),
        manifest_path: manifest_path.to_path_buf(),
        library_path: library,
        info,
        backend,
    })
}

/// Merges a manifest's default options with the config's `[backends.NAME]` table (the
/// config wins) and renders them as JSON for init.
pub fn merged_options(manifest: &Manifest, config: &crate::config::Config) -> String {
    let mut table = manifest.options.clone();
    for key in
        [manifest.name.clone(), manifest.id(), format!("{}-{}", manifest.name, manifest.variant)]
    {
        if let Some(t) = config.backends.get(&key) {
            table.extend(t.clone());
        }
    }
    serde_json::to_string(&table).unwrap_or_else(|_| "{}".into())
}

/// Status of one plugin in a choice.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Opened, initialised and chosen.
    Chosen,
    /// Could run here but another was chosen (not opened).
    Available,
    /// Cannot run here; `reason` says why.
    Unavailable,
}

/// One line of `corral backends`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    /// Backend name (or the manifest file when it does not parse).
    pub name: String,
    /// Variant.
    pub variant: String,
    /// Plugin version.
    pub version: String,
    /// ABI from the manifest.
    pub abi: String,
    /// Model formats.
    pub formats: Vec<String>,
    /// Priority.
    pub priority: i32,
    /// The manifest file.
    pub manifest: PathBuf,
    /// Chosen, available or unavailable.
    pub status: Status,
    /// Why it has that status.
    pub reason: String,
    /// Devices, for the chosen plugin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// The engine's self-description, for the chosen plugin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub engine: String,
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// `None` or `auto`: automatic; otherwise a name, variant or `name:variant`.
    pub backend: Option<String>,
    /// Preference order from the config.
    pub preference: Vec<String>,
    /// Model format that must be supported (`gguf`, ...), if any.
    pub format: Option<String>,
}

impl Selector {
    fn explicit(&self) -> Option<&str> {
        self.backend.as_deref().map(str::trim).filter(|b| !b.is_empty() && *b != "auto")
    }
}

/// A choice that cannot be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// `--backend` names nothing installed.
    #[error("no installed backend is called {asked:?}; installed: {installed}")]
    UnknownBackend {
        /// What was asked.
        asked: String,
        /// What is installed, or a hint when nothing is.
        installed: String,
    },
}

/// The outcome of a choice.
pub struct Choice {
    /// The plugin that was loaded, if any could be.
    pub chosen: Option<Arc<LoadedPlugin>>,
    /// Every plugin found, with its status and reason.
    pub reports: Vec<PluginReport>,
}

/// Probes requirements, ranks and loads the best plugin; see DESIGN.md "Choosing a
/// backend at startup".
pub fn choose(
    discovered: &[Discovered],
    machine: &corral_probe::MachineInfo,
    selector: &Selector,
    config: &crate::config::Config,
) -> Result<Choice, ChoiceError> {
    let explicit = selector.explicit();
    if let Some(asked) = explicit {
        let any = discovered.iter().any(|d| d.manifest.as_ref().is_ok_and(|m| m.matches(asked)));
        if !any {
            let mut names: Vec<String> = discovered
                .iter()
                .filter_map(|d| d.manifest.as_ref().ok().map(Manifest::id))
                .collect();
            names.dedup();
            let installed = if names.is_empty() {
                "none (no plugin manifests on the plugin path; see `corral backends`)".to_string()
            } else {
                names.join(", ")
            };
            return Err(ChoiceError::UnknownBackend { asked: asked.to_string(), installed });
        }
    }

    let mut reports = Vec::new();
    let mut candidates: Vec<(usize, &Manifest, &Path)> = Vec::new();
    for d in discovered {
        let m = match &d.manifest {
            Ok(m) => m,
            Err(e) => {
                reports.push(PluginReport {
                    name: d.manifest_path.display().to_string(),
                    variant: String::new(),
                    version: String::new(),
                    abi: String::new(),
                    formats: Vec::new(),
                    priority: 0,
                    manifest: d.manifest_path.clone(),
                    status: Status::Unavailable,
                    reason: e.to_string(),
                    devices: Vec::new(),
                    engine: String::new(),
                });
                continue;
            }
        };
        let idx = reports.len();
        let mut report = PluginReport {
            name: m.name.clone(),
            variant: m.variant.clone(),
            version: m.version.clone(),
            abi: m.abi.clone(),
            formats: m.formats.clone(),
            priority: m.priority,
            manifest: d.manifest_path.clone(),
            status: Status::Available,
            reason: String::new(),
            devices: Vec::new(),
            engine: String::new(),
        };
        let mut unmet = Vec::new();
        match m.abi_version() {
            Ok((major, _)) if major == ABI_MAJOR => {}
            _ => unmet.push(format!(
                "built for ABI {} but this host speaks ABI {ABI_MAJOR}.{ABI_MINOR}",
                m.abi
            )),
        }
        if let Err(u) = corral_probe::check(&m.requires, machine) {
            unmet.push(u.to_string());
        }
        if let Some(f) = &selector.format
            && !m.formats.iter().any(|x| x == f)
        {
            unmet.push(format!("does not run {f} models (runs {})", m.formats.join(", ")));
        }
        if let Some(lib) = d.library_path()
            && !lib.is_file()
        {
            unmet.push(format!("library {} does not exist", lib.display()));
        }
        if unmet.is_empty() {
            candidates.push((idx, m, &d.manifest_path));
        } else {
            report.status = Status::Unavailable;
            report.reason = unmet.join("; ");
        }
        reports.push(report);
    }

    // Rank: the explicit choice first, then the config's preference order, then priority.
    let pref_rank =
        |m: &Manifest| selector.preference.iter().position(|p| m.matches(p)).unwrap_or(usize::MAX);
    candidates.sort_by(|a, b| {
        let ea = explicit.is_some_and(|x| a.1.matches(x));
        let eb = explicit.is_some_and(|x| b.1.matches(x));
        eb.cmp(&ea)
            .then(pref_rank(a.1).cmp(&pref_rank(b.1)))
            .then(b.1.priority.cmp(&a.1.priority))
            .then(a.1.id().cmp(&b.1.id()))
    });
    if let Some(asked) = explicit
        && !candidates.first().is_some_and(|c| c.1.matches(asked))
    {
        let why: Vec<String> = reports
            .iter()
            .filter(|r| r.status == Status::Unavailable && !r.reason.is_empty())
            .filter(|r| {
                discovered.iter().any(|d| {
                    d.manifest_path == r.manifest
                        && d.manifest.as_ref().is_ok_and(|m| m.matches(asked))
                })
            })
            .map(|r| format!("{}:{}: {}", r.name, r.variant, r.reason))
            .collect();
        tracing::warn!(
            "backend {asked:?} cannot run here ({}); falling back to the next candidate",
            why.join("; ")
        );
    }

    let mut chosen = None;
    for (idx, m, path) in candidates {
        if chosen.is_some() {
            reports[idx].reason = match explicit {
                Some(x) if !m.matches(x) => format!("not selected (--backend {x})"),
                _ => "can run here; another backend ranks higher".to_string(),
            };
            continue;
        }
        match load(m, path, merged_options(m, config)) {
            Ok(p) => {
                let r = &mut reports[idx];
                r.status = Status::Chosen;
                r.reason = why_chosen(m, selector, explicit);
                r.devices =
                    p.devices().iter().map(|d| format!("{} ({:?})", d.name, d.kind)).collect();
                r.engine = p.backend.describe().into_string();
                tracing::info!("chose backend {}: {}", m.id(), r.reason);
                chosen = Some(Arc::new(p));
            }
            Err(e) => {
                tracing::warn!("backend {} skipped: {e}", m.id());
                reports[idx].status = Status::Unavailable;
                reports[idx].reason = e.to_string();
            }
        }
    }
    Ok(Choice { chosen, reports })
}

fn why_chosen(m: &Manifest, selector: &Selector, explicit: Option<&str>) -> String {
    if let Some(x) = explicit
        && m.matches(x)
    {
        return format!("asked for with backend = {x:?}");
    }
    if let Some(p) = selector.preference.iter().find(|p| m.matches(p)) {
        return format!("first loadable backend in the config's preference order ({p})");
    }
    let base = format!("highest priority ({}) among the backends that can run here", m.priority);
    match explicit {
        Some(x) => format!("{base}; {x:?} could not run"),
        None => base,
    }
}
