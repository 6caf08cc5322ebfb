//! The in-process engine handles: the plugin's objects called directly, in this
//! process. Fastest (no copy beyond the logits into a host-owned buffer), but a plugin
//! that aborts or segfaults takes the process with it.

use corral_backend_api::{
    BackendBox, BackendError, BatchEntry, Capabilities, ContextBox, ContextParams, LoadOptions,
    ModelBox, ModelSpec, RString, RVec,
    plain::{Device, ModelInfo, SpecialTokenIds},
};

use crate::engine::{BackendHandle, ContextHandle, ContextKind, ModelHandle};

/// A backend object of a plugin loaded into this process.
pub struct InProcessBackend {
    inner: BackendBox,
}

impl InProcessBackend {
    /// Wraps the backend a plugin's init returned.
    pub(crate) fn new(inner: BackendBox) -> InProcessBackend {
        InProcessBackend { inner }
    }
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
        Ok(Box::new(InProcessModel { inner }))
    }
}

struct InProcessModel {
    inner: ModelBox,
}

impl ModelHandle for InProcessModel {
    fn metadata(&self) -> ModelInfo {
        self.inner.metadata().into()
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.inner.special_tokens().into()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
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
        let inner = match kind {
            ContextKind::Shared => self.inner.new_context(params),
            ContextKind::PerSequence => self.inner.new_context_per_sequence(params),
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
