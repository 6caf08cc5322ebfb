//! The ABI proper: the root module and the trait objects that cross the library boundary.
//!
//! Hidden from the crate's documentation: plugin authors never touch it. They implement
//! the safe traits of [`crate::plugin`] over plain Rust types, and
//! [`crate::export_plugin!`] wraps them in guards that convert those types to the FFI
//! structs of [`crate::types`] and catch panics. The host calls these objects directly.
//!
//! # How the host loads a plugin
//!
//! - It reads the plugin's manifest first, then opens the library once per process (a
//!   library is never unloaded, as objects it made may outlive any scope) and reads the
//!   exported `corral_plugin_abi_major` static: another major is refused with both
//!   versions named.
//! - It reads the ABI version from abi_stable's library header (`1.N.0`). A host loads
//!   a plugin of any minor of its major. For its own minor or a newer one, abi_stable's
//!   layout check runs as usual (a library's vtables may have more methods than its
//!   user's; the host never calls the ones it does not know). For an **older** minor it
//!   runs the other way round (the plugin's layout as the interface, the host's as the
//!   implementation), and the calls the plugin lacks are answered on the host's side:
//!   each method appended after 1.0 has a body here, which abi_stable runs when the
//!   plugin's vtable lacks the method (it checks the vtable's own field bits).
//! - abi_stable's layout check of [`PluginRoot`] runs on every load, in one direction
//!   or the other.
//! - It calls [`PluginRoot::init`] once per process and keeps the backend it returns.
//!
//! Minors grow the ABI by appending only: fields after the last field of
//! [`PluginRoot`], methods after the last method of a `sabi_trait`, each appended block
//! marked `// abi-1.N {` ... `// abi-1.N }` (the end-to-end tests strip them to build a
//! plugin of an older minor). An appended method needs a body: the answer for plugins
//! that lack it.

// sabi_trait generates impls inside constants.
#![allow(non_local_definitions)]

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RSlice, RStr, RString, RVec},
};

use crate::types::*;

/// Receives log records from the plugin; implemented by the host, which forwards them to
/// its `tracing` output.
#[sabi_trait]
pub trait FfiLogSink: Send + Sync {
    /// Records one log line.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);
}

/// An owned, type-erased [`FfiLogSink`].
pub type LogSinkBox = FfiLogSink_TO<'static, RBox<()>>;

/// What the host gives a plugin at init.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostServices {
    /// Where the plugin's log records go. [`crate::export_plugin!`] installs it as the
    /// plugin's `log` logger, so plugins just use the `log` macros.
    pub log: LogSinkBox,
    /// The plugin's options from the host's config (`[backends.NAME]` table), as a JSON
    /// object. Parse with [`HostServices::options`].
    pub options_json: RString,
    /// The host's version, for messages.
    pub host_version: RString,
    /// The most verbose level the host will show; records above it need not be sent.
    pub max_log_level: LogLevel,
}

impl HostServices {
    /// Deserialises the plugin's options. An empty options table gives `T::default()`
    /// through serde's `#[serde(default)]`; unknown keys are the plugin's call. Plugin
    /// code sees the same call on [`crate::InitContext::options`].
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, BackendError> {
        crate::plain::parse_options(&self.options_json)
    }
}

/// A loaded, initialised backend: an engine and the devices it drives.
#[sabi_trait]
pub trait FfiBackend: Send + Sync {
    /// The compute devices this backend will use.
    fn devices(&self) -> RVec<DeviceInfo>;
    /// Loads a model.
    fn load_model(&self, spec: &ModelSpec) -> BackendResult<ModelBox>;
    /// A one-line description of the engine build (version, compiled features).
    #[sabi(last_prefix_field)]
    fn describe(&self) -> RString;
    // abi-1.3 {  (tests/tests/plugins.rs strips these blocks to build older plugins)
    /// ABI 1.3. Lends this machine's devices to engines in other processes or on other
    /// machines: serves them on `endpoint` (`ADDR:PORT`) in the engine's own remote
    /// protocol (llama.cpp: ggml's RPC server) and blocks for as long as it serves. It
    /// returns only when serving fails or cannot start (an error saying why). `options`
    /// carries `n_threads` and engine-specific keys (`cache_dir`).
    ///
    /// The body is the answer for a plugin built before 1.3, whose vtable lacks the
    /// method, and the default of engines that cannot lend: `Unsupported`.
    fn lend_devices(&self, endpoint: RStr<'_>, options: &LoadOptions) -> BackendResult<()> {
        let _ = (endpoint, options);
        abi_stable::std_types::RResult::RErr(BackendError::unsupported(
            "this engine cannot lend its devices to other machines",
        ))
    }
    // abi-1.3 }
}

/// An owned, type-erased [`FfiBackend`].
pub type BackendBox = FfiBackend_TO<'static, RBox<()>>;

