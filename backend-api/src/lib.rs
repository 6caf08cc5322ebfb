//! # corral-backend-api
//!
//! The stable ABI between the corral host and its backend plugins, and the only crate a
//! plugin depends on. A plugin is a `cdylib` that implements the safe traits in
//! [`plugin`] ([`plugin::Backend`], [`plugin::Model`], [`plugin::Context`]) and exports
//! itself with [`export_plugin!`]; beside the library ships a manifest TOML that the
//! host reads before it opens anything (see the crate README).
//!
//! Those traits speak plain Rust: `String`, `Option<u32>`, `Vec<u32>`,
//! `Vec<(String, String)>`, `&str`, `&[T]`, and the plain types of this crate
//! ([`ModelInfo`], [`SpecialTokenIds`], [`Device`], [`LoadRequest`] with
//! [`LoadSettings`], [`InitContext`], plus the `repr(C)` [`ContextParams`],
//! [`BatchEntry`], [`BackendError`] and the [`Capabilities`] bitset). The code
//! [`export_plugin!`] generates converts them to the FFI structs of [`types`] at the
//! boundary and catches panics; the FFI objects themselves live in the hidden `ffi`
//! module, which only the host uses.
//!
//! The contract mirrors llama.cpp's batch API: a [`plugin::Context`] decodes a batch of
//! [`BatchEntry`] (token, position, sequence id, wants-logits) mixing several sequences,
//! hands out logits per entry and pooled embeddings per sequence, and edits the KV cache
//! per sequence. Everything above that (sampling, templates, stop strings, batching
//! policy, HTTP) lives in the host. Each model declares what it can do
//! ([`plugin::Model::capabilities`]).
//!
//! ## Versioning
//!
//! [`ABI_MAJOR`] changes only with a breaking change; the host refuses a plugin of another
//! major and says both versions. Minors grow the ABI by appending: fields after the last
//! field of the prefix-typed root module and methods after the last method of the
//! `sabi_trait`s. **A host loads a plugin of any minor of its major:**
//!
//! - a plugin of the host's minor or a **newer** one: abi_stable's layout check as is
//!   (the plugin's vtables may have more methods; the host never calls those);
//! - an **older** plugin: the host runs abi_stable's layout check the other way round
//!   (the plugin's layout as the interface, the host's as the implementation, which
//!   abi_stable allows to have more fields), and answers the calls the plugin lacks on
//!   its own side. Every appended `ffi` method has a body abi_stable runs when the
//!   plugin's vtable lacks it (its accessors check the plugin vtable's own field bits):
//!   1.1's `new_context_per_sequence` is a shared context (`new_context`) and
//!   `kv_shift` is `Unsupported`; 1.2's `capabilities` is derived by the host from what
//!   it asked before 1.2 (generation; context shift when a 1.1 plugin's `kv_shift` by 0
//!   succeeds).
//!
//! The plugin's minor is read from abi_stable's library header (`1.N.0`, the
//! [`ABI_VERSION`] it was built with); abi_stable itself compares only the major. A
//! plugin rebuilt against a newer 1.x keeps compiling (appended author-side methods get
//! defaults where a sensible one exists; 1.2's `capabilities` has none on purpose).
//! abi_stable's layout check runs on every load and catches what the version numbers
//! miss.

#[doc(hidden)]
pub mod ffi;
pub mod plain;
pub mod plugin;
pub mod types;

#[doc(hidden)]
pub use ffi::{BackendBox, ContextBox, HostServices, LogSinkBox, ModelBox, PluginRootRef};
pub use plain::{Device, InitContext, LoadRequest, LoadSettings, ModelInfo, SpecialTokenIds};
pub use types::*;

#[doc(hidden)]
pub use abi_stable;
// abi_stable containers of the FFI structs, for the host; plugin code needs none of them.
/// The option type of the FFI structs' optional fields ([`SpecialTokens`]'s `bos`, ...),
/// for code that reads those structs; the author traits use `Option`.
pub use abi_stable::std_types::ROption;
#[doc(hidden)]
pub use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec, Tuple2};

/// ABI major version: plugins of another major are refused.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version: grows when the ABI gains appended items.
pub const ABI_MINOR: u32 = 3;
/// The ABI version as abi_stable checks it (`MAJOR.MINOR.0`).
pub const ABI_VERSION: &str = "1.3.0";
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
        assert_eq!(env!("CARGO_PKG_VERSION_MINOR").parse::<u32>().unwrap(), ABI_MINOR);
    }

    #[test]
    fn error_display_names_kind() {
        let e = BackendError::invalid("token 99 out of range");
        assert_eq!(e.to_string(), "invalid input: token 99 out of range");
        assert_eq!(e.message(), "token 99 out of range");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn capabilities_are_a_bitset() {
        let c = Capabilities::GENERATION | Capabilities::CONTEXT_SHIFT;
        assert!(c.contains(Capabilities::GENERATION));
        assert!(c.contains(Capabilities::empty()));
        assert!(!c.contains(Capabilities::GENERATION | Capabilities::EMBEDDINGS));
        assert_eq!(c.names(), ["generation", "context-shift"]);
        assert_eq!(c.to_string(), "generation, context-shift");
        assert_eq!(Capabilities::empty().to_string(), "none");
        assert_eq!(Capabilities::default(), Capabilities::empty());
        let mut all = Capabilities::empty();
        all |= Capabilities::EMBEDDINGS.union(Capabilities::PER_SEQUENCE_CONTEXT);
        assert_eq!(all.names(), ["embeddings", "per-sequence-context"]);
        // Bits of a later minor are kept and ignored by names().
        let future = Capabilities::from_bits(1 << 40 | 1);
        assert_eq!(future.names(), ["generation"]);
        assert_eq!(future.bits(), 1 << 40 | 1);
        assert_eq!(std::mem::size_of::<Capabilities>(), 8);
    }
}
