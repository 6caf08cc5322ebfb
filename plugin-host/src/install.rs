//! `corral plugin install` and `remove`: the user's plugin directory
//! ([`crate::discovery::user_plugin_dir`], `~/.local/lib/corral/backends`, on the default
//! search path), one directory per plugin variant, `<name>-<variant>/`, in the packaged
//! layout (`manifest.toml` + the library).

use std::path::{Path, PathBuf};

use corral_backend_api::ABI_MAJOR;

use crate::{
    discovery::DIR_MANIFEST_NAME,
    inspect::Inspector,
    loader::Inspection,
    manifest::{Manifest, ManifestError},
};

/// Why a plugin was not installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest is for another ABI major.
    #[error("{plugin} declares ABI {declared}; this host speaks ABI {ABI_MAJOR}.x")]
    Abi {
        /// `name:variant`.
        plugin: String,
        /// The manifest's `abi`.
        declared: String,
    },
    /// A name or variant that cannot be a directory name.
    #[error("{0:?} cannot name a plugin directory (letters, digits, '-', '_' and '.' only)")]
    BadName(String),
    /// The library the manifest names is not there.
    #[error("library {0} does not exist (build the plugin first)")]
    MissingLibrary(PathBuf),
    /// The plugin failed its check in a worker process.
    #[error("{plugin} does not load, not installed: {reason}")]
    Check {
        /// `name:variant`.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// No installed plugin matches.
    #[error("no plugin called {asked:?} is installed in {dir}")]
    NotInstalled {
        /// What was asked.
        asked: String,
        /// The user's plugin directory.
        dir: PathBuf,
    },
    /// Reading or writing files.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

fn dir_name_part(s: &str) -> Result<&str, InstallError> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(s) } else { Err(InstallError::BadName(s.to_string())) }
}

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    /// `name:variant`.
    pub plugin: String,
    /// The plugin's new directory.
    pub dir: PathBuf,
    /// What the check in the worker found.
    pub inspection: Inspection,
    /// Whether an earlier install of the same variant was replaced.
    pub replaced: bool,
}

/// Checks the plugin of the manifest at `manifest_path` (manifest, ABI major, that its
/// library opens and initialises, in a worker process) and copies it into
/// `root/<name>-<variant>/` as `manifest.toml` and the library, replacing an earlier
/// install of the same variant. `init_options` is the options object its init gets.
pub fn install(
    manifest_path: &Path,
    inspector: &Inspector,
    init_options: &str,
    root: &Path,
) -> Result<Installed, InstallError> {
    let manifest = Manifest::load(manifest_path)?;
    match manifest.abi_version() {
        Ok((major, _)) if major == ABI_MAJOR => {}
        _ => {
            return Err(InstallError::Abi { plugin: manifest.id(), declared: manifest.abi });
        }
    }
    let dir_name =
        format!("{}-{}", dir_name_part(&manifest.name)?, dir_name_part(&manifest.variant)?);
    let library = manifest_path.parent().unwrap_or(Path::new(".")).join(&manifest.library);
    if !library.is_file() {
        return Err(InstallError::MissingLibrary(library));
    }
    let inspection = inspector
        .inspect(manifest_path, Some(init_options))
        .map_err(|reason| InstallError::Check { plugin: manifest.id(), reason })?;
    let Some(lib_name) = library.file_name() else {
        return Err(InstallError::MissingLibrary(library));
    };
    // The manifest as written, unless its `library` has a directory part to drop.
    let text = std::fs::read_to_string(manifest_path).map_err(io(manifest_path))?;
    let text = if Path::new(&manifest.library).file_name() == Some(lib_name)
        && Path::new(&manifest.library).parent().is_none_or(|p| p.as_os_str().is_empty())
    {
        text
    } else {
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
            InstallError::Manifest(ManifestError::Parse {
                path: manifest_path.to_path_buf(),
                message: e.to_string(),
            })
        })?;
        table.insert("library".into(), toml::Value::String(lib_name.to_string_lossy().into()));
        toml::to_string(&table).map_err(|e| InstallError::Io {
            path: manifest_path.to_path_buf(),
            source: std::io::Error::other(e),
        })?
    };
    let dir = root.join(&dir_name);
    let replaced = dir.exists();
    // Written beside the final directory, then moved into place.
    let staging = root.join(format!(".{dir_name}.installing"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    std::fs::copy(&library, staging.join(lib_name)).map_err(io(&library))?;
    std::fs::write(staging.join(DIR_MANIFEST_NAME), text).map_err(io(&staging))?;
    if replaced {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&staging, &dir).map_err(io(&dir))?;
    Ok(Installed { plugin: manifest.id(), dir, inspection, replaced })
}

/// Removes every plugin directory under `root` whose manifest `selector` names (a name,
/// a variant, `name:variant` or `name-variant`, as `--backend` takes them); the
/// directories removed.
pub fn remove(selector: &str, root: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::NotInstalled {
                asked: selector.into(),
                dir: root.to_path_buf(),
            });
        }
        Err(e) => return Err(io(root)(e)),
    };
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        let Ok(m) = Manifest::load(&dir.join(DIR_MANIFEST_NAME)) else { continue };
        if m.matches(selector) {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            removed.push(dir);
        }
    }
    if removed.is_empty() {
        return Err(InstallError::NotInstalled { asked: selector.into(), dir: root.to_path_buf() });
    }
    Ok(removed)
}
