//! The engine loop: one thread per loaded model that decodes every active sequence
//! together each step (continuous batching), admits new requests between steps, prefills
//! prompts in chunks so running streams keep flowing, reuses cached prefixes, and frees a
//! sequence as soon as its client goes away.
//!
//! Sampling, stop strings, UTF-8 streaming and length limits come from
//! `corral-generation`, so every backend behaves the same.
//!
//! Speculative decoding lives here too, for every engine: a generating sequence may
//! decode its pending token plus up to K draft tokens in one step (one batch entry each,
//! logits for all), proposed by prompt lookup over its own tokens
//! (`corral_generation::speculative::ngram_draft`) or by a draft model run K steps ahead
//! in a context of its own. The target's logits check the drafts with
//! [`Sampler::verify`](corral_generation::sampler::Sampler::verify) (greedy: exactly the
//! argmax, so greedy text does not change; sampled: the acceptance rule that keeps the
//! target distribution), the accepted ones are emitted as if sampled one by one, and the
//! rejected ones leave the KV cache (`kv_remove(seq, pos, -1)`) and the slot's `cached`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use corral_backend_api::{BackendError, BatchEntry, Capabilities, ContextParams, ErrorKind};
use corral_generation::{
    context::{DoneReason, effective_keep, length_limit, shift_discard},
    detok::Detokenizer,
    logprobs::StepLogprobs,
    options::SamplingOptions,
    sampler::{Constraint, Dist, Sampler, Verdict},
    speculative::{Adaptive, DEFAULT_DRAFT_MAX, NGRAM_MAX, SpecMode, ngram_draft},
    stop::StopMatcher,
};
use tokio::sync::mpsc::UnboundedSender;

use corral_plugin_host::{Context, Model};

/// What a request's stream receives.
#[derive(Debug)]
pub enum Event {
    /// The prompt has been processed; generation starts.
    PromptDone {
        /// Prompt tokens actually evaluated (after prefix reuse).
        evaluated: usize,
    },
    /// The log-probability of a sampled token (requests that ask for logprobs), sent
    /// before the text it produces.
    Logprob(TokenLogprob),
    /// A piece of generated text (whole UTF-8 characters, stop strings withheld).
    Text(String),
    /// Generation finished.
    Done(Stats),
    /// Generation failed.
    Error(BackendError),
}

/// One sampled token's log-probability and the most likely alternatives, from the
/// model's raw distribution (see `corral_generation::logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at that step: bytes and log-probability, most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// Counters of one finished request, in Ollama's terms.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Time from admission to the prompt's logits.
    pub prompt_eval: Duration,
    /// Tokens generated.
    pub eval_count: usize,
    /// Time from the prompt's logits to the end.
    pub eval: Duration,
    /// Time spent waiting in the queue.
    pub queued: Duration,
    /// Why it ended.
    pub done_reason: Option<DoneReason>,
    /// The stop string that ended it, if one did.
    pub stop_sequence: Option<String>,
    /// The generated token ids (for the `context` field and tests).
    pub tokens: Vec<u32>,
    /// Draft tokens decoded by speculative decoding.
    pub draft_tokens: usize,
    /// Draft tokens accepted (part of `eval_count`).
    pub draft_accepted: usize,
}

/// A generation request.
pub struct Request {
    /// Prompt tokens (already templated, tokenized and fitted to the context).
    pub prompt: Vec<u32>,
    /// Sampling and stopping options.
    pub options: SamplingOptions,
    /// A grammar that constrains sampling (structured output), if any.
    pub constraint: Option<Box<dyn Constraint>>,
    /// Where events go. A closed receiver cancels the request.
    pub events: UnboundedSender<Event>,
    /// Set to cancel.
    pub cancel: Arc<AtomicBool>,
    /// When it was submitted.
    pub submitted: Instant,
    /// Whether a sequence that fills its window shifts (drops the older half after
    /// `num_keep`, as Ollama's `shift`, default on) instead of ending for length.
    pub shift: bool,
    /// Send [`Event::Logprob`] for every sampled token, with this many alternatives
    /// (at most 20); `None`: no log-probabilities.
    pub logprobs: Option<u8>,
    /// Generate past the end-of-generation tokens (vLLM's and llama-server's
    /// `ignore_eos`): their logits are masked, so only `num_predict`, a stop string or the
    /// context ends the sequence. Ignored with a `constraint`, whose grammar decides
    /// where its output ends.
    pub ignore_eos: bool,
    /// Reuse the longest cached prefix of a free slot (llama-server's `cache_prompt`,
    /// default true); `false` evaluates the whole prompt anew.
    pub cache_prompt: bool,
}

/// Sizes of the loop.
#[derive(Clone)]
pub struct LoopConfig {
    /// Parallel sequences.
    pub n_parallel: u32,
    /// Context per sequence.
    pub num_ctx: u32,
    /// Largest batch per step (prompt chunks fill it).
    pub n_batch: u32,
    /// Threads.
    pub n_threads: u32,
    /// The model's name, for messages.
    pub model_name: String,
    /// Speculative decoding's defaults (a request's options override them).
    pub speculation: SpecSettings,
    /// A draft model (same engine, same vocabulary) for `SpecMode::Draft`.
    pub draft: Option<Arc<Model>>,
    /// Prompt rows the engine attends in whole tiles (1: no preference). llama.cpp's CPU
    /// backend with flash attention and a KV stream per sequence computes attention for
    /// 64 rows of one sequence at a time, and on micro-batches with fewer rows of a
    /// sequence runs a per-row kernel that costs 1.7 times as much per row; a part tile
    /// costs a whole one. Its batch splitter puts one token of every sequence of a batch
    /// in a first micro-batch and the rest of a prompt in the next, and cuts prompts
    /// that share a step into equal parts. So with a quantum `q` a prompt's rows past
    /// that first token fill whole tiles, and a second prompt shares a step only when
    /// neither fills a tile (see `step`). From the scheduler
    /// (`scheduler::ggml_cpu_prompt_quantum`).
    pub prompt_quantum: u32,
}

