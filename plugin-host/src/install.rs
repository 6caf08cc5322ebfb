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
    /// The selector names several installed plugins.
    #[error(
        "{asked:?} names {} installed plugins ({}); nothing removed: give NAME:VARIANT or \
         the plugin's directory",
        plugins.len(),
        plugins.join(", ")
    )]
    Ambiguous {
        /// What was asked.
        asked: String,
        /// `name:variant` of each plugin it names.
        plugins: Vec<String>,
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

/// Removes the one plugin directory under `root` that `selector` names: an exact
/// `name:variant` or `name-variant`, the path of the directory, or a name or a variant
/// (as `--backend` takes them) that only one installed plugin carries. A name match wins
/// over a variant match (`cpu` is the in-tree plugin's name and most plugins' variant).
/// A name or variant several plugins carry removes nothing: [`InstallError::Ambiguous`]
/// lists them. The directories removed.
pub fn remove(selector: &str, root: &Path) -> Result<Vec<PathBuf>, InstallError> {
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
    let installed: Vec<(PathBuf, Manifest)> = dirs
        .into_iter()
        .filter_map(|d| Manifest::load(&d.join(DIR_MANIFEST_NAME)).ok().map(|m| (d, m)))
        .collect();
    let s = selector.trim();
    let by_path = Path::new(s).canonicalize().ok();
    let exact: Vec<&(PathBuf, Manifest)> = installed
        .iter()
        .filter(|(d, m)| {
            s == m.id()
                || s == format!("{}-{}", m.name, m.variant)
                || by_path.as_ref().is_some_and(|p| d.canonicalize().is_ok_and(|d| &d == p))
        })
        .collect();
    let named: Vec<&(PathBuf, Manifest)> = installed.iter().filter(|(_, m)| m.name == s).collect();
    let variants: Vec<&(PathBuf, Manifest)> =
        installed.iter().filter(|(_, m)| m.variant == s).collect();
    let chosen = [exact, named, variants].into_iter().find(|v| !v.is_empty()).unwrap_or_default();
    match chosen.as_slice() {
        [] => Err(InstallError::NotInstalled { asked: selector.into(), dir: root.to_path_buf() }),
        [(dir, _)] => {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
            Ok(vec![dir.clone()])
        }
        several => Err(InstallError::Ambiguous {
            asked: selector.into(),
            plugins: several.iter().map(|(_, m)| m.id()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(root: &Path, name: &str, variant: &str) -> PathBuf {
        let dir = root.join(format!("{name}-{variant}"));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nvariant = \"{variant}\"\nlibrary = \"lib{name}.so\"\n\
             abi = \"1.3\"\nformats = [\"gguf\"]\n"
        );
        std::fs::write(dir.join(DIR_MANIFEST_NAME), manifest).unwrap();
        dir
    }

    #[test]
    fn remove_takes_one_plugin_or_refuses_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let example = installed(root, "example", "cpu");
        let hostile = installed(root, "hostile", "cpu");
        let cpu = installed(root, "cpu", "avx2");
        let vulkan = installed(root, "mine", "vulkan");
        let mine_cpu = installed(root, "mine", "cpu");
        // `cpu` is a name (one plugin) and a variant (three): the name wins.
        assert_eq!(remove("cpu", root).unwrap(), vec![cpu.clone()]);
        assert!(example.exists() && hostile.exists() && mine_cpu.exists());
        // Now `cpu` is only a variant, of three plugins: nothing is removed.
        match remove("cpu", root) {
            Err(InstallError::Ambiguous { plugins, .. }) => {
                assert_eq!(plugins, ["example:cpu", "hostile:cpu", "mine:cpu"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(example.exists() && hostile.exists() && mine_cpu.exists());
        let e = remove("mine", root).unwrap_err().to_string();
        assert!(e.contains("mine:cpu, mine:vulkan") && e.contains("NAME:VARIANT"), "{e}");
        // Exact forms and paths remove exactly one.
        assert_eq!(remove("mine:vulkan", root).unwrap(), vec![vulkan]);
        assert_eq!(remove("hostile-cpu", root).unwrap(), vec![hostile]);
        assert_eq!(remove(&example.to_string_lossy(), root).unwrap(), vec![example]);
        // A single match by name or variant.
        assert_eq!(remove("cpu", root).unwrap(), vec![mine_cpu]);
        assert!(matches!(remove("cpu", root), Err(InstallError::NotInstalled { .. })));
    }
}
