//! # corral-backend-api
//!
//! The stable ABI between the corral host and its backend plugins, and the only crate a
//! plugin depends on. A plugin is a `cdylib` that implements the safe traits in
//! [`plugin`] ([`plugin::Backend`], [`plugin::Model`], [`plugin::Context`]) and exports
//! itself with [`export_plugin!`]; beside the library ships a manifest TOML that the
//! host reads before it opens anything (see the crate README).
//!
//! The contract mirrors llama.cpp's batch API: a [`plugin::Context`] decodes a batch of
//! [`BatchEntry`] (token, position, sequence id, wants-logits) mixing several sequences,
//! hands out logits per entry and pooled embeddings per sequence, and edits the KV cache
//! per sequence. Everything above that (sampling, templates, stop strings, batching
//! policy, HTTP) lives in the host.
//!
//! ## Versioning
//!
//! [`ABI_MAJOR`] changes only with a breaking change; the host refuses a plugin of another
//! major and says both versions. Minors grow the ABI by appending: fields after the last
//! field of the prefix-typed [`ffi::PluginRoot`] and methods after the last method of the
//! `sabi_trait`s, so an old plugin loads in a newer host of the same major.
//! abi_stable's layout check runs on every load and catches what the version numbers
//! miss.

pub mod ffi;
pub mod plugin;
pub mod types;

pub use ffi::{BackendBox, ContextBox, HostServices, LogSinkBox, ModelBox, PluginRootRef};
pub use types::*;

#[doc(hidden)]
pub use abi_stable;
pub use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec, Tuple2};

/// ABI major version: plugins of another major are refused.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version: grows when the ABI gains appended items.
pub const ABI_MINOR: u32 = 1;
/// The ABI version as abi_stable checks it (`MAJOR.MINOR.0`).
pub const ABI_VERSION: &str = "1.1.0";
/// Name of the exported static holding the ABI major, read before the root module.
pub const ABI_MAJOR_SYMBOL: &str = "corral_plugin_abi_major";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_name_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn version_constants_agree() {
        assert_eq!(ABI_VERSION, format!("{ABI_MAJOR}.{ABI_MINOR}.0"));
        assert_eq!(env!("CARGO_PKG_VERSION_MAJOR").parse::<u32>().unwrap(), ABI_MAJOR);
    }

    #[test]
    fn error_display_names_kind() {
        let e = BackendError::invalid("token 99 out of range");
        assert_eq!(e.to_string(), "invalid input: token 99 out of range");
    }
}