impl std::fmt::Debug for LoopConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopConfig")
            .field("n_parallel", &self.n_parallel)
            .field("num_ctx", &self.num_ctx)
            .field("n_batch", &self.n_batch)
            .field("n_threads", &self.n_threads)
            .field("model_name", &self.model_name)
            .field("speculation", &self.speculation)
            .field("draft", &self.draft.as_ref().map(|d| d.meta.name.clone()))
            .field("prompt_quantum", &self.prompt_quantum)
            .finish()
    }
}

impl SpecSettings {
    /// The settings from a mode and a draft length given as text (flags, environment,
    /// config), each `None` for the default.
    pub fn parse(mode: Option<&str>, draft_max: Option<u32>) -> Result<Self, String> {
        let d = SpecSettings::default();
        let mode = match mode {
            Some(m) => m.parse::<SpecMode>().map_err(|e| e.to_string())?,
            None => d.mode,
        };
        let draft_max = draft_max.unwrap_or(d.draft_max);
        if !(1..=corral_generation::speculative::MAX_DRAFT_MAX).contains(&draft_max) {
            return Err(format!("draft_max is {draft_max}, but it must be between 1 and 64"));
        }
        Ok(SpecSettings { mode, draft_max })
    }
}

/// Speculative decoding's settings for a loop: `CORRAL_SPECULATIVE` / `[server]
/// speculative` and `CORRAL_DRAFT_MAX` / `[server] draft_max`; a request's
/// `options.speculative` and `options.draft_max` override them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecSettings {
    /// Where drafts come from by default.
    pub mode: SpecMode,
    /// Most drafts per round by default.
    pub draft_max: u32,
}

impl Default for SpecSettings {
    fn default() -> Self {
        // Off until a quiet-machine measurement shows `auto` is never slower than plain
        // decoding; requests and the server's settings turn it on.
        SpecSettings { mode: SpecMode::Off, draft_max: DEFAULT_DRAFT_MAX }
    }
}

/// A handle to a running engine loop. Dropping it closes the loop's queue without
/// waiting: the thread ends by itself once its running sequences finish.
/// [`EngineHandle::shutdown`] also waits for that (call it off async workers).
pub struct EngineHandle {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    /// Sequences decoding or waiting right now.
    pub active: Arc<std::sync::atomic::AtomicUsize>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The model.
    pub model: Arc<Model>,
    /// Loop sizes.
    pub config: LoopConfig,
}

impl EngineHandle {
    /// Creates the context and starts the loop thread.
    pub fn start(model: Arc<Model>, config: LoopConfig) -> Result<EngineHandle, BackendError> {
        let params = ContextParams {
            n_ctx: config.num_ctx.saturating_mul(config.n_parallel),
            n_batch: config.n_batch,
            n_seq_max: config.n_parallel,
            n_threads: config.n_threads,
            n_threads_batch: config.n_threads,
            embeddings: false,
            seed: 0,
        };
        // Each slot is limited to num_ctx anyway, so the cache may be split per sequence
        // (llama.cpp then attends over one sequence's cells, not all of them).
        let ctx = model.new_context_per_sequence(&params)?;
        let (tx, rx) = mpsc::channel();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut state = LoopState::new(model.clone(), ctx, config.clone(), active.clone());
        if let Some(draft) = &config.draft {
            check_draft_vocabulary(&model, draft)?;
            let ctx = draft.new_context_per_sequence(&params)?;
            state.draft = Some(DraftState {
                model: draft.clone(),
                ctx,
                cached: vec![Vec::new(); config.n_parallel as usize],
            });
        }
        let thread = std::thread::Builder::new()
            .name("corral-engine".into())
            .spawn(move || state.run(rx))
            .map_err(|e| BackendError::internal(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            tx: Mutex::new(Some(tx)),
            active,
            thread: Mutex::new(Some(thread)),
            model,
            config,
        })
    }

    /// Queues a request.
    pub fn submit(&self, request: Request) -> Result<(), BackendError> {
        let stopped = || BackendError::internal("the engine loop has stopped");
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(stopped)?;
        self.active.fetch_add(1, Ordering::SeqCst);
        tx.send(request).map_err(|_| {
            self.active.fetch_sub(1, Ordering::SeqCst);
            stopped()
        })
    }

