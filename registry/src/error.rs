//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the store, the Modelfile parser or the registry client.
///
/// Messages are written for a person: they name the model, the file or the registry and
/// what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model name that does not follow `[host/][namespace/]model[:tag][@digest]`.
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest that is not `sha256:` followed by 64 lowercase hex characters.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest as given (truncated if very long).
        digest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Content whose sha256 differs from the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (a blob, a manifest, a linked file).
        what: String,
        /// The digest that was announced.
        expected: String,
        /// The digest of the bytes actually received.
        actual: String,
    },
    /// The model is not in the local store.
    #[error("model {0} not found in the local store")]
    ModelNotFound(String),
    /// A blob the manifest names is missing from the local store.
    #[error("blob {digest} of model {model} is missing from the store ({path})")]
    BlobMissing {
        /// The model whose manifest names the blob.
        model: String,
        /// The missing blob.
        digest: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A manifest or config that cannot be understood.
    #[error("invalid manifest for {model}: {reason}")]
    InvalidManifest {
        /// The model.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A write was attempted on a store opened read-only.
    #[error("the model store at {0} is read-only")]
    ReadOnly(PathBuf),
    /// A linked model whose file changed or vanished since `create --link`.
    #[error("linked model file {path}: {reason}")]
    LinkBroken {
        /// The linked file.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// A Modelfile syntax or semantic error, with its position (1-based).
    #[error("Modelfile line {line}, column {column}: {message}")]
    Modelfile {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A file-system error, with the path it concerns.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A registry error: the registry, the repository and what failed.
    #[error("registry {registry}, model {model}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// The model (fully qualified).
        model: String,
        /// What failed.
        message: String,
    },
    /// The registry answered that it does not have the model (its manifest `GET` was a
    /// 404). A variant of its own, so that "not found" is decided by the registry's HTTP
    /// status, never by words in a message (a registry's 500 whose body says "model not
    /// found" is still a failing registry).
    #[error("registry {registry}, model {model}: model not found on the registry (manifest 404)")]
    RegistryModelNotFound {
        /// The registry host.
        registry: String,
        /// The model (fully qualified).
        model: String,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io { action, path: path.into(), source }
    }
}

/// Extension to attach a path and an action to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}
