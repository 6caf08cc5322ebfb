//! The in-process engine handles: the plugin's objects called directly, in this
//! process. Fastest (no copy beyond the logits into a host-owned buffer), but a plugin
//! that aborts or segfaults takes the process with it.
//!
//! A plugin built against an older ABI minor lacks the calls appended since; the host
//! answers them here, from the minor the loader read in the library header:
//! `new_context_per_sequence` (1.1) is a shared context (`new_context`), `kv_shift`
//! (1.1) is `Unsupported`, and `capabilities` (1.2) is derived as the host did before
//! 1.2: generation, plus context shift when a 1.1 plugin's `kv_shift` by 0 on a small
//! probe context succeeds (see [`derived_capabilities`]).

use corral_backend_api::{
    BackendBox, BackendError, BatchEntry, Capabilities, ContextBox, ContextParams, LoadOptions,
    ModelBox, ModelSpec, RString, RVec,
    plain::{Device, ModelInfo, SpecialTokenIds},
};

use crate::engine::{BackendHandle, ContextHandle, ContextKind, ModelHandle};

/// A backend object of a plugin loaded into this process.
pub struct InProcessBackend {
    inner: BackendBox,
    /// The ABI minor the plugin was built for.
    abi_minor: u32,
}

impl InProcessBackend {
    /// Wraps the backend a plugin's init returned; `abi_minor` is the minor the plugin
    /// was built for.
    pub(crate) fn new(inner: BackendBox, abi_minor: u32) -> InProcessBackend {
        InProcessBackend { inner, abi_minor }
    }
}

/// The ABI minor that appended `Model::new_context_per_sequence` and `Context::kv_shift`.
const MINOR_PER_SEQUENCE_AND_SHIFT: u32 = 1;
/// The ABI minor that appended `Model::capabilities`.
const MINOR_CAPABILITIES: u32 = 2;

/// What a model of a plugin built for `abi_minor` can do: its own answer from 1.2 on;
/// for older plugins, what the host assumed before 1.2 asked: every engine generates,
/// and a 1.1 engine shifts when `kv_shift` by 0 on a small context succeeds (the
/// question the engine loop asked then). Nothing else is claimed: an older engine that
/// does embeddings still answers them, it just does not declare them.
pub fn derived_capabilities(model: &ModelBox, abi_minor: u32) -> Capabilities {
    if abi_minor >= MINOR_CAPABILITIES {
        return model.capabilities();
    }
    let mut caps = Capabilities::GENERATION;
    if abi_minor >= MINOR_PER_SEQUENCE_AND_SHIFT {
        let params = ContextParams { n_ctx: 64, n_batch: 64, n_seq_max: 1, ..Default::default() };
        match model.new_context(&params).into_result() {
            Ok(mut ctx) => {
                if ctx.kv_shift(0, 0, -1, 0).into_result().is_ok() {
                    caps |= Capabilities::CONTEXT_SHIFT;
                }
            }
            Err(e) => tracing::debug!(
                "no probe context for the capabilities of an ABI 1.{abi_minor} plugin: {e}"
            ),
        }
    }
    caps
}

impl BackendHandle for InProcessBackend {
    fn devices(&self) -> Vec<Device> {
        self.inner.devices().into_iter().map(Device::from).collect()
    }

    fn describe(&self) -> String {
        self.inner.describe().into_string()
    }

    fn load_model(
        &self,
        path: &str,
        format: &str,
        options: LoadOptions,
    ) -> Result<Box<dyn ModelHandle>, BackendError> {
        let spec = ModelSpec { path: RString::from(path), format: RString::from(format), options };
        let inner = self.inner.load_model(&spec).into_result()?;
        let capabilities = derived_capabilities(&inner, self.abi_minor);
        Ok(Box::new(InProcessModel { inner, abi_minor: self.abi_minor, capabilities }))
    }

    /// A plugin built before 1.3 lacks the call: abi_stable runs the body of
    /// `FfiBackend::lend_devices`, which answers `Unsupported`.
    fn lend_devices(&self, endpoint: &str, options: LoadOptions) -> Result<(), BackendError> {
        self.inner.lend_devices(endpoint.into(), &options).into_result()
    }
}

