//! The side a plugin author writes: safe Rust traits, the panic guard and the log bridge.
//!
//! Implement [`Backend`], [`Model`] and [`Context`] for your engine, then export it with
//! [`crate::export_plugin!`]. The traits speak plain Rust (`String`, `Option<u32>`,
//! `Vec<u32>`, `Vec<(String, String)>`, `&str`, `&[T]` and the plain types of
//! [`crate::plain`]); no abi_stable type appears in them. Every call the host makes goes
//! through a guard that converts those types to the FFI structs and catches panics,
//! turning them into [`ErrorKind::Panic`] errors, so a bug in your engine never unwinds
//! into the host.

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RSlice, RStr, RString, RVec},
};

use crate::ffi::*;
use crate::plain::{Device, InitContext, LoadRequest, LoadSettings, ModelInfo, SpecialTokenIds};
use crate::types::*;

/// A backend engine, as its author writes it.
pub trait Backend: Send + Sync + 'static {
    /// The engine's model type.
    type Model: Model;
    /// Devices the engine computes on.
    fn devices(&self) -> Vec<Device>;
    /// Loads a model. Report a file that does not exist as [`ErrorKind::NotFound`], a file
    /// that does not parse as [`ErrorKind::InvalidInput`] and an architecture the engine
    /// lacks as [`ErrorKind::Unsupported`].
    fn load_model(&self, request: &LoadRequest) -> Result<Self::Model, BackendError>;
    /// One line about the engine build.
    fn describe(&self) -> String;
    // abi-1.3 {
    /// ABI 1.3. Serves this machine's devices on `endpoint` (`ADDR:PORT`) to engines in
    /// other processes or machines, in the engine's own remote protocol, and blocks while
    /// it serves (`corral worker` calls it). Return only on failure, with the reason.
    /// `settings` carries `n_threads` and engine-specific keys such as
    /// [`crate::EXTRA_CACHE_DIR`]. The default answers [`ErrorKind::Unsupported`].
    fn lend_devices(&self, endpoint: &str, settings: &LoadSettings) -> Result<(), BackendError> {
        let _ = (endpoint, settings);
        Err(BackendError::unsupported("this engine cannot lend its devices to other machines"))
    }
    // abi-1.3 }
}

/// A loaded model, as its author writes it.
pub trait Model: Send + Sync + 'static {
    /// The engine's context type.
    type Context: Context;
    /// Architecture, sizes and raw metadata.
    fn metadata(&self) -> ModelInfo;
    /// Vocabulary size.
    fn vocab_size(&self) -> u32;
    /// Special tokens.
    fn special_tokens(&self) -> SpecialTokenIds;
    /// What this model can do with this engine (ABI 1.2). Required, with no default: an
    /// engine must say what it can do, and claim nothing it has not implemented:
    /// [`Capabilities::GENERATION`] when contexts give logits,
    /// [`Capabilities::EMBEDDINGS`] when embedding contexts answer
    /// [`Context::embeddings`], [`Capabilities::CONTEXT_SHIFT`] when [`Context::kv_shift`]
    /// works, [`Capabilities::PER_SEQUENCE_CONTEXT`] when
    /// [`Model::new_context_per_sequence`] is implemented with a real per-sequence KV
    /// split (not the default, which makes a shared context). A panic here gives
    /// [`Capabilities::empty`].
    fn capabilities(&self) -> Capabilities;
    /// Text to tokens.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError>;
    /// The bytes of one token; an error for a token out of range.
    fn token_to_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError>;
    /// Tokens to text. The default concatenates [`Model::token_to_bytes`] and decodes
    /// lossily.
    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend(self.token_to_bytes(t)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    /// Creates a context.
    fn new_context(&self, params: &ContextParams) -> Result<Self::Context, BackendError>;
    // abi-1.1 {
    /// Creates a context whose KV cache is split evenly between its sequences: each of
    /// the `n_seq_max` sequences may hold up to `n_ctx / n_seq_max` positions (the engine
    /// may round that up), and may copy only whole sequences in `kv_copy`. The default
    /// makes a shared context, which keeps that promise too; an engine that overrides it
    /// with a real split declares [`Capabilities::PER_SEQUENCE_CONTEXT`].
    fn new_context_per_sequence(
        &self,
        params: &ContextParams,
    ) -> Result<Self::Context, BackendError> {
        self.new_context(params)
    }
    // abi-1.1 }
}