/// A loaded model: weights, vocabulary, metadata. Shared by all of its contexts.
#[sabi_trait]
pub trait FfiModel: Send + Sync {
    /// Architecture, sizes and raw metadata.
    fn metadata(&self) -> ModelMetadata;
    /// Number of tokens in the vocabulary.
    fn vocab_size(&self) -> u32;
    /// bos, eos, end-of-turn and end-of-generation tokens.
    fn special_tokens(&self) -> SpecialTokens;
    /// Text to tokens. `add_special` adds bos/eos as the model wants; `parse_special`
    /// turns the text of special tokens (`<|im_start|>`) into those tokens.
    fn tokenize(
        &self,
        text: RStr<'_>,
        add_special: bool,
        parse_special: bool,
    ) -> BackendResult<RVec<u32>>;
    /// The bytes of one token. A token may hold part of a UTF-8 character, so these are
    /// bytes, not text; the host assembles characters when it streams.
    fn token_to_bytes(&self, token: u32) -> BackendResult<RVec<u8>>;
    /// Tokens to text (lossy where the tokens do not form valid UTF-8).
    fn detokenize(&self, tokens: RSlice<'_, u32>) -> BackendResult<RString>;
    /// Creates a context (a KV cache and its compute buffers).
    #[sabi(last_prefix_field)]
    fn new_context(&self, params: &ContextParams) -> BackendResult<ContextBox>;
    // abi-1.1 {  (tests/tests/plugins.rs strips these blocks to build a 1.0 plugin)
    /// ABI 1.1. Creates a context whose KV cache is split evenly between its sequences:
    /// each of the `n_seq_max` sequences may hold up to `n_ctx / n_seq_max` positions
    /// (the engine may round that up). A weaker promise than [`FfiModel::new_context`],
    /// which engines may use to attend over one sequence's cells only; an engine that
    /// gains nothing from it answers with a shared context. Such a context may copy only
    /// whole sequences in `kv_copy` (`ErrorKind::Unsupported` for a range).
    ///
    /// The body is the host's answer for a plugin built against 1.0, whose vtable lacks
    /// the method (abi_stable runs it when the field is missing): a shared context.
    fn new_context_per_sequence(&self, params: &ContextParams) -> BackendResult<ContextBox> {
        self.new_context(params)
    }
    // abi-1.1 }
    // abi-1.2 {  (tests/tests/plugins.rs strips these blocks too)
    /// ABI 1.2. What the model can do: a [`Capabilities`] set the engine declares
    /// (generation, embeddings, context shift, a real per-sequence context). Infallible;
    /// a plugin that panics here answers [`Capabilities::empty`].
    ///
    /// The body is the answer for a plugin built against 1.0 or 1.1, whose vtable lacks
    /// the method: generation only, the one thing every engine of those minors did. The
    /// host's loader derives a better answer for such plugins (it asks a 1.1 plugin's
    /// `kv_shift`), see `corral_plugin_host::in_process`.
    fn capabilities(&self) -> Capabilities {
        Capabilities::GENERATION
    }
    // abi-1.2 }
}

/// An owned, type-erased [`FfiModel`].
pub type ModelBox = FfiModel_TO<'static, RBox<()>>;

/// A context: a KV cache holding several sequences, and the batch decoder over it.
/// The host drives a context from one thread at a time (it is `Send`, not `Sync`).
#[sabi_trait]
pub trait FfiContext: Send {
    /// Parameters the context was made with, after the engine's adjustments.
    fn params(&self) -> ContextParams;
    /// Runs the model over a batch. Entries may belong to different sequences; each
    /// sequence's positions must continue what its KV cache holds.
    fn decode(&mut self, batch: RSlice<'_, BatchEntry>) -> BackendResult<()>;
    /// Copies the logits of batch entry `index` of the last `decode` (which must have
    /// asked for them) into `out`, replacing its contents.
    fn logits(&self, index: u32, out: &mut RVec<f32>) -> BackendResult<()>;
    /// The pooled embedding of sequence `seq` after the last `decode` (contexts made with
    /// `embeddings: true`).
    fn embeddings(&self, seq: u32) -> BackendResult<RVec<f32>>;
    /// Removes positions `[p0, p1)` of sequence `seq` from the KV cache; `p1 < 0` means
    /// to the end; `seq < 0` means every sequence.
    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> BackendResult<()>;
    /// Makes positions `[p0, p1)` of `src` visible to `dst` as well (`p1 < 0`: to the end).
    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> BackendResult<()>;
    /// The largest position sequence `seq` holds, or `-1` when it is empty.
    fn kv_pos_max(&self, seq: u32) -> i32;
    /// Empties the whole KV cache.
    #[sabi(last_prefix_field)]
    fn kv_clear(&mut self) -> BackendResult<()>;
    // abi-1.1 {
    /// ABI 1.1. Adds `delta` to the positions `[p0, p1)` of sequence `seq` (`p1 < 0`: to
    /// the end), re-encoding whatever depends on position (RoPE'd keys), so that a
    /// sequence can continue after `kv_remove` cut a hole in it (a context shift).
    /// `ErrorKind::Unsupported` when the engine cannot (see
    /// [`Capabilities::CONTEXT_SHIFT`]).
    ///
    /// The body is the host's answer for a plugin built against 1.0, whose vtable lacks
    /// the method: `Unsupported`.
    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> BackendResult<()> {
        let _ = (seq, p0, p1, delta);
        abi_stable::std_types::RResult::RErr(BackendError::unsupported(
            "kv_shift: the plugin was built against corral-backend-api 1.0, which has no kv_shift",
        ))
    }
    // abi-1.1 }
}

/// An owned, type-erased [`FfiContext`].
pub type ContextBox = FfiContext_TO<'static, RBox<()>>;

/// The root module every plugin library exports. A prefix type: later ABI minors append
/// fields after the last one, and a host reading an older plugin sees them as absent.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// ABI major the plugin was built for; the host refuses any other.
    pub abi_major: u32,
    /// ABI minor the plugin was built for. A host loads plugins of any minor of its
    /// major (it reads the version from the library header, before this struct, to
    /// choose the direction of the layout check).
    pub abi_minor: u32,
    /// The plugin's identity.
    pub info: extern "C" fn() -> PluginInfo,
    /// Initialises the engine. The host opens a plugin library once per process and calls
    /// its `init` once per process; the backend it returns lives until the process ends.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(services: HostServices) -> BackendResult<BackendBox>,
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "corral_plugin";
    const NAME: &'static str = "corral_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(crate::ABI_VERSION);
}