struct InProcessModel {
    inner: ModelBox,
    abi_minor: u32,
    /// Asked (or derived) once at load.
    capabilities: Capabilities,
}

impl ModelHandle for InProcessModel {
    fn metadata(&self) -> ModelInfo {
        lossy_metadata(&self.inner.metadata())
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.inner.special_tokens().into()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn vocab_size(&self) -> u32 {
        self.inner.vocab_size()
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        Ok(self.inner.tokenize(text.into(), add_special, parse_special).into_result()?.into_vec())
    }

    fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        Ok(self.inner.token_to_bytes(token).into_result()?.into_vec())
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        Ok(self.inner.detokenize(tokens.into()).into_result()?.into_string())
    }

    fn new_context(
        &self,
        params: &ContextParams,
        kind: ContextKind,
    ) -> Result<Box<dyn ContextHandle>, BackendError> {
        let per_sequence =
            kind == ContextKind::PerSequence && self.abi_minor >= MINOR_PER_SEQUENCE_AND_SHIFT;
        let inner = if per_sequence {
            self.inner.new_context_per_sequence(params)
        } else {
            self.inner.new_context(params)
        }
        .into_result()?;
        Ok(Box::new(InProcessContext { inner, logits: RVec::new() }))
    }
}

struct InProcessContext {
    inner: ContextBox,
    /// Host-owned logits buffer, reused for every token.
    logits: RVec<f32>,
}

impl ContextHandle for InProcessContext {
    fn params(&self) -> ContextParams {
        self.inner.params()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.inner.decode(batch.into()).into_result()
    }

    fn logits(&mut self, index: u32) -> Result<&mut [f32], BackendError> {
        self.inner.logits(index, &mut self.logits).into_result()?;
        Ok(self.logits.as_mut_slice())
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        Ok(self.inner.embeddings(seq).into_result()?.into_vec())
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_remove(seq, p0, p1).into_result()
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.inner.kv_copy(src, dst, p0, p1).into_result()
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        self.inner.kv_pos_max(seq)
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.inner.kv_clear().into_result()
    }

    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.inner.kv_shift(seq, p0, p1, delta).into_result()
    }
}

/// A string from a plugin, with any bytes that are not UTF-8 replaced (U+FFFD). An
/// `RString` is meant to hold UTF-8, but nothing on the plugin's side enforces it, and
/// one that does not broke the worker's channel (the host could not decode the answer).
fn lossy(s: &RString) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// The plugin's metadata in plain form, every string made valid UTF-8 ([`lossy`]).
pub(crate) fn lossy_metadata(m: &corral_backend_api::ModelMetadata) -> ModelInfo {
    ModelInfo {
        architecture: lossy(&m.architecture),
        name: lossy(&m.name),
        parameter_count: m.parameter_count,
        context_length: m.context_length,
        embedding_length: m.embedding_length,
        block_count: m.block_count,
        quantization: lossy(&m.quantization),
        size_bytes: m.size_bytes,
        kv: m.kv.iter().map(|t| (lossy(&t.0), lossy(&t.1))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_strings_that_are_not_utf8_are_replaced() {
        let bad = |bytes: &[u8]| {
            // SAFETY: not UTF-8 on purpose: the bytes a plugin breaking the contract
            // hands over; `lossy` reads them as bytes only.
            RString::from(unsafe { std::str::from_utf8_unchecked(bytes) })
        };
        let m = corral_backend_api::ModelMetadata {
            architecture: bad(b"lla\xffma"),
            name: "ok".into(),
            parameter_count: 1,
            context_length: 2,
            embedding_length: 3,
            block_count: 4,
            quantization: "F32".into(),
            size_bytes: 5,
            kv: vec![corral_backend_api::Tuple2(bad(b"k\xfe"), bad(b"\xc3"))].into(),
        };
        let info = lossy_metadata(&m);
        assert_eq!(info.architecture, "lla\u{fffd}ma");
        assert_eq!(info.kv, vec![("k\u{fffd}".to_string(), "\u{fffd}".to_string())]);
        assert_eq!((info.name.as_str(), info.context_length), ("ok", 2));
    }
}
