//! The worker side: what `corral engine-worker` runs. It opens the plugin with the same
//! loader and checks as the host, then answers calls on two channels (fd 0: model
//! calls; the original fd 1: context calls; fd 1 itself is pointed at stderr so that
//! nothing an engine prints can corrupt a channel). It dies with its parent
//! (`PR_SET_PDEATHSIG`), and exits when the host closes its channels.

use std::{
    collections::HashMap,
    io::Write,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::{Arc, Mutex},
};

use corral_backend_api::{BackendError, ContextParams};

use super::{
    protocol::{Answer, Call, Reply, WireDevice, read_message, write_message},
    shm::SharedRows,
};
use crate::engine::{ContextHandle, ContextKind, LoadedPlugin, ModelHandle};

/// Why a worker stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The parent is already gone.
    #[error("the host process {0} is gone")]
    Orphan(u32),
    /// Setting up the channels failed.
    #[error("cannot set up the worker's channels: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Default)]
struct State {
    plugin: Option<Arc<LoadedPlugin>>,
    model: Option<Arc<dyn ModelHandle>>,
}

/// Runs a worker until the host closes its channels. `parent` is the host's pid.
pub fn run_worker(parent: u32) -> Result<(), WorkerError> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| WorkerError::Io(e.into()))?;
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if ppid != Some(parent) {
        return Err(WorkerError::Orphan(parent));
    }
    let model_channel = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let context_channel: OwnedFd = std::io::stdout().as_fd().try_clone_to_owned()?;
    // From here on fd 1 is stderr: an engine that prints cannot corrupt a channel.
    rustix::stdio::dup2_stdout(std::io::stderr().as_fd()).map_err(|e| WorkerError::Io(e.into()))?;
    let context_channel = UnixStream::from(context_channel);
    let state = Arc::new(Mutex::new(State::default()));
    let contexts_state = state.clone();
    let contexts = std::thread::Builder::new()
        .name("corral-worker-contexts".into())
        .spawn(move || serve_contexts(context_channel, &contexts_state))?;
    serve(model_channel, |call| model_call(&state, call));
    let _ = contexts.join();
    Ok(())
}

/// Answers calls on `stream` until it closes.
fn serve(mut stream: UnixStream, mut answer: impl FnMut(Call) -> Reply) {
    loop {
        let call = match read_message::<Call>(&mut stream) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("engine worker: bad message from the host: {e}");
                return;
            }
        };
        let reply = answer(call);
        if write_message(&mut stream, &reply).is_err() {
            return;
        }
        let _ = std::io::stderr().flush();
    }
}

fn model(state: &Mutex<State>) -> Result<Arc<dyn ModelHandle>, BackendError> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .model
        .clone()
        .ok_or_else(|| BackendError::internal("no model is loaded in this worker"))
}

fn model_call(state: &Mutex<State>, call: Call) -> Reply {
    let answer = match call {
        Call::Init { manifest_path, options_json } => {
            let manifest = crate::manifest::Manifest::load(&manifest_path)
                .map_err(|e| BackendError::invalid(e.to_string()))?;
            let plugin = crate::loader::load(&manifest, &manifest_path, options_json)
                .map_err(|e| BackendError::invalid(e.to_string()))?;
            let abi_note = plugin
                .abi_minor
                .and_then(|minor| crate::loader::abi_disagreement(&manifest, minor));
            let answer = Answer::Inited {
                abi_note,
                version: plugin.version.clone(),
                devices: plugin.devices().into_iter().map(WireDevice::from).collect(),
                describe: plugin.backend.describe(),
            };
            state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).plugin =
                Some(Arc::new(plugin));
            answer
        }
        Call::LoadModel { path, format, options } => {
            let plugin =
                state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).plugin.clone();
            let plugin = plugin.ok_or_else(|| BackendError::internal("the plugin is not open"))?;
            let m: Arc<dyn ModelHandle> =
                Arc::from(plugin.backend.load_model(&path, &format, options.into())?);
            // Before anything sized by the vocabulary is made (the token table, logits
            // rows): an absurd one would take the worker's memory or minutes.
            if m.vocab_size() > crate::engine::MAX_VOCAB {
                return Err(BackendError::internal(format!(
                    "the engine reports a vocabulary of {} tokens, beyond any real model (at \
                     most {})",
                    m.vocab_size(),
                    crate::engine::MAX_VOCAB
                ))
                .into());
            }
            let answer = Answer::Loaded {
                info: m.metadata().into(),
                special: m.special_tokens().into(),
                vocab_size: m.vocab_size(),
                capabilities: m.capabilities().bits(),
            };
            state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).model = Some(m);
            answer
        }
        Call::Tokenize { text, add_special, parse_special } => {
            Answer::Tokens(model(state)?.tokenize(&text, add_special, parse_special)?)
        }
        Call::Detokenize { tokens } => Answer::Text(model(state)?.detokenize(&tokens)?),
        Call::TokenTable => {
            let m = model(state)?;
            let mut table = Vec::with_capacity(m.vocab_size() as usize);
            for id in 0..m.vocab_size() {
                table.push(m.token_bytes(id).unwrap_or_default());
            }
            Answer::Table(table)
        }
        _ => return Err(BackendError::internal("a context call on the model channel").into()),
    };
    Ok(answer)
}