    /// Closes the queue and waits until the loop's thread has ended (its running
    /// sequences finish first). Blocking: never call it on an async worker.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let thread = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Closing the channel ends the loop once its sequences finish; the thread is
        // detached, not joined, so dropping never blocks the caller.
        self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// Refuses a draft model whose vocabulary is not the target's: its tokens would mean
/// other things to the target.
pub fn check_draft_vocabulary(target: &Model, draft: &Model) -> Result<(), BackendError> {
    if draft.vocab_size != target.vocab_size {
        return Err(BackendError::invalid(format!(
            "the draft model's vocabulary has {} tokens but the model's has {}: a draft model \
             must share its model's vocabulary",
            draft.vocab_size, target.vocab_size
        )));
    }
    for t in 0..target.vocab_size {
        let (a, b) = (target.token_bytes(t)?, draft.token_bytes(t)?);
        if a != b {
            return Err(BackendError::invalid(format!(
                "the draft model's token {t} is {:?} but the model's is {:?}: a draft model \
                 must share its model's vocabulary",
                String::from_utf8_lossy(&b),
                String::from_utf8_lossy(&a)
            )));
        }
    }
    Ok(())
}

/// The speculation a request gets: its own `options.speculative` or the loop's default,
/// off where exactness cannot be kept cheaply (a grammar constraint, log-probabilities,
/// mirostat), `draft` falling back to prompt lookup without a draft model.
fn spec_for(req: &Request, settings: SpecSettings, has_draft: bool) -> Adaptive {
    let mut mode = req.options.speculative.unwrap_or(settings.mode);
    let mirostat =
        req.options.extra.get("mirostat").is_some_and(|v| v.as_f64().is_some_and(|m| m != 0.0));
    if req.constraint.is_some() || req.logprobs.is_some() || mirostat {
        mode = SpecMode::Off;
    }
    if mode == SpecMode::Draft && !has_draft {
        mode = SpecMode::Ngram;
    }
    let max = req.options.draft_max.unwrap_or(settings.draft_max) as usize;
    Adaptive::new(mode, max)
}

struct Slot {
    /// Tokens whose KV entries this sequence holds (prefix cache).
    cached: Vec<u32>,
    /// How many leading entries of `cached` are what a fresh decode of those tokens
    /// gives: all, until a context shift kept the first `keep` and moved later ones that
    /// had attended to dropped tokens. Prefix reuse stops there.
    exact: usize,
    job: Option<Job>,
}

struct Job {
    req: Request,
    /// Prompt tokens still to prefill: `prompt[pending..]`.
    pending: usize,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    /// Token sampled but not yet decoded.
    next: Option<u32>,
    stats: Stats,
    admitted: Instant,
    first_logits: Option<Instant>,
    /// Log-probabilities of tokens whose text has not been sent yet (held by the
    /// detokenizer or the stop matcher); they go out just before that text, and those of
    /// a stop string's tokens are dropped with it.
    logprobs: Vec<TokenLogprob>,
    /// This sequence's speculation: mode, draft length, counters.
    spec: Adaptive,
    /// The draft model's sampler (same options, another seed), made on first use.
    draft_sampler: Option<Sampler>,
}

/// One sequence's speculation in a step: its pending token's batch index and the drafts
/// that follow it (with the draft model's distributions, when it made them).
struct Round {
    slot: usize,
    first: usize,
    drafts: Vec<u32>,
    q: Vec<Dist>,
}

struct LoopState {
    model: Arc<Model>,
    ctx: Context,
    config: LoopConfig,
    slots: Vec<Slot>,
    waiting: std::collections::VecDeque<Request>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    /// The engine cannot shift (it does not declare it, or answered `Unsupported`):
    /// end full sequences.
    cannot_shift: bool,
    /// Why the engine is gone for good (its worker crashed or hung): every request
    /// still here, and every one that comes, ends with this.
    gone: Option<String>,
    /// The engine cannot copy one sequence's cache into another: no prefix sharing.
    cannot_copy: bool,
    /// The engine cannot remove the end of a sequence's cache: no speculation.
    cannot_trim: bool,
    /// The draft model's context and what each of its sequences holds.
    draft: Option<DraftState>,
}

/// A draft model run beside the target: its own context, one sequence per slot, kept in
/// step with the target's accepted tokens.
struct DraftState {
    model: Arc<Model>,
    ctx: Context,
    /// Tokens whose KV entries each draft sequence holds.
    cached: Vec<Vec<u32>>,
}

/// The prompt tokens a step takes when the engine attends in tiles of `quantum` rows
/// ([`LoopConfig::prompt_quantum`]): `take` fits the step, `pending` remain, and
/// `in_first` of them (1 beside decode tokens, else 0) go to the splitter's first
/// micro-batch. The rows past those are cut to whole tiles when the step cannot take
/// the whole prompt, or when the part tile would hold at most a quarter of a tile (it
/// would cost a whole one; the few rows left run in the next step, where beside decode
/// tokens the first of them rides in the first micro-batch). Fewer rows than a tile,
/// or a part tile fuller than that, are taken as they are.
fn aligned_chunk(take: usize, pending: usize, in_first: usize, quantum: usize) -> usize {
    let rows = take.saturating_sub(in_first);
    let part = rows % quantum;
    if rows <= quantum || part == 0 || (take == pending && part > quantum / 4) {
        take
    } else {
        take - part
    }
}

/// Prompt tokens after which a step takes no further prompt (see `step`): enough for
/// the engine's prompt kernels to run at full speed, so evaluating prompts one after the
/// other costs little against evaluating them together.
const PREFILL_STEP: usize = 64;

/// Shortest prefix worth copying from another sequence (or waiting for) rather than
/// computing; a copy costs a whole sequence's cache in memory traffic.
const MIN_SHARED: usize = 32;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl LoopState {
    fn new(
        model: Arc<Model>,
        ctx: Context,
        config: LoopConfig,
        active: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let slots = (0..config.n_parallel)
            .map(|_| Slot { cached: Vec::new(), exact: usize::MAX, job: None })
            .collect();
        let cannot_shift = !model.capabilities.contains(Capabilities::CONTEXT_SHIFT);
        LoopState {
            model,
            ctx,
            config,
            slots,
            waiting: Default::default(),
            active,
            // An engine shifts only when it says it can (ABI 1.2 capabilities).
            cannot_shift,
            gone: None,
            cannot_copy: false,
            cannot_trim: false,
            draft: None,
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let mut open = true;
        loop {
            let busy = self.slots.iter().any(|s| s.job.is_some());
            if !busy && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(r) => self.waiting.push_back(r),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(r) => self.waiting.push_back(r),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if self.gone.is_none()
                && let Err(why) = self.model.health()
            {
                self.engine_gone(why);
            }
            if let Some(why) = &self.gone {
                let why = why.clone();
                for req in self.waiting.drain(..) {
                    self.active.fetch_sub(1, Ordering::SeqCst);
                    let _ = req.events.send(Event::Error(BackendError::internal(why.clone())));
                }
                continue;
            }
            self.admit();
            self.step();
        }
    }

    /// The engine is gone for good: every running sequence ends with an error that says
    /// what happened and that the model loads again on the next request.
    fn engine_gone(&mut self, why: String) {
        let msg = format!(
            "{why} (model {}); it will be loaded again on the next request",
            self.config.model_name
        );
        tracing::error!("{msg}");
        for slot in 0..self.slots.len() {
            if let Some(job) = self.slots[slot].job.take() {
                self.active.fetch_sub(1, Ordering::SeqCst);
                let _ = job.req.events.send(Event::Error(BackendError::internal(msg.clone())));
            }
            self.slots[slot].cached.clear();
        }
        self.gone = Some(msg);
    }

    fn finish(&mut self, slot: usize, outcome: Result<DoneReason, BackendError>) {
        let Some(mut job) = self.slots[slot].job.take() else { return };
        self.active.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(reason) => {
                let tail = job.detok.finish();
                let mut text = job.stop.push(&tail).emit;
                if !job.stop.is_stopped() {
                    text.push_str(&job.stop.finish());
                }
                if !text.is_empty() {
                    for lp in job.logprobs.drain(..) {
                        let _ = job.req.events.send(Event::Logprob(lp));
                    }
                    let _ = job.req.events.send(Event::Text(text));
                }
                job.stats.done_reason = Some(reason);
                job.stats.stop_sequence = job.stop.matched().map(str::to_string);
                if let Some(t) = job.first_logits {
                    job.stats.eval = t.elapsed();
                }
                let _ = job.req.events.send(Event::Done(job.stats));
            }
            Err(e) => {
                // The KV state of this sequence is unknown now: forget it.
                let _ = self.ctx.kv_remove(slot as i32, 0, -1);
                self.slots[slot].cached.clear();
                let _ = job.req.events.send(Event::Error(e));
            }
        }
    }

    /// Tokens of `slot`'s cache that `prompt` can use: the shared prefix, up to where the
    /// cache is exact.
    fn usable(&self, slot: usize, prompt: &[u32]) -> usize {
        let s = &self.slots[slot];
        common_prefix(&s.cached, prompt).min(s.exact)
    }

    /// Whether `prompt` should wait a little: another sequence is computing a prefix of
    /// it right now, longer by [`MIN_SHARED`] than any cache holds, that it can copy
    /// once computed instead of computing it again.
    fn prefix_coming(&self, prompt: &[u32], held: usize) -> bool {
        if self.cannot_copy {
            return false;
        }
        self.slots.iter().any(|s| {
            s.job.as_ref().is_some_and(|job| {
                let in_prefill = job.next.is_none() && job.first_logits.is_none();
                let shared = common_prefix(&job.req.prompt, prompt);
                in_prefill && shared > s.cached.len() && shared >= held + MIN_SHARED
            })
        })
    }

    fn admit(&mut self) {
        // A waiting request whose client left gives its place in the queue back at once,
        // not when a slot frees: until then it counted against CORRAL_MAX_QUEUE and new
        // requests got 503 behind requests nobody waited for.
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.cancel.load(Ordering::Relaxed) && !r.events.is_closed());
        let abandoned = before - self.waiting.len();
        if abandoned > 0 {
            self.active.fetch_sub(abandoned, Ordering::SeqCst);
            tracing::debug!(abandoned, "waiting requests whose clients left were dropped");
        }
        let mut index = 0;
        while index < self.waiting.len() {
            let free: Vec<usize> =
                (0..self.slots.len()).filter(|&i| self.slots[i].job.is_none()).collect();
            if free.is_empty() {
                return;
            }
            let req = &self.waiting[index];
            if req.cancel.load(Ordering::Relaxed) || req.events.is_closed() {
                self.waiting.remove(index);
                self.active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            // Prefix caching: the free slot whose cached tokens share the longest prefix,
            // unless another sequence (running or not) holds a longer one by MIN_SHARED
            // tokens: then that prefix is copied into the free slot whose cache is
            // smallest (the least lost), instead of computed again.
            let (mut slot, mut reuse) = free
                .iter()
                .map(|&i| (i, self.usable(i, &req.prompt)))
                .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
                .unwrap_or((free[0], 0));
            // `cache_prompt: false` evaluates the whole prompt anew.
            let cache_prompt = req.cache_prompt;
            if !cache_prompt {
                reuse = 0;
            }
            let mut source = None;
            if !self.cannot_copy && cache_prompt {
                let best_held = (0..self.slots.len())
                    .filter(|&j| j != slot)
                    .map(|j| (j, self.usable(j, &req.prompt)))
                    .max_by_key(|&(j, n)| (n, std::cmp::Reverse(j)));
                if let Some((src, held)) = best_held
                    && held >= reuse + MIN_SHARED
                {
                    source = Some((src, held));
                }
            }
            let held = source.map_or(reuse, |(_, n)| n);
            if cache_prompt && self.prefix_coming(&req.prompt, held) {
                // Others behind it may start meanwhile.
                index += 1;
                continue;
            }
            let Some(mut req) = self.waiting.remove(index) else { return };
            if let Some((src, shared)) = source {
                slot = free
                    .iter()
                    .copied()
                    .filter(|&i| i != src)
                    .min_by_key(|&i| (self.slots[i].cached.len(), i))
                    .unwrap_or(slot);
                match self.copy_prefix(src, slot, shared) {
                    Ok(()) => reuse = shared,
                    Err(e) => {
                        if e.kind == ErrorKind::Unsupported {
                            self.cannot_copy = true;
                        }
                        tracing::debug!("copying a shared prefix failed ({e}); computing it");
                        let _ = self.ctx.kv_remove(slot as i32, 0, -1);
                        self.slots[slot].cached.clear();
                        reuse = 0;
                    }
                }
            }
            if reuse >= req.prompt.len() {
                reuse = req.prompt.len().saturating_sub(1); // re-decode one token for logits
            }
            if self.ctx.kv_remove(slot as i32, reuse as i32, -1).is_err() {
                reuse = 0;
                let _ = self.ctx.kv_remove(slot as i32, 0, -1);
            }
            self.slots[slot].cached.truncate(reuse);
            self.slots[slot].exact = usize::MAX;
            // A token the model does not have fails this request alone: in the shared
            // batch it would fail every sequence stepped with it. A client's own tokens
            // (`context`) were checked before; these came from the engine's tokenizer, so
            // the fault is the engine's (500), not the request's.
            let vocab = self.model.vocab_size;
            if let Some(bad) = req.prompt.iter().find(|&&t| t >= vocab) {
                self.active.fetch_sub(1, Ordering::SeqCst);
                let _ = req.events.send(Event::Error(BackendError::internal(format!(
                    "the engine's tokenizer gave token {bad}, beyond its vocabulary of {vocab}"
                ))));
                continue;
            }
            let mut sampler = match Sampler::new(&req.options, self.model.vocab_size as usize) {
                Ok(s) => s,
                Err(e) => {
                    self.active.fetch_sub(1, Ordering::SeqCst);
                    let _ = req.events.send(Event::Error(BackendError::invalid(e.to_string())));
                    continue;
                }
            };
            if req.constraint.is_some() {
                req.ignore_eos = false;
            }
            let spec = spec_for(&req, self.config.speculation, self.draft.is_some());
            sampler.set_constraint(req.constraint.take());
            let stats = Stats {
                prompt_tokens: req.prompt.len(),
                cached_tokens: reuse,
                queued: req.submitted.elapsed(),
                ..Default::default()
            };
            let job = Job {
                pending: reuse,
                stop: StopMatcher::new(req.options.stop.iter()),
                sampler,
                detok: Detokenizer::new(),
                next: None,
                stats,
                admitted: Instant::now(),
                first_logits: None,
                logprobs: Vec::new(),
                spec,
                draft_sampler: None,
                req,
            };
            tracing::debug!(
                slot,
                prompt = job.stats.prompt_tokens,
                reused = reuse,
                queued_ms = job.stats.queued.as_millis() as u64,
                "request admitted"
            );
            self.slots[slot].job = Some(job);
        }
    }

    /// Makes `dst` hold the first `n` tokens of `src`'s cache: the whole sequence is
    /// copied (what every engine can do: llama.cpp copies between per-sequence streams
    /// only whole) and the rest removed.
    fn copy_prefix(&mut self, src: usize, dst: usize, n: usize) -> Result<(), BackendError> {
        let (Ok(s), Ok(d), Ok(end)) = (u32::try_from(src), u32::try_from(dst), i32::try_from(n))
        else {
            return Err(BackendError::invalid("sequence or position out of range"));
        };
        self.ctx.kv_remove(d as i32, 0, -1)?;
        self.slots[dst].cached.clear();
        self.ctx.kv_copy(s, d, 0, -1)?;
        self.ctx.kv_remove(d as i32, end, -1)?;
        let prefix = self.slots[src].cached[..n].to_vec();
        self.slots[dst].cached = prefix;
        tracing::debug!(src, dst, tokens = n, "shared prefix copied");
        Ok(())
    }

    /// One decode step over every active sequence.
    fn step(&mut self) {
        // Drop cancelled jobs first.
        for i in 0..self.slots.len() {
            if let Some(job) = &self.slots[i].job
                && (job.req.cancel.load(Ordering::Relaxed) || job.req.events.is_closed())
            {
                self.slots[i].job = None;
                self.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let n_batch = self.config.n_batch.max(1) as usize;
        let mut batch: Vec<BatchEntry> = Vec::with_capacity(n_batch);
        // (slot, batch index) of entries whose logits we will sample from.
        let mut wants: Vec<(usize, usize)> = Vec::new();
        // Sequences that speculate this step.
        let mut rounds: Vec<Round> = Vec::new();
        // Generating sequences first: one token each, so streams keep flowing, plus the
        // drafts of those that speculate, in the room the others leave.
        let mut generating: Vec<(usize, u32)> = (0..self.slots.len())
            .filter_map(|i| self.slots[i].job.as_ref().and_then(|j| j.next).map(|t| (i, t)))
            .collect();
        let mut prefilling: Vec<(Instant, usize)> = (0..self.slots.len())
            .filter_map(|i| {
                let job = self.slots[i].job.as_ref()?;
                (job.next.is_none() && job.pending < job.req.prompt.len())
                    .then_some((job.admitted, i))
            })
            .collect();
        prefilling.sort_unstable();
        let quantum = self.config.prompt_quantum.max(1) as usize;
        // A prompt whose rest is whole tiles runs alone: beside decode tokens its first
        // token would go to the splitter's first micro-batch and the tiles lose a row.
        // The generating sequences decode in the next step, no later than they would
        // have after a step holding the prompt.
        if quantum > 1
            && !generating.is_empty()
            && let Some(&(_, first)) = prefilling.first()
            && let Some(job) = &self.slots[first].job
        {
            let pending = job.req.prompt.len() - job.pending;
            if pending <= n_batch && pending % quantum == 0 {
                generating.clear();
            }
        }
        let mut room = n_batch.saturating_sub(generating.len());
        for &(i, t) in &generating {
            let (drafts, q) = self.propose(i, t, room);
            room -= drafts.len();
            let pos = self.slots[i].cached.len();
            let first = batch.len();
            batch.push(BatchEntry { token: t, pos: pos as u32, seq: i as u32, logits: true });
            for (j, &d) in drafts.iter().enumerate() {
                batch.push(BatchEntry {
                    token: d,
                    pos: (pos + 1 + j) as u32,
                    seq: i as u32,
                    logits: true,
                });
            }
            if drafts.is_empty() {
                wants.push((i, first));
            } else {
                rounds.push(Round { slot: i, first, drafts, q });
            }
        }
        // Then prompt chunks in the room left, oldest request first, and no further
        // prompt once the step holds PREFILL_STEP prompt tokens: prompts that arrive
        // together are evaluated one after the other, so the first starts streaming
        // after its own prompt instead of after all of them (the mean time to first token
        // falls by up to half), at the cost of a few more, still efficient, steps.
        // With a prompt quantum (and no drafts, which change the splitter's shapes): a
        // prompt's rows past the first micro-batch's token in whole tiles, and no second
        // prompt beside one that fills a tile.
        let aligned = quantum > 1 && rounds.is_empty();
        let in_first_microbatch = usize::from(!generating.is_empty());
        let mut prompt_tokens = 0;
        for (_, i) in prefilling {
            let slot = &self.slots[i];
            let Some(job) = &slot.job else { continue };
            let pending = &job.req.prompt[job.pending..];
            let room = n_batch - batch.len();
            if room == 0 || prompt_tokens >= PREFILL_STEP {
                break;
            }
            let mut take = room.min(pending.len());
            if aligned {
                // The splitter cuts prompts that share a step into equal parts: a second
                // prompt joins only when neither could fill a tile anyway.
                if prompt_tokens > 0 && take >= quantum {
                    break;
                }
                take = aligned_chunk(take, pending.len(), in_first_microbatch, quantum);
            }
            prompt_tokens += take;
            let base = slot.cached.len();
            for (k, &t) in pending[..take].iter().enumerate() {
                let last = take == pending.len() && k + 1 == take;
                if last {
                    wants.push((i, batch.len()));
                }
                batch.push(BatchEntry {
                    token: t,
                    pos: (base + k) as u32,
                    seq: i as u32,
                    logits: last,
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let decoded = self.ctx.decode(&batch);
        tracing::trace!(
            tokens = batch.len(),
            generating = generating.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "step decoded"
        );
        if let Err(e) = decoded {
            if let Err(why) = self.model.health() {
                self.engine_gone(why);
                return;
            }
            let slots: std::collections::BTreeSet<u32> = batch.iter().map(|b| b.seq).collect();
            let panicked = e.kind == ErrorKind::Panic;
            for s in slots {
                self.finish(s as usize, Err(e.clone()));
            }
            if panicked {
                tracing::error!("the backend panicked in decode; the context's state is reset");
                let _ = self.ctx.kv_clear();
                self.slots.iter_mut().for_each(|s| s.cached.clear());
            }
            return;
        }
        // Book-keeping: what is now in each sequence's KV cache. A generating sequence's
        // entries are its pending token (then no longer pending) and its drafts.
        for (k, b) in batch.iter().enumerate() {
            let seq = b.seq as usize;
            let generates = generating.iter().any(|&(i, _)| i == seq);
            let slot = &mut self.slots[seq];
            slot.cached.push(b.token);
            if let Some(job) = &mut slot.job {
                if generates {
                    if batch.get(k.wrapping_sub(1)).is_none_or(|p| p.seq != b.seq) {
                        job.next = None;
                    }
                } else if job.pending < job.req.prompt.len() {
                    job.pending += 1;
                }
            }
        }
        for (slot, index) in wants {
            self.sample_one(slot, index);
        }
        for round in rounds {
            let slot = round.slot;
            let outcome = self.verify_round(round);
            self.settle(slot, outcome);
        }
    }

    /// Draft tokens for the generating sequence `slot` whose pending token is `t`: none
    /// when it does not speculate this step, else up to its budget, `room` in the batch,
    /// what its window and `num_predict` leave. With a draft model, also the draft's
    /// distribution at each draft.
    fn propose(&mut self, slot: usize, t: u32, room: usize) -> (Vec<u32>, Vec<Dist>) {
        let num_ctx = self.config.num_ctx as usize;
        let cannot_trim = self.cannot_trim;
        let s = &mut self.slots[slot];
        let Some(job) = s.job.as_mut() else { return (Vec::new(), Vec::new()) };
        if cannot_trim || room == 0 {
            return (Vec::new(), Vec::new());
        }
        let pos = s.cached.len();
        // Drafts stay clear of the window's end, so no context shift happens inside a
        // round; and never go past num_predict.
        let predict_cap = match job.req.options.num_predict {
            n if n > 0 => n as usize,
            _ => num_ctx.saturating_mul(10),
        };
        let cap = room
            .min(num_ctx.saturating_sub(pos + 3))
            .min(predict_cap.saturating_sub(job.stats.eval_count));
        if cap == 0 {
            return (Vec::new(), Vec::new());
        }
        let k = job.spec.budget().min(cap);
        if k == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut history = Vec::with_capacity(pos + 1);
        history.extend_from_slice(&s.cached);
        history.push(t);
        if job.spec.mode() == SpecMode::Draft && self.draft.is_some() {
            match self.draft_propose(slot, &history, k) {
                Ok(out) => return out,
                Err(e) => {
                    tracing::warn!(
                        slot,
                        "the draft model failed ({e}); this request goes on with prompt lookup"
                    );
                    if let Some(d) = self.draft.as_mut() {
                        let _ = d.ctx.kv_remove(slot as i32, 0, -1);
                        d.cached[slot].clear();
                    }
                    if let Some(job) = self.slots[slot].job.as_mut() {
                        job.spec = Adaptive::new(SpecMode::Ngram, k);
                    }
                }
            }
        }
        (ngram_draft(&history, NGRAM_MAX, 1, k), Vec::new())
    }

    /// Runs the draft model `k` steps after `history` (the target's tokens and pending
    /// token) for `slot`: first it catches up with what the target holds (its cache
    /// keeps the common prefix), then drafts one token a step, drawn from its own
    /// processed distribution with the request's options (greedy: its argmax).
    fn draft_propose(
        &mut self,
        slot: usize,
        history: &[u32],
        k: usize,
    ) -> Result<(Vec<u32>, Vec<Dist>), BackendError> {
        let n_batch = self.config.n_batch.max(1) as usize;
        let Some(d) = self.draft.as_mut() else { return Ok((Vec::new(), Vec::new())) };
        let Some(job) = self.slots[slot].job.as_mut() else { return Ok((Vec::new(), Vec::new())) };
        let seq = slot as u32;
        // Keep the common prefix, but decode at least the last token again for logits.
        let mut common = common_prefix(&d.cached[slot], history).min(history.len() - 1);
        if d.ctx.kv_remove(seq as i32, common as i32, -1).is_err() {
            // An engine may refuse a cut (a sliding window it no longer holds): start over.
            d.ctx.kv_remove(seq as i32, 0, -1)?;
            common = 0;
        }
        d.cached[slot].truncate(common);
        let mut index = 0;
        for chunk in history[common..].chunks(n_batch) {
            let base = d.cached[slot].len();
            let batch: Vec<BatchEntry> = chunk
                .iter()
                .enumerate()
                .map(|(j, &tok)| BatchEntry {
                    token: tok,
                    pos: (base + j) as u32,
                    seq,
                    logits: j + 1 == chunk.len(),
                })
                .collect();
            d.ctx.decode(&batch)?;
            d.cached[slot].extend_from_slice(chunk);
            index = chunk.len() - 1;
        }
        if job.draft_sampler.is_none() {
            let mut o = job.req.options.clone();
            o.seed = Some(job.sampler.seed() ^ 0x5eed_d4af_7000_0001);
            // The target's bias, for the tokens the draft's vocabulary has.
            o.logit_bias.retain(|&(t, _)| t < d.model.vocab_size);
            let s = Sampler::new(&o, d.model.vocab_size as usize)
                .map_err(|e| BackendError::invalid(e.to_string()))?;
            job.draft_sampler = Some(s);
        }
        let Some(sampler) = job.draft_sampler.as_mut() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut drafts = Vec::with_capacity(k);
        let mut qs = Vec::with_capacity(k);
        let mut seen = history.to_vec();
        for step in 0..k {
            let logits = d.ctx.logits_mut(index)?;
            check_logits(logits)?;
            let q = sampler.distribution(logits, &seen);
            let tok = if sampler.is_greedy() { q.top() } else { sampler.draw(&q) };
            drafts.push(tok);
            qs.push(q);
            seen.push(tok);
            if step + 1 == k || d.model.is_eog(tok) {
                break;
            }
            let pos = d.cached[slot].len() as u32;
            d.ctx.decode(&[BatchEntry { token: tok, pos, seq, logits: true }])?;
            d.cached[slot].push(tok);
            index = 0;
        }
        Ok((drafts, qs))
    }

    /// Ends `slot` as `outcome` says (a sampling or verification step's result).
    fn settle(&mut self, slot: usize, outcome: Result<Option<DoneReason>, BackendError>) {
        match outcome {
            Ok(None) => {}
            Ok(Some(reason)) => self.finish(slot, Ok(reason)),
            Err(e) => match self.model.health() {
                Err(why) => self.engine_gone(why),
                Ok(()) => self.finish(slot, Err(e)),
            },
        }
    }

    /// Checks a speculation round of `r.slot` against the target's logits: each draft in
    /// turn by the acceptance rule, the first rejection replaced by the token the rule
    /// gives, or, when all are accepted, one more token sampled after the last. The
    /// rejected drafts leave the KV cache; the accepted tokens are emitted in order, as
    /// if sampled one step at a time, and the last becomes the pending token.
    fn verify_round(&mut self, r: Round) -> Result<Option<DoneReason>, BackendError> {
        let Round { slot, first, drafts, q } = r;
        let k = drafts.len();
        let Some(base) = self.slots[slot].cached.len().checked_sub(k + 1) else {
            return Err(BackendError::internal("speculation book-keeping is inconsistent"));
        };
        let mut accepted = 0;
        let mut last = None;
        for i in 0..=k {
            let logits = self.ctx.logits_mut(first + i)?;
            check_logits(logits)?;
            let Slot { cached, job, .. } = &mut self.slots[slot];
            let Some(job) = job.as_mut() else { return Ok(None) };
            // What precedes position base + i + 1: the penalties see exactly that.
            let history = &cached[..base + i + 1];
            if i < k {
                let p = job.sampler.distribution(logits, history);
                match job.sampler.verify(&p, drafts[i], q.get(i)) {
                    Verdict::Accept => accepted += 1,
                    Verdict::Reject(t) => {
                        last = Some(t);
                        break;
                    }
                }
            } else {
                last = Some(job.sampler.sample(logits, history));
            }
        }
        if let Some(job) = self.slots[slot].job.as_mut() {
            job.spec.record(k, accepted);
            job.stats.draft_tokens += k;
            job.stats.draft_accepted += accepted;
        }
        let keep = base + 1 + accepted;
        if keep < self.slots[slot].cached.len() {
            if let Err(e) = self.ctx.kv_remove(slot as i32, keep as i32, -1) {
                self.cannot_trim = true;
                return Err(BackendError::new(
                    e.kind,
                    format!(
                        "the engine could not drop rejected draft tokens from its cache ({e}); \
                         speculative decoding is now off for this model"
                    ),
                ));
            }
            self.slots[slot].cached.truncate(keep);
        }
        for (j, &d) in drafts[..accepted].iter().enumerate() {
            if let Some(reason) = self.emit(slot, d, base + 1 + j, None, false)? {
                return Ok(Some(reason));
            }
            if self.slots[slot].job.is_none() {
                return Ok(None);
            }
        }
        match last {
            Some(t) => self.emit(slot, t, keep, None, true),
            None => Ok(None),
        }
    }

    fn sample_one(&mut self, slot: usize, index: usize) {
        let outcome = self.sample_step(slot, index);
        self.settle(slot, outcome);
    }

    /// Samples the next token of `slot` from batch entry `index`; `Some` when the
    /// sequence is done.
    fn sample_step(
        &mut self,
        slot: usize,
        index: usize,
    ) -> Result<Option<DoneReason>, BackendError> {
        let logits = self.ctx.logits_mut(index)?;
        check_logits(logits)?;
        let Slot { cached, job, .. } = &mut self.slots[slot];
        let Some(job) = job.as_mut() else { return Ok(None) };
        if job.first_logits.is_none() {
            job.first_logits = Some(Instant::now());
            job.stats.prompt_eval = job.admitted.elapsed();
            let _ = job.req.events.send(Event::PromptDone {
                evaluated: job.stats.prompt_tokens - job.stats.cached_tokens,
            });
        }
        // Log-probabilities come from the raw logits, before the sampler changes them.
        let step_logprobs = job.req.logprobs.map(|n| {
            let s = StepLogprobs::of(logits, usize::from(n.min(20)));
            (s, logits.to_vec())
        });
        if job.req.ignore_eos {
            for &t in &self.model.special.eog {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = job.sampler.sample(logits, cached);
        let pos = cached.len();
        self.emit(slot, token, pos, step_logprobs, true)
    }

    /// Emits `token` of `slot`, which sits at position `pos` (`pending`: it is to be
    /// decoded next step; else a draft already decoded and accepted): ends at an end of
    /// generation, counts it, streams its text, checks stop strings and length limits,
    /// and, for a pending token, shifts a full window. `Some` when the sequence is done.
    fn emit(
        &mut self,
        slot: usize,
        token: u32,
        pos: usize,
        step_logprobs: Option<(StepLogprobs, Vec<f32>)>,
        pending: bool,
    ) -> Result<Option<DoneReason>, BackendError> {
        let num_ctx = self.config.num_ctx as usize;
        let Some(job) = self.slots[slot].job.as_mut() else { return Ok(None) };
        if self.model.is_eog(token) {
            return Ok(Some(DoneReason::Stop));
        }
        job.stats.eval_count += 1;
        job.stats.tokens.push(token);
        let bytes = self.model.token_bytes(token)?;
        if let Some((s, raw)) = step_logprobs {
            let mut top = Vec::with_capacity(s.top.len());
            for &(t, lp) in &s.top {
                top.push((self.model.token_bytes(t)?, lp));
            }
            let logprob = s.logprob_of_logit(raw.get(token as usize).copied().unwrap_or(f32::NAN));
            job.logprobs.push(TokenLogprob { bytes: bytes.clone(), logprob, top });
        }
        let text = job.detok.push(&bytes);
        let step = job.stop.push(&text);
        if !step.emit.is_empty() {
            for lp in job.logprobs.drain(..) {
                let _ = job.req.events.send(Event::Logprob(lp));
            }
        }
        if !step.emit.is_empty() && job.req.events.send(Event::Text(step.emit)).is_err() {
            // The client went away: free the sequence now.
            self.slots[slot].job = None;
            self.active.fetch_sub(1, Ordering::SeqCst);
            return Ok(None);
        }
        if step.stopped {
            return Ok(Some(DoneReason::Stop));
        }
        let can_shift = job.req.shift && !self.cannot_shift;
        if let Some(r) = length_limit(
            job.stats.eval_count,
            pos + 1,
            num_ctx,
            job.req.options.num_predict,
            can_shift,
        ) {
            return Ok(Some(r));
        }
        if !pending {
            return Ok(None);
        }
        job.next = Some(token);
        if pos + 1 >= num_ctx && !self.shift(slot) {
            return Ok(Some(DoneReason::Length));
        }
        Ok(None)
    }

    /// Ollama's context shift for a sequence that filled its window: keeps the first
    /// `num_keep` tokens, drops half of the rest, moves the remainder down. `false` when
    /// it cannot (nothing is left to drop, or the shift failed). Only called for engines
    /// that declare [`Capabilities::CONTEXT_SHIFT`].
    fn shift(&mut self, slot: usize) -> bool {
        let num_ctx = self.config.num_ctx as usize;
        let s = &self.slots[slot];
        let Some(job) = s.job.as_ref() else { return false };
        let keep = effective_keep(job.req.options.num_keep, job.req.prompt.len(), num_ctx);
        let discard = shift_discard(num_ctx, keep);
        if keep + discard > s.cached.len() {
            return false;
        }
        let (Ok(seq), Ok(keep_pos), Ok(end)) =
            (i32::try_from(slot), i32::try_from(keep), i32::try_from(keep + discard))
        else {
            return false;
        };
        let shifted = self
            .ctx
            .kv_remove(seq, keep_pos, end)
            .and_then(|()| self.ctx.kv_shift(seq as u32, end, -1, keep_pos - end));
        match shifted {
            Ok(()) => {
                let s = &mut self.slots[slot];
                s.cached.drain(keep..keep + discard);
                s.exact = s.exact.min(keep);
                tracing::debug!(slot, keep, discard, "context shift");
                true
            }
            Err(e) => {
                if e.kind == ErrorKind::Unsupported {
                    self.cannot_shift = true;
                }
                // The cache may be half-shifted: forget this sequence's cache.
                let _ = self.ctx.kv_remove(seq, 0, -1);
                self.slots[slot].cached.clear();
                tracing::warn!("context shift failed ({e}); ending at the window");
                false
            }
        }
    }
}

/// Refuses logits a sampler cannot use: a NaN or a `+inf` anywhere, or no finite value at
/// all (what broken weights, a bad quantization or an overflow in f16 give). Sampling
/// them would answer token 0, or garbage, with every sign of success. `-inf` entries
/// (masked tokens) are fine while one value is finite.
fn check_logits(logits: &[f32]) -> Result<(), BackendError> {
    // Branch-free folds the compiler vectorises (a vocabulary of 262k costs ~20 us):
    // NaN and +inf are the values not below +inf, `l > -inf` holds for every finite one.
    let bad = logits
        .iter()
        .fold(false, |b, &l| b | (l.partial_cmp(&f32::INFINITY) != Some(std::cmp::Ordering::Less)));
    let finite = logits.iter().fold(false, |f, &l| f | (l > f32::NEG_INFINITY));
    if bad {
        let nan = logits.iter().any(|l| l.is_nan());
        return Err(BackendError::internal(format!(
            "the engine computed {} logits; the model's weights may be broken or its \
             computation overflowed",
            if nan { "NaN" } else { "infinite" }
        )));
    }
    if finite || logits.is_empty() {
        Ok(())
    } else {
        Err(BackendError::internal(
            "the engine computed no finite logit (all -inf); the model's weights may be broken",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{aligned_chunk, check_logits};

    #[test]
    fn logits_a_sampler_cannot_use_are_refused() {
        assert!(check_logits(&[0.5, -1.0, f32::NEG_INFINITY]).is_ok());
        let msg = |l: &[f32]| check_logits(l).unwrap_err().message;
        assert!(msg(&[0.5, f32::NAN]).contains("NaN logits"));
        assert!(msg(&[0.5, f32::INFINITY]).contains("infinite logits"));
        assert!(msg(&[f32::NEG_INFINITY; 3]).contains("no finite logit"));
    }

    #[test]
    fn prompt_chunks_fill_whole_tiles() {
        // Beside decode tokens one prompt token goes to the first micro-batch: 65 is one
        // whole tile; 66 leaves one row for the next step; 100 keeps its part tile.
        assert_eq!(aligned_chunk(65, 65, 1, 64), 65);
        assert_eq!(aligned_chunk(66, 66, 1, 64), 65);
        assert_eq!(aligned_chunk(80, 80, 1, 64), 65);
        assert_eq!(aligned_chunk(100, 100, 1, 64), 100);
        // Alone: 128 is two tiles, 130 leaves two rows, fewer rows than a tile go as they are.
        assert_eq!(aligned_chunk(128, 128, 0, 64), 128);
        assert_eq!(aligned_chunk(130, 130, 0, 64), 128);
        assert_eq!(aligned_chunk(63, 63, 0, 64), 63);
        assert_eq!(aligned_chunk(61, 61, 1, 64), 61);
        // A step that cannot take the whole prompt ends on a tile whatever the part.
        assert_eq!(aligned_chunk(509, 1200, 1, 64), 449);
        assert_eq!(aligned_chunk(512, 1200, 0, 64), 512);
        assert_eq!(aligned_chunk(500, 1200, 0, 64), 448);
        // No quantum: as asked.
        assert_eq!(aligned_chunk(66, 66, 1, 1), 66);
    }
}