/// A context (KV cache plus batch decoder), as its author writes it.
pub trait Context: Send + 'static {
    /// Effective parameters.
    fn params(&self) -> ContextParams;
    /// Runs the model over a batch. Entries may belong to different sequences; each
    /// sequence's positions must continue what its KV cache holds. Validate every entry
    /// (token, position, sequence id) and answer [`ErrorKind::InvalidInput`] for one out
    /// of range ([`check_batch`] does that).
    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError>;
    /// Logits of batch entry `index` of the last decode (which must have asked for them).
    fn logits(&self, index: u32) -> Result<&[f32], BackendError>;
    /// The pooled embedding of sequence `seq` after the last decode (contexts made with
    /// `embeddings: true`).
    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError>;
    /// Removes positions `[p0, p1)` of sequence `seq` from the KV cache; `p1 < 0` means
    /// to the end; `seq < 0` means every sequence.
    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError>;
    /// Makes positions `[p0, p1)` of `src` visible to `dst` as well (`p1 < 0`: to the end).
    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError>;
    /// The largest position sequence `seq` holds, or `-1` when it is empty.
    fn kv_pos_max(&self, seq: u32) -> i32;
    /// Empties the KV cache.
    fn kv_clear(&mut self) -> Result<(), BackendError>;
    // abi-1.1 {
    /// Adds `delta` to the positions `[p0, p1)` of sequence `seq` (`p1 < 0`: to the end),
    /// re-encoding whatever depends on position (RoPE'd keys), so that a sequence can
    /// continue after `kv_remove` cut a hole in it (a context shift). The default answers
    /// `Unsupported`: the host then ends a generation that fills the context instead of
    /// shifting it. An engine that implements it declares
    /// [`Capabilities::CONTEXT_SHIFT`].
    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        let _ = (seq, p0, p1, delta);
        Err(BackendError::unsupported("this engine cannot shift positions in its KV cache"))
    }
    // abi-1.1 }
}

/// What a context accepts in one batch, for [`check_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most entries per batch (`ContextParams::n_batch`).
    pub n_batch: u32,
    /// Positions one sequence may hold: `n_ctx`, or `n_ctx / n_seq_max` (rounded as the
    /// engine does) for a per-sequence context.
    pub positions: u32,
    /// Sequence ids are `0..n_seq_max`.
    pub n_seq_max: u32,
    /// Token ids are `0..vocab_size`.
    pub vocab_size: u32,
}

impl BatchLimits {
    /// The limits of a context made with `params` (each sequence may use all of `n_ctx`)
    /// over a vocabulary of `vocab_size` tokens.
    pub fn for_context(params: &ContextParams, vocab_size: u32) -> BatchLimits {
        BatchLimits {
            n_batch: params.n_batch,
            positions: params.n_ctx,
            n_seq_max: params.n_seq_max,
            vocab_size,
        }
    }
}

/// A sequence id is one of `0..n_seq_max` (`ErrorKind::InvalidInput` otherwise), as
/// every `kv_*` call and every batch entry needs.
pub fn check_seq(seq: u32, n_seq_max: u32) -> Result<(), BackendError> {
    if seq < n_seq_max {
        Ok(())
    } else {
        Err(BackendError::invalid(format!(
            "sequence id {seq} is out of range: this context has n_seq_max = {n_seq_max}"
        )))
    }
}

