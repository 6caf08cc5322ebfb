//! The crate's error type.

use std::io;

/// Everything that can go wrong reading, writing or generating a GGUF file.
///
/// Messages name what is wrong and where (byte offsets, key and tensor names), so a
/// person can act on them without a hex editor.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An operating-system I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "opening /models/x.gguf".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (magic {found}, expected 47 47 55 46 \"GGUF\")")]
    BadMagic {
        /// The first bytes found, as hex.
        found: String,
    },
    /// The GGUF version is not 2 or 3.
    #[error("unsupported GGUF version {0} (this reader supports versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends before something it declares.
    #[error("truncated: {0}")]
    Truncated(String),
    /// A declared size or count exceeds a reader limit (see `reader::ReadLimits`).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The file is structurally invalid (unknown value type, bad alignment, ...).
    #[error("invalid GGUF: {0}")]
    Invalid(String),
    /// The writer was used out of order or given data of the wrong size.
    #[error("GGUF writer: {0}")]
    Writer(String),
    /// Bad generator options (unknown shape name, inconsistent dimensions, ...).
    #[error("model generator: {0}")]
    Generate(String),
}

impl GgufError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        GgufError::Io { context: context.into(), source }
    }
}
