//! Plugin manifests: the TOML beside each plugin library, read before the library is opened.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most bytes a manifest may have; larger files are refused unread.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// A plugin manifest (see `backend-api/README.md` and ARCHITECTURE.md's plugin contract).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Backend name, e.g. `llama-cpp`.
    pub name: String,
    /// Build variant, e.g. `cpu`, `vulkan`, `cuda12`.
    pub variant: String,
    /// The plugin's version.
    pub version: String,
    /// The corral ABI it was built for, `MAJOR.MINOR`.
    pub abi: String,
    /// Library file name, relative to the manifest's directory.
    pub library: String,
    /// Model formats it runs (`gguf`, `onnx`).
    pub formats: Vec<String>,
    /// Higher wins among plugins that can run.
    #[serde(default)]
    pub priority: i32,
    /// One line for `corral backends`.
    #[serde(default)]
    pub description: String,
    /// What the machine must have.
    #[serde(default)]
    pub requires: corral_probe::Requirements,
    /// Default options passed to init; the host config's `[backends.NAME]` overrides them.
    #[serde(default)]
    pub options: toml::Table,
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Unreadable file.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {0} is larger than 64 KiB; refusing to read it")]
    TooLarge(PathBuf),
    /// TOML error or wrong field.
    #[error("manifest {path} does not parse: {message}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// toml's message with line and key.
        message: String,
    },
    /// A field holds a value that cannot be right.
    #[error("manifest {path}: {message}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let read_err = |source| ManifestError::Read { path: path.to_path_buf(), source };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(path.to_path_buf()));
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let m: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        m.validate()
            .map_err(|message| ManifestError::Invalid { path: path.to_path_buf(), message })?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok_name(&self.name) {
            return Err(format!("name {:?} must be 1-64 of [A-Za-z0-9._-]", self.name));
        }
        if !ok_name(&self.variant) {
            return Err(format!("variant {:?} must be 1-64 of [A-Za-z0-9._-]", self.variant));
        }
        // The library must be a plain file name beside the manifest: no path traversal.
        let lib = Path::new(&self.library);
        if self.library.is_empty()
            || lib.components().count() != 1
            || lib.file_name().is_none_or(|f| f != lib.as_os_str())
        {
            return Err(format!(
                "library {:?} must be a file name in the manifest's directory",
                self.library
            ));
        }
        self.abi_version()?;
        if self.formats.is_empty() {
            return Err("formats must name at least one model format".into());
        }
        Ok(())
    }

    /// The ABI version as `(major, minor)`.
    pub fn abi_version(&self) -> Result<(u32, u32), String> {
        let bad = || format!("abi {:?} must be MAJOR.MINOR, e.g. \"1.0\"", self.abi);
        let (ma, mi) = self.abi.split_once('.').ok_or_else(bad)?;
        Ok((ma.parse().map_err(|_| bad())?, mi.parse().map_err(|_| bad())?))
    }

    /// `name:variant`, how plugins are named in messages.
    pub fn id(&self) -> String {
        format!("{}:{}", self.name, self.variant)
    }

    /// Whether a user's selector (`llama-cpp`, `vulkan`, `llama-cpp:vulkan`,
    /// `llama-cpp-vulkan`) names this plugin.
    pub fn matches(&self, selector: &str) -> bool {
        let s = selector.trim();
        s == self.name
            || s == self.variant
            || s == self.id()
            || s == format!("{}-{}", self.name, self.variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.toml");
        std::fs::write(&p, text).unwrap();
        Manifest::load(&p)
    }

    const GOOD: &str = r#"
name = "llama-cpp"
variant = "vulkan"
version = "0.1.0"
abi = "1.0"
library = "libx.so"
formats = ["gguf"]
priority = 20
[requires]
gpu_api = "vulkan"
"#;

    #[test]
    fn good_manifest_and_selectors() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.abi_version().unwrap(), (1, 0));
        for s in ["llama-cpp", "vulkan", "llama-cpp:vulkan", "llama-cpp-vulkan"] {
            assert!(m.matches(s), "{s}");
        }
        assert!(!m.matches("cuda"));
    }

    #[test]
    fn traversal_in_library_is_refused() {
        let err = parse(&GOOD.replace("libx.so", "../../etc/libx.so")).unwrap_err();
        assert!(err.to_string().contains("must be a file name"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported_with_line() {
        let err = parse("name = \"x\"\nvariant = \n").unwrap_err().to_string();
        assert!(err.contains("does not parse") && err.contains("line 2"), "{err}");
    }
}