/// The checks every `Context::decode` owes the host before its engine sees a batch: not
/// empty, at most `n_batch` entries, and every token, position and sequence id in range.
/// Each failure is an [`ErrorKind::InvalidInput`] naming the entry. Engine-specific rules
/// (positions continuing each sequence, room in the cache) stay with the engine.
pub fn check_batch(batch: &[BatchEntry], limits: &BatchLimits) -> Result<(), BackendError> {
    if batch.is_empty() {
        return Err(BackendError::invalid("cannot decode an empty batch"));
    }
    if batch.len() > limits.n_batch as usize {
        return Err(BackendError::invalid(format!(
            "batch of {} entries is larger than this context's n_batch of {}",
            batch.len(),
            limits.n_batch
        )));
    }
    for (i, e) in batch.iter().enumerate() {
        if e.token >= limits.vocab_size {
            return Err(BackendError::invalid(format!(
                "batch entry {i}: token {} is out of range (vocabulary size {})",
                e.token, limits.vocab_size
            )));
        }
        check_seq(e.seq, limits.n_seq_max)
            .map_err(|err| BackendError::invalid(format!("batch entry {i}: {}", err.message())))?;
        if e.pos >= limits.positions {
            return Err(BackendError::invalid(format!(
                "batch entry {i}: position {} is out of range: a sequence of this context holds \
                 {} positions",
                e.pos, limits.positions
            )));
        }
    }
    Ok(())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning a panic into an [`ErrorKind::Panic`] error that names `call`.
pub fn guard<T>(call: &str, f: impl FnOnce() -> Result<T, BackendError>) -> BackendResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            log::error!("plugin panicked in {call}: {msg}");
            RErr(BackendError::new(ErrorKind::Panic, format!("plugin panicked in {call}: {msg}")))
        }
    }
}

/// Like [`guard`] for calls that cannot report an error: a panic gives `fallback`.
fn guard_infallible<T>(call: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match guard(call, || Ok(f())) {
        ROk(v) => v,
        RErr(_) => fallback,
    }
}

struct GuardedBackend<B: Backend>(B);
struct GuardedModel<M: Model>(M);
struct GuardedContext<C: Context>(C);

impl<B: Backend> FfiBackend for GuardedBackend<B> {
    fn devices(&self) -> RVec<DeviceInfo> {
        guard_infallible("devices", Vec::new(), || {
            self.0.devices().into_iter().map(DeviceInfo::from).collect()
        })
        .into()
    }
    fn load_model(&self, spec: &ModelSpec) -> BackendResult<ModelBox> {
        guard("load_model", || {
            let model = self.0.load_model(&LoadRequest::from(spec))?;
            Ok(ModelBox::from_value(GuardedModel(model), TD_Opaque))
        })
    }
    fn describe(&self) -> RString {
        guard_infallible("describe", String::new(), || self.0.describe()).into()
    }
    // abi-1.3 {
    fn lend_devices(&self, endpoint: RStr<'_>, options: &LoadOptions) -> BackendResult<()> {
        guard("lend_devices", || {
            self.0.lend_devices(endpoint.as_str(), &LoadSettings::from(options.clone()))
        })
    }
    // abi-1.3 }
}

