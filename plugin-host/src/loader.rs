//! Loading one plugin in checked steps, each with its own message: the library file
//! exists and `dlopen` accepts it; it exports `corral_plugin_abi_major` (else it is not a
//! corral plugin) with this host's major; abi_stable's layout check of the root module
//! passes, run from the older side (below); the identity matches the manifest; `init`
//! succeeds. This file holds all of the host's `unsafe` code.
//!
//! # Plugins of other minors
//!
//! A plugin built against any 1.x loads. Its minor comes from the library header's
//! version string (`1.N.0`). abi_stable's layout checker lets the *implementation* of a
//! prefix type (a vtable, the root module) have more fields than the *interface*, never
//! fewer. So for a plugin of this host's minor or a newer one, the plugin's layout is the
//! implementation (abi_stable's own `init_root_module`: the host never calls the methods
//! it does not know); for an **older** plugin the roles swap: the plugin's layout is
//! checked as the interface against the host's as the implementation, which checks every
//! field the plugin has, recursively, against the host's, and lets the host's layout
//! have the methods appended since. The root module is then taken without abi_stable's
//! second (one-way) check. Calling a method the older plugin's vtable lacks is safe: the
//! accessor reads the field-accessibility bits of the plugin's own vtable, and the
//! appended `ffi` methods have bodies abi_stable runs instead (`new_context_per_sequence`
//! → `new_context`, `kv_shift` → `Unsupported`, `capabilities` → generation), which
//! [`crate::in_process`] refines from the plugin's minor.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use abi_stable::{
    StableAbi,
    abi_stability::abi_checking::check_layout_compatibility,
    library::lib_header_from_path,
    sabi_trait::TD_Opaque,
    std_types::{RStr, RString},
};
use corral_backend_api::{
    ABI_MAJOR, ABI_MAJOR_SYMBOL, ABI_MINOR, HostServices, LogSinkBox, PluginRootRef,
    ffi::FfiLogSink, types::LogLevel,
};

use crate::{engine::LoadedPlugin, in_process::InProcessBackend, manifest::Manifest};

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
    /// A library that exports corral's ABI symbol but no abi_stable root module (what
    /// `export_plugin!` emits beside the symbol): it was not built as a corral plugin.
    #[error(
        "{library} is not a corral plugin library (no abi_stable root module): it exports \
         `{ABI_MAJOR_SYMBOL}` but not what `export_plugin!` emits with it"
    )]
    NoRootModule {
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
    /// The library header's ABI version is not `MAJOR.MINOR.PATCH`.
    #[error("{library} carries an ABI version this host cannot read: {version:?}")]
    AbiVersion {
        /// Library path.
        library: PathBuf,
        /// What the header says.
        version: String,
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
    /// The plugin could not be opened or initialised in a worker process.
    #[error("{plugin} failed in its worker process: {detail}")]
    Worker {
        /// `name:variant`.
        plugin: String,
        /// What the worker said, or how it died.
        detail: String,
    },
    /// The plugin failed to open less than a minute ago ([`crate::PluginCatalog`] does
    /// not try it again sooner); the message is that failure's.
    #[error("{0} (when last opened; tried again a minute after)")]
    FailedBefore(String),
    /// The plugin's init returned an error.
    #[error("{plugin} failed to initialise: {detail}")]
    Init {
        /// `name:variant`.
        plugin: String,
        /// The plugin's error.
        detail: String,
    },
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
                tracing::error!(target: "corral::plugin", plugin, target, "{message}");
            }
            LogLevel::Warn => tracing::warn!(target: "corral::plugin", plugin, target, "{message}"),
            LogLevel::Info => tracing::info!(target: "corral::plugin", plugin, target, "{message}"),
            LogLevel::Debug => {
                tracing::debug!(target: "corral::plugin", plugin, target, "{message}");
            }
            LogLevel::Trace => {
                tracing::trace!(target: "corral::plugin", plugin, target, "{message}");
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

fn layout_error(library: &Path, e: impl std::fmt::Display) -> LoadError {
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
    let Opened { root, library, minor, version, .. } = open(manifest, manifest_path)?;
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
        version,
        abi_minor: Some(minor),
        backend: Arc::new(InProcessBackend::new(backend, minor)),
    })
}