struct WorkerContext {
    ctx: Box<dyn ContextHandle>,
    rows: SharedRows,
}

fn serve_contexts(stream: UnixStream, state: &Mutex<State>) {
    let mut contexts: HashMap<u32, WorkerContext> = HashMap::new();
    let mut next_id = 0u32;
    serve(stream, |call| context_call(state, &mut contexts, &mut next_id, call));
}

fn context_call(
    state: &Mutex<State>,
    contexts: &mut HashMap<u32, WorkerContext>,
    next_id: &mut u32,
    call: Call,
) -> Reply {
    let no_ctx = |id: u32| BackendError::invalid(format!("no context {id} in this worker"));
    let answer = match call {
        Call::NewContext { params, per_sequence } => {
            let m = model(state)?;
            let kind = if per_sequence { ContextKind::PerSequence } else { ContextKind::Shared };
            let ctx = m.new_context(&ContextParams::from(params), kind)?;
            let params = ctx.params();
            let (rows, shm_path) = SharedRows::create(params.n_seq_max.max(1), m.vocab_size())?;
            *next_id += 1;
            let id = *next_id;
            let n_rows = rows.rows();
            contexts.insert(id, WorkerContext { ctx, rows });
            Answer::Context { id, params: (&params).into(), shm_path, rows: n_rows }
        }
        Call::Decode { ctx, batch } => {
            let c = contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?;
            let batch: Vec<_> = batch.into_iter().map(Into::into).collect();
            c.ctx.decode(&batch)?;
            let mut indices = Vec::new();
            for (i, e) in batch.iter().enumerate() {
                if !e.logits || indices.len() >= c.rows.rows() as usize {
                    continue;
                }
                let index = i as u32;
                // An engine may refuse logits here (an embeddings context): the host then
                // asks for the row itself and gets the engine's answer.
                let Ok(row) = c.ctx.logits(index) else { break };
                let slot = c.rows.row_mut(indices.len())?;
                if slot.len() != row.len() {
                    return Err(BackendError::internal(format!(
                        "the engine gave {} logits for a vocabulary of {}",
                        row.len(),
                        slot.len()
                    ))
                    .into());
                }
                slot.copy_from_slice(row);
                indices.push(index);
            }
            Answer::Decoded { indices }
        }
        Call::Logits { ctx, index } => {
            let c = contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?;
            Answer::Floats(c.ctx.logits(index)?.to_vec())
        }
        Call::Embeddings { ctx, seq } => {
            let c = contexts.get(&ctx).ok_or_else(|| no_ctx(ctx))?;
            Answer::Floats(c.ctx.embeddings(seq)?)
        }
        Call::KvRemove { ctx, seq, p0, p1 } => {
            contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?.ctx.kv_remove(seq, p0, p1)?;
            Answer::Unit
        }
        Call::KvCopy { ctx, src, dst, p0, p1 } => {
            contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?.ctx.kv_copy(src, dst, p0, p1)?;
            Answer::Unit
        }
        Call::KvPosMax { ctx, seq } => {
            Answer::Int(contexts.get(&ctx).ok_or_else(|| no_ctx(ctx))?.ctx.kv_pos_max(seq))
        }
        Call::KvClear { ctx } => {
            contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?.ctx.kv_clear()?;
            Answer::Unit
        }
        Call::KvShift { ctx, seq, p0, p1, delta } => {
            contexts.get_mut(&ctx).ok_or_else(|| no_ctx(ctx))?.ctx.kv_shift(seq, p0, p1, delta)?;
            Answer::Unit
        }
        Call::DropContext { ctx } => {
            contexts.remove(&ctx);
            Answer::Unit
        }
        _ => return Err(BackendError::internal("a model call on the context channel").into()),
    };
    Ok(answer)
}