impl<M: Model> FfiModel for GuardedModel<M> {
    fn metadata(&self) -> ModelMetadata {
        guard_infallible("metadata", ModelInfo::default(), || self.0.metadata()).into()
    }
    fn vocab_size(&self) -> u32 {
        guard_infallible("vocab_size", 0, || self.0.vocab_size())
    }
    fn special_tokens(&self) -> SpecialTokens {
        guard_infallible("special_tokens", SpecialTokenIds::default(), || self.0.special_tokens())
            .into()
    }
    fn tokenize(
        &self,
        text: RStr<'_>,
        add_special: bool,
        parse_special: bool,
    ) -> BackendResult<RVec<u32>> {
        guard("tokenize", || Ok(self.0.tokenize(text.as_str(), add_special, parse_special)?.into()))
    }
    fn token_to_bytes(&self, token: u32) -> BackendResult<RVec<u8>> {
        guard("token_to_bytes", || Ok(self.0.token_to_bytes(token)?.into()))
    }
    fn detokenize(&self, tokens: RSlice<'_, u32>) -> BackendResult<RString> {
        guard("detokenize", || Ok(self.0.detokenize(tokens.as_slice())?.into()))
    }
    fn new_context(&self, params: &ContextParams) -> BackendResult<ContextBox> {
        guard("new_context", || {
            let ctx = self.0.new_context(params)?;
            Ok(ContextBox::from_value(GuardedContext(ctx), TD_Opaque))
        })
    }
    // abi-1.1 {
    fn new_context_per_sequence(&self, params: &ContextParams) -> BackendResult<ContextBox> {
        guard("new_context_per_sequence", || {
            let ctx = self.0.new_context_per_sequence(params)?;
            Ok(ContextBox::from_value(GuardedContext(ctx), TD_Opaque))
        })
    }
    // abi-1.1 }
    // abi-1.2 {
    fn capabilities(&self) -> Capabilities {
        guard_infallible("capabilities", Capabilities::empty(), || self.0.capabilities())
    }
    // abi-1.2 }
}

impl<C: Context> FfiContext for GuardedContext<C> {
    fn params(&self) -> ContextParams {
        guard_infallible("params", ContextParams::default(), || self.0.params())
    }
    fn decode(&mut self, batch: RSlice<'_, BatchEntry>) -> BackendResult<()> {
        guard("decode", || self.0.decode(batch.as_slice()))
    }
    fn logits(&self, index: u32, out: &mut RVec<f32>) -> BackendResult<()> {
        guard("logits", || {
            let l = self.0.logits(index)?;
            out.clear();
            out.extend_from_slice(l);
            Ok(())
        })
    }
    fn embeddings(&self, seq: u32) -> BackendResult<RVec<f32>> {
        guard("embeddings", || Ok(self.0.embeddings(seq)?.into()))
    }
    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> BackendResult<()> {
        guard("kv_remove", || self.0.kv_remove(seq, p0, p1))
    }
    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> BackendResult<()> {
        guard("kv_copy", || self.0.kv_copy(src, dst, p0, p1))
    }
    fn kv_pos_max(&self, seq: u32) -> i32 {
        guard_infallible("kv_pos_max", -1, || self.0.kv_pos_max(seq))
    }
    fn kv_clear(&mut self) -> BackendResult<()> {
        guard("kv_clear", || self.0.kv_clear())
    }
    // abi-1.1 {
    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> BackendResult<()> {
        guard("kv_shift", || self.0.kv_shift(seq, p0, p1, delta))
    }
    // abi-1.1 }
}

/// Forwards the `log` crate's records to the host's sink.
struct HostLogger {
    sink: LogSinkBox,
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        };
        let message = record.args().to_string();
        self.sink.log(level, RStr::from(record.target()), RStr::from(message.as_str()));
    }
    fn flush(&self) {}
}

fn install_logger(services: &mut HostServices) {
    let filter = match services.max_log_level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    // The sink moves into the logger; the plugin keeps a no-op sink in its services.
    let sink = std::mem::replace(&mut services.log, LogSinkBox::from_value(NullSink, TD_Opaque));
    if log::set_boxed_logger(Box::new(HostLogger { sink })).is_ok() {
        log::set_max_level(filter);
    }
}

struct NullSink;
impl FfiLogSink for NullSink {
    fn log(&self, _: LogLevel, _: RStr<'_>, _: RStr<'_>) {}
}

