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
    abi_note: Option<String>,
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
        // The startup check gets [`INIT_TIMEOUT`] at most: a plugin whose init hangs must
        // not hold `corral serve` for the engine timeout (five minutes by default).
        let check = WorkerCommand { watchdog: cmd.watchdog.min(INIT_TIMEOUT), ..cmd.clone() };
        let worker = WorkerProcess::spawn(&check, &label)?;
        let (version, devices, describe, abi_note) = init(&worker, &manifest_path, &options_json)?;
        worker.shutdown();
        Ok(WorkerBackend {
            cmd,
            manifest_path,
            options_json,
            label,
            devices,
            describe,
            version,
            abi_note,
        })
    }

    /// How the manifest's `abi` disagrees with what the library was built for, if it
    /// does (the library's header decides; this is worth a warning).
    pub fn abi_note(&self) -> Option<&str> {
        self.abi_note.as_deref()
    }

    /// The version the plugin reports.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// How long a plugin's `init` may take in the worker that checks it
/// ([`WorkerBackend::start`]), whatever the engine timeout.
pub const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn init(
    worker: &WorkerProcess,
    manifest_path: &std::path::Path,
    options_json: &str,
) -> Result<(String, Vec<Device>, String, Option<String>), BackendError> {
    let call = Call::Init {
        manifest_path: manifest_path.to_path_buf(),
        options_json: options_json.to_string(),
    };
    match worker.call(&worker.model_channel, &call)? {
        Answer::Inited { version, devices, describe, abi_note } => {
            Ok((version, devices.into_iter().map(Device::from).collect(), describe, abi_note))
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
        let (mut info, special, vocab_size, capabilities) =
            match worker.call(&worker.model_channel, &call)? {
                Answer::Loaded { info, special, vocab_size, capabilities } => {
                    (info.into(), special.into(), vocab_size, capabilities)
                }
                a => return Err(unexpected("load_model", &a)),
            };
        let (keys, bytes) = bound_metadata(&mut info);
        if keys > 0 {
            tracing::warn!(
                worker = %worker.label,
                model = path,
                "the engine's metadata is over the host's bounds ({MAX_META_KEYS} keys, \
                 {MAX_META_BYTES} bytes): {keys} entries ({bytes} bytes) dropped"
            );
        }
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

/// The most metadata entries the host keeps of a model from a worker.
pub const MAX_META_KEYS: usize = 64 << 10;
/// The most bytes of metadata (keys, values and the named strings) the host keeps of a
/// model from a worker: a plugin once answered 2 million entries, which the server then
/// held (570 MB) as long as the model stayed loaded.
pub const MAX_META_BYTES: usize = 16 << 20;
/// The most bytes of each named string (architecture, name, quantization).
const MAX_META_NAME: usize = 4 << 10;

/// Cuts `info` to [`MAX_META_KEYS`] entries and [`MAX_META_BYTES`] bytes, dropping the
/// entries that do not fit (in order: an entry too big to fit is dropped, smaller ones
/// after it may still fit) and cutting the named strings; how many entries were dropped,
/// and their bytes.
pub fn bound_metadata(info: &mut ModelInfo) -> (usize, usize) {
    for s in [&mut info.architecture, &mut info.name, &mut info.quantization] {
        if s.len() > MAX_META_NAME {
            let mut cut = MAX_META_NAME;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
    }
    let mut budget = MAX_META_BYTES
        .saturating_sub(info.architecture.len() + info.name.len() + info.quantization.len());
    let (mut dropped, mut dropped_bytes) = (0, 0);
    let mut kept = 0;
    info.kv.retain(|(k, v)| {
        let size = k.len() + v.len();
        if kept < MAX_META_KEYS && size <= budget {
            kept += 1;
            budget -= size;
            true
        } else {
            dropped += 1;
            dropped_bytes += size;
            false
        }
    });
    info.kv.shrink_to_fit();
    (dropped, dropped_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_from_a_worker_is_bounded() {
        let mut info = ModelInfo {
            name: "n".repeat(1 << 20),
            kv: (0..100_000).map(|i| (format!("k{i}"), "v".into())).collect(),
            ..ModelInfo::default()
        };
        let (dropped, _) = bound_metadata(&mut info);
        assert_eq!(info.kv.len(), MAX_META_KEYS);
        assert_eq!(dropped, 100_000 - MAX_META_KEYS);
        assert_eq!(info.name.len(), MAX_META_NAME);
        // One huge value is dropped; the small entries after it are kept.
        let mut info = ModelInfo {
            kv: vec![
                ("general.name".into(), "tiny".into()),
                ("huge".into(), "x".repeat(MAX_META_BYTES)),
                ("tokenizer.chat_template".into(), "{{ messages }}".into()),
            ],
            ..ModelInfo::default()
        };
        let (dropped, bytes) = bound_metadata(&mut info);
        assert_eq!((dropped, bytes), (1, 4 + MAX_META_BYTES));
        let keys: Vec<&str> = info.kv.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["general.name", "tokenizer.chat_template"]);
        assert_eq!(info.get("tokenizer.chat_template"), Some("{{ messages }}"));
    }
}
