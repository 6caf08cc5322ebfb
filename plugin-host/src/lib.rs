//! # corral-plugin-host
//!
//! The host half of corral's plugin ABI, and the only crate of the host that holds
//! `unsafe` code (in [`loader`]: opening a library and reading its ABI symbol).
//!
//! - [`manifest`]: the TOML beside each plugin library, read before anything is opened.
//! - [`discovery`]: the plugin search path and the manifests on it.
//! - [`loader`]: opening one plugin in checked steps, each failure one clear line.
//! - [`inspect`]: the same checks in a short-lived worker process, for plugins the host
//!   lists but does not load (`corral backends`) and before an install.
//! - [`install`]: the user's plugin directory, `corral plugin install` and `remove`.
//! - [`choice`]: requirements against the probe, ranking, fallback, and
//!   [`PluginCatalog`], which opens each plugin at most once per process.
//! - [`format`]: the one rule that names a model file's format.
//! - [`engine`]: the engine handles the host drives ([`BackendHandle`],
//!   [`ModelHandle`], [`ContextHandle`]) and the [`Model`] / [`Context`] wrappers over
//!   them; [`in_process`] is the implementation that calls the plugin in this process.
//! - [`worker`]: engines in their own processes (process isolation): the worker side
//!   and the handles over it.
//! - [`conformance`]: the suite every backend must pass. Third parties run it in their
//!   own `cargo test` with this crate as a dev-dependency:
//!
//! ```no_run
//! // tests/conformance.rs of a plugin crate, after `cargo build` wrote the library
//! // and its manifest beside it.
//! let report = corral_plugin_host::conformance::check_plugin(
//!     std::path::Path::new("target/debug/my-engine.corral-plugin.toml"),
//!     None, // a tiny generated GGUF model
//! )
//! .expect("the plugin loads");
//! assert!(report.passed(), "{report}");
//! ```

pub mod choice;
pub mod conformance;
pub mod discovery;
pub mod engine;
pub mod format;
pub mod in_process;
pub mod inspect;
pub mod install;
pub mod loader;
pub mod manifest;
pub mod worker;

pub use choice::{
    BackendOptions, Choice, ChoiceError, Isolation, NoBackend, PluginCatalog, PluginReport,
    Selector, Status,
};
pub use discovery::{
    DIR_MANIFEST_NAME, Discovered, FLAT_MANIFEST_SUFFIX, INSTALLED_PLUGIN_DIR, discover,
    misnamed_manifests, search_path, user_plugin_dir,
};
pub use engine::{
    BackendHandle, Context, ContextHandle, ContextKind, LoadedPlugin, Model, ModelHandle,
};
pub use loader::{LoadError, load};
pub use manifest::{Manifest, ManifestError};