#[doc(hidden)]
pub fn __init_guarded<B: Backend>(
    mut services: HostServices,
    init: fn(&InitContext) -> Result<B, BackendError>,
) -> BackendResult<BackendBox> {
    install_logger(&mut services);
    let context = InitContext::from(&services);
    guard("init", || {
        let backend = init(&context)?;
        Ok(BackendBox::from_value(GuardedBackend(backend), TD_Opaque))
    })
}

#[doc(hidden)]
pub fn __make_root(
    abi_major: u32,
    info: extern "C" fn() -> PluginInfo,
    init: extern "C" fn(HostServices) -> BackendResult<BackendBox>,
) -> PluginRootRef {
    PluginRoot { abi_major, abi_minor: crate::ABI_MINOR, info, init }.leak_into_prefix()
}

/// Exports a backend as a corral plugin. Use it once, at the root of a `cdylib` crate:
///
/// ```text
/// corral_backend_api::export_plugin! {
///     name: "my-engine",
///     variant: "cpu",
///     version: env!("CARGO_PKG_VERSION"),
///     init: MyBackend::init,   // fn(&InitContext) -> Result<MyBackend, BackendError>
/// }
/// ```
///
/// `name` and `variant` must match the plugin's manifest.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, variant: $variant:expr, version: $version:expr, init: $init:expr $(,)?) => {
        $crate::export_plugin! { @abi_major $crate::ABI_MAJOR, name: $name, variant: $variant, version: $version, init: $init }
    };
    (@abi_major $major:expr, name: $name:expr, variant: $variant:expr, version: $version:expr, init: $init:expr $(,)?) => {
        /// The ABI major this plugin was built for, readable before the library's root
        /// module is touched.
        #[unsafe(no_mangle)]
        pub static corral_plugin_abi_major: u32 = $major;

        #[doc(hidden)]
        pub fn __corral_plugin_root() -> $crate::ffi::PluginRootRef {
            extern "C" fn info() -> $crate::types::PluginInfo {
                $crate::types::PluginInfo {
                    name: $crate::abi_stable::std_types::RString::from($name),
                    variant: $crate::abi_stable::std_types::RString::from($variant),
                    version: $crate::abi_stable::std_types::RString::from($version),
                    abi_major: $major,
                    abi_minor: $crate::ABI_MINOR,
                }
            }
            extern "C" fn init(
                services: $crate::ffi::HostServices,
            ) -> $crate::types::BackendResult<$crate::ffi::BackendBox> {
                $crate::plugin::__init_guarded(services, $init)
            }
            $crate::plugin::__make_root($major, info, init)
        }

        // What abi_stable's `#[export_root_module]` expands to, written with `$crate` paths
        // so that the plugin crate needs no direct dependency on abi_stable.
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __CORRAL_ROOT_MODULE_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__corral_plugin_root)
            }
            // SAFETY: `erased_module` returns the root module of type `PluginRootRef`, whose
            // layout constants are the ones passed here, as abi_stable's own attribute does.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::ffi::PluginRootRef>(
                    erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_batch_names_the_bad_entry() {
        let limits = BatchLimits { n_batch: 4, positions: 16, n_seq_max: 2, vocab_size: 100 };
        let e = |token, pos, seq| BatchEntry { token, pos, seq, logits: false };
        assert!(check_batch(&[e(1, 0, 0), e(99, 15, 1)], &limits).is_ok());
        let cases: [(Vec<BatchEntry>, &str); 5] = [
            (vec![], "empty batch"),
            (vec![e(1, 0, 0); 5], "larger than this context's n_batch of 4"),
            (vec![e(1, 0, 0), e(100, 1, 0)], "batch entry 1: token 100 is out of range"),
            (vec![e(1, 0, 2)], "batch entry 0: sequence id 2 is out of range"),
            (vec![e(1, 16, 0)], "batch entry 0: position 16 is out of range"),
        ];
        for (batch, want) in cases {
            let err = check_batch(&batch, &limits).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput);
            assert!(err.message.contains(want), "{} does not say {want:?}", err.message);
        }
    }
}
