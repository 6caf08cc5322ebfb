//! The engine handles over a worker process: a [`WorkerBackend`] starts one worker per
//! model it loads; the model and its contexts forward every call to that worker.
//! Logits rows come back through a shared-memory file per context, so a decode step
//! costs one round trip and no vocabulary-sized copy through the socket.

use std::{path::PathBuf, sync::Arc};

use corral_backend_api::{
    BackendError, BatchEntry, Capabilities, ContextParams, LoadOptions,
    plain::{Device, ModelInfo, SpecialTokenIds},
};

use super::{
    process::{WorkerCommand, WorkerProcess},
    protocol::{Answer, Call, WireEntry, WireLoadOptions},
    shm::SharedRows,
};
use crate::engine::{BackendHandle, ContextHandle, ContextKind, ModelHandle};

fn unexpected(call: &str, a: &Answer) -> BackendError {
    BackendError::internal(format!("the engine worker answered {call} with {a:?}"))
}

/// A plugin served by worker processes, one per loaded model.
pub struct WorkerBackend {
    cmd: WorkerCommand,
    manifest_path: PathBuf,
    options_json: String,
    label: String,
    devices: Vec<Device>,
    describe: String,
    version: String,
}

impl WorkerBackend {
    /// Checks that the plugin opens and initialises in a worker (which then ends), and
    /// returns the backend that starts a worker per model.
    pub fn start(
        cmd: WorkerCommand,
        manifest_path: PathBuf,
        options_json: String,
        label: String,
    ) -> Result<WorkerBackend, BackendError> {
        let worker = WorkerProcess::spawn(&cmd, &label)?;
        let (version, devices, describe) = init(&worker, &manifest_path, &options_json)?;
        worker.shutdown();
        Ok(WorkerBackend { cmd, manifest_path, options_json, label, devices, describe, version })
    }

    /// The version the plugin reports.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn init(
    worker: &WorkerProcess,
    manifest_path: &std::path::Path,
    options_json: &str,
) -> Result<(String, Vec<Device>, String), BackendError> {
    let call = Call::Init {
        manifest_path: manifest_path.to_path_buf(),
        options_json: options_json.to_string(),
    };
    match worker.call(&worker.model_channel, &call)? {
        Answer::Inited { version, devices, describe } => {
            Ok((version, devices.into_iter().map(Device::from).collect(), describe))
        }
        a => Err(unexpected("init", &a)),
    }
}

impl BackendHandle for WorkerBackend {
    fn devices(&self) -> Vec<Device> {
        self.devices.clone()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn isolation(&self) -> &'static str {
        "process"
    }

    fn load_model(
        &self,
        path: &str,
        format: &str,
        options: LoadOptions,
    ) -> Result<Box<dyn ModelHandle>, BackendError> {
        let worker = Arc::new(WorkerProcess::spawn(&self.cmd, &self.label)?);
        init(&worker, &self.manifest_path, &self.options_json)?;
        let call = Call::LoadModel {
            path: path.to_string(),
            format: format.to_string(),
            options: WireLoadOptions::from(&options),
        };
        let (info, special, vocab_size, capabilities) =
            match worker.call(&worker.model_channel, &call)? {
                Answer::Loaded { info, special, vocab_size, capabilities } => {
                    (info.into(), special.into(), vocab_size, capabilities)
                }
                a => return Err(unexpected("load_model", &a)),
            };
        let table = match worker.call(&worker.model_channel, &Call::TokenTable)? {
            Answer::Table(t) => t,
            a => return Err(unexpected("token table", &a)),
        };
        tracing::info!(worker = %worker.label, model = path, "model loaded in an engine worker");
        Ok(Box::new(WorkerModel {
            worker,
            info,
            special,
            vocab_size,
            capabilities: super::protocol::capabilities(capabilities),
            table,
        }))
    }
}

/// A model loaded in a worker. Token bytes are answered from a copy of the vocabulary
/// taken at load, so sampling never waits on the worker.
struct WorkerModel {
    worker: Arc<WorkerProcess>,
    info: ModelInfo,
    special: SpecialTokenIds,
    vocab_size: u32,
    capabilities: Capabilities,
    table: Vec<Vec<u8>>,
}

impl ModelHandle for WorkerModel {
    fn metadata(&self) -> ModelInfo {
        self.info.clone()
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.special.clone()
    }

    fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn health(&self) -> Result<(), String> {
        match self.worker.exited() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn worker_pid(&self) -> Option<u32> {
        Some(self.worker.pid())
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let call = Call::Tokenize { text: text.to_string(), add_special, parse_special };
        match self.worker.call(&self.worker.model_channel, &call)? {
            Answer::Tokens(t) => Ok(t),
            a => Err(unexpected("tokenize", &a)),
        }
    }

    fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        self.table.get(token as usize).cloned().ok_or_else(|| {
            BackendError::invalid(format!(
                "token {token} is out of range (the vocabulary has {} tokens)",
                self.vocab_size
            ))
        })
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        let call = Call::Detokenize { tokens: tokens.to_vec() };
        match self.worker.call(&self.worker.model_channel, &call)? {
            Answer::Text(t) => Ok(t),
            a => Err(unexpected("detokenize", &a)),
        }
    }

    fn new_context(
        &self,
        params: &ContextParams,
        kind: ContextKind,
    ) -> Result<Box<dyn ContextHandle>, BackendError> {
        let call = Call::NewContext {
            params: params.into(),
            per_sequence: kind == ContextKind::PerSequence,
        };
        match self.worker.call(&self.worker.context_channel, &call)? {
            Answer::Context { id, params, shm_path, rows } => {
                let rows = SharedRows::open_host(&shm_path, rows, self.vocab_size)?;
                Ok(Box::new(WorkerContext {
                    worker: self.worker.clone(),
                    id,
                    params: params.into(),
                    rows,
                    in_rows: Vec::new(),
                    fallback: Vec::new(),
                }))
            }
            a => Err(unexpected("new_context", &a)),
        }
    }
}

impl Drop for WorkerModel {
    fn drop(&mut self) {
        self.worker.shutdown();
    }
}

/// A context in a worker.
struct WorkerContext {
    worker: Arc<WorkerProcess>,
    id: u32,
    params: ContextParams,
    rows: SharedRows,
    /// The batch indices whose logits rows the last decode put in shared memory.
    in_rows: Vec<u32>,
    /// A row fetched through the socket (an index beyond the shared rows).
    fallback: Vec<f32>,
}

impl WorkerContext {
    fn call(&self, call: &Call) -> Result<Answer, BackendError> {
        self.worker.call(&self.worker.context_channel, call)
    }

    fn unit(&self, what: &str, call: &Call) -> Result<(), BackendError> {
        match self.call(call)? {
            Answer::Unit => Ok(()),
            a => Err(unexpected(what, &a)),
        }
    }
}

impl ContextHandle for WorkerContext {
    fn params(&self) -> ContextParams {
        self.params.clone()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.in_rows.clear();
        let call =
            Call::Decode { ctx: self.id, batch: batch.iter().map(WireEntry::from).collect() };
        match self.call(&call)? {
            Answer::Decoded { indices } => {
                self.in_rows = indices;
                Ok(())
            }
            a => Err(unexpected("decode", &a)),
        }
    }

    fn logits(&mut self, index: u32) -> Result<&mut [f32], BackendError> {
        if let Some(row) = self.in_rows.iter().position(|&i| i == index) {
            return self.rows.row_mut(row);
        }
        match self.call(&Call::Logits { ctx: self.id, index })? {
            Answer::Floats(f) => {
                self.fallback = f;
                Ok(self.fallback.as_mut_slice())
            }
            a => Err(unexpected("logits", &a)),
        }
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        match self.call(&Call::Embeddings { ctx: self.id, seq })? {
            Answer::Floats(f) => Ok(f),
            a => Err(unexpected("embeddings", &a)),
        }
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.unit("kv_remove", &Call::KvRemove { ctx: self.id, seq, p0, p1 })
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.unit("kv_copy", &Call::KvCopy { ctx: self.id, src, dst, p0, p1 })
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        match self.call(&Call::KvPosMax { ctx: self.id, seq }) {
            Ok(Answer::Int(p)) => p,
            _ => -1,
        }
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.unit("kv_clear", &Call::KvClear { ctx: self.id })
    }

    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.unit("kv_shift", &Call::KvShift { ctx: self.id, seq, p0, p1, delta })
    }
}

impl Drop for WorkerContext {
    fn drop(&mut self) {
        if self.worker.dead().is_none() {
            let _ = self.call(&Call::DropContext { ctx: self.id });
        }
    }
}