/// What opening a plugin library (without its init) tells: `corral backends` runs it in a
/// worker process for every plugin it does not load, `corral plugin install` before it
/// copies one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Inspection {
    /// `name:variant` the library reports.
    pub plugin: String,
    /// The version the library reports.
    pub version: String,
    /// The ABI it was built for, `MAJOR.MINOR`.
    pub abi: String,
    /// Set when the manifest's `abi` says otherwise.
    pub abi_note: Option<String>,
    /// The engine's self-description, when init was run too.
    pub engine: Option<String>,
}

/// Opens the plugin a manifest describes and checks it as [`load`] does (library, ABI
/// major, layout, identity), then runs its init only when `init_options` is given. The
/// library stays loaded: run this in a process of its own (`corral plugin-inspect`).
pub fn inspect(
    manifest: &Manifest,
    manifest_path: &Path,
    init_options: Option<String>,
) -> Result<Inspection, LoadError> {
    let opened = open(manifest, manifest_path)?;
    let mut inspection = Inspection {
        plugin: opened.id.clone(),
        version: opened.version.clone(),
        abi: format!("{ABI_MAJOR}.{}", opened.minor),
        abi_note: abi_disagreement(manifest, opened.minor),
        engine: None,
    };
    if let Some(options) = init_options {
        let plugin = load(manifest, manifest_path, options)?;
        inspection.engine = Some(plugin.backend.describe());
    }
    Ok(inspection)
}

/// A library opened and checked, before its init.
struct Opened {
    root: PluginRootRef,
    library: PathBuf,
    minor: u32,
    /// `name:variant` the library reports.
    id: String,
    version: String,
}

fn open(manifest: &Manifest, manifest_path: &Path) -> Result<Opened, LoadError> {
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

    let header = lib_header_from_path(&library).map_err(|e| match e {
        abi_stable::library::LibraryError::GetSymbolError { .. } => {
            LoadError::NoRootModule { library: library.clone() }
        }
        e => layout_error(&library, e),
    })?;
    let version = header.version_strings().version.as_str().to_string();
    let Some(minor) = parse_minor(&version) else {
        return Err(LoadError::AbiVersion { library, version });
    };
    let root: PluginRootRef = if minor < ABI_MINOR {
        // An older plugin: its layout is the interface, the host's the implementation
        // (see the module docs). A library built without the layout constant is refused.
        let Some(plugin_layout) = header.layout() else {
            return Err(LoadError::Layout {
                library,
                detail: "the library carries no root-module layout to check".into(),
            });
        };
        check_layout_compatibility(plugin_layout, <PluginRootRef as StableAbi>::LAYOUT)
            .map_err(|e| layout_error(&library, e))?;
        // SAFETY: the layout check above compared the plugin's root module, and every
        // type it reaches, with this host's: each field the plugin has matches the
        // host's, and the host's layout only has fields appended after the last prefix
        // field of a prefix type (vtables), which the accessors of `PluginRootRef` and
        // the `sabi_trait` objects read only after checking the plugin vtable's own
        // field-accessibility bits. The version check inside passes (same major).
        unsafe { header.init_root_module_with_unchecked_layout::<PluginRootRef>() }
            .map_err(|e| layout_error(&library, e))?
    } else {
        header.init_root_module::<PluginRootRef>().map_err(|e| layout_error(&library, e))?
    };
    if let Some(note) = abi_disagreement(manifest, minor) {
        tracing::warn!("{}: {note}", library.display());
    }
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
    Ok(Opened {
        root,
        library,
        minor,
        id: format!("{}:{}", info.name, info.variant),
        version: info.version.into_string(),
    })
}

/// The minor of an ABI version string `MAJOR.MINOR[.PATCH]`.
pub fn parse_minor(version: &str) -> Option<u32> {
    version.split('.').nth(1).and_then(|m| m.trim().parse::<u32>().ok())
}

/// What to say when a manifest's `abi` is not the ABI the library was built for (the
/// plugin still loads: the library's own header decides how the host talks to it).
pub fn abi_disagreement(manifest: &Manifest, library_minor: u32) -> Option<String> {
    let library = format!("{ABI_MAJOR}.{library_minor}");
    match manifest.abi_version() {
        Ok((major, minor)) if major == ABI_MAJOR && minor == library_minor => None,
        _ => Some(format!(
            "its manifest says abi = \"{}\" but the library was built for ABI {library}; \
             set abi = \"{library}\" in the manifest",
            manifest.abi
        )),
    }
}
