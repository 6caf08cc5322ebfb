//! Discovery: the plugin search path and the manifests on it. Reads manifests only;
//! no library is opened here.

use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, ManifestError};

/// Suffix of a manifest that sits directly in a plugin directory (the development
/// layout: `target/debug/llama-cpp-cpu.corral-plugin.toml` beside the library).
pub const FLAT_MANIFEST_SUFFIX: &str = ".corral-plugin.toml";
/// Name of the manifest in a plugin's own directory (the packaged layout:
/// `lib/corral/backends/llama-cpp-vulkan/manifest.toml`).
pub const DIR_MANIFEST_NAME: &str = "manifest.toml";

/// The user's plugin directory, where `corral plugin install` puts plugins:
/// `$HOME/.local/lib/corral/backends` (`None` without `HOME`).
pub fn user_plugin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".local/lib/corral/backends"))
}

/// The plugin search path, in order, without duplicates: `--plugin-dir` flags,
/// `CORRAL_PLUGIN_PATH` entries, the config's `plugin_dirs`, then the user's plugin
/// directory ([`user_plugin_dir`]), `<exe>/../lib/corral/backends` (installed) and the
/// executable's own directory (a cargo target directory during development). With
/// `CORRAL_PLUGIN_PATH_ONLY=1` the last three are left out, so only the named
/// directories are searched.
///
/// The executable is the running one as the kernel names it (`/proc/self/exe` on Linux:
/// symbolic links resolved), so a prefix is relocatable: `bin/corral` unpacked anywhere
/// finds the plugins unpacked beside it in `lib/corral/backends/`, and a link to it from
/// another `bin/` finds the same ones.
pub fn search_path(flags: &[PathBuf], env: Option<&str>, config: &[PathBuf]) -> Vec<PathBuf> {
    let only_named = std::env::var("CORRAL_PLUGIN_PATH_ONLY").is_ok_and(|v| v == "1");
    let exe = std::env::current_exe().ok();
    let defaults = DefaultDirs { user: user_plugin_dir(), exe: exe.as_deref() };
    search_path_with(flags, env, config, (!only_named).then_some(defaults))
}

/// Where the default part of the search path comes from: the user's plugin directory and
/// the running executable.
#[derive(Debug)]
struct DefaultDirs<'a> {
    user: Option<PathBuf>,
    exe: Option<&'a Path>,
}

/// [`search_path`] with the defaults given (`None`: only the named directories).
fn search_path_with(
    flags: &[PathBuf],
    env: Option<&str>,
    config: &[PathBuf],
    defaults: Option<DefaultDirs<'_>>,
) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = flags.to_vec();
    if let Some(env) = env {
        dirs.extend(env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    dirs.extend(config.iter().cloned());
    if let Some(defaults) = defaults {
        dirs.extend(defaults.user);
        if let Some(bin_dir) = defaults.exe.and_then(Path::parent) {
            if let Some(prefix) = bin_dir.parent() {
                dirs.push(prefix.join(INSTALLED_PLUGIN_DIR));
            }
            dirs.push(bin_dir.to_path_buf());
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

/// Where an installed prefix keeps its plugins, relative to the prefix (`bin/corral` is
/// the host): `lib/corral/backends`, one directory per plugin variant.
pub const INSTALLED_PLUGIN_DIR: &str = "lib/corral/backends";

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

/// Files on the search path that look like a plugin manifest (they parse as one) but are
/// not named so the host finds them: a `*.toml` other than `manifest.toml` in a plugin's
/// own directory, or a flat `*.toml` not ending in `.corral-plugin.toml`. One warning line
/// each; `corral backends` prints them.
pub fn misnamed_manifests(dirs: &[PathBuf]) -> Vec<String> {
    let tomls = |dir: &Path| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut v: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
            .collect();
        v.sort();
        v
    };
    let named = |p: &Path| {
        p.file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f == DIR_MANIFEST_NAME || f.ends_with(FLAT_MANIFEST_SUFFIX))
    };
    let mut warnings = Vec::new();
    let mut check = |p: PathBuf, what: &str| {
        if !named(&p) && Manifest::load(&p).is_ok() {
            warnings.push(format!(
                "{} looks like a plugin manifest but is not read: {what}",
                p.display()
            ));
        }
    };
    for dir in dirs {
        if dir.join(DIR_MANIFEST_NAME).is_file() {
            continue;
        }
        for p in tomls(dir) {
            check(p, "a manifest beside its library is named NAME.corral-plugin.toml");
        }
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut subdirs: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        subdirs.sort();
        for sub in subdirs.into_iter().filter(|d| !d.join(DIR_MANIFEST_NAME).is_file()) {
            for p in tomls(&sub) {
                check(p, "a manifest in a plugin's own directory is named manifest.toml");
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An installed prefix is found from the executable alone: `<prefix>/bin/corral` looks
    /// in `<prefix>/lib/corral/backends` and in `<prefix>/bin`, wherever the prefix is.
    #[test]
    fn the_prefix_beside_the_executable_is_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("anywhere/opt/corral");
        let plugin = prefix.join(INSTALLED_PLUGIN_DIR).join("example-cpu");
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::fs::write(
            plugin.join(DIR_MANIFEST_NAME),
            "name = \"example\"\nvariant = \"cpu\"\nversion = \"0.1.0\"\nabi = \"1.2\"\n\
             library = \"libcorral_plugin_example.so\"\nformats = [\"toy\"]\n",
        )
        .unwrap();
        let exe = prefix.join("bin/corral");
        let user = tmp.path().join("home/.local/lib/corral/backends");
        let flag = tmp.path().join("flag");
        let dirs = search_path_with(
            std::slice::from_ref(&flag),
            Some("/env/a::/env/b"),
            &[PathBuf::from("/config")],
            Some(DefaultDirs { user: Some(user.clone()), exe: Some(&exe) }),
        );
        let expected = [
            flag,
            "/env/a".into(),
            "/env/b".into(),
            "/config".into(),
            user,
            prefix.join("lib/corral/backends"),
            prefix.join("bin"),
        ];
        assert_eq!(dirs, expected);
        let found = discover(&dirs);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].manifest_path, plugin.join(DIR_MANIFEST_NAME));
        assert_eq!(found[0].library_path().unwrap(), plugin.join("libcorral_plugin_example.so"));

        // Only the named directories with CORRAL_PLUGIN_PATH_ONLY=1; duplicates once.
        let named = search_path_with(&[PathBuf::from("/a")], Some("/a:/b"), &[], None);
        assert_eq!(named, [PathBuf::from("/a"), PathBuf::from("/b")]);
    }
}
